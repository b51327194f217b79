//! `turn-bench demo`: the relay and a short load through it, the first
//! thing a new user runs (README's first command, `scripts/demo`).
//!
//! The relay is the real `turn-relay` binary, started as a child process on
//! an embedded loopback configuration (the flags in [`relay_args`]): UDP on
//! a free loopback port, relay ports on 127.0.0.1, a demo user with a
//! random password, loopback peers allowed, metrics on another free port.
//! The demo waits for its `/readyz`, runs the throughput scenario through
//! it, reads the relay's own counters from its `/metrics`, and stops it by
//! its pid (SIGTERM, then SIGKILL if it does not end). So turn-relay needs
//! nothing of the load generator, and the demo shows the binary an
//! operator runs rather than a copy of its set-up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bench_harness::{BenchError, Credentials, ThroughputConfig, ThroughputReport, TurnServer, run_throughput};
use clap::Args;

/// `turn-bench demo`.
#[derive(Args, Debug)]
pub struct DemoCmd {
    /// The turn-relay binary [default: the one next to turn-bench, else
    /// turn-relay on PATH].
    #[arg(long, value_name = "PATH")]
    pub relay: Option<PathBuf>,
    /// Seconds of load.
    #[arg(long, short = 'd', default_value = "5", value_parser = crate::secs)]
    pub duration: Duration,
    /// More turn-relay flags, after `--` (for example `-- --backend
    /// portable`); appended to the demo's own, which they must not repeat
    /// (--log-level excepted: it replaces the demo's `warn`).
    #[arg(last = true, value_name = "RELAY_FLAGS")]
    pub relay_flags: Vec<String>,
}

/// The demo user; its password is drawn per run.
const USER: &str = "demo";
/// The realm of the demo relay.
const REALM: &str = "demo.turn-relay";
/// How long the relay may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped relay may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the relay said about the run, from its `/metrics`.
#[derive(Debug, Default, PartialEq)]
struct RelayCounters {
    to_peers: u64,
    to_clients: u64,
    allocations_created: u64,
    allocations_active: u64,
    backend: Option<String>,
}

/// Runs the demo: prints the relay it started, the load's report and the
/// relay's counters (on stderr instead of stdout with `json`, which keeps
/// stdout for the report).
pub fn run(cmd: &DemoCmd, live: bool, json: bool) -> Result<(), BenchError> {
    let say = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
    let binary = find_relay(cmd.relay.as_deref())?;
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
    let ports = relay_ports(std::process::id());
    let password = random_password();
    let mut args = relay_args(listen, metrics, ports, &password);
    if !cmd.relay_flags.iter().any(|f| f == "--log-level" || f.starts_with("--log-level=")) {
        args.extend(["--log-level".to_owned(), "warn".to_owned()]);
    }
    args.extend(cmd.relay_flags.iter().cloned());
    let child = Command::new(&binary)
        .args(&args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Setup(format!("{}: {e}", binary.display())))?;
    let mut relay = RelayChild(child);
    let pid = relay.0.id();
    wait_ready(&mut relay, metrics)?;
    say(format!(
        "turn-bench demo: {} (pid {pid}) on UDP {listen}, relay ports {}-{} on 127.0.0.1, user \"{USER}\", \
         metrics on http://{metrics}/metrics; {} s of load",
        binary.display(),
        ports.0,
        ports.1,
        cmd.duration.as_secs_f64()
    ));
    let load = ThroughputConfig {
        allocations: 10,
        size: 200,
        window: 64,
        duration: cmd.duration,
        live,
        server_pid: Some(pid),
        ..ThroughputConfig::new(TurnServer::new(listen, Credentials::long_term(USER, &password)))
    };
    let report = run_throughput(&load);
    // The relay publishes its counters once a second: wait for the
    // released allocations to show, so that the counters are the run's.
    let counters = settled_counters(metrics, report.is_ok());
    relay.stop();
    let report: ThroughputReport = report?;
    if json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| BenchError::Setup(e.to_string()))?;
        println!("{s}");
    } else {
        print!("{report}");
    }
    match counters {
        Some(c) => say(format!(
            "relay counters: {} packets to peers, {} to clients, {} allocations created ({} backend)",
            c.to_peers,
            c.to_clients,
            c.allocations_created,
            c.backend.as_deref().unwrap_or("unknown")
        )),
        None => say(format!("relay counters: unavailable (no answer from http://{metrics}/metrics)")),
    }
    Ok(())
}

/// The embedded configuration, as turn-relay flags (see
/// docs/configuration.md): UDP on `listen` only, one shard, relay ports
/// `ports` on 127.0.0.1, the demo user, loopback peers allowed (the default
/// policy refuses them), metrics on `metrics`, a short drain.
fn relay_args(listen: SocketAddr, metrics: SocketAddr, ports: (u16, u16), password: &str) -> Vec<String> {
    [
        "--listen-udp",
        &listen.to_string(),
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        &format!("{}-{}", ports.0, ports.1),
        "--realm",
        REALM,
        "--user",
        &format!("{USER}:{password}"),
        "--allow-peer",
        "127.0.0.0/8",
        "--shards",
        "1",
        "--metrics",
        &metrics.to_string(),
        "--drain-timeout",
        "2",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// 64 relay ports in 10000-19999, below the kernel's default ephemeral
/// range and apart from the ranges turn-relay's own tests use, varied by
/// pid so that demos at once rarely meet (the relay skips ports in use).
fn relay_ports(pid: u32) -> (u16, u16) {
    let lo = 10_000 + (pid % 156) as u16 * 64;
    (lo, lo + 63)
}

/// The relay binary: `given`, else `turn-relay` next to this executable
/// (cargo builds both into one directory), else on PATH.
fn find_relay(given: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(path) = given {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(BenchError::Config(format!("--relay {}: no such file", path.display())))
        };
    }
    let beside = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("turn-relay")));
    if let Some(path) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(path.clone());
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("turn-relay")).find(|p| p.is_file()));
    on_path.ok_or_else(|| {
        let beside = beside.map_or_else(String::new, |p| format!(" (looked for {} and on PATH)", p.display()));
        BenchError::Config(format!(
            "turn-relay not found{beside}: build it with `cargo build --release -p relay-bin` \
             (scripts/demo builds both), or pass --relay PATH"
        ))
    })
}

