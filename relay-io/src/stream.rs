//! TURN over TCP and TLS (RFC 8656 §3.1): the shard's stream listeners and
//! client connections.
//!
//! Streams live in an epoll instance of their own, which either backend
//! watches as one descriptor (the portable loop nests it in its epoll; the
//! io_uring loop polls it with a multishot PollAdd), so both run this one
//! implementation. Relaying to peers is always UDP. Each connection has a
//! receive buffer cut into frames by relay-core's stream framer, and a
//! bounded send queue: relayed data is shed when a client reads too
//! slowly, control responses never are (a client that lets even those pile
//! up past a hard limit is disconnected).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::server::{Client, Server, Transport};
use relay_core::wire::demux::{self, Frame};
use slab::Slab;

use crate::egress::{self, Buf, Packet, REPLY_LEN, Transmit, Via};
use crate::shard::UdpSockets;
use crate::sys::{self, Batch, Epoll, empty_event};

const LISTENER: u64 = 1 << 40;
/// Datagrams to peers gathered from client streams before one `sendmmsg`.
const TO_PEERS: usize = 64;
/// Largest payload gathered (larger ones are sent on their own).
const TO_PEER_SLOT: usize = 2048;
/// Plaintext pushed into rustls per write: its buffer of unsent records
/// holds 64 KiB, and a full one takes nothing (`Ok(0)`).
const TLS_PUSH_BUDGET: usize = 48 * 1024;
/// Bytes a TLS record adds to its plaintext (header, tag, content type),
/// with room to spare.
const TLS_RECORD_OVERHEAD: usize = 32;
const INITIAL_READ: usize = 4096;

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
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::ServerConnection>, TcpStream),
}

impl Io {
    fn fd(&self) -> RawFd {
        match self {
            Io::Plain(s) | Io::Tls(_, s) => s.as_raw_fd(),
        }
    }

    /// Application bytes in; `Ok(0)` at the end of the stream.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(tls, s) => loop {
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if tls.read_tls(s)? == 0 {
                    return Ok(0);
                }
                tls.process_new_packets().map_err(io::Error::other)?;
                // Handshake replies, alerts: out as far as the socket takes.
                flush_tls(tls, s)?;
            },
        }
    }

    /// Frames out (whole frames, back to back); `WouldBlock` while earlier
    /// TLS records wait for the socket. Over TLS each frame
    /// gets a record of its own, and the records go out together: clients
    /// that read one message per TLS record (coturn's turnutils_uclient
    /// does) see every frame. Returns the bytes taken.
    fn write_frames(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(bytes),
            Io::Tls(tls, s) => {
                flush_tls(tls, s)?;
                if tls.wants_write() || tls.is_handshaking() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                // rustls holds at most 64 KiB of records: push frames while
                // they fit with their record overhead (a larger frame goes
                // alone, split as rustls must), then write them out.
                let mut at = 0;
                let mut budget = TLS_PUSH_BUDGET;
                while at < bytes.len() {
                    let n = match demux::next_frame(&bytes[at..]) {
                        Ok(Frame::Stun(n) | Frame::ChannelData(n)) => n,
                        // Not whole frames (never queued): the rest at once.
                        _ => bytes.len() - at,
                    };
                    if at > 0 && n + TLS_RECORD_OVERHEAD > budget {
                        break;
                    }
                    budget = budget.saturating_sub(n + TLS_RECORD_OVERHEAD);
                    let w = tls.writer().write(&bytes[at..at + n])?;
                    at += w;
                    if w < n {
                        // rustls is full (a frame larger than its buffer).
                        break;
                    }
                }
                flush_tls(tls, s)?;
                if at == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(at) }
            }
        }
    }

    /// Writes pending TLS records; Ok even when the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(_) => Ok(()),
            Io::Tls(tls, s) => flush_tls(tls, s),
        }
    }

    /// TLS records wait for the socket.
    fn pending(&self) -> bool {
        matches!(self, Io::Tls(tls, _) if tls.wants_write())
    }

    fn handshaking(&self) -> bool {
        matches!(self, Io::Tls(tls, _) if tls.is_handshaking())
    }
}

