//! WebXR media layers, carried out (see [`crate::medialayers`] for the what and why).
//!
//! Once the session runs on its `XRWebGLLayer` (the fallback, and what the Layers polyfill
//! sizes its layers from), [`MediaLayers::start`] makes an `XRWebGLBinding`, an
//! `XRMediaBinding` and a projection layer, and switches the session to
//! `layers: [projection]`. Each frame [`App::media_layers_frame`] makes a quad layer for every
//! panel that went live (`createQuadLayer(video, …)` on the panel's own `<video>`), moves the ones
//! whose panel moved, and puts them under the projection layer, farthest first. The scene is
//! then drawn into the projection layer's colour textures (each wrapped in a WebGL framebuffer of
//! our own, for wgpu), with a hole over each panel a layer shows. Those panels' frames are no
//! longer copied into textures.

use glam::Vec3;
use wasm_bindgen::prelude::*;
use web_sys::{WebGl2RenderingContext as Gl, WebGlFramebuffer, WebGlTexture, XrReferenceSpace, XrSession};

use super::App;
use crate::medialayers::{decide, layer_order, LayerAction, PanelLayerInput, QuadPlacement};
use crate::xrsettings::LayersMode;

#[wasm_bindgen(inline_js = r#"
export function layers_api() {
  return typeof XRMediaBinding === "function" && typeof XRWebGLBinding === "function"
    && typeof XRWebGLBinding.prototype.createProjectionLayer === "function";
}
export function make_layers(session, gl, scale, foveation) {
  const binding = new XRWebGLBinding(session, gl);
  const media = new XRMediaBinding(session);
  const projection = binding.createProjectionLayer({
    textureType: "texture", colorFormat: gl.RGBA8, depthFormat: 0, scaleFactor: scale,
  });
  if ("fixedFoveation" in projection) projection.fixedFoveation = foveation;
  return { binding, media, projection };
}
function transform(p) {
  return new XRRigidTransform({ x: p[0], y: p[1], z: p[2] }, { x: p[3], y: p[4], z: p[5], w: p[6] });
}
export function make_quad(media, video, space, p, w, h) {
  return media.createQuadLayer(video, { space, layout: "mono", transform: transform(p), width: w, height: h });
}
export function place_quad(layer, p, w, h) {
  layer.transform = transform(p);
  layer.width = w;
  layer.height = h;
}
export function drop_quad(layer) {
  if (typeof layer.destroy === "function") layer.destroy();
}
export function set_layers(session, layers) {
  session.updateRenderState({ layers });
}
export function sub_image(binding, layer, view) {
  const s = binding.getViewSubImage(layer, view);
  const v = s.viewport;
  const w = s.colorTextureWidth ?? s.textureWidth ?? layer.textureWidth;
  const h = s.colorTextureHeight ?? s.textureHeight ?? layer.textureHeight;
  return { texture: s.colorTexture, x: v.x, y: v.y, w: v.width, h: v.height, tw: w, th: h };
}
"#)]
extern "C" {
    fn layers_api() -> bool;
    #[wasm_bindgen(catch)]
    fn make_layers(session: &XrSession, gl: &Gl, scale: f64, foveation: f32) -> Result<Bindings, JsValue>;
    #[wasm_bindgen(catch)]
    fn make_quad(
        media: &JsValue,
        video: &web_sys::HtmlVideoElement,
        space: &XrReferenceSpace,
        pose: &[f32],
        width: f32,
        height: f32,
    ) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch)]
    fn place_quad(layer: &JsValue, pose: &[f32], width: f32, height: f32) -> Result<(), JsValue>;
    #[wasm_bindgen(catch)]
    fn drop_quad(layer: &JsValue) -> Result<(), JsValue>;
    #[wasm_bindgen(catch)]
    fn set_layers(session: &XrSession, layers: &js_sys::Array) -> Result<(), JsValue>;
    #[wasm_bindgen(catch)]
    fn sub_image(binding: &JsValue, layer: &JsValue, view: &web_sys::XrView) -> Result<SubImage, JsValue>;

    type Bindings;
    #[wasm_bindgen(method, getter)]
    fn binding(this: &Bindings) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn media(this: &Bindings) -> JsValue;
    #[wasm_bindgen(method, getter)]
    fn projection(this: &Bindings) -> JsValue;

    type SubImage;
    #[wasm_bindgen(method, getter)]
    fn texture(this: &SubImage) -> Option<WebGlTexture>;
    #[wasm_bindgen(method, getter)]
    fn x(this: &SubImage) -> i32;
    #[wasm_bindgen(method, getter)]
    fn y(this: &SubImage) -> i32;
    #[wasm_bindgen(method, getter)]
    fn w(this: &SubImage) -> i32;
    #[wasm_bindgen(method, getter)]
    fn h(this: &SubImage) -> i32;
    #[wasm_bindgen(method, getter)]
    fn tw(this: &SubImage) -> u32;
    #[wasm_bindgen(method, getter)]
    fn th(this: &SubImage) -> u32;
}

