//! Protocol versions and incarnations (issue 10): a node of the first
//! release (protocol v1, spoken here by a frozen copy of its codec) and
//! today's engine exchange changes both ways, and today's engine never
//! sends it a frame v1 cannot decode; two of today's engines speak v2 and
//! keep each other's incarnation; a journal restored from a backup moves
//! past the incarnation its peers saw.

#[path = "ports/mod.rs"]
mod ports;
use ports::{connect_when_listening, free_port};

#[path = "peer_support/mod.rs"]
mod peer;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use peer::v1;
use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::journal::Journal;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};
use sersync::wire::auth::{self, Role, Transcript};

const SECRET: &[u8] = b"versions-test-secret";

/// Stands in for SER: keeps what the applier applied.
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<Vec<Record>>>);

impl Sink for Applied {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        self.0
            .lock()
            .unwrap()
            .extend(records.iter().map(|(_, r)| r.clone()));
        Ok(())
    }
}

impl Applied {
    fn aors(&self) -> Vec<Vec<u8>> {
        let got = self.0.lock().unwrap();
        got.iter()
            .filter_map(|r| match r {
                Record::Contact { contact, .. } => Some(contact.aor.clone()),
                _ => None,
            })
            .collect()
    }
}

fn start(
    id: &str,
    port: u16,
    peers: &[u16],
    dir: &Path,
    applied: &Applied,
) -> (Engine, Arc<Shared>) {
    let cfg = RawConfig {
        node_id: id.into(),
        listen: format!("tcp:127.0.0.1:{port}"),
        peers: peers.iter().map(|p| format!("tcp:127.0.0.1:{p}")).collect(),
        secret: SECRET.to_vec(),
        journal: dir.join("journal.db").display().to_string(),
        accept_clear_peers: true,
        ..Default::default()
    }
    .check()
    .unwrap();
    let shared = Arc::new(Shared::create(256).unwrap());
    let engine = Engine::start(cfg, shared.clone(), Some(Box::new(applied.clone()))).unwrap();
    (engine, shared)
}

