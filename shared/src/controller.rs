//! A VR controller's buttons to RFB pointer button masks.
//!
//! Trigger = left button, grip (squeeze) = right button, thumbstick up/down = wheel steps
//! repeated while held. Analog values press above 0.6 and release below 0.4, so a finger resting
//! on the trigger does not chatter. I/O-free: call [`ControllerButtons::update`] once per XR
//! frame with the time and the gamepad's values, and send what it returns.

use std::time::Duration;

use crate::protocol::buttons::{LEFT, RIGHT, WHEEL_DOWN, WHEEL_UP};

const PRESS: f32 = 0.6;
const RELEASE: f32 = 0.4;
/// Thumbstick deflection that scrolls.
const WHEEL_DEADZONE: f32 = 0.5;
/// Time between wheel steps while the thumbstick is held.
const WHEEL_REPEAT: Duration = Duration::from_millis(120);

/// What the gamepad reports this frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GamepadState {
    pub trigger: f32,
    pub squeeze: f32,
    /// Thumbstick y: −1 pushed forward (up), +1 pulled back (down), as in WebXR gamepads.
    pub thumbstick_y: f32,
}

#[derive(Debug, Clone, Default)]
pub struct ControllerButtons {
    mask: u8,
    next_wheel: Option<Duration>,
}

impl ControllerButtons {
    /// The current button mask (without wheel bits).
    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// Button masks to send, in order, for the change since the last frame. Each wheel step is
    /// two masks: with the wheel bit, then without it.
    pub fn update(&mut self, now: Duration, pad: GamepadState) -> Vec<u8> {
        let mut out = Vec::new();
        for (value, bit) in [(pad.trigger, LEFT), (pad.squeeze, RIGHT)] {
            let down = self.mask & bit != 0;
            if !down && value > PRESS {
                self.mask |= bit;
                out.push(self.mask);
            } else if down && value < RELEASE {
                self.mask &= !bit;
                out.push(self.mask);
            }
        }
        let y = if pad.thumbstick_y.is_finite() { pad.thumbstick_y } else { 0.0 };
        if y.abs() > WHEEL_DEADZONE {
            if self.next_wheel.is_none_or(|t| now >= t) {
                let wheel = if y < 0.0 { WHEEL_UP } else { WHEEL_DOWN };
                out.push(self.mask | wheel);
                out.push(self.mask);
                self.next_wheel = Some(now + WHEEL_REPEAT);
            }
        } else {
            self.next_wheel = None;
        }
        out
    }

    /// Releases everything (the controller went away or the panel lost focus).
    pub fn release_all(&mut self) -> Option<u8> {
        self.next_wheel = None;
        (self.mask != 0).then(|| {
            self.mask = 0;
            0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn pad(trigger: f32, squeeze: f32, thumbstick_y: f32) -> GamepadState {
        GamepadState { trigger, squeeze, thumbstick_y }
    }

    #[test]
    fn trigger_clicks_with_hysteresis() {
        let mut c = ControllerButtons::default();
        assert!(c.update(ms(0), pad(0.5, 0.0, 0.0)).is_empty());
        assert_eq!(c.update(ms(10), pad(0.9, 0.0, 0.0)), vec![LEFT]);
        // Wobbling between the thresholds changes nothing.
        assert!(c.update(ms(20), pad(0.5, 0.0, 0.0)).is_empty());
        assert!(c.update(ms(30), pad(0.7, 0.0, 0.0)).is_empty());
        assert_eq!(c.update(ms(40), pad(0.1, 0.0, 0.0)), vec![0]);
    }

    #[test]
    fn squeeze_is_the_right_button_and_combines() {
        let mut c = ControllerButtons::default();
        assert_eq!(c.update(ms(0), pad(1.0, 1.0, 0.0)), vec![LEFT, LEFT | RIGHT]);
        assert_eq!(c.update(ms(10), pad(1.0, 0.0, 0.0)), vec![LEFT]);
        assert_eq!(c.release_all(), Some(0));
        assert_eq!(c.release_all(), None);
    }

    #[test]
    fn thumbstick_scrolls_and_repeats_while_held() {
        let mut c = ControllerButtons::default();
        assert!(c.update(ms(0), pad(0.0, 0.0, -0.3)).is_empty());
        assert_eq!(c.update(ms(10), pad(0.0, 0.0, -0.9)), vec![WHEEL_UP, 0]);
        assert!(c.update(ms(60), pad(0.0, 0.0, -0.9)).is_empty());
        assert_eq!(c.update(ms(130), pad(0.0, 0.0, -0.9)), vec![WHEEL_UP, 0]);
        // Held with the trigger down: the wheel step keeps the button.
        assert_eq!(c.update(ms(300), pad(1.0, 0.0, 0.9)), vec![LEFT, LEFT | WHEEL_DOWN, LEFT]);
        // Let go and push again: scrolls at once.
        assert_eq!(c.update(ms(310), pad(1.0, 0.0, 0.0)), Vec::<u8>::new());
        assert_eq!(c.update(ms(320), pad(1.0, 0.0, 0.8)), vec![LEFT | WHEEL_DOWN, LEFT]);
        assert!(c.update(ms(330), pad(1.0, 0.0, f32::NAN)).is_empty());
    }
}
