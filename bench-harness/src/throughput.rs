//! The data-plane scenarios: `throughput`, `latency` and `baseline`.
//!
//! Each sets up N flows (TURN allocations with a channel, or clients of the
//! baseline forwarder), starts a peer on loopback that echoes or sinks,
//! drives the flows with the measuring loop of [`crate::traffic`] for the
//! configured duration, and reports rates, loss, reordering, latency
//! percentiles, the generator's own CPU use and, when asked, the server's
//! CPU time per relayed packet and memory per allocation; and always the
//! whole machine's CPU time per relayed packet (every core, from
//! `/proc/stat`: the server, the kernel's work on other cores and
//! turn-bench itself), so that no target's cost hides on another core.
//!
//! turn-bench's own sockets (senders and peers) batch with GSO and GRO by
//! default ([`ThroughputConfig::batching`]; `--per-packet` sends and
//! receives one datagram per message, as a browser does); the baseline
//! forwarder runs per packet (`baseline`) or with GSO/GRO (`baseline-gso`)
//! as its target says. The report says which ([`BatchingReport`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::BenchError;
use crate::batching::{BatchCounters, Batching};
use crate::client::{
    Request, TcpTransport, TlsTransport, Transport, TransportKind, TurnClient, TurnServer, TurnSession, UdpTransport,
};
use crate::forwarder::{BASELINE_CHANNEL, Forwarder, ForwarderStats};
use crate::payload::PROBE_LEN;
use crate::peer::{Peer, PeerMode, PeerStats};
use crate::procfs::{self, Memory};
use crate::refresh::{RefreshStats, Refresher};
use crate::stats::{LatencySummary, fmt_us, group};
use crate::stream::StreamConn;
use crate::traffic::{self, EngineConfig, Flow, FlowIo, Framing, Sample, WorkerCpu};

/// The channel number every allocation binds to its peer.
pub const CHANNEL: u16 = 0x4000;

/// How often bindings are re-sent by default: well inside RFC 8656's 300 s
/// permission lifetime, with room for retransmissions.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(120);

/// A generator thread above this share of one core is reported saturated.
pub const SATURATION_PERCENT: f64 = 90.0;

/// What the traffic goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A TURN server.
    Turn(TurnServer),
    /// The harness's own forwarder (the kernel-only baseline): per packet
    /// (compare target `baseline`) or with GSO/GRO (`baseline-gso`).
    Baseline(Batching),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Turn(s) => write!(f, "TURN server {} over {}", s.addr, s.transport.name()),
            Target::Baseline(Batching::PerPacket) => write!(f, "baseline forwarder"),
            Target::Baseline(b) => write!(f, "baseline forwarder ({b})"),
        }
    }
}

/// Settings of a throughput, latency or baseline run.
#[derive(Clone, Debug, PartialEq)]
pub struct ThroughputConfig {
    /// The server (or the baseline forwarder).
    pub target: Target,
    /// Allocations (flows), each with its own client socket.
    pub allocations: usize,
    /// Payload bytes per packet (at least [`PROBE_LEN`]).
    pub size: usize,
    /// Packets per second over all flows; 0: as fast as possible.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// The peer echoes (RTT measured) or sinks (one-way latency measured).
    pub echo: bool,
    /// Send indications instead of ChannelData (TURN targets only).
    pub indications: bool,
    /// Generator threads (flows are split among them).
    pub threads: usize,
    /// Largest batch of packets sent with one sendmmsg.
    pub burst: usize,
    /// Closed loop: at most this many packets in flight per generator
    /// thread (0: open loop, paced by `rate` only).
    pub window: u64,
    /// Cores to pin generator threads to (thread k: `cpu[k % len]`).
    pub cpu: Vec<usize>,
    /// Core to pin the baseline forwarder to.
    pub forwarder_cpu: Option<usize>,
    /// Where the peer binds: a loopback address other than the server's.
    pub peer_ip: IpAddr,
    /// Peers, each its own socket and thread (allocation k binds its
    /// channel to peer `k % peers`): one echoing thread caps what a
    /// multi-shard server can be driven at. ChannelData only; the baseline
    /// forwarder uses the first.
    pub peers: usize,
    /// Local address of the client sockets (`None`: the unspecified
    /// address of the server's family).
    pub client_ip: Option<IpAddr>,
    /// Process id of the server, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// How long to wait for the last packets after sending stops.
    pub drain: Duration,
    /// Print a live line per second on stderr.
    pub live: bool,
    /// Release the allocations (Refresh 0) at the end.
    pub release: bool,
    /// During the run, re-send each flow's ChannelBind (or CreatePermission)
    /// this often, and Refresh its allocation this often or at half its
    /// lifetime, whichever comes first; zero: never (runs longer than the
    /// server's permission lifetime, 300 s, then lose everything).
    pub refresh_interval: Duration,
    /// turn-bench's own UDP sockets — the generator's client sockets and
    /// the peers' — send with GSO and receive with GRO (the default), or
    /// one datagram per message (`--per-packet`). The baseline forwarder's
    /// mode is its target's.
    pub batching: Batching,
}

