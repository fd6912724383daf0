//! Sound: the pure decisions behind each panel's place in the Web Audio graph (the shell,
//! `web/audio.rs`, builds the nodes and carries these out).
//!
//! Per panel: its track → gain (focus and mute, in dB here) → an HRTF panner at the panel's
//! centre → the master → the speakers. The listener follows the head (XR) or the flat view's
//! camera. Levels come back from analysers as samples or dB spectra; which panel counts as
//! playing, its level and the dominant frequency are worked out here.
//!
//! Settings (URL parameters): `audio=off` asks the agents for no audio at all;
//! `audio-unfocused-db=-12` is the level of every panel but the focused one.

use glam::{Quat, Vec3};
use loco_shared::layout::Panel;

/// Level of the panels that do not have the keyboard focus, unless `audio-unfocused-db` says.
pub const DEFAULT_UNFOCUSED_DB: f32 = -12.0;
/// The quietest `audio-unfocused-db` accepted (lower is as good as muted).
pub const MIN_UNFOCUSED_DB: f32 = -60.0;
/// Time constant of a gain change (`setTargetAtTime`): a focus change fades in ~0.2 s
/// instead of clicking.
pub const GAIN_RAMP_S: f64 = 0.05;
/// A panel whose own sound (before its gain) is above this RMS level plays…
pub const PLAYING_DB: f32 = -55.0;
/// …and keeps playing until it has been below it this long (short gaps in speech or music).
pub const PLAYING_HOLD_MS: f64 = 600.0;
/// What a silent analyser reports instead of −∞ (JSON has no infinities).
pub const FLOOR_DB: f32 = -120.0;

/// The page's sound settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioSettings {
    /// Offer an audio track to the agents (`audio=off` turns it off).
    pub enabled: bool,
    /// Gain of every panel but the focused one.
    pub unfocused_db: f32,
}

impl Default for AudioSettings {
    fn default() -> Self {
        Self { enabled: true, unfocused_db: DEFAULT_UNFOCUSED_DB }
    }
}

impl AudioSettings {
    /// From the URL parameters `audio` and `audio-unfocused-db`. `audio` is on unless it is
    /// `off`, `0`, `false` or `no`; a dB value that is not a number is ignored, one above 0 or
    /// below −60 is clamped.
    pub fn from_params(audio: Option<&str>, unfocused_db: Option<&str>) -> Self {
        let enabled =
            !audio.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false" | "no"));
        let unfocused_db = unfocused_db
            .and_then(|v| v.trim().parse::<f32>().ok())
            .filter(|v| v.is_finite())
            .map(|v| v.clamp(MIN_UNFOCUSED_DB, 0.0))
            .unwrap_or(DEFAULT_UNFOCUSED_DB);
        Self { enabled, unfocused_db }
    }
}

/// Amplitude factor of a level in dB (−∞ → 0).
pub fn db_to_gain(db: f32) -> f32 {
    if db == f32::NEG_INFINITY {
        0.0
    } else {
        10f32.powf(db / 20.0)
    }
}

/// Level in dB of an amplitude factor, floored at [`FLOOR_DB`].
pub fn gain_to_db(gain: f32) -> f32 {
    if gain > 0.0 && gain.is_finite() {
        (20.0 * gain.log10()).max(FLOOR_DB)
    } else {
        FLOOR_DB
    }
}

/// Panel `i`'s level before muting: full with the keyboard focus or when no panel has it,
/// `unfocused_db` while another panel has it.
pub fn focus_db(i: usize, focus: Option<usize>, settings: &AudioSettings) -> f32 {
    match focus {
        Some(f) if f != i => settings.unfocused_db,
        _ => 0.0,
    }
}

/// The gain factor panel `i`'s gain node ramps to.
pub fn target_gain(i: usize, focus: Option<usize>, muted: bool, settings: &AudioSettings) -> f32 {
    if muted {
        0.0
    } else {
        db_to_gain(focus_db(i, focus, settings))
    }
}

/// How a panel's panner is set up: inverse-distance roll-off from 1 m (a wall 1–3 m away
/// loses 0–10 dB; the default wall, 1.6 m from the eye all round, about 4 dB evenly), no cone
/// (a desktop is heard from the side too), HRTF.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PannerSpec {
    pub ref_distance: f64,
    pub max_distance: f64,
    pub rolloff: f64,
}

pub const PANNER: PannerSpec = PannerSpec { ref_distance: 1.0, max_distance: 50.0, rolloff: 1.0 };

