//! `turn-bench`: the command line of the load generator. See the library
//! (`bench_harness`) for what each scenario measures, and [`demo`] for
//! `turn-bench demo`, which starts turn-relay and drives a short load
//! through it.

mod demo;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bench_harness::allocate::AllocateConfig;
use bench_harness::client::{PasswordAlgorithm, TlsOptions, TransportKind};
use bench_harness::compare::{CompareConfig, CompareScenario, NamedTarget};
use bench_harness::report::{write_compare_html, write_throughput_html};
use bench_harness::{
    Batching, BenchError, ChurnConfig, Credentials, Target, ThroughputConfig, ThroughputReport, TurnServer,
    run_allocate, run_baseline, run_churn, run_compare, run_latency, run_throughput,
};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// Load generator for TURN servers: throughput, latency and allocation
/// storms against any TURN server (this project's relay, coturn, ...),
/// a kernel-only baseline forwarder driven by the same traffic, and
/// side-by-side comparisons.
#[derive(Parser, Debug)]
#[command(name = "turn-bench", version, max_term_width = 110)]
struct Cli {
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// No live line per second on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N allocations, each with a channel to a peer on loopback; ChannelData
    /// at --rate (or as fast as possible): packets/s, Mbit/s, loss,
    /// reordering, RTT percentiles, the whole machine's CPU per relayed
    /// packet (all cores, /proc/stat) and with --server-pid the server's.
    /// turn-bench batches with GSO/GRO unless --per-packet.
    Throughput(TrafficCmd),
    /// One allocation at a low fixed rate, packets sent one at a time: the
    /// RTT distribution.
    Latency(TrafficCmd),
    /// An allocation storm: allocations/s with authentication, success
    /// rate, Allocate latency; --release refreshes each to 0 afterwards.
    Allocate(AllocateCmd),
    /// Soak test: allocations created, used (a few ChannelData round trips)
    /// and released continuously; churn/s, success %, failures by error,
    /// and with --server-pid the server's RSS and open descriptors at start
    /// and end.
    Churn(ChurnCmd),
    /// The same traffic through a trivial UDP forwarder the harness runs
    /// (same hops as a relay, no TURN): the kernel's own per-packet cost;
    /// per packet, or with --forwarder-gso batched with GSO/GRO.
    Baseline(BaselineCmd),
    /// One scenario against several targets in alternation (A B A B …),
    /// with medians, ranges and ratios to the first target.
    Compare(CompareCmd),
    /// Start turn-relay (the binary next to turn-bench, on PATH, or
    /// --relay) on loopback with an embedded configuration, run a short
    /// throughput load through it, print the report and the relay's own
    /// counters, and stop it.
    Demo(demo::DemoCmd),
}

/// How to authenticate.
#[derive(Args, Debug, Clone)]
struct CredArgs {
    /// Long-term credential user name (with --secret: the user part of the
    /// REST user name `expiry:user`).
    #[arg(long, short = 'u', default_value = "test")]
    user: String,
    /// Long-term credential password.
    #[arg(long, short = 'w', default_value = "pass")]
    password: String,
    /// TURN REST API shared secret: user name `expiry:user`, password
    /// base64(HMAC-SHA1(secret, user name)).
    #[arg(long)]
    secret: Option<String>,
    /// Realm (learnt from the server's 401 when not given).
    #[arg(long)]
    realm: Option<String>,
    /// Initial retransmission timeout of requests, ms (RFC 8489: 500; 7
    /// tries, doubling).
    #[arg(long, default_value_t = 500)]
    rto_ms: u64,
    /// Long-term key password algorithm (RFC 8489 §9.2): `md5`, or `sha256`
    /// (the server must offer it; no fallback to MD5).
    #[arg(long, default_value = "md5", value_parser = password_algorithm)]
    password_algorithm: PasswordAlgorithm,
    /// `udp`; or `tcp`, `tls`: one connection per allocation to --server
    /// (the server's TCP or TLS listener), nothing retransmitted; relaying
    /// to the peers stays UDP (the baseline forwarder is UDP only).
    #[arg(long, default_value = "udp", value_parser = transport)]
    transport: TransportKind,
    /// TLS: trust the CA certificate(s) in this PEM file (e.g. the server's
    /// self-signed certificate).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// TLS: accept any server certificate (handshake signatures are still
    /// checked).
    #[arg(long)]
    tls_insecure: bool,
    /// TLS: server name for SNI and the certificate check [default: the
    /// server's IP address].
    #[arg(long, value_name = "NAME")]
    tls_name: Option<String>,
}

