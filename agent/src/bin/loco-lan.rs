//! `loco-lan`: the guest LAN's Ethernet switch. Every VM's NIC joins it as a QEMU `-netdev
//! stream` client (TCP, or a Unix socket on one host): each frame travels as a 4-byte big-endian
//! length and the frame. The switching (learning, flooding, ageing, limits) is
//! [`loco_shared::lan::Switch`]; this file does the sockets, the DHCP relay's UDP socket to the
//! LAN's DHCP server (kea-dhcp4 beside it), and `/metrics` + `/healthz`.
//!
//! A slow or stuck VM never stalls the others: each port has a bounded send queue and frames that
//! do not fit are dropped (counted). A malformed frame is dropped; a length no QEMU sends (over
//! 64 KiB) ends only that VM's connection, and QEMU reconnects by itself (`reconnect-ms`).
//! Needs no privilege and writes nothing but its Unix socket(s).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use clap::Parser;
use loco_shared::lan::{DropReason, Forward, PortId, RelayConfig, Switch, SwitchConfig};
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The longest length prefix accepted: QEMU never sends more than 64 KiB at once (its NET_BUFSIZE
/// is a little above); anything longer means the stream is out of step.
const MAX_WIRE_LEN: usize = 65_536;
/// Frames queued for one port before further ones are dropped.
const PORT_QUEUE: usize = 512;
/// The switch's own MAC (locally administered): the source of relayed DHCP replies.
const SWITCH_MAC: [u8; 6] = [0x02, 0x4c, 0x4f, 0x43, 0x4f, 0x01];

#[derive(Parser, Debug)]
#[command(name = "loco-lan", version, about = "The guest LAN's Ethernet switch (QEMU -netdev stream clients)")]
struct Args {
    /// Where VMs connect: tcp:HOST:PORT or unix:PATH (repeatable).
    #[arg(long, required = true)]
    listen: Vec<String>,
    /// The LAN's DHCP server to relay requests to, e.g. 127.0.0.1:1067 (kea-dhcp4 -p 1067; it
    /// answers to the relay's own port, RFC 8357). Without it, DHCP frames are only switched.
    #[arg(long)]
    dhcp_server: Option<SocketAddrV4>,
    /// The relay's UDP socket: its address is the giaddr the server replies to (on loopback beside
    /// the server); port 0 takes any free one.
    #[arg(long, default_value = "127.0.0.2:0")]
    relay_bind: SocketAddrV4,
    /// The switch's address on the LAN: the subnet the server hands out from, and the source of
    /// the replies it relays.
    #[arg(long, default_value = "10.98.0.1")]
    lan_ip: Ipv4Addr,
    /// /healthz and /metrics over HTTP, e.g. 0.0.0.0:9799.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// The most VMs connected at once; more are refused.
    #[arg(long, default_value_t = 64)]
    max_ports: usize,
    /// Source MACs one port may own at once.
    #[arg(long, default_value_t = 16)]
    macs_per_port: usize,
    /// Seconds an address stays learned without traffic from it.
    #[arg(long, default_value_t = 300)]
    ageing_s: u64,
}

enum Listen {
    Tcp(String),
    Unix(PathBuf),
}

fn parse_listen(s: &str) -> anyhow::Result<Listen> {
    if let Some(p) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        return Ok(Listen::Unix(PathBuf::from(p)));
    }
    if let Some(a) = s.strip_prefix("tcp:").filter(|a| a.contains(':')) {
        return Ok(Listen::Tcp(a.to_owned()));
    }
    bail!("--listen takes tcp:HOST:PORT or unix:PATH, not {s:?}")
}

struct Metrics {
    registry: Registry,
    ports: IntGauge,
    /// loco_lan_frames_total for each kind and the queue-full drops, looked up once: counted on every frame.
    unicast: IntCounter,
    flooded: IntCounter,
    undelivered: IntCounter,
    queue_full: IntCounter,
    dropped: IntCounterVec,
    bytes: IntCounter,
    entries: IntGauge,
    relayed: IntCounterVec,
    closed: IntCounterVec,
}