fn free_udp_port() -> Result<u16, BenchError> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

fn free_tcp_port() -> Result<u16, BenchError> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// 16 random characters (from the OS), base64url.
fn random_password() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 12];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    if bytes == [0; 12] {
        // No /dev/urandom: a loopback-only demo can do with the clock.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes[..8].copy_from_slice(&(t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The relay child, stopped (by its pid) when dropped, whatever happened.
struct RelayChild(Child);

impl RelayChild {
    /// SIGTERM (a graceful stop: drain, then exit), then SIGKILL after
    /// [`STOP_TIMEOUT`]; reaps the child either way.
    fn stop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        // `kill` is the one way to send SIGTERM without unsafe code here;
        // where it is missing, SIGKILL below does the job.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the relay answers `/readyz` (its listeners are up), or
/// fails when it exits first or takes longer than [`READY_TIMEOUT`].
fn wait_ready(relay: &mut RelayChild, metrics: SocketAddr) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = relay.0.try_wait() {
            return Err(BenchError::Setup(format!("turn-relay exited ({status}) before it was ready; see above")));
        }
        if http_get(metrics, "/readyz").is_some_and(|(status, _)| status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "turn-relay not ready after {} s (http://{metrics}/readyz)",
                READY_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The relay's counters once it shows the run's allocations released (at
/// most 3 s; the last answer then), or right away when the run failed.
fn settled_counters(metrics: SocketAddr, wait: bool) -> Option<RelayCounters> {
    let deadline = Instant::now() + if wait { Duration::from_secs(3) } else { Duration::ZERO };
    let mut last = None;
    loop {
        if let Some((200, body)) = http_get(metrics, "/metrics") {
            let c = parse_counters(&body);
            let settled = c.allocations_created > 0 && c.allocations_active == 0;
            last = Some(c);
            if settled {
                return last;
            }
        }
        if Instant::now() >= deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The demo's counters out of a Prometheus text exposition.
fn parse_counters(text: &str) -> RelayCounters {
    let mut c = RelayCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        match name {
            "turn_relayed_packets_total" if labels.contains("direction=\"to_peer\"") => c.to_peers += value,
            "turn_relayed_packets_total" if labels.contains("direction=\"to_client\"") => c.to_clients += value,
            "turn_allocations_created_total" => c.allocations_created = value,
            "turn_allocations_active" => c.allocations_active = value,
            "turn_backend_info" if value == 1 => {
                c.backend = labels.split_once("backend=\"").and_then(|(_, r)| r.split_once('"')).map(|(b, _)| b.into());
            }
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_the_relay_exposition() {
        let text = "# TYPE turn_relayed_packets_total counter\n\
            turn_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"} 1200\n\
            turn_relayed_packets_total{direction=\"to_peer\",transport=\"tcp\"} 34\n\
            turn_relayed_packets_total{direction=\"to_client\",transport=\"udp\"} 1190\n\
            turn_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"} 999999\n\
            turn_allocations_created_total 10\n\
            turn_allocations_active 0\n\
            turn_backend_info{backend=\"io_uring\"} 1\n";
        let c = parse_counters(text);
        assert_eq!(
            c,
            RelayCounters {
                to_peers: 1234,
                to_clients: 1190,
                allocations_created: 10,
                allocations_active: 0,
                backend: Some("io_uring".into()),
            }
        );
    }

    #[test]
    fn embedded_configuration_is_loopback_only() {
        let listen: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let metrics: SocketAddr = "127.0.0.1:9641".parse().unwrap();
        let args = relay_args(listen, metrics, (10_000, 10_063), "pw").join(" ");
        assert!(args.contains("--listen-udp 127.0.0.1:3478 --relay-ip 127.0.0.1 --relay-ports 10000-10063"), "{args}");
        assert!(args.contains("--user demo:pw") && args.contains("--metrics 127.0.0.1:9641"), "{args}");
        assert!(!args.contains("0.0.0.0"), "{args}");
        for pid in [0, 1, 155, 156, u32::MAX] {
            let (lo, hi) = relay_ports(pid);
            assert!(lo >= 10_000 && hi < 20_000 && hi - lo == 63, "{lo}-{hi}");
        }
        assert_ne!(random_password(), random_password());
    }

    #[test]
    fn a_missing_relay_says_how_to_get_it() {
        let e = find_relay(Some(Path::new("/nonexistent/turn-relay"))).unwrap_err().to_string();
        assert!(e.contains("--relay /nonexistent/turn-relay"), "{e}");
    }
}
