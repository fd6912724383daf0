//! The agent's feedback loop for one viewer: what its RTCP says the agent should do.
//!
//! The viewer's RTCP comes in as plain events — keyframe requests (PLI, FIR), NACKed sequence
//! numbers, TWCC feedback already parsed to received/lost statuses, receiver reports' round-trip
//! time and `fraction lost` — along with the media packets sent and a timer tick
//! ([`POLL_INTERVAL`]); every call returns the [`Decision`]s that follow, in the order to carry
//! them out: packets to resend, keyframes to ask the encoder for, new target bitrates, and what
//! was measured on the way (for metrics and logs). The parts it ties together:
//!
//! - [`Retransmitter`] answers NACKs: once per 1.5 RTT, at most 4 times, within a byte
//!   budget; what the budget refuses queues and goes out, newest first, from the tick.
//! - Keyframes: PLI and FIR each ask for one. A NACK for a packet that can no longer be resent
//!   (or a queued resend that expired) means the viewer will never complete that frame: one
//!   keyframe, at most once per [`REPAIR_KEYFRAME_INTERVAL`]. And once a lossy spell is over
//!   (no NACK for [`LOSSY_SPELL_END`]) one more: a frame the viewer never got whole may still be
//!   referenced, and not every receiver asks (aiortc asks only when a later packet arrives, so
//!   a still screen would stay broken).
//! - Loss for the [`BitrateController`]: TWCC feedback ([`TwccLoss`], loss before
//!   retransmission, over windows of at least [`TWCC_WINDOW`]) once the viewer has sent any;
//!   until then, at each receiver report, the share of packets it NACKed
//!   ([`Retransmitter::take_nacked_share`], windows of at least [`NACK_SHARE_WINDOW`]), or the
//!   report's fraction lost if larger. Each loss sample comes with the rate the agent sent at
//!   since the previous sample (when that span is over [`SEND_RATE_MIN_SPAN`]).
//! - Round-trip times from receiver reports set the resend gap and, more than 100 ms above
//!   the path's base (a standing queue), cut the rate to 85 %
//!   ([`crate::bitrate::QUEUE_DELAY_LIMIT`]).
//!
//! I/O-free: the caller passes the time of every event (a monotonic time since an arbitrary
//! origin) and keeps the packets' bytes as `P`; it reads the wall clock for the RTT and carries
//! out the decisions.

use std::time::Duration;

use crate::bitrate::BitrateController;
use crate::retransmit::{Outcome, RetransmitConfig, Retransmitter};
use crate::twcc::TwccLoss;

/// How often the caller should call [`ViewerFeedback::poll`] (queued resends, the end of a
/// lossy spell), besides before each batch of RTCP.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Keyframes for packets that can no longer be resent: at most one this often.
pub const REPAIR_KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);
/// A lossy spell ends (one keyframe) after this long without a NACK.
pub const LOSSY_SPELL_END: Duration = Duration::from_millis(1500);
/// The shortest window a TWCC loss sample covers.
pub const TWCC_WINDOW: Duration = Duration::from_secs(1);
/// The shortest window a NACKed-share loss sample covers.
pub const NACK_SHARE_WINDOW: Duration = Duration::from_millis(900);
/// The send rate is known only over a span longer than this.
pub const SEND_RATE_MIN_SPAN: Duration = Duration::from_millis(200);

/// Why a keyframe is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeReason {
    /// The viewer sent a Picture Loss Indication.
    Pli,
    /// The viewer sent a Full Intra Request.
    Fir,
    /// A NACKed or queued packet can no longer be resent.
    Unrecoverable,
    /// A lossy spell ended: no NACK for [`LOSSY_SPELL_END`].
    AfterLoss,
}

/// What a loss sample was measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossSource {
    /// TWCC feedback: packets not reported received.
    Twcc,
    /// The share of packets NACKed, or the receiver report's fraction lost if larger.
    Nack,
}

