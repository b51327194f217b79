//! What the shard tells a kernel fast path ([`ServerConfig::fast_path`]):
//! which channels it may relay ([`Event::FastPathInstall`], and
//! [`Event::FastPathRemove`] when that stops), and the counts it hands
//! back ([`Server::credit_fast_path`]). The shard stays sans IO: it never
//! sees those packets, only says which relays would have been its own.
//!
//! A channel is *eligible* when the in-process path would relay it and
//! the kernel can do so identically: the fast path is on, there is no
//! bandwidth cap (the kernel does not hold one), the client is UDP, the
//! channel is live, a live permission covers the peer's IP, the
//! allocation has a relay of the peer's family, and the peer is not a
//! relay address of the server bound elsewhere than advertised (behind a
//! NAT the in-process path sends to the bound address). A peer that is
//! one of the server's relay addresses is eligible: the kernel relays to
//! that allocation's client when it has a channel bound back (relay to
//! relay), and otherwise leaves the datagram to the shards.
//! [`Server::sync_fast`] installs and removes entries as eligibility
//! changes: after ChannelBind and CreatePermission, and on expiry (within
//! the timer's one-second tick).
//!
//! [`ServerConfig::fast_path`]: super::ServerConfig::fast_path

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Event, FastEntry, Server};
use crate::server::own::OwnAddresses;
use crate::server::stats::Direction;
use crate::server::table::{Allocation, Channel, Transport};

impl Server {
    /// Turns the fast path events on or off ([`ServerConfig::fast_path`]),
    /// for the I/O layer once it knows whether a fast path is attached.
    /// Call it before the first allocation.
    ///
    /// [`ServerConfig::fast_path`]: super::ServerConfig::fast_path
    pub fn set_fast_path(&mut self, on: bool) {
        self.config.fast_path = on;
    }

    /// Counts what the kernel fast path relayed (since the last call):
    /// `(packets, bytes)` from clients to peers and from peers to clients,
    /// all UDP. Bytes are payload bytes, as the in-process path counts
    /// them: to peers, the datagrams sent to the peer (ChannelData without
    /// its 4-byte header and padding); to clients, the datagrams the peer
    /// sent (before the ChannelData header is added).
    pub fn credit_fast_path(&mut self, to_peer: (u64, u64), to_client: (u64, u64)) {
        self.stats.relayed_n(Direction::ToPeer, Transport::Udp, to_peer.0, to_peer.1);
        self.stats.relayed_n(Direction::ToClient, Transport::Udp, to_client.0, to_client.1);
    }

    /// Brings allocation `id`'s kernel entries in line with what is
    /// eligible at `now`: an Install for each channel that became
    /// eligible, a Remove for each that stopped being. Nothing when the
    /// fast path is off.
    pub(super) fn sync_fast(&mut self, id: u32, now: Instant) {
        if !self.config.fast_path {
            return;
        }
        let capped = self.config.bandwidth_limit != 0;
        let own = self.policy.own();
        let Some(a) = self.table.allocs.get_mut(id as usize) else { return };
        for i in 0..a.channels.len() {
            let c = a.channels[i];
            let eligible = !capped && eligible(own, a, &c, now, Duration::ZERO);
            if eligible == c.fast {
                continue;
            }
            a.channels[i].fast = eligible;
            if let Some(entry) = entry(own, a, &c) {
                self.events.push_back(if eligible {
                    Event::FastPathInstall(entry)
                } else {
                    Event::FastPathRemove(entry)
                });
            }
        }
    }

    /// True when channel `c` of `a` is eligible at `now`, its deadlines
    /// taken `slack` later (the timer's tick, for the invariants).
    pub(super) fn fast_eligible(&self, a: &Allocation, c: &Channel, now: Instant, slack: Duration) -> bool {
        self.config.fast_path && self.config.bandwidth_limit == 0 && eligible(self.policy.own(), a, c, now, slack)
    }
}

/// The kernel entry of channel `c` of `a` (its relay is the one of the
/// peer's family; `None` without one, which no eligible channel lacks).
pub(super) fn entry(own: &OwnAddresses, a: &Allocation, c: &Channel) -> Option<FastEntry> {
    Some(FastEntry {
        client: a.client,
        channel: c.number,
        relay: a.relay_for(&c.peer)?,
        peer: c.peer,
        peer_is_relay: own.relay(c.peer).is_some(),
    })
}

/// Eligibility, but for the shard's settings (see the module docs).
fn eligible(own: &OwnAddresses, a: &Allocation, c: &Channel, now: Instant, slack: Duration) -> bool {
    let peer = c.peer;
    a.client.transport == Transport::Udp
        && c.counted
        && c.expires + slack > now
        && a.permissions.iter().any(|p| p.ip == peer.ip() && p.expires + slack > now)
        && a.relay_for(&peer).is_some()
        && sent_as_is(own, peer)
}

/// True when the kernel may take datagrams for `peer`: any address but
/// one of the server's relay addresses bound elsewhere than advertised
/// (behind a 1:1 NAT, where the in-process path sends to the bound
/// address and the kernel would not). A relay address bound where it is
/// advertised, this shard's or another's, may: the program hands the
/// datagram straight to that allocation's client when it has a channel
/// bound back to the sender's relay address (relay to relay in the
/// kernel), and otherwise passes it to the stack as a local destination,
/// where the shards hand it over as before.
fn sent_as_is(own: &OwnAddresses, peer: SocketAddr) -> bool {
    if !own.is_own_ip(peer.ip()) {
        return true;
    }
    match own.relay(peer) {
        // An operator-allowed port of an own IP: through the kernel.
        None => true,
        Some(r) => r.bound == peer && r.advertised == peer,
    }
}
