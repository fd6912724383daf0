//! Panels pulled out of the wall: a grip on a panel's frame moves it along the ray (closer or
//! further) and the thumbstick, while gripping, scales it; a quick double trigger on the
//! background puts the wall back. Each moved panel keeps its distance from the eye and its
//! scale, by desktop name, so the arrangement survives recentring (it is relative to the
//! wall's eye) and a reload (the shell keeps [`Arrangement::to_json`] in `localStorage`).
//! Pure: time comes in as milliseconds.

use std::collections::BTreeMap;

use glam::Vec3;
use loco_shared::layout::{Hit, Panel};
use serde::{Deserialize, Serialize};

pub const MIN_DISTANCE_M: f32 = 0.35;
pub const MAX_DISTANCE_M: f32 = 4.0;
pub const MIN_SCALE: f32 = 0.4;
pub const MAX_SCALE: f32 = 3.0;
/// The panel moves this many times as far as the hand does along the ray.
pub const GAIN: f32 = 3.0;
/// Scale change per second with the thumbstick fully pushed.
pub const SCALE_PER_S: f32 = 0.8;
/// Width of the frame around a panel that a grip grabs (the desktop itself keeps grip = right
/// button).
pub const FRAME_BAND_M: f32 = 0.035;
/// Two background trigger presses within this time put the wall back.
pub const DOUBLE_TAP_MS: f64 = 450.0;

/// Where one panel stands instead of its wall place.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Distance of its centre from the wall's eye, along its wall direction.
    #[serde(rename = "d")]
    pub distance_m: f32,
    #[serde(rename = "s")]
    pub scale: f32,
}

/// The moved panels, by desktop name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arrangement {
    pub placed: BTreeMap<String, Placement>,
}

impl Arrangement {
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.placed).unwrap_or_else(|_| "{}".into())
    }

    /// What `to_json` wrote; anything unreadable or out of range is left out.
    pub fn from_json(s: &str) -> Self {
        let placed: BTreeMap<String, Placement> = serde_json::from_str(s).unwrap_or_default();
        let placed = placed
            .into_iter()
            .filter(|(_, p)| {
                (MIN_DISTANCE_M..=MAX_DISTANCE_M).contains(&p.distance_m) && (MIN_SCALE..=MAX_SCALE).contains(&p.scale)
            })
            .collect();
        Self { placed }
    }

    /// Moves and scales the wall's panels (`names[i]` is panel `i`'s desktop).
    pub fn apply(&self, panels: &mut [Panel], names: &[&str], eye: Vec3) {
        for (p, name) in panels.iter_mut().zip(names) {
            if let Some(pl) = self.placed.get(*name) {
                *p = placed(p, eye, pl);
            }
        }
    }
}

/// `panel` moved to `pl` (along the line from `eye` through its centre).
pub fn placed(panel: &Panel, eye: Vec3, pl: &Placement) -> Panel {
    let dir = (panel.center - eye).try_normalize().unwrap_or(-panel.normal());
    Panel {
        center: eye + dir * pl.distance_m,
        width_m: panel.width_m * pl.scale,
        height_m: panel.height_m * pl.scale,
        ..*panel
    }
}

/// Whether a hit on a panel's plane is on its frame: within [`FRAME_BAND_M`] outside its edges.
pub fn on_frame(panel: &Panel, hit: &Hit) -> bool {
    let (mu, mv) = (FRAME_BAND_M / panel.width_m, FRAME_BAND_M / panel.height_m);
    let inside = (0.0..=1.0).contains(&hit.u) && (0.0..=1.0).contains(&hit.v);
    let band = (-mu..=1.0 + mu).contains(&hit.u) && (-mv..=1.0 + mv).contains(&hit.v);
    band && !inside
}

/// The frame a ray grabs: the nearest panel whose frame band it hits.
pub fn pick_frame(panels: &[Panel], origin: Vec3, dir: Vec3) -> Option<(usize, Hit)> {
    panels
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.intersect_plane(origin, dir).filter(|h| on_frame(p, h)).map(|h| (i, h)))
        .min_by(|a, b| a.1.distance_m.total_cmp(&b.1.distance_m))
}

/// A grip holding a panel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grab {
    pub panel: usize,
    start_origin: Vec3,
    dir: Vec3,
    start: Placement,
    scale: f32,
    at_ms: f64,
}

impl Grab {
    /// The grip closed with the ray at `origin`/`dir` on panel `panel`, which stands at
    /// `distance_m` from the eye with `scale`.
    pub fn new(panel: usize, origin: Vec3, dir: Vec3, start: Placement, now: f64) -> Self {
        Self { panel, start_origin: origin, dir: dir.normalize_or_zero(), start, scale: start.scale, at_ms: now }
    }

    /// The hand is at `origin` with the thumbstick at `thumb_y` (−1 forward: bigger): the
    /// panel's new placement.
    pub fn update(&mut self, origin: Vec3, thumb_y: f32, now: f64) -> Placement {
        let along = (origin - self.start_origin).dot(self.dir);
        let distance_m = (self.start.distance_m + along * GAIN).clamp(MIN_DISTANCE_M, MAX_DISTANCE_M);
        let dt = ((now - self.at_ms) / 1000.0).clamp(0.0, 0.1) as f32;
        self.at_ms = now;
        if thumb_y.is_finite() && thumb_y.abs() > 0.3 {
            self.scale = (self.scale * (1.0 - thumb_y * SCALE_PER_S * dt)).clamp(MIN_SCALE, MAX_SCALE);
        }
        Placement { distance_m, scale: self.scale }
    }
}

