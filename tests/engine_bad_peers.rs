//! A live engine facing hostile or broken peers: each is refused or
//! dropped, and replication between the real members goes on throughout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};
use sersync::wire::auth::{self, Role, Transcript};
use sersync::wire::{Frame, FrameReader, MAGIC, VERSION};

const SECRET: &[u8] = b"bad-peer-test-secret";

struct Count(Arc<Mutex<usize>>);

impl Sink for Count {
    fn apply(&mut self, records: &[Record]) -> Result<(), ApplyError> {
        *self.0.lock().unwrap() += records.len();
        Ok(())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pair {
    port1: u16,
    shared1: Arc<Shared>,
    applied2: Arc<Mutex<usize>>,
    engines: Vec<Engine>,
    _dirs: Vec<tempfile::TempDir>,
}

fn pair() -> Pair {
    let (p1, p2) = (free_port(), free_port());
    let mut engines = Vec::new();
    let mut dirs = Vec::new();
    let shared1 = Arc::new(Shared::create(1024).unwrap());
    let applied2 = Arc::new(Mutex::new(0));
    for (id, me, peer) in [("n1", p1, p2), ("n2", p2, p1)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RawConfig {
            node_id: id.into(),
            listen: format!("tcp:127.0.0.1:{me}"),
            peers: vec![format!("tcp:127.0.0.1:{peer}")],
            secret: SECRET.to_vec(),
            journal: dir.path().join("j.db").display().to_string(),
            ..Default::default()
        }
        .check()
        .unwrap();
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

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s
    }
}

fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut r = FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some(f)) = r.next_frame() {
            return Some(f);
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => r.extend(&buf[..n]),
        }
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

fn challenge(s: &mut TcpStream) -> (String, [u8; 32]) {
    match read_frame(s) {
        Some(Frame::Challenge { node_id, nonce, .. }) => (node_id, nonce),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn send(s: &mut TcpStream, f: &Frame) {
    let mut out = Vec::new();
    f.write_to(&mut out).unwrap();
    s.write_all(&out).unwrap();
}

fn hello(secret: &[u8], id: &str, acceptor: &str, nonce_a: &[u8; 32], version: u16) -> Frame {
    let nonce_d = [42u8; 32];
    let tag = auth::tag(
        secret,
        Role::Dialer,
        &Transcript {
            nonce_a,
            nonce_d: &nonce_d,
            dialer: id,
            acceptor,
        },
    );
    // Nothing listens on port 9: a member the engine learns from this
    // hello is dialed in vain, which costs nothing.
    Frame::Hello {
        magic: MAGIC,
        version,
        node_id: id.into(),
        listen: "tcp:127.0.0.1:9".into(),
        nonce: nonce_d,
        tag,
    }
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
    // A version this engine does not speak.
    let mut s = p.connect();
    let (id, nonce) = challenge(&mut s);
    send(&mut s, &hello(SECRET, "future", &id, &nonce, VERSION + 1));
    assert!(matches!(read_frame(&mut s), Some(Frame::Refuse { .. })));
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
