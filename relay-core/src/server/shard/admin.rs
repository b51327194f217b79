//! What an operator sees of a shard's allocations and how one is ended by
//! hand (turn-relay's admin API): a read-only snapshot of the allocations
//! ([`Server::allocations`]), each named by its relay address — unique on a
//! node, across shards — and [`Server::end`], which ends allocations as a
//! Refresh with LIFETIME 0 does: kernel fast path entries removed, relay
//! addresses to quarantine, the quota token back, counted as deleted.
//!
//! The per-allocation traffic counters ([`Traffic`]) are plain adds on the
//! relay path, beside the shard's own counters; what the kernel fast path
//! relayed is credited to its allocation by [`Server::credit_fast_entry`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{FastEntry, Server};
use crate::server::stats::Direction;
use crate::server::table::Transport;

/// Packets and payload bytes relayed one way for one allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Datagrams (or stream frames) relayed.
    pub packets: u64,
    /// Payload bytes relayed, as the shard's `relayed_bytes` counts them:
    /// without ChannelData or Data indication headers.
    pub bytes: u64,
}

/// What an allocation relayed, both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// From the client to its peers.
    pub to_peer: Flow,
    /// From peers to the client.
    pub to_client: Flow,
}

impl Traffic {
    /// Counts `packets` datagrams of `bytes` payload bytes relayed in `d`.
    #[inline]
    pub(crate) fn add(&mut self, d: Direction, packets: u64, bytes: u64) {
        let f = match d {
            Direction::ToPeer => &mut self.to_peer,
            Direction::ToClient => &mut self.to_client,
        };
        f.packets += packets;
        f.bytes += bytes;
    }
}

/// One allocation as [`Server::allocations`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    /// Its relay address (IPv4 when it has one, else IPv6): the name to
    /// end it by ([`Ending::Allocation`]).
    pub id: SocketAddr,
    /// Every relay address it holds (two with ADDITIONAL-ADDRESS-FAMILY).
    pub relays: Vec<SocketAddr>,
    /// The user it authenticated as (for TURN REST credentials, the
    /// `expiry:name` username).
    pub username: String,
    /// The client's transport.
    pub transport: Transport,
    /// The client's address, as the server sees it.
    pub client: SocketAddr,
    /// The server address the client reached.
    pub server: SocketAddr,
    /// Time since the Allocate.
    pub age: Duration,
    /// Time until it expires unless refreshed.
    pub lifetime_left: Duration,
    /// Live permissions.
    pub permissions: usize,
    /// Live channel bindings.
    pub channels: usize,
    /// What it relayed, both ways.
    pub traffic: Traffic,
}

/// Which allocations [`Server::end`] ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The allocation holding this relay address (either of a dual-stack
    /// allocation's two).
    Allocation(SocketAddr),
    /// Every allocation of this user.
    User(String),
}

impl Server {
    /// The allocations of this shard (of `user` only, when given), in no
    /// particular order, as they stand at `now`. Walks the table: for an
    /// operator's request, not for the packet path.
    pub fn allocations(&self, now: Instant, user: Option<&str>) -> Vec<AllocationInfo> {
        let mut out = Vec::new();
        for (_, a) in self.table.allocs.iter() {
            if user.is_some_and(|u| *a.username != *u) {
                continue;
            }
            let relays: Vec<SocketAddr> = a.relays.iter().flatten().filter_map(|&r| self.pool.addr(r)).collect();
            let Some(&id) = relays.first() else { continue };
            out.push(AllocationInfo {
                id,
                relays,
                username: a.username.to_string(),
                transport: a.client.transport,
                client: a.client.remote,
                server: a.client.local,
                age: now.saturating_duration_since(a.created),
                lifetime_left: a.expires.saturating_duration_since(now),
                permissions: a.permissions.iter().filter(|p| p.expires > now).count(),
                channels: a.channels.iter().filter(|c| c.counted && c.expires > now).count(),
                traffic: a.traffic,
            });
        }
        out
    }

    /// Ends the allocations `which` names, as a Refresh with LIFETIME 0
    /// would (each counted as deleted; the events that tell the I/O layer
    /// to take kernel entries out and release the relay sockets are
    /// queued: poll them). Returns how many ended. The client learns of it
    /// from its next request (437) — or, on a stream, not at all: its
    /// connection stays until it closes or idles out.
    pub fn end(&mut self, now: Instant, which: &Ending) -> usize {
        let ids: Vec<u32> = match which {
            Ending::Allocation(addr) => {
                let owner = self.local.get(addr).and_then(|&r| self.pool.owner(r));
                owner.into_iter().collect()
            }
            Ending::User(user) => {
                self.table.allocs.iter().filter(|(_, a)| *a.username == **user).map(|(id, _)| id as u32).collect()
            }
        };
        for &id in &ids {
            self.stats.allocations_deleted += 1;
            self.delete(id, now);
        }
        ids.len()
    }

    /// Counts what the kernel fast path relayed for one entry since it was
    /// last asked: in the shard's counters, as
    /// [`Server::credit_fast_path`] does, and in the traffic of the
    /// allocation that holds the entry's relay for its client (none once
    /// it ended: the shard's counters still take it).
    pub fn credit_fast_entry(&mut self, entry: &FastEntry, to_peer: (u64, u64), to_client: (u64, u64)) {
        self.credit_fast_path(to_peer, to_client);
        let Some(id) = self.pool.owner(entry.relay) else { return };
        let Some(a) = self.table.get_mut(id).filter(|a| a.client == entry.client) else { return };
        a.traffic.add(Direction::ToPeer, to_peer.0, to_peer.1);
        a.traffic.add(Direction::ToClient, to_client.0, to_client.1);
    }
}
