//! The `window.__loco` test hook's snapshot, as a plain serialisable value (the shell adds
//! the `screenPoint` and `capture` functions and freezes it). `playwright/` and
//! `scripts/test_up.py` read these fields: keep their names.

use std::collections::VecDeque;

use glam::Vec3;
use serde::Serialize;

/// A point in `local-floor` metres.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

impl From<Vec3> for Point {
    fn from(v: Vec3) -> Self {
        Self { x: v.x as f64, y: v.y as f64, z: v.z as f64 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PanelSnapshot {
    pub name: String,
    pub whep: String,
    /// `connecting`, `live` or `down`.
    pub state: &'static str,
    pub frames_decoded: u32,
    pub frames_presented: u32,
    pub frames_uploaded: u64,
    pub video_width: u32,
    pub video_height: u32,
    pub fps: f64,
    pub kbps: f64,
    pub rtt_ms: Option<f64>,
    pub attempts: u32,
    pub error: Option<String>,
    pub input_open: bool,
    /// The desktop image's corners, TL/TR/BR/BL.
    pub corners: Vec<Point>,
    /// The caption's corners, TL/TR/BR/BL (a click or trigger on it toggles the panel's sound;
    /// its right end, from u = `captionButtonU`, opens the VM menu).
    pub caption_corners: Vec<Point>,
    /// The caption's text.
    pub caption: String,
    /// Where the VM menu is (open or not), TL/TR/BR/BL; its items side by side in its top band.
    pub menu_corners: Vec<Point>,
    pub control: ControlSnapshot,
    /// `focused`, `visible` or `hidden` as the last drawn frame saw it (`null` before one).
    pub attention: Option<&'static str>,
    /// What the panel's agent was last told in this session (`null`: nothing yet).
    pub attention_sent: Option<&'static str>,
    /// Attention messages sent to its agent so far.
    pub attention_messages: u32,
    /// The codec in use (`h264`, `vp8`; from `getStats`, else the one asked for; `null` before).
    pub codec: Option<&'static str>,
    /// The codec asked of the agent (`null`: its default).
    pub codec_requested: Option<&'static str>,
    /// Renegotiations with another codec after a stalled decoder (or `__loco.debug.renegotiate`),
    /// and the last one's reason.
    pub decoder_fallbacks: u32,
    pub decoder_fallback_reason: Option<String>,
    /// `getStats`' `decoderImplementation` and `powerEfficientDecoder`, where the browser gives them.
    pub decoder_implementation: Option<String>,
    pub power_efficient_decoder: Option<bool>,
    pub frames_dropped: u32,
    /// Decode time per decoded frame over the session (`totalDecodeTime / framesDecoded`).
    pub decode_ms: Option<f64>,
    /// The statistics line under the panel (`?hud=1` or the Stats button; empty when off).
    pub hud_line: String,
}

/// One panel's VM menu and what it knows.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ControlSnapshot {
    pub open: bool,
    /// `…/control`, or `null` when the WHEP URL does not end in `/whep`.
    pub url: Option<String>,
    /// The agent's `qmp`, `status` and `snapshot`, once it answered.
    pub qmp: Option<String>,
    pub vm_status: Option<String>,
    pub snapshot: Option<bool>,
    /// Why the status could not be read.
    pub status_error: Option<String>,
    /// The action in flight (`reset`, `powerdown`, `poweron`, `revert`).
    pub pending: Option<&'static str>,
    /// The last answer: `{action, ok, text}`.
    pub last: Option<ControlResult>,
    /// The VM restarts on purpose and its stream is not back yet.
    pub rebooting: bool,
    /// The item held (`reset`, …) and the hold's progress 0..1.
    pub hold: Option<(&'static str, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlResult {
    pub action: &'static str,
    pub ok: bool,
    pub text: String,
}

/// The in-VR keyboard.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyboardSnapshot {
    /// Shown (thumbstick press) — drawn only in VR with a focused panel.
    pub visible: bool,
    /// Its corners while drawn, TL/TR/BR/BL, else empty.
    pub corners: Vec<Point>,
    /// Each key's name and centre (u right, v down, 0..1 of the keyboard).
    pub keys: Vec<KeySnapshot>,
    /// `off`, `latched` or `locked`.
    pub shift: &'static str,
    pub ctrl: &'static str,
    pub alt: &'static str,
    pub win: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySnapshot {
    pub name: &'static str,
    pub u: f64,
    pub v: f64,
}

/// One key event the page sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySent {
    pub panel: usize,
    pub keysym: u32,
    pub down: bool,
}

/// Paste as typing.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct PasteSnapshot {
    pub typed: usize,
    pub total: usize,
    pub busy: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct XrSnapshot {
    pub supported: bool,
    pub active: bool,
    /// The XR device's backend while a session runs (`null` otherwise).
    pub backend: Option<&'static str>,
    /// Where the session's last frame was drawn: `framebuffer` (the layer's opaque framebuffer,
    /// as on a headset) or `canvas` (a layer without one); `null` before the first frame.
    pub path: Option<&'static str>,
    /// The size of the layer drawn in the last frame (`framebufferWidth`/`framebufferHeight`).
    pub framebuffer_width: u32,
    pub framebuffer_height: u32,
    /// Each view's viewport in the last frame as the layer gave it: x, y (from the bottom), w, h.
    pub viewports: Vec<[i32; 4]>,
    /// The `framebufferScaleFactor` the layer was asked for (`?scale=`).
    pub scale: Option<f64>,
    /// The layer's `fixedFoveation` read back (`null` where the layer has none).
    pub foveation: Option<f64>,
    /// The session's `frameRate` (`null` where it has none).
    pub frame_rate: Option<f64>,
    /// The rate passed to `updateTargetFrameRate` (`null` when the session offers no choice).
    pub target_frame_rate: Option<f64>,
    /// The session's `supportedFrameRates` (empty where it has none).
    pub supported_frame_rates: Vec<f64>,
    /// Media layers: `?layers=` (`auto`, `on`, `off`), whether the browser has the API, whether
    /// the session uses them, and why not (or what failed) when it does not.
    pub layers_mode: Option<&'static str>,
    pub layers_available: bool,
    pub layers_active: bool,
    pub layers_error: Option<String>,
    /// The quad layers under the projection layer, in the session's order (farthest first).
    pub media_layers: Vec<MediaLayerSnapshot>,
    /// Quad layers made so far (a new one per panel going live, and per video size change).
    pub media_layers_made: u32,
    /// Panels whose video a media layer showed in the last frame (not copied into a texture).
    pub through_layer: Vec<usize>,
}

/// One panel's media layer: where the page put it (`XRQuadLayer.transform`, `width`, `height`
/// in the session's `local-floor` space) and the video size it was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MediaLayerSnapshot {
    pub panel: usize,
    pub position: [f32; 3],
    /// x, y, z, w.
    pub orientation: [f32; 4],
    pub width: f32,
    pub height: f32,
    pub video_width: u32,
    pub video_height: u32,
}

/// One panel's sound.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PanelAudioSnapshot {
    /// The session has an audio track and it feeds the graph.
    pub track: bool,
    pub muted: bool,
    /// The focus level the gain is set to (0, or `audio-unfocused-db`), muted or not.
    pub gain_db: f64,
    /// The panel's own sound is above the playing threshold (held through short gaps).
    pub playing: bool,
    /// RMS dBFS after the gain (what is heard of it, before the panner); `null` without a track.
    pub level: Option<f64>,
    /// RMS dBFS of the track itself, before the gain.
    pub source_level: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AudioSnapshot {
    /// Audio is offered to the agents (`audio=off` makes this false).
    pub enabled: bool,
    /// The AudioContext's state (`suspended`, `running`, `closed`), `null` before the first
    /// click or Enter VR.
    pub context: Option<String>,
    pub sample_rate: Option<f64>,
    pub unfocused_db: f64,
    pub panels: Vec<PanelAudioSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub panels: Vec<PanelSnapshot>,
    pub xr: XrSnapshot,
    pub focus: Option<usize>,
    pub error: Option<String>,
    pub hud: bool,
    pub backend: Option<&'static str>,
    pub frame_ms: f64,
    pub frame_ms_p50: Option<f64>,
    pub frame_ms_p95: Option<f64>,
    pub upload_ms: f64,
    pub uploads_per_frame: usize,
    pub all_live_at_ms: Option<f64>,
    pub frames: u64,
    pub all_live_ms: Option<f64>,
    pub audio: AudioSnapshot,
    pub keyboard: KeyboardSnapshot,
    /// The last key events sent (physical keys, the in-VR keyboard, paste), oldest first.
    pub keys_sent: Vec<KeySent>,
    /// The message line's text while it shows (paste refused, typing done, the wall restored).
    pub message: Option<String>,
    pub paste: PasteSnapshot,
    /// Where on a caption (u, 0..1 from its left) its VM menu button starts.
    pub caption_button_u: f64,
}

impl Snapshot {
    pub fn to_json(&self) -> String {
        serde_json::to_value(self).map(|v| v.to_string()).unwrap_or_else(|_| "null".into())
    }
}

/// The `q` quantile (nearest rank) of `values`.
pub fn percentile(values: &VecDeque<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() - 1) as f64 * q).round() as usize])
}

