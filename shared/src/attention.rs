//! Attention-aware streaming, the agent's side: how fast and how richly an encoder works,
//! from what its viewers look at.
//!
//! Each viewer tells the agent over its `input` channel whether this desktop's panel is
//! `focused`, `visible` or `hidden` ([`Attention`], `docs/protocol.md`); a viewer that never
//! says is `focused`, so WHEP clients that know nothing of attention get the full stream. One
//! encoder serves all viewers of a codec, and a delta frame left out for one viewer would break
//! its decoding of every later one, so an encoder runs for the **most attentive** of its
//! viewers ([`AttentionSet`]). What each state costs is the [`AttentionPolicy`]: the full frame
//! rate and bitrate when focused; a lower rate (`--visible-fps`, default 12) when visible; when
//! hidden, `--hidden-fps` (default 1, 0 = none). Each frame keeps the bits a focused frame gets,
//! so the bitrate falls with the frame rate: by itself for an encoder that budgets bitrate ÷
//! max fps per frame (x264 here), through a bitrate cap scaled by the same ratio for one whose
//! rate control follows the frame times (libvpx) ([`AttentionPolicy::scale_bitrate`]). When the most attentive state leaves `hidden`, the
//! encoder sends a keyframe at once: the viewer's picture may be seconds old and its decoder
//! may have dropped its state while the panel was out of view.
//!
//! No I/O and no clock: the pacer ([`crate::pacer::FramePacer::set_max_fps`]) takes the rate
//! with the time it changes at.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::protocol::Attention;

/// What each attention state may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionPolicy {
    /// The frame-rate cap for a focused panel (`--max-fps`).
    pub max_fps: u32,
    /// The cap for a visible one (`--visible-fps`).
    pub visible_fps: u32,
    /// The cap for a hidden one (`--hidden-fps`); 0 sends nothing while hidden.
    pub hidden_fps: u32,
    /// The bitrate for a focused panel (`--bitrate-kbps`) and the floor for the others
    /// (`--min-bitrate-kbps`).
    pub max_kbps: u32,
    pub min_kbps: u32,
    /// Cap the bitrate by the frame-rate ratio (an encoder whose rate control follows the frame
    /// times); otherwise the cap stays at `max_kbps`.
    pub scale_bitrate: bool,
}

impl AttentionPolicy {
    /// The frame-rate cap for `state` (never above `max_fps`; 0: nothing is encoded).
    pub fn fps(&self, state: Attention) -> u32 {
        match state {
            Attention::Focused => self.max_fps,
            Attention::Visible => self.visible_fps.min(self.max_fps),
            Attention::Hidden => self.hidden_fps.min(self.max_fps),
        }
    }

    /// The bitrate cap for `state`: with `scale_bitrate`, the full rate scaled by the
    /// frame-rate ratio (the same bits per frame), within `[min_kbps, max_kbps]`; else the full
    /// rate.
    pub fn kbps(&self, state: Attention) -> u32 {
        let max = self.max_kbps.max(self.min_kbps);
        if state == Attention::Focused || self.max_fps == 0 || !self.scale_bitrate {
            return max;
        }
        let scaled = u64::from(max) * u64::from(self.fps(state)) / u64::from(self.max_fps);
        (scaled.min(u64::from(max)) as u32).max(self.min_kbps.min(max))
    }
}

/// How often to ask the VNC server for the screen when every encoder sends nothing
/// (`--hidden-fps 0`): the keepalive's once a second.
pub const IDLE_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

