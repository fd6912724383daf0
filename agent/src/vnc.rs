//! The VNC side: one task that keeps a connection to the VM's VNC server, applies its updates
//! to the framebuffer, reports damage to the encoders, and forwards viewers' input.
//!
//! vnc-rs' `recv_event` holds the client's lock while it waits, so input sent from another task
//! would stall until the next server event. Events and input are therefore driven from this
//! one task with `select!` (dropping a pending `recv_event` releases the lock).
//!
//! When the server goes away (VM reboot, QEMU restart) the task marks the screen disconnected,
//! drops input, and reconnects with a capped exponential backoff; viewers stay connected and
//! the encoders restart with a keyframe when the screen is back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loco_shared::{InputMessage, Rect};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use vnc::{
    AudioControl, AudioSample, ClientKeyEvent, ClientMouseEvent, PixelFormat, VncConnector, VncEncoding, VncEvent,
    X11Event,
};

use crate::audio::{AudioHub, AudioInput, AudioState};

use crate::framebuffer::Framebuffer;
use crate::metrics::Metrics;
use crate::pipeline::{Pipelines, Screen};

/// Where the VNC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VncAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl VncAddr {
    /// Whether the server is on this host (loopback or a Unix socket): then Raw pixels are
    /// cheaper than any compression.
    pub fn is_local(&self) -> bool {
        match self {
            VncAddr::Unix(_) => true,
            VncAddr::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl FromStr for VncAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/vm/vnc.sock".into());
            }
            return Ok(VncAddr::Unix(PathBuf::from(path)));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not HOST:PORT or unix:PATH"))?;
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        port.parse::<u16>().map_err(|_| format!("{s:?} has no valid port"))?;
        Ok(VncAddr::Tcp(s.to_owned()))
    }
}

impl std::fmt::Display for VncAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VncAddr::Tcp(a) => f.write_str(a),
            VncAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VncConfig {
    pub addr: VncAddr,
    pub password: Option<String>,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
}

pub struct VncTask {
    pub config: VncConfig,
    pub screen: Arc<Screen>,
    pub pipelines: Arc<Pipelines>,
    pub audio: Arc<AudioHub>,
    pub metrics: Arc<Metrics>,
    pub input: mpsc::Receiver<InputMessage>,
    pub shutdown: watch::Receiver<bool>,
    /// Whether "no audio from this server" was said (once per process, not per reconnect).
    pub said_no_audio: bool,
}

/// What one VNC event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// Pixels from a framebuffer update.
    Pixels,
    /// Anything else for the screen (its size from the handshake, the cursor), or nothing.
    Screen,
    /// Sound, handed to the audio encoder.
    Audio,
    /// The server accepted QEMU's audio extension.
    AudioAvailable,
}

/// What the rectangles of one FramebufferUpdate have changed so far: reported to the encoders
/// once, when vnc-rs says the update ended, so they never see half of one.
#[derive(Default)]
struct UpdateInProgress {
    damage: loco_shared::geom::Damage,
    rects: u64,
    /// Whether it had anything for the screen (it answers a request: ask for the next).
    screen_events: bool,
    /// When its first screen event arrived (the start of the update-to-send latency).
    arrived: Option<Instant>,
}

impl UpdateInProgress {
    fn saw_screen(&mut self, at: Instant) {
        self.screen_events = true;
        self.arrived.get_or_insert(at);
    }
}

/// Why a VNC session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("connect: {0}")]
    Connect(String),
    #[error("VNC handshake: {0}")]
    Handshake(vnc::VncError),
    #[error("connection lost: {0}")]
    Lost(vnc::VncError),
    #[error("server error: {0}")]
    Server(String),
    #[error("bad update from server: {0}")]
    BadUpdate(crate::framebuffer::FramebufferError),
    #[error("shutting down")]
    Shutdown,
}

