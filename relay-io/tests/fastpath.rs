//! The kernel fast path end to end: clients, the relay and peers in three
//! network namespaces joined by veth pairs (test_kit::Topology), the XDP
//! program attached natively to the relay's two devices. ChannelData goes
//! both ways through the kernel with payloads of 1 to 1400 bytes (the
//! receiving kernels verify the checksums: a wrong one is never
//! delivered), over IPv4, IPv6 and mixed families, and to a peer on the
//! clients' side (XDP_TX); the shard's stats count every datagram whichever
//! path took it; Send/Data and ChannelData mix on one allocation; entries
//! go with Refresh 0 and with expiry (nothing is relayed after); relay to
//! relay between two allocations goes in the kernel once both have a
//! channel (through the shard before); a capped allocation stays in the
//! shard. Needs root, clang at
//! build time and a kernel with BPF; skips elsewhere, fails in CI.
//! Every wait is bounded.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::server::policy::PeerPolicy;
use relay_core::server::stats::Direction;
use relay_core::server::{Server, ServerConfig, ServerParts};
use relay_core::wire::{Attribute, Method, attr::AddressFamily};
use relay_io::fastpath::{COUNTERS, FastPathMode, PassiveXdp};
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};
use test_kit::{
    Listeners, Login, Topology, TurnClient, channel_frame, data_indication, loopback_config, recv_datagram,
    send_indication,
};

const LOGIN: Login<'static> = Login { user: "alice", password: "secret", realm: "fast.test" };
const TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the namespaces, or says why not (CI: fails).
fn topology(test: &str) -> Option<Topology> {
    match Topology::new("fp") {
        Ok(t) => Some(t),
        Err(why) => {
            test_kit::skip(test, &why);
            None
        }
    }
}

/// A relay and the hosts' passive XDP programs (veth delivers the relay's
/// XDP_TX frames only to a device with a program of its own).
struct Running {
    relay: Relay,
    _hosts: Vec<PassiveXdp>,
}

impl std::ops::Deref for Running {
    type Target = Relay;
    fn deref(&self) -> &Relay {
        &self.relay
    }
}

impl Running {
    fn stop(self) {
        self.relay.stop().unwrap();
    }
}

/// Starts a relay in the relay's namespace, the fast path forced on
/// (native XDP on vrc and vrp): listeners on 10.201.1.1 and fd00:1::1,
/// relay addresses 10.201.2.1 and fd00:2::1.
fn start(t: &Topology, config: ServerConfig) -> Option<Running> {
    start_on(t, config, Vec::new(), FastPathMode::Xdp)
}

/// [`start`], the fast path in `mode` on `interfaces` only (empty: the
/// derived ones).
fn start_on(t: &Topology, config: ServerConfig, interfaces: Vec<String>, mode: FastPathMode) -> Option<Running> {
    let mut hosts = Vec::new();
    for (ns, dev) in [(&t.clients, "vc"), (&t.peers, "vp")] {
        match Topology::run_in(ns, move || PassiveXdp::attach(dev).map_err(|e| e.to_string())) {
            Ok(h) => hosts.push(h),
            Err(why) => {
                test_kit::skip("the kernel fast path", &why);
                return None;
            }
        }
    }
    start_relay(t, config, interfaces, mode).map(|relay| Running { relay, _hosts: hosts })
}

fn start_relay(t: &Topology, config: ServerConfig, interfaces: Vec<String>, mode: FastPathMode) -> Option<Relay> {
    let ns = t.relay.clone();
    let started = Topology::run_in(&ns, move || {
        let io = IoConfig {
            udp_listen: vec!["10.201.1.1:3478".parse().unwrap(), "[fd00:1::1]:3478".parse().unwrap()],
            relay_ips: vec![RelayIp::same("10.201.2.1".parse().unwrap()), RelayIp::same("fd00:2::1".parse().unwrap())],
            relay_ports: RelayPorts::Ephemeral(8),
            fast_path: mode,
            fast_path_interfaces: interfaces,
            ..IoConfig::default()
        };
        let policy =
            PeerPolicy::with_lists(vec!["10.201.0.0/16".parse().unwrap(), "fd00::/16".parse().unwrap()], vec![]);
        Relay::start(&io, move |_| {
            let parts = ServerParts::new(LOGIN.credentials()).with_config(config.clone()).with_policy(policy.clone());
            Server::new(parts, Instant::now(), 1_800_000_000, 11)
        })
        .map_err(|e| e.to_string())
    });
    match started {
        Ok(r) => Some(r),
        Err(why) => {
            test_kit::skip("the kernel fast path", &why);
            None
        }
    }
}

