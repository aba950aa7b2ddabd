//! Identity: one node id, one running node. Each run of a node tells its
//! incarnation and a random run id on every v2+ link (see
//! incarnation.rs). A member that holds links of two runs of one node id
//! at once tells a restart from a clone:
//! - the new run has a higher incarnation than the one still linked: a
//!   restart whose old links have not closed yet here (a crash, a
//!   partition). The old run's links are closed, and its run id is
//!   remembered as replaced: a run never comes back once replaced, so if
//!   it does, two runs were alive at once.
//! - otherwise (not higher), or a replaced run comes back: two nodes run
//!   under one id (a copied configuration, a cloned VM). Both are
//!   refused, here and on every link, with one log line here naming the
//!   id and both addresses and the reason told to each, until only one of
//!   them has tried to connect for CLONE_QUIET.
//!
//! In a full mesh every member links to both clones, so each finds them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::Token;

use super::conn::{Side, Verdict};
use super::{Net, BACKOFF_MAX};
use crate::log;
use crate::wire::{Frame, Session};

/// Refused runs of one id retry every BACKOFF_MAX; one that has not for
/// three of those is gone.
const CLONE_QUIET: Duration = Duration::from_secs(3 * BACKOFF_MAX.as_secs());
/// Replaced runs remembered per node id.
const REPLACED_KEPT: usize = 16;

/// What this node knows of the runs of one node id.
#[derive(Default)]
pub(super) struct Runs {
    /// Runs replaced by a later incarnation: (run, the run that replaced
    /// it, where that one runs).
    replaced: Vec<(u64, u64, String)>,
    /// Two or more runs alive at once: each run's address, incarnation and
    /// when it last tried to connect. Empty: no conflict.
    clones: HashMap<u64, (String, u64, Instant)>,
}

/// One run of a node as a link shows it.
struct Linked {
    token: Token,
    incarnation: u64,
    run: u64,
    address: String,
}

impl Net {
    /// A peer told its session on `t`, before anything of it is taken in:
    /// Continue, or the link is refused (a clone). Closes the links of an
    /// older run it replaces.
    pub(super) fn check_identity(&mut self, t: Token, node_id: &str, s: &Session) -> Verdict {
        let now = Instant::now();
        let Some(c) = self.conns.get_mut(&t) else {
            return Verdict::Close(String::new());
        };
        c.run = Some((s.incarnation, s.run));
        let here = c.address.clone();
        let others: Vec<Linked> = self
            .conns
            .iter()
            .filter(|(ot, oc)| **ot != t && oc.remote_id == node_id && oc.is_authenticated())
            .filter_map(|(ot, oc)| {
                let (incarnation, run) = oc.run?;
                Some(Linked {
                    token: *ot,
                    incarnation,
                    run,
                    address: oc.address.clone(),
                })
            })
            .collect();
        let runs = self.runs.entry(node_id.to_string()).or_default();
        if !runs.clones.is_empty() {
            runs.clones
                .retain(|_, (_, _, at)| now.duration_since(*at) < CLONE_QUIET);
            runs.clones
                .insert(s.run, (here.clone(), s.incarnation, now));
            if runs.clones.len() > 1 {
                let why = clone_reason(node_id, &runs.clones);
                self.status
                    .counters
                    .clones_refused
                    .fetch_add(1, Ordering::Relaxed);
                let c = self.conns.get_mut(&t).expect("checked above");
                return c.refuse(why.clone(), why);
            }
            runs.clones.clear();
            // Its run may have been replaced by the other's before they
            // were found: it is no clone coming back now.
            runs.replaced.retain(|r| r.0 != s.run);
            log::info(format_args!(
                "node id \"{node_id}\": only one node (at {here}) has connected under it for \
                 {} s: taken again",
                CLONE_QUIET.as_secs()
            ));
        }
        let rivals: Vec<&Linked> = others.iter().filter(|o| o.run != s.run).collect();
        let back = runs.replaced.iter().find(|r| r.0 == s.run).cloned();
        if back.is_some() || rivals.iter().any(|r| s.incarnation <= r.incarnation) {
            runs.clones.insert(s.run, (here, s.incarnation, now));
            for r in &rivals {
                runs.clones
                    .insert(r.run, (r.address.clone(), r.incarnation, now));
            }
            if let Some((_, by, at)) = back {
                runs.clones.entry(by).or_insert((at, 0, now));
            }
            let clones = &runs.clones;
            runs.replaced.retain(|r| !clones.contains_key(&r.0));
            let why = clone_reason(node_id, &runs.clones);
            log::error(format_args!("{why}"));
            // This link and every other of the id.
            self.status
                .counters
                .clones_refused
                .fetch_add(1 + others.len() as u64, Ordering::Relaxed);
            self.status.set_clone_reason(&why);
            let linked: Vec<Token> = others.iter().map(|o| o.token).collect();
            for ot in linked {
                self.refuse_link(ot, &why);
            }
            let c = self.conns.get_mut(&t).expect("checked above");
            return c.refuse(why.clone(), why);
        }
        // A restart: each earlier run logged and remembered once, all its
        // links closed.
        let mut replaced: Vec<u64> = Vec::new();
        for r in rivals {
            if !replaced.contains(&r.run) {
                replaced.push(r.run);
                log::warn(format_args!(
                    "node \"{node_id}\" restarted (incarnation {} at {here}, was {} at {}): \
                     its earlier run's links are closed",
                    s.incarnation, r.incarnation, r.address
                ));
                let runs = self.runs.entry(node_id.to_string()).or_default();
                if runs.replaced.len() >= REPLACED_KEPT {
                    runs.replaced.remove(0);
                }
                runs.replaced.push((r.run, s.run, here.clone()));
            }
            self.close(
                r.token,
                Verdict::Close(format!("replaced by incarnation {}", s.incarnation)),
            );
        }
        Continue
    }

