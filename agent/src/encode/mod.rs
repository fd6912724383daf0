//! Video encoders behind one small interface: an I420 picture in, one encoded frame out.
//!
//! Both encoders are configured for interactive desktop streaming: no B-frames, no lookahead,
//! a bitrate cap with a small buffer ([`RateSettings`]: constant quality under the cap, or
//! constant bitrate, with a quantiser floor), an endless GOP with keyframes only on demand
//! (a new viewer, a PLI/FIR, a dropped frame), and no frame of delay: each `encode` call
//! returns the frame it was given.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::framebuffer::I420;
use loco_shared::geom::TileMap;

pub mod h264;
pub mod vp8;

/// A video codec the agent can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Codec {
    H264,
    Vp8,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::H264, Codec::Vp8];

    pub fn label(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Vp8 => "vp8",
        }
    }

    /// Whether its rate control spreads the bitrate over the frames actually encoded (libvpx
    /// follows the timestamps), rather than budgeting bitrate ÷ `--max-fps` per frame (x264
    /// without VFR input, `h264.rs`). Only then must a lower frame rate come with a lower bitrate
    /// to keep the bits per frame (and the bits per second) down.
    pub fn rate_follows_frame_times(self) -> bool {
        match self {
            Codec::H264 => false,
            Codec::Vp8 => true,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "h264" | "h.264" | "avc" => Ok(Codec::H264),
            "vp8" => Ok(Codec::Vp8),
            other => Err(format!("unknown codec {other:?}: expected h264 or vp8")),
        }
    }
}

/// How an encoder spends its bits (`--rate-control`, `--crf`, `--qp-min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RateMode {
    /// Constant bitrate (x264 ABR with VBV max = target; libvpx CBR) with ultrafast's ±16
    /// diamond search; two blind refinement frames after motion. H.264's encoder before
    /// `crf` existed (with `--qp-min 0`, its default in this mode); VP8's always.
    Cbr,
    /// H.264, the default: constant quality (x264's CRF) under a VBV cap at the target
    /// bitrate, with an uneven-multi-hexagon motion search over ±64 pixels: a nearly still
    /// screen costs what its changes need at that quality, and motion is held to the target.
    /// After motion, one top-off frame at a finer quantiser once the screen has been still
    /// for half a second, only if the last frame was coarse (or a keyframe).
    Crf,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSettings {
    pub mode: RateMode,
    /// x264's rate factor in `Crf` mode (0–51; lower is finer).
    pub crf: f32,
    /// The finest quantiser x264 may use (0–51): without one, rate control drives nearly
    /// unchanged frames towards QP 0 and re-codes text almost losslessly at great cost.
    pub qp_min: u32,
}

impl Default for RateSettings {
    /// The agent's defaults: [`RateSettings::desktop`].
    fn default() -> Self {
        Self::desktop()
    }
}

impl RateSettings {
    /// Tuned for desktops (the defaults): CRF 23, QP floor 20.
    pub fn desktop() -> Self {
        Self { mode: RateMode::Crf, crf: 23.0, qp_min: 20 }
    }

    /// `--rate-control cbr`: constant bitrate without a quantiser floor (the encoder before
    /// the desktop settings).
    pub fn cbr() -> Self {
        Self { mode: RateMode::Cbr, crf: 23.0, qp_min: 0 }
    }

    /// The floor `--qp-min` gives when it is not set: 20 with CRF, none with CBR.
    pub fn default_qp_min(mode: RateMode) -> u32 {
        match mode {
            RateMode::Crf => Self::desktop().qp_min,
            RateMode::Cbr => Self::cbr().qp_min,
        }
    }

    /// Whether `codec` follows motion with a gated top-off frame (H.264 at constant quality)
    /// rather than blind refinement frames.
    pub fn tops_off(&self, codec: Codec) -> bool {
        codec == Codec::H264 && self.mode == RateMode::Crf
    }

    /// The quantiser of a top-off frame: three steps finer than the CRF, not below the floor.
    pub fn topoff_qp(&self) -> u32 {
        ((self.crf.round() as i64 - 3).max(i64::from(self.qp_min))).clamp(0, 51) as u32
    }
}

