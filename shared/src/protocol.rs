//! Messages on the `input` data channel, viewer → agent.
//!
//! One JSON object per data-channel message (text), documented in `docs/protocol.md`:
//!
//! ```json
//! {"type":"pointer","x":512,"y":384,"buttons":1}
//! {"type":"key","keysym":65307,"down":true}
//! {"type":"attention","state":"visible"}
//! ```
//!
//! The first two are input for the VM ([`InputMessage`]); `attention` says how much the viewer
//! looks at this desktop's panel ([`Attention`]), which the agent's frame rate follows.
//! [`ChannelMessage::parse`] tells them apart.
//!
//! Parsing is strict: unknown types, missing or extra fields, non-integer or negative
//! coordinates and oversized messages are errors. Coordinates that are well-formed but outside
//! the desktop are *not* errors: they are clamped to the desktop by [`InputMessage::clamped`],
//! because a controller ray that slides off a panel edge should pin the pointer to the edge.

use serde::{Deserialize, Serialize};

/// The largest message the agent accepts, in bytes. Real messages are under 80 bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The label of the data channel that carries [`InputMessage`]s.
pub const INPUT_CHANNEL_LABEL: &str = "input";

/// Pointer button bits, as in RFB's PointerEvent.
pub mod buttons {
    pub const LEFT: u8 = 1;
    pub const MIDDLE: u8 = 2;
    pub const RIGHT: u8 = 4;
    pub const WHEEL_UP: u8 = 8;
    pub const WHEEL_DOWN: u8 = 16;
    pub const WHEEL_LEFT: u8 = 32;
    pub const WHEEL_RIGHT: u8 = 64;
}

/// One input event from a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputMessage {
    /// Absolute pointer position in desktop pixels and the RFB button mask.
    Pointer { x: u32, y: u32, buttons: u8 },
    /// An X11 keysym pressed (`down: true`) or released.
    Key { keysym: u32, down: bool },
}

/// Why a message was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message is {0} bytes, larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("message is not valid JSON for an input event: {0}")]
    Malformed(String),
    #[error("binary messages are not accepted on the input channel")]
    Binary,
}

/// How much attention a viewer pays to this desktop's panel: the agent encodes at the full
/// frame rate for a focused panel, at a lower rate for a visible one, next to nothing for a
/// hidden one. Ordered: `Hidden < Visible < Focused` (the most attentive viewer wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attention {
    /// Out of view (outside every eye's view frustum).
    Hidden,
    /// In view, not the panel the user works in.
    Visible,
    /// The panel the user points at / works in.
    Focused,
}

impl Attention {
    pub const ALL: [Attention; 3] = [Attention::Hidden, Attention::Visible, Attention::Focused];

    /// The name on the wire, in metrics and in `/healthz`.
    pub fn label(self) -> &'static str {
        match self {
            Attention::Hidden => "hidden",
            Attention::Visible => "visible",
            Attention::Focused => "focused",
        }
    }

    /// The message a viewer sends for this state.
    pub fn to_json(self) -> String {
        serde_json::to_string(&AttentionWire::Attention { state: self }).unwrap_or_default()
    }
}

/// The wire form of an attention message, as strict as [`InputMessage`]'s.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum AttentionWire {
    Attention { state: Attention },
}

/// Any message on the `input` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelMessage {
    /// Input for the VM.
    Input(InputMessage),
    /// The viewer's attention to this panel changed.
    Attention(Attention),
}

impl ChannelMessage {
    /// Parses one data-channel text message: `"type":"attention"` as an attention message,
    /// anything else as [`InputMessage::parse`] does (with its errors).
    pub fn parse(text: &[u8]) -> Result<Self, ProtocolError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::TooLarge(text.len()));
        }
        /// Only the `type` field; the rest is checked by the message's own type.
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: Option<String>,
        }
        match serde_json::from_slice::<Kind>(text) {
            Ok(Kind { kind: Some(kind) }) if kind == "attention" => {
                match serde_json::from_slice::<AttentionWire>(text) {
                    Ok(AttentionWire::Attention { state }) => Ok(ChannelMessage::Attention(state)),
                    Err(e) => Err(ProtocolError::Malformed(e.to_string())),
                }
            }
            _ => InputMessage::parse(text).map(ChannelMessage::Input),
        }
    }

    /// Serialises the message as the viewer sends it.
    pub fn to_json(&self) -> String {
        match self {
            ChannelMessage::Input(m) => m.to_json(),
            ChannelMessage::Attention(a) => a.to_json(),
        }
    }
}

