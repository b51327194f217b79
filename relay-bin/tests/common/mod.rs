//! Helpers shared by the tests that run processes: a guard that stops a
//! child by its pid, a bounded run, a tool lookup, test-kit's skip rule,
//! free ports, and a small HTTP/1.1 client for the metrics listener (with
//! a Prometheus sample reader). Each test crate uses a subset.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (by its pid) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command for at most `limit`, killing it after; returns its output.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let out = child.wait_with_output().unwrap();
    let _ = watchdog.join();
    out
}

/// True when `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// The skip rule (test-kit's, shared with the other crates' tests); not
/// every test crate here uses it.
#[allow(unused_imports)]
pub use test_kit::skip;

/// Runs a short system command (`ip`, `nft`, …) bounded to 10 s; its
/// stderr is the error when it fails.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = run_bounded(Command::new(args[0]).args(&args[1..]), Duration::from_secs(10));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Where [`topology_relay`] listens for TURN (UDP and TCP), in the relay
/// namespace of a `test_kit::Topology`.
pub const TOPOLOGY_SERVER: &str = "10.201.1.1:3478";
/// Where [`topology_relay`] serves metrics (and the admin API).
pub const TOPOLOGY_METRICS: &str = "10.201.1.1:9641";

/// `ip netns exec <relay> turn-relay --listen TOPOLOGY_SERVER --relay-ip
/// 10.201.2.1` and `extra`: the arguments of `ip`.
pub fn topology_command<'a>(t: &'a test_kit::Topology, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "netns",
        "exec",
        &t.relay,
        env!("CARGO_BIN_EXE_turn-relay"),
        "--listen",
        TOPOLOGY_SERVER,
        "--relay-ip",
        "10.201.2.1",
    ];
    args.extend_from_slice(extra);
    args
}

