//! One panel's connection to its agent, as a sans-I/O state machine.
//!
//! The shell (`web/`) owns the real WHEP session, its `RTCPeerConnection` and the timers; this
//! decides what they should do. Every call takes `now` (milliseconds on any monotonic clock),
//! randomness (the backoff's ±20 % jitter) comes in as a closure returning a uniform value in
//! `0..1`, and the answers are [`LinkCommand`]s. A session's asynchronous results carry the
//! `generation` they were started under; a teardown bumps it, so late results of an old
//! session are recognised and ignored.
//!
//! ```text
//! connecting ──(ICE connected, video has a size, input channel open)──▶ live
//!     │                                                                   │
//!     └──(error, failed/closed, 1.5 s disconnected, 15 s timeout, silent agent)──▶ down
//! down ──(backoff: 1 s doubling to 15 s, ±20 %; reset after 10 s live)──▶ connecting
//! connecting ──(the agent refused the key: 401)──▶ locked ──(a new key: unlock)──▶ connecting
//! ```
//!
//! A locked link does not retry: the same key would be refused again, and every refusal costs
//! the page's address one of the agent's few tries a minute (`loco_shared::keyguard`).

use crate::scene::StreamState;

pub const BACKOFF_MIN_MS: f64 = 1000.0;
pub const BACKOFF_MAX_MS: f64 = 15_000.0;
/// Live this long and the backoff starts again from its minimum.
pub const STABLE_MS: f64 = 10_000.0;
/// ICE "disconnected" this long counts as down.
pub const DISCONNECTED_GRACE_MS: f64 = 1500.0;
/// Nothing at all (no RTP, no RTCP sender report; the agent sends one every 2 s) from a live
/// agent for this long: ask its `/healthz` whether it is still there.
pub const SILENCE_PROBE_MS: f64 = 2600.0;
/// Negotiated but never connected in this time: down.
pub const CONNECT_TIMEOUT_MS: f64 = 15_000.0;

/// The peer connection's state, as far as the link cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// `new` or `connecting`.
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// What the shell sees of a negotiated session at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub peer: PeerState,
    /// The `<video>` has a size (a first frame was decoded).
    pub video: bool,
    /// The `input` data channel is open.
    pub input_open: bool,
}

/// What the shell should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCommand {
    /// Start a WHEP session; report with [`Link::connected`] under this generation.
    Connect { generation: u32 },
    /// Ask the agent's `/healthz` whether it is there; report with [`Link::probed`].
    Probe { generation: u32 },
    /// The link is down: close the session (if any) and forget what it showed (video, stats,
    /// the last pointer, captures). The link has already scheduled its next attempt.
    TearDown { reason: String },
}

/// What to do with a session that finished negotiating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Negotiated {
    /// Keep it: it is the panel's session now.
    Keep,
    /// It belongs to an older generation: close it.
    Stale,
    /// The attempt failed: tear down (see [`LinkCommand::TearDown`]).
    TearDown { reason: String },
}

/// One panel's link.
#[derive(Debug, Clone)]
pub struct Link {
    state: StreamState,
    generation: u32,
    /// A session is being negotiated.
    connecting: bool,
    attempts: u32,
    backoff_ms: f64,
    retry_at: f64,
    /// When the state (or the session) last changed.
    since: f64,
    disconnected_since: Option<f64>,
    /// When the agent was last heard from (RTP or RTCP).
    heard_at: f64,
    /// Whether this agent has a `/healthz` to probe, and whether a probe is in flight.
    can_probe: bool,
    probing: bool,
    error: Option<String>,
}

impl Link {
    /// A link that connects at its first tick. `can_probe`: the agent has a `/healthz`
    /// ([`health_url`]).
    pub fn new(now: f64, can_probe: bool) -> Self {
        Self {
            state: StreamState::Connecting,
            generation: 0,
            connecting: false,
            attempts: 0,
            backoff_ms: 0.0,
            retry_at: 0.0,
            since: now,
            disconnected_since: None,
            heard_at: 0.0,
            can_probe,
            probing: false,
            error: None,
        }
    }

