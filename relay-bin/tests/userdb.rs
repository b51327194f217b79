//! The user database (`auth.database`) against real servers: a private
//! PostgreSQL (initdb into a temporary directory, on a free loopback port),
//! a private Redis, and an SQLite file, each provisioned with coturn's own
//! `turnadmin`. For each engine, against the `turn-relay` binary:
//!
//! - a user added with `turnadmin -a` can allocate within seconds (the
//!   refresh interval is 30 s, so the change notification is what works),
//!   one deleted with `turnadmin -d` is refused (401);
//! - a REST secret rotated with `turnadmin -s`/`-X`: the new one's
//!   credentials work, the old one's are refused;
//! - peer ranges in coturn's allowed/denied tables open and close peers for
//!   new permissions; coturn's `turnutils_uclient` relays through a range the
//!   database allowed;
//! - SIGHUP keeps the database's users beside the configured ones;
//! - with the database stopped, a running allocation keeps relaying, new
//!   allocations of known users succeed, `turn_user_database_up` is 0 and
//!   `/readyz` (still 200) says why, logged once; restarted, the metric
//!   recovers and new changes are seen again. The Redis password never
//!   appears in the log.
//!
//! Needs root (PostgreSQL runs as the `postgres` user), PostgreSQL's server
//! binaries, redis-server and coturn's tools (`.ci/run` installs them);
//! without them the test is skipped, except in CI where that is a failure.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay_core::wire::{Attribute, Method};
use test_kit::{Login, TurnClient, error_code, recv_datagram};

mod common;
use common::{Answer, free_tcp_port, free_udp_port, have, http_get, metric_at, run_bounded, skip};

const REALM: &str = "example.org";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a change may take to be seen: far below the 30 s schedule.
const SEEN_WITHIN: Duration = Duration::from_secs(8);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("turn-relay-userdb-{tag}-{}", std::process::id()));
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
    /// Adds (`add`) or removes a row of coturn's `allowed_peer_ip` or
    /// `denied_peer_ip` (`list` = "allowed" or "denied").
    fn peer_range(&mut self, list: &str, range: &str, add: bool);
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
        let ids = ids("postgres").ok_or("no postgres user")?;
        let dir = TempDir::new("pg");
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for p in [&dir.0, &data] {
            std::os::unix::fs::chown(p, Some(ids.0), Some(ids.1)).map_err(|e| format!("chown: {e}"))?;
        }
        let out = run_bounded(
            Command::new(format!("{PG_BIN}/initdb"))
                .args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
                .current_dir(&dir.0)
                .uid(ids.0)
                .gid(ids.1),
            Duration::from_secs(120),
        );
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut pg =
            Postgres { dir, port: free_tcp_port("127.0.0.1"), ids, server: Server { child: None, signal: "-INT" } };
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

    fn peer_range(&mut self, list: &str, range: &str, add: bool) {
        let mut c = self.client("coturn");
        let q = if add {
            format!("INSERT INTO {list}_peer_ip (realm, ip_range) VALUES ($1, $2)")
        } else {
            format!("DELETE FROM {list}_peer_ip WHERE realm = $1 AND ip_range = $2")
        };
        c.execute(&q, &[&REALM, &range]).unwrap();
    }

    fn stop(&mut self) {
        self.server.stop();
    }

    fn start(&mut self) {
        let data = self.dir.0.join("data");
        let child = Command::new(format!("{PG_BIN}/postgres"))
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
    password: String,
    server: Server,
}

impl Redis {
    fn new() -> Redis {
        let password = format!("redis-pw-{}", std::process::id());
        let mut r = Redis {
            dir: TempDir::new("redis"),
            port: free_tcp_port("127.0.0.1"),
            password,
            server: Server { child: None, signal: "-TERM" },
        };
        r.start();
        r
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }
}

impl Db for Redis {
    fn engine(&self) -> &'static str {
        "redis"
    }

    fn url(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    fn turnadmin(&self) -> Vec<String> {
        vec!["-N".into(), format!("ip=127.0.0.1 port={} password={} dbname=0", self.port, self.password)]
    }

    fn peer_range(&mut self, list: &str, range: &str, add: bool) {
        let key = format!("turn/realm/{REALM}/{list}-peer-ip");
        let cmd = if add { "SADD" } else { "SREM" };
        let _: i64 = redis::cmd(cmd).arg(key).arg(range).query(&mut self.con()).unwrap();
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
            let up = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "Redis did not come up on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn secret(&self) -> Option<&str> {
        Some(&self.password)
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

    fn peer_range(&mut self, list: &str, range: &str, add: bool) {
        let c = rusqlite::Connection::open(&self.path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let q = if add {
            format!("INSERT INTO {list}_peer_ip (realm, ip_range) VALUES (?1, ?2)")
        } else {
            format!("DELETE FROM {list}_peer_ip WHERE realm = ?1 AND ip_range = ?2")
        };
        c.execute(&q, [REALM, range]).unwrap();
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
    fn start(db: &dyn Db, ports: (u16, u16), log: PathBuf) -> Relay {
        let server: SocketAddr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1")).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port("127.0.0.1")).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_turn-relay"))
            .args(["--listen", &server.to_string(), "--relay-ip", "127.0.0.1"])
            .args(["--relay-ports", &format!("{}-{}", ports.0, ports.1), "--quarantine", "1"])
            .args(["--realm", REALM, "--user", "static:static-pw"])
            .args(["--user-database", &db.url(), "--user-database-refresh", "30"])
            .args(["--metrics", &metrics.to_string(), "--shards", "1", "--no-pin", "--log-level", "info"])
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
            if !Path::new(PG_BIN).join("postgres").exists() {
                missing.push(format!("{PG_BIN}/postgres"));
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
fn scenario(db: &mut dyn Db, ports: (u16, u16), log_dir: &Path) {
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
    let echo_port = free_udp_port("127.0.0.3");
    let _echo = common::Killed(
        Command::new("turnutils_peer")
            .args(["-L", "127.0.0.3", "-p", &echo_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    uclient(&relay, "bob", "bob-pw", format!("127.0.0.3:{echo_port}").parse().unwrap());
    db.peer_range("denied", "127.0.0.2", true);
    eventually("the denied peer", SEEN_WITHIN, &log, || permission(&relay, "bob", "bob-pw", peer_addr) == 403);
    db.peer_range("denied", "127.0.0.2", false);
    eventually("the deny removed", SEEN_WITHIN, &log, || permission(&relay, "bob", "bob-pw", peer_addr) == 0);

    // Secret rotation: the new secret's credentials work, the old one's not.
    turnadmin(db, &["-s", "south-secret", "-r", REALM]);
    turnadmin(db, &["-X", "north-secret", "-r", REALM]);
    let (south_name, south_pw) = rest_login("south-secret", "carol");
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
}

/// A relay port range of its own for each engine's test.
fn ports(slot: u16) -> (u16, u16) {
    let lo = 30000 + (std::process::id() % 60) as u16 * 100 + slot * 30;
    (lo, lo + 29)
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
    scenario(&mut db, ports(0), &logs.0);
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
