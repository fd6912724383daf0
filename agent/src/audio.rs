//! The VM's sound: QEMU's PCM (through the VNC connection, see [`crate::vnc`]) → 20 ms Opus
//! frames → every viewer's audio track.
//!
//! The VNC task hands PCM chunks to [`AudioHub::input`] without waiting; one encoder thread
//! cuts them into frames ([`loco_shared::audio::Framer`]), leaves silence out, encodes the
//! rest with libopus (DTX on: Opus' own near-silence frames are not sent either) and publishes
//! the packets on a broadcast channel. Each viewer whose offer asked for audio has a task that
//! writes them to its track as RTP, with timestamps that advance over what was not sent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use loco_shared::audio::{Framer, Gaps, FRAME_SAMPLES, SAMPLE_RATE};
use tokio::sync::broadcast;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

use crate::metrics::Metrics;

/// Channels loco asks QEMU for. QEMU mixes whatever the guest plays into this.
pub const CHANNELS: usize = 2;

/// PCM chunks queued for the encoder; QEMU sends one per 10 ms audio tick, so this is ~0.6 s.
const INPUT_QUEUE: usize = 64;
/// Opus packets a slow viewer may lag behind before it skips some (~1.3 s).
const PACKET_QUEUE: usize = 64;

/// What the VM's sound is doing (`loco_audio_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioState {
    Off = -1,
    Unavailable = 0,
    Quiet = 1,
    Playing = 2,
}

impl AudioState {
    pub fn label(self) -> &'static str {
        match self {
            AudioState::Off => "off",
            AudioState::Unavailable => "unavailable",
            AudioState::Quiet => "quiet",
            AudioState::Playing => "playing",
        }
    }
}

/// From the VNC task to the encoder.
#[derive(Debug)]
pub enum AudioInput {
    Begin(Instant),
    Data(Vec<u8>, Instant),
    End(Instant),
}

/// One Opus frame for every listening viewer.
#[derive(Debug, Clone)]
pub struct AudioPacket {
    pub data: Bytes,
    /// 20 ms frames of time not sent just before this one (silence, DTX, pauses).
    pub skipped_before: u32,
}

/// Settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct AudioConfig {
    pub enabled: bool,
    pub bitrate_bps: i32,
}

/// The agent's audio: the encoder thread's input and its packets' broadcast.
pub struct AudioHub {
    enabled: bool,
    input: Option<SyncSender<AudioInput>>,
    packets: broadcast::Sender<AudioPacket>,
    state: AtomicI64,
    metrics: Arc<Metrics>,
}

impl AudioHub {
    /// Starts the encoder thread when audio is enabled. An Opus encoder that cannot be made
    /// (a broken libopus) turns audio off with one error line, not the agent.
    pub fn new(config: AudioConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let (packets, _) = broadcast::channel(PACKET_QUEUE);
        let mut enabled = config.enabled;
        let mut input = None;
        if enabled {
            match make_encoder(config.bitrate_bps) {
                Ok(encoder) => {
                    let (tx, rx) = sync_channel(INPUT_QUEUE);
                    let out = packets.clone();
                    let m = metrics.clone();
                    let spawned = std::thread::Builder::new()
                        .name("loco-audio".into())
                        .spawn(move || encode_loop(rx, encoder, out, m));
                    match spawned {
                        Ok(_) => input = Some(tx),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the audio thread; audio is off");
                            enabled = false;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot make an Opus encoder; audio is off");
                    enabled = false;
                }
            }
        }
        let state = if enabled { AudioState::Unavailable } else { AudioState::Off };
        metrics.audio_state.set(state as i64);
        Arc::new(Self { enabled, input, packets, state: AtomicI64::new(state as i64), metrics })
    }

    /// Whether the agent asks the VNC server for audio and offers viewers an audio track.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn state(&self) -> AudioState {
        match self.state.load(Ordering::Relaxed) {
            -1 => AudioState::Off,
            1 => AudioState::Quiet,
            2 => AudioState::Playing,
            _ => AudioState::Unavailable,
        }
    }

