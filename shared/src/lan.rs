//! The guest LAN's switch: which ports an Ethernet frame goes to, and the DHCP relay's packet
//! rewriting (the `loco-lan` binary does the I/O).
//!
//! [`Switch`] is a learning bridge for the star of VM connections: it learns each source MAC's
//! port from the frames it sees, sends a frame to the one port its destination was learned on,
//! floods broadcast, multicast and unknown destinations to every other port, and never sends a
//! frame back where it came from. Entries age out, a port may own only a few MACs (a VM has one;
//! a guest spraying made-up source addresses cannot fill the table) and a port that goes away
//! takes its entries with it, so a VM that reconnects is found again at once. A frame that is too
//! short or too long is dropped with a reason, never an error that stops the LAN.
//!
//! The relay half is RFC 1542's relay agent for the LAN's one DHCP server (ISC Kea, on loopback
//! beside the switch): a client's DHCP request frame becomes a BOOTP payload with `giaddr` set
//! to the relay's loopback address, a subnet-selection option (RFC 3011) naming the LAN, so the
//! server picks the LAN's range although it has no interface on it, and the relay agent
//! information option with an empty relay-source-port sub-option (RFC 8357), so the server
//! answers to the relay's own port rather than port 67 (no privilege needed); the server's reply
//! becomes an Ethernet frame from the switch's own MAC and the LAN address, to the client.
//!
//! I/O-free: the caller passes the time and owns the sockets. Fuzzed (`fuzz/fuzz_targets/lan_switch.rs`).

use std::collections::HashMap;
use std::time::Duration;

/// An Ethernet (MAC) address.
pub type Mac = [u8; 6];
/// A connection to the switch (one VM's NIC), numbered by the caller.
pub type PortId = u32;

/// The broadcast address.
pub const BROADCAST: Mac = [0xff; 6];
/// Destination, source, EtherType.
pub const HEADER_LEN: usize = 14;
/// 1500 bytes of payload, the header and an 802.1Q tag (no frame check sequence: QEMU's NICs
/// neither send nor expect one).
pub const MAX_FRAME: usize = 1518;

const ETHERTYPE_IPV4: u16 = 0x0800;
const UDP: u8 = 17;
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const BOOTP_LEN: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const OPT_PAD: u8 = 0;
const OPT_END: u8 = 255;
const OPT_SUBNET_SELECTION: u8 = 118;
const OPT_RELAY_AGENT_INFO: u8 = 82;
const SUBOPT_RELAY_SOURCE_PORT: u8 = 19;
/// What the relay adds to a request: subnet selection (6 bytes) and the relay agent information
/// option with the relay-source-port sub-option (4 bytes).
pub const RELAY_ADDED: usize = 10;
const MAX_HOPS: u8 = 4;

/// Why a frame went nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// Longer than [`MAX_FRAME`].
    Oversized,
    /// The source address is a group (multicast) address, which no NIC sends from.
    MulticastSource,
    /// The destination was learned on the port the frame came from.
    SamePort,
    /// Addressed to the switch itself and not something it answers (only DHCP is).
    ToSwitch,
}

impl DropReason {
    pub const ALL: [DropReason; 5] =
        [Self::Runt, Self::Oversized, Self::MulticastSource, Self::SamePort, Self::ToSwitch];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Runt => "runt",
            Self::Oversized => "oversized",
            Self::MulticastSource => "multicast_source",
            Self::SamePort => "same_port",
            Self::ToSwitch => "to_switch",
        }
    }
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To this one port.
    To(PortId),
    /// To every port except the one it came from (`None`: it came from the switch itself).
    Flood {
        except: Option<PortId>,
    },
    Drop(DropReason),
}

/// What the switch does with a frame from a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub forward: Forward,
    /// A DHCP request for the server, rewritten by the relay: send it as one UDP datagram.
    pub relay: Option<Vec<u8>>,
}

