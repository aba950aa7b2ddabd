//! The ingest stage: worker queue → journal. Local changes come stamped
//! by the SIP worker that made them and get their sequence here; alias
//! scans are held back and concluded through [`crate::scan`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::handoff::{NetCmd, ToNet};
use crate::journal::Journal;
use crate::log::{self, RateLimit};
use crate::queue::{Item, Shared};
use crate::record::Record;
use crate::scan::{Conclusion, Scan, ScanWatch};
use crate::status::Status;

/// Records taken from the worker queue per journal transaction.
const INGEST_BATCH: usize = 4096;
static INGEST_ERR: RateLimit = RateLimit::new(1000);

/// Moves records from the worker queue into the journal.
pub struct Ingest {
    pub journal: Journal,
    pub shared: Arc<Shared>,
    pub status: Arc<Status>,
    /// Tells the network thread what was committed and asked for.
    pub net: ToNet,
    pub node_id: String,
    /// An alias table scan in progress.
    pub scan: Option<Scan>,
    /// What the applier wrote into SER since the scan started.
    pub scan_watch: Arc<ScanWatch>,
}

impl Ingest {
    /// Ends a scan of an alias table: rows the journal does not hold are
    /// journaled, and every alias the state holds for the table that the
    /// scan did not report was deleted behind SER's back. Keys a peer
    /// changed here after the scan started (staged, or applied meanwhile),
    /// and keys changed locally since, are left alone: the row the scan
    /// read may be older than that change, or missing because of it.
    fn finish_scan(&mut self, table: &[u8], pending: &mut Vec<(u64, Record)>) {
        let Some(scan) = self.scan.take() else {
            log::warn(format_args!("alias scan end without a start; ignored"));
            return;
        };
        let name = String::from_utf8_lossy(table).into_owned();
        if scan.table() != table {
            log::warn(format_args!(
                "alias scan of one table ended by another; ignored"
            ));
            return;
        }
        let pending_keys: HashSet<Vec<u8>> = pending.iter().map(|(_, r)| r.key()).collect();
        let result = scan.conclude(&self.journal, &self.scan_watch, &pending_keys);
        match result {
            Ok(Some(Conclusion {
                records,
                present,
                removed,
                skipped,
            })) => {
                for rec in records {
                    pending.push((self.shared.stamp(), rec));
                }
                log::info(format_args!(
                    "alias scan of {name}: {present} aliases present, {removed} removed, {skipped} left to changes in flight"
                ));
            }
            Ok(None) => log::warn(format_args!(
                "alias scan of {name}: too many remote alias changes were applied while it ran; \
                 nothing concluded, the next scan will"
            )),
            Err(e) => log::error(format_args!("alias scan of {name}: {e}; ignored")),
        }
    }

    pub fn run(mut self, stop: &AtomicBool) {
        let mut pending: Vec<(u64, Record)> = Vec::new();
        let mut buf = Vec::with_capacity(crate::queue::SLOT_SIZE);
        let mut retry = Duration::from_millis(100);
        while !stop.load(Ordering::Acquire) {
            while pending.len() < INGEST_BATCH && self.shared.pop(&mut buf) {
                if buf.is_empty() {
                    continue; // a slot whose record did not fit; counted by the producer
                }
                match crate::queue::decode(&buf) {
                    Ok((started, Item::ScanBegin { table })) => {
                        // Opened before the scan's process may read the
                        // table: it waits until this marker is settled.
                        self.scan_watch.open();
                        self.scan = Some(Scan::begin(table, started));
                    }
                    Ok((_, Item::ScanEnd { table })) => self.finish_scan(&table, &mut pending),
                    Ok((_, Item::Forget { node_id })) => {
                        self.net.send(NetCmd::Forget(node_id));
                    }
                    Ok((_, Item::Quarantine { retry, id })) => {
                        crate::apply::quarantine::control(
                            &mut self.journal,
                            &self.status,
                            retry,
                            id,
                        );
                    }
                    // Stamped by the SIP worker as usrloc made the change.
                    Ok((stamp, Item::Change(rec))) => {
                        let rec = match &mut self.scan {
                            Some(scan) => match scan.hold(rec) {
                                Some(rec) => rec,
                                None => continue,
                            },
                            None => rec,
                        };
                        pending.push((stamp, rec));
                    }
                    Err(e) => {
                        log::error(format_args!("undecodable record in the worker queue: {e}"))
                    }
                }
            }
            if pending.is_empty() {
                // Skipped slots and scan markers are settled too.
                self.shared.mark_durable();
                self.shared.wait(Duration::from_millis(100));
                continue;
            }
            match self.journal.append_local(&self.node_id, &pending) {
                Ok((last, appended)) => {
                    let c = &self.status.counters;
                    c.journaled.fetch_add(appended as u64, Ordering::Relaxed);
                    pending.clear();
                    self.shared.mark_durable();
                    retry = Duration::from_millis(100);
                    self.net.committed(last);
                }
                Err(e) => {
                    // Kept in memory; the worker queue absorbs new changes
                    // (and counts what it cannot take) until the disk heals.
                    if let Some(n) = INGEST_ERR.allow() {
                        log::error(format_args!(
                            "cannot journal {} changes, retrying: {e} ({n} similar suppressed)",
                            pending.len()
                        ));
                    }
                    self.status.set_error(&e.to_string());
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