impl ThroughputConfig {
    /// A throughput run against `server`: 10 allocations, 200-byte
    /// payloads, as fast as possible, 10 s, echo.
    pub fn new(server: TurnServer) -> ThroughputConfig {
        ThroughputConfig {
            target: Target::Turn(server),
            allocations: 10,
            size: 200,
            rate: 0,
            duration: Duration::from_secs(10),
            echo: true,
            indications: false,
            threads: 1,
            burst: 32,
            window: 0,
            cpu: Vec::new(),
            forwarder_cpu: None,
            peer_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            peers: 1,
            client_ip: None,
            server_pid: None,
            drain: Duration::from_millis(500),
            live: false,
            release: true,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            batching: Batching::default(),
        }
    }

    /// A latency run against `server`: one allocation, 100 packets/s of
    /// 100 bytes, sent one at a time, 10 s, echo.
    pub fn latency(server: TurnServer) -> ThroughputConfig {
        ThroughputConfig { allocations: 1, size: 100, rate: 100, burst: 1, ..ThroughputConfig::new(server) }
    }

    /// A baseline run with the same traffic settings as `self` (the
    /// forwarder in the mode `self`'s target has when it is a baseline,
    /// else per packet).
    pub fn baseline(&self) -> ThroughputConfig {
        let mode = match self.target {
            Target::Baseline(m) => m,
            Target::Turn(_) => Batching::PerPacket,
        };
        ThroughputConfig { target: Target::Baseline(mode), indications: false, ..self.clone() }
    }
}

/// The server's cost over the measuring window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerCost {
    /// What was measured: `pid N`, or the baseline forwarder's thread.
    pub source: String,
    /// CPU time (user + system), seconds.
    pub cpu_s: f64,
    /// Packets relayed (each direction counts: client → peer and peer →
    /// client).
    pub relayed_packets: u64,
    /// CPU microseconds per relayed packet.
    pub cpu_us_per_packet: Option<f64>,
    /// Memory before the allocations were made.
    pub memory_before: Option<Memory>,
    /// Memory after the run.
    pub memory_after: Option<Memory>,
    /// Growth of VmRSS per allocation, bytes.
    pub bytes_per_allocation: Option<f64>,
}

impl ServerCost {
    fn from_samples(
        pid: u32,
        before: Option<procfs::ProcSample>,
        start: Option<procfs::ProcSample>,
        end: Option<procfs::ProcSample>,
        relayed: u64,
        allocations: usize,
    ) -> ServerCost {
        let cpu = match (start, end) {
            (Some(s), Some(e)) => e.cpu.saturating_sub(s.cpu).as_secs_f64(),
            _ => 0.0,
        };
        let per_alloc = match (before, end) {
            (Some(b), Some(e)) if allocations > 0 => {
                Some((e.memory.rss_kib as f64 - b.memory.rss_kib as f64) * 1024.0 / allocations as f64)
            }
            _ => None,
        };
        ServerCost {
            source: format!("pid {pid}"),
            cpu_s: cpu,
            relayed_packets: relayed,
            cpu_us_per_packet: (relayed > 0 && end.is_some()).then(|| cpu * 1e6 / relayed as f64),
            memory_before: before.map(|s| s.memory),
            memory_after: end.map(|s| s.memory),
            bytes_per_allocation: per_alloc,
        }
    }
}

/// The whole machine's CPU over the measuring window: every core's busy
/// time (`/proc/stat`: user, nice, system, irq, softirq), whoever spent it
/// — the server, the kernel's softirq work for loopback wherever it ran,
/// turn-bench itself, and anything else the machine ran meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MachineCost {
    /// Where it was read: `/proc/stat, N cores`.
    pub source: String,
    /// Cores of the machine.
    pub cores: usize,
    /// Busy CPU time of all cores together, seconds.
    pub cpu_s: f64,
    /// Busy share of all cores over the window, percent (100: every core
    /// busy all the time).
    pub busy_pct: f64,
    /// Packets relayed (both directions, as the server's cost counts them).
    pub relayed_packets: u64,
    /// Busy CPU microseconds of the whole machine per relayed packet: the
    /// `machine_cpu_us_per_packet` of `compare`.
    pub cpu_us_per_packet: Option<f64>,
}

impl MachineCost {
    fn from_samples(start: procfs::MachineSample, end: procfs::MachineSample, relayed: u64) -> MachineCost {
        let cpu = end.busy_since(&start).as_secs_f64();
        MachineCost {
            source: format!("/proc/stat, {} cores", end.cores),
            cores: end.cores,
            cpu_s: cpu,
            busy_pct: end.busy_percent_since(&start),
            relayed_packets: relayed,
            cpu_us_per_packet: (relayed > 0).then(|| cpu * 1e6 / relayed as f64),
        }
    }
}

