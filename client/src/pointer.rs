//! Pointer routing for the mouse (flat view) and both XR hands: which panel a ray points at,
//! which desktop pixel that is, and which input messages go to which panel. A press captures
//! the panel under the pointer until every button is released; while captured, the ray is
//! intersected with that panel's plane and clamped to its edges, so drags stay on it.
//!
//! Pure: rays come in as origin and direction in `local-floor` space, the panels' layout and
//! desktop sizes as slices, controller buttons as [`GamepadState`]s with the time; out come
//! `(panel, message)` pairs to send, the panel to focus, and the [`Pointer`] to draw.

use std::time::Duration;

use glam::Vec3;
use loco_shared::controller::{ControllerButtons, GamepadState};
use loco_shared::layout::{desktop_pixel, pick, Hit, Panel};
use loco_shared::protocol::{buttons, InputMessage};

use crate::scene::Pointer;

/// How far a laser reaches when it hits nothing.
pub const LASER_REACH_M: f32 = 4.0;

/// A message for panel `.0`.
pub type Routed = (usize, InputMessage);

/// Where a ray lands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aim {
    pub panel: usize,
    /// The desktop pixel (clamped to the desktop).
    pub x: u32,
    pub y: u32,
    pub hit: Hit,
}

impl Aim {
    fn pointer(&self, buttons: u8) -> Routed {
        (self.panel, InputMessage::Pointer { x: self.x, y: self.y, buttons })
    }

    /// Whether the hit is on the panel itself (not beside it on its plane).
    pub fn on_panel(&self) -> bool {
        (0.0..=1.0).contains(&self.hit.u) && (0.0..=1.0).contains(&self.hit.v)
    }
}

/// What a ray points at: with `captured`, that panel's plane whether or not the ray is over
/// the panel; else the nearest panel it hits. `sizes[i]` is panel `i`'s desktop size.
pub fn aim(layout: &[Panel], sizes: &[(u32, u32)], captured: Option<usize>, origin: Vec3, dir: Vec3) -> Option<Aim> {
    let (panel, hit) = match captured {
        Some(i) => (i, layout.get(i)?.intersect_plane(origin, dir)?),
        None => pick(layout, origin, dir)?,
    };
    let (w, h) = sizes.get(panel).copied()?;
    let (x, y) = desktop_pixel(hit.u, hit.v, w, h);
    Some(Aim { panel, x, y, hit })
}

/// The flat view's mouse: held buttons and the panel they captured.
#[derive(Debug, Clone, Default)]
pub struct Mouse {
    pub mask: u8,
    pub captured: Option<usize>,
}

impl Mouse {
    /// The mouse moved to `aim` (see [`aim`], with [`Mouse::captured`]).
    pub fn moved(&self, aim: Option<&Aim>) -> Option<Routed> {
        aim.map(|a| a.pointer(self.mask))
    }

    /// Button `bit` went down at `aim`: it captures that panel (which the shell focuses).
    /// `None` when the press hit no panel.
    pub fn press(&mut self, aim: Option<&Aim>, bit: u8) -> Option<Routed> {
        let a = aim?;
        self.captured = Some(a.panel);
        self.mask |= bit;
        Some(a.pointer(self.mask))
    }

    /// Button `bit` went up. `at` is where the ray meets the captured panel's plane, `last`
    /// the last position sent to it (used when the ray misses the plane).
    pub fn release(&mut self, bit: u8, at: Option<(u32, u32)>, last: Option<(u32, u32)>) -> Option<Routed> {
        let i = self.captured?;
        self.mask &= !bit;
        let (x, y) = at.or(last).unwrap_or((0, 0));
        if self.mask == 0 {
            self.captured = None;
        }
        Some((i, InputMessage::Pointer { x, y, buttons: self.mask }))
    }

    /// One wheel step at `aim`: the wheel bit, then without it.
    pub fn wheel(&self, aim: &Aim, up: bool) -> [Routed; 2] {
        let bit = if up { buttons::WHEEL_UP } else { buttons::WHEEL_DOWN };
        [aim.pointer(self.mask | bit), aim.pointer(self.mask)]
    }

