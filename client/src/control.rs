//! VM control from a panel's caption: the menu (reset, power off, power on, revert), the
//! 1-second hold that destructive actions need, and what the caption says about the VM.
//!
//! The agent's interface, relative to the panel's WHEP URL with its last `/whep` replaced by
//! `/control`: `GET …/control` → `{"qmp":"connected"|"unavailable","status":"running"|…,
//! "snapshot":bool}`; `POST …/control/{reset|powerdown|poweron|revert}` with the panel's bearer
//! and `X-Loco-Session` → 200, 403 (view-only key), 409 / 503 (a sentence in the body).
//!
//! Pure: time comes in as milliseconds; the shell draws the menu and carries out the requests.

use serde::Deserialize;

/// How long a destructive action must be held.
pub const HOLD_MS: f64 = 1000.0;
/// How long a result stays on the caption.
pub const RESULT_MS: f64 = 8000.0;
/// How long a reset or revert may keep the panel down before "did not come back" is said.
pub const REBOOT_MS: f64 = 120_000.0;

/// One menu action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Reset,
    PowerDown,
    PowerOn,
    Revert,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Reset, Action::PowerDown, Action::PowerOn, Action::Revert];

    /// The last segment of `POST …/control/{path}`.
    pub fn path(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::PowerDown => "powerdown",
            Action::PowerOn => "poweron",
            Action::Revert => "revert",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Action::Reset => "Reset",
            Action::PowerDown => "Power off",
            Action::PowerOn => "Power on",
            Action::Revert => "Revert",
        }
    }

    /// Needs the hold (loses the guest's unsaved work).
    pub fn destructive(self) -> bool {
        !matches!(self, Action::PowerOn)
    }

    /// After it the stream goes away for a while (the guest restarts).
    pub fn restarts(self) -> bool {
        matches!(self, Action::Reset | Action::Revert)
    }
}

/// A part of the open menu: one of the actions, or the close box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuItem {
    Do(Action),
    Close,
}

/// The menu's buttons, left to right, in its top band.
pub const MENU_ITEMS: [MenuItem; 5] = [
    MenuItem::Do(Action::Reset),
    MenuItem::Do(Action::PowerDown),
    MenuItem::Do(Action::PowerOn),
    MenuItem::Do(Action::Revert),
    MenuItem::Close,
];
/// The menu texture's size; the buttons take the top `MENU_BUTTONS_H` pixels, the status line
/// the rest.
pub const MENU_W: u32 = 1024;
pub const MENU_H: u32 = 128;
pub const MENU_BUTTONS_H: u32 = 80;

/// The menu item at (u, v) of the menu (0..1 each), if any.
pub fn menu_item_at(u: f32, v: f32) -> Option<MenuItem> {
    if !(0.0..1.0).contains(&u) || !(0.0..=1.0).contains(&v) || v > MENU_BUTTONS_H as f32 / MENU_H as f32 {
        return None;
    }
    MENU_ITEMS.get((u * MENU_ITEMS.len() as f32) as usize).copied()
}

/// Item `k`'s rectangle in menu uv: (u0, v0, u1, v1).
pub fn menu_item_rect(k: usize) -> (f32, f32, f32, f32) {
    let n = MENU_ITEMS.len() as f32;
    (k as f32 / n, 0.0, (k + 1) as f32 / n, MENU_BUTTONS_H as f32 / MENU_H as f32)
}

/// Where the caption's menu button is: its rightmost part, this share of the caption's width.
pub const CAPTION_BUTTON_U: f32 = 0.88;

/// What the agent says about its VM.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct VmStatus {
    #[serde(default)]
    pub qmp: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub snapshot: bool,
}

impl VmStatus {
    pub fn parse(body: &str) -> Option<Self> {
        serde_json::from_str(body).ok()
    }
}

/// What an answer to `POST …/control/ACTION` means.
pub fn outcome(action: Action, status: u16, body: &str) -> Result<String, String> {
    let sentence = || {
        let b = body.trim();
        // A JSON error body: take its `error` (or `message`) text.
        let from_json = serde_json::from_str::<serde_json::Value>(b).ok().and_then(|v| {
            ["error", "message", "detail"].iter().find_map(|k| v.get(*k).and_then(|s| s.as_str()).map(str::to_owned))
        });
        let s = from_json.unwrap_or_else(|| b.chars().take(120).collect());
        if s.is_empty() {
            String::new()
        } else {
            format!(": {s}")
        }
    };
    match status {
        200..=299 => Ok(format!("{} sent", action.label().to_lowercase())),
        403 => Err("refused: this key may only watch".into()),
        401 => Err("refused: the agent wants a control key".into()),
        404 | 405 => Err("this agent has no VM control".into()),
        409 => Err(format!("not now{}", sentence())),
        503 => Err(format!("QEMU control unavailable{}", sentence())),
        0 => Err(format!("no answer{}", sentence())),
        s => Err(format!("{s}{}", sentence())),
    }
}

