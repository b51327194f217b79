//! TURN over TCP and TLS (RFC 8656 §3.1): the shard's stream listeners and
//! client connections.
//!
//! Streams live in an epoll instance of their own, which either backend
//! watches as one descriptor (the portable loop nests it in its epoll; the
//! io_uring loop polls it with a multishot PollAdd), so both run this one
//! implementation. Relaying to peers is always UDP.
//!
//! A connection's protocol state — the framing of its read buffer, its
//! bounded send queue (relayed data shed when a client reads too slowly,
//! control responses never: a client that lets even those pile up past a
//! hard limit is disconnected), the batching of a loop turn's relayed
//! data, the TLS session and its record budget — is the sans-IO
//! [`conn::StreamConn`]. This module keeps the system calls around it:
//! accepting, the epoll registration and its writability interest, the
//! reads and writes on the socket, closing; and it carries the frames a
//! client sends to the server and what [`crate::egress`] makes of them.
//!
//! Behind an L4 load balancer (the PROXY protocol, v1 or v2): a connection
//! from a network in [`Streams::set_proxy_protocol_from`] must begin with a
//! PROXY header (before TLS, within [`StreamLimits::proxy_header_timeout`]),
//! and the client address it gives replaces the balancer's for everything
//! after — the address the server sees (XOR-MAPPED-ADDRESS, nonces, quotas,
//! peer policy) and the per-source connection limit, which counts the
//! clients behind a balancer, not the balancer. A LOCAL header (the
//! balancer's own health check) and one without addresses (v1 `UNKNOWN`,
//! v2 UNSPEC or UNIX) keep the balancer's address and are not counted per
//! source (the balancer is trusted, and its address is no client's: the
//! shard's connection limit still bounds them); one for a UDP client is
//! refused. A header naming a client another open connection of the shard
//! already is (the same address on the same listener: a NAT reusing a
//! port towards two balancers, or a forged header) is refused, as the
//! allocation's 5-tuple must name one connection; the check is one lookup
//! when the header comes. Each shard has its own connections and its own
//! allocations, so the same client on two shards (the kernel spreads
//! accepted connections over them) collides in neither. A connection from
//! elsewhere that begins with a header is refused, as is a trusted one
//! without a valid header; each is counted ([`StreamStats`]`::proxy_*`).

pub mod conn;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use relay_core::server::{Client, FiveTuple, Server, Transport};
use relay_core::wire::proxy;
use slab::Slab;

use crate::egress::{self, Buf, Packet, REPLY_LEN, Transmit, Via};
use crate::shard::UdpSockets;
use crate::sys::{self, Batch, Epoll, empty_event};
use conn::{PreambleOutcome, ProxyRefusal, Queued, ReadOutcome, StreamConn};

const LISTENER: u64 = 1 << 40;
/// Datagrams to peers gathered from client streams before one `sendmmsg`.
const TO_PEERS: usize = 64;
/// Largest payload gathered (larger ones are sent on their own).
const TO_PEER_SLOT: usize = 2048;
/// Stream settings.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Connections per shard.
    pub max_connections: usize,
    /// Connections per shard from one source IP address; 0 = no limit
    /// (one address cannot take every slot of a shard).
    pub max_per_source: usize,
    /// Queued relayed bytes per connection before relayed data is shed.
    pub send_queue: usize,
    /// Queued bytes at which a connection is closed (control included).
    pub send_queue_hard: usize,
    /// A connection without an allocation and without traffic for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// A TLS handshake not finished in this time is abandoned.
    pub handshake_timeout: Duration,
    /// A trusted balancer's connection whose PROXY header has not come
    /// whole in this time is closed.
    pub proxy_header_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_connections: 10_000,
            max_per_source: 1_000,
            send_queue: 256 << 10,
            send_queue_hard: 1 << 20,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            proxy_header_timeout: Duration::from_secs(5),
        }
    }
}

/// A client connection: its socket and its state.
struct Conn {
    sock: TcpStream,
    state: StreamConn,
    /// Counted in `per_source` under its client's address (a balancer's
    /// connection is counted once its PROXY header names the client).
    counted: bool,
}

