//! Batched UDP over real sockets, both backends: clients and peers that
//! send with GSO reach the relay as coalesced (GRO) buffers, every segment
//! is handled as the datagram it was (ChannelData for a channel, a STUN
//! request among them, Data indications, a TCP client's frames), and the
//! relay's own sends of one flow leave as GSO sends; with batching off
//! the same traffic goes datagram by datagram; where the kernel refuses a
//! GSO send (segments larger than the path MTU, in network namespaces
//! joined by a veth pair with a small MTU) the datagrams go one by one
//! and none is lost.
//! Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

use relay_core::server::policy::PeerPolicy;
use relay_core::server::stats::Drop;
use relay_core::server::{Server, ServerParts};
use relay_core::wire::{Attribute, ChannelData, Class, Message, MessageBuilder, MessageType, Method};
use relay_io::gso::GsoStats;
use relay_io::sys::Batch;
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};
use test_kit::{
    Listeners, Login, StreamClient, TIMEOUT, TurnClient, allow_loopback, backends, channel_frame, data_indication,
    loopback_config, peer, recv_datagram, start_or_skip,
};

const LOGIN: Login<'static> = Login { user: "alice", password: "secret", realm: "gso.test" };

fn start(backend: Backend, batching: bool) -> Option<Relay> {
    start_with(backend, "127.0.0.1", allow_loopback(), |c| {
        c.tcp_listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.relay_ports = RelayPorts::Ephemeral(4);
        c.gso = batching;
        c.gro = batching;
    })
}

/// One shard on `backend` listening on 127.0.0.1, relaying from
/// `relay_ip` under `policy`; `tweak` adjusts the rest.
fn start_with(
    backend: Backend,
    relay_ip: &str,
    policy: PeerPolicy,
    tweak: impl FnOnce(&mut IoConfig),
) -> Option<Relay> {
    let mut config = IoConfig {
        relay_ips: vec![RelayIp::same(relay_ip.parse().unwrap())],
        ..loopback_config(backend, 1, Listeners::Udp, RelayPorts::Ephemeral(2))
    };
    tweak(&mut config);
    let make = |_k: usize| {
        let parts = ServerParts::new(LOGIN.credentials()).with_policy(policy.clone());
        Server::new(parts, Instant::now(), 1_800_000_000, 7)
    };
    start_or_skip(&config, make)
}

/// Sends `frames` from `sock` to `dest` in one flush of a GSO batch (one
/// `sendmsg` with `UDP_SEGMENT` for the equal-sized run).
fn gso_send(sock: &UdpSocket, dest: SocketAddr, frames: &[Vec<u8>]) -> GsoStats {
    let mut b = Batch::new(frames.len(), 0, 2048);
    b.set_gso(true);
    for (j, f) in frames.iter().enumerate() {
        b.slot_and_reply(j).1[..f.len()].copy_from_slice(f);
        b.send_reply(sock.as_raw_fd(), dest, j, f.len());
    }
    assert_eq!(b.flush(), (frames.len(), 0), "every datagram handed to the kernel");
    b.gso_stats()
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; len];
    p[..4].copy_from_slice(&(i as u32).to_be_bytes());
    p
}

fn udp_stats(relay: &Relay) -> GsoStats {
    let mut s = GsoStats::default();
    for r in relay.stats(TIMEOUT) {
        s.add(&r.udp);
    }
    s
}

fn binding_request() -> (Vec<u8>, [u8; 12]) {
    let tid = [7u8; 12];
    let mut buf = [0u8; 64];
    let ty = MessageType::new(Class::Request, Method::BINDING);
    let b = MessageBuilder::new(&mut buf, ty, relay_core::wire::TransactionId(tid)).unwrap();
    let n = b.finish();
    (buf[..n].to_vec(), tid)
}

const BURST: usize = 20;

