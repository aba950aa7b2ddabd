//! Membership: members learned from peers and remembered in the journal,
//! members forgotten for good, the member list sent on every link, dial
//! backoff.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::Token;

use super::conn::{Phase, Side, Verdict};
use super::{Net, BACKOFF_MAX, BACKOFF_MIN};
use crate::config::Config;
use crate::journal::Journal;
use crate::log;
use crate::wire::version::NEWEST;
use crate::wire::{Frame, Member};

pub(super) struct Peer {
    pub(super) text: String,
    pub(super) addr: std::net::SocketAddr,
    pub(super) conn: Option<Token>,
    pub(super) backoff: Duration,
    pub(super) retry_at: Instant,
    pub(super) resend_at: Option<Instant>,
    pub(super) node_id: String,
    /// Removed with sersync.forget: never dialed again. Kept as an entry
    /// because connections refer to peers by index.
    pub(super) forgotten: bool,
    /// The newest protocol version to state in a hello to it: lowered
    /// when it refused ours as too new, raised again when a link ends.
    pub(super) hello_version: u16,
}

/// The members to dial at start: the configured seeds, and the members
/// learned before a restart (reachable even if every configured seed is
/// down now); and the node ids forgotten for good.
pub(super) fn initial(
    cfg: &Config,
    journal: &Journal,
    now: Instant,
) -> (Vec<Peer>, HashSet<String>) {
    let mut peers: Vec<Peer> = cfg
        .peers
        .iter()
        .map(|p| Peer::new(&p.text, p.addr, "", now))
        .collect();
    // Members learned before a restart: reachable even if every
    // configured seed is down now.
    let mut forgotten = std::collections::HashSet::new();
    match journal.members() {
        Ok(members) => {
            for (id, address, gone) in members {
                if gone {
                    forgotten.insert(id);
                    continue;
                }
                let Ok(addr) = crate::config::parse_endpoint("member", &address) else {
                    continue;
                };
                let room = peers.len() < crate::abi::MAX_PEERS;
                match peers.iter_mut().find(|p| p.addr == addr) {
                    Some(p) => p.node_id = id,
                    None if room && id != cfg.node_id => {
                        peers.push(Peer::new(&address, addr, &id, now))
                    }
                    None => {}
                }
            }
        }
        Err(e) => log::error(format_args!("cannot read the member list: {e}")),
    }
    (peers, forgotten)
}

impl Peer {
    fn new(text: &str, addr: SocketAddr, node_id: &str, now: Instant) -> Peer {
        Peer {
            text: text.to_string(),
            addr,
            conn: None,
            backoff: BACKOFF_MIN,
            retry_at: now,
            resend_at: None,
            node_id: node_id.to_string(),
            forgotten: false,
            hello_version: NEWEST,
        }
    }
}

impl Net {
    /// Takes in a member (node id, "tcp:ip:port"): a new one is dialed and
    /// remembered in the journal; a known one may have a new address.
    pub(super) fn learn(&mut self, node_id: &str, address: &str) {
        if node_id == self.cfg.node_id || self.forgotten.contains(node_id) || node_id.is_empty() {
            return;
        }
        let addr = match crate::config::parse_endpoint("member", address) {
            Ok(a) => a,
            Err(e) => {
                log::warn(format_args!(
                    "member {node_id} advertises an unusable address: {e}"
                ));
                return;
            }
        };
        if addr == self.cfg.listen {
            return;
        }
        let known = self.peers.iter().position(|p| {
            !p.forgotten && (p.node_id == node_id || (p.node_id.is_empty() && p.addr == addr))
        });
        match known {
            Some(idx) => {
                let p = &mut self.peers[idx];
                if p.node_id.is_empty() {
                    p.node_id = node_id.to_string();
                }
                if p.addr == addr {
                    if let Err(e) = self.journal.save_member(node_id, &p.text) {
                        log::error(format_args!("{e}"));
                    }
                    return;
                }
                if p.conn.is_none() {
                    log::info(format_args!("member {node_id} moved to {address}"));
                    p.addr = addr;
                    p.text = address.to_string();
                    self.status
                        .with_peer(idx, |s| s.address = address.to_string());
                }
            }
            None => {
                if self.peers.len() >= crate::abi::MAX_PEERS {
                    log::error(format_args!(
                        "cannot add member {node_id}: at most {} peers",
                        crate::abi::MAX_PEERS
                    ));
                    return;
                }
                log::info(format_args!("new member {node_id} at {address}"));
                self.peers
                    .push(Peer::new(address, addr, node_id, Instant::now()));
                let mut st = crate::status::PeerStatus::new(address);
                st.node_id = node_id.to_string();
                self.status
                    .peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(st);
            }
        }
        if let Err(e) = self.journal.save_member(node_id, address) {
            log::error(format_args!("{e}"));
        }
        self.members_dirty = true;
    }

