//! The probes' results for a person (aligned text) and for scripts (one
//! JSON object; field names are stable: see docs/operations.md).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use relay_core::client::RetransmitPolicy;
use relay_core::client::nat::{Behavior, NatReport, Outcome};
use relay_core::client::stun::BindingOutcome;
use relay_core::client::turn::TurnReport;

use super::json::{self, Ms, NatOutcome, NatTest, StunOutcome, TurnStep};

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<26}{value}");
}

fn requests(n: u32) -> String {
    if n == 1 { "1 request".into() } else { format!("{n} requests") }
}

/// `probe stun`: whether it passed, the JSON line, the text.
pub fn stun(
    uri: &str,
    server: SocketAddr,
    local: SocketAddr,
    policy: RetransmitPolicy,
    outcome: &BindingOutcome,
) -> (bool, String, String) {
    let mut t = String::new();
    let _ = writeln!(t, "STUN Binding to {server} ({uri}) from {local}");
    let (ok, j) = match outcome {
        BindingOutcome::Timeout { transmissions } => {
            line(
                &mut t,
                "result",
                format!(
                    "FAILED: no answer after {} over {:.1} s (UDP blocked, or no server there)",
                    requests(*transmissions),
                    policy.timeout().as_secs_f64()
                ),
            );
            (false, StunOutcome::Timeout { error: "no answer", transmissions: *transmissions })
        }
        BindingOutcome::Response { from, response: r, rtt, transmissions, .. } => {
            if let Some(e) = &r.error {
                line(&mut t, "result", format!("FAILED: error {e}"));
            } else {
                match r.reflexive() {
                    Some(a) => line(&mut t, "reflexive address", a),
                    None => line(&mut t, "reflexive address", "none in the answer"),
                }
            }
            line(&mut t, "round-trip time", format!("{} ({})", ms(*rtt), requests(*transmissions)));
            if *from != server {
                line(&mut t, "answered from", from);
            }
            if r.alg_detected() {
                line(&mut t, "ALG", "MAPPED-ADDRESS and XOR-MAPPED-ADDRESS differ: a NAT rewrites addresses");
            }
            if let Some(o) = r.response_origin {
                line(&mut t, "response origin", o);
            }
            match r.other_address {
                Some(o) => line(&mut t, "other address", format!("{o} (RFC 5780 NAT discovery supported)")),
                None => line(&mut t, "other address", "none (no RFC 5780 NAT discovery)"),
            }
            if let Some(s) = &r.software {
                line(&mut t, "software", s);
            }
            if let Some(p) = r.padding {
                line(&mut t, "padding", format!("{p} bytes"));
            }
            let ok = r.error.is_none() && r.reflexive().is_some();
            let j = StunOutcome::Response {
                error: r.error.as_ref().map(|e| e.to_string()),
                reflexive: r.reflexive(),
                xor_mapped_address: r.xor_mapped,
                mapped_address: r.mapped,
                answered_from: *from,
                rtt_ms: Ms(*rtt),
                transmissions: *transmissions,
                response_origin: r.response_origin,
                other_address: r.other_address,
                software: r.software.as_deref(),
                alg: r.alg_detected(),
            };
            (ok, j)
        }
    };
    (ok, json::line(&json::Stun { probe: "stun", server, local, ok, outcome: j }), t)
}

fn yes_no(b: Option<bool>, none: &str) -> String {
    match b {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => none.into(),
    }
}

/// `probe nat`: whether it passed, the JSON line, the text.
pub fn nat(uri: &str, r: &NatReport) -> (bool, String, String) {
    let mut t = String::new();
    let _ = writeln!(t, "NAT behaviour discovery against {} ({uri}) from {}", r.server, r.local);
    match (r.mapped, r.behind_nat) {
        (Some(m), Some(true)) => line(&mut t, "mapped address", format!("{m} (behind a NAT)")),
        (Some(m), _) => line(&mut t, "mapped address", format!("{m} (same as local: no NAT)")),
        (None, _) if r.udp_blocked => line(&mut t, "mapped address", "none: no answer, UDP is blocked"),
        (None, _) => line(&mut t, "mapped address", "none"),
    }
    if let Some(o) = r.other_address {
        line(&mut t, "server other address", o);
    }
    let unknown = "unknown";
    line(&mut t, "mapping", r.mapping.map_or(unknown, Behavior::name));
    line(&mut t, "filtering", r.filtering.map_or(unknown, Behavior::name));
    line(&mut t, "hairpinning", yes_no(r.hairpinning, "not tested"));
    if r.alg {
        line(&mut t, "ALG", "MAPPED-ADDRESS and XOR-MAPPED-ADDRESS differ: a NAT rewrites addresses");
    }
    line(&mut t, "NAT type (RFC 3489)", r.classic.map_or(unknown, |c| c.name()));
    if let Some(rtt) = r.rtt {
        line(&mut t, "round-trip time", ms(rtt));
    }
    let _ = writeln!(t, "  tests:");
    let mut tests = Vec::new();
    for x in &r.tests {
        let (result, outcome) = match &x.outcome {
            Outcome::Answer { from, response, rtt, transmissions } => {
                let what = match (&response.error, response.reflexive()) {
                    (Some(e), _) => format!("error {e}"),
                    (None, Some(m)) => format!("mapped {m}"),
                    (None, None) => "no mapped address".into(),
                };
                let j = NatOutcome::Answer {
                    from: *from,
                    mapped: response.reflexive(),
                    error: response.error.as_ref().map(|e| e.to_string()),
                    rtt_ms: Ms(*rtt),
                    transmissions: *transmissions,
                };
                (format!("answer from {from}, {what}, {}", ms(*rtt)), j)
            }
            Outcome::HairpinReceived { from, rtt, transmissions } => {
                let j = NatOutcome::Received { from: *from, rtt_ms: Ms(*rtt), transmissions: *transmissions };
                (format!("came back from {from}, {}", ms(*rtt)), j)
            }
            Outcome::NoAnswer { transmissions } => (
                format!("nothing ({})", requests(*transmissions)),
                NatOutcome::NoAnswer { transmissions: *transmissions },
            ),
        };
        let _ = writeln!(t, "    {:<50} to {:<22} {result}", x.test.describe(), x.to.to_string());
        tests.push(NatTest { test: x.test.id(), to: x.to, socket: x.socket, outcome });
    }
    for n in &r.notes {
        let _ = writeln!(t, "  note: {n}");
    }
    let ok = !r.udp_blocked && r.mapped.is_some();
    let j = json::Nat {
        probe: "nat",
        server: r.server,
        local: r.local,
        ok,
        udp_blocked: r.udp_blocked,
        mapped: r.mapped,
        behind_nat: r.behind_nat,
        other_address: r.other_address,
        response_origin: r.response_origin,
        software: r.software.as_deref(),
        rtt_ms: r.rtt.map(Ms),
        mapping: r.mapping.map(Behavior::id),
        filtering: r.filtering.map(Behavior::id),
        hairpinning: r.hairpinning,
        alg: r.alg,
        classic: r.classic.map(|c| c.id()),
        tests,
        notes: &r.notes,
    };
    (ok, json::line(&j), t)
}

