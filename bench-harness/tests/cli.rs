//! The `turn-bench` binary itself against an in-process relay: JSON and
//! table output, live lines, exit codes. Every child is killed if it
//! outlives its bound.

mod common;

use common::turn_bench;

fn creds(addr: &str) -> Vec<String> {
    ["--server", addr, "-u", common::USER, "-w", common::PASSWORD, "--rto-ms", "100"].map(String::from).to_vec()
}

fn args<'a>(base: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    more.iter().copied().chain(base.iter().map(String::as_str)).collect()
}

#[test]
fn throughput_json_against_the_relay() {
    let relay = common::start_relay(8);
    let addr = common::addr(&relay).to_string();
    let c = creds(&addr);
    let o = turn_bench(&args(
        &c,
        &["throughput", "--json", "-q", "-n", "2", "--size", "64", "--rate", "500", "-d", "1", "--drain-ms", "2000"],
    ));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
    let sent = v["sent"].as_u64().unwrap();
    assert!(sent >= 400, "{v}");
    assert_eq!(v["received"].as_u64(), Some(sent));
    assert_eq!(v["loss_pct"].as_f64(), Some(0.0));
    assert_eq!(v["allocations_ok"].as_u64(), Some(2));
    assert!(o.stderr.is_empty(), "--quiet: {}", o.stderr);
    relay.stop().unwrap();
}

