//! The data plane over real loopback sockets, one suite run against both
//! backends: Allocate → permission → channel → ChannelData both ways,
//! Send/Data indications, many allocations spread over shards, quarantine
//! and exhaustion of relay ports, and a graceful stop with traffic in
//! flight. Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use relay_core::server::auth::{Credentials, NonceIssuer};
use relay_core::server::policy::PeerPolicy;
use relay_core::server::quota::Unlimited;
use relay_core::server::{Server, ServerConfig, ServerParts};
use relay_core::wire::attr::transport;
use relay_core::wire::channel_data;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_core::wire::{
    Attribute, AttributeType, ChannelData, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use relay_io::{Backend, BackendKind, IoConfig, Relay, RelayIp, RelayPorts};

const REALM: &str = "loopback.test";
const TIMEOUT: Duration = Duration::from_secs(2);

/// A self-signed certificate for "localhost": the server's config and the
/// certificate for a client's root store.
fn test_certificate() -> (Arc<rustls::ServerConfig>, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    (relay_io::tls::server_config(vec![cert.clone()], key).unwrap(), cert)
}

static CERT: std::sync::OnceLock<(Arc<rustls::ServerConfig>, rustls::pki_types::CertificateDer<'static>)> =
    std::sync::OnceLock::new();

fn start(backend: Backend, shards: usize, ports_per_shard: usize, quarantine: Duration) -> Option<Relay> {
    let config = IoConfig {
        shards,
        backend,
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Some(CERT.get_or_init(test_certificate).0.clone()),
        relay_ips: vec![RelayIp::same("127.0.0.1".parse().unwrap())],
        relay_ports: RelayPorts::Ephemeral(ports_per_shard),
        ..IoConfig::default()
    };
    let quotas = Arc::new(Unlimited);
    let make = |_k: usize| {
        let mut credentials = Credentials::new(REALM);
        credentials.add_user("alice", "secret").unwrap();
        let parts = ServerParts {
            config: ServerConfig { relay_quarantine: quarantine, ..ServerConfig::default() },
            credentials,
            nonces: NonceIssuer::new([9; 32], 600),
            policy: PeerPolicy::with_lists(vec!["127.0.0.0/8".parse().unwrap()], vec![]),
            quotas: quotas.clone(),
        };
        Server::new(parts, Instant::now(), 1_800_000_000, 7)
    };
    match Relay::start(&config, make) {
        Ok(r) => Some(r),
        Err(relay_io::StartError::IoUringUnavailable(why)) => {
            common::skip_io_uring(&why);
            None
        }
        Err(e) => panic!("start: {e}"),
    }
}

/// A blocking TURN client for tests.
struct TurnClient {
    sock: UdpSocket,
    server: SocketAddr,
    key: Key,
    nonce: String,
    tid: u32,
}

impl TurnClient {
    fn new(server: SocketAddr) -> TurnClient {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let key = Key::long_term(PasswordAlgorithm::Md5, "alice", REALM, "secret").unwrap();
        TurnClient { sock, server, key, nonce: String::new(), tid: 0 }
    }

    fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        for _ in 0..3 {
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
                b.add(&Attribute::Username("alice")).unwrap();
                b.add(&Attribute::Realm(REALM)).unwrap();
                b.add(&Attribute::Nonce(&self.nonce)).unwrap();
                b.add_message_integrity(self.key.as_bytes()).unwrap();
            }
            b.add_fingerprint().unwrap();
            let n = b.finish();
            self.sock.send_to(&buf[..n], self.server).unwrap();
            let resp = self.recv_response(tid);
            if let Some(code @ (401 | 438)) = error_code(&resp) {
                let m = Message::parse(&resp).unwrap();
                match m.get(AttributeType::NONCE).map(|a| a.decode(&m.transaction_id())) {
                    Some(Ok(Attribute::Nonce(n))) if code == 438 || self.nonce.is_empty() => {
                        self.nonce = n.to_owned();
                        continue;
                    }
                    _ => return resp,
                }
            }
            return resp;
        }
        panic!("no answer after retries")
    }

    fn recv_response(&self, tid: TransactionId) -> Vec<u8> {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no response: {e}"),
            };
            if let Ok(m) = Message::parse(&buf[..n])
                && m.transaction_id() == tid
            {
                return buf[..n].to_vec();
            }
        }
        panic!("no response")
    }

    fn allocate(&mut self) -> Result<SocketAddr, u16> {
        let resp = self.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
        let m = Message::parse(&resp).unwrap();
        if m.class() != Class::Success {
            return Err(error_code(&resp).unwrap_or(0));
        }
        match m.get(AttributeType::XOR_RELAYED_ADDRESS).unwrap().decode(&m.transaction_id()).unwrap() {
            Attribute::XorRelayedAddress(a) => Ok(a),
            _ => unreachable!(),
        }
    }

    fn ok(&mut self, method: Method, attrs: &[Attribute<'_>]) {
        let resp = self.request(method, attrs);
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{method:?}: {:?}", error_code(&resp));
    }

    fn recv_raw(&self) -> Option<Vec<u8>> {
        recv_retrying(&self.sock).map(|(v, _)| v)
    }
}

