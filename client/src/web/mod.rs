//! The page: config, panels and their WHEP sessions, the flat view and the WebXR session,
//! input, and the `window.__loco` hook.
//!
//! One `App` behind `Rc<RefCell<..>>`, driven by: a 250 ms tick (connections, statistics,
//! captions), the flat view's `requestAnimationFrame` or the XR session's, DOM input events,
//! and each video's `requestVideoFrameCallback` (which only marks the panel's texture stale).

mod gfx;
mod util;
mod whep;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use glam::{Mat4, Quat, Vec2, Vec3};
use loco_shared::config::Config;
use loco_shared::controller::{ControllerButtons, GamepadState};
use loco_shared::keys::keysym;
use loco_shared::layout::{desktop_pixel, layout, pick, Panel, WallConfig, WallOrigin};
use loco_shared::protocol::{buttons, InputMessage};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    CanvasRenderingContext2d, HtmlCanvasElement, HtmlElement, HtmlVideoElement, KeyboardEvent, MouseEvent,
    RtcPeerConnectionState, WheelEvent, XrFrame, XrReferenceSpace, XrSession, XrWebGlLayer,
};

use crate::camera::FlatCamera;
use crate::render::{flip_y, gl_to_wgpu_depth, View};
use crate::scene::{self, PanelView, Pointer, SceneInput, StreamState, Tex};
use gfx::{Backend, Gfx};
use util::{document, js_error, now_ms, set, window};

const BACKOFF_MIN_MS: f64 = 1000.0;
const BACKOFF_MAX_MS: f64 = 15_000.0;
/// Live this long and the backoff starts again from its minimum.
const STABLE_MS: f64 = 10_000.0;
/// ICE "disconnected" this long counts as down.
const DISCONNECTED_GRACE_MS: f64 = 1500.0;
/// Nothing at all (no RTP, no RTCP sender report; the agent sends one every 2 s) from a live
/// agent for this long: ask its `/healthz` whether it is still there.
const SILENCE_PROBE_MS: f64 = 2600.0;
/// Negotiated but never connected in this time: down.
const CONNECT_TIMEOUT_MS: f64 = 15_000.0;
const STATS_EVERY_MS: f64 = 1000.0;
const DEFAULT_DESKTOP: (u32, u32) = (1024, 768);
/// Caption and HUD textures.
const LABEL_W: u32 = 1024;
const LABEL_H: u32 = 44;
/// How far a laser reaches when it hits nothing.
const LASER_REACH_M: f32 = 4.0;
/// Draw time a frame may spend on video uploads and drawing (a 90 Hz headset's frame).
const FRAME_BUDGET_MS: f64 = 11.0;
/// Frames whose CPU time the hook reports percentiles of.
const FRAME_HISTORY: usize = 600;

#[wasm_bindgen(inline_js = r#"
export function request_video_frame(video, cb) {
  if (typeof video.requestVideoFrameCallback === "function") return video.requestVideoFrameCallback(cb);
  return -1;
}
"#)]
extern "C" {
    /// `HTMLVideoElement.requestVideoFrameCallback` (no web-sys binding yet); −1 if missing.
    fn request_video_frame(video: &HtmlVideoElement, cb: &js_sys::Function) -> i32;
}

type Shared = Rc<RefCell<App>>;
/// A callback that re-registers itself (animation and video frame loops).
type Looping<F> = Rc<RefCell<Option<Closure<F>>>>;

thread_local! {
    static NO_FRAME_CALLBACKS: Cell<bool> = const { Cell::new(false) };
    /// `?upload=video`: copy straight from the `<video>`; default: grab each new frame as an
    /// ImageBitmap first (see `watch_frames`).
    static UPLOAD_FROM_VIDEO: Cell<bool> = const { Cell::new(false) };
}

/// A panel's newest frame, grabbed as an ImageBitmap, waiting to be uploaded.
type Grabbed = Rc<RefCell<Option<web_sys::ImageBitmap>>>;

/// A panel's connection and what the scene shows of it.
struct PanelRt {
    desktop: loco_shared::config::Desktop,
    /// `desktop.whep` resolved against the page's URL.
    whep_url: String,
    video: HtmlVideoElement,
    state: StreamState,
    session: Option<whep::Session>,
    /// Bumped whenever a session is torn down, so late results of the old one are ignored.
    generation: u32,
    connecting: bool,
    attempts: u32,
    backoff_ms: f64,
    retry_at: f64,
    since: f64,
    disconnected_since: Option<f64>,
    error: Option<String>,
    /// Set by the video's frame callback: a new frame waits to be uploaded.
    new_frame: Rc<Cell<bool>>,
    grabbed: Grabbed,
    frames_presented: Rc<Cell<u32>>,
    has_video: bool,
    /// When a frame of this panel was last copied into its texture, and how many were.
    uploaded_at: f64,
    uploads: u64,
    video_size: (u32, u32),
    stats: whep::VideoStats,
    stats_at: f64,
    kbps: f64,
    stats_pending: bool,
    /// When the agent was last heard from (RTP or RTCP), and a `/healthz` probe in flight.
    heard_at: f64,
    probing: bool,
    label: String,
    hud: String,
    /// Last pointer message sent, to skip repeats.
    last_pointer: Option<(u32, u32, u8)>,
    _frame_cb: Looping<dyn FnMut(f64, JsValue)>,
}

impl PanelRt {
    fn desktop_size(&self) -> (u32, u32) {
        if self.video_size.0 > 0 && self.video_size.1 > 0 {
            self.video_size
        } else {
            DEFAULT_DESKTOP
        }
    }

    fn send(&mut self, msg: InputMessage) {
        if let InputMessage::Pointer { x, y, buttons } = msg {
            if self.last_pointer == Some((x, y, buttons)) {
                return;
            }
            self.last_pointer = Some((x, y, buttons));
        }
        if let Some(s) = &self.session {
            s.send(&msg.to_json());
        }
    }
}

/// A controller (or the mouse) pressing on a panel keeps sending to it until released.
#[derive(Default)]
struct Hand {
    buttons: ControllerButtons,
    captured: Option<usize>,
    hover: Option<usize>,
    hud_button: bool,
    recentre_button: bool,
}

struct Xr {
    session: XrSession,
    space: XrReferenceSpace,
    layer: XrWebGlLayer,
    recentred: bool,
    hands: [Hand; 2],
}

struct Flat {
    camera: FlatCamera,
    mouse: Option<Vec2>,
    mask: u8,
    captured: Option<usize>,
    dragging: Option<Vec2>,
    /// The user turned or zoomed the camera: stop re-framing the wall.
    user_moved: bool,
}

struct App {
    config: Option<Config>,
    base_url: String,
    error: Option<String>,
    panels: Vec<PanelRt>,
    wall: WallConfig,
    origin: WallOrigin,
    layout: Vec<Panel>,
    focus: Option<usize>,
    hud: bool,
    flat: Flat,
    xr: Option<Xr>,
    /// The flat view's device, and the WebGL2 one for XR when the flat view uses WebGPU.
    gfx: Option<Gfx>,
    xr_gfx: Option<Gfx>,
    xr_supported: bool,
    /// A lost device is being replaced.
    recovering: bool,
    /// Video uploads in the frame being drawn, and how many a frame may afford.
    uploads_this_frame: usize,
    budget: crate::budget::UploadBudget,
    /// Bitmaps copied in this frame, closed once it is submitted.
    used_bitmaps: Vec<web_sys::ImageBitmap>,
    label_ctx: Option<CanvasRenderingContext2d>,
    /// The flat view has something new to show (the XR view draws every frame regardless).
    redraw: bool,
    frame_ms: f64,
    /// The last frames' CPU times (ms), for percentiles in the hook.
    frame_times: std::collections::VecDeque<f64>,
    frames: u64,
    started_at: f64,
    all_live_at: Option<f64>,
    pointers: Vec<Pointer>,
}

impl App {
    fn relayout(&mut self) {
        let aspects: Vec<f32> = self
            .panels
            .iter()
            .map(|p| {
                let (w, h) = p.desktop_size();
                w as f32 / h as f32
            })
            .collect();
        self.layout = layout(&self.wall, &self.origin, &aspects);
        self.redraw = true;
    }

    fn set_error(&mut self, message: String) {
        web_sys::console::error_1(&message.clone().into());
        if let Some(el) = document().get_element_by_id("loco-error") {
            el.set_text_content(Some(&message));
            let _ = el.remove_attribute("hidden");
        }
        self.error = Some(message);
    }

