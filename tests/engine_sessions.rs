//! Encrypted sessions (protocol v4, issue 13 "Sessions"): a relaying man
//! in the middle at the address one engine dials for its peer records
//! every byte and tampers with the stream (flips a byte, replays a
//! segment, drops one, injects a clear batch). Nothing it injects is
//! applied, each tampering closes the session, replication goes on after
//! it, and no AOR of the replicated contacts appears in what it saw.

#[path = "ports/mod.rs"]
mod ports;
use ports::{connect_when_listening, free_port};

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};
use sersync::wire::{Frame, RawChange};

const SECRET: &[u8] = b"session-test-secret";

#[derive(Clone, Default)]
struct Aors(Arc<Mutex<Vec<Vec<u8>>>>);

impl Sink for Aors {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let mut v = self.0.lock().unwrap();
        for (_, r) in records {
            if let Record::Contact { contact, .. } = r {
                v.push(contact.aor.clone());
            }
        }
        Ok(())
    }
}

/// What the relay does to the next segment from the dialer, once.
const PASS: u8 = 0;
const FLIP: u8 = 1;
const REPLAY: u8 = 2;
const DROP: u8 = 3;
const INJECT: u8 = 4;

/// A relay between the dialer and 127.0.0.1:`upstream`: records every
/// byte both ways; tampers with the dialer's stream as `mode` says.
struct Relay {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
    mode: Arc<AtomicU8>,
    /// Sessions the acceptor closed after a tampering.
    cut: Arc<AtomicU64>,
}

fn relay(upstream: u16) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mode = Arc::new(AtomicU8::new(PASS));
    let cut = Arc::new(AtomicU64::new(0));
    let (s2, m2, c2) = (seen.clone(), mode.clone(), cut.clone());
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            // acceptor → dialer: recorded, passed on.
            let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            let seen = s2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Both);
            });
            // dialer → acceptor: recorded, tampered with past the
            // handshake (the first 400 bytes).
            let (mut from, mut to) = (client, server);
            let (seen, mode, cut) = (s2.clone(), m2.clone(), c2.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut total = 0usize;
                let mut last = Vec::new();
                let mut tampered = false;
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    total += n;
                    let mut out = buf[..n].to_vec();
                    if total > 400 && !tampered {
                        match mode.swap(PASS, Ordering::SeqCst) {
                            FLIP => {
                                let i = out.len() / 2;
                                out[i] ^= 0x40;
                                tampered = true;
                            }
                            REPLAY if !last.is_empty() => {
                                let mut again = last.clone();
                                again.extend_from_slice(&out);
                                out = again;
                                tampered = true;
                            }
                            DROP => {
                                out.clear();
                                tampered = true;
                            }
                            INJECT => {
                                let f = Frame::RawBatch {
                                    changes: vec![RawChange {
                                        seq: 1 << 40,
                                        hlc: 1,
                                        record: b"forged".to_vec(),
                                    }],
                                };
                                let mut forged = Vec::new();
                                f.write_to(&mut forged).unwrap();
                                // As a chunk of the right shape, too.
                                let mut chunk = (forged.len() as u16 + 16).to_be_bytes().to_vec();
                                chunk.extend_from_slice(&forged);
                                chunk.extend_from_slice(&[0u8; 16]);
                                chunk.extend_from_slice(&out);
                                out = chunk;
                                tampered = true;
                            }
                            m => mode.store(m, Ordering::SeqCst),
                        }
                    }
                    last = buf[..n].to_vec();
                    if !out.is_empty() && to.write_all(&out).is_err() {
                        break;
                    }
                }
                if tampered {
                    cut.fetch_add(1, Ordering::SeqCst);
                }
                let _ = to.shutdown(Shutdown::Both);
            });
        }
    });
    Relay {
        port,
        seen,
        mode,
        cut,
    }
}

