//! The page's access key in the browser: taken from `#key=…` (then out of the address bar),
//! kept in `localStorage` for the origin, sent by every desktop without its own token, and
//! asked for in the `#loco-key` form when an agent refuses it ([`crate::access`] decides).

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{HtmlInputElement, Storage};

use super::util::{document, now_ms, window};
use super::{App, Shared};
use crate::access::{fragment_without_key, key_from_fragment, prompt, valid_key};
use crate::scene::StreamState;

const STORAGE_KEY: &str = "loco.key";

fn storage() -> Option<Storage> {
    window().local_storage().ok().flatten()
}

/// The key from the address's fragment (remembered for the origin and taken out of the
/// address bar), else the one remembered.
pub(super) fn page_key() -> Option<String> {
    let location = window().location();
    let hash = location.hash().unwrap_or_default();
    if let Some(key) = key_from_fragment(&hash) {
        if let Some(s) = storage() {
            let _ = s.set_item(STORAGE_KEY, &key);
        }
        let clean = format!(
            "{}{}{}",
            location.pathname().unwrap_or_default(),
            location.search().unwrap_or_default(),
            fragment_without_key(&hash)
        );
        if let Ok(history) = window().history() {
            let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&clean));
        }
        return Some(key);
    }
    storage().and_then(|s| s.get_item(STORAGE_KEY).ok().flatten()).filter(|k| valid_key(k))
}

/// The form's submit: a well-formed key is remembered and handed to every locked panel.
pub(super) fn install_key_form(shared: &Shared) {
    let Some(form) = document().get_element_by_id("loco-key") else { return };
    let shared = shared.clone();
    let on_submit = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
        e.prevent_default();
        let Some(input) = document().get_element_by_id("loco-key-input") else { return };
        let input: HtmlInputElement = input.unchecked_into();
        let key = input.value().trim().to_owned();
        if !valid_key(&key) {
            set_text("loco-key-msg", "That is not a key: keys are letters, digits and - . _ ~ only.");
            return;
        }
        input.set_value("");
        if let Some(s) = storage() {
            let _ = s.set_item(STORAGE_KEY, &key);
        }
        if let Ok(mut app) = shared.try_borrow_mut() {
            app.set_key(key);
        }
    });
    let _ = form.add_event_listener_with_callback("submit", on_submit.as_ref().unchecked_ref());
    on_submit.forget();
}

fn set_text(id: &str, text: &str) {
    if let Some(el) = document().get_element_by_id(id) {
        el.set_text_content(Some(text));
    }
}

impl App {
    /// A new key: desktops without their own token send it, and locked panels try again now.
    pub(super) fn set_key(&mut self, key: String) {
        let now = now_ms();
        for p in &mut self.panels {
            if !p.own_token {
                p.desktop.token = Some(key.clone());
                p.link.unlock(now);
            }
        }
        self.key = Some(key);
        self.key_prompt = None;
        if let Some(form) = document().get_element_by_id("loco-key") {
            let _ = form.set_attribute("hidden", "");
        }
    }

    /// Shows, updates or hides the key form (from the tick).
    pub(super) fn update_key_prompt(&mut self) {
        let locked: Vec<&str> = self
            .panels
            .iter()
            .filter(|p| p.link.state() == StreamState::Locked)
            .map(|p| p.desktop.name.as_str())
            .collect();
        let want = prompt(self.key.as_deref(), &locked);
        if want == self.key_prompt {
            return;
        }
        let Some(form) = document().get_element_by_id("loco-key") else { return };
        match &want {
            Some(text) => {
                set_text("loco-key-msg", text);
                let _ = form.remove_attribute("hidden");
            }
            None => {
                let _ = form.set_attribute("hidden", "");
            }
        }
        self.key_prompt = want;
    }
}