    fn set_focus(&mut self, focus: Option<usize>) {
        if self.focus != focus {
            self.focus = focus;
            self.redraw = true;
        }
    }

    // ------------------------------------------------------------------ connections

    fn tick(&mut self, shared: &Shared) {
        let now = now_ms();
        if !self.recovering && self.gfx.as_ref().is_some_and(|g| g.is_lost()) {
            self.recovering = true;
            spawn_local(recover(shared.clone()));
        }
        let mut relayout = false;
        for i in 0..self.panels.len() {
            let p = &mut self.panels[i];
            let pc = p.session.as_ref().map(|s| s.pc.clone());
            match pc {
                None if !p.connecting && now >= p.retry_at => {
                    p.connecting = true;
                    p.state = StreamState::Connecting;
                    p.since = now;
                    p.attempts += 1;
                    let generation = p.generation;
                    let desktop = p.desktop.clone();
                    let video = p.video.clone();
                    let ice = self.config.as_ref().map(|c| c.ice_servers.clone()).unwrap_or_default();
                    let base = self.base_url.clone();
                    let shared = shared.clone();
                    spawn_local(async move {
                        let result = whep::connect(&desktop, &base, &ice, &video).await;
                        if let Ok(mut app) = shared.try_borrow_mut() {
                            app.connected(i, generation, result);
                        } else if let Ok(s) = result {
                            s.close();
                        }
                    });
                }
                None => {}
                Some(pc) => {
                    let state = pc.connection_state();
                    let (vw, vh) = (p.video.video_width(), p.video.video_height());
                    if (vw, vh) != p.video_size && vw > 0 && vh > 0 {
                        p.video_size = (vw, vh);
                        relayout = true;
                    }
                    let mut down: Option<String> = None;
                    match state {
                        RtcPeerConnectionState::Connected => {
                            p.disconnected_since = None;
                            let input_open = p.session.as_ref().is_some_and(|s| s.input_open());
                            if vw > 0 && input_open && p.state != StreamState::Live {
                                p.state = StreamState::Live;
                                p.since = now;
                                p.heard_at = now;
                                p.error = None;
                            }
                            if p.state == StreamState::Live && now - p.since > STABLE_MS {
                                p.backoff_ms = 0.0;
                            }
                        }
                        RtcPeerConnectionState::Disconnected => {
                            let since = *p.disconnected_since.get_or_insert(now);
                            if now - since > DISCONNECTED_GRACE_MS {
                                down = Some("connection lost".into());
                            }
                        }
                        RtcPeerConnectionState::Failed => down = Some("connection failed".into()),
                        RtcPeerConnectionState::Closed => down = Some("connection closed".into()),
                        _ => {
                            if now - p.since > CONNECT_TIMEOUT_MS {
                                down = Some("the connection did not come up in time".into());
                            }
                        }
                    }
                    if let Some(reason) = down {
                        self.down(i, reason);
                        continue;
                    }
                    let p = &mut self.panels[i];
                    // A killed agent sends nothing and ICE takes ~8 s to notice: probe sooner.
                    if p.state == StreamState::Live && !p.probing && now - p.heard_at > SILENCE_PROBE_MS {
                        if let Some(url) = whep::health_url(&p.whep_url) {
                            p.probing = true;
                            let generation = p.generation;
                            let shared = shared.clone();
                            spawn_local(async move {
                                let alive = whep::agent_answers(&url).await;
                                if let Ok(mut app) = shared.try_borrow_mut() {
                                    app.probed(i, generation, alive);
                                }
                            });
                        }
                    }
                    if !p.stats_pending && now - p.stats_at >= STATS_EVERY_MS {
                        p.stats_pending = true;
                        let generation = p.generation;
                        let shared = shared.clone();
                        spawn_local(async move {
                            let st = whep::stats(&pc).await;
                            if let Ok(mut app) = shared.try_borrow_mut() {
                                app.got_stats(i, generation, st);
                            }
                        });
                    }
                }
            }
        }
        if relayout {
            self.relayout();
        }
        if self.all_live_at.is_none()
            && !self.panels.is_empty()
            && self.panels.iter().all(|p| p.state == StreamState::Live)
        {
            self.all_live_at = Some(now);
            web_sys::console::info_1(
                &format!("loco: all {} panels live {:.0} ms after start", self.panels.len(), now - self.started_at)
                    .into(),
            );
        }
        self.update_labels();
    }

    fn connected(&mut self, i: usize, generation: u32, result: Result<whep::Session, String>) {
        let Some(p) = self.panels.get_mut(i) else { return };
        if p.generation != generation {
            if let Ok(s) = result {
                s.close();
            }
            return;
        }
        p.connecting = false;
        match result {
            Ok(s) => {
                p.session = Some(s);
                p.since = now_ms();
                p.last_pointer = None;
            }
            Err(e) => self.down(i, e),
        }
    }

    fn probed(&mut self, i: usize, generation: u32, alive: bool) {
        let Some(p) = self.panels.get_mut(i) else { return };
        if p.generation != generation {
            return;
        }
        p.probing = false;
        if alive {
            p.heard_at = now_ms();
        } else {
            self.down(i, "the agent does not answer".into());
        }
    }

    fn got_stats(&mut self, i: usize, generation: u32, st: Option<whep::VideoStats>) {
        let Some(p) = self.panels.get_mut(i) else { return };
        p.stats_pending = false;
        if p.generation != generation {
            return;
        }
        let now = now_ms();
        if let Some(st) = st {
            let dt = (now - p.stats_at) / 1000.0;
            if p.stats_at > 0.0 && dt > 0.0 && st.bytes_received >= p.stats.bytes_received {
                p.kbps = (st.bytes_received - p.stats.bytes_received) * 8.0 / 1000.0 / dt;
            }
            if st.activity != p.stats.activity {
                p.heard_at = now;
            }
            p.stats = st;
        }
        p.stats_at = now;
    }

    /// Marks panel `i` down, ends its session and schedules the next attempt.
    fn down(&mut self, i: usize, reason: String) {
        let now = now_ms();
        let p = &mut self.panels[i];
        p.generation += 1;
        p.connecting = false;
        if let Some(s) = p.session.take() {
            s.close();
        }
        p.video.set_src_object(None);
        p.state = StreamState::Down;
        p.since = now;
        p.disconnected_since = None;
        p.probing = false;
        p.stats = Default::default();
        p.stats_at = 0.0;
        p.kbps = 0.0;
        p.last_pointer = None;
        p.backoff_ms = if p.backoff_ms > 0.0 { (p.backoff_ms * 2.0).min(BACKOFF_MAX_MS) } else { BACKOFF_MIN_MS };
        let jitter = 0.8 + 0.4 * js_sys::Math::random();
        p.retry_at = now + p.backoff_ms * jitter;
        web_sys::console::warn_1(&format!("loco: {} down: {reason}", p.desktop.name).into());
        p.error = Some(reason);
        self.redraw = true;
        for hand in self.xr.iter_mut().flat_map(|x| x.hands.iter_mut()) {
            if hand.captured == Some(i) {
                hand.captured = None;
                hand.buttons.release_all();
            }
        }
        if self.flat.captured == Some(i) {
            self.flat.captured = None;
        }
    }

    // ------------------------------------------------------------------ captions and HUD

    fn update_labels(&mut self) {
        let now = now_ms();
        for i in 0..self.panels.len() {
            let p = &self.panels[i];
            let mut label = format!("{}  ·  {}", p.desktop.name, p.state.as_str());
            match p.state {
                StreamState::Live => {
                    let (w, h) = p.video_size;
                    label.push_str(&format!("  ·  {w}×{h}"));
                }
                StreamState::Down => {
                    let wait = ((p.retry_at - now) / 1000.0).ceil().max(0.0);
                    if let Some(e) = &p.error {
                        label.push_str(&format!("  ·  {e}"));
                    }
                    if wait > 0.0 {
                        label.push_str(&format!("  ·  retry in {wait:.0} s"));
                    }
                }
                StreamState::Connecting => {}
            }
            if self.focus == Some(i) {
                label.push_str("  ·  keyboard");
            }
            let hud = if self.hud {
                let rtt = p.stats.rtt_ms.map(|r| format!("{r:.0} ms")).unwrap_or_else(|| "–".into());
                format!(
                    "{:.0} fps  ·  {:.0} kbit/s  ·  rtt {rtt}  ·  {} frames",
                    p.stats.fps, p.kbps, p.stats.frames_decoded
                )
            } else {
                String::new()
            };
            let state = p.state;
            let (label_changed, hud_changed) = (label != p.label, hud != p.hud);
            if label_changed || hud_changed {
                self.redraw = true;
            }
            if label_changed {
                self.draw_text(Tex::Label(i), &label, state, false);
                self.panels[i].label = label;
            }
            if hud_changed {
                if !hud.is_empty() {
                    self.draw_text(Tex::Hud(i), &hud, state, true);
                }
                self.panels[i].hud = hud;
            }
        }
    }

