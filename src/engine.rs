//! Wires the stages together in the sersync process: the ingest thread
//! (worker queue → journal), the network thread ([`crate::net`]) and the
//! applier ([`crate::apply`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::Waker;

use crate::apply::{db::Database, door::Door, Applier, ScanWatch, Sink};
use crate::codec;
use crate::config::Config;
use crate::error::JournalError;
use crate::hlc::Hlc;
use crate::journal::Journal;
use crate::log::{self, RateLimit};
use crate::net::Net;
use crate::queue::Shared;
use crate::record::{Op, Record};
use crate::status::{Snapshot, Status};
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot start the network thread: {0}")]
    Net(std::io::Error),
}

pub struct Engine {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    wake_apply: crossbeam_channel::Sender<()>,
    status: Arc<Status>,
    threads: Vec<JoinHandle<()>>,
}

/// Records taken from the worker queue per journal transaction.
const INGEST_BATCH: usize = 4096;
static INGEST_ERR: RateLimit = RateLimit::new(1000);

impl Engine {
    /// Starts the engine. `sink` replaces SER as the primary apply path
    /// (tests); None uses the configured RPC door and database.
    pub fn start(
        cfg: Config,
        shared: Arc<Shared>,
        sink: Option<Box<dyn Sink>>,
    ) -> Result<Engine, EngineError> {
        let cfg = Arc::new(cfg);
        let status = Arc::new(Status::new(&cfg.node_id));
        let open = || Journal::open(&cfg.journal);
        let mut ingest_journal = open()?;
        if let Some(db) = &cfg.database {
            match crate::seed::reconcile(&mut ingest_journal, &cfg.node_id, db, &cfg.domains) {
                Ok(r) if r == crate::seed::Reconciled::default() => {}
                Ok(r) => {
                    status
                        .counters
                        .journaled
                        .fetch_add(r.journaled as u64, Ordering::Relaxed);
                    log::info(format_args!(
                    "start-up comparison with SER's database: journaled {} contacts the journal lacked, \
                     restoring {} contacts SER lacked",
                    r.journaled, r.restored
                ))
                }
                Err(e) => log::error(format_args!(
                    "cannot compare SER's database with the journal: {e}"
                )),
            }
        }
        let net_journal = open()?;
        let apply_journal = open()?;
        let last = ingest_journal.last_seq()?;
        status.counters.last_seq.store(last, Ordering::Relaxed);
        status
            .counters
            .apply_pending
            .store(apply_journal.inbox_len()?, Ordering::Relaxed);

        let hlc = Arc::new(Mutex::new(Hlc::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (wake_apply, wake_rx) = crossbeam_channel::bounded(1);
        let (net_cmd, net_cmds) = crossbeam_channel::unbounded();
        let (net, waker) = Net::new(
            cfg.clone(),
            status.clone(),
            hlc.clone(),
            net_journal,
            wake_apply.clone(),
            Some(shared.clone()),
            net_cmds,
        )
        .map_err(EngineError::Net)?;

        let (primary, fallback): (Box<dyn Sink>, Option<Box<dyn Sink>>) = match sink {
            Some(s) => (s, None),
            None => {
                let door: Box<dyn Sink> = match &cfg.door {
                    Some(p) => Box::new(Door::new(p, &cfg.fifo_reply_dir)),
                    None => Box::new(NoDoor),
                };
                (
                    door,
                    cfg.database
                        .as_ref()
                        .map(|p| Box::new(Database::new(p)) as Box<dyn Sink>),
                )
            }
        };
        let scan_watch = Arc::new(ScanWatch::default());
        let applier = Applier {
            journal: apply_journal,
            primary,
            fallback,
            status: status.clone(),
            wake: wake_rx,
            scan_watch: scan_watch.clone(),
        };

        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(EngineError::Net)
        };
        {
            let stop = stop.clone();
            threads.push(spawn("sersync-net", Box::new(move || net.run(&stop)))?);
        }
        {
            let stop = stop.clone();
            threads.push(spawn(
                "sersync-apply",
                Box::new(move || applier.run(&stop)),
            )?);
        }
        {
            let ingest = Ingest {
                journal: ingest_journal,
                shared,
                status: status.clone(),
                hlc,
                waker: waker.clone(),
                node_id: cfg.node_id.clone(),
                scan: None,
                scan_watch,
                net_cmd,
            };
            let stop = stop.clone();
            threads.push(spawn(
                "sersync-ingest",
                Box::new(move || ingest.run(&stop)),
            )?);
        }
        status.running.store(true, Ordering::Relaxed);
        log::info(format_args!(
            "node {} started: journal {} at sequence {last}, {} peers",
            cfg.node_id,
            cfg.journal.display(),
            cfg.peers.len()
        ));
        Ok(Engine {
            stop,
            waker,
            wake_apply,
            status,
            threads,
        })
    }

    pub fn status(&self) -> Snapshot {
        self.status.snapshot()
    }

    /// Stops every thread and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        let _ = self.wake_apply.try_send(());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Blocks the calling thread for as long as the engine runs.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Stands in when no RPC door is configured: always a temporary failure.
struct NoDoor;

impl Sink for NoDoor {
    fn apply(&mut self, _: &[Record]) -> Result<(), crate::error::ApplyError> {
        Err(crate::error::ApplyError::Door {
            path: "(none)".into(),
            detail: "no RPC door configured".into(),
        })
    }
}

/// An alias table scan between its begin and end markers. Its rows are
/// held back until the end: what the scan concludes about a key is only
/// trusted if nothing else changed that key meanwhile.
struct Scan {
    table: Vec<u8>,
    /// Stamp at the start: a newer version in the state means the key
    /// changed during the scan, and the table row read may predate it.
    started: u64,
    rows: Vec<Record>,
    seen: HashSet<Vec<u8>>,
}

/// Moves records from the worker queue into the journal.
struct Ingest {
    journal: Journal,
    shared: Arc<Shared>,
    status: Arc<Status>,
    hlc: Arc<Mutex<Hlc>>,
    waker: Arc<Waker>,
    node_id: String,
    /// An alias table scan in progress.
    scan: Option<Scan>,
    /// What the applier wrote into SER since the scan started.
    scan_watch: Arc<ScanWatch>,
    net_cmd: crossbeam_channel::Sender<crate::net::NetCmd>,
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
        if scan.table != table {
            log::warn(format_args!(
                "alias scan of one table ended by another; ignored"
            ));
            return;
        }
        let result = (|| -> Result<Option<(Vec<Record>, usize, usize)>, JournalError> {
            // Staged first, then applied: the applier notes a key before it
            // leaves the inbox, so every key is seen in one or the other.
            let staged = self.journal.inbox_keys()?;
            let Some(applied) = self.scan_watch.close() else {
                return Ok(None);
            };
            let changed_since = |key: &[u8]| -> Result<bool, JournalError> {
                Ok(staged.contains(key)
                    || applied.contains(key)
                    || self
                        .journal
                        .state_stamp(key)?
                        .is_some_and(|h| h > scan.started))
            };
            let mut out = Vec::new();
            let mut skipped = 0;
            for rec in scan.rows {
                if changed_since(&rec.key())? {
                    skipped += 1;
                } else {
                    out.push(rec);
                }
            }
            let pending_keys: HashSet<Vec<u8>> = pending.iter().map(|(_, r)| r.key()).collect();
            let mut removed = 0;
            for key in self.journal.live_alias_keys(table)? {
                if scan.seen.contains(&key) || pending_keys.contains(&key) || changed_since(&key)? {
                    continue;
                }
                if let Some(Record::Alias { alias, .. }) = self.journal.state_of(&key)? {
                    out.push(Record::Alias {
                        op: Op::Delete,
                        alias,
                    });
                    removed += 1;
                }
            }
            Ok(Some((out, removed, skipped)))
        })();
        match result {
            Ok(Some((records, removed, skipped))) => {
                for rec in records {
                    let stamp = self.hlc.lock().unwrap_or_else(|p| p.into_inner()).now();
                    pending.push((stamp, rec));
                }
                log::info(format_args!(
                    "alias scan of {name}: {} aliases present, {removed} removed, {skipped} left to changes in flight",
                    scan.seen.len()
                ));
            }
            Ok(None) => log::warn(format_args!(
                "alias scan of {name}: too many remote alias changes were applied while it ran; \
                 nothing concluded, the next scan will"
            )),
            Err(e) => log::error(format_args!("alias scan of {name}: {e}; ignored")),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut pending: Vec<(u64, Record)> = Vec::new();
        let mut buf = Vec::with_capacity(crate::queue::SLOT_SIZE);
        let mut retry = Duration::from_millis(100);
        while !stop.load(Ordering::Acquire) {
            while pending.len() < INGEST_BATCH && self.shared.pop(&mut buf) {
                if buf.is_empty() {
                    continue; // a slot whose record did not fit; counted by the producer
                }
                match codec::decode::<Record>(&buf) {
                    Ok(Record::AliasScan { table, end: false }) => {
                        let started = self.hlc.lock().unwrap_or_else(|p| p.into_inner()).now();
                        // Opened before the scan's process may read the
                        // table: it waits until this marker is settled.
                        self.scan_watch.open();
                        self.scan = Some(Scan {
                            table,
                            started,
                            rows: Vec::new(),
                            seen: HashSet::new(),
                        });
                    }
                    Ok(Record::AliasScan { table, end: true }) => {
                        self.finish_scan(&table, &mut pending)
                    }
                    Ok(Record::Forget { node_id }) => {
                        let _ = self.net_cmd.send(crate::net::NetCmd::Forget(node_id));
                        let _ = self.waker.wake();
                    }
                    Ok(rec) => {
                        if let (
                            Some(scan),
                            Record::Alias {
                                op: Op::Upsert,
                                alias,
                            },
                        ) = (&mut self.scan, &rec)
                        {
                            if scan.table == alias.table {
                                scan.seen.insert(rec.key());
                                scan.rows.push(rec);
                                continue;
                            }
                        }
                        let stamp = self.hlc.lock().unwrap_or_else(|p| p.into_inner()).now();
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
                    c.last_seq.store(last, Ordering::Release);
                    pending.clear();
                    self.shared.mark_durable();
                    retry = Duration::from_millis(100);
                    let _ = self.waker.wake();
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
