//! The wall layout and controller-ray picking with arbitrary floats (NaN, infinities, huge,
//! tiny, negative): `layout`, `pick`, `Panel::*`, `WallOrigin::facing` and `desktop_pixel`
//! must never panic and `desktop_pixel` must always land inside the desktop. For sane inputs
//! (finite, in a plausible range) a ray from the eye through a panel's centre must hit a
//! panel at the wall's radius, and that panel at its centre.
#![no_main]

use glam::{Quat, Vec3};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use loco_shared::layout::{desktop_pixel, layout, pick, WallConfig, WallOrigin};

#[derive(Debug, Arbitrary)]
struct Input {
    radius_m: f32,
    cell_width_m: f32,
    cell_height_m: f32,
    gap_m: f32,
    columns: u8,
    eye: [f32; 3],
    yaw_rad: f32,
    head: [f32; 4],
    aspects: Vec<f32>,
    ray_origin: [f32; 3],
    ray_dir: [f32; 3],
    u: f32,
    v: f32,
    width_px: u32,
    height_px: u32,
}

fn v3(a: [f32; 3]) -> Vec3 {
    Vec3::from_array(a)
}

fn check_pixel(u: f32, v: f32, w: u32, h: u32) {
    let (x, y) = desktop_pixel(u, v, w, h);
    assert!(x < w.max(1) && y < h.max(1), "desktop_pixel({u}, {v}, {w}, {h}) = ({x}, {y})");
    if (0.0..1.0).contains(&u) && w > 0 && w < (1 << 20) {
        // Inside the panel the mapping is the plain floor(u·w).
        assert_eq!(x, ((u * w as f32).floor() as u32).min(w - 1));
    }
}

fn sane(x: f32, lo: f32, hi: f32) -> bool {
    x.is_finite() && (lo..=hi).contains(&x)
}

fuzz_target!(|inp: Input| {
    let aspects = &inp.aspects[..inp.aspects.len().min(32)];
    let config = WallConfig {
        radius_m: inp.radius_m,
        cell_width_m: inp.cell_width_m,
        cell_height_m: inp.cell_height_m,
        gap_m: inp.gap_m,
        columns: usize::from(inp.columns),
    };
    let [qx, qy, qz, qw] = inp.head;
    let faced = WallOrigin::facing(v3(inp.eye), Quat::from_xyzw(qx, qy, qz, qw));
    let _ = layout(&config, &faced, aspects);
    let origin = WallOrigin { eye: v3(inp.eye), yaw_rad: inp.yaw_rad };
    let panels = layout(&config, &origin, aspects);
    assert_eq!(panels.len(), aspects.len());

    let (ro, rd) = (v3(inp.ray_origin), v3(inp.ray_dir));
    for p in &panels {
        let _ = (p.normal(), p.corners(), p.model());
        if let Some(h) = p.intersect_plane(ro, rd) {
            check_pixel(h.u, h.v, inp.width_px, inp.height_px);
        }
        if let Some(h) = p.intersect(ro, rd) {
            assert!((0.0..=1.0).contains(&h.u) && (0.0..=1.0).contains(&h.v), "{h:?}");
        }
    }
    if let Some((i, hit)) = pick(&panels, ro, rd) {
        assert!(i < panels.len());
        assert!((0.0..=1.0).contains(&hit.u) && (0.0..=1.0).contains(&hit.v), "{hit:?}");
        assert!(hit.distance_m > 0.0, "{hit:?}");
        check_pixel(hit.u, hit.v, inp.width_px, inp.height_px);
    }
    check_pixel(inp.u, inp.v, inp.width_px, inp.height_px);

    // Sane walls: aim at each panel's centre from the eye.
    let sane_wall = sane(config.radius_m, 0.3, 10.0)
        && sane(config.cell_width_m, 0.05, 3.0)
        && sane(config.cell_height_m, 0.05, 3.0)
        && sane(config.gap_m, 0.0, 1.0)
        && inp.eye.iter().all(|&c| sane(c, -100.0, 100.0))
        && sane(origin.yaw_rad, -10.0, 10.0)
        && aspects.iter().all(|&a| sane(a, 0.1, 10.0));
    if !sane_wall {
        return;
    }
    for (i, p) in panels.iter().enumerate() {
        let dir = p.center - origin.eye;
        // Panels tipped (nearly) straight up or down have no well-defined "right".
        if !(p.right.is_finite() && p.up.is_finite()) || dir.normalize().y.abs() > 0.95 {
            continue;
        }
        let Some((j, hit)) = pick(&panels, origin.eye, dir) else {
            panic!("a ray at panel {i}'s centre hits nothing: {p:?}");
        };
        let r = config.radius_m;
        assert!((hit.distance_m - r).abs() <= 1e-3 * r.max(1.0), "panel {i}: hit {j} at {hit:?}, radius {r}");
        if j == i {
            assert!((hit.u - 0.5).abs() < 1e-3 && (hit.v - 0.5).abs() < 1e-3, "panel {i}: {hit:?}");
        }
    }
});
