//! The PROXY protocol (v1 and v2) on TCP and TLS listeners, over real
//! loopback sockets, on both backends. The trusted balancers are
//! 127.0.0.5 and 127.0.0.6 (`proxy_protocol_from = [127.0.0.5/32,
//! 127.0.0.6/32]`): their connections come from there and must begin with
//! a header; a client connecting from 127.0.0.1 is outside them. Headers claim documentation addresses
//! (192.0.2.0/24, 2001:db8::/32) that no loopback socket can have, so an
//! answer naming them can only come from the header.
//!
//! Every wait is bounded (test-kit's TIMEOUT, or the few seconds given).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use relay_core::server::{Server, ServerParts};
use relay_core::wire::attr::transport;
use relay_core::wire::proxy::{self, Command, Header, Transport, Version};
use relay_core::wire::{Attribute, AttributeType, ChannelData, Class, Message, Method};
use relay_io::stream::{StreamLimits, StreamStats};
use relay_io::{Backend, IoConfig, Relay, RelayPorts};
use test_kit::{
    Listeners, Login, StreamClient, TIMEOUT, allow_loopback, backends, client_config, closed_by_server,
    loopback_config, peer, recv_datagram, start_or_skip, test_certificate,
};

const REALM: &str = "proxy.test";
const LOGIN: Login<'static> = Login { user: "alice", password: "secret", realm: REALM };
/// The trusted load balancer's address.
const BALANCER: &str = "127.0.0.5";
/// Another trusted balancer.
const BALANCER2: &str = "127.0.0.6";
/// Where a direct (untrusted) client connects from.
const DIRECT: &str = "127.0.0.1";
/// How long a connection the relay refuses may take to be closed.
const CLOSED_WITHIN: Duration = Duration::from_secs(4);

fn start(backend: Backend, max_per_source: usize) -> Option<Relay> {
    let config = IoConfig {
        stream_limits: StreamLimits {
            max_per_source,
            proxy_header_timeout: Duration::from_secs(1),
            ..StreamLimits::default()
        },
        proxy_protocol_from: vec![
            format!("{BALANCER}/32").parse().unwrap(),
            format!("{BALANCER2}/32").parse().unwrap(),
        ],
        ..loopback_config(backend, 1, Listeners::UdpTcpTls, RelayPorts::Ephemeral(8))
    };
    let make = |_k: usize| {
        Server::new(
            ServerParts::new(LOGIN.credentials()).with_policy(allow_loopback()),
            Instant::now(),
            1_800_000_000,
            7,
        )
    };
    start_or_skip(&config, make)
}

fn stats(relay: &Relay) -> StreamStats {
    relay.stats(TIMEOUT)[0].streams
}

/// A TCP connection to `to` from `from` (any port), Nagle off so that each
/// write leaves as its own segment, reads bounded by [`TIMEOUT`].
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let tcp: TcpStream = s.into();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp
}

/// A PROXY header for a TCP client `client` of the balancer (which it
/// reached at 198.51.100.1:3478, or [2001:db8::1]:3478).
fn header(version: Version, client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let front = if client.is_ipv4() { "198.51.100.1:3478" } else { "[2001:db8::1]:3478" };
    let h = Header::tcp(version, client, front.parse().unwrap());
    match version {
        Version::V1 => h.encode_v1().unwrap(),
        // With TLVs, as AWS's NLB sends them (PP2_TYPE_AWS) and a NOOP.
        Version::V2 => h.encode_v2(&[(0xea, b"\x01vpce-08d2bf15fac5a2a69"), (0x04, b"")]).unwrap(),
    }
}

/// The XOR-MAPPED-ADDRESS of a success response.
fn mapped(resp: &[u8]) -> SocketAddr {
    let m = Message::parse(resp).expect("a STUN response");
    assert_eq!(m.class(), Class::Success, "{:?}", test_kit::error_code(resp));
    match m.get(AttributeType::XOR_MAPPED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::XorMappedAddress(a))) => a,
        other => panic!("no XOR-MAPPED-ADDRESS: {other:?}"),
    }
}

/// The address a Binding request on `client` is answered with.
fn binding(client: &mut StreamClient) -> SocketAddr {
    mapped(&client.request(Method::BINDING, &[]))
}

