//! The `churn` scenario, for soak tests: allocations created, used and
//! released continuously. Each cycle opens a fresh socket, allocates (with
//! the 401 challenge), binds a channel to the echoing peer, makes a few
//! ChannelData round trips, releases the allocation (Refresh 0) and closes
//! the socket. Up to `concurrency` cycles run at once, started at `rate`
//! per second (or as fast as they finish) for `duration`. Reports cycles
//! per second, success rate, failures by step and error, round-trip
//! success and, given the server's pid, its RSS and open descriptors at the
//! start and the end, so that a soak shows whether resources come back.
//! One thread drives every cycle over epoll; every wait is bounded.
//!
//! Cycles run over the server's [`TurnServer::transport`]: UDP, TCP or TLS
//! (a connection per cycle, closed at its end; over TLS with the server's
//! [`TurnServer::tls`] options).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use relay_io::sys::{Epoll, empty_event};
use serde::Serialize;

use crate::BenchError;
use crate::batching::Batching;
use crate::client::conn::Conn;
use crate::client::{
    ClientError, Handled, Poll, Received, Request, TlsConnector, TransportKind, TurnServer, TurnSession, parse_data,
};
use crate::payload::{PROBE_LEN, Probe};
use crate::peer::{Peer, PeerMode};
use crate::procfs;
use crate::stats::group;
use crate::throughput::CHANNEL;

/// Settings of a churn run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnConfig {
    /// The server.
    pub server: TurnServer,
    /// No cycle starts after this; those running then finish (bounded by
    /// the transaction timeout).
    pub duration: Duration,
    /// New allocations per second; 0: as fast as cycles finish.
    pub rate: u64,
    /// Cycles at once.
    pub concurrency: usize,
    /// ChannelData round trips per allocation.
    pub round_trips: u32,
    /// How long to wait for each echo.
    pub echo_timeout: Duration,
    /// Where the echoing peer binds.
    pub peer_ip: IpAddr,
    /// Local address of the client sockets.
    pub client_ip: Option<IpAddr>,
    /// The server's pid: its RSS and open descriptors at start and end.
    pub server_pid: Option<u32>,
    /// Print a live line per second on stderr.
    pub live: bool,
}

impl ChurnConfig {
    /// 30 s of churn, 100 allocations/s, 16 at once, 3 round trips each.
    pub fn new(server: TurnServer) -> ChurnConfig {
        ChurnConfig {
            server,
            duration: Duration::from_secs(30),
            rate: 100,
            concurrency: 16,
            round_trips: 3,
            echo_timeout: Duration::from_millis(500),
            peer_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            client_ip: None,
            server_pid: None,
            live: false,
        }
    }
}

/// A process's resources at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// The server's resources at the start and the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerResources {
    /// `pid N`.
    pub source: String,
    /// Before the first allocation.
    pub start: Option<Resources>,
    /// After the last release.
    pub end: Option<Resources>,
}

/// The result of a churn run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChurnReport {
    /// `churn`.
    pub scenario: &'static str,
    /// The server.
    pub target: String,
    /// Client transport.
    pub transport: TransportKind,
    /// Requested allocations per second (0: unpaced).
    pub rate: u64,
    /// Cycles at once.
    pub concurrency: usize,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Cycles started.
    pub started: u64,
    /// Cycles that allocated, bound, and released successfully.
    pub completed: u64,
    /// Completed cycles per second.
    pub churn_per_s: f64,
    /// Completed, percent of started.
    pub success_pct: f64,
    /// Failures by step and error (`Allocate: 486 ...`, `Refresh: timeout`).
    pub failures: BTreeMap<String, u64>,
    /// ChannelData probes sent.
    pub data_sent: u64,
    /// Echoes received.
    pub data_received: u64,
    /// Received, percent of sent.
    pub data_success_pct: f64,
    /// The server's resources, when its pid was given.
    pub server: Option<ServerResources>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Allocate,
    Bind,
    Data { seq: u32, deadline: Instant },
    Release,
}

struct Cycle {
    transport: Conn,
    core: TurnSession,
    stage: Stage,
    /// Whether the server holds an allocation for it.
    allocated: bool,
    failed: bool,
}

