//! WebRTC viewers: one `RTCPeerConnection` per WHEP session (the `webrtc` crate).
//!
//! The viewer offers (a receive-only video m-line, optionally an audio one, and, for control, a
//! data channel labelled `input`); the agent answers with one video track in the codec chosen
//! for the session and, when the offer has audio and the agent's audio is on, an Opus track
//! ([`crate::audio`]) in a stream of its own (so the browser does not hold video back to
//! lip-sync it with audio's deeper jitter buffer), all its ICE candidates included (no trickle). Frames from the encoder pipeline are packetised
//! here with RTP timestamps taken from the moment they were encoded, so the receiver's jitter
//! buffer sees real time even though frames come only when the screen changes. When the offer
//! lists the RTP playout-delay extension (Chromium's does) and `--playout-delay` is on, every
//! video packet carries min = max = 0, so the browser shows frames as soon as they are decoded.
//! The `input` channel carries input for the VM and the viewer's attention to this panel, which
//! goes to the encoder ([`Pipelines::set_attention`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loco_shared::feedback::{Decision, KeyframeReason, LossSource, RateCause, ViewerFeedback, POLL_INTERVAL};
use loco_shared::protocol::{INPUT_CHANNEL_LABEL, MAX_MESSAGE_BYTES};
use loco_shared::ratelimit::TokenBucket;
use loco_shared::retransmit::{ntp_middle32, rtt_from_report, Outcome, RetransmitConfig};
use loco_shared::{Attention, ChannelMessage, InputMessage};
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::configure_twcc_sender_only;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, SymbolTypeTcc, TransportLayerCc};
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp::codecs::h264::H264Payloader;
use webrtc::rtp::codecs::vp8::Vp8Payloader;
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

use crate::audio::AudioHub;
use crate::encode::Codec;
use crate::metrics::Metrics;
use crate::pipeline::{lock, FramePacket, KeyframeCause, Pipelines};

/// RTP payload size limit, leaving room for SRTP and TURN overheads under a 1280-byte path MTU.
const RTP_PAYLOAD_MTU: usize = 1200 - 12;

/// Read buffer for the input channel: the SCTP receive window (webrtc-sctp's 1 MiB), so any
/// message the association accepts can be read, judged and dropped without closing the channel.
const INPUT_READ_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the offer is not a valid SDP offer: {0}")]
    BadOffer(String),
    #[error("the offer has no video m-line the agent can send {0} on ({1})")]
    NoCodec(Codec, String),
    #[error("too many viewers (limit {0})")]
    TooManyViewers(usize),
    #[error("WebRTC failure: {0}")]
    Internal(String),
}

/// Network settings for ICE.
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    pub servers: crate::turn::IceServers,
    /// One UDP port for all sessions (a pod exposes one port), or ephemeral ports when `None`.
    pub udp_mux_port: Option<u16>,
    /// Public addresses to advertise instead of the host's own (1:1 NAT, e.g. a node IP).
    pub nat_1to1_ips: Vec<String>,
}

/// Builds peer connections. One `webrtc` API per codec, so each session's answer carries
/// exactly the codec the viewer asked for.
pub struct PeerFactory {
    apis: HashMap<Codec, API>,
    ice: IceConfig,
}

/// The RTP header extension that tells a libwebrtc receiver (Chromium) how long it may hold
/// frames in its jitter buffer (<http://www.webrtc.org/experiments/rtp-hdrext/playout-delay>).
pub const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// The playout-delay extension's payload: min = max = 0 (12 bits each, in 10 ms units), i.e.
/// "render each frame as soon as it is decoded": a desktop has no motion to smooth, and every
/// frame held back is latency the user feels on the pointer.
pub fn playout_delay_payload() -> bytes::Bytes {
    use webrtc::util::Marshal;
    let ext = webrtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension::new(0, 0);
    // Marshalling three bytes of two in-range values cannot fail.
    ext.marshal().unwrap_or_else(|_| bytes::Bytes::from_static(&[0, 0, 0]))
}

fn feedback() -> Vec<RTCPFeedback> {
    [("goog-remb", ""), ("ccm", "fir"), ("nack", ""), ("nack", "pli"), ("transport-cc", "")]
        .into_iter()
        .map(|(typ, parameter)| RTCPFeedback { typ: typ.into(), parameter: parameter.into() })
        .collect()
}

