//! What a shard owns whatever the backend: the sans-IO server, its sockets,
//! and the control channel from other threads.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use relay_core::server::stats::{Drop, Stats};
use relay_core::server::{Client, Event, PEER_HEADROOM, PeerRoute, RelayId, Server};

use crate::egress::{self, Buf, Packet, Transmit, Via};
use crate::gso::GsoStats;
use crate::stream::Streams;
use crate::sys::{self, EventFd};

/// Which backend a shard runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring with provided buffer rings and multishot receives.
    IoUring,
    /// epoll with recvmmsg/sendmmsg batching.
    Portable,
}

impl BackendKind {
    /// A short name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Portable => "portable",
        }
    }
}

/// A shard's answer to a stats request.
#[derive(Clone, Debug)]
pub struct ShardReport {
    /// The shard's index.
    pub shard: usize,
    /// Its counters.
    pub stats: Stats,
    /// Allocations alive.
    pub allocations: usize,
    /// Relay addresses free for new allocations.
    pub relays_free: usize,
    /// Relay addresses resting in quarantine.
    pub relays_quarantined: usize,
    /// Datagrams the kernel refused to send (full buffers, unreachable).
    pub send_failures: u64,
    /// The backend it runs.
    pub backend: BackendKind,
    /// TCP connection counters.
    pub streams: crate::stream::StreamStats,
    /// Turns of the shard's event loop so far (a stalled shard stops
    /// counting).
    pub loop_turns: u64,
    /// Batched UDP counters (GSO sends, GRO receives, fallbacks).
    pub udp: GsoStats,
    /// Kernel fast path entries (zeros without one).
    pub fast_path: crate::fastpath::ShardFastStats,
}

/// The operator's peer lists that [`Control::SetPeerLists`] carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerLists {
    /// Networks allowed even though the default policy denies them.
    pub allow: Vec<ipnet::IpNet>,
    /// Networks denied in addition to the default list.
    pub deny: Vec<ipnet::IpNet>,
}

/// Messages to a shard from other threads.
#[derive(Debug)]
pub enum Control {
    /// Send a [`ShardReport`] back.
    Stats(Sender<ShardReport>),
    /// Stop taking allocations; exit when none is left or at the deadline.
    Drain(Instant),
    /// Exit now.
    Stop,
    /// Replace the credentials (SIGHUP reload); allocations are kept.
    SetCredentials(Box<relay_core::server::auth::Credentials>),
    /// Replace the TLS certificate for new connections.
    SetTls(std::sync::Arc<rustls::ServerConfig>),
    /// Send the shard's allocations (of `user` only, when given) back:
    /// the admin API's list.
    Allocations {
        /// Only this user's.
        user: Option<String>,
        /// Where the list goes.
        reply: Sender<Vec<relay_core::server::AllocationInfo>>,
    },
    /// End allocations as a Refresh 0 does (the admin API), and send back
    /// how many ended.
    End {
        /// Which.
        which: relay_core::server::Ending,
        /// Where the count goes.
        reply: Sender<usize>,
    },
    /// Replace the operator's peer allow and deny lists (a user database's
    /// refresh); the shards share one copy.
    SetPeerLists(std::sync::Arc<PeerLists>),
    /// Replace the nonce issuer (a reload that changed the shared nonce
    /// secret).
    SetNonces(Box<relay_core::server::auth::NonceIssuer>),
}

/// What a socket of the shard is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockKind {
    /// A client-facing listener on this local address.
    Listener(SocketAddr),
    /// A relay socket.
    Relay(RelayId),
}

/// One socket of the shard.
#[derive(Debug)]
pub struct Sock {
    /// The socket.
    pub socket: UdpSocket,
    /// Its role.
    pub kind: SockKind,
}

/// The shard's UDP sockets: client-facing listeners first, then relay
/// sockets, and which socket each relay id has.
#[derive(Debug, Default)]
pub struct UdpSockets {
    /// Listeners first, then relay sockets.
    pub socks: Vec<Sock>,
    /// Socket index of each relay id.
    pub relay_sock: Vec<usize>,
    /// Largest datagram relayed (`IoConfig::max_datagram`): what a relay
    /// socket receives at most, and so the most a stream frame handed to
    /// another allocation in-process may carry.
    pub max_datagram: usize,
}

