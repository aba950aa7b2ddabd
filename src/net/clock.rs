//! The bound on clock skew: what a peer stamps may be at most
//! `max_clock_skew` ahead of this node's wall clock, and never 2^63 or
//! more (stored signed, such a stamp reads negative). Without the bound a
//! node whose clock runs ahead wins every conflict within its skew, and
//! one stamp from the far future drags every clock it reaches along
//! (hybrid logical clocks take the maximum) and stops trimming.
//!
//! A batch with such a stamp is refused whole with a TempFail naming the
//! change and the distance: nothing of it is staged, the origin keeps it
//! in its journal and sends it again after its backoff (once its clock is
//! back within the bound, or ours has caught up, it goes through). Later
//! batches already in flight on that link are refused with it, so nothing
//! is staged past the refused one. Other origins' links are not held up.
//! Each refusal is counted and its reason kept for `sersync.status` on
//! both sides (this side here, the origin's in [`Net::note_refused_by_peer`]).

use std::sync::atomic::Ordering;

use crate::hlc;
use crate::log::{self, RateLimit};
use crate::record::SnapRow;

use super::Net;

static CLOCK_REFUSED: RateLimit = RateLimit::new(1000);

/// What a TempFail for skew starts with: the origin recognises it.
pub(super) const SKEW_REASON: &str = "clock skew: ";

/// Why a stamp is not taken from a peer at wall time `wall_ms`, if it
/// is not: at or above 2^63, or more than `bound_ms` ahead.
pub fn stamp_refusal(stamp: u64, wall_ms: u64, bound_ms: u64) -> Option<String> {
    if stamp >> 63 != 0 {
        return Some(format!("stamp {stamp:#x} is not a valid version (>= 2^63)"));
    }
    let ahead = hlc::millis(stamp).saturating_sub(wall_ms);
    (ahead > bound_ms).then(|| {
        format!("stamped {ahead} ms ahead of this node's clock (max_clock_skew {bound_ms} ms)")
    })
}

impl Net {
    /// The bound in milliseconds.
    fn skew_bound_ms(&self) -> u64 {
        self.cfg.max_clock_skew.as_millis() as u64
    }

    /// Checks a live batch from `origin` before anything of it is staged:
    /// the TempFail reason when it is refused (see the module doc).
    /// `stamps`: (sequence, stamp) of its changes.
    pub(super) fn clock_refuses_batch(
        &mut self,
        origin: &str,
        stamps: &[(u64, u64)],
        through: u64,
    ) -> Option<String> {
        let first = stamps.iter().map(|s| s.0).min().unwrap_or(through);
        // A successor of a refused batch, sent before our refusal reached
        // the origin: staging it would put the position past the refused
        // changes. The resend starts at or before the refused one.
        if let Some(&(from, ref why)) = self.skew_hold.get(origin) {
            if first > from {
                return Some(why.clone());
            }
        }
        let wall = hlc::wall_ms();
        let bound = self.skew_bound_ms();
        let Some((seq, why)) = stamps
            .iter()
            .find_map(|&(seq, hlc)| stamp_refusal(hlc, wall, bound).map(|why| (seq, why)))
        else {
            self.skew_hold.remove(origin);
            return None;
        };
        let reason = format!(
            "{SKEW_REASON}change {seq} from {origin} {why}: batch refused, the origin resends it"
        );
        self.clock_refused(&reason);
        self.skew_hold
            .insert(origin.to_string(), (first, reason.clone()));
        Some(reason)
    }

    /// Checks rows a snapshot or a check brought from `origin`: the reason
    /// when one of them is out of bound (the whole lot is refused).
    pub(super) fn clock_refuses_rows(&mut self, origin: &str, rows: &[SnapRow]) -> Option<String> {
        let wall = hlc::wall_ms();
        let bound = self.skew_bound_ms();
        let why = rows
            .iter()
            .find_map(|r| stamp_refusal(r.hlc, wall, bound))?;
        let reason = format!("{SKEW_REASON}a row from {origin} {why}: rows refused");
        self.clock_refused(&reason);
        Some(reason)
    }

    fn clock_refused(&self, reason: &str) {
        self.status
            .counters
            .clock_refused
            .fetch_add(1, Ordering::Relaxed);
        *self
            .status
            .clock_last_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = reason.to_string();
        if let Some(skipped) = CLOCK_REFUSED.allow() {
            log::error(format_args!(
                "{reason}; check NTP on both nodes ({skipped} similar suppressed)"
            ));
        }
    }

    /// A peer refused one of our batches (TempFail): counted and kept for
    /// the status when it was for clock skew.
    pub(super) fn note_refused_by_peer(&self, peer_id: &str, reason: &str) {
        if !reason.starts_with(SKEW_REASON) {
            return;
        }
        self.status
            .counters
            .clock_refused_by_peers
            .fetch_add(1, Ordering::Relaxed);
        let text = format!("refused by {peer_id}: {reason}");
        if let Some(skipped) = CLOCK_REFUSED.allow() {
            log::error(format_args!(
                "{text}; this node's clock may be ahead: check NTP ({skipped} similar suppressed)"
            ));
        }
        *self
            .status
            .clock_last_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = text;
    }
}

#[cfg(test)]
mod tests {
    use super::stamp_refusal;

    #[test]
    fn stamps_beyond_the_bound_or_2_63_are_refused() {
        let wall = 1_700_000_000_000u64;
        let at = |ms: u64| ms << 16;
        assert_eq!(stamp_refusal(at(wall), wall, 5000), None);
        assert_eq!(stamp_refusal(at(wall + 5000) | 0xffff, wall, 5000), None);
        assert_eq!(stamp_refusal(at(wall - 3_600_000), wall, 5000), None);
        let why = stamp_refusal(at(wall + 5001), wall, 5000).expect("refused");
        assert!(why.contains("5001 ms ahead"), "{why}");
        let why = stamp_refusal(1 << 63, wall, u64::MAX >> 20).expect("refused");
        assert!(why.contains("2^63"), "{why}");
        assert!(stamp_refusal(u64::MAX, wall, 5000).is_some());
    }
}