/// Whether this browser has the WebXR Layers API with media layers.
pub(super) fn available() -> bool {
    layers_api()
}

/// One panel's quad layer.
struct Quad {
    layer: JsValue,
    /// The video size it was made for.
    video_size: (u32, u32),
    placed: QuadPlacement,
}

/// Framebuffers of our own around the projection layer's colour textures (a runtime may hand
/// out a few in turn), most recent last.
const FRAMEBUFFERS_KEPT: usize = 8;

pub(super) struct MediaLayers {
    binding: JsValue,
    media: JsValue,
    projection: JsValue,
    quads: Vec<Option<Quad>>,
    /// The panels in the session's `layers` (under the projection layer), in order.
    order: Vec<usize>,
    framebuffers: Vec<(WebGlTexture, WebGlFramebuffer)>,
    /// Quad layers made and re-made (a video changed size), for the hook.
    pub made: u32,
}

/// One view's target in the projection layer.
pub(super) struct ViewTarget {
    pub framebuffer: WebGlFramebuffer,
    /// The colour texture's size.
    pub size: (u32, u32),
    /// x, y (from the bottom), width, height in that texture.
    pub viewport: [i32; 4],
}

fn pose(p: &QuadPlacement) -> [f32; 7] {
    let (t, q) = (p.position, p.orientation);
    [t.x, t.y, t.z, q.x, q.y, q.z, q.w]
}

impl MediaLayers {
    /// Makes the bindings and the projection layer and switches the session to it.
    pub(super) fn start(
        session: &XrSession,
        gl: &Gl,
        scale: f64,
        foveation: f32,
        panels: usize,
    ) -> Result<Self, String> {
        let b = make_layers(session, gl, scale, foveation).map_err(|e| super::util::js_error(&e))?;
        let me = MediaLayers {
            binding: b.binding(),
            media: b.media(),
            projection: b.projection(),
            quads: (0..panels).map(|_| None).collect(),
            order: Vec::new(),
            framebuffers: Vec::new(),
            made: 0,
        };
        me.apply(session)?;
        Ok(me)
    }

    fn apply(&self, session: &XrSession) -> Result<(), String> {
        let layers = js_sys::Array::new();
        for &i in &self.order {
            if let Some(q) = &self.quads[i] {
                layers.push(&q.layer);
            }
        }
        layers.push(&self.projection);
        set_layers(session, &layers).map_err(|e| super::util::js_error(&e))
    }

    /// The projection layer's target for `view`, as a framebuffer wgpu can draw into.
    pub(super) fn target(&mut self, gl: &Gl, view: &web_sys::XrView) -> Result<ViewTarget, String> {
        let s = sub_image(&self.binding, &self.projection, view).map_err(|e| super::util::js_error(&e))?;
        let texture = s.texture().ok_or("the projection layer gave no colour texture")?;
        let framebuffer = match self.framebuffers.iter().find(|(t, _)| *t == texture) {
            Some((_, fb)) => fb.clone(),
            None => {
                let fb = gl.create_framebuffer().ok_or("no framebuffer")?;
                gl.bind_framebuffer(Gl::FRAMEBUFFER, Some(&fb));
                gl.framebuffer_texture_2d(Gl::FRAMEBUFFER, Gl::COLOR_ATTACHMENT0, Gl::TEXTURE_2D, Some(&texture), 0);
                let status = gl.check_framebuffer_status(Gl::FRAMEBUFFER);
                gl.bind_framebuffer(Gl::FRAMEBUFFER, None);
                if status != Gl::FRAMEBUFFER_COMPLETE {
                    gl.delete_framebuffer(Some(&fb));
                    return Err(format!(
                        "the projection layer's texture makes an incomplete framebuffer (0x{status:x})"
                    ));
                }
                if self.framebuffers.len() >= FRAMEBUFFERS_KEPT {
                    let (_, old) = self.framebuffers.remove(0);
                    gl.delete_framebuffer(Some(&old));
                }
                self.framebuffers.push((texture, fb.clone()));
                fb
            }
        };
        Ok(ViewTarget { framebuffer, size: (s.tw(), s.th()), viewport: [s.x(), s.y(), s.w(), s.h()] })
    }