fn flush_tls(tls: &mut rustls::ServerConnection, s: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(s) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Conn {
    io: Io,
    client: Client,
    opened: Instant,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    writing: bool,
    /// Relayed data waits in `wbuf` for the end of the loop turn.
    dirty: bool,
    last: Instant,
}

/// Counters of the stream side.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamStats {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused (a limit reached: the shard's, or the source's).
    pub refused: u64,
    /// Of those, refused because their source address held its limit.
    pub refused_per_source: u64,
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
            let from_source = self.per_source.get(&remote.ip()).copied().unwrap_or(0) as usize;
            if self.limits.max_per_source > 0 && from_source >= self.limits.max_per_source {
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
            let (io, transport) = match (is_tls, &self.tls) {
                (false, _) => (Io::Plain(stream), Transport::Tcp),
                (true, Some(cfg)) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(tls) => (Io::Tls(Box::new(tls), stream), Transport::Tls),
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
            entry.insert(Conn {
                io,
                client,
                opened: now,
                rbuf: vec![0u8; INITIAL_READ],
                rlen: 0,
                wbuf: Vec::new(),
                wpos: 0,
                writing: false,
                dirty: false,
                last: now,
            });
            *self.per_source.entry(remote.ip()).or_insert(0) += 1;
            self.stats.accepted += 1;
            self.stats.open += 1;
        }
    }

    fn read(&mut self, id: usize, now: Instant, server: &mut Server, udp: &UdpSockets) {
        loop {
            let Some(c) = self.conns.get_mut(id) else { return };
            if c.rlen == c.rbuf.len() {
                // The framer asked for more than fits: grow, within bounds.
                if c.rbuf.len() >= demux::MAX_FRAME_LEN {
                    return self.close(id, now, server);
                }
                let n = (c.rbuf.len() * 2).min(demux::MAX_FRAME_LEN);
                c.rbuf.resize(n, 0);
            }
            let got = match c.io.read_plain(&mut c.rbuf[c.rlen..]) {
                Ok(0) => return self.close(id, now, server),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // TLS handshake records may be waiting for the socket.
                    if c.io.pending() && !c.writing {
                        c.writing = true;
                        let _ = self.epoll.modify(c.io.fd(), id as u64, true);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id, now, server),
            };
            c.rlen += got;
            c.last = now;
            // Cut and handle every complete frame.
            let mut start = 0;
            loop {
                let Some(c) = self.conns.get_mut(id) else { return };
                match demux::next_frame(&c.rbuf[start..c.rlen]) {
                    Ok(Frame::Stun(n) | Frame::ChannelData(n)) => {
                        let client = c.client;
                        let frame = &c.rbuf[start..start + n];
                        let action = server.handle_client(now, &client, frame, &mut self.reply);
                        let packet = Packet::Framed { frame, handover: &mut self.handover };
                        let reply_to = Via::Stream { conn: id as u32 };
                        if let Some(tx) = egress::client(server, now, udp, reply_to, action, packet) {
                            self.transmit(id, start..start + n, tx, now, server);
                        }
                        start += n;
                    }
                    Ok(Frame::NeedMore(need)) => {
                        let c = &mut self.conns[id];
                        c.rbuf.copy_within(start..c.rlen, 0);
                        c.rlen -= start;
                        if need > c.rbuf.len() {
                            c.rbuf.resize(need.min(demux::MAX_FRAME_LEN), 0);
                        }
                        break;
                    }
                    Err(_) => {
                        self.stats.garbage += 1;
                        return self.close(id, now, server);
                    }
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
                    Buf::Packet => &self.conns[id].rbuf[frame][tx.range],
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
    /// (one write, one TLS record, for a batch of peer datagrams).
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
            c.dirty = false;
            if !c.writing {
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
        // TLS records left from earlier writes go first.
        if c.io.flush().is_err() {
            return self.close(id, now, server);
        }
        while c.wpos < c.wbuf.len() {
            match c.io.write_frames(&c.wbuf[c.wpos..]) {
                Ok(0) => return self.close(id, now, server),
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(id, now, server),
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        }
        // Watch for writability exactly while something waits.
        let waiting = !c.wbuf.is_empty() || c.io.pending();
        if waiting != c.writing {
            c.writing = waiting;
            let _ = self.epoll.modify(c.io.fd(), id as u64, waiting);
        }
    }

    fn queue(&mut self, id: usize, bytes: &[u8], relayed: bool, now: Instant, server: &mut Server) -> bool {
        let Some(c) = self.conns.get_mut(id) else { return false };
        let pending = c.wbuf.len() - c.wpos;
        if relayed && pending + bytes.len() > self.limits.send_queue {
            self.stats.shed += 1;
            return false;
        }
        if pending + bytes.len() > self.limits.send_queue_hard {
            self.close(id, now, server);
            return false;
        }
        if relayed {
            // Written at the end of the loop turn, with the turn's other
            // relayed data for this connection.
            if pending == 0 {
                c.wbuf.clear();
                c.wpos = 0;
            }
            c.wbuf.extend_from_slice(bytes);
            if !c.dirty && !c.writing {
                c.dirty = true;
                self.dirty.push(id);
            }
            return true;
        }
        if pending == 0 {
            // A response, nothing waiting: write at once, queue only the rest.
            match c.io.write_frames(bytes) {
                // All taken, and (TLS) every record on the socket.
                Ok(n) if n == bytes.len() && !c.io.pending() => return true,
                // All taken; records wait for the socket to be writable.
                Ok(n) if n == bytes.len() => {
                    c.wbuf.clear();
                    c.wpos = 0;
                }
                Ok(n) => {
                    c.wbuf.clear();
                    c.wpos = 0;
                    c.wbuf.extend_from_slice(&bytes[n..]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.wbuf.clear();
                    c.wpos = 0;
                    c.wbuf.extend_from_slice(bytes);
                }
                Err(_) => {
                    self.close(id, now, server);
                    return false;
                }
            }
        } else {
            c.wbuf.extend_from_slice(bytes);
        }
        if !c.writing {
            c.writing = true;
            let _ = self.epoll.modify(c.io.fd(), id as u64, true);
        }
        true
    }

    fn close(&mut self, id: usize, now: Instant, server: &mut Server) {
        if let Some(c) = self.conns.try_remove(id) {
            let _ = self.epoll.delete(c.io.fd());
            let ip = c.client.remote.ip();
            if let Some(n) = self.per_source.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&ip);
                }
            }
            server.handle_client_closed(now, &c.client);
            self.stats.open -= 1;
        }
    }

    /// Closes connections idle past the limit that hold no allocation.
    pub fn expire(&mut self, now: Instant, server: &mut Server) {
        let (idle, handshake) = (self.limits.idle_timeout, self.limits.handshake_timeout);
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                (c.io.handshaking() && now.saturating_duration_since(c.opened) > handshake)
                    || (now.saturating_duration_since(c.last) > idle && !server.has_allocation(&c.client))
            })
            .map(|(id, _)| id)
            .collect();
        for id in stale {
            self.close(id, now, server);
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
