//! [`Server`]: one shard's TURN/STUN server, sans IO.
//!
//! The I/O layer hands in packets with the time, and carries out the
//! [`ClientAction`] or [`PeerAction`] it gets back. Nothing here reads a
//! clock, touches a socket or allocates on the relay path: ChannelData and
//! Send-indication payloads are forwarded as byte ranges of the caller's
//! receive buffer, and peer data is framed for the client by writing a
//! header into the headroom in front of it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{Credentials, KeyCandidates, NonceCheck, NonceIssuer};
use super::own::OwnAddresses;
use super::policy::PeerPolicy;
use super::quota::{Quotas, TokenBucket};
use super::relays::{PoolError, RelayId, RelayPool};
use super::rfc5780::{self, Refusal, Rfc5780, Rfc5780Error};
use super::stats::{AuthFailure, Direction, Drop, MethodLabel, Outcome, Stats};
use super::table::{Allocation, Channel, Client, Permission, Table, Transport};
use super::timer::TimerWheel;
use crate::wire::attr::{password_algorithm, transport};
use crate::wire::channel_data::{self, CHANNEL_DATA_HEADER_LEN};
use crate::wire::integrity::{Key, PasswordAlgorithm};
use crate::wire::{
    AddressFamily, Attribute, AttributeType, Class, ErrorCode, HEADER_LEN, IntegrityAlgorithm, Message, MessageBuilder,
    MessageType, Method, PacketKind, TransactionId, classify,
};

/// Headroom a peer packet needs in front of its payload so that the server
/// can frame it for the client in place: the largest Data indication header
/// (20-byte STUN header, XOR-PEER-ADDRESS for IPv6, DATA attribute header).
pub const PEER_HEADROOM: usize = HEADER_LEN + 4 + 20 + 4;

/// Tailroom after a peer payload: padding to a multiple of 4.
pub const PEER_TAILROOM: usize = 3;

/// The PASSWORD-ALGORITHMS value the server offers: SHA-256, then MD5.
const OFFERED_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

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
    /// together; 0 = unlimited.
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
        }
    }
}

/// What to do with a packet from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing (dropped; see the stats for why).
    None,
    /// Send `out[..len]` back to the client on the same transport.
    Reply {
        /// Bytes written to `out`.
        len: usize,
    },
    /// Send `out[..len]` from the UDP listener bound to `local` to `to`:
    /// a Binding response that RFC 5780 sends from another address of the
    /// server (CHANGE-REQUEST) or to another port of the client
    /// (RESPONSE-PORT). Only ever returned for UDP clients.
    ReplyFrom {
        /// The listener address to send from.
        local: SocketAddr,
        /// The destination.
        to: SocketAddr,
        /// Bytes written to `out`.
        len: usize,
    },
    /// Send `packet[payload]` from relay `relay` to `peer`.
    Forward {
        /// The relay socket to send from.
        relay: RelayId,
        /// The peer to send to.
        peer: SocketAddr,
        /// The payload's range within the input packet.
        payload: Range<usize>,
    },
    /// The peer is another allocation's relay address on this shard:
    /// hand `packet[payload]` to [`Server::handle_peer`] as a datagram from
    /// `from` on relay `relay` (where the payload has the headroom that
    /// call needs) and carry out the [`PeerAction`] it returns, exactly as
    /// for a datagram from the network — with no kernel round trip.
    Deliver {
        /// The receiving relay (another allocation's, on this shard).
        relay: RelayId,
        /// The sending allocation's relay address: the peer as the
        /// receiving allocation sees it.
        from: SocketAddr,
        /// The payload's range within the input packet.
        payload: Range<usize>,
    },
}

/// What to do with a packet from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Nothing (dropped).
    None,
    /// Send `buf[frame]` (ChannelData or a Data indication, framed in place)
    /// to `client`.
    Forward {
        /// The client to send to.
        client: Client,
        /// The framed message's range within the buffer.
        frame: Range<usize>,
    },
}

/// Things the I/O layer should know about that are not a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A relay address was given to an allocation. With `dont_fragment`,
    /// the client asked for DONT-FRAGMENT: set the DF bit on that socket.
    RelayOpened {
        /// The relay.
        relay: RelayId,
        /// DONT-FRAGMENT was requested.
        dont_fragment: bool,
    },
    /// A relay address went back to the pool; undo per-socket settings.
    RelayReleased {
        /// The relay.
        relay: RelayId,
    },
}

/// A small SplitMix64 generator for transaction ids of Data indications and
/// reservation tokens (seeded by the I/O layer from the OS).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn tid(&mut self) -> TransactionId {
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.next().to_le_bytes());
        t[8..].copy_from_slice(&self.next().to_le_bytes()[..4]);
        TransactionId(t)
    }
}

/// How a request's response is sealed.
#[derive(Clone, Copy)]
struct Seal {
    key: Option<(Key, IntegrityAlgorithm)>,
    fingerprint: bool,
}

/// A budget of answers to unauthenticated requests per source address: a
/// token bucket per (keyed) hash of the source IP in a fixed table. A
/// flood with a spoofed source can make the shard answer that address at
/// most `rate` times a second (after a `burst`), whatever it sends. Sources
/// sharing a slot share a budget; the key makes that unpredictable.
#[derive(Debug)]
struct ReflectionLimiter {
    /// (IP hash, tokens, last refill in whole seconds since the epoch).
    slots: Box<[(u64, u32, u32)]>,
    rate: u32,
    burst: u32,
    key: u64,
}

