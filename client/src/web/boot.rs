//! Start-up: the device, the desktop list, the panels and their timers; device-loss recovery.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use loco_shared::config::Config;
use loco_shared::layout::{WallConfig, WallOrigin};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, HtmlVideoElement};

use super::dom::install_input;
use super::flat::start_flat_loop;
use super::gfx::{Backend, Gfx};
use super::hook::install_hook;
use super::key::{install_key_form, page_key};
use super::util::{self, document, js_error, now_ms, set, window};
use super::video::{watch_frames, Grabbed, UPLOAD_FROM_VIDEO};
use super::xr::setup_xr_button;
use super::{App, Flat, PanelRt, Shared, FRAME_BUDGET_MS, FRAME_HISTORY, LABEL_H, LABEL_W};
use crate::access::bearer;
use crate::camera::FlatCamera;
use crate::hook::FrameTimes;
use crate::link::{health_url, Link};
use crate::pointer::Mouse;

thread_local! {
    /// The page's app once `run` made it (the check page reads it).
    pub(super) static APP: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    spawn_local(async {
        if let Err(e) = run().await {
            web_sys::console::error_1(&e.clone().into());
            show_error(&e);
        }
    });
    // `/check.html`: the same page plus the headset check (`web/check.rs`).
    if document().get_element_by_id("loco-check").is_some() {
        spawn_local(super::check::run());
    }
}

pub(super) fn show_error(message: &str) {
    if let Some(el) = document().get_element_by_id("loco-error") {
        el.set_text_content(Some(message));
        let _ = el.remove_attribute("hidden");
    }
}

/// Where the desktop list comes from: `?config=URL`, else `desktops.json` beside the page.
pub(super) fn config_url() -> (String, String) {
    let href = window().location().href().unwrap_or_default();
    let url = web_sys::Url::new(&href).ok();
    let from_query = url.as_ref().and_then(|u| u.search_params().get("config"));
    let rel = from_query.unwrap_or_else(|| "desktops.json".into());
    let abs = web_sys::Url::new_with_base(&rel, &href).map(|u| u.href()).unwrap_or(rel);
    (abs, href)
}

pub(super) async fn load_config(url: &str) -> Result<Config, String> {
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

pub(super) fn query_param(name: &str) -> Option<String> {
    let href = window().location().href().ok()?;
    web_sys::Url::new(&href).ok()?.search_params().get(name)
}

/// WebGPU for the flat view when the browser offers a hardware adapter. A software one
/// (SwiftShader, or `isFallbackAdapter`) is passed over for WebGL2: in headless Chromium its
/// device was lost within a second every time ("A valid external Instance reference no longer
/// exists"). `?backend=webgpu` still forces it (a lost device then falls back by itself).
pub(super) async fn webgpu_usable() -> bool {
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

pub(super) async fn run() -> Result<(), String> {
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
    let big_canvas: HtmlCanvasElement = doc.create_element("canvas").map_err(|e| js_error(&e))?.unchecked_into();
    big_canvas.set_width(super::ui::BIG_W);
    big_canvas.set_height(super::ui::BIG_H);
    let big_ctx = big_canvas
        .get_context_with_context_options("2d", &ctx_opts)
        .ok()
        .flatten()
        .map(|c| c.unchecked_into::<CanvasRenderingContext2d>());

    let shared: Shared = Rc::new_cyclic(|me| {
        RefCell::new(App {
            me: me.clone(),
            config: None,
            key: page_key(),
            key_prompt: None,
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
                pointer: Mouse::default(),
                dragging: None,
                user_moved: false,
                menu_held: None,
            },
            xr: None,
            extras: super::Extras {
                keyboard: Default::default(),
                keyboard_drawn: None,
                typist: Default::default(),
                message: None,
                arrangement: super::ui::load_arrangement(),
                double_tap: Default::default(),
                key_log: Default::default(),
                big_ctx,
            },
            gfx: None,
            xr_gfx: None,
            xr_supported: false,
            recovering: false,
            uploads_this_frame: 0,
            budget: crate::budget::UploadBudget::new(FRAME_BUDGET_MS),
            used_bitmaps: Vec::new(),
            label_ctx,
            redraw: true,
            frame_times: FrameTimes::new(FRAME_HISTORY),
            started_at: now_ms(),
            all_live_at: None,
            pointers: Vec::new(),
            sound: super::audio::Sound::new(crate::audio::AudioSettings::from_params(
                query_param("audio").as_deref(),
                query_param("audio-unfocused-db").as_deref(),
            )),
        })
    });
    install_hook(&shared);
    APP.with(|a| *a.borrow_mut() = Some(shared.clone()));

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
    install_key_form(&shared);
    super::ui::install_paste(&shared);
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
    let codec_param = query_param("codec").as_deref().and_then(crate::decoder::Codec::parse);
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
            let can_probe = health_url(&whep_url).is_some();
            let control_url = crate::control::control_url(&whep_url);
            let own_token = desktop.token.is_some();
            let mut desktop = desktop.clone();
            desktop.token = bearer(desktop.token.as_deref(), app.key.as_deref());
            app.panels.push(PanelRt {
                desktop,
                own_token,
                whep_url,
                video,
                link: Link::new(now_ms(), can_probe),
                session: None,
                new_frame,
                grabbed,
                frames_presented,
                has_video: false,
                through_layer: false,
                uploaded_at: 0.0,
                uploads: 0,
                video_size: (0, 0),
                stats: Default::default(),
                stats_at: 0.0,
                kbps: 0.0,
                stats_pending: false,
                label: String::new(),
                hud: String::new(),
                last_pointer: None,
                control: Default::default(),
                control_url,
                control_known: None,
                status_pending: false,
                status_at: f64::NEG_INFINITY,
                menu_text: String::new(),
                attention: Default::default(),
                codec: codec_param,
                decoder: Default::default(),
                fallback: Default::default(),
                fallback_reason: None,
                _frame_cb: frame_cb,
            });
            app.sound.add_panel();
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
pub(super) fn fresh_canvas(old: &HtmlCanvasElement) -> Result<HtmlCanvasElement, String> {
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
pub(super) async fn recover(shared: Shared) {
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

pub(super) fn tick_shared_now(shared: &Shared) {
    if let Ok(mut app) = shared.try_borrow_mut() {
        app.tick(shared);
    }
}
