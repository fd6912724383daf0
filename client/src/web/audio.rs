//! The page's sound: one `AudioContext`, and per panel
//!
//! ```text
//! track ─▶ MediaStreamAudioSource ─┬─▶ Gain (focus, mute) ─┬─▶ Panner (HRTF, at the panel) ─▶ master ─▶ speakers
//!                                   └─▶ Analyser "pre"      └─▶ Analyser "post"                  └─▶ splitter ─▶ Analyser L, R
//! ```
//!
//! The decisions (gains, placement, listener, levels, who plays) are [`crate::audio`]'s; this
//! file builds the nodes and carries them out. The context is created on the first user
//! gesture (a click or key in the flat view, the Enter VR click): browsers start an
//! `AudioContext` made earlier suspended. Each track also plays in a muted `<audio>` element,
//! see [`PanelSound::attach`].

use glam::Vec3;
use js_sys::{Array, Object, Reflect};
use loco_shared::layout::Panel;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    AnalyserNode, AudioContext, AudioContextState, AudioParam, ChannelCountMode, ChannelSplitterNode,
    DistanceModelType, GainNode, HtmlAudioElement, MediaStream, MediaStreamAudioSourceNode, MediaStreamTrack,
    PannerNode, PanningModelType,
};

use super::util::{js_error, set};
use crate::audio::{
    dominant_frequency, panner_place, rms_db, target_gain, AudioSettings, AudioStatus, Listener, PlayingDetector,
    FLOOR_DB, GAIN_RAMP_S, PANNER,
};
use crate::hook::{AudioSnapshot, PanelAudioSnapshot};

/// Samples the per-panel "pre" analyser keeps: its spectrum finds the dominant frequency to
/// within a few Hz (bins of 2.9 Hz at 48 kHz, refined by interpolation); its RMS spans 0.34 s.
const PANEL_FFT: u32 = 16_384;
/// The "post" analyser only measures the level heard (43 ms at 48 kHz).
const LEVEL_FFT: u32 = 2048;
/// The master's left/right analysers (`__loco.audioSpectrum()`).
const MASTER_FFT: u32 = 16_384;
/// A spectrum peak below this is silence, not a dominant frequency.
const PEAK_MIN_DB: f32 = -100.0;

struct Graph {
    ctx: AudioContext,
    master: GainNode,
    left: AnalyserNode,
    right: AnalyserNode,
    _splitter: ChannelSplitterNode,
}

impl Graph {
    fn new() -> Result<Self, JsValue> {
        let ctx = AudioContext::new()?;
        let master = ctx.create_gain()?;
        master.connect_with_audio_node(&ctx.destination())?;
        let splitter = ctx.create_channel_splitter_with_number_of_outputs(2)?;
        master.connect_with_audio_node(&splitter)?;
        let analyser = |output: u32| -> Result<AnalyserNode, JsValue> {
            let a = ctx.create_analyser()?;
            a.set_fft_size(MASTER_FFT);
            // No smoothing: each call is the spectrum of the last fftSize samples only (smoothing
            // blends in earlier calls, however long ago they were).
            a.set_smoothing_time_constant(0.0);
            splitter.connect_with_audio_node_and_output(&a, output)?;
            Ok(a)
        };
        let (left, right) = (analyser(0)?, analyser(1)?);
        Ok(Self { ctx, master, left, right, _splitter: splitter })
    }
}

struct Nodes {
    source: MediaStreamAudioSourceNode,
    pre: AnalyserNode,
    gain: GainNode,
    post: AnalyserNode,
    panner: PannerNode,
}

impl Nodes {
    fn new(g: &Graph, stream: &MediaStream) -> Result<Self, JsValue> {
        let ctx = &g.ctx;
        let source = ctx.create_media_stream_source(stream)?;
        let pre = ctx.create_analyser()?;
        pre.set_fft_size(PANEL_FFT);
        pre.set_smoothing_time_constant(0.0);
        let gain = ctx.create_gain()?;
        let post = ctx.create_analyser()?;
        post.set_fft_size(LEVEL_FFT);
        let panner = ctx.create_panner()?;
        panner.set_panning_model(PanningModelType::Hrtf);
        panner.set_distance_model(DistanceModelType::Inverse);
        panner.set_ref_distance(PANNER.ref_distance);
        panner.set_max_distance(PANNER.max_distance);
        panner.set_rolloff_factor(PANNER.rolloff);
        // A panel is one point source: the guest's stereo is mixed to mono before the HRTF (a
        // stereo input would go through the two ears' filters channel by channel instead).
        panner.set_channel_count(1);
        panner.set_channel_count_mode(ChannelCountMode::Explicit);
        source.connect_with_audio_node(&pre)?;
        source.connect_with_audio_node(&gain)?;
        gain.connect_with_audio_node(&post)?;
        gain.connect_with_audio_node(&panner)?;
        panner.connect_with_audio_node(&g.master)?;
        Ok(Self { source, pre, gain, post, panner })
    }