#[test]
fn html_reports_of_throughput_and_latency() {
    let relay = common::start_relay(4);
    let addr = common::addr(&relay).to_string();
    let c = creds(&addr);
    let dir = std::env::temp_dir().join(format!("turn-bench-cli-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for scenario in ["throughput", "latency"] {
        let path = dir.join(format!("{scenario}.html"));
        let p = path.to_str().unwrap();
        let o = turn_bench(&args(
            &c,
            &[scenario, "--json", "-q", "-n", "1", "--rate", "200", "-d", "1.5", "--report", p, "--drain-ms", "1000"],
        ));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
        let html = std::fs::read_to_string(&path).expect("report written");
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(html.contains(&format!("turn-bench {scenario}")));
        let timeline = v["timeline"].as_array().unwrap().len();
        let first = html.split("<polyline").nth(1).unwrap();
        let points = &first[first.find("points=\"").unwrap() + 8..];
        let points = &points[..points.find('"').unwrap()];
        assert_eq!(points.split(' ').filter(|s| !s.is_empty()).count(), timeline, "{html}");
        assert_eq!(v["percentiles"].as_array().unwrap().len(), 41);
    }
    let o = turn_bench(&args(&c, &["throughput", "-q", "-d", "0.2", "--report", "/nonexistent/dir/x.html"]));
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("/nonexistent/dir/x.html"), "{}", o.stderr);
    assert!(o.stdout.is_empty(), "refused before running: {}", o.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
    relay.stop().unwrap();
}

#[test]
fn latency_table_with_live_lines_and_server_cost() {
    let relay = common::start_relay(4);
    let addr = common::addr(&relay).to_string();
    let c = creds(&addr);
    let pid = std::process::id().to_string();
    let o = turn_bench(&args(&c, &["latency", "--rate", "200", "-d", "1.5", "--server-pid", &pid]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for needle in ["turn-bench latency", "RTT", "p99.9", "packets/s", "loss", "µs CPU per relayed packet"] {
        assert!(o.stdout.contains(needle), "{needle} missing from\n{}", o.stdout);
    }
    assert!(o.stderr.contains("[latency") && o.stderr.contains("pps"), "live line: {}", o.stderr);
    relay.stop().unwrap();
}

#[test]
fn allocate_and_baseline_and_compare() {
    let relay = common::start_relay(32);
    let addr = common::addr(&relay).to_string();
    let c = creds(&addr);
    let o = turn_bench(&args(&c, &["allocate", "--json", "-q", "-n", "20", "-c", "4", "--release"]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["allocate"]["succeeded"].as_u64(), Some(20), "{v}");
    assert_eq!(v["release"]["succeeded"].as_u64(), Some(20), "{v}");

    let o = turn_bench(&["baseline", "-q", "-n", "2", "--rate", "1000", "-d", "0.5", "--drain-ms", "2000"]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("baseline forwarder") && o.stdout.contains("0.000 %"), "{}", o.stdout);

    let relay_target = format!("relay={addr},user={},password={}", common::USER, common::PASSWORD);
    let o = turn_bench(&[
        "compare",
        "-q",
        "-t",
        &relay_target,
        "-t",
        "kernel=baseline",
        "--rounds",
        "1",
        "--pause-ms",
        "10",
        "throughput",
        "-n",
        "2",
        "--rate",
        "1000",
        "-d",
        "0.5",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("ratio kernel/relay") && o.stdout.contains('×'), "{}", o.stdout);
    relay.stop().unwrap();
}

#[test]
fn allocate_over_tcp() {
    let relay = common::start_relay_tcp(16);
    let addr = common::tcp_addr(&relay).to_string();
    let c = creds(&addr);
    let o =
        turn_bench(&args(&c, &["allocate", "--json", "-q", "-n", "10", "-c", "2", "--release", "--transport", "tcp"]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["transport"], "tcp", "{v}");
    assert_eq!(v["allocate"]["succeeded"].as_u64(), Some(10), "{v}");
    assert_eq!(v["release"]["succeeded"].as_u64(), Some(10), "{v}");
    let o = turn_bench(&args(&c, &["allocate", "-q", "-n", "1", "--transport", "sctp"]));
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("expected udp, tcp or tls"), "{}", o.stderr);
    relay.stop().unwrap();
}

#[test]
fn allocate_and_churn_over_tls_with_sha256() {
    let (relay, ca) = common::start_relay_tls(32, common::quick_config());
    let addr = common::tls_addr(&relay).to_string();
    let c = creds(&addr);
    let ca_file = ca;
    let ca = ca_file.to_str().unwrap();
    let tls = ["--transport", "tls", "--password-algorithm", "sha256"];
    for trust in [&["--tls-ca", ca, "--tls-name", "localhost"][..], &["--tls-insecure"][..]] {
        let mut a = vec!["allocate", "--json", "-q", "-n", "6", "-c", "2", "--release"];
        a.extend(tls);
        a.extend(trust);
        let o = turn_bench(&args(&c, &a));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["transport"], "tls", "{v}");
        assert_eq!(v["allocate"]["succeeded"].as_u64(), Some(6), "{v}");
        assert_eq!(v["release"]["succeeded"].as_u64(), Some(6), "{v}");
    }
    let mut a = vec!["churn", "--json", "-q", "-d", "0.5", "--rate", "20", "-c", "2", "--tls-insecure"];
    a.extend(tls);
    let o = turn_bench(&args(&c, &a));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["transport"], "tls");
    assert!(j["completed"].as_u64().unwrap() >= 5, "{}", o.stdout);
    assert_eq!(j["completed"], j["started"]);

    // Throughput over TLS with SHA-256 keys, from the command line.
    let mut a = vec!["throughput", "--json", "-q", "-d", "1", "-n", "2", "-r", "1000", "--tls-insecure"];
    a.extend(tls);
    let o = turn_bench(&args(&c, &a));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["transport"], "tls");
    assert!(j["received"].as_u64().unwrap() >= 500, "{}", o.stdout);
    assert_eq!(j["received"], j["sent"]);
    // TLS without anything to trust: refused.
    let o = turn_bench(&args(&c, &["allocate", "-q", "-n", "1", "--transport", "tls"]));
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("--tls-ca") && o.stderr.contains("--tls-insecure"), "{}", o.stderr);
    let o = turn_bench(&args(&c, &["allocate", "-q", "--password-algorithm", "sha1"]));
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("expected md5 or sha256"), "{}", o.stderr);
    let _ = std::fs::remove_file(&ca_file);
    relay.stop().unwrap();
}

#[test]
fn errors_and_usage() {
    let relay = common::start_relay(2);
    let addr = common::addr(&relay).to_string();
    let o = turn_bench(&["throughput", "-q", "--server", &addr, "-u", common::USER, "-w", "nope", "-d", "1"]);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("401"), "{}", o.stderr);
    relay.stop().unwrap();

    let o = turn_bench(&["throughput", "--rate", "fast"]);
    assert_eq!(o.code, Some(2), "usage errors exit 2");
    let o = turn_bench(&["--help"]);
    assert_eq!(o.code, Some(0));
    for cmd in ["throughput", "latency", "allocate", "baseline", "compare"] {
        assert!(o.stdout.contains(cmd), "{cmd} missing from --help");
    }
}

