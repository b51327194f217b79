//! The admin API on the metrics listener and `turn-relay admin`, against
//! the binary over loopback: allocations of two users listed with their
//! traffic, one ended by id and a user's all ended (the clients' next
//! Refresh gets 437, the relay stops relaying), a reload that lets a new
//! user in, wrong or missing tokens refused and counted with nothing done,
//! the API off without a token, bad settings named, a slow client that
//! does not hold the listener, probes answered at once while admin requests
//! are stuck (a reload blocked in the main loop) and a busy API answered
//! 503, and wrong tokens slowed server-wide. Every process started here is
//! stopped by its pid; every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Answer, free_tcp_port, free_udp_port, http, http_in, metric, metric_at};
use relay_core::wire::{Attribute, ChannelData, Method};
use serde_json::Value;
use test_kit::{Login, TurnClient, error_code, recv_from};

const REALM: &str = "admin.test";
const TIMEOUT: Duration = Duration::from_secs(3);
const TOKEN: &str = "s3cr3t-admin-token-0123456789abcdef";

/// 16 consecutive UDP ports free on 127.0.0.1 (below the kernel's
/// ephemeral range, varied by pid, each checked by binding it); each try
/// of this process takes the next range, so that tests starting relays at
/// once never pick the same one.
fn relay_range() -> String {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 10000 + (std::process::id() % 500) as u16 * 16;
    for _ in 0..100 {
        // Every attempt takes the next range: two tests never try the same.
        let k = u32::from(CALLS.fetch_add(1, Ordering::Relaxed));
        let lo = (10000 + (u32::from(start) - 10000 + k * 16) % 8000) as u16;
        if (lo..lo + 16).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return format!("{lo}-{}", lo + 15);
        }
    }
    panic!("no 16 free UDP ports found");
}

/// A scratch directory of this test's own.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("turn-relay-admin-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Relay {
    child: Child,
    server: SocketAddr,
    metrics: SocketAddr,
}