impl ReflectionLimiter {
    const SLOTS: usize = 4096;

    fn new(rate: u32, burst: u32, key: u64) -> ReflectionLimiter {
        let slots = if rate == 0 { Box::default() } else { vec![(0, 0, 0); Self::SLOTS].into_boxed_slice() };
        ReflectionLimiter { slots, rate, burst: burst.max(1), key }
    }

    fn allow(&mut self, ip: IpAddr, secs: u32) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let bits: u128 = match ip {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        // SplitMix-style mixing of the address with the per-process key.
        let mut h = self.key ^ (bits as u64) ^ ((bits >> 64) as u64).rotate_left(29);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
        let tag = h | 1;
        let slot = &mut self.slots[(h as usize >> 3) & (Self::SLOTS - 1)];
        if slot.0 != tag {
            *slot = (tag, self.burst, secs);
        }
        let refill = u64::from(secs.saturating_sub(slot.2)) * u64::from(self.rate);
        slot.1 = (u64::from(slot.1) + refill).min(u64::from(self.burst)) as u32;
        slot.2 = secs;
        if slot.1 == 0 {
            return false;
        }
        slot.1 -= 1;
        true
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
    /// Allocation quotas shared by every shard.
    pub quotas: Arc<Quotas>,
}

/// One shard's TURN/STUN server.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    credentials: Credentials,
    nonces: NonceIssuer,
    policy: PeerPolicy,
    quotas: Arc<Quotas>,
    pool: RelayPool,
    table: Table,
    wheel: TimerWheel,
    generation: u32,
    events: VecDeque<Event>,
    rng: Rng,
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

enum AuthOutcome<'m> {
    Ok { key: Key, username: &'m str, integrity: IntegrityAlgorithm },
    Reply(ClientAction),
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
            rng: Rng(seed),
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

    /// Denies a server address (a listener) as a peer.
    pub fn deny_own_address(&mut self, ip: IpAddr) {
        self.policy.deny_own(ip);
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

    /// Stops (or resumes) taking new allocations, for a graceful stop:
    /// Allocate is answered 508 while existing allocations run on.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// True when this client has an allocation.
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

    // ------------------------------------------------------------------
    // Packets from clients
    // ------------------------------------------------------------------

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

    /// A stream connection closed: its allocation goes with it.
    pub fn handle_client_closed(&mut self, now: Instant, client: &Client) {
        if let Some(id) = self.table.lookup(client) {
            self.stats.allocations_deleted += 1;
            self.delete(id, now);
        }
    }

    fn client_channel_data(&mut self, now: Instant, client: &Client, packet: &[u8]) -> ClientAction {
        let Ok((number, len)) = channel_data::parse_header(packet) else {
            self.stats.drop(Drop::Malformed);
            return ClientAction::None;
        };
        let end = CHANNEL_DATA_HEADER_LEN + len as usize;
        // UDP may carry up to 3 padding bytes; stream frames are exact.
        if end > packet.len() || packet.len() - end > 3 {
            self.stats.drop(Drop::Malformed);
            return ClientAction::None;
        }
        let Some(id) = self.table.lookup(client) else {
            self.stats.drop(Drop::NoAllocation);
            return ClientAction::None;
        };
        let Some(a) = self.table.allocs.get_mut(id as usize) else { return ClientAction::None };
        let Some(peer) = a.channel_peer(number, now) else {
            self.stats.drop(Drop::NoChannel);
            return ClientAction::None;
        };
        if !a.permits(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return ClientAction::None;
        }
        let Some(relay) = a.relay_for(&peer) else {
            self.stats.drop(Drop::NoChannel);
            return ClientAction::None;
        };
        if !a.bucket.allow(now, len as usize) {
            self.stats.drop(Drop::Bandwidth);
            return ClientAction::None;
        }
        self.stats.relayed(Direction::ToPeer, client.transport, len as usize);
        self.route(relay, peer, CHANNEL_DATA_HEADER_LEN..end)
    }

    /// Where a client's datagram for `peer` goes: out of `relay` to the
    /// network — or, when the peer is one of this server's relay addresses,
    /// to that relay's bound address (no NAT hairpinning needed), or
    /// straight to the allocation when the relay is this shard's.
    #[inline]
    fn route(&mut self, relay: RelayId, peer: SocketAddr, payload: Range<usize>) -> ClientAction {
        if !self.policy.own().is_own_ip(peer.ip()) {
            return ClientAction::Forward { relay, peer, payload };
        }
        let Some(own) = self.policy.own().relay(peer) else {
            // An operator-allowed port of an own IP: through the kernel.
            return ClientAction::Forward { relay, peer, payload };
        };
        if let (Some(&target), Some(from)) = (self.local.get(&own.advertised), self.pool.addr(relay)) {
            self.stats.relayed_in_shard += 1;
            return ClientAction::Deliver { relay: target, from, payload };
        }
        self.stats.relayed_to_own += 1;
        ClientAction::Forward { relay, peer: own.bound, payload }
    }

    fn client_stun(&mut self, now: Instant, client: &Client, msg: &Message<'_>, out: &mut [u8]) -> ClientAction {
        if msg.fingerprint_offset().is_some() && msg.verify_fingerprint().is_err() {
            self.stats.drop(Drop::BadFingerprint);
            return ClientAction::None;
        }
        match msg.class() {
            Class::Request => {}
            Class::Indication if msg.method() == Method::SEND => return self.send_indication(now, client, msg),
            _ => {
                self.stats.drop(Drop::Unexpected);
                return ClientAction::None;
            }
        }
        let label = MethodLabel::of(msg.method());
        let seal = Seal { key: None, fingerprint: msg.fingerprint_offset().is_some() };

        // RFC 8489 §6.3.1: unknown comprehension-required attributes → 420.
        let mut unknown = [0u8; 32];
        let mut n = 0;
        for ty in msg.unknown_comprehension_required() {
            if n + 2 <= unknown.len() {
                unknown[n..n + 2].copy_from_slice(&ty.0.to_be_bytes());
                n += 2;
            }
        }
        if n > 0 {
            let unknown = &unknown[..n];
            return self.error(out, msg, label, seal, 420, |b| {
                b.add_raw(AttributeType::UNKNOWN_ATTRIBUTES, unknown)?;
                Ok(())
            });
        }

        match msg.method() {
            Method::BINDING => self.binding(client, msg, seal, out),
            Method::ALLOCATE => self.allocate(now, client, msg, seal, out),
            Method::REFRESH => self.refresh(now, client, msg, seal, out),
            Method::CREATE_PERMISSION => self.create_permission(now, client, msg, seal, out),
            Method::CHANNEL_BIND => self.channel_bind(now, client, msg, seal, out),
            // RFC 8489 §6.3.1: a request for a method the server does not
            // know is answered 400 Bad Request.
            _ => self.error(out, msg, label, seal, 400, |_| Ok(())),
        }
    }

    /// Binding: XOR-MAPPED-ADDRESS, and MAPPED-ADDRESS for RFC 3489-era
    /// clients (RFC 5780 §6.1 asks for both); the RFC 5780 attributes are
    /// decided in [`super::rfc5780`].
    fn binding(&mut self, client: &Client, msg: &Message<'_>, seal: Seal, out: &mut [u8]) -> ClientAction {
        let label = MethodLabel::Binding;
        let plan = match rfc5780::plan(self.rfc5780.as_ref(), client, msg) {
            Ok(p) => p,
            Err(Refusal::BadRequest) => return self.error(out, msg, label, seal, 400, |_| Ok(())),
            Err(Refusal::Unsupported(ty)) => {
                return self.error(out, msg, label, seal, 420, |b| {
                    b.add_raw(AttributeType::UNKNOWN_ATTRIBUTES, &ty.0.to_be_bytes())?;
                    Ok(())
                });
            }
        };
        let remote = client.remote;
        let room = rfc5780::padding_room(out.len(), self.config.software.as_ref().map_or(0, String::len));
        let action = self.success(out, msg, label, seal, |b| {
            b.add(&Attribute::XorMappedAddress(remote))?;
            b.add(&Attribute::MappedAddress(remote))?;
            if let Some(origin) = plan.origin {
                b.add(&Attribute::ResponseOrigin(origin))?;
            }
            if let Some(other) = plan.other {
                b.add(&Attribute::OtherAddress(other))?;
            }
            if let Some(n) = plan.padding {
                b.add(&Attribute::Padding(&rfc5780::ZEROS[..n.min(room)]))?;
            }
            Ok(())
        });
        match action {
            ClientAction::Reply { len } if plan.from != client.local || plan.to != remote => {
                ClientAction::ReplyFrom { local: plan.from, to: plan.to, len }
            }
            other => other,
        }
    }

    fn send_indication(&mut self, now: Instant, client: &Client, msg: &Message<'_>) -> ClientAction {
        self.stats.send_indications += 1;
        let tid = msg.transaction_id();
        let peer = match msg.get(AttributeType::XOR_PEER_ADDRESS).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::XorPeerAddress(p))) => p,
            _ => {
                self.stats.drop(Drop::Malformed);
                return ClientAction::None;
            }
        };
        let Some(data) = msg.get(AttributeType::DATA) else {
            self.stats.drop(Drop::Malformed);
            return ClientAction::None;
        };
        let Some(id) = self.table.lookup(client) else {
            self.stats.drop(Drop::NoAllocation);
            return ClientAction::None;
        };
        let Some(a) = self.table.allocs.get_mut(id as usize) else { return ClientAction::None };
        if !a.permits(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return ClientAction::None;
        }
        let Some(relay) = a.relay_for(&peer) else {
            self.stats.drop(Drop::NoPermission);
            return ClientAction::None;
        };
        // Permissions are by IP: on one of our own IPs, the port decides
        // (only relay addresses, or what the operator allows).
        if self.policy.own().is_own_ip(peer.ip()) && !self.policy.permits(peer) {
            self.stats.drop(Drop::DeniedPeer);
            return ClientAction::None;
        }
        let Some(a) = self.table.allocs.get_mut(id as usize) else { return ClientAction::None };
        if !a.bucket.allow(now, data.value.len()) {
            self.stats.drop(Drop::Bandwidth);
            return ClientAction::None;
        }
        self.stats.relayed(Direction::ToPeer, client.transport, data.value.len());
        let start = data.offset + 4;
        self.route(relay, peer, start..start + data.value.len())
    }

    // ------------------------------------------------------------------
    // Packets from peers
    // ------------------------------------------------------------------

    /// Handles `buf[payload]`, a datagram from `peer` on relay `relay`. When
    /// the peer is permitted, the payload is framed for the client in place:
    /// the header goes into the [`PEER_HEADROOM`] bytes before
    /// `payload.start` and up to [`PEER_TAILROOM`] padding bytes after it, so
    /// the caller receives at offset `PEER_HEADROOM` into a buffer with room
    /// to spare at the end.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerAction {
        let Some(id) = self.pool.owner(relay) else {
            self.stats.drop(Drop::NoAllocation);
            return PeerAction::None;
        };
        // From one of our own IPs: another allocation's relay (seen as its
        // advertised address, which is what a permission names), or a port
        // the operator allows; anything else on the host is not a peer.
        let own = self.policy.own();
        let peer = if own.is_own_ip(peer.ip()) {
            match own.relay(peer) {
                Some(r) => r.advertised,
                None if self.policy.permits(peer) => peer,
                None => {
                    self.stats.drop(Drop::DeniedPeer);
                    return PeerAction::None;
                }
            }
        } else {
            peer
        };
        let Some(a) = self.table.allocs.get_mut(id as usize) else { return PeerAction::None };
        if !a.permits(peer.ip(), now) {
            self.stats.drop(Drop::NoPermission);
            return PeerAction::None;
        }
        let len = payload.len();
        if payload.end > buf.len() {
            self.stats.drop(Drop::TooLarge);
            return PeerAction::None;
        }
        if !a.bucket.allow(now, len) {
            self.stats.drop(Drop::Bandwidth);
            return PeerAction::None;
        }
        let client = a.client;
        let stream = client.transport.is_stream();
        let frame = if let Some(number) = a.channel_of(&peer, now) {
            frame_channel_data(buf, payload, number, stream)
        } else {
            let tid = self.rng.tid();
            let f = frame_data_indication(buf, payload, peer, tid);
            if f.is_some() {
                self.stats.data_indications += 1;
            }
            f
        };
        match frame {
            Some(frame) => {
                self.stats.relayed(Direction::ToClient, client.transport, len);
                PeerAction::Forward { client, frame }
            }
            None => {
                self.stats.drop(Drop::TooLarge);
                PeerAction::None
            }
        }
    }

    // ------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------

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
            a.channels.retain(|c| c.counted || c.expires + quarantine > now);
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

    // ------------------------------------------------------------------
    // Requests
    // ------------------------------------------------------------------

    fn granted_lifetime(&self, requested: Option<u32>) -> Duration {
        let max = self.config.max_lifetime;
        let default = self.config.default_lifetime.min(max);
        match requested {
            Some(s) => Duration::from_secs(u64::from(s)).min(max).max(default),
            None => default,
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). `alloc` is the
    /// allocation of this 5-tuple, whose username later requests must use.
    #[allow(clippy::too_many_arguments)]
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'m>,
        alloc: Option<u32>,
        label: MethodLabel,
        seal: Seal,
        out: &mut [u8],
    ) -> AuthOutcome<'m> {
        let tid = msg.transaction_id();
        if !msg.has_integrity() {
            self.stats.auth_failure(AuthFailure::Challenge);
            return AuthOutcome::Reply(self.challenge(now, client, msg, label, seal, 401, out));
        }
        let text = |ty| match msg.get(ty).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::Username(s) | Attribute::Realm(s) | Attribute::Nonce(s))) => Some(s),
            _ => None,
        };
        let (Some(username), Some(realm), Some(nonce)) =
            (text(AttributeType::USERNAME), text(AttributeType::REALM), text(AttributeType::NONCE))
        else {
            self.stats.auth_failure(AuthFailure::MissingAttribute);
            return AuthOutcome::Reply(self.error(out, msg, label, seal, 400, |_| Ok(())));
        };
        if realm != self.credentials.realm() {
            self.stats.auth_failure(AuthFailure::WrongRealm);
            return AuthOutcome::Reply(self.challenge(now, client, msg, label, seal, 401, out));
        }
        let unix_now = self.unix_at(now);
        let nonce_state = self.nonces.check(nonce.as_bytes(), unix_now, client.remote);

        // Password algorithm negotiation (RFC 8489 §9.2.4 step 3): only
        // with a nonce that carries the security feature cookie.
        let mut algorithm = PasswordAlgorithm::Md5;
        if NonceIssuer::has_security_feature_cookie(nonce.as_bytes()) {
            let offered = msg.get(AttributeType::PASSWORD_ALGORITHMS);
            let chosen = msg.get(AttributeType::PASSWORD_ALGORITHM);
            match (offered, chosen) {
                (None, None) => {}
                (Some(offered), Some(chosen)) => {
                    let code = match chosen.decode(&tid) {
                        Ok(Attribute::PasswordAlgorithm(e)) if e.params.is_empty() => e.algorithm,
                        _ => 0,
                    };
                    let ok_code =
                        code == password_algorithm::MD5 || (code == password_algorithm::SHA256 && self.config.sha256);
                    if offered.value != OFFERED_ALGORITHMS || !ok_code {
                        self.stats.auth_failure(AuthFailure::BadAlgorithm);
                        return AuthOutcome::Reply(self.error(out, msg, label, seal, 400, |_| Ok(())));
                    }
                    algorithm = PasswordAlgorithm::from_code(code).unwrap_or(PasswordAlgorithm::Md5);
                }
                _ => {
                    self.stats.auth_failure(AuthFailure::BadAlgorithm);
                    return AuthOutcome::Reply(self.error(out, msg, label, seal, 400, |_| Ok(())));
                }
            }
        }

        // Within an allocation, the username is fixed and its key known.
        let mut candidates = KeyCandidates::default();
        if let Some(a) = alloc.and_then(|id| self.table.get(id)) {
            if *a.username != *username {
                self.stats.auth_failure(AuthFailure::WrongUsername);
                return AuthOutcome::Reply(self.error(out, msg, label, seal, 441, |_| Ok(())));
            }
            if a.key.algorithm() == algorithm {
                candidates.push(a.key);
            }
        }
        if candidates.is_empty() {
            self.credentials.keys(username, algorithm, unix_now, &mut candidates);
        }
        if candidates.is_empty() {
            self.stats.auth_failure(AuthFailure::UnknownUser);
            return AuthOutcome::Reply(self.challenge(now, client, msg, label, seal, 401, out));
        }
        let verified = candidates.iter().find_map(|k| msg.verify_integrity(k.as_bytes()).ok().map(|i| (*k, i)));
        let Some((key, integrity)) = verified else {
            self.stats.auth_failure(AuthFailure::BadIntegrity);
            return AuthOutcome::Reply(self.challenge(now, client, msg, label, seal, 401, out));
        };
        if nonce_state != NonceCheck::Valid {
            self.stats.auth_failure(AuthFailure::StaleNonce);
            return AuthOutcome::Reply(self.challenge(now, client, msg, label, seal, 438, out));
        }
        AuthOutcome::Ok { key, username, integrity }
    }

    /// 401 or 438 with REALM and a fresh NONCE (and PASSWORD-ALGORITHMS
    /// when SHA-256 is offered).
    #[allow(clippy::too_many_arguments)]
    fn challenge(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        label: MethodLabel,
        seal: Seal,
        code: u16,
        out: &mut [u8],
    ) -> ClientAction {
        let sha256 = self.config.sha256;
        let nonce = self.nonces.issue(self.unix_at(now), client.remote, sha256);
        let realm = self.credentials.realm().to_owned();
        self.error(out, msg, label, seal, code, |b| {
            b.add(&Attribute::Realm(&realm))?;
            b.add(&Attribute::Nonce(nonce.as_str()))?;
            if sha256 {
                b.add_raw(AttributeType::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS)?;
            }
            Ok(())
        })
    }

    fn allocate(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        seal: Seal,
        out: &mut [u8],
    ) -> ClientAction {
        let label = MethodLabel::Allocate;
        let existing = self.table.lookup(client);
        let (key, integrity, username) = match self.authenticate(now, client, msg, existing, label, seal, out) {
            AuthOutcome::Ok { key, integrity, username } => (key, integrity, username),
            AuthOutcome::Reply(r) => return r,
        };
        let seal = Seal { key: Some((key, integrity)), ..seal };
        let tid = msg.transaction_id();
        if let Some(id) = existing {
            // A retransmission gets the original answer; anything else 437.
            if self.table.get(id).is_some_and(|a| a.allocate_tid == tid) {
                return self.allocate_success(now, id, client, msg, seal, out);
            }
            return self.error(out, msg, label, seal, 437, |_| Ok(()));
        }

        let mut requested_transport = None;
        let mut lifetime = None;
        let mut dont_fragment = false;
        let mut even_port = None;
        let mut token = None;
        let mut family = None;
        let mut additional = None;
        for attr in msg.attributes() {
            match attr.decode(&tid) {
                Ok(Attribute::RequestedTransport(p)) => requested_transport = Some(p),
                Ok(Attribute::Lifetime(s)) => lifetime = Some(s),
                Ok(Attribute::DontFragment) => dont_fragment = true,
                Ok(Attribute::EvenPort(r)) => even_port = Some(r),
                Ok(Attribute::ReservationToken(t)) => token = Some(*t),
                Ok(Attribute::RequestedAddressFamily(f)) => family = Some(f),
                Ok(Attribute::AdditionalAddressFamily(f)) => additional = Some(f),
                Ok(_) => {}
                Err(_) => return self.error(out, msg, label, seal, 400, |_| Ok(())),
            }
        }
        match requested_transport {
            None => return self.error(out, msg, label, seal, 400, |_| Ok(())),
            Some(transport::UDP) => {}
            Some(_) => return self.error(out, msg, label, seal, 442, |_| Ok(())),
        }
        // RFC 8656 §7.2 steps 5-7: attribute combinations.
        let bad_combination = (token.is_some() && (even_port.is_some() || family.is_some() || additional.is_some()))
            || (family.is_some() && additional.is_some());
        if bad_combination {
            return self.error(out, msg, label, seal, 400, |_| Ok(()));
        }
        let family = match family.map(AddressFamily::from_code) {
            None => AddressFamily::V4,
            Some(Some(f)) => f,
            Some(None) => return self.error(out, msg, label, seal, 440, |_| Ok(())),
        };
        let want_v6_too = match additional.map(AddressFamily::from_code) {
            None => false,
            Some(Some(AddressFamily::V6)) => true,
            // ADDITIONAL-ADDRESS-FAMILY may only name IPv6.
            Some(_) => return self.error(out, msg, label, seal, 400, |_| Ok(())),
        };

        if !self.accepting {
            return self.error(out, msg, label, seal, 508, |_| Ok(()));
        }
        let quota = match self.quotas.acquire(quota_identity(username).as_bytes()) {
            Ok(q) => q,
            Err(e) => return self.error(out, msg, label, seal, e.stun_code(), |_| Ok(())),
        };

        // Size the table for every relay address once, before the first
        // allocation (relays are all registered by then).
        let total = self.pool.capacity(AddressFamily::V4) + self.pool.capacity(AddressFamily::V6);
        if total > self.reserved_for {
            self.table.reserve_total(total);
            self.reserved_for = total;
        }
        let id = self.table.vacant_key();
        let reserve = (even_port == Some(true)).then(|| (self.rng.next().to_le_bytes(), now));
        let first = match (token, even_port) {
            (Some(t), _) => self.pool.acquire_reserved(&t, id, now),
            (None, Some(_)) => self.pool.acquire_even(family, id, reserve),
            (None, None) => self.pool.acquire(family, id),
        };
        let first = match first {
            Ok(r) => r,
            Err(e) => {
                self.quotas.release(quota);
                let code = if e == PoolError::FamilyUnsupported { 440 } else { 508 };
                return self.error(out, msg, label, seal, code, |_| Ok(()));
            }
        };
        let mut relays = [None, None];
        let first_family = self.pool.addr(first).map(|a| AddressFamily::of(&a)).unwrap_or(family);
        relays[usize::from(first_family == AddressFamily::V6)] = Some(first);
        let mut additional_family_failed = false;
        if want_v6_too {
            match self.pool.acquire(AddressFamily::V6, id) {
                Ok(r) => relays[1] = Some(r),
                Err(_) => additional_family_failed = true,
            }
        }
        let lifetime = self.granted_lifetime(lifetime);
        let expires = now + lifetime;
        let bucket = TokenBucket::new(self.config.bandwidth_limit, self.config.bandwidth_burst, now);
        let inserted = self.table.insert(Allocation {
            client: *client,
            relays,
            expires,
            username: username.into(),
            key,
            permissions: Default::default(),
            channels: Default::default(),
            quota: Some(quota),
            bucket,
            allocate_tid: tid,
            reservation: reserve.map(|(t, _)| t),
            additional_family_failed,
            generation: 0,
            scheduled: expires,
        });
        debug_assert_eq!(inserted, id);
        self.schedule(id, expires);
        for relay in relays.into_iter().flatten() {
            self.events.push_back(Event::RelayOpened { relay, dont_fragment });
        }
        self.stats.allocations_created += 1;
        self.stats.allocations_active += 1;
        self.allocate_success(now, id, client, msg, seal, out)
    }

    fn allocate_success(
        &mut self,
        now: Instant,
        id: u32,
        client: &Client,
        msg: &Message<'_>,
        seal: Seal,
        out: &mut [u8],
    ) -> ClientAction {
        let Some(a) = self.table.get(id) else { return ClientAction::None };
        let relays = a.relays.map(|r| r.and_then(|r| self.pool.addr(r)));
        let remaining = a.expires.saturating_duration_since(now).as_secs() as u32;
        let reservation = a.reservation;
        let failed = a.additional_family_failed;
        let remote = client.remote;
        self.success(out, msg, MethodLabel::Allocate, seal, |b| {
            for r in relays.into_iter().flatten() {
                b.add(&Attribute::XorRelayedAddress(r))?;
            }
            b.add(&Attribute::Lifetime(remaining))?;
            if let Some(t) = &reservation {
                b.add(&Attribute::ReservationToken(t))?;
            }
            b.add(&Attribute::XorMappedAddress(remote))?;
            if failed {
                let reason = reason_phrase(440);
                b.add(&Attribute::AddressErrorCode(AddressFamily::V6.code(), ErrorCode { code: 440, reason }))?;
            }
            Ok(())
        })
    }

    /// Authenticates a request that needs this 5-tuple's allocation.
    fn authenticate_existing(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        label: MethodLabel,
        seal: Seal,
        out: &mut [u8],
    ) -> Result<(u32, Seal), ClientAction> {
        let existing = self.table.lookup(client);
        let (key, integrity) = match self.authenticate(now, client, msg, existing, label, seal, out) {
            AuthOutcome::Ok { key, integrity, .. } => (key, integrity),
            AuthOutcome::Reply(r) => return Err(r),
        };
        let seal = Seal { key: Some((key, integrity)), ..seal };
        match existing {
            Some(id) => Ok((id, seal)),
            None => Err(self.error(out, msg, label, seal, 437, |_| Ok(()))),
        }
    }

    fn refresh(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        seal: Seal,
        out: &mut [u8],
    ) -> ClientAction {
        let label = MethodLabel::Refresh;
        let (id, seal) = match self.authenticate_existing(now, client, msg, label, seal, out) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let tid = msg.transaction_id();
        let mut lifetime = None;
        for attr in msg.attributes() {
            match attr.decode(&tid) {
                Ok(Attribute::Lifetime(s)) => lifetime = Some(s),
                Ok(Attribute::RequestedAddressFamily(f)) => {
                    let has = match AddressFamily::from_code(f) {
                        Some(AddressFamily::V4) => self.table.get(id).is_some_and(|a| a.relays[0].is_some()),
                        Some(AddressFamily::V6) => self.table.get(id).is_some_and(|a| a.relays[1].is_some()),
                        None => false,
                    };
                    if !has {
                        return self.error(out, msg, label, seal, 443, |_| Ok(()));
                    }
                }
                Ok(_) => {}
                Err(_) => return self.error(out, msg, label, seal, 400, |_| Ok(())),
            }
        }
        if lifetime == Some(0) {
            self.stats.allocations_deleted += 1;
            self.delete(id, now);
            return self.success(out, msg, label, seal, |b| {
                b.add(&Attribute::Lifetime(0))?;
                Ok(())
            });
        }
        let granted = self.granted_lifetime(lifetime);
        if let Some(a) = self.table.get_mut(id) {
            a.expires = now + granted;
        }
        self.schedule_by(id, now + granted);
        self.success(out, msg, label, seal, |b| {
            b.add(&Attribute::Lifetime(granted.as_secs() as u32))?;
            Ok(())
        })
    }

    /// Checks a peer for a permission or channel: the allocation must have
    /// a relay of its family (443) and the policy must allow it (403).
    fn check_peer(&self, id: u32, peer: &SocketAddr) -> Result<(), u16> {
        let a = self.table.get(id).ok_or(437u16)?;
        if a.relay_for(peer).is_none() {
            return Err(443);
        }
        if !self.policy.permits(*peer) {
            return Err(403);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        seal: Seal,
        out: &mut [u8],
    ) -> ClientAction {
        let label = MethodLabel::CreatePermission;
        let (id, seal) = match self.authenticate_existing(now, client, msg, label, seal, out) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let tid = msg.transaction_id();
        // Validate every address before installing any (all or nothing).
        let mut count = 0usize;
        let mut new = 0usize;
        for attr in msg.get_all(AttributeType::XOR_PEER_ADDRESS) {
            let Ok(Attribute::XorPeerAddress(peer)) = attr.decode(&tid) else {
                return self.error(out, msg, label, seal, 400, |_| Ok(()));
            };
            if let Err(code) = self.check_peer(id, &peer) {
                if code == 403 {
                    self.stats.drop(Drop::DeniedPeer);
                }
                return self.error(out, msg, label, seal, code, |_| Ok(()));
            }
            count += 1;
            if self.table.get(id).is_some_and(|a| !a.permissions.iter().any(|p| p.ip == peer.ip())) {
                new += 1;
            }
        }
        if count == 0 {
            return self.error(out, msg, label, seal, 400, |_| Ok(()));
        }
        if self.table.get(id).is_some_and(|a| a.permissions.len() + new > self.config.max_permissions) {
            return self.error(out, msg, label, seal, 508, |_| Ok(()));
        }
        let expires = now + self.config.permission_lifetime;
        for attr in msg.get_all(AttributeType::XOR_PEER_ADDRESS) {
            if let Ok(Attribute::XorPeerAddress(peer)) = attr.decode(&tid) {
                self.install_permission(id, peer.ip(), expires);
            }
        }
        self.schedule_by(id, expires);
        self.success(out, msg, label, seal, |_| Ok(()))
    }

    fn install_permission(&mut self, id: u32, ip: IpAddr, expires: Instant) {
        let Some(a) = self.table.get_mut(id) else { return };
        match a.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = p.expires.max(expires),
            None => {
                a.permissions.push(Permission { ip, expires });
                self.stats.permissions_active += 1;
            }
        }
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        client: &Client,
        msg: &Message<'_>,
        seal: Seal,
        out: &mut [u8],
    ) -> ClientAction {
        let label = MethodLabel::ChannelBind;
        let (id, seal) = match self.authenticate_existing(now, client, msg, label, seal, out) {
            Ok(x) => x,
            Err(r) => return r,
        };
        let tid = msg.transaction_id();
        let number = match msg.get(AttributeType::CHANNEL_NUMBER).map(|a| a.decode(&tid)) {
            Some(Ok(Attribute::ChannelNumber(n))) if channel_data::is_valid_channel(n) => n,
            _ => return self.error(out, msg, label, seal, 400, |_| Ok(())),
        };
        let mut peers = msg.get_all(AttributeType::XOR_PEER_ADDRESS);
        let peer = match (peers.next().map(|a| a.decode(&tid)), peers.next()) {
            (Some(Ok(Attribute::XorPeerAddress(p))), None) => p,
            _ => return self.error(out, msg, label, seal, 400, |_| Ok(())),
        };
        if let Err(code) = self.check_peer(id, &peer) {
            if code == 403 {
                self.stats.drop(Drop::DeniedPeer);
            }
            return self.error(out, msg, label, seal, code, |_| Ok(()));
        }
        let quarantine = self.config.channel_quarantine;
        let max_channels = self.config.max_channels;
        let channel_expires = now + self.config.channel_lifetime;
        let Some(a) = self.table.get_mut(id) else { return ClientAction::None };
        // An entry (live or in quarantine) holding this number or this peer.
        let held = |c: &Channel| c.expires + quarantine > now;
        let same = a.channels.iter().position(|c| c.number == number && c.peer == peer && held(c));
        let conflict = a.channels.iter().any(|c| held(c) && ((c.number == number) != (c.peer == peer)));
        if conflict {
            return self.error(out, msg, label, seal, 400, |_| Ok(()));
        }
        match same {
            Some(i) => {
                let c = &mut a.channels[i];
                if !c.counted {
                    c.counted = true;
                    self.stats.channels_active += 1;
                }
                c.expires = channel_expires;
            }
            None => {
                if a.channels.len() >= max_channels {
                    return self.error(out, msg, label, seal, 508, |_| Ok(()));
                }
                a.channels.push(Channel { number, peer, expires: channel_expires, counted: true });
                self.stats.channels_active += 1;
            }
        }
        // Binding a channel installs or refreshes the permission.
        let perm_expires = now + self.config.permission_lifetime;
        self.install_permission(id, peer.ip(), perm_expires);
        self.schedule_by(id, perm_expires.min(channel_expires));
        self.success(out, msg, label, seal, |_| Ok(()))
    }

    // ------------------------------------------------------------------
    // Responses
    // ------------------------------------------------------------------

    fn success(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        label: MethodLabel,
        seal: Seal,
        body: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), crate::wire::EncodeError>,
    ) -> ClientAction {
        self.respond(out, msg, label, Outcome::Success, Class::Success, seal, body)
    }

    fn error(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        label: MethodLabel,
        seal: Seal,
        code: u16,
        body: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), crate::wire::EncodeError>,
    ) -> ClientAction {
        // Errors found before authentication (400, 401, 420, 438) go
        // without MESSAGE-INTEGRITY: `seal.key` is only set once the
        // client's key has verified (RFC 8489 §9.2.4).
        self.respond(out, msg, label, Outcome::of_code(code), Class::Error, seal, |b| {
            b.add(&Attribute::ErrorCode(ErrorCode { code, reason: reason_phrase(code) }))?;
            body(b)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        out: &mut [u8],
        msg: &Message<'_>,
        label: MethodLabel,
        outcome: Outcome,
        class: Class,
        seal: Seal,
        body: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), crate::wire::EncodeError>,
    ) -> ClientAction {
        let ty = MessageType::new(class, msg.method());
        let software = self.config.software.as_deref();
        let written = (|| {
            let mut b = MessageBuilder::new(out, ty, msg.transaction_id())?;
            body(&mut b)?;
            if let Some(s) = software {
                b.add(&Attribute::Software(s))?;
            }
            match seal.key {
                Some((k, IntegrityAlgorithm::Sha1)) => {
                    b.add_message_integrity(k.as_bytes())?;
                }
                Some((k, IntegrityAlgorithm::Sha256)) => {
                    b.add_message_integrity_sha256(k.as_bytes())?;
                }
                None => {}
            }
            if seal.fingerprint {
                b.add_fingerprint()?;
            }
            Ok::<usize, crate::wire::EncodeError>(b.finish())
        })();
        // Answers that did not authenticate draw on the source's budget.
        if seal.key.is_none()
            && let Some((ip, secs)) = self.answering
            && !self.reflection.allow(ip, secs)
        {
            self.stats.drop(Drop::RateLimited);
            return ClientAction::None;
        }
        self.stats.request(label, outcome);
        match written {
            Ok(len) => ClientAction::Reply { len },
            Err(_) => {
                self.stats.drop(Drop::TooLarge);
                ClientAction::None
            }
        }
    }
}

