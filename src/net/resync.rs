//! The peer half of `sersync.resync` ([`crate::resync`]): the peer check
//! (`check.rs`) started at once on the dialed link to each peer asked
//! for, whatever `peer_check_interval`, and repeated in rounds while a
//! round could not compare or exchange everything that differs (at most
//! [`MAX_ROUNDS`], [`ROUND_GAP`] apart). Then the applier's SER half.
//!
//! A resync's checks carry [`RESYNC_BIT`] in their number, which older
//! releases treat as any check number. An acceptor answers them apart
//! from the periodic ones: at most one per link per [`ANSWER_GAP`] (the
//! bound a peer that marks every check so gets); older releases answer
//! them as periodic checks, so one within half their interval of the
//! last goes unanswered and that peer's part of the resync ends after
//! [`ROUND_TIMEOUT`] (the periodic check still runs).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Token;

use super::check::CheckOut;
use super::conn::{Phase, Side};
use super::Net;
use crate::log;
use crate::wire::Frame;

/// Set in the number of a check a resync started.
pub(super) const RESYNC_BIT: u64 = 1 << 63;
/// Rounds one peer's comparison takes at most.
const MAX_ROUNDS: u32 = 10;
/// Between two resync checks on a link (rounds, or resyncs one after
/// the other).
const ROUND_GAP: Duration = Duration::from_secs(5);
/// An acceptor answers a link's resync checks at most this often: a bit
/// less than [`ROUND_GAP`], for the time they travel.
pub(super) const ANSWER_GAP: Duration = Duration::from_secs(4);
/// A round the peer has not finished by then is given up.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn is_resync(check: u64) -> bool {
    check & RESYNC_BIT != 0
}

/// One peer's comparison.
struct Target {
    node_id: String,
    rounds: u32,
    /// The check in flight and when it is given up.
    inflight: Option<(u64, Instant)>,
    next_at: Instant,
    found: u64,
    exchanged: u64,
    /// The last round left differences for another.
    more: bool,
    done: bool,
}

/// The resync in progress.
pub(super) struct Run {
    targets: Vec<Target>,
    /// The peers are done; the applier runs the SER half.
    ser: bool,
}

/// How a round with a peer ended.
#[derive(Clone, Copy, Debug)]
pub(super) struct Round {
    pub(super) differing: u64,
    pub(super) compared: u64,
    pub(super) found: u64,
    pub(super) exchanged: u64,
    pub(super) more: bool,
}

impl Net {
    /// `sersync.resync node_id` (empty: every peer), from the ingest.
    pub(super) fn start_resync(&mut self, node_id: String) {
        if self.resync.is_some() {
            log::warn(format_args!(
                "resync with {node_id:?} ignored: one is in progress"
            ));
            return;
        }
        let ids: Vec<String> = if node_id.is_empty() {
            self.peers
                .iter()
                .filter(|p| !p.forgotten && !p.node_id.is_empty())
                .map(|p| p.node_id.clone())
                .collect()
        } else {
            vec![node_id.clone()]
        };
        log::info(format_args!(
            "resync asked for: comparing this node's state with {}, then SER's usrloc with the state",
            if node_id.is_empty() {
                format!("every peer ({})", ids.join(", "))
            } else {
                node_id.clone()
            }
        ));
        self.status.resync.begin(&node_id, ids.len() as u32);
        let now = Instant::now();
        self.resync = Some(Run {
            targets: ids
                .into_iter()
                .map(|node_id| Target {
                    node_id,
                    rounds: 0,
                    inflight: None,
                    next_at: now,
                    found: 0,
                    exchanged: 0,
                    more: false,
                    done: false,
                })
                .collect(),
            ser: false,
        });
        self.drive_resync();
    }

    /// The dialed link to `node_id` that can take a check, or why none.
    fn resync_link(&self, node_id: &str) -> Result<Token, String> {
        let Some(t) = self
            .peers
            .iter()
            .find(|p| p.node_id == node_id && !p.forgotten)
            .and_then(|p| p.conn)
        else {
            return Err("not connected".into());
        };
        match self.conns.get(&t) {
            Some(c)
                if matches!(c.side, Side::Dial { .. }) && matches!(c.phase, Phase::Streaming) =>
            {
                if c.version < 3 {
                    Err(format!(
                        "speaks protocol v{}, which has no check",
                        c.version
                    ))
                } else {
                    Ok(t)
                }
            }
            _ => Err("not connected".into()),
        }
    }

