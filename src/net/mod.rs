//! The network thread: one mio loop owning every peer connection.
//!
//! Dialed connections carry this node's journal to a peer (this side
//! sends `Batch`es, the peer acknowledges); accepted connections carry a
//! peer's changes here (this side stages them durably in the journal, then
//! acknowledges). See [`crate::wire`] for the protocol.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use crate::config::Config;
use crate::handoff::{FromIngest, NetCmd};
use crate::journal::Journal;
use crate::log::{self, RateLimit};
use crate::status::{PeerState, Status};
use crate::wire::auth;
use crate::wire::version::NEWEST;
use crate::wire::{Frame, MAGIC, VERSION};

mod check;
mod clock;
mod conn;
mod dispatch;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod identity;
mod inbound;
mod incarnation;
mod members;
mod outbound;
mod resync;
mod session;
mod snapshot;
mod trim;

use conn::{Conn, Phase, Side, Verdict};
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
/// A connection that has not authenticated within this is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted connections that have not authenticated yet: at most this
/// many in all (beyond it the oldest is dropped for the newest), and at
/// most MAX_PENDING_PER_SOURCE from one IP address (beyond it a new one
/// is closed at once). A member has one such connection at a time while
/// it dials; each costs at most a handshake's bytes (HANDSHAKE_MAX_FRAME)
/// and a descriptor, for at most HANDSHAKE_TIMEOUT.
const MAX_PENDING: usize = 128;
const MAX_PENDING_PER_SOURCE: usize = 8;
/// accept() failed for want of descriptors: from then on, at most as
/// many unauthenticated connections as were open then, less
/// ACCEPT_RESERVE (never fewer than MAX_PENDING_PER_SOURCE), so that the
/// descriptors a stranger would take stay free for dials, the journal
/// and SER's RPC door (two descriptors a call). Accepting goes on, each
/// new connection dropping the oldest (see `admit`).
const ACCEPT_RESERVE: usize = 4;
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
/// TRIM_CHUNK at a time each TICK (rounded up to the end of a log batch),
/// so that a trim never holds the journal (and with it sending and
/// staging) for long.
const TRIM_EVERY: Duration = Duration::from_secs(5);
const TRIM_CHUNK: u64 = 2000;
/// A pass through the state for expired keys starts at most this often
/// (with a trim target, every TRIM_EVERY) and looks at PURGE_CHUNK keys
/// per TICK: 1,000,000 keys in 50 s.
const PURGE_EVERY: Duration = Duration::from_secs(60);
const PURGE_CHUNK: usize = 2000;
/// Acknowledged positions reach the journal at most this often: losing
/// the last ones in a crash only means resending what the peer skips.
const ACK_SAVE_EVERY: Duration = Duration::from_millis(500);

pub struct Net {
    cfg: Arc<Config>,
    status: Arc<Status>,
    journal: Journal,
    apply_notify: Sender<()>,
    poll: Poll,
    listener: Option<TcpListener>,
    listen_retry_at: Instant,
    /// accept() failed for want of descriptors: try again then.
    accept_again_at: Option<Instant>,
    /// At most this many accepted connections that have not authenticated
    /// (MAX_PENDING, less once descriptors ran out: ACCEPT_RESERVE).
    pending_cap: usize,
    peers: Vec<Peer>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// The shared region: the node's clock and the status area.
    shared: Arc<crate::queue::Shared>,
    last_status: Instant,
    last_trim: Instant,
    last_trim_chunk: Instant,
    last_keepalive: Instant,
    /// Journal entries up to this may go (see TRIM_EVERY).
    trim_target: u64,
    /// Where the pass through the state purging expired keys goes on
    /// (the last key looked at); None between passes.
    purge_from: Option<Vec<u8>>,
    /// When the last pass started; None before the first.
    last_purge_pass: Option<Instant>,
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
    /// What the ingest stage committed and asked for.
    ingest: FromIngest,
    /// This run's incarnation and run id (see incarnation.rs).
    incarnation: u64,
    run: u64,
    /// The incarnation changed: every connection starts again.
    reconnect_all: bool,
    /// The pre-shared keys of the secrets accepted; the first dials.
    psks: Vec<[u8; 32]>,
    /// Decrypted chunks pass through it (reused).
    scratch: Vec<u8>,
    /// When the last peer check started, and the last check's number.
    last_check: Instant,
    next_check: u64,
    /// Per origin: the first sequence of a batch refused for clock skew,
    /// and why; later batches are refused with it (see clock.rs).
    skew_hold: HashMap<String, (u64, String)>,
    /// Per node id: runs replaced, runs refused as clones (identity.rs).
    runs: HashMap<String, identity::Runs>,
    /// The `sersync.resync` in progress (resync.rs).
    resync: Option<resync::Run>,
}

