//! A live engine facing hostile or broken peers: each is refused or
//! dropped, and replication between the real members goes on throughout.

#[path = "ports/mod.rs"]
mod ports;
use ports::{connect_when_listening, free_port};

#[path = "peer_support/mod.rs"]
mod peer;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peer::{challenge, read_frame, send, StuckMember};
use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};
use sersync::wire::version::{NEWEST, OLDEST};
use sersync::wire::{Frame, VERSION};

const SECRET: &[u8] = b"bad-peer-test-secret";

struct Count(Arc<Mutex<usize>>);

impl Sink for Count {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        *self.0.lock().unwrap() += records.len();
        Ok(())
    }
}

struct Pair {
    port1: u16,
    shared1: Arc<Shared>,
    applied2: Arc<Mutex<usize>>,
    engines: Vec<Engine>,
    _dirs: Vec<tempfile::TempDir>,
}

/// Node `id` on 127.0.0.1:`me` with one peer, its journal in `dir`.
fn config(id: &str, me: u16, peer: u16, dir: &std::path::Path) -> sersync::config::Config {
    RawConfig {
        node_id: id.into(),
        listen: format!("tcp:127.0.0.1:{me}"),
        peers: vec![format!("tcp:127.0.0.1:{peer}")],
        secret: SECRET.to_vec(),
        journal: dir.join("j.db").display().to_string(),
        accept_clear_peers: true,
        ..Default::default()
    }
    .check()
    .unwrap()
}

fn pair() -> Pair {
    let (p1, p2) = (free_port(), free_port());
    let mut engines = Vec::new();
    let mut dirs = Vec::new();
    let shared1 = Arc::new(Shared::create(1024).unwrap());
    let applied2 = Arc::new(Mutex::new(0));
    for (id, me, peer) in [("n1", p1, p2), ("n2", p2, p1)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(id, me, peer, dir.path());
        let (shared, sink) = if id == "n1" {
            (shared1.clone(), Count(Arc::default()))
        } else {
            (
                Arc::new(Shared::create(64).unwrap()),
                Count(applied2.clone()),
            )
        };
        engines.push(Engine::start(cfg, shared, Some(Box::new(sink))).unwrap());
        dirs.push(dir);
    }
    Pair {
        port1: p1,
        shared1,
        applied2,
        engines,
        _dirs: dirs,
    }
}

