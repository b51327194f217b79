//! `--report out.html`: one self-contained HTML file (no scripts, no
//! external assets) with hand-written inline SVG plots of a throughput or
//! latency run — packets/s over time and the latency percentile curve — and
//! its summary table; or of a comparison ([`compare_html`]): the table of
//! medians, ranges and ratios, and each target's runs overlaid in its own
//! colour.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::compare::{CompareReport, num};
use crate::stats::{fmt_us, group};
use crate::throughput::ThroughputReport;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;
const SENT_COLOUR: &str = "#1f77b4";
const RECEIVED_COLOUR: &str = "#d62728";
/// One colour per target of a comparison, in order (cycled beyond ten).
const PALETTE: [&str; 10] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// Escapes `s` for HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes [`throughput_html`] of `r` to `path`.
pub fn write_throughput_html(path: &Path, r: &ThroughputReport) -> std::io::Result<()> {
    std::fs::write(path, throughput_html(r))
}

/// The HTML report of a throughput, latency or baseline run.
pub fn throughput_html(r: &ThroughputReport) -> String {
    let title = format!("turn-bench {}: {}", r.scenario, r.target);
    let mut h = String::new();
    head(&mut h, &title);
    summary_table(&mut h, r);
    h.push_str("<h2>Throughput over time</h2>\n");
    throughput_svg(&mut h, r);
    let kind = if r.latency_kind == "rtt" { "RTT" } else { "One-way latency" };
    let _ = writeln!(h, "<h2>{} percentiles</h2>", escape(kind));
    latency_svg(&mut h, r, kind);
    h.push_str("</body>\n</html>\n");
    h
}

/// The document's start, up to and including its `<h1>`.
fn head(h: &mut String, title: &str) {
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; color: #222; }}\n\
         table {{ border-collapse: collapse; }}\n\
         td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}\n\
         th {{ text-align: left; }}\n\
         svg text {{ font-size: 12px; font-family: sans-serif; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
}

fn row(h: &mut String, name: &str, cells: &[String]) {
    let _ = write!(h, "<tr><th>{}</th>", escape(name));
    for c in cells {
        let _ = write!(h, "<td>{}</td>", escape(c));
    }
    h.push_str("</tr>\n");
}

fn summary_table(h: &mut String, r: &ThroughputReport) {
    let rate = if r.rate == 0 { "as fast as possible".to_owned() } else { format!("{} pps", group(r.rate)) };
    let _ = writeln!(
        h,
        "<p>{} B payloads, {}, {} over {}, {} of {} allocations, {} thread(s), {:.2} s</p>",
        r.size,
        escape(&rate),
        escape(r.framing),
        escape(r.transport.name()),
        r.allocations_ok,
        r.allocations,
        r.threads,
        r.duration_s
    );
    h.push_str("<table>\n<tr><th></th><th>sent</th><th>received</th></tr>\n");
    row(h, "packets", &[group(r.sent), group(r.received)]);
    row(h, "packets/s", &[group(r.sent_pps.round() as u64), group(r.received_pps.round() as u64)]);
    row(h, "Mbit/s", &[format!("{:.2}", r.sent_mbps), format!("{:.2}", r.received_mbps)]);
    h.push_str("</table>\n<table>\n");
    row(h, "loss", &[format!("{:.3} %", r.loss_pct)]);
    row(h, "lost", &[group(r.lost)]);
    row(h, "refused by the local kernel", &[group(r.send_failed)]);
    row(h, "reordered", &[group(r.reordered)]);
    let l = &r.latency;
    let kind = if r.latency_kind == "rtt" { "RTT" } else { "one-way" };
    for (name, v) in [
        ("min", l.min_us),
        ("mean", l.mean_us),
        ("p50", l.p50_us),
        ("p90", l.p90_us),
        ("p99", l.p99_us),
        ("p99.9", l.p999_us),
        ("max", l.max_us),
    ] {
        row(h, &format!("{kind} {name}"), &[fmt_us(v)]);
    }
    row(h, &format!("{kind} samples"), &[group(l.count)]);
    let g = &r.generator;
    row(
        h,
        "generator busiest thread",
        &[format!(
            "busiest thread {:.0} % of a core, all with the peer {:.0} % of {} core(s){}",
            g.max_percent,
            g.cores_percent,
            g.cores,
            if g.saturated { " (SATURATED)" } else { "" }
        )],
    );
    if let Some(s) = &r.server {
        row(h, "server", &[s.to_string()]);
    }
    if let Some(m) = &r.machine_cpu {
        row(h, "machine", &[m.to_string()]);
    }
    let b = &r.batching;
    row(h, "turn-bench batching", &[b.mode.to_string()]);
    if b.mode.is_on() {
        row(h, "generator sockets", &[b.generator.to_string()]);
        row(h, "peer sockets", &[b.peers.to_string()]);
    }
    if let (Some(mode), Some(c)) = (b.forwarder_mode, &b.forwarder) {
        let text = if mode.is_on() { format!("{mode}: {c}") } else { mode.to_string() };
        row(h, "forwarder batching", &[text]);
    }
    h.push_str("</table>\n");
}

/// A plot's frame: data ranges mapped onto the SVG's drawing area.
struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn new(x_max: f64, y_max: f64) -> Frame {
        Frame { x_max: if x_max > 0.0 { x_max } else { 1.0 }, y_max: if y_max > 0.0 { y_max } else { 1.0 } }
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (v / self.x_max).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - (v / self.y_max).clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM)
    }
}