    /// Renders one line of text into a caption texture of every device.
    fn draw_text(&mut self, tex: Tex, text: &str, state: StreamState, hud: bool) {
        let Some(ctx) = &self.label_ctx else { return };
        let (w, h) = (LABEL_W as f64, LABEL_H as f64);
        ctx.clear_rect(0.0, 0.0, w, h);
        ctx.set_fill_style_str(if hud { "rgba(0,0,0,0.72)" } else { "rgba(12,14,20,0.85)" });
        ctx.fill_rect(0.0, 0.0, w, h);
        let dot = match state {
            StreamState::Live => "#3ddc84",
            StreamState::Connecting => "#f5c542",
            StreamState::Down => "#ff5c5c",
        };
        let mut x = 12.0;
        if !hud {
            ctx.set_fill_style_str(dot);
            ctx.begin_path();
            let _ = ctx.arc(22.0, h / 2.0, 9.0, 0.0, std::f64::consts::TAU);
            ctx.fill();
            x = 42.0;
        }
        ctx.set_fill_style_str("#f2f4f8");
        ctx.set_font("28px system-ui, sans-serif");
        ctx.set_text_baseline("middle");
        let _ = ctx.fill_text_with_max_width(text, x, h / 2.0 + 1.0, w - x - 8.0);
        let Ok(data) = ctx.get_image_data(0, 0, LABEL_W as i32, LABEL_H as i32) else { return };
        let pixels = data.data().0;
        for g in [self.gfx.as_mut(), self.xr_gfx.as_mut()].into_iter().flatten() {
            g.renderer.write_rgba(&g.device, &g.queue, tex, LABEL_W, LABEL_H, &pixels);
        }
    }

    /// Re-renders every caption (a new device needs them).
    fn redraw_labels(&mut self) {
        for p in &mut self.panels {
            p.label.clear();
            p.hud.clear();
            p.new_frame.set(p.has_video);
        }
        self.update_labels();
    }

    // ------------------------------------------------------------------ drawing

    /// Copies each panel's newest decoded frame into its texture; true if any was new.
    /// Copies the newest decoded frame of panels that have one into their textures — as many
    /// as the frame budget affords, those waiting longest first; true if any was copied.
    fn upload_videos(&mut self, xr: bool) -> bool {
        self.uploads_this_frame = 0;
        let every_frame = NO_FRAME_CALLBACKS.with(|f| f.get());
        let mut waiting: Vec<usize> = (0..self.panels.len())
            .filter(|&i| {
                let p = &self.panels[i];
                // HAVE_CURRENT_DATA: before that, WebGPU's copyExternalImageToTexture throws
                // (and wgpu turns that into a panic).
                (p.new_frame.get() || every_frame)
                    && p.session.is_some()
                    && p.video.video_width() > 0
                    && p.video.ready_state() >= 2
            })
            .collect();
        waiting.sort_by(|&a, &b| self.panels[a].uploaded_at.total_cmp(&self.panels[b].uploaded_at));
        waiting.truncate(self.budget.allowed());
        let Some(g) = (if xr { self.xr_gfx.as_mut().or(self.gfx.as_mut()) } else { self.gfx.as_mut() }) else {
            return false;
        };
        let now = now_ms();
        let mut uploaded = 0;
        for &i in &waiting {
            let p = &mut self.panels[i];
            let grabbed = p.grabbed.borrow_mut().take();
            let source = match grabbed {
                // WebGPU copies straight from the video (no blocking there; ImageBitmap sources
                // were seen to make Chromium's copyExternalImageToTexture throw).
                Some(bitmap) if g.backend == Backend::WebGpu => {
                    bitmap.close();
                    wgpu::ExternalImageSource::HTMLVideoElement(p.video.clone())
                }
                Some(bitmap) => wgpu::ExternalImageSource::ImageBitmap(bitmap),
                // `?upload=video`, or a new device that needs the current picture again.
                None => wgpu::ExternalImageSource::HTMLVideoElement(p.video.clone()),
            };
            let (w, h) = (source.width(), source.height());
            p.new_frame.set(false);
            p.uploaded_at = now;
            p.uploads += 1;
            let texture = g.renderer.texture(&g.device, Tex::Video(i), w, h).clone();
            g.queue.copy_external_image_to_texture(
                &wgpu::CopyExternalImageSourceInfo {
                    source: source.clone(),
                    origin: wgpu::Origin2d::ZERO,
                    flip_y: false,
                },
                wgpu::CopyExternalImageDestInfo {
                    texture: &texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                    color_space: wgpu::PredefinedColorSpace::Srgb,
                    premultiplied_alpha: false,
                },
                wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
            );
            if let wgpu::ExternalImageSource::ImageBitmap(b) = source {
                // The copy runs at the next submit: close the bitmap after that.
                self.used_bitmaps.push(b);
            }
            p.has_video = true;
            uploaded += 1;
        }
        self.uploads_this_frame = uploaded;
        uploaded > 0
    }

    fn scene(&self) -> SceneInput {
        let panels = self
            .panels
            .iter()
            .zip(&self.layout)
            .map(|(p, panel)| PanelView {
                panel: *panel,
                state: p.state,
                focused: false,
                has_video: p.has_video,
                label_aspect: Some(LABEL_W as f32 / LABEL_H as f32),
                hud_aspect: (self.hud && !p.hud.is_empty()).then_some(LABEL_W as f32 / LABEL_H as f32),
            })
            .enumerate()
            .map(|(i, mut v)| {
                v.focused = self.focus == Some(i);
                v
            })
            .collect();
        SceneInput { panels, pointers: self.pointers.clone(), floor_center: self.origin.eye }
    }

    fn frame_flat(&mut self) {
        let t0 = now_ms();
        if self.upload_videos(false) {
            self.redraw = true;
        }
        let Some((cw, ch)) =
            self.gfx.as_ref().map(|g| (g.canvas.client_width().max(1), g.canvas.client_height().max(1)))
        else {
            return;
        };
        if !self.flat.user_moved {
            let points: Vec<Vec3> = self.layout.iter().flat_map(|p| p.corners()).collect();
            if !points.is_empty() {
                self.flat.camera = FlatCamera::fit(self.origin.eye, self.origin.yaw_rad, &points, cw as f32, ch as f32);
            }
        }
        let camera = self.flat.camera;
        let dpr = window().device_pixel_ratio().clamp(1.0, 2.0);
        let size = ((cw as f64 * dpr).round() as u32, (ch as f64 * dpr).round() as u32);
        if self.gfx.as_ref().is_some_and(|g| g.size() != size) {
            self.redraw = true;
        }
        if !std::mem::take(&mut self.redraw) {
            return;
        }
        let quads = scene::build(&self.scene());
        let Some(g) = self.gfx.as_mut() else { return };
        g.resize(size.0, size.1);
        let (w, h) = g.size();
        let view = View { view_proj: camera.view_proj(w as f32, h as f32), viewport: [0.0, 0.0, w as f32, h as f32] };
        let t1 = now_ms();
        if let Err(e) = g.draw_to_canvas(&[view], &quads) {
            web_sys::console::warn_1(&e.into());
        }
        self.budget.record(self.uploads_this_frame, now_ms() - t1);
        self.account(now_ms() - t0);
    }

    fn account(&mut self, ms: f64) {
        for b in self.used_bitmaps.drain(..) {
            b.close();
        }
        self.frames += 1;
        // Exponential moving average over ~60 frames.
        self.frame_ms = if self.frames == 1 { ms } else { self.frame_ms + (ms - self.frame_ms) / 60.0 };
        if self.frame_times.len() == FRAME_HISTORY {
            self.frame_times.pop_front();
        }
        self.frame_times.push_back(ms);
    }

    // ------------------------------------------------------------------ flat-view input