impl AttentionPolicy {
    /// How long to leave between two VNC update requests, given the most attentive state of
    /// each running encoder (`None`: no encoder runs). The server gathers damage between
    /// requests, so asking no faster than the fastest encoder works spares both sides the
    /// updates it would skip: a visible panel at 12 fps reads 12 screens a second, not 30.
    /// Without encoders the screen is kept current at the full rate, so that a viewer who joins
    /// gets it as it is; at 0 fps, once a second ([`IDLE_REQUEST_INTERVAL`]).
    pub fn request_interval(&self, encoders: impl IntoIterator<Item = Attention>) -> Duration {
        let mut encoders = encoders.into_iter().peekable();
        let fps =
            if encoders.peek().is_none() { self.max_fps } else { encoders.map(|a| self.fps(a)).max().unwrap_or(0) };
        if fps == 0 {
            IDLE_REQUEST_INTERVAL
        } else {
            Duration::from_micros(1_000_000 / u64::from(fps)).min(IDLE_REQUEST_INTERVAL)
        }
    }
}

/// The most attentive state among an encoder's viewers changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// `None`: no viewers.
    pub from: Option<Attention>,
    pub to: Option<Attention>,
    /// The panel came back into view (from `hidden`): encode a keyframe now.
    pub keyframe: bool,
}

/// The viewers of one encoder and their attention.
#[derive(Debug, Clone, Default)]
pub struct AttentionSet {
    viewers: BTreeMap<u64, Attention>,
}

impl AttentionSet {
    /// The most attentive state among the viewers (`None` without viewers).
    pub fn effective(&self) -> Option<Attention> {
        self.viewers.values().max().copied()
    }

    /// A viewer starts receiving, paying `state` attention.
    pub fn join(&mut self, viewer: u64, state: Attention) -> Option<Change> {
        self.apply(|v| {
            v.insert(viewer, state);
        })
    }

    /// A viewer's attention changed. A viewer not (or no longer) in the set is ignored: its
    /// state counts from when it joins.
    pub fn set(&mut self, viewer: u64, state: Attention) -> Option<Change> {
        self.apply(|v| {
            if let Some(s) = v.get_mut(&viewer) {
                *s = state;
            }
        })
    }

    /// A viewer left.
    pub fn leave(&mut self, viewer: u64) -> Option<Change> {
        self.apply(|v| {
            v.remove(&viewer);
        })
    }

    /// How many viewers pay each state ([hidden, visible, focused]).
    pub fn counts(&self) -> [usize; 3] {
        let mut c = [0; 3];
        for s in self.viewers.values() {
            c[*s as usize] += 1;
        }
        c
    }

