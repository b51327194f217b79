//! The relay path: ChannelData and Send indications from clients, datagrams
//! from peers, and the framing of peer data for clients — in place, in the
//! caller's buffer. Nothing here allocates.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use super::{ClientAction, PEER_HEADROOM, PeerAction, Server};
use crate::server::relays::RelayId;
use crate::server::stats::{Direction, Drop};
use crate::server::table::Client;
use crate::wire::channel_data::{self, CHANNEL_DATA_HEADER_LEN};
use crate::wire::{
    Attribute, AttributeType, Class, HEADER_LEN, Message, MessageBuilder, MessageType, Method, TransactionId,
};

impl Server {
    /// ChannelData from a client: to the channel's peer.
    pub(super) fn client_channel_data(&mut self, now: Instant, client: &Client, packet: &[u8]) -> ClientAction {
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
        a.traffic.add(Direction::ToPeer, 1, u64::from(len));
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

    /// A Send indication from a client: its DATA to its XOR-PEER-ADDRESS.
    pub(super) fn send_indication(&mut self, now: Instant, client: &Client, msg: &Message<'_>) -> ClientAction {
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
        // Permissions are by IP, the policy by address: the port decides on
        // our own IPs (relay addresses, or what the operator allows) and
        // for listener ports (a host address the server did not know of).
        if !self.policy.permits(peer) {
            self.stats.drop(Drop::DeniedPeer);
            return ClientAction::None;
        }
        if !a.bucket.allow(now, data.value.len()) {
            self.stats.drop(Drop::Bandwidth);
            return ClientAction::None;
        }
        a.traffic.add(Direction::ToPeer, 1, data.value.len() as u64);
        self.stats.relayed(Direction::ToPeer, client.transport, data.value.len());
        let start = data.offset + 4;
        self.route(relay, peer, start..start + data.value.len())
    }

    /// Handles `buf[payload]`, a datagram from `peer` on relay `relay`. When
    /// the peer is permitted, the payload is framed for the client in place:
    /// the header goes into the [`PEER_HEADROOM`] bytes before
    /// `payload.start` and up to [`PEER_TAILROOM`](super::PEER_TAILROOM) padding bytes after it, so
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
        if payload.end > buf.len() {
            self.stats.drop(Drop::TooLarge);
            return PeerAction::None;
        }
        let Ok((id, client, framing)) = self.peer_route(now, relay, peer, Some(payload.len())) else {
            return PeerAction::None;
        };
        let stream = client.transport.is_stream();
        let frame = match framing {
            Framing::Channel(number) => frame_channel_data(buf, payload.clone(), number, stream),
            Framing::Indication(peer) => frame_data_indication(buf, payload.clone(), peer, self.rng.tid()),
        };
        self.framed(id, client, framing, payload.len(), frame.map(|frame| PeerAction::Forward { client, frame }))
            .unwrap_or(PeerAction::None)
    }

    /// [`Server::handle_peer`] for a datagram of `len` bytes that has no
    /// headroom of its own — a segment after the first of a buffer the
    /// kernel coalesced (UDP GRO), whose bytes in front belong to the
    /// segment before it. The same checks and counting; the header is
    /// written at the end of `head` (where [`PEER_HEADROOM`] in front of
    /// the payload would have held it), and the frame is `head[head]`, the
    /// payload where it lies, then `pad` zero bytes.
    pub fn handle_peer_segment(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        len: usize,
        head: &mut [u8; PEER_HEADROOM],
    ) -> PeerSegment {
        match self.route_peer(now, relay, peer) {
            Ok(route) => self.frame_routed(now, &route, len, head),
            Err(_) => PeerSegment::None,
        }
    }

