//! Video frames: each `<video>`'s `requestVideoFrameCallback` marks its panel stale (after
//! grabbing the frame as an ImageBitmap); the next drawn frame copies it into the texture.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::HtmlVideoElement;

use super::gfx::Backend;
use super::util::{self, now_ms, window};
use super::{App, Looping};
use crate::scene::Tex;

#[wasm_bindgen(inline_js = r#"
export function request_video_frame(video, cb) {
  if (typeof video.requestVideoFrameCallback === "function") return video.requestVideoFrameCallback(cb);
  return -1;
}
"#)]
extern "C" {
    /// `HTMLVideoElement.requestVideoFrameCallback` (no web-sys binding yet); −1 if missing.
    fn request_video_frame(video: &HtmlVideoElement, cb: &js_sys::Function) -> i32;
}

thread_local! {
    pub(super) static NO_FRAME_CALLBACKS: Cell<bool> = const { Cell::new(false) };
    /// `?upload=video`: copy straight from the `<video>`; default: grab each new frame as an
    /// ImageBitmap first (see `watch_frames`).
    pub(super) static UPLOAD_FROM_VIDEO: Cell<bool> = const { Cell::new(false) };
}

/// A panel's newest frame, grabbed as an ImageBitmap, waiting to be uploaded.
pub(super) type Grabbed = Rc<RefCell<Option<web_sys::ImageBitmap>>>;

impl App {
    /// Copies each panel's newest decoded frame into its texture; true if any was new.
    /// Copies the newest decoded frame of panels that have one into their textures — as many
    /// as the frame budget affords, those waiting longest first; true if any was copied.
    pub(super) fn upload_videos(&mut self, xr: bool) -> bool {
        self.uploads_this_frame = 0;
        let every_frame = NO_FRAME_CALLBACKS.with(|f| f.get());
        let mut waiting: Vec<usize> = (0..self.panels.len())
            .filter(|&i| {
                let p = &self.panels[i];
                // HAVE_CURRENT_DATA: before that, WebGPU's copyExternalImageToTexture throws
                // (and wgpu turns that into a panic).
                (p.new_frame.get() || every_frame)
                    && !(xr && p.through_layer)
                    && p.session.is_some()
                    && p.video.video_width() > 0
                    && p.video.ready_state() >= 2
            })
            .collect();
        waiting.sort_by(|&a, &b| self.panels[a].uploaded_at.total_cmp(&self.panels[b].uploaded_at));
        waiting.truncate(self.budget.allowed());
        let Some(g) = (if xr { self.xr_gfx.as_mut().or(self.gfx.as_mut()) } else { self.gfx.as_mut() }) else {
            return false;
        };
        let now = now_ms();
        let mut uploaded = 0;
        for &i in &waiting {
            let p = &mut self.panels[i];
            let grabbed = p.grabbed.borrow_mut().take();
            let source = match grabbed {
                // WebGPU copies straight from the video (no blocking there; ImageBitmap sources
                // were seen to make Chromium's copyExternalImageToTexture throw).
                Some(bitmap) if g.backend == Backend::WebGpu => {
                    bitmap.close();
                    wgpu::ExternalImageSource::HTMLVideoElement(p.video.clone())
                }
                Some(bitmap) => wgpu::ExternalImageSource::ImageBitmap(bitmap),
                // `?upload=video`, or a new device that needs the current picture again.
                None => wgpu::ExternalImageSource::HTMLVideoElement(p.video.clone()),
            };
            let (w, h) = (source.width(), source.height());
            p.new_frame.set(false);
            p.uploaded_at = now;
            p.uploads += 1;
            let texture = g.renderer.texture(&g.device, Tex::Video(i), w, h).clone();
            g.queue.copy_external_image_to_texture(
                &wgpu::CopyExternalImageSourceInfo {
                    source: source.clone(),
                    origin: wgpu::Origin2d::ZERO,
                    flip_y: false,
                },
                wgpu::CopyExternalImageDestInfo {
                    texture: &texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                    color_space: wgpu::PredefinedColorSpace::Srgb,
                    premultiplied_alpha: false,
                },
                wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
            );
            if let wgpu::ExternalImageSource::ImageBitmap(b) = source {
                // The copy runs at the next submit: close the bitmap after that.
                self.used_bitmaps.push(b);
            }
            p.has_video = true;
            uploaded += 1;
        }
        self.uploads_this_frame = uploaded;
        uploaded > 0
    }
}

/// Marks `new_frame` on every decoded frame the video presents. Unless `?upload=video`, the
/// frame is first grabbed with `createImageBitmap` (the browser converts it off the render
/// loop) and `new_frame` is set once the bitmap is ready: copying from the `<video>` itself
/// was measured to block the render loop for 90 ms to seconds per frame in Chromium with
/// software decoding and SwiftShader.
pub(super) fn watch_frames(
    video: &HtmlVideoElement,
    new_frame: Rc<Cell<bool>>,
    grabbed: Grabbed,
    presented: Rc<Cell<u32>>,
) -> Looping<dyn FnMut(f64, JsValue)> {
    let slot: Looping<dyn FnMut(f64, JsValue)> = Rc::new(RefCell::new(None));
    let again = slot.clone();
    let v = video.clone();
    let grabbing = Rc::new(Cell::new(false));
    *slot.borrow_mut() = Some(Closure::new(move |_now: f64, meta: JsValue| {
        let n = util::num(&meta, "presentedFrames").map(|n| n as u32).unwrap_or(presented.get() + 1);
        presented.set(n);
        if UPLOAD_FROM_VIDEO.with(|f| f.get()) {
            new_frame.set(true);
        } else if !grabbing.get() {
            if let Ok(promise) = window().create_image_bitmap_with_html_video_element(&v) {
                grabbing.set(true);
                let (grabbing, grabbed, new_frame) = (grabbing.clone(), grabbed.clone(), new_frame.clone());
                spawn_local(async move {
                    if let Ok(bitmap) = JsFuture::from(promise).await {
                        if let Some(old) = grabbed.borrow_mut().replace(bitmap.unchecked_into()) {
                            old.close();
                        }
                        new_frame.set(true);
                    }
                    grabbing.set(false);
                });
            }
        }
        if let Some(cb) = again.borrow().as_ref() {
            request_video_frame(&v, cb.as_ref().unchecked_ref());
        }
    }));
    if let Some(cb) = slot.borrow().as_ref() {
        if request_video_frame(video, cb.as_ref().unchecked_ref()) < 0 {
            // No frame callbacks in this browser: upload from the video on every drawn frame.
            NO_FRAME_CALLBACKS.with(|f| f.set(true));
            UPLOAD_FROM_VIDEO.with(|f| f.set(true));
        }
    }
    slot
}
