//! The receiver's side: staging a peer's batches durably in the journal
//! before acknowledging them.

use std::sync::atomic::Ordering;

use mio::Token;

use super::conn::Verdict;
use super::{Net, STAGE_ERR};
use crate::journal::Incoming;
use crate::log;
use crate::log::RateLimit;
use crate::record::SnapRow;
use crate::wire::{Frame, RawChange};

static SET_ASIDE: RateLimit = RateLimit::new(1000);

impl Net {
    /// A v2 batch: each record decoded on its own, in place, and staged
    /// as received (see [`Incoming::from_encoded`]); one this node cannot
    /// decode is set aside with an error naming it, and the rest staged.
    pub(super) fn receive_raw_batch(
        &mut self,
        t: Token,
        origin: &str,
        changes: Vec<RawChange>,
    ) -> Verdict {
        let through = changes.iter().map(|c| c.seq).max().unwrap_or(0);
        let n = changes.len();
        let mut good = Vec::with_capacity(n);
        let mut set_aside = Vec::new();
        for c in &changes {
            match Incoming::from_encoded(c.seq, c.hlc, &c.record) {
                Ok(i) => good.push(i),
                Err(why) => set_aside.push((c.seq, why)),
            }
        }
        for (seq, why) in &set_aside {
            if let Some(skipped) = SET_ASIDE.allow() {
                log::error(format_args!(
                    "change {seq} from {origin} set aside: cannot decode its record ({why}); \
                     a kind newer than this node knows? It is not applied here \
                     ({skipped} similar suppressed)"
                ));
            }
        }
        if let Some((seq, _)) = set_aside.last() {
            self.status
                .counters
                .set_aside
                .fetch_add(set_aside.len() as u64, Ordering::Relaxed);
            self.status.set_error(&format!(
                "{} of {n} changes from {origin} set aside (last: {seq}): cannot decode their records",
                set_aside.len()
            ));
        }
        self.receive_batch_through(t, origin, &good, through)
    }

    pub(super) fn receive_batch(
        &mut self,
        t: Token,
        origin: &str,
        changes: Vec<crate::record::Change>,
    ) -> Verdict {
        let incoming: Vec<Incoming> = changes.iter().map(Incoming::of).collect();
        self.receive_batch_through(t, origin, &incoming, 0)
    }

    /// Stages `changes`; the position held from `origin` becomes at least
    /// `through` (changes up to it that were set aside do not come again).
    fn receive_batch_through(
        &mut self,
        t: Token,
        origin: &str,
        changes: &[Incoming],
        through: u64,
    ) -> Verdict {
        // Stamps beyond the bound on clock skew: nothing staged (clock.rs).
        let stamps: Vec<(u64, u64)> = changes.iter().map(|c| (c.seq, c.hlc)).collect();
        if let Some(reason) = self.clock_refuses_batch(origin, &stamps, through) {
            let upto = self.journal.received_upto(origin).unwrap_or(0);
            if let Some(c) = self.conns.get_mut(&t) {
                c.send(&Frame::TempFail { upto, reason });
            }
            return Verdict::Continue;
        }
        if let Some(max) = changes.iter().map(|c| c.hlc).max() {
            self.shared.observe(max);
        }
        let n = changes.len() as u64;
        let reply = match self.journal.stage_incoming(origin, changes, through) {
            Ok(out) => {
                if out.fresh > out.superseded {
                    self.status
                        .counters
                        .apply_pending
                        .fetch_add((out.fresh - out.superseded) as u64, Ordering::Relaxed);
                    let _ = self.apply_notify.try_send(());
                }
                Frame::Ack { upto: out.upto }
            }
            Err(e) => {
                if let Some(skipped) = STAGE_ERR.allow() {
                    log::error(format_args!(
                        "cannot stage changes from {origin}: {e} ({skipped} similar suppressed)"
                    ));
                }
                self.status.set_error(&format!("staging: {e}"));
                let upto = self.journal.received_upto(origin).unwrap_or(0);
                Frame::TempFail {
                    upto,
                    reason: "journal write failed on receiver".into(),
                }
            }
        };
        self.received_from.entry(origin.to_string()).or_default().0 += n;
        if let Some(c) = self.conns.get_mut(&t) {
            c.send(&reply);
        }
        Verdict::Continue
    }

    pub(super) fn on_snapshot_chunk(
        &mut self,
        t: Token,
        upto: u64,
        chunk: u64,
        rows: Vec<SnapRow>,
        last: bool,
    ) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let origin = c.remote_id.clone();
        if let Some(reason) = self.clock_refuses_rows(&origin, &rows) {
            return Verdict::Close(reason);
        }
        if let Some(max) = rows.iter().map(|r| r.hlc).max() {
            self.shared.observe(max);
        }
        let nrows = rows.len() as u64;
        match self.journal.stage_snapshot(&origin, upto, &rows, last) {
            Ok(out) => {
                self.received_from.entry(origin.clone()).or_default().1 += nrows;
                if out.fresh > out.superseded {
                    let n = (out.fresh - out.superseded) as u64;
                    self.status
                        .counters
                        .apply_pending
                        .fetch_add(n, Ordering::Relaxed);
                    let _ = self.apply_notify.try_send(());
                }
                if last {
                    log::info(format_args!(
                        "snapshot from {origin} complete at its sequence {upto}"
                    ));
                } else if chunk % 50 == 0 {
                    log::info(format_args!(
                        "snapshot from {origin}: {} chunks staged",
                        chunk + 1
                    ));
                }
                let c = self.conns.get_mut(&t).expect("still open");
                c.send(&Frame::SnapshotAck { chunk });
                Verdict::Continue
            }
            // The sender resumes after the last chunk staged.
            Err(e) => Verdict::Close(format!("cannot stage snapshot from {origin}: {e}")),
        }
    }
}
