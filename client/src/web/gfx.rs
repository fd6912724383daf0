//! A wgpu device on a canvas: WebGPU where the browser has it (flat view), WebGL2 otherwise
//! and always inside WebXR (the `XRWebGLLayer` needs a WebGL2 context made `xrCompatible`).

use wasm_bindgen::JsCast;
use web_sys::{HtmlCanvasElement, WebGl2RenderingContext};

use crate::render::{Frame, Renderer, View};
use crate::scene::{Quad, CLEAR};

use super::util::{js_error, set};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    WebGpu,
    WebGl2,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::WebGpu => "webgpu",
            Backend::WebGl2 => "webgl2",
        }
    }
}

pub struct Gfx {
    /// Kept alive with the device: in Chromium, a WebGPU device whose instance and adapter are
    /// garbage-collected is lost ("A valid external Instance reference no longer exists").
    _instance: wgpu::Instance,
    _adapter: wgpu::Adapter,
    pub backend: Backend,
    pub canvas: HtmlCanvasElement,
    pub gl: Option<WebGl2RenderingContext>,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    pub renderer: Renderer,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gfx {
    /// A device on `canvas`. For WebGL2 the context is created here first, `xrCompatible`, so
    /// that the same context can back an `XRWebGLLayer`; wgpu then gets that context back.
    pub async fn new(canvas: HtmlCanvasElement, backend: Backend) -> Result<Gfx, String> {
        let gl = match backend {
            Backend::WebGl2 => {
                let opts = js_sys::Object::new();
                set(&opts, "xrCompatible", true);
                set(&opts, "antialias", false);
                set(&opts, "alpha", false);
                set(&opts, "depth", false);
                set(&opts, "premultipliedAlpha", false);
                let ctx = canvas
                    .get_context_with_context_options("webgl2", &opts)
                    .map_err(|e| format!("WebGL2 is not available: {}", js_error(&e)))?
                    .ok_or("this browser has no WebGL2 (needed to draw the scene)")?;
                Some(ctx.unchecked_into::<WebGl2RenderingContext>())
            }
            Backend::WebGpu => None,
        };
        let backends = match backend {
            Backend::WebGpu => wgpu::Backends::BROWSER_WEBGPU,
            Backend::WebGl2 => wgpu::Backends::GL,
        };
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let surface = instance
            .create_surface(wgpu::SurfaceTarget::Canvas(canvas.clone()))
            .map_err(|e| format!("cannot draw into the canvas with {}: {e}", backend.as_str()))?;
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: Some(&surface),
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| format!("no {} adapter: {e}", backend.as_str()))?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("loco"),
                required_features: wgpu::Features::empty(),
                required_limits: wgpu::Limits::downlevel_webgl2_defaults().using_resolution(adapter.limits()),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("no {} device: {e}", backend.as_str()))?;
        let name = backend.as_str();
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason == wgpu::DeviceLostReason::Destroyed {
                return; // we dropped it
            }
            web_sys::console::warn_1(&format!("loco: the {name} device was lost ({reason:?}: {message})").into());
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            web_sys::console::error_1(&format!("loco: {name}: {e}").into());
        }));
        let caps = surface.get_capabilities(&adapter);
        // Not sRGB: video and caption bytes are already sRGB-encoded and must pass unchanged.
        let format = [wgpu::TextureFormat::Rgba8Unorm, wgpu::TextureFormat::Bgra8Unorm]
            .into_iter()
            .find(|f| caps.formats.contains(f))
            .or_else(|| caps.formats.first().copied())
            .ok_or("the canvas offers no texture format")?;
        let config = wgpu::SurfaceConfiguration {
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
            format,
            color_space: Default::default(),
            width: canvas.width().max(1),
            height: canvas.height().max(1),
            present_mode: wgpu::PresentMode::Fifo,
            desired_maximum_frame_latency: 2,
            alpha_mode: caps.alpha_modes.first().copied().unwrap_or(wgpu::CompositeAlphaMode::Auto),
            view_formats: vec![],
        };
        surface.configure(&device, &config);
        let renderer = Renderer::new(&device, &queue, format);
        Ok(Gfx {
            _instance: instance,
            _adapter: adapter,
            backend,
            canvas,
            gl,
            device,
            queue,
            surface,
            config,
            renderer,
            lost,
        })
    }

    /// The browser took the device away (the page then starts over on a fresh WebGL2 canvas).
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reconfigures the surface when the canvas's drawing buffer changed size.
    pub fn resize(&mut self, width: u32, height: u32) {
        let (width, height) = (width.max(1), height.max(1));
        if self.canvas.width() != width {
            self.canvas.set_width(width);
        }
        if self.canvas.height() != height {
            self.canvas.set_height(height);
        }
        if (self.config.width, self.config.height) != (width, height) {
            self.config.width = width;
            self.config.height = height;
            self.surface.configure(&self.device, &self.config);
        }
    }

    pub fn size(&self) -> (u32, u32) {
        (self.config.width, self.config.height)
    }

    /// Draws `quads` for `views` into the canvas.
    pub fn draw_to_canvas(&mut self, views: &[View], quads: &[Quad]) -> Result<(), String> {
        let frame = match self.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(f) | wgpu::CurrentSurfaceTexture::Suboptimal(f) => f,
            other => {
                self.surface.configure(&self.device, &self.config);
                return Err(format!("no canvas texture this frame: {other:?}"));
            }
        };
        let view = frame.texture.create_view(&Default::default());
        self.draw(&view, views, quads);
        self.queue.present(frame);
        Ok(())
    }

    /// Draws into any texture view of this device.
    pub fn draw(&mut self, target: &wgpu::TextureView, views: &[View], quads: &[Quad]) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.renderer.render(&self.device, &self.queue, &mut encoder, &Frame { target, views, quads, clear: CLEAR });
        self.queue.submit([encoder.finish()]);
    }

    /// The `XRWebGLLayer`'s opaque framebuffer as a wgpu render target (WebGL2 devices only).
    /// wgpu's GL backend draws textures bottom-up, so draw into it with a Y-flipped projection.
    pub fn wrap_xr_framebuffer(&self, fb: web_sys::WebGlFramebuffer, width: u32, height: u32) -> wgpu::Texture {
        const GL_RGBA8: u32 = 0x8058;
        const GL_RGBA: u32 = 0x1908;
        const GL_UNSIGNED_BYTE: u32 = 0x1401;
        let hal = wgpu_hal::gles::Texture {
            inner: wgpu_hal::gles::TextureInner::ExternalFramebuffer { inner: fb },
            mip_level_count: 1,
            array_layer_count: 1,
            format: wgpu::TextureFormat::Rgba8Unorm,
            format_desc: wgpu_hal::gles::TextureFormatDesc {
                internal: GL_RGBA8,
                external: GL_RGBA,
                data_type: GL_UNSIGNED_BYTE,
            },
            copy_size: wgpu_hal::CopyExtent { width, height, depth: 1 },
            drop_guard: None,
        };
        let desc = wgpu::TextureDescriptor {
            label: Some("XRWebGLLayer framebuffer"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
            view_formats: &[],
        };
        // SAFETY: the framebuffer belongs to this device's WebGL2 context (the layer was made
        // from it), and the texture lives only for this XR frame.
        unsafe {
            self.device.create_texture_from_hal::<wgpu_hal::api::Gles>(hal, &desc, wgpu::TextureUses::COLOR_TARGET)
        }
    }
}

