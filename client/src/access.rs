//! The page's access key: where it comes from and which panels use it. Pure; the shell reads
//! `location.hash` and `localStorage` and draws the key form.
//!
//! `./loco up` off loopback prints the page's URL as `http://HOST:PORT/#key=KEY`: a fragment
//! never reaches a server (or its logs), the page takes the key from it, keeps it for the origin
//! and takes it out of the address bar. A desktop with its own `token` in `desktops.json` keeps
//! using that; every other desktop sends the page's key.

/// The longest key accepted (the same as `./loco up`'s).
pub const MAX_KEY_CHARS: usize = 256;

/// Characters a key may have: what goes into a URL fragment and an HTTP header unchanged.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_CHARS
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// What the fragment says: `#key=K` (among `&`-separated parts) gives `K`. An empty or malformed
/// key is ignored, as if absent.
pub fn key_from_fragment(hash: &str) -> Option<String> {
    let h = hash.strip_prefix('#').unwrap_or(hash);
    h.split('&').filter_map(|part| part.strip_prefix("key=")).map(str::trim).find(|k| valid_key(k)).map(str::to_owned)
}

/// The fragment with every `key=` part taken out (`""` when nothing else was there), for
/// `history.replaceState`.
pub fn fragment_without_key(hash: &str) -> String {
    let h = hash.strip_prefix('#').unwrap_or(hash);
    let rest: Vec<&str> = h.split('&').filter(|p| !p.is_empty() && !p.starts_with("key=")).collect();
    if rest.is_empty() {
        String::new()
    } else {
        format!("#{}", rest.join("&"))
    }
}

/// The bearer token a desktop's WHEP requests carry: its own, else the page's key.
pub fn bearer(desktop_token: Option<&str>, page_key: Option<&str>) -> Option<String> {
    desktop_token.or(page_key).map(str::to_owned)
}

/// What the key form says, if it shows: `locked` panels (refused the key, or got none).
pub fn prompt(page_key: Option<&str>, locked: &[&str]) -> Option<String> {
    if locked.is_empty() {
        return None;
    }
    let which = if locked.len() == 1 { locked[0].to_owned() } else { format!("{} desktops", locked.len()) };
    Some(match page_key {
        None => format!(
            "This wall needs its key ({which} asked for one). Paste the key, or open the page's full \
                         address with #key=… that `./loco up` printed."
        ),
        Some(_) => format!("The key was refused by {which}. Enter the right key."),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_fragments() {
        assert_eq!(key_from_fragment("#key=abc-DEF_0.9~"), Some("abc-DEF_0.9~".into()));
        assert_eq!(key_from_fragment("key=abc"), Some("abc".into()));
        assert_eq!(key_from_fragment("#view=1&key=abc&x=2"), Some("abc".into()));
        for none in ["", "#", "#key=", "#key", "#keys=abc", "#key=a b", "#key=a%20b", "#key=ä", "#key=a\"b"] {
            assert_eq!(key_from_fragment(none), None, "{none:?}");
        }
        assert_eq!(key_from_fragment(&format!("#key={}", "k".repeat(MAX_KEY_CHARS))).map(|k| k.len()), Some(256));
        assert_eq!(key_from_fragment(&format!("#key={}", "k".repeat(MAX_KEY_CHARS + 1))), None);
    }

    #[test]
    fn the_key_leaves_the_address_bar_and_the_rest_stays() {
        assert_eq!(fragment_without_key("#key=abc"), "");
        assert_eq!(fragment_without_key(""), "");
        assert_eq!(fragment_without_key("#view=1&key=abc&x=2"), "#view=1&x=2");
        assert_eq!(fragment_without_key("#key=abc&key=def"), "");
    }

    #[test]
    fn a_desktops_own_token_wins() {
        assert_eq!(bearer(Some("own"), Some("page")), Some("own".into()));
        assert_eq!(bearer(None, Some("page")), Some("page".into()));
        assert_eq!(bearer(None, None), None);
    }

    #[test]
    fn the_prompt_says_what_is_wrong() {
        assert_eq!(prompt(None, &[]), None);
        assert_eq!(prompt(Some("k"), &[]), None);
        assert!(prompt(None, &["vm1"]).unwrap().starts_with("This wall needs its key (vm1 asked for one)"));
        assert_eq!(
            prompt(Some("k"), &["vm1", "vm2"]).unwrap(),
            "The key was refused by 2 desktops. Enter the right key."
        );
    }
}