fn svg_open(h: &mut String, label: &str) {
    let _ = writeln!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        escape(label)
    );
    let _ = writeln!(
        h,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        WIDTH - LEFT - RIGHT,
        HEIGHT - TOP - BOTTOM
    );
}

fn x_tick(h: &mut String, f: &Frame, v: f64, label: &str) {
    let x = f.x(v);
    let _ = writeln!(
        h,
        "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\
         <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        TOP,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM + 16.0,
        escape(label)
    );
}

fn y_tick(h: &mut String, f: &Frame, v: f64, label: &str) {
    let y = f.y(v);
    let _ = writeln!(
        h,
        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        WIDTH - RIGHT,
        LEFT - 6.0,
        y + 4.0,
        escape(label)
    );
}

/// Horizontal grid lines every `step` from 0 to the top.
fn y_ticks(h: &mut String, f: &Frame, step: f64, label: impl Fn(f64) -> String) {
    let mut v = 0.0;
    while v <= f.y_max + step / 2.0 {
        y_tick(h, f, v, &label(v));
        v += step;
    }
}

/// Seconds along the x axis, about eight ticks.
fn time_ticks(h: &mut String, f: &Frame) {
    let xs = nice_step(f.x_max, 8.0);
    let mut v = 0.0;
    while v <= f.x_max + xs / 1e6 {
        x_tick(h, f, v, &format!("{v}"));
        v += xs;
    }
}

/// Percentiles along the x axis, on the scale of [`nines`].
fn percentile_ticks(h: &mut String, f: &Frame) {
    for (p, label) in [(0.0, "0"), (90.0, "90"), (99.0, "99"), (99.9, "99.9"), (99.99, "99.99")] {
        x_tick(h, f, nines(p), label);
    }
}

/// Room above the highest point of a comparison's plot, for the legend.
const HEADROOM: f64 = 1.2;

/// A tick's label: whole numbers grouped, else as many decimals as `step`
/// needs.
fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 { group(v.round() as u64) } else { format!("{v:.*}", (-step.log10()).ceil() as usize) }
}

/// A y range from 0 to a round value above `y_top`, and its tick step.
fn y_range(y_top: f64) -> (f64, f64) {
    let step = nice_step(y_top.max(1.0), 5.0);
    ((y_top / step).ceil().max(1.0) * step, step)
}

fn axis_labels(h: &mut String, x: &str, y: &str) {
    let _ = writeln!(
        h,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1})\">{}</text>",
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 8.0,
        escape(x),
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        escape(y)
    );
}