/// Two presses close together.
#[derive(Debug, Clone, Copy, Default)]
pub struct DoubleTap {
    last: Option<f64>,
}

impl DoubleTap {
    /// A press at `now`: true when it is the second of a quick pair.
    pub fn tap(&mut self, now: f64) -> bool {
        match self.last {
            Some(t) if now - t <= DOUBLE_TAP_MS => {
                self.last = None;
                true
            }
            _ => {
                self.last = Some(now);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout, pick, WallConfig, WallOrigin};

    fn wall() -> Vec<Panel> {
        layout(&WallConfig::default(), &WallOrigin::default(), &[4.0 / 3.0; 4])
    }

    #[test]
    fn a_placement_moves_the_panel_along_its_line_from_the_eye() {
        let eye = WallOrigin::default().eye;
        let mut panels = wall();
        let before = panels.clone();
        let mut a = Arrangement::default();
        a.placed.insert("b".into(), Placement { distance_m: 0.8, scale: 1.5 });
        a.apply(&mut panels, &["a", "b", "c", "d"], eye);
        assert_eq!(panels[0], before[0]);
        let p = panels[1];
        assert!((p.center.distance(eye) - 0.8).abs() < 1e-4);
        assert!((p.center - eye).normalize().dot((before[1].center - eye).normalize()) > 0.9999);
        assert!((p.width_m - before[1].width_m * 1.5).abs() < 1e-5);
        assert_eq!(p.normal(), before[1].normal(), "still facing the eye");
        // Every corner nearer the eye; the nearer panel wins a pick where they overlap.
        for (c, c0) in p.corners().iter().zip(before[1].corners()) {
            assert!(c.distance(eye) < c0.distance(eye));
        }
        assert_eq!(pick(&panels, eye, p.center - eye).map(|x| x.0), Some(1));
    }

    #[test]
    fn a_recentred_wall_keeps_the_arrangement_relative_to_the_new_eye() {
        let mut a = Arrangement::default();
        a.placed.insert("b".into(), Placement { distance_m: 0.9, scale: 1.2 });
        let names = ["a", "b", "c", "d"];
        let moved = WallOrigin { eye: Vec3::new(2.0, 1.7, -1.0), yaw_rad: 1.0 };
        for origin in [WallOrigin::default(), moved] {
            let mut panels = layout(&WallConfig::default(), &origin, &[4.0 / 3.0; 4]);
            let wall = panels.clone();
            a.apply(&mut panels, &names, origin.eye);
            assert!((panels[1].center.distance(origin.eye) - 0.9).abs() < 1e-4);
            assert!((panels[1].height_m - wall[1].height_m * 1.2).abs() < 1e-5);
            assert_eq!(panels[3], wall[3]);
        }
    }

    #[test]
    fn json_round_trip_and_garbage() {
        let mut a = Arrangement::default();
        a.placed.insert("vm1".into(), Placement { distance_m: 1.0, scale: 1.25 });
        assert_eq!(a.to_json(), r#"{"vm1":{"d":1.0,"s":1.25}}"#);
        assert_eq!(Arrangement::from_json(&a.to_json()), a);
        assert_eq!(Arrangement::from_json("nonsense"), Arrangement::default());
        assert_eq!(Arrangement::from_json(r#"{"x":{"d":99,"s":1}}"#), Arrangement::default());
    }

    #[test]
    fn the_frame_band_is_outside_the_desktop() {
        let panels = wall();
        let eye = WallOrigin::default().eye;
        let p = panels[1];
        let edge = p.corners()[1].lerp(p.corners()[2], 0.5) + p.right * (FRAME_BAND_M / 2.0);
        assert_eq!(pick_frame(&panels, eye, edge - eye).map(|x| x.0), Some(1));
        assert_eq!(pick_frame(&panels, eye, p.center - eye), None, "the desktop itself");
        let far = edge + p.right * FRAME_BAND_M * 2.0;
        assert_eq!(pick_frame(&panels, eye, far - eye), None);
    }

    #[test]
    fn pulling_the_hand_back_brings_the_panel_closer() {
        let hand = Vec3::new(0.1, 1.3, -0.2);
        let dir = Vec3::NEG_Z;
        let mut g = Grab::new(2, hand, dir, Placement { distance_m: 1.6, scale: 1.0 }, 0.0);
        let p = g.update(hand + Vec3::Z * 0.2, 0.0, 16.0);
        assert!((p.distance_m - 1.0).abs() < 1e-4, "{p:?}");
        assert_eq!(g.update(hand + Vec3::Z * 5.0, 0.0, 32.0).distance_m, MIN_DISTANCE_M);
        assert_eq!(g.update(hand - Vec3::Z * 5.0, 0.0, 48.0).distance_m, MAX_DISTANCE_M);
        // Thumbstick forward grows it, a bit per frame.
        let s = g.update(hand, -1.0, 148.0).scale;
        assert!((s - 1.08).abs() < 1e-4, "{s}");
        for k in 0..100 {
            g.update(hand, -1.0, 200.0 + k as f64 * 100.0);
        }
        assert_eq!(g.update(hand, 0.0, 20_000.0).scale, MAX_SCALE);
    }

    #[test]
    fn double_tap() {
        let mut d = DoubleTap::default();
        assert!(!d.tap(0.0));
        assert!(d.tap(300.0));
        assert!(!d.tap(400.0), "a third tap starts a new pair");
        assert!(!d.tap(1000.0));
        assert!(d.tap(1400.0));
    }
}
