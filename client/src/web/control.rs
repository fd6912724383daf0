//! The VM menu in the browser: `GET`/`POST …/control` for [`crate::control`]'s decisions, the
//! menu texture, and the caption's menu button.

use wasm_bindgen_futures::{spawn_local, JsFuture};

use super::util::{fetch, now_ms};
use super::{App, LABEL_H};
use crate::control::{action_url, outcome, session_id, Action, VmStatus, MENU_BUTTONS_H, MENU_H, MENU_ITEMS, MENU_W};
use crate::scene::{StreamState, Tex};

/// While the menu is open or the VM restarts, its status is asked this often; otherwise every
/// `STATUS_IDLE_MS` (only from agents that have the endpoint).
const STATUS_OPEN_MS: f64 = 2000.0;
const STATUS_IDLE_MS: f64 = 10_000.0;

async fn request(url: String, method: &str, token: Option<String>, session: Option<String>) -> (u16, String) {
    let headers = match web_sys::Headers::new() {
        Ok(h) => h,
        Err(_) => return (0, String::new()),
    };
    if let Some(t) = token {
        let _ = headers.set("Authorization", &format!("Bearer {t}"));
    }
    if let Some(s) = session {
        let _ = headers.set("X-Loco-Session", &s);
    }
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    init.set_headers(&headers);
    init.set_cache(web_sys::RequestCache::NoStore);
    match fetch(&url, &init, 10_000).await {
        Ok(res) => {
            let body = match res.text() {
                Ok(p) => JsFuture::from(p).await.ok().and_then(|v| v.as_string()).unwrap_or_default(),
                Err(_) => String::new(),
            };
            (res.status(), body)
        }
        Err(e) => (0, e),
    }
}

impl App {
    /// The caption's menu button: opens (asking the VM's status) or closes panel `i`'s menu.
    pub(super) fn toggle_menu(&mut self, i: usize) {
        let Some(p) = self.panels.get_mut(i) else { return };
        p.control.toggle();
        if p.control.open {
            p.status_at = f64::NEG_INFINITY;
            self.refresh_status(i);
        }
        self.redraw = true;
        self.update_menus();
    }

    /// Asks the agent for panel `i`'s VM status.
    pub(super) fn refresh_status(&mut self, i: usize) {
        let p = &mut self.panels[i];
        let Some(base) = p.control_url.clone() else {
            p.control.status_error = Some("this desktop has no VM control (its URL does not end in /whep)".into());
            return;
        };
        if p.status_pending {
            return;
        }
        p.status_pending = true;
        p.status_at = now_ms();
        let token = p.desktop.token.clone();
        let Some(shared) = self.me.upgrade() else { return };
        spawn_local(async move {
            let (status, body) = request(base, "GET", token, None).await;
            let Ok(mut app) = shared.try_borrow_mut() else { return };
            let Some(p) = app.panels.get_mut(i) else { return };
            p.status_pending = false;
            match (status, VmStatus::parse(&body)) {
                (200, Some(s)) => {
                    p.control_known = Some(true);
                    p.control.status = Some(s);
                    p.control.status_error = None;
                }
                (s, _) => {
                    // 404/405: no such endpoint; no answer: ask again later; anything else (503
                    // without QMP, 401/403) is the endpoint speaking.
                    p.control_known = match s {
                        404 | 405 => Some(false),
                        0 => p.control_known,
                        _ => Some(true),
                    };
                    p.control.status = None;
                    p.control.status_error = Some(match outcome(Action::Reset, s, &body) {
                        Err(e) => e,
                        Ok(_) => "the agent's answer was not understood".into(),
                    });
                }
            }
            app.update_labels();
            app.update_menus();
        });
    }

    /// Sends `action` for panel `i` with the panel's key and WHEP session.
    pub(super) fn control_action(&mut self, i: usize, action: Action) {
        let p = &self.panels[i];
        let Some(base) = p.control_url.clone() else {
            let now = now_ms();
            self.panels[i].control.answered(action, Err("this desktop has no VM control".into()), now);
            return;
        };
        let url = action_url(&base, action);
        let token = p.desktop.token.clone();
        let session = p.session.as_ref().and_then(|s| s.location.as_deref()).and_then(session_id).map(str::to_owned);
        web_sys::console::info_1(&format!("loco: {} → POST {url}", p.desktop.name).into());
        let Some(shared) = self.me.upgrade() else { return };
        spawn_local(async move {
            let (status, body) = request(url, "POST", token, session).await;
            let Ok(mut app) = shared.try_borrow_mut() else { return };
            // No answer from an agent that said it has no VM control (its CORS preflight for
            // this request fails too): say that, not "failed to fetch".
            let result = if status == 0 && app.panels[i].control_known == Some(false) {
                Err("this agent has no VM control".to_owned())
            } else {
                outcome(action, status, &body)
            };
            if let Err(e) = &result {
                web_sys::console::warn_1(
                    &format!("loco: {} {}: {e}", app.panels[i].desktop.name, action.path()).into(),
                );
            }
            app.panels[i].control.answered(action, result, now_ms());
            app.panels[i].status_at = f64::NEG_INFINITY;
            app.update_labels();
            app.update_menus();
            app.redraw = true;
        });
        self.update_labels();
        self.update_menus();
    }

