//! Users, REST secrets and peer lists read from a database in coturn's
//! schemas (`auth.database`): PostgreSQL, Redis or SQLite.
//!
//! Nothing here runs on the packet path. One refresher thread reads the
//! realm's rows with a blocking client, builds [`Credentials`] and peer
//! lists from them, and hands them to the shards through the
//! [`Composer`] only when something changed: the shards hold what they
//! need in memory and never wait for the database. It reads again on a
//! schedule (`auth.database_refresh`) and, where the engine says so, on
//! change: PostgreSQL `LISTEN`/`NOTIFY` (the trigger an operator adds is in
//! docs/operations.md), Redis keyspace notifications, SQLite's
//! `data_version` (polled, a cheap read of the file header).
//!
//! While the database cannot be reached the relay serves on what it last
//! read: the outage is logged once (not per retry), shown by the
//! `turn_user_database_*` metrics and as the `/readyz` detail `database`,
//! and the refresher reconnects with backoff by itself. The database URL's
//! password is never logged ([`redact`]).

mod postgres;
mod redis;
mod sqlite;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use relay_core::server::auth::Credentials;
use relay_core::wire::integrity::{Key, PasswordAlgorithm};
use relay_io::{PeerLists, RelayHandle};

use crate::config::{Config, ConfigError};
use crate::metrics::Health;

/// The `/readyz` detail line this module owns.
const DETAIL: &str = "database";
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the refresher lets a burst of changes settle before reading.
const SETTLE: Duration = Duration::from_millis(200);
/// The PostgreSQL channel the refresher listens on.
pub const PG_CHANNEL: &str = "turn_relay_userdb";

/// A database named by `auth.database`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgresql://…` or `postgres://…`, as libpq takes it.
    Postgres(String),
    /// `redis://[user:password@]host[:port][/db]`.
    Redis(String),
    /// `sqlite:///absolute/path`.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Checks the URL's form without connecting: a known scheme, a host for
    /// PostgreSQL and Redis, an absolute path for SQLite. Errors never
    /// repeat the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("expected postgresql://…, redis://… or sqlite:///path".into());
        };
        match scheme.to_ascii_lowercase().as_str() {
            "postgresql" | "postgres" => {
                let config: ::postgres::Config =
                    url.parse().map_err(|e| format!("not a PostgreSQL URL: {}", postgres::describe(&e)))?;
                if config.get_hosts().is_empty() {
                    return Err("the PostgreSQL URL names no host (postgresql://user@host:port/dbname)".into());
                }
                if matches!(config.get_ssl_mode(), ::postgres::config::SslMode::Require) {
                    return Err("sslmode=require: TLS to PostgreSQL is not supported; reach the database over a \
                                unix socket (host=/run/postgresql) or a trusted network"
                        .into());
                }
                Ok(DatabaseUrl::Postgres(url.to_owned()))
            }
            "redis" => {
                if rest.split(['/', '?']).next().unwrap_or("").rsplit('@').next().unwrap_or("").is_empty() {
                    return Err("the Redis URL names no host (redis://host:port/db)".into());
                }
                url.parse::<::redis::ConnectionInfo>()
                    .map_err(|_| "not a Redis URL (redis://[user:password@]host[:port][/db])".to_owned())?;
                Ok(DatabaseUrl::Redis(url.to_owned()))
            }
            "rediss" => Err("rediss: TLS to Redis is not supported; use redis:// over a trusted network".into()),
            "sqlite" => {
                let path = rest.split('?').next().unwrap_or("");
                if !path.starts_with('/') || path.len() < 2 {
                    return Err("expected sqlite:///absolute/path/to/turndb (three slashes)".into());
                }
                Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
            }
            other => Err(format!("unknown scheme {other:?}: expected postgresql, redis or sqlite")),
        }
    }

    /// The engine's name, as metrics and logs show it.
    pub fn engine(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgresql",
            DatabaseUrl::Redis(_) => "redis",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }

    /// The URL with any password replaced by `***`, fit for a log.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Postgres(u) | DatabaseUrl::Redis(u) => redact(u),
            DatabaseUrl::Sqlite(p) => format!("sqlite://{}", p.display()),
        }
    }
}

