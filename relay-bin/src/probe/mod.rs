//! `turn-relay probe`: the operator's STUN/TURN client checks.
//!
//! - `probe [stun] stun:HOST[:PORT]`: one Binding transaction with RFC 8489
//!   retransmissions: the server-reflexive address and the round-trip time;
//! - `probe nat stun:HOST[:PORT]`: RFC 5780 NAT behaviour discovery (mapping,
//!   filtering, hairpinning) and the classic RFC 3489 name;
//! - `probe turn turn:HOST[:PORT] --user U --password P`: allocate, permission,
//!   channel, ChannelData echoed by a local peer through the relay, release.
//!
//! The protocol lives in `relay_core::client` as sans-IO machines; this
//! module parses the command line, binds sockets, drives the machine
//! ([`driver`]) and prints the result for a person or, with `--json`, as one
//! JSON object. Exit status: 0 when the check passed, 1 when it ran and
//! failed (no answer, an error response, a lost echo), 2 for bad arguments
//! or a local error.

mod driver;
mod json;
mod report;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use relay_core::client::RetransmitPolicy;
use relay_core::client::nat::{NatDiscovery, PACING};
use relay_core::client::stun::{BindingProbe, BindingRequest};
use relay_core::client::turn::{TurnProbe, TurnProbeConfig};
use relay_core::wire::attr::ChangeRequest;

/// `turn-relay probe`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProbeArgs {
    #[command(subcommand)]
    kind: Option<Kind>,
    #[command(flatten)]
    stun: StunArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Kind {
    /// STUN Binding: the server-reflexive address and the round-trip time
    /// (the default).
    Stun(StunArgs),
    /// RFC 5780 NAT behaviour discovery and the classic RFC 3489 NAT type.
    Nat(NatArgs),
    /// A TURN round trip: allocate, permission, channel, echo through a
    /// local peer, release.
    Turn(TurnArgs),
}

