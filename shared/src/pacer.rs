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
//! A bitrate budget ([`FramePacer::set_bitrate`], [`FramePacer::on_encoded`]) backs the
//! encoder's own rate control: a leaky bucket of the bits encoded, drained at the target
//! bitrate. While it holds more than [`BUDGET_WINDOW`] of the target, no delta frame is
//! encoded (damage waits, nothing is lost: the next frame carries every change). An encoder
//! that keeps to its rate never meets it; one that cannot (libvpx at its coarsest quantiser on
//! a screen of changing text) sends fewer frames instead of a multiple of the bitrate the
//! congestion controller asked for. Keyframes a viewer asked for are neither held nor counted:
//! one is that viewer's way back to a picture, their rate is already bounded by
//! `min_keyframe_interval`, and deltas held behind a large keyframe would starve a receiver
//! that asks for a lost packet only when a later one arrives (aiortc: under 10 % loss, VP8 at
//! 300 kbit/s then decoded 0.2 frames/s, one keyframe after another).
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

/// How far the bits encoded may run ahead of the bitrate budget before frames are held back:
/// half a second of the target (twice x264's rate-control buffer here, a quarter second).
pub const BUDGET_WINDOW: Duration = Duration::from_millis(500);

const MICROS: u128 = 1_000_000;

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
    /// The bitrate budget in bit/s (0: none).
    budget_bps: u64,
    /// Bits encoded and not yet drained at `budget_bps`, as of `debt_at`, in millionths.
    debt_ubits: u128,
    debt_at: Option<Duration>,
    /// Times the next encode had to wait for the budget (once per wait).
    budget_waits: u64,
    budget_holding: bool,
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
            budget_bps: 0,
            debt_ubits: 0,
            debt_at: None,
            budget_waits: 0,
            budget_holding: false,
        }
    }

    /// Sets the bitrate budget at `now` (kbit/s; 0: none). Bits encoded before `now` drain at
    /// the old rate up to `now`.
    pub fn set_bitrate(&mut self, kbps: u32, now: Duration) {
        self.drain(now);
        self.budget_bps = u64::from(kbps) * 1000;
        if self.budget_bps == 0 {
            self.debt_ubits = 0;
        }
    }

    /// A frame of `bytes` was encoded at `now`: a delta frame counts against the bitrate
    /// budget, a keyframe does not.
    pub fn on_encoded(&mut self, bytes: usize, keyframe: bool, now: Duration) {
        self.drain(now);
        if self.budget_bps > 0 && !keyframe {
            self.debt_ubits = self.debt_ubits.saturating_add(bytes as u128 * 8 * MICROS);
        }
    }

    /// How many times an encode has waited for the bitrate budget.
    pub fn budget_waits(&self) -> u64 {
        self.budget_waits
    }

    /// Drains the bucket at the budget's rate up to `now` (exactly: the debt is kept in
    /// millionths of a bit, and one microsecond drains `budget_bps` of them).
    fn drain(&mut self, now: Duration) {
        if let Some(at) = self.debt_at {
            let drained = u128::from(self.budget_bps) * now.saturating_sub(at).as_micros();
            self.debt_ubits = self.debt_ubits.saturating_sub(drained);
        }
        self.debt_at = Some(self.debt_at.map_or(now, |at| at.max(now)));
    }

    /// When the budget lets the next frame be encoded (`now` if it does now).
    fn budget_free_at(&mut self, now: Duration) -> Duration {
        self.drain(now);
        if self.budget_bps == 0 {
            return now;
        }
        let allowance = u128::from(self.budget_bps) * BUDGET_WINDOW.as_micros();
        let excess = self.debt_ubits.saturating_sub(allowance);
        if excess == 0 {
            return now;
        }
        let wait_us = excess.div_ceil(u128::from(self.budget_bps));
        now + Duration::from_micros(wait_us.min(u128::from(u64::MAX)) as u64)
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
        let budget_free_at = self.budget_free_at(now);
        let rate_slot = now + self.min_interval.saturating_sub(self.credit);
        let next_slot = rate_slot.max(budget_free_at);

        let keyframe_at = self
            .keyframe_wanted
            .then(|| self.last_keyframe.map_or(now, |t| t + self.config.min_keyframe_interval).max(rate_slot));
        let damage_at = self.damaged_since.map(|_| next_slot);
        let refine_at = (self.damaged_since.is_none() && self.refines_left > 0)
            .then(|| {
                let quiet_since = self.last_damage.or(self.last_encode).unwrap_or(now);
                (quiet_since + self.config.refine_delay)
                    .max(self.last_encode.map_or(now, |t| t + self.config.refine_delay))
            })
            .map(|t| t.max(next_slot));

        let due = [keyframe_at, damage_at, refine_at].into_iter().flatten().min();
        // A wait for the budget is counted once, however often the caller polls during it.
        let held = due.is_some_and(|due| due > now && due == budget_free_at);
        if held && !self.budget_holding {
            self.budget_waits += 1;
        }
        self.budget_holding = held;
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

    /// 30 fps under a 400 kbit/s budget, which lets 500 ms of it (200 kbit) run ahead, after a
    /// 50 kB delta frame at 0 (400 kbit): 200 kbit over the allowance, drained by 500 ms.
    fn over_budget() -> FramePacer {
        let mut p = FramePacer::new(PacerConfig { max_fps: 30, refine_frames: 0, ..PacerConfig::default() });
        p.set_bitrate(400, ms(0));
        p.on_damage(ms(0));
        assert!(matches!(p.poll(ms(0)), PacerDecision::Encode { .. }));
        p.on_encoded(50_000, false, ms(0));
        p
    }

    #[test]
    fn frames_over_the_bitrate_budget_hold_the_next_ones_back() {
        let mut p = over_budget();
        p.on_damage(ms(10));
        assert_eq!(p.poll(ms(10)), PacerDecision::WaitUntil(ms(500)));
        assert_eq!(p.budget_waits(), 1);
        // Polling again during the same wait is not another wait; more damage joins the frame.
        p.on_damage(ms(200));
        assert_eq!(p.poll(ms(200)), PacerDecision::WaitUntil(ms(500)));
        assert_eq!(p.budget_waits(), 1);
        assert_eq!(p.poll(ms(500)), PacerDecision::Encode { keyframe: false, damaged_since: Some(ms(10)) });
        // Another wait after a wait that ended without a frame (the VNC connection went) counts again.
        p.on_encoded(50_000, false, ms(500));
        p.on_damage(ms(510));
        assert!(matches!(p.poll(ms(510)), PacerDecision::WaitUntil(_)));
        p.reset_damage();
        assert_eq!(p.poll(ms(520)), PacerDecision::Idle);
        p.on_damage(ms(530));
        assert!(matches!(p.poll(ms(530)), PacerDecision::WaitUntil(_)));
        assert_eq!(p.budget_waits(), 3);
    }

    #[test]
    fn keyframes_are_neither_held_nor_counted_by_the_budget() {
        let mut p = over_budget();
        // The budget holds damage until 500 ms, but a keyframe request goes at once (with the
        // damage), and its 100 kB do not push the next delta frame further out.
        p.on_damage(ms(100));
        assert_eq!(p.poll(ms(100)), PacerDecision::WaitUntil(ms(500)));
        p.on_keyframe_request(ms(150));
        assert_eq!(p.poll(ms(150)), PacerDecision::Encode { keyframe: true, damaged_since: Some(ms(100)) });
        p.on_encoded(100_000, true, ms(150));
        p.on_damage(ms(200));
        assert_eq!(p.poll(ms(200)), PacerDecision::WaitUntil(ms(500)));
        assert!(matches!(p.poll(ms(500)), PacerDecision::Encode { keyframe: false, .. }));
    }

    #[test]
    fn frames_within_the_budget_are_not_delayed() {
        // 30 fps of 1 kB frames (240 kbit/s) under a 300 kbit/s budget: every frame on its slot.
        let mut p = FramePacer::new(PacerConfig { max_fps: 30, refine_frames: 0, ..PacerConfig::default() });
        p.set_bitrate(300, ms(0));
        let mut encoded = 0;
        for t in 0..5000u64 {
            if t % 5 == 0 {
                p.on_damage(ms(t));
            }
            if let PacerDecision::Encode { .. } = p.poll(ms(t)) {
                p.on_encoded(1000, false, ms(t));
                encoded += 1;
            }
        }
        assert!((149..=152).contains(&encoded), "{encoded} frames in 5 s");
        assert_eq!(p.budget_waits(), 0);
    }

    #[test]
    fn the_budget_bounds_the_bits_sent_to_rate_times_time_plus_the_window() {
        // An encoder far over its rate (30 kB frames under 300 kbit/s, 7.2 Mbit/s at 30 fps):
        // over 10 s the bits encoded stay within 10 s of the rate, the window and one frame.
        let mut p = FramePacer::new(PacerConfig { max_fps: 30, refine_frames: 2, ..PacerConfig::default() });
        p.set_bitrate(300, ms(0));
        let mut bits = 0u64;
        let mut frames = 0;
        for t in 0..10_000u64 {
            p.on_damage(ms(t));
            if let PacerDecision::Encode { .. } = p.poll(ms(t)) {
                p.on_encoded(30_000, false, ms(t));
                bits += 240_000;
                frames += 1;
            }
        }
        assert!(bits <= 300_000 * 10 + 150_000 + 240_000, "{bits} bits in 10 s");
        assert!(frames >= 12, "{frames} frames: the budget should still let one through every 0.8 s");
        // A higher rate lets frames through sooner; idle time does not bank credit beyond the window.
        p.set_bitrate(6000, ms(10_000));
        p.on_damage(ms(10_000));
        assert!(matches!(p.poll(ms(10_100)), PacerDecision::Encode { .. }));
    }

    #[test]
    fn no_budget_by_default_and_zero_removes_it() {
        let mut p = pacer(0);
        p.on_damage(ms(0));
        assert!(matches!(p.poll(ms(0)), PacerDecision::Encode { .. }));
        p.on_encoded(10_000_000, false, ms(0));
        p.on_damage(ms(200));
        assert!(matches!(p.poll(ms(200)), PacerDecision::Encode { .. }));
        p.set_bitrate(100, ms(200));
        p.on_encoded(100_000, false, ms(200));
        p.on_damage(ms(400));
        assert!(matches!(p.poll(ms(400)), PacerDecision::WaitUntil(_)));
        p.set_bitrate(0, ms(400));
        assert!(matches!(p.poll(ms(400)), PacerDecision::Encode { .. }));
    }
}
