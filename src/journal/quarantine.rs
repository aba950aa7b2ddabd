//! The quarantine: staged remote changes SER refused (a usrloc table this
//! node does not have, an invalid field, a record too large for the door),
//! set aside with the reason so that the changes behind them are applied.
//! A quarantined change keeps everything the inbox held (origin, its
//! sequence, stamp, key, record): a retry puts it back into the inbox as it
//! was staged. One that the state no longer holds as its key's version (a
//! newer version arrived, the contact expired and was purged) is obsolete.

use rusqlite::{params, OptionalExtension};

use super::Journal;
use crate::codec;
use crate::error::JournalError;
use crate::record::Record;

/// A change in the quarantine.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Its number in the quarantine, never reused (what operators name).
    pub id: i64,
    pub origin: String,
    /// The origin's sequence; None for snapshot rows and restores.
    pub seq: Option<u64>,
    pub hlc: u64,
    /// None when the stored record does not decode (shown, not applied).
    pub record: Option<Record>,
    pub reason: String,
    /// Attempts to apply it before it was set aside.
    pub tries: u32,
    /// Unix time it was set aside.
    pub at: i64,
}

/// Which quarantined changes an operator's request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    One(i64),
    All,
}

impl Which {
    fn bounds(self) -> (i64, i64) {
        match self {
            Which::One(id) => (id, id),
            Which::All => (i64::MIN, i64::MAX),
        }
    }
}

