//! Real browsers through turn-relay: headless Chromium connects two
//! `RTCPeerConnection`s in one page, both relay-only
//! (`iceTransportPolicy: "relay"`) with this turn-relay as their only ICE
//! server, and pushes data across an ordered, reliable data channel. Each
//! test proves, for one client transport —
//!
//! * `turn:IP:3478?transport=udp`
//! * `turn:IP:3478?transport=tcp`
//! * `turns:IP:5349?transport=tcp` (TLS, a self-signed certificate made
//!   with rcgen, which Chromium accepts with `--ignore-certificate-errors`:
//!   without it gathering fails with error 701)
//!
//! * `turn:IP:3478?transport=udp` with the relay in a namespace of its own
//!   behind a veth pair and the kernel fast path on (`--fast-path xdp`):
//!   the browsers' ChannelData goes from one to the other in the XDP
//!   program (relay to relay), which the metrics must show
//!
//! * each of the three with a fleet of two nodes (`…Redirect`): the
//!   browsers are given node A only, which answers every Allocate 300
//!   (Try Alternate, `--redirect-above-allocations 0`) naming node B on a
//!   second address of the namespace (libwebrtc refuses loopback
//!   alternates, so the nodes sit on the veth); libwebrtc follows it (over
//!   UDP with the same socket, over TCP and TLS with a new connection), and
//!   both sides' relayed addresses must be B's (its IP, its relay ports),
//!   A must have counted the redirects and allocated nothing, B must have
//!   allocated: a shorter call (200 messages, 256 KiB)
//!
//! — that the candidate pair both sides selected (getStats: the transport's
//! `selectedCandidatePairId`) is relay/relay and its `relayProtocol` is that
//! transport; that 3,000 numbered messages arrive intact and in order; and
//! that 4 MiB sent in 16 KiB chunks (under `bufferedAmount` flow control)
//! arrive with the SHA-256 they were sent with. Each side's relayed address
//! is turn-relay's own, so the peers' permissions and channels name the
//! server's own relay addresses: this is relay-to-relay through one server,
//! with the default peer policy (no `--allow-peer`).
//!
//! Chromium gathers nothing on loopback alone, so each test builds a
//! network namespace of its own (`trwebrtc<pid><transport>`, removed at the
//! end, on failure too) holding a veth pair with both ends inside:
//!
//! ```text
//!   namespace trwebrtc<pid><t>:  lo up
//!     wa 10.203.N.1/24  <── veth ──>  wb 10.203.N.2/24
//!     turn-relay on 10.203.N.1 (UDP+TCP 3478, TLS 5349, relay IP 10.203.N.1)
//!     (redirect tests: node B on 10.203.N.3, a second address of wa,
//!      the same ports, relay IP 10.203.N.3, metrics on 127.0.0.1:9642)
//!     node drive.js → headless Chromium → page.html
//! ```
//!
//! turn-relay, node and Chromium all run inside it (`ip netns exec`), so
//! nothing is reachable from or to the host's own network. The page and
//! its driver are in `tests/webrtc/` (`page.html`, `drive.js`, driven with
//! `playwright-core` from npm; `npm ci` there installs it). The tests run
//! one at a time (two Chromiums would fight for a small machine's cores).
//! A line with the getStats pair summary and the timings is always printed
//! on stderr; the driver's full output with `--nocapture` or on failure;
//! turn-relay's debug log on failure.
//!
//! Run: `cargo test -p relay-bin --test webrtc -- --nocapture` as root,
//! with `/usr/bin/chromium` (`apt-get install chromium`; another binary
//! with `TURN_RELAY_CHROMIUM=PATH`), node and
//! `(cd relay-bin/tests/webrtc && npm ci)`. Without root, namespaces,
//! Chromium, node or the npm modules each test prints `SKIPPED` and why —
//! and fails instead under CI (`CI=true`, see `common::skip`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::{Killed, have, run_bounded, sh, skip};

