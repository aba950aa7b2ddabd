//! One connection: its socket, frame reader and output buffer, and where
//! it stands in the handshake. A dialed connection carries this node's
//! journal to a peer; an accepted one carries a peer's changes here.

use std::io::{self, Write};
use std::time::Instant;

use mio::net::TcpStream;

use super::check::{CheckIn, CheckOut};
use super::snapshot::SnapSend;
use super::{ACK_TIMEOUT, HANDSHAKE_TIMEOUT, IDLE_TIMEOUT};
use crate::log;
use crate::wire::auth::Nonce;
use crate::wire::session::{self, ChunkReader, MAX_CHUNK, MAX_HANDSHAKE_CHUNK, OPENING_LEN};
use crate::wire::{Frame, FrameReader, HANDSHAKE_MAX_FRAME, MAX_FRAME};

/// Where a connection stands in protocol v4's encryption (see
/// [`crate::wire::session`]).
pub(super) enum Crypto {
    /// Frames in clear: the acceptor's challenge; peers of v3 or older
    /// (`accept_clear_peers`).
    Clear,
    /// Acceptor: not yet told by the dialer's first bytes whether it
    /// speaks sessions (an opening) or clear frames (a v3 hello).
    Undecided,
    /// Acceptor: the dialer's opening came; awaiting its first handshake
    /// message. Holds the prologue.
    Opened(Vec<u8>),
    /// Dialer: first handshake message sent, awaiting the answer.
    Handshake(Box<snow::HandshakeState>),
    /// Every byte from here on is a chunk of the session.
    Session(Box<snow::TransportState>),
}

pub(super) enum Phase {
    /// Dialer: TCP connect in progress.
    Connecting,
    /// Dialer: waiting for the acceptor's challenge.
    AwaitChallenge,
    /// Dialer: hello sent, waiting for welcome.
    AwaitWelcome {
        nonce_a: Nonce,
        nonce_d: Nonce,
    },
    /// Acceptor: challenge sent, waiting for hello.
    AwaitHello {
        nonce_a: Nonce,
    },
    Streaming,
}

pub(super) enum Side {
    Dial { peer: usize },
    Accept,
}

pub(super) struct Conn {
    pub(super) sock: TcpStream,
    pub(super) side: Side,
    pub(super) phase: Phase,
    pub(super) reader: FrameReader,
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) remote_id: String,
    /// Accepted connections: the remote address, for log lines.
    pub(super) addr: Option<std::net::SocketAddr>,
    /// Some byte has been received on this connection.
    pub(super) got_bytes: bool,
    pub(super) deadline: Option<Instant>,
    pub(super) last_rx: Instant,
    /// Dialer streaming: since when output has been outstanding (waiting
    /// for acknowledgements); see ACK_TIMEOUT.
    pub(super) ack_wait_from: Instant,
    // Dialer streaming state: next_send is the last sequence sent.
    pub(super) next_send: u64,
    pub(super) acked: u64,
    pub(super) interest_writable: bool,
    /// Dialer: a snapshot being sent before the journal stream.
    pub(super) snap: Option<SnapSend>,
    /// The protocol version of this connection: the oldest spoken until
    /// the handshake chose one. Nothing newer is ever queued on it.
    pub(super) version: u16,
    /// Dialer: the newest version its hello stated.
    pub(super) hello_version: u16,
    /// Dialer: the peer check in progress (`check.rs`).
    pub(super) check_out: Option<CheckOut>,
    /// Acceptor: the check answered last, and when one was last answered.
    pub(super) check_in: Option<CheckIn>,
    pub(super) check_in_last: Option<Instant>,
    /// Acceptor: when a resync's check was last answered; dialer: when
    /// one was last sent (`resync.rs`).
    pub(super) resync_in_last: Option<Instant>,
    pub(super) resync_out_last: Option<Instant>,
    pub(super) crypto: Crypto,
    /// Session bytes not yet decrypted.
    pub(super) raw: ChunkReader,
    /// A frame being encoded before it is sealed (reused).
    pub(super) plain: Vec<u8>,
    /// The challenge this connection's handshake is bound to (acceptor:
    /// the one it sent; dialer: the one received).
    pub(super) challenge: Option<Frame>,
    /// The peer's (incarnation, run id), once its session told them
    /// (protocol v2 on; see identity.rs).
    pub(super) run: Option<(u64, u64)>,
    /// Where the peer runs: the address dialed, or the one its hello
    /// advertised.
    pub(super) address: String,
}

/// What a handler decides about its connection.
pub(super) enum Verdict {
    Continue,
    Close(String),
    /// Refused: a state worth showing in status and not retrying fast.
    Refused(String),
}

pub(super) fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Challenge { .. } => "challenge",
        Frame::Hello { .. } => "hello",
        Frame::Welcome { .. } => "welcome",
        Frame::Refuse { .. } => "refuse",
        Frame::Batch { .. } => "batch",
        Frame::Ack { .. } => "ack",
        Frame::TempFail { .. } => "temporary-failure",
        Frame::SnapshotChunk { .. } => "snapshot-chunk",
        Frame::SnapshotAck { .. } => "snapshot-ack",
        Frame::Members { .. } => "members",
        Frame::WelcomeV2 { .. } => "welcome-v2",
        Frame::DialerSession { .. } => "dialer-session",
        Frame::RawBatch { .. } => "raw-batch",
        Frame::CheckDigest { .. } => "check-digest",
        Frame::CheckVersions { .. } => "check-versions",
        Frame::CheckRows { .. } => "check-rows",
    }
}

