//! The measuring loop shared by the throughput, latency and baseline
//! scenarios.
//!
//! Flows (one per allocation, each its own UDP socket to the target) are
//! split over worker threads. A worker paces its share of the rate, sends
//! bursts with sendmmsg from frames prepared once (only the 24-byte probe
//! is rewritten per packet), and drains replies with recvmmsg on epoll
//! readiness, recording RTT in a preallocated histogram: nothing is
//! allocated per packet. The calling thread prints a live line per second
//! and ends the run: after `duration` workers stop sending, and the drain
//! waits for the last replies (bounded).
//!
//! With [`Batching::GsoGro`] (the default; `--per-packet` turns it off) a
//! burst to one flow — equal-size frames to one server address — leaves as
//! GSO sends, and the client sockets have `UDP_GRO`: every segment of a
//! coalesced receive is taken as the datagram it was, so packets are still
//! counted one by one and each gets its own RTT (the segments of one
//! buffer arrived together, so they share the receive time).

use std::io::{self, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_core::wire::TransactionId;
use relay_core::wire::channel_data::{CHANNEL_DATA_HEADER_LEN, parse_header};
use relay_io::gso::{GsoStats, segments};
use relay_io::sys::{Batch, Epoll, empty_event};
use serde::Serialize;

use crate::batching::{self, BatchCounters, Batching};
use crate::client::{Received, encode_send_indication, parse_data};
use crate::payload::{PROBE_LEN, Probe, fill};
use crate::procfs;
use crate::refresh::{RefreshStats, Refresher};
use crate::stats::{latency_histogram, record};
use crate::stream::StreamConn;

/// Largest payload the harness sends (fits any STUN message, leaves room
/// for the ChannelData or Send indication header).
pub const MAX_PAYLOAD: usize = 65_000;
/// Receives per recvmmsg (each a datagram, or with GRO a buffer of
/// several).
const RECV_BATCH: usize = 64;
/// recvmmsg calls per ready socket per wake-up.
const RECV_ROUNDS: usize = 4;
/// Receive slot size: room for a whole GRO buffer.
const RECV_SLOT: usize = 65_536;

/// How a flow reaches the target.
#[derive(Debug)]
pub(crate) enum FlowIo<'a> {
    /// A UDP socket connected to the target, and where to send.
    Datagram { sock: &'a UdpSocket, dest: SocketAddr },
    /// A TCP or TLS connection to the target.
    Stream(&'a mut StreamConn),
}

impl FlowIo<'_> {
    fn fd(&self) -> RawFd {
        match self {
            FlowIo::Datagram { sock, .. } => sock.as_raw_fd(),
            FlowIo::Stream(c) => c.fd(),
        }
    }
}

/// One flow: how it reaches the target, and what keeps its allocation
/// alive during the run (TURN flows).
#[derive(Debug)]
pub(crate) struct Flow<'a> {
    pub io: FlowIo<'a>,
    pub refresh: Option<Refresher>,
}

/// How payloads are framed towards the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// ChannelData on this channel.
    Channel(u16),
    /// Send indications to this peer.
    Indication(SocketAddr),
}

#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    pub size: usize,
    pub rate: u64,
    pub burst: usize,
    pub window: u64,
    pub duration: Duration,
    pub echo: bool,
    pub framing: Framing,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub drain: Duration,
    pub live: bool,
    pub label: &'static str,
    /// GSO sends and GRO receives on the client sockets, or per packet.
    pub batching: Batching,
}

/// One second of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since traffic started (end of the interval).
    pub t_s: f64,
    /// Packets sent per second in the interval.
    pub sent_pps: f64,
    /// Packets received per second in the interval (by the client when
    /// echoing, by the peer when sinking).
    pub received_pps: f64,
    /// Highest 99th percentile RTT among the workers in the interval, µs
    /// (0 when sinking).
    pub p99_us: f64,
}

/// CPU use of one generator thread while it was sending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct WorkerCpu {
    /// CPU time, seconds.
    pub cpu_s: f64,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Time spent spinning with nothing to do while waiting for the next
    /// packet to be due (pacing finer than the millisecond a wait can
    /// sleep), seconds: CPU time, but not work.
    pub idle_spin_s: f64,
}