/// One datagram, retrying when a signal interrupts the wait.
fn recv_retrying(sock: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..100 {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    None
}

fn error_code(resp: &[u8]) -> Option<u16> {
    let m = Message::parse(resp).ok()?;
    match m.get(AttributeType::ERROR_CODE)?.decode(&m.transaction_id()) {
        Ok(Attribute::ErrorCode(e)) => Some(e.code),
        _ => None,
    }
}

fn peer() -> UdpSocket {
    // 127.0.0.1 is the relay's own address (always denied as a peer).
    let s = UdpSocket::bind("127.0.0.2:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn backends() -> Vec<Backend> {
    vec![Backend::Portable, Backend::IoUring]
}

#[test]
fn channel_data_both_ways() {
    for backend in backends() {
        let Some(relay) = start(backend, 1, 8, Duration::from_secs(60)) else { continue };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(paddr)]);
        for i in 0..50u32 {
            let payload = format!("ping {i} {backend:?}");
            let mut frame = vec![0u8; 4 + payload.len()];
            channel_data::encode(&mut frame, 0x4001, payload.as_bytes(), false).unwrap();
            c.sock.send_to(&frame, server).unwrap();
            let (got, from) = recv_retrying(&p).expect("peer receives");
            assert_eq!((&got[..], from), (payload.as_bytes(), relayed));
            let answer = format!("pong {i}");
            p.send_to(answer.as_bytes(), relayed).unwrap();
            let got = c.recv_raw().expect("client receives");
            let cd = ChannelData::parse(&got).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4001, answer.as_bytes()));
        }
        let reports = relay.stats(TIMEOUT);
        assert_eq!(reports.len(), 1);
        let kind = if backend == Backend::Portable { BackendKind::Portable } else { BackendKind::IoUring };
        assert_eq!(reports[0].backend, kind);
        assert_eq!(reports[0].stats.relayed_packets, [[50, 0, 0], [50, 0, 0]]);
        relay.stop().unwrap();
    }
}

#[test]
fn send_and_data_indications() {
    for backend in backends() {
        let Some(relay) = start(backend, 1, 4, Duration::from_secs(60)) else { continue };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        let mut buf = [0u8; 200];
        let tid = TransactionId([5; 12]);
        let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Indication, Method::SEND), tid).unwrap();
        b.add(&Attribute::XorPeerAddress(paddr)).unwrap();
        b.add(&Attribute::Data(b"via send")).unwrap();
        let n = b.finish();
        c.sock.send_to(&buf[..n], server).unwrap();
        let (got, from) = recv_retrying(&p).expect("peer receives");
        assert_eq!((&got[..], from), (&b"via send"[..], relayed));
        p.send_to(b"back via data", relayed).unwrap();
        let ind = c.recv_raw().unwrap();
        let m = Message::parse(&ind).unwrap();
        assert_eq!(m.message_type(), MessageType::new(Class::Indication, Method::DATA));
        let tid = m.transaction_id();
        let data = m.get(AttributeType::DATA).unwrap().decode(&tid).unwrap();
        assert_eq!(data, Attribute::Data(b"back via data"));
        let from = m.get(AttributeType::XOR_PEER_ADDRESS).unwrap().decode(&tid).unwrap();
        assert_eq!(from, Attribute::XorPeerAddress(paddr));
        relay.stop().unwrap();
    }
}