/// A connected VNC stream of either kind.
enum Connected {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl VncTask {
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut sessions = 0u64;
        let mut last_error = String::new();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let end = self.session(&mut sessions).await;
            self.set_disconnected();
            match end {
                SessionEnd::Shutdown => return,
                end => {
                    let msg = end.to_string();
                    // Say each new kind of failure once; repeats while the VM is down are noise.
                    if msg != last_error {
                        tracing::warn!(vnc = %self.config.addr, "VNC {msg}; retrying");
                        last_error = msg;
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(100);
            }
            // Wait before the next attempt, dropping (and counting) input meanwhile.
            let deadline = tokio::time::sleep(backoff);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    msg = self.input.recv() => {
                        if msg.is_none() { return; }
                        self.metrics.input_events.with_label_values(&["dropped"]).inc();
                    }
                    _ = self.shutdown.changed() => return,
                }
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    fn set_disconnected(&self) {
        self.screen.lock().connected = false;
        self.metrics.vnc_connected.set(0);
        if matches!(self.audio.state(), AudioState::Playing | AudioState::Quiet) {
            self.audio.input(AudioInput::End(Instant::now()));
            self.audio.set_state(AudioState::Unavailable);
        }
    }

    async fn session(&mut self, sessions: &mut u64) -> SessionEnd {
        // One deadline for connecting and for the RFB handshake together.
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let addr = self.config.addr.clone();
        let connect = async move {
            match &addr {
                VncAddr::Tcp(addr) => {
                    let stream = tokio::net::TcpStream::connect(addr.as_str()).await.map_err(|e| e.to_string())?;
                    let _ = stream.set_nodelay(true);
                    Ok(Connected::Tcp(stream))
                }
                VncAddr::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| e.to_string())?;
                    Ok(Connected::Unix(stream))
                }
            }
        };
        let mut shutdown = self.shutdown.clone();
        let connected = tokio::select! {
            r = tokio::time::timeout_at(deadline, connect) => match r {
                Err(_) => return SessionEnd::Connect("timed out".into()),
                Ok(Err(e)) => return SessionEnd::Connect(e),
                Ok(Ok(c)) => c,
            },
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        };
        match connected {
            Connected::Tcp(stream) => self.session_on(stream, deadline, sessions).await,
            Connected::Unix(stream) => self.session_on(stream, deadline, sessions).await,
        }
    }

