//! Moving new clients to other nodes: ALTERNATE-SERVER (RFC 8489 §10,
//! §14.15) and ALTERNATE-DOMAIN (§14.16).
//!
//! A node that is draining, or above a configured load, answers an Allocate
//! that would create an allocation with 300 (Try Alternate) naming one of
//! its [`Alternate`]s: of the client's address family, for the client's
//! transport, never the node itself. Clients are spread over the
//! alternates by a hash of their address, so that one client (and its
//! retransmissions) always gets the same one. Where an alternate of the
//! other address family suits too, it follows as a second ALTERNATE-SERVER
//! (RFC 8489 §10); clients read the first. Refresh, CreatePermission and
//! ChannelBind of existing allocations are never redirected, nor is an
//! Allocate with RESERVATION-TOKEN (the token names a port of this node).
//!
//! When it comes depends on the request:
//!
//! - An Allocate without MESSAGE-INTEGRITY (a new client's first request)
//!   is redirected at once, before the 401 challenge, unsealed and without
//!   REALM or NONCE. This is what browsers can follow: libwebrtc's TURN
//!   port (`TurnAllocateRequest::OnTryAlternate`) copies REALM and NONCE
//!   from a 300 and then sends the next Allocate to the alternate signed
//!   with what it has, and it gives up on that Allocate at a 401 once it
//!   holds a key, and at any 438. A 300 after its authenticated request
//!   would send it to node B with node A's nonce, which B did not issue (a
//!   nonce is keyed per node and bound to the client's address and port,
//!   and TCP and TLS come from a new port): B's 401 ends the allocation.
//!   Redirected before the challenge, the client has no key yet, and B's
//!   401 is the ordinary first challenge. RFC 8489 §10 allows an
//!   unauthenticated 300 ("there are use cases for ALTERNATE-SERVER where
//!   authentication of the response is not possible or practical"; §14.8's
//!   definition of 300 asks for an authenticated request), and a forged one
//!   gains an on-path attacker nothing a forged 401 would not. The 300 is
//!   smaller than the 401, so it reflects no more.
//! - An authenticated Allocate (a client that knew the realm and nonce) is
//!   redirected after authentication, the 300 sealed with its key, so a
//!   client that checks it (ours does) cannot be sent elsewhere by a forged
//!   answer. A full node (see `shard::request::allocate`) is one more
//!   reason, known before the challenge like the others (the total quota
//!   and the relay ports free, never the user's quota); only a node that
//!   fills between a client's challenge and its authenticated Allocate
//!   answers it sealed, which clients like ours follow and libwebrtc does
//!   not get past (node B's 401).

use std::net::{IpAddr, SocketAddr};

use super::own::OwnAddresses;
use super::table::{Client, Transport};

/// Another node new clients may be sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternate {
    /// Its address for clients over UDP and TCP (`None`: none of them are
    /// sent there).
    pub address: Option<SocketAddr>,
    /// Its address for clients over TLS (`None`: none of them are sent
    /// there; a TLS listener is on another port than UDP and TCP).
    pub tls: Option<SocketAddr>,
    /// ALTERNATE-DOMAIN for TLS clients: the name the alternate's
    /// certificate carries (without it, a client keeps checking the name of
    /// the server that redirected it).
    pub domain: Option<String>,
}

impl Alternate {
    /// An alternate for UDP and TCP clients.
    pub fn plain(address: SocketAddr) -> Alternate {
        Alternate { address: Some(address), tls: None, domain: None }
    }

    /// Where a client over `transport` is sent.
    pub fn address_for(&self, transport: Transport) -> Option<SocketAddr> {
        match transport {
            Transport::Udp | Transport::Tcp => self.address,
            Transport::Tls => self.tls,
        }
    }
}

/// Where [`choose`] sends a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice<'a> {
    /// The ALTERNATE-SERVER, of the client's address family: the one
    /// clients follow.
    pub address: SocketAddr,
    /// ALTERNATE-DOMAIN (TLS clients only).
    pub domain: Option<&'a str>,
    /// A second ALTERNATE-SERVER, of the other address family (RFC 8489
    /// §10), when one suits: for TLS clients, only one with the same
    /// domain, so that ALTERNATE-DOMAIN holds for both.
    pub other_family: Option<SocketAddr>,
}