fn capability(codec: Codec, profile: &str) -> RTCRtpCodecCapability {
    match codec {
        Codec::H264 => RTCRtpCodecCapability {
            mime_type: MIME_TYPE_H264.into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"),
            rtcp_feedback: feedback(),
        },
        Codec::Vp8 => RTCRtpCodecCapability {
            mime_type: MIME_TYPE_VP8.into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: feedback(),
        },
    }
}

/// Opus as every browser offers it; `usedtx=1`: silence is not sent.
fn opus_capability() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: loco_shared::audio::SAMPLE_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1;usedtx=1".into(),
        rtcp_feedback: vec![RTCPFeedback { typ: "transport-cc".into(), parameter: String::new() }],
    }
}

/// RTCP reports, as `webrtc`'s defaults but with sender reports every 2 s instead of every
/// second (on an idle desktop they are most of what is sent); transport-wide sequence numbers
/// on every packet sent, for viewers' TWCC feedback (see [`loco_shared::twcc::TwccLoss`]); and
/// without `webrtc`'s NACK responder: that one resends every NACKed packet from an 8192-packet
/// buffer as often as it is asked, which on a lossy, reordering path multiplied the traffic 3.5
/// times. Each session answers NACKs itself ([`ViewerFeedback`]: once per round trip, within a
/// byte budget).
/// The codecs still advertise `nack` and `nack pli` (see [`feedback`]).
fn interceptors(media: &mut MediaEngine) -> webrtc::error::Result<Registry> {
    use webrtc::interceptor::report::receiver::ReceiverReport;
    use webrtc::interceptor::report::sender::SenderReport;
    let mut registry = Registry::new();
    registry.add(Box::new(ReceiverReport::builder()));
    registry.add(Box::new(SenderReport::builder().with_interval(Duration::from_secs(2))));
    configure_twcc_sender_only(registry, media)
}

impl PeerFactory {
    /// `playout_delay`: negotiate the playout-delay header extension with viewers that offer it
    /// (Chromium does) and put min = max = 0 on every video packet (`--playout-delay`).
    pub async fn new(ice: IceConfig, playout_delay: bool) -> anyhow::Result<Self> {
        let mux = match ice.udp_mux_port {
            Some(port) => {
                let socket = tokio::net::UdpSocket::bind(("0.0.0.0", port))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot bind the WebRTC UDP port {port}: {e}"))?;
                Some(UDPMuxDefault::new(UDPMuxParams::new(socket)))
            }
            None => None,
        };
        let mut apis = HashMap::new();
        for codec in Codec::ALL {
            let mut media = MediaEngine::default();
            // Constrained baseline (42e01f) is what we send; it is also valid for receivers
            // that only list baseline (42001f).
            let profiles: &[(&str, u8)] = match codec {
                Codec::H264 => &[("42e01f", 102), ("42001f", 127)],
                Codec::Vp8 => &[("", 96)],
            };
            for (profile, pt) in profiles {
                media.register_codec(
                    RTCRtpCodecParameters {
                        capability: capability(codec, profile),
                        payload_type: *pt,
                        ..Default::default()
                    },
                    RTPCodecType::Video,
                )?;
            }
            // Opus is always known, also with --audio off: an offer's audio m-line is then
            // answered without a track (nothing sent) rather than rejected, which some WHEP
            // clients (aiortc) cannot parse.
            media.register_codec(
                RTCRtpCodecParameters { capability: opus_capability(), payload_type: 111, ..Default::default() },
                RTPCodecType::Audio,
            )?;
            if playout_delay {
                // Send-side: the answer lists it only when the offer did (a receiver that
                // does not know it never sees it).
                media.register_header_extension(
                    RTCRtpHeaderExtensionCapability { uri: PLAYOUT_DELAY_URI.into() },
                    RTPCodecType::Video,
                    None,
                )?;
            }
            let registry = interceptors(&mut media)?;
            let mut settings = SettingEngine::default();
            settings.set_include_loopback_candidate(true);
            settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
            settings.detach_data_channels();
            if !ice.nat_1to1_ips.is_empty() {
                settings.set_nat_1to1_ips(ice.nat_1to1_ips.clone(), RTCIceCandidateType::Host);
            }
            if let Some(mux) = &mux {
                settings.set_udp_network(UDPNetwork::Muxed(mux.clone()));
            }
            let api = APIBuilder::new()
                .with_media_engine(media)
                .with_interceptor_registry(registry)
                .with_setting_engine(settings)
                .build();
            apis.insert(codec, api);
        }
        Ok(Self { apis, ice })
    }