/// Options every probe takes.
#[derive(Debug, clap::Args)]
struct Common {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Local IP to send from [default: the source address of the route to
    /// the server].
    #[arg(long, value_name = "IP")]
    local: Option<IpAddr>,
    /// Initial retransmission timeout, milliseconds (RFC 8489 RTO) [default: 500].
    #[arg(long, value_name = "MS")]
    rto: Option<u64>,
    /// Requests per transaction (RFC 8489 Rc) [default: 7; 4 for `nat`].
    #[arg(long, value_name = "N")]
    rc: Option<u32>,
    /// Wait after the last request, in RTOs (RFC 8489 Rm) [default: 16; 4 for `nat`].
    #[arg(long, value_name = "N")]
    rm: Option<u32>,
}

impl Common {
    fn policy(&self, rc: u32, rm: u32) -> Result<RetransmitPolicy, String> {
        let p = RetransmitPolicy {
            rto: Duration::from_millis(self.rto.unwrap_or(500)),
            rc: self.rc.unwrap_or(rc),
            rm: self.rm.unwrap_or(rm),
        };
        if p.rto.is_zero() || p.rc == 0 || p.rc > 16 || p.rm == 0 || p.rm > 64 || p.rto > Duration::from_secs(10) {
            return Err("--rto must be within 1..=10000 ms, --rc within 1..=16, --rm within 1..=64".into());
        }
        Ok(p)
    }
}

#[derive(Debug, clap::Args)]
struct StunArgs {
    /// The server: stun:HOST[:PORT] (port 3478 unless given).
    #[arg(value_name = "URI", required = true)]
    uri: Option<String>,
    /// Ask for the answer from the server's other IP (CHANGE-REQUEST).
    #[arg(long)]
    change_ip: bool,
    /// Ask for the answer from the server's other port (CHANGE-REQUEST).
    #[arg(long)]
    change_port: bool,
    /// Pad the request with this many bytes (PADDING, RFC 5780).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    padding: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct NatArgs {
    /// The server: stun:HOST[:PORT]; it must support RFC 5780 (two IPs).
    #[arg(value_name = "URI")]
    uri: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct TurnArgs {
    /// The server: turn:HOST[:PORT][?transport=udp].
    #[arg(value_name = "URI")]
    uri: String,
    /// Long-term credential user name.
    #[arg(long, short)]
    user: String,
    /// Its password.
    #[arg(long, short = 'w')]
    password: String,
    /// IP of the local echo peer, given to the server as it is; the server
    /// must be allowed to relay to it [default: the local address, given
    /// to the server as the reflexive address it sees, so that it works
    /// from behind a NAT].
    #[arg(long, value_name = "IP")]
    peer_ip: Option<IpAddr>,
    /// ChannelData round trips to time.
    #[arg(long, default_value_t = 3)]
    count: u32,
    #[command(flatten)]
    common: Common,
}

/// Runs `turn-relay probe …`.
pub fn main(args: &ProbeArgs) -> ExitCode {
    let result = match &args.kind {
        None => stun(&args.stun),
        Some(Kind::Stun(a)) => stun(a),
        Some(Kind::Nat(a)) => nat(a),
        Some(Kind::Turn(a)) => turn(a),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("turn-relay probe: {e}");
            ExitCode::from(2)
        }
    }
}

/// `stun:HOST[:PORT]` → (host, port). `schemes` are the accepted schemes;
/// a bare `HOST[:PORT]` is accepted too. Only UDP is spoken.
fn parse_uri<'u>(uri: &'u str, schemes: &[&str]) -> Result<(&'u str, u16), String> {
    let rest = match uri.split_once(':') {
        Some((scheme, rest)) if schemes.contains(&scheme) => rest,
        Some((scheme @ ("stuns" | "turns"), _)) => return Err(format!("{scheme}: (TLS) is not supported: use UDP")),
        Some((scheme @ ("stun" | "turn"), _)) => {
            let want: Vec<String> = schemes.iter().map(|s| format!("{s}:")).collect();
            return Err(format!("expected {}, got {scheme}:", want.join(" or ")));
        }
        _ => uri,
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    match query {
        "" | "transport=udp" => {}
        q => return Err(format!("unsupported {q:?}: only transport=udp is spoken")),
    }
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| format!("unclosed '[' in {uri:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            _ => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in {uri:?}"));
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|&p| p != 0).ok_or_else(|| format!("bad port {p:?} in {uri:?}"))?,
        None => 3478,
    };
    Ok((host, port))
}

/// Resolves the server, preferring the local IP's family when one is given,
/// else IPv4.
fn resolve(uri: &str, schemes: &[&str], local: Option<IpAddr>) -> Result<SocketAddr, String> {
    let (host, port) = parse_uri(uri, schemes)?;
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host:?}: {e}"))?.collect();
    let want_v4 = local.is_none_or(|l| l.is_ipv4());
    addrs
        .iter()
        .find(|a| a.is_ipv4() == want_v4)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} has no address"))
}

/// The local IP that the route to `server` uses (no packet is sent).
fn local_ip_towards(server: SocketAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (IpAddr::from([0u16; 8]), 0).into() };
    let s = UdpSocket::bind(any).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    s.connect(server).map_err(|e| format!("no route to {server}: {e}"))?;
    s.local_addr().map(|a| a.ip()).map_err(|e| e.to_string())
}

fn bind(ip: IpAddr) -> Result<UdpSocket, String> {
    UdpSocket::bind((ip, 0)).map_err(|e| format!("cannot bind {ip}: {e}"))
}

fn seed() -> u64 {
    u64::from_le_bytes(crate::random_bytes::<8>()) ^ u64::from(std::process::id())
}

fn print(json: bool, r: (String, String)) {
    if json {
        println!("{}", r.0);
    } else {
        print!("{}", r.1);
    }
}

