//! Two `turn-relay` nodes on loopback: node A sends new clients to node B
//! with 300 (Try Alternate), at a load threshold and while draining, and
//! turn-bench's client follows it, lands on B and relays data there.
//! During the drain A's `/readyz` answers 503 and an allocation A already
//! held keeps refreshing. Over TCP the client opens a new connection to
//! B's TCP listener; over TLS to B's TLS listener, checking B's
//! certificate against the ALTERNATE-DOMAIN A sent (and failing without
//! it). A full node (`--max-allocations`) redirects too, counted as
//! `quota`, before the challenge (the first Allocate's answer is the 300).
//! `turn-relay probe turn` says where it landed. Nodes given one nonce
//! secret accept each other's nonces; a node with its own answers 438
//! until a reload gives it the secret.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench_harness::client::{DataSource, TcpTransport, TlsOptions, TlsTransport, Transport, TransportKind, TurnClient};
use bench_harness::{Credentials, ThroughputConfig, TurnServer};

mod common;
use common::{Killed, free_tcp_port, free_udp_port, http_get, run_bounded, wait_metrics};

/// A sample of a `/metrics` body (see [`common::metric`]); a counter not
/// there counts as 0.
fn metric(body: &str, sample: &str) -> f64 {
    common::metric(body, sample).unwrap_or(0.0)
}