/// The relay's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// The switch's own MAC on the LAN (locally administered), the source of the replies.
    pub mac: Mac,
    /// The switch's address on the LAN: the subnet the server is asked to choose from, and the
    /// source of the replies.
    pub lan_ip: [u8; 4],
    /// `giaddr`: where the server sends its replies (the relay socket's address).
    pub giaddr: [u8; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchConfig {
    /// An entry not refreshed for this long is forgotten (802.1D's default is 300 s).
    pub ageing: Duration,
    /// How many source MACs one port may own at once; further ones are not learned (their frames
    /// still go through, and replies to them are flooded).
    pub macs_per_port: usize,
    /// DHCP relay, if the LAN has a server.
    pub relay: Option<RelayConfig>,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self { ageing: Duration::from_secs(300), macs_per_port: 16, relay: None }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    seen: Duration,
}

/// The learning switch. See the module docs.
#[derive(Debug, Clone)]
pub struct Switch {
    cfg: SwitchConfig,
    table: HashMap<Mac, Entry>,
    owned: HashMap<PortId, usize>,
}

fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

impl Switch {
    pub fn new(cfg: SwitchConfig) -> Self {
        Self { cfg, table: HashMap::new(), owned: HashMap::new() }
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.cfg
    }

    /// Learned addresses (including ones that have aged but not yet been replaced).
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// The port a MAC was learned on, if that is still current.
    pub fn port_of(&self, now: Duration, mac: &Mac) -> Option<PortId> {
        self.table.get(mac).filter(|e| now.saturating_sub(e.seen) < self.cfg.ageing).map(|e| e.port)
    }

    /// A frame arrived on `port`.
    pub fn frame(&mut self, now: Duration, port: PortId, frame: &[u8]) -> Decision {
        let drop = |r| Decision { forward: Forward::Drop(r), relay: None };
        if frame.len() < HEADER_LEN {
            return drop(DropReason::Runt);
        }
        if frame.len() > MAX_FRAME {
            return drop(DropReason::Oversized);
        }
        let dst: Mac = frame[0..6].try_into().expect("6 bytes");
        let src: Mac = frame[6..12].try_into().expect("6 bytes");
        if is_group(&src) {
            return drop(DropReason::MulticastSource);
        }
        self.learn(now, port, src);
        let relay = self.cfg.relay.and_then(|r| relay_request(&r, frame));
        if let Some(r) = self.cfg.relay {
            if dst == r.mac {
                return Decision { forward: Forward::Drop(DropReason::ToSwitch), relay };
            }
        }
        let forward = self.route(now, &dst, Some(port));
        Decision { forward, relay }
    }

    /// A frame the switch sends itself (a relayed DHCP reply): where it goes.
    pub fn route_own(&self, now: Duration, frame: &[u8]) -> Forward {
        if frame.len() < HEADER_LEN {
            return Forward::Drop(DropReason::Runt);
        }
        let dst: Mac = frame[0..6].try_into().expect("6 bytes");
        self.route(now, &dst, None)
    }

    fn route(&self, now: Duration, dst: &Mac, from: Option<PortId>) -> Forward {
        if is_group(dst) {
            return Forward::Flood { except: from };
        }
        match self.port_of(now, dst) {
            Some(p) if Some(p) == from => Forward::Drop(DropReason::SamePort),
            Some(p) => Forward::To(p),
            None => Forward::Flood { except: from },
        }
    }

    fn learn(&mut self, now: Duration, port: PortId, src: Mac) {
        match self.table.get_mut(&src) {
            Some(e) if e.port == port => e.seen = now,
            Some(e) => {
                // Moved (a VM that reconnected, or a stale entry): the new port owns it, if it may.
                let old = e.port;
                if self.owned.get(&port).copied().unwrap_or(0) >= self.cfg.macs_per_port {
                    return;
                }
                *e = Entry { port, seen: now };
                self.release(old);
                *self.owned.entry(port).or_insert(0) += 1;
            }
            None => {
                let n = self.owned.entry(port).or_insert(0);
                if *n >= self.cfg.macs_per_port {
                    // Make room with this port's own aged entries, if it has any.
                    let ageing = self.cfg.ageing;
                    let before = self.table.len();
                    self.table.retain(|_, e| !(e.port == port && now.saturating_sub(e.seen) >= ageing));
                    let freed = before - self.table.len();
                    let n = self.owned.entry(port).or_insert(0);
                    *n -= freed;
                    if *n >= self.cfg.macs_per_port {
                        return;
                    }
                }
                self.table.insert(src, Entry { port, seen: now });
                *self.owned.entry(port).or_insert(0) += 1;
            }
        }
    }

    fn release(&mut self, port: PortId) {
        if let Some(n) = self.owned.get_mut(&port) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owned.remove(&port);
            }
        }
    }

    /// The port is gone: forget what was learned on it.
    pub fn port_gone(&mut self, port: PortId) {
        self.table.retain(|_, e| e.port != port);
        self.owned.remove(&port);
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The end of a DHCP options field (the index of its END option) and whether it holds the
/// relay agent information option, or `None` when it is malformed.
fn options_end(opts: &[u8]) -> Option<(usize, bool)> {
    let mut i = 0;
    let mut relay_info = false;
    while i < opts.len() {
        match opts[i] {
            OPT_END => return Some((i, relay_info)),
            OPT_PAD => i += 1,
            code => {
                relay_info |= code == OPT_RELAY_AGENT_INFO;
                let len = *opts.get(i + 1)? as usize;
                i += 2 + len;
            }
        }
    }
    None
}

/// The BOOTP payload of a frame that is a DHCP client's request (IPv4, UDP 68 → 67, not a
/// fragment, checksum-independent), or `None`.
pub fn dhcp_request_payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < HEADER_LEN + 20 + 8 || be16(frame, 12) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[HEADER_LEN..];
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = be16(ip, 2) as usize;
    if ihl < 20 || total < ihl + 8 || total > ip.len() || ip[9] != UDP || be16(ip, 6) & 0x3fff != 0 {
        return None; // bad lengths, not UDP, or a fragment
    }
    let udp = &ip[ihl..total];
    let udp_len = be16(udp, 4) as usize;
    if be16(udp, 0) != DHCP_CLIENT_PORT || be16(udp, 2) != DHCP_SERVER_PORT || udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    Some(&udp[8..udp_len])
}

