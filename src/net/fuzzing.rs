//! A harness for the fuzz targets (`fuzz/fuzz_targets/handshake.rs`,
//! `session.rs`; built only with `--cfg fuzzing` and in tests): one real
//! [`Net`] whose connections are fed what a peer sends through the same
//! path as socket reads (`conn_event`), so the handshake, the Noise
//! session and the frame decoding run exactly as in a node. The peer
//! end is played here, either wholly by the fuzzer's bytes or as an
//! honest peer (it knows the secret) up to where the fuzzer's bytes
//! take over.
//!
//! Every connection is a duplicate of one loopback socket pair (no new
//! TCP connection per input); what the node writes is read back from
//! the other end.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use mio::{Interest, Token};
use snow::TransportState;

use super::conn::{Conn, Phase, Side, Verdict};
use super::Net;
use crate::config::RawConfig;
use crate::journal::Journal;
use crate::queue::Shared;
use crate::status::Status;
use crate::wire::session::{self, ChunkReader};
use crate::wire::{Frame, FrameReader, MAGIC};

/// The secret of the node under test and of the honest peer.
pub const SECRET: &[u8] = b"fuzzing secret, not a real one";
/// The honest peer's node id.
pub const PEER_ID: &str = "fz";
/// Inputs between two fresh nodes: state learned from inputs that got
/// through the handshake (members, positions) stays bounded.
const RUNS_PER_NODE: u64 = 500;

/// Which end of a connection the node under test is.
#[derive(Clone, Copy, Debug)]
pub enum NodeIs {
    /// It accepted the connection: the peer dials.
    Acceptor,
    /// It dialed its configured peer: the peer accepts.
    Dialer,
}

pub struct Harness {
    net: Option<Net>,
    _notify: crossbeam_channel::Receiver<()>,
    notify: crossbeam_channel::Sender<()>,
    /// The node's end (duplicated into each connection) and the peer's.
    node_end: TcpStream,
    peer_end: TcpStream,
    peer_addr: SocketAddr,
    dir: PathBuf,
    runs: u64,
    conn: Option<Token>,
    /// What the node wrote on the current connection, not yet parsed.
    from_node: ChunkReader,
}

