//! loco's WebXR client.
//!
//! - [`scene`]: what a frame shows (panels, captions, lasers, floor) as quads; pure.
//! - [`render`]: the wgpu renderer that draws those quads into any texture view.
//! - The sans-I/O core (time and randomness passed in, unit-tested on a virtual clock):
//!   [`link`] (each panel's connect/backoff/probe/live/down state machine), [`pointer`] (mouse
//!   and XR-hand routing with capture), [`captions`] (caption and HUD text), [`hook`] (the
//!   `window.__loco` snapshot type), [`access`] (the page's key: from `#key=`, who sends it, the
//!   key form's text), [`audio`] (focus/mute gains, panner and listener placement, levels,
//!   which panel plays, the dominant frequency), [`control`] (the VM menu on a caption: hold to
//!   reset/power off/revert, results, "rebooting…"), [`keyboard`] (the in-VR keyboard: layout,
//!   latches, repeat, placement), [`paste`] (paste as rate-limited typing), [`arrange`] (panels
//!   pulled closer with the grip, kept by name), [`attention`] (which panels are focused, visible
//!   or hidden, and when each agent is told), [`xrsettings`] (the headset's layer scale,
//!   foveation and frame rate), [`decoder`] (a stalled video decoder and the once-a-minute VP8
//!   fallback), [`check`] (the check page's frame-time and decode-time arithmetic), [`medialayers`]
//!   (each panel's video as a WebXR media layer: placement, when to make one, layer order).
//! - `web` (wasm32 only): the thin shell — config, WHEP sessions, video upload, WebXR and flat
//!   view, DOM input, the `window.__loco` getter — that carries out the core's decisions.
//!
//! The layout, ray picking and button/key mapping live in `loco-shared`, tested natively.

pub mod access;
pub mod arrange;
pub mod attention;
pub mod audio;
pub mod budget;
pub mod camera;
pub mod captions;
pub mod check;
pub mod control;
pub mod decoder;
pub mod hook;
pub mod keyboard;
pub mod link;
pub mod medialayers;
pub mod paste;
pub mod pointer;
pub mod render;
pub mod scene;
pub mod xrsettings;

#[cfg(target_arch = "wasm32")]
mod web;