/// Resolves `auth.database_file`: the URL is read from that file
/// (surrounding whitespace ignored) into `auth.database`, so that its
/// password stays off the command line and out of the configuration file.
/// Errors name the key and the file, never the URL.
pub fn load_database_file(c: &mut Config, cli_keys: &[&str]) -> Result<(), ConfigError> {
    let Some(path) = c.auth.database_file.clone() else { return Ok(()) };
    let key = "auth.database_file";
    if c.auth.database.is_some() {
        return Err(c.error_at(cli_keys, key, "set auth.database or auth.database_file, not both"));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| c.error_at(cli_keys, key, format!("cannot read {}: {e}", path.display())))?;
    let url = text.trim();
    DatabaseUrl::parse(url).map_err(|m| c.error_at(cli_keys, key, format!("{}: {m}", path.display())))?;
    c.auth.database = Some(url.to_owned());
    Ok(())
}

/// Refuses a reload from the running configuration `old` to `new` that
/// changes what the user database was started with: `auth.database` (its
/// URL, whether given directly or by `auth.database_file`),
/// `auth.database_refresh`, and `server.realm` while a database is
/// configured (the refresher reads that realm's rows and derives its keys
/// with it). Those need a restart; the error says which key changed, never
/// the URL.
pub fn check_reload(old: &Config, new: &Config) -> Result<(), String> {
    let restart = |key: &str| Err(format!("{key} changed: that needs a restart (the old settings stay)"));
    if old.auth.database != new.auth.database {
        return restart("auth.database");
    }
    if old.auth.database.is_some() && old.auth.database_refresh != new.auth.database_refresh {
        return restart("auth.database_refresh");
    }
    if old.auth.database.is_some() && old.server.realm != new.server.realm {
        return restart("server.realm (with auth.database set)");
    }
    Ok(())
}

/// `url` with the password of its user part (`user:password@`) and any
/// `password=` query parameter replaced by `***`.
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None => format!("{user}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// What one read of the realm's rows gave, as stored (sorted, so that two
/// reads compare equal when nothing changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `turnusers_lt` / `…/user/<name>/key`: name → hex key.
    pub users: BTreeMap<String, String>,
    /// `turn_secret` / `…/secret`.
    pub secrets: Vec<String>,
    /// `allowed_peer_ip` / `…/allowed-peer-ip`.
    pub allowed: Vec<String>,
    /// `denied_peer_ip` / `…/denied-peer-ip`.
    pub denied: Vec<String>,
}

impl Snapshot {
    /// Sorts and deduplicates the lists (the engines return sets in any
    /// order). Peer ranges are trimmed; REST secrets are kept as stored,
    /// blanks included, as coturn uses them (an empty one is dropped: anyone
    /// could sign with it).
    pub fn normalize(mut self) -> Snapshot {
        for list in [&mut self.allowed, &mut self.denied] {
            for v in list.iter_mut() {
                *v = v.trim().to_owned();
            }
        }
        for list in [&mut self.secrets, &mut self.allowed, &mut self.denied] {
            list.retain(|v| !v.is_empty());
            list.sort();
            list.dedup();
        }
        self
    }
}

/// The REST secrets of `now` (sorted) in the order the shards try them:
/// the ones `before` (the previous order) lacks first, then the others in
/// `before`'s order. coturn's schemas keep no time with a secret, so the
/// newest is the one this process saw appear last: a secret a rotation adds
/// is tried even when more are stored than a request is checked against
/// ([`relay_core::server::auth::MAX_REST_SECRETS`]).
pub fn newest_first(before: &[String], now: &[String]) -> Vec<String> {
    let old: std::collections::HashSet<&str> = before.iter().map(String::as_str).collect();
    let current: std::collections::HashSet<&str> = now.iter().map(String::as_str).collect();
    let added = now.iter().filter(|s| !old.contains(s.as_str()));
    let kept = before.iter().filter(|s| current.contains(s.as_str()));
    added.chain(kept).cloned().collect()
}

/// A row the refresher skipped, and why (never the key or secret itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// `turnusers_lt`, `allowed_peer_ip`, …
    pub table: &'static str,
    /// The user name or the range text.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// The long-term key coturn keeps for a user: 32 hex digits are the MD5
/// key (what `turnadmin -a` writes), 64 the SHA-256 key of
/// `user:realm:password` (coturn's SHA-256 realms).
pub fn parse_hmackey(hex: &str) -> Result<Key, String> {
    let hex = hex.trim();
    let algorithm = match hex.len() {
        32 => PasswordAlgorithm::Md5,
        64 => PasswordAlgorithm::Sha256,
        n => return Err(format!("hmackey has {n} characters: expected 32 (MD5) or 64 (SHA-256) hex digits")),
    };
    Key::from_hex(algorithm, hex).map_err(|e| format!("hmackey: {e}"))
}