/// The alternate for `client`: one of `alternates` with an address for its
/// transport, of its family (an IPv4 client over an IPv4-mapped address
/// counts as IPv4), that is neither the address the client reached nor one
/// of the server's listeners; chosen by a hash of the client's address.
/// The domain goes with it for TLS clients only. With it, where there is
/// one, an alternate of the other family chosen the same way.
pub fn choose<'a>(alternates: &'a [Alternate], client: &Client, own: &OwnAddresses) -> Option<Choice<'a>> {
    let v6 = is_v6(client.remote.ip());
    let hash = spread(client.remote);
    let usable = |family_v6: bool| {
        move |a: &&'a Alternate| {
            a.address_for(client.transport).is_some_and(|addr| {
                is_v6(addr.ip()) == family_v6 && !same(addr, client.local) && !own.is_listener(addr, |_| false)
            })
        }
    };
    let first = pick(alternates.iter().filter(usable(v6)), hash)?;
    let tls = client.transport == Transport::Tls;
    let domain = if tls { first.domain.as_deref() } else { None };
    let other = alternates.iter().filter(usable(!v6)).filter(|a| !tls || a.domain == first.domain);
    Some(Choice {
        address: first.address_for(client.transport)?,
        domain,
        other_family: pick(other, hash).and_then(|a| a.address_for(client.transport)),
    })
}

/// One of `candidates`, by `hash`.
fn pick<'a>(candidates: impl Iterator<Item = &'a Alternate> + Clone, hash: u64) -> Option<&'a Alternate> {
    let n = candidates.clone().count();
    if n == 0 {
        return None;
    }
    candidates.into_iter().nth((hash % n as u64) as usize)
}

/// IPv6, not counting IPv4-mapped addresses.
fn is_v6(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(a) => a.to_ipv4_mapped().is_none(),
    }
}

