//! The state: the latest version of every key (last writer wins), its
//! lookups, its purge and the chunks a snapshot sends.

use rusqlite::{params, CachedStatement, Connection, OptionalExtension};

use super::{Fault, Journal};
use crate::codec;
use crate::error::JournalError;
use crate::record::{Record, SnapRow};

/// Last writer wins, the one rule: a version replaces the state's version
/// of its key only if its (hlc, origin) is greater; the upsert executes to
/// 0 rows otherwise. `$also` adds a condition for one kind of writer.
macro_rules! last_writer_wins {
    ($also:literal) => {
        concat!(
            "INSERT INTO state (key, hlc, origin, body, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT(key) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, body = excluded.body,
                                    expires_at = excluded.expires_at
     WHERE (excluded.hlc > state.hlc OR (excluded.hlc = state.hlc AND excluded.origin > state.origin))",
            $also
        )
    };
}

/// The rule as it is for versions from peers.
const STATE_LWW: &str = last_writer_wins!("");

/// The rule for this node's own changes: also executes to 0 rows when
/// the state already holds the same body (a scan or a start-up comparison
/// reporting what is known: nothing to journal).
const STATE_LOCAL: &str = last_writer_wins!(
    "
       AND excluded.body IS NOT state.body"
);

/// Offers versions of keys to the state under the last-writer-wins rule:
/// every write of a new version goes through [`StateUpsert::offer`].
pub(super) struct StateUpsert<'c>(CachedStatement<'c>);

impl<'c> StateUpsert<'c> {
    /// For versions from peers, live or in a snapshot.
    pub(super) fn remote(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached(STATE_LWW).map(StateUpsert)
    }

    /// For this node's own changes: a version whose body the state already
    /// holds is refused too.
    pub(super) fn local(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached(STATE_LOCAL).map(StateUpsert)
    }

    /// Offers a record (encoded as `body`, under `key`, expiring at
    /// `expires_at`: [`crate::record::RecordRef::expires_at`]) stamped
    /// (`hlc`, `origin`): true when it is now the state's version of its
    /// key, false when the state holds a newer one (or, for local changes,
    /// the same body).
    pub(super) fn offer(
        &mut self,
        key: &[u8],
        hlc: u64,
        origin: &str,
        expires_at: Option<i64>,
        body: &[u8],
    ) -> rusqlite::Result<bool> {
        let changed = self
            .0
            .execute(params![key, hlc as i64, origin, body, expires_at])?;
        Ok(changed > 0)
    }
}

/// A step of the purge through keys (?1, ?2]: a statement of its own,
/// not one with an optional bound, so that SQLite reads only that range
/// (`key <= ?2 OR ?2 IS NULL` would scan to the end of the state).
const PURGE_RANGE: &str = "DELETE FROM state WHERE key > ?1 AND key <= ?2
     AND expires_at IS NOT NULL AND expires_at < ?3 AND hlc < ?4";

/// The last step of the purge: the keys after ?1.
const PURGE_TAIL: &str = "DELETE FROM state WHERE key > ?1
     AND expires_at IS NOT NULL AND expires_at < ?2 AND hlc < ?3";

/// (hlc, origin, record) rows as snapshot rows.
fn snap_rows(rows: Vec<(u64, String, Record)>) -> Vec<SnapRow> {
    rows.into_iter()
        .map(|(hlc, origin, record)| SnapRow {
            origin,
            hlc,
            record,
        })
        .collect()
}

impl Journal {
    /// Keys of the aliases of `table` that the state holds as present.
    pub fn live_alias_keys(&self, table: &[u8]) -> Result<Vec<Vec<u8>>, JournalError> {
        Ok(self
            .alias_versions(table)?
            .into_iter()
            .filter(|r| !r.record.is_delete())
            .map(|r| r.record.key())
            .collect())
    }

