//! Video encoders behind one small interface: an I420 picture in, one encoded frame out.
//!
//! Both encoders are configured for interactive desktop streaming: no B-frames, no lookahead,
//! constant bitrate with a small buffer, an endless GOP with keyframes only on demand
//! (a new viewer, a PLI/FIR, a dropped frame), and no frame of delay: each `encode` call
//! returns the frame it was given.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::framebuffer::I420;

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

/// Settings shared by all encoders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
    pub max_fps: u32,
    pub threads: u32,
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
        EncoderSettings { width: w, height: h, bitrate_kbps: 2000, max_fps: 30, threads: 1 }
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

    #[test]
    fn codec_names() {
        assert_eq!("H264".parse::<Codec>(), Ok(Codec::H264));
        assert_eq!("vp8".parse::<Codec>(), Ok(Codec::Vp8));
        assert!("mjpeg".parse::<Codec>().is_err());
    }
}
