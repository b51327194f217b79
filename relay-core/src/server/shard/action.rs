//! What the server asks of the I/O layer: the actions that answer a
//! packet, and events that are not a packet.

use std::net::SocketAddr;
use std::ops::Range;

use super::super::relays::RelayId;
use super::super::table::Client;
use crate::wire::HEADER_LEN;

/// Headroom a peer packet needs in front of its payload so that the server
/// can frame it for the client in place: the largest Data indication header
/// (20-byte STUN header, XOR-PEER-ADDRESS for IPv6, DATA attribute header).
pub const PEER_HEADROOM: usize = HEADER_LEN + 4 + 20 + 4;

/// Tailroom after a peer payload: padding to a multiple of 4.
pub const PEER_TAILROOM: usize = 3;

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
    /// hand `packet[payload]` to [`Server::handle_peer`](super::Server::handle_peer) as a datagram from
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
    /// From now on the kernel fast path may relay ChannelData on
    /// `channel` from `client` to `peer` via `relay`, and UDP from `peer`
    /// to `relay` back to `client` as ChannelData on `channel`. The entry
    /// has no expiry of its own: it stands until the matching
    /// [`Event::FastPathRemove`]. Only with
    /// [`ServerConfig::fast_path`](super::ServerConfig::fast_path).
    FastPathInstall(FastEntry),
    /// The kernel fast path must stop relaying for this entry: delete it
    /// (its channel or permission expired, or the allocation ended; the
    /// removals of an allocation come before its
    /// [`Event::RelayReleased`]).
    FastPathRemove(FastEntry),
}

/// A channel the kernel fast path may relay (see
/// [`Event::FastPathInstall`]): a UDP client's channel to a peer, and the
/// relay that serves the peer's address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastEntry {
    /// The client (always UDP): the 5-tuple ChannelData comes from and
    /// goes back to.
    pub client: Client,
    /// The channel number.
    pub channel: u16,
    /// The allocation's relay of the peer's address family: what the
    /// ChannelData is sent from to the peer, and what the peer sends to.
    pub relay: RelayId,
    /// The peer the channel is bound to.
    pub peer: SocketAddr,
    /// The peer is one of the server's relay addresses: only then may a
    /// datagram to it go straight to another allocation's client (relay
    /// to relay), which the kernel then looks for.
    pub peer_is_relay: bool,
}
