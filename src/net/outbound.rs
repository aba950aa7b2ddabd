//! The sender's side: filling each peer's window from the journal, and
//! saving what peers acknowledged.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Token;

use super::conn::{Phase, Verdict};
use super::{Net, ACK_SAVE_EVERY, BACKOFF_MAX, BATCH_RECORDS, MAX_OUTBUF, WINDOW_RECORDS};
use crate::log;

impl Net {
    /// Fills every streaming dialer's window from the journal.
    pub(super) fn pump_all(&mut self) {
        let last = self.ingest.tail.last();
        let now = Instant::now();
        for idx in 0..self.peers.len() {
            let Some(t) = self.peers[idx].conn else {
                continue;
            };
            if self.peers[idx].resend_at.is_some_and(|r| now < r) {
                continue;
            }
            self.peers[idx].resend_at = None;
            self.pump_snapshot(idx, t);
            // Retention may have trimmed entries this peer still needs.
            if let Some(c) = self.conns.get(&t) {
                if matches!(c.phase, Phase::Streaming) && c.snap.is_none() {
                    let first = self.journal.first_available().unwrap_or(0);
                    if c.next_send + 1 < first {
                        let next = c.next_send;
                        match self.plan_snapshot(next, None) {
                            Ok(snap) => {
                                let c = self.conns.get_mut(&t).expect("checked");
                                log::warn(format_args!(
                                    "peer {} fell behind the journal's retention: switching to a snapshot",
                                    c.remote_id
                                ));
                                c.acked = c.acked.min(next);
                                c.snap = snap;
                            }
                            Err(e) => log::error(format_args!("{e}")),
                        }
                        continue;
                    }
                }
            }
            while let Some(c) = self.conns.get_mut(&t) {
                if c.snap.is_some() {
                    break;
                }
                if !matches!(c.phase, Phase::Streaming)
                    || c.next_send >= last
                    || c.next_send - c.acked >= WINDOW_RECORDS
                    || c.out.len() - c.out_pos >= MAX_OUTBUF
                {
                    break;
                }
                let room =
                    (WINDOW_RECORDS - (c.next_send - c.acked)).min(BATCH_RECORDS as u64) as usize;
                let batch = match read_batch(&self.journal, c.version, c.next_send, room) {
                    Ok(v) => v,
                    Err(e) => {
                        log::error(format_args!("reading journal for {}: {e}", c.remote_id));
                        break;
                    }
                };
                let Some((frame, last, n)) = batch else { break };
                c.next_send = last;
                c.send(&frame);
                self.status.with_peer(idx, |s| s.sent += n);
            }
            self.flush(t);
        }
    }

    /// Saves acknowledged positions (see ACK_SAVE_EVERY).
    pub(super) fn save_acks(&mut self, force: bool) {
        if self.acks_unsaved.is_empty() || (!force && self.last_ack_save.elapsed() < ACK_SAVE_EVERY)
        {
            return;
        }
        self.last_ack_save = Instant::now();
        for (peer, upto) in std::mem::take(&mut self.acks_unsaved) {
            // A forgotten peer's row is gone for good.
            if self.forgotten.contains(&peer) {
                continue;
            }
            if let Err(e) = self.journal.set_acked(&peer, upto) {
                log::error(format_args!("{e}"));
            }
        }
    }

