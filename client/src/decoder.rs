//! When a panel's video decoder has given up, and when to try another codec.
//!
//! On Android, Chromium decodes WebRTC H.264 in hardware only, and a hardware decoder may refuse
//! work under load (nine streams, a busy headset): then `framesDecoded` stops while packets keep
//! arriving. [`DecoderWatch`] sees that in a sequence of `getStats` samples (inbound-rtp video;
//! time passed in, milliseconds) and says [`Verdict::Stalled`] once per episode; the shell then
//! renegotiates that panel with VP8 (software-decodable everywhere), at most once a minute per
//! panel ([`FallbackGate`]).
//!
//! Sans-I/O like `loco_shared::pacer`: no clock, no browser; unit-tested here.

/// Frames not decoded for this long while media keeps arriving is a stalled decoder.
pub const STALL_MS: f64 = 3000.0;
/// At most one fallback per panel in this long.
pub const FALLBACK_EVERY_MS: f64 = 60_000.0;

/// A video codec the page can ask the agent for (`POST …/whep?codec=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    Vp8,
}

impl Codec {
    /// The agent's `?codec=` value and the hook's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::Vp8 => "vp8",
        }
    }

    /// The RTP codec's MIME type (`RTCRtpCodecCapability.mimeType`).
    pub fn mime(self) -> &'static str {
        match self {
            Codec::H264 => "video/H264",
            Codec::Vp8 => "video/VP8",
        }
    }

    pub fn parse(s: &str) -> Option<Codec> {
        match s.to_ascii_lowercase().as_str() {
            "h264" | "video/h264" => Some(Codec::H264),
            "vp8" | "video/vp8" => Some(Codec::Vp8),
            _ => None,
        }
    }
}

/// One `getStats` reading of a panel's inbound video.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub frames_decoded: u32,
    /// `framesReceived`: complete frames handed to the decoder (where the browser gives it).
    pub frames_received: Option<u32>,
    pub packets_received: f64,
    pub bytes_received: f64,
}

/// What a sample means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decoding (or nothing arrives, which is the link's business, not the decoder's).
    Ok,
    /// Media arrived for [`STALL_MS`] and nothing was decoded: said once per stall.
    Stalled { reason: String },
}

/// Watches one session's samples; [`DecoderWatch::reset`] for a new session.
#[derive(Debug, Clone, Default)]
pub struct DecoderWatch {
    last: Option<Sample>,
    /// Since when frames have not advanced while media did, and whether this stall was reported.
    stalled_since: Option<f64>,
    reported: bool,
}