impl Journal {
    /// Moves the staged change `inbox_id` into the quarantine with its
    /// reason, in one transaction, replacing what it held for the key (in
    /// its inbox frame it is marked removed: readers pass it by).
    /// Returns its quarantine id, None when the inbox no longer holds it.
    pub fn quarantine(
        &mut self,
        inbox_id: i64,
        reason: &str,
        tries: u32,
        at: i64,
    ) -> Result<Option<i64>, JournalError> {
        self.write(|tx| {
            let Some((origin, hlc, seq, body)) = super::inbox::remove_entry(tx, inbox_id)? else {
                return Ok(None);
            };
            let key = codec::decode::<Record>(&body)
                .map(|r| r.key())
                .unwrap_or_default();
            // One entry per key: one held already is this version (staged
            // again by a restore) or an older one.
            tx.execute("DELETE FROM quarantine WHERE key = ?1", [&key])?;
            tx.execute(
                "INSERT INTO quarantine (origin, seq, hlc, key, body, reason, tries, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    origin,
                    seq.map(|s| s as i64),
                    hlc as i64,
                    key,
                    body,
                    reason,
                    tries,
                    at
                ],
            )?;
            Ok(Some(tx.last_insert_rowid()))
        })
    }

    /// The oldest quarantined changes, at most `limit`.
    pub fn quarantine_list(&self, limit: usize) -> Result<Vec<Quarantined>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, origin, seq, hlc, body, reason, tries, at
                 FROM quarantine ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok(Quarantined {
                    id: r.get(0)?,
                    origin: r.get(1)?,
                    seq: r.get::<_, Option<i64>>(2)?.map(|s| s as u64),
                    hlc: r.get::<_, i64>(3)? as u64,
                    record: codec::decode(&r.get::<_, Vec<u8>>(4)?).ok(),
                    reason: r.get(5)?,
                    tries: r.get(6)?,
                    at: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Changes held in the quarantine, and the reason of the newest.
    pub fn quarantine_summary(&self) -> Result<(u64, String), JournalError> {
        self.run(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
            let last: Option<String> = c
                .query_row(
                    "SELECT reason FROM quarantine ORDER BY id DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok((n as u64, last.unwrap_or_default()))
        })
    }

    /// Puts quarantined changes back into the inbox (after what is staged
    /// there, oldest first), as they were staged: the applier tries them
    /// again. Returns how many.
    pub fn quarantine_retry(&mut self, which: Which) -> Result<usize, JournalError> {
        let (lo, hi) = which.bounds();
        self.write(|tx| {
            let mut frames = super::inbox::Frames::new(tx)?;
            let mut held = tx.prepare(
                "SELECT origin, hlc, seq, body FROM quarantine
                 WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
            )?;
            frames.push_rows(held.query(params![lo, hi])?)?;
            frames.finish()?;
            Ok(tx.execute(
                "DELETE FROM quarantine WHERE id BETWEEN ?1 AND ?2",
                params![lo, hi],
            )?)
        })
    }

    /// Drops quarantined changes for good (this node's SER never gets
    /// them unless a newer version comes). Returns how many.
    pub fn quarantine_drop(&mut self, which: Which) -> Result<usize, JournalError> {
        let (lo, hi) = which.bounds();
        self.run_write(|c| {
            Ok(c.execute(
                "DELETE FROM quarantine WHERE id BETWEEN ?1 AND ?2",
                params![lo, hi],
            )?)
        })
    }

    /// Whether the quarantine holds exactly this version of `key` (the
    /// check leaves a version SER refused to the quarantine's retry).
    pub fn is_quarantined(&self, key: &[u8], hlc: u64, origin: &str) -> Result<bool, JournalError> {
        self.run(|c| {
            Ok(c.prepare_cached(
                "SELECT 1 FROM quarantine WHERE key = ?1 AND hlc = ?2 AND origin = ?3",
            )?
            .query_row(params![key, hlc as i64, origin], |_| Ok(()))
            .optional()?
            .is_some())
        })
    }

    /// Removes the obsolete: changes whose key the state holds in another
    /// version (a newer one arrived or was made here) or no longer holds
    /// (expired and purged). Returns how many.
    pub fn quarantine_prune(&mut self) -> Result<usize, JournalError> {
        self.run_write(|c| {
            Ok(c.execute(
                "DELETE FROM quarantine WHERE NOT EXISTS (
                     SELECT 1 FROM state s WHERE s.key = quarantine.key
                     AND s.hlc = quarantine.hlc AND s.origin = quarantine.origin)",
                [],
            )?)
        })
    }

    /// The applier wrote the current version of each of `keys` into SER:
    /// a quarantined version of one of them is that one or older, and
    /// obsolete. Returns how many left.
    pub fn quarantine_applied(&mut self, keys: &[Vec<u8>]) -> Result<usize, JournalError> {
        self.write(|tx| {
            let mut del = tx.prepare_cached("DELETE FROM quarantine WHERE key = ?1")?;
            let mut n = 0;
            for k in keys {
                n += del.execute([k])?;
            }
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Which;
    use crate::journal::tests::rec;
    use crate::journal::Journal;
    use crate::record::Change;

    fn change(seq: u64, hlc: u64, aor: &str) -> Change {
        Change {
            seq,
            hlc,
            record: rec(aor, seq as i32),
        }
    }

    /// Quarantined with its origin, sequence, stamp and reason; survives a
    /// reopen; a retry puts it back into the inbox as staged; ids are
    /// never reused; drop removes.
    #[test]
    fn set_aside_kept_across_reopen_retried_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        j.stage_remote(
            "n2",
            &[
                change(7, 100, "a"),
                change(8, 101, "b"),
                change(9, 102, "c"),
            ],
        )
        .unwrap();
        let staged = j.inbox_peek(10).unwrap();
        assert_eq!(staged[0].seq, Some(7));
        let q1 = j
            .quarantine(staged[0].id, "usrloc table 'x' unknown", 1, 1000)
            .unwrap()
            .unwrap();
        let q2 = j
            .quarantine(staged[1].id, "too large", 3, 1001)
            .unwrap()
            .unwrap();
        assert_eq!(j.quarantine(staged[1].id, "again", 1, 1002).unwrap(), None);
        assert_eq!(j.inbox_len().unwrap(), 1);
        drop(j);

        let mut j = Journal::open(&path).unwrap();
        let list = j.quarantine_list(10).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (
                list[0].id,
                list[0].origin.as_str(),
                list[0].seq,
                list[0].hlc
            ),
            (q1, "n2", Some(7), 100)
        );
        assert_eq!(list[0].record, Some(rec("a", 7)));
        assert_eq!(list[0].reason, "usrloc table 'x' unknown");
        assert_eq!((list[1].tries, list[1].at), (3, 1001));
        assert_eq!(j.quarantine_summary().unwrap(), (2, "too large".into()));

        assert_eq!(j.quarantine_retry(Which::One(q1)).unwrap(), 1);
        let staged = j.inbox_peek(10).unwrap();
        assert_eq!(staged.len(), 2);
        let back = &staged[1];
        assert_eq!(
            (back.origin.as_str(), back.hlc, back.seq),
            ("n2", 100, Some(7))
        );
        assert_eq!(back.record, rec("a", 7));
        // Still current: the state holds that version.
        let (current, _) = j.inbox_current(10).unwrap();
        assert_eq!(current.len(), 2);

        // Set aside again: a new id, never the old one.
        let q3 = j
            .quarantine(back.id, "still unknown", 1, 1003)
            .unwrap()
            .unwrap();
        assert!(q3 > q2);
        // The same version staged again (a restore) and refused again
        // replaces its entry instead of adding one.
        j.stage_restore(&[(100, "n2".into(), rec("a", 7))]).unwrap();
        let again = j.inbox_peek(10).unwrap().pop().unwrap();
        let q4 = j
            .quarantine(again.id, "still unknown", 1, 1004)
            .unwrap()
            .unwrap();
        let list = j.quarantine_list(10).unwrap();
        assert_eq!(list.iter().map(|q| q.id).collect::<Vec<_>>(), [q2, q4]);
        assert_eq!(j.quarantine_drop(Which::One(q1)).unwrap(), 0);
        assert_eq!(j.quarantine_drop(Which::One(q3)).unwrap(), 0);
        assert_eq!(j.quarantine_drop(Which::All).unwrap(), 2);
        assert_eq!(j.quarantine_summary().unwrap(), (0, String::new()));
    }

    /// A newer version of a quarantined key makes it obsolete; so does
    /// applying the current version of the key.
    #[test]
    fn newer_versions_and_applies_make_it_obsolete() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        j.stage_remote("n2", &[change(1, 100, "a"), change(2, 101, "b")])
            .unwrap();
        for s in j.inbox_peek(10).unwrap() {
            j.quarantine(s.id, "unknown table", 1, 1).unwrap();
        }
        assert_eq!(j.quarantine_prune().unwrap(), 0);
        // A newer version of "a" from another node.
        j.stage_remote("n3", &[change(1, 200, "a")]).unwrap();
        assert_eq!(j.quarantine_prune().unwrap(), 1);
        let left = j.quarantine_list(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].record, Some(rec("b", 2)));
        assert_eq!(j.quarantine_applied(&[rec("b", 9).key()]).unwrap(), 1);
        assert_eq!(j.quarantine_summary().unwrap().0, 0);
    }
}
