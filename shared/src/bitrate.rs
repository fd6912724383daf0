//! Loss-based bitrate control for one viewer (the classic rule of libwebrtc's loss-based
//! controller), fed once a second or so with the loss the viewer saw. The agent feeds it the
//! loss before retransmission from the viewer's TWCC feedback ([`crate::twcc`]) when the viewer
//! sends it (Chromium does), else the share of its packets the viewer NACKed (or the `fraction
//! lost` of its receiver reports when that is larger); [`crate::feedback`] decides which:
//!
//! - more than 10 % lost: cut the rate by half the loss (`rate × (1 − loss/2)`), and to what
//!   got through when the send rate is known; several signals within one `min_interval` cut
//!   from the same starting rate, so one burst is not punished twice;
//! - less than 2 % lost: grow by 8 %, at most once per `min_interval` and never within one of
//!   a cut;
//! - in between: hold.
//!
//! Loss only shows once a queue on the path overflows; before that the queue makes every
//! packet late, which is worse for a desktop than a lower rate. So round-trip times (from
//! receiver reports) count too: the smallest RTT of the last 30 s is the path's base, and a
//! sample more than [`QUEUE_DELAY_LIMIT`] above it means a standing queue: cut to 85 %
//! (GCC's reaction to over-use), at most once per `min_interval`, and no growth for 2 s after.
//!
//! The rate stays within `[min_kbps, max_kbps]`; `max_kbps` is the operator's `--bitrate-kbps`.
//! I/O-free: the caller passes the time of each report.

use std::time::Duration;

/// Round-trip time above the path's base that counts as a standing queue.
pub const QUEUE_DELAY_LIMIT: Duration = Duration::from_millis(100);
/// How long the base RTT is trusted before a new sample replaces it.
const BASE_RTT_WINDOW: Duration = Duration::from_secs(30);
/// No growth this long after a queue was seen.
const QUEUE_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct BitrateController {
    min_kbps: u32,
    max_kbps: u32,
    kbps: u32,
    min_interval: Duration,
    last_change: Option<Duration>,
    /// The rate before the current interval's first change.
    interval_base: u32,
    base_rtt: Option<(Duration, Duration)>,
    queue_seen: Option<Duration>,
}

impl BitrateController {
    /// Starts at `max_kbps`.
    pub fn new(min_kbps: u32, max_kbps: u32) -> Self {
        let max_kbps = max_kbps.max(1);
        Self {
            min_kbps: min_kbps.clamp(1, max_kbps),
            max_kbps,
            kbps: max_kbps,
            min_interval: Duration::from_secs(1),
            last_change: None,
            interval_base: max_kbps,
            base_rtt: None,
            queue_seen: None,
        }
    }

    pub fn kbps(&self) -> u32 {
        self.kbps
    }

    fn in_interval(&self, now: Duration) -> bool {
        self.last_change.is_some_and(|t| now.saturating_sub(t) < self.min_interval)
    }

    /// Lowers the rate to `factor` of the rate before this interval's first change (so two
    /// signals about the same burst cut once, by the larger amount), or to `cap`.
    fn cut(&mut self, now: Duration, factor: f64, cap: Option<f64>) -> Option<u32> {
        let recent = self.in_interval(now);
        let base = if recent { self.interval_base } else { self.kbps };
        let mut next = f64::from(base) * factor;
        if let Some(cap) = cap.filter(|c| c.is_finite()) {
            next = next.min(cap);
        }
        let next = (next.max(0.0) as u32).clamp(self.min_kbps, self.max_kbps);
        if next >= self.kbps {
            return None;
        }
        if !recent {
            self.interval_base = self.kbps;
            self.last_change = Some(now);
        }
        self.kbps = next;
        Some(next)
    }

    /// A receiver report said `fraction_lost` (RTCP's 8-bit fixed point: lost/256) at `now`.
    /// Returns the new rate when it changed.
    pub fn on_report(&mut self, now: Duration, fraction_lost: u8) -> Option<u32> {
        self.on_loss(now, f64::from(fraction_lost) / 256.0, None)
    }

    /// The viewer lost `loss` (0..=1) of what was sent since the last call, at `now`; the
    /// agent sent it at `sent_kbps` (everything: media, resends, headers) when known. Above
    /// 10 % loss the rate is also capped to what got through, `(1 − loss) × sent_kbps × 0.9`:
    /// a sender far above a bottleneck comes down to it in one step instead of halving its
    /// way there. Returns the new rate when it changed.
    pub fn on_loss(&mut self, now: Duration, loss: f64, sent_kbps: Option<f64>) -> Option<u32> {
        let loss = if loss.is_finite() { loss.clamp(0.0, 1.0) } else { 0.0 };
        if loss > 0.10 {
            let cap = sent_kbps.map(|sent| (1.0 - loss) * sent * 0.9);
            return self.cut(now, 1.0 - loss / 2.0, cap);
        }
        let queued = self.queue_seen.is_some_and(|t| now.saturating_sub(t) < QUEUE_HOLD);
        if loss >= 0.02 || queued || self.in_interval(now) {
            return None;
        }
        let next = ((f64::from(self.kbps) * 1.08).ceil() as u32).clamp(self.min_kbps, self.max_kbps);
        if next == self.kbps {
            return None;
        }
        self.interval_base = self.kbps;
        self.kbps = next;
        self.last_change = Some(now);
        Some(next)
    }

