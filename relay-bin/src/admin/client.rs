//! `turn-relay admin …`: the admin API for a person. A tiny blocking
//! HTTP/1.1 client (std's `TcpStream`, `Connection: close`), the token from
//! a file or `TURN_RELAY_ADMIN_TOKEN` (never from the command line, where
//! other users of the host could read it), and tables for the answers.
//!
//! Exit codes: 0 done; 1 the server refused or failed (no such
//! allocation, admin API off, a reload that failed); 2 bad usage or no
//! token; 3 the server could not be reached or answered something that is
//! not HTTP; 4 the token was refused (401).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{AllocationView, AllocationsReply, EndReply, ErrorReply};

/// The environment variable that may hold the token.
pub const TOKEN_ENV: &str = "TURN_RELAY_ADMIN_TOKEN";
/// Largest answer read (a list of many allocations is large, not this).
const MAX_RESPONSE: usize = 256 << 20;

/// `turn-relay admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The server's metrics listener, where the admin API is served.
    #[arg(long, default_value = "http://127.0.0.1:9641")]
    url: String,
    /// A file holding the admin token; without it, the environment
    /// variable TURN_RELAY_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Seconds to wait for the server's answer.
    #[arg(long, default_value_t = 15)]
    timeout: u64,
    /// What to do.
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List the allocations: id (relay address), user, client, age,
    /// lifetime left, permissions, channels, traffic each way.
    Allocations {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// The server's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End one allocation, named by its id (its relay address).
    End {
        /// The id, as `allocations` lists it.
        id: String,
    },
    /// End every allocation of a user.
    EndUser {
        /// The user.
        user: String,
    },
    /// Reload credentials and certificates, as SIGHUP does.
    Reload,
}

/// A failure and its exit code.
struct Failure(u8, String);

/// Runs the subcommand.
pub fn main(args: &AdminArgs) -> ExitCode {
    match run(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            eprintln!("turn-relay admin: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &AdminArgs) -> Result<String, Failure> {
    let url = Url::parse(&args.url).map_err(|m| Failure(2, format!("--url {}: {m}", args.url)))?;
    let token = token(args)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let call = |method: &str, path: &str| request(&url, method, path, &token, timeout);
    match &args.action {
        Action::Allocations { user, json } => {
            let path = match user {
                Some(u) => format!("/admin/allocations?user={}", encode(u)),
                None => "/admin/allocations".into(),
            };
            let body = call("GET", &path)?;
            if *json {
                return Ok(body);
            }
            let reply: AllocationsReply = parse(&body)?;
            Ok(table(&reply))
        }
        Action::End { id } => {
            let reply: EndReply = parse(&call("DELETE", &format!("/admin/allocations/{}", encode(id)))?)?;
            Ok(format!("ended {} allocation{}\n", reply.ended, plural(reply.ended)))
        }
        Action::EndUser { user } => {
            let reply: EndReply = parse(&call("DELETE", &format!("/admin/users/{}/allocations", encode(user)))?)?;
            let missing = reply.shards - reply.shards_answered.min(reply.shards);
            let note = if missing > 0 { format!(" ({missing} shards did not answer)") } else { String::new() };
            Ok(format!("ended {} allocation{} of {user}{note}\n", reply.ended, plural(reply.ended)))
        }
        Action::Reload => {
            call("POST", "/admin/reload")?;
            Ok("reloaded\n".into())
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The token: the file's contents, else the environment's.
fn token(args: &AdminArgs) -> Result<String, Failure> {
    let text = match &args.token_file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| Failure(2, format!("--token-file {}: {e}", path.display())))?
        }
        None => std::env::var(TOKEN_ENV)
            .map_err(|_| Failure(2, format!("no token: give --token-file FILE or set {TOKEN_ENV}")))?,
    };
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure(2, "the token is empty or not visible ASCII".into()));
    }
    Ok(t.to_owned())
}

/// `http://HOST[:PORT][/PREFIX]`.
#[derive(Debug, PartialEq, Eq)]
struct Url {
    host: String,
    port: u16,
    prefix: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url, String> {
        if s.starts_with("https://") {
            return Err("https is not served: the admin API is plain HTTP on the metrics listener \
                 (keep it on loopback, or reach it through an SSH tunnel or a TLS proxy)"
                .into());
        }
        let rest = s.strip_prefix("http://").ok_or("expected http://HOST:PORT")?;
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("/{prefix}") };
        Ok(Url { host: host.into(), port, prefix })
    }

    /// The Host header's value.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Sends one request; the body of a 2xx answer, or the failure.