/// A coturn peer range as networks: `ADDR`, `ADDR1-ADDR2` (inclusive, one
/// family; the smallest set of prefixes that covers exactly the range), or
/// a prefix `ADDR/LEN`, which coturn does not write but an operator may.
pub fn parse_range(text: &str) -> Result<Vec<IpNet>, String> {
    let text = text.trim();
    if text.contains('/') {
        return text.parse::<IpNet>().map(|n| vec![n.trunc()]).map_err(|_| format!("bad prefix {text:?}"));
    }
    let ip = |s: &str| s.trim().parse::<IpAddr>().map_err(|_| format!("bad address {:?}", s.trim()));
    match text.split_once('-') {
        None => Ok(vec![IpNet::from(ip(text)?)]),
        Some((lo, hi)) => match (ip(lo)?, ip(hi)?) {
            (IpAddr::V4(lo), IpAddr::V4(hi)) if lo <= hi => Ok(Ipv4Subnets::new(lo, hi, 0).map(IpNet::V4).collect()),
            (IpAddr::V6(lo), IpAddr::V6(hi)) if lo <= hi => Ok(Ipv6Subnets::new(lo, hi, 0).map(IpNet::V6).collect()),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Err(format!("range {text:?} ends before it starts"))
            }
            _ => Err(format!("range {text:?} mixes IPv4 and IPv6")),
        },
    }
}

/// What a snapshot gives the shards.
#[derive(Debug)]
pub struct Built {
    /// The database's users and secrets, for the realm.
    pub credentials: Credentials,
    /// The database's peer ranges as networks.
    pub peers: PeerLists,
    /// Rows skipped.
    pub bad: Vec<BadRow>,
}

/// Builds credentials and peer lists for `realm` from `snap`; a bad row
/// is skipped (and reported), never the whole read.
#[cfg(test)]
pub fn build(realm: &str, snap: &Snapshot) -> Built {
    build_ordered(realm, snap, &snap.secrets)
}

/// [`build`] with the REST secrets in the order given ([`newest_first`]).
fn build_ordered(realm: &str, snap: &Snapshot, secrets: &[String]) -> Built {
    let mut credentials = Credentials::new(realm);
    let mut bad = Vec::new();
    for (name, hex) in &snap.users {
        match parse_hmackey(hex) {
            Ok(key) => credentials.add_user_key(name, key),
            Err(message) => bad.push(BadRow { table: "turnusers_lt", name: name.clone(), message }),
        }
    }
    for secret in secrets {
        credentials.add_rest_secret(secret.as_bytes());
    }
    let mut peers = PeerLists::default();
    for (table, list, out) in
        [("allowed_peer_ip", &snap.allowed, &mut peers.allow), ("denied_peer_ip", &snap.denied, &mut peers.deny)]
    {
        for range in list {
            match parse_range(range) {
                Ok(nets) => out.extend(nets),
                Err(message) => bad.push(BadRow { table, name: range.clone(), message }),
            }
        }
    }
    Built { credentials, peers, bad }
}

/// Joins the configured credentials and peer lists with the database's
/// and hands the result to the shards, only when it changed. SIGHUP's
/// reload replaces the configured part ([`Composer::set_configured`]); the
/// refresher replaces the database's part.
pub struct Composer {
    relay: RelayHandle,
    inner: Mutex<Parts>,
    /// REST secrets beyond those a request is checked against, as last
    /// handed to the shards (`turn_user_database_secrets_untried`).
    untried: Arc<AtomicU64>,
}

struct Parts {
    configured: Credentials,
    database: Option<Credentials>,
    configured_peers: PeerLists,
    database_peers: PeerLists,
}

