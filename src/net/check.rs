//! The peer check: proof that a peer's state equals this node's, and the
//! repair of what differs (issue 12). "Equal" is [`crate::digest`]'s.
//!
//! Every `peer_check_interval`, on each dialed v3 link:
//! 1. dialer → `CheckDigest`: its state digest at unix time `at` (256
//!    ranges, 3 KiB);
//! 2. acceptor: its own digest at the same `at` (so clocks and contacts
//!    expiring meanwhile cannot make a difference), the ranges that
//!    differ, a bounded part of them ([`MAX_RANGES`], [`MAX_VERSIONS`];
//!    rounds start at a different differing range each time), and →
//!    `CheckVersions`: for each version it holds there (comparable
//!    contacts and tombstones) the key's hash, stamp, origin and whether
//!    it is present: 19 bytes a version;
//! 3. dialer: compares key by key with its own versions there. A key
//!    counts as divergent when one side holds a present version the other
//!    lacks or holds older (a tombstone the other lacks is no difference:
//!    both hold nothing). → `CheckRows`: its newer versions (at most
//!    [`MAX_ROWS`]) and the key hashes of the acceptor's newer ones;
//! 4. acceptor stages the rows and → `CheckRows` with the versions asked
//!    for; the dialer stages them.
//!
//! Staging is the inbox's, last writer wins on (stamp, origin): a row
//! older than what a side holds changes nothing, so a race with live
//! replication, or a lying peer, can only cost work, never put an older
//! version back. A version changed within [`IN_FLIGHT_MS`] is on its way
//! by the live stream and is not counted as a divergence.
//!
//! Bounds: a node answers at most one `CheckDigest` per link per half of
//! its own interval, takes the rows of a check once, and takes frames
//! only for the check in progress; every list is bounded; anything else
//! is ignored and counted (`peer_check_ignored`), never an error of the
//! link. So a peer that claims differences forever costs, per interval,
//! two scans of the state, one comparison and at most [`MAX_ROWS`] rows
//! staged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::Token;

use super::conn::{Phase, Side, Verdict};
use super::resync::{is_resync, Round, ANSWER_GAP};
use super::Net;
use crate::codec;
use crate::digest::{Digest, RANGES};
use crate::log::{self, RateLimit};
use crate::record::{Record, SnapRow};
use crate::wire::{key_hash, Frame, KeyVersion, RawSnapRow};

/// Differing ranges compared key by key in one check: all of them, so
/// that a state of up to [`MAX_VERSIONS`] / 2 contacts is compared whole
/// in one check whatever differs.
pub(super) const MAX_RANGES: usize = RANGES;
/// Versions one `CheckVersions` carries at most (about 1.9 MB).
pub(super) const MAX_VERSIONS: usize = 100_000;
/// Rows one `CheckRows` carries at most, and key hashes it asks for.
pub(super) const MAX_ROWS: usize = 2_000;
/// A check whose `at` is further than this from this node's clock is
/// not answered (it would compare contacts that expired, or none).
const MAX_SKEW_S: i64 = 600;
/// A dialed peer further behind this node's journal than this is not
/// checked (one batch).
const CATCHING_UP: u64 = super::BATCH_RECORDS as u64;
/// A version this recent is still travelling by the live stream.
const IN_FLIGHT_MS: u64 = 5_000;

static IGNORED: RateLimit = RateLimit::new(60_000);

/// Dialer side: the check in progress on a link.
pub(super) struct CheckOut {
    pub(super) check: u64,
    pub(super) at: i64,
    /// Key hashes asked for, once the versions were compared.
    pub(super) wanted: Option<HashSet<u64>>,
    /// A resync's round waiting for those rows: what it found so far.
    pub(super) round: Option<Round>,
}

/// Acceptor side: the check answered last on a link.
pub(super) struct CheckIn {
    pub(super) check: u64,
    pub(super) at: i64,
    pub(super) ranges: Vec<usize>,
}

