//! One TURN-over-TCP/TLS connection's state, without its socket (sans-IO).
//!
//! [`StreamConn`] holds everything about a connection that is protocol
//! rather than system call:
//! - the read buffer and its framing into STUN messages and ChannelData
//!   (relay-core's stream framer), grown to a frame's size and no further;
//! - the bounded send queue: relayed data is shed past the soft limit
//!   ([`StreamLimits::send_queue`]), control responses are kept up to the
//!   hard limit ([`StreamLimits::send_queue_hard`]), past which the
//!   connection is to be closed;
//! - the batching of a loop turn's relayed data: queued, not written, until
//!   the turn ends ([`StreamConn::end_turn`]), then written at once;
//! - whether writability should be watched ([`StreamConn::take_interest`]);
//! - for TLS, the rustls session and its record budget: each frame is one
//!   TLS record, and no more is pushed into rustls per write than its
//!   64 KiB buffer of unsent records holds (a full one takes nothing, and a
//!   loop that kept pushing would spin);
//! - the PROXY protocol check at the start of the connection, before any
//!   frame and before the TLS handshake ([`StreamConn::read_preamble`]):
//!   from a trusted load balancer a header must come first (within
//!   [`StreamLimits::proxy_header_timeout`], at most
//!   [`proxy::MAX_HEADER_LEN`] bytes), from anyone else none may. The
//!   bytes that follow the header in the same read are handed on as the
//!   stream's first (to the framer, or to rustls).
//!
//! The socket is a parameter of the calls that move bytes (`S: Read +
//! Write`, a non-blocking `TcpStream` in the data plane, an in-memory pipe
//! in the tests and the `stream_conn` fuzz target); accepting, epoll
//! registration and closing stay with [`super::Streams`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use relay_core::server::Client;
use relay_core::wire::demux::{self, Frame, MAX_FRAME_LEN};
use relay_core::wire::proxy::{self, Parsed, ProxyError};

use super::StreamLimits;

/// Plaintext pushed into rustls per write: its buffer of unsent records
/// holds 64 KiB, and a full one takes nothing (`Ok(0)`).
pub const TLS_PUSH_BUDGET: usize = 48 * 1024;
/// Bytes a TLS record adds to its plaintext (header, tag, content type),
/// with room to spare.
pub const TLS_RECORD_OVERHEAD: usize = 32;
/// The read buffer's first size (it also holds a whole PROXY header).
const INITIAL_READ: usize = 4096;
const _: () = assert!(INITIAL_READ > proxy::MAX_HEADER_LEN);

/// What the start of a connection is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preamble {
    /// Nothing (any more): the bytes are frames, or TLS records.
    None,
    /// A PROXY header must come first: the peer is a trusted balancer.
    Expect,
    /// No PROXY header may come: the first bytes are looked at once.
    Refuse,
}

/// What reading the start of a connection brought
/// ([`StreamConn::read_preamble`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreambleOutcome {
    /// Nothing (more) to read now; the check goes on with the next read.
    Blocked,
    /// The stream ended (or failed) before anything was decided: close,
    /// without counting (a balancer's TCP health check connects and
    /// closes).
    Closed,
    /// The PROXY header: the connection goes on; what followed it is
    /// handed on (cut frames with [`StreamConn::next_frame`]).
    Header(proxy::Header),
    /// No header, as none was expected: the bytes read are handed on (cut
    /// frames with [`StreamConn::next_frame`]).
    Plain,
    /// Close the connection, counted for this reason.
    Refused(ProxyRefusal),
}

/// Why a connection was refused at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// A PROXY header from a peer outside the trusted networks.
    Untrusted,
    /// A trusted peer's bytes did not begin with a PROXY header, or none
    /// came in time.
    Missing,
    /// A trusted peer's header broke the format (or the stream ended, or
    /// the time ran out, halfway through it).
    Invalid,
    /// A trusted peer's header named a client (its address, on this
    /// listener) that another open connection of the shard already is
    /// ([`Streams`](super::Streams) decides this, not the connection).
    Duplicate,
}

/// What a read brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes arrived: cut the frames with [`StreamConn::next_frame`].
    Data,
    /// Nothing to read now (the socket would block).
    Blocked,
    /// The stream ended or failed: close the connection.
    Closed,
}

/// The read buffer holds bytes that are not TURN: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unframeable;

/// Writing failed: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteFailed;

/// What became of bytes given to [`StreamConn::queue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Taken: written, or waiting in the queue.
    Taken,
    /// Relayed data taken, the connection's first of this loop turn: its
    /// owner calls [`StreamConn::end_turn`] when the turn ends.
    Batched,
    /// Relayed data dropped: the queue is past its soft limit.
    Shed,
    /// The queue would pass its hard limit, or writing failed: close the
    /// connection.
    Close,
}

/// A client connection's state. See the [module documentation](self).
pub struct StreamConn {
    client: Client,
    tls: Option<Box<rustls::ServerConnection>>,
    opened: Instant,
    /// Last time bytes arrived.
    last: Instant,
    rbuf: Vec<u8>,
    /// Bytes read into `rbuf`.
    rlen: usize,
    /// Start of the next frame to cut.
    rpos: usize,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    wpos: usize,
    /// Writability should be watched.
    writing: bool,
    /// `writing` changed since [`StreamConn::take_interest`] last said.
    interest_changed: bool,
    /// Relayed data waits in `wbuf` for the end of the loop turn.
    dirty: bool,
    /// TLS: bytes of a frame larger than rustls's buffer still to push
    /// (the rest of it leads the queue).
    tls_split: usize,
    /// The PROXY protocol check still to make.
    preamble: Preamble,
}