    /// Every frame: holds that finished fire; a held menu needs drawing.
    pub(super) fn control_frame(&mut self) {
        let now = now_ms();
        for i in 0..self.panels.len() {
            if self.panels[i].control.held.is_some() {
                self.redraw = true;
            }
            if let Some(a) = self.panels[i].control.tick(now) {
                self.control_action(i, a);
            }
        }
    }

    /// From the 250 ms tick: streams seen by the menus, status polls.
    pub(super) fn control_tick(&mut self) {
        let now = now_ms();
        for i in 0..self.panels.len() {
            let p = &mut self.panels[i];
            let live = p.link.state() == StreamState::Live;
            p.control.stream(live, now);
            let every = if p.control.open || p.control.rebooting_since.is_some() {
                STATUS_OPEN_MS
            } else if p.control_known == Some(true) || (p.control_known.is_none() && live) {
                // (First asked when the panel is first live.)
                STATUS_IDLE_MS
            } else {
                continue;
            };
            if now - p.status_at >= every {
                self.refresh_status(i);
            }
        }
        self.update_menus();
    }

    /// Redraws the menu textures whose text changed.
    pub(super) fn update_menus(&mut self) {
        let now = now_ms();
        for i in 0..self.panels.len() {
            let p = &self.panels[i];
            if !p.control.open {
                continue;
            }
            let live = p.link.state() == StreamState::Live;
            let text = p.control.menu_status(&p.desktop.name, live, now);
            if text == p.menu_text {
                continue;
            }
            self.panels[i].menu_text = text.clone();
            self.draw_menu(i, &text);
            self.redraw = true;
        }
    }

    fn draw_menu(&mut self, i: usize, status: &str) {
        let Some(ctx) = &self.extras.big_ctx else { return };
        let (w, h) = (MENU_W as f64, MENU_H as f64);
        ctx.clear_rect(0.0, 0.0, w, h);
        ctx.set_fill_style_str("rgba(12,14,20,0.92)");
        ctx.fill_rect(0.0, 0.0, w, h);
        let n = MENU_ITEMS.len() as f64;
        let bw = w / n;
        ctx.set_font("26px system-ui, sans-serif");
        ctx.set_text_baseline("middle");
        ctx.set_text_align("center");
        for (k, item) in MENU_ITEMS.iter().enumerate() {
            let x = k as f64 * bw;
            let (fill, text, sub) = match item {
                crate::control::MenuItem::Do(a) if a.destructive() => ("#5a2323", a.label(), "hold 1 s"),
                crate::control::MenuItem::Do(a) => ("#1f4a2e", a.label(), "click"),
                crate::control::MenuItem::Close => ("#2a3040", "Close", ""),
            };
            ctx.set_fill_style_str(fill);
            ctx.fill_rect(x + 4.0, 4.0, bw - 8.0, MENU_BUTTONS_H as f64 - 8.0);
            ctx.set_fill_style_str("#f2f4f8");
            let _ = ctx.fill_text(text, x + bw / 2.0, 30.0);
            ctx.set_font("18px system-ui, sans-serif");
            ctx.set_fill_style_str("#c0c4d0");
            let _ = ctx.fill_text(sub, x + bw / 2.0, 58.0);
            ctx.set_font("26px system-ui, sans-serif");
        }
        ctx.set_text_align("left");
        ctx.set_font("22px system-ui, sans-serif");
        ctx.set_fill_style_str("#f2f4f8");
        let _ = ctx.fill_text_with_max_width(status, 10.0, (MENU_BUTTONS_H as f64 + h) / 2.0, w - 20.0);
        let Ok(data) = ctx.get_image_data(0, 0, MENU_W as i32, MENU_H as i32) else { return };
        let pixels = data.data().0;
        for g in [self.gfx.as_mut(), self.xr_gfx.as_mut()].into_iter().flatten() {
            g.renderer.write_rgba(&g.device, &g.queue, Tex::Menu(i), MENU_W, MENU_H, &pixels);
        }
    }

    /// Redraws every open menu (a new device needs them).
    pub(super) fn redraw_menus(&mut self) {
        for p in &mut self.panels {
            p.menu_text.clear();
        }
        self.extras.keyboard_drawn = None;
        self.update_menus();
    }
}

/// The caption's menu button, drawn at its right end (from `CAPTION_BUTTON_U`).
pub(super) fn draw_caption_button(ctx: &web_sys::CanvasRenderingContext2d, w: f64, open: bool) {
    let x = w * crate::control::CAPTION_BUTTON_U as f64;
    let h = LABEL_H as f64;
    ctx.set_fill_style_str(if open { "#2f6fed" } else { "#2a3040" });
    ctx.fill_rect(x + 2.0, 2.0, w - x - 4.0, h - 4.0);
    ctx.set_fill_style_str("#f2f4f8");
    ctx.set_font("24px system-ui, sans-serif");
    ctx.set_text_align("center");
    let _ = ctx.fill_text("☰ VM", (x + w) / 2.0, h / 2.0 + 1.0);
    ctx.set_text_align("left");
}
