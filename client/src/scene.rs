//! What one frame shows, as a list of textured quads in `local-floor` space.
//!
//! I/O-free and GPU-free: the web front end fills a [`SceneInput`] from its panels and
//! controllers, [`build`] turns it into [`Quad`]s, and the [`Renderer`](crate::render::Renderer)
//! draws those into whatever target it is handed. Painter's order (no depth buffer): floor,
//! focus frames, panels, overlays, lasers, cursors.

use glam::{Vec2, Vec3};
use loco_shared::layout::Panel;

/// Which texture a quad samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tex {
    /// 1×1 white: the quad shows its colour only.
    White,
    /// Panel `i`'s desktop video.
    Video(usize),
    /// Panel `i`'s caption (name and connection state).
    Label(usize),
    /// Panel `i`'s statistics overlay.
    Hud(usize),
}

/// A quad: corners top-left, top-right, bottom-right, bottom-left, with texture coordinates in
/// the same order, multiplied by `color` (straight alpha, blended over what is behind).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quad {
    pub corners: [Vec3; 4],
    pub uv: [Vec2; 4],
    pub color: [f32; 4],
    pub tex: Tex,
}

const FULL_UV: [Vec2; 4] = [Vec2::new(0.0, 0.0), Vec2::new(1.0, 0.0), Vec2::new(1.0, 1.0), Vec2::new(0.0, 1.0)];

impl Quad {
    fn solid(corners: [Vec3; 4], color: [f32; 4]) -> Self {
        Quad { corners, uv: FULL_UV, color, tex: Tex::White }
    }
}

/// How a panel's stream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Connecting,
    Live,
    Down,
    /// The agent refused the page's key (or it had none): no retries until a key is given.
    Locked,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Connecting => "connecting",
            StreamState::Live => "live",
            StreamState::Down => "down",
            StreamState::Locked => "locked",
        }
    }
}

/// One panel as the scene sees it.
#[derive(Debug, Clone, Copy)]
pub struct PanelView {
    pub panel: Panel,
    pub state: StreamState,
    pub focused: bool,
    /// A decoded frame has been uploaded into `Tex::Video(i)`.
    pub has_video: bool,
    /// `Tex::Label(i)` holds a caption of this width/height ratio.
    pub label_aspect: Option<f32>,
    /// `Tex::Hud(i)` holds an overlay of this width/height ratio (and the HUD is on).
    pub hud_aspect: Option<f32>,
}

/// One controller's (or the mouse's) ray this frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pointer {
    pub origin: Vec3,
    /// Where the laser ends: the hit point, or a point along the ray when nothing is hit.
    pub end: Vec3,
    /// The panel hit: the point and the panel's front normal.
    pub hit: Option<(Vec3, Vec3)>,
    /// A button is held (drawn brighter).
    pub pressed: bool,
    /// Draw the laser beam (controllers) or only the cursor (mouse).
    pub beam: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SceneInput {
    pub panels: Vec<PanelView>,
    pub pointers: Vec<Pointer>,
    /// Where the floor grid is centred (the viewer's feet).
    pub floor_center: Vec3,
}

/// Background colour the target is cleared to (a dark blue-grey "sky").
pub const CLEAR: [f64; 4] = [0.07, 0.08, 0.11, 1.0];

const FLOOR: [f32; 4] = [0.13, 0.14, 0.17, 1.0];
const GRID: [f32; 4] = [0.24, 0.26, 0.31, 1.0];
const FOCUS: [f32; 4] = [0.98, 0.75, 0.18, 1.0];
const NO_VIDEO: [f32; 4] = [0.2, 0.21, 0.24, 1.0];
const LASER: [f32; 4] = [0.35, 0.85, 1.0, 0.55];
const LASER_PRESSED: [f32; 4] = [0.6, 1.0, 0.6, 0.8];
const CURSOR: [f32; 4] = [0.35, 0.85, 1.0, 1.0];
const CURSOR_PRESSED: [f32; 4] = [0.45, 1.0, 0.45, 1.0];

/// Focus frame width around a panel.
const FRAME_M: f32 = 0.012;
/// Caption height and its distance below the panel (it sits in the gap between rows).
pub const LABEL_HEIGHT_M: f32 = 0.04;
const LABEL_GAP_M: f32 = 0.006;
const HUD_HEIGHT_M: f32 = 0.045;
const LASER_WIDTH_M: f32 = 0.004;
const CURSOR_M: f32 = 0.014;
/// Overlays and cursors sit this far in front of the panel plane.
const LIFT_M: f32 = 0.002;

/// Where panel `panel`'s caption (a strip of width/height ratio `aspect`) is drawn: in the gap
/// below the panel, in its plane, as wide as the panel at most. Corners TL, TR, BR, BL.
pub fn caption_corners(panel: &Panel, aspect: f32) -> [Vec3; 4] {
    let top_left = panel.corners()[3] - panel.up * LABEL_GAP_M;
    let w = (LABEL_HEIGHT_M * aspect).min(panel.width_m);
    let (r, d) = (panel.right * w, -panel.up * (w / aspect));
    [top_left, top_left + r, top_left + r + d, top_left + d]
}

