//! A bounded soak of the `turn-relay` process: allocation churn (allocate,
//! then Refresh 0) from turn-bench's allocation storm, with ChannelData
//! traffic through other allocations at the same time, then SIGTERM while
//! traffic still flows. Checks, from outside the process: open file
//! descriptors and free relay ports return to their starting values once
//! churned allocations are gone, resident memory stays bounded, every shard
//! keeps answering, nothing is refused that should not be, and the drain
//! exits with status 0.
//!
//! `SOAK_SECONDS` sets the churn length (default 8, as CI runs it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench_harness::{AllocateConfig, Credentials, ThroughputConfig, TurnServer};

mod common;
use common::Killed;

fn metrics(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Waits until the relay's published metrics satisfy `ok`.
fn wait_metrics(addr: SocketAddr, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(b) = metrics(addr) {
            if ok(&b) {
                return b;
            }
            if Instant::now() > deadline {
                return b;
            }
        } else if Instant::now() > deadline {
            panic!("metrics unreachable");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn churn_and_traffic_then_drain() {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mport = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let maddr: SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    // Below the kernel's ephemeral range (32768+), so that few ports are
    // taken by other sockets of this machine.
    let lo = 12000 + (std::process::id() % 20) as u16 * 1000;
    let relay = Killed(
        Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(["--listen", &server.to_string(), "--no-tcp", "--relay-ip", "127.0.0.1"])
            .args(["--relay-ports", &format!("{lo}-{}", lo + 999), "--quarantine", "1"])
            .args(["--user", "soak:pass", "--realm", "soak", "--allow-peer", "127.0.0.0/8"])
            .args(["--metrics", &maddr.to_string(), "--shards", "2", "--no-pin", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = relay.0.id();
    let start = wait_metrics(maddr, Duration::from_secs(10), |b| metric(b, "turn_shards") == 2.0);
    let ports_free = metric(&start, "turn_relay_ports_free");
    assert!(ports_free >= 900.0, "{ports_free} relay ports free at start");
    let (fds0, rss0) = (open_fds(pid), rss_kib(pid));
    let turns = |b: &str, shard: u32| metric(b, &format!("turn_shard_loop_turns_total{{shard=\"{shard}\"}}"));
    let turns0 = [turns(&start, 0), turns(&start, 1)];

    let target = TurnServer::new(server, Credentials::long_term("soak", "pass"));
    // Traffic through 4 allocations for the whole soak...
    let traffic = {
        let cfg = ThroughputConfig {
            allocations: 4,
            size: 160,
            rate: 4000,
            duration: Duration::from_secs(seconds + 3),
            ..ThroughputConfig::new(target.clone())
        };
        std::thread::spawn(move || bench_harness::run_throughput(&cfg))
    };
    // ...while allocations churn: storms of allocate + Refresh 0.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut churned, mut storms) = (0u64, 0);
    while Instant::now() < deadline && storms < 1000 {
        let cfg = AllocateConfig {
            count: 100,
            concurrency: 16,
            release: true,
            duration: Duration::from_secs(10),
            ..AllocateConfig::new(target.clone())
        };
        let r = bench_harness::run_allocate(&cfg).expect("allocation storm");
        assert_eq!(
            r.allocate.failed + r.allocate.timed_out,
            0,
            "allocations refused during churn: {:?}",
            r.allocate.errors
        );
        let released = r.release.as_ref().map_or(0, |p| p.succeeded);
        assert_eq!(released, r.allocate.succeeded, "releases failed during churn");
        churned += r.allocate.succeeded;
        storms += 1;
        // Churn below what the pool sustains: released ports rest 1 s in
        // quarantine, so at most ~1,000 allocations per second fit.
        std::thread::sleep(Duration::from_millis(250));
        // Every shard still answers (its loop keeps turning).
        let b = metrics(maddr).expect("metrics during the soak");
        assert_eq!(metric(&b, "turn_shards"), 2.0, "a shard stopped answering");
    }
    assert!(churned >= 300, "only {churned} allocations churned");

    // SIGTERM while the traffic still runs: the running allocations go on.
    let before = wait_metrics(maddr, Duration::from_secs(3), |_| true);
    let to_peer = r#"turn_relayed_packets_total{direction="to_peer",transport="udp"}"#;
    let relayed_before = metric(&before, to_peer);
    // Resources back to where they started (4 allocations of traffic aside).
    let settled = wait_metrics(maddr, Duration::from_secs(5), |b| {
        metric(b, "turn_relay_ports_free") >= ports_free - 4.0 && metric(b, "turn_allocations_active") == 4.0
    });
    assert_eq!(metric(&settled, "turn_allocations_active"), 4.0);
    assert!(metric(&settled, "turn_relay_ports_free") >= ports_free - 4.0, "relay ports leaked");
    // Both shards' loops kept turning.
    for shard in 0..2 {
        assert!(turns(&settled, shard) > turns0[shard as usize], "shard {shard} stalled");
    }
    let fds = open_fds(pid);
    assert!(fds <= fds0 + 2, "descriptors grew from {fds0} to {fds}");
    let rss = rss_kib(pid);
    assert!(rss < rss0 + 32 * 1024, "resident memory grew from {rss0} KiB to {rss} KiB over {churned} allocations");

    let status = Command::new("kill").args(["-15", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(500));
    let during = metrics(maddr).expect("metrics while draining");
    assert!(metric(&during, to_peer) > relayed_before, "traffic stopped at SIGTERM");
    let report = traffic.join().unwrap().expect("traffic run");
    assert!(report.received > 0);
    assert!(report.loss_pct < 1.0, "loss {}% during churn and drain", report.loss_pct);
    // turn-bench released its allocations at the end: the drain completes.
    let mut relay = relay;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = relay.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "turn-relay did not exit after draining");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