    /// Runs one VNC session over `stream`, an already connected byte stream to a VNC server:
    /// the RFB handshake (within `config.connect_timeout`), then updates into the screen and
    /// input out, until the server closes the stream, sends something invalid, or shutdown.
    /// Afterwards the screen is marked disconnected, as between sessions of [`run`](Self::run).
    ///
    /// [`run`](Self::run) connects with the same code; this entry point lets tests and the
    /// `rfb_server` fuzz target play the server over an in-memory stream.
    pub async fn run_stream<S>(&mut self, stream: S) -> SessionEnd
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let mut sessions = 0;
        let end = self.session_on(stream, deadline, &mut sessions).await;
        self.set_disconnected();
        end
    }

    async fn session_on<S>(&mut self, stream: S, deadline: tokio::time::Instant, sessions: &mut u64) -> SessionEnd
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let mut shutdown = self.shutdown.clone();
        let client = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.handshake(stream)) => match r {
                Err(_) => return SessionEnd::Connect("timed out".into()),
                Ok(Err(e)) => return SessionEnd::Handshake(e),
                Ok(Ok(c)) => c,
            },
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        };
        *sessions += 1;
        if *sessions > 1 {
            self.metrics.vnc_reconnects.inc();
        }
        tracing::info!(vnc = %self.config.addr, "VNC connected");
        let end = self.drive(&client).await;
        let _ = client.close().await;
        end
    }

    async fn handshake<S>(&self, stream: S) -> Result<vnc::VncClient, vnc::VncError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let password = self.config.password.clone().unwrap_or_default();
        let mut connector = VncConnector::new(stream)
            .set_auth_method(async move { Ok(password) })
            .allow_shared(true)
            .set_pixel_format(PixelFormat::bgra());
        // On this host, offer only Raw (and CopyRect): decoding ZRLE or Tight costs more CPU
        // than the agent's encoder, and some servers (TigerVNC) pick the encoding they like
        // best rather than the client's first choice.
        let encodings: &[VncEncoding] = if self.config.addr.is_local() {
            &[VncEncoding::CopyRect, VncEncoding::Raw]
        } else {
            &[VncEncoding::CopyRect, VncEncoding::Tight, VncEncoding::Zrle, VncEncoding::Raw]
        };
        for e in encodings.iter().chain(&[VncEncoding::DesktopSizePseudo]) {
            connector = connector.add_encoding(*e);
        }
        // QEMU's audio extension: a QEMU started with `-vnc ...,audiodev=ID` acknowledges it
        // and then sends the guest's sound over this connection; other servers ignore it.
        if self.audio.enabled() {
            connector = connector.add_encoding(VncEncoding::QemuAudioPseudo);
        }
        connector.build()?.try_start().await?.finish()
    }

    /// Runs one connected session until it ends.
    ///
    /// Update requests are paced at the fastest encoder's frame rate, which follows its viewers'
    /// attention ([`Pipelines::request_interval`]): the server accumulates damage between
    /// requests and sends whole frames, instead of a stream of partial ones that the encoder
    /// would catch half-drawn or skip. The rectangles of one update are collected and the
    /// update is reported once, at its end (vnc-rs's `UpdateEnd` event).
    async fn drive(&mut self, client: &vnc::VncClient) -> SessionEnd {
        {
            let mut s = self.screen.lock();
            s.generation += 1;
        }
        if let Err(e) = client.input(X11Event::FullRefresh).await {
            return SessionEnd::Lost(e);
        }
        let mut interval = self.pipelines.request_interval();
        let mut request_interval = *interval.borrow_and_update();
        let mut last_request = Instant::now();
        // Set when an update arrived and the next request waits for its slot.
        let mut request_due: Option<Instant> = None;
        // Re-ask now and then in case a server dropped a request.
        let mut keepalive = tokio::time::interval(Duration::from_secs(1));
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Until the first pixels: whether the server acknowledged audio (QEMU answers the
        // encodings, sent before the first update request, at once).
        let mut audio_pending = self.audio.enabled();
        // What the update being read has changed so far.
        let mut update = UpdateInProgress::default();
        loop {
            let due = request_due;
            tokio::select! {
                event = client.recv_event() => {
                    let mut event = match event {
                        Ok(e) => e,
                        Err(e) => return SessionEnd::Lost(e),
                    };
                    // Apply this event and every other one already decoded; an update's damage
                    // is reported once, at its end (vnc-rs's `UpdateEnd`).
                    loop {
                        if matches!(event, VncEvent::UpdateEnd) {
                            let mut done = std::mem::take(&mut update);
                            if let (Some(damage), Some(arrived)) = (done.damage.take(), done.arrived) {
                                self.metrics.frames_captured.inc();
                                self.metrics.vnc_updates.inc_by(done.rects);
                                self.pipelines.damage(&damage, arrived);
                            }
                            // Sound alone (a chunk every 10 ms) is no reason to ask for the screen.
                            if done.screen_events {
                                request_due.get_or_insert(last_request + request_interval);
                            }
                        } else {
                            let at = Instant::now();
                            match self.apply(event, &mut update.damage, &mut update.rects) {
                                Err(end) => return end,
                                Ok(Applied::Screen) => update.saw_screen(at),
                                Ok(Applied::Pixels) => {
                                    update.saw_screen(at);
                                    // The first update answers a request sent after the encodings.
                                    if std::mem::take(&mut audio_pending) {
                                        self.no_audio();
                                    }
                                }
                                Ok(Applied::Audio) => {}
                                Ok(Applied::AudioAvailable) => {
                                    audio_pending = false;
                                    if let Err(e) = self.enable_audio(client).await {
                                        return SessionEnd::Lost(e);
                                    }
                                }
                            }
                        }
                        match client.poll_event().await {
                            Ok(Some(next)) => event = next,
                            Ok(None) => break,
                            Err(e) => return SessionEnd::Lost(e),
                        }
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    request_due = None;
                    last_request = Instant::now();
                    if let Err(e) = client.input(X11Event::Refresh).await {
                        return SessionEnd::Lost(e);
                    }
                }
                msg = self.input.recv() => {
                    let Some(msg) = msg else { return SessionEnd::Shutdown };
                    let (w, h) = self.screen.size();
                    let event = match msg.clamped(w, h) {
                        InputMessage::Pointer { x, y, buttons } => X11Event::PointerEvent(ClientMouseEvent {
                            position_x: x as u16,
                            position_y: y as u16,
                            bottons: buttons,
                        }),
                        InputMessage::Key { keysym, down } => X11Event::KeyEvent(ClientKeyEvent { keycode: keysym, down }),
                    };
                    if let Err(e) = client.input(event).await {
                        return SessionEnd::Lost(e);
                    }
                }
                // Attention changed the pace: a request waiting for its slot takes the new one
                // (a panel back in view is asked for at once, not after the hidden interval).
                Ok(()) = interval.changed() => {
                    request_interval = *interval.borrow_and_update();
                    if let Some(due) = request_due.as_mut() {
                        *due = last_request + request_interval;
                    }
                }
                _ = keepalive.tick() => {
                    if request_due.is_none() && last_request.elapsed() >= Duration::from_secs(1) {
                        last_request = Instant::now();
                        if let Err(e) = client.input(X11Event::Refresh).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                }
                _ = self.shutdown.changed() => return SessionEnd::Shutdown,
            }
        }
    }

    /// Asks the server for 48 kHz stereo S16 and starts its audio.
    async fn enable_audio(&mut self, client: &vnc::VncClient) -> Result<(), vnc::VncError> {
        let format = AudioControl::SetFormat {
            sample: AudioSample::S16,
            channels: crate::audio::CHANNELS as u8,
            frequency: loco_shared::audio::SAMPLE_RATE,
        };
        client.input(X11Event::Audio(format)).await?;
        client.input(X11Event::Audio(AudioControl::Enable)).await?;
        self.audio.set_state(AudioState::Quiet);
        tracing::info!(vnc = %self.config.addr, "VNC server sends audio (QEMU audio extension)");
        Ok(())
    }

    /// The server did not acknowledge the audio extension: say so once per process.
    fn no_audio(&mut self) {
        self.audio.set_state(AudioState::Unavailable);
        if !self.said_no_audio {
            self.said_no_audio = true;
            tracing::info!(
                vnc = %self.config.addr,
                "the VNC server offers no audio (QEMU needs -vnc ...,audiodev=ID); streaming video only"
            );
        }
    }

    fn apply(
        &self,
        event: VncEvent,
        damage: &mut loco_shared::geom::Damage,
        rects: &mut u64,
    ) -> Result<Applied, SessionEnd> {
        match event {
            VncEvent::AudioAvailable => return Ok(Applied::AudioAvailable),
            VncEvent::AudioBegin => {
                self.audio.input(AudioInput::Begin(Instant::now()));
                return Ok(Applied::Audio);
            }
            VncEvent::AudioData(pcm) => {
                self.audio.input(AudioInput::Data(pcm, Instant::now()));
                return Ok(Applied::Audio);
            }
            VncEvent::AudioEnd => {
                self.audio.input(AudioInput::End(Instant::now()));
                return Ok(Applied::Audio);
            }
            _ => {}
        }
        let mut s = self.screen.lock();
        match event {
            VncEvent::SetResolution(screen) => {
                let (w, h) = (u32::from(screen.width), u32::from(screen.height));
                if (s.fb.width(), s.fb.height()) != (w, h) || !s.connected {
                    s.fb = Framebuffer::new(w, h).map_err(SessionEnd::BadUpdate)?;
                    s.generation += 1;
                    tracing::info!(width = w, height = h, "desktop size");
                }
                if !s.connected {
                    s.connected = true;
                    self.metrics.vnc_connected.set(1);
                }
                damage.add(s.fb.full_rect());
            }
            VncEvent::RawImage(rect, pixels) => {
                let r = Rect::new(rect.x.into(), rect.y.into(), rect.width.into(), rect.height.into());
                s.fb.put_owned(r, pixels).map_err(SessionEnd::BadUpdate)?;
                damage.add(r);
                *rects += 1;
                return Ok(Applied::Pixels);
            }
            VncEvent::Copy(dst, src) => {
                let r = Rect::new(dst.x.into(), dst.y.into(), dst.width.into(), dst.height.into());
                s.fb.copy(r, src.x.into(), src.y.into()).map_err(SessionEnd::BadUpdate)?;
                damage.add(r);
                *rects += 1;
                return Ok(Applied::Pixels);
            }
            VncEvent::JpegImage(rect, _) => {
                // We never ask for JPEG quality levels, so a conforming server never sends this.
                return Err(SessionEnd::Server(format!("unrequested JPEG rectangle {rect:?}")));
            }
            VncEvent::Error(e) => return Err(SessionEnd::Server(e)),
            VncEvent::SetPixelFormat(_)
            | VncEvent::SetCursor(..)
            | VncEvent::Bell
            | VncEvent::Text(_)
            | VncEvent::DesktopUpdate(_) => {}
            _ => {}
        }
        Ok(Applied::Screen)
    }
}

/// Parses `--vnc` values for clap.
pub fn parse_vnc_addr(s: &str) -> Result<VncAddr, String> {
    s.parse()
}

/// Parses a `host:port` listen address for clap.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP:PORT listen address (e.g. 0.0.0.0:8080)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!("127.0.0.1:5900".parse(), Ok(VncAddr::Tcp("127.0.0.1:5900".into())));
        assert_eq!("unix:/tmp/v.sock".parse(), Ok(VncAddr::Unix("/tmp/v.sock".into())));
        assert!("nohost".parse::<VncAddr>().is_err());
        assert!(":5900".parse::<VncAddr>().is_err());
        assert!("host:99999".parse::<VncAddr>().is_err());
        assert!("unix:".parse::<VncAddr>().is_err());
    }

    #[test]
    fn local_servers() {
        for (a, local) in [
            ("127.0.0.1:5900", true),
            ("localhost:5901", true),
            ("[::1]:5900", true),
            ("10.0.0.5:5900", false),
            ("vm1.example:5900", false),
            ("unix:/run/vnc", true),
        ] {
            assert_eq!(a.parse::<VncAddr>().unwrap().is_local(), local, "{a}");
        }
    }

    /// What an RFB 3.8 server with no authentication sends up to its ServerInit (BGRA).
    fn server_hello(width: u16, height: u16) -> Vec<u8> {
        let mut b = b"RFB 003.008\n".to_vec();
        b.extend_from_slice(&[1, 1, 0, 0, 0, 0]); // one security type (None), result OK
        b.extend_from_slice(&width.to_be_bytes());
        b.extend_from_slice(&height.to_be_bytes());
        b.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        b.extend_from_slice(&4u32.to_be_bytes());
        b.extend_from_slice(b"test");
        b
    }

    fn rect_header(b: &mut Vec<u8>, x: u16, y: u16, w: u16, h: u16, encoding: i32) {
        for v in [x, y, w, h] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&encoding.to_be_bytes());
    }

    /// Plays `server` (then keeps the stream open a while, then closes it) against
    /// `VncTask::run_stream`; returns how the session ended and the screen.
    async fn play(server: Vec<u8>) -> (SessionEnd, Framebuffer, bool, u64) {
        let (end, fb, connected, rects, _, _) = play_with_audio(server, true).await;
        (end, fb, connected, rects)
    }

    /// As [`play`], with the agent's audio on or off; also returns what the client wrote and
    /// the metrics.
    async fn play_with_audio(
        server: Vec<u8>,
        audio: bool,
    ) -> (SessionEnd, Framebuffer, bool, u64, Vec<u8>, Arc<Metrics>) {
        play_in_parts(vec![server], Duration::ZERO, audio).await
    }

    /// As [`play_with_audio`], the server pausing for `pause` after each part.
    async fn play_in_parts(
        parts: Vec<Vec<u8>>,
        pause: Duration,
        audio: bool,
    ) -> (SessionEnd, Framebuffer, bool, u64, Vec<u8>, Arc<Metrics>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let metrics = Arc::new(Metrics::new());
        let screen = Arc::new(Screen::default());
        let pipelines =
            Pipelines::new(crate::pipeline::PipelineConfig::full(1000, 30, 1), screen.clone(), metrics.clone());
        let (_input_tx, input_rx) = mpsc::channel(8);
        let (_shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut task = VncTask {
            config: VncConfig {
                addr: VncAddr::Tcp("127.0.0.1:5900".into()),
                password: None,
                connect_timeout: Duration::from_secs(3),
                max_backoff: Duration::from_secs(1),
            },
            screen: screen.clone(),
            pipelines,
            audio: crate::audio::AudioHub::new(
                crate::audio::AudioConfig { enabled: audio, bitrate_bps: 64_000 },
                metrics.clone(),
            ),
            metrics: metrics.clone(),
            input: input_rx,
            shutdown: shutdown_rx,
            said_no_audio: false,
        };
        let (client, server_io) = tokio::io::duplex(64 * 1024);
        let (mut from_client, mut to_client) = tokio::io::split(server_io);
        tokio::spawn(async move {
            for part in parts {
                to_client.write_all(&part).await.unwrap();
                tokio::time::sleep(pause).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            to_client.shutdown().await.unwrap();
        });
        let written = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut sink = [0u8; 4096];
            while let Ok(n @ 1..) = from_client.read(&mut sink).await {
                all.extend_from_slice(&sink[..n]);
            }
            all
        });
        let end = task.run_stream(client).await;
        drop(task);
        let written = written.await.unwrap_or_default();
        let s = screen.lock();
        (end, s.fb.clone(), s.connected, metrics.vnc_updates.get(), written, metrics)
    }

    /// QEMU's audio messages: begin, `n` bytes of data, end.
    fn qemu_audio(b: &mut Vec<u8>, data: &[u8]) {
        b.extend_from_slice(&[255, 1, 0, 1]);
        b.extend_from_slice(&[255, 1, 0, 2]);
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b.extend_from_slice(&[255, 1, 0, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn takes_qemu_audio_after_the_acknowledgement() {
        let mut b = server_hello(4, 2);
        b.extend_from_slice(&[0, 0, 0, 1]); // QEMU's acknowledgement: a -259 pseudo-rectangle
        rect_header(&mut b, 0, 0, 4, 2, -259);
        qemu_audio(&mut b, &[1, 0, 2, 0, 3, 0, 4, 0]);
        b.extend_from_slice(&[0, 0, 0, 1]);
        rect_header(&mut b, 0, 0, 1, 1, 0);
        b.extend_from_slice(&[9, 9, 9, 255]);
        let (end, fb, _, rects, written, metrics) = play_with_audio(b, true).await;
        assert!(matches!(end, SessionEnd::Lost(_)), "{end}");
        assert_eq!(rects, 1);
        assert_eq!(&fb.bgra()[..4], &[9, 9, 9, 255]);
        // The agent asked for the extension, then for S16 stereo 48 kHz, then to start.
        let encodings = written.windows(4).any(|w| w == (-259i32).to_be_bytes());
        assert!(encodings, "QemuAudio pseudo-encoding not offered");
        let set_format = [255, 1, 0, 2, 3, 2, 0, 0, 0xbb, 0x80];
        let enable = [255, 1, 0, 0];
        let at = |needle: &[u8]| written.windows(needle.len()).position(|w| w == needle);
        assert!(at(&set_format).is_some() && at(&enable) > at(&set_format), "{written:?}");
        assert_eq!(metrics.audio_chunks.with_label_values(&["received"]).get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_audio_streams_video_and_audio_it_sends_unasked_ends_the_session() {
        // No acknowledgement (Xvnc): the first update makes the state "unavailable".
        let mut b = server_hello(4, 2);
        b.extend_from_slice(&[0, 0, 0, 1]);
        rect_header(&mut b, 0, 0, 1, 1, 0);
        b.extend_from_slice(&[9, 9, 9, 255]);
        let (end, _, _, rects, _, metrics) = play_with_audio(b, true).await;
        assert!(matches!(end, SessionEnd::Lost(_)), "{end}");
        assert_eq!(rects, 1);
        assert_eq!(metrics.audio_state.get(), crate::audio::AudioState::Unavailable as i64);
        // With audio off, the extension is not offered and QEMU audio messages are invalid.
        let mut b = server_hello(4, 2);
        qemu_audio(&mut b, &[0; 4]);
        let (end, _, _, _, written, metrics) = play_with_audio(b, false).await;
        assert!(matches!(end, SessionEnd::Server(_)), "{end}");
        assert!(!written.windows(4).any(|w| w == (-259i32).to_be_bytes()));
        assert_eq!(metrics.audio_state.get(), -1);
        // A data message over the size limit (64 MiB announced) ends the session, without
        // waiting for the bytes.
        let mut b = server_hello(4, 2);
        b.extend_from_slice(&[0, 0, 0, 1]);
        rect_header(&mut b, 0, 0, 4, 2, -259);
        b.extend_from_slice(&[255, 1, 0, 2]);
        b.extend_from_slice(&(64u32 << 20).to_be_bytes());
        let (end, ..) = play_with_audio(b, true).await;
        assert!(matches!(end, SessionEnd::Server(_) | SessionEnd::Lost(_)), "{end}");
    }

    #[tokio::test(start_paused = true)]
    async fn applies_raw_and_copyrect_from_a_server_stream() {
        let mut b = server_hello(4, 2);
        b.extend_from_slice(&[0, 0, 0, 2]); // FramebufferUpdate, two rectangles
        rect_header(&mut b, 1, 0, 2, 1, 0); // Raw 2x1 at (1, 0)
        b.extend_from_slice(&[1, 2, 3, 255, 4, 5, 6, 255]);
        rect_header(&mut b, 0, 1, 2, 1, 1); // CopyRect to (0, 1) from (1, 0)
        b.extend_from_slice(&[0, 1, 0, 0]);
        let (end, fb, connected, rects) = play(b).await;
        assert!(matches!(end, SessionEnd::Lost(_)), "{end}");
        assert!(!connected, "disconnected after the session");
        assert_eq!(rects, 2);
        #[rustfmt::skip]
        let want = [
            0, 0, 0, 0,   1, 2, 3, 255, 4, 5, 6, 255, 0, 0, 0, 0,
            1, 2, 3, 255, 4, 5, 6, 255, 0, 0, 0, 0,   0, 0, 0, 0,
        ];
        assert_eq!(fb.bgra(), want);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_is_reported_once_at_its_end_however_slowly_it_arrives() {
        // Two rectangles of one update, the server pausing 50 ms in the middle of the first
        // one's pixels and between them; then an update of one rectangle.
        let mut first = server_hello(4, 2);
        first.extend_from_slice(&[0, 0, 0, 2]);
        rect_header(&mut first, 0, 0, 1, 1, 0);
        first.extend_from_slice(&[1, 1]);
        let mut second = vec![1, 255];
        rect_header(&mut second, 3, 1, 1, 1, 0);
        let mut third = vec![2, 2, 2, 255];
        third.extend_from_slice(&[0, 0, 0, 1]);
        rect_header(&mut third, 2, 0, 1, 1, 0);
        third.extend_from_slice(&[3, 3, 3, 255]);
        let (end, fb, _, rects, _, metrics) =
            play_in_parts(vec![first, second, third], Duration::from_millis(50), false).await;
        assert!(matches!(end, SessionEnd::Lost(_)), "{end}");
        assert_eq!(rects, 3);
        // One report per update, not one per rectangle or per pause.
        assert_eq!(metrics.frames_captured.get(), 2);
        assert_eq!((fb.bgra()[0], fb.bgra()[(4 + 3) * 4], fb.bgra()[2 * 4]), (1, 2, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rectangle_outside_the_screen_ends_the_session() {
        let mut b = server_hello(4, 2);
        b.extend_from_slice(&[0, 0, 0, 1]);
        rect_header(&mut b, 3, 0, 2, 1, 0); // 2 wide at x = 3 of 4
        b.extend_from_slice(&[9; 8]);
        let (end, fb, _, rects) = play(b).await;
        assert!(matches!(end, SessionEnd::Server(_)), "{end}");
        assert_eq!(rects, 0);
        assert!(fb.bgra().iter().all(|&v| v == 0));
    }
}
