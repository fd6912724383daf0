//! WebXR media layers: each live panel's `<video>` shown by the headset's compositor as a quad
//! layer (`XRMediaBinding.createQuadLayer`) placed exactly on the panel, under a projection layer
//! that the scene is drawn into with a transparent hole where each such panel is, so that rays,
//! cursors, captions, menus and the keyboard stay visible over the videos. Pure: the web shell
//! (`web/medialayers.rs`) creates the layers and carries these decisions out.
//!
//! Why: Quest Browser's compositor samples a media layer's video directly — no per-frame copy
//! into a texture, one resampling instead of two (video → eye buffer → display), so text is
//! sharper and the page's frame costs less.

use glam::{Mat3, Quat, Vec3};
use loco_shared::layout::Panel;

/// Where a quad layer goes: its centre and orientation in the session's reference space (the
/// quad faces its local +Z) and its full width and height in metres (the Layers spec's
/// `XRQuadLayer.width`/`height`: a 1 × 1 quad is one metre square).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuadPlacement {
    pub position: Vec3,
    pub orientation: Quat,
    pub width: f32,
    pub height: f32,
}

impl QuadPlacement {
    /// The quad covering `panel` exactly: its centre, +X along the desktop's right, +Y up, +Z
    /// towards the viewer (the panel's front normal).
    pub fn of(panel: &Panel) -> Self {
        let x = panel.right.normalize();
        let y = panel.up.normalize();
        let z = x.cross(y).normalize();
        Self {
            position: panel.center,
            orientation: Quat::from_mat3(&Mat3::from_cols(x, y, z)).normalize(),
            width: panel.width_m,
            height: panel.height_m,
        }
    }

    /// Corners top-left, top-right, bottom-right, bottom-left, as the compositor places them.
    pub fn corners(&self) -> [Vec3; 4] {
        let r = self.orientation * Vec3::X * (self.width / 2.0);
        let u = self.orientation * Vec3::Y * (self.height / 2.0);
        [self.position - r + u, self.position + r + u, self.position + r - u, self.position - r - u]
    }

    /// Whether moving from `self` to `other` is worth telling the compositor (a tenth of a
    /// millimetre, or a rotation of about 0.01°).
    pub fn differs(&self, other: &Self) -> bool {
        const EPS: f32 = 1e-4;
        self.position.distance(other.position) > EPS
            || self.orientation.dot(other.orientation).abs() < 1.0 - 1e-8
            || (self.width - other.width).abs() > EPS
            || (self.height - other.height).abs() > EPS
    }
}

/// One panel, as the layer bookkeeping sees it this frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PanelLayerInput {
    /// The stream is live and its `<video>` has a decoded frame (`readyState` ≥ 2).
    pub live: bool,
    /// The video's intrinsic size (0 × 0 before the first frame).
    pub video_size: (u32, u32),
    /// The size the panel's quad layer was made for, if it has one.
    pub layer_size: Option<(u32, u32)>,
}

/// What to do with one panel's quad layer this frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerAction {
    /// Nothing to change.
    Keep,
    /// Make one (the panel went live).
    Create,
    /// Drop it and make a new one: the video's size changed (a guest changed its resolution);
    /// a compositor sizes a media layer's image when it is made.
    Recreate,
}

/// The action for one panel, and whether the panel is shown through its layer this frame (the
/// scene then cuts a hole for it instead of drawing its texture).
pub fn decide(p: &PanelLayerInput) -> (LayerAction, bool) {
    if !p.live || p.video_size.0 == 0 || p.video_size.1 == 0 {
        // Not live: its last picture, dimmed, is drawn from its texture as without layers; the
        // layer (if any) stays, hidden under the projection layer, for when the stream is back.
        return (LayerAction::Keep, false);
    }
    match p.layer_size {
        None => (LayerAction::Create, true),
        Some(s) if s != p.video_size => (LayerAction::Recreate, true),
        Some(_) => (LayerAction::Keep, true),
    }
}

