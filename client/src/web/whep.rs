//! One WHEP session with a loco-agent: a receive-only video track into a `<video>` element,
//! unless `audio=off` a receive-only audio track (Opus; handed to `web/audio.rs`), and the
//! `input` data channel (docs/protocol.md). An agent without sound leaves the audio m-line
//! unused (no audio track arrives) and the session is video-only, as before.
//!
//! Non-trickle: the offer is POSTed once ICE gathering is complete (or after a short wait), the
//! `201` answer carries the agent's candidates, and `Location` names the session for `DELETE`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use loco_shared::config::{Desktop, IceServer};
use loco_shared::protocol::INPUT_CHANNEL_LABEL;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    HtmlVideoElement, MediaStream, MediaStreamTrack, RtcDataChannel, RtcDataChannelInit, RtcDataChannelState,
    RtcIceGatheringState, RtcPeerConnection, RtcRtpTransceiverDirection, RtcRtpTransceiverInit, RtcSdpType,
    RtcSessionDescriptionInit, RtcTrackEvent,
};

use super::util::{fetch, js_error, now_ms, set, sleep};
use crate::decoder::Codec;

const GATHER_TIMEOUT_MS: f64 = 2000.0;
const POST_TIMEOUT_MS: i32 = 10_000;

/// Why a session could not be negotiated.
#[derive(Debug, Clone)]
pub struct Failed {
    pub message: String,
    /// The agent refused the key (401): retrying with the same one is pointless.
    pub key_refused: bool,
}

impl From<String> for Failed {
    fn from(message: String) -> Self {
        Self { message, key_refused: false }
    }
}

impl From<&str> for Failed {
    fn from(message: &str) -> Self {
        Self { message: message.into(), key_refused: false }
    }
}

/// A negotiated session (ICE/DTLS may still be coming up).
pub struct Session {
    pub pc: RtcPeerConnection,
    pub dc: RtcDataChannel,
    /// Absolute URL of the session resource, for `DELETE`.
    pub location: Option<String>,
    token: Option<String>,
    /// The agent's audio track, once `ontrack` has seen it (set during `setRemoteDescription`).
    pub audio: Rc<RefCell<Option<MediaStreamTrack>>>,
    _on_track: Closure<dyn FnMut(RtcTrackEvent)>,
}

impl Session {
    pub fn input_open(&self) -> bool {
        self.dc.ready_state() == RtcDataChannelState::Open
    }

    /// Sends one input message; false when the channel is not open.
    pub fn send(&self, json: &str) -> bool {
        self.input_open() && self.dc.send_with_str(json).is_ok()
    }

    /// Ends the session: closes the peer connection and tells the agent (best effort, not
    /// awaited), so it need not wait for ICE to time out.
    pub fn close(self) {
        if let Some(location) = &self.location {
            let init = web_sys::RequestInit::new();
            init.set_method("DELETE");
            set(&init, "keepalive", true);
            if let Some(token) = &self.token {
                if let Ok(h) = web_sys::Headers::new() {
                    let _ = h.set("Authorization", &format!("Bearer {token}"));
                    init.set_headers(&h);
                }
            }
            let request = super::util::window().fetch_with_str_and_init(location, &init);
            // An agent that is gone rejects this: nothing to do about it, but no unhandled rejection.
            wasm_bindgen_futures::spawn_local(async move {
                let _ = JsFuture::from(request).await;
            });
        }
        self.pc.set_ontrack(None);
        self.dc.close();
        self.pc.close();
    }
}

fn rtc_configuration(ice_servers: &[IceServer]) -> JsValue {
    let servers = js_sys::Array::new();
    for s in ice_servers {
        let o = js_sys::Object::new();
        let urls: js_sys::Array = s.urls.iter().map(|u| JsValue::from_str(u)).collect();
        set(&o, "urls", urls);
        if let Some(u) = &s.username {
            set(&o, "username", u.as_str());
        }
        if let Some(c) = &s.credential {
            set(&o, "credential", c.as_str());
        }
        servers.push(&o);
    }
    let cfg = js_sys::Object::new();
    set(&cfg, "iceServers", servers);
    set(&cfg, "bundlePolicy", "max-bundle");
    cfg.into()
}