impl StreamConn {
    /// A connection accepted at `now` from `client`; TLS with `tls`.
    pub fn new(client: Client, tls: Option<Box<rustls::ServerConnection>>, now: Instant) -> StreamConn {
        StreamConn {
            client,
            tls,
            opened: now,
            last: now,
            rbuf: vec![0u8; INITIAL_READ],
            rlen: 0,
            rpos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            writing: false,
            interest_changed: false,
            dirty: false,
            tls_split: 0,
            preamble: Preamble::None,
        }
    }

    /// The connection comes from a trusted load balancer: it must begin
    /// with a PROXY header. Call before any read.
    pub fn expect_proxy_header(&mut self) {
        self.preamble = Preamble::Expect;
    }

    /// The connection comes from elsewhere: one that begins with a PROXY
    /// header (or the start of one) is refused. Call before any read.
    pub fn refuse_proxy_header(&mut self) {
        self.preamble = Preamble::Refuse;
    }

    /// True until the PROXY protocol check is done: read with
    /// [`StreamConn::read_preamble`] then, not [`StreamConn::read_from`].
    pub fn in_preamble(&self) -> bool {
        self.preamble != Preamble::None
    }

    /// While a PROXY header is awaited: how many bytes of it have come.
    pub fn awaited_header_bytes(&self) -> Option<usize> {
        (self.preamble == Preamble::Expect).then_some(self.rlen)
    }

    /// The client's address as its PROXY header gave it (before any frame
    /// is handled: the server has not seen the client yet).
    pub fn set_remote(&mut self, remote: SocketAddr) {
        self.client.remote = remote;
    }

    /// Reads the start of the connection from `sock`, raw (before TLS),
    /// and makes the PROXY protocol check; see [`PreambleOutcome`]. The
    /// header is never longer than [`proxy::MAX_HEADER_LEN`], which the
    /// read buffer holds, so the check always ends.
    pub fn read_preamble<S: Read + Write>(&mut self, sock: &mut S, now: Instant) -> PreambleOutcome {
        let expect = match self.preamble {
            Preamble::None => return PreambleOutcome::Plain,
            Preamble::Expect => true,
            Preamble::Refuse => false,
        };
        loop {
            let n = match sock.read(&mut self.rbuf[self.rlen..]) {
                // A balancer that went away halfway through its header
                // sent an invalid one; nothing at all is no header.
                Ok(0) if expect && self.rlen > 0 => return PreambleOutcome::Refused(ProxyRefusal::Invalid),
                Ok(0) => return PreambleOutcome::Closed,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return PreambleOutcome::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return PreambleOutcome::Closed,
            };
            self.rlen += n;
            self.last = now;
            let raw = &self.rbuf[..self.rlen];
            let (outcome, header_len) = if expect {
                match proxy::parse(raw) {
                    Ok(Parsed::Incomplete) if self.rlen < self.rbuf.len() => continue,
                    Ok(Parsed::Incomplete) => return PreambleOutcome::Refused(ProxyRefusal::Invalid),
                    Ok(Parsed::Complete { header, len }) => (PreambleOutcome::Header(header), len),
                    Err(ProxyError::NotAHeader) => return PreambleOutcome::Refused(ProxyRefusal::Missing),
                    Err(ProxyError::Invalid(_)) => return PreambleOutcome::Refused(ProxyRefusal::Invalid),
                }
            } else if proxy::starts_like_header(raw) {
                return PreambleOutcome::Refused(ProxyRefusal::Untrusted);
            } else {
                (PreambleOutcome::Plain, 0)
            };
            self.preamble = Preamble::None;
            return match self.hand_on(header_len, sock) {
                Ok(()) => outcome,
                Err(_) => PreambleOutcome::Closed,
            };
        }
    }

    /// The raw bytes read after the PROXY check, from `start` of the read
    /// buffer, become the stream's first: frames to cut, or TLS records for
    /// rustls (whose answers go out as far as the socket takes them).
    fn hand_on<S: Write>(&mut self, start: usize, sock: &mut S) -> io::Result<()> {
        let Some(tls) = self.tls.as_deref_mut() else {
            self.rbuf.copy_within(start..self.rlen, 0);
            self.rlen -= start;
            self.rpos = 0;
            return Ok(());
        };
        let mut rest = &self.rbuf[start..self.rlen];
        while !rest.is_empty() {
            if tls.read_tls(&mut rest)? == 0 {
                break;
            }
            tls.process_new_packets().map_err(io::Error::other)?;
        }
        self.rlen = 0;
        self.rpos = 0;
        flush_tls(tls, sock)
    }

