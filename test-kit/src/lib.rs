//! What the workspace's tests share, so that no test carries its own copy:
//!
//! - [`TurnClient`] and [`StreamClient`]: a blocking TURN client over UDP,
//!   and over TCP or TLS (frames read with relay-core's stream framer),
//!   that allocates with the 401 → nonce exchange and retries a 438;
//! - [`test_certificate`] and [`certificate`]: self-signed certificates as
//!   relay-io's TLS listener and a client's root store take them;
//! - loopback helpers: [`peer`] (a peer socket on 127.0.0.2), [`backends`],
//!   [`allow_loopback`], [`loopback_config`] (a relay's configuration on
//!   127.0.0.1), [`start_or_skip`], [`error_code`], datagram receives that
//!   retry when a signal interrupts them, [`closed_by_server`];
//! - [`Topology`]: clients, a relay and peers in three network namespaces
//!   joined by veth pairs;
//! - the skip rule ([`skip`], [`skip_io_uring`], [`skips_fail`]): a test
//!   that cannot run here says so, and fails instead in CI.
//!
//! Every blocking read retries on `EINTR`: io_uring shards running in the
//! test's process interrupt other threads' blocking calls at times. Every
//! wait is bounded (by [`TIMEOUT`] unless a test sets another).
//!
//! Dev-only (`publish = false`): a dev-dependency of relay-io, relay-bin
//! and bench-harness.

mod cert;
mod client;
mod mem;
mod netns;
mod skip;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use relay_core::server::Server;
use relay_core::server::auth::Credentials;
use relay_core::server::policy::PeerPolicy;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use relay_io::fastpath::FastPathMode;
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts, StartError};

pub use cert::{TestCert, certificate, client_config, test_certificate};
pub use client::{Stream, StreamClient, TurnClient};
pub use mem::MemSocket;
pub use netns::Topology;
pub use skip::{skip, skip_io_uring, skips_fail};

/// How long a client waits for an answer, and a [`peer`] for a datagram,
/// unless the test sets another time.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A long-term credential: who a client is, and the one user of a server's
/// [`credentials`](Login::credentials).
#[derive(Clone, Copy, Debug)]
pub struct Login<'a> {
    /// USERNAME.
    pub user: &'a str,
    /// The password.
    pub password: &'a str,
    /// REALM.
    pub realm: &'a str,
}

impl Login<'_> {
    /// Server credentials for the realm that know this one user.
    pub fn credentials(&self) -> Credentials {
        let mut credentials = Credentials::new(self.realm);
        credentials.add_user(self.user, self.password).expect("a valid test user");
        credentials
    }

    /// The MD5 long-term key.
    pub fn key(&self) -> Key {
        Key::long_term(PasswordAlgorithm::Md5, self.user, self.realm, self.password).expect("a valid test user")
    }
}

/// The ERROR-CODE of a response, if it is one with an error code.
pub fn error_code(resp: &[u8]) -> Option<u16> {
    let m = Message::parse(resp).ok()?;
    match m.get(AttributeType::ERROR_CODE)?.decode(&m.transaction_id()) {
        Ok(Attribute::ErrorCode(e)) => Some(e.code),
        _ => None,
    }
}

/// A peer socket on 127.0.0.2 (127.0.0.1 is the relay's own address,
/// never a permitted peer), waiting [`TIMEOUT`] for a datagram.
pub fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.2:0").expect("bind a peer on 127.0.0.2");
    s.set_read_timeout(Some(TIMEOUT)).expect("set a read timeout");
    s
}

/// Both data plane backends, portable first; an io_uring run that cannot
/// start here goes through [`start_or_skip`].
pub fn backends() -> [Backend; 2] {
    [Backend::Portable, Backend::IoUring]
}

/// The default peer policy plus an allow entry for 127.0.0.0/8, so that a
/// [`peer`] on 127.0.0.2 is permitted.
pub fn allow_loopback() -> PeerPolicy {
    PeerPolicy::with_lists(vec!["127.0.0.0/8".parse().expect("a prefix")], vec![])
}

/// The listeners a [`loopback_config`] opens on 127.0.0.1, each on a port
/// the kernel picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listeners {
    /// UDP only.
    Udp,
    /// UDP and TCP.
    UdpTcp,
    /// UDP, TCP and TLS (serving [`test_certificate`]).
    UdpTcpTls,
}

