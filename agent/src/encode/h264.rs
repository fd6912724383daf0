//! H.264 through libx264 (`x264-sys`, Debian's libx264).
//!
//! Settings: preset `ultrafast`, tune `zerolatency` (no lookahead, no B-frames, no frame
//! threading delay), constrained baseline profile (`42e01f`, what every WebRTC stack decodes),
//! rate control per [`super::RateSettings`] — CRF (the default) or ABR — either way under a VBV
//! cap at the target rate with a quarter second's buffer and the QP floor (by default 20 with CRF,
//! none with ABR; no NAL-HRD, no filler); with CRF an uneven-multi-hexagon motion search over ±64 pixels
//! (ultrafast's diamond over ±16 cannot follow a scrolled page), an endless GOP with IDR frames
//! only on request, Annex-B output with SPS/PPS repeated before every IDR, and BT.601
//! limited-range colour signalled in the VUI. Zero frames of encoder delay.
//!
//! Top-off: x264 reports each frame's average quantiser; a frame coarser than the top-off
//! quantiser ([`super::RateSettings::topoff_qp`]) by more than [`COARSE_BY`] (the VBV cap held
//! it back) leaves `wants_topoff` set, and `encode_topoff` re-codes the still picture once at
//! that forced, finer quantiser. A keyframe leaves it set too (see `encode_with`).
//!
//! Damage hints: with what changed since the last frame ([`VideoEncoder::hint_changed`], the
//! 16×16 tiles the VNC damage touched), every macroblock outside those tiles is marked
//! constant (`mb_info`, `X264_MBINFO_CONSTANT`) and x264 codes it as skipped without analysing
//! it. Hints add up until a frame comes out; none (unknown), a keyframe or a top-off marks
//! nothing.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr;

use bytes::Bytes;
use x264_sys as x;

use super::{check_size, Codec, EncodeError, EncodedFrame, EncoderSettings, RateMode, VideoEncoder};
use crate::framebuffer::I420;
use loco_shared::geom::TileMap;

/// A frame whose average quantiser is this much above the top-off's was held back by the cap
/// (nearly still frames sit at the floor; capped motion goes far above it).
pub const COARSE_BY: i64 = 2;

/// An open libx264 encoder.
pub struct X264Encoder {
    settings: EncoderSettings,
    handle: *mut x::x264_t,
    /// The last frame came out coarser than the CRF asks, or was a keyframe (CRF mode only).
    coarse: bool,
    /// What the hints since the last frame out say changed.
    hint: Hint,
    /// With [`Hint::Within`]: the union of the hints' tiles (the macroblock grid).
    changed: TileMap,
    /// One byte per macroblock for x264 (`mb_info`), rewritten for every hinted frame.
    mb_info: Vec<u8>,
}

/// What the damage hints since the last frame out say ([`VideoEncoder::hint_changed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// No hint yet: x264 is told nothing.
    None,
    /// Nothing changed outside the tiles marked in `changed` (none: nothing changed).
    Within,
    /// A hint said the change is unknown: x264 is told nothing.
    Unknown,
}

// SAFETY: the x264 handle is used from one thread at a time (`&mut self` methods only);
// libx264 encoder handles are not tied to the thread that opened them.
unsafe impl Send for X264Encoder {}

fn open_error(settings: &EncoderSettings, reason: &str) -> EncodeError {
    EncodeError::Open { codec: Codec::H264, width: settings.width, height: settings.height, reason: reason.into() }
}