    /// The part of [`Server::handle_peer_segment`] that every datagram of
    /// one coalesced receive on `relay` from `peer` shares — the owner, the
    /// own-address mapping, the permission, the channel — done once for
    /// the burst; each datagram then goes through
    /// [`Server::frame_routed`]. A refusal is counted once, here: the
    /// caller counts it for the burst's other datagrams
    /// ([`Server::count_drop`]).
    pub fn route_peer(&mut self, now: Instant, relay: RelayId, peer: SocketAddr) -> Result<PeerRoute, Drop> {
        let (id, client, framing) = self.peer_route(now, relay, peer, None)?;
        Ok(PeerRoute { id, client, framing })
    }

    /// One datagram of `len` bytes of a burst routed by
    /// [`Server::route_peer`] (at the same `now`, with nothing else handled
    /// in between): the bandwidth cap, the header into `head`, the
    /// counting — as [`Server::handle_peer_segment`] does.
    pub fn frame_routed(
        &mut self,
        now: Instant,
        route: &PeerRoute,
        len: usize,
        head: &mut [u8; PEER_HEADROOM],
    ) -> PeerSegment {
        let PeerRoute { id, client, framing } = *route;
        let Some(a) = self.table.allocs.get_mut(id as usize).filter(|a| a.client == client) else {
            self.stats.drop(Drop::NoAllocation);
            return PeerSegment::None;
        };
        if !a.bucket.allow(now, len) {
            self.stats.drop(Drop::Bandwidth);
            return PeerSegment::None;
        }
        let stream = client.transport.is_stream();
        let header = match framing {
            Framing::Channel(number) => channel_data_header(head, number, len, stream),
            Framing::Indication(peer) => data_indication_header(head, len, peer, self.rng.tid()),
        };
        let segment =
            header.map(|(start, pad)| PeerSegment::Forward { client, head: start..PEER_HEADROOM, pad: pad as u8 });
        self.framed(id, client, framing, len, segment).unwrap_or_default()
    }

    /// Counts a framed peer datagram (or one too large to frame), for the
    /// shard and for allocation `id`.
    #[inline]
    fn framed<T>(&mut self, id: u32, client: Client, framing: Framing, len: usize, framed: Option<T>) -> Option<T> {
        match framed {
            Some(t) => {
                if matches!(framing, Framing::Indication(_)) {
                    self.stats.data_indications += 1;
                }
                if let Some(a) = self.table.allocs.get_mut(id as usize) {
                    a.traffic.add(Direction::ToClient, 1, len as u64);
                }
                self.stats.relayed(Direction::ToClient, client.transport, len);
                Some(t)
            }
            None => {
                self.stats.drop(Drop::TooLarge);
                None
            }
        }
    }

    /// The checks a peer datagram passes (an owner, an own-address source
    /// mapped to what permissions name, a permission and, given its
    /// length, the bandwidth cap), counting a refusal: the allocation, its
    /// client, and how the datagram is framed. Without a length (a burst
    /// routed once) the cap is left to [`Server::frame_routed`].
    #[inline]
    fn peer_route(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        len: Option<usize>,
    ) -> Result<(u32, Client, Framing), Drop> {
        let refuse = |s: &mut Self, d: Drop| {
            s.stats.drop(d);
            Err(d)
        };
        let Some(id) = self.pool.owner(relay) else {
            return refuse(self, Drop::NoAllocation);
        };
        // From one of our own IPs: another allocation's relay (seen as its
        // advertised address, which is what a permission names), or a port
        // the operator allows; anything else on the host is not a peer.
        let own = self.policy.own();
        let peer = if own.is_own_ip(peer.ip()) {
            match own.relay(peer) {
                Some(r) => r.advertised,
                None if self.policy.permits(peer) => peer,
                None => return refuse(self, Drop::DeniedPeer),
            }
        } else {
            peer
        };
        let Some(a) = self.table.allocs.get_mut(id as usize) else {
            return refuse(self, Drop::NoAllocation);
        };
        if !a.permits(peer.ip(), now) {
            return refuse(self, Drop::NoPermission);
        }
        if let Some(len) = len
            && !a.bucket.allow(now, len)
        {
            return refuse(self, Drop::Bandwidth);
        }
        let framing = match a.channel_of(&peer, now) {
            Some(number) => Framing::Channel(number),
            None => Framing::Indication(peer),
        };
        Ok((id, a.client, framing))
    }
}