fn polyline(h: &mut String, f: &Frame, points: impl Iterator<Item = (f64, f64)>, colour: &str, name: &str) {
    let mut pts = String::new();
    for (x, y) in points {
        if !pts.is_empty() {
            pts.push(' ');
        }
        let _ = write!(pts, "{:.1},{:.1}", f.x(x), f.y(y));
    }
    let _ = writeln!(
        h,
        "<polyline class=\"{}\" points=\"{pts}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
        escape(name)
    );
}

fn legend(h: &mut String, entries: &[(&str, &str)]) {
    let mut x = LEFT + 10.0;
    for (name, colour) in entries {
        let _ = writeln!(
            h,
            "<rect x=\"{x:.1}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            TOP + 10.0,
            x + 16.0,
            TOP + 15.0,
            escape(name)
        );
        x += (30.0 + 7.0 * name.chars().count() as f64).max(110.0);
    }
}

/// A round step giving about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    mag * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn throughput_svg(h: &mut String, r: &ThroughputReport) {
    let t = &r.timeline;
    let x_max = t.iter().map(|s| s.t_s).fold(r.duration_s, f64::max);
    let y_top = t.iter().map(|s| s.sent_pps.max(s.received_pps)).fold(0.0, f64::max);
    let (y_max, step) = y_range(y_top);
    let f = Frame::new(x_max, y_max);
    svg_open(h, "packets per second over time");
    y_ticks(h, &f, step, |v| group(v.round() as u64));
    time_ticks(h, &f);
    axis_labels(h, "time, s", "packets/s");
    polyline(h, &f, t.iter().map(|s| (s.t_s, s.sent_pps)), SENT_COLOUR, "sent");
    polyline(h, &f, t.iter().map(|s| (s.t_s, s.received_pps)), RECEIVED_COLOUR, "received");
    legend(h, &[("sent", SENT_COLOUR), ("received", RECEIVED_COLOUR)]);
    if t.is_empty() {
        let _ = writeln!(h, "<text x=\"{}\" y=\"{}\">no samples</text>", LEFT + 20.0, TOP + 40.0);
    }
    h.push_str("</svg>\n");
}

/// Writes [`compare_html`] of `r` to `path`.
pub fn write_compare_html(path: &Path, r: &CompareReport) -> std::io::Result<()> {
    std::fs::write(path, compare_html(r))
}

/// The colour of the `k`th target.
fn colour(k: usize) -> &'static str {
    PALETTE[k % PALETTE.len()]
}

