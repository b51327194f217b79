//! The `compare` scenario: one scenario run against several targets in
//! alternation (A B C A B C …, so that drift of the machine hits every
//! target alike), with the median, range and ratio to the first target of
//! each key figure.
//!
//! The baseline forwarder is a target like a server: `baseline` (one
//! datagram per message) and `baseline-gso` (GSO/GRO) can be compared side
//! by side, with each other and with servers. Whether turn-bench itself
//! batches is the scenario's setting (`--per-packet`), the same for every
//! target of a comparison; each run's report records it.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::BenchError;
use crate::allocate::{AllocateConfig, AllocateReport, run_allocate};
use crate::batching::Batching;
use crate::churn::{ChurnConfig, ChurnReport, run_churn};
use crate::stats::median;
use crate::throughput::{Target, ThroughputConfig, ThroughputReport, run_latency, run_throughput};

/// A target with a name for the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedTarget {
    /// Its name (`relay`, `coturn`, `baseline`, ...).
    pub name: String,
    /// What to measure.
    pub target: Target,
    /// The server's process id, for its cost.
    pub server_pid: Option<u32>,
}

/// The scenario to compare with, and its settings (the target in them is
/// replaced by each target in turn).
#[derive(Clone, Debug, PartialEq)]
pub enum CompareScenario {
    /// [`run_throughput`].
    Throughput(ThroughputConfig),
    /// [`run_latency`].
    Latency(ThroughputConfig),
    /// [`run_allocate`] (TURN targets only).
    Allocate(AllocateConfig),
    /// [`run_churn`] (TURN targets only): allocate → use → release cycles.
    Churn(ChurnConfig),
}

impl CompareScenario {
    fn name(&self) -> &'static str {
        match self {
            CompareScenario::Throughput(_) => "throughput",
            CompareScenario::Latency(_) => "latency",
            CompareScenario::Allocate(_) => "allocate",
            CompareScenario::Churn(_) => "churn",
        }
    }
}

/// Settings of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareConfig {
    /// The targets, the first being the reference of the ratios.
    pub targets: Vec<NamedTarget>,
    /// Runs per target.
    pub rounds: usize,
    /// The scenario.
    pub scenario: CompareScenario,
    /// Pause between runs (lets queues and timers settle).
    pub pause: Duration,
}

/// A figure compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metric {
    /// Its key.
    pub key: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Whether more is better.
    pub higher_is_better: bool,
}

const fn m(key: &'static str, unit: &'static str, higher_is_better: bool) -> Metric {
    Metric { key, unit, higher_is_better }
}

/// Throughput and latency: the server's own CPU per relayed packet (its
/// pid's, or the baseline forwarder thread's) and the whole machine's (all
/// cores from /proc/stat: what the server left to the kernel on another
/// core, and turn-bench, count too).
const TRAFFIC_METRICS: [Metric; 6] = [
    m("received_pps", "packets/s", true),
    m("loss_pct", "%", false),
    m("latency_p50_us", "µs", false),
    m("latency_p99_us", "µs", false),
    m("server_cpu_us_per_packet", "µs", false),
    m("machine_cpu_us_per_packet", "µs", false),
];

const ALLOCATE_METRICS: [Metric; 5] = [
    m("allocations_per_s", "1/s", true),
    m("success_pct", "%", true),
    m("latency_p50_us", "µs", false),
    m("latency_p99_us", "µs", false),
    m("server_cpu_us_per_allocation", "µs", false),
];

/// Churn: cycles completed per second and their success, ChannelData round
/// trips answered, and the server's resources after the run less those
/// before it (NaN without the target's pid). The growths are signed; 0
/// means everything came back, and their ratios are meaningless when the
/// first target's growth is 0 (shown as `-`).
const CHURN_METRICS: [Metric; 5] = [
    m("cycles_per_s", "1/s", true),
    m("success_pct", "%", true),
    m("round_trip_success_pct", "%", true),
    m("server_fds_growth", "fds", false),
    m("server_rss_growth_kib", "KiB", false),
];

/// One run of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Run {
    /// Round, from 0.
    pub round: usize,
    /// Target name.
    pub target: String,
    /// The figures, in the order of [`CompareReport::metrics`] (NaN, which
    /// JSON writes as null, where a figure is missing).
    pub values: Vec<f64>,
    /// The run's full report.
    pub report: serde_json::Value,
}