impl fmt::Display for MachineCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} cores: {:.3} s CPU ({:.0} % busy)", self.cores, self.cpu_s, self.busy_pct)?;
        if let Some(us) = self.cpu_us_per_packet {
            write!(f, ", {us:.2} µs CPU per relayed packet ({} relayed)", group(self.relayed_packets))?;
        }
        Ok(())
    }
}

/// How turn-bench's sockets and the baseline forwarder batched.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BatchingReport {
    /// turn-bench's own sockets (generator and peers): `gso-gro` or
    /// `per-packet`.
    pub mode: Batching,
    /// The generator's client sockets (UDP only).
    pub generator: BatchCounters,
    /// The peers' sockets.
    pub peers: BatchCounters,
    /// The baseline forwarder's mode (baseline targets only).
    pub forwarder_mode: Option<Batching>,
    /// What the forwarder batched (baseline targets only).
    pub forwarder: Option<BatchCounters>,
}

/// CPU use of the load generator.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GeneratorCpu {
    /// Each generator thread while sending.
    pub threads: Vec<WorkerCpu>,
    /// The busiest thread (a sender, or the peer), percent of one core,
    /// not counting the time a sender spun idle waiting for the next packet
    /// to be due.
    pub max_percent: f64,
    /// The generator's threads together (senders, less idle spinning, and
    /// the peer), percent of the cores the process may run on (its CPU
    /// affinity: `taskset -c 1 turn-bench ...` puts them all on one core).
    pub cores_percent: f64,
    /// How many cores that is.
    pub cores: usize,
    /// Whether a generator thread, or the generator's threads together on
    /// their cores, were busy at least [`SATURATION_PERCENT`] of the time:
    /// the generator itself may have been the bottleneck.
    pub saturated: bool,
    /// CPU time of the whole harness process while sending (from
    /// /proc/self/stat; includes the peer, and an in-process server).
    pub process_cpu_s: f64,
}

impl GeneratorCpu {
    /// Judges whether the generator saturated: `workers` sent for `wall_s`
    /// seconds beside peers that used `peer_cpus`, all on `cores` cores.
    pub fn judge(
        workers: Vec<WorkerCpu>,
        peer_cpus: &[Duration],
        wall_s: f64,
        cores: usize,
        process: Duration,
    ) -> Self {
        let peer_max = peer_cpus.iter().max().copied().unwrap_or_default();
        let peer_percent = 100.0 * peer_max.as_secs_f64() / wall_s.max(1e-9);
        let max_percent = workers.iter().map(WorkerCpu::busy_percent).fold(peer_percent, f64::max);
        let cores = cores.max(1);
        let peer_cpu: Duration = peer_cpus.iter().sum();
        let busy_s: f64 =
            workers.iter().map(|w| (w.cpu_s - w.idle_spin_s).max(0.0)).sum::<f64>() + peer_cpu.as_secs_f64();
        let cores_percent = 100.0 * busy_s / wall_s.max(1e-9) / cores as f64;
        GeneratorCpu {
            threads: workers,
            max_percent,
            cores_percent,
            cores,
            saturated: max_percent >= SATURATION_PERCENT || cores_percent >= SATURATION_PERCENT,
            process_cpu_s: process.as_secs_f64(),
        }
    }
}

/// What the peer saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerReport {
    /// Datagrams the peer received.
    pub received: u64,
    /// Datagrams it echoed.
    pub echoed: u64,
    /// Echoes the kernel refused.
    pub echo_failed: u64,
    /// Its thread's CPU time, seconds (all peers together).
    pub cpu_s: f64,
    /// Datagrams each peer received (see [`ThroughputConfig::peers`]).
    pub received_per_peer: Vec<u64>,
}