/// Settings shared by all encoders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
    pub max_fps: u32,
    pub threads: u32,
    pub rate: RateSettings,
}

/// One encoded frame, ready to packetise.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub data: Bytes,
    pub keyframe: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{codec} encoder could not be opened for {width}x{height}: {reason}")]
    Open { codec: Codec, width: u32, height: u32, reason: String },
    #[error("{codec} encoder failed: {reason}")]
    Encode { codec: Codec, reason: String },
    #[error("picture is {got_w}x{got_h}, encoder was opened for {want_w}x{want_h}")]
    SizeMismatch { got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
}

/// A video encoder. Implementations are not thread-safe; each lives on one encoder thread.
pub trait VideoEncoder: Send {
    fn settings(&self) -> &EncoderSettings;
    /// Encodes `picture` shown at `pts_ms` (milliseconds, strictly increasing).
    /// Returns `None` when the encoder chose to output nothing for this picture.
    fn encode(&mut self, picture: &I420, pts_ms: i64, keyframe: bool) -> Result<Option<EncodedFrame>, EncodeError>;
    /// Changes the target bitrate (and the rate-control buffer with it) from the next frame on.
    fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncodeError>;
    /// Whether the last frame was coded coarser than the rate settings ask (the bitrate cap
    /// held it back), so that a top-off frame of the still screen would show finer text.
    fn wants_topoff(&self) -> bool {
        false
    }
    /// Tells the encoder what changed in the picture since the last one given to it:
    /// `Some(tiles)`, nothing outside the marked 16×16 tiles (the macroblocks; a map of the
    /// picture's own size, else it counts as unknown); `None`, unknown (anything may have).
    /// Hints add up until a frame comes out. x264 then skips the macroblocks outside
    /// (`mb_info`); the others ignore it.
    fn hint_changed(&mut self, _changed: Option<&TileMap>) {}
    /// Encodes `picture` (unchanged since the last frame) as a top-off: a P-frame at the
    /// finer quantiser of [`RateSettings::topoff_qp`].
    fn encode_topoff(&mut self, picture: &I420, pts_ms: i64) -> Result<Option<EncodedFrame>, EncodeError> {
        self.encode(picture, pts_ms, false)
    }
}

/// The hint to give [`VideoEncoder::hint_changed`] for a frame: the tiles that changed since
/// the last one (none marked: nothing did), or no knowledge for a refinement or top-off, which
/// re-codes the whole picture finer although nothing changed.
pub fn damage_hint(changed: &TileMap, refinement: bool) -> Option<&TileMap> {
    (!refinement).then_some(changed)
}

/// Opens an encoder for `codec`.
pub fn open(codec: Codec, settings: EncoderSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
    Ok(match codec {
        Codec::H264 => Box::new(h264::X264Encoder::open(settings)?),
        Codec::Vp8 => Box::new(vp8::Vp8Encoder::open(settings)?),
    })
}

