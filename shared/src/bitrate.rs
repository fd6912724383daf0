//! Loss-based bitrate control for one viewer (the classic rule of libwebrtc's loss-based
//! controller), fed once a second or so with the loss the viewer saw. The agent feeds it the
//! loss before retransmission from the viewer's TWCC feedback ([`crate::twcc`]) when the viewer
//! sends it (Chromium does), else the `fraction lost` of its RTCP receiver reports (loss after
//! retransmission: what a receiver without TWCC can tell):
//!
//! - more than 10 % lost: cut the rate by half the loss (`rate × (1 − loss/2)`), at most once
//!   per `min_interval` so one burst is not punished twice;
//! - less than 2 % lost: grow by 8 %, at most once per `min_interval`;
//! - in between: hold.
//!
//! The rate stays within `[min_kbps, max_kbps]`; `max_kbps` is the operator's `--bitrate-kbps`.
//! I/O-free: the caller passes the time of each report.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct BitrateController {
    min_kbps: u32,
    max_kbps: u32,
    kbps: u32,
    min_interval: Duration,
    last_change: Option<Duration>,
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
        }
    }

    pub fn kbps(&self) -> u32 {
        self.kbps
    }

    /// A receiver report said `fraction_lost` (RTCP's 8-bit fixed point: lost/256) at `now`.
    /// Returns the new rate when it changed.
    pub fn on_report(&mut self, now: Duration, fraction_lost: u8) -> Option<u32> {
        self.on_loss(now, f64::from(fraction_lost) / 256.0)
    }

    /// The viewer lost `loss` (0..=1) of what was sent since the last call, at `now`.
    /// Returns the new rate when it changed.
    pub fn on_loss(&mut self, now: Duration, loss: f64) -> Option<u32> {
        if self.last_change.is_some_and(|t| now.saturating_sub(t) < self.min_interval) {
            return None;
        }
        let loss = if loss.is_finite() { loss.clamp(0.0, 1.0) } else { 0.0 };
        let next = if loss > 0.10 {
            (f64::from(self.kbps) * (1.0 - loss / 2.0)) as u32
        } else if loss < 0.02 {
            (f64::from(self.kbps) * 1.08).ceil() as u32
        } else {
            self.kbps
        };
        let next = next.clamp(self.min_kbps, self.max_kbps);
        if next == self.kbps {
            return None;
        }
        self.kbps = next;
        self.last_change = Some(now);
        Some(next)
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
        assert_eq!(c.on_loss(s(1), 0.2), Some(5400));
        assert_eq!(c.on_loss(s(2), 0.05), None, "hold");
        assert_eq!(c.on_loss(s(3), f64::NAN), Some(5832), "garbage counts as no loss");
        assert_eq!(c.on_loss(s(4), 7.0), Some(2916), "clamped to 100 %");
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
