//! When to encode a frame.
//!
//! The agent encodes only when the screen changed (damage) or a viewer needs a keyframe, and
//! on average never faster than `max_fps`. The cap is a token bucket two frames deep, not a
//! fixed interval: a change is encoded the moment it arrives whenever the average allows it,
//! so a 30 fps source under a 30 fps cap is not delayed by half a frame for phase alignment. After a burst of changes it encodes a couple of *refinement*
//! frames of the now-still screen, so that a rate-controlled encoder can sharpen text that it
//! coded coarsely during motion; then it sends nothing until the screen changes again.
//!
//! The cap can change while running ([`FramePacer::set_max_fps`]: the viewers' attention,
//! [`crate::attention`]); a cap of 0 holds everything (damage and keyframe requests wait)
//! until a rate is set again.
//!
//! This is an I/O-free state machine: every call takes `now`, a monotonic time since an
//! arbitrary origin, and [`FramePacer::poll`] says what to do and when to ask again.

use std::time::Duration;

/// Tuning for [`FramePacer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerConfig {
    /// Upper bound on the encode rate.
    pub max_fps: u32,
    /// Refinement frames encoded after the screen stops changing.
    pub refine_frames: u32,
    /// Quiet time before each refinement frame.
    pub refine_delay: Duration,
    /// Keyframe requests closer together than this are merged into one (PLI storms).
    pub min_keyframe_interval: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        Self {
            max_fps: 30,
            refine_frames: 2,
            refine_delay: Duration::from_millis(150),
            min_keyframe_interval: Duration::from_millis(300),
        }
    }
}

/// What the encoder loop should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacerDecision {
    /// Encode a frame now. `damaged_since` is when the oldest change it carries was seen
    /// (`None` for a refinement or keyframe-only frame); use it for update-to-send latency.
    Encode { keyframe: bool, damaged_since: Option<Duration> },
    /// Nothing to do before this time (unless new damage or a keyframe request comes in).
    WaitUntil(Duration),
    /// Nothing to do until new damage or a keyframe request.
    Idle,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct FramePacer {
    config: PacerConfig,
    min_interval: Duration,
    /// Encode credit in time units: one frame costs `min_interval`; it refills in real time
    /// up to `BURST_FRAMES` frames.
    credit: Duration,
    credit_at: Option<Duration>,
    damaged_since: Option<Duration>,
    keyframe_wanted: bool,
    last_encode: Option<Duration>,
    last_keyframe: Option<Duration>,
    last_damage: Option<Duration>,
    refines_left: u32,
    /// The rate was set to 0: nothing is encoded until it is set again.
    paused: bool,
}

/// How many frames the rate cap lets through back to back after a quiet spell.
pub const BURST_FRAMES: u32 = 2;

impl FramePacer {
    pub fn new(config: PacerConfig) -> Self {
        let fps = config.max_fps.max(1);
        Self {
            config,
            min_interval: Duration::from_micros(1_000_000 / u64::from(fps)),
            credit: Duration::from_micros(1_000_000 / u64::from(fps)),
            credit_at: None,
            damaged_since: None,
            keyframe_wanted: false,
            last_encode: None,
            last_keyframe: None,
            last_damage: None,
            refines_left: 0,
            paused: false,
        }
    }

    /// Changes the frame-rate cap at `now` (0: encode nothing until it changes again; pending
    /// damage and keyframe requests wait). The credit earned so far is kept, up to the new
    /// cap's burst, so a higher rate takes effect at once.
    pub fn set_max_fps(&mut self, fps: u32, now: Duration) {
        if let Some(at) = self.credit_at {
            self.credit = (self.credit + now.saturating_sub(at)).min(self.min_interval * BURST_FRAMES);
        }
        self.credit_at = Some(now);
        self.paused = fps == 0;
        if fps > 0 {
            self.min_interval = Duration::from_micros(1_000_000 / u64::from(fps));
            self.credit = self.credit.min(self.min_interval * BURST_FRAMES);
        }
    }

    /// The current frame-rate cap (0 while paused).
    pub fn max_fps(&self) -> u32 {
        if self.paused {
            0
        } else {
            (1_000_000 / self.min_interval.as_micros().max(1)) as u32
        }
    }

    pub fn config(&self) -> &PacerConfig {
        &self.config
    }

    /// The screen changed at `now`.
    pub fn on_damage(&mut self, now: Duration) {
        self.damaged_since.get_or_insert(now);
        self.last_damage = Some(now);
        self.refines_left = self.config.refine_frames;
    }

    /// A viewer needs a keyframe (it joined, lost packets, or dropped a frame).
    pub fn on_keyframe_request(&mut self, _now: Duration) {
        self.keyframe_wanted = true;
    }

    /// Forgets pending work, e.g. when the VNC connection is lost and nothing can be encoded.
    pub fn reset_damage(&mut self) {
        self.damaged_since = None;
        self.refines_left = 0;
    }