/// The result of a throughput, latency or baseline run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ThroughputReport {
    /// `throughput`, `latency` or `baseline`.
    pub scenario: &'static str,
    /// What was measured.
    pub target: String,
    /// Client transport.
    pub transport: TransportKind,
    /// `channel-data` or `send-indication`.
    pub framing: &'static str,
    /// Whether the peer echoed or sank.
    pub mode: PeerMode,
    /// Allocations asked for.
    pub allocations: usize,
    /// Allocations set up.
    pub allocations_ok: usize,
    /// Why the others failed (distinct reasons, first few).
    pub allocation_errors: Vec<String>,
    /// Time to set every flow up, seconds.
    pub setup_s: f64,
    /// Payload bytes per packet.
    pub size: usize,
    /// Requested packets/s (0: as fast as possible).
    pub rate: u64,
    /// Generator threads.
    pub threads: usize,
    /// Packets in flight allowed per thread (0: open loop).
    pub window: u64,
    /// Time spent sending, seconds.
    pub duration_s: f64,
    /// Packets sent.
    pub sent: u64,
    /// Packets the kernel refused to send (full socket buffer).
    pub send_failed: u64,
    /// Packets that made the whole trip (back at the client when echoing,
    /// at the peer when sinking).
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Loss, percent of sent.
    pub loss_pct: f64,
    /// Packets that arrived after a higher sequence number of their flow.
    pub reordered: u64,
    /// Datagrams received that were not the harness's.
    pub foreign: u64,
    /// Sent packets per second.
    pub sent_pps: f64,
    /// Received packets per second.
    pub received_pps: f64,
    /// Sent payload, Mbit/s.
    pub sent_mbps: f64,
    /// Received payload, Mbit/s.
    pub received_mbps: f64,
    /// `rtt` (echo) or `one-way` (sink).
    pub latency_kind: &'static str,
    /// Latency percentiles.
    pub latency: LatencySummary,
    /// The peer's counters.
    pub peer: PeerReport,
    /// The generator's CPU use.
    pub generator: GeneratorCpu,
    /// The server's cost, when its pid was given (or the forwarder's).
    pub server: Option<ServerCost>,
    /// The whole machine's CPU per relayed packet (all cores; `None` when
    /// /proc/stat could not be read).
    pub machine_cpu: Option<MachineCost>,
    /// Whether turn-bench and the forwarder batched, and how much.
    pub batching: BatchingReport,
    /// Refreshes of allocations, permissions and channels during the run.
    pub refreshes: RefreshStats,
    /// Allocations released at the end.
    pub released: usize,
    /// Releases that failed.
    pub release_failed: usize,
    /// One sample per second.
    pub timeline: Vec<Sample>,
    /// The latency percentile curve (see [`percentile_curve`]), for plots.
    pub percentiles: Vec<PercentilePoint>,
}

/// One point of a latency percentile curve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PercentilePoint {
    /// Percentile, 0 to 99.99.
    pub percentile: f64,
    /// Latency at that percentile, µs.
    pub us: f64,
}

/// Percentiles 0, 20.6, 36.9, 50, …, 90, …, 99, …, 99.9, …, 99.99 (ten per
/// "nine", evenly spaced on a log scale of `1 - p`) of a nanosecond
/// histogram; empty when it has no samples.
pub fn percentile_curve(h: &hdrhistogram::Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=40)
        .map(|k| {
            let q = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
            PercentilePoint { percentile: q * 100.0, us: h.value_at_quantile(q) as f64 / 1000.0 }
        })
        .collect()
}

/// Runs a throughput test (see [`ThroughputConfig::new`]).
pub fn run_throughput(cfg: &ThroughputConfig) -> Result<ThroughputReport, BenchError> {
    run(cfg, "throughput")
}

/// Runs a latency test (see [`ThroughputConfig::latency`] for its usual
/// settings); the same loop, reported with the latency first.
pub fn run_latency(cfg: &ThroughputConfig) -> Result<ThroughputReport, BenchError> {
    run(cfg, "latency")
}

/// Drives the same traffic as `cfg` through the harness's own forwarder
/// (whatever `cfg.target` says): the kernel's own cost per packet.
pub fn run_baseline(cfg: &ThroughputConfig) -> Result<ThroughputReport, BenchError> {
    run(&cfg.baseline(), "baseline")
}

/// A flow's connection to the server: its own UDP socket, or a TCP/TLS
/// stream taken over by the measuring loop.
enum FlowConn {
    Udp(UdpTransport),
    Stream(StreamConn),
}

struct TurnFlow {
    conn: FlowConn,
    /// Lent to the flow's refresher during the run.
    core: Option<TurnSession>,
    binding: Request,
    lifetime: u32,
    bound_at: Instant,
}

/// Allocates and binds over `t`; returns the transport and client state.
fn allocate_and_bind<T: Transport>(
    t: T,
    server: &TurnServer,
    binding: &Request,
) -> Result<(T, TurnSession, u32), crate::client::ClientError> {
    let mut c = TurnClient::new(t, server.client_config())?;
    let granted = c.request(Request::Allocate { lifetime: None })?;
    // RFC 8656 default when the server does not say.
    let lifetime = granted.lifetime.unwrap_or(600);
    c.request(binding.clone())?;
    let (t, core) = c.into_parts();
    Ok((t, core, lifetime))
}

fn client_local(cfg: &ThroughputConfig, server: SocketAddr) -> SocketAddr {
    match cfg.client_ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None => crate::net::unspecified_for(server),
    }
}

