//! What the engine reports: kept in a mutex inside the sersync process and
//! copied into the shared status area (read by the `sersync.status` RPC in
//! whichever SER process serves it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::abi::{
    sersync_peer_state, sersync_peer_status, sersync_quarantined, sersync_resync_state,
    sersync_status, MAX_PEERS, SERSYNC_QUARANTINE_SHOWN,
};
use crate::resync::Phase;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    Down,
    Connecting,
    Up,
    Refused,
}

#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub node_id: String,
    pub address: String,
    pub last_error: String,
    pub state: PeerState,
    pub sent: u64,
    pub acked: u64,
    pub pending: u64,
    pub lag_ms: u64,
    pub received: u64,
    pub snapshot_sent: u64,
    pub snapshot_total: u64,
    pub snapshot_received: u64,
    /// Times our connection to it came up (1 while it never dropped).
    pub connects: u64,
    /// Removed with sersync.forget: no longer reported.
    pub forgotten: bool,
}

impl PeerStatus {
    pub fn new(address: &str) -> Self {
        PeerStatus {
            node_id: String::new(),
            address: address.to_string(),
            last_error: String::new(),
            state: PeerState::Down,
            sent: 0,
            acked: 0,
            pending: 0,
            lag_ms: 0,
            received: 0,
            snapshot_sent: 0,
            snapshot_total: 0,
            snapshot_received: 0,
            connects: 0,
            forgotten: false,
        }
    }
}

/// Counters bumped from several threads without a lock.
#[derive(Default, Debug)]
pub struct Counters {
    pub journaled: AtomicU64,
    pub last_seq: AtomicU64,
    pub applied: AtomicU64,
    pub apply_pending: AtomicU64,
    pub apply_failures: AtomicU64,
    pub applied_via_db: AtomicU64,
    pub journal_entries: AtomicU64,
    /// Remote changes set aside: their records could not be decoded.
    pub set_aside: AtomicU64,
    /// Contacts restored into SER since start, and still to restore.
    pub restored: AtomicU64,
    pub restore_pending: AtomicU64,
    /// Remote changes held in the quarantine now.
    pub quarantined: AtomicU64,
    /// Alias table scans ended by their end marker (refused included;
    /// not those abandoned).
    pub alias_scans: AtomicU64,
    /// Aliases the latest scan deleted, and deletions it refused.
    pub alias_scan_removed: AtomicU64,
    pub alias_scan_refused: AtomicU64,
    /// Peer checks (`net::check`) this node made and completed: digests
    /// compared with a peer's.
    pub peer_checks: AtomicU64,
    /// Ranges compared key by key (their digests differed).
    pub peer_check_ranges: AtomicU64,
    /// Keys whose versions differed there (found by this node's checks).
    pub peer_check_divergences: AtomicU64,
    /// Versions staged here by checks (either side's): rows that were
    /// missing or newer than the state's.
    pub peer_check_repaired: AtomicU64,
    /// Check frames from peers ignored: too frequent, out of bounds, or
    /// answering no check of ours.
    pub peer_check_ignored: AtomicU64,
    /// The check of SER against the journal ([`crate::proof`]): checks
    /// made, ranges compared key by key, differences confirmed, repairs.
    pub checks: AtomicU64,
    pub ranges_compared: AtomicU64,
    pub divergences: AtomicU64,
    pub repaired: AtomicU64,
    /// Batches from peers refused here: stamped beyond max_clock_skew
    /// ahead of this node's clock, or invalid (>= 2^63) ([`crate::net`]'s
    /// clock check).
    pub clock_refused: AtomicU64,
    /// This node's batches a peer refused for the same reason.
    pub clock_refused_by_peers: AtomicU64,
    /// Links refused: two nodes running at once under one node id
    /// ([`crate::net`]'s identity check).
    pub clones_refused: AtomicU64,
    /// Incoming connections closed before they authenticated: refused or
    /// dropped by this node ([`crate::net`]); port probes (closed by the
    /// other side without a byte) are not counted.
    pub preauth_refused: AtomicU64,
}

/// One quarantined change as the status lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuarantineEntry {
    pub id: u64,
    pub origin: String,
    /// 0: not known (snapshot row, restore).
    pub seq: u64,
    pub stamp: u64,
    pub at: i64,
    pub tries: u32,
    pub record: String,
    pub reason: String,
}

/// What the status shows of the quarantine: the reason of the newest
/// change and the oldest few.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuarantineView {
    pub last_reason: String,
    pub oldest: Vec<QuarantineEntry>,
}