const BIN: &str = env!("CARGO_BIN_EXE_turn-relay");
/// turn-relay's metrics, inside the namespace.
const METRICS: &str = "http://127.0.0.1:9641/metrics";
/// The alternate node's (redirect tests).
const METRICS_B: &str = "http://127.0.0.1:9642/metrics";
/// The alternate node's relay ports (node A has 50000-50031).
const RELAY_PORTS_B: (u16, u16) = (50100, 50131);
/// The redirect tests' shorter call.
const SHORT_MESSAGES: &str = "200";
const SHORT_BULK_BYTES: &str = "262144";
const MESSAGES: &str = "3000";
const BULK_BYTES: &str = "4194304";
/// Bound of each of the page's steps (connect, messages, bulk).
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of the whole browser run (node kills itself a little after).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(45);

/// One test at a time: each starts a Chromium.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
    Tls,
    /// UDP with the relay in a namespace of its own and the kernel fast
    /// path on (see [`Lab::build`]).
    UdpFastPath,
    /// The browsers are given node A, which redirects them to node B.
    UdpRedirect,
    /// The same over TCP.
    TcpRedirect,
    /// The same over TLS.
    TlsRedirect,
}

impl Transport {
    /// The relayProtocol the browsers report.
    fn name(self) -> &'static str {
        match self {
            Transport::Udp | Transport::UdpFastPath | Transport::UdpRedirect => "udp",
            Transport::Tcp | Transport::TcpRedirect => "tcp",
            Transport::Tls | Transport::TlsRedirect => "tls",
        }
    }

    /// For the namespaces' names.
    fn tag(self) -> &'static str {
        match self {
            Transport::UdpFastPath => "xdp",
            Transport::UdpRedirect => "rudp",
            Transport::TcpRedirect => "rtcp",
            Transport::TlsRedirect => "rtls",
            t => t.name(),
        }
    }

    /// Whether node A redirects to node B.
    fn redirect(self) -> bool {
        matches!(self, Transport::UdpRedirect | Transport::TcpRedirect | Transport::TlsRedirect)
    }

    /// Messages and bulk bytes the page sends.
    fn load(self) -> (&'static str, &'static str) {
        if self.redirect() { (SHORT_MESSAGES, SHORT_BULK_BYTES) } else { (MESSAGES, BULK_BYTES) }
    }

    /// The third octet of the namespace's addresses (any would do: each
    /// namespace is alone; distinct ones keep logs apart).
    fn net(self) -> u8 {
        match self {
            Transport::Udp => 1,
            Transport::Tcp => 2,
            Transport::Tls => 3,
            Transport::UdpFastPath => 4,
            Transport::UdpRedirect => 5,
            Transport::TcpRedirect => 6,
            Transport::TlsRedirect => 7,
        }
    }

    fn url(self, ip: &str) -> String {
        match self {
            Transport::Udp | Transport::UdpFastPath | Transport::UdpRedirect => format!("turn:{ip}:3478?transport=udp"),
            Transport::Tcp | Transport::TcpRedirect => format!("turn:{ip}:3478?transport=tcp"),
            Transport::Tls | Transport::TlsRedirect => format!("turns:{ip}:5349?transport=tcp"),
        }
    }
}