    fn disconnect(&self) {
        let _ = self.source.disconnect();
        let _ = self.gain.disconnect();
        let _ = self.panner.disconnect();
    }
}

/// One panel's sound.
#[derive(Default)]
pub(super) struct PanelSound {
    pub muted: bool,
    track: Option<MediaStreamTrack>,
    stream: Option<MediaStream>,
    element: Option<HtmlAudioElement>,
    nodes: Option<Nodes>,
    detector: PlayingDetector,
    level: Option<f32>,
    source_level: Option<f32>,
    /// The gain last asked of the node.
    gain: Option<f32>,
}

impl PanelSound {
    /// Plays `track` in a muted `<audio>` element. Chromium hands a remote WebRTC track's
    /// samples to Web Audio (`createMediaStreamSource`) only while the track also plays in a
    /// media element; without one the source node gives silence (checked in headless Chromium:
    /// RMS 0 without the element, the tone with it). Muted, the element itself is not heard.
    fn attach(&mut self, track: MediaStreamTrack) -> Result<(), JsValue> {
        self.detach();
        let stream = MediaStream::new_with_tracks(&Array::of1(&track))?;
        let element = HtmlAudioElement::new()?;
        element.set_muted(true);
        element.set_src_object(Some(&stream));
        play(&element);
        self.track = Some(track);
        self.stream = Some(stream);
        self.element = Some(element);
        Ok(())
    }

    fn detach(&mut self) {
        if let Some(n) = self.nodes.take() {
            n.disconnect();
        }
        if let Some(e) = self.element.take() {
            let _ = e.pause();
            e.set_src_object(None);
        }
        self.track = None;
        self.stream = None;
        self.detector.reset();
        self.level = None;
        self.source_level = None;
        self.gain = None;
    }

    pub fn status(&self) -> AudioStatus {
        AudioStatus::of(self.nodes.is_some(), self.muted, self.detector.playing())
    }

    /// The level heard (after the gain), when the graph carries this panel.
    pub fn level(&self) -> Option<f32> {
        self.level
    }
}

fn play(element: &HtmlAudioElement) {
    if let Ok(p) = element.play() {
        wasm_bindgen_futures::spawn_local(async move {
            let _ = wasm_bindgen_futures::JsFuture::from(p).await;
        });
    }
}

/// `obj[name]` when it is an `AudioParam` (absent from older browsers' listeners and panners).
fn param(obj: &JsValue, name: &str) -> Option<AudioParam> {
    Reflect::get(obj, &name.into()).ok().and_then(|v| v.dyn_into::<AudioParam>().ok())
}

/// Sets three `AudioParam`s of `obj` (e.g. `positionX/Y/Z`) to `v`; false when `obj` lacks them.
fn set_params(obj: &JsValue, names: [&str; 3], v: Vec3) -> bool {
    let params: Vec<AudioParam> = names.iter().filter_map(|n| param(obj, n)).collect();
    if params.len() != 3 {
        return false;
    }
    for (p, x) in params.iter().zip([v.x, v.y, v.z]) {
        p.set_value(x);
    }
    true
}

/// The page's sound: settings, the graph once a gesture made it, every panel's part.
pub(super) struct Sound {
    pub settings: AudioSettings,
    graph: Option<Graph>,
    pub panels: Vec<PanelSound>,
    /// Where the listener is (applied when the graph appears) and what was last written.
    listener: Option<Listener>,
    listener_set: Option<Listener>,
    places: Vec<Option<(Vec3, Vec3)>>,
    focus: Option<usize>,
}

impl Sound {
    pub fn new(settings: AudioSettings) -> Self {
        Self {
            settings,
            graph: None,
            panels: Vec::new(),
            listener: None,
            listener_set: None,
            places: Vec::new(),
            focus: None,
        }
    }

    pub fn add_panel(&mut self) {
        self.panels.push(PanelSound::default());
        self.places.push(None);
    }