/// The render loop's CPU time per frame: a moving average over ~60 frames and the last
/// `capacity` frames for percentiles.
#[derive(Debug, Clone)]
pub struct FrameTimes {
    pub frames: u64,
    pub average_ms: f64,
    history: VecDeque<f64>,
    capacity: usize,
    /// While `Some`, every frame's time is also kept here (the check page's measurement).
    pub log: Option<Vec<f64>>,
}

impl FrameTimes {
    pub fn new(capacity: usize) -> Self {
        Self { frames: 0, average_ms: 0.0, history: VecDeque::with_capacity(capacity), capacity, log: None }
    }

    pub fn record(&mut self, ms: f64) {
        self.frames += 1;
        // Exponential moving average over ~60 frames.
        self.average_ms = if self.frames == 1 { ms } else { self.average_ms + (ms - self.average_ms) / 60.0 };
        if self.history.len() == self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(ms);
        if let Some(log) = &mut self.log {
            log.push(ms);
        }
    }

    pub fn percentile(&self, q: f64) -> Option<f64> {
        percentile(&self.history, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&VecDeque::new(), 0.5), None);
        let v: VecDeque<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(51.0));
        assert_eq!(percentile(&v, 0.95), Some(95.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
    }

    #[test]
    fn frame_times() {
        let mut t = FrameTimes::new(3);
        t.record(10.0);
        assert_eq!(t.average_ms, 10.0);
        t.record(70.0);
        assert_eq!(t.average_ms, 11.0);
        t.record(1.0);
        t.record(2.0);
        assert_eq!(t.frames, 4);
        assert_eq!(t.percentile(1.0), Some(70.0), "the first frame fell out of the history");
        assert_eq!(t.percentile(0.0), Some(1.0));
    }

    #[test]
    fn snapshot_field_names() {
        let s = Snapshot {
            panels: vec![PanelSnapshot {
                name: "vm1".into(),
                whep: "http://h/whep".into(),
                state: "live",
                frames_decoded: 3,
                frames_presented: 2,
                frames_uploaded: 1,
                video_width: 1024,
                video_height: 768,
                fps: 30.0,
                kbps: 1.5,
                rtt_ms: None,
                attempts: 1,
                error: None,
                input_open: true,
                corners: vec![Vec3::new(0.5, 1.0, -2.0).into()],
                caption_corners: vec![],
                caption: "vm1  ·  live".into(),
                menu_corners: vec![],
                control: ControlSnapshot::default(),
                attention: Some("visible"),
                attention_sent: None,
                attention_messages: 0,
                codec: Some("vp8"),
                codec_requested: Some("vp8"),
                decoder_fallbacks: 1,
                decoder_fallback_reason: Some("stalled".into()),
                decoder_implementation: Some("libvpx".into()),
                power_efficient_decoder: Some(false),
                frames_dropped: 0,
                decode_ms: Some(1.5),
                hud_line: String::new(),
            }],
            xr: XrSnapshot { supported: true, active: false, ..Default::default() },
            focus: Some(0),
            error: None,
            hud: false,
            backend: Some("webgl2"),
            frame_ms: 1.0,
            frame_ms_p50: Some(1.0),
            frame_ms_p95: None,
            upload_ms: 0.5,
            uploads_per_frame: 9,
            all_live_at_ms: Some(1200.0),
            frames: 7,
            all_live_ms: Some(1000.0),
            audio: AudioSnapshot {
                enabled: true,
                context: Some("running".into()),
                sample_rate: Some(48000.0),
                unfocused_db: -12.0,
                panels: vec![PanelAudioSnapshot {
                    track: true,
                    muted: false,
                    gain_db: 0.0,
                    playing: true,
                    level: Some(-20.0),
                    source_level: None,
                }],
            },
            keyboard: KeyboardSnapshot::default(),
            keys_sent: vec![KeySent { panel: 1, keysym: 0x68, down: true }],
            message: None,
            paste: PasteSnapshot::default(),
            caption_button_u: 0.88,
        };
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k.join(",")
        };
        assert_eq!(
            keys(&v),
            "allLiveAtMs,allLiveMs,audio,backend,captionButtonU,error,focus,frameMs,frameMsP50,frameMsP95,frames,hud,\
             keyboard,keysSent,message,panels,paste,uploadMs,uploadsPerFrame,xr"
        );
        assert_eq!(
            keys(&v["panels"][0]),
            "attempts,attention,attentionMessages,attentionSent,caption,captionCorners,codec,codecRequested,control,\
             corners,decodeMs,decoderFallbackReason,decoderFallbacks,decoderImplementation,error,fps,framesDecoded,\
             framesDropped,framesPresented,framesUploaded,hudLine,inputOpen,kbps,menuCorners,name,\
             powerEfficientDecoder,rttMs,state,videoHeight,videoWidth,whep"
        );
        assert_eq!(
            keys(&v["xr"]),
            "active,backend,foveation,frameRate,framebufferHeight,framebufferWidth,layersActive,layersAvailable,\
             layersError,layersMode,mediaLayers,mediaLayersMade,path,scale,supported,supportedFrameRates,\
             targetFrameRate,throughLayer,viewports"
        );
        assert_eq!(
            keys(&v["panels"][0]["control"]),
            "hold,last,open,pending,qmp,rebooting,snapshot,statusError,url,vmStatus"
        );
        assert_eq!(keys(&v["keyboard"]), "alt,corners,ctrl,keys,shift,visible,win");
        assert_eq!(v["keysSent"][0], serde_json::json!({"panel": 1, "keysym": 104, "down": true}));
        assert_eq!(keys(&v["audio"]), "context,enabled,panels,sampleRate,unfocusedDb");
        assert_eq!(keys(&v["audio"]["panels"][0]), "gainDb,level,muted,playing,sourceLevel,track");
        assert_eq!(v["panels"][0]["corners"][0], serde_json::json!({"x": 0.5, "y": 1.0, "z": -2.0}));
        assert_eq!(v["panels"][0]["rttMs"], serde_json::Value::Null);
    }
}