    pub(super) fn on_ack(&mut self, t: Token, peer: usize, upto: u64) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        if upto > c.next_send {
            return Verdict::Close(format!(
                "peer acknowledged {upto}, beyond {} sent",
                c.next_send
            ));
        }
        c.acked = c.acked.max(upto);
        let (remote, acked) = (c.remote_id.clone(), c.acked);
        // Not while links close for a journal found restored (see
        // found_restored): their positions are disowned.
        if !self.reconnect_all {
            self.acks_unsaved.insert(remote, acked);
        }
        let last = self.ingest.tail.last();
        self.status.with_peer(peer, |s| {
            s.acked = acked;
            s.pending = last.saturating_sub(acked);
        });
        Verdict::Continue
    }

    pub(super) fn on_temp_fail(
        &mut self,
        t: Token,
        peer: usize,
        upto: u64,
        reason: String,
    ) -> Verdict {
        let id = self
            .conns
            .get(&t)
            .map(|c| c.remote_id.clone())
            .unwrap_or_default();
        self.note_refused_by_peer(&id, &reason);
        let c = self.conns.get_mut(&t).expect("caller checked");
        log::warn(format_args!(
            "peer {} reports a temporary failure: {reason}; resending after {upto}",
            c.remote_id
        ));
        c.acked = c.acked.max(upto);
        c.next_send = c.acked;
        let p = &mut self.peers[peer];
        p.resend_at = Some(Instant::now() + p.backoff);
        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
        self.status.with_peer(peer, |s| {
            s.last_error = format!("peer temporary failure: {reason}")
        });
        Verdict::Continue
    }

    /// Reports each peer's position, lag and what it sent here, and copies
    /// the status into the shared area SER's RPC reads (at most every
    /// 200 ms unless `force`).
    pub(super) fn publish_status(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now.duration_since(self.last_status) < Duration::from_millis(200) {
            return;
        }
        self.last_status = now;
        let last = self.ingest.tail.last();
        self.status.counters.last_seq.store(last, Ordering::Relaxed);
        let wall = crate::hlc::wall_ms();
        for idx in 0..self.peers.len() {
            let acked = self.peers[idx]
                .conn
                .and_then(|t| self.conns.get(&t))
                .filter(|c| matches!(c.phase, Phase::Streaming))
                .map(|c| c.acked)
                .or_else(|| {
                    let id = &self.peers[idx].node_id;
                    (!id.is_empty()).then(|| self.journal.acked(id).unwrap_or(0))
                })
                .unwrap_or(0);
            let pending = last.saturating_sub(acked);
            let lag_ms = if pending > 0 {
                self.journal
                    .hlc_of(acked + 1)
                    .ok()
                    .flatten()
                    .map_or(0, |h| wall.saturating_sub(crate::hlc::millis(h)))
            } else {
                0
            };
            let (received, snap_received) = self
                .received_from
                .get(&self.peers[idx].node_id)
                .copied()
                .unwrap_or_default();
            self.status.with_peer(idx, |s| {
                s.acked = acked;
                s.pending = pending;
                s.lag_ms = lag_ms;
                s.received = received;
                s.snapshot_received = snap_received;
            });
        }
        self.shared.write_status(&self.status.to_c());
    }
}

/// The next batch frame for a connection of `version`, after sequence
/// `after`, at most `room` changes: with its last sequence and its count;
/// None when nothing follows. From v2 on, the records go out as the
/// journal stores them (encoded once, at ingest).
fn read_batch(
    journal: &crate::journal::Journal,
    version: u16,
    after: u64,
    room: usize,
) -> Result<Option<(crate::wire::Frame, u64, u64)>, crate::error::JournalError> {
    if version < 2 {
        let changes = journal.read_log(after, room)?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(None);
        };
        let n = changes.len() as u64;
        return Ok(Some((
            crate::wire::version::batch(version, changes),
            last,
            n,
        )));
    }
    let rows = journal.read_log_encoded(after, room)?;
    let Some(&(last, _, _)) = rows.last() else {
        return Ok(None);
    };
    let n = rows.len() as u64;
    Ok(Some((crate::wire::version::raw_batch(rows), last, n)))
}

#[cfg(test)]
mod tests {
    use super::read_batch;
    use crate::journal::Journal;
    use crate::record::{Alias, Contact, Op, Record};
    use crate::wire::Frame;

    fn bytes(f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        f.write_to(&mut out).unwrap();
        out
    }

    /// Records sent as the journal stores them make the very frame that
    /// decoding and encoding them again made; v1 still gets a typed batch.
    #[test]
    fn a_batch_from_stored_bytes_is_the_batch_of_the_decoded_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let contact = |aor: &str| Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: b"location".to_vec(),
                aor: aor.as_bytes().to_vec(),
                user_agent: vec![0xff, 0, b'x'],
                cseq: 7,
                ..Default::default()
            },
        };
        let alias = Record::Alias {
            op: Op::Delete,
            alias: Alias {
                table: b"dbaliases".to_vec(),
                ..Default::default()
            },
        };
        let recs = [(10, contact("a")), (11, alias), (12, contact("b"))];
        j.append_local("n1", &recs).unwrap();
        for version in 2..=crate::wire::version::NEWEST {
            let (frame, last, n) = read_batch(&j, version, 1, 10).unwrap().unwrap();
            assert_eq!((last, n), (3, 2));
            assert!(matches!(frame, Frame::RawBatch { .. }));
            let typed = crate::wire::version::batch(version, j.read_log(1, 10).unwrap());
            assert_eq!(bytes(&frame), bytes(&typed), "v{version}");
        }
        let (frame, last, _) = read_batch(&j, 1, 0, 10).unwrap().unwrap();
        assert_eq!(last, 3);
        assert!(matches!(frame, Frame::Batch { .. }));
        assert!(read_batch(&j, 2, 3, 10).unwrap().is_none());
    }
}
