//! The network thread: one mio loop owning every peer connection.
//!
//! Dialed connections carry this node's journal to a peer (this side
//! sends `Batch`es, the peer acknowledges); accepted connections carry a
//! peer's changes here (this side stages them durably in the journal, then
//! acknowledges). See [`crate::wire`] for the protocol.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::config::Config;
use crate::hlc::Hlc;
use crate::journal::Journal;
use crate::log::{self, RateLimit};
use crate::status::{PeerState, Status};
use crate::wire::auth::{self, Role, Transcript};
use crate::wire::{Frame, SnapshotResume, MAGIC, VERSION};

mod conn;
mod inbound;
mod members;
mod outbound;
mod snapshot;
mod trim;

use conn::{frame_name, Conn, Phase, Side, Verdict};
use members::Peer;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Records per batch frame.
const BATCH_RECORDS: usize = 1000;
/// Records a dialer may have in flight (sent, not acknowledged).
const WINDOW_RECORDS: u64 = 20_000;
/// Output buffered per connection before we stop producing.
const MAX_OUTBUF: usize = 8 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An accepted connection that sends nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Every member sends its member list this often on every connection, so
/// that an idle link is not taken for a dead one (and lists converge).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// A dialed peer that acknowledges nothing for this long while records,
/// snapshot chunks or bytes are outstanding is dropped (it is not reading).
/// A live peer acknowledges within milliseconds, or reports a temporary
/// failure within its journal's busy timeout (10 s).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);
/// Rows per snapshot chunk, and chunks in flight.
const SNAPSHOT_ROWS: usize = 2000;
const SNAPSHOT_WINDOW: u64 = 4;
/// How often the trim target is worked out; the entries up to it then go
/// TRIM_CHUNK at a time each TICK, so that a trim never holds the journal
/// (and with it sending and staging) for long.
const TRIM_EVERY: Duration = Duration::from_secs(5);
const TRIM_CHUNK: u64 = 2000;
/// Acknowledged positions reach the journal at most this often: losing
/// the last ones in a crash only means resending what the peer skips.
const ACK_SAVE_EVERY: Duration = Duration::from_millis(500);

/// Requests from other threads of the engine.
pub enum NetCmd {
    Forget(String),
}

pub struct Net {
    cfg: Arc<Config>,
    status: Arc<Status>,
    hlc: Arc<Mutex<Hlc>>,
    journal: Journal,
    apply_notify: Sender<()>,
    poll: Poll,
    listener: Option<TcpListener>,
    listen_retry_at: Instant,
    peers: Vec<Peer>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    shared: Option<Arc<crate::queue::Shared>>,
    last_status: Instant,
    last_trim: Instant,
    last_trim_chunk: Instant,
    last_keepalive: Instant,
    /// Journal entries up to this may go (see TRIM_EVERY).
    trim_target: u64,
    /// The state still holds expired keys beyond the last purge's chunk.
    purge_more: bool,
    /// Acknowledged positions not yet saved in the journal, per peer id.
    acks_unsaved: HashMap<String, u64>,
    last_ack_save: Instant,
    /// Per origin node id: (records, snapshot rows) received. Keyed by id:
    /// a peer's inbound connection may authenticate before our outbound
    /// one tells us which configured address it is.
    received_from: HashMap<String, (u64, u64)>,
    /// Node ids removed from the cluster for good.
    forgotten: std::collections::HashSet<String>,
    /// The member list changed: tell every connected peer.
    members_dirty: bool,
    cmds: crossbeam_channel::Receiver<NetCmd>,
    /// The last sequence after renumbering the journal: the ingest thread
    /// may store an older value in the status counter just after it.
    renumbered_last: u64,
}

static STAGE_ERR: RateLimit = RateLimit::new(1000);
/// Incoming connections refused or dropped before they authenticated: a
/// flood of them (a port scan, a misconfigured client) logs once a second.
static INCOMING_REFUSED: RateLimit = RateLimit::new(1000);
static INCOMING_DROPPED: RateLimit = RateLimit::new(1000);