impl Composer {
    /// A composer for the shards behind `relay`, which already serve
    /// `configured` and `configured_peers`.
    pub fn new(relay: RelayHandle, configured: Credentials, configured_peers: PeerLists) -> Composer {
        let parts = Parts { configured, database: None, configured_peers, database_peers: PeerLists::default() };
        Composer { relay, inner: Mutex::new(parts), untried: Arc::default() }
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, Parts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_credentials(&self, p: &Parts) {
        let all = match &p.database {
            Some(db) => p.configured.layered(db),
            None => p.configured.clone(),
        };
        let untried = all.rest_secrets_untried() as u64;
        if self.untried.swap(untried, Ordering::Relaxed) != untried && untried > 0 {
            tracing::warn!(
                secrets = all.rest_secret_count(),
                untried,
                tried = relay_core::server::auth::MAX_REST_SECRETS,
                "more REST secrets than a request is checked against: the configured ones and then the \
                 database's newest are tried, {untried} never; delete retired secrets (turnadmin -X)"
            );
        }
        self.relay.set_credentials(&all);
    }

    fn push_peers(&self, p: &Parts) {
        let mut lists = p.configured_peers.clone();
        lists.allow.extend(&p.database_peers.allow);
        lists.deny.extend(&p.database_peers.deny);
        self.relay.set_peer_lists(&Arc::new(lists));
    }

    /// Replaces the configured credentials (a reload); the database's part
    /// stays.
    pub fn set_configured(&self, credentials: Credentials) {
        let mut p = self.parts();
        p.configured = credentials;
        self.push_credentials(&p);
    }

    /// Replaces the database's credentials.
    pub fn set_database_credentials(&self, credentials: Credentials) {
        let mut p = self.parts();
        p.database = Some(credentials);
        self.push_credentials(&p);
    }

    /// Replaces the database's peer lists.
    pub fn set_database_peers(&self, peers: PeerLists) {
        let mut p = self.parts();
        if p.database_peers != peers {
            p.database_peers = peers;
            self.push_peers(&p);
        }
    }
}

/// The refresher's state, for metrics and tests.
#[derive(Debug, Default)]
pub struct Status {
    up: AtomicBool,
    users: AtomicU64,
    secrets: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    bad_rows: AtomicU64,
    refreshes: AtomicU64,
    failures: AtomicU64,
    pushes: AtomicU64,
    /// Shared with the [`Composer`].
    secrets_untried: Arc<AtomicU64>,
    last_success: Mutex<Option<Instant>>,
}

/// Publishes the refresher's metrics (called once a second with the rest).
pub fn publish(engine: &'static str, s: &Status) {
    use metrics::{counter, gauge};
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge!("turn_user_database_info", "engine" => engine).set(1.0);
    gauge!("turn_user_database_up").set(if s.up.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
    gauge!("turn_user_database_users").set(load(&s.users) as f64);
    gauge!("turn_user_database_secrets").set(load(&s.secrets) as f64);
    gauge!("turn_user_database_peer_ranges", "list" => "allow").set(load(&s.allowed) as f64);
    gauge!("turn_user_database_peer_ranges", "list" => "deny").set(load(&s.denied) as f64);
    gauge!("turn_user_database_bad_rows").set(load(&s.bad_rows) as f64);
    gauge!("turn_user_database_secrets_untried").set(load(&s.secrets_untried) as f64);
    counter!("turn_user_database_refreshes_total").absolute(load(&s.refreshes));
    counter!("turn_user_database_refresh_failures_total").absolute(load(&s.failures));
    counter!("turn_user_database_updates_total").absolute(load(&s.pushes));
    let last = *s.last_success.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(at) = last {
        gauge!("turn_user_database_last_success_age_seconds").set(at.elapsed().as_secs_f64());
    }
}

/// What a session's wait saw.
pub(crate) enum Wake {
    /// Time for the scheduled refresh.
    Schedule,
    /// The database said something changed.
    Changed,
}

/// What the engine sessions use: the stop flag, the schedule, and where a
/// read goes.
pub(crate) struct Ctx {
    realm: String,
    refresh: Duration,
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    health: Arc<Health>,
    composer: Arc<Composer>,
    last: Option<Snapshot>,
    /// The database's REST secrets, newest first ([`newest_first`]).
    secret_order: Vec<String>,
    /// Set once an outage was logged; cleared on the next success.
    down_since: Option<Instant>,
    first: Option<std::sync::mpsc::Sender<()>>,
    engine: &'static str,
}

impl Ctx {
    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits until the next scheduled refresh, a change (`poll` returns
    /// `Ok(true)`; it is called with the longest time it may block), or a
    /// stop. A change is followed by a short pause that lets a burst of
    /// writes settle into one read.
    pub(crate) fn wait(&self, mut poll: impl FnMut(Duration) -> Result<bool, String>) -> Result<Wake, String> {
        let deadline = Instant::now() + self.refresh;
        loop {
            let now = Instant::now();
            if self.stopping() || now >= deadline {
                return Ok(Wake::Schedule);
            }
            let slice = (deadline - now).min(Duration::from_millis(500));
            if poll(slice)? {
                std::thread::sleep(SETTLE);
                return Ok(Wake::Changed);
            }
        }
    }

    /// A read succeeded: hand over what changed, note the recovery.
    pub(crate) fn success(&mut self, snap: Snapshot, why: &str) {
        let snap = snap.normalize();
        let s = &self.status;
        s.refreshes.fetch_add(1, Ordering::Relaxed);
        *s.last_success.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                engine = self.engine,
                down_s = since.elapsed().as_secs(),
                "user database reachable again; serving what it holds now"
            );
        }
        s.up.store(true, Ordering::Relaxed);
        self.health.set_detail(DETAIL, None);
        let changed = self.last.as_ref() != Some(&snap);
        if changed {
            self.secret_order = newest_first(&self.secret_order, &snap.secrets);
            let built = build_ordered(&self.realm, &snap, &self.secret_order);
            for b in &built.bad {
                tracing::warn!(table = b.table, row = %b.name, "user database: row skipped: {}", b.message);
            }
            let creds_changed =
                self.last.as_ref().is_none_or(|old| old.users != snap.users || old.secrets != snap.secrets);
            if creds_changed {
                self.composer.set_database_credentials(built.credentials.clone());
            }
            self.composer.set_database_peers(built.peers.clone());
            s.users.store(built.credentials.user_count() as u64, Ordering::Relaxed);
            s.secrets.store(snap.secrets.len() as u64, Ordering::Relaxed);
            s.allowed.store(built.peers.allow.len() as u64, Ordering::Relaxed);
            s.denied.store(built.peers.deny.len() as u64, Ordering::Relaxed);
            s.bad_rows.store(built.bad.len() as u64, Ordering::Relaxed);
            s.pushes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                engine = self.engine,
                users = snap.users.len(),
                secrets = snap.secrets.len(),
                allowed_peer_ranges = snap.allowed.len(),
                denied_peer_ranges = snap.denied.len(),
                skipped_rows = built.bad.len(),
                reason = why,
                "user database read"
            );
            self.last = Some(snap);
        } else {
            tracing::debug!(engine = self.engine, reason = why, "user database read: no change");
        }
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
    }