fn setup_turn(
    cfg: &ThroughputConfig,
    server: &TurnServer,
    peers: &[SocketAddr],
    errors: &mut Vec<String>,
) -> Result<Vec<TurnFlow>, BenchError> {
    let mut flows = Vec::with_capacity(cfg.allocations);
    let mut failed = 0usize;
    // One TLS configuration (trust, name) for every connection.
    let tls = match server.transport {
        TransportKind::Tls => Some(server.tls_connector().map_err(|e| BenchError::Config(e.to_string()))?),
        _ => None,
    };
    let tls = tls.as_ref();
    for k in 0..cfg.allocations {
        let peer = peers[k % peers.len()];
        let r = (|| {
            let binding = if cfg.indications {
                Request::CreatePermission { peers: vec![peer] }
            } else {
                Request::ChannelBind { channel: CHANNEL, peer }
            };
            let local = client_local(cfg, server.addr);
            let (conn, core, lifetime) = match server.transport {
                TransportKind::Udp => {
                    let t = UdpTransport::connect(server.addr, Some(local))?;
                    crate::net::grow_buffers(t.socket(), crate::net::SOCKET_BUFFER);
                    let (t, core, lifetime) = allocate_and_bind(t, server, &binding)?;
                    (FlowConn::Udp(t), core, lifetime)
                }
                TransportKind::Tcp => {
                    let t = TcpTransport::connect(server.addr, Some(local))?;
                    let (t, core, lifetime) = allocate_and_bind(t, server, &binding)?;
                    let (stream, pending) = t.into_parts();
                    (FlowConn::Stream(StreamConn::new(stream, None, &pending)?), core, lifetime)
                }
                TransportKind::Tls => {
                    let Some(connector) = tls else { unreachable!("made above for TLS") };
                    let t = TlsTransport::connect(server.addr, Some(local), connector)?;
                    let (t, core, lifetime) = allocate_and_bind(t, server, &binding)?;
                    let (stream, conn, pending) = t.into_parts();
                    (FlowConn::Stream(StreamConn::new(stream, Some(conn), &pending)?), core, lifetime)
                }
            };
            let bound_at = Instant::now();
            Ok::<_, crate::client::ClientError>(TurnFlow { conn, core: Some(core), binding, lifetime, bound_at })
        })();
        match r {
            Ok(f) => flows.push(f),
            Err(e) => {
                failed += 1;
                let msg = e.to_string();
                if flows.is_empty() && failed == 1 && cfg.allocations > 0 {
                    // The first one failing is a configuration problem
                    // (address, credentials, peer policy): say so at once.
                    return Err(BenchError::Setup(format!("first allocation failed: {msg}")));
                }
                let timed_out = matches!(e, crate::client::ClientError::Timeout { .. });
                if errors.len() < 8 && !errors.contains(&msg) {
                    errors.push(msg);
                }
                if timed_out {
                    // The server stopped answering: waiting out the timers
                    // of every remaining allocation would take minutes.
                    errors.push("setup stopped after a timeout".into());
                    break;
                }
            }
        }
    }
    Ok(flows)
}

/// Releases one flow's allocation (Refresh 0), over its own connection.
fn release_one(conn: FlowConn, core: TurnSession, server: SocketAddr) -> Result<(), crate::client::ClientError> {
    match conn {
        FlowConn::Udp(t) => {
            t.socket().set_nonblocking(false)?;
            TurnClient::from_parts(t, core).refresh(0).map(drop)
        }
        FlowConn::Stream(s) => {
            let (stream, tls, pending) = s.into_parts()?;
            match tls {
                None => {
                    TurnClient::from_parts(TcpTransport::from_parts(stream, server, pending), core).refresh(0).map(drop)
                }
                Some(conn) => TurnClient::from_parts(TlsTransport::from_parts(stream, conn, server, pending), core)
                    .refresh(0)
                    .map(drop),
            }
        }
    }
}

