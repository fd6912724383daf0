//! Where the desktop panels stand in the room, and which desktop pixel a controller ray hits.
//!
//! Space is WebXR's `local-floor`: metres, +Y up, the viewer looking down −Z at start.
//! Up to nine panels stand in a 3×3 wall curved around the viewer's eye: each row tilted by the
//! same pitch step, each column turned by a yaw step (wider for the tilted rows, so neighbours
//! never touch), every panel a flat quad facing the eye at `radius_m`. The defaults make each 1024×768 panel about 32° wide at 1.6 m — about
//! 0.8 headset pixels per desktop pixel on a Quest 3 (≈ 25 px/°), where 8-pt text stays
//! legible; a user who wants it sharper steps closer or recentres nearer.

use glam::{Mat4, Quat, Vec3};

/// Tuning of the wall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WallConfig {
    /// Distance from the eye to each panel's centre.
    pub radius_m: f32,
    /// Width of a panel's cell; a panel keeps its desktop's aspect inside the cell.
    pub cell_width_m: f32,
    /// Height of a panel's cell (the cell is 4:3 by default, like 1024×768).
    pub cell_height_m: f32,
    /// Space between cells, along the arc.
    pub gap_m: f32,
    /// Most panels per row.
    pub columns: usize,
}

impl Default for WallConfig {
    fn default() -> Self {
        Self { radius_m: 1.6, cell_width_m: 0.92, cell_height_m: 0.69, gap_m: 0.06, columns: 3 }
    }
}

/// Where the wall is centred: the eye it faces and the yaw it faces it from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WallOrigin {
    pub eye: Vec3,
    /// Rotation about +Y; 0 puts the middle column straight down −Z.
    pub yaw_rad: f32,
}

impl Default for WallOrigin {
    fn default() -> Self {
        Self { eye: Vec3::new(0.0, 1.5, 0.0), yaw_rad: 0.0 }
    }
}

impl WallOrigin {
    /// Recentres on a head pose: the eye where the head is, the wall straight ahead of where it
    /// looks (only its yaw counts: looking down at the floor must not tip the wall over).
    pub fn facing(head_position: Vec3, head_orientation: Quat) -> Self {
        let forward = head_orientation * Vec3::NEG_Z;
        let yaw_rad = if forward.x.abs() + forward.z.abs() < 1e-6 { 0.0 } else { (-forward.x).atan2(-forward.z) };
        Self { eye: head_position, yaw_rad }
    }
}

/// One panel: a flat rectangle in the room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Panel {
    pub center: Vec3,
    /// Unit vector along the desktop's +x (to the right as seen by the viewer).
    pub right: Vec3,
    /// Unit vector along the desktop's −y (up as seen by the viewer).
    pub up: Vec3,
    pub width_m: f32,
    pub height_m: f32,
}

/// Where a ray meets a panel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Distance along the (unit) ray direction.
    pub distance_m: f32,
    /// 0 at the desktop's left edge, 1 at its right edge.
    pub u: f32,
    /// 0 at the desktop's top edge, 1 at its bottom edge.
    pub v: f32,
    pub point: Vec3,
}

impl Panel {
    /// The side facing the viewer.
    pub fn normal(&self) -> Vec3 {
        self.right.cross(self.up)
    }

    /// Corners top-left, top-right, bottom-right, bottom-left.
    pub fn corners(&self) -> [Vec3; 4] {
        let (r, u) = (self.right * self.width_m / 2.0, self.up * self.height_m / 2.0);
        [self.center - r + u, self.center + r + u, self.center + r - u, self.center - r - u]
    }

    /// Model matrix mapping the unit quad (x, y ∈ [−0.5, 0.5], facing +Z) onto the panel.
    pub fn model(&self) -> Mat4 {
        Mat4::from_cols(
            (self.right * self.width_m).extend(0.0),
            (self.up * self.height_m).extend(0.0),
            self.normal().extend(0.0),
            self.center.extend(1.0),
        )
    }

