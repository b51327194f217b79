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
