//! The data plane over real loopback sockets, one suite run against both
//! backends: Allocate → permission → channel → ChannelData both ways,
//! Send/Data indications, many allocations spread over shards, quarantine
//! and exhaustion of relay ports, and a graceful stop with traffic in
//! flight. Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::server::auth::Credentials;
use relay_core::server::{Server, ServerConfig, ServerParts};
use relay_core::wire::channel_data;
use relay_core::wire::{Attribute, AttributeType, ChannelData, Message, Method};
use relay_io::{Backend, BackendKind, IoConfig, Relay, RelayIp, RelayPorts};
use test_kit::{
    Listeners, Login, StreamClient, TIMEOUT, TurnClient, allow_loopback, backends, channel_frame, data_indication,
    error_code, loopback_config, peer, recv_datagram, send_indication, start_or_skip, test_certificate,
};

const REALM: &str = "loopback.test";
const LOGIN: Login<'static> = Login { user: "alice", password: "secret", realm: REALM };

fn start(backend: Backend, shards: usize, ports_per_shard: usize, quarantine: Duration) -> Option<Relay> {
    let config = loopback_config(backend, shards, Listeners::UdpTcpTls, RelayPorts::Ephemeral(ports_per_shard));
    let make = |_k: usize| {
        let parts = ServerParts::new(LOGIN.credentials())
            .with_config(ServerConfig { relay_quarantine: quarantine, ..ServerConfig::default() })
            .with_policy(allow_loopback());
        Server::new(parts, Instant::now(), 1_800_000_000, 7)
    };
    start_or_skip(&config, make)
}

#[test]
fn channel_data_both_ways() {
    for backend in backends() {
        let Some(relay) = start(backend, 1, 8, Duration::from_secs(60)) else { continue };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server, LOGIN);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(paddr)]);
        for i in 0..50u32 {
            let payload = format!("ping {i} {backend:?}");
            c.send_channel_data(0x4001, payload.as_bytes());
            let (got, from) = recv_datagram(&p).expect("peer receives");
            assert_eq!((&got[..], from), (payload.as_bytes(), relayed));
            let answer = format!("pong {i}");
            p.send_to(answer.as_bytes(), relayed).unwrap();
            let got = c.recv().expect("client receives");
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
        let mut c = TurnClient::new(server, LOGIN);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        c.send(&send_indication(paddr, b"via send"));
        let (got, from) = recv_datagram(&p).expect("peer receives");
        assert_eq!((&got[..], from), (&b"via send"[..], relayed));
        p.send_to(b"back via data", relayed).unwrap();
        let (data, from) = data_indication(&c.recv().unwrap());
        assert_eq!((&data[..], from), (&b"back via data"[..], paddr));
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
                let mut c = TurnClient::new(server, LOGIN);
                let relayed = c.allocate().unwrap();
                c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(paddr)]);
                (c, relayed)
            })
            .collect();
        // Every client's ChannelData reaches the peer through its relay,
        // which only works on the shard holding its allocation.
        for (i, (c, relayed)) in clients.iter_mut().enumerate() {
            c.send_channel_data(0x4000, &(i as u32).to_be_bytes());
            let (got, from) = recv_datagram(&p).expect("peer receives");
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
        let mut a = TurnClient::new(server, LOGIN);
        let first = a.allocate().unwrap();
        a.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
        let mut b = TurnClient::new(server, LOGIN);
        let second = b.allocate().unwrap();
        assert_ne!(first, second, "a released port was handed out again at once");
        let mut c = TurnClient::new(server, LOGIN);
        assert_eq!(c.allocate(), Err(508));
        let r = &relay.stats(TIMEOUT)[0];
        assert_eq!((r.relays_free, r.relays_quarantined), (0, 1));
        // A late packet to the released port is drained and dropped.
        let p = peer();
        p.send_to(b"late", first).unwrap();
        assert!(b.sock.set_read_timeout(Some(Duration::from_millis(200))).is_ok());
        assert!(b.recv().is_none());
        relay.stop().unwrap();
    }
}