/// The relay's rewrite of a client's request frame for the server, or `None` when the frame is
/// not a well-formed DHCP request this relay should pass on.
pub fn relay_request(cfg: &RelayConfig, frame: &[u8]) -> Option<Vec<u8>> {
    let p = dhcp_request_payload(frame)?;
    if p.len() < BOOTP_LEN + 4 || p[0] != 1 || p[1] != 1 || p[2] != 6 || p[236..240] != MAGIC_COOKIE {
        return None; // not a BOOTREQUEST from an Ethernet client with DHCP options
    }
    if p[3] >= MAX_HOPS || p[24..28] != [0; 4] {
        return None; // relayed too often, or by another relay already
    }
    let opts = &p[240..];
    let (end, relay_info) = options_end(opts)?;
    if relay_info {
        return None; // a client never sends relay agent information (RFC 3046)
    }
    let mut out = Vec::with_capacity(p.len() + RELAY_ADDED);
    out.extend_from_slice(&p[..240 + end]);
    out[3] += 1; // hops
    out[24..28].copy_from_slice(&cfg.giaddr);
    out.extend_from_slice(&[OPT_SUBNET_SELECTION, 4]);
    out.extend_from_slice(&cfg.lan_ip);
    // RFC 3046 says the relay agent information option comes last, before END.
    out.extend_from_slice(&[OPT_RELAY_AGENT_INFO, 2, SUBOPT_RELAY_SOURCE_PORT, 0]);
    out.push(OPT_END);
    Some(out)
}

/// Why a server's reply was not passed to the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("shorter than a BOOTP message with options")]
    Short,
    #[error("not a BOOTREPLY for an Ethernet client")]
    NotReply,
    #[error("longer than one Ethernet frame can carry")]
    TooLong,
}