    pub fn ice_servers(&self) -> &crate::turn::IceServers {
        &self.ice.servers
    }
}

/// Per-agent limits on viewers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_viewers: usize,
    /// Average input events per second one viewer may send, and the burst above it.
    pub input_per_second: u32,
    pub input_burst: u32,
    /// A session that is not connected this long after its offer (or after dropping) ends.
    pub connect_timeout: Duration,
    /// The range a viewer's congestion controller may move the bitrate in.
    pub min_bitrate_kbps: u32,
    pub max_bitrate_kbps: u32,
}

/// Whether a viewer may send input (a view-only viewer's input is refused and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    View,
    Control,
}

/// One connected viewer.
pub struct ViewerSession {
    pub id: String,
    pub number: u64,
    pub codec: Codec,
    pc: Arc<RTCPeerConnection>,
    closed: AtomicBool,
    streaming: AtomicBool,
    /// The viewer's feedback loop, holding the packets sent to it a moment for NACKed resends;
    /// shared by the frame writer and the RTCP reader. Times are from `origin`.
    feedback: Arc<Mutex<ViewerFeedback<RtpPacket>>>,
    origin: Instant,
    /// The session's Opus track, when its offer asked for audio and the agent has it.
    audio: Option<Arc<TrackLocalStaticRTP>>,
    /// Set when the session ends (stops its audio writer).
    ended: tokio::sync::watch::Sender<bool>,
    /// The id the viewer's offer gave the playout-delay extension, when it is negotiated.
    playout_delay_id: Option<u8>,
    /// What the viewer last said of its attention to this panel (`focused` until it says).
    /// Held while the encoder is told, so a change cannot pass the viewer's subscription.
    attention: Arc<Mutex<Attention>>,
}

impl ViewerSession {
    /// Whether the session has an audio track.
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// Whether its video packets carry the playout-delay extension.
    pub fn has_playout_delay(&self) -> bool {
        self.playout_delay_id.is_some()
    }
}

type RtpPacket = webrtc::rtp::packet::Packet;
type RtpSender = webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;

/// What answering an offer gave.
struct Negotiated {
    answer: String,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<RtpSender>,
    audio: Option<(Arc<TrackLocalStaticRTP>, Arc<RtpSender>)>,
    playout_delay_id: Option<u8>,
}

/// All sessions, and what each session needs from the rest of the agent.
pub struct Viewers {
    factory: PeerFactory,
    pipelines: Arc<Pipelines>,
    audio: Arc<AudioHub>,
    metrics: Arc<Metrics>,
    input: mpsc::Sender<InputMessage>,
    screen: Arc<crate::pipeline::Screen>,
    sessions: Mutex<HashMap<String, Arc<ViewerSession>>>,
    next_number: AtomicU64,
    limits: Limits,
}

