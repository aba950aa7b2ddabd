//! The SQLite journal: local changes with their sequence numbers, each
//! peer's acknowledged position, remote changes staged for applying, and
//! the last-writer-wins state per key.
//!
//! Durability: the journal runs in WAL mode with `synchronous=FULL`. A
//! method that returns `Ok` has committed its transaction and the WAL has
//! been fsync'ed: the change survives a crash of the process and of the
//! machine. Nothing is durable before that return.
//!
//! Each thread of the engine opens its own [`Journal`] on the same file;
//! SQLite serialises writers (busy timeout) and WAL lets readers run
//! alongside a writer.

mod inbox;
mod log;
mod peers;
mod retention;
mod schema;
mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::JournalError;

pub use inbox::{StageOutcome, Staged};
use schema::SCHEMA_VERSION;

pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

/// Waits for another of this process's connections (ingest, network,
/// applier) to finish its write: in steps of 0.2 ms, then 1 ms, about 10 s
/// in all. SQLite's own busy timeout sleeps up to 100 ms a step, which
/// stalls the network thread behind a stream of small commits
/// (durability "journal").
fn busy_wait(retries: i32) -> bool {
    let step = match retries {
        0..=1999 => Duration::from_micros(200),
        2000..=11_599 => Duration::from_millis(1),
        _ => return false,
    };
    std::thread::sleep(step);
    true
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt) | Some(rusqlite::ErrorCode::NotADatabase)
    )
}

impl Journal {
    /// Opens (creating if absent) the journal at `path` and brings its
    /// schema up to date. A corrupt file is moved aside, never deleted, and
    /// reported as [`JournalError::CorruptMovedAside`]; the caller may then
    /// open again to start afresh.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let p = path.display().to_string();
        let sq = |source| JournalError::Sqlite {
            path: p.clone(),
            source,
        };
        match Self::open_inner(path) {
            Ok(j) => Ok(j),
            Err(e) if is_corruption(&e) => {
                let moved = Self::move_aside(path);
                Err(JournalError::CorruptMovedAside {
                    path: p.clone(),
                    detail: e.to_string(),
                    moved_to: moved,
                })
            }
            Err(rusqlite::Error::SqliteFailure(f, Some(msg)))
                if msg.starts_with("sersync-too-new:") =>
            {
                let found = msg["sersync-too-new:".len()..].parse().unwrap_or(-1);
                let _ = f;
                Err(JournalError::TooNew {
                    path: p,
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            Err(e) => Err(sq(e)),
        }
    }

    fn move_aside(path: &Path) -> String {
        let stamp = crate::hlc::wall_ms();
        let target = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
        let _ = std::fs::rename(path, &target);
        for ext in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{ext}", path.display()));
            let _ = std::fs::rename(&side, format!("{}{ext}", target.display()));
        }
        target.display().to_string()
    }

    fn open_inner(path: &Path) -> Result<Journal, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_handler(Some(busy_wait))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let mut j = Journal {
            conn,
            path: path.to_path_buf(),
        };
        j.migrate()?;
        // A cheap read of every table catches a file that is not ours or
        // is damaged in its schema pages.
        j.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?;
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maps SQLite errors to this journal's error naming its file, for
    /// use while a transaction borrows the connection.
    fn sq(&self) -> impl Fn(rusqlite::Error) -> JournalError {
        let path = self.path.display().to_string();
        move |source| JournalError::Sqlite {
            path: path.clone(),
            source,
        }
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Contact, Op, Record};

    pub(super) fn rec(aor: &str, cseq: i32) -> Record {
        Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: b"location".to_vec(),
                aor: aor.as_bytes().to_vec(),
                contact: format!("sip:{aor}@10.0.0.9").into_bytes(),
                cseq,
                ..Default::default()
            },
        }
    }

    pub(super) fn expiring(aor: &str, op: Op, expires: i64) -> Record {
        let Record::Contact { mut contact, .. } = rec(aor, 1) else {
            unreachable!()
        };
        contact.expires = expires;
        Record::Contact { op, contact }
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        match Journal::open(&path) {
            Err(JournalError::CorruptMovedAside { moved_to, .. }) => {
                assert!(std::path::Path::new(&moved_to).exists());
                assert!(!path.exists());
            }
            other => panic!("expected corruption error, got {:?}", other.err()),
        }
        assert!(Journal::open(&path).is_ok());
    }
}
