//! The `allocate` scenario: an allocation storm. Up to `concurrency`
//! clients at a time, each on its own socket, run the full exchange
//! (unauthenticated Allocate, 401, authenticated Allocate) at `rate`
//! allocations per second or as fast as they complete; with `release`, every
//! allocation is then refreshed to 0. Reports allocations per second,
//! success rate, Allocate latency percentiles (first request to success,
//! challenge included) and, with the server's pid, CPU time and memory per
//! allocation. One thread drives every client through [`TurnSession`] on
//! epoll; every wait is bounded by the RFC 8489 transaction timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_io::sys::{Epoll, empty_event};
use serde::Serialize;

use crate::BenchError;
use crate::client::TurnServer;
use crate::client::conn::Conn;
use crate::client::{ClientError, Handled, Poll, Request, TransportKind, TurnSession};
use crate::procfs::{self, Memory};
use crate::stats::{LatencySummary, group, latency_histogram, record};
use crate::throughput::SATURATION_PERCENT;

/// Settings of an allocation storm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocateConfig {
    /// The server.
    pub server: TurnServer,
    /// Allocations to make.
    pub count: usize,
    /// Allocations in flight at once.
    pub concurrency: usize,
    /// New allocations per second; 0: as fast as they complete.
    pub rate: u64,
    /// No allocation is started after this; those in flight then finish
    /// within their transaction timeout.
    pub duration: Duration,
    /// Refresh every allocation to 0 afterwards (and measure that too).
    pub release: bool,
    /// LIFETIME to ask for.
    pub lifetime: Option<u32>,
    /// Local address of the client sockets.
    pub client_ip: Option<IpAddr>,
    /// Process id of the server, for its CPU time and memory.
    pub server_pid: Option<u32>,
    /// Core to pin the generator thread to.
    pub cpu: Option<usize>,
    /// Print a live line per second on stderr.
    pub live: bool,
    /// UDP, TCP or TLS (a connection per allocation; nothing
    /// retransmitted; over TLS the handshake is part of the Allocate
    /// latency, and the server's [`TurnServer::tls`] options apply).
    /// [`AllocateConfig::new`] takes the server's [`TurnServer::transport`].
    pub transport: TransportKind,
}

impl AllocateConfig {
    /// 1000 allocations, 64 at a time, as fast as possible, within 30 s,
    /// released afterwards.
    pub fn new(server: TurnServer) -> AllocateConfig {
        AllocateConfig {
            count: 1000,
            concurrency: 64,
            rate: 0,
            duration: Duration::from_secs(30),
            release: true,
            lifetime: None,
            client_ip: None,
            server_pid: None,
            cpu: None,
            live: false,
            transport: server.transport,
            server,
        }
    }
}

/// The result of one phase (allocating, releasing).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PhaseReport {
    /// Transactions started.
    pub attempted: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Rejected by the server, or failed locally.
    pub failed: u64,
    /// Got no answer.
    pub timed_out: u64,
    /// Failures by reason (`486 Allocation Quota Reached`, `timeout`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the phase, seconds.
    pub wall_s: f64,
    /// Successful transactions per second.
    pub per_s: f64,
    /// Succeeded, percent of attempted.
    pub success_pct: f64,
    /// Requests retransmitted.
    pub retransmissions: u64,
    /// Latency from the first request to the success response.
    pub latency: LatencySummary,
}

/// The server's cost per allocation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AllocationCost {
    /// `pid N`.
    pub source: String,
    /// CPU time while allocating, seconds.
    pub cpu_s: f64,
    /// CPU microseconds per successful allocation.
    pub cpu_us_per_allocation: Option<f64>,
    /// Memory before the storm.
    pub memory_before: Memory,
    /// Memory with every allocation made.
    pub memory_allocated: Memory,
    /// Memory after the release phase.
    pub memory_after: Option<Memory>,
    /// Growth of VmRSS per successful allocation, bytes.
    pub bytes_per_allocation: Option<f64>,
}

/// The result of an allocation storm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AllocateReport {
    /// `allocate`.
    pub scenario: &'static str,
    /// The server.
    pub target: String,
    /// Allocations asked for.
    pub count: usize,
    /// Allocations in flight at once.
    pub concurrency: usize,
    /// Requested allocations per second (0: unpaced).
    pub rate: u64,
    /// Client transport.
    pub transport: TransportKind,
    /// The allocations.
    pub allocate: PhaseReport,
    /// The releases, when asked for.
    pub release: Option<PhaseReport>,
    /// The server's cost, when its pid was given.
    pub server: Option<AllocationCost>,
    /// The generator thread's CPU while allocating, percent of one core.
    pub generator_percent: f64,
    /// Whether the generator thread was saturated.
    pub generator_saturated: bool,
}

