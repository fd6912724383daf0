//! Browser keyboard events to X11 keysyms (what the `key` input message carries).
//!
//! Modifier keys are told apart by `KeyboardEvent.code` (left/right); everything else goes by
//! `KeyboardEvent.key`: named keys through a table, characters by code point (Latin-1 keysyms
//! equal their code point; other Unicode characters use X11's `0x0100_0000 + code point`).

/// The keysym for a `KeyboardEvent` with this `key` and `code`, or `None` when it has none
/// (dead keys, IME composition, unknown named keys, control characters).
pub fn keysym(key: &str, code: &str) -> Option<u32> {
    if key == "AltGraph" {
        return Some(0xfe03);
    }
    let by_code = match code {
        "ShiftLeft" => Some(0xffe1),
        "ShiftRight" => Some(0xffe2),
        "ControlLeft" => Some(0xffe3),
        "ControlRight" => Some(0xffe4),
        "AltLeft" => Some(0xffe9),
        "AltRight" => Some(0xffea),
        // The Windows/Command key is Super in X11; QEMU turns it into the Windows key.
        "MetaLeft" | "OSLeft" => Some(0xffeb),
        "MetaRight" | "OSRight" => Some(0xffec),
        "NumpadEnter" => Some(0xff8d),
        _ => None,
    };
    if by_code.is_some() {
        return by_code;
    }
    if let Some(sym) = named(key) {
        return Some(sym);
    }
    let mut chars = key.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return None;
    };
    let cp = u32::from(c);
    match cp {
        0x20..=0x7e | 0xa0..=0xff => Some(cp),
        0..=0x1f | 0x7f..=0x9f => None,
        _ => Some(0x0100_0000 + cp),
    }
}

fn named(key: &str) -> Option<u32> {
    Some(match key {
        "Enter" => 0xff0d,
        "Backspace" => 0xff08,
        "Tab" => 0xff09,
        "Escape" | "Esc" => 0xff1b,
        "ArrowLeft" | "Left" => 0xff51,
        "ArrowUp" | "Up" => 0xff52,
        "ArrowRight" | "Right" => 0xff53,
        "ArrowDown" | "Down" => 0xff54,
        "Home" => 0xff50,
        "End" => 0xff57,
        "PageUp" => 0xff55,
        "PageDown" => 0xff56,
        "Delete" | "Del" => 0xffff,
        "Insert" => 0xff63,
        "Shift" => 0xffe1,
        "Control" => 0xffe3,
        "Alt" => 0xffe9,
        "Meta" | "OS" | "Super" => 0xffeb,
        "CapsLock" => 0xffe5,
        "NumLock" => 0xff7f,
        "ScrollLock" => 0xff14,
        "Pause" => 0xff13,
        "PrintScreen" => 0xff61,
        "ContextMenu" | "Apps" => 0xff67,
        f if f.len() >= 2 && f.starts_with('F') => {
            let n: u32 = f[1..].parse().ok()?;
            if !(1..=24).contains(&n) {
                return None;
            }
            0xffbe + n - 1
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters() {
        assert_eq!(keysym("a", "KeyA"), Some(0x61));
        assert_eq!(keysym("A", "KeyA"), Some(0x41));
        assert_eq!(keysym(" ", "Space"), Some(0x20));
        assert_eq!(keysym("é", "Quote"), Some(0xe9));
        assert_eq!(keysym("€", "KeyE"), Some(0x0100_20ac));
        assert_eq!(keysym("\u{1}", ""), None);
        assert_eq!(keysym("ab", ""), None);
        assert_eq!(keysym("", ""), None);
        assert_eq!(keysym("Dead", "BracketLeft"), None);
        assert_eq!(keysym("Unidentified", ""), None);
    }

    #[test]
    fn named_keys_and_modifiers() {
        assert_eq!(keysym("Enter", "Enter"), Some(0xff0d));
        assert_eq!(keysym("Enter", "NumpadEnter"), Some(0xff8d));
        assert_eq!(keysym("Shift", "ShiftRight"), Some(0xffe2));
        assert_eq!(keysym("Shift", ""), Some(0xffe1));
        assert_eq!(keysym("Meta", "MetaLeft"), Some(0xffeb));
        assert_eq!(keysym("F1", "F1"), Some(0xffbe));
        assert_eq!(keysym("F12", "F12"), Some(0xffc9));
        assert_eq!(keysym("F25", ""), None);
        assert_eq!(keysym("Fn", ""), None);
        assert_eq!(keysym("ArrowLeft", "ArrowLeft"), Some(0xff51));
        assert_eq!(keysym("AltGraph", "AltRight"), Some(0xfe03));
        assert_eq!(keysym("MediaPlayPause", ""), None);
    }
}
