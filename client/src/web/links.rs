//! Each panel's connection: the 250 ms tick drives the [`crate::link::Link`] state machines
//! and carries out their commands (WHEP sessions, `/healthz` probes, statistics).

use wasm_bindgen_futures::spawn_local;
use web_sys::RtcPeerConnectionState;

use super::boot::recover;
use super::util::now_ms;
use super::whep;
use super::{random, App, Shared, STATS_EVERY_MS};
use crate::decoder::{Codec, Sample, Verdict};
use crate::link::{health_url, LinkCommand, Negotiated, Observed, PeerState};
use crate::scene::StreamState;

impl App {
    pub(super) fn tick(&mut self, shared: &Shared) {
        let now = now_ms();
        if !self.recovering && self.gfx.as_ref().is_some_and(|g| g.is_lost()) {
            self.recovering = true;
            spawn_local(recover(shared.clone()));
        }
        let mut relayout = false;
        for i in 0..self.panels.len() {
            let p = &mut self.panels[i];
            let pc = p.session.as_ref().map(|s| s.pc.clone());
            let observed = pc.as_ref().map(|pc| {
                let (vw, vh) = (p.video.video_width(), p.video.video_height());
                if (vw, vh) != p.video_size && vw > 0 && vh > 0 {
                    p.video_size = (vw, vh);
                    relayout = true;
                }
                let peer = match pc.connection_state() {
                    RtcPeerConnectionState::Connected => PeerState::Connected,
                    RtcPeerConnectionState::Disconnected => PeerState::Disconnected,
                    RtcPeerConnectionState::Failed => PeerState::Failed,
                    RtcPeerConnectionState::Closed => PeerState::Closed,
                    _ => PeerState::Connecting,
                };
                let input_open = p.session.as_ref().is_some_and(|s| s.input_open());
                Observed { peer, video: vw > 0, input_open }
            });
            match p.link.tick(now, observed, &mut random) {
                Some(LinkCommand::Connect { generation }) => {
                    let desktop = p.desktop.clone();
                    let video = p.video.clone();
                    let ice = self.config.as_ref().map(|c| c.ice_servers.clone()).unwrap_or_default();
                    let base = self.base_url.clone();
                    let shared = shared.clone();
                    let audio = self.sound.settings.enabled;
                    let codec = p.codec;
                    p.decoder.reset();
                    spawn_local(async move {
                        let result = whep::connect(&desktop, &base, &ice, &video, audio, codec).await;
                        if let Ok(mut app) = shared.try_borrow_mut() {
                            app.connected(i, generation, result);
                        } else if let Ok(s) = result {
                            s.close();
                        }
                    });
                    continue;
                }
                Some(LinkCommand::TearDown { reason }) => {
                    self.tear_down(i, reason);
                    continue;
                }
                Some(LinkCommand::Probe { generation }) => {
                    if let Some(url) = health_url(&p.whep_url) {
                        let shared = shared.clone();
                        spawn_local(async move {
                            let alive = whep::agent_answers(&url).await;
                            if let Ok(mut app) = shared.try_borrow_mut() {
                                app.probed(i, generation, alive);
                            }
                        });
                    }
                }
                None => {}
            }
            let Some(pc) = pc else { continue };
            if !p.stats_pending && now - p.stats_at >= STATS_EVERY_MS {
                p.stats_pending = true;
                let generation = p.link.generation();
                let shared = shared.clone();
                spawn_local(async move {
                    let st = whep::stats(&pc).await;
                    if let Ok(mut app) = shared.try_borrow_mut() {
                        app.got_stats(i, generation, st);
                    }
                });
            }
        }
        if relayout {
            self.relayout();
        }
        // Sound: tracks that arrived or went, levels, who plays.
        for i in 0..self.panels.len() {
            let track = self.panels[i].session.as_ref().and_then(|s| s.audio.borrow().clone());
            self.sound.track(i, track);
        }
        self.sound.measure(now);
        if self.all_live_at.is_none()
            && !self.panels.is_empty()
            && self.panels.iter().all(|p| p.link.state() == StreamState::Live)
        {
            self.all_live_at = Some(now);
            web_sys::console::info_1(
                &format!("loco: all {} panels live {:.0} ms after start", self.panels.len(), now - self.started_at)
                    .into(),
            );
        }
        self.control_tick();
        self.update_labels();
        self.update_key_prompt();
    }

