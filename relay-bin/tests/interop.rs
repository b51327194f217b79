//! Interop with real third-party software: coturn's client tools (Debian
//! package `coturn`, installed by `.ci/run`) against `turn-relay` over
//! loopback. `turnutils_stunclient` for Binding, `turnutils_uclient` over
//! UDP, TCP (`-t`) and TLS (`-t -S`), with ChannelData (its default) and with
//! Send/Data indications (`-s`), and client to client (`-y`) over UDP and
//! TCP; each run is bounded and must show every message back and zero loss.
//!
//! Without the tools the test fails, unless `TURN_RELAY_SKIP_INTEROP=1`
//! says to skip (for machines without coturn); in CI (`CI=true`) or with
//! `TURN_RELAY_REQUIRE_ALL=1` that escape does not work.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Killed, assert_uclient_round_trips, free_udp_port, have, run_bounded, skip, wait_serving};

/// True when coturn's client tools are here; without them the test fails,
/// or skips (returning false) where `TURN_RELAY_SKIP_INTEROP=1` allows it
/// outside CI.
fn tools_present(test: &str) -> bool {
    let found = ["turnutils_uclient", "turnutils_peer", "turnutils_stunclient"].into_iter().all(have);
    if !found && std::env::var("TURN_RELAY_SKIP_INTEROP").as_deref() != Ok("1") {
        panic!("coturn's client tools are missing: apt-get install coturn (or TURN_RELAY_SKIP_INTEROP=1)");
    }
    if !found {
        skip(test, "TURN_RELAY_SKIP_INTEROP=1 and coturn's client tools are missing");
    }
    found
}

#[test]
fn coturn_clients_relay_through_turn_relay() {
    if !tools_present("coturn_clients_relay_through_turn_relay") {
        return;
    }
    let port = free_udp_port("127.0.0.1");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("turn-relay-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tls = test_kit::certificate(&["localhost"]);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, tls.cert_pem).unwrap();
    std::fs::write(&key, tls.key_pem).unwrap();
    // lo..lo+59; the client-to-client test has lo+60..lo+99.
    let lo = 21000 + (std::process::id() % 90) as u16 * 100;
    let relay = Killed(
        Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--listen-tls", &format!("127.0.0.1:{tls_port}")])
            .args(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
            .args(["--relay-ip", "127.0.0.1"])
            .args([
                "--relay-ports",
                &format!("{lo}-{}", lo + 59),
                "--quarantine",
                "1",
                "--user",
                "test:pass",
                "--realm",
                "example.org",
            ])
            .args(["--allow-peer", "127.0.0.0/8", "--no-metrics", "--shards", "1", "--no-pin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The relay's own address (127.0.0.1) is never a permitted peer, so the
    // echo peer listens on 127.0.0.2.
    let (_peer, peer_port) = common::turnutils_peer("127.0.0.2");
    let (udp, tls) = (([127, 0, 0, 1], port).into(), ([127, 0, 0, 1], tls_port).into());
    wait_serving(udp, &[udp, tls], Duration::from_secs(15));

    let out = run_bounded(
        Command::new("turnutils_stunclient").args(["-p", &port.to_string(), "127.0.0.1"]),
        Duration::from_secs(10),
    );
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("UDP reflexive addr: 127.0.0.1:"), "stunclient:\n{log}");

    let modes = [
        ("ChannelData", &[][..]),
        ("Send/Data indications", &["-s"][..]),
        ("TCP ChannelData", &["-t"][..]),
        ("TCP Send/Data indications", &["-t", "-s"][..]),
        ("TLS ChannelData", &["-t", "-S"][..]),
    ];
    for (mode, extra) in modes {
        let port = if extra.contains(&"-S") { tls_port } else { port };
        let peer = ["-e", "127.0.0.2", "-r", &peer_port.to_string()];
        uclient_round_trips(mode, &[extra, &peer[..]].concat(), port);
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `turnutils_uclient EXTRA… -p PORT 127.0.0.1` with 4 clients of 100
/// messages each (bounded): every message must come back, none lost, and
/// no TURN error answered.
fn uclient_round_trips(mode: &str, extra: &[&str], port: u16) {
    let out = run_bounded(
        Command::new("turnutils_uclient")
            .args(extra)
            .args(["-p", &port.to_string(), "-u", "test", "-w", "pass", "-m", "4", "-n", "100", "-l", "120"])
            .args(["-z", "2", "-c", "127.0.0.1"]),
        Duration::from_secs(30),
    );
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_uclient_round_trips(mode, &log, 400);
}

/// `turnutils_uclient -y`: clients talk to each other through the server,
/// no peer: each client's peer is another client's relayed address, one of
/// the server's own relay addresses. That is what two browsers relayed by
/// one server do, so it works under the default peer policy (no
/// `--allow-peer`), over UDP and over TCP (`-t`).
#[test]
fn coturn_clients_reach_each_other_through_turn_relay() {
    if !tools_present("coturn_clients_reach_each_other_through_turn_relay") {
        return;
    }
    let port = free_udp_port("127.0.0.1");
    let lo = 21000 + (std::process::id() % 90) as u16 * 100 + 60;
    let relay = Killed(
        Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--relay-ip", "127.0.0.1"])
            .args(["--relay-ports", &format!("{lo}-{}", lo + 39), "--quarantine", "1"])
            .args(["--user", "test:pass", "--realm", "example.org"])
            .args(["--no-metrics", "--shards", "1", "--no-pin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let udp = ([127, 0, 0, 1], port).into();
    wait_serving(udp, &[udp], Duration::from_secs(15));
    uclient_round_trips("client to client", &["-y"], port);
    uclient_round_trips("TCP client to client", &["-y", "-t"], port);
    drop(relay);
}
