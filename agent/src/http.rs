//! HTTP: the WHEP endpoint, health and metrics.
//!
//! - `POST /whep[?codec=h264|vp8]` — SDP offer in (`Content-Type: application/sdp`, at most
//!   64 KiB), `201 Created` with the SDP answer and `Location: /whep/sessions/{id}` out.
//! - `DELETE /whep/sessions/{id}` — ends the session. `PATCH` there answers 405: the answer
//!   already carries every candidate (no trickle ICE).
//! - `GET /ice` — JSON: the ICE servers a viewer should use, TURN credentials minted for it.
//! - `GET /healthz` — JSON; 200 while the VNC connection is up, 503 otherwise.
//! - `GET /metrics` — Prometheus text.
//! - `GET /control` — JSON: the VM's state as QMP sees it ([`crate::qmp`]); `POST
//!   /control/{reset|powerdown|poweron|snapshot|revert}` — VM control, for the control token
//!   only (a view-only token gets 403 and nothing happens); logged with the caller (its WHEP
//!   session from `X-Loco-Session`, else its address) and counted.
//!
//! With a token configured, WHEP requests and `/ice` need `Authorization: Bearer <token>`
//! (compared in constant time); anything else is 401, and an address that sent too many wrong
//! keys lately gets 429 without its key being looked at ([`loco_shared::keyguard`]). CORS is
//! open so a page from another origin can connect; the token, not the origin, is the access
//! control.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use loco_shared::keyguard::{KeyGuard, Verdict};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tower_http::cors::{Any, CorsLayer};

use crate::encode::Codec;
use crate::metrics::Metrics;
use crate::peer::{Role, SessionError, Viewers};
use crate::pipeline::{lock, Pipelines, Screen};

/// The largest SDP offer accepted. Browser offers are 2–8 KiB.
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Bearer tokens. An empty set means no authentication.
#[derive(Clone, Default)]
pub struct Tokens {
    pub control: Vec<String>,
    pub view: Vec<String>,
}

impl Tokens {
    pub fn required(&self) -> bool {
        !self.control.is_empty() || !self.view.is_empty()
    }

    /// The role a request's `Authorization` header grants, if any.
    fn role(&self, headers: &HeaderMap) -> Option<Role> {
        if !self.required() {
            return Some(Role::Control);
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)?;
        let matches =
            |list: &[String]| list.iter().fold(false, |acc, t| acc | bool::from(t.as_bytes().ct_eq(given.as_bytes())));
        if matches(&self.control) {
            Some(Role::Control)
        } else if matches(&self.view) {
            Some(Role::View)
        } else {
            None
        }
    }
}

/// Wrong keys per source address: 10 at once, then 12 a minute; 4096 addresses remembered.
pub fn key_guard() -> Mutex<KeyGuard<IpAddr>> {
    Mutex::new(KeyGuard::new(10, 12, 4096))
}

pub struct AppState {
    pub viewers: Arc<Viewers>,
    pub pipelines: Arc<Pipelines>,
    pub screen: Arc<Screen>,
    pub metrics: Arc<Metrics>,
    pub default_codec: Codec,
    pub tokens: Tokens,
    /// Wrong keys, by the address the request came from (behind a proxy: the proxy's).
    pub guard: Mutex<KeyGuard<IpAddr>>,
    /// The guard's clock.
    pub started: Instant,
    /// VM control over QMP (disabled without `--qmp`).
    pub vm: Arc<crate::qmp::Vm>,
}

impl AppState {
    /// The role a request's key grants, or why not: a wrong or missing key (counted against its
    /// source), or too many wrong keys from its source lately. The key itself is never logged.
    fn authorize(&self, from: SocketAddr, headers: &HeaderMap) -> Result<Role, Refused> {
        if !self.tokens.required() {
            return Ok(Role::Control);
        }
        let now = self.started.elapsed();
        let ip = canonical(from.ip());
        if let Verdict::Wait(wait) = lock(&self.guard).verdict(&ip, now) {
            self.metrics.auth_refused.with_label_values(&["throttled"]).inc();
            return Err(Refused::Throttled { ip, wait });
        }
        if let Some(role) = self.tokens.role(headers) {
            return Ok(role);
        }
        lock(&self.guard).failed(&ip, now);
        let reason = if headers.contains_key(header::AUTHORIZATION) { "wrong_key" } else { "no_key" };
        self.metrics.auth_refused.with_label_values(&[reason]).inc();
        tracing::info!(from = %ip, reason, "request refused: key needed");
        Err(Refused::Key)
    }
}

