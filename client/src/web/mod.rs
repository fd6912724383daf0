//! The page: config, panels and their WHEP sessions, the flat view and the WebXR session,
//! input, and the `window.__loco` hook.
//!
//! One `App` behind `Rc<RefCell<..>>`, driven by: a 250 ms tick (connections, statistics,
//! captions), the flat view's `requestAnimationFrame` or the XR session's, DOM input events,
//! and each video's `requestVideoFrameCallback` (which only marks the panel's texture stale).

mod attention;
mod audio;
mod boot;
mod check;
mod control;
mod dom;
mod flat;
mod gfx;
mod hook;
mod key;
mod labels;
mod links;
mod medialayers;
mod ui;
mod util;
mod video;
mod whep;
mod xr;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glam::Vec2;
use loco_shared::config::Config;
use loco_shared::layout::{layout, Panel, WallConfig, WallOrigin};
use loco_shared::protocol::InputMessage;
use wasm_bindgen::prelude::*;
use web_sys::{CanvasRenderingContext2d, HtmlVideoElement, XrReferenceSpace, XrSession, XrWebGlLayer};

use crate::camera::FlatCamera;
use crate::hook::FrameTimes;
use crate::link::Link;
use crate::pointer::{Hand, Mouse};
use crate::scene::{PanelView, Pointer, SceneInput};
use gfx::Gfx;
use util::document;
use video::Grabbed;

const STATS_EVERY_MS: f64 = 1000.0;
const DEFAULT_DESKTOP: (u32, u32) = (1024, 768);
/// Caption and HUD textures.
const LABEL_W: u32 = 1024;
const LABEL_H: u32 = 44;
/// Draw time a frame may spend on video uploads and drawing (a 90 Hz headset's frame).
const FRAME_BUDGET_MS: f64 = 11.0;
/// Frames whose CPU time the hook reports percentiles of.
const FRAME_HISTORY: usize = 600;

type Shared = Rc<RefCell<App>>;
/// A callback that re-registers itself (animation and video frame loops).
type Looping<F> = Rc<RefCell<Option<Closure<F>>>>;

