//! A VM's sound, from QEMU's PCM stream to 20 ms Opus frames with the right RTP timing.
//!
//! QEMU's VNC server sends the guest's sound as signed 16-bit little-endian PCM in chunks of
//! any size (one per audio timer tick), between a *begin* and an *end* message, and nothing
//! at all while no guest program plays. [`Framer`] cuts that stream into whole 20 ms frames
//! and keeps the RTP timeline true to real time:
//!
//! - inside a stream, time is the samples received (QEMU's capture runs at the real rate, so
//!   late chunks are not gaps);
//! - across *end* → *begin*, the wall-clock gap is counted in frames, so the receiver plays
//!   the next sound when it happened and not glued to the last one;
//! - a frame the sender does not transmit (silence, or Opus DTX) is counted too: the next
//!   frame that is sent carries how many frames were skipped before it
//!   ([`Frame::skipped_before`]; the RTP timestamp advances over them, the sequence number
//!   does not, which is how a receiver recognises discontinuous transmission).
//!
//! I/O-free: every call takes `now`, a monotonic time since an arbitrary origin.

use std::time::Duration;

/// Opus' RTP clock and the rate loco asks QEMU for.
pub const SAMPLE_RATE: u32 = 48_000;
/// One Opus frame.
pub const FRAME: Duration = Duration::from_millis(20);
/// Samples per channel in one frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE as usize) * 20 / 1000;
/// A frame whose every sample is within ±this of zero is silence (not encoded, not sent).
pub const SILENCE_THRESHOLD: i16 = 8;

/// One whole frame of interleaved samples, ready for the encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `FRAME_SAMPLES * channels` interleaved samples.
    pub pcm: Vec<i16>,
    /// Frames of time between the previous frame handed out and this one (a pause between
    /// two sounds). [`Gaps::sent`] adds the frames that were handed out but not sent.
    pub skipped_before: u32,
}

impl Frame {
    /// Whether the frame is (digital) silence.
    pub fn is_silent(&self) -> bool {
        self.pcm.iter().all(|s| s.unsigned_abs() <= SILENCE_THRESHOLD as u16)
    }
}

/// Cuts a QEMU PCM stream into frames. See the module documentation.
#[derive(Debug, Clone)]
pub struct Framer {
    channels: usize,
    pending: Vec<i16>,
    /// A byte of a sample split across two chunks.
    odd_byte: Option<u8>,
    /// When the stream ended (*end*, or [`Framer::end`]); the next data starts after a gap.
    ended_at: Option<Duration>,
    /// Time of the next frame's start when the stream ended: the frames between it and the
    /// next *begin* are skipped.
    next_frame_at: Option<Duration>,
    /// Frames of pause to report on the next frame.
    gap: u32,
    /// Time the current stream started, and frames handed out in it.
    stream_start: Option<Duration>,
    frames_in_stream: u64,
}

impl Framer {
    /// A framer for `channels` (1 or 2) interleaved channels.
    pub fn new(channels: usize) -> Self {
        assert!(matches!(channels, 1 | 2), "QEMU audio has 1 or 2 channels");
        Self {
            channels,
            pending: Vec::with_capacity(FRAME_SAMPLES * channels * 2),
            odd_byte: None,
            ended_at: None,
            next_frame_at: None,
            gap: 0,
            stream_start: None,
            frames_in_stream: 0,
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// PCM bytes (S16LE, interleaved) received at `now`; whole frames are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], now: Duration, out: &mut Vec<Frame>) {
        if bytes.is_empty() {
            return;
        }
        if self.stream_start.is_none() {
            self.begin(now);
        }
        let mut rest = bytes;
        if let Some(lo) = self.odd_byte.take() {
            self.pending.push(i16::from_le_bytes([lo, rest[0]]));
            rest = &rest[1..];
        }
        let mut pairs = rest.chunks_exact(2);
        self.pending.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        self.odd_byte = pairs.remainder().first().copied();
        let frame_len = FRAME_SAMPLES * self.channels;
        let whole = self.pending.len() / frame_len * frame_len;
        if whole == 0 {
            return;
        }
        for pcm in self.pending[..whole].chunks_exact(frame_len) {
            out.push(Frame { pcm: pcm.to_vec(), skipped_before: std::mem::take(&mut self.gap) });
            self.frames_in_stream += 1;
        }
        self.pending.drain(..whole);
    }

    /// A stream starts (QEMU's *begin*, or the first data after an end).
    pub fn begin(&mut self, now: Duration) {
        if self.stream_start.is_some() {
            return;
        }
        if let (Some(_), Some(next)) = (self.ended_at.take(), self.next_frame_at.take()) {
            let paused = now.saturating_sub(next);
            let frames = paused.as_micros() / FRAME.as_micros();
            self.gap = self.gap.saturating_add(u32::try_from(frames).unwrap_or(u32::MAX));
        }
        self.stream_start = Some(now);
        self.frames_in_stream = 0;
    }

    /// The stream ends (QEMU's *end*, or the VNC connection closed). A partial frame is
    /// padded with silence and handed out, so the sound's tail is not lost.
    pub fn end(&mut self, now: Duration, out: &mut Vec<Frame>) {
        let Some(start) = self.stream_start.take() else { return };
        self.odd_byte = None;
        if !self.pending.is_empty() {
            let mut pcm = std::mem::take(&mut self.pending);
            pcm.resize(FRAME_SAMPLES * self.channels, 0);
            out.push(Frame { pcm, skipped_before: std::mem::take(&mut self.gap) });
            self.frames_in_stream += 1;
        }
        // The pause counts from when the stream's samples end or from now, whichever is later:
        // samples that fell behind real time (a slow guest) do not make the pause look longer.
        let by_samples =
            start.saturating_add(FRAME.saturating_mul(u32::try_from(self.frames_in_stream).unwrap_or(u32::MAX)));
        self.next_frame_at = Some(by_samples.max(now));
        self.ended_at = Some(now);
    }

    /// Whether a stream is open.
    pub fn playing(&self) -> bool {
        self.stream_start.is_some()
    }
}

/// Frames handed out but not sent (silence, DTX), to be reported on the next one sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gaps {
    unsent: u32,
}

