//! `loco-codec-bench`: the agent's own encoders (`encode/`, `framebuffer.rs`, the shared frame
//! pacer) run over a recorded VNC session, plus MJPEG (libturbojpeg) for comparison.
//! `benchmark/bench.py` drives it; see benchmark/README.md.
//!
//! ```text
//! loco-codec-bench --workload typing.rec --out-dir DIR [--codecs h264,vp8,mjpeg]
//!                  [--bitrate-kbps 6000] [--max-fps 30] [--mjpeg-quality 80]
//!                  [--no-damage-hints]
//! ```
//!
//! What happens, as in the agent: the recorded VNC updates are applied to a [`Framebuffer`] at
//! their recorded times; the agent's [`FramePacer`] (damage-driven, 30 fps cap, refinement
//! frames, a keyframe for the viewer that joins at the start) decides in simulated time when a
//! frame is encoded; the encoder thread converts the 16×16 tiles the damage touched to I420
//! ([`I420::convert_tiles`]), tells the encoder what changed (`hint_changed`; not with
//! `--no-damage-hints`) and encodes. The CPU time of conversion + encoding is measured per
//! frame with the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`; encoders run with one thread,
//! the agent's default), cross-checked with `getrusage(RUSAGE_THREAD)` over the whole run.
//!
//! Output: one JSON object on stdout, and in `--out-dir`:
//! * `ref.yuv`: the I420 picture of every encoded frame, in order (the source the decoded
//!   frames are compared against; the same for every codec, as the pacer's schedule is);
//! * `<codec>.pkt`: every encoded frame as a little-endian `u32` length and the bytes (length
//!   0: the encoder output nothing for that picture).
//!
//! # Recording format (`.rec`, written by `benchmark/recorder.py`), little-endian
//! ```text
//! header  b"LOCOREC1", u32 width, u32 height, u64 duration_us
//! update  u64 t_us (since the start), u32 rect count, then per rectangle
//!         u16 x, u16 y, u16 w, u16 h and w*h*4 bytes of BGRA pixels (row-major)
//! ```
//! The first update (t = 0) covers the whole screen.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::raw::{c_int, c_uchar, c_ulong};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use loco_shared::geom::{Damage, TileMap};
use loco_shared::pacer::{FramePacer, PacerConfig, PacerDecision};
use loco_shared::Rect;
use serde_json::json;

#[allow(dead_code)]
#[path = "../framebuffer.rs"]
mod framebuffer;

#[allow(dead_code)]
#[path = "../encode/mod.rs"]
mod encode;

use encode::{Codec, EncodeError, EncodedFrame, EncoderSettings, RateSettings, VideoEncoder};
use framebuffer::{Framebuffer, I420};

const MAGIC: &[u8; 8] = b"LOCOREC1";

/// One VNC framebuffer update: when it arrived and its rectangles.
struct Update {
    t: Duration,
    rects: Vec<(Rect, Vec<u8>)>,
}

struct Recording {
    width: u32,
    height: u32,
    duration: Duration,
    updates: Vec<Update>,
}

fn read_exact<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

impl Recording {
    fn read(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        if &read_exact::<8>(&mut r)? != MAGIC {
            bail!("{} is not a loco recording (no LOCOREC1 header)", path.display());
        }
        let width = u32::from_le_bytes(read_exact(&mut r)?);
        let height = u32::from_le_bytes(read_exact(&mut r)?);
        let duration = Duration::from_micros(u64::from_le_bytes(read_exact(&mut r)?));
        let mut updates = Vec::new();
        loop {
            let t = match read_exact::<8>(&mut r) {
                Ok(b) => Duration::from_micros(u64::from_le_bytes(b)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            };
            let n = u32::from_le_bytes(read_exact(&mut r)?);
            let mut rects = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let x = u16::from_le_bytes(read_exact(&mut r)?);
                let y = u16::from_le_bytes(read_exact(&mut r)?);
                let w = u16::from_le_bytes(read_exact(&mut r)?);
                let h = u16::from_le_bytes(read_exact(&mut r)?);
                let rect = Rect::new(x.into(), y.into(), w.into(), h.into());
                if !rect.fits_in(width, height) {
                    bail!("rectangle {rect:?} outside the {width}x{height} recording");
                }
                let mut px = vec![0u8; usize::from(w) * usize::from(h) * 4];
                r.read_exact(&mut px).context("truncated rectangle")?;
                rects.push((rect, px));
            }
            updates.push(Update { t, rects });
        }
        match updates.first() {
            None => bail!("{}: no updates", path.display()),
            Some(u) if u.t != Duration::ZERO => bail!("{}: first update is not at t=0", path.display()),
            _ => {}
        }
        if updates.windows(2).any(|w| w[1].t < w[0].t) {
            bail!("{}: update times go backwards", path.display());
        }
        Ok(Self { width, height, duration, updates })
    }
}

