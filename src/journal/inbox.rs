//! The inbox: remote changes staged for applying into SER, from live
//! batches and snapshot chunks, and the progress of applying them.

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};

use super::state::StateUpsert;
use super::{Fault, Journal};
use crate::codec;
use crate::error::JournalError;
use crate::record::{Change, Record, SnapRow};

/// Stages a remote change; its key lets the applier check it against the
/// state in the same query that reads it.
const INBOX_INSERT: &str =
    "INSERT INTO inbox (origin, hlc, body, key, seq) VALUES (?1, ?2, ?3, ?4, ?5)";

/// The position held from an origin (its `received` row).
pub(super) const RECEIVED_SEQ: &str = "SELECT seq FROM received WHERE origin = ?1";

/// A remote change staged for applying.
#[derive(Debug, Clone)]
pub struct Staged {
    pub id: i64,
    pub origin: String,
    pub hlc: u64,
    /// The origin's sequence of a live change; None for snapshot rows and
    /// restores.
    pub seq: Option<u64>,
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

/// Stages remote versions in the transaction it was made in: a version
/// the state takes (last writer wins) enters the inbox; the others are
/// superseded and left out.
struct Stager<'t> {
    state: StateUpsert<'t>,
    inbox: CachedStatement<'t>,
    body: Vec<u8>,
}

impl<'t> Stager<'t> {
    fn new(tx: &'t Connection) -> rusqlite::Result<Self> {
        Ok(Stager {
            state: StateUpsert::remote(tx)?,
            inbox: tx.prepare_cached(INBOX_INSERT)?,
            body: Vec::with_capacity(512),
        })
    }

    /// Stages `record` stamped (`hlc`, `origin`), `seq` in the origin's
    /// log if it came live; false when the state holds a newer version of
    /// its key.
    fn stage(
        &mut self,
        origin: &str,
        hlc: u64,
        seq: Option<u64>,
        record: &Record,
    ) -> rusqlite::Result<bool> {
        self.body.clear();
        codec::encode_into(record, &mut self.body).expect("encoding into a Vec cannot fail");
        let key = record.key();
        if !self.state.offer(&key, hlc, origin, record, &self.body)? {
            return Ok(false);
        }
        self.inbox.execute(params![
            origin,
            hlc as i64,
            self.body,
            key,
            seq.map(|s| s as i64)
        ])?;
        Ok(true)
    }
}

