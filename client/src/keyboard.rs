//! The in-VR keyboard: a US layout with Esc, F1–F12, Tab, Ctrl, Alt, Shift, the Windows key,
//! arrows and one Ctrl+Alt+Del key; where it stands (under the focused panel, never covering
//! it); which key a ray hits; and the `key` messages a press sends (the same keysyms as a
//! physical keyboard, `loco_shared::keys`).
//!
//! Modifiers latch for one key on a press, lock on a second press within
//! [`DOUBLE_PRESS_MS`], and unlock on the next. A held key repeats after [`REPEAT_DELAY_MS`]
//! every [`REPEAT_EVERY_MS`]. Pure: time comes in as milliseconds.

use glam::Vec3;
use loco_shared::layout::Panel;

pub const DOUBLE_PRESS_MS: f64 = 400.0;
pub const REPEAT_DELAY_MS: f64 = 500.0;
pub const REPEAT_EVERY_MS: f64 = 50.0;

const SHIFT: u32 = 0xffe1;
const CTRL: u32 = 0xffe3;
const ALT: u32 = 0xffe9;
const SUPER: u32 = 0xffeb;
const DELETE: u32 = 0xffff;

/// What a key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A character: its keysym unshifted and shifted.
    Char(char, char),
    /// A named key (keysym).
    Named(u32),
    Modifier(Modifier),
    CtrlAltDel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modifier {
    Shift,
    Ctrl,
    Alt,
    Win,
}

impl Modifier {
    pub const ALL: [Modifier; 4] = [Modifier::Shift, Modifier::Ctrl, Modifier::Alt, Modifier::Win];

