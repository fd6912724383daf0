//! The agent's I/O-free controllers driven by arbitrary event sequences in simulated time:
//! `FramePacer` (damage, keyframe requests, resets, polls), `BitrateController` (RTCP loss
//! reports) and `TokenBucket` (input rate limit). Checked against their documented contracts:
//!
//! - pacer: never more than `max_fps + BURST_FRAMES` encodes in any second; every encode has
//!   a whole frame of credit; `WaitUntil` is in the future and never more than one frame
//!   interval away while damage is pending; pending damage or keyframe requests never read as
//!   `Idle`; `damaged_since` is the first change since the previous encode; keyframes only
//!   when asked and never closer than `min_keyframe_interval`; at most `refine_frames`
//!   refinement frames per burst of changes. The cap changes at run time (`set_max_fps`, the
//!   viewers' attention): then the bound is the highest cap in force during that second, and
//!   a cap of 0 encodes nothing (`Idle`, whatever is pending) until a rate is set again.
//!   With a bitrate budget (`set_bitrate`, `on_encoded` after each encode): the delta frames
//!   encoded in any window [t, now] since the budget last changed, the one at `now` aside,
//!   hold at most `BUDGET_WINDOW` of the rate plus the rate times the window's length
//!   (keyframes are neither counted nor held); while
//!   damage is pending a `WaitUntil` is never further than one frame interval or the time
//!   the budget needs to drain to its window, whichever is later.
//! - bitrate: stays in [min, max], starts at max; a loss report over 10 % only lowers it, to
//!   no less than half the rate before the current one-second interval began; one below 2 %
//!   only raises it, by at most 8 %, never within a second of the interval's start; an RTT
//!   sample only lowers it, to no less than 85 % of that rate; in between it holds.
//! - token bucket: never more than `burst + per_second × t` events in any window of length t.
//! - key guard: a source gets its key checked (and, being wrong, counted) at most
//!   `burst + per_minute/60 × t` times in any window of length t, however many other sources
//!   spray failures; the table never holds more than `max_sources`; a `Wait` is never longer
//!   than one refill interval.
#![no_main]

use std::collections::VecDeque;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loco_shared::bitrate::BitrateController;
use loco_shared::keyguard::{KeyGuard, Verdict};
use loco_shared::pacer::{FramePacer, PacerConfig, PacerDecision, BUDGET_WINDOW, BURST_FRAMES};
use loco_shared::ratelimit::TokenBucket;

#[derive(Debug, Arbitrary)]
enum Event {
    /// Time passes (microseconds), then the screen changes.
    Damage(u16),
    /// Time passes, then a viewer asks for a keyframe.
    KeyframeRequest(u16),
    /// VNC connection lost: pending work forgotten.
    Reset,
    /// Time passes (microseconds), then the encoder loop polls.
    Poll(u16),
    /// A long quiet spell (milliseconds), then a poll.
    Sleep(u16),
    /// Poll exactly when the pacer last asked to be woken (what the encoder thread does).
    PollWhenDue,
    /// Time passes (milliseconds), then a receiver report with this fraction lost (x/256).
    Report(u16, u8),
    /// Time passes (microseconds), then an input event meets the rate limiter.
    Input(u16),
    /// Time passes (milliseconds), then a round-trip time sample (milliseconds).
    Rtt(u16, u16),
    /// Time passes (milliseconds), then a request with a wrong key from source `u8`.
    WrongKey(u16, u8),
    /// Time passes (milliseconds), then the pacer's frame-rate cap changes (0: hold).
    MaxFps(u16, u8),
    /// Time passes (milliseconds), then the bitrate budget changes (kbit/s; 0: none).
    Bitrate(u16, u16),
    /// The frames encoded from now on are this many bytes each.
    FrameBytes(u32),
}

#[derive(Debug, Arbitrary)]
struct Input {
    max_fps: u16,
    refine_frames: u8,
    refine_delay_ms: u16,
    min_keyframe_interval_ms: u16,
    min_kbps: u32,
    max_kbps: u32,
    input_per_sec: u16,
    input_burst: u16,
    guard_burst: u8,
    guard_per_minute: u8,
    guard_sources: u8,
    events: Vec<Event>,
}

const SECOND: Duration = Duration::from_secs(1);