/// Open descriptors of `pid` (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        e?;
        n += 1;
    }
    Ok(n)
}

fn resources(pid: u32) -> Option<Resources> {
    let m = procfs::memory(pid).ok()?;
    Some(Resources { rss_kib: m.rss_kib, fds: open_fds(pid).ok()? })
}

struct Driver<'a> {
    cfg: &'a ChurnConfig,
    peer: SocketAddr,
    ep: Epoll,
    /// Slot k holds cycle k while it runs.
    slots: Vec<Option<Cycle>>,
    buf: Vec<u8>,
    frame: Vec<u8>,
    /// For TLS cycles.
    tls: Option<TlsConnector>,
    r: ChurnReport,
}

fn step_name(s: Stage) -> &'static str {
    match s {
        Stage::Allocate => "Allocate",
        Stage::Bind => "ChannelBind",
        Stage::Data { .. } => "data",
        Stage::Release => "Refresh",
    }
}

impl Driver<'_> {
    fn fail(&mut self, stage: Stage, e: &ClientError) {
        let reason = match e {
            ClientError::Timeout { .. } => "timeout".to_owned(),
            ClientError::Rejected { code, reason, .. } => format!("{code} {reason}"),
            e => e.to_string(),
        };
        *self.r.failures.entry(format!("{}: {reason}", step_name(stage))).or_default() += 1;
    }

    fn open(&mut self, k: usize, local: SocketAddr) -> Result<(), BenchError> {
        self.r.started += 1;
        let server = &self.cfg.server;
        let t = match Conn::open(server.transport, server.addr, local, self.tls.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                self.fail(Stage::Allocate, &ClientError::Io(e));
                return Ok(());
            }
        };
        self.ep.add(t.fd(), k as u64)?;
        let core = crate::client::session(server.client_config());
        self.slots[k] = Some(Cycle { transport: t, core, stage: Stage::Allocate, allocated: false, failed: false });
        self.request(k, Request::Allocate { lifetime: None });
        Ok(())
    }

    fn request(&mut self, k: usize, req: Request) {
        let Some(c) = self.slots[k].as_mut() else { return };
        let r = match c.core.start(req, Instant::now()) {
            Ok(bytes) => c.transport.send(bytes).map_err(ClientError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.outcome(k, Err(e));
        }
    }

    fn send_probe(&mut self, k: usize, seq: u32) {
        let Some(c) = self.slots[k].as_mut() else { return };
        let mut payload = [0u8; PROBE_LEN];
        Probe { flow: k as u32, seq: u64::from(seq), sent_ns: 0 }.write(&mut payload);
        // Over a stream ChannelData is padded to 4 bytes (RFC 8656 §12.5).
        let padded = c.transport.is_stream();
        let n = relay_core::wire::channel_data::encode(&mut self.frame, CHANNEL, &payload, padded).unwrap_or(0);
        self.r.data_sent += 1;
        let _ = c.transport.send(&self.frame[..n]);
        c.stage = Stage::Data { seq, deadline: Instant::now() + self.cfg.echo_timeout };
    }

    /// The end of a step of cycle `k`: moves it on.
    fn outcome(&mut self, k: usize, r: Result<(), ClientError>) {
        let Some(c) = self.slots[k].as_mut() else { return };
        let stage = c.stage;
        if let Err(e) = &r {
            c.failed = true;
            self.fail(stage, e);
        }
        let c = self.slots[k].as_mut().expect("cycle");
        match (stage, r.is_ok()) {
            (Stage::Allocate, true) => {
                c.allocated = true;
                c.stage = Stage::Bind;
                let peer = self.peer;
                self.request(k, Request::ChannelBind { channel: CHANNEL, peer });
            }
            (Stage::Bind, true) if self.cfg.round_trips > 0 => self.send_probe(k, 0),
            (Stage::Data { seq, .. }, _) if seq + 1 < self.cfg.round_trips => self.send_probe(k, seq + 1),
            (Stage::Bind | Stage::Data { .. }, _) => {
                c.stage = Stage::Release;
                self.request(k, Request::Refresh { lifetime: 0 });
            }
            (Stage::Allocate, false) | (Stage::Release, _) => {
                if stage == Stage::Release && !c.failed {
                    self.r.completed += 1;
                }
                // Closing the socket removes it from the epoll set.
                self.slots[k] = None;
            }
        }
    }

    fn step(&mut self, timeout_ms: i32, events: &mut [libc::epoll_event]) -> io::Result<()> {
        let n = self.ep.wait(events, timeout_ms)?;
        for ev in &events[..n] {
            let k = ev.u64 as usize;
            // Bounded: a socket's queue holds finitely many datagrams.
            for _ in 0..64 {
                let Some(c) = self.slots.get_mut(k).and_then(Option::as_mut) else { break };
                let len = match c.transport.try_recv(&mut self.buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && !c.transport.is_stream() => continue,
                    Err(e) if c.transport.is_stream() => {
                        // The connection is gone (or its TLS failed): the
                        // cycle ends with this step failed.
                        let stage = c.stage;
                        let _ = self.ep.delete(c.transport.fd());
                        self.fail(stage, &ClientError::Io(e));
                        self.slots[k] = None;
                        break;
                    }
                    Err(_) => break,
                };
                let msg = &self.buf[..len];
                if let Stage::Data { seq, .. } = c.stage {
                    if let Some(Received::Channel(CHANNEL, r)) = parse_data(msg)
                        && Probe::read(&msg[r]).is_some_and(|p| p.flow == k as u32 && p.seq == u64::from(seq))
                    {
                        self.r.data_received += 1;
                        self.outcome(k, Ok(()));
                    }
                    continue;
                }
                let mut redirected = false;
                let out = match c.core.handle(msg, Instant::now()) {
                    Handled::Ignored | Handled::Discarded(_) => None,
                    Handled::Transmit(bytes) => c.transport.send(bytes).err().map(|e| Err(e.into())),
                    // The soak measures one server: a 300 is its answer.
                    Handled::Redirect { server, .. } => {
                        redirected = true;
                        let reason = format!("Try Alternate to {server} (churn does not follow redirects)");
                        Some(Err(ClientError::Rejected { method: "Allocate", code: 300, reason }))
                    }
                    Handled::Done(r) => Some(r.map(drop)),
                };
                if redirected {
                    c.core.cancel();
                }
                if let Some(r) = out {
                    self.outcome(k, r);
                }
            }
        }
        let now = Instant::now();
        for k in 0..self.slots.len() {
            let Some(c) = self.slots[k].as_mut() else { continue };
            let out = match c.stage {
                Stage::Data { deadline, .. } => (now >= deadline).then_some(Ok(())),
                _ => match c.core.poll(now) {
                    Poll::Transmit(bytes) => c.transport.send(bytes).err().map(|e| Err(e.into())),
                    Poll::Failed(e) => Some(Err(e)),
                    Poll::Wait(_) | Poll::Idle => None,
                },
            };
            if let Some(r) = out {
                self.outcome(k, r);
            }
        }
        Ok(())
    }

    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// Runs a churn test.
pub fn run_churn(cfg: &ChurnConfig) -> Result<ChurnReport, BenchError> {
    if cfg.concurrency == 0 || cfg.duration.is_zero() {
        return Err(BenchError::Config("concurrency and duration must be positive".into()));
    }
    let epoch = Instant::now();
    // Round trips one at a time: nothing for GSO or GRO to batch either way.
    let peer = Peer::start(cfg.peer_ip, PeerMode::Echo, epoch, Batching::default())
        .map_err(|e| BenchError::Setup(format!("peer on {}: {e}", cfg.peer_ip)))?;
    let local = match cfg.client_ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None => crate::net::unspecified_for(cfg.server.addr),
    };
    let mut d = Driver {
        cfg,
        peer: peer.addr(),
        ep: Epoll::new()?,
        slots: (0..cfg.concurrency).map(|_| None).collect(),
        buf: vec![0u8; 65_536],
        frame: vec![0u8; 64],
        tls: match cfg.server.transport {
            TransportKind::Tls => Some(cfg.server.tls_connector().map_err(|e| BenchError::Config(e.to_string()))?),
            _ => None,
        },
        r: ChurnReport {
            scenario: "churn",
            target: format!("TURN {} (user {})", cfg.server.addr, cfg.server.credentials.display_user()),
            transport: cfg.server.transport,
            rate: cfg.rate,
            concurrency: cfg.concurrency,
            wall_s: 0.0,
            started: 0,
            completed: 0,
            churn_per_s: 0.0,
            success_pct: 0.0,
            failures: BTreeMap::new(),
            data_sent: 0,
            data_received: 0,
            data_success_pct: 0.0,
            server: None,
        },
    };
    let mut events = vec![empty_event(); cfg.concurrency.min(1024)];
    let start_res = cfg.server_pid.and_then(resources);
    let start = Instant::now();
    let end = start + cfg.duration;
    // Those running at the end finish within their transactions' timeout
    // plus their round trips.
    let hard_end = end
        + cfg.server.client_config().transaction_timeout() * 3
        + cfg.echo_timeout * cfg.round_trips
        + Duration::from_secs(1);
    let mut tick = start + Duration::from_secs(1);
    let mut last = 0u64;
    loop {
        let now = Instant::now();
        if now < end {
            for k in 0..cfg.concurrency {
                let due = cfg.rate == 0
                    || u128::from(d.r.started)
                        < now.duration_since(start).as_nanos() * u128::from(cfg.rate) / 1_000_000_000;
                if !due {
                    break;
                }
                if d.slots[k].is_none() {
                    d.open(k, local)?;
                }
            }
        } else if d.running() == 0 || now >= hard_end {
            break;
        }
        d.step(if cfg.rate > 0 { 1 } else { 5 }, &mut events)?;
        let now = Instant::now();
        if now >= tick {
            if cfg.live {
                let failed: u64 = d.r.failures.values().sum();
                let _ = writeln!(
                    io::stderr().lock(),
                    "[churn {:>4.0} s] {:>8}/s  completed {:>8}  failures {:>6}  running {}",
                    now.duration_since(start).as_secs_f64(),
                    group(d.r.completed - last),
                    group(d.r.completed),
                    group(failed),
                    d.running()
                );
            }
            last = d.r.completed;
            tick += Duration::from_secs(1);
        }
    }
    // Whatever still runs at the hard end timed out.
    for k in 0..d.slots.len() {
        if let Some(c) = d.slots[k].take() {
            *d.r.failures.entry(format!("{}: timeout", step_name(c.stage))).or_default() += 1;
        }
    }
    let mut r = d.r;
    r.wall_s = start.elapsed().as_secs_f64();
    peer.stop()?;
    r.churn_per_s = r.completed as f64 / r.wall_s.max(1e-9);
    r.success_pct = if r.started > 0 { 100.0 * r.completed as f64 / r.started as f64 } else { 0.0 };
    r.data_success_pct = if r.data_sent > 0 { 100.0 * r.data_received as f64 / r.data_sent as f64 } else { 0.0 };
    r.server = cfg.server_pid.map(|pid| ServerResources {
        source: format!("pid {pid}"),
        start: start_res,
        end: resources(pid),
    });
    Ok(r)
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "turn-bench churn: {}", self.target)?;
        let rate = if self.rate == 0 { "unpaced".to_owned() } else { format!("{}/s", group(self.rate)) };
        writeln!(
            f,
            "  pacing       {rate}, {} at once, {:.2} s, over {}",
            self.concurrency,
            self.wall_s,
            self.transport.name()
        )?;
        writeln!(
            f,
            "  cycles       {} completed of {} started ({:.2} %), {:.1} churn/s",
            group(self.completed),
            group(self.started),
            self.success_pct,
            self.churn_per_s
        )?;
        writeln!(
            f,
            "  data         {} of {} round trips ({:.2} %)",
            group(self.data_received),
            group(self.data_sent),
            self.data_success_pct
        )?;
        for (why, n) in &self.failures {
            writeln!(f, "  failed       {why}: {}", group(*n))?;
        }
        if let Some(s) = &self.server {
            let show = |r: Option<Resources>| {
                r.map_or("n/a".to_owned(), |r| format!("RSS {} KiB, {} fds", group(r.rss_kib), r.fds))
            };
            writeln!(f, "  server       {}: start {}, end {}", s.source, show(s.start), show(s.end))?;
        }
        Ok(())
    }
}