impl PannerSpec {
    /// The gain the `inverse` distance model gives at `distance` (the Web Audio formula).
    pub fn inverse_gain(&self, distance: f64) -> f64 {
        let d = distance.clamp(self.ref_distance, self.max_distance);
        self.ref_distance / (self.ref_distance + self.rolloff * (d - self.ref_distance))
    }
}

/// Where panel `panel`'s sound comes from and which way it faces: its centre, its front normal.
pub fn panner_place(panel: &Panel) -> (Vec3, Vec3) {
    (panel.center, panel.normal())
}

/// Where the listener is and which way it faces (`local-floor` metres; forward and up are unit
/// vectors, Web Audio's right-handed space is the same as WebXR's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Listener {
    pub position: Vec3,
    pub forward: Vec3,
    pub up: Vec3,
}

impl Listener {
    /// A head (or camera) at `position` turned by `orientation` (looking down its −Z, +Y up).
    pub fn from_pose(position: Vec3, orientation: Quat) -> Self {
        let q = orientation.normalize();
        Self { position, forward: q * Vec3::NEG_Z, up: q * Vec3::Y }
    }

    /// The flat view: the camera's turn, heard from the wall's eye. The flat camera stands back
    /// from the eye only so that the whole wall fits on a screen; heard from there every panel
    /// would be ~10 dB quieter and the wall's ±36° would shrink to about ±15°.
    pub fn flat(eye: Vec3, camera_orientation: Quat) -> Self {
        Self::from_pose(eye, camera_orientation)
    }

    /// Which side of the listener `point` is on: −1 (left) … 1 (right), the sine of its
    /// azimuth.
    pub fn side(&self, point: Vec3) -> f32 {
        let right = self.forward.cross(self.up).normalize_or_zero();
        (point - self.position).normalize_or_zero().dot(right)
    }

    /// Whether the pose moved by more than what anyone could hear (skips needless AudioParam
    /// writes).
    pub fn differs(&self, other: &Listener) -> bool {
        self.position.distance(other.position) > 1e-3
            || self.forward.distance(other.forward) > 1e-3
            || self.up.distance(other.up) > 1e-3
    }
}

/// RMS level in dBFS of time-domain samples (floored at [`FLOOR_DB`]).
pub fn rms_db(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return FLOOR_DB;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    gain_to_db((sum / samples.len() as f64).sqrt() as f32)
}

/// The strongest frequency in a dB spectrum (`AnalyserNode.getFloatFrequencyData`: bin k is
/// k·sample_rate/fft_size Hz), refined between bins by a parabola through the peak and its
/// neighbours. `None` when every bin is below `min_db` (silence). The DC bin is skipped.
pub fn dominant_frequency(spectrum_db: &[f32], sample_rate: f32, fft_size: u32, min_db: f32) -> Option<(f32, f32)> {
    let (k, &peak) =
        spectrum_db.iter().enumerate().skip(1).filter(|(_, v)| v.is_finite()).max_by(|a, b| a.1.total_cmp(b.1))?;
    if peak < min_db {
        return None;
    }
    let bin_hz = sample_rate / fft_size as f32;
    let mut offset = 0.0;
    if k + 1 < spectrum_db.len() {
        let (a, b, c) = (spectrum_db[k - 1], peak, spectrum_db[k + 1]);
        let denom = a - 2.0 * b + c;
        if a.is_finite() && c.is_finite() && denom.abs() > 1e-9 {
            offset = (0.5 * (a - c) / denom).clamp(-0.5, 0.5);
        }
    }
    Some(((k as f32 + offset) * bin_hz, peak))
}

/// The highest level in a dB spectrum within `width_hz` of `hz`.
pub fn level_at(spectrum_db: &[f32], sample_rate: f32, fft_size: u32, hz: f32, width_hz: f32) -> f32 {
    let bin_hz = sample_rate / fft_size as f32;
    let lo = ((hz - width_hz) / bin_hz).floor().max(0.0) as usize;
    let hi = ((hz + width_hz) / bin_hz).ceil() as usize;
    spectrum_db.iter().take(hi + 1).skip(lo).copied().filter(|v| v.is_finite()).fold(FLOOR_DB, f32::max)
}

/// Whether a panel is playing, from its level over time: on at once above [`PLAYING_DB`], off
/// after [`PLAYING_HOLD_MS`] below it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PlayingDetector {
    playing: bool,
    last_loud_ms: Option<f64>,
}

impl PlayingDetector {
    /// A level measured at `now_ms`; returns whether the panel plays now.
    pub fn update(&mut self, now_ms: f64, level_db: f32) -> bool {
        if level_db > PLAYING_DB {
            self.last_loud_ms = Some(now_ms);
            self.playing = true;
        } else if self.last_loud_ms.is_none_or(|t| now_ms - t >= PLAYING_HOLD_MS) {
            self.playing = false;
        }
        self.playing
    }

