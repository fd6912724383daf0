//! What to do with a viewer's NACKs: which packets to send again, and how much loss they show.
//!
//! The agent keeps every RTP packet it sent a viewer for a short while. A NACK names packets
//! the viewer is missing; this state machine decides, packet by packet, whether to resend:
//!
//! - only packets still held (the last `capacity` sequence numbers) and younger than
//!   `max_age` — older ones would arrive after the viewer gave up on their frame;
//! - the same packet at most once per resend gap (1.5 × the smoothed round-trip time, within
//!   `[min_gap, max_gap]`; `default_gap` before any RTT is known). Receivers repeat a NACK
//!   until the packet arrives — aiortc sends its whole missing list on every new gap, and a
//!   jittery path reorders packets so they look missing — so a resend that is still on its
//!   way must not be sent again;
//! - at most `max_resends` times;
//! - within a byte budget: resends may use `budget_ratio` of the media bytes sent plus
//!   `budget_floor` bytes a second (a token bucket refilled by every packet sent and by the
//!   clock, holding at most `budget_burst` bytes), so a flood of NACKs cannot multiply the
//!   traffic on a path that is already losing packets, and a still desktop, which sends
//!   almost nothing, can still repair its last frame. A NACKed packet the budget cannot pay for
//!   now is queued and sent when it can ([`Retransmitter::poll`]), newest NACK first (the
//!   frame being assembled matters most; the oldest expire), not dropped: some receivers
//!   (aiortc) NACK a packet again only when they notice a new gap, so a refused packet might
//!   never be asked for again and their picture would stay stuck on it.
//!
//! A NACK for a packet that can no longer be resent (expired, or resent too often) means the
//! viewer will never complete that frame: the caller should send a keyframe
//! ([`Outcome::needs_keyframe`]); not every receiver asks for one itself (aiortc waits until
//! 128 more packets have arrived, which on a still desktop is never).
//!
//! For viewers that send no TWCC feedback ([`crate::twcc`]) it also measures the share of
//! packets sent that the viewer NACKed at least once ([`Retransmitter::take_nacked_share`]).
//! That is loss before retransmission plus reordering the receiver took for loss — both cost
//! resends. (Receiver reports cannot show loss before retransmission: a resent packet
//! carries its original sequence number and counts as received; and SRTP's replay check drops
//! the second copy of a packet that was only late, so they cannot tell late from lost either.)
//!
//! I/O-free: the caller passes the time of every event and keeps the packets' bytes as `P`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetransmitConfig {
    /// Packets held: the last this many sequence numbers.
    pub capacity: u16,
    pub max_age: Duration,
    pub max_resends: u8,
    pub min_gap: Duration,
    pub max_gap: Duration,
    pub default_gap: Duration,
    pub budget_ratio: f64,
    /// Bytes per second the budget gains however little media is sent.
    pub budget_floor: f64,
    pub budget_burst: usize,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_age: Duration::from_secs(1),
            max_resends: 4,
            min_gap: Duration::from_millis(20),
            max_gap: Duration::from_millis(400),
            default_gap: Duration::from_millis(100),
            budget_ratio: 0.5,
            budget_floor: 16.0 * 1024.0,
            budget_burst: 128 * 1024,
        }
    }
}

/// What happened to one NACKed sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send it again (the packet is returned with it).
    Resend,
    /// Never sent (a sequence number ahead of the newest, or nothing sent yet).
    Unknown,
    /// Sent, but no longer resendable: older than `max_age`, or overwritten by newer packets.
    Expired,
    /// Resent less than one resend gap ago.
    TooSoon,
    /// Already resent `max_resends` times.
    TooMany,
    /// The resend budget is spent: queued until it allows ([`Retransmitter::poll`]).
    Queued,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Outcome::Resend, Outcome::Unknown, Outcome::Expired, Outcome::TooSoon, Outcome::TooMany, Outcome::Queued];

    /// The viewer cannot get this packet any more: only a keyframe repairs its picture.
    pub fn needs_keyframe(self) -> bool {
        matches!(self, Outcome::Expired | Outcome::TooMany)
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Resend => "resent",
            Outcome::Unknown => "unknown",
            Outcome::Expired => "expired",
            Outcome::TooSoon => "too_soon",
            Outcome::TooMany => "too_many",
            Outcome::Queued => "queued",
        }
    }
}

