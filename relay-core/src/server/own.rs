//! The server's own transport addresses: its listeners and every relay
//! address of every shard, bound and advertised.
//!
//! Two WebRTC endpoints that both need a relay and share a deployment are
//! each other's peer through *relay addresses of this server*: each browser
//! asks CreatePermission and ChannelBind for the other browser's relayed
//! address. Those are legitimate peers. Every other port on the server's
//! own IPs is not — it could be a listener, the metrics endpoint or another
//! service on the host (the CVE-2020-26262 class) — and a listener is never
//! one. [`OwnAddresses`] answers the questions the peer policy and the
//! relay path ask:
//!
//! - is an IP one of ours ([`OwnAddresses::is_own_ip`], a short scan, run
//!   per packet, so kept cheap);
//! - is an address one of our relay addresses, and if so which bound and
//!   advertised pair ([`OwnAddresses::relay`]): the datagram then goes to
//!   the bound address (no NAT hairpinning needed) and, arriving from a
//!   bound address, is seen as coming from the advertised one;
//! - is it a listener ([`OwnAddresses::is_listener`]).
//!
//! The set is built once by the I/O layer after every shard bound its
//! sockets and shared, immutable, by all shards.

use std::net::{IpAddr, SocketAddr};

/// Words in a port bit set (65,536 bits).
const PORT_WORDS: usize = 1024;

/// One relay IP: the address sockets bind to, the address clients are told
/// (different behind a 1:1 NAT), and the ports bound on it by any shard.
#[derive(Clone)]
struct RelayIp {
    bind: IpAddr,
    advertised: IpAddr,
    ports: Box<[u64; PORT_WORDS]>,
}

impl std::fmt::Debug for RelayIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count: u32 = self.ports.iter().map(|w| w.count_ones()).sum();
        f.debug_struct("RelayIp")
            .field("bind", &self.bind)
            .field("advertised", &self.advertised)
            .field("ports", &count)
            .finish()
    }
}

impl RelayIp {
    #[inline]
    fn has_port(&self, port: u16) -> bool {
        self.ports[usize::from(port) >> 6] & (1 << (port & 63)) != 0
    }
}

/// A relay address of this server, as bound and as advertised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddr {
    /// Where its socket is bound (where datagrams for it are sent).
    pub bound: SocketAddr,
    /// What clients are told (what a permission or channel names).
    pub advertised: SocketAddr,
}

/// The server's own addresses. See the [module](self) docs.
#[derive(Clone, Debug, Default)]
pub struct OwnAddresses {
    relays: Vec<RelayIp>,
    listeners: Vec<SocketAddr>,
    /// Every own IP (listener, bound and advertised relay IPs, and any
    /// other the I/O layer names), canonical, for the quick test.
    v4: Vec<u32>,
    v6: Vec<u128>,
}

impl OwnAddresses {
    /// No addresses.
    pub fn new() -> OwnAddresses {
        OwnAddresses::default()
    }

    /// Records an own IP that is neither a listener nor a relay address
    /// (every port of it is refused as a peer unless the operator allows it).
    pub fn add_ip(&mut self, ip: IpAddr) {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                if !self.v4.contains(&a) {
                    self.v4.push(a);
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                if !self.v6.contains(&a) {
                    self.v6.push(a);
                }
            }
        }
    }

    /// Records a listener (UDP, TCP or TLS). A wildcard address (`0.0.0.0`,
    /// `::`) stands for every address of the host at that port.
    pub fn add_listener(&mut self, addr: SocketAddr) {
        let addr = canonical(addr);
        if !addr.ip().is_unspecified() {
            self.add_ip(addr.ip());
        }
        if !self.listeners.contains(&addr) {
            self.listeners.push(addr);
        }
    }

    /// Records a relay socket bound to `bound` whose address clients are
    /// told is `advertised_ip` at the same port.
    pub fn add_relay(&mut self, bound: SocketAddr, advertised_ip: IpAddr) {
        let (bind, advertised) = (bound.ip().to_canonical(), advertised_ip.to_canonical());
        self.add_ip(bind);
        self.add_ip(advertised);
        let i = match self.relays.iter().position(|r| r.bind == bind && r.advertised == advertised) {
            Some(i) => i,
            None => {
                self.relays.push(RelayIp { bind, advertised, ports: Box::new([0; PORT_WORDS]) });
                self.relays.len() - 1
            }
        };
        let port = bound.port();
        self.relays[i].ports[usize::from(port) >> 6] |= 1 << (port & 63);
    }

    /// True when `ip` (or the IPv4 address an IPv6 form embeds) is one of
    /// the server's own. Cheap: a scan of a handful of words.
    #[inline]
    pub fn is_own_ip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(&u32::from(a)),
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.contains(&a) || super::policy::embedded_v4(a).is_some_and(|e| self.v4.contains(&e))
            }
        }
    }

    /// The relay address `addr` names, if it is one of this server's: its
    /// IP is a relay IP (bound or advertised, in canonical form — an
    /// embedded IPv4 form is not a relay address) and a shard bound that
    /// port on it.
    #[inline]
    pub fn relay(&self, addr: SocketAddr) -> Option<RelayAddr> {
        let ip = addr.ip();
        let port = addr.port();
        self.relays.iter().find(|r| (r.bind == ip || r.advertised == ip) && r.has_port(port)).map(|r| RelayAddr {
            bound: SocketAddr::new(r.bind, port),
            advertised: SocketAddr::new(r.advertised, port),
        })
    }

    /// True when `addr` is one of the server's listeners: the same address,
    /// or a wildcard listener's port on an IP that `local_ip` says belongs
    /// to this host.
    pub fn is_listener(&self, addr: SocketAddr, local_ip: impl Fn(IpAddr) -> bool) -> bool {
        let addr = canonical(addr);
        self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip()
                    || (l.ip().is_unspecified() && (self.is_own_ip(addr.ip()) || local_ip(addr.ip()))))
        })
    }
}

