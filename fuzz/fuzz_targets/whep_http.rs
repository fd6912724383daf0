//! The agent's HTTP surface: arbitrary requests into the real axum router (`http::router`,
//! WHEP + CORS + body limit, the real `Viewers` with webrtc-rs peer connections behind it),
//! driven with `tower::ServiceExt::oneshot` on a tokio current-thread runtime.
//!
//! The input is a request written like HTTP/1.1 text, so that seeds are readable and
//! libFuzzer's mutations of real offers stay meaningful:
//!
//! ```text
//! METHOD TARGET [locked|full] <- "locked": the agent with --token/--view-token set;
//!                                "full": an agent whose viewer limit is reached
//! Header-Name: value          <- any number of header lines
//!                             <- empty line
//! body (an SDP offer, garbage, ...)
//! ```
//!
//! A method, target or header that `http` cannot represent is what hyper would refuse before
//! the router, so such inputs (or header lines) are skipped. Candidate addresses in the body
//! are rewritten to 127.0.0.1 (see `local_candidates`). Checked for every request:
//!
//! - no panic; never 500 (nor any 5xx but the health check's 503);
//! - the status belongs to the route: POST /whep is 201/400/401/413/415 (503 only from the
//!   full agent, which never answers 201), DELETE/PATCH /whep/sessions/{id}
//!   200/400/401/404/405, GET /ice 200 (JSON the page's parser accepts) or 401, /healthz 503
//!   (no VNC here) with JSON, /metrics 200, other paths 404, wrong methods 405, OPTIONS (CORS
//!   preflight) 200. Requests come from one address whose wrong-key allowance is unlimited
//!   here, so a 429 is an error too (the limit itself is `keyguard`'s, fuzzed in bitrate_pacer);
//! - 401 only from the locked agent and only without a valid bearer token, always with
//!   `WWW-Authenticate: Bearer`;
//! - 201 only for POST /whep with `Content-Type: application/sdp` and a body that is SDP;
//!   it carries an SDP answer, `Location: /whep/sessions/<32 hex>` and an `ETag`; DELETE of
//!   that location then answers 200 and a second DELETE 404;
//! - no session outlives its input (the viewer count is back to 0).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::Router;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use loco_agent::encode::Codec;
use loco_agent::http::{router, AppState, Tokens};
use loco_agent::metrics::Metrics;
use loco_agent::peer::{IceConfig, Limits, PeerFactory, Viewers};
use loco_agent::pipeline::{PipelineConfig, Pipelines, Screen};
use loco_shared::keyguard::KeyGuard;
use tower::ServiceExt;

const CONTROL_TOKEN: &str = "fuzz-control-token";
const VIEW_TOKEN: &str = "fuzz-view-token";

struct Agent {
    rt: tokio::runtime::Runtime,
    open: Router,
    locked: Router,
    full: Router,
    viewers: Arc<Viewers>,
    // Kept alive so that the input queue stays open, as in the real agent.
    _input: tokio::sync::mpsc::Receiver<loco_shared::InputMessage>,
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (open, locked, full, viewers, input) = rt.block_on(async {
            let metrics = Arc::new(Metrics::new());
            let screen = Arc::new(Screen::default());
            let pipelines = Pipelines::new(
                PipelineConfig {
                    visible_fps: 12,
                    hidden_fps: 1,
                    min_bitrate_kbps: 300,
                    ..PipelineConfig::full(6000, 30, 1)
                },
                screen.clone(),
                metrics.clone(),
            );
            let factory = PeerFactory::new(IceConfig::default(), true).await.expect("peer factory");
            let (input_tx, input_rx) = tokio::sync::mpsc::channel(1024);
            let limits = Limits {
                max_viewers: 4,
                input_per_second: 1000,
                input_burst: 250,
                connect_timeout: Duration::from_secs(30),
                min_bitrate_kbps: 300,
                max_bitrate_kbps: 6000,
            };
            let audio = loco_agent::audio::AudioHub::new(
                loco_agent::audio::AudioConfig { enabled: true, bitrate_bps: 64_000 },
                metrics.clone(),
            );
            let viewers = Viewers::new(
                factory,
                pipelines.clone(),
                audio.clone(),
                metrics.clone(),
                input_tx.clone(),
                screen.clone(),
                limits,
            );
            let no_room = Viewers::new(
                PeerFactory::new(IceConfig::default(), true).await.expect("peer factory"),
                pipelines.clone(),
                audio,
                metrics.clone(),
                input_tx,
                screen.clone(),
                Limits { max_viewers: 0, ..limits },
            );
            let state = |tokens: Tokens, viewers: &Arc<Viewers>| {
                Arc::new(AppState {
                    viewers: viewers.clone(),
                    pipelines: pipelines.clone(),
                    screen: screen.clone(),
                    metrics: metrics.clone(),
                    default_codec: Codec::H264,
                    tokens,
                    guard: Mutex::new(KeyGuard::new(u32::MAX, u32::MAX, 16)),
                    started: Instant::now(),
                    vm: loco_agent::qmp::Vm::disabled(),
                })
            };
            // Every request from one address, as hyper's connect info would give it.
            let from = MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000)));
            let open = router(state(Tokens::default(), &viewers)).layer(from.clone());
            let tokens = Tokens { control: vec![CONTROL_TOKEN.into()], view: vec![VIEW_TOKEN.into()] };
            let locked = router(state(tokens, &viewers)).layer(from.clone());
            let full = router(state(Tokens::default(), &no_room)).layer(from);
            (open, locked, full, viewers, input_rx)
        });
        Agent { rt, open, locked, full, viewers, _input: input }
    })
}

