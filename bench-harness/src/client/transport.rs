//! Transports a [`super::TurnClient`] runs over. UDP today; TCP and TLS
//! (RFC 8656 §6.2, framed with `relay_core::wire::next_frame`) plug in
//! behind the same trait.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// The transport between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// UDP.
    Udp,
}

impl TransportKind {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
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
