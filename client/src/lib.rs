//! loco's WebXR client.
//!
//! - [`scene`]: what a frame shows (panels, captions, lasers, floor) as quads; pure.
//! - [`render`]: the wgpu renderer that draws those quads into any texture view.
//! - `web` (wasm32 only): the page — config, WHEP sessions, video upload, WebXR and flat view,
//!   controller and keyboard input, the `window.__loco` test hook.
//!
//! The layout, ray picking and button/key mapping live in `loco-shared`, tested natively.

pub mod budget;
pub mod camera;
pub mod render;
pub mod scene;

#[cfg(target_arch = "wasm32")]
mod web;
