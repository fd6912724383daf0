//! From framebuffer damage to encoded frames in each viewer's queue.
//!
//! There is one encoder per codec in use, shared by all viewers of that codec, each on its own
//! OS thread (encoding is CPU-bound and must not stall the async runtime). The thread sleeps
//! until the VNC task reports damage or a viewer asks for a keyframe, asks the
//! [`FramePacer`] whether to encode now, converts the 16×16 tiles of the framebuffer the damage
//! touched to I420, tells the encoder which tiles changed, encodes, and offers the frame to
//! every viewer's bounded queue.
//!
//! A viewer whose queue is full loses that frame; since every later delta frame would then
//! decode wrongly, it is skipped until the next keyframe, which is requested at once. So a slow
//! viewer costs a bounded queue and a keyframe, never unbounded memory, and never slows the
//! others. An encoder with no viewers left is closed and its thread ends.
//!
//! How fast an encoder works follows its viewers' attention ([`loco_shared::attention`]): the
//! most attentive of them sets the frame-rate cap (focused: `--max-fps`; visible: `--visible-fps`;
//! hidden: `--hidden-fps`) and, for an encoder whose rate control follows the frame times (VP8),
//! caps the bitrate by the same ratio; a panel coming back into view gets a keyframe at once.
//!
//! The pacer also holds delta frames back while their bits run more than half a second ahead
//! of the encoder's bitrate target (`loco_bitrate_budget_waits_total`): an encoder that cannot
//! keep to its rate then sends fewer frames, not a multiple of the rate.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loco_shared::attention::{AttentionPolicy, AttentionSet, Change};
use loco_shared::geom::{Damage, TileMap};
use loco_shared::pacer::{FramePacer, PacerConfig, PacerDecision};
use loco_shared::{Attention, Rect};
use tokio::sync::{mpsc, watch};

use crate::encode::{self, Codec, EncoderSettings, RateSettings, VideoEncoder};
use crate::framebuffer::{Framebuffer, I420};
use crate::metrics::Metrics;

/// Stillness before a top-off frame.
pub const TOPOFF_AFTER: Duration = Duration::from_millis(500);

/// CPU time this thread has used so far (its own CPU clock; zero where the clock cannot be read).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given, which is valid here.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Locks a mutex, carrying on with the data if another thread panicked while holding it
/// (every structure guarded here stays consistent between statements).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many encoded frames may wait for one viewer before it counts as slow.
pub const VIEWER_QUEUE_FRAMES: usize = 3;

/// The VM's screen as the VNC task keeps it.
#[derive(Default)]
pub struct ScreenState {
    pub fb: Framebuffer,
    /// Bumped on every resize and every new VNC connection; encoders restart with a keyframe.
    pub generation: u64,
    pub connected: bool,
}

/// The screen, shared between the VNC task (writer) and the encoder threads (readers).
#[derive(Default)]
pub struct Screen {
    state: Mutex<ScreenState>,
}

impl Screen {
    pub fn lock(&self) -> MutexGuard<'_, ScreenState> {
        lock(&self.state)
    }

    /// The desktop size in pixels, (0, 0) before the first connection.
    pub fn size(&self) -> (u32, u32) {
        let s = self.lock();
        (s.fb.width(), s.fb.height())
    }
}

/// One encoded frame as handed to viewers.
#[derive(Debug)]
pub struct FramePacket {
    pub codec: Codec,
    pub data: Bytes,
    pub keyframe: bool,
    /// When the encoder produced it; RTP timestamps derive from this.
    pub encoded_at: Instant,
    /// When the oldest screen change it shows arrived from the VNC server, if it shows one.
    pub damaged_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeCause {
    NewViewer,
    Pli,
    Fir,
    SlowViewer,
    /// A viewer NACKed a packet that can no longer be resent.
    Unrecoverable,
    /// A viewer's lossy spell ended (no NACK for 1.5 s).
    AfterLoss,
    /// The panel came back into view (its viewers' attention left `hidden`).
    Attention,
}

impl KeyframeCause {
    fn label(self) -> &'static str {
        match self {
            KeyframeCause::NewViewer => "new_viewer",
            KeyframeCause::Pli => "pli",
            KeyframeCause::Fir => "fir",
            KeyframeCause::SlowViewer => "slow_viewer",
            KeyframeCause::Unrecoverable => "unrecoverable",
            KeyframeCause::AfterLoss => "after_loss",
            KeyframeCause::Attention => "attention",
        }
    }
}