/// "A few thousand allocations spread over all shards".
const ALLOCATIONS: usize = 2000;

#[test]
fn many_allocations_over_shards_each_reach_their_shard() {
    for backend in backends() {
        let Some(relay) = start(backend, 2, 1100, Duration::from_secs(60)) else { continue };
        let server = relay.udp_addrs()[0];
        let p = peer();
        let paddr = p.local_addr().unwrap();
        let mut clients: Vec<(TurnClient, SocketAddr)> = (0..ALLOCATIONS)
            .map(|_| {
                let mut c = TurnClient::new(server);
                let relayed = c.allocate().unwrap();
                c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(paddr)]);
                (c, relayed)
            })
            .collect();
        // Every client's ChannelData reaches the peer through its relay,
        // which only works on the shard holding its allocation.
        for (i, (c, relayed)) in clients.iter_mut().enumerate() {
            let mut frame = [0u8; 8];
            channel_data::encode(&mut frame, 0x4000, &(i as u32).to_be_bytes(), false).unwrap();
            c.sock.send_to(&frame, server).unwrap();
            let (got, from) = recv_retrying(&p).expect("peer receives");
            assert_eq!((&got[..], from), (&(i as u32).to_be_bytes()[..], *relayed));
        }
        let reports = relay.stats(TIMEOUT);
        assert_eq!(reports.len(), 2);
        let per_shard: Vec<usize> = reports.iter().map(|r| r.allocations).collect();
        assert_eq!(per_shard.iter().sum::<usize>(), ALLOCATIONS);
        assert!(per_shard.iter().all(|&n| n > 0), "one shard got everything: {per_shard:?}");
        assert!(reports.iter().all(|r| r.stats.drops_of(relay_core::server::stats::Drop::NoAllocation) == 0));
        relay.stop().unwrap();
    }
}

#[test]
fn released_ports_rest_in_quarantine_and_exhaustion_is_508() {
    for backend in backends() {
        let Some(relay) = start(backend, 1, 2, Duration::from_secs(30)) else { continue };
        let server = relay.udp_addrs()[0];
        let mut a = TurnClient::new(server);
        let first = a.allocate().unwrap();
        a.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
        let mut b = TurnClient::new(server);
        let second = b.allocate().unwrap();
        assert_ne!(first, second, "a released port was handed out again at once");
        let mut c = TurnClient::new(server);
        assert_eq!(c.allocate(), Err(508));
        let r = &relay.stats(TIMEOUT)[0];
        assert_eq!((r.relays_free, r.relays_quarantined), (0, 1));
        // A late packet to the released port is drained and dropped.
        let p = peer();
        p.send_to(b"late", first).unwrap();
        assert!(b.sock.set_read_timeout(Some(Duration::from_millis(200))).is_ok());
        assert!(b.recv_raw().is_none());
        relay.stop().unwrap();
    }
}

#[test]
fn graceful_stop_lets_running_allocations_finish() {
    for backend in backends() {
        let Some(relay) = start(backend, 1, 4, Duration::from_secs(60)) else { continue };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(paddr)]);
        relay.drain(Instant::now() + Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
        // New allocations are refused...
        let mut d = TurnClient::new(server);
        assert_eq!(d.allocate(), Err(508));
        // ...while the running one still relays.
        let mut frame = [0u8; 8];
        channel_data::encode(&mut frame, 0x4000, b"live", false).unwrap();
        c.sock.send_to(&frame, server).unwrap();
        let (got, from) = recv_retrying(&p).expect("peer receives");
        assert_eq!((&got[..], from), (&b"live"[..], relayed));
        assert!(!relay.is_finished());
        // Its end lets the shard exit.
        c.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !relay.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(relay.is_finished(), "shard did not exit after its last allocation");
        relay.join().unwrap();
    }
}

/// A blocking TURN-over-TCP client: frames are read with relay-core's
/// stream framer.
trait Stream: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> Stream for T {}

struct TcpTurn {
    stream: Box<dyn Stream>,
    rbuf: Vec<u8>,
    key: Key,
    nonce: String,
    tid: u8,
}

