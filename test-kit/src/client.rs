//! The blocking TURN client: one request loop (long-term authentication,
//! the 401 → nonce exchange, a 438 answered with the fresh nonce) over a
//! UDP socket or a TCP/TLS stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::wire::attr::transport;
use relay_core::wire::integrity::Key;
use relay_core::wire::{
    Attribute, AttributeType, Class, Frame, Message, MessageBuilder, MessageType, Method, TransactionId, next_frame,
};

use crate::{Login, TIMEOUT, channel_frame, error_code};

/// Requests sent for one call: the first, its retry with a nonce, and one
/// more after a 438.
const TRIES: usize = 3;

/// The authentication state shared by both transports.
struct Session {
    user: String,
    realm: String,
    key: Key,
    nonce: String,
    tid: u32,
}

impl Session {
    fn new(login: Login<'_>) -> Session {
        Session { user: login.user.into(), realm: login.realm.into(), key: login.key(), nonce: String::new(), tid: 0 }
    }

    /// Sends `method` with `attrs` through `exchange` (which sends the
    /// message and returns the answer with its transaction id) until an
    /// answer is final: once the server has given a nonce, requests carry
    /// USERNAME, REALM, NONCE and MESSAGE-INTEGRITY; a 401 to a request
    /// without a nonce, or a 438, is answered by sending again with the
    /// nonce it carries.
    fn request(
        &mut self,
        method: Method,
        attrs: &[Attribute<'_>],
        mut exchange: impl FnMut(&[u8], TransactionId) -> Vec<u8>,
    ) -> Vec<u8> {
        for _ in 0..TRIES {
            self.tid += 1;
            let mut t = [0u8; 12];
            t[..4].copy_from_slice(&self.tid.to_be_bytes());
            let tid = TransactionId(t);
            let mut buf = [0u8; 1500];
            let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, method), tid).unwrap();
            for a in attrs {
                b.add(a).unwrap();
            }
            if !self.nonce.is_empty() {
                b.add(&Attribute::Username(&self.user)).unwrap();
                b.add(&Attribute::Realm(&self.realm)).unwrap();
                b.add(&Attribute::Nonce(&self.nonce)).unwrap();
                b.add_message_integrity(self.key.as_bytes()).unwrap();
            }
            b.add_fingerprint().unwrap();
            let n = b.finish();
            let resp = exchange(&buf[..n], tid);
            if !self.take_nonce(&resp) {
                return resp;
            }
        }
        panic!("{method:?}: no final answer after {TRIES} requests")
    }

    /// True when `resp` asks for the request again with the nonce it
    /// carries (now kept).
    fn take_nonce(&mut self, resp: &[u8]) -> bool {
        let code = error_code(resp);
        if !(code == Some(438) || (code == Some(401) && self.nonce.is_empty())) {
            return false;
        }
        let m = Message::parse(resp).unwrap();
        match m.get(AttributeType::NONCE).map(|a| a.decode(&m.transaction_id())) {
            Some(Ok(Attribute::Nonce(n))) => {
                self.nonce = n.to_owned();
                true
            }
            _ => false,
        }
    }
}

/// Fails the test unless `resp` is a success response.
fn expect_success(method: Method, resp: Vec<u8>) -> Vec<u8> {
    let class = Message::parse(&resp).expect("a STUN response").class();
    assert_eq!(class, Class::Success, "{method:?}: {:?}", error_code(&resp));
    resp
}

/// The XOR-RELAYED-ADDRESS of an Allocate success, or the error code (0
/// for an error without one).
fn relayed_address(resp: &[u8]) -> Result<SocketAddr, u16> {
    let m = Message::parse(resp).expect("a STUN response");
    if m.class() != Class::Success {
        return Err(error_code(resp).unwrap_or(0));
    }
    match m.get(AttributeType::XOR_RELAYED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::XorRelayedAddress(a))) => Ok(a),
        other => panic!("an Allocate success without XOR-RELAYED-ADDRESS: {other:?}"),
    }
}