/// A relay on loopback: `shards` shards on `backend`, `listeners` on
/// 127.0.0.1, relaying from 127.0.0.1 on `relay_ports`; the rest is
/// `IoConfig::default()`. A test adjusts what else it needs
/// (`IoConfig { stream_limits, ..loopback_config(…) }`) and starts it with
/// [`start_or_skip`], which adds the fast path that
/// `TURN_RELAY_TEST_FAST_PATH` asks for.
pub fn loopback_config(backend: Backend, shards: usize, listeners: Listeners, relay_ports: RelayPorts) -> IoConfig {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let tcp = listeners != Listeners::Udp;
    let tls = listeners == Listeners::UdpTcpTls;
    IoConfig {
        shards,
        backend,
        udp_listen: vec![any_port],
        tcp_listen: if tcp { vec![any_port] } else { Vec::new() },
        tls_listen: if tls { vec![any_port] } else { Vec::new() },
        tls: tls.then(|| test_certificate().0),
        relay_ips: vec![RelayIp::same(any_port.ip())],
        relay_ports,
        ..IoConfig::default()
    }
}

/// Starts a relay; `None` (after [`skip_io_uring`]) where io_uring is not
/// available here. Any other start-up error fails the test. With
/// `TURN_RELAY_TEST_FAST_PATH` set (`tc`, …) a relay without a fast path
/// of its own gets that one.
pub fn start_or_skip(config: &IoConfig, make_server: impl FnMut(usize) -> Server) -> Option<Relay> {
    // The loopback suite again with the kernel fast path on
    // (scripts/test runs it so, in a namespace of its own).
    let mut config = config.clone();
    if let Some(mode) = std::env::var("TURN_RELAY_TEST_FAST_PATH").ok().and_then(|m| FastPathMode::parse(&m))
        && config.fast_path == FastPathMode::Off
    {
        config.fast_path = mode;
    }
    match Relay::start(&config, make_server) {
        Ok(r) => {
            if config.fast_path != FastPathMode::Off && config.fast_path != FastPathMode::Auto {
                assert!(r.fast_path().is_some(), "the fast path was asked for and is not attached");
            }
            Some(r)
        }
        Err(StartError::IoUringUnavailable(why)) => {
            skip_io_uring(&why);
            None
        }
        Err(e) => panic!("start: {e}"),
    }
}

/// `recv_from`, retried when a signal interrupts it (up to 100 times in a
/// row); allocates nothing.
pub fn recv_from(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    let mut interrupted = 0;
    loop {
        match sock.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && interrupted < 100 => interrupted += 1,
            other => return other,
        }
    }
}

/// One datagram and its source, or `None` when the socket's read timeout
/// passes first (see [`recv_from`]).
pub fn recv_datagram(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = recv_from(sock, &mut buf).ok()?;
    buf.truncate(n);
    Some((buf, from))
}

/// True when the server closes `s` (end of stream, or a reset because
/// bytes it did not read were left) within `within`; false when data
/// arrives instead, or nothing does in time. Sets `s`'s read timeout.
pub fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("set a read timeout");
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => return false,
        }
    }
}

/// A ChannelData message: `padded` to a multiple of four, as on a stream.
pub fn channel_frame(channel: u16, payload: &[u8], padded: bool) -> Vec<u8> {
    let len = if padded { relay_core::wire::channel_data::stream_len(payload.len()) } else { 4 + payload.len() };
    let mut frame = vec![0u8; len];
    relay_core::wire::channel_data::encode(&mut frame, channel, payload, padded).expect("a ChannelData payload");
    frame
}

/// A Send indication of `data` to `peer`.
pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 100 + data.len()];
    let ty = MessageType::new(Class::Indication, Method::SEND);
    let mut b = MessageBuilder::new(&mut buf, ty, TransactionId([7; 12])).expect("room for a header");
    b.add(&Attribute::XorPeerAddress(peer)).expect("room for the peer");
    b.add(&Attribute::Data(data)).expect("room for the data");
    let n = b.finish();
    buf.truncate(n);
    buf
}

/// The DATA and XOR-PEER-ADDRESS of a Data indication; fails the test if
/// `bytes` is anything else.
pub fn data_indication(bytes: &[u8]) -> (Vec<u8>, SocketAddr) {
    let m = Message::parse(bytes).expect("a Data indication");
    assert_eq!(m.message_type(), MessageType::new(Class::Indication, Method::DATA));
    let tid = m.transaction_id();
    let Some(Ok(Attribute::Data(d))) = m.get(AttributeType::DATA).map(|a| a.decode(&tid)) else {
        panic!("a Data indication without DATA")
    };
    let Some(Ok(Attribute::XorPeerAddress(p))) = m.get(AttributeType::XOR_PEER_ADDRESS).map(|a| a.decode(&tid)) else {
        panic!("a Data indication without XOR-PEER-ADDRESS")
    };
    (d.to_vec(), p)
}
