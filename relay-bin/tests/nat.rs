//! NAT classification for real: each test builds its own little Internet
//! out of network namespaces and veth pairs —
//!
//! ```text
//!   client ns                 router ns                      server ns
//!   192.168.77.2  ── lan ── 192.168.77.1 │ 203.0.113.254 ── wan ──  203.0.113.1, 203.0.113.2
//!   turn-relay probe nat      nftables: the NAT under test            turn-relay, RFC 5780 on
//! ```
//!
//! — puts a NAT of one kind in the router with nftables (masquerade for the
//! mapping; conntrack, a DNAT rule and a set of contacted addresses for the
//! filtering), runs `turn-relay probe nat` from behind it, and checks the
//! verdict: full cone (with hairpinning), restricted cone, port-restricted
//! cone, symmetric, and without NAT: open Internet, symmetric UDP firewall,
//! blocked. Only addresses inside the test's own namespaces are used, and
//! the namespaces and processes are removed afterwards, on failure too.
//!
//! Without the privileges to create namespaces (not root, no
//! CAP_SYS_ADMIN/CAP_NET_ADMIN) each test prints why and skips. Without
//! `nft` it fails (`apt-get install nftables`, as `.ci/run` does) unless
//! `TURN_RELAY_SKIP_NETNS=1` says to skip. In CI (`CI=true`) or with
//! `TURN_RELAY_REQUIRE_ALL=1` no skip is allowed: each of these fails.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::{have, run_bounded, sh, skip};

const BIN: &str = env!("CARGO_BIN_EXE_turn-relay");
const SERVER: &str = "stun:203.0.113.1:3478";

/// The namespaces and processes of one test; removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = run_bounded(Command::new("ip").args(["netns", "del", ns]), Duration::from_secs(10));
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Why a lab cannot be built here: skip (no privileges) or fail.
enum NoLab {
    Skip(String),
    Fail(String),
}

impl Lab {
    fn ns(&self, which: char) -> String {
        format!("{}{which}", self.prefix)
    }