    fn flat_ray(&self, point: Vec2) -> Option<(Vec3, Vec3)> {
        let g = self.gfx.as_ref()?;
        let (cw, ch) = (g.canvas.client_width() as f32, g.canvas.client_height() as f32);
        (cw > 0.0 && ch > 0.0).then(|| self.flat.camera.ray(point, cw, ch))
    }

    /// The panel and desktop pixel under a canvas point; with `captured`, that panel's plane
    /// (clamped to its edges) whether or not the point is over it.
    fn flat_target(&self, point: Vec2, captured: Option<usize>) -> Option<(usize, u32, u32, Vec3, Vec3)> {
        let (o, d) = self.flat_ray(point)?;
        let (i, hit) = match captured {
            Some(i) => (i, self.layout.get(i)?.intersect_plane(o, d)?),
            None => pick(&self.layout, o, d)?,
        };
        let (w, h) = self.panels[i].desktop_size();
        let (x, y) = desktop_pixel(hit.u, hit.v, w, h);
        Some((i, x, y, hit.point, self.layout[i].normal()))
    }

    fn mouse_move(&mut self, point: Vec2) {
        self.flat.mouse = Some(point);
        self.redraw = true;
        if let Some(start) = self.flat.dragging {
            let h = self.gfx.as_ref().map(|g| g.canvas.client_height() as f32).unwrap_or(1.0);
            let delta = point - start;
            self.flat.camera.drag(delta.x, delta.y, h);
            self.flat.user_moved = true;
            self.flat.dragging = Some(point);
            return;
        }
        let target = self.flat_target(point, self.flat.captured);
        self.pointers.clear();
        if let Some((i, x, y, at, n)) = target {
            let mask = self.flat.mask;
            self.panels[i].send(InputMessage::Pointer { x, y, buttons: mask });
            self.pointers.push(Pointer { origin: at, end: at, hit: Some((at, n)), pressed: mask != 0, beam: false });
        }
    }

    fn mouse_button(&mut self, point: Vec2, button: i16, down: bool) {
        self.redraw = true;
        let bit = match button {
            0 => buttons::LEFT,
            1 => buttons::MIDDLE,
            2 => buttons::RIGHT,
            _ => return,
        };
        if down {
            match self.flat_target(point, self.flat.captured) {
                Some((i, x, y, ..)) => {
                    self.set_focus(Some(i));
                    self.flat.captured = Some(i);
                    self.flat.mask |= bit;
                    self.panels[i].send(InputMessage::Pointer { x, y, buttons: self.flat.mask });
                }
                None if self.flat.captured.is_none() => self.flat.dragging = Some(point),
                None => {}
            }
        } else {
            self.flat.dragging = None;
            if let Some(i) = self.flat.captured {
                self.flat.mask &= !bit;
                let (x, y) = self
                    .flat_target(point, Some(i))
                    .map(|(_, x, y, ..)| (x, y))
                    .or(self.panels[i].last_pointer.map(|(x, y, _)| (x, y)))
                    .unwrap_or((0, 0));
                self.panels[i].send(InputMessage::Pointer { x, y, buttons: self.flat.mask });
                if self.flat.mask == 0 {
                    self.flat.captured = None;
                }
            }
        }
    }

    fn wheel(&mut self, point: Vec2, delta_y: f64) -> bool {
        let Some((i, x, y, ..)) = self.flat_target(point, self.flat.captured) else { return false };
        let bit = if delta_y < 0.0 { buttons::WHEEL_UP } else { buttons::WHEEL_DOWN };
        let mask = self.flat.mask;
        self.panels[i].send(InputMessage::Pointer { x, y, buttons: mask | bit });
        self.panels[i].send(InputMessage::Pointer { x, y, buttons: mask });
        true
    }

    fn key(&mut self, ev: &KeyboardEvent, down: bool) -> bool {
        let Some(i) = self.focus else { return false };
        let Some(sym) = keysym(&ev.key(), &ev.code()) else { return false };
        self.panels[i].send(InputMessage::Key { keysym: sym, down });
        true
    }

    // ------------------------------------------------------------------ WebXR

    fn frame_xr(&mut self, frame: &XrFrame) {
        let t0 = now_ms();
        let Some(xr) = self.xr.as_ref() else { return };
        let (space, layer) = (xr.space.clone(), xr.layer.clone());
        let Some(pose) = frame.get_viewer_pose(&space) else { return };
        let head = pose.transform();
        let head_pos = point3(&head.position());
        let head_rot = quat(&head.orientation());
        if !self.xr.as_ref().is_some_and(|x| x.recentred) {
            self.origin = WallOrigin::facing(head_pos, head_rot);
            self.relayout();
            if let Some(x) = self.xr.as_mut() {
                x.recentred = true;
            }
        }
        self.xr_input(frame, &space, head_pos, head_rot);
        self.upload_videos(true);
        let quads = scene::build(&self.scene());

        let fb = layer.framebuffer();
        let (fw, fh) = (layer.framebuffer_width(), layer.framebuffer_height());
        let flip = if fb.is_some() { flip_y() } else { Mat4::IDENTITY };
        let mut views = Vec::new();
        for v in pose.views().iter() {
            let v: web_sys::XrView = v.unchecked_into();
            let Some(vp) = layer.get_viewport(&v) else { continue };
            let proj = Mat4::from_cols_slice(&v.projection_matrix());
            let view = Mat4::from_cols_slice(&v.transform().inverse().matrix());
            // XR viewports count y from the bottom; wgpu's from the top of the target.
            let y = if fb.is_some() { vp.y() } else { fh as i32 - vp.y() - vp.height() };
            views.push(View {
                view_proj: flip * gl_to_wgpu_depth() * proj * view,
                viewport: [vp.x() as f32, y as f32, vp.width() as f32, vp.height() as f32],
            });
        }
        let Some(g) = self.xr_gfx.as_mut().or(self.gfx.as_mut()) else { return };
        match fb {
            Some(fb) => {
                let texture = g.wrap_xr_framebuffer(fb, fw, fh);
                let target = texture.create_view(&Default::default());
                let t1 = now_ms();
                g.draw(&target, &views, &quads);
                self.budget.record(self.uploads_this_frame, now_ms() - t1);
            }
            None => {
                // No opaque framebuffer (an emulator): the layer is the canvas itself.
                g.resize(fw, fh);
                let t1 = now_ms();
                if let Err(e) = g.draw_to_canvas(&views, &quads) {
                    web_sys::console::warn_1(&e.into());
                }
                self.budget.record(self.uploads_this_frame, now_ms() - t1);
            }
        }
        self.account(now_ms() - t0);
    }

