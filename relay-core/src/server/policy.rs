//! Which peer addresses a client may reach through the relay.
//!
//! A TURN server that relays to any address lets its clients reach the
//! server's own loopback services, the operator's private networks and cloud
//! metadata endpoints (RFC 8656 §21.2.1, §21.3). [`PeerPolicy`] is consulted
//! on the control path (CreatePermission, ChannelBind, and the implicit
//! permission of a Send indication) and denies such addresses.
//!
//! # Rules
//!
//! For a peer transport address, in order:
//!
//! 1. one of the server's listeners is denied ([`Denied::Listener`]),
//!    whatever the lists say: relaying to ourselves would loop;
//! 2. an address on one of the server's own IPs ([`OwnAddresses`]):
//!    - at a port some shard holds as a relay socket, it is another
//!      allocation of this server — two relayed WebRTC endpoints sharing a
//!      deployment are each other's peer this way — and is permitted
//!      (unless an operator deny entry covers the IP), even where the IP is
//!      in the default list (a private relay IP);
//!    - at any other port it is denied ([`Denied::OwnAddress`]) unless an
//!      operator allow entry covers the IP (then the rules below decide):
//!      that protects the host's other services (the CVE-2020-26262
//!      class);
//! 3. the operator's allow and deny lists are searched for the longest
//!    prefix that contains the address; if it is a deny entry the address is
//!    denied ([`Denied::OperatorDeny`]), if it is an allow entry the address
//!    is permitted (the default list is not consulted). An allow and a deny
//!    entry of the same length: deny wins. So `deny 10.0.0.0/8` with
//!    `allow 10.1.2.0/24` permits 10.1.2.3 only, and `allow 0.0.0.0/0`
//!    with `deny 192.168.1.0/24` denies only that /24;
//! 4. otherwise an address in the default list ([`DEFAULT_DENY`]) is denied
//!    ([`Denied::DefaultDeny`]), and any other is permitted.
//!
//! An IPv6 address that embeds an IPv4 address — IPv4-mapped
//! (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, except `::` and `::1`)
//! or NAT64 well-known prefix (`64:ff9b::a.b.c.d`, RFC 6052) — must pass both
//! the IPv6 rules for the whole address and the IPv4 rules (the operator's
//! IPv4 lists included) for the embedded address; an own IPv4 address in
//! an embedded form is an own address but never a relay address. Write operator entries for IPv4 ranges
//! in IPv4 notation: an IPv6 entry like `::ffff:10.0.0.0/104` only matches
//! under the IPv6 rules.
//!
//! Checks allocate nothing; the operator lists are indexed by prefix
//! length, so a check costs one hash lookup per distinct length in a list
//! (at most 33 for IPv4, 129 for IPv6), however many entries there are.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::error::StunError;
use super::own::OwnAddresses;

/// Why a peer address is refused. The server answers 403 (Forbidden).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The address is in a range denied by default (private, loopback,
    /// link-local, multicast, reserved, …) and no operator entry allows it.
    #[error("peer address is in a range denied by default")]
    DefaultDeny,
    /// The operator's deny list covers the address.
    #[error("peer address is denied by the operator's policy")]
    OperatorDeny,
    /// The address is on one of the server's own IPs, at a port that is
    /// not a relay address.
    #[error("peer address is one of the server's own addresses")]
    OwnAddress,
    /// The address is one of the server's listeners.
    #[error("peer address is one of the server's listening addresses")]
    Listener,
}

impl Denied {
    /// The error answered for a refused peer: 403 (Forbidden, RFC 8656 §18).
    pub const fn error(self) -> StunError {
        StunError::Forbidden
    }
}

/// A prefix of one address family, held in the low bits of a `u128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    net: u128,
    mask: u128,
    len: u8,
}

impl Rule {
    const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Rule {
        let mask = if len == 0 { 0 } else { (u32::MAX << (32 - len)) as u128 };
        let addr = u32::from_be_bytes([a, b, c, d]) as u128;
        Rule { net: addr & mask, mask, len }
    }

    const fn v6(addr: u128, len: u8) -> Rule {
        let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
        Rule { net: addr & mask, mask, len }
    }

