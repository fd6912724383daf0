//! The page's list of desktops: `desktops.json` beside the page, or the file a `?config=` URL
//! names.
//!
//! ```json
//! {"desktops": [{"name": "vm1", "whep": "https://loco.example/vm/0/whep", "token": null}],
//!  "iceServers": [{"urls": ["turn:turn.example:3478"], "username": "u", "credential": "p"}]}
//! ```
//!
//! Parsing is strict and every problem is reported in words a person can act on, because the
//! page shows the message instead of a blank scene.

use serde::{Deserialize, Serialize};

/// Most desktops one scene shows.
pub const MAX_DESKTOPS: usize = 9;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desktop {
    /// Caption shown under the panel.
    pub name: String,
    /// The agent's WHEP endpoint: an absolute http(s) URL, or a path on the page's origin.
    pub whep: String,
    /// Bearer token for the agent, if it needs one.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

/// What an agent's `GET /ice` answers: the ICE servers a viewer should use, TURN credentials
/// minted for it (the shape of an `RTCConfiguration`, and of STUNner's auth service's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceAnswer {
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    #[serde(rename = "iceTransportPolicy", default = "all")]
    pub ice_transport_policy: String,
}

fn all() -> String {
    "all".into()
}

fn is_ice_url(url: &str) -> bool {
    ["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| url.starts_with(p))
}

impl IceAnswer {
    /// Parses and checks an answer (unknown fields are tolerated: it is another program's output).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let a: IceAnswer = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        for (index, s) in a.ice_servers.iter().enumerate() {
            if s.urls.is_empty() {
                return Err(ConfigError::IceServer { index, problem: "\"urls\" is empty".into() });
            }
            if let Some(u) = s.urls.iter().find(|u| !is_ice_url(u)) {
                return Err(ConfigError::IceServer { index, problem: format!("{u:?} is not a stun:/turn: URL") });
            }
        }
        Ok(a)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub desktops: Vec<Desktop>,
    #[serde(default, rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("the desktop list is not valid JSON of the expected shape: {0}")]
    Json(String),
    #[error("the desktop list is empty: add at least one {{\"name\", \"whep\"}} entry")]
    Empty,
    #[error("the desktop list has {0} entries; at most {MAX_DESKTOPS} fit in the scene")]
    TooMany(usize),
    #[error("desktop #{index}: {problem}")]
    Desktop { index: usize, problem: String },
    #[error("ICE server #{index}: {problem}")]
    IceServer { index: usize, problem: String },
}

impl Config {
    /// Parses and checks a `desktops.json` document.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.desktops.is_empty() {
            return Err(ConfigError::Empty);
        }
        if self.desktops.len() > MAX_DESKTOPS {
            return Err(ConfigError::TooMany(self.desktops.len()));
        }
        for (index, d) in self.desktops.iter().enumerate() {
            let problem = |p: String| ConfigError::Desktop { index: index + 1, problem: p };
            let name = d.name.trim();
            if name.is_empty() {
                return Err(problem("\"name\" is empty".into()));
            }
            if name.chars().count() > 64 {
                return Err(problem(format!("\"name\" {name:?} is longer than 64 characters")));
            }
            if self.desktops[..index].iter().any(|o| o.name.trim() == name) {
                return Err(problem(format!("\"name\" {name:?} is used twice")));
            }
            if !is_http_url_or_path(&d.whep) {
                return Err(problem(format!("\"whep\" {:?} is not an http(s) URL or a path starting with /", d.whep)));
            }
            if d.token.as_deref().is_some_and(|t| t.trim().is_empty() || t.contains(['\r', '\n'])) {
                return Err(problem("\"token\" is empty or spans lines; use null for none".into()));
            }
        }
        for (index, s) in self.ice_servers.iter().enumerate() {
            let problem = |p: String| ConfigError::IceServer { index: index + 1, problem: p };
            if s.urls.is_empty() {
                return Err(problem("\"urls\" is empty".into()));
            }
            for url in &s.urls {
                if !is_ice_url(url) {
                    return Err(problem(format!("{url:?} is not a stun:, stuns:, turn: or turns: URL")));
                }
            }
        }
        Ok(())
    }
}

fn is_http_url_or_path(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if let Some(rest) = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")) {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        return !host.is_empty() && !host.starts_with(':');
    }
    s.starts_with('/') && !s.starts_with("//")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            r#"{"desktops":[{"name":"vm1","whep":"https://h.example/vm/0/whep","token":"t"},
                {"name":"vm2","whep":"/vm/1/whep","token":null},{"name":"vm3","whep":"http://127.0.0.1:8081/whep"}],
                "iceServers":[{"urls":["turn:t.example:3478?transport=udp"],"username":"u","credential":"p"}]}"#,
        )
        .unwrap();
        assert_eq!(c.desktops.len(), 3);
        assert_eq!(c.desktops[0].token.as_deref(), Some("t"));
        assert_eq!(c.desktops[2].token, None);
        assert_eq!(c.ice_servers[0].username.as_deref(), Some("u"));
    }

    #[test]
    fn explains_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("[]", "not valid JSON"),
            (r#"{"desktops":[]}"#, "empty"),
            (r#"{"desktop":[]}"#, "not valid JSON"),
            (r#"{"desktops":[{"name":"a"}]}"#, "not valid JSON"),
            (r#"{"desktops":[{"name":" ","whep":"/w"}]}"#, "desktop #1: \"name\" is empty"),
            (
                r#"{"desktops":[{"name":"a","whep":"/w"},{"name":"a","whep":"/x"}]}"#,
                "desktop #2: \"name\" \"a\" is used twice",
            ),
            (r#"{"desktops":[{"name":"a","whep":"ftp://x/w"}]}"#, "not an http(s) URL"),
            (r#"{"desktops":[{"name":"a","whep":"//evil/w"}]}"#, "not an http(s) URL"),
            (r#"{"desktops":[{"name":"a","whep":"https:///w"}]}"#, "not an http(s) URL"),
            (r#"{"desktops":[{"name":"a","whep":"/w w"}]}"#, "not an http(s) URL"),
            (r#"{"desktops":[{"name":"a","whep":"/w","token":""}]}"#, "\"token\" is empty"),
            (r#"{"desktops":[{"name":"a","whep":"/w"}],"iceServers":[{"urls":[]}]}"#, "ICE server #1"),
            (r#"{"desktops":[{"name":"a","whep":"/w"}],"iceServers":[{"urls":["http://x"]}]}"#, "not a stun:"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let ten: Vec<String> = (0..10).map(|i| format!(r#"{{"name":"vm{i}","whep":"/vm/{i}/whep"}}"#)).collect();
        let err = Config::parse(&format!(r#"{{"desktops":[{}]}}"#, ten.join(","))).unwrap_err();
        assert_eq!(err, ConfigError::TooMany(10));
    }

    #[test]
    fn ice_answers() {
        let a = IceAnswer::parse(
            r#"{"iceServers":[{"urls":["turn:t.example:3478?transport=udp"],"username":"1700003600:loco","credential":"c="}],"iceTransportPolicy":"all"}"#,
        )
        .unwrap();
        assert_eq!(a.ice_servers[0].username.as_deref(), Some("1700003600:loco"));
        assert_eq!(IceAnswer::parse(r#"{"iceServers":[]}"#).unwrap().ice_transport_policy, "all");
        for (bad, why) in [
            ("{}", "iceServers"),
            (r#"{"iceServers":[{"urls":[]}]}"#, "empty"),
            (r#"{"iceServers":[{"urls":["http://x"]}]}"#, "not a stun:/turn: URL"),
        ] {
            let e = IceAnswer::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