    /// Every version of an alias of `table` the state holds, present or
    /// deleted (what the check compares SER's alias table with).
    pub fn alias_versions(&self, table: &[u8]) -> Result<Vec<SnapRow>, JournalError> {
        let lo = crate::record::alias_table_prefix(table);
        let mut hi = lo.clone();
        hi.push(0xff);
        self.run(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT hlc, origin, body FROM state WHERE key > ?1 AND key < ?2",
            )?;
            let rows = stmt.query_map(params![lo, hi], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (hlc, origin, body) = row?;
                if let Ok(record @ Record::Alias { .. }) = codec::decode::<Record>(&body) {
                    out.push(SnapRow {
                        origin,
                        hlc,
                        record,
                    });
                }
            }
            Ok(out)
        })
    }

    /// (hlc, origin, record) of every contact the state holds as present
    /// and `keep` accepts.
    pub fn live_contacts(
        &self,
        keep: impl Fn(&crate::record::Contact) -> bool,
    ) -> Result<Vec<(u64, String, Record)>, JournalError> {
        self.contact_versions(|op, c| op == crate::record::Op::Upsert && keep(c))
    }

    /// (hlc, origin, record) of every contact version the state holds,
    /// present or deleted, that `keep` accepts.
    fn contact_versions(
        &self,
        keep: impl Fn(crate::record::Op, &crate::record::Contact) -> bool,
    ) -> Result<Vec<(u64, String, Record)>, JournalError> {
        self.versions(true, |r| match r {
            Record::Contact { op, contact } => keep(*op, contact),
            Record::Alias { .. } => false,
        })
    }

    /// (hlc, origin, record) of every version the state holds (of
    /// contacts only when `contacts_only`: their keys' range is read),
    /// present or deleted, that `keep` accepts.
    fn versions(
        &self,
        contacts_only: bool,
        keep: impl Fn(&Record) -> bool,
    ) -> Result<Vec<(u64, String, Record)>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached(if contacts_only {
                "SELECT hlc, origin, body FROM state WHERE key >= X'63' AND key < X'64'"
            } else {
                "SELECT hlc, origin, body FROM state"
            })?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (hlc, origin, body) = row?;
                if let Ok(rec) = codec::decode::<Record>(&body) {
                    if keep(&rec) {
                        out.push((hlc as u64, origin, rec));
                    }
                }
            }
            Ok(out)
        })
    }

    /// The digest ([`crate::digest`]) of what the state holds as present
    /// (comparable contacts and aliases), for a peer check made at unix
    /// time `now`.
    pub fn state_digest(&self, now: i64) -> Result<crate::digest::Digest, JournalError> {
        let mut d = crate::digest::Digest::default();
        for (_, _, rec) in self.versions(false, |r| !r.is_delete())? {
            d.add_record(&rec, now);
        }
        Ok(d)
    }

    /// The versions of the comparable contacts whose keys fall in `ranges`
    /// (sorted), for a check made at `now`: what is compared key by key
    /// where digests differ.
    pub fn state_in_ranges(
        &self,
        ranges: &[usize],
        now: i64,
    ) -> Result<Vec<SnapRow>, JournalError> {
        let rows = self.live_contacts(|c| {
            let c = c.as_ref();
            crate::digest::comparable(&c, now)
                && ranges.binary_search(&crate::digest::range_of(&c)).is_ok()
        })?;
        Ok(snap_rows(rows))
    }

    /// What a peer check compares in `ranges` (sorted) at unix time
    /// `now`: the versions of the comparable contacts and the aliases
    /// whose keys fall in them, and their tombstones there, whatever their
    /// expiry (a peer that still holds the contact must get the deletion).
    pub fn check_versions_in_ranges(
        &self,
        ranges: &[usize],
        now: i64,
    ) -> Result<Vec<SnapRow>, JournalError> {
        let rows = self.versions(false, |r| {
            let compared = match r {
                Record::Contact {
                    op: crate::record::Op::Upsert,
                    contact,
                } => crate::digest::comparable(&contact.as_ref(), now),
                _ => true,
            };
            compared
                && ranges
                    .binary_search(&crate::digest::record_range(r))
                    .is_ok()
        })?;
        Ok(snap_rows(rows))
    }

    /// The highest stamp the state holds (0 for an empty journal): the
    /// node's clock starts past it.
    pub fn max_stamp(&self) -> Result<u64, JournalError> {
        self.run(|c| {
            let hlc = c.query_row("SELECT coalesce(max(hlc), 0) FROM state", [], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(hlc as u64)
        })
    }

    /// The stamp of the version the state holds for `key`.
    pub fn state_stamp(&self, key: &[u8]) -> Result<Option<u64>, JournalError> {
        self.run(|c| {
            let hlc = c
                .prepare_cached("SELECT hlc FROM state WHERE key = ?1")?
                .query_row([key], |r| r.get::<_, i64>(0))
                .optional()?;
            Ok(hlc.map(|h| h as u64))
        })
    }

    /// The version the state holds for `key`: (stamp, origin, record).
    pub fn state_version(&self, key: &[u8]) -> Result<Option<(u64, String, Record)>, JournalError> {
        let row: Option<(i64, String, Vec<u8>)> = self.run(|c| {
            Ok(
                c.prepare_cached("SELECT hlc, origin, body FROM state WHERE key = ?1")?
                    .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?,
            )
        })?;
        Ok(row.and_then(|(h, o, b)| codec::decode(&b).ok().map(|r| (h as u64, o, r))))
    }

    /// The record the state holds for `key`, if any.
    pub fn state_of(&self, key: &[u8]) -> Result<Option<Record>, JournalError> {
        let body: Option<Vec<u8>> = self.run(|c| {
            Ok(
                c.query_row("SELECT body FROM state WHERE key = ?1", [key], |r| r.get(0))
                    .optional()?,
            )
        })?;
        Ok(body.and_then(|b| codec::decode(&b).ok()))
    }

    /// Drops the state of contacts that expired before `now` (unix s) and
    /// were last changed before `before_hlc` (retention): present or
    /// deleted, no version of them can matter any more, and without this
    /// the state would keep every contact ever seen. Contacts that never
    /// expire and aliases keep their tombstones. The whole state in one
    /// go, at most `limit` keys looked at; returns rows removed.
    pub fn purge_state(
        &mut self,
        now: i64,
        before_hlc: u64,
        limit: usize,
    ) -> Result<usize, JournalError> {
        self.purge_state_after(&[], now, before_hlc, limit)
            .map(|(n, _)| n)
    }

    /// One step of [`Journal::purge_state`] through the state in key
    /// order: the `limit` keys after `after`. Returns the rows removed and
    /// the last key looked at, where the next step starts (None: the end
    /// of the state was reached). The state has no index by expiry: one
    /// would be a second b-tree written for every change, where a pass
    /// now and then reads the state once.
    pub fn purge_state_after(
        &mut self,
        after: &[u8],
        now: i64,
        before_hlc: u64,
        limit: usize,
    ) -> Result<(usize, Option<Vec<u8>>), JournalError> {
        let upto: Option<Vec<u8>> = self.run(|c| {
            Ok(c.prepare_cached(
                "SELECT key FROM state WHERE key > ?1 ORDER BY key LIMIT 1 OFFSET ?2",
            )?
            .query_row(params![after, limit.saturating_sub(1) as i64], |r| r.get(0))
            .optional()?)
        })?;
        let removed = self.run_write(|c| {
            Ok(match &upto {
                Some(upto) => c.prepare_cached(PURGE_RANGE)?.execute(params![
                    after,
                    upto,
                    now,
                    before_hlc as i64
                ])?,
                None => {
                    c.prepare_cached(PURGE_TAIL)?
                        .execute(params![after, now, before_hlc as i64])?
                }
            })
        })?;
        Ok((removed, upto))
    }

    pub fn state_len(&self) -> Result<u64, JournalError> {
        self.run(|c| {
            let n = c.query_row("SELECT count(*) FROM state", [], |r| r.get::<_, i64>(0))?;
            Ok(n as u64)
        })
    }

    /// State rows with keys after `after_key`, in key order, at most
    /// `limit`: one chunk of a snapshot.
    pub fn state_chunk(
        &self,
        after_key: &[u8],
        limit: usize,
    ) -> Result<Vec<SnapRow>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT key, hlc, origin, body FROM state WHERE key > ?1 ORDER BY key LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_key, limit as i64], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (key, hlc, origin, body) = row?;
                let record = codec::decode(&body).map_err(|detail| Fault::BadRecord {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PURGE_RANGE;
    use crate::journal::tests::expiring;
    use crate::journal::Journal;
    use crate::record::{Change, Op};

    #[test]
    fn the_state_digest_counts_live_contacts_and_lists_a_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let now = 1_800_000_000;
        let recs: Vec<(u64, crate::record::Record)> = (0..20)
            .map(|i| {
                (
                    100 + i as u64,
                    expiring(&format!("u{i}"), Op::Upsert, now + 3600),
                )
            })
            .collect();
        j.append_local("n1", &recs).unwrap();
        let gone = expiring("u3", Op::Delete, now + 3600);
        j.append_local("n1", &[(200, gone)]).unwrap();
        let d = j.state_digest(now).unwrap();
        assert_eq!(d.counts.iter().sum::<u32>(), 19);
        let live: Vec<_> = recs
            .iter()
            .filter(|(h, _)| *h != 103)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(d, crate::digest::Digest::of(live, now));
        let r0 = d.counts.iter().position(|&n| n > 0).unwrap();
        let rows = j.state_in_ranges(&[r0], now).unwrap();
        assert_eq!(rows.len(), d.counts[r0] as usize);
    }

    #[test]
    fn a_check_compares_live_contacts_and_tombstones_of_its_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let now = 1_800_000_000;
        let range = |r: &crate::record::Record| match r {
            crate::record::Record::Contact { contact, .. } => {
                crate::digest::range_of(&contact.as_ref())
            }
            _ => unreachable!(),
        };
        let live = expiring("live", Op::Upsert, now + 3600);
        let soon = expiring("soon", Op::Upsert, now + 10);
        let gone = expiring("gone", Op::Delete, now - 5);
        j.append_local(
            "n1",
            &[(1, live.clone()), (2, soon.clone()), (3, gone.clone())],
        )
        .unwrap();
        let mut all = vec![range(&live), range(&soon), range(&gone)];
        all.sort_unstable();
        all.dedup();
        let got: Vec<u64> = j
            .check_versions_in_ranges(&all, now)
            .unwrap()
            .iter()
            .map(|r| r.hlc)
            .collect();
        assert_eq!(got.len(), 2, "the live contact and the tombstone: {got:?}");
        assert!(got.contains(&1) && got.contains(&3));
        let others: Vec<usize> = (0..crate::digest::RANGES)
            .filter(|r| !all.contains(r))
            .collect();
        assert!(j.check_versions_in_ranges(&others, now).unwrap().is_empty());
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
        // In steps of 2 keys, as the network thread goes through it.
        let (mut removed, mut after) = (0, Vec::new());
        loop {
            let (n, next) = j.purge_state_after(&after, now, 20, 2).unwrap();
            removed += n;
            match next {
                Some(k) => after = k,
                None => break,
            }
        }
        assert_eq!(removed, 3);
        // Each step reads its range of the key only.
        let plan: String = j
            .conn
            .query_row(
                &format!("EXPLAIN QUERY PLAN {PURGE_RANGE}"),
                rusqlite::params![b"a", b"b", 0, 0],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("key>? AND key<?"), "{plan}");
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
}