impl CredArgs {
    fn credentials(&self) -> Credentials {
        match &self.secret {
            Some(s) => Credentials::rest(s, &self.user),
            None => Credentials::long_term(&self.user, &self.password),
        }
    }

    fn server(&self, addr: SocketAddr) -> TurnServer {
        let tls = (self.transport == TransportKind::Tls).then(|| TlsOptions {
            ca: self.tls_ca.clone(),
            insecure: self.tls_insecure,
            server_name: self.tls_name.clone(),
        });
        TurnServer {
            realm: self.realm.clone(),
            rto: Duration::from_millis(self.rto_ms.max(1)),
            transport: self.transport,
            tls,
            password_algorithm: self.password_algorithm,
            ..TurnServer::new(addr, self.credentials())
        }
    }
}

/// Which server.
#[derive(Args, Debug, Clone)]
struct ServerArgs {
    /// The TURN server, host:port (its UDP, TCP or TLS listener, as
    /// --transport says).
    #[arg(long, short = 's', default_value = "127.0.0.1:3478", value_parser = resolve)]
    server: SocketAddr,
    #[command(flatten)]
    creds: CredArgs,
    /// The server's process id: its CPU time (/proc/PID/stat) and memory
    /// (/proc/PID/status) before and after give CPU-µs per relayed packet
    /// and memory per allocation.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// What traffic to send.
#[derive(Args, Debug, Clone)]
struct TrafficArgs {
    /// Allocations (flows), each its own client socket [default:
    /// throughput 10, latency 1].
    #[arg(long, short = 'n')]
    allocations: Option<usize>,
    /// Payload bytes per packet, at least 24 (sequence number and send
    /// timestamp) [default: throughput 200, latency 100].
    #[arg(long)]
    size: Option<usize>,
    /// Packets per second over all allocations; 0: as fast as possible
    /// [default: throughput 0, latency 100].
    #[arg(long, short = 'r')]
    rate: Option<u64>,
    /// Seconds to send.
    #[arg(long, short = 'd', default_value = "10", value_parser = secs)]
    duration: Duration,
    /// The peer sinks instead of echoing: one-way latency (client → relay
    /// → peer) instead of RTT.
    #[arg(long)]
    sink: bool,
    /// Send indications / Data indications instead of ChannelData.
    #[arg(long)]
    indications: bool,
    /// Generator threads (allocations are split among them).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Most packets per sendmmsg [default: throughput 32, latency 1].
    #[arg(long)]
    burst: Option<usize>,
    /// Closed loop: at most this many packets in flight per generator
    /// thread (a saturation test without overload); 0: open loop.
    #[arg(long, default_value_t = 0)]
    window: u64,
    /// Pin generator threads to these cores (comma-separated; thread k gets
    /// the k-th, wrapping).
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<usize>,
    /// Pin the baseline forwarder's thread to this core (baseline targets
    /// only; pin it where the server under test runs).
    #[arg(long)]
    forwarder_cpu: Option<usize>,
    /// Where the peer binds: a loopback address other than the server's.
    #[arg(long, default_value = "127.0.0.2")]
    peer_ip: IpAddr,
    /// Peers, each its own socket and thread (allocation k goes to peer
    /// k mod N): one echoing thread caps what a multi-shard server can be
    /// driven at. ChannelData only.
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Local address of the client sockets.
    #[arg(long)]
    client_ip: Option<IpAddr>,
    /// Milliseconds to wait for the last packets after sending stops.
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// Leave the allocations to expire instead of releasing them at the end.
    #[arg(long)]
    no_release: bool,
    /// Seconds between re-sending each allocation's ChannelBind (or
    /// CreatePermission) during the run; its allocation is refreshed this
    /// often or at half its lifetime, whichever is sooner. 0: never.
    #[arg(long, default_value_t = 120.0)]
    refresh_s: f64,
    /// turn-bench's own UDP sockets (senders and peers) send and receive
    /// one datagram per message, as a browser does: no GSO, no GRO. By
    /// default a burst to one allocation leaves as GSO sends and receives
    /// use GRO (each segment still counted and timed as its own packet),
    /// so that turn-bench is not the bottleneck of a batching server. The
    /// report says which mode ran (`batching.mode`).
    #[arg(long)]
    per_packet: bool,
}

impl TrafficArgs {
    fn apply(&self, mut c: ThroughputConfig) -> ThroughputConfig {
        if let Some(n) = self.allocations {
            c.allocations = n;
        }
        if let Some(s) = self.size {
            c.size = s;
        }
        if let Some(r) = self.rate {
            c.rate = r;
        }
        if let Some(b) = self.burst {
            c.burst = b;
        }
        c.duration = self.duration;
        c.window = self.window;
        c.echo = !self.sink;
        c.indications = self.indications;
        c.threads = self.threads.max(1);
        c.cpu = self.cpu.clone();
        c.forwarder_cpu = self.forwarder_cpu;
        c.peer_ip = self.peer_ip;
        c.peers = self.peers;
        c.client_ip = self.client_ip;
        c.drain = Duration::from_millis(self.drain_ms);
        c.release = !self.no_release;
        c.refresh_interval = Duration::from_secs_f64(self.refresh_s.clamp(0.0, 86_400.0));
        c.batching = if self.per_packet { Batching::PerPacket } else { Batching::GsoGro };
        c
    }
}

#[derive(Args, Debug)]
struct TrafficCmd {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Also write a self-contained HTML report to this file: packets/s over
    /// time, the latency percentile curve (inline SVG) and the summary.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BaselineCmd {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// The forwarder batches: GRO on its sockets, the segments it forwards
    /// leave as GSO sends (compare's `baseline-gso` target); default: one
    /// datagram per message (`baseline`).
    #[arg(long)]
    forwarder_gso: bool,
}

/// How to storm.
#[derive(Args, Debug, Clone)]
struct StormArgs {
    /// Allocations to make.
    #[arg(long, short = 'n', default_value_t = 1000)]
    count: usize,
    /// Allocations in flight at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// New allocations per second; 0: as fast as they complete.
    #[arg(long, short = 'r', default_value_t = 0)]
    rate: u64,
    /// Seconds after which no new allocation starts.
    #[arg(long, short = 'd', default_value = "30", value_parser = secs)]
    duration: Duration,
    /// Refresh every allocation to 0 afterwards (and measure the releases).
    #[arg(long)]
    release: bool,
    /// LIFETIME to request, seconds.
    #[arg(long)]
    lifetime: Option<u32>,
    /// Pin the generator thread to this core.
    #[arg(long)]
    cpu: Option<usize>,
    /// Local address of the client sockets.
    #[arg(long)]
    client_ip: Option<IpAddr>,
}

impl StormArgs {
    fn config(&self, server: TurnServer, server_pid: Option<u32>, live: bool) -> AllocateConfig {
        AllocateConfig {
            count: self.count,
            concurrency: self.concurrency,
            rate: self.rate,
            duration: self.duration,
            release: self.release,
            lifetime: self.lifetime,
            client_ip: self.client_ip,
            server_pid,
            cpu: self.cpu,
            live,
            ..AllocateConfig::new(server)
        }
    }
}

#[derive(Args, Debug)]
struct AllocateCmd {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    storm: StormArgs,
}

#[derive(Args, Debug)]
struct ChurnCmd {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    churn: ChurnArgs,
}

/// How to churn (`churn`, and `compare churn` per run).
#[derive(Args, Debug, Clone)]
struct ChurnArgs {
    /// Seconds during which new allocations start.
    #[arg(long, short = 'd', default_value = "30", value_parser = secs)]
    duration: Duration,
    /// New allocations per second; 0: as fast as cycles finish.
    #[arg(long, short = 'r', default_value_t = 100)]
    rate: u64,
    /// Allocations alive at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// ChannelData round trips per allocation.
    #[arg(long, default_value_t = 3)]
    round_trips: u32,
    /// Where the echoing peer binds.
    #[arg(long, default_value = "127.0.0.2")]
    peer_ip: IpAddr,
    /// Local address of the client sockets.
    #[arg(long)]
    client_ip: Option<IpAddr>,
}

impl ChurnArgs {
    fn config(&self, server: TurnServer, server_pid: Option<u32>, live: bool) -> ChurnConfig {
        ChurnConfig {
            duration: self.duration,
            rate: self.rate,
            concurrency: self.concurrency,
            round_trips: self.round_trips,
            peer_ip: self.peer_ip,
            client_ip: self.client_ip,
            server_pid,
            live,
            ..ChurnConfig::new(server)
        }
    }
}

#[derive(Args, Debug)]
struct CompareCmd {
    /// A target, `NAME=HOST:PORT[,pid=PID][,user=U][,password=P][,secret=S][,realm=R]`,
    /// or `NAME=baseline` (the harness's forwarder, one datagram per
    /// message) or `NAME=baseline-gso` (the forwarder with GSO/GRO); repeat
    /// for each. The first is the reference of the ratios. Unset
    /// credentials come from --user/--password/--secret/--realm.
    #[arg(long = "target", short = 't', required = true)]
    targets: Vec<String>,
    /// Runs per target (alternating A B A B …).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Milliseconds to pause between runs.
    #[arg(long, default_value_t = 200)]
    pause_ms: u64,
    #[command(flatten)]
    creds: CredArgs,
    /// Also write a self-contained HTML report to this file: the table of
    /// medians, ranges and ratios, and plots of every run, one colour per
    /// target (inline SVG).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(subcommand)]
    scenario: CompareSub,
}

#[derive(Subcommand, Debug)]
enum CompareSub {
    /// Compare throughput runs.
    Throughput(TrafficArgs),
    /// Compare latency runs.
    Latency(TrafficArgs),
    /// Compare allocation storms (TURN targets only).
    Allocate(StormArgs),
    /// Compare churn (allocate, use, release cycles; TURN targets only):
    /// cycles/s, success, and with a target's pid its fds and RSS growth.
    Churn(ChurnArgs),
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs().map_err(|e| format!("{s}: {e}"))?.next().ok_or_else(|| format!("{s}: no address"))
}

fn transport(s: &str) -> Result<TransportKind, String> {
    match s {
        "udp" => Ok(TransportKind::Udp),
        "tcp" => Ok(TransportKind::Tcp),
        "tls" => Ok(TransportKind::Tls),
        _ => Err(format!("{s}: expected udp, tcp or tls")),
    }
}

fn password_algorithm(s: &str) -> Result<PasswordAlgorithm, String> {
    match s.to_ascii_lowercase().as_str() {
        "md5" => Ok(PasswordAlgorithm::Md5),
        "sha256" | "sha-256" => Ok(PasswordAlgorithm::Sha256),
        _ => Err(format!("{s}: expected md5 or sha256")),
    }
}

/// Throughput and latency run over UDP only for now: refuse the others
/// rather than silently measuring UDP.
fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s}: must be more than 0 and at most 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_target(spec: &str, creds: &CredArgs) -> Result<NamedTarget, String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec}: expected NAME=HOST:PORT, NAME=baseline or NAME=baseline-gso"))?;
    let baseline = |mode| Ok(NamedTarget { name: name.to_owned(), target: Target::Baseline(mode), server_pid: None });
    match rest {
        "baseline" => return baseline(Batching::PerPacket),
        "baseline-gso" => return baseline(Batching::GsoGro),
        _ => {}
    }
    let mut parts = rest.split(',');
    let addr = resolve(parts.next().unwrap_or_default())?;
    let mut c = creds.clone();
    let mut pid = None;
    for kv in parts {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv}: expected key=value"))?;
        match k {
            "pid" => pid = Some(v.parse().map_err(|e| format!("pid {v}: {e}"))?),
            "user" => c.user = v.to_owned(),
            "password" => c.password = v.to_owned(),
            "secret" => c.secret = Some(v.to_owned()),
            "realm" => c.realm = Some(v.to_owned()),
            _ => return Err(format!("{k}: unknown target option (pid, user, password, secret, realm)")),
        }
    }
    Ok(NamedTarget { name: name.to_owned(), target: Target::Turn(c.server(addr)), server_pid: pid })
}