impl TcpTurn {
    fn connect(addr: SocketAddr, tls: bool) -> TcpTurn {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let stream: Box<dyn Stream> = if tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CERT.get_or_init(test_certificate).1.clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        let key = Key::long_term(PasswordAlgorithm::Md5, "alice", REALM, "secret").unwrap();
        TcpTurn { stream, rbuf: Vec::new(), key, nonce: String::new(), tid: 0 }
    }

    fn frame(&mut self) -> Vec<u8> {
        use std::io::Read;
        loop {
            match relay_core::wire::next_frame(&self.rbuf).unwrap() {
                relay_core::wire::Frame::Stun(n) | relay_core::wire::Frame::ChannelData(n) => {
                    return self.rbuf.drain(..n).collect();
                }
                relay_core::wire::Frame::NeedMore(_) => {
                    let mut buf = [0u8; 4096];
                    let n = match self.stream.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        r => r.expect("frame"),
                    };
                    assert!(n > 0, "connection closed");
                    self.rbuf.extend_from_slice(&buf[..n]);
                }
            }
        }
    }

    fn request(&mut self, method: Method, attrs: &[Attribute<'_>]) -> Vec<u8> {
        use std::io::Write;
        for _ in 0..2 {
            self.tid += 1;
            let tid = TransactionId([self.tid; 12]);
            let mut buf = [0u8; 1500];
            let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, method), tid).unwrap();
            for a in attrs {
                b.add(a).unwrap();
            }
            if !self.nonce.is_empty() {
                b.add(&Attribute::Username("alice")).unwrap();
                b.add(&Attribute::Realm(REALM)).unwrap();
                b.add(&Attribute::Nonce(&self.nonce)).unwrap();
                b.add_message_integrity(self.key.as_bytes()).unwrap();
            }
            let n = b.finish();
            self.stream.write_all(&buf[..n]).unwrap();
            let resp = self.frame();
            if error_code(&resp) == Some(401) && self.nonce.is_empty() {
                let m = Message::parse(&resp).unwrap();
                if let Some(Ok(Attribute::Nonce(n))) = m.get(AttributeType::NONCE).map(|a| a.decode(&tid)) {
                    self.nonce = n.to_owned();
                    continue;
                }
            }
            return resp;
        }
        panic!("no final answer")
    }
}

#[test]
fn turn_over_tcp() {
    stream_suite(false);
}

#[test]
fn turn_over_tls() {
    stream_suite(true);
}

