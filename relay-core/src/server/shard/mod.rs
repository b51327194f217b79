//! [`Server`]: one shard's TURN/STUN server, sans IO.
//!
//! The I/O layer hands in packets with the time, and carries out the
//! [`ClientAction`] or [`PeerAction`] it gets back. Nothing here reads a
//! clock, touches a socket or allocates on the relay path: ChannelData and
//! Send-indication payloads are forwarded as byte ranges of the caller's
//! receive buffer, and peer data is framed for the client by writing a
//! header into the headroom in front of it.

mod action;
mod admin;
mod fast;
mod reflection;
mod relay;
mod request;
mod response;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use action::{ClientAction, Event, FastEntry, PEER_HEADROOM, PEER_TAILROOM, PeerAction};
pub use admin::{AllocationInfo, Ending, Flow, Traffic};
pub use relay::{PeerRoute, PeerSegment};

use super::auth::{Credentials, NonceIssuer};
use super::own::OwnAddresses;
use super::policy::PeerPolicy;
use super::quota::{QuotaBook, Unlimited};
use super::relays::{RelayId, RelayPool};
use super::rfc5780::{Rfc5780, Rfc5780Error};
use super::stats::{Drop, Stats};
use super::table::{Client, Table, Transport};
use super::timer::TimerWheel;
use crate::rng::SplitMix64;
use crate::wire::{AddressFamily, Message, PacketKind, classify};
use reflection::ReflectionLimiter;

/// Settings of a shard.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// SOFTWARE attribute for responses; `None` sends none.
    pub software: Option<String>,
    /// Allocation lifetime when the client asks for less (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// The longest allocation lifetime granted.
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// Time an expired channel's number and peer stay unusable for others
    /// (RFC 8656 §12: 5 minutes).
    pub channel_quarantine: Duration,
    /// Most permissions per allocation.
    pub max_permissions: usize,
    /// Most channels per allocation.
    pub max_channels: usize,
    /// How long a released relay address rests before reuse, so that late
    /// peer packets for the old allocation never reach a new one.
    pub relay_quarantine: Duration,
    /// Bandwidth cap per allocation, bytes per second, both directions
    /// together; 0 = unlimited. With a cap, no channel goes on the kernel
    /// fast path ([`ServerConfig::fast_path`]): only the in-process path
    /// can hold it.
    pub bandwidth_limit: u64,
    /// Burst allowance of the bandwidth cap, bytes.
    pub bandwidth_burst: u64,
    /// Answers per second to unauthenticated UDP requests (Binding, 401
    /// challenges, errors before authentication) per source address; 0 =
    /// unlimited. Bounds what a spoofed flood can reflect toward a victim.
    pub unauthenticated_rate: u32,
    /// Burst allowance of `unauthenticated_rate`.
    pub unauthenticated_burst: u32,
    /// Offer SHA-256 long-term keys with PASSWORD-ALGORITHMS (RFC 8489).
    pub sha256: bool,
    /// The I/O layer has a kernel fast path attached (a program relaying
    /// UDP ChannelData in the kernel): the shard says which channels it
    /// may relay with [`Event::FastPathInstall`] and
    /// [`Event::FastPathRemove`], and takes its counts back with
    /// [`Server::credit_fast_path`]. Only channels of UDP clients without
    /// a bandwidth cap, to peers other than a relay address of the server
    /// bound elsewhere than advertised, go on it. Relays and own addresses are to be set before the first
    /// allocation. When false, no fast-path event is ever emitted and
    /// nothing costs anything.
    pub fast_path: bool,
    /// Other nodes new clients are sent to with 300 (Try Alternate) while
    /// this one is draining ([`Server::set_accepting`]) or above the load
    /// below (RFC 8489 §10; [`super::alternate`]). Empty: a draining server
    /// answers Allocate 508, and load never redirects.
    pub alternates: Vec<super::alternate::Alternate>,
    /// Redirect new allocations once this many are held in total (the
    /// quota book's count across shards, [`QuotaBook::total_allocations`]);
    /// 0 redirects every one. `None`: no such threshold.
    pub redirect_above_allocations: Option<u64>,
    /// Redirect new allocations that would take this shard's relay ports
    /// of the requested family in use above this fraction (0.0–1.0) of its
    /// relay ports of that family; 0.0 redirects every one. `None`: no such
    /// threshold.
    pub redirect_above_relay_ports: Option<f64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            software: None,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            channel_quarantine: Duration::from_secs(300),
            max_permissions: 64,
            max_channels: 64,
            relay_quarantine: Duration::from_secs(60),
            bandwidth_limit: 0,
            bandwidth_burst: 0,
            unauthenticated_rate: 1000,
            unauthenticated_burst: 2000,
            sha256: true,
            fast_path: false,
            alternates: Vec::new(),
            redirect_above_allocations: None,
            redirect_above_relay_ports: None,
        }
    }
}

