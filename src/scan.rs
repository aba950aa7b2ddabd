//! The alias table scan: everything a scan may conclude about the alias
//! table, in one place. The scan's process in SER (sersync_alias_scan.c)
//! sends every row between a begin and an end marker through the worker
//! queue; the ingest holds the rows back ([`Scan`]) and, at the end, turns
//! what the table lacks or holds anew into changes. [`ScanWatch`] is what
//! the applier tells it about remote changes written meanwhile.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AliasDeleteLimit;
use crate::error::JournalError;
use crate::journal::Journal;
use crate::record::{Op, Record};

/// Alias keys the applier wrote into SER while an alias table scan was
/// open. A scan reads the table at some moment after it opened; a remote
/// change applied after that moment is not in what it read, and its
/// origin stamp may well be older than the scan, so only this record of
/// *when it was applied here* keeps the scan from undoing it.
#[derive(Default)]
pub struct ScanWatch(Mutex<Watch>);

#[derive(Default)]
enum Watch {
    #[default]
    Idle,
    Open(HashSet<Vec<u8>>),
    /// More applied during one scan than is worth remembering: the scan
    /// concludes nothing.
    Overflowed,
}

/// Keys remembered per scan before it gives up.
const WATCH_MAX: usize = 1 << 20;

impl ScanWatch {
    /// A scan starts: remember alias keys applied from now on.
    pub fn open(&self) {
        *self.lock() = Watch::Open(HashSet::new());
    }

    /// The alias keys applied since [`ScanWatch::open`], or None when the
    /// scan must conclude nothing (never opened, or overflowed).
    pub fn close(&self) -> Option<HashSet<Vec<u8>>> {
        match std::mem::take(&mut *self.lock()) {
            Watch::Open(keys) => Some(keys),
            Watch::Idle | Watch::Overflowed => None,
        }
    }