impl WorkerCpu {
    /// CPU time over wall time, in percent of one core.
    pub fn percent(&self) -> f64 {
        if self.wall_s > 0.0 { 100.0 * self.cpu_s / self.wall_s } else { 0.0 }
    }

    /// CPU time less idle spinning over wall time, in percent of one core:
    /// what saturation is judged by.
    pub fn busy_percent(&self) -> f64 {
        if self.wall_s > 0.0 { (100.0 * (self.cpu_s - self.idle_spin_s) / self.wall_s).max(0.0) } else { 0.0 }
    }
}

#[derive(Debug)]
pub(crate) struct EngineResult {
    pub sent: u64,
    pub send_failed: u64,
    pub received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub reordered: u64,
    pub foreign: u64,
    pub rtt: Histogram<u64>,
    pub send_wall: Duration,
    pub workers: Vec<WorkerCpu>,
    pub process_cpu: Duration,
    pub timeline: Vec<Sample>,
    pub refresh: RefreshStats,
    /// What the client sockets batched, all workers together.
    pub batch: BatchCounters,
}

#[repr(align(64))]
#[derive(Default)]
struct WorkerShared {
    sent: AtomicU64,
    received: AtomicU64,
    p99_ns: AtomicU64,
    done_sending: AtomicBool,
}

struct WorkerOut {
    sent: u64,
    send_failed: u64,
    received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    reordered: u64,
    foreign: u64,
    rtt: Histogram<u64>,
    cpu: WorkerCpu,
    refresh: RefreshStats,
    batch: GsoStats,
}

/// Builds the frame every packet of a run starts from; returns it and the
/// offset of the payload in it.
pub(crate) fn template(framing: Framing, size: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut payload = vec![0u8; size];
    fill(&mut payload);
    match framing {
        Framing::Channel(ch) => {
            let mut frame = vec![0u8; CHANNEL_DATA_HEADER_LEN + size];
            let n = relay_core::wire::channel_data::encode(&mut frame, ch, &payload, false)
                .map_err(|e| io::Error::other(e.to_string()))?;
            frame.truncate(n);
            Ok((frame, CHANNEL_DATA_HEADER_LEN))
        }
        Framing::Indication(peer) => {
            let mut frame = vec![0u8; size + 64];
            let n = encode_send_indication(&mut frame, TransactionId([0x7b; 12]), peer, &payload)
                .map_err(|e| io::Error::other(e.to_string()))?;
            frame.truncate(n);
            // DATA is the last attribute: its value ends where its padding starts.
            let padded = (size + 3) & !3;
            Ok((frame, n - padded))
        }
    }
}