/// What every datagram of a peer's coalesced burst shares, found once by
/// [`Server::route_peer`]: the allocation, its client, and how the
/// datagrams are framed.
#[derive(Clone, Copy, Debug)]
pub struct PeerRoute {
    id: u32,
    client: Client,
    framing: Framing,
}

/// How a peer's datagram is framed for its client.
#[derive(Clone, Copy, Debug)]
enum Framing {
    /// ChannelData on this channel.
    Channel(u16),
    /// A Data indication from this peer.
    Indication(SocketAddr),
}

/// What to do with a peer's datagram that has no headroom of its own (see
/// [`Server::handle_peer_segment`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerSegment {
    /// Nothing (dropped).
    #[default]
    None,
    /// Send `head[head]`, the payload, then `pad` zero bytes to `client`.
    Forward {
        /// The client to send to.
        client: Client,
        /// The header's range within the `head` array.
        head: Range<usize>,
        /// Zero bytes after the payload (a Data indication's padding, or
        /// ChannelData's on streams).
        pad: u8,
    },
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

/// The ChannelData header for a `len`-byte payload, at the end of `head`:
/// where it starts, and the padding that follows the payload.
#[inline]
fn channel_data_header(
    head: &mut [u8; PEER_HEADROOM],
    number: u16,
    len: usize,
    stream: bool,
) -> Option<(usize, usize)> {
    let start = PEER_HEADROOM - CHANNEL_DATA_HEADER_LEN;
    let n = u16::try_from(len).ok()?;
    channel_data::write_header(&mut head[start..], number, n).ok()?;
    let pad = if stream { channel_data::stream_len(len) - CHANNEL_DATA_HEADER_LEN - len } else { 0 };
    Some((start, pad))
}

/// A Data indication's header (XOR-PEER-ADDRESS, DATA) for a `len`-byte
/// payload, at the end of `head`: where it starts, and the padding that
/// follows the payload.
fn data_indication_header(
    head: &mut [u8; PEER_HEADROOM],
    len: usize,
    peer: SocketAddr,
    tid: TransactionId,
) -> Option<(usize, usize)> {
    let mut msg = [0u8; PEER_HEADROOM];
    let ty = MessageType::new(Class::Indication, Method::DATA);
    let mut b = MessageBuilder::new(&mut msg, ty, tid).ok()?;
    b.add(&Attribute::XorPeerAddress(peer)).ok()?;
    let hlen = b.finish();
    let total_head = hlen + 4;
    let start = PEER_HEADROOM.checked_sub(total_head)?;
    let padded = len.next_multiple_of(4);
    let body_len = u16::try_from(total_head + padded - HEADER_LEN).ok()?;
    let data_len = u16::try_from(len).ok()?;
    head[start..start + hlen].copy_from_slice(&msg[..hlen]);
    head[start + 2..start + 4].copy_from_slice(&body_len.to_be_bytes());
    head[start + hlen..start + hlen + 2].copy_from_slice(&AttributeType::DATA.0.to_be_bytes());
    head[start + hlen + 2..PEER_HEADROOM].copy_from_slice(&data_len.to_be_bytes());
    Some((start, padded - len))
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
    let (hstart, pad) = data_indication_header(&mut head, payload.len(), peer, tid)?;
    let hlen = PEER_HEADROOM - hstart;
    let start = payload.start.checked_sub(hlen)?;
    let end = payload.end + pad;
    buf.get_mut(payload.end..end)?.fill(0);
    buf[start..payload.start].copy_from_slice(&head[hstart..]);
    Some(start..end)
}