    /// A user gesture: the context is created (or resumed) now, when the browser allows it.
    pub fn gesture(&mut self) {
        if !self.settings.enabled {
            return;
        }
        match &self.graph {
            Some(g) => {
                if g.ctx.state() == AudioContextState::Suspended {
                    if let Ok(p) = g.ctx.resume() {
                        wasm_bindgen_futures::spawn_local(async move {
                            let _ = wasm_bindgen_futures::JsFuture::from(p).await;
                        });
                    }
                }
            }
            None => match Graph::new() {
                Ok(g) => {
                    self.graph = Some(g);
                    self.listener_set = None;
                    for i in 0..self.panels.len() {
                        self.connect(i);
                    }
                    self.apply_listener();
                }
                Err(e) => web_sys::console::warn_1(&format!("loco: no sound: {}", js_error(&e)).into()),
            },
        }
        // Elements the browser would not start without a gesture start now.
        for p in &self.panels {
            if let Some(e) = p.element.as_ref().filter(|e| e.paused()) {
                play(e);
            }
        }
    }

    /// Panel `i`'s session has audio track `track` (or none).
    pub fn track(&mut self, i: usize, track: Option<MediaStreamTrack>) {
        let Some(p) = self.panels.get_mut(i) else { return };
        if p.track == track {
            return;
        }
        match track {
            Some(t) => {
                if let Err(e) = p.attach(t) {
                    web_sys::console::warn_1(&format!("loco: cannot play panel {i}'s sound: {}", js_error(&e)).into());
                    return;
                }
                self.connect(i);
            }
            None => p.detach(),
        }
    }

    /// Builds panel `i`'s nodes when both the graph and its track exist.
    fn connect(&mut self, i: usize) {
        let Some(g) = &self.graph else { return };
        let Some(p) = self.panels.get_mut(i) else { return };
        if p.nodes.is_some() {
            return;
        }
        let Some(stream) = &p.stream else { return };
        match Nodes::new(g, stream) {
            Ok(n) => {
                let gain = target_gain(i, self.focus, p.muted, &self.settings);
                n.gain.gain().set_value(gain);
                p.gain = Some(gain);
                if let Some((at, facing)) = self.places[i] {
                    place(&n.panner, at, facing);
                }
                p.nodes = Some(n);
            }
            Err(e) => web_sys::console::warn_1(&format!("loco: panel {i}'s sound graph: {}", js_error(&e)).into()),
        }
    }

    /// Gains after a focus or mute change, ramped.
    pub fn set_focus(&mut self, focus: Option<usize>) {
        self.focus = focus;
        let Some(g) = &self.graph else { return };
        let now = g.ctx.current_time();
        for (i, p) in self.panels.iter_mut().enumerate() {
            let target = target_gain(i, focus, p.muted, &self.settings);
            let Some(n) = &p.nodes else { continue };
            if p.gain != Some(target) {
                let param = n.gain.gain();
                let _ = param.cancel_scheduled_values(now);
                let _ = param.set_target_at_time(target, now, GAIN_RAMP_S);
                p.gain = Some(target);
            }
        }
    }

    pub fn toggle_mute(&mut self, i: usize) {
        if let Some(p) = self.panels.get_mut(i) {
            p.muted = !p.muted;
        }
        self.set_focus(self.focus);
    }

    /// Puts each panner at its panel.
    pub fn place(&mut self, layout: &[Panel]) {
        for (i, panel) in layout.iter().enumerate() {
            let Some(slot) = self.places.get_mut(i) else { continue };
            let spot = panner_place(panel);
            if *slot == Some(spot) {
                continue;
            }
            *slot = Some(spot);
            if let Some(n) = self.panels.get(i).and_then(|p| p.nodes.as_ref()) {
                place(&n.panner, spot.0, spot.1);
            }
        }
    }

    /// The listener's pose this frame.
    pub fn set_listener(&mut self, l: Listener) {
        self.listener = Some(l);
        self.apply_listener();
    }

    fn apply_listener(&mut self) {
        let (Some(g), Some(l)) = (&self.graph, self.listener) else { return };
        if self.listener_set.is_some_and(|s| !s.differs(&l)) {
            return;
        }
        let listener: JsValue = g.ctx.listener().into();
        let params = set_params(&listener, ["positionX", "positionY", "positionZ"], l.position)
            && set_params(&listener, ["forwardX", "forwardY", "forwardZ"], l.forward)
            && set_params(&listener, ["upX", "upY", "upZ"], l.up);
        if !params {
            let listener = g.ctx.listener();
            let (p, f, u) = (l.position, l.forward, l.up);
            listener.set_position(p.x as f64, p.y as f64, p.z as f64);
            listener.set_orientation(f.x as f64, f.y as f64, f.z as f64, u.x as f64, u.y as f64, u.z as f64);
        }
        self.listener_set = Some(l);
    }

