//! The flat view: its frame loop, camera and mouse/wheel/keyboard routing (through
//! [`crate::pointer::Mouse`]).

use std::cell::RefCell;
use std::rc::Rc;

use glam::{Vec2, Vec3};
use loco_shared::keys::keysym;
use loco_shared::protocol::{buttons, InputMessage};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::KeyboardEvent;

use super::util::{now_ms, window};
use super::{App, Looping, PanelRt, Shared, LABEL_H, LABEL_W};
use crate::audio::Listener;
use crate::camera::FlatCamera;
use crate::pointer::{self, Aim};
use crate::render::View;
use crate::scene;

impl App {
    pub(super) fn frame_flat(&mut self) {
        let t0 = now_ms();
        self.control_frame();
        self.extras_frame();
        self.attention_frame(None);
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
        self.sound.set_listener(Listener::flat(self.origin.eye, camera.rotation()));
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

    pub(super) fn account(&mut self, ms: f64) {
        for b in self.used_bitmaps.drain(..) {
            b.close();
        }
        self.frame_times.record(ms);
    }

    pub(super) fn flat_ray(&self, point: Vec2) -> Option<(Vec3, Vec3)> {
        let g = self.gfx.as_ref()?;
        let (cw, ch) = (g.canvas.client_width() as f32, g.canvas.client_height() as f32);
        (cw > 0.0 && ch > 0.0).then(|| self.flat.camera.ray(point, cw, ch))
    }

    pub(super) fn desktop_sizes(&self) -> Vec<(u32, u32)> {
        self.panels.iter().map(PanelRt::desktop_size).collect()
    }

    /// The panel and desktop pixel under a canvas point; with `captured`, that panel's plane
    /// (clamped to its edges) whether or not the point is over it.
    pub(super) fn flat_target(&self, point: Vec2, captured: Option<usize>) -> Option<Aim> {
        let (o, d) = self.flat_ray(point)?;
        pointer::aim(&self.layout, &self.desktop_sizes(), captured, o, d)
    }

    pub(super) fn send_all(&mut self, sends: impl IntoIterator<Item = (usize, InputMessage)>) {
        for (i, msg) in sends {
            self.panels[i].send(msg);
        }
    }

    /// The scene control (menu, caption) under a canvas point.
    pub(super) fn flat_ui(&self, point: Vec2) -> Option<scene::UiHit> {
        let (o, d) = self.flat_ray(point)?;
        let open: Vec<usize> = (0..self.panels.len()).filter(|&i| self.panels[i].control.open).collect();
        scene::pick_ui(&self.layout, LABEL_W as f32 / LABEL_H as f32, &open, None, o, d).map(|u| u.0)
    }

    pub(super) fn mouse_move(&mut self, point: Vec2) {
        self.flat.mouse = Some(point);
        self.redraw = true;
        // A menu hold ends when the mouse leaves its item.
        if let Some(i) = self.flat.menu_held {
            let item = self.panels[i].control.held.map(|h| h.0);
            if self.flat_ui(point) != item.map(|it| scene::UiHit::Menu(i, Some(it))) {
                self.panels[i].control.release();
                self.flat.menu_held = None;
            }
            return;
        }
        if let Some(start) = self.flat.dragging {
            let h = self.gfx.as_ref().map(|g| g.canvas.client_height() as f32).unwrap_or(1.0);
            let delta = point - start;
            self.flat.camera.drag(delta.x, delta.y, h);
            self.flat.user_moved = true;
            self.flat.dragging = Some(point);
            return;
        }
        // Over an open VM menu (nothing held): the desktop under it does not see the mouse.
        if self.flat.pointer.captured.is_none() && matches!(self.flat_ui(point), Some(scene::UiHit::Menu(..))) {
            self.pointers.clear();
            return;
        }
        let target = self.flat_target(point, self.flat.pointer.captured);
        self.pointers.clear();
        if let Some(a) = target {
            self.send_all(self.flat.pointer.moved(Some(&a)));
            self.pointers.push(self.flat.pointer.cursor(&a, self.layout[a.panel].normal()));
        }
    }

    pub(super) fn mouse_button(&mut self, point: Vec2, button: i16, down: bool) {
        self.redraw = true;
        let bit = match button {
            0 => buttons::LEFT,
            1 => buttons::MIDDLE,
            2 => buttons::RIGHT,
            _ => return,
        };
        if down {
            // The scene's controls first (nothing held): a caption toggles that panel's sound, its
            // menu button the VM menu; a menu item is pressed (held for destructive ones).
            if self.flat.pointer.captured.is_none() && bit == buttons::LEFT {
                match self.flat_ui(point) {
                    Some(scene::UiHit::Caption(i)) => return self.toggle_mute(i),
                    Some(scene::UiHit::CaptionButton(i)) => return self.toggle_menu(i),
                    Some(scene::UiHit::Menu(i, item)) => {
                        if let Some(item) = item {
                            self.flat.menu_held = Some(i);
                            if let Some(a) = self.panels[i].control.press(item, now_ms()) {
                                self.control_action(i, a);
                            }
                            self.update_menus();
                        }
                        return;
                    }
                    _ => {}
                }
            }
            let target = self.flat_target(point, self.flat.pointer.captured);
            match self.flat.pointer.press(target.as_ref(), bit) {
                Some(send) => {
                    self.set_focus(Some(send.0));
                    self.send_all([send]);
                }
                None if self.flat.pointer.captured.is_none() => self.flat.dragging = Some(point),
                None => {}
            }
        } else {
            if let Some(i) = self.flat.menu_held.take() {
                self.panels[i].control.release();
                return;
            }
            self.flat.dragging = None;
            if let Some(i) = self.flat.pointer.captured {
                let at = self.flat_target(point, Some(i)).map(|a| (a.x, a.y));
                let last = self.panels[i].last_pointer.map(|(x, y, _)| (x, y));
                let send = self.flat.pointer.release(bit, at, last);
                self.send_all(send);
            }
        }
    }

    pub(super) fn wheel(&mut self, point: Vec2, delta_y: f64) -> bool {
        let Some(a) = self.flat_target(point, self.flat.pointer.captured) else { return false };
        self.send_all(self.flat.pointer.wheel(&a, delta_y < 0.0));
        true
    }

    pub(super) fn key(&mut self, ev: &KeyboardEvent, down: bool) -> bool {
        let Some(i) = self.focus else { return false };
        let Some(sym) = keysym(&ev.key(), &ev.code()) else { return false };
        self.send_keys(i, &[(sym, down)]);
        true
    }
}

pub(super) fn start_flat_loop(shared: &Shared) {
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