impl UdpSockets {
    /// The descriptor of a relay's socket.
    #[inline]
    pub fn relay_fd(&self, relay: RelayId) -> Option<RawFd> {
        self.relay_sock.get(relay.index()).map(|&i| self.socks[i].socket.as_raw_fd())
    }

    /// The listener for a client's local address.
    #[inline]
    pub fn listener_fd(&self, local: SocketAddr) -> Option<RawFd> {
        self.socks.iter().find(|s| s.kind == SockKind::Listener(local)).map(|s| s.socket.as_raw_fd())
    }
}

/// A datagram that arrived on one of the shard's UDP sockets.
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    /// The socket it arrived on.
    pub fd: RawFd,
    /// That socket's role.
    pub kind: SockKind,
    /// The sender.
    pub from: SocketAddr,
    /// Its length (it lies at [`PEER_HEADROOM`] of its buffer).
    pub len: usize,
}

/// Where a segment of a coalesced receive lies (see
/// [`ShardState::on_segment`]).
pub struct Segment<'b> {
    /// The whole receive buffer.
    pub buf: &'b [u8],
    /// Where the segment starts in it.
    pub at: usize,
    /// The segment's side header area: a header framed out of place goes
    /// there.
    pub head: &'b mut [u8; PEER_HEADROOM],
}

/// A shard's state, shared by both backends.
pub struct ShardState {
    /// The shard's index.
    pub index: usize,
    /// The sans-IO server.
    pub server: Server,
    /// Its UDP sockets.
    pub udp: UdpSockets,
    /// Control messages from other threads.
    pub control: Receiver<Control>,
    /// Wakes the shard when a control message is sent.
    pub wake: Arc<EventFd>,
    /// Drain deadline, once draining.
    pub draining: Option<Instant>,
    /// Set when the shard should exit.
    pub stop: bool,
    /// Datagrams the kernel refused.
    pub send_failures: u64,
    /// Relay sockets currently set to Don't Fragment.
    pub df: Vec<bool>,
    /// TCP listeners and client connections.
    pub streams: Streams,
    /// When housekeeping last ran.
    pub last_housekeeping: Instant,
    /// Event loop turns (see [`ShardReport::loop_turns`]).
    pub loop_turns: u64,
    /// Batched UDP: what the shard's sockets may use.
    pub batching: Batching,
    /// Batched UDP counters, as the backend last left them.
    pub udp_stats: GsoStats,
    /// Scratch for a coalesced segment's frame to a stream client (the
    /// stream path copies the frame anyway).
    pub scratch: Vec<u8>,
    /// This shard's writer of kernel fast path entries, when one runs.
    pub fast: Option<crate::fastpath::ShardFastPath>,
}

/// Batched UDP settings of a shard (`IoConfig::gso`, `IoConfig::gro`, as
/// the kernel allowed them at start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batching {
    /// Send datagrams of one flow and size together, with `UDP_SEGMENT`.
    pub gso: bool,
    /// Receive coalesced datagrams (`UDP_GRO` on every UDP socket).
    pub gro: bool,
}

impl ShardState {
    /// Datagram `d` arrived into `buf` at [`PEER_HEADROOM`]: the server
    /// handles it (a client's packet, or a peer's) and [`egress`] says what
    /// to send, from `buf` or from `reply` (a client's response; unused for
    /// peer data). Both UDP backends receive through here.
    #[inline(always)]
    pub fn on_datagram(&mut self, now: Instant, d: Datagram, buf: &mut [u8], reply: &mut [u8]) -> Option<Transmit> {
        let Datagram { fd, kind, from, len } = d;
        // With GRO the buffers hold far more than the configured maximum:
        // larger datagrams are dropped here, as a smaller buffer cut them.
        if len > self.udp.max_datagram {
            self.server.count_drop(Drop::TooLarge);
            return None;
        }
        let packet = PEER_HEADROOM..PEER_HEADROOM + len;
        match kind {
            SockKind::Listener(local) => {
                let client = Client::udp(from, local);
                let action = self.server.handle_client(now, &client, &buf[packet], reply);
                let reply_to = Via::Udp { fd, dest: from };
                egress::client(
                    &mut self.server,
                    now,
                    &self.udp,
                    reply_to,
                    action,
                    Packet::InPlace { buf, at: PEER_HEADROOM },
                )
            }
            SockKind::Relay(relay) => {
                let action = self.server.handle_peer(now, relay, from, buf, packet);
                egress::peer(&self.udp, action, Buf::Packet)
            }
        }
    }

