//! The `turn-relay` binary as an operator runs it, over loopback: flags and
//! a config file, a full relay round trip, metrics and health endpoints,
//! SIGHUP credential reload without losing allocations, and SIGTERM drain.
//! Every process started here is stopped by its pid; every wait is bounded.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_port, http_get, metric_at};
use relay_core::wire::{Attribute, AttributeType, ChannelData, Class, Message, Method};
use test_kit::{Login, StreamClient, TurnClient, recv_from};

const REALM: &str = "bin.test";
const TIMEOUT: Duration = Duration::from_secs(3);

/// A relay port range unlikely to be in use: below the ephemeral range
/// the kernel hands out by default on Linux, varied by pid, and one of its
/// own for each `slot` (tests running at once must not share one).
fn relay_range(slot: u16) -> String {
    assert!(slot < 4);
    let lo = 20000 + (std::process::id() % 150) as u16 * 80 + slot * 20;
    format!("{lo}-{}", lo + 15)
}

struct Relay {
    child: Child,
    server: SocketAddr,
    metrics: SocketAddr,
}

impl Relay {
    fn start(extra: &[&str]) -> Relay {
        let port = free_udp_port("127.0.0.1");
        let metrics_port = free_tcp_port("127.0.0.1");
        let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
        let mut args = vec![
            "--listen".to_owned(),
            server.to_string(),
            "--listen-tcp".into(),
            server.to_string(),
            "--relay-ip".into(),
            "127.0.0.1".into(),
            "--relay-ports".into(),
            relay_range(0),
            "--realm".into(),
            REALM.into(),
            "--allow-peer".into(),
            "127.0.0.0/8".into(),
            "--metrics".into(),
            metrics.to_string(),
            "--shards".into(),
            "1".into(),
            "--no-pin".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Relay::spawn(server, metrics, &args)
    }

    /// Starts turn-relay with exactly `args` (which must serve metrics on
    /// `metrics`) and waits until it is up.
    fn spawn(server: SocketAddr, metrics: SocketAddr, args: &[String]) -> Relay {
        let child = Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Relay { child, server, metrics };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(r.metrics, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "turn-relay did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn signal(&self, sig: i32) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of the relay in realm [`REALM`], waiting [`TIMEOUT`] for answers.
fn client(server: SocketAddr, user: &str, password: &str) -> TurnClient {
    TurnClient::new(server, Login { user, password, realm: REALM }).with_timeout(TIMEOUT)
}

/// Sends ChannelData `n` times through the relay and checks the echo.
fn round_trip(c: &TurnClient, peer: &UdpSocket, relayed: SocketAddr, n: u32) {
    let mut buf = [0u8; 2048];
    for i in 0..n {
        c.send_channel_data(0x4000, &i.to_be_bytes());
        let (k, from) = recv_from(peer, &mut buf).expect("peer receives");
        assert_eq!((&buf[..k], from), (&i.to_be_bytes()[..], relayed));
        peer.send_to(&buf[..k], relayed).unwrap();
        let (k, _) = recv_from(&c.sock, &mut buf).expect("client receives");
        let cd = ChannelData::parse(&buf[..k]).unwrap();
        assert_eq!(cd.payload, &i.to_be_bytes());
    }
}

#[test]
fn relays_reports_metrics_reloads_and_drains() {
    let dir = std::env::temp_dir().join(format!("turn-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users");
    std::fs::write(&users, "alice:secret\n").unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(&config, format!("[auth]\nuser_file = {:?}\n", users.display().to_string())).unwrap();
    let mut relay = Relay::start(&["--config", config.to_str().unwrap()]);

    // Binding, no auth.
    let mut c = client(relay.server, "alice", "secret");
    let resp = c.ok(Method::BINDING, &[]);
    let m = Message::parse(&resp).unwrap();
    let mapped = m.get(AttributeType::XOR_MAPPED_ADDRESS).unwrap().decode(&m.transaction_id()).unwrap();
    assert_eq!(mapped, Attribute::XorMappedAddress(c.sock.local_addr().unwrap()));

    // A relay round trip.
    let relayed = c.allocate().unwrap();
    let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.ok(
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(peer.local_addr().unwrap())],
    );
    round_trip(&c, &peer, relayed, 20);

    // Metrics (published once a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    let sent = r#"turn_relayed_packets_total{direction="to_peer",transport="udp"}"#;
    while metric_at(relay.metrics, sent) != Some(20.0) {
        assert!(Instant::now() < deadline, "metrics never showed 20 relayed packets");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric_at(relay.metrics, "turn_allocations_active"), Some(1.0));

    // Batched UDP: a peer's burst, sent as one GSO message, arrives
    // coalesced and leaves for the client as one GSO send; the counters
    // say so.
    {
        use std::os::fd::AsRawFd;
        let mut b = relay_io::sys::Batch::new(10, 0, 8);
        b.set_gso(true);
        for j in 0..10 {
            b.slot_and_reply(j).1.copy_from_slice(&(1000 + j as u64).to_be_bytes());
            b.send_reply(peer.as_raw_fd(), relayed, j, 8);
        }
        assert_eq!(b.flush(), (10, 0));
        let mut buf = [0u8; 2048];
        for j in 0..10u64 {
            let (k, _) = recv_from(&c.sock, &mut buf).expect("client receives the burst");
            assert_eq!(ChannelData::parse(&buf[..k]).unwrap().payload, &(1000 + j).to_be_bytes());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_at(relay.metrics, "turn_udp_gro_datagrams_total").unwrap_or(0.0) < 10.0
        || metric_at(relay.metrics, "turn_udp_gso_sends_total").unwrap_or(0.0) < 1.0
    {
        assert!(Instant::now() < deadline, "metrics never showed the batched burst");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric_at(relay.metrics, r#"turn_udp_sent_datagrams_total{batched="yes"}"#).unwrap() >= 10.0);
    assert!(metric_at(relay.metrics, r#"turn_udp_sent_datagrams_total{batched="no"}"#).unwrap() >= 20.0);
    assert_eq!(metric_at(relay.metrics, "turn_udp_gso_fallbacks_total"), Some(0.0));
    assert!(metric_at(relay.metrics, r#"turn_requests_total{method="allocate",result="success"}"#) == Some(1.0));
    assert_eq!(http_get(relay.metrics, "/readyz").unwrap().status, 200);

    // A user unknown to the file is refused; after editing the file and
    // SIGHUP, accepted, and alice's allocation still relays.
    let mut bob = client(relay.server, "bob", "builder");
    assert_eq!(bob.allocate(), Err(401));
    std::fs::write(&users, "alice:secret\nbob:builder\n").unwrap();
    relay.signal(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut bob = loop {
        let mut b = client(relay.server, "bob", "builder");
        if b.allocate().is_ok() {
            break b;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload the user file");
        std::thread::sleep(Duration::from_millis(100));
    };
    round_trip(&c, &peer, relayed, 5);

    // SIGTERM: not ready, no new allocations, running ones go on.
    relay.signal(15);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http_get(relay.metrics, "/readyz").unwrap().status, 503);
    let mut late = client(relay.server, "alice", "secret");
    assert_eq!(late.allocate(), Err(508));
    round_trip(&c, &peer, relayed, 5);
    assert!(relay.wait_exit(Duration::from_millis(200)).is_none());
    // When the last allocations end, the process exits cleanly.
    c.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
    bob.ok(Method::REFRESH, &[Attribute::Lifetime(0)]);
    let status = relay.wait_exit(Duration::from_secs(5)).expect("turn-relay did not exit after draining");
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_configuration_is_refused_before_any_socket() {
    let dir = std::env::temp_dir().join(format!("turn-relay-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[server]\nrealm = \"x\"\n[limits]\nmax_lifetime = \"long\"\n").unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_turn-relay")).args(["--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4: limits.max_lifetime:", path.display())), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_turn-relay")).args(["--relay-ports", "5-1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<command line>: relay.ports"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_reads_the_tls_certificate_and_key() {
    let dir = std::env::temp_dir().join(format!("turn-relay-check-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
        cmd.args(args).arg("--check-config");
        let out = common::run_bounded(&mut cmd, Duration::from_secs(10));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cert = test_kit::certificate(&["localhost"]);
    let other = test_kit::certificate(&["localhost"]);
    let (cert_file, key_file, other_key) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("other-key.pem"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let missing = dir.join("missing.pem");
    let config = dir.join("relay.toml");
    let write = |cert: &std::path::Path, key: &std::path::Path| {
        let tls = format!("[listen]\ntls = [\"127.0.0.1:5349\"]\n[tls]\ncert = {:?}\nkey = {:?}\n", cert, key);
        std::fs::write(&config, tls).unwrap();
    };
    let with_file = ["--config", config.to_str().unwrap()];

    // A valid pair passes (and nothing is bound: the check only reads).
    write(&cert_file, &key_file);
    let (code, out, err) = check(&with_file);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("configuration ok"), "{out}");
    // A missing certificate: the file, line and key, and the file's name.
    write(&missing, &key_file);
    let (code, _, err) = check(&with_file);
    assert_eq!(code, Some(2), "{err}");
    let want = format!("{}:4: tls.cert: {}: ", config.display(), missing.display());
    assert!(err.contains(&want), "{err}");
    // A key that is not a key (a certificate), and one of another certificate.
    write(&cert_file, &cert_file);
    let (code, _, err) = check(&with_file);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{}:5: tls.key: {}: ", config.display(), cert_file.display())), "{err}");
    write(&cert_file, &other_key);
    let (code, _, err) = check(&with_file);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("{}:5: tls.key: {}", config.display(), other_key.display())), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "no key material in errors: {err}");
    // Set by flags: the command line is named.
    let flags = ["--listen-tls", "127.0.0.1:5349", "--tls-key", key_file.to_str().unwrap()];
    let (code, _, err) = check(&[&flags[..], &["--tls-cert", missing.to_str().unwrap()]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("<command line>: tls.cert: {}: ", missing.display())), "{err}");
    let (code, _, err) = check(&[&flags[..], &["--tls-cert", cert_file.to_str().unwrap()]].concat());
    assert_eq!(code, Some(0), "{err}");
    // The start reads the same: a missing certificate stops it before any
    // socket, with the same error.
    write(&missing, &key_file);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
    cmd.args(with_file).args(["--listen", "127.0.0.1:0", "--relay-ports", &relay_range(3)]);
    let out = common::run_bounded(&mut cmd, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:4: tls.cert: {}: ", config.display(), missing.display())), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `turn-relay --demo` hands over to `turn-bench demo`, found next to it,
/// which starts this binary on loopback and drives a load through it
/// (turn-relay holds no load generator). A workspace build (scripts/test)
/// puts turn-bench there; a build of relay-bin alone may not.
#[test]
fn demo_relays_a_load_from_turn_bench() {
    let relay = std::path::Path::new(env!("CARGO_BIN_EXE_turn-relay"));
    if !relay.with_file_name("turn-bench").is_file() {
        return common::skip(
            "demo_relays_a_load_from_turn_bench",
            "turn-bench is not built next to turn-relay (cargo build -p bench-harness)",
        );
    }
    let out = Command::new(relay).args(["--demo", "--demo-seconds", "1", "--log-level", "warn"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("turn-bench demo: {} (pid ", relay.display())), "{stdout}");
    assert!(stdout.contains("turn-bench throughput"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("relay counters:")).expect("relay counters line");
    let to_peers: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(to_peers > 1000, "the demo relayed only {to_peers} packets:\n{stdout}");
}

/// Without turn-bench beside it or on PATH, `--demo` says how to get it.
#[test]
fn demo_without_turn_bench_says_how_to_get_it() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("demo-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alone = dir.join("turn-relay");
    let _ = std::fs::remove_file(&alone);
    if std::fs::hard_link(env!("CARGO_BIN_EXE_turn-relay"), &alone).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_turn-relay"), &alone).unwrap();
    }
    let out = Command::new(&alone).arg("--demo").env("PATH", &dir).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("turn-relay --demo: the demo is run by the load generator, turn-bench"), "{err}");
    assert!(err.contains("scripts/demo") && err.contains("turn-bench demo"), "{err}");
}

/// Every configuration key documented in docs/configuration.md has a
/// command-line flag, and every flag the document names exists.
#[test]
fn every_documented_key_has_a_working_flag() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_turn-relay")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let mut rows = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (key, flag) = (cells[1], cells[2]);
        rows += 1;
        assert!(flag.contains("--"), "{key} has no flag in docs/configuration.md");
        // A flag may be written with its value name (`--alternate ADDR`).
        for f in flag.split('`').filter(|f| f.starts_with("--")).filter_map(|f| f.split_whitespace().next()) {
            assert!(help.contains(f), "{key}: flag {f} is not in turn-relay --help");
        }
    }
    assert!(rows >= 30, "only {rows} keys found in docs/configuration.md");
}

/// The local addresses of `pid`'s sockets, from /proc/net/{udp,tcp}{,6}:
/// ("udp", address) for every UDP socket, ("tcp", address) for every
/// listening TCP socket.
fn sockets_of(pid: u32) -> Vec<(&'static str, SocketAddr)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned()))
        .collect();
    let mut out = Vec::new();
    for (proto, file) in [("udp", "udp"), ("udp", "udp6"), ("tcp", "tcp"), ("tcp", "tcp6")] {
        let table = std::fs::read_to_string(format!("/proc/net/{file}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || !inodes.iter().any(|i| i == f[9]) || (proto == "tcp" && f[3] != "0A") {
                continue;
            }
            let (ip, port) = f[1].split_once(':').unwrap();
            // The address as the kernel's 32-bit words, each printed in host order.
            let bytes: Vec<u8> = (0..ip.len() / 8)
                .flat_map(|w| u32::from_str_radix(&ip[w * 8..w * 8 + 8], 16).unwrap().to_ne_bytes())
                .collect();
            let ip: std::net::IpAddr = match bytes.len() {
                4 => <[u8; 4]>::try_from(bytes).unwrap().into(),
                _ => <[u8; 16]>::try_from(bytes).unwrap().into(),
            };
            out.push((proto, SocketAddr::new(ip, u16::from_str_radix(port, 16).unwrap())));
        }
    }
    out
}

/// `--listen 127.0.0.1:P` alone: UDP and TCP on 127.0.0.1:P, and no
/// socket of the server on a wildcard address (no 0.0.0.0:P nor [::]:P).
#[test]
fn listen_serves_udp_and_tcp_on_that_address_only() {
    // A port free over UDP and TCP on 127.0.0.1 and 127.0.0.2 (bounded tries).
    let port = (0..50)
        .map(|_| free_udp_port("127.0.0.1"))
        .find(|&p| {
            ["127.0.0.1", "127.0.0.2"]
                .iter()
                .all(|ip| std::net::TcpListener::bind((*ip, p)).is_ok() && UdpSocket::bind((*ip, p)).is_ok())
        })
        .expect("a port free over UDP and TCP");
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
    let args = [
        "--listen",
        &server.to_string(),
        "--relay-ip",
        "127.0.0.1",
        "--relay-ports",
        &relay_range(1),
        "--user",
        "alice:secret",
        "--metrics",
        &metrics.to_string(),
        "--shards",
        "1",
        "--no-pin",
    ]
    .map(str::to_owned);
    let relay = Relay::spawn(server, metrics, &args);

    let sockets = sockets_of(relay.child.id());
    let mut on_port: Vec<_> = sockets.iter().filter(|(_, a)| a.port() == port).copied().collect();
    on_port.sort();
    assert_eq!(on_port, [("tcp", server), ("udp", server)], "every socket: {sockets:?}");
    let wildcard: Vec<_> = sockets.iter().filter(|(_, a)| a.ip().is_unspecified()).collect();
    assert!(wildcard.is_empty(), "sockets on a wildcard address: {wildcard:?}");
    // Nothing holds the port on another address: ours bind there.
    let _tcp = std::net::TcpListener::bind(("127.0.0.2", port)).expect("127.0.0.2 TCP is free");
    let _udp = UdpSocket::bind(("127.0.0.2", port)).expect("127.0.0.2 UDP is free");

    // Both transports answer a Binding.
    let mut c = client(server, "alice", "secret");
    assert_eq!(Message::parse(&c.ok(Method::BINDING, &[])).unwrap().class(), Class::Success);
    let mut s = StreamClient::tcp(server, Login { user: "alice", password: "secret", realm: REALM });
    assert_eq!(Message::parse(&s.ok(Method::BINDING, &[])).unwrap().class(), Class::Success);
}

/// A second turn-relay on the same listen address refuses to start, naming
/// --handover; with --handover (its own relay ports and metrics address,
/// which two processes cannot share) it joins and serves beside the first.
#[test]
fn a_second_instance_needs_handover() {
    let server: SocketAddr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1")).parse().unwrap();
    let args_for = |range: String, metrics: SocketAddr| {
        ["--listen", &server.to_string(), "--relay-ip", "127.0.0.1", "--relay-ports", &range]
            .into_iter()
            .chain(["--user", "alice:secret", "--metrics", &metrics.to_string(), "--shards", "1", "--no-pin"])
            .map(str::to_owned)
            .collect::<Vec<String>>()
    };
    let m1: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
    let _first = Relay::spawn(server, m1, &args_for(relay_range(2), m1));
    let m2: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_turn-relay")).args(args_for(relay_range(3), m2)).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("another process already listens on UDP {server}")), "{err}");
    assert!(err.contains("--handover"), "{err}");
    let mut args = args_for(relay_range(3), m2);
    args.push("--handover".into());
    let second = Relay::spawn(server, m2, &args);
    assert_eq!(http_get(second.metrics, "/readyz").unwrap().status, 200);
}
