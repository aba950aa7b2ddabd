//! The SQLite journal: local changes with their sequence numbers, each
//! peer's acknowledged position, remote changes staged for applying, and
//! the last-writer-wins state per key. One [`Journal`] type; its methods
//! live beside the tables they use: `log` (local changes),
//! `state` (latest version per key), `inbox` (staged remote changes, a
//! frame per row),
//! `peers` (positions, members, meta), `retention` (what may be trimmed),
//! `schema` (migrations).
//!
//! Durability: the journal runs in WAL mode with `synchronous=FULL`. A
//! method that returns `Ok` has committed its transaction and the WAL has
//! been fsync'ed: the change survives a crash of the process and of the
//! machine. Nothing is durable before that return. A method that runs
//! several statements runs them in one IMMEDIATE transaction (`write`
//! below): all of them are durable, or none. A method that runs a single
//! statement (`set_acked`, `save_member`, `set_meta`, `inbox_done`,
//! `purge_state`) lets SQLite commit that statement alone, with the same
//! guarantee on return.
//!
//! Each thread of the engine opens its own [`Journal`] on the same file;
//! WAL lets readers run alongside a writer. Writers of one process queue
//! at the file's [`WriteGate`] and are woken when the writer before them
//! is done; SQLite's busy handler (`busy_wait`) is left for writers it
//! does not see (another process, a gate waited on too long).

mod inbox;
mod log;
mod peers;
mod quarantine;
mod retention;
mod schema;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::JournalError;

pub use inbox::{Incoming, StageOutcome, Staged};
pub use quarantine::{Quarantined, Which};
use schema::SCHEMA_VERSION;

pub struct Journal {
    conn: Connection,
    path: PathBuf,
    gate: Arc<WriteGate>,
}

/// One writer at a time among this process's connections to a journal
/// file: a writer that finds SQLite's write lock taken would otherwise
/// sleep in steps (`busy_wait`) and find it free only at its next step.
/// Here it sleeps until the writer before it leaves.
#[derive(Default)]
struct WriteGate {
    busy: Mutex<bool>,
    left: Condvar,
}

/// Longer than any one write should take; past it a writer goes on to
/// SQLite's own lock (and busy handler) without the gate, so that a
/// writer stuck elsewhere never stops the others for good.
const GATE_WAIT: Duration = Duration::from_secs(2);

impl WriteGate {
    /// The gate of the journal file at `path`, shared by every connection
    /// of this process to it.
    fn of(path: &Path) -> Arc<WriteGate> {
        static GATES: OnceLock<Mutex<HashMap<PathBuf, Weak<WriteGate>>>> = OnceLock::new();
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut gates = GATES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        gates.retain(|_, g| g.strong_count() > 0);
        if let Some(g) = gates.get(&key).and_then(Weak::upgrade) {
            return g;
        }
        let g = Arc::new(WriteGate::default());
        gates.insert(key, Arc::downgrade(&g));
        g
    }

    /// Waits until no other writer of this process is inside, then
    /// enters; the returned pass leaves on drop. None after GATE_WAIT.
    fn enter(&self) -> Option<GatePass<'_>> {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (mut busy, wait) = self
            .left
            .wait_timeout_while(busy, GATE_WAIT, |b| *b)
            .unwrap_or_else(|p| p.into_inner());
        if wait.timed_out() {
            return None;
        }
        *busy = true;
        Some(GatePass(self))
    }
}

struct GatePass<'g>(&'g WriteGate);

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.left.notify_one();
    }
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

/// A failure inside a journal method, before [`Fault::at`] names the
/// journal's file in it: the one mapping onto [`JournalError`]. SQLite
/// errors become faults by `?`.
#[derive(Debug)]
enum Fault {
    Sqlite(rusqlite::Error),
    /// A stored record that does not decode: `seq` is its log sequence or
    /// inbox id (-1 for a state row).
    BadRecord {
        seq: i64,
        detail: String,
    },
    /// The file's schema is newer than this code (`PRAGMA user_version`).
    TooNew {
        found: i64,
    },
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Fault::Sqlite(e)
    }
}

impl Fault {
    /// The one mapping of a journal failure onto [`JournalError`].
    fn at(self, path: &Path) -> JournalError {
        let path = path.display().to_string();
        match self {
            Fault::Sqlite(source) => JournalError::Sqlite { path, source },
            Fault::BadRecord { seq, detail } => JournalError::BadRecord { path, seq, detail },
            Fault::TooNew { found } => JournalError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            },
        }
    }
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
        match Self::open_inner(path) {
            Ok(j) => Ok(j),
            Err(Fault::Sqlite(e)) if is_corruption(&e) => {
                let moved = Self::move_aside(path);
                Err(JournalError::CorruptMovedAside {
                    path: path.display().to_string(),
                    detail: e.to_string(),
                    moved_to: moved,
                })
            }
            Err(e) => Err(e.at(path)),
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

    fn open_inner(path: &Path) -> Result<Journal, Fault> {
        crate::os::sqlite_skip_memory_statistics();
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_handler(Some(busy_wait))?;
        // Room for every statement a thread runs per batch (rusqlite's
        // default of 16 would evict some of them in turn).
        conn.set_prepared_statement_cache_capacity(64);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let mut j = Journal {
            conn,
            gate: WriteGate::of(path),
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

    /// Runs `f` on the connection without a transaction of its own: reads,
    /// and single statements SQLite commits alone.
    fn run<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Fault>) -> Result<T, JournalError> {
        f(&self.conn).map_err(|e| e.at(&self.path))
    }

    /// Runs the single write statement of `f`, which SQLite commits alone,
    /// inside the write gate.
    fn run_write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Fault>,
    ) -> Result<T, JournalError> {
        let _pass = self.gate.enter();
        self.run(f)
    }

    /// Runs `f` in one IMMEDIATE transaction (the write lock taken at its
    /// start) and commits it: durable when this returns `Ok`; rolled back
    /// when `f` fails.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction) -> Result<T, Fault>,
    ) -> Result<T, JournalError> {
        self.transaction(TransactionBehavior::Immediate, f)
    }

    fn transaction<T>(
        &mut self,
        behavior: TransactionBehavior,
        f: impl FnOnce(&Transaction) -> Result<T, Fault>,
    ) -> Result<T, JournalError> {
        let _pass = match behavior {
            TransactionBehavior::Deferred => None,
            _ => self.gate.enter(),
        };
        let conn = &mut self.conn;
        let result = (|| {
            let tx = conn.transaction_with_behavior(behavior)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        result.map_err(|e: Fault| e.at(&self.path))
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
