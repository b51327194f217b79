//! `turn-relay probe` over loopback against this project's server (with
//! RFC 5780 on 127.0.0.1 and 127.0.0.2) and against coturn's `turnserver`
//! (two listening IPs turn its RFC 5780 support on), plus coturn's own NAT
//! discovery client against our server. Every process started here is
//! stopped by its pid; every wait is bounded.
//!
//! Without coturn the coturn parts fail, unless `TURN_RELAY_SKIP_INTEROP=1`
//! says to skip them; in CI (`CI=true`) or with `TURN_RELAY_REQUIRE_ALL=1`
//! that escape does not work.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Killed, have, run_bounded, skip};

const BIN: &str = env!("CARGO_BIN_EXE_turn-relay");
/// Quick timers for the probes: a silent test costs 0.7 s, not 39.5 s.
const QUICK: [&str; 6] = ["--rto", "100", "--rc", "3", "--rm", "4"];

/// A port P with P and P+1 free over UDP on 127.0.0.1 and 127.0.0.2
/// (bounded tries), below the kernel's ephemeral range and apart from the
/// relay port ranges used here.
fn port_pair(salt: u32) -> u16 {
    for k in 0..40u32 {
        let p = 10000 + ((std::process::id() * 7 + salt * 1000 + k * 137) % 9998) as u16;
        let free = ["127.0.0.1", "127.0.0.2"]
            .iter()
            .all(|ip| UdpSocket::bind((*ip, p)).is_ok() && UdpSocket::bind((*ip, p + 1)).is_ok());
        if free {
            return p;
        }
    }
    panic!("no free UDP port pair on loopback");
}

