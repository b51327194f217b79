//! PostgreSQL: coturn's tables read in one read-only transaction, and
//! `LISTEN turn_relay_userdb` for changes (the operator's trigger sends
//! the notification; without it the schedule alone applies).
//!
//! Nothing may hold the refresher forever: each read's statements end after
//! [`STATEMENT_TIMEOUT`] (a lock someone holds on coturn's tables, a
//! server that stalls), a connection attempt after the connect timeout, and
//! a peer that vanishes is noticed by TCP keepalives and the TCP user
//! timeout; each counts as a failed refresh.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::{Ctx, PG_CHANNEL, Snapshot, Wake};

/// How long one read's statements may run (`SET LOCAL statement_timeout`,
/// which a connection pooler passes on, unlike a startup option).
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sent data may stay unacknowledged before the connection is
/// given up (`TCP_USER_TIMEOUT`), unless the URL says otherwise.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL error as one line, without the connection's parameters.
pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut line = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                line = format!("{line}: {s}");
                source = s.source();
            }
            line
        }
    }
}

fn connect(url: &str) -> Result<Client, String> {
    let mut config: postgres::Config = url.parse().map_err(|e| describe(&e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(super::CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("turn-relay");
    }
    // A database that vanishes without closing the connection (a host
    // down, a cable out) is noticed within a minute: idle, by keepalives
    // (20 s, then 3 probes 5 s apart); with a request unanswered, by the
    // TCP user timeout.
    config.keepalives(true).keepalives_idle(Duration::from_secs(20));
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(5));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    config.connect(NoTls).map_err(|e| format!("connect: {}", describe(&e)))
}

/// The realm's rows. Peer ranges of the empty realm apply to every realm,
/// as in coturn.
fn read(client: &mut Client, realm: &str) -> Result<Snapshot, postgres::Error> {
    let mut tx = client.build_transaction().read_only(true).start()?;
    tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", STATEMENT_TIMEOUT.as_millis()))?;
    let mut snap = Snapshot::default();
    for row in tx.query("SELECT name, hmackey FROM turnusers_lt WHERE realm = $1", &[&realm])? {
        if let (Some(name), Some(key)) = (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1)) {
            snap.users.insert(name, key);
        }
    }
    let column =
        |tx: &mut postgres::Transaction<'_>, query: &str, both: bool| -> Result<Vec<String>, postgres::Error> {
            let rows = if both { tx.query(query, &[&realm, &""])? } else { tx.query(query, &[&realm])? };
            Ok(rows.iter().filter_map(|r| r.get::<_, Option<String>>(0)).collect())
        };
    snap.secrets = column(&mut tx, "SELECT value FROM turn_secret WHERE realm = $1", false)?;
    snap.allowed = column(&mut tx, "SELECT ip_range FROM allowed_peer_ip WHERE realm IN ($1, $2)", true)?;
    snap.denied = column(&mut tx, "SELECT ip_range FROM denied_peer_ip WHERE realm IN ($1, $2)", true)?;
    tx.commit()?;
    Ok(snap)
}

/// One connection's life: listen, read, wait for a notification or the
/// schedule, read again; returns the error that ended it.
pub(super) fn session(url: &str, ctx: &mut Ctx) -> Result<(), String> {
    let mut client = connect(url)?;
    client.batch_execute(&format!("LISTEN {PG_CHANNEL}")).map_err(|e| format!("LISTEN: {}", describe(&e)))?;
    let mut why = "connected";
    while !ctx.stopping() {
        let realm = ctx.realm().to_owned();
        // Notifications already here are covered by this read (bounded).
        {
            let mut notes = client.notifications();
            let mut queued = notes.iter();
            for _ in 0..100_000 {
                if !matches!(queued.next(), Ok(Some(_))) {
                    break;
                }
            }
        }
        let snap = read(&mut client, &realm).map_err(|e| format!("read: {}", describe(&e)))?;
        ctx.success(snap, why);
        let wake = ctx.wait(|slice| {
            let first = client.notifications().timeout_iter(slice).next();
            match first {
                Ok(Some(_)) => {
                    // Take whatever else is queued: one read covers them all.
                    let mut notes = client.notifications();
                    let mut queued = notes.iter();
                    while let Ok(Some(_)) = queued.next() {}
                    Ok(true)
                }
                Ok(None) if client.is_closed() => Err("the connection closed".to_owned()),
                Ok(None) => Ok(false),
                Err(e) => Err(format!("waiting for notifications: {}", describe(&e))),
            }
        })?;
        why = match wake {
            Wake::Changed => "notified",
            Wake::Schedule => "schedule",
        };
    }
    Ok(())
}
