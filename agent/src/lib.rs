//! `loco-agent`: one per VM. Connects to the VM's VNC server, encodes the screen when it
//! changes, serves it to WebRTC viewers behind a WHEP endpoint, and turns their input back
//! into VNC events.
//!
//! The process is a thin I/O loop around pure logic in `loco-shared` (protocol parsing, frame
//! pacing, damage): one task for VNC ([`vnc`]), one encoder thread per codec in use
//! ([`pipeline`]), one set of tasks per viewer ([`peer`]), and the HTTP server ([`http`]).
//! See ARCHITECTURE.md for how a frame and an input event travel.
//!
//! The agent is a library (this crate) and a thin binary (`src/main.rs`: argument errors,
//! logging, the runtime). The library exposes its modules so that tests and the fuzz targets
//! (`fuzz/`) can drive the real code: the WHEP router ([`http::router`]) and the VNC session
//! over any byte stream ([`vnc::VncTask::run_stream`]).

pub mod audio;
pub mod encode;
pub mod framebuffer;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod pipeline;
pub mod qmp;
pub mod turn;
pub mod vnc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::{mpsc, watch};

use crate::encode::Codec;

/// Streams one VM's VNC screen to WebRTC viewers (WHEP) and takes their input back.
#[derive(Parser, Debug)]
#[command(name = "loco-agent", version, about, long_about = None)]
pub struct Args {
    /// The VM's VNC server: HOST:PORT, or unix:PATH for QEMU's `-vnc unix:PATH`.
    #[arg(long, value_parser = vnc::parse_vnc_addr)]
    vnc: vnc::VncAddr,

    /// Where to serve WHEP, /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = vnc::parse_listen)]
    listen: SocketAddr,

    /// Codec for viewers that do not ask for one (`POST /whep?codec=vp8`).
    #[arg(long, default_value = "h264")]
    codec: Codec,

    /// Upper bound on the frames encoded per second (frames are sent only when the screen changes).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=120))]
    max_fps: u32,

    /// Frame-rate cap while the most attentive viewer says this desktop's panel is only
    /// visible (in view, not focused); the bitrate falls by the same ratio.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=120))]
    visible_fps: u32,

    /// Frame-rate cap while every viewer says the panel is hidden (out of view); 0 sends
    /// nothing until it is back in view (then a keyframe at once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=120))]
    hidden_fps: u32,

    /// Target video bitrate in kbit/s (constant-bitrate rate control, per encoder).
    #[arg(long, default_value_t = 6000, value_parser = clap::value_parser!(u32).range(100..=100_000))]
    bitrate_kbps: u32,

    /// Rate control: `crf` (H.264: constant quality under the bitrate cap, a wide motion
    /// search, one top-off frame after motion) or `cbr` (constant bitrate, two refinement
    /// frames after motion: the H.264 encoder before `crf`). VP8 is CBR either way.
    #[arg(long, value_enum, default_value_t = encode::RateMode::Crf)]
    rate_control: encode::RateMode,

    /// x264's rate factor with `--rate-control crf` (0-51; lower is finer and costs more).
    #[arg(long, default_value_t = 23.0, value_parser = parse_crf)]
    crf: f32,

    /// The finest quantiser x264 may use (0-51). Default: 20 with `crf`, none (0) with `cbr`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=51))]
    qp_min: Option<u32>,

    /// Lowest bitrate the loss-based congestion control may go down to, in kbit/s.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(50..=100_000))]
    min_bitrate_kbps: u32,

    /// Encoder threads per codec (1 keeps nine agents on a small host fair to each other).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    encoder_threads: u32,

    /// Require `Authorization: Bearer TOKEN` for WHEP and input. Prefer --token-file or
    /// LOCO_TOKEN in production: command lines are visible to other users of the host.
    #[arg(long, env = "LOCO_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Read the bearer token from this file (first line).
    #[arg(long, conflicts_with = "token")]
    token_file: Option<PathBuf>,

    /// A second token that may watch but not send input (input from it is refused and counted).
    #[arg(long, env = "LOCO_VIEW_TOKEN", hide_env_values = true)]
    view_token: Option<String>,

    /// Read the view-only token from this file (first line).
    #[arg(long, conflicts_with = "view_token")]
    view_token_file: Option<PathBuf>,

    /// VNC password, if the server asks for one.
    #[arg(long, env = "LOCO_VNC_PASSWORD", hide_env_values = true)]
    vnc_password: Option<String>,

    /// STUN/TURN server for ICE, e.g. `turn:turn.example:3478?transport=udp`. Repeatable.
    #[arg(long = "ice-server")]
    ice_servers: Vec<String>,

    /// Username for the TURN servers given with --ice-server.
    #[arg(long, env = "LOCO_TURN_USERNAME")]
    turn_username: Option<String>,

    /// Password for the TURN servers given with --ice-server.
    #[arg(long, env = "LOCO_TURN_PASSWORD", hide_env_values = true, conflicts_with = "turn_secret_file")]
    turn_password: Option<String>,

