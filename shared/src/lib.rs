//! loco's wire protocol and the pure logic that both the agent and the browser client use.
//!
//! Dependency rule: no I/O, no clocks, no async runtime, no web-sys. Everything here is a plain
//! function or a state machine that takes the current time as an argument, so it compiles to
//! `wasm32-unknown-unknown` and tests natively without a network.
//!
//! - [`attention`]: what each viewer's attention (focused, visible, hidden panel) lets an
//!   encoder spend; the most attentive viewer wins, a panel back in view gets a keyframe.
//! - [`audio`]: a VM's PCM stream cut into 20 ms frames with true RTP timing (pauses, DTX).
//! - [`protocol`]: the JSON messages a viewer sends on the `input` data channel.
//! - [`bitrate`]: loss-based bitrate control (from TWCC feedback, else the NACKed share), and
//!   cuts on a standing queue (RTT above the path's base).
//! - [`feedback`]: the agent's feedback loop for one viewer: RTCP (PLI/FIR, NACKs, TWCC,
//!   receiver reports) in; resends, keyframe requests and bitrate decisions out.
//! - [`retransmit`]: which NACKed packets to resend (held, not too soon, within a byte
//!   budget), RTT from receiver reports.
//! - [`twcc`]: loss before retransmission from transport-wide congestion control feedback.
//! - [`config`]: the page's `desktops.json`, strictly checked with readable errors.
//! - [`keys`]: browser keyboard events to X11 keysyms.
//! - [`controller`]: VR controller buttons to RFB button masks (trigger, grip, wheel).
//! - [`geom`]: rectangles and damage accumulation in desktop pixels.
//! - [`layout`]: the nine-panel wall in the room, controller rays to desktop pixels.
//! - [`pacer`]: decides when the agent encodes a frame (damage-driven, capped frame rate,
//!   keyframes on demand).
//! - [`ratelimit`]: a token bucket (input events per viewer).
//! - [`keyguard`]: wrong keys rate-limited per source address (the agent's HTTP).
//! - [`lan`]: the guest LAN's learning switch and DHCP relay rewriting (`loco-lan`).
#![forbid(unsafe_code)]

pub mod attention;
pub mod audio;
pub mod bitrate;
pub mod config;
pub mod controller;
pub mod feedback;
pub mod geom;
pub mod keyguard;
pub mod keys;
pub mod lan;
pub mod layout;
pub mod pacer;
pub mod protocol;
pub mod ratelimit;
pub mod retransmit;
pub mod twcc;

pub use geom::Rect;
pub use pacer::{FramePacer, PacerDecision};
pub use protocol::{Attention, ChannelMessage, InputMessage, ProtocolError};
