//! Prometheus metrics: the shards' local counters are collected once a
//! second (never an atomic per packet) and published through the `metrics`
//! facade; a small HTTP listener serves `/metrics`, `/healthz` and
//! `/readyz`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use relay_core::server::stats::{
    AuthFailure, Direction, Drop, MethodLabel, Outcome, RedirectReason, Stats, TransportLabel,
};
use relay_io::ShardReport;

/// Installs the global recorder; returns the handle that renders it.
pub fn install() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    Ok(handle)
}

/// Publishes what the shards reported (absolute values of their counters)
/// and what the kernel fast path did, when one runs.
pub fn publish(reports: &[ShardReport], backend: &str, fast: Option<&relay_io::fastpath::FastPath>) {
    publish_fast_path(reports, fast);
    let mut total = Stats::default();
    let (mut free, mut quarantined, mut send_failures) = (0usize, 0usize, 0u64);
    let mut streams = relay_io::stream::StreamStats::default();
    for r in reports {
        total.merge(&r.stats);
        free += r.relays_free;
        quarantined += r.relays_quarantined;
        send_failures += r.send_failures;
        streams.open += r.streams.open;
        streams.accepted += r.streams.accepted;
        streams.refused += r.streams.refused;
        streams.refused_per_source += r.streams.refused_per_source;
        streams.garbage += r.streams.garbage;
        streams.shed += r.streams.shed;
        streams.proxy_accepted += r.streams.proxy_accepted;
        streams.proxy_missing += r.streams.proxy_missing;
        streams.proxy_untrusted += r.streams.proxy_untrusted;
        streams.proxy_invalid += r.streams.proxy_invalid;
        streams.proxy_duplicate += r.streams.proxy_duplicate;
    }
    let mut udp = relay_io::gso::GsoStats::default();
    for r in reports {
        counter!("turn_shard_loop_turns_total", "shard" => r.shard.to_string()).absolute(r.loop_turns);
        udp.add(&r.udp);
    }
    counter!("turn_udp_sent_datagrams_total", "batched" => "yes").absolute(udp.batched);
    counter!("turn_udp_sent_datagrams_total", "batched" => "no").absolute(udp.single);
    counter!("turn_udp_gso_sends_total").absolute(udp.gso_sends);
    counter!("turn_udp_gso_fallbacks_total").absolute(udp.fallbacks);
    counter!("turn_udp_gro_datagrams_total").absolute(udp.gro_segments);
    counter!("turn_udp_gro_buffers_total").absolute(udp.gro_buffers);
    gauge!("turn_tcp_connections_open").set(streams.open as f64);
    counter!("turn_tcp_connections_accepted_total").absolute(streams.accepted);
    counter!("turn_tcp_connections_refused_total").absolute(streams.refused);
    counter!("turn_tcp_connections_refused_per_source_total").absolute(streams.refused_per_source);
    counter!("turn_tcp_connections_garbage_total").absolute(streams.garbage);
    counter!("turn_tcp_shed_frames_total").absolute(streams.shed);
    for (result, v) in [
        ("accepted", streams.proxy_accepted),
        ("missing", streams.proxy_missing),
        ("untrusted", streams.proxy_untrusted),
        ("invalid", streams.proxy_invalid),
        ("duplicate", streams.proxy_duplicate),
    ] {
        counter!("turn_proxy_protocol_total", "result" => result).absolute(v);
    }
    gauge!("turn_shards").set(reports.len() as f64);
    gauge!("turn_backend_info", "backend" => backend.to_owned()).set(1.0);
    gauge!("turn_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!("turn_allocations_active").set(total.allocations_active as f64);
    gauge!("turn_permissions_active").set(total.permissions_active as f64);
    gauge!("turn_channels_active").set(total.channels_active as f64);
    gauge!("turn_relay_ports_free").set(free as f64);
    gauge!("turn_relay_ports_quarantined").set(quarantined as f64);
    counter!("turn_allocations_created_total").absolute(total.allocations_created);
    counter!("turn_allocations_expired_total").absolute(total.allocations_expired);
    counter!("turn_allocations_deleted_total").absolute(total.allocations_deleted);
    counter!("turn_send_failures_total").absolute(send_failures);
    counter!("turn_send_indications_total").absolute(total.send_indications);
    counter!("turn_data_indications_total").absolute(total.data_indications);
    counter!("turn_relay_to_relay_packets_total", "path" => "in_shard").absolute(total.relayed_in_shard);
    counter!("turn_relay_to_relay_packets_total", "path" => "kernel").absolute(total.relayed_to_own);
    for &m in MethodLabel::ALL {
        for &o in Outcome::ALL {
            let v = total.requests_of(m, o);
            if v > 0 {
                counter!("turn_requests_total", "method" => m.label(), "result" => o.label()).absolute(v);
            }
        }
    }
    for &r in AuthFailure::ALL {
        counter!("turn_auth_failures_total", "reason" => r.label()).absolute(total.auth_failures_of(r));
    }
    for &r in RedirectReason::ALL {
        counter!("turn_redirects_total", "reason" => r.label()).absolute(total.redirects_of(r));
    }
    for &r in Drop::ALL {
        counter!("turn_dropped_packets_total", "reason" => r.label()).absolute(total.drops_of(r));
    }
    for &d in Direction::ALL {
        for &t in TransportLabel::ALL {
            let labels = [("direction", d.label()), ("transport", t.label())];
            counter!("turn_relayed_packets_total", &labels).absolute(total.relayed_packets[d as usize][t as usize]);
            counter!("turn_relayed_bytes_total", &labels).absolute(total.relayed_bytes[d as usize][t as usize]);
        }
    }
}

/// The fast path's metrics: packets it relayed, packets it passed to the
/// stack by reason, its entries, and bindings kept off it.
fn publish_fast_path(reports: &[ShardReport], fast: Option<&relay_io::fastpath::FastPath>) {
    use relay_io::fastpath::{COUNTERS, FIRST_PASS};
    gauge!("turn_fast_path_info", "path" => fast.map_or("socket", |f| f.mode().name())).set(1.0);
    let Some(fast) = fast else { return };
    let counts = fast.counters();
    for (i, (&name, &v)) in COUNTERS.iter().zip(&counts).enumerate() {
        if i < FIRST_PASS {
            counter!("turn_fast_path_packets_total", "direction" => name).absolute(v);
        } else {
            counter!("turn_fast_path_passed_total", "reason" => name).absolute(v);
        }
    }
    let mut s = relay_io::fastpath::ShardFastStats::default();
    for r in reports {
        s.installed += r.fast_path.installed;
        s.slots_full += r.fast_path.slots_full;
        s.errors += r.fast_path.errors;
    }
    gauge!("turn_fast_path_entries").set(s.installed as f64);
    // The program's own cost, where kernel.bpf_stats_enabled = 1.
    let (runs, ns) = fast.run_stats();
    counter!("turn_fast_path_program_runs_total").absolute(runs);
    counter!("turn_fast_path_program_nanoseconds_total").absolute(ns);
    counter!("turn_fast_path_refused_total", "reason" => "slots_full").absolute(s.slots_full);
    counter!("turn_fast_path_refused_total", "reason" => "map_error").absolute(s.errors);
}

/// What `/readyz` reports: whether the node takes new allocations, and
/// details an operator should see beside it (one line each).
#[derive(Debug, Default)]
pub struct Health {
    /// Set when a drain starts: `/readyz` answers 503 from then on, so
    /// that load balancers stop sending new clients first.
    pub draining: AtomicBool,
    /// Lines shown under the status (a user database that cannot be
    /// reached, say), by the part that owns them; they do not make the
    /// node unready.
    pub details: Mutex<Vec<(&'static str, String)>>,
}

impl Health {
    /// Sets (or, with `None`, clears) the detail line of `part`.
    pub fn set_detail(&self, part: &'static str, line: Option<String>) {
        let mut d = self.details.lock().unwrap_or_else(|e| e.into_inner());
        d.retain(|(p, _)| *p != part);
        if let Some(line) = line {
            d.push((part, line));
        }
    }

    /// The body of `/readyz` and whether it is ready.
    fn readyz(&self) -> (bool, String) {
        let ready = !self.draining.load(Ordering::Relaxed);
        let mut body = if ready { "ready\n".to_owned() } else { "draining\n".to_owned() };
        for (part, line) in self.details.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            body.push_str(&format!("{part}: {line}\n"));
        }
        (ready, body)
    }
}

/// Connections the listener serves at once; one more is answered 503 and
/// closed at once (so that a flood of idle connections costs threads no
/// more than this).
const MAX_CONNECTIONS: usize = 64;
/// How long a request's head may take to arrive.
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// How long writing an answer may take in all (a large admin list to a
/// slow reader included); then the connection is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// What every connection's thread answers from.
struct Served {
    handle: PrometheusHandle,
    health: Arc<Health>,
    admin: Arc<crate::admin::Admin>,
}

/// One live connection, counted until its thread ends (or fails to start).
struct Slot(Arc<AtomicUsize>);

impl std::ops::Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `/metrics`, `/healthz` (the process is up) and `/readyz` (it
/// takes allocations: not draining) on `addr`. The accepting thread only
/// accepts: each connection is read and answered on a short-lived thread of
/// its own (at most [`MAX_CONNECTIONS`] at once), so that a probe never
/// waits behind a slow client or an admin request (a reload, a large list
/// to a slow reader).
/// Paths under `/admin/` go to `admin` (the admin API, off without a
/// token), which bounds its own concurrent work.
pub fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    health: Arc<Health>,
    admin: Arc<crate::admin::Admin>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let served = Arc::new(Served { handle, health, admin });
    let live = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        for stream in listener.incoming() {
            let mut stream = match stream {
                Ok(s) => s,
                // Out of file descriptors, say: do not spin on it.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if live.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                live.fetch_sub(1, Ordering::AcqRel);
                // Best effort, never blocking the accepting thread.
                let _ = stream.set_nonblocking(true);
                let _ = stream.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
                      Retry-After: 1\r\nConnection: close\r\n\r\nbusy\n",
                );
                continue;
            }
            let slot = Slot(live.clone());
            let served = served.clone();
            // A thread that cannot start drops its closure, and the slot with it.
            let _ = std::thread::Builder::new().name("metrics-conn".into()).spawn(move || {
                let _slot = slot;
                let _ = answer(stream, &served);
            });
        }
    })?;
    Ok(local)
}

fn answer(mut s: TcpStream, served: &Served) -> std::io::Result<()> {
    let mut req = [0u8; 2048];
    let mut n = 0;
    // The whole head within 2 s: a slow client holds its own thread no longer.
    let deadline = Instant::now() + HEAD_DEADLINE;
    while n < req.len() && !req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut req[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = std::str::from_utf8(&req[..n]).unwrap_or("");
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let Some(r) = served.admin.answer(method, path, head) {
        let mut out = Vec::new();
        r.write_to(&mut out)?;
        return write_within(&mut s, &out, Instant::now() + WRITE_DEADLINE);
    }
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", served.handle.render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => match served.health.readyz() {
            (true, body) => ("200 OK", "text/plain", body),
            (false, body) => ("503 Service Unavailable", "text/plain", body),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n".to_owned()),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    write_within(&mut s, &out, Instant::now() + WRITE_DEADLINE)
}

/// Writes all of `bytes` by `deadline` (a reader that takes in a trickle
/// is cut off then, not served for ever).
fn write_within(s: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        s.set_write_timeout(Some(left))?;
        match s.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => bytes = &bytes[k..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
