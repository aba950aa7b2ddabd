//! The alias table scan: everything a scan may conclude about the alias
//! table, in one place. The scan's process in SER (sersync_alias_scan.c)
//! sends every row between a begin and an end marker through the worker
//! queue; the ingest holds the rows back ([`Scan`]) and, at the end, turns
//! what the table lacks or holds anew into changes. [`ScanWatch`] is what
//! the applier tells it about remote changes written meanwhile.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::record::Record;

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
    pub(crate) fn note(&self, records: &[Record]) {
        let mut w = self.lock();
        if let Watch::Open(keys) = &mut *w {
            keys.extend(
                records
                    .iter()
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
    pub table: Vec<u8>,
    /// Stamp at the start: a newer version in the state means the key
    /// changed during the scan, and the table row read may predate it.
    pub started: u64,
    pub rows: Vec<Record>,
    pub seen: HashSet<Vec<u8>>,
}
