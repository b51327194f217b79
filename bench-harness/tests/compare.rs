//! `compare churn` and `compare --report` against in-process relays: the
//! churn figures and their ratios, the HTML report's plots, table and
//! escaping, and the binary writing the report.

mod common;

use std::time::Duration;

use bench_harness::compare::{CompareConfig, CompareScenario, NamedTarget};
use bench_harness::report::{compare_html, write_compare_html};
use bench_harness::{Batching, BenchError, ChurnConfig, Target, ThroughputConfig, run_compare};

/// The `points` attribute of each `<polyline` in `html`, with its stroke.
fn polylines(html: &str) -> Vec<(String, usize)> {
    html.split("<polyline")
        .skip(1)
        .map(|el| {
            let attr = |name: &str| {
                let start = el.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                el[start..start + el[start..].find('"').unwrap()].to_owned()
            };
            (attr("stroke"), attr("points").split(' ').filter(|p| !p.is_empty()).count())
        })
        .collect()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("turn-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn compare_churn_between_two_relays_gives_cycles_success_and_resources() {
    let (a, b) = (common::start_relay(64), common::start_relay(64));
    let pid = Some(std::process::id());
    let churn = ChurnConfig {
        duration: Duration::from_millis(400),
        rate: 40,
        concurrency: 4,
        round_trips: 2,
        ..ChurnConfig::new(common::target(&a))
    };
    let cfg = CompareConfig {
        targets: vec![
            NamedTarget { name: "a".into(), target: Target::Turn(common::target(&a)), server_pid: pid },
            NamedTarget { name: "b".into(), target: Target::Turn(common::target(&b)), server_pid: pid },
        ],
        rounds: 2,
        scenario: CompareScenario::Churn(churn.clone()),
        pause: Duration::from_millis(10),
    };
    let r = run_compare(&cfg).unwrap();
    assert_eq!(r.scenario, "churn");
    let keys: Vec<&str> = r.metrics.iter().map(|m| m.key).collect();
    assert_eq!(
        keys,
        ["cycles_per_s", "success_pct", "round_trip_success_pct", "server_fds_growth", "server_rss_growth_kib"]
    );
    let better: Vec<bool> = r.metrics.iter().map(|m| m.higher_is_better).collect();
    assert_eq!(better, [true, true, true, false, false]);
    let order: Vec<&str> = r.runs.iter().map(|x| x.target.as_str()).collect();
    assert_eq!(order, ["a", "b", "a", "b"]);
    for run in &r.runs {
        assert_eq!(run.report["scenario"], "churn");
        assert_eq!(run.values[0], run.report["churn_per_s"].as_f64().unwrap());
        assert!(run.values[0] > 10.0, "{r}");
        assert_eq!(run.values[1], 100.0, "{r}");
        assert_eq!(run.values[2], 100.0, "{r}");
        assert!(run.values[3].is_finite() && run.values[4].is_finite(), "pid given: {r}");
    }
    for t in &r.targets {
        assert!(t.min[0] <= t.median[0] && t.median[0] <= t.max[0], "{r}");
    }
    assert_eq!(r.targets[0].ratio[0], 1.0);
    assert_eq!(&r.targets[1].ratio[1..3], &[1.0, 1.0]);
    let cycles = r.targets[1].ratio[0];
    assert!((cycles - r.targets[1].median[0] / r.targets[0].median[0]).abs() < 1e-9 && cycles > 0.5, "{r}");
    let text = r.to_string();
    assert!(text.contains("turn-bench compare: churn") && text.contains("ratio b/a"), "{text}");
    assert_eq!(a.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    assert_eq!(b.stats(Duration::from_secs(2))[0].allocations, 0, "all released");

    // Its report: the table and one plot of cycles/s per run.
    let html = compare_html(&r);
    assert_eq!(html.matches("<svg").count(), 1, "{html}");
    assert_eq!(html.matches("<circle").count(), 4, "a dot per run: {html}");
    assert!(html.contains("cycles_per_s (1/s) per run") && html.contains("server_fds_growth"), "{html}");

    // A baseline cannot churn.
    let mut bad = cfg.clone();
    bad.targets[1] = NamedTarget { name: "k".into(), target: Target::Baseline(Batching::PerPacket), server_pid: None };
    bad.rounds = 1;
    bad.scenario = CompareScenario::Churn(ChurnConfig { duration: Duration::from_millis(100), ..churn });
    assert!(matches!(run_compare(&bad), Err(BenchError::Config(e)) if e.contains("churn")));
    a.stop().unwrap();
    b.stop().unwrap();
}

#[test]
fn compare_report_has_a_plot_each_the_table_and_escaped_names() {
    let relay = common::start_relay(8);
    let base = ThroughputConfig {
        allocations: 1,
        size: 100,
        rate: 500,
        duration: Duration::from_millis(1200),
        drain: Duration::from_secs(1),
        ..ThroughputConfig::new(common::target(&relay))
    };
    let odd = "<kernel> & \"co\"";
    let cfg = CompareConfig {
        targets: vec![
            NamedTarget { name: "relay".into(), target: Target::Turn(common::target(&relay)), server_pid: None },
            NamedTarget { name: odd.into(), target: Target::Baseline(Batching::PerPacket), server_pid: None },
        ],
        rounds: 1,
        scenario: CompareScenario::Throughput(base),
        pause: Duration::from_millis(10),
    };
    let r = run_compare(&cfg).unwrap();
    relay.stop().unwrap();
    let dir = temp_dir("compare-report");
    let path = dir.join("compare.html");
    write_compare_html(&path, &r).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for external in ["<script", "src=", "href=", "url("] {
        assert!(!html.contains(external), "not self-contained: {external}");
    }
    // Throughput over time and the percentile curves.
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    assert!(!html.contains("<kernel>") && !html.contains("\"co\""), "unescaped name: {html}");
    let escaped = "&lt;kernel&gt; &amp; &quot;co&quot;";
    assert!(html.contains(escaped), "{html}");
    assert!(html.contains(&format!("ratio {escaped}/relay")), "{html}");
    assert!(html.contains("relay median"), "{html}");
    for m in &r.metrics {
        assert!(html.contains(m.key), "{} missing", m.key);
    }
    assert!(html.contains(&format!("×{:.3}", r.targets[1].ratio[0])), "{html}");
    // One line per run in each plot, in its target's colour.
    let lines = polylines(&html);
    let timeline: Vec<usize> = r.runs.iter().map(|x| x.report["timeline"].as_array().unwrap().len()).collect();
    assert!(timeline.iter().all(|&n| n >= 1), "{timeline:?}");
    assert_eq!(lines.len(), 4, "{html}");
    assert_eq!(lines[0], ("#1f77b4".to_owned(), timeline[0]));
    assert_eq!(lines[1], ("#d62728".to_owned(), timeline[1]));
    assert_eq!(lines[2], ("#1f77b4".to_owned(), 41));
    assert_eq!(lines[3], ("#d62728".to_owned(), 41));
}

#[test]
fn cli_compare_churn_writes_the_report() {
    let relay = common::start_relay(32);
    let addr = common::addr(&relay).to_string();
    let spec = |name: &str| format!("{name}={addr},user={},password={}", common::USER, common::PASSWORD);
    let (one, two) = (spec("first"), spec("second<2>"));
    let dir = temp_dir("cli-compare");
    let path = dir.join("compare.html");
    let p = path.to_str().unwrap();
    #[rustfmt::skip]
    let common::Out { code, stdout, stderr } = common::turn_bench(&[
        "compare", "--json", "-q", "-t", &one, "-t", &two, "--rounds", "1", "--pause-ms", "10", "--rto-ms", "100",
        "--report", p, "churn", "-d", "0.5", "--rate", "20", "-c", "2", "--round-trips", "1",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(v["scenario"], "churn");
    assert_eq!(v["metrics"][0]["key"], "cycles_per_s");
    assert_eq!(v["targets"][1]["name"], "second<2>");
    let html = std::fs::read_to_string(&path).expect("report written");
    assert!(html.contains("<svg") && html.contains("<table") && html.contains("cycles_per_s"), "{html}");
    assert!(html.contains("first") && html.contains("second&lt;2&gt;"), "{html}");

    // An unwritable report is refused before any run.
    let common::Out { code, stdout, stderr } =
        common::turn_bench(&["compare", "-q", "-t", &one, "--report", "/nonexistent/dir/c.html", "churn", "-d", "0.2"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("/nonexistent/dir/c.html"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
    relay.stop().unwrap();
}