#[derive(Default, Debug)]
pub struct Status {
    pub node_id: String,
    pub counters: Counters,
    pub running: std::sync::atomic::AtomicBool,
    /// This run's incarnation (see net::incarnation).
    pub incarnation: AtomicU64,
    pub last_error: Mutex<String>,
    pub peers: Mutex<Vec<PeerStatus>>,
    pub quarantine: Mutex<QuarantineView>,
    /// The latest clock refusal, on either side (empty: none since start).
    pub clock_last_reason: Mutex<String>,
    /// The latest refusal of a clone (empty: none since start).
    pub clone_last_reason: Mutex<String>,
    /// The latest `sersync.resync`'s progress.
    pub resync: crate::resync::Resync,
}

/// A plain copy for tests and logs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub journaled: u64,
    pub last_seq: u64,
    pub applied: u64,
    pub apply_pending: u64,
    pub apply_failures: u64,
    pub applied_via_db: u64,
    pub journal_entries: u64,
    pub set_aside: u64,
    pub restored: u64,
    pub restore_pending: u64,
    pub alias_scans: u64,
    pub alias_scan_removed: u64,
    pub alias_scan_refused: u64,
    pub peer_checks: u64,
    pub peer_check_ranges: u64,
    pub peer_check_divergences: u64,
    pub peer_check_repaired: u64,
    pub peer_check_ignored: u64,
    pub checks: u64,
    pub ranges_compared: u64,
    pub divergences: u64,
    pub repaired: u64,
    pub incarnation: u64,
    pub quarantined: u64,
    pub clock_refused: u64,
    pub clock_refused_by_peers: u64,
    pub clock_last_reason: String,
    pub peers: Vec<PeerStatus>,
    pub clones_refused: u64,
    pub clone_last_reason: String,
    pub preauth_refused: u64,
}

fn copy_cstr(dst: &mut [std::os::raw::c_char], src: &str) {
    let n = src.len().min(dst.len().saturating_sub(1));
    for (d, s) in dst.iter_mut().zip(src.as_bytes()[..n].iter()) {
        *d = *s as std::os::raw::c_char;
    }
    if let Some(end) = dst.get_mut(n) {
        *end = 0;
    }
}

impl Status {
    pub fn new(node_id: &str) -> Self {
        Status {
            node_id: node_id.to_string(),
            ..Default::default()
        }
    }

    pub fn set_clone_reason(&self, msg: &str) {
        *self
            .clone_last_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = msg.to_string();
    }

    pub fn set_error(&self, msg: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = msg.to_string();
    }

