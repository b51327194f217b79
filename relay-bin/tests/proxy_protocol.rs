//! `listen.proxy_protocol_from` in the `turn-relay` binary: the key from a
//! configuration file reaches the TCP listener (a trusted balancer's
//! header gives the client address; an untrusted header, a trusted
//! connection without one and a second connection naming the same client
//! are closed), the counters reach `/metrics` as
//! `turn_proxy_protocol_total{result=…}`, and a bad value is refused
//! naming the file, line and key. Then the same with a real balancer:
//! haproxy (its own instance and configuration, `send-proxy` and
//! `send-proxy-v2`, TLS passed through) in front of the TCP and TLS
//! listeners, with the workspace's TURN client and coturn's uclient behind
//! it. The processes are stopped by their pids; every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay_core::wire::attr::transport;
use relay_core::wire::proxy::{Header, Version};
use relay_core::wire::{
    Attribute, AttributeType, ChannelData, Class, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use rustls::pki_types::ServerName;
use test_kit::{Login, Stream, StreamClient, closed_by_server, recv_from};

use common::{Killed, free_tcp_port, http_get, metric_at, skip};

const TIMEOUT: Duration = Duration::from_secs(3);
/// The trusted balancer's address (all of 127/8 is loopback).
const BALANCER: &str = "127.0.0.5";

/// A relay port range of its own for each test (`slot` 0 or 1), below the
/// kernel's ephemeral range, varied by pid.
fn relay_range(slot: u16) -> String {
    let lo = 12000 + (std::process::id() % 200) as u16 * 40 + slot * 20;
    format!("{lo}-{}", lo + 15)
}

fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let tcp: TcpStream = s.into();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp
}

fn binding_request() -> Vec<u8> {
    let mut buf = [0u8; 64];
    let ty = MessageType::new(Class::Request, Method::BINDING);
    let b = MessageBuilder::new(&mut buf, ty, TransactionId([0x77; 12])).unwrap();
    let n = b.finish();
    buf[..n].to_vec()
}

/// One STUN message read from `s` (a Binding success is small: one read
/// of its header, then of the rest).
fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("a STUN header");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("a STUN body");
    [&head[..], &body].concat()
}

