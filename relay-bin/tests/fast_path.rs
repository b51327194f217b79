//! The `turn-relay` binary with the kernel fast path, in three network
//! namespaces (test_kit::Topology): `--fast-path xdp` attaches to the
//! relay's devices, ChannelData is relayed in the kernel and the metrics
//! say so (and still count every relayed packet); after SIGKILL nothing is
//! left attached and a new start attaches again, in the XDP and the TC
//! modes; a forced mode that cannot
//! attach is a start-up error naming the device. Needs root, clang at
//! build time and BPF; skips elsewhere, fails in CI. Every process started
//! here is stopped by its pid; every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Killed, TOPOLOGY_METRICS as METRICS, TOPOLOGY_SERVER as SERVER, run_bounded, topology_command, topology_relay,
};
use relay_core::wire::{Attribute, Method};
use relay_io::fastpath::PassiveXdp;
use test_kit::{Login, Topology, TurnClient, channel_frame, recv_datagram};

const LOGIN: Login<'static> = Login { user: "alice", password: "secret", realm: "fast.bin.test" };

/// A metric's value, read from the clients' namespace (waiting up to 3 s
/// for it to be published: once a second).
fn metric(t: &Topology, sample: &str) -> f64 {
    let body = common::wait_metrics_in(&t.clients, METRICS.parse().unwrap(), Duration::from_secs(3), |b| {
        common::metric(b, sample).is_some()
    });
    common::metric(&body, sample).unwrap_or_else(|| panic!("no {sample} in the metrics: {body}"))
}

fn wait_up(t: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_in(&t.clients, METRICS.parse().unwrap(), "GET", "/healthz", None).is_none() {
        assert!(Instant::now() < deadline, "turn-relay did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when an XDP program is attached to the relay's device `dev`.
fn xdp_on(t: &Topology, dev: &str) -> bool {
    let out = run_bounded(Command::new("ip").args(["-n", &t.relay, "-d", "link", "show", dev]), Duration::from_secs(5));
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

#[test]
fn the_binary_relays_in_the_kernel_and_leaves_nothing_behind() {
    let t = match Topology::new("fpbin") {
        Ok(t) => t,
        Err(why) => return test_kit::skip("the_binary_relays_in_the_kernel_and_leaves_nothing_behind", &why),
    };
    let mut hosts = Vec::new();
    for (ns, dev) in [(&t.clients, "vc"), (&t.peers, "vp")] {
        match Topology::run_in(ns, move || PassiveXdp::attach(dev).map_err(|e| e.to_string())) {
            Ok(h) => hosts.push(h),
            Err(why) => return test_kit::skip("the_binary_relays_in_the_kernel_and_leaves_nothing_behind", &why),
        }
    }
    // A forced mode that cannot attach: native XDP on lo.
    let forced = topology_command(&t, &["--fast-path", "xdp", "--fast-path-interface", "lo"]);
    let out = run_bounded(Command::new("ip").args(forced), Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a fast path that cannot attach stops the start");
    assert!(stderr.contains("fast path") && stderr.contains("to lo:"), "the error names the device: {stderr}");

    let relay = Killed(topology_relay(&t, LOGIN.realm, &["--fast-path", "xdp"]));
    wait_up(&t);
    assert!(xdp_on(&t, "vrc") && xdp_on(&t, "vrp"), "attached to both of the relay's devices");
    assert_eq!(metric(&t, r#"turn_fast_path_info{path="xdp"}"#), 1.0);

    let sock = Topology::udp(&t.clients, "10.201.1.2:0");
    let mut c = TurnClient::with_socket(sock, SERVER.parse().unwrap(), LOGIN);
    let relayed = c.allocate().unwrap();
    let peer = Topology::udp(&t.peers, "10.201.2.2:0");
    let pa: SocketAddr = peer.local_addr().unwrap();
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(pa)]);
    let n = 50;
    for i in 0..n {
        let data = format!("datagram {i}").into_bytes();
        c.send_channel_data(0x4001, &data);
        assert_eq!(recv_datagram(&peer).expect("the peer receives"), (data.clone(), relayed));
        peer.send_to(&data, relayed).unwrap();
        assert_eq!(c.recv().expect("the client receives"), channel_frame(0x4001, &data, false));
    }
    // Published once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&t, r#"turn_relayed_packets_total{direction="to_peer",transport="udp"}"#) < f64::from(n) {
        assert!(Instant::now() < deadline, "the metrics never counted every relayed packet");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kernel = metric(&t, r#"turn_fast_path_packets_total{direction="to_peer"}"#);
    assert!(kernel >= f64::from(n) - 1.0, "relayed in the kernel: {kernel}");
    assert!(metric(&t, r#"turn_fast_path_packets_total{direction="to_client"}"#) >= f64::from(n) - 1.0);
    let counted = metric(&t, r#"turn_relayed_packets_total{direction="to_peer",transport="udp"}"#);
    assert_eq!(counted, f64::from(n), "every relayed packet counted, whichever path took it");
    assert_eq!(metric(&t, "turn_fast_path_entries"), 1.0);
    assert!(metric(&t, r#"turn_fast_path_passed_total{reason="no_entry"}"#) >= 1.0, "the requests went to the stack");

    // SIGKILL: the kernel detaches the program with the process's links.
    let pid = relay.0.id();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    drop(relay);
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_on(&t, "vrc") || xdp_on(&t, "vrp") {
        assert!(Instant::now() < deadline, "the program stayed attached after SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a new start attaches again (nothing pinned in the way), then
    // stops cleanly on SIGTERM and detaches.
    let mut relay = Killed(topology_relay(&t, LOGIN.realm, &["--fast-path", "xdp"]));
    wait_up(&t);
    assert!(xdp_on(&t, "vrc"));
    assert!(Command::new("kill").args(["-15", &relay.0.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = relay.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "turn-relay did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!xdp_on(&t, "vrc") && !xdp_on(&t, "vrp"), "detached on exit");

    // The TC mode: relays in the kernel too; after SIGKILL a new start
    // attaches again (TCX links go with the process).
    for round in 0..2 {
        let relay = Killed(topology_relay(&t, LOGIN.realm, &["--fast-path", "tc"]));
        wait_up(&t);
        assert_eq!(metric(&t, r#"turn_fast_path_info{path="tc"}"#), 1.0, "round {round}");
        let sock = Topology::udp(&t.clients, "10.201.1.2:0");
        let mut c = TurnClient::with_socket(sock, SERVER.parse().unwrap(), LOGIN);
        let relayed = c.allocate().unwrap();
        c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(pa)]);
        for i in 0..20 {
            let data = format!("tc datagram {i}").into_bytes();
            c.send_channel_data(0x4001, &data);
            assert_eq!(recv_datagram(&peer).expect("the peer receives"), (data.clone(), relayed));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&t, r#"turn_fast_path_packets_total{direction="to_peer"}"#) < 19.0 {
            assert!(Instant::now() < deadline, "round {round}: TC relayed nothing in the kernel");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(Command::new("kill").args(["-9", &relay.0.id().to_string()]).status().unwrap().success());
        drop(relay);
        // Nothing of it relays any more: a program left behind would still
        // hold the entry.
        std::thread::sleep(Duration::from_millis(200));
        c.send_channel_data(0x4001, b"after SIGKILL");
        peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        assert_eq!(recv_datagram(&peer), None, "round {round}: relayed after SIGKILL");
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    drop(hosts);
}
