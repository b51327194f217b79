//! Egress: the one place where the server's actions become sends.
//!
//! [`relay_core::server::Server`] answers every packet with a
//! [`ClientAction`] or a [`PeerAction`]; this module turns that answer into
//! at most one [`Transmit`]: which socket (a UDP socket of the shard, or a
//! stream connection's send queue), to whom, and which bytes of which
//! buffer. The io_uring and portable backends and the stream connections
//! all go through it, and keep only how a transmit leaves (an io_uring
//! SendMsg, a `sendmmsg` batch, a stream's send queue). An in-shard
//! hand-over ([`ClientAction::Deliver`]) is carried out here too: the
//! receiving allocation's [`Server::handle_peer`] runs on the same bytes —
//! in place where the packet sits behind [`PEER_HEADROOM`] (the UDP
//! backends receive it there), in a copy behind that headroom where it
//! does not (a frame in a stream's read buffer).
//!
//! Nothing here copies a relayed payload that the backends did not copy
//! before: a client's payload to a peer is sent from the receive buffer, a
//! peer's payload to a client is framed in place, and the socket lookups
//! are the ones the backends made themselves (the relay's socket by index,
//! the client's listener by address). [`client`], [`peer`] and
//! [`crate::shard::ShardState::on_datagram`] are `#[inline(always)]`: run
//! once per packet, they belong inside each backend's receive loop, as the
//! dispatch they replace was (left to LLVM, they were not inlined, at about
//! 4% more instructions per relayed packet; inlined, under 2%).

use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::Instant;

use relay_core::server::{ClientAction, PEER_HEADROOM, PEER_TAILROOM, PeerAction, PeerSegment, Server};

use crate::shard::UdpSockets;

/// Largest control response written (the reply buffer handed to
/// [`Server::handle_client`]).
pub const REPLY_LEN: usize = 1500;

/// Where a transmit leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// From UDP socket `fd` of the shard (a listener or a relay socket) to
    /// `dest`.
    Udp {
        /// The socket.
        fd: RawFd,
        /// The destination.
        dest: SocketAddr,
    },
    /// Onto stream connection `conn`'s send queue (TURN over TCP or TLS).
    Stream {
        /// The connection (the [`relay_core::server::Client::conn`] handle).
        conn: u32,
    },
}

/// Which buffer holds a transmit's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    /// The buffer the packet arrived in: a UDP backend's receive buffer
    /// (with headroom), or the stream frame itself.
    Packet,
    /// The reply buffer handed to [`Server::handle_client`].
    Reply,
    /// The hand-over copy a stream frame's [`ClientAction::Deliver`] was
    /// framed in (see [`Packet::Framed`]).
    Handover,
}

/// One datagram or stream write to make: the unit every backend sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where it leaves.
    pub via: Via,
    /// Which buffer holds it.
    pub buf: Buf,
    /// Its bytes within that buffer.
    pub range: Range<usize>,
    /// Header bytes that go in front of `range`, from the end of the
    /// segment's side header area (a coalesced segment framed out of
    /// place: [`Packet::Segment`]); 0 when the frame lies whole in `range`.
    pub head: u8,
    /// Zero bytes that follow `range` (with `head`).
    pub pad: u8,
}

impl Transmit {
    /// A transmit of `buf[range]`, whole.
    #[inline]
    pub fn new(via: Via, buf: Buf, range: Range<usize>) -> Transmit {
        Transmit { via, buf, range, head: 0, pad: 0 }
    }

    /// Relayed data (shed when a stream client reads too slowly) rather
    /// than a control response (never shed).
    #[inline]
    pub fn is_relayed(&self) -> bool {
        self.buf != Buf::Reply
    }
}

/// Where a client's packet lies, which decides how a
/// [`ClientAction::Deliver`] is framed.
pub enum Packet<'b> {
    /// `buf[at..]`, received behind [`PEER_HEADROOM`] with
    /// [`PEER_TAILROOM`] to spare at the end (the UDP backends): handed
    /// over in place, and the transmit's bytes are in `buf` ([`Buf::Packet`]).
    InPlace {
        /// The whole receive buffer.
        buf: &'b mut [u8],
        /// Where the packet starts in it (`PEER_HEADROOM`).
        at: usize,
    },
    /// A stream frame with no room around it: handed over in a copy behind
    /// the headroom in `handover` (grown on first use), and the transmit's
    /// bytes are there ([`Buf::Handover`]); a forward's are in `frame`.
    Framed {
        /// The frame.
        frame: &'b [u8],
        /// The hand-over buffer.
        handover: &'b mut Vec<u8>,
    },
    /// A segment of a coalesced (GRO) receive at `at` of its buffer, with
    /// no headroom of its own (the bytes in front are the segment before
    /// it): a hand-over is framed out of place
    /// ([`Server::handle_peer_segment`]), its header written into `head`
    /// (the transmit's [`Transmit::head`]), its payload sent where it lies.
    Segment {
        /// Where the segment starts in its buffer.
        at: usize,
        /// The segment's side header area.
        head: &'b mut [u8; PEER_HEADROOM],
    },
}

