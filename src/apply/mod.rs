//! The applier: takes staged remote changes from the journal's inbox and
//! replays them into the local SER — through its RPC door
//! ([`door`]: `sersync.apply` runs inside SER and writes usrloc), else
//! directly into SER's database ([`db`]), else counts a temporary failure
//! and retries. A change leaves the inbox only once one path took it, or
//! into the [`quarantine`] when SER cannot take it: refused for good (a
//! usrloc table this node lacks, an invalid field, too large for the
//! door) at once, a failure that may pass after [`RECORD_TRIES`] tries.
//! The changes behind it go on.

pub mod db;
pub mod door;
pub mod payload;
pub mod quarantine;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::ApplyError;
use crate::journal::{Journal, Staged};
use crate::log::{self, RateLimit};
use crate::record::Record;
use crate::restore::Restore;
use crate::scan::ScanWatch;
use crate::status::Status;

/// Where applied records go, each with its stamp.
pub trait Sink: Send {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError>;

    /// SER as the check of SER against the journal sees it
    /// ([`crate::proof`]); None for a sink that cannot walk SER's usrloc
    /// (SER's database, stand-ins in tests).
    fn ser_view(&mut self) -> Option<&mut dyn crate::proof::SerView> {
        None
    }
}

/// Changes taken from the inbox per attempt.
const BATCH: usize = 2000;
/// A batch this large suggests more are staged behind it: the next one is
/// read while SER applies it.
const READ_AHEAD_FROM: usize = BATCH / 2;
/// A batch read ahead: the inbox id it was read after, its current
/// changes and the last id it read (as [`Journal::inbox_current_after`]).
type Ahead = (i64, Vec<Staged>, Option<i64>);
/// How long the door may fail before the database takes over (SER may be
/// starting; records written to the database reach usrloc only when SER
/// next loads it).
const DOOR_GRACE: Duration = Duration::from_secs(3);
/// How often a starting SER is asked again.
const NOT_READY_WAIT: Duration = Duration::from_millis(50);
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Tries of a record whose failure may pass (SER could not write it:
/// memory, a database error) before it is quarantined: with the backoff
/// below, about 11 s. A record SER refuses for good (a usrloc table this
/// node lacks, an invalid field, too large for the door) is quarantined
/// at its first refusal: only an operator's change of the configuration
/// makes it appliable, and `sersync.quarantine_retry` follows that.
const RECORD_TRIES: u32 = 8;
/// How often the quarantine is pruned of what newer versions overtook
/// and shown in the status.
const QUARANTINE_REFRESH: Duration = Duration::from_secs(2);

/// How often a large inbox is counted for `apply_pending`.
const PENDING_COUNT: Duration = Duration::from_millis(250);
/// How long applied changes may wait in the inbox for their deletion:
/// one write transaction (and fsync) for all the passes in that time
/// instead of one per pass, which also held the staging of the next
/// batch behind it. An idle inbox is emptied at once.
const DELETE_EVERY: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct Applier {
    pub journal: Journal,
    /// A second connection to the journal that reads the next batch while
    /// SER applies one (a large inbox: a catch-up, a restore); None: no
    /// read-ahead.
    pub reader: Option<Journal>,
    pub primary: Box<dyn Sink>,
    pub fallback: Option<Box<dyn Sink>>,
    pub status: Arc<Status>,
    pub wake: Receiver<()>,
    pub scan_watch: Arc<ScanWatch>,
    /// The restore staged at start, if any: its progress is counted.
    pub restore: Option<Restore>,
    /// The periodic check of SER against the journal, if configured: run
    /// here, between batches, with nothing staged.
    pub proof: Option<crate::proof::Proof>,
}

static APPLY_ERR: RateLimit = RateLimit::new(2000);

/// Staged changes applied (or overtaken, or quarantined) whose deletion
/// from the inbox waits, made every [`DELETE_EVERY`]: until then the
/// applier reads after them. A crash before the deletion applies them
/// again at the next start, which changes nothing in SER (each is applied
/// only if the state still holds it as its key's version).
struct Done {
    /// Every inbox id up to this one is done (inbox ids are never reused,
    /// so it stays right after the deletion); 0 for none yet.
    upto: i64,
    /// The inbox is deleted up to this id.
    deleted: i64,
    due: Instant,
}

impl Done {
    fn new() -> Done {
        Done {
            upto: 0,
            deleted: 0,
            due: Instant::now() + DELETE_EVERY,
        }
    }

    fn advance(&mut self, upto: i64) {
        self.upto = self.upto.max(upto);
    }

    /// Deletes what is done from the inbox, if anything and if `now` (or
    /// it is due).
    fn delete(&mut self, journal: &mut Journal, now: bool) {
        if self.upto <= self.deleted || (!now && Instant::now() < self.due) {
            return;
        }
        match journal.inbox_done(self.upto) {
            Ok(()) => self.deleted = self.upto,
            // Applied but not removed: re-applying is harmless.
            Err(e) => log::error(format_args!("{e}")),
        }
        self.due = Instant::now() + DELETE_EVERY;
    }
}

impl Applier {
    pub fn run(mut self, stop: &AtomicBool) {
        let mut door_failing_since: Option<Instant> = None;
        let mut waiting_for_ser = false;
        let mut retry = RETRY_MIN;
        // The staged change SER failed on (inbox id) and its tries so far.
        let mut failing: Option<(i64, u32)> = None;
        let mut causes = quarantine::CauseLog::default();
        let mut next_refresh = Instant::now();
        let mut next_count = Instant::now();
        let mut done = Done::new();
        // The batch after inbox id `.0`, read while SER applied the one
        // before it.
        let mut ahead: Option<Ahead> = None;
        while !stop.load(Ordering::Acquire) {
            if Instant::now() >= next_refresh {
                quarantine::refresh(&mut self.journal, &self.status);
                next_refresh = Instant::now() + QUARANTINE_REFRESH;
            }
            let read = match ahead.take() {
                Some((after, staged, last)) if after == done.upto => Ok((staged, last)),
                _ => self.journal.inbox_current_after(done.upto, BATCH),
            };
            let (staged, last_read) = match read {
                Ok(s) => s,
                Err(e) => {
                    log::error(format_args!("reading staged changes: {e}"));
                    std::thread::sleep(RETRY_MAX);
                    continue;
                }
            };
            // An empty inbox is 0 at once; otherwise it is counted at most
            // every PENDING_COUNT (a count(*) per pass is quadratic in a
            // large catch-up).
            if last_read.is_none() {
                done.delete(&mut self.journal, true);
                self.status
                    .counters
                    .apply_pending
                    .store(0, Ordering::Relaxed);
            } else if Instant::now() >= next_count {
                self.status.counters.apply_pending.store(
                    self.journal
                        .inbox_len_after(done.upto)
                        .unwrap_or(staged.len() as u64),
                    Ordering::Relaxed,
                );
                next_count = Instant::now() + PENDING_COUNT;
            }
            let Some(last_id) = last_read else {
                match (&mut self.proof, self.primary.ser_view()) {
                    (Some(p), Some(ser)) => p.tick(&mut self.journal, ser),
                    // sersync.resync's SER half, with no way to walk SER
                    _ if self.status.resync.take_ser_request() => self.status.resync.finish(
                        crate::proof::Proof::counters(&self.status),
                        Some("not compared: no RPC door to walk SER's usrloc"),
                    ),
                    _ => {}
                }
                let _ = self.wake.recv_timeout(Duration::from_millis(500));
                continue;
            };
            let (meta, records): (Vec<Meta>, Vec<(u64, Record)>) = staged
                .into_iter()
                .map(|s| {
                    (
                        Meta {
                            id: s.id,
                            origin: s.origin,
                            seq: s.seq,
                        },
                        (s.hlc, s.record),
                    )
                })
                .unzip();
            if records.is_empty() {
                // Everything read was overtaken by newer versions.
                done.advance(last_id);
                done.delete(&mut self.journal, false);
                if let Some(r) = &mut self.restore {
                    r.progress(last_id, &self.status);
                }
                continue;
            }
            let (result, next) = self.apply_reading_ahead(&records, last_id);
            ahead = next;
            // Ok((records applied, through the database, the one that
            // failed after them and why)).
            let outcome = match result {
                Ok(()) => {
                    door_failing_since = None;
                    Ok((records.len(), false, None))
                }
                // SER applied those before it; this one is the record's
                // problem, not the door's.
                Err(ApplyError::Record {
                    index,
                    refused,
                    reason,
                }) if index < records.len() => {
                    door_failing_since = None;
                    Ok((index, false, Some((refused, reason))))
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
                                Ok((records.len(), true, None))
                            }
                            // One record the database refuses is set aside
                            // as one SER refuses is; the rest flows on.
                            Err(ApplyError::Record {
                                index,
                                refused,
                                reason,
                            }) if index < records.len() => {
                                Ok((index, true, Some((refused, reason))))
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
            let (applied, via_db, failed) = match outcome {
                Ok(o) => o,
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
                    self.pause(&mut retry, stop);
                    continue;
                }
            };
            // Done with everything read before the record that failed
            // (applied, or overtaken), or with all of it.
            let done_upto = match failed {
                Some(_) => meta[applied].id - 1,
                None => last_id,
            };
            let ok = &records[..applied];
            // Before the deletion: a scan that finds a key neither staged
            // nor noted must be sure it was applied before.
            self.scan_watch.note(ok);
            if self.status.counters.quarantined.load(Ordering::Relaxed) > 0 && !ok.is_empty() {
                let keys: Vec<Vec<u8>> = ok.iter().map(|(_, r)| r.key()).collect();
                match self.journal.quarantine_applied(&keys) {
                    Ok(0) => {}
                    Ok(_) => next_refresh = Instant::now(),
                    Err(e) => log::error(format_args!("{e}")),
                }
            }
            done.advance(done_upto);
            done.delete(&mut self.journal, false);
            if let Some(r) = &mut self.restore {
                r.progress(done_upto, &self.status);
            }
            let c = &self.status.counters;
            c.applied.fetch_add(applied as u64, Ordering::Relaxed);
            if via_db {
                c.applied_via_db
                    .fetch_add(applied as u64, Ordering::Relaxed);
            }
            let Some((refused, reason)) = failed else {
                failing = None;
                retry = RETRY_MIN;
                continue;
            };
            let m = &meta[applied];
            let tries = match failing {
                Some((id, t)) if id == m.id => t + 1,
                _ => 1,
            };
            if !refused && tries < RECORD_TRIES {
                // May pass (memory, a database lock): again after a pause.
                failing = Some((m.id, tries));
                c.apply_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = APPLY_ERR.allow() {
                    log::error(format_args!(
                        "cannot apply a change from {} yet (try {tries} of {RECORD_TRIES}, kept): {reason} ({n} similar suppressed)",
                        m.origin
                    ));
                }
                self.status.set_error(&reason);
                self.pause(&mut retry, stop);
                continue;
            }
            failing = None;
            let now = crate::hlc::wall_ms() / 1000;
            match self.journal.quarantine(m.id, &reason, tries, now as i64) {
                Ok(_) => {
                    let held = quarantine::refresh(&mut self.journal, &self.status);
                    next_refresh = Instant::now() + QUARANTINE_REFRESH;
                    causes.quarantined(
                        &m.origin,
                        m.seq,
                        records[applied].0,
                        &records[applied].1,
                        &reason,
                        tries,
                        held,
                    );
                    if let Some(r) = &mut self.restore {
                        r.progress(m.id, &self.status);
                    }
                    retry = RETRY_MIN;
                }
                Err(e) => {
                    log::error(format_args!("cannot quarantine a change: {e}"));
                    self.pause(&mut retry, stop);
                }
            }
        }
        done.delete(&mut self.journal, true);
    }

    /// `records` into SER; meanwhile, if they were many, the batch staged
    /// after inbox id `last_id` is read on the second connection. That
    /// batch is kept only if it holds changes and no alias: an alias is
    /// not version-checked in SER, so its check against the state (a
    /// local change may overtake it) is made just before it is applied.
    fn apply_reading_ahead(
        &mut self,
        records: &[(u64, Record)],
        last_id: i64,
    ) -> (Result<(), ApplyError>, Option<Ahead>) {
        let primary = &mut self.primary;
        let reader = match &mut self.reader {
            Some(r) if records.len() >= READ_AHEAD_FROM => r,
            _ => return (primary.apply(records), None),
        };
        std::thread::scope(|s| {
            let next = s.spawn(move || reader.inbox_current_after(last_id, BATCH));
            let result = primary.apply(records);
            let next = match next.join() {
                Ok(Ok((staged, last)))
                    if last.is_some()
                        && !staged
                            .iter()
                            .any(|s| matches!(s.record, Record::Alias { .. })) =>
                {
                    Some((last_id, staged, last))
                }
                _ => None,
            };
            (result, next)
        })
    }

    /// Sleeps the whole backoff (new arrivals must not hurry the retry of
    /// a path that is failing) and doubles it.
    fn pause(&self, retry: &mut Duration, stop: &AtomicBool) {
        let until = Instant::now() + *retry;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
        *retry = (*retry * 2).min(RETRY_MAX);
    }
}

/// Where a staged change came from, kept beside the records the sink gets.
struct Meta {
    id: i64,
    origin: String,
    seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::{Applier, Sink, RECORD_TRIES};
    use crate::error::ApplyError;
    use crate::journal::Journal;
    use crate::record::{Change, Contact, Op, Record};
    use crate::scan::ScanWatch;
    use crate::status::Status;

    fn contact(table: &str, aor: &str, cseq: i32) -> Record {
        Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: table.as_bytes().to_vec(),
                aor: aor.as_bytes().to_vec(),
                contact: format!("sip:{aor}@10.0.0.9").into_bytes(),
                ruid: format!("r-{aor}-{cseq}").into_bytes(),
                cseq,
                ..Default::default()
            },
        }
    }

    fn aor(r: &Record) -> String {
        match r {
            Record::Contact { contact, .. } => String::from_utf8_lossy(&contact.aor).into(),
            Record::Alias { .. } => unreachable!(),
        }
    }

    /// SER as the door shows it: applies in order, stops at the first
    /// record it cannot take. No table "aliases" until `has_aliases`;
    /// `flaky[aor]` failures that may pass before that AOR applies
    /// (u32::MAX: never).
    #[derive(Clone, Default)]
    struct FakeSer {
        has_aliases: Arc<AtomicBool>,
        flaky: Arc<Mutex<HashMap<String, u32>>>,
        /// Every (AOR, cseq) applied, in order.
        applied: Arc<Mutex<Vec<(String, i32)>>>,
        /// Attempts on each AOR that failed.
        failed: Arc<Mutex<HashMap<String, u32>>>,
    }

    impl Sink for FakeSer {
        fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
            for (index, (_, r)) in records.iter().enumerate() {
                let Record::Contact { contact, .. } = r else {
                    unreachable!()
                };
                let name = aor(r);
                if contact.domain == b"aliases" && !self.has_aliases.load(Ordering::SeqCst) {
                    *self.failed.lock().unwrap().entry(name).or_default() += 1;
                    return Err(ApplyError::Record {
                        index,
                        refused: true,
                        reason: "usrloc table 'aliases' is not registered on this node".into(),
                    });
                }
                if let Some(left) = self.flaky.lock().unwrap().get_mut(&name) {
                    if *left > 0 {
                        *left = left.saturating_sub(1);
                        *self.failed.lock().unwrap().entry(name).or_default() += 1;
                        return Err(ApplyError::Record {
                            index,
                            refused: false,
                            reason: "usrloc could not write the contact".into(),
                        });
                    }
                }
                self.applied.lock().unwrap().push((name, contact.cseq));
            }
            Ok(())
        }
    }

    struct Running {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
        status: Arc<Status>,
        wake: crossbeam_channel::Sender<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Release);
            let _ = self.wake.try_send(());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn start(path: &std::path::Path, ser: &FakeSer) -> Running {
        let status = Arc::new(Status::new("n1"));
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        let applier = Applier {
            journal: Journal::open(path).unwrap(),
            reader: Some(Journal::open(path).unwrap()),
            primary: Box::new(ser.clone()),
            fallback: None,
            status: status.clone(),
            wake: wake_rx,
            scan_watch: Arc::new(ScanWatch::default()),
            restore: None,
            proof: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || applier.run(&s));
        Running {
            stop,
            thread: Some(thread),
            status,
            wake,
        }
    }

    fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stage(j: &mut Journal, origin: &str, changes: &[(u64, u64, Record)]) {
        let changes: Vec<Change> = changes
            .iter()
            .map(|(seq, hlc, record)| Change {
                seq: *seq,
                hlc: *hlc,
                record: record.clone(),
            })
            .collect();
        j.stage_remote(origin, &changes).unwrap();
    }

    /// Applied changes leave the inbox (at once when it runs dry), and
    /// changes staged after it was emptied are applied too (their ids go
    /// on after those read before).
    #[test]
    fn changes_staged_after_the_inbox_emptied_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        let ab = [
            (1, 100, contact("location", "a", 1)),
            (2, 101, contact("location", "b", 1)),
        ];
        stage(&mut j, "n2", &ab);
        let ser = FakeSer::default();
        let run = start(&path, &ser);
        wait_for(
            "a and b applied and deleted",
            Duration::from_secs(5),
            || ser.applied.lock().unwrap().len() == 2 && j.inbox_len().unwrap() == 0,
        );
        stage(&mut j, "n2", &[(3, 102, contact("location", "c", 1))]);
        let _ = run.wake.try_send(());
        wait_for("c applied and deleted", Duration::from_secs(5), || {
            ser.applied.lock().unwrap().len() == 3 && j.inbox_len().unwrap() == 0
        });
        assert_eq!(ser.applied.lock().unwrap()[2], ("c".to_string(), 1));
    }

    /// A large inbox is applied batch by batch with the next batch read
    /// while SER takes one: every key ends at its newest version, applied
    /// after any older one, and a failure that passes (the next batch,
    /// read ahead, is then read again) loses nothing.
    #[test]
    fn a_large_inbox_is_applied_in_order_with_reading_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        let mut changes: Vec<(u64, u64, Record)> = (0..5000)
            .map(|i| (i + 1, 1000 + i, contact("location", &format!("u{i}"), 1)))
            .collect();
        // newer versions of the first 2,000 keys, staged behind them
        changes.extend((0..2000u64).map(|i| {
            (
                5001 + i,
                10_000 + i,
                contact("location", &format!("u{i}"), 2),
            )
        }));
        for chunk in changes.chunks(1000) {
            stage(&mut j, "n2", chunk);
        }
        let ser = FakeSer::default();
        // in the second batch: fails twice, then applies
        ser.flaky.lock().unwrap().insert("u2500".into(), 2);
        let run = start(&path, &ser);
        wait_for(
            "the inbox applied and emptied",
            Duration::from_secs(30),
            || j.inbox_len().unwrap() == 0 && ser.applied.lock().unwrap().len() >= 5000,
        );
        let applied = ser.applied.lock().unwrap().clone();
        let mut last: HashMap<String, i32> = HashMap::new();
        for (aor, cseq) in &applied {
            let before = last.insert(aor.clone(), *cseq).unwrap_or(0);
            assert!(before <= *cseq, "{aor}: {cseq} applied after {before}");
        }
        assert_eq!(last.len(), 5000);
        for i in 0..5000 {
            let want = if i < 2000 { 2 } else { 1 };
            assert_eq!(last[&format!("u{i}")], want, "u{i}");
        }
        assert_eq!(ser.failed.lock().unwrap()["u2500"], 2);
        assert_eq!(run.status.counters.quarantined.load(Ordering::Relaxed), 0);
    }

    /// Records in a table SER lacks are quarantined at their first refusal,
    /// with their reason; the records behind them are applied; a newer
    /// version of a quarantined key makes the old one obsolete; once the
    /// table exists, a retry applies them.
    #[test]
    fn refused_records_are_quarantined_and_the_rest_flow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        stage(
            &mut j,
            "n2",
            &[
                (1, 100, contact("location", "a", 1)),
                (2, 101, contact("aliases", "b", 1)),
                (3, 102, contact("location", "c", 1)),
                (4, 103, contact("aliases", "d", 1)),
                (5, 104, contact("location", "e", 1)),
            ],
        );
        let ser = FakeSer::default();
        let run = start(&path, &ser);
        wait_for("a, c and e applied", Duration::from_secs(5), || {
            ser.applied.lock().unwrap().len() == 3
        });
        let applied: Vec<String> = ser
            .applied
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.0.clone())
            .collect();
        assert_eq!(applied, ["a", "c", "e"]);
        wait_for("two quarantined and shown", Duration::from_secs(5), || {
            run.status.counters.quarantined.load(Ordering::Relaxed) == 2
                && run.status.quarantine.lock().unwrap().oldest.len() == 2
                && j.inbox_len().unwrap() == 0
        });
        // Refused for good: tried once each.
        assert_eq!(ser.failed.lock().unwrap().get("b"), Some(&1));
        assert_eq!(ser.failed.lock().unwrap().get("d"), Some(&1));
        let view = run.status.quarantine.lock().unwrap().clone();
        assert_eq!(
            view.last_reason,
            "usrloc table 'aliases' is not registered on this node"
        );
        assert_eq!(view.oldest.len(), 2);
        assert_eq!(
            (view.oldest[0].origin.as_str(), view.oldest[0].seq),
            ("n2", 2)
        );
        assert_eq!(view.oldest[0].stamp, 101);
        assert_eq!(
            view.oldest[0].record,
            "upsert contact aliases/b sip:b@10.0.0.9"
        );
        assert_eq!(view.oldest[0].tries, 1);
        assert_eq!(j.inbox_len().unwrap(), 0);

        // A newer version of b from n3 (refused too) replaces the old one.
        stage(&mut j, "n3", &[(1, 200, contact("aliases", "b", 2))]);
        let _ = run.wake.try_send(());
        wait_for("b's old version pruned", Duration::from_secs(5), || {
            let q = j.quarantine_list(10).unwrap();
            q.len() == 2
                && q.iter().any(|e| e.origin == "n3")
                && !q.iter().any(|e| e.seq == Some(2))
        });

        // The table exists now; an operator retries (as the ingest thread
        // does, on its own connection).
        ser.has_aliases.store(true, Ordering::SeqCst);
        super::quarantine::control(&mut j, &run.status, true, 0);
        wait_for("b and d applied", Duration::from_secs(5), || {
            ser.applied.lock().unwrap().len() == 5
        });
        let applied = ser.applied.lock().unwrap().clone();
        assert!(applied.contains(&("b".into(), 2)), "{applied:?}");
        assert!(applied.contains(&("d".into(), 1)), "{applied:?}");
        assert!(
            !applied.contains(&("b".into(), 1)),
            "the obsolete version came back: {applied:?}"
        );
        wait_for("quarantine empty", Duration::from_secs(5), || {
            run.status.counters.quarantined.load(Ordering::Relaxed) == 0
        });
        assert_eq!(j.quarantine_summary().unwrap(), (0, String::new()));
    }

    /// A failure that may pass is tried RECORD_TRIES times with backoff,
    /// then quarantined; one that passes within its tries is applied; the
    /// records behind both are applied.
    #[test]
    fn a_failing_record_is_tried_a_bounded_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path).unwrap();
        stage(
            &mut j,
            "n2",
            &[
                (1, 100, contact("location", "a", 1)),
                (2, 101, contact("location", "b", 1)),
                (3, 102, contact("location", "c", 1)),
                (4, 103, contact("location", "d", 1)),
            ],
        );
        let ser = FakeSer::default();
        ser.flaky.lock().unwrap().insert("b".into(), u32::MAX);
        ser.flaky.lock().unwrap().insert("c".into(), 2);
        let t0 = Instant::now();
        let run = start(&path, &ser);
        wait_for("b quarantined", Duration::from_secs(30), || {
            run.status.counters.quarantined.load(Ordering::Relaxed) == 1
        });
        let took = t0.elapsed();
        wait_for("a, c, d applied", Duration::from_secs(5), || {
            ser.applied.lock().unwrap().len() == 3
        });
        let applied: Vec<String> = ser
            .applied
            .lock()
            .unwrap()
            .iter()
            .map(|x| x.0.clone())
            .collect();
        assert_eq!(applied, ["a", "c", "d"]);
        assert_eq!(ser.failed.lock().unwrap().get("b"), Some(&RECORD_TRIES));
        assert_eq!(ser.failed.lock().unwrap().get("c"), Some(&2));
        // With backoff: 0.1 + 0.2 + ... s between the tries.
        assert!(took >= Duration::from_secs(5), "no backoff: {took:?}");
        let view = run.status.quarantine.lock().unwrap().clone();
        assert_eq!(view.oldest[0].tries, RECORD_TRIES);
        assert_eq!(view.last_reason, "usrloc could not write the contact");
        assert_eq!(
            run.status.counters.apply_failures.load(Ordering::Relaxed),
            u64::from(RECORD_TRIES - 1 + 2)
        );
    }
}