fn publish(shared: &Shared, aor: &str) {
    let c = Contact {
        domain: b"location".to_vec(),
        aor: aor.as_bytes().to_vec(),
        contact: format!("sip:{aor}@192.0.2.7").into_bytes(),
        ..Default::default()
    };
    shared
        .publish(&RecordRef::Contact {
            op: Op::Upsert,
            contact: c.as_ref(),
        })
        .unwrap();
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_relay_in_the_middle_can_neither_read_nor_inject() {
    let (p1, p2) = (free_port(), free_port());
    let mitm = relay(p2);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let cfg = |id: &str, me: u16, peer: Option<u16>, dir: &std::path::Path| {
        RawConfig {
            node_id: id.into(),
            listen: format!("tcp:127.0.0.1:{me}"),
            peers: peer
                .map(|p| format!("tcp:127.0.0.1:{p}"))
                .into_iter()
                .collect(),
            secret: SECRET.to_vec(),
            journal: dir.join("j.db").display().to_string(),
            ..Default::default()
        }
        .check()
        .unwrap()
    };
    let shared1 = Arc::new(Shared::create(1024).unwrap());
    let got2 = Aors::default();
    // n1 reaches n2 only through the relay (a stale seed address); n2
    // dials n1 once it learns it from n1's hello. (n1 keeps dialing the
    // seed while that link is up; it moves to n2's own address only when
    // a member list comes while it is down.)
    let _e1 = Engine::start(
        cfg("n1", p1, Some(mitm.port), dirs[0].path()),
        shared1.clone(),
        Some(Box::new(Aors::default())),
    )
    .unwrap();
    let _e2 = Engine::start(
        cfg("n2", p2, None, dirs[1].path()),
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(got2.clone())),
    )
    .unwrap();
    drop(connect_when_listening(p2));

    let mut sent = HashSet::new();
    let mut n = 0u32;
    let round = |label: &str, n: &mut u32, sent: &mut HashSet<Vec<u8>>| {
        for _ in 0..50 {
            let aor = format!("confidential-{label}-{n:04}");
            publish(&shared1, &aor);
            sent.insert(aor.into_bytes());
            *n += 1;
        }
        wait_for(
            &format!("n2 to apply the {label} contacts"),
            Duration::from_secs(20),
            || {
                let got: HashSet<Vec<u8>> = got2.0.lock().unwrap().iter().cloned().collect();
                sent.iter().all(|a| got.contains(a))
            },
        );
    };
    round("first", &mut n, &mut sent);
    for (mode, label) in [
        (FLIP, "flip"),
        (REPLAY, "replay"),
        (DROP, "drop"),
        (INJECT, "inject"),
    ] {
        let cut_before = mitm.cut.load(Ordering::SeqCst);
        mitm.mode.store(mode, Ordering::SeqCst);
        // Traffic for the relay to tamper with; the session dies on it.
        round(label, &mut n, &mut sent);
        wait_for(
            &format!("the session to be cut after the relay's {label}"),
            Duration::from_secs(20),
            || {
                // More traffic: a flipped length prefix makes the
                // acceptor wait for bytes that fail when they come.
                publish(&shared1, &format!("confidential-nudge-{n}"));
                sent.insert(format!("confidential-nudge-{n}").into_bytes());
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
                mitm.cut.load(Ordering::SeqCst) > cut_before
            },
        );
        // And goes on over a new one.
        round(&format!("after-{label}"), &mut n, &mut sent);
    }
    let got: Vec<Vec<u8>> = got2.0.lock().unwrap().clone();
    for a in &got {
        assert!(
            sent.contains(a),
            "n2 applied a contact n1 never published: {:?}",
            String::from_utf8_lossy(a)
        );
    }
    let seen = mitm.seen.lock().unwrap();
    assert!(
        seen.len() > 10_000,
        "the relay saw the traffic ({} bytes)",
        seen.len()
    );
    for needle in [&b"confidential-"[..], b"192.0.2.7", b"location"] {
        assert!(
            !seen.windows(needle.len()).any(|w| w == needle),
            "the relay read {:?} in the traffic",
            String::from_utf8_lossy(needle)
        );
    }
    eprintln!(
        "relay: {} bytes seen, {} sessions cut by tampering, {} contacts replicated",
        seen.len(),
        mitm.cut.load(Ordering::SeqCst),
        got.len()
    );
}

#[path = "peer_support/mod.rs"]
mod peer;

/// An engine dialing a node of the first release (protocol v1, no
/// sessions: `peer::StuckMember`), with `accept_clear` or not.
fn dial_v1_node(accept_clear: bool) -> (Engine, peer::StuckMember, tempfile::TempDir) {
    let (me, old) = (free_port(), free_port());
    let stuck = peer::StuckMember::start(("127.0.0.1", old), SECRET.to_vec(), "old");
    let dir = tempfile::tempdir().unwrap();
    let cfg = RawConfig {
        node_id: "new".into(),
        listen: format!("tcp:127.0.0.1:{me}"),
        peers: vec![format!("tcp:127.0.0.1:{old}")],
        secret: SECRET.to_vec(),
        journal: dir.path().join("j.db").display().to_string(),
        accept_clear_peers: accept_clear,
        ..Default::default()
    }
    .check()
    .unwrap();
    let e = Engine::start(
        cfg,
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(Aors::default())),
    )
    .unwrap();
    (e, stuck, dir)
}