    /// Where the ray meets the panel's plane from the front, with u/v not clamped (they may lie
    /// outside 0..1 beside the panel). `None` when the ray is parallel, points away, or comes
    /// from behind.
    pub fn intersect_plane(&self, origin: Vec3, dir: Vec3) -> Option<Hit> {
        let dir = dir.try_normalize()?;
        let n = self.normal();
        let denom = dir.dot(n);
        if denom > -1e-6 {
            return None;
        }
        let distance_m = (self.center - origin).dot(n) / denom;
        if distance_m <= 0.0 {
            return None;
        }
        let point = origin + dir * distance_m;
        let top_left = self.corners()[0];
        let local = point - top_left;
        Some(Hit { distance_m, u: local.dot(self.right) / self.width_m, v: -local.dot(self.up) / self.height_m, point })
    }

    /// Where the ray meets the panel itself, if it does.
    pub fn intersect(&self, origin: Vec3, dir: Vec3) -> Option<Hit> {
        self.intersect_plane(origin, dir).filter(|h| (0.0..=1.0).contains(&h.u) && (0.0..=1.0).contains(&h.v))
    }
}

/// The desktop pixel at `u`, `v` of a `width_px` × `height_px` desktop, clamped to the desktop
/// (so a drag that slides off the panel pins the pointer to the edge).
pub fn desktop_pixel(u: f32, v: f32, width_px: u32, height_px: u32) -> (u32, u32) {
    let px = |t: f32, n: u32| {
        if n == 0 || !t.is_finite() {
            return 0;
        }
        ((t * n as f32).floor().max(0.0) as u32).min(n - 1)
    };
    (px(u, width_px), px(v, height_px))
}

/// The nearest panel a ray hits, with the hit.
pub fn pick(panels: &[Panel], origin: Vec3, dir: Vec3) -> Option<(usize, Hit)> {
    panels
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.intersect(origin, dir).map(|h| (i, h)))
        .min_by(|a, b| a.1.distance_m.total_cmp(&b.1.distance_m))
}