fn publish(shared: &Shared, aor: &str) {
    let c = Contact {
        domain: b"location".to_vec(),
        aor: aor.as_bytes().to_vec(),
        contact: format!("sip:{aor}@192.0.2.7:5060").into_bytes(),
        ruid: format!("ruid-{aor}").into_bytes(),
        expires: 4_000_000_000,
        cseq: 7,
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
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn v1_contact(aor: &str) -> v1::Contact {
    v1::Contact {
        domain: b"location".to_vec(),
        aor: aor.as_bytes().to_vec(),
        contact: format!("sip:{aor}@198.51.100.9:5060").into_bytes(),
        ruid: format!("ruid-{aor}").into_bytes(),
        expires: 4_000_000_000,
        cseq: 3,
        user_agent: b"v1-phone".to_vec(),
        ..Default::default()
    }
}

/// What the v1 node's listener saw.
#[derive(Debug)]
enum Seen {
    /// A hello stating this version, refused as a v1 node refuses it.
    RefusedHello(u16),
    /// A batch's contacts (their AORs), acknowledged.
    Batch(Vec<Vec<u8>>),
}

/// A v1 node's acceptor on `l`: refuses hellos stating another version
/// ("protocol v1 only", as the release did), welcomes v1 hellos saying it
/// holds the dialer's changes up to `held`, then acknowledges every batch.
/// Every frame it reads is decoded with the frozen v1 codec: one it cannot
/// decode panics the thread.
fn v1_acceptor(
    l: TcpListener,
    stop: Arc<AtomicBool>,
    seen: mpsc::Sender<Seen>,
    held: Arc<AtomicU64>,
) {
    l.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = l.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let nonce_a = auth::fresh_nonce();
        v1::send(
            &mut s,
            &v1::Frame::Challenge {
                magic: v1::MAGIC,
                version: v1::VERSION,
                node_id: "old".into(),
                nonce: nonce_a,
            },
        );
        let Some(v1::Frame::Hello {
            version,
            node_id,
            nonce,
            ..
        }) = v1::read(&mut s)
        else {
            continue;
        };
        if version != v1::VERSION {
            v1::send(
                &mut s,
                &v1::Frame::Refuse {
                    reason: "protocol v1 only".into(),
                },
            );
            let _ = seen.send(Seen::RefusedHello(version));
            continue;
        }
        let tag = auth::tag(
            SECRET,
            Role::Acceptor,
            &Transcript {
                nonce_a: &nonce_a,
                nonce_d: &nonce,
                dialer: &node_id,
                acceptor: "old",
            },
        );
        v1::send(
            &mut s,
            &v1::Frame::Welcome {
                tag,
                resume_after: held.load(Ordering::Relaxed),
                snapshot: None,
            },
        );
        while !stop.load(Ordering::Relaxed) {
            match v1::read(&mut s) {
                Some(v1::Frame::Batch { changes }) => {
                    let upto = changes.last().map_or(0, |c| c.seq);
                    held.fetch_max(upto, Ordering::Relaxed);
                    let aors = changes
                        .into_iter()
                        .map(|c| match c.record {
                            v1::Record::Contact { contact, .. } => contact.aor,
                            v1::Record::Alias { alias, .. } => alias.alias_username,
                        })
                        .collect();
                    let _ = seen.send(Seen::Batch(aors));
                    v1::send(&mut s, &v1::Frame::Ack { upto });
                }
                Some(_) => {}
                None => {
                    if s.peek(&mut [0u8; 1]).is_ok_and(|n| n == 0) {
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn a_v1_node_and_this_engine_exchange_changes_both_ways() {
    let (pe, pv) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let applied = Applied::default();
    let listener = TcpListener::bind(("127.0.0.1", pv)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let acceptor = {
        let stop = stop.clone();
        let held = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || v1_acceptor(listener, stop, tx, held))
    };
    let (engine, shared) = start("new", pe, &[pv], dir.path(), &applied);

    // This engine → the v1 node: it states its newest first, is refused,
    // says hello again stating v1, and sends v1 batches only.
    publish(&shared, "to-old");
    let mut refused = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::RefusedHello(v)) => refused.push(v),
            Ok(Seen::Batch(aors)) => break aors,
            Err(e) => panic!("the v1 node received no batch: {e} (refused hellos: {refused:?})"),
        }
    };
    assert_eq!(got, vec![b"to-old".to_vec()]);
    // (First an encrypted session, which a v1 node cannot read; then in
    // clear, accept_clear_peers being set, the newest without sessions.)
    assert_eq!(
        refused,
        vec![sersync::wire::version::NEWEST - 1],
        "the engine states its newest clear version first, then v1"
    );

    // The v1 node → this engine: a v1 hello gets a v1 welcome, a v1 batch
    // is acknowledged and applied.
    let mut s = connect_when_listening(pe);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let Some(v1::Frame::Challenge {
        version,
        node_id,
        nonce: nonce_a,
        ..
    }) = v1::read(&mut s)
    else {
        panic!("expected the engine's challenge");
    };
    assert_eq!(version, 1, "a challenge states the oldest version spoken");
    let nonce_d = auth::fresh_nonce();
    let tag = auth::tag(
        SECRET,
        Role::Dialer,
        &Transcript {
            nonce_a: &nonce_a,
            nonce_d: &nonce_d,
            dialer: "old",
            acceptor: &node_id,
        },
    );
    v1::send(
        &mut s,
        &v1::Frame::Hello {
            magic: v1::MAGIC,
            version: 1,
            node_id: "old".into(),
            listen: format!("tcp:127.0.0.1:{pv}"),
            nonce: nonce_d,
            tag,
        },
    );
    match v1::read(&mut s) {
        Some(v1::Frame::Welcome { .. }) => {}
        other => panic!("expected a v1 welcome, got {other:?}"),
    }
    v1::send(
        &mut s,
        &v1::Frame::Batch {
            changes: vec![v1::Change {
                seq: 1,
                hlc: 1 << 16,
                record: v1::Record::Contact {
                    op: v1::Op::Upsert,
                    contact: v1_contact("from-old"),
                },
            }],
        },
    );
    loop {
        match v1::read(&mut s) {
            Some(v1::Frame::Ack { upto }) => {
                assert_eq!(upto, 1);
                break;
            }
            Some(v1::Frame::Members { .. }) => continue,
            other => panic!("expected the batch's acknowledgement, got {other:?}"),
        }
    }
    wait_for(
        "the v1 change to be applied",
        Duration::from_secs(10),
        || applied.aors().contains(&b"from-old".to_vec()),
    );
    let fields = applied
        .0
        .lock()
        .unwrap()
        .iter()
        .find_map(|r| match r {
            Record::Contact { contact, .. } if contact.aor == b"from-old" => Some(contact.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(fields.user_agent, b"v1-phone");
    assert_eq!(fields.contact, b"sip:from-old@198.51.100.9:5060");

    engine.stop();
    stop.store(true, Ordering::Relaxed);
    acceptor
        .join()
        .expect("the v1 node decoded every frame it was sent");
}

/// Batches the v1 node sees within 10 s until one holds `aor`: the AORs
/// of every batch seen meanwhile, in order (refused hellos skipped).
fn batches_until(rx: &mpsc::Receiver<Seen>, aor: &str) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while !all.contains(&aor.as_bytes().to_vec()) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Seen::RefusedHello(_)) => {}
            Ok(Seen::Batch(aors)) => all.extend(aors),
            Err(e) => panic!("the v1 node never received {aor} ({e}); it received {all:?}"),
        }
    }
    all
}

/// A v1 peer says nothing of incarnations: a journal restored from a
/// backup shows only in the position it reports, beyond any sequence this
/// journal gave out. The journal's changes are then numbered after it,
/// not skipped as resends.
#[test]
fn a_restored_journal_numbers_its_changes_after_a_v1_peers_position() {
    let (pe, pv) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let applied = Applied::default();
    let listener = TcpListener::bind(("127.0.0.1", pv)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let acceptor = {
        let (stop, held) = (stop.clone(), held.clone());
        std::thread::spawn(move || v1_acceptor(listener, stop, tx, held))
    };
    let (engine, shared) = start("new", pe, &[pv], dir.path(), &applied);
    for aor in ["one", "two", "three"] {
        publish(&shared, aor);
    }
    batches_until(&rx, "three");
    engine.stop();
    // The journal is put back to a copy from before a run that numbered
    // seven more changes, which the v1 node holds.
    assert_eq!(held.load(Ordering::Relaxed), 3);
    held.store(10, Ordering::Relaxed);
    let (engine, shared) = start("new", pe, &[pv], dir.path(), &applied);
    publish(&shared, "after-restore");
    let got = batches_until(&rx, "after-restore");
    assert!(
        held.load(Ordering::Relaxed) > 10,
        "numbered after the v1 node's position"
    );
    assert_eq!(got.last().unwrap(), b"after-restore");
    engine.stop();
    stop.store(true, Ordering::Relaxed);
    acceptor.join().expect("the v1 node decoded every frame");
}

fn incarnation_seen(dir: &Path, of: &str) -> Option<i64> {
    let j = Journal::open(&dir.join("journal.db")).unwrap();
    j.meta(&format!("incarnation_of:{of}")).unwrap()
}

#[test]
fn current_engines_keep_each_others_incarnation_and_a_restart_raises_it() {
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (aa, ab) = (Applied::default(), Applied::default());
    let (a, sa) = start("a", pa, &[pb], da.path(), &aa);
    let (b, _sb) = start("b", pb, &[pa], db.path(), &ab);
    assert_eq!(a.status().incarnation, 1);
    assert_eq!(b.status().incarnation, 1);
    publish(&sa, "first");
    wait_for("b to apply a's change", Duration::from_secs(10), || {
        ab.aors().contains(&b"first".to_vec())
    });
    wait_for("b to keep a's incarnation", Duration::from_secs(10), || {
        incarnation_seen(db.path(), "a") == Some(1)
    });
    wait_for("a to keep b's incarnation", Duration::from_secs(10), || {
        incarnation_seen(da.path(), "b") == Some(1)
    });
    a.stop();
    let (a, sa) = start("a", pa, &[pb], da.path(), &aa);
    assert_eq!(a.status().incarnation, 2, "each start gets a higher one");
    publish(&sa, "second");
    wait_for("b to apply a's change", Duration::from_secs(10), || {
        ab.aors().contains(&b"second".to_vec())
    });
    wait_for(
        "b to keep a's new incarnation",
        Duration::from_secs(10),
        || incarnation_seen(db.path(), "a") == Some(2),
    );
    a.stop();
    b.stop();
}

#[test]
fn a_journal_restored_from_a_backup_moves_past_what_peers_saw() {
    let (pa, pb) = (free_port(), free_port());
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (aa, ab) = (Applied::default(), Applied::default());
    let (b, _sb) = start("b", pb, &[pa], db.path(), &ab);
    let (a, _) = start("a", pa, &[pb], da.path(), &aa);
    wait_for("b to see a's first run", Duration::from_secs(10), || {
        incarnation_seen(db.path(), "a") == Some(1)
    });
    a.stop();
    // The backup: a's journal after its first run.
    let backup = tempfile::tempdir().unwrap();
    std::fs::copy(
        da.path().join("journal.db"),
        backup.path().join("journal.db"),
    )
    .unwrap();
    let (a, _) = start("a", pa, &[pb], da.path(), &aa);
    assert_eq!(a.status().incarnation, 2);
    wait_for("b to see a's second run", Duration::from_secs(10), || {
        incarnation_seen(db.path(), "a") == Some(2)
    });
    a.stop();
    // Restored: the journal says 1 again, so this start is 2 once more,
    // until b tells it that it saw 2.
    for f in ["journal.db-wal", "journal.db-shm"] {
        let _ = std::fs::remove_file(da.path().join(f));
    }
    std::fs::copy(
        backup.path().join("journal.db"),
        da.path().join("journal.db"),
    )
    .unwrap();
    let (a, _) = start("a", pa, &[pb], da.path(), &aa);
    wait_for(
        "a to move past the incarnation b saw",
        Duration::from_secs(10),
        || a.status().incarnation == 3,
    );
    wait_for("b to keep it", Duration::from_secs(10), || {
        incarnation_seen(db.path(), "a") == Some(3)
    });
    a.stop();
    b.stop();
}

#[test]
fn a_record_of_an_unknown_kind_is_set_aside_and_the_rest_applied() {
    use sersync::wire::{Frame, RawChange, Session};
    let pe = free_port();
    let dir = tempfile::tempdir().unwrap();
    let applied = Applied::default();
    let (engine, _shared) = start("new", pe, &[], dir.path(), &applied);
    let mut s = connect_when_listening(pe);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (id, nonce) = peer::challenge(&mut s);
    peer::send(
        &mut s,
        &peer::hello(SECRET, "v2peer", &id, &nonce, 2, "tcp:127.0.0.1:9"),
    );
    match peer::read_frame(&mut s) {
        Some(Frame::WelcomeV2 { session, .. }) => assert_eq!(session.version, 2),
        other => panic!("expected a v2 welcome, got {other:?}"),
    }
    peer::send(
        &mut s,
        &Frame::DialerSession {
            session: Session {
                version: 2,
                incarnation: 1,
                run: 7,
                seen: 0,
                seen_run: 0,
                capabilities: Vec::new(),
            },
        },
    );
    let raw = |seq: u64, aor: &str| {
        let Frame::RawBatch { mut changes } = sersync::wire::version::batch(
            2,
            vec![sersync::record::Change {
                seq,
                hlc: (seq + 1) << 16,
                record: Record::Contact {
                    op: Op::Upsert,
                    contact: Contact {
                        domain: b"location".to_vec(),
                        aor: aor.as_bytes().to_vec(),
                        contact: format!("sip:{aor}@192.0.2.8").into_bytes(),
                        expires: 4_000_000_000,
                        ..Default::default()
                    },
                },
            }],
        ) else {
            unreachable!()
        };
        changes.remove(0)
    };
    // Sequence 2 holds a record kind from the future (variant 42).
    let unknown = RawChange {
        seq: 2,
        hlc: 3 << 16,
        record: vec![42, 1, 2, 3],
    };
    peer::send(
        &mut s,
        &Frame::RawBatch {
            changes: vec![raw(1, "before"), unknown, raw(3, "after")],
        },
    );
    let ack = |s: &mut TcpStream| loop {
        match peer::read_frame(s) {
            Some(Frame::Ack { upto }) => break upto,
            Some(Frame::Members { .. }) => continue,
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    };
    assert_eq!(ack(&mut s), 3, "the batch is acknowledged whole");
    wait_for(
        "both known records applied",
        Duration::from_secs(10),
        || {
            let aors = applied.aors();
            aors.contains(&b"before".to_vec()) && aors.contains(&b"after".to_vec())
        },
    );
    assert_eq!(engine.status().set_aside, 1);
    // The link goes on; one set aside last in its batch is not sent again.
    let unknown_last = RawChange {
        seq: 5,
        hlc: 6 << 16,
        record: vec![43],
    };
    peer::send(
        &mut s,
        &Frame::RawBatch {
            changes: vec![raw(4, "later"), unknown_last],
        },
    );
    assert_eq!(ack(&mut s), 5, "the position moves past what was set aside");
    wait_for("the next batch applied", Duration::from_secs(10), || {
        applied.aors().contains(&b"later".to_vec())
    });
    assert_eq!(engine.status().set_aside, 2);
    engine.stop();
}