impl Pair {
    /// Publishes on n1 and waits until n2 applied it.
    fn replicates(&self, user: u32) {
        let before = *self.applied2.lock().unwrap();
        let c = Contact {
            domain: b"location".to_vec(),
            aor: format!("u{user}").into_bytes(),
            contact: format!("sip:u{user}@192.0.2.1").into_bytes(),
            ..Default::default()
        };
        self.shared1
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: c.as_ref(),
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while *self.applied2.lock().unwrap() <= before {
            assert!(
                Instant::now() < deadline,
                "replication stopped after a bad peer"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Connects to n1, waiting for its network thread to listen (it binds
    /// on its first turn, which a loaded machine may delay).
    fn connect(&self) -> TcpStream {
        let s = connect_when_listening(self.port1);
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s
    }
}

/// True once the engine has closed the connection.
fn closed_by_engine(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// A hello whose listen address is port 9, where nothing listens: a
/// member the engine learns from it is dialed in vain, which costs nothing.
fn hello(secret: &[u8], id: &str, acceptor: &str, nonce_a: &[u8; 32], version: u16) -> Frame {
    peer::hello(secret, id, acceptor, nonce_a, version, "tcp:127.0.0.1:9")
}

#[test]
fn garbage_oversize_and_truncated_input_close_only_that_connection() {
    let p = pair();
    p.replicates(0);
    // Random bytes.
    let mut s = p.connect();
    challenge(&mut s);
    s.write_all(&[
        0x13, 0x37, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .unwrap();
    assert!(closed_by_engine(&mut s));
    // A length prefix of 4 GiB: refused without allocating it.
    let mut s = p.connect();
    challenge(&mut s);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(closed_by_engine(&mut s));
    // A truncated frame, then the peer goes away.
    let mut s = p.connect();
    challenge(&mut s);
    let mut bytes = Vec::new();
    hello(SECRET, "x", "n1", &[0; 32], VERSION)
        .write_to(&mut bytes)
        .unwrap();
    s.write_all(&bytes[..bytes.len() / 2]).unwrap();
    drop(s);
    p.replicates(1);
    drop(p.engines);
}

#[test]
fn wrong_secret_replayed_handshake_and_unknown_version_are_refused() {
    let p = pair();
    // Another cluster's secret.
    let mut s = p.connect();
    let (id, nonce) = challenge(&mut s);
    send(
        &mut s,
        &hello(b"some-other-secret", "intruder", &id, &nonce, VERSION),
    );
    match read_frame(&mut s) {
        Some(Frame::Refuse { reason }) => assert!(reason.contains("authentication")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(closed_by_engine(&mut s));
    // A correct hello recorded from one connection, replayed on another:
    // the new challenge's nonce differs, so it no longer authenticates.
    let mut s = p.connect();
    let (id, nonce) = challenge(&mut s);
    let recorded = hello(SECRET, "n9", &id, &nonce, VERSION);
    send(&mut s, &recorded);
    assert!(
        matches!(read_frame(&mut s), Some(Frame::Welcome { .. })),
        "the original is accepted"
    );
    let mut s2 = p.connect();
    challenge(&mut s2);
    send(&mut s2, &recorded);
    assert!(
        matches!(read_frame(&mut s2), Some(Frame::Refuse { .. })),
        "the replay is refused"
    );
    // Only versions this engine does not speak: a hello states the newest
    // its dialer speaks, and v0 is older than any this engine speaks.
    let mut s = p.connect();
    let (id, nonce) = challenge(&mut s);
    send(&mut s, &hello(SECRET, "ancient", &id, &nonce, 0));
    match read_frame(&mut s) {
        Some(Frame::Refuse { reason }) => {
            let spoken = format!("protocol v{OLDEST} to v{NEWEST} only");
            assert!(reason.contains(&spoken), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(closed_by_engine(&mut s));
    // A dialer speaking a newer version than this engine is answered in
    // the newest both speak: in clear (no session), v3.
    let mut s = p.connect();
    let (id, nonce) = challenge(&mut s);
    send(&mut s, &hello(SECRET, "newer", &id, &nonce, 9));
    match read_frame(&mut s) {
        Some(Frame::WelcomeV2 { session, .. }) => assert_eq!(session.version, NEWEST - 1),
        other => panic!("expected a v{} welcome, got {other:?}", NEWEST - 1),
    }
    // Our own node id from elsewhere: a clash, refused.
    let mut s = p.connect();
    let (id, nonce) = challenge(&mut s);
    send(&mut s, &hello(SECRET, "n1", &id, &nonce, VERSION));
    match read_frame(&mut s) {
        Some(Frame::Refuse { reason }) => assert!(reason.contains("already taken")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    p.replicates(2);
    // Data before authentication gets nothing and closes the connection.
    let mut s = p.connect();
    challenge(&mut s);
    send(&mut s, &Frame::Batch { changes: vec![] });
    assert!(closed_by_engine(&mut s));
    p.replicates(3);
}

#[test]
fn a_silent_peer_is_dropped_after_the_handshake_timeout() {
    let p = pair();
    let mut s = p.connect();
    challenge(&mut s);
    let t0 = Instant::now();
    assert!(closed_by_engine(&mut s));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "dropped after {waited:?}"
    );
    p.replicates(4);
}

#[test]
fn a_member_that_never_reads_costs_a_bounded_output_and_is_dropped() {
    // n1's only peer completes the handshake and never reads. n1 has far
    // more to send than its limits: it must stop producing at its output
    // bound (8 MiB, well before its 20,000-record window with records this
    // large), then drop the peer after 30 s without an acknowledgement and
    // dial it again.
    let port = free_port();
    let stuck = StuckMember::start(("127.0.0.1", port), SECRET.to_vec(), "stuck");
    let dir = tempfile::tempdir().unwrap();
    let me = free_port();
    let cfg = config("n1", me, port, dir.path());
    let shared = Arc::new(Shared::create(1 << 15).unwrap());
    let engine = Engine::start(cfg, shared.clone(), Some(Box::new(Count(Arc::default())))).unwrap();
    let path = vec![b'p'; 1400];
    let total = 30_000u32;
    for user in 0..total {
        let c = Contact {
            domain: b"location".to_vec(),
            aor: format!("u{user}").into_bytes(),
            contact: format!("sip:u{user}@192.0.2.1").into_bytes(),
            path: path.clone(),
            ..Default::default()
        };
        while shared
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: c.as_ref(),
            })
            .is_err()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(
        shared.wait_durable(Duration::from_secs(60)),
        "not journaled"
    );
    let record_bytes = 1500u64;
    let t0 = Instant::now();
    let mut most_sent = 0;
    let mut dropped = false;
    while t0.elapsed() < Duration::from_secs(45) {
        let st = engine.status();
        let p = &st.peers[0];
        most_sent = most_sent.max(p.sent);
        if p.connects >= 2 {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stuck.accepted.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the engine never completed a connection to the member"
    );
    assert!(
        dropped,
        "a member that never reads was not dropped and dialed again within 45 s"
    );
    // What was handed to the socket: the output bound plus what the two
    // kernel socket buffers took, far below what there was to send.
    assert!(
        most_sent < 20_000 && most_sent * record_bytes < 24 << 20,
        "{most_sent} records (~{} MiB) queued for a member that reads nothing",
        (most_sent * record_bytes) >> 20
    );
    eprintln!(
        "never-reading member: at most {most_sent} of {total} records queued before the drop"
    );
    engine.stop();
}