#[test]
fn churn_and_refresh_flags_from_the_command_line() {
    let relay = common::start_relay(64);
    let addr = common::addr(&relay).to_string();
    let base = creds(&addr);
    let pid = std::process::id().to_string();
    let o = turn_bench(&args(
        &base,
        &["churn", "--json", "-q", "-d", "1", "--rate", "20", "-c", "4", "--round-trips", "2", "--server-pid", &pid],
    ));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["scenario"], "churn");
    assert!(j["completed"].as_u64().unwrap() >= 10, "{}", o.stdout);
    assert_eq!(j["completed"], j["started"]);
    assert_eq!(j["data_received"], j["data_sent"]);
    assert!(j["server"]["end"]["fds"].as_u64().unwrap() > 0);
    let o = turn_bench(&args(
        &base,
        &["throughput", "--json", "-q", "-d", "1", "-n", "1", "--rate", "100", "--refresh-s", "0.3"],
    ));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let j: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(j["refreshes"]["ok"].as_u64().unwrap() >= 2, "{}", o.stdout);
    assert_eq!(j["refreshes"]["failed"], 0);
    relay.stop().unwrap();
}

#[test]
fn batching_flags_and_both_baselines_in_compare() {
    // turn-bench per packet, the forwarder with GSO/GRO.
    #[rustfmt::skip]
    let o = turn_bench(&[
        "baseline", "--json", "-q", "-n", "2", "--rate", "5000", "-d", "0.5", "--drain-ms", "1000",
        "--per-packet", "--forwarder-gso",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
    assert_eq!((&v["batching"]["mode"], &v["batching"]["forwarder_mode"]), (&"per-packet".into(), &"gso-gro".into()));
    assert_eq!(v["received"], v["sent"], "{v}");
    assert_eq!(v["batching"]["generator"]["gso_sends"], 0, "{v}");
    assert!(v["machine_cpu"]["cpu_us_per_packet"].as_f64().is_some_and(|us| us > 0.0), "{v}");

    // Both forwarders side by side; turn-bench batching (the default).
    #[rustfmt::skip]
    let o = turn_bench(&[
        "compare", "--json", "-q", "-t", "pp=baseline", "-t", "gso=baseline-gso", "--rounds", "1",
        "--pause-ms", "10", "throughput", "-n", "2", "--rate", "5000", "-d", "0.5", "--drain-ms", "1000",
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["batching"], "gso-gro");
    let keys: Vec<&str> = v["metrics"].as_array().unwrap().iter().map(|m| m["key"].as_str().unwrap()).collect();
    assert_eq!(&keys[4..], ["server_cpu_us_per_packet", "machine_cpu_us_per_packet"]);
    assert!(v["targets"][1]["target"].as_str().unwrap().contains("GSO/GRO"), "{v}");
    for (run, mode) in v["runs"].as_array().unwrap().iter().zip(["per-packet", "gso-gro"]) {
        assert_eq!(run["report"]["batching"]["mode"], "gso-gro");
        assert_eq!(run["report"]["batching"]["forwarder_mode"], mode);
        assert_eq!(run["report"]["received"], run["report"]["sent"], "{run}");
        // Server (forwarder) and machine CPU per packet, both measured.
        assert!(run["values"][4].as_f64().is_some() && run["values"][5].as_f64().is_some(), "{run}");
    }

    // Latency per packet against the in-process relay: the table says so.
    let relay = common::start_relay(4);
    let addr = common::addr(&relay).to_string();
    let c = creds(&addr);
    let o = turn_bench(&args(&c, &["latency", "-q", "--rate", "200", "-d", "0.5", "--per-packet"]));
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("turn-bench per packet") && o.stdout.contains("machine"), "{}", o.stdout);
    relay.stop().unwrap();
    let o = turn_bench(&["compare", "-q", "-t", "x=baseline-fast", "throughput", "-d", "0.2"]);
    assert_eq!(o.code, Some(1), "{}", o.stderr);
}
