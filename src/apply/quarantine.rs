//! The quarantine as the engine runs it: what the applier sets aside
//! (journal: [`crate::journal::Journal::quarantine`]), what the status
//! shows of it, one log line per cause, and the operators' requests
//! (`sersync.quarantine_retry` / `_drop`, which reach the engine through
//! the worker queue like `sersync.forget` and are carried out by the
//! ingest thread on its journal connection).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::abi::SERSYNC_QUARANTINE_SHOWN;
use crate::journal::{Journal, Quarantined, Which};
use crate::log;
use crate::record::{Op, Record};
use crate::status::{QuarantineEntry, QuarantineView, Status};

/// One log line per cause at most this often.
const CAUSE_LOG_EVERY: Duration = Duration::from_secs(60);
/// Causes remembered for the rate limit (a flood of distinct reasons
/// must not grow memory).
const CAUSES_MAX: usize = 64;

/// How a record reads in the list and the log.
pub fn describe(record: Option<&Record>) -> String {
    let op = |op: &Op| match op {
        Op::Upsert => "upsert",
        Op::Delete => "delete",
    };
    let t = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match record {
        Some(Record::Contact { op: o, contact: c }) => format!(
            "{} contact {}/{} {}",
            op(o),
            t(&c.domain),
            t(&c.aor),
            t(&c.contact)
        ),
        Some(Record::Alias { op: o, alias: a }) => format!(
            "{} alias {}/{}@{} -> {}@{}",
            op(o),
            t(&a.table),
            t(&a.alias_username),
            t(&a.alias_domain),
            t(&a.username),
            t(&a.domain)
        ),
        None => "(record not readable by this release)".into(),
    }
}

/// Logs a cause once, then at most once a [`CAUSE_LOG_EVERY`] with the
/// number of records set aside for it meanwhile.
#[derive(Default)]
pub struct CauseLog {
    /// When each cause was last logged, and records since.
    causes: HashMap<String, (Option<Instant>, u64)>,
}

impl CauseLog {
    #[allow(clippy::too_many_arguments)]
    pub fn quarantined(
        &mut self,
        origin: &str,
        seq: Option<u64>,
        stamp: u64,
        record: &Record,
        reason: &str,
        tries: u32,
        held: u64,
    ) {
        let now = Instant::now();
        if self.causes.len() >= CAUSES_MAX && !self.causes.contains_key(reason) {
            self.causes
                .retain(|_, (at, _)| at.is_some_and(|t| now.duration_since(t) < CAUSE_LOG_EVERY));
            if self.causes.len() >= CAUSES_MAX {
                self.causes.clear();
            }
        }
        let entry = self.causes.entry(reason.to_string()).or_insert((None, 0));
        if entry
            .0
            .is_some_and(|t| now.duration_since(t) < CAUSE_LOG_EVERY)
        {
            entry.1 += 1;
            return;
        }
        let more = std::mem::take(&mut entry.1);
        entry.0 = Some(now);
        let seq = seq.map_or_else(|| "-".to_string(), |q| q.to_string());
        log::error(format_args!(
            "quarantined a change from {origin} (sequence {seq}, stamp {stamp}) after {tries} \
             tries: {reason}: {}; {held} held now, {more} more for this cause since it was \
             last logged (sersync.quarantine lists them; sersync.quarantine_retry once fixed)",
            describe(Some(record))
        ));
    }
}

fn entry(q: &Quarantined) -> QuarantineEntry {
    QuarantineEntry {
        id: q.id as u64,
        origin: q.origin.clone(),
        seq: q.seq.unwrap_or(0),
        stamp: q.hlc,
        at: q.at,
        tries: q.tries,
        record: describe(q.record.as_ref()),
        reason: q.reason.clone(),
    }
}

/// Drops the obsolete (a newer version of the key is in the state) and
/// shows the quarantine in the status. Returns how many it holds.
pub fn refresh(journal: &mut Journal, status: &Status) -> u64 {
    let result = (|| {
        let pruned = journal.quarantine_prune()?;
        if pruned > 0 {
            log::info(format_args!(
                "quarantine: {pruned} changes left it, overtaken by newer versions"
            ));
        }
        let (held, last_reason) = journal.quarantine_summary()?;
        let oldest = journal.quarantine_list(SERSYNC_QUARANTINE_SHOWN as usize)?;
        Ok::<_, crate::error::JournalError>((held, last_reason, oldest))
    })();
    match result {
        Ok((held, last_reason, oldest)) => {
            status.counters.quarantined.store(held, Ordering::Relaxed);
            *status.quarantine.lock().unwrap_or_else(|p| p.into_inner()) = QuarantineView {
                last_reason,
                oldest: oldest.iter().map(entry).collect(),
            };
            held
        }
        Err(e) => {
            log::error(format_args!("reading the quarantine: {e}"));
            status.counters.quarantined.load(Ordering::Relaxed)
        }
    }
}

/// An operator's `sersync.quarantine_retry` (`retry`) or `_drop` of the
/// change `id`, or of all when 0. A retried change goes back into the
/// inbox as it was staged; the applier (which reads the inbox at least
/// every 500 ms) tries it again.
pub fn control(journal: &mut Journal, status: &Status, retry: bool, id: u64) {
    let which = match id {
        0 => Which::All,
        n => Which::One(n.min(i64::MAX as u64) as i64),
    };
    let what = if retry { "retry" } else { "drop" };
    let done = if retry {
        journal.quarantine_retry(which)
    } else {
        journal.quarantine_drop(which)
    };
    match done {
        Ok(n) => {
            let target = match which {
                Which::All => "all".to_string(),
                Which::One(id) => format!("id {id}"),
            };
            log::info(format_args!(
                "quarantine: {what} {target} on request: {n} changes {}",
                if retry {
                    "back to the applier"
                } else {
                    "dropped"
                }
            ));
        }
        Err(e) => log::error(format_args!("quarantine: {what} on request failed: {e}")),
    }
    refresh(journal, status);
}