fn counter(relay: &Relay, name: &str) -> u64 {
    let i = COUNTERS.iter().position(|c| *c == name).expect("a counter");
    relay.fast_path().expect("the fast path runs").counters()[i]
}

fn relayed(relay: &Relay, d: Direction) -> u64 {
    relay.stats(TIMEOUT).iter().map(|r| r.stats.relayed_packets_of(d)).sum()
}

fn installed(relay: &Relay) -> u64 {
    relay.stats(TIMEOUT).iter().map(|r| r.fast_path.installed).sum()
}

fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed) as u8).collect()
}

/// A client in the clients' namespace at `addr`, talking to `server`.
fn client(t: &Topology, addr: &str, server: &str) -> TurnClient {
    TurnClient::with_socket(Topology::udp(&t.clients, addr), server.parse().unwrap(), LOGIN)
}

/// One datagram on `sock` within the timeout.
fn expect(sock: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    recv_datagram(sock).unwrap_or_else(|| panic!("{what}: nothing arrived"))
}

/// ChannelData both ways on one binding: a warm-up datagram each way (the
/// first may go through the stack while the neighbours are resolved), then
/// every size through the kernel.
fn both_ways(relay: &Relay, c: &TurnClient, peer: &UdpSocket, relayed_addr: SocketAddr, channel: u16) {
    let server = c.server;
    for warm in 0..2 {
        c.send_channel_data(channel, &payload(10, warm));
        assert_eq!(expect(peer, "warm-up to the peer"), (payload(10, warm), relayed_addr));
        peer.send_to(&payload(10, warm), relayed_addr).unwrap();
        let got = c.recv().unwrap_or_else(|| {
            let counters: Vec<(&str, u64)> =
                COUNTERS.iter().copied().zip(relay.fast_path().unwrap().counters()).collect();
            panic!("warm-up to the client on channel {channel:#x}: nothing arrived; {counters:?}")
        });
        assert_eq!(got, channel_frame(channel, &payload(10, warm), false));
    }
    let (to_peer, to_client) = (counter(relay, "to_peer"), counter(relay, "to_client"));
    let (shard_to_peer, shard_to_client) = (relayed(relay, Direction::ToPeer), relayed(relay, Direction::ToClient));
    let sizes = [1usize, 2, 3, 4, 5, 100, 511, 1000, 1200, 1400];
    for (i, &n) in sizes.iter().enumerate() {
        let data = payload(n, i);
        c.send_channel_data(channel, &data);
        let (got, from) = expect(peer, "to the peer");
        assert_eq!((got.len(), from), (n, relayed_addr), "size {n}");
        assert_eq!(got, data, "size {n}");
        peer.send_to(&data, relayed_addr).unwrap();
        let (got, from) = expect(&c.sock, "to the client");
        assert_eq!(from, server, "from the listener");
        assert_eq!(got, channel_frame(channel, &data, false), "size {n}");
    }
    let k = sizes.len() as u64;
    assert_eq!(counter(relay, "to_peer") - to_peer, k, "every datagram to the peer went through the kernel");
    assert_eq!(counter(relay, "to_client") - to_client, k, "every datagram to the client went through the kernel");
    assert_eq!(relayed(relay, Direction::ToPeer) - shard_to_peer, k, "the shard counts them");
    assert_eq!(relayed(relay, Direction::ToClient) - shard_to_client, k, "the shard counts them");
}