/// `probe turn`: whether it passed, the JSON line, the text.
pub fn turn(
    uri: &str,
    server: SocketAddr,
    local: SocketAddr,
    peer: SocketAddr,
    user: &str,
    r: &TurnReport,
) -> (bool, String, String) {
    let mut t = String::new();
    let _ = writeln!(t, "TURN probe of {server} ({uri}) as {user:?} from {local}, echo peer on {peer}");
    let mut steps = Vec::new();
    let mut challenged = false;
    let mut followed = false;
    for s in &r.steps {
        let result = match &s.error {
            Some(e) if e.starts_with("401") && s.name == "Allocate" && !challenged => {
                challenged = true;
                format!("{e} (challenge)")
            }
            Some(e) if e.starts_with("300") && s.name == "Allocate" && r.redirected_from.is_some() && !followed => {
                followed = true;
                format!("{e} (followed)")
            }
            Some(e) => e.clone(),
            None => "ok".into(),
        };
        let rtt = s.rtt.map(ms).unwrap_or_default();
        let _ = writeln!(t, "  {:<26}{result:<32}{rtt} ({})", s.name, requests(s.transmissions));
        steps.push(TurnStep {
            request: s.name,
            error: s.error.as_deref(),
            rtt_ms: s.rtt.map(Ms),
            transmissions: s.transmissions,
        });
    }
    // Where a 300 (Try Alternate) sent it: the rest ran there.
    let redirected_to = r.redirected_from.and(r.server);
    if let (Some(from), Some(to)) = (r.redirected_from, redirected_to) {
        line(&mut t, "redirected to", format!("{to} (300 from {from})"));
    }
    if let Some(realm) = &r.realm {
        line(&mut t, "realm", realm);
    }
    if let Some(s) = &r.software {
        line(&mut t, "software", s);
    }
    if let Some(m) = r.mapped {
        line(&mut t, "mapped address", m);
    }
    if let Some(p) = r.peer.filter(|&p| p != peer) {
        line(&mut t, "peer as the relay sees it", p);
    }
    if let Some(a) = r.relayed {
        let saw = match r.peer_saw {
            Some(p) if p == a => " (the peer saw the same)".to_owned(),
            Some(p) => format!(" (but the peer saw {p})"),
            None => String::new(),
        };
        line(&mut t, "relayed address", format!("{a}{saw}"));
    }
    if let Some(l) = r.lifetime {
        line(&mut t, "lifetime", format!("{l} s"));
    }
    let rtts = &r.echo_rtts;
    if !rtts.is_empty() || r.echoes_lost > 0 {
        let (min, max) = (rtts.iter().min().copied(), rtts.iter().max().copied());
        let avg = (!rtts.is_empty()).then(|| rtts.iter().sum::<Duration>() / rtts.len() as u32);
        let stats = match (min, avg, max) {
            (Some(a), Some(b), Some(c)) => format!("min {} / avg {} / max {}", ms(a), ms(b), ms(c)),
            _ => "none".into(),
        };
        line(&mut t, "echo round trips", format!("{stats} over {} ({} lost)", rtts.len(), r.echoes_lost));
    }
    line(&mut t, "released", if r.released { "yes" } else { "no" });
    let ok = r.ok();
    match &r.error {
        Some(e) => line(&mut t, "result", format!("FAILED: {e}")),
        None if ok => line(&mut t, "result", "OK"),
        None => line(&mut t, "result", "FAILED: echoes lost"),
    }
    let j = json::Turn {
        probe: "turn",
        server,
        redirected_to,
        local,
        peer,
        peer_reflexive: r.peer,
        ok,
        error: r.error.as_deref(),
        realm: r.realm.as_deref(),
        software: r.software.as_deref(),
        mapped: r.mapped,
        relayed: r.relayed,
        peer_saw: r.peer_saw,
        lifetime: r.lifetime,
        echo_rtt_ms: r.echo_rtts.iter().copied().map(Ms).collect(),
        echoes_lost: r.echoes_lost,
        released: r.released,
        requests: steps,
    };
    (ok, json::line(&j), t)
}
