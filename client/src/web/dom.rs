//! DOM listeners: mouse, wheel, keyboard and the flat view's buttons.

use glam::Vec2;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{HtmlCanvasElement, KeyboardEvent, MouseEvent, WheelEvent};

use super::util::{document, window};
use super::{App, Shared};

pub(super) fn canvas_point(canvas: &HtmlCanvasElement, ev: &MouseEvent) -> Vec2 {
    let r = canvas.get_bounding_client_rect();
    Vec2::new((ev.client_x() - r.left()) as f32, (ev.client_y() - r.top()) as f32)
}

/// The scene's canvas (it may be replaced: a lost WebGPU device falls back to WebGL2 on a
/// fresh canvas).
pub(super) fn scene_canvas() -> Option<HtmlCanvasElement> {
    document().get_element_by_id("loco-canvas").and_then(|e| e.dyn_into().ok())
}

/// Whether an event was aimed at the scene's canvas.
pub(super) fn on_canvas(ev: &web_sys::Event) -> bool {
    ev.target().and_then(|t| t.dyn_into::<web_sys::Element>().ok()).is_some_and(|e| e.id() == "loco-canvas")
}

/// Mouse, wheel and keyboard input. Listeners sit on the window (the canvas may be replaced)
/// and look at events aimed at the canvas, plus moves and releases during a drag or capture.
pub(super) fn install_input(shared: &Shared) {
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
                let held = app.flat.pointer.captured.is_some() || app.flat.dragging.is_some();
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
                        // The first click starts the sound (autoplay rules); later ones resume it.
                        app.sound.gesture();
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
                if down {
                    if let Ok(mut app) = s.try_borrow_mut() {
                        app.sound.gesture();
                    }
                }
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
                        app.sound.gesture();
                        action(&mut app);
                    }
                }),
            );
        }
    }
}