fn release(flows: Vec<TurnFlow>, server: SocketAddr) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    let total = flows.len();
    for f in flows {
        let Some(core) = f.core else {
            failed += 1;
            continue;
        };
        match release_one(f.conn, core, server) {
            Ok(()) => ok += 1,
            // The server stopped answering: the rest would time out too.
            Err(crate::client::ClientError::Timeout { .. }) => return (ok, total - ok),
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

fn run(cfg: &ThroughputConfig, scenario: &'static str) -> Result<ThroughputReport, BenchError> {
    if cfg.allocations == 0 {
        return Err(BenchError::Config("at least one allocation is needed".into()));
    }
    if cfg.size < PROBE_LEN || cfg.size > traffic::MAX_PAYLOAD {
        return Err(BenchError::Config(format!("size must be between {PROBE_LEN} and {} bytes", traffic::MAX_PAYLOAD)));
    }
    if cfg.duration.is_zero() {
        return Err(BenchError::Config("duration must be positive".into()));
    }
    if cfg.peers == 0 || cfg.peers > 256 {
        return Err(BenchError::Config("peers must be between 1 and 256".into()));
    }
    if cfg.peers > 1 && cfg.indications {
        return Err(BenchError::Config("several peers need ChannelData (not Send indications)".into()));
    }
    let epoch = Instant::now();
    let mode = if cfg.echo { PeerMode::Echo } else { PeerMode::Sink };
    let peers = (0..cfg.peers)
        .map(|_| Peer::start(cfg.peer_ip, mode, epoch, cfg.batching))
        .collect::<Result<Vec<Peer>, _>>()
        .map_err(|e| BenchError::Setup(format!("peer on {}: {e}", cfg.peer_ip)))?;
    let peer_addrs: Vec<SocketAddr> = peers.iter().map(Peer::addr).collect();
    let peer_addr = peer_addrs[0];
    let server_before = cfg.server_pid.and_then(|p| procfs::sample(p).ok());
    let setup_start = Instant::now();
    let mut errors = Vec::new();
    let mut forwarder = None;
    let mut turn_flows = Vec::new();
    let mut plain_socks = Vec::new();
    let (target_name, framing, dest) = match &cfg.target {
        Target::Turn(server) => {
            turn_flows = setup_turn(cfg, server, &peer_addrs, &mut errors)?;
            for f in &turn_flows {
                if let FlowConn::Udp(t) = &f.conn {
                    t.socket().set_nonblocking(true)?;
                }
            }
            let framing = if cfg.indications { Framing::Indication(peer_addr) } else { Framing::Channel(CHANNEL) };
            (format!("TURN {} (user {})", server.addr, server.credentials.display_user()), framing, server.addr)
        }
        Target::Baseline(fw_batching) => {
            let ip = match cfg.peer_ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            };
            let fw = Forwarder::start(ip, peer_addr, cfg.allocations, cfg.forwarder_cpu, *fw_batching)?;
            let addr = fw.addr();
            for _ in 0..cfg.allocations {
                let s = crate::net::data_socket(client_local(cfg, addr))?;
                s.connect(addr)?;
                plain_socks.push(s);
            }
            forwarder = Some(fw);
            let name = match fw_batching {
                Batching::PerPacket => format!("baseline forwarder {addr}"),
                b => format!("baseline forwarder ({b}) {addr}"),
            };
            (name, Framing::Channel(BASELINE_CHANNEL), addr)
        }
    };
    let setup_s = setup_start.elapsed().as_secs_f64();
    let refreshing = !cfg.refresh_interval.is_zero();
    let mut flows: Vec<Flow<'_>> = match cfg.target {
        Target::Turn(_) => turn_flows
            .iter_mut()
            .map(|f| {
                let refresh = f
                    .core
                    .take_if(|_| refreshing)
                    .map(|core| Refresher::new(core, f.binding.clone(), f.lifetime, cfg.refresh_interval, f.bound_at));
                let io = match &mut f.conn {
                    // Where setup left the flow (after a 300, the alternate).
                    FlowConn::Udp(t) => FlowIo::Datagram { sock: t.socket(), dest: t.server_addr() },
                    FlowConn::Stream(s) => FlowIo::Stream(s),
                };
                Flow { io, refresh }
            })
            .collect(),
        Target::Baseline(_) => {
            plain_socks.iter().map(|s| Flow { io: FlowIo::Datagram { sock: s, dest }, refresh: None }).collect()
        }
    };
    let ecfg = EngineConfig {
        size: cfg.size,
        rate: cfg.rate,
        burst: cfg.burst,
        window: cfg.window,
        duration: cfg.duration,
        echo: cfg.echo,
        framing,
        threads: cfg.threads,
        cpus: cfg.cpu.clone(),
        drain: cfg.drain,
        live: cfg.live,
        label: scenario,
        batching: cfg.batching,
    };
    // The measuring window: the server's CPU and every core's, read at the
    // same two moments.
    let machine_start = procfs::machine().ok();
    let server_start = cfg.server_pid.and_then(|p| procfs::sample(p).ok());
    let result = traffic::run(&mut flows, &ecfg, epoch, &|| peers.iter().map(Peer::received).sum());
    let server_end = cfg.server_pid.and_then(|p| procfs::sample(p).ok());
    let machine_end = procfs::machine().ok();
    let cores: Vec<Option<TurnSession>> = flows.into_iter().map(|f| f.refresh.map(Refresher::into_core)).collect();
    for (f, core) in turn_flows.iter_mut().zip(cores) {
        if core.is_some() {
            f.core = core;
        }
    }
    let mut peer_cpus = Vec::with_capacity(peers.len());
    let mut received_per_peer = Vec::with_capacity(peers.len());
    let mut peer_stats: Option<PeerStats> = None;
    for p in peers {
        let st = p.stop()?;
        peer_cpus.push(st.cpu);
        received_per_peer.push(st.received);
        match peer_stats.as_mut() {
            Some(all) => all.add(&st)?,
            None => peer_stats = Some(st),
        }
    }
    let peer_stats = peer_stats.ok_or_else(|| BenchError::Config("no peer".into()))?;
    let fw_stats: Option<ForwarderStats> = match forwarder {
        Some(f) => Some(f.stop()?),
        None => None,
    };
    let r = result?;
    let allocations_ok = turn_flows.len() + plain_socks.len();
    let (released, release_failed) = if cfg.release { release(turn_flows, dest) } else { (0, 0) };

    let secs = r.send_wall.as_secs_f64().max(1e-9);
    let received = if cfg.echo { r.received } else { peer_stats.received };
    let lost = r.sent.saturating_sub(received);
    let hist = if cfg.echo { &r.rtt } else { &peer_stats.one_way };
    let latency = LatencySummary::of(hist);
    let percentiles = percentile_curve(hist);
    let relayed = peer_stats.received + r.received;
    let server = match (&fw_stats, cfg.server_pid) {
        (Some(fw), _) => {
            let n = fw.to_peer + fw.to_client;
            Some(ServerCost {
                source: "baseline forwarder thread".into(),
                cpu_s: fw.cpu_us as f64 / 1e6,
                relayed_packets: n,
                cpu_us_per_packet: (n > 0).then(|| fw.cpu_us as f64 / n as f64),
                ..ServerCost::default()
            })
        }
        (None, Some(pid)) => {
            Some(ServerCost::from_samples(pid, server_before, server_start, server_end, relayed, allocations_ok))
        }
        (None, None) => None,
    };
    let machine_relayed = server.as_ref().map_or(relayed, |s| s.relayed_packets);
    let machine_cpu = match (machine_start, machine_end) {
        (Some(a), Some(b)) => Some(MachineCost::from_samples(a, b, machine_relayed)),
        _ => None,
    };
    let batching = BatchingReport {
        mode: cfg.batching,
        generator: r.batch,
        peers: peer_stats.batching,
        forwarder_mode: fw_stats.map(|f| f.batching),
        forwarder: fw_stats.map(|f| f.batch),
    };
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let generator = GeneratorCpu::judge(r.workers, &peer_cpus, secs, cores, r.process_cpu);
    Ok(ThroughputReport {
        scenario,
        target: target_name,
        transport: match &cfg.target {
            Target::Turn(server) => server.transport,
            Target::Baseline(_) => TransportKind::Udp,
        },
        framing: if matches!(framing, Framing::Indication(_)) { "send-indication" } else { "channel-data" },
        mode,
        allocations: cfg.allocations,
        allocations_ok,
        allocation_errors: errors,
        setup_s,
        size: cfg.size,
        rate: cfg.rate,
        threads: generator.threads.len(),
        window: cfg.window,
        duration_s: secs,
        sent: r.sent,
        send_failed: r.send_failed,
        received,
        lost,
        loss_pct: if r.sent > 0 { 100.0 * lost as f64 / r.sent as f64 } else { 0.0 },
        reordered: r.reordered,
        foreign: r.foreign,
        sent_pps: r.sent as f64 / secs,
        received_pps: received as f64 / secs,
        sent_mbps: (r.sent * cfg.size as u64 * 8) as f64 / secs / 1e6,
        received_mbps: (received * cfg.size as u64 * 8) as f64 / secs / 1e6,
        latency_kind: if cfg.echo { "rtt" } else { "one-way" },
        latency,
        peer: PeerReport {
            received: peer_stats.received,
            echoed: peer_stats.echoed,
            echo_failed: peer_stats.echo_failed,
            cpu_s: peer_stats.cpu.as_secs_f64(),
            received_per_peer,
        },
        generator,
        server,
        machine_cpu,
        batching,
        refreshes: r.refresh,
        released,
        release_failed,
        timeline: r.timeline,
        percentiles,
    })
}