impl Net {
    pub fn new(
        cfg: Arc<Config>,
        status: Arc<Status>,
        hlc: Arc<Mutex<Hlc>>,
        journal: Journal,
        apply_notify: Sender<()>,
        shared: Option<Arc<crate::queue::Shared>>,
        cmds: crossbeam_channel::Receiver<NetCmd>,
    ) -> io::Result<(Net, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let now = Instant::now();
        let new_peer = |text: &str, addr, node_id: &str| Peer {
            text: text.to_string(),
            addr,
            conn: None,
            backoff: BACKOFF_MIN,
            retry_at: now,
            resend_at: None,
            node_id: node_id.to_string(),
            forgotten: false,
        };
        let mut peers: Vec<Peer> = cfg
            .peers
            .iter()
            .map(|p| new_peer(&p.text, p.addr, ""))
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
                            peers.push(new_peer(&address, addr, &id))
                        }
                        None => {}
                    }
                }
            }
            Err(e) => log::error(format_args!("cannot read the member list: {e}")),
        }
        {
            let mut ps = status.peers.lock().unwrap_or_else(|p| p.into_inner());
            *ps = peers
                .iter()
                .map(|p| {
                    let mut st = crate::status::PeerStatus::new(&p.text);
                    st.node_id = p.node_id.clone();
                    st
                })
                .collect();
        }
        let net = Net {
            cfg,
            status,
            hlc,
            journal,
            apply_notify,
            poll,
            listener: None,
            listen_retry_at: now,
            peers,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            shared,
            last_status: now - TICK,
            last_trim: now,
            last_trim_chunk: now,
            last_keepalive: now,
            trim_target: 0,
            purge_more: false,
            acks_unsaved: HashMap::new(),
            last_ack_save: now,
            received_from: HashMap::new(),
            forgotten,
            members_dirty: false,
            cmds,
            renumbered_last: 0,
        };
        Ok((net, waker))
    }

    /// Runs until `stop` is set (and the waker woken).
    pub fn run(mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::Acquire) {
            self.ensure_listener();
            if let Err(e) = self.poll.poll(&mut events, Some(TICK)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error(format_args!("poll failed: {e}"));
                    std::thread::sleep(TICK);
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept_all(),
                    t => self.conn_event(
                        t,
                        ev.is_readable(),
                        ev.is_writable() || ev.is_write_closed(),
                    ),
                }
            }
            while let Ok(cmd) = self.cmds.try_recv() {
                match cmd {
                    NetCmd::Forget(id) => self.forget(&id),
                }
            }
            self.timers();
            self.pump_all();
            self.trim();
            if std::mem::take(&mut self.members_dirty) {
                self.broadcast_members();
            }
            self.publish_status(false);
        }
        self.save_acks(true);
        for t in self.conns.keys().copied().collect::<Vec<_>>() {
            self.close(t, Verdict::Close("engine stopping".into()));
        }
        self.publish_status(true);
    }

    fn ensure_listener(&mut self) {
        if self.listener.is_some() || Instant::now() < self.listen_retry_at {
            return;
        }
        match TcpListener::bind(self.cfg.listen) {
            Ok(mut l) => match self
                .poll
                .registry()
                .register(&mut l, LISTENER, Interest::READABLE)
            {
                Ok(()) => {
                    log::info(format_args!("listening on tcp:{}", self.cfg.listen));
                    self.listener = Some(l);
                }
                Err(e) => log::error(format_args!("cannot register listener: {e}")),
            },
            Err(e) => {
                let msg = format!("cannot listen on tcp:{}: {e}; retrying", self.cfg.listen);
                log::error(format_args!("{msg}"));
                self.status.set_error(&msg);
                self.listen_retry_at = Instant::now() + BACKOFF_MAX;
            }
        }
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn accept_all(&mut self) {
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((mut sock, addr)) => {
                    let _ = sock.set_nodelay(true);
                    let t = self.token();
                    if let Err(e) = self
                        .poll
                        .registry()
                        .register(&mut sock, t, Interest::READABLE)
                    {
                        log::error(format_args!("cannot register connection from {addr}: {e}"));
                        continue;
                    }
                    let nonce_a = auth::fresh_nonce();
                    let mut c = Conn::new(sock, Side::Accept, Phase::AwaitHello { nonce_a });
                    c.addr = Some(addr);
                    c.send(&Frame::Challenge {
                        magic: MAGIC,
                        version: VERSION,
                        node_id: self.cfg.node_id.clone(),
                        nonce: nonce_a,
                    });
                    log::debug(format_args!("accepted connection from {addr}"));
                    self.conns.insert(t, c);
                    self.flush(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn(format_args!("accept failed: {e}"));
                    return;
                }
            }
        }
    }

    fn dial(&mut self, idx: usize) {
        let addr = self.peers[idx].addr;
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                let t = self.token();
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    t,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    log::error(format_args!("cannot register connection to {addr}: {e}"));
                    self.schedule_retry(idx);
                    return;
                }
                let mut c = Conn::new(sock, Side::Dial { peer: idx }, Phase::Connecting);
                c.interest_writable = true;
                self.conns.insert(t, c);
                self.peers[idx].conn = Some(t);
                self.status
                    .with_peer(idx, |p| p.state = PeerState::Connecting);
            }
            Err(e) => {
                self.status
                    .with_peer(idx, |p| p.last_error = format!("connect: {e}"));
                self.schedule_retry(idx);
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        for idx in 0..self.peers.len() {
            if self.peers[idx].conn.is_none()
                && !self.peers[idx].forgotten
                && now >= self.peers[idx].retry_at
            {
                self.dial(idx);
            }
        }
        let mut expired = Vec::new();
        for (t, c) in self.conns.iter_mut() {
            let why = if c.deadline.is_some_and(|d| now >= d) {
                match c.phase {
                    Phase::AwaitHello { .. } => {
                        format!("sent no hello within {} s", HANDSHAKE_TIMEOUT.as_secs())
                    }
                    _ => "handshake timed out".to_string(),
                }
            } else if matches!(c.side, Side::Accept) && now.duration_since(c.last_rx) > IDLE_TIMEOUT
            {
                format!("nothing received for {} s", IDLE_TIMEOUT.as_secs())
            } else if matches!(c.side, Side::Dial { .. }) && matches!(c.phase, Phase::Streaming) {
                let waiting = c.next_send > c.acked
                    || c.snap.as_ref().is_some_and(|s| s.inflight > 0)
                    || c.out_pos < c.out.len();
                if !waiting {
                    c.ack_wait_from = now;
                    continue;
                }
                if now.duration_since(c.ack_wait_from.max(c.last_rx)) <= ACK_TIMEOUT {
                    continue;
                }
                format!(
                    "acknowledged nothing for {} s with {} records and {} bytes outstanding: not reading",
                    ACK_TIMEOUT.as_secs(),
                    c.next_send - c.acked,
                    c.out.len() - c.out_pos
                )
            } else {
                continue;
            };
            expired.push((*t, why));
        }
        for (t, why) in expired {
            self.close(t, Verdict::Close(why));
        }
        if now.duration_since(self.last_keepalive) >= KEEPALIVE {
            self.last_keepalive = now;
            self.broadcast_members();
        }
    }

    fn conn_event(&mut self, t: Token, readable: bool, writable: bool) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        if matches!(c.phase, Phase::Connecting) && (writable || readable) {
            if let Ok(Some(e)) | Err(e) = c.sock.take_error() {
                return self.close(t, Verdict::Close(format!("connect: {e}")));
            }
            match c.sock.peer_addr() {
                Ok(_) => {
                    c.phase = Phase::AwaitChallenge;
                    c.deadline = Some(Instant::now() + HANDSHAKE_TIMEOUT);
                    let _ = c.sock.set_nodelay(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.close(t, Verdict::Close(format!("connect: {e}"))),
            }
        }
        if readable {
            let mut buf = [0u8; 64 * 1024];
            loop {
                let Some(c) = self.conns.get_mut(&t) else {
                    return;
                };
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        let why = match c.reader.buffered() {
                            0 => "closed by peer".to_string(),
                            n => format!("closed by peer in the middle of a frame ({n} bytes)"),
                        };
                        return self.close(t, Verdict::Close(why));
                    }
                    Ok(n) => {
                        c.last_rx = Instant::now();
                        c.got_bytes = true;
                        c.reader.extend(&buf[..n]);
                        if let Verdict::Close(_) | Verdict::Refused(_) = self.drain_frames(t) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return self.close(t, Verdict::Close(format!("read: {e}"))),
                }
            }
        }
        self.flush(t);
    }

    /// Handles every complete frame buffered on `t`.
    fn drain_frames(&mut self, t: Token) -> Verdict {
        loop {
            let Some(c) = self.conns.get_mut(&t) else {
                return Verdict::Close(String::new());
            };
            let frame = match c.reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Verdict::Continue,
                Err(e) => {
                    let v = Verdict::Close(format!("protocol error: {e}"));
                    self.close(t, Verdict::Close(format!("protocol error: {e}")));
                    return v;
                }
            };
            match self.handle(t, frame) {
                Verdict::Continue => {}
                v => {
                    let copy = match &v {
                        Verdict::Close(s) => Verdict::Close(s.clone()),
                        Verdict::Refused(s) => Verdict::Refused(s.clone()),
                        Verdict::Continue => Verdict::Continue,
                    };
                    self.close(t, v);
                    return copy;
                }
            }
        }
    }

    fn handle(&mut self, t: Token, frame: Frame) -> Verdict {
        let me = self.cfg.node_id.clone();
        let c = self.conns.get_mut(&t).expect("caller checked");
        match (&c.side, &c.phase, frame) {
            (
                Side::Dial { .. },
                Phase::AwaitChallenge,
                Frame::Challenge {
                    magic,
                    version,
                    node_id,
                    nonce,
                },
            ) => {
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
            (
                Side::Dial { peer },
                Phase::AwaitWelcome { nonce_a, nonce_d },
                Frame::Welcome {
                    tag,
                    resume_after,
                    snapshot,
                },
            ) => {
                let peer = *peer;
                let tr = Transcript {
                    nonce_a,
                    nonce_d,
                    dialer: &me,
                    acceptor: &c.remote_id,
                };
                if !auth::verify(&self.cfg.secret, Role::Acceptor, &tr, &tag) {
                    return Verdict::Refused(
                        "peer failed authentication: different secret?".into(),
                    );
                }
                c.phase = Phase::Streaming;
                c.deadline = None;
                c.next_send = resume_after;
                c.acked = resume_after;
                let remote = c.remote_id.clone();
                let mut last = self.status.counters.last_seq.load(Ordering::Relaxed);
                match self.journal.has_acked(&remote) {
                    // A position this journal never gave out: the peer holds
                    // changes from an earlier journal of this node (moved
                    // aside as corrupt, or deleted). It would skip ours
                    // numbered up to it: number them after it.
                    Ok(false) if resume_after > 0 => {
                        match self.journal.renumber_after(resume_after) {
                            Ok(new_last) => {
                                log::warn(format_args!(
                                    "peer {remote} holds changes up to {resume_after} from an earlier journal of this node: \
                                     this journal's entries now come after it (sequences up to {new_last})"
                                ));
                                self.status
                                    .counters
                                    .last_seq
                                    .fetch_max(new_last, Ordering::Relaxed);
                                self.renumbered_last = self.renumbered_last.max(new_last);
                                last = new_last;
                            }
                            Err(e) => return Verdict::Close(format!("journal: {e}")),
                        }
                    }
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
            (Side::Dial { .. }, _, Frame::Refuse { reason }) => {
                Verdict::Refused(format!("peer refused: {reason}"))
            }
            (Side::Dial { peer }, Phase::Streaming, Frame::Ack { upto }) => {
                let peer = *peer;
                if upto > c.next_send {
                    return Verdict::Close(format!(
                        "peer acknowledged {upto}, beyond {} sent",
                        c.next_send
                    ));
                }
                c.acked = c.acked.max(upto);
                let (remote, acked) = (c.remote_id.clone(), c.acked);
                self.acks_unsaved.insert(remote, acked);
                let last = self.status.counters.last_seq.load(Ordering::Relaxed);
                self.status.with_peer(peer, |s| {
                    s.acked = acked;
                    s.pending = last.saturating_sub(acked);
                });
                Verdict::Continue
            }
            (Side::Dial { peer }, Phase::Streaming, Frame::TempFail { upto, reason }) => {
                let peer = *peer;
                log::warn(format_args!(
                    "peer {} reports a temporary failure: {reason}; resending after {upto}",
                    c.remote_id
                ));
                c.acked = c.acked.max(upto);
                c.next_send = c.acked;
                let p = &mut self.peers[peer];
                p.resend_at = Some(Instant::now() + p.backoff);
                p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
                self.status.with_peer(peer, |s| {
                    s.last_error = format!("peer temporary failure: {reason}")
                });
                Verdict::Continue
            }
            (
                Side::Accept,
                Phase::AwaitHello { nonce_a },
                Frame::Hello {
                    magic,
                    version,
                    node_id,
                    listen,
                    nonce,
                    tag,
                },
            ) => {
                if magic != MAGIC || version != VERSION {
                    c.send(&Frame::Refuse {
                        reason: format!("protocol v{VERSION} only"),
                    });
                    let _ = c.write_now();
                    return Verdict::Refused(format!(
                        "peer {node_id} speaks protocol {magic:?} v{version}"
                    ));
                }
                if node_id == me {
                    c.send(&Frame::Refuse {
                        reason: format!("node id \"{me}\" is already taken by the node you dialed"),
                    });
                    let _ = c.write_now();
                    return Verdict::Refused(format!(
                        "a peer connected with our own node id \"{me}\": node ids must be unique"
                    ));
                }
                let tr = Transcript {
                    nonce_a,
                    nonce_d: &nonce,
                    dialer: &node_id,
                    acceptor: &me,
                };
                if self.forgotten.contains(&node_id) {
                    c.send(&Frame::Refuse {
                        reason: format!("node id \"{node_id}\" was removed from the cluster with sersync.forget; rejoin under a new node id"),
                    });
                    let _ = c.write_now();
                    return Verdict::Refused(format!(
                        "refused {node_id}: removed from the cluster with sersync.forget"
                    ));
                }
                if !auth::verify(&self.cfg.secret, Role::Dialer, &tr, &tag) {
                    c.send(&Frame::Refuse {
                        reason: "authentication failed".into(),
                    });
                    let _ = c.write_now();
                    return Verdict::Refused(format!(
                        "peer claiming to be {node_id} failed authentication: different secret?"
                    ));
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
            (Side::Accept, Phase::Streaming, Frame::Batch { changes }) => {
                let origin = c.remote_id.clone();
                self.receive_batch(t, &origin, changes)
            }
            (
                Side::Accept,
                Phase::Streaming,
                Frame::SnapshotChunk {
                    upto,
                    chunk,
                    rows,
                    last,
                },
            ) => {
                let origin = c.remote_id.clone();
                if let Some(max) = rows.iter().map(|r| r.hlc).max() {
                    self.hlc
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .observe(max);
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
            (Side::Dial { peer }, Phase::Streaming, Frame::SnapshotAck { .. })
                if c.snap.is_some() =>
            {
                let peer = *peer;
                let snap = c.snap.as_mut().expect("guarded");
                snap.inflight = snap.inflight.saturating_sub(1);
                if snap.all_sent && snap.inflight == 0 {
                    let upto = snap.upto;
                    log::info(format_args!(
                        "snapshot to {} complete ({} rows)",
                        c.remote_id, snap.rows_sent
                    ));
                    c.snap = None;
                    c.next_send = upto;
                    c.acked = upto;
                    let remote = c.remote_id.clone();
                    if let Err(e) = self.journal.set_acked(&remote, upto) {
                        log::error(format_args!("{e}"));
                    }
                    self.status.with_peer(peer, |s| s.acked = upto);
                }
                Verdict::Continue
            }
            (_, Phase::Streaming, Frame::Members { members }) => {
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
            (_, _, f) => Verdict::Close(format!("unexpected {} frame", frame_name(&f))),
        }
    }

    fn flush(&mut self, t: Token) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        if matches!(c.phase, Phase::Connecting) {
            return;
        }
        if let Err(e) = c.write_now() {
            return self.close(t, Verdict::Close(format!("write: {e}")));
        }
        // Output only grows this far when the peer stops reading (we stop
        // producing batches at MAX_OUTBUF): bound the memory it can cost.
        if c.out.len() - c.out_pos > 2 * MAX_OUTBUF {
            return self.close(t, Verdict::Close("peer is not reading".into()));
        }
        let want_w = c.out_pos < c.out.len();
        if want_w != c.interest_writable {
            let interest = if want_w {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self.poll.registry().reregister(&mut c.sock, t, interest) {
                return self.close(t, Verdict::Close(format!("reregister: {e}")));
            }
            c.interest_writable = want_w;
        }
    }

    fn close(&mut self, t: Token, why: Verdict) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        let _ = deregister(self.poll.registry(), &mut c.sock);
        let (reason, refused) = match why {
            Verdict::Close(r) => (r, false),
            Verdict::Refused(r) => (r, true),
            Verdict::Continue => (String::new(), false),
        };
        match c.side {
            Side::Dial { peer } => {
                self.peers[peer].conn = None;
                self.schedule_retry(peer);
                if refused {
                    // Misconfiguration does not heal in milliseconds.
                    self.peers[peer].retry_at = Instant::now() + BACKOFF_MAX;
                }
                let was_up = matches!(c.phase, Phase::Streaming);
                self.status.with_peer(peer, |s| {
                    s.state = if refused {
                        PeerState::Refused
                    } else {
                        PeerState::Down
                    };
                    if !reason.is_empty() {
                        s.last_error = reason.clone();
                    }
                });
                if refused {
                    log::error(format_args!("peer {}: {reason}", self.peers[peer].text));
                } else if was_up {
                    log::warn(format_args!(
                        "lost peer {} ({}): {reason}",
                        c.remote_id, self.peers[peer].text
                    ));
                } else {
                    log::debug(format_args!("peer {}: {reason}", self.peers[peer].text));
                }
            }
            Side::Accept => {
                let from = c.addr.map_or_else(String::new, |a| format!(" from {a}"));
                if refused {
                    if let Some(n) = INCOMING_REFUSED.allow() {
                        log::error(format_args!(
                            "refused incoming connection{from}: {reason}{}",
                            suppressed(n)
                        ));
                    }
                } else if !c.remote_id.is_empty() {
                    log::debug(format_args!(
                        "incoming connection from {}{from} closed: {reason}",
                        c.remote_id
                    ));
                } else if c.got_bytes || reason != "closed by peer" {
                    // (One closed without sending a byte is a port probe.)
                    if let Some(n) = INCOMING_DROPPED.allow() {
                        log::warn(format_args!(
                            "dropped incoming connection{from} before it authenticated: {reason}{}",
                            suppressed(n)
                        ));
                    }
                }
            }
        }
    }

    fn publish_status(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now.duration_since(self.last_status) < Duration::from_millis(200) {
            return;
        }
        self.last_status = now;
        let last = self.status.counters.last_seq.load(Ordering::Relaxed);
        let wall = crate::hlc::wall_ms();
        for idx in 0..self.peers.len() {
            let acked = self.peers[idx]
                .conn
                .and_then(|t| self.conns.get(&t))
                .filter(|c| matches!(c.phase, Phase::Streaming))
                .map(|c| c.acked)
                .or_else(|| {
                    let id = &self.peers[idx].node_id;
                    (!id.is_empty()).then(|| self.journal.acked(id).unwrap_or(0))
                })
                .unwrap_or(0);
            let pending = last.saturating_sub(acked);
            let lag_ms = if pending > 0 {
                self.journal
                    .hlc_of(acked + 1)
                    .ok()
                    .flatten()
                    .map_or(0, |h| wall.saturating_sub(Hlc::millis(h)))
            } else {
                0
            };
            let (received, snap_received) = self
                .received_from
                .get(&self.peers[idx].node_id)
                .copied()
                .unwrap_or_default();
            self.status.with_peer(idx, |s| {
                s.acked = acked;
                s.pending = pending;
                s.lag_ms = lag_ms;
                s.received = received;
                s.snapshot_received = snap_received;
            });
        }
        if let Some(sh) = &self.shared {
            sh.write_status(&self.status.to_c());
        }
    }
}

/// " (N similar suppressed)" after a rate-limited line, when N > 0.
fn suppressed(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar suppressed)")
    }
}

fn deregister(r: &Registry, s: &mut TcpStream) -> io::Result<()> {
    r.deregister(s)
}