/// turn-relay started in `t`'s relay namespace ([`topology_command`]):
/// relay ports 50000-50015, user alice:secret in `realm`, peers in
/// 10.201.0.0/16, metrics on [`TOPOLOGY_METRICS`], one unpinned shard,
/// and `extra`; its stderr piped.
pub fn topology_relay(t: &test_kit::Topology, realm: &str, extra: &[&str]) -> Child {
    let mut args = topology_command(
        t,
        &[
            "--relay-ports",
            "50000-50015",
            "--realm",
            realm,
            "--user",
            "alice:secret",
            "--allow-peer",
            "10.201.0.0/16",
            "--metrics",
            TOPOLOGY_METRICS,
            "--shards",
            "1",
            "--no-pin",
        ],
    );
    args.extend_from_slice(extra);
    Command::new("ip").args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// A UDP port on `ip` that the kernel handed out just now (free a moment
/// ago; another process may still take it).
pub fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// coturn's echo peer, `turnutils_peer`, on a free UDP port of `ip`:
/// the process and its port, once it holds the port (within 3 s).
pub fn turnutils_peer(ip: &str) -> (Killed, u16) {
    let port = free_udp_port(ip);
    let peer = Killed(
        Command::new("turnutils_peer")
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while UdpSocket::bind((ip, port)).is_ok() {
        assert!(Instant::now() < deadline, "turnutils_peer did not bind {ip}:{port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (peer, port)
}

/// Waits until a server started on UDP `udp` answers a STUN Binding request
/// there and accepts connections on each of `tcp` (a started process is
/// serving), at most `within`; fails the test otherwise. For processes
/// without a metrics listener to poll, instead of a fixed sleep, which a
/// loaded machine outlasts.
pub fn wait_serving(udp: SocketAddr, tcp: &[SocketAddr], within: Duration) {
    use relay_core::wire::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
    let deadline = Instant::now() + within;
    let sock = UdpSocket::bind((udp.ip(), 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let tid = TransactionId(*b"wait-serving");
    let mut req = [0u8; 64];
    let b = MessageBuilder::new(&mut req, MessageType::new(Class::Request, Method::BINDING), tid).unwrap();
    let n = b.finish();
    let mut buf = [0u8; 1500];
    'answered: loop {
        assert!(Instant::now() < deadline, "nothing answered a STUN Binding on {udp} within {within:?}");
        let _ = sock.send_to(&req[..n], udp);
        while let Ok((len, from)) = sock.recv_from(&mut buf) {
            if from == udp && Message::parse(&buf[..len]).is_ok_and(|m| m.transaction_id() == tid) {
                break 'answered;
            }
        }
    }
    for &t in tcp {
        while TcpStream::connect_timeout(&t, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nothing listens on TCP {t} within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP port on `ip` that the kernel handed out just now.
pub fn free_tcp_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// An HTTP answer: status, head (status line and headers), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON (a panic naming it when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `METHOD path` over HTTP/1.1 to `addr` (with `Authorization: Bearer
/// token` when given), read to the end; None when nothing answers, or the
/// answer is not HTTP or takes over 15 s (an admin reload may take 10).
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Option<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer { status, head: head.to_owned(), body: body.to_owned() })
}

/// `GET path` from `addr`, without a token.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<Answer> {
    http(addr, "GET", path, None)
}

/// [`http`] from inside network namespace `ns` (on a thread of its own
/// there, see `test_kit::Topology::run_in`).
pub fn http_in(ns: &str, addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Option<Answer> {
    let (method, path, token) = (method.to_owned(), path.to_owned(), token.map(str::to_owned));
    test_kit::Topology::run_in(ns, move || http(addr, &method, &path, token.as_deref()))
}

/// The value of one sample in a Prometheus text `body`. `sample` is a
/// metric name, optionally with labels (`name{a="x",b="y"}`): the first
/// line of exactly that name whose labels include all of those given
/// (others may be there too) is read. None when there is no such line.
pub fn metric(body: &str, sample: &str) -> Option<f64> {
    let (name, wanted) = match sample.split_once('{') {
        Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels end with '}'")),
        None => (sample, ""),
    };
    let wanted: Vec<&str> = wanted.split(',').filter(|l| !l.is_empty()).collect();
    body.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, labels) = match series.split_once('{') {
            Some((n, labels)) => (n, labels.strip_suffix('}')?),
            None => (series, ""),
        };
        let labels: Vec<&str> = labels.split(',').collect();
        if n != name || !wanted.iter().all(|w| labels.contains(w)) {
            return None;
        }
        value.parse().ok()
    })
}

/// One sample of `/metrics` at `addr` (see [`metric`]); None when nothing
/// answers or the sample is not there.
pub fn metric_at(addr: SocketAddr, sample: &str) -> Option<f64> {
    metric(&http_get(addr, "/metrics")?.body, sample)
}

/// Polls `GET /metrics` on `addr` every 100 ms until `ok` holds for the
/// body or `within` has passed; returns the last body (empty when nothing
/// answered).
pub fn wait_metrics(addr: SocketAddr, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    poll_metrics(None, addr, within, ok)
}

/// [`wait_metrics`] from inside network namespace `ns`.
pub fn wait_metrics_in(ns: &str, addr: SocketAddr, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    poll_metrics(Some(ns), addr, within, ok)
}

fn poll_metrics(ns: Option<&str>, addr: SocketAddr, within: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = match ns {
            Some(ns) => http_in(ns, addr, "GET", "/metrics", None),
            None => http_get(addr, "/metrics"),
        };
        let body = answer.map(|a| a.body).unwrap_or_default();
        if ok(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The totals line of a `turnutils_uclient` log: `tot_send_msgs=N,
/// tot_recv_msgs=M`.
pub fn uclient_totals(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let num = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((num("tot_send_msgs=")?, num("tot_recv_msgs=")?))
}

/// Fails the test unless a `turnutils_uclient` log (stdout and stderr)
/// shows `messages` sent and all of them back, none lost, and no TURN
/// error answered.
pub fn assert_uclient_round_trips(mode: &str, log: &str, messages: u64) {
    assert_eq!(uclient_totals(log), Some((messages, messages)), "{mode}: uclient log:\n{log}");
    assert!(log.contains("Total lost packets 0 (0.000000%)"), "{mode}: uclient log:\n{log}");
    // A TURN error response ("error 400 (Bad Request)"). uclient's TLS
    // probing of protocol versions rustls does not offer (TLS 1.0/1.1)
    // logs "error:0A000126" lines and then connects with 1.2/1.3.
    let turn_error =
        log.lines().any(|l| l.split("error ").skip(1).any(|rest| rest.starts_with(|c: char| c.is_ascii_digit())));
    assert!(!turn_error, "{mode}: uclient reported a TURN error:\n{log}");
}