/// Runs the measuring loop over `flows`. `peer_received` reads the peer's
/// counter (used to end the drain and for the live line when sinking).
pub(crate) fn run(
    flows: &mut [Flow<'_>],
    cfg: &EngineConfig,
    epoch: Instant,
    peer_received: &(dyn Fn() -> u64 + Sync),
) -> io::Result<EngineResult> {
    if flows.is_empty() {
        return Err(io::Error::other("no flows to drive"));
    }
    if cfg.size < PROBE_LEN || cfg.size > MAX_PAYLOAD {
        return Err(io::Error::other(format!("--size must be {PROBE_LEN}..={MAX_PAYLOAD} bytes")));
    }
    let threads = cfg.threads.clamp(1, flows.len());
    let shared: Vec<WorkerShared> = (0..threads).map(|_| WorkerShared::default()).collect();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let send_end = start + cfg.duration;
    let self_cpu0 = procfs::self_cpu().unwrap_or_default();
    let chunk = flows.len().div_ceil(threads);
    let mut timeline = Vec::with_capacity(cfg.duration.as_secs() as usize + 2);
    let mut process_cpu = Duration::ZERO;
    let outs: Vec<io::Result<WorkerOut>> = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        let total = flows.len();
        for (w, part) in flows.chunks_mut(chunk).enumerate() {
            let base = (w * chunk) as u32;
            // Each worker's share of the rate is proportional to its flows.
            let rate = if cfg.rate == 0 { 0 } else { (cfg.rate * part.len() as u64).div_ceil(total as u64) };
            let cpu = (!cfg.cpus.is_empty()).then(|| cfg.cpus[w % cfg.cpus.len()]);
            let (sh, stop) = (&shared[w], &stop);
            let h = std::thread::Builder::new().name(format!("turn-bench-gen-{w}")).spawn_scoped(s, move || {
                if let Some(c) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                worker(base, part, cfg, rate, start, send_end, epoch, sh, stop)
            });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return vec![Err(e)];
                }
            }
        }
        let totals = || {
            let sent: u64 = shared.iter().map(|w| w.sent.load(Ordering::Relaxed)).sum();
            let recv: u64 = if cfg.echo {
                shared.iter().map(|w| w.received.load(Ordering::Relaxed)).sum()
            } else {
                peer_received()
            };
            (sent, recv)
        };
        // Live lines, one per second, while sending.
        let mut prev = (0u64, 0u64);
        let mut prev_t = start;
        // Workers publish their interval p99 each second; read just after.
        let mut tick = start + Duration::from_millis(1020);
        loop {
            let now = Instant::now();
            if now >= send_end || shared.iter().all(|w| w.done_sending.load(Ordering::Relaxed)) {
                break;
            }
            std::thread::sleep(tick.min(send_end).saturating_duration_since(now).min(Duration::from_millis(50)));
            let now = Instant::now();
            if now < tick {
                continue;
            }
            let (sent, recv) = totals();
            let dt = now.duration_since(prev_t).as_secs_f64().max(1e-9);
            let p99 = shared.iter().map(|w| w.p99_ns.load(Ordering::Relaxed)).max().unwrap_or(0);
            let sample = Sample {
                t_s: now.duration_since(start).as_secs_f64(),
                sent_pps: (sent - prev.0) as f64 / dt,
                received_pps: recv.saturating_sub(prev.1) as f64 / dt,
                p99_us: p99 as f64 / 1000.0,
            };
            if cfg.live {
                live_line(cfg.label, &sample, cfg.echo);
            }
            timeline.push(sample);
            prev = (sent, recv);
            prev_t = now;
            tick += Duration::from_secs(1);
        }
        // Every worker has stopped sending (bounded: they stop at send_end).
        let wait_until = send_end + Duration::from_secs(1);
        while !shared.iter().all(|w| w.done_sending.load(Ordering::Relaxed)) && Instant::now() < wait_until {
            std::thread::sleep(Duration::from_millis(1));
        }
        process_cpu = procfs::self_cpu().unwrap_or_default().saturating_sub(self_cpu0);
        // Drain: until every packet is back or the drain time is over.
        let drain_end = Instant::now() + cfg.drain;
        loop {
            let (sent, recv) = totals();
            if recv >= sent || Instant::now() >= drain_end {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("worker panicked")))).collect()
    });
    let mut r = EngineResult {
        sent: 0,
        send_failed: 0,
        received: 0,
        bytes_sent: 0,
        bytes_received: 0,
        reordered: 0,
        foreign: 0,
        rtt: latency_histogram(),
        send_wall: Duration::ZERO,
        workers: Vec::with_capacity(threads),
        process_cpu,
        timeline,
        refresh: RefreshStats::default(),
        batch: BatchCounters::default(),
    };
    for o in outs {
        let o = o?;
        r.sent += o.sent;
        r.send_failed += o.send_failed;
        r.received += o.received;
        r.bytes_sent += o.bytes_sent;
        r.bytes_received += o.bytes_received;
        r.reordered += o.reordered;
        r.foreign += o.foreign;
        r.rtt.add(&o.rtt).map_err(|e| io::Error::other(e.to_string()))?;
        r.send_wall = r.send_wall.max(Duration::from_secs_f64(o.cpu.wall_s));
        r.workers.push(o.cpu);
        r.refresh.add(&o.refresh);
        r.batch.add(&o.batch.into());
    }
    Ok(r)
}

/// How long a full window may go without a reply before its packets are
/// written off as lost.
const WINDOW_STALL: Duration = Duration::from_millis(20);

fn budget_was_zero(due: u64, window: u64, sent: u64, answered: u64) -> bool {
    due > 0 && sent.saturating_sub(answered) >= window
}