    fn xr_input(&mut self, frame: &XrFrame, space: &XrReferenceSpace, head_pos: Vec3, head_rot: Quat) {
        let Some(xr) = self.xr.as_mut() else { return };
        let sources = xr.session.input_sources();
        let now = Duration::from_secs_f64(now_ms() / 1000.0);
        let mut pointers = Vec::new();
        let mut sends: Vec<(usize, InputMessage)> = Vec::new();
        let mut focus = None;
        let (mut toggle_hud, mut recentre) = (false, false);
        let mut seen = [false; 2];
        for k in 0..sources.length() {
            let Some(src) = sources.get(k) else { continue };
            let slot = match src.handedness() {
                web_sys::XrHandedness::Left => 0,
                _ => 1,
            };
            if src.target_ray_mode() != web_sys::XrTargetRayMode::TrackedPointer {
                continue;
            }
            let Some(pose) = frame.get_pose(&src.target_ray_space(), space) else { continue };
            seen[slot] = true;
            let t = pose.transform();
            let origin = point3(&t.position());
            let dir = quat(&t.orientation()) * Vec3::NEG_Z;
            let pad = src.gamepad().map(|g| gamepad_state(&g)).unwrap_or_default();
            let hand = &mut xr.hands[slot];
            let target = match hand.captured {
                Some(i) => self.layout.get(i).and_then(|p| p.intersect_plane(origin, dir)).map(|h| (i, h)),
                None => pick(&self.layout, origin, dir),
            };
            let masks = hand.buttons.update(now, pad.0);
            if pad.1 && !hand.hud_button {
                toggle_hud = true;
            }
            if pad.2 && !hand.recentre_button {
                recentre = true;
            }
            hand.hud_button = pad.1;
            hand.recentre_button = pad.2;
            match target {
                Some((i, hit)) => {
                    let (w, h) = self.panels[i].desktop_size();
                    let (x, y) = desktop_pixel(hit.u, hit.v, w, h);
                    if hand.hover != Some(i) && hand.captured.is_none() {
                        hand.hover = Some(i);
                    }
                    sends.push((i, InputMessage::Pointer { x, y, buttons: hand.buttons.mask() & !0x18 }));
                    for m in &masks {
                        sends.push((i, InputMessage::Pointer { x, y, buttons: *m }));
                    }
                    if !masks.is_empty() && hand.buttons.mask() & buttons::LEFT != 0 {
                        focus = Some(i);
                    }
                    hand.captured = (hand.buttons.mask() != 0).then_some(i);
                    let n = self.layout[i].normal();
                    let on_panel = (0.0..=1.0).contains(&hit.u) && (0.0..=1.0).contains(&hit.v);
                    pointers.push(Pointer {
                        origin,
                        end: hit.point,
                        hit: on_panel.then_some((hit.point, n)),
                        pressed: hand.buttons.mask() != 0,
                        beam: true,
                    });
                }
                None => {
                    hand.hover = None;
                    if hand.buttons.mask() == 0 {
                        hand.captured = None;
                    }
                    pointers.push(Pointer {
                        origin,
                        end: origin + dir * LASER_REACH_M,
                        hit: None,
                        pressed: hand.buttons.mask() != 0,
                        beam: true,
                    });
                }
            }
        }
        // A controller that went away releases what it held.
        for (slot, hand) in xr.hands.iter_mut().enumerate() {
            if !seen[slot] {
                if let (Some(i), Some(m)) = (hand.captured, hand.buttons.release_all()) {
                    if let Some((x, y, _)) = self.panels[i].last_pointer {
                        sends.push((i, InputMessage::Pointer { x, y, buttons: m }));
                    }
                }
                hand.captured = None;
            }
        }
        for (i, msg) in sends {
            self.panels[i].send(msg);
        }
        if focus.is_some() {
            self.set_focus(focus);
        }
        self.pointers = pointers;
        if toggle_hud {
            self.hud = !self.hud;
            self.update_labels();
        }
        if recentre {
            self.origin = WallOrigin::facing(head_pos, head_rot);
            self.relayout();
        }
    }

    // ------------------------------------------------------------------ the hook

    fn snapshot(&self) -> JsValue {
        let panels: Vec<serde_json::Value> = self
            .panels
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let corners: Vec<serde_json::Value> = self
                    .layout
                    .get(i)
                    .map(|l| l.corners().iter().map(|c| serde_json::json!({"x": c.x, "y": c.y, "z": c.z})).collect())
                    .unwrap_or_default();
                serde_json::json!({
                    "name": p.desktop.name,
                    "whep": p.desktop.whep,
                    "state": p.state.as_str(),
                    "framesDecoded": p.stats.frames_decoded,
                    "framesPresented": p.frames_presented.get(),
                    "framesUploaded": p.uploads,
                    "videoWidth": p.video.video_width(),
                    "videoHeight": p.video.video_height(),
                    "fps": p.stats.fps,
                    "kbps": p.kbps,
                    "rttMs": p.stats.rtt_ms,
                    "attempts": p.attempts,
                    "error": p.error,
                    "inputOpen": p.session.as_ref().is_some_and(|s| s.input_open()),
                    "corners": corners,
                })
            })
            .collect();
        let backend = self.gfx.as_ref().map(|g| g.backend.as_str());
        let value = serde_json::json!({
            "panels": panels,
            "xr": {
                "supported": self.xr_supported,
                "active": self.xr.is_some(),
                "backend": self.xr.as_ref().map(|_| self.xr_gfx.as_ref().or(self.gfx.as_ref()).map(|g| g.backend.as_str())),
            },
            "focus": self.focus,
            "error": self.error,
            "hud": self.hud,
            "backend": backend,
            "frameMs": self.frame_ms,
            "frameMsP50": percentile(&self.frame_times, 0.5),
            "frameMsP95": percentile(&self.frame_times, 0.95),
            "uploadMs": self.budget.per_upload_ms(),
            "uploadsPerFrame": self.budget.allowed(),
            "allLiveAtMs": self.all_live_at,
            "frames": self.frames,
            "allLiveMs": self.all_live_at.map(|t| t - self.started_at),
        });
        js_sys::JSON::parse(&value.to_string()).unwrap_or(JsValue::NULL)
    }

    /// Viewport CSS pixels of point (u, v) of panel `i` in the flat view.
    fn screen_point(&self, i: usize, u: f32, v: f32) -> Option<(f64, f64)> {
        let g = self.gfx.as_ref()?;
        let c = self.layout.get(i)?.corners();
        let world = c[0] + (c[1] - c[0]) * u + (c[3] - c[0]) * v;
        let (cw, ch) = (g.canvas.client_width() as f32, g.canvas.client_height() as f32);
        let s = self.flat.camera.project(world, cw, ch)?;
        if s.x < 0.0 || s.y < 0.0 || s.x > cw || s.y > ch {
            return None;
        }
        let rect = g.canvas.get_bounding_client_rect();
        Some((rect.left() + s.x as f64, rect.top() + s.y as f64))
    }
}

fn percentile(values: &std::collections::VecDeque<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().collect();
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() - 1) as f64 * q).round() as usize])
}

fn point3(p: &web_sys::DomPointReadOnly) -> Vec3 {
    Vec3::new(p.x() as f32, p.y() as f32, p.z() as f32)
}

fn quat(p: &web_sys::DomPointReadOnly) -> Quat {
    Quat::from_xyzw(p.x() as f32, p.y() as f32, p.z() as f32, p.w() as f32).normalize()
}

/// Trigger, squeeze and thumbstick (xr-standard mapping), plus the A/X (HUD) and B/Y
/// (recentre) buttons.
fn gamepad_state(g: &web_sys::Gamepad) -> (GamepadState, bool, bool) {
    let buttons = g.buttons();
    let value = |k: u32| -> f32 {
        let b = buttons.get(k);
        if b.is_undefined() {
            return 0.0;
        }
        b.unchecked_into::<web_sys::GamepadButton>().value() as f32
    };
    let axes = g.axes();
    let thumb_y = axes.get(3).as_f64().unwrap_or(0.0) as f32;
    (GamepadState { trigger: value(0), squeeze: value(1), thumbstick_y: thumb_y }, value(4) > 0.5, value(5) > 0.5)
}

// ---------------------------------------------------------------------- start-up

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    spawn_local(async {
        if let Err(e) = run().await {
            web_sys::console::error_1(&e.clone().into());
            show_error(&e);
        }
    });
}

fn show_error(message: &str) {
    if let Some(el) = document().get_element_by_id("loco-error") {
        el.set_text_content(Some(message));
        let _ = el.remove_attribute("hidden");
    }
}

/// Where the desktop list comes from: `?config=URL`, else `desktops.json` beside the page.
fn config_url() -> (String, String) {
    let href = window().location().href().unwrap_or_default();
    let url = web_sys::Url::new(&href).ok();
    let from_query = url.as_ref().and_then(|u| u.search_params().get("config"));
    let rel = from_query.unwrap_or_else(|| "desktops.json".into());
    let abs = web_sys::Url::new_with_base(&rel, &href).map(|u| u.href()).unwrap_or(rel);
    (abs, href)
}

async fn load_config(url: &str) -> Result<Config, String> {
    let init = web_sys::RequestInit::new();
    init.set_cache(web_sys::RequestCache::NoStore);
    let res = util::fetch(url, &init, 10_000).await.map_err(|e| format!("Cannot load the desktop list: {e}"))?;
    if !res.ok() {
        return Err(format!("Cannot load the desktop list {url}: HTTP {} {}", res.status(), res.status_text()));
    }
    let text = JsFuture::from(res.text().map_err(|e| js_error(&e))?)
        .await
        .map_err(|e| format!("Cannot read the desktop list {url}: {}", js_error(&e)))?
        .as_string()
        .unwrap_or_default();
    Config::parse(&text).map_err(|e| format!("The desktop list {url} is not usable: {e}"))
}

fn query_param(name: &str) -> Option<String> {
    let href = window().location().href().ok()?;
    web_sys::Url::new(&href).ok()?.search_params().get(name)
}

