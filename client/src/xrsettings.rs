//! How the page asks a headset to run its immersive session: the `XRWebGLLayer`'s
//! `framebufferScaleFactor` and `fixedFoveation`, and the display's target frame rate. Pure:
//! the settings come from the URL (`?scale=`, `?foveation=`, `?fps=`), the offered rates from
//! `XRSession.supportedFrameRates`; `web/xr.rs` carries the answers out.
//!
//! - **No fixed foveation by default.** Foveation lowers the resolution towards the edges of
//!   each eye; a desktop's text is read everywhere on the panel, so loco turns it off (0) unless
//!   `?foveation=` (0..1) says otherwise.
//! - **72 Hz by default.** Video arrives at 30 fps at most; 72 Hz is the Quest's lowest rate,
//!   leaves the most time per frame for uploads and keeps the headset cool. `?fps=` asks for
//!   another; the nearest offered rate is taken (ties: the lower).
//! - **Scale 1 by default** (the runtime's recommended resolution); `?scale=` (0.25..2) is
//!   passed as `framebufferScaleFactor` (the runtime may clamp it further).

/// The default target frame rate.
pub const DEFAULT_FPS: f32 = 72.0;
/// The accepted range of `?scale=`.
pub const SCALE_RANGE: (f64, f64) = (0.25, 2.0);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XrSettings {
    /// `framebufferScaleFactor` for the layer.
    pub scale: f64,
    /// `fixedFoveation` for the layer, where the layer has it.
    pub foveation: f32,
    /// The frame rate to ask for, where the session offers a choice.
    pub fps: f32,
}

impl Default for XrSettings {
    fn default() -> Self {
        Self { scale: 1.0, foveation: 0.0, fps: DEFAULT_FPS }
    }
}

fn number(v: Option<&str>) -> Option<f64> {
    v.and_then(|s| s.trim().parse::<f64>().ok()).filter(|x| x.is_finite())
}

impl XrSettings {
    /// From the URL parameters `scale`, `foveation` and `fps`. A value that is not a number is
    /// ignored (the default stays); scale is clamped to [`SCALE_RANGE`], foveation to 0..1, a
    /// frame rate must be positive.
    pub fn from_params(scale: Option<&str>, foveation: Option<&str>, fps: Option<&str>) -> Self {
        let d = Self::default();
        Self {
            scale: number(scale).map(|s| s.clamp(SCALE_RANGE.0, SCALE_RANGE.1)).unwrap_or(d.scale),
            foveation: number(foveation).map(|f| f.clamp(0.0, 1.0) as f32).unwrap_or(d.foveation),
            fps: number(fps).filter(|&f| f > 0.0).map(|f| f as f32).unwrap_or(d.fps),
        }
    }
}

/// The rate to ask the session for: `wanted` if offered, else the nearest offered rate (the
/// lower one of two equally near); `None` when the session offers none (no choice to make).
pub fn choose_frame_rate(supported: &[f32], wanted: f32) -> Option<f32> {
    supported.iter().copied().filter(|r| r.is_finite() && *r > 0.0).min_by(|a, b| {
        let (da, db) = ((a - wanted).abs(), (b - wanted).abs());
        da.total_cmp(&db).then(a.total_cmp(b))
    })
}

/// Where the scene is drawn in a session: the layer's opaque framebuffer (a headset, and the
/// tests' device layer), the canvas when the layer has no framebuffer (an emulator drawing
/// the canvas itself), or a projection layer over the panels' media layers
/// ([`crate::medialayers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XrPath {
    Framebuffer,
    Canvas,
    MediaLayers,
}

impl XrPath {
    pub fn as_str(self) -> &'static str {
        match self {
            XrPath::Framebuffer => "framebuffer",
            XrPath::Canvas => "canvas",
            XrPath::MediaLayers => "media-layers",
        }
    }
}

