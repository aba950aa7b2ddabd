//! Wires the stages together in the sersync process: the ingest thread
//! (worker queue → journal), the network thread ([`crate::net`]) and the
//! applier ([`crate::apply`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::Waker;

use crate::apply::{db::Database, door::Door, Applier, Sink};
use crate::config::Config;
use crate::error::JournalError;
use crate::handoff::handoff;
use crate::ingest::Ingest;
use crate::journal::Journal;
use crate::log;
use crate::net::Net;
use crate::queue::Shared;
use crate::record::Record;
use crate::scan::ScanWatch;
use crate::status::{Snapshot, Status};

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
        let ingest_journal = open()?;
        let net_journal = open()?;
        let mut apply_journal = open()?;
        // Past every version journaled, and every stamp issued or accepted
        // before (the high-water mark outlives trimmed and purged rows):
        // a change made now is newer, the clock never goes back.
        shared.observe(
            ingest_journal
                .max_stamp()?
                .max(ingest_journal.clock_high()?),
        );
        let apply_token = shared.apply_token().to_string();

        let stop = Arc::new(AtomicBool::new(false));
        let (wake_apply, wake_rx) = crossbeam_channel::bounded(1);
        let (to_net, from_ingest) = handoff(ingest_journal.last_seq()?);
        let (net, waker) = Net::new(
            cfg.clone(),
            status.clone(),
            net_journal,
            wake_apply.clone(),
            shared.clone(),
            from_ingest,
        )
        .map_err(EngineError::Net)?;
        let mut engine = Engine {
            stop: stop.clone(),
            waker: waker.clone(),
            wake_apply: wake_apply.clone(),
            status: status.clone(),
            threads: Vec::new(),
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(EngineError::Net)
        };

        // The worker queue is drained from the first moment: a
        // registration storm right after a restart is journaled while the
        // start-up comparison below runs (ordering in usrloc keeps what the
        // comparison restores from overwriting what SIP workers save now).
        let scan_watch = Arc::new(ScanWatch::default());
        let tail = to_net.tail();
        // Without a periodic check, still a resync's (sersync.resync).
        let proof = Some(crate::proof::Proof::new(
            cfg.check_interval,
            cfg.domains.clone(),
            shared.clone(),
            status.clone(),
        ));
        let ingest = Ingest {
            journal: ingest_journal,
            shared,
            status: status.clone(),
            net: to_net.connect(waker.clone()),
            node_id: cfg.node_id.clone(),
            scan: None,
            scan_watch: scan_watch.clone(),
            delete_limit: cfg.alias_delete_limit,
            scan_idle_max: cfg.alias_scan_idle_max,
        };
        {
            let stop = stop.clone();
            engine.threads.push(spawn(
                "sersync-ingest",
                Box::new(move || ingest.run(&stop)),
            )?);
        }

        // usrloc in memory starts empty: the journal puts it back. A
        // persistent usrloc loaded its table: compare that with the journal.
        let restore = Self::compare_at_start(&cfg, &mut apply_journal, &status)?;
        let last = apply_journal.last_seq()?;
        tail.advance(last);
        status
            .counters
            .apply_pending
            .store(apply_journal.inbox_len()?, Ordering::Relaxed);

        let (primary, fallback): (Box<dyn Sink>, Option<Box<dyn Sink>>) = match sink {
            Some(s) => (s, None),
            None => {
                let door: Box<dyn Sink> = match &cfg.door {
                    Some(p) => Box::new(Door::new(
                        p,
                        &cfg.fifo_reply_dir,
                        &cfg.reply_dir,
                        &apply_token,
                    )),
                    None => Box::new(NoDoor),
                };
                (
                    door,
                    cfg.database
                        .as_ref()
                        .map(|url| Box::new(Database::new(url.clone())) as Box<dyn Sink>),
                )
            }
        };
        let applier = Applier {
            journal: apply_journal,
            reader: Some(open()?),
            primary,
            fallback,
            status: status.clone(),
            wake: wake_rx,
            scan_watch,
            restore,
            proof,
        };
        {
            let stop = stop.clone();
            engine
                .threads
                .push(spawn("sersync-net", Box::new(move || net.run(&stop)))?);
        }
        {
            let stop = stop.clone();
            engine.threads.push(spawn(
                "sersync-apply",
                Box::new(move || applier.run(&stop)),
            )?);
        }
        status.running.store(true, Ordering::Relaxed);
        log::info(format_args!(
            "node {} started: journal {} at sequence {last}, {} peers",
            cfg.node_id,
            cfg.journal.display(),
            cfg.peers.len()
        ));
        Ok(engine)
    }

    /// The start-up comparison: with usrloc in memory, every live contact
    /// of the journal is staged to be restored into SER; with a persistent
    /// usrloc, SER's database is compared with the journal.
    fn compare_at_start(
        cfg: &Config,
        journal: &mut Journal,
        status: &Status,
    ) -> Result<Option<crate::restore::Restore>, EngineError> {
        if cfg.usrloc_in_memory {
            return Ok(crate::restore::stage(journal, &cfg.domains, status)?);
        }
        let Some(db) = &cfg.database else {
            return Ok(None);
        };
        match crate::seed::reconcile(journal, &cfg.node_id, db, &cfg.domains) {
            Ok(r) if r == crate::seed::Reconciled::default() => Ok(None),
            Ok(r) => {
                status
                    .counters
                    .journaled
                    .fetch_add(r.journaled as u64, Ordering::Relaxed);
                log::info(format_args!(
                    "start-up comparison with SER's database: journaled {} contacts the journal lacked, \
                     restoring {} contacts SER lacked",
                    r.journaled, r.restored
                ));
                Ok(r.staged.map(|ids| {
                    crate::restore::Restore::staged(
                        ids,
                        status,
                        "SER's database lacks them or holds older versions",
                    )
                }))
            }
            Err(e) => {
                log::error(format_args!(
                    "cannot compare SER's database with the journal: {e}"
                ));
                Ok(None)
            }
        }
    }

    /// Runs the engine for the life of the sersync process: a start that
    /// fails is tried again every 10 s (SER keeps serving meanwhile), except
    /// on a journal that needs an operator (moved aside as corrupt, or from
    /// a newer release), which is returned. Every failure is logged and
    /// shown in the shared status.
    pub fn supervise(cfg: Config, shared: Arc<Shared>) -> Result<(), JournalError> {
        let show = |e: &dyn std::fmt::Display| {
            let st = Status::new(&cfg.node_id);
            st.set_error(&e.to_string());
            shared.write_status(&st.to_c());
        };
        loop {
            match Engine::start(cfg.clone(), shared.clone(), None) {
                Ok(engine) => {
                    engine.wait();
                    return Ok(());
                }
                Err(EngineError::Journal(
                    e @ (JournalError::CorruptMovedAside { .. } | JournalError::TooNew { .. }),
                )) => {
                    log::error(format_args!(
                        "{e}; until then replication is off, SER keeps serving"
                    ));
                    show(&e);
                    return Err(e);
                }
                Err(e) => {
                    log::error(format_args!(
                        "cannot start: {e}; retrying in 10 s (SER keeps serving)"
                    ));
                    show(&e);
                    std::thread::sleep(std::time::Duration::from_secs(10));
                }
            }
        }
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
    fn apply(&mut self, _: &[(u64, Record)]) -> Result<(), crate::error::ApplyError> {
        Err(crate::error::ApplyError::Door {
            path: "(none)".into(),
            detail: "no RPC door configured".into(),
        })
    }
}