struct PacerModel {
    pacer: FramePacer,
    min_interval: Duration,
    min_keyframe_interval: Duration,
    refine_frames: u32,
    encodes: VecDeque<Duration>,
    first_damage: Option<Duration>,
    keyframe_pending: bool,
    last_keyframe: Option<Duration>,
    refines_since_damage: u32,
    wake_at: Option<Duration>,
    /// Every cap in force: (since, fps); the first is the configured one.
    caps: Vec<(Duration, u32)>,
    /// The bitrate budget (bit/s, 0: none) and since when it holds.
    budget_bps: u64,
    budget_since: Duration,
    /// The frames encoded since then: (when, bits).
    sent: VecDeque<(Duration, u64)>,
    /// The bucket as the pacer documents it, in millionths of a bit, as of `debt_at`.
    debt: u128,
    debt_at: Duration,
    frame_bytes: u32,
}

impl PacerModel {
    fn paused(&self) -> bool {
        self.caps.last().is_some_and(|&(_, fps)| fps == 0)
    }

    /// The highest cap in force at any time in the second up to `now`.
    fn max_cap_within_a_second(&self, now: Duration) -> u32 {
        let start = now.saturating_sub(SECOND);
        let at_start = self.caps.iter().rev().find(|&&(t, _)| t <= start).map_or(0, |&(_, f)| f);
        self.caps.iter().filter(|&&(t, _)| t > start).map(|&(_, f)| f).fold(at_start, u32::max)
    }

    fn set_max_fps(&mut self, fps: u32, now: Duration) {
        self.pacer.set_max_fps(fps, now);
        self.caps.push((now, fps));
        if fps > 0 {
            self.min_interval = Duration::from_micros(1_000_000 / u64::from(fps));
        }
        assert_eq!(self.pacer.max_fps(), fps, "the cap reads back");
    }

    fn drain(&mut self, now: Duration) {
        self.debt = self.debt.saturating_sub(u128::from(self.budget_bps) * (now - self.debt_at).as_micros());
        self.debt_at = now;
    }

    /// How long the budget needs to drain to its window.
    fn budget_wait(&mut self, now: Duration) -> Duration {
        self.drain(now);
        if self.budget_bps == 0 {
            return Duration::ZERO;
        }
        let excess = self.debt.saturating_sub(u128::from(self.budget_bps) * BUDGET_WINDOW.as_micros());
        Duration::from_micros(excess.div_ceil(u128::from(self.budget_bps)) as u64)
    }

    fn set_bitrate(&mut self, kbps: u32, now: Duration) {
        self.pacer.set_bitrate(kbps, now);
        self.drain(now);
        self.budget_bps = u64::from(kbps) * 1000;
        if self.budget_bps == 0 {
            self.debt = 0;
        }
        self.budget_since = now;
        self.sent.clear();
    }

    fn encoded(&mut self, keyframe: bool, now: Duration) {
        let bits = u64::from(self.frame_bytes) * 8;
        self.pacer.on_encoded(self.frame_bytes as usize, keyframe, now);
        if self.budget_bps == 0 || keyframe {
            return;
        }
        // Every window since the budget changed, ending before this frame.
        let mut bits_since = 0u128;
        for &(t, b) in self.sent.iter().rev() {
            bits_since += u128::from(b);
            // In millionths of a bit, as exact as the pacer's own accounting.
            let limit = u128::from(self.budget_bps) * (BUDGET_WINDOW + (now - t)).as_micros();
            assert!(
                bits_since * 1_000_000 <= limit,
                "{bits_since} bits encoded in [{t:?}, {now:?}) under a budget of {} bit/s (since {:?})",
                self.budget_bps,
                self.budget_since
            );
        }
        self.drain(now);
        self.debt += u128::from(bits) * 1_000_000;
        self.sent.push_back((now, bits));
        if self.sent.len() > 64 {
            self.sent.pop_front();
        }
    }

