//! `--report`: the HTML report of a short in-process throughput run, and
//! that of a comparison made by hand.

mod common;

use std::time::Duration;

use bench_harness::compare::{CompareReport, Metric, Run, TargetSummary};
use bench_harness::report::{compare_html, write_throughput_html};
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

/// A comparison's report made by hand: two targets, two rounds.
fn synthetic(scenario: &'static str, names: [&str; 2]) -> CompareReport {
    let metric = |key, unit, higher_is_better| Metric { key, unit, higher_is_better };
    let run = |round, target: &str, v: f64| Run {
        round,
        target: target.to_owned(),
        values: vec![v, f64::NAN],
        report: serde_json::json!({
            "latency_kind": "rtt",
            "timeline": [{"t_s": 1.0, "received_pps": v}, {"t_s": 2.0, "received_pps": v}, {"t_s": 3.0, "received_pps": v}],
            "percentiles": [{"percentile": 0.0, "us": 10.0}, {"percentile": 90.0, "us": 20.0}, {"percentile": 99.0, "us": v / 10.0}],
        }),
    };
    let summary = |name: &str, med: f64, ratio: f64| TargetSummary {
        name: name.to_owned(),
        target: format!("{name} at 127.0.0.1"),
        median: vec![med, f64::NAN],
        min: vec![med - 1.0, f64::NAN],
        max: vec![med + 1.0, f64::NAN],
        ratio: vec![ratio, f64::NAN],
    };
    CompareReport {
        scenario,
        rounds: 2,
        batching: None,
        metrics: vec![metric("received_pps", "packets/s", true), metric("loss_pct", "%", false)],
        targets: vec![summary(names[0], 1000.0, 1.0), summary(names[1], 500.0, 0.5)],
        runs: vec![run(0, names[0], 999.0), run(0, names[1], 499.0), run(1, names[0], 1001.0), run(1, names[1], 501.0)],
    }
}

#[test]
fn compare_report_overlays_runs_in_their_target_colour() {
    let r = synthetic("throughput", ["a", "b<i>"]);
    let html = compare_html(&r);
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    let lines = polylines(&html);
    // Four runs over time, then four percentile curves.
    assert_eq!(lines.len(), 8, "{html}");
    assert!(lines[..4].iter().all(|l| l.len() == 3) && lines[4..].iter().all(|l| l.len() == 3));
    let line_strokes: Vec<&str> =
        html.split("<polyline").skip(1).map(|el| &el[el.find("stroke=\"").unwrap() + 8..][..7]).collect();
    assert_eq!(line_strokes, ["#1f77b4", "#d62728", "#1f77b4", "#d62728", "#1f77b4", "#d62728", "#1f77b4", "#d62728"]);
    // Higher percentiles are never drawn lower.
    assert!(lines[4].windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 >= w[1].1));
    assert!(html.contains("b&lt;i&gt;") && !html.contains("b<i>"), "{html}");
    assert!(html.contains("1,000 [999.0 – 1,001]") && html.contains("×0.500"), "{html}");
    assert!(html.contains("<td>higher</td>") && html.contains("<td>lower</td>"), "{html}");
    // A figure no run has is a dash, not NaN.
    assert!(!html.contains("NaN"), "{html}");

    // Allocate (and churn): the first figure of each run against its round.
    let r = synthetic("allocate", ["a", "b"]);
    let html = compare_html(&r);
    assert_eq!(html.matches("<svg").count(), 1, "{html}");
    assert_eq!(html.matches("<circle").count(), 4, "{html}");
    assert_eq!(polylines(&html).len(), 2, "a line per target: {html}");
    assert!(html.contains("received_pps (packets/s) per run"), "{html}");
}