#[test]
fn headers_give_the_client_address_however_they_arrive() {
    for backend in backends() {
        let Some(relay) = start(backend, 100) else { continue };
        let tcp = relay.tcp_addrs()[0];
        let cases = [
            (Version::V1, "192.0.2.10:5555", "192.0.2.10:5555"),
            (Version::V2, "192.0.2.11:6000", "192.0.2.11:6000"),
            (Version::V1, "[2001:db8::10]:5555", "[2001:db8::10]:5555"),
            (Version::V2, "[2001:db8::11]:443", "[2001:db8::11]:443"),
            // An IPv4 client as a dual-stack balancer writes it.
            (Version::V2, "[::ffff:192.0.2.12]:7000", "192.0.2.12:7000"),
        ];
        for (version, client, want) in cases {
            let (client, want): (SocketAddr, SocketAddr) = (client.parse().unwrap(), want.parse().unwrap());
            // The three connections below are open at once: each is its
            // own client, one port apart (one client on two connections is
            // refused).
            let client = |k: u16| SocketAddr::new(client.ip(), client.port() + k).to_string();
            let want = |k: u16| SocketAddr::new(want.ip(), want.port() + k);
            // The header alone, then the Binding request.
            let mut s = connect_from(BALANCER, tcp);
            s.write_all(&header(version, &client(0))).unwrap();
            let mut c = StreamClient::over(Box::new(s), LOGIN);
            assert_eq!(binding(&mut c), want(0), "{backend:?} {version:?}: header, then STUN");
            // The header split over several writes (segments), a pause
            // between each.
            let mut s = connect_from(BALANCER, tcp);
            let h = header(version, &client(1));
            for piece in h.chunks(7) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(15));
            }
            let mut c = StreamClient::over(Box::new(s), LOGIN);
            assert_eq!(binding(&mut c), want(1), "{backend:?} {version:?}: header in pieces");
            // The header and the request in one write: the request is not
            // lost behind the header (StreamClient writes the request
            // itself, so it is sent here by hand, then answered).
            let mut s = connect_from(BALANCER, tcp);
            let request = binding_request();
            s.write_all(&[header(version, &client(2)), request.clone()].concat()).unwrap();
            let mut c = StreamClient::over(Box::new(s), LOGIN);
            let resp = c.frame();
            assert_eq!(&resp[8..20], &request[8..20], "the answer to the request sent with the header");
            assert_eq!(mapped(&resp), want(2), "{backend:?} {version:?}: header and STUN in one write");
        }
        // LOCAL (the balancer's own health check): its own address.
        let mut s = connect_from(BALANCER, tcp);
        let local =
            Header { version: Version::V2, command: Command::Local, transport: Transport::Unspec, addresses: None };
        s.write_all(&local.encode_v2(&[]).unwrap()).unwrap();
        let own = s.local_addr().unwrap();
        let mut c = StreamClient::over(Box::new(s), LOGIN);
        assert_eq!(binding(&mut c), own, "{backend:?}: LOCAL keeps the balancer's address");
        // v1 UNKNOWN: the balancer's address too.
        let mut s = connect_from(BALANCER, tcp);
        s.write_all(b"PROXY UNKNOWN\r\n").unwrap();
        let own = s.local_addr().unwrap();
        let mut c = StreamClient::over(Box::new(s), LOGIN);
        assert_eq!(binding(&mut c), own, "{backend:?}: UNKNOWN keeps the balancer's address");
        // A direct client without a header is served as before.
        let s = connect_from(DIRECT, tcp);
        let own = s.local_addr().unwrap();
        let mut c = StreamClient::over(Box::new(s), LOGIN);
        assert_eq!(binding(&mut c), own, "{backend:?}: a direct client");
        let st = stats(&relay);
        assert_eq!(
            (st.proxy_accepted, st.proxy_missing, st.proxy_untrusted, st.proxy_invalid),
            (3 * 5 + 2, 0, 0, 0),
            "{backend:?}"
        );
        relay.stop().unwrap();
    }
}

/// A Binding request without attributes (transaction id 0x55…).
fn binding_request() -> Vec<u8> {
    use relay_core::wire::{MessageBuilder, MessageType, TransactionId};
    let mut buf = [0u8; 64];
    let b = MessageBuilder::new(&mut buf, MessageType::new(Class::Request, Method::BINDING), TransactionId([0x55; 12]))
        .unwrap();
    let n = b.finish();
    buf[..n].to_vec()
}