    pub fn state(&self) -> StreamState {
        self.state
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Connection attempts started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the link last went down (cleared once live again).
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The current backoff step (0 after a stable live period or before the first failure).
    pub fn backoff_ms(&self) -> f64 {
        self.backoff_ms
    }

    /// How long until the next attempt (0 if due or not waiting).
    pub fn retry_in_ms(&self, now: f64) -> f64 {
        (self.retry_at - now).max(0.0)
    }

    /// When the next attempt is due.
    pub fn retry_at(&self) -> f64 {
        self.retry_at
    }

    /// A tick (every 250 ms). `observed` is `None` while the shell holds no session.
    pub fn tick(
        &mut self,
        now: f64,
        observed: Option<Observed>,
        random: &mut dyn FnMut() -> f64,
    ) -> Option<LinkCommand> {
        let Some(o) = observed else {
            if self.connecting || now < self.retry_at || self.state == StreamState::Locked {
                return None;
            }
            self.connecting = true;
            self.state = StreamState::Connecting;
            self.since = now;
            self.attempts += 1;
            return Some(LinkCommand::Connect { generation: self.generation });
        };
        let mut down: Option<&str> = None;
        match o.peer {
            PeerState::Connected => {
                self.disconnected_since = None;
                if o.video && o.input_open && self.state != StreamState::Live {
                    self.state = StreamState::Live;
                    self.since = now;
                    self.heard_at = now;
                    self.error = None;
                }
                if self.state == StreamState::Live && now - self.since > STABLE_MS {
                    self.backoff_ms = 0.0;
                }
            }
            PeerState::Disconnected => {
                let since = *self.disconnected_since.get_or_insert(now);
                if now - since > DISCONNECTED_GRACE_MS {
                    down = Some("connection lost");
                }
            }
            PeerState::Failed => down = Some("connection failed"),
            PeerState::Closed => down = Some("connection closed"),
            PeerState::Connecting => {
                if now - self.since > CONNECT_TIMEOUT_MS {
                    down = Some("the connection did not come up in time");
                }
            }
        }
        if let Some(reason) = down {
            return Some(LinkCommand::TearDown { reason: self.down(now, reason.into(), random) });
        }
        // A killed agent sends nothing and ICE takes ~8 s to notice: probe sooner.
        if self.can_probe && self.state == StreamState::Live && !self.probing && now - self.heard_at > SILENCE_PROBE_MS
        {
            self.probing = true;
            return Some(LinkCommand::Probe { generation: self.generation });
        }
        None
    }

    /// A negotiation started under `generation` ended.
    pub fn connected(
        &mut self,
        now: f64,
        generation: u32,
        result: Result<(), String>,
        random: &mut dyn FnMut() -> f64,
    ) -> Negotiated {
        if generation != self.generation {
            return Negotiated::Stale;
        }
        self.connecting = false;
        match result {
            Ok(()) => {
                self.since = now;
                Negotiated::Keep
            }
            Err(e) => Negotiated::TearDown { reason: self.down(now, e, random) },
        }
    }

    /// A negotiation started under `generation` ended with the agent refusing the key (401):
    /// the link is locked until [`Link::unlock`].
    pub fn refused(&mut self, now: f64, generation: u32, reason: String) -> Negotiated {
        if generation != self.generation {
            return Negotiated::Stale;
        }
        self.generation += 1;
        self.connecting = false;
        self.state = StreamState::Locked;
        self.since = now;
        self.disconnected_since = None;
        self.probing = false;
        self.backoff_ms = 0.0;
        self.retry_at = f64::INFINITY;
        self.error = Some(reason.clone());
        Negotiated::TearDown { reason }
    }

    /// A new key was given: a locked link connects at its next tick (other links carry on).
    pub fn unlock(&mut self, now: f64) {
        if self.state == StreamState::Locked {
            self.state = StreamState::Down;
            self.retry_at = now;
            self.since = now;
        }
    }

    /// A `/healthz` probe started under `generation` answered.
    pub fn probed(
        &mut self,
        now: f64,
        generation: u32,
        alive: bool,
        random: &mut dyn FnMut() -> f64,
    ) -> Option<LinkCommand> {
        if generation != self.generation {
            return None;
        }
        self.probing = false;
        if alive {
            self.heard_at = now;
            None
        } else {
            Some(LinkCommand::TearDown { reason: self.down(now, "the agent does not answer".into(), random) })
        }
    }

    /// Start over at once with a new session (another codec): the shell tears down the current
    /// one (the returned command), and the next tick connects. The backoff is kept.
    pub fn renegotiate(&mut self, now: f64, reason: String) -> LinkCommand {
        self.generation += 1;
        self.connecting = false;
        self.state = StreamState::Connecting;
        self.since = now;
        self.disconnected_since = None;
        self.probing = false;
        self.retry_at = now;
        LinkCommand::TearDown { reason }
    }

    /// The agent was heard from (its RTP/RTCP counters moved).
    pub fn heard(&mut self, now: f64) {
        self.heard_at = now;
    }

    /// Marks the link down and schedules the next attempt; returns the reason.
    fn down(&mut self, now: f64, reason: String, random: &mut dyn FnMut() -> f64) -> String {
        self.generation += 1;
        self.connecting = false;
        self.state = StreamState::Down;
        self.since = now;
        self.disconnected_since = None;
        self.probing = false;
        self.backoff_ms =
            if self.backoff_ms > 0.0 { (self.backoff_ms * 2.0).min(BACKOFF_MAX_MS) } else { BACKOFF_MIN_MS };
        let jitter = 0.8 + 0.4 * random();
        self.retry_at = now + self.backoff_ms * jitter;
        self.error = Some(reason.clone());
        reason
    }
}

/// The agent's `/healthz` beside its WHEP endpoint (`…/whep` → `…/healthz`), if the URL has
/// that shape.
pub fn health_url(whep_url: &str) -> Option<String> {
    sibling(whep_url, "healthz")
}

/// The agent's `/ice` (the ICE servers, TURN credentials minted for this viewer) beside its
/// WHEP endpoint, if the URL has that shape.
pub fn ice_url(whep_url: &str) -> Option<String> {
    sibling(whep_url, "ice")
}

fn sibling(whep_url: &str, name: &str) -> Option<String> {
    let base = whep_url.split(['?', '#']).next().unwrap_or(whep_url);
    base.strip_suffix("/whep").map(|b| format!("{b}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mid() -> f64 {
        0.5
    }

    const UP: Observed = Observed { peer: PeerState::Connected, video: true, input_open: true };

    fn obs(peer: PeerState) -> Observed {
        Observed { peer, video: false, input_open: false }
    }

    /// Ticks without a session until the link asks to connect; returns when it did.
    fn wait_connect(link: &mut Link, mut now: f64) -> (f64, u32) {
        for _ in 0..1000 {
            if let Some(LinkCommand::Connect { generation }) = link.tick(now, None, &mut mid) {
                return (now, generation);
            }
            now += 250.0;
        }
        panic!("never reconnected");
    }

    /// Connects and goes live at `now`.
    fn go_live(link: &mut Link, now: f64) -> f64 {
        let (now, g) = wait_connect(link, now);
        assert_eq!(link.connected(now, g, Ok(()), &mut mid), Negotiated::Keep);
        assert_eq!(link.tick(now + 250.0, Some(UP), &mut mid), None);
        assert_eq!(link.state(), StreamState::Live);
        now + 250.0
    }

    fn fail_connect(link: &mut Link, now: f64) -> f64 {
        let (now, g) = wait_connect(link, now);
        assert!(matches!(link.connected(now, g, Err("refused".into()), &mut mid), Negotiated::TearDown { .. }));
        now
    }

    #[test]
    fn connects_at_once_then_only_once() {
        let mut link = Link::new(0.0, true);
        assert_eq!(link.state(), StreamState::Connecting);
        assert_eq!(link.tick(0.0, None, &mut mid), Some(LinkCommand::Connect { generation: 0 }));
        assert_eq!(link.tick(250.0, None, &mut mid), None, "one negotiation at a time");
        assert_eq!(link.attempts(), 1);
        assert_eq!(link.connected(300.0, 0, Ok(()), &mut mid), Negotiated::Keep);
        // Negotiated, not yet connected: still connecting.
        assert_eq!(link.tick(500.0, Some(obs(PeerState::Connecting)), &mut mid), None);
        assert_eq!(link.state(), StreamState::Connecting);
        // Connected but no video or no input channel yet: not live.
        let no_video = Observed { video: false, ..UP };
        assert_eq!(link.tick(750.0, Some(no_video), &mut mid), None);
        let no_input = Observed { input_open: false, ..UP };
        assert_eq!(link.tick(800.0, Some(no_input), &mut mid), None);
        assert_eq!(link.state(), StreamState::Connecting);
        assert_eq!(link.tick(1000.0, Some(UP), &mut mid), None);
        assert_eq!(link.state(), StreamState::Live);
        assert_eq!(link.error(), None);
    }

    #[test]
    fn renegotiate_starts_over_at_once() {
        let mut link = Link::new(0.0, true);
        let now = go_live(&mut link, 0.0);
        let g = link.generation();
        assert_eq!(link.renegotiate(now, "vp8".into()), LinkCommand::TearDown { reason: "vp8".into() });
        assert_eq!(link.state(), StreamState::Connecting);
        assert_eq!(link.generation(), g + 1, "late results of the old session are ignored");
        assert_eq!(link.tick(now, None, &mut mid), Some(LinkCommand::Connect { generation: g + 1 }));
        assert_eq!(link.error(), None);
    }

    #[test]
    fn backoff_doubles_from_1_to_15_s() {
        let mut link = Link::new(0.0, true);
        let mut now = 0.0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            now = fail_connect(&mut link, now);
            assert_eq!(link.state(), StreamState::Down);
            assert_eq!(link.error(), Some("refused"));
            waits.push(link.backoff_ms());
            // Exactly on time (jitter 0.5 → ×1.0): not a tick earlier.
            assert_eq!(link.retry_at(), now + link.backoff_ms());
            assert_eq!(link.tick(link.retry_at() - 1.0, None, &mut mid), None);
            now = link.retry_at();
        }
        assert_eq!(waits, [1000.0, 2000.0, 4000.0, 8000.0, 15_000.0, 15_000.0, 15_000.0]);
        assert_eq!(link.attempts(), 7);
    }

    #[test]
    fn jitter_is_plus_minus_20_percent() {
        for (r, factor) in [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)] {
            let mut link = Link::new(0.0, true);
            let (now, g) = wait_connect(&mut link, 0.0);
            link.connected(now, g, Err("x".into()), &mut || r);
            assert!((link.retry_at() - (now + 1000.0 * factor)).abs() < 1e-9, "{r}");
        }
    }

