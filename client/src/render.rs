//! The wgpu renderer: draws a list of [`Quad`]s for one or more views into a texture view it
//! is handed. It knows nothing of WebXR, canvases or the browser: the web front end decides
//! what the target is (a canvas surface, the `XRWebGLLayer` framebuffer, or an offscreen
//! texture in tests) and which view/projection matrices and viewports to use.
//!
//! One pipeline: position + uv + colour, `textureSample × colour`, straight-alpha blending, no
//! depth buffer (the scene is drawn in painter's order), no culling (so a Y-flipped projection
//! for GL framebuffers needs no winding change). [`Tex::Hole`] quads use the same shader with
//! blending off: they replace what is under them with transparent black, for a compositor layer
//! beneath the target to show through.

use std::collections::HashMap;

use bytemuck::{Pod, Zeroable};
use glam::Mat4;

use crate::scene::{Quad, Tex};

const SHADER: &str = r#"
struct ViewUniform { view_proj: mat4x4<f32> };
@group(0) @binding(0) var<uniform> u: ViewUniform;
@group(1) @binding(0) var t: texture_2d<f32>;
@group(1) @binding(1) var s: sampler;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) uv: vec2<f32>,
    @location(1) color: vec4<f32>,
};

@vertex
fn vs(@location(0) pos: vec3<f32>, @location(1) uv: vec2<f32>, @location(2) color: vec4<f32>) -> VsOut {
    var o: VsOut;
    o.pos = u.view_proj * vec4<f32>(pos, 1.0);
    o.uv = uv;
    o.color = color;
    return o;
}

@fragment
fn fs(i: VsOut) -> @location(0) vec4<f32> {
    return textureSample(t, s, i.uv) * i.color;
}
"#;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Vertex {
    pos: [f32; 3],
    uv: [f32; 2],
    color: [f32; 4],
}

/// Uniform slots are this far apart (WebGPU's minimum dynamic-offset alignment).
const UNIFORM_STRIDE: u64 = 256;
/// Most views drawn in one call (two eyes, with room to spare).
const MAX_VIEWS: u64 = 4;

/// What one `render` call draws: `quads` for each of `views` into `target`, cleared to
/// `clear` first.
pub struct Frame<'a> {
    pub target: &'a wgpu::TextureView,
    pub views: &'a [View],
    pub quads: &'a [Quad],
    pub clear: [f64; 4],
}

/// One view of the scene: its view-projection matrix (wgpu clip space, z in 0..1) and the
/// viewport in target pixels (x, y, width, height; y down from the top).
#[derive(Debug, Clone, Copy)]
pub struct View {
    pub view_proj: Mat4,
    pub viewport: [f32; 4],
}

struct Slot {
    texture: wgpu::Texture,
    bind_group: wgpu::BindGroup,
    size: (u32, u32),
}

pub struct Renderer {
    pipeline: wgpu::RenderPipeline,
    /// The same without blending, for [`Tex::Hole`].
    hole_pipeline: wgpu::RenderPipeline,
    texture_layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    uniforms: wgpu::Buffer,
    uniform_bind_group: wgpu::BindGroup,
    vertices: wgpu::Buffer,
    vertex_capacity: u64,
    slots: HashMap<Tex, Slot>,
    scratch: Vec<Vertex>,
}

/// How the video and caption textures are made: sampled, written by `write_texture` and by
/// `copy_external_image_to_texture` (which WebGPU wants to be a render attachment too).
const TEXTURE_USAGE: wgpu::TextureUsages = wgpu::TextureUsages::TEXTURE_BINDING
    .union(wgpu::TextureUsages::COPY_DST)
    .union(wgpu::TextureUsages::RENDER_ATTACHMENT);

/// Texture format of videos and captions. Not sRGB: the bytes are already sRGB-encoded and the
/// targets are non-sRGB too, so they pass through unchanged.
pub const TEXTURE_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