    pub(super) fn connected(&mut self, i: usize, generation: u32, result: Result<whep::Session, whep::Failed>) {
        let Some(p) = self.panels.get_mut(i) else { return };
        let now = now_ms();
        let (session, negotiated) = match result {
            Ok(s) => (Some(s), p.link.connected(now, generation, Ok(()), &mut random)),
            Err(f) if f.key_refused => (None, p.link.refused(now, generation, f.message)),
            Err(f) => (None, p.link.connected(now, generation, Err(f.message), &mut random)),
        };
        match negotiated {
            Negotiated::Keep => {
                let track = session.as_ref().and_then(|s| s.audio.borrow().clone());
                p.session = session;
                p.last_pointer = None;
                self.sound.track(i, track);
            }
            Negotiated::Stale => {
                if let Some(s) = session {
                    s.close();
                }
            }
            Negotiated::TearDown { reason } => self.tear_down(i, reason),
        }
    }

    pub(super) fn probed(&mut self, i: usize, generation: u32, alive: bool) {
        let Some(p) = self.panels.get_mut(i) else { return };
        if let Some(LinkCommand::TearDown { reason }) = p.link.probed(now_ms(), generation, alive, &mut random) {
            self.tear_down(i, reason);
        }
    }

    pub(super) fn got_stats(&mut self, i: usize, generation: u32, st: Option<whep::VideoStats>) {
        let Some(p) = self.panels.get_mut(i) else { return };
        p.stats_pending = false;
        if p.link.generation() != generation {
            return;
        }
        let now = now_ms();
        if let Some(st) = st {
            let dt = (now - p.stats_at) / 1000.0;
            if p.stats_at > 0.0 && dt > 0.0 && st.bytes_received >= p.stats.bytes_received {
                p.kbps = (st.bytes_received - p.stats.bytes_received) * 8.0 / 1000.0 / dt;
            }
            if st.activity != p.stats.activity {
                p.link.heard(now);
            }
            let sample = Sample {
                frames_decoded: st.frames_decoded,
                frames_received: st.frames_received,
                packets_received: st.packets_received,
                bytes_received: st.bytes_received,
            };
            let verdict = p.decoder.sample(now, sample);
            let on_vp8 = p.codec == Some(Codec::Vp8) || st.codec.as_deref().and_then(Codec::parse) == Some(Codec::Vp8);
            p.stats = st;
            p.stats_at = now;
            if let Verdict::Stalled { reason } = verdict {
                if on_vp8 {
                    web_sys::console::warn_1(
                        &format!("loco: {}: VP8 decoder stalled too: {reason}", p.desktop.name).into(),
                    );
                } else {
                    self.decoder_fallback(i, Codec::Vp8, reason);
                }
            }
            return;
        }
        p.stats_at = now;
    }

    /// Panel `i`'s decoder stalled (or `__loco.debug.renegotiate` asks): a new session with
    /// `codec`, unless this panel fell back less than a minute ago. True if it renegotiates.
    pub(super) fn decoder_fallback(&mut self, i: usize, codec: Codec, reason: String) -> bool {
        let now = now_ms();
        let Some(p) = self.panels.get_mut(i) else { return false };
        if !p.fallback.allow(now) {
            web_sys::console::warn_1(
                &format!("loco: {}: no decoder fallback (one a minute): {reason}", p.desktop.name).into(),
            );
            return false;
        }
        web_sys::console::warn_1(
            &format!("loco: {}: renegotiating with {}: {reason}", p.desktop.name, codec.as_str()).into(),
        );
        p.codec = Some(codec);
        p.fallback_reason = Some(reason.clone());
        if let LinkCommand::TearDown { reason } =
            p.link.renegotiate(now, format!("renegotiating with {}: {reason}", codec.as_str()))
        {
            self.tear_down(i, reason);
        }
        true
    }

    /// Panel `i`'s link went down: ends its session and forgets what it showed (the link has
    /// scheduled the next attempt).
    pub(super) fn tear_down(&mut self, i: usize, reason: String) {
        let p = &mut self.panels[i];
        if let Some(s) = p.session.take() {
            s.close();
        }
        p.video.set_src_object(None);
        self.sound.track(i, None);
        let p = &mut self.panels[i];
        p.stats = Default::default();
        p.stats_at = 0.0;
        p.kbps = 0.0;
        p.last_pointer = None;
        web_sys::console::warn_1(&format!("loco: {} down: {reason}", p.desktop.name).into());
        self.redraw = true;
        for hand in self.xr.iter_mut().flat_map(|x| x.hands.iter_mut()) {
            hand.panel_down(i);
        }
        self.flat.pointer.panel_down(i);
        if self.extras.typist.panel == Some(i) && self.extras.typist.busy() {
            self.extras.typist.cancel();
            self.show_message(format!("typing into {} stopped: its stream went down", self.panels[i].desktop.name));
        }
    }
}
