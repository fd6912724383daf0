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
    /// Panel `i`'s VM menu (opened from its caption).
    Menu(usize),
    /// The in-VR keyboard.
    Keyboard,
    /// A hole: the quad's area is made fully transparent (colour and alpha replaced by 0, not
    /// blended), so that a compositor layer beneath the target shows through (a panel's media
    /// layer, [`crate::medialayers`]). Drawn with the 1×1 white texture.
    Hole,
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
    /// The panel's video is shown by a compositor layer beneath the target: draw a hole
    /// ([`Tex::Hole`]) where the panel is instead of its texture.
    pub through_layer: bool,
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

/// An open VM menu over the bottom of its panel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MenuView {
    pub panel: usize,
    /// The item being held and how far its hold is (0..1).
    pub progress: Option<(usize, f32)>,
}

/// The in-VR keyboard: where it stands and which keys to light (uv rectangles and colours).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyboardView {
    pub corners: [Vec3; 4],
    pub lit: Vec<([f32; 4], [f32; 4])>,
}

#[derive(Debug, Clone, Default)]
pub struct SceneInput {
    pub panels: Vec<PanelView>,
    pub pointers: Vec<Pointer>,
    /// Where the floor grid is centred (the viewer's feet; panels are drawn farthest first from
    /// here).
    pub floor_center: Vec3,
    pub menus: Vec<MenuView>,
    pub keyboard: Option<KeyboardView>,
    /// Panels held by a grip (drawn with a frame).
    pub grabbed: Vec<usize>,
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
const GRABBED: [f32; 4] = [0.35, 0.85, 1.0, 1.0];
/// The hold's progress bar over a menu button.
pub const HOLD_BAR: [f32; 4] = [1.0, 0.35, 0.25, 0.6];

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
    pick_caption_u(panels, aspect, origin, dir).map(|(i, p, _)| (i, p))
}

/// [`pick_caption`] with the caption's u (0 left … 1 right) at the hit: its right end
/// (from [`crate::control::CAPTION_BUTTON_U`]) is the VM menu button.
pub fn pick_caption_u(panels: &[Panel], aspect: f32, origin: Vec3, dir: Vec3) -> Option<(usize, Vec3, f32)> {
    panels
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let hit = p.intersect_plane(origin, dir)?;
            let c = caption_corners(p, aspect);
            let local = hit.point - c[0];
            let (w, h) = (c[1].distance(c[0]), c[3].distance(c[0]));
            let (u, v) = (local.dot(p.right) / w, -local.dot(p.up) / h);
            ((0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v)).then_some((i, hit.distance_m, hit.point, u))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _, point, u)| (i, point, u))
}

/// Where panel `panel`'s VM menu is drawn: over the bottom of the panel, as wide as it, in
/// front of it. Corners TL, TR, BR, BL.
pub fn menu_corners(panel: &Panel) -> [Vec3; 4] {
    let c = panel.corners();
    let lift = panel.normal() * (LIFT_M * 2.0);
    let h = (panel.width_m * crate::control::MENU_H as f32 / crate::control::MENU_W as f32).min(panel.height_m);
    let (bl, br) = (c[3] + lift, c[2] + lift);
    [bl + panel.up * h, br + panel.up * h, br, bl]
}

/// The point (u, v) of a quad given by its corners TL, TR, BR, BL.
fn at_uv(c: &[Vec3; 4], u: f32, v: f32) -> Vec3 {
    c[0] + (c[1] - c[0]) * u + (c[3] - c[0]) * v
}

/// A sub-rectangle (u0, v0, u1, v1) of a quad, lifted toward `normal` by `lift`.
pub fn sub_quad(c: &[Vec3; 4], r: [f32; 4], normal: Vec3, lift: f32) -> [Vec3; 4] {
    let l = normal * lift;
    [at_uv(c, r[0], r[1]) + l, at_uv(c, r[2], r[1]) + l, at_uv(c, r[2], r[3]) + l, at_uv(c, r[0], r[3]) + l]
}

