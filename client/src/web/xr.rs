//! The WebXR session: entering and leaving it, its frame loop, and the controllers (through
//! [`crate::pointer::Hand`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use glam::{Mat4, Quat, Vec3};
use loco_shared::controller::GamepadState;
use loco_shared::layout::WallOrigin;
use loco_shared::protocol::InputMessage;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{HtmlCanvasElement, HtmlElement, XrFrame, XrReferenceSpace, XrSession, XrWebGlLayer};

use super::boot::query_param;
use super::flat::start_flat_loop;
use super::gfx::{Backend, Gfx};
use super::medialayers::{LayersState, MediaLayers};
use super::util::{document, js_error, now_ms, window};
use super::{App, Looping, Shared, Xr, LABEL_H, LABEL_W};
use crate::arrange::Placement;
use crate::pointer::Pad;
use crate::render::{flip_y, gl_to_wgpu_depth, View};
use crate::scene;
use crate::scene::UiHit;
use crate::xrsettings::{choose_frame_rate, LayersMode, XrPath, XrSettings};

impl App {
    pub(super) fn frame_xr(&mut self, frame: &XrFrame) {
        let t0 = now_ms();
        let Some(xr) = self.xr.as_mut() else { return };
        let space = xr.space.clone();
        let media = xr.layers.active.is_some();
        // The session's layer now: it may be replaced mid-session (a new size or scale).
        let layer = if media {
            xr.layer.clone()
        } else {
            let layer = xr.session.render_state().base_layer().unwrap_or_else(|| xr.layer.clone());
            if layer != xr.layer {
                xr.setup.adopt(&layer);
                xr.layer = layer.clone();
            }
            layer
        };
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
        self.sound.set_listener(crate::audio::Listener::from_pose(head_pos, head_rot));
        self.xr_input(frame, &space, head_pos, head_rot);
        self.control_frame();
        self.extras_frame();
        if self.extras.keyboard.visible {
            self.update_keyboard_texture();
        }
        if media {
            self.media_layers_frame(&space, self.origin.eye);
        }
        self.upload_videos(true);
        let quads = scene::build(&self.scene());
        if media {
            self.draw_media_layers(&pose, &quads, t0);
            return;
        }

        let fb = layer.framebuffer();
        let (fw, fh) = (layer.framebuffer_width(), layer.framebuffer_height());
        let flip = if fb.is_some() { flip_y() } else { Mat4::IDENTITY };
        let mut views = Vec::new();
        let mut viewports = Vec::new();
        for v in pose.views().iter() {
            let v: web_sys::XrView = v.unchecked_into();
            let Some(vp) = layer.get_viewport(&v) else { continue };
            viewports.push([vp.x(), vp.y(), vp.width(), vp.height()]);
            let proj = Mat4::from_cols_slice(&v.projection_matrix());
            let view = Mat4::from_cols_slice(&v.transform().inverse().matrix());
            // XR viewports count y from the bottom; wgpu's from the top of the target.
            let y = if fb.is_some() { vp.y() } else { fh as i32 - vp.y() - vp.height() };
            views.push(View {
                view_proj: flip * gl_to_wgpu_depth() * proj * view,
                viewport: [vp.x() as f32, y as f32, vp.width() as f32, vp.height() as f32],
            });
        }
        let eyes: Vec<Mat4> = views.iter().map(|v| v.view_proj).collect();
        self.attention_frame(Some(&eyes));
        if let Some(x) = self.xr.as_mut() {
            x.setup.path = Some(if fb.is_some() { XrPath::Framebuffer } else { XrPath::Canvas });
            x.setup.framebuffer = (fw, fh);
            x.setup.viewports = viewports;
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

    /// Draws the scene into the projection layer (over the panels' media layers), each view
    /// into its sub-image. A failure leaves media layers for the `XRWebGLLayer` from the next
    /// frame on, and says why in the hook.
    fn draw_media_layers(&mut self, pose: &web_sys::XrViewerPose, quads: &[scene::Quad], t0: f64) {
        let Some(gl) = self.xr_gfx.as_ref().or(self.gfx.as_ref()).and_then(|g| g.gl.clone()) else { return };
        // Straight from the view to its target: views sharing a texture are drawn in one pass.
        let mut targets: Vec<(super::medialayers::ViewTarget, Vec<View>)> = Vec::new();
        let mut viewports = Vec::new();
        let mut size = (0, 0);
        let mut failed = None;
        {
            let Some(xr) = self.xr.as_mut() else { return };
            let Some(ml) = xr.layers.active.as_mut() else { return };
            for v in pose.views().iter() {
                let v: web_sys::XrView = v.unchecked_into();
                let t = match ml.target(&gl, &v) {
                    Ok(t) => t,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                let [x, y, w, h] = t.viewport;
                viewports.push(t.viewport);
                size = t.size;
                let proj = Mat4::from_cols_slice(&v.projection_matrix());
                let view = Mat4::from_cols_slice(&v.transform().inverse().matrix());
                let view = View {
                    // Bottom-up GL texture: flipped, and the viewport's y counts from the bottom.
                    view_proj: flip_y() * gl_to_wgpu_depth() * proj * view,
                    viewport: [x as f32, y as f32, w as f32, h as f32],
                };
                match targets.iter_mut().find(|(o, _)| o.framebuffer == t.framebuffer) {
                    Some((_, views)) => views.push(view),
                    None => targets.push((t, vec![view])),
                }
            }
        }
        if let Some(e) = failed {
            self.leave_media_layers(e);
            return;
        }
        let eyes: Vec<Mat4> = targets.iter().flat_map(|(_, vs)| vs.iter().map(|v| v.view_proj)).collect();
        self.attention_frame(Some(&eyes));
        if let Some(x) = self.xr.as_mut() {
            x.setup.path = Some(XrPath::MediaLayers);
            x.setup.framebuffer = size;
            x.setup.viewports = viewports;
        }
        let Some(g) = self.xr_gfx.as_mut().or(self.gfx.as_mut()) else { return };
        let t1 = now_ms();
        for (t, views) in &targets {
            let texture = g.wrap_xr_framebuffer(t.framebuffer.clone(), t.size.0, t.size.1);
            let target = texture.create_view(&Default::default());
            g.draw(&target, views, quads);
        }
        self.budget.record(self.uploads_this_frame, now_ms() - t1);
        self.account(now_ms() - t0);
    }

    /// Back to the `XRWebGLLayer` (media layers failed mid-session).
    fn leave_media_layers(&mut self, why: String) {
        web_sys::console::warn_1(&format!("loco: media layers off: {why}").into());
        let Some(xr) = self.xr.as_mut() else { return };
        xr.layers.active = None;
        xr.layers.error = Some(why);
        let state = web_sys::XrRenderStateInit::new();
        state.set_base_layer(Some(&xr.layer));
        xr.session.update_render_state_with_state(&state);
        super::medialayers::release_panels(self);
    }

    pub(super) fn xr_input(&mut self, frame: &XrFrame, space: &XrReferenceSpace, head_pos: Vec3, head_rot: Quat) {
        let sizes = self.desktop_sizes();
        let kb_corners = self.keyboard_corners();
        let open: Vec<usize> = (0..self.panels.len()).filter(|&i| self.panels[i].control.open).collect();
        let Some(xr) = self.xr.as_mut() else { return };
        let sources = xr.session.input_sources();
        let t_ms = now_ms();
        let now = Duration::from_secs_f64(t_ms / 1000.0);
        let aspect = LABEL_W as f32 / LABEL_H as f32;
        let mut pointers = Vec::new();
        let mut sends: Vec<(usize, InputMessage)> = Vec::new();
        let mut focus = None;
        let (mut toggle_hud, mut recentre, mut toggle_keyboard) = (false, false, false);
        let mut seen = [false; 2];
        let mut actions: Vec<UiAction> = Vec::new();
        let mut moved: Vec<(String, Placement)> = Vec::new();
        let (mut save, mut reset_wall) = (false, false);
        for k in 0..sources.length() {
            let Some(src) = sources.get(k) else { continue };
            let slot = match src.handedness() {
                web_sys::XrHandedness::Left => 0,
                _ => 1,
            };
            let mode = src.target_ray_mode();
            if matches!(mode, web_sys::XrTargetRayMode::Gaze | web_sys::XrTargetRayMode::Screen) {
                continue;
            }
            let Some(pose) = frame.get_pose(&src.target_ray_space(), space) else { continue };
            seen[slot] = true;
            let t = pose.transform();
            let origin = point3(&t.position());
            let dir = quat(&t.orientation()) * Vec3::NEG_Z;
            let mut pad = src.gamepad().map(|g| gamepad_state(&g)).unwrap_or_default();
            // Hands (and transient pointers): the pinch (`select`) is the trigger; nothing else.
            let transient = mode != web_sys::XrTargetRayMode::TrackedPointer;
            if src.hand().is_some() || transient {
                let pinch = xr.select[slot].get() || transient || pad.pad.trigger >= 0.6;
                pad = Pad {
                    pad: GamepadState { trigger: if pinch { 1.0 } else { 0.0 }, ..Default::default() },
                    ..Default::default()
                };
            }
            let hand = &mut xr.hands[slot];
            let ui = if hand.captured.is_none() && hand.grab.is_none() {
                let kb = kb_corners.as_ref().map(|c| (c, &self.extras.keyboard.keys[..]));
                scene::pick_ui(&self.layout, aspect, &open, kb, origin, dir)
            } else {
                None
            };
            let on_panel = loco_shared::layout::pick(&self.layout, origin, dir).is_some();
            let trig = hand.ui_trigger(ui.is_some(), &pad);
            if trig.pressed {
                if let Some((hit, _, _)) = ui {
                    xr.ui_press[slot] = Some(hit);
                    actions.push(UiAction::Press(slot, hit));
                }
            } else if trig.released {
                if let Some(hit) = xr.ui_press[slot].take() {
                    actions.push(UiAction::Release(slot, hit));
                }
            } else if let Some(UiHit::Menu(i, Some(item))) = xr.ui_press[slot] {
                // A hold ends when the ray leaves its item.
                if ui.map(|u| u.0) != Some(UiHit::Menu(i, Some(item))) {
                    xr.ui_press[slot] = None;
                    actions.push(UiAction::Release(slot, UiHit::Menu(i, None)));
                }
            }
            // The grip on a panel's frame pulls it along the ray.
            let (closed, opened) = hand.grip_edges(&pad);
            if opened && hand.grab.take().is_some() {
                save = true;
            }
            if closed && hand.captured.is_none() && hand.grab.is_none() && ui.is_none() && !on_panel {
                if let Some((i, _)) = crate::arrange::pick_frame(&self.layout, origin, dir) {
                    let start = self.extras.arrangement.placed.get(&self.panels[i].desktop.name).copied().unwrap_or(
                        Placement { distance_m: self.layout[i].center.distance(self.origin.eye), scale: 1.0 },
                    );
                    hand.grab = Some(crate::arrange::Grab::new(i, origin, dir, start, t_ms));
                }
            }
            if trig.edge
                && ui.is_none()
                && !on_panel
                && hand.captured.is_none()
                && hand.grab.is_none()
                && crate::arrange::pick_frame(&self.layout, origin, dir).is_none()
                && self.extras.double_tap.tap(t_ms)
            {
                reset_wall = true;
            }
            let panels: &[loco_shared::layout::Panel] =
                if ui.is_some() || hand.grab.is_some() { &[] } else { &self.layout };
            let mut out = hand.frame(now, panels, &sizes, origin, dir, hand.panel_pad(pad));
            if let Some(g) = hand.grab.as_mut() {
                let pl = g.update(origin, pad.pad.thumbstick_y, t_ms);
                moved.push((self.panels[g.panel].desktop.name.clone(), pl));
                if let Some(p) = out.pointer.as_mut() {
                    p.end = self.layout[g.panel].center;
                    p.pressed = true;
                }
            }
            // A ray on one of the scene's controls ends there, with a cursor.
            if let (Some((_, point, n)), Some(p)) = (ui, out.pointer.as_mut()) {
                p.end = point;
                p.hit = Some((point, n));
            }
            sends.extend(out.sends);
            focus = out.focus.or(focus);
            toggle_hud |= out.toggle_hud;
            recentre |= out.recentre;
            toggle_keyboard |= out.toggle_keyboard;
            pointers.extend(out.pointer);
        }
        // A controller that went away releases what it held.
        for (slot, hand) in xr.hands.iter_mut().enumerate() {
            if !seen[slot] {
                sends.extend(hand.gone(|i| self.panels[i].last_pointer.map(|(x, y, _)| (x, y))));
                hand.ui_held = false;
                if hand.grab.take().is_some() {
                    save = true;
                }
                if let Some(hit) = xr.ui_press[slot].take() {
                    actions.push(UiAction::Release(slot, hit));
                }
            }
        }
        self.send_all(sends);
        for a in actions {
            self.ui_action(a, t_ms);
        }
        if focus.is_some() {
            self.set_focus(focus);
        }
        self.pointers = pointers;
        if toggle_hud {
            self.hud = !self.hud;
            self.update_labels();
        }
        if toggle_keyboard {
            self.toggle_keyboard();
        }
        let relayout = !moved.is_empty() || reset_wall;
        for (name, pl) in moved {
            self.extras.arrangement.placed.insert(name, pl);
        }
        if reset_wall {
            self.extras.arrangement.placed.clear();
            self.show_message("the wall is back in place".into());
            save = true;
        }
        if save {
            self.save_arrangement();
        }
        if recentre {
            self.origin = WallOrigin::facing(head_pos, head_rot);
            self.relayout();
        } else if relayout {
            self.relayout();
        }
    }

    /// A hand pressed or let go of one of the scene's controls.
    fn ui_action(&mut self, a: UiAction, now: f64) {
        match a {
            UiAction::Press(slot, UiHit::Key(k)) => {
                let keys = self.extras.keyboard.press(slot, k, now);
                if let Some(i) = self.focus {
                    self.send_keys(i, &keys);
                }
                self.update_keyboard_texture();
            }
            UiAction::Release(slot, UiHit::Key(_)) => {
                let keys = self.extras.keyboard.release(slot);
                if let Some(i) = self.focus {
                    self.send_keys(i, &keys);
                }
            }
            UiAction::Press(_, UiHit::Menu(i, Some(item))) => {
                if let Some(action) = self.panels[i].control.press(item, now) {
                    self.control_action(i, action);
                }
                self.update_menus();
            }
            UiAction::Release(_, UiHit::Menu(i, _)) => self.panels[i].control.release(),
            UiAction::Press(_, UiHit::Caption(i)) => self.toggle_mute(i),
            UiAction::Press(_, UiHit::CaptionButton(i)) => self.toggle_menu(i),
            _ => {}
        }
    }
}

/// The session's settings (`?scale=`, `?foveation=`, `?fps=`), what was asked of the session, and
/// what its last frame drew into; `window.__loco.xr` shows them.
#[derive(Default)]
pub(super) struct XrSetup {
    settings: XrSettings,
    /// The rate passed to `updateTargetFrameRate`, and the rates the session offered.
    target_rate: Option<f32>,
    supported: Vec<f32>,
    pub path: Option<XrPath>,
    pub framebuffer: (u32, u32),
    pub viewports: Vec<[i32; 4]>,
}

impl XrSetup {
    /// A layer the session draws into from now on: no fixed foveation unless asked for
    /// (`fixedFoveation` where the layer has it: Quest Browser; a headset's default may be on).
    fn adopt(&self, layer: &XrWebGlLayer) {
        if js_sys::Reflect::has(layer, &"fixedFoveation".into()).unwrap_or(false) {
            layer.set_fixed_foveation(Some(self.settings.foveation));
        }
    }

    /// Asks for the configured display rate (the nearest offered) where the session can change it.
    fn set_frame_rate(&mut self, session: &XrSession) {
        self.supported = session.supported_frame_rates().unwrap_or_default();
        let can = js_sys::Reflect::get(session, &"updateTargetFrameRate".into()).is_ok_and(|f| f.is_function());
        self.target_rate = if can { choose_frame_rate(&self.supported, self.settings.fps) } else { None };
        if let Some(rate) = self.target_rate {
            let promise = session.update_target_frame_rate(rate);
            spawn_local(async move {
                if let Err(e) = JsFuture::from(promise).await {
                    web_sys::console::warn_1(&format!("loco: no {rate} Hz: {}", js_error(&e)).into());
                }
            });
        }
    }
}

impl App {
    pub(super) fn xr_snapshot(&self) -> crate::hook::XrSnapshot {
        let mut s =
            crate::hook::XrSnapshot { supported: self.xr_supported, active: self.xr.is_some(), ..Default::default() };
        let Some(xr) = self.xr.as_ref() else { return s };
        s.backend = self.xr_gfx.as_ref().or(self.gfx.as_ref()).map(|g| g.backend.as_str());
        s.path = xr.setup.path.map(XrPath::as_str);
        (s.framebuffer_width, s.framebuffer_height) = xr.setup.framebuffer;
        s.viewports = xr.setup.viewports.clone();
        s.scale = Some(xr.setup.settings.scale);
        if js_sys::Reflect::has(&xr.layer, &"fixedFoveation".into()).unwrap_or(false) {
            s.foveation = xr.layer.fixed_foveation().map(f64::from);
        }
        s.frame_rate = xr.session.frame_rate().map(f64::from);
        s.target_frame_rate = xr.setup.target_rate.map(f64::from);
        s.supported_frame_rates = xr.setup.supported.iter().copied().map(f64::from).collect();
        s.layers_mode = Some(xr.layers.mode.as_str());
        s.layers_available = xr.layers.available;
        s.layers_error = xr.layers.error.clone();
        if let Some(ml) = xr.layers.active.as_ref() {
            s.layers_active = true;
            s.media_layers_made = ml.made;
            s.media_layers = ml
                .quads()
                .into_iter()
                .map(|(panel, q, (vw, vh))| crate::hook::MediaLayerSnapshot {
                    panel,
                    position: q.position.to_array(),
                    orientation: q.orientation.to_array(),
                    width: q.width,
                    height: q.height,
                    video_width: vw,
                    video_height: vh,
                })
                .collect();
        }
        s.through_layer = (0..self.panels.len()).filter(|&i| self.panels[i].through_layer).collect();
        s
    }
}

/// What a hand did to one of the scene's controls.
#[derive(Debug, Clone, Copy)]
enum UiAction {
    Press(usize, UiHit),
    Release(usize, UiHit),
}

pub(super) fn point3(p: &web_sys::DomPointReadOnly) -> Vec3 {
    Vec3::new(p.x() as f32, p.y() as f32, p.z() as f32)
}

pub(super) fn quat(p: &web_sys::DomPointReadOnly) -> Quat {
    Quat::from_xyzw(p.x() as f32, p.y() as f32, p.z() as f32, p.w() as f32).normalize()
}

/// Trigger, squeeze and thumbstick (xr-standard mapping), plus the A/X (HUD) and B/Y
/// (recentre) buttons and the thumbstick press (keyboard).
pub(super) fn gamepad_state(g: &web_sys::Gamepad) -> Pad {
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
    Pad {
        pad: GamepadState { trigger: value(0), squeeze: value(1), thumbstick_y: thumb_y },
        hud: value(4) > 0.5,
        recentre: value(5) > 0.5,
        keyboard: value(3) > 0.5,
    }
}

// ---------------------------------------------------------------------- WebXR session

pub(super) fn setup_xr_button(shared: &Shared) {
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
        // The click is the gesture that lets sound start (autoplay rules).
        if let Ok(mut app) = s.try_borrow_mut() {
            app.sound.gesture();
        }
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

pub(super) async fn enter_xr(shared: &Shared) -> Result<(), String> {
    let xr = window().navigator().xr();
    let init = web_sys::XrSessionInit::new();
    init.set_required_features(&[JsValue::from_str("local-floor")]);
    // Hands: their rays and pinches work like controllers (`select` is the trigger).
    // Layers: the panels' videos as media layers where the browser has them (`?layers=`).
    init.set_optional_features(&[JsValue::from_str("hand-tracking"), JsValue::from_str("layers")]);
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
    let settings = XrSettings::from_params(
        query_param("scale").as_deref(),
        query_param("foveation").as_deref(),
        query_param("fps").as_deref(),
    );
    let layer_init = web_sys::XrWebGlLayerInit::new();
    layer_init.set_framebuffer_scale_factor(settings.scale);
    let layer = XrWebGlLayer::new_with_web_gl2_rendering_context_and_layer_init(&session, &gl, &layer_init)
        .map_err(|e| js_error(&e))?;
    let mut setup = XrSetup { settings, ..Default::default() };
    setup.adopt(&layer);
    let state = web_sys::XrRenderStateInit::new();
    state.set_base_layer(Some(&layer));
    session.update_render_state_with_state(&state);
    setup.set_frame_rate(&session);
    // Media layers over that layer where wanted and possible; the layer stays as the fallback.
    let mut layers = LayersState {
        mode: LayersMode::from_param(query_param("layers").as_deref()),
        available: super::medialayers::available(),
        ..Default::default()
    };
    if layers.mode.wants(layers.available) {
        let panels = shared.borrow().panels.len();
        match MediaLayers::start(&session, &gl, settings.scale, settings.foveation, panels) {
            Ok(m) => layers.active = Some(m),
            Err(e) => {
                web_sys::console::warn_1(&format!("loco: no media layers ({e}); videos as textures").into());
                layers.error = Some(e);
            }
        }
    } else if layers.mode == LayersMode::On {
        layers.error = Some("this browser has no WebXR media layers (XRMediaBinding)".into());
    }
    let space: XrReferenceSpace =
        JsFuture::from(session.request_reference_space(web_sys::XrReferenceSpaceType::LocalFloor))
            .await
            .map_err(|e| js_error(&e))?
            .unchecked_into();
    {
        let mut app = shared.borrow_mut();
        let select: Rc<[std::cell::Cell<bool>; 2]> = Rc::new(Default::default());
        for (name, down) in [("selectstart", true), ("selectend", false)] {
            let sel = select.clone();
            let cb = Closure::<dyn FnMut(web_sys::XrInputSourceEvent)>::new(move |ev: web_sys::XrInputSourceEvent| {
                let slot = match ev.input_source().handedness() {
                    web_sys::XrHandedness::Left => 0,
                    _ => 1,
                };
                sel[slot].set(down);
            });
            let _ = session.add_event_listener_with_callback(name, cb.as_ref().unchecked_ref());
            cb.forget();
        }
        app.xr = Some(Xr {
            session: session.clone(),
            space,
            layer,
            recentred: false,
            hands: Default::default(),
            ui_press: [None; 2],
            select,
            setup,
            layers,
        });
        app.pointers.clear();
        app.flat.pointer.captured = None;
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
            super::medialayers::release_panels(&mut app);
            let up = app.extras.keyboard.release_all();
            if let Some(i) = app.focus {
                app.send_keys(i, &up);
            }
            // A grip still held when the session ended: keep where the panel got to.
            app.save_arrangement();
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
