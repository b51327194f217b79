//! An in-process relay on loopback for the harness's tests: relay-io's data
//! plane over a relay-core server that allows loopback peers (the peer sits
//! on 127.0.0.2; 127.0.0.1 is the relay's own address).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_harness::{Credentials, TurnServer};
use relay_core::server::auth::NonceIssuer;
use relay_core::server::{Server, ServerConfig, ServerParts};
use relay_io::{Backend, IoConfig, Relay, RelayIp, RelayPorts};
use test_kit::{Login, allow_loopback};

pub const REALM: &str = "bench.test";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";
pub const REST_SECRET: &str = "north";

/// Starts a relay with `relays` ephemeral relay ports on one shard.
pub fn start_relay(relays: usize) -> Relay {
    start_relay_with(relays, 600)
}

/// Same, with nonces valid for `nonce_secs`.
pub fn start_relay_with(relays: usize, nonce_secs: u64) -> Relay {
    start_relay_config(
        relays,
        nonce_secs,
        ServerConfig { relay_quarantine: Duration::from_secs(1), ..ServerConfig::default() },
    )
}

/// Same, with this server configuration (lifetimes, rate limits).
pub fn start_relay_config(relays: usize, nonce_secs: u64, server: ServerConfig) -> Relay {
    start_relay_io(relays, nonce_secs, server, false, None)
}

/// A relay that also listens for TURN over TCP (see [`tcp_addr`]).
pub fn start_relay_tcp(relays: usize) -> Relay {
    start_relay_tcp_config(relays, ServerConfig { relay_quarantine: Duration::from_secs(1), ..ServerConfig::default() })
}

/// Same, with this server configuration.
pub fn start_relay_tcp_config(relays: usize, server: ServerConfig) -> Relay {
    start_relay_io(relays, 600, server, true, None)
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// to a fresh file (the CA a client trusts); with the server's config.
pub fn self_signed(tag: &str) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let cert = test_kit::certificate(&["localhost", "127.0.0.1"]);
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("turn-bench-{}-{tag}-{n}.pem", std::process::id()));
    std::fs::write(&path, cert.cert_pem).unwrap();
    (cert.server_config, path)
}

/// A relay that also listens for TURN over TLS (see [`tls_addr`]) with a
/// fresh self-signed certificate; returns the certificate's PEM file too.
pub fn start_relay_tls(relays: usize, server: ServerConfig) -> (Relay, PathBuf) {
    let (tls, ca) = self_signed("server");
    (start_relay_io(relays, 600, server, true, Some(tls)), ca)
}

/// Lifetimes far shorter than a few-second run: without refreshes the
/// channel is gone after 3 s, the permission after 2 s, the allocation
/// after 4 s.
pub fn short_lifetimes() -> ServerConfig {
    ServerConfig {
        relay_quarantine: Duration::from_secs(1),
        permission_lifetime: Duration::from_secs(2),
        channel_lifetime: Duration::from_secs(3),
        default_lifetime: Duration::from_secs(4),
        max_lifetime: Duration::from_secs(4),
        ..ServerConfig::default()
    }
}

/// The server configuration the TLS relays of the tests use by default.
pub fn quick_config() -> ServerConfig {
    ServerConfig { relay_quarantine: Duration::from_secs(1), ..ServerConfig::default() }
}

fn start_relay_io(
    relays: usize,
    nonce_secs: u64,
    server: ServerConfig,
    tcp: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Relay {
    let config = IoConfig {
        shards: 1,
        backend: Backend::Auto,
        udp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_listen: if tcp { vec!["127.0.0.1:0".parse().unwrap()] } else { Vec::new() },
        tls_listen: if tls.is_some() { vec!["127.0.0.1:0".parse().unwrap()] } else { Vec::new() },
        tls,
        relay_ips: vec![RelayIp::same("127.0.0.1".parse().unwrap())],
        relay_ports: RelayPorts::Ephemeral(relays),
        ..IoConfig::default()
    };
    let make = |_k: usize| {
        let mut credentials = Login { user: USER, password: PASSWORD, realm: REALM }.credentials();
        credentials.add_rest_secret(REST_SECRET.as_bytes());
        let parts = ServerParts::new(credentials)
            .with_config(server.clone())
            .with_nonces(NonceIssuer::new([3; 32], nonce_secs))
            .with_policy(allow_loopback());
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        Server::new(parts, Instant::now(), unix, 11)
    };
    Relay::start(&config, make).expect("relay starts")
}

pub fn addr(relay: &Relay) -> SocketAddr {
    relay.udp_addrs()[0]
}

/// The relay's TCP listening address.
pub fn tcp_addr(relay: &Relay) -> SocketAddr {
    relay.tcp_addrs()[0]
}

/// The relay's TLS listening address.
pub fn tls_addr(relay: &Relay) -> SocketAddr {
    relay.tls_addrs()[0]
}

/// The relay as a target, with long-term credentials and short timers (the
/// loopback does not lose requests; a bug should fail fast).
pub fn target(relay: &Relay) -> TurnServer {
    TurnServer {
        rto: Duration::from_millis(100),
        max_tries: 4,
        ..TurnServer::new(addr(relay), Credentials::long_term(USER, PASSWORD))
    }
}

/// What the `turn-bench` binary printed, and how it ended.
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `turn-bench` binary with `args`; killed (and the test failed)
/// past 60 s.
pub fn turn_bench(args: &[&str]) -> Out {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_turn-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turn-bench");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        so.read_to_string(&mut s).map(|_| s).unwrap_or_default()
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        se.read_to_string(&mut s).map(|_| s).unwrap_or_default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("turn-bench {args:?} ran past 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out { code: status.code(), stdout: t_out.join().unwrap(), stderr: t_err.join().unwrap() }
}