struct Sink {
    viewer: u64,
    tx: mpsc::Sender<Arc<FramePacket>>,
    waiting_for_keyframe: bool,
}

#[derive(Default)]
struct Inbox {
    damage: Damage,
    damaged_at: Option<Instant>,
    keyframe: bool,
    /// A new target bitrate for the encoder.
    bitrate_kbps: Option<u32>,
    /// The viewers' most attentive state changed to this.
    attention: Option<Attention>,
    stop: bool,
}

struct Pipeline {
    codec: Codec,
    inbox: Mutex<Inbox>,
    wake: Condvar,
    sinks: Mutex<Vec<Sink>>,
    /// Each viewer's rate from its congestion controller; the encoder runs at the lowest.
    viewer_kbps: Mutex<HashMap<u64, u32>>,
    /// Each viewer's attention; the encoder runs for the most attentive.
    attention: Mutex<AttentionSet>,
    policy: AttentionPolicy,
}

impl Pipeline {
    fn post(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut lock(&self.inbox));
        self.wake.notify_one();
    }

    /// The shared encoder follows the slowest viewer: one encoding serves them all. Its
    /// viewers' attention caps it too.
    fn retarget(&self, max_kbps: u32) {
        let cap = lock(&self.attention).effective().map_or(max_kbps, |a| self.policy.kbps(a));
        let kbps = lock(&self.viewer_kbps).values().copied().min().unwrap_or(max_kbps).min(max_kbps).min(cap);
        self.post(|inbox| inbox.bitrate_kbps = Some(kbps));
    }

    /// Carries out a change of the viewers' most attentive state: the encoder's rate, its
    /// bitrate cap, and a keyframe when the panel comes back into view.
    fn attention_changed(&self, change: Option<Change>, max_kbps: u32, metrics: &Metrics) {
        let Some(change) = change else { return };
        let Some(to) = change.to else { return };
        if change.keyframe {
            metrics.keyframe_requests.with_label_values(&[KeyframeCause::Attention.label()]).inc();
        }
        tracing::debug!(codec = %self.codec, from = ?change.from, to = to.label(), "viewers' attention");
        self.post(|inbox| {
            inbox.attention = Some(to);
            inbox.keyframe |= change.keyframe;
        });
        self.retarget(max_kbps);
    }
}

/// Encoder settings that do not depend on the screen.
#[derive(Debug, Clone, Copy)]
pub struct PipelineConfig {
    pub bitrate_kbps: u32,
    pub max_fps: u32,
    pub encoder_threads: u32,
    /// The frame-rate caps for visible and hidden panels (0: nothing while hidden).
    pub visible_fps: u32,
    pub hidden_fps: u32,
    /// The bitrate floor for panels that are not focused (`--min-bitrate-kbps`).
    pub min_bitrate_kbps: u32,
    /// `--rate-control`, `--crf`, `--qp-min`.
    pub rate: RateSettings,
}

impl PipelineConfig {
    /// The full settings with the attention caps at the full rate (no savings).
    pub fn full(bitrate_kbps: u32, max_fps: u32, encoder_threads: u32) -> Self {
        Self {
            bitrate_kbps,
            max_fps,
            encoder_threads,
            visible_fps: max_fps,
            hidden_fps: max_fps,
            min_bitrate_kbps: bitrate_kbps,
            rate: RateSettings::default(),
        }
    }

    /// How the frame pacer follows motion for `codec`: with constant quality (H.264 CRF), one
    /// top-off chance after half a second of stillness (taken only if the encoder says the last
    /// frames were coarse); otherwise two blind refinement frames 150 ms apart.
    pub fn pacer_config(&self, codec: Codec) -> PacerConfig {
        let base = PacerConfig { max_fps: self.max_fps, ..PacerConfig::default() };
        if self.rate.tops_off(codec) {
            PacerConfig { refine_frames: 1, refine_delay: TOPOFF_AFTER, ..base }
        } else {
            base
        }
    }

    /// How long the VNC task leaves between update requests while encoders run for `states`
    /// ([`AttentionPolicy::request_interval`]; the frame-rate caps are the same for every codec).
    pub fn request_interval(&self, states: impl IntoIterator<Item = Attention>) -> Duration {
        self.attention_policy(Codec::H264).request_interval(states)
    }

