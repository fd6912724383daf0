//! `window.__loco`: a getter returning a frozen [`crate::hook::Snapshot`] plus
//! `screenPoint(i, u, v)`, `capture()` and `audioSpectrum()`.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::util::{set, window};
use super::{App, Shared, LABEL_H, LABEL_W};
use crate::control::{MenuItem, Outcome};
use crate::hook::{
    ControlResult, ControlSnapshot, KeySent, KeySnapshot, KeyboardSnapshot, PanelSnapshot, PasteSnapshot, Snapshot,
};
use crate::keyboard::{key_rect, Modifier};
use crate::render::View;
use crate::scene;

impl App {
    fn control_snapshot(&self, i: usize) -> ControlSnapshot {
        let p = &self.panels[i];
        let c = &p.control;
        let path = |item: MenuItem| match item {
            MenuItem::Do(a) => a.path(),
            MenuItem::Close => "close",
        };
        ControlSnapshot {
            open: c.open,
            url: p.control_url.clone(),
            qmp: c.status.as_ref().map(|s| s.qmp.clone()),
            vm_status: c.status.as_ref().map(|s| s.status.clone()),
            snapshot: c.status.as_ref().map(|s| s.snapshot),
            status_error: c.status_error.clone(),
            pending: match c.outcome {
                Some(Outcome::Pending(a)) => Some(a.path()),
                _ => None,
            },
            last: match &c.outcome {
                Some(Outcome::Done { action, text, .. }) => {
                    Some(ControlResult { action: action.path(), ok: true, text: text.clone() })
                }
                Some(Outcome::Failed { action, text, .. }) => {
                    Some(ControlResult { action: action.path(), ok: false, text: text.clone() })
                }
                _ => None,
            },
            rebooting: c.rebooting(p.link.state() == crate::scene::StreamState::Live),
            hold: c.progress(super::util::now_ms()).map(|(item, f)| (path(item), f as f64)),
        }
    }

    fn keyboard_snapshot(&self) -> KeyboardSnapshot {
        let kb = &self.extras.keyboard;
        KeyboardSnapshot {
            visible: kb.visible,
            corners: self.keyboard_corners().map(|c| c.map(Into::into).to_vec()).unwrap_or_default(),
            keys: kb
                .keys
                .iter()
                .map(|k| {
                    let (u0, v0, u1, v1) = key_rect(k);
                    KeySnapshot { name: k.name, u: ((u0 + u1) / 2.0) as f64, v: ((v0 + v1) / 2.0) as f64 }
                })
                .collect(),
            shift: kb.latch(Modifier::Shift).as_str(),
            ctrl: kb.latch(Modifier::Ctrl).as_str(),
            alt: kb.latch(Modifier::Alt).as_str(),
            win: kb.latch(Modifier::Win).as_str(),
        }
    }

