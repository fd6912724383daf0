//! Loss before retransmission, from transport-wide congestion control feedback (TWCC,
//! draft-holmer-rmcat-transport-wide-cc-extensions-01).
//!
//! The agent numbers every RTP packet it sends a viewer, resends included, with a
//! transport-wide sequence number; a viewer that negotiated `transport-cc` (Chromium, so Quest
//! Browser) reports every few tens of milliseconds which of those numbers arrived. That is the
//! path's real loss rate: a receiver report's `fraction lost` counts a resent packet as
//! received (about 1 % on a path losing 10 % once NACKs work), and counting NACKs mistakes
//! reordered packets for lost ones (a 0–100 ms jitter path had a third of its packets NACKed
//! for 10 % loss).
//!
//! A packet reported missing and then, in a later feedback, received (it was only late)
//! counts as received. Each number counts once per window; a sample needs at least
//! [`TwccLoss::MIN_PACKETS`] packets and `min_window` of time. I/O-free.

use std::time::Duration;

const RING: usize = 4096;

#[derive(Debug, Clone)]
pub struct TwccLoss {
    /// Last status seen per sequence number (`seq % RING`): (seq, received).
    seen: Vec<Option<(u16, bool)>>,
    window_start: Option<Duration>,
    received: u32,
    lost: u32,
}

/// Loss over the packets reported in one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwccSample {
    pub received: u32,
    pub lost: u32,
    /// `lost / (received + lost)`.
    pub fraction: f64,
}

impl Default for TwccLoss {
    fn default() -> Self {
        Self { seen: vec![None; RING], window_start: None, received: 0, lost: 0 }
    }
}

impl TwccLoss {
    pub const MIN_PACKETS: u32 = 20;

    /// One feedback: `statuses[i]` is whether packet `base + i` arrived.
    pub fn on_feedback(&mut self, base: u16, statuses: impl IntoIterator<Item = bool>, now: Duration) {
        self.window_start.get_or_insert(now);
        for (i, received) in statuses.into_iter().take(usize::from(u16::MAX)).enumerate() {
            let seq = base.wrapping_add(i as u16);
            let slot = &mut self.seen[usize::from(seq) % RING];
            match *slot {
                Some((s, was)) if s == seq => {
                    if received && !was {
                        // Late, not lost.
                        self.lost = self.lost.saturating_sub(1);
                        self.received = self.received.saturating_add(1);
                        *slot = Some((seq, true));
                    }
                }
                _ => {
                    *slot = Some((seq, received));
                    if received {
                        self.received = self.received.saturating_add(1);
                    } else {
                        self.lost = self.lost.saturating_add(1);
                    }
                }
            }
        }
    }

    /// The loss since the last sample, once `min_window` has passed and enough packets were
    /// reported.
    pub fn take_sample(&mut self, now: Duration, min_window: Duration) -> Option<TwccSample> {
        let start = self.window_start?;
        let total = self.received + self.lost;
        if now.saturating_sub(start) < min_window || total < Self::MIN_PACKETS {
            return None;
        }
        let sample =
            TwccSample { received: self.received, lost: self.lost, fraction: f64::from(self.lost) / f64::from(total) };
        self.window_start = Some(now);
        self.received = 0;
        self.lost = 0;
        Some(sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn counts_lost_share_per_window() {
        let mut t = TwccLoss::default();
        assert_eq!(t.take_sample(ms(0), ms(1000)), None, "nothing reported");
        // 100 packets in two feedbacks, every tenth missing.
        t.on_feedback(65_500, (0..50).map(|i| i % 10 != 3), ms(10));
        t.on_feedback(65_500u16.wrapping_add(50), (50..100).map(|i| i % 10 != 3), ms(60));
        assert_eq!(t.take_sample(ms(900), ms(1000)), None, "window not over");
        let s = t.take_sample(ms(1010), ms(1000)).expect("a sample");
        assert_eq!((s.received, s.lost), (90, 10));
        assert!((s.fraction - 0.1).abs() < 1e-9);
        assert_eq!(t.take_sample(ms(2100), ms(1000)), None, "next window is empty");
    }

    #[test]
    fn late_packets_are_not_lost_and_repeats_count_once() {
        let mut t = TwccLoss::default();
        // 0..40 reported with 5..10 missing; then 5..10 reported again, arrived late.
        t.on_feedback(0, (0..40).map(|i| !(5..10).contains(&i)), ms(0));
        t.on_feedback(5, [true; 5], ms(50));
        // A repeat of the same statuses changes nothing; a "lost" after "received" is ignored.
        t.on_feedback(0, (0..40).map(|_| true), ms(60));
        t.on_feedback(20, [false; 3], ms(70));
        let s = t.take_sample(ms(1000), ms(1000)).expect("a sample");
        assert_eq!((s.received, s.lost), (40, 0));
    }

    #[test]
    fn too_few_packets_keep_the_window_open() {
        let mut t = TwccLoss::default();
        t.on_feedback(10, [true, false, true], ms(0));
        assert_eq!(t.take_sample(ms(5000), ms(1000)), None);
        t.on_feedback(13, [true; 17], ms(5100));
        let s = t.take_sample(ms(5200), ms(1000)).expect("20 packets now");
        assert_eq!((s.received, s.lost), (19, 1));
    }
}
