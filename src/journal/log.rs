//! The log: this node's own changes under their sequence numbers, stored
//! a batch per row (`log_batch`): the changes one ingest transaction
//! journaled, numbered densely from `first` to `last`, packed into one
//! blob (see [`Packed`]). One row written and read per batch instead
//! of one per change; trimming removes whole batches and cuts the one it
//! ends inside.

use rusqlite::{params, Connection, OptionalExtension};

use super::state::StateUpsert;
use super::{Fault, Journal};
use crate::codec;
use crate::error::JournalError;
use crate::record::{Change, Record};

/// Bytes a change takes in a packed batch besides its encoding: its stamp
/// (8 bytes, little-endian) and the length of its encoding (4 bytes).
const PACK_HEAD: usize = 12;

/// A batch of the log being built: its changes packed (stamp, length,
/// encoded record, one after another) and its newest stamp.
#[derive(Default)]
pub(super) struct Packed {
    bytes: Vec<u8>,
    hlc_max: u64,
}

impl Packed {
    pub(super) fn with_capacity(bytes: usize) -> Packed {
        Packed {
            bytes: Vec::with_capacity(bytes),
            hlc_max: 0,
        }
    }

    /// Appends one change.
    pub(super) fn push(&mut self, hlc: u64, body: &[u8]) {
        self.bytes.extend_from_slice(&hlc.to_le_bytes());
        self.bytes
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(body);
        self.hlc_max = self.hlc_max.max(hlc);
    }

    /// Stores the batch as the changes `first..=last` of the log.
    pub(super) fn insert(&self, conn: &Connection, first: u64, last: u64) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT INTO log_batch (first, last, hlc_max, body) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            first as i64,
            last as i64,
            self.hlc_max as i64,
            self.bytes
        ])?;
        Ok(())
    }
}

/// The changes of a packed batch in order: (stamp, encoded record), or
/// an error at the first change whose length runs past the blob.
fn unpack(blob: &[u8]) -> impl Iterator<Item = Result<(u64, &[u8]), String>> {
    let mut rest = blob;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < PACK_HEAD {
            rest = &[];
            return Some(Err("packed batch ends inside a change's header".into()));
        }
        let hlc = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        if rest.len() - PACK_HEAD < len {
            rest = &[];
            return Some(Err(format!(
                "packed batch ends inside a change of {len} bytes"
            )));
        }
        let body = &rest[PACK_HEAD..PACK_HEAD + len];
        rest = &rest[PACK_HEAD + len..];
        Some(Ok((hlc, body)))
    })
}

/// The changes of the batch that starts at `first`, numbered.
pub(super) fn unpack_numbered(
    first: u64,
    blob: &[u8],
) -> impl Iterator<Item = Result<(u64, u64, &[u8]), Fault>> {
    unpack(blob).enumerate().map(move |(i, c)| {
        let seq = first + i as u64;
        c.map(|(hlc, body)| (seq, hlc, body))
            .map_err(|detail| Fault::BadRecord {
                seq: seq as i64,
                detail,
            })
    })
}