/// A port free for both UDP and TCP on 127.0.0.1 (bounded tries).
fn free_udp_and_tcp() -> u16 {
    for _ in 0..50 {
        let port = free_udp_port("127.0.0.1");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

struct Node {
    process: Killed,
    addr: SocketAddr,
    metrics: SocketAddr,
    ports: (u16, u16),
    /// The TLS listener (nodes with streams only).
    tls: Option<SocketAddr>,
    /// The certificate files' directory, removed on drop.
    dir: Option<std::path::PathBuf>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A node on 127.0.0.1 (UDP only), relay ports `lo..lo+99`, `extra` flags.
fn node(lo: u16, extra: &[&str]) -> Node {
    start(lo, None, extra)
}

/// A node on 127.0.0.1 serving UDP and TCP on one port and TLS with
/// `cert` on another.
fn stream_node(lo: u16, cert: &test_kit::TestCert, extra: &[&str]) -> Node {
    start(lo, Some(cert), extra)
}

/// Starts a node; ports are picked free just before, so another process
/// may take one first: a node that exits before it is up is started again
/// on fresh ports (three tries), and its log is shown if none comes up.
fn start(lo: u16, cert: Option<&test_kit::TestCert>, extra: &[&str]) -> Node {
    let mut logs = String::new();
    for attempt in 1..=3 {
        match try_start(lo, cert, extra) {
            Ok(n) => return n,
            Err(log) => logs.push_str(&format!("attempt {attempt}:\n{log}\n")),
        }
    }
    panic!("no node came up with relay ports from {lo}:\n{logs}");
}

fn try_start(lo: u16, cert: Option<&test_kit::TestCert>, extra: &[&str]) -> Result<Node, String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_and_tcp()).parse().unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_tcp_port("127.0.0.1")));
    let ports = (lo, lo + 99);
    let log = std::env::temp_dir().join(format!("turn-relay-alternate-{}-{lo}.log", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
    cmd.args(["--listen", &addr.to_string(), "--relay-ip", "127.0.0.1"]);
    let (mut tls, mut dir) = (None, None);
    match cert {
        None => {
            cmd.arg("--no-tcp");
        }
        Some(cert) => {
            let d = std::env::temp_dir().join(format!("turn-relay-alternate-{}-{lo}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
            std::fs::write(&c, &cert.cert_pem).unwrap();
            std::fs::write(&k, &cert.key_pem).unwrap();
            // Two free ports picked one after the other may be the same one.
            let t = (0..20)
                .map(|_| SocketAddr::from(([127, 0, 0, 1], free_tcp_port("127.0.0.1"))))
                .find(|t| *t != metrics && t.port() != addr.port())
                .expect("a second free TCP port");
            cmd.args([
                "--listen-tls",
                &t.to_string(),
                "--tls-cert",
                c.to_str().unwrap(),
                "--tls-key",
                k.to_str().unwrap(),
            ]);
            (tls, dir) = (Some(t), Some(d));
        }
    }
    let process = Killed(
        cmd.args(["--relay-ports", &format!("{}-{}", ports.0, ports.1), "--shards", "2", "--no-pin"])
            .args(["--user", "alice:secret", "--realm", "fleet", "--allow-peer", "127.0.0.0/8"])
            .args(["--metrics", &metrics.to_string(), "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut n = Node { process, addr, metrics, ports, tls, dir };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(a) = http_get(metrics, "/metrics")
            && a.status == 200
            && metric(&a.body, "turn_shards") == 2.0
        {
            break;
        }
        let exited = n.process.0.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            return Err(format!("node on {addr} (metrics {metrics}) did not come up ({exited:?}): {text}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&log);
    for listener in [cert.map(|_| addr), tls].into_iter().flatten() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&listener, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "no listener on {listener}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(n)
}

/// Relay ports below the kernel's ephemeral range (32768+), where few
/// other sockets of this machine sit; 1,500 per process, 100 per node.
fn port_base() -> u16 {
    20000 + (std::process::id() % 8) as u16 * 1500
}

fn on_node(relayed: SocketAddr, n: &Node) -> bool {
    relayed.ip().is_loopback() && (n.ports.0..=n.ports.1).contains(&relayed.port())
}

fn client(server: SocketAddr) -> TurnClient {
    let target = TurnServer::new(server, Credentials::long_term("alice", "secret"));
    TurnClient::udp(server, target.client_config()).unwrap()
}

/// Relays one datagram each way through `c`'s allocation, via a channel to
/// a fresh peer socket; the peer must see it come from `relayed`.
fn relay_round_trip<T: Transport>(c: &mut TurnClient<T>, relayed: SocketAddr) {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    c.channel_bind(0x4000, peer_addr).unwrap();
    c.send_channel_data(0x4000, b"to the peer through B").unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer got nothing through the relay");
    assert_eq!((&buf[..n], from), (&b"to the peer through B"[..], relayed));
    peer.send_to(b"back to the client", relayed).unwrap();
    let (src, n) = c.recv_data(&mut buf, Duration::from_secs(3)).unwrap().expect("nothing came back");
    assert_eq!((src, &buf[..n]), (DataSource::Channel(0x4000), &b"back to the client"[..]));
}

#[test]
fn at_the_load_threshold_turn_bench_lands_on_the_alternate() {
    let base = port_base();
    let b = node(base, &[]);
    let b_addr = b.addr.to_string();
    let a = node(base + 100, &["--alternate", &b_addr, "--redirect-above-allocations", "0"]);

    // The blocking client: redirected once, the same credentials, data through B.
    let mut c = client(a.addr);
    let relayed = c.allocate(None).unwrap();
    assert!(on_node(relayed, &b), "relayed address {relayed} is not B's");
    assert_eq!(c.core().server(), Some(b.addr));
    assert_eq!(c.core().redirected_from(), &[a.addr]);
    assert_eq!(c.transport_mut().socket().peer_addr().unwrap(), b.addr);
    relay_round_trip(&mut c, relayed);
    c.refresh(0).unwrap();

    // turn-bench's throughput run pointed at A: every flow set up on B.
    let cfg = ThroughputConfig {
        allocations: 3,
        size: 120,
        rate: 600,
        duration: Duration::from_secs(2),
        ..ThroughputConfig::new(TurnServer::new(a.addr, Credentials::long_term("alice", "secret")))
    };
    let report = bench_harness::run_throughput(&cfg).expect("throughput through the alternate");
    assert!(report.received > 0, "nothing relayed");
    assert!(report.loss_pct < 5.0, "loss {}%", report.loss_pct);

    let am =
        wait_metrics(a.metrics, Duration::from_secs(3), |m| metric(m, r#"turn_redirects_total{reason="load"}"#) >= 4.0);
    assert_eq!(metric(&am, r#"turn_redirects_total{reason="load"}"#), 4.0);
    assert_eq!(metric(&am, r#"turn_redirects_total{reason="draining"}"#), 0.0);
    assert_eq!(metric(&am, "turn_allocations_created_total"), 0.0);
    let bm = wait_metrics(b.metrics, Duration::from_secs(3), |m| metric(m, "turn_allocations_created_total") >= 4.0);
    assert_eq!(metric(&bm, "turn_allocations_created_total"), 4.0);
    assert!(metric(&bm, r#"turn_relayed_packets_total{direction="to_peer",transport="udp"}"#) > 0.0);
}

#[test]
fn a_draining_node_flips_readyz_and_redirects_new_clients() {
    let base = port_base() + 200;
    let b = node(base, &[]);
    let b_addr = b.addr.to_string();
    let mut a = node(base + 100, &["--alternate", &b_addr, "--drain-timeout", "120"]);
    assert_eq!(http_get(a.metrics, "/readyz").map(|r| r.status), Some(200));

    // An allocation on A before the drain, kept open so that A stays up.
    let mut old = client(a.addr);
    let old_relayed = old.allocate(None).unwrap();
    assert!(on_node(old_relayed, &a), "{old_relayed} is not A's");
    assert!(old.core().redirected_from().is_empty());

    let pid = a.process.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // /readyz answers 503 first...
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(a.metrics, "/readyz").map(|r| r.status) != Some(503) {
        assert!(Instant::now() < deadline, "A's /readyz did not turn 503 on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and new clients go to B (the drain reaches the shards at once;
    // retry briefly in case this client was faster).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut c, relayed) = loop {
        let mut c = client(a.addr);
        match c.allocate(None) {
            Ok(r) if on_node(r, &b) => break (c, r),
            other => {
                assert!(Instant::now() < deadline, "not redirected while draining: {other:?}");
                let _ = c.refresh(0);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(c.core().redirected_from(), &[a.addr]);
    relay_round_trip(&mut c, relayed);
    // The allocation A held lives on: it refreshes and relays.
    assert!(old.refresh(600).unwrap() > 0);
    assert!(a.process.0.try_wait().unwrap().is_none(), "A exited while holding an allocation");
    let draining = r#"turn_redirects_total{reason="draining"}"#;
    let am = wait_metrics(a.metrics, Duration::from_secs(3), |m| metric(m, draining) >= 1.0);
    assert!(metric(&am, draining) >= 1.0, "{am}");
    assert_eq!(metric(&am, "turn_allocations_active"), 1.0);
    // Once it is released, A finishes its drain and exits cleanly.
    old.refresh(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = a.process.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "A did not exit once its last allocation ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// A PEM file trusting each of `certs`, in `dir`.
fn ca_file(dir: &std::path::Path, certs: &[&test_kit::TestCert]) -> std::path::PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, certs.iter().map(|c| c.cert_pem.as_str()).collect::<String>()).unwrap();
    path
}

#[test]
fn over_tcp_and_tls_the_client_reconnects_to_the_alternates_listeners() {
    let base = port_base() + 400;
    let (a_cert, b_cert) = (test_kit::certificate(&["a.turn.test"]), test_kit::certificate(&["b.turn.test"]));
    let b = stream_node(base, &b_cert, &[]);
    let (b_tls, b_addr) = (b.tls.unwrap(), b.addr.to_string());
    let alternate_tls = format!("{b_tls}=b.turn.test");
    let a = stream_node(
        base + 100,
        &a_cert,
        &["--alternate", &b_addr, "--alternate-tls", &alternate_tls, "--redirect-above-allocations", "0"],
    );
    let a_tls = a.tls.unwrap();
    let creds = || Credentials::long_term("alice", "secret");

    // TCP: a new connection to B's TCP listener (the address for UDP and
    // TCP), from the same local IP; the allocation and its data on B.
    let target = TurnServer { transport: TransportKind::Tcp, ..TurnServer::new(a.addr, creds()) };
    let mut c = TurnClient::new(TcpTransport::connect(a.addr, None).unwrap(), target.client_config()).unwrap();
    let relayed = c.allocate(None).unwrap();
    assert!(on_node(relayed, &b), "relayed address {relayed} is not B's");
    assert_eq!((c.core().server(), c.core().redirected_from()), (Some(b.addr), &[a.addr][..]));
    assert_eq!(c.transport().stream().peer_addr().unwrap(), b.addr);
    relay_round_trip(&mut c, relayed);
    c.refresh(0).unwrap();

    // TLS: trusting both certificates, naming A "a.turn.test"; the 300
    // says "b.turn.test", which B's certificate must carry.
    let dir = a.dir.clone().unwrap();
    let tls = TlsOptions {
        server_name: Some("a.turn.test".into()),
        ..TlsOptions::with_ca(ca_file(&dir, &[&a_cert, &b_cert]))
    };
    let target =
        TurnServer { transport: TransportKind::Tls, tls: Some(tls.clone()), ..TurnServer::new(a_tls, creds()) };
    let connector = target.tls_connector().unwrap();
    let mut c =
        TurnClient::new(TlsTransport::connect(a_tls, None, &connector).unwrap(), target.client_config()).unwrap();
    let relayed = c.allocate(None).unwrap();
    assert!(on_node(relayed, &b), "relayed address {relayed} is not B's");
    assert_eq!((c.core().server(), c.core().redirected_from()), (Some(b_tls), &[a_tls][..]));
    assert_eq!(c.transport().stream().peer_addr().unwrap(), b_tls);
    relay_round_trip(&mut c, relayed);
    c.refresh(0).unwrap();

    // turn-bench's throughput run over TLS to A: every flow on B.
    let cfg = ThroughputConfig {
        allocations: 2,
        size: 120,
        rate: 400,
        duration: Duration::from_secs(1),
        ..ThroughputConfig::new(target.clone())
    };
    let report = bench_harness::run_throughput(&cfg).expect("throughput over TLS through the alternate");
    assert!(report.received > 0, "nothing relayed");

    // B's certificate does not carry A's name: a client told only to
    // trust A's certificate cannot be sent to B.
    let only_a =
        TlsOptions { server_name: Some("a.turn.test".into()), ..TlsOptions::with_ca(ca_file(&dir, &[&a_cert])) };
    let target = TurnServer { tls: Some(only_a), ..target };
    let connector = target.tls_connector().unwrap();
    let mut c =
        TurnClient::new(TlsTransport::connect(a_tls, None, &connector).unwrap(), target.client_config()).unwrap();
    let e = c.allocate(None).expect_err("redirected to a server it does not trust").to_string();
    assert!(e.contains("certificate"), "{e}");

    let am =
        wait_metrics(a.metrics, Duration::from_secs(3), |m| metric(m, r#"turn_redirects_total{reason="load"}"#) >= 5.0);
    assert_eq!(metric(&am, r#"turn_redirects_total{reason="load"}"#), 5.0, "TCP, TLS, 2 throughput flows, untrusted");
    assert_eq!(metric(&am, "turn_allocations_created_total"), 0.0);
    let bm = wait_metrics(b.metrics, Duration::from_secs(3), |m| metric(m, "turn_allocations_created_total") >= 4.0);
    assert_eq!(metric(&bm, "turn_allocations_created_total"), 4.0);
    assert!(metric(&bm, r#"turn_relayed_packets_total{direction="to_peer",transport="tcp"}"#) > 0.0, "{bm}");
    assert!(metric(&bm, r#"turn_relayed_packets_total{direction="to_peer",transport="tls"}"#) > 0.0, "{bm}");
}

#[test]
fn without_alternate_domain_a_tls_client_checks_the_first_servers_name() {
    let base = port_base() + 600;
    let (a_cert, b_cert) = (test_kit::certificate(&["a.turn.test"]), test_kit::certificate(&["b.turn.test"]));
    let b = stream_node(base, &b_cert, &[]);
    let b_tls = b.tls.unwrap().to_string();
    // No =DOMAIN: A sends no ALTERNATE-DOMAIN.
    let a = stream_node(base + 100, &a_cert, &["--alternate-tls", &b_tls, "--redirect-above-allocations", "0"]);
    let a_tls = a.tls.unwrap();
    let tls = TlsOptions {
        server_name: Some("a.turn.test".into()),
        ..TlsOptions::with_ca(ca_file(a.dir.as_ref().unwrap(), &[&a_cert, &b_cert]))
    };
    let target = TurnServer {
        transport: TransportKind::Tls,
        tls: Some(tls),
        ..TurnServer::new(a_tls, Credentials::long_term("alice", "secret"))
    };
    let connector = target.tls_connector().unwrap();
    let mut c =
        TurnClient::new(TlsTransport::connect(a_tls, None, &connector).unwrap(), target.client_config()).unwrap();
    let e = c.allocate(None).expect_err("B's certificate is not for a.turn.test").to_string();
    assert!(e.contains("certificate"), "{e}");
    // Counters are published once a second: wait until B's show the
    // client's connection (accepted before the handshake the client gave
    // up), so that an allocation it made would show as well.
    let accepted = "turn_tcp_connections_accepted_total";
    let bm = wait_metrics(b.metrics, Duration::from_secs(5), |m| metric(m, accepted) >= 1.0);
    assert!(metric(&bm, accepted) >= 1.0, "B never saw the client's connection: {bm}");
    assert_eq!(metric(&bm, "turn_allocations_created_total"), 0.0);
}

#[test]
fn a_full_node_redirects_as_quota_and_probe_turn_says_where_it_landed() {
    let base = port_base() + 800;
    let b = node(base, &[]);
    let b_addr = b.addr.to_string();
    // Room for one allocation; no load threshold.
    let a = node(base + 100, &["--alternate", &b_addr, "--max-allocations", "1"]);
    let mut first = client(a.addr);
    let held = first.allocate(None).unwrap();
    assert!(on_node(held, &a), "{held} is not A's");

    // The probe: pointed at A, redirected, the whole check run on B.
    let probe = |args: &[&str]| {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_turn-relay"))
                .arg("probe")
                .args(["turn", &format!("turn:{}", a.addr), "-u", "alice", "-w", "secret", "--peer-ip", "127.0.0.3"])
                .args(["--rto", "100", "--rc", "3", "--rm", "4"])
                .args(args),
            Duration::from_secs(20),
        );
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, j) = probe(&["--json"]);
    assert_eq!(code, Some(0), "{j}");
    let j: serde_json::Value = serde_json::from_str(j.trim()).unwrap_or_else(|e| panic!("{e}: {j}"));
    assert_eq!(j["server"], a.addr.to_string());
    assert_eq!(j["redirected_to"], b_addr);
    let relayed: SocketAddr = j["relayed"].as_str().unwrap().parse().unwrap();
    assert!(on_node(relayed, &b), "{j}");
    assert_eq!(j["peer_saw"], j["relayed"]);
    assert_eq!(j["released"], true);
    let errors: Vec<&str> = j["requests"].as_array().unwrap().iter().filter_map(|r| r["error"].as_str()).collect();
    assert!(errors.iter().any(|e| e.starts_with("300")), "{j}");
    // Full, A knows before the challenge: its answer to the first Allocate
    // is the 300 (unsealed, what browsers follow), not a 401; the one 401
    // is B's first challenge.
    assert_eq!(errors, ["300 Try Alternate", "401 Unauthenticated"], "{j}");

    let (code, text) = probe(&[]);
    assert_eq!(code, Some(0), "{text}");
    let landed = format!("{b_addr} (300 from {})", a.addr);
    assert!(
        text.lines().any(|l| l.trim_start().strip_prefix("redirected to").is_some_and(|v| v.trim() == landed)),
        "{text}"
    );
    assert!(text.contains("300 Try Alternate (followed)"), "{text}");

    // Not redirected: no such line, and null in JSON.
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(["probe", "turn", &format!("turn:{b_addr}"), "-u", "alice", "-w", "secret", "--peer-ip", "127.0.0.3"])
            .args(["--rto", "100", "--rc", "3", "--rm", "4", "--json"]),
        Duration::from_secs(20),
    );
    let direct = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && direct.contains(r#""redirected_to":null"#), "{direct}");

    // A held its one allocation: the probe's went to B, counted as quota.
    let am = wait_metrics(a.metrics, Duration::from_secs(3), |m| {
        metric(m, r#"turn_redirects_total{reason="quota"}"#) >= 2.0
    });
    assert_eq!(metric(&am, r#"turn_redirects_total{reason="quota"}"#), 2.0);
    assert_eq!(metric(&am, r#"turn_redirects_total{reason="load"}"#), 0.0);
    assert_eq!(metric(&am, "turn_allocations_created_total"), 1.0);
    // Once A has room again, it allocates itself.
    first.refresh(0).unwrap();
    let mut again = client(a.addr);
    let r = again.allocate(None).unwrap();
    assert!(on_node(r, &a), "{r} is not A's");
    again.refresh(0).unwrap();
}

/// Nodes given one nonce secret (`--nonce-secret-file`) accept each other's
/// nonces: a client challenged by A and sent on to B — as after a sealed
/// 300, which libwebrtc follows with A's nonce — is not challenged again
/// there (no 438 on B); a node with a secret of its own answers 438 Stale
/// Nonce with a fresh one, and the client allocates on the retry — until a
/// reload (SIGHUP) gives it the shared secret too.
#[test]
fn nodes_sharing_a_nonce_secret_accept_each_others_nonces() {
    let dir = std::env::temp_dir().join(format!("turn-relay-nonce-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("nonce-secret");
    std::fs::write(&secret, "one nonce secret for the whole fleet\n").unwrap();
    let s = secret.to_str().unwrap();
    let base = port_base() + 1000;
    let own_config = dir.join("own.toml");
    std::fs::write(&own_config, "").unwrap();
    let a = node(base, &["--nonce-secret-file", s]);
    let b = node(base + 100, &["--nonce-secret-file", s]);
    let own = node(base + 200, &["--config", own_config.to_str().unwrap()]);
    let stale = r#"turn_auth_failures_total{reason="stale_nonce"}"#;
    // Challenged by A, then the same socket with A's nonce to `other`:
    // `other`'s allocations made and 438s answered so far.
    let moved = |other: &Node, made: f64| {
        let login = test_kit::Login { user: "alice", password: "secret", realm: "fleet" };
        let mut c = test_kit::TurnClient::new(a.addr, login);
        assert!(on_node(c.allocate().expect("an allocation on A"), &a));
        c.server = other.addr;
        let relayed = c.allocate().expect("an allocation on the other node");
        assert!(on_node(relayed, other), "{relayed}");
        let body = wait_metrics(other.metrics, Duration::from_secs(5), |m| {
            metric(m, "turn_allocations_created_total") == made + 1.0
        });
        // A scrape that timed out (an empty or stale body) fails here
        // rather than passing for "no new 438".
        assert_eq!(metric(&body, "turn_allocations_created_total"), made + 1.0, "{body}");
        (made + 1.0, metric(&body, stale))
    };
    assert_eq!(moved(&b, 0.0), (1.0, 0.0), "a node sharing the secret took A's nonce");
    assert_eq!(moved(&own, 0.0), (1.0, 1.0), "a node keyed apart answered 438 once");
    // The secret given to that node by a reload: it takes A's nonces too.
    std::fs::write(&own_config, format!("[auth]\nnonce_secret_file = {s:?}\n")).unwrap();
    let pid = own.process.0.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut made, mut answered) = (1.0, 1.0);
    loop {
        let (created, stales) = moved(&own, made);
        if stales == answered {
            break;
        }
        (made, answered) = (created, stales);
        assert!(Instant::now() < deadline, "after the reload the node still answers A's nonces 438 ({stales})");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
