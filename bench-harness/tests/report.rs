//! `--report`: the HTML report of a short in-process throughput run.

mod common;

use std::time::Duration;

use bench_harness::report::write_throughput_html;
use bench_harness::stats::{fmt_us, group};
use bench_harness::{ThroughputConfig, run_throughput};

/// The `points` attribute of each `<polyline` in `html`.
fn polylines(html: &str) -> Vec<Vec<(f64, f64)>> {
    html.split("<polyline")
        .skip(1)
        .map(|el| {
            let start = el.find("points=\"").expect("points attribute") + "points=\"".len();
            let end = start + el[start..].find('"').unwrap();
            el[start..end]
                .split(' ')
                .map(|p| {
                    let (x, y) = p.split_once(',').expect("x,y");
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

#[test]
fn throughput_report_has_both_plots_and_the_summary() {
    let relay = common::start_relay(4);
    let cfg = ThroughputConfig {
        allocations: 2,
        size: 100,
        rate: 1000,
        duration: Duration::from_millis(2500),
        drain: Duration::from_secs(2),
        ..ThroughputConfig::new(common::target(&relay))
    };
    let r = run_throughput(&cfg).unwrap();
    relay.stop().unwrap();
    assert!(r.timeline.len() >= 2, "{:?}", r.timeline);
    assert_eq!(r.percentiles.len(), 41);
    assert_eq!(r.percentiles[0].percentile, 0.0);
    assert!((r.percentiles[40].percentile - 99.99).abs() < 1e-9);
    assert!(r.percentiles.windows(2).all(|w| w[0].us <= w[1].us), "{:?}", r.percentiles);

    let dir = std::env::temp_dir().join(format!("turn-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.html");
    write_throughput_html(&path, &r).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    for external in ["<script", "src=", "href=", "url("] {
        assert!(!html.contains(external), "not self-contained: {external}");
    }
    let lines = polylines(&html);
    // Sent and received over time, then the percentile curve.
    assert_eq!(lines.len(), 3, "{html}");
    assert_eq!(lines[0].len(), r.timeline.len());
    assert_eq!(lines[1].len(), r.timeline.len());
    assert_eq!(lines[2].len(), r.percentiles.len());
    // Time runs left to right; higher percentiles are never drawn lower.
    assert!(lines[0].windows(2).all(|w| w[0].0 < w[1].0));
    assert!(lines[2].windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 >= w[1].1));
    for needle in [
        group(r.sent),
        group(r.received),
        group(r.sent_pps.round() as u64),
        format!("{:.2}", r.received_mbps),
        format!("{:.3} %", r.loss_pct),
        fmt_us(r.latency.p50_us),
        fmt_us(r.latency.p99_us),
        fmt_us(r.latency.max_us),
    ] {
        assert!(html.contains(&needle), "{needle} missing from the report");
    }
}