/// `…/whep` → `…/control`; `None` when the URL does not end in `/whep`.
pub fn control_url(whep_url: &str) -> Option<String> {
    let (base, rest) = match whep_url.find(['?', '#']) {
        Some(k) => whep_url.split_at(k),
        None => (whep_url, ""),
    };
    let base = base.strip_suffix("/whep")?;
    Some(format!("{base}/control{rest}"))
}

/// `…/control` + `/ACTION` (before any query).
pub fn action_url(control: &str, action: Action) -> String {
    match control.find(['?', '#']) {
        Some(k) => format!("{}/{}{}", &control[..k], action.path(), &control[k..]),
        None => format!("{control}/{}", action.path()),
    }
}

/// The session id in a WHEP `Location` (its last path segment).
pub fn session_id(location: &str) -> Option<&str> {
    let path = location.split(['?', '#']).next()?;
    path.rsplit('/').next().filter(|s| !s.is_empty())
}

/// A request in flight or its result.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pending(Action),
    Done { action: Action, text: String, at: f64 },
    Failed { action: Action, text: String, at: f64 },
}

/// One panel's control state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Control {
    pub open: bool,
    /// The item pressed and when (the hold's start).
    pub held: Option<(MenuItem, f64)>,
    pub outcome: Option<Outcome>,
    /// The VM's last known status (`None`: never asked, or the agent has no control).
    pub status: Option<VmStatus>,
    /// Why the status could not be read.
    pub status_error: Option<String>,
    /// A reset/revert succeeded at this time and the stream has not been live since.
    pub rebooting_since: Option<f64>,
    /// The stream went down after the restart (so "live" again means it came back).
    pub went_down: bool,
}

impl Control {
    /// The caption's menu button: opens or closes the menu.
    pub fn toggle(&mut self) {
        self.open = !self.open;
        self.held = None;
    }

    /// A press on a menu item. Power on and close act at once; the others start the hold.
    pub fn press(&mut self, item: MenuItem, now: f64) -> Option<Action> {
        if !self.open {
            return None;
        }
        match item {
            MenuItem::Close => {
                self.open = false;
                self.held = None;
                None
            }
            MenuItem::Do(a) if !a.destructive() => self.start(a),
            MenuItem::Do(_) => {
                self.held = Some((item, now));
                None
            }
        }
    }

    /// The press ends (released, or the ray left the item): a hold cut short does nothing.
    pub fn release(&mut self) {
        self.held = None;
    }

    /// How far the hold is, 0..1, and on which item.
    pub fn progress(&self, now: f64) -> Option<(MenuItem, f32)> {
        self.held.map(|(item, t0)| (item, ((now - t0) / HOLD_MS).clamp(0.0, 1.0) as f32))
    }

    /// Called every frame: a hold that reached `HOLD_MS` fires its action (once).
    pub fn tick(&mut self, now: f64) -> Option<Action> {
        let (item, t0) = self.held?;
        if now - t0 < HOLD_MS {
            return None;
        }
        self.held = None;
        match item {
            MenuItem::Do(a) => self.start(a),
            MenuItem::Close => None,
        }
    }

    fn start(&mut self, a: Action) -> Option<Action> {
        if matches!(self.outcome, Some(Outcome::Pending(_))) {
            return None;
        }
        self.outcome = Some(Outcome::Pending(a));
        Some(a)
    }

    /// The answer to the request for `action`.
    pub fn answered(&mut self, action: Action, result: Result<String, String>, now: f64) {
        self.outcome = Some(match result {
            Ok(text) => {
                if action.restarts() {
                    self.rebooting_since = Some(now);
                    self.went_down = false;
                }
                self.open = false;
                Outcome::Done { action, text, at: now }
            }
            Err(text) => Outcome::Failed { action, text, at: now },
        });
    }