/// The shared pieces a shard is built from.
#[derive(Clone, Debug)]
pub struct ServerParts {
    /// Behaviour settings.
    pub config: ServerConfig,
    /// Users and REST secrets; carries the realm.
    pub credentials: Credentials,
    /// Nonce minting and checking.
    pub nonces: NonceIssuer,
    /// Peer address policy.
    pub policy: PeerPolicy,
    /// Allocation quotas shared by every shard: the book that counts them
    /// (relay-core takes no lock; turn-relay's book is in relay-bin).
    pub quotas: Arc<dyn QuotaBook>,
}

impl ServerParts {
    /// The nonce lifetime of [`ServerParts::new`], seconds (turn-relay's
    /// `auth.nonce_lifetime` default).
    pub const NONCE_LIFETIME_SECS: u64 = 600;

    /// Parts for a server that authenticates with `credentials` (which
    /// carry the realm), every other piece at its default:
    ///
    /// - `config`: [`ServerConfig::default`];
    /// - `nonces`: stale [`NONCE_LIFETIME_SECS`](Self::NONCE_LIFETIME_SECS)
    ///   after issue, keyed with a secret drawn once per process (below);
    /// - `policy`: [`PeerPolicy::new`], the default deny list only;
    /// - `quotas`: none ([`Unlimited`]).
    ///
    /// The `with_` methods replace any of them; name only what differs:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use relay_core::server::auth::Credentials;
    /// use relay_core::server::quota::{QuotaBook, Unlimited};
    /// use relay_core::server::{ServerConfig, ServerParts};
    ///
    /// let mut credentials = Credentials::new("example.org");
    /// credentials.add_user("alice", "secret").unwrap();
    /// // One book shared by the shards (turn-relay's counts per user).
    /// let quotas: Arc<dyn QuotaBook> = Arc::new(Unlimited);
    /// let parts = ServerParts::new(credentials)
    ///     .with_config(ServerConfig { software: Some("relay".into()), ..ServerConfig::default() })
    ///     .with_quotas(quotas.clone());
    /// assert_eq!(parts.nonces.lifetime_secs(), ServerParts::NONCE_LIFETIME_SECS);
    /// ```
    ///
    /// The default nonce secret is derived from the random keys std seeds
    /// its `HashMap`s with (128 bits from the operating system), once per
    /// process, so that the shards of one process accept each other's
    /// nonces; it is never written anywhere. That is enough for tests,
    /// tools and a single relay process. Where other processes must accept
    /// the nonces (a cluster, a restart that hands over its listeners), or
    /// a test wants nonces it can replay, pass the secret with
    /// [`with_nonces`](Self::with_nonces).
    pub fn new(credentials: Credentials) -> Self {
        ServerParts {
            config: ServerConfig::default(),
            credentials,
            nonces: NonceIssuer::new(Self::process_nonce_secret(), Self::NONCE_LIFETIME_SECS),
            policy: PeerPolicy::new(),
            quotas: Arc::new(Unlimited),
        }
    }

    /// These parts with `config` instead.
    #[must_use]
    pub fn with_config(self, config: ServerConfig) -> Self {
        ServerParts { config, ..self }
    }

    /// These parts with `nonces` instead (its own secret and lifetime).
    #[must_use]
    pub fn with_nonces(self, nonces: NonceIssuer) -> Self {
        ServerParts { nonces, ..self }
    }

    /// These parts with `policy` instead.
    #[must_use]
    pub fn with_policy(self, policy: PeerPolicy) -> Self {
        ServerParts { policy, ..self }
    }

    /// These parts with `quotas` instead: pass one `Arc` to every shard's
    /// parts for limits that hold across the shards.
    #[must_use]
    pub fn with_quotas(self, quotas: Arc<dyn QuotaBook>) -> Self {
        ServerParts { quotas, ..self }
    }

