//! `/check.html`: the main page (same config, key handling, panels and render loop) plus a report
//! on what this device can do — WebXR and WebXR Layers, the receiver's video codecs, whether
//! H.264/VP8 decoding is power-efficient, the user agent — and how the page runs here: the
//! render loop's time per frame, dropped display frames and each panel's decoder over
//! `?seconds=` (30) once the panels are live. The report shows as JSON on the page, in
//! `window.__locoCheck`, and a button copies it (clipboard, else a selected textarea). With
//! `?hardware=1` it holds a microphone capture while measuring, without which Chromium hides
//! each decoder's name and power efficiency.
//! The arithmetic is `crate::check`'s.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use super::boot::{query_param, APP};
use super::util::{document, js_error, now_ms, set, sleep, window};
use super::whep;
use super::Shared;
use crate::check::{decode_ms, display_frames, spread};
use crate::scene::StreamState;

const DEFAULT_SECONDS: f64 = 30.0;
/// How long to wait for every panel to be live before measuring anyway.
const LIVE_WAIT_MS: f64 = 30_000.0;

fn status(text: &str) {
    if let Some(el) = document().get_element_by_id("loco-check-status") {
        el.set_text_content(Some(text));
    }
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// `obj.name(...args)` awaited, for promise-returning browser methods.
async fn call_async(obj: &JsValue, name: &str, args: &[JsValue]) -> Result<JsValue, String> {
    let f: js_sys::Function =
        get(obj, name).dyn_into().map_err(|_| format!("{name} is not available in this browser"))?;
    let list: js_sys::Array = args.iter().collect();
    let p = f.apply(obj, &list).map_err(|e| js_error(&e))?;
    JsFuture::from(js_sys::Promise::resolve(&p)).await.map_err(|e| js_error(&e))
}

async fn webxr() -> Value {
    let xr = get(&window().navigator(), "xr");
    if xr.is_undefined() || xr.is_null() {
        return json!({ "available": false, "immersiveVr": false, "immersiveAr": false });
    }
    let mut out = json!({ "available": true });
    for (key, mode) in [("immersiveVr", "immersive-vr"), ("immersiveAr", "immersive-ar")] {
        out[key] = match call_async(&xr, "isSessionSupported", &[mode.into()]).await {
            Ok(v) => json!(v.as_bool() == Some(true)),
            Err(e) => {
                out[format!("{key}Error")] = json!(e);
                json!(false)
            }
        };
    }
    out
}

fn codecs() -> Value {
    let mut names: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    for c in whep::receiver_codecs().map(|a| a.to_vec()).unwrap_or_default() {
        let mime = super::util::text(&c, "mimeType").unwrap_or_default();
        if !names.contains(&mime) {
            names.push(mime.clone());
        }
        entries.push(json!({ "mimeType": mime, "sdpFmtpLine": super::util::text(&c, "sdpFmtpLine") }));
    }
    json!({ "names": names, "entries": entries })
}

/// `navigator.mediaCapabilities.decodingInfo({type: 'webrtc', …})` at 1024×768, 30 fps.
async fn decoding(mime: &str) -> Value {
    let mc = get(&window().navigator(), "mediaCapabilities");
    let video = js_sys::Object::new();
    set(&video, "contentType", mime);
    set(&video, "width", 1024);
    set(&video, "height", 768);
    set(&video, "bitrate", 2_000_000);
    set(&video, "framerate", 30);
    let cfg = js_sys::Object::new();
    set(&cfg, "type", "webrtc");
    set(&cfg, "video", video);
    match call_async(&mc, "decodingInfo", &[cfg.into()]).await {
        Ok(r) => json!({
            "supported": get(&r, "supported").as_bool() == Some(true),
            "smooth": get(&r, "smooth").as_bool() == Some(true),
            "powerEfficient": get(&r, "powerEfficient").as_bool() == Some(true),
        }),
        Err(e) => json!({ "supported": false, "smooth": false, "powerEfficient": false, "error": e }),
    }
}

/// `navigator.mediaDevices.getUserMedia({audio: true})`.
async fn microphone() -> Result<web_sys::MediaStream, String> {
    let devices = get(&window().navigator(), "mediaDevices");
    let constraints = js_sys::Object::new();
    set(&constraints, "audio", true);
    call_async(&devices, "getUserMedia", &[constraints.into()])
        .await
        .map(|s| s.unchecked_into())
        .map_err(|e| format!("refused: {e}"))
}

fn app() -> Option<Shared> {
    APP.with(|a| a.borrow().clone())
}

/// Every panel's `getStats` now (`None` for a panel without a session).
async fn panel_stats(shared: &Shared) -> Vec<Option<whep::VideoStats>> {
    let pcs: Vec<_> = shared.borrow().panels.iter().map(|p| p.session.as_ref().map(|s| s.pc.clone())).collect();
    let mut out = Vec::new();
    for pc in pcs {
        out.push(match pc {
            Some(pc) => whep::stats(&pc).await,
            None => None,
        });
    }
    out
}

/// `requestAnimationFrame` timestamps until `stop` is set.
fn record_raf(times: Rc<RefCell<Vec<f64>>>, stop: Rc<std::cell::Cell<bool>>) {
    let cb: super::Looping<dyn FnMut(f64)> = Rc::new(RefCell::new(None));
    let again = cb.clone();
    *cb.borrow_mut() = Some(Closure::new(move |t: f64| {
        if stop.get() {
            again.borrow_mut().take();
            return;
        }
        times.borrow_mut().push(t);
        if let Some(f) = again.borrow().as_ref() {
            let _ = window().request_animation_frame(f.as_ref().unchecked_ref());
        }
    }));
    if let Some(f) = cb.borrow().as_ref() {
        let _ = window().request_animation_frame(f.as_ref().unchecked_ref());
    };
}

pub(super) async fn run() {
    let seconds =
        query_param("seconds").and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0).unwrap_or(DEFAULT_SECONDS);
    status("checking the browser…");
    let navigator = window().navigator();
    let user_agent = navigator.user_agent().unwrap_or_default();
    let webxr = webxr().await;
    let layers = json!({
        "xrMediaBinding": js_sys::Reflect::has(&window(), &"XRMediaBinding".into()).unwrap_or(false),
        "xrWebGLBinding": js_sys::Reflect::has(&window(), &"XRWebGLBinding".into()).unwrap_or(false),
    });
    let codecs = codecs();
    let decoding = json!({ "h264": decoding("video/H264").await, "vp8": decoding("video/VP8").await });

    // The page's panels: wait for the app, then for every panel to be live (or give up waiting).
    let started = now_ms();
    let shared = loop {
        if let Some(s) = app() {
            break Some(s);
        }
        if now_ms() - started > LIVE_WAIT_MS {
            break None;
        }
        sleep(100).await;
    };
    let mut measurement = Value::Null;
    let mut panels = Vec::new();
    let mut waited_ms = 0.0;
    let mut capture: Result<web_sys::MediaStream, String> = Err("not asked (?hardware=1 asks)".into());
    if let Some(shared) = shared {
        loop {
            let (total, live, configured) = {
                let app = shared.borrow();
                let live = app.panels.iter().filter(|p| p.link.state() == StreamState::Live).count();
                (app.panels.len(), live, app.config.is_some() || app.error.is_some())
            };
            status(&format!("waiting for the desktops: {live} of {total} live…"));
            if (configured && total > 0 && live == total) || now_ms() - started > LIVE_WAIT_MS {
                break;
            }
            sleep(250).await;
        }
        waited_ms = now_ms() - started;
        // `?hardware=1`: Chromium tells a page `decoderImplementation` and `powerEfficientDecoder`
        // only while it captures (the spec's "exposing hardware is allowed"): a microphone,
        // held while measuring.
        if query_param("hardware").is_some_and(|v| v != "0") {
            status("asking for the microphone (it unlocks the decoder's name)…");
            capture = microphone().await;
        }
        let before = panel_stats(&shared).await;
        let raf = Rc::new(RefCell::new(Vec::new()));
        let stop = Rc::new(std::cell::Cell::new(false));
        record_raf(raf.clone(), stop.clone());
        shared.borrow_mut().frame_times.log = Some(Vec::new());
        let t0 = now_ms();
        while now_ms() - t0 < seconds * 1000.0 {
            status(&format!("measuring: {:.0} of {seconds:.0} s…", (now_ms() - t0) / 1000.0));
            sleep(250).await;
        }
        stop.set(true);
        let render = shared.borrow_mut().frame_times.log.take().unwrap_or_default();
        let after = panel_stats(&shared).await;
        if let Ok(stream) = &capture {
            for t in stream.get_tracks().iter() {
                t.unchecked_into::<web_sys::MediaStreamTrack>().stop();
            }
        }
        let display = display_frames(&raf.borrow());
        measurement = json!({
            "seconds": seconds,
            "renderMs": spread(&render),
            "display": display,
        });
        let app = shared.borrow();
        for (i, p) in app.panels.iter().enumerate() {
            let a = after.get(i).cloned().flatten();
            let b = before.get(i).cloned().flatten();
            let window_ms = match (&b, &a) {
                (Some(b), Some(a)) => {
                    decode_ms((b.frames_decoded, b.total_decode_time), (a.frames_decoded, a.total_decode_time))
                }
                _ => None,
            };
            let session_ms = a.as_ref().and_then(|a| decode_ms((0, 0.0), (a.frames_decoded, a.total_decode_time)));
            panels.push(json!({
                "name": p.desktop.name,
                "state": p.link.state().as_str(),
                "codec": a.as_ref().and_then(|a| a.codec.clone()),
                "framesDecoded": a.as_ref().map(|a| a.frames_decoded),
                "framesDecodedInWindow": match (&b, &a) {
                    (Some(b), Some(a)) => Some(a.frames_decoded.saturating_sub(b.frames_decoded)),
                    _ => None,
                },
                "framesDropped": a.as_ref().map(|a| a.frames_dropped),
                "decodeMs": window_ms.or(session_ms),
                "decoderImplementation": a.as_ref().and_then(|a| a.decoder_implementation.clone()),
                "powerEfficientDecoder": a.as_ref().and_then(|a| a.power_efficient),
                "fps": a.as_ref().map(|a| a.fps),
                "width": p.video.video_width(),
                "height": p.video.video_height(),
                "decoderFallbacks": p.fallback.count,
            }));
        }
    }
    let live = panels.iter().filter(|p| p["state"] == "live").count();
    let report = json!({
        "version": 1,
        "userAgent": user_agent,
        "webxr": webxr,
        "layers": layers,
        "codecs": codecs,
        "decoding": decoding,
        "panels": panels,
        "live": live,
        "waitedForPanelsMs": waited_ms.round(),
        "hardwareInfo": match &capture {
            Ok(_) => "allowed: a microphone was captured while measuring".to_string(),
            Err(e) => e.clone(),
        },
        "frames": measurement,
    });
    publish(&report);
}