    /// What each attention state may cost `codec`'s encoder.
    pub fn attention_policy(&self, codec: Codec) -> AttentionPolicy {
        AttentionPolicy {
            max_fps: self.max_fps,
            visible_fps: self.visible_fps,
            hidden_fps: self.hidden_fps,
            max_kbps: self.bitrate_kbps,
            min_kbps: self.min_bitrate_kbps,
            scale_bitrate: codec.rate_follows_frame_times(),
        }
    }
}

/// All encoders, keyed by codec.
pub struct Pipelines {
    config: PipelineConfig,
    screen: Arc<Screen>,
    metrics: Arc<Metrics>,
    running: Mutex<HashMap<Codec, Arc<Pipeline>>>,
    /// How long the VNC task leaves between update requests: as fast as the fastest encoder
    /// works now ([`AttentionPolicy::request_interval`]).
    request_interval: watch::Sender<Duration>,
}

impl Pipelines {
    pub fn new(config: PipelineConfig, screen: Arc<Screen>, metrics: Arc<Metrics>) -> Arc<Self> {
        let idle = config.request_interval([]);
        let (request_interval, _) = watch::channel(idle);
        metrics.vnc_request_fps.set(1.0 / idle.as_secs_f64());
        Arc::new(Self { config, screen, metrics, running: Mutex::new(HashMap::new()), request_interval })
    }

    /// How long to leave between VNC update requests; changes when the encoders' attention does.
    pub fn request_interval(&self) -> watch::Receiver<Duration> {
        self.request_interval.subscribe()
    }

    /// Works out the request interval again from the running encoders.
    fn pace_requests(&self, running: &HashMap<Codec, Arc<Pipeline>>) {
        let states: Vec<Attention> = running.values().filter_map(|p| lock(&p.attention).effective()).collect();
        let interval = self.config.request_interval(states);
        self.request_interval.send_if_modified(|d| std::mem::replace(d, interval) != interval);
        self.metrics.vnc_request_fps.set(1.0 / interval.as_secs_f64());
    }

    /// Adds a viewer of `codec` paying `attention` to its panel; its first frame will be a
    /// keyframe.
    pub fn subscribe(&self, codec: Codec, viewer: u64, attention: Attention) -> mpsc::Receiver<Arc<FramePacket>> {
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE_FRAMES);
        let mut running = lock(&self.running);
        let pipeline = running.entry(codec).or_insert_with(|| self.start(codec)).clone();
        lock(&pipeline.sinks).push(Sink { viewer, tx, waiting_for_keyframe: true });
        let change = lock(&pipeline.attention).join(viewer, attention);
        self.pace_requests(&running);
        drop(running);
        pipeline.attention_changed(change, self.config.bitrate_kbps, &self.metrics);
        self.metrics.keyframe_requests.with_label_values(&[KeyframeCause::NewViewer.label()]).inc();
        pipeline.post(|inbox| {
            inbox.keyframe = true;
            // A new encoder has nothing to show yet: treat the whole screen as damaged.
            inbox.damage.add(Rect::new(0, 0, u32::MAX / 2, u32::MAX / 2));
        });
        rx
    }

    /// Removes a viewer; the encoder stops when its last viewer leaves.
    pub fn unsubscribe(&self, codec: Codec, viewer: u64) {
        let mut running = lock(&self.running);
        let Some(pipeline) = running.get(&codec).cloned() else { return };
        let mut sinks = lock(&pipeline.sinks);
        sinks.retain(|s| s.viewer != viewer);
        let change = lock(&pipeline.attention).leave(viewer);
        if sinks.is_empty() {
            running.remove(&codec);
            drop(sinks);
            pipeline.post(|inbox| inbox.stop = true);
            self.metrics.attention_state.with_label_values(&[codec.label()]).set(-1);
        } else {
            drop(sinks);
            lock(&pipeline.viewer_kbps).remove(&viewer);
            if change.is_some() {
                pipeline.attention_changed(change, self.config.bitrate_kbps, &self.metrics);
            } else {
                pipeline.retarget(self.config.bitrate_kbps);
            }
        }
        self.pace_requests(&running);
    }

    /// A viewer of `codec` now pays `attention` to its panel (ignored for a viewer that is not
    /// receiving: [`Pipelines::subscribe`] takes its state then).
    pub fn set_attention(&self, codec: Codec, viewer: u64, attention: Attention) {
        let running = lock(&self.running);
        let Some(pipeline) = running.get(&codec).cloned() else { return };
        let change = lock(&pipeline.attention).set(viewer, attention);
        self.pace_requests(&running);
        drop(running);
        pipeline.attention_changed(change, self.config.bitrate_kbps, &self.metrics);
    }

    /// The most attentive state among all viewers receiving video (`None`: nobody is).
    pub fn attention(&self) -> Option<Attention> {
        lock(&self.running).values().filter_map(|p| lock(&p.attention).effective()).max()
    }

    /// A viewer's congestion controller settled on `kbps`.
    pub fn set_viewer_bitrate(&self, codec: Codec, viewer: u64, kbps: u32) {
        if let Some(p) = lock(&self.running).get(&codec) {
            lock(&p.viewer_kbps).insert(viewer, kbps);
            p.retarget(self.config.bitrate_kbps);
        }
    }

    pub fn request_keyframe(&self, codec: Codec, cause: KeyframeCause) {
        self.metrics.keyframe_requests.with_label_values(&[cause.label()]).inc();
        if let Some(p) = lock(&self.running).get(&codec) {
            p.post(|inbox| inbox.keyframe = true);
        }
    }

    /// The VNC task changed `damage` of the framebuffer; the update arrived at `at`.
    pub fn damage(&self, damage: &Damage, at: Instant) {
        for p in lock(&self.running).values() {
            p.post(|inbox| {
                inbox.damage.merge(damage);
                inbox.damaged_at.get_or_insert(at);
            });
        }
    }

    /// Codecs with a running encoder (for diagnostics).
    pub fn active_codecs(&self) -> Vec<Codec> {
        let mut v: Vec<Codec> = lock(&self.running).keys().copied().collect();
        v.sort();
        v
    }

    fn start(&self, codec: Codec) -> Arc<Pipeline> {
        let pipeline = Arc::new(Pipeline {
            codec,
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            sinks: Mutex::new(Vec::new()),
            viewer_kbps: Mutex::new(HashMap::new()),
            attention: Mutex::new(AttentionSet::default()),
            policy: self.config.attention_policy(codec),
        });
        let worker = EncoderWorker {
            pipeline: pipeline.clone(),
            screen: self.screen.clone(),
            metrics: self.metrics.clone(),
            config: self.config,
        };
        let spawned = std::thread::Builder::new().name(format!("encode-{codec}")).spawn(move || worker.run());
        if let Err(e) = spawned {
            // Without a thread there is no video for this codec; viewers will see no frames
            // and the error says why.
            tracing::error!(%codec, error = %e, "could not start the encoder thread");
        }
        pipeline
    }
}

