//! `listen.proxy_protocol_from` in the `turn-relay` binary: the key from a
//! configuration file reaches the TCP listener (a trusted balancer's
//! header gives the client address; an untrusted header, a trusted
//! connection without one and a second connection naming the same client
//! are closed), the counters reach `/metrics` as
//! `turn_proxy_protocol_total{result=…}`, and a bad value is refused
//! naming the file, line and key. The process is stopped by its pid; every
//! wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use relay_core::wire::proxy::{Header, Version};
use relay_core::wire::{Attribute, AttributeType, Class, Message, MessageBuilder, MessageType, Method, TransactionId};

use common::{Killed, free_tcp_port, http_get, metric_at};

const TIMEOUT: Duration = Duration::from_secs(3);
/// The trusted balancer's address (all of 127/8 is loopback).
const BALANCER: &str = "127.0.0.5";

/// A relay port range of its own, below the kernel's ephemeral range,
/// varied by pid.
fn relay_range() -> String {
    let lo = 12000 + (std::process::id() % 200) as u16 * 20;
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

/// True when the server closes `s` within a few seconds.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => return false,
        }
    }
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
        .args(["--relay-ip", "127.0.0.1", "--relay-ports", &relay_range(), "--user", "alice:secret"])
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
    assert!(closed_by_server(&mut direct), "an untrusted header was not refused");
    let mut bare = connect_from(BALANCER, tcp);
    bare.write_all(&binding_request()).unwrap();
    assert!(closed_by_server(&mut bare), "the balancer's connection without a header was not refused");
    // The same client again while its connection is open: closed.
    let mut twice = connect_from(BALANCER, tcp);
    let header = Header::tcp(Version::V1, client, tcp).encode_v1().unwrap();
    twice.write_all(&[header, binding_request()].concat()).unwrap();
    assert!(closed_by_server(&mut twice), "a second connection naming the client was not refused");

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