    /// Creates the three namespaces and wires them; `route_back` gives the
    /// server a route to the client's network (for the no-NAT cases).
    fn build(route_back: bool) -> Result<Lab, NoLab> {
        if !have("ip") {
            return Err(NoLab::Skip("`ip` (iproute2) is not installed".into()));
        }
        let prefix = format!("trnat{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab { prefix, namespaces: Vec::new(), children: Vec::new() };
        // The first namespace tells whether we may do this at all.
        let s = lab.ns('s');
        if let Err(e) = sh(&["ip", "netns", "add", &s]) {
            if e.contains("Operation not permitted") || e.contains("Permission denied") {
                return Err(NoLab::Skip(format!("no privileges to create network namespaces (root needed): {e}")));
            }
            return Err(NoLab::Fail(e));
        }
        lab.namespaces.push(s);
        if !have("nft") {
            let why = "`nft` is missing: apt-get install nftables (or TURN_RELAY_SKIP_NETNS=1)";
            if std::env::var("TURN_RELAY_SKIP_NETNS").as_deref() == Ok("1") {
                return Err(NoLab::Skip(why.into()));
            }
            return Err(NoLab::Fail(why.into()));
        }
        let (s, r, c) = (lab.ns('s'), lab.ns('r'), lab.ns('c'));
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", &r],
            vec!["ip", "netns", "add", &c],
            vec!["ip", "link", "add", "eth0", "netns", &s, "type", "veth", "peer", "name", "wan", "netns", &r],
            vec!["ip", "link", "add", "eth0", "netns", &c, "type", "veth", "peer", "name", "lan", "netns", &r],
            vec!["ip", "-n", &s, "addr", "add", "203.0.113.1/24", "dev", "eth0"],
            vec!["ip", "-n", &s, "addr", "add", "203.0.113.2/24", "dev", "eth0"],
            vec!["ip", "-n", &r, "addr", "add", "203.0.113.254/24", "dev", "wan"],
            vec!["ip", "-n", &r, "addr", "add", "192.168.77.1/24", "dev", "lan"],
            vec!["ip", "-n", &c, "addr", "add", "192.168.77.2/24", "dev", "eth0"],
            vec!["ip", "-n", &s, "link", "set", "lo", "up"],
            vec!["ip", "-n", &r, "link", "set", "lo", "up"],
            vec!["ip", "-n", &c, "link", "set", "lo", "up"],
            vec!["ip", "-n", &s, "link", "set", "eth0", "up"],
            vec!["ip", "-n", &r, "link", "set", "wan", "up"],
            vec!["ip", "-n", &r, "link", "set", "lan", "up"],
            vec!["ip", "-n", &c, "link", "set", "eth0", "up"],
            vec!["ip", "-n", &c, "route", "add", "default", "via", "192.168.77.1"],
            vec!["ip", "netns", "exec", &r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        ];
        for step in steps {
            if step[..3] == ["ip", "netns", "add"] {
                lab.namespaces.push(step[3].to_owned());
            }
            sh(&step).map_err(NoLab::Fail)?;
        }
        if route_back {
            sh(&["ip", "-n", &s, "route", "add", "192.168.77.0/24", "via", "203.0.113.254"]).map_err(NoLab::Fail)?;
        }
        Ok(lab)
    }

    /// Loads an nftables ruleset into the router.
    fn router_rules(&self, rules: &str) -> Result<(), String> {
        let path = std::env::temp_dir().join(format!("{}.nft", self.prefix));
        std::fs::write(&path, rules).map_err(|e| e.to_string())?;
        let r = sh(&["ip", "netns", "exec", &self.ns('r'), "nft", "-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Starts turn-relay in the server namespace with RFC 5780 on
    /// 203.0.113.1 and 203.0.113.2, and waits until it answers there.
    fn start_server(&mut self) -> Result<(), String> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns('s'), BIN, "--listen", "203.0.113.1:3478"])
            .args(["--rfc5780-other", "203.0.113.2", "--no-tcp", "--relay-ip", "203.0.113.1"])
            .args(["--relay-ports", "40000-40015", "--user", "u:p", "--no-metrics", "--shards", "1", "--no-pin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = run_bounded(
                Command::new("ip")
                    .args(["netns", "exec", &self.ns('s'), BIN, "probe", SERVER])
                    .args(["--rto", "50", "--rc", "2", "--rm", "2"]),
                Duration::from_secs(5),
            );
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("turn-relay did not come up in the server namespace".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `turn-relay probe nat --json` from the client namespace.
    fn probe_nat(&self) -> String {
        let out = run_bounded(
            Command::new("ip")
                .args(["netns", "exec", &self.ns('c'), BIN, "probe", "nat", SERVER, "--json"])
                .args(["--rto", "100", "--rc", "3", "--rm", "4"]),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `turn-relay probe turn --json` from the client namespace, the peer
    /// found by its reflexive address.
    fn probe_turn(&self) -> String {
        let out = run_bounded(
            Command::new("ip")
                .args(["netns", "exec", &self.ns('c'), BIN, "probe", "turn", "turn:203.0.113.1:3478"])
                .args(["-u", "u", "-w", "p", "--json", "--rto", "100", "--rc", "3", "--rm", "4"]),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The raw value of a top-level `"key":` in the probe's JSON.
fn field<'j>(json: &'j str, key: &str) -> &'j str {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat).unwrap_or_else(|| panic!("no {key} in {json:?}")) + pat.len();
    let rest = &json[start..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map_or(rest.len(), |i| i + 2)
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    &rest[..end]
}

/// The lab with `rules` in the router and the server running; `None`
/// (after saying so) where namespaces cannot be made.
fn lab(name: &str, route_back: bool, rules: &str) -> Option<Lab> {
    let mut lab = match Lab::build(route_back) {
        Ok(l) => l,
        Err(NoLab::Skip(why)) => {
            // Fails instead in CI (CI=true) or with TURN_RELAY_REQUIRE_ALL=1.
            skip(name, &why);
            return None;
        }
        Err(NoLab::Fail(why)) => panic!("{name}: {why}"),
    };
    lab.router_rules(rules).unwrap_or_else(|e| panic!("{name}: nftables: {e}"));
    lab.start_server().unwrap_or_else(|e| panic!("{name}: {e}"));
    Some(lab)
}

/// Builds the lab with `rules` in the router, probes, and checks the
/// verdict: (classic, mapping, filtering, hairpinning) as JSON values.
fn check(name: &str, route_back: bool, rules: &str, want: [&str; 4]) {
    let started = Instant::now();
    let Some(lab) = lab(name, route_back, rules) else { return };
    let j = lab.probe_nat();
    let got = [field(&j, "classic"), field(&j, "mapping"), field(&j, "filtering"), field(&j, "hairpinning")];
    let want = want.map(|w| if w == "null" || w == "true" || w == "false" { w.to_owned() } else { format!("\"{w}\"") });
    assert_eq!(got, want.each_ref().map(String::as_str), "{name}: {j}");
    if route_back {
        assert_eq!(field(&j, "behind_nat"), "false", "{name}: {j}");
    } else if field(&j, "udp_blocked") == "false" {
        assert_eq!(field(&j, "behind_nat"), "true", "{name}: {j}");
        assert!(field(&j, "mapped").starts_with("\"203.0.113.254:"), "{name}: {j}");
    }
    drop(lab);
    eprintln!("{name}: ok in {:?}", started.elapsed());
}

/// Linux's ordinary NAT: masquerade keeps the source port (one mapping for
/// every destination) and conntrack lets in only answers from the exact
/// address and port sent to.
const PORT_RESTRICTED: &str = r#"
table ip natlab {
  chain filter_fw { type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    ct state established,related accept
  }
  chain nat_post { type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
}
"#;

/// As above, and whatever comes from an IP the client has sent to is let
/// in to it, whatever the port (DNAT keeps the port, which masquerade kept).
const RESTRICTED: &str = r#"
table ip natlab {
  set contacted { type ipv4_addr; flags dynamic; }
  chain filter_fw { type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" add @contacted { ip daddr } accept
    ct state established,related accept
    iifname "wan" ct status dnat accept
  }
  chain nat_pre { type nat hook prerouting priority dstnat; policy accept;
    iifname "wan" ip saddr @contacted dnat to 192.168.77.2
  }
  chain nat_post { type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
  }
}
"#;

/// Everything arriving at the public address goes in to the client, from
/// anywhere; and the client's own traffic to the public address hairpins.
const FULL_CONE: &str = r#"
table ip natlab {
  chain filter_fw { type filter hook forward priority filter; policy drop;
    iifname "lan" accept
    ct state established,related accept
    iifname "wan" ct status dnat accept
  }
  chain nat_pre { type nat hook prerouting priority dstnat; policy accept;
    iifname "wan" dnat to 192.168.77.2
    iifname "lan" ip daddr 203.0.113.254 dnat to 192.168.77.2
  }
  chain nat_post { type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade
    oifname "lan" ip saddr 192.168.77.0/24 snat to 203.0.113.254
  }
}
"#;

/// A random port for every new destination.
const SYMMETRIC: &str = r#"
table ip natlab {
  chain filter_fw { type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    ct state established,related accept
  }
  chain nat_post { type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade random
  }
}
"#;

/// No translation; only answers from where the client sent get in.
const FIREWALL: &str = r#"
table ip natlab {
  chain filter_fw { type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    ct state established,related accept
  }
}
"#;

/// No translation, no filter.
const ROUTER: &str = r#"
table ip natlab {
  chain filter_fw { type filter hook forward priority filter; policy accept; }
}
"#;

/// Nothing gets through.
const BLOCKED: &str = r#"
table ip natlab {
  chain filter_fw { type filter hook forward priority filter; policy drop; }
}
"#;

#[test]
fn full_cone_nat() {
    check("full cone", false, FULL_CONE, ["full_cone", "endpoint_independent", "endpoint_independent", "true"]);
}

#[test]
fn restricted_cone_nat() {
    check(
        "restricted cone",
        false,
        RESTRICTED,
        ["restricted_cone", "endpoint_independent", "address_dependent", "false"],
    );
}

#[test]
fn port_restricted_cone_nat() {
    let want = ["port_restricted_cone", "endpoint_independent", "address_and_port_dependent", "false"];
    check("port-restricted cone", false, PORT_RESTRICTED, want);
}

#[test]
fn symmetric_nat() {
    let want = ["symmetric", "address_and_port_dependent", "address_and_port_dependent", "false"];
    check("symmetric", false, SYMMETRIC, want);
}

#[test]
fn open_internet() {
    check("open internet", true, ROUTER, ["open_internet", "endpoint_independent", "endpoint_independent", "null"]);
}

#[test]
fn symmetric_udp_firewall() {
    let want = ["symmetric_udp_firewall", "endpoint_independent", "address_and_port_dependent", "null"];
    check("symmetric UDP firewall", true, FIREWALL, want);
}

#[test]
fn udp_blocked() {
    check("blocked", false, BLOCKED, ["blocked", "null", "null", "null"]);
}

#[test]
fn turn_probe_through_a_port_restricted_nat() {
    let Some(lab) = lab("TURN through a NAT", false, PORT_RESTRICTED) else { return };
    let j = lab.probe_turn();
    assert_eq!(field(&j, "ok"), "true", "{j}");
    // The peer socket sits behind the NAT too: the server is given its
    // reflexive address, and the peer's own datagram opened the NAT to the
    // relay.
    assert!(field(&j, "peer_reflexive").starts_with("\"203.0.113.254:"), "{j}");
    assert!(field(&j, "relayed").starts_with("\"203.0.113.1:"), "{j}");
    assert_eq!(field(&j, "relayed"), field(&j, "peer_saw"), "{j}");
    assert_eq!(field(&j, "echoes_lost"), "0", "{j}");
}