    #[test]
    fn seeded_jitter_stays_within_20_percent_of_each_step() {
        // A small xorshift PRNG: the same retry times on every run.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut rng = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut link = Link::new(0.0, false);
        let mut now = 0.0;
        for _ in 0..50 {
            let (t, g) = wait_connect(&mut link, now);
            link.connected(t, g, Err("refused".into()), &mut rng);
            let wait = link.retry_at() - t;
            let step = link.backoff_ms();
            assert!((0.8 * step..=1.2 * step).contains(&wait), "{wait} for a {step} ms step");
            now = link.retry_at();
        }
        assert_eq!(link.backoff_ms(), BACKOFF_MAX_MS);
    }

    #[test]
    fn backoff_resets_after_10_s_live_only() {
        let mut link = Link::new(0.0, false);
        let mut now = fail_connect(&mut link, 0.0);
        now = fail_connect(&mut link, now);
        now = fail_connect(&mut link, now);
        assert_eq!(link.backoff_ms(), 4000.0);
        // Live for a short while, then lost: the backoff keeps growing.
        let live_at = go_live(&mut link, now);
        assert_eq!(link.tick(live_at + 5000.0, Some(UP), &mut mid), None);
        assert!(matches!(
            link.tick(live_at + 5250.0, Some(obs(PeerState::Failed)), &mut mid),
            Some(LinkCommand::TearDown { .. })
        ));
        assert_eq!(link.backoff_ms(), 8000.0);
        // Live for over 10 s: back to 1 s.
        let live_at = go_live(&mut link, live_at + 5250.0);
        assert_eq!(link.tick(live_at + STABLE_MS, Some(UP), &mut mid), None);
        assert_eq!(link.backoff_ms(), 8000.0, "not yet: strictly longer than 10 s");
        assert_eq!(link.tick(live_at + STABLE_MS + 250.0, Some(UP), &mut mid), None);
        assert_eq!(link.backoff_ms(), 0.0);
        let t = live_at + 11_000.0;
        assert_eq!(
            link.tick(t, Some(obs(PeerState::Closed)), &mut mid),
            Some(LinkCommand::TearDown { reason: "connection closed".into() })
        );
        assert_eq!(link.backoff_ms(), 1000.0);
        assert_eq!(link.retry_at(), t + 1000.0);
    }

