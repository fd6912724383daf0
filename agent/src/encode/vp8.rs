//! VP8 through libvpx (`env-libvpx-sys`, Debian's libvpx).
//!
//! Settings: realtime deadline, `cpu-used` 10, screen-content mode, CBR with no lag,
//! error-resilient partitions, keyframes only on request, quantiser 4–63 and keyframes capped
//! at three frames' budget (`VP8E_SET_MAX_INTRA_BITRATE_PCT` 300, what libwebrtc derives for this
//! 200 ms buffer at 30 fps). libvpx does not drop frames here (`rc_dropframe_thresh` 0): a
//! frame it cannot fit in the rate even at quantiser 63 is sent whole, and the pacer's bitrate
//! budget then holds the next ones back (`loco_shared::pacer`). At 300 kbit/s, a 1024x768
//! screen of scrolling random hex cost ~65 kB a frame at quantiser 63 (~100 kB at the 56 used
//! before).

use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr;

use bytes::Bytes;
use vpx_sys as vpx;

use super::{check_size, Codec, EncodeError, EncodedFrame, EncoderSettings, VideoEncoder};
use crate::framebuffer::I420;

/// An open libvpx VP8 encoder.
pub struct Vp8Encoder {
    settings: EncoderSettings,
    ctx: Box<vpx::vpx_codec_ctx_t>,
    cfg: vpx::vpx_codec_enc_cfg_t,
}

// SAFETY: the codec context is used from one thread at a time (`&mut self` methods only).
unsafe impl Send for Vp8Encoder {}

fn open_error(settings: &EncoderSettings, reason: String) -> EncodeError {
    EncodeError::Open { codec: Codec::Vp8, width: settings.width, height: settings.height, reason }
}

impl Vp8Encoder {
    pub fn open(settings: EncoderSettings) -> Result<Self, EncodeError> {
        // SAFETY: plain libvpx configuration calls on structs they initialise; the context is
        // boxed so its address stays fixed for libvpx.
        unsafe {
            let iface = vpx::vpx_codec_vp8_cx();
            let mut cfg = MaybeUninit::<vpx::vpx_codec_enc_cfg_t>::zeroed();
            let err = vpx::vpx_codec_enc_config_default(iface, cfg.as_mut_ptr(), 0);
            if err != vpx::VPX_CODEC_OK {
                return Err(open_error(&settings, format!("vpx_codec_enc_config_default: {err:?}")));
            }
            let mut cfg = cfg.assume_init();
            cfg.g_w = settings.width;
            cfg.g_h = settings.height;
            cfg.g_threads = settings.threads.max(1);
            cfg.g_timebase = vpx::vpx_rational { num: 1, den: 1000 };
            cfg.g_lag_in_frames = 0;
            cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
            cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
            cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
            cfg.rc_target_bitrate = settings.bitrate_kbps;
            cfg.rc_min_quantizer = 4;
            cfg.rc_max_quantizer = 63;
            cfg.rc_undershoot_pct = 100;
            cfg.rc_overshoot_pct = 15;
            cfg.rc_buf_initial_sz = 200;
            cfg.rc_buf_optimal_sz = 200;
            cfg.rc_buf_sz = 250;
            cfg.rc_dropframe_thresh = 0;
            cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_DISABLED;
            cfg.kf_max_dist = u32::MAX >> 2;

            let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(MaybeUninit::zeroed().assume_init());
            let err = vpx::vpx_codec_enc_init_ver(&mut *ctx, iface, &cfg, 0, vpx::VPX_ENCODER_ABI_VERSION as c_int);
            if err != vpx::VPX_CODEC_OK {
                return Err(open_error(&settings, format!("vpx_codec_enc_init: {err:?}")));
            }
            for (ctrl, value) in [
                (vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int, 10 as c_int),
                (vpx::vp8e_enc_control_id::VP8E_SET_SCREEN_CONTENT_MODE as c_int, 1),
                (vpx::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY as c_int, 0),
                (vpx::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD as c_int, 1),
                (vpx::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT as c_int, 300),
            ] {
                let err = vpx::vpx_codec_control_(&mut *ctx, ctrl, value);
                if err != vpx::VPX_CODEC_OK {
                    vpx::vpx_codec_destroy(&mut *ctx);
                    return Err(open_error(&settings, format!("vpx_codec_control({ctrl}): {err:?}")));
                }
            }
            Ok(Self { settings, ctx, cfg })
        }
    }
}