    fn keysym(self) -> u32 {
        match self {
            Modifier::Shift => SHIFT,
            Modifier::Ctrl => CTRL,
            Modifier::Alt => ALT,
            Modifier::Win => SUPER,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One key: where it is on the keyboard (in key units from the top-left) and what it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Key {
    pub name: &'static str,
    pub kind: KeyKind,
    pub x: f32,
    pub y: f32,
    pub w: f32,
}

/// The keyboard is this many key units wide and rows tall.
pub const UNITS_W: f32 = 15.0;
pub const ROWS: f32 = 6.0;

fn row(y: f32, keys: &[(&'static str, KeyKind, f32)], out: &mut Vec<Key>) {
    let mut x = 0.0;
    for &(name, kind, w) in keys {
        out.push(Key { name, kind, x, y, w });
        x += w;
    }
}

/// The layout, row by row.
pub fn layout() -> Vec<Key> {
    use KeyKind::*;
    let c = |a: char, b: char| Char(a, b);
    let mut keys = Vec::with_capacity(80);
    let mut r0: Vec<(&'static str, KeyKind, f32)> = vec![("Esc", Named(0xff1b), 1.0)];
    const F: [&str; 12] = ["F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8", "F9", "F10", "F11", "F12"];
    for (k, f) in F.iter().enumerate() {
        r0.push((f, Named(0xffbe + k as u32), 1.0));
    }
    r0.push(("Ctrl+Alt+Del", CtrlAltDel, 2.0));
    row(0.0, &r0, &mut keys);
    let digits = "`1234567890-=";
    let shifted = "~!@#$%^&*()_+";
    let mut r1: Vec<(&'static str, KeyKind, f32)> = Vec::new();
    const NAMES1: [&str; 13] = ["`", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "-", "="];
    for ((a, b), n) in digits.chars().zip(shifted.chars()).zip(NAMES1) {
        r1.push((n, c(a, b), 1.0));
    }
    r1.push(("Backspace", Named(0xff08), 2.0));
    row(1.0, &r1, &mut keys);
    let mut r2: Vec<(&'static str, KeyKind, f32)> = vec![("Tab", Named(0xff09), 1.5)];
    const NAMES2: [&str; 13] = ["q", "w", "e", "r", "t", "y", "u", "i", "o", "p", "[", "]", "\\"];
    for (n, (a, b)) in NAMES2.iter().zip("qwertyuiop[]\\".chars().zip("QWERTYUIOP{}|".chars())) {
        r2.push((n, c(a, b), if *n == "\\" { 1.5 } else { 1.0 }));
    }
    row(2.0, &r2, &mut keys);
    let mut r3: Vec<(&'static str, KeyKind, f32)> = vec![("Del", Named(DELETE), 1.75)];
    const NAMES3: [&str; 11] = ["a", "s", "d", "f", "g", "h", "j", "k", "l", ";", "'"];
    for (n, (a, b)) in NAMES3.iter().zip("asdfghjkl;'".chars().zip("ASDFGHJKL:\"".chars())) {
        r3.push((n, c(a, b), 1.0));
    }
    r3.push(("Enter", Named(0xff0d), 2.25));
    row(3.0, &r3, &mut keys);
    let mut r4: Vec<(&'static str, KeyKind, f32)> = vec![("Shift", Modifier(self::Modifier::Shift), 2.25)];
    const NAMES4: [&str; 10] = ["z", "x", "c", "v", "b", "n", "m", ",", ".", "/"];
    for (n, (a, b)) in NAMES4.iter().zip("zxcvbnm,./".chars().zip("ZXCVBNM<>?".chars())) {
        r4.push((n, c(a, b), 1.0));
    }
    r4.push(("Home", Named(0xff50), 0.875));
    r4.push(("Up", Named(0xff52), 1.0));
    r4.push(("End", Named(0xff57), 0.875));
    row(4.0, &r4, &mut keys);
    row(
        5.0,
        &[
            ("Ctrl", Modifier(self::Modifier::Ctrl), 1.5),
            ("Win", Modifier(self::Modifier::Win), 1.25),
            ("Alt", Modifier(self::Modifier::Alt), 1.25),
            ("Space", c(' ', ' '), 6.0),
            ("PgUp", Named(0xff55), 1.0),
            ("Left", Named(0xff51), 1.0),
            ("Down", Named(0xff54), 1.0),
            ("Right", Named(0xff53), 1.0),
            ("PgDn", Named(0xff56), 1.0),
        ],
        &mut keys,
    );
    keys
}

/// The key at (u, v) of the keyboard (0..1 each).
pub fn key_at(keys: &[Key], u: f32, v: f32) -> Option<usize> {
    let (x, y) = (u * UNITS_W, v * ROWS);
    keys.iter().position(|k| y >= k.y && y < k.y + 1.0 && x >= k.x && x < k.x + k.w)
}

/// A key's rectangle in keyboard uv: (u0, v0, u1, v1).
pub fn key_rect(k: &Key) -> (f32, f32, f32, f32) {
    (k.x / UNITS_W, k.y / ROWS, (k.x + k.w) / UNITS_W, (k.y + 1.0) / ROWS)
}

/// A modifier's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latch {
    #[default]
    Off,
    /// For the next key only.
    Latched,
    Locked,
}

impl Latch {
    pub fn as_str(self) -> &'static str {
        match self {
            Latch::Off => "off",
            Latch::Latched => "latched",
            Latch::Locked => "locked",
        }
    }
}

/// A keysym going down (`true`) or up.
pub type KeyEvent = (u32, bool);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Held {
    key: usize,
    /// The keysym sent down (what goes up on release).
    sym: u32,
    /// Modifiers pressed around it (released after it).
    mods: [bool; 4],
    next_repeat: f64,
}

/// The keyboard's state: modifiers, and the key each hand holds.
#[derive(Debug, Clone)]
pub struct Keyboard {
    pub keys: Vec<Key>,
    pub visible: bool,
    pub mods: [Latch; 4],
    last_mod_press: [f64; 4],
    held: [Option<Held>; 2],
}

impl Default for Keyboard {
    fn default() -> Self {
        Self {
            keys: layout(),
            visible: false,
            mods: [Latch::Off; 4],
            last_mod_press: [f64::NEG_INFINITY; 4],
            held: [None; 2],
        }
    }
}

impl Keyboard {
    pub fn latch(&self, m: Modifier) -> Latch {
        self.mods[m.index()]
    }

    /// Whether key `i` is held by either hand.
    pub fn is_held(&self, i: usize) -> bool {
        self.held.iter().flatten().any(|h| h.key == i)
    }

    /// Hand `hand` (0/1) pressed key `i`: the key events to send.
    pub fn press(&mut self, hand: usize, i: usize, now: f64) -> Vec<KeyEvent> {
        let mut out = self.release(hand);
        let Some(key) = self.keys.get(i).copied() else { return out };
        let slot = hand.min(1);
        match key.kind {
            KeyKind::Modifier(m) => {
                let k = m.index();
                self.mods[k] = match self.mods[k] {
                    Latch::Off => Latch::Latched,
                    Latch::Latched if now - self.last_mod_press[k] <= DOUBLE_PRESS_MS => Latch::Locked,
                    Latch::Latched | Latch::Locked => Latch::Off,
                };
                self.last_mod_press[k] = now;
            }
            KeyKind::CtrlAltDel => {
                out.extend([(CTRL, true), (ALT, true), (DELETE, true), (DELETE, false), (ALT, false), (CTRL, false)]);
            }
            KeyKind::Char(..) | KeyKind::Named(_) => {
                let mods: [bool; 4] = std::array::from_fn(|k| self.mods[k] != Latch::Off);
                let shift = mods[Modifier::Shift.index()];
                let sym = match key.kind {
                    KeyKind::Char(a, b) => u32::from(if shift { b } else { a }),
                    KeyKind::Named(s) => s,
                    _ => unreachable!(),
                };
                for m in Modifier::ALL {
                    if mods[m.index()] {
                        out.push((m.keysym(), true));
                    }
                }
                out.push((sym, true));
                self.held[slot] = Some(Held { key: i, sym, mods, next_repeat: now + REPEAT_DELAY_MS });
                // A latched modifier served its one key.
                for l in &mut self.mods {
                    if *l == Latch::Latched {
                        *l = Latch::Off;
                    }
                }
            }
        }
        out
    }

    /// Hand `hand` let go: the key goes up, then the modifiers that went down with it.
    pub fn release(&mut self, hand: usize) -> Vec<KeyEvent> {
        let Some(h) = self.held[hand.min(1)].take() else { return Vec::new() };
        let mut out = vec![(h.sym, false)];
        for m in Modifier::ALL.iter().rev() {
            if h.mods[m.index()] {
                out.push((m.keysym(), false));
            }
        }
        out
    }

    /// Key repeat for held keys (call every frame).
    pub fn tick(&mut self, now: f64) -> Vec<KeyEvent> {
        let mut out = Vec::new();
        for h in self.held.iter_mut().flatten() {
            if now >= h.next_repeat {
                out.push((h.sym, true));
                h.next_repeat = (h.next_repeat + REPEAT_EVERY_MS).max(now);
            }
        }
        out
    }

    /// Both hands let go (hidden, focus moved, session ended).
    pub fn release_all(&mut self) -> Vec<KeyEvent> {
        let mut out = self.release(0);
        out.extend(self.release(1));
        out
    }
}

/// Where the keyboard stands: a flat rectangle (corners TL, TR, BR, BL) below the focused
/// panel as seen from `eye`, nearer than the wall, tilted to face the eye. Its top edge is
/// below the panel's bottom edge and its caption as seen from the eye, so it never covers them.
pub fn place(panel: &Panel, eye: Vec3) -> [Vec3; 4] {
    const DIST_M: f32 = 0.7;
    const WIDTH_M: f32 = 0.62;
    const MARGIN_RAD: f32 = 0.06;
    let height = WIDTH_M * ROWS / UNITS_W;
    // The lowest point of the panel (and its caption, ~0.05 m below), as a pitch from the eye.
    let bottom = panel.corners()[3].lerp(panel.corners()[2], 0.5) - panel.up * 0.05;
    let to = bottom - eye;
    let horiz = Vec3::new(to.x, 0.0, to.z);
    let yaw_dir = horiz.try_normalize().unwrap_or(Vec3::NEG_Z);
    let bottom_pitch = to.y.atan2(horiz.length());
    let top_pitch = bottom_pitch - MARGIN_RAD;
    // The keyboard's top edge sits at `top_pitch`, DIST_M away; it faces the eye.
    let dir = |p: f32| yaw_dir * p.cos() + Vec3::Y * p.sin();
    let half_h_rad = (height / 2.0 / DIST_M).atan();
    let centre_pitch = top_pitch - half_h_rad;
    let centre = eye + dir(centre_pitch) * DIST_M;
    let d = dir(centre_pitch);
    let right = d.cross(Vec3::Y).try_normalize().unwrap_or(Vec3::X);
    let up = right.cross(d);
    let (r, u) = (right * WIDTH_M / 2.0, up * height / 2.0);
    [centre - r + u, centre + r + u, centre + r - u, centre - r - u]
}

/// The keyboard as a [`Panel`] (for ray hits), from its corners.
pub fn as_panel(c: &[Vec3; 4]) -> Panel {
    let right = (c[1] - c[0]).normalize();
    let up = (c[0] - c[3]).normalize();
    Panel { center: (c[0] + c[2]) / 2.0, right, up, width_m: c[1].distance(c[0]), height_m: c[0].distance(c[3]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout as wall, pick, WallConfig, WallOrigin};

    fn find(kb: &Keyboard, name: &str) -> usize {
        kb.keys.iter().position(|k| k.name == name).unwrap_or_else(|| panic!("no key {name}"))
    }

    #[test]
    fn the_layout_has_every_key_once_and_no_overlap() {
        let keys = layout();
        for name in [
            "Esc",
            "F1",
            "F12",
            "Tab",
            "Ctrl",
            "Alt",
            "Shift",
            "Win",
            "Up",
            "Down",
            "Left",
            "Right",
            "Ctrl+Alt+Del",
            "Enter",
            "Space",
            "Backspace",
            "a",
            "z",
            "0",
            "/",
        ] {
            assert_eq!(keys.iter().filter(|k| k.name == name).count(), 1, "{name}");
        }
        // Every key's centre maps back to it; every row fits the width.
        for (i, k) in keys.iter().enumerate() {
            let (u0, v0, u1, v1) = key_rect(k);
            assert_eq!(key_at(&keys, (u0 + u1) / 2.0, (v0 + v1) / 2.0), Some(i), "{}", k.name);
            assert!(k.x + k.w <= UNITS_W + 1e-4, "{} sticks out", k.name);
        }
        assert_eq!(key_at(&keys, 1.1, 0.5), None);
    }

    #[test]
    fn typing_hi_enter() {
        let mut kb = Keyboard::default();
        let mut sent = Vec::new();
        for name in ["h", "i", "Enter"] {
            sent.extend(kb.press(1, find(&kb, name), 0.0));
            sent.extend(kb.release(1));
        }
        assert_eq!(sent, [(0x68, true), (0x68, false), (0x69, true), (0x69, false), (0xff0d, true), (0xff0d, false)]);
    }

    #[test]
    fn shift_latches_for_one_key_and_locks_on_a_double_press() {
        let mut kb = Keyboard::default();
        let (shift, a) = (find(&kb, "Shift"), find(&kb, "a"));
        assert!(kb.press(0, shift, 0.0).is_empty());
        kb.release(0);
        assert_eq!(kb.latch(Modifier::Shift), Latch::Latched);
        assert_eq!(kb.press(0, a, 1000.0), [(SHIFT, true), (0x41, true)]);
        assert_eq!(kb.release(0), [(0x41, false), (SHIFT, false)]);
        assert_eq!(kb.latch(Modifier::Shift), Latch::Off, "used up");
        assert_eq!(kb.press(0, a, 1100.0), [(0x61, true)]);
        kb.release(0);
        // Double press: locked for every key until pressed again.
        kb.press(0, shift, 2000.0);
        kb.press(0, shift, 2200.0);
        assert_eq!(kb.latch(Modifier::Shift), Latch::Locked);
        for _ in 0..2 {
            assert_eq!(kb.press(1, find(&kb, "1"), 3000.0), [(SHIFT, true), (u32::from('!'), true)]);
            kb.release(1);
        }
        kb.press(0, shift, 4000.0);
        assert_eq!(kb.latch(Modifier::Shift), Latch::Off);
        // Two slow presses: on, then off.
        kb.press(0, shift, 5000.0);
        kb.press(0, shift, 6000.0);
        assert_eq!(kb.latch(Modifier::Shift), Latch::Off);
    }

    #[test]
    fn ctrl_c_and_ctrl_alt_del() {
        let mut kb = Keyboard::default();
        kb.press(1, find(&kb, "Ctrl"), 0.0);
        let mut sent = kb.press(1, find(&kb, "c"), 100.0);
        sent.extend(kb.release(1));
        assert_eq!(sent, [(CTRL, true), (0x63, true), (0x63, false), (CTRL, false)]);
        assert_eq!(
            kb.press(0, find(&kb, "Ctrl+Alt+Del"), 0.0),
            [(CTRL, true), (ALT, true), (DELETE, true), (DELETE, false), (ALT, false), (CTRL, false)]
        );
        assert_eq!(kb.press(0, find(&kb, "F12"), 0.0), [(0xffc9, true)]);
        assert_eq!(kb.press(0, find(&kb, "Win"), 0.0), [(0xffc9, false)], "the other key goes up first");
        assert_eq!(kb.press(0, find(&kb, "Esc"), 0.0), [(SUPER, true), (0xff1b, true)]);
    }

    #[test]
    fn a_held_key_repeats() {
        let mut kb = Keyboard::default();
        let x = find(&kb, "x");
        kb.press(0, x, 0.0);
        assert!(kb.tick(REPEAT_DELAY_MS - 1.0).is_empty());
        assert_eq!(kb.tick(REPEAT_DELAY_MS), [(0x78, true)]);
        assert!(kb.tick(REPEAT_DELAY_MS + 10.0).is_empty());
        assert_eq!(kb.tick(REPEAT_DELAY_MS + REPEAT_EVERY_MS), [(0x78, true)]);
        assert!(kb.is_held(x));
        assert_eq!(kb.release_all(), [(0x78, false)]);
        assert!(kb.tick(10_000.0).is_empty());
    }

    #[test]
    fn it_stands_below_the_focused_panel_and_never_covers_any_part_of_it() {
        let origin = WallOrigin::default();
        let panels = wall(&WallConfig::default(), &origin, &[4.0 / 3.0; 9]);
        for (i, p) in panels.iter().enumerate() {
            let c = place(p, origin.eye);
            let kb = as_panel(&c);
            // Faces the eye, in front of the wall.
            assert!(kb.normal().dot((origin.eye - kb.center).normalize()) > 0.99, "panel {i}");
            assert!(kb.center.distance(origin.eye) < 1.0);
            // No ray from the eye to any point of the focused panel passes through the keyboard.
            for u in [0.0, 0.25, 0.5, 0.75, 1.0] {
                for v in [0.0, 0.5, 1.0] {
                    let target =
                        p.corners()[0] + (p.corners()[1] - p.corners()[0]) * u + (p.corners()[3] - p.corners()[0]) * v;
                    assert!(kb.intersect(origin.eye, target - origin.eye).is_none(), "panel {i} at ({u}, {v})");
                }
            }
            // A ray through the keyboard's middle hits it (and would hit no part of panel i).
            let h = kb.intersect(origin.eye, kb.center - origin.eye).unwrap();
            assert!((h.u - 0.5).abs() < 1e-3 && (h.v - 0.5).abs() < 1e-3);
            assert_ne!(pick(&panels, origin.eye, kb.center - origin.eye).map(|x| x.0), Some(i));
        }
    }
}