    fn poll(&mut self, now: Duration) {
        let budget_wait = self.budget_wait(now);
        let d = self.pacer.poll(now);
        self.wake_at = None;
        match d {
            PacerDecision::Encode { keyframe, damaged_since } => {
                assert!(!self.paused(), "encoded at {now:?} with a cap of 0");
                assert_eq!(damaged_since, self.first_damage, "damaged_since at {now:?}");
                self.first_damage = None;
                if keyframe {
                    assert!(self.keyframe_pending, "keyframe nobody asked for at {now:?}");
                    if let Some(k) = self.last_keyframe {
                        assert!(now - k >= self.min_keyframe_interval, "keyframes at {k:?} and {now:?}");
                    }
                    self.keyframe_pending = false;
                    self.last_keyframe = Some(now);
                } else if damaged_since.is_none() {
                    self.refines_since_damage += 1;
                    assert!(
                        self.refines_since_damage <= self.refine_frames,
                        "refinement frame #{} with refine_frames={}",
                        self.refines_since_damage,
                        self.refine_frames
                    );
                }
                self.encodes.push_back(now);
                while self.encodes.front().is_some_and(|&t| now - t >= SECOND) {
                    self.encodes.pop_front();
                }
                let cap = self.max_cap_within_a_second(now);
                assert!(
                    self.encodes.len() <= (cap + BURST_FRAMES) as usize,
                    "{} encodes within one second at caps up to {cap} (up to {now:?}; {:?})",
                    self.encodes.len(),
                    self.caps
                );
                self.encoded(keyframe, now);
            }
            PacerDecision::WaitUntil(t) => {
                assert!(!self.paused(), "WaitUntil with a cap of 0 at {now:?}");
                assert!(t > now, "WaitUntil({t:?}) at {now:?} is not in the future");
                if self.first_damage.is_some() {
                    assert!(
                        t - now <= self.min_interval.max(budget_wait),
                        "damage pending, told to wait until {t:?} at {now:?} (budget: {budget_wait:?})"
                    );
                }
                self.wake_at = Some(t);
            }
            PacerDecision::Idle if self.paused() => {}
            PacerDecision::Idle => {
                assert!(self.first_damage.is_none(), "idle with damage pending at {now:?}");
                assert!(!self.keyframe_pending, "idle with a keyframe request pending at {now:?}");
                assert_eq!(self.pacer.keyframe_pending(), false);
            }
        }
        assert_eq!(self.pacer.keyframe_pending(), self.keyframe_pending);
    }
}