fn request(url: &Url, method: &str, path: &str, token: &str, timeout: Duration) -> Result<String, Failure> {
    let unreachable = |e: String| Failure(3, format!("cannot reach {}: {e}", url.authority()));
    let addrs: Vec<_> =
        (url.host.as_str(), url.port).to_socket_addrs().map_err(|e| unreachable(e.to_string()))?.collect();
    let mut last = String::from("no address");
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout.min(Duration::from_secs(5))) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut s = stream.ok_or_else(|| unreachable(last))?;
    let deadline = Instant::now() + timeout;
    s.set_write_timeout(Some(timeout)).map_err(|e| unreachable(e.to_string()))?;
    let head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        url.prefix,
        url.authority()
    );
    s.write_all(head.as_bytes()).map_err(|e| unreachable(e.to_string()))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unreachable(format!("no complete answer within {} s", timeout.as_secs())));
        }
        s.set_read_timeout(Some(left)).map_err(|e| unreachable(e.to_string()))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if raw.len() + n > MAX_RESPONSE => return Err(unreachable("the answer is too large".into())),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreachable(e.to_string())),
        }
    }
    let (status, body) = parse_response(&raw).map_err(unreachable)?;
    match status {
        200..=299 => Ok(body),
        _ => {
            let why = serde_json::from_str::<ErrorReply>(&body).map_or_else(|_| body.trim().to_owned(), |e| e.error);
            let code = if status == 401 { 4 } else { 1 };
            let hint = if status == 401 { " (check the token)" } else { "" };
            Err(Failure(code, format!("{method} {path}: {status}: {why}{hint}")))
        }
    }
}

/// The status and body of an HTTP/1.1 answer read to its end.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("not an HTTP answer (no end of header)")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "not an HTTP answer (header not text)")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
        _ => return Err(format!("not an HTTP answer: {:?}", status_line.chars().take(60).collect::<String>())),
    };
    let mut body = &raw[end + 4..];
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            let n: usize = value.trim().parse().map_err(|_| "bad Content-Length")?;
            if n > body.len() {
                return Err("the answer was cut short".into());
            }
            body = &body[..n];
        }
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|e| Failure(3, format!("unexpected answer from the server: {e}")))
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The allocations as an aligned table, with human units.
fn table(reply: &AllocationsReply) -> String {
    let headers = [
        "ID",
        "USER",
        "TRANSPORT",
        "CLIENT",
        "AGE",
        "LEFT",
        "PERMS",
        "CHANS",
        "PKTS>PEER",
        "BYTES>PEER",
        "PKTS>CLIENT",
        "BYTES>CLIENT",
    ];
    let rows: Vec<[String; 12]> = reply.allocations.iter().map(row).collect();
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            // Names and addresses to the left, times and numbers to the right.
            if i < 4 {
                l.push_str(&format!("{cell:<w$}"));
            } else {
                l.push_str(&format!("{cell:>w$}"));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&headers);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    let n = reply.allocations.len();
    out.push_str(&format!("{n} allocation{}", plural(n)));
    if reply.shards_answered < reply.shards {
        out.push_str(&format!(
            " ({} of {} shards did not answer: the list is incomplete)",
            reply.shards - reply.shards_answered,
            reply.shards
        ));
    }
    out.push('\n');
    out
}

fn row(a: &AllocationView) -> [String; 12] {
    [
        a.id.to_string(),
        a.user.clone(),
        a.transport.clone(),
        a.client.to_string(),
        duration(a.age_s),
        duration(a.lifetime_left_s),
        a.permissions.to_string(),
        a.channels.to_string(),
        count(a.to_peer.packets),
        bytes(a.to_peer.bytes),
        count(a.to_client.packets),
        bytes(a.to_client.bytes),
    ]
}

/// `42s`, `9m48s`, `1h02m`, `3d04h`.
fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `999`, `1.2k`, `3.4M`, `5.6G`.
fn count(n: u64) -> String {
    scaled(n, 1000.0, &["", "k", "M", "G", "T"])
}

/// `80 B`, `1.2 KiB`, `3.4 MiB`.
fn bytes(n: u64) -> String {
    scaled(n, 1024.0, &[" B", " KiB", " MiB", " GiB", " TiB"])
}

fn scaled(n: u64, step: f64, units: &[&str]) -> String {
    if (n as f64) < step {
        return format!("{n}{}", units[0]);
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= step && i + 1 < units.len() {
        v /= step;
        i += 1;
    }
    if v < 10.0 { format!("{v:.1}{}", units[i]) } else { format!("{v:.0}{}", units[i]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:9641").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.prefix.as_str()), ("127.0.0.1", 9641, ""));
        let u = Url::parse("http://[::1]:9641/relay/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.prefix.as_str()), ("::1", 9641, "/relay"));
        assert_eq!(u.authority(), "[::1]:9641");
        assert_eq!(Url::parse("http://localhost").unwrap().port, 80);
        assert!(Url::parse("https://x:1").unwrap_err().contains("https"));
        assert!(Url::parse("x:1").is_err());
        assert!(Url::parse("http://x:port").unwrap_err().contains("bad port"));
    }

    #[test]
    fn human_units() {
        assert_eq!(
            (duration(42), duration(588), duration(3720), duration(3 * 86400 + 4 * 3600)),
            ("42s".into(), "9m48s".into(), "1h02m".into(), "3d04h".into())
        );
        assert_eq!((count(999), count(1234), count(45_600_000)), ("999".into(), "1.2k".into(), "46M".into()));
        assert_eq!((bytes(80), bytes(1536), bytes(5 << 20)), ("80 B".into(), "1.5 KiB".into(), "5.0 MiB".into()));
        assert_eq!(encode("[::1]:5000"), "%5B%3A%3A1%5D%3A5000");
        assert_eq!(encode("bob"), "bob");
    }

    #[test]
    fn responses() {
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello-extra";
        assert_eq!(parse_response(r).unwrap(), (404, "hello".into()));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err().contains("not an HTTP answer"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").unwrap_err().contains("cut"));
    }
}