/// Why a request was refused before it was looked at.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// 401: a wrong or missing key.
    Key,
    /// 429: too many wrong keys from `ip` lately; it may try again after `wait`.
    Throttled { ip: IpAddr, wait: std::time::Duration },
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Key => unauthorized(),
            Refused::Throttled { ip, wait } => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let secs = secs.max(1);
                let mut r = text(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("too many wrong keys from {ip} lately; try again in {secs} s"),
                );
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address they map.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
            header::HeaderName::from_static(SESSION_HEADER),
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            header::HeaderName::from_static("accept-patch"),
        ]);
    Router::new()
        .route("/whep", post(whep_post))
        .route("/whep/sessions/{id}", axum::routing::delete(whep_delete).patch(whep_patch))
        .route("/ice", get(ice))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/control", get(control_get))
        .route("/control/{action}", post(control_post))
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .layer(cors)
        .with_state(state)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn unauthorized() -> Response {
    let mut r = text(StatusCode::UNAUTHORIZED, "a valid 'Authorization: Bearer <token>' header is required");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

#[derive(Deserialize)]
struct WhepQuery {
    codec: Option<String>,
}

async fn whep_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Query(query): Query<WhepQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = match state.authorize(from, &headers) {
        Ok(role) => whep_offer(&state, role, query, &headers, body).await,
        Err(refused) => refused.into_response(),
    };
    state.metrics.whep_requests.with_label_values(&[response.status().as_str()]).inc();
    response
}

async fn whep_offer(state: &AppState, role: Role, query: WhepQuery, headers: &HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("WHEP offers must be sent as Content-Type: application/sdp (got {content_type:?})"),
        );
    }
    let codec = match query.codec.as_deref().map(str::parse::<Codec>) {
        None => state.default_codec,
        Some(Ok(c)) => c,
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "the offer is not UTF-8 text");
    };
    if !sdp.trim_start().starts_with("v=0") {
        return text(StatusCode::BAD_REQUEST, "the offer is not SDP (it must start with v=0)");
    }
    match state.viewers.create(sdp, codec, role).await {
        Ok((session, answer)) => {
            let location = format!("/whep/sessions/{}", session.id);
            let mut response = (StatusCode::CREATED, answer).into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", session.id)) {
                h.insert(header::ETAG, v);
            }
            for link in ice_links(&state.viewers.ice_servers().viewer_now()) {
                if let Ok(v) = HeaderValue::from_str(&link) {
                    h.append(header::LINK, v);
                }
            }
            response
        }
        Err(e @ (SessionError::BadOffer(_) | SessionError::NoCodec(..))) => {
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e @ SessionError::TooManyViewers(_)) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e @ SessionError::Internal(_)) => {
            tracing::error!(error = %e, "cannot create a WHEP session");
            text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// `Link` headers advertising the configured ICE servers (WHEP §4.4).
fn ice_links(servers: &[webrtc::ice_transport::ice_server::RTCIceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for s in servers {
        for url in &s.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if !s.username.is_empty() {
                link.push_str(&format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    s.username, s.credential
                ));
            }
            links.push(link);
        }
    }
    links
}

async fn whep_delete(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.authorize(from, &headers) {
        return refused.into_response();
    }
    if state.viewers.remove(&id, "deleted").await {
        text(StatusCode::OK, "session ended")
    } else {
        text(StatusCode::NOT_FOUND, "no such WHEP session")
    }
}

async fn whep_patch(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.authorize(from, &headers) {
        return refused.into_response();
    }
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle ICE and ICE restarts are not supported: the answer carries every candidate; start a new session",
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("DELETE"));
    r
}

