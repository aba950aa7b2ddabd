//! The inbox: remote changes staged for applying into SER, from live
//! batches and snapshot chunks, and the progress of applying them.
//!
//! Stored a frame per row (`inbox_frame`): the changes one staging
//! transaction took, at most [`FRAME_ENTRIES`], packed into one blob and
//! numbered densely from `first` to `last`. Ids come from a counter kept
//! in `meta` and are never reused, so a position read before a deletion
//! stays valid after it. A frame leaves once every change in it is done;
//! a change moved out of it alone (quarantined) is marked removed in
//! place and counted in `removed`.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::state::StateUpsert;
use super::{Fault, Journal};
use crate::codec;
use crate::error::JournalError;
use std::borrow::Cow;

use crate::record::{Change, Record, RecordRef, SnapRow};

/// Changes a frame holds at most: a large staging (a restore, a batch of
/// 4,096) takes several, so a reader never holds much more than it needs.
const FRAME_ENTRIES: usize = 1000;

/// Bytes a change takes in a frame besides its origin and encoding:
/// flags (1), stamp (8), sequence (8), origin's length (2), encoding's
/// length (4), little-endian.
const ENTRY_HEAD: usize = 23;
/// Flag: the change left the frame alone (quarantined).
const REMOVED: u8 = 1;
/// Flag: the sequence field holds the origin's sequence of a live change.
const HAS_SEQ: u8 = 2;

/// The `meta` key of the next inbox id.
const INBOX_NEXT: &str = "inbox_next";

/// One change as a frame stores it.
pub(super) struct Entry<'b> {
    /// Where its flags byte is in the frame.
    flags_at: usize,
    removed: bool,
    hlc: u64,
    seq: Option<u64>,
    origin: &'b str,
    body: &'b [u8],
}

/// The changes of the frame that starts at id `first`, numbered, or an
/// error at the first one that runs past the blob.
fn entries(first: i64, blob: &[u8]) -> impl Iterator<Item = Result<(i64, Entry<'_>), Fault>> + '_ {
    let mut at = 0;
    let mut id = first;
    std::iter::from_fn(move || {
        if at >= blob.len() {
            return None;
        }
        let bad = |detail: String| Fault::BadRecord { seq: id, detail };
        let rest = &blob[at..];
        if rest.len() < ENTRY_HEAD {
            at = blob.len();
            return Some(Err(bad("inbox frame ends inside a change's header".into())));
        }
        let flags = rest[0];
        let hlc = u64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(rest[9..17].try_into().expect("8 bytes"));
        let olen = u16::from_le_bytes(rest[17..19].try_into().expect("2 bytes")) as usize;
        let blen = u32::from_le_bytes(rest[19..23].try_into().expect("4 bytes")) as usize;
        if rest.len() - ENTRY_HEAD < olen + blen {
            at = blob.len();
            return Some(Err(bad(format!(
                "inbox frame ends inside a change of {} bytes",
                olen + blen
            ))));
        }
        let origin = match std::str::from_utf8(&rest[ENTRY_HEAD..ENTRY_HEAD + olen]) {
            Ok(o) => o,
            Err(e) => {
                at = blob.len();
                return Some(Err(bad(format!("origin is not UTF-8: {e}"))));
            }
        };
        let entry = Entry {
            flags_at: at,
            removed: flags & REMOVED != 0,
            hlc,
            seq: (flags & HAS_SEQ != 0).then_some(seq),
            origin,
            body: &rest[ENTRY_HEAD + olen..ENTRY_HEAD + olen + blen],
        };
        at += ENTRY_HEAD + olen + blen;
        id += 1;
        Some(Ok((id - 1, entry)))
    })
}

/// Frames being written in one transaction: every change staged goes
/// through [`Frames::push`], and [`Frames::finish`] stores what is left
/// and the next id.
pub(super) struct Frames<'t> {
    conn: &'t Connection,
    /// The id the next change gets.
    next: i64,
    /// The id of the first change in `bytes`.
    first: i64,
    bytes: Vec<u8>,
    /// Ids given in this transaction (first, last).
    ids: Option<(i64, i64)>,
}