    #[test]
    fn disconnected_has_a_grace_period() {
        let mut link = Link::new(0.0, false);
        let now = go_live(&mut link, 0.0);
        let d = obs(PeerState::Disconnected);
        assert_eq!(link.tick(now, Some(d), &mut mid), None);
        assert_eq!(link.tick(now + DISCONNECTED_GRACE_MS, Some(d), &mut mid), None);
        // Back to connected resets the grace.
        assert_eq!(link.tick(now + 1600.0, Some(UP), &mut mid), None);
        assert_eq!(link.tick(now + 1700.0, Some(d), &mut mid), None);
        assert_eq!(link.tick(now + 3000.0, Some(d), &mut mid), None);
        assert_eq!(
            link.tick(now + 3250.0, Some(d), &mut mid),
            Some(LinkCommand::TearDown { reason: "connection lost".into() })
        );
        assert_eq!(link.state(), StreamState::Down);
    }

    #[test]
    fn a_session_that_never_connects_times_out_after_15_s() {
        let mut link = Link::new(0.0, false);
        let (now, g) = wait_connect(&mut link, 0.0);
        link.connected(now + 2000.0, g, Ok(()), &mut mid);
        let c = obs(PeerState::Connecting);
        // Counted from the end of the negotiation.
        assert_eq!(link.tick(now + 2000.0 + CONNECT_TIMEOUT_MS, Some(c), &mut mid), None);
        assert_eq!(
            link.tick(now + 2250.0 + CONNECT_TIMEOUT_MS, Some(c), &mut mid),
            Some(LinkCommand::TearDown { reason: "the connection did not come up in time".into() })
        );
    }

