//! Carries out [`crate::attention`]: each drawn frame, every panel's attention, and the changes
//! sent on its `input` channel.

use glam::Mat4;
use loco_shared::protocol::Attention;

use super::util::now_ms;
use super::App;

/// One panel's attention: what the frame loop saw last and what its agent was told.
#[derive(Default)]
pub(super) struct PanelAttention {
    pub state: Option<Attention>,
    pub sender: crate::attention::Sender,
    /// Attention messages sent to this panel's agent, over all its sessions.
    pub messages: u32,
}

impl App {
    /// `views`: each eye's view-projection (XR), or `None` in the flat view (every panel
    /// visible, the focused one focused).
    pub(super) fn attention_frame(&mut self, views: Option<&[Mat4]>) {
        let states = crate::attention::classify(&self.layout, self.focus, views);
        let now = now_ms();
        for (p, state) in self.panels.iter_mut().zip(states) {
            p.attention.state = Some(state);
            let Some(session) = p.session.as_ref().filter(|s| s.input_open()) else {
                // No channel (yet): whatever the next one is told starts afresh.
                p.attention.sender.reset();
                continue;
            };
            if let Some(send) = p.attention.sender.update(state, now) {
                if session.send(&send.to_json()) {
                    p.attention.messages += 1;
                } else {
                    p.attention.sender.reset();
                }
            }
        }
    }
}