#[test]
fn channel_data_through_the_kernel_in_every_family_combination() {
    every_family_combination("channel_data_through_the_kernel_in_every_family_combination", FastPathMode::Xdp);
}

#[test]
fn channel_data_through_tc_in_every_family_combination() {
    every_family_combination("channel_data_through_tc_in_every_family_combination", FastPathMode::Tc);
}

fn every_family_combination(test: &str, mode: FastPathMode) {
    let Some(t) = topology(test) else { return };
    let Some(relay) = start_on(&t, ServerConfig::default(), Vec::new(), mode) else { return };
    // (client address, listener, peer, relay family, channel)
    let cases = [
        ("10.201.1.2:0", "10.201.1.1:3478", "10.201.2.2:0", AddressFamily::V4, 0x4001),
        ("[fd00:1::2]:0", "[fd00:1::1]:3478", "[fd00:2::2]:0", AddressFamily::V6, 0x4002),
        ("10.201.1.2:0", "10.201.1.1:3478", "[fd00:2::2]:0", AddressFamily::V6, 0x4003),
        ("[fd00:1::2]:0", "[fd00:1::1]:3478", "10.201.2.2:0", AddressFamily::V4, 0x4004),
        // A peer on the clients' side: in and out of vrc (XDP_TX).
        ("10.201.1.2:0", "10.201.1.1:3478", "10.201.1.3:0", AddressFamily::V4, 0x4005),
    ];
    for (i, (caddr, server, paddr, family, channel)) in cases.into_iter().enumerate() {
        let mut c = client(&t, caddr, server);
        let family_code = match family {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        };
        let relayed_addr = c
            .allocate_with(&[
                Attribute::RequestedTransport(relay_core::wire::attr::transport::UDP),
                Attribute::RequestedAddressFamily(family_code),
            ])
            .unwrap_or_else(|e| panic!("case {i}: allocate: {e}"));
        let ns = if paddr.starts_with("10.201.1.") { &t.clients } else { &t.peers };
        let peer = Topology::udp(ns, paddr);
        let pa = peer.local_addr().unwrap();
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(channel), Attribute::XorPeerAddress(pa)]);
        both_ways(&relay, &c, &peer, relayed_addr, channel);
    }
    assert_eq!(installed(&relay), 5, "one entry per binding");
    let s = relay.stats(TIMEOUT);
    assert_eq!(s.iter().map(|r| r.fast_path.errors).sum::<u64>(), 0);
    relay.stop();
}

#[test]
fn send_and_data_mix_with_channel_data_and_refresh_zero_ends_it() {
    let Some(t) = topology("send_and_data_mix_with_channel_data_and_refresh_zero_ends_it") else { return };
    let Some(relay) = start(&t, ServerConfig::default()) else { return };
    let mut c = client(&t, "10.201.1.2:0", "10.201.1.1:3478");
    let relayed_addr = c.allocate().unwrap();
    let a = Topology::udp(&t.peers, "10.201.2.2:0");
    let b = Topology::udp(&t.peers, "10.201.2.3:0");
    let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(pa)]);
    c.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(pb)]);
    both_ways(&relay, &c, &a, relayed_addr, 0x4001);
    // Send and Data indications on the same allocation go through the shard.
    let (kernel_before, no_entry) = (counter(&relay, "to_peer"), counter(&relay, "no_entry"));
    for i in 0..3 {
        c.send(&send_indication(pb, &payload(50, i)));
        assert_eq!(expect(&b, "Send to b"), (payload(50, i), relayed_addr));
        b.send_to(&payload(60, i), relayed_addr).unwrap();
        let (got, _) = expect(&c.sock, "Data from b");
        assert_eq!(data_indication(&got), (payload(60, i), pb));
        c.send_channel_data(0x4001, &payload(70, i));
        assert_eq!(expect(&a, "ChannelData to a"), (payload(70, i), relayed_addr));
    }
    assert_eq!(counter(&relay, "to_peer") - kernel_before, 3, "ChannelData through the kernel");
    assert!(counter(&relay, "no_entry") - no_entry >= 6, "Send and peer b's datagrams passed to the stack");
    assert_eq!(installed(&relay), 1);
    // Refresh 0: the entries go with the allocation; the peer's datagrams
    // reach nobody, in the kernel or out of it.
    c.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
    assert_eq!(installed(&relay), 0, "entries removed with the allocation");
    let to_client = counter(&relay, "to_client");
    a.send_to(b"after", relayed_addr).unwrap();
    c.send_channel_data(0x4001, b"after");
    c.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    a.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert_eq!(c.recv(), None, "nothing relayed to the client after Refresh 0");
    assert_eq!(recv_datagram(&a), None, "nothing relayed to the peer after Refresh 0");
    assert_eq!(counter(&relay, "to_client"), to_client);
    relay.stop();
}

