//! The admin API, served under `/admin/` on the metrics listener (loopback
//! by default) when a bearer token is configured (`[admin]` `token` or
//! `token_file`): list allocations, end one or every one of a user, reload.
//! JSON in and out; `turn-relay admin` ([`client`]) drives it for a person.
//!
//! Routes (docs/operations.md, "Admin API"):
//!
//! - `GET /admin/allocations[?user=U]`
//! - `DELETE /admin/allocations/<relay address>`
//! - `DELETE /admin/users/<user>/allocations`
//! - `POST /admin/reload`
//!
//! Without a token configured every `/admin/` path answers 404 (the API is
//! off). A missing or wrong `Authorization: Bearer` token is answered 401
//! with `WWW-Authenticate: Bearer`, before any routing, and counted
//! (`turn_admin_requests_total{code="401"}`) and held back
//! [`UNAUTHORIZED_DELAY`] while it holds one of the [`ADMIN_SLOTS`]: wrong
//! guesses run at 16 a second at most for the whole server, however many
//! connections bring them. The token is compared in constant time and
//! never logged.
//!
//! Each request runs on its connection's own thread (metrics.rs), never in
//! front of `/healthz`, `/readyz` or `/metrics`; at most [`ADMIN_SLOTS`]
//! admin requests are worked on at once, and one more is answered 503 with
//! `Retry-After` at once.

pub mod client;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, mpsc};
use std::time::Duration;

use relay_core::server::{AllocationInfo, Transport};
use relay_io::RelayHandle;
use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};

/// How long the shards get to answer a list or an end.
const SHARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reload may take in the main loop before the request gives up
/// waiting (the reload itself still finishes there).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin requests worked on at once (listing, ending, reloading, or
/// holding back a refused token's answer); one more is answered 503.
pub const ADMIN_SLOTS: usize = 4;
/// How long the answer to a missing or wrong token is held back, its slot
/// held: at most `ADMIN_SLOTS` guesses per this time, server-wide.
pub const UNAUTHORIZED_DELAY: Duration = Duration::from_millis(250);
/// Shortest token accepted (characters).
const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted (characters); it must fit in the request head.
const MAX_TOKEN_LEN: usize = 512;

/// `[admin]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The bearer token of the admin API (at least 16 visible ASCII
    /// characters); prefer `token_file`.
    pub token: Option<String>,
    /// A file holding the token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
}

/// The admin API's bearer token. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Checks a token's text: visible ASCII (it travels in a header), of a
    /// length that is neither guessable nor absurd.
    pub fn new(text: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!("the token must be at least {MIN_TOKEN_LEN} characters long"));
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(format!("the token must be at most {MAX_TOKEN_LEN} characters long"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be visible ASCII characters, without spaces".into());
        }
        Ok(Token(t.as_bytes().into()))
    }

    /// True when `presented` is the token. Takes the same time whatever
    /// bytes differ (only the length of the longer one shows).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = &self.0;
        let mut diff = mine.len() ^ presented.len();
        for i in 0..mine.len().max(presented.len()) {
            let a = mine.get(i).copied().unwrap_or(0);
            let b = presented.get(i).copied().unwrap_or(0);
            diff |= usize::from(a ^ b);
        }
        std::hint::black_box(diff) == 0
    }
}

/// The admin token of the configuration, if one is set: `admin.token`, or
/// the contents of `admin.token_file`. Errors name the file, line and key
/// (never the token).
pub fn load_token(c: &Config, cli_keys: &[&str]) -> Result<Option<Token>, ConfigError> {
    let a = &c.admin;
    let (key, token) = match (&a.token, &a.token_file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(c.error_at(cli_keys, "admin.token", "set admin.token or admin.token_file, not both"));
        }
        (Some(t), None) => ("admin.token", Token::new(t).map_err(|m| c.error_at(cli_keys, "admin.token", m))?),
        (None, Some(path)) => {
            let key = "admin.token_file";
            let text = std::fs::read_to_string(path)
                .map_err(|e| c.error_at(cli_keys, key, format!("cannot read {}: {e}", path.display())))?;
            (key, Token::new(&text).map_err(|m| c.error_at(cli_keys, key, format!("{}: {m}", path.display())))?)
        }
    };
    if !c.metrics.enabled {
        return Err(c.error_at(cli_keys, key, "the admin API is served on the metrics listener, which is off"));
    }
    Ok(Some(token))
}

