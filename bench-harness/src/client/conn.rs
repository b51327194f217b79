//! A non-blocking connection to the server of any [`TransportKind`], for the
//! scenarios that drive many clients over epoll (allocate, churn).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, RawFd};

use super::transport::{TcpTransport, TlsConnector, TlsTransport, Transport as _, TransportKind, UdpTransport};

/// One client's connection, non-blocking.
pub(crate) enum Conn {
    Udp(UdpTransport),
    Tcp(TcpTransport),
    Tls(Box<TlsTransport>),
}

impl Conn {
    /// Opens a connection of `kind` to `server` from `local`. TCP and TLS
    /// connect blocking; the TLS handshake then goes on as answers are
    /// read ([`TlsTransport::start`]). `tls` is needed for TLS.
    pub(crate) fn open(
        kind: TransportKind,
        server: SocketAddr,
        local: SocketAddr,
        tls: Option<&TlsConnector>,
    ) -> io::Result<Conn> {
        Ok(match kind {
            TransportKind::Udp => {
                let t = UdpTransport::connect(server, Some(local))?;
                t.socket().set_nonblocking(true)?;
                Conn::Udp(t)
            }
            TransportKind::Tcp => {
                let t = TcpTransport::connect(server, Some(local))?;
                t.stream().set_nonblocking(true)?;
                Conn::Tcp(t)
            }
            TransportKind::Tls => {
                let tls = tls.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "TLS without TLS options"))?;
                Conn::Tls(Box::new(TlsTransport::start(server, Some(local), tls)?))
            }
        })
    }

    /// The socket's descriptor.
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Conn::Udp(t) => t.socket().as_raw_fd(),
            Conn::Tcp(t) => t.stream().as_raw_fd(),
            Conn::Tls(t) => t.stream().as_raw_fd(),
        }
    }

    /// Whether it is a stream (TCP, TLS): an error on it ends it.
    pub(crate) fn is_stream(&self) -> bool {
        !matches!(self, Conn::Udp(_))
    }

    /// Sends one message or frame.
    pub(crate) fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        match self {
            Conn::Udp(t) => t.send(msg),
            Conn::Tcp(t) => t.send(msg),
            Conn::Tls(t) => t.send(msg),
        }
    }

    /// The next message or frame waiting, if any (non-blocking).
    pub(crate) fn try_recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Conn::Udp(t) => match t.socket().recv(buf) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            },
            Conn::Tcp(t) => t.try_recv(buf),
            Conn::Tls(t) => t.try_recv(buf),
        }
    }
}
