//! `--report out.html`: one self-contained HTML file (no scripts, no
//! external assets) with hand-written inline SVG plots of a throughput or
//! latency run — packets/s over time and the latency percentile curve — and
//! its summary table.

use std::fmt::Write as _;
use std::path::Path;

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
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; color: #222; }}\n\
         table {{ border-collapse: collapse; }}\n\
         td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}\n\
         th {{ text-align: left; }}\n\
         svg text {{ font-size: 12px; font-family: sans-serif; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    summary_table(&mut h, r);
    h.push_str("<h2>Throughput over time</h2>\n");
    throughput_svg(&mut h, r);
    let kind = if r.latency_kind == "rtt" { "RTT" } else { "One-way latency" };
    let _ = writeln!(h, "<h2>{} percentiles</h2>", escape(kind));
    latency_svg(&mut h, r, kind);
    h.push_str("</body>\n</html>\n");
    h
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
        &[format!("{:.0} % of a core{}", g.max_percent, if g.saturated { " (SATURATED)" } else { "" })],
    );
    if let Some(s) = &r.server {
        row(h, "server", &[s.to_string()]);
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
    for (i, (name, colour)) in entries.iter().enumerate() {
        let x = LEFT + 10.0 + 110.0 * i as f64;
        let _ = writeln!(
            h,
            "<rect x=\"{x:.1}\" y=\"{}\" width=\"12\" height=\"4\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{}</text>",
            TOP + 10.0,
            x + 16.0,
            TOP + 15.0,
            escape(name)
        );
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
    let step = nice_step(y_top.max(1.0), 5.0);
    let f = Frame::new(x_max, (y_top / step).ceil().max(1.0) * step);
    svg_open(h, "packets per second over time");
    let mut v = 0.0;
    while v <= f.y_max + step / 2.0 {
        y_tick(h, &f, v, &group(v.round() as u64));
        v += step;
    }
    let xs = nice_step(f.x_max, 8.0);
    let mut v = 0.0;
    while v <= f.x_max + xs / 1e6 {
        x_tick(h, &f, v, &format!("{v}"));
        v += xs;
    }
    axis_labels(h, "time, s", "packets/s");
    polyline(h, &f, t.iter().map(|s| (s.t_s, s.sent_pps)), SENT_COLOUR, "sent");
    polyline(h, &f, t.iter().map(|s| (s.t_s, s.received_pps)), RECEIVED_COLOUR, "received");
    legend(h, &[("sent", SENT_COLOUR), ("received", RECEIVED_COLOUR)]);
    if t.is_empty() {
        let _ = writeln!(h, "<text x=\"{}\" y=\"{}\">no samples</text>", LEFT + 20.0, TOP + 40.0);
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
    let step = nice_step(y_top.max(1.0), 5.0);
    let f = Frame::new(4.0, (y_top / step).ceil().max(1.0) * step);
    svg_open(h, &format!("{kind} by percentile"));
    let mut v = 0.0;
    while v <= f.y_max + step / 2.0 {
        y_tick(h, &f, v, &fmt_us(v));
        v += step;
    }
    for (p, label) in [(0.0, "0"), (90.0, "90"), (99.0, "99"), (99.9, "99.9"), (99.99, "99.99")] {
        x_tick(h, &f, nines(p), label);
    }
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
    }
}
