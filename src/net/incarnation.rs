//! Incarnations: each start of a node gets a number that only grows, kept
//! in its journal and told to every peer in the v2 handshake; each peer
//! keeps the highest it has seen of every member and says so back. A
//! journal restored from a backup holds an older number: the first peer
//! that has seen a later one makes this node move past it, so no two runs
//! of one node ever share an incarnation once a peer has seen either. A
//! random run id drawn at each start tells this run's number, reported
//! back, from an earlier run's that had the same one.

use crate::error::JournalError;
use crate::journal::Journal;
use crate::log;
use crate::wire::Session;

use super::Net;

const MINE: &str = "incarnation";

fn key_of(node_id: &str) -> String {
    format!("incarnation_of:{node_id}")
}

fn run_key_of(node_id: &str) -> String {
    format!("incarnation_run_of:{node_id}")
}

/// A random run id, never 0 (0 means "none seen").
pub(super) fn fresh_run() -> u64 {
    let mut b = [0u8; 8];
    if let Err(e) = getrandom::getrandom(&mut b) {
        log::error(format_args!("no entropy for the run id: {e}"));
    }
    u64::from_le_bytes(b).max(1)
}

/// This start's incarnation: one more than the journal's last, saved
/// before any peer hears of it.
pub(super) fn begin(journal: &mut Journal) -> Result<u64, JournalError> {
    let next = journal.meta(MINE)?.unwrap_or(0).max(0) as u64 + 1;
    journal.set_meta(MINE, next as i64)?;
    Ok(next)
}

impl Net {
    /// The highest incarnation of `node_id` this node has seen and its run
    /// id ((0, 0): none).
    pub(super) fn seen_of(&self, node_id: &str) -> (u64, u64) {
        let read = |k: String| match self.journal.meta(&k) {
            Ok(v) => v.unwrap_or(0) as u64,
            Err(e) => {
                log::error(format_args!("reading the incarnation of {node_id}: {e}"));
                0
            }
        };
        (read(key_of(node_id)), read(run_key_of(node_id)))
    }

    /// A peer told us its session and the highest of our incarnations it
    /// has seen.
    pub(super) fn note_session(&mut self, node_id: &str, s: &Session) {
        let (theirs, seen_of_ours) = (s.incarnation, s.seen);
        let (known, _) = self.seen_of(node_id);
        if theirs < known {
            log::warn(format_args!(
                "peer {node_id} runs incarnation {theirs}, older than {known} seen before: \
                 was its journal restored from a backup? (it moves past {known} now)"
            ));
        } else {
            let saved = self
                .journal
                .set_meta(&key_of(node_id), theirs as i64)
                .and_then(|()| self.journal.set_meta(&run_key_of(node_id), s.run as i64));
            if let Err(e) = saved {
                log::error(format_args!("saving the incarnation of {node_id}: {e}"));
            }
        }
        // This run's number seen from another run, or a later one seen.
        let other_run = seen_of_ours == self.incarnation && s.seen_run != self.run;
        if seen_of_ours > self.incarnation || other_run {
            let next = seen_of_ours + 1;
            log::warn(format_args!(
                "peer {node_id} has seen incarnation {seen_of_ours} of this node, this run had \
                 {}: this journal is older than this node's last run (restored from a backup?); \
                 now incarnation {next}",
                self.incarnation
            ));
            match self.journal.set_meta(MINE, next as i64) {
                Ok(()) => {
                    self.incarnation = next;
                    // Peers that heard the old number hear the new one
                    // when they connect again.
                    self.reconnect_all = true;
                }
                Err(e) => log::error(format_args!("saving this node's incarnation: {e}")),
            }
            self.status
                .incarnation
                .store(self.incarnation, std::sync::atomic::Ordering::Relaxed);
            self.found_restored(node_id);
        }
    }

    /// This journal is older than this node's last run (restored from a
    /// backup), as `peer` showed: the lost run gave its changes the
    /// sequences this journal gives out again, and peers hold those
    /// numbers (they would skip ours as resends), and its state lacks what
    /// changed since the backup. Every peer's position is disowned, so
    /// that each renumbers this journal after the position it reports on
    /// its next link (see `on_welcome`), and every peer is asked for its
    /// state; every link starts again for that.
    pub(super) fn found_restored(&mut self, peer: &str) {
        match self.journal.disown_positions(&self.cfg.node_id, peer) {
            Ok(asked) => log::warn(format_args!(
                "this journal is older than what peer {peer} holds of this node (restored from \
                 a backup?): this node's changes are numbered again after what each peer holds, \
                 and {asked} peers are asked for their state"
            )),
            Err(e) => log::error(format_args!(
                "journal restored from a backup: cannot disown peers' positions: {e}"
            )),
        }
        // Positions acknowledged on the links now closing are in the
        // numbering just disowned.
        self.acks_unsaved.clear();
        self.reconnect_all = true;
    }

    /// What this node says about itself on a v2 connection to `node_id`.
    pub(super) fn session_for(&self, node_id: &str, version: u16) -> Session {
        let (seen, seen_run) = self.seen_of(node_id);
        Session {
            version,
            incarnation: self.incarnation,
            run: self.run,
            seen,
            seen_run,
            capabilities: Vec::new(),
        }
    }
}