struct Slot {
    transport: Conn,
    core: TurnSession,
    started: Instant,
    busy: bool,
    allocated: bool,
}

struct Driver {
    ep: Epoll,
    slots: Vec<Slot>,
    inflight: Vec<usize>,
    buf: Vec<u8>,
    events: Vec<libc::epoll_event>,
    hist: Histogram<u64>,
    phase: PhaseReport,
}

impl Driver {
    fn fail(&mut self, reason: String) {
        self.phase.failed += 1;
        *self.phase.errors.entry(reason).or_default() += 1;
    }

    fn done(&mut self, i: usize, r: Result<(), ClientError>, now: Instant) {
        let s = &mut self.slots[i];
        s.busy = false;
        match r {
            Ok(()) => {
                self.phase.succeeded += 1;
                record(&mut self.hist, now.duration_since(s.started).as_nanos() as u64);
                s.allocated = !s.allocated;
            }
            Err(ClientError::Timeout { .. }) => {
                self.phase.timed_out += 1;
                *self.phase.errors.entry("timeout".into()).or_default() += 1;
            }
            Err(ClientError::Rejected { code, reason, .. }) => self.fail(format!("{code} {reason}")),
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn start(&mut self, i: usize, request: Request) {
        let now = Instant::now();
        let s = &mut self.slots[i];
        s.started = now;
        s.core.cancel();
        self.phase.attempted += 1;
        let sent = match s.core.start(request, now) {
            Ok(bytes) => s.transport.send(bytes).map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                s.busy = true;
                self.inflight.push(i);
            }
            Err(e) => self.done(i, Err(e), now),
        }
    }

    /// Waits up to `timeout_ms` for answers, handles them, runs the timers.
    fn step(&mut self, timeout_ms: i32) -> io::Result<()> {
        let n = self.ep.wait(&mut self.events, timeout_ms)?;
        for k in 0..n {
            let i = self.events[k].u64 as usize;
            // Bounded: a socket's queue holds finitely many datagrams.
            for _ in 0..64 {
                let Some(slot) = self.slots.get_mut(i) else { break };
                let len = match slot.transport.try_recv(&mut self.buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => {
                        if slot.transport.is_stream() {
                            // The connection is gone: stop watching it, and
                            // fail what it had in flight now.
                            let _ = self.ep.delete(slot.transport.fd());
                            if slot.busy {
                                self.done(i, Err(ClientError::from(e)), Instant::now());
                            }
                        }
                        break;
                    }
                };
                let now = Instant::now();
                let mut redirected = false;
                let outcome = match slot.core.handle(&self.buf[..len], now) {
                    Handled::Ignored | Handled::Discarded(_) => None,
                    Handled::Transmit(bytes) => match slot.transport.send(bytes) {
                        Ok(()) => None,
                        Err(e) => Some(Err(ClientError::from(e))),
                    },
                    // The storm measures one server: a 300 is its answer.
                    Handled::Redirect { server, .. } => {
                        redirected = true;
                        let reason = format!("Try Alternate to {server} (the storm does not follow redirects)");
                        Some(Err(ClientError::Rejected { method: "Allocate", code: 300, reason }))
                    }
                    Handled::Done(r) => Some(r.map(drop)),
                };
                if redirected {
                    slot.core.cancel();
                }
                if let Some(r) = outcome {
                    self.done(i, r, now);
                }
            }
        }
        let now = Instant::now();
        for idx in 0..self.inflight.len() {
            let i = self.inflight[idx];
            let slot = &mut self.slots[i];
            if !slot.busy {
                continue;
            }
            let outcome = match slot.core.poll(now) {
                Poll::Transmit(bytes) => {
                    self.phase.retransmissions += 1;
                    slot.transport.send(bytes).err().map(|e| Err(ClientError::from(e)))
                }
                Poll::Failed(e) => Some(Err(e)),
                Poll::Wait(_) | Poll::Idle => None,
            };
            if let Some(r) = outcome {
                self.done(i, r, now);
            }
        }
        let slots = &self.slots;
        self.inflight.retain(|&i| slots[i].busy);
        Ok(())
    }

    fn finish_phase(&mut self, wall: Duration) -> PhaseReport {
        let mut p = std::mem::take(&mut self.phase);
        p.wall_s = wall.as_secs_f64();
        p.per_s = p.succeeded as f64 / p.wall_s.max(1e-9);
        p.success_pct = if p.attempted > 0 { 100.0 * p.succeeded as f64 / p.attempted as f64 } else { 0.0 };
        p.latency = LatencySummary::of(&self.hist);
        self.hist.reset();
        p
    }

    /// Drives what is in flight until it is all done or `hard_end`;
    /// anything left then counts as timed out.
    fn drain(&mut self, hard_end: Instant) -> io::Result<()> {
        while !self.inflight.is_empty() && Instant::now() < hard_end {
            self.step(10)?;
        }
        for i in std::mem::take(&mut self.inflight) {
            self.slots[i].busy = false;
            self.phase.timed_out += 1;
            *self.phase.errors.entry("timeout".into()).or_default() += 1;
        }
        Ok(())
    }
}

fn live(label: &str, t: f64, p: &PhaseReport, inflight: usize, per_s: f64) {
    let _ = writeln!(
        io::stderr().lock(),
        "[{label} {t:>4.0} s] {:>8}/s  ok {:>8}  failed {:>6}  timed out {:>6}  in flight {inflight}",
        group(per_s as u64),
        group(p.succeeded),
        group(p.failed),
        group(p.timed_out)
    );
}

/// Runs an allocation storm.
pub fn run_allocate(cfg: &AllocateConfig) -> Result<AllocateReport, BenchError> {
    if cfg.count == 0 || cfg.concurrency == 0 {
        return Err(BenchError::Config("count and concurrency must be positive".into()));
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("turn-bench-allocate".into())
            .spawn_scoped(s, || {
                if let Some(c) = cfg.cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                storm(cfg)
            })
            .map_err(BenchError::Io)?
            .join()
            .unwrap_or_else(|_| Err(BenchError::Setup("allocate thread panicked".into())))
    })
}