impl Harness {
    pub fn new() -> io::Result<Harness> {
        crate::log::set_sink(|_, _| true);
        let l = TcpListener::bind("127.0.0.1:0")?;
        let node_end = TcpStream::connect(l.local_addr()?)?;
        let (peer_end, peer_addr) = l.accept()?;
        node_end.set_nonblocking(true)?;
        peer_end.set_nonblocking(true)?;
        // Every piece readable at once (no Nagle delay).
        node_end.set_nodelay(true)?;
        peer_end.set_nodelay(true)?;
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("sersync-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (notify, rx) = crossbeam_channel::bounded(1);
        let mut h = Harness {
            net: None,
            _notify: rx,
            notify,
            node_end,
            peer_end,
            peer_addr,
            dir,
            runs: 0,
            conn: None,
            from_node: ChunkReader::default(),
        };
        h.fresh_node()?;
        Ok(h)
    }

    fn fresh_node(&mut self) -> io::Result<()> {
        self.net = None;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join("j.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let cfg = RawConfig {
            node_id: "node".into(),
            // Never bound: the harness hands connections in itself.
            listen: "tcp:127.0.0.1:9".into(),
            peers: vec!["tcp:127.0.0.2:9".into()],
            secret: SECRET.to_vec(),
            journal: path.display().to_string(),
            ..Default::default()
        }
        .check()
        .map_err(|e| io::Error::other(e.to_string()))?;
        let journal = Journal::open(&path).map_err(|e| io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared::create(64).map_err(|e| io::Error::other(e.to_string()))?);
        let status = Arc::new(Status::new("node"));
        let (_, from_ingest) = crate::handoff::handoff(0);
        let (net, _waker) = Net::new(
            Arc::new(cfg),
            status,
            journal,
            self.notify.clone(),
            shared,
            from_ingest,
        )?;
        self.net = Some(net);
        Ok(())
    }

    fn net(&mut self) -> &mut Net {
        self.net.as_mut().expect("built in new")
    }

    /// Starts a connection with the node as `side`: as an acceptor it has
    /// queued its challenge; as a dialer it awaits one.
    pub fn open(&mut self, side: NodeIs) -> io::Result<()> {
        self.finish();
        let addr = self.peer_addr;
        let net = self.net.as_mut().expect("built in new");
        let mut sock = mio::net::TcpStream::from_std(self.node_end.try_clone()?);
        let t = net.token();
        net.poll
            .registry()
            .register(&mut sock, t, Interest::READABLE)?;
        let c = match side {
            NodeIs::Acceptor => net.accepted(sock, addr),
            NodeIs::Dialer => {
                net.peers[0].conn = Some(t);
                Conn::new(sock, Side::Dial { peer: 0 }, Phase::AwaitChallenge)
            }
        };
        net.conns.insert(t, c);
        net.flush(t);
        self.conn = Some(t);
        Ok(())
    }

    /// Is the current connection still open?
    pub fn is_open(&self) -> bool {
        self.conn
            .is_some_and(|t| self.net.as_ref().is_some_and(|n| n.conns.contains_key(&t)))
    }

    /// Has the current connection completed its handshake?
    pub fn authenticated(&self) -> bool {
        match (self.conn, &self.net) {
            (Some(t), Some(n)) => n.conns.get(&t).is_some_and(Conn::is_authenticated),
            _ => false,
        }
    }

    /// The peer sends `bytes`, `piece` bytes at a time, each piece read by
    /// the node as from its socket. Stops when the node closes.
    pub fn send(&mut self, bytes: &[u8], piece: usize) {
        for part in bytes.chunks(piece.max(1)) {
            if !self.is_open() {
                return;
            }
            let mut at = 0;
            while at < part.len() {
                match self.peer_end.write(&part[at..]) {
                    Ok(n) => at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.node_reads();
                        self.drain_from_node();
                        if !self.is_open() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            self.node_reads();
        }
    }

    fn node_reads(&mut self) {
        if let Some(t) = self.conn {
            self.net().conn_event(t, true, false);
        }
    }

    /// Reads what the node wrote so far into `from_node`.
    fn drain_from_node(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.peer_end.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => self.from_node.extend(&buf[..n]),
            }
        }
    }

    /// The next clear frame the node wrote (its challenge, or a refusal).
    fn clear_frame_from_node(&mut self) -> Option<Frame> {
        self.drain_from_node();
        let mut r = FrameReader::new();
        r.extend(self.from_node.peek());
        let f = r.next_frame().ok().flatten()?;
        let rest = r.take_rest();
        let used = self.from_node.buffered() - rest.len();
        self.from_node.consume(used);
        Some(f)
    }

    /// The node is the acceptor: the peer answers its challenge as an
    /// honest dialer would (opening, first handshake message), with
    /// `hello` as the message's payload; None: `hello` is a valid hello
    /// of [`PEER_ID`]. Gives the peer's session if the node answered the
    /// handshake.
    pub fn dial_session(&mut self, hello: Option<&[u8]>, piece: usize) -> Option<TransportState> {
        let challenge = self.clear_frame_from_node()?;
        let opening = session::opening();
        let psk = session::psk(SECRET);
        let mut hs = session::initiator(&psk, &session::prologue(&challenge, &opening)).ok()?;
        let valid;
        let payload = match hello {
            Some(p) => p,
            None => {
                let mut v = Vec::new();
                crate::codec::encode_into(
                    &Frame::Hello {
                        magic: MAGIC,
                        version: crate::wire::version::NEWEST,
                        node_id: PEER_ID.into(),
                        listen: "tcp:127.0.0.3:9".into(),
                        nonce: [0; 32],
                        tag: [0; 32],
                    },
                    &mut v,
                )
                .ok()?;
                valid = v;
                &valid
            }
        };
        let mut out = opening.to_vec();
        session::write_handshake(&mut hs, payload, &mut out).ok()?;
        self.send(&out, piece);
        self.drain_from_node();
        let answer = self.from_node.next_chunk()?.to_vec();
        let mut scratch = [0u8; session::MAX_HANDSHAKE_CHUNK];
        hs.read_message(&answer, &mut scratch).ok()?;
        hs.into_transport_mode().ok()
    }

    /// The node is the dialer: the peer sends an honest acceptor's
    /// challenge, answers the node's first handshake message, and, if
    /// `welcome`, sends a valid welcome sealed. Gives the peer's session.
    pub fn accept_session(&mut self, welcome: bool, piece: usize) -> Option<TransportState> {
        let challenge = self.challenge(piece)?;
        self.drain_from_node();
        let head = self.from_node.peek();
        if head.len() < session::OPENING_LEN || head[..session::OPENING_LEN] != session::opening() {
            return None;
        }
        let prologue = session::prologue(&challenge, &head[..session::OPENING_LEN]);
        self.from_node.consume(session::OPENING_LEN);
        let first = self.from_node.next_chunk()?.to_vec();
        let mut hs = session::responder(&session::psk(SECRET), &prologue).ok()?;
        let mut scratch = [0u8; session::MAX_HANDSHAKE_CHUNK];
        hs.read_message(&first, &mut scratch).ok()?;
        let mut out = Vec::new();
        session::write_handshake(&mut hs, &[], &mut out).ok()?;
        let mut ts = hs.into_transport_mode().ok()?;
        if welcome {
            let session = self.net().session_for("node", session::SESSION_VERSION);
            let mut plain = Vec::new();
            Frame::WelcomeV2 {
                tag: [0; 32],
                resume_after: 0,
                snapshot: None,
                session,
            }
            .write_to(&mut plain)
            .ok()?;
            session::seal(&mut ts, &plain, &mut out).ok()?;
        }
        self.send(&out, piece);
        Some(ts)
    }

    /// The node is the dialer: the peer sends an honest acceptor's
    /// challenge, then `answer` (where the node awaits the answer to its
    /// first handshake message).
    pub fn accept_session_then(&mut self, answer: &[u8], piece: usize) {
        if self.challenge(piece).is_some() {
            self.send(answer, piece);
        }
    }

    /// Sends an acceptor's challenge; gives it.
    fn challenge(&mut self, piece: usize) -> Option<Frame> {
        let challenge = Frame::Challenge {
            magic: MAGIC,
            version: session::SESSION_VERSION,
            node_id: PEER_ID.into(),
            nonce: [7; 32],
        };
        let mut out = Vec::new();
        challenge.write_to(&mut out).ok()?;
        self.send(&out, piece);
        Some(challenge)
    }

    /// Ends the current connection (the node closes it, as on a peer's
    /// close) and empties both ends of the socket for the next.
    pub fn finish(&mut self) {
        if let Some(t) = self.conn.take() {
            self.node_reads();
            let net = self.net();
            if net.conns.contains_key(&t) {
                net.close(t, Verdict::Close("closed by peer".into()));
            }
        }
        self.drain_from_node();
        self.from_node = ChunkReader::default();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = self.node_end.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        self.runs += 1;
        let grown = self.net.as_ref().is_some_and(|n| n.peers.len() > 1);
        if grown || self.runs % RUNS_PER_NODE == 0 {
            if let Err(e) = self.fresh_node() {
                panic!("cannot start a fresh node for fuzzing: {e}");
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.net = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Splits `data` into chunk bodies: each a u16 BE length, then that many
/// bytes (the last one takes what is left).
pub fn chunk_bodies(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = (u16::from_be_bytes([data[0], data[1]]) as usize).min(session::MAX_PLAIN);
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// Seals each body as one chunk of `ts`.
pub fn seal_each(ts: &mut TransportState, bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bodies {
        let _ = session::seal(ts, b, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reaches the node's session: an honest peer gets
    /// through the handshake either way, and its sealed frames are
    /// decoded; forged bytes close the connection.
    #[test]
    fn an_honest_peer_gets_through_and_a_forger_does_not() {
        let mut h = Harness::new().unwrap();
        h.open(NodeIs::Acceptor).unwrap();
        let mut ts = h.dial_session(None, 7).expect("handshake");
        assert!(h.authenticated());
        let mut plain = Vec::new();
        Frame::Members { members: vec![] }
            .write_to(&mut plain)
            .unwrap();
        let sealed = seal_each(&mut ts, &[&plain]);
        h.send(&sealed, 3);
        assert!(h.is_open());
        h.send(&[0, 20, 1, 2, 3], 100);
        h.send(&[0; 20], 100);
        assert!(!h.is_open(), "a forged chunk closes the session");

        h.open(NodeIs::Dialer).unwrap();
        let _ts = h.accept_session(true, 5).expect("handshake");
        assert!(h.authenticated(), "the welcome got through");

        h.open(NodeIs::Acceptor).unwrap();
        let _ = h.dial_session(Some(b"not a hello"), 100);
        assert!(!h.is_open(), "a session without a hello closes");

        h.open(NodeIs::Acceptor).unwrap();
        h.send(b"SSYN\0\x04\0\x30", 100);
        h.send(&[0x55; 0x30], 1);
        assert!(!h.is_open(), "a forged first message closes");
    }
}
