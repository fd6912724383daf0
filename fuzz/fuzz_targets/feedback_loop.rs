//! The agent's feedback loop for one viewer (`ViewerFeedback`) driven by arbitrary sends,
//! keyframe requests, NACKs, TWCC feedback, receiver reports and timer ticks in simulated time,
//! checked against its documented decisions:
//!
//! - only packets that were sent are resent, each at most `max_resends` times, never older
//!   than `max_age`; a NACKed sequence number gets exactly one outcome, a `Resend` outcome
//!   exactly one resend; `dequeued` resends come only from the tick;
//! - PLI and FIR each get exactly one keyframe; keyframes for unrecoverable packets come only
//!   after an unrecoverable outcome or a queued resend's expiry, at most one per second; the
//!   keyframe that ends a lossy spell comes only from the tick, at least 1.5 s after the last
//!   NACK, and once per spell;
//! - the bitrate stays within [min, max], every `Bitrate` decision is a change, and loss
//!   samples are fractions in [0, 1]; no NACK-share loss once TWCC feedback arrived.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loco_shared::feedback::{
    Decision, KeyframeReason, LossSource, ViewerFeedback, LOSSY_SPELL_END, REPAIR_KEYFRAME_INTERVAL,
};
use loco_shared::retransmit::{Outcome, RetransmitConfig};