/// Shows the report, puts it in `window.__locoCheck` and arms the copy button.
fn publish(report: &Value) {
    let text = serde_json::to_string_pretty(report).unwrap_or_default();
    let value = js_sys::JSON::parse(&text).unwrap_or(JsValue::NULL);
    set(&window(), "__locoCheck", value);
    if let Some(el) = document().get_element_by_id("loco-check-report") {
        el.set_text_content(Some(&text));
    }
    status("done: copy the report and attach it to your bug report");
    let Some(button) = document().get_element_by_id("loco-check-copy") else { return };
    let _ = button.remove_attribute("disabled");
    let on_click = Closure::<dyn FnMut()>::new(move || {
        let text = text.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let clipboard = get(&window().navigator(), "clipboard");
            let copied =
                !clipboard.is_undefined() && call_async(&clipboard, "writeText", &[text.as_str().into()]).await.is_ok();
            let how = if copied { "clipboard" } else { "textarea" };
            if !copied {
                // No clipboard here (or it was refused): the text, selected, to copy by hand.
                if let Some(area) = document().get_element_by_id("loco-check-text") {
                    let area: web_sys::HtmlElement = area.unchecked_into();
                    set(&area, "value", text.as_str());
                    let _ = area.remove_attribute("hidden");
                    let _ = area.focus();
                    if let Ok(f) = get(&area, "select").dyn_into::<js_sys::Function>() {
                        let _ = f.call0(&area);
                    }
                }
            }
            if let Some(b) = document().get_element_by_id("loco-check-copy") {
                let _ = b.set_attribute("data-copied", how);
            }
            status(if copied { "copied to the clipboard" } else { "select the text below and copy it" });
        });
    });
    button.add_event_listener_with_callback("click", on_click.as_ref().unchecked_ref()).ok();
    on_click.forget();
}
