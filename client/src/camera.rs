//! The flat (non-XR) view's camera: a viewer standing behind the wall's eye point, turned by
//! dragging with the mouse, and the mouse ray it casts.

use glam::{Mat4, Vec2, Vec3, Vec4Swizzles};

/// Vertical field of view of the flat view.
pub const FOV_Y_RAD: f32 = 62.0 * std::f32::consts::PI / 180.0;
/// How far behind the wall's eye point the flat camera stands, so that the whole curved wall
/// fits on a screen.
pub const BACK_OFF_M: f32 = 1.35;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlatCamera {
    pub position: Vec3,
    pub yaw_rad: f32,
    pub pitch_rad: f32,
    pub fov_y_rad: f32,
}

impl FlatCamera {
    /// Looking at the wall centred on `eye` facing `yaw_rad`, from behind.
    pub fn behind(eye: Vec3, yaw_rad: f32) -> Self {
        let back = glam::Quat::from_rotation_y(yaw_rad) * Vec3::Z;
        FlatCamera { position: eye + back * BACK_OFF_M, yaw_rad, pitch_rad: 0.0, fov_y_rad: FOV_Y_RAD }
    }

    /// Looking at the wall centred on `eye` facing `yaw_rad`, stepped back just far enough that
    /// every point of `points` is on a `width` × `height` screen with a 6 % margin.
    pub fn fit(eye: Vec3, yaw_rad: f32, points: &[Vec3], width: f32, height: f32) -> Self {
        let back = glam::Quat::from_rotation_y(yaw_rad) * Vec3::Z;
        let mut cam = Self::behind(eye, yaw_rad);
        let fits = |cam: &FlatCamera| {
            points.iter().all(|p| {
                cam.project(*p, width, height).is_some_and(|s| {
                    let (mx, my) = (width * 0.06, height * 0.06);
                    s.x >= mx && s.x <= width - mx && s.y >= my && s.y <= height - my
                })
            })
        };
        let (mut lo, mut hi) = (0.0f32, 8.0f32);
        for _ in 0..24 {
            let mid = (lo + hi) / 2.0;
            cam.position = eye + back * mid;
            if fits(&cam) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        cam.position = eye + back * hi;
        cam
    }

    pub fn rotation(&self) -> glam::Quat {
        glam::Quat::from_rotation_y(self.yaw_rad) * glam::Quat::from_rotation_x(self.pitch_rad)
    }

    pub fn view(&self) -> Mat4 {
        Mat4::from_rotation_translation(self.rotation(), self.position).inverse()
    }

    /// View-projection for a `width` × `height` viewport (wgpu clip space).
    pub fn view_proj(&self, width: f32, height: f32) -> Mat4 {
        let aspect = if height > 0.0 { width / height } else { 1.0 };
        Mat4::perspective_rh(self.fov_y_rad, aspect, 0.05, 100.0) * self.view()
    }

    /// The ray through a viewport point (pixels, y down): origin and direction.
    pub fn ray(&self, point: Vec2, width: f32, height: f32) -> (Vec3, Vec3) {
        let ndc = Vec2::new(point.x / width * 2.0 - 1.0, 1.0 - point.y / height * 2.0);
        let inv = self.view_proj(width, height).inverse();
        let near = inv * ndc.extend(0.0).extend(1.0);
        let far = inv * ndc.extend(1.0).extend(1.0);
        let (near, far) = (near.xyz() / near.w, far.xyz() / far.w);
        (self.position, (far - near).normalize())
    }

    /// Where a world point lands in the viewport (pixels, y down), if in front of the camera.
    pub fn project(&self, world: Vec3, width: f32, height: f32) -> Option<Vec2> {
        let clip = self.view_proj(width, height) * world.extend(1.0);
        if clip.w <= 1e-6 {
            return None;
        }
        let ndc = clip.xyz() / clip.w;
        Some(Vec2::new((ndc.x + 1.0) / 2.0 * width, (1.0 - ndc.y) / 2.0 * height))
    }

    /// Turns the camera by a mouse drag of `dx`, `dy` pixels.
    pub fn drag(&mut self, dx: f32, dy: f32, height: f32) {
        let per_px = self.fov_y_rad / height.max(1.0);
        self.yaw_rad -= dx * per_px;
        self.pitch_rad = (self.pitch_rad - dy * per_px).clamp(-1.4, 1.4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout, pick, WallConfig, WallOrigin};

    #[test]
    fn the_whole_wall_is_on_a_16_by_9_screen() {
        let origin = WallOrigin::default();
        let cam = FlatCamera::behind(origin.eye, origin.yaw_rad);
        let panels = layout(&WallConfig::default(), &origin, &[4.0 / 3.0; 9]);
        for p in &panels {
            for c in p.corners() {
                let s = cam.project(c, 1280.0, 720.0).unwrap();
                assert!((0.0..=1280.0).contains(&s.x) && (0.0..=720.0).contains(&s.y), "{c} -> {s}");
            }
        }
    }

    #[test]
    fn mouse_ray_through_a_projected_point_hits_that_point() {
        let origin = WallOrigin::default();
        let cam = FlatCamera::behind(origin.eye, 0.3);
        let panels = layout(&WallConfig::default(), &WallOrigin { yaw_rad: 0.3, ..origin }, &[4.0 / 3.0; 9]);
        let c = panels[5].corners();
        // u = 0.25, v = 0.6 on panel 5.
        let target = c[0] + (c[1] - c[0]) * 0.25 + (c[3] - c[0]) * 0.6;
        let s = cam.project(target, 1280.0, 720.0).unwrap();
        let (o, d) = cam.ray(s, 1280.0, 720.0);
        let (i, hit) = pick(&panels, o, d).unwrap();
        assert_eq!(i, 5);
        assert!((hit.u - 0.25).abs() < 1e-3 && (hit.v - 0.6).abs() < 1e-3, "{hit:?}");
    }

    #[test]
    fn fit_frames_the_wall_tightly() {
        let origin = WallOrigin::default();
        let panels = layout(&WallConfig::default(), &origin, &[4.0 / 3.0; 9]);
        let points: Vec<Vec3> = panels.iter().flat_map(|p| p.corners()).collect();
        let cam = FlatCamera::fit(origin.eye, 0.0, &points, 1280.0, 720.0);
        let xs: Vec<f32> = points.iter().map(|p| cam.project(*p, 1280.0, 720.0).unwrap().x).collect();
        let ys: Vec<f32> = points.iter().map(|p| cam.project(*p, 1280.0, 720.0).unwrap().y).collect();
        let min = |v: &[f32]| v.iter().copied().fold(f32::MAX, f32::min);
        let max = |v: &[f32]| v.iter().copied().fold(f32::MIN, f32::max);
        // Inside the margins, and touching one pair of them (within a pixel).
        assert!(min(&xs) >= 76.0 && max(&xs) <= 1204.0 && min(&ys) >= 43.0 && max(&ys) <= 677.0);
        assert!(min(&ys) < 45.0 || min(&xs) < 78.0, "not tight: {} {}", min(&xs), min(&ys));
        // Two panels in a row fit closer than nine.
        let two = layout(&WallConfig::default(), &origin, &[4.0 / 3.0; 2]);
        let pts2: Vec<Vec3> = two.iter().flat_map(|p| p.corners()).collect();
        let cam2 = FlatCamera::fit(origin.eye, 0.0, &pts2, 1280.0, 720.0);
        assert!(cam2.position.z < cam.position.z);
    }

    #[test]
    fn dragging_turns_and_clamps_pitch() {
        let mut cam = FlatCamera::behind(Vec3::new(0.0, 1.5, 0.0), 0.0);
        cam.drag(100.0, 0.0, 720.0);
        assert!(cam.yaw_rad < 0.0);
        cam.drag(0.0, -1e6, 720.0);
        assert_eq!(cam.pitch_rad, 1.4);
    }
}