/// The attributes of a plain UDP Allocate.
const ALLOCATE_UDP: [Attribute<'static>; 1] = [Attribute::RequestedTransport(transport::UDP)];

/// A blocking TURN client over UDP, from 127.0.0.1.
pub struct TurnClient {
    /// The client's socket: send ChannelData on it, or change its read
    /// timeout (which bounds [`recv`](TurnClient::recv)).
    pub sock: UdpSocket,
    /// The server's address.
    pub server: SocketAddr,
    timeout: Duration,
    session: Session,
}

impl TurnClient {
    /// A client of `server` on a fresh socket that waits [`TIMEOUT`] for
    /// an answer.
    pub fn new(server: SocketAddr, login: Login<'_>) -> TurnClient {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket");
        sock.set_read_timeout(Some(TIMEOUT)).expect("set a read timeout");
        TurnClient { sock, server, timeout: TIMEOUT, session: Session::new(login) }
    }

    /// A client of `server` on `sock` (bound where the test wants it, a
    /// network namespace's address say), waiting [`TIMEOUT`] for an answer.
    pub fn with_socket(sock: UdpSocket, server: SocketAddr, login: Login<'_>) -> TurnClient {
        sock.set_read_timeout(Some(TIMEOUT)).expect("set a read timeout");
        TurnClient { sock, server, timeout: TIMEOUT, session: Session::new(login) }
    }

    /// The same client waiting `timeout` for an answer.
    pub fn with_timeout(self, timeout: Duration) -> TurnClient {
        self.sock.set_read_timeout(Some(timeout)).expect("set a read timeout");
        TurnClient { timeout, ..self }
    }

    /// Sends a request until its answer is final (see the module docs) and
    /// returns that answer. Datagrams that are not its answer are dropped
    /// while waiting; no answer within the timeout fails the test.
    pub fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let (sock, server, timeout) = (&self.sock, self.server, self.timeout);
        self.session.request(method, attrs, |msg, tid| {
            sock.send_to(msg, server).expect("send a request");
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                let n = match crate::recv_from(sock, &mut buf) {
                    Ok((n, _)) => n,
                    Err(e) => panic!("{method:?}: no response: {e}"),
                };
                if Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id() == tid) {
                    return buf[..n].to_vec();
                }
            }
            panic!("{method:?}: no response within {timeout:?}")
        })
    }

    /// [`request`](TurnClient::request), failing the test unless the
    /// answer is a success; returns it.
    pub fn ok(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        expect_success(method, self.request(method, attrs))
    }

    /// Allocates a UDP relay: the relayed address, or the error code.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        self.allocate_with(&ALLOCATE_UDP)
    }

    /// Allocates with these attributes (REQUESTED-TRANSPORT among them).
    pub fn allocate_with(&mut self, attrs: &[Attribute<'_>]) -> Result<SocketAddr, u16> {
        relayed_address(&self.request(Method::ALLOCATE, attrs))
    }

    /// Sends `bytes` to the server as they are.
    pub fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).expect("send to the server");
    }

    /// Sends `payload` on `channel` as ChannelData.
    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        self.send(&channel_frame(channel, payload, false));
    }

    /// The next datagram, or `None` once the socket's read timeout passes.
    pub fn recv(&self) -> Option<Vec<u8>> {
        crate::recv_datagram(&self.sock).map(|(v, _)| v)
    }
}

/// A byte stream to the server: TCP, or TLS over TCP.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A blocking TURN client over TCP or TLS; frames are read with
/// relay-core's stream framer.
pub struct StreamClient {
    /// The connection: write ChannelData (padded) on it.
    pub stream: Box<dyn Stream>,
    rbuf: Vec<u8>,
    session: Session,
}

impl StreamClient {
    /// A client over TCP to `addr`, waiting [`TIMEOUT`] for any read.
    pub fn tcp(addr: SocketAddr, login: Login<'_>) -> StreamClient {
        StreamClient::over(Box::new(connect(addr)), login)
    }

    /// A client over TLS to `addr`, for the name "localhost", trusting
    /// `root` (a [`test_certificate`](crate::test_certificate)).
    pub fn tls(addr: SocketAddr, login: Login<'_>, root: &rustls::pki_types::CertificateDer<'static>) -> StreamClient {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(crate::client_config(root), name).expect("a TLS client");
        StreamClient::over(Box::new(rustls::StreamOwned::new(conn, connect(addr))), login)
    }

    /// A client over a stream the caller opened (and may have written to
    /// first: a PROXY protocol header before TCP or TLS).
    pub fn over(stream: Box<dyn Stream>, login: Login<'_>) -> StreamClient {
        StreamClient { stream, rbuf: Vec::new(), session: Session::new(login) }
    }

    /// The next whole frame (STUN message or ChannelData, padding
    /// included); end of stream or a read timeout fails the test.
    pub fn frame(&mut self) -> Vec<u8> {
        read_frame(self.stream.as_mut(), &mut self.rbuf)
    }

    /// Sends a request until its answer is final (see the module docs) and
    /// returns that answer. Frames that are not its answer are dropped
    /// while waiting; a read timeout fails the test.
    pub fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        let (stream, rbuf) = (&mut self.stream, &mut self.rbuf);
        self.session.request(method, attrs, |msg, tid| {
            stream.write_all(msg).expect("send a request");
            loop {
                let frame = read_frame(stream.as_mut(), rbuf);
                if Message::parse(&frame).is_ok_and(|m| m.transaction_id() == tid) {
                    return frame;
                }
            }
        })
    }

    /// [`request`](StreamClient::request), failing the test unless the
    /// answer is a success; returns it.
    pub fn ok(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        expect_success(method, self.request(method, attrs))
    }

    /// Allocates a UDP relay: the relayed address, or the error code.
    pub fn allocate(&mut self) -> Result<SocketAddr, u16> {
        relayed_address(&self.request(Method::ALLOCATE, &ALLOCATE_UDP))
    }

    /// Sends `bytes` on the stream as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the server");
    }

    /// Sends `payload` on `channel` as padded ChannelData.
    pub fn send_channel_data(&mut self, channel: u16, payload: &[u8]) {
        self.send(&channel_frame(channel, payload, true));
    }
}

/// The next whole frame in `rbuf`, reading `stream` as needed.
fn read_frame(stream: &mut dyn Stream, rbuf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        match next_frame(rbuf).expect("a framing error") {
            Frame::Stun(n) | Frame::ChannelData(n) => return rbuf.drain(..n).collect(),
            Frame::NeedMore(_) => {
                let mut buf = [0u8; 4096];
                let n = match stream.read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => r.expect("frame"),
                };
                assert!(n > 0, "connection closed");
                rbuf.extend_from_slice(&buf[..n]);
            }
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).expect("connect to the server");
    tcp.set_read_timeout(Some(TIMEOUT)).expect("set a read timeout");
    tcp
}