    /// Refuses an open link, telling the peer why.
    fn refuse_link(&mut self, t: Token, why: &str) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        c.send(&Frame::Refuse { reason: why.into() });
        let _ = c.write_now();
        self.close(t, Verdict::Refused(why.into()));
    }

    /// Is `node_id` linked here now (a run known), or refused as a clone?
    /// Then a new hello under it may come from another run, which must not
    /// be told this one's incarnation as its own past (see incarnation.rs).
    pub(super) fn id_in_use(&self, node_id: &str) -> bool {
        self.runs.get(node_id).is_some_and(|r| !r.clones.is_empty())
            || self
                .conns
                .values()
                .any(|c| c.remote_id == node_id && c.is_authenticated() && c.run.is_some())
    }

    /// Other accepted links of the same run (or of a v1 peer, whose runs
    /// are not told) as `t`: the peer reconnected before we noticed that
    /// the old one died.
    pub(super) fn close_replaced_links(&mut self, t: Token, node_id: &str) {
        let run = self.conns.get(&t).and_then(|c| c.run.map(|r| r.1));
        let stale: Vec<Token> = self
            .conns
            .iter()
            .filter(|(ot, oc)| {
                **ot != t
                    && matches!(oc.side, Side::Accept)
                    && oc.remote_id == node_id
                    && oc.is_authenticated()
                    && (oc.version == 1 || (run.is_some() && oc.run.map(|r| r.1) == run))
            })
            .map(|(ot, _)| *ot)
            .collect();
        for ot in stale {
            self.close(ot, Verdict::Close("replaced by a newer connection".into()));
        }
    }
}

use Verdict::Continue;

/// The line logged here and told to each clone.
fn clone_reason(node_id: &str, clones: &HashMap<u64, (String, u64, Instant)>) -> String {
    let mut at: Vec<String> = clones
        .values()
        .map(|(addr, inc, _)| match inc {
            0 => addr.clone(),
            n => format!("{addr} (incarnation {n})"),
        })
        .collect();
    at.sort();
    format!(
        "node id \"{node_id}\" is used by {} nodes running at once, at {}: all are refused \
         until only one remains (give each node its own node id)",
        at.len(),
        at.join(" and ")
    )
}