/// Why the target bitrate changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateCause {
    /// Loss from TWCC feedback; the agent sent at `sent_kbps` over the sample, when known.
    Twcc { loss: f64, sent_kbps: Option<f64> },
    /// A viewer without TWCC: the share of packets it NACKed and its report's fraction lost.
    Nacks { nacked: f64, reported: f64, rtt: Option<Duration>, sent_kbps: Option<f64> },
    /// A round-trip time far enough above the path's base to mean a standing queue.
    Queue { rtt: Duration },
}

/// What the caller should do, or record, after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<P> {
    /// Send this packet again now. `dequeued`: it waited in the queue for the budget.
    Resend { packet: P, dequeued: bool },
    /// Ask the encoder for a keyframe.
    Keyframe(KeyframeReason),
    /// Set the viewer's target bitrate.
    Bitrate { kbps: u32, cause: RateCause },
    /// What became of one NACKed sequence number (for metrics; a `Resend` outcome is followed
    /// by its [`Decision::Resend`]).
    Nacked(Outcome),
    /// Queued resends that expired before the budget allowed them (for metrics).
    QueueExpired(usize),
    /// A loss sample the bitrate controller acted on (for metrics).
    Loss { source: LossSource, fraction: f64 },
    /// A round-trip time from a receiver report (for metrics).
    Rtt(Duration),
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ViewerFeedback<P> {
    resend: Retransmitter<P>,
    twcc: TwccLoss,
    twcc_seen: bool,
    rate: BitrateController,
    /// Time and bytes out at the previous loss sample, for the send rate over the next one.
    sent_mark: (Duration, u64),
    /// The last keyframe asked for an unrecoverable packet.
    repaired_at: Option<Duration>,
    /// The last NACK of the current lossy spell.
    nacked_at: Option<Duration>,
}

impl<P: Clone> ViewerFeedback<P> {
    /// The bitrate starts at `max_kbps` and stays within `[min_kbps, max_kbps]`.
    pub fn new(retransmit: RetransmitConfig, min_kbps: u32, max_kbps: u32) -> Self {
        Self {
            resend: Retransmitter::new(retransmit),
            twcc: TwccLoss::default(),
            twcc_seen: false,
            rate: BitrateController::new(min_kbps, max_kbps),
            sent_mark: (Duration::ZERO, 0),
            repaired_at: None,
            nacked_at: None,
        }
    }

    /// The viewer's current target bitrate.
    pub fn kbps(&self) -> u32 {
        self.rate.kbps()
    }

    /// The packets held for resends.
    pub fn retransmitter(&self) -> &Retransmitter<P> {
        &self.resend
    }

    /// A media packet of `bytes` bytes went out with sequence number `seq` at `now`.
    pub fn on_sent(&mut self, seq: u16, packet: P, bytes: usize, now: Duration) {
        self.resend.on_sent(seq, packet, bytes, now);
    }

    /// The timer tick (every [`POLL_INTERVAL`], and before each batch of RTCP): the keyframe
    /// that ends a lossy spell, and the queued resends the budget now allows.
    pub fn poll(&mut self, now: Duration) -> Vec<Decision<P>> {
        let mut out = Vec::new();
        if self.nacked_at.is_some_and(|t| now.saturating_sub(t) >= LOSSY_SPELL_END) {
            self.nacked_at = None;
            out.push(Decision::Keyframe(KeyframeReason::AfterLoss));
        }
        if self.resend.has_queued() {
            let polled = self.resend.poll(now);
            if polled.expired > 0 {
                out.push(Decision::QueueExpired(polled.expired));
                self.repair(now, &mut out);
            }
            out.extend(polled.resend.into_iter().map(|packet| Decision::Resend { packet, dequeued: true }));
        }
        out
    }

    /// A Picture Loss Indication.
    pub fn on_pli(&mut self) -> Vec<Decision<P>> {
        vec![Decision::Keyframe(KeyframeReason::Pli)]
    }

    /// A Full Intra Request.
    pub fn on_fir(&mut self) -> Vec<Decision<P>> {
        vec![Decision::Keyframe(KeyframeReason::Fir)]
    }