fn stream_suite(tls: bool) {
    use std::io::Write;
    for backend in backends() {
        let Some(relay) = start(backend, 1, 4, Duration::from_secs(60)) else { continue };
        let addr = if tls { relay.tls_addrs()[0] } else { relay.tcp_addrs()[0] };
        let mut c = TcpTurn::connect(addr, tls);
        let resp = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
        let m = Message::parse(&resp).unwrap();
        assert_eq!(m.class(), Class::Success, "{backend:?}: {:?}", error_code(&resp));
        let Ok(Attribute::XorRelayedAddress(relayed)) =
            m.get(AttributeType::XOR_RELAYED_ADDRESS).unwrap().decode(&m.transaction_id())
        else {
            panic!()
        };
        let p = peer();
        let paddr = p.local_addr().unwrap();
        // Data indication before any channel.
        let resp = c.request(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
        p.send_to(b"odd", relayed).unwrap();
        let ind = c.frame();
        assert_eq!(ind.len() % 4, 0);
        let m = Message::parse(&ind).unwrap();
        assert_eq!(m.get(AttributeType::DATA).unwrap().value, b"odd");
        let resp =
            c.request(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4002), Attribute::XorPeerAddress(paddr)]);
        assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success);
        let mut slowest = Duration::ZERO;
        for i in 0..20u8 {
            // Client → peer: padded ChannelData on the stream, several per write.
            let payload = vec![i; 1 + usize::from(i)];
            let mut frame = vec![0u8; channel_data::stream_len(payload.len())];
            channel_data::encode(&mut frame, 0x4002, &payload, true).unwrap();
            c.stream.write_all(&frame).unwrap();
            let (got, from) = recv_retrying(&p).expect("peer receives");
            assert_eq!((&got[..], from), (&payload[..], relayed));
            // Peer → client: padded ChannelData.
            let sent = Instant::now();
            p.send_to(&payload, relayed).unwrap();
            let f = c.frame();
            slowest = slowest.max(sent.elapsed());
            assert_eq!(f.len(), channel_data::stream_len(payload.len()));
            let cd = ChannelData::parse(&f).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4002, &payload[..]));
        }
        // Relayed data for a stream is written at the end of the loop turn
        // that received it, not after the idle shard's next wake-up (up to
        // a second away).
        assert!(slowest < Duration::from_millis(500), "{backend:?}: a relayed frame took {slowest:?}");
        // A burst from the peer: batched into few writes, every frame
        // intact and in order.
        for i in 0..50u8 {
            p.send_to(&[i; 37], relayed).unwrap();
        }
        for i in 0..50u8 {
            let f = c.frame();
            let cd = ChannelData::parse(&f).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4002, &[i; 37][..]), "{backend:?}: frame {i}");
        }
        // A large burst from the peer (more than rustls buffers at once,
        // 64 KiB): every frame arrives, whole and in order, and the shard
        // keeps serving.
        for i in 0..100u8 {
            p.send_to(&[i; 1200], relayed).unwrap();
        }
        let mut got = 0;
        while got < 100 {
            let f = c.frame();
            let cd = ChannelData::parse(&f).unwrap();
            assert_eq!((cd.channel, cd.payload.len()), (0x4002, 1200), "{backend:?}: frame {got}");
            assert!(cd.payload.iter().all(|&b| b == cd.payload[0]), "{backend:?}: torn frame");
            got += 1;
        }
        // A burst from the client in one write, small frames (gathered into
        // one sendmmsg) and large ones (sent on their own) mixed: every
        // datagram reaches the peer, in order.
        let sizes: Vec<usize> = (0..12).map(|i| if i % 3 == 1 { 3000 + i } else { 60 + i }).collect();
        let mut burst = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let mut frame = vec![0u8; channel_data::stream_len(n)];
            channel_data::encode(&mut frame, 0x4002, &vec![i as u8; n], true).unwrap();
            burst.extend_from_slice(&frame);
        }
        c.stream.write_all(&burst).unwrap();
        for (i, &n) in sizes.iter().enumerate() {
            let (got, _) = recv_retrying(&p).expect("peer receives the burst");
            assert!(
                got == vec![i as u8; n],
                "{backend:?}: datagram {i} of the burst: {} bytes of {:?}",
                got.len(),
                got.first()
            );
        }
        // Closing the connection ends the allocation.
        drop(c);
        let deadline = Instant::now() + TIMEOUT;
        while relay.stats(TIMEOUT)[0].allocations != 0 {
            assert!(Instant::now() < deadline, "{backend:?}: allocation outlived its connection");
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = &relay.stats(TIMEOUT)[0];
        assert_eq!((r.streams.accepted, r.streams.open), (1, 0));
        // Counted under the client's transport: 20 ChannelData each way,
        // the bursts (12 to the peer, 50 and 100 back) and the Data indication
        // toward the client.
        let t = if tls { 2 } else { 1 };
        assert_eq!((r.stats.relayed_packets[0][t], r.stats.relayed_packets[1][t]), (32, 171));
        // Bytes that are neither STUN nor ChannelData close the stream
        // (the server's end: the read sees end-of-file, not a timeout).
        let mut g = std::net::TcpStream::connect(relay.tcp_addrs()[0]).unwrap();
        g.write_all(&[0xff; 8]).unwrap();
        g.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(std::io::Read::read(&mut g, &mut buf), Ok(0)), "{backend:?}: garbage did not close");
        relay.stop().unwrap();
    }
}

// ----------------------------------------------------------------------
// Relay to relay: two allocations of the same server are each other's peer
// (two relayed WebRTC endpoints sharing a deployment), with the default
// peer policy.
// ----------------------------------------------------------------------