/// The ICE servers a viewer should use, as an `RTCConfiguration`'s `iceServers` (the shape
/// STUNner's auth service answers with), with TURN credentials minted now when the agent has a
/// shared secret. Needs the key: a viewer asks for it before its offer (non-trickle ICE needs
/// the relay before gathering), and nobody else gets TURN credentials.
async fn ice(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.authorize(from, &headers) {
        return refused.into_response();
    }
    let servers: Vec<loco_shared::config::IceServer> = state
        .viewers
        .ice_servers()
        .viewer_now()
        .into_iter()
        .map(|s| loco_shared::config::IceServer {
            urls: s.urls,
            username: (!s.username.is_empty()).then_some(s.username),
            credential: (!s.credential.is_empty()).then_some(s.credential),
        })
        .collect();
    let body = loco_shared::config::IceAnswer { ice_servers: servers, ice_transport_policy: "all".into() };
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_else(|_| "{}".into()),
    )
        .into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let (connected, width, height, generation) = {
        let s = state.screen.lock();
        (s.connected, s.fb.width(), s.fb.height(), s.generation)
    };
    let body = serde_json::json!({
        "vnc_connected": connected,
        "width": width,
        "height": height,
        "viewers": state.viewers.count(),
        "encoders": state.pipelines.active_codecs().iter().map(|c| c.label()).collect::<Vec<_>>(),
        "screen_generation": generation,
        "audio": state.viewers.audio_state().label(),
        "vm": state.vm.health_label(),
        "attention": state.pipelines.attention().map(|a| a.label()),
    });
    let status = if connected { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The header a viewer names its WHEP session in when it asks for a VM action (for the log).
pub const SESSION_HEADER: &str = "x-loco-session";

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The VM's state as QMP sees it. Needs a key (either role) when one is configured; 503 (with
/// the same JSON) without `--qmp`.
async fn control_get(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = state.authorize(from, &headers) {
        return refused.into_response();
    }
    let status = if state.vm.enabled() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json_response(status, &state.vm.control_json())
}

/// Who asked, for the log: the viewer's WHEP session when it names one (`X-Loco-Session`; an
/// unknown one is marked so), else its address.
fn caller(state: &AppState, from: SocketAddr, headers: &HeaderMap) -> String {
    let ip = canonical(from.ip());
    let session =
        headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty()).map(|s| {
            s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect::<String>()
        });
    match session {
        Some(id) if state.viewers.has_session(&id) => format!("session {id} from {ip}"),
        Some(id) => format!("unknown session {id:?} from {ip}"),
        None => ip.to_string(),
    }
}

async fn control_post(
    State(state): State<Arc<AppState>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(action): Path<String>,
    headers: HeaderMap,
) -> Response {
    use crate::qmp::{Action, ActionError};
    let role = match state.authorize(from, &headers) {
        Ok(role) => role,
        Err(refused) => return refused.into_response(),
    };
    let Some(action) = Action::parse(&action) else {
        return text(
            StatusCode::NOT_FOUND,
            "no such VM action: POST /control/reset, powerdown, poweron, snapshot or revert",
        );
    };
    let who = caller(&state, from, &headers);
    let count = |result: &str| state.metrics.vm_control.with_label_values(&[action.label(), result]).inc();
    if role != Role::Control {
        count("forbidden");
        tracing::warn!(action = action.label(), caller = %who, "VM control refused: a view-only key");
        return text(StatusCode::FORBIDDEN, "a view-only key may watch but not control the VM");
    }
    tracing::info!(action = action.label(), caller = %who, "VM control requested");
    let started = Instant::now();
    match state.vm.act(action).await {
        Ok(done) => {
            count("ok");
            tracing::info!(
                action = action.label(), caller = %who, status = %done.status,
                ms = started.elapsed().as_millis() as u64, "VM control done"
            );
            json_response(StatusCode::OK, &serde_json::json!({"action": action.label(), "status": done.status}))
        }
        Err(e) => {
            let (status, result) = match &e {
                ActionError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                ActionError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            count(result);
            tracing::warn!(action = action.label(), caller = %who, result, error = %e, "VM control not done");
            text(status, e.to_string())
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn roles_from_bearer_tokens() {
        let open = Tokens::default();
        assert_eq!(open.role(&headers(None)), Some(Role::Control));
        let t = Tokens { control: vec!["ctl".into()], view: vec!["view".into()] };
        assert_eq!(t.role(&headers(Some("Bearer ctl"))), Some(Role::Control));
        assert_eq!(t.role(&headers(Some("Bearer view"))), Some(Role::View));
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("bearer ctl"),
            Some("Basic ctl"),
            Some("Bearer ctl2"),
            Some("Bearer ct"),
        ] {
            assert_eq!(t.role(&headers(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn ice_server_links() {
        let servers = vec![webrtc::ice_transport::ice_server::RTCIceServer {
            urls: vec!["turn:turn.example:3478?transport=udp".into()],
            username: "u".into(),
            credential: "p".into(),
        }];
        assert_eq!(
            ice_links(&servers),
            vec!["<turn:turn.example:3478?transport=udp>; rel=\"ice-server\"; username=\"u\"; credential=\"p\"; credential-type=\"password\"".to_owned()]
        );
    }
}
