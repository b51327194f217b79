//! The data-plane scenarios over TURN-over-TCP (RFC 8656 §3.1) against the
//! in-process relay: ChannelData (padded to 4 bytes on the stream) and Send
//! indications both ways, pacing, a closed loop flat out, refreshes sent on
//! the same connection during a long run, and releases at the end.

mod common;

use std::time::Duration;

use bench_harness::client::TransportKind;
use bench_harness::peer::PeerMode;
use bench_harness::{ThroughputConfig, TurnServer, run_latency, run_throughput};

fn over_tcp(relay: &relay_io::Relay) -> TurnServer {
    TurnServer { addr: common::tcp_addr(relay), transport: TransportKind::Tcp, ..common::target(relay) }
}

fn small(server: TurnServer) -> ThroughputConfig {
    ThroughputConfig {
        allocations: 3,
        size: 101,
        rate: 2000,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(2),
        ..ThroughputConfig::new(server)
    }
}

#[test]
fn tcp_throughput_at_a_low_rate_loses_nothing_whatever_the_padding() {
    let relay = common::start_relay_tcp(16);
    for (size, indications) in [(101, false), (24, false), (102, true), (1200, false)] {
        let cfg = ThroughputConfig { size, indications, ..small(over_tcp(&relay)) };
        let r = run_throughput(&cfg).unwrap();
        assert_eq!(r.transport, TransportKind::Tcp);
        assert_eq!((r.allocations_ok, r.released, r.release_failed), (3, 3, 0), "{r}");
        assert!(r.sent >= 1500 && r.sent <= 2100, "paced at 2000/s for 1 s: {r}");
        assert_eq!((r.received, r.lost, r.foreign, r.send_failed), (r.sent, 0, 0, 0), "{r}");
        // Every packet of a stream arrives in order.
        assert_eq!(r.reordered, 0, "{r}");
        assert_eq!(r.peer.received, r.sent);
        assert_eq!(r.latency.count, r.received);
        assert!(r.received_mbps > 0.0);
        assert!(r.to_string().contains("over tcp"), "{r}");
    }
    relay.stop().unwrap();
}

#[test]
fn tcp_flat_out_closed_loop_and_one_way_sink() {
    let relay = common::start_relay_tcp(16);
    let cfg = ThroughputConfig { rate: 0, window: 64, threads: 2, allocations: 4, ..small(over_tcp(&relay)) };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!(r.threads, 2);
    assert!(r.received > 2000, "{r}");
    assert_eq!((r.lost, r.foreign), (0, 0), "{r}");
    let cfg = ThroughputConfig { echo: false, ..small(over_tcp(&relay)) };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!((r.mode, r.latency_kind), (PeerMode::Sink, "one-way"));
    assert_eq!((r.received, r.peer.echoed), (r.sent, 0), "{r}");
    let r = run_latency(&ThroughputConfig {
        duration: Duration::from_secs(1),
        ..ThroughputConfig::latency(over_tcp(&relay))
    })
    .unwrap();
    assert!(r.received >= 80 && r.lost == 0 && r.latency.p50_us > 0.0, "{r}");
    relay.stop().unwrap();
}

#[test]
fn tcp_long_runs_refresh_on_the_same_connection() {
    let server = common::short_lifetimes();
    let relay = common::start_relay_tcp_config(8, server);
    let cfg = ThroughputConfig {
        allocations: 2,
        rate: 200,
        duration: Duration::from_secs(6),
        refresh_interval: Duration::from_millis(800),
        ..small(over_tcp(&relay))
    };
    let r = run_throughput(&cfg).unwrap();
    assert!(r.sent >= 1000, "{r}");
    assert_eq!((r.received, r.lost, r.foreign), (r.sent, 0, 0), "{r}");
    assert!(r.refreshes.ok >= 2 * 6, "{r}");
    assert_eq!((r.refreshes.failed, r.refreshes.ok), (0, r.refreshes.started), "{r}");
    assert_eq!((r.released, r.release_failed), (2, 0), "{r}");
    relay.stop().unwrap();
}

#[test]
fn tls_throughput_latency_and_release() {
    let (relay, ca) = common::start_relay_tls(16, common::quick_config());
    let server = TurnServer {
        addr: common::tls_addr(&relay),
        transport: TransportKind::Tls,
        tls: Some(bench_harness::client::TlsOptions::with_ca(&ca)),
        ..common::target(&relay)
    };
    for (size, indications) in [(101, false), (1200, false), (102, true)] {
        let cfg = ThroughputConfig { size, indications, ..small(server.clone()) };
        let r = run_throughput(&cfg).unwrap();
        assert_eq!(r.transport, TransportKind::Tls);
        assert_eq!((r.allocations_ok, r.released, r.release_failed), (3, 3, 0), "{r}");
        assert!(r.sent >= 1500 && r.sent <= 2100, "paced at 2000/s for 1 s: {r}");
        assert_eq!((r.received, r.lost, r.foreign, r.send_failed, r.reordered), (r.sent, 0, 0, 0, 0), "{r}");
    }
    let cfg = ThroughputConfig { rate: 0, window: 64, allocations: 2, ..small(server.clone()) };
    let r = run_throughput(&cfg).unwrap();
    assert!(r.received > 1000 && r.lost == 0, "{r}");
    let r = run_latency(&ThroughputConfig { duration: Duration::from_secs(1), ..ThroughputConfig::latency(server) })
        .unwrap();
    assert!(r.received >= 80 && r.lost == 0 && r.latency.p50_us > 0.0, "{r}");
    // Nothing trusted: a clear configuration error before any traffic.
    let untrusted = TurnServer { tls: None, ..common::target(&relay) };
    let untrusted = TurnServer { addr: common::tls_addr(&relay), transport: TransportKind::Tls, ..untrusted };
    let e = run_throughput(&small(untrusted)).unwrap_err().to_string();
    assert!(e.contains("tls-ca") || e.contains("insecure"), "{e}");
    relay.stop().unwrap();
    let _ = std::fs::remove_file(ca);
}