    /// The client this connection is (its 5-tuple and handle).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads once from `sock` into the read buffer (over TLS: as many
    /// records as it takes to get application bytes, answering the
    /// handshake on the way). A read buffer already full at
    /// [`MAX_FRAME_LEN`] without a frame is [`ReadOutcome::Closed`].
    pub fn read_from<S: Read + Write>(&mut self, sock: &mut S, now: Instant) -> ReadOutcome {
        loop {
            if self.rlen == self.rbuf.len() {
                // The framer asked for more than fits: grow, within bounds.
                if self.rbuf.len() >= MAX_FRAME_LEN {
                    return ReadOutcome::Closed;
                }
                let n = (self.rbuf.len() * 2).min(MAX_FRAME_LEN);
                self.rbuf.resize(n, 0);
            }
            match read_plain(self.tls.as_deref_mut(), sock, &mut self.rbuf[self.rlen..]) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => {
                    self.rlen += n;
                    self.last = now;
                    return ReadOutcome::Data;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // TLS handshake records may be waiting for the socket.
                    if self.tls_pending() && !self.writing {
                        self.watch_writable(true);
                    }
                    return ReadOutcome::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }

    /// Cuts the next complete frame from the read buffer: its range (see
    /// [`StreamConn::frame`]), or `None` when more bytes are needed (what
    /// is left is moved to the front, and the buffer grown to hold the
    /// frame that has begun).
    pub fn next_frame(&mut self) -> Result<Option<Range<usize>>, Unframeable> {
        match demux::next_frame(&self.rbuf[self.rpos..self.rlen]) {
            Ok(Frame::Stun(n) | Frame::ChannelData(n)) => {
                let frame = self.rpos..self.rpos + n;
                self.rpos += n;
                Ok(Some(frame))
            }
            Ok(Frame::NeedMore(need)) => {
                self.rbuf.copy_within(self.rpos..self.rlen, 0);
                self.rlen -= self.rpos;
                self.rpos = 0;
                if need > self.rbuf.len() {
                    self.rbuf.resize(need.min(MAX_FRAME_LEN), 0);
                }
                Ok(None)
            }
            Err(_) => Err(Unframeable),
        }
    }

    /// The bytes of a frame [`StreamConn::next_frame`] returned (valid
    /// until the next call).
    pub fn frame(&self, frame: Range<usize>) -> &[u8] {
        &self.rbuf[frame]
    }

    /// Queues whole frames for the client: `relayed` data (shed past the
    /// soft limit) waits for the end of the loop turn; a control response
    /// is written at once when nothing waits before it (what the socket
    /// does not take is queued, and writability watched).
    pub fn queue<S: Write>(&mut self, sock: &mut S, bytes: &[u8], relayed: bool, limits: &StreamLimits) -> Queued {
        let pending = self.wbuf.len() - self.wpos;
        if relayed && pending + bytes.len() > limits.send_queue {
            return Queued::Shed;
        }
        if pending + bytes.len() > limits.send_queue_hard {
            return Queued::Close;
        }
        if relayed {
            // Written at the end of the loop turn, with the turn's other
            // relayed data for this connection.
            if pending == 0 {
                self.wbuf.clear();
                self.wpos = 0;
            }
            self.wbuf.extend_from_slice(bytes);
            if !self.dirty && !self.writing {
                self.dirty = true;
                return Queued::Batched;
            }
            return Queued::Taken;
        }
        if pending == 0 {
            // A response, nothing waiting: write at once, queue only the rest.
            match write_frames(self.tls.as_deref_mut(), &mut self.tls_split, sock, bytes) {
                // All taken, and (TLS) every record on the socket.
                Ok(n) if n == bytes.len() && !self.tls_pending() => return Queued::Taken,
                // All taken; records wait for the socket to be writable.
                Ok(n) if n == bytes.len() => {
                    self.wbuf.clear();
                    self.wpos = 0;
                }
                Ok(n) => {
                    self.wbuf.clear();
                    self.wpos = 0;
                    self.wbuf.extend_from_slice(&bytes[n..]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wbuf.clear();
                    self.wpos = 0;
                    self.wbuf.extend_from_slice(bytes);
                }
                Err(_) => return Queued::Close,
            }
        } else {
            self.wbuf.extend_from_slice(bytes);
        }
        if !self.writing {
            self.watch_writable(true);
        }
        Queued::Taken
    }

    /// The loop turn ends for a connection that [`Queued::Batched`]: true
    /// when its relayed data should be written now with
    /// [`StreamConn::write_out`] (not while writability is watched: then
    /// it goes with the next writability event, after what waits before
    /// it).
    pub fn end_turn(&mut self) -> bool {
        self.dirty = false;
        !self.writing
    }

    /// Writes what is queued, as far as the socket takes it without
    /// blocking (TLS records left from earlier writes first), and watches
    /// writability exactly while something is left.
    pub fn write_out<S: Write>(&mut self, sock: &mut S) -> Result<(), WriteFailed> {
        if let Some(tls) = self.tls.as_deref_mut()
            && flush_tls(tls, sock).is_err()
        {
            return Err(WriteFailed);
        }
        while self.wpos < self.wbuf.len() {
            match write_frames(self.tls.as_deref_mut(), &mut self.tls_split, sock, &self.wbuf[self.wpos..]) {
                Ok(0) => return Err(WriteFailed),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(WriteFailed),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        let waiting = !self.wbuf.is_empty() || self.tls_pending();
        self.watch_writable(waiting);
        Ok(())
    }

    /// Whether writability should be watched now, when that changed since
    /// the last call: the owner tells its poller.
    pub fn take_interest(&mut self) -> Option<bool> {
        std::mem::take(&mut self.interest_changed).then_some(self.writing)
    }

    /// Bytes queued and not yet written (TLS records in rustls not
    /// counted).
    pub fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// The TLS handshake has not finished.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// True when the connection should be closed at `now`: its PROXY
    /// header or its TLS handshake took too long, or it has been idle too
    /// long and `has_allocation` says it holds no allocation.
    pub fn expired(&self, now: Instant, limits: &StreamLimits, has_allocation: impl FnOnce(&Client) -> bool) -> bool {
        let age = now.saturating_duration_since(self.opened);
        (self.preamble == Preamble::Expect && age > limits.proxy_header_timeout)
            || (self.handshaking() && age > limits.handshake_timeout)
            || (now.saturating_duration_since(self.last) > limits.idle_timeout && !has_allocation(&self.client))
    }

    /// TLS records wait for the socket.
    fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    fn watch_writable(&mut self, on: bool) {
        if self.writing != on {
            self.writing = on;
            self.interest_changed = true;
        }
    }
}

/// Application bytes in; `Ok(0)` at the end of the stream.
fn read_plain<S: Read + Write>(
    tls: Option<&mut rustls::ServerConnection>,
    sock: &mut S,
    buf: &mut [u8],
) -> io::Result<usize> {
    let Some(tls) = tls else { return sock.read(buf) };
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if tls.read_tls(sock)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets().map_err(io::Error::other)?;
        // Handshake replies, alerts: out as far as the socket takes.
        flush_tls(tls, sock)?;
    }
}

/// Frames out (whole frames, back to back, or the rest of one `split`
/// before them); `WouldBlock` while earlier TLS records wait for the
/// socket. Over TLS each frame gets a record of its own, and the records
/// go out together: clients that read one message per TLS record
/// (coturn's turnutils_uclient does) see every frame. Returns the bytes
/// taken.
fn write_frames<S: Write>(
    tls: Option<&mut rustls::ServerConnection>,
    split: &mut usize,
    sock: &mut S,
    bytes: &[u8],
) -> io::Result<usize> {
    let Some(tls) = tls else { return sock.write(bytes) };
    flush_tls(tls, sock)?;
    if tls.wants_write() || tls.is_handshaking() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let at = push_records(tls, split, bytes)?;
    flush_tls(tls, sock)?;
    if at == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(at) }
}

/// Pushes frames from the start of `bytes` into an idle rustls session,
/// one record each, while they fit its buffer of unsent records
/// ([`TLS_PUSH_BUDGET`] with [`TLS_RECORD_OVERHEAD`] each); a frame larger
/// than that goes alone, split as rustls must, and `split` keeps how much
/// of it is left, so that the rest goes alone too (never in a record with
/// the frames behind it). Returns the bytes taken: more than none
/// whenever `bytes` is not empty and rustls's buffer was.
fn push_records(tls: &mut rustls::ServerConnection, split: &mut usize, bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    let mut budget = TLS_PUSH_BUDGET;
    while at < bytes.len() {
        let n = if *split > 0 {
            (*split).min(bytes.len())
        } else {
            match demux::next_frame(&bytes[at..]) {
                Ok(Frame::Stun(n) | Frame::ChannelData(n)) => n,
                // Not whole frames (never queued): the rest at once.
                _ => bytes.len() - at,
            }
        };
        if at > 0 && n + TLS_RECORD_OVERHEAD > budget {
            break;
        }
        budget = budget.saturating_sub(n + TLS_RECORD_OVERHEAD);
        let w = tls.writer().write(&bytes[at..at + n])?;
        at += w;
        *split = n - w;
        if w < n {
            // rustls is full (a frame larger than its buffer).
            break;
        }
    }
    Ok(at)
}

/// Writes pending TLS records; Ok even when the socket is full.
fn flush_tls<S: Write>(tls: &mut rustls::ServerConnection, sock: &mut S) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use relay_core::server::Transport;
    use relay_core::wire::channel_data;
    use relay_core::wire::{Attribute, Class, MessageBuilder, MessageType, Method, TransactionId};

    use super::*;

    /// The in-memory socket the tests drive a connection over.
    use test_kit::MemSocket as Pipe;

    fn client(transport: Transport) -> Client {
        Client {
            transport,
            remote: "192.0.2.1:50000".parse().unwrap(),
            local: "192.0.2.2:3478".parse().unwrap(),
            conn: 7,
        }
    }

    fn plain(now: Instant) -> StreamConn {
        StreamConn::new(client(Transport::Tcp), None, now)
    }

    /// A ChannelData frame as sent on a stream (padded to 4 bytes).
    fn channel(payload_len: usize, fill: u8) -> Vec<u8> {
        let mut out = vec![0u8; channel_data::stream_len(payload_len)];
        let n = channel_data::encode(&mut out, 0x4000, &vec![fill; payload_len], true).unwrap();
        assert_eq!(n, out.len());
        out
    }

    /// A Binding request with a SOFTWARE attribute of `software` bytes.
    fn binding(software: usize) -> Vec<u8> {
        let mut buf = [0u8; 1500];
        let ty = MessageType::new(Class::Request, Method::BINDING);
        let mut b = MessageBuilder::new(&mut buf, ty, TransactionId([9; 12])).unwrap();
        let name = "s".repeat(software);
        if software > 0 {
            b.add(&Attribute::Software(&name)).unwrap();
        }
        let n = b.finish();
        buf[..n].to_vec()
    }

    /// Reads everything `pipe` holds and cuts every frame.
    fn frames(c: &mut StreamConn, pipe: &mut Pipe, now: Instant) -> Result<Vec<Vec<u8>>, Unframeable> {
        let mut out = Vec::new();
        loop {
            match c.read_from(pipe, now) {
                ReadOutcome::Data => {}
                ReadOutcome::Blocked | ReadOutcome::Closed => return Ok(out),
            }
            while let Some(f) = c.next_frame()? {
                out.push(c.frame(f).to_vec());
            }
        }
    }

    #[test]
    fn frames_are_cut_however_the_bytes_arrive() {
        let now = Instant::now();
        let sent =
            vec![binding(0), channel(0, 1), channel(1, 2), binding(13), channel(1000, 3), channel(5000, 4), binding(3)];
        let stream: Vec<u8> = sent.concat();
        for read in [1, 3, 7, 64, 4096, stream.len()] {
            let mut c = plain(now);
            let mut pipe = Pipe::open();
            let mut got = Vec::new();
            for piece in stream.chunks(read) {
                pipe.input.extend_from_slice(piece);
                got.extend(frames(&mut c, &mut pipe, now).unwrap());
            }
            assert_eq!(got, sent, "reads of {read} bytes");
        }
    }

    #[test]
    fn bytes_that_are_not_turn_are_unframeable() {
        let now = Instant::now();
        let mut c = plain(now);
        let mut pipe = Pipe::open();
        pipe.input = [channel(4, 1), vec![0xff; 8]].concat();
        assert_eq!(c.read_from(&mut pipe, now), ReadOutcome::Data);
        assert_eq!(c.next_frame().unwrap().map(|f| c.frame(f).to_vec()), Some(channel(4, 1)));
        assert_eq!(c.next_frame(), Err(Unframeable));
    }

    #[test]
    fn the_read_buffer_grows_to_the_largest_frame_and_no_further() {
        let now = Instant::now();
        let mut c = plain(now);
        let mut pipe = Pipe::open();
        let big = channel(0xffff, 5);
        pipe.input = [big.clone(), channel(8, 6)].concat();
        assert_eq!(frames(&mut c, &mut pipe, now).unwrap(), vec![big, channel(8, 6)]);
        assert!(c.rbuf.len() <= MAX_FRAME_LEN);
        // The end of the stream closes.
        pipe.eof = true;
        assert_eq!(c.read_from(&mut pipe, now), ReadOutcome::Closed);
    }

    fn limits(soft: usize, hard: usize) -> StreamLimits {
        StreamLimits { send_queue: soft, send_queue_hard: hard, ..StreamLimits::default() }
    }

    #[test]
    fn relayed_data_is_shed_past_the_soft_limit_responses_only_past_the_hard_one() {
        let now = Instant::now();
        let l = limits(1000, 3000);
        let mut c = plain(now);
        // The client reads nothing.
        let mut pipe = Pipe { room: 0, ..Pipe::default() };
        let data = channel(396, 1);
        assert_eq!(c.queue(&mut pipe, &data, true, &l), Queued::Batched);
        assert_eq!(c.queue(&mut pipe, &data, true, &l), Queued::Taken);
        assert_eq!(c.queue(&mut pipe, &data, true, &l), Queued::Shed);
        assert_eq!(c.queued(), 800);
        // Responses still queue (and writability is watched from now on),
        // until the hard limit.
        let response = binding(480);
        assert_eq!(response.len(), 504);
        for _ in 0..4 {
            assert_eq!(c.queue(&mut pipe, &response, false, &l), Queued::Taken);
        }
        assert_eq!(c.take_interest(), Some(true));
        assert_eq!(c.queued(), 800 + 4 * 504);
        assert_eq!(c.queue(&mut pipe, &data, true, &l), Queued::Shed);
        assert_eq!(c.queue(&mut pipe, &response, false, &l), Queued::Close);
        assert_eq!(pipe.writes, 0);
    }

    #[test]
    fn a_response_is_written_at_once_and_a_turns_relayed_data_in_one_write() {
        let now = Instant::now();
        let l = StreamLimits::default();
        let mut c = plain(now);
        let mut pipe = Pipe::open();
        let response = binding(4);
        assert_eq!(c.queue(&mut pipe, &response, false, &l), Queued::Taken);
        assert_eq!((pipe.writes, c.take_interest()), (1, None));
        // 50 peer datagrams in one loop turn: queued, then one write.
        let data: Vec<Vec<u8>> = (0..50).map(|i| channel(100 + i, i as u8)).collect();
        assert_eq!(c.queue(&mut pipe, &data[0], true, &l), Queued::Batched);
        for d in &data[1..] {
            assert_eq!(c.queue(&mut pipe, d, true, &l), Queued::Taken);
        }
        assert_eq!(pipe.writes, 1);
        assert!(c.end_turn());
        c.write_out(&mut pipe).unwrap();
        assert_eq!(pipe.writes, 2);
        assert_eq!(pipe.output, [vec![response], data].concat().concat());
        assert_eq!((c.queued(), c.take_interest()), (0, None));
    }

    #[test]
    fn a_slow_reader_is_written_to_as_it_reads() {
        let now = Instant::now();
        let l = StreamLimits::default();
        let mut c = plain(now);
        let mut pipe = Pipe { room: 1000, ..Pipe::default() };
        let data: Vec<Vec<u8>> = (0..30).map(|i| channel(96, i)).collect();
        for d in &data {
            c.queue(&mut pipe, d, true, &l);
        }
        assert!(c.end_turn());
        c.write_out(&mut pipe).unwrap();
        assert_eq!((pipe.output.len(), c.queued()), (1000, 2000));
        assert_eq!(c.take_interest(), Some(true));
        // While writability is watched, more relayed data waits for it.
        assert_eq!(c.queue(&mut pipe, &data[0], true, &l), Queued::Taken);
        assert!(!c.end_turn());
        // Writable again, twice.
        for _ in 0..2 {
            pipe.room = 1500;
            c.write_out(&mut pipe).unwrap();
        }
        assert_eq!(pipe.output, [data.concat(), data[0].clone()].concat());
        assert_eq!((c.queued(), c.take_interest()), (0, Some(false)));
    }

    #[test]
    fn an_idle_connection_without_an_allocation_expires() {
        let now = Instant::now();
        let l = StreamLimits::default();
        let c = plain(now);
        let later = now + l.idle_timeout + Duration::from_secs(1);
        assert!(!c.expired(now, &l, |_| false));
        assert!(c.expired(later, &l, |_| false));
        assert!(!c.expired(later, &l, |_| true));
    }

    // The PROXY protocol check at the start of a connection.

    fn v1(source: &str) -> Vec<u8> {
        let h = proxy::Header::tcp(proxy::Version::V1, source.parse().unwrap(), "198.51.100.1:3478".parse().unwrap());
        h.encode_v1().unwrap()
    }

    fn v2(source: &str) -> Vec<u8> {
        let source: SocketAddr = source.parse().unwrap();
        let to = if source.is_ipv4() { "198.51.100.1:3478" } else { "[2001:db8::1]:3478" };
        let h = proxy::Header::tcp(proxy::Version::V2, source, to.parse().unwrap());
        h.encode_v2(&[(0xea, b"\x01vpce-0abc")]).unwrap()
    }

    /// Reads the preamble of `c` from `stream` delivered `read` bytes at a
    /// time; the outcome that ended it, and the frames that followed.
    fn preamble_in_reads(c: &mut StreamConn, stream: &[u8], read: usize) -> (PreambleOutcome, Vec<Vec<u8>>) {
        let now = Instant::now();
        let mut pipe = Pipe::open();
        let mut pieces = stream.chunks(read);
        let outcome = loop {
            let Some(piece) = pieces.next() else { panic!("the preamble never ended") };
            pipe.input.extend_from_slice(piece);
            match c.read_preamble(&mut pipe, now) {
                PreambleOutcome::Blocked => {}
                other => break other,
            }
        };
        let mut got = Vec::new();
        if matches!(outcome, PreambleOutcome::Header(_) | PreambleOutcome::Plain) {
            assert!(!c.in_preamble());
            while let Some(f) = c.next_frame().unwrap() {
                got.push(c.frame(f).to_vec());
            }
            for piece in pieces {
                pipe.input.extend_from_slice(piece);
            }
            got.extend(frames(c, &mut pipe, now).unwrap());
        }
        (outcome, got)
    }

    #[test]
    fn a_header_however_split_then_frames_in_the_same_reads() {
        let sent = vec![binding(0), channel(3, 1), binding(40)];
        for (header, source) in [(v1("192.0.2.10:5555"), "192.0.2.10:5555"), (v2("[2001:db8::7]:9"), "[2001:db8::7]:9")]
        {
            let stream = [header.clone(), sent.concat()].concat();
            for read in [1, 2, 5, 13, 17, header.len(), header.len() + 1, stream.len()] {
                let mut c = plain(Instant::now());
                c.expect_proxy_header();
                assert_eq!(c.awaited_header_bytes(), Some(0));
                let (outcome, got) = preamble_in_reads(&mut c, &stream, read);
                let PreambleOutcome::Header(h) = outcome else { panic!("{outcome:?} in reads of {read}") };
                assert_eq!(h.client(), Some(source.parse().unwrap()));
                assert_eq!(got, sent, "reads of {read}");
                assert_eq!(c.awaited_header_bytes(), None);
            }
        }
    }

    #[test]
    fn a_trusted_peer_without_a_valid_header_is_refused() {
        let cases: [(&[u8], ProxyRefusal); 4] = [
            (&binding(0), ProxyRefusal::Missing),
            (b"GET / HTTP/1.1\r\n", ProxyRefusal::Missing),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", ProxyRefusal::Invalid),
            (&[&proxy::V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat(), ProxyRefusal::Invalid),
        ];
        for (stream, why) in cases {
            let mut c = plain(Instant::now());
            c.expect_proxy_header();
            let (outcome, _) = preamble_in_reads(&mut c, stream, 1);
            assert_eq!(outcome, PreambleOutcome::Refused(why), "{stream:?}");
        }
        // The stream ends halfway through a header, or before one.
        let now = Instant::now();
        let mut c = plain(now);
        c.expect_proxy_header();
        let mut pipe = Pipe { input: b"PROXY TCP4 ".to_vec(), eof: true, ..Pipe::open() };
        assert_eq!(c.read_preamble(&mut pipe, now), PreambleOutcome::Refused(ProxyRefusal::Invalid));
        let mut c = plain(now);
        c.expect_proxy_header();
        let mut pipe = Pipe { eof: true, ..Pipe::open() };
        assert_eq!(c.read_preamble(&mut pipe, now), PreambleOutcome::Closed);
    }

    #[test]
    fn an_untrusted_peer_may_not_send_a_header() {
        for stream in [v1("192.0.2.10:5555"), v2("[2001:db8::7]:9"), b"P".to_vec(), b"\r\n".to_vec()] {
            let mut c = plain(Instant::now());
            c.refuse_proxy_header();
            let (outcome, _) = preamble_in_reads(&mut c, &stream, 64);
            assert_eq!(outcome, PreambleOutcome::Refused(ProxyRefusal::Untrusted), "{stream:?}");
        }
        // Frames are frames, from the first byte.
        let sent = vec![channel(5, 9), binding(0)];
        let mut c = plain(Instant::now());
        c.refuse_proxy_header();
        let (outcome, got) = preamble_in_reads(&mut c, &sent.concat(), 7);
        assert_eq!((outcome, got), (PreambleOutcome::Plain, sent));
        assert_eq!(c.awaited_header_bytes(), None);
    }

    #[test]
    fn a_header_that_does_not_come_in_time_expires() {
        let now = Instant::now();
        let l = StreamLimits::default();
        let mut c = plain(now);
        c.expect_proxy_header();
        let mut pipe = Pipe { input: b"PROXY TC".to_vec(), ..Pipe::open() };
        assert_eq!(c.read_preamble(&mut pipe, now), PreambleOutcome::Blocked);
        assert_eq!(c.awaited_header_bytes(), Some(8));
        let late = now + l.proxy_header_timeout + Duration::from_millis(1);
        assert!(!c.expired(now + l.proxy_header_timeout, &l, |_| false));
        assert!(c.expired(late, &l, |_| false));
        // Once the header is there, only the idle rule applies.
        pipe.input.extend_from_slice(b"P4 1.2.3.4 5.6.7.8 1 2\r\n");
        assert!(matches!(c.read_preamble(&mut pipe, now), PreambleOutcome::Header(_)));
        assert!(!c.expired(late, &l, |_| false));
    }

    #[test]
    fn a_header_before_tls_then_the_handshake_and_frames() {
        let now = Instant::now();
        let (server, client_config) = tls_configs();
        let tls = Box::new(rustls::ServerConnection::new(server).unwrap());
        let mut c = StreamConn::new(client(Transport::Tls), Some(tls), now);
        c.expect_proxy_header();
        let mut tc = rustls::ClientConnection::new(client_config, "localhost".try_into().unwrap()).unwrap();
        let mut pipe = Pipe::open();
        // The header and the ClientHello in one read.
        pipe.input.extend_from_slice(&v2("192.0.2.10:5555"));
        while tc.wants_write() {
            tc.write_tls(&mut pipe.input).unwrap();
        }
        let PreambleOutcome::Header(h) = c.read_preamble(&mut pipe, now) else { panic!("no header") };
        assert_eq!(h.client(), Some("192.0.2.10:5555".parse().unwrap()));
        // rustls answered the ClientHello.
        assert!(!pipe.output.is_empty());
        finish_handshake(&mut c, &mut tc, &mut pipe, now);
        let sent = vec![binding(0), channel(100, 1)];
        tc.writer().write_all(&sent.concat()).unwrap();
        while tc.wants_write() {
            tc.write_tls(&mut pipe.input).unwrap();
        }
        assert_eq!(frames(&mut c, &mut pipe, now).unwrap(), sent);
    }

    #[test]
    fn an_untrusted_tls_client_handshakes_as_before() {
        let now = Instant::now();
        let (server, client_config) = tls_configs();
        let tls = Box::new(rustls::ServerConnection::new(server).unwrap());
        let mut c = StreamConn::new(client(Transport::Tls), Some(tls), now);
        c.refuse_proxy_header();
        let mut tc = rustls::ClientConnection::new(client_config, "localhost".try_into().unwrap()).unwrap();
        let mut pipe = Pipe::open();
        while tc.wants_write() {
            tc.write_tls(&mut pipe.input).unwrap();
        }
        assert_eq!(c.read_preamble(&mut pipe, now), PreambleOutcome::Plain);
        finish_handshake(&mut c, &mut tc, &mut pipe, now);
    }

    // TLS: a real rustls session over the in-memory pipe.

    fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let (server, root) = test_kit::test_certificate();
        (server, test_kit::client_config(&root))
    }

    /// A TLS connection with its handshake done, the client's end, and the
    /// pipe between them (emptied).
    fn tls_pair(now: Instant) -> (StreamConn, rustls::ClientConnection, Pipe) {
        let (server, client_config) = tls_configs();
        let tls = Box::new(rustls::ServerConnection::new(server).unwrap());
        let mut c = StreamConn::new(client(Transport::Tls), Some(tls), now);
        let mut tc = rustls::ClientConnection::new(client_config, "localhost".try_into().unwrap()).unwrap();
        let mut pipe = Pipe::open();
        for _ in 0..10 {
            while tc.wants_write() {
                tc.write_tls(&mut pipe.input).unwrap();
            }
            assert_eq!(c.read_from(&mut pipe, now), ReadOutcome::Blocked);
            let _ = client_reads(&mut tc, &std::mem::take(&mut pipe.output));
            if !c.handshaking() && !tc.is_handshaking() && !tc.wants_write() {
                pipe.writes = 0;
                return (c, tc, pipe);
            }
        }
        panic!("no TLS handshake");
    }

    /// Runs the TLS handshake between `c` and the client `tc` over `pipe`
    /// to its end (whatever `c` already answered is the client's to read
    /// first); a panic when it does not end in a few flights.
    fn finish_handshake(c: &mut StreamConn, tc: &mut rustls::ClientConnection, pipe: &mut Pipe, now: Instant) {
        for _ in 0..10 {
            let _ = client_reads(tc, &std::mem::take(&mut pipe.output));
            while tc.wants_write() {
                tc.write_tls(&mut pipe.input).unwrap();
            }
            assert_eq!(c.read_from(pipe, now), ReadOutcome::Blocked);
            if !c.handshaking() && !tc.is_handshaking() {
                return;
            }
        }
        panic!("no TLS handshake");
    }

    /// The client decrypts `wire`: the plaintext.
    fn client_reads(tc: &mut rustls::ClientConnection, mut wire: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        while !wire.is_empty() {
            tc.read_tls(&mut wire).unwrap();
            tc.process_new_packets().unwrap();
            let mut buf = [0u8; 16384];
            loop {
                match tc.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        plain
    }

    /// The sizes of the TLS records in `wire`.
    fn records(mut wire: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while wire.len() >= 5 {
            assert_eq!(wire[0], 0x17, "application data records only");
            let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
            out.push(len);
            wire = &wire[5 + len..];
        }
        assert!(wire.is_empty());
        out
    }

    /// Runs `f` on another thread and fails if it takes longer than
    /// `limit` (a spinning write loop would never return).
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).expect("did not finish: a write loop spins")
    }

    #[test]
    fn tls_frames_arrive_through_the_pipe() {
        let now = Instant::now();
        let (mut c, mut tc, mut pipe) = tls_pair(now);
        let sent = vec![binding(0), channel(100, 1), binding(7)];
        tc.writer().write_all(&sent.concat()).unwrap();
        while tc.wants_write() {
            tc.write_tls(&mut pipe.input).unwrap();
        }
        assert_eq!(frames(&mut c, &mut pipe, now).unwrap(), sent);
        // A response goes out at once, as one record.
        let response = binding(20);
        assert_eq!(c.queue(&mut pipe, &response, false, &StreamLimits::default()), Queued::Taken);
        assert_eq!(records(&pipe.output).len(), 1);
        assert_eq!(client_reads(&mut tc, &pipe.output), response);
    }

    /// The bug once fixed: a turn's relayed TLS output beyond rustls's
    /// 64 KiB record buffer made the frame loop spin forever (a full
    /// rustls takes nothing). A 120 KB burst in one turn must leave, one
    /// record per frame, whether the socket takes it all or a little at a
    /// time.
    #[test]
    fn a_120_kb_turn_over_tls_leaves_one_record_per_frame_without_spinning() {
        for room in [usize::MAX, 4096] {
            let (sent, wire, writes) = within(Duration::from_secs(20), move || {
                let now = Instant::now();
                let (mut c, mut tc, mut pipe) = tls_pair(now);
                pipe.room = room;
                let l = StreamLimits::default();
                let sent: Vec<Vec<u8>> = (0..120).map(|i| channel(996, i as u8)).collect();
                for d in &sent {
                    assert_ne!(c.queue(&mut pipe, d, true, &l), Queued::Shed);
                }
                assert!(c.end_turn());
                c.write_out(&mut pipe).unwrap();
                // A slow reader: writable again and again, each time
                // taking some.
                let mut events = 0;
                while c.queued() > 0 || c.tls.as_ref().unwrap().wants_write() {
                    let before = pipe.output.len();
                    pipe.room = room;
                    c.write_out(&mut pipe).unwrap();
                    assert!(pipe.output.len() > before, "no progress");
                    events += 1;
                    assert!(events < 1000);
                }
                assert_eq!(client_reads(&mut tc, &pipe.output), sent.concat());
                (sent, pipe.output, pipe.writes)
            });
            let rec = records(&wire);
            assert_eq!(rec.len(), sent.len(), "one record per frame (socket room {room})");
            assert!(rec.iter().all(|&n| n > 1000 && n < 1000 + TLS_RECORD_OVERHEAD));
            if room == usize::MAX {
                // The turn's records leave in a few writes, not one per
                // frame.
                assert!(writes < 10, "{writes} writes");
            }
        }
    }

    #[test]
    fn pushes_into_rustls_stay_within_its_record_buffer() {
        let now = Instant::now();
        let (mut c, _tc, _pipe) = tls_pair(now);
        within(Duration::from_secs(20), move || {
            let tls = c.tls.as_deref_mut().unwrap();
            let burst: Vec<u8> = (0..120).map(|i| channel(996, i as u8)).collect::<Vec<_>>().concat();
            let mut at = 0;
            while at < burst.len() {
                let mut split = 0;
                let n = push_records(tls, &mut split, &burst[at..]).unwrap();
                assert_eq!(split, 0);
                // Whole frames only, and no more than the budget.
                assert!(n > 0 && n.is_multiple_of(1000) && n <= TLS_PUSH_BUDGET, "{n}");
                let mut wire = Vec::new();
                while tls.wants_write() {
                    tls.write_tls(&mut wire).unwrap();
                }
                assert!(wire.len() <= 64 * 1024);
                assert_eq!(records(&wire).len(), n / 1000);
                at += n;
            }
        });
    }

    #[test]
    fn a_frame_larger_than_rustls_holds_goes_alone_split_as_it_must() {
        let now = Instant::now();
        let (mut c, mut tc, mut pipe) = tls_pair(now);
        let sent = [channel(8, 1), channel(0xffff, 2), channel(8, 3), channel(8, 4)];
        let l = StreamLimits::default();
        for d in &sent {
            c.queue(&mut pipe, d, true, &l);
        }
        assert!(c.end_turn());
        let wire = within(Duration::from_secs(20), move || {
            c.write_out(&mut pipe).unwrap();
            assert_eq!(c.queued(), 0);
            assert_eq!(client_reads(&mut tc, &pipe.output), sent.concat());
            pipe.output
        });
        // TLS 1.3 records: 17 bytes more than their plaintext. The large
        // frame is several records; none holds bytes of another frame.
        let plain: Vec<usize> = records(&wire).iter().map(|n| n - 17).collect();
        let (first, last) = (plain[0], plain[plain.len() - 2..].to_vec());
        assert_eq!((first, last), (12, vec![12, 12]));
        assert_eq!(plain[1..plain.len() - 2].iter().sum::<usize>(), channel(0xffff, 2).len());
    }
}