impl VideoEncoder for Vp8Encoder {
    fn settings(&self) -> &EncoderSettings {
        &self.settings
    }

    fn encode(&mut self, picture: &I420, pts_ms: i64, keyframe: bool) -> Result<Option<EncodedFrame>, EncodeError> {
        check_size(&self.settings, picture)?;
        // SAFETY: the image describes planes that live for the duration of the call (libvpx
        // only reads them); packets returned by get_cx_data stay valid until the next
        // encode call, and we copy them out before returning.
        unsafe {
            let mut img = MaybeUninit::<vpx::vpx_image_t>::zeroed().assume_init();
            img.fmt = vpx::vpx_img_fmt::VPX_IMG_FMT_I420;
            img.cs = vpx::vpx_color_space::VPX_CS_BT_601;
            img.range = vpx::vpx_color_range::VPX_CR_STUDIO_RANGE;
            img.w = picture.width;
            img.h = picture.height;
            img.d_w = picture.width;
            img.d_h = picture.height;
            img.bit_depth = 8;
            img.x_chroma_shift = 1;
            img.y_chroma_shift = 1;
            img.bps = 12;
            img.planes[0] = picture.y.as_ptr() as *mut u8;
            img.planes[1] = picture.u.as_ptr() as *mut u8;
            img.planes[2] = picture.v.as_ptr() as *mut u8;
            img.stride[0] = picture.y_stride() as c_int;
            img.stride[1] = picture.chroma_stride() as c_int;
            img.stride[2] = picture.chroma_stride() as c_int;
            let flags = if keyframe { vpx::VPX_EFLAG_FORCE_KF as i64 } else { 0 };
            let err = vpx::vpx_codec_encode(&mut *self.ctx, &img, pts_ms, 1, flags, vpx::VPX_DL_REALTIME as _);
            if err != vpx::VPX_CODEC_OK {
                return Err(EncodeError::Encode { codec: Codec::Vp8, reason: format!("vpx_codec_encode: {err:?}") });
            }
            let mut iter: vpx::vpx_codec_iter_t = ptr::null();
            let mut out: Option<EncodedFrame> = None;
            loop {
                let pkt = vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let frame = (*pkt).data.frame;
                let data = std::slice::from_raw_parts(frame.buf as *const u8, frame.sz as usize);
                let is_key = frame.flags & vpx::VPX_FRAME_IS_KEY != 0;
                out = Some(match out {
                    // With partitions off there is one packet per frame; join defensively.
                    Some(prev) => {
                        let mut joined = prev.data.to_vec();
                        joined.extend_from_slice(data);
                        EncodedFrame { data: Bytes::from(joined), keyframe: prev.keyframe || is_key }
                    }
                    None => EncodedFrame { data: Bytes::copy_from_slice(data), keyframe: is_key },
                });
            }
            Ok(out)
        }
    }

    fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncodeError> {
        self.cfg.rc_target_bitrate = kbps;
        // SAFETY: the context is open; libvpx copies the configuration it is given.
        let err = unsafe { vpx::vpx_codec_enc_config_set(&mut *self.ctx, &self.cfg) };
        if err != vpx::VPX_CODEC_OK {
            return Err(EncodeError::Encode {
                codec: Codec::Vp8,
                reason: format!("vpx_codec_enc_config_set: {err:?}"),
            });
        }
        self.settings.bitrate_kbps = kbps;
        Ok(())
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `open` and is destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}
