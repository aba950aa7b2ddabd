//! Restore at start: with usrloc keeping contacts in memory only, SER
//! starts empty, while the journal's state holds the latest version of
//! every contact the cluster had. Every live one (not deleted, not
//! expired) is staged for applying, ahead of anything peers send; the
//! applier puts them back into SER through its RPC door, and changes made
//! meanwhile (here or at peers) overtake them there (last writer wins), so
//! nothing deleted or replaced since comes back.

use std::time::{Duration, Instant};

use crate::error::JournalError;
use crate::journal::Journal;
use crate::log;
use crate::status::Status;
use std::sync::atomic::Ordering;

/// A restore staged at start: the inbox ids it took.
#[derive(Debug, Clone, Copy)]
pub struct Restore {
    first_id: i64,
    last_id: i64,
    started: Instant,
    last_log: Instant,
    done: bool,
}

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Stages every live contact of `tables` the journal holds; None when
/// there is none.
pub fn stage(
    journal: &mut Journal,
    tables: &[String],
    status: &Status,
) -> Result<Option<Restore>, JournalError> {
    let now = crate::hlc::wall_ms() as i64 / 1000;
    let staged = journal.stage_restore_live(|c| {
        (c.expires == 0 || c.expires > now)
            && tables.iter().any(|t| t.as_bytes() == c.domain.as_slice())
    })?;
    let Some((first_id, last_id)) = staged else {
        log::info(format_args!("restore: the journal holds no live contact"));
        return Ok(None);
    };
    Ok(Some(Restore::staged(
        (first_id, last_id),
        status,
        "usrloc keeps contacts in memory only",
    )))
}

impl Restore {
    /// Counts a restore the inbox ids `(first, last)` hold, staged
    /// because of `why`.
    pub fn staged((first_id, last_id): (i64, i64), status: &Status, why: &str) -> Restore {
        let total = (last_id - first_id + 1) as u64;
        status
            .counters
            .restore_pending
            .store(total, Ordering::Relaxed);
        log::info(format_args!(
            "restore: {total} contacts from the journal to put back into SER ({why})"
        ));
        let now = Instant::now();
        Restore {
            first_id,
            last_id,
            started: now,
            last_log: now,
            done: false,
        }
    }

    /// The applier is done with the inbox up to `upto_id` (applied, or
    /// overtaken by a newer version): counts and logs the progress.
    pub fn progress(&mut self, upto_id: i64, status: &Status) {
        if self.done || upto_id < self.first_id {
            return;
        }
        let total = (self.last_id - self.first_id + 1) as u64;
        let done = ((upto_id.min(self.last_id) - self.first_id + 1) as u64).min(total);
        let c = &status.counters;
        c.restored.store(done, Ordering::Relaxed);
        c.restore_pending.store(total - done, Ordering::Relaxed);
        if done == total {
            self.done = true;
            log::info(format_args!(
                "restore: {total} contacts back in SER in {:.2} s",
                self.started.elapsed().as_secs_f64()
            ));
        } else if self.last_log.elapsed() >= PROGRESS_EVERY {
            self.last_log = Instant::now();
            log::info(format_args!(
                "restore: {done} of {total} contacts back in SER"
            ));
        }
    }
}