    pub fn with_peer<R>(&self, idx: usize, f: impl FnOnce(&mut PeerStatus) -> R) -> Option<R> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get_mut(idx).map(f)
    }

    pub fn snapshot(&self) -> Snapshot {
        let c = &self.counters;
        Snapshot {
            journaled: c.journaled.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            apply_pending: c.apply_pending.load(Ordering::Relaxed),
            apply_failures: c.apply_failures.load(Ordering::Relaxed),
            applied_via_db: c.applied_via_db.load(Ordering::Relaxed),
            journal_entries: c.journal_entries.load(Ordering::Relaxed),
            set_aside: c.set_aside.load(Ordering::Relaxed),
            restored: c.restored.load(Ordering::Relaxed),
            restore_pending: c.restore_pending.load(Ordering::Relaxed),
            alias_scans: c.alias_scans.load(Ordering::SeqCst),
            alias_scan_removed: c.alias_scan_removed.load(Ordering::SeqCst),
            alias_scan_refused: c.alias_scan_refused.load(Ordering::SeqCst),
            peer_checks: c.peer_checks.load(Ordering::Relaxed),
            peer_check_ranges: c.peer_check_ranges.load(Ordering::Relaxed),
            peer_check_divergences: c.peer_check_divergences.load(Ordering::Relaxed),
            peer_check_repaired: c.peer_check_repaired.load(Ordering::Relaxed),
            peer_check_ignored: c.peer_check_ignored.load(Ordering::Relaxed),
            checks: c.checks.load(Ordering::Relaxed),
            ranges_compared: c.ranges_compared.load(Ordering::Relaxed),
            divergences: c.divergences.load(Ordering::Relaxed),
            repaired: c.repaired.load(Ordering::Relaxed),
            incarnation: self.incarnation.load(Ordering::Relaxed),
            quarantined: c.quarantined.load(Ordering::Relaxed),
            clock_refused: c.clock_refused.load(Ordering::Relaxed),
            clock_refused_by_peers: c.clock_refused_by_peers.load(Ordering::Relaxed),
            clock_last_reason: self
                .clock_last_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            peers: self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|p| !p.forgotten)
                .cloned()
                .collect(),
            clones_refused: c.clones_refused.load(Ordering::Relaxed),
            clone_last_reason: self
                .clone_last_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            preauth_refused: c.preauth_refused.load(Ordering::Relaxed),
        }
    }

    /// The C view, as the shared status area holds it.
    pub fn to_c(&self) -> sersync_status {
        let snap = self.snapshot();
        let mut st = sersync_status::default();
        copy_cstr(&mut st.node_id, &self.node_id);
        copy_cstr(
            &mut st.last_error,
            &self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        );
        st.running = self.running.load(Ordering::Relaxed) as i32;
        st.journaled = snap.journaled;
        st.last_seq = snap.last_seq;
        st.applied = snap.applied;
        st.apply_pending = snap.apply_pending;
        st.apply_failures = snap.apply_failures;
        st.applied_via_db = snap.applied_via_db;
        st.journal_entries = snap.journal_entries;
        st.restored = snap.restored;
        st.restore_pending = snap.restore_pending;
        st.set_aside = snap.set_aside;
        st.alias_scans = snap.alias_scans;
        st.alias_scan_removed = snap.alias_scan_removed;
        st.alias_scan_refused = snap.alias_scan_refused;
        st.checks = snap.checks;
        st.ranges_compared = snap.ranges_compared;
        st.divergences = snap.divergences;
        st.repaired = snap.repaired;
        st.peer_checks = snap.peer_checks;
        st.peer_check_ranges = snap.peer_check_ranges;
        st.peer_check_divergences = snap.peer_check_divergences;
        st.peer_check_repaired = snap.peer_check_repaired;
        st.peer_check_ignored = snap.peer_check_ignored;
        st.incarnation = snap.incarnation;
        st.quarantined = snap.quarantined;
        st.clock_refused = snap.clock_refused;
        st.clock_refused_by_peers = snap.clock_refused_by_peers;
        copy_cstr(&mut st.clock_last_reason, &snap.clock_last_reason);
        st.clones_refused = snap.clones_refused;
        copy_cstr(&mut st.clone_last_reason, &snap.clone_last_reason);
        st.preauth_refused = snap.preauth_refused;
        {
            let q = self.quarantine.lock().unwrap_or_else(|p| p.into_inner());
            copy_cstr(&mut st.quarantine_last_reason, &q.last_reason);
            let shown = SERSYNC_QUARANTINE_SHOWN as usize;
            st.nquarantine = q.oldest.len().min(shown) as u32;
            for (dst, e) in st.quarantine.iter_mut().zip(q.oldest.iter()) {
                *dst = sersync_quarantined {
                    id: e.id,
                    seq: e.seq,
                    stamp: e.stamp,
                    at: e.at,
                    tries: e.tries,
                    ..Default::default()
                };
                copy_cstr(&mut dst.origin, &e.origin);
                copy_cstr(&mut dst.record, &e.record);
                copy_cstr(&mut dst.reason, &e.reason);
            }
        }
        let r = self.resync.view();
        st.resync_state = match r.phase {
            Phase::None => sersync_resync_state::SERSYNC_RESYNC_NONE,
            Phase::Peers => sersync_resync_state::SERSYNC_RESYNC_PEERS,
            Phase::Ser => sersync_resync_state::SERSYNC_RESYNC_SER,
            Phase::Done => sersync_resync_state::SERSYNC_RESYNC_DONE,
            Phase::Failed => sersync_resync_state::SERSYNC_RESYNC_FAILED,
        } as i32;
        st.resync_peers_total = r.peers_total;
        st.resync_peers_done = r.peers_done;
        copy_cstr(&mut st.resync_peer, &r.peer);
        st.resync_started = r.started;
        st.resync_finished = r.finished;
        st.resync_ranges_differing = r.ranges_differing;
        st.resync_ranges_compared = r.ranges_compared;
        st.resync_divergences = r.divergences;
        st.resync_repaired = r.repaired;
        st.resyncs = r.resyncs;
        copy_cstr(&mut st.resync_result, &r.result);
        st.npeers = snap.peers.len().min(MAX_PEERS) as u32;
        for (i, p) in snap.peers.iter().take(MAX_PEERS).enumerate() {
            st.peer_connects[i] = p.connects;
        }
        for (dst, p) in st.peers.iter_mut().zip(snap.peers.iter()) {
            *dst = sersync_peer_status::default();
            copy_cstr(&mut dst.node_id, &p.node_id);
            copy_cstr(&mut dst.address, &p.address);
            copy_cstr(&mut dst.last_error, &p.last_error);
            dst.state = match p.state {
                PeerState::Down => sersync_peer_state::SERSYNC_PEER_DOWN,
                PeerState::Connecting => sersync_peer_state::SERSYNC_PEER_CONNECTING,
                PeerState::Up => sersync_peer_state::SERSYNC_PEER_UP,
                PeerState::Refused => sersync_peer_state::SERSYNC_PEER_REFUSED,
            } as i32;
            dst.sent = p.sent;
            dst.acked = p.acked;
            dst.pending = p.pending;
            dst.lag_ms = p.lag_ms;
            dst.received = p.received;
            dst.snapshot_sent = p.snapshot_sent;
            dst.snapshot_total = p.snapshot_total;
            dst.snapshot_received = p.snapshot_received;
        }
        st
    }
}
