//! Journal retention as the network thread runs it: entries every peer
//! holds, and those past retention, leave the log; expired keys leave the
//! state, in passes through it in key order.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Net, PURGE_CHUNK, PURGE_EVERY, TICK, TRIM_CHUNK, TRIM_EVERY};
use crate::log;

impl Net {
    /// Drops journal entries every peer holds, and those past retention,
    /// and expired keys from the state: the targets every TRIM_EVERY, the
    /// deleting a chunk per TICK.
    pub(super) fn trim(&mut self) {
        self.save_acks(false);
        let now = Instant::now();
        if now.duration_since(self.last_trim_chunk) < TICK {
            return;
        }
        self.last_trim_chunk = now;
        let result = (|| -> Result<usize, crate::error::JournalError> {
            let cutoff = crate::hlc::wall_ms().saturating_sub(self.cfg.retention_ms) << 16;
            if now.duration_since(self.last_trim) >= TRIM_EVERY {
                self.last_trim = now;
                self.save_acks(true);
                let last = self.journal.last_seq()?;
                let mut upto = self.journal.min_acked()?.unwrap_or(0).min(last);
                upto = upto.max(self.journal.last_seq_before(cutoff)?);
                if self.cfg.retention_records > 0 {
                    upto = upto.max(last.saturating_sub(self.cfg.retention_records));
                }
                self.trim_target = upto;
                if self.purge_from.is_none()
                    && self
                        .last_purge_pass
                        .is_none_or(|at| now.duration_since(at) >= PURGE_EVERY)
                {
                    self.last_purge_pass = Some(now);
                    self.purge_from = Some(Vec::new());
                }
            }
            if let Some(after) = self.purge_from.take() {
                let now_s = crate::hlc::wall_ms() as i64 / 1000;
                let (purged, next) =
                    self.journal
                        .purge_state_after(&after, now_s, cutoff, PURGE_CHUNK)?;
                self.purge_from = next;
                if purged > 0 {
                    log::debug(format_args!(
                        "journal: {purged} expired keys left the state"
                    ));
                }
            }
            let first = self.journal.first_available()?;
            if self.trim_target < first {
                return Ok(0);
            }
            // A chunk ends with a batch: only the target itself may cut
            // one (which rewrites what follows in it).
            let chunk_end = first + TRIM_CHUNK - 1;
            let chunk_end = self.journal.batch_end(chunk_end)?.unwrap_or(chunk_end);
            self.journal.trim(self.trim_target.min(chunk_end))
        })();
        match result {
            Ok(0) => {}
            Ok(n) => log::debug(format_args!("journal: trimmed {n} entries")),
            Err(e) => log::error(format_args!("journal trim: {e}")),
        }
        // The log holds every sequence from its first entry to the last.
        if let (Ok(first), Ok(last)) = (self.journal.first_available(), self.journal.last_seq()) {
            self.status
                .counters
                .journal_entries
                .store((last + 1).saturating_sub(first), Ordering::Relaxed);
        }
    }
}
