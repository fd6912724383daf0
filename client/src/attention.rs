//! Attention: which panels the user looks at, told to each panel's agent so that it spends
//! frames and bits where they are seen (`docs/protocol.md`, Attention).
//!
//! Each frame, every panel is [`Attention::Focused`] (the focused panel — the one last clicked,
//! or triggered in VR — while in view), [`Attention::Visible`] (inside some eye's view frustum) or
//! [`Attention::Hidden`] (outside all of them): [`classify`]. The flat view passes no frusta:
//! there every panel is visible, the focused one focused. [`Sender`] decides when a panel's
//! state goes on its `input` channel: on change only; a more attentive state at once (at most
//! one message per [`MIN_GAP_MS`]), so a panel coming into view gets its keyframe quickly; a
//! less attentive one only after it held [`DOWNGRADE_HOLD_MS`], so a glance away or a pointer
//! sweeping over the wall does not throttle a stream for a moment; again in full on each new
//! session (the agent starts every session as focused).
//!
//! Pure: time comes in as milliseconds; unit-tested natively.

use glam::{Mat4, Vec3, Vec4};
use loco_shared::layout::Panel;
pub use loco_shared::protocol::Attention;

/// At most one attention message per panel this often.
pub const MIN_GAP_MS: f64 = 100.0;
/// A less attentive state is told only once it held this long.
pub const DOWNGRADE_HOLD_MS: f64 = 300.0;

/// Whether any part of the quad with these corners may be inside the view frustum of one of
/// `view_projs` (clip space with z in 0..w, as [`crate::render::View::view_proj`]; a y flip does
/// not matter). Conservative: a quad whose corners are all beyond one plane is out; anything
/// else counts as in (a quad crossing a frustum's corner from outside may count as in).
pub fn in_view(corners: &[Vec3; 4], view_projs: &[Mat4]) -> bool {
    view_projs.iter().any(|vp| {
        let clip: Vec<Vec4> = corners.iter().map(|c| *vp * c.extend(1.0)).collect();
        let all_outside = |f: &dyn Fn(&Vec4) -> bool| clip.iter().all(f);
        !(all_outside(&|p| p.x < -p.w)
            || all_outside(&|p| p.x > p.w)
            || all_outside(&|p| p.y < -p.w)
            || all_outside(&|p| p.y > p.w)
            || all_outside(&|p| p.z < 0.0)
            || all_outside(&|p| p.z > p.w)
            || all_outside(&|p| !p.w.is_finite()))
    })
}

/// Each panel's attention this frame. `views`: the view-projection of each eye (XR), or `None`
/// for the flat view (every panel visible).
pub fn classify(panels: &[Panel], focus: Option<usize>, views: Option<&[Mat4]>) -> Vec<Attention> {
    panels
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let seen = views.is_none_or(|v| in_view(&p.corners(), v));
            match (seen, focus == Some(i)) {
                (false, _) => Attention::Hidden,
                (true, true) => Attention::Focused,
                (true, false) => Attention::Visible,
            }
        })
        .collect()
}

/// When one panel's attention is told to its agent (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sender {
    /// What the agent was told in this session, and when.
    sent: Option<(Attention, f64)>,
    /// The state seen now, and since when.
    seen: Option<(Attention, f64)>,
}

impl Sender {
    /// A new session (or the channel closed): the next state is sent at once.
    pub fn reset(&mut self) {
        self.sent = None;
    }

    /// What the agent was last told.
    pub fn sent(&self) -> Option<Attention> {
        self.sent.map(|(s, _)| s)
    }