    /// Called after `records` reached SER and before they leave the inbox.
    pub(crate) fn note(&self, records: &[(u64, Record)]) {
        let mut w = self.lock();
        if let Watch::Open(keys) = &mut *w {
            keys.extend(
                records
                    .iter()
                    .map(|(_, r)| r)
                    .filter(|r| matches!(r, Record::Alias { .. }))
                    .map(Record::key),
            );
            if keys.len() > WATCH_MAX {
                *w = Watch::Overflowed;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An alias table scan between its begin and end markers. Its rows are
/// held back until the end: what the scan concludes about a key is only
/// trusted if nothing else changed that key meanwhile.
pub struct Scan {
    table: Vec<u8>,
    /// Stamp at the start: a newer version in the state means the key
    /// changed during the scan, and the table row read may predate it.
    started: u64,
    rows: Vec<Record>,
    seen: HashSet<Vec<u8>>,
    /// When the ingest last took an item of this scan.
    last_item: Instant,
}

/// What a finished scan concludes: the changes to journal, and counts for
/// the log line.
pub struct Conclusion {
    pub records: Vec<Record>,
    /// Aliases the table held.
    pub present: usize,
    /// Aliases the journal held for the table before the scan.
    pub known: usize,
    /// Aliases deleted behind SER's back.
    pub removed: usize,
    /// Deletions found but not made: over the limit, unconfirmed.
    pub refused: usize,
    /// Rows left to changes in flight.
    pub skipped: usize,
}

impl Scan {
    /// A scan of `table` starting at stamp `started`.
    pub fn begin(table: Vec<u8>, started: u64, now: Instant) -> Scan {
        Scan {
            table,
            started,
            rows: Vec::new(),
            seen: HashSet::new(),
            last_item: now,
        }
    }

    pub fn table(&self) -> &[u8] {
        &self.table
    }

    /// How long the scan has sent nothing (see
    /// [`crate::config::ALIAS_SCAN_IDLE_MAX`]).
    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_item)
    }

    /// Holds back a row of the scanned table until the scan ends; any
    /// other record is given back to be journaled now.
    pub fn hold(&mut self, rec: Record, now: Instant) -> Option<Record> {
        match &rec {
            Record::Alias {
                op: Op::Upsert,
                alias,
            } if alias.table == self.table => {
                self.last_item = now;
                self.seen.insert(rec.key());
                self.rows.push(rec);
                None
            }
            _ => Some(rec),
        }
    }

    /// Ends a scan that gave up (its abort marker) or never ended (idle,
    /// a new scan began): it deletes nothing, but the upserts it held are
    /// journaled as what they are (table rows; once a scan has given up
    /// without its marker they may also be alias RPC changes made since,
    /// which must not be lost), except those of keys changed meanwhile
    /// (as in [`Scan::conclude`]). Returns them and how many were left
    /// out; when too much was applied meanwhile to tell, none.
    pub fn abandon(
        self,
        journal: &Journal,
        watch: &ScanWatch,
    ) -> Result<(Vec<Record>, usize), JournalError> {
        let staged = journal.inbox_keys()?;
        let total = self.rows.len();
        let Some(applied) = watch.close() else {
            return Ok((Vec::new(), total));
        };
        let mut records = Vec::with_capacity(total);
        for rec in self.rows {
            let key = rec.key();
            let changed = staged.contains(&key)
                || applied.contains(&key)
                || journal.state_stamp(&key)?.is_some_and(|h| h > self.started);
            if !changed {
                records.push(rec);
            }
        }
        let skipped = total - records.len();
        Ok((records, skipped))
    }

    /// Ends the scan: rows the journal does not hold are to be journaled,
    /// and every alias the state holds for the table that the scan did not
    /// report was deleted behind SER's back. Keys a peer changed here after
    /// the scan started (staged, or applied meanwhile), keys changed
    /// locally since, and `pending` keys (read from the queue, not yet
    /// journaled) are left alone: the row the scan read may be older than
    /// that change, or missing because of it. None: too much was applied
    /// meanwhile to conclude anything. With a `limit`, deletions over it
    /// are refused (none made, counted in `refused`); without one (the
    /// operator confirmed), all are made.
    pub fn conclude(
        self,
        journal: &Journal,
        watch: &ScanWatch,
        pending: &HashSet<Vec<u8>>,
        limit: Option<&AliasDeleteLimit>,
    ) -> Result<Option<Conclusion>, JournalError> {
        let Scan {
            table,
            started,
            rows,
            seen,
            ..
        } = self;
        // Staged first, then applied: the applier notes a key before it
        // leaves the inbox, so every key is seen in one or the other.
        let staged = journal.inbox_keys()?;
        let Some(applied) = watch.close() else {
            return Ok(None);
        };
        let changed_since = |key: &[u8]| -> Result<bool, JournalError> {
            Ok(staged.contains(key)
                || applied.contains(key)
                || journal.state_stamp(key)?.is_some_and(|h| h > started))
        };
        let mut records = Vec::new();
        let mut skipped = 0;
        for rec in rows {
            if changed_since(&rec.key())? {
                skipped += 1;
            } else {
                records.push(rec);
            }
        }
        let known = journal.live_alias_keys(&table)?;
        let mut deletions = Vec::new();
        for key in &known {
            if seen.contains(key) || pending.contains(key) || changed_since(key)? {
                continue;
            }
            if let Some(Record::Alias { alias, .. }) = journal.state_of(key)? {
                deletions.push(Record::Alias {
                    op: Op::Delete,
                    alias,
                });
            }
        }
        let (removed, refused) = if limit.is_some_and(|l| {
            l.refuses(
                deletions.len() as u64,
                known.len() as u64,
                seen.len() as u64,
            )
        }) {
            (0, deletions.len())
        } else {
            let n = deletions.len();
            records.append(&mut deletions);
            (n, 0)
        };
        Ok(Some(Conclusion {
            records,
            present: seen.len(),
            known: known.len(),
            removed,
            refused,
            skipped,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Alias;

    fn alias(n: usize, op: Op) -> Record {
        Record::Alias {
            op,
            alias: Alias {
                table: b"dbaliases".to_vec(),
                alias_username: format!("a{n:04}").into_bytes(),
                alias_domain: b"example.com".to_vec(),
                username: b"t".to_vec(),
                domain: b"example.org".to_vec(),
            },
        }
    }

    /// A journal holding aliases 0..n, stamped 1..=n.
    fn journal_with(n: usize) -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let recs: Vec<(u64, Record)> = (0..n)
            .map(|i| (i as u64 + 1, alias(i, Op::Upsert)))
            .collect();
        j.append_local("n1", &recs).unwrap();
        (dir, j)
    }

    fn scan_of(rows: impl Iterator<Item = usize>, watch: &ScanWatch) -> Scan {
        watch.open();
        let mut s = Scan::begin(b"dbaliases".to_vec(), 1_000, Instant::now());
        for i in rows {
            assert!(s.hold(alias(i, Op::Upsert), Instant::now()).is_none());
        }
        s
    }

    fn deletions(c: &Conclusion) -> usize {
        c.records
            .iter()
            .filter(|r| matches!(r, Record::Alias { op: Op::Delete, .. }))
            .count()
    }

    #[test]
    fn a_scan_missing_most_of_the_table_deletes_nothing_unless_confirmed() {
        let (_d, j) = journal_with(200);
        let watch = ScanWatch::default();
        let limit = AliasDeleteLimit::default();
        // 150 of 200 gone, and one new row.
        let c = scan_of(150..201, &watch)
            .conclude(&j, &watch, &HashSet::new(), Some(&limit))
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.removed, c.refused, c.known, c.present),
            (0, 150, 200, 51)
        );
        assert_eq!(deletions(&c), 0);
        assert_eq!(c.records.len(), 51, "the rows are still journaled");
        let c = scan_of(150..201, &watch)
            .conclude(&j, &watch, &HashSet::new(), None)
            .unwrap()
            .unwrap();
        assert_eq!((c.removed, c.refused), (150, 0));
        assert_eq!(deletions(&c), 150);
        // A few rows gone: below the limit.
        let c = scan_of(5..200, &watch)
            .conclude(&j, &watch, &HashSet::new(), Some(&limit))
            .unwrap()
            .unwrap();
        assert_eq!((c.removed, c.refused), (5, 0));
    }

    #[test]
    fn an_empty_read_of_a_small_table_refuses() {
        let (_d, j) = journal_with(20);
        let watch = ScanWatch::default();
        let c = scan_of(0..0, &watch)
            .conclude(
                &j,
                &watch,
                &HashSet::new(),
                Some(&AliasDeleteLimit::default()),
            )
            .unwrap()
            .unwrap();
        assert_eq!((c.removed, c.refused), (0, 20));
    }

    #[test]
    fn an_abandoned_scan_journals_its_rows_and_deletes_nothing() {
        let (_d, j) = journal_with(10);
        let watch = ScanWatch::default();
        let s = scan_of(5..12, &watch);
        // a remote change of alias 11 applied while the scan was open
        watch.note(&[(0, alias(11, Op::Delete))]);
        let (records, skipped) = s.abandon(&j, &watch).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(records.len(), 6);
        assert!(records
            .iter()
            .all(|r| matches!(r, Record::Alias { op: Op::Upsert, .. })));
        assert!(watch.close().is_none(), "the watch is closed");
    }

    #[test]
    fn a_scan_is_idle_from_its_last_row() {
        let t0 = Instant::now();
        let mut s = Scan::begin(b"dbaliases".to_vec(), 1, t0);
        assert_eq!(s.idle(t0 + Duration::from_secs(5)), Duration::from_secs(5));
        s.hold(alias(1, Op::Upsert), t0 + Duration::from_secs(4));
        assert_eq!(s.idle(t0 + Duration::from_secs(5)), Duration::from_secs(1));
        // another table's rows and deletions pass through, and do not count
        assert!(s
            .hold(alias(2, Op::Delete), t0 + Duration::from_secs(5))
            .is_some());
        assert_eq!(s.idle(t0 + Duration::from_secs(5)), Duration::from_secs(1));
    }
}