/// One run of the suite; returns the relay's batching counters.
fn suite(backend: Backend, batching: bool) -> Option<GsoStats> {
    let relay = start(backend, batching)?;
    let server = relay.udp_addrs()[0];
    let mut c = TurnClient::new(server, LOGIN);
    let relayed = c.allocate().unwrap();
    let p = peer();
    let paddr = p.local_addr().unwrap();
    c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(paddr)]);
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(paddr)]);

    // Client → peer: a burst of equal ChannelData frames and, shorter, a
    // Binding request last (a coalesced buffer's last segment may be
    // shorter): every frame reaches the peer in order, the request is
    // answered.
    let mut frames: Vec<Vec<u8>> = (0..BURST).map(|i| channel_frame(0x4001, &payload(i, 100), false)).collect();
    let (binding, tid) = binding_request();
    frames.push(binding);
    let sent = gso_send(&c.sock, server, &frames);
    assert_eq!((sent.gso_sends, sent.batched), (1, BURST as u64 + 1), "the client's burst left as one GSO send");
    for i in 0..BURST {
        let (got, from) = recv_datagram(&p).unwrap_or_else(|| panic!("{backend:?}: the peer receives frame {i}"));
        assert_eq!((got, from), (payload(i, 100), relayed), "{backend:?} frame {i}");
    }
    let answer = c.recv().expect("a Binding answer");
    let m = Message::parse(&answer).unwrap();
    assert_eq!((m.message_type().class, m.transaction_id().0), (Class::Success, tid));

    // Peer → client: a burst to the relay address comes out as ChannelData
    // (the header added out of place for every segment after the first).
    let burst: Vec<Vec<u8>> = (0..BURST).map(|i| payload(i, 100)).collect();
    gso_send(&p, relayed, &burst);
    for (i, want) in burst.iter().enumerate() {
        let got = c.recv().unwrap_or_else(|| panic!("{backend:?}: the client receives frame {i}"));
        let cd = ChannelData::parse(&got).unwrap();
        assert_eq!((cd.channel, cd.payload), (0x4001, &want[..]), "{backend:?} frame {i}");
    }

    // Another port of the peer's IP has a permission but no channel: Data
    // indications, padded (an odd size), from a side header and padding.
    let p2 = peer();
    let p2addr = p2.local_addr().unwrap();
    let burst: Vec<Vec<u8>> = (0..BURST).map(|i| payload(i, 101)).collect();
    gso_send(&p2, relayed, &burst);
    for (i, want) in burst.iter().enumerate() {
        let got = c.recv().unwrap_or_else(|| panic!("{backend:?}: the client receives indication {i}"));
        assert_eq!(got.len() % 4, 0);
        let (data, from) = data_indication(&got);
        assert_eq!((&data, from), (want, p2addr), "{backend:?} indication {i}");
    }

    // A peer without a permission: its whole burst is refused, each
    // datagram counted (the burst is routed once).
    let stranger = UdpSocket::bind("127.0.0.5:0").unwrap();
    let before = relay.stats(TIMEOUT)[0].stats.drops_of(Drop::NoPermission);
    gso_send(&stranger, relayed, &burst);
    let deadline = Instant::now() + TIMEOUT;
    while relay.stats(TIMEOUT)[0].stats.drops_of(Drop::NoPermission) < before + BURST as u64 {
        assert!(Instant::now() < deadline, "{backend:?}: the stranger's burst not counted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(relay.stats(TIMEOUT)[0].stats.drops_of(Drop::NoPermission), before + BURST as u64);

    // A TCP client's allocation: a peer's burst reaches it as padded
    // ChannelData frames on its stream.
    let mut t = StreamClient::tcp(relay.tcp_addrs()[0], LOGIN);
    let trelayed = t.allocate().unwrap();
    t.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4002), Attribute::XorPeerAddress(paddr)]);
    let burst: Vec<Vec<u8>> = (0..BURST).map(|i| payload(i, 61)).collect();
    gso_send(&p, trelayed, &burst);
    for (i, want) in burst.iter().enumerate() {
        let f = t.frame();
        assert_eq!(f.len(), 4 + 64, "padded to 4 on a stream");
        let cd = ChannelData::parse(&f).unwrap();
        assert_eq!((cd.channel, cd.payload), (0x4002, &want[..]), "{backend:?} stream frame {i}");
    }
    // And the other way: its frames of one read leave for the peer as a
    // GSO send too.
    let mut frames = Vec::new();
    for want in &burst {
        frames.extend(channel_frame(0x4002, want, true));
    }
    t.send(&frames);
    for (i, want) in burst.iter().enumerate() {
        let (got, from) = recv_datagram(&p).unwrap_or_else(|| panic!("{backend:?}: the peer receives {i}"));
        assert_eq!((&got, from), (want, trelayed), "{backend:?} from the stream, {i}");
    }

    let reports = relay.stats(TIMEOUT);
    let relayed_packets = reports[0].stats.relayed_packets;
    assert_eq!(relayed_packets[0][0], BURST as u64, "to peers, UDP clients: {relayed_packets:?}");
    assert_eq!(relayed_packets[0][1], BURST as u64, "to peers, TCP clients: {relayed_packets:?}");
    assert_eq!(relayed_packets[1][0], 2 * BURST as u64, "to UDP clients: {relayed_packets:?}");
    let stats = udp_stats(&relay);
    relay.stop().unwrap();
    Some(stats)
}