#[derive(Debug, Clone)]
struct Slot<P> {
    seq: u16,
    packet: P,
    bytes: usize,
    sent_at: Duration,
    last_sent: Duration,
    resends: u8,
    queued: bool,
    nacked: bool,
    /// The NACKed-share window it was sent in (`Retransmitter::window`).
    window: u32,
}

/// The share of packets a viewer NACKed over one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NackedShare {
    pub sent: u32,
    pub nacked: u32,
    /// `nacked / sent`, at most 1.
    pub fraction: f64,
}

#[derive(Debug, Clone)]
pub struct Retransmitter<P> {
    cfg: RetransmitConfig,
    slots: Vec<Option<Slot<P>>>,
    srtt: Option<Duration>,
    tokens: f64,
    refilled_at: Option<Duration>,
    newest: Option<u16>,
    resent: u64,
    bytes_out: u64,
    queue: std::collections::VecDeque<u16>,
    window_start: Option<Duration>,
    /// Which window of `take_nacked_share` is open: a NACK counts only for a packet sent in it.
    window: u32,
    window_sent: u32,
    window_nacked: u32,
}

/// What [`Retransmitter::poll`] found in the queue.
#[derive(Debug)]
pub struct Polled<P> {
    /// Send these now, in order.
    pub resend: Vec<P>,
    /// Queued packets that expired before the budget allowed them (the viewer needs a
    /// keyframe).
    pub expired: usize,
}

