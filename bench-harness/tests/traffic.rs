//! The data-plane scenarios (throughput, latency, baseline), each run for
//! about a second with small counts against the in-process relay and the
//! harness's own forwarder, asserting real results: packets made the trip,
//! nothing is lost at a low rate, costs are measured, reports serialise.

mod common;

use std::time::Duration;

use bench_harness::peer::PeerMode;
use bench_harness::{
    Batching, BenchError, Credentials, Target, ThroughputConfig, TurnServer, run_baseline, run_latency, run_throughput,
};

fn small(server: bench_harness::TurnServer) -> ThroughputConfig {
    ThroughputConfig {
        allocations: 4,
        size: 100,
        rate: 2000,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(2),
        ..ThroughputConfig::new(server)
    }
}

#[test]
fn throughput_at_a_low_rate_loses_nothing() {
    let relay = common::start_relay(16);
    let cfg = ThroughputConfig { server_pid: Some(std::process::id()), ..small(common::target(&relay)) };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!((r.allocations_ok, r.released, r.release_failed), (4, 4, 0), "{r}");
    assert!(r.sent >= 1500 && r.sent <= 2100, "paced at 2000/s for 1 s: {}", r.sent);
    assert_eq!(r.received, r.sent, "{r}");
    assert_eq!((r.lost, r.loss_pct, r.foreign), (0, 0.0, 0));
    assert_eq!(r.peer.received, r.sent);
    assert_eq!(r.latency.count, r.received);
    assert!(r.latency.p50_us > 0.0 && r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
    assert!(r.received_pps > 1000.0 && r.received_mbps > 0.5, "{r}");
    // The server is this process: its cost is measured.
    let s = r.server.as_ref().expect("server cost");
    assert_eq!(s.relayed_packets, 2 * r.sent);
    assert!(s.cpu_us_per_packet.is_some() && s.memory_after.is_some_and(|m| m.rss_kib > 0));
    // The whole machine's CPU over the same window and packets: at least
    // this process's (the relay, the generator and the peer are in it).
    let m = r.machine_cpu.as_ref().expect("machine cost");
    assert_eq!(m.relayed_packets, s.relayed_packets);
    assert!(m.cores >= 1 && m.cpu_us_per_packet.is_some_and(|us| us > 0.0), "{m:?}");
    // turn-bench batches by default.
    assert_eq!((r.batching.mode, r.batching.forwarder_mode), (Batching::GsoGro, None));
    assert!(!r.generator.threads.is_empty());
    let table = r.to_string();
    for needle in ["packets/s", "Mbit/s", "loss", "RTT", "p99.9", "generator", "µs CPU per relayed packet", "machine"]
    {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json["scenario"], "throughput");
    assert_eq!(json["received"], r.received);
    assert_eq!(json["batching"]["mode"], "gso-gro");
    assert!(json["machine_cpu"]["cpu_us_per_packet"].as_f64().is_some(), "{json}");
    assert!(json["latency"]["p999_us"].as_f64().unwrap() > 0.0);
    relay.stop().unwrap();
}

#[test]
fn throughput_flat_out_in_a_closed_loop_and_over_two_threads() {
    let relay = common::start_relay(16);
    let cfg = ThroughputConfig { rate: 0, window: 16, threads: 2, ..small(common::target(&relay)) };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!(r.threads, 2);
    assert!(r.received > 1000, "{r}");
    assert!(r.generator.threads.iter().all(|t| t.wall_s > 0.5));
    relay.stop().unwrap();
}

#[test]
fn sink_mode_with_send_indications_measures_one_way() {
    let relay = common::start_relay(8);
    let cfg = ThroughputConfig { echo: false, indications: true, allocations: 2, ..small(common::target(&relay)) };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!((r.mode, r.framing, r.latency_kind), (PeerMode::Sink, "send-indication", "one-way"));
    assert!(r.sent > 1000);
    assert_eq!(r.received, r.sent, "{r}");
    assert_eq!(r.latency.count, r.sent);
    assert_eq!(r.peer.echoed, 0);
    relay.stop().unwrap();
}

#[test]
fn latency_at_a_fixed_rate() {
    let relay = common::start_relay(4);
    let cfg = ThroughputConfig {
        rate: 200,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(2),
        ..ThroughputConfig::latency(common::target(&relay))
    };
    let r = run_latency(&cfg).unwrap();
    assert_eq!(r.scenario, "latency");
    assert_eq!(r.allocations_ok, 1);
    assert!((150..=205).contains(&r.sent), "{}", r.sent);
    assert_eq!((r.received, r.lost), (r.sent, 0));
    assert_eq!(r.latency.count, r.sent);
    // 200 packets/s is nothing: time spun waiting for the next one is idle.
    assert!(!r.generator.saturated, "{r}");
    relay.stop().unwrap();
}

#[test]
fn baseline_forwards_the_same_traffic() {
    let relay = common::start_relay(4);
    let r = run_baseline(&small(common::target(&relay))).unwrap();
    relay.stop().unwrap();
    assert_eq!(r.scenario, "baseline");
    assert!(r.target.starts_with("baseline forwarder"));
    assert_eq!(r.allocations_ok, 4);
    assert!(r.sent > 1500);
    assert_eq!(r.received, r.sent, "{r}");
    let s = r.server.expect("forwarder cost");
    assert_eq!(s.relayed_packets, 2 * r.sent);
    assert!(s.source.contains("forwarder"));
}

#[test]
fn wrong_credentials_fail_clearly() {
    let relay = common::start_relay(4);
    let mut server = common::target(&relay);
    server.credentials = Credentials::long_term(common::USER, "wrong");
    match run_throughput(&small(server)) {
        Err(BenchError::Setup(msg)) => assert!(msg.contains("401"), "{msg}"),
        other => panic!("{other:?}"),
    }
    relay.stop().unwrap();
}

#[test]
fn bad_settings_are_refused() {
    let relay = common::start_relay(2);
    let t = common::target(&relay);
    for cfg in [
        ThroughputConfig { size: 10, ..small(t.clone()) },
        ThroughputConfig { allocations: 0, ..small(t.clone()) },
        ThroughputConfig { duration: Duration::ZERO, ..small(t.clone()) },
    ] {
        assert!(matches!(run_throughput(&cfg), Err(BenchError::Config(_))));
    }
    relay.stop().unwrap();
}

#[test]
fn long_runs_keep_their_permissions_channels_and_allocations() {
    // Lifetimes far shorter than the run: without refreshes the channel is
    // gone after 3 s, the permission after 2 s, the allocation after 4 s.
    let server = common::short_lifetimes();
    let relay = common::start_relay_config(8, 600, server);
    for indications in [false, true] {
        let cfg = ThroughputConfig {
            allocations: 2,
            rate: 200,
            duration: Duration::from_secs(6),
            indications,
            refresh_interval: Duration::from_millis(800),
            ..small(common::target(&relay))
        };
        let r = run_throughput(&cfg).unwrap();
        assert!(r.sent >= 1000, "{r}");
        assert_eq!((r.received, r.lost, r.foreign), (r.sent, 0, 0), "{r}");
        // Every allocation and binding refreshed several times, none failed.
        assert!(r.refreshes.ok >= 2 * 6, "{r}");
        assert_eq!((r.refreshes.failed, r.refreshes.ok), (0, r.refreshes.started), "{r}");
        // The allocations are still there at the end.
        assert_eq!((r.released, r.release_failed), (2, 0), "{r}");
    }
    relay.stop().unwrap();
}

#[test]
fn without_refreshes_a_long_run_loses_its_channels() {
    // The control for the test above: the short lifetimes do bite.
    let server = relay_core::server::ServerConfig {
        relay_quarantine: Duration::from_secs(1),
        permission_lifetime: Duration::from_secs(1),
        channel_lifetime: Duration::from_secs(1),
        ..relay_core::server::ServerConfig::default()
    };
    let relay = common::start_relay_config(4, 600, server);
    let cfg = ThroughputConfig {
        allocations: 1,
        rate: 200,
        duration: Duration::from_secs(3),
        refresh_interval: Duration::ZERO,
        drain: Duration::from_millis(300),
        ..small(common::target(&relay))
    };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!(r.refreshes.started, 0);
    assert!(r.lost > r.sent / 4, "{r}");
    relay.stop().unwrap();
}

#[test]
fn several_peers_share_the_allocations() {
    let relay = common::start_relay(16);
    let cfg = ThroughputConfig { allocations: 6, peers: 3, ..small(common::target(&relay)) };
    let r = run_throughput(&cfg).unwrap();
    assert_eq!((r.received, r.lost, r.foreign), (r.sent, 0, 0), "{r}");
    // Two allocations per peer, paced alike: each peer saw about a third.
    assert_eq!(r.peer.received_per_peer.len(), 3);
    assert_eq!(r.peer.received_per_peer.iter().sum::<u64>(), r.sent);
    assert!(r.peer.received_per_peer.iter().all(|&n| n * 4 >= r.sent && n * 2 <= r.sent), "{:?}", r.peer);
    let e = run_throughput(&ThroughputConfig { indications: true, ..cfg.clone() }).unwrap_err();
    assert!(e.to_string().contains("several peers"), "{e}");
    let e = run_throughput(&ThroughputConfig { peers: 0, ..cfg }).unwrap_err();
    assert!(e.to_string().contains("peers"), "{e}");
    relay.stop().unwrap();
}

/// A baseline run at 20,000 packets/s (bursts of about 20 per flow and
/// millisecond) in the given modes.
fn batched(generator: Batching, forwarder: Batching) -> ThroughputConfig {
    let nowhere = TurnServer::new("127.0.0.1:9".parse().unwrap(), Credentials::long_term("", ""));
    ThroughputConfig {
        target: Target::Baseline(forwarder),
        allocations: 2,
        rate: 20_000,
        batching: generator,
        ..small(nowhere)
    }
}

#[test]
fn the_gso_baseline_relays_every_packet_between_a_batching_generator_and_peer() {
    let r = run_baseline(&batched(Batching::GsoGro, Batching::GsoGro)).unwrap();
    assert!(r.target.starts_with("baseline forwarder (GSO/GRO)"), "{r}");
    assert!(r.sent >= 15_000, "{r}");
    // Every segment of every GRO buffer counted, in order, each timed.
    assert_eq!((r.received, r.lost, r.foreign, r.reordered), (r.sent, 0, 0, 0), "{r}");
    assert_eq!((r.peer.received, r.peer.echoed), (r.sent, r.sent), "{r}");
    assert_eq!(r.latency.count, r.received);
    let s = r.server.as_ref().expect("forwarder cost");
    assert_eq!(s.relayed_packets, 2 * r.sent, "{r}");
    let m = r.machine_cpu.as_ref().expect("machine cost");
    assert_eq!(m.relayed_packets, s.relayed_packets);
    // Batched everywhere: bursts left as GSO sends and arrived coalesced
    // at the forwarder, the peer and back at the client sockets.
    let b = &r.batching;
    assert_eq!((b.mode, b.forwarder_mode), (Batching::GsoGro, Some(Batching::GsoGro)));
    let fw = b.forwarder.expect("forwarder counters");
    for (who, c) in [("generator", b.generator), ("peer", b.peers), ("forwarder", fw)] {
        assert!(c.gso_sends > 0 && c.gro_buffers > 0 && c.gso_fallbacks == 0, "{who}: {c:?}");
    }
    let table = r.to_string();
    for needle in ["batching     turn-bench GSO/GRO", "GSO sends of", "forwarder    GSO/GRO", "machine      all"] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(
        (&json["batching"]["mode"], &json["batching"]["forwarder_mode"]),
        (&"gso-gro".into(), &"gso-gro".into())
    );
}

#[test]
fn per_packet_sends_and_receives_one_datagram_per_message() {
    let r = run_baseline(&batched(Batching::PerPacket, Batching::PerPacket)).unwrap();
    assert!(r.target.starts_with("baseline forwarder 127.0.0.1:"), "{r}");
    assert!(r.sent >= 15_000, "{r}");
    assert_eq!((r.received, r.lost, r.foreign), (r.sent, 0, 0), "{r}");
    let b = &r.batching;
    assert_eq!((b.mode, b.forwarder_mode), (Batching::PerPacket, Some(Batching::PerPacket)));
    let fw = b.forwarder.expect("forwarder counters");
    for (who, c) in [("generator", b.generator), ("peer", b.peers), ("forwarder", fw)] {
        assert_eq!((c.gso_sends, c.gro_buffers), (0, 0), "{who}: {c:?}");
    }
    // Every datagram left alone: the generator's, the peer's echoes and
    // the forwarder's both ways.
    assert_eq!(b.generator.single_datagrams, r.sent);
    assert_eq!(b.peers.single_datagrams, r.peer.echoed);
    assert_eq!(fw.single_datagrams, 2 * r.sent);
    assert!(r.to_string().contains("turn-bench per packet (no GSO, no GRO)"), "{r}");

    // A batching generator through the per-packet forwarder: the
    // forwarder's sockets get one datagram per receive (the kernel cuts
    // GSO sends for sockets without GRO) and nothing is lost or miscounted.
    let r = run_baseline(&batched(Batching::GsoGro, Batching::PerPacket)).unwrap();
    assert_eq!((r.received, r.lost, r.foreign), (r.sent, 0, 0), "{r}");
    let fw = r.batching.forwarder.expect("forwarder counters");
    assert_eq!((fw.gro_buffers, fw.gso_sends, fw.single_datagrams), (0, 0, 2 * r.sent), "{fw:?}");
    assert!(r.batching.generator.gso_sends > 0, "{r}");
}
