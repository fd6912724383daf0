//! Prometheus metrics, served as text at `GET /metrics`.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the agent exports. Names carry units; `docs/protocol.md` lists them (a test keeps
/// the two in step).
pub struct Metrics {
    registry: Registry,
    /// The name of every metric registered, in registration order.
    names: Vec<String>,
    pub frames_captured: IntCounter,
    pub frames_encoded: IntCounterVec,
    pub frames_sent: IntCounterVec,
    pub frames_dropped: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    pub keyframes: IntCounterVec,
    pub topoff_frames: IntCounterVec,
    pub budget_waits: IntCounterVec,
    pub keyframe_requests: IntCounterVec,
    pub nack_packets: IntCounterVec,
    pub encode_seconds: HistogramVec,
    /// CPU time of the encoder threads by stage (`convert`, `encode`), read from the thread's own
    /// CPU clock: what the encoder itself costs, beside the process's total.
    pub encoder_cpu_seconds: CounterVec,
    /// 16×16 tiles of the frames the encoder threads made (`tiles=all`) and of those, the ones
    /// the damage touched (`tiles=changed`): converted, and for H.264 the only ones coded.
    pub encoder_tiles: IntCounterVec,
    pub update_to_send_seconds: Histogram,
    pub viewers: IntGauge,
    pub input_events: IntCounterVec,
    pub vnc_reconnects: IntCounter,
    pub vnc_connected: IntGauge,
    pub vnc_updates: IntCounter,
    pub whep_requests: IntCounterVec,
    pub auth_refused: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub bitrate_target_kbps: prometheus::IntGaugeVec,
    pub retransmits: IntCounterVec,
    pub retransmits_dequeued: IntCounterVec,
    pub viewer_rtt_seconds: Histogram,
    pub loss_ratio: prometheus::GaugeVec,
    pub audio_state: IntGauge,
    pub audio_chunks: IntCounterVec,
    pub audio_frames: IntCounterVec,
    pub audio_packets_sent: IntCounter,
    pub audio_bytes_sent: IntCounter,
    pub audio_encode_seconds: Histogram,
    pub vm_control: IntCounterVec,
    pub qmp_connected: IntGauge,
    pub attention_state: prometheus::IntGaugeVec,
    pub attention_messages: IntCounterVec,
    pub encoder_fps_cap: prometheus::IntGaugeVec,
    pub vnc_request_fps: prometheus::Gauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    (registry, names): (&Registry, &std::cell::RefCell<Vec<String>>),
    metric: T,
) -> T {
    names.borrow_mut().extend(metric.desc().iter().map(|d| d.fq_name.clone()));
    // Registration fails only on duplicate names, which is a programming error caught by tests.
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl Metrics {
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let reg = (&registry, &names);
        let latency_buckets =
            vec![0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.035, 0.050, 0.1, 0.25, 1.0];
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        Self {
            frames_captured: register(
                reg,
                counter("loco_frames_captured_total", "Framebuffer updates received from the VNC server"),
            ),
            vnc_updates: register(reg, counter("loco_vnc_rects_total", "Rectangles applied to the framebuffer")),
            frames_encoded: register(reg, counter_vec("loco_frames_encoded_total", "Frames encoded", &["codec"])),
            frames_sent: register(
                reg,
                counter_vec(
                    "loco_frames_sent_total",
                    "Frames written to viewers' video tracks (per viewer)",
                    &["codec"],
                ),
            ),
            frames_dropped: register(
                reg,
                counter_vec("loco_frames_dropped_total", "Frames not sent to a viewer that was too slow", &["codec"]),
            ),
            bytes_sent: register(
                reg,
                counter_vec("loco_bytes_sent_total", "Encoded video bytes written to viewers (per viewer)", &["codec"]),
            ),
            keyframes: register(reg, counter_vec("loco_keyframes_total", "Keyframes encoded", &["codec"])),
            topoff_frames: register(
                reg,
                counter_vec(
                    "loco_topoff_frames_total",
                    "Still periods after motion: a top-off frame sent (result=sent) or not needed (result=skipped)",
                    &["codec", "result"],
                ),
            ),
            budget_waits: register(
                reg,
                counter_vec(
                    "loco_bitrate_budget_waits_total",
                    "Frames held back because the bits encoded ran over half a second of the bitrate target",
                    &["codec"],
                ),
            ),
            keyframe_requests: register(
                reg,
                counter_vec(
                    "loco_keyframe_requests_total",
                    "Keyframe requests by cause (new viewer, PLI, FIR, slow viewer, unrecoverable NACK, after a lossy spell, attention: the panel came back into view)",
                    &["cause"],
                ),
            ),
            nack_packets: register(
                reg,
                counter_vec(
                    "loco_nack_packets_total",
                    "RTP packets named in viewers' RTCP NACKs, every time (receivers repeat NACKs until the packet arrives)",
                    &["codec"],
                ),
            ),
            encode_seconds: register(
                reg,
                HistogramVec::new(
                    HistogramOpts::new(
                        "loco_encode_seconds",
                        "Time to convert and encode one frame (colour conversion + encoder)",
                    )
                    .buckets(latency_buckets.clone()),
                    &["codec"],
                )
                .expect("valid metric"),
            ),
            encoder_cpu_seconds: register(
                reg,
                CounterVec::new(
                    Opts::new(
                        "loco_encoder_cpu_seconds_total",
                        "CPU time of the encoder threads: colour conversion (stage=convert) and the encoder library (stage=encode; its own threads are not counted with --encoder-threads above 1)",
                    ),
                    &["codec", "stage"],
                )
                .expect("valid metric"),
            ),
            encoder_tiles: register(
                reg,
                IntCounterVec::new(
                    Opts::new(
                        "loco_encoder_tiles_total",
                        "16x16 tiles of the frames the encoders made (tiles=all) and those the VNC damage touched (tiles=changed): converted to I420, and for H.264 the only ones x264 codes",
                    ),
                    &["codec", "tiles"],
                )
                .expect("valid metric"),
            ),
            update_to_send_seconds: register(
                reg,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "loco_update_to_send_seconds",
                        "From a VNC framebuffer update arriving to its frame being written to a viewer's track",
                    )
                    .buckets(latency_buckets),
                )
                .expect("valid metric"),
            ),
            viewers: register(
                reg,
                IntGauge::new("loco_viewers", "Connected WHEP viewers").expect("valid metric"),
            ),
            input_events: register(
                reg,
                counter_vec(
                    "loco_input_events_total",
                    "Input events from viewers: accepted, rejected (malformed or not allowed), rate_limited, dropped (no VNC)",
                    &["result"],
                ),
            ),
            vnc_reconnects: register(
                reg,
                counter("loco_vnc_reconnects_total", "VNC connections made after the first one"),
            ),
            vnc_connected: register(
                reg,
                IntGauge::new("loco_vnc_connected", "1 while the VNC connection is up").expect("valid metric"),
            ),
            whep_requests: register(
                reg,
                counter_vec("loco_whep_requests_total", "WHEP requests by HTTP status", &["status"]),
            ),
            auth_refused: register(
                reg,
                counter_vec(
                    "loco_auth_refused_total",
                    "WHEP requests refused for their key: no_key, wrong_key, throttled (too many wrong keys from that address)",
                    &["reason"],
                ),
            ),
            bitrate_target_kbps: register(
                reg,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "loco_bitrate_target_kbps",
                        "The encoder's target bitrate: --bitrate-kbps, lowered while a viewer reports loss",
                    ),
                    &["codec"],
                )
                .expect("valid metric"),
            ),
            retransmits: register(
                reg,
                counter_vec(
                    "loco_retransmits_total",
                    "What the agent did with each NACKed packet: resent, unknown (never sent), \
                     expired (older than 1 s or overwritten; asks for a keyframe), too_soon (resent within the last 1.5 round trips), too_many (resent 4 times; asks for a keyframe), \
                     queued (over the resend budget of half the media bytes + 16 KiB/s: sent when it allows, \
                     see loco_retransmits_dequeued_total; expired while queued counts as expired)",
                    &["codec", "outcome"],
                ),
            ),
            retransmits_dequeued: register(
                reg,
                counter_vec(
                    "loco_retransmits_dequeued_total",
                    "Queued resends sent once the resend budget allowed",
                    &["codec"],
                ),
            ),
            viewer_rtt_seconds: register(
                reg,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "loco_viewer_rtt_seconds",
                        "Round-trip times to viewers, from their RTCP receiver reports",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0]),
                )
                .expect("valid metric"),
            ),
            loss_ratio: register(
                reg,
                prometheus::GaugeVec::new(
                    Opts::new(
                        "loco_viewer_loss_ratio",
                        "Latest loss a viewer showed, what its bitrate controller acts on: from TWCC \
                         feedback (loss before retransmission, source=twcc) or, for viewers without \
                         TWCC, the share of packets it NACKed or its receiver reports' fraction lost, whichever is larger (source=nack)",
                    ),
                    &["codec", "source"],
                )
                .expect("valid metric"),
            ),
            sessions_ended: register(
                reg,
                counter_vec(
                    "loco_sessions_ended_total",
                    "Viewer sessions ended, by reason: deleted, failed, closed, timeout, shutdown, refused_full",
                    &["reason"],
                ),
            ),
            audio_state: register(
                reg,
                IntGauge::new(
                    "loco_audio_state",
                    "The VM's sound: -1 off (--audio off), 0 unavailable (the VNC server offers no audio), \
                     1 available and quiet, 2 a guest program is playing",
                )
                .expect("valid metric"),
            ),
            audio_chunks: register(
                reg,
                counter_vec(
                    "loco_audio_chunks_total",
                    "PCM chunks from the VNC server: received, or dropped (the audio encoder was behind)",
                    &["result"],
                ),
            ),
            audio_frames: register(
                reg,
                counter_vec(
                    "loco_audio_frames_total",
                    "20 ms audio frames: encoded (Opus), silent (not encoded), dtx (encoded, not sent: Opus \
                     discontinuous transmission), idle (no viewer listening)",
                    &["result"],
                ),
            ),
            audio_packets_sent: register(
                reg,
                counter("loco_audio_packets_sent_total", "Opus RTP packets written to viewers' audio tracks (per viewer)"),
            ),
            audio_bytes_sent: register(
                reg,
                counter("loco_audio_bytes_sent_total", "Opus payload bytes written to viewers' audio tracks (per viewer)"),
            ),
            audio_encode_seconds: register(
                reg,
                Histogram::with_opts(
                    HistogramOpts::new("loco_audio_encode_seconds", "Time to Opus-encode one 20 ms frame")
                        .buckets(vec![0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01]),
                )
                .expect("valid metric"),
            ),
            vm_control: register(
                reg,
                counter_vec(
                    "loco_vm_control_total",
                    "VM control requests (POST /control/ACTION) by action and result: ok, forbidden (a view-only key), \
                     conflict (makes no sense now, or QEMU refused), unavailable (no QMP, or QEMU did not answer)",
                    &["action", "result"],
                ),
            ),
            qmp_connected: register(
                reg,
                IntGauge::new("loco_qmp_connected", "1 while the agent's QMP connection to its QEMU is up")
                    .expect("valid metric"),
            ),
            attention_state: register(
                reg,
                prometheus::IntGaugeVec::new(
                    Opts::new(
                        "loco_attention_state",
                        "The most attentive state among an encoder's viewers: 0 hidden, 1 visible, 2 focused \
                         (-1: the encoder stopped)",
                    ),
                    &["codec"],
                )
                .expect("valid metric"),
            ),
            attention_messages: register(
                reg,
                counter_vec(
                    "loco_attention_messages_total",
                    "Attention messages accepted from viewers on the input channel, by state",
                    &["state"],
                ),
            ),
            encoder_fps_cap: register(
                reg,
                prometheus::IntGaugeVec::new(
                    Opts::new("loco_encoder_fps_cap", "The encoder's frame-rate cap now (its viewers' attention)"),
                    &["codec"],
                )
                .expect("valid metric"),
            ),
            vnc_request_fps: register(
                reg,
                prometheus::Gauge::new(
                    "loco_vnc_request_fps",
                    "How many screen updates a second the agent asks its VNC server for now (its fastest encoder's cap)",
                )
                .expect("valid metric"),
            ),
            registry,
            names: names.into_inner(),
        }
    }

    /// The names of the metric families `GET /metrics` exports (labelled ones appear there once
    /// they have a first sample).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::new();
        m.frames_encoded.with_label_values(&["h264"]).inc();
        m.input_events.with_label_values(&["rejected"]).inc_by(3);
        m.update_to_send_seconds.observe(0.004);
        let text = m.render();
        for name in [
            "loco_frames_captured_total",
            "loco_frames_encoded_total{codec=\"h264\"} 1",
            "loco_input_events_total{result=\"rejected\"} 3",
            "loco_update_to_send_seconds_bucket",
            "loco_viewers 0",
            "loco_vnc_reconnects_total 0",
            "loco_vnc_connected 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    /// docs/protocol.md's metrics table names exactly the metrics the agent exports.
    #[test]
    fn protocol_doc_lists_every_metric_and_no_other() {
        let doc = include_str!("../../docs/protocol.md");
        let documented: std::collections::BTreeSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|rest| rest.split(['`', '{']).next())
            .filter(|name| name.starts_with("loco_"))
            .collect();
        let m = Metrics::new();
        let exported: std::collections::BTreeSet<&str> = m.names().iter().map(String::as_str).collect();
        assert_eq!(exported.len(), m.names().len(), "a metric is registered twice");
        let undocumented: Vec<_> = exported.difference(&documented).collect();
        let gone: Vec<_> = documented.difference(&exported).collect();
        assert!(
            undocumented.is_empty() && gone.is_empty(),
            "docs/protocol.md's metrics table is out of step with agent/src/metrics.rs: \
             exported but not documented {undocumented:?}; documented but not exported {gone:?}"
        );
        // And each one really shows in /metrics once it has a sample (unlabelled ones at once).
        let text = m.render();
        for name in ["loco_frames_captured_total", "loco_viewers", "loco_vnc_connected", "loco_viewer_rtt_seconds"] {
            assert!(text.contains(name), "{name} missing from /metrics");
        }
    }
}
