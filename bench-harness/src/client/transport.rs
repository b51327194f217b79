//! Transports a [`super::TurnClient`] runs over: UDP, TCP (RFC 8656
//! §6.2, the stream framed with `relay_core::wire::next_frame`) and TLS over
//! TCP (RFC 8656 §3.1, rustls with the ring provider, framed the same way).

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::wire::{Frame, next_frame};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, SignatureScheme};

/// The transport between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl TransportKind {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Udp => "udp",
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
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
    /// Moves to another server of the same kind, for a 300 (Try
    /// Alternate) the client follows: UDP points its socket there, TCP and
    /// TLS open a new connection from the same local IP (TLS checking the
    /// certificate for `domain` when given, else for the name used so far).
    /// Transports that cannot move say so (`Unsupported`).
    fn redirect(&mut self, server: SocketAddr, domain: Option<&str>) -> io::Result<()> {
        let _ = domain;
        Err(io::Error::new(io::ErrorKind::Unsupported, format!("cannot move this transport to {server}")))
    }
}

/// The local address a moved connection binds: the same IP, any port.
fn same_ip(local: io::Result<SocketAddr>) -> Option<SocketAddr> {
    local.ok().map(|l| SocketAddr::new(l.ip(), 0))
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

    fn redirect(&mut self, server: SocketAddr, _domain: Option<&str>) -> io::Result<()> {
        self.sock.connect(server)?;
        self.server = server;
        Ok(())
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
        Framed::try_recv(self, out)
    }
}

/// What the two stream transports share: a buffer of bytes read (and
/// decrypted) that is cut into frames with `relay_core::wire::next_frame`.
trait Framed {
    /// `TCP` or `TLS`, for error messages.
    const NAME: &'static str;
    /// The bytes read and not yet handed out.
    fn rbuf(&mut self) -> &mut Vec<u8>;
    /// One read into the buffer; an error at the end of the stream.
    fn fill(&mut self) -> io::Result<()>;
    /// The TCP stream (for read timeouts).
    fn tcp(&self) -> &TcpStream;