    /// The stream's state, every tick: ends "rebooting…" once it is live again after going down.
    pub fn stream(&mut self, live: bool, now: f64) {
        if let Some(t0) = self.rebooting_since {
            if !live {
                self.went_down = true;
            } else if self.went_down || now - t0 > REBOOT_MS {
                self.rebooting_since = None;
                self.went_down = false;
            }
        }
    }

    /// The VM is restarting and its stream is not back yet.
    pub fn rebooting(&self, live: bool) -> bool {
        self.rebooting_since.is_some() && (self.went_down || !live)
    }

    /// A restart that kept the stream down for longer than `REBOOT_MS`.
    pub fn lost(&self, now: f64) -> bool {
        self.rebooting_since.is_some_and(|t0| self.went_down && now - t0 > REBOOT_MS)
    }

    /// What the caption adds: `rebooting…`, the VM's state when it is not running, a result
    /// or error (for `RESULT_MS`).
    pub fn caption_part(&self, live: bool, now: f64) -> Option<String> {
        let mut parts = Vec::new();
        if self.lost(now) {
            parts.push("did not come back".to_owned());
        } else if self.rebooting(live) {
            parts.push("rebooting…".to_owned());
        }
        if let Some(s) = &self.status {
            if s.qmp == "unavailable" {
                parts.push("VM control unavailable".into());
            } else if !s.status.is_empty() && s.status != "running" {
                parts.push(format!("VM {}", s.status));
            }
        }
        match &self.outcome {
            Some(Outcome::Pending(a)) => parts.push(format!("{}…", a.label().to_lowercase())),
            Some(Outcome::Done { text, at, .. }) if now - at < RESULT_MS && !self.rebooting(live) => {
                parts.push(text.clone())
            }
            Some(Outcome::Failed { action, text, at }) if now - at < RESULT_MS => {
                parts.push(format!("{} failed: {text}", action.label().to_lowercase()))
            }
            _ => {}
        }
        (!parts.is_empty()).then(|| parts.join("  ·  "))
    }

    /// The menu's status line.
    pub fn menu_status(&self, name: &str, live: bool, now: f64) -> String {
        let vm = match (&self.status, &self.status_error) {
            (Some(s), _) if s.qmp == "unavailable" => "QEMU control unavailable".to_owned(),
            (Some(s), _) => format!(
                "VM {}{}",
                if s.status.is_empty() { "?" } else { &s.status },
                if s.snapshot { "  ·  saved state to revert to" } else { "" }
            ),
            (None, Some(e)) => e.clone(),
            (None, None) => "asking the agent…".to_owned(),
        };
        let mut line = format!("{name}: {vm}");
        if let Some(extra) = self.caption_part(live, now) {
            line.push_str("  ·  ");
            line.push_str(&extra);
        }
        line.push_str("  ·  hold 1 s for reset, power off, revert");
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(control_url("http://h:1/whep").as_deref(), Some("http://h:1/control"));
        assert_eq!(control_url("https://h/vm/3/whep?x=1").as_deref(), Some("https://h/vm/3/control?x=1"));
        assert_eq!(control_url("http://h/whepx"), None);
        assert_eq!(action_url("http://h/vm/3/control", Action::PowerDown), "http://h/vm/3/control/powerdown");
        assert_eq!(action_url("http://h/control?x=1", Action::Reset), "http://h/control/reset?x=1");
        assert_eq!(session_id("http://h/whep/sessions/abc123"), Some("abc123"));
        assert_eq!(session_id("http://h/whep/sessions/"), None);
    }

    #[test]
    fn menu_geometry() {
        assert_eq!(menu_item_at(0.05, 0.2), Some(MenuItem::Do(Action::Reset)));
        assert_eq!(menu_item_at(0.5, 0.5), Some(MenuItem::Do(Action::PowerOn)));
        assert_eq!(menu_item_at(0.99, 0.1), Some(MenuItem::Close));
        assert_eq!(menu_item_at(0.5, 0.9), None, "the status line");
        assert_eq!(menu_item_at(1.2, 0.1), None);
        for (k, item) in MENU_ITEMS.iter().enumerate() {
            let (u0, v0, u1, v1) = menu_item_rect(k);
            assert_eq!(menu_item_at((u0 + u1) / 2.0, (v0 + v1) / 2.0), Some(*item));
        }
    }