/// WebGPU for the flat view when the browser offers a hardware adapter. A software one
/// (SwiftShader, or `isFallbackAdapter`) is passed over for WebGL2: in headless Chromium its
/// device was lost within a second every time ("A valid external Instance reference no longer
/// exists"). `?backend=webgpu` still forces it (a lost device then falls back by itself).
async fn webgpu_usable() -> bool {
    let gpu = js_sys::Reflect::get(&window().navigator(), &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return false;
    }
    let Ok(request) = js_sys::Reflect::get(&gpu, &"requestAdapter".into()) else { return false };
    let Ok(f) = request.dyn_into::<js_sys::Function>() else { return false };
    let Ok(p) = f.call0(&gpu) else { return false };
    let Ok(p) = p.dyn_into::<js_sys::Promise>() else { return false };
    let adapter = match JsFuture::from(p).await {
        Ok(a) if !a.is_null() && !a.is_undefined() => a,
        _ => return false,
    };
    let info = js_sys::Reflect::get(&adapter, &"info".into()).unwrap_or(JsValue::UNDEFINED);
    let fallback = js_sys::Reflect::get(&adapter, &"isFallbackAdapter".into()).ok().and_then(|v| v.as_bool())
        == Some(true)
        || js_sys::Reflect::get(&info, &"isFallbackAdapter".into()).ok().and_then(|v| v.as_bool()) == Some(true);
    let software = ["vendor", "architecture", "description"]
        .iter()
        .filter_map(|k| util::text(&info, k))
        .any(|v| v.to_ascii_lowercase().contains("swiftshader"));
    !fallback && !software
}

async fn run() -> Result<(), String> {
    let doc = document();
    let canvas: HtmlCanvasElement = doc
        .get_element_by_id("loco-canvas")
        .ok_or("the page has no #loco-canvas")?
        .dyn_into()
        .map_err(|_| "#loco-canvas is not a canvas")?;
    let label_canvas: HtmlCanvasElement = doc.create_element("canvas").map_err(|e| js_error(&e))?.unchecked_into();
    label_canvas.set_width(LABEL_W);
    label_canvas.set_height(LABEL_H);
    let ctx_opts = js_sys::Object::new();
    set(&ctx_opts, "willReadFrequently", true);
    let label_ctx = label_canvas
        .get_context_with_context_options("2d", &ctx_opts)
        .ok()
        .flatten()
        .map(|c| c.unchecked_into::<CanvasRenderingContext2d>());

    let shared: Shared = Rc::new(RefCell::new(App {
        config: None,
        base_url: String::new(),
        error: None,
        panels: Vec::new(),
        wall: WallConfig::default(),
        origin: WallOrigin::default(),
        layout: Vec::new(),
        focus: None,
        hud: query_param("hud").is_some_and(|v| v != "0"),
        flat: Flat {
            camera: FlatCamera::behind(WallOrigin::default().eye, 0.0),
            mouse: None,
            mask: 0,
            captured: None,
            dragging: None,
            user_moved: false,
        },
        xr: None,
        gfx: None,
        xr_gfx: None,
        xr_supported: false,
        recovering: false,
        uploads_this_frame: 0,
        budget: crate::budget::UploadBudget::new(FRAME_BUDGET_MS),
        used_bitmaps: Vec::new(),
        label_ctx,
        redraw: true,
        frame_ms: 0.0,
        frame_times: std::collections::VecDeque::with_capacity(FRAME_HISTORY),
        frames: 0,
        started_at: now_ms(),
        all_live_at: None,
        pointers: Vec::new(),
    }));
    install_hook(&shared);

    UPLOAD_FROM_VIDEO.with(|f| f.set(query_param("upload").as_deref() == Some("video")));
    // The device first: a page that cannot draw says so even before the config loads.
    let wanted = query_param("backend");
    let backend = match wanted.as_deref() {
        Some("webgl2") => Backend::WebGl2,
        Some("webgpu") => Backend::WebGpu,
        _ if webgpu_usable().await => Backend::WebGpu,
        _ => Backend::WebGl2,
    };
    let gfx = match Gfx::new(canvas.clone(), backend).await {
        Ok(g) => g,
        Err(e) if backend == Backend::WebGpu => {
            web_sys::console::warn_1(&format!("loco: WebGPU failed ({e}); using WebGL2").into());
            Gfx::new(fresh_canvas(&canvas)?, Backend::WebGl2).await?
        }
        Err(e) => return Err(e),
    };
    shared.borrow_mut().gfx = Some(gfx);
    install_input(&shared);
    start_flat_loop(&shared);
    setup_xr_button(&shared);

    let (url, href) = config_url();
    let config = match load_config(&url).await {
        Ok(c) => c,
        Err(e) => {
            shared.borrow_mut().set_error(e);
            return Ok(());
        }
    };
    let videos = doc.get_element_by_id("loco-videos").ok_or("the page has no #loco-videos")?;
    {
        let mut app = shared.borrow_mut();
        app.base_url = href;
        for desktop in &config.desktops {
            let video: HtmlVideoElement = doc.create_element("video").map_err(|e| js_error(&e))?.unchecked_into();
            video.set_muted(true);
            video.set_attribute("playsinline", "").ok();
            video.set_attribute("aria-label", &format!("video of {}", desktop.name)).ok();
            videos.append_child(&video).map_err(|e| js_error(&e))?;
            let new_frame = Rc::new(Cell::new(false));
            let frames_presented = Rc::new(Cell::new(0));
            let grabbed: Grabbed = Rc::new(RefCell::new(None));
            let frame_cb = watch_frames(&video, new_frame.clone(), grabbed.clone(), frames_presented.clone());
            let whep_url =
                web_sys::Url::new_with_base(&desktop.whep, &app.base_url).map(|u| u.href()).unwrap_or_default();
            app.panels.push(PanelRt {
                desktop: desktop.clone(),
                whep_url,
                video,
                state: StreamState::Connecting,
                session: None,
                generation: 0,
                connecting: false,
                attempts: 0,
                backoff_ms: 0.0,
                retry_at: 0.0,
                since: now_ms(),
                disconnected_since: None,
                error: None,
                new_frame,
                grabbed,
                frames_presented,
                has_video: false,
                uploaded_at: 0.0,
                uploads: 0,
                video_size: (0, 0),
                stats: Default::default(),
                stats_at: 0.0,
                kbps: 0.0,
                stats_pending: false,
                heard_at: 0.0,
                probing: false,
                label: String::new(),
                hud: String::new(),
                last_pointer: None,
                _frame_cb: frame_cb,
            });
        }
        app.config = Some(config);
        app.relayout();
    }
    let tick_shared = shared.clone();
    let tick = Closure::<dyn FnMut()>::new(move || {
        if let Ok(mut app) = tick_shared.try_borrow_mut() {
            app.tick(&tick_shared);
        }
    });
    tick_shared_now(&shared);
    window()
        .set_interval_with_callback_and_timeout_and_arguments_0(tick.as_ref().unchecked_ref(), 250)
        .map_err(|e| js_error(&e))?;
    tick.forget();
    // End sessions when the page goes away, so agents free them at once.
    let unload_shared = shared.clone();
    let unload = Closure::<dyn FnMut()>::new(move || {
        if let Ok(mut app) = unload_shared.try_borrow_mut() {
            for p in &mut app.panels {
                if let Some(s) = p.session.take() {
                    s.close();
                }
            }
        }
    });
    window().add_event_listener_with_callback("pagehide", unload.as_ref().unchecked_ref()).ok();
    unload.forget();
    Ok(())
}

/// Replaces `old` with a new, context-less canvas of the same id and attributes (a canvas that
/// had a WebGPU context cannot get a WebGL2 one).
fn fresh_canvas(old: &HtmlCanvasElement) -> Result<HtmlCanvasElement, String> {
    let fresh: HtmlCanvasElement = document().create_element("canvas").map_err(|e| js_error(&e))?.unchecked_into();
    for attr in ["id", "class", "tabindex", "aria-label"] {
        if let Some(v) = old.get_attribute(attr) {
            fresh.set_attribute(attr, &v).ok();
        }
    }
    old.replace_with_with_node_1(&fresh).map_err(|e| js_error(&e))?;
    Ok(fresh)
}

/// The flat view's device was lost: start over with WebGL2 on a fresh canvas; captions and
/// video frames are uploaded again.
async fn recover(shared: Shared) {
    let old = shared.borrow_mut().gfx.take();
    let canvas = match old.as_ref().map(|g| fresh_canvas(&g.canvas)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            shared.borrow_mut().set_error(format!("The graphics device was lost and could not be replaced: {e}"));
            return;
        }
        None => return,
    };
    drop(old);
    let result = Gfx::new(canvas, Backend::WebGl2).await;
    let mut app = shared.borrow_mut();
    app.recovering = false;
    match result {
        Ok(g) => {
            web_sys::console::warn_1(&"loco: drawing with WebGL2 after the device loss".into());
            app.gfx = Some(g);
            app.redraw = true;
            app.redraw_labels();
        }
        Err(e) => app.set_error(format!("The graphics device was lost and could not be replaced: {e}")),
    }
}