    #[test]
    fn failed_goes_down_at_once() {
        let mut link = Link::new(0.0, false);
        let now = go_live(&mut link, 0.0);
        assert_eq!(
            link.tick(now, Some(obs(PeerState::Failed)), &mut mid),
            Some(LinkCommand::TearDown { reason: "connection failed".into() })
        );
        // Down without a session: waits for the backoff, then connects under a new generation.
        let (_, g) = wait_connect(&mut link, now);
        assert_eq!(g, 1);
    }

    #[test]
    fn stale_generations_are_ignored() {
        let mut link = Link::new(0.0, true);
        let (now, g0) = wait_connect(&mut link, 0.0);
        assert_eq!(link.connected(now, g0, Ok(()), &mut mid), Negotiated::Keep);
        link.tick(now + 250.0, Some(UP), &mut mid);
        // A probe of generation 0 goes out…
        let probe = link.tick(now + 250.0 + SILENCE_PROBE_MS + 1.0, Some(UP), &mut mid);
        assert_eq!(probe, Some(LinkCommand::Probe { generation: 0 }));
        // …the connection fails meanwhile…
        link.tick(now + 3000.0, Some(obs(PeerState::Failed)), &mut mid);
        let retry_at = link.retry_at();
        // …and the probe's late answer changes nothing.
        assert_eq!(link.probed(now + 3100.0, g0, false, &mut mid), None);
        assert_eq!(link.retry_at(), retry_at);
        assert_eq!(link.backoff_ms(), 1000.0);
        // A late negotiation result of generation 0 must be closed, not kept.
        assert_eq!(link.connected(now + 3200.0, g0, Ok(()), &mut mid), Negotiated::Stale);
        assert_eq!(link.connected(now + 3200.0, g0, Err("late".into()), &mut mid), Negotiated::Stale);
        assert_eq!(link.error(), Some("connection failed"));
        let (_, g1) = wait_connect(&mut link, now + 3000.0);
        assert_eq!(g1, 1);
    }