#[test]
fn the_configured_balancer_is_trusted_and_counted_in_metrics() {
    let dir = std::env::temp_dir().join(format!("turn-relay-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tcp: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
    let file = dir.join("relay.toml");
    let text = format!("[listen]\ntcp = [\"{tcp}\"]\nproxy_protocol_from = [\"{BALANCER}/32\"]\n");
    std::fs::write(&file, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_turn-relay"))
        .arg("--config")
        .arg(&file)
        .args(["--relay-ip", "127.0.0.1", "--relay-ports", &relay_range(0), "--user", "alice:secret"])
        .args(["--metrics", &metrics.to_string(), "--shards", "1", "--no-pin"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _relay = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(metrics, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "turn-relay did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The balancer's client, by its header.
    let mut s = connect_from(BALANCER, tcp);
    let client: SocketAddr = "192.0.2.10:5555".parse().unwrap();
    let header = Header::tcp(Version::V2, client, tcp).encode_v2(&[]).unwrap();
    s.write_all(&[header, binding_request()].concat()).unwrap();
    let resp = read_message(&mut s);
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Success);
    let mapped = match m.get(AttributeType::XOR_MAPPED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::XorMappedAddress(a))) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(mapped, client);
    // A header from a direct client, and the balancer without one: closed.
    let mut direct = connect_from("127.0.0.1", tcp);
    let header = Header::tcp(Version::V1, client, tcp).encode_v1().unwrap();
    direct.write_all(&[header, binding_request()].concat()).unwrap();
    assert!(closed_by_server(&mut direct, TIMEOUT), "an untrusted header was not refused");
    let mut bare = connect_from(BALANCER, tcp);
    bare.write_all(&binding_request()).unwrap();
    assert!(closed_by_server(&mut bare, TIMEOUT), "the balancer's connection without a header was not refused");
    // The same client again while its connection is open: closed.
    let mut twice = connect_from(BALANCER, tcp);
    let header = Header::tcp(Version::V1, client, tcp).encode_v1().unwrap();
    twice.write_all(&[header, binding_request()].concat()).unwrap();
    assert!(closed_by_server(&mut twice, TIMEOUT), "a second connection naming the client was not refused");

    // The shards' counters are published once a second.
    let want = [("accepted", 1.0), ("missing", 1.0), ("untrusted", 1.0), ("invalid", 0.0), ("duplicate", 1.0)];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<Option<f64>> = want
            .iter()
            .map(|(r, _)| metric_at(metrics, &format!("turn_proxy_protocol_total{{result=\"{r}\"}}")))
            .collect();
        if got.iter().zip(&want).all(|(g, (_, w))| *g == Some(*w)) {
            break;
        }
        assert!(Instant::now() < deadline, "turn_proxy_protocol_total: {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_network_is_refused_naming_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("turn-relay-proxy-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "[listen]\ntcp = [\"127.0.0.1:3478\"]\nproxy_protocol_from = [\"10.1.2.3/8\"]\n").unwrap();
    let out = common::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_turn-relay")).arg("--config").arg(&file).arg("--check-config"),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let want = format!("turn-relay: {}:3: listen.proxy_protocol_from[0]: 10.1.2.3/8 has host bits set", file.display());
    assert!(err.starts_with(&want), "{err}");
    // The flag's value is checked the same way, naming the command line.
    let out = common::run_bounded(
        Command::new(env!("CARGO_BIN_EXE_turn-relay")).args([
            "--listen-tcp",
            "127.0.0.1:3478",
            "--proxy-protocol-from",
            "10.1.2.3/8",
            "--check-config",
        ]),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("turn-relay: <command line>: listen.proxy_protocol_from[0]: "), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where haproxy binds its frontends and connects to the relay from: the
/// relay's one trusted address.
const HAPROXY: &str = "127.0.0.7";
/// Where the test's own clients connect to haproxy from.
const CLIENT: &str = "127.0.0.23";
/// Where coturn's uclient connects to haproxy from (`-L`).
const UCLIENT: &str = "127.0.0.24";
const REALM: &str = "example.org";
const ADMIN_TOKEN: &str = "proxy-protocol-test-admin-token";

/// True when a socket listens on TCP `addr` (IPv4), read from
/// /proc/net/tcp: a probe connection to a frontend would make haproxy
/// open one to the relay, and be counted there.
fn listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(a) = addr else { return false };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port());
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// haproxy's configuration: TCP mode, three frontends on [`HAPROXY`] and a
/// backend each, connecting from [`HAPROXY`] (`source`): `v1` to the
/// relay's TCP listener with `send-proxy`, `v2` to it with
/// `send-proxy-v2`, `tls_front` to the TLS listener with `send-proxy-v2`
/// (TLS passes through). No health checks (they would be connections of
/// their own in the counters).
fn haproxy_config(v1: SocketAddr, v2: SocketAddr, tls_front: SocketAddr, tcp: SocketAddr, tls: SocketAddr) -> String {
    format!(
        "global
    maxconn 256

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m

frontend turn_tcp_v1
    bind {v1}
    default_backend relay_tcp_v1

frontend turn_tcp_v2
    bind {v2}
    default_backend relay_tcp_v2

frontend turn_tls_v2
    bind {tls_front}
    default_backend relay_tls_v2

backend relay_tcp_v1
    server relay {tcp} source {HAPROXY} send-proxy

backend relay_tcp_v2
    server relay {tcp} source {HAPROXY} send-proxy-v2

backend relay_tls_v2
    server relay {tls} source {HAPROXY} send-proxy-v2
"
    )
}

/// The XOR-MAPPED-ADDRESS of a success response.
fn mapped(resp: &[u8]) -> SocketAddr {
    let m = Message::parse(resp).unwrap();
    match m.get(AttributeType::XOR_MAPPED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::XorMappedAddress(a))) => a,
        other => panic!("no XOR-MAPPED-ADDRESS: {other:?}"),
    }
}

/// The allocations the admin API lists: `(transport, client)` each.
fn allocations(metrics: SocketAddr) -> Vec<(String, String)> {
    let answer = common::http(metrics, "GET", "/admin/allocations", Some(ADMIN_TOKEN)).expect("the admin API answers");
    assert_eq!(answer.status, 200, "{answer:?}");
    let list = answer.json()["allocations"].as_array().expect("an allocation list").clone();
    list.iter()
        .map(|a| (a["transport"].as_str().unwrap().to_owned(), a["client"].as_str().unwrap().to_owned()))
        .collect()
}

/// Through one haproxy frontend, as a client at `local`: a Binding whose
/// XOR-MAPPED-ADDRESS is `local` (the header's address, not haproxy's),
/// an Allocate (its XOR-MAPPED-ADDRESS `local` too), a ChannelBind to
/// `peer` and ChannelData both ways. Returns the client, still connected.
fn through_balancer(what: &str, stream: Box<dyn Stream>, local: SocketAddr, peer: &UdpSocket) -> StreamClient {
    let login = Login { user: "alice", password: "secret", realm: REALM };
    let mut c = StreamClient::over(stream, login);
    let resp = c.ok(Method::BINDING, &[]);
    assert_eq!(mapped(&resp), local, "{what}: Binding");
    let resp = c.ok(Method::ALLOCATE, &[Attribute::RequestedTransport(transport::UDP)]);
    assert_eq!(mapped(&resp), local, "{what}: Allocate");
    let m = Message::parse(&resp).unwrap();
    let relayed = match m.get(AttributeType::XOR_RELAYED_ADDRESS).map(|a| a.decode(&m.transaction_id())) {
        Some(Ok(Attribute::XorRelayedAddress(a))) => a,
        other => panic!("{what}: no XOR-RELAYED-ADDRESS: {other:?}"),
    };
    let peer_addr = peer.local_addr().unwrap();
    c.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(peer_addr)]);
    let mut buf = [0u8; 2048];
    for i in 0..3u64 {
        let out = format!("{what} to the peer {i}");
        c.send_channel_data(0x4000, out.as_bytes());
        let (n, from) = recv_from(peer, &mut buf).unwrap_or_else(|e| panic!("{what}: the peer receives: {e}"));
        assert_eq!((&buf[..n], from), (out.as_bytes(), relayed), "{what}");
        let back = format!("{what} from the peer {i}");
        peer.send_to(back.as_bytes(), relayed).unwrap();
        let frame = c.frame();
        let data = ChannelData::parse(&frame).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        assert_eq!((data.channel, data.payload), (0x4000, back.as_bytes()), "{what}");
    }
    c
}

/// Waits (5 s at most: the shards publish once a second) until `/metrics`
/// shows `connections` in `turn_tcp_connections_accepted_total` (TCP and
/// TLS) and `counts` in `turn_proxy_protocol_total` by result: accepted,
/// missing, untrusted, invalid, duplicate.
fn wait_counts(metrics: SocketAddr, connections: f64, counts: [f64; 5]) {
    let results = ["accepted", "missing", "untrusted", "invalid", "duplicate"];
    let samples: Vec<String> = std::iter::once("turn_tcp_connections_accepted_total".to_owned())
        .chain(results.iter().map(|r| format!("turn_proxy_protocol_total{{result=\"{r}\"}}")))
        .collect();
    let want: Vec<Option<f64>> = std::iter::once(connections).chain(counts).map(Some).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<Option<f64>> = samples.iter().map(|s| metric_at(metrics, s)).collect();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{samples:?}: {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// haproxy (Debian's package, installed by `.ci/run`; its own instance
/// with its own configuration, never the system service) in front of
/// turn-relay's TCP and TLS listeners with `send-proxy` and
/// `send-proxy-v2`: clients behind it are seen at their own addresses
/// (XOR-MAPPED-ADDRESS, the allocations' client address), TURN works end
/// to end through it (the workspace's client over each frontend, coturn's
/// uclient over the v2 one), `accepted` counts them, and a direct
/// connection from haproxy's address without a header is refused.
#[test]
fn haproxy_send_proxy_reaches_the_relay_with_the_client_address() {
    let test = "haproxy_send_proxy_reaches_the_relay_with_the_client_address";
    if !common::have("haproxy") {
        skip(test, "haproxy is missing: apt-get install haproxy");
        return;
    }
    let dir = std::env::temp_dir().join(format!("turn-relay-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = test_kit::certificate(&["localhost"]);
    let (cert_file, key_file, token_file) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("admin-token"));
    std::fs::write(&cert_file, &cert.cert_pem).unwrap();
    std::fs::write(&key_file, &cert.key_pem).unwrap();
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let port = |ip: &str| -> SocketAddr { format!("{ip}:{}", free_tcp_port(ip)).parse().unwrap() };
    let (tcp, tls, metrics) = (port("127.0.0.1"), port("127.0.0.1"), port("127.0.0.1"));
    let relay_log = dir.join("relay.log");
    let child = Command::new(env!("CARGO_BIN_EXE_turn-relay"))
        .args(["--listen-tcp", &tcp.to_string(), "--listen-tls", &tls.to_string()])
        .args(["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap()])
        .args(["--proxy-protocol-from", &format!("{HAPROXY}/32")])
        .args(["--relay-ip", "127.0.0.1", "--relay-ports", &relay_range(1), "--quarantine", "1"])
        .args(["--user", "alice:secret", "--realm", REALM, "--allow-peer", "127.0.0.0/8"])
        .args(["--metrics", &metrics.to_string(), "--admin-token-file", token_file.to_str().unwrap()])
        .args(["--shards", "1", "--no-pin"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&relay_log).unwrap())
        .spawn()
        .unwrap();
    let _relay = Killed(child);

    let (v1, v2, tls_front) = (port(HAPROXY), port(HAPROXY), port(HAPROXY));
    let config = dir.join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(v1, v2, tls_front, tcp, tls)).unwrap();
    let haproxy_log = dir.join("haproxy.log");
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&haproxy_log).unwrap())
        .spawn()
        .unwrap();
    let mut haproxy = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(metrics, "/healthz").is_none() || ![v1, v2, tls_front].into_iter().all(listening) {
        if let Ok(Some(status)) = haproxy.0.try_wait() {
            panic!("haproxy exited ({status}): {}", std::fs::read_to_string(&haproxy_log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "turn-relay or haproxy did not come up (logs in {})", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The workspace's client through each frontend, from CLIENT.
    let peer = test_kit::peer();
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for (what, front) in [("TCP, PROXY v1", v1), ("TCP, PROXY v2", v2), ("TLS, PROXY v2", tls_front)] {
        let s = connect_from(CLIENT, front);
        let local = s.local_addr().unwrap();
        let stream: Box<dyn Stream> = if front == tls_front {
            let name = ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(test_kit::client_config(&cert.der), name).unwrap();
            Box::new(rustls::StreamOwned::new(conn, s))
        } else {
            Box::new(s)
        };
        clients.push(through_balancer(what, stream, local, &peer));
        seen.push((if front == tls_front { "tls" } else { "tcp" }.to_owned(), local.to_string()));
    }
    // The relay holds their allocations under their own addresses.
    let mut listed = allocations(metrics);
    listed.sort();
    seen.sort();
    assert_eq!(listed, seen, "the allocations' client addresses");
    drop(clients);

    // haproxy's address without a header, on either listener: refused.
    for (what, to) in [("TCP", tcp), ("TLS", tls)] {
        let mut bare = connect_from(HAPROXY, to);
        bare.write_all(&binding_request()).unwrap();
        assert!(closed_by_server(&mut bare, TIMEOUT), "{what}: a trusted connection without a header was not refused");
    }
    // Each of the 5 connections the relay took so far is counted: haproxy's
    // 3 `accepted`, the 2 bare ones `missing`.
    wait_counts(metrics, 5.0, [3.0, 2.0, 0.0, 0.0, 0.0]);

    // coturn's uclient through the v2 frontend, from UCLIENT (`-L`): while
    // it runs, its allocations are listed under that address.
    if !common::have("turnutils_uclient") || !common::have("turnutils_peer") {
        skip(test, "coturn's turnutils_uclient/_peer are missing: apt-get install coturn");
    } else {
        let (_echo, peer_port) = common::turnutils_peer("127.0.0.2");
        let args: Vec<String> = [
            "-t",
            "-L",
            UCLIENT,
            "-e",
            "127.0.0.2",
            "-r",
            &peer_port.to_string(),
            "-p",
            &v2.port().to_string(),
            "-u",
            "alice",
            "-w",
            "secret",
            "-m",
            "2",
            "-n",
            "200",
            "-l",
            "120",
            "-z",
            "10",
            "-c",
            HAPROXY,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let run = std::thread::spawn(move || {
            common::run_bounded(Command::new("turnutils_uclient").args(&args), Duration::from_secs(30))
        });
        let mut under_uclient = std::collections::BTreeSet::new();
        while !run.is_finished() {
            under_uclient.extend(allocations(metrics));
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = run.join().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        common::assert_uclient_round_trips("uclient -t through haproxy send-proxy-v2", &log, 400);
        // Both of its clients were seen, each at its own address and port.
        assert!(under_uclient.len() >= 2, "uclient's allocations: {under_uclient:?}\n{log}");
        for (transport, client) in &under_uclient {
            let client: SocketAddr = client.parse().unwrap();
            assert_eq!((transport.as_str(), client.ip().to_string()), ("tcp", UCLIENT.to_owned()), "{log}");
        }
        // Every connection uclient opened (it opens more than one per
        // client) reached the relay through haproxy with a header; the
        // connection count is read once it has stopped changing (the
        // shards publish once a second).
        let connections = || metric_at(metrics, "turn_tcp_connections_accepted_total").unwrap_or(0.0);
        let mut last = connections();
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(1200));
            let now = connections();
            if now == last {
                break;
            }
            last = now;
        }
        let opened = last - 5.0;
        assert!(opened >= 2.0, "uclient's connections: {opened}");
        wait_counts(metrics, 5.0 + opened, [3.0 + opened, 2.0, 0.0, 0.0, 0.0]);
    }

    drop(haproxy);
    let _ = std::fs::remove_dir_all(&dir);
}