    /// A connection or read failed: count it, and log it once per outage.
    fn failure(&mut self, url: &DatabaseUrl, error: &str) {
        let s = &self.status;
        s.failures.fetch_add(1, Ordering::Relaxed);
        s.up.store(false, Ordering::Relaxed);
        let users = s.users.load(Ordering::Relaxed);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::warn!(
                engine = self.engine,
                database = %url.redacted(),
                users_kept = users,
                "user database unreachable, serving what was last read and retrying with backoff: {error}"
            );
        } else {
            tracing::debug!(engine = self.engine, "user database still unreachable: {error}");
        }
        let since = self.down_since.map_or(0, |d| d.elapsed().as_secs());
        let line = format!("{} unreachable for {since}s ({error}); serving the {users} users last read", url.engine());
        self.health.set_detail(DETAIL, Some(line));
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
    }

    /// Sleeps `d` unless asked to stop first.
    fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.stopping() {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(200)));
        }
    }
}

/// The running refresher: stop it with [`Refresher::stop`].
pub struct Refresher {
    stop: Arc<AtomicBool>,
    status: Arc<Status>,
    engine: &'static str,
}

impl Refresher {
    /// Starts the refresher thread for `url` and waits (at most
    /// `first_wait`) for its first read or failure, so that the database's
    /// users work as soon as this returns when it is reachable.
    pub fn start(
        url: DatabaseUrl,
        realm: &str,
        refresh: Duration,
        composer: Arc<Composer>,
        health: Arc<Health>,
        first_wait: Duration,
    ) -> std::io::Result<Refresher> {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Status { secrets_untried: composer.untried.clone(), ..Status::default() });
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let engine = url.engine();
        let mut ctx = Ctx {
            realm: realm.to_owned(),
            refresh,
            stop: stop.clone(),
            status: status.clone(),
            health,
            composer,
            last: None,
            secret_order: Vec::new(),
            down_since: None,
            first: Some(first_tx),
            engine,
        };
        std::thread::Builder::new().name("userdb".into()).spawn(move || run(&url, &mut ctx))?;
        let _ = first_rx.recv_timeout(first_wait);
        Ok(Refresher { stop, status, engine })
    }

    /// The refresher's counters.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The engine's name.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    /// Asks the thread to stop (it does within a second, or once a
    /// connection attempt in progress gives up).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The refresher's loop: a session per connection, reconnecting with
