//! The handshake: challenge, hello, welcome, refusal. Nothing about
//! state moves before it completes; each side proves it knows the secret
//! (see [`crate::wire::auth`]).

use std::time::Instant;

use mio::Token;

use super::conn::{Phase, Side, Verdict};
use super::{Net, BACKOFF_MIN};
use crate::log;
use crate::status::PeerState;
use crate::wire::auth::{self, Nonce, Role, Tag, Transcript};
use crate::wire::{Frame, SnapshotResume, MAGIC, VERSION};

impl Net {
    pub(super) fn on_challenge(
        &mut self,
        t: Token,
        magic: [u8; 4],
        version: u16,
        node_id: String,
        nonce: Nonce,
    ) -> Verdict {
        let me = self.cfg.node_id.clone();
        let c = self.conns.get_mut(&t).expect("caller checked");
        if magic != MAGIC || version != VERSION {
            return Verdict::Refused(format!(
                "peer speaks protocol {magic:?} v{version}, we speak v{VERSION}"
            ));
        }
        if node_id == me {
            return Verdict::Refused(format!(
                "peer has our own node id \"{me}\": node ids must be unique"
            ));
        }
        if self.forgotten.contains(&node_id) {
            return Verdict::Refused(format!(
                "peer is {node_id}, removed from the cluster with sersync.forget"
            ));
        }
        let nonce_d = auth::fresh_nonce();
        let tag = auth::tag(
            &self.cfg.secret,
            Role::Dialer,
            &Transcript {
                nonce_a: &nonce,
                nonce_d: &nonce_d,
                dialer: &me,
                acceptor: &node_id,
            },
        );
        c.remote_id = node_id;
        let listen = format!("tcp:{}", self.cfg.listen);
        c.send(&Frame::Hello {
            magic: MAGIC,
            version: VERSION,
            node_id: me,
            listen,
            nonce: nonce_d,
            tag,
        });
        c.phase = Phase::AwaitWelcome {
            nonce_a: nonce,
            nonce_d,
        };
        Verdict::Continue
    }