/// The caption a ray hits (the nearest, when several are), with the point: captions of
/// `aspect` (see [`caption_corners`]) under each of `panels`. Clicking a caption toggles its
/// panel's sound.
pub fn pick_caption(panels: &[Panel], aspect: f32, origin: Vec3, dir: Vec3) -> Option<(usize, Vec3)> {
    panels
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let hit = p.intersect_plane(origin, dir)?;
            let c = caption_corners(p, aspect);
            let local = hit.point - c[0];
            let (w, h) = (c[1].distance(c[0]), c[3].distance(c[0]));
            let (u, v) = (local.dot(p.right) / w, -local.dot(p.up) / h);
            ((0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v)).then_some((i, hit.distance_m, hit.point))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _, point)| (i, point))
}

fn rect(center: Vec3, right: Vec3, up: Vec3, half_w: f32, half_h: f32) -> [Vec3; 4] {
    let (r, u) = (right * half_w, up * half_h);
    [center - r + u, center + r + u, center + r - u, center - r - u]
}

/// The quads for one frame, in drawing order.
pub fn build(input: &SceneInput) -> Vec<Quad> {
    let mut quads = Vec::with_capacity(8 + input.panels.len() * 4 + input.pointers.len() * 3);
    floor(input.floor_center, &mut quads);
    for (i, p) in input.panels.iter().enumerate() {
        let panel = &p.panel;
        let n = panel.normal();
        if p.focused {
            quads.push(Quad::solid(
                rect(
                    panel.center - n * LIFT_M,
                    panel.right,
                    panel.up,
                    panel.width_m / 2.0 + FRAME_M,
                    panel.height_m / 2.0 + FRAME_M,
                ),
                FOCUS,
            ));
        }
        let corners = panel.corners();
        if p.has_video {
            // A stream that is not live keeps its last picture, dimmed.
            let k = if p.state == StreamState::Live { 1.0 } else { 0.35 };
            quads.push(Quad { corners, uv: FULL_UV, color: [k, k, k, 1.0], tex: Tex::Video(i) });
        } else {
            quads.push(Quad::solid(corners, NO_VIDEO));
        }
        // A text strip: over the panel's top edge (HUD) or in the gap below it (caption),
        // `height` tall at most and never wider than the panel.
        let strip = |tex: Tex, aspect: f32, height: f32, top_left: Vec3| {
            let w = (height * aspect).min(panel.width_m);
            let (r, d) = (panel.right * w, -panel.up * (w / aspect));
            Quad {
                corners: [top_left, top_left + r, top_left + r + d, top_left + d],
                uv: FULL_UV,
                color: [1.0; 4],
                tex,
            }
        };
        if let Some(aspect) = p.hud_aspect {
            let height = HUD_HEIGHT_M.min(panel.height_m / 3.0);
            quads.push(strip(Tex::Hud(i), aspect, height, corners[0] + n * LIFT_M));
        }
        if let Some(aspect) = p.label_aspect {
            quads.push(Quad {
                corners: caption_corners(panel, aspect),
                uv: FULL_UV,
                color: [1.0; 4],
                tex: Tex::Label(i),
            });
        }
    }
    for ptr in &input.pointers {
        let color = if ptr.pressed { LASER_PRESSED } else { LASER };
        let dir = ptr.end - ptr.origin;
        if ptr.beam && dir.length() > 1e-3 {
            // Two crossed strips so the beam has width from any side.
            let d = dir.normalize();
            let side = d.any_orthonormal_vector();
            let other = d.cross(side);
            for s in [side, other] {
                let w = s * LASER_WIDTH_M / 2.0;
                quads.push(Quad::solid([ptr.origin - w, ptr.origin + w, ptr.end + w, ptr.end - w], color));
            }
        }
        if let Some((point, normal)) = ptr.hit {
            let right = normal.cross(Vec3::Y).try_normalize().unwrap_or(Vec3::X);
            let up = right.cross(normal);
            let c = if ptr.pressed { CURSOR_PRESSED } else { CURSOR };
            let center = point + normal * (LIFT_M * 2.0);
            quads.push(Quad::solid(
                rect(center, right, up, CURSOR_M / 2.0 + 0.002, CURSOR_M / 2.0 + 0.002),
                [0.0, 0.0, 0.0, 0.9],
            ));
            quads.push(Quad::solid(rect(center + normal * 0.0005, right, up, CURSOR_M / 2.0, CURSOR_M / 2.0), c));
        }
    }
    quads
}