    pub fn set_state(&self, state: AudioState) {
        if self.enabled {
            self.state.store(state as i64, Ordering::Relaxed);
            self.metrics.audio_state.set(state as i64);
        }
    }

    /// Hands the encoder a chunk or a stream event without waiting; a full queue drops it.
    pub fn input(&self, input: AudioInput) {
        let Some(tx) = &self.input else { return };
        match &input {
            AudioInput::Begin(_) => self.set_state(AudioState::Playing),
            AudioInput::End(_) => self.set_state(AudioState::Quiet),
            AudioInput::Data(..) => {}
        }
        let data = matches!(input, AudioInput::Data(..));
        match tx.try_send(input) {
            Ok(()) => {
                if data {
                    self.metrics.audio_chunks.with_label_values(&["received"]).inc();
                }
            }
            Err(TrySendError::Full(_)) => self.metrics.audio_chunks.with_label_values(&["dropped"]).inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Packets from now on, for one viewer.
    pub fn subscribe(&self) -> broadcast::Receiver<AudioPacket> {
        self.packets.subscribe()
    }
}

fn make_encoder(bitrate_bps: i32) -> Result<opus::Encoder, opus::Error> {
    let mut encoder = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Stereo, opus::Application::Audio)?;
    encoder.set_bitrate(opus::Bitrate::Bits(bitrate_bps))?;
    encoder.set_dtx(true)?;
    encoder.set_inband_fec(true)?;
    encoder.set_packet_loss_perc(5)?;
    Ok(encoder)
}

fn encode_loop(
    rx: Receiver<AudioInput>,
    mut encoder: opus::Encoder,
    out: broadcast::Sender<AudioPacket>,
    metrics: Arc<Metrics>,
) {
    let origin = Instant::now();
    let mut framer = Framer::new(CHANNELS);
    let mut gaps = Gaps::default();
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 4000];
    let count = |what: &str| metrics.audio_frames.with_label_values(&[what]).inc();
    while let Ok(input) = rx.recv() {
        match input {
            AudioInput::Begin(at) => framer.begin(at.saturating_duration_since(origin)),
            AudioInput::Data(pcm, at) => framer.push(&pcm, at.saturating_duration_since(origin), &mut frames),
            AudioInput::End(at) => framer.end(at.saturating_duration_since(origin), &mut frames),
        }
        for frame in frames.drain(..) {
            if out.receiver_count() == 0 {
                gaps.not_sent(&frame);
                count("idle");
                continue;
            }
            if frame.is_silent() {
                gaps.not_sent(&frame);
                count("silent");
                continue;
            }
            let t0 = Instant::now();
            let len = match encoder.encode(&frame.pcm, &mut buf) {
                Ok(len) => len,
                Err(e) => {
                    tracing::warn!(error = %e, "Opus encoding failed; frame dropped");
                    gaps.not_sent(&frame);
                    continue;
                }
            };
            metrics.audio_encode_seconds.observe(t0.elapsed().as_secs_f64());
            // With DTX, libopus marks frames it need not send with a packet of at most 2 bytes.
            if len <= 2 {
                gaps.not_sent(&frame);
                count("dtx");
                continue;
            }
            count("encoded");
            let skipped_before = gaps.sent(&frame);
            let _ = out.send(AudioPacket { data: Bytes::copy_from_slice(&buf[..len]), skipped_before });
        }
    }
}