    #[inline]
    const fn contains(&self, addr: u128) -> bool {
        addr & self.mask == self.net
    }
}

/// The IPv4 ranges denied by default.
const DEFAULT_DENY_V4: [Rule; 12] = [
    Rule::v4(0, 0, 0, 0, 8),          // "this" network (RFC 791)
    Rule::v4(127, 0, 0, 0, 8),        // loopback
    Rule::v4(10, 0, 0, 0, 8),         // private (RFC 1918)
    Rule::v4(100, 64, 0, 0, 10),      // shared address space, CGNAT (RFC 6598)
    Rule::v4(169, 254, 0, 0, 16),     // link-local, cloud metadata
    Rule::v4(172, 16, 0, 0, 12),      // private (RFC 1918)
    Rule::v4(192, 0, 0, 0, 24),       // IETF protocol assignments (RFC 6890)
    Rule::v4(192, 168, 0, 0, 16),     // private (RFC 1918)
    Rule::v4(198, 18, 0, 0, 15),      // benchmarking (RFC 2544)
    Rule::v4(224, 0, 0, 0, 4),        // multicast
    Rule::v4(240, 0, 0, 0, 4),        // reserved (RFC 1112)
    Rule::v4(255, 255, 255, 255, 32), // limited broadcast
];

/// The IPv6 ranges denied by default.
const DEFAULT_DENY_V6: [Rule; 5] = [
    Rule::v6(0, 128),                 // unspecified
    Rule::v6(1, 128),                 // loopback
    Rule::v6(0xfc00_u128 << 112, 7),  // unique local (RFC 4193)
    Rule::v6(0xfe80_u128 << 112, 10), // link-local
    Rule::v6(0xff00_u128 << 112, 8),  // multicast
];

/// The ranges denied by default, as text (for documentation and logs).
pub const DEFAULT_DENY: [&str; 17] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// `::ffff:0:0/96`, IPv4-mapped addresses, shifted right by 32.
const MAPPED_PREFIX: u128 = 0xffff;
/// `64:ff9b::/96`, the NAT64 well-known prefix (RFC 6052), shifted right by 32.
const NAT64_PREFIX: u128 = 0x0064_ff9b_u128 << 64;

/// The IPv4 address an IPv6 address embeds, if any (mapped, compatible, NAT64).
#[inline]
pub(super) fn embedded_v4(addr: u128) -> Option<u32> {
    let high = addr >> 32;
    let low = addr as u32;
    match high {
        MAPPED_PREFIX | NAT64_PREFIX => Some(low),
        // IPv4-compatible; `::` and `::1` are the IPv6 unspecified and loopback addresses.
        0 if low > 1 => Some(low),
        _ => None,
    }
}

/// The operator's lists for one address family, indexed by prefix length:
/// a decision costs one hash lookup per distinct length (at most 33 for
/// IPv4, 129 for IPv6) however many entries there are — a user database's
/// ranges become thousands of prefixes, and every Send indication is
/// checked.
#[derive(Debug, Clone, Default)]
struct Lists {
    /// The prefix lengths that have an entry, longest first, with their
    /// masks.
    lens: Vec<(u8, u128)>,
    /// (length, network) → allowed: `false` when the network is denied,
    /// whether or not it is also allowed (a deny wins a tie).
    entries: HashMap<(u8, u128), bool, foldhash::fast::RandomState>,
}

impl Lists {
    fn add(&mut self, rule: Rule, allow: bool) {
        if let Err(at) = self.lens.binary_search_by(|&(len, _)| rule.len.cmp(&len)) {
            self.lens.insert(at, (rule.len, rule.mask));
        }
        self.entries.entry((rule.len, rule.net)).and_modify(|a| *a &= allow).or_insert(allow);
    }

    /// Longest-prefix decision between the lists: `Some(true)` allowed,
    /// `Some(false)` denied (also when the longest allow and deny entries
    /// that contain `addr` are equally long), `None` when no entry
    /// contains it.
    #[inline]
    fn decide(&self, addr: u128) -> Option<bool> {
        self.lens.iter().find_map(|&(len, mask)| self.entries.get(&(len, addr & mask)).copied())
    }
}

