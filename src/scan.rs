//! The alias table scan: everything a scan may conclude about the alias
//! table, in one place. The scan's process in SER (sersync_alias_scan.c)
//! sends every row between a begin and an end marker through the worker
//! queue; the ingest holds the rows back ([`Scan`]) and, at the end, turns
//! what the table lacks or holds anew into changes. [`ScanWatch`] is what
//! the applier tells it about remote changes written meanwhile.

use std::collections::HashSet;
use std::sync::Mutex;

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

/// Keys remembered per scan before it gives up (an abandoned scan stays
/// open until the next one starts).
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
}

/// What a finished scan concludes: the changes to journal, and counts for
/// the log line.
pub struct Conclusion {
    pub records: Vec<Record>,
    /// Aliases the table held.
    pub present: usize,
    /// Aliases deleted behind SER's back.
    pub removed: usize,
    /// Rows left to changes in flight.
    pub skipped: usize,
}

impl Scan {
    /// A scan of `table` starting at stamp `started`.
    pub fn begin(table: Vec<u8>, started: u64) -> Scan {
        Scan {
            table,
            started,
            rows: Vec::new(),
            seen: HashSet::new(),
        }
    }

    pub fn table(&self) -> &[u8] {
        &self.table
    }

    /// Holds back a row of the scanned table until the scan ends; any
    /// other record is given back to be journaled now.
    pub fn hold(&mut self, rec: Record) -> Option<Record> {
        match &rec {
            Record::Alias {
                op: Op::Upsert,
                alias,
            } if alias.table == self.table => {
                self.seen.insert(rec.key());
                self.rows.push(rec);
                None
            }
            _ => Some(rec),
        }
    }

    /// Ends the scan: rows the journal does not hold are to be journaled,
    /// and every alias the state holds for the table that the scan did not
    /// report was deleted behind SER's back. Keys a peer changed here after
    /// the scan started (staged, or applied meanwhile), keys changed
    /// locally since, and `pending` keys (read from the queue, not yet
    /// journaled) are left alone: the row the scan read may be older than
    /// that change, or missing because of it. None: too much was applied
    /// meanwhile to conclude anything.
    pub fn conclude(
        self,
        journal: &Journal,
        watch: &ScanWatch,
        pending: &HashSet<Vec<u8>>,
    ) -> Result<Option<Conclusion>, JournalError> {
        let Scan {
            table,
            started,
            rows,
            seen,
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
        let mut removed = 0;
        for key in journal.live_alias_keys(&table)? {
            if seen.contains(&key) || pending.contains(&key) || changed_since(&key)? {
                continue;
            }
            if let Some(Record::Alias { alias, .. }) = journal.state_of(&key)? {
                records.push(Record::Alias {
                    op: Op::Delete,
                    alias,
                });
                removed += 1;
            }
        }
        Ok(Some(Conclusion {
            records,
            present: seen.len(),
            removed,
            skipped,
        }))
    }
}