impl Metrics {
    fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let ports = IntGauge::new("loco_lan_ports", "VM connections to the switch now")?;
        let frames = IntCounterVec::new(
            Opts::new("loco_lan_frames_total", "Frames received, by what the switch did with them"),
            &["kind"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new("loco_lan_dropped_total", "Frames (or copies of frames) not delivered, by reason"),
            &["reason"],
        )?;
        let bytes = IntCounter::new("loco_lan_bytes_total", "Bytes of frames received")?;
        let entries = IntGauge::new("loco_lan_mac_table_entries", "Learned MAC addresses")?;
        let relayed = IntCounterVec::new(
            Opts::new("loco_lan_dhcp_relayed_total", "DHCP messages relayed, by direction"),
            &["direction"],
        )?;
        let closed =
            IntCounterVec::new(Opts::new("loco_lan_ports_closed_total", "VM connections ended, by why"), &["reason"])?;
        registry.register(Box::new(ports.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(relayed.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        for r in DropReason::ALL {
            dropped.with_label_values(&[r.label()]);
        }
        for r in ["queue_full", "relay_send", "bad_reply"] {
            dropped.with_label_values(&[r]);
        }
        for d in ["to_server", "to_client"] {
            relayed.with_label_values(&[d]);
        }
        for r in ["eof", "bad_length", "error", "refused"] {
            closed.with_label_values(&[r]);
        }
        let (unicast, flooded, undelivered) = (
            frames.with_label_values(&["unicast"]),
            frames.with_label_values(&["flood"]),
            frames.with_label_values(&["dropped"]),
        );
        let queue_full = dropped.with_label_values(&["queue_full"]);
        Ok(Self {
            registry,
            ports,
            unicast,
            flooded,
            undelivered,
            queue_full,
            dropped,
            bytes,
            entries,
            relayed,
            closed,
        })
    }

    fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("metrics: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

struct Hub {
    switch: Switch,
    ports: HashMap<PortId, mpsc::Sender<Bytes>>,
}

struct Lan {
    hub: Mutex<Hub>,
    start: Instant,
    next_port: AtomicU32,
    max_ports: usize,
    metrics: Metrics,
    relay: Option<(tokio::net::UdpSocket, SocketAddrV4)>,
}

impl Lan {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock would be a bug in Switch; the table is still usable.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame from a port: switch it, and hand a DHCP request to the relay.
    fn on_frame(&self, port: PortId, frame: &[u8]) {
        self.metrics.bytes.inc_by(frame.len() as u64);
        let now = self.now();
        let relay = {
            let mut hub = self.hub();
            let decision = hub.switch.frame(now, port, frame);
            self.metrics.entries.set(hub.switch.entries() as i64);
            self.deliver(&hub, decision.forward, frame);
            decision.relay
        };
        if let (Some(payload), Some((sock, server))) = (relay, &self.relay) {
            match sock.try_send_to(&payload, SocketAddr::V4(*server)) {
                Ok(_) => self.metrics.relayed.with_label_values(&["to_server"]).inc(),
                Err(e) => {
                    tracing::warn!("DHCP relay: cannot send to {server}: {e}");
                    self.metrics.dropped.with_label_values(&["relay_send"]).inc();
                }
            }
        }
    }

    /// Queues the frame for the ports `forward` names, under the same lock that decided it
    /// (`try_send` never waits: a full queue drops that copy only).
    fn deliver(&self, hub: &Hub, forward: Forward, frame: &[u8]) {
        let m = &self.metrics;
        let wire = || {
            let mut wire = Vec::with_capacity(4 + frame.len());
            wire.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            wire.extend_from_slice(frame);
            Bytes::from(wire)
        };
        let send = |tx: &mpsc::Sender<Bytes>, wire: Bytes| {
            if tx.try_send(wire).is_err() {
                m.queue_full.inc();
            }
        };
        match forward {
            Forward::To(p) => {
                m.unicast.inc();
                if let Some(tx) = hub.ports.get(&p) {
                    send(tx, wire());
                }
            }
            Forward::Flood { except } => {
                m.flooded.inc();
                let mut others = hub.ports.iter().filter(|(p, _)| Some(**p) != except).peekable();
                if others.peek().is_some() {
                    let wire = wire();
                    for (_, tx) in others {
                        send(tx, wire.clone());
                    }
                }
            }
            Forward::Drop(r) => {
                m.undelivered.inc();
                m.dropped.with_label_values(&[r.label()]).inc();
            }
        }
    }

    fn add_port(&self) -> Option<(PortId, mpsc::Receiver<Bytes>)> {
        let mut hub = self.hub();
        if hub.ports.len() >= self.max_ports {
            return None;
        }
        let id = self.next_port.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PORT_QUEUE);
        hub.ports.insert(id, tx);
        self.metrics.ports.set(hub.ports.len() as i64);
        Some((id, rx))
    }

    fn remove_port(&self, id: PortId, reason: &str) {
        let mut hub = self.hub();
        hub.ports.remove(&id);
        hub.switch.port_gone(id);
        self.metrics.ports.set(hub.ports.len() as i64);
        self.metrics.entries.set(hub.switch.entries() as i64);
        self.metrics.closed.with_label_values(&[reason]).inc();
    }
}

/// One VM's connection: frames in through the switch, frames out from its queue.
async fn serve_port<S>(lan: Arc<Lan>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Some((id, mut rx)) = lan.add_port() else {
        tracing::warn!("refused {peer}: {} VMs are connected already (--max-ports)", lan.max_ports);
        lan.metrics.closed.with_label_values(&["refused"]).inc();
        return;
    };
    tracing::info!("port {id}: {peer} joined");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; MAX_WIRE_LEN];
    let reason = loop {
        let mut len = [0u8; 4];
        match rd.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break "eof",
            Err(_) => break "error",
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_WIRE_LEN {
            tracing::warn!("port {id}: {peer} sent a frame length of {n} bytes; closing its connection");
            break "bad_length";
        }
        if rd.read_exact(&mut buf[..n]).await.is_err() {
            break "eof";
        }
        lan.on_frame(id, &buf[..n]);
    };
    writer.abort();
    lan.remove_port(id, reason);
    tracing::info!("port {id}: {peer} left ({reason})");
}

async fn relay_replies(lan: Arc<Lan>) {
    let Some((sock, _)) = &lan.relay else { return };
    let cfg = lan.hub().switch.config().relay.expect("relay configured with its socket");
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match sock.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(e) => {
                tracing::warn!("DHCP relay: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match loco_shared::lan::reply_frame(&cfg, &buf[..n]) {
            Ok(frame) => {
                lan.metrics.relayed.with_label_values(&["to_client"]).inc();
                let hub = lan.hub();
                let forward = hub.switch.route_own(lan.now(), &frame);
                lan.deliver(&hub, forward, &frame);
            }
            Err(e) => {
                tracing::warn!("DHCP relay: a reply from the server was not passed on: {e}");
                lan.metrics.dropped.with_label_values(&["bad_reply"]).inc();
            }
        }
    }
}

/// The relay's UDP socket. With SO_REUSEADDR, so it may share a port number with a server bound
/// to the wildcard address (a server without RFC 8357 answers to giaddr on its own port).
fn relay_socket(addr: SocketAddrV4) -> anyhow::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    Ok(tokio::net::UdpSocket::from_std(s.into())?)
}

/// Mistakes in the arguments that clap cannot see (exit status 2, like clap's own).
fn check_args(args: &Args) -> anyhow::Result<()> {
    for l in &args.listen {
        parse_listen(l)?;
    }
    if args.max_ports == 0 || args.macs_per_port == 0 || args.ageing_s == 0 {
        bail!("--max-ports, --macs-per-port and --ageing-s must be at least 1");
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listens = args.listen.iter().map(|s| parse_listen(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let relay_cfg = args.dhcp_server.map(|_| RelayConfig {
        mac: SWITCH_MAC,
        lan_ip: args.lan_ip.octets(),
        giaddr: args.relay_bind.ip().octets(),
    });
    let relay = match args.dhcp_server {
        Some(server) => {
            let sock = relay_socket(args.relay_bind)
                .with_context(|| format!("cannot bind the DHCP relay's socket to {}", args.relay_bind))?;
            Some((sock, server))
        }
        None => None,
    };
    let lan = Arc::new(Lan {
        hub: Mutex::new(Hub {
            switch: Switch::new(SwitchConfig {
                ageing: Duration::from_secs(args.ageing_s),
                macs_per_port: args.macs_per_port,
                relay: relay_cfg,
            }),
            ports: HashMap::new(),
        }),
        start: Instant::now(),
        next_port: AtomicU32::new(1),
        max_ports: args.max_ports,
        metrics: Metrics::new()?,
        relay,
    });

    let mut unix_paths = Vec::new();
    for l in listens {
        match l {
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot listen on tcp:{addr}"))?;
                tracing::info!("listening on tcp:{}", listener.local_addr()?);
                let lan = lan.clone();
                tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((s, peer)) => {
                                let _ = s.set_nodelay(true);
                                tokio::spawn(serve_port(lan.clone(), s, peer.to_string()));
                            }
                            Err(e) => {
                                tracing::warn!("accept: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                });
            }
            Listen::Unix(path) => {
                if std::fs::symlink_metadata(&path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove the old socket {}", path.display()))?;
                }
                let listener = tokio::net::UnixListener::bind(&path)
                    .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
                tracing::info!("listening on unix:{}", path.display());
                unix_paths.push(path.clone());
                let lan = lan.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    loop {
                        match listener.accept().await {
                            Ok((s, _)) => {
                                n += 1;
                                tokio::spawn(serve_port(lan.clone(), s, format!("unix connection {n}")));
                            }
                            Err(e) => {
                                tracing::warn!("accept: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                });
            }
        }
    }
    if let Some((sock, server)) = &lan.relay {
        tracing::info!("relaying DHCP to {server} from {}", sock.local_addr()?);
        tokio::spawn(relay_replies(lan.clone()));
    }
    if let Some(addr) = args.metrics_listen {
        let app = Router::new()
            .route(
                "/healthz",
                get(|State(lan): State<Arc<Lan>>| async move {
                    let ports = lan.hub().ports.len();
                    ([("content-type", "application/json")], format!("{{\"ok\":true,\"ports\":{ports}}}\n"))
                }),
            )
            .route(
                "/metrics",
                get(|State(lan): State<Arc<Lan>>| async move {
                    ([("content-type", "text/plain; version=0.0.4")], lan.metrics.render())
                }),
            )
            .with_state(lan.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
        tracing::info!("/healthz and /metrics on http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics server: {e}");
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for p in unix_paths {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("stopped");
    Ok(())
}

fn main() {
    let args: Args = loco_agent::parse_args_or_exit("loco-lan");
    if let Err(e) = check_args(&args) {
        eprintln!("loco-lan: {e}");
        std::process::exit(2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loco-lan: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("loco-lan: {e:#}");
        std::process::exit(1);
    }
}