/// `addr` with an IPv4 address in any of its IPv6 forms (mapped,
/// compatible, NAT64) written as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V6(a) => match super::policy::embedded_v4(u128::from(a)) {
            Some(v4) => IpAddr::V4(v4.into()),
            None => IpAddr::V6(a),
        },
        v4 => v4,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn relay_addresses_bound_and_advertised() {
        let mut own = OwnAddresses::new();
        own.add_relay(sa("10.0.0.5:50000"), "203.0.113.5".parse().unwrap());
        own.add_relay(sa("10.0.0.5:50001"), "203.0.113.5".parse().unwrap());
        own.add_relay(sa("[2001:db8::5]:50000"), "2001:db8::5".parse().unwrap());
        let want = RelayAddr { bound: sa("10.0.0.5:50001"), advertised: sa("203.0.113.5:50001") };
        assert_eq!(own.relay(sa("203.0.113.5:50001")), Some(want));
        assert_eq!(own.relay(sa("10.0.0.5:50001")), Some(want), "the bound address names it too");
        assert_eq!(own.relay(sa("203.0.113.5:50002")), None, "a port no shard bound");
        assert_eq!(own.relay(sa("203.0.113.5:22")), None);
        assert_eq!(own.relay(sa("[::ffff:203.0.113.5]:50001")), None, "embedded forms are not relay addresses");
        assert!(own.relay(sa("[2001:db8::5]:50000")).is_some());
        assert!(own.is_own_ip("203.0.113.5".parse().unwrap()));
        assert!(own.is_own_ip("10.0.0.5".parse().unwrap()));
        assert!(own.is_own_ip("::ffff:10.0.0.5".parse().unwrap()));
        assert!(own.is_own_ip("64:ff9b::a00:5".parse().unwrap()));
        assert!(!own.is_own_ip("203.0.113.6".parse().unwrap()));
    }

    #[test]
    fn listeners_exact_and_wildcard() {
        let mut own = OwnAddresses::new();
        own.add_listener(sa("192.0.2.1:3478"));
        own.add_listener(sa("0.0.0.0:5349"));
        own.add_relay(sa("192.0.2.1:50000"), "192.0.2.1".parse().unwrap());
        let none = |_: IpAddr| false;
        assert!(own.is_listener(sa("192.0.2.1:3478"), none));
        assert!(own.is_listener(sa("[::ffff:192.0.2.1]:3478"), none));
        assert!(own.is_listener(sa("[64:ff9b::c000:201]:3478"), none), "NAT64 form");
        assert!(own.is_listener(sa("[::c000:201]:3478"), none), "IPv4-compatible form");
        assert!(!own.is_listener(sa("192.0.2.1:3479"), none));
        assert!(own.is_listener(sa("192.0.2.1:5349"), none), "wildcard listener on an own IP");
        assert!(!own.is_listener(sa("198.51.100.1:5349"), none), "another host's port 5349");
        assert!(own.is_listener(sa("127.0.0.1:5349"), |ip: IpAddr| ip.is_loopback()));
    }
}