    /// One NACK, naming `seqs`, at `now`.
    pub fn on_nack(&mut self, seqs: impl IntoIterator<Item = u16>, now: Duration) -> Vec<Decision<P>> {
        self.nacked_at = Some(now);
        let mut out = Vec::new();
        let mut again = Vec::new();
        let mut unrecoverable = false;
        for seq in seqs {
            let (outcome, packet) = self.resend.on_nack(seq, now);
            out.push(Decision::Nacked(outcome));
            unrecoverable |= outcome.needs_keyframe();
            again.extend(packet);
        }
        if unrecoverable {
            self.repair(now, &mut out);
        }
        out.extend(again.into_iter().map(|packet| Decision::Resend { packet, dequeued: false }));
        out
    }

    /// One TWCC feedback: `statuses[i]` is whether transport-wide packet `base + i` arrived.
    pub fn on_twcc(&mut self, base: u16, statuses: impl IntoIterator<Item = bool>, now: Duration) -> Vec<Decision<P>> {
        self.twcc_seen = true;
        self.twcc.on_feedback(base, statuses, now);
        let mut out = Vec::new();
        if let Some(sample) = self.twcc.take_sample(now, TWCC_WINDOW) {
            out.push(Decision::Loss { source: LossSource::Twcc, fraction: sample.fraction });
            let sent_kbps = self.sent_kbps(now, self.resend.bytes_out());
            if let Some(kbps) = self.rate.on_loss(now, sample.fraction, sent_kbps) {
                out.push(Decision::Bitrate { kbps, cause: RateCause::Twcc { loss: sample.fraction, sent_kbps } });
            }
        }
        out
    }

    /// One report block of a receiver report: the round-trip time it shows (`None` when it
    /// shows none) and its `fraction lost` (lost/256).
    pub fn on_receiver_report(&mut self, rtt: Option<Duration>, fraction_lost: u8, now: Duration) -> Vec<Decision<P>> {
        let mut out = Vec::new();
        if let Some(rtt) = rtt {
            self.resend.on_rtt(rtt);
        }
        let share = self.resend.take_nacked_share(now, NACK_SHARE_WINDOW);
        if let Some(rtt) = rtt {
            out.push(Decision::Rtt(rtt));
            if let Some(kbps) = self.rate.on_rtt(now, rtt) {
                out.push(Decision::Bitrate { kbps, cause: RateCause::Queue { rtt } });
            }
        }
        if self.twcc_seen {
            return out;
        }
        let Some(share) = share else { return out };
        let reported = f64::from(fraction_lost) / 256.0;
        let loss = share.fraction.max(reported);
        out.push(Decision::Loss { source: LossSource::Nack, fraction: loss });
        let sent_kbps = self.sent_kbps(now, self.resend.bytes_out());
        if let Some(kbps) = self.rate.on_loss(now, loss, sent_kbps) {
            out.push(Decision::Bitrate {
                kbps,
                cause: RateCause::Nacks { nacked: share.fraction, reported, rtt, sent_kbps },
            });
        }
        out
    }

    /// A keyframe for a packet that can no longer be resent, unless one was asked for less
    /// than [`REPAIR_KEYFRAME_INTERVAL`] ago.
    fn repair(&mut self, now: Duration, out: &mut Vec<Decision<P>>) {
        if self.repaired_at.is_none_or(|t| now.saturating_sub(t) >= REPAIR_KEYFRAME_INTERVAL) {
            self.repaired_at = Some(now);
            out.push(Decision::Keyframe(KeyframeReason::Unrecoverable));
        }
    }