    /// The default nonce secret of [`ServerParts::new`]: 32 bytes of SipHash
    /// output under std's randomly seeded hash keys, drawn once per process.
    fn process_nonce_secret() -> [u8; 32] {
        use std::hash::{BuildHasher, Hasher};
        static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        *SECRET.get_or_init(|| {
            let keys = std::collections::hash_map::RandomState::new();
            let mut secret = [0u8; 32];
            for (i, chunk) in secret.chunks_exact_mut(8).enumerate() {
                let mut h = keys.build_hasher();
                h.write(b"relay-core nonce secret");
                h.write_usize(i);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
            secret
        })
    }
}

/// One shard's TURN/STUN server.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    credentials: Credentials,
    nonces: NonceIssuer,
    policy: PeerPolicy,
    quotas: Arc<dyn QuotaBook>,
    pool: RelayPool,
    table: Table,
    wheel: TimerWheel,
    generation: u32,
    events: VecDeque<Event>,
    rng: SplitMix64,
    stats: Stats,
    /// Scratch list of due timer entries, kept to avoid reallocating.
    due: Vec<super::timer::TimerEntry>,
    epoch: Instant,
    epoch_unix: u64,
    accepting: bool,
    /// Budget of unauthenticated answers per source.
    reflection: ReflectionLimiter,
    /// The UDP source and time of the request being answered (for the
    /// reflection budget); `None` for streams, which cannot be spoofed.
    answering: Option<(IpAddr, u32)>,
    /// Allocations the table has room for.
    reserved_for: usize,
    /// The alternate address set for RFC 5780, when there is one.
    rfc5780: Option<Rfc5780>,
    /// This shard's relays by address (as advertised), for handing a
    /// datagram from one allocation to another in-process.
    local: HashMap<SocketAddr, RelayId, foldhash::fast::RandomState>,
}

impl Server {
    /// A shard. `now` and `unix_now` (seconds since 1970) pin the wall clock
    /// that nonces and REST credentials use; `seed` seeds transaction ids
    /// and reservation tokens (take it from the OS).
    pub fn new(parts: ServerParts, now: Instant, unix_now: u64, seed: u64) -> Server {
        let wheel_slots = parts.config.max_lifetime.as_secs().clamp(64, 4096) as usize;
        let reflection = ReflectionLimiter::new(
            parts.config.unauthenticated_rate,
            parts.config.unauthenticated_burst,
            seed.rotate_left(17) ^ 0x5DEE_CE66_D1CE_4E5B,
        );
        let quarantine = parts.config.relay_quarantine;
        Server {
            config: parts.config,
            credentials: parts.credentials,
            nonces: parts.nonces,
            policy: parts.policy,
            quotas: parts.quotas,
            pool: RelayPool::new(quarantine),
            table: Table::default(),
            wheel: TimerWheel::new(now, wheel_slots),
            generation: 0,
            events: VecDeque::new(),
            rng: SplitMix64(seed),
            stats: Stats::default(),
            due: Vec::new(),
            epoch: now,
            epoch_unix: unix_now,
            accepting: true,
            reflection,
            answering: None,
            reserved_for: 0,
            rfc5780: None,
            local: HashMap::default(),
        }
    }

    /// Registers a bound relay socket by the address clients are told; its
    /// id names it in actions. The address is also recorded as one of the
    /// server's own (bound where it is advertised; the I/O layer replaces
    /// the set with [`Server::set_own_addresses`] when they differ).
    pub fn add_relay(&mut self, addr: SocketAddr) -> RelayId {
        self.policy.own_mut().add_relay(addr, addr.ip());
        let id = self.pool.add(addr);
        self.local.insert(addr, id);
        id
    }

    /// Gives the shard the process-wide set of the server's own addresses:
    /// every shard's relay addresses (bound and advertised) and the
    /// listeners. Call it after [`Server::add_relay`]; it replaces what
    /// that recorded.
    pub fn set_own_addresses(&mut self, own: Arc<OwnAddresses>) {
        self.policy.set_own(own);
    }

    /// Gives the server its RFC 5780 alternate address set: `primary`
    /// (`A1:P1`) and `other` (`A2:P2`). The I/O layer must listen on all four
    /// combinations ([`Rfc5780::listen_addresses`]) over UDP. From then on,
    /// Binding responses to UDP requests received on any of the four carry
    /// OTHER-ADDRESS and RESPONSE-ORIGIN, and CHANGE-REQUEST is honoured by
    /// [`ClientAction::ReplyFrom`]. Without it, CHANGE-REQUEST is answered
    /// 420 (RFC 5780 §6.1).
    pub fn set_rfc5780(&mut self, primary: SocketAddr, other: SocketAddr) -> Result<(), Rfc5780Error> {
        self.rfc5780 = Some(Rfc5780::new(primary, other)?);
        Ok(())
    }

