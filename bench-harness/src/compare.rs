//! The `compare` scenario: one scenario run against several targets in
//! alternation (A B C A B C …, so that drift of the machine hits every
//! target alike), with the median, range and ratio to the first target of
//! each key figure.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::BenchError;
use crate::allocate::{AllocateConfig, AllocateReport, run_allocate};
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
}

impl CompareScenario {
    fn name(&self) -> &'static str {
        match self {
            CompareScenario::Throughput(_) => "throughput",
            CompareScenario::Latency(_) => "latency",
            CompareScenario::Allocate(_) => "allocate",
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

const TRAFFIC_METRICS: [Metric; 5] = [
    m("received_pps", "packets/s", true),
    m("loss_pct", "%", false),
    m("latency_p50_us", "µs", false),
    m("latency_p99_us", "µs", false),
    m("server_cpu_us_per_packet", "µs", false),
];

const ALLOCATE_METRICS: [Metric; 5] = [
    m("allocations_per_s", "1/s", true),
    m("success_pct", "%", true),
    m("latency_p50_us", "µs", false),
    m("latency_p99_us", "µs", false),
    m("server_cpu_us_per_allocation", "µs", false),
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
    Ok(CompareReport { scenario: cfg.scenario.name(), rounds: cfg.rounds, metrics, targets, runs })
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 1000.0 {
        crate::stats::group(x.round() as u64)
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
            "turn-bench compare: {}, {} round(s), alternating {} …",
            self.scenario,
            self.rounds,
            names.iter().chain(names.iter()).copied().collect::<Vec<_>>().join(" ")
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
