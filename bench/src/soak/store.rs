//! The store check of the soak: after whelm-control has stopped, its
//! SQLite file is opened read-only and every acknowledged message must be
//! there as a row of `messages` with its sender, the direct-message
//! `channel_id` of sender and recipient (PROTOCOLS.md section 1,
//! "Persistence") and the exact content.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use whelm_shared::dm::dm_channel_id;

use super::messages::AckedMsg;

/// Missing messages listed in the report at most.
const KEEP_MISSING: usize = 10;

/// What the store check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreCheck {
    /// How the store was read.
    pub method: String,
    /// Rows of ours (content `soak ...`) in `messages`.
    pub rows: u64,
    /// Acknowledged messages checked.
    pub checked: u64,
    /// Acknowledged messages without their row.
    pub missing: u64,
    /// The first few of those.
    pub missing_samples: Vec<String>,
}

/// Checks `acked` against the SQLite file at `path` (read-only).
pub fn check_sqlite(path: &Path, acked: &[AckedMsg]) -> anyhow::Result<StoreCheck> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    let mut st = conn
        .prepare("SELECT sender_id, channel_id, content FROM messages WHERE content LIKE 'soak %'")
        .with_context(|| format!("querying messages in {}", path.display()))?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .with_context(|| format!("reading messages of {}", path.display()))?;
    let mut stored = HashSet::new();
    for row in rows {
        stored.insert(row.with_context(|| format!("reading a row of {}", path.display()))?);
    }
    let mut c = StoreCheck {
        method: format!(
            "SQLite file {} opened read-only after whelm-control stopped",
            path.display()
        ),
        rows: stored.len() as u64,
        checked: acked.len() as u64,
        ..StoreCheck::default()
    };
    for m in acked {
        let key = (
            i64::try_from(m.sender_id).unwrap_or(i64::MAX),
            i64::from(dm_channel_id(m.sender_id, m.recipient_id)),
            m.content.clone(),
        );
        if !stored.contains(&key) {
            c.missing += 1;
            if c.missing_samples.len() < KEEP_MISSING {
                c.missing_samples.push(format!(
                    "{} -> {}: {}",
                    m.sender_id, m.recipient_id, m.content
                ));
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_present_and_missing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = Connection::open(&path).unwrap();
        w.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, sender_id INTEGER, \
             channel_id INTEGER, content TEXT, timestamp TEXT)",
        )
        .unwrap();
        w.execute(
            "INSERT INTO messages (sender_id, channel_id, content) VALUES (1, ?1, 'soak 0 0')",
            [i64::from(dm_channel_id(1, 2))],
        )
        .unwrap();
        w.execute(
            "INSERT INTO messages (sender_id, channel_id, content) VALUES (1, 7, 'soak 0 1')",
            [],
        )
        .unwrap();
        drop(w);
        let m = |c: &str| AckedMsg {
            sender_id: 1,
            recipient_id: 2,
            content: c.into(),
        };
        let c = check_sqlite(&path, &[m("soak 0 0"), m("soak 0 1"), m("soak 0 2")]).unwrap();
        assert_eq!((c.rows, c.checked, c.missing), (2, 3, 2));
        assert_eq!(c.missing_samples, ["1 -> 2: soak 0 1", "1 -> 2: soak 0 2"]);
    }
}