    fn apply(&mut self, f: impl FnOnce(&mut BTreeMap<u64, Attention>)) -> Option<Change> {
        let from = self.effective();
        f(&mut self.viewers);
        let to = self.effective();
        (from != to).then(|| Change {
            from,
            to,
            keyframe: from == Some(Attention::Hidden) && to.is_some_and(|t| t > Attention::Hidden),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Attention::*;

    fn policy() -> AttentionPolicy {
        AttentionPolicy {
            max_fps: 30,
            visible_fps: 12,
            hidden_fps: 1,
            max_kbps: 6000,
            min_kbps: 300,
            scale_bitrate: true,
        }
    }

    #[test]
    fn rates_follow_the_state() {
        let p = policy();
        assert_eq!([p.fps(Focused), p.fps(Visible), p.fps(Hidden)], [30, 12, 1]);
        // The bitrate keeps the bits per frame: 6000 × 12/30; hidden 200 → the floor, 300.
        assert_eq!([p.kbps(Focused), p.kbps(Visible), p.kbps(Hidden)], [6000, 2400, 300]);
        let none = AttentionPolicy { hidden_fps: 0, ..p };
        assert_eq!((none.fps(Hidden), none.kbps(Hidden)), (0, 300));
        // Caps above the focused rate do not raise anything.
        let odd = AttentionPolicy { max_fps: 10, visible_fps: 60, hidden_fps: 60, ..p };
        assert_eq!([odd.fps(Visible), odd.fps(Hidden)], [10, 10]);
        assert_eq!(odd.kbps(Visible), 6000);
        // A floor above the maximum is no floor.
        let inverted = AttentionPolicy { max_kbps: 200, min_kbps: 500, ..p };
        assert_eq!(inverted.kbps(Visible), 500);
        // An encoder that budgets per frame at the full rate needs no cap: fewer frames spend less.
        let per_frame = AttentionPolicy { scale_bitrate: false, ..p };
        assert_eq!([per_frame.kbps(Focused), per_frame.kbps(Visible), per_frame.kbps(Hidden)], [6000; 3]);
    }

    #[test]
    fn the_screen_is_read_as_fast_as_the_fastest_encoder() {
        let p = policy();
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        // No encoder: the full rate, so a viewer who joins sees the screen as it is.
        assert_eq!(ms(p.request_interval([])), 33.333);
        assert_eq!(ms(p.request_interval([Visible])), 83.333);
        assert_eq!(ms(p.request_interval([Hidden])), 1000.0);
        // Two encoders (H.264 and VP8 viewers): the faster one sets the pace.
        assert_eq!(ms(p.request_interval([Hidden, Visible])), 83.333);
        assert_eq!(ms(p.request_interval([Focused, Hidden])), 33.333);
        // Nothing encoded while hidden: the idle keepalive, not never.
        let none = AttentionPolicy { hidden_fps: 0, ..p };
        assert_eq!(none.request_interval([Hidden]), IDLE_REQUEST_INTERVAL);
        // Below 1 fps is not asked for (the cap is whole frames a second), nor slower than idle.
        let slow = AttentionPolicy { max_fps: 0, ..p };
        assert_eq!(slow.request_interval([]), IDLE_REQUEST_INTERVAL);
    }

    #[test]
    fn the_most_attentive_viewer_wins() {
        let mut s = AttentionSet::default();
        assert_eq!(s.effective(), None);
        assert_eq!(s.join(1, Focused), Some(Change { from: None, to: Some(Focused), keyframe: false }));
        assert_eq!(s.join(2, Hidden), None);
        assert_eq!(s.set(1, Visible), Some(Change { from: Some(Focused), to: Some(Visible), keyframe: false }));
        assert_eq!(s.counts(), [1, 1, 0]);
        // Viewer 2 looking back does not change what viewer 1 already gets.
        assert_eq!(s.set(2, Visible), None);
        assert_eq!(s.set(2, Focused), Some(Change { from: Some(Visible), to: Some(Focused), keyframe: false }));
        assert_eq!(s.leave(2), Some(Change { from: Some(Focused), to: Some(Visible), keyframe: false }));
        assert_eq!(s.leave(1), Some(Change { from: Some(Visible), to: None, keyframe: false }));
        assert_eq!(s.leave(1), None);
    }

    #[test]
    fn coming_back_into_view_asks_for_a_keyframe() {
        let mut s = AttentionSet::default();
        s.join(7, Visible);
        assert_eq!(s.set(7, Hidden), Some(Change { from: Some(Visible), to: Some(Hidden), keyframe: false }));
        assert_eq!(s.set(7, Hidden), None);
        assert_eq!(s.set(7, Visible), Some(Change { from: Some(Hidden), to: Some(Visible), keyframe: true }));
        s.set(7, Hidden);
        assert_eq!(s.set(7, Focused), Some(Change { from: Some(Hidden), to: Some(Focused), keyframe: true }));
        // A second viewer joining a hidden encoder brings it back (its own first frame is a
        // keyframe anyway).
        s.set(7, Hidden);
        assert_eq!(s.join(8, Focused).map(|c| c.keyframe), Some(true));
    }

    #[test]
    fn unknown_viewers_are_ignored_until_they_join() {
        let mut s = AttentionSet::default();
        assert_eq!(s.set(3, Hidden), None);
        assert_eq!(s.effective(), None);
        s.join(3, Focused);
        s.leave(3);
        assert_eq!(s.set(3, Visible), None);
        assert_eq!(s.counts(), [0, 0, 0]);
    }
}
