//! The agent's NACK answering (`Retransmitter`) and loss measures (`TwccLoss`, the NACKed
//! share) driven by arbitrary sends, NACKs, RTT samples, polls and TWCC feedback in simulated
//! time, checked against a model of what was sent:
//!
//! - only packets that were sent are resent, each no older than `max_age`, at most
//!   `max_resends` times, and never twice within `min_gap`;
//! - resent bytes never exceed the budget: `budget_burst + budget_ratio × media bytes +
//!   budget_floor × elapsed time`;
//! - loss samples are fractions in [0, 1] over at least the documented number of packets.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loco_shared::retransmit::{Outcome, RetransmitConfig, Retransmitter};
use loco_shared::twcc::TwccLoss;

#[derive(Debug, Arbitrary)]
enum Event {
    /// Time passes (microseconds), then the next packet (this many bytes) is sent.
    Send(u16, u16),
    /// Time passes (microseconds), then a NACK for the packet this far behind the newest.
    Nack(u16, u16),
    /// A NACK for any sequence number.
    NackAny(u16),
    /// A round-trip time sample (milliseconds).
    Rtt(u16),
    /// Time passes (milliseconds), then the queue is polled.
    Poll(u8),
    /// TWCC feedback: base, statuses as bits.
    Twcc(u16, u64, u8),
    /// Take the loss measures.
    Sample,
}

#[derive(Debug, Arbitrary)]
struct Input {
    capacity: u8,
    start_seq: u16,
    events: Vec<Event>,
}

struct Sent {
    at: Duration,
    bytes: usize,
    resends: u8,
    last_resend: Option<Duration>,
}

fuzz_target!(|input: Input| {
    let cfg = RetransmitConfig { capacity: u16::from(input.capacity).max(1) * 8, ..Default::default() };
    let mut r: Retransmitter<u16> = Retransmitter::new(cfg.clone());
    let mut twcc = TwccLoss::default();
    let mut sent: HashMap<u16, Sent> = HashMap::new();
    let mut next = input.start_seq;
    let mut now = Duration::ZERO;
    let (mut media, mut resent) = (0usize, 0usize);

    let check_resend = |seq: u16, now: Duration, sent: &mut HashMap<u16, Sent>, resent: &mut usize| {
        let s = sent.get_mut(&seq).unwrap_or_else(|| panic!("resent {seq}, never sent"));
        assert!(now.saturating_sub(s.at) <= cfg.max_age, "resent {seq} sent at {:?} at {now:?}", s.at);
        if let Some(last) = s.last_resend {
            assert!(now.saturating_sub(last) >= cfg.min_gap, "resent {seq} at {last:?} and {now:?}");
        }
        s.resends += 1;
        assert!(s.resends <= cfg.max_resends, "resent {seq} {} times", s.resends);
        s.last_resend = Some(now);
        *resent += s.bytes;
    };

    for event in input.events.into_iter().take(4000) {
        match event {
            Event::Send(dt, bytes) => {
                now += Duration::from_micros(u64::from(dt));
                let bytes = usize::from(bytes % 1500) + 1;
                r.on_sent(next, next, bytes, now);
                sent.insert(next, Sent { at: now, bytes, resends: 0, last_resend: None });
                media += bytes;
                next = next.wrapping_add(1);
            }
            Event::Nack(_, _) | Event::NackAny(_) => {
                let seq = match event {
                    Event::Nack(dt, back) => {
                        now += Duration::from_micros(u64::from(dt));
                        next.wrapping_sub(1).wrapping_sub(back % 2048)
                    }
                    Event::NackAny(seq) => seq,
                    _ => unreachable!(),
                };
                let (outcome, packet) = r.on_nack(seq, now);
                assert_eq!(outcome == Outcome::Resend, packet.is_some(), "{outcome:?}");
                if let Some(p) = packet {
                    assert_eq!(p, seq);
                    check_resend(seq, now, &mut sent, &mut resent);
                }
            }
            Event::Rtt(ms) => r.on_rtt(Duration::from_millis(u64::from(ms))),
            Event::Poll(ms) => {
                now += Duration::from_millis(u64::from(ms));
                for seq in r.poll(now).resend {
                    check_resend(seq, now, &mut sent, &mut resent);
                }
                if !r.has_queued() {
                    assert!(r.poll(now).resend.is_empty());
                }
            }
            Event::Twcc(base, bits, n) => {
                let n = usize::from(n % 64);
                twcc.on_feedback(base, (0..n).map(|i| bits >> i & 1 == 1), now);
            }
            Event::Sample => {
                if let Some(s) = twcc.take_sample(now, Duration::from_millis(100)) {
                    assert!((0.0..=1.0).contains(&s.fraction), "{s:?}");
                    assert!(s.received + s.lost >= TwccLoss::MIN_PACKETS, "{s:?}");
                }
                if let Some(s) = r.take_nacked_share(now, Duration::from_millis(100)) {
                    assert!((0.0..=1.0).contains(&s.fraction) && s.nacked <= s.sent && s.sent >= 20, "{s:?}");
                }
            }
        }
        let allowed = cfg.budget_burst as f64 + cfg.budget_ratio * media as f64 + cfg.budget_floor * now.as_secs_f64();
        assert!(resent as f64 <= allowed + 1.0, "resent {resent} bytes, allowed {allowed}");
    }
});
