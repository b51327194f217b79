//! The allocation table of one shard: a slab of allocations with the indexes
//! the packet path needs.
//!
//! - client 5-tuple → allocation: a hash map (foldhash, seeded per process);
//! - relay id → allocation: [`RelayPool::owner`](super::relays::RelayPool::owner),
//!   an array index;
//! - per allocation, permissions by peer IP and channels by number and by
//!   peer address: short vectors scanned linearly, the first two entries of
//!   each stored inline in the allocation (no pointer to chase on the fast
//!   path). A WebRTC allocation has a handful of each; a scan of a few
//!   cache-resident entries beats hashing, and each allocation stays small.
//!
//! The slab and the map are sized once for the shard's relay address count
//! (there can be no more allocations than relay addresses), so they never
//! grow, rehash or carry doubling slack while the server runs.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use slab::Slab;
use smallvec::SmallVec;

use super::quota::{QuotaToken, TokenBucket};
use super::relays::RelayId;
use crate::wire::integrity::Key;
use crate::wire::{AddressFamily, TransactionId};

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 8656 §3.1; frames are 4-byte aligned ChannelData).
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// True for stream transports, where ChannelData is padded to 4 bytes.
    pub const fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// A client as the I/O layer knows it: the 5-tuple (transport, client's
/// address, the server address it reached) and, for stream transports, the
/// I/O layer's handle of the connection, echoed back in actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The transport.
    pub transport: Transport,
    /// The client's address (as seen by the server: its NAT's address).
    pub remote: SocketAddr,
    /// The server's address the client sent to.
    pub local: SocketAddr,
    /// The I/O layer's connection handle (0 for UDP); not part of the key.
    pub conn: u32,
}

impl Client {
    /// A UDP client.
    pub fn udp(remote: SocketAddr, local: SocketAddr) -> Client {
        Client { transport: Transport::Udp, remote, local, conn: 0 }
    }

    /// The 5-tuple that names the client's allocation (the connection
    /// handle left out).
    pub fn key(&self) -> FiveTuple {
        FiveTuple { transport: self.transport, remote: self.remote, local: self.local }
    }
}

/// A client's 5-tuple: what an allocation is keyed by (RFC 8656 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The transport.
    pub transport: Transport,
    /// The client's address.
    pub remote: SocketAddr,
    /// The server's address the client reached.
    pub local: SocketAddr,
}

/// A permission: the peer IP and when it expires.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

/// A channel binding. After `expires` the entry stays until
/// `expires + quarantine` so that neither the number nor the peer is bound
/// to something else in that time (RFC 8656 §12).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
    /// Still counted as active in the stats.
    pub counted: bool,
    /// Installed on the kernel fast path (an [`Event::FastPathInstall`]
    /// without its [`Event::FastPathRemove`] yet).
    ///
    /// [`Event::FastPathInstall`]: super::Event::FastPathInstall
    /// [`Event::FastPathRemove`]: super::Event::FastPathRemove
    pub fast: bool,
}

/// One allocation.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub client: Client,
    /// Relayed addresses: IPv4 and IPv6 (dual-stack with
    /// ADDITIONAL-ADDRESS-FAMILY).
    pub relays: [Option<RelayId>; 2],
    pub expires: Instant,
    pub username: Box<str>,
    pub key: Key,
    pub permissions: SmallVec<[Permission; 2]>,
    pub channels: SmallVec<[Channel; 2]>,
    pub quota: Option<QuotaToken>,
    pub bucket: TokenBucket,
    /// The Allocate request's transaction id, to answer a retransmission.
    pub allocate_tid: TransactionId,
    /// RESERVATION-TOKEN handed out with this allocation (EVEN-PORT R bit).
    pub reservation: Option<[u8; 8]>,
    /// ADDITIONAL-ADDRESS-FAMILY was asked for and could not be served.
    pub additional_family_failed: bool,
    /// The timer generation of the live wheel entry.
    pub generation: u32,
    /// When the live wheel entry fires.
    pub scheduled: Instant,
    /// When it was allocated.
    pub created: Instant,
    /// What it relayed, both ways (the admin API's view).
    pub traffic: super::shard::Traffic,
}

