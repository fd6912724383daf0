//! Wrong keys, rate-limited per source address.
//!
//! Every request that names a wrong (or no) key takes one token from its source's bucket; a
//! source whose bucket is empty is turned away before its key is even looked at, until the
//! bucket refills. Right keys cost nothing, so a person who mistypes once is not locked out,
//! while guessing gets at most [`KeyGuard::new`]'s `per_minute` tries a minute per address.
//!
//! Memory is bounded: at most `max_sources` addresses are tracked; when a new one comes and the
//! table is full, buckets that have refilled (forgotten offences) go first, and if none has,
//! the one with the most tries left (the oldest of those): a spray of one-off failures from
//! many addresses pushes out other one-offs, not a guesser who is locked out. I/O-free: the
//! caller passes the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Duration,
}

/// What to do with a request from a source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Check its key.
    Check,
    /// Too many wrong keys from there lately: refuse without checking; it may try again after
    /// this long.
    Wait(Duration),
}

#[derive(Debug, Clone)]
pub struct KeyGuard<A> {
    per_second: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<A, Bucket>,
}

impl<A: Eq + Hash + Clone> KeyGuard<A> {
    /// `burst` wrong keys at once, then `per_minute` a minute, from each source.
    pub fn new(burst: u32, per_minute: u32, max_sources: usize) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, b: &Bucket, now: Duration) -> f64 {
        (b.tokens + now.saturating_sub(b.last).as_secs_f64() * self.per_second).min(self.burst)
    }

    /// Before looking at a request's key.
    pub fn verdict(&self, source: &A, now: Duration) -> Verdict {
        let Some(b) = self.buckets.get(source) else { return Verdict::Check };
        let tokens = self.refilled(b, now);
        if tokens >= 1.0 {
            Verdict::Check
        } else {
            Verdict::Wait(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    /// The request's key was wrong (or missing).
    pub fn failed(&mut self, source: &A, now: Duration) {
        if let Some(b) = self.buckets.get(source).copied() {
            let tokens = self.refilled(&b, now);
            self.buckets.insert(source.clone(), Bucket { tokens: (tokens - 1.0).max(0.0), last: now });
            return;
        }
        if self.buckets.len() >= self.max_sources {
            self.evict(now);
        }
        self.buckets.insert(source.clone(), Bucket { tokens: self.burst - 1.0, last: now });
    }

    fn evict(&mut self, now: Duration) {
        let burst = self.burst;
        let per_second = self.per_second;
        self.buckets.retain(|_, b| b.tokens + now.saturating_sub(b.last).as_secs_f64() * per_second < burst);
        if self.buckets.len() >= self.max_sources {
            let least_locked = self
                .buckets
                .iter()
                .map(|(a, b)| (a, self.refilled(b, now), b.last))
                .max_by(|x, y| x.1.total_cmp(&y.1).then(y.2.cmp(&x.2)))
                .map(|(a, _, _)| a.clone());
            if let Some(a) = least_locked {
                self.buckets.remove(&a);
            }
        }
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut g = KeyGuard::new(5, 6, 100); // 5 at once, then one every 10 s
        for i in 0..5 {
            assert_eq!(g.verdict(&1, s(0.0)), Verdict::Check, "try {i}");
            g.failed(&1, s(0.0));
        }
        let Verdict::Wait(w) = g.verdict(&1, s(0.0)) else { panic!("a sixth wrong key at once is checked") };
        assert!((w.as_secs_f64() - 10.0).abs() < 1e-6, "{w:?}");
        assert!(matches!(g.verdict(&1, s(9.9)), Verdict::Wait(_)));
        assert_eq!(g.verdict(&1, s(10.0)), Verdict::Check);
        g.failed(&1, s(10.0));
        assert!(matches!(g.verdict(&1, s(10.0)), Verdict::Wait(_)));
    }

    #[test]
    fn sources_are_separate_and_right_keys_cost_nothing() {
        let mut g = KeyGuard::new(2, 1, 100);
        g.failed(&"a", s(0.0));
        g.failed(&"a", s(0.0));
        assert!(matches!(g.verdict(&"a", s(1.0)), Verdict::Wait(_)));
        // Another address, never wrong: checked as often as it likes.
        for t in 0..100 {
            assert_eq!(g.verdict(&"b", s(f64::from(t) * 0.01)), Verdict::Check);
        }
        assert_eq!(g.tracked(), 1);
    }

    #[test]
    fn a_slow_guesser_never_gets_more_than_the_rate() {
        let mut g = KeyGuard::new(10, 30, 100);
        let mut checked = 0;
        // One try every 100 ms for ten minutes.
        for i in 0..6000 {
            let now = s(f64::from(i) * 0.1);
            if g.verdict(&7u32, now) == Verdict::Check {
                checked += 1;
                g.failed(&7u32, now);
            }
        }
        // 10 at once plus 30 a minute for 10 minutes.
        assert!((300..=311).contains(&checked), "{checked} keys checked in 10 minutes");
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_the_locked_out_guesser() {
        let mut g = KeyGuard::new(3, 1, 4);
        for _ in 0..3 {
            g.failed(&0u32, s(0.0)); // a guesser, locked out
        }
        for a in 1..1000u32 {
            g.failed(&a, s(1.0 + f64::from(a) * 0.001)); // then a spray of one-offs from other addresses
            assert!(g.tracked() <= 4);
        }
        // The spray pushed out its own kind, not the guesser, who is still locked out.
        assert!(matches!(g.verdict(&0u32, s(2.0)), Verdict::Wait(_)));
        assert_eq!(g.verdict(&1u32, s(2.0)), Verdict::Check);
    }

    #[test]
    fn forgotten_offences_are_evicted_first() {
        let mut g = KeyGuard::new(2, 60, 2);
        g.failed(&1u8, s(0.0)); // refilled one second later
        g.failed(&2u8, s(5.0));
        g.failed(&2u8, s(5.0)); // locked out at t=5
        g.failed(&3u8, s(5.5)); // table full: 1 has refilled and goes
        assert_eq!(g.tracked(), 2);
        assert!(matches!(g.verdict(&2u8, s(5.5)), Verdict::Wait(_)));
    }
}
