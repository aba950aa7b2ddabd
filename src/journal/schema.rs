//! The schema and its migrations, one step per `PRAGMA user_version`.

use rusqlite::{params, TransactionBehavior};

use super::inbox::Frames;
use super::log::Packed;
use super::{Fault, Journal};
use crate::codec;
use crate::record::Record;

/// Schema version this code writes (PRAGMA user_version).
pub(super) const SCHEMA_VERSION: i64 = 10;

impl Journal {
    /// Brings the schema up to [`SCHEMA_VERSION`] in one IMMEDIATE
    /// transaction; refuses a newer one and leaves it untouched.
    pub(super) fn migrate(&mut self) -> Result<(), Fault> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(Fault::TooNew { found: version });
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
                    .and_then(|r| r.as_ref().expires_at())
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
        if version < 7 {
            // inbox.seq: the origin's sequence of a live change (NULL for
            // snapshot rows and restores), kept for the quarantine.
            // quarantine: staged changes SER refused (see quarantine.rs);
            // AUTOINCREMENT so that an id an operator read is never reused.
            tx.execute_batch(
                "ALTER TABLE inbox ADD COLUMN seq INTEGER;
                 CREATE TABLE quarantine (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     origin TEXT NOT NULL,
                     seq INTEGER,
                     hlc INTEGER NOT NULL,
                     key BLOB NOT NULL,
                     body BLOB NOT NULL,
                     reason TEXT NOT NULL,
                     tries INTEGER NOT NULL,
                     at INTEGER NOT NULL);
                 CREATE INDEX quarantine_key ON quarantine (key);
                 PRAGMA user_version = 7;",
            )?;
        }
        if version < 8 {
            // The log stored a batch per row (see log.rs): a row per
            // change cost a b-tree insert and a read for each. The rows of
            // an older log become batches of consecutive sequences.
            tx.execute_batch(
                "CREATE TABLE log_batch (
                     first INTEGER PRIMARY KEY,
                     last INTEGER NOT NULL,
                     hlc_max INTEGER NOT NULL,
                     body BLOB NOT NULL);",
            )?;
            {
                let mut q = tx.prepare("SELECT seq, hlc, body FROM log ORDER BY seq")?;
                let mut rows = q.query([])?;
                // (first, last, changes) of the batch being built.
                let mut run: Option<(u64, u64, Packed)> = None;
                while let Some(r) = rows.next()? {
                    let (seq, hlc, body): (i64, i64, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?);
                    let seq = seq as u64;
                    if let Some((first, last, _)) = &run {
                        if seq != last + 1 || last - first + 1 >= MIGRATED_BATCH {
                            let (first, last, packed) = run.take().expect("checked");
                            packed.insert(&tx, first, last)?;
                        }
                    }
                    let (_, last, packed) =
                        run.get_or_insert_with(|| (seq, seq, Packed::default()));
                    *last = seq;
                    packed.push(hlc as u64, &body);
                }
                if let Some((first, last, packed)) = run {
                    packed.insert(&tx, first, last)?;
                }
            }
            tx.execute_batch("DROP TABLE log; PRAGMA user_version = 8;")?;
        }
        if version < 9 {
            // The purge goes through the state in key order (see
            // purge_state_after): the index by expiry cost a second b-tree
            // insert (and, for random keys, a page of its own) per change.
            tx.execute_batch("DROP INDEX IF EXISTS state_expiry; PRAGMA user_version = 9;")?;
        }
        if version < 10 {
            // The inbox stored a frame per row (see inbox.rs): a row per
            // change cost a b-tree insert, a read and a delete for each.
            // What an older inbox holds moves into frames, in its order.
            tx.execute_batch(
                "CREATE TABLE inbox_frame (
                     first INTEGER PRIMARY KEY,
                     last INTEGER NOT NULL,
                     removed INTEGER NOT NULL DEFAULT 0,
                     body BLOB NOT NULL);",
            )?;
            {
                let mut frames = Frames::new(&tx)?;
                let mut q = tx.prepare("SELECT origin, hlc, seq, body FROM inbox ORDER BY id")?;
                frames.push_rows(q.query([])?)?;
                frames.finish()?;
            }
            tx.execute_batch("DROP TABLE inbox; PRAGMA user_version = 10;")?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Changes per batch when an older log is brought into batches.