/// One target's figures over all rounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetSummary {
    /// Target name.
    pub name: String,
    /// What it is.
    pub target: String,
    /// Median of each figure.
    pub median: Vec<f64>,
    /// Smallest of each figure.
    pub min: Vec<f64>,
    /// Largest of each figure.
    pub max: Vec<f64>,
    /// Median over the first target's median.
    pub ratio: Vec<f64>,
}

/// The result of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareReport {
    /// The scenario compared.
    pub scenario: &'static str,
    /// Runs per target.
    pub rounds: usize,
    /// Throughput and latency: whether turn-bench's own sockets (senders
    /// and peers) used GSO/GRO or sent per packet, in every run.
    pub batching: Option<Batching>,
    /// The figures compared.
    pub metrics: Vec<Metric>,
    /// Per target, in the order given.
    pub targets: Vec<TargetSummary>,
    /// Every run, in the order run.
    pub runs: Vec<Run>,
}

fn opt(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

fn traffic_values(r: &ThroughputReport) -> Vec<f64> {
    vec![
        r.received_pps,
        r.loss_pct,
        r.latency.p50_us,
        r.latency.p99_us,
        opt(r.server.as_ref().and_then(|s| s.cpu_us_per_packet)),
        opt(r.machine_cpu.as_ref().and_then(|m| m.cpu_us_per_packet)),
    ]
}

fn allocate_values(r: &AllocateReport) -> Vec<f64> {
    vec![
        r.allocate.per_s,
        r.allocate.success_pct,
        r.allocate.latency.p50_us,
        r.allocate.latency.p99_us,
        opt(r.server.as_ref().and_then(|s| s.cpu_us_per_allocation)),
    ]
}

fn churn_values(r: &ChurnReport) -> Vec<f64> {
    let (start, end) = match &r.server {
        Some(s) => (s.start, s.end),
        None => (None, None),
    };
    let growth = |f: fn(&crate::churn::Resources) -> u64| match (start, end) {
        (Some(a), Some(b)) => f(&b) as f64 - f(&a) as f64,
        _ => f64::NAN,
    };
    vec![
        r.churn_per_s,
        r.success_pct,
        // No round trip made (every cycle failed before): not 0 % answered.
        if r.data_sent > 0 { r.data_success_pct } else { f64::NAN },
        growth(|x| x.fds),
        growth(|x| x.rss_kib),
    ]
}

fn finite_median(v: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let xs: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&xs), min, max)
}

/// Runs the comparison.
pub fn run_compare(cfg: &CompareConfig) -> Result<CompareReport, BenchError> {
    if cfg.targets.is_empty() || cfg.rounds == 0 {
        return Err(BenchError::Config("compare needs at least one target and one round".into()));
    }
    let metrics: Vec<Metric> = match cfg.scenario {
        CompareScenario::Allocate(_) => ALLOCATE_METRICS.to_vec(),
        CompareScenario::Churn(_) => CHURN_METRICS.to_vec(),
        _ => TRAFFIC_METRICS.to_vec(),
    };
    let mut runs = Vec::with_capacity(cfg.rounds * cfg.targets.len());
    for round in 0..cfg.rounds {
        for t in &cfg.targets {
            if !runs.is_empty() {
                std::thread::sleep(cfg.pause);
            }
            let (values, report) = match &cfg.scenario {
                CompareScenario::Throughput(c) | CompareScenario::Latency(c) => {
                    let c = ThroughputConfig { target: t.target.clone(), server_pid: t.server_pid, ..c.clone() };
                    let r = if matches!(cfg.scenario, CompareScenario::Latency(_)) {
                        run_latency(&c)?
                    } else {
                        run_throughput(&c)?
                    };
                    (traffic_values(&r), serde_json::to_value(&r))
                }
                CompareScenario::Allocate(c) => {
                    let Target::Turn(server) = &t.target else {
                        return Err(BenchError::Config(format!("{}: allocate needs a TURN server", t.name)));
                    };
                    let c = AllocateConfig { server: server.clone(), server_pid: t.server_pid, ..c.clone() };
                    let r = run_allocate(&c)?;
                    (allocate_values(&r), serde_json::to_value(&r))
                }
                CompareScenario::Churn(c) => {
                    let Target::Turn(server) = &t.target else {
                        return Err(BenchError::Config(format!("{}: churn needs a TURN server", t.name)));
                    };
                    let c = ChurnConfig { server: server.clone(), server_pid: t.server_pid, ..c.clone() };
                    let r = run_churn(&c)?;
                    (churn_values(&r), serde_json::to_value(&r))
                }
            };
            let report = report.map_err(|e| BenchError::Setup(format!("cannot serialise a report: {e}")))?;
            runs.push(Run { round, target: t.name.clone(), values, report });
        }
    }
    let mut targets: Vec<TargetSummary> = Vec::with_capacity(cfg.targets.len());
    for t in &cfg.targets {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.target == t.name).collect();
        let mut s = TargetSummary {
            name: t.name.clone(),
            target: t.target.to_string(),
            median: vec![],
            min: vec![],
            max: vec![],
            ratio: vec![],
        };
        for k in 0..metrics.len() {
            let (med, lo, hi) = finite_median(mine.iter().map(|r| r.values[k]));
            s.median.push(med);
            s.min.push(lo);
            s.max.push(hi);
        }
        targets.push(s);
    }
    let reference = targets[0].median.clone();
    for t in &mut targets {
        t.ratio = t.median.iter().zip(&reference).map(|(a, b)| if *b != 0.0 { a / b } else { f64::NAN }).collect();
    }
    let batching = match &cfg.scenario {
        CompareScenario::Throughput(c) | CompareScenario::Latency(c) => Some(c.batching),
        _ => None,
    };
    Ok(CompareReport { scenario: cfg.scenario.name(), rounds: cfg.rounds, batching, metrics, targets, runs })
}