    /// The next whole frame already read, moved into `out`.
    fn take_frame(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        let rbuf = self.rbuf();
        let n = match next_frame(rbuf) {
            Ok(Frame::Stun(n) | Frame::ChannelData(n)) => n,
            Ok(Frame::NeedMore(_)) => return Ok(None),
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} framing: {e}", Self::NAME))),
        };
        if n > out.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{n}-byte frame exceeds the buffer")));
        }
        out[..n].copy_from_slice(&rbuf[..n]);
        rbuf.drain(..n);
        Ok(Some(n))
    }

    /// Non-blocking: the next whole frame, or `None` when none is complete.
    fn try_recv(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
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

    /// Blocking, at most `timeout`: the next whole frame.
    fn recv_within(&mut self, out: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(n) = self.take_frame(out)? {
                return Ok(Some(n));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.tcp().set_read_timeout(Some(left.max(Duration::from_micros(100))))?;
            match self.fill() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Framed for TcpTransport {
    const NAME: &'static str = "TCP";
    fn rbuf(&mut self) -> &mut Vec<u8> {
        &mut self.rbuf
    }
    fn fill(&mut self) -> io::Result<()> {
        TcpTransport::fill(self)
    }
    fn tcp(&self) -> &TcpStream {
        &self.stream
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
        self.recv_within(buf, timeout)
    }

    fn reliable(&self) -> bool {
        true
    }

    fn redirect(&mut self, server: SocketAddr, _domain: Option<&str>) -> io::Result<()> {
        *self = TcpTransport::connect(server, same_ip(self.stream.local_addr()))?;
        Ok(())
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

/// How a TLS client trusts and names the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// A PEM file of CA certificates to trust (the server's own certificate
    /// when it is self-signed).
    pub ca: Option<PathBuf>,
    /// Accept any certificate (benchmarking a server with a self-signed
    /// certificate); handshake signatures are still verified.
    pub insecure: bool,
    /// The name sent in SNI and checked against the certificate; the
    /// server's IP address when `None`.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Options that accept any certificate.
    pub fn insecure() -> TlsOptions {
        TlsOptions { insecure: true, ..TlsOptions::default() }
    }

    /// Options that trust the CA certificates in the PEM file `ca`.
    pub fn with_ca(ca: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions { ca: Some(ca.into()), ..TlsOptions::default() }
    }

    /// The rustls configuration and the server name for connections to
    /// `server`: reads the CA file once, for every connection made with the
    /// result. Fails (`InvalidInput`) when neither a CA nor `insecure` is
    /// given, or the CA file holds no usable certificate, or the name is not
    /// a DNS name or IP address.
    pub fn connector(&self, server: SocketAddr) -> io::Result<TlsConnector> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS: {e}")))?;
        let config = match (&self.ca, self.insecure) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
            (Some(ca), false) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| invalid(format!("TLS CA {}: {e}", ca.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(invalid(format!("TLS CA {}: no usable certificate", ca.display())));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, false) => {
                return Err(invalid("TLS needs a CA certificate to trust (--tls-ca) or --tls-insecure".into()));
            }
        };
        let name = match &self.server_name {
            Some(n) => ServerName::try_from(n.clone()).map_err(|e| invalid(format!("TLS server name {n:?}: {e}")))?,
            None => ServerName::IpAddress(server.ip().into()),
        };
        Ok(TlsConnector { config: Arc::new(config), name })
    }
}

/// A rustls client configuration and server name, made once by
/// [`TlsOptions::connector`] and shared by many connections.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnector {
    /// The rustls configuration.
    pub fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// The name sent in SNI and checked against the certificate.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }
}

/// Accepts any server certificate (`--tls-insecure`), but still checks the
/// handshake signatures with the ring provider's algorithms, so the
/// connection is at least made with the key of the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How long [`TlsTransport::connect`] waits for the handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// TURN over TLS (RFC 8656 §3.1): a rustls client connection over a TCP
/// stream carrying STUN messages and ChannelData frames (padded to 4 bytes)
/// back to back, framed like [`TcpTransport`].
///
/// Made by [`TlsTransport::connect`] (blocking, handshake done) or
/// [`TlsTransport::start`] (non-blocking; the handshake proceeds in
/// [`TlsTransport::try_recv`] and requests sent meanwhile wait in rustls
/// until it completes).
#[derive(Debug)]
pub struct TlsTransport {
    stream: TcpStream,
    conn: ClientConnection,
    server: SocketAddr,
    /// Decrypted bytes not yet handed out as frames.
    rbuf: Vec<u8>,
    /// What it connected with, for a redirect (none when made from parts).
    connector: Option<TlsConnector>,
}

impl TlsTransport {
    fn open(server: SocketAddr, local: Option<SocketAddr>, tls: &TlsConnector) -> io::Result<TlsTransport> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(server), socket2::Type::STREAM, None)?;
        if let Some(l) = local {
            sock.bind(&l.into())?;
        }
        sock.connect(&server.into())?;
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true)?;
        let conn = ClientConnection::new(tls.config.clone(), tls.name.clone()).map_err(tls_error)?;
        Ok(TlsTransport { stream, conn, server, rbuf: Vec::with_capacity(4096), connector: Some(tls.clone()) })
    }

    /// Connects to `server` from `local` (when given; port 0: ephemeral)
    /// and completes the TLS handshake, waiting at most
    /// [`TLS_HANDSHAKE_TIMEOUT`]. A certificate the options do not trust
    /// fails here (`InvalidData`, `TLS handshake with ...: invalid peer
    /// certificate: ...`).
    pub fn connect(server: SocketAddr, local: Option<SocketAddr>, tls: &TlsConnector) -> io::Result<TlsTransport> {
        let mut t = TlsTransport::open(server, local, tls)?;
        let deadline = Instant::now() + TLS_HANDSHAKE_TIMEOUT;
        let fail = |e: io::Error| io::Error::new(e.kind(), format!("TLS handshake with {server}: {e}"));
        while t.conn.is_handshaking() {
            t.flush(deadline).map_err(fail)?;
            if !t.conn.is_handshaking() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
            }
            t.stream.set_read_timeout(Some(left))?;
            match t.pump() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(fail(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
                }
                Err(e) => return Err(fail(e)),
            }
        }
        t.flush(deadline)?;
        Ok(t)
    }

    /// Connects the TCP stream (blocking, like [`TcpTransport::connect`]),
    /// makes it non-blocking and sends the ClientHello; the handshake goes
    /// on in [`TlsTransport::try_recv`]. For drivers on epoll.
    pub fn start(server: SocketAddr, local: Option<SocketAddr>, tls: &TlsConnector) -> io::Result<TlsTransport> {
        let mut t = TlsTransport::open(server, local, tls)?;
        t.stream.set_nonblocking(true)?;
        t.flush(Instant::now() + Duration::from_secs(5))?;
        Ok(t)
    }

    /// The TCP stream under TLS.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The rustls connection.
    pub fn connection(&self) -> &ClientConnection {
        &self.conn
    }

    /// Gives the connection up after setup (a data plane takes it over):
    /// the TCP stream, the rustls connection, and the decrypted bytes
    /// already read but not yet handed out as frames.
    pub fn into_parts(self) -> (TcpStream, ClientConnection, Vec<u8>) {
        (self.stream, self.conn, self.rbuf)
    }

    /// Takes a connection back from [`TlsTransport::into_parts`] (the
    /// stream blocking again).
    pub fn from_parts(stream: TcpStream, conn: ClientConnection, server: SocketAddr, pending: Vec<u8>) -> TlsTransport {
        TlsTransport { stream, conn, server, rbuf: pending, connector: None }
    }

    /// Writes what rustls has to send (handshake records, encrypted
    /// frames). On a non-blocking stream with a full send buffer, waits a
    /// little at a time until `deadline`.
    fn flush(&mut self, deadline: Instant) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.stream) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "server closed the connection")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads TLS records from the stream once, processes them, moves the
    /// plaintext into the buffer and sends what the handshake answers. An
    /// error at the end of the stream or on a TLS failure (after sending
    /// the alert, best effort).
    fn pump(&mut self) -> io::Result<()> {
        loop {
            match self.conn.read_tls(&mut self.stream) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let state = match self.conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                let _ = self.conn.write_tls(&mut self.stream);
                return Err(tls_error(e));
            }
        };
        let mut want = state.plaintext_bytes_to_read();
        while want > 0 {
            let at = self.rbuf.len();
            self.rbuf.resize(at + want, 0);
            let n = self.conn.reader().read(&mut self.rbuf[at..])?;
            self.rbuf.truncate(at + n);
            if n == 0 {
                break;
            }
            want -= n;
        }
        if state.peer_has_closed() && self.rbuf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the TLS session"));
        }
        self.flush(Instant::now() + Duration::from_secs(5))
    }

    /// On a non-blocking stream: the next whole frame, or `None` when none
    /// is complete yet (the handshake may still be going on).
    pub fn try_recv(&mut self, out: &mut [u8]) -> io::Result<Option<usize>> {
        Framed::try_recv(self, out)
    }
}

impl Framed for TlsTransport {
    const NAME: &'static str = "TLS";
    fn rbuf(&mut self) -> &mut Vec<u8> {
        &mut self.rbuf
    }
    fn fill(&mut self) -> io::Result<()> {
        self.pump()
    }
    fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl Transport for TlsTransport {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        // During the handshake rustls keeps the plaintext until it can
        // encrypt it.
        self.conn.writer().write_all(msg)?;
        self.flush(Instant::now() + Duration::from_secs(5))
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        self.recv_within(buf, timeout)
    }

    fn reliable(&self) -> bool {
        true
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Tls
    }

    fn redirect(&mut self, server: SocketAddr, domain: Option<&str>) -> io::Result<()> {
        let Some(mut connector) = self.connector.clone() else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a TLS transport made from parts cannot move"));
        };
        if let Some(d) = domain {
            connector.name = ServerName::try_from(d.to_owned())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("ALTERNATE-DOMAIN {d:?}: {e}")))?;
        }
        *self = TlsTransport::connect(server, same_ip(self.stream.local_addr()), &connector)?;
        Ok(())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    fn server_addr(&self) -> SocketAddr {
        self.server
    }
}