fn storm(cfg: &AllocateConfig) -> Result<AllocateReport, BenchError> {
    let server = cfg.server.addr;
    let mut client_cfg = cfg.server.client_config();
    client_cfg.reliable = cfg.transport != TransportKind::Udp;
    let tls = match cfg.transport {
        TransportKind::Tls => Some(cfg.server.tls_connector().map_err(|e| BenchError::Config(e.to_string()))?),
        _ => None,
    };
    let hard_extra = client_cfg.transaction_timeout() + Duration::from_secs(1);
    let local = match cfg.client_ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None => crate::net::unspecified_for(server),
    };
    let mut d = Driver {
        ep: Epoll::new()?,
        slots: Vec::with_capacity(cfg.count),
        inflight: Vec::with_capacity(cfg.concurrency),
        buf: vec![0u8; 65_536],
        events: vec![empty_event(); cfg.concurrency.min(1024)],
        hist: latency_histogram(),
        phase: PhaseReport::default(),
    };
    let before = cfg.server_pid.and_then(|p| procfs::sample(p).ok());
    let cpu0 = procfs::thread_cpu().unwrap_or_default();
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut tick = start + Duration::from_secs(1);
    let mut last_ok = 0u64;
    let mut can_open = true;
    loop {
        let now = Instant::now();
        while can_open
            && d.slots.len() < cfg.count
            && d.inflight.len() < cfg.concurrency
            && now < deadline
            && (cfg.rate == 0
                || (d.slots.len() as u128)
                    < now.duration_since(start).as_nanos() * u128::from(cfg.rate) / 1_000_000_000)
        {
            let transport = match Conn::open(cfg.transport, server, local, tls.as_ref()) {
                Ok(t) => t,
                Err(e) => {
                    // Out of descriptors or ports: no more clients.
                    d.phase.attempted += 1;
                    d.fail(match cfg.transport {
                        TransportKind::Udp => format!("local socket: {e}"),
                        TransportKind::Tcp => format!("TCP connect: {e}"),
                        TransportKind::Tls => format!("TLS connect: {e}"),
                    });
                    can_open = false;
                    break;
                }
            };
            let i = d.slots.len();
            d.ep.add(transport.fd(), i as u64)?;
            let core = crate::client::session(client_cfg.clone());
            d.slots.push(Slot { transport, core, started: now, busy: false, allocated: false });
            d.start(i, Request::Allocate { lifetime: cfg.lifetime });
        }
        let done_starting = !can_open || d.slots.len() >= cfg.count || now >= deadline;
        if d.inflight.is_empty() && done_starting {
            break;
        }
        if done_starting {
            d.drain(now + hard_extra)?;
            break;
        }
        let timeout = if cfg.rate > 0 && d.inflight.len() < cfg.concurrency { 1 } else { 10 };
        d.step(timeout)?;
        let now = Instant::now();
        if now >= tick {
            if cfg.live {
                live("allocate", now.duration_since(start).as_secs_f64(), &d.phase, d.inflight.len(), {
                    (d.phase.succeeded - last_ok) as f64
                });
            }
            last_ok = d.phase.succeeded;
            tick += Duration::from_secs(1);
        }
    }
    let wall = start.elapsed();
    let gen_cpu = procfs::thread_cpu().unwrap_or_default().saturating_sub(cpu0);
    let allocated = cfg.server_pid.and_then(|p| procfs::sample(p).ok());
    let allocate = d.finish_phase(wall);

    let release = if cfg.release {
        let start = Instant::now();
        let targets: Vec<usize> = (0..d.slots.len()).filter(|&i| d.slots[i].allocated).collect();
        let mut next = 0;
        loop {
            while next < targets.len() && d.inflight.len() < cfg.concurrency {
                d.start(targets[next], Request::Refresh { lifetime: 0 });
                next += 1;
            }
            if next >= targets.len() {
                d.drain(Instant::now() + hard_extra)?;
                break;
            }
            d.step(10)?;
        }
        Some(d.finish_phase(start.elapsed()))
    } else {
        None
    };
    let after = cfg.server_pid.and_then(|p| procfs::sample(p).ok());
    drop(d);

    let server = match (cfg.server_pid, before, allocated) {
        (Some(pid), Some(b), Some(a)) => {
            let cpu = a.cpu.saturating_sub(b.cpu).as_secs_f64();
            let n = allocate.succeeded;
            Some(AllocationCost {
                source: format!("pid {pid}"),
                cpu_s: cpu,
                cpu_us_per_allocation: (n > 0).then(|| cpu * 1e6 / n as f64),
                memory_before: b.memory,
                memory_allocated: a.memory,
                memory_after: after.map(|s| s.memory),
                bytes_per_allocation: (n > 0)
                    .then(|| (a.memory.rss_kib as f64 - b.memory.rss_kib as f64) * 1024.0 / n as f64),
            })
        }
        _ => None,
    };
    let percent = 100.0 * gen_cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9);
    Ok(AllocateReport {
        scenario: "allocate",
        target: format!("TURN {} (user {})", cfg.server.addr, cfg.server.credentials.display_user()),
        count: cfg.count,
        concurrency: cfg.concurrency,
        rate: cfg.rate,
        transport: cfg.transport,
        allocate,
        release,
        server,
        generator_percent: percent,
        generator_saturated: percent >= SATURATION_PERCENT,
    })
}