fn live_line(label: &str, s: &Sample, echo: bool) {
    let loss = if s.sent_pps > 0.0 { (100.0 * (1.0 - s.received_pps / s.sent_pps)).max(0.0) } else { 0.0 };
    let p99 = if echo { format!("  p99 {}", crate::stats::fmt_us(s.p99_us)) } else { String::new() };
    let mut err = io::stderr().lock();
    let _ = writeln!(
        err,
        "[{label} {:>4.0} s] sent {:>10} pps  recv {:>10} pps  loss {loss:>6.2} %{p99}",
        s.t_s,
        crate::stats::group(s.sent_pps as u64),
        crate::stats::group(s.received_pps as u64),
    );
}

/// Per-worker receive bookkeeping: what arrived, in which order, how late.
struct Tally {
    base: u32,
    /// Per flow: one past the highest sequence number received.
    high: Vec<u64>,
    interval: Histogram<u64>,
}

impl Tally {
    /// Counts one payload that came back (echo) from the harness's probe;
    /// returns whether it was one.
    fn probe(&mut self, o: &mut WorkerOut, payload: &[u8], now_ns: u64) -> bool {
        let Some(p) = Probe::read(payload) else {
            o.foreign += 1;
            return false;
        };
        let Some(f) = p.flow.checked_sub(self.base).map(|f| f as usize).filter(|&f| f < self.high.len()) else {
            o.foreign += 1;
            return false;
        };
        o.received += 1;
        o.bytes_received += payload.len() as u64;
        let ns = now_ns.saturating_sub(p.sent_ns);
        record(&mut o.rtt, ns);
        record(&mut self.interval, ns);
        if p.seq + 1 > self.high[f] {
            self.high[f] = p.seq + 1;
        } else {
            o.reordered += 1;
        }
        true
    }
}

/// The payload of a relayed datagram or frame (`None`: something else,
/// e.g. a response to a refresh).
fn payload_of(framing: Framing, dgram: &[u8]) -> Option<&[u8]> {
    match framing {
        Framing::Channel(_) => match parse_header(dgram) {
            Ok((_, l)) if usize::from(l) + CHANNEL_DATA_HEADER_LEN <= dgram.len() => {
                Some(&dgram[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + usize::from(l)])
            }
            _ => None,
        },
        Framing::Indication(_) => match parse_data(dgram) {
            Some(Received::Indication(_, r)) => Some(&dgram[r]),
            _ => None,
        },
    }
}

/// Largest STUN message a stream flow hands its refresher.
const MAX_CONTROL: usize = 2048;