#[test]
fn coalesced_bursts_are_handled_segment_by_segment_and_sent_batched() {
    for backend in backends() {
        let Some(s) = suite(backend, true) else { continue };
        // Four bursts arrived coalesced; the relay's own sends of each
        // burst (and of the TCP client's frames) left in GSO sends.
        assert!(s.gro_buffers >= 4, "{backend:?}: {s:?}");
        assert!(s.gro_segments >= 4 * BURST as u64, "{backend:?}: {s:?}");
        assert!(s.gso_sends >= 4, "{backend:?}: {s:?}");
        assert!(s.batched >= 4 * BURST as u64, "{backend:?}: {s:?}");
        assert_eq!(s.fallbacks, 0, "{backend:?}: {s:?}");
    }
}

#[test]
fn with_batching_off_every_datagram_goes_alone() {
    for backend in backends() {
        let Some(s) = suite(backend, false) else { continue };
        assert_eq!((s.gro_buffers, s.gso_sends, s.batched), (0, 0, 0), "{backend:?}: {s:?}");
        assert!(s.single >= 4 * BURST as u64, "{backend:?}: {s:?}");
    }
}

/// With GRO the receive buffers hold 64 KiB: a datagram (or a coalesced
/// segment) larger than `max_datagram` is still dropped and counted, as
/// when a smaller buffer cut it.
#[test]
fn datagrams_larger_than_the_maximum_are_dropped_with_gro_on() {
    for backend in backends() {
        let Some(relay) = start_with(backend, "127.0.0.1", allow_loopback(), |c| c.max_datagram = 600) else {
            continue;
        };
        let server = relay.udp_addrs()[0];
        let mut c = TurnClient::new(server, LOGIN);
        let relayed = c.allocate().unwrap();
        let p = peer();
        let paddr = p.local_addr().unwrap();
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(paddr)]);
        // One too large, then a coalesced burst of too-large segments
        // (each segment 704 bytes), then one that fits: only it arrives.
        c.send_channel_data(0x4001, &payload(0, 1000));
        let frames: Vec<Vec<u8>> = (0..5).map(|i| channel_frame(0x4001, &payload(i, 700), false)).collect();
        gso_send(&c.sock, server, &frames);
        c.send_channel_data(0x4001, &payload(9, 500));
        let (got, from) = recv_datagram(&p).expect("the datagram that fits arrives");
        assert_eq!((got, from), (payload(9, 500), relayed), "{backend:?}: only the one that fits");
        let too_large = relay.stats(TIMEOUT)[0].stats.drops_of(Drop::TooLarge);
        assert_eq!(too_large, 6, "{backend:?}: one datagram and five segments dropped as too large");
        relay.stop().unwrap();
    }
}