    pub(super) fn on_welcome(
        &mut self,
        t: Token,
        peer: usize,
        (nonce_a, nonce_d): (Nonce, Nonce),
        tag: Tag,
        resume_after: u64,
        snapshot: Option<SnapshotResume>,
    ) -> Verdict {
        let me = self.cfg.node_id.clone();
        let c = self.conns.get_mut(&t).expect("caller checked");
        let tr = Transcript {
            nonce_a: &nonce_a,
            nonce_d: &nonce_d,
            dialer: &me,
            acceptor: &c.remote_id,
        };
        if !auth::verify(&self.cfg.secret, Role::Acceptor, &tr, &tag) {
            return Verdict::Refused("peer failed authentication: different secret?".into());
        }
        c.phase = Phase::Streaming;
        c.deadline = None;
        c.next_send = resume_after;
        c.acked = resume_after;
        let remote = c.remote_id.clone();
        let mut last = self.ingest.tail.last();
        match self.journal.has_acked(&remote) {
            // A position this journal never gave out: the peer holds
            // changes from an earlier journal of this node (moved
            // aside as corrupt, or deleted). It would skip ours
            // numbered up to it: number them after it.
            Ok(false) if resume_after > 0 => match self.journal.renumber_after(resume_after) {
                Ok(new_last) => {
                    log::warn(format_args!(
                            "peer {remote} holds changes up to {resume_after} from an earlier journal of this node: \
                             this journal's entries now come after it (sequences up to {new_last})"
                        ));
                    self.ingest.tail.advance(new_last);
                    last = new_last;
                }
                Err(e) => return Verdict::Close(format!("journal: {e}")),
            },
            Ok(_) => {}
            Err(e) => return Verdict::Close(format!("journal: {e}")),
        }
        if resume_after > last {
            log::error(format_args!(
                "peer {remote} holds our changes up to {resume_after} but our journal ends at {last}: was this node's journal replaced?"
            ));
        }
        if let Err(e) = self.journal.set_acked(&remote, resume_after) {
            log::error(format_args!("{e}"));
        }
        match self.plan_snapshot(resume_after, snapshot) {
            Ok(Some(snap)) => {
                log::info(format_args!(
                    "peer {remote} needs changes before our journal's start: sending a snapshot of {} keys consistent with sequence {}{}",
                    snap.rows_total,
                    snap.upto,
                    if snap.cursor.is_empty() { "" } else { " (resuming an interrupted one)" }
                ));
                let c = self.conns.get_mut(&t).expect("still open");
                c.snap = Some(snap);
            }
            Ok(None) => {}
            Err(e) => return Verdict::Close(format!("journal: {e}")),
        }
        let p = &mut self.peers[peer];
        p.backoff = BACKOFF_MIN;
        p.resend_at = None;
        p.node_id = remote.clone();
        self.status.with_peer(peer, |s| {
            s.state = PeerState::Up;
            s.node_id = remote.clone();
            s.acked = resume_after;
            s.last_error.clear();
            s.connects += 1;
        });
        let text = p.text.clone();
        log::info(format_args!(
            "connected to peer {remote} at {text}, resuming after {resume_after}"
        ));
        self.learn(&remote, &text);
        let members = self.member_list();
        if let Some(c) = self.conns.get_mut(&t) {
            c.send(&Frame::Members { members });
        }
        Verdict::Continue
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_hello(
        &mut self,
        t: Token,
        nonce_a: Nonce,
        (magic, version): ([u8; 4], u16),
        node_id: String,
        listen: String,
        nonce: Nonce,
        tag: Tag,
    ) -> Verdict {
        let me = self.cfg.node_id.clone();
        let c = self.conns.get_mut(&t).expect("caller checked");
        if magic != MAGIC || version != VERSION {
            return c.refuse(
                format!("protocol v{VERSION} only"),
                format!("peer {node_id} speaks protocol {magic:?} v{version}"),
            );
        }
        if node_id == me {
            return c.refuse(
                format!("node id \"{me}\" is already taken by the node you dialed"),
                format!("a peer connected with our own node id \"{me}\": node ids must be unique"),
            );
        }
        let tr = Transcript {
            nonce_a: &nonce_a,
            nonce_d: &nonce,
            dialer: &node_id,
            acceptor: &me,
        };
        if self.forgotten.contains(&node_id) {
            return c.refuse(format!("node id \"{node_id}\" was removed from the cluster with sersync.forget; rejoin under a new node id"), format!(
                "refused {node_id}: removed from the cluster with sersync.forget"
            ));
        }
        if !auth::verify(&self.cfg.secret, Role::Dialer, &tr, &tag) {
            return c.refuse(
                "authentication failed",
                format!("peer claiming to be {node_id} failed authentication: different secret?"),
            );
        }
        let (resume_after, snapshot) = match (
            self.journal.received_upto(&node_id),
            self.journal.snapshot_progress(&node_id),
        ) {
            (Ok(v), Ok(p)) => (
                v,
                p.map(|(upto, after_key)| SnapshotResume { upto, after_key }),
            ),
            (Err(e), _) | (_, Err(e)) => return Verdict::Close(format!("journal: {e}")),
        };
        let mine = Role::Acceptor;
        let reply = auth::tag(&self.cfg.secret, mine, &tr);
        c.remote_id = node_id.clone();
        c.phase = Phase::Streaming;
        c.deadline = None;
        c.send(&Frame::Welcome {
            tag: reply,
            resume_after,
            snapshot,
        });
        // A newer connection from the same node replaces an old one
        // (the peer reconnected before we noticed the old one died).
        let stale: Vec<Token> = self
            .conns
            .iter()
            .filter(|(ot, oc)| {
                **ot != t && matches!(oc.side, Side::Accept) && oc.remote_id == node_id
            })
            .map(|(ot, _)| *ot)
            .collect();
        for ot in stale {
            self.close(ot, Verdict::Close("replaced by a newer connection".into()));
        }
        log::info(format_args!(
            "peer {node_id} connected, resuming after {resume_after}"
        ));
        // It is back: redial it now rather than when the backoff ends.
        for p in self
            .peers
            .iter_mut()
            .filter(|p| p.node_id == node_id && p.conn.is_none())
        {
            p.backoff = BACKOFF_MIN;
            p.retry_at = Instant::now();
        }
        self.learn(&node_id, &listen);
        let members = self.member_list();
        if let Some(c) = self.conns.get_mut(&t) {
            c.send(&Frame::Members { members });
        }
        Verdict::Continue
    }
}