fn tick_shared_now(shared: &Shared) {
    if let Ok(mut app) = shared.try_borrow_mut() {
        app.tick(shared);
    }
}

/// Marks `new_frame` on every decoded frame the video presents.
/// Marks `new_frame` on every decoded frame the video presents. Unless `?upload=video`, the
/// frame is first grabbed with `createImageBitmap` (the browser converts it off the render
/// loop) and `new_frame` is set once the bitmap is ready: copying from the `<video>` itself
/// was measured to block the render loop for 90 ms to seconds per frame in Chromium with
/// software decoding and SwiftShader.
fn watch_frames(
    video: &HtmlVideoElement,
    new_frame: Rc<Cell<bool>>,
    grabbed: Grabbed,
    presented: Rc<Cell<u32>>,
) -> Looping<dyn FnMut(f64, JsValue)> {
    let slot: Looping<dyn FnMut(f64, JsValue)> = Rc::new(RefCell::new(None));
    let again = slot.clone();
    let v = video.clone();
    let grabbing = Rc::new(Cell::new(false));
    *slot.borrow_mut() = Some(Closure::new(move |_now: f64, meta: JsValue| {
        let n = util::num(&meta, "presentedFrames").map(|n| n as u32).unwrap_or(presented.get() + 1);
        presented.set(n);
        if UPLOAD_FROM_VIDEO.with(|f| f.get()) {
            new_frame.set(true);
        } else if !grabbing.get() {
            if let Ok(promise) = window().create_image_bitmap_with_html_video_element(&v) {
                grabbing.set(true);
                let (grabbing, grabbed, new_frame) = (grabbing.clone(), grabbed.clone(), new_frame.clone());
                spawn_local(async move {
                    if let Ok(bitmap) = JsFuture::from(promise).await {
                        if let Some(old) = grabbed.borrow_mut().replace(bitmap.unchecked_into()) {
                            old.close();
                        }
                        new_frame.set(true);
                    }
                    grabbing.set(false);
                });
            }
        }
        if let Some(cb) = again.borrow().as_ref() {
            request_video_frame(&v, cb.as_ref().unchecked_ref());
        }
    }));
    if let Some(cb) = slot.borrow().as_ref() {
        if request_video_frame(video, cb.as_ref().unchecked_ref()) < 0 {
            // No frame callbacks in this browser: upload from the video on every drawn frame.
            NO_FRAME_CALLBACKS.with(|f| f.set(true));
            UPLOAD_FROM_VIDEO.with(|f| f.set(true));
        }
    }
    slot
}

fn start_flat_loop(shared: &Shared) {
    let slot: Looping<dyn FnMut(f64)> = Rc::new(RefCell::new(None));
    let again = slot.clone();
    let s = shared.clone();
    *slot.borrow_mut() = Some(Closure::new(move |_t: f64| {
        let in_xr = match s.try_borrow_mut() {
            Ok(mut app) => {
                if app.xr.is_none() {
                    app.frame_flat();
                }
                app.xr.is_some()
            }
            Err(_) => false,
        };
        if in_xr {
            // The XR session drives frames now; `end` restarts this loop.
            again.borrow_mut().take();
            return;
        }
        if let Some(cb) = again.borrow().as_ref() {
            let _ = window().request_animation_frame(cb.as_ref().unchecked_ref());
        }
    }));
    if let Some(cb) = slot.borrow().as_ref() {
        let _ = window().request_animation_frame(cb.as_ref().unchecked_ref());
    };
}

fn install_hook(shared: &Shared) {
    let s = shared.clone();
    let getter = Closure::<dyn Fn() -> JsValue>::new(move || {
        let snap = match s.try_borrow() {
            Ok(app) => app.snapshot(),
            Err(_) => return JsValue::NULL,
        };
        let s2 = s.clone();
        let screen_point = Closure::<dyn Fn(f64, f64, f64) -> JsValue>::new(move |i: f64, u: f64, v: f64| {
            let Ok(app) = s2.try_borrow() else { return JsValue::NULL };
            match app.screen_point(i as usize, u as f32, v as f32) {
                Some((x, y)) => {
                    let o = js_sys::Object::new();
                    set(&o, "x", x);
                    set(&o, "y", y);
                    o.into()
                }
                None => JsValue::NULL,
            }
        });
        set(&snap, "screenPoint", screen_point.into_js_value());
        let s3 = s.clone();
        let capture_fn = Closure::<dyn Fn() -> js_sys::Promise>::new(move || {
            wasm_bindgen_futures::future_to_promise(capture(s3.clone()))
        });
        set(&snap, "capture", capture_fn.into_js_value());
        deep_freeze(&snap);
        snap
    });
    let desc = js_sys::Object::new();
    set(&desc, "get", getter.into_js_value());
    set(&desc, "configurable", false);
    set(&desc, "enumerable", true);
    js_sys::Object::define_property(&window(), &"__loco".into(), &desc);
}

/// `window.__loco.capture()`: the flat view as the renderer draws it now, read back from an
/// offscreen texture — `{width, height, data}` with `data` RGBA8 rows at the canvas's size.
async fn capture(shared: Shared) -> Result<JsValue, JsValue> {
    let (pending, size) = {
        let mut app = shared.try_borrow_mut().map_err(|_| JsValue::from_str("busy"))?;
        let quads = scene::build(&app.scene());
        let camera = app.flat.camera;
        let g = app.gfx.as_mut().ok_or("no device")?;
        let (w, h) = g.size();
        let view = View { view_proj: camera.view_proj(w as f32, h as f32), viewport: [0.0, 0.0, w as f32, h as f32] };
        (g.capture(&[view], &quads, w, h), (w, h))
    };
    let pixels = pending.finish().await.map_err(|e| JsValue::from_str(&e))?;
    let o = js_sys::Object::new();
    set(&o, "width", size.0);
    set(&o, "height", size.1);
    set(&o, "data", js_sys::Uint8Array::from(pixels.as_slice()));
    Ok(o.into())
}

fn deep_freeze(v: &JsValue) {
    if !v.is_object() {
        return;
    }
    let obj: &js_sys::Object = v.unchecked_ref();
    for key in js_sys::Object::keys(obj).iter() {
        if let Ok(child) = js_sys::Reflect::get(obj, &key) {
            if child.is_object() && !child.is_function() {
                deep_freeze(&child);
            }
        }
    }
    js_sys::Object::freeze(obj);
}

fn canvas_point(canvas: &HtmlCanvasElement, ev: &MouseEvent) -> Vec2 {
    let r = canvas.get_bounding_client_rect();
    Vec2::new((ev.client_x() - r.left()) as f32, (ev.client_y() - r.top()) as f32)
}

/// The scene's canvas (it may be replaced: a lost WebGPU device falls back to WebGL2 on a
/// fresh canvas).
fn scene_canvas() -> Option<HtmlCanvasElement> {
    document().get_element_by_id("loco-canvas").and_then(|e| e.dyn_into().ok())
}

/// Whether an event was aimed at the scene's canvas.
fn on_canvas(ev: &web_sys::Event) -> bool {
    ev.target().and_then(|t| t.dyn_into::<web_sys::Element>().ok()).is_some_and(|e| e.id() == "loco-canvas")
}