struct EncoderWorker {
    pipeline: Arc<Pipeline>,
    screen: Arc<Screen>,
    metrics: Arc<Metrics>,
    config: PipelineConfig,
}

impl EncoderWorker {
    fn run(self) {
        let codec = self.pipeline.codec;
        let origin = Instant::now();
        let mut pacer = FramePacer::new(self.config.pacer_config(codec));
        let topoff = self.config.rate.tops_off(codec);
        let mut damage = Damage::default();
        // The tiles the damage of the frame being made touches (the framebuffer's size).
        let mut tiles = TileMap::default();
        let mut damaged_at: Option<Instant> = None;
        let mut encoder: Option<Box<dyn VideoEncoder>> = None;
        let mut picture = I420::default();
        let mut generation = u64::MAX;
        let mut last_pts_ms = -1i64;
        let mut bitrate_kbps = self.config.bitrate_kbps;
        self.metrics.bitrate_target_kbps.with_label_values(&[codec.label()]).set(i64::from(bitrate_kbps));
        pacer.set_bitrate(bitrate_kbps, origin.elapsed());
        let mut budget_waits = 0;
        let policy = self.config.attention_policy(codec);
        self.metrics.encoder_fps_cap.with_label_values(&[codec.label()]).set(i64::from(pacer.max_fps()));
        let convert_cpu = self.metrics.encoder_cpu_seconds.with_label_values(&[codec.label(), "convert"]);
        let encode_cpu = self.metrics.encoder_cpu_seconds.with_label_values(&[codec.label(), "encode"]);
        let all_tiles = self.metrics.encoder_tiles.with_label_values(&[codec.label(), "all"]);
        let changed_tiles = self.metrics.encoder_tiles.with_label_values(&[codec.label(), "changed"]);
        tracing::debug!(%codec, "encoder thread started");

        loop {
            // Take what the VNC task and the viewers posted.
            let decision = {
                let mut inbox = lock(&self.pipeline.inbox);
                loop {
                    if inbox.stop {
                        tracing::debug!(%codec, "encoder thread stopped");
                        return;
                    }
                    let now = origin.elapsed();
                    if let Some(posted) = inbox.damage.take() {
                        damage.merge(&posted);
                        let at = inbox.damaged_at.take().unwrap_or_else(Instant::now);
                        damaged_at = Some(damaged_at.map_or(at, |d| d.min(at)));
                        pacer.on_damage(now);
                    }
                    if let Some(attention) = inbox.attention.take() {
                        let fps = policy.fps(attention);
                        pacer.set_max_fps(fps, now);
                        let label = [codec.label()];
                        self.metrics.attention_state.with_label_values(&label).set(attention as i64);
                        self.metrics.encoder_fps_cap.with_label_values(&label).set(i64::from(fps));
                    }
                    if std::mem::take(&mut inbox.keyframe) {
                        pacer.on_keyframe_request(now);
                    }
                    if let Some(kbps) = inbox.bitrate_kbps.take() {
                        if kbps != bitrate_kbps {
                            bitrate_kbps = kbps;
                            self.metrics.bitrate_target_kbps.with_label_values(&[codec.label()]).set(i64::from(kbps));
                            pacer.set_bitrate(kbps, now);
                            if let Some(enc) = encoder.as_mut() {
                                if let Err(e) = enc.set_bitrate(kbps) {
                                    tracing::warn!(%codec, error = %e, "cannot change the bitrate");
                                }
                            }
                            tracing::debug!(%codec, kbps, "encoder bitrate");
                        }
                    }
                    let decision = pacer.poll(now);
                    if pacer.budget_waits() != budget_waits {
                        self.metrics
                            .budget_waits
                            .with_label_values(&[codec.label()])
                            .inc_by(pacer.budget_waits() - budget_waits);
                        budget_waits = pacer.budget_waits();
                    }
                    match decision {
                        PacerDecision::Encode { keyframe, damaged_since } => {
                            break (keyframe, !keyframe && damaged_since.is_none())
                        }
                        PacerDecision::WaitUntil(t) => {
                            let wait = t.saturating_sub(now).max(Duration::from_micros(200));
                            inbox =
                                self.pipeline.wake.wait_timeout(inbox, wait).map_or_else(|e| e.into_inner().0, |r| r.0);
                        }
                        PacerDecision::Idle => {
                            inbox = self.pipeline.wake.wait(inbox).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                }
            };
            let (mut keyframe, refinement) = decision;

            let started = Instant::now();
            // Convert what changed (the tiles it touched; the encoder may skip the rest) while
            // holding the screen lock only for the conversion.
            {
                let screen = self.screen.lock();
                if !screen.connected || screen.fb.width() == 0 {
                    // Nothing to show; keep the keyframe request for when the screen is back.
                    damage = Damage::default();
                    damaged_at = None;
                    if keyframe {
                        pacer.on_keyframe_request(origin.elapsed());
                    }
                    continue;
                }
                let (w, h) = (screen.fb.width(), screen.fb.height());
                let needs_new = encoder.as_ref().is_none_or(|e| {
                    generation != screen.generation
                        || e.settings().width != (w + 1) & !1
                        || e.settings().height != (h + 1) & !1
                });
                if needs_new {
                    picture = I420::new(w, h);
                    encoder = None;
                    let settings = EncoderSettings {
                        width: picture.width,
                        height: picture.height,
                        bitrate_kbps,
                        max_fps: self.config.max_fps,
                        threads: self.config.encoder_threads,
                        rate: self.config.rate,
                    };
                    match encode::open(codec, settings) {
                        Ok(e) => encoder = Some(e),
                        Err(e) => {
                            tracing::error!(%codec, error = %e, "cannot open encoder");
                            drop(screen);
                            std::thread::sleep(Duration::from_secs(1));
                            pacer.on_keyframe_request(origin.elapsed());
                            continue;
                        }
                    }
                    generation = screen.generation;
                    keyframe = true;
                    tiles = TileMap::new(w, h);
                    damage = Damage::default();
                    damage.add(screen.fb.full_rect());
                }
                tiles.clear();
                if let Some(changed) = damage.take() {
                    tiles.mark_damage(&changed);
                    changed_tiles.inc_by(tiles.count() as u64);
                    let cpu = thread_cpu_time();
                    let converted = picture.convert_tiles(&screen.fb, &tiles);
                    convert_cpu.inc_by((thread_cpu_time().saturating_sub(cpu)).as_secs_f64());
                    if let Err(e) = converted {
                        tracing::warn!(%codec, error = %e, "colour conversion failed");
                        continue;
                    }
                }
            }
            let Some(enc) = encoder.as_mut() else { continue };
            // A refinement re-codes the still picture: no hint.
            enc.hint_changed(encode::damage_hint(&tiles, refinement));

            // Strictly increasing millisecond timestamps for the encoder's rate control.
            let pts_ms = (origin.elapsed().as_millis() as i64).max(last_pts_ms + 1);
            last_pts_ms = pts_ms;
            // A refinement under constant quality is a top-off, only where the last frames
            // came out coarse (the cap held them back); otherwise nothing is sent.
            let topoff_now = topoff && refinement && !keyframe;
            if topoff_now && !enc.wants_topoff() {
                self.metrics.topoff_frames.with_label_values(&[codec.label(), "skipped"]).inc();
                continue;
            }
            all_tiles.inc_by(tiles.marked().len() as u64);
            let cpu = thread_cpu_time();
            let result =
                if topoff_now { enc.encode_topoff(&picture, pts_ms) } else { enc.encode(&picture, pts_ms, keyframe) };
            encode_cpu.inc_by((thread_cpu_time().saturating_sub(cpu)).as_secs_f64());
            if topoff_now {
                self.metrics.topoff_frames.with_label_values(&[codec.label(), "sent"]).inc();
            }
            let frame = match result {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%codec, error = %e, "encode failed; reopening the encoder");
                    encoder = None;
                    pacer.on_keyframe_request(origin.elapsed());
                    continue;
                }
            };
            pacer.on_encoded(frame.data.len(), frame.keyframe, origin.elapsed());
            let label = [codec.label()];
            self.metrics.encode_seconds.with_label_values(&label).observe(started.elapsed().as_secs_f64());
            self.metrics.frames_encoded.with_label_values(&label).inc();
            if frame.keyframe {
                self.metrics.keyframes.with_label_values(&label).inc();
            }
            let packet = Arc::new(FramePacket {
                codec,
                data: frame.data,
                keyframe: frame.keyframe,
                encoded_at: Instant::now(),
                damaged_at: damaged_at.take(),
            });
            if self.distribute(&packet) {
                self.metrics.keyframe_requests.with_label_values(&[KeyframeCause::SlowViewer.label()]).inc();
                pacer.on_keyframe_request(origin.elapsed());
            }
        }
    }

