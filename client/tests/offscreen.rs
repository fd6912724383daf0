//! The renderer drawn offscreen on a real wgpu device (Vulkan or GL; on a machine without a
//! GPU, Mesa's lavapipe/llvmpipe), compared with a reference image, plus checks that do not
//! depend on the reference: each panel's video lands where the layout says, the right way up,
//! and the focus frame and cursor are where they should be.
//!
//! `LOCO_UPDATE_REFERENCE=1 cargo test -p loco-client --test offscreen` rewrites the reference.

use std::path::PathBuf;

use glam::Vec3;
use loco_client::camera::FlatCamera;
use loco_client::render::{Frame, Renderer, View, TEXTURE_FORMAT};
use loco_client::scene::{self, PanelView, Pointer, SceneInput, StreamState, Tex, CLEAR};
use loco_shared::layout::{layout, WallConfig, WallOrigin};

const W: u32 = 480;
const H: u32 = 270;
const VIDEO: (u32, u32) = (64, 48);

fn panel_color(i: usize) -> [u8; 4] {
    let palette = [
        [220, 60, 60],
        [60, 180, 75],
        [70, 110, 230],
        [40, 90, 60],
        [160, 70, 200],
        [40, 200, 200],
        [240, 130, 40],
        [150, 150, 150],
        [250, 110, 180],
    ];
    let c = palette[i % palette.len()];
    [c[0], c[1], c[2], 255]
}

/// A desktop frame: the panel's colour with a white block in its top-left quarter.
fn video_frame(i: usize) -> Vec<u8> {
    let (w, h) = VIDEO;
    let mut px = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            let white = x < w / 2 && y < h / 2;
            px.extend_from_slice(&if white { [255, 255, 255, 255] } else { panel_color(i) });
        }
    }
    px
}

fn device() -> (wgpu::Device, wgpu::Queue, String) {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::GL;
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("no wgpu adapter: install a Vulkan or GL driver (Debian: mesa-vulkan-drivers)");
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("offscreen test"),
        required_limits: wgpu::Limits::downlevel_webgl2_defaults().using_resolution(adapter.limits()),
        ..Default::default()
    }))
    .expect("no wgpu device");
    (device, queue, format!("{} ({:?})", info.name, info.backend))
}

/// Renders the nine-panel wall with panel 4 focused and a controller pointing at panel 5.
/// The wall of nine with a cursor on panel 5 (focus on panel 4); `through_layer` panels are
/// drawn as holes, as under media layers.
fn render(through_layer: &[usize]) -> (Vec<u8>, Vec<loco_shared::layout::Panel>, FlatCamera, String) {
    let (device, queue, adapter) = device();
    let mut renderer = Renderer::new(&device, &queue, TEXTURE_FORMAT);
    let origin = WallOrigin::default();
    let panels = layout(&WallConfig::default(), &origin, &[VIDEO.0 as f32 / VIDEO.1 as f32; 9]);
    for i in 0..9 {
        renderer.write_rgba(&device, &queue, Tex::Video(i), VIDEO.0, VIDEO.1, &video_frame(i));
        renderer.write_rgba(&device, &queue, Tex::Label(i), 2, 1, &[30, 30, 40, 230, 30, 30, 40, 230]);
    }
    let views: Vec<PanelView> = panels
        .iter()
        .enumerate()
        .map(|(i, p)| PanelView {
            panel: *p,
            state: StreamState::Live,
            focused: i == 4,
            has_video: true,
            through_layer: through_layer.contains(&i),
            label_aspect: Some(24.0),
            hud_aspect: None,
        })
        .collect();
    let c = panels[5].corners();
    let hit = c[0] + (c[1] - c[0]) * 0.75 + (c[3] - c[0]) * 0.75;
    let pointers = vec![Pointer {
        origin: Vec3::new(0.25, 1.1, -0.3),
        end: hit,
        hit: Some((hit, panels[5].normal())),
        pressed: false,
        beam: true,
    }];
    let quads = scene::build(&SceneInput { panels: views, pointers, floor_center: Vec3::ZERO, ..Default::default() });
    let camera = FlatCamera::behind(origin.eye, origin.yaw_rad);

    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("offscreen"),
        size: wgpu::Extent3d { width: W, height: H, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: TEXTURE_FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let view = target.create_view(&Default::default());
    let padded = (W * 4).div_ceil(256) * 256;
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: (padded * H) as u64,
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    let v = View { view_proj: camera.view_proj(W as f32, H as f32), viewport: [0.0, 0.0, W as f32, H as f32] };
    renderer.render(&device, &queue, &mut encoder, &Frame { target: &view, views: &[v], quads: &quads, clear: CLEAR });
    encoder.copy_texture_to_buffer(
        target.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &readback,
            layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(padded), rows_per_image: Some(H) },
        },
        wgpu::Extent3d { width: W, height: H, depth_or_array_layers: 1 },
    );
    queue.submit([encoder.finish()]);
    readback.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let data = readback.slice(..).get_mapped_range().expect("mapped range");
    let mut pixels = Vec::with_capacity((W * H * 4) as usize);
    for row in 0..H {
        let start = (row * padded) as usize;
        pixels.extend_from_slice(&data[start..start + (W * 4) as usize]);
    }
    (pixels, panels, camera, adapter)
}

fn pixel(img: &[u8], x: f32, y: f32) -> [u8; 4] {
    let (x, y) = (x.round() as u32, y.round() as u32);
    let k = ((y.min(H - 1) * W + x.min(W - 1)) * 4) as usize;
    [img[k], img[k + 1], img[k + 2], img[k + 3]]
}

fn close(a: [u8; 4], b: [u8; 4], tol: i32) -> bool {
    (0..3).all(|k| (a[k] as i32 - b[k] as i32).abs() <= tol)
}

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/wall.png")
}