/// A figure for the table: grouped thousands, fewer decimals for larger
/// values, `-` when missing.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 1000.0 {
        let sign = if x < 0.0 { "-" } else { "" };
        format!("{sign}{}", crate::stats::group(x.abs().round() as u64))
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        writeln!(
            f,
            "turn-bench compare: {}, {} round(s), alternating {} …{}",
            self.scenario,
            self.rounds,
            names.iter().chain(names.iter()).copied().collect::<Vec<_>>().join(" "),
            match self.batching {
                Some(Batching::PerPacket) => "; turn-bench per packet",
                Some(Batching::GsoGro) => "; turn-bench GSO/GRO",
                None => "",
            }
        )?;
        for t in &self.targets {
            writeln!(f, "  {:<12} {}", t.name, t.target)?;
        }
        write!(f, "  {:<30}", "median [min – max]")?;
        for t in &self.targets {
            write!(f, " {:>28}", t.name)?;
        }
        for t in self.targets.iter().skip(1) {
            write!(f, " {:>14}", format!("ratio {}/{}", t.name, self.targets[0].name))?;
        }
        writeln!(f)?;
        for (k, m) in self.metrics.iter().enumerate() {
            write!(f, "  {:<30}", format!("{} ({})", m.key, m.unit))?;
            for t in &self.targets {
                let cell = if self.rounds > 1 {
                    format!("{} [{} – {}]", num(t.median[k]), num(t.min[k]), num(t.max[k]))
                } else {
                    num(t.median[k])
                };
                write!(f, " {cell:>28}")?;
            }
            for t in self.targets.iter().skip(1) {
                let r = t.ratio[k];
                let cell = if r.is_finite() { format!("×{r:.3}") } else { "-".into() };
                write!(f, " {cell:>14}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::churn::{Resources, ServerResources};

    #[test]
    fn figures_print_with_their_sign_and_churn_growth_is_end_less_start() {
        assert_eq!(num(-2048.0), "-2,048");
        assert_eq!(num(12_345.4), "12,345");
        assert_eq!(num(f64::NAN), "-");
        let mut r = ChurnReport {
            scenario: "churn",
            target: "t".into(),
            transport: crate::client::TransportKind::Udp,
            rate: 10,
            concurrency: 1,
            wall_s: 1.0,
            started: 10,
            completed: 9,
            churn_per_s: 9.0,
            success_pct: 90.0,
            failures: Default::default(),
            data_sent: 0,
            data_received: 0,
            data_success_pct: 0.0,
            server: None,
        };
        let v = churn_values(&r);
        assert_eq!(&v[..2], &[9.0, 90.0]);
        assert!(v[2..].iter().all(|x| x.is_nan()), "no round trip, no pid: {v:?}");
        r.server = Some(ServerResources {
            source: "pid 1".into(),
            start: Some(Resources { rss_kib: 5000, fds: 20 }),
            end: Some(Resources { rss_kib: 4000, fds: 23 }),
        });
        assert_eq!(&churn_values(&r)[3..], &[3.0, -1000.0]);
    }
}
