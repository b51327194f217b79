//! `turn-bench`: the load generator bundled with the relay, which measures
//! any TURN server (this project's, coturn, ...) and a kernel-only baseline
//! with the same traffic.
//!
//! Library entry points, one per scenario, each bounded by its duration and
//! counts and returning a report that prints as a table (`Display`) and
//! serialises to JSON (`Serialize`):
//!
//! - [`run_throughput`], [`run_latency`], [`run_baseline`]
//!   ([`ThroughputConfig`] → [`ThroughputReport`]);
//! - [`run_allocate`] ([`AllocateConfig`] → [`AllocateReport`]);
//! - [`run_churn`] ([`ChurnConfig`] → [`ChurnReport`]);
//! - [`run_compare`] ([`CompareConfig`] → [`CompareReport`]).
//!
//! The data-plane scenarios report the server's CPU per relayed packet
//! (with its pid) and the whole machine's (every core, from `/proc/stat`),
//! and say whether turn-bench's own sockets batched: GSO sends and GRO
//! receives by default, one datagram per message with
//! [`Batching::PerPacket`] ([`batching`]). The baseline forwarder runs in
//! either mode ([`Target::Baseline`]).
//!
//! ```no_run
//! use bench_harness::{Credentials, ThroughputConfig, TurnServer, run_throughput};
//! let server = TurnServer::new("127.0.0.1:3478".parse().unwrap(), Credentials::long_term("test", "pass"));
//! let cfg = ThroughputConfig { rate: 10_000, duration: std::time::Duration::from_secs(5), ..ThroughputConfig::new(server) };
//! let report = run_throughput(&cfg).unwrap();
//! println!("{report}");
//! ```

pub mod allocate;
pub mod batching;
pub mod churn;
pub mod client;
pub mod compare;
pub mod forwarder;
pub mod net;
pub mod payload;
pub mod peer;
pub mod procfs;
pub mod refresh;
pub mod report;
pub mod stats;
pub mod stream;
pub mod throughput;
pub mod traffic;

pub use allocate::{AllocateConfig, AllocateReport, run_allocate};
pub use batching::Batching;
pub use churn::{ChurnConfig, ChurnReport, run_churn};
pub use client::{ClientConfig, ClientError, Credentials, TurnClient, TurnServer};
pub use compare::{CompareConfig, CompareReport, CompareScenario, NamedTarget, run_compare};
pub use throughput::{
    MachineCost, ServerCost, Target, ThroughputConfig, ThroughputReport, run_baseline, run_latency, run_throughput,
};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The settings cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// The flows could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// A TURN transaction failed where the run needs it.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A socket or /proc error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