/// The peer address policy: the default deny list, the operator's allow and
/// deny lists, and the server's own addresses. See the [module](self) docs
/// for the rules.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    v4: Lists,
    v6: Lists,
    own: Arc<OwnAddresses>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy::new()
    }
}

impl PeerPolicy {
    /// The default deny list only.
    pub fn new() -> Self {
        PeerPolicy { v4: Lists::default(), v6: Lists::default(), own: Arc::default() }
    }

    /// The default deny list plus the operator's allow and deny lists.
    pub fn with_lists(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        let mut policy = PeerPolicy::new();
        for net in allow {
            policy.allow(net);
        }
        for net in deny {
            policy.deny(net);
        }
        policy
    }

    /// Adds an operator allow entry.
    pub fn allow(&mut self, net: IpNet) {
        let (lists, rule) = self.lists_for(net);
        lists.add(rule, true);
    }

    /// Adds an operator deny entry.
    pub fn deny(&mut self, net: IpNet) {
        let (lists, rule) = self.lists_for(net);
        lists.add(rule, false);
    }

    /// Replaces the operator's allow and deny lists (a user database's
    /// refresh, a reload), keeping the default list and the server's own
    /// addresses. Only checks made from now on see the new lists.
    pub fn set_lists(&mut self, allow: &[IpNet], deny: &[IpNet]) {
        self.v4 = Lists::default();
        self.v6 = Lists::default();
        for &net in allow {
            self.allow(net);
        }
        for &net in deny {
            self.deny(net);
        }
    }

    fn lists_for(&mut self, net: IpNet) -> (&mut Lists, Rule) {
        match net {
            IpNet::V4(n) => {
                let [a, b, c, d] = n.addr().octets();
                (&mut self.v4, Rule::v4(a, b, c, d, n.prefix_len()))
            }
            IpNet::V6(n) => (&mut self.v6, Rule::v6(u128::from(n.addr()), n.prefix_len())),
        }
    }

    /// Records one of the server's own IPs (every port of it is refused
    /// as a peer unless the operator allows it). An IPv4-mapped IPv6
    /// address is recorded as its IPv4 address.
    pub fn deny_own(&mut self, addr: IpAddr) {
        Arc::make_mut(&mut self.own).add_ip(addr);
    }

    /// The server's own addresses.
    #[inline]
    pub fn own(&self) -> &OwnAddresses {
        &self.own
    }

    /// The server's own addresses, to add to (copied first if shared).
    pub fn own_mut(&mut self) -> &mut OwnAddresses {
        Arc::make_mut(&mut self.own)
    }

    /// Replaces the server's own addresses with a set shared by every
    /// shard (built once the I/O layer has bound every socket).
    pub fn set_own(&mut self, own: Arc<OwnAddresses>) {
        self.own = own;
    }

    /// Whether the server may relay to `peer`, and if not, why.
    pub fn check(&self, peer: SocketAddr) -> Result<(), Denied> {
        let ip = peer.ip();
        if self.own.is_listener(peer, |ip| self.in_default_list(ip)) {
            return Err(Denied::Listener);
        }
        if self.own.is_own_ip(ip) {
            if self.own.relay(peer).is_some() {
                // Another allocation of this server: only an explicit
                // operator deny refuses it.
                return match self.operator(ip) {
                    Some(false) => Err(Denied::OperatorDeny),
                    _ => Ok(()),
                };
            }
            if self.operator(ip) != Some(true) {
                return Err(Denied::OwnAddress);
            }
        }
        self.check_ip(ip)
    }

    /// Whether the server may relay to `peer`.
    pub fn permits(&self, peer: SocketAddr) -> bool {
        self.check(peer).is_ok()
    }

