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
    pub backend: Backend,
    pub canvas: HtmlCanvasElement,
    pub gl: Option<WebGl2RenderingContext>,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    pub renderer: Renderer,
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
        Ok(Gfx { backend, canvas, gl, device, queue, surface, config, renderer })
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
