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

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::codec;
use crate::error::JournalError;
use crate::record::{Change, Record};

/// Schema version this code writes (PRAGMA user_version).
const SCHEMA_VERSION: i64 = 6;

pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

/// Keeps the newer of two versions of a key: last writer wins on
/// (hlc, origin). Executes to 0 rows when the held version is newer.
const STATE_LWW: &str = "INSERT INTO state (key, hlc, origin, body, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT(key) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, body = excluded.body,
                                    expires_at = excluded.expires_at
     WHERE excluded.hlc > state.hlc OR (excluded.hlc = state.hlc AND excluded.origin > state.origin)";

/// [`STATE_LWW`] for this node's own changes: also executes to 0 rows when
/// the state already holds the same body (a scan or a start-up comparison
/// reporting what is known: nothing to journal).
const STATE_LOCAL: &str = "INSERT INTO state (key, hlc, origin, body, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT(key) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, body = excluded.body,
                                    expires_at = excluded.expires_at
     WHERE (excluded.hlc > state.hlc OR (excluded.hlc = state.hlc AND excluded.origin > state.origin))
       AND excluded.body IS NOT state.body";

/// When a key's state row may go (see [`Journal::purge_state`]): a
/// contact's absolute expiry, live or deleted. None for what never
/// expires (aliases, permanent contacts): kept, tombstones included.
fn expires_at(rec: &Record) -> Option<i64> {
    match rec {
        Record::Contact { contact, .. } if contact.expires > 0 => Some(contact.expires),
        _ => None,
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

/// Stages a remote change; its key lets the applier check it against the
/// state in the same query that reads it.
const INBOX_INSERT: &str = "INSERT INTO inbox (origin, hlc, body, key) VALUES (?1, ?2, ?3, ?4)";

/// One row of a snapshot: a key's latest version and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapRow {
    pub origin: String,
    pub hlc: u64,
    pub record: Record,
}

/// A remote change staged for applying.
#[derive(Debug, Clone)]
pub struct Staged {
    pub id: i64,
    pub origin: String,
    pub hlc: u64,
    pub record: Record,
}

/// What staging a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageOutcome {
    /// Highest origin sequence now held (the acknowledgement to send).
    pub upto: u64,
    /// Changes new to this node.
    pub fresh: usize,
    /// Of those, older than the state already held (last writer wins).
    pub superseded: usize,
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

    fn migrate(&mut self) -> Result<(), rusqlite::Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!("sersync-too-new:{version}")),
            ));
        }
        if version < 1 {
            tx.execute_batch(
                "CREATE TABLE log (
                     seq INTEGER PRIMARY KEY,
                     hlc INTEGER NOT NULL,
                     body BLOB NOT NULL);
                 CREATE TABLE peer_acked (
                     node_id TEXT PRIMARY KEY,
                     acked INTEGER NOT NULL);
                 CREATE TABLE received (
                     origin TEXT PRIMARY KEY,
                     seq INTEGER NOT NULL);
                 CREATE TABLE inbox (
                     id INTEGER PRIMARY KEY,
                     origin TEXT NOT NULL,
                     hlc INTEGER NOT NULL,
                     body BLOB NOT NULL);
                 CREATE TABLE state (
                     key BLOB PRIMARY KEY,
                     hlc INTEGER NOT NULL,
                     origin TEXT NOT NULL,
                     body BLOB NOT NULL);
                 PRAGMA user_version = 1;",
            )?;
        }
        if version < 2 {
            // meta.seq_floor: the highest sequence ever trimmed, so the
            // sequence never restarts when the log is emptied.
            // snapshot_in: progress of a snapshot being received.
            tx.execute_batch(
                "CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
                 CREATE TABLE snapshot_in (
                     origin TEXT PRIMARY KEY,
                     upto INTEGER NOT NULL,
                     after_key BLOB NOT NULL);
                 PRAGMA user_version = 2;",
            )?;
        }
        if version < 3 {
            // Cluster members learned from peers, so a restart finds them
            // even when the configured seeds are down. forgotten = 1 keeps
            // a removed member from coming back through gossip.
            tx.execute_batch(
                "CREATE TABLE members (
                     node_id TEXT PRIMARY KEY,
                     address TEXT NOT NULL,
                     forgotten INTEGER NOT NULL DEFAULT 0);
                 PRAGMA user_version = 3;",
            )?;
        }
        if version < 4 {
            // Expired contacts and their tombstones leave the state once
            // retention has passed (purge_state); the expiry is a column so
            // that the purge needs no decoding.
            tx.execute_batch(
                "ALTER TABLE state ADD COLUMN expires_at INTEGER;
                 CREATE INDEX state_expiry ON state (expires_at) WHERE expires_at IS NOT NULL;",
            )?;
            let rows: Vec<(Vec<u8>, Vec<u8>)> = {
                let mut q =
                    tx.prepare("SELECT key, body FROM state WHERE key >= X'63' AND key < X'64'")?;
                let r = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                r.collect::<Result<_, _>>()?
            };
            let mut up = tx.prepare("UPDATE state SET expires_at = ?2 WHERE key = ?1")?;
            for (key, body) in rows {
                if let Some(at) = codec::decode::<Record>(&body)
                    .ok()
                    .as_ref()
                    .and_then(expires_at)
                {
                    up.execute(params![key, at])?;
                }
            }
            drop(up);
            tx.execute_batch("PRAGMA user_version = 4;")?;
        }
        if version < 5 {
            // The state is looked up and written by key for every change:
            // clustered on its key it is one b-tree instead of a table and
            // its key index.
            tx.execute_batch(
                "CREATE TABLE state_by_key (
                     key BLOB PRIMARY KEY,
                     hlc INTEGER NOT NULL,
                     origin TEXT NOT NULL,
                     body BLOB NOT NULL,
                     expires_at INTEGER) WITHOUT ROWID;
                 INSERT INTO state_by_key SELECT key, hlc, origin, body, expires_at FROM state;
                 DROP TABLE state;
                 ALTER TABLE state_by_key RENAME TO state;
                 CREATE INDEX state_expiry ON state (expires_at) WHERE expires_at IS NOT NULL;
                 PRAGMA user_version = 5;",
            )?;
        }
        if version < 6 {
            // Staged changes carry their key (see INBOX_INSERT).
            tx.execute_batch("ALTER TABLE inbox ADD COLUMN key BLOB;")?;
            let rows: Vec<(i64, Vec<u8>)> = {
                let mut q = tx.prepare("SELECT id, body FROM inbox")?;
                let r = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                r.collect::<Result<_, _>>()?
            };
            let mut up = tx.prepare("UPDATE inbox SET key = ?2 WHERE id = ?1")?;
            for (id, body) in rows {
                if let Ok(rec) = codec::decode::<Record>(&body) {
                    up.execute(params![id, rec.key()])?;
                }
            }
            drop(up);
            tx.execute_batch("PRAGMA user_version = 6;")?;
        }
        tx.commit()
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

    /// Appends local changes in one transaction. A change identical to
    /// the state already held for its key (a rescan reporting an unchanged
    /// alias, a repeated deletion) is not journaled: every peer has it or
    /// will get it from the entry that set that state. Returns the last
    /// sequence and how many changes were journaled. Durable on return.
    pub fn append_local(
        &mut self,
        node_id: &str,
        records: &[(u64, Record)],
    ) -> Result<(u64, usize), JournalError> {
        if records.is_empty() {
            return Ok((self.last_seq()?, 0));
        }
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        let mut appended = 0;
        let mut seq = Self::last_seq_in(&tx).map_err(&sq)?;
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO log (seq, hlc, body) VALUES (?1, ?2, ?3)")
                .map_err(&sq)?;
            let mut st = tx.prepare_cached(STATE_LOCAL).map_err(&sq)?;
            let mut body = Vec::with_capacity(512);
            for (hlc, rec) in records {
                body.clear();
                codec::encode_into(rec, &mut body).expect("encoding into a Vec cannot fail");
                // Journaled only if it changes the state: not a version
                // the state already holds, nor one older than it holds.
                let changed = st
                    .execute(params![
                        rec.key(),
                        *hlc as i64,
                        node_id,
                        body,
                        expires_at(rec)
                    ])
                    .map_err(&sq)?;
                if changed == 0 {
                    continue;
                }
                seq += 1;
                ins.execute(params![seq as i64, *hlc as i64, body])
                    .map_err(&sq)?;
                appended += 1;
            }
        }
        tx.commit().map_err(&sq)?;
        Ok((seq, appended))
    }

    /// Keys of the aliases of `table` that the state holds as present.
    pub fn live_alias_keys(&self, table: &[u8]) -> Result<Vec<Vec<u8>>, JournalError> {
        let lo = crate::record::alias_table_prefix(table);
        let mut hi = lo.clone();
        hi.push(0xff);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, body FROM state WHERE key > ?1 AND key < ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![lo, hi], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, body) = row.map_err(|e| self.err(e))?;
            if let Ok(Record::Alias {
                op: crate::record::Op::Upsert,
                ..
            }) = codec::decode::<Record>(&body)
            {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// (hlc, origin, record) of every contact the state holds as present
    /// and `keep` accepts.
    pub fn live_contacts(
        &self,
        keep: impl Fn(&crate::record::Contact) -> bool,
    ) -> Result<Vec<(u64, String, Record)>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT hlc, origin, body FROM state WHERE key >= X'63' AND key < X'64'",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (hlc, origin, body) = row.map_err(|e| self.err(e))?;
            if let Ok(
                rec @ Record::Contact {
                    op: crate::record::Op::Upsert,
                    ..
                },
            ) = codec::decode::<Record>(&body)
            {
                let Record::Contact { contact, .. } = &rec else {
                    unreachable!()
                };
                if keep(contact) {
                    out.push((hlc as u64, origin, rec));
                }
            }
        }
        Ok(out)
    }

    /// Stages versions the state already holds for applying into SER again
    /// (SER lost them). They keep their stamp, so they stay current.
    pub fn stage_restore(&mut self, records: &[(u64, String, Record)]) -> Result<(), JournalError> {
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        {
            let mut ins = tx.prepare_cached(INBOX_INSERT).map_err(&sq)?;
            let mut body = Vec::with_capacity(512);
            for (hlc, origin, rec) in records {
                body.clear();
                codec::encode_into(rec, &mut body).expect("encoding into a Vec cannot fail");
                ins.execute(params![origin, *hlc as i64, body, rec.key()])
                    .map_err(&sq)?;
            }
        }
        tx.commit().map_err(&sq)
    }

    /// The stamp of the version the state holds for `key`.
    pub fn state_stamp(&self, key: &[u8]) -> Result<Option<u64>, JournalError> {
        self.conn
            .prepare_cached("SELECT hlc FROM state WHERE key = ?1")
            .and_then(|mut st| st.query_row([key], |r| r.get::<_, i64>(0)).optional())
            .map(|v| v.map(|h| h as u64))
            .map_err(|e| self.err(e))
    }

    /// The record the state holds for `key`, if any.
    pub fn state_of(&self, key: &[u8]) -> Result<Option<Record>, JournalError> {
        let body: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT body FROM state WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(body.and_then(|b| codec::decode(&b).ok()))
    }

    fn last_seq_in(conn: &Connection) -> Result<u64, rusqlite::Error> {
        conn.query_row(
            "SELECT max(coalesce((SELECT max(seq) FROM log), 0),
                        coalesce((SELECT v FROM meta WHERE k = 'seq_floor'), 0))",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|v| v as u64)
    }

    /// The highest local sequence ever issued (trimmed or not).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        Self::last_seq_in(&self.conn).map_err(|e| self.err(e))
    }

    /// The lowest local sequence still in the log; `last_seq + 1` if the
    /// log is empty. A peer that needs anything below it gets a snapshot.
    pub fn first_available(&self) -> Result<u64, JournalError> {
        let min: Option<i64> = self
            .conn
            .query_row("SELECT min(seq) FROM log", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        match min {
            Some(m) => Ok(m as u64),
            None => Ok(self.last_seq()? + 1),
        }
    }

    /// Removes log entries up to `upto` (every peer has them, or retention
    /// ended for them). The state table keeps the latest version of every
    /// key, which is what a snapshot sends. Returns entries removed.
    pub fn trim(&mut self, upto: u64) -> Result<usize, JournalError> {
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        let n = tx
            .execute("DELETE FROM log WHERE seq <= ?1", [upto as i64])
            .map_err(&sq)?;
        if n > 0 {
            tx.execute(
                "INSERT INTO meta (k, v) VALUES ('seq_floor', ?1)
                 ON CONFLICT(k) DO UPDATE SET v = max(v, excluded.v)",
                [upto as i64],
            )
            .map_err(&sq)?;
        }
        tx.commit().map_err(&sq)?;
        Ok(n)
    }

    /// Drops the state of contacts that expired before `now` (unix s) and
    /// were last changed before `before_hlc` (retention): present or
    /// deleted, no version of them can matter any more, and without this
    /// the state would keep every contact ever seen. Contacts that never
    /// expire and aliases keep their tombstones. Returns rows removed.
    pub fn purge_state(
        &mut self,
        now: i64,
        before_hlc: u64,
        limit: usize,
    ) -> Result<usize, JournalError> {
        self.conn
            .execute(
                "DELETE FROM state WHERE key IN (
                     SELECT key FROM state
                     WHERE expires_at IS NOT NULL AND expires_at < ?1 AND hlc < ?2
                     LIMIT ?3)",
                params![now, before_hlc as i64, limit as i64],
            )
            .map_err(|e| self.err(e))
    }

    /// The sequence before the first entry stamped at or after `hlc` (for
    /// age-based retention): local stamps grow with the sequence, so the
    /// scan stops at the first young entry and costs what is to be
    /// trimmed. An old-stamped entry among young ones (a start-up
    /// comparison's row keeps its age) never lets younger ones go early.
    pub fn last_seq_before(&self, hlc: u64) -> Result<u64, JournalError> {
        let first_young: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM log WHERE hlc >= ?1 ORDER BY seq LIMIT 1",
                [hlc as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match first_young {
            Some(seq) => Ok(seq as u64 - 1),
            None => self
                .conn
                .query_row("SELECT coalesce(max(seq), 0) FROM log", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|v| v as u64)
                .map_err(|e| self.err(e)),
        }
    }

    pub fn log_len(&self) -> Result<u64, JournalError> {
        self.conn
            .query_row("SELECT count(*) FROM log", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    pub fn state_len(&self) -> Result<u64, JournalError> {
        self.conn
            .query_row("SELECT count(*) FROM state", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    /// The lowest acknowledged position among every peer ever seen.
    pub fn min_acked(&self) -> Result<Option<u64>, JournalError> {
        self.conn
            .query_row("SELECT min(acked) FROM peer_acked", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|v| v.map(|a| a as u64))
            .map_err(|e| self.err(e))
    }

    pub fn meta(&self, k: &str) -> Result<Option<i64>, JournalError> {
        self.conn
            .query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&mut self, k: &str, v: i64) -> Result<(), JournalError> {
        self.conn
            .execute("INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v", params![k, v])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Every member ever learned: (node id, address, forgotten).
    pub fn members(&self) -> Result<Vec<(String, String, bool)>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT node_id, address, forgotten FROM members ORDER BY node_id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Records a live member at `address` (not one that was forgotten).
    pub fn save_member(&mut self, node_id: &str, address: &str) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO members (node_id, address) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET address = excluded.address WHERE forgotten = 0",
                params![node_id, address],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Removes a member for good: it no longer holds back trimming, no
    /// snapshot or position is kept for it, and gossip cannot bring it back.
    pub fn forget_member(&mut self, node_id: &str) -> Result<(), JournalError> {
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        tx.execute(
            "INSERT INTO members (node_id, address, forgotten) VALUES (?1, '', 1)
             ON CONFLICT(node_id) DO UPDATE SET forgotten = 1",
            [node_id],
        )
        .map_err(&sq)?;
        for table in ["peer_acked", "snapshot_in"] {
            let col = if table == "peer_acked" {
                "node_id"
            } else {
                "origin"
            };
            tx.execute(&format!("DELETE FROM {table} WHERE {col} = ?1"), [node_id])
                .map_err(&sq)?;
        }
        tx.commit().map_err(&sq)
    }

    pub fn is_forgotten(&self, node_id: &str) -> Result<bool, JournalError> {
        self.conn
            .query_row(
                "SELECT forgotten FROM members WHERE node_id = ?1",
                [node_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v == Some(1))
            .map_err(|e| self.err(e))
    }

    /// State rows with keys after `after_key`, in key order, at most
    /// `limit`: one chunk of a snapshot.
    pub fn state_chunk(
        &self,
        after_key: &[u8],
        limit: usize,
    ) -> Result<Vec<SnapRow>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, hlc, origin, body FROM state WHERE key > ?1 ORDER BY key LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after_key, limit as i64], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, hlc, origin, body) = row.map_err(|e| self.err(e))?;
            let record = codec::decode(&body).map_err(|detail| JournalError::BadRecord {
                path: self.path.display().to_string(),
                seq: -1,
                detail: format!("state key {key:?}: {detail}"),
            })?;
            out.push(SnapRow {
                origin,
                hlc: hlc as u64,
                record,
            });
        }
        Ok(out)
    }

    /// Where a snapshot from `origin` stopped, if one is in progress:
    /// (the sender's sequence it is consistent with, last key received).
    pub fn snapshot_progress(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        self.conn
            .query_row(
                "SELECT upto, after_key FROM snapshot_in WHERE origin = ?1",
                [origin],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Stages one snapshot chunk from `origin` in one transaction: each
    /// row enters the inbox unless the state holds a newer version (last
    /// writer wins on (hlc, origin of the row)). Records the progress; the
    /// last chunk sets the position held from `origin` to `upto`, so the
    /// live stream continues after it. Durable on return.
    pub fn stage_snapshot(
        &mut self,
        origin: &str,
        upto: u64,
        rows: &[SnapRow],
        last: bool,
    ) -> Result<StageOutcome, JournalError> {
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        let mut out = StageOutcome {
            upto,
            ..Default::default()
        };
        {
            let mut st = tx.prepare_cached(STATE_LWW).map_err(&sq)?;
            let mut ins = tx.prepare_cached(INBOX_INSERT).map_err(&sq)?;
            let mut body = Vec::with_capacity(512);
            for row in rows {
                out.fresh += 1;
                body.clear();
                codec::encode_into(&row.record, &mut body)
                    .expect("encoding into a Vec cannot fail");
                let key = row.record.key();
                if st
                    .execute(params![
                        key,
                        row.hlc as i64,
                        row.origin,
                        body,
                        expires_at(&row.record)
                    ])
                    .map_err(&sq)?
                    == 0
                {
                    out.superseded += 1;
                    continue;
                }
                ins.execute(params![row.origin, row.hlc as i64, body, key])
                    .map_err(&sq)?;
            }
        }
        if last {
            tx.execute("DELETE FROM snapshot_in WHERE origin = ?1", [origin])
                .map_err(&sq)?;
            tx.execute(
                "INSERT INTO received (origin, seq) VALUES (?1, ?2)
                 ON CONFLICT(origin) DO UPDATE SET seq = max(seq, excluded.seq)",
                params![origin, upto as i64],
            )
            .map_err(&sq)?;
        } else if let Some(lastrow) = rows.last() {
            tx.execute(
                "INSERT INTO snapshot_in (origin, upto, after_key) VALUES (?1, ?2, ?3)
                 ON CONFLICT(origin) DO UPDATE SET upto = excluded.upto, after_key = excluded.after_key",
                params![origin, upto as i64, lastrow.record.key()],
            )
            .map_err(&sq)?;
        }
        tx.commit().map_err(&sq)?;
        Ok(out)
    }

    /// Local changes after `after`, at most `limit`, in sequence order.
    pub fn read_log(&self, after: u64, limit: usize) -> Result<Vec<Change>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, hlc, body FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, hlc, body) = row.map_err(|e| self.err(e))?;
            let record = codec::decode(&body).map_err(|detail| JournalError::BadRecord {
                path: self.path.display().to_string(),
                seq,
                detail,
            })?;
            out.push(Change {
                seq: seq as u64,
                hlc: hlc as u64,
                record,
            });
        }
        Ok(out)
    }

    /// The journal time (HLC) of local change `seq`, if still held.
    pub fn hlc_of(&self, seq: u64) -> Result<Option<u64>, JournalError> {
        self.conn
            .query_row("SELECT hlc FROM log WHERE seq = ?1", [seq as i64], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.map(|h| h as u64))
            .map_err(|e| self.err(e))
    }

    pub fn acked(&self, peer: &str) -> Result<u64, JournalError> {
        self.conn
            .query_row(
                "SELECT acked FROM peer_acked WHERE node_id = ?1",
                [peer],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Whether this journal ever recorded a position of `peer` (from a
    /// welcome or an acknowledgement).
    pub fn has_acked(&self, peer: &str) -> Result<bool, JournalError> {
        self.conn
            .query_row(
                "SELECT 1 FROM peer_acked WHERE node_id = ?1",
                [peer],
                |_| Ok(()),
            )
            .optional()
            .map(|v| v.is_some())
            .map_err(|e| self.err(e))
    }

    /// Moves every local sequence of this journal (log entries and the
    /// floor) up by at least `after`, so that all of them come after it.
    /// For a peer holding changes up to `after` from an earlier journal of
    /// this node (one moved aside or deleted): it skips every sequence up
    /// to its position, so it would never take ours numbered below. Peers
    /// that already hold some of ours get them again under the new numbers,
    /// which staging recognises as versions it has. Returns the new last
    /// sequence.
    pub fn renumber_after(&mut self, after: u64) -> Result<u64, JournalError> {
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        let last = Self::last_seq_in(&tx).map_err(&sq)?;
        // Beyond the last sequence too: no new number meets an old one.
        let shift = after.max(last) as i64;
        tx.execute("UPDATE log SET seq = seq + ?1", [shift])
            .map_err(&sq)?;
        tx.execute(
            "INSERT INTO meta (k, v) VALUES ('seq_floor', ?1)
             ON CONFLICT(k) DO UPDATE SET v = v + ?1",
            [shift],
        )
        .map_err(&sq)?;
        let new_last = Self::last_seq_in(&tx).map_err(&sq)?;
        tx.commit().map_err(&sq)?;
        Ok(new_last)
    }

    /// Records that `peer` holds every local change up to `upto`.
    pub fn set_acked(&mut self, peer: &str, upto: u64) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO peer_acked (node_id, acked) VALUES (?1, ?2)
                 ON CONFLICT(node_id) DO UPDATE SET acked = max(acked, excluded.acked)",
                params![peer, upto as i64],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Highest sequence of `origin` this node holds.
    pub fn received_upto(&self, origin: &str) -> Result<u64, JournalError> {
        self.conn
            .query_row(
                "SELECT seq FROM received WHERE origin = ?1",
                [origin],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Stages a batch from `origin` in one transaction: changes at or below
    /// the position already held are duplicates (a resend) and skipped;
    /// the others enter the inbox unless the state holds a newer version of
    /// their key (last writer wins on (hlc, origin)). Durable on return:
    /// only then may the batch be acknowledged.
    pub fn stage_remote(
        &mut self,
        origin: &str,
        changes: &[Change],
    ) -> Result<StageOutcome, JournalError> {
        let sq = self.sq();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sq)?;
        let held: u64 = tx
            .query_row(
                "SELECT seq FROM received WHERE origin = ?1",
                [origin],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(&sq)?
            .unwrap_or(0) as u64;
        let mut out = StageOutcome {
            upto: held,
            ..Default::default()
        };
        {
            let mut st = tx.prepare_cached(STATE_LWW).map_err(&sq)?;
            let mut ins = tx.prepare_cached(INBOX_INSERT).map_err(&sq)?;
            let mut body = Vec::with_capacity(512);
            for ch in changes {
                if ch.seq <= out.upto {
                    continue;
                }
                out.upto = ch.seq;
                out.fresh += 1;
                body.clear();
                codec::encode_into(&ch.record, &mut body).expect("encoding into a Vec cannot fail");
                let key = ch.record.key();
                let won = st
                    .execute(params![
                        key,
                        ch.hlc as i64,
                        origin,
                        body,
                        expires_at(&ch.record)
                    ])
                    .map_err(&sq)?;
                if won == 0 {
                    out.superseded += 1;
                    continue;
                }
                ins.execute(params![origin, ch.hlc as i64, body, key])
                    .map_err(&sq)?;
            }
        }
        if out.upto > held {
            tx.execute(
                "INSERT INTO received (origin, seq) VALUES (?1, ?2)
                 ON CONFLICT(origin) DO UPDATE SET seq = excluded.seq",
                params![origin, out.upto as i64],
            )
            .map_err(&sq)?;
        }
        tx.commit().map_err(&sq)?;
        Ok(out)
    }

    /// The oldest staged changes, at most `limit`, without those another
    /// version of their key has overtaken since they were staged (applying
    /// them would put an older version back). Returns the last id read too,
    /// so that the overtaken ones are removed with the rest.
    pub fn inbox_current(
        &mut self,
        limit: usize,
    ) -> Result<(Vec<Staged>, Option<i64>), JournalError> {
        let sq = self.sq();
        // One read transaction: one consistent view, one lock.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(&sq)?;
        let mut out = Vec::new();
        let mut last_id = None;
        {
            // A change is still current unless the state holds another
            // version of its key (a newer one, local or remote).
            let mut peek = tx
                .prepare_cached(
                    "SELECT i.id, i.origin, i.hlc, i.body,
                            s.key IS NULL OR (s.hlc = i.hlc AND s.origin = i.origin)
                     FROM inbox i LEFT JOIN state s ON s.key = i.key
                     ORDER BY i.id LIMIT ?1",
                )
                .map_err(&sq)?;
            let mut rows = peek.query([limit as i64]).map_err(&sq)?;
            while let Some(r) = rows.next().map_err(&sq)? {
                let (id, origin, hlc, body, current): (i64, String, i64, Vec<u8>, bool) = (
                    r.get(0).map_err(&sq)?,
                    r.get(1).map_err(&sq)?,
                    r.get(2).map_err(&sq)?,
                    r.get(3).map_err(&sq)?,
                    r.get(4).map_err(&sq)?,
                );
                last_id = Some(id);
                if !current {
                    continue;
                }
                let record: Record =
                    codec::decode(&body).map_err(|detail| JournalError::BadRecord {
                        path: self.path.display().to_string(),
                        seq: id,
                        detail,
                    })?;
                out.push(Staged {
                    id,
                    origin,
                    hlc: hlc as u64,
                    record,
                });
            }
        }
        tx.commit().map_err(&sq)?;
        Ok((out, last_id))
    }

    /// Keys of every change staged and not yet applied.
    pub fn inbox_keys(&self) -> Result<std::collections::HashSet<Vec<u8>>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM inbox WHERE key IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The oldest staged changes, at most `limit`.
    pub fn inbox_peek(&self, limit: usize) -> Result<Vec<Staged>, JournalError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, origin, hlc, body FROM inbox ORDER BY id LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, origin, hlc, body) = row.map_err(|e| self.err(e))?;
            let record = codec::decode(&body).map_err(|detail| JournalError::BadRecord {
                path: self.path.display().to_string(),
                seq: id,
                detail,
            })?;
            out.push(Staged {
                id,
                origin,
                hlc: hlc as u64,
                record,
            });
        }
        Ok(out)
    }

    /// Removes staged changes up to and including `id`: they are applied.
    pub fn inbox_done(&mut self, upto_id: i64) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM inbox WHERE id <= ?1", [upto_id])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn inbox_len(&self) -> Result<u64, JournalError> {
        self.conn
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Change, Contact, Op};

    fn rec(aor: &str, cseq: i32) -> Record {
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

    fn expiring(aor: &str, op: Op, expires: i64) -> Record {
        let Record::Contact { mut contact, .. } = rec(aor, 1) else {
            unreachable!()
        };
        contact.expires = expires;
        Record::Contact { op, contact }
    }

    #[test]
    fn expired_contacts_leave_the_state_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let now = 1_800_000_000;
        j.append_local(
            "n1",
            &[
                (10, expiring("gone", Op::Upsert, now - 5)),
                (11, expiring("deleted", Op::Delete, now - 5)),
                (12, expiring("live", Op::Upsert, now + 3600)),
                (13, expiring("permanent", Op::Delete, 0)),
                (50, expiring("recent", Op::Delete, now - 5)),
            ],
        )
        .unwrap();
        let remote = [Change {
            seq: 1,
            hlc: 14,
            record: expiring("remote", Op::Upsert, now - 5),
        }];
        assert_eq!(j.stage_remote("n2", &remote).unwrap().fresh, 1);
        assert_eq!(j.state_len().unwrap(), 6);
        // Retention reaches up to stamp 20: "recent" changed after it.
        assert_eq!(j.purge_state(now, 20, 100).unwrap(), 3);
        let left: Vec<String> = ["gone", "deleted", "live", "permanent", "recent", "remote"]
            .into_iter()
            .filter(|a| {
                j.state_stamp(&expiring(a, Op::Upsert, 0).key())
                    .unwrap()
                    .is_some()
            })
            .map(String::from)
            .collect();
        assert_eq!(left, ["live", "permanent", "recent"]);
    }

    #[test]
    fn a_version_3_journal_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let mut j = Journal::open(&path).unwrap();
            j.append_local("n1", &[(10, expiring("gone", Op::Upsert, 100))])
                .unwrap();
            j.stage_restore(&[(5, "n2".into(), expiring("staged", Op::Upsert, 200))])
                .unwrap();
            j.conn
                .execute_batch(
                    "DROP INDEX state_expiry; ALTER TABLE state DROP COLUMN expires_at;
                     ALTER TABLE inbox DROP COLUMN key; PRAGMA user_version = 3;",
                )
                .unwrap();
        }
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.purge_state(101, 11, 100).unwrap(), 1);
        // The inbox learnt the keys of what was staged.
        let want: std::collections::HashSet<Vec<u8>> =
            [expiring("staged", Op::Upsert, 200).key()].into();
        assert_eq!(j.inbox_keys().unwrap(), want);
    }

    #[test]
    fn age_retention_stops_at_the_first_young_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        // Stamps 10, 20, then 5 (a start-up comparison's old row), 30.
        j.append_local(
            "n1",
            &[
                (10, rec("a", 1)),
                (20, rec("b", 1)),
                (5, rec("c", 1)),
                (30, rec("d", 1)),
            ],
        )
        .unwrap();
        assert_eq!(j.last_seq_before(15).unwrap(), 1);
        assert_eq!(j.last_seq_before(25).unwrap(), 3);
        assert_eq!(j.last_seq_before(100).unwrap(), 4);
        assert_eq!(j.last_seq_before(1).unwrap(), 0);
    }

    #[test]
    fn append_reopen_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let mut j = Journal::open(&path).unwrap();
            let (last, n) = j
                .append_local("n1", &[(10, rec("a", 1)), (11, rec("b", 1))])
                .unwrap();
            assert_eq!((last, n), (2, 2));
            // The same state again is not journaled twice.
            assert_eq!(j.append_local("n1", &[(12, rec("b", 1))]).unwrap(), (2, 0));
            j.set_acked("n2", 1).unwrap();
        }
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.last_seq().unwrap(), 2);
        assert_eq!(j.acked("n2").unwrap(), 1);
        let pending = j.read_log(j.acked("n2").unwrap(), 100).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].seq, 2);
        assert_eq!(pending[0].record, rec("b", 1));
        assert_eq!(j.append_local("n1", &[(12, rec("c", 1))]).unwrap(), (3, 1));
    }

    #[test]
    fn renumbering_puts_every_entry_after_a_peers_old_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let three = [(10, rec("a", 1)), (11, rec("b", 1)), (12, rec("c", 1))];
        assert_eq!(j.append_local("n1", &three).unwrap(), (3, 3));
        j.trim(1).unwrap();
        assert!(!j.has_acked("n2").unwrap());
        // n2 holds 2 from an earlier journal: entries 2 and 3 become 5, 6.
        assert_eq!(j.renumber_after(2).unwrap(), 6);
        assert_eq!(j.last_seq().unwrap(), 6);
        let after: Vec<u64> = j.read_log(2, 10).unwrap().iter().map(|c| c.seq).collect();
        assert_eq!(after, vec![5, 6]);
        assert_eq!(j.append_local("n1", &[(13, rec("d", 1))]).unwrap(), (7, 1));
        j.set_acked("n2", 2).unwrap();
        assert!(j.has_acked("n2").unwrap());
    }

    #[test]
    fn staging_skips_resends_and_older_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let batch = vec![
            Change {
                seq: 1,
                hlc: 100,
                record: rec("a", 1),
            },
            Change {
                seq: 2,
                hlc: 101,
                record: rec("b", 1),
            },
        ];
        let out = j.stage_remote("n2", &batch).unwrap();
        assert_eq!(
            out,
            StageOutcome {
                upto: 2,
                fresh: 2,
                superseded: 0
            }
        );
        // Resend after a lost ack: nothing new.
        let out = j.stage_remote("n2", &batch).unwrap();
        assert_eq!(
            out,
            StageOutcome {
                upto: 2,
                fresh: 0,
                superseded: 0
            }
        );
        // A local change newer than what n3 sends for the same key wins.
        j.append_local("n1", &[(500, rec("c", 2))]).unwrap();
        let out = j
            .stage_remote(
                "n3",
                &[Change {
                    seq: 1,
                    hlc: 400,
                    record: rec("c", 1),
                }],
            )
            .unwrap();
        assert_eq!(out.superseded, 1);
        let staged = j.inbox_peek(10).unwrap();
        assert_eq!(staged.len(), 2);
        j.inbox_done(staged[0].id).unwrap();
        assert_eq!(j.inbox_len().unwrap(), 1);
        assert_eq!(j.received_upto("n2").unwrap(), 2);
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