/// Two network namespaces, `a` (the relay's) and `b` (the peer's), joined
/// by a veth pair 10.99.0.1 ↔ 10.99.0.2 with a 1,280-byte MTU: a GSO send
/// of larger segments is refused (EMSGSIZE), where single sends of them
/// are fragmented and delivered. Deleted on drop.
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    fn new() -> Result<Namespaces, String> {
        let id = std::process::id();
        let ns = Namespaces { a: format!("gso-a-{id}"), b: format!("gso-b-{id}") };
        let (a, b) = (ns.a.as_str(), ns.b.as_str());
        let steps: [&[&str]; 10] = [
            &["ip", "netns", "add", a],
            &["ip", "netns", "add", b],
            &["ip", "link", "add", "va", "netns", a, "type", "veth", "peer", "name", "vb", "netns", b],
            &["ip", "-n", a, "addr", "add", "10.99.0.1/24", "dev", "va"],
            &["ip", "-n", b, "addr", "add", "10.99.0.2/24", "dev", "vb"],
            &["ip", "-n", a, "link", "set", "va", "up"],
            &["ip", "-n", b, "link", "set", "vb", "up"],
            &["ip", "-n", a, "link", "set", "lo", "up"],
            &["ip", "-n", a, "link", "set", "va", "mtu", "1280"],
            &["ip", "-n", b, "link", "set", "vb", "mtu", "1280"],
        ];
        for step in steps {
            let out = std::process::Command::new(step[0])
                .args(&step[1..])
                .output()
                .map_err(|e| format!("{}: {e}", step[0]))?;
            if !out.status.success() {
                return Err(format!("{step:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(ns)
    }

    /// A UDP socket bound in namespace `name` (created by a thread that
    /// enters it; the socket stays in it wherever it is used).
    fn socket(name: &str, addr: &str) -> UdpSocket {
        let (name, addr) = (name.to_owned(), addr.to_owned());
        std::thread::spawn(move || {
            relay_io::sys::enter_netns(&name).expect("enter the namespace");
            let s = UdpSocket::bind(addr).expect("bind in the namespace");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s
        })
        .join()
        .unwrap()
    }
}

impl std::ops::Drop for Namespaces {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Datagrams larger than the veth's MTU.
const LARGE: usize = 1300;

#[test]
fn a_gso_send_the_kernel_refuses_goes_one_by_one() {
    let ns = match Namespaces::new() {
        Ok(ns) => ns,
        Err(why) => return test_kit::skip("a_gso_send_the_kernel_refuses_goes_one_by_one", &why),
    };
    // The relay runs in the first namespace: a thread of its own enters it.
    let a = ns.a.clone();
    let b = ns.b.clone();
    std::thread::spawn(move || {
        relay_io::sys::enter_netns(&a).expect("enter the namespace");
        // A sender's own GSO send is refused the same way: sys::Batch
        // sends the datagrams again one by one.
        let tx = UdpSocket::bind("10.99.0.1:0").unwrap();
        let rx = Namespaces::socket(&b, "10.99.0.2:0");
        let frames: Vec<Vec<u8>> = (0..5).map(|i| payload(i, LARGE)).collect();
        let s = gso_send(&tx, rx.local_addr().unwrap(), &frames);
        assert_eq!((s.fallbacks, s.gso_sends, s.single), (0, 0, 5), "{s:?}");
        for i in 0..5 {
            assert_eq!(recv_datagram(&rx).expect("every datagram arrives").0, payload(i, LARGE));
        }
        for backend in backends() {
            let policy = PeerPolicy::with_lists(vec!["10.99.0.0/24".parse().unwrap()], vec![]);
            let Some(relay) = start_with(backend, "10.99.0.1", policy, |_| {}) else { continue };
            let mut c = TurnClient::new(relay.udp_addrs()[0], LOGIN);
            let relayed = c.allocate().unwrap();
            let p = Namespaces::socket(&b, "10.99.0.2:0");
            let paddr = p.local_addr().unwrap();
            c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(paddr)]);
            // A client's GSO burst (over lo) reaches the relay coalesced;
            // the relay's GSO send to the peer is refused, and the
            // datagrams go one by one: every one arrives.
            let frames: Vec<Vec<u8>> = (0..BURST).map(|i| channel_frame(0x4001, &payload(i, LARGE), false)).collect();
            gso_send(&c.sock, relay.udp_addrs()[0], &frames);
            for i in 0..BURST {
                let (got, from) = recv_datagram(&p).expect("the peer receives every frame");
                assert_eq!((got, from), (payload(i, LARGE), relayed), "{backend:?} frame {i}");
            }
            let s = udp_stats(&relay);
            assert!(s.gro_segments >= BURST as u64, "{backend:?}: the burst arrived coalesced: {s:?}");
            assert_eq!((s.gso_sends, s.fallbacks), (0, 0), "{backend:?}: refused, not a socket fallback: {s:?}");
            assert!(s.single >= BURST as u64, "{backend:?}: re-sent one by one: {s:?}");
            relay.stop().unwrap();
        }
    })
    .join()
    .unwrap();
    drop(ns);
}