/// The order of the session's `layers`: the panels' quad layers farthest from `eye` first (the
/// compositor draws later layers over earlier ones, so a panel pulled closer covers the wall
/// behind it), then the projection layer on top. `with_layer` lists the panels that have a quad
/// layer; ties keep panel order.
pub fn layer_order(panels: &[Panel], with_layer: &[usize], eye: Vec3) -> Vec<usize> {
    let mut order: Vec<usize> = with_layer.iter().copied().filter(|&i| i < panels.len()).collect();
    crate::scene::farthest_first(&mut order, |i| panels[i].center, eye);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout, WallConfig, WallOrigin};

    fn panels() -> Vec<Panel> {
        layout(&WallConfig::default(), &WallOrigin::default(), &[4.0 / 3.0; 9])
    }

    #[test]
    fn placement_covers_the_panel_exactly() {
        for p in panels() {
            let q = QuadPlacement::of(&p);
            for (a, b) in q.corners().iter().zip(p.corners()) {
                assert!(a.distance(b) < 1e-5, "{a} vs {b}");
            }
            // The quad's front (+Z) is the panel's front.
            assert!((q.orientation * Vec3::Z).dot(p.normal()) > 0.9999);
            assert_eq!((q.width, q.height), (p.width_m, p.height_m));
        }
    }

    #[test]
    fn placement_of_a_turned_panel() {
        let p = Panel {
            center: Vec3::new(1.0, 1.5, -2.0),
            right: Vec3::new(0.0, 0.0, -1.0),
            up: Vec3::Y,
            width_m: 0.8,
            height_m: 0.6,
        };
        let q = QuadPlacement::of(&p);
        assert!((q.orientation * Vec3::X).distance(p.right) < 1e-6);
        // right = -Z, up = +Y: the front (right x up) is +X.
        assert!((q.orientation * Vec3::Z).distance(Vec3::X) < 1e-6, "faces +X: {}", q.orientation * Vec3::Z);
        assert!((q.orientation * Vec3::Z).distance(p.normal()) < 1e-6);
        assert!((q.orientation.length() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn small_moves_are_not_sent() {
        let p = panels()[4];
        let a = QuadPlacement::of(&p);
        let mut b = a;
        b.position.x += 1e-5;
        assert!(!a.differs(&b));
        b.position.x += 1e-3;
        assert!(a.differs(&b));
        let mut c = a;
        c.width *= 1.01;
        assert!(a.differs(&c));
        let mut d = a;
        d.orientation = (Quat::from_rotation_y(0.01) * d.orientation).normalize();
        assert!(a.differs(&d));
    }

    #[test]
    fn decisions() {
        let live = |video: (u32, u32), layer: Option<(u32, u32)>| PanelLayerInput {
            live: true,
            video_size: video,
            layer_size: layer,
        };
        assert_eq!(decide(&live((1024, 768), None)), (LayerAction::Create, true));
        assert_eq!(decide(&live((1024, 768), Some((1024, 768)))), (LayerAction::Keep, true));
        assert_eq!(decide(&live((800, 600), Some((1024, 768)))), (LayerAction::Recreate, true));
        // No frame yet, or not live: drawn from its texture, layer kept.
        assert_eq!(decide(&live((0, 0), None)), (LayerAction::Keep, false));
        let down = PanelLayerInput { live: false, video_size: (1024, 768), layer_size: Some((1024, 768)) };
        assert_eq!(decide(&down), (LayerAction::Keep, false));
    }

    #[test]
    fn farthest_first_then_panel_order() {
        let mut ps = panels();
        let eye = Vec3::new(0.0, 1.6, 0.0);
        let all: Vec<usize> = (0..ps.len()).collect();
        let order = layer_order(&ps, &all, eye);
        assert_eq!(order.len(), 9);
        for w in order.windows(2) {
            let (a, b) = (ps[w[0]].center.distance(eye), ps[w[1]].center.distance(eye));
            assert!(a >= b - 1e-6, "{order:?}");
        }
        // Pull panel 0 halfway to the viewer: it goes last (on top).
        ps[0].center = ps[0].center.lerp(eye, 0.5);
        assert_eq!(*layer_order(&ps, &all, eye).last().unwrap(), 0);
        // Only panels with a layer, and none out of range.
        assert_eq!(layer_order(&ps, &[3, 42], eye), vec![3]);
    }
}