impl Renderer {
    /// A renderer drawing into targets of `target_format`.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, target_format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("loco scene"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let uniform_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("view"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(64),
                },
                count: None,
            }],
        });
        let texture_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("texture"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: true },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("loco scene"),
            bind_group_layouts: &[Some(&uniform_layout), Some(&texture_layout)],
            immediate_size: 0,
        });
        let pipeline_with = |label: &str, blend: Option<wgpu::BlendState>| {
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some(label),
                layout: Some(&layout),
                vertex: wgpu::VertexState {
                    module: &module,
                    entry_point: Some("vs"),
                    compilation_options: Default::default(),
                    buffers: &[Some(wgpu::VertexBufferLayout {
                        array_stride: std::mem::size_of::<Vertex>() as u64,
                        step_mode: wgpu::VertexStepMode::Vertex,
                        attributes: &wgpu::vertex_attr_array![0 => Float32x3, 1 => Float32x2, 2 => Float32x4],
                    })],
                },
                primitive: wgpu::PrimitiveState { cull_mode: None, ..Default::default() },
                depth_stencil: None,
                multisample: wgpu::MultisampleState::default(),
                fragment: Some(wgpu::FragmentState {
                    module: &module,
                    entry_point: Some("fs"),
                    compilation_options: Default::default(),
                    targets: &[Some(wgpu::ColorTargetState {
                        format: target_format,
                        blend,
                        write_mask: wgpu::ColorWrites::ALL,
                    })],
                }),
                multiview_mask: None,
                cache: None,
            })
        };
        let pipeline = pipeline_with("loco scene", Some(wgpu::BlendState::ALPHA_BLENDING));
        let hole_pipeline = pipeline_with("loco holes", None);
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("linear clamp"),
            address_mode_u: wgpu::AddressMode::ClampToEdge,
            address_mode_v: wgpu::AddressMode::ClampToEdge,
            address_mode_w: wgpu::AddressMode::ClampToEdge,
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("views"),
            size: UNIFORM_STRIDE * MAX_VIEWS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let uniform_bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("views"),
            layout: &uniform_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniforms,
                    offset: 0,
                    size: wgpu::BufferSize::new(64),
                }),
            }],
        });
        let vertex_capacity = 1024;
        let vertices = Self::vertex_buffer(device, vertex_capacity);
        let mut renderer = Renderer {
            pipeline,
            hole_pipeline,
            texture_layout,
            sampler,
            uniforms,
            uniform_bind_group,
            vertices,
            vertex_capacity,
            slots: HashMap::new(),
            scratch: Vec::new(),
        };
        renderer.write_rgba(device, queue, Tex::White, 1, 1, &[255, 255, 255, 255]);
        renderer
    }

    fn vertex_buffer(device: &wgpu::Device, capacity: u64) -> wgpu::Buffer {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("quads"),
            size: capacity * std::mem::size_of::<Vertex>() as u64,
            usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// The texture behind `tex`, created (or re-created at a new size) as `width` × `height`.
    /// Returns it so that the caller can copy into it (e.g. a video frame).
    pub fn texture(&mut self, device: &wgpu::Device, tex: Tex, width: u32, height: u32) -> &wgpu::Texture {
        let (width, height) = (width.max(1), height.max(1));
        let stale = self.slots.get(&tex).is_none_or(|s| s.size != (width, height));
        if stale {
            let texture = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("panel"),
                size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: TEXTURE_FORMAT,
                usage: TEXTURE_USAGE,
                view_formats: &[],
            });
            let view = texture.create_view(&Default::default());
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("panel"),
                layout: &self.texture_layout,
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::TextureView(&view) },
                    wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::Sampler(&self.sampler) },
                ],
            });
            self.slots.insert(tex, Slot { texture, bind_group, size: (width, height) });
        }
        &self.slots[&tex].texture
    }

    /// Whether `tex` has a texture yet.
    pub fn has(&self, tex: Tex) -> bool {
        self.slots.contains_key(&tex)
    }

    /// Forgets `tex` (a panel went away or its stream restarted).
    pub fn remove(&mut self, tex: Tex) {
        self.slots.remove(&tex);
    }

    /// Fills `tex` with tightly packed RGBA8 pixels.
    pub fn write_rgba(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        tex: Tex,
        width: u32,
        height: u32,
        rgba: &[u8],
    ) {
        assert_eq!(rgba.len(), (width * height * 4) as usize, "RGBA buffer does not match its size");
        let texture = self.texture(device, tex, width, height);
        queue.write_texture(
            texture.as_image_copy(),
            rgba,
            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(width * 4), rows_per_image: Some(height) },
            wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
        );
    }

    /// Records the drawing of a [`Frame`]. Quads whose texture does not exist are skipped.
    pub fn render(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        frame: &Frame<'_>,
    ) {
        let Frame { target, views, quads, clear } = *frame;
        // Vertices, six per quad, and the draws: runs of quads sharing a texture.
        self.scratch.clear();
        let mut runs: Vec<(Tex, u32, u32)> = Vec::new();
        for q in quads {
            if !self.slots.contains_key(&slot_of(q.tex)) {
                continue;
            }
            let start = self.scratch.len() as u32;
            for k in [0usize, 1, 2, 0, 2, 3] {
                self.scratch.push(Vertex { pos: q.corners[k].to_array(), uv: q.uv[k].to_array(), color: q.color });
            }
            match runs.last_mut() {
                Some((tex, _, end)) if *tex == q.tex => *end = start + 6,
                _ => runs.push((q.tex, start, start + 6)),
            }
        }
        let needed = self.scratch.len() as u64;
        if needed > self.vertex_capacity {
            self.vertex_capacity = needed.next_power_of_two();
            self.vertices = Self::vertex_buffer(device, self.vertex_capacity);
        }
        if !self.scratch.is_empty() {
            queue.write_buffer(&self.vertices, 0, bytemuck::cast_slice(&self.scratch));
        }
        let views = &views[..views.len().min(MAX_VIEWS as usize)];
        for (i, v) in views.iter().enumerate() {
            queue.write_buffer(
                &self.uniforms,
                i as u64 * UNIFORM_STRIDE,
                bytemuck::cast_slice(&v.view_proj.to_cols_array()),
            );
        }

        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("loco scene"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: target,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color { r: clear[0], g: clear[1], b: clear[2], a: clear[3] }),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_vertex_buffer(0, self.vertices.slice(..));
        for (i, v) in views.iter().enumerate() {
            let [x, y, w, h] = v.viewport;
            if w < 1.0 || h < 1.0 {
                continue;
            }
            pass.set_viewport(x, y, w, h, 0.0, 1.0);
            pass.set_bind_group(0, &self.uniform_bind_group, &[(i as u64 * UNIFORM_STRIDE) as u32]);
            let mut holes = false;
            for (tex, start, end) in &runs {
                if (*tex == Tex::Hole) != holes {
                    holes = *tex == Tex::Hole;
                    pass.set_pipeline(if holes { &self.hole_pipeline } else { &self.pipeline });
                }
                pass.set_bind_group(1, &self.slots[&slot_of(*tex)].bind_group, &[]);
                pass.draw(*start..*end, 0..1);
            }
            if holes {
                pass.set_pipeline(&self.pipeline);
            }
        }
    }
}

/// The texture a quad samples: a hole is drawn with the white one.
fn slot_of(tex: Tex) -> Tex {
    if tex == Tex::Hole {
        Tex::White
    } else {
        tex
    }
}

/// WebXR (and OpenGL) projection matrices map depth to −1..1; wgpu's clip space wants 0..1.
pub fn gl_to_wgpu_depth() -> Mat4 {
    Mat4::from_cols_array(&[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.5, 1.0])
}

/// Flips clip-space Y, for targets stored bottom-up (a GL framebuffer wrapped as a texture).
pub fn flip_y() -> Mat4 {
    Mat4::from_scale(glam::Vec3::new(1.0, -1.0, 1.0))
}
