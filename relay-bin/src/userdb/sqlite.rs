//! SQLite: coturn's tables in the file turnadmin `-b` writes, opened read
//! only. SQLite has no notifications between processes; the refresher
//! polls `PRAGMA data_version`, which changes whenever another connection
//! commits to the file, and reads the tables only then (or on schedule).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Ctx, Snapshot, Wake};

fn read(conn: &mut Connection, realm: &str) -> rusqlite::Result<Snapshot> {
    let tx = conn.transaction()?;
    let mut snap = Snapshot::default();
    {
        let mut st = tx.prepare("SELECT name, hmackey FROM turnusers_lt WHERE realm = ?1")?;
        let rows = st.query_map([realm], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))?;
        for row in rows {
            if let (Some(name), Some(key)) = row? {
                snap.users.insert(name, key);
            }
        }
        let column = |query: &str| -> rusqlite::Result<Vec<String>> {
            let mut st = tx.prepare(query)?;
            let rows = st.query_map([realm], |r| r.get::<_, Option<String>>(0))?;
            let mut out = Vec::new();
            for v in rows {
                out.extend(v?);
            }
            Ok(out)
        };
        snap.secrets = column("SELECT value FROM turn_secret WHERE realm = ?1")?;
        snap.allowed = column("SELECT ip_range FROM allowed_peer_ip WHERE realm IN (?1, '')")?;
        snap.denied = column("SELECT ip_range FROM denied_peer_ip WHERE realm IN (?1, '')")?;
    }
    tx.finish()?;
    Ok(snap)
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

/// One open file's life: read, poll for a commit by another process or
/// wait for the schedule, read again.
pub(super) fn session(path: &Path, ctx: &mut Ctx) -> Result<(), String> {
    // Read only: never creates the file, never takes a write lock.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| format!("open: {e}"))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut why = "opened";
    while !ctx.stopping() {
        let realm = ctx.realm().to_owned();
        let version = data_version(&conn).map_err(|e| format!("read: {e}"))?;
        let snap = read(&mut conn, &realm).map_err(|e| format!("read: {e}"))?;
        ctx.success(snap, why);
        let wake = ctx.wait(|slice| {
            std::thread::sleep(slice.min(Duration::from_millis(250)));
            if !path.exists() {
                return Err("the database file is gone".to_owned());
            }
            Ok(data_version(&conn).map_err(|e| format!("read: {e}"))? != version)
        })?;
        why = match wake {
            Wake::Changed => "changed",
            Wake::Schedule => "schedule",
        };
    }
    Ok(())
}
