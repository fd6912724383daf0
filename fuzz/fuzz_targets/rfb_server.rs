//! A hostile VNC server: arbitrary bytes as everything a server sends, through an in-memory
//! `tokio::io::duplex` stream into the agent's real VNC session code
//! (`vnc::VncTask::run_stream`: vnc-rs' handshake and decoders, then the agent's update path
//! into its `Framebuffer`, damage to the pipelines, input out), on a current-thread runtime
//! with a paused clock (timers fire at once when everything waits).
//!
//! Input: one flags byte, then the server's byte stream. `LOCO_FUZZ_DEBUG=1` prints how each
//! session ended.
//! - bit 0: the server counts as remote, so the agent also offers Tight and ZRLE (else only
//!   Raw and CopyRect, as for a server on this host); DesktopSize is always offered;
//! - bit 1: the agent has a VNC password (VNC authentication, DES challenge);
//! - bit 2: a viewer's pointer and key events are queued while the session runs;
//! - bit 3: the agent asks for QEMU's audio extension (audio messages are then valid).
//!
//! Checked: no panic, no out-of-bounds access (AddressSanitizer), no hang (libFuzzer's
//! -timeout); the session ends by itself when the bytes run out, never as "shutdown" nor as
//! a handshake timeout; afterwards the screen is marked disconnected and its framebuffer is
//! consistent (w × h × 4 bytes, within `MAX_PIXELS`) and converts to I420 (whole screen and
//! an odd band, as the encoder does); every counted rectangle had its 12-byte header in the
//! input.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loco_agent::framebuffer::{BYTES_PER_PIXEL, I420, MAX_PIXELS};
use loco_agent::metrics::Metrics;
use loco_agent::pipeline::{PipelineConfig, Pipelines, Screen};
use loco_agent::vnc::{SessionEnd, VncAddr, VncConfig, VncTask};
use loco_shared::{InputMessage, Rect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, server)) = data.split_first() else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    rt.block_on(session(flags, server));
});

async fn session(flags: u8, server: &[u8]) {
    let metrics = Arc::new(Metrics::new());
    let screen = Arc::new(Screen::default());
    let pipelines = Pipelines::new(PipelineConfig::full(6000, 30, 1), screen.clone(), metrics.clone());
    let (input_tx, input_rx) = tokio::sync::mpsc::channel(1024);
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let addr = if flags & 1 == 0 { "127.0.0.1:5900" } else { "vnc.example:5900" };
    let mut task = VncTask {
        config: VncConfig {
            addr: VncAddr::Tcp(addr.into()),
            password: (flags & 2 != 0).then(|| "secret".into()),
            connect_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(1),
        },
        screen: screen.clone(),
        pipelines,
        // Bit 3: the agent asks for QEMU's audio extension (the server's audio messages are
        // then valid; without it they end the session).
        audio: loco_agent::audio::AudioHub::new(
            loco_agent::audio::AudioConfig { enabled: flags & 8 != 0, bitrate_bps: 64_000 },
            metrics.clone(),
        ),
        metrics: metrics.clone(),
        input: input_rx,
        shutdown: shutdown_rx,
        said_no_audio: false,
    };
    if flags & 4 != 0 {
        // Coordinates far outside any desktop: the agent clamps them to the current size.
        for msg in [
            InputMessage::Pointer { x: 5, y: 7, buttons: 1 },
            InputMessage::Pointer { x: u32::MAX, y: u32::MAX, buttons: 0 },
            InputMessage::Key { keysym: 0xff0d, down: true },
            InputMessage::Key { keysym: 0xff0d, down: false },
        ] {
            let _ = input_tx.try_send(msg);
        }
    }

    let (client, server_io) = tokio::io::duplex(64 * 1024);
    let (mut from_client, mut to_client) = tokio::io::split(server_io);
    let bytes = server.to_vec();
    // The server says everything it has to say, stays a while (virtual time: the agent
    // collects, applies and reports the last update, and asks for more), then closes.
    tokio::spawn(async move {
        let _ = to_client.write_all(&bytes).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = to_client.shutdown().await;
    });
    // And reads (and ignores) whatever the agent sends it.
    tokio::spawn(async move {
        let mut sink = vec![0u8; 16 * 1024];
        while let Ok(n) = from_client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });

    let end = task.run_stream(client).await;
    if std::env::var_os("LOCO_FUZZ_DEBUG").is_some() {
        let s = screen.lock();
        eprintln!(
            "session ended: {end}; screen {}x{}, {} rectangles, {} updates",
            s.fb.width(),
            s.fb.height(),
            metrics.vnc_updates.get(),
            metrics.frames_captured.get()
        );
    }
    assert!(!matches!(end, SessionEnd::Shutdown | SessionEnd::Connect(_)), "session ended as {end:?}");
    drop(input_tx);

    let state = screen.lock();
    assert!(!state.connected, "the screen still reads connected after the session ended");
    let (w, h) = (state.fb.width(), state.fb.height());
    assert_eq!(state.fb.bgra().len(), w as usize * h as usize * BYTES_PER_PIXEL, "{w}x{h}");
    assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS, "{w}x{h}");
    if w > 0 {
        let mut pic = I420::new(w, h);
        pic.convert_from(&state.fb, state.fb.full_rect()).expect("I420 of the whole screen");
        pic.convert_from(&state.fb, Rect::new(w / 3, h / 3 | 1, w / 2 + 1, h / 4 + 1)).expect("I420 of a band");
    }
    let rects = metrics.vnc_updates.get();
    assert!(rects.saturating_mul(12) <= server.len() as u64, "{rects} rectangles from {} bytes", server.len());
}
