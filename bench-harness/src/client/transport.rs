//! Transports a [`super::TurnClient`] runs over: UDP, and TCP (RFC 8656
//! §6.2, the stream framed with `relay_core::wire::next_frame`); TLS can
//! plug in behind the same trait.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::wire::{Frame, next_frame};

/// The transport between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl TransportKind {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
        }
    }
}

/// Carries whole STUN messages and ChannelData frames to and from the server.
pub trait Transport {
    /// Sends one message or frame.
    fn send(&mut self, msg: &[u8]) -> io::Result<()>;
    /// Waits up to `timeout` for one message or frame; `None` when none came.
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>>;
    /// Whether the transport is reliable (no retransmissions then).
    fn reliable(&self) -> bool;
    /// Which transport this is.
    fn kind(&self) -> TransportKind;
    /// The client's local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// The server's address.
    fn server_addr(&self) -> SocketAddr;
}

/// A UDP socket connected to the server.
#[derive(Debug)]
pub struct UdpTransport {
    sock: UdpSocket,
    server: SocketAddr,
}

impl UdpTransport {
    /// Binds `local` (or an ephemeral port on the unspecified address of the
    /// server's family) and connects it to `server`.
    pub fn connect(server: SocketAddr, local: Option<SocketAddr>) -> io::Result<UdpTransport> {
        let local = local.unwrap_or_else(|| crate::net::unspecified_for(server));
        let sock = UdpSocket::bind(local)?;
        sock.connect(server)?;
        Ok(UdpTransport { sock, server })
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Gives the socket up (the data plane takes it over after setup).
    pub fn into_socket(self) -> UdpSocket {
        self.sock
    }
}

impl Transport for UdpTransport {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        loop {
            match self.sock.send(msg) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        self.sock.set_read_timeout(Some(timeout.max(Duration::from_micros(100))))?;
        loop {
            match self.sock.recv(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                // An ICMP port unreachable from an earlier send.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn reliable(&self) -> bool {
        false
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Udp
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    fn server_addr(&self) -> SocketAddr {
        self.server
    }
}

/// A TCP connection to the server, carrying STUN messages and ChannelData
/// frames (padded to 4 bytes) back to back.
#[derive(Debug)]
pub struct TcpTransport {
    stream: TcpStream,
    server: SocketAddr,
    /// Bytes read and not yet handed out as frames.
    rbuf: Vec<u8>,
}

impl TcpTransport {
    /// Connects to `server` from `local` (when given; port 0: ephemeral).
    pub fn connect(server: SocketAddr, local: Option<SocketAddr>) -> io::Result<TcpTransport> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None)?;
        if let Some(l) = local {
            sock.bind(&l.into())?;
        }
        sock.connect(&server.into())?;
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true)?;
        Ok(TcpTransport { stream, server, rbuf: Vec::with_capacity(4096) })
    }

    /// The stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Gives the stream up (the data plane takes it over after setup), with
    /// the bytes already read and not yet handed out as frames.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.rbuf)
    }

    /// Takes a stream back from [`TcpTransport::into_parts`].
    pub fn from_parts(stream: TcpStream, server: SocketAddr, pending: Vec<u8>) -> TcpTransport {
        TcpTransport { stream, server, rbuf: pending }
    }

    /// The next whole frame already read, copied into `out`.
    fn take_frame(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        let n = match next_frame(&self.rbuf) {
            Ok(Frame::Stun(n) | Frame::ChannelData(n)) => n,
            Ok(Frame::NeedMore(_)) => return Ok(None),
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("TCP framing: {e}"))),
        };
        if n > out.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{n}-byte frame exceeds the buffer")));
        }
        out[..n].copy_from_slice(&self.rbuf[..n]);
        self.rbuf.drain(..n);
        Ok(Some(n))
    }

    /// Reads what the stream has into the buffer once; an error at the end
    /// of the stream.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// On a non-blocking stream: the next whole frame, or `None` when the
    /// stream has none complete yet.
    pub fn try_recv(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            if let Some(n) = self.take_frame(out)? {
                return Ok(Some(n));
            }
            match self.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let mut rest = msg;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !rest.is_empty() {
            match self.stream.write(rest) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "server closed the connection")),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A non-blocking stream with a full send buffer: wait a bit.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.take_frame(buf)? {
                return Ok(Some(n));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left.max(Duration::from_micros(100))))?;
            match self.fill() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn reliable(&self) -> bool {
        true
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    fn server_addr(&self) -> SocketAddr {
        self.server
    }
}
