//! The text of each panel's caption (name, state, size or error, retry countdown, keyboard
//! focus, sound) and of its HUD line (fps, bitrate, round-trip time, frames, sound level).
//! Pure: the shell draws the strings into textures, and only when they change.

use crate::audio::AudioStatus;
use crate::scene::StreamState;

/// What a caption says about one panel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionInput<'a> {
    pub name: &'a str,
    pub state: StreamState,
    /// The video's size (shown while live).
    pub video_size: (u32, u32),
    /// Why the panel is down.
    pub error: Option<&'a str>,
    /// How long until the next attempt (shown while down, rounded up to whole seconds).
    pub retry_in_ms: f64,
    /// The keyboard types into this panel.
    pub focused: bool,
    /// Its sound: playing or muted is shown (a click on the caption toggles muting).
    pub audio: AudioStatus,
    /// What the VM menu has to say (`rebooting…`, a result or error, a VM that is not running).
    pub vm: Option<&'a str>,
}

/// `vm1  ·  live  ·  1024×768  ·  keyboard  ·  ♪ playing`, `vm2  ·  down  ·  connection lost  ·
/// retry in 4 s`, `vm3  ·  live  ·  1024×768  ·  muted`.
pub fn caption(c: &CaptionInput) -> String {
    let mut label = format!("{}  ·  {}", c.name, c.state.as_str());
    // A VM restarting on purpose: its stream being down is expected, say so first.
    let rebooting = c.vm.is_some_and(|v| v.starts_with("rebooting"));
    if let (true, Some(v)) = (rebooting, c.vm) {
        label = format!("{}  ·  {v}", c.name);
    }
    match c.state {
        _ if rebooting => {}
        StreamState::Live => {
            let (w, h) = c.video_size;
            label.push_str(&format!("  ·  {w}×{h}"));
        }
        StreamState::Down => {
            let wait = (c.retry_in_ms / 1000.0).ceil().max(0.0);
            if let Some(e) = c.error {
                label.push_str(&format!("  ·  {e}"));
            }
            if wait > 0.0 {
                label.push_str(&format!("  ·  retry in {wait:.0} s"));
            }
        }
        StreamState::Locked => {
            if let Some(e) = c.error {
                label.push_str(&format!("  ·  {e}"));
            }
        }
        StreamState::Connecting => {}
    }
    if let (false, Some(v)) = (rebooting, c.vm) {
        label.push_str(&format!("  ·  {v}"));
    }
    if c.focused {
        label.push_str("  ·  keyboard");
    }
    match c.audio {
        AudioStatus::Playing => label.push_str("  ·  ♪ playing"),
        AudioStatus::Muted => label.push_str("  ·  muted"),
        AudioStatus::Silent | AudioStatus::None => {}
    }
    label
}

/// The HUD's sound part: `♪ −23 dB` (playing, the level heard), `silent`, `muted`, or nothing
/// without an audio track.
pub fn hud_audio(status: AudioStatus, level_db: Option<f32>) -> Option<String> {
    match status {
        AudioStatus::None => None,
        AudioStatus::Muted => Some("muted".into()),
        AudioStatus::Silent => Some("silent".into()),
        AudioStatus::Playing => {
            Some(level_db.map(|l| format!("♪ {:.0} dB", l).replace('-', "−")).unwrap_or_else(|| "♪".into()))
        }
    }
}

/// The statistics line: `30 fps  ·  1200 kbit/s  ·  rtt 3 ms  ·  450 frames`.
pub fn hud_line(fps: f64, kbps: f64, rtt_ms: Option<f64>, frames_decoded: u32) -> String {
    let rtt = rtt_ms.map(|r| format!("{r:.0} ms")).unwrap_or_else(|| "–".into());
    format!("{fps:.0} fps  ·  {kbps:.0} kbit/s  ·  rtt {rtt}  ·  {frames_decoded} frames")
}

/// The decoder part of the statistics line: the codec, `getStats`' `decoderImplementation` and
/// `power efficient` when `powerEfficientDecoder` says so (`vp8 libvpx`, `h264 MediaCodec ·
/// power efficient`); `None` when nothing is known.
pub fn hud_decoder(codec: Option<&str>, implementation: Option<&str>, power_efficient: Option<bool>) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let name = [codec, implementation].into_iter().flatten().collect::<Vec<_>>().join(" ");
    if !name.is_empty() {
        parts.push(name);
    }
    match power_efficient {
        Some(true) => parts.push("power efficient".into()),
        Some(false) => parts.push("not power efficient".into()),
        None => {}
    }
    (!parts.is_empty()).then(|| parts.join("  ·  "))
}