/// Where a ray meets a quad (corners TL, TR, BR, BL) from its front: (distance, u, v, point).
pub fn quad_hit(c: &[Vec3; 4], origin: Vec3, dir: Vec3) -> Option<(f32, f32, f32, Vec3)> {
    let p = crate::keyboard::as_panel(c);
    let h = p.intersect(origin, dir)?;
    Some((h.distance_m, h.u, h.v, h.point))
}

/// What the scene's own controls a ray hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiHit {
    /// Key `k` of the keyboard.
    Key(usize),
    /// Panel `i`'s open menu, on an item or not.
    Menu(usize, Option<crate::control::MenuItem>),
    /// Panel `i`'s caption: the mute part or its menu button.
    Caption(usize),
    CaptionButton(usize),
}

/// The control a ray hits first, with the point and the control's normal. Panels hide the
/// captions behind them; menus lie over their panels; the keyboard is nearer than the wall.
pub fn pick_ui(
    panels: &[Panel],
    caption_aspect: f32,
    open_menus: &[usize],
    keyboard: Option<(&[Vec3; 4], &[crate::keyboard::Key])>,
    origin: Vec3,
    dir: Vec3,
) -> Option<(UiHit, Vec3, Vec3)> {
    let panel = loco_shared::layout::pick(panels, origin, dir).map(|(_, h)| h.distance_m);
    let nearer = |d: f32, slack: f32| panel.is_none_or(|p| d <= p + slack);
    let mut best: Option<(f32, UiHit, Vec3, Vec3)> = None;
    let mut offer = |d: f32, hit: UiHit, point: Vec3, n: Vec3| {
        if best.as_ref().is_none_or(|b| d < b.0) {
            best = Some((d, hit, point, n));
        }
    };
    if let Some((c, keys)) = keyboard {
        if let Some((d, u, v, point)) = quad_hit(c, origin, dir) {
            if let (true, Some(k)) = (nearer(d, 0.0), crate::keyboard::key_at(keys, u, v)) {
                offer(d, UiHit::Key(k), point, crate::keyboard::as_panel(c).normal());
            }
        }
    }
    for &i in open_menus {
        let Some(p) = panels.get(i) else { continue };
        if let Some((d, u, v, point)) = quad_hit(&menu_corners(p), origin, dir) {
            if nearer(d, 0.01) {
                offer(d - 0.005, UiHit::Menu(i, crate::control::menu_item_at(u, v)), point, p.normal());
            }
        }
    }
    if panel.is_none() {
        if let Some((i, point, u)) = pick_caption_u(panels, caption_aspect, origin, dir) {
            let hit = if u >= crate::control::CAPTION_BUTTON_U { UiHit::CaptionButton(i) } else { UiHit::Caption(i) };
            offer(point.distance(origin), hit, point, panels[i].normal());
        }
    }
    best.map(|(_, h, p, n)| (h, p, n))
}

fn rect(center: Vec3, right: Vec3, up: Vec3, half_w: f32, half_h: f32) -> [Vec3; 4] {
    let (r, u) = (right * half_w, up * half_h);
    [center - r + u, center + r + u, center + r - u, center - r - u]
}

/// Sorts panel indices by their centre's distance from `eye`, farthest first (ties: panel order):
/// the drawing order of the panels, and of their media layers.
pub fn farthest_first(order: &mut [usize], center: impl Fn(usize) -> Vec3, eye: Vec3) {
    order.sort_by(|&a, &b| {
        let d = |i: usize| center(i).distance_squared(eye);
        d(b).total_cmp(&d(a)).then(a.cmp(&b))
    });
}