    /// Whether a keyframe request is waiting.
    pub fn keyframe_pending(&self) -> bool {
        self.keyframe_wanted
    }

    /// What to do at `now`. An `Encode` answer counts as done: the caller encodes right away.
    pub fn poll(&mut self, now: Duration) -> PacerDecision {
        if self.paused {
            return PacerDecision::Idle;
        }
        // Refill the bucket up to now.
        if let Some(at) = self.credit_at {
            self.credit = (self.credit + now.saturating_sub(at)).min(self.min_interval * BURST_FRAMES);
        }
        self.credit_at = Some(now);
        let next_slot = now + self.min_interval.saturating_sub(self.credit);

        let keyframe_at = self
            .keyframe_wanted
            .then(|| self.last_keyframe.map_or(now, |t| t + self.config.min_keyframe_interval).max(next_slot));
        let damage_at = self.damaged_since.map(|_| next_slot);
        let refine_at = (self.damaged_since.is_none() && self.refines_left > 0)
            .then(|| {
                let quiet_since = self.last_damage.or(self.last_encode).unwrap_or(now);
                (quiet_since + self.config.refine_delay)
                    .max(self.last_encode.map_or(now, |t| t + self.config.refine_delay))
            })
            .map(|t| t.max(next_slot));

        let due = [keyframe_at, damage_at, refine_at].into_iter().flatten().min();
        let Some(due) = due else {
            return PacerDecision::Idle;
        };
        if due > now {
            return PacerDecision::WaitUntil(due);
        }

        let keyframe = keyframe_at.is_some_and(|t| t <= now);
        let damaged_since = self.damaged_since.take();
        if damaged_since.is_none() && !keyframe {
            self.refines_left = self.refines_left.saturating_sub(1);
        }
        if keyframe {
            self.keyframe_wanted = false;
            self.last_keyframe = Some(now);
        }
        self.last_encode = Some(now);
        self.credit = self.credit.saturating_sub(self.min_interval);
        PacerDecision::Encode { keyframe, damaged_since }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn pacer(refine_frames: u32) -> FramePacer {
        FramePacer::new(PacerConfig { max_fps: 10, refine_frames, ..PacerConfig::default() })
    }

    #[test]
    fn idle_without_damage() {
        let mut p = pacer(2);
        assert_eq!(p.poll(ms(0)), PacerDecision::Idle);
        assert_eq!(p.poll(ms(5000)), PacerDecision::Idle);
    }

    #[test]
    fn damage_is_encoded_at_once_then_capped() {
        let mut p = pacer(0);
        p.on_damage(ms(1));
        assert_eq!(p.poll(ms(2)), PacerDecision::Encode { keyframe: false, damaged_since: Some(ms(1)) });
        p.on_damage(ms(20));
        p.on_damage(ms(40));
        // 10 fps: the next slot is 100 ms after the last encode.
        assert_eq!(p.poll(ms(50)), PacerDecision::WaitUntil(ms(102)));
        assert_eq!(p.poll(ms(102)), PacerDecision::Encode { keyframe: false, damaged_since: Some(ms(20)) });
        assert_eq!(p.poll(ms(300)), PacerDecision::Idle);
    }

    #[test]
    fn refinement_frames_follow_a_burst_then_stop() {
        let mut p = pacer(2);
        p.on_damage(ms(0));
        assert!(matches!(p.poll(ms(0)), PacerDecision::Encode { damaged_since: Some(_), .. }));
        assert_eq!(p.poll(ms(10)), PacerDecision::WaitUntil(ms(150)));
        assert_eq!(p.poll(ms(150)), PacerDecision::Encode { keyframe: false, damaged_since: None });
        assert_eq!(p.poll(ms(160)), PacerDecision::WaitUntil(ms(300)));
        assert_eq!(p.poll(ms(300)), PacerDecision::Encode { keyframe: false, damaged_since: None });
        assert_eq!(p.poll(ms(301)), PacerDecision::Idle);
    }

    #[test]
    fn new_damage_cancels_refinement_wait() {
        let mut p = pacer(1);
        p.on_damage(ms(0));
        p.poll(ms(0));
        p.on_damage(ms(120));
        assert_eq!(p.poll(ms(120)), PacerDecision::Encode { keyframe: false, damaged_since: Some(ms(120)) });
        assert_eq!(p.poll(ms(121)), PacerDecision::WaitUntil(ms(270)));
    }

    #[test]
    fn keyframe_requests_are_served_and_merged() {
        let mut p = pacer(0);
        p.on_keyframe_request(ms(0));
        assert_eq!(p.poll(ms(0)), PacerDecision::Encode { keyframe: true, damaged_since: None });
        // A storm of requests right after: merged into one, 300 ms after the last keyframe.
        for t in [10, 20, 30] {
            p.on_keyframe_request(ms(t));
        }
        assert_eq!(p.poll(ms(40)), PacerDecision::WaitUntil(ms(300)));
        // Damage in between is still sent at the frame rate, as a delta frame.
        p.on_damage(ms(150));
        assert_eq!(p.poll(ms(150)), PacerDecision::Encode { keyframe: false, damaged_since: Some(ms(150)) });
        assert_eq!(p.poll(ms(300)), PacerDecision::Encode { keyframe: true, damaged_since: None });
        assert_eq!(p.poll(ms(400)), PacerDecision::Idle);
    }

    #[test]
    fn keyframe_carries_pending_damage() {
        let mut p = pacer(0);
        p.on_damage(ms(5));
        p.on_keyframe_request(ms(6));
        assert_eq!(p.poll(ms(7)), PacerDecision::Encode { keyframe: true, damaged_since: Some(ms(5)) });
    }

    #[test]
    fn sustained_motion_runs_at_max_fps() {
        let mut p = FramePacer::new(PacerConfig { max_fps: 30, ..PacerConfig::default() });
        let mut encoded = 0;
        // Damage every 5 ms for one second, polling every millisecond.
        for t in 0..1000u64 {
            if t % 5 == 0 {
                p.on_damage(ms(t));
            }
            if let PacerDecision::Encode { .. } = p.poll(ms(t)) {
                encoded += 1;
            }
        }
        assert!((29..=31).contains(&encoded), "encoded {encoded} frames");
    }

    #[test]
    fn a_source_at_the_cap_is_not_delayed() {
        // A 30 fps source with a little jitter under a 30 fps cap: every change is encoded
        // within 2 ms of arriving (a fixed interval would delay half of them by up to a frame).
        let mut p = FramePacer::new(PacerConfig { max_fps: 30, refine_frames: 0, ..PacerConfig::default() });
        let mut worst = Duration::ZERO;
        for i in 0..300u64 {
            let arrival = Duration::from_micros(i * 33_333 + (i * 7919 % 5) * 1000);
            p.on_damage(arrival);
            let mut t = arrival;
            loop {
                match p.poll(t) {
                    PacerDecision::Encode { .. } => break,
                    PacerDecision::WaitUntil(at) => t = at,
                    PacerDecision::Idle => panic!("damage pending but idle"),
                }
            }
            worst = worst.max(t - arrival);
        }
        assert!(worst <= Duration::from_millis(5), "worst delay {worst:?}");
    }

    #[test]
    fn a_lower_cap_slows_damage_and_a_higher_one_is_at_once() {
        let mut p = FramePacer::new(PacerConfig { max_fps: 30, refine_frames: 0, ..PacerConfig::default() });
        p.set_max_fps(12, ms(0));
        assert_eq!(p.max_fps(), 12);
        let mut encoded = Vec::new();
        for t in 0..2000u64 {
            if t % 5 == 0 {
                p.on_damage(ms(t));
            }
            if let PacerDecision::Encode { .. } = p.poll(ms(t)) {
                encoded.push(t);
            }
        }
        // 12 fps and the two-frame burst at the start.
        assert!((24..=26).contains(&encoded.len()), "{} frames in 2 s at 12 fps", encoded.len());
        // Back to 30 fps: the next change goes out without waiting for the 12 fps slot.
        let last = *encoded.last().unwrap();
        p.set_max_fps(30, ms(last + 40));
        p.on_damage(ms(last + 40));
        assert!(matches!(p.poll(ms(last + 40)), PacerDecision::Encode { .. }));
    }

    #[test]
    fn a_zero_cap_holds_everything_until_a_rate_returns() {
        let mut p = pacer(2);
        p.set_max_fps(0, ms(0));
        assert_eq!(p.max_fps(), 0);
        p.on_damage(ms(10));
        p.on_keyframe_request(ms(20));
        assert_eq!(p.poll(ms(30)), PacerDecision::Idle);
        assert_eq!(p.poll(ms(5000)), PacerDecision::Idle);
        assert!(p.keyframe_pending());
        // Coming back: the keyframe carries the damage seen while held, at once.
        p.set_max_fps(10, ms(6000));
        assert_eq!(p.poll(ms(6000)), PacerDecision::Encode { keyframe: true, damaged_since: Some(ms(10)) });
    }

    #[test]
    fn bursts_are_bounded() {
        let mut p = FramePacer::new(PacerConfig { max_fps: 10, refine_frames: 0, ..PacerConfig::default() });
        // After a long quiet spell, two frames may go back to back, not three.
        assert_eq!(p.poll(ms(0)), PacerDecision::Idle);
        let t = ms(10_000);
        let mut encoded = 0;
        for _ in 0..3 {
            p.on_damage(t);
            if let PacerDecision::Encode { .. } = p.poll(t) {
                encoded += 1;
            }
        }
        assert_eq!(encoded, BURST_FRAMES);
    }
}