/// The caption's status dot.
pub fn state_colour(state: StreamState) -> &'static str {
    match state {
        StreamState::Live => "#3ddc84",
        StreamState::Connecting => "#f5c542",
        StreamState::Down => "#ff5c5c",
        StreamState::Locked => "#b48cff",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(state: StreamState) -> CaptionInput<'static> {
        CaptionInput {
            name: "vm1",
            state,
            video_size: (1280, 800),
            error: None,
            retry_in_ms: 0.0,
            focused: false,
            audio: AudioStatus::None,
            vm: None,
        }
    }

    #[test]
    fn captions() {
        assert_eq!(caption(&input(StreamState::Connecting)), "vm1  ·  connecting");
        assert_eq!(caption(&input(StreamState::Live)), "vm1  ·  live  ·  1280×800");
        let focused = CaptionInput { focused: true, ..input(StreamState::Live) };
        assert_eq!(caption(&focused), "vm1  ·  live  ·  1280×800  ·  keyboard");
        let locked = CaptionInput {
            error: Some("the agent refused the key"),
            retry_in_ms: f64::INFINITY,
            ..input(StreamState::Locked)
        };
        assert_eq!(caption(&locked), "vm1  ·  locked  ·  the agent refused the key");
        let down = CaptionInput { error: Some("connection lost"), retry_in_ms: 3001.0, ..input(StreamState::Down) };
        assert_eq!(caption(&down), "vm1  ·  down  ·  connection lost  ·  retry in 4 s");
        let due = CaptionInput { retry_in_ms: 0.0, ..down };
        assert_eq!(caption(&due), "vm1  ·  down  ·  connection lost");
        let negative = CaptionInput { retry_in_ms: -500.0, error: None, ..down };
        assert_eq!(caption(&negative), "vm1  ·  down");
        let playing = CaptionInput { audio: AudioStatus::Playing, ..focused };
        assert_eq!(caption(&playing), "vm1  ·  live  ·  1280×800  ·  keyboard  ·  ♪ playing");
        let muted = CaptionInput { audio: AudioStatus::Muted, ..input(StreamState::Live) };
        assert_eq!(caption(&muted), "vm1  ·  live  ·  1280×800  ·  muted");
        let silent = CaptionInput { audio: AudioStatus::Silent, ..input(StreamState::Live) };
        assert_eq!(caption(&silent), "vm1  ·  live  ·  1280×800");
        let failed = CaptionInput { vm: Some("reset failed: refused"), ..input(StreamState::Live) };
        assert_eq!(caption(&failed), "vm1  ·  live  ·  1280×800  ·  reset failed: refused");
        let rebooting = CaptionInput { vm: Some("rebooting…"), ..down };
        assert_eq!(caption(&rebooting), "vm1  ·  rebooting…");
    }

    #[test]
    fn hud_sound() {
        assert_eq!(hud_audio(AudioStatus::None, Some(-3.0)), None);
        assert_eq!(hud_audio(AudioStatus::Silent, None).as_deref(), Some("silent"));
        assert_eq!(hud_audio(AudioStatus::Muted, Some(-20.0)).as_deref(), Some("muted"));
        assert_eq!(hud_audio(AudioStatus::Playing, Some(-23.4)).as_deref(), Some("♪ −23 dB"));
        assert_eq!(hud_audio(AudioStatus::Playing, None).as_deref(), Some("♪"));
    }

    #[test]
    fn hud_decoders() {
        assert_eq!(hud_decoder(None, None, None), None);
        assert_eq!(
            hud_decoder(Some("vp8"), Some("libvpx"), Some(false)).as_deref(),
            Some("vp8 libvpx  ·  not power efficient")
        );
        assert_eq!(hud_decoder(Some("h264"), None, Some(true)).as_deref(), Some("h264  ·  power efficient"));
        assert_eq!(hud_decoder(None, Some("ExternalDecoder"), None).as_deref(), Some("ExternalDecoder"));
    }

    #[test]
    fn hud_lines() {
        assert_eq!(hud_line(29.6, 1234.4, Some(2.5), 450), "30 fps  ·  1234 kbit/s  ·  rtt 2 ms  ·  450 frames");
        assert_eq!(hud_line(0.0, 0.0, None, 0), "0 fps  ·  0 kbit/s  ·  rtt –  ·  0 frames");
    }
}