    /// Segment `d` (of `d.len` bytes at `seg.at` of `seg.buf`) of a buffer the
    /// kernel coalesced (UDP GRO): handled as the datagram it was, but
    /// with no headroom of its own, so what is framed for a client is
    /// framed out of place — its header into `head`, its payload sent
    /// where it lies ([`Transmit::head`]). `reply` takes a response to a
    /// client's request. `route` is the buffer's: `None` for its first
    /// segment; a peer's burst is routed once
    /// ([`relay_core::server::Server::route_peer`]), since every segment
    /// of it shares peer, relay and allocation.
    #[inline(always)]
    pub fn on_segment(
        &mut self,
        now: Instant,
        d: Datagram,
        seg: Segment<'_>,
        reply: &mut [u8],
        route: &mut Option<Result<PeerRoute, Drop>>,
    ) -> Option<Transmit> {
        let Datagram { fd, kind, from, len } = d;
        let Segment { buf, at, head } = seg;
        // As a datagram larger than the configured maximum: dropped.
        if len > self.udp.max_datagram {
            self.server.count_drop(Drop::TooLarge);
            return None;
        }
        let bytes = buf.get(at..at + len)?;
        match kind {
            SockKind::Listener(local) => {
                let client = Client::udp(from, local);
                let action = self.server.handle_client(now, &client, bytes, reply);
                let reply_to = Via::Udp { fd, dest: from };
                egress::client(&mut self.server, now, &self.udp, reply_to, action, Packet::Segment { at, head })
            }
            SockKind::Relay(relay) => {
                let routed = match *route {
                    Some(r) => {
                        if let Err(reason) = r {
                            // Refused for the burst: counted per datagram.
                            self.server.count_drop(reason);
                        }
                        r
                    }
                    None => *route.insert(self.server.route_peer(now, relay, from)),
                };
                let segment = self.server.frame_routed(now, &routed.ok()?, len, head);
                egress::peer_segment(&self.udp, segment, at..at + len)
            }
        }
    }

    /// Queues a segment's frame — `head`'s last `tx.head` bytes, `buf[tx.range]`,
    /// `tx.pad` zeros — for stream connection `conn`.
    pub fn deliver_stream_segment(
        &mut self,
        conn: u32,
        tx: &Transmit,
        buf: &[u8],
        head: &[u8; PEER_HEADROOM],
        now: Instant,
    ) {
        let mut frame = std::mem::take(&mut self.scratch);
        frame.clear();
        frame.extend_from_slice(&head[PEER_HEADROOM - usize::from(tx.head)..]);
        frame.extend_from_slice(&buf[tx.range.clone()]);
        frame.resize(frame.len() + usize::from(tx.pad), 0);
        self.streams.deliver(conn, &frame, now, &mut self.server);
        self.scratch = frame;
    }