/// One frame the agent would encode: at `at`, with the updates before `upto` applied.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Encode {
    at: Duration,
    keyframe: bool,
    /// No damage since the last encode: a refinement of the still screen.
    refinement: bool,
    upto: usize,
}

/// When the agent's pacer encodes, for updates arriving at `times` (a viewer joins at 0).
fn schedule(times: &[Duration], end: Duration, max_fps: u32) -> Vec<Encode> {
    let mut pacer = FramePacer::new(PacerConfig { max_fps, ..PacerConfig::default() });
    pacer.on_keyframe_request(Duration::ZERO);
    let mut out = Vec::new();
    let (mut now, mut i) = (Duration::ZERO, 0);
    loop {
        while i < times.len() && times[i] <= now {
            pacer.on_damage(times[i]);
            i += 1;
        }
        let next_update = times.get(i).copied();
        let next = match pacer.poll(now) {
            PacerDecision::Encode { keyframe, damaged_since } => {
                out.push(Encode { at: now, keyframe, refinement: damaged_since.is_none() && !keyframe, upto: i });
                continue;
            }
            PacerDecision::WaitUntil(t) => Some(next_update.map_or(t, |u| u.min(t))),
            PacerDecision::Idle => next_update,
        };
        match next {
            Some(t) if t <= end => now = t.max(now),
            _ => break,
        }
    }
    out
}

/// MJPEG for comparison: every frame a baseline JPEG (4:2:0) of the same I420 picture, with
/// libturbojpeg (Debian's libturbojpeg0, TurboJPEG 2 API). No rate control: `quality` fixes it.
struct MjpegEncoder {
    settings: EncoderSettings,
    quality: c_int,
    handle: turbojpeg::raw::tjhandle,
    buf: Vec<u8>,
}

// SAFETY: the handle is used from one thread at a time (`&mut self` methods only).
unsafe impl Send for MjpegEncoder {}

impl MjpegEncoder {
    fn open(settings: EncoderSettings, quality: u32) -> Result<Self> {
        // SAFETY: plain constructor; checked for NULL.
        let handle = unsafe { turbojpeg::raw::tjInitCompress() };
        if handle.is_null() {
            bail!("tjInitCompress failed");
        }
        // SAFETY: pure size computation.
        let max = unsafe {
            turbojpeg::raw::tjBufSize(
                settings.width as c_int,
                settings.height as c_int,
                turbojpeg::raw::TJSAMP_TJSAMP_420 as c_int,
            )
        };
        Ok(Self { settings, quality: quality.clamp(1, 100) as c_int, handle, buf: vec![0; max as usize] })
    }
}

impl VideoEncoder for MjpegEncoder {
    fn settings(&self) -> &EncoderSettings {
        &self.settings
    }

    /// MJPEG has no rate control: every frame is coded at the fixed quality.
    fn set_bitrate(&mut self, kbps: u32) -> Result<(), EncodeError> {
        self.settings.bitrate_kbps = kbps;
        Ok(())
    }