fuzz_target!(|inp: Input| {
    let max_fps = u32::from(inp.max_fps % 1000).max(1);
    let config = PacerConfig {
        max_fps,
        refine_frames: u32::from(inp.refine_frames % 8),
        refine_delay: Duration::from_millis(u64::from(inp.refine_delay_ms % 2000)),
        min_keyframe_interval: Duration::from_millis(u64::from(inp.min_keyframe_interval_ms % 2000)),
    };
    let mut m = PacerModel {
        pacer: FramePacer::new(config),
        min_interval: Duration::from_micros(1_000_000 / u64::from(max_fps)),
        min_keyframe_interval: config.min_keyframe_interval,
        refine_frames: config.refine_frames,
        encodes: VecDeque::new(),
        first_damage: None,
        keyframe_pending: false,
        last_keyframe: None,
        refines_since_damage: 0,
        wake_at: None,
        caps: vec![(Duration::ZERO, max_fps)],
        budget_bps: 0,
        budget_since: Duration::ZERO,
        sent: VecDeque::new(),
        debt: 0,
        debt_at: Duration::ZERO,
        frame_bytes: 1000,
    };

    let mut bitrate = BitrateController::new(inp.min_kbps, inp.max_kbps);
    let max_kbps = inp.max_kbps.max(1);
    let min_kbps = inp.min_kbps.clamp(1, max_kbps);
    assert_eq!(bitrate.kbps(), max_kbps, "starts at the maximum");
    // The controller's one-second intervals: when the current one began, and the rate
    // before it.
    let mut interval: Option<(Duration, u32)> = None;

    let per_sec = u32::from(inp.input_per_sec);
    let burst = u32::from(inp.input_burst).max(1);
    let mut bucket = TokenBucket::new(per_sec, burst);
    let mut allowed: VecDeque<Duration> = VecDeque::new();

    let guard_burst = u32::from(inp.guard_burst).max(1);
    let guard_per_minute = u32::from(inp.guard_per_minute).max(1);
    let guard_sources = usize::from(inp.guard_sources).max(1);
    let mut guard = KeyGuard::new(guard_burst, guard_per_minute, guard_sources);
    // Source 0's checks are counted. With room for all 16 sources nothing is evicted and the
    // limit holds exactly; a smaller table may forget a source (bounded memory comes first).
    let mut checked: VecDeque<Duration> = VecDeque::new();
    let mut now = Duration::ZERO;
    let us = |v: u16| Duration::from_micros(u64::from(v));
    let ms = |v: u16| Duration::from_millis(u64::from(v));
    for ev in inp.events.iter().take(4096) {
        match *ev {
            Event::Damage(dt) => {
                now += us(dt);
                m.pacer.on_damage(now);
                m.first_damage.get_or_insert(now);
                m.refines_since_damage = 0;
            }
            Event::KeyframeRequest(dt) => {
                now += us(dt);
                m.pacer.on_keyframe_request(now);
                m.keyframe_pending = true;
            }
            Event::Reset => {
                m.pacer.reset_damage();
                m.first_damage = None;
            }
            Event::Poll(dt) => {
                now += us(dt);
                m.poll(now);
            }
            Event::Sleep(dt) => {
                now += ms(dt);
                m.poll(now);
            }
            Event::MaxFps(dt, fps) => {
                now += ms(dt);
                m.set_max_fps(u32::from(fps % 61), now);
            }
            Event::Bitrate(dt, kbps) => {
                now += ms(dt);
                m.set_bitrate(u32::from(kbps), now);
            }
            Event::FrameBytes(bytes) => m.frame_bytes = bytes % 4_000_000,
            Event::PollWhenDue => {
                if let Some(t) = m.wake_at {
                    now = now.max(t);
                }
                m.poll(now);
            }
            Event::Report(dt, lost) => {
                now += ms(dt);
                let before = bitrate.kbps();
                let r = bitrate.on_report(now, lost);
                let after = bitrate.kbps();
                assert!((min_kbps..=max_kbps).contains(&after), "{after} outside [{min_kbps}, {max_kbps}]");
                let recent = interval.filter(|&(t, _)| now - t < SECOND);
                match r {
                    None => assert_eq!(after, before),
                    Some(v) => {
                        assert_eq!(v, after);
                        assert_ne!(v, before, "Some() without a change");
                        let base = recent.map_or(before, |(_, b)| b);
                        let loss = f64::from(lost) / 256.0;
                        if loss > 0.10 {
                            assert!(
                                v < before && u64::from(v) * 2 + 2 >= u64::from(base),
                                "{base}/{before} -> {v} at loss {loss}"
                            );
                        } else if loss < 0.02 {
                            assert!(recent.is_none(), "grew within a second of {interval:?} at {now:?}");
                            assert!(v > before && f64::from(v) <= (f64::from(before) * 1.08).ceil(), "{before} -> {v}");
                        } else {
                            panic!("rate changed {before} -> {v} at a holding loss of {loss}");
                        }
                        if recent.is_none() {
                            interval = Some((now, before));
                        }
                    }
                }
            }
            Event::Rtt(dt, rtt) => {
                now += ms(dt);
                let before = bitrate.kbps();
                let r = bitrate.on_rtt(now, ms(rtt));
                let after = bitrate.kbps();
                assert!((min_kbps..=max_kbps).contains(&after), "{after} outside [{min_kbps}, {max_kbps}]");
                let recent = interval.filter(|&(t, _)| now - t < SECOND);
                match r {
                    None => assert_eq!(after, before),
                    Some(v) => {
                        assert_eq!(v, after);
                        let base = recent.map_or(before, |(_, b)| b);
                        assert!(
                            v < before && f64::from(v) >= (f64::from(base) * 0.85).floor() - 1.0,
                            "{base}/{before} -> {v}"
                        );
                        if recent.is_none() {
                            interval = Some((now, before));
                        }
                    }
                }
            }
            Event::WrongKey(dt, source) => {
                now += ms(dt);
                let source = source % 16;
                match guard.verdict(&source, now) {
                    Verdict::Check => {
                        guard.failed(&source, now);
                        if source == 0 {
                            checked.push_back(now);
                            for (k, &t) in checked.iter().rev().enumerate() {
                                let limit = f64::from(guard_burst)
                                    + f64::from(guard_per_minute) / 60.0 * (now - t).as_secs_f64()
                                    + 1.0;
                                assert!(
                                    (k + 1) as f64 <= limit || guard_sources < 16,
                                    "{} wrong keys checked in {:?}",
                                    k + 1,
                                    now - t
                                );
                                if k > 64 {
                                    break;
                                }
                            }
                            if checked.len() > 256 {
                                checked.pop_front();
                            }
                        }
                    }
                    Verdict::Wait(w) => {
                        assert!(w.as_secs_f64() <= 60.0 / f64::from(guard_per_minute) + 1e-6, "wait {w:?}");
                        assert!(w > Duration::ZERO);
                    }
                }
                assert!(guard.tracked() <= guard_sources, "{} sources tracked", guard.tracked());
            }
            Event::Input(dt) => {
                now += us(dt);
                if bucket.allow(now) {
                    allowed.push_back(now);
                    // Any window [t, now]: at most burst + per_sec·(now − t) (+1 for float slack).
                    for (k, &t) in allowed.iter().rev().enumerate() {
                        let limit = f64::from(burst) + f64::from(per_sec) * (now - t).as_secs_f64() + 1.0;
                        assert!((k + 1) as f64 <= limit, "{} events allowed in {:?}", k + 1, now - t);
                        if k > 64 {
                            break;
                        }
                    }
                    if allowed.len() > 256 {
                        allowed.pop_front();
                    }
                }
            }
        }
    }
});