    /// Which quad layers each panel has, for the hook: (panel, placement, video size).
    pub(super) fn quads(&self) -> Vec<(usize, QuadPlacement, (u32, u32))> {
        self.order.iter().filter_map(|&i| self.quads[i].as_ref().map(|q| (i, q.placed, q.video_size))).collect()
    }
}

/// `?layers=`, whether the browser has the API, and what happened when it was tried.
#[derive(Default)]
pub(super) struct LayersState {
    pub mode: LayersMode,
    pub available: bool,
    pub active: Option<MediaLayers>,
    pub error: Option<String>,
}

impl App {
    /// Makes, moves and orders the panels' quad layers for this frame; sets each panel's
    /// `through_layer`. Returns false when media layers are not in use.
    pub(super) fn media_layers_frame(&mut self, space: &XrReferenceSpace, eye: Vec3) -> bool {
        let Some(xr) = self.xr.as_mut() else { return false };
        let Some(ml) = xr.layers.active.as_mut() else { return false };
        let mut changed = false;
        let mut errors = Vec::new();
        for (i, p) in self.panels.iter_mut().enumerate() {
            let Some(panel) = self.layout.get(i) else { continue };
            let video_size = (p.video.video_width(), p.video.video_height());
            let input = PanelLayerInput {
                live: p.link.state() == crate::scene::StreamState::Live && p.video.ready_state() >= 2,
                video_size,
                layer_size: ml.quads[i].as_ref().map(|q| q.video_size),
            };
            let (action, through) = decide(&input);
            let placed = QuadPlacement::of(panel);
            if matches!(action, LayerAction::Create | LayerAction::Recreate) {
                if let Some(old) = ml.quads[i].take() {
                    let _ = drop_quad(&old.layer);
                }
                match make_quad(&ml.media, &p.video, space, &pose(&placed), placed.width, placed.height) {
                    Ok(layer) => {
                        ml.quads[i] = Some(Quad { layer, video_size, placed });
                        ml.made += 1;
                        changed = true;
                    }
                    Err(e) => errors.push(format!("panel {i}: {}", super::util::js_error(&e))),
                }
            } else if let Some(q) = ml.quads[i].as_mut() {
                if q.placed.differs(&placed) {
                    match place_quad(&q.layer, &pose(&placed), placed.width, placed.height) {
                        Ok(()) => q.placed = placed,
                        Err(e) => errors.push(format!("panel {i}: {}", super::util::js_error(&e))),
                    }
                }
            }
            let through = through && ml.quads[i].is_some();
            if p.through_layer && !through {
                // Back to its texture: copy the video's current picture once.
                p.new_frame.set(true);
            }
            p.through_layer = through;
        }
        let with: Vec<usize> = (0..ml.quads.len()).filter(|&i| ml.quads[i].is_some()).collect();
        let order = layer_order(&self.layout, &with, eye);
        if changed || order != ml.order {
            ml.order = order;
            if let Err(e) = ml.apply(&xr.session) {
                errors.push(e);
            }
        }
        if let Some(e) = errors.pop() {
            web_sys::console::warn_1(&format!("loco: media layers: {e}").into());
            xr.layers.error = Some(e);
        }
        true
    }
}

/// Undoes `through_layer` for every panel (the session ended or left media layers).
pub(super) fn release_panels(app: &mut App) {
    for p in &mut app.panels {
        if p.through_layer {
            p.through_layer = false;
            p.new_frame.set(true);
        }
    }
}
