//! Sending a snapshot of this node's state to a peer that needs changes
//! its journal no longer holds: the plan, the chunk pump, the window.

use mio::Token;

use super::conn::Verdict;
use super::{Net, MAX_OUTBUF, SNAPSHOT_ROWS, SNAPSHOT_WINDOW};
use crate::log;
use crate::wire::{Frame, SnapshotResume};

/// Sender side of a snapshot in progress.
pub(super) struct SnapSend {
    /// The journal position the snapshot is consistent with: the stream
    /// continues after it.
    pub(super) upto: u64,
    /// Last key read from the state table.
    pub(super) cursor: Vec<u8>,
    pub(super) next_chunk: u64,
    /// Chunks sent and not yet acknowledged.
    pub(super) inflight: u64,
    /// The chunk flagged last has been sent.
    pub(super) all_sent: bool,
    pub(super) rows_sent: u64,
    pub(super) rows_total: u64,
}

impl Net {
    /// Whether a peer positioned after `resume_after` needs a snapshot,
    /// and which: an interrupted one continues when the journal still
    /// holds every change since its sequence. A peer that states a
    /// snapshot in progress gets one whatever its position: one that has
    /// not begun (an empty key) is how a node whose journal was restored
    /// from a backup asks for the state it lost (see
    /// [`crate::journal::Journal::disown_positions`]).
    pub(super) fn plan_snapshot(
        &self,
        resume_after: u64,
        resume: Option<SnapshotResume>,
    ) -> Result<Option<SnapSend>, crate::error::JournalError> {
        let first = self.journal.first_available()?;
        let last = self.journal.last_seq()?;
        if resume.is_none() && (resume_after + 1 >= first || resume_after >= last) {
            return Ok(None);
        }
        let rows_total = self.journal.state_len()?;
        let (upto, cursor) = match resume {
            Some(r) if !r.after_key.is_empty() && r.upto + 1 >= first && r.upto <= last => {
                (r.upto, r.after_key)
            }
            _ => (last, Vec::new()),
        };
        Ok(Some(SnapSend {
            upto,
            cursor,
            next_chunk: 0,
            inflight: 0,
            all_sent: false,
            rows_sent: 0,
            rows_total,
        }))
    }

    /// Sends snapshot chunks while the window allows.
    pub(super) fn pump_snapshot(&mut self, idx: usize, t: Token) {
        while let Some(c) = self.conns.get_mut(&t) {
            let Some(snap) = c.snap.as_mut() else { return };
            if snap.all_sent
                || snap.inflight >= SNAPSHOT_WINDOW
                || c.out.len() - c.out_pos >= MAX_OUTBUF
            {
                return;
            }
            let rows = match self.journal.state_chunk(&snap.cursor, SNAPSHOT_ROWS) {
                Ok(r) => r,
                Err(e) => {
                    log::error(format_args!("reading state for a snapshot: {e}"));
                    return;
                }
            };
            let last = rows.len() < SNAPSHOT_ROWS;
            if let Some(r) = rows.last() {
                snap.cursor = r.record.key();
            }
            snap.rows_sent += rows.len() as u64;
            snap.all_sent = last;
            snap.inflight += 1;
            let chunk = snap.next_chunk;
            snap.next_chunk += 1;
            let upto = snap.upto;
            let n = rows.len() as u64;
            let (sent, total) = (snap.rows_sent, snap.rows_total.max(snap.rows_sent));
            c.send(&Frame::SnapshotChunk {
                upto,
                chunk,
                rows,
                last,
            });
            self.status.with_peer(idx, |s| {
                s.sent += n;
                s.snapshot_sent = sent;
                s.snapshot_total = total;
            });
        }
    }

    pub(super) fn on_snapshot_ack(&mut self, t: Token, peer: usize) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let snap = c.snap.as_mut().expect("guarded");
        snap.inflight = snap.inflight.saturating_sub(1);
        if snap.all_sent && snap.inflight == 0 {
            let upto = snap.upto;
            log::info(format_args!(
                "snapshot to {} complete ({} rows)",
                c.remote_id, snap.rows_sent
            ));
            c.snap = None;
            c.next_send = upto;
            c.acked = upto;
            let remote = c.remote_id.clone();
            if let Err(e) = self.journal.set_acked(&remote, upto) {
                log::error(format_args!("{e}"));
            }
            self.status.with_peer(peer, |s| s.acked = upto);
        }
        Verdict::Continue
    }
}