    /// Mint TURN credentials for each session from the secret in this file (first line), shared
    /// with the TURN server (coturn `use-auth-secret`, STUNner `ephemeral`), instead of a static
    /// username and password. Viewers get them in the answer's Link headers and from GET /ice.
    #[arg(long, env = "LOCO_TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,

    /// How long a minted TURN credential is valid, seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    turn_ttl_s: u64,

    /// STUN/TURN server viewers are told to use (default: the --ice-server ones), e.g. the
    /// public address of a TURN server the agent reaches under an in-cluster name. Repeatable.
    #[arg(long = "viewer-ice-server")]
    viewer_ice_servers: Vec<String>,

    /// Serve all WebRTC media on this one UDP port (instead of an ephemeral port per viewer).
    /// Experimental: with webrtc-ice's UDP mux some sessions were seen to stay in ICE
    /// "checking" under load; ephemeral ports (the default) have not shown this.
    #[arg(long)]
    udp_port: Option<u16>,

    /// Advertise this address in ICE candidates instead of the host's own (1:1 NAT). Repeatable.
    #[arg(long = "public-ip")]
    public_ips: Vec<String>,

    /// Most viewers at once (more get 503).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1000))]
    max_viewers: u64,

    /// Input events per second one viewer may send on average (bursts of a quarter second
    /// above it pass); more are dropped and counted as rate_limited.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_input_per_sec: u32,

    /// Seconds a viewer session may stay unconnected (never connected, or dropped) before it ends.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    session_timeout_s: u64,

    /// The VM's sound: `on` asks the VNC server for it (QEMU's audio extension, QEMU started
    /// with `-vnc ...,audiodev=ID`) and gives every viewer whose offer has an audio m-line an
    /// Opus track; `off` streams video only.
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    audio: bool,

    /// The RTP playout-delay header extension: `on` negotiates it with viewers whose offer
    /// lists it (Chromium) and puts min = max = 0 on every video packet, so the browser shows
    /// each frame as soon as it is decoded instead of holding it in its jitter buffer; `off`
    /// leaves it out of the answer (for benchmarking the difference).
    #[arg(long, default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    playout_delay: bool,

    /// Opus bitrate while the VM plays sound, in kbit/s (silence costs next to nothing).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(6..=510))]
    audio_bitrate_kbps: u32,

    /// QEMU's QMP socket, unix:PATH (QEMU `-qmp unix:PATH,server=on,wait=off`; a socket of the
    /// agent's own: QEMU serves one client per QMP socket). Enables VM control (`/control`:
    /// reset, ACPI power-off, power-on, snapshot, revert) for the control token. Only Unix
    /// sockets: VM control never goes over the network. Without it `/control` answers 503.
    #[arg(long, value_parser = qmp::parse_qmp_addr)]
    qmp: Option<PathBuf>,

    /// Longest wait between VNC reconnection attempts, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    max_backoff_ms: u64,
}