impl Viewers {
    pub fn new(
        factory: PeerFactory,
        pipelines: Arc<Pipelines>,
        audio: Arc<AudioHub>,
        metrics: Arc<Metrics>,
        input: mpsc::Sender<InputMessage>,
        screen: Arc<crate::pipeline::Screen>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Self {
            factory,
            pipelines,
            audio,
            metrics,
            input,
            screen,
            sessions: Mutex::new(HashMap::new()),
            next_number: AtomicU64::new(1),
            limits,
        })
    }

    pub fn count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Whether a session with this id is open.
    pub fn has_session(&self, id: &str) -> bool {
        lock(&self.sessions).contains_key(id)
    }

    /// What the VM's sound is doing.
    pub fn audio_state(&self) -> crate::audio::AudioState {
        self.audio.state()
    }

    pub fn ice_servers(&self) -> &crate::turn::IceServers {
        self.factory.ice_servers()
    }

    /// Answers a WHEP offer. Returns the session and the SDP answer.
    pub async fn create(
        self: &Arc<Self>,
        offer_sdp: String,
        codec: Codec,
        role: Role,
    ) -> Result<(Arc<ViewerSession>, String), SessionError> {
        if self.count() >= self.limits.max_viewers {
            self.metrics.sessions_ended.with_label_values(&["refused_full"]).inc();
            return Err(SessionError::TooManyViewers(self.limits.max_viewers));
        }
        let offer = RTCSessionDescription::offer(offer_sdp).map_err(|e| SessionError::BadOffer(e.to_string()))?;
        let parsed = offer.unmarshal().map_err(|e| SessionError::BadOffer(e.to_string()))?;
        if !parsed.media_descriptions.iter().any(|m| m.media_name.media == "video") {
            return Err(SessionError::BadOffer(
                "it has no video m-line (WHEP viewers must offer to receive video)".into(),
            ));
        }

        // Audio when the viewer asks for it (an audio m-line it can receive on) and the agent has it.
        let wants_audio = self.audio.enabled()
            && parsed.media_descriptions.iter().any(|m| {
                m.media_name.media == "audio"
                    && !m.attributes.iter().any(|a| a.key == "sendonly" || a.key == "inactive")
            });
        let api = self.factory.apis.get(&codec).ok_or_else(|| SessionError::Internal("no API for codec".into()))?;
        let config = RTCConfiguration { ice_servers: self.factory.ice.servers.agent_now(), ..Default::default() };
        let pc = Arc::new(api.new_peer_connection(config).await.map_err(|e| SessionError::Internal(e.to_string()))?);
        match self.negotiate(&pc, offer, codec, wants_audio).await {
            Ok(Negotiated { answer, track, sender, audio, playout_delay_id }) => {
                let number = self.next_number.fetch_add(1, Ordering::Relaxed);
                let id = session_id();
                let session = Arc::new(ViewerSession {
                    id: id.clone(),
                    number,
                    codec,
                    pc: pc.clone(),
                    closed: AtomicBool::new(false),
                    streaming: AtomicBool::new(false),
                    feedback: Arc::new(Mutex::new(ViewerFeedback::new(
                        RetransmitConfig::default(),
                        self.limits.min_bitrate_kbps,
                        self.limits.max_bitrate_kbps,
                    ))),
                    origin: Instant::now(),
                    audio: audio.as_ref().map(|(track, _)| track.clone()),
                    ended: tokio::sync::watch::channel(false).0,
                    playout_delay_id,
                    attention: Arc::new(Mutex::new(Attention::Focused)),
                });
                if let Some((_, audio_sender)) = audio {
                    tokio::spawn(crate::audio::drain_rtcp(audio_sender));
                }
                self.attach(&session, track, sender, role);
                lock(&self.sessions).insert(id, session.clone());
                self.metrics.viewers.set(self.count() as i64);
                tracing::info!(
                    session = %session.id, %codec, audio = session.has_audio(),
                    playout_delay = session.has_playout_delay(), viewers = self.count(), "viewer joined"
                );
                Ok((session, answer))
            }
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    async fn negotiate(
        &self,
        pc: &Arc<RTCPeerConnection>,
        offer: RTCSessionDescription,
        codec: Codec,
        wants_audio: bool,
    ) -> Result<Negotiated, SessionError> {
        let track = Arc::new(TrackLocalStaticRTP::new(capability(codec, "42e01f"), "screen".into(), "loco".into()));
        let sender = pc
            .add_track(track.clone() as Arc<dyn webrtc::track::track_local::TrackLocal + Send + Sync>)
            .await
            .map_err(|e| SessionError::Internal(e.to_string()))?;
        let mut audio = None;
        if wants_audio {
            let track = Arc::new(TrackLocalStaticRTP::new(opus_capability(), "sound".into(), "loco-audio".into()));
            let sender = pc
                .add_track(track.clone() as Arc<dyn webrtc::track::track_local::TrackLocal + Send + Sync>)
                .await
                .map_err(|e| SessionError::Internal(e.to_string()))?;
            audio = Some((track, sender));
        }
        pc.set_remote_description(offer).await.map_err(|e| SessionError::BadOffer(e.to_string()))?;
        let answer = pc.create_answer(None).await.map_err(|e| SessionError::BadOffer(e.to_string()))?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await.map_err(|e| SessionError::BadOffer(e.to_string()))?;
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| SessionError::Internal("no local description after answering".into()))?;
        if sender.get_parameters().await.rtp_parameters.codecs.is_empty() {
            return Err(SessionError::NoCodec(codec, "try ?codec=h264 or ?codec=vp8".into()));
        }
        // An audio m-line without Opus: video only for this viewer.
        if let Some((_, audio_sender)) = &audio {
            if audio_sender.get_parameters().await.rtp_parameters.codecs.is_empty() {
                tracing::info!("the viewer's audio m-line has no Opus; sending video only");
                audio = None;
            }
        }
        // Negotiated only when the agent registered it (`--playout-delay on`) and the offer
        // has it; the id is the offer's.
        let playout_delay_id = sender
            .get_parameters()
            .await
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == PLAYOUT_DELAY_URI)
            .and_then(|e| u8::try_from(e.id).ok());
        Ok(Negotiated { answer: local.sdp, track, sender, audio, playout_delay_id })
    }

    /// Wires a negotiated session: frames out, RTCP and input in, cleanup on close.
    fn attach(
        self: &Arc<Self>,
        session: &Arc<ViewerSession>,
        track: Arc<TrackLocalStaticRTP>,
        sender: Arc<webrtc::rtp_transceiver::rtp_sender::RTCRtpSender>,
        role: Role,
    ) {
        let codec = session.codec;
        // RTCP from the viewer, turned into plain events for its feedback loop
        // (`ViewerFeedback`: keyframe requests, NACKs answered from the resend buffer, TWCC and
        // receiver reports driving the bitrate), whose decisions are carried out here.
        // Reading also drives the interceptors (reports).
        let pipelines = self.pipelines.clone();
        let metrics = self.metrics.clone();
        let nacked = metrics.nack_packets.with_label_values(&[codec.label()]);
        let dequeued = metrics.retransmits_dequeued.with_label_values(&[codec.label()]);
        let viewer = session.number;
        let feedback = session.feedback.clone();
        let origin = session.origin;
        let resend_track = track.clone();
        tokio::spawn(async move {
            let outcomes = Outcome::ALL.map(|o| metrics.retransmits.with_label_values(&[codec.label(), o.label()]));
            let carry_out = |decisions: Vec<Decision<RtpPacket>>| {
                let mut resends = Vec::new();
                for decision in decisions {
                    match decision {
                        Decision::Resend { packet, dequeued: was_queued } => {
                            if was_queued {
                                dequeued.inc();
                            }
                            resends.push(packet);
                        }
                        Decision::Keyframe(reason) => pipelines.request_keyframe(codec, keyframe_cause(reason)),
                        Decision::Bitrate { kbps, cause } => {
                            match cause {
                                RateCause::Twcc { loss, sent_kbps } => {
                                    tracing::debug!(viewer, kbps, loss, sent = ?sent_kbps, "viewer bitrate (TWCC)")
                                }
                                RateCause::Nacks { nacked, reported, rtt, .. } => {
                                    tracing::debug!(viewer, kbps, nacked, reported, ?rtt, "viewer bitrate (NACKs)")
                                }
                                RateCause::Queue { rtt } => {
                                    tracing::debug!(viewer, kbps, ?rtt, "viewer bitrate (queueing delay)")
                                }
                            }
                            pipelines.set_viewer_bitrate(codec, viewer, kbps);
                        }
                        Decision::Nacked(outcome) => {
                            nacked.inc();
                            outcomes[outcome as usize].inc();
                        }
                        Decision::QueueExpired(n) => outcomes[Outcome::Expired as usize].inc_by(n as u64),
                        Decision::Loss { source, fraction } => {
                            let source = match source {
                                LossSource::Twcc => "twcc",
                                LossSource::Nack => "nack",
                            };
                            metrics.loss_ratio.with_label_values(&[codec.label(), source]).set(fraction);
                        }
                        Decision::Rtt(rtt) => metrics.viewer_rtt_seconds.observe(rtt.as_secs_f64()),
                    }
                }
                resends
            };
            // Resends the budget queued go out from this timer too, so they leave even when the
            // viewer sends nothing more; it also ends lossy spells.
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // One read in flight across ticks: a tick never cancels a read half-way.
            let mut reading = Box::pin(sender.read_rtcp());
            loop {
                let packets = tokio::select! {
                    read = &mut reading => {
                        reading = Box::pin(sender.read_rtcp());
                        match read {
                            Ok((packets, _)) => packets,
                            Err(_) => break,
                        }
                    }
                    _ = tick.tick() => Vec::new(),
                };
                let polled = lock(&feedback).poll(origin.elapsed());
                send_again(&resend_track, carry_out(polled)).await;
                for p in packets {
                    let any = p.as_any();
                    let decisions = if any.downcast_ref::<PictureLossIndication>().is_some() {
                        lock(&feedback).on_pli()
                    } else if any.downcast_ref::<FullIntraRequest>().is_some() {
                        lock(&feedback).on_fir()
                    } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                        let seqs = nack.nacks.iter().flat_map(|pair| pair.into_iter());
                        lock(&feedback).on_nack(seqs, origin.elapsed())
                    } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                        lock(&feedback).on_twcc(cc.base_sequence_number, twcc_statuses(cc), origin.elapsed())
                    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        let wall =
                            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        let mut decisions = Vec::new();
                        for report in &rr.reports {
                            let rtt = rtt_from_report(ntp_middle32(wall), report.last_sender_report, report.delay);
                            let now = origin.elapsed();
                            decisions.extend(lock(&feedback).on_receiver_report(rtt, report.fraction_lost, now));
                        }
                        decisions
                    } else {
                        Vec::new()
                    };
                    send_again(&resend_track, carry_out(decisions)).await;
                }
            }
        });

        // Frames start flowing once the connection is up, so the first one the viewer can
        // receive is the keyframe it needs.
        let weak = Arc::downgrade(self);
        let id = session.id.clone();
        session.pc.on_peer_connection_state_change(Box::new(move |state| {
            let weak = weak.clone();
            let id = id.clone();
            let track = track.clone();
            Box::pin(async move {
                tracing::debug!(session = %id, ?state, "peer connection state");
                let Some(viewers) = weak.upgrade() else { return };
                match state {
                    RTCPeerConnectionState::Connected => viewers.start_frames(&id, track),
                    RTCPeerConnectionState::Failed => {
                        viewers.remove(&id, "failed").await;
                    }
                    RTCPeerConnectionState::Closed => {
                        viewers.remove(&id, "closed").await;
                    }
                    _ => {}
                }
            })
        }));

        // A session that never connects (the viewer went away after its POST) or stays
        // disconnected ends after the connect timeout, so it cannot hold a viewer slot.
        // It holds the peer connection weakly: an ended session's connection (its interceptor
        // buffers are about a megabyte) is freed at once, not at the watcher's next tick.
        let weak = Arc::downgrade(self);
        let id = session.id.clone();
        let pc = Arc::downgrade(&session.pc);
        let timeout = self.limits.connect_timeout;
        tokio::spawn(async move {
            let mut down_since = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(viewers) = weak.upgrade() else { break };
                if !lock(&viewers.sessions).contains_key(&id) {
                    break;
                }
                let Some(pc) = pc.upgrade() else { break };
                if pc.connection_state() == RTCPeerConnectionState::Connected {
                    down_since = Instant::now();
                } else if down_since.elapsed() >= timeout {
                    tracing::info!(session = %id, "viewer not connected within {timeout:?}; ending the session");
                    viewers.remove(&id, "timeout").await;
                    break;
                }
            }
        });

        let input = InputSink {
            tx: self.input.clone(),
            metrics: self.metrics.clone(),
            screen: self.screen.clone(),
            role,
            session: session.id.clone(),
            log: Arc::new(Mutex::new(RateLimitedLog::default())),
            rate: Arc::new(Mutex::new(TokenBucket::new(self.limits.input_per_second, self.limits.input_burst))),
            origin: Instant::now(),
            attention: session.attention.clone(),
            pipelines: self.pipelines.clone(),
            codec,
            viewer: session.number,
        };
        session.pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
            let input = input.clone();
            Box::pin(async move {
                if dc.label() != INPUT_CHANNEL_LABEL {
                    input.reject(&format!(
                        "unknown data channel {:?} (only {INPUT_CHANNEL_LABEL:?} is used)",
                        dc.label()
                    ));
                    let _ = dc.close().await;
                    return;
                }
                // Detached reading with a buffer as large as the SCTP receive window: the
                // default reader's 64 KiB buffer closes the channel on a larger message.
                let opened = dc.clone();
                dc.on_open(Box::new(move || {
                    Box::pin(async move {
                        let raw = match opened.detach().await {
                            Ok(raw) => raw,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot read the input channel");
                                return;
                            }
                        };
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; INPUT_READ_BUFFER_BYTES];
                            loop {
                                match raw.read_data_channel(&mut buf).await {
                                    Ok((0, _)) => break,
                                    Ok((n, is_string)) => input.handle(&buf[..n], is_string),
                                    Err(e) => {
                                        input.reject(&format!("unreadable message ({e})"));
                                        break;
                                    }
                                }
                            }
                        });
                    })
                }));
            })
        }));
    }

    fn start_frames(&self, id: &str, track: Arc<TrackLocalStaticRTP>) {
        let sessions = lock(&self.sessions);
        let Some(session) = sessions.get(id) else { return };
        if session.closed.load(Ordering::SeqCst) || session.streaming.swap(true, Ordering::SeqCst) {
            return;
        }
        let frames = {
            let attention = lock(&session.attention);
            self.pipelines.subscribe(session.codec, session.number, *attention)
        };
        let held = Held { feedback: session.feedback.clone(), origin: session.origin };
        let playout_delay = session.playout_delay_id.map(|id| (id, playout_delay_payload()));
        tokio::spawn(write_frames(frames, track, session.codec, self.metrics.clone(), held, playout_delay));
        if let Some(audio) = &session.audio {
            let packets = self.audio.subscribe();
            let mut ended = session.ended.subscribe();
            let writer = crate::audio::write_packets(packets, audio.clone(), self.metrics.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = writer => {}
                    _ = ended.wait_for(|&e| e) => {}
                }
            });
        }
    }

    /// Ends a session (DELETE, failure, or shutdown). False when there was no such session.
    pub async fn remove(&self, id: &str, reason: &'static str) -> bool {
        let session = lock(&self.sessions).remove(id);
        let Some(session) = session else { return false };
        self.metrics.sessions_ended.with_label_values(&[reason]).inc();
        session.closed.store(true, Ordering::SeqCst);
        session.ended.send_replace(true);
        if session.streaming.load(Ordering::SeqCst) {
            self.pipelines.unsubscribe(session.codec, session.number);
        }
        let _ = session.pc.close().await;
        self.metrics.viewers.set(self.count() as i64);
        tracing::info!(session = %id, reason, viewers = self.count(), "viewer left");
        true
    }

    pub async fn close_all(&self) {
        let ids: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        for id in ids {
            self.remove(&id, "shutdown").await;
        }
    }
}