/// Opens a session with `desktop`'s agent, playing its video in `video`; with `audio`, the offer
/// asks for sound too. With `codec`, the agent is asked for it (`POST …/whep?codec=`) and the
/// offer lists it first (`setCodecPreferences`); without, the agent's default.
pub async fn connect(
    desktop: &Desktop,
    base_url: &str,
    ice_servers: &[IceServer],
    video: &HtmlVideoElement,
    audio: bool,
    codec: Option<Codec>,
) -> Result<Session, Failed> {
    let whep_url = web_sys::Url::new_with_base(&desktop.whep, base_url)
        .map(|u| u.href())
        .map_err(|_| format!("{:?} is not a URL", desktop.whep))?;
    // The agent's own ICE servers first (TURN credentials minted for this session), then the page's.
    let mut servers = match crate::link::ice_url(&whep_url) {
        Some(url) => agent_ice_servers(&url, desktop.token.as_deref()).await?,
        None => Vec::new(),
    };
    servers.extend(ice_servers.iter().cloned());
    let pc = RtcPeerConnection::new_with_configuration(&rtc_configuration(&servers).unchecked_into())
        .map_err(|e| format!("cannot create a peer connection: {}", js_error(&e)))?;
    let result = negotiate(&pc, desktop, base_url, video, audio, codec).await;
    if result.is_err() {
        pc.close();
    }
    result
}

/// `GET /ice`: the agent's ICE servers for this viewer. An agent without the endpoint (404/405)
/// has none to give; a refused key locks the panel like a refused offer.
async fn agent_ice_servers(url: &str, token: Option<&str>) -> Result<Vec<IceServer>, Failed> {
    let headers = web_sys::Headers::new().map_err(|e| js_error(&e))?;
    if let Some(token) = token {
        let _ = headers.set("Authorization", &format!("Bearer {token}"));
    }
    let req = web_sys::RequestInit::new();
    req.set_method("GET");
    req.set_headers(&headers);
    req.set_cache(web_sys::RequestCache::NoStore);
    let res = fetch(url, &req, POST_TIMEOUT_MS).await?;
    let body = match res.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|v| v.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    match res.status() {
        200 => loco_shared::config::IceAnswer::parse(&body)
            .map(|a| a.ice_servers)
            .map_err(|e| format!("the agent's ICE servers are not usable: {e}").into()),
        401 => Err(Failed {
            message: if token.is_some() {
                "401: the agent refused the key".into()
            } else {
                "401: the agent wants a key".into()
            },
            key_refused: true,
        }),
        404 | 405 => Ok(Vec::new()),
        s => Err(format!("GET {url} answered {s}: {}", body.trim().chars().take(200).collect::<String>()).into()),
    }
}