const MIGRATED_BATCH: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::SCHEMA_VERSION;
    use crate::codec;
    use crate::error::JournalError;
    use crate::journal::tests::{expiring, rec};
    use crate::journal::Journal;
    use crate::record::Op;

    #[test]
    fn a_version_3_journal_is_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let mut j = Journal::open(&path).unwrap();
            j.append_local("n1", &[(10, expiring("gone", Op::Upsert, 100))])
                .unwrap();
            j.conn
                .execute_batch(
                    "ALTER TABLE state DROP COLUMN expires_at;
                     DROP TABLE inbox_frame; DELETE FROM meta WHERE k = 'inbox_next';
                     CREATE TABLE inbox (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
                                         hlc INTEGER NOT NULL, body BLOB NOT NULL);
                     DROP TABLE quarantine; DROP TABLE log_batch;
                     CREATE TABLE log (seq INTEGER PRIMARY KEY, hlc INTEGER NOT NULL,
                                       body BLOB NOT NULL);
                     PRAGMA user_version = 3;",
                )
                .unwrap();
            let mut body = Vec::new();
            codec::encode_into(&expiring("staged", Op::Upsert, 200), &mut body).unwrap();
            j.conn
                .execute(
                    "INSERT INTO inbox (origin, hlc, body) VALUES ('n2', 5, ?1)",
                    [body],
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

    /// A log of a change per row (version 7) becomes batches of
    /// consecutive sequences: every change readable at its sequence with
    /// its stamp, the numbering going on after it, trimming by batch.
    #[test]
    fn a_log_of_a_row_per_change_becomes_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let recs: Vec<_> = (0..2500).map(|i| rec(&format!("u{i}"), 1)).collect();
        // Sequences 3..=2002 and 2005..=2504 (a gap: trimmed, renumbered).
        let seqs: Vec<u64> = (3..=2002).chain(2005..=2504).collect();
        {
            let j = Journal::open(&path).unwrap();
            j.conn
                .execute_batch(
                    "DROP TABLE log_batch; DROP TABLE inbox_frame;
                     CREATE TABLE inbox (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
                                         hlc INTEGER NOT NULL, body BLOB NOT NULL,
                                         key BLOB, seq INTEGER);
                     CREATE TABLE log (seq INTEGER PRIMARY KEY, hlc INTEGER NOT NULL,
                                       body BLOB NOT NULL);
                     INSERT INTO meta (k, v) VALUES ('seq_floor', 2);
                     PRAGMA user_version = 7;",
                )
                .unwrap();
            let mut ins = j
                .conn
                .prepare("INSERT INTO log (seq, hlc, body) VALUES (?1, ?2, ?3)")
                .unwrap();
            for (s, r) in seqs.iter().zip(&recs) {
                let mut body = Vec::new();
                codec::encode_into(r, &mut body).unwrap();
                ins.execute(rusqlite::params![*s as i64, (*s * 10) as i64, body])
                    .unwrap();
            }
        }
        let mut j = Journal::open(&path).unwrap();
        let batches: i64 = j
            .conn
            .query_row("SELECT count(*) FROM log_batch", [], |r| r.get(0))
            .unwrap();
        // 2,000 consecutive, then 500: 1,000 per batch at most.
        assert_eq!(batches, 3);
        assert_eq!(j.log_len().unwrap(), 2500);
        assert_eq!(
            (j.first_available().unwrap(), j.last_seq().unwrap()),
            (3, 2504)
        );
        let all = j.read_log(0, 10_000).unwrap();
        let got: Vec<_> = all
            .iter()
            .map(|c| (c.seq, c.hlc, c.record.clone()))
            .collect();
        let want: Vec<_> = seqs
            .iter()
            .zip(&recs)
            .map(|(s, r)| (*s, s * 10, r.clone()))
            .collect();
        assert_eq!(got, want);
        // Reading from inside a batch, and across the gap.
        let from: Vec<u64> = j.read_log(2000, 4).unwrap().iter().map(|c| c.seq).collect();
        assert_eq!(from, [2001, 2002, 2005, 2006]);
        assert_eq!(j.hlc_of(2005).unwrap(), Some(20_050));
        assert_eq!(j.hlc_of(2003).unwrap(), None);
        assert_eq!(j.last_seq_before(20_051).unwrap(), 2005);
        // Numbering goes on after the migrated entries.
        assert_eq!(
            j.append_local("n1", &[(99_999, rec("new", 1))]).unwrap(),
            (2505, 1)
        );
        // Trimming inside a batch keeps what follows; past it, it goes.
        assert_eq!(j.trim(500).unwrap(), 498);
        assert_eq!(j.first_available().unwrap(), 501);
        assert_eq!(j.trim(1500).unwrap(), 1000);
        assert_eq!(j.first_available().unwrap(), 1501);
        assert_eq!(j.meta("seq_floor").unwrap(), Some(1500));
        assert_eq!(j.read_log(0, 2).unwrap()[0].seq, 1501);
        assert_eq!(j.hlc_of(1501).unwrap(), Some(15_010));
        assert_eq!(j.log_len().unwrap(), 502 + 500 + 1);
    }

    /// An inbox of a change per row (version 9) becomes frames: every
    /// change in its order with its origin, stamp and sequence; ids go on
    /// after them, and a change staged after them is read after them.
    #[test]
    fn an_inbox_of_a_row_per_change_becomes_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let recs: Vec<_> = (0..2100).map(|i| rec(&format!("u{i}"), 1)).collect();
        {
            let j = Journal::open(&path).unwrap();
            j.conn
                .execute_batch(
                    "DROP TABLE inbox_frame;
                     CREATE TABLE inbox (id INTEGER PRIMARY KEY, origin TEXT NOT NULL,
                                         hlc INTEGER NOT NULL, body BLOB NOT NULL,
                                         key BLOB, seq INTEGER);
                     PRAGMA user_version = 9;",
                )
                .unwrap();
            let mut ins = j
                .conn
                .prepare("INSERT INTO inbox (id, origin, hlc, body, key, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .unwrap();
            for (i, r) in recs.iter().enumerate() {
                let mut body = Vec::new();
                codec::encode_into(r, &mut body).unwrap();
                // live changes from n2, then snapshot rows (no sequence)
                let (origin, seq) = if i < 1500 {
                    ("n2", Some(i as i64 + 1))
                } else {
                    ("n3", None)
                };
                ins.execute(rusqlite::params![
                    (i * 2 + 7) as i64,
                    origin,
                    (i + 100) as i64,
                    body,
                    r.key(),
                    seq
                ])
                .unwrap();
            }
        }
        let mut j = Journal::open(&path).unwrap();
        let frames: i64 = j
            .conn
            .query_row("SELECT count(*) FROM inbox_frame", [], |r| r.get(0))
            .unwrap();
        assert_eq!(frames, 3);
        assert_eq!(j.inbox_len().unwrap(), 2100);
        let staged = j.inbox_peek(10_000).unwrap();
        let got: Vec<_> = staged
            .iter()
            .map(|s| (s.origin.as_str(), s.hlc, s.seq, s.record.clone()))
            .collect();
        let want: Vec<_> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (origin, seq) = if i < 1500 {
                    ("n2", Some(i as u64 + 1))
                } else {
                    ("n3", None)
                };
                (origin, i as u64 + 100, seq, r.clone())
            })
            .collect();
        assert_eq!(got, want);
        let ids: Vec<i64> = staged.iter().map(|s| s.id).collect();
        assert_eq!(ids, (1..=2100).collect::<Vec<_>>());
        // Done up to inside the second frame: the first frame goes, the
        // rest is still read after that position.
        j.inbox_done(1500).unwrap();
        assert_eq!(j.inbox_len_after(1500).unwrap(), 600);
        let (rest, last) = j.inbox_current_after(1500, 10_000).unwrap();
        assert_eq!((rest.len(), last), (600, Some(2100)));
        assert_eq!(rest[0].record, recs[1500]);
        let more = j
            .stage_restore(&[(5, "n2".into(), rec("late", 1))])
            .unwrap();
        assert_eq!(more, Some((2101, 2101)));
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let j = Journal::open(&path).unwrap();
            j.conn.execute_batch("PRAGMA user_version = 99;").unwrap();
        }
        let e = Journal::open(&path)
            .err()
            .expect("a newer schema is refused");
        assert!(
            matches!(
                e,
                JournalError::TooNew {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "journal {} has schema version 99, newer than this sersync understands \
                 ({SCHEMA_VERSION}); upgrade sersync or move the file aside",
                path.display()
            )
        );
        // Neither moved aside nor changed.
        assert!(path.exists());
        let j = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = j
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 99);
    }
}