impl Journal {
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
        self.append_local_behind(node_id, records)
            .map(|(last, n, _)| (last, n))
    }

    /// [`Journal::append_local`], also telling which records (their
    /// indices) were not journaled because the state holds a newer
    /// version of their key with another body: changes stamped behind a
    /// version seen from a peer, which the caller may stamp again when
    /// they are what SER holds (see [`crate::ingest`]).
    pub fn append_local_behind(
        &mut self,
        node_id: &str,
        records: &[(u64, Record)],
    ) -> Result<(u64, usize, Vec<usize>), JournalError> {
        if records.is_empty() {
            return Ok((self.last_seq()?, 0, Vec::new()));
        }
        self.write(|tx| {
            let mut behind = Vec::new();
            let mut held = tx.prepare_cached("SELECT hlc, body FROM state WHERE key = ?1")?;
            let mut appended = 0;
            let before = Self::last_seq_in(tx)?;
            let mut seq = before;
            let mut packed = Packed::with_capacity(records.len() * 400);
            let mut state = StateUpsert::local(tx)?;
            let mut body = Vec::with_capacity(512);
            for (i, (hlc, rec)) in records.iter().enumerate() {
                body.clear();
                codec::encode_into(rec, &mut body).expect("encoding into a Vec cannot fail");
                // Journaled only if it changes the state: not a version
                // the state already holds, nor one older than it holds.
                let key = rec.key();
                if !state.offer(&key, *hlc, node_id, rec.as_ref().expires_at(), &body)? {
                    let (h, b): (i64, Vec<u8>) =
                        held.query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    if h as u64 >= *hlc && b != body {
                        behind.push(i);
                    }
                    continue;
                }
                seq += 1;
                packed.push(*hlc, &body);
                appended += 1;
            }
            if appended > 0 {
                packed.insert(tx, before + 1, seq)?;
            }
            Ok((seq, appended, behind))
        })
    }

    pub(super) fn last_seq_in(conn: &Connection) -> Result<u64, Fault> {
        let last = conn
            .prepare_cached(
                "SELECT max(coalesce((SELECT last FROM log_batch ORDER BY first DESC LIMIT 1), 0),
                            coalesce((SELECT v FROM meta WHERE k = 'seq_floor'), 0))",
            )?
            .query_row([], |r| r.get::<_, i64>(0))?;
        Ok(last as u64)
    }

    /// The highest local sequence ever issued (trimmed or not).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        self.run(Self::last_seq_in)
    }

    /// The lowest local sequence still in the log; `last_seq + 1` if the
    /// log is empty. A peer that needs anything below it gets a snapshot.
    pub fn first_available(&self) -> Result<u64, JournalError> {
        let min: Option<i64> = self.run(|c| {
            Ok(c.prepare_cached("SELECT min(first) FROM log_batch")?
                .query_row([], |r| r.get(0))?)
        })?;
        match min {
            Some(m) => Ok(m as u64),
            None => Ok(self.last_seq()? + 1),
        }
    }

    /// Removes log entries up to `upto` (every peer has them, or
    /// retention ended for them): the batches that end there or before
    /// go, a batch `upto` falls inside keeps only what follows it. The
    /// state table keeps the latest version of every key, which is what
    /// a snapshot sends. Returns entries removed.
    pub fn trim(&mut self, upto: u64) -> Result<usize, JournalError> {
        self.write(|tx| {
            let upto = upto as i64;
            let whole: i64 = tx.query_row(
                "SELECT coalesce(sum(last - first + 1), 0) FROM log_batch
                 WHERE first <= ?1 AND last <= ?1",
                [upto],
                |r| r.get(0),
            )?;
            tx.execute(
                "DELETE FROM log_batch WHERE first <= ?1 AND last <= ?1",
                [upto],
            )?;
            let mut n = whole;
            let inside: Option<(i64, i64, Vec<u8>)> = tx
                .query_row(
                    "SELECT first, last, body FROM log_batch WHERE first <= ?1 AND last > ?1",
                    [upto],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((first, last, blob)) = inside {
                let mut rest = Packed::with_capacity(blob.len());
                for change in unpack_numbered(first as u64, &blob) {
                    let (seq, hlc, body) = change?;
                    if seq as i64 > upto {
                        rest.push(hlc, body);
                    }
                }
                tx.execute("DELETE FROM log_batch WHERE first = ?1", [first])?;
                rest.insert(tx, upto as u64 + 1, last as u64)?;
                n += upto + 1 - first;
            }
            if n > 0 {
                tx.execute(
                    "INSERT INTO meta (k, v) VALUES ('seq_floor', ?1)
                     ON CONFLICT(k) DO UPDATE SET v = max(v, excluded.v)",
                    [upto],
                )?;
            }
            Ok(n as usize)
        })
    }

    /// The last sequence of the batch holding `seq` (None if no batch
    /// holds it): where a trim may stop without cutting a batch.
    pub fn batch_end(&self, seq: u64) -> Result<Option<u64>, JournalError> {
        self.run(|c| {
            let last: Option<i64> = c
                .prepare_cached(
                    "SELECT last FROM log_batch WHERE first <= ?1 AND last >= ?1
                     ORDER BY first DESC LIMIT 1",
                )?
                .query_row([seq as i64], |r| r.get(0))
                .optional()?;
            Ok(last.map(|l| l as u64))
        })
    }

    pub fn log_len(&self) -> Result<u64, JournalError> {
        self.run(|c| {
            let n = c.query_row(
                "SELECT coalesce(sum(last - first + 1), 0) FROM log_batch",
                [],
                |r| r.get::<_, i64>(0),
            )?;
            Ok(n as u64)
        })
    }

    /// Local changes after `after`, at most `limit`, in sequence order.
    pub fn read_log(&self, after: u64, limit: usize) -> Result<Vec<Change>, JournalError> {
        let rows = self.read_log_encoded(after, limit)?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, hlc, body) in rows {
            let record = codec::decode(&body).map_err(|detail| {
                Fault::BadRecord {
                    seq: seq as i64,
                    detail,
                }
                .at(&self.path)
            })?;
            out.push(Change { seq, hlc, record });
        }
        Ok(out)
    }

    /// [`Journal::read_log`] as stored: (sequence, stamp, the record's
    /// encoded bytes), not decoded. What a batch frame of protocol v2 and
    /// later carries as it is.
    pub fn read_log_encoded(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64, Vec<u8>)>, JournalError> {
        self.run(|c| {
            // From the batch holding `after + 1` (or the first after it).
            let mut stmt = c.prepare_cached(
                "SELECT first, body FROM log_batch
                 WHERE first >= coalesce((SELECT max(first) FROM log_batch WHERE first <= ?1), 0)
                 ORDER BY first",
            )?;
            let mut rows = stmt.query([(after + 1) as i64])?;
            let mut out = Vec::new();
            while out.len() < limit {
                let Some(r) = rows.next()? else { break };
                let first = r.get::<_, i64>(0)? as u64;
                let blob = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
                for change in unpack_numbered(first, blob) {
                    let (seq, hlc, body) = change?;
                    if seq <= after {
                        continue;
                    }
                    out.push((seq, hlc, body.to_vec()));
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
    }

    /// The journal time (HLC) of local change `seq`, if still held.
    pub fn hlc_of(&self, seq: u64) -> Result<Option<u64>, JournalError> {
        self.run(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT first, body FROM log_batch WHERE first <= ?1 AND last >= ?1
                 ORDER BY first DESC LIMIT 1",
            )?;
            let mut rows = stmt.query([seq as i64])?;
            let Some(r) = rows.next()? else {
                return Ok(None);
            };
            let first = r.get::<_, i64>(0)? as u64;
            let blob = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            for change in unpack_numbered(first, blob) {
                let (s, hlc, _) = change?;
                if s == seq {
                    return Ok(Some(hlc));
                }
            }
            Ok(None)
        })
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
        self.write(|tx| {
            let last = Self::last_seq_in(tx)?;
            // Beyond the last sequence too: no new number meets an old one.
            let shift = after.max(last) as i64;
            tx.execute(
                "UPDATE log_batch SET first = first + ?1, last = last + ?1",
                [shift],
            )?;
            tx.execute(
                "INSERT INTO meta (k, v) VALUES ('seq_floor', ?1)
                 ON CONFLICT(k) DO UPDATE SET v = v + ?1",
                [shift],
            )?;
            Self::last_seq_in(tx)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::tests::rec;
    use crate::journal::Journal;

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
        assert_eq!(j.batch_end(1).unwrap(), Some(3));
        assert_eq!(j.batch_end(4).unwrap(), None);
        // Inside the batch: what follows 1 stays, under its numbers.
        assert_eq!(j.trim(1).unwrap(), 1);
        assert_eq!(j.first_available().unwrap(), 2);
        assert_eq!(j.hlc_of(3).unwrap(), Some(12));
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
}
