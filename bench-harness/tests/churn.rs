//! The churn scenario against the in-process relay: allocations are made,
//! used and released continuously at the asked rate, every cycle and round
//! trip succeeds, nothing is left allocated, and the server's resources are
//! read at start and end.

mod common;

use std::time::Duration;

use bench_harness::{BenchError, ChurnConfig, Credentials, run_churn};

#[test]
fn churn_creates_uses_and_releases_allocations() {
    let relay = common::start_relay(128);
    let cfg = ChurnConfig {
        duration: Duration::from_secs(2),
        rate: 40,
        concurrency: 8,
        round_trips: 3,
        server_pid: Some(std::process::id()),
        ..ChurnConfig::new(common::target(&relay))
    };
    let r = run_churn(&cfg).unwrap();
    // Paced at 40/s for 2 s.
    assert!((60..=82).contains(&r.started), "{r}");
    assert_eq!(r.completed, r.started, "{r}");
    assert!(r.failures.is_empty(), "{r}");
    assert_eq!(r.success_pct, 100.0);
    assert_eq!((r.data_sent, r.data_received), (3 * r.started, 3 * r.started), "{r}");
    assert!(r.churn_per_s > 20.0, "{r}");
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    let s = r.server.as_ref().expect("server resources");
    let (a, b) = (s.start.expect("start"), s.end.expect("end"));
    assert!(a.rss_kib > 0 && a.fds > 0 && b.fds > 0);
    // Every client socket of the run is closed again.
    assert!(b.fds <= a.fds + 2, "{a:?} → {b:?}");
    let text = r.to_string();
    assert!(text.contains("churn/s") && text.contains("fds"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json["completed"], r.completed);
    relay.stop().unwrap();
}

#[test]
fn churn_failures_are_counted_by_step_and_error() {
    let relay = common::start_relay(16);
    let mut server = common::target(&relay);
    server.credentials = Credentials::long_term(common::USER, "wrong");
    let cfg = ChurnConfig { duration: Duration::from_millis(500), rate: 20, ..ChurnConfig::new(server) };
    let r = run_churn(&cfg).unwrap();
    assert!(r.started > 0 && r.completed == 0, "{r}");
    let n = r.failures.get("Allocate: 401 Unauthenticated").copied().unwrap_or(0);
    assert_eq!(n, r.started, "{r}");
    assert_eq!(r.data_sent, 0);
    assert!(matches!(run_churn(&ChurnConfig { concurrency: 0, ..cfg }), Err(BenchError::Config(_))));
    relay.stop().unwrap();
}