/// Lays out `aspects.len()` panels (at most `columns` × 3 are placed sensibly; more simply add
/// rows), each keeping its desktop's width/height ratio (`aspects[i]`, e.g. 1024/768) inside
/// its cell. Row-major from the top-left as the viewer sees it.
pub fn layout(config: &WallConfig, origin: &WallOrigin, aspects: &[f32]) -> Vec<Panel> {
    let n = aspects.len();
    if n == 0 {
        return Vec::new();
    }
    let columns = config.columns.max(1).min(n);
    let rows = n.div_ceil(columns);
    let yaw_step = (config.cell_width_m + config.gap_m) / config.radius_m;
    let pitch_step = (config.cell_height_m + config.gap_m) / config.radius_m;
    let wall_rotation = Quat::from_rotation_y(origin.yaw_rad);
    let cell_aspect = config.cell_width_m / config.cell_height_m;
    let mut panels = Vec::with_capacity(n);
    for (i, &aspect) in aspects.iter().enumerate() {
        let (row, col) = (i / columns, i % columns);
        // Columns in this row (the last row may be short): centre them.
        let in_row = if row + 1 == rows { n - row * columns } else { columns };
        let pitch = -((row as f32) - (rows as f32 - 1.0) / 2.0) * pitch_step;
        // Rows above and below the eye are tipped towards it, which brings the far edges of
        // neighbouring panels together (meridians converge); widen the yaw step so that they
        // stay `gap_m` apart even at the row's far edge.
        let far_edge = pitch.abs() + (config.cell_height_m / 2.0 / config.radius_m).atan();
        let yaw = -((col as f32) - (in_row as f32 - 1.0) / 2.0) * yaw_step / far_edge.cos().max(0.2);
        let local_dir = Vec3::new(-yaw.sin() * pitch.cos(), pitch.sin(), -yaw.cos() * pitch.cos());
        let dir = wall_rotation * local_dir;
        let right = dir.cross(Vec3::Y).normalize();
        let up = right.cross(dir);
        let aspect = if aspect.is_finite() && aspect > 0.0 { aspect } else { cell_aspect };
        let (width_m, height_m) = if aspect >= cell_aspect {
            (config.cell_width_m, config.cell_width_m / aspect)
        } else {
            (config.cell_height_m * aspect, config.cell_height_m)
        };
        panels.push(Panel { center: origin.eye + dir * config.radius_m, right, up, width_m, height_m });
    }
    panels
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f32 = 1e-4;

    fn nine() -> Vec<Panel> {
        layout(&WallConfig::default(), &WallOrigin::default(), &[1024.0 / 768.0; 9])
    }

    #[test]
    fn centre_panel_faces_the_viewer_straight_ahead() {
        let p = nine()[4];
        assert!((p.center - Vec3::new(0.0, 1.5, -1.6)).length() < EPS, "{:?}", p.center);
        assert!((p.normal() - Vec3::Z).length() < EPS);
        assert!((p.right - Vec3::X).length() < EPS);
        assert!((p.up - Vec3::Y).length() < EPS);
        let [tl, tr, br, bl] = p.corners();
        assert!(tl.x < tr.x && tl.y > bl.y && (br - tr).length() > 0.0);
        assert!(((tr - tl).length() / (tl - bl).length() - 4.0 / 3.0).abs() < EPS);
    }

    #[test]
    fn wall_is_a_3x3_grid_curved_around_the_eye() {
        let panels = nine();
        let eye = WallOrigin::default().eye;
        for (i, p) in panels.iter().enumerate() {
            // Every panel at the radius, facing the eye.
            assert!(((p.center - eye).length() - 1.6).abs() < EPS, "panel {i}");
            assert!(p.normal().dot((eye - p.center).normalize()) > 0.9999, "panel {i} does not face the eye");
        }
        // Row-major from the top-left as seen by the viewer.
        assert!(panels[0].center.x < panels[1].center.x && panels[1].center.x < panels[2].center.x);
        assert!(panels[0].center.y > panels[3].center.y && panels[3].center.y > panels[6].center.y);
        // Neighbours keep a gap at both ends of their shared edge, in every row, and the rows
        // keep a gap between them.
        for row in 0..3 {
            for col in 0..2 {
                let (a, b) = (panels[row * 3 + col].corners(), panels[row * 3 + col + 1].corners());
                for (ea, eb) in [(a[1], b[0]), (a[2], b[3])] {
                    let gap = (eb - ea).length();
                    assert!(gap > 0.04, "row {row} col {col}: gap {gap}");
                    assert!(eb.x > ea.x || row != 1, "row {row} col {col}: overlap");
                }
            }
        }
        for col in 0..3 {
            let (upper, lower) = (panels[col].corners(), panels[3 + col].corners());
            assert!(upper[3].y > lower[0].y, "column {col}: rows overlap");
        }
    }

    #[test]
    fn short_last_row_is_centred() {
        let panels = layout(&WallConfig::default(), &WallOrigin::default(), &[4.0 / 3.0; 4]);
        // 3 on top, 1 below, in the middle.
        assert!(panels[3].center.x.abs() < EPS);
        let one = layout(&WallConfig::default(), &WallOrigin::default(), &[4.0 / 3.0]);
        assert!((one[0].center - Vec3::new(0.0, 1.5, -1.6)).length() < EPS);
    }

    #[test]
    fn a_panel_keeps_its_desktops_aspect() {
        let panels = layout(&WallConfig::default(), &WallOrigin::default(), &[16.0 / 9.0, 3.0 / 4.0, f32::NAN]);
        assert!((panels[0].width_m / panels[0].height_m - 16.0 / 9.0).abs() < EPS);
        assert!((panels[1].width_m / panels[1].height_m - 3.0 / 4.0).abs() < EPS);
        assert!(panels[0].width_m <= 0.92 + EPS && panels[1].height_m <= 0.69 + EPS);
        assert!((panels[2].width_m / panels[2].height_m - 0.92 / 0.69).abs() < EPS);
    }

    #[test]
    fn recentring_follows_head_yaw_only() {
        let head = Vec3::new(2.0, 1.7, 3.0);
        let turned = Quat::from_rotation_y(std::f32::consts::FRAC_PI_2) * Quat::from_rotation_x(-0.6);
        let origin = WallOrigin::facing(head, turned);
        assert!((origin.yaw_rad - std::f32::consts::FRAC_PI_2).abs() < 1e-5);
        let p = layout(&WallConfig::default(), &origin, &[4.0 / 3.0; 9])[4];
        // Turned left by 90°: the centre panel is 1.6 m along −X from the head, level with it.
        assert!((p.center - (head + Vec3::new(-1.6, 0.0, 0.0))).length() < 1e-4, "{:?}", p.center);
        assert!(p.normal().dot(Vec3::X) > 0.9999);
    }

    #[test]
    fn ray_through_a_pixel_maps_back_to_it() {
        let panels = nine();
        // From the eye the wall curves around, every pixel of every panel; from an eye moved
        // aside, a neighbour may hide a panel's edge (that is geometry), so only inner pixels.
        let cases = [
            (WallOrigin::default().eye, &[(0u32, 0u32), (1023, 767), (512, 384), (100, 700)][..]),
            (Vec3::new(0.1, 1.4, 0.2), &[(512, 384), (300, 200)][..]),
        ];
        for (eye, pixels) in cases {
            for (i, p) in panels.iter().enumerate() {
                for &(x, y) in pixels {
                    let u = (x as f32 + 0.5) / 1024.0;
                    let v = (y as f32 + 0.5) / 768.0;
                    let [tl, _, _, _] = p.corners();
                    let target = tl + p.right * (u * p.width_m) - p.up * (v * p.height_m);
                    let (hit_i, hit) = pick(&panels, eye, target - eye).expect("hit");
                    assert_eq!(hit_i, i);
                    assert_eq!(desktop_pixel(hit.u, hit.v, 1024, 768), (x, y), "panel {i}");
                    assert!((hit.point - target).length() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn misses_and_back_faces() {
        let panels = nine();
        let eye = WallOrigin::default().eye;
        // Straight up, straight back: nothing.
        assert!(pick(&panels, eye, Vec3::Y).is_none());
        assert!(pick(&panels, eye, Vec3::Z).is_none());
        // From behind the centre panel looking at it: its back face is not hit.
        assert!(panels[4].intersect(Vec3::new(0.0, 1.5, -3.0), Vec3::Z).is_none());
        // Zero direction.
        assert!(pick(&panels, eye, Vec3::ZERO).is_none());
        // Beside a panel: the plane is hit, the panel is not, and the pixel clamps to the edge.
        let p = panels[4];
        let beside = p.center + p.right * (p.width_m * 0.75);
        assert!(p.intersect(eye, beside - eye).is_none());
        let h = p.intersect_plane(eye, beside - eye).expect("plane");
        assert!(h.u > 1.0);
        assert_eq!(desktop_pixel(h.u, h.v, 1024, 768).0, 1023);
    }

    #[test]
    fn nearest_panel_wins() {
        let near =
            Panel { center: Vec3::new(0.0, 0.0, -1.0), right: Vec3::X, up: Vec3::Y, width_m: 1.0, height_m: 1.0 };
        let far = Panel { center: Vec3::new(0.0, 0.0, -2.0), ..near };
        assert_eq!(pick(&[far, near], Vec3::ZERO, Vec3::NEG_Z).map(|(i, _)| i), Some(1));
    }

    #[test]
    fn model_matrix_maps_the_unit_quad_to_the_corners() {
        for p in nine() {
            let m = p.model();
            let c = p.corners();
            for (corner, (x, y)) in c.iter().zip([(-0.5, 0.5), (0.5, 0.5), (0.5, -0.5), (-0.5, -0.5)]) {
                assert!((m.transform_point3(Vec3::new(x, y, 0.0)) - *corner).length() < EPS);
            }
        }
    }

    #[test]
    fn desktop_pixel_edges() {
        assert_eq!(desktop_pixel(0.0, 0.0, 1024, 768), (0, 0));
        assert_eq!(desktop_pixel(1.0, 1.0, 1024, 768), (1023, 767));
        assert_eq!(desktop_pixel(-3.0, 7.0, 1024, 768), (0, 767));
        assert_eq!(desktop_pixel(f32::NAN, 0.5, 1024, 768), (0, 384));
        assert_eq!(desktop_pixel(0.5, 0.5, 0, 0), (0, 0));
    }
}