impl X264Encoder {
    pub fn open(settings: EncoderSettings) -> Result<Self, EncodeError> {
        let preset = CString::new("ultrafast").map_err(|_| open_error(&settings, "preset"))?;
        let tune = CString::new("zerolatency").map_err(|_| open_error(&settings, "tune"))?;
        let profile = CString::new("baseline").map_err(|_| open_error(&settings, "profile"))?;
        let mut param = MaybeUninit::<x::x264_param_t>::zeroed();
        // SAFETY: x264_param_default_preset fully initialises the struct it is given.
        let mut p = unsafe {
            if x::x264_param_default_preset(param.as_mut_ptr(), preset.as_ptr(), tune.as_ptr()) != 0 {
                return Err(open_error(&settings, "x264_param_default_preset failed"));
            }
            param.assume_init()
        };
        p.i_width = settings.width as c_int;
        p.i_height = settings.height as c_int;
        p.i_csp = x::X264_CSP_I420 as c_int;
        p.i_threads = settings.threads.max(1) as c_int;
        p.b_sliced_threads = 1;
        p.i_log_level = x::X264_LOG_WARNING as c_int;
        p.i_bframe = 0;
        p.i_keyint_max = x::X264_KEYINT_MAX_INFINITE as c_int;
        p.i_keyint_min = 1;
        p.b_intra_refresh = 0;
        p.b_repeat_headers = 1;
        p.b_annexb = 1;
        p.b_aud = 0;
        // Constant-rate input as far as x264 knows: VFR mode would hold every frame back by
        // one to learn its duration. Rate control thus budgets bitrate/max_fps per frame, and
        // a screen that changes less often simply uses less.
        p.b_vfr_input = 0;
        p.i_timebase_num = 1;
        p.i_timebase_den = 1000;
        p.i_fps_num = settings.max_fps.max(1);
        p.i_fps_den = 1;
        p.rc.i_rc_method = match settings.rate.mode {
            RateMode::Crf => x::X264_RC_CRF,
            RateMode::Cbr => x::X264_RC_ABR,
        } as c_int;
        p.rc.f_rf_constant = settings.rate.crf.clamp(0.0, 51.0);
        p.rc.i_qp_min = settings.rate.qp_min.min(51) as c_int;
        p.i_nal_hrd = x::X264_NAL_HRD_NONE as c_int;
        p.rc.b_filler = 0;
        p.analyse.b_mb_info = 1;
        if settings.rate.mode == RateMode::Crf {
            p.analyse.i_me_method = x::X264_ME_UMH as c_int;
            p.analyse.i_me_range = 64;
        }
        set_rate(&mut p, settings.bitrate_kbps);
        p.rc.i_lookahead = 0;
        p.rc.b_mb_tree = 0;
        p.i_sync_lookahead = 0;
        // BT.601 limited range, matching the colour conversion and what VP8 receivers assume.
        p.vui.i_colorprim = 6;
        p.vui.i_transfer = 6;
        p.vui.i_colmatrix = 6;
        p.vui.b_fullrange = 0;
        // SAFETY: `p` is an initialised parameter set; the profile string outlives the call.
        let handle = unsafe {
            if x::x264_param_apply_profile(&mut p, profile.as_ptr()) != 0 {
                return Err(open_error(&settings, "x264_param_apply_profile(baseline) failed"));
            }
            x::x264_encoder_open(&mut p)
        };
        if handle.is_null() {
            return Err(open_error(&settings, "x264_encoder_open returned NULL"));
        }
        let mbs = settings.width.div_ceil(16) as usize * settings.height.div_ceil(16) as usize;
        let changed = TileMap::new(settings.width, settings.height);
        debug_assert_eq!(changed.marked().len(), mbs);
        Ok(Self { settings, handle, coarse: false, hint: Hint::None, changed, mb_info: vec![0; mbs] })
    }
}

impl VideoEncoder for X264Encoder {
    fn settings(&self) -> &EncoderSettings {
        &self.settings
    }

    fn encode(&mut self, picture: &I420, pts_ms: i64, keyframe: bool) -> Result<Option<EncodedFrame>, EncodeError> {
        self.encode_with(picture, pts_ms, keyframe, None)
    }

    fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncodeError> {
        self.reconfigure(kbps)
    }

    fn wants_topoff(&self) -> bool {
        self.coarse
    }

    fn hint_changed(&mut self, changed: Option<&TileMap>) {
        if self.hint == Hint::None {
            self.changed.clear();
        }
        self.hint = match (self.hint, changed) {
            (Hint::None | Hint::Within, Some(tiles)) if self.changed.union_with(tiles) => Hint::Within,
            _ => Hint::Unknown,
        };
    }

    fn encode_topoff(&mut self, picture: &I420, pts_ms: i64) -> Result<Option<EncodedFrame>, EncodeError> {
        let qp = self.settings.rate.topoff_qp();
        let out = self.encode_with(picture, pts_ms, false, Some(qp));
        self.coarse = false;
        out
    }
}