fn session_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Says one line per kind of problem at most every few seconds, with a count of what it held back.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    const EVERY: Duration = Duration::from_secs(5);

    fn warn(&mut self, session: &str, what: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(session, suppressed = self.suppressed, "input rejected: {what}");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

#[derive(Clone)]
struct InputSink {
    tx: mpsc::Sender<InputMessage>,
    metrics: Arc<Metrics>,
    screen: Arc<crate::pipeline::Screen>,
    role: Role,
    session: String,
    log: Arc<Mutex<RateLimitedLog>>,
    rate: Arc<Mutex<TokenBucket>>,
    origin: Instant,
    /// The session's attention state, and the encoder it is told to.
    attention: Arc<Mutex<Attention>>,
    pipelines: Arc<Pipelines>,
    codec: Codec,
    viewer: u64,
}

impl InputSink {
    fn reject(&self, why: &str) {
        self.metrics.input_events.with_label_values(&["rejected"]).inc();
        lock(&self.log).warn(&self.session, why);
    }

    fn handle(&self, data: &[u8], is_string: bool) {
        if !is_string {
            return self.reject("binary message");
        }
        if data.len() > MAX_MESSAGE_BYTES {
            return self.reject(&format!("{}-byte message", data.len()));
        }
        let parsed = match ChannelMessage::parse(data) {
            Ok(ChannelMessage::Input(m)) => m,
            // Attention is not control: a view-only viewer's counts too.
            Ok(ChannelMessage::Attention(state)) => return self.attend(state),
            Err(e) => return self.reject(&e.to_string()),
        };
        if self.role == Role::View {
            return self.reject("this viewer's token allows viewing only");
        }
        if !lock(&self.rate).allow(self.origin.elapsed()) {
            self.metrics.input_events.with_label_values(&["rate_limited"]).inc();
            lock(&self.log).warn(&self.session, "input rate limit exceeded");
            return;
        }
        let (w, h) = self.screen.size();
        match self.tx.try_send(parsed.clamped(w, h)) {
            Ok(()) => self.metrics.input_events.with_label_values(&["accepted"]).inc(),
            Err(_) => self.metrics.input_events.with_label_values(&["dropped"]).inc(),
        }
    }
}

impl InputSink {
    /// The viewer's attention to this panel changed (within the same rate limit as input).
    fn attend(&self, state: Attention) {
        if !lock(&self.rate).allow(self.origin.elapsed()) {
            self.metrics.input_events.with_label_values(&["rate_limited"]).inc();
            lock(&self.log).warn(&self.session, "input rate limit exceeded");
            return;
        }
        self.metrics.attention_messages.with_label_values(&[state.label()]).inc();
        let mut current = lock(&self.attention);
        if *current != state {
            tracing::debug!(session = %self.session, state = state.label(), "viewer attention");
            *current = state;
            self.pipelines.set_attention(self.codec, self.viewer, state);
        }
    }
}

/// Whether each packet a TWCC feedback covers arrived, in order from its base sequence number.
fn twcc_statuses(cc: &TransportLayerCc) -> impl Iterator<Item = bool> + '_ {
    cc.packet_chunks
        .iter()
        .flat_map(|chunk| -> Box<dyn Iterator<Item = SymbolTypeTcc> + '_> {
            match chunk {
                PacketStatusChunk::RunLengthChunk(run) => {
                    Box::new(std::iter::repeat_n(run.packet_status_symbol, usize::from(run.run_length)))
                }
                PacketStatusChunk::StatusVectorChunk(vector) => Box::new(vector.symbol_list.iter().copied()),
            }
        })
        .take(usize::from(cc.packet_status_count))
        .map(|symbol| symbol != SymbolTypeTcc::PacketNotReceived)
}