    fn encode(&mut self, picture: &I420, _pts_ms: i64, _keyframe: bool) -> Result<Option<EncodedFrame>, EncodeError> {
        let mut planes: [*const c_uchar; 3] = [picture.y.as_ptr(), picture.u.as_ptr(), picture.v.as_ptr()];
        let strides: [c_int; 3] =
            [picture.y_stride() as c_int, picture.chroma_stride() as c_int, picture.chroma_stride() as c_int];
        let mut out = self.buf.as_mut_ptr();
        let mut size = self.buf.len() as c_ulong;
        // SAFETY: the planes live for the call and have the strides given; the output buffer
        // is tjBufSize() bytes and NOREALLOC keeps turbojpeg from replacing it.
        let rc = unsafe {
            turbojpeg::raw::tjCompressFromYUVPlanes(
                self.handle,
                planes.as_mut_ptr(),
                picture.width as c_int,
                strides.as_ptr(),
                picture.height as c_int,
                turbojpeg::raw::TJSAMP_TJSAMP_420 as c_int,
                &mut out,
                &mut size,
                self.quality,
                (turbojpeg::raw::TJFLAG_NOREALLOC | turbojpeg::raw::TJFLAG_FASTDCT) as c_int,
            )
        };
        if rc != 0 {
            // SAFETY: the handle is valid; the string is owned by turbojpeg.
            let reason = unsafe { std::ffi::CStr::from_ptr(turbojpeg::raw::tjGetErrorStr2(self.handle)) };
            return Err(EncodeError::Encode {
                codec: Codec::H264,
                reason: format!("mjpeg: {}", reason.to_string_lossy()),
            });
        }
        Ok(Some(EncodedFrame { data: Bytes::copy_from_slice(&self.buf[..size as usize]), keyframe: true }))
    }
}