/// A panel's connection and what the scene shows of it.
struct PanelRt {
    /// Its `token` is the page's key unless `own_token`.
    desktop: loco_shared::config::Desktop,
    /// `desktops.json` gave this desktop a token of its own.
    own_token: bool,
    /// `desktop.whep` resolved against the page's URL.
    whep_url: String,
    video: HtmlVideoElement,
    /// The connection's state machine; `session` is what it currently runs on.
    link: Link,
    session: Option<whep::Session>,
    /// Set by the video's frame callback: a new frame waits to be uploaded.
    new_frame: Rc<Cell<bool>>,
    grabbed: Grabbed,
    frames_presented: Rc<Cell<u32>>,
    has_video: bool,
    /// Its video is shown by a WebXR media layer this frame (not copied into its texture).
    through_layer: bool,
    /// When a frame of this panel was last copied into its texture, and how many were.
    uploaded_at: f64,
    uploads: u64,
    video_size: (u32, u32),
    stats: whep::VideoStats,
    stats_at: f64,
    kbps: f64,
    stats_pending: bool,
    label: String,
    hud: String,
    /// Last pointer message sent, to skip repeats.
    last_pointer: Option<(u32, u32, u8)>,
    /// The VM menu on its caption, and the agent's control URL (`…/control`).
    control: crate::control::Control,
    control_url: Option<String>,
    /// The agent answered `GET …/control` (Some(false): it has none; then it is asked again only
    /// when the menu opens).
    control_known: Option<bool>,
    status_pending: bool,
    status_at: f64,
    /// What the menu texture shows now.
    menu_text: String,
    /// Its attention (focused, visible, hidden) and what its agent was told.
    attention: attention::PanelAttention,
    /// The codec asked of the agent (`None`: its default; `?codec=`, or VP8 after a fallback).
    codec: Option<crate::decoder::Codec>,
    /// Watches this session's decoder; the once-a-minute fallback rule and the last reason.
    decoder: crate::decoder::DecoderWatch,
    fallback: crate::decoder::FallbackGate,
    fallback_reason: Option<String>,
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

struct Xr {
    session: XrSession,
    space: XrReferenceSpace,
    layer: XrWebGlLayer,
    recentred: bool,
    hands: [Hand; 2],
    /// What each hand's trigger pressed among the scene's controls (until released).
    ui_press: [Option<crate::scene::UiHit>; 2],
    /// Hand-tracking pinches (`selectstart` … `selectend`), by hand.
    select: Rc<[Cell<bool>; 2]>,
    /// The layer's and display's settings, and what the last frame drew into (for the hook).
    setup: xr::XrSetup,
    /// Media layers: `?layers=`, and the layers when in use.
    layers: medialayers::LayersState,
}

struct Flat {
    camera: FlatCamera,
    mouse: Option<Vec2>,
    /// Held buttons and the panel they captured.
    pointer: Mouse,
    dragging: Option<Vec2>,
    /// The user turned or zoomed the camera: stop re-framing the wall.
    user_moved: bool,
    /// Panel `i`'s menu item the mouse holds.
    menu_held: Option<usize>,
}

/// The scene's own controls: the keyboard, paste, pulled panels, messages.
struct Extras {
    keyboard: crate::keyboard::Keyboard,
    /// The keyboard texture was drawn with these modifier states.
    keyboard_drawn: Option<[crate::keyboard::Latch; 4]>,
    typist: crate::paste::Typist,
    /// A message shown for a while (`#loco-toast`), and since when.
    message: Option<(String, f64)>,
    arrangement: crate::arrange::Arrangement,
    double_tap: crate::arrange::DoubleTap,
    /// The last key events the page sent: (panel, keysym, down).
    key_log: std::collections::VecDeque<(usize, u32, bool)>,
    /// A 2D canvas for the menu and keyboard textures.
    big_ctx: Option<CanvasRenderingContext2d>,
}

struct App {
    /// This app itself (for requests started from input handlers).
    me: std::rc::Weak<RefCell<App>>,
    config: Option<Config>,
    /// The page's access key (`#key=…`, remembered, or typed into the key form).
    key: Option<String>,
    /// What the key form says while it shows.
    key_prompt: Option<String>,
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
    extras: Extras,
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
    /// The render loop's CPU time per frame, for the hook.
    frame_times: FrameTimes,
    started_at: f64,
    all_live_at: Option<f64>,
    pointers: Vec<Pointer>,
    /// The Web Audio graph and each panel's part of it (`panels[i]` ↔ `sound.panels[i]`).
    sound: audio::Sound,
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
        let names: Vec<&str> = self.panels.iter().map(|p| p.desktop.name.as_str()).collect();
        self.extras.arrangement.apply(&mut self.layout, &names, self.origin.eye);
        self.sound.place(&self.layout);
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
            self.sound.set_focus(focus);
            self.redraw = true;
        }
    }

    /// The caption gesture: panel `i`'s sound on or off.
    fn toggle_mute(&mut self, i: usize) {
        self.sound.toggle_mute(i);
        self.update_labels();
        self.redraw = true;
    }

    fn scene(&self) -> SceneInput {
        let panels = self
            .panels
            .iter()
            .zip(&self.layout)
            .map(|(p, panel)| PanelView {
                panel: *panel,
                state: p.link.state(),
                focused: false,
                has_video: p.has_video,
                through_layer: p.through_layer,
                label_aspect: Some(LABEL_W as f32 / LABEL_H as f32),
                hud_aspect: (self.hud && !p.hud.is_empty()).then_some(LABEL_W as f32 / LABEL_H as f32),
            })
            .enumerate()
            .map(|(i, mut v)| {
                v.focused = self.focus == Some(i);
                v
            })
            .collect();
        let menus =
            self.panels
                .iter()
                .enumerate()
                .filter(|(_, p)| p.control.open)
                .map(|(i, p)| crate::scene::MenuView {
                    panel: i,
                    progress: p.control.progress(util::now_ms()).and_then(|(item, f)| {
                        crate::control::MENU_ITEMS.iter().position(|m| *m == item).map(|k| (k, f))
                    }),
                })
                .collect();
        let grabbed = self.xr.iter().flat_map(|x| x.hands.iter()).filter_map(|h| h.grab.map(|g| g.panel)).collect();
        SceneInput {
            panels,
            pointers: self.pointers.clone(),
            floor_center: self.origin.eye,
            menus,
            keyboard: self.keyboard_view(),
            grabbed,
        }
    }
}

/// Uniform in `0..1`, for the links' backoff jitter.
fn random() -> f64 {
    js_sys::Math::random()
}