    /// A round-trip time measured at `now`. Returns the new rate when it changed.
    pub fn on_rtt(&mut self, now: Duration, rtt: Duration) -> Option<u32> {
        let base = match self.base_rtt {
            Some((base, at)) if rtt > base && now.saturating_sub(at) < BASE_RTT_WINDOW => base,
            _ => {
                self.base_rtt = Some((rtt, now));
                rtt
            }
        };
        if rtt.saturating_sub(base) <= QUEUE_DELAY_LIMIT {
            return None;
        }
        self.queue_seen = Some(now);
        self.cut(now, 0.85, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: u64) -> Duration {
        Duration::from_secs(v)
    }

    #[test]
    fn heavy_loss_cuts_then_clean_reports_recover() {
        let mut c = BitrateController::new(300, 6000);
        assert_eq!(c.on_report(s(0), 0), None, "already at the maximum");
        // 25 % loss: cut by 12.5 %.
        assert_eq!(c.on_report(s(1), 64), Some(5250));
        // Within the interval: no second cut for the same burst.
        assert_eq!(c.on_report(s(1) + Duration::from_millis(500), 64), None);
        assert_eq!(c.on_report(s(3), 64), Some(4593));
        // 5 % loss: hold.
        assert_eq!(c.on_report(s(5), 13), None);
        // Clean: +8 % per second, back up to the cap.
        let mut t = 6;
        while c.kbps() < 6000 {
            assert!(c.on_report(s(t), 0).is_some());
            t += 1;
        }
        assert_eq!(c.kbps(), 6000);
        assert!(t < 12, "took {t} s to recover");
    }

    #[test]
    fn loss_as_a_fraction() {
        let mut c = BitrateController::new(300, 6000);
        assert_eq!(c.on_loss(s(1), 0.2, None), Some(5400));
        assert_eq!(c.on_loss(s(2), 0.05, None), None, "hold");
        assert_eq!(c.on_loss(s(3), f64::NAN, None), Some(5832), "garbage counts as no loss");
        assert_eq!(c.on_loss(s(4), 7.0, None), Some(2916), "clamped to 100 %");
    }

    #[test]
    fn a_standing_queue_cuts_and_holds_growth() {
        let ms = Duration::from_millis;
        let mut c = BitrateController::new(300, 6000);
        assert_eq!(c.on_rtt(s(0), ms(20)), None, "the first sample is the base");
        assert_eq!(c.on_rtt(s(1), ms(110)), None, "90 ms of jitter is not a queue");
        assert_eq!(c.on_rtt(s(2), ms(180)), Some(5100), "160 ms above the base: cut to 85 %");
        assert_eq!(c.on_rtt(s(2) + ms(500), ms(180)), None, "once per interval");
        // No loss, but the queue was seen less than 2 s ago: hold.
        assert_eq!(c.on_loss(s(3), 0.0, None), None);
        assert_eq!(c.on_loss(s(5), 0.0, None), Some(5508), "grows again 2 s after");
        // The base is the smallest RTT of the last 30 s; an old one is replaced.
        assert_eq!(c.on_rtt(s(40), ms(150)), None, "30 s on: 150 ms is the new base");
        assert_eq!(c.on_rtt(s(41), ms(200)), None);
        assert_eq!(c.on_rtt(s(42), ms(260)), Some(4681));
    }

    #[test]
    fn far_above_a_bottleneck_comes_down_in_one_step() {
        let mut c = BitrateController::new(300, 6000);
        // 6.6 Mbit/s sent, 77 % lost: 1.5 Mbit/s got through.
        assert_eq!(c.on_loss(s(1), 0.77, Some(6600.0)), Some(1366));
        // A second signal in the same interval cuts from the same start, only if deeper.
        assert_eq!(c.on_rtt(s(1), Duration::from_millis(10)), None, "base");
        assert_eq!(
            c.on_rtt(s(1) + Duration::from_millis(300), Duration::from_millis(200)),
            None,
            "85 % of 6000 is not lower"
        );
        assert_eq!(c.on_loss(s(1) + Duration::from_millis(500), 0.9, Some(6600.0)), Some(593)); // 0.1 × 6600 × 0.9, rounded down
        assert_eq!(c.on_loss(s(1) + Duration::from_millis(600), 0.0, None), None, "no growth within the interval");
    }

    #[test]
    fn never_below_the_floor() {
        let mut c = BitrateController::new(300, 6000);
        for t in 0..100 {
            c.on_report(s(t), 255);
        }
        assert_eq!(c.kbps(), 300);
        let mut tiny = BitrateController::new(500, 100);
        assert_eq!(tiny.kbps(), 100);
        assert_eq!(tiny.on_report(s(0), 255), None, "floor clamps to the cap");
    }
}