struct Parsed {
    method: Method,
    uri: Uri,
    locked: bool,
    full: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Vec<u8>,
}

fn parse(data: &[u8]) -> Option<Parsed> {
    let mut rest = data;
    let mut line = || -> Option<&[u8]> {
        if rest.is_empty() {
            return None;
        }
        let (l, r) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = r;
        Some(l.strip_suffix(b"\r").unwrap_or(l))
    };
    let first = line()?;
    let mut words = first.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let method = Method::from_bytes(words.next()?).ok()?;
    let uri = Uri::try_from(words.next()?).ok()?;
    let which = words.next();
    let locked = which == Some(b"locked".as_slice());
    let full = which == Some(b"full".as_slice());
    let mut headers = Vec::new();
    while let Some(l) = line() {
        if l.is_empty() {
            break;
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else { continue };
        let value = l[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&l[..colon]), HeaderValue::from_bytes(value)) {
            headers.push((n, v));
        }
    }
    Some(Parsed { method, uri, locked, full, headers, body: local_candidates(rest) })
}

/// Points every `a=candidate` line of the body at 127.0.0.1: the agent starts ICE checks
/// towards an offer's candidates as soon as it answers, and a fuzzed offer must send them
/// nowhere but this machine (nor make the agent resolve fuzzed host names).
fn local_candidates(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let is_candidate = line.trim_ascii_start().starts_with(b"a=candidate");
        let mut fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if is_candidate && fields.len() > 4 {
            fields[4] = b"127.0.0.1";
            out.extend_from_slice(&fields.join(&b' '));
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

async fn send(router: &Router, req: Request<Body>) -> (Response<Body>, Vec<u8>) {
    let response = router.clone().oneshot(req).await.expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("response body").to_bytes().to_vec();
    (Response::from_parts(parts, Body::empty()), bytes)
}

/// `LOCO_FUZZ_DEBUG=1`: print each request's status (for `cargo fuzz run ... <input>`).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("LOCO_FUZZ_DEBUG").is_some())
}

fn bearer_role(p: &Parsed) -> Option<&'static str> {
    if !p.locked {
        return Some("control");
    }
    let auth = p.headers.iter().find(|(n, _)| n == header::AUTHORIZATION).map(|(_, v)| v)?;
    let token = auth.to_str().ok()?.strip_prefix("Bearer ")?.trim();
    match token {
        CONTROL_TOKEN => Some("control"),
        VIEW_TOKEN => Some("view"),
        _ => None,
    }
}

