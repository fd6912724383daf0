//! Captions and HUD lines: their text comes from [`crate::captions`]; this draws it into a
//! 2D canvas and uploads it into each device's textures when it changes.

use super::util::now_ms;
use super::{App, LABEL_H, LABEL_W};
use crate::captions::{self, CaptionInput};
use crate::scene::{StreamState, Tex};

impl App {
    pub(super) fn update_labels(&mut self) {
        let now = now_ms();
        for i in 0..self.panels.len() {
            let p = &self.panels[i];
            let vm = p.control.caption_part(p.link.state() == StreamState::Live, now);
            let label = captions::caption(&CaptionInput {
                name: &p.desktop.name,
                state: p.link.state(),
                video_size: p.video_size,
                error: p.link.error(),
                retry_in_ms: p.link.retry_in_ms(now),
                focused: self.focus == Some(i),
                audio: self.sound.panels[i].status(),
                vm: vm.as_deref(),
            });
            // The menu button's look goes with the text.
            let label = if p.control.open { format!("{label}\u{0}") } else { label };
            let hud = if self.hud {
                let line = captions::hud_line(p.stats.fps, p.kbps, p.stats.rtt_ms, p.stats.frames_decoded);
                let codec = p.stats.codec.as_deref().and_then(crate::decoder::Codec::parse).map(|c| c.as_str());
                let line = match captions::hud_decoder(
                    codec,
                    p.stats.decoder_implementation.as_deref(),
                    p.stats.power_efficient,
                ) {
                    Some(d) => format!("{line}  ·  {d}"),
                    None => line,
                };
                let line = match p.attention.state {
                    Some(a) => format!("{line}  ·  {}", a.label()),
                    None => line,
                };
                let sound = &self.sound.panels[i];
                match captions::hud_audio(sound.status(), sound.level()) {
                    Some(a) => format!("{line}  ·  {a}"),
                    None => line,
                }
            } else {
                String::new()
            };
            let state = p.link.state();
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
    pub(super) fn draw_text(&mut self, tex: Tex, text: &str, state: StreamState, hud: bool) {
        let Some(ctx) = &self.label_ctx else { return };
        let (w, h) = (LABEL_W as f64, LABEL_H as f64);
        ctx.clear_rect(0.0, 0.0, w, h);
        ctx.set_fill_style_str(if hud { "rgba(0,0,0,0.72)" } else { "rgba(12,14,20,0.85)" });
        ctx.fill_rect(0.0, 0.0, w, h);
        let dot = captions::state_colour(state);
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
        let open = text.ends_with('\u{0}');
        let text = text.trim_end_matches('\u{0}');
        let right = if hud { w - 8.0 } else { w * crate::control::CAPTION_BUTTON_U as f64 - 8.0 };
        let _ = ctx.fill_text_with_max_width(text, x, h / 2.0 + 1.0, right - x);
        if !hud {
            super::control::draw_caption_button(ctx, w, open);
        }
        let Ok(data) = ctx.get_image_data(0, 0, LABEL_W as i32, LABEL_H as i32) else { return };
        let pixels = data.data().0;
        for g in [self.gfx.as_mut(), self.xr_gfx.as_mut()].into_iter().flatten() {
            g.renderer.write_rgba(&g.device, &g.queue, tex, LABEL_W, LABEL_H, &pixels);
        }
    }

    /// Re-renders every caption (a new device needs them).
    pub(super) fn redraw_labels(&mut self) {
        for p in &mut self.panels {
            p.label.clear();
            p.hud.clear();
            p.new_frame.set(p.has_video);
        }
        self.update_labels();
        self.redraw_menus();
    }
}