impl fmt::Display for ServerCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:.3} s CPU", self.source, self.cpu_s)?;
        if let Some(us) = self.cpu_us_per_packet {
            write!(f, ", {us:.2} µs CPU per relayed packet ({} relayed)", group(self.relayed_packets))?;
        }
        if let Some(b) = self.bytes_per_allocation {
            write!(f, ", RSS {:+.0} bytes per allocation", b)?;
        }
        if let Some(m) = self.memory_after {
            write!(f, " (VmRSS {} KiB, VmHWM {} KiB)", group(m.rss_kib), group(m.hwm_kib))?;
        }
        Ok(())
    }
}

impl fmt::Display for ThroughputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.rate == 0 { "as fast as possible".to_owned() } else { format!("{} pps", group(self.rate)) };
        writeln!(f, "turn-bench {}: {}", self.scenario, self.target)?;
        writeln!(
            f,
            "  traffic      {} B payloads, {}{}, {} over {}, peer {}, {} thread(s), {:.2} s",
            self.size,
            rate,
            if self.window > 0 { format!(" (window {})", self.window) } else { String::new() },
            self.framing,
            self.transport.name(),
            if self.mode == PeerMode::Echo { "echoes" } else { "sinks" },
            self.threads,
            self.duration_s
        )?;
        writeln!(
            f,
            "  allocations  {} of {} set up in {:.3} s{}",
            self.allocations_ok,
            self.allocations,
            self.setup_s,
            if self.allocation_errors.is_empty() {
                String::new()
            } else {
                format!(" (errors: {})", self.allocation_errors.join("; "))
            }
        )?;
        writeln!(f, "  {:<12} {:>14} {:>14}", "", "sent", "received")?;
        writeln!(f, "  {:<12} {:>14} {:>14}", "packets", group(self.sent), group(self.received))?;
        writeln!(
            f,
            "  {:<12} {:>14} {:>14}",
            "packets/s",
            group(self.sent_pps.round() as u64),
            group(self.received_pps.round() as u64)
        )?;
        writeln!(f, "  {:<12} {:>14.2} {:>14.2}", "Mbit/s", self.sent_mbps, self.received_mbps)?;
        writeln!(
            f,
            "  loss         {:.3} % ({} lost, {} refused by the local kernel), {} reordered",
            self.loss_pct,
            group(self.lost),
            group(self.send_failed),
            group(self.reordered)
        )?;
        writeln!(f, "  {:<12} {}", if self.latency_kind == "rtt" { "RTT" } else { "one-way" }, self.latency)?;
        let g = &self.generator;
        writeln!(
            f,
            "  generator    busiest thread {:.0} % of a core, all with the peer {:.0} % of {} core(s){}; process CPU {:.2} s; peer CPU {:.2} s",
            g.max_percent,
            g.cores_percent,
            g.cores,
            if g.saturated { " — SATURATED: the generator may be the bottleneck" } else { " (not saturated)" },
            g.process_cpu_s,
            self.peer.cpu_s
        )?;
        if let Some(s) = &self.server {
            writeln!(f, "  server       {s}")?;
        }
        if let Some(m) = &self.machine_cpu {
            writeln!(f, "  machine      {m}")?;
        }
        let b = &self.batching;
        match b.mode {
            Batching::PerPacket => writeln!(f, "  batching     turn-bench per packet (no GSO, no GRO)")?,
            mode => {
                writeln!(f, "  batching     turn-bench {mode}: generator {}", b.generator)?;
                writeln!(f, "  {:<12} peers {}", "", b.peers)?;
            }
        }
        if let (Some(mode), Some(c)) = (b.forwarder_mode, &b.forwarder) {
            match mode {
                Batching::PerPacket => writeln!(f, "  forwarder    per packet")?,
                mode => writeln!(f, "  forwarder    {mode}: {c}")?,
            }
        }
        let rf = &self.refreshes;
        if rf.started > 0 {
            writeln!(
                f,
                "  refreshes    {} ok of {} ({} failed, {} retransmitted){}",
                group(rf.ok),
                group(rf.started),
                rf.failed,
                rf.retransmitted,
                rf.first_error.as_ref().map(|e| format!(", first error: {e}")).unwrap_or_default()
            )?;
        }
        if self.released + self.release_failed > 0 {
            writeln!(f, "  released     {} ({} failed)", self.released, self.release_failed)?;
        }
        Ok(())
    }
}

