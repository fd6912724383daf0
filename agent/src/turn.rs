//! TURN credentials: static (`--turn-username`/`--turn-password`), or minted per WHEP session
//! from a secret shared with the TURN server (`--turn-secret-file`): the "REST API for access to
//! TURN services" scheme (draft-uberti-behave-turn-rest) that coturn's `use-auth-secret` and
//! STUNner's `ephemeral` mode check. Username `<expiry unix time>:<user>`, password
//! `base64(HMAC-SHA1(secret, username))`: a credential stops working at its expiry, and the
//! secret itself never leaves the agent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use webrtc::ice_transport::ice_server::RTCIceServer;

/// The user-id part of minted usernames (opaque to the TURN server).
pub const USER: &str = "loco";

#[derive(Clone)]
pub struct TurnRest {
    secret: Vec<u8>,
    pub ttl: Duration,
}

impl std::fmt::Debug for TurnRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnRest").field("secret", &"<hidden>").field("ttl", &self.ttl).finish()
    }
}

impl TurnRest {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        Self { secret: secret.as_bytes().to_vec(), ttl }
    }

    /// `(username, credential)` valid until `now_unix + ttl`.
    pub fn mint(&self, now_unix: u64) -> (String, String) {
        let username = format!("{}:{USER}", now_unix.saturating_add(self.ttl.as_secs()));
        (username.clone(), credential(&self.secret, &username))
    }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn credential(secret: &[u8], username: &str) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The ICE servers for the agent's own peer connections and the ones handed to viewers, with
/// credentials fresh for each session when a shared secret is configured.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    /// What the agent itself uses (`--ice-server`).
    pub agent: Vec<RTCIceServer>,
    /// What viewers are told (`--viewer-ice-server`, else the agent's).
    pub viewer: Vec<RTCIceServer>,
    pub rest: Option<TurnRest>,
}

impl IceServers {
    /// One server per URL, with the static username and password (empty when none).
    pub fn new(
        agent_urls: &[String],
        viewer_urls: &[String],
        username: &str,
        password: &str,
        rest: Option<TurnRest>,
    ) -> Self {
        let one = |url: &String| RTCIceServer {
            urls: vec![url.clone()],
            username: username.to_owned(),
            credential: password.to_owned(),
        };
        let agent: Vec<RTCIceServer> = agent_urls.iter().map(one).collect();
        let viewer = if viewer_urls.is_empty() { agent.clone() } else { viewer_urls.iter().map(one).collect() };
        Self { agent, viewer, rest }
    }

    fn fresh(&self, list: &[RTCIceServer], now_unix: u64) -> Vec<RTCIceServer> {
        let Some(rest) = &self.rest else { return list.to_vec() };
        let (username, credential) = rest.mint(now_unix);
        list.iter()
            .map(|s| {
                if s.urls.iter().any(|u| u.starts_with("turn:") || u.starts_with("turns:")) {
                    RTCIceServer { urls: s.urls.clone(), username: username.clone(), credential: credential.clone() }
                } else {
                    RTCIceServer { urls: s.urls.clone(), username: String::new(), credential: String::new() }
                }
            })
            .collect()
    }

    pub fn agent_now(&self) -> Vec<RTCIceServer> {
        self.fresh(&self.agent, unix_now())
    }

    pub fn viewer_now(&self) -> Vec<RTCIceServer> {
        self.fresh(&self.viewer, unix_now())
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_api_credential() {
        // Cross-checked with Python's hmac/hashlib/base64, and the example in STUNner's docs/AUTH.md.
        assert_eq!(credential(b"my-shared-secret", "1681490135:user-id"), "WSfJZ8QIi8ebu1uWhxlclvyjEPY=");
        let r = TurnRest::new("my-shared-secret", Duration::from_secs(3600));
        let (u, c) = r.mint(1_700_000_000);
        assert_eq!(u, "1700003600:loco");
        assert_eq!(c, credential(b"my-shared-secret", "1700003600:loco"));
        assert!(!format!("{r:?}").contains("my-shared-secret"));
    }

    #[test]
    fn minted_for_turn_urls_only_and_viewers_get_their_own_urls() {
        let rest = TurnRest::new("s3cret", Duration::from_secs(60));
        let ice = IceServers::new(
            &["turn:turn.internal:3478?transport=udp".into(), "stun:stun.example:3478".into()],
            &["turn:turn.example:3478?transport=udp".into()],
            "",
            "",
            Some(rest),
        );
        let agent = ice.fresh(&ice.agent, 1000);
        assert_eq!(agent[0].username, "1060:loco");
        assert_eq!(agent[0].credential, credential(b"s3cret", "1060:loco"));
        assert_eq!((agent[1].username.as_str(), agent[1].credential.as_str()), ("", ""));
        let viewer = ice.fresh(&ice.viewer, 1000);
        assert_eq!(viewer.len(), 1);
        assert_eq!(viewer[0].urls, vec!["turn:turn.example:3478?transport=udp".to_owned()]);
        assert_eq!(viewer[0].username, "1060:loco");
        // Static credentials pass through unchanged; no viewer URLs: viewers get the agent's.
        let st = IceServers::new(&["turn:t:3478".into()], &[], "u", "p", None);
        assert_eq!(st.viewer_now()[0].username, "u");
        assert_eq!(st.viewer_now()[0].credential, "p");
    }
}