impl<P: Clone> Retransmitter<P> {
    pub fn new(cfg: RetransmitConfig) -> Self {
        let capacity = usize::from(cfg.capacity.max(1));
        let tokens = cfg.budget_burst as f64;
        Self {
            cfg,
            slots: vec![None; capacity],
            srtt: None,
            tokens,
            refilled_at: None,
            newest: None,
            resent: 0,
            bytes_out: 0,
            queue: std::collections::VecDeque::new(),
            window_start: None,
            window: 0,
            window_sent: 0,
            window_nacked: 0,
        }
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) % self.slots.len()
    }

    fn refill(&mut self, now: Duration, bytes_sent: usize) {
        let elapsed = self.refilled_at.map_or(Duration::ZERO, |t| now.saturating_sub(t));
        self.refilled_at = Some(self.refilled_at.map_or(now, |t| t.max(now)));
        let gain = bytes_sent as f64 * self.cfg.budget_ratio + elapsed.as_secs_f64() * self.cfg.budget_floor;
        self.tokens = (self.tokens + gain).min(self.cfg.budget_burst as f64);
    }

    /// A packet of `bytes` bytes went out with sequence number `seq` at `now`.
    pub fn on_sent(&mut self, seq: u16, packet: P, bytes: usize, now: Duration) {
        let i = self.index(seq);
        self.slots[i] = Some(Slot {
            seq,
            packet,
            bytes,
            sent_at: now,
            last_sent: now,
            resends: 0,
            queued: false,
            nacked: false,
            window: self.window,
        });
        self.window_start.get_or_insert(now);
        self.window_sent = self.window_sent.saturating_add(1);
        self.refill(now, bytes);
        self.bytes_out += bytes as u64;
        if self.newest.is_none_or(|n| seq.wrapping_sub(n) < 0x8000) {
            self.newest = Some(seq);
        }
    }

    /// Whether packets wait in the queue (poll soon).
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether queued `seq` is still worth sending; clears its mark when not.
    fn queued_and_fresh(&mut self, seq: u16, now: Duration) -> bool {
        let i = self.index(seq);
        let max_age = self.cfg.max_age;
        match self.slots[i].as_mut() {
            Some(slot) if slot.seq == seq && slot.queued => {
                if now.saturating_sub(slot.sent_at) > max_age {
                    slot.queued = false;
                    false
                } else {
                    true
                }
            }
            // Overwritten by a newer packet while it waited.
            _ => false,
        }
    }

    /// Resends the queued packets the budget now allows, newest NACK first; drops those
    /// grown too old.
    pub fn poll(&mut self, now: Duration) -> Polled<P> {
        self.refill(now, 0);
        let mut out = Polled { resend: Vec::new(), expired: 0 };
        while let Some(&seq) = self.queue.front() {
            if self.queued_and_fresh(seq, now) {
                break;
            }
            self.queue.pop_front();
            out.expired += 1;
        }
        while let Some(&seq) = self.queue.back() {
            if !self.queued_and_fresh(seq, now) {
                self.queue.pop_back();
                out.expired += 1;
                continue;
            }
            let i = self.index(seq);
            let Some(slot) = self.slots[i].as_mut() else { break };
            if self.tokens < slot.bytes as f64 {
                break;
            }
            self.tokens -= slot.bytes as f64;
            slot.queued = false;
            slot.resends += 1;
            slot.last_sent = now;
            self.resent += 1;
            self.bytes_out += slot.bytes as u64;
            out.resend.push(slot.packet.clone());
            self.queue.pop_back();
        }
        out
    }

    /// The share of packets sent since the last call that the viewer NACKed, once at least
    /// `min_window` has passed and 20 packets were sent; `None` until then. A NACK for a packet
    /// of an earlier window does not count (that window's share is already taken; counting it
    /// here could make `nacked` exceed `sent`).
    pub fn take_nacked_share(&mut self, now: Duration, min_window: Duration) -> Option<NackedShare> {
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_sub(start) < min_window || self.window_sent < 20 {
            return None;
        }
        let share = NackedShare {
            sent: self.window_sent,
            nacked: self.window_nacked,
            fraction: (f64::from(self.window_nacked) / f64::from(self.window_sent)).min(1.0),
        };
        self.window_start = Some(now);
        self.window = self.window.wrapping_add(1);
        self.window_sent = 0;
        self.window_nacked = 0;
        Some(share)
    }

    /// Bytes sent so far, originals and resends (RTP header and payload).
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Packets resent so far.
    pub fn resent(&self) -> u64 {
        self.resent
    }

    /// A round-trip time measurement (from an RTCP receiver report).
    pub fn on_rtt(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// How long a resent packet is given to arrive before it may be sent again.
    pub fn resend_gap(&self) -> Duration {
        match self.srtt {
            Some(rtt) => (rtt * 3 / 2).clamp(self.cfg.min_gap, self.cfg.max_gap),
            None => self.cfg.default_gap,
        }
    }

    /// The viewer NACKed `seq` at `now`.
    pub fn on_nack(&mut self, seq: u16, now: Duration) -> (Outcome, Option<P>) {
        self.refill(now, 0);
        let gap = self.resend_gap();
        let i = self.index(seq);
        let max_age = self.cfg.max_age;
        let sent = self.newest.is_some_and(|n| n.wrapping_sub(seq) < 0x8000);
        let Some(slot) = self.slots[i].as_mut().filter(|s| s.seq == seq && sent) else {
            return (if sent { Outcome::Expired } else { Outcome::Unknown }, None);
        };
        if !slot.nacked {
            slot.nacked = true;
            if slot.window == self.window {
                self.window_nacked = self.window_nacked.saturating_add(1);
            }
        }
        if now.saturating_sub(slot.sent_at) > max_age {
            return (Outcome::Expired, None);
        }
        if slot.queued {
            return (Outcome::Queued, None);
        }
        if slot.resends > 0 && now.saturating_sub(slot.last_sent) < gap {
            return (Outcome::TooSoon, None);
        }
        if slot.resends >= self.cfg.max_resends {
            return (Outcome::TooMany, None);
        }
        if self.tokens < slot.bytes as f64 {
            slot.queued = true;
            self.queue.push_back(seq);
            if self.queue.len() > usize::from(self.cfg.capacity) {
                self.queue.pop_front();
            }
            return (Outcome::Queued, None);
        }
        self.tokens -= slot.bytes as f64;
        slot.resends += 1;
        slot.last_sent = now;
        self.resent += 1;
        self.bytes_out += slot.bytes as u64;
        (Outcome::Resend, Some(slot.packet.clone()))
    }
}