/// The HTML report of a comparison: the table of each figure's median,
/// range and ratio to the first target, then plots with each target's runs
/// in its own colour — received packets/s over time and the latency
/// percentile curves for throughput and latency comparisons, the first
/// figure (allocations/s, cycles/s) of each run otherwise.
pub fn compare_html(r: &CompareReport) -> String {
    let names: Vec<&str> = r.targets.iter().map(|t| t.name.as_str()).collect();
    let title = format!("turn-bench compare: {} of {}", r.scenario, names.join(", "));
    let mut h = String::new();
    head(&mut h, &title);
    let _ = writeln!(
        h,
        "<p>{} round(s), targets run in alternation; ratios are each median over the first target's \
         (<i>{}</i>).</p>",
        r.rounds,
        escape(names.first().copied().unwrap_or_default())
    );
    compare_targets(&mut h, r);
    compare_table(&mut h, r);
    let legend: Vec<(&str, &str)> = names.iter().enumerate().map(|(k, n)| (*n, colour(k))).collect();
    if r.scenario == "throughput" || r.scenario == "latency" {
        h.push_str("<h2>Received packets/s over time, every run</h2>\n");
        compare_timeline_svg(&mut h, r, &legend);
        let rtt = r.runs.iter().any(|run| run.report["latency_kind"] == "rtt");
        let kind = if rtt { "RTT" } else { "One-way latency" };
        let _ = writeln!(h, "<h2>{} percentiles, every run</h2>", escape(kind));
        compare_percentiles_svg(&mut h, r, &legend, kind);
    } else if let Some(m) = r.metrics.first() {
        let label = format!("{} ({})", m.key, m.unit);
        let _ = writeln!(h, "<h2>{} per run</h2>", escape(&label));
        per_run_svg(&mut h, r, 0, &legend);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn compare_targets(h: &mut String, r: &CompareReport) {
    h.push_str("<table>\n<tr><th>target</th><th>what</th><th>runs</th></tr>\n");
    for (k, t) in r.targets.iter().enumerate() {
        let runs = r.runs.iter().filter(|x| x.target == t.name).count();
        let _ = writeln!(
            h,
            "<tr><th><span style=\"color: {}\">&#9632;</span> {}</th><td>{}</td><td>{runs}</td></tr>",
            colour(k),
            escape(&t.name),
            escape(&t.target)
        );
    }
    h.push_str("</table>\n");
}

fn compare_table(h: &mut String, r: &CompareReport) {
    let Some(reference) = r.targets.first() else { return };
    h.push_str("<h2>Figures</h2>\n<table class=\"compare\">\n<tr><th>figure</th><th>better</th>");
    for t in &r.targets {
        let _ = write!(h, "<th>{} median [min – max]</th>", escape(&t.name));
    }
    for t in r.targets.iter().skip(1) {
        let _ = write!(h, "<th>ratio {}/{}</th>", escape(&t.name), escape(&reference.name));
    }
    h.push_str("</tr>\n");
    for (k, m) in r.metrics.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td>",
            escape(&format!("{} ({})", m.key, m.unit)),
            if m.higher_is_better { "higher" } else { "lower" }
        );
        for t in &r.targets {
            let cell = if r.rounds > 1 && t.median[k].is_finite() {
                format!("{} [{} – {}]", num(t.median[k]), num(t.min[k]), num(t.max[k]))
            } else {
                num(t.median[k])
            };
            let _ = write!(h, "<td>{}</td>", escape(&cell));
        }
        for t in r.targets.iter().skip(1) {
            let x = t.ratio[k];
            let cell = if x.is_finite() { format!("×{x:.3}") } else { "-".into() };
            let _ = write!(h, "<td>{}</td>", escape(&cell));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

/// Pairs `(x, y)` of the objects in array `report[key]`, skipping entries
/// without both.
fn points(report: &Value, key: &str, x: &str, y: &str) -> Vec<(f64, f64)> {
    report[key]
        .as_array()
        .map(|a| a.iter().filter_map(|p| Some((p[x].as_f64()?, p[y].as_f64()?))).collect())
        .unwrap_or_default()
}

/// Each run's series, with the index of its target.
fn series(r: &CompareReport, key: &str, x: &str, y: &str) -> Vec<(usize, Vec<(f64, f64)>)> {
    r.runs
        .iter()
        .filter_map(|run| {
            let k = r.targets.iter().position(|t| t.name == run.target)?;
            Some((k, points(&run.report, key, x, y)))
        })
        .collect()
}

fn no_samples(h: &mut String) {
    let _ = writeln!(h, "<text x=\"{}\" y=\"{}\">no samples</text>", LEFT + 20.0, TOP + 40.0);
}

fn compare_timeline_svg(h: &mut String, r: &CompareReport, entries: &[(&str, &str)]) {
    let runs = series(r, "timeline", "t_s", "received_pps");
    let durations = r.runs.iter().filter_map(|run| run.report["duration_s"].as_f64());
    let x_max = runs.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).chain(durations).fold(0.0, f64::max);
    let y_top = runs.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(0.0, f64::max);
    let (y_max, step) = y_range(y_top * HEADROOM);
    let f = Frame::new(x_max, y_max);
    svg_open(h, "received packets per second over time, every run");
    y_ticks(h, &f, step, |v| tick_label(v, step));
    time_ticks(h, &f);
    axis_labels(h, "time, s", "received packets/s");
    for (k, s) in runs.iter().filter(|(_, s)| !s.is_empty()) {
        polyline(h, &f, s.iter().copied(), colour(*k), &r.targets[*k].name);
    }
    legend(h, entries);
    if runs.iter().all(|(_, s)| s.is_empty()) {
        no_samples(h);
    }
    h.push_str("</svg>\n");
}

fn compare_percentiles_svg(h: &mut String, r: &CompareReport, entries: &[(&str, &str)], kind: &str) {
    let runs = series(r, "percentiles", "percentile", "us");
    let y_top = runs.iter().flat_map(|(_, s)| s.iter().map(|p| p.1)).fold(0.0, f64::max);
    let (y_max, step) = y_range(y_top * HEADROOM);
    let f = Frame::new(4.0, y_max);
    svg_open(h, &format!("{kind} by percentile, every run"));
    y_ticks(h, &f, step, fmt_us);
    percentile_ticks(h, &f);
    axis_labels(h, "percentile", kind);
    for (k, s) in runs.iter().filter(|(_, s)| !s.is_empty()) {
        polyline(h, &f, s.iter().map(|&(p, us)| (nines(p), us)), colour(*k), &r.targets[*k].name);
    }
    legend(h, entries);
    if runs.iter().all(|(_, s)| s.is_empty()) {
        no_samples(h);
    }
    h.push_str("</svg>\n");
}

/// Figure `m` of every run against its round, a line and dots per target.
fn per_run_svg(h: &mut String, r: &CompareReport, m: usize, entries: &[(&str, &str)]) {
    let metric = &r.metrics[m];
    let label = format!("{} ({})", metric.key, metric.unit);
    let y_top = r.runs.iter().map(|x| x.values[m]).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let (y_max, step) = y_range(y_top * HEADROOM);
    let f = Frame::new(r.rounds as f64, y_max);
    svg_open(h, &format!("{label} per run"));
    y_ticks(h, &f, step, |v| tick_label(v, step));
    for round in 0..r.rounds {
        x_tick(h, &f, round as f64 + 0.5, &format!("{}", round + 1));
    }
    axis_labels(h, "round", &label);
    for (k, t) in r.targets.iter().enumerate() {
        let pts: Vec<(f64, f64)> = r
            .runs
            .iter()
            .filter(|x| x.target == t.name && x.values[m].is_finite())
            .map(|x| (x.round as f64 + 0.5, x.values[m]))
            .collect();
        if !pts.is_empty() {
            polyline(h, &f, pts.iter().copied(), colour(k), &t.name);
        }
        for &(x, y) in &pts {
            let _ = writeln!(h, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\"/>", f.x(x), f.y(y), colour(k));
        }
    }
    legend(h, entries);
    if r.runs.iter().all(|x| !x.values[m].is_finite()) {
        no_samples(h);
    }
    h.push_str("</svg>\n");
}

/// The x position of percentile `p` on a log scale of `1 - p`: 0 at p0, 1
/// at p90, 2 at p99, 3 at p99.9, 4 at p99.99.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-4).log10()
}

fn latency_svg(h: &mut String, r: &ThroughputReport, kind: &str) {
    let pts = &r.percentiles;
    let y_top = pts.iter().map(|p| p.us).fold(0.0, f64::max);
    let (y_max, step) = y_range(y_top);
    let f = Frame::new(4.0, y_max);
    svg_open(h, &format!("{kind} by percentile"));
    y_ticks(h, &f, step, fmt_us);
    percentile_ticks(h, &f);
    axis_labels(h, "percentile", kind);
    polyline(h, &f, pts.iter().map(|p| (nines(p.percentile), p.us)), SENT_COLOUR, "latency");
    if pts.is_empty() {
        let _ = writeln!(h, "<text x=\"{}\" y=\"{}\">no samples</text>", LEFT + 20.0, TOP + 40.0);
    }
    h.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_scales() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
        assert_eq!(nines(100.0), 4.0);
        assert_eq!(nice_step(1000.0, 5.0), 200.0);
        assert_eq!(nice_step(7.0, 8.0), 1.0);
        assert_eq!(tick_label(1000.0, 200.0), "1,000");
        assert_eq!(tick_label(0.4, 0.2), "0.4");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
    }
}