    /// Reads every panel's levels and whether it plays (the 250 ms tick; captions follow).
    pub fn measure(&mut self, now_ms: f64) {
        let mut pre = vec![0f32; PANEL_FFT as usize];
        let mut post = vec![0f32; LEVEL_FFT as usize];
        for p in &mut self.panels {
            let Some(n) = &p.nodes else { continue };
            n.pre.get_float_time_domain_data(&mut pre);
            n.post.get_float_time_domain_data(&mut post);
            let (source, heard) = (rms_db(&pre), rms_db(&post));
            p.source_level = Some(source);
            p.level = Some(heard);
            p.detector.update(now_ms, source);
        }
    }

    pub fn snapshot(&self) -> AudioSnapshot {
        let context = self.graph.as_ref().map(|g| {
            match g.ctx.state() {
                AudioContextState::Suspended => "suspended",
                AudioContextState::Running => "running",
                AudioContextState::Closed => "closed",
                _ => "unknown",
            }
            .to_string()
        });
        AudioSnapshot {
            enabled: self.settings.enabled,
            context,
            sample_rate: self.graph.as_ref().map(|g| g.ctx.sample_rate() as f64),
            unfocused_db: self.settings.unfocused_db as f64,
            panels: self
                .panels
                .iter()
                .enumerate()
                .map(|(i, p)| PanelAudioSnapshot {
                    track: p.nodes.is_some(),
                    muted: p.muted,
                    gain_db: crate::audio::focus_db(i, self.focus, &self.settings) as f64,
                    playing: p.detector.playing(),
                    level: p.level.map(f64::from),
                    source_level: p.source_level.map(f64::from),
                })
                .collect(),
        }
    }

    /// `__loco.audioSpectrum()`: `{sampleRate, fftSize, binHz, left, right, panels}` — the
    /// master's left and right dB spectra (plain arrays, −∞ floored at −120) and per panel
    /// `{dominantHz, dominantDb, level}` (its own sound's strongest frequency, `null` when
    /// silent; the level heard); `null` before the context exists.
    pub fn spectrum(&self) -> JsValue {
        let Some(g) = &self.graph else { return JsValue::NULL };
        let sample_rate = g.ctx.sample_rate();
        let o = Object::new();
        set(&o, "sampleRate", sample_rate as f64);
        set(&o, "fftSize", MASTER_FFT);
        set(&o, "binHz", (sample_rate / MASTER_FFT as f32) as f64);
        set(&o, "context", self.snapshot().context.unwrap_or_default());
        let mut buf = vec![0f32; (MASTER_FFT / 2) as usize];
        for (name, a) in [("left", &g.left), ("right", &g.right)] {
            a.get_float_frequency_data(&mut buf);
            let arr: Array = buf.iter().map(|v| JsValue::from_f64(v.max(FLOOR_DB) as f64)).collect();
            set(&o, name, arr);
        }
        let mut spec = vec![0f32; (PANEL_FFT / 2) as usize];
        let panels: Array = self
            .panels
            .iter()
            .map(|p| {
                let po = Object::new();
                let peak = p.nodes.as_ref().and_then(|n| {
                    n.pre.get_float_frequency_data(&mut spec);
                    dominant_frequency(&spec, sample_rate, PANEL_FFT, PEAK_MIN_DB)
                });
                set(&po, "dominantHz", peak.map(|(hz, _)| JsValue::from_f64(hz as f64)).unwrap_or(JsValue::NULL));
                set(&po, "dominantDb", peak.map(|(_, db)| JsValue::from_f64(db as f64)).unwrap_or(JsValue::NULL));
                set(&po, "level", p.level.map(|l| JsValue::from_f64(l as f64)).unwrap_or(JsValue::NULL));
                JsValue::from(po)
            })
            .collect();
        set(&o, "panels", panels);
        o.into()
    }
}

fn place(panner: &PannerNode, at: Vec3, facing: Vec3) {
    let node: &JsValue = panner.as_ref();
    if !set_params(node, ["positionX", "positionY", "positionZ"], at) {
        panner.set_position(at.x as f64, at.y as f64, at.z as f64);
    }
    if !set_params(node, ["orientationX", "orientationY", "orientationZ"], facing) {
        panner.set_orientation(facing.x as f64, facing.y as f64, facing.z as f64);
    }
}