impl X264Encoder {
    fn encode_with(
        &mut self,
        picture: &I420,
        pts_ms: i64,
        keyframe: bool,
        force_qp: Option<u32>,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        check_size(&self.settings, picture)?;
        // Macroblocks outside what changed are constant, for a plain delta frame only.
        let hinted = self.hint == Hint::Within && !keyframe && force_qp.is_none();
        if hinted {
            for (info, changed) in self.mb_info.iter_mut().zip(self.changed.marked()) {
                *info = if *changed { 0 } else { x::X264_MBINFO_CONSTANT as u8 };
            }
        }
        let mut pic = MaybeUninit::<x::x264_picture_t>::zeroed();
        let mut out = MaybeUninit::<x::x264_picture_t>::zeroed();
        let mut nals: *mut x::x264_nal_t = ptr::null_mut();
        let mut nal_count: c_int = 0;
        // SAFETY: the picture points at planes that live for the duration of the call and
        // have the strides given; x264 only reads them. The NAL array it returns stays valid
        // until the next call on this handle, and we copy the payload out before returning.
        let (size, out) = unsafe {
            x::x264_picture_init(pic.as_mut_ptr());
            let mut pic = pic.assume_init();
            pic.img.i_csp = x::X264_CSP_I420 as c_int;
            pic.img.i_plane = 3;
            pic.img.plane[0] = picture.y.as_ptr() as *mut u8;
            pic.img.plane[1] = picture.u.as_ptr() as *mut u8;
            pic.img.plane[2] = picture.v.as_ptr() as *mut u8;
            pic.img.i_stride[0] = picture.y_stride() as c_int;
            pic.img.i_stride[1] = picture.chroma_stride() as c_int;
            pic.img.i_stride[2] = picture.chroma_stride() as c_int;
            pic.i_pts = pts_ms;
            pic.i_type = if keyframe { x::X264_TYPE_IDR as c_int } else { 0 };
            pic.i_qpplus1 = force_qp.map_or(0, |q| q as c_int + 1);
            // x264 reads the array during this call (no frame of delay, no frame threads) and
            // does not free it (no callback): it stays ours.
            if hinted {
                pic.prop.mb_info = self.mb_info.as_mut_ptr();
                pic.prop.mb_info_free = None;
            }
            let size = x::x264_encoder_encode(self.handle, &mut nals, &mut nal_count, &mut pic, out.as_mut_ptr());
            (size, out.assume_init())
        };
        if size < 0 {
            return Err(EncodeError::Encode {
                codec: Codec::H264,
                reason: format!("x264_encoder_encode returned {size}"),
            });
        }
        if size == 0 || nals.is_null() || nal_count <= 0 {
            return Ok(None);
        }
        // A frame came out: what changes next is relative to it.
        self.hint = Hint::None;
        // SAFETY: x264 guarantees the payloads of one call's NALs are contiguous, starting at
        // the first NAL's payload, `size` bytes in all.
        let data = unsafe { std::slice::from_raw_parts((*nals).p_payload, size as usize) };
        if self.settings.rate.mode == RateMode::Crf {
            // x264 returns the frame's average quantiser (+1) in the output picture. A keyframe
            // is also followed by one frame once the screen is still: receivers that close a
            // frame only when the next one starts (aiortc) would otherwise hold a new viewer's
            // only frame of an idle desktop; at the floor it is a near-empty P-frame.
            let qp = i64::from(out.i_qpplus1) - 1;
            self.coarse = qp > i64::from(self.settings.rate.topoff_qp()) + COARSE_BY || out.b_keyframe != 0;
        }
        Ok(Some(EncodedFrame { data: Bytes::copy_from_slice(data), keyframe: out.b_keyframe != 0 }))
    }

    fn reconfigure(&mut self, kbps: u32) -> Result<(), EncodeError> {
        let mut param = MaybeUninit::<x::x264_param_t>::zeroed();
        // SAFETY: x264_encoder_parameters fills the struct from the open handle; reconfig reads
        // it back (only rate-control fields changed, which x264 allows to change).
        let rc = unsafe {
            x::x264_encoder_parameters(self.handle, param.as_mut_ptr());
            let mut p = param.assume_init();
            set_rate(&mut p, kbps);
            x::x264_encoder_reconfig(self.handle, &mut p)
        };
        if rc < 0 {
            return Err(EncodeError::Encode {
                codec: Codec::H264,
                reason: format!("x264_encoder_reconfig returned {rc}"),
            });
        }
        self.settings.bitrate_kbps = kbps;
        Ok(())
    }
}

fn set_rate(p: &mut x::x264_param_t, kbps: u32) {
    p.rc.i_bitrate = kbps as c_int;
    p.rc.i_vbv_max_bitrate = kbps as c_int;
    p.rc.i_vbv_buffer_size = (kbps / 4).max(100) as c_int;
}

impl Drop for X264Encoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from x264_encoder_open and is closed once.
        unsafe { x::x264_encoder_close(self.handle) };
    }
}

/// The NAL unit types in an Annex-B byte stream.
#[cfg(test)]
pub fn nal_types(annexb: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut i = 0;
    while i + 3 < annexb.len() {
        if annexb[i] == 0 && annexb[i + 1] == 0 && annexb[i + 2] == 1 {
            types.push(annexb[i + 3] & 0x1f);
            i += 3;
        } else {
            i += 1;
        }
    }
    types
}