/// The quads for one frame, in drawing order.
pub fn build(input: &SceneInput) -> Vec<Quad> {
    let mut quads = Vec::with_capacity(8 + input.panels.len() * 4 + input.pointers.len() * 3);
    floor(input.floor_center, &mut quads);
    // Farthest first, so a panel pulled closer is drawn over the wall behind it.
    let mut order: Vec<usize> = (0..input.panels.len()).collect();
    farthest_first(&mut order, |i| input.panels[i].panel.center, input.floor_center);
    for i in order {
        let p = &input.panels[i];
        let panel = &p.panel;
        let n = panel.normal();
        if input.grabbed.contains(&i) {
            quads.push(Quad::solid(
                rect(
                    panel.center - n * LIFT_M,
                    panel.right,
                    panel.up,
                    panel.width_m / 2.0 + crate::arrange::FRAME_BAND_M,
                    panel.height_m / 2.0 + crate::arrange::FRAME_BAND_M,
                ),
                GRABBED,
            ));
        }
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
        if p.through_layer {
            quads.push(Quad { corners, uv: FULL_UV, color: [0.0; 4], tex: Tex::Hole });
        } else if p.has_video {
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
        for m in input.menus.iter().filter(|m| m.panel == i) {
            let c = menu_corners(panel);
            quads.push(Quad { corners: c, uv: FULL_UV, color: [1.0; 4], tex: Tex::Menu(i) });
            if let Some((k, f)) = m.progress {
                let (u0, v0, u1, v1) = crate::control::menu_item_rect(k);
                let r = [u0, v0, u0 + (u1 - u0) * f.clamp(0.0, 1.0), v1];
                quads.push(Quad::solid(sub_quad(&c, r, n, LIFT_M / 2.0), HOLD_BAR));
            }
        }
    }
    if let Some(kb) = &input.keyboard {
        let n = crate::keyboard::as_panel(&kb.corners).normal();
        quads.push(Quad { corners: kb.corners, uv: FULL_UV, color: [1.0; 4], tex: Tex::Keyboard });
        for (r, color) in &kb.lit {
            quads.push(Quad::solid(sub_quad(&kb.corners, *r, n, LIFT_M / 2.0), *color));
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
                through_layer: false,
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
    fn menus_and_the_keyboard_take_the_ray_before_what_is_behind_them() {
        let p = panels(9);
        let layout: Vec<Panel> = p.iter().map(|v| v.panel).collect();
        let eye = loco_shared::layout::WallOrigin::default().eye;
        // The menu over panel 4: the ray through an item's middle hits that item.
        let m = menu_corners(&layout[4]);
        for (k, item) in crate::control::MENU_ITEMS.iter().enumerate() {
            let (u0, v0, u1, v1) = crate::control::menu_item_rect(k);
            let target = at_uv(&m, (u0 + u1) / 2.0, (v0 + v1) / 2.0);
            let (hit, point, _) = pick_ui(&layout, 20.0, &[4], None, eye, (target - eye).normalize()).unwrap();
            assert_eq!(hit, UiHit::Menu(4, Some(*item)));
            assert!(point.distance(target) < 1e-3);
        }
        // Closed: the panel gets it.
        let target = at_uv(&m, 0.1, 0.3);
        assert_eq!(pick_ui(&layout, 20.0, &[], None, eye, (target - eye).normalize()), None);
        // The caption: its left part mutes, its right end opens the menu.
        let c = caption_corners(&layout[1], 20.0);
        for (u, want) in [(0.3, UiHit::Caption(1)), (0.95, UiHit::CaptionButton(1))] {
            let t = at_uv(&c, u, 0.5);
            assert_eq!(pick_ui(&layout, 20.0, &[], None, eye, (t - eye).normalize()).map(|x| x.0), Some(want));
        }
        // The keyboard in front of the wall.
        let kb = crate::keyboard::Keyboard::default();
        let corners = crate::keyboard::place(&layout[1], eye);
        let k = kb.keys.iter().position(|k| k.name == "g").unwrap();
        let (u0, v0, u1, v1) = crate::keyboard::key_rect(&kb.keys[k]);
        let t = at_uv(&corners, (u0 + u1) / 2.0, (v0 + v1) / 2.0);
        let hit = pick_ui(&layout, 20.0, &[], Some((&corners, &kb.keys)), eye, (t - eye).normalize());
        assert_eq!(hit.map(|x| x.0), Some(UiHit::Key(k)));
        // Drawn: the menu after its panel, the keyboard after every panel, the hold bar over the item.
        let input = SceneInput {
            panels: p,
            menus: vec![MenuView { panel: 4, progress: Some((0, 0.5)) }],
            keyboard: Some(KeyboardView { corners, lit: vec![([0.0, 0.0, 0.1, 0.1], [1.0; 4])] }),
            ..Default::default()
        };
        let quads = build(&input);
        let pos = |t: Tex| quads.iter().position(|q| q.tex == t).unwrap();
        assert!(pos(Tex::Menu(4)) > pos(Tex::Video(4)));
        assert!(quads.iter().position(|q| q.color == HOLD_BAR).unwrap() > pos(Tex::Menu(4)));
        assert!((0..9).all(|i| pos(Tex::Keyboard) > pos(Tex::Video(i))));
    }

    #[test]
    fn a_panel_pulled_closer_is_drawn_over_the_wall() {
        let mut p = panels(9);
        let eye = loco_shared::layout::WallOrigin::default().eye;
        p[0].panel.center = eye + (p[0].panel.center - eye) * 0.5;
        let quads = build(&SceneInput { panels: p, floor_center: eye, grabbed: vec![0], ..Default::default() });
        let pos = |t: Tex| quads.iter().position(|q| q.tex == t).unwrap();
        assert!((1..9).all(|i| pos(Tex::Video(0)) > pos(Tex::Video(i))));
        assert!(quads.iter().any(|q| q.color == GRABBED));
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

    /// A controller's ray from below the eye ending on the centre of `p`.
    fn pointer_at_centre(p: &PanelView) -> Pointer {
        let hit = p.panel.center;
        Pointer {
            origin: Vec3::new(0.2, 1.0, -0.2),
            end: hit,
            hit: Some((hit, p.panel.normal())),
            pressed: false,
            beam: true,
        }
    }

    #[test]
    fn pointer_draws_a_beam_and_a_cursor_last() {
        let p = panels(1);
        let n = p[0].panel.normal();
        let hit = p[0].panel.center;
        let input = SceneInput { pointers: vec![pointer_at_centre(&p[0])], panels: p, ..Default::default() };
        let quads = build(&input);
        let last = quads.last().unwrap();
        assert_eq!(last.color, CURSOR);
        // The cursor sits in front of the panel.
        let c = (last.corners[0] + last.corners[2]) / 2.0;
        assert!((c - hit).dot(n) > 0.0);
        assert_eq!(quads.iter().filter(|q| q.color == LASER).count(), 2);
    }

    #[test]
    fn a_panel_shown_by_its_layer_is_a_hole_under_everything_over_it() {
        let mut p = panels(3);
        p[1].through_layer = true;
        p[1].focused = true;
        let input = SceneInput { pointers: vec![pointer_at_centre(&p[1])], panels: p.clone(), ..Default::default() };
        let quads = build(&input);
        assert!(!quads.iter().any(|q| q.tex == Tex::Video(1)), "no texture for a panel its layer shows");
        let holes: Vec<usize> = (0..quads.len()).filter(|&k| quads[k].tex == Tex::Hole).collect();
        assert_eq!(holes.len(), 1);
        let h = quads[holes[0]];
        assert_eq!(h.corners, p[1].panel.corners(), "the hole is exactly the panel (and its layer)");
        assert_eq!(h.color, [0.0; 4]);
        // The focus frame is drawn before the hole (around it); the caption, laser and cursor
        // after it (over the video).
        let frame = quads.iter().position(|q| q.color == FOCUS).unwrap();
        let caption = quads.iter().position(|q| q.tex == Tex::Label(1)).unwrap();
        let cursor = quads.iter().position(|q| q.color == CURSOR).unwrap();
        assert!(frame < holes[0] && holes[0] < caption && holes[0] < cursor);
        // The others keep their textures.
        assert_eq!(quads.iter().filter(|q| matches!(q.tex, Tex::Video(_))).count(), 2);
    }
}
