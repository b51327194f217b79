//! Redis: coturn's keys (`turn/realm/<realm>/user/<name>/key`, the sets
//! `turn/realm/<realm>/secret`, `…/allowed-peer-ip`, `…/denied-peer-ip`),
//! and keyspace notifications on `turn/realm/<realm>/*` for changes, which
//! the server sends only with `notify-keyspace-events` set (`K$sg` or
//! wider); without them the schedule alone applies. The same when the
//! user may not subscribe (a Redis 7 ACL user without the channel
//! pattern): the refresher says so once and reads on schedule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::{Connection, Value};

use super::{CONNECT_TIMEOUT, Ctx, Snapshot, Wake};

/// How long one command may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys fetched per MGET.
const BATCH: usize = 1000;
/// Set once the missing keyspace notifications were logged.
static NOTIFY_OFF_LOGGED: AtomicBool = AtomicBool::new(false);
/// Set once a refused PSUBSCRIBE was logged.
static SUBSCRIBE_REFUSED_LOGGED: AtomicBool = AtomicBool::new(false);
/// The most queued keyspace messages taken before one read.
const MAX_DRAIN: usize = 100_000;

/// `s` with Redis glob characters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn text(bytes: Vec<u8>) -> Option<String> {
    String::from_utf8(bytes).ok()
}

fn read(con: &mut Connection, realm: &str) -> redis::RedisResult<Snapshot> {
    let base = format!("turn/realm/{realm}/");
    let user_prefix = format!("{base}user/");
    let pattern = format!("{}*/key", glob_escape(&user_prefix));
    let keys: Vec<Vec<u8>> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(&pattern)
        .arg("COUNT")
        .arg(BATCH)
        .clone()
        .iter(con)?
        .collect();
    let mut snap = Snapshot::default();
    for chunk in keys.chunks(BATCH) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(chunk).query(con)?;
        for (key, value) in chunk.iter().zip(values) {
            let name = std::str::from_utf8(key)
                .ok()
                .and_then(|k| k.strip_prefix(user_prefix.as_str()))
                .and_then(|k| k.strip_suffix("/key"));
            if let (Some(name), Some(value)) = (name, value.and_then(text)) {
                snap.users.insert(name.to_owned(), value);
            }
        }
    }
    let members = |con: &mut Connection, set: &str| -> redis::RedisResult<Vec<String>> {
        let v: Vec<Vec<u8>> = redis::cmd("SMEMBERS").arg(format!("{base}{set}")).query(con)?;
        Ok(v.into_iter().filter_map(text).collect())
    };
    snap.secrets = members(con, "secret")?;
    snap.allowed = members(con, "allowed-peer-ip")?;
    snap.denied = members(con, "denied-peer-ip")?;
    Ok(snap)
}

/// Whether the server's `notify-keyspace-events` sends what the refresher
/// listens for (`K` and the string, set and generic classes); `None` when
/// `CONFIG GET` is not allowed.
fn notifications_on(con: &mut Connection) -> Option<bool> {
    let reply: Value = redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query(con).ok()?;
    let flags: String = match reply {
        Value::Array(items) => items.get(1).and_then(|v| redis::from_redis_value(v).ok())?,
        Value::Map(items) => items.first().and_then(|(_, v)| redis::from_redis_value(v).ok())?,
        _ => return None,
    };
    let all = flags.contains('A');
    Some(flags.contains('K') && (all || (flags.contains('$') && flags.contains('s') && flags.contains('g'))))
}

/// One connection pair's life: subscribe, read, wait for a keyspace event
/// or the schedule, read again.
pub(super) fn session(url: &str, ctx: &mut Ctx) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| format!("URL: {:?}", e.kind()))?;
    let db = client.get_connection_info().redis.db;
    let connect = || -> Result<Connection, String> {
        let con = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        con.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        con.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        Ok(con)
    };
    let mut data = connect()?;
    if notifications_on(&mut data) == Some(false) && !NOTIFY_OFF_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            "Redis keyspace notifications are off (notify-keyspace-events): user database changes are seen at the \
             next scheduled refresh (auth.database_refresh)"
        );
    }
    let mut sub = connect()?;
    let base = format!("turn/realm/{}/", ctx.realm());
    let pattern = format!("__keyspace@{db}__:{}*", glob_escape(&base));
    // PSUBSCRIBE as a plain command, which returns the server's refusal
    // (PubSub::psubscribe drops it, leaving a subscription that never
    // delivers).
    let subscribed = match redis::cmd("PSUBSCRIBE").arg(&pattern).query::<Value>(&mut sub) {
        Ok(_) => true,
        // The server refused it (an ACL user without `&<pattern>`, since
        // Redis 7 the default, or a server without pub/sub): the schedule
        // still applies.
        Err(e) if e.code().is_some() => {
            if !SUBSCRIBE_REFUSED_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    pattern = %pattern,
                    "Redis refused PSUBSCRIBE ({e}): user database changes are seen at the next scheduled refresh \
                     (auth.database_refresh); grant the user the channel (ACL SETUSER <user> '&<pattern>')"
                );
            }
            false
        }
        Err(e) => return Err(format!("PSUBSCRIBE: {e}")),
    };
    let mut events = sub.as_pubsub();
    let mut why = "connected";
    while !ctx.stopping() {
        let realm = ctx.realm().to_owned();
        if subscribed {
            // Every write queued so far is covered by the read that
            // follows: one read for a burst, not one per key.
            drain(&mut events)?;
        }
        let snap = read(&mut data, &realm).map_err(|e| format!("read: {e}"))?;
        ctx.success(snap, why);
        let wake = ctx.wait(|slice| {
            if !subscribed {
                std::thread::sleep(slice);
                return Ok(false);
            }
            events.set_read_timeout(Some(slice.max(Duration::from_millis(10)))).map_err(|e| e.to_string())?;
            match events.get_message() {
                Ok(_) => Ok(true),
                Err(e) if e.is_timeout() => Ok(false),
                Err(e) => Err(format!("keyspace events: {e}")),
            }
        })?;
        why = match wake {
            Wake::Changed => "notified",
            Wake::Schedule => "schedule",
        };
    }
    Ok(())
}

/// Takes the keyspace messages already queued (bounded), without waiting
/// for more than a moment.
fn drain(events: &mut redis::PubSub<'_>) -> Result<usize, String> {
    events.set_read_timeout(Some(Duration::from_millis(1))).map_err(|e| e.to_string())?;
    let mut taken = 0;
    while taken < MAX_DRAIN {
        match events.get_message() {
            Ok(_) => taken += 1,
            Err(e) if e.is_timeout() => break,
            Err(e) => return Err(format!("keyspace events: {e}")),
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_escape() {
        assert_eq!(super::glob_escape("turn/realm/a*b?[c]\\/"), "turn/realm/a\\*b\\?\\[c\\]\\\\/");
    }
}