/// Writes to the stream itself, shown even when the test passes (the
/// harness captures only print!/eprint!).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The namespace, the relay and the temporary directory of one test;
/// everything removed on drop: the relay, then every process still in the
/// namespace (node and Chromium, all started by this test), the namespace,
/// the directory.
struct Lab {
    /// The browsers' namespace (and the relay's, but for the fast path).
    ns: String,
    /// The relay's namespace.
    relay_ns: String,
    dir: PathBuf,
    ip: String,
    relay: Option<Killed>,
    /// Node B, where node A sends the browsers (redirect tests), and its IP.
    alternate: Option<Killed>,
    alternate_ip: Option<String>,
    fast: bool,
    /// The browsers' device's XDP program (fast path only).
    passive: Option<relay_io::fastpath::PassiveXdp>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.relay.take());
        drop(self.alternate.take());
        drop(self.passive.take());
        let namespaces = if self.fast { vec![&self.ns, &self.relay_ns] } else { vec![&self.ns] };
        for ns in namespaces {
            for _ in 0..50 {
                let out = run_bounded(Command::new("ip").args(["netns", "pids", ns]), Duration::from_secs(5));
                let pids =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>();
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    let _ = run_bounded(Command::new("kill").args(["-9", &pid]), Duration::from_secs(5));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = run_bounded(Command::new("ip").args(["netns", "del", ns]), Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why a lab cannot be had: skip or fail.
enum NoLab {
    Skip(String),
    Fail(String),
}

fn webrtc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("webrtc")
}

fn chromium() -> String {
    std::env::var("TURN_RELAY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

impl Lab {
    /// Checks the tools, then makes the namespace, its veth pair and the
    /// temporary directory.
    fn build(t: Transport) -> Result<Lab, NoLab> {
        if !have("ip") {
            return Err(NoLab::Skip("`ip` (iproute2) is not installed".into()));
        }
        if !Path::new(&chromium()).is_file() {
            return Err(NoLab::Skip(format!("no Chromium at {} (apt-get install chromium)", chromium())));
        }
        if !have("node") {
            return Err(NoLab::Skip("`node` is not installed".into()));
        }
        let modules = webrtc_dir().join("node_modules").join("playwright-core");
        if !modules.is_dir() {
            return Err(NoLab::Skip(format!(
                "{} is missing (npm ci in {})",
                modules.display(),
                webrtc_dir().display()
            )));
        }
        let ns = format!("trwebrtc{}{}", std::process::id(), t.tag());
        let fast = matches!(t, Transport::UdpFastPath);
        let relay_ns = if fast { format!("{ns}r") } else { ns.clone() };
        let dir = std::env::temp_dir().join(&ns);
        let ip = format!("10.203.{}.1", t.net());
        if let Err(e) = sh(&["ip", "netns", "add", &ns]) {
            if e.contains("Operation not permitted") || e.contains("Permission denied") {
                return Err(NoLab::Skip(format!("no privileges to create network namespaces (root needed): {e}")));
            }
            return Err(NoLab::Fail(e));
        }
        let mut lab =
            Lab { ns, relay_ns, dir, ip, relay: None, alternate: None, alternate_ip: None, fast, passive: None };
        std::fs::create_dir_all(&lab.dir).map_err(|e| NoLab::Fail(format!("{}: {e}", lab.dir.display())))?;
        let (ns, r, a, b) = (&lab.ns, &lab.relay_ns, format!("{}/24", lab.ip), format!("10.203.{}.2/24", t.net()));
        if fast {
            // The relay across a veth pair in its own namespace (wa the
            // relay's end, wb the browsers'), forwarding on (the program's
            // route lookup needs it); the browsers' end computes full
            // checksums, as a NIC's traffic has them, and carries an XDP
            // program of its own (veth delivers XDP_TX frames only then).
            sh(&["ip", "netns", "add", r]).map_err(NoLab::Fail)?;
            let steps: [&[&str]; 8] = [
                &["ip", "-n", ns, "link", "add", "wb", "type", "veth", "peer", "name", "wa", "netns", r],
                &["ip", "-n", r, "addr", "add", &a, "dev", "wa"],
                &["ip", "-n", ns, "addr", "add", &b, "dev", "wb"],
                &["ip", "-n", ns, "link", "set", "lo", "up"],
                &["ip", "-n", r, "link", "set", "lo", "up"],
                &["ip", "-n", r, "link", "set", "wa", "up"],
                &["ip", "-n", ns, "link", "set", "wb", "up"],
                &["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ];
            for step in steps {
                sh(step).map_err(NoLab::Fail)?;
            }
            sh(&["ip", "netns", "exec", ns, "ethtool", "-K", "wb", "tx", "off"]).map_err(NoLab::Fail)?;
            let name = ns.clone();
            let passive = std::thread::spawn(move || {
                relay_io::sys::enter_netns(&name).map_err(|e| e.to_string())?;
                relay_io::fastpath::PassiveXdp::attach("wb").map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| NoLab::Fail("the namespace thread panicked".into()))?;
            lab.passive = Some(passive.map_err(NoLab::Fail)?);
            return Ok(lab);
        }
        let steps: [&[&str]; 6] = [
            &["ip", "-n", ns, "link", "add", "wa", "type", "veth", "peer", "name", "wb"],
            &["ip", "-n", ns, "addr", "add", &a, "dev", "wa"],
            &["ip", "-n", ns, "addr", "add", &b, "dev", "wb"],
            &["ip", "-n", ns, "link", "set", "lo", "up"],
            &["ip", "-n", ns, "link", "set", "wa", "up"],
            &["ip", "-n", ns, "link", "set", "wb", "up"],
        ];
        for step in steps {
            sh(step).map_err(NoLab::Fail)?;
        }
        if t.redirect() {
            // Node B's address, beside node A's on the same device.
            let b_ip = format!("10.203.{}.3", t.net());
            sh(&["ip", "-n", &lab.ns, "addr", "add", &format!("{b_ip}/24"), "dev", "wa"]).map_err(NoLab::Fail)?;
            lab.alternate_ip = Some(b_ip);
        }
        Ok(lab)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("relay.log")
    }

    fn log_path_b(&self) -> PathBuf {
        self.dir.join("relay-b.log")
    }

    /// Starts turn-relay in the namespace, its debug log in the directory,
    /// and waits until UDP, TCP and TLS answer. With an alternate address
    /// (redirect tests), node B first, there, and node A redirecting every
    /// Allocate to it.
    fn start_relay(&mut self) -> Result<(), String> {
        let mut extra = Vec::new();
        if let Some(b_ip) = self.alternate_ip.clone() {
            let ports = format!("{}-{}", RELAY_PORTS_B.0, RELAY_PORTS_B.1);
            let b = self.start_node(&b_ip, &ports, "127.0.0.1:9642", &self.log_path_b(), &[])?;
            self.alternate = Some(b);
            self.wait_up(&b_ip, true)?;
            extra = vec![
                "--alternate".to_owned(),
                format!("{b_ip}:3478"),
                "--alternate-tls".to_owned(),
                format!("{b_ip}:5349=turn.test"),
                "--redirect-above-allocations".to_owned(),
                "0".to_owned(),
            ];
        }
        let ip = self.ip.clone();
        let a = self.start_node(&ip, "50000-50031", "127.0.0.1:9641", &self.log_path(), &extra)?;
        self.relay = Some(a);
        self.wait_up(&ip, false)
    }

    /// Starts one turn-relay on `ip` in the relay's namespace (UDP+TCP
    /// 3478, TLS 5349 with a fresh self-signed certificate).
    fn start_node(
        &self,
        ip: &str,
        relay_ports: &str,
        metrics: &str,
        log: &Path,
        extra: &[String],
    ) -> Result<Killed, String> {
        let ck = rcgen::generate_simple_self_signed(vec![ip.to_owned(), "turn.test".to_owned()])
            .map_err(|e| e.to_string())?;
        let (cert, key) = (self.dir.join(format!("cert-{ip}.pem")), self.dir.join(format!("key-{ip}.pem")));
        std::fs::write(&cert, ck.cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key, ck.signing_key.serialize_pem()).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let fast_path = if self.fast { "xdp" } else { "auto" };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.relay_ns, BIN, "--fast-path", fast_path])
            .args(["--listen", &format!("{ip}:3478"), "--listen-tcp", &format!("{ip}:3478")])
            .args(["--listen-tls", &format!("{ip}:5349")])
            .args(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
            .args(["--relay-ip", ip, "--relay-ports", relay_ports])
            .args(["--user", "test:pass", "--realm", "example.org"])
            .args(["--shards", "1", "--no-pin", "--metrics", metrics, "--log-level", "debug"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(Killed(child))
    }

    /// Waits until the node on `ip` (node B's with `b`) answers over UDP
    /// and TCP and accepts TCP on the TLS port.
    fn wait_up(&mut self, ip: &str, b: bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let tcp_check = format!("exec 3<>/dev/tcp/{ip}/3478 && exec 4<>/dev/tcp/{ip}/5349");
        loop {
            let udp = run_bounded(
                Command::new("ip")
                    .args(["netns", "exec", &self.relay_ns, BIN, "probe", &format!("stun:{ip}:3478")])
                    .args(["--rto", "50", "--rc", "2", "--rm", "2"]),
                Duration::from_secs(5),
            );
            let tcp_cmd = &mut Command::new("ip");
            tcp_cmd.args(["netns", "exec", &self.relay_ns, "bash", "-c", &tcp_check]);
            let tcp_ok = run_bounded(tcp_cmd, Duration::from_secs(5)).status.success();
            if udp.status.success() && tcp_ok {
                return Ok(());
            }
            let node = if b { self.alternate.as_mut() } else { self.relay.as_mut() };
            if let Some(Ok(Some(status))) = node.map(|r| r.0.try_wait()) {
                return Err(format!("turn-relay on {ip} exited ({status}):\n{}", self.relay_log_of(b)));
            }
            if Instant::now() > deadline {
                return Err(format!("turn-relay did not come up on {ip} in the namespace:\n{}", self.relay_log_of(b)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// turn-relay's non-zero request, relaying and drop counters, from its
    /// metrics inside the namespace (for diagnosis only: counters are
    /// published with some delay, and their names are not this test's).
    fn counters(&self) -> String {
        self.counters_of(METRICS)
    }

    /// All of the metrics at `url`, inside the namespace.
    fn metrics(&self, url: &str) -> (String, String) {
        let out = run_bounded(
            Command::new("ip").args(["netns", "exec", &self.relay_ns, "curl", "-sS", "--max-time", "5"]).arg(url),
            Duration::from_secs(10),
        );
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// [`Lab::counters`] of the node whose metrics are at `url`.
    fn counters_of(&self, url: &str) -> String {
        let (text, err) = self.metrics(url);
        let wanted = [
            "turn_requests_total",
            "turn_relay",
            "turn_dropped",
            "turn_auth_failures",
            "turn_send_failures",
            "turn_fast_path",
        ];
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
            .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
            .collect();
        if lines.is_empty() { format!("(no counters from {url}: {})", err.trim()) } else { lines.join("\n") }
    }

    /// turn-relay's log, the last 400 lines at most (and node B's, when
    /// there is one).
    fn relay_log(&self) -> String {
        let a = self.relay_log_of(false);
        if self.alternate_ip.is_some() { format!("{a}\n{}", self.relay_log_of(true)) } else { a }
    }

    /// Node A's log (node B's with `b`), the last 400 lines at most.
    fn relay_log_of(&self, b: bool) -> String {
        let (path, node) = if b { (self.log_path_b(), " B") } else { (self.log_path(), "") };
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(400);
        let (n, first) = (lines.len(), from + 1);
        format!("--- turn-relay{node} log ({n} lines, from line {first}) ---\n{}", lines[from..].join("\n"))
    }

    /// Runs the page through drive.js in the namespace; its output.
    fn browse(&self, t: Transport) -> (bool, String, String) {
        let config = format!(
            concat!(
                r#"{{"chromium":"{}","userDataDir":"{}","chromiumArgs":{},"#,
                r#""iceServers":[{{"urls":"{}","username":"test","credential":"pass"}}],"#,
                r#""relayProtocol":"{}","stepTimeoutMs":{},"timeoutMs":{},"#,
                r#""messages":{},"bulkBytes":{}}}"#
            ),
            chromium(),
            self.dir.join("profile").display(),
            match t {
                Transport::Tls | Transport::TlsRedirect => r#"["--ignore-certificate-errors"]"#,
                _ => "[]",
            },
            t.url(&self.ip),
            t.name(),
            STEP_TIMEOUT.as_millis(),
            BROWSER_TIMEOUT.as_millis(),
            t.load().0,
            t.load().1,
        );
        let script = webrtc_dir().join("drive.js");
        let out = run_bounded(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "node", script.to_str().unwrap(), &config])
                .current_dir(webrtc_dir())
                // Chromium's NSS database and caches go to the directory.
                .env("HOME", &self.dir)
                .env("XDG_CONFIG_HOME", self.dir.join("config"))
                .env("XDG_CACHE_HOME", self.dir.join("cache")),
            BROWSER_TIMEOUT + Duration::from_secs(10),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The `key=value` lines of drive.js's output.
fn fields(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("RESULT "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn webrtc_through(t: Transport) {
    let test = match t {
        Transport::UdpFastPath => "webrtc over udp through the kernel fast path".to_owned(),
        t if t.redirect() => format!("webrtc over {} redirected to another node", t.name()),
        t => format!("webrtc over {}", t.name()),
    };
    let (messages, bulk_bytes) = t.load();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut lab = match Lab::build(t) {
        Ok(lab) => lab,
        Err(NoLab::Skip(why)) => return skip(&test, &why),
        Err(NoLab::Fail(why)) => panic!("{test}: {why}"),
    };
    lab.start_relay().unwrap_or_else(|e| panic!("{test}: {e}"));
    let (ok, stdout, stderr) = lab.browse(t);
    let f = fields(&stdout);
    let get = |k: &str| f.get(k).map_or("<missing>", String::as_str);
    let summary = format!(
        "{test}: a {}/{} {} {} -> {}, b {}/{} {} {} -> {}; connect {} ms, {} messages {} ms, {} bytes {} ms \
         ({} Mbit/s), sha256 {}; {:.1} s in all",
        get("a.local"),
        get("a.remote"),
        get("a.relayProtocol"),
        get("a.localAddress"),
        get("a.remoteAddress"),
        get("b.local"),
        get("b.remote"),
        get("b.relayProtocol"),
        get("b.localAddress"),
        get("b.remoteAddress"),
        get("connectMs"),
        get("messages"),
        get("messagesMs"),
        get("bulkBytes"),
        get("bulkMs"),
        get("bulkMbitPerS"),
        if get("shaSent").len() == 64 && get("shaSent") == get("shaReceived") { "matches" } else { "does not match" },
        started.elapsed().as_secs_f64(),
    );
    say(&summary);
    eprintln!("--- drive.js stdout ---\n{stdout}\n--- drive.js stderr ---\n{stderr}");
    eprintln!("--- turn-relay counters ---\n{}", lab.counters());
    if !ok {
        say(&format!("--- turn-relay counters ---\n{}", lab.counters()));
        say(&lab.relay_log());
        let why = f.get("error").cloned().unwrap_or_else(|| {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
            format!("drive.js failed: {last}")
        });
        panic!("{test}: the page failed: {why}");
    }
    // The page checked all this; the test checks it again.
    let mut problems = Vec::new();
    for side in ["a", "b"] {
        for end in ["local", "remote"] {
            let key = format!("{side}.{end}");
            if get(&key) != "relay" {
                problems.push(format!("{key} candidate is {}, not relay", get(&key)));
            }
        }
        let key = format!("{side}.relayProtocol");
        if get(&key) != t.name() {
            problems.push(format!("{key} is {}, not {}", get(&key), t.name()));
        }
    }
    if get("messages") != messages || get("orderError") != "null" {
        problems.push(format!("{} of {messages} messages, order: {}", get("messages"), get("orderError")));
    }
    if get("bulkBytes") != bulk_bytes {
        problems.push(format!("{} of {bulk_bytes} bulk bytes", get("bulkBytes")));
    }
    if get("shaSent").len() != 64 || get("shaSent") != get("shaReceived") {
        problems.push(format!("SHA-256 sent {}, received {}", get("shaSent"), get("shaReceived")));
    }
    if lab.fast {
        // The two browsers' channels point at each other's relay address:
        // relay to relay, in the kernel (published once a second).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let counters = lab.counters();
            let relayed = counters
                .lines()
                .find(|l| l.starts_with(r#"turn_fast_path_packets_total{direction="relay_to_relay"}"#))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            say(&format!("{test}: {relayed} datagrams relayed browser to browser in the kernel"));
            if relayed >= 3000.0 {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("only {relayed} datagrams went through the fast path:\n{counters}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if let Some(b_ip) = &lab.alternate_ip {
        problems.extend(redirect_problems(&lab, b_ip, &f));
    }
    if !problems.is_empty() {
        say(&format!("--- turn-relay counters ---\n{}", lab.counters()));
        say(&lab.relay_log());
        panic!("{test}: {}", problems.join("; "));
    }
}

/// What is wrong with a redirect test's outcome: both sides' relayed
/// addresses must be node B's (its IP, one of its relay ports), node A must
/// have redirected (counted as load) and allocated nothing, node B must
/// have allocated.
fn redirect_problems(lab: &Lab, b_ip: &str, f: &BTreeMap<String, String>) -> Vec<String> {
    let get = |k: &str| f.get(k).map_or("<missing>", String::as_str);
    let mut problems = Vec::new();
    for side in ["a", "b"] {
        let key = format!("{side}.localAddress");
        let on_b = get(&key).rsplit_once(':').is_some_and(|(ip, port)| {
            ip == b_ip && port.parse::<u16>().is_ok_and(|p| (RELAY_PORTS_B.0..=RELAY_PORTS_B.1).contains(&p))
        });
        if !on_b {
            let (lo, hi) = RELAY_PORTS_B;
            problems.push(format!("{key} is {}, not node B's ({b_ip}, ports {lo}-{hi})", get(&key)));
        }
    }
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    // Counters are published once a second: wait for the redirects.
    let load = r#"turn_redirects_total{reason="load"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (a, b) = loop {
        let (a, b) = (lab.metrics(METRICS).0, lab.metrics(METRICS_B).0);
        if (value(&a, load) >= 2.0 && value(&b, "turn_allocations_created_total") >= 2.0) || Instant::now() > deadline {
            break (a, b);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let (redirects, created_a, created_b) =
        (value(&a, load), value(&a, "turn_allocations_created_total"), value(&b, "turn_allocations_created_total"));
    say(&format!(
        "node A redirected {redirects} Allocates and created {created_a} allocations; node B created {created_b}"
    ));
    if redirects < 2.0 {
        problems.push(format!("node A counted {redirects} redirects, not one per browser at least"));
    }
    if created_a != 0.0 {
        problems.push(format!("node A created {created_a} allocations"));
    }
    if created_b < 2.0 {
        problems.push(format!("node B created {created_b} allocations, not one per browser at least"));
    }
    if !problems.is_empty() {
        say(&format!("--- node B counters ---\n{}", lab.counters_of(METRICS_B)));
    }
    problems
}

#[test]
fn webrtc_data_channel_over_turn_udp() {
    webrtc_through(Transport::Udp);
}

#[test]
fn webrtc_data_channel_over_turn_tcp() {
    webrtc_through(Transport::Tcp);
}

#[test]
fn webrtc_data_channel_over_turns_tls() {
    webrtc_through(Transport::Tls);
}

#[test]
fn webrtc_data_channel_over_turn_udp_through_the_kernel_fast_path() {
    webrtc_through(Transport::UdpFastPath);
}

#[test]
fn webrtc_follows_a_redirect_over_turn_udp() {
    webrtc_through(Transport::UdpRedirect);
}

#[test]
fn webrtc_follows_a_redirect_over_turn_tcp() {
    webrtc_through(Transport::TcpRedirect);
}

#[test]
fn webrtc_follows_a_redirect_over_turns_tls() {
    webrtc_through(Transport::TlsRedirect);
}
