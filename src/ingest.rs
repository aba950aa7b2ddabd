//! The ingest stage: worker queue → journal. Local changes come stamped
//! by the SIP worker that made them and get their sequence here; alias
//! scans are held back and concluded through [`crate::scan`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::AliasDeleteLimit;
use crate::handoff::{NetCmd, ToNet};
use crate::journal::Journal;
use crate::log::{self, RateLimit};
use crate::queue::{Held, Item, Shared, VersionHeld};
use crate::record::Record;
use crate::scan::{Conclusion, Scan, ScanWatch};
use crate::status::Status;

/// Records taken from the worker queue per journal transaction.
const INGEST_BATCH: usize = 4096;
static INGEST_ERR: RateLimit = RateLimit::new(1000);
/// How often the clock's high-water mark is saved in the journal.
const CLOCK_SAVE_EVERY: Duration = Duration::from_secs(1);

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
    /// Deletions a scan may make unless the operator confirmed them.
    pub delete_limit: AliasDeleteLimit,
    /// A scan silent this long, the queue empty, is ended (config).
    pub scan_idle_max: Duration,
}

impl Ingest {
    /// Ends a scan of an alias table: rows the journal does not hold are
    /// journaled, and every alias the state holds for the table that the
    /// scan did not report was deleted behind SER's back. Keys a peer
    /// changed here after the scan started (staged, or applied meanwhile),
    /// and keys changed locally since, are left alone: the row the scan
    /// read may be older than that change, or missing because of it.
    /// Unless `confirmed`, deletions over the limit are refused: none is
    /// made, and the status and the log say how many and what to do.
    fn finish_scan(&mut self, table: &[u8], confirmed: bool, pending: &mut Vec<(u64, Record)>) {
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
        let limit = (!confirmed).then_some(&self.delete_limit);
        let result = scan.conclude(&self.journal, &self.scan_watch, &pending_keys, limit);
        let (removed, refused) = match result {
            Ok(Some(Conclusion {
                records,
                present,
                known,
                removed,
                refused,
                skipped,
            })) => {
                for rec in records {
                    pending.push((self.shared.stamp(), rec));
                }
                if refused > 0 {
                    let l = &self.delete_limit;
                    let msg = format!(
                        "alias scan of {name} refused to delete {refused} of {known} aliases \
                         (it read {present} rows; the limit is more than {} and more than {}%, \
                         or any when the table reads empty): nothing deleted. If the table is \
                         right, run sersync.alias_rescan_confirm",
                        l.max, l.pct
                    );
                    log::error(format_args!("{msg}"));
                    // The status area keeps 159 bytes of it.
                    self.status.set_error(&format!(
                        "alias scan of {name} refused {refused} of {known} deletions: \
                         sersync.alias_rescan_confirm if meant"
                    ));
                } else {
                    log::info(format_args!(
                        "alias scan of {name}: {present} aliases present, {removed} removed{}, \
                         {skipped} left to changes in flight",
                        if confirmed { " (confirmed)" } else { "" }
                    ));
                }
                (removed, refused)
            }
            Ok(None) => {
                log::warn(format_args!(
                    "alias scan of {name}: too many remote alias changes were applied while it ran; \
                     nothing concluded, the next scan will"
                ));
                (0, 0)
            }
            Err(e) => {
                log::error(format_args!("alias scan of {name}: {e}; ignored"));
                (0, 0)
            }
        };
        self.scan_ended(removed, refused);
    }