/// `?layers=`: whether panels' videos are shown as WebXR media layers.
/// - `auto` (default, and any value not understood): where the browser has `XRMediaBinding`
///   and the session grants layers; otherwise the videos are textures, as before.
/// - `on`: the same, but a browser or session without them is reported as an error in the
///   HUD and `window.__loco` (the page then still shows the videos as textures).
/// - `off`: always textures (the `XRWebGLLayer` path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayersMode {
    #[default]
    Auto,
    On,
    Off,
}

impl LayersMode {
    pub fn from_param(v: Option<&str>) -> Self {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Some("on" | "1" | "media") => LayersMode::On,
            Some("off" | "0" | "none") => LayersMode::Off,
            _ => LayersMode::Auto,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LayersMode::Auto => "auto",
            LayersMode::On => "on",
            LayersMode::Off => "off",
        }
    }

    /// Whether to try media layers in a browser that has (`available`) or lacks them.
    pub fn wants(self, available: bool) -> bool {
        self != LayersMode::Off && available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = XrSettings::from_params(None, None, None);
        assert_eq!(s, XrSettings { scale: 1.0, foveation: 0.0, fps: 72.0 });
        assert_eq!(XrSettings::from_params(Some("x"), Some(""), Some("fast")), s, "not numbers: defaults");
        assert_eq!(XrSettings::from_params(Some("NaN"), Some("inf"), Some("-90")), s);
        assert_eq!(XrSettings::from_params(None, None, Some("0")), s, "a rate must be positive");
    }

    #[test]
    fn params() {
        let s = XrSettings::from_params(Some(" 1.5 "), Some("0.5"), Some("90"));
        assert_eq!(s, XrSettings { scale: 1.5, foveation: 0.5, fps: 90.0 });
        let s = XrSettings::from_params(Some("9"), Some("3"), None);
        assert_eq!((s.scale, s.foveation), (2.0, 1.0), "clamped");
        let s = XrSettings::from_params(Some("0.01"), Some("-1"), None);
        assert_eq!((s.scale, s.foveation), (0.25, 0.0), "clamped");
    }

    #[test]
    fn frame_rates() {
        let quest3 = [72.0, 80.0, 90.0, 120.0];
        assert_eq!(choose_frame_rate(&quest3, 72.0), Some(72.0));
        assert_eq!(choose_frame_rate(&quest3, 90.0), Some(90.0));
        assert_eq!(choose_frame_rate(&quest3, 60.0), Some(72.0), "nearest");
        assert_eq!(choose_frame_rate(&quest3, 100.0), Some(90.0), "nearest");
        assert_eq!(choose_frame_rate(&quest3, 76.0), Some(72.0), "a tie goes to the lower rate");
        assert_eq!(choose_frame_rate(&quest3, 500.0), Some(120.0));
        assert_eq!(choose_frame_rate(&[90.0, 72.0], 72.0), Some(72.0), "order does not matter");
        assert_eq!(choose_frame_rate(&[], 72.0), None, "nothing offered: no choice");
        assert_eq!(choose_frame_rate(&[f32::NAN, 0.0], 72.0), None);
    }

    #[test]
    fn paths() {
        assert_eq!(XrPath::Framebuffer.as_str(), "framebuffer");
        assert_eq!(XrPath::Canvas.as_str(), "canvas");
        assert_eq!(XrPath::MediaLayers.as_str(), "media-layers");
    }

    #[test]
    fn layers_mode() {
        assert_eq!(LayersMode::from_param(None), LayersMode::Auto);
        assert_eq!(LayersMode::from_param(Some("bogus")), LayersMode::Auto);
        assert_eq!(LayersMode::from_param(Some(" ON ")), LayersMode::On);
        assert_eq!(LayersMode::from_param(Some("off")), LayersMode::Off);
        assert_eq!(LayersMode::from_param(Some("0")), LayersMode::Off);
        assert!(LayersMode::Auto.wants(true) && LayersMode::On.wants(true));
        assert!(!LayersMode::Off.wants(true));
        assert!(!LayersMode::Auto.wants(false) && !LayersMode::On.wants(false));
        assert_eq!(LayersMode::On.as_str(), "on");
    }
}