    /// The RFC 5780 alternate address set, when configured.
    pub fn rfc5780(&self) -> Option<&Rfc5780> {
        self.rfc5780.as_ref()
    }

    /// The address of a relay.
    pub fn relay_addr(&self, relay: RelayId) -> Option<SocketAddr> {
        self.pool.addr(relay)
    }

    /// Relay addresses free for new allocations, and resting in quarantine.
    pub fn relays_free(&self) -> (usize, usize) {
        let total = self.pool.capacity(AddressFamily::V4) + self.pool.capacity(AddressFamily::V6);
        let resting = self.pool.quarantined();
        (total - self.pool.in_use() - resting, resting)
    }

    /// Replaces the credentials (a reload): new requests use them at once;
    /// existing allocations keep the key they authenticated with.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    /// Replaces the nonce issuer (a reload that changed the shared nonce
    /// secret): nonces issued before are answered 438 Stale Nonce from now
    /// on, and clients retry with the fresh one it carries.
    pub fn set_nonces(&mut self, nonces: NonceIssuer) {
        self.nonces = nonces;
    }

    /// Replaces the operator's peer allow and deny lists (a user database's
    /// refresh), keeping the default list and the own-address rules
    /// ([`PeerPolicy::set_lists`]): permissions and channels created or
    /// refreshed from now on are checked against them; existing ones run
    /// until they expire or are refreshed.
    pub fn set_peer_lists(&mut self, allow: &[ipnet::IpNet], deny: &[ipnet::IpNet]) {
        self.policy.set_lists(allow, deny);
    }

    /// Stops (or resumes) taking new allocations, for a graceful stop:
    /// Allocate is answered 300 to an alternate ([`ServerConfig::alternates`]),
    /// or 508 without one, while existing allocations run on.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts a datagram the I/O layer dropped before handing it over (one
    /// larger than the configured maximum), so that every drop shows in
    /// the same counters.
    pub fn count_drop(&mut self, reason: super::stats::Drop) {
        self.stats.drop(reason);
    }

    /// True when this client (on a stream: this connection) has an allocation.
    pub fn has_allocation(&self, client: &Client) -> bool {
        self.table.lookup(client).is_some()
    }