/// The same transport address, IPv4-mapped forms taken as IPv4.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// A well-mixed hash of a client address (SplitMix64's finaliser over the
/// address and port): fixed, so that one client always gets one answer.
fn spread(addr: SocketAddr) -> u64 {
    let ip = match addr.ip().to_canonical() {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64).rotate_left(29)
        }
    };
    let mut z = ip ^ (u64::from(addr.port()) << 40) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn client(t: Transport, remote: &str, local: &str) -> Client {
        Client { transport: t, remote: sa(remote), local: sa(local), conn: 0 }
    }

    /// The first ALTERNATE-SERVER and ALTERNATE-DOMAIN of a choice.
    fn first<'a>(alts: &'a [Alternate], c: &Client, own: &OwnAddresses) -> Option<(SocketAddr, Option<&'a str>)> {
        choose(alts, c, own).map(|ch| (ch.address, ch.domain))
    }

    #[test]
    fn family_transport_and_self_are_respected() {
        let alts = vec![
            Alternate::plain(sa("192.0.2.1:3478")),
            Alternate::plain(sa("[2001:db8::1]:3478")),
            Alternate { address: None, tls: Some(sa("192.0.2.2:5349")), domain: Some("b.example".into()) },
            // The node itself: never offered.
            Alternate::plain(sa("192.0.2.9:3478")),
        ];
        let own = OwnAddresses::new();
        for port in 1000..1100 {
            let c = client(Transport::Udp, &format!("198.51.100.7:{port}"), "192.0.2.9:3478");
            assert_eq!(first(&alts, &c, &own), Some((sa("192.0.2.1:3478"), None)));
            let c = client(Transport::Tcp, &format!("[2001:db8::77]:{port}"), "[2001:db8::9]:3478");
            assert_eq!(first(&alts, &c, &own), Some((sa("[2001:db8::1]:3478"), None)));
            // An IPv4 client on a dual-stack socket is an IPv4 client.
            let c = client(Transport::Udp, &format!("[::ffff:198.51.100.7]:{port}"), "[::ffff:192.0.2.9]:3478");
            assert_eq!(first(&alts, &c, &own), Some((sa("192.0.2.1:3478"), None)));
            let c = client(Transport::Tls, &format!("198.51.100.7:{port}"), "192.0.2.9:5349");
            assert_eq!(first(&alts, &c, &own), Some((sa("192.0.2.2:5349"), Some("b.example"))));
            // No IPv6 TLS alternate.
            let c = client(Transport::Tls, &format!("[2001:db8::77]:{port}"), "[2001:db8::9]:5349");
            assert_eq!(first(&alts, &c, &own), None);
        }
        // A listener of the server is not an alternate either.
        let mut own = OwnAddresses::new();
        own.add_listener(sa("192.0.2.1:3478"));
        let c = client(Transport::Udp, "198.51.100.7:1", "192.0.2.9:3478");
        assert_eq!(first(&alts, &c, &own), None);
    }

    #[test]
    fn clients_are_spread_and_each_keeps_its_alternate() {
        let alts: Vec<Alternate> = (1..=4).map(|i| Alternate::plain(sa(&format!("192.0.2.{i}:3478")))).collect();
        let own = OwnAddresses::new();
        let mut seen = [0u32; 4];
        for i in 0..400u32 {
            let remote = format!("198.51.{}.{}:{}", i % 7, i % 251, 40000 + i);
            let c = client(Transport::Udp, &remote, "192.0.2.9:3478");
            let to = choose(&alts, &c, &own).unwrap().address;
            assert_eq!(choose(&alts, &c, &own).unwrap().address, to, "the same client, the same alternate");
            seen[usize::from(to.ip().to_string().rsplit('.').next().unwrap().parse::<u8>().unwrap()) - 1] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
    }

    #[test]
    fn an_alternate_of_the_other_family_comes_second() {
        let alts = vec![
            Alternate::plain(sa("192.0.2.1:3478")),
            Alternate {
                address: Some(sa("[2001:db8::1]:3478")),
                tls: Some(sa("[2001:db8::1]:5349")),
                domain: Some("b.example".into()),
            },
            Alternate { address: None, tls: Some(sa("192.0.2.1:5349")), domain: Some("b.example".into()) },
            Alternate { address: None, tls: Some(sa("[2001:db8::3]:5349")), domain: Some("c.example".into()) },
        ];
        let own = OwnAddresses::new();
        let c = client(Transport::Udp, "198.51.100.7:1000", "192.0.2.9:3478");
        let ch = choose(&alts, &c, &own).unwrap();
        assert_eq!((ch.address, ch.other_family), (sa("192.0.2.1:3478"), Some(sa("[2001:db8::1]:3478"))));
        let c = client(Transport::Udp, "[2001:db8::77]:1000", "[2001:db8::9]:3478");
        let ch = choose(&alts, &c, &own).unwrap();
        assert_eq!((ch.address, ch.other_family), (sa("[2001:db8::1]:3478"), Some(sa("192.0.2.1:3478"))));
        // TLS: only an alternate with the same domain comes second, for
        // every client (c.example never goes with b.example).
        for port in 1000..1100 {
            let c = client(Transport::Tls, &format!("198.51.100.7:{port}"), "192.0.2.9:5349");
            let ch = choose(&alts, &c, &own).unwrap();
            assert_eq!(
                (ch.address, ch.domain, ch.other_family),
                (sa("192.0.2.1:5349"), Some("b.example"), Some(sa("[2001:db8::1]:5349")))
            );
        }
        // No other family that suits: none second. A listener of the node
        // is never one either.
        let v4_only = vec![Alternate::plain(sa("192.0.2.1:3478"))];
        let c = client(Transport::Udp, "198.51.100.7:1000", "192.0.2.9:3478");
        assert_eq!(choose(&v4_only, &c, &own).unwrap().other_family, None);
        let mut own = OwnAddresses::new();
        own.add_listener(sa("[2001:db8::1]:3478"));
        assert_eq!(choose(&alts, &c, &own).unwrap().other_family, None);
        // Without one of the client's family, no redirect at all.
        let v6_only = vec![Alternate::plain(sa("[2001:db8::1]:3478"))];
        assert_eq!(choose(&v6_only, &c, &OwnAddresses::new()), None);
    }
}