impl Journal {
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
        self.stage_remote_through(origin, changes, 0)
    }

    /// As [`Journal::stage_remote`], and the position held from `origin`
    /// becomes at least `through`: the batch also held changes up to it
    /// that this node set aside (records it cannot decode), which must not
    /// come again.
    pub fn stage_remote_through(
        &mut self,
        origin: &str,
        changes: &[Change],
        through: u64,
    ) -> Result<StageOutcome, JournalError> {
        self.write(|tx| {
            let held: u64 = tx
                .prepare_cached(RECEIVED_SEQ)?
                .query_row([origin], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0) as u64;
            let mut out = StageOutcome {
                upto: held,
                ..Default::default()
            };
            let mut stager = Stager::new(tx)?;
            for ch in changes {
                if ch.seq <= out.upto {
                    continue;
                }
                out.upto = ch.seq;
                out.fresh += 1;
                if !stager.stage(origin, ch.hlc, Some(ch.seq), &ch.record)? {
                    out.superseded += 1;
                }
            }
            out.upto = out.upto.max(through);
            if out.upto > held {
                tx.prepare_cached(
                    "INSERT INTO received (origin, seq) VALUES (?1, ?2)
                     ON CONFLICT(origin) DO UPDATE SET seq = excluded.seq",
                )?
                .execute(params![origin, out.upto as i64])?;
            }
            Ok(out)
        })
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
        self.write(|tx| {
            let mut out = StageOutcome {
                upto,
                ..Default::default()
            };
            let mut stager = Stager::new(tx)?;
            for row in rows {
                out.fresh += 1;
                if !stager.stage(&row.origin, row.hlc, None, &row.record)? {
                    out.superseded += 1;
                }
            }
            if last {
                tx.execute("DELETE FROM snapshot_in WHERE origin = ?1", [origin])?;
                tx.execute(
                    "INSERT INTO received (origin, seq) VALUES (?1, ?2)
                     ON CONFLICT(origin) DO UPDATE SET seq = max(seq, excluded.seq)",
                    params![origin, upto as i64],
                )?;
            } else if let Some(lastrow) = rows.last() {
                tx.execute(
                    "INSERT INTO snapshot_in (origin, upto, after_key) VALUES (?1, ?2, ?3)
                     ON CONFLICT(origin) DO UPDATE SET upto = excluded.upto, after_key = excluded.after_key",
                    params![origin, upto as i64, lastrow.record.key()],
                )?;
            }
            Ok(out)
        })
    }

    /// Stages versions a peer check brought (rows of a peer's state, each
    /// with its own origin and stamp) in one transaction: each enters the
    /// inbox unless the state holds a newer version of its key (last
    /// writer wins on (hlc, origin)). No position moves. Durable on
    /// return.
    pub fn stage_repair(&mut self, rows: &[SnapRow]) -> Result<StageOutcome, JournalError> {
        self.write(|tx| {
            let mut out = StageOutcome::default();
            let mut stager = Stager::new(tx)?;
            for row in rows {
                out.fresh += 1;
                if !stager.stage(&row.origin, row.hlc, None, &row.record)? {
                    out.superseded += 1;
                }
            }
            Ok(out)
        })
    }

    /// Where a snapshot from `origin` stopped, if one is in progress:
    /// (the sender's sequence it is consistent with, last key received).
    pub fn snapshot_progress(&self, origin: &str) -> Result<Option<(u64, Vec<u8>)>, JournalError> {
        self.run(|c| {
            Ok(c.query_row(
                "SELECT upto, after_key FROM snapshot_in WHERE origin = ?1",
                [origin],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()?)
        })
    }

    /// Stages versions the state already holds for applying into SER again
    /// (SER lost them). They keep their stamp, so they stay current.
    /// Returns the inbox ids they got (first, last), None if none.
    pub fn stage_restore(
        &mut self,
        records: &[(u64, String, Record)],
    ) -> Result<Option<(i64, i64)>, JournalError> {
        self.write(|tx| {
            let mut ins = tx.prepare_cached(INBOX_INSERT)?;
            let mut body = Vec::with_capacity(512);
            let mut ids = None;
            for (hlc, origin, rec) in records {
                body.clear();
                codec::encode_into(rec, &mut body).expect("encoding into a Vec cannot fail");
                ins.execute(params![origin, *hlc as i64, body, rec.key(), None::<i64>])?;
                let id = tx.last_insert_rowid();
                ids = Some(ids.map_or((id, id), |(first, _)| (first, id)));
            }
            Ok(ids)
        })
    }

    /// Stages for applying into SER again every contact the state holds as
    /// present and `keep` accepts (SER lost them all: a restart with
    /// usrloc in memory). In one transaction, read and staged row by row
    /// as the state stores them (not collected first, not encoded again).
    /// Returns the inbox ids they got (first, last), None if none.
    pub fn stage_restore_live(
        &mut self,
        keep: impl Fn(&crate::record::Contact) -> bool,
    ) -> Result<Option<(i64, i64)>, JournalError> {
        self.write(|tx| {
            let mut read = tx.prepare_cached(
                "SELECT key, hlc, origin, body FROM state WHERE key >= X'63' AND key < X'64'",
            )?;
            let mut ins = tx.prepare_cached(INBOX_INSERT)?;
            let mut rows = read.query([])?;
            let mut ids = None;
            while let Some(r) = rows.next()? {
                let body = r.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
                let live = match codec::decode::<Record>(body) {
                    Ok(Record::Contact { op, contact }) => {
                        op == crate::record::Op::Upsert && keep(&contact)
                    }
                    _ => false,
                };
                if !live {
                    continue;
                }
                ins.execute(params![
                    r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?,
                    r.get::<_, i64>(1)?,
                    body,
                    r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?,
                    None::<i64>
                ])?;
                let id = tx.last_insert_rowid();
                ids = Some(ids.map_or((id, id), |(first, _)| (first, id)));
            }
            Ok(ids)
        })
    }

    /// The oldest staged changes, at most `limit`, without those another
    /// version of their key has overtaken since they were staged (applying
    /// them would put an older version back). Returns the last id read too,
    /// so that the overtaken ones are removed with the rest.
    pub fn inbox_current(
        &mut self,
        limit: usize,
    ) -> Result<(Vec<Staged>, Option<i64>), JournalError> {
        self.inbox_current_after(0, limit)
    }

    /// [`Journal::inbox_current`] of the changes staged after id `after`
    /// (those up to it are applied, their deletion pending).
    pub fn inbox_current_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Staged>, Option<i64>), JournalError> {
        // One read transaction: one consistent view, one lock.
        self.transaction(TransactionBehavior::Deferred, |tx| {
            let mut out = Vec::new();
            let mut last_id = None;
            // A change is still current unless the state holds another
            // version of its key (a newer one, local or remote).
            let mut peek = tx.prepare_cached(
                "SELECT i.id, i.origin, i.hlc, i.body,
                        s.key IS NULL OR (s.hlc = i.hlc AND s.origin = i.origin), i.seq
                 FROM inbox i LEFT JOIN state s ON s.key = i.key
                 WHERE i.id > ?1 ORDER BY i.id LIMIT ?2",
            )?;
            let mut rows = peek.query(params![after, limit as i64])?;
            while let Some(r) = rows.next()? {
                let (id, origin, hlc, body, current): (i64, String, i64, Vec<u8>, bool) =
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                let seq: Option<i64> = r.get(5)?;
                last_id = Some(id);
                if !current {
                    continue;
                }
                let record: Record =
                    codec::decode(&body).map_err(|detail| Fault::BadRecord { seq: id, detail })?;
                out.push(Staged {
                    id,
                    origin,
                    hlc: hlc as u64,
                    seq: seq.map(|s| s as u64),
                    record,
                });
            }
            Ok((out, last_id))
        })
    }

    /// Keys of every change staged and not yet applied.
    pub fn inbox_keys(&self) -> Result<std::collections::HashSet<Vec<u8>>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached("SELECT key FROM inbox WHERE key IS NOT NULL")?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The oldest staged changes, at most `limit`.
    pub fn inbox_peek(&self, limit: usize) -> Result<Vec<Staged>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, origin, hlc, body, seq FROM inbox ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, origin, hlc, body, seq) = row?;
                let record =
                    codec::decode(&body).map_err(|detail| Fault::BadRecord { seq: id, detail })?;
                out.push(Staged {
                    id,
                    origin,
                    hlc: hlc as u64,
                    seq: seq.map(|s| s as u64),
                    record,
                });
            }
            Ok(out)
        })
    }

    /// Removes staged changes up to and including `id`: they are applied.
    pub fn inbox_done(&mut self, upto_id: i64) -> Result<(), JournalError> {
        self.run_write(|c| {
            c.prepare_cached("DELETE FROM inbox WHERE id <= ?1")?
                .execute([upto_id])?;
            Ok(())
        })
    }

    pub fn inbox_len(&self) -> Result<u64, JournalError> {
        self.inbox_len_after(0)
    }

    /// Changes staged after id `after` (those up to it are applied).
    pub fn inbox_len_after(&self, after: i64) -> Result<u64, JournalError> {
        self.run(|c| {
            let n = c
                .prepare_cached("SELECT count(*) FROM inbox WHERE id > ?1")?
                .query_row([after], |r| r.get::<_, i64>(0))?;
            Ok(n as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::StageOutcome;
    use crate::journal::tests::{expiring, rec};
    use crate::journal::Journal;
    use crate::record::{Change, Op, Record};

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

    /// A restore stages exactly the present contacts `keep` accepts, each
    /// under the stamp and origin the state holds for it.
    #[test]
    fn a_restore_stages_the_live_contacts_as_the_state_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let live = expiring("live", Op::Upsert, 2_000);
        let other_domain = {
            let Record::Contact { mut contact, .. } = expiring("elsewhere", Op::Upsert, 2_000)
            else {
                unreachable!()
            };
            contact.domain = b"other".to_vec();
            Record::Contact {
                op: Op::Upsert,
                contact,
            }
        };
        j.append_local(
            "n1",
            &[
                (10, live.clone()),
                (11, expiring("deleted", Op::Delete, 2_000)),
                (12, expiring("expired", Op::Upsert, 500)),
                (13, other_domain),
            ],
        )
        .unwrap();
        let remote = expiring("remote", Op::Upsert, 3_000);
        let batch = [Change {
            seq: 1,
            hlc: 20,
            record: remote.clone(),
        }];
        j.stage_remote("n2", &batch).unwrap();
        let staged_before = j.inbox_peek(100).unwrap();
        assert_eq!(staged_before.len(), 1);

        let now = 1_000;
        let ids = j
            .stage_restore_live(|c| c.expires > now && c.domain == b"location")
            .unwrap()
            .expect("two live contacts");
        let restored: Vec<_> = j
            .inbox_peek(100)
            .unwrap()
            .into_iter()
            .filter(|s| s.id >= ids.0 && s.id <= ids.1)
            .map(|s| (s.origin, s.hlc, s.seq, s.record))
            .collect();
        assert_eq!(ids.1 - ids.0 + 1, 2);
        let mut want = vec![
            ("n1".to_string(), 10, None, live),
            ("n2".to_string(), 20, None, remote),
        ];
        want.sort_by_key(|w| w.3.key());
        assert_eq!(restored, want);
        // Nothing live: nothing staged.
        let empty = tempfile::tempdir().unwrap();
        let mut e = Journal::open(&empty.path().join("j.db")).unwrap();
        assert_eq!(e.stage_restore_live(|_| true).unwrap(), None);
    }
}