/// Writes the hub's packets to one viewer's audio track as RTP until the viewer goes.
pub async fn write_packets(
    mut packets: broadcast::Receiver<AudioPacket>,
    track: Arc<TrackLocalStaticRTP>,
    metrics: Arc<Metrics>,
) {
    use rand::Rng;
    let mut sequence: u16 = rand::rng().random();
    let mut timestamp: u32 = rand::rng().random();
    let mut first = true;
    loop {
        let packet = match packets.recv().await {
            Ok(p) => p,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // This viewer fell behind: the packets it missed are lost to it.
                sequence = sequence.wrapping_add(n as u16);
                timestamp = timestamp.wrapping_add((n as u32).wrapping_mul(FRAME_SAMPLES as u32));
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !first {
            // Over the frames not sent, the clock runs on and the sequence does not (DTX).
            let frames = packet.skipped_before.saturating_add(1);
            timestamp = timestamp.wrapping_add(frames.wrapping_mul(FRAME_SAMPLES as u32));
        }
        let rtp = webrtc::rtp::packet::Packet {
            header: webrtc::rtp::header::Header {
                version: 2,
                // RFC 3551: the marker flags the first packet of a talkspurt (after silence).
                marker: first || packet.skipped_before > 0,
                sequence_number: sequence,
                timestamp,
                ..Default::default()
            },
            payload: packet.data.clone(),
        };
        first = false;
        sequence = sequence.wrapping_add(1);
        match track.write_rtp(&rtp).await {
            Ok(_) => {
                metrics.audio_packets_sent.inc();
                metrics.audio_bytes_sent.inc_by(packet.data.len() as u64);
            }
            Err(e) => tracing::trace!(error = %e, "audio RTP write failed"),
        }
    }
}

/// Drains RTCP for the audio sender (the interceptors need it read), until it closes.
pub async fn drain_rtcp(sender: Arc<webrtc::rtp_transceiver::rtp_sender::RTCRtpSender>) {
    while sender.read_rtcp().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tone(hz: f64, frames: usize) -> Vec<u8> {
        (0..FRAME_SAMPLES * frames)
            .flat_map(|i| {
                let v = ((i as f64 * hz * 2.0 * std::f64::consts::PI / 48_000.0).sin() * 8000.0) as i16;
                [v, v]
            })
            .flat_map(i16::to_le_bytes)
            .collect()
    }

    #[test]
    fn encodes_sound_and_leaves_silence_out() {
        let metrics = Arc::new(Metrics::new());
        let hub = AudioHub::new(AudioConfig { enabled: true, bitrate_bps: 64_000 }, metrics.clone());
        let mut rx = hub.subscribe();
        let t = Instant::now();
        hub.input(AudioInput::Begin(t));
        assert_eq!(hub.state(), AudioState::Playing);
        hub.input(AudioInput::Data(tone(440.0, 10), t));
        hub.input(AudioInput::Data(vec![0; FRAME_SAMPLES * 4 * 5], t + Duration::from_millis(200)));
        hub.input(AudioInput::Data(tone(440.0, 1), t + Duration::from_millis(300)));
        hub.input(AudioInput::End(t + Duration::from_millis(320)));
        let mut got = Vec::new();
        while got.len() < 11 {
            match rx.blocking_recv() {
                Ok(p) => got.push(p),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got.iter().all(|p| p.data.len() > 2));
        assert_eq!(got[..10].iter().map(|p| p.skipped_before).sum::<u32>(), 0);
        // The 5 silent frames are counted on the next packet.
        assert_eq!(got[10].skipped_before, 5);
        // A decoder hears the tone again.
        let mut dec = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo).unwrap();
        let mut pcm = vec![0i16; FRAME_SAMPLES * 2];
        let mut energy = 0f64;
        for p in &got[2..10] {
            let n = dec.decode(&p.data, &mut pcm, false).unwrap();
            assert_eq!(n, FRAME_SAMPLES);
            energy += pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
        }
        assert!(energy / (8.0 * pcm.len() as f64) > 1.0e6, "decoded tone too quiet");
        assert_eq!(hub.state(), AudioState::Quiet);
    }

    #[test]
    fn off_means_no_thread_and_state_off() {
        let metrics = Arc::new(Metrics::new());
        let hub = AudioHub::new(AudioConfig { enabled: false, bitrate_bps: 64_000 }, metrics.clone());
        assert!(!hub.enabled());
        hub.input(AudioInput::Begin(Instant::now()));
        assert_eq!(hub.state(), AudioState::Off);
        assert_eq!(metrics.audio_state.get(), -1);
    }
}