    /// The cursor drawn where the mouse is.
    pub fn cursor(&self, aim: &Aim, normal: Vec3) -> Pointer {
        let at = aim.hit.point;
        Pointer { origin: at, end: at, hit: Some((at, normal)), pressed: self.mask != 0, beam: false }
    }

    /// Panel `i` went down: it is no longer captured, and the buttons held on it are let go
    /// (else their bits would ride along with every later move to other panels).
    pub fn panel_down(&mut self, i: usize) {
        if self.captured == Some(i) {
            self.captured = None;
            self.mask = 0;
        }
    }
}

/// One XR controller: its buttons (trigger, grip, thumbstick wheel), the panel they captured,
/// and the edge state of its A/X (HUD) and B/Y (recentre) buttons.
#[derive(Debug, Clone, Default)]
pub struct Hand {
    pub buttons: ControllerButtons,
    pub captured: Option<usize>,
    pub hover: Option<usize>,
    hud_button: bool,
    recentre_button: bool,
    keyboard_button: bool,
    /// The trigger as the UI gestures last saw it (with the buttons' hysteresis).
    caption_trigger: bool,
    /// A trigger press that began on a UI element (caption, menu, keyboard) is held: the panels
    /// see no trigger until it is released.
    pub ui_held: bool,
    /// The grip as the grab gesture last saw it.
    grip: bool,
    /// The panel this hand's grip holds (pulled closer or pushed away).
    pub grab: Option<crate::arrange::Grab>,
}

/// Edges of the trigger (or pinch) for the scene's own controls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UiTrigger {
    /// Pressed on a UI element (and the hand holds no panel): the element is pressed.
    pub pressed: bool,
    /// The press that began on a UI element ended.
    pub released: bool,
    /// Pressed in this frame, wherever the ray points.
    pub edge: bool,
}

/// A controller's buttons in one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pad {
    pub pad: GamepadState,
    /// A/X held.
    pub hud: bool,
    /// B/Y held.
    pub recentre: bool,
    /// The thumbstick pressed in (shows or hides the keyboard).
    pub keyboard: bool,
}

/// What one hand did in a frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandFrame {
    pub sends: Vec<Routed>,
    /// A trigger press on this panel: it takes the keyboard focus.
    pub focus: Option<usize>,
    /// A/X or B/Y was pressed in this frame.
    pub toggle_hud: bool,
    pub recentre: bool,
    /// The thumbstick was pressed in in this frame.
    pub toggle_keyboard: bool,
    /// The laser and cursor to draw.
    pub pointer: Option<Pointer>,
}

impl Hand {
    /// A frame with the controller's target ray at `origin`/`dir` (`dir` unit length).
    pub fn frame(
        &mut self,
        now: Duration,
        layout: &[Panel],
        sizes: &[(u32, u32)],
        origin: Vec3,
        dir: Vec3,
        pad: Pad,
    ) -> HandFrame {
        let target = aim(layout, sizes, self.captured, origin, dir);
        let masks = self.buttons.update(now, pad.pad);
        let mut out = HandFrame {
            toggle_hud: pad.hud && !self.hud_button,
            recentre: pad.recentre && !self.recentre_button,
            toggle_keyboard: pad.keyboard && !self.keyboard_button,
            ..Default::default()
        };
        self.hud_button = pad.hud;
        self.recentre_button = pad.recentre;
        self.keyboard_button = pad.keyboard;
        let mask = self.buttons.mask();
        match target {
            Some(a) => {
                if self.hover != Some(a.panel) && self.captured.is_none() {
                    self.hover = Some(a.panel);
                }
                out.sends.push(a.pointer(mask & !(buttons::WHEEL_UP | buttons::WHEEL_DOWN)));
                out.sends.extend(masks.iter().map(|&m| a.pointer(m)));
                if !masks.is_empty() && mask & buttons::LEFT != 0 {
                    out.focus = Some(a.panel);
                }
                self.captured = (mask != 0).then_some(a.panel);
                let n = layout[a.panel].normal();
                out.pointer = Some(Pointer {
                    origin,
                    end: a.hit.point,
                    hit: a.on_panel().then_some((a.hit.point, n)),
                    pressed: mask != 0,
                    beam: true,
                });
            }
            None => {
                self.hover = None;
                if mask == 0 {
                    self.captured = None;
                }
                out.pointer = Some(Pointer {
                    origin,
                    end: origin + dir * LASER_REACH_M,
                    hit: None,
                    pressed: mask != 0,
                    beam: true,
                });
            }
        }
        out
    }