#[test]
fn expiry_removes_the_entries() {
    let Some(t) = topology("expiry_removes_the_entries") else { return };
    let config = ServerConfig {
        permission_lifetime: Duration::from_secs(2),
        channel_lifetime: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let Some(relay) = start(&t, config) else { return };
    let mut c = client(&t, "10.201.1.2:0", "10.201.1.1:3478");
    let relayed_addr = c.allocate().unwrap();
    let a = Topology::udp(&t.peers, "10.201.2.2:0");
    let pa = a.local_addr().unwrap();
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(pa)]);
    c.send_channel_data(0x4001, b"warm");
    assert_eq!(expect(&a, "warm-up").0, b"warm");
    assert_eq!(installed(&relay), 1);
    // Past the lifetimes, within the timer's one-second tick.
    std::thread::sleep(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(3);
    while installed(&relay) != 0 {
        assert!(Instant::now() < deadline, "the expired binding's entries are still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (to_peer, to_client) = (counter(&relay, "to_peer"), counter(&relay, "to_client"));
    c.send_channel_data(0x4001, b"late");
    a.send_to(b"late", relayed_addr).unwrap();
    a.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    c.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    assert_eq!(recv_datagram(&a), None, "an expired channel relays nothing");
    assert_eq!(c.recv(), None, "an expired permission lets nothing in");
    assert_eq!((counter(&relay, "to_peer"), counter(&relay, "to_client")), (to_peer, to_client));
    relay.stop();
}

#[test]
fn relay_to_relay_in_the_kernel_and_capped_allocations_in_the_shard() {
    let Some(t) = topology("relay_to_relay_in_the_kernel_and_capped_allocations_in_the_shard") else { return };
    // Relay to relay: two clients, each with a channel to the other's
    // relay address (two browsers relayed through one server).
    let Some(relay) = start(&t, ServerConfig::default()) else { return };
    let mut c1 = client(&t, "10.201.1.2:0", "10.201.1.1:3478");
    let mut c2 = client(&t, "10.201.1.3:0", "10.201.1.1:3478");
    let (r1, r2) = (c1.allocate().unwrap(), c2.allocate().unwrap());
    c1.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(r2)]);
    // Before c2 binds a channel back, c2 has only a permission: the kernel
    // leaves c1's datagrams to the shard, which sends a Data indication.
    c2.ok(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(r1)]);
    c1.send_channel_data(0x4001, b"hand-over");
    let (got, _) = expect(&c2.sock, "relay to relay, through the shard");
    assert_eq!(data_indication(&got), (b"hand-over".to_vec(), r1));
    c2.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4002), Attribute::XorPeerAddress(r1)]);
    assert_eq!(installed(&relay), 2);
    let before = counter(&relay, "relay_to_relay");
    for i in 0..20 {
        c1.send_channel_data(0x4001, &payload(200, i));
        assert_eq!(c2.recv().expect("c2 receives"), channel_frame(0x4002, &payload(200, i), false));
        c2.send_channel_data(0x4002, &payload(300, i));
        assert_eq!(c1.recv().expect("c1 receives"), channel_frame(0x4001, &payload(300, i), false));
    }
    assert_eq!(counter(&relay, "relay_to_relay") - before, 40, "every one relayed in the kernel");
    relay.stop();
    // A bandwidth cap only the shard can hold.
    let capped = ServerConfig { bandwidth_limit: 1 << 20, bandwidth_burst: 1 << 20, ..ServerConfig::default() };
    let Some(relay) = start(&t, capped) else { return };
    let mut c = client(&t, "10.201.1.2:0", "10.201.1.1:3478");
    let relayed_addr = c.allocate().unwrap();
    let a = Topology::udp(&t.peers, "10.201.2.2:0");
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(a.local_addr().unwrap())]);
    for i in 0..5 {
        c.send_channel_data(0x4001, &payload(100, i));
        assert_eq!(expect(&a, "capped, through the shard"), (payload(100, i), relayed_addr));
    }
    assert_eq!((installed(&relay), counter(&relay, "to_peer")), (0, 0), "nothing on the fast path");
    relay.stop();
}