/// What the main loop waits for: a signal, or an admin request that only
/// it can carry out.
#[derive(Debug)]
pub enum LoopEvent {
    /// SIGHUP, SIGTERM or SIGINT.
    Signal(i32),
    /// Reload as on SIGHUP and send the outcome back.
    Reload(mpsc::Sender<Result<(), String>>),
}

/// The admin API's state on the metrics listener's thread.
#[derive(Debug)]
pub struct Admin {
    /// The token: replaced by a reload (`admin.token`, `admin.token_file`).
    token: RwLock<Option<Token>>,
    relay: RelayHandle,
    main: mpsc::Sender<LoopEvent>,
    /// Requests being worked on (at most `ADMIN_SLOTS`).
    busy: AtomicUsize,
    /// Where the metrics listener serves it (once bound).
    served: std::sync::OnceLock<SocketAddr>,
}

/// Logs that the API is on at `addr` — with a warning when that is not a
/// loopback address, where the token would cross the network in the clear.
fn log_served(addr: SocketAddr) {
    tracing::info!("admin API on http://{addr}/admin/");
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "the admin API is served on {addr}, not a loopback address: its bearer token travels in \
             plain HTTP; keep the metrics listener on loopback or behind a private network"
        );
    }
}

/// One of the `ADMIN_SLOTS`, given back when dropped.
struct AdminSlot<'a>(&'a AtomicUsize);

impl Drop for AdminSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer to an admin request.
#[derive(Debug)]
pub struct Response {
    status: u16,
    body: String,
    allow: Option<&'static str>,
    retry_after: Option<u64>,
}

impl Response {
    fn json<T: Serialize>(status: u16, body: &T) -> Response {
        let mut body = serde_json::to_string_pretty(body).unwrap_or_else(|_| "{}".into());
        body.push('\n');
        Response { status, body, allow: None, retry_after: None }
    }

    fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &ErrorReply { error: message.into() })
    }

    /// Writes the whole HTTP/1.1 response (the connection then closes).
    pub fn write_to(&self, s: &mut impl Write) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if self.status == 401 {
            head.push_str("WWW-Authenticate: Bearer realm=\"turn-relay admin\"\r\n");
        }
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if let Some(s) = self.retry_after {
            head.push_str(&format!("Retry-After: {s}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(self.body.as_bytes())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// One way of an allocation's traffic, as the API shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// Packets relayed.
    pub packets: u64,
    /// Payload bytes relayed.
    pub bytes: u64,
}

/// One allocation, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationView {
    /// Its relay address: what `DELETE /admin/allocations/<id>` takes.
    pub id: SocketAddr,
    /// The user it authenticated as.
    pub user: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// The client's address as the server sees it.
    pub client: SocketAddr,
    /// The server address the client reached.
    pub server: SocketAddr,
    /// Every relay address it holds.
    pub relays: Vec<SocketAddr>,
    /// Seconds since the Allocate.
    pub age_s: u64,
    /// Seconds until it expires unless refreshed.
    pub lifetime_left_s: u64,
    /// Live permissions.
    pub permissions: usize,
    /// Live channels.
    pub channels: usize,
    /// Client to peers.
    pub to_peer: FlowView,
    /// Peers to client.
    pub to_client: FlowView,
}

impl From<&AllocationInfo> for AllocationView {
    fn from(a: &AllocationInfo) -> Self {
        let t = a.traffic;
        AllocationView {
            id: a.id,
            user: a.username.clone(),
            transport: match a.transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
                Transport::Tls => "tls",
            }
            .into(),
            client: a.client,
            server: a.server,
            relays: a.relays.clone(),
            age_s: a.age.as_secs(),
            lifetime_left_s: a.lifetime_left.as_secs(),
            permissions: a.permissions,
            channels: a.channels,
            to_peer: FlowView { packets: t.to_peer.packets, bytes: t.to_peer.bytes },
            to_client: FlowView { packets: t.to_client.packets, bytes: t.to_client.bytes },
        }
    }
}

/// `GET /admin/allocations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllocationsReply {
    /// Shards of the server.
    pub shards: usize,
    /// Shards that answered in time (the list lacks the others').
    pub shards_answered: usize,
    /// The allocations, by user then id.
    pub allocations: Vec<AllocationView>,
}

/// `DELETE /admin/allocations/<id>` and `DELETE /admin/users/<user>/allocations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndReply {
    /// Allocations ended.
    pub ended: usize,
    /// Shards of the server.
    pub shards: usize,
    /// Shards that answered in time.
    pub shards_answered: usize,
}