impl Conn {
    pub(super) fn new(sock: TcpStream, side: Side, phase: Phase) -> Conn {
        let now = Instant::now();
        Conn {
            sock,
            side,
            phase,
            reader: FrameReader::with_limit(HANDSHAKE_MAX_FRAME),
            out: Vec::new(),
            out_pos: 0,
            remote_id: String::new(),
            addr: None,
            got_bytes: false,
            deadline: Some(now + HANDSHAKE_TIMEOUT),
            last_rx: now,
            ack_wait_from: now,
            next_send: 0,
            acked: 0,
            interest_writable: false,
            snap: None,
            version: crate::wire::version::OLDEST,
            hello_version: crate::wire::version::OLDEST,
            check_out: None,
            check_in: None,
            check_in_last: None,
            resync_in_last: None,
            resync_out_last: None,
            crypto: Crypto::Clear,
            raw: ChunkReader::default(),
            plain: Vec::new(),
            challenge: None,
            run: None,
            address: String::new(),
        }
    }

    /// The handshake is done: frames up to [`MAX_FRAME`] from now on, no
    /// handshake deadline.
    pub(super) fn authenticated(&mut self) {
        self.phase = Phase::Streaming;
        self.deadline = None;
        self.reader.set_limit(MAX_FRAME);
    }

    /// Has this connection completed its handshake?
    pub(super) fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Streaming)
    }

    /// How many bytes the next read may take: unbounded (a 64 KiB read
    /// buffer) once authenticated, before it only what completes a
    /// handshake frame.
    pub(super) fn read_room(&self) -> usize {
        if self.is_authenticated() {
            return usize::MAX;
        }
        match self.crypto {
            Crypto::Clear => (HANDSHAKE_MAX_FRAME + 4).saturating_sub(self.reader.buffered()),
            Crypto::Undecided | Crypto::Opened(_) | Crypto::Handshake(_) => {
                (OPENING_LEN + 2 + MAX_HANDSHAKE_CHUNK).saturating_sub(self.raw.buffered())
            }
            // The dialer, between the handshake and the welcome.
            Crypto::Session(_) => (MAX_CHUNK + 2).saturating_sub(self.raw.buffered()),
        }
    }

    /// Is this connection an encrypted session (protocol v4)?
    pub(super) fn in_session(&self) -> bool {
        matches!(self.crypto, Crypto::Session(_))
    }

    /// Queues `f`, unless this connection's version does not have it:
    /// the one check that a peer is never sent what it cannot decode.
    pub(super) fn send(&mut self, f: &Frame) {
        if f.since() > self.version {
            log::error(format_args!(
                "not sending a {} frame (protocol v{}) on a v{} connection to {}",
                frame_name(f),
                f.since(),
                self.version,
                self.remote_id
            ));
            return;
        }
        let res = match &mut self.crypto {
            Crypto::Session(t) => {
                self.plain.clear();
                f.write_to(&mut self.plain)
                    .and_then(|()| session::seal(t, &self.plain, &mut self.out))
            }
            _ => f.write_to(&mut self.out),
        };
        if let Err(e) = res {
            log::error(format_args!("cannot encode {} frame: {e}", frame_name(f)));
        }
    }

    /// Writes buffered output until the socket would block.
    pub(super) fn write_now(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "socket closed")),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > (1 << 20) {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Why this connection has waited too long at `now` (handshake, an
    /// idle inbound link, a peer that stopped acknowledging), if it has.
    pub(super) fn overdue(&mut self, now: Instant) -> Option<String> {
        let why = if self.deadline.is_some_and(|d| now >= d) {
            match self.phase {
                Phase::AwaitHello { .. } => {
                    format!("sent no hello within {} s", HANDSHAKE_TIMEOUT.as_secs())
                }
                _ => "handshake timed out".to_string(),
            }
        } else if matches!(self.side, Side::Accept)
            && now.duration_since(self.last_rx) > IDLE_TIMEOUT
        {
            format!("nothing received for {} s", IDLE_TIMEOUT.as_secs())
        } else if matches!(self.side, Side::Dial { .. }) && matches!(self.phase, Phase::Streaming) {
            let waiting = self.next_send > self.acked
                || self.snap.as_ref().is_some_and(|s| s.inflight > 0)
                || self.out_pos < self.out.len();
            if !waiting {
                self.ack_wait_from = now;
                return None;
            }
            if now.duration_since(self.ack_wait_from.max(self.last_rx)) <= ACK_TIMEOUT {
                return None;
            }
            format!(
                "acknowledged nothing for {} s with {} records and {} bytes outstanding: not reading",
                ACK_TIMEOUT.as_secs(),
                self.next_send - self.acked,
                self.out.len() - self.out_pos
            )
        } else {
            return None;
        };
        Some(why)
    }

    /// Tells the peer why it is refused (best effort: the connection
    /// closes next) and gives the verdict logged here.
    pub(super) fn refuse(&mut self, to_peer: impl Into<String>, here: String) -> Verdict {
        self.send(&Frame::Refuse {
            reason: to_peer.into(),
        });
        let _ = self.write_now();
        Verdict::Refused(here)
    }
}