fn floor(center: Vec3, quads: &mut Vec<Quad>) {
    const HALF: f32 = 8.0;
    const LINE: f32 = 0.01;
    let c = Vec3::new(center.x.round(), 0.0, center.z.round());
    quads.push(Quad::solid(rect(c, Vec3::X, Vec3::NEG_Z, HALF, HALF), FLOOR));
    let lift = Vec3::Y * 0.001;
    for k in -8..=8 {
        let off = k as f32;
        // Lines along Z and along X, one metre apart.
        quads.push(Quad::solid(rect(c + lift + Vec3::X * off, Vec3::X, Vec3::NEG_Z, LINE / 2.0, HALF), GRID));
        quads.push(Quad::solid(rect(c + lift + Vec3::Z * off, Vec3::X, Vec3::NEG_Z, HALF, LINE / 2.0), GRID));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout, WallConfig, WallOrigin};

    fn panels(n: usize) -> Vec<PanelView> {
        layout(&WallConfig::default(), &WallOrigin::default(), &vec![4.0 / 3.0; n])
            .into_iter()
            .map(|panel| PanelView {
                panel,
                state: StreamState::Live,
                focused: false,
                has_video: true,
                label_aspect: Some(20.0),
                hud_aspect: None,
            })
            .collect()
    }

    #[test]
    fn every_panel_gets_its_video_and_caption() {
        let quads = build(&SceneInput { panels: panels(9), ..Default::default() });
        for i in 0..9 {
            assert_eq!(quads.iter().filter(|q| q.tex == Tex::Video(i)).count(), 1);
            assert_eq!(quads.iter().filter(|q| q.tex == Tex::Label(i)).count(), 1);
        }
        // The video quad is exactly the panel, so what is drawn is what the ray maps.
        let p = panels(9);
        let q = quads.iter().find(|q| q.tex == Tex::Video(4)).unwrap();
        assert_eq!(q.corners, p[4].panel.corners());
    }

    #[test]
    fn captions_stay_inside_the_gap_between_rows() {
        let p = panels(9);
        let quads = build(&SceneInput { panels: p.clone(), ..Default::default() });
        let label = quads.iter().find(|q| q.tex == Tex::Label(1)).unwrap();
        // Top of the caption below panel 1 is under panel 1's bottom edge and above panel 4's top.
        let bottom_of_1 = p[1].panel.corners()[3].y;
        let top_of_4 = p[4].panel.corners()[0].y;
        assert!(label.corners[0].y < bottom_of_1);
        assert!(label.corners[3].y > top_of_4, "{} <= {}", label.corners[3].y, top_of_4);
    }

    #[test]
    fn a_ray_through_a_caption_picks_it_and_nothing_else() {
        let p = panels(9);
        let layout: Vec<Panel> = p.iter().map(|v| v.panel).collect();
        let quads = build(&SceneInput { panels: p, ..Default::default() });
        let eye = loco_shared::layout::WallOrigin::default().eye;
        for i in [0, 4, 8] {
            let label = quads.iter().find(|q| q.tex == Tex::Label(i)).unwrap();
            // The quad drawn is the caption picked.
            assert_eq!(label.corners, caption_corners(&layout[i], 20.0));
            let centre = (label.corners[0] + label.corners[2]) / 2.0;
            let (hit, point) = pick_caption(&layout, 20.0, eye, (centre - eye).normalize()).unwrap();
            assert_eq!(hit, i);
            assert!(point.distance(centre) < 1e-4);
            // Not a panel: the ray passes between the rows.
            assert_eq!(loco_shared::layout::pick(&layout, eye, (centre - eye).normalize()), None);
        }
        // The middle of a panel is no caption.
        assert_eq!(pick_caption(&layout, 20.0, eye, (layout[4].center - eye).normalize()), None);
    }

    #[test]
    fn focus_frame_is_drawn_before_its_panel_and_a_missing_video_is_solid() {
        let mut p = panels(3);
        p[1].focused = true;
        p[2].has_video = false;
        let quads = build(&SceneInput { panels: p, ..Default::default() });
        let frame = quads.iter().position(|q| q.color == FOCUS).unwrap();
        let video = quads.iter().position(|q| q.tex == Tex::Video(1)).unwrap();
        assert!(frame < video);
        assert!(!quads.iter().any(|q| q.tex == Tex::Video(2)));
    }

    #[test]
    fn pointer_draws_a_beam_and_a_cursor_last() {
        let p = panels(1);
        let n = p[0].panel.normal();
        let hit = p[0].panel.center;
        let input = SceneInput {
            panels: p,
            pointers: vec![Pointer {
                origin: Vec3::new(0.2, 1.0, -0.2),
                end: hit,
                hit: Some((hit, n)),
                pressed: false,
                beam: true,
            }],
            ..Default::default()
        };
        let quads = build(&input);
        let last = quads.last().unwrap();
        assert_eq!(last.color, CURSOR);
        // The cursor sits in front of the panel.
        let c = (last.corners[0] + last.corners[2]) / 2.0;
        assert!((c - hit).dot(n) > 0.0);
        assert_eq!(quads.iter().filter(|q| q.color == LASER).count(), 2);
    }
}