/// `POST /admin/reload`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Always true in a 200 answer.
    pub reloaded: bool,
}

/// Any error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: String,
}

impl Admin {
    /// The admin API over `relay`; `main` reaches the main loop (for a
    /// reload). Without a token it is off: every `/admin/` path is 404.
    pub fn new(token: Option<Token>, relay: RelayHandle, main: mpsc::Sender<LoopEvent>) -> Admin {
        Admin { token: RwLock::new(token), relay, main, busy: AtomicUsize::new(0), served: Default::default() }
    }

    /// The token now.
    fn token(&self) -> Option<Token> {
        self.token.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the token (a reload read the configuration again): the
    /// next request is checked against the new one; `None` turns the API
    /// off. Logs what changed, never the token.
    pub fn set_token(&self, token: Option<Token>) {
        let mut held = self.token.write().unwrap_or_else(PoisonError::into_inner);
        let same = match (&*held, &token) {
            (Some(a), Some(b)) => a.matches(&b.0),
            (a, b) => a.is_none() && b.is_none(),
        };
        if same {
            return;
        }
        match (held.is_some(), &token) {
            (false, Some(_)) => {
                if let Some(addr) = self.served.get() {
                    log_served(*addr);
                }
            }
            (true, Some(_)) => tracing::info!("admin API token replaced"),
            (true, None) => tracing::info!("admin API off: no admin.token or admin.token_file any more"),
            (false, None) => {}
        }
        *held = token;
    }

    /// Logs where the API is served now that the listener is bound at
    /// `addr` — with a warning when that is not a loopback address, where
    /// the token would cross the network in the clear.
    pub fn announce(&self, addr: SocketAddr) {
        let _ = self.served.set(addr);
        if self.token().is_none() {
            tracing::debug!("admin API off: no admin.token or admin.token_file");
            return;
        }
        log_served(addr);
    }

    /// Answers `method` on `target` (path and query) when the path is the
    /// admin API's; `head` is the whole request head, for the
    /// `Authorization` header. `None`: not an admin path.
    pub fn answer(&self, method: &str, target: &str, head: &str) -> Option<Response> {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != "/admin" && !path.starts_with("/admin/") {
            return None;
        }
        // Read once: a reload that replaces it meanwhile applies to the next
        // request, never to half of this one.
        let token = self.token();
        let (action, r) = if token.is_none() {
            // Off: nothing to work on, nothing to bound.
            self.route(token.as_ref(), method, path, query, head)
        } else if let Some(_slot) = self.slot() {
            self.route(token.as_ref(), method, path, query, head)
        } else {
            let mut r = Response::error(
                503,
                format!("the admin API is busy ({ADMIN_SLOTS} requests in progress): retry shortly"),
            );
            r.retry_after = Some(1);
            ("busy", r)
        };
        metrics::counter!("turn_admin_requests_total", "action" => action, "code" => r.status.to_string()).increment(1);
        Some(r)
    }

    /// One of the `ADMIN_SLOTS`, if one is free.
    fn slot(&self) -> Option<AdminSlot<'_>> {
        if self.busy.fetch_add(1, Ordering::AcqRel) >= ADMIN_SLOTS {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(AdminSlot(&self.busy))
    }

    fn route(
        &self,
        token: Option<&Token>,
        method: &str,
        path: &str,
        query: &str,
        head: &str,
    ) -> (&'static str, Response) {
        let Some(token) = token else {
            return (
                "off",
                Response::error(404, "the admin API is off: no admin.token or admin.token_file configured"),
            );
        };
        if !bearer(head).is_some_and(|t| token.matches(t.as_bytes())) {
            tracing::debug!("admin: request without the right bearer token refused");
            // Held back with its slot held: guessing is slow server-wide.
            std::thread::sleep(UNAUTHORIZED_DELAY);
            return ("unauthorized", Response::error(401, "a valid bearer token is required"));
        }
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        let (action, allow) = match segments.as_slice() {
            ["allocations"] => ("list", "GET"),
            ["allocations", _] => ("end", "DELETE"),
            ["users", _, "allocations"] => ("end_user", "DELETE"),
            ["reload"] => ("reload", "POST"),
            _ => return ("unknown", Response::error(404, format!("no admin route {path}"))),
        };
        if method != allow {
            let mut r = Response::error(405, format!("{path} takes {allow}"));
            r.allow = Some(allow);
            return (action, r);
        }
        let r = match segments.as_slice() {
            ["allocations"] => self.list(query),
            ["allocations", id] => self.end_one(id),
            ["users", user, _] => self.end_user(user),
            _ => self.reload(),
        };
        (action, r)
    }

    fn list(&self, query: &str) -> Response {
        let mut user = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (k, percent_decode(v, true)) {
                ("user", Some(v)) => user = Some(v),
                ("user", None) => return Response::error(400, "user: bad percent-encoding"),
                _ => return Response::error(400, "the only query parameter is user"),
            }
        }
        let (list, answered) = self.relay.allocations(user.as_deref(), SHARD_TIMEOUT);
        Response::json(
            200,
            &AllocationsReply {
                shards: self.relay.shard_count(),
                shards_answered: answered,
                allocations: list.iter().map(AllocationView::from).collect(),
            },
        )
    }

