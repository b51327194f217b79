//! TURN over TLS and SHA-256 long-term keys against the in-process relay,
//! over real loopback sockets: allocation storms over TLS (trusting a CA
//! file, or any certificate), a wrong CA refused with a clear error, the
//! blocking client over TLS, SHA-256 allocations (with the responses'
//! MESSAGE-INTEGRITY-SHA256 checked) and a server without SHA-256 refused,
//! and churn over TCP and TLS that releases everything.

mod common;

use std::time::Duration;

use bench_harness::client::{
    IntegrityAlgorithm, PasswordAlgorithm, TlsOptions, TlsTransport, Transport as _, TransportKind,
};
use bench_harness::{AllocateConfig, ChurnConfig, ClientError, TurnClient, TurnServer, run_allocate, run_churn};
use relay_core::server::ServerConfig;

/// The TLS relay as a target.
fn tls_target(relay: &relay_io::Relay, tls: TlsOptions) -> TurnServer {
    TurnServer { addr: common::tls_addr(relay), transport: TransportKind::Tls, tls: Some(tls), ..common::target(relay) }
}

fn storm(server: TurnServer, count: usize) -> bench_harness::AllocateReport {
    let cfg = AllocateConfig {
        count,
        concurrency: 4,
        release: true,
        duration: Duration::from_secs(5),
        ..AllocateConfig::new(server)
    };
    assert_eq!(cfg.transport, TransportKind::Tls, "taken from the server");
    run_allocate(&cfg).unwrap()
}

#[test]
fn allocation_storm_over_tls_trusting_a_ca_file() {
    let (relay, ca) = common::start_relay_tls(32, common::quick_config());
    // By name (the certificate's DNS name) and by IP address (the default).
    for name in [Some("localhost".to_owned()), None] {
        let tls = TlsOptions { server_name: name, ..TlsOptions::with_ca(&ca) };
        let r = storm(tls_target(&relay, tls), 12);
        assert_eq!((r.allocate.attempted, r.allocate.succeeded), (12, 12), "{r}");
        assert_eq!(r.allocate.retransmissions, 0);
        assert_eq!(r.release.as_ref().unwrap().succeeded, 12, "{r}");
        assert!(r.to_string().contains("over tls"), "{r}");
        assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    }
    let _ = std::fs::remove_file(ca);
    relay.stop().unwrap();
}

#[test]
fn allocation_storm_over_tls_insecure() {
    let (relay, ca) = common::start_relay_tls(32, common::quick_config());
    let _ = std::fs::remove_file(ca);
    let r = storm(tls_target(&relay, TlsOptions::insecure()), 20);
    assert_eq!((r.allocate.attempted, r.allocate.succeeded), (20, 20), "{r}");
    assert_eq!(r.release.as_ref().unwrap().succeeded, 20, "{r}");
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(json["transport"], "tls");
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    relay.stop().unwrap();
}

#[test]
fn a_wrong_ca_fails_with_a_clear_error() {
    let (relay, ca0) = common::start_relay_tls(8, common::quick_config());
    let _ = std::fs::remove_file(ca0);
    let (_, other) = common::self_signed("other");
    let server = tls_target(&relay, TlsOptions::with_ca(&other));
    let e = TlsTransport::connect(server.addr, None, &server.tls_connector().unwrap()).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("TLS handshake with") && text.contains("invalid peer certificate"), "{text}");

    let r = storm(server, 3);
    assert_eq!(r.allocate.succeeded, 0, "{r}");
    assert!(r.allocate.errors.keys().any(|k| k.contains("invalid peer certificate")), "{:?}", r.allocate.errors);

    // The right CA for another name: refused too.
    let (relay2, ca) = common::start_relay_tls(8, common::quick_config());
    let tls = TlsOptions { server_name: Some("elsewhere.example".into()), ..TlsOptions::with_ca(&ca) };
    let server = tls_target(&relay2, tls);
    let e = TlsTransport::connect(server.addr, None, &server.tls_connector().unwrap()).unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");

    // Neither a CA nor insecure, and a CA file with no certificate.
    let e = TlsOptions::default().connector(server.addr).unwrap_err();
    assert!(e.to_string().contains("--tls-ca"), "{e}");
    let empty = std::env::temp_dir().join(format!("turn-bench-empty-{}.pem", std::process::id()));
    std::fs::write(&empty, "nothing here\n").unwrap();
    let e = TlsOptions::with_ca(&empty).connector(server.addr).unwrap_err();
    assert!(e.to_string().contains("no usable certificate"), "{e}");
    for f in [empty, other, ca] {
        let _ = std::fs::remove_file(f);
    }
    relay.stop().unwrap();
    relay2.stop().unwrap();
}