    /// Each loop turn: starts the rounds that are due, gives up those that
    /// took too long, hands over to the applier when every peer is done
    /// and releases the claim once the applier ended the resync.
    pub(super) fn drive_resync(&mut self) {
        let Some(mut run) = self.resync.take() else {
            return;
        };
        if run.ser {
            use crate::resync::Phase as P;
            if matches!(self.status.resync.view().phase, P::Done | P::Failed) {
                let v = self.status.resync.view();
                log::info(format_args!(
                    "resync over: {} keys differed, {} versions repaired ({})",
                    v.divergences, v.repaired, v.result
                ));
                self.shared.resync_release();
                return;
            }
            self.resync = Some(run);
            return;
        }
        let now = Instant::now();
        for i in 0..run.targets.len() {
            let target = &run.targets[i];
            if target.done {
                continue;
            }
            let link = self.resync_link(&target.node_id);
            if let Some((check, deadline)) = target.inflight {
                let dropped = !link.as_ref().is_ok_and(|t| {
                    self.conns
                        .get(t)
                        .and_then(|c| c.check_out.as_ref())
                        .is_some_and(|o| o.check == check)
                });
                if dropped || now >= deadline {
                    let why = if dropped {
                        "the comparison broke off (the link dropped, or a bad answer)"
                    } else {
                        "no answer within 30 s (a release before resync answers no \
                         check within half its interval of the last)"
                    };
                    self.target_over(&mut run.targets[i], why);
                }
                continue;
            }
            if now < target.next_at {
                continue;
            }
            // The peer answers one per ANSWER_GAP: wait for it.
            if let Ok(t) = &link {
                if self.conns.get(t).is_some_and(|c| {
                    c.resync_out_last
                        .is_some_and(|l| now.duration_since(l) < ROUND_GAP)
                }) {
                    continue;
                }
            }
            match link {
                Err(why) => self.target_over(&mut run.targets[i], &why),
                Ok(t) => match self.send_resync_check(t) {
                    Ok(check) => {
                        let target = &mut run.targets[i];
                        target.rounds += 1;
                        target.inflight = Some((check, now + ROUND_TIMEOUT));
                    }
                    Err(why) => self.target_over(&mut run.targets[i], &why),
                },
            }
        }
        if run.targets.iter().all(|t| t.done) {
            let c = &self.status.counters;
            self.status.resync.ask_ser((
                c.divergences.load(Ordering::Relaxed),
                c.repaired.load(Ordering::Relaxed),
            ));
            let _ = self.apply_notify.try_send(());
            run.ser = true;
        }
        self.resync = Some(run);
    }

    fn send_resync_check(&mut self, t: Token) -> Result<u64, String> {
        let at = (crate::hlc::wall_ms() / 1000) as i64;
        let digest = self
            .journal
            .state_digest(at)
            .map_err(|e| format!("cannot read the state: {e}"))?;
        self.next_check += 1;
        let check = self.next_check | RESYNC_BIT;
        let c = self.conns.get_mut(&t).ok_or("not connected")?;
        c.resync_out_last = Some(Instant::now());
        c.check_out = Some(CheckOut {
            check,
            at,
            wanted: None,
            round: None,
        });
        c.send(&Frame::CheckDigest { check, at, digest });
        self.flush(t);
        Ok(check)
    }

    fn target_over(&self, target: &mut Target, why: &str) {
        target.done = true;
        target.inflight = None;
        let outcome = if why.is_empty() {
            let mut s = match target.found {
                0 => "equal".to_string(),
                n => format!("{n} keys differed, {} versions exchanged", target.exchanged),
            };
            s.push_str(&format!(
                " ({} round{})",
                target.rounds,
                if target.rounds == 1 { "" } else { "s" }
            ));
            if target.more {
                s.push_str("; more differ: left to the periodic check");
            }
            s
        } else {
            why.to_string()
        };
        log::info(format_args!("resync with {}: {outcome}", target.node_id));
        self.status.resync.peer_done(&target.node_id, &outcome);
    }

    /// `check.rs`: the resync check `check` ended a round as `round`
    /// says.
    pub(super) fn resync_round_over(&mut self, check: u64, round: Round) {
        let Some(mut run) = self.resync.take() else {
            return;
        };
        let Some(i) = run
            .targets
            .iter()
            .position(|t| t.inflight.is_some_and(|(c, _)| c == check))
        else {
            self.resync = Some(run);
            return;
        };
        self.status.resync.update(|v| {
            v.ranges_differing += round.differing;
            v.ranges_compared += round.compared;
            v.divergences += round.found;
            v.repaired += round.exchanged;
        });
        let target = &mut run.targets[i];
        target.inflight = None;
        target.found += round.found;
        target.exchanged += round.exchanged;
        target.more = round.more;
        if round.more && target.rounds < MAX_ROUNDS {
            target.next_at = Instant::now() + ROUND_GAP;
        } else {
            self.target_over(&mut run.targets[i], "");
        }
        self.resync = Some(run);
        self.drive_resync();
    }
}