async fn negotiate(
    pc: &RtcPeerConnection,
    desktop: &Desktop,
    base_url: &str,
    video: &HtmlVideoElement,
    audio: bool,
    codec: Option<Codec>,
) -> Result<Session, Failed> {
    let init = RtcRtpTransceiverInit::new();
    init.set_direction(RtcRtpTransceiverDirection::Recvonly);
    let transceiver = pc.add_transceiver_with_str_and_init("video", &init);
    if let Some(codec) = codec {
        prefer_codec(&transceiver, codec);
    }
    if audio {
        // Opus 48 kHz stereo is Chromium's first audio codec; the agent answers with it.
        pc.add_transceiver_with_str_and_init("audio", &init);
    }
    let dc_init = RtcDataChannelInit::new();
    dc_init.set_ordered(true);
    let dc = pc.create_data_channel_with_data_channel_dict(INPUT_CHANNEL_LABEL, &dc_init);

    let played = Rc::new(Cell::new(false));
    let video_for_track = video.clone();
    let audio_track: Rc<RefCell<Option<MediaStreamTrack>>> = Rc::new(RefCell::new(None));
    let audio_slot = audio_track.clone();
    let on_track = Closure::<dyn FnMut(RtcTrackEvent)>::new(move |ev: RtcTrackEvent| {
        // Sound goes to the Web Audio graph (`web/audio.rs`), whichever stream the agent put it
        // in; only video tracks touch the `<video>`.
        if ev.track().kind() == "audio" {
            *audio_slot.borrow_mut() = Some(ev.track());
            return;
        }
        let stream: MediaStream = match ev.streams().get(0).dyn_into::<MediaStream>() {
            Ok(s) => s,
            Err(_) => {
                let tracks = js_sys::Array::of1(&ev.track());
                match MediaStream::new_with_tracks(&tracks) {
                    Ok(s) => s,
                    Err(_) => return,
                }
            }
        };
        video_for_track.set_src_object(Some(&stream));
        if !played.replace(true) {
            if let Ok(p) = video_for_track.play() {
                // A muted video may autoplay; if the browser refuses, the next user gesture retries.
                wasm_bindgen_futures::spawn_local(async move {
                    let _ = JsFuture::from(p).await;
                });
            }
        }
    });
    pc.set_ontrack(Some(on_track.as_ref().unchecked_ref()));

    let offer = JsFuture::from(pc.create_offer()).await.map_err(|e| format!("createOffer: {}", js_error(&e)))?;
    let sdp = super::util::text(&offer, "sdp").ok_or("createOffer gave no SDP")?;
    let desc = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    desc.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&desc))
        .await
        .map_err(|e| format!("setLocalDescription: {}", js_error(&e)))?;
    let start = now_ms();
    while pc.ice_gathering_state() != RtcIceGatheringState::Complete && now_ms() - start < GATHER_TIMEOUT_MS {
        sleep(20).await;
    }
    let offer_sdp = pc.local_description().map(|d| d.sdp()).unwrap_or(sdp);

    let url =
        web_sys::Url::new_with_base(&desktop.whep, base_url).map_err(|_| format!("{:?} is not a URL", desktop.whep))?;
    if let Some(codec) = codec {
        url.search_params().set("codec", codec.as_str());
    }
    let whep_url = url.href();
    let headers = web_sys::Headers::new().map_err(|e| js_error(&e))?;
    let _ = headers.set("Content-Type", "application/sdp");
    if let Some(token) = &desktop.token {
        let _ = headers.set("Authorization", &format!("Bearer {token}"));
    }
    let req = web_sys::RequestInit::new();
    req.set_method("POST");
    req.set_headers(&headers);
    req.set_body(&JsValue::from_str(&offer_sdp));
    let res = fetch(&whep_url, &req, POST_TIMEOUT_MS).await?;
    let status = res.status();
    let body = match res.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|v| v.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    if status != 201 {
        let detail: String = body.trim().chars().take(200).collect();
        return Err(match status {
            401 => Failed {
                message: if desktop.token.is_some() {
                    "WHEP 401: the agent refused the key".into()
                } else {
                    "WHEP 401: the agent wants a key".into()
                },
                key_refused: true,
            },
            429 => format!("WHEP 429: too many wrong keys from here lately ({detail})").into(),
            _ => format!("WHEP answered {status}: {detail}").into(),
        });
    }
    let location = res
        .headers()
        .get("Location")
        .ok()
        .flatten()
        .and_then(|l| web_sys::Url::new_with_base(&l, &whep_url).ok())
        .map(|u| u.href());
    let answer = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    answer.set_sdp(&body);
    JsFuture::from(pc.set_remote_description(&answer))
        .await
        .map_err(|e| format!("the agent's answer was not accepted: {}", js_error(&e)))?;
    Ok(Session { pc: pc.clone(), dc, location, token: desktop.token.clone(), audio: audio_track, _on_track: on_track })
}

/// Puts `codec`'s entries first in the transceiver's codec list (the browser's own order
/// otherwise), so the offer prefers it. Browsers without `setCodecPreferences` skip this: the
/// agent still answers with the codec asked for in the URL.
fn prefer_codec(transceiver: &web_sys::RtcRtpTransceiver, codec: Codec) {
    let Some(caps) = receiver_codecs() else { return };
    let (mut first, rest): (Vec<JsValue>, Vec<JsValue>) = caps
        .iter()
        .partition(|c| super::util::text(c, "mimeType").is_some_and(|m| m.eq_ignore_ascii_case(codec.mime())));
    if first.is_empty() {
        return;
    }
    first.extend(rest);
    let list: js_sys::Array = first.into_iter().collect();
    if let Ok(f) = js_sys::Reflect::get(transceiver, &"setCodecPreferences".into()) {
        if let Ok(f) = f.dyn_into::<js_sys::Function>() {
            if let Err(e) = f.call1(transceiver, &list) {
                web_sys::console::warn_1(&format!("loco: setCodecPreferences: {}", js_error(&e)).into());
            }
        }
    }
}

/// `RTCRtpReceiver.getCapabilities('video').codecs`, if the browser has it.
pub fn receiver_codecs() -> Option<js_sys::Array> {
    let receiver = js_sys::Reflect::get(&js_sys::global(), &"RTCRtpReceiver".into()).ok()?;
    let f: js_sys::Function = js_sys::Reflect::get(&receiver, &"getCapabilities".into()).ok()?.dyn_into().ok()?;
    let caps = f.call1(&receiver, &"video".into()).ok()?;
    js_sys::Reflect::get(&caps, &"codecs".into()).ok()?.dyn_into().ok()
}