/// Counters of the stream side.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamStats {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused (a limit reached: the shard's, or the source's;
    /// behind a balancer also once the PROXY header names a client at its
    /// limit, after the connection was accepted).
    pub refused: u64,
    /// Of those, refused because their source address held its limit.
    pub refused_per_source: u64,
    /// PROXY headers accepted from trusted balancers.
    pub proxy_accepted: u64,
    /// Trusted balancers' connections closed without a PROXY header (the
    /// first bytes were something else, or nothing came in time).
    pub proxy_missing: u64,
    /// Connections from outside the trusted networks closed for beginning
    /// with a PROXY header.
    pub proxy_untrusted: u64,
    /// Trusted balancers' connections closed for a broken PROXY header (or
    /// one cut short, or one for a UDP client).
    pub proxy_invalid: u64,
    /// Trusted balancers' connections closed for a PROXY header naming a
    /// client that another open connection of the shard already is.
    pub proxy_duplicate: u64,
    /// Connections closed for unframeable input.
    pub garbage: u64,
    /// Relayed frames shed because the client read too slowly.
    pub shed: u64,
    /// Relayed frames to peers that the kernel refused.
    pub send_failures: u64,
}

/// Gathers a datagram into `batch` (one sendmmsg for a read's frames and
/// other connections', instead of a sendto each); a large one leaves on
/// its own, after what is gathered, in order.
fn send_udp(batch: &mut Batch, len: &mut usize, stats: &mut StreamStats, fd: RawFd, dest: SocketAddr, data: &[u8]) {
    if data.len() <= TO_PEER_SLOT {
        let k = *len;
        batch.slot_and_reply(k).1[..data.len()].copy_from_slice(data);
        batch.send_reply(fd, dest, k, data.len());
        *len += 1;
        if *len == TO_PEERS {
            flush_udp(batch, len, stats);
        }
    } else {
        flush_udp(batch, len, stats);
        if sys::send_to(fd, data, dest).is_err() {
            stats.send_failures += 1;
        }
    }
}

fn flush_udp(batch: &mut Batch, len: &mut usize, stats: &mut StreamStats) {
    if *len > 0 {
        let (_, failed) = batch.flush();
        stats.send_failures += failed as u64;
        *len = 0;
    }
}

/// A shard's stream listeners and connections.
pub struct Streams {
    epoll: Epoll,
    /// Listeners, their address, and whether they speak TLS.
    listeners: Vec<(TcpListener, SocketAddr, bool)>,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: Slab<Conn>,
    /// Connections open per source address.
    per_source: HashMap<IpAddr, u32>,
    /// The connection each client (its 5-tuple) is: a direct one from its
    /// accept, a balancer's once its PROXY header came (empty without
    /// trusted balancers).
    by_client: HashMap<FiveTuple, usize>,
    /// Networks whose connections begin with a PROXY header.
    proxy_from: Vec<IpNet>,
    limits: StreamLimits,
    events: Vec<libc::epoll_event>,
    reply: Vec<u8>,
    /// Connections with relayed data queued this loop turn.
    dirty: Vec<usize>,
    /// Client frames bound for peers, sent together at the end of
    /// [`Streams::process`] (or when full).
    to_peers: Batch,
    to_peers_len: usize,
    /// A frame for another allocation of this shard, copied behind the
    /// headroom the server frames it in (allocated on first use).
    handover: Vec<u8>,
    /// Counters.
    pub stats: StreamStats,
}

impl Streams {
    /// Takes over bound, non-blocking listeners: `tcp` speak TURN over TCP,
    /// `tls` TURN over TLS with `tls_config`.
    pub fn new(
        tcp: Vec<TcpListener>,
        tls: Vec<TcpListener>,
        tls_config: Option<Arc<rustls::ServerConfig>>,
        limits: StreamLimits,
    ) -> io::Result<Streams> {
        let epoll = Epoll::new()?;
        let mut v = Vec::new();
        let all = tcp.into_iter().map(|l| (l, false)).chain(tls.into_iter().map(|l| (l, true)));
        for (i, (l, is_tls)) in all.enumerate() {
            let local = l.local_addr()?;
            epoll.add(l.as_raw_fd(), LISTENER | i as u64)?;
            v.push((l, local, is_tls));
        }
        Ok(Streams {
            epoll,
            listeners: v,
            tls: tls_config,
            conns: Slab::new(),
            per_source: HashMap::new(),
            by_client: HashMap::new(),
            proxy_from: Vec::new(),
            limits,
            events: vec![empty_event(); 128],
            reply: vec![0u8; REPLY_LEN],
            dirty: Vec::with_capacity(64),
            to_peers: Batch::new(TO_PEERS, 0, TO_PEER_SLOT),
            to_peers_len: 0,
            handover: Vec::new(),
            stats: StreamStats::default(),
        })
    }

    /// Lets the datagrams stream clients send to peers leave as GSO sends
    /// (a turn's frames from one connection to one peer, equal in size).
    pub fn set_gso(&mut self, on: bool) {
        self.to_peers.set_gso(on);
    }

