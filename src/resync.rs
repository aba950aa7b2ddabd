//! `sersync.resync`: an operator's full comparison, now, of this node's
//! state with one peer's (or every peer's) and then of SER's usrloc with
//! the state, repairing what differs. No machinery of its own: the peer
//! half is the peer check's ([`crate::net`]'s `check.rs`) started at once
//! on the named links, in rounds until a round finds the whole state
//! compared; the SER half is [`crate::proof`]'s check, asked for at once.
//!
//! Who does what: an RPC process claims the resync in the shared region
//! (`Shared::resync_claim`: one at a time, in any process) and queues it;
//! the ingest hands it to the network thread, which runs the peer rounds
//! and then asks the applier for the SER half; the applier ends it and
//! releases the claim. This struct is what they report, for
//! `sersync.status`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// None since start.
    #[default]
    None,
    /// Comparing the state with peers.
    Peers,
    /// Comparing SER's usrloc with the state.
    Ser,
    Done,
    Failed,
}

/// The latest resync's progress (see `struct sersync_status`).
#[derive(Clone, Debug, Default)]
pub struct View {
    pub phase: Phase,
    /// The peer asked for; empty: every peer.
    pub peer: String,
    pub peers_total: u32,
    pub peers_done: u32,
    pub started: i64,
    pub finished: i64,
    pub ranges_differing: u64,
    pub ranges_compared: u64,
    pub divergences: u64,
    pub repaired: u64,
    /// Resyncs over since start.
    pub resyncs: u64,
    /// What each peer's comparison came to, "; "-separated, then SER's.
    pub result: String,
    /// The SER check's counters when its half began (divergences,
    /// repaired): its share is what they grew by.
    ser_base: (u64, u64),
}

#[derive(Default, Debug)]
pub struct Resync {
    view: Mutex<View>,
    /// The network thread asks the applier for the SER half.
    ser_asked: AtomicBool,
}

fn unix_now() -> i64 {
    (crate::hlc::wall_ms() / 1000) as i64
}

impl Resync {
    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn view(&self) -> View {
        self.lock().clone()
    }

    /// A resync with `peer` (empty: all) over `total` peers begins.
    pub fn begin(&self, peer: &str, total: u32) {
        let mut v = self.lock();
        *v = View {
            phase: Phase::Peers,
            peer: peer.to_string(),
            peers_total: total,
            started: unix_now(),
            resyncs: v.resyncs,
            ..View::default()
        };
    }

    /// Updates the progress of the peer half.
    pub fn update(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.lock());
    }

    /// One peer's comparison is over: `outcome` says how.
    pub fn peer_done(&self, node_id: &str, outcome: &str) {
        let mut v = self.lock();
        v.peers_done += 1;
        if !v.result.is_empty() {
            v.result.push_str("; ");
        }
        v.result.push_str(&format!("{node_id}: {outcome}"));
    }

    /// The peer half is over: the applier's SER half is next; its
    /// counters (divergences, repaired) are `base` now.
    pub fn ask_ser(&self, base: (u64, u64)) {
        {
            let mut v = self.lock();
            v.phase = Phase::Ser;
            v.ser_base = base;
        }
        self.ser_asked.store(true, Ordering::Release);
    }

    /// For the applier: is the SER half asked for? Clears the request.
    pub fn take_ser_request(&self) -> bool {
        self.ser_asked.swap(false, Ordering::AcqRel)
    }

    /// The SER half is over: `counters` (divergences, repaired) as they
    /// are now; `error` why SER could not be compared. The resync is
    /// over.
    pub fn finish(&self, counters: (u64, u64), error: Option<&str>) {
        let mut v = self.lock();
        let (d, r) = (
            counters.0.saturating_sub(v.ser_base.0),
            counters.1.saturating_sub(v.ser_base.1),
        );
        v.divergences += d;
        v.repaired += r;
        if !v.result.is_empty() {
            v.result.push_str("; ");
        }
        let outcome = match (error, d) {
            (Some(e), _) => e.to_string(),
            (None, 0) => "equal".to_string(),
            (None, d) => format!("{d} contacts or aliases differed, {r} repaired"),
        };
        v.result.push_str(&format!("SER: {outcome}"));
        v.phase = Phase::Done;
        v.finished = unix_now();
        v.resyncs += 1;
    }

    /// Over without any comparison (`why`).
    pub fn fail(&self, why: &str) {
        let mut v = self.lock();
        v.phase = Phase::Failed;
        v.result = why.to_string();
        v.finished = unix_now();
        v.resyncs += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_reports_each_peer_then_ser_and_counts_sers_share_only() {
        let r = Resync::default();
        r.begin("", 2);
        assert_eq!(r.view().phase, Phase::Peers);
        r.update(|v| {
            v.divergences += 3;
            v.repaired += 3;
        });
        r.peer_done("n2", "3 keys differed, 3 versions exchanged");
        r.peer_done("n3", "not connected");
        assert!(!r.take_ser_request());
        r.ask_ser((10, 8));
        assert!(r.take_ser_request());
        assert!(!r.take_ser_request(), "one request, taken once");
        assert_eq!(r.view().phase, Phase::Ser);
        r.finish((12, 9), None);
        let v = r.view();
        assert_eq!(v.phase, Phase::Done);
        assert_eq!((v.peers_done, v.divergences, v.repaired), (2, 5, 4));
        assert_eq!(v.resyncs, 1);
        assert!(v.result.starts_with("n2: 3 keys"), "{}", v.result);
        assert!(
            v.result
                .ends_with("SER: 2 contacts or aliases differed, 1 repaired"),
            "{}",
            v.result
        );
        r.begin("n2", 1);
        let v = r.view();
        assert_eq!((v.resyncs, v.divergences, v.result.as_str()), (1, 0, ""));
    }
}