impl Gfx {
    /// Draws `quads` for `views` into an offscreen `width` × `height` texture of the canvas's
    /// format and starts reading it back: what the canvas would show, readable on every
    /// backend (a WebGPU canvas cannot be read back once presented). The device stays usable
    /// while the read-back is awaited with [`PendingCapture::finish`].
    pub fn capture(&mut self, views: &[View], quads: &[Quad], width: u32, height: u32) -> PendingCapture {
        let format = self.config.format;
        let target = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("capture"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let view = target.create_view(&Default::default());
        let padded = (width * 4).div_ceil(256) * 256;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("capture readback"),
            size: u64::from(padded * height),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        self.renderer.render(
            &self.device,
            &self.queue,
            &mut encoder,
            &Frame { target: &view, views, quads, clear: CLEAR },
        );
        encoder.copy_texture_to_buffer(
            target.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(padded),
                    rows_per_image: Some(height),
                },
            },
            wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
        );
        self.queue.submit([encoder.finish()]);
        let done: MapResult = Default::default();
        let flag = done.clone();
        buffer.slice(..).map_async(wgpu::MapMode::Read, move |r| *flag.borrow_mut() = Some(r));
        PendingCapture {
            device: self.device.clone(),
            buffer,
            done,
            width,
            height,
            padded,
            bgra: matches!(format, wgpu::TextureFormat::Bgra8Unorm | wgpu::TextureFormat::Bgra8UnormSrgb),
        }
    }
}

type MapResult = std::rc::Rc<std::cell::RefCell<Option<Result<(), wgpu::BufferAsyncError>>>>;

/// A capture whose pixels are on their way back.
pub struct PendingCapture {
    device: wgpu::Device,
    buffer: wgpu::Buffer,
    done: MapResult,
    width: u32,
    height: u32,
    padded: u32,
    bgra: bool,
}

impl PendingCapture {
    /// The pixels as RGBA8 rows, top row first.
    pub async fn finish(self) -> Result<Vec<u8>, String> {
        for _ in 0..500 {
            let _ = self.device.poll(wgpu::PollType::Poll);
            if self.done.borrow().is_some() {
                break;
            }
            super::util::sleep(5).await;
        }
        match self.done.borrow_mut().take() {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("capture: {e}")),
            None => return Err("capture: the read-back did not finish in 2.5 s".into()),
        }
        let data = self.buffer.slice(..).get_mapped_range().map_err(|e| format!("capture: {e:?}"))?;
        let mut out = Vec::with_capacity((self.width * self.height * 4) as usize);
        for row in 0..self.height {
            let start = (row * self.padded) as usize;
            for px in data[start..start + (self.width * 4) as usize].chunks_exact(4) {
                if self.bgra {
                    out.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
                } else {
                    out.extend_from_slice(px);
                }
            }
        }
        Ok(out)
    }
}