    /// The caption gesture: a trigger press that starts while the ray points at panel `caption`'s
    /// caption (and at no panel, and the hand holds none) toggles that panel's sound. Call it
    /// before [`Hand::frame`] each frame, with the caption the ray hits, if any.
    pub fn caption_press(&mut self, caption: Option<usize>, pad: &Pad) -> Option<usize> {
        let t = self.ui_trigger(caption.is_some(), pad);
        if t.pressed {
            caption
        } else {
            None
        }
    }

    /// The trigger for the scene's controls (captions, the VM menu, the keyboard): call it once a
    /// frame, before [`Hand::frame`], with whether the ray is on such a control. A press there
    /// (when the hand holds no panel) is `pressed`, and until its release [`Hand::panel_pad`]
    /// hides the trigger from the panels.
    pub fn ui_trigger(&mut self, over_ui: bool, pad: &Pad) -> UiTrigger {
        let held = if self.caption_trigger { pad.pad.trigger > 0.4 } else { pad.pad.trigger >= 0.6 };
        let edge = held && !self.caption_trigger;
        self.caption_trigger = held;
        let mut out = UiTrigger { edge, ..Default::default() };
        if edge && over_ui && self.captured.is_none() && self.grab.is_none() {
            self.ui_held = true;
            out.pressed = true;
        } else if !held && self.ui_held {
            self.ui_held = false;
            out.released = true;
        }
        out
    }

    /// The grip's edges (with the buttons' hysteresis): (closed, opened).
    pub fn grip_edges(&mut self, pad: &Pad) -> (bool, bool) {
        let held = if self.grip { pad.pad.squeeze > 0.4 } else { pad.pad.squeeze >= 0.6 };
        let edges = (held && !self.grip, !held && self.grip);
        self.grip = held;
        edges
    }

    /// What the panels may see of `pad`: no trigger while a UI press is held, no grip while a
    /// panel is grabbed.
    pub fn panel_pad(&self, mut pad: Pad) -> Pad {
        if self.ui_held {
            pad.pad.trigger = 0.0;
        }
        if self.grab.is_some() {
            pad.pad.squeeze = 0.0;
            pad.pad.thumbstick_y = 0.0;
        }
        pad
    }

    /// The controller went away: it releases what it held, at `last` (the last position sent
    /// to the captured panel, if any).
    pub fn gone(&mut self, last: impl Fn(usize) -> Option<(u32, u32)>) -> Option<Routed> {
        let mut send = None;
        if let (Some(i), Some(m)) = (self.captured, self.buttons.release_all()) {
            send = last(i).map(|(x, y)| (i, InputMessage::Pointer { x, y, buttons: m }));
        }
        self.captured = None;
        send
    }