    pub(super) fn snapshot(&self) -> JsValue {
        let panels = self
            .panels
            .iter()
            .enumerate()
            .map(|(i, p)| PanelSnapshot {
                name: p.desktop.name.clone(),
                whep: p.desktop.whep.clone(),
                state: p.link.state().as_str(),
                frames_decoded: p.stats.frames_decoded,
                frames_presented: p.frames_presented.get(),
                frames_uploaded: p.uploads,
                video_width: p.video.video_width(),
                video_height: p.video.video_height(),
                fps: p.stats.fps,
                kbps: p.kbps,
                rtt_ms: p.stats.rtt_ms,
                attempts: p.link.attempts(),
                error: p.link.error().map(str::to_owned),
                input_open: p.session.as_ref().is_some_and(|s| s.input_open()),
                corners: self.layout.get(i).map(|l| l.corners().map(Into::into).to_vec()).unwrap_or_default(),
                caption_corners: self
                    .layout
                    .get(i)
                    .map(|l| scene::caption_corners(l, LABEL_W as f32 / LABEL_H as f32).map(Into::into).to_vec())
                    .unwrap_or_default(),
                caption: p.label.trim_end_matches('\u{0}').to_owned(),
                menu_corners: self
                    .layout
                    .get(i)
                    .map(|l| scene::menu_corners(l).map(Into::into).to_vec())
                    .unwrap_or_default(),
                control: self.control_snapshot(i),
                attention: p.attention.state.map(|a| a.label()),
                attention_sent: p.attention.sender.sent().map(|a| a.label()),
                attention_messages: p.attention.messages,
                codec: p
                    .stats
                    .codec
                    .as_deref()
                    .and_then(crate::decoder::Codec::parse)
                    .or(p.codec)
                    .filter(|_| p.session.is_some())
                    .map(|c| c.as_str()),
                codec_requested: p.codec.map(|c| c.as_str()),
                decoder_fallbacks: p.fallback.count,
                decoder_fallback_reason: p.fallback_reason.clone(),
                decoder_implementation: p.stats.decoder_implementation.clone(),
                power_efficient_decoder: p.stats.power_efficient,
                frames_dropped: p.stats.frames_dropped,
                decode_ms: (p.stats.frames_decoded > 0)
                    .then(|| p.stats.total_decode_time * 1000.0 / p.stats.frames_decoded as f64),
                hud_line: p.hud.clone(),
            })
            .collect();
        let snapshot = Snapshot {
            panels,
            xr: self.xr_snapshot(),
            focus: self.focus,
            error: self.error.clone(),
            hud: self.hud,
            backend: self.gfx.as_ref().map(|g| g.backend.as_str()),
            frame_ms: self.frame_times.average_ms,
            frame_ms_p50: self.frame_times.percentile(0.5),
            frame_ms_p95: self.frame_times.percentile(0.95),
            upload_ms: self.budget.per_upload_ms(),
            uploads_per_frame: self.budget.allowed(),
            all_live_at_ms: self.all_live_at,
            frames: self.frame_times.frames,
            all_live_ms: self.all_live_at.map(|t| t - self.started_at),
            audio: self.sound.snapshot(),
            keyboard: self.keyboard_snapshot(),
            keys_sent: self
                .extras
                .key_log
                .iter()
                .map(|&(panel, keysym, down)| KeySent { panel, keysym, down })
                .collect(),
            message: self.extras.message.as_ref().map(|m| m.0.clone()),
            paste: PasteSnapshot {
                typed: self.extras.typist.typed,
                total: self.extras.typist.total,
                busy: self.extras.typist.busy(),
            },
            caption_button_u: crate::control::CAPTION_BUTTON_U as f64,
        };
        js_sys::JSON::parse(&snapshot.to_json()).unwrap_or(JsValue::NULL)
    }

    /// Viewport CSS pixels of point (u, v) of panel `i` in the flat view.
    pub(super) fn screen_point(&self, i: usize, u: f32, v: f32) -> Option<(f64, f64)> {
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

pub(super) fn install_hook(shared: &Shared) {
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
        let s4 = s.clone();
        let spectrum = Closure::<dyn Fn() -> JsValue>::new(move || match s4.try_borrow() {
            Ok(app) => app.sound.spectrum(),
            Err(_) => JsValue::NULL,
        });
        set(&snap, "audioSpectrum", spectrum.into_js_value());
        // `debug.renegotiate(i, codec)`: the decoder fallback's own path (`App::decoder_fallback`),
        // once-a-minute rule included; true if panel i renegotiates.
        let s5 = s.clone();
        let renegotiate = Closure::<dyn Fn(f64, String) -> bool>::new(move |i: f64, codec: String| {
            let Some(codec) = crate::decoder::Codec::parse(&codec) else { return false };
            match s5.try_borrow_mut() {
                Ok(mut app) => app.decoder_fallback(i as usize, codec, "asked by __loco.debug.renegotiate".into()),
                Err(_) => false,
            }
        });
        let debug = js_sys::Object::new();
        set(&debug, "renegotiate", renegotiate.into_js_value());
        set(&snap, "debug", debug);
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
pub(super) async fn capture(shared: Shared) -> Result<JsValue, JsValue> {
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

pub(super) fn deep_freeze(v: &JsValue) {
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