impl<'t> Frames<'t> {
    pub(super) fn new(conn: &'t Connection) -> rusqlite::Result<Self> {
        let next = conn
            .prepare_cached("SELECT v FROM meta WHERE k = ?1")?
            .query_row([INBOX_NEXT], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(1);
        Ok(Frames {
            conn,
            next,
            first: next,
            bytes: Vec::new(),
            ids: None,
        })
    }

    /// Stages one change; returns its id.
    pub(super) fn push(
        &mut self,
        origin: &str,
        hlc: u64,
        seq: Option<u64>,
        body: &[u8],
    ) -> rusqlite::Result<i64> {
        if self.next - self.first >= FRAME_ENTRIES as i64 {
            self.flush()?;
        }
        let b = &mut self.bytes;
        b.push(if seq.is_some() { HAS_SEQ } else { 0 });
        b.extend_from_slice(&hlc.to_le_bytes());
        b.extend_from_slice(&seq.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&(origin.len() as u16).to_le_bytes());
        b.extend_from_slice(&(body.len() as u32).to_le_bytes());
        b.extend_from_slice(origin.as_bytes());
        b.extend_from_slice(body);
        let id = self.next;
        self.next += 1;
        self.ids = Some(self.ids.map_or((id, id), |(first, _)| (first, id)));
        Ok(id)
    }

    /// Stages every row of `rows`, read as (origin, stamp, sequence or
    /// NULL, encoded record): those of an older inbox, or of the quarantine.
    pub(super) fn push_rows(&mut self, mut rows: rusqlite::Rows<'_>) -> rusqlite::Result<()> {
        while let Some(r) = rows.next()? {
            self.push(
                r.get_ref(0)?.as_str()?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Option<i64>>(2)?.map(|s| s as u64),
                r.get_ref(3)?.as_blob()?,
            )?;
        }
        Ok(())
    }

    fn flush(&mut self) -> rusqlite::Result<()> {
        if self.next > self.first {
            self.conn
                .prepare_cached("INSERT INTO inbox_frame (first, last, body) VALUES (?1, ?2, ?3)")?
                .execute(params![self.first, self.next - 1, self.bytes])?;
            self.bytes.clear();
            self.first = self.next;
        }
        Ok(())
    }

    /// Stores the last frame and the next id; returns the ids given.
    pub(super) fn finish(mut self) -> rusqlite::Result<Option<(i64, i64)>> {
        self.flush()?;
        if self.ids.is_some() {
            self.conn
                .prepare_cached(
                    "INSERT INTO meta (k, v) VALUES (?1, ?2)
                     ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                )?
                .execute(params![INBOX_NEXT, self.next])?;
        }
        Ok(self.ids)
    }
}

/// The position held from an origin (its `received` row).
pub(super) const RECEIVED_SEQ: &str = "SELECT seq FROM received WHERE origin = ?1";

/// A remote change as staging takes it: its record encoded as this node
/// encodes it, with its key and expiry.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub seq: u64,
    pub hlc: u64,
    pub key: Vec<u8>,
    pub expires_at: Option<i64>,
    pub body: Cow<'a, [u8]>,
}

impl Incoming<'_> {
    /// From a decoded change: encoded here.
    pub fn of(change: &Change) -> Incoming<'static> {
        let mut body = Vec::with_capacity(512);
        codec::encode_into(&change.record, &mut body).expect("encoding into a Vec cannot fail");
        Incoming {
            seq: change.seq,
            hlc: change.hlc,
            key: change.record.key(),
            expires_at: change.record.as_ref().expires_at(),
            body: Cow::Owned(body),
        }
    }
}

impl<'a> Incoming<'a> {
    /// From a record's encoding as a peer sent it: decoded in place (its
    /// fields borrowed, not copied) to check it and learn its key and
    /// expiry, and stored as received when that is exactly how this node
    /// encodes it: the same length means every number took its shortest
    /// form, the only freedom the encoding has. Encoded again otherwise.
    /// Err: bytes that are no record this node knows.
    pub fn from_encoded(seq: u64, hlc: u64, bytes: &'a [u8]) -> Result<Incoming<'a>, String> {
        let record: RecordRef = codec::decode_borrowed(bytes)?;
        let body = if codec::encoded_len(&record)? == bytes.len() as u64 {
            Cow::Borrowed(bytes)
        } else {
            let mut body = Vec::with_capacity(bytes.len());
            codec::encode_into(&record, &mut body)?;
            Cow::Owned(body)
        };
        Ok(Incoming {
            seq,
            hlc,
            key: record.key(),
            expires_at: record.expires_at(),
            body,
        })
    }
}

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
/// superseded and left out. [`Stager::finish`] stores the inbox's frames.
struct Stager<'t> {
    state: StateUpsert<'t>,
    frames: Frames<'t>,
    body: Vec<u8>,
}