fn emit<R: Serialize + std::fmt::Display>(report: &R, json: bool) -> Result<(), BenchError> {
    if json {
        let s = serde_json::to_string_pretty(report).map_err(|e| BenchError::Setup(e.to_string()))?;
        println!("{s}");
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Fails before a run, not after it, when the report cannot be written.
fn check_report_path(html: Option<&Path>) -> Result<(), BenchError> {
    if let Some(path) = html {
        std::fs::File::create(path)
            .map_err(|e| BenchError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
    }
    Ok(())
}

fn emit_traffic(report: &ThroughputReport, json: bool, html: Option<&Path>) -> Result<(), BenchError> {
    if let Some(path) = html {
        write_throughput_html(path, report)
            .map_err(|e| BenchError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
    }
    emit(report, json)
}

fn run(cli: Cli) -> Result<(), BenchError> {
    let live = !cli.quiet;
    match cli.command {
        Command::Demo(c) => demo::run(&c, live, cli.json),
        Command::Throughput(c) => {
            let server = c.server.creds.server(c.server.server);
            let base = ThroughputConfig::new(server);
            let cfg = ThroughputConfig { server_pid: c.server.server_pid, live, ..c.traffic.apply(base) };
            check_report_path(c.report.as_deref())?;
            emit_traffic(&run_throughput(&cfg)?, cli.json, c.report.as_deref())
        }
        Command::Latency(c) => {
            let server = c.server.creds.server(c.server.server);
            let base = ThroughputConfig::latency(server);
            let cfg = ThroughputConfig { server_pid: c.server.server_pid, live, ..c.traffic.apply(base) };
            check_report_path(c.report.as_deref())?;
            emit_traffic(&run_latency(&cfg)?, cli.json, c.report.as_deref())
        }
        Command::Baseline(c) => {
            let base = ThroughputConfig::new(TurnServer::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Credentials::long_term("", ""),
            ));
            let mode = if c.forwarder_gso { Batching::GsoGro } else { Batching::PerPacket };
            let cfg = ThroughputConfig { live, target: Target::Baseline(mode), ..c.traffic.apply(base) };
            emit(&run_baseline(&cfg)?, cli.json)
        }
        Command::Allocate(c) => {
            let cfg = c.storm.config(c.server.creds.server(c.server.server), c.server.server_pid, live);
            emit(&run_allocate(&cfg)?, cli.json)
        }
        Command::Churn(c) => {
            let cfg = c.churn.config(c.server.creds.server(c.server.server), c.server.server_pid, live);
            emit(&run_churn(&cfg)?, cli.json)
        }
        Command::Compare(c) => {
            let targets = c
                .targets
                .iter()
                .map(|t| parse_target(t, &c.creds))
                .collect::<Result<Vec<_>, _>>()
                .map_err(BenchError::Config)?;
            // The targets replace this placeholder server in each run.
            let placeholder = c.creds.server(SocketAddr::from(([127, 0, 0, 1], 3478)));
            let scenario = match &c.scenario {
                CompareSub::Throughput(t) => CompareScenario::Throughput(ThroughputConfig {
                    live,
                    ..t.apply(ThroughputConfig::new(placeholder))
                }),
                CompareSub::Latency(t) => CompareScenario::Latency(ThroughputConfig {
                    live,
                    ..t.apply(ThroughputConfig::latency(placeholder))
                }),
                CompareSub::Allocate(s) => CompareScenario::Allocate(s.config(placeholder, None, live)),
                CompareSub::Churn(a) => CompareScenario::Churn(a.config(placeholder, None, live)),
            };
            let cfg = CompareConfig { targets, rounds: c.rounds, scenario, pause: Duration::from_millis(c.pause_ms) };
            check_report_path(c.report.as_deref())?;
            let report = run_compare(&cfg)?;
            if let Some(path) = c.report.as_deref() {
                write_compare_html(path, &report)
                    .map_err(|e| BenchError::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))))?;
            }
            emit(&report, cli.json)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turn-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn target_specs() {
        let creds = CredArgs {
            user: "u".into(),
            password: "p".into(),
            secret: None,
            realm: None,
            rto_ms: 500,
            password_algorithm: PasswordAlgorithm::Md5,
            transport: TransportKind::Udp,
            tls_ca: None,
            tls_insecure: false,
            tls_name: None,
        };
        let t = parse_target("a=127.0.0.1:3478,pid=42,user=x,realm=r", &creds).unwrap();
        assert_eq!(t.name, "a");
        assert_eq!(t.server_pid, Some(42));
        let Target::Turn(s) = t.target else { panic!() };
        assert_eq!(s.credentials, Credentials::long_term("x", "p"));
        assert_eq!(s.realm.as_deref(), Some("r"));
        assert_eq!(parse_target("b=baseline", &creds).unwrap().target, Target::Baseline(Batching::PerPacket));
        assert_eq!(parse_target("g=baseline-gso", &creds).unwrap().target, Target::Baseline(Batching::GsoGro));
        assert!(parse_target("nope", &creds).is_err());
        assert!(parse_target("c=127.0.0.1:1,color=red", &creds).is_err());
    }
}