/// backoff (1 s doubling to 30 s, never past the refresh interval).
fn run(url: &DatabaseUrl, ctx: &mut Ctx) {
    let mut backoff = Duration::from_secs(1);
    while !ctx.stopping() {
        let before = ctx.status.refreshes.load(Ordering::Relaxed);
        let result = match url {
            DatabaseUrl::Postgres(u) => postgres::session(u, ctx),
            DatabaseUrl::Redis(u) => redis::session(u, ctx),
            DatabaseUrl::Sqlite(p) => sqlite::session(p, ctx),
        };
        if ctx.stopping() {
            break;
        }
        if let Err(e) = result {
            ctx.failure(url, &e);
        }
        if ctx.status.refreshes.load(Ordering::Relaxed) > before {
            backoff = Duration::from_secs(1);
        }
        ctx.sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF).min(ctx.refresh.max(Duration::from_secs(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn urls_are_checked_without_connecting() {
        let pg = DatabaseUrl::parse("postgresql://turn:pw@127.0.0.1:5432/coturn").unwrap();
        assert_eq!(pg.engine(), "postgresql");
        assert_eq!(pg.redacted(), "postgresql://turn:***@127.0.0.1:5432/coturn");
        assert!(matches!(DatabaseUrl::parse("postgres://u@db/x?connect_timeout=3"), Ok(DatabaseUrl::Postgres(_))));
        // A unix socket directory, percent-encoded or as a parameter.
        for unix in ["postgresql://turn@%2Frun%2Fpostgresql/coturn", "postgresql:///coturn?host=/run/postgresql"] {
            assert!(matches!(DatabaseUrl::parse(unix), Ok(DatabaseUrl::Postgres(_))), "{unix}");
        }
        let r = DatabaseUrl::parse("redis://:secretpw@127.0.0.1:6379/2").unwrap();
        assert_eq!((r.engine(), r.redacted().as_str()), ("redis", "redis://:***@127.0.0.1:6379/2"));
        assert_eq!(DatabaseUrl::parse("sqlite:///var/lib/turn/turndb").unwrap(), {
            DatabaseUrl::Sqlite("/var/lib/turn/turndb".into())
        });
        for (bad, why) in [
            ("mysql://u:p@h/db", "unknown scheme"),
            ("sqlite://relative/turndb", "absolute"),
            ("sqlite:///", "absolute"),
            ("/var/lib/turn/turndb", "expected postgresql"),
            ("rediss://:pw@h:6380", "TLS"),
            ("postgresql://u:hunter2@h/db?sslmode=require", "TLS"),
            ("redis://:hunter2@/0", "no host"),
            ("postgresql://u:hunter2@h:notaport/db", "not a PostgreSQL URL"),
        ] {
            let e = DatabaseUrl::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{bad}: the error repeats the password: {e}");
        }
    }

    #[test]
    fn the_url_from_a_file() {
        let dir = std::env::temp_dir().join(format!("turn-relay-dburl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("database-url");
        std::fs::write(&file, "  postgresql://turn:hunter2@127.0.0.1/coturn\n").unwrap();
        let text = format!("[auth]\ndatabase_file = \"{}\"\n", file.display());
        let mut c = Config::parse("relay.toml", &text).unwrap();
        load_database_file(&mut c, &[]).unwrap();
        assert_eq!(c.auth.database.as_deref(), Some("postgresql://turn:hunter2@127.0.0.1/coturn"));
        assert!(c.validate(&[]).is_ok());

        // Both keys; a file that is not there; a bad URL in the file: the
        // key and the file are named, the password never.
        let both = format!("[auth]\ndatabase = \"sqlite:///x\"\n{}", &text["[auth]\n".len()..]);
        let e = load_database_file(&mut Config::parse("relay.toml", &both).unwrap(), &[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "auth.database_file"), "{e}");
        assert!(e.message.contains("not both"), "{e}");
        let gone = "[auth]\ndatabase_file = \"/nonexistent/turn-relay-db-url\"\n";
        let e = load_database_file(&mut Config::parse("relay.toml", gone).unwrap(), &[]).unwrap_err();
        assert!(e.to_string().starts_with("relay.toml:2: auth.database_file: cannot read /nonexistent"), "{e}");
        std::fs::write(&file, "mysql://turn:hunter2@db/coturn").unwrap();
        let e = load_database_file(&mut Config::parse("relay.toml", &text).unwrap(), &[]).unwrap_err();
        assert!(e.message.contains("unknown scheme") && e.message.contains("database-url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // From the command line: the error says so.
        let mut c = Config::default();
        c.auth.database_file = Some("/nonexistent/x".into());
        let e = load_database_file(&mut c, &["auth.database_file"]).unwrap_err();
        assert!(e.to_string().starts_with("<command line>: auth.database_file: "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn configured_rest_secrets_are_bounded() {
        let n = relay_core::server::auth::MAX_REST_SECRETS;
        let list = |n: usize| (0..n).map(|i| format!("\"s{i}\"")).collect::<Vec<_>>().join(", ");
        let ok = Config::parse("relay.toml", &format!("[auth]\nrest_secrets = [{}]\n", list(n))).unwrap();
        assert!(ok.validate(&[]).is_ok());
        let text = format!("[auth]\nrest_secrets = [{}]\n", list(n + 1));
        let e = Config::parse("relay.toml", &text).unwrap().validate(&[]).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "auth.rest_secrets"), "{e}");
        assert!(!e.to_string().contains("s16"), "a secret in the error: {e}");
    }

    #[test]
    fn reloads_that_need_a_restart() {
        let parse = |text: &str| Config::parse("relay.toml", text).unwrap();
        let db = "[server]\nrealm = \"a.example\"\n[auth]\ndatabase = \"sqlite:///var/lib/turn/turndb\"\n";
        let old = parse(db);
        assert!(check_reload(&old, &parse(db)).is_ok());
        let realm = check_reload(&old, &parse(&db.replace("a.example", "b.example"))).unwrap_err();
        assert!(realm.contains("server.realm") && realm.contains("needs a restart"), "{realm}");
        let url = check_reload(&old, &parse(&db.replace("turndb", "other"))).unwrap_err();
        assert!(url.contains("auth.database") && !url.contains("sqlite"), "{url}");
        let gone = check_reload(&old, &parse("[server]\nrealm = \"a.example\"\n")).unwrap_err();
        assert!(gone.contains("auth.database"), "{gone}");
        let refresh = check_reload(&old, &parse(&format!("{db}database_refresh = 5\n"))).unwrap_err();
        assert!(refresh.contains("auth.database_refresh"), "{refresh}");
        // Without a database the realm may change on a reload.
        let plain = parse("[server]\nrealm = \"a.example\"\n");
        assert!(check_reload(&plain, &parse("[server]\nrealm = \"b.example\"\n")).is_ok());
        assert!(check_reload(&plain, &old).unwrap_err().contains("auth.database"));
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://user@h/0"), "redis://user@h/0");
        assert_eq!(redact("postgresql://a:b:c@h/db"), "postgresql://a:***@h/db");
        assert_eq!(redact("postgresql://a:p%40ss@h"), "postgresql://a:***@h");
        assert_eq!(redact("postgresql://h/db?user=u&password=pw&x=1"), "postgresql://h/db?user=u&password=***&x=1");
    }

    #[test]
    fn coturn_peer_ranges() {
        assert_eq!(parse_range("10.0.0.1").unwrap(), nets(&["10.0.0.1/32"]));
        assert_eq!(parse_range(" 192.168.1.0-192.168.1.255 ").unwrap(), nets(&["192.168.1.0/24"]));
        assert_eq!(
            parse_range("10.0.0.1-10.0.0.6").unwrap(),
            nets(&["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"])
        );
        assert_eq!(parse_range("0.0.0.0-255.255.255.255").unwrap(), nets(&["0.0.0.0/0"]));
        assert_eq!(parse_range("fd00::-fd00::ffff").unwrap(), nets(&["fd00::/112"]));
        assert_eq!(parse_range("::1").unwrap(), nets(&["::1/128"]));
        assert_eq!(parse_range("10.1.2.3/16").unwrap(), nets(&["10.1.0.0/16"]));
        for (bad, why) in [
            ("10.0.0.9-10.0.0.1", "ends before"),
            ("10.0.0.1-::1", "mixes"),
            ("10.0.0.300", "bad address"),
            ("", "bad address"),
            ("10.0.0.0/40", "bad prefix"),
        ] {
            assert!(parse_range(bad).unwrap_err().contains(why), "{bad:?}");
        }
    }

    #[test]
    fn rows_build_credentials_and_peers_and_bad_rows_are_skipped() {
        use relay_core::server::auth::KeyCandidates;
        let mut snap = Snapshot::default();
        // md5("alice:example.org:secret"), as turnadmin -a writes it.
        snap.users.insert("alice".into(), "543e1aec5d3614f03141652d6ada51b2".into());
        // PostgreSQL's char(128) pads with blanks.
        snap.users.insert("bob".into(), format!("{:<128}", "8493fbc53ba582fb4c044c456bdc40eb"));
        let sha = "a".repeat(64);
        snap.users.insert("carol".into(), sha.clone());
        snap.users.insert("mallory".into(), "zz".repeat(16));
        snap.users.insert("trent".into(), "ab".repeat(64));
        snap.secrets = vec!["north".into()];
        snap.allowed = vec!["10.0.0.0-10.0.0.255".into(), "nonsense".into()];
        snap.denied = vec!["203.0.113.7".into()];
        let built = build("example.org", &snap.normalize());
        let c = &built.credentials;
        let mut out = KeyCandidates::new();
        c.keys("alice", PasswordAlgorithm::Md5, 0, &mut out);
        let alice = Key::long_term(PasswordAlgorithm::Md5, "alice", "example.org", "secret").unwrap();
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [alice]);
        assert!(c.has_user("bob"));
        c.keys("carol", PasswordAlgorithm::Sha256, 0, &mut out);
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [Key::from_hex(PasswordAlgorithm::Sha256, &sha).unwrap()]);
        c.keys("carol", PasswordAlgorithm::Md5, 0, &mut out);
        assert!(out.is_empty(), "a SHA-256 key signs SHA-256 only");
        assert!(!c.has_user("mallory") && !c.has_user("trent"));
        assert!(c.has_rest_secrets());
        assert_eq!(built.peers.allow, nets(&["10.0.0.0/24"]));
        assert_eq!(built.peers.deny, nets(&["203.0.113.7/32"]));
        let bad: Vec<_> = built.bad.iter().map(|b| (b.table, b.name.as_str())).collect();
        assert_eq!(bad, [("turnusers_lt", "mallory"), ("turnusers_lt", "trent"), ("allowed_peer_ip", "nonsense")]);
        assert!(
            built.bad.iter().all(|b| !b.message.contains("zz") && !b.message.contains("abab")),
            "no key in messages"
        );
    }

    #[test]
    fn snapshots_compare_in_any_order() {
        let a = Snapshot { secrets: vec!["b".into(), "a".into(), "a".into()], ..Snapshot::default() }.normalize();
        let b = Snapshot { secrets: vec!["a".into(), "b".into()], ..Snapshot::default() }.normalize();
        assert_eq!(a, b);
        let ranges = Snapshot { allowed: vec![" 10.0.0.1 ".into(), "10.0.0.1".into()], ..Snapshot::default() };
        assert_eq!(ranges.normalize().allowed, ["10.0.0.1"]);
    }

    #[test]
    fn rest_secrets_are_used_as_stored() {
        use relay_core::server::auth::KeyCandidates;
        // coturn signs with the stored value, blanks and all.
        let snap = Snapshot { secrets: vec![" west secret ".into(), String::new()], ..Snapshot::default() };
        let snap = snap.normalize();
        assert_eq!(snap.secrets, [" west secret "], "kept as stored; the empty one dropped");
        let built = build("example.org", &snap);
        let mut want = relay_core::server::auth::Credentials::new("example.org");
        want.add_rest_secret(b" west secret ");
        let (mut got, mut expected) = (KeyCandidates::new(), KeyCandidates::new());
        built.credentials.keys("1700000000:u", PasswordAlgorithm::Md5, 0, &mut got);
        want.keys("1700000000:u", PasswordAlgorithm::Md5, 0, &mut expected);
        assert_eq!(got.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn the_newest_secret_comes_first() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // At start every secret is new: sorted.
        let order = newest_first(&[], &v(&["b", "a", "c"]));
        assert_eq!(order, v(&["b", "a", "c"]));
        // A rotation: the added one first, whatever its name; the deleted gone.
        let order = newest_first(&v(&["a", "b", "c"]), &v(&["a", "aa", "c"]));
        assert_eq!(order, v(&["aa", "a", "c"]));
        let order = newest_first(&order, &v(&["0", "a", "aa", "c"]));
        assert_eq!(order, v(&["0", "aa", "a", "c"]));
        assert_eq!(newest_first(&order, &[]), Vec::<String>::new());
    }
}