/// Runs the agent until SIGINT/SIGTERM: binds `--listen`, starts the VNC task and serves HTTP.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let token = read_token("--token-file", args.token.as_deref(), args.token_file.as_deref())?;
    let view_token = read_token("--view-token-file", args.view_token.as_deref(), args.view_token_file.as_deref())?;
    if view_token.is_some() && token.is_none() {
        anyhow::bail!("a view-only token needs a control token too (--token): otherwise anyone could control the VM");
    }
    let turn_secret = read_token("--turn-secret-file", None, args.turn_secret_file.as_deref())?;
    let ice_servers = turn::IceServers::new(
        &args.ice_servers,
        &args.viewer_ice_servers,
        args.turn_username.as_deref().unwrap_or_default(),
        args.turn_password.as_deref().unwrap_or_default(),
        turn_secret.map(|s| turn::TurnRest::new(&s, Duration::from_secs(args.turn_ttl_s))),
    );

    // Bind first: a port in use is a start-up error, not something to retry.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;

    let metrics = Arc::new(metrics::Metrics::new());
    let screen = Arc::new(pipeline::Screen::default());
    let pipelines = pipeline::Pipelines::new(
        pipeline::PipelineConfig {
            bitrate_kbps: args.bitrate_kbps,
            max_fps: args.max_fps,
            encoder_threads: args.encoder_threads,
            visible_fps: args.visible_fps,
            hidden_fps: args.hidden_fps,
            min_bitrate_kbps: args.min_bitrate_kbps.min(args.bitrate_kbps),
            rate: encode::RateSettings {
                mode: args.rate_control,
                crf: args.crf,
                qp_min: args.qp_min.unwrap_or_else(|| encode::RateSettings::default_qp_min(args.rate_control)),
            },
        },
        screen.clone(),
        metrics.clone(),
    );
    let audio = audio::AudioHub::new(
        audio::AudioConfig { enabled: args.audio, bitrate_bps: (args.audio_bitrate_kbps * 1000) as i32 },
        metrics.clone(),
    );
    let (input_tx, input_rx) = mpsc::channel(1024);
    let factory = peer::PeerFactory::new(
        peer::IceConfig { servers: ice_servers, udp_mux_port: args.udp_port, nat_1to1_ips: args.public_ips.clone() },
        args.playout_delay,
    )
    .await?;
    let limits = peer::Limits {
        max_viewers: args.max_viewers as usize,
        input_per_second: args.max_input_per_sec,
        input_burst: (args.max_input_per_sec / 4).max(1),
        connect_timeout: Duration::from_secs(args.session_timeout_s),
        min_bitrate_kbps: args.min_bitrate_kbps.min(args.bitrate_kbps),
        max_bitrate_kbps: args.bitrate_kbps,
    };
    let viewers = peer::Viewers::new(
        factory,
        pipelines.clone(),
        audio.clone(),
        metrics.clone(),
        input_tx,
        screen.clone(),
        limits,
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let vnc_task = tokio::spawn(
        vnc::VncTask {
            config: vnc::VncConfig {
                addr: args.vnc.clone(),
                password: args.vnc_password.clone(),
                connect_timeout: Duration::from_secs(3),
                max_backoff: Duration::from_millis(args.max_backoff_ms.max(50)),
            },
            screen: screen.clone(),
            pipelines: pipelines.clone(),
            audio,
            metrics: metrics.clone(),
            input: input_rx,
            shutdown: shutdown_rx.clone(),
            said_no_audio: false,
        }
        .run(),
    );

    let vm = match &args.qmp {
        Some(path) => qmp::Vm::start(qmp::QmpConfig::new(path.clone()), metrics.clone(), shutdown_rx.clone()),
        None => qmp::Vm::disabled(),
    };

    let state = Arc::new(http::AppState {
        viewers: viewers.clone(),
        pipelines,
        screen,
        metrics,
        default_codec: args.codec,
        tokens: http::Tokens { control: token.into_iter().collect(), view: view_token.into_iter().collect() },
        guard: http::key_guard(),
        started: std::time::Instant::now(),
        vm,
    });
    let qmp_shown = args.qmp.as_ref().map_or_else(|| "off".to_owned(), |p| format!("unix:{}", p.display()));
    tracing::info!(listen = %args.listen, vnc = %args.vnc, codec = %args.codec, qmp = %qmp_shown, "loco-agent ready");
    let mut shutdown_http = shutdown_rx.clone();
    let app = http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = shutdown_http.changed().await;
    });
    let server = tokio::spawn(async move { server.await });

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    viewers.close_all().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), vnc_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    Ok(())
}

/// The command line of a loco binary, or the process ends: clap's own text and status 0 for
/// `--help`/`--version`, one clear line (`NAME: what is wrong`) and status 2 for a mistake.
pub fn parse_args_or_exit<A: Parser>(name: &str) -> A {
    match A::try_parse() {
        Ok(a) => a,
        Err(e) => {
            if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let first = e.to_string().lines().next().unwrap_or("invalid arguments").to_owned();
            eprintln!("{name}: {}", first.trim_start_matches("error: "));
            std::process::exit(2);
        }
    }
}

/// The agent's glibc malloc settings; called first in `main`, before any other thread exists.
///
/// - One arena: glibc gives each thread that allocates its own heap arena; with a runtime,
///   encoder and WebRTC threads that is megabytes of resident memory nine agents pay for
///   nothing. Two arenas still kept the big buffers' free space twice over: a full-motion
///   agent's peak RSS was 35.5–39.1 MiB with two and 35.0–36.5 with one, agent CPU per frame
///   the same within the spread (`./loco bench-agent`, four runs each, alternating).
/// - Big buffers stay in the heap: a full-screen VNC update (3 MiB of raw pixels at 1024×768)
///   is allocated and freed for every frame of motion. With glibc's defaults those came from
///   mmap or were trimmed back to the kernel on free, so every frame faulted its pages in
///   again and zeroed them: `perf record` on an agent streaming a full-screen pan put 39 % of
///   its samples in the kernel, mostly page faults, page clearing and unmapping. With the mmap
///   threshold at 32 MiB and the trim threshold at 128 MiB: 14.5 %, and 5.0 instead of 7.2 ms
///   of agent CPU per frame (`benchmark/README.md`, "Agent CPU"), resident memory about the same.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// A rate factor 0-51 for clap.
fn parse_crf(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if (0.0..=51.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a rate factor from 0 to 51")),
    }
}

/// `on`/`off` (also `true`/`false`, `1`/`0`) for clap.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not on or off")),
    }
}

/// A token from its flag/environment value or the first line of its file; empty is an error.
fn read_token(file_flag: &str, value: Option<&str>, file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let token = match (value, file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read {file_flag} {}", path.display()))?;
            text.lines().next().unwrap_or("").trim().to_owned()
        }
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        anyhow::bail!("a token is empty");
    }
    Ok(Some(token))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