    /// The state seen at `now_ms` (the page's clock); `Some(state)` when it is to be sent now.
    pub fn update(&mut self, state: Attention, now_ms: f64) -> Option<Attention> {
        if self.seen.is_none_or(|(s, _)| s != state) {
            self.seen = Some((state, now_ms));
        }
        let since = self.seen.map_or(now_ms, |(_, t)| t);
        let send = match self.sent {
            None => true,
            Some((sent, _)) if sent == state => false,
            Some((sent, at)) => now_ms - at >= MIN_GAP_MS && (state > sent || now_ms - since >= DOWNGRADE_HOLD_MS),
        };
        if send {
            self.sent = Some((state, now_ms));
            Some(state)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glam::Quat;
    use loco_shared::layout::{layout, WallConfig, WallOrigin};
    use Attention::*;

    fn wall() -> Vec<Panel> {
        layout(&WallConfig::default(), &WallOrigin::default(), &[4.0 / 3.0; 9])
    }

    /// An eye at the wall's eye looking along `yaw` (radians, 0 = the wall's centre), 90° fov.
    fn eye(yaw: f32) -> Mat4 {
        let origin = WallOrigin::default();
        let rot = Quat::from_rotation_y(origin.yaw_rad + yaw);
        let view = Mat4::from_rotation_translation(rot, origin.eye).inverse();
        Mat4::perspective_rh(90f32.to_radians(), 1.0, 0.05, 100.0) * view
    }

    #[test]
    fn flat_view_sees_every_panel_and_focuses_one() {
        let panels = wall();
        let states = classify(&panels, Some(4), None);
        assert_eq!(states.len(), 9);
        assert_eq!(states[4], Focused);
        assert!(states.iter().enumerate().all(|(i, s)| i == 4 || *s == Visible));
        assert!(classify(&panels, None, None).iter().all(|s| *s == Visible));
    }

    #[test]
    fn looking_at_the_wall_sees_it_and_turning_round_hides_it() {
        let panels = wall();
        let ahead = classify(&panels, Some(0), Some(&[eye(0.0)]));
        assert!(ahead.iter().all(|s| *s != Hidden), "{ahead:?}");
        assert_eq!(ahead[0], Focused);
        let behind = classify(&panels, Some(0), Some(&[eye(std::f32::consts::PI)]));
        assert!(behind.iter().all(|s| *s == Hidden), "{behind:?}");
        // Turned far to one side: panels on that side stay in view, the others leave it.
        let side = classify(&panels, None, Some(&[eye(1.2)]));
        let seen = side.iter().filter(|s| **s == Visible).count();
        assert!(seen > 0 && seen < 9, "{side:?}");
        // Two eyes: seen by either counts.
        let both = classify(&panels, None, Some(&[eye(1.2), eye(-1.2)]));
        assert!(both.iter().filter(|s| **s == Visible).count() > seen, "{both:?}");
    }

    #[test]
    fn in_view_is_a_frustum_test() {
        let vp = Mat4::perspective_rh(90f32.to_radians(), 1.0, 0.1, 10.0); // looking down −z
        let quad = |z: f32, x: f32| {
            [
                Vec3::new(x - 0.1, 0.1, z),
                Vec3::new(x + 0.1, 0.1, z),
                Vec3::new(x + 0.1, -0.1, z),
                Vec3::new(x - 0.1, -0.1, z),
            ]
        };
        assert!(in_view(&quad(-2.0, 0.0), &[vp]));
        assert!(!in_view(&quad(2.0, 0.0), &[vp]), "behind the eye");
        assert!(!in_view(&quad(-20.0, 0.0), &[vp]), "beyond the far plane");
        assert!(!in_view(&quad(-2.0, 5.0), &[vp]), "off to the side");
        assert!(in_view(&quad(-2.0, 2.05), &[vp]), "straddling the edge");
        assert!(!in_view(&quad(-2.0, 0.0), &[]), "no views, nothing seen");
    }

    #[test]
    fn sends_on_change_only_upgrades_at_once_downgrades_after_a_hold() {
        let mut s = Sender::default();
        assert_eq!(s.update(Visible, 0.0), Some(Visible), "the first state goes at once");
        assert_eq!(s.update(Visible, 16.0), None, "no repeats");
        // Focused: more attentive, but within the minimum gap.
        assert_eq!(s.update(Focused, 50.0), None);
        assert_eq!(s.update(Focused, 100.0), Some(Focused));
        // Less attentive: only once it held 300 ms.
        assert_eq!(s.update(Hidden, 500.0), None);
        assert_eq!(s.update(Hidden, 799.0), None);
        assert_eq!(s.update(Hidden, 800.0), Some(Hidden));
        assert_eq!(s.sent(), Some(Hidden));
        // Back in view: at once.
        assert_eq!(s.update(Visible, 900.0), Some(Visible));
    }

    #[test]
    fn a_short_glance_away_sends_nothing() {
        let mut s = Sender::default();
        s.update(Focused, 0.0);
        for t in [1000.0, 1100.0, 1200.0] {
            assert_eq!(s.update(Hidden, t), None);
        }
        assert_eq!(s.update(Focused, 1250.0), None, "back before the hold ran out");
        // A new hold starts from the next change, not the first one.
        assert_eq!(s.update(Visible, 1300.0), None);
        assert_eq!(s.update(Hidden, 1400.0), None);
        assert_eq!(s.update(Hidden, 1699.0), None);
        assert_eq!(s.update(Hidden, 1700.0), Some(Hidden));
    }

    #[test]
    fn a_new_session_is_told_again() {
        let mut s = Sender::default();
        assert_eq!(s.update(Hidden, 0.0), Some(Hidden));
        s.reset();
        assert_eq!(s.sent(), None);
        assert_eq!(s.update(Hidden, 10.0), Some(Hidden));
        // A rate never exceeds one message per gap, whatever the frame loop sees.
        let mut sent = 0;
        let mut t = 20.0;
        for i in 0..1000 {
            let state = Attention::ALL[i % 3];
            if s.update(state, t).is_some() {
                sent += 1;
            }
            t += 5.0;
        }
        assert!(sent <= (5000.0 / MIN_GAP_MS) as usize + 1, "{sent} messages in 5 s");
    }
}
