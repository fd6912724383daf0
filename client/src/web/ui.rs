//! The scene's own controls in the browser: the in-VR keyboard's texture and placement, key
//! events to the focused VM (with a log for the hook), paste as typing, the message line
//! (`#loco-toast`), and the pulled-panel arrangement in `localStorage`.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use super::util::{document, now_ms, window};
use super::{App, Shared};
use crate::arrange::Arrangement;
use crate::keyboard::{key_rect, KeyKind, Latch, Modifier, ROWS, UNITS_W};
use crate::scene::{KeyboardView, Tex};
use loco_shared::protocol::InputMessage;

/// The canvas for the menu and keyboard textures.
pub(super) const BIG_W: u32 = 1024;
pub(super) const BIG_H: u32 = 410;
const KB_W: u32 = BIG_W;
const KB_H: u32 = (BIG_W as f32 * ROWS / UNITS_W) as u32;
const MESSAGE_MS: f64 = 6000.0;
const KEY_LOG: usize = 200;
const ARRANGEMENT_KEY: &str = "loco.arrangement";

const HELD: [f32; 4] = [0.45, 1.0, 0.45, 0.55];
const LATCHED: [f32; 4] = [1.0, 0.75, 0.18, 0.45];
const LOCKED: [f32; 4] = [1.0, 0.45, 0.1, 0.6];

pub(super) fn load_arrangement() -> Arrangement {
    window()
        .local_storage()
        .ok()
        .flatten()
        .and_then(|s| s.get_item(ARRANGEMENT_KEY).ok().flatten())
        .map(|j| Arrangement::from_json(&j))
        .unwrap_or_default()
}

impl App {
    pub(super) fn save_arrangement(&self) {
        if let Some(s) = window().local_storage().ok().flatten() {
            let _ = if self.extras.arrangement.placed.is_empty() {
                s.remove_item(ARRANGEMENT_KEY)
            } else {
                s.set_item(ARRANGEMENT_KEY, &self.extras.arrangement.to_json())
            };
        }
    }

    /// Key events to panel `i` (logged for the hook).
    pub(super) fn send_keys(&mut self, i: usize, keys: &[(u32, bool)]) {
        for &(keysym, down) in keys {
            self.panels[i].send(InputMessage::Key { keysym, down });
            if self.extras.key_log.len() == KEY_LOG {
                self.extras.key_log.pop_front();
            }
            self.extras.key_log.push_back((i, keysym, down));
        }
    }

    /// Shows `text` on the message line for a while.
    pub(super) fn show_message(&mut self, text: String) {
        web_sys::console::info_1(&format!("loco: {text}").into());
        if let Some(el) = document().get_element_by_id("loco-toast") {
            el.set_text_content(Some(&text));
            let _ = el.remove_attribute("hidden");
        }
        self.extras.message = Some((text, now_ms()));
    }

    /// Every frame: paste typing due, key repeat, the message's end.
    pub(super) fn extras_frame(&mut self) {
        let now = now_ms();
        if let Some((i, keys)) = self.extras.typist.due(now) {
            if self.panels.get(i).is_some() {
                self.send_keys(i, &keys);
            }
            if !self.extras.typist.busy() {
                let (n, name) = (self.extras.typist.total, self.panels[i].desktop.name.clone());
                self.show_message(format!("typed {n} characters into {name}"));
            }
        }
        let repeats = self.extras.keyboard.tick(now);
        if let (Some(i), false) = (self.focus, repeats.is_empty()) {
            self.send_keys(i, &repeats);
        }
        if self.extras.message.as_ref().is_some_and(|(_, t)| now - t > MESSAGE_MS) {
            self.extras.message = None;
            if let Some(el) = document().get_element_by_id("loco-toast") {
                let _ = el.set_attribute("hidden", "");
            }
        }
    }

    /// A paste into the page: its text typed into the focused VM, or refused.
    pub(super) fn paste(&mut self, text: &str) {
        let Some(i) = self.focus else {
            self.show_message("paste: click a desktop first, then paste into it".into());
            return;
        };
        match crate::paste::keys_for(text) {
            Ok(keys) => {
                let n = keys.len();
                self.extras.typist.start(i, keys, now_ms());
                self.show_message(format!("typing {n} characters into {}…", self.panels[i].desktop.name));
            }
            Err(e) => self.show_message(e),
        }
    }