fn unix_now() -> i64 {
    (crate::hlc::wall_ms() / 1000) as i64
}

fn raw(row: &SnapRow) -> RawSnapRow {
    let mut record = Vec::with_capacity(256);
    codec::encode_into(&row.record, &mut record).expect("encoding into a Vec cannot fail");
    RawSnapRow {
        origin: row.origin.clone(),
        hlc: row.hlc,
        record,
    }
}

/// The rows of `rows` that decode to records `keep` accepts.
fn contacts(rows: Vec<RawSnapRow>, keep: impl Fn(&Record) -> bool) -> Vec<SnapRow> {
    rows.into_iter()
        .filter_map(|r| {
            let record: Record = codec::decode(&r.record).ok()?;
            keep(&record).then_some(SnapRow {
                origin: r.origin,
                hlc: r.hlc,
                record,
            })
        })
        .collect()
}

/// The ranges a check compares among `differing`: from the one `check`
/// picks, as many as the bounds allow with `mine`'s counts (versions this
/// node will list; tombstones come on top, hence half the bound).
fn pick_ranges(differing: &[usize], mine: &Digest, check: u64) -> Vec<usize> {
    let mut out = Vec::new();
    if differing.is_empty() {
        return out;
    }
    let start = (check % differing.len() as u64) as usize;
    let mut listed = 0usize;
    for i in 0..differing.len() {
        let r = differing[(start + i) % differing.len()];
        let n = mine.counts[r] as usize;
        if out.len() >= MAX_RANGES || listed + n > MAX_VERSIONS / 2 {
            break;
        }
        listed += n;
        out.push(r);
    }
    out.sort_unstable();
    out
}