#[test]
fn a_local_senders_partial_checksum_goes_through_the_stack() {
    let Some(t) = topology("a_local_senders_partial_checksum_goes_through_the_stack") else { return };
    let Some(relay) = start(&t, ServerConfig::default()) else { return };
    // The clients' device leaves checksums to offload: their datagrams
    // cross the veth with only the pseudo-header sum in the field.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.clients, "ethtool", "-K", "vc", "tx", "on"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
    let mut c = client(&t, "10.201.1.2:0", "10.201.1.1:3478");
    let relayed_addr = c.allocate().unwrap();
    let a = Topology::udp(&t.peers, "10.201.2.2:0");
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(a.local_addr().unwrap())]);
    let (to_peer, partial) = (counter(&relay, "to_peer"), counter(&relay, "partial_checksum"));
    for i in 0..10 {
        c.send_channel_data(0x4001, &payload(100 + i, i));
        assert_eq!(expect(&a, "to the peer, through the shard"), (payload(100 + i, i), relayed_addr));
        // The peer's side has full checksums: back through the kernel.
        a.send_to(&payload(50, i), relayed_addr).unwrap();
        assert_eq!(c.recv().expect("to the client"), channel_frame(0x4001, &payload(50, i), false));
    }
    assert_eq!(counter(&relay, "to_peer"), to_peer, "nothing relayed with a checksum it cannot complete");
    assert!(counter(&relay, "partial_checksum") - partial >= 10, "left to the stack, counted");
    assert!(counter(&relay, "to_client") >= 9);
    relay.stop();
}

#[test]
fn a_frame_is_never_redirected_to_a_device_without_the_program() {
    let Some(t) = topology("a_frame_is_never_redirected_to_a_device_without_the_program") else { return };
    // Attached to the clients' side only: the peers' side cannot be
    // written to from XDP, so client -> peer goes through the stack.
    let Some(relay) = start_on(&t, ServerConfig::default(), vec!["vrc".into()], FastPathMode::Xdp) else { return };
    let mut c = client(&t, "10.201.1.2:0", "10.201.1.1:3478");
    let relayed_addr = c.allocate().unwrap();
    let a = Topology::udp(&t.peers, "10.201.2.2:0");
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(a.local_addr().unwrap())]);
    let egress = counter(&relay, "egress_not_attached");
    for i in 0..10 {
        c.send_channel_data(0x4001, &payload(64, i));
        assert_eq!(expect(&a, "to the peer, through the stack"), (payload(64, i), relayed_addr));
        a.send_to(&payload(32, i), relayed_addr).unwrap();
        assert_eq!(c.recv().expect("to the client, through the shard"), channel_frame(0x4001, &payload(32, i), false));
    }
    assert_eq!(counter(&relay, "to_peer"), 0);
    assert!(counter(&relay, "egress_not_attached") - egress >= 9, "counted as left to the stack");
    relay.stop();
}

/// One namespace with only its `lo`, forwarding on (bpf_fib_lookup asks);
/// deleted on drop.
struct Loopback(String);