/// What `getStats` says about the video: frames decoded and dropped, packets and bytes received,
/// decoder fps, time and implementation, the codec, and the selected candidate pair's
/// round-trip time.
#[derive(Debug, Clone, Default)]
pub struct VideoStats {
    pub frames_decoded: u32,
    pub frames_dropped: u32,
    /// `framesReceived` (complete frames), where the browser gives it.
    pub frames_received: Option<u32>,
    pub packets_received: f64,
    /// Seconds spent decoding `frames_decoded` frames.
    pub total_decode_time: f64,
    /// `decoderImplementation` (`libvpx`, `FFmpeg`, `ExternalDecoder`, `MediaCodec…`), where given.
    pub decoder_implementation: Option<String>,
    /// `powerEfficientDecoder` (a hardware decoder), where given.
    pub power_efficient: Option<bool>,
    /// The negotiated codec's MIME type (`video/H264`).
    pub codec: Option<String>,
    /// RTP packets received plus RTCP sender reports: changes whenever the agent sends anything.
    pub activity: f64,
    pub bytes_received: f64,
    pub fps: f64,
    pub rtt_ms: Option<f64>,
}

pub async fn stats(pc: &RtcPeerConnection) -> Option<VideoStats> {
    let report = JsFuture::from(pc.get_stats()).await.ok()?;
    let mut out = VideoStats::default();
    let iter = js_sys::try_iter(&report).ok()??;
    let entries: Vec<JsValue> = iter.flatten().map(|e| e.unchecked_into::<js_sys::Array>().get(1)).collect();
    let mut codec_id = None;
    for s in &entries {
        let s = s.clone();
        match super::util::text(&s, "type").as_deref() {
            Some("inbound-rtp") if super::util::text(&s, "kind").as_deref() == Some("video") => {
                out.frames_decoded = super::util::num(&s, "framesDecoded").unwrap_or(0.0) as u32;
                out.frames_dropped = super::util::num(&s, "framesDropped").unwrap_or(0.0) as u32;
                out.frames_received = super::util::num(&s, "framesReceived").map(|n| n as u32);
                out.total_decode_time = super::util::num(&s, "totalDecodeTime").unwrap_or(0.0);
                out.bytes_received = super::util::num(&s, "bytesReceived").unwrap_or(0.0);
                out.fps = super::util::num(&s, "framesPerSecond").unwrap_or(0.0);
                out.packets_received = super::util::num(&s, "packetsReceived").unwrap_or(0.0);
                out.activity += out.packets_received;
                out.decoder_implementation = super::util::text(&s, "decoderImplementation");
                out.power_efficient =
                    js_sys::Reflect::get(&s, &"powerEfficientDecoder".into()).ok().and_then(|v| v.as_bool());
                codec_id = super::util::text(&s, "codecId");
            }
            Some("remote-outbound-rtp") => {
                out.activity += super::util::num(&s, "reportsSent").unwrap_or(0.0);
            }
            Some("candidate-pair") => {
                let nominated = js_sys::Reflect::get(&s, &"nominated".into()).ok().and_then(|v| v.as_bool());
                if nominated == Some(true) && super::util::text(&s, "state").as_deref() == Some("succeeded") {
                    if let Some(rtt) = super::util::num(&s, "currentRoundTripTime") {
                        out.rtt_ms = Some(rtt * 1000.0);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(id) = codec_id {
        out.codec = entries
            .iter()
            .find(|s| super::util::text(s, "id").as_deref() == Some(id.as_str()))
            .and_then(|s| super::util::text(s, "mimeType"));
    }
    Some(out)
}

/// Whether the agent answers at all: `false` when the request fails at the network level or a
/// gateway says its upstream is gone (502/504, or a 503 that is not the agent's own JSON).
/// The agent's own 503 (its VNC server is down) still means the agent is there.
pub async fn agent_answers(health_url: &str) -> bool {
    let init = web_sys::RequestInit::new();
    init.set_cache(web_sys::RequestCache::NoStore);
    match fetch(health_url, &init, 3000).await {
        Err(_) => false,
        Ok(res) => {
            let json =
                res.headers().get("Content-Type").ok().flatten().is_some_and(|t| t.starts_with("application/json"));
            !matches!(res.status(), 502 | 504) && (res.status() != 503 || json)
        }
    }
}