#[test]
fn graceful_stop_lets_running_allocations_finish() {
    for backend in backends() {
        let Some(relay) = start(backend, 1, 4, Duration::from_secs(60)) else { continue };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server, LOGIN);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(paddr)]);
        relay.drain(Instant::now() + Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
        // New allocations are refused...
        let mut d = TurnClient::new(server, LOGIN);
        assert_eq!(d.allocate(), Err(508));
        // ...while the running one still relays.
        c.send_channel_data(0x4000, b"live");
        let (got, from) = recv_datagram(&p).expect("peer receives");
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

/// A TURN client over TCP, or TLS trusting the test certificate.
fn stream_client(addr: SocketAddr, tls: bool) -> StreamClient {
    if tls { StreamClient::tls(addr, LOGIN, &test_certificate().1) } else { StreamClient::tcp(addr, LOGIN) }
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
        let mut c = stream_client(addr, tls);
        let relayed = c.allocate().unwrap_or_else(|code| panic!("{backend:?}: {code}"));
        let p = peer();
        let paddr = p.local_addr().unwrap();
        // Data indication before any channel.
        c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
        p.send_to(b"odd", relayed).unwrap();
        let ind = c.frame();
        assert_eq!(ind.len() % 4, 0);
        let m = Message::parse(&ind).unwrap();
        assert_eq!(m.get(AttributeType::DATA).unwrap().value, b"odd");
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4002), Attribute::XorPeerAddress(paddr)]);
        let mut slowest = Duration::ZERO;
        for i in 0..20u8 {
            // Client → peer: padded ChannelData on the stream, several per write.
            let payload = vec![i; 1 + usize::from(i)];
            c.send_channel_data(0x4002, &payload);
            let (got, from) = recv_datagram(&p).expect("peer receives");
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
            burst.extend_from_slice(&channel_frame(0x4002, &vec![i as u8; n], true));
        }
        c.send(&burst);
        for (i, &n) in sizes.iter().enumerate() {
            let (got, _) = recv_datagram(&p).expect("peer receives the burst");
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
        relay_ips: vec![RelayIp { bind, advertised: advertised.map_or(bind, |a| a.parse().unwrap()) }],
        ..loopback_config(backend, shards, Listeners::UdpTcp, RelayPorts::Range(lo, lo + 20 * shards as u16 - 1))
    };
    let make = |_k: usize| Server::new(ServerParts::new(LOGIN.credentials()), Instant::now(), 1_800_000_000, 7);
    Some((start_or_skip(&config, make)?, lo))
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
    a.0.sock.send_to(&channel_frame(0x4000, b"unpermitted", false), server).unwrap();
    assert!(b.0.recv().is_none(), "{backend:?}: data reached B without its permission");
    b.0.sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    b.0.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(ra)]);
    for i in 0..20u32 {
        let ping = format!("a to b {i}");
        a.0.sock.send_to(&channel_frame(0x4000, ping.as_bytes(), false), server).unwrap();
        let (data, from) = data_indication(&b.0.recv().expect("B receives"));
        // Seen from A's relayed address as A was told it (advertised).
        assert_eq!((&data[..], from), (ping.as_bytes(), ra), "{backend:?}");
        let pong = format!("b to a {i}");
        b.0.sock.send_to(&send_indication(ra, pong.as_bytes()), server).unwrap();
        let got = a.0.recv().expect("A receives");
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
            let mut c = TurnClient::new(server, LOGIN);
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
        let mut c = TurnClient::new(server, LOGIN);
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
    for backend in backends() {
        let Some((relay, _)) = start_relays(backend, 1, None, 5) else { continue };
        let server = relay.udp_addrs()[0];
        let mut t = StreamClient::tcp(relay.tcp_addrs()[0], LOGIN);
        let rt = t.allocate().unwrap_or_else(|code| panic!("{backend:?}: {code}"));
        let mut u = TurnClient::new(server, LOGIN);
        let ru = u.allocate().unwrap();
        t.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(ru)]);
        t.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4005), Attribute::XorPeerAddress(ru)]);
        u.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4006), Attribute::XorPeerAddress(rt)]);
        for i in 0..20u8 {
            // TCP client → UDP client: ChannelData on both sides.
            let payload = vec![i; 1 + usize::from(i)];
            t.send_channel_data(0x4005, &payload);
            let got = u.recv().expect("UDP client receives");
            let cd = ChannelData::parse(&got).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4006, &payload[..]), "{backend:?}");
            // UDP client → TCP client.
            u.send_channel_data(0x4006, &payload);
            let f = t.frame();
            let cd = ChannelData::parse(&f).unwrap();
            assert_eq!((cd.channel, cd.payload), (0x4005, &payload[..]), "{backend:?}");
        }
        // A frame larger than any datagram a relay socket takes (2,048 B
        // here) is not handed over either, as it would not arrive from the
        // network; the next one is.
        t.send_channel_data(0x4005, &[7; 3000]);
        t.send_channel_data(0x4005, b"after");
        let got = u.recv().expect("UDP client receives");
        assert_eq!(ChannelData::parse(&got).unwrap().payload, b"after", "{backend:?}");
        let r = &relay.stats(TIMEOUT)[0];
        assert_eq!(r.stats.relayed_in_shard, 42, "{backend:?}");
        relay.stop().unwrap();
    }
}

#[test]
fn a_second_instance_on_the_same_address_refuses_to_start_unless_handing_over() {
    let make = |_k: usize| Server::new(ServerParts::new(Credentials::new(REALM)), Instant::now(), 1_800_000_000, 3);
    let first = loopback_config(Backend::Portable, 1, Listeners::UdpTcp, RelayPorts::Ephemeral(2));
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
