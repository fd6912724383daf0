//! Small browser helpers: timers as futures, fetch with a deadline, element lookup.

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

pub fn window() -> web_sys::Window {
    web_sys::window().expect("loco runs in a window")
}

pub fn document() -> web_sys::Document {
    window().document().expect("the window has a document")
}

pub fn now_ms() -> f64 {
    window().performance().map(|p| p.now()).unwrap_or(0.0)
}

/// Resolves after `ms` milliseconds.
pub async fn sleep(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

/// A JS error or value as one line of text.
pub fn js_error(e: &JsValue) -> String {
    if let Some(err) = e.dyn_ref::<js_sys::Error>() {
        return String::from(err.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// `fetch` that gives up after `timeout_ms`, with errors as readable text.
pub async fn fetch(url: &str, init: &web_sys::RequestInit, timeout_ms: i32) -> Result<web_sys::Response, String> {
    let controller = web_sys::AbortController::new().map_err(|e| js_error(&e))?;
    init.set_signal(Some(&controller.signal()));
    let abort = Closure::once(move || controller.abort());
    let timer = window()
        .set_timeout_with_callback_and_timeout_and_arguments_0(abort.as_ref().unchecked_ref(), timeout_ms)
        .unwrap_or(0);
    let result = JsFuture::from(window().fetch_with_str_and_init(url, init)).await;
    window().clear_timeout_with_handle(timer);
    drop(abort);
    match result {
        Ok(v) => Ok(v.unchecked_into()),
        Err(e) => {
            let name = js_sys::Reflect::get(&e, &"name".into()).ok().and_then(|n| n.as_string());
            if name.as_deref() == Some("AbortError") {
                Err(format!("no answer from {url} in {} s", timeout_ms / 1000))
            } else {
                Err(format!("cannot reach {url} ({})", js_error(&e)))
            }
        }
    }
}

/// `obj[key]` as a number, if it is one.
pub fn num(obj: &JsValue, key: &str) -> Option<f64> {
    js_sys::Reflect::get(obj, &key.into()).ok().and_then(|v| v.as_f64())
}

/// `obj[key]` as a string, if it is one.
pub fn text(obj: &JsValue, key: &str) -> Option<String> {
    js_sys::Reflect::get(obj, &key.into()).ok().and_then(|v| v.as_string())
}

pub fn set(obj: &JsValue, key: &str, value: impl Into<JsValue>) {
    let _ = js_sys::Reflect::set(obj, &key.into(), &value.into());
}
