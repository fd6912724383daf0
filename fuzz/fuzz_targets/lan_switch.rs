//! The guest LAN's switch and DHCP relay (`loco_shared::lan`) driven by arbitrary frames from
//! arbitrary ports in simulated time, and arbitrary server replies. Checked against the module's
//! contracts:
//!
//! - a frame never goes back to the port it came from, and a dropped frame goes nowhere;
//! - frames shorter than a header or longer than `MAX_FRAME`, or from a group address, are
//!   dropped with that reason; every other frame is forwarded or flooded (or stops at the switch
//!   when addressed to it);
//! - a port never owns more than `macs_per_port` addresses: the table holds at most
//!   `ports × macs_per_port` entries, and a port that goes away leaves none behind;
//! - a relayed request is at most the input's payload plus the relay's 10 bytes of options,
//!   carries the relay's giaddr, and ends with the END option;
//! - a server reply turned into a frame is one valid Ethernet frame (≤ `MAX_FRAME`) from the
//!   switch's MAC with correct IPv4 and UDP checksums.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loco_shared::lan::{
    checksum, reply_frame, DropReason, Forward, RelayConfig, Switch, SwitchConfig, MAX_FRAME, RELAY_ADDED,
};

const RELAY: RelayConfig =
    RelayConfig { mac: [2, 0x4c, 0x4f, 0x43, 0x4f, 1], lan_ip: [10, 98, 0, 1], giaddr: [127, 0, 0, 2] };
const MACS_PER_PORT: usize = 3;

#[derive(Debug, Arbitrary)]
enum Event {
    /// Time passes (milliseconds), then a frame arrives from a port (0..8).
    Frame { wait_ms: u16, port: u8, frame: Vec<u8> },
    /// A frame built from a few addresses (so learning and forwarding get exercised).
    Small { wait_ms: u16, port: u8, dst: u8, src: u8, len: u16 },
    /// A port goes away.
    Gone(u8),
    /// The DHCP server answers.
    Reply(Vec<u8>),
}

fn mac(b: u8) -> [u8; 6] {
    // Low values are unicast addresses, 0xff the broadcast, odd top nibbles multicast.
    match b {
        0xff => [0xff; 6],
        b if b >= 0xf0 => [0x01, 0, 0x5e, 0, 0, b],
        b => [0x52, 0x54, 0, 0x4c, 0, b],
    }
}

fuzz_target!(|events: Vec<Event>| {
    let cfg = SwitchConfig { ageing: Duration::from_secs(5), macs_per_port: MACS_PER_PORT, relay: Some(RELAY) };
    let mut sw = Switch::new(cfg);
    let mut now = Duration::ZERO;
    let mut ports: HashSet<u32> = HashSet::new();
    for ev in events.into_iter().take(2000) {
        let (port, frame) = match ev {
            Event::Frame { wait_ms, port, frame } => {
                now += Duration::from_millis(wait_ms.into());
                (u32::from(port % 8), frame)
            }
            Event::Small { wait_ms, port, dst, src, len } => {
                now += Duration::from_millis(wait_ms.into());
                let mut f = Vec::new();
                f.extend_from_slice(&mac(dst));
                f.extend_from_slice(&mac(src));
                f.resize(usize::from(len % 1600), 0);
                (u32::from(port % 8), f)
            }
            Event::Gone(p) => {
                let p = u32::from(p % 8);
                sw.port_gone(p);
                ports.remove(&p);
                continue;
            }
            Event::Reply(payload) => {
                if let Ok(f) = reply_frame(&RELAY, &payload) {
                    assert!(f.len() <= MAX_FRAME);
                    assert_eq!(&f[6..12], &RELAY.mac);
                    assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header checksum");
                    let udp = &f[34..];
                    let mut pseudo = 0u32;
                    for w in f[26..34].chunks(2) {
                        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
                    }
                    pseudo += 17 + udp.len() as u32;
                    assert_eq!(checksum(udp, pseudo), 0, "UDP checksum");
                    assert!(!matches!(sw.route_own(now, &f), Forward::Drop(_)));
                }
                continue;
            }
        };
        ports.insert(port);
        let d = sw.frame(now, port, &frame);
        match d.forward {
            Forward::To(p) => assert_ne!(p, port, "sent back where it came from"),
            Forward::Flood { except } => assert_eq!(except, Some(port)),
            Forward::Drop(r) => {
                let want = if frame.len() < 14 {
                    Some(DropReason::Runt)
                } else if frame.len() > MAX_FRAME {
                    Some(DropReason::Oversized)
                } else if frame[6] & 1 == 1 {
                    Some(DropReason::MulticastSource)
                } else {
                    None
                };
                if let Some(w) = want {
                    assert_eq!(r, w);
                } else {
                    assert!(matches!(r, DropReason::SamePort | DropReason::ToSwitch), "{r:?}");
                }
            }
        }
        if frame.len() < 14 || frame.len() > MAX_FRAME {
            assert!(d.relay.is_none());
        }
        if let Some(p) = d.relay {
            let input_payload = frame.len() - 42;
            assert!(p.len() <= input_payload + RELAY_ADDED);
            assert_eq!(&p[24..28], &RELAY.giaddr);
            assert_eq!(p.last(), Some(&255));
        }
        assert!(sw.entries() <= ports.len() * MACS_PER_PORT, "{} entries for {} ports", sw.entries(), ports.len());
    }
    for p in ports {
        sw.port_gone(p);
    }
    assert_eq!(sw.entries(), 0, "ports gone, entries left");
});