/// `turn-relay probe ARGS… --json`: (exit code, the JSON line).
fn probe(args: &[&str]) -> (i32, String) {
    let out = run_bounded(Command::new(BIN).arg("probe").args(args).args(QUICK).arg("--json"), Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        text.starts_with('{') && text.ends_with('}'),
        "probe {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `probe ARGS…` for a person: (exit code, stdout).
fn probe_text(args: &[&str]) -> (i32, String) {
    let out = run_bounded(Command::new(BIN).arg("probe").args(args).args(QUICK), Duration::from_secs(20));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The raw value of a top-level `"key":` in a flat JSON object (strings
/// with their quotes; enough for the fields checked here).
fn field<'j>(json: &'j str, key: &str) -> &'j str {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat).unwrap_or_else(|| panic!("no {key} in {json}")) + pat.len();
    let rest = &json[start..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map_or(rest.len(), |i| i + 2)
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    &rest[..end]
}

/// A line of human output: `label` then, after spaces, `value`.
fn has_line(text: &str, label: &str, value: &str) -> bool {
    text.lines().any(|l| l.trim_start().strip_prefix(label).is_some_and(|rest| rest.trim() == value))
}

/// Waits until a STUN server answers on 127.0.0.1:`port` (bounded).
fn wait_stun(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_bounded(
            Command::new(BIN).args([
                "probe",
                &format!("stun:127.0.0.1:{port}"),
                "--rto",
                "50",
                "--rc",
                "2",
                "--rm",
                "2",
            ]),
            Duration::from_secs(5),
        );
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "no STUN server came up on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn turn_relay(port: u16, rfc5780: bool) -> Killed {
    let lo = 21000 + (std::process::id() % 90) as u16 * 100 + if rfc5780 { 0 } else { 50 };
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--no-tcp", "--relay-ip", "127.0.0.1"])
        .args(["--relay-ports", &format!("{lo}-{}", lo + 40), "--user", "test:pass", "--realm", "example.org"])
        .args([
            "--allow-peer",
            "127.0.0.3/32",
            "--no-metrics",
            "--shards",
            "1",
            "--no-pin",
            "--software",
            "turn-relay",
        ]);
    if rfc5780 {
        cmd.args(["--rfc5780-other", "127.0.0.2"]);
    }
    let child = Killed(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    wait_stun(port);
    child
}

/// True when coturn is here; without it the test fails, or skips the
/// coturn part (returning false) where `TURN_RELAY_SKIP_INTEROP=1` allows
/// it outside CI.
fn coturn_present(test: &str) -> bool {
    let found = ["turnserver", "turnutils_natdiscovery"].into_iter().all(have);
    if !found && std::env::var("TURN_RELAY_SKIP_INTEROP").as_deref() != Ok("1") {
        panic!("coturn is missing: apt-get install coturn (or TURN_RELAY_SKIP_INTEROP=1)");
    }
    if !found {
        skip(test, "the coturn part: TURN_RELAY_SKIP_INTEROP=1 and coturn is missing");
    }
    found
}

#[test]
fn probes_against_turn_relay_with_rfc5780() {
    let p = port_pair(0);
    let _relay = turn_relay(p, true);
    let uri = format!("stun:127.0.0.1:{p}");
    let other = format!("\"127.0.0.2:{}\"", p + 1);

    let (code, j) = probe(&[&uri]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "ok"), "true");
    assert_eq!(field(&j, "reflexive"), field(&j, "local"), "no NAT on loopback: {j}");
    assert_eq!(field(&j, "other_address"), other);
    assert_eq!(field(&j, "response_origin"), format!("\"127.0.0.1:{p}\""));
    assert_eq!(field(&j, "software"), "\"turn-relay\"");
    assert_eq!(field(&j, "transmissions"), "1");

    // CHANGE-REQUEST: the answer comes from the other IP and port.
    let (code, j) = probe(&[&uri, "--change-ip", "--change-port"]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "answered_from"), other);
    let (_, j) = probe(&[&uri, "--change-port"]);
    assert_eq!(field(&j, "answered_from"), format!("\"127.0.0.1:{}\"", p + 1));

    let (code, j) = probe(&["nat", &uri]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "classic"), "\"open_internet\"");
    assert_eq!(field(&j, "mapping"), "\"endpoint_independent\"");
    assert_eq!(field(&j, "filtering"), "\"endpoint_independent\"");
    assert_eq!(field(&j, "behind_nat"), "false");
    assert_eq!(field(&j, "hairpinning"), "null");
    let (code, text) = probe_text(&["nat", &uri]);
    assert_eq!(code, 0);
    assert!(has_line(&text, "NAT type (RFC 3489)", "open internet"), "{text}");

    // The peer on 127.0.0.3 (the one loopback network --allow-peer
    // permits): 127.0.0.1 and 127.0.0.2 are the server's own IPs, where
    // only its relay addresses are peers.
    let turn = format!("turn:127.0.0.1:{p}");
    let (code, j) = probe(&["turn", &turn, "-u", "test", "-w", "pass", "--peer-ip", "127.0.0.3"]);
    assert_eq!(code, 0, "{j}");
    assert!(field(&j, "relayed").starts_with("\"127.0.0.1:"), "{j}");
    assert_eq!(field(&j, "relayed"), field(&j, "peer_saw"));
    assert_eq!(field(&j, "echoes_lost"), "0");
    assert_eq!(field(&j, "released"), "true");
    assert_eq!(field(&j, "realm"), "\"example.org\"");
    let (code, text) =
        probe_text(&["turn", &turn, "-u", "test", "-w", "pass", "--peer-ip", "127.0.0.3", "--count", "2"]);
    assert_eq!(code, 0, "{text}");
    assert!(has_line(&text, "result", "OK"), "{text}");
    assert!(text.contains("over 2 (0 lost)"), "{text}");

    let (code, j) = probe(&["turn", &turn, "-u", "test", "-w", "wrong", "--peer-ip", "127.0.0.3"]);
    assert_eq!(code, 1, "{j}");
    assert!(field(&j, "error").contains("wrong user name or password"), "{j}");
    let (code, j) = probe(&["turn", &turn, "-u", "test", "-w", "pass"]);
    // Without --peer-ip the peer is the probe's own 127.0.0.1: one of the
    // server's IPs, not at a relay port, and no allow entry covers it.
    assert_eq!(code, 1, "a peer on the server's own IP (not a relay address) is refused: {j}");
    assert!(field(&j, "error").contains("403"), "{j}");
    assert_eq!(field(&j, "released"), "true");

    // Bad arguments: exit status 2.
    let out = run_bounded(Command::new(BIN).args(["probe", "stuns:127.0.0.1"]), Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"));

    // coturn's RFC 5780 client agrees about our server.
    if coturn_present("probes_against_turn_relay_with_rfc5780") {
        let out = run_bounded(
            Command::new("turnutils_natdiscovery").args(["-m", "-f", "127.0.0.1", "-p", &p.to_string()]),
            Duration::from_secs(20),
        );
        let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("NAT with Endpoint Independent Mapping!"), "{log}");
        assert!(log.contains("NAT with Endpoint Independent Filtering!"), "{log}");
        assert!(log.contains(&format!("Other addr: : 127.0.0.2:{}", p + 1)), "{log}");
    }
}

#[test]
fn probes_against_turn_relay_without_rfc5780() {
    let p = port_pair(1);
    let _relay = turn_relay(p, false);
    let uri = format!("stun:127.0.0.1:{p}");
    let (code, j) = probe(&[&uri]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "other_address"), "null");
    assert_eq!(field(&j, "response_origin"), "null");
    // RFC 5780 §6.1: 420 to CHANGE-REQUEST without an alternate address.
    let (code, j) = probe(&[&uri, "--change-ip"]);
    assert_eq!(code, 1, "{j}");
    assert!(field(&j, "error").starts_with("\"420"), "{j}");
    let (code, j) = probe(&["nat", &uri]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "classic"), "null");
    assert_eq!(field(&j, "mapping"), "\"endpoint_independent\"", "no NAT: mapping needs no alternate");
    assert_eq!(field(&j, "filtering"), "null");
    assert!(j.contains("does not support RFC 5780"), "{j}");
}