impl Drop for MjpegEncoder {
    fn drop(&mut self) {
        // SAFETY: created by tjInitCompress, destroyed once.
        unsafe { turbojpeg::raw::tjDestroy(self.handle) };
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn rusage_thread() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Args {
    workload: PathBuf,
    out_dir: PathBuf,
    codecs: Vec<String>,
    bitrate_kbps: u32,
    max_fps: u32,
    mjpeg_quality: u32,
    /// Do not tell the encoder what changed (the agent does): for comparisons.
    no_damage_hints: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        workload: PathBuf::new(),
        out_dir: PathBuf::new(),
        codecs: vec!["h264".into(), "vp8".into(), "mjpeg".into()],
        bitrate_kbps: 6000,
        max_fps: 30,
        mjpeg_quality: 80,
        no_damage_hints: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workload" => a.workload = val()?.into(),
            "--out-dir" => a.out_dir = val()?.into(),
            "--codecs" => a.codecs = val()?.split(',').map(str::to_owned).collect(),
            "--bitrate-kbps" => a.bitrate_kbps = val()?.parse()?,
            "--max-fps" => a.max_fps = val()?.parse()?,
            "--mjpeg-quality" => a.mjpeg_quality = val()?.parse()?,
            "--no-damage-hints" => a.no_damage_hints = true,
            "-h" | "--help" => {
                println!(
                    "loco-codec-bench --workload FILE.rec --out-dir DIR [--codecs h264,vp8,mjpeg] \
                     [--bitrate-kbps 6000] [--max-fps 30] [--mjpeg-quality 80] [--no-damage-hints]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if a.workload.as_os_str().is_empty() || a.out_dir.as_os_str().is_empty() {
        bail!("--workload and --out-dir are required (see --help)");
    }
    Ok(a)
}

fn open_encoder(codec: &str, settings: EncoderSettings, mjpeg_quality: u32) -> Result<Box<dyn VideoEncoder>> {
    Ok(match codec {
        "mjpeg" => Box::new(MjpegEncoder::open(settings, mjpeg_quality)?),
        other => encode::open(other.parse::<Codec>().map_err(anyhow::Error::msg)?, settings)?,
    })
}

/// Runs one codec over the schedule; writes its packets (and `ref.yuv` when asked).
fn run_codec(
    rec: &Recording,
    plan: &[Encode],
    codec: &str,
    args: &Args,
    write_ref: Option<&Path>,
) -> Result<serde_json::Value> {
    let mut fb = Framebuffer::new(rec.width, rec.height)?;
    let mut picture = I420::new(rec.width, rec.height);
    let settings = EncoderSettings {
        width: picture.width,
        height: picture.height,
        bitrate_kbps: args.bitrate_kbps,
        max_fps: args.max_fps,
        threads: 1,
        rate: RateSettings::default(),
    };
    let mut enc = open_encoder(codec, settings, args.mjpeg_quality)?;
    let mut pkt = BufWriter::new(File::create(args.out_dir.join(format!("{codec}.pkt")))?);
    let mut refw = write_ref.map(File::create).transpose()?.map(BufWriter::new);
    let (mut applied, mut last_pts) = (0usize, -1i64);
    let mut damage = Damage::default();
    let mut tiles = TileMap::new(fb.width(), fb.height());
    let mut cpu_ms: Vec<f64> = Vec::with_capacity(plan.len());
    let (mut bytes, mut frames, mut keyframes, mut empty) = (0u64, 0u64, 0u64, 0u64);
    let mut keyframe_bytes: Option<usize> = None;
    let mut keyframe_sizes: Vec<usize> = Vec::new();
    let ru0 = rusage_thread();
    let mut first = true;
    let topoff_mode = codec.parse::<Codec>().is_ok_and(|c| settings.rate.tops_off(c));
    let mut topoff_taken = false;
    for ev in plan {
        // The VNC task's work (not the encoder's): apply the updates that arrived.
        for u in &rec.updates[applied..ev.upto] {
            for (rect, px) in &u.rects {
                fb.put(*rect, px)?;
                damage.add(*rect);
            }
        }
        applied = ev.upto;
        if first {
            damage.add(fb.full_rect());
            first = false;
        }
        let pts = (ev.at.as_millis() as i64).max(last_pts + 1);
        last_pts = pts;
        // The encoder thread's work: convert what changed, encode.
        let c0 = thread_cpu();
        tiles.clear();
        if let Some(changed) = damage.take() {
            tiles.mark_damage(&changed);
            picture.convert_tiles(&fb, &tiles)?;
        }
        // What changed since the last frame, as the pipeline tells the encoder.
        if !args.no_damage_hints {
            enc.hint_changed(encode::damage_hint(&tiles, ev.refinement));
        }
        // As the agent's pipeline does under constant quality (H.264 CRF, its default): of the
        // refinement slots after motion, only the first may carry a frame, a top-off at a finer
        // quantiser, and only if the encoder says the last frame was coarse (the pacer's own
        // single slot comes 0.5 s into stillness rather than at the first of these slots).
        let out = if topoff_mode && ev.refinement {
            let now = !topoff_taken && enc.wants_topoff();
            topoff_taken = true;
            if now {
                enc.encode_topoff(&picture, pts)?
            } else {
                None
            }
        } else {
            topoff_taken = false;
            enc.encode(&picture, pts, ev.keyframe)?
        };
        let c1 = thread_cpu();
        cpu_ms.push((c1 - c0).as_secs_f64() * 1000.0);
        if let Some(w) = refw.as_mut() {
            w.write_all(&picture.y)?;
            w.write_all(&picture.u)?;
            w.write_all(&picture.v)?;
        }
        match out {
            Some(f) => {
                pkt.write_all(&(f.data.len() as u32).to_le_bytes())?;
                pkt.write_all(&f.data)?;
                bytes += f.data.len() as u64;
                frames += 1;
                if f.keyframe {
                    keyframes += 1;
                    keyframe_sizes.push(f.data.len());
                    keyframe_bytes.get_or_insert(f.data.len());
                }
            }
            None => {
                pkt.write_all(&0u32.to_le_bytes())?;
                empty += 1;
            }
        }
    }
    let ru_cpu = rusage_thread() - ru0;
    pkt.flush()?;
    if let Some(mut w) = refw {
        w.flush()?;
    }
    let cpu_s: f64 = cpu_ms.iter().sum::<f64>() / 1000.0;
    let mut sorted = cpu_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    let duration_s = rec.duration.as_secs_f64();
    let n = cpu_ms.len().max(1) as f64;
    Ok(json!({
        "codec": codec,
        "pictures": plan.len(),
        "frames": frames,
        "empty_outputs": empty,
        "keyframes": keyframes,
        "bytes": bytes,
        "duration_s": duration_s,
        "bitrate_kbps": if duration_s > 0.0 { bytes as f64 * 8.0 / duration_s / 1000.0 } else { 0.0 },
        "keyframe_bytes": keyframe_bytes.unwrap_or(0),
        "mean_keyframe_bytes": if keyframe_sizes.is_empty() { 0.0 } else {
            keyframe_sizes.iter().sum::<usize>() as f64 / keyframe_sizes.len() as f64 },
        "cpu_s": cpu_s,
        "cpu_ms_per_frame": cpu_s * 1000.0 / n,
        "cpu_ms_p50": pct(0.5),
        "cpu_ms_p95": pct(0.95),
        "cpu_ms_max": pct(1.0),
        "encode_fps_per_core": if cpu_s > 0.0 { plan.len() as f64 / cpu_s } else { 0.0 },
        "rusage_thread_cpu_s": ru_cpu.as_secs_f64(),
        "settings": {
            "bitrate_kbps": args.bitrate_kbps, "max_fps": args.max_fps, "threads": 1,
            "mjpeg_quality": if codec == "mjpeg" { Some(args.mjpeg_quality) } else { None },
        },
    }))
}

fn vpx_version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(vpx_sys::vpx_codec_version_str()) }.to_string_lossy().into_owned()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rec = Recording::read(&args.workload)?;
    std::fs::create_dir_all(&args.out_dir)?;
    let times: Vec<Duration> = rec.updates.iter().map(|u| u.t).collect();
    let plan = schedule(&times, rec.duration, args.max_fps);
    let mut results = Vec::new();
    for (i, codec) in args.codecs.iter().enumerate() {
        let ref_path = args.out_dir.join("ref.yuv");
        results.push(run_codec(&rec, &plan, codec, &args, (i == 0).then_some(ref_path.as_path()))?);
    }
    let out = json!({
        "workload": args.workload.file_stem().map(|s| s.to_string_lossy().into_owned()),
        "width": rec.width,
        "height": rec.height,
        "picture_width": (rec.width + 1) & !1,
        "picture_height": (rec.height + 1) & !1,
        "duration_s": rec.duration.as_secs_f64(),
        "updates": rec.updates.len(),
        "update_bytes": rec.updates.iter().flat_map(|u| u.rects.iter()).map(|(_, p)| p.len()).sum::<usize>(),
        "encodes": plan.len(),
        "keyframe_requests": plan.iter().filter(|e| e.keyframe).count(),
        "versions": { "x264_build": x264_sys::X264_BUILD, "libvpx": vpx_version() },
        "codecs": results,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn schedule_caps_the_rate_and_refines_after_motion() {
        // 60 updates per second for one second, then quiet for a second.
        let times: Vec<Duration> = (0..60).map(|i| Duration::from_micros(i * 16_667)).collect();
        let plan = schedule(&times, ms(2000), 30);
        assert!(plan[0].keyframe && plan[0].at == Duration::ZERO);
        assert_eq!(plan.iter().filter(|e| e.keyframe).count(), 1);
        let during: Vec<_> = plan.iter().filter(|e| e.at <= ms(1000)).collect();
        assert!((29..=33).contains(&during.len()), "{} encodes in the busy second", during.len());
        // Two refinement frames after the motion stops, then nothing.
        let after = plan.iter().filter(|e| e.at > ms(1000)).count();
        assert_eq!(after, 2, "{plan:?}");
        assert!(plan.windows(2).all(|w| w[0].at <= w[1].at && w[0].upto <= w[1].upto));
    }

    #[test]
    fn idle_recording_encodes_the_keyframe_and_refinements_only() {
        let plan = schedule(&[Duration::ZERO], ms(5000), 30);
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert!(plan[0].keyframe);
    }
}