impl DecoderWatch {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// A sample taken at `now`. (Chromium's `getStats` names no decoder error; a decoder that
    /// fails shows as frames that stop while packets arrive, which this catches.)
    pub fn sample(&mut self, now: f64, s: Sample) -> Verdict {
        let prev = self.last.replace(s);
        let Some(prev) = prev else { return Verdict::Ok };
        if s.frames_decoded != prev.frames_decoded {
            self.stalled_since = None;
            self.reported = false;
            return Verdict::Ok;
        }
        // What reached the decoder: complete frames where the browser counts them (so packets of
        // frames that loss left incomplete, retransmissions and padding do not count against the
        // decoder), else any packet or byte.
        let media = match (s.frames_received, prev.frames_received) {
            (Some(now), Some(before)) => now > before,
            _ => s.packets_received > prev.packets_received || s.bytes_received > prev.bytes_received,
        };
        if !media {
            // Nothing arrives: a quiet screen, a lossy or dead link, not the decoder. The stall (if
            // any) is kept: it resumes when media comes again.
            return Verdict::Ok;
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now - since >= STALL_MS && !self.reported {
            self.reported = true;
            return Verdict::Stalled {
                reason: format!("no frame decoded for {:.0} s while media kept arriving", (now - since) / 1000.0),
            };
        }
        Verdict::Ok
    }
}

/// The once-a-minute rule for one panel's fallbacks.
#[derive(Debug, Clone, Default)]
pub struct FallbackGate {
    last: Option<f64>,
    /// Fallbacks so far.
    pub count: u32,
}

impl FallbackGate {
    /// Whether a fallback may happen at `now`; if so it is counted.
    pub fn allow(&mut self, now: f64) -> bool {
        if self.last.is_some_and(|t| now - t < FALLBACK_EVERY_MS) {
            return false;
        }
        self.last = Some(now);
        self.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(frames: u32, packets: f64) -> Sample {
        Sample {
            frames_decoded: frames,
            frames_received: None,
            packets_received: packets,
            bytes_received: packets * 1000.0,
        }
    }

    #[test]
    fn with_frames_received_only_whole_frames_count() {
        let f = |decoded: u32, received: u32, packets: f64| Sample {
            frames_decoded: decoded,
            frames_received: Some(received),
            packets_received: packets,
            bytes_received: packets * 1000.0,
        };
        // Packets arrive but loss leaves every frame incomplete: the network's trouble, not a stall.
        let mut w = DecoderWatch::default();
        for k in 0..10 {
            assert_eq!(w.sample(k as f64 * 1000.0, f(50, 50, 100.0 * k as f64)), Verdict::Ok);
        }
        // Whole frames reach the decoder and none comes out: a stall.
        let mut w = DecoderWatch::default();
        w.sample(0.0, f(50, 50, 0.0));
        for k in 1..4 {
            assert_eq!(w.sample(k as f64 * 1000.0, f(50, 50 + 30 * k, 100.0 * k as f64)), Verdict::Ok);
        }
        assert!(matches!(w.sample(4000.0, f(50, 170, 400.0)), Verdict::Stalled { .. }));
    }

    #[test]
    fn decoding_is_fine() {
        let mut w = DecoderWatch::default();
        for k in 0..10 {
            assert_eq!(w.sample(k as f64 * 1000.0, s(k * 30, k as f64 * 100.0)), Verdict::Ok);
        }
    }

    #[test]
    fn packets_without_frames_for_three_seconds_is_a_stall_said_once() {
        let mut w = DecoderWatch::default();
        assert_eq!(w.sample(0.0, s(100, 1000.0)), Verdict::Ok);
        // Stuck at 100 frames from t = 1 s (first sample showing no progress) on.
        assert_eq!(w.sample(1000.0, s(100, 1100.0)), Verdict::Ok);
        assert_eq!(w.sample(2000.0, s(100, 1200.0)), Verdict::Ok);
        assert_eq!(w.sample(3000.0, s(100, 1300.0)), Verdict::Ok);
        match w.sample(4000.0, s(100, 1400.0)) {
            Verdict::Stalled { reason } => assert!(reason.contains("no frame decoded for 3 s"), "{reason}"),
            v => panic!("{v:?}"),
        }
        assert_eq!(w.sample(5000.0, s(100, 1500.0)), Verdict::Ok, "once per stall");
        // Decoding again, then a second stall is reported again.
        assert_eq!(w.sample(6000.0, s(130, 1600.0)), Verdict::Ok);
        for t in [7000.0, 8000.0, 9000.0] {
            assert_eq!(w.sample(t, s(130, t / 10.0 + 1000.0)), Verdict::Ok);
        }
        assert!(matches!(w.sample(10_000.0, s(130, 2100.0)), Verdict::Stalled { .. }));
    }

    #[test]
    fn a_quiet_screen_is_not_a_stall() {
        // The agent sends nothing for a still screen: neither packets nor frames advance.
        let mut w = DecoderWatch::default();
        for k in 0..20 {
            assert_eq!(w.sample(k as f64 * 1000.0, s(50, 700.0)), Verdict::Ok);
        }
    }

    #[test]
    fn a_decoder_that_never_started_stalls_too() {
        let mut w = DecoderWatch::default();
        assert_eq!(w.sample(0.0, s(0, 10.0)), Verdict::Ok);
        assert_eq!(w.sample(1000.0, s(0, 100.0)), Verdict::Ok);
        assert_eq!(w.sample(3000.0, s(0, 300.0)), Verdict::Ok);
        assert!(matches!(w.sample(4000.0, s(0, 400.0)), Verdict::Stalled { .. }));
    }

    #[test]
    fn reset_forgets_the_session() {
        let mut w = DecoderWatch::default();
        w.sample(0.0, s(10, 100.0));
        w.sample(1000.0, s(10, 200.0));
        w.reset();
        // A new session's counters start from 0: no stall from comparing with the old one.
        assert_eq!(w.sample(2000.0, s(0, 5.0)), Verdict::Ok);
        assert_eq!(w.sample(3000.0, s(20, 100.0)), Verdict::Ok);
    }

    #[test]
    fn gaps_in_media_keep_the_stall_clock() {
        let mut w = DecoderWatch::default();
        w.sample(0.0, s(10, 100.0));
        w.sample(1000.0, s(10, 200.0)); // stall from here
        w.sample(2000.0, s(10, 200.0)); // nothing arrives
        w.sample(3000.0, s(10, 200.0));
        assert!(matches!(w.sample(4000.0, s(10, 300.0)), Verdict::Stalled { .. }));
    }

    #[test]
    fn once_a_minute() {
        let mut g = FallbackGate::default();
        assert!(g.allow(1000.0));
        assert!(!g.allow(2000.0));
        assert!(!g.allow(60_999.0));
        assert!(g.allow(61_000.0));
        assert_eq!(g.count, 2);
    }

    #[test]
    fn codecs() {
        assert_eq!(Codec::parse("VP8"), Some(Codec::Vp8));
        assert_eq!(Codec::parse("video/H264"), Some(Codec::H264));
        assert_eq!(Codec::parse("av1"), None);
        assert_eq!(Codec::Vp8.as_str(), "vp8");
        assert_eq!(Codec::H264.mime(), "video/H264");
    }
}