    /// Allocations alive.
    pub fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Server::handle_timeout`] should next run.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.wheel.next_wakeup()
    }

    fn unix_at(&self, now: Instant) -> u64 {
        self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Handles a packet (one datagram, or one complete stream frame) from a
    /// client. Replies are written to `out` (1500 bytes is plenty).
    pub fn handle_client(&mut self, now: Instant, client: &Client, packet: &[u8], out: &mut [u8]) -> ClientAction {
        match packet.first().map(|&b| classify(b)) {
            Some(PacketKind::ChannelData) => self.client_channel_data(now, client, packet),
            Some(PacketKind::Stun) => match Message::parse(packet) {
                Ok(msg) => {
                    let secs = now.saturating_duration_since(self.epoch).as_secs() as u32;
                    self.answering = (client.transport == Transport::Udp).then(|| (client.remote.ip(), secs));
                    let action = self.client_stun(now, client, &msg, out);
                    self.answering = None;
                    action
                }
                Err(_) => {
                    self.stats.drop(Drop::Malformed);
                    ClientAction::None
                }
            },
            _ => {
                self.stats.drop(Drop::Malformed);
                ClientAction::None
            }
        }
    }

    /// A stream connection closed: its allocation goes with it (only one
    /// made on that connection: not another's holding the same 5-tuple).
    pub fn handle_client_closed(&mut self, now: Instant, client: &Client) {
        if let Some(id) = self.table.lookup(client) {
            self.stats.allocations_deleted += 1;
            self.delete(id, now);
        }
    }

    /// Expires what is due by `now`: allocations, permissions, channels and
    /// reservations.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, |e| due.push(e));
        for e in due.drain(..) {
            let Some(a) = self.table.get_mut(e.key) else { continue };
            if a.generation != e.generation {
                continue;
            }
            if a.expires <= now {
                self.stats.allocations_expired += 1;
                self.delete(e.key, now);
                continue;
            }
            let quarantine = self.config.channel_quarantine;
            let before = a.permissions.len();
            a.permissions.retain(|p| p.expires > now);
            self.stats.permissions_active -= (before - a.permissions.len()) as u64;
            for c in a.channels.iter_mut() {
                if c.counted && c.expires <= now {
                    c.counted = false;
                    self.stats.channels_active -= 1;
                }
            }
            // Kernel entries go before their channels can leave the vector.
            self.sync_fast(e.key, now);
            let Some(a) = self.table.get_mut(e.key) else { continue };
            a.channels.retain(|c| c.fast || c.counted || c.expires + quarantine > now);
            let next = a.next_deadline(quarantine);
            self.schedule(e.key, next);
        }
        self.due = due;
        self.pool.expire(now);
    }

    fn schedule(&mut self, id: u32, at: Instant) {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        if let Some(a) = self.table.get_mut(id) {
            a.generation = generation;
            a.scheduled = at;
            self.wheel.schedule(at, id, generation);
        }
    }

    /// Makes sure the allocation's timer fires no later than `at`.
    fn schedule_by(&mut self, id: u32, at: Instant) {
        if self.table.get(id).is_some_and(|a| at < a.scheduled) {
            self.schedule(id, at);
        }
    }

    fn delete(&mut self, id: u32, now: Instant) {
        let Some(a) = self.table.remove(id) else { return };
        // The kernel stops relaying before the relays go back to the pool.
        if self.config.fast_path {
            for c in a.channels.iter().filter(|c| c.fast) {
                if let Some(entry) = fast::entry(self.policy.own(), &a, c) {
                    self.events.push_back(Event::FastPathRemove(entry));
                }
            }
        }
        for relay in a.relays.into_iter().flatten() {
            self.pool.release(relay, now);
            self.events.push_back(Event::RelayReleased { relay });
        }
        if let Some(token) = a.quota {
            self.quotas.release(token);
        }
        self.stats.allocations_active -= 1;
        self.stats.permissions_active -= a.permissions.len() as u64;
        self.stats.channels_active -= a.channels.iter().filter(|c| c.counted).count() as u64;
    }
}

impl Server {
    /// Checks the shard's internal consistency at `now` (after
    /// [`Server::handle_timeout`] ran for it): the 5-tuple index agrees with
    /// the table, every allocation's relays belong to it, no allocation
    /// outlived its lifetime by more than the timer's one-second tick, a
    /// channel is on the kernel fast path exactly while it is eligible
    /// (expiry again within the tick), and the gauges match what is
    /// stored. For tests and fuzzing; costs a walk of the whole table.
    pub fn check_invariants(&self, now: Instant) -> Result<(), String> {
        let t = &self.table;
        if t.index_len() != t.len() {
            return Err(format!("index has {} entries, table {}", t.index_len(), t.len()));
        }
        let (mut relays, mut perms, mut chans) = (0usize, 0u64, 0u64);
        for (id, a) in t.allocs.iter() {
            if t.lookup(&a.client) != Some(id as u32) {
                return Err(format!("allocation {id} not found by its 5-tuple"));
            }
            for r in a.relays.iter().flatten() {
                relays += 1;
                if self.pool.owner(*r) != Some(id as u32) {
                    return Err(format!("relay {r:?} of allocation {id} is owned by {:?}", self.pool.owner(*r)));
                }
            }
            if a.expires + Duration::from_secs(1) < now {
                return Err(format!("allocation {id} outlived its lifetime"));
            }
            perms += a.permissions.len() as u64;
            chans += a.channels.iter().filter(|c| c.counted).count() as u64;
            // Installed exactly while eligible, expiry within the tick.
            for c in &a.channels {
                let eligible = self.fast_eligible(a, c, now, Duration::from_secs(1));
                if c.fast && !eligible {
                    return Err(format!("channel {:#06x} of allocation {id} on the fast path, not eligible", c.number));
                }
                if !c.fast && self.fast_eligible(a, c, now, Duration::ZERO) {
                    return Err(format!("channel {:#06x} of allocation {id} eligible, not on the fast path", c.number));
                }
            }
        }
        if relays != self.pool.in_use() {
            return Err(format!("{relays} relays held by allocations, pool says {}", self.pool.in_use()));
        }
        self.pool.check_counts()?;
        let s = &self.stats;
        if s.allocations_active != t.len() as u64 || s.permissions_active != perms || s.channels_active != chans {
            return Err(format!(
                "gauges (allocations {}, permissions {}, channels {}) disagree with the table ({}, {perms}, {chans})",
                s.allocations_active,
                s.permissions_active,
                s.channels_active,
                t.len()
            ));
        }
        if s.allocations_created != s.allocations_active + s.allocations_expired + s.allocations_deleted {
            return Err("created != active + expired + deleted".into());
        }
        Ok(())
    }
}