#[derive(Debug, Arbitrary)]
enum Event {
    /// Time passes (microseconds), then the next packet (this many bytes) is sent.
    Send(u16, u16),
    /// Time passes (microseconds), then a burst of this many packets of 1200 bytes.
    Burst(u16, u8),
    /// A PLI or FIR.
    Pli,
    Fir,
    /// Time passes (microseconds), then a NACK for packets this far behind the newest.
    Nack(u16, Vec<u16>),
    /// A NACK for any sequence numbers.
    NackAny(Vec<u16>),
    /// Time passes (milliseconds), then TWCC feedback: base offset from the last, statuses as bits.
    Twcc(u8, u16, u64, u8),
    /// Time passes (milliseconds), then a receiver report: RTT (milliseconds, 0: none), fraction lost.
    Report(u16, u16, u8),
    /// Time passes (milliseconds), then the timer ticks.
    Tick(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    capacity: u8,
    budget_burst: u16,
    min_kbps: u32,
    max_kbps: u32,
    start_seq: u16,
    events: Vec<Event>,
}

struct Sent {
    at: Duration,
    resends: u8,
}

struct Model {
    cfg: RetransmitConfig,
    min_kbps: u32,
    max_kbps: u32,
    kbps: u32,
    sent: HashMap<u16, Sent>,
    last_repair: Option<Duration>,
    /// The last NACK of the current spell (cleared by its keyframe).
    nacked_at: Option<Duration>,
    twcc_seen: bool,
}

/// What kind of event the decisions answer.
#[derive(Clone, Copy, PartialEq)]
enum Cause {
    Tick,
    Pli,
    Fir,
    Nack(usize),
    Twcc,
    Report,
}

impl Model {
    fn check(&mut self, cause: Cause, now: Duration, decisions: Vec<Decision<u16>>) {
        let mut keyframes = Vec::new();
        let mut outcomes = 0;
        let (mut resend_outcomes, mut resends, mut unrecoverable, mut expired) = (0, 0, false, 0);
        for d in decisions {
            match d {
                Decision::Resend { packet, dequeued } => {
                    assert_eq!(dequeued, cause == Cause::Tick, "dequeued {dequeued} on a non-tick or vice versa");
                    let s = self.sent.get_mut(&packet).unwrap_or_else(|| panic!("resent {packet}, never sent"));
                    assert!(
                        now.saturating_sub(s.at) <= self.cfg.max_age,
                        "resent {packet} sent at {:?} at {now:?}",
                        s.at
                    );
                    s.resends += 1;
                    assert!(s.resends <= self.cfg.max_resends, "resent {packet} {} times", s.resends);
                    resends += 1;
                }
                Decision::Keyframe(reason) => keyframes.push(reason),
                Decision::Bitrate { kbps, .. } => {
                    assert!(matches!(cause, Cause::Twcc | Cause::Report), "bitrate from another event");
                    assert!((self.min_kbps..=self.max_kbps).contains(&kbps), "{kbps} out of range");
                    assert_ne!(kbps, self.kbps, "not a change");
                    self.kbps = kbps;
                }
                Decision::Nacked(outcome) => {
                    assert!(matches!(cause, Cause::Nack(_)));
                    outcomes += 1;
                    resend_outcomes += usize::from(outcome == Outcome::Resend);
                    unrecoverable |= outcome.needs_keyframe();
                }
                Decision::QueueExpired(n) => {
                    assert!(cause == Cause::Tick && n > 0);
                    expired += n;
                }
                Decision::Loss { source, fraction } => {
                    assert!((0.0..=1.0).contains(&fraction), "{fraction}");
                    match source {
                        LossSource::Twcc => assert!(cause == Cause::Twcc),
                        LossSource::Nack => assert!(cause == Cause::Report && !self.twcc_seen),
                    }
                }
                Decision::Rtt(_) => assert!(cause == Cause::Report),
            }
        }
        if let Cause::Nack(n) = cause {
            assert_eq!(outcomes, n, "one outcome per NACKed number");
            assert_eq!(resend_outcomes, resends, "one resend per Resend outcome");
            self.nacked_at = Some(now);
        } else {
            assert_eq!(outcomes, 0);
        }
        let spell_over =
            cause == Cause::Tick && self.nacked_at.is_some_and(|t| now.saturating_sub(t) >= LOSSY_SPELL_END);
        let repair_due = (unrecoverable || expired > 0)
            && self.last_repair.is_none_or(|t| now.saturating_sub(t) >= REPAIR_KEYFRAME_INTERVAL);
        let repairs = keyframes.iter().filter(|&&k| k == KeyframeReason::Unrecoverable).count();
        assert_eq!(repairs, usize::from(repair_due), "a repair keyframe is due: {repair_due}");
        let mut after_loss = 0;
        for k in keyframes {
            match k {
                KeyframeReason::Pli => assert!(cause == Cause::Pli),
                KeyframeReason::Fir => assert!(cause == Cause::Fir),
                KeyframeReason::Unrecoverable => {
                    assert!(unrecoverable || expired > 0, "a repair keyframe for nothing");
                    if let Some(last) = self.last_repair {
                        assert!(
                            now.saturating_sub(last) >= REPAIR_KEYFRAME_INTERVAL,
                            "repairs at {last:?} and {now:?}"
                        );
                    }
                    self.last_repair = Some(now);
                }
                KeyframeReason::AfterLoss => {
                    assert!(cause == Cause::Tick);
                    let at = self.nacked_at.take().expect("an after-loss keyframe without a lossy spell");
                    assert!(now.saturating_sub(at) >= LOSSY_SPELL_END);
                    after_loss += 1;
                }
            }
        }
        assert_eq!(after_loss, usize::from(spell_over), "the lossy spell is over: {spell_over}");
        if matches!(cause, Cause::Pli | Cause::Fir) {
            assert_eq!(resends + outcomes + expired, 0);
        }
    }
}

/// Sends the next packet: `bytes` bytes, sequence number `next`.
fn send(f: &mut ViewerFeedback<u16>, m: &mut Model, next: &mut u16, bytes: usize, now: Duration) {
    f.on_sent(*next, *next, bytes, now);
    m.sent.insert(*next, Sent { at: now, resends: 0 });
    *next = next.wrapping_add(1);
}

fuzz_target!(|input: Input| {
    let max_kbps = input.max_kbps % 100_000;
    let cfg = RetransmitConfig {
        capacity: u16::from(input.capacity).max(1) * 8,
        budget_burst: usize::from(input.budget_burst) * 4,
        ..Default::default()
    };
    let mut f: ViewerFeedback<u16> = ViewerFeedback::new(cfg.clone(), input.min_kbps, max_kbps);
    let kbps = f.kbps();
    let mut m = Model {
        cfg,
        min_kbps: input.min_kbps.clamp(1, max_kbps.max(1)),
        max_kbps: max_kbps.max(1),
        kbps,
        sent: HashMap::new(),
        last_repair: None,
        nacked_at: None,
        twcc_seen: false,
    };
    assert_eq!(kbps, m.max_kbps, "starts at the maximum");
    let mut next = input.start_seq;
    let mut twcc_base = 0u16;
    let mut now = Duration::ZERO;

    for event in input.events.into_iter().take(2000) {
        let (cause, decisions) = match event {
            Event::Send(dt, bytes) => {
                now += Duration::from_micros(u64::from(dt));
                send(&mut f, &mut m, &mut next, usize::from(bytes % 1500) + 1, now);
                continue;
            }
            Event::Burst(dt, n) => {
                now += Duration::from_micros(u64::from(dt));
                for _ in 0..n {
                    send(&mut f, &mut m, &mut next, 1200, now);
                }
                continue;
            }
            Event::Pli => (Cause::Pli, f.on_pli()),
            Event::Fir => (Cause::Fir, f.on_fir()),
            Event::Nack(dt, back) => {
                now += Duration::from_micros(u64::from(dt));
                let newest = next.wrapping_sub(1);
                let seqs: Vec<u16> = back.iter().take(64).map(|b| newest.wrapping_sub(b % 2048)).collect();
                (Cause::Nack(seqs.len()), f.on_nack(seqs, now))
            }
            Event::NackAny(seqs) => {
                let seqs: Vec<u16> = seqs.into_iter().take(64).collect();
                (Cause::Nack(seqs.len()), f.on_nack(seqs, now))
            }
            Event::Twcc(dt, offset, bits, n) => {
                now += Duration::from_millis(u64::from(dt));
                let n = u16::from(n % 65);
                twcc_base = twcc_base.wrapping_add(offset % 128);
                m.twcc_seen = true;
                let out = f.on_twcc(twcc_base, (0..n).map(|i| bits >> (i % 64) & 1 == 1), now);
                twcc_base = twcc_base.wrapping_add(n);
                (Cause::Twcc, out)
            }
            Event::Report(dt, rtt, lost) => {
                now += Duration::from_millis(u64::from(dt));
                let rtt = (rtt > 0).then(|| Duration::from_millis(u64::from(rtt)));
                (Cause::Report, f.on_receiver_report(rtt, lost, now))
            }
            Event::Tick(dt) => {
                now += Duration::from_millis(u64::from(dt % 3000));
                (Cause::Tick, f.poll(now))
            }
        };
        m.check(cause, now, decisions);
        assert_eq!(f.kbps(), m.kbps);
    }
});