    /// Handles pending control messages.
    pub fn handle_control(&mut self, backend: BackendKind) {
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::Stats(reply) => {
                    // The kernel's counts up to now, so that a report is exact.
                    self.credit_fast_path();
                    let (free, quarantined) = self.server.relays_free();
                    let _ = reply.send(ShardReport {
                        shard: self.index,
                        stats: self.server.stats().clone(),
                        allocations: self.server.allocation_count(),
                        relays_free: free,
                        relays_quarantined: quarantined,
                        send_failures: self.send_failures + self.streams.stats.send_failures,
                        streams: self.streams.stats,
                        loop_turns: self.loop_turns,
                        udp: {
                            let mut u = self.udp_stats;
                            u.add(&self.streams.udp_stats());
                            u
                        },
                        backend,
                        fast_path: self.fast.as_ref().map(|f| f.stats()).unwrap_or_default(),
                    });
                }
                Control::Drain(deadline) => {
                    self.server.set_accepting(false);
                    self.draining = Some(deadline);
                }
                Control::Stop => self.stop = true,
                Control::SetCredentials(c) => self.server.set_credentials(*c),
                Control::SetTls(c) => self.streams.set_tls_config(c),
                Control::Allocations { user, reply } => {
                    // The kernel's counts up to now, so that the list is exact.
                    self.credit_fast_path();
                    let _ = reply.send(self.server.allocations(Instant::now(), user.as_deref()));
                }
                Control::End { which, reply } => {
                    let ended = self.server.end(Instant::now(), &which);
                    // Kernel entries and socket settings go now, not a turn later.
                    self.apply_events();
                    let _ = reply.send(ended);
                }
                Control::SetPeerLists(l) => self.server.set_peer_lists(&l.allow, &l.deny),
                Control::SetNonces(n) => self.server.set_nonces(*n),
            }
        }
    }

    /// Applies the server's events to the sockets (DF bit on relays) and
    /// to the kernel fast path's entries.
    pub fn apply_events(&mut self) {
        while let Some(e) = self.server.poll_event() {
            let (relay, on) = match e {
                Event::RelayOpened { relay, dont_fragment } => (relay, dont_fragment),
                Event::RelayReleased { relay } => (relay, false),
                Event::FastPathInstall(entry) => {
                    self.install_fast(&entry);
                    continue;
                }
                Event::FastPathRemove(entry) => {
                    if let Some(fast) = self.fast.as_mut() {
                        let (to_peer, to_client) = fast.remove(&entry);
                        self.server.credit_fast_entry(&entry, to_peer, to_client);
                    }
                    continue;
                }
            };
            let Some(&i) = self.udp.relay_sock.get(relay.index()) else { continue };
            if self.df[relay.index()] != on {
                let s = &self.udp.socks[i].socket;
                let v6 = s.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
                if sys::set_dont_fragment(s.as_raw_fd(), v6, on).is_ok() {
                    self.df[relay.index()] = on;
                }
            }
        }
    }

    /// Credits the server (and each entry's allocation) with what the
    /// kernel fast path relayed since the last look.
    fn credit_fast_path(&mut self) {
        if let Some(fast) = self.fast.as_mut() {
            let server = &mut self.server;
            fast.collect(|entry, (to_peer, to_client)| server.credit_fast_entry(entry, to_peer, to_client));
        }
    }

    /// Installs a channel binding in the kernel fast path, keyed by the
    /// sockets' bound addresses (what the kernel sees).
    fn install_fast(&mut self, entry: &relay_core::server::FastEntry) {
        let Some(fast) = self.fast.as_mut() else { return };
        let relay =
            self.udp.relay_sock.get(entry.relay.index()).and_then(|&i| self.udp.socks[i].socket.local_addr().ok());
        if let Some(relay) = relay {
            fast.install(entry, entry.client.local, relay);
        }
    }

    /// Handles ready stream listeners and connections.
    pub fn process_streams(&mut self, now: Instant) {
        self.streams.process(now, &mut self.server, &self.udp);
    }

    /// Sends a framed message to a stream client (shed when its queue is full).
    pub fn deliver_stream(&mut self, conn: u32, bytes: &[u8], now: Instant) {
        self.streams.deliver(conn, bytes, now, &mut self.server);
    }

    /// End of a loop turn (both backends call it once per turn, before
    /// they sleep): writes the turn's relayed stream data, counts the turn,
    /// and does the once-a-second housekeeping besides the server's timers.
    pub fn housekeeping(&mut self, now: Instant) {
        self.loop_turns += 1;
        self.streams.flush_relayed(now, &mut self.server);
        if now.saturating_duration_since(self.last_housekeeping) >= std::time::Duration::from_secs(1) {
            self.last_housekeeping = now;
            self.streams.expire(now, &mut self.server);
            self.credit_fast_path();
        }
    }

    /// Closes every stream connection (on exit).
    pub fn close_streams(&mut self, now: Instant) {
        // The last turn's relayed data goes out first (as far as the
        // sockets take it without waiting).
        self.streams.flush_relayed(now, &mut self.server);
        self.streams.close_all(now, &mut self.server);
    }

    /// True when the shard's loop should end.
    pub fn finished(&self, now: Instant) -> bool {
        self.stop || self.draining.is_some_and(|d| now >= d || self.server.allocation_count() == 0)
    }

    /// How long the loop may sleep: until the server's next timer, and at
    /// most a second, so that an idle shard still turns (housekeeping, the
    /// drain deadline, and a loop-turn count that shows it is alive).
    pub fn sleep_for(&self, now: Instant) -> std::time::Duration {
        let second = std::time::Duration::from_secs(1);
        self.server.next_timeout().map_or(second, |t| t.saturating_duration_since(now).min(second))
    }
}