#[test]
fn probes_against_coturn() {
    if !coturn_present("probes_against_coturn") {
        return;
    }
    let p = port_pair(2);
    let lo = 23000 + (std::process::id() % 90) as u16 * 100;
    let log = std::env::temp_dir().join(format!("turn-relay-probe-coturn-{}.log", std::process::id()));
    let _coturn = Killed(
        Command::new("turnserver")
            .args(["-n", "--listening-ip", "127.0.0.1", "--listening-ip", "127.0.0.2", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &p.to_string(), "--min-port", &lo.to_string()])
            .args(["--max-port", &(lo + 99).to_string(), "--lt-cred-mech", "--user", "test:pass"])
            .args(["--realm", "example.org", "--fingerprint", "--no-tls", "--no-dtls", "--no-tcp", "--no-cli"])
            .args(["--allow-loopback-peers", "--relay-threads", "1", "--simple-log", "--no-stdout-log"])
            .args(["--log-file", log.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_stun(p);
    let uri = format!("stun:127.0.0.1:{p}");
    let (code, j) = probe(&[&uri]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "other_address"), format!("\"127.0.0.2:{}\"", p + 1));
    assert!(field(&j, "software").contains("Coturn"), "{j}");
    let (_, j) = probe(&[&uri, "--change-ip", "--change-port"]);
    assert_eq!(field(&j, "answered_from"), format!("\"127.0.0.2:{}\"", p + 1), "{j}");

    let (code, j) = probe(&["nat", &uri]);
    assert_eq!(code, 0, "{j}");
    assert_eq!(field(&j, "classic"), "\"open_internet\"");
    assert_eq!(field(&j, "mapping"), "\"endpoint_independent\"");
    assert_eq!(field(&j, "filtering"), "\"endpoint_independent\"");

    let (code, j) = probe(&["turn", &format!("turn:127.0.0.1:{p}"), "-u", "test", "-w", "pass"]);
    assert_eq!(code, 0, "{j}");
    assert!(field(&j, "relayed").starts_with("\"127.0.0.1:"), "{j}");
    assert_eq!(field(&j, "relayed"), field(&j, "peer_saw"));
    assert_eq!((field(&j, "echoes_lost"), field(&j, "released")), ("0", "true"), "{j}");
    let _ = std::fs::remove_file(&log);
}