/// The Ethernet frame that carries a server's reply (a BOOTP payload) to its client: to the
/// client's MAC and new address, or broadcast when the client asked for that or has no address
/// to be sent to.
pub fn reply_frame(cfg: &RelayConfig, payload: &[u8]) -> Result<Vec<u8>, ReplyError> {
    if payload.len() < BOOTP_LEN + 4 || payload[236..240] != MAGIC_COOKIE {
        return Err(ReplyError::Short);
    }
    if payload[0] != 2 || payload[1] != 1 || payload[2] != 6 {
        return Err(ReplyError::NotReply);
    }
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    if HEADER_LEN + ip_len > MAX_FRAME {
        return Err(ReplyError::TooLong);
    }
    let yiaddr: [u8; 4] = payload[16..20].try_into().expect("4 bytes");
    let chaddr: Mac = payload[28..34].try_into().expect("6 bytes");
    let broadcast = be16(payload, 10) & 0x8000 != 0 || yiaddr == [0; 4];
    let (dst_mac, dst_ip) = if broadcast { (BROADCAST, [255; 4]) } else { (chaddr, yiaddr) };

    let mut f = Vec::with_capacity(HEADER_LEN + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&cfg.mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_at = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, UDP, 0, 0]); // id 0, don't fragment, TTL 64
    f.extend_from_slice(&cfg.lan_ip);
    f.extend_from_slice(&dst_ip);
    let sum = checksum(&f[ip_at..ip_at + 20], 0);
    f[ip_at + 10..ip_at + 12].copy_from_slice(&sum.to_be_bytes());
    let udp_at = f.len();
    f.extend_from_slice(&DHCP_SERVER_PORT.to_be_bytes());
    f.extend_from_slice(&DHCP_CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    // The pseudo-header: addresses, protocol, UDP length.
    let mut pseudo = 0u32;
    for w in cfg.lan_ip.chunks(2).chain(dst_ip.chunks(2)) {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    pseudo += u32::from(UDP) + udp_len as u32;
    let sum = match checksum(&f[udp_at..], pseudo) {
        0 => 0xffff,
        s => s,
    };
    f[udp_at + 6..udp_at + 8].copy_from_slice(&sum.to_be_bytes());
    Ok(f)
}

/// The Internet checksum (RFC 1071) of `data`, starting from a partial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for w in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x52, 0x54, 0, 0x4c, 0, 1];
    const B: Mac = [0x52, 0x54, 0, 0x4c, 0, 2];
    const SW: Mac = [0x02, 0x4c, 0x4f, 0x43, 0x4f, 0x01];
    const RELAY: RelayConfig = RelayConfig { mac: SW, lan_ip: [10, 98, 0, 1], giaddr: [127, 0, 0, 2] };

    fn eth(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06]);
        f.resize(len.max(HEADER_LEN), 0);
        f
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn learns_floods_unknown_and_forwards_known() {
        let mut sw = Switch::new(SwitchConfig::default());
        // B unknown: flooded, except back to port 1.
        assert_eq!(sw.frame(s(0), 1, &eth(B, A, 60)).forward, Forward::Flood { except: Some(1) });
        // B answers from port 2; A was learned on port 1.
        assert_eq!(sw.frame(s(1), 2, &eth(A, B, 60)).forward, Forward::To(1));
        assert_eq!(sw.frame(s(2), 1, &eth(B, A, 60)).forward, Forward::To(2));
        assert_eq!(sw.frame(s(2), 1, &eth(BROADCAST, A, 60)).forward, Forward::Flood { except: Some(1) });
        let multicast = [0x01, 0, 0x5e, 0, 0, 0xfb];
        assert_eq!(sw.frame(s(2), 2, &eth(multicast, B, 60)).forward, Forward::Flood { except: Some(2) });
        assert_eq!(sw.entries(), 2);
    }

    #[test]
    fn bad_frames_are_dropped_with_a_reason() {
        let mut sw = Switch::new(SwitchConfig::default());
        assert_eq!(sw.frame(s(0), 1, &[0; 13]).forward, Forward::Drop(DropReason::Runt));
        assert_eq!(sw.frame(s(0), 1, &eth(B, A, MAX_FRAME + 1)).forward, Forward::Drop(DropReason::Oversized));
        assert_eq!(sw.frame(s(0), 1, &eth(B, BROADCAST, 60)).forward, Forward::Drop(DropReason::MulticastSource));
        assert_eq!(sw.frame(s(0), 1, &eth(B, A, MAX_FRAME)).forward, Forward::Flood { except: Some(1) });
        // Both on one port (a hub behind it): not sent back.
        sw.frame(s(0), 1, &eth(A, B, 60));
        assert_eq!(sw.frame(s(0), 1, &eth(B, A, 60)).forward, Forward::Drop(DropReason::SamePort));
    }

    #[test]
    fn a_vm_that_reconnects_is_found_on_its_new_port() {
        let mut sw = Switch::new(SwitchConfig::default());
        sw.frame(s(0), 1, &eth(BROADCAST, A, 60));
        sw.frame(s(0), 2, &eth(BROADCAST, B, 60));
        assert_eq!(sw.frame(s(1), 2, &eth(A, B, 60)).forward, Forward::To(1));
        // A's VM restarted: port 1 is gone; until A speaks, frames to it are flooded.
        sw.port_gone(1);
        assert_eq!(sw.entries(), 1);
        assert_eq!(sw.frame(s(2), 2, &eth(A, B, 60)).forward, Forward::Flood { except: Some(2) });
        sw.frame(s(3), 3, &eth(BROADCAST, A, 60));
        assert_eq!(sw.frame(s(4), 2, &eth(A, B, 60)).forward, Forward::To(3));
        // Moved without the old port going away (it reconnected before the old one was noticed).
        sw.frame(s(5), 4, &eth(BROADCAST, A, 60));
        assert_eq!(sw.frame(s(6), 2, &eth(A, B, 60)).forward, Forward::To(4));
        assert_eq!(sw.entries(), 2);
    }

    #[test]
    fn entries_age_out() {
        let mut sw = Switch::new(SwitchConfig { ageing: s(300), ..SwitchConfig::default() });
        sw.frame(s(0), 1, &eth(BROADCAST, A, 60));
        assert_eq!(sw.port_of(s(299), &A), Some(1));
        assert_eq!(sw.port_of(s(300), &A), None);
        assert_eq!(sw.frame(s(301), 2, &eth(A, B, 60)).forward, Forward::Flood { except: Some(2) });
    }

    #[test]
    fn a_port_spraying_source_addresses_owns_only_a_few() {
        let mut sw = Switch::new(SwitchConfig { macs_per_port: 4, ..SwitchConfig::default() });
        sw.frame(s(0), 2, &eth(BROADCAST, B, 60));
        for i in 0..1000u32 {
            let src = [0x02, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            assert_eq!(sw.frame(s(1), 1, &eth(B, src, 60)).forward, Forward::To(2));
        }
        assert_eq!(sw.entries(), 5);
        // The real VM on port 2 still reaches the first four.
        assert_eq!(sw.frame(s(1), 2, &eth([0x02, 0, 0, 0, 0, 0], B, 60)).forward, Forward::To(1));
        // Once its entries age, the port may learn new ones.
        let fresh = [0x02, 9, 9, 9, 9, 9];
        sw.frame(s(400), 1, &eth(B, fresh, 60));
        assert_eq!(sw.port_of(s(400), &fresh), Some(1));
    }

    /// A DHCPDISCOVER as a client sends it: broadcast, from 0.0.0.0:68 to 255.255.255.255:67.
    fn discover(mac: Mac, extra_opts: &[u8]) -> Vec<u8> {
        let mut bootp = vec![0u8; 240];
        bootp[..4].copy_from_slice(&[1, 1, 6, 0]);
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[10] = 0x80; // broadcast flag
        bootp[28..34].copy_from_slice(&mac);
        bootp[236..240].copy_from_slice(&MAGIC_COOKIE);
        bootp.extend_from_slice(&[53, 1, 1]);
        bootp.extend_from_slice(extra_opts);
        bootp.push(OPT_END);
        let udp_len = 8 + bootp.len();
        let mut f = eth(BROADCAST, mac, 0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f.truncate(HEADER_LEN);
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, UDP, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
        f.extend_from_slice(&[0, 68, 0, 67]);
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&bootp);
        f
    }

    #[test]
    fn a_dhcp_request_is_relayed_with_giaddr_and_the_lans_subnet() {
        let mut sw = Switch::new(SwitchConfig { relay: Some(RELAY), ..SwitchConfig::default() });
        let d = sw.frame(s(0), 1, &discover(A, &[OPT_PAD, 12, 3, b'v', b'm', b'1']));
        assert_eq!(d.forward, Forward::Flood { except: Some(1) }, "still a broadcast on the LAN");
        let p = d.relay.expect("relayed");
        assert_eq!(p[3], 1, "hops");
        assert_eq!(&p[24..28], &[127, 0, 0, 2], "giaddr");
        assert_eq!(&p[28..34], &A);
        let opts = &p[240..];
        assert_eq!(opts, &[53, 1, 1, OPT_PAD, 12, 3, b'v', b'm', b'1', 118, 4, 10, 98, 0, 1, 82, 2, 19, 0, OPT_END]);
        // Without a relay, only switched.
        let mut plain = Switch::new(SwitchConfig::default());
        assert_eq!(plain.frame(s(0), 1, &discover(A, &[])).relay, None);
    }

    #[test]
    fn what_is_not_a_clean_client_request_is_not_relayed() {
        let ok = discover(A, &[]);
        assert!(relay_request(&RELAY, &ok).is_some());
        // Options without an END, or an option running past the end.
        let mut no_end = ok.clone();
        no_end.pop();
        assert_eq!(relay_request(&RELAY, &no_end), None);
        let mut overrun = discover(A, &[]);
        let n = overrun.len();
        overrun[n - 1] = 12; // option 12 with no length byte
        assert_eq!(relay_request(&RELAY, &overrun), None);
        // A client that sends relay agent information itself.
        assert_eq!(relay_request(&RELAY, &discover(A, &[82, 2, 1, 0])), None);
        // A reply (op 2), a relayed request (giaddr set), too many hops, a fragment.
        for (at, v) in [(42, 2u8), (42 + 24, 10), (42 + 3, MAX_HOPS)] {
            let mut f = ok.clone();
            f[at] = v;
            assert_eq!(relay_request(&RELAY, &f), None, "byte {at} = {v}");
        }
        let mut frag = ok.clone();
        frag[HEADER_LEN + 6] = 0x20; // more fragments
        assert_eq!(relay_request(&RELAY, &frag), None);
        // Every truncation is refused or parsed, never a panic.
        for n in 0..ok.len() {
            let _ = relay_request(&RELAY, &ok[..n]);
        }
    }

    fn reply(yiaddr: [u8; 4], broadcast: bool) -> Vec<u8> {
        let mut p = vec![0u8; 240];
        p[..3].copy_from_slice(&[2, 1, 6]);
        if broadcast {
            p[10] = 0x80;
        }
        p[16..20].copy_from_slice(&yiaddr);
        p[24..28].copy_from_slice(&RELAY.giaddr);
        p[28..34].copy_from_slice(&A);
        p[236..240].copy_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[53, 1, 2, OPT_END]);
        p
    }

    #[test]
    fn a_reply_becomes_a_frame_to_the_client_with_valid_checksums() {
        let f = reply_frame(&RELAY, &reply([10, 98, 0, 101], false)).expect("frame");
        assert_eq!(&f[0..6], &A);
        assert_eq!(&f[6..12], &SW);
        let ip = &f[HEADER_LEN..HEADER_LEN + 20];
        assert_eq!(&ip[12..16], &[10, 98, 0, 1]);
        assert_eq!(&ip[16..20], &[10, 98, 0, 101]);
        assert_eq!(checksum(ip, 0), 0, "IPv4 header checksum");
        let udp = &f[HEADER_LEN + 20..];
        let mut pseudo = 0u32;
        for w in [[10u8, 98], [0, 1], [10, 98], [0, 101]] {
            pseudo += u32::from(u16::from_be_bytes(w));
        }
        pseudo += 17 + udp.len() as u32;
        assert_eq!(checksum(udp, pseudo), 0, "UDP checksum");
        assert_eq!(be16(udp, 0), 67);
        assert_eq!(be16(udp, 2), 68);
        // The switch sends it to the client's port.
        let mut sw = Switch::new(SwitchConfig { relay: Some(RELAY), ..SwitchConfig::default() });
        sw.frame(s(0), 7, &discover(A, &[]));
        assert_eq!(sw.route_own(s(0), &f), Forward::To(7));

        let b = reply_frame(&RELAY, &reply([10, 98, 0, 101], true)).expect("frame");
        assert_eq!(&b[0..6], &BROADCAST);
        assert_eq!(&b[HEADER_LEN + 16..HEADER_LEN + 20], &[255; 4]);
        assert_eq!(sw.route_own(s(0), &b), Forward::Flood { except: None });
        let nak = reply_frame(&RELAY, &reply([0; 4], false)).expect("frame");
        assert_eq!(&nak[0..6], &BROADCAST);
    }

    #[test]
    fn bad_replies_are_refused() {
        assert_eq!(reply_frame(&RELAY, &[2; 100]), Err(ReplyError::Short));
        let mut r = reply([10, 98, 0, 101], false);
        r[0] = 1;
        assert_eq!(reply_frame(&RELAY, &r), Err(ReplyError::NotReply));
        let mut long = reply([10, 98, 0, 101], false);
        long.resize(1500, 0);
        assert_eq!(reply_frame(&RELAY, &long), Err(ReplyError::TooLong));
    }

    #[test]
    fn frames_to_the_switch_itself_stop_there() {
        let mut sw = Switch::new(SwitchConfig { relay: Some(RELAY), ..SwitchConfig::default() });
        assert_eq!(sw.frame(s(0), 1, &eth(SW, A, 60)).forward, Forward::Drop(DropReason::ToSwitch));
    }
}