/// The NTP timestamp's middle 32 bits (16.16 fixed-point seconds), the unit of RTCP's
/// `LSR` and `DLSR`, for a wall-clock time given as the duration since the Unix epoch.
pub fn ntp_middle32(since_unix_epoch: Duration) -> u32 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let secs = since_unix_epoch.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since_unix_epoch.subsec_nanos()) << 16) / 1_000_000_000;
    (((secs & 0xFFFF) << 16) | frac) as u32
}

/// The round-trip time a receiver report shows (RFC 3550 §6.4.1): `now − LSR − DLSR`, with
/// `now` from [`ntp_middle32`]. `None` when the report echoes no sender report (`LSR` 0) or
/// the result is negative or over a minute (clock trouble, or a report about something else).
pub fn rtt_from_report(now_middle32: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let units = now_middle32.wrapping_sub(lsr).wrapping_sub(dlsr);
    if units >= 60 << 16 {
        return None;
    }
    Some(Duration::from_nanos(u64::from(units) * 1_000_000_000 / 65_536))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn sent(n: u16) -> Retransmitter<u16> {
        let mut r = Retransmitter::new(RetransmitConfig::default());
        for s in 0..n {
            r.on_sent(s, s, 1200, ms(u64::from(s)));
        }
        r
    }

    #[test]
    fn resends_a_held_packet_once_per_gap() {
        let mut r = sent(100);
        assert_eq!(r.on_nack(50, ms(100)), (Outcome::Resend, Some(50)));
        // The receiver repeats its NACK before the resend can have arrived.
        assert_eq!(r.on_nack(50, ms(120)).0, Outcome::TooSoon);
        assert_eq!(r.on_nack(50, ms(199)).0, Outcome::TooSoon);
        // After the default gap (no RTT yet: 100 ms) it may go again.
        assert_eq!(r.on_nack(50, ms(200)), (Outcome::Resend, Some(50)));
    }

    #[test]
    fn gap_follows_the_round_trip_time() {
        let mut r = sent(10);
        r.on_rtt(ms(40));
        assert_eq!(r.resend_gap(), ms(60));
        r.on_rtt(ms(120));
        assert_eq!(r.srtt(), Some(ms(50)));
        assert_eq!(r.resend_gap(), ms(75));
        let mut fast = sent(1);
        fast.on_rtt(ms(1));
        assert_eq!(fast.resend_gap(), ms(20), "floored");
        let mut slow = sent(1);
        slow.on_rtt(Duration::from_secs(5));
        assert_eq!(slow.resend_gap(), ms(400), "capped");
    }

    #[test]
    fn a_still_desktop_can_still_repair_its_last_frame() {
        let cfg = RetransmitConfig { budget_burst: 1000, ..Default::default() };
        let mut r = Retransmitter::new(cfg);
        r.on_sent(1, 1, 1000, ms(0));
        r.on_sent(2, 2, 1000, ms(0));
        assert_eq!(r.on_nack(1, ms(0)).0, Outcome::Resend);
        assert_eq!(r.on_nack(2, ms(1)).0, Outcome::Queued);
        assert!(r.has_queued());
        assert_eq!(r.on_nack(2, ms(2)).0, Outcome::Queued, "queued once");
        assert!(r.poll(ms(30)).resend.is_empty(), "not affordable yet");
        // Nothing more is sent and the viewer asks nothing more; the clock alone refills
        // 16 KiB/s and the queued packet goes.
        let polled = r.poll(ms(70));
        assert_eq!((polled.resend, polled.expired), (vec![2], 0));
        assert!(!r.has_queued());
        assert_eq!(r.on_nack(2, ms(80)).0, Outcome::TooSoon);
    }

    #[test]
    fn queued_packets_go_newest_first_and_expire() {
        let cfg = RetransmitConfig { budget_burst: 1000, budget_floor: 0.0, ..Default::default() };
        let mut r = Retransmitter::new(cfg);
        for s in 0..4u16 {
            r.on_sent(s, s, 1000, ms(0));
        }
        // The four sends refilled the budget to its 1000-byte cap: one resend fits.
        assert_eq!(r.on_nack(0, ms(1)).0, Outcome::Resend);
        assert_eq!(r.on_nack(2, ms(1)).0, Outcome::Queued);
        assert_eq!(r.on_nack(1, ms(1)).0, Outcome::Queued);
        r.on_sent(4, 4, 2000, ms(2)); // refills 1000
        let polled = r.poll(ms(3));
        assert_eq!((polled.resend, polled.expired), (vec![1], 0), "newest NACK first, as far as the budget goes");
        assert_eq!(r.on_nack(3, ms(4)).0, Outcome::Queued, "the budget is spent; 2 still waits");
        let polled = r.poll(ms(1200));
        assert_eq!((polled.resend, polled.expired), (vec![], 2), "2 and 3 too old to be worth sending");
        assert!(!r.has_queued());
    }

    #[test]
    fn at_most_max_resends() {
        let mut r = sent(10);
        let mut t = 10;
        for _ in 0..4 {
            assert_eq!(r.on_nack(3, ms(t)).0, Outcome::Resend);
            t += 100;
        }
        assert_eq!(r.on_nack(3, ms(t)).0, Outcome::TooMany);
    }

    #[test]
    fn forgets_old_and_overwritten_packets() {
        let mut r = sent(10);
        assert_eq!(r.on_nack(5, ms(1006)).0, Outcome::Expired, "older than a second");
        assert_eq!(r.on_nack(10, ms(20)).0, Outcome::Unknown, "never sent");
        assert_eq!(r.on_nack(20_000, ms(20)).0, Outcome::Unknown, "ahead of the newest: never sent");
        let mut r = Retransmitter::new(RetransmitConfig { capacity: 8, ..Default::default() });
        assert_eq!(r.on_nack(0, ms(0)).0, Outcome::Unknown, "nothing sent yet");
        for s in 0..20u16 {
            r.on_sent(s, s, 100, ms(1));
        }
        assert_eq!(r.on_nack(11, ms(2)).0, Outcome::Expired, "slot reused by 19");
        assert_eq!(r.on_nack(12, ms(2)), (Outcome::Resend, Some(12)));
        assert_eq!(r.resent(), 1);
        assert!(Outcome::Expired.needs_keyframe() && Outcome::TooMany.needs_keyframe());
        assert!(!Outcome::TooSoon.needs_keyframe() && !Outcome::Unknown.needs_keyframe());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut r = Retransmitter::new(RetransmitConfig::default());
        for (i, s) in (65_530u16..=65_535).chain(0..6).enumerate() {
            r.on_sent(s, s, 1000, ms(i as u64));
        }
        assert_eq!(r.on_nack(65_534, ms(20)), (Outcome::Resend, Some(65_534)));
        assert_eq!(r.on_nack(2, ms(20)), (Outcome::Resend, Some(2)));
    }

    #[test]
    fn a_nack_flood_cannot_exceed_the_budget() {
        let cfg = RetransmitConfig { budget_burst: 10_000, max_resends: 255, ..Default::default() };
        // Queued resends count when the budget lets them go.
        let mut r = Retransmitter::new(cfg);
        let mut media = 0usize;
        let mut resent = 0usize;
        let mut now = ms(0);
        let mut seq = 0u16;
        // 10 s of 300 packets/s, each NACKed every 10 ms for as long as it is held.
        for step in 0..1000u64 {
            now = ms(step * 10);
            for _ in 0..3 {
                r.on_sent(seq, seq, 1200, now);
                media += 1200;
                seq = seq.wrapping_add(1);
            }
            for back in 1..=100u16 {
                if let (Outcome::Resend, Some(_)) = r.on_nack(seq.wrapping_sub(back), now) {
                    resent += 1200;
                }
            }
            resent += 1200 * r.poll(now).resend.len();
        }
        // 10 s of the 16 KiB/s floor on top of half the media.
        let allowed = media as f64 * 0.5 + 10_000.0 + 10.0 * 16.0 * 1024.0;
        assert!(resent as f64 <= allowed, "resent {resent} for {media} of media");
        assert!(resent as f64 >= media as f64 * 0.45, "the budget is usable: {resent} for {media} by {now:?}");
    }

    #[test]
    fn nacked_share_counts_each_packet_once() {
        let mut r = Retransmitter::new(RetransmitConfig::default());
        assert_eq!(r.take_nacked_share(ms(0), ms(1000)), None);
        for s in 0..200u16 {
            r.on_sent(s, s, 1000, ms(u64::from(s) * 5));
        }
        for _ in 0..5 {
            for s in (0..200u16).step_by(10) {
                r.on_nack(s, ms(999));
            }
        }
        r.on_nack(5000, ms(999)); // never sent: not counted
        assert_eq!(r.take_nacked_share(ms(900), ms(1000)), None, "window not over");
        let share = r.take_nacked_share(ms(1000), ms(1000)).expect("a sample");
        assert_eq!((share.sent, share.nacked), (200, 20));
        assert!((share.fraction - 0.1).abs() < 1e-9);
        r.on_sent(200, 200, 1000, ms(1500));
        assert_eq!(r.take_nacked_share(ms(2100), ms(1000)), None, "too few packets");
    }

    #[test]
    fn a_nack_for_an_earlier_window_does_not_count_in_this_one() {
        // Found by the retransmit_twcc fuzz target: 33 NACKed of 32 sent.
        let mut r = Retransmitter::new(RetransmitConfig::default());
        for s in 0..40u16 {
            r.on_sent(s, s, 1000, ms(u64::from(s)));
        }
        assert_eq!(r.take_nacked_share(ms(200), ms(100)).map(|s| s.sent), Some(40));
        for s in 100..120u16 {
            r.on_sent(s, s, 1000, ms(300));
        }
        for s in (0..40u16).chain(100..120) {
            r.on_nack(s, ms(310));
        }
        let share = r.take_nacked_share(ms(400), ms(100)).expect("a sample");
        assert_eq!((share.sent, share.nacked), (20, 20));
        assert!(share.nacked <= share.sent);
    }

    #[test]
    fn round_trip_from_lsr_and_dlsr() {
        let sr_sent = Duration::from_secs(1_700_000_000) + ms(250);
        let lsr = ntp_middle32(sr_sent);
        // The receiver held the report 30 ms; the report arrives 80 ms after the SR left.
        let dlsr = (30 * 65_536 / 1000) as u32;
        let rtt = rtt_from_report(ntp_middle32(sr_sent + ms(80)), lsr, dlsr).expect("an rtt");
        assert!((rtt.as_secs_f64() - 0.050).abs() < 0.001, "{rtt:?}");
        assert_eq!(rtt_from_report(ntp_middle32(sr_sent), 0, 0), None, "no SR echoed");
        assert_eq!(rtt_from_report(lsr, lsr, dlsr), None, "negative");
        // Across the 16-bit seconds wrap of the middle 32 bits.
        let wrap = Duration::from_secs(65_536 - (2_208_988_800 % 65_536)) - ms(10);
        let rtt = rtt_from_report(ntp_middle32(wrap + ms(30)), ntp_middle32(wrap), 0).expect("an rtt");
        assert!((rtt.as_secs_f64() - 0.030).abs() < 0.001, "{rtt:?}");
    }
}