    /// Batched UDP counters of those datagrams.
    pub fn udp_stats(&self) -> crate::gso::GsoStats {
        self.to_peers.gso_stats()
    }

    /// Connections from these networks (trusted load balancers) must
    /// begin with a PROXY header, whose client address is then theirs; see
    /// the [module documentation](self). Empty (the default): none may.
    pub fn set_proxy_protocol_from(&mut self, nets: Vec<IpNet>) {
        self.proxy_from = nets;
    }

    /// True when `ip` is in a trusted network (an IPv4-mapped IPv6
    /// address as the IPv4 address it is).
    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.proxy_from.iter().any(|n| n.contains(&ip))
    }

    /// Replaces the TLS certificate for new connections (a reload).
    pub fn set_tls_config(&mut self, config: Arc<rustls::ServerConfig>) {
        self.tls = Some(config);
    }

    /// True when there is nothing to watch.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// True while any client connection is open.
    pub fn has_connections(&self) -> bool {
        !self.conns.is_empty()
    }

    /// The descriptor the backend watches for readiness.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.epoll.raw()
    }

    /// Handles every ready listener and connection, without blocking.
    /// `udp` are the shard's UDP sockets (listeners and relays).
    pub fn process(&mut self, now: Instant, server: &mut Server, udp: &UdpSockets) {
        for _ in 0..8 {
            let n = match self.epoll.wait(&mut self.events, 0) {
                Ok(n) => n,
                Err(_) => break,
            };
            for i in 0..n {
                let ev = self.events[i];
                let token = ev.u64;
                if token & LISTENER != 0 {
                    self.accept((token & !LISTENER) as usize, now);
                    continue;
                }
                let id = token as usize;
                if ev.events & libc::EPOLLOUT as u32 != 0 {
                    self.write_out(id, now, server);
                }
                if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read(id, now, server, udp);
                }
            }
            if n < self.events.len() {
                break;
            }
        }
        self.send_to_peers();
    }

    /// Sends the gathered datagrams to peers.
    fn send_to_peers(&mut self) {
        flush_udp(&mut self.to_peers, &mut self.to_peers_len, &mut self.stats);
    }

    fn accept(&mut self, index: usize, now: Instant) {
        let Some((listener, local, is_tls)) = self.listeners.get(index) else { return };
        let (local, is_tls) = (*local, *is_tls);
        for _ in 0..64 {
            let (stream, remote) = match listener.accept() {
                Ok(x) => x,
                Err(_) => return,
            };
            // A balancer's connections are counted per source under the
            // client its PROXY header names, once it has come.
            let behind_balancer = self.trusted(remote.ip());
            if !behind_balancer && self.at_source_limit(remote.ip()) {
                self.stats.refused += 1;
                self.stats.refused_per_source += 1;
                continue;
            }
            if self.conns.len() >= self.limits.max_connections || stream.set_nonblocking(true).is_err() {
                self.stats.refused += 1;
                continue;
            }
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let id = entry.key();
            if self.epoll.add(stream.as_raw_fd(), id as u64).is_err() {
                self.stats.refused += 1;
                continue;
            }
            let (tls, transport) = match (is_tls, &self.tls) {
                (false, _) => (None, Transport::Tcp),
                (true, Some(cfg)) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(tls) => (Some(Box::new(tls)), Transport::Tls),
                    Err(_) => {
                        let _ = self.epoll.delete(stream.as_raw_fd());
                        self.stats.refused += 1;
                        continue;
                    }
                },
                (true, None) => {
                    let _ = self.epoll.delete(stream.as_raw_fd());
                    self.stats.refused += 1;
                    continue;
                }
            };
            let client = Client { transport, remote, local, conn: id as u32 };
            let mut state = StreamConn::new(client, tls, now);
            if behind_balancer {
                state.expect_proxy_header();
            } else {
                state.refuse_proxy_header();
                *self.per_source.entry(remote.ip()).or_insert(0) += 1;
                // The kernel's 5-tuple: no other direct connection has it
                // (a balancer's header claiming it first keeps it). Kept
                // only where headers can come, to refuse one naming it.
                if !self.proxy_from.is_empty() {
                    self.by_client.entry(client.key()).or_insert(id);
                }
            }
            entry.insert(Conn { sock: stream, state, counted: !behind_balancer });
            self.stats.accepted += 1;
            self.stats.open += 1;
        }
    }

    /// True when `ip` holds as many connections as one source may.
    fn at_source_limit(&self, ip: IpAddr) -> bool {
        let from_source = self.per_source.get(&ip).copied().unwrap_or(0) as usize;
        self.limits.max_per_source > 0 && from_source >= self.limits.max_per_source
    }

    /// Connection `id`'s PROXY header came: its client address becomes the
    /// connection's, which is then counted per source (not for LOCAL, nor
    /// a header without addresses: those keep the balancer's address,
    /// uncounted). False when the connection was closed for it (a UDP
    /// client's header, a client another connection already is, or a
    /// client at its limit).
    fn proxied(&mut self, id: usize, header: proxy::Header, now: Instant, server: &mut Server) -> bool {
        if header.command == proxy::Command::Proxy && header.transport == proxy::Transport::Datagram {
            self.refuse(id, ProxyRefusal::Invalid, now, server);
            return false;
        }
        let Some(c) = self.conns.get(id) else { return false };
        // An IPv4 client behind a dual-stack balancer may come as an
        // IPv4-mapped IPv6 address: it is the IPv4 client it is.
        let named = header.client().map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
        let client = Client { remote: named.unwrap_or(c.state.client().remote), ..*c.state.client() };
        if self.by_client.contains_key(&client.key()) {
            self.refuse(id, ProxyRefusal::Duplicate, now, server);
            return false;
        }
        self.stats.proxy_accepted += 1;
        if named.is_some() && self.at_source_limit(client.remote.ip()) {
            self.stats.refused += 1;
            self.stats.refused_per_source += 1;
            self.close(id, now, server);
            return false;
        }
        let Some(c) = self.conns.get_mut(id) else { return false };
        c.state.set_remote(client.remote);
        self.by_client.insert(client.key(), id);
        if named.is_some() {
            c.counted = true;
            *self.per_source.entry(client.remote.ip()).or_insert(0) += 1;
        }
        true
    }

    /// Closes connection `id`, refused at its start, and counts why.
    fn refuse(&mut self, id: usize, why: ProxyRefusal, now: Instant, server: &mut Server) {
        match why {
            ProxyRefusal::Untrusted => self.stats.proxy_untrusted += 1,
            ProxyRefusal::Missing => self.stats.proxy_missing += 1,
            ProxyRefusal::Invalid => self.stats.proxy_invalid += 1,
            ProxyRefusal::Duplicate => self.stats.proxy_duplicate += 1,
        }
        self.close(id, now, server);
    }

    /// Reads what connection `id` has (until its socket would block) and
    /// handles every complete frame.
    fn read(&mut self, id: usize, now: Instant, server: &mut Server, udp: &UdpSockets) {
        loop {
            let Some(c) = self.conns.get_mut(id) else { return };
            if c.state.in_preamble() {
                // The PROXY protocol check, before the first frame.
                match c.state.read_preamble(&mut c.sock, now) {
                    PreambleOutcome::Plain => {}
                    PreambleOutcome::Header(header) => {
                        if !self.proxied(id, header, now, server) {
                            return;
                        }
                    }
                    PreambleOutcome::Blocked => return self.watch(id),
                    PreambleOutcome::Closed => return self.close(id, now, server),
                    PreambleOutcome::Refused(why) => return self.refuse(id, why, now, server),
                }
            } else {
                match c.state.read_from(&mut c.sock, now) {
                    ReadOutcome::Data => {}
                    ReadOutcome::Blocked => return self.watch(id),
                    ReadOutcome::Closed => return self.close(id, now, server),
                }
            }
            // Cut and handle every complete frame.
            loop {
                let Some(c) = self.conns.get_mut(id) else { return };
                let frame = match c.state.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(_) => {
                        self.stats.garbage += 1;
                        return self.close(id, now, server);
                    }
                };
                let client = *c.state.client();
                let bytes = c.state.frame(frame.clone());
                let action = server.handle_client(now, &client, bytes, &mut self.reply);
                let packet = Packet::Framed { frame: bytes, handover: &mut self.handover };
                let reply_to = Via::Stream { conn: id as u32 };
                if let Some(tx) = egress::client(server, now, udp, reply_to, action, packet) {
                    self.transmit(id, frame, tx, now, server);
                }
            }
        }
    }

    /// Carries out a transmit caused by frame `frame` of connection `id`:
    /// a datagram (to a peer, or to a UDP client of this shard) gathered
    /// into the turn's `sendmmsg`, or bytes onto a stream's send queue (a
    /// response to this client, or data handed to another stream client).
    fn transmit(&mut self, id: usize, frame: Range<usize>, tx: Transmit, now: Instant, server: &mut Server) {
        let relayed = tx.is_relayed();
        match tx.via {
            Via::Udp { fd, dest } => {
                let data = match tx.buf {
                    Buf::Packet => &self.conns[id].state.frame(frame)[tx.range],
                    Buf::Reply => &self.reply[tx.range],
                    Buf::Handover => &self.handover[tx.range],
                };
                send_udp(&mut self.to_peers, &mut self.to_peers_len, &mut self.stats, fd, dest, data);
            }
            Via::Stream { conn } => {
                // Moved out while the queue borrows `self` (no copy, no
                // allocation), then put back.
                let (buf, reply) = match tx.buf {
                    Buf::Reply => (std::mem::take(&mut self.reply), true),
                    Buf::Handover => (std::mem::take(&mut self.handover), false),
                    // A stream frame is never sent to a stream as is.
                    Buf::Packet => return,
                };
                self.queue(conn as usize, &buf[tx.range], relayed, now, server);
                if reply {
                    self.reply = buf;
                } else {
                    self.handover = buf;
                }
            }
        }
    }

    /// Queues relayed data for a client connection, shed when the queue is
    /// over its limit (returns false then). It is written with the rest of
    /// the loop turn's data for that connection by [`Streams::flush_relayed`]
    /// (one write, one TLS record per frame, for a batch of peer datagrams).
    pub fn deliver(&mut self, conn: u32, bytes: &[u8], now: Instant, server: &mut Server) -> bool {
        self.queue(conn as usize, bytes, true, now, server)
    }

    /// Writes the relayed data queued this loop turn; what the socket does
    /// not take waits for it to be writable. Backends call it at the end of
    /// every turn, before they sleep.
    pub fn flush_relayed(&mut self, now: Instant, server: &mut Server) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(c) = self.conns.get_mut(id) else { continue };
            if c.state.end_turn() {
                self.write_out(id, now, server);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Writes what is queued (on writability, and for a turn's relayed
    /// data); watches for writability while some is left.
    fn write_out(&mut self, id: usize, now: Instant, server: &mut Server) {
        let Some(c) = self.conns.get_mut(id) else { return };
        match c.state.write_out(&mut c.sock) {
            Ok(()) => self.watch(id),
            Err(_) => self.close(id, now, server),
        }
    }

    /// Queues frames for connection `id` (see [`StreamConn::queue`]).
    fn queue(&mut self, id: usize, bytes: &[u8], relayed: bool, now: Instant, server: &mut Server) -> bool {
        let Some(c) = self.conns.get_mut(id) else { return false };
        match c.state.queue(&mut c.sock, bytes, relayed, &self.limits) {
            Queued::Taken => {
                self.watch(id);
                true
            }
            Queued::Batched => {
                self.dirty.push(id);
                true
            }
            Queued::Shed => {
                self.stats.shed += 1;
                false
            }
            Queued::Close => {
                self.close(id, now, server);
                false
            }
        }
    }

    /// Tells epoll whether connection `id` waits for writability, when its
    /// state says that changed.
    fn watch(&mut self, id: usize) {
        if let Some(c) = self.conns.get_mut(id)
            && let Some(write) = c.state.take_interest()
        {
            let _ = self.epoll.modify(c.sock.as_raw_fd(), id as u64, write);
        }
    }

    fn close(&mut self, id: usize, now: Instant, server: &mut Server) {
        if let Some(c) = self.conns.try_remove(id) {
            let _ = self.epoll.delete(c.sock.as_raw_fd());
            let client = *c.state.client();
            let ip = client.remote.ip();
            if self.by_client.get(&client.key()) == Some(&id) {
                self.by_client.remove(&client.key());
            }
            if c.counted
                && let Some(n) = self.per_source.get_mut(&ip)
            {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
            server.handle_client_closed(now, &client);
            self.stats.open -= 1;
        }
    }

    /// Closes connections idle past the limit that hold no allocation,
    /// and those whose PROXY header or TLS handshake did not come in time
    /// (a header that did not is counted: missing, or invalid when part of
    /// it came).
    pub fn expire(&mut self, now: Instant, server: &mut Server) {
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state.expired(now, &self.limits, |client| server.has_allocation(client)))
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            match self.conns.get(id).and_then(|c| c.state.awaited_header_bytes()) {
                Some(0) => self.refuse(id, ProxyRefusal::Missing, now, server),
                Some(_) => self.refuse(id, ProxyRefusal::Invalid, now, server),
                None => self.close(id, now, server),
            }
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&mut self, now: Instant, server: &mut Server) {
        let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.close(id, now, server);
        }
    }
}