fn phase_lines(f: &mut fmt::Formatter<'_>, name: &str, p: &PhaseReport) -> fmt::Result {
    writeln!(
        f,
        "  {name:<10} {} of {} succeeded ({:.2} %) in {:.3} s: {:.0}/s; {} failed, {} timed out, {} retransmissions",
        group(p.succeeded),
        group(p.attempted),
        p.success_pct,
        p.wall_s,
        p.per_s,
        group(p.failed),
        group(p.timed_out),
        group(p.retransmissions)
    )?;
    writeln!(f, "  {:<10} latency {}", "", p.latency)?;
    for (reason, n) in &p.errors {
        writeln!(f, "  {:<10} {} × {reason}", "", group(*n))?;
    }
    Ok(())
}

impl fmt::Display for AllocateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.rate == 0 { "unpaced".to_owned() } else { format!("{}/s", group(self.rate)) };
        writeln!(f, "turn-bench allocate: {}", self.target)?;
        writeln!(
            f,
            "  storm      {} allocations, {} in flight, {rate}, over {}",
            group(self.count as u64),
            self.concurrency,
            self.transport.name()
        )?;
        phase_lines(f, "allocate", &self.allocate)?;
        if let Some(r) = &self.release {
            phase_lines(f, "release", r)?;
        }
        writeln!(
            f,
            "  generator  {:.0} % of a core{}",
            self.generator_percent,
            if self.generator_saturated { " — SATURATED: the generator may be the bottleneck" } else { "" }
        )?;
        if let Some(s) = &self.server {
            write!(f, "  server     {}: {:.3} s CPU", s.source, s.cpu_s)?;
            if let Some(us) = s.cpu_us_per_allocation {
                write!(f, ", {us:.1} µs CPU per allocation")?;
            }
            if let Some(b) = s.bytes_per_allocation {
                write!(f, ", RSS {b:+.0} bytes per allocation")?;
            }
            writeln!(
                f,
                " (VmRSS {} → {} KiB, VmHWM {} KiB)",
                group(s.memory_before.rss_kib),
                group(s.memory_allocated.rss_kib),
                group(s.memory_allocated.hwm_kib)
            )?;
        }
        Ok(())
    }
}
