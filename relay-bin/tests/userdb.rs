//! The user database (`auth.database`) against real servers: a private
//! PostgreSQL (initdb into a temporary directory, on a free loopback port),
//! a private Redis, and an SQLite file, each provisioned with coturn's own
//! `turnadmin`. For each engine, against the `turn-relay` binary:
//!
//! - a user added with `turnadmin -a` can allocate within seconds (the
//!   refresh interval is 30 s, so the change notification is what works),
//!   one deleted with `turnadmin -d` is refused (401);
//! - a REST secret rotated with `turnadmin -s`/`-X`, beside five retired
//!   ones left in place: the new one's credentials work (its trailing blank
//!   kept, as coturn keeps it), the old one's are refused;
//! - peer ranges in coturn's allowed/denied tables open and close peers for
//!   new permissions; coturn's `turnutils_uclient` and turn-bench's client
//!   relay through a range the database allowed;
//! - a burst of writes is one read or a few, not one per write;
//! - SIGHUP keeps the database's users beside the configured ones;
//! - with the database stopped, a running allocation keeps relaying, new
//!   allocations of known users succeed, `turn_user_database_up` is 0 and
//!   `/readyz` (still 200) says why, logged once; restarted, the metric
//!   recovers and new changes are seen again. The Redis password never
//!   appears in the log. The relay reads Redis as an ACL user that may only
//!   read coturn's keys and subscribe to their keyspace channel (the ACL
//!   docs/operations.md gives); a user without the channel is served on the
//!   schedule alone. A PostgreSQL read blocked by a lock ends at the
//!   statement timeout and counts as an outage.
//!
//! Beside them, without a database server: SIGHUP right after start (while
//! the first read of an unanswering database is awaited) reloads instead of
//! killing the process; a reload that changes the realm or the database is
//! refused with "needs a restart" and the database's users keep working.
//!
//! Needs root (PostgreSQL runs as the `postgres` user), PostgreSQL's server
//! binaries, redis-server and coturn's tools (`.ci/run` installs them);
//! without them the test is skipped, except in CI where that is a failure.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay_core::wire::{Attribute, Method};
use test_kit::{Login, TurnClient, error_code, recv_datagram};

mod common;
use common::{Answer, free_tcp_port, free_udp_port, have, http_get, metric_at, run_bounded, skip};

const REALM: &str = "example.org";
/// How long a change may take to be seen: far below the 30 s schedule.
const SEEN_WITHIN: Duration = Duration::from_secs(8);

