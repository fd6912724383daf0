//! Paste as typing: text pasted into the flat view becomes key events for the focused VM
//! (Windows 98 has no clipboard agent). Printable ASCII, Enter (LF, CR LF or CR) and Tab only —
//! anything else refuses the whole paste, with a message, and nothing is sent. The keys leave
//! at a bounded rate ([`Typist`]). Pure: time comes in as milliseconds.

use std::collections::VecDeque;

use crate::keyboard::KeyEvent;

/// The most characters one paste may type.
pub const MAX_CHARS: usize = 2000;
/// Characters typed per second.
pub const CHARS_PER_S: f64 = 40.0;

const SHIFT: u32 = 0xffe1;

/// The key events that type `text` on a US layout (Shift around shifted characters, as a
/// physical keyboard sends them), or why it cannot be typed.
pub fn keys_for(text: &str) -> Result<Vec<Vec<KeyEvent>>, String> {
    let n = text.chars().count();
    if n > MAX_CHARS {
        return Err(format!("paste refused: {n} characters, at most {MAX_CHARS} are typed"));
    }
    let mut out = Vec::with_capacity(n);
    let mut chars = text.chars().enumerate().peekable();
    while let Some((k, c)) = chars.next() {
        let sym = match c {
            '\r' => {
                if chars.peek().is_some_and(|&(_, n)| n == '\n') {
                    chars.next();
                }
                0xff0d
            }
            '\n' => 0xff0d,
            '\t' => 0xff09,
            ' '..='~' => u32::from(c),
            _ => {
                let shown = if c.is_control() {
                    format!("U+{:04X}", u32::from(c))
                } else {
                    format!("'{c}' (U+{:04X})", u32::from(c))
                };
                return Err(format!(
                    "paste refused: character {} is {shown}; only printable ASCII, Enter and Tab can be typed",
                    k + 1
                ));
            }
        };
        let shifted = c.is_ascii_uppercase() || "~!@#$%^&*()_+{}|:\"<>?".contains(c);
        let mut keys = Vec::with_capacity(4);
        if shifted {
            keys.push((SHIFT, true));
        }
        keys.extend([(sym, true), (sym, false)]);
        if shifted {
            keys.push((SHIFT, false));
        }
        out.push(keys);
    }
    Ok(out)
}

/// Typing queued for one panel, released at [`CHARS_PER_S`].
#[derive(Debug, Clone, Default)]
pub struct Typist {
    pub panel: Option<usize>,
    queue: VecDeque<Vec<KeyEvent>>,
    next_at: f64,
    /// Characters typed by this paste so far, and its length.
    pub typed: usize,
    pub total: usize,
}

impl Typist {
    /// A new paste for `panel` (replaces whatever was still queued).
    pub fn start(&mut self, panel: usize, chars: Vec<Vec<KeyEvent>>, now: f64) {
        self.panel = Some(panel);
        self.total = chars.len();
        self.typed = 0;
        self.queue = chars.into();
        self.next_at = now;
    }

    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The key events due by `now`: (panel, events).
    pub fn due(&mut self, now: f64) -> Option<(usize, Vec<KeyEvent>)> {
        let panel = self.panel?;
        let mut out = Vec::new();
        while now >= self.next_at {
            let Some(c) = self.queue.pop_front() else { break };
            out.extend(c);
            self.typed += 1;
            self.next_at += 1000.0 / CHARS_PER_S;
        }
        if self.queue.is_empty() {
            self.next_at = self.next_at.max(now);
        }
        (!out.is_empty()).then_some((panel, out))
    }

    /// Stops typing (the panel went down or lost focus).
    pub fn cancel(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_becomes_keys() {
        let k = keys_for("hI!\r\n\t").unwrap();
        assert_eq!(k[0], [(0x68, true), (0x68, false)]);
        assert_eq!(k[1], [(SHIFT, true), (0x49, true), (0x49, false), (SHIFT, false)]);
        assert_eq!(k[2], [(SHIFT, true), (0x21, true), (0x21, false), (SHIFT, false)]);
        assert_eq!(k[3], [(0xff0d, true), (0xff0d, false)], "CR LF is one Enter");
        assert_eq!(k[4], [(0xff09, true), (0xff09, false)]);
        assert_eq!(k.len(), 5);
        assert_eq!(keys_for("a\rb").unwrap().len(), 3);
        assert_eq!(keys_for("").unwrap().len(), 0);
    }

    #[test]
    fn anything_else_refuses_the_whole_paste() {
        let e = keys_for("café").unwrap_err();
        assert!(e.contains("character 4") && e.contains("'é'"), "{e}");
        assert!(keys_for("a\u{7}b").unwrap_err().contains("U+0007"));
        assert!(keys_for(&"x".repeat(MAX_CHARS + 1)).unwrap_err().contains("at most"));
    }

    #[test]
    fn typing_is_rate_limited() {
        let mut t = Typist::default();
        assert_eq!(t.due(0.0), None);
        t.start(2, keys_for("abcd").unwrap(), 1000.0);
        assert_eq!(t.due(1000.0), Some((2, vec![(0x61, true), (0x61, false)])));
        assert_eq!(t.due(1010.0), None);
        let (_, keys) = t.due(1000.0 + 2.0 * 1000.0 / CHARS_PER_S).unwrap();
        assert_eq!(keys.len(), 4, "two characters due");
        assert!(t.busy());
        t.due(5000.0);
        assert!(!t.busy());
        assert_eq!((t.typed, t.total), (4, 4));
        t.start(1, keys_for("zz").unwrap(), 6000.0);
        t.cancel();
        assert_eq!(t.due(7000.0), None);
    }
}