/// A server with the default peer policy on a port range of its own, 20
/// ports a shard; `advertised` stands for `relay.external` (an address the
/// relay sockets are not bound to: a datagram sent there, instead of to
/// the bound address, is lost).
fn start_relays(backend: Backend, shards: usize, advertised: Option<&str>, slot: u16) -> Option<(Relay, u16)> {
    // Each test its own ports (`slot`: 0..7, 20 ports each), each process too.
    let lo = 30_000 + (std::process::id() % 200) as u16 * 160 + slot * 20;
    let bind = "127.0.0.1".parse().unwrap();
    let config = IoConfig {
        shards,
        backend,
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        relay_ips: vec![RelayIp { bind, advertised: advertised.map_or(bind, |a| a.parse().unwrap()) }],
        relay_ports: RelayPorts::Range(lo, lo + 20 * shards as u16 - 1),
        ..IoConfig::default()
    };
    let make = |_k: usize| {
        let mut credentials = Credentials::new(REALM);
        credentials.add_user("alice", "secret").unwrap();
        let parts = ServerParts {
            config: ServerConfig::default(),
            credentials,
            nonces: NonceIssuer::new([9; 32], 600),
            policy: PeerPolicy::new(),
            quotas: Arc::new(Unlimited),
        };
        Server::new(parts, Instant::now(), 1_800_000_000, 7)
    };
    match Relay::start(&config, make) {
        Ok(r) => Some((r, lo)),
        Err(relay_io::StartError::IoUringUnavailable(why)) => {
            common::skip_io_uring(&why);
            None
        }
        Err(e) => panic!("start: {e}"),
    }
}

fn channel_frame(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 4 + payload.len()];
    channel_data::encode(&mut frame, number, payload, false).unwrap();
    frame
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    let tid = TransactionId([7; 12]);
    let mut b = MessageBuilder::new(&mut buf, MessageType::new(Class::Indication, Method::SEND), tid).unwrap();
    b.add(&Attribute::XorPeerAddress(peer)).unwrap();
    b.add(&Attribute::Data(data)).unwrap();
    let n = b.finish();
    buf[..n].to_vec()
}

/// The DATA and XOR-PEER-ADDRESS of a Data indication.
fn data_indication(bytes: &[u8]) -> (Vec<u8>, SocketAddr) {
    let m = Message::parse(bytes).expect("a Data indication");
    assert_eq!(m.message_type(), MessageType::new(Class::Indication, Method::DATA));
    let tid = m.transaction_id();
    let Ok(Attribute::Data(d)) = m.get(AttributeType::DATA).unwrap().decode(&tid) else { panic!() };
    let Ok(Attribute::XorPeerAddress(p)) = m.get(AttributeType::XOR_PEER_ADDRESS).unwrap().decode(&tid) else {
        panic!()
    };
    (d.to_vec(), p)
}

/// A talks to B by channel, B to A by Send indications (so A's data
/// reaches B as Data indications and B's reaches A as ChannelData); B's
/// permission decides what it receives, exactly as for a peer elsewhere.
fn relay_pair(
    backend: Backend,
    server: SocketAddr,
    a: &mut (TurnClient, SocketAddr),
    b: &mut (TurnClient, SocketAddr),
) {
    let (ra, rb) = (a.1, b.1);
    a.0.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(rb)]);
    a.0.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(rb)]);
    // B has no permission for A yet: nothing arrives.
    b.0.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    a.0.sock.send_to(&channel_frame(0x4000, b"unpermitted"), server).unwrap();
    assert!(b.0.recv_raw().is_none(), "{backend:?}: data reached B without its permission");
    b.0.sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    b.0.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(ra)]);
    for i in 0..20u32 {
        let ping = format!("a to b {i}");
        a.0.sock.send_to(&channel_frame(0x4000, ping.as_bytes()), server).unwrap();
        let (data, from) = data_indication(&b.0.recv_raw().expect("B receives"));
        // Seen from A's relayed address as A was told it (advertised).
        assert_eq!((&data[..], from), (ping.as_bytes(), ra), "{backend:?}");
        let pong = format!("b to a {i}");
        b.0.sock.send_to(&send_indication(ra, pong.as_bytes()), server).unwrap();
        let got = a.0.recv_raw().expect("A receives");
        let cd = ChannelData::parse(&got).unwrap();
        assert_eq!((cd.channel, cd.payload), (0x4000, pong.as_bytes()), "{backend:?}");
    }
}