impl Server {
    /// Checks the shard's internal consistency at `now` (after
    /// [`Server::handle_timeout`] ran for it): the 5-tuple index agrees with
    /// the table, every allocation's relays belong to it, no allocation
    /// outlived its lifetime by more than the timer's one-second tick, and
    /// the gauges match what is stored. For tests and fuzzing; costs a walk
    /// of the whole table.
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
        }
        if relays != self.pool.in_use() {
            return Err(format!("{relays} relays held by allocations, pool says {}", self.pool.in_use()));
        }
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

/// Writes the ChannelData header in the 4 bytes before `payload` (and zero
/// padding after it on streams); returns the frame's range.
#[inline]
fn frame_channel_data(buf: &mut [u8], payload: Range<usize>, number: u16, stream: bool) -> Option<Range<usize>> {
    let start = payload.start.checked_sub(CHANNEL_DATA_HEADER_LEN)?;
    let len = u16::try_from(payload.len()).ok()?;
    let end = if stream { start + channel_data::stream_len(payload.len()) } else { payload.end };
    buf.get_mut(payload.end..end)?.fill(0);
    channel_data::write_header(&mut buf[start..], number, len).ok()?;
    Some(start..end)
}

/// Writes a Data indication header (XOR-PEER-ADDRESS, DATA) before
/// `payload` and its padding after; returns the message's range.
fn frame_data_indication(
    buf: &mut [u8],
    payload: Range<usize>,
    peer: SocketAddr,
    tid: TransactionId,
) -> Option<Range<usize>> {
    let mut head = [0u8; PEER_HEADROOM];
    let ty = MessageType::new(Class::Indication, Method::DATA);
    let mut b = MessageBuilder::new(&mut head, ty, tid).ok()?;
    b.add(&Attribute::XorPeerAddress(peer)).ok()?;
    let hlen = b.finish();
    let total_head = hlen + 4;
    let start = payload.start.checked_sub(total_head)?;
    let padded = payload.len().next_multiple_of(4);
    let end = payload.start + padded;
    let body_len = u16::try_from(end - start - HEADER_LEN).ok()?;
    buf.get_mut(payload.end..end)?.fill(0);
    buf[start..start + hlen].copy_from_slice(&head[..hlen]);
    buf[start + 2..start + 4].copy_from_slice(&body_len.to_be_bytes());
    buf[start + hlen..start + hlen + 2].copy_from_slice(&AttributeType::DATA.0.to_be_bytes());
    buf[start + hlen + 2..start + hlen + 4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    Some(start..end)
}

/// Whose quota an allocation counts against: for TURN REST usernames
/// (`expiry:user`) the user, not the credential, so that a user cannot
/// escape the per-user limit by fetching fresh credentials.
fn quota_identity(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, user)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => user,
        _ => username,
    }
}

/// The reason phrase for an error code (RFC 8489 §14.8, RFC 8656 §19).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}