/// Allocate through the balancer over TCP and over TLS (the header before
/// the TLS handshake): the allocation is the header's client's (its
/// XOR-MAPPED-ADDRESS, the nonce bound to it), and relays both ways.
#[test]
fn an_allocation_through_the_balancer_over_tcp_and_tls() {
    for backend in backends() {
        let Some(relay) = start(backend, 100) else { continue };
        for (tls, version, client) in [
            (false, Version::V1, "192.0.2.20:40000"),
            (true, Version::V2, "192.0.2.21:40001"),
            (true, Version::V1, "[2001:db8::21]:7"),
        ] {
            let want: SocketAddr = client.parse().unwrap();
            let to = if tls { relay.tls_addrs()[0] } else { relay.tcp_addrs()[0] };
            let mut s = connect_from(BALANCER, to);
            s.write_all(&header(version, client)).unwrap();
            let mut c = if tls {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(client_config(&test_certificate().1), name).unwrap();
                StreamClient::over(Box::new(rustls::StreamOwned::new(conn, s)), LOGIN)
            } else {
                StreamClient::over(Box::new(s), LOGIN)
            };
            let resp = c.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
            assert_eq!(mapped(&resp), want, "{backend:?} tls={tls}: the allocation's client");
            let m = Message::parse(&resp).unwrap();
            let relayed = match m.get(AttributeType::XOR_RELAYED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
                Some(Ok(Attribute::XorRelayedAddress(a))) => a,
                other => panic!("{other:?}"),
            };
            let p = peer();
            let paddr = p.local_addr().unwrap();
            c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
            c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(paddr)]);
            for i in 0..5u8 {
                c.send_channel_data(0x4001, &[i; 33]);
                let (got, from) = recv_datagram(&p).expect("the peer receives");
                assert_eq!((&got[..], from), (&[i; 33][..], relayed));
                p.send_to(&[i; 50], relayed).unwrap();
                let f = c.frame();
                let cd = ChannelData::parse(&f).unwrap();
                assert_eq!((cd.channel, cd.payload), (0x4001, &[i; 50][..]));
            }
            // A Refresh (authenticated with the nonce bound to the
            // header's address) succeeds; then the allocation ends.
            c.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
        }
        let st = stats(&relay);
        assert_eq!((st.proxy_accepted, st.proxy_missing, st.proxy_invalid), (3, 0, 0), "{backend:?}");
        relay.stop().unwrap();
    }
}

