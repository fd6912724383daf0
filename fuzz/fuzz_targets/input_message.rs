//! The `input` data channel: arbitrary bytes through `ChannelMessage::parse` (what the agent
//! reads) and `InputMessage::parse`, then `clamped` into a few desktop sizes. Must never panic;
//! the two parsers agree on input; whatever parses must round-trip through `to_json` and clamp
//! into the desktop; attention messages round-trip too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loco_shared::protocol::{ChannelMessage, InputMessage, ProtocolError, MAX_MESSAGE_BYTES};

const SIZES: [(u32, u32); 6] = [(1024, 768), (0, 0), (1, 1), (0, 768), (640, 0), (u32::MAX, u32::MAX)];

fuzz_target!(|data: &[u8]| {
    let parsed = InputMessage::parse(data);
    let channel = ChannelMessage::parse(data);
    if data.len() > MAX_MESSAGE_BYTES {
        assert_eq!(parsed, Err(ProtocolError::TooLarge(data.len())));
        assert_eq!(channel, Err(ProtocolError::TooLarge(data.len())));
        return;
    }
    // The channel's parser reads input exactly as the input parser does.
    match (&channel, &parsed) {
        (Ok(ChannelMessage::Input(c)), Ok(p)) => assert_eq!(c, p),
        (Ok(ChannelMessage::Input(c)), Err(e)) => panic!("channel parsed {c:?}, input parser said {e}"),
        (_, Ok(p)) => panic!("input {p:?} read as {channel:?}"),
        (Ok(ChannelMessage::Attention(a)), Err(_)) => {
            let json = a.to_json();
            assert!(json.len() <= MAX_MESSAGE_BYTES, "{json}");
            assert_eq!(ChannelMessage::parse(json.as_bytes()), Ok(ChannelMessage::Attention(*a)), "{json}");
        }
        (Err(_), Err(_)) => {}
    }
    let Ok(msg) = parsed else { return };

    // What the viewer would have sent parses back to the same message.
    let json = msg.to_json();
    assert!(json.len() <= MAX_MESSAGE_BYTES, "{json}");
    assert_eq!(InputMessage::parse(json.as_bytes()), Ok(msg), "round trip of {json}");

    for (w, h) in SIZES {
        let c = msg.clamped(w, h);
        assert_eq!(c.clamped(w, h), c, "clamping is idempotent");
        match (msg, c) {
            (InputMessage::Pointer { x, y, buttons }, InputMessage::Pointer { x: cx, y: cy, buttons: cb }) => {
                assert_eq!(cb, buttons);
                assert!(cx <= w.saturating_sub(1) && cy <= h.saturating_sub(1), "{c:?} outside {w}x{h}");
                // Inside the desktop nothing moves; outside, it pins to the edge.
                assert_eq!(cx, x.min(w.saturating_sub(1)));
                assert_eq!(cy, y.min(h.saturating_sub(1)));
            }
            (k @ InputMessage::Key { .. }, c) => assert_eq!(k, c),
            (m, c) => panic!("clamping changed the kind: {m:?} -> {c:?}"),
        }
    }
});