    #[test]
    fn a_destructive_action_needs_a_full_second() {
        let mut c = Control::default();
        assert_eq!(c.press(MenuItem::Do(Action::Reset), 0.0), None, "closed menu");
        c.toggle();
        assert_eq!(c.press(MenuItem::Do(Action::Reset), 100.0), None);
        assert_eq!(c.tick(600.0), None);
        assert_eq!(c.progress(600.0), Some((MenuItem::Do(Action::Reset), 0.5)));
        // Let go early: nothing.
        c.release();
        assert_eq!(c.tick(2000.0), None);
        assert_eq!(c.outcome, None);
        // Held through: fires once.
        c.press(MenuItem::Do(Action::Reset), 3000.0);
        assert_eq!(c.tick(3999.0), None);
        assert_eq!(c.tick(4000.0), Some(Action::Reset));
        assert_eq!(c.tick(4100.0), None);
        assert_eq!(c.outcome, Some(Outcome::Pending(Action::Reset)));
        // A second request waits for the first's answer.
        c.press(MenuItem::Do(Action::PowerOn), 4200.0);
        assert_eq!(c.outcome, Some(Outcome::Pending(Action::Reset)));
        assert_eq!(c.caption_part(true, 4200.0).as_deref(), Some("reset…"));
    }

    #[test]
    fn power_on_and_close_act_at_once() {
        let mut c = Control::default();
        c.toggle();
        assert_eq!(c.press(MenuItem::Do(Action::PowerOn), 0.0), Some(Action::PowerOn));
        c.answered(Action::PowerOn, Err("not now: the VM is running".into()), 10.0);
        assert_eq!(c.caption_part(true, 20.0).as_deref(), Some("power on failed: not now: the VM is running"));
        assert_eq!(c.caption_part(true, 10.0 + RESULT_MS), None, "the result fades");
        assert!(c.open, "a failure keeps the menu open");
        c.press(MenuItem::Close, 30.0);
        assert!(!c.open);
    }

    #[test]
    fn a_reset_shows_rebooting_until_the_stream_is_back() {
        let mut c = Control::default();
        c.toggle();
        c.press(MenuItem::Do(Action::Reset), 0.0);
        assert_eq!(c.tick(1000.0), Some(Action::Reset));
        c.answered(Action::Reset, Ok("reset sent".into()), 1100.0);
        assert!(!c.open);
        // Still live for a moment (the agent has not noticed yet).
        c.stream(true, 1200.0);
        assert_eq!(c.caption_part(true, 1200.0).as_deref(), Some("reset sent"));
        c.stream(false, 2000.0);
        assert_eq!(c.caption_part(false, 2000.0).as_deref(), Some("rebooting…"));
        c.stream(true, 9000.0);
        assert!(!c.rebooting(true));
        assert_eq!(c.caption_part(true, 9000.0).as_deref(), Some("reset sent"));
        // One that never comes back says so.
        c.answered(Action::Revert, Ok("revert sent".into()), 10_000.0);
        c.stream(false, 11_000.0);
        assert!(c.lost(10_000.0 + REBOOT_MS + 1.0));
        assert_eq!(c.caption_part(false, 10_000.0 + REBOOT_MS + 1.0).as_deref(), Some("did not come back"));
    }

    #[test]
    fn answers_and_status() {
        assert_eq!(outcome(Action::Reset, 200, "{}"), Ok("reset sent".into()));
        assert_eq!(outcome(Action::Reset, 403, ""), Err("refused: this key may only watch".into()));
        assert_eq!(
            outcome(Action::Revert, 409, "{\"error\":\"no saved state\"}"),
            Err("not now: no saved state".into())
        );
        assert_eq!(
            outcome(Action::Reset, 503, "QMP is not connected"),
            Err("QEMU control unavailable: QMP is not connected".into())
        );
        assert_eq!(outcome(Action::Reset, 404, "nope"), Err("this agent has no VM control".into()));
        let s = VmStatus::parse(r#"{"qmp":"connected","status":"shutdown","snapshot":true,"extra":1}"#).unwrap();
        assert_eq!(s, VmStatus { qmp: "connected".into(), status: "shutdown".into(), snapshot: true });
        let c = Control { status: Some(s), ..Default::default() };
        assert_eq!(c.caption_part(false, 0.0).as_deref(), Some("VM shutdown"));
        assert!(c.menu_status("vm1", false, 0.0).starts_with("vm1: VM shutdown  ·  saved state to revert to"));
        let c = Control {
            status: Some(VmStatus { qmp: "unavailable".into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(c.caption_part(true, 0.0).as_deref(), Some("VM control unavailable"));
        assert_eq!(VmStatus::parse("not json"), None);
    }
}