    /// The default and operator rules for an IP alone (step 3 and 4 of the
    /// [module](self) docs; the own-address rules need the port).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        match ip {
            IpAddr::V4(a) => self.check_v4(u32::from(a)),
            IpAddr::V6(a) => {
                let a = u128::from(a);
                decide(&self.v6, &DEFAULT_DENY_V6, a)?;
                match embedded_v4(a) {
                    Some(e) => self.check_v4(e),
                    None => Ok(()),
                }
            }
        }
    }

    /// What the operator's lists say of `ip`: `Some(true)` allowed (for an
    /// embedded form: by the lists of both families that have an entry and
    /// denied by neither), `Some(false)` denied, `None` no entry.
    fn operator(&self, ip: IpAddr) -> Option<bool> {
        match ip {
            IpAddr::V4(a) => self.v4.decide(u128::from(u32::from(a))),
            IpAddr::V6(a) => {
                let a = u128::from(a);
                let v6 = self.v6.decide(a);
                let v4 = embedded_v4(a).and_then(|e| self.v4.decide(u128::from(e)));
                match (v6, v4) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (None, None) => None,
                    _ => Some(true),
                }
            }
        }
    }

    /// True when `ip` is in the default deny list (where a host's own
    /// loopback and private addresses live).
    fn in_default_list(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => DEFAULT_DENY_V4.iter().any(|r| r.contains(u128::from(u32::from(a)))),
            IpAddr::V6(a) => {
                let a = u128::from(a);
                DEFAULT_DENY_V6.iter().any(|r| r.contains(a))
                    || embedded_v4(a).is_some_and(|e| DEFAULT_DENY_V4.iter().any(|r| r.contains(u128::from(e))))
            }
        }
    }

    #[inline]
    fn check_v4(&self, addr: u32) -> Result<(), Denied> {
        decide(&self.v4, &DEFAULT_DENY_V4, u128::from(addr))
    }
}