#[test]
fn turn_client_over_tls() {
    let (relay, ca) = common::start_relay_tls(8, common::quick_config());
    let server = tls_target(&relay, TlsOptions { server_name: Some("localhost".into()), ..TlsOptions::with_ca(&ca) });
    let t = TlsTransport::connect(server.addr, None, &server.tls_connector().unwrap()).unwrap();
    assert!(!t.connection().is_handshaking());
    assert_eq!(t.kind(), TransportKind::Tls);
    assert!(t.reliable());
    let mut c = TurnClient::new(t, server.client_config()).unwrap();
    let relayed = c.allocate(Some(600)).unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    c.create_permission(&["127.0.0.2:9".parse().unwrap()]).unwrap();
    assert_eq!(c.retransmissions, 0);
    // The data plane takes the connection over; nothing is left unread.
    let (t, core) = c.into_parts();
    let (stream, conn, rest) = t.into_parts();
    assert!(rest.is_empty());
    assert!(!conn.is_handshaking());
    assert_eq!(stream.peer_addr().unwrap(), server.addr);
    drop((stream, conn, core));
    // Closing the connection ends its allocation (RFC 8656 §3.1).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while relay.stats(Duration::from_secs(2))[0].allocations != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0);
    let _ = std::fs::remove_file(ca);
    relay.stop().unwrap();
}

#[test]
fn sha256_allocation_checks_the_responses_integrity() {
    let relay = common::start_relay(16);
    let server = TurnServer { password_algorithm: PasswordAlgorithm::Sha256, ..common::target(&relay) };
    let mut c = TurnClient::udp(server.addr, server.client_config()).unwrap();
    c.allocate(None).unwrap();
    assert_eq!(c.core().response_integrity(), Some(IntegrityAlgorithm::Sha256));
    assert!(c.core().nonce().unwrap().starts_with("obMatJos2"));
    c.refresh(0).unwrap();
    assert_eq!(c.core().response_integrity(), Some(IntegrityAlgorithm::Sha256));

    // A wrong password: the SHA-256 request is refused, no fallback.
    let wrong =
        TurnServer { credentials: bench_harness::Credentials::long_term(common::USER, "nope"), ..server.clone() };
    let e = TurnClient::udp(wrong.addr, wrong.client_config()).unwrap().allocate(None).unwrap_err();
    assert_eq!(e.code(), Some(401), "{e}");

    // A storm with SHA-256 keys.
    let cfg = AllocateConfig { count: 10, concurrency: 4, release: true, ..AllocateConfig::new(server) };
    let r = run_allocate(&cfg).unwrap();
    assert_eq!((r.allocate.succeeded, r.release.as_ref().unwrap().succeeded), (10, 10), "{r}");
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "all released");
    relay.stop().unwrap();
}

#[test]
fn sha256_against_a_server_not_offering_it_fails_clearly() {
    let relay = common::start_relay_config(4, 600, ServerConfig { sha256: false, ..common::quick_config() });
    let server = TurnServer { password_algorithm: PasswordAlgorithm::Sha256, ..common::target(&relay) };
    let mut c = TurnClient::udp(server.addr, server.client_config()).unwrap();
    let e = c.allocate(None).unwrap_err();
    assert!(matches!(e, ClientError::PasswordAlgorithm(_)), "{e}");
    assert!(e.to_string().contains("password algorithm") && e.to_string().contains("obMatJos2"), "{e}");
    assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0);
    // MD5 still works there.
    let md5 = common::target(&relay);
    TurnClient::udp(md5.addr, md5.client_config()).unwrap().allocate(None).unwrap();
    relay.stop().unwrap();
}

#[test]
fn churn_over_tcp_and_tls_releases_everything() {
    let (relay, ca) = common::start_relay_tls(64, common::quick_config());
    let tcp = TurnServer { addr: common::tcp_addr(&relay), transport: TransportKind::Tcp, ..common::target(&relay) };
    let tls =
        TurnServer { password_algorithm: PasswordAlgorithm::Sha256, ..tls_target(&relay, TlsOptions::with_ca(&ca)) };
    for server in [tcp, tls] {
        let kind = server.transport;
        let cfg = ChurnConfig {
            duration: Duration::from_secs(1),
            rate: 30,
            concurrency: 4,
            round_trips: 2,
            server_pid: Some(std::process::id()),
            ..ChurnConfig::new(server)
        };
        let r = run_churn(&cfg).unwrap();
        assert!(r.started >= 20, "{kind:?}: {r}");
        assert_eq!(r.completed, r.started, "{kind:?}: {r}");
        assert!(r.failures.is_empty(), "{kind:?}: {r}");
        assert_eq!((r.data_sent, r.data_received), (2 * r.started, 2 * r.started), "{kind:?}: {r}");
        assert_eq!(r.transport, kind);
        assert!(r.to_string().contains(&format!("over {}", kind.name())), "{r}");
        assert_eq!(relay.stats(Duration::from_secs(2))[0].allocations, 0, "{kind:?}: all released");
        let s = r.server.as_ref().unwrap();
        let (a, b) = (s.start.unwrap(), s.end.unwrap());
        // Every connection of the run is closed again (the relay runs in
        // this process: its side of each connection counts too, closed
        // when it sees ours close).
        assert!(b.fds <= a.fds + 4, "{kind:?}: {a:?} → {b:?}");
    }
    let _ = std::fs::remove_file(ca);
    relay.stop().unwrap();
}