fn relay_to_relay(shards: usize, advertised: Option<&str>, slot: u16) {
    for backend in backends() {
        let Some((relay, lo)) = start_relays(backend, shards, advertised, slot) else { continue };
        let server = relay.udp_addrs()[0];
        // Allocations until there is a pair on one shard and, with two
        // shards, a pair across them (the kernel's flow hash decides).
        let shard_of = |a: SocketAddr| usize::from(a.port() - lo) / 20;
        let mut clients: Vec<(TurnClient, SocketAddr)> = Vec::new();
        let mut same = None;
        for _ in 0..12 {
            let mut c = TurnClient::new(server);
            let relayed = c.allocate().unwrap();
            if let Some(ip) = advertised {
                assert_eq!(relayed.ip().to_string(), ip);
            }
            let k = clients.len();
            if same.is_none() {
                same = (0..k).find(|&j| shard_of(clients[j].1) == shard_of(relayed)).map(|j| (j, k));
            }
            clients.push((c, relayed));
            // Besides that pair, one allocation on each shard.
            let others: Vec<usize> = (0..clients.len())
                .filter(|i| same.is_some_and(|(j, k)| *i != j && *i != k))
                .map(|i| shard_of(clients[i].1))
                .collect();
            if same.is_some() && (0..shards).all(|s| shards == 1 || others.contains(&s)) {
                break;
            }
        }
        let (j, k) = same.expect("two allocations on one shard");
        let (mut a, mut b) = (clients.swap_remove(k), clients.swap_remove(j));
        relay_pair(backend, server, &mut a, &mut b);
        let local: u64 = relay.stats(TIMEOUT).iter().map(|r| r.stats.relayed_in_shard).sum();
        assert!(local >= 40, "{backend:?}: {local} datagrams handed over in-shard");
        if shards > 1 {
            let shard = |c: &(TurnClient, SocketAddr)| shard_of(c.1);
            let x = clients.iter().position(|c| shard(c) == 0).expect("an allocation on shard 0");
            let mut a = clients.swap_remove(x);
            let y = clients.iter().position(|c| shard(c) == 1).expect("an allocation on shard 1");
            let mut b = clients.swap_remove(y);
            relay_pair(backend, server, &mut a, &mut b);
            let kernel: u64 = relay.stats(TIMEOUT).iter().map(|r| r.stats.relayed_to_own).sum();
            assert!(kernel >= 40, "{backend:?}: {kernel} datagrams to another shard's relay");
        }
        // Every other port on the server's own IP is refused, and so is a
        // listener, under the default policy.
        let mut c = TurnClient::new(server);
        c.allocate().unwrap();
        let own_ip = advertised.unwrap_or("127.0.0.1");
        for denied in [format!("{own_ip}:{}", lo - 1), format!("127.0.0.1:{}", lo - 1), server.to_string()] {
            let resp = c.request(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(denied.parse().unwrap())]);
            assert_eq!(error_code(&resp), Some(403), "{backend:?}: {denied}");
        }
        let resp = c.request(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(relay.tcp_addrs()[0])]);
        assert_eq!(error_code(&resp), Some(403), "{backend:?}: TCP listener");
        relay.stop().unwrap();
    }
}

#[test]
fn relay_to_relay_on_one_shard() {
    relay_to_relay(1, None, 0);
}

#[test]
fn relay_to_relay_across_shards() {
    relay_to_relay(2, None, 1);
}

#[test]
fn relay_to_relay_behind_an_advertised_address() {
    // 127.0.0.77 is bound by nothing: only the mapping to the bound
    // address makes these datagrams arrive, on one shard and across.
    relay_to_relay(2, Some("127.0.0.77"), 3);
}