    /// The rate the agent sent at since the previous loss sample (everything: media, resends,
    /// headers), when that span is long enough to tell.
    fn sent_kbps(&mut self, now: Duration, bytes_out: u64) -> Option<f64> {
        let (t, b) = std::mem::replace(&mut self.sent_mark, (now, bytes_out));
        let secs = now.saturating_sub(t).as_secs_f64();
        (secs > SEND_RATE_MIN_SPAN.as_secs_f64()).then(|| bytes_out.saturating_sub(b) as f64 * 8.0 / 1000.0 / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    const MIN_KBPS: u32 = 300;
    const MAX_KBPS: u32 = 6000;

    /// A viewer sent packets `0..n`, 1000 bytes each, one per millisecond from 0.
    fn sent(n: u16) -> ViewerFeedback<u16> {
        let mut f = ViewerFeedback::new(RetransmitConfig::default(), MIN_KBPS, MAX_KBPS);
        for s in 0..n {
            f.on_sent(s, s, 1000, ms(u64::from(s)));
        }
        f
    }

    fn keyframes<P>(out: &[Decision<P>]) -> Vec<KeyframeReason> {
        out.iter()
            .filter_map(|d| match d {
                Decision::Keyframe(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    fn resent<P: Copy>(out: &[Decision<P>]) -> Vec<P> {
        out.iter()
            .filter_map(|d| match d {
                Decision::Resend { packet, .. } => Some(*packet),
                _ => None,
            })
            .collect()
    }

    fn bitrate<P>(out: &[Decision<P>]) -> Option<(u32, RateCause)> {
        out.iter().rev().find_map(|d| match d {
            Decision::Bitrate { kbps, cause } => Some((*kbps, *cause)),
            _ => None,
        })
    }

    fn loss<P>(out: &[Decision<P>]) -> Option<(LossSource, f64)> {
        out.iter().find_map(|d| match d {
            Decision::Loss { source, fraction } => Some((*source, *fraction)),
            _ => None,
        })
    }

    #[test]
    fn pli_and_fir_ask_for_a_keyframe_each_time() {
        let mut f = sent(10);
        assert_eq!(f.on_pli(), vec![Decision::Keyframe(KeyframeReason::Pli)]);
        assert_eq!(f.on_pli(), vec![Decision::Keyframe(KeyframeReason::Pli)], "the encoder merges storms");
        assert_eq!(f.on_fir(), vec![Decision::Keyframe(KeyframeReason::Fir)]);
        assert!(f.poll(ms(5000)).is_empty(), "no NACK, no queue: nothing to do");
    }

    #[test]
    fn nacks_are_answered_once_per_gap_with_their_outcomes() {
        let mut f = sent(100);
        let out = f.on_nack([50, 51], ms(100));
        assert_eq!(
            out,
            vec![
                Decision::Nacked(Outcome::Resend),
                Decision::Nacked(Outcome::Resend),
                Decision::Resend { packet: 50, dequeued: false },
                Decision::Resend { packet: 51, dequeued: false },
            ]
        );
        // Repeated before the resend can have arrived (no RTT yet: a 100 ms gap).
        assert_eq!(f.on_nack([50], ms(150)), vec![Decision::Nacked(Outcome::TooSoon)]);
        assert_eq!(resent(&f.on_nack([50], ms(200))), vec![50]);
        // An RTT sample sets the gap to 1.5 RTT: 150 ms.
        f.on_receiver_report(Some(ms(100)), 0, ms(210));
        assert_eq!(f.on_nack([50], ms(349)), vec![Decision::Nacked(Outcome::TooSoon)]);
        assert_eq!(resent(&f.on_nack([50], ms(350))), vec![50]);
        assert_eq!(resent(&f.on_nack([50], ms(500))), vec![50], "the fourth resend");
        let out = f.on_nack([50], ms(650));
        assert_eq!(out[0], Decision::Nacked(Outcome::TooMany), "at most 4 times");
        assert_eq!(keyframes(&out), vec![KeyframeReason::Unrecoverable], "only a keyframe repairs it now");
        assert_eq!(f.retransmitter().resent(), 5);
    }

    #[test]
    fn unrecoverable_packets_ask_for_a_keyframe_at_most_once_a_second() {
        let mut f = sent(100);
        // Older than a second: expired.
        let out = f.on_nack([10, 11], ms(1500));
        assert_eq!(out[..2], [Decision::Nacked(Outcome::Expired), Decision::Nacked(Outcome::Expired)]);
        assert_eq!(keyframes(&out), vec![KeyframeReason::Unrecoverable]);
        assert!(keyframes(&f.on_nack([12], ms(2000))).is_empty(), "throttled");
        assert!(keyframes(&f.on_nack([13], ms(2499))).is_empty(), "throttled");
        assert_eq!(keyframes(&f.on_nack([14], ms(2500))), vec![KeyframeReason::Unrecoverable]);
        // A packet never sent needs no keyframe.
        let out = f.on_nack([5000], ms(4000));
        assert_eq!(out, vec![Decision::Nacked(Outcome::Unknown)]);
    }

    #[test]
    fn the_end_of_a_lossy_spell_asks_for_one_keyframe() {
        let mut f = sent(100);
        f.on_nack([90], ms(100));
        f.on_nack([91], ms(1000));
        assert!(f.poll(ms(1020)).is_empty());
        assert!(f.poll(ms(2499)).is_empty(), "1.5 s after the last NACK, not the first");
        assert_eq!(f.poll(ms(2500)), vec![Decision::Keyframe(KeyframeReason::AfterLoss)]);
        assert!(f.poll(ms(2520)).is_empty(), "once per spell");
        assert!(f.poll(ms(9000)).is_empty());
        // The next spell (even a NACK for nothing resendable) ends with one too.
        f.on_nack([5000], ms(10_000));
        assert!(f.poll(ms(11_000)).is_empty());
        assert_eq!(keyframes(&f.poll(ms(11_600))), vec![KeyframeReason::AfterLoss]);
    }

    #[test]
    fn over_budget_resends_queue_newest_first_and_expiry_asks_for_a_keyframe() {
        let cfg = RetransmitConfig { budget_burst: 2000, budget_floor: 1000.0, ..Default::default() };
        let mut f: ViewerFeedback<u16> = ViewerFeedback::new(cfg, MIN_KBPS, MAX_KBPS);
        // 10 packets at 0 ms: 5000 bytes of budget from the media, 2000 of burst is the cap.
        for s in 0..10 {
            f.on_sent(s, s, 1000, ms(0));
        }
        let out = f.on_nack([1, 2, 3, 4], ms(0));
        assert_eq!(resent(&out), vec![1, 2], "the budget pays for two");
        assert_eq!(out[2..4], [Decision::Nacked(Outcome::Queued), Decision::Nacked(Outcome::Queued)]);
        // The floor refills 1000 bytes a second: one packet per second, the newest NACK first.
        assert!(f.poll(ms(500)).is_empty());
        assert_eq!(f.poll(ms(1000)), vec![Decision::Resend { packet: 4, dequeued: true }]);
        // Packet 3 waited over a second: expired; the viewer needs a keyframe. The lossy spell
        // (last NACK at 0) is over too.
        assert_eq!(
            f.poll(ms(2001)),
            vec![
                Decision::Keyframe(KeyframeReason::AfterLoss),
                Decision::QueueExpired(1),
                Decision::Keyframe(KeyframeReason::Unrecoverable),
            ]
        );
        assert!(!f.retransmitter().has_queued());
    }

    #[test]
    fn queue_expiry_and_nacks_share_the_repair_throttle() {
        let cfg = RetransmitConfig { budget_burst: 1000, budget_floor: 0.0, budget_ratio: 0.0, ..Default::default() };
        let mut f: ViewerFeedback<u16> = ViewerFeedback::new(cfg, MIN_KBPS, MAX_KBPS);
        for s in 0..100 {
            f.on_sent(s, s, 1000, ms(0));
        }
        assert_eq!(resent(&f.on_nack([1, 2], ms(0))), vec![1]);
        // Packet 2 can never be paid for: it expires in the queue after a second.
        assert_eq!(keyframes(&f.on_nack([3], ms(1001))), vec![KeyframeReason::Unrecoverable]);
        let out = f.poll(ms(1002));
        assert_eq!(out, vec![Decision::QueueExpired(1)], "expired, but a keyframe was just asked for");
    }

    #[test]
    fn receiver_reports_give_the_rtt_and_a_standing_queue_cuts_the_rate() {
        let mut f = sent(10);
        assert_eq!(f.on_receiver_report(Some(ms(20)), 0, ms(1000)), vec![Decision::Rtt(ms(20))], "the base");
        assert_eq!(f.retransmitter().srtt(), Some(ms(20)));
        assert!(bitrate(&f.on_receiver_report(Some(ms(110)), 0, ms(2000))).is_none(), "90 ms above: jitter");
        let out = f.on_receiver_report(Some(ms(180)), 0, ms(3000));
        assert_eq!(out[0], Decision::Rtt(ms(180)));
        assert_eq!(bitrate(&out), Some((5100, RateCause::Queue { rtt: ms(180) })), "cut to 85 %");
        assert_eq!(f.kbps(), 5100);
        assert_eq!(f.on_receiver_report(None, 0, ms(4000)), vec![], "no RTT, too few packets for a loss sample");
    }

    #[test]
    fn without_twcc_the_nacked_share_drives_the_rate() {
        let mut f = sent(100);
        // 30 of 100 packets NACKed (and resent).
        f.on_nack(0..30, ms(200));
        let out = f.on_receiver_report(None, 0, ms(1000));
        assert_eq!(loss(&out), Some((LossSource::Nack, 0.3)));
        // 130 000 bytes (media and resends) in 1 s: 1040 kbit/s, 70 % of it through, × 0.9.
        let (kbps, cause) = bitrate(&out).expect("a cut");
        assert_eq!(kbps, 655);
        assert_eq!(cause, RateCause::Nacks { nacked: 0.3, reported: 0.0, rtt: None, sent_kbps: Some(1040.0) });
        // The report's own fraction lost counts when larger.
        for s in 100..200 {
            f.on_sent(s, s, 1000, ms(1000 + u64::from(s)));
        }
        let out = f.on_receiver_report(Some(ms(30)), 128, ms(2500));
        assert_eq!(loss(&out), Some((LossSource::Nack, 0.5)));
        assert!(
            matches!(bitrate(&out), Some((_, RateCause::Nacks { nacked, reported, .. })) if nacked == 0.0 && reported == 0.5)
        );
        // Too short a window (900 ms) gives no sample.
        for s in 200..300 {
            f.on_sent(s, s, 1000, ms(2500));
        }
        assert_eq!(loss(&f.on_receiver_report(None, 255, ms(3000))), None);
    }

    #[test]
    fn once_twcc_arrives_it_drives_the_rate_and_reports_only_give_rtt() {
        let mut f = sent(100);
        f.on_nack(0..50, ms(200));
        // 100 packets reported, 20 lost, over a second.
        assert!(f.on_twcc(0, (0..50).map(|i| i % 5 != 0), ms(100)).is_empty(), "window not over");
        let out = f.on_twcc(50, (50..100).map(|i| i % 5 != 0), ms(1100));
        assert_eq!(loss(&out), Some((LossSource::Twcc, 0.2)));
        let (kbps, cause) = bitrate(&out).expect("a cut");
        assert!(matches!(cause, RateCause::Twcc { loss, sent_kbps: Some(_) } if loss == 0.2));
        assert!(kbps < MAX_KBPS);
        // Half the packets were NACKed, but TWCC is what counts now.
        let out = f.on_receiver_report(Some(ms(20)), 200, ms(2000));
        assert_eq!(out, vec![Decision::Rtt(ms(20))]);
    }

    #[test]
    fn clean_feedback_grows_the_rate_back_to_the_maximum_only() {
        let mut f = sent(10);
        let mut seq = 0u16;
        let mut kbps = Vec::new();
        for t in 0..60u64 {
            // 40 % lost for 5 s, then clean.
            let lossy = t < 5;
            let out = f.on_twcc(seq, (0..50).map(|i| !lossy || i % 5 > 1), ms(1000 * t));
            seq = seq.wrapping_add(50);
            if let Some((k, _)) = bitrate(&out) {
                kbps.push(k);
            }
            assert!((MIN_KBPS..=MAX_KBPS).contains(&f.kbps()));
        }
        assert_eq!(f.kbps(), MAX_KBPS, "{kbps:?}");
        assert!(kbps.iter().any(|&k| k < 3000), "{kbps:?}");
        assert!(kbps.windows(2).all(|w| w[0] != w[1]), "only changes are reported: {kbps:?}");
    }
}