impl<'t> Stager<'t> {
    fn new(tx: &'t Connection) -> rusqlite::Result<Self> {
        Ok(Stager {
            state: StateUpsert::remote(tx)?,
            frames: Frames::new(tx)?,
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
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        codec::encode_into(record, &mut body).expect("encoding into a Vec cannot fail");
        let staged = self.stage_encoded(
            origin,
            hlc,
            seq,
            &record.key(),
            record.as_ref().expires_at(),
            &body,
        );
        self.body = body;
        staged
    }

    /// [`Stager::stage`] of a record already encoded as `body`, under
    /// `key`, expiring at `expires_at`.
    fn stage_encoded(
        &mut self,
        origin: &str,
        hlc: u64,
        seq: Option<u64>,
        key: &[u8],
        expires_at: Option<i64>,
        body: &[u8],
    ) -> rusqlite::Result<bool> {
        if !self.state.offer(key, hlc, origin, expires_at, body)? {
            return Ok(false);
        }
        self.frames.push(origin, hlc, seq, body)?;
        Ok(true)
    }

    fn finish(self) -> rusqlite::Result<()> {
        self.frames.finish().map(|_| ())
    }
}

/// A change taken out of its frame alone: (origin, stamp, sequence,
/// encoded record).
pub(super) type Removed = (String, u64, Option<u64>, Vec<u8>);

/// Marks the staged change `id` removed in its frame and returns it; None
/// when the inbox no longer holds it.
pub(super) fn remove_entry(c: &Connection, id: i64) -> Result<Option<Removed>, Fault> {
    let frame = c
        .prepare_cached(
            "SELECT first, body FROM inbox_frame WHERE first <= ?1 AND last >= ?1
             ORDER BY first DESC LIMIT 1",
        )?
        .query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .optional()?;
    let Some((first, mut blob)) = frame else {
        return Ok(None);
    };
    let mut found = None;
    for entry in entries(first, &blob) {
        let (at, e) = entry?;
        if at == id {
            if !e.removed {
                found = Some((
                    e.flags_at,
                    (e.origin.to_string(), e.hlc, e.seq, e.body.to_vec()),
                ));
            }
            break;
        }
    }
    let Some((flags_at, taken)) = found else {
        return Ok(None);
    };
    blob[flags_at] |= REMOVED;
    c.prepare_cached("UPDATE inbox_frame SET body = ?2, removed = removed + 1 WHERE first = ?1")?
        .execute(params![first, blob])?;
    Ok(Some(taken))
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
        let incoming: Vec<Incoming> = changes.iter().map(Incoming::of).collect();
        self.stage_incoming(origin, &incoming, through)
    }

    /// [`Journal::stage_remote_through`] of changes already encoded (as
    /// received: see [`Incoming::from_encoded`]).
    pub fn stage_incoming(
        &mut self,
        origin: &str,
        changes: &[Incoming],
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
                if !stager.stage_encoded(
                    origin,
                    ch.hlc,
                    Some(ch.seq),
                    &ch.key,
                    ch.expires_at,
                    &ch.body,
                )? {
                    out.superseded += 1;
                }
            }
            stager.finish()?;
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
            stager.finish()?;
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
            stager.finish()?;
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
            let mut frames = Frames::new(tx)?;
            let mut body = Vec::with_capacity(512);
            for (hlc, origin, rec) in records {
                body.clear();
                codec::encode_into(rec, &mut body).expect("encoding into a Vec cannot fail");
                frames.push(origin, *hlc, None, &body)?;
            }
            Ok(frames.finish()?)
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
                "SELECT hlc, origin, body FROM state WHERE key >= X'63' AND key < X'64'",
            )?;
            let mut frames = Frames::new(tx)?;
            let mut rows = read.query([])?;
            while let Some(r) = rows.next()? {
                let body = r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
                let live = match codec::decode::<Record>(body) {
                    Ok(Record::Contact { op, contact }) => {
                        op == crate::record::Op::Upsert && keep(&contact)
                    }
                    _ => false,
                };
                if live {
                    let origin = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
                    frames.push(origin, r.get::<_, i64>(0)? as u64, None, body)?;
                }
            }
            Ok(frames.finish()?)
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
            Self::read_inbox(tx, after, limit, true)
        })
    }

    /// Up to `limit` staged changes after id `after`, oldest first, and
    /// the last id read. With `current`, without those another version of
    /// their key has overtaken since they were staged: a change is still
    /// current unless the state holds another version of its key (a newer
    /// one, local or remote).
    fn read_inbox(
        c: &Connection,
        after: i64,
        limit: usize,
        current: bool,
    ) -> Result<(Vec<Staged>, Option<i64>), Fault> {
        let mut out = Vec::new();
        let mut last_id = None;
        let mut read = 0;
        // From the frame holding `after + 1` (or the one before it).
        let mut frames = c.prepare_cached(
            "SELECT first, body FROM inbox_frame
             WHERE first >= coalesce((SELECT max(first) FROM inbox_frame WHERE first <= ?1), 0)
             ORDER BY first",
        )?;
        let mut held = c.prepare_cached("SELECT hlc, origin FROM state WHERE key = ?1")?;
        let mut rows = frames.query([after + 1])?;
        'frames: while let Some(r) = rows.next()? {
            let first: i64 = r.get(0)?;
            let blob = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            for entry in entries(first, blob) {
                let (id, e) = entry?;
                if id <= after {
                    continue;
                }
                if read == limit {
                    break 'frames;
                }
                read += 1;
                last_id = Some(id);
                if e.removed {
                    continue;
                }
                let record: Record =
                    codec::decode(e.body).map_err(|detail| Fault::BadRecord { seq: id, detail })?;
                if current {
                    let mut versions = held.query([record.key()])?;
                    if let Some(v) = versions.next()? {
                        let same = v.get::<_, i64>(0)? as u64 == e.hlc
                            && v.get_ref(1)?.as_str().map_err(rusqlite::Error::from)? == e.origin;
                        if !same {
                            continue;
                        }
                    }
                }
                out.push(Staged {
                    id,
                    origin: e.origin.to_string(),
                    hlc: e.hlc,
                    seq: e.seq,
                    record,
                });
            }
        }
        Ok((out, last_id))
    }

    /// Keys of every change staged and not yet applied.
    pub fn inbox_keys(&self) -> Result<std::collections::HashSet<Vec<u8>>, JournalError> {
        self.run(|c| {
            let (staged, _) = Self::read_inbox(c, 0, usize::MAX, false)?;
            Ok(staged.into_iter().map(|s| s.record.key()).collect())
        })
    }

    /// The oldest staged changes, at most `limit`.
    pub fn inbox_peek(&self, limit: usize) -> Result<Vec<Staged>, JournalError> {
        self.run(|c| Ok(Self::read_inbox(c, 0, limit, false)?.0))
    }

    /// Removes staged changes up to and including `id`: they are applied.
    /// A frame goes once all its changes are; ids are not reused, so
    /// reading after `id` stays right either way.
    pub fn inbox_done(&mut self, upto_id: i64) -> Result<(), JournalError> {
        self.run_write(|c| {
            c.prepare_cached("DELETE FROM inbox_frame WHERE first <= ?1 AND last <= ?1")?
                .execute([upto_id])?;
            Ok(())
        })
    }

    pub fn inbox_len(&self) -> Result<u64, JournalError> {
        self.inbox_len_after(0)
    }

    /// Changes staged after id `after` (those up to it are applied); in
    /// the frame `after` falls in, those quarantined count too.
    pub fn inbox_len_after(&self, after: i64) -> Result<u64, JournalError> {
        self.run(|c| {
            let n = c
                .prepare_cached(
                    "SELECT coalesce(sum(last - max(first, ?1 + 1) + 1
                                         - CASE WHEN first > ?1 THEN removed ELSE 0 END), 0)
                     FROM inbox_frame WHERE last > ?1",
                )?
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
        // Done with the first: one left after it; its frame stays until
        // every change in it is done.
        j.inbox_done(staged[0].id).unwrap();
        assert_eq!(j.inbox_len_after(staged[0].id).unwrap(), 1);
        assert_eq!(j.inbox_len().unwrap(), 2);
        j.inbox_done(staged[1].id).unwrap();
        assert_eq!(j.inbox_len().unwrap(), 0);
        assert_eq!(j.received_upto("n2").unwrap(), 2);
    }

    /// A record received in a longer form than this node writes (a number
    /// not in its shortest form) is stored as this node encodes it; one in
    /// that form is stored as received, and both decode to the record.
    #[test]
    fn received_encodings_are_passed_through_only_when_canonical() {
        use super::Incoming;
        use std::borrow::Cow;
        let r = rec("a", 7);
        let mut canonical = Vec::new();
        crate::codec::encode_into(&r, &mut canonical).unwrap();
        let same = Incoming::from_encoded(1, 10, &canonical).unwrap();
        assert!(matches!(same.body, Cow::Borrowed(_)));
        assert_eq!(
            (same.key.clone(), same.expires_at),
            (r.key(), r.as_ref().expires_at())
        );
        // The variant index (0, one byte) as a 16-bit number: 251, 0, 0.
        let mut long = vec![251, 0, 0];
        long.extend_from_slice(&canonical[1..]);
        let again = Incoming::from_encoded(1, 10, &long).unwrap();
        assert!(matches!(again.body, Cow::Owned(_)));
        assert_eq!(&*again.body, &canonical[..]);
        assert!(Incoming::from_encoded(1, 10, &canonical[..canonical.len() - 1]).is_err());
        assert!(Incoming::from_encoded(1, 10, &[9, 0]).is_err());
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
