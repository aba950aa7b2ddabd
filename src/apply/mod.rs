//! The applier: takes staged remote changes from the journal's inbox and
//! replays them into the local SER — through its RPC door
//! ([`door`]: `sersync.apply` runs inside SER and writes usrloc), else
//! directly into SER's database ([`db`]), else counts a temporary failure
//! and retries. A change leaves the inbox only once one path took it.

pub mod db;
pub mod door;
pub mod payload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::ApplyError;
use crate::journal::Journal;
use crate::log::{self, RateLimit};
use crate::record::Record;
use crate::restore::Restore;
use crate::scan::ScanWatch;
use crate::status::Status;

/// Where applied records go, each with its stamp.
pub trait Sink: Send {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError>;
}

/// Changes taken from the inbox per attempt.
const BATCH: usize = 2000;
/// How long the door may fail before the database takes over (SER may be
/// starting; records written to the database reach usrloc only when SER
/// next loads it).
const DOOR_GRACE: Duration = Duration::from_secs(3);
/// How often a starting SER is asked again.
const NOT_READY_WAIT: Duration = Duration::from_millis(50);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Applier {
    pub journal: Journal,
    pub primary: Box<dyn Sink>,
    pub fallback: Option<Box<dyn Sink>>,
    pub status: Arc<Status>,
    pub wake: Receiver<()>,
    pub scan_watch: Arc<ScanWatch>,
    /// The restore staged at start, if any: its progress is counted.
    pub restore: Option<Restore>,
}

static APPLY_ERR: RateLimit = RateLimit::new(2000);

impl Applier {
    pub fn run(mut self, stop: &AtomicBool) {
        let mut door_failing_since: Option<Instant> = None;
        let mut waiting_for_ser = false;
        let mut retry = RETRY_MIN;
        while !stop.load(Ordering::Acquire) {
            let (staged, last_read) = match self.journal.inbox_current(BATCH) {
                Ok(s) => s,
                Err(e) => {
                    log::error(format_args!("reading staged changes: {e}"));
                    std::thread::sleep(RETRY_MAX);
                    continue;
                }
            };
            self.status.counters.apply_pending.store(
                self.journal.inbox_len().unwrap_or(staged.len() as u64),
                Ordering::Relaxed,
            );
            let Some(last_id) = last_read else {
                let _ = self.wake.recv_timeout(Duration::from_millis(500));
                continue;
            };
            let records: Vec<(u64, Record)> =
                staged.into_iter().map(|s| (s.hlc, s.record)).collect();
            if records.is_empty() {
                // Everything read was overtaken by newer versions.
                if let Err(e) = self.journal.inbox_done(last_id) {
                    log::error(format_args!("{e}"));
                }
                if let Some(r) = &mut self.restore {
                    r.progress(last_id, &self.status);
                }
                continue;
            }
            let outcome = match self.primary.apply(&records) {
                Ok(()) => {
                    door_failing_since = None;
                    Ok(false)
                }
                // A door that exists but is slow or busy is retried as it
                // is: rows written to SER's database reach a running usrloc
                // only at its next start.
                Err(e @ ApplyError::DoorAbsent { .. }) => {
                    let since = *door_failing_since.get_or_insert_with(Instant::now);
                    match &mut self.fallback {
                        Some(db) if since.elapsed() >= DOOR_GRACE => match db.apply(&records) {
                            Ok(()) => {
                                if let Some(n) = APPLY_ERR.allow() {
                                    log::warn(format_args!(
                                        "{e}; wrote {} changes into SER's database instead ({n} similar suppressed)",
                                        records.len()
                                    ));
                                }
                                Ok(true)
                            }
                            Err(dbe) => Err(format!("{e}; database fallback failed too: {dbe}")),
                        },
                        _ => Err(e.to_string()),
                    }
                }
                Err(e @ ApplyError::NotReady(_)) => {
                    door_failing_since = None;
                    if !waiting_for_ser {
                        log::info(format_args!("{e}; waiting"));
                        waiting_for_ser = true;
                    }
                    std::thread::sleep(NOT_READY_WAIT);
                    continue;
                }
                Err(e) => {
                    door_failing_since = None;
                    Err(e.to_string())
                }
            };
            waiting_for_ser = false;
            match outcome {
                Ok(via_db) => {
                    // Before inbox_done: a scan that finds a key neither
                    // staged nor noted must be sure it was applied before.
                    self.scan_watch.note(&records);
                    if let Err(e) = self.journal.inbox_done(last_id) {
                        // Applied but not removed: re-applying is harmless.
                        log::error(format_args!("{e}"));
                    }
                    if let Some(r) = &mut self.restore {
                        r.progress(last_id, &self.status);
                    }
                    let c = &self.status.counters;
                    c.applied.fetch_add(records.len() as u64, Ordering::Relaxed);
                    if via_db {
                        c.applied_via_db
                            .fetch_add(records.len() as u64, Ordering::Relaxed);
                    }
                    retry = RETRY_MIN;
                }
                Err(msg) => {
                    self.status
                        .counters
                        .apply_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(n) = APPLY_ERR.allow() {
                        log::error(format_args!(
                            "cannot apply {} staged changes yet (kept, retrying): {msg} ({n} similar suppressed)",
                            records.len()
                        ));
                    }
                    self.status.set_error(&msg);
                    // Sleep the whole backoff: new arrivals must not hurry
                    // the retry of a path that is failing.
                    let until = Instant::now() + retry;
                    while Instant::now() < until && !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