    /// A scan ended by its end marker: what sersync.alias_rescan reports.
    fn scan_ended(&self, removed: usize, refused: usize) {
        let c = &self.status.counters;
        c.alias_scan_removed.store(removed as u64, Ordering::SeqCst);
        c.alias_scan_refused.store(refused as u64, Ordering::SeqCst);
        // Last: sersync.alias_rescan waits for this count to move.
        c.alias_scans.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends the open scan without its end marker (`why`): it deletes
    /// nothing, and the upserts it held are journaled ([`Scan::abandon`]).
    fn abandon_scan(&mut self, why: &str, pending: &mut Vec<(u64, Record)>) {
        let Some(scan) = self.scan.take() else {
            return;
        };
        let name = String::from_utf8_lossy(scan.table()).into_owned();
        match scan.abandon(&self.journal, &self.scan_watch) {
            Ok((records, skipped)) => {
                let kept = records.len();
                for rec in records {
                    pending.push((self.shared.stamp(), rec));
                }
                log::warn(format_args!(
                    "alias scan of {name} ended without concluding ({why}): nothing deleted; \
                     {kept} rows journaled as they are, {skipped} left to changes in flight"
                ));
            }
            Err(e) => log::error(format_args!(
                "alias scan of {name} ended ({why}): {e}; its rows are not journaled"
            )),
        }
    }

    pub fn run(mut self, stop: &AtomicBool) {
        let mut pending: Vec<(u64, Record)> = Vec::new();
        let mut buf = Vec::with_capacity(crate::queue::SLOT_SIZE);
        let mut retry = Duration::from_millis(100);
        let mut last_clock_save = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let mut drained = false;
            while pending.len() < INGEST_BATCH {
                if !self.shared.pop(&mut buf) {
                    drained = true;
                    break;
                }
                if buf.is_empty() {
                    continue; // a slot whose record did not fit; counted by the producer
                }
                match crate::queue::decode(&buf) {
                    Ok((started, Item::ScanBegin { table })) => {
                        // A scan begins only after the last one ended,
                        // unless that one's end marker was lost.
                        self.abandon_scan("a new scan began", &mut pending);
                        // Opened before the scan's process may read the
                        // table: it waits until this marker is settled.
                        self.scan_watch.open();
                        self.scan = Some(Scan::begin(table, started, Instant::now()));
                    }
                    Ok((_, Item::ScanEnd { table, confirmed })) => {
                        self.finish_scan(&table, confirmed, &mut pending)
                    }
                    Ok((_, Item::ScanAbort { table })) => {
                        if self.scan.as_ref().is_some_and(|s| s.table() == table) {
                            self.abandon_scan("its process gave up", &mut pending);
                        }
                    }
                    Ok((_, Item::Forget { node_id })) => {
                        self.net.send(NetCmd::Forget(node_id));
                    }
                    Ok((_, Item::Resync { node_id })) => {
                        self.net.send(NetCmd::Resync(node_id));
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
                            Some(scan) => match scan.hold(rec, Instant::now()) {
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
            // Everything queued is taken and the scan sent nothing for
            // long: its end marker will not come (ALIAS_SCAN_IDLE_MAX).
            if drained
                && self
                    .scan
                    .as_ref()
                    .is_some_and(|s| s.idle(Instant::now()) >= self.scan_idle_max)
            {
                self.abandon_scan("no end marker came", &mut pending);
            }
            if last_clock_save.elapsed() >= CLOCK_SAVE_EVERY {
                last_clock_save = Instant::now();
                self.save_clock();
            }
            if pending.is_empty() {
                // Skipped slots and scan markers are settled too.
                self.shared.mark_durable();
                self.shared.wait(Duration::from_millis(100));
                continue;
            }
            match self.journal.append_local_behind(&self.node_id, &pending) {
                Ok((mut last, mut appended, behind)) => {
                    if !behind.is_empty() {
                        let (l, n) = self.stamp_again(&pending, &behind);
                        last = last.max(l);
                        appended += n;
                    }
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
        self.save_clock();
    }

    /// Saves the clock's high-water mark in the journal (beside the
    /// incarnation): a restart starts its clock there, never below a stamp
    /// this run issued or accepted.
    fn save_clock(&mut self) {
        if let Err(e) = self.journal.raise_clock_high(self.shared.clock_high()) {
            if let Some(n) = INGEST_ERR.allow() {
                log::error(format_args!(
                    "cannot save the clock's high-water mark: {e} ({n} similar suppressed)"
                ));
            }
        }
    }

    /// Local changes the journal did not take because it holds a newer
    /// version of their key from a peer (`behind`, indices into
    /// `pending`). A contact whose version usrloc holds is exactly that
    /// change was made here after the peer's: it was stamped behind only
    /// because this node's clock was (SIP workers stamp from the moment
    /// SER starts, before the engine has moved the clock past the
    /// journal's, or the peer's clock ran ahead). It is stamped again, now
    /// past every version seen, and journaled: a local change is never
    /// skipped in silence. Anything else (usrloc took a newer remote
    /// version meanwhile, an alias) was superseded for real and is left.
    /// Returns the last sequence and how many were journaled.
    fn stamp_again(&mut self, pending: &[(u64, Record)], behind: &[usize]) -> (u64, usize) {
        let mut again = Vec::new();
        for &i in behind {
            let (stamp, rec) = &pending[i];
            let Record::Contact { contact, .. } = rec else {
                continue;
            };
            let key = self
                .shared
                .order_key(&contact.domain, &contact.aor, &contact.contact);
            if self.shared.version_held(key) != VersionHeld::Known(*stamp) {
                continue;
            }
            let new = self.shared.stamp();
            // usrloc's version of the contact is the new stamp from now on
            // (an older one would let a late remote change overwrite it).
            self.shared.admit(key, new, Held::Nothing, 0);
            log::warn(format_args!(
                "local change of {} {} stamped {stamp:#x}, behind the version a peer gave \
                 the journal: stamped again {new:#x} and journaled (this node's clock was \
                 behind the cluster's)",
                String::from_utf8_lossy(&contact.aor),
                String::from_utf8_lossy(&contact.contact)
            ));
            again.push((new, rec.clone()));
        }
        if again.is_empty() {
            return (0, 0);
        }
        match self.journal.append_local(&self.node_id, &again) {
            Ok(r) => r,
            Err(e) => {
                log::error(format_args!("cannot journal changes stamped again: {e}"));
                (0, 0)
            }
        }
    }
}
