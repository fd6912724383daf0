//! The page's `desktops.json`: arbitrary text through `Config::parse`. Must never panic;
//! whatever it accepts must satisfy the documented rules and survive a serialise/parse round
//! trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loco_shared::config::{Config, MAX_DESKTOPS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = Config::parse(text) else { return };

    assert!((1..=MAX_DESKTOPS).contains(&config.desktops.len()));
    for (i, d) in config.desktops.iter().enumerate() {
        let name = d.name.trim();
        assert!(!name.is_empty() && name.chars().count() <= 64, "{d:?}");
        assert!(config.desktops[..i].iter().all(|o| o.name.trim() != name), "duplicate name {name:?}");
        assert!(!d.whep.chars().any(|c| c.is_whitespace() || c.is_control()), "{d:?}");
        assert!(
            d.whep.starts_with("http://")
                || d.whep.starts_with("https://")
                || (d.whep.starts_with('/') && !d.whep.starts_with("//")),
            "{d:?}"
        );
        if let Some(t) = &d.token {
            assert!(!t.trim().is_empty() && !t.contains(['\r', '\n']), "{d:?}");
        }
    }
    for s in &config.ice_servers {
        assert!(!s.urls.is_empty());
        for u in &s.urls {
            assert!(["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| u.starts_with(p)), "{u:?}");
        }
    }

    let again = serde_json::to_string(&config).expect("a parsed config serialises");
    assert_eq!(Config::parse(&again).as_ref(), Ok(&config), "round trip of {again}");
});