#[test]
fn relay_to_relay_between_tcp_and_udp_clients() {
    use std::io::Write;
    for backend in backends() {
        let Some((relay, _)) = start_relays(backend, 1, None, 5) else { continue };
        let server = relay.udp_addrs()[0];
        let mut t = TcpTurn::connect(relay.tcp_addrs()[0], false);
        let resp = t.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
        let m = Message::parse(&resp).unwrap();
        let Ok(Attribute::XorRelayedAddress(rt)) =
            m.get(AttributeType::XOR_RELAYED_ADDRESS).unwrap().decode(&m.transaction_id())
        else {
            panic!("{backend:?}: {:?}", error_code(&resp))
        };
        let mut u = TurnClient::new(server);
        let ru = u.allocate().unwrap();
        for (method, attrs) in [
            (Method::CREATE_PERMISSION, vec![Attribute::XorPeerAddress(ru)]),
            (Method::CHANNEL_BIND, vec![Attribute::ChannelNumber(0x4005), Attribute::XorPeerAddress(ru)]),
        ] {
            let resp = t.request(method, &attrs);
            assert_eq!(Message::parse(&resp).unwrap().class(), Class::Success, "{backend:?}: {method:?}");
        }
        u.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4006), Attribute::XorPeerAddress(rt)]);
        for i in 0..20u8 {
            // TCP client → UDP client: ChannelData on both sides.
            let payload = vec![i; 1 + usize::from(i)];
            let mut frame = vec![0u8; channel_data::stream_len(payload.len())];
            channel_data::encode(&mut frame, 0x4005, &payload, true).unwrap();
            t.stream.write_all(&frame).unwrap();
            let got = u.recv_raw().expect("UDP client receives");
            let cd = ChannelData::parse(&got).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4006, &payload[..]), "{backend:?}");
            // UDP client → TCP client.
            u.sock.send_to(&channel_frame(0x4006, &payload), server).unwrap();
            let f = t.frame();
            let cd = ChannelData::parse(&f).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4005, &payload[..]), "{backend:?}");
        }
        let r = &relay.stats(TIMEOUT)[0];
        assert_eq!(r.stats.relayed_in_shard, 40, "{backend:?}");
        relay.stop().unwrap();
    }
}

#[test]
fn a_second_instance_on_the_same_address_refuses_to_start_unless_handing_over() {
    let make = |_k: usize| {
        let parts = ServerParts {
            config: ServerConfig::default(),
            credentials: Credentials::new(REALM),
            nonces: NonceIssuer::new([2; 32], 600),
            policy: PeerPolicy::new(),
            quotas: Arc::new(Unlimited),
        };
        Server::new(parts, Instant::now(), 1_800_000_000, 3)
    };
    let first = IoConfig {
        backend: Backend::Portable,
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        relay_ips: vec![RelayIp::same("127.0.0.1".parse().unwrap())],
        relay_ports: RelayPorts::Ephemeral(2),
        ..IoConfig::default()
    };
    let a = Relay::start(&first, make).unwrap();
    let (udp, tcp) = (a.udp_addrs()[0], a.tcp_addrs()[0]);
    let free_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let free_udp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // The same UDP address, a free TCP one; then a free UDP one and the
    // same TCP address; then a wildcard over the first one's UDP port.
    let wildcard = SocketAddr::new("0.0.0.0".parse().unwrap(), udp.port());
    for (u, t, taken) in [(udp, free_tcp, "UDP"), (free_udp, tcp, "TCP"), (wildcard, free_tcp, "UDP")] {
        let second = IoConfig { udp_listen: vec![u], tcp_listen: vec![t], ..first.clone() };
        match Relay::start(&second, make) {
            Err(e @ relay_io::StartError::AddressInUse { .. }) => {
                let text = e.to_string();
                assert!(text.contains(taken) && text.contains("--handover"), "{text}");
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a second instance joined {u} / {t}"),
        }
    }
    // On purpose (a zero-downtime restart): it joins, and serves.
    let second = IoConfig { udp_listen: vec![udp], tcp_listen: vec![tcp], handover: true, ..first.clone() };
    let b = Relay::start(&second, make).expect("handover starts");
    assert_eq!(b.udp_addrs(), &[udp]);
    b.stop().unwrap();
    a.stop().unwrap();
    // Once the first is gone, the address is free again.
    let c = Relay::start(&IoConfig { udp_listen: vec![udp], tcp_listen: vec![tcp], ..first.clone() }, make)
        .expect("a free address");
    c.stop().unwrap();
}