#[inline]
fn decide(lists: &Lists, defaults: &[Rule], addr: u128) -> Result<(), Denied> {
    match lists.decide(addr) {
        Some(true) => Ok(()),
        Some(false) => Err(Denied::OperatorDeny),
        None if defaults.iter().any(|r| r.contains(addr)) => Err(Denied::DefaultDeny),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer address at an arbitrary port.
    fn ip(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 40000)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn default_list_text_matches_rules() {
        let parsed: Vec<IpNet> = DEFAULT_DENY.iter().map(|s| net(s)).collect();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in parsed {
            let mut p = PeerPolicy::new();
            let (_, rule) = p.lists_for(n);
            match n {
                IpNet::V4(_) => v4.push(rule),
                IpNet::V6(_) => v6.push(rule),
            }
        }
        assert_eq!(v4, DEFAULT_DENY_V4);
        assert_eq!(v6, DEFAULT_DENY_V6);
    }

    #[test]
    fn every_default_range_is_denied_at_both_ends() {
        let p = PeerPolicy::new();
        for range in DEFAULT_DENY {
            let n = net(range);
            for addr in [n.network(), n.broadcast()] {
                assert_eq!(p.check(SocketAddr::new(addr, 9)), Err(Denied::DefaultDeny), "{addr} in {range}");
            }
        }
        // An address in each range, and a permitted neighbour just outside it.
        let cases = [
            ("0.1.2.3", "1.0.0.0"),
            ("127.0.0.1", "128.0.0.0"),
            ("10.255.0.1", "11.0.0.0"),
            ("100.127.255.255", "100.128.0.0"),
            ("169.254.169.254", "169.253.255.255"),
            ("172.31.255.255", "172.32.0.0"),
            ("192.0.0.170", "192.0.1.0"),
            ("192.168.1.1", "192.169.0.0"),
            ("198.19.1.1", "198.20.0.0"),
            ("239.255.255.250", "223.255.255.255"),
            ("250.0.0.1", "100.63.255.255"),
            ("fd00::1", "fe00::1"),
            ("fe80::1", "fec0::1"),
            ("ff02::1", "2001:db8::1"),
        ];
        for (denied, neighbour) in cases {
            assert_eq!(p.check(ip(denied)), Err(Denied::DefaultDeny), "{denied}");
            assert!(p.permits(ip(neighbour)), "{neighbour}");
        }
        assert_eq!(p.check(ip("255.255.255.255")), Err(Denied::DefaultDeny));
        assert_eq!(p.check(ip("::")), Err(Denied::DefaultDeny));
        assert_eq!(p.check(ip("::1")), Err(Denied::DefaultDeny));
        assert!(p.permits(ip("8.8.8.8")));
        assert!(p.permits(ip("1.1.1.1")));
        assert!(p.permits(ip("2606:4700::1111")));
        assert_eq!(p.check(ip("::2")), Err(Denied::DefaultDeny), "IPv4-compatible ::0.0.0.2");
        assert!(p.permits(ip("::808:808")), "IPv4-compatible ::8.8.8.8");
    }

    #[test]
    fn embedded_ipv4_forms() {
        let p = PeerPolicy::new();
        for form in ["::ffff:", "::", "64:ff9b::"] {
            for v4 in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "0.0.0.1", "224.0.0.1"] {
                let a = ip(&format!("{form}{v4}"));
                assert_eq!(p.check(a), Err(Denied::DefaultDeny), "{a}");
            }
            let public = ip(&format!("{form}8.8.8.8"));
            assert!(p.permits(public), "{public}");
        }
        // Not one of the embedding prefixes: judged as IPv6 only.
        assert!(p.permits(ip("64:ff9c::a00:1")));
        assert!(p.permits(ip("::fffe:a00:1")));
    }

    #[test]
    fn operator_allow_overrides_default_for_what_it_names() {
        let p = PeerPolicy::with_lists(vec![net("127.0.0.0/8"), net("::1/128")], vec![]);
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")), "embedded forms follow the IPv4 lists");
        assert!(p.permits(ip("::1")));
        assert_eq!(p.check(ip("10.0.0.1")), Err(Denied::DefaultDeny));
        assert_eq!(p.check(ip("::ffff:10.0.0.1")), Err(Denied::DefaultDeny));
        assert_eq!(p.check(ip("fe80::1")), Err(Denied::DefaultDeny));

        let p = PeerPolicy::with_lists(vec![net("10.1.0.0/16")], vec![]);
        assert!(p.permits(ip("10.1.200.3")));
        assert_eq!(p.check(ip("10.2.0.1")), Err(Denied::DefaultDeny));
    }

    #[test]
    fn operator_deny_and_longest_prefix() {
        let p = PeerPolicy::with_lists(vec![], vec![net("203.0.113.0/24"), net("2001:db8::/32")]);
        assert_eq!(p.check(ip("203.0.113.7")), Err(Denied::OperatorDeny));
        assert_eq!(p.check(ip("::ffff:203.0.113.7")), Err(Denied::OperatorDeny));
        assert_eq!(p.check(ip("64:ff9b::203.0.113.7")), Err(Denied::OperatorDeny));
        assert_eq!(p.check(ip("2001:db8::1")), Err(Denied::OperatorDeny));
        assert!(p.permits(ip("203.0.114.1")));

        // Deny beats a default-list allow override of the same range.
        let p = PeerPolicy::with_lists(vec![net("10.0.0.0/8")], vec![net("10.0.0.0/8")]);
        assert_eq!(p.check(ip("10.0.0.1")), Err(Denied::OperatorDeny));

        // A more specific allow inside a deny wins, a more specific deny inside an allow wins.
        let p = PeerPolicy::with_lists(
            vec![net("10.1.2.0/24"), net("0.0.0.0/0")],
            vec![net("10.0.0.0/8"), net("198.51.100.0/24")],
        );
        assert!(p.permits(ip("10.1.2.3")));
        assert_eq!(p.check(ip("10.1.3.1")), Err(Denied::OperatorDeny));
        assert_eq!(p.check(ip("198.51.100.9")), Err(Denied::OperatorDeny));
        assert!(p.permits(ip("192.168.1.1")), "allow 0.0.0.0/0 overrides every IPv4 default");
        assert_eq!(p.check(ip("fe80::1")), Err(Denied::DefaultDeny), "IPv6 defaults untouched");
    }

    #[test]
    fn own_addresses_denied_but_relay_addresses_are_peers() {
        let mut p = PeerPolicy::with_lists(vec![net("0.0.0.0/0"), net("::/0")], vec![]);
        p.deny_own("203.0.113.10".parse().unwrap());
        p.deny_own("2001:db8::10".parse().unwrap());
        p.deny_own("::ffff:198.51.100.1".parse().unwrap());
        // An allow-all list overrides the own-address rule, listeners aside.
        assert!(p.permits(ip("203.0.113.10")));
        let mut p = PeerPolicy::new();
        p.deny_own("203.0.113.10".parse().unwrap());
        p.deny_own("2001:db8::10".parse().unwrap());
        p.deny_own("::ffff:198.51.100.1".parse().unwrap());
        assert_eq!(p.check(ip("203.0.113.10")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("::ffff:203.0.113.10")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("64:ff9b::203.0.113.10")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("2001:db8::10")), Err(Denied::OwnAddress));
        assert_eq!(p.check(ip("198.51.100.1")), Err(Denied::OwnAddress));
        assert!(p.permits(ip("203.0.113.11")));
        assert_eq!(Denied::OwnAddress.error().code(), 403);
        assert_eq!(Denied::Listener.error().code(), 403);

        // Relay addresses of the server, bound (private here) and advertised.
        let own = p.own_mut();
        own.add_relay(sa("10.0.0.5:50000"), "203.0.113.10".parse().unwrap());
        own.add_relay(sa("10.0.0.5:50001"), "203.0.113.10".parse().unwrap());
        own.add_listener(sa("10.0.0.5:3478"));
        own.add_listener(sa("0.0.0.0:5349"));
        assert!(p.permits(sa("203.0.113.10:50000")), "another allocation's relayed address");
        assert!(p.permits(sa("10.0.0.5:50001")), "bound, in the default list, still a relay address");
        assert_eq!(p.check(sa("203.0.113.10:50002")), Err(Denied::OwnAddress), "not a relay port");
        assert_eq!(p.check(sa("10.0.0.5:22")), Err(Denied::OwnAddress));
        assert_eq!(p.check(sa("[::ffff:203.0.113.10]:50000")), Err(Denied::OwnAddress), "embedded form");
        assert_eq!(p.check(sa("10.0.0.5:3478")), Err(Denied::Listener));
        assert_eq!(p.check(sa("203.0.113.10:5349")), Err(Denied::Listener), "wildcard listener");
        assert_eq!(p.check(sa("127.0.0.1:5349")), Err(Denied::Listener), "wildcard listener, loopback");
        assert_eq!(p.check(sa("198.18.0.1:5349")), Err(Denied::Listener), "wildcard listener, a default-list IP");
        assert!(p.permits(sa("8.8.8.8:5349")), "another host's port 5349");
    }

    #[test]
    fn operator_lists_and_own_addresses() {
        let mut p = PeerPolicy::with_lists(vec![net("127.0.0.0/8")], vec![net("10.9.0.0/16")]);
        let own = p.own_mut();
        own.add_relay(sa("127.0.0.1:50000"), "127.0.0.1".parse().unwrap());
        own.add_relay(sa("10.9.0.1:50000"), "10.9.0.1".parse().unwrap());
        own.add_listener(sa("127.0.0.1:3478"));
        // An allow entry opens the own IP's other ports, never a listener.
        assert!(p.permits(sa("127.0.0.1:50000")));
        assert!(p.permits(sa("127.0.0.1:40000")));
        assert_eq!(p.check(sa("127.0.0.1:3478")), Err(Denied::Listener));
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:3478")), Err(Denied::Listener));
        // An explicit deny refuses even relay addresses.
        assert_eq!(p.check(sa("10.9.0.1:50000")), Err(Denied::OperatorDeny));
        assert_eq!(p.check(sa("10.9.0.1:40000")), Err(Denied::OwnAddress));
    }

    #[test]
    fn set_lists_replaces_the_operator_lists_and_keeps_own_addresses() {
        let mut p = PeerPolicy::with_lists(vec![net("10.0.0.0/8")], vec![net("203.0.113.0/24")]);
        p.own_mut().add_relay(sa("192.0.2.10:50000"), "192.0.2.10".parse().unwrap());
        p.own_mut().add_listener(sa("192.0.2.10:3478"));
        assert!(p.permits(ip("10.1.1.1")) && !p.permits(ip("203.0.113.5")));
        p.set_lists(&[net("192.168.7.0/24"), net("fd00::/8")], &[net("198.51.100.0/24")]);
        assert_eq!(p.check(ip("10.1.1.1")), Err(Denied::DefaultDeny), "the old allow entry is gone");
        assert!(p.permits(ip("203.0.113.5")), "the old deny entry is gone");
        assert!(p.permits(ip("192.168.7.9")) && p.permits(ip("fd00::1")));
        assert_eq!(p.check(ip("198.51.100.1")), Err(Denied::OperatorDeny));
        // The own-address rules still hold.
        assert_eq!(p.check(sa("192.0.2.10:3478")), Err(Denied::Listener));
        assert_eq!(p.check(sa("192.0.2.10:40000")), Err(Denied::OwnAddress));
        assert!(p.permits(sa("192.0.2.10:50000")));
        p.set_lists(&[], &[]);
        assert_eq!(p.check(ip("192.168.7.9")), Err(Denied::DefaultDeny));
    }

    /// The longest-prefix rule as a linear scan: the index must decide as it
    /// does (longest entry wins, deny at a tie, `None` without an entry).
    fn linear(allow: &[Rule], deny: &[Rule], addr: u128) -> Option<bool> {
        let longest = |rules: &[Rule]| rules.iter().filter(|r| r.contains(addr)).map(|r| r.len).max();
        match (longest(allow), longest(deny)) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(a), Some(d)) => Some(a > d),
        }
    }

    /// Adds `rules` (allow?, rule) to an index and checks it decides every
    /// one of `addrs` as [`linear`] does.
    fn index_matches_linear(
        rules: &[(bool, Rule)],
        addrs: &[u128],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut lists = Lists::default();
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for &(is_allow, rule) in rules {
            lists.add(rule, is_allow);
            if is_allow { allow.push(rule) } else { deny.push(rule) }
        }
        for &addr in addrs {
            proptest::prop_assert_eq!(lists.decide(addr), linear(&allow, &deny, addr), "{:#x}", addr);
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn the_length_index_decides_as_a_linear_scan(
            // Few distinct high bits, so that entries nest and collide.
            rules in proptest::collection::vec((proptest::bool::ANY, 0u32..16, 0u8..=32), 0..40),
            addrs in proptest::collection::vec(0u32..16, 1..20),
            low in proptest::num::u32::ANY,
        ) {
            let at = |high: u32| (high << 28) | (low >> 4);
            let rules: Vec<(bool, Rule)> = rules.iter().map(|&(allow, high, len)| {
                let [a, b, c, d] = at(high).to_be_bytes();
                (allow, Rule::v4(a, b, c, d, len))
            }).collect();
            let addrs: Vec<u128> = addrs.iter().flat_map(|&h| [at(h), h << 28, !low]).map(u128::from).collect();
            index_matches_linear(&rules, &addrs)?;
        }

        #[test]
        fn the_length_index_decides_as_a_linear_scan_v6(
            rules in proptest::collection::vec((proptest::bool::ANY, 0u128..8, 0u8..=128), 0..40),
            addrs in proptest::collection::vec(0u128..8, 1..20),
            low in proptest::num::u128::ANY,
        ) {
            let at = |high: u128| (high << 125) | (low >> 3);
            let rules: Vec<(bool, Rule)> = rules.iter().map(|&(allow, high, len)| (allow, Rule::v6(at(high), len))).collect();
            let addrs: Vec<u128> = addrs.iter().flat_map(|&h| [at(h), h << 125, !low]).collect();
            index_matches_linear(&rules, &addrs)?;
        }
    }

    #[test]
    fn thousands_of_entries_decide_alike() {
        // A user database's ranges as covering prefixes: 4,000 /24s and
        // /32s, allowed and denied, nested in /16s.
        let mut p = PeerPolicy::new();
        for i in 0..2000u32 {
            let [_, b, c, _] = (i * 7919).to_be_bytes();
            p.deny(format!("203.{b}.{c}.0/24").parse().unwrap());
            p.allow(format!("203.{b}.{c}.{}/32", i % 250).parse().unwrap());
        }
        p.allow("203.0.0.0/8".parse().unwrap());
        let [_, b, c, _] = (7919u32 * 3).to_be_bytes();
        assert_eq!(p.check(ip(&format!("203.{b}.{c}.3"))), Ok(()), "the /32 allow inside the /24 deny");
        assert_eq!(p.check(ip(&format!("203.{b}.{c}.4"))), Err(Denied::OperatorDeny));
        assert_eq!(p.check(ip("203.255.255.1")), Ok(()), "only the /8 allow");
    }
}
