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
use crate::wire::session::SESSION_VERSION;
use crate::wire::version::{negotiate, NEWEST, OLDEST};
use crate::wire::{Frame, Session, SnapshotResume, MAGIC};

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
        // A challenge states the oldest version the acceptor speaks.
        if magic != MAGIC || !(OLDEST..=NEWEST).contains(&version) {
            return Verdict::Refused(format!(
                "peer speaks protocol {magic:?} from v{version}, we speak v{OLDEST} to v{NEWEST}"
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
        let Side::Dial { peer } = c.side else {
            return Verdict::Close("challenge on an accepted connection".into());
        };
        // The newest this node speaks, unless this peer said it only
        // speaks an older one. Sessions (v4) whenever the challenge says
        // the peer speaks nothing older, or this node may not fall back.
        let session = version >= SESSION_VERSION
            || (self.cfg.sessions
                && (self.peers[peer].hello_version >= SESSION_VERSION
                    || !self.cfg.accept_clear_peers));
        if session {
            let listen = format!("tcp:{}", self.cfg.listen);
            let hello = Frame::Hello {
                magic: MAGIC,
                version: NEWEST,
                node_id: me,
                listen,
                // Noise authenticates a session's hello.
                nonce: [0; 32],
                tag: [0; 32],
            };
            let challenge = Frame::Challenge {
                magic,
                version,
                node_id: node_id.clone(),
                nonce,
            };
            c.hello_version = NEWEST;
            c.remote_id = node_id;
            c.phase = Phase::AwaitWelcome {
                nonce_a: nonce,
                nonce_d: [0; 32],
            };
            return self.open_session(t, challenge, &hello);
        }
        let stated = self.peers[peer].hello_version.min(SESSION_VERSION - 1);
        let nonce_d = auth::fresh_nonce();
        let tag = auth::tag_for(
            &self.cfg.secret,
            Role::Dialer,
            &Transcript {
                nonce_a: &nonce,
                nonce_d: &nonce_d,
                dialer: &me,
                acceptor: &node_id,
            },
            stated,
        );
        c.hello_version = stated;
        c.remote_id = node_id;
        let listen = format!("tcp:{}", self.cfg.listen);
        c.send(&Frame::Hello {
            magic: MAGIC,
            version: stated,
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_welcome(
        &mut self,
        t: Token,
        peer: usize,
        (nonce_a, nonce_d): (Nonce, Nonce),
        tag: Tag,
        resume_after: u64,
        snapshot: Option<SnapshotResume>,
        session: Option<Session>,
    ) -> Verdict {
        let me = self.cfg.node_id.clone();
        let c = self.conns.get_mut(&t).expect("caller checked");
        // A v1 welcome answers a hello stating v1; a v2 welcome names a
        // version between v2 and the one stated.
        let version = match &session {
            None if c.hello_version == 1 => 1,
            Some(s) if (2..=c.hello_version).contains(&s.version) => s.version,
            _ => {
                return Verdict::Close(format!(
                    "peer answered a hello stating v{} with a welcome for {}",
                    c.hello_version,
                    session.as_ref().map_or(1, |s| s.version)
                ))
            }
        };
        let tr = Transcript {
            nonce_a: &nonce_a,
            nonce_d: &nonce_d,
            dialer: &me,
            acceptor: &c.remote_id,
        };
        let in_session = c.in_session();
        if !in_session
            && !self
                .cfg
                .secrets
                .iter()
                .any(|s| auth::verify_for(s, Role::Acceptor, &tr, version, &tag))
        {
            return Verdict::Refused("peer failed authentication: different secret?".into());
        }
        if in_session != (version >= SESSION_VERSION) {
            return Verdict::Close(format!(
                "peer chose v{version} for a {} connection",
                if in_session { "session" } else { "clear" }
            ));
        }
        c.version = version;
        let remote = c.remote_id.clone();
        if let Some(s) = &session {
            let v = self.check_identity(t, &remote, s);
            if !matches!(v, Verdict::Continue) {
                return v;
            }
            let mine = self.session_for(&remote, version);
            let c = self.conns.get_mut(&t).expect("still open");
            c.send(&Frame::DialerSession { session: mine });
            self.note_session(&remote, s);
        }
        let c = self.conns.get_mut(&t).expect("still open");
        c.authenticated();
        c.next_send = resume_after;
        c.acked = resume_after;
        let remote = c.remote_id.clone();
        // A position this journal never gave out, from a peer it has heard
        // from before: a journal restored from a backup (the peer speaks
        // v1, or did not see the run that was lost).
        if resume_after > self.ingest.tail.last()
            && self.journal.has_acked(&remote).unwrap_or(false)
        {
            self.found_restored(&remote);
        }
        let owned = self.journal.has_acked(&remote);
        let first = self.journal.first_available();
        match (owned, first) {
            // A position this journal does not own: the peer holds
            // changes from an earlier journal of this node (moved aside
            // as corrupt, or deleted), or from a run this journal does
            // not know (restored from a backup: positions disowned). It
            // would skip ours numbered up to it: number them after it
            // (unless all of them already are).
            (Ok(false), Ok(first)) if resume_after > 0 && resume_after >= first => {
                match self.journal.renumber_after(resume_after) {
                    Ok(new_last) => {
                        log::warn(format_args!(
                            "peer {remote} holds changes up to {resume_after} from an earlier journal of this node: \
                             this journal's entries now come after it (sequences up to {new_last})"
                        ));
                        self.ingest.tail.advance(new_last);
                    }
                    Err(e) => return Verdict::Close(format!("journal: {e}")),
                }
            }
            (Ok(_), Ok(_)) => {}
            (Err(e), _) | (_, Err(e)) => return Verdict::Close(format!("journal: {e}")),
        }
        if let Err(e) = self.journal.set_acked(&remote, resume_after) {
            log::error(format_args!("{e}"));
        }
        let why = match &snapshot {
            Some(s) if s.after_key.is_empty() => {
                "asks for our state (its journal was restored from a backup)"
            }
            _ => "needs changes before our journal's start",
        };
        match self.plan_snapshot(resume_after, snapshot) {
            Ok(Some(snap)) => {
                log::info(format_args!(
                    "peer {remote} {why}: sending a snapshot of {} keys consistent with sequence {}{}",
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
        // A hello states the newest version the dialer speaks.
        // Sessions are v4; a clear connection speaks v3 at most.
        let in_session = c.in_session();
        let chosen = match negotiate(version) {
            Ok(v) if magic == MAGIC && in_session => v,
            Ok(v) if magic == MAGIC => v.min(SESSION_VERSION - 1),
            _ => {
                return c.refuse(
                    format!("protocol v{OLDEST} to v{NEWEST} only"),
                    format!("peer {node_id} speaks protocol {magic:?} up to v{version}"),
                )
            }
        };
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
        let secret = if in_session {
            // Noise authenticated the session, and the hello inside it.
            Some(&self.cfg.secret)
        } else {
            self.cfg
                .secrets
                .iter()
                .find(|s| auth::verify_for(s, Role::Dialer, &tr, version, &tag))
        };
        let Some(secret) = secret else {
            return c.refuse(
                "authentication failed",
                format!("peer claiming to be {node_id} failed authentication: different secret?"),
            );
        };
        let secret = secret.clone();
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
        // (A session's welcome needs no tag: it travels sealed.)
        let reply = if in_session {
            [0; 32]
        } else {
            auth::tag_for(&secret, Role::Acceptor, &tr, chosen)
        };
        c.remote_id = node_id.clone();
        c.address = listen;
        c.authenticated();
        c.version = chosen;
        if chosen == 1 {
            c.send(&Frame::Welcome {
                tag: reply,
                resume_after,
                snapshot,
            });
        } else {
            let mut session = self.session_for(&node_id, chosen);
            if self.id_in_use(&node_id) {
                // This hello may come from another run (a clone, or a
                // restart whose old link is still open here): the run
                // linked here is not its past (see identity.rs).
                (session.seen, session.seen_run) = (0, 0);
            }
            let c = self.conns.get_mut(&t).expect("caller checked");
            c.send(&Frame::WelcomeV2 {
                tag: reply,
                resume_after,
                snapshot,
                session,
            });
        }
        // From v2 on, the dialer's session comes next: it is taken in
        // once its run is checked (see on_dialer_session).
        if chosen == 1 {
            self.admitted(t, &node_id);
        }
        Verdict::Continue
    }

    /// An accepted link of `node_id` is up: an older one of the same run
    /// goes, the member is dialed back and learned, and told our members.
    fn admitted(&mut self, t: Token, node_id: &str) {
        self.close_replaced_links(t, node_id);
        let resume_after = self.journal.received_upto(node_id).unwrap_or(0);
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
        let listen = self.conns.get(&t).map(|c| c.address.clone());
        if let Some(listen) = listen {
            self.learn(node_id, &listen);
        }
        let members = self.member_list();
        if let Some(c) = self.conns.get_mut(&t) {
            c.send(&Frame::Members { members });
        }
    }

    /// The dialer's session on a v2 connection it dialed to us.
    pub(super) fn on_dialer_session(&mut self, t: Token, session: Session) -> Verdict {
        let c = self.conns.get_mut(&t).expect("caller checked");
        if session.version != c.version {
            return Verdict::Close(format!(
                "peer states v{} on a v{} connection",
                session.version, c.version
            ));
        }
        let remote = c.remote_id.clone();
        let v = self.check_identity(t, &remote, &session);
        if !matches!(v, Verdict::Continue) {
            return v;
        }
        self.note_session(&remote, &session);
        self.admitted(t, &remote);
        Verdict::Continue
    }
}