/// Mouse, wheel and keyboard input. Listeners sit on the window (the canvas may be replaced)
/// and look at events aimed at the canvas, plus moves and releases during a drag or capture.
fn install_input(shared: &Shared) {
    let listen = |target: &web_sys::EventTarget, name: &str, f: Box<dyn FnMut(web_sys::Event)>| {
        let cb = Closure::wrap(f);
        let opts = web_sys::AddEventListenerOptions::new();
        opts.set_passive(false);
        let _ = target.add_event_listener_with_callback_and_add_event_listener_options(
            name,
            cb.as_ref().unchecked_ref(),
            &opts,
        );
        cb.forget();
    };
    let win: web_sys::EventTarget = window().into();
    for (name, kind) in [("mousemove", 0), ("mousedown", 1), ("mouseup", 2)] {
        let s = shared.clone();
        listen(
            &win,
            name,
            Box::new(move |ev| {
                let Ok(mut app) = s.try_borrow_mut() else { return };
                if app.xr.is_some() {
                    return;
                }
                let held = app.flat.captured.is_some() || app.flat.dragging.is_some();
                if !(on_canvas(&ev) || (held && kind != 1)) {
                    return;
                }
                let Some(c) = scene_canvas() else { return };
                let ev: MouseEvent = ev.unchecked_into();
                let p = canvas_point(&c, &ev);
                match kind {
                    0 => app.mouse_move(p),
                    1 => {
                        ev.prevent_default();
                        let _ = c.focus();
                        // A click on the page also lets muted videos start where autoplay was refused.
                        for panel in &app.panels {
                            if panel.video.paused() && panel.session.is_some() {
                                let _ = panel.video.play();
                            }
                        }
                        app.mouse_button(p, ev.button(), true)
                    }
                    _ => app.mouse_button(p, ev.button(), false),
                }
            }),
        );
    }
    {
        let s = shared.clone();
        listen(
            &win,
            "wheel",
            Box::new(move |ev| {
                if !on_canvas(&ev) {
                    return;
                }
                let Some(c) = scene_canvas() else { return };
                let ev: WheelEvent = ev.unchecked_into();
                let Ok(mut app) = s.try_borrow_mut() else { return };
                if app.wheel(canvas_point(&c, &ev), ev.delta_y()) {
                    ev.prevent_default();
                } else {
                    // Zoom the flat view when not over a desktop.
                    let f = (app.flat.camera.fov_y_rad * (1.0 + ev.delta_y() as f32 * 0.001)).clamp(0.35, 1.6);
                    app.flat.camera.fov_y_rad = f;
                    app.flat.user_moved = true;
                    app.redraw = true;
                    ev.prevent_default();
                }
            }),
        );
    }
    listen(
        &win,
        "contextmenu",
        Box::new(|ev| {
            if on_canvas(&ev) {
                ev.prevent_default();
            }
        }),
    );
    for (name, down) in [("keydown", true), ("keyup", false)] {
        let s = shared.clone();
        listen(
            &window(),
            name,
            Box::new(move |ev| {
                let ev: KeyboardEvent = ev.unchecked_into();
                // Keys aimed at a page control (the Enter VR button) stay with it.
                if let Some(active) = document().active_element() {
                    let tag = active.tag_name().to_ascii_lowercase();
                    if matches!(tag.as_str(), "button" | "input" | "textarea" | "select") {
                        return;
                    }
                }
                let Ok(mut app) = s.try_borrow_mut() else { return };
                if app.key(&ev, down) {
                    ev.prevent_default();
                }
            }),
        );
    }
    // The flat view's buttons: Stats toggles the HUD, Recentre reframes the wall.
    type Action = fn(&mut App);
    let buttons: [(&str, Action); 2] = [
        ("toggle-hud", |app| {
            app.hud = !app.hud;
            app.update_labels();
        }),
        ("recentre", |app| {
            app.flat.user_moved = false;
            app.redraw = true;
        }),
    ];
    for (id, action) in buttons {
        if let Some(btn) = document().get_element_by_id(id) {
            let s = shared.clone();
            listen(
                &btn,
                "click",
                Box::new(move |_| {
                    if let Ok(mut app) = s.try_borrow_mut() {
                        action(&mut app);
                    }
                }),
            );
        }
    }
}

// ---------------------------------------------------------------------- WebXR session

fn setup_xr_button(shared: &Shared) {
    let Some(button) = document().get_element_by_id("enter-vr") else { return };
    let button: HtmlElement = button.unchecked_into();
    let s = shared.clone();
    let b = button.clone();
    spawn_local(async move {
        let xr = window().navigator().xr();
        let supported = match JsFuture::from(xr.is_session_supported(web_sys::XrSessionMode::ImmersiveVr)).await {
            Ok(v) => v.as_bool().unwrap_or(false),
            Err(_) => false,
        };
        s.borrow_mut().xr_supported = supported;
        if supported {
            let _ = b.remove_attribute("disabled");
            b.set_title("Enter the immersive view");
        } else {
            b.set_title("This browser or device has no immersive VR (WebXR)");
        }
    });
    let s = shared.clone();
    let click = Closure::<dyn FnMut()>::new(move || {
        let s = s.clone();
        spawn_local(async move {
            let active = s.borrow().xr.as_ref().map(|x| x.session.clone());
            if let Some(session) = active {
                let _ = session.end();
                return;
            }
            if let Err(e) = enter_xr(&s).await {
                s.borrow_mut().set_error(format!("Could not enter VR: {e}"));
            }
        });
    });
    button.set_onclick(Some(click.as_ref().unchecked_ref()));
    click.forget();
}

async fn enter_xr(shared: &Shared) -> Result<(), String> {
    let xr = window().navigator().xr();
    let init = web_sys::XrSessionInit::new();
    init.set_required_features(&[JsValue::from_str("local-floor")]);
    let session: XrSession =
        JsFuture::from(xr.request_session_with_options(web_sys::XrSessionMode::ImmersiveVr, &init))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
    // WebXR needs a WebGL2 device; the flat view may be on WebGPU.
    let needs_gl = shared.borrow().gfx.as_ref().is_none_or(|g| g.backend != Backend::WebGl2);
    if needs_gl && shared.borrow().xr_gfx.is_none() {
        let canvas: HtmlCanvasElement = document().create_element("canvas").map_err(|e| js_error(&e))?.unchecked_into();
        canvas.set_id("loco-xr-canvas");
        canvas.set_attribute("hidden", "").ok();
        document().body().ok_or("no body")?.append_child(&canvas).map_err(|e| js_error(&e))?;
        let g = Gfx::new(canvas, Backend::WebGl2).await.inspect_err(|_| {
            let _ = session.end();
        })?;
        let mut app = shared.borrow_mut();
        app.xr_gfx = Some(g);
        app.redraw_labels();
    }
    let gl = {
        let app = shared.borrow();
        let g = app.xr_gfx.as_ref().or(app.gfx.as_ref()).ok_or("no WebGL2 device")?;
        g.gl.clone().ok_or("no WebGL2 context")?
    };
    let layer = XrWebGlLayer::new_with_web_gl2_rendering_context(&session, &gl).map_err(|e| js_error(&e))?;
    let state = web_sys::XrRenderStateInit::new();
    state.set_base_layer(Some(&layer));
    session.update_render_state_with_state(&state);
    let space: XrReferenceSpace =
        JsFuture::from(session.request_reference_space(web_sys::XrReferenceSpaceType::LocalFloor))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
    {
        let mut app = shared.borrow_mut();
        app.xr = Some(Xr { session: session.clone(), space, layer, recentred: false, hands: Default::default() });
        app.pointers.clear();
        app.flat.captured = None;
        for p in &app.panels {
            p.new_frame.set(p.has_video);
        }
    }
    if let Some(b) = document().get_element_by_id("enter-vr") {
        b.set_text_content(Some("Exit VR"));
        b.set_attribute("aria-pressed", "true").ok();
    }
    // End of the session: back to the flat view.
    let s = shared.clone();
    let on_end = Closure::<dyn FnMut()>::new(move || {
        if let Ok(mut app) = s.try_borrow_mut() {
            app.xr = None;
            app.redraw = true;
            app.pointers.clear();
            for p in &app.panels {
                p.new_frame.set(p.has_video);
            }
        }
        if let Some(b) = document().get_element_by_id("enter-vr") {
            b.set_text_content(Some("Enter VR"));
            b.set_attribute("aria-pressed", "false").ok();
        }
        start_flat_loop(&s);
    });
    session.set_onend(Some(on_end.as_ref().unchecked_ref()));
    on_end.forget();

    let slot: Looping<dyn FnMut(f64, XrFrame)> = Rc::new(RefCell::new(None));
    let again = slot.clone();
    let s = shared.clone();
    *slot.borrow_mut() = Some(Closure::new(move |_t: f64, frame: XrFrame| {
        let session = frame.session();
        if let Ok(mut app) = s.try_borrow_mut() {
            if app.xr.as_ref().is_none_or(|x| x.session != session) {
                again.borrow_mut().take();
                return;
            }
            app.frame_xr(&frame);
        }
        if let Some(cb) = again.borrow().as_ref() {
            session.request_animation_frame(cb.as_ref().unchecked_ref());
        }
    }));
    if let Some(cb) = slot.borrow().as_ref() {
        session.request_animation_frame(cb.as_ref().unchecked_ref());
    };
    Ok(())
}
