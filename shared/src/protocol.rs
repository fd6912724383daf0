//! Messages on the `input` data channel, viewer → agent.
//!
//! One JSON object per data-channel message (text), documented in `docs/protocol.md`:
//!
//! ```json
//! {"type":"pointer","x":512,"y":384,"buttons":1}
//! {"type":"key","keysym":65307,"down":true}
//! ```
//!
//! Parsing is strict: unknown types, missing or extra fields, non-integer or negative
//! coordinates and oversized messages are errors. Coordinates that are well-formed but outside
//! the desktop are *not* errors: they are clamped to the desktop by [`InputMessage::clamped`],
//! because a controller ray that slides off a panel edge should pin the pointer to the edge.

use serde::{Deserialize, Serialize};

/// The largest message the agent accepts, in bytes. Real messages are under 80 bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The label of the data channel that carries [`InputMessage`]s.
pub const INPUT_CHANNEL_LABEL: &str = "input";

/// Pointer button bits, as in RFB's PointerEvent.
pub mod buttons {
    pub const LEFT: u8 = 1;
    pub const MIDDLE: u8 = 2;
    pub const RIGHT: u8 = 4;
    pub const WHEEL_UP: u8 = 8;
    pub const WHEEL_DOWN: u8 = 16;
    pub const WHEEL_LEFT: u8 = 32;
    pub const WHEEL_RIGHT: u8 = 64;
}

/// One input event from a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum InputMessage {
    /// Absolute pointer position in desktop pixels and the RFB button mask.
    Pointer { x: u32, y: u32, buttons: u8 },
    /// An X11 keysym pressed (`down: true`) or released.
    Key { keysym: u32, down: bool },
}

/// Why a message was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message is {0} bytes, larger than the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("message is not valid JSON for an input event: {0}")]
    Malformed(String),
    #[error("binary messages are not accepted on the input channel")]
    Binary,
}

impl InputMessage {
    /// Parses one data-channel text message.
    pub fn parse(text: &[u8]) -> Result<Self, ProtocolError> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(ProtocolError::TooLarge(text.len()));
        }
        serde_json::from_slice(text).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    /// Serialises the message as the viewer sends it.
    pub fn to_json(&self) -> String {
        // Serialising these plain enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The message with its coordinates clamped into a `width_px` × `height_px` desktop.
    /// A zero-sized desktop clamps to (0, 0).
    pub fn clamped(self, width_px: u32, height_px: u32) -> Self {
        match self {
            InputMessage::Pointer { x, y, buttons } => InputMessage::Pointer {
                x: x.min(width_px.saturating_sub(1)),
                y: y.min(height_px.saturating_sub(1)),
                buttons,
            },
            key @ InputMessage::Key { .. } => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pointer_and_key() {
        assert_eq!(
            InputMessage::parse(br#"{"type":"pointer","x":10,"y":20,"buttons":1}"#),
            Ok(InputMessage::Pointer { x: 10, y: 20, buttons: 1 })
        );
        assert_eq!(
            InputMessage::parse(br#"{"keysym":65293,"down":false,"type":"key"}"#),
            Ok(InputMessage::Key { keysym: 65293, down: false })
        );
    }

    #[test]
    fn round_trips() {
        for m in [
            InputMessage::Pointer { x: 1023, y: 767, buttons: buttons::RIGHT },
            InputMessage::Key { keysym: 0x61, down: true },
        ] {
            assert_eq!(InputMessage::parse(m.to_json().as_bytes()), Ok(m));
        }
    }

    #[test]
    fn rejects_garbage() {
        let bad: &[&[u8]] = &[
            b"",
            b"not json",
            b"[]",
            b"{}",
            br#"{"type":"pointer","x":1,"y":2}"#,
            br#"{"type":"pointer","x":-1,"y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":1.5,"y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":1,"y":2,"buttons":256}"#,
            br#"{"type":"pointer","x":99999999999,"y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":"1","y":2,"buttons":0}"#,
            br#"{"type":"pointer","x":1,"y":2,"buttons":0,"extra":1}"#,
            br#"{"type":"key","keysym":65,"down":"yes"}"#,
            br#"{"type":"mouse","x":1,"y":2,"buttons":0}"#,
            b"\xff\xfe\x00",
        ];
        for b in bad {
            assert!(
                matches!(InputMessage::parse(b), Err(ProtocolError::Malformed(_))),
                "accepted {:?}",
                String::from_utf8_lossy(b)
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(InputMessage::parse(&huge), Err(ProtocolError::TooLarge(huge.len())));
    }

    #[test]
    fn clamps_to_desktop() {
        let m = InputMessage::Pointer { x: 5000, y: 768, buttons: 0 }.clamped(1024, 768);
        assert_eq!(m, InputMessage::Pointer { x: 1023, y: 767, buttons: 0 });
        let inside = InputMessage::Pointer { x: 3, y: 4, buttons: 1 };
        assert_eq!(inside.clamped(1024, 768), inside);
        let zero = InputMessage::Pointer { x: 3, y: 4, buttons: 1 }.clamped(0, 0);
        assert_eq!(zero, InputMessage::Pointer { x: 0, y: 0, buttons: 1 });
        let key = InputMessage::Key { keysym: 1, down: true };
        assert_eq!(key.clamped(0, 0), key);
    }
}