    /// The keyboard as the scene draws it (shown in VR, under the focused panel).
    pub(super) fn keyboard_view(&self) -> Option<KeyboardView> {
        let kb = &self.extras.keyboard;
        let i = self.focus?;
        if !kb.visible || self.xr.is_none() {
            return None;
        }
        let corners = crate::keyboard::place(self.layout.get(i)?, self.origin.eye);
        let mut lit = Vec::new();
        for (k, key) in kb.keys.iter().enumerate() {
            let colour = match key.kind {
                KeyKind::Modifier(m) => match kb.latch(m) {
                    Latch::Latched => Some(LATCHED),
                    Latch::Locked => Some(LOCKED),
                    Latch::Off => None,
                },
                _ => None,
            };
            let colour = if kb.is_held(k) { Some(HELD) } else { colour };
            if let Some(c) = colour {
                let (u0, v0, u1, v1) = key_rect(key);
                lit.push(([u0, v0, u1, v1], c));
            }
        }
        Some(KeyboardView { corners, lit })
    }

    /// The keyboard's corners while it shows.
    pub(super) fn keyboard_corners(&self) -> Option<[glam::Vec3; 4]> {
        self.keyboard_view().map(|k| k.corners)
    }

    /// Shows or hides the keyboard (hiding lets go of held keys).
    pub(super) fn toggle_keyboard(&mut self) {
        let kb = &mut self.extras.keyboard;
        kb.visible = !kb.visible;
        if !kb.visible {
            let up = kb.release_all();
            if let Some(i) = self.focus {
                self.send_keys(i, &up);
            }
        }
        self.update_keyboard_texture();
    }

    /// Draws the keyboard texture when its labels change (Shift shows capitals).
    pub(super) fn update_keyboard_texture(&mut self) {
        let mods = self.extras.keyboard.mods;
        if self.extras.keyboard_drawn == Some(mods) {
            return;
        }
        let Some(ctx) = &self.extras.big_ctx else { return };
        let shift = mods[Modifier::Shift as usize] != Latch::Off;
        let (w, h) = (KB_W as f64, KB_H as f64);
        let unit = w / UNITS_W as f64;
        ctx.clear_rect(0.0, 0.0, w, h);
        ctx.set_fill_style_str("rgba(10,12,18,0.9)");
        ctx.fill_rect(0.0, 0.0, w, h);
        ctx.set_text_baseline("middle");
        ctx.set_text_align("center");
        for key in &self.extras.keyboard.keys {
            let (x, y, kw) = (key.x as f64 * unit, key.y as f64 * unit, key.w as f64 * unit);
            ctx.set_fill_style_str(match key.kind {
                KeyKind::Char(..) => "#323848",
                KeyKind::CtrlAltDel => "#5a2323",
                _ => "#262b38",
            });
            ctx.fill_rect(x + 3.0, y + 3.0, kw - 6.0, unit - 6.0);
            let label = match key.kind {
                KeyKind::Char(' ', _) => "Space".to_owned(),
                KeyKind::Char(a, b) => (if shift { b } else { a }).to_string(),
                _ => match key.name {
                    "Up" => "↑".into(),
                    "Down" => "↓".into(),
                    "Left" => "←".into(),
                    "Right" => "→".into(),
                    "Backspace" => "⌫".into(),
                    n => n.to_owned(),
                },
            };
            let size = if label.chars().count() > 3 { 17 } else { 26 };
            ctx.set_font(&format!("{size}px system-ui, sans-serif"));
            ctx.set_fill_style_str("#f2f4f8");
            let _ = ctx.fill_text_with_max_width(&label, x + kw / 2.0, y + unit / 2.0, kw - 8.0);
        }
        ctx.set_text_align("left");
        let Ok(data) = ctx.get_image_data(0, 0, KB_W as i32, KB_H as i32) else { return };
        let pixels = data.data().0;
        for g in [self.gfx.as_mut(), self.xr_gfx.as_mut()].into_iter().flatten() {
            g.renderer.write_rgba(&g.device, &g.queue, Tex::Keyboard, KB_W, KB_H, &pixels);
        }
        self.extras.keyboard_drawn = Some(mods);
    }
}

/// `paste` on the page: the clipboard's text typed into the focused VM (flat view).
pub(super) fn install_paste(shared: &Shared) {
    let s = shared.clone();
    let cb = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
        if let Some(active) = document().active_element() {
            let tag = active.tag_name().to_ascii_lowercase();
            if matches!(tag.as_str(), "input" | "textarea") {
                return;
            }
        }
        let Some(ev) = ev.dyn_ref::<web_sys::ClipboardEvent>() else { return };
        let text = ev.clipboard_data().and_then(|d| d.get_data("text/plain").ok()).unwrap_or_default();
        ev.prevent_default();
        if let Ok(mut app) = s.try_borrow_mut() {
            app.paste(&text);
        }
    });
    let _ = window().add_event_listener_with_callback("paste", cb.as_ref().unchecked_ref());
    cb.forget();
}
