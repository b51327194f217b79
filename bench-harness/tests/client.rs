//! The harness's TURN client against the in-process relay: the 401 dance,
//! REST credentials, permissions, channels, Send/Data indications, Refresh
//! and release, wrong passwords and retransmission timeouts.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use bench_harness::client::{
    ClientConfig, ClientError, DataSource, RetransmitPolicy, TcpTransport, Transport as _, TransportKind, TurnClient,
};
use bench_harness::{Credentials, TurnServer};

fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.2:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

fn client(server: &TurnServer) -> TurnClient {
    TurnClient::udp(server.addr, server.client_config()).unwrap()
}

#[test]
fn allocate_learns_the_realm_and_relays_both_ways() {
    let relay = common::start_relay(8);
    let server = common::target(&relay);
    let mut c = client(&server);
    let relayed = c.allocate(None).unwrap();
    assert_eq!(c.core().realm(), Some(common::REALM), "realm learnt from the 401");
    assert!(c.core().nonce().is_some());
    let p = peer();
    let paddr = p.local_addr().unwrap();

    // Send indication → peer; peer → Data indication.
    c.create_permission(&[paddr]).unwrap();
    c.send_indication(paddr, b"via send").unwrap();
    let mut buf = [0u8; 100];
    let (n, from) = p.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"via send"[..], relayed));
    p.send_to(b"via data", relayed).unwrap();
    let (src, n) = c.recv_data(&mut buf, Duration::from_secs(2)).unwrap().expect("data indication");
    assert_eq!((src, &buf[..n]), (DataSource::Peer(paddr), &b"via data"[..]));

    // ChannelData both ways.
    c.channel_bind(0x4001, paddr).unwrap();
    c.send_channel_data(0x4001, b"via channel").unwrap();
    let (n, from) = p.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"via channel"[..], relayed));
    p.send_to(b"back on channel", relayed).unwrap();
    let (src, n) = c.recv_data(&mut buf, Duration::from_secs(2)).unwrap().expect("channel data");
    assert_eq!((src, &buf[..n]), (DataSource::Channel(0x4001), &b"back on channel"[..]));

    assert!(c.refresh(300).unwrap() > 0);
    assert_eq!(c.refresh(0).unwrap(), 0);
    // Released: a new request on the same 5-tuple finds no allocation.
    assert_eq!(c.create_permission(&[paddr]).unwrap_err().code(), Some(437));
    relay.stop().unwrap();
}

#[test]
fn rest_credentials_are_accepted() {
    let relay = common::start_relay(4);
    let server = TurnServer::new(common::addr(&relay), Credentials::rest(common::REST_SECRET, "bench"));
    let mut c = client(&server);
    c.allocate(Some(120)).unwrap();
    assert!(c.core().username().ends_with(":bench"));
    c.refresh(0).unwrap();
    relay.stop().unwrap();
}

#[test]
fn a_configured_realm_is_used_and_a_wrong_password_is_refused() {
    let relay = common::start_relay(4);
    let mut server = common::target(&relay);
    server.realm = Some(common::REALM.into());
    client(&server).allocate(None).unwrap();
    server.credentials = Credentials::long_term(common::USER, "wrong");
    let err = client(&server).allocate(None).unwrap_err();
    assert_eq!(err.code(), Some(401), "{err}");
    relay.stop().unwrap();
}

#[test]
fn a_silent_server_times_out_after_the_retransmissions() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = ClientConfig::new(Credentials::long_term("u", "p"));
    cfg.policy = RetransmitPolicy { rto: Duration::from_millis(20), rc: 3, rm: 2 };
    assert_eq!(cfg.transaction_timeout(), Duration::from_millis(20 * 3 + 40));
    let mut c = TurnClient::udp(silent.local_addr().unwrap(), cfg).unwrap();
    let t = Instant::now();
    match c.allocate(None) {
        Err(ClientError::Timeout { tries: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(95) && took < Duration::from_secs(2), "{took:?}");
    assert_eq!(c.retransmissions, 2);
    // Three requests reached the server.
    silent.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 1500];
    let mut got = 0;
    while silent.recv(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(got, 3);
}

#[test]
fn rfc_8489_default_timeout_is_39_5_seconds() {
    let cfg = ClientConfig::new(Credentials::long_term("u", "p"));
    assert_eq!(cfg.transaction_timeout(), Duration::from_millis(39_500));
}

#[test]
fn a_stale_nonce_is_answered_with_the_new_one() {
    let relay = common::start_relay_with(4, 1);
    let server = common::target(&relay);
    let mut c = client(&server);
    c.allocate(None).unwrap();
    let first = c.core().nonce().unwrap().to_owned();
    // Nonce lifetimes count in whole seconds of the issue time.
    std::thread::sleep(Duration::from_millis(2100));
    assert!(c.refresh(600).is_ok(), "438 answered with the fresh nonce");
    assert_ne!(c.core().nonce().unwrap(), first);
    c.refresh(0).unwrap();
    relay.stop().unwrap();
}

#[test]
fn over_tcp_the_stream_is_framed_both_ways() {
    let relay = common::start_relay_tcp(8);
    let server = common::target(&relay);
    let t = TcpTransport::connect(common::tcp_addr(&relay), None).unwrap();
    let mut c = TurnClient::new(t, server.client_config()).unwrap();
    assert!(c.core().config().reliable, "nothing is retransmitted over TCP");
    assert_eq!(c.transport().kind(), TransportKind::Tcp);
    let relayed = c.allocate(None).unwrap();
    let p = peer();
    let paddr = p.local_addr().unwrap();
    c.channel_bind(0x4002, paddr).unwrap();
    let mut buf = [0u8; 100];
    // Odd lengths: ChannelData over a stream is padded to 4 bytes.
    for (i, msg) in [&b"abc"[..], b"hello", b"x", b"four"].into_iter().enumerate() {
        c.send_channel_data(0x4002, msg).unwrap();
        let (n, from) = p.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (msg, relayed), "message {i}");
    }
    // Several frames back to back arrive as separate messages.
    for msg in [&b"one"[..], b"three", b"seven!!"] {
        p.send_to(msg, relayed).unwrap();
    }
    for msg in [&b"one"[..], b"three", b"seven!!"] {
        let (src, n) = c.recv_data(&mut buf, Duration::from_secs(2)).unwrap().expect("channel data");
        assert_eq!((src, &buf[..n]), (DataSource::Channel(0x4002), msg));
    }
    assert_eq!(c.refresh(0).unwrap(), 0);
    relay.stop().unwrap();
}