impl Relay {
    /// turn-relay on loopback with `extra` flags (two shards, so that
    /// requests must reach the shard that holds an allocation).
    fn start(extra: &[&str]) -> Relay {
        let server: SocketAddr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1")).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
        let mut args: Vec<String> = [
            "--listen-udp",
            &server.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--relay-ports",
            &relay_range(),
            "--realm",
            REALM,
            "--allow-peer",
            "127.0.0.0/8",
            "--metrics",
            &metrics.to_string(),
            "--shards",
            "2",
            "--no-pin",
            "--log-level",
            "warn",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let r = Relay { child, server, metrics };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http(r.metrics, "GET", "/healthz", None).is_none() {
            assert!(Instant::now() < deadline, "turn-relay did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn url(&self) -> String {
        format!("http://{}", self.metrics)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin(r: &Relay, method: &str, path: &str) -> Answer {
    http(r.metrics, method, path, Some(TOKEN)).expect("an answer")
}

fn allocations(r: &Relay, query: &str) -> Vec<Value> {
    let a = admin(r, "GET", &format!("/admin/allocations{query}"));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!((v["shards"].as_u64(), v["shards_answered"].as_u64()), (Some(2), Some(2)), "{v}");
    v["allocations"].as_array().unwrap().clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect()
}

/// `turn-relay admin ARGS` against `r`, bounded.
/// Writes a user file with `users`, a token file with `token` and a
/// configuration naming both into `dir`: their paths.
fn admin_config(dir: &Path, users: &str, token: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (user_file, token_file, config) = (dir.join("users"), dir.join("token"), dir.join("relay.toml"));
    std::fs::write(&user_file, users).unwrap();
    std::fs::write(&token_file, token).unwrap();
    let (u, t) = (user_file.display().to_string(), token_file.display().to_string());
    std::fs::write(&config, format!("[auth]\nuser_file = {u:?}\n[admin]\ntoken_file = {t:?}\n")).unwrap();
    (user_file, token_file, config)
}

fn cli(r: &Relay, token_file: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
    cmd.arg("admin").arg("--url").arg(r.url());
    if let Some(f) = token_file {
        cmd.arg("--token-file").arg(f);
    }
    cmd.args(args).env_remove("TURN_RELAY_ADMIN_TOKEN");
    common::run_bounded(&mut cmd, Duration::from_secs(30))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn client(server: SocketAddr, user: &str, password: &str) -> TurnClient {
    TurnClient::new(server, Login { user, password, realm: REALM }).with_timeout(TIMEOUT)
}

/// A Refresh's error code (None: success).
fn refresh(c: &mut TurnClient) -> Option<u16> {
    error_code(&c.request(Method::REFRESH, &[Attribute::Lifetime(600)]))
}

#[test]
fn lists_ends_and_reloads_over_the_admin_api_and_its_command() {
    let dir = scratch("main");
    // The token file ends in a newline, as an editor leaves it.
    let (users, token_file, config) = admin_config(&dir, "alice:secret\nbob:builder\n", &format!("{TOKEN}\n"));
    let relay = Relay::start(&["--config", config.to_str().unwrap()]);

    // Two users: alice with a channel and traffic, and a second allocation;
    // bob with two.
    let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
    peer.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut a1 = client(relay.server, "alice", "secret");
    let r1 = a1.allocate().unwrap();
    a1.ok(
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(peer.local_addr().unwrap())],
    );
    let mut buf = [0u8; 2048];
    for i in 0..5u64 {
        a1.send_channel_data(0x4000, &i.to_be_bytes());
        let (n, from) = recv_from(&peer, &mut buf).expect("the peer receives");
        assert_eq!((&buf[..n], from), (&i.to_be_bytes()[..], r1));
    }
    for i in 0..3u64 {
        peer.send_to(&(100 + i).to_be_bytes(), r1).unwrap();
        let (n, _) = recv_from(&a1.sock, &mut buf).expect("the client receives");
        assert_eq!(ChannelData::parse(&buf[..n]).unwrap().payload, &(100 + i).to_be_bytes());
    }
    let mut a2 = client(relay.server, "alice", "secret");
    let r2 = a2.allocate().unwrap();
    let mut b1 = client(relay.server, "bob", "builder");
    let mut b2 = client(relay.server, "bob", "builder");
    let (rb1, rb2) = (b1.allocate().unwrap(), b2.allocate().unwrap());

    // The list: every allocation, by user then id, with its fields.
    let all = allocations(&relay, "");
    assert_eq!(all.len(), 4, "{all:?}");
    let users_listed: Vec<&str> = all.iter().map(|a| a["user"].as_str().unwrap()).collect();
    assert_eq!(users_listed, ["alice", "alice", "bob", "bob"]);
    let one = all.iter().find(|a| a["id"] == r1.to_string()).expect("alice's first allocation listed");
    assert_eq!(one["transport"], "udp");
    assert_eq!(one["client"], a1.sock.local_addr().unwrap().to_string());
    assert_eq!(one["server"], relay.server.to_string());
    assert_eq!(one["relays"], serde_json::json!([r1.to_string()]));
    assert_eq!((one["permissions"].as_u64(), one["channels"].as_u64()), (Some(1), Some(1)));
    assert_eq!(one["to_peer"], serde_json::json!({"packets": 5, "bytes": 40}));
    assert_eq!(one["to_client"], serde_json::json!({"packets": 3, "bytes": 24}));
    let left = one["lifetime_left_s"].as_u64().unwrap();
    assert!((580..=600).contains(&left), "lifetime left {left}");
    assert!(one["age_s"].as_u64().unwrap() < 20);
    let two = all.iter().find(|a| a["id"] == r2.to_string()).unwrap();
    assert_eq!(two["to_peer"], serde_json::json!({"packets": 0, "bytes": 0}));
    // By user.
    let bobs = allocations(&relay, "?user=bob");
    let mut want = vec![rb1.to_string(), rb2.to_string()];
    want.sort();
    assert_eq!(ids(&bobs), want);
    assert!(allocations(&relay, "?user=carol").is_empty());

    // A wrong or missing token: 401 with the challenge, counted, nothing done.
    let path = format!("/admin/allocations/{r1}");
    let wrong = http(relay.metrics, "DELETE", &path, Some("not-the-token-0123456789")).unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.head.contains("WWW-Authenticate: Bearer"), "{}", wrong.head);
    assert!(!wrong.body.contains(TOKEN));
    let missing = http(relay.metrics, "DELETE", &path, None).unwrap();
    assert_eq!(missing.status, 401);
    let near = http(relay.metrics, "DELETE", &path, Some(&TOKEN[..TOKEN.len() - 1])).unwrap();
    assert_eq!(near.status, 401, "a prefix of the token is not the token");
    assert_eq!(allocations(&relay, "").len(), 4);
    let refused = metric_at(relay.metrics, r#"turn_admin_requests_total{action="unauthorized",code="401"}"#);
    assert_eq!(refused, Some(3.0));

    // Routes and methods.
    assert_eq!(admin(&relay, "GET", "/admin/reload").status, 405);
    assert!(admin(&relay, "GET", "/admin/reload").head.contains("Allow: POST"));
    assert_eq!(admin(&relay, "GET", "/admin/nothing").status, 404);
    assert_eq!(admin(&relay, "DELETE", "/admin/allocations/not-an-address").status, 400);
    assert_eq!(admin(&relay, "GET", "/admin/allocations?color=red").status, 400);
    assert_eq!(admin(&relay, "DELETE", "/admin/allocations/127.0.0.1:1").status, 404);

    // End one by id: its Refresh gets 437 and the relay stops relaying.
    let end = admin(&relay, "DELETE", &path);
    assert_eq!(end.status, 200, "{}", end.body);
    assert_eq!(end.json()["ended"], 1);
    assert_eq!(ids(&allocations(&relay, "?user=alice")), [r2.to_string()]);
    peer.send_to(b"after the end", r1).unwrap();
    a1.sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(a1.recv().is_none(), "the ended relay still relays to its client");
    a1.send_channel_data(0x4000, b"after the end");
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(recv_from(&peer, &mut buf).is_err(), "the ended allocation still relays to its peer");
    a1.sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(refresh(&mut a1), Some(437));
    assert_eq!(admin(&relay, "DELETE", &path).status, 404, "ended once");

    // End every allocation of a user; the other user's stay.
    let end = admin(&relay, "DELETE", "/admin/users/bob/allocations");
    assert_eq!((end.status, end.json()["ended"].as_u64()), (200, Some(2)), "{}", end.body);
    assert_eq!((refresh(&mut b1), refresh(&mut b2)), (Some(437), Some(437)));
    assert_eq!(refresh(&mut a2), None);
    assert!(allocations(&relay, "?user=bob").is_empty());
    let deleted = Instant::now() + Duration::from_secs(5);
    while metric_at(relay.metrics, "turn_allocations_deleted_total") != Some(3.0) {
        assert!(Instant::now() < deleted, "the ended allocations were not counted as deleted");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Reload: a new user in the file works afterwards; a broken file is
    // refused, named, and the old users stay.
    let mut carol = client(relay.server, "carol", "pw-carol");
    assert_eq!(carol.allocate(), Err(401));
    std::fs::write(&users, "alice:secret\nbob:builder\ncarol:pw-carol\n").unwrap();
    let reload = admin(&relay, "POST", "/admin/reload");
    assert_eq!((reload.status, reload.json()["reloaded"].as_bool()), (200, Some(true)), "{}", reload.body);
    let mut carol = client(relay.server, "carol", "pw-carol");
    let rc = carol.allocate().expect("carol allocates after the reload");
    std::fs::write(&users, "alice:secret\nno colon here\n").unwrap();
    let bad = admin(&relay, "POST", "/admin/reload");
    assert_eq!(bad.status, 500, "{}", bad.body);
    let why = bad.json()["error"].as_str().unwrap().to_owned();
    assert!(why.contains(&format!("{}:2", users.display())), "{why}");
    assert!(!why.contains("secret"), "{why}");
    let mut carol2 = client(relay.server, "carol", "pw-carol");
    assert!(carol2.allocate().is_ok(), "a failed reload kept the old users");
    std::fs::write(&users, "alice:secret\nbob:builder\ncarol:pw-carol\n").unwrap();

    // The command: a table, JSON, end, end-user, reload.
    let out = cli(&relay, Some(&token_file), &["allocations"]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("USER") && lines[0].contains("BYTES>CLIENT"), "{table}");
    assert_eq!(lines.len(), 1 + 3 + 1, "{table}");
    assert_eq!(*lines.last().unwrap(), "3 allocations");
    let row = lines.iter().find(|l| l.starts_with(&r2.to_string())).expect("alice's row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!((cells[1], cells[2], cells[3]), ("alice", "udp", a2.sock.local_addr().unwrap().to_string().as_str()));
    // Columns line up: every row's USER column starts where the header's does.
    let col = lines[0].find("USER").unwrap();
    for l in &lines[1..4] {
        assert!(l[col..].starts_with("alice") || l[col..].starts_with("carol"), "misaligned: {l:?}\n{table}");
    }
    let out = cli(&relay, Some(&token_file), &["allocations", "--user", "carol", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(v["allocations"].as_array().unwrap()).len(), 2);
    let out = cli(&relay, Some(&token_file), &["end", &rc.to_string()]);
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(0), "ended 1 allocation\n".into()),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(refresh(&mut carol), Some(437));
    let out = cli(&relay, Some(&token_file), &["end", &rc.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404") && text(&out.stderr).contains(&rc.to_string()), "{}", text(&out.stderr));
    let out = cli(&relay, Some(&token_file), &["end-user", "carol"]);
    assert_eq!(text(&out.stdout), "ended 1 allocation of carol\n", "{}", text(&out.stderr));
    assert_eq!(refresh(&mut carol2), Some(437));
    let out = cli(&relay, Some(&token_file), &["reload"]);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "reloaded\n".into()), "{}", text(&out.stderr));
    // The token from the environment; a wrong one is exit code 4.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
    cmd.args(["admin", "--url", &relay.url(), "allocations", "--user", "alice"]).env("TURN_RELAY_ADMIN_TOKEN", TOKEN);
    let out = common::run_bounded(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success() && text(&out.stdout).ends_with("1 allocation\n"), "{}", text(&out.stdout));
    cmd.env("TURN_RELAY_ADMIN_TOKEN", "wrong-token-wrong-token");
    let out = common::run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    // No token at all: a usage error, nothing sent.
    let out = cli(&relay, None, &["reload"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("TURN_RELAY_ADMIN_TOKEN"), "{}", text(&out.stderr));
    // Nothing listening: exit code 3, saying so.
    let nowhere = format!("http://127.0.0.1:{}", free_tcp_port("127.0.0.1"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
    cmd.args(["admin", "--url", &nowhere, "--token-file", token_file.to_str().unwrap(), "reload"]);
    let out = common::run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("cannot reach"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload reads the token again: after it the old token is refused and
/// the new one works; a bad token file fails the reload (named, the token
/// kept); a configuration without a token turns the API off (SIGHUP), and
/// one with a token again turns it back on.
#[test]
fn a_reload_rotates_the_admin_token() {
    const NEW: &str = "rotated-admin-token-9876543210fedcba";
    let dir = scratch("rotate");
    let (user_file, token_file, config) = admin_config(&dir, "alice:secret\n", TOKEN);
    let relay = Relay::start(&["--config", config.to_str().unwrap()]);
    let with = |token: &str, method: &str, path: &str| http(relay.metrics, method, path, Some(token)).unwrap().status;
    assert_eq!(with(TOKEN, "GET", "/admin/allocations"), 200);
    std::fs::write(&token_file, NEW).unwrap();
    // Asked with the old token, which holds until the reload is done.
    assert_eq!(with(TOKEN, "POST", "/admin/reload"), 200);
    assert_eq!(with(TOKEN, "GET", "/admin/allocations"), 401);
    assert_eq!(with(NEW, "GET", "/admin/allocations"), 200);
    std::fs::write(&token_file, "too-short").unwrap();
    let bad = http(relay.metrics, "POST", "/admin/reload", Some(NEW)).unwrap();
    assert_eq!(bad.status, 500, "{}", bad.body);
    let why = bad.json()["error"].as_str().unwrap().to_owned();
    assert!(why.contains("admin.token_file") && why.contains(&token_file.display().to_string()), "{why}");
    assert!(!why.contains("too-short"), "the token is never shown: {why}");
    assert_eq!(with(NEW, "GET", "/admin/allocations"), 200, "a failed reload kept the token");
    // Off, then on again, by SIGHUP.
    let users = format!("[auth]\nuser_file = {:?}\n", user_file.display().to_string());
    let sighup = || {
        let pid = relay.child.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    };
    let until = |token: &str, status: u16| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while with(token, "GET", "/admin/allocations") != status {
            assert!(Instant::now() < deadline, "the reload did not give {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(&config, &users).unwrap();
    sighup();
    until(NEW, 404);
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::write(&config, format!("{users}[admin]\ntoken_file = {:?}\n", token_file.display().to_string())).unwrap();
    sighup();
    until(TOKEN, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_admin_api_is_off_without_a_token() {
    let relay = Relay::start(&["--user", "alice:secret"]);
    let mut c = client(relay.server, "alice", "secret");
    let relayed = c.allocate().unwrap();
    for (method, path) in
        [("GET", "/admin/allocations".to_owned()), ("DELETE", format!("/admin/allocations/{relayed}"))]
    {
        let a = http(relay.metrics, method, &path, Some(TOKEN)).unwrap();
        assert_eq!(a.status, 404, "{}", a.body);
        assert!(a.json()["error"].as_str().unwrap().contains("off"), "{}", a.body);
    }
    assert_eq!(refresh(&mut c), None, "nothing was ended");
    assert_eq!(http(relay.metrics, "GET", "/metrics", None).unwrap().status, 200);
    let dir = scratch("off");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let out = cli(&relay, Some(&token_file), &["allocations"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("admin API is off"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_admin_settings_name_the_file_line_and_key() {
    let dir = scratch("bad");
    let check = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_turn-relay"));
        cmd.args(args).arg("--check-config");
        common::run_bounded(&mut cmd, Duration::from_secs(30))
    };
    let config = dir.join("relay.toml");
    std::fs::write(&config, "[admin]\ntoken = \"short-token\"\n").unwrap();
    let out = check(&["--config", config.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}:2: admin.token: ", config.display())), "{err}");
    assert!(!err.contains("short-token"), "the token is never shown: {err}");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::write(
        &config,
        format!("[admin]\ntoken = \"{TOKEN}\"\ntoken_file = {:?}\n", token_file.display().to_string()),
    )
    .unwrap();
    let err = text(&check(&["--config", config.to_str().unwrap()]).stderr);
    assert!(err.contains("not both") && !err.contains(TOKEN), "{err}");
    // The flag replaces the file's token; a file that cannot be read is named.
    let out = check(&["--config", config.to_str().unwrap(), "--admin-token-file", token_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&check(&["--admin-token-file", "/nonexistent/token"]).stderr);
    assert!(err.contains("<command line>: admin.token_file: cannot read /nonexistent/token"), "{err}");
    let err = text(&check(&["--admin-token-file", token_file.to_str().unwrap(), "--no-metrics"]).stderr);
    assert!(err.contains("metrics listener"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that trickles its request, and one that sends nothing, hold
/// only their own connections' threads: a probe behind them is answered at
/// once (not after their 2 s head deadline). Past 64 connections at once,
/// one more is refused at once.
#[test]
fn a_slow_client_does_not_hold_the_metrics_listener() {
    let relay = Relay::start(&["--user", "alice:secret"]);
    let _silent = TcpStream::connect(relay.metrics).unwrap();
    let mut slow = TcpStream::connect(relay.metrics).unwrap();
    slow.write_all(b"GET /admin/allocations HTTP/1.1\r\n").unwrap();
    let addr = relay.metrics;
    let trickle = std::thread::spawn(move || {
        for _ in 0..12 {
            std::thread::sleep(Duration::from_millis(400));
            if slow.write_all(b"X").is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let t = Instant::now();
        let a = http(addr, "GET", path, None).expect("an answer");
        assert_eq!(a.status, 200, "{path}");
        assert!(t.elapsed() < Duration::from_millis(1000), "{path} waited {:?}", t.elapsed());
    }
    trickle.join().unwrap();
    // Connections beyond the 64 served at once are refused at once, and
    // served again as soon as some close.
    let idle: Vec<TcpStream> = (0..64).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    // A 503 "busy" when the client reads it before the close (which may
    // reset the connection, its request unread): never served.
    let over = http(addr, "GET", "/healthz", None);
    assert!(over.as_ref().is_none_or(|a| (a.status, a.body.as_str()) == (503, "busy\n")), "{over:?}");
    assert!(t.elapsed() < Duration::from_millis(1000), "the refusal waited {:?}", t.elapsed());
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http(addr, "GET", "/healthz", None).map(|a| a.status) != Some(200) {
        assert!(Instant::now() < deadline, "healthz not served again once the idle connections closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `mkfifo PATH` (coreutils).
fn mkfifo(path: &Path) {
    let out = common::run_bounded(Command::new("mkfifo").arg(path), Duration::from_secs(10));
    assert!(out.status.success(), "mkfifo {}: {}", path.display(), text(&out.stderr));
}

/// Reloads stuck in the main loop (its users file a FIFO that nobody
/// writes yet) fill the admin API's slots: one more admin request is
/// answered 503 with Retry-After at once, and `/healthz`, `/readyz` and
/// `/metrics` are answered at once all along. Once the file is written the
/// reloads finish, each 200.
#[test]
fn probes_never_wait_behind_admin_work() {
    const SLOTS: usize = 4; // admin::ADMIN_SLOTS
    let dir = scratch("busy");
    let (users, _, config) = admin_config(&dir, "alice:secret\n", TOKEN);
    let relay = Relay::start(&["--config", config.to_str().unwrap()]);
    let addr = relay.metrics;

    // The users file becomes a FIFO: a reload blocks reading it.
    let fifo = dir.join("users.fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &users).unwrap();
    let reload = move || std::thread::spawn(move || http(addr, "POST", "/admin/reload", Some(TOKEN)).map(|a| a.status));
    let mut reloads: Vec<_> = (0..SLOTS).map(|_| reload()).collect();
    // Every slot taken: the next admin request is refused at once. (A
    // reload that came in while a probe below held a slot was itself
    // refused: it is sent again.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let busy = loop {
        std::thread::sleep(Duration::from_millis(100));
        for t in reloads.iter_mut() {
            if t.is_finished() {
                let done = std::mem::replace(t, reload());
                assert_eq!(done.join().unwrap(), Some(503), "a reload finished while its file could not be read");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let a = http(addr, "GET", "/admin/allocations", Some(TOKEN)).expect("an answer");
        if a.status == 503 {
            assert!(t.elapsed() < Duration::from_millis(1000), "the busy answer waited {:?}", t.elapsed());
            break a;
        }
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(Instant::now() < deadline, "the admin API never became busy with {SLOTS} reloads in progress");
    };
    assert!(busy.head.contains("Retry-After: 1"), "{}", busy.head);
    assert!(busy.json()["error"].as_str().unwrap().contains("busy"), "{}", busy.body);
    // Probes and scrapes meanwhile: at once, every time.
    for _ in 0..3 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let t = Instant::now();
            let a = http(addr, "GET", path, None).expect("an answer");
            assert_eq!(a.status, 200, "{path}: {}", a.body);
            assert!(t.elapsed() < Duration::from_millis(500), "{path} waited {:?} behind admin work", t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = metric_at(addr, r#"turn_admin_requests_total{action="busy",code="503"}"#);
    assert!(refused.is_some_and(|n| n >= 1.0), "busy answers counted: {refused:?}");
    assert!(reloads.iter().all(|t| !t.is_finished()), "a reload finished while its file could not be read");

    // Let the reload read: open the FIFO's writing end (this returns once
    // the main loop has its reading end open), put a regular file in its
    // place for the reloads after it, then write the users.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = users.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&path));
    });
    let mut writer = rx.recv_timeout(Duration::from_secs(5)).expect("the main loop reads the users file").unwrap();
    let regular = dir.join("users.new");
    std::fs::write(&regular, "alice:secret\nbob:builder\n").unwrap();
    std::fs::rename(&regular, &users).unwrap();
    writer.write_all(b"alice:secret\nbob:builder\n").unwrap();
    drop(writer);
    for t in reloads {
        assert_eq!(t.join().unwrap(), Some(200), "a reload did not finish once its file was there");
    }
    let mut bob = client(relay.server, "bob", "builder");
    assert!(bob.allocate().is_ok(), "the reload let bob in");
    assert_eq!(admin(&relay, "GET", "/admin/allocations").status, 200, "the slots are free again");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wrong tokens are answered 401 only after a delay, their slot held:
/// eight connections guessing as fast as they can get a handful of answers
/// a second, server-wide (the others are told the API is busy), and the
/// probes are not slowed.
#[test]
fn wrong_tokens_are_slowed_server_wide() {
    const SLOTS: f64 = 4.0; // admin::ADMIN_SLOTS
    const DELAY: f64 = 0.25; // admin::UNAUTHORIZED_DELAY
    let dir = scratch("guess");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let relay = Relay::start(&["--user", "alice:secret", "--admin-token-file", token_file.to_str().unwrap()]);
    let addr = relay.metrics;
    let t = Instant::now();
    let one = http(addr, "GET", "/admin/allocations", Some("a-wrong-guess-0123456789")).unwrap();
    assert_eq!(one.status, 401);
    assert!(t.elapsed() >= Duration::from_millis(200), "a wrong token answered in {:?}", t.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let guessers: Vec<_> = (0..8)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut refused, mut busy) = (0u32, 0u32);
                for k in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let guess = format!("guess-{i}-{k}-0123456789abcdef");
                    match http(addr, "DELETE", "/admin/users/alice/allocations", Some(&guess)).map(|a| a.status) {
                        Some(401) => refused += 1,
                        Some(503) => {
                            busy += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        other => panic!("a wrong token answered {other:?}"),
                    }
                }
                (refused, busy)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let h = http(addr, "GET", "/healthz", None).expect("healthz answers");
    assert!(h.status == 200 && t.elapsed() < Duration::from_millis(500), "healthz: {h:?} in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let (mut refused, mut busy) = (0u32, 0u32);
    for g in guessers {
        let (r, b) = g.join().unwrap();
        refused += r;
        busy += b;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // A slot answers one guess per DELAY at most.
    let most = (SLOTS * (elapsed / DELAY + 1.0)) as u32;
    assert!(refused >= 1 && refused <= most, "{refused} guesses answered 401 in {elapsed:.2} s (at most {most})");
    assert!(busy >= 1, "no guess was told the API is busy ({refused} answered 401)");
    let counted = metric_at(addr, r#"turn_admin_requests_total{action="unauthorized",code="401"}"#);
    assert_eq!(counted, Some(f64::from(refused + 1)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the kernel fast path (TC, in network namespaces), what the kernel
/// relayed is credited to its allocation: the admin list counts every
/// packet, whichever path took it.
#[test]
fn fast_path_traffic_is_counted_per_allocation() {
    const NAME: &str = "fast_path_traffic_is_counted_per_allocation";
    let t = match test_kit::Topology::new("fpadm") {
        Ok(t) => t,
        Err(why) => return test_kit::skip(NAME, &why),
    };
    let dir = scratch("fast");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let extra = ["--fast-path", "tc", "--admin-token-file", token_file.to_str().unwrap()];
    let mut relay = common::Killed(common::topology_relay(&t, REALM, &extra));
    let metrics: SocketAddr = common::TOPOLOGY_METRICS.parse().unwrap();
    let get = |path: &str| http_in(&t.clients, metrics, "GET", path, Some(TOKEN));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/healthz").is_none() {
        if let Some(status) = relay.0.try_wait().unwrap() {
            let mut err = String::new();
            relay.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return test_kit::skip(NAME, &format!("turn-relay --fast-path tc did not start ({status}): {err}"));
        }
        assert!(Instant::now() < deadline, "turn-relay did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let login = Login { user: "alice", password: "secret", realm: REALM };
    let sock = test_kit::Topology::udp(&t.clients, "10.201.1.2:0");
    let mut c = TurnClient::with_socket(sock, common::TOPOLOGY_SERVER.parse().unwrap(), login);
    let relayed = c.allocate().unwrap();
    let peer = test_kit::Topology::udp(&t.peers, "10.201.2.2:0");
    c.ok(
        Method::CHANNEL_BIND,
        &[Attribute::ChannelNumber(0x4001), Attribute::XorPeerAddress(peer.local_addr().unwrap())],
    );
    let n = 30u64;
    for i in 0..n {
        let data = format!("datagram {i:03}").into_bytes();
        c.send_channel_data(0x4001, &data);
        assert_eq!(test_kit::recv_datagram(&peer).expect("the peer receives"), (data.clone(), relayed));
        peer.send_to(&data, relayed).unwrap();
        assert!(c.recv().is_some(), "the client receives");
    }
    let list: Value = serde_json::from_str(&get("/admin/allocations").unwrap().body).unwrap();
    let a = &list["allocations"][0];
    assert_eq!(a["id"], relayed.to_string());
    assert_eq!(a["to_peer"], serde_json::json!({"packets": n, "bytes": n * 12}), "{list}");
    assert_eq!(a["to_client"], serde_json::json!({"packets": n, "bytes": n * 12}), "{list}");
    // And the kernel did relay them (else this proves nothing); the
    // metrics are published once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = get("/metrics").unwrap().body;
        let kernel = metric(&body, r#"turn_fast_path_packets_total{direction="to_peer"}"#).unwrap_or(0.0);
        if kernel >= (n - 1) as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "relayed in the kernel: {kernel}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