    /// Panel `i` went down: a hand holding it lets go (without sending anything).
    pub fn panel_down(&mut self, i: usize) {
        if self.captured == Some(i) {
            self.captured = None;
            self.buttons.release_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout, WallConfig, WallOrigin};

    const SIZE: (u32, u32) = (1000, 500);

    fn wall() -> (Vec<Panel>, Vec<(u32, u32)>) {
        let panels = layout(&WallConfig::default(), &WallOrigin::default(), &[2.0; 9]);
        (panels, vec![SIZE; 9])
    }

    /// A ray from the wall's eye through point (u, v) of panel `i` (u, v may lie outside 0..1).
    fn ray(panels: &[Panel], i: usize, u: f32, v: f32) -> (Vec3, Vec3) {
        let c = panels[i].corners();
        let target = c[0] + (c[1] - c[0]) * u + (c[3] - c[0]) * v;
        let origin = WallOrigin::default().eye;
        (origin, (target - origin).normalize())
    }

    fn ptr(i: usize, x: u32, y: u32, buttons: u8) -> Routed {
        (i, InputMessage::Pointer { x, y, buttons })
    }

    #[test]
    fn aims_at_the_panel_and_pixel() {
        let (panels, sizes) = wall();
        let (o, d) = ray(&panels, 4, 0.25, 0.5);
        let a = aim(&panels, &sizes, None, o, d).unwrap();
        assert_eq!(a.panel, 4);
        assert!(a.x.abs_diff(250) <= 1 && a.y.abs_diff(250) <= 1, "{a:?}");
        assert!(a.on_panel());
        // Beside every panel: nothing, unless captured, then clamped to its edge.
        let (o, d) = (o, (o + Vec3::new(0.0, 5.0, -1.0) - o).normalize());
        assert_eq!(aim(&panels, &sizes, None, o, d), None);
        let (o, d) = ray(&panels, 4, 1.3, 0.5);
        let a = aim(&panels, &sizes, Some(4), o, d).unwrap();
        assert_eq!((a.panel, a.x), (4, 999));
        assert!(!a.on_panel());
    }

    #[test]
    fn mouse_press_captures_until_all_buttons_are_released() {
        let (panels, sizes) = wall();
        let mut m = Mouse::default();
        let (o, d) = ray(&panels, 2, 0.5, 0.5);
        let a = aim(&panels, &sizes, m.captured, o, d).unwrap();
        assert_eq!(m.moved(Some(&a)), Some(ptr(2, a.x, a.y, 0)));
        assert_eq!(m.press(Some(&a), buttons::LEFT), Some(ptr(2, a.x, a.y, buttons::LEFT)));
        assert_eq!(m.captured, Some(2));
        m.press(Some(&a), buttons::RIGHT);
        // Dragged off the panel (over another one): still panel 2, clamped.
        let (o, d) = ray(&panels, 2, 1.5, 0.5);
        let off = aim(&panels, &sizes, m.captured, o, d).unwrap();
        assert_eq!((off.panel, off.x), (2, 999));
        assert_eq!(m.moved(Some(&off)), Some(ptr(2, 999, off.y, buttons::LEFT | buttons::RIGHT)));
        assert_eq!(m.release(buttons::LEFT, Some((999, off.y)), None), Some(ptr(2, 999, off.y, buttons::RIGHT)));
        assert_eq!(m.captured, Some(2));
        // The ray misses the plane: released where the pointer last was.
        assert_eq!(m.release(buttons::RIGHT, None, Some((7, 8))), Some(ptr(2, 7, 8, 0)));
        assert_eq!(m.captured, None);
        assert_eq!(m.release(buttons::LEFT, None, None), None, "nothing captured");
        // A press on nothing captures nothing (the shell turns the view instead).
        assert_eq!(m.press(None, buttons::LEFT), None);
        assert_eq!(m.mask, 0);
    }

    #[test]
    fn mouse_wheel_and_panel_down() {
        let (panels, sizes) = wall();
        let mut m = Mouse::default();
        let (o, d) = ray(&panels, 0, 0.5, 0.5);
        let a = aim(&panels, &sizes, None, o, d).unwrap();
        assert_eq!(m.wheel(&a, true), [ptr(0, a.x, a.y, buttons::WHEEL_UP), ptr(0, a.x, a.y, 0)]);
        m.press(Some(&a), buttons::LEFT);
        assert_eq!(m.wheel(&a, false)[0], ptr(0, a.x, a.y, buttons::LEFT | buttons::WHEEL_DOWN));
        m.panel_down(1);
        assert_eq!(m.captured, Some(0));
        m.panel_down(0);
        assert_eq!(m.captured, None);
    }

    fn pad(trigger: f32) -> Pad {
        Pad { pad: GamepadState { trigger, ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn a_hand_drags_on_the_panel_it_pressed() {
        let (panels, sizes) = wall();
        let mut h = Hand::default();
        let t = Duration::from_millis(0);
        let (o, d) = ray(&panels, 4, 0.5, 0.5);
        let f = h.frame(t, &panels, &sizes, o, d, pad(0.0));
        let (x, y) = match f.sends[..] {
            [(4, InputMessage::Pointer { x, y, buttons: 0 })] => (x, y),
            _ => panic!("{f:?}"),
        };
        assert_eq!(f.focus, None);
        assert_eq!(h.hover, Some(4));
        let p = f.pointer.unwrap();
        assert!(p.beam && p.hit.is_some() && !p.pressed);
        // Trigger: a move, then the press; focus; capture.
        let f = h.frame(t, &panels, &sizes, o, d, pad(1.0));
        assert_eq!(f.sends, [ptr(4, x, y, buttons::LEFT), ptr(4, x, y, buttons::LEFT)]);
        assert_eq!(f.focus, Some(4));
        assert_eq!(h.captured, Some(4));
        // Held and moved over panel 5: still panel 4, clamped; no new focus.
        let (o2, d2) = ray(&panels, 4, 1.5, 0.5);
        let f = h.frame(t, &panels, &sizes, o2, d2, pad(1.0));
        assert_eq!(f.sends, [ptr(4, 999, y, buttons::LEFT)]);
        assert_eq!(f.focus, None);
        let p = f.pointer.unwrap();
        assert!(p.pressed && p.hit.is_none(), "beside the panel: no cursor");
        // Released there: the release goes to panel 4 and the capture ends.
        let f = h.frame(t, &panels, &sizes, o2, d2, pad(0.0));
        assert_eq!(f.sends, [ptr(4, 999, y, 0), ptr(4, 999, y, 0)]);
        assert_eq!(h.captured, None);
        // Next frame the ray picks panel 5 again.
        let f = h.frame(t, &panels, &sizes, o2, d2, pad(0.0));
        assert_eq!(f.sends[0].0, 5);
    }

    #[test]
    fn hand_buttons_and_going_away() {
        let (panels, sizes) = wall();
        let mut h = Hand::default();
        let t = Duration::from_millis(0);
        // Pointing up at nothing: a 4 m laser, no messages.
        let o = WallOrigin::default().eye;
        let f = h.frame(t, &panels, &sizes, o, Vec3::Y, Pad { hud: true, ..pad(0.0) });
        assert!(f.sends.is_empty() && f.toggle_hud && !f.recentre);
        assert_eq!(f.pointer.unwrap().end, o + Vec3::Y * LASER_REACH_M);
        // Held A/X toggles once; B/Y on its own edge.
        let f = h.frame(t, &panels, &sizes, o, Vec3::Y, Pad { hud: true, recentre: true, ..pad(0.0) });
        assert!(!f.toggle_hud && f.recentre);
        // Press on a panel, then the controller vanishes: a release at the last position.
        let (o, d) = ray(&panels, 3, 0.5, 0.5);
        h.frame(t, &panels, &sizes, o, d, pad(1.0));
        assert_eq!(h.captured, Some(3));
        assert_eq!(h.gone(|i| (i == 3).then_some((5, 6))), Some(ptr(3, 5, 6, 0)));
        assert_eq!(h.captured, None);
        assert_eq!(h.buttons.mask(), 0);
        assert_eq!(h.gone(|_| Some((5, 6))), None, "nothing held");
        // A panel going down frees the hand without a message.
        h.frame(t, &panels, &sizes, o, d, pad(0.0));
        h.frame(t, &panels, &sizes, o, d, pad(1.0));
        h.panel_down(3);
        assert_eq!((h.captured, h.buttons.mask()), (None, 0));
    }

    #[test]
    fn a_trigger_press_on_a_caption_toggles_once() {
        let (panels, sizes) = wall();
        let mut h = Hand::default();
        let t = Duration::ZERO;
        let o = WallOrigin::default().eye;
        assert_eq!(h.caption_press(Some(2), &pad(0.0)), None);
        assert_eq!(h.caption_press(Some(2), &pad(1.0)), Some(2), "the press");
        h.frame(t, &panels, &sizes, o, Vec3::Y, pad(1.0));
        assert_eq!(h.caption_press(Some(2), &pad(0.5)), None, "held (hysteresis): no second toggle");
        assert_eq!(h.caption_press(Some(2), &pad(0.3)), None, "released");
        assert_eq!(h.caption_press(None, &pad(1.0)), None, "a press on no caption");
        h.caption_press(None, &pad(0.0));
        // A drag that started on a panel and slid onto a caption toggles nothing.
        let (o2, d2) = ray(&panels, 2, 0.5, 0.5);
        h.frame(t, &panels, &sizes, o2, d2, pad(1.0));
        assert_eq!(h.captured, Some(2));
        h.caption_press(None, &pad(0.0));
        assert_eq!(h.caption_press(Some(2), &pad(1.0)), None);
    }

    #[test]
    fn a_ui_press_hides_the_trigger_from_the_panels_until_released() {
        let mut h = Hand::default();
        assert_eq!(h.ui_trigger(true, &pad(0.0)), UiTrigger::default());
        assert_eq!(h.ui_trigger(true, &pad(1.0)), UiTrigger { pressed: true, released: false, edge: true });
        assert_eq!(h.panel_pad(pad(1.0)).pad.trigger, 0.0);
        // Slid off the control while held: still hidden; released anywhere: released.
        assert_eq!(h.ui_trigger(false, &pad(0.9)), UiTrigger::default());
        assert_eq!(h.ui_trigger(false, &pad(0.1)), UiTrigger { pressed: false, released: true, edge: false });
        assert_eq!(h.panel_pad(pad(1.0)).pad.trigger, 1.0);
        // A press on nothing is only an edge.
        assert_eq!(h.ui_trigger(false, &pad(1.0)), UiTrigger { pressed: false, released: false, edge: true });
        assert!(!h.ui_held);
        let g = |s: f32| Pad { pad: GamepadState { squeeze: s, ..Default::default() }, ..Default::default() };
        assert_eq!(h.grip_edges(&g(1.0)), (true, false));
        assert_eq!(h.grip_edges(&g(0.5)), (false, false));
        assert_eq!(h.grip_edges(&g(0.0)), (false, true));
    }

    #[test]
    fn thumbstick_wheel_goes_to_the_aimed_panel() {
        let (panels, sizes) = wall();
        let mut h = Hand::default();
        let (o, d) = ray(&panels, 1, 0.5, 0.5);
        let stick = Pad { pad: GamepadState { thumbstick_y: -1.0, ..Default::default() }, ..Default::default() };
        let f = h.frame(Duration::ZERO, &panels, &sizes, o, d, stick);
        let masks: Vec<u8> = f
            .sends
            .iter()
            .map(|(_, m)| match m {
                InputMessage::Pointer { buttons, .. } => *buttons,
                _ => panic!(),
            })
            .collect();
        assert_eq!(masks, [0, buttons::WHEEL_UP, 0]);
        assert!(f.sends.iter().all(|s| s.0 == 1));
        assert_eq!(h.captured, None, "the wheel does not capture");
    }

    #[test]
    fn a_button_held_on_a_panel_that_goes_down_is_let_go() {
        let (panels, sizes) = wall();
        let (o, d) = ray(&panels, 2, 0.5, 0.5);
        let on2 = aim(&panels, &sizes, None, o, d).unwrap();
        let mut m = Mouse::default();
        m.press(Some(&on2), buttons::LEFT).unwrap();
        m.panel_down(2);
        assert_eq!((m.mask, m.captured), (0, None));
        // The next move over another panel carries no button.
        let (o, d) = ray(&panels, 5, 0.5, 0.5);
        let on5 = aim(&panels, &sizes, None, o, d).unwrap();
        assert_eq!(m.moved(Some(&on5)), Some(ptr(5, on5.x, on5.y, 0)));
        // And the release that follows sends nothing anywhere.
        assert_eq!(m.release(buttons::LEFT, None, None), None);
    }
}