static STAGE_ERR: RateLimit = RateLimit::new(1000);
/// Incoming connections refused or dropped before they authenticated: a
/// flood of them (a port scan, a misconfigured client) logs once a second.
static INCOMING_REFUSED: RateLimit = RateLimit::new(1000);
static INCOMING_DROPPED: RateLimit = RateLimit::new(1000);
static INCOMING_CAPPED: RateLimit = RateLimit::new(1000);
static ACCEPT_FAILED: RateLimit = RateLimit::new(1000);

impl Net {
    pub fn new(
        cfg: Arc<Config>,
        status: Arc<Status>,
        journal: Journal,
        apply_notify: Sender<()>,
        shared: Arc<crate::queue::Shared>,
        ingest: FromIngest,
    ) -> io::Result<(Net, Arc<Waker>)> {
        let mut journal = journal;
        let incarnation = incarnation::begin(&mut journal)
            .map_err(|e| io::Error::other(format!("saving this run's incarnation: {e}")))?;
        status.incarnation.store(incarnation, Ordering::Relaxed);
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let now = Instant::now();
        let (peers, forgotten) = members::initial(&cfg, &journal, now);
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
        let psks = cfg
            .secrets
            .iter()
            .map(|s| crate::wire::session::psk(s))
            .collect();
        let net = Net {
            cfg,
            status,
            journal,
            apply_notify,
            poll,
            listener: None,
            listen_retry_at: now,
            accept_again_at: None,
            pending_cap: MAX_PENDING,
            peers,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            shared,
            last_status: now - TICK,
            last_trim: now,
            last_trim_chunk: now,
            last_keepalive: now,
            trim_target: 0,
            purge_from: None,
            last_purge_pass: None,
            acks_unsaved: HashMap::new(),
            last_ack_save: now,
            received_from: HashMap::new(),
            forgotten,
            members_dirty: false,
            ingest,
            incarnation,
            run: incarnation::fresh_run(),
            reconnect_all: false,
            last_check: now,
            next_check: 0,
            skew_hold: HashMap::new(),
            runs: HashMap::new(),
            resync: None,
            psks,
            scratch: Vec::new(),
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
            while let Ok(cmd) = self.ingest.cmds.try_recv() {
                match cmd {
                    NetCmd::Forget(id) => self.forget(&id),
                    NetCmd::Resync(id) => self.start_resync(id),
                }
            }
            if std::mem::take(&mut self.reconnect_all) {
                for t in self.conns.keys().copied().collect::<Vec<_>>() {
                    self.close(t, Verdict::Close("this node's incarnation changed".into()));
                }
            }
            if self.accept_again_at.is_some_and(|at| Instant::now() >= at) {
                self.accept_all();
            }
            self.timers();
            self.start_checks();
            self.drive_resync();
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

    /// Accepts every pending connection, within the caps on connections
    /// that have not authenticated (see MAX_PENDING).
    fn accept_all(&mut self) {
        self.accept_again_at = None;
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((mut sock, addr)) => {
                    self.admit(addr);
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
                    let c = self.accepted(sock, addr);
                    log::debug(format_args!("accepted connection from {addr}"));
                    self.conns.insert(t, c);
                    self.flush(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the
                    // connection stays in the backlog, and the listener,
                    // edge-triggered, would not say so again. Fewer
                    // strangers from now on (ACCEPT_RESERVE), the
                    // descriptors of the oldest freed now, and try again
                    // next turn: no spinning, dials and the rest go on.
                    let pending = self.pending_count();
                    self.pending_cap = pending
                        .saturating_sub(ACCEPT_RESERVE)
                        .clamp(MAX_PENDING_PER_SOURCE, self.pending_cap);
                    if let Some(n) = ACCEPT_FAILED.allow() {
                        log::error(format_args!(
                            "cannot accept connections: {e}; at most {} connections \
                             that have not authenticated from now on; retrying every {} ms{}",
                            self.pending_cap,
                            TICK.as_millis(),
                            suppressed(n)
                        ));
                    }
                    for _ in self.pending_cap.min(pending.saturating_sub(1))..pending {
                        let Some(oldest) = self.oldest_pending() else {
                            break;
                        };
                        self.close(oldest, Verdict::Close("dropped: out of descriptors".into()));
                    }
                    self.accept_again_at = Some(Instant::now() + TICK);
                    return;
                }
            }
        }
    }

    /// A connection just accepted from `addr`, its challenge queued.
    fn accepted(&self, sock: TcpStream, addr: std::net::SocketAddr) -> Conn {
        let nonce_a = auth::fresh_nonce();
        let mut c = Conn::new(sock, Side::Accept, Phase::AwaitHello { nonce_a });
        c.addr = Some(addr);
        // The challenge states the oldest version this node speaks: v4
        // (sessions only) unless clear peers are served.
        let challenge = Frame::Challenge {
            magic: MAGIC,
            version: if self.cfg.accept_clear_peers {
                VERSION
            } else {
                crate::wire::session::SESSION_VERSION
            },
            node_id: self.cfg.node_id.clone(),
            nonce: nonce_a,
        };
        c.send(&challenge);
        c.challenge = Some(challenge);
        c.crypto = conn::Crypto::Undecided;
        c
    }

    /// Makes room for a connection from `addr` among those that have not
    /// authenticated: at most MAX_PENDING_PER_SOURCE from its address and
    /// MAX_PENDING in all, the oldest dropped for the newest. (Dropping
    /// the newest instead would let a stranger holding its quota keep out
    /// a member dialing from the same address; this way it must open
    /// connections faster than a member completes a handshake.)
    fn admit(&mut self, addr: std::net::SocketAddr) {
        let (mut all, mut same) = (0usize, 0usize);
        let (mut oldest_all, mut oldest_same) = (None, None);
        for (t, c) in &self.conns {
            if matches!(c.side, Side::Accept) && !c.is_authenticated() {
                all += 1;
                oldest_all = Some(oldest_all.map_or(*t, |o: Token| o.min(*t)));
                if c.addr.is_some_and(|a| a.ip() == addr.ip()) {
                    same += 1;
                    oldest_same = Some(oldest_same.map_or(*t, |o: Token| o.min(*t)));
                }
            }
        }
        let (victim, why) = if same >= MAX_PENDING_PER_SOURCE {
            (
                oldest_same,
                format!(
                    "{same} connections from {} have not authenticated (at most \
                     {MAX_PENDING_PER_SOURCE}): dropping the oldest",
                    addr.ip()
                ),
            )
        } else if all >= self.pending_cap {
            (
                oldest_all,
                format!(
                    "{all} incoming connections have not authenticated (at most \
                     {}): dropping the oldest",
                    self.pending_cap
                ),
            )
        } else {
            return;
        };
        if let Some(n) = INCOMING_CAPPED.allow() {
            log::warn(format_args!("{why}{}", suppressed(n)));
        }
        if let Some(t) = victim {
            self.close(
                t,
                Verdict::Close("dropped for a newer unauthenticated connection".into()),
            );
        }
    }

    /// Accepted connections that have not authenticated yet.
    fn pending_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| matches!(c.side, Side::Accept) && !c.is_authenticated())
            .count()
    }

    /// The accepted connection that has waited longest for a handshake.
    fn oldest_pending(&self) -> Option<Token> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.side, Side::Accept) && !c.is_authenticated())
            .map(|(t, _)| *t)
            .min()
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
                c.address = self.peers[idx].text.clone();
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
            if let Some(why) = c.overdue(now) {
                expired.push((*t, why));
            }
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
                // Before authentication a connection holds at most what a
                // handshake needs; more is not read, and closes it.
                let room = c.read_room().min(buf.len());
                if room == 0 {
                    return self
                        .close(t, Verdict::Close("sent more than a handshake needs".into()));
                }
                match c.sock.read(&mut buf[..room]) {
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
                        if let Verdict::Close(_) | Verdict::Refused(_) =
                            self.take_bytes(t, &buf[..n])
                        {
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
        let why = self.session_refused(&c, why);
        let (reason, refused) = match why {
            Verdict::Close(r) => (r, false),
            Verdict::Refused(r) => (r, true),
            Verdict::Continue => (String::new(), false),
        };
        // status: incoming connections that end before their handshake
        // (a port probe, closed by the other side without a byte, aside)
        if matches!(c.side, Side::Accept)
            && !c.is_authenticated()
            && (refused || c.got_bytes || reason != "closed by peer")
        {
            let n = &self.status.counters.preauth_refused;
            n.fetch_add(1, Ordering::Relaxed);
        }
        match c.side {
            Side::Dial { peer } => {
                self.peers[peer].conn = None;
                self.schedule_retry(peer);
                if refused {
                    // Misconfiguration does not heal in milliseconds.
                    self.peers[peer].retry_at = Instant::now() + BACKOFF_MAX;
                }
                let was_up = matches!(c.phase, Phase::Streaming);
                if was_up {
                    // It may come back upgraded: state the newest again.
                    self.peers[peer].hello_version = NEWEST;
                }
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
                if refused && !c.remote_id.is_empty() {
                    // A member, authenticated: its retries are paced.
                    log::error(format_args!(
                        "incoming link from {} at {}{from}: {reason}",
                        c.remote_id, c.address
                    ));
                } else if refused {
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