fn stun(a: &StunArgs) -> Result<bool, String> {
    let uri = a.uri.as_deref().ok_or("a server URI is needed")?;
    let server = resolve(uri, &["stun", "turn"], a.common.local)?;
    let policy = a.common.policy(7, 16)?;
    let ip = match a.common.local {
        Some(ip) => ip,
        None => local_ip_towards(server)?,
    };
    let sock = bind(ip)?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let change =
        (a.change_ip || a.change_port).then_some(ChangeRequest { change_ip: a.change_ip, change_port: a.change_port });
    let request = BindingRequest { change, padding: a.padding.min(1500), response_port: None };
    let mut p = BindingProbe::new(server, request, policy, Instant::now(), seed());
    driver::drive(&mut p, &[sock], policy.timeout() + Duration::from_secs(1)).map_err(|e| e.to_string())?;
    let outcome = p.outcome().ok_or("the probe did not finish")?;
    let (ok, json, text) = report::stun(uri, server, local, policy, outcome);
    print(a.common.json, (json, text));
    Ok(ok)
}

fn nat(a: &NatArgs) -> Result<bool, String> {
    let server = resolve(&a.uri, &["stun", "turn"], a.common.local)?;
    let policy = a.common.policy(4, 4)?;
    let ip = match a.common.local {
        Some(ip) => ip,
        None => local_ip_towards(server)?,
    };
    let socks = [bind(ip)?, bind(ip)?];
    let local = [socks[0].local_addr().map_err(|e| e.to_string())?, socks[1].local_addr().map_err(|e| e.to_string())?];
    let mut d = NatDiscovery::new(server, local, policy, Instant::now(), seed());
    // At most six tests, each at worst a full transaction plus pacing.
    let limit = (policy.timeout() + PACING) * 6 + Duration::from_secs(1);
    driver::drive(&mut d, &socks, limit).map_err(|e| e.to_string())?;
    let r = d.report();
    let (ok, json, text) = report::nat(&a.uri, &r);
    print(a.common.json, (json, text));
    Ok(ok)
}

fn turn(a: &TurnArgs) -> Result<bool, String> {
    let server = resolve(&a.uri, &["turn"], a.common.local)?;
    let policy = a.common.policy(7, 16)?;
    let ip = match a.common.local {
        Some(ip) => ip,
        None => local_ip_towards(server)?,
    };
    let client = bind(ip)?;
    let peer = bind(a.peer_ip.unwrap_or(ip))?;
    let local = client.local_addr().map_err(|e| e.to_string())?;
    let peer_addr = peer.local_addr().map_err(|e| e.to_string())?;
    if a.count > 100 {
        return Err("--count must be at most 100".into());
    }
    let config = TurnProbeConfig {
        server,
        username: a.user.clone(),
        password: a.password.clone(),
        peer: peer_addr,
        discover_peer: a.peer_ip.is_none(),
        channel: 0x4000,
        echoes: a.count,
        policy,
    };
    let mut p = TurnProbe::new(config, Instant::now(), seed());
    // Allocate twice (401), a stale-nonce retry or two, permission, channel,
    // the echoes, release: each at worst a full transaction.
    let limit = policy.timeout() * (8 + a.count) + Duration::from_secs(1);
    driver::drive(&mut p, &[client, peer], limit).map_err(|e| e.to_string())?;
    let (ok, json, text) = report::turn(&a.uri, server, local, peer_addr, &a.user, p.report());
    print(a.common.json, (json, text));
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let s = &["stun", "turn"][..];
        assert_eq!(parse_uri("stun:example.org", s), Ok(("example.org", 3478)));
        assert_eq!(parse_uri("stun:192.0.2.1:3479", s), Ok(("192.0.2.1", 3479)));
        assert_eq!(parse_uri("turn:[2001:db8::1]:5000?transport=udp", s), Ok(("2001:db8::1", 5000)));
        assert_eq!(parse_uri("stun:[::1]", s), Ok(("::1", 3478)));
        assert_eq!(parse_uri("192.0.2.1:9", s), Ok(("192.0.2.1", 9)));
        assert_eq!(parse_uri("2001:db8::1", s), Ok(("2001:db8::1", 3478)));
        assert!(parse_uri("turn:h?transport=tcp", s).unwrap_err().contains("transport=tcp"));
        assert!(parse_uri("stuns:h", s).unwrap_err().contains("TLS"));
        assert!(parse_uri("stun:h:0", s).is_err());
        assert!(parse_uri("stun:h", &["turn"]).unwrap_err().contains("expected turn:"));
        assert!(parse_uri("stun:", s).is_err());
    }
}