    pub fn playing(&self) -> bool {
        self.playing
    }

    /// The track went away.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What a panel's caption and HUD say about its sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioStatus {
    /// No audio track (audio off, an agent without audio, not connected).
    None,
    Silent,
    Playing,
    Muted,
}

impl AudioStatus {
    pub fn of(has_track: bool, muted: bool, playing: bool) -> Self {
        match (has_track, muted, playing) {
            (_, true, _) => AudioStatus::Muted,
            (false, _, _) => AudioStatus::None,
            (true, false, true) => AudioStatus::Playing,
            (true, false, false) => AudioStatus::Silent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loco_shared::layout::{layout, WallConfig, WallOrigin};

    #[test]
    fn settings_from_the_url() {
        assert_eq!(AudioSettings::from_params(None, None), AudioSettings::default());
        assert!(AudioSettings::default().enabled);
        for off in ["off", "OFF", "0", "false", "no", " off "] {
            assert!(!AudioSettings::from_params(Some(off), None).enabled, "{off}");
        }
        for on in ["on", "1", "", "yes"] {
            assert!(AudioSettings::from_params(Some(on), None).enabled, "{on}");
        }
        assert_eq!(AudioSettings::from_params(None, Some("-6")).unfocused_db, -6.0);
        assert_eq!(AudioSettings::from_params(None, Some("3")).unfocused_db, 0.0);
        assert_eq!(AudioSettings::from_params(None, Some("-200")).unfocused_db, MIN_UNFOCUSED_DB);
        assert_eq!(AudioSettings::from_params(None, Some("loud")).unfocused_db, DEFAULT_UNFOCUSED_DB);
        assert_eq!(AudioSettings::from_params(None, Some("NaN")).unfocused_db, DEFAULT_UNFOCUSED_DB);
    }

    #[test]
    fn decibels() {
        assert_eq!(db_to_gain(0.0), 1.0);
        assert!((db_to_gain(-12.0) - 0.251_188_6).abs() < 1e-6);
        assert!((db_to_gain(-6.0206) - 0.5).abs() < 1e-4);
        assert_eq!(db_to_gain(f32::NEG_INFINITY), 0.0);
        assert!((gain_to_db(0.5) + 6.0206).abs() < 1e-3);
        assert_eq!(gain_to_db(0.0), FLOOR_DB);
        assert_eq!(gain_to_db(f32::NAN), FLOOR_DB);
        for db in [-40.0, -12.0, -3.0, 0.0, 6.0] {
            assert!((gain_to_db(db_to_gain(db)) - db).abs() < 1e-4);
        }
    }

    #[test]
    fn focus_and_mute() {
        let s = AudioSettings::default();
        // Nothing focused: everyone at full level.
        assert_eq!(focus_db(3, None, &s), 0.0);
        assert_eq!(focus_db(3, Some(3), &s), 0.0);
        assert_eq!(focus_db(2, Some(3), &s), -12.0);
        assert_eq!(target_gain(3, Some(3), false, &s), 1.0);
        assert!((target_gain(2, Some(3), false, &s) - 0.2512).abs() < 1e-3);
        assert_eq!(target_gain(3, Some(3), true, &s), 0.0);
        assert_eq!(target_gain(2, None, true, &s), 0.0);
        let quiet = AudioSettings { unfocused_db: -30.0, ..s };
        assert!((target_gain(0, Some(1), false, &quiet) - 0.031_62).abs() < 1e-4);
    }

    #[test]
    fn panners_sit_on_the_panels_and_the_wall_is_heard_left_to_right() {
        let origin = WallOrigin::default();
        let panels = layout(&WallConfig::default(), &origin, &[4.0 / 3.0; 3]);
        let head = Listener::from_pose(origin.eye, Quat::IDENTITY);
        let sides: Vec<f32> = panels.iter().map(|p| head.side(panner_place(p).0)).collect();
        assert!(sides[0] < -0.4 && sides[1].abs() < 1e-4 && sides[2] > 0.4, "{sides:?}");
        for p in &panels {
            let (at, facing) = panner_place(p);
            assert_eq!(at, p.center);
            // Facing the listener.
            assert!(facing.dot(origin.eye - at) > 0.0);
            // Every panel of the default wall is 1.6 m away: the same roll-off, about −4 dB.
            let g = PANNER.inverse_gain(at.distance(origin.eye) as f64);
            assert!((g - 0.625).abs() < 1e-3, "{g}");
        }
        // Turned 180°: left and right swap.
        let turned = Listener::from_pose(origin.eye, Quat::from_rotation_y(std::f32::consts::PI));
        assert!(turned.side(panels[0].center) > 0.4);
        // Turned 90° to the left (+Y rotation): the whole wall is on the right.
        let left = Listener::from_pose(origin.eye, Quat::from_rotation_y(std::f32::consts::FRAC_PI_2));
        assert!(panels.iter().all(|p| left.side(p.center) > 0.5));
        // Distance roll-off: 1 m full, 2 m half, 3 m a third; nearer than 1 m is not louder.
        assert_eq!(PANNER.inverse_gain(0.3), 1.0);
        assert!((PANNER.inverse_gain(2.0) - 0.5).abs() < 1e-9);
        assert!((PANNER.inverse_gain(3.0) - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn listener_poses() {
        let l = Listener::from_pose(Vec3::new(0.0, 1.6, 0.0), Quat::IDENTITY);
        assert_eq!((l.forward, l.up), (Vec3::NEG_Z, Vec3::Y));
        let pitched = Listener::from_pose(Vec3::ZERO, Quat::from_rotation_x(0.3));
        assert!((pitched.forward.length() - 1.0).abs() < 1e-6 && pitched.forward.y > 0.0);
        assert!(pitched.forward.dot(pitched.up).abs() < 1e-6);
        let flat = Listener::flat(Vec3::new(0.0, 1.5, 0.0), Quat::from_rotation_y(0.2));
        assert_eq!(flat.position, Vec3::new(0.0, 1.5, 0.0));
        assert!(!l.differs(&l));
        let moved = Listener { position: l.position + Vec3::X * 0.01, ..l };
        assert!(l.differs(&moved));
    }

    #[test]
    fn levels_and_frequencies() {
        assert_eq!(rms_db(&[]), FLOOR_DB);
        assert_eq!(rms_db(&[0.0; 64]), FLOOR_DB);
        // A full-scale sine: RMS 1/√2, −3 dBFS.
        let (sr, n) = (48_000.0f32, 16_384u32);
        let sine: Vec<f32> = (0..n).map(|k| (2.0 * std::f32::consts::PI * 440.0 * k as f32 / sr).sin()).collect();
        assert!((rms_db(&sine) + 3.01).abs() < 0.05, "{}", rms_db(&sine));
        let half: Vec<f32> = sine.iter().map(|s| s * 0.5).collect();
        assert!((rms_db(&sine) - rms_db(&half) - 6.02).abs() < 0.01);

        // A dB spectrum peaking between bins 150 and 151 (bin 2.93 Hz at 48 kHz/16384).
        let bin = sr / n as f32;
        let true_hz = 150.3 * bin;
        let spectrum: Vec<f32> = (0..(n / 2) as usize)
            .map(|k| {
                let d = k as f32 - 150.3;
                -30.0 - 3.0 * d * d
            })
            .collect();
        let (hz, db) = dominant_frequency(&spectrum, sr, n, -100.0).unwrap();
        assert!((hz - true_hz).abs() < 0.05 * bin, "{hz} vs {true_hz}");
        assert!(db > -31.0);
        assert_eq!(dominant_frequency(&spectrum, sr, n, -20.0), None, "below the floor: silence");
        assert_eq!(dominant_frequency(&[f32::NEG_INFINITY; 16], sr, n, -200.0), None);
        assert_eq!(dominant_frequency(&[], sr, n, -200.0), None);
        // The level near a frequency is the peak there, the floor far away.
        assert!((level_at(&spectrum, sr, n, true_hz, 5.0) - db).abs() < 1.0);
        assert_eq!(level_at(&spectrum, sr, n, 2000.0, 5.0), FLOOR_DB);
    }

    #[test]
    fn playing_holds_through_short_gaps() {
        let mut p = PlayingDetector::default();
        assert!(!p.update(0.0, FLOOR_DB));
        assert!(p.update(100.0, -20.0));
        assert!(p.update(400.0, -90.0), "a short gap");
        assert!(p.update(650.0, -90.0));
        assert!(!p.update(700.0, -90.0), "600 ms of silence");
        assert!(p.update(800.0, -40.0));
        p.reset();
        assert!(!p.playing());
    }

    #[test]
    fn status() {
        assert_eq!(AudioStatus::of(false, false, false), AudioStatus::None);
        assert_eq!(AudioStatus::of(true, false, false), AudioStatus::Silent);
        assert_eq!(AudioStatus::of(true, false, true), AudioStatus::Playing);
        assert_eq!(AudioStatus::of(true, true, true), AudioStatus::Muted);
        assert_eq!(AudioStatus::of(false, true, false), AudioStatus::Muted);
    }
}
