//! The allocation storm and the comparison, each run with small counts
//! against the in-process relay: allocations succeed and are released,
//! quotas and wrong passwords show up as failures by reason, and compare
//! alternates its targets and prints ratios.

mod common;

use std::time::Duration;

use bench_harness::allocate::AllocateConfig;
use bench_harness::client::TransportKind;
use bench_harness::compare::{CompareConfig, CompareScenario, NamedTarget};
use bench_harness::{Batching, BenchError, Credentials, Target, ThroughputConfig, run_allocate, run_compare};

#[test]
fn allocation_storm_with_release() {
    let relay = common::start_relay(64);
    let cfg = AllocateConfig {
        count: 50,
        concurrency: 8,
        release: true,
        duration: Duration::from_secs(5),
        server_pid: Some(std::process::id()),
        ..AllocateConfig::new(common::target(&relay))
    };
    let r = run_allocate(&cfg).unwrap();
    assert_eq!((r.allocate.attempted, r.allocate.succeeded), (50, 50), "{r}");
    assert_eq!(r.allocate.success_pct, 100.0);
    assert_eq!(r.allocate.latency.count, 50);
    assert!(r.allocate.per_s > 0.0);
    let rel = r.release.as_ref().unwrap();
    assert_eq!(rel.succeeded, 50, "{r}");
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    assert!(r.server.as_ref().is_some_and(|s| s.cpu_us_per_allocation.is_some()));
    let text = r.to_string();
    assert!(text.contains("50 of 50 succeeded") && text.contains("release"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json["allocate"]["succeeded"], 50);
    relay.stop().unwrap();
}

#[test]
fn allocation_storm_paced_and_without_release_then_a_quota_of_ports() {
    // 10 relay ports: the 11th allocation and later get 508.
    let relay = common::start_relay(10);
    let cfg = AllocateConfig {
        count: 14,
        concurrency: 4,
        rate: 100,
        release: false,
        ..AllocateConfig::new(common::target(&relay))
    };
    let r = run_allocate(&cfg).unwrap();
    assert_eq!(r.allocate.succeeded, 10, "{r}");
    assert_eq!(r.allocate.failed, 4);
    assert!(r.allocate.errors.keys().any(|k| k.starts_with("508")), "{:?}", r.allocate.errors);
    // Paced at 100/s: 14 take at least 130 ms.
    assert!(r.allocate.wall_s >= 0.13, "{}", r.allocate.wall_s);
    assert!(r.release.is_none());
    relay.stop().unwrap();
}

#[test]
fn a_storm_with_a_wrong_password_fails_every_allocation_with_401() {
    let relay = common::start_relay(4);
    let mut server = common::target(&relay);
    server.credentials = Credentials::long_term(common::USER, "wrong");
    let r = run_allocate(&AllocateConfig { count: 5, concurrency: 2, ..AllocateConfig::new(server) }).unwrap();
    assert_eq!((r.allocate.succeeded, r.allocate.failed), (0, 5));
    assert!(r.allocate.errors.keys().all(|k| k.starts_with("401")), "{:?}", r.allocate.errors);
    relay.stop().unwrap();
}

#[test]
fn compare_alternates_targets_and_prints_ratios() {
    let relay = common::start_relay(16);
    let base = ThroughputConfig {
        allocations: 2,
        size: 100,
        rate: 1000,
        duration: Duration::from_millis(500),
        drain: Duration::from_secs(2),
        ..ThroughputConfig::new(common::target(&relay))
    };
    let cfg = CompareConfig {
        targets: vec![
            NamedTarget { name: "relay".into(), target: Target::Turn(common::target(&relay)), server_pid: None },
            NamedTarget { name: "kernel".into(), target: Target::Baseline(Batching::PerPacket), server_pid: None },
        ],
        rounds: 2,
        scenario: CompareScenario::Throughput(base),
        pause: Duration::from_millis(10),
    };
    let r = run_compare(&cfg).unwrap();
    let order: Vec<&str> = r.runs.iter().map(|x| x.target.as_str()).collect();
    assert_eq!(order, ["relay", "kernel", "relay", "kernel"]);
    assert_eq!(r.targets[0].ratio[0], 1.0);
    assert!(r.targets.iter().all(|t| t.median[0] > 500.0), "received pps: {r}");
    assert!(r.targets[1].ratio[0].is_finite());
    let text = r.to_string();
    assert!(text.contains("ratio kernel/relay") && text.contains('×'), "{text}");
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 4);

    let storm = CompareConfig {
        targets: vec![NamedTarget {
            name: "k".into(),
            target: Target::Baseline(Batching::PerPacket),
            server_pid: None,
        }],
        rounds: 1,
        scenario: CompareScenario::Allocate(AllocateConfig::new(common::target(&relay))),
        pause: Duration::ZERO,
    };
    assert!(matches!(run_compare(&storm), Err(BenchError::Config(_))));
    relay.stop().unwrap();
}

#[test]
fn allocation_storm_over_tcp_with_release() {
    let relay = common::start_relay_tcp(32);
    let mut server = common::target(&relay);
    server.addr = common::tcp_addr(&relay);
    let cfg = AllocateConfig {
        count: 20,
        concurrency: 4,
        release: true,
        duration: Duration::from_secs(5),
        transport: TransportKind::Tcp,
        ..AllocateConfig::new(server)
    };
    let r = run_allocate(&cfg).unwrap();
    assert_eq!((r.allocate.attempted, r.allocate.succeeded), (20, 20), "{r}");
    assert_eq!(r.allocate.retransmissions, 0);
    assert_eq!(r.release.as_ref().unwrap().succeeded, 20, "{r}");
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    assert!(r.to_string().contains("over tcp"), "{r}");
    relay.stop().unwrap();
}

#[test]
fn a_tcp_storm_against_a_closed_port_fails_fast() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let server = bench_harness::TurnServer::new(addr, Credentials::long_term("u", "p"));
    let cfg = AllocateConfig { count: 3, transport: TransportKind::Tcp, ..AllocateConfig::new(server) };
    let r = run_allocate(&cfg).unwrap();
    assert_eq!(r.allocate.succeeded, 0);
    assert!(r.allocate.errors.keys().any(|k| k.starts_with("TCP connect")), "{:?}", r.allocate.errors);
}