    #[test]
    fn a_silent_agent_is_probed_after_2_6_s() {
        let mut link = Link::new(0.0, true);
        let live = go_live(&mut link, 0.0);
        assert_eq!(link.tick(live + SILENCE_PROBE_MS, Some(UP), &mut mid), None);
        // Heard from: the silence starts again.
        link.heard(live + 2000.0);
        assert_eq!(link.tick(live + SILENCE_PROBE_MS + 250.0, Some(UP), &mut mid), None);
        let t = live + 2000.0 + SILENCE_PROBE_MS + 1.0;
        assert_eq!(link.tick(t, Some(UP), &mut mid), Some(LinkCommand::Probe { generation: 0 }));
        // One probe at a time.
        assert_eq!(link.tick(t + 250.0, Some(UP), &mut mid), None);
        // It answers: silence counted from now.
        assert_eq!(link.probed(t + 300.0, 0, true, &mut mid), None);
        assert_eq!(link.tick(t + 300.0 + SILENCE_PROBE_MS, Some(UP), &mut mid), None);
        let t2 = t + 301.0 + SILENCE_PROBE_MS;
        assert_eq!(link.tick(t2, Some(UP), &mut mid), Some(LinkCommand::Probe { generation: 0 }));
        // It does not: down.
        assert_eq!(
            link.probed(t2 + 100.0, 0, false, &mut mid),
            Some(LinkCommand::TearDown { reason: "the agent does not answer".into() })
        );
        assert_eq!(link.state(), StreamState::Down);
    }

    #[test]
    fn agents_without_healthz_are_not_probed() {
        let mut link = Link::new(0.0, false);
        let live = go_live(&mut link, 0.0);
        assert_eq!(link.tick(live + 60_000.0, Some(UP), &mut mid), None);
        assert_eq!(link.state(), StreamState::Live);
    }

    #[test]
    fn health_urls() {
        assert_eq!(health_url("http://h:8001/whep").as_deref(), Some("http://h:8001/healthz"));
        assert_eq!(health_url("https://h/a/whep?x=1").as_deref(), Some("https://h/a/healthz"));
        assert_eq!(health_url("http://h/other"), None);
        assert_eq!(ice_url("https://h/vm/3/whep").as_deref(), Some("https://h/vm/3/ice"));
        assert_eq!(ice_url("http://h/other"), None);
    }

    #[test]
    fn a_refused_key_locks_the_link_until_a_new_key() {
        let mut link = Link::new(0.0, true);
        let (now, g) = wait_connect(&mut link, 0.0);
        assert_eq!(
            link.refused(now + 100.0, g, "the agent wants a key".into()),
            Negotiated::TearDown { reason: "the agent wants a key".into() }
        );
        assert_eq!(link.state(), StreamState::Locked);
        assert_eq!(link.error(), Some("the agent wants a key"));
        // No retries at all: each would cost the page's address one of the agent's tries.
        let attempts = link.attempts();
        let mut t = now;
        for _ in 0..(600_000 / 250) {
            t += 250.0;
            assert_eq!(link.tick(t, None, &mut mid), None);
        }
        assert_eq!(link.attempts(), attempts);
        assert_eq!(link.state(), StreamState::Locked);
        // A new key: it connects at the next tick, under a new generation.
        link.unlock(t);
        let (t2, g2) = wait_connect(&mut link, t);
        assert_eq!(t2, t, "connects at once");
        assert_ne!(g2, g);
        assert_eq!(link.state(), StreamState::Connecting);
        assert_eq!(link.connected(t2 + 50.0, g2, Ok(()), &mut mid), Negotiated::Keep);
        assert_eq!(link.tick(t2 + 300.0, Some(UP), &mut mid), None);
        assert_eq!(link.state(), StreamState::Live);
        assert_eq!(link.error(), None);
    }

    #[test]
    fn a_refusal_from_an_old_session_is_stale_and_unlock_leaves_other_states_alone() {
        let mut link = Link::new(0.0, true);
        let (now, g) = wait_connect(&mut link, 0.0);
        assert!(matches!(link.connected(now, g, Err("boom".into()), &mut mid), Negotiated::TearDown { .. }));
        assert_eq!(link.refused(now + 10.0, g, "late 401".into()), Negotiated::Stale);
        assert_eq!(link.state(), StreamState::Down);
        let retry_at = link.retry_at();
        link.unlock(now + 20.0);
        assert_eq!(link.state(), StreamState::Down);
        assert_eq!(link.retry_at(), retry_at, "a down link keeps its backoff");
    }
}