impl Gaps {
    /// `frame` is not sent: it and its pause count toward the next frame sent.
    pub fn not_sent(&mut self, frame: &Frame) {
        self.unsent = self.unsent.saturating_add(frame.skipped_before).saturating_add(1);
    }

    /// `frame` is sent: how many frames of time passed unsent before it (for RTP:
    /// the timestamp advances by this many frames more than one).
    pub fn sent(&mut self, frame: &Frame) -> u32 {
        std::mem::take(&mut self.unsent).saturating_add(frame.skipped_before)
    }
}

/// QEMU's audio format that loco asks for: S16 (3), 2 channels, 48 kHz.
pub const QEMU_FORMAT_S16: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn pcm_bytes(samples: impl IntoIterator<Item = i16>) -> Vec<u8> {
        samples.into_iter().flat_map(i16::to_le_bytes).collect()
    }

    #[test]
    fn cuts_whole_frames_from_chunks_of_any_size() {
        let mut f = Framer::new(2);
        let samples: Vec<i16> = (0..(FRAME_SAMPLES * 2 * 3) as i32).map(|i| (i % 30_000) as i16).collect();
        let bytes = pcm_bytes(samples.iter().copied());
        let mut out = Vec::new();
        // Odd chunk sizes split samples across chunks.
        let mut t = 0;
        for chunk in bytes.chunks(1001) {
            f.push(chunk, ms(t), &mut out);
            t += 5;
        }
        assert_eq!(out.len(), 3);
        let joined: Vec<i16> = out.iter().flat_map(|fr| fr.pcm.iter().copied()).collect();
        assert_eq!(joined, samples);
        assert!(out.iter().all(|fr| fr.skipped_before == 0));
    }

    #[test]
    fn late_chunks_inside_a_stream_are_not_gaps() {
        let mut f = Framer::new(1);
        let mut out = Vec::new();
        let frame = pcm_bytes(vec![100; FRAME_SAMPLES]);
        f.push(&frame, ms(0), &mut out);
        f.push(&frame, ms(500), &mut out); // late, but contiguous samples
        assert_eq!(out.iter().map(|fr| fr.skipped_before).collect::<Vec<_>>(), [0, 0]);
    }

    #[test]
    fn a_pause_between_streams_is_counted_in_frames() {
        let mut f = Framer::new(1);
        let mut out = Vec::new();
        f.begin(ms(0));
        f.push(&pcm_bytes(vec![100; FRAME_SAMPLES * 5]), ms(100), &mut out); // 100 ms of sound
        f.end(ms(100), &mut out);
        assert!(!f.playing());
        f.begin(ms(1100)); // one second later
        f.push(&pcm_bytes(vec![100; FRAME_SAMPLES]), ms(1120), &mut out);
        assert_eq!(out.len(), 6);
        assert_eq!(out[5].skipped_before, 50);
        // Data without a begin also starts a stream after the pause.
        f.end(ms(1120), &mut out);
        f.push(&pcm_bytes(vec![100; FRAME_SAMPLES]), ms(1220), &mut out);
        assert_eq!(out.last().unwrap().skipped_before, 5);
    }

    #[test]
    fn end_pads_the_tail_and_a_short_stream_ends_now() {
        let mut f = Framer::new(2);
        let mut out = Vec::new();
        f.push(&pcm_bytes(vec![7; 10]), ms(0), &mut out);
        assert!(out.is_empty());
        f.end(ms(40), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].pcm.len(), FRAME_SAMPLES * 2);
        assert_eq!(&out[0].pcm[..10], &[7; 10]);
        assert!(out[0].pcm[10..].iter().all(|&s| s == 0));
        // Ended at 40 ms with 20 ms of samples: the next stream's gap counts from 40 ms.
        f.push(&pcm_bytes(vec![1; FRAME_SAMPLES * 2]), ms(140), &mut out);
        assert_eq!(out[1].skipped_before, 5);
    }

    #[test]
    fn silence_and_unsent_frames() {
        let loud = Frame { pcm: vec![0, 9, -3], skipped_before: 0 };
        let quiet = Frame { pcm: vec![0, 8, -8], skipped_before: 2 };
        assert!(!loud.is_silent());
        assert!(quiet.is_silent());
        let mut g = Gaps::default();
        assert_eq!(g.sent(&loud), 0);
        g.not_sent(&quiet); // its 2 frames of pause + itself
        g.not_sent(&Frame { pcm: vec![0], skipped_before: 0 });
        assert_eq!(g.sent(&Frame { pcm: vec![5000], skipped_before: 1 }), 5);
        assert_eq!(g.sent(&loud), 0);
    }

    #[test]
    fn huge_pauses_saturate() {
        let mut f = Framer::new(1);
        let mut out = Vec::new();
        f.push(&pcm_bytes(vec![1; FRAME_SAMPLES]), ms(0), &mut out);
        f.end(ms(20), &mut out);
        f.push(&pcm_bytes(vec![1; FRAME_SAMPLES]), Duration::from_secs(u64::MAX / 4), &mut out);
        assert_eq!(out.last().unwrap().skipped_before, u32::MAX);
        let mut g = Gaps::default();
        g.not_sent(&out[1]);
        assert_eq!(g.sent(&out[1]), u32::MAX);
    }
}