/// Where a session keeps what it sent, for resends.
struct Held {
    feedback: Arc<Mutex<ViewerFeedback<RtpPacket>>>,
    origin: Instant,
}

/// Writes packets a viewer's feedback loop decided to send again.
async fn send_again(track: &TrackLocalStaticRTP, packets: Vec<RtpPacket>) {
    for packet in packets {
        if let Err(e) = track.write_rtp(&packet).await {
            tracing::trace!(error = %e, "resend failed");
        }
    }
}

fn keyframe_cause(reason: KeyframeReason) -> KeyframeCause {
    match reason {
        KeyframeReason::Pli => KeyframeCause::Pli,
        KeyframeReason::Fir => KeyframeCause::Fir,
        KeyframeReason::Unrecoverable => KeyframeCause::Unrecoverable,
        KeyframeReason::AfterLoss => KeyframeCause::AfterLoss,
    }
}

/// Packetises frames for one viewer and writes them to its track. `playout_delay` (the
/// extension's negotiated id and payload) goes on every packet, resends included.
async fn write_frames(
    mut frames: mpsc::Receiver<Arc<FramePacket>>,
    track: Arc<TrackLocalStaticRTP>,
    codec: Codec,
    metrics: Arc<Metrics>,
    held: Held,
    playout_delay: Option<(u8, bytes::Bytes)>,
) {
    let mut payloader: Box<dyn Payloader + Send> = match codec {
        Codec::H264 => Box::new(H264Payloader::default()),
        Codec::Vp8 => Box::new(Vp8Payloader::default()),
    };
    use rand::Rng;
    let mut sequence: u16 = rand::rng().random();
    let timestamp_base: u32 = rand::rng().random();
    let mut origin: Option<Instant> = None;
    let label = [codec.label()];
    while let Some(frame) = frames.recv().await {
        let origin = *origin.get_or_insert(frame.encoded_at);
        let elapsed = frame.encoded_at.saturating_duration_since(origin);
        let timestamp = timestamp_base.wrapping_add((elapsed.as_micros() as u64 * 9 / 100) as u32);
        let payloads = match payloader.payload(RTP_PAYLOAD_MTU, &frame.data) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot packetise a frame");
                continue;
            }
        };
        let count = payloads.len();
        let mut failed = false;
        for (i, payload) in payloads.into_iter().enumerate() {
            let mut packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    marker: i + 1 == count,
                    sequence_number: sequence,
                    timestamp,
                    ..Default::default()
                },
                payload,
            };
            if let Some((id, payload)) = &playout_delay {
                if let Err(e) = packet.header.set_extension(*id, payload.clone()) {
                    tracing::trace!(error = %e, "cannot add the playout-delay extension");
                }
            }
            sequence = sequence.wrapping_add(1);
            match track.write_rtp(&packet).await {
                Ok(_) => {
                    let (seq, bytes) = (packet.header.sequence_number, packet.payload.len() + 12);
                    lock(&held.feedback).on_sent(seq, packet, bytes, held.origin.elapsed());
                }
                Err(e) => {
                    // Not yet connected, or gone: the frame is lost for this viewer only.
                    tracing::trace!(error = %e, "RTP write failed");
                    failed = true;
                }
            }
        }
        if !failed {
            metrics.frames_sent.with_label_values(&label).inc();
            metrics.bytes_sent.with_label_values(&label).inc_by(frame.data.len() as u64);
            if let Some(at) = frame.damaged_at {
                metrics.update_to_send_seconds.observe(at.elapsed().as_secs_f64());
            }
        }
    }
}