impl Net {
    /// Starts a check on every dialed v3 link, every interval.
    pub(super) fn start_checks(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_check) < self.cfg.peer_check_interval {
            return;
        }
        self.last_check = now;
        let last = self.ingest.tail.last();
        let links: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                // A peer catching up (a snapshot, or more than a batch
                // behind) is checked once it has: until then the stream
                // brings what a check would find.
                matches!(c.side, Side::Dial { .. })
                    && matches!(c.phase, Phase::Streaming)
                    && c.version >= 3
                    && c.snap.is_none()
                    && last.saturating_sub(c.acked) <= CATCHING_UP
                    && !c.check_out.as_ref().is_some_and(|o| is_resync(o.check))
            })
            .map(|(t, _)| *t)
            .collect();
        if links.is_empty() {
            return;
        }
        let at = unix_now();
        let digest = match self.journal.state_digest(at) {
            Ok(d) => d,
            Err(e) => {
                log::error(format_args!("peer check: cannot read the state: {e}"));
                return;
            }
        };
        for t in links {
            self.next_check += 1;
            let check = self.next_check;
            let Some(c) = self.conns.get_mut(&t) else {
                continue;
            };
            c.check_out = Some(CheckOut {
                check,
                at,
                wanted: None,
                round: None,
            });
            c.send(&Frame::CheckDigest {
                check,
                at,
                digest: digest.clone(),
            });
            self.flush(t);
        }
    }

    fn check_ignored(&self, from: &str, why: &str) -> Verdict {
        self.status
            .counters
            .peer_check_ignored
            .fetch_add(1, Ordering::Relaxed);
        if let Some(n) = IGNORED.allow() {
            log::warn(format_args!(
                "peer check: ignored a frame from {from}: {why} ({n} similar suppressed)"
            ));
        }
        Verdict::Continue
    }

    /// Acceptor: a peer's digest; answers with the versions this node
    /// holds in (a bounded part of) the ranges that differ.
    pub(super) fn on_check_digest(
        &mut self,
        t: Token,
        check: u64,
        at: i64,
        digest: Digest,
    ) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let from = c.remote_id.clone();
        let now = Instant::now();
        // A resync's checks are answered apart, as often as its rounds
        // go (net::resync).
        let resync = is_resync(check);
        let (last, gap) = if resync {
            (c.resync_in_last, ANSWER_GAP)
        } else {
            (c.check_in_last, self.cfg.peer_check_interval / 2)
        };
        if last.is_some_and(|l| now.duration_since(l) < gap) {
            return self.check_ignored(
                &from,
                if resync {
                    "resync checks more often than their rounds go"
                } else {
                    "checks more often than every half interval"
                },
            );
        }
        if digest.counts.len() != RANGES || digest.sums.len() != RANGES {
            return self.check_ignored(&from, "a digest without 256 ranges");
        }
        if (at - unix_now()).abs() > MAX_SKEW_S {
            return self.check_ignored(&from, "a check time far from this node's clock");
        }
        if resync {
            c.resync_in_last = Some(now);
        } else {
            c.check_in_last = Some(now);
        }
        c.check_in = None;
        let mine = match self.journal.state_digest(at) {
            Ok(d) => d,
            Err(e) => {
                log::error(format_args!("peer check: cannot read the state: {e}"));
                return Verdict::Continue;
            }
        };
        let differing = mine.differing(&digest);
        let mut ranges = pick_ranges(&differing, &mine, check);
        let rows = if ranges.is_empty() {
            Ok(Vec::new())
        } else {
            self.journal.check_versions_in_ranges(&ranges, at)
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                log::error(format_args!("peer check: cannot read the state: {e}"));
                return Verdict::Continue;
            }
        };
        // Tombstones may push the list past its bound: drop whole ranges.
        let mut per_range: HashMap<usize, usize> = HashMap::new();
        for r in &rows {
            *per_range
                .entry(crate::digest::record_range(&r.record))
                .or_default() += 1;
        }
        while ranges
            .iter()
            .map(|r| per_range.get(r).unwrap_or(&0))
            .sum::<usize>()
            > MAX_VERSIONS
        {
            ranges.pop();
        }
        let mut origins: Vec<String> = Vec::new();
        let mut index: HashMap<String, u16> = HashMap::new();
        let mut versions = Vec::with_capacity(rows.len());
        for row in &rows {
            if ranges
                .binary_search(&crate::digest::record_range(&row.record))
                .is_err()
            {
                continue;
            }
            let origin = match index.get(&row.origin) {
                Some(i) => *i,
                None => {
                    let i = origins.len() as u16;
                    origins.push(row.origin.clone());
                    index.insert(row.origin.clone(), i);
                    i
                }
            };
            versions.push(KeyVersion {
                key: key_hash(&row.record.key()),
                hlc: row.hlc,
                origin,
                live: !row.record.is_delete(),
            });
        }
        let c = self.conns.get_mut(&t).expect("still open");
        c.send(&Frame::CheckVersions {
            check,
            differing: differing.len() as u16,
            ranges: ranges.iter().map(|r| *r as u16).collect(),
            origins,
            versions,
        });
        if !ranges.is_empty() {
            c.check_in = Some(CheckIn { check, at, ranges });
        }
        Verdict::Continue
    }

    /// Dialer: the peer's versions in the ranges that differ; compares
    /// them with this node's, sends what the peer lacks or holds older
    /// and asks for what this node does.
    pub(super) fn on_check_versions(
        &mut self,
        t: Token,
        check: u64,
        differing: u16,
        ranges: Vec<u16>,
        origins: Vec<String>,
        versions: Vec<KeyVersion>,
    ) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let from = c.remote_id.clone();
        let Some(out) = c
            .check_out
            .as_ref()
            .filter(|o| o.check == check && o.wanted.is_none())
        else {
            return self.check_ignored(&from, "versions for no check in progress");
        };
        let at = out.at;
        c.check_out = None;
        let mut ranges: Vec<usize> = ranges.into_iter().map(usize::from).collect();
        ranges.sort_unstable();
        ranges.dedup();
        if ranges.len() > MAX_RANGES
            || ranges.last().is_some_and(|r| *r >= RANGES)
            || versions.len() > MAX_VERSIONS
            || origins.len() > versions.len()
            || versions.iter().any(|v| v.origin as usize >= origins.len())
        {
            return self.check_ignored(&from, "versions out of bounds");
        }
        let counters = &self.status.counters;
        counters.peer_checks.fetch_add(1, Ordering::Relaxed);
        counters
            .peer_check_ranges
            .fetch_add(ranges.len() as u64, Ordering::Relaxed);
        let differing = u64::from(differing);
        let compared = ranges.len() as u64;
        let more = differing > compared;
        if ranges.is_empty() {
            if is_resync(check) {
                self.resync_round_over(
                    check,
                    Round {
                        differing,
                        compared,
                        found: 0,
                        exchanged: 0,
                        more,
                    },
                );
            }
            return Verdict::Continue;
        }
        let mine = match self.journal.check_versions_in_ranges(&ranges, at) {
            Ok(r) => r,
            Err(e) => {
                log::error(format_args!("peer check: cannot read the state: {e}"));
                return Verdict::Continue;
            }
        };
        let mut theirs: HashMap<u64, &KeyVersion> = versions.iter().map(|v| (v.key, v)).collect();
        let recent = (crate::hlc::wall_ms().saturating_sub(IN_FLIGHT_MS)) << 16;
        let mut send = Vec::new();
        let mut want = Vec::new();
        for row in &mine {
            let key = key_hash(&row.record.key());
            let live = !row.record.is_delete();
            match theirs.remove(&key) {
                None if live && row.hlc < recent => send.push(row),
                None => {}
                Some(v) if !(live || v.live) => {}
                Some(v) => {
                    let theirs_ = (v.hlc, origins[v.origin as usize].as_str());
                    let mine_ = (row.hlc, row.origin.as_str());
                    if mine_ > theirs_ && row.hlc < recent {
                        send.push(row);
                    } else if theirs_ > mine_ && v.hlc < recent {
                        want.push(key);
                    }
                }
            }
        }
        want.extend(
            theirs
                .values()
                .filter(|v| v.live && v.hlc < recent)
                .map(|v| v.key),
        );
        let found = send.len() + want.len();
        self.status
            .counters
            .peer_check_divergences
            .fetch_add(found as u64, Ordering::Relaxed);
        if found == 0 {
            if is_resync(check) {
                self.resync_round_over(
                    check,
                    Round {
                        differing,
                        compared,
                        found: 0,
                        exchanged: 0,
                        more,
                    },
                );
            }
            return Verdict::Continue;
        }
        log::info(format_args!(
            "peer check with {from}: {differing} of {RANGES} ranges differ, {} compared: \
             {found} keys differ; sending {} versions, asking for {}",
            ranges.len(),
            send.len().min(MAX_ROWS),
            want.len().min(MAX_ROWS)
        ));
        let more = more || send.len() > MAX_ROWS || want.len() > MAX_ROWS;
        send.truncate(MAX_ROWS);
        want.truncate(MAX_ROWS);
        let round = Round {
            differing,
            compared,
            found: found as u64,
            exchanged: send.len() as u64,
            more,
        };
        let rows = send.into_iter().map(raw).collect();
        let c = self.conns.get_mut(&t).expect("still open");
        let waiting = !want.is_empty();
        if waiting {
            c.check_out = Some(CheckOut {
                check,
                at,
                wanted: Some(want.iter().copied().collect()),
                round: is_resync(check).then_some(round),
            });
        }
        c.send(&Frame::CheckRows { check, rows, want });
        if !waiting && is_resync(check) {
            self.resync_round_over(check, round);
        }
        Verdict::Continue
    }

    /// Either side: versions the peer sends for the check in progress
    /// (and, to the acceptor, the keys the dialer asks for).
    pub(super) fn on_check_rows(
        &mut self,
        t: Token,
        check: u64,
        rows: Vec<RawSnapRow>,
        want: Vec<u64>,
    ) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        let from = c.remote_id.clone();
        if rows.len() > MAX_ROWS || want.len() > MAX_ROWS {
            c.check_out = None;
            c.check_in = None;
            return self.check_ignored(&from, "rows out of bounds");
        }
        match c.side {
            Side::Dial { .. } => {
                let Some((wanted, round)) = c
                    .check_out
                    .take_if(|o| o.check == check)
                    .and_then(|o| o.wanted.map(|w| (w, o.round)))
                else {
                    return self.check_ignored(&from, "rows for no check in progress");
                };
                let rows = contacts(rows, |r| wanted.contains(&key_hash(&r.key())));
                let staged = self.stage_check_rows(&from, &rows);
                if let Some(mut round) = round {
                    round.exchanged += staged;
                    self.resync_round_over(check, round);
                }
            }
            Side::Accept => {
                let Some(inn) = c.check_in.take_if(|i| i.check == check) else {
                    return self.check_ignored(&from, "rows for no check in progress");
                };
                let ranges = &inn.ranges;
                let rows = contacts(rows, |r| {
                    ranges
                        .binary_search(&crate::digest::record_range(r))
                        .is_ok()
                });
                self.stage_check_rows(&from, &rows);
                if want.is_empty() {
                    return Verdict::Continue;
                }
                let want: HashSet<u64> = want.into_iter().collect();
                let mine = match self.journal.check_versions_in_ranges(ranges, inn.at) {
                    Ok(r) => r,
                    Err(e) => {
                        log::error(format_args!("peer check: cannot read the state: {e}"));
                        return Verdict::Continue;
                    }
                };
                let rows: Vec<RawSnapRow> = mine
                    .iter()
                    .filter(|r| want.contains(&key_hash(&r.record.key())))
                    .take(MAX_ROWS)
                    .map(raw)
                    .collect();
                if let Some(c) = self.conns.get_mut(&t) {
                    c.send(&Frame::CheckRows {
                        check,
                        rows,
                        want: Vec::new(),
                    });
                }
            }
        }
        Verdict::Continue
    }

    /// Stages versions a check brought from `from`: each goes in where it
    /// is newer than the state's version of its key.
    /// Returns how many were staged.
    fn stage_check_rows(&mut self, from: &str, rows: &[SnapRow]) -> u64 {
        if rows.is_empty() || self.clock_refuses_rows(from, rows).is_some() {
            return 0;
        }
        if let Some(max) = rows.iter().map(|r| r.hlc).max() {
            self.shared.observe(max);
        }
        match self.journal.stage_repair(rows) {
            Ok(out) => {
                let n = (out.fresh - out.superseded) as u64;
                if n > 0 {
                    let counters = &self.status.counters;
                    counters.apply_pending.fetch_add(n, Ordering::Relaxed);
                    counters.peer_check_repaired.fetch_add(n, Ordering::Relaxed);
                    let _ = self.apply_notify.try_send(());
                    log::info(format_args!(
                        "peer check with {from}: staged {n} versions this node lacked or held older"
                    ));
                }
                n
            }
            Err(e) => {
                log::error(format_args!(
                    "peer check: cannot stage versions from {from}: {e} (the next check repairs them)"
                ));
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_picked_within_bounds_and_rotate() {
        let mut mine = Digest::default();
        for r in 0..RANGES {
            mine.counts[r] = 1000;
        }
        let all: Vec<usize> = (0..RANGES).collect();
        let a = pick_ranges(&all, &mine, 0);
        assert_eq!(a.len(), MAX_VERSIONS / 2 / 1000);
        let b = pick_ranges(&all, &mine, 100);
        assert_ne!(a, b, "another check starts elsewhere");
        mine.counts = vec![0; RANGES];
        assert_eq!(pick_ranges(&all, &mine, 7).len(), MAX_RANGES);
        assert_eq!(pick_ranges(&[3, 9], &mine, 7), vec![3, 9]);
        assert!(pick_ranges(&[], &mine, 7).is_empty());
    }
}