impl InputMessage {
    /// Parses one data-channel text message.
    pub fn parse(text: &[u8]) -> Result<Self, ProtocolError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::TooLarge(text.len()));
        }
        serde_json::from_slice(text).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    /// Serialises the message as the viewer sends it.
    pub fn to_json(&self) -> String {
        // Serialising these plain enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message with its coordinates clamped into a `width_px` × `height_px` desktop.
    /// A zero-sized desktop clamps to (0, 0).
    pub fn clamped(self, width_px: u32, height_px: u32) -> Self {
        match self {
            InputMessage::Pointer { x, y, buttons } => InputMessage::Pointer {
                x: x.min(width_px.saturating_sub(1)),
                y: y.min(height_px.saturating_sub(1)),
                buttons,
            },
            key @ InputMessage::Key { .. } => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pointer_and_key() {
        assert_eq!(
            InputMessage::parse(br#"{"type":"pointer","x":10,"y":20,"buttons":1}"#),
            Ok(InputMessage::Pointer { x: 10, y: 20, buttons: 1 })
        );
        assert_eq!(
            InputMessage::parse(br#"{"keysym":65293,"down":false,"type":"key"}"#),
            Ok(InputMessage::Key { keysym: 65293, down: false })
        );
    }

    #[test]
    fn round_trips() {
        for m in [
            InputMessage::Pointer { x: 1023, y: 767, buttons: buttons::RIGHT },
            InputMessage::Key { keysym: 0x61, down: true },
        ] {
            assert_eq!(InputMessage::parse(m.to_json().as_bytes()), Ok(m));
        }
    }

    #[test]
    fn rejects_garbage() {
        let bad: &[&[u8]] = &[
            b"",
            b"not json",
            b"[]",
            b"{}",
            br#"{"type":"pointer","x":1,"y":2}"#,
            br#"{"type":"pointer","x":-1,"y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":1.5,"y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":1,"y":2,"buttons":256}"#,
            br#"{"type":"pointer","x":99999999999,"y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":"1","y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":1,"y":2,"buttons":0,"extra":1}"#,
            br#"{"type":"key","keysym":65,"down":"yes"}"#,
            br#"{"type":"mouse","x":1,"y":2,"buttons":0}"#,
            b"\xff\xfe\x00",
        ];
        for b in bad {
            assert!(
                matches!(InputMessage::parse(b), Err(ProtocolError::Malformed(_))),
                "accepted {:?}",
                String::from_utf8_lossy(b)
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(InputMessage::parse(&huge), Err(ProtocolError::TooLarge(huge.len())));
    }

    #[test]
    fn parses_attention_and_input_on_one_channel() {
        for a in Attention::ALL {
            let json = a.to_json();
            assert_eq!(json, format!(r#"{{"type":"attention","state":"{}"}}"#, a.label()));
            assert_eq!(ChannelMessage::parse(json.as_bytes()), Ok(ChannelMessage::Attention(a)));
        }
        assert_eq!(
            ChannelMessage::parse(br#"{"state":"hidden","type":"attention"}"#),
            Ok(ChannelMessage::Attention(Attention::Hidden))
        );
        let key = InputMessage::Key { keysym: 0x61, down: true };
        assert_eq!(ChannelMessage::parse(key.to_json().as_bytes()), Ok(ChannelMessage::Input(key)));
        let m = ChannelMessage::Input(InputMessage::Pointer { x: 1, y: 2, buttons: 4 });
        assert_eq!(ChannelMessage::parse(m.to_json().as_bytes()), Ok(m));
        assert!(Attention::Hidden < Attention::Visible && Attention::Visible < Attention::Focused);
    }

    #[test]
    fn rejects_bad_attention() {
        let bad: &[&[u8]] = &[
            br#"{"type":"attention"}"#,
            br#"{"type":"attention","state":"sleepy"}"#,
            br#"{"type":"attention","state":"Focused"}"#,
            br#"{"type":"attention","state":2}"#,
            br#"{"type":"attention","state":null}"#,
            br#"{"type":"attention","state":"focused","extra":1}"#,
            br#"{"type":"attention","state":"focused","x":1,"y":2,"buttons":0}"#,
            br#"{"type":"attention","state":["focused"]}"#,
            br#"{"type":"Attention","state":"focused"}"#,
            br#"{"type":"pointer","state":"focused"}"#,
            br#"{"state":"focused"}"#,
            br#"{"type":1,"state":"focused"}"#,
            br#"{"type":"attention","state":"focused""#,
        ];
        for b in bad {
            assert!(
                matches!(ChannelMessage::parse(b), Err(ProtocolError::Malformed(_))),
                "accepted {:?}",
                String::from_utf8_lossy(b)
            );
        }
        let mut huge = br#"{"type":"attention","state":"focused"}"#.to_vec();
        huge.resize(MAX_MESSAGE_BYTES + 1, b' ');
        assert_eq!(ChannelMessage::parse(&huge), Err(ProtocolError::TooLarge(huge.len())));
        // Garbage that is not attention keeps the input parser's verdict.
        assert_eq!(ChannelMessage::parse(b"not json").is_err(), InputMessage::parse(b"not json").is_err());
    }

    #[test]
    fn clamps_to_desktop() {
        let m = InputMessage::Pointer { x: 5000, y: 768, buttons: 0 }.clamped(1024, 768);
        assert_eq!(m, InputMessage::Pointer { x: 1023, y: 767, buttons: 0 });
        let inside = InputMessage::Pointer { x: 3, y: 4, buttons: 1 };
        assert_eq!(inside.clamped(1024, 768), inside);
        let zero = InputMessage::Pointer { x: 3, y: 4, buttons: 1 }.clamped(0, 0);
        assert_eq!(zero, InputMessage::Pointer { x: 0, y: 0, buttons: 1 });
        let key = InputMessage::Key { keysym: 1, down: true };
        assert_eq!(key.clamped(0, 0), key);
    }
}