#[allow(clippy::too_many_arguments)]
fn worker(
    base: u32,
    flows: &mut [Flow<'_>],
    cfg: &EngineConfig,
    rate: u64,
    start: Instant,
    send_end: Instant,
    epoch: Instant,
    sh: &WorkerShared,
    stop: &AtomicBool,
) -> io::Result<WorkerOut> {
    let n = flows.len();
    let burst = cfg.burst.clamp(1, 1024);
    let (frame, payload_off) = template(cfg.framing, cfg.size)?;
    let flen = frame.len();
    // Every send slot holds the template; only the probe changes. A burst
    // goes to one flow: with GSO, one send (or a few: 64 segments at most).
    let mut tx = batching::batch(burst, 0, flen, cfg.batching, false);
    for j in 0..burst {
        tx.slot_and_reply(j).1.copy_from_slice(&frame);
    }
    let datagrams = flows.iter().any(|f| matches!(f.io, FlowIo::Datagram { .. }));
    // Stream flows read into their own buffers.
    let mut rx =
        if datagrams { batching::batch(RECV_BATCH, RECV_SLOT, 0, cfg.batching, true) } else { Batch::new(1, 0, 0) };
    for f in flows.iter() {
        if let FlowIo::Datagram { sock, .. } = &f.io {
            // Nothing comes back before this worker sends.
            batching::enable(sock.as_raw_fd(), cfg.batching);
            batching::allow_gso(sock.as_raw_fd(), cfg.batching, &mut tx);
        }
    }
    let mut gro = GsoStats::default();
    let mut control = [0u8; MAX_CONTROL];
    let ep = Epoll::new()?;
    for (i, f) in flows.iter().enumerate() {
        ep.add(f.io.fd(), i as u64)?;
    }
    let mut events = vec![empty_event(); n.min(1024)];
    let mut next_seq = vec![0u64; n];
    let mut tally = Tally { base, high: vec![0u64; n], interval: latency_histogram() };
    let mut o = WorkerOut {
        sent: 0,
        send_failed: 0,
        received: 0,
        bytes_sent: 0,
        bytes_received: 0,
        reordered: 0,
        foreign: 0,
        rtt: latency_histogram(),
        cpu: WorkerCpu::default(),
        refresh: RefreshStats::default(),
        batch: GsoStats::default(),
    };
    let refreshing = flows.iter().any(|f| f.refresh.is_some());
    // When the refreshers next need polling (a sweep over this worker's
    // flows happens only then: O(flows) per refresh deadline, not per loop).
    let mut next_refresh = start;
    let mut attempted: u64 = 0;
    let mut cursor = 0usize;
    let mut sending = true;
    let mut tick = start + Duration::from_secs(1);
    let cpu0 = procfs::thread_cpu().unwrap_or_default();
    let max_per_round = (burst * 8) as u64;
    let mut written_off = 0u64;
    let mut last_progress = start;
    let mut idle_spin = Duration::ZERO;
    // Stream flows with output the socket has not taken yet.
    let mut backlog = false;
    // Stream flows whose input was not read to the end last turn.
    let mut unread = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if sending && now >= send_end {
            sending = false;
            let cpu = procfs::thread_cpu().unwrap_or_default().saturating_sub(cpu0);
            o.cpu = WorkerCpu {
                cpu_s: cpu.as_secs_f64(),
                wall_s: now.duration_since(start).as_secs_f64(),
                idle_spin_s: idle_spin.as_secs_f64(),
            };
            sh.done_sending.store(true, Ordering::Relaxed);
        }
        let mut timeout_ms = 5;
        let mut sent_now = false;
        if sending {
            let elapsed = now.duration_since(start).as_nanos();
            let due = if rate == 0 {
                burst as u64
            } else {
                ((elapsed * u128::from(rate) / 1_000_000_000) as u64).saturating_sub(attempted)
            };
            let mut budget = due.min(max_per_round);
            if cfg.window > 0 {
                // Closed loop: at most `window` packets in flight; packets
                // unanswered for WINDOW_STALL count as lost.
                let in_flight = o.sent.saturating_sub(o.received + written_off);
                if in_flight >= cfg.window && now.duration_since(last_progress) >= WINDOW_STALL {
                    written_off = o.sent.saturating_sub(o.received);
                    last_progress = now;
                }
                let in_flight = o.sent.saturating_sub(o.received + written_off);
                budget = budget.min(cfg.window.saturating_sub(in_flight));
            }
            while budget > 0 {
                let b = budget.min(burst as u64) as usize;
                let sent_ns = epoch.elapsed().as_nanos() as u64;
                let flow_no = base + cursor as u32;
                let seq0 = next_seq[cursor];
                match &mut flows[cursor].io {
                    FlowIo::Datagram { sock, dest } => {
                        let fd = sock.as_raw_fd();
                        for j in 0..b {
                            let p = Probe { flow: flow_no, seq: seq0 + j as u64, sent_ns };
                            p.write(&mut tx.slot_and_reply(j).1[payload_off..]);
                            tx.send_reply(fd, *dest, j, flen);
                        }
                        next_seq[cursor] += b as u64;
                        let (ok, failed) = batching::flush(&mut tx, b);
                        o.sent += ok as u64;
                        o.send_failed += failed as u64;
                        o.bytes_sent += (ok * cfg.size) as u64;
                    }
                    FlowIo::Stream(conn) => {
                        let mut ok = 0;
                        while ok < b && conn.has_room() {
                            let at = conn.queue(&frame);
                            let p = Probe { flow: flow_no, seq: seq0 + ok as u64, sent_ns };
                            p.write(&mut conn.output_mut()[at + payload_off..]);
                            ok += 1;
                        }
                        next_seq[cursor] += ok as u64;
                        // The connection is full (or gone): the rest were
                        // not sent, as with a full UDP socket buffer.
                        o.sent += ok as u64;
                        o.send_failed += (b - ok) as u64;
                        o.bytes_sent += (ok * cfg.size) as u64;
                        // A connection the server closed is marked so and
                        // takes no more; what it held counts as lost.
                        let _ = conn.flush();
                        backlog |= conn.backlog() > 0;
                    }
                }
                attempted += b as u64;
                budget -= b as u64;
                sent_now = true;
                cursor = (cursor + 1) % n;
            }
            timeout_ms = if cfg.window > 0 && budget_was_zero(due, cfg.window, o.sent, o.received + written_off) {
                // Window full: wait for replies (they wake the loop).
                1
            } else if rate == 0 || due > max_per_round {
                0
            } else {
                // Sleep until the next packet is due (whole milliseconds;
                // the sub-millisecond rest is spun).
                let next_ns = u128::from(attempted + 1) * 1_000_000_000 / u128::from(rate);
                let wait = next_ns.saturating_sub(now.duration_since(start).as_nanos());
                let until_end = send_end.saturating_duration_since(now).as_nanos();
                (wait.min(until_end) / 1_000_000).min(100) as i32
            };
        }
        if refreshing {
            let now = Instant::now();
            if now >= next_refresh {
                next_refresh = now + Duration::from_secs(3600);
                for f in flows.iter_mut() {
                    let Some(r) = f.refresh.as_mut() else { continue };
                    let t = match &mut f.io {
                        FlowIo::Datagram { sock, .. } => r.poll(sock, now, sending, &mut o.refresh),
                        FlowIo::Stream(conn) => {
                            let t = r.poll(&mut **conn, now, sending, &mut o.refresh);
                            backlog |= conn.backlog() > 0;
                            t
                        }
                    };
                    next_refresh = next_refresh.min(t);
                }
            }
            let until = next_refresh.saturating_duration_since(now).as_millis().min(100) as i32;
            timeout_ms = timeout_ms.min(until);
        }
        if backlog {
            // Output the sockets did not take: push it on (TCP paces us).
            backlog = false;
            for f in flows.iter_mut() {
                if let FlowIo::Stream(conn) = &mut f.io
                    && conn.backlog() > 0
                {
                    let _ = conn.flush();
                    backlog |= conn.backlog() > 0;
                }
            }
            if backlog {
                timeout_ms = timeout_ms.min(1);
            }
        }
        if unread {
            timeout_ms = 0;
        }
        let ready = ep.wait(&mut events, timeout_ms)?;
        if sending && ready == 0 && !sent_now && timeout_ms == 0 && !unread {
            // Waiting for the next packet to be due: let other threads on
            // this core (the peer, a server) run, and count the time as idle.
            std::thread::yield_now();
            idle_spin += now.elapsed();
        }
        let was_unread = std::mem::take(&mut unread);
        // After a turn that left input unread, every stream flow is read
        // (level-triggered epoll does not see rustls's buffer).
        let sweep = if was_unread { n } else { 0 };
        let ready_flows = events[..ready].iter().map(|ev| ev.u64 as usize).chain(0..sweep);
        for i in ready_flows {
            let Some(flow) = flows.get_mut(i) else { continue };
            match &mut flow.io {
                FlowIo::Datagram { sock, .. } => {
                    let fd = sock.as_raw_fd();
                    for _ in 0..RECV_ROUNDS {
                        let got = match rx.recv(fd, 0) {
                            Ok(k) => k,
                            // An ICMP error queued on the socket (target gone).
                            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                            Err(e) => return Err(e),
                        };
                        let now = Instant::now();
                        let now_ns = now.duration_since(epoch).as_nanos() as u64;
                        for k in 0..got {
                            let rcv = rx.received(k);
                            let (slot, _) = rx.slot_and_reply(k);
                            // Each segment of a GRO buffer is a datagram of
                            // its own (without GRO: the one datagram).
                            let mut segs = 0;
                            for seg in segments(rcv.len, rcv.segment) {
                                segs += 1;
                                let dgram = &slot[seg];
                                match payload_of(cfg.framing, dgram) {
                                    Some(payload) => {
                                        if tally.probe(&mut o, payload, now_ns) {
                                            last_progress = now;
                                        }
                                    }
                                    None => {
                                        // A response to a refresh is the
                                        // refresher's; the rest is foreign.
                                        let mut wake = false;
                                        let mine = match flow.refresh.as_mut() {
                                            Some(r) => r.handle(sock, dgram, now, &mut o.refresh, &mut wake),
                                            None => false,
                                        };
                                        if wake {
                                            next_refresh = now;
                                        }
                                        if !mine {
                                            o.foreign += 1;
                                        }
                                    }
                                }
                            }
                            gro.received(segs);
                        }
                        if got < RECV_BATCH {
                            break;
                        }
                    }
                }
                FlowIo::Stream(conn) => {
                    let mut rounds = 0;
                    loop {
                        let more = match conn.fill() {
                            Ok(more) => more,
                            // The server went away: what was in flight is lost.
                            Err(_) if conn.is_closed() => false,
                            Err(e) => return Err(e),
                        };
                        let now = Instant::now();
                        let now_ns = now.duration_since(epoch).as_nanos() as u64;
                        while let Some(range) = conn.next_frame().unwrap_or(None) {
                            let frame = &conn.input()[range];
                            if let Some(payload) = payload_of(cfg.framing, frame) {
                                if tally.probe(&mut o, payload, now_ns) {
                                    last_progress = now;
                                }
                                continue;
                            }
                            let len = frame.len();
                            let Some(msg) = control.get_mut(..len) else {
                                o.foreign += 1;
                                continue;
                            };
                            msg.copy_from_slice(frame);
                            let mut wake = false;
                            let mine = match flow.refresh.as_mut() {
                                Some(r) => r.handle(&mut **conn, msg, now, &mut o.refresh, &mut wake),
                                None => false,
                            };
                            backlog |= conn.backlog() > 0;
                            if wake {
                                next_refresh = now;
                            }
                            if !mine {
                                o.foreign += 1;
                            }
                        }
                        rounds += 1;
                        if !more {
                            break;
                        }
                        if rounds == RECV_ROUNDS * 4 {
                            unread = true;
                            break;
                        }
                    }
                    if conn.is_closed() {
                        // Gone: stop watching it (it would wake every turn).
                        let _ = ep.delete(conn.fd());
                    }
                }
            }
        }
        sh.sent.store(o.sent, Ordering::Relaxed);
        sh.received.store(o.received, Ordering::Relaxed);
        let now = Instant::now();
        if now >= tick {
            let interval = &mut tally.interval;
            let p99 = if interval.is_empty() { 0 } else { interval.value_at_quantile(0.99) };
            sh.p99_ns.store(p99, Ordering::Relaxed);
            interval.reset();
            tick += Duration::from_secs(1);
        }
    }
    if sending {
        let cpu = procfs::thread_cpu().unwrap_or_default().saturating_sub(cpu0);
        o.cpu = WorkerCpu {
            cpu_s: cpu.as_secs_f64(),
            wall_s: start.elapsed().as_secs_f64(),
            idle_spin_s: idle_spin.as_secs_f64(),
        };
        sh.done_sending.store(true, Ordering::Relaxed);
    }
    o.batch = tx.gso_stats();
    o.batch.add(&gro);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_core::wire::ChannelData;

    #[test]
    fn idle_spinning_is_not_busy() {
        let w = WorkerCpu { cpu_s: 1.0, wall_s: 1.0, idle_spin_s: 0.75 };
        assert_eq!((w.percent(), w.busy_percent()), (100.0, 25.0));
        let w = WorkerCpu { cpu_s: 0.01, wall_s: 1.0, idle_spin_s: 0.5 };
        assert_eq!(w.busy_percent(), 0.0);
        assert_eq!(WorkerCpu::default().percent(), 0.0);
    }

    #[test]
    fn templates_put_the_payload_where_they_say() {
        let (f, off) = template(Framing::Channel(0x4001), 30).unwrap();
        let cd = ChannelData::parse(&f).unwrap();
        assert_eq!((cd.channel, cd.payload.len(), off), (0x4001, 30, 4));
        let peer: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        for size in [24, 25, 26, 27, 28] {
            let (mut f, off) = template(Framing::Indication(peer), size).unwrap();
            Probe { flow: 1, seq: 2, sent_ns: 3 }.write(&mut f[off..]);
            // parse_data reads Data indications only; check the payload
            // region through the message parser instead.
            let m = relay_core::wire::Message::parse(&f).unwrap();
            let d = m.get(relay_core::wire::AttributeType::DATA).unwrap().value;
            assert_eq!(d.len(), size);
            assert_eq!(Probe::read(d), Some(Probe { flow: 1, seq: 2, sent_ns: 3 }));
        }
    }
}