#[test]
fn a_clear_peer_is_refused_unless_accept_clear_peers_is_set() {
    // Default: refused, saying how to let it in.
    let (e, stuck, _dir) = dial_v1_node(false);
    wait_for("the v1 node to be refused", Duration::from_secs(20), || {
        let st = e.status();
        st.peers[0].state == sersync::status::PeerState::Refused
    });
    let why = e.status().peers[0].last_error.clone();
    assert!(why.contains("accept_clear_peers"), "refused with {why:?}");
    assert_eq!(
        stuck.accepted.load(Ordering::Relaxed),
        0,
        "no clear link to it"
    );
    drop(e);
    // With the modparam: served in clear, as the first release speaks.
    let (e, stuck, _dir2) = dial_v1_node(true);
    wait_for(
        "a clear link to the v1 node",
        Duration::from_secs(20),
        || stuck.accepted.load(Ordering::Relaxed) >= 1,
    );
    drop(e);

    // A v1 dialer: the challenge states v4 unless clear peers are served,
    // and a clear hello is refused.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = RawConfig {
        node_id: "new".into(),
        listen: format!("tcp:127.0.0.1:{port}"),
        secret: SECRET.to_vec(),
        journal: dir.path().join("j.db").display().to_string(),
        ..Default::default()
    }
    .check()
    .unwrap();
    let _e = Engine::start(
        cfg,
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(Aors::default())),
    )
    .unwrap();
    let mut s = connect_when_listening(port);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (id, nonce, version) = match peer::read_frame(&mut s) {
        Some(Frame::Challenge {
            node_id,
            nonce,
            version,
            ..
        }) => (node_id, nonce, version),
        other => panic!("expected a challenge, got {other:?}"),
    };
    assert_eq!(version, 4, "the challenge states sessions only");
    peer::send(
        &mut s,
        &peer::hello(SECRET, "old", &id, &nonce, 1, "tcp:127.0.0.1:9"),
    );
    match peer::read_frame(&mut s) {
        Some(Frame::Refuse { reason }) => assert!(reason.contains("v4 only"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A node of the rolling-change test: its engine, restarted with other
/// secret lines on the same journal; what it applied, across restarts.
struct Rolling {
    id: &'static str,
    port: u16,
    peer: u16,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    got: Aors,
    engine: Option<Engine>,
}

impl Rolling {
    fn start(&mut self, secret: &[u8], second: &[u8]) {
        drop(self.engine.take());
        let cfg = RawConfig {
            node_id: self.id.into(),
            listen: format!("tcp:127.0.0.1:{}", self.port),
            peers: vec![format!("tcp:127.0.0.1:{}", self.peer)],
            secret: secret.to_vec(),
            secret2: second.to_vec(),
            journal: self.dir.path().join("j.db").display().to_string(),
            ..Default::default()
        }
        .check()
        .unwrap();
        // The same queue: what was published before the restart is
        // taken by the next engine.
        self.engine = Some(
            Engine::start(cfg, self.shared.clone(), Some(Box::new(self.got.clone()))).unwrap(),
        );
    }
}

#[test]
fn the_secret_rolls_over_node_by_node_while_changes_flow() {
    const OLD: &[u8] = b"the-old-cluster-secret";
    const NEW: &[u8] = b"the-new-cluster-secret";
    let (p1, p2) = (free_port(), free_port());
    let node = |id, port, peer| Rolling {
        id,
        port,
        peer,
        dir: tempfile::tempdir().unwrap(),
        shared: Arc::new(Shared::create(1024).unwrap()),
        got: Aors::default(),
        engine: None,
    };
    let mut nodes = [node("n1", p1, p2), node("n2", p2, p1)];
    for n in nodes.iter_mut() {
        n.start(OLD, b"");
    }
    let mut sent: [HashSet<Vec<u8>>; 2] = Default::default();
    let mut k = 0;
    // The README's procedure, one node at a time: add the new secret as
    // a second line; make it first; remove the old one.
    let steps: [(usize, &[u8], &[u8]); 6] = [
        (0, OLD, NEW),
        (1, OLD, NEW),
        (0, NEW, OLD),
        (1, NEW, OLD),
        (0, NEW, b""),
        (1, NEW, b""),
    ];
    for (who, first, second) in steps {
        // Changes on both nodes, then the restart while they flow.
        for (i, n) in nodes.iter().enumerate() {
            for _ in 0..30 {
                let aor = format!("roll-{}-{k}", n.id);
                publish(&n.shared, &aor);
                sent[i].insert(aor.into_bytes());
                k += 1;
            }
        }
        nodes[who].start(first, second);
        for (i, n) in nodes.iter().enumerate() {
            let other = &nodes[1 - i];
            wait_for(
                &format!(
                    "{}'s changes on {} after restarting {}",
                    n.id, other.id, nodes[who].id
                ),
                Duration::from_secs(20),
                || {
                    let got: HashSet<Vec<u8>> =
                        other.got.0.lock().unwrap().iter().cloned().collect();
                    sent[i].iter().all(|a| got.contains(a))
                },
            );
        }
        for n in &nodes {
            let st = n.engine.as_ref().unwrap().status();
            assert!(
                st.peers
                    .iter()
                    .all(|p| p.state != sersync::status::PeerState::Refused),
                "{} refused a peer during the roll-over: {:?}",
                n.id,
                st.peers
            );
        }
    }
    // And a node left on the old secret alone is refused now.
    nodes[1].start(OLD, b"");
    wait_for(
        "the old secret to be refused",
        Duration::from_secs(20),
        || {
            let st = nodes[1].engine.as_ref().unwrap().status();
            st.peers
                .iter()
                .any(|p| p.state == sersync::status::PeerState::Refused)
        },
    );
}