fn write_png(path: &std::path::Path, img: &[u8]) {
    let file = std::fs::File::create(path).expect("create png");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().expect("png header").write_image_data(img).expect("png data");
}

fn read_png(path: &std::path::Path) -> Vec<u8> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).expect("reference image")));
    let mut reader = dec.read_info().expect("png info");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!((info.width, info.height), (W, H), "reference image size");
    buf.truncate(info.buffer_size());
    buf
}

#[test]
fn wall_renders_like_the_reference_and_where_the_layout_says() {
    let (img, panels, camera, adapter) = render(&[]);
    println!("adapter: {adapter}");

    // Every panel's video is where the layout puts it, the right way up: its colour at
    // (0.75, 0.75), the white block at (0.25, 0.25).
    for (i, p) in panels.iter().enumerate() {
        let c = p.corners();
        let at = |u: f32, v: f32| {
            let world = c[0] + (c[1] - c[0]) * u + (c[3] - c[0]) * v;
            let s = camera.project(world, W as f32, H as f32).expect("panel in front of the camera");
            pixel(&img, s.x, s.y)
        };
        if i != 5 {
            // (Panel 5 has the cursor at 0.75, 0.75.)
            assert!(close(at(0.75, 0.75), panel_color(i), 12), "panel {i}: {:?} at (0.75, 0.75)", at(0.75, 0.75));
        }
        assert!(close(at(0.25, 0.25), [255, 255, 255, 255], 12), "panel {i} upside down? {:?}", at(0.25, 0.25));
        assert!(close(at(0.25, 0.8), panel_color(i), 12), "panel {i}: {:?} at (0.25, 0.8)", at(0.25, 0.8));
    }
    // The focus frame (amber) just outside panel 4's left edge; none beside panel 3. The frame
    // is 12 mm wide, about a pixel here: look in a 5×5 neighbourhood.
    let amber_near = |i: usize| {
        let c = panels[i].corners();
        let mid_left = (c[0] + c[3]) / 2.0 - panels[i].right * 0.006;
        let s = camera.project(mid_left, W as f32, H as f32).unwrap();
        (-2..=2).any(|dy| {
            (-2..=2).any(|dx| {
                let p = pixel(&img, s.x + dx as f32, s.y + dy as f32);
                p[0] > 200 && p[1] > 150 && p[2] < 100
            })
        })
    };
    assert!(amber_near(4), "no focus frame around panel 4");
    assert!(!amber_near(3), "a focus frame around unfocused panel 3");

    let path = reference_path();
    if std::env::var_os("LOCO_UPDATE_REFERENCE").is_some() {
        write_png(&path, &img);
        println!("wrote {}", path.display());
        return;
    }
    let reference = read_png(&path);
    let mut worst = 0i32;
    let mut off = 0usize;
    let mut sum = 0u64;
    for (a, b) in img.chunks(4).zip(reference.chunks(4)) {
        let d = (0..3).map(|k| (a[k] as i32 - b[k] as i32).abs()).max().unwrap_or(0);
        worst = worst.max(d);
        sum += d as u64;
        if d > 24 {
            off += 1;
        }
    }
    let mean = sum as f64 / (W * H) as f64;
    let share = off as f64 / (W * H) as f64;
    println!(
        "vs reference: mean channel difference {mean:.3}, {off} pixels off by > 24 ({:.3} %), worst {worst}",
        share * 100.0
    );
    if mean > 1.5 || share > 0.005 {
        let out = std::env::temp_dir().join("loco-offscreen-actual.png");
        write_png(&out, &img);
        panic!(
            "render differs from {}: mean {mean:.3}, {:.3} % pixels off; actual image in {}",
            path.display(),
            share * 100.0,
            out.display()
        );
    }
}

#[test]
fn a_panel_under_a_media_layer_is_a_transparent_hole_with_the_cursor_over_it() {
    let (img, panels, camera, _) = render(&[5, 7]);
    let at = |i: usize, u: f32, v: f32| {
        let c = panels[i].corners();
        let world = c[0] + (c[1] - c[0]) * u + (c[3] - c[0]) * v;
        let s = camera.project(world, W as f32, H as f32).expect("panel in front of the camera");
        pixel(&img, s.x, s.y)
    };
    for i in [5, 7] {
        for (u, v) in [(0.25, 0.25), (0.5, 0.5), (0.25, 0.8), (0.9, 0.1)] {
            assert_eq!(at(i, u, v), [0, 0, 0, 0], "panel {i} at ({u}, {v}): not a hole");
        }
    }
    // The cursor on panel 5 (at 0.75, 0.75; a few pixels here) is drawn over the hole, opaque.
    let c = panels[5].corners();
    let s = camera.project(c[0] + (c[1] - c[0]) * 0.75 + (c[3] - c[0]) * 0.75, W as f32, H as f32).unwrap();
    let around: Vec<[u8; 4]> = (-3..=3)
        .flat_map(|dy| (-3..=3).map(move |dx| (dx, dy)))
        .map(|(dx, dy)| pixel(&img, s.x + dx as f32, s.y + dy as f32))
        .collect();
    assert!(
        around.iter().any(|p| p[3] == 255 && p[2] > 200 && p[1] > 150 && p[0] < 150),
        "no opaque cursor over the hole near ({}, {}): {around:?}",
        s.x,
        s.y
    );
    // Other panels keep their pictures; the background stays opaque.
    assert!(close(at(3, 0.75, 0.75), panel_color(3), 12));
    assert_eq!(at(3, 0.75, 0.75)[3], 255);
    assert_eq!(pixel(&img, 2.0, 2.0)[3], 255, "the background is opaque");
}