const fn fam(f: AddressFamily) -> usize {
    match f {
        AddressFamily::V4 => 0,
        AddressFamily::V6 => 1,
    }
}

impl Allocation {
    /// The relay serving peers of this address family.
    #[inline]
    pub fn relay_for(&self, peer: &SocketAddr) -> Option<RelayId> {
        self.relays[fam(AddressFamily::of(peer))]
    }

    /// True when a live permission covers `ip`.
    #[inline]
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// The live channel bound to `number`.
    #[inline]
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels.iter().find(|c| c.number == number && c.expires > now).map(|c| c.peer)
    }

    /// The live channel bound to `peer`.
    #[inline]
    pub fn channel_of(&self, peer: &SocketAddr, now: Instant) -> Option<u16> {
        self.channels.iter().find(|c| c.peer == *peer && c.expires > now).map(|c| c.number)
    }

    /// The earliest instant something of this allocation needs attention.
    pub fn next_deadline(&self, quarantine: std::time::Duration) -> Instant {
        let mut d = self.expires;
        for p in &self.permissions {
            d = d.min(p.expires);
        }
        for c in &self.channels {
            d = d.min(if c.counted { c.expires } else { c.expires + quarantine });
        }
        d
    }
}

/// The allocations of one shard.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub allocs: Slab<Allocation>,
    by_client: HashMap<FiveTuple, u32, foldhash::fast::RandomState>,
    /// The last client found and its allocation: the datagrams of a
    /// coalesced (GRO) receive all come from one client, and a comparison
    /// is cheaper than hashing the 5-tuple again. Cleared when that
    /// allocation goes.
    last: Cell<Option<(FiveTuple, u32)>>,
}

impl Table {
    /// The allocation of `client`: its 5-tuple's, and made on its
    /// connection (`Client::conn`, 0 for UDP). On a stream the connection
    /// is what the client is: two connections can name one 5-tuple (PROXY
    /// headers naming one client, relay-io refuses the second), and
    /// neither may then use, keep or end the other's allocation.
    #[inline]
    pub fn lookup(&self, client: &Client) -> Option<u32> {
        let id = self.lookup_key(client)?;
        self.allocs.get(id as usize).is_some_and(|a| a.client.conn == client.conn).then_some(id)
    }

    /// The allocation holding `client`'s 5-tuple, whichever connection
    /// made it (a new allocation must not take a 5-tuple that is held).
    #[inline]
    pub fn lookup_key(&self, client: &Client) -> Option<u32> {
        let key = client.key();
        if let Some((k, id)) = self.last.get()
            && k == key
        {
            return Some(id);
        }
        let id = self.by_client.get(&key).copied()?;
        self.last.set(Some((key, id)));
        Some(id)
    }

    pub fn insert(&mut self, alloc: Allocation) -> u32 {
        let key = alloc.client.key();
        let id = self.allocs.insert(alloc) as u32;
        self.by_client.insert(key, id);
        id
    }

    /// The key the next `insert` will use (to reserve relays before insert).
    pub fn vacant_key(&self) -> u32 {
        self.allocs.vacant_key() as u32
    }

    pub fn remove(&mut self, id: u32) -> Option<Allocation> {
        let a = self.allocs.try_remove(id as usize)?;
        self.by_client.remove(&a.client.key());
        if self.last.get().is_some_and(|(_, last)| last == id) {
            self.last.set(None);
        }
        Some(a)
    }

    pub fn get(&self, id: u32) -> Option<&Allocation> {
        self.allocs.get(id as usize)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Allocation> {
        self.allocs.get_mut(id as usize)
    }

    pub fn len(&self) -> usize {
        self.allocs.len()
    }

    /// Entries of the 5-tuple index (equal to `len()` when consistent).
    pub fn index_len(&self) -> usize {
        self.by_client.len()
    }

    /// Makes room for `total` allocations without growing later.
    pub fn reserve_total(&mut self, total: usize) {
        let more = total.saturating_sub(self.allocs.len());
        self.allocs.reserve_exact(more);
        self.by_client.reserve(total.saturating_sub(self.by_client.len()));
    }
}