/// Carries out `action`, the server's answer to a client's packet: returns
/// what to send, if anything. `reply_to` is where a reply goes (the
/// listener the datagram came in on, or the client's stream). A
/// [`ClientAction::Deliver`] is handed to the receiving allocation here
/// ([`Server::handle_peer`]) and its [`PeerAction`] carried out as [`peer`]
/// does.
#[inline(always)]
pub fn client(
    server: &mut Server,
    now: Instant,
    udp: &UdpSockets,
    reply_to: Via,
    action: ClientAction,
    packet: Packet<'_>,
) -> Option<Transmit> {
    match action {
        ClientAction::None => None,
        ClientAction::Reply { len } => Some(Transmit::new(reply_to, Buf::Reply, 0..len)),
        // RFC 5780: from the listener that owns `local`. The server returns
        // it for UDP clients only (a stream client's address change is
        // answered with 420).
        ClientAction::ReplyFrom { local, to, len } => match reply_to {
            Via::Udp { .. } => {
                Some(Transmit::new(Via::Udp { fd: udp.listener_fd(local)?, dest: to }, Buf::Reply, 0..len))
            }
            Via::Stream { .. } => None,
        },
        // The payload leaves from where it arrived, uncopied.
        ClientAction::Forward { relay, peer, payload } => {
            let at = match packet {
                Packet::InPlace { at, .. } | Packet::Segment { at, .. } => at,
                Packet::Framed { .. } => 0,
            };
            let via = Via::Udp { fd: udp.relay_fd(relay)?, dest: peer };
            Some(Transmit::new(via, Buf::Packet, at + payload.start..at + payload.end))
        }
        // Another allocation of this shard: on as peer data.
        ClientAction::Deliver { relay, from, payload } => match packet {
            Packet::InPlace { buf, at } => {
                let action = server.handle_peer(now, relay, from, buf, at + payload.start..at + payload.end);
                self::peer(udp, action, Buf::Packet)
            }
            Packet::Framed { frame, handover } => {
                let data = &frame[payload];
                // As from the network: a relay socket takes no more.
                if data.len() > udp.max_datagram {
                    return None;
                }
                handover.resize(PEER_HEADROOM + data.len() + PEER_TAILROOM + 1, 0);
                handover[PEER_HEADROOM..PEER_HEADROOM + data.len()].copy_from_slice(data);
                let range = PEER_HEADROOM..PEER_HEADROOM + data.len();
                let action = server.handle_peer(now, relay, from, handover, range);
                self::peer(udp, action, Buf::Handover)
            }
            Packet::Segment { at, head } => {
                let segment = server.handle_peer_segment(now, relay, from, payload.len(), head);
                peer_segment(udp, segment, at + payload.start..at + payload.end)
            }
        },
    }
}

/// Carries out `action`, the server's answer to peer data framed in
/// `buf`: to the client's listener for a UDP client, onto its connection's
/// send queue for a stream client.
#[inline(always)]
pub fn peer(udp: &UdpSockets, action: PeerAction, buf: Buf) -> Option<Transmit> {
    match action {
        PeerAction::None => None,
        PeerAction::Forward { client, frame } => Some(Transmit::new(to_client(udp, &client)?, buf, frame)),
    }
}

/// Carries out `segment`, the server's answer to peer data `payload` of a
/// coalesced segment framed out of place ([`Server::handle_peer_segment`]):
/// the header from the segment's side area, the payload where it lies.
#[inline(always)]
pub fn peer_segment(udp: &UdpSockets, segment: PeerSegment, payload: Range<usize>) -> Option<Transmit> {
    match segment {
        PeerSegment::None => None,
        PeerSegment::Forward { client, head, pad } => Some(Transmit {
            via: to_client(udp, &client)?,
            buf: Buf::Packet,
            range: payload,
            head: head.len() as u8,
            pad,
        }),
    }
}

/// How data reaches a client: its listener for UDP, its connection's
/// send queue for a stream.
#[inline(always)]
fn to_client(udp: &UdpSockets, client: &relay_core::server::Client) -> Option<Via> {
    Some(if client.transport.is_stream() {
        Via::Stream { conn: client.conn }
    } else {
        Via::Udp { fd: udp.listener_fd(client.local)?, dest: client.remote }
    })
}