fn check_size(settings: &EncoderSettings, picture: &I420) -> Result<(), EncodeError> {
    if picture.width != settings.width || picture.height != settings.height {
        return Err(EncodeError::SizeMismatch {
            got_w: picture.width,
            got_h: picture.height,
            want_w: settings.width,
            want_h: settings.height,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::Framebuffer;
    use loco_shared::Rect;

    fn picture(w: u32, h: u32, phase: u8) -> I420 {
        let mut fb = Framebuffer::new(w, h).unwrap();
        let px: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [((x / 16) as u8).wrapping_mul(30), ((y / 16) as u8).wrapping_mul(40), phase, 255]
            })
            .collect();
        fb.put(fb.full_rect(), &px).unwrap();
        let mut pic = I420::new(w, h);
        pic.convert_from(&fb, fb.full_rect()).unwrap();
        pic
    }

    fn noise(w: u32, h: u32, seed: u32) -> I420 {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut pic = I420::new(w, h);
        for plane in [&mut pic.y, &mut pic.u, &mut pic.v] {
            for v in plane.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *v = 120 + (state >> 28) as u8;
            }
        }
        pic
    }

    fn settings(w: u32, h: u32) -> EncoderSettings {
        EncoderSettings {
            width: w,
            height: h,
            bitrate_kbps: 2000,
            max_fps: 30,
            threads: 1,
            rate: RateSettings::default(),
        }
    }

    #[test]
    fn h264_first_frame_is_idr_with_parameter_sets_and_keyframes_on_demand() {
        let mut enc = open(Codec::H264, settings(320, 240)).unwrap();
        // No encoder delay: the first call returns the first frame.
        let f0 = enc.encode(&picture(320, 240, 0), 0, false).unwrap().unwrap();
        assert!(f0.keyframe);
        let nal_types = h264::nal_types(&f0.data);
        assert!(nal_types.contains(&7) && nal_types.contains(&8) && nal_types.contains(&5), "{nal_types:?}");
        let f1 = enc.encode(&picture(320, 240, 50), 33, false).unwrap().unwrap();
        assert!(!f1.keyframe);
        assert!(!h264::nal_types(&f1.data).contains(&5));
        let f2 = enc.encode(&picture(320, 240, 90), 66, true).unwrap().unwrap();
        assert!(f2.keyframe);
        assert!(h264::nal_types(&f2.data).contains(&5));
        assert!(enc.encode(&picture(64, 64, 0), 99, false).is_err());
    }

    #[test]
    fn vp8_keyframes_on_demand() {
        let mut enc = open(Codec::Vp8, settings(320, 240)).unwrap();
        let f0 = enc.encode(&picture(320, 240, 0), 0, false).unwrap().unwrap();
        assert!(f0.keyframe);
        // VP8 keyframe: bit 0 of the first byte is 0, then the start code 9d 01 2a.
        assert_eq!(f0.data[0] & 1, 0);
        assert_eq!(&f0.data[3..6], &[0x9d, 0x01, 0x2a]);
        let f1 = enc.encode(&picture(320, 240, 50), 33, false).unwrap().unwrap();
        assert!(!f1.keyframe);
        assert_eq!(f1.data[0] & 1, 1);
        let f2 = enc.encode(&picture(320, 240, 90), 66, true).unwrap().unwrap();
        assert!(f2.keyframe);
    }

    #[test]
    fn bitrate_can_be_lowered_on_the_fly() {
        for codec in Codec::ALL {
            let mut enc = open(codec, settings(320, 240)).unwrap();
            // Faint noise: coded finely when bits allow, quantised away when they do not.
            let bytes_at = |enc: &mut Box<dyn VideoEncoder>, kbps: u32, start: i64| {
                enc.set_bitrate(kbps).unwrap();
                assert_eq!(enc.settings().bitrate_kbps, kbps);
                (0..30)
                    .map(|i| {
                        let pic = noise(320, 240, start as u32 + i as u32);
                        enc.encode(&pic, start + i * 33, false).unwrap().map_or(0, |f| f.data.len())
                    })
                    .sum::<usize>()
            };
            let high = bytes_at(&mut enc, 4000, 0);
            let low = bytes_at(&mut enc, 200, 2000);
            assert!(low * 3 < high, "{codec}: {low} bytes at 200 kbit/s vs {high} at 4000");
        }
    }

    /// Text-like content: dark strokes on white, one 8x12 "glyph" per cell, glyphs 0..n drawn.
    fn typed(w: u32, h: u32, n: u32) -> I420 {
        let mut fb = Framebuffer::new(w, h).unwrap();
        let px: Vec<u8> = (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let (cx, cy) = (x / 8, y / 12);
                let cell = cy * (w / 8) + cx;
                let ink = cell < n && ((x * 7 + y * 3 + cell).is_multiple_of(5) || x % 8 == 1);
                if ink {
                    [20, 20, 30, 255]
                } else {
                    [250, 250, 250, 255]
                }
            })
            .collect();
        fb.put(fb.full_rect(), &px).unwrap();
        let mut pic = I420::new(w, h);
        pic.convert_from(&fb, fb.full_rect()).unwrap();
        pic
    }

    fn with_rate(w: u32, h: u32, kbps: u32, rate: RateSettings) -> EncoderSettings {
        EncoderSettings { bitrate_kbps: kbps, rate, ..settings(w, h) }
    }

    /// Bytes of the P-frames of `frames` "typed" characters after a first frame.
    fn typing_bytes(rate: RateSettings, frames: u32) -> usize {
        let mut enc = open(Codec::H264, with_rate(320, 240, 6000, rate)).unwrap();
        enc.encode(&typed(320, 240, 40), 0, false).unwrap();
        (1..=frames)
            .map(|k| {
                enc.encode(&typed(320, 240, 40 + k), i64::from(k) * 33, false).unwrap().map_or(0, |f| f.data.len())
            })
            .sum()
    }

    #[test]
    fn h264_typing_costs_less_with_constant_quality_and_a_quantiser_floor() {
        let crf = typing_bytes(RateSettings::desktop(), 20);
        let cbr_floor = typing_bytes(RateSettings { mode: RateMode::Cbr, ..RateSettings::desktop() }, 20);
        let cbr_bare = typing_bytes(RateSettings::cbr(), 20);
        println!(
            "20 typed characters: CRF 23 {crf} B, CBR + QP floor 20 {cbr_floor} B, CBR without a floor {cbr_bare} B"
        );
        assert!(crf * 2 < cbr_bare, "CRF {crf} B vs bare CBR {cbr_bare} B");
        assert!(cbr_floor * 2 < cbr_bare, "CBR with the floor {cbr_floor} B vs without {cbr_bare} B");
    }

    fn tiles(w: u32, h: u32, rects: &[Rect]) -> TileMap {
        let mut t = TileMap::new(w, h);
        for r in rects {
            t.mark(*r);
        }
        t
    }

    #[test]
    fn h264_skips_what_the_damage_hint_says_did_not_change() {
        // Character 41 is typed into cell (0, 1), the rectangle (0, 12) 8x12.
        let glyph = tiles(320, 240, &[Rect::new(0, 12, 8, 12)]);
        let typed_with = |hint: Option<Option<&TileMap>>| {
            let mut enc = open(Codec::H264, with_rate(320, 240, 6000, RateSettings::desktop())).unwrap();
            enc.encode(&typed(320, 240, 40), 0, false).unwrap();
            if let Some(h) = hint {
                enc.hint_changed(h);
            }
            let size = enc.encode(&typed(320, 240, 41), 33, false).unwrap().unwrap().data.len();
            // Hints last one frame: the next, without one, codes character 42 in full.
            let next = enc.encode(&typed(320, 240, 42), 66, false).unwrap().unwrap().data.len();
            (size, next)
        };
        let (none, none_next) = typed_with(None);
        let (right, _) = typed_with(Some(Some(&glyph)));
        let (unknown, _) = typed_with(Some(None));
        let (wrong, wrong_next) = typed_with(Some(Some(&tiles(320, 240, &[Rect::new(300, 220, 8, 8)]))));
        let (other_grid, _) = typed_with(Some(Some(&tiles(320, 256, &[Rect::new(300, 220, 8, 8)]))));
        println!(
            "one character: no hint {none} B, the right hint {right} B, 'unknown' {unknown} B, a wrong hint {wrong} B"
        );
        // The right hint codes the character as fully as no hint does.
        assert!(right * 10 >= none * 9, "{right} B with the right hint vs {none} B without one");
        assert_eq!(unknown, none, "an unknown change is coded like no hint");
        assert_eq!(other_grid, none, "a map of another picture size counts as unknown");
        // A hint elsewhere leaves the character's macroblock skipped (that is how the hint is
        // used, and why the agent's hints must cover every change).
        assert!(wrong * 2 < none, "{wrong} B with a wrong hint vs {none} B without one");
        assert!(wrong_next > none_next, "the frame after the wrong hint carries both characters");
    }

    #[test]
    fn h264_hints_are_tiles_not_the_box_around_them() {
        // Two characters typed far apart (cells 0 and 799: top-left, bottom-right), and a
        // third change between them that the hint leaves out: the hint's two tiles are coded,
        // the box between them is not looked at.
        let (w, h) = (320, 240);
        let (first, last) = (Rect::new(0, 0, 8, 12), Rect::new(312, 228, 8, 12));
        let base = typed(w, h, 0);
        let mut next = base.clone();
        for r in [first, last, Rect::new(160, 120, 8, 12)] {
            let cell = typed(w, h, 800);
            for row in r.y..r.bottom() as u32 {
                let at = (row * w + r.x) as usize;
                next.y[at..at + r.width as usize].copy_from_slice(&cell.y[at..at + r.width as usize]);
            }
        }
        let coded = |hint: Option<&TileMap>| {
            let mut enc = open(Codec::H264, with_rate(w, h, 6000, RateSettings::desktop())).unwrap();
            enc.encode(&base, 0, false).unwrap();
            enc.hint_changed(hint);
            enc.encode(&next, 33, false).unwrap().unwrap().data.len()
        };
        let all = coded(None);
        let two = coded(Some(&tiles(w, h, &[first, last])));
        let boxed = coded(Some(&tiles(w, h, &[Rect::new(0, 0, w, h)])));
        let only_middle = coded(Some(&tiles(w, h, &[Rect::new(160, 120, 8, 12)])));
        println!(
            "three changes: no hint {all} B, the box {boxed} B, two tiles {two} B, the middle tile {only_middle} B"
        );
        assert_eq!(boxed, all, "a hint of every tile is no hint");
        assert!(two < all && only_middle < all, "the unhinted change is skipped");
        assert!(two > only_middle, "two characters cost more than one");
    }

    #[test]
    fn h264_topoff_only_after_frames_the_cap_made_coarse() {
        // Plenty of bits for a small picture: never coarse, no top-off wanted.
        let mut enc = open(Codec::H264, with_rate(320, 240, 6000, RateSettings::desktop())).unwrap();
        enc.encode(&typed(320, 240, 0), 0, false).unwrap();
        assert!(enc.wants_topoff(), "a keyframe is followed by one frame once still");
        for k in 1..5 {
            enc.encode(&typed(320, 240, 10 * k), i64::from(k) * 33, false).unwrap();
            assert!(!enc.wants_topoff(), "frame {k} at 6000 kbit/s");
        }
        // Motion far over a 150 kbit/s cap: coarse; one top-off of the still picture, finer.
        let mut enc = open(Codec::H264, with_rate(320, 240, 150, RateSettings::desktop())).unwrap();
        for k in 0..8 {
            enc.encode(&noise(320, 240, k), i64::from(k) * 33, false).unwrap();
        }
        assert!(enc.wants_topoff(), "noise at 150 kbit/s should come out coarse");
        let still = noise(320, 240, 7);
        let top = enc.encode_topoff(&still, 300).unwrap().expect("a top-off frame");
        assert!(!top.keyframe);
        assert!(!enc.wants_topoff(), "one top-off per still period");
        // VP8 never asks for one (CBR, refinement frames instead).
        let vp8 = open(Codec::Vp8, with_rate(320, 240, 150, RateSettings::desktop())).unwrap();
        assert!(!vp8.wants_topoff());
        // CBR never asks for one either.
        let mut cbr = open(Codec::H264, with_rate(320, 240, 150, RateSettings::cbr())).unwrap();
        for k in 0..4 {
            cbr.encode(&noise(320, 240, k), i64::from(k) * 33, false).unwrap();
        }
        assert!(!cbr.wants_topoff());
        assert_eq!(RateSettings::desktop().topoff_qp(), 20);
        assert_eq!(RateSettings { crf: 30.0, ..RateSettings::desktop() }.topoff_qp(), 27);
    }

    #[test]
    fn codec_names() {
        assert_eq!("H264".parse::<Codec>(), Ok(Codec::H264));
        assert_eq!("vp8".parse::<Codec>(), Ok(Codec::Vp8));
        assert!("mjpeg".parse::<Codec>().is_err());
    }
}