impl Loopback {
    fn new() -> Result<Loopback, String> {
        let ns = Loopback(format!("fp-lo-{}", std::process::id()));
        let steps: [&[&str]; 3] = [
            &["ip", "netns", "add", &ns.0],
            &["ip", "-n", &ns.0, "link", "set", "lo", "up"],
            &["ip", "netns", "exec", &ns.0, "sysctl", "-qw", "net.ipv4.conf.lo.forwarding=1"],
        ];
        for step in steps {
            let out = std::process::Command::new(step[0]).args(&step[1..]).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("{step:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        Ok(ns)
    }
}

impl std::ops::Drop for Loopback {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn tc_on_loopback_relays_between_local_sockets() {
    let ns = match Loopback::new() {
        Ok(ns) => ns,
        Err(why) => return test_kit::skip("tc_on_loopback_relays_between_local_sockets", &why),
    };
    let name = ns.0.clone();
    let started = Topology::run_in(&ns.0, move || {
        let io = IoConfig {
            udp_listen: vec!["127.0.0.1:3478".parse().unwrap()],
            fast_path: FastPathMode::Tc,
            ..loopback_config(Backend::Auto, 1, Listeners::Udp, RelayPorts::Ephemeral(4))
        };
        Relay::start(&io, |_| {
            let parts = ServerParts::new(LOGIN.credentials()).with_policy(test_kit::allow_loopback());
            Server::new(parts, Instant::now(), 1_800_000_000, 11)
        })
        .map_err(|e| e.to_string())
    });
    let relay = match started {
        Ok(r) => r,
        Err(why) => return test_kit::skip("tc_on_loopback_relays_between_local_sockets", &why),
    };
    let mut c = TurnClient::with_socket(Topology::udp(&name, "127.0.0.1:0"), "127.0.0.1:3478".parse().unwrap(), LOGIN);
    let relayed_addr = c.allocate().unwrap();
    let peer = Topology::udp(&name, "127.0.0.2:0");
    c.ok(
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(peer.local_addr().unwrap())],
    );
    // Short and long payloads (the receiver checks a short datagram's
    // checksum at once).
    let sizes: Vec<usize> = (0..20).map(|i| i * 4).chain([100, 500, 1400]).collect();
    for (i, &n) in sizes.iter().enumerate() {
        c.send_channel_data(0x4001, &payload(n, i));
        assert_eq!(expect(&peer, "to the peer"), (payload(n, i), relayed_addr), "size {n}");
        peer.send_to(&payload(n, i), relayed_addr).unwrap();
        let got = c.recv().unwrap_or_else(|| {
            let dbg = std::process::Command::new("ip").args(["netns", "exec", &name, "nstat", "-az"]).output().unwrap();
            let dbg: String = String::from_utf8_lossy(&dbg.stdout)
                .lines()
                .filter(|l| !l.contains(" 0 "))
                .collect::<Vec<_>>()
                .join("\n");
            let counters: Vec<(&str, u64)> =
                COUNTERS.iter().copied().zip(relay.fast_path().unwrap().counters()).collect();
            panic!("size {n}: nothing to the client; {counters:?}\n{dbg}")
        });
        assert_eq!(got, channel_frame(0x4001, &payload(n, i), false), "size {n}");
    }
    let k = sizes.len() as u64;
    // Peer -> client grows the datagram: the partial checksum's start
    // stays inside it, and the local stack takes it as it is. Client ->
    // peer would shrink it past that start: those go through the shard.
    assert_eq!(counter(&relay, "to_client"), k, "every datagram to the client relayed at TC on lo");
    assert_eq!(counter(&relay, "to_peer"), 0);
    assert!(counter(&relay, "partial_checksum") >= k, "client -> peer left to the shard");
    assert_eq!(relayed(&relay, Direction::ToClient), k, "the shard counts them");
    assert_eq!(relayed(&relay, Direction::ToPeer), k);
    relay.stop().unwrap();
}
