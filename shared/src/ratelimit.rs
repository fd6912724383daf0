//! A token bucket: at most `per_second` events on average, bursts of up to `burst`.
//! I/O-free: the caller passes the current time.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Duration>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self { per_second: f64::from(per_second), burst, tokens: burst, last: None }
    }

    /// Takes one token at `now` if there is one.
    pub fn allow(&mut self, now: Duration) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_sub(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut b = TokenBucket::new(100, 10);
        let t0 = Duration::ZERO;
        assert_eq!((0..20).filter(|_| b.allow(t0)).count(), 10);
        // One second later: 100 more at most (capped by the burst when taken at once).
        let t1 = Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.allow(t1)).count(), 10);
        // Spread out at the rate: all allowed.
        let mut allowed = 0;
        for i in 0..1000u64 {
            if b.allow(t1 + Duration::from_millis(10 * i + 10)) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 1000);
    }

    #[test]
    fn flood_is_held_to_the_rate() {
        let mut b = TokenBucket::new(50, 5);
        let mut allowed = 0;
        // 10 000 events over 2 seconds.
        for i in 0..10_000u64 {
            if b.allow(Duration::from_micros(i * 200)) {
                allowed += 1;
            }
        }
        assert!((100..=106).contains(&allowed), "allowed {allowed}");
    }
}