/// PostgreSQL's server binaries: `pg_config --bindir` when that names one
/// with `postgres` in it, else the highest version under
/// /usr/lib/postgresql (Debian's layout).
fn pg_bin() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| has_server(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("turn-relay-userdb-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process we started: stopped by its pid with `signal`, waited
/// for (bounded), then killed if still there.
struct Server {
    child: Option<Child>,
    signal: &'static str,
}

impl Server {
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args([self.signal, &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `uid` and `gid` of a system user.
fn ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Waits (bounded) until `f` holds; fails with `what` and the relay's log.
fn eventually(what: &str, limit: Duration, log: &Path, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not within {limit:?}\nturn-relay log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// One engine, as the scenario drives it.
trait Db {
    fn engine(&self) -> &'static str;
    /// `auth.database`.
    fn url(&self) -> String;
    /// turnadmin's flags that name the database.
    fn turnadmin(&self) -> Vec<String>;
    /// Adds (`add`) or removes rows of coturn's `allowed_peer_ip` or
    /// `denied_peer_ip` (`list` = "allowed" or "denied"), one write each,
    /// over one connection.
    fn peer_ranges(&mut self, list: &str, ranges: &[String], add: bool);
    fn peer_range(&mut self, list: &str, range: &str, add: bool) {
        self.peer_ranges(list, &[range.to_owned()], add);
    }
    fn stop(&mut self);
    fn start(&mut self);
    /// A string that must never show in the relay's log (a password).
    fn secret(&self) -> Option<&str> {
        None
    }
}

/// `turnadmin ARGS… <db flags>`, bounded; fails the test when it fails.
fn turnadmin(db: &dyn Db, args: &[&str]) {
    let out = run_bounded(Command::new("turnadmin").args(args).args(db.turnadmin()), Duration::from_secs(20));
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "turnadmin {args:?} ({}): {log}", db.engine());
}

// PostgreSQL

struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    ids: (u32, u32),
    server: Server,
}

/// The trigger docs/operations.md gives operators: a notification on
/// `turn_relay_userdb` for every change of coturn's tables.
const PG_TRIGGERS: &str = "
CREATE FUNCTION turn_relay_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('turn_relay_userdb', TG_TABLE_NAME); RETURN NULL; END $$;
CREATE TRIGGER turn_relay_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON turnusers_lt
  FOR EACH STATEMENT EXECUTE FUNCTION turn_relay_notify();
CREATE TRIGGER turn_relay_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON turn_secret
  FOR EACH STATEMENT EXECUTE FUNCTION turn_relay_notify();
CREATE TRIGGER turn_relay_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON allowed_peer_ip
  FOR EACH STATEMENT EXECUTE FUNCTION turn_relay_notify();
CREATE TRIGGER turn_relay_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON denied_peer_ip
  FOR EACH STATEMENT EXECUTE FUNCTION turn_relay_notify();
";

impl Postgres {
    fn new() -> Result<Postgres, String> {
        let bin = pg_bin().ok_or("no PostgreSQL server binaries")?;
        let ids = ids("postgres").ok_or("no postgres user")?;
        let dir = TempDir::new("pg");
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for p in [&dir.0, &data] {
            std::os::unix::fs::chown(p, Some(ids.0), Some(ids.1)).map_err(|e| format!("chown: {e}"))?;
        }
        let out = run_bounded(
            Command::new(bin.join("initdb"))
                .args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .current_dir(&dir.0)
                .uid(ids.0)
                .gid(ids.1),
            Duration::from_secs(120),
        );
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = free_tcp_port("127.0.0.1");
        let mut pg = Postgres { bin, dir, port, ids, server: Server { child: None, signal: "-INT" } };
        pg.start();
        let mut c = pg.client("postgres");
        c.batch_execute("CREATE DATABASE coturn").unwrap();
        let mut c = pg.client("coturn");
        c.batch_execute(&std::fs::read_to_string("/usr/share/coturn/schema.sql").unwrap()).unwrap();
        c.batch_execute(PG_TRIGGERS).unwrap();
        Ok(pg)
    }

    fn client(&self, db: &str) -> postgres::Client {
        let url = format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5", self.port);
        postgres::Client::connect(&url, postgres::NoTls).unwrap()
    }
}

impl Db for Postgres {
    fn engine(&self) -> &'static str {
        "postgresql"
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/coturn", self.port)
    }

    fn turnadmin(&self) -> Vec<String> {
        vec!["-e".into(), format!("host=127.0.0.1 port={} dbname=coturn user=postgres", self.port)]
    }

    fn peer_ranges(&mut self, list: &str, ranges: &[String], add: bool) {
        let mut c = self.client("coturn");
        let q = if add {
            format!("INSERT INTO {list}_peer_ip (realm, ip_range) VALUES ($1, $2)")
        } else {
            format!("DELETE FROM {list}_peer_ip WHERE realm = $1 AND ip_range = $2")
        };
        for range in ranges {
            c.execute(&q, &[&REALM, range]).unwrap();
        }
    }

    fn stop(&mut self) {
        self.server.stop();
    }

    fn start(&mut self) {
        let data = self.dir.0.join("data");
        let child = Command::new(self.bin.join("postgres"))
            .args(["-D", data.to_str().unwrap(), "-p", &self.port.to_string(), "-k", self.dir.0.to_str().unwrap()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .current_dir(&self.dir.0)
            .uid(self.ids.0)
            .gid(self.ids.1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server.child = Some(child);
        let url = format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&url, postgres::NoTls).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come up on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// Redis

struct Redis {
    dir: TempDir,
    port: u16,
    /// The default user's (turnadmin's).
    password: String,
    /// The relay's ACL user's.
    relay_password: String,
    server: Server,
}

/// The ACL docs/operations.md gives the relay's Redis user: read coturn's
/// keys, subscribe to their keyspace channel (a PSUBSCRIBE pattern must be
/// granted literally), nothing else.
fn relay_acl(user: &str, password: &str, channel: bool) -> Vec<String> {
    let mut rules = vec![user.to_owned(), "reset".into(), "on".into(), format!(">{password}")];
    rules.extend(["%R~turn/realm/*".into(), "resetchannels".into()]);
    if channel {
        rules.push(format!("&__keyspace@0__:turn/realm/{REALM}/*"));
    }
    rules.extend(["-@all".into(), "+@read".into(), "+psubscribe".into()]);
    rules
}

impl Redis {
    fn new() -> Redis {
        let mut r = Redis {
            dir: TempDir::new("redis"),
            port: free_tcp_port("127.0.0.1"),
            password: format!("redis-pw-{}", std::process::id()),
            relay_password: format!("relay-pw-{}", std::process::id()),
            server: Server { child: None, signal: "-TERM" },
        };
        r.start();
        r
    }

    /// The default user: turnadmin's and the test's, which may write.
    fn admin_url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.admin_url()).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }

    /// `ACL SETUSER` for the relay's user (`channel`: with the keyspace
    /// channel it subscribes to).
    fn set_relay_user(&self, user: &str, channel: bool) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(relay_acl(user, &self.relay_password, channel));
        let ok: String = cmd.query(&mut self.con()).unwrap();
        assert_eq!(ok, "OK");
    }

    fn url_as(&self, user: &str) -> String {
        format!("redis://{user}:{}@127.0.0.1:{}/0", self.relay_password, self.port)
    }
}

impl Db for Redis {
    fn engine(&self) -> &'static str {
        "redis"
    }

    fn url(&self) -> String {
        self.url_as("turn-relay")
    }

    fn turnadmin(&self) -> Vec<String> {
        vec!["-N".into(), format!("ip=127.0.0.1 port={} password={} dbname=0", self.port, self.password)]
    }

    fn peer_ranges(&mut self, list: &str, ranges: &[String], add: bool) {
        let key = format!("turn/realm/{REALM}/{list}-peer-ip");
        let cmd = if add { "SADD" } else { "SREM" };
        let mut con = self.con();
        for range in ranges {
            let _: i64 = redis::cmd(cmd).arg(&key).arg(range).query(&mut con).unwrap();
        }
    }

    fn stop(&mut self) {
        self.server.stop();
    }

    fn start(&mut self) {
        // Append-only persistence in the temporary directory, so that a
        // restart finds what was there; keyspace events on for the keys
        // the refresher watches.
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--dir", self.dir.0.to_str().unwrap()])
            .args(["--requirepass", &self.password, "--notify-keyspace-events", "K$sg"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = redis::Client::open(self.admin_url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "Redis did not come up on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
        // Users made with ACL SETUSER live in memory: made again at each start.
        self.set_relay_user("turn-relay", true);
    }

    fn secret(&self) -> Option<&str> {
        Some(&self.relay_password)
    }
}

// SQLite

struct Sqlite {
    _dir: TempDir,
    path: PathBuf,
    away: PathBuf,
}

impl Sqlite {
    fn new() -> Sqlite {
        let dir = TempDir::new("sqlite");
        let (path, away) = (dir.0.join("turndb"), dir.0.join("turndb.away"));
        Sqlite { _dir: dir, path, away }
    }
}

impl Db for Sqlite {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    fn turnadmin(&self) -> Vec<String> {
        vec!["-b".into(), self.path.display().to_string()]
    }

    fn peer_ranges(&mut self, list: &str, ranges: &[String], add: bool) {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        // Each write its own commit, without waiting for the disk.
        c.pragma_update(None, "synchronous", "OFF").unwrap();
        let q = if add {
            format!("INSERT INTO {list}_peer_ip (realm, ip_range) VALUES (?1, ?2)")
        } else {
            format!("DELETE FROM {list}_peer_ip WHERE realm = ?1 AND ip_range = ?2")
        };
        for range in ranges {
            c.execute(&q, [REALM, range.as_str()]).unwrap();
        }
    }

    /// The file goes away (as a lost mount would take it).
    fn stop(&mut self) {
        std::fs::rename(&self.path, &self.away).unwrap();
    }

    fn start(&mut self) {
        std::fs::rename(&self.away, &self.path).unwrap();
    }
}

// The relay and its clients

struct Relay {
    child: Child,
    server: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// The relay on `url` as the scenario runs it: realm and a configured
    /// user from flags, a 30 s schedule.
    fn start(db: &dyn Db, ports: (u16, u16), log: PathBuf) -> Relay {
        let url = db.url();
        Relay::with(ports, log, &["--realm", REALM, "--user", "static:static-pw", "--user-database", &url])
    }

    /// The relay on loopback with `args` (the listeners, relay ports and
    /// metrics are added).
    fn with(ports: (u16, u16), log: PathBuf, args: &[&str]) -> Relay {
        let server: SocketAddr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1")).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(["--listen", &server.to_string(), "--relay-ip", "127.0.0.1"])
            .args(["--relay-ports", &format!("{}-{}", ports.0, ports.1), "--quarantine", "1"])
            .args(["--metrics", &metrics.to_string(), "--shards", "1", "--no-pin", "--log-level", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Relay { child, server, metrics, log }
    }

    fn client(&self, user: &str, password: &str) -> TurnClient {
        TurnClient::new(self.server, Login { user, password, realm: REALM })
    }

    /// Allocate as `user`: the relayed address or the error code.
    fn allocate(&self, user: &str, password: &str) -> Result<SocketAddr, u16> {
        self.client(user, password).allocate()
    }

    fn signal(&self, signal: &str) {
        assert!(Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A TURN REST API user name valid for an hour, and its password for `secret`.
fn rest_login(secret: &str, user: &str) -> (String, String) {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let name = format!("{expiry}:{user}");
    let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(name.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (name, password)
}

/// CreatePermission for `peer` on a fresh allocation of `user`: the error
/// code, 0 for success.
fn permission(relay: &Relay, user: &str, password: &str, peer: SocketAddr) -> u16 {
    let mut c = relay.client(user, password);
    if c.allocate().is_err() {
        return u16::MAX;
    }
    let resp = c.request(Method::CREATE_PERMISSION, &[Attribute::XorPeerAddress(peer)]);
    error_code(&resp).unwrap_or(0)
}

/// `turnutils_uclient` as `user` through the relay to coturn's echo peer
/// at `peer`: every message back.
fn uclient(relay: &Relay, user: &str, password: &str, peer: SocketAddr) {
    let out = run_bounded(
        Command::new("turnutils_uclient")
            .args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()])
            .args(["-p", &relay.server.port().to_string(), "-u", user, "-w", password])
            .args(["-m", "1", "-n", "20", "-l", "120", "-z", "2", "-c", "127.0.0.1"]),
        Duration::from_secs(30),
    );
    let log = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let totals = log.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="));
    assert!(
        totals.is_some_and(|l| l.contains("tot_send_msgs=20") && l.contains("tot_recv_msgs=20")),
        "uclient as {user}:\n{log}"
    );
}

/// Whether everything this needs is here; otherwise the skip rule.
fn prerequisites(test: &str, engine: &str) -> bool {
    let mut missing = Vec::new();
    for tool in ["turnadmin", "turnutils_uclient", "turnutils_peer"] {
        if !have(tool) {
            missing.push(tool.to_owned());
        }
    }
    match engine {
        "postgresql" => {
            if pg_bin().is_none() {
                missing.push("PostgreSQL's server binaries (/usr/lib/postgresql/*/bin)".to_owned());
            }
            if ids("postgres").is_none() || euid() != 0 {
                missing.push("root and a postgres user".to_owned());
            }
        }
        "redis" if !have("redis-server") => missing.push("redis-server".to_owned()),
        _ => {}
    }
    if missing.is_empty() {
        return true;
    }
    skip(test, &format!("needs {} (.ci/run installs them)", missing.join(", ")));
    false
}

/// This process's effective uid, from /proc.
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The whole scenario against one engine.
fn scenario(db: &mut dyn Db, ports: (u16, u16), log_dir: &Path) -> Relay {
    let engine = db.engine();
    turnadmin(db, &["-a", "-u", "alice", "-r", REALM, "-p", "alice-pw"]);
    turnadmin(db, &["-s", "north-secret", "-r", REALM]);
    let relay = Relay::start(db, ports, log_dir.join("turn-relay.log"));
    let log = relay.log.clone();
    let m = relay.metrics;
    eventually("the database read", Duration::from_secs(15), &log, || {
        metric_at(m, "turn_user_database_up") == Some(1.0) && metric_at(m, "turn_user_database_users") == Some(1.0)
    });
    assert_eq!(metric_at(m, "turn_user_database_secrets"), Some(1.0));
    assert!(relay.allocate("alice", "alice-pw").is_ok(), "{engine}: alice");
    assert_eq!(relay.allocate("alice", "wrong").unwrap_err(), 401, "{engine}: a wrong password");
    assert!(relay.allocate("static", "static-pw").is_ok(), "{engine}: the configured user");
    let (north_name, north_pw) = rest_login("north-secret", "carol");
    assert!(relay.allocate(&north_name, &north_pw).is_ok(), "{engine}: REST credentials of the database's secret");

    // A user added is served within seconds (the schedule is 30 s).
    assert_eq!(relay.allocate("bob", "bob-pw").unwrap_err(), 401, "{engine}: bob before he is added");
    turnadmin(db, &["-a", "-u", "bob", "-r", REALM, "-p", "bob-pw"]);
    let took = eventually("bob added", SEEN_WITHIN, &log, || relay.allocate("bob", "bob-pw").is_ok());
    eprintln!("{engine}: a user added was served after {took:?}");

    // Peers: 127.0.0.2 is denied by default until the database allows it.
    let peer = test_kit::peer();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(permission(&relay, "bob", "bob-pw", peer_addr), 403, "{engine}: a loopback peer by default");
    db.peer_range("allowed", "127.0.0.2-127.0.0.3", true);
    eventually("the allowed peer range", SEEN_WITHIN, &log, || permission(&relay, "bob", "bob-pw", peer_addr) == 0);
    let (_echo, echo_port) = common::turnutils_peer("127.0.0.3");
    uclient(&relay, "bob", "bob-pw", format!("127.0.0.3:{echo_port}").parse().unwrap());
    bench_client(&relay, "bob", "bob-pw", &peer);
    db.peer_range("denied", "127.0.0.2", true);
    eventually("the denied peer", SEEN_WITHIN, &log, || permission(&relay, "bob", "bob-pw", peer_addr) == 403);
    db.peer_range("denied", "127.0.0.2", false);
    eventually("the deny removed", SEEN_WITHIN, &log, || permission(&relay, "bob", "bob-pw", peer_addr) == 0);

    // A burst of writes, each notified: one read covers what is queued.
    let deny = r#"turn_user_database_peer_ranges{list="deny"}"#;
    let burst: Vec<String> = (1..=50).map(|i| format!("198.51.100.{i}")).collect();
    let reads_before = metric_at(m, "turn_user_database_refreshes_total").unwrap();
    db.peer_ranges("denied", &burst, true);
    eventually("the burst", SEEN_WITHIN, &log, || metric_at(m, deny) == Some(50.0));
    // Until the reads stop (one read per write would go on for 10 s and more).
    let reads_total = || metric_at(m, "turn_user_database_refreshes_total").unwrap();
    let (mut last, settle_by) = (reads_total(), Instant::now() + Duration::from_secs(20));
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = reads_total();
        if now == last || Instant::now() > settle_by {
            break;
        }
        last = now;
    }
    let reads = reads_total() - reads_before;
    assert!(reads <= 10.0, "{engine}: {reads} reads for a burst of 50 writes");
    eprintln!("{engine}: a burst of 50 writes took {reads} reads");
    db.peer_ranges("denied", &burst, false);
    eventually("the burst removed", SEEN_WITHIN, &log, || metric_at(m, deny) == Some(0.0));

    // Secret rotation beside five retired secrets (more than a request was
    // once checked against): the new secret's credentials work, its
    // trailing blank (a tab: turnadmin splits a Redis command at spaces)
    // kept as stored, and it sorts after all the others; the old one's not.
    for i in 1..=5 {
        turnadmin(db, &["-s", &format!("retired-{i}"), "-r", REALM]);
    }
    turnadmin(db, &["-s", "south-secret\t", "-r", REALM]);
    turnadmin(db, &["-X", "north-secret", "-r", REALM]);
    let (south_name, south_pw) = rest_login("south-secret\t", "carol");
    eventually("the rotated secret", SEEN_WITHIN, &log, || {
        relay.allocate(&north_name, &north_pw) == Err(401) && relay.allocate(&south_name, &south_pw).is_ok()
    });

    // A user deleted is refused for new allocations.
    turnadmin(db, &["-d", "-u", "alice", "-r", REALM]);
    eventually("alice deleted", SEEN_WITHIN, &log, || relay.allocate("alice", "alice-pw") == Err(401));

    // A reload keeps the database's part beside the configured one.
    relay.signal("-HUP");
    eventually("the reload", Duration::from_secs(5), &log, || relay.log_text().contains("SIGHUP"));
    assert!(relay.allocate("bob", "bob-pw").is_ok(), "{engine}: bob after SIGHUP");
    assert!(relay.allocate("static", "static-pw").is_ok(), "{engine}: static after SIGHUP");
    assert_eq!(relay.allocate("alice", "alice-pw"), Err(401), "{engine}: alice stays deleted after SIGHUP");

    // A running allocation with a channel to the peer.
    let mut running = relay.client("bob", "bob-pw");
    running.allocate().unwrap();
    running.ok(Method::CHANNEL_BIND, &[Attribute::ChannelNumber(0x4000), Attribute::XorPeerAddress(peer_addr)]);
    running.send_channel_data(0x4000, b"before");
    assert_eq!(recv_datagram(&peer).map(|d| d.0), Some(b"before".to_vec()), "{engine}: relayed before the outage");

    // The database stops: everything known keeps working.
    db.stop();
    eventually("the outage seen", Duration::from_secs(15), &log, || metric_at(m, "turn_user_database_up") == Some(0.0));
    let Answer { status, body, .. } = http_get(m, "/readyz").expect("/readyz answers");
    assert_eq!(status, 200, "{engine}: a database outage does not make the node unready: {body}");
    assert!(body.contains("database: ") && body.contains("unreachable"), "{engine}: /readyz: {body}");
    assert!(metric_at(m, "turn_user_database_refresh_failures_total").is_some_and(|v| v >= 1.0));
    running.send_channel_data(0x4000, b"during");
    assert_eq!(recv_datagram(&peer).map(|d| d.0), Some(b"during".to_vec()), "{engine}: relayed during the outage");
    assert!(relay.allocate("bob", "bob-pw").is_ok(), "{engine}: a known user allocates during the outage");
    assert!(relay.allocate(&south_name, &south_pw).is_ok(), "{engine}: REST credentials during the outage");
    assert!(relay.allocate("static", "static-pw").is_ok(), "{engine}: the configured user during the outage");
    assert_eq!(relay.allocate("alice", "alice-pw"), Err(401), "{engine}: a deleted user stays deleted");
    std::thread::sleep(Duration::from_secs(2));

    // Back: the metric recovers and changes are seen again.
    db.start();
    eventually("the recovery", Duration::from_secs(40), &log, || metric_at(m, "turn_user_database_up") == Some(1.0));
    let Answer { status, body, .. } = http_get(m, "/readyz").expect("/readyz answers");
    assert!(status == 200 && !body.contains("database: "), "{engine}: /readyz after the recovery: {body}");
    turnadmin(db, &["-a", "-u", "dave", "-r", REALM, "-p", "dave-pw"]);
    eventually("dave added after the recovery", SEEN_WITHIN, &log, || relay.allocate("dave", "dave-pw").is_ok());
    running.send_channel_data(0x4000, b"after");
    assert_eq!(recv_datagram(&peer).map(|d| d.0), Some(b"after".to_vec()), "{engine}: relayed after the outage");

    let text = relay.log_text();
    assert_eq!(text.matches("user database unreachable").count(), 1, "{engine}: one log line per outage:\n{text}");
    assert!(text.contains("user database reachable again"), "{engine}:\n{text}");
    if let Some(secret) = db.secret() {
        assert!(!text.contains(secret), "{engine}: the database password is in the log:\n{text}");
    }
    relay
}

/// turn-bench's client as `user`: an allocation, a channel to `peer`, data
/// both ways.
fn bench_client(relay: &Relay, user: &str, password: &str, peer: &UdpSocket) {
    use bench_harness::client::DataSource;
    let target = bench_harness::TurnServer::new(relay.server, bench_harness::Credentials::long_term(user, password));
    let mut c = bench_harness::TurnClient::udp(relay.server, target.client_config()).unwrap();
    let relayed = c.allocate(None).expect("turn-bench's client allocates");
    let peer_addr = peer.local_addr().unwrap();
    c.channel_bind(0x4001, peer_addr).unwrap();
    c.send_channel_data(0x4001, b"from turn-bench").unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer got nothing from turn-bench's client");
    assert_eq!((&buf[..n], from), (&b"from turn-bench"[..], relayed));
    peer.send_to(b"to turn-bench", relayed).unwrap();
    let (src, n) = c.recv_data(&mut buf, Duration::from_secs(3)).unwrap().expect("nothing came back");
    assert_eq!((src, &buf[..n]), (DataSource::Channel(0x4001), &b"to turn-bench"[..]));
    c.refresh(0).unwrap();
}

/// A relay port range of its own for each test, free now and below the
/// kernel's ephemeral range (32768 and up: /proc/sys/net/ipv4/
/// ip_local_port_range), where other sockets of this machine take ports.
fn ports(slot: u16) -> (u16, u16) {
    let base = 12000 + slot * 1500;
    let start = (std::process::id() % 50) as u16 * 30;
    for k in 0..50u16 {
        let lo = base + (start + k * 30) % 1500;
        if (lo..=lo + 29).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (lo, lo + 29);
        }
    }
    panic!("no 30 free UDP ports in {base}..{}", base + 1500);
}

#[test]
fn postgresql_user_database() {
    if !prerequisites("postgresql_user_database", "postgresql") {
        return;
    }
    let mut db = match Postgres::new() {
        Ok(db) => db,
        Err(e) => panic!("a private PostgreSQL: {e}"),
    };
    let logs = TempDir::new("pg-logs");
    let relay = scenario(&mut db, ports(0), &logs.0);

    // A read that a lock blocks ends at the statement timeout: an outage,
    // not a refresher stuck with `turn_user_database_up` at 1.
    let m = relay.metrics;
    let mut locker = db.client("coturn");
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE turn_secret IN ACCESS EXCLUSIVE MODE").unwrap();
    db.client("coturn").batch_execute("NOTIFY turn_relay_userdb").unwrap();
    eventually("the blocked read given up", Duration::from_secs(25), &relay.log, || {
        metric_at(m, "turn_user_database_up") == Some(0.0)
    });
    let Answer { body, .. } = http_get(m, "/readyz").expect("/readyz answers");
    assert!(body.contains("statement timeout"), "/readyz during the lock: {body}");
    assert!(relay.allocate("bob", "bob-pw").is_ok(), "bob during the lock");
    tx.rollback().unwrap();
    eventually("the read after the lock", Duration::from_secs(15), &relay.log, || {
        metric_at(m, "turn_user_database_up") == Some(1.0)
    });
}

#[test]
fn redis_user_database() {
    if !prerequisites("redis_user_database", "redis") {
        return;
    }
    let mut db = Redis::new();
    let logs = TempDir::new("redis-logs");
    scenario(&mut db, ports(1), &logs.0);
}

#[test]
fn redis_user_without_the_channel_is_served_on_schedule() {
    if !prerequisites("redis_user_without_the_channel_is_served_on_schedule", "redis") {
        return;
    }
    // An ACL user that may read coturn's keys but not subscribe (Redis 7
    // gives new users no channel): PSUBSCRIBE answers NOPERM.
    let db = Redis::new();
    db.set_relay_user("no-channel", false);
    turnadmin(&db, &["-a", "-u", "alice", "-r", REALM, "-p", "alice-pw"]);
    let logs = TempDir::new("redis-nochannel-logs");
    let url = db.url_as("no-channel");
    let args = ["--realm", REALM, "--user-database", &url, "--user-database-refresh", "2"];
    let relay = Relay::with(ports(3), logs.0.join("turn-relay.log"), &args);
    let (m, log) = (relay.metrics, relay.log.clone());
    eventually("the first read", Duration::from_secs(15), &log, || {
        metric_at(m, "turn_user_database_users") == Some(1.0)
    });
    assert!(relay.allocate("alice", "alice-pw").is_ok(), "alice, read without notifications");
    turnadmin(&db, &["-a", "-u", "bob", "-r", REALM, "-p", "bob-pw"]);
    eventually("bob, at a scheduled read", Duration::from_secs(8), &log, || relay.allocate("bob", "bob-pw").is_ok());
    std::thread::sleep(Duration::from_secs(3));
    let text = relay.log_text();
    assert_eq!(text.matches("Redis refused PSUBSCRIBE").count(), 1, "said once:\n{text}");
    assert!(!text.contains("user database unreachable"), "not an outage:\n{text}");
    assert_eq!(metric_at(m, "turn_user_database_up"), Some(1.0));
    assert!(!text.contains(&db.relay_password), "the password in the log:\n{text}");
}

#[test]
fn sqlite_user_database() {
    if !prerequisites("sqlite_user_database", "sqlite") {
        return;
    }
    let mut db = Sqlite::new();
    let logs = TempDir::new("sqlite-logs");
    scenario(&mut db, ports(2), &logs.0);
}

#[test]
fn check_config_validates_the_url_without_connecting() {
    let run = |url: &str| {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_turn-relay")).args(["--check-config", "--user-database", url]),
            Duration::from_secs(10),
        )
    };
    // Nothing listens there: --check-config does not connect.
    let ok = run("postgresql://turn:pw@127.0.0.1:1/coturn");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = run("mysql://turn:hunter2@127.0.0.1/coturn");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("auth.database") && err.contains("unknown scheme"), "{err}");
    assert!(!err.contains("hunter2"), "the password in an error: {err}");
}

#[test]
fn sighup_while_the_first_read_waits_reloads_instead_of_killing() {
    // A "database" that accepts the connection and never answers: the
    // refresher's first read waits out its connect timeout (5 s).
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("postgresql://turn@{}/coturn", silent.local_addr().unwrap());
    let logs = TempDir::new("sighup-logs");
    let args = ["--realm", REALM, "--user", "static:static-pw", "--user-database", &url];
    let mut relay = Relay::with(ports(5), logs.0.join("turn-relay.log"), &args);
    // The refresher has connected: start-up is past the signal handlers
    // (they come first) and inside the wait for the first read.
    silent.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let _held = loop {
        match silent.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the relay never connected to its database: {e}\n{}", relay.log_text()),
        }
    };
    relay.signal("-HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(relay.child.try_wait().unwrap().is_none(), "SIGHUP during start-up ended the relay:\n{}", relay.log_text());
    let log = relay.log.clone();
    eventually("the reload after start-up", Duration::from_secs(15), &log, || {
        relay.log_text().contains("SIGHUP: credentials and certificates reloaded")
    });
    assert!(relay.allocate("static", "static-pw").is_ok(), "serving after the early SIGHUP");
    assert!(relay.child.try_wait().unwrap().is_none());
}

#[test]
fn a_reload_that_changes_the_realm_or_the_database_is_refused() {
    if !prerequisites("a_reload_that_changes_the_realm_or_the_database_is_refused", "sqlite") {
        return;
    }
    let db = Sqlite::new();
    turnadmin(&db, &["-a", "-u", "alice", "-r", REALM, "-p", "alice-pw"]);
    // The URL from a file (auth.database_file), as an operator keeps a
    // password out of the process list.
    let dir = TempDir::new("reload");
    let url_file = dir.0.join("database-url");
    std::fs::write(&url_file, format!("{}\n", db.url())).unwrap();
    let config = dir.0.join("turn-relay.toml");
    let write = |realm: &str, users: &str| {
        let text = format!(
            "[server]\nrealm = \"{realm}\"\n[auth]\nusers = [{users}]\ndatabase_file = \"{}\"\n",
            url_file.display()
        );
        std::fs::write(&config, text).unwrap();
    };
    write(REALM, "\"static:static-pw\"");
    let relay = Relay::with(ports(4), dir.0.join("turn-relay.log"), &["--config", config.to_str().unwrap()]);
    let log = relay.log.clone();
    let m = relay.metrics;
    eventually("the first read", Duration::from_secs(15), &log, || {
        metric_at(m, "turn_user_database_users") == Some(1.0)
    });
    assert!(relay.allocate("alice", "alice-pw").is_ok(), "alice");

    // Another realm: refused, everything as before.
    write("other.example", "\"static:static-pw\", \"new:new-pw\"");
    relay.signal("-HUP");
    eventually("the refusal", Duration::from_secs(5), &log, || relay.log_text().contains("needs a restart"));
    let text = relay.log_text();
    assert!(text.contains("server.realm"), "{text}");
    assert!(relay.allocate("alice", "alice-pw").is_ok(), "a database user after the refused reload");
    assert!(relay.allocate("static", "static-pw").is_ok(), "the configured user after the refused reload");
    assert_eq!(relay.allocate("new", "new-pw"), Err(401), "nothing of the refused reload applies");

    // Another database (the file changed): refused too, without the URL.
    write(REALM, "\"static:static-pw\", \"new:new-pw\"");
    std::fs::write(&url_file, "sqlite:///nonexistent/other-turndb\n").unwrap();
    relay.signal("-HUP");
    eventually("the second refusal", Duration::from_secs(5), &log, || {
        relay.log_text().matches("needs a restart").count() == 2
    });
    assert!(relay.log_text().contains("auth.database changed"), "{}", relay.log_text());
    assert!(!relay.log_text().contains("other-turndb"), "the URL in the log:\n{}", relay.log_text());
    assert_eq!(relay.allocate("new", "new-pw"), Err(401));

    // Back to the running realm and database: the reload applies.
    std::fs::write(&url_file, db.url()).unwrap();
    relay.signal("-HUP");
    eventually("the reload", Duration::from_secs(5), &log, || relay.allocate("new", "new-pw").is_ok());
    assert!(relay.allocate("alice", "alice-pw").is_ok(), "alice after the reload");
}

#[test]
fn the_database_url_from_a_file_on_the_command_line() {
    let dir = TempDir::new("url-file");
    let file = dir.0.join("url");
    let run = |extra: &[&str]| {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_turn-relay")).arg("--check-config").args(extra),
            Duration::from_secs(10),
        )
    };
    std::fs::write(&file, "postgresql://turn:hunter2@127.0.0.1:1/coturn\n").unwrap();
    let ok = run(&["--user-database-file", file.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(&file, "mysql://turn:hunter2@127.0.0.1/coturn").unwrap();
    let bad = run(&["--user-database-file", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("<command line>: auth.database_file") && err.contains("unknown scheme"), "{err}");
    assert!(!err.contains("hunter2"), "the password in an error: {err}");
}