/// A one-line summary (compare tables, logs).
pub fn one_line(r: &ThroughputReport) -> String {
    format!(
        "{} pps received, loss {:.3} %, {} p50 {} p99 {}",
        group(r.received_pps.round() as u64),
        r.loss_pct,
        r.latency_kind,
        fmt_us(r.latency.p50_us),
        fmt_us(r.latency.p99_us)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_sharing_the_senders_core_counts_towards_saturation() {
        let w = |cpu_s, idle_spin_s| WorkerCpu { cpu_s, wall_s: 1.0, idle_spin_s };
        // One sender half busy, the peer 45 %: one core 95 % busy.
        let g = GeneratorCpu::judge(vec![w(0.5, 0.0)], &[Duration::from_millis(450)], 1.0, 1, Duration::ZERO);
        assert!((g.max_percent - 50.0).abs() < 1e-9 && (g.cores_percent - 95.0).abs() < 1e-9, "{g:?}");
        assert!(g.saturated);
        // The same on two cores is not saturated; idle spinning is not work.
        let g = GeneratorCpu::judge(vec![w(0.5, 0.0)], &[Duration::from_millis(450)], 1.0, 2, Duration::ZERO);
        assert!(!g.saturated && (g.cores_percent - 47.5).abs() < 1e-9);
        let g = GeneratorCpu::judge(vec![w(1.0, 0.9)], &[], 1.0, 1, Duration::ZERO);
        assert!(!g.saturated && (g.max_percent - 10.0).abs() < 1e-9);
        // One thread flat out is saturated whatever the cores: a sender, or
        // the peer echoing for all of them.
        let g = GeneratorCpu::judge(vec![w(0.95, 0.0), w(0.0, 0.0)], &[], 1.0, 16, Duration::ZERO);
        assert!(g.saturated);
        let g = GeneratorCpu::judge(
            vec![w(0.2, 0.0); 8],
            &[Duration::from_millis(930), Duration::from_millis(100)],
            1.0,
            16,
            Duration::ZERO,
        );
        assert!(g.saturated && (g.max_percent - 93.0).abs() < 1e-9, "{g:?}");
    }
}