fn is_session_path(path: &str) -> bool {
    path.strip_prefix("/whep/sessions/").is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

fn check(p: &Parsed, status: StatusCode, response: &Response<Body>, body: &[u8]) {
    let path = p.uri.path();
    let authorized = bearer_role(p).is_some();
    // tower-http's CorsLayer answers every OPTIONS request itself, on any path.
    let is_preflight = p.method == Method::OPTIONS;
    let ctx = || {
        let body = String::from_utf8_lossy(body);
        format!("{} {} (locked: {}, full: {}) -> {status}: {body:?}", p.method, p.uri, p.locked, p.full)
    };

    assert!(
        !status.is_server_error()
            || (status == StatusCode::SERVICE_UNAVAILABLE && (path == "/healthz" || (p.full && path == "/whep"))),
        "server error: {}",
        ctx()
    );
    if status == StatusCode::UNAUTHORIZED {
        assert!(p.locked && !authorized, "401 without reason: {}", ctx());
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).map(|v| v.as_bytes()),
            Some(b"Bearer".as_slice()),
            "401 without WWW-Authenticate: {}",
            ctx()
        );
    }
    if is_preflight {
        assert_eq!(status, StatusCode::OK, "CORS preflight: {}", ctx());
        return;
    }
    let allowed: &[u16] = match (path, &p.method) {
        ("/whep", &Method::POST) if p.full => &[400, 413, 415, 503],
        ("/whep", &Method::POST) => &[201, 400, 401, 413, 415],
        ("/whep", _) => &[405],
        // 400: axum's Path extractor refuses an id that is not UTF-8 once percent-decoded.
        (s, m) if is_session_path(s) && (m == Method::DELETE || m == Method::PATCH) => &[200, 400, 401, 404, 405],
        (s, _) if is_session_path(s) => &[405],
        ("/ice", &Method::GET | &Method::HEAD) => &[200, 401],
        ("/ice", _) => &[405],
        ("/healthz", &Method::GET | &Method::HEAD) => &[503],
        ("/metrics", &Method::GET | &Method::HEAD) => &[200],
        ("/healthz" | "/metrics", _) => &[405],
        _ => &[404, 405],
    };
    assert!(allowed.contains(&status.as_u16()), "unexpected status: {}", ctx());
    if path == "/ice" && status == StatusCode::OK && p.method == Method::GET {
        let text = String::from_utf8_lossy(body);
        loco_shared::config::IceAnswer::parse(&text).unwrap_or_else(|e| panic!("/ice answer {text:?}: {e}"));
    }
    if path == "/healthz" && p.method == Method::GET {
        let v: serde_json::Value = serde_json::from_slice(body).expect("/healthz answers JSON");
        assert_eq!(v["vnc_connected"], serde_json::Value::Bool(false));
    }
    if status == StatusCode::CREATED {
        let ctype =
            p.headers.iter().find(|(n, _)| n == header::CONTENT_TYPE).and_then(|(_, v)| v.to_str().ok()).unwrap_or("");
        assert!(
            ctype.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/sdp"),
            "201 for content type {ctype:?}"
        );
        assert!(String::from_utf8_lossy(&p.body).trim_start().starts_with("v=0"), "201 for a non-SDP body");
        assert!(authorized, "201 without a valid token: {}", ctx());
        assert!(body.starts_with(b"v=0"), "the answer is not SDP: {}", ctx());
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(b"application/sdp".as_slice())
        );
        assert!(response.headers().contains_key(header::ETAG));
        let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).expect("Location");
        let id = location.strip_prefix("/whep/sessions/").expect("relative session Location");
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "session id {id:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(p) = parse(data) else { return };
    let agent = agent();
    let router = match (p.locked, p.full) {
        (true, _) => &agent.locked,
        (_, true) => &agent.full,
        _ => &agent.open,
    };
    agent.rt.block_on(async {
        let mut req = Request::builder().method(p.method.clone()).uri(p.uri.clone());
        for (n, v) in &p.headers {
            req = req.header(n, v);
        }
        let req = req.body(Body::from(p.body.clone())).expect("valid parts make a request");
        let (response, body) = send(router, req).await;
        let status = response.status();
        if debug() {
            eprintln!("{} {} (locked: {}, full: {}) -> {status}", p.method, p.uri, p.locked, p.full);
        }
        check(&p, status, &response, &body);

        if status == StatusCode::CREATED {
            // End the session over HTTP, as a viewer would; a second DELETE finds nothing.
            let location = response.headers()[header::LOCATION].to_str().expect("ASCII").to_owned();
            for want in [StatusCode::OK, StatusCode::NOT_FOUND] {
                let mut del = Request::builder().method(Method::DELETE).uri(&location);
                if p.locked {
                    del = del.header(header::AUTHORIZATION, format!("Bearer {CONTROL_TOKEN}"));
                }
                let (r, b) = send(router, del.body(Body::empty()).expect("request")).await;
                assert_eq!(r.status(), want, "DELETE {location}: {:?}", String::from_utf8_lossy(&b));
            }
        }
        // A PATCH or DELETE of a live session from the input itself cannot exist (ids are
        // random), so nothing else may hold a viewer slot now.
        assert_eq!(agent.viewers.count(), 0, "a session outlived its request");
    });
});