/// With two connections allowed per source: the balancer's own address is
/// never counted (it holds more than two), each client behind it is.
#[test]
fn the_per_source_limit_counts_the_clients_behind_the_balancer() {
    for backend in backends() {
        let Some(relay) = start(backend, 2) else { continue };
        let tcp = relay.tcp_addrs()[0];
        let open = |client: &str| {
            let mut s = connect_from(BALANCER, tcp);
            s.write_all(&header(Version::V2, client)).unwrap();
            s
        };
        let mut held = Vec::new();
        for client in ["192.0.2.30:1", "192.0.2.30:2", "192.0.2.31:1", "192.0.2.31:2"] {
            let mut c = StreamClient::over(Box::new(open(client)), LOGIN);
            assert_eq!(binding(&mut c), client.parse().unwrap(), "{backend:?}");
            held.push(c);
        }
        // A third from 192.0.2.30 is one too many; the balancer still has
        // room for other clients.
        let mut third = open("192.0.2.30:3");
        third.write_all(&binding_request()).unwrap();
        assert!(closed_by_server(&mut third, CLOSED_WITHIN), "{backend:?}: a third connection of one client");
        let mut c = StreamClient::over(Box::new(open("192.0.2.32:1")), LOGIN);
        assert_eq!(binding(&mut c), "192.0.2.32:1".parse().unwrap());
        let st = stats(&relay);
        assert_eq!((st.refused_per_source, st.open, st.proxy_accepted), (1, 5, 6), "{backend:?}");
        // A client's closed connection frees its place.
        drop(held.remove(0));
        let deadline = Instant::now() + TIMEOUT;
        while stats(&relay).open != 4 {
            assert!(Instant::now() < deadline, "{backend:?}: the closed connection stays open");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut c = StreamClient::over(Box::new(open("192.0.2.30:4")), LOGIN);
        assert_eq!(binding(&mut c), "192.0.2.30:4".parse().unwrap());
        // Direct clients are limited by their own address, as before.
        let mut direct: Vec<StreamClient> =
            (0..2).map(|_| StreamClient::over(Box::new(connect_from(DIRECT, tcp)), LOGIN)).collect();
        for d in &mut direct {
            binding(d);
        }
        let mut s = connect_from(DIRECT, tcp);
        assert!(closed_by_server(&mut s, CLOSED_WITHIN), "{backend:?}: a third direct connection");
        assert_eq!(stats(&relay).refused_per_source, 2, "{backend:?}");
        relay.stop().unwrap();
    }
}

/// Starts that are refused: a header from outside the trusted networks
/// (TCP and TLS listeners), and a trusted connection without a valid
/// header (none, a broken one, one for a UDP client, one cut short, one
/// that does not come in time). Each is closed and counted.
#[test]
fn refused_starts_are_closed_and_counted() {
    for backend in backends() {
        let Some(relay) = start(backend, 100) else { continue };
        let (tcp, tls) = (relay.tcp_addrs()[0], relay.tls_addrs()[0]);
        let refused = |from: &str, to: SocketAddr, bytes: &[u8], what: &str| {
            let mut s = connect_from(from, to);
            s.write_all(bytes).unwrap();
            assert!(closed_by_server(&mut s, CLOSED_WITHIN), "{backend:?}: {what} was not closed");
        };
        // Untrusted, with a header: plain TCP (v1, v2) and TLS.
        refused(DIRECT, tcp, &[header(Version::V1, "192.0.2.40:1"), binding_request()].concat(), "untrusted v1");
        refused(DIRECT, tcp, &header(Version::V2, "192.0.2.40:2"), "untrusted v2");
        refused(DIRECT, tls, &header(Version::V2, "192.0.2.40:3"), "untrusted v2 on TLS");
        // Trusted, without a valid header.
        refused(BALANCER, tcp, &binding_request(), "trusted STUN without a header");
        refused(BALANCER, tcp, b"PROXY TCP4 192.0.2.40 198.51.100.1 99999 3478\r\n", "a bad v1 port");
        let udp = Header {
            version: Version::V2,
            command: Command::Proxy,
            transport: Transport::Datagram,
            addresses: Some(proxy::Addresses {
                source: "192.0.2.40:5".parse().unwrap(),
                destination: "198.51.100.1:3478".parse().unwrap(),
            }),
        };
        refused(BALANCER, tcp, &udp.encode_v2(&[]).unwrap(), "a header for a UDP client");
        {
            // Cut short: the balancer closes halfway through.
            let mut s = connect_from(BALANCER, tls);
            s.write_all(&header(Version::V2, "192.0.2.40:6")[..20]).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert!(closed_by_server(&mut s, CLOSED_WITHIN), "{backend:?}: a header cut short");
        }
        // Nothing at all within the header timeout (1 s here).
        let started = Instant::now();
        let mut silent = connect_from(BALANCER, tls);
        assert!(closed_by_server(&mut silent, CLOSED_WITHIN), "{backend:?}: a balancer connection that sends nothing");
        assert!(started.elapsed() >= Duration::from_secs(1), "closed before the header timeout");
        // A balancer that connects and closes (a TCP health check) is not
        // counted.
        drop(connect_from(BALANCER, tcp));
        let deadline = Instant::now() + TIMEOUT;
        while stats(&relay).open != 0 {
            assert!(Instant::now() < deadline, "{backend:?}: connections left open");
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = stats(&relay);
        assert_eq!(
            (st.proxy_accepted, st.proxy_untrusted, st.proxy_missing, st.proxy_invalid, st.garbage),
            (0, 3, 2, 3, 0),
            "{backend:?}"
        );
        // The listeners still serve direct clients.
        let mut c = StreamClient::tls(tls, LOGIN, &test_certificate().1);
        binding(&mut c);
        relay.stop().unwrap();
    }
}

/// The balancer's own connections (LOCAL headers, its health checks) and
/// those without addresses (v1 UNKNOWN) keep its address and are not
/// counted per source: with one connection allowed per source, the
/// balancer holds several, while a client behind it gets one.
#[test]
fn the_balancers_own_connections_are_not_counted_per_source() {
    for backend in backends() {
        let Some(relay) = start(backend, 1) else { continue };
        let tcp = relay.tcp_addrs()[0];
        let local =
            Header { version: Version::V2, command: Command::Local, transport: Transport::Unspec, addresses: None };
        let mut held = Vec::new();
        for bytes in [local.encode_v2(&[]).unwrap(), local.encode_v2(&[]).unwrap(), b"PROXY UNKNOWN\r\n".to_vec()] {
            let mut s = connect_from(BALANCER, tcp);
            s.write_all(&bytes).unwrap();
            let own = s.local_addr().unwrap();
            let mut c = StreamClient::over(Box::new(s), LOGIN);
            assert_eq!(binding(&mut c), own, "{backend:?}: the balancer's own connection is served");
            held.push(c);
        }
        // A client behind it is counted: one connection, not two.
        let mut s = connect_from(BALANCER, tcp);
        s.write_all(&header(Version::V2, "192.0.2.60:1")).unwrap();
        let mut c = StreamClient::over(Box::new(s), LOGIN);
        assert_eq!(binding(&mut c), "192.0.2.60:1".parse().unwrap(), "{backend:?}");
        let mut second = connect_from(BALANCER, tcp);
        second.write_all(&[header(Version::V2, "192.0.2.60:2"), binding_request()].concat()).unwrap();
        assert!(closed_by_server(&mut second, CLOSED_WITHIN), "{backend:?}: a client's second connection");
        let st = stats(&relay);
        assert_eq!((st.refused_per_source, st.open, st.proxy_accepted), (1, 4, 5), "{backend:?}");
        relay.stop().unwrap();
    }
}

/// Two balancer connections whose headers name one client (a NAT that
/// reuses a port towards two balancers, or a forged header), and one
/// naming a direct client: the later one is refused (counted
/// `duplicate`), so the allocation's 5-tuple is one connection's; the
/// first keeps its allocation, which relays on. Once the first closes,
/// the client may come again.
#[test]
fn a_header_naming_a_client_already_connected_is_refused() {
    for backend in backends() {
        let Some(relay) = start(backend, 100) else { continue };
        let tcp = relay.tcp_addrs()[0];
        let client = "192.0.2.50:4000";
        let mut s = connect_from(BALANCER, tcp);
        s.write_all(&header(Version::V2, client)).unwrap();
        let mut first = StreamClient::over(Box::new(s), LOGIN);
        let resp = first.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
        assert_eq!(mapped(&resp), client.parse().unwrap(), "{backend:?}");
        let m = Message::parse(&resp).unwrap();
        let relayed = match m.get(AttributeType::XOR_RELAYED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
            Some(Ok(Attribute::XorRelayedAddress(a))) => a,
            other => panic!("{other:?}"),
        };
        let p = peer();
        let paddr = p.local_addr().unwrap();
        first.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        first.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4002), Attribute::XorPeerAddress(paddr)]);
        // The same client through the other balancer (v1, with ChannelData
        // for the first's channel behind it), and through the same one.
        for (from, version) in [(BALANCER2, Version::V1), (BALANCER, Version::V2)] {
            let mut s = connect_from(from, tcp);
            let mut cd = vec![0u8; 8];
            relay_core::wire::channel_data::encode(&mut cd, 0x4002, b"evil", true).unwrap();
            s.write_all(&[header(version, client), cd].concat()).unwrap();
            assert!(
                closed_by_server(&mut s, CLOSED_WITHIN),
                "{backend:?}: a second connection naming {client} from {from}"
            );
        }
        // Nothing of theirs reached the peer; the first's allocation
        // lives on and relays both ways.
        for i in 0..3u8 {
            first.send_channel_data(0x4002, &[i; 20]);
            let (got, from) = recv_datagram(&p).expect("the peer receives");
            assert_eq!((&got[..], from), (&[i; 20][..], relayed), "{backend:?}");
            p.send_to(&[i; 30], relayed).unwrap();
            let f = first.frame();
            let cd = ChannelData::parse(&f).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4002, &[i; 30][..]), "{backend:?}");
        }
        // A header naming a direct client's address (on the same
        // listener) is refused too.
        let direct = connect_from(DIRECT, tcp);
        let direct_addr = direct.local_addr().unwrap();
        let mut d = StreamClient::over(Box::new(direct), LOGIN);
        assert_eq!(binding(&mut d), direct_addr);
        let mut forged = connect_from(BALANCER, tcp);
        forged.write_all(&header(Version::V2, &direct_addr.to_string())).unwrap();
        assert!(closed_by_server(&mut forged, CLOSED_WITHIN), "{backend:?}: a header naming a direct client");
        assert_eq!(binding(&mut d), direct_addr, "{backend:?}: the direct client is served on");
        let st = stats(&relay);
        assert_eq!((st.proxy_duplicate, st.proxy_accepted, st.proxy_invalid), (3, 1, 0), "{backend:?}");
        // The first closes (its allocation with it): the client may come
        // again.
        drop(first);
        let deadline = Instant::now() + TIMEOUT;
        while stats(&relay).open != 1 {
            assert!(Instant::now() < deadline, "{backend:?}: the closed connection stays open");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut s = connect_from(BALANCER2, tcp);
        s.write_all(&header(Version::V1, client)).unwrap();
        let mut again = StreamClient::over(Box::new(s), LOGIN);
        let resp = again.request(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
        assert_eq!(mapped(&resp), client.parse().unwrap(), "{backend:?}: the client comes again");
        assert_eq!(stats(&relay).proxy_duplicate, 3, "{backend:?}");
        relay.stop().unwrap();
    }
}