    /// Offers `packet` to every viewer; true when one of them needs a keyframe now.
    fn distribute(&self, packet: &Arc<FramePacket>) -> bool {
        let mut want_keyframe = false;
        let mut sinks = lock(&self.pipeline.sinks);
        sinks.retain_mut(|sink| {
            if sink.waiting_for_keyframe && !packet.keyframe {
                // Ask for the keyframe once the viewer has room for it again, so a viewer
                // that stopped reading does not cost everyone a keyframe every few frames.
                want_keyframe |= sink.tx.capacity() > 0;
                return true;
            }
            match sink.tx.try_send(packet.clone()) {
                Ok(()) => {
                    sink.waiting_for_keyframe = false;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.frames_dropped.with_label_values(&[packet.codec.label()]).inc();
                    sink.waiting_for_keyframe = true;
                    true
                }
                // The viewer is gone; `unsubscribe` will follow.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        want_keyframe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn damage_of(rect: Rect) -> Damage {
        let mut d = Damage::default();
        d.add(rect);
        d
    }

    fn screen_with(w: u32, h: u32) -> Arc<Screen> {
        let screen = Arc::new(Screen::default());
        {
            let mut s = screen.lock();
            s.fb = Framebuffer::new(w, h).unwrap();
            s.connected = true;
            s.generation = 1;
        }
        screen
    }

    fn pipelines(screen: Arc<Screen>) -> Arc<Pipelines> {
        Pipelines::new(
            PipelineConfig {
                visible_fps: 10,
                hidden_fps: 0,
                min_bitrate_kbps: 300,
                ..PipelineConfig::full(1000, 30, 1)
            },
            screen,
            Arc::new(Metrics::new()),
        )
    }

    fn recv(rx: &mut mpsc::Receiver<Arc<FramePacket>>) -> Arc<FramePacket> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(p) = rx.try_recv() {
                return p;
            }
            assert!(Instant::now() < deadline, "no frame within 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn thread_cpu_time_counts_this_threads_work_only() {
        // Work on this thread moves its clock; another thread's work and sleeping do not.
        let start = thread_cpu_time();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while thread_cpu_time().saturating_sub(start) < Duration::from_millis(5) {
            assert!(Instant::now() < deadline, "5 ms of CPU not counted in 10 s");
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let before = thread_cpu_time();
        let other = std::thread::spawn(|| {
            let t = thread_cpu_time();
            while thread_cpu_time().saturating_sub(t) < Duration::from_millis(20) {}
        });
        other.join().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(thread_cpu_time().saturating_sub(before) < Duration::from_millis(15));
    }

    #[test]
    fn new_viewer_gets_a_keyframe_then_deltas_on_damage_only() {
        let screen = screen_with(64, 48);
        let p = pipelines(screen.clone());
        for codec in Codec::ALL {
            let mut rx = p.subscribe(codec, 1, Attention::Focused);
            assert!(recv(&mut rx).keyframe);
            // Let the refinement frames after the first one pass, then expect silence.
            std::thread::sleep(Duration::from_millis(500));
            while rx.try_recv().is_ok() {}
            std::thread::sleep(Duration::from_millis(400));
            assert!(rx.try_recv().is_err(), "{codec}: frames without damage");
            {
                let mut s = screen.lock();
                s.fb.put(Rect::new(0, 0, 2, 2), &[255; 16]).unwrap();
            }
            let tiles = |kind: &str| p.metrics.encoder_tiles.with_label_values(&[codec.label(), kind]).get();
            let (changed, all) = (tiles("changed"), tiles("all"));
            let at = Instant::now();
            p.damage(&damage_of(Rect::new(0, 0, 2, 2)), at);
            let f = recv(&mut rx);
            assert!(!f.keyframe);
            assert_eq!(f.damaged_at, Some(at));
            // One of the 4 × 3 tiles changed (and was converted); a refinement adds none.
            assert_eq!(tiles("changed") - changed, 1, "{codec}");
            assert!(tiles("all") - all >= 12 && (tiles("all") - all) % 12 == 0, "{codec}: {}", tiles("all") - all);
            p.unsubscribe(codec, 1);
            assert!(p.active_codecs().is_empty());
        }
    }

    #[test]
    fn attention_holds_a_hidden_panel_and_sends_a_keyframe_when_it_is_back() {
        let screen = screen_with(64, 48);
        let p = pipelines(screen.clone());
        // The VNC task's request pace follows the fastest encoder (full rate without one).
        let pace = p.request_interval();
        let ms = || pace.borrow().as_millis();
        assert_eq!(ms(), 33);
        let mut rx = p.subscribe(Codec::Vp8, 1, Attention::Focused);
        assert!(recv(&mut rx).keyframe);
        assert_eq!(p.attention(), Some(Attention::Focused));
        assert_eq!(ms(), 33);
        p.set_attention(Codec::Vp8, 1, Attention::Hidden);
        assert_eq!(p.attention(), Some(Attention::Hidden));
        assert_eq!(ms(), 1000, "hidden with --hidden-fps 0: the idle keepalive");
        std::thread::sleep(Duration::from_millis(500));
        while rx.try_recv().is_ok() {}
        // Hidden with --hidden-fps 0: changes are held back.
        for i in 0..5u32 {
            p.damage(&damage_of(Rect::new(i, 0, 2, 2)), Instant::now());
            std::thread::sleep(Duration::from_millis(60));
        }
        assert!(rx.try_recv().is_err(), "frames while hidden");
        // Back in view: a keyframe at once, carrying what changed meanwhile.
        let back = Instant::now();
        p.set_attention(Codec::Vp8, 1, Attention::Visible);
        assert_eq!(ms(), 100, "visible at 10 fps");
        let f = recv(&mut rx);
        assert!(f.keyframe, "first frame back in view is a keyframe");
        assert!(back.elapsed() < Duration::from_millis(200), "keyframe after {:?}", back.elapsed());
        // A second viewer's attention counts too: the most attentive one wins.
        let _rx2 = p.subscribe(Codec::Vp8, 2, Attention::Focused);
        p.set_attention(Codec::Vp8, 1, Attention::Hidden);
        assert_eq!(p.attention(), Some(Attention::Focused));
        assert_eq!(ms(), 33);
        // A viewer of the other codec paces nothing down: the VP8 one is still focused.
        let _rx3 = p.subscribe(Codec::H264, 3, Attention::Visible);
        assert_eq!(ms(), 33);
        p.unsubscribe(Codec::Vp8, 2);
        assert_eq!(p.attention(), Some(Attention::Visible));
        assert_eq!(ms(), 100, "the focused viewer left: H.264's visible viewer sets the pace");
        p.unsubscribe(Codec::H264, 3);
        assert_eq!(p.attention(), Some(Attention::Hidden));
        assert_eq!(ms(), 1000);
        p.unsubscribe(Codec::Vp8, 1);
        assert_eq!(p.attention(), None);
        assert_eq!(ms(), 33, "no encoder: the full rate again");
    }

    /// Frames arriving within `d`.
    fn frames_within(rx: &mut mpsc::Receiver<Arc<FramePacket>>, d: Duration) -> usize {
        let end = Instant::now() + d;
        let mut n = 0;
        while Instant::now() < end {
            while rx.try_recv().is_ok() {
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    }

    #[test]
    fn constant_quality_tops_off_once_per_still_period_and_only_after_coarse_frames() {
        let (w, h) = (320, 240);
        let screen = screen_with(w, h);
        let metrics = Arc::new(Metrics::new());
        // 150 kbit/s: full-screen noise at 30 fps is far over the cap, so it comes out coarse.
        let config = PipelineConfig { rate: RateSettings::desktop(), ..PipelineConfig::full(150, 30, 1) };
        let p = Pipelines::new(config, screen.clone(), metrics.clone());
        let count = |result: &str| metrics.topoff_frames.with_label_values(&["h264", result]).get();
        let mut rx = p.subscribe(Codec::H264, 1, Attention::Focused);
        assert!(recv(&mut rx).keyframe);
        // The join keyframe may be followed by one frame once still (see h264.rs), no more.
        assert!(frames_within(&mut rx, Duration::from_millis(800)) <= 1);
        let (sent, skipped) = (count("sent"), count("skipped"));
        // A small change under the cap is coded finely at once: the top-off is skipped.
        {
            let mut s = screen.lock();
            s.fb.put(Rect::new(0, 0, 2, 2), &[255; 16]).unwrap();
        }
        p.damage(&damage_of(Rect::new(0, 0, 2, 2)), Instant::now());
        assert_eq!(frames_within(&mut rx, Duration::from_millis(1200)), 1, "the change itself only");
        assert_eq!((count("sent"), count("skipped")), (sent, skipped + 1));
        let mut state = 12345u32;
        for period in 1..=2u64 {
            for _ in 0..12 {
                let px: Vec<u8> = (0..w * h * 4)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        state as u8
                    })
                    .collect();
                {
                    let mut s = screen.lock();
                    let r = s.fb.full_rect();
                    s.fb.put(r, &px).unwrap();
                }
                p.damage(&damage_of(Rect::new(0, 0, w, h)), Instant::now());
                std::thread::sleep(Duration::from_millis(33));
            }
            // The last motion frames, then one top-off half a second into the stillness, then none.
            assert!(frames_within(&mut rx, Duration::from_millis(250)) > 0);
            assert_eq!(frames_within(&mut rx, Duration::from_millis(1300)), 1, "still period {period}: one top-off");
            assert_eq!((count("sent"), count("skipped")), (sent + period, skipped + 1));
        }
    }

    #[test]
    fn slow_viewer_drops_then_resyncs_on_keyframe_without_blocking_others() {
        let screen = screen_with(64, 48);
        let p = pipelines(screen);
        let mut fast = p.subscribe(Codec::H264, 1, Attention::Focused);
        let mut slow = p.subscribe(Codec::H264, 2, Attention::Focused);
        let mut fast_frames = 0;
        for i in 0..40u32 {
            p.damage(&damage_of(Rect::new(i % 60, 0, 4, 4)), Instant::now());
            std::thread::sleep(Duration::from_millis(35));
            while fast.try_recv().is_ok() {
                fast_frames += 1;
            }
        }
        assert!(fast_frames >= 20, "fast viewer got {fast_frames} frames");
        // The slow viewer never read: its queue holds at most VIEWER_QUEUE_FRAMES, the first a
        // keyframe; after draining, the next frame it gets is a keyframe again.
        let mut queued = Vec::new();
        while let Ok(f) = slow.try_recv() {
            queued.push(f);
        }
        assert!(queued.len() <= VIEWER_QUEUE_FRAMES);
        assert!(queued[0].keyframe);
        p.damage(&damage_of(Rect::new(0, 0, 4, 4)), Instant::now());
        assert!(recv(&mut slow).keyframe);
    }
}