    /// Removes a member for good and tells the others.
    pub(super) fn forget(&mut self, node_id: &str) {
        if node_id == self.cfg.node_id {
            log::error(format_args!(
                "sersync.forget names this node ({node_id}); ignored"
            ));
            return;
        }
        if let Err(e) = self.journal.forget_member(node_id) {
            log::error(format_args!("cannot forget {node_id}: {e}"));
            return;
        }
        self.forgotten.insert(node_id.to_string());
        for idx in 0..self.peers.len() {
            if self.peers[idx].node_id != node_id {
                continue;
            }
            self.peers[idx].forgotten = true;
            self.status.with_peer(idx, |s| s.forgotten = true);
            if let Some(t) = self.peers[idx].conn.take() {
                self.close(t, Verdict::Close("member forgotten".into()));
                self.peers[idx].conn = None;
            }
        }
        let inbound: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.side, Side::Accept) && c.remote_id == node_id)
            .map(|(t, _)| *t)
            .collect();
        for t in inbound {
            self.close(t, Verdict::Close("member forgotten".into()));
        }
        self.received_from.remove(node_id);
        log::info(format_args!(
            "member {node_id} forgotten: its journal positions are released"
        ));
        self.members_dirty = true;
    }

    pub(super) fn member_list(&self) -> Vec<crate::wire::Member> {
        let mut out = vec![crate::wire::Member {
            node_id: self.cfg.node_id.clone(),
            address: format!("tcp:{}", self.cfg.listen),
            forgotten: false,
        }];
        for p in &self.peers {
            if !p.forgotten && !p.node_id.is_empty() {
                out.push(crate::wire::Member {
                    node_id: p.node_id.clone(),
                    address: p.text.clone(),
                    forgotten: false,
                });
            }
        }
        for id in &self.forgotten {
            out.push(crate::wire::Member {
                node_id: id.clone(),
                address: String::new(),
                forgotten: true,
            });
        }
        out
    }

    pub(super) fn broadcast_members(&mut self) {
        let members = self.member_list();
        let tokens: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Streaming))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some(c) = self.conns.get_mut(&t) {
                c.send(&Frame::Members {
                    members: members.clone(),
                });
            }
            self.flush(t);
        }
    }

    pub(super) fn schedule_retry(&mut self, idx: usize) {
        let p = &mut self.peers[idx];
        p.retry_at = Instant::now() + p.backoff;
        p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
    }

    pub(super) fn on_members(&mut self, t: Token, members: Vec<Member>) -> Verdict {
        let me = self.cfg.node_id.clone();
        let c = self.conns.get_mut(&t).expect("caller checked");
        let from = c.remote_id.clone();
        for m in members {
            if m.node_id == me {
                if m.forgotten {
                    log::error(format_args!(
                        "peer {from} says this node ({me}) was removed with sersync.forget; restart it under a new node id to rejoin"
                    ));
                }
            } else if m.forgotten {
                if !self.forgotten.contains(&m.node_id) {
                    log::info(format_args!(
                        "peer {from}: member {} was removed from the cluster",
                        m.node_id
                    ));
                    self.forget(&m.node_id);
                }
            } else {
                self.learn(&m.node_id, &m.address);
            }
        }
        if self.forgotten.contains(&from) {
            return Verdict::Refused(format!("{from} was removed from the cluster"));
        }
        Verdict::Continue
    }
}