    fn end_one(&self, id: &str) -> Response {
        let Some(addr) = percent_decode(id, false).and_then(|s| s.parse::<SocketAddr>().ok()) else {
            return Response::error(
                400,
                "an allocation id is its relay address, such as 192.0.2.1:49152 or [2001:db8::1]:49152",
            );
        };
        let (ended, answered) = self.relay.end_allocation(addr, SHARD_TIMEOUT);
        let shards = self.relay.shard_count();
        if ended == 0 {
            return if answered < shards {
                Response::error(504, format!("{} of {shards} shards did not answer", shards - answered))
            } else {
                Response::error(404, format!("no allocation holds relay address {addr}"))
            };
        }
        tracing::info!(relay = %addr, "admin: allocation ended");
        Response::json(200, &EndReply { ended, shards, shards_answered: answered })
    }

    fn end_user(&self, user: &str) -> Response {
        let Some(user) = percent_decode(user, false).filter(|u| !u.is_empty()) else {
            return Response::error(400, "bad user name in the path");
        };
        let (ended, answered) = self.relay.end_user(&user, SHARD_TIMEOUT);
        let shards = self.relay.shard_count();
        tracing::info!(user = %user, ended, "admin: allocations of a user ended");
        Response::json(200, &EndReply { ended, shards, shards_answered: answered })
    }

    fn reload(&self) -> Response {
        let (tx, rx) = mpsc::channel();
        if self.main.send(LoopEvent::Reload(tx)).is_err() {
            return Response::error(503, "the server is stopping");
        }
        match rx.recv_timeout(RELOAD_TIMEOUT) {
            Ok(Ok(())) => Response::json(200, &ReloadReply { reloaded: true }),
            Ok(Err(e)) => Response::error(500, format!("reload failed, the old settings stay: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Response::error(504, format!("the reload did not finish within {} s", RELOAD_TIMEOUT.as_secs()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Response::error(503, "the server is stopping"),
        }
    }
}

/// The bearer token of the request head's `Authorization` header.
fn bearer(head: &str) -> Option<&str> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return None;
        }
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// Decodes `%XX` escapes (and `+` as a space in a query); `None` for a bad
/// escape or text that is not UTF-8.
fn percent_decode(s: &str, query: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                // Exactly two hex digits (from_str_radix alone would take
                // a sign: "%+f").
                let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_are_checked() {
        let t = Token::new("  0123456789abcdef\n").unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b"0123456789abcdef0"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(Token::new("short").unwrap_err().contains("at least 16"));
        assert!(Token::new("0123456789 abcdef").unwrap_err().contains("visible ASCII"));
        assert!(Token::new(&"x".repeat(513)).is_err());
    }

    #[test]
    fn bearer_header_and_percent_decoding() {
        let head = "GET /admin/allocations HTTP/1.1\r\nHost: x\r\nauthorization:  bearer  abc \r\n\r\n";
        assert_eq!(bearer(head), Some("abc"));
        assert_eq!(bearer("GET / HTTP/1.1\r\nAuthorization: Basic abc\r\n"), None);
        // A header in the request line's place is not a header.
        assert_eq!(bearer("Authorization: Bearer abc\r\n"), None);
        assert_eq!(percent_decode("%5B%3A%3A1%5D%3A5000", false).as_deref(), Some("[::1]:5000"));
        assert_eq!(percent_decode("a+b%20c", true).as_deref(), Some("a b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        // Two hex digits, no sign.
        assert_eq!(percent_decode("%+f", false), None);
        assert_eq!(percent_decode("%-1", false), None);
        assert_eq!(percent_decode("a%+fb", true), None);
        assert_eq!(percent_decode("%2b%2B", false).as_deref(), Some("++"));
    }
}
