//! The peer check (issue 12, items 1–2, between nodes): engines over
//! loopback whose states diverged behind their backs end equal within a
//! check interval, both ways, deletions included; a peer that lies about
//! its digest or sends garbage check frames costs bounded work and breaks
//! nothing; the exchange's bytes and time for empty and large states;
//! contacts expiring during checks never show as divergences. SER is an
//! in-memory usrloc; journals are real SQLite files, written directly
//! while their engine is stopped (a change that never went out).

#[path = "ports/mod.rs"]
mod ports;
use ports::{connect_when_listening, free_port};

#[path = "peer_support/mod.rs"]
mod peer;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::digest::Digest;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::journal::Journal;
use sersync::queue::Shared;
use sersync::record::{Alias, Contact, Op, Record, SnapRow};
use sersync::wire::auth::{self, Role, Transcript};
use sersync::wire::{Frame, FrameReader, KeyVersion, RawSnapRow, Session, MAGIC};

const SECRET: &[u8] = b"peer-check-test-secret";
const INTERVAL: Duration = Duration::from_secs(1);

/// SER's usrloc, in memory: by AOR (one contact each here).
#[derive(Clone, Default)]
struct Usrloc(Arc<Mutex<BTreeMap<String, Contact>>>);

impl Sink for Usrloc {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let mut t = self.0.lock().unwrap();
        for (_, r) in records {
            match r {
                Record::Contact { op, contact } => {
                    let aor = String::from_utf8_lossy(&contact.aor).into_owned();
                    match op {
                        Op::Upsert => t.insert(aor, contact.clone()),
                        Op::Delete => t.remove(&aor),
                    };
                }
                // An alias stands in as a contact keyed "alias:<alias user>".
                Record::Alias { op, alias } => {
                    let key = format!("alias:{}", String::from_utf8_lossy(&alias.alias_username));
                    match op {
                        Op::Upsert => t.insert(key, Contact::default()),
                        Op::Delete => t.remove(&key),
                    };
                }
            }
        }
        Ok(())
    }
}

impl Usrloc {
    fn get(&self, aor: &str) -> Option<Contact> {
        self.0.lock().unwrap().get(aor).cloned()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A stamp `ago_ms` milliseconds in the past (the clock's format).
fn stamp(ago_ms: u64) -> u64 {
    (sersync::hlc::wall_ms() - ago_ms) << 16
}

fn contact(aor: &str, cseq: i32, expires: i64) -> Contact {
    Contact {
        domain: b"location".to_vec(),
        aor: aor.as_bytes().to_vec(),
        contact: format!("sip:{aor}@192.0.2.9:5060").into_bytes(),
        ruid: format!("ruid-{aor}").into_bytes(),
        callid: format!("call-{aor}").into_bytes(),
        user_agent: b"peer-check/1.0".to_vec(),
        expires,
        cseq,
        ..Default::default()
    }
}

fn row(origin: &str, hlc: u64, op: Op, c: Contact) -> SnapRow {
    SnapRow {
        origin: origin.into(),
        hlc,
        record: Record::Contact { op, contact: c },
    }
}

struct Node {
    id: &'static str,
    port: u16,
    peers: Vec<u16>,
    dir: tempfile::TempDir,
    usrloc: Usrloc,
    engine: Option<Engine>,
}

impl Node {
    fn new(id: &'static str, port: u16, peers: Vec<u16>) -> Node {
        Node {
            id,
            port,
            peers,
            dir: tempfile::tempdir().unwrap(),
            usrloc: Usrloc::default(),
            engine: None,
        }
    }

    fn journal_path(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.db")
    }

    /// Writes into the stopped node's journal: `local` as its own changes
    /// (in its log, so they replicate) and `behind` straight into its
    /// state and inbox (never sent). Its SER holds both.
    fn write(&self, local: &[SnapRow], behind: &[SnapRow]) {
        let mut j = Journal::open(&self.journal_path()).unwrap();
        let recs: Vec<(u64, Record)> = local.iter().map(|r| (r.hlc, r.record.clone())).collect();
        j.append_local(self.id, &recs).unwrap();
        j.stage_repair(behind).unwrap();
        let mut t = self.usrloc.0.lock().unwrap();
        for r in local {
            if let Record::Contact { op, contact } = &r.record {
                let aor = String::from_utf8_lossy(&contact.aor).into_owned();
                match op {
                    Op::Upsert => t.insert(aor, contact.clone()),
                    Op::Delete => t.remove(&aor),
                };
            }
        }
    }

    fn start(&mut self) {
        let mut cfg = RawConfig {
            node_id: self.id.into(),
            listen: format!("tcp:127.0.0.1:{}", self.port),
            peers: self
                .peers
                .iter()
                .map(|p| format!("tcp:127.0.0.1:{p}"))
                .collect(),
            secret: SECRET.to_vec(),
            journal: self.journal_path().display().to_string(),
            accept_clear_peers: true,
            ..Default::default()
        }
        .check()
        .unwrap();
        cfg.peer_check_interval = INTERVAL;
        let sink = Box::new(self.usrloc.clone());
        let shared = Arc::new(Shared::create(1024).unwrap());
        self.engine = Some(Engine::start(cfg, shared, Some(sink)).unwrap());
    }

    fn status(&self) -> sersync::status::Snapshot {
        self.engine.as_ref().unwrap().status()
    }

    fn stop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.stop();
        }
    }

    fn digest(&self, at: i64) -> Digest {
        Journal::open(&self.journal_path())
            .unwrap()
            .state_digest(at)
            .unwrap()
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pair() -> (Node, Node) {
    let (p1, p2) = (free_port(), free_port());
    (Node::new("n1", p1, vec![p2]), Node::new("n2", p2, vec![p1]))
}

#[test]
fn states_that_diverged_behind_the_nodes_backs_end_equal_both_ways() {
    let (mut n1, mut n2) = pair();
    let far = now_s() + 3600;
    let old = stamp(60_000);
    let later = stamp(30_000);
    let shared = |i: u32| contact(&format!("shared-{i}"), 1, far);
    // Each node's own contacts replicate as usual at start.
    let own1: Vec<SnapRow> = (0..20)
        .map(|i| row("n1", old + i as u64, Op::Upsert, shared(i)))
        .collect();
    let own2: Vec<SnapRow> = (20..40)
        .map(|i| row("n2", old + i as u64, Op::Upsert, shared(i)))
        .collect();
    // Behind their backs: n1 holds a contact n2 never got, a deletion of
    // one of n2's contacts n2 never got, and a newer version of another
    // of n2's; n2 holds a contact n1 never got.
    n1.write(
        &own1,
        &[
            row(
                "n1",
                later,
                Op::Upsert,
                contact("lost-on-the-way-1", 1, far),
            ),
            row("n1", later + 1, Op::Delete, shared(23)),
            row("n1", later + 2, Op::Upsert, contact("shared-25", 2, far)),
            SnapRow {
                origin: "n1".into(),
                hlc: later + 3,
                record: Record::Alias {
                    op: Op::Upsert,
                    alias: Alias {
                        table: b"dbaliases".to_vec(),
                        alias_username: b"sales".to_vec(),
                        alias_domain: b"example.com".to_vec(),
                        username: b"alice".to_vec(),
                        domain: b"example.com".to_vec(),
                    },
                },
            },
        ],
    );
    n2.write(
        &own2,
        &[row(
            "n2",
            later,
            Op::Upsert,
            contact("lost-on-the-way-2", 1, far),
        )],
    );
    let t0 = Instant::now();
    n1.start();
    n2.start();
    wait_for(
        "the peer check to repair both nodes",
        Duration::from_secs(10),
        || {
            n2.usrloc.get("lost-on-the-way-1").is_some()
                && n2.usrloc.get("shared-23").is_none()
                && n2.usrloc.get("shared-25").is_some_and(|c| c.cseq == 2)
                && n2.usrloc.get("alias:sales").is_some()
                && n1.usrloc.get("lost-on-the-way-2").is_some()
                && n1.usrloc.len() == 20 + 20 + 2
        },
    );
    let took = t0.elapsed();
    let (s1, s2) = (n1.status(), n2.status());
    println!(
        "repaired in {took:?} (check every {INTERVAL:?}); n1: {} checks, {} ranges, \
         {} divergences, {} repaired; n2: {} checks, {} ranges, {} divergences, {} repaired",
        s1.peer_checks,
        s1.peer_check_ranges,
        s1.peer_check_divergences,
        s1.peer_check_repaired,
        s2.peer_checks,
        s2.peer_check_ranges,
        s2.peer_check_divergences,
        s2.peer_check_repaired
    );
    assert!(s1.peer_check_repaired >= 1 && s2.peer_check_repaired >= 4);
    assert!(s1.peer_check_divergences + s2.peer_check_divergences >= 5);
    assert_eq!(s1.peer_check_ignored + s2.peer_check_ignored, 0);
    // Settled: later checks find nothing more.
    let found = s1.peer_check_divergences + s2.peer_check_divergences;
    let checks = s1.peer_checks + s2.peer_checks;
    wait_for("two more checks", Duration::from_secs(10), || {
        n1.status().peer_checks + n2.status().peer_checks >= checks + 4
    });
    assert_eq!(
        n1.status().peer_check_divergences + n2.status().peer_check_divergences,
        found,
        "equal states show no divergence"
    );
    n1.stop();
    n2.stop();
    let at = now_s();
    assert_eq!(
        n1.digest(at),
        n2.digest(at),
        "the journals' states are equal"
    );
    assert_eq!(
        n1.digest(at).counts.iter().sum::<u32>(),
        41 + 1,
        "41 contacts and the alias"
    );
}

#[test]
fn contacts_expiring_during_checks_are_no_divergence() {
    let (mut n1, mut n2) = pair();
    let now = now_s();
    let old = stamp(60_000);
    // 2,000 contacts both hold, expiring across the checks' margin (30 s)
    // while checks run; and 50 only n1 holds, too close to expiry to be
    // compared.
    let both: Vec<SnapRow> = (0..2000)
        .map(|i| {
            let c = contact(&format!("exp-{i}"), 1, now + 30 + (i % 8) as i64);
            row("n0", old + i as u64, Op::Upsert, c)
        })
        .collect();
    let soon: Vec<SnapRow> = (0..50)
        .map(|i| {
            let c = contact(&format!("soon-{i}"), 1, now + 10);
            row("n1", old + i as u64, Op::Upsert, c)
        })
        .collect();
    let mut behind1 = both.clone();
    behind1.extend(soon);
    n1.write(&[], &behind1);
    n2.write(&[], &both);
    n1.start();
    n2.start();
    wait_for(
        "checks while the contacts expire",
        Duration::from_secs(20),
        || n1.status().peer_checks >= 9 && n2.status().peer_checks >= 9,
    );
    let (s1, s2) = (n1.status(), n2.status());
    println!(
        "n1: {} checks, {} ranges compared, {} divergences; n2: {} checks, {} ranges, {} divergences",
        s1.peer_checks,
        s1.peer_check_ranges,
        s1.peer_check_divergences,
        s2.peer_checks,
        s2.peer_check_ranges,
        s2.peer_check_divergences
    );
    assert_eq!(s1.peer_check_divergences + s2.peer_check_divergences, 0);
    assert_eq!(s1.peer_check_repaired + s2.peer_check_repaired, 0);
    assert!(n2.usrloc.get("soon-1").is_none());
    n1.stop();
    n2.stop();
}

/// One end of a link spoken by hand: a socket and the frames buffered
/// from it (a read may bring several).
struct Link {
    s: TcpStream,
    r: FrameReader,
}

impl Link {
    fn new(s: TcpStream) -> Link {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Link {
            s,
            r: FrameReader::new(),
        }
    }

    /// The next frame, None at EOF, on an error or after the timeout.
    fn frame(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            if let Some(f) = self.r.next_frame().ok()? {
                return Some(f);
            }
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.r.extend(&buf[..n]),
            }
        }
    }

    /// The next frame that is not a member list, with its encoded size.
    fn next(&mut self) -> Option<(Frame, usize)> {
        loop {
            let f = self.frame()?;
            if !matches!(f, Frame::Members { .. }) {
                let n = size(&f);
                return Some((f, n));
            }
        }
    }

    fn send(&mut self, f: &Frame) {
        peer::send(&mut self.s, f);
    }
}

fn session(version: u16) -> Session {
    Session {
        version,
        incarnation: 1,
        run: 7,
        seen: 0,
        seen_run: 0,
        capabilities: Vec::new(),
    }
}

/// A hand-written v3 dialer, authenticated, after its session frame.
fn dial_v3(port: u16, id: &str) -> Link {
    let mut s = Link::new(connect_when_listening(port));
    let (acceptor, nonce) = match s.frame() {
        Some(Frame::Challenge { node_id, nonce, .. }) => (node_id, nonce),
        other => panic!("expected the node's challenge, got {other:?}"),
    };
    s.send(&peer::hello(
        SECRET,
        id,
        &acceptor,
        &nonce,
        3,
        "tcp:127.0.0.1:9",
    ));
    match s.frame() {
        Some(Frame::WelcomeV2 { session, .. }) => assert_eq!(session.version, 3),
        other => panic!("expected a v3 welcome, got {other:?}"),
    }
    s.send(&Frame::DialerSession {
        session: session(3),
    });
    s
}

/// A hand-written acceptor `id` on `l` speaking up to `version`: takes
/// the engine's connection and welcomes it as a node of that version.
/// (The engine first opens an encrypted session, protocol v4, which a
/// node of v3 cannot read: it closes that connection, and the engine
/// dials again in clear, its `accept_clear_peers` being set.)
fn accept(l: &TcpListener, id: &str, version: u16) -> Link {
    let (mut s, nonce_a, node_id, nonce_d, stated) = loop {
        let (s, _) = l.accept().unwrap();
        let mut s = Link::new(s);
        let nonce_a = auth::fresh_nonce();
        s.send(&Frame::Challenge {
            magic: MAGIC,
            version: 1,
            node_id: id.into(),
            nonce: nonce_a,
        });
        if let Some(Frame::Hello {
            node_id,
            nonce: nonce_d,
            version: stated,
            ..
        }) = s.frame()
        {
            break (s, nonce_a, node_id, nonce_d, stated);
        }
    };
    let chosen = stated.min(version);
    let tr = Transcript {
        nonce_a: &nonce_a,
        nonce_d: &nonce_d,
        dialer: &node_id,
        acceptor: id,
    };
    s.send(&Frame::WelcomeV2 {
        tag: auth::tag_for(SECRET, Role::Acceptor, &tr, chosen),
        resume_after: 0,
        snapshot: None,
        session: session(chosen),
    });
    s
}

fn size(f: &Frame) -> usize {
    let mut b = Vec::new();
    f.write_to(&mut b).unwrap();
    b.len()
}

fn records(rows: &[SnapRow]) -> Vec<Record> {
    rows.iter().map(|r| r.record.clone()).collect()
}

#[test]
fn digest_exchange_of_empty_and_large_states_bytes_and_time() {
    for n in [0usize, 50_000] {
        let port = free_port();
        let mut node = Node::new("big", port, vec![]);
        let now = now_s();
        let old = stamp(60_000);
        let rows: Vec<SnapRow> = (0..n)
            .map(|i| {
                let c = contact(&format!("user-{i}"), 1, now + 3600);
                row("n0", old + i as u64, Op::Upsert, c)
            })
            .collect();
        let t = Instant::now();
        node.write(&[], &rows);
        let written = t.elapsed();
        node.start();
        let mut s = dial_v3(port, "probe");
        // Equal states: one digest each way, nothing listed.
        let at = now_s();
        let digest = Digest::of(&records(&rows), at);
        let ask = Frame::CheckDigest {
            check: 1,
            at,
            digest: digest.clone(),
        };
        let t = Instant::now();
        s.send(&ask);
        let (reply, reply_bytes) = s.next().expect("an answer");
        let equal_took = t.elapsed();
        let Frame::CheckVersions {
            differing, ranges, ..
        } = reply
        else {
            panic!("expected versions, got {reply:?}")
        };
        assert_eq!((differing, ranges.len()), (0, 0));
        println!(
            "{n} contacts (written in {written:?}), equal: digest {} bytes, answer {reply_bytes} bytes, {equal_took:?}",
            size(&ask)
        );
        if n > 0 {
            // The probe lacks 100 contacts: every range they fall in is
            // listed; the probe asks for what it lacks and gets it.
            std::thread::sleep(INTERVAL / 2);
            let lacking: Vec<SnapRow> = rows.iter().skip(100).cloned().collect();
            let at = now_s();
            let ask = Frame::CheckDigest {
                check: 2,
                at,
                digest: Digest::of(&records(&lacking), at),
            };
            let t = Instant::now();
            s.send(&ask);
            let (reply, reply_bytes) = s.next().expect("an answer");
            let diff_took = t.elapsed();
            let Frame::CheckVersions {
                differing,
                ranges,
                versions,
                ..
            } = reply
            else {
                panic!("expected versions, got {reply:?}")
            };
            let missing: Vec<u64> = rows[..100]
                .iter()
                .map(|r| sersync::wire::key_hash(&r.record.key()))
                .collect();
            assert!(missing
                .iter()
                .all(|k| versions.iter().any(|v| v.key == *k && v.live)));
            let want = Frame::CheckRows {
                check: 2,
                rows: vec![],
                want: missing.clone(),
            };
            s.send(&want);
            let (got, rows_bytes) = s.next().expect("rows");
            let total_took = t.elapsed();
            let Frame::CheckRows { rows: got, .. } = got else {
                panic!("expected rows, got {got:?}")
            };
            assert_eq!(got.len(), 100);
            println!(
                "{n} contacts, 100 lacking: {differing} ranges differ ({} listed, {} versions): \
                 digest {} bytes, versions {reply_bytes} bytes in {diff_took:?}; want {} bytes, \
                 rows {rows_bytes} bytes; whole exchange {total_took:?}",
                ranges.len(),
                versions.len(),
                size(&ask),
                size(&want)
            );
            assert!(diff_took < Duration::from_secs(5));
        }
        drop(s);
        node.stop();
    }
}

#[test]
fn a_peer_that_lies_or_sends_garbage_costs_bounded_work_and_breaks_nothing() {
    let port = free_port();
    let mut node = Node::new("honest", port, vec![]);
    let now = now_s();
    let old = stamp(60_000);
    let rows: Vec<SnapRow> = (0..5000)
        .map(|i| {
            row(
                "n0",
                old + i,
                Op::Upsert,
                contact(&format!("u-{i}"), 1, now + 3600),
            )
        })
        .collect();
    node.write(&[], &rows);
    node.start();
    let mut s = dial_v3(port, "liar");
    let at = now_s();
    // A digest that claims every range differs, 40 times in a row: one
    // answer per half interval.
    let lie = Digest {
        counts: vec![7; 256],
        sums: vec![12345; 256],
    };
    let t = Instant::now();
    for check in 0..40 {
        s.send(&Frame::CheckDigest {
            check,
            at,
            digest: lie.clone(),
        });
    }
    // Garbage: a digest of 3 ranges, a check time a day off, rows and
    // wants for no check, too many wants.
    s.send(&Frame::CheckDigest {
        check: 99,
        at,
        digest: Digest {
            counts: vec![1; 3],
            sums: vec![1; 3],
        },
    });
    let (first, bytes) = s.next().expect("the first lie answered");
    let answered_in = t.elapsed();
    let Frame::CheckVersions {
        check, versions, ..
    } = first
    else {
        panic!("expected versions, got {first:?}")
    };
    assert_eq!(check, 0);
    assert_eq!(versions.len(), 5000, "every range listed, once");
    println!("a lie about every range cost one answer: {bytes} bytes in {answered_in:?}");
    // Its answer to the lie: garbage rows and a request for keys it made up.
    s.send(&Frame::CheckRows {
        check: 0,
        rows: vec![
            RawSnapRow {
                origin: "x".into(),
                hlc: u64::MAX,
                record: vec![42, 1, 2],
            },
            RawSnapRow {
                origin: "x".into(),
                hlc: u64::MAX,
                record: vec![],
            },
        ],
        want: vec![1, 2, 3],
    });
    let (rows_back, _) = s.next().expect("an answer to the request");
    assert!(matches!(rows_back, Frame::CheckRows { ref rows, .. } if rows.is_empty()));
    s.send(&Frame::CheckRows {
        check: 0,
        rows: vec![],
        want: vec![1],
    });
    s.send(&Frame::CheckRows {
        check: 5,
        rows: vec![],
        want: vec![0; 100_000],
    });
    std::thread::sleep(INTERVAL);
    s.send(&Frame::CheckDigest {
        check: 100,
        at: at - 86_400,
        digest: lie.clone(),
    });
    // After half an interval, an honest digest is answered again: the
    // link still works, and nothing was staged.
    let at = now_s();
    s.send(&Frame::CheckDigest {
        check: 101,
        at,
        digest: Digest::of(&records(&rows), at),
    });
    let (again, _) = s.next().expect("the honest check answered");
    assert!(
        matches!(again, Frame::CheckVersions { check: 101, ref ranges, .. } if ranges.is_empty()),
        "got {again:?}"
    );
    let st = node.status();
    println!(
        "ignored {} check frames; repaired {}",
        st.peer_check_ignored, st.peer_check_repaired
    );
    // 39 lies too soon, the 3-range digest, rows for no check (twice),
    // the day-old check.
    assert_eq!(st.peer_check_ignored, 39 + 1 + 2 + 1);
    assert_eq!(st.peer_check_repaired, 0);
    assert_eq!(node.usrloc.len(), 5000);
    drop(s);
    node.stop();
}

#[test]
fn a_lying_peer_answering_checks_gets_nothing_staged_and_a_v2_peer_no_check() {
    let l2 = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let l3 = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let ports = vec![
        l2.local_addr().unwrap().port(),
        l3.local_addr().unwrap().port(),
    ];
    let mut node = Node::new("honest", free_port(), ports);
    let now = now_s();
    let rows: Vec<SnapRow> = (0..300)
        .map(|i| {
            let c = contact(&format!("u-{i}"), 1, now + 3600);
            row("n0", stamp(60_000) + i, Op::Upsert, c)
        })
        .collect();
    node.write(&[], &rows);
    node.start();
    let mut v2 = accept(&l2, "old", 2);
    let mut liar = accept(&l3, "liar", 3);
    let mut digests = 0;
    let t = Instant::now();
    let mut asked = Vec::new();
    // Five checks, each answered with a lie: versions for another check,
    // an origin the frame does not name, more than the bound, and then
    // (twice) 100,000 keys it claims to hold newer, followed by rows
    // that are not what was asked for.
    while digests < 5 || asked.len() < 2 {
        let (f, _) = liar.next().expect("the engine's frames");
        match f {
            Frame::CheckDigest { check, .. } => {
                digests += 1;
                let made_up = |n: u64, origin: u16| -> Vec<KeyVersion> {
                    (0..n)
                        .map(|k| KeyVersion {
                            key: k,
                            hlc: 1 << 16,
                            origin,
                            live: true,
                        })
                        .collect()
                };
                let (check, origins, versions) = match digests {
                    1 => (check + 1000, vec!["x".to_string()], made_up(3, 0)),
                    2 => (check, vec!["x".to_string()], made_up(3, 5)),
                    3 => (check, vec!["x".to_string()], made_up(100_001, 0)),
                    _ => (check, vec!["x".to_string()], made_up(99_000, 0)),
                };
                liar.send(&Frame::CheckVersions {
                    check,
                    differing: 256,
                    ranges: (0..256).collect(),
                    origins,
                    versions,
                });
            }
            Frame::CheckRows { check, want, rows } => {
                assert!(rows.len() <= 2000 && want.len() <= 2000);
                asked.push(want.len());
                let garbage = RawSnapRow {
                    origin: "x".into(),
                    hlc: 1 << 16,
                    record: vec![0; 40],
                };
                let stranger = RawSnapRow {
                    origin: "x".into(),
                    hlc: 1 << 16,
                    record: {
                        let mut b = Vec::new();
                        let rec = Record::Contact {
                            op: Op::Delete,
                            contact: contact("u-1", 9, now + 3600),
                        };
                        sersync::codec::encode_into(&rec, &mut b).unwrap();
                        b
                    },
                };
                liar.send(&Frame::CheckRows {
                    check,
                    rows: vec![garbage, stranger],
                    want: vec![],
                });
            }
            _ => {}
        }
    }
    let took = t.elapsed();
    let st = node.status();
    println!(
        "five lying answers in {took:?}: {} checks, {} ignored, {} divergences claimed, \
         {} repaired; asked for {asked:?}",
        st.peer_checks, st.peer_check_ignored, st.peer_check_divergences, st.peer_check_repaired
    );
    assert_eq!(asked, vec![2000, 2000], "the claims were bounded");
    assert!(st.peer_check_ignored >= 3, "three lies out of bounds");
    assert_eq!(
        st.peer_check_repaired, 0,
        "nothing the liar sent was staged"
    );
    assert_eq!(node.usrloc.get("u-1").map(|c| c.cseq), Some(1));
    assert!(st.peers.iter().all(|p| p.connects == 1), "no link dropped");
    // The v2 peer heard member lists in the meantime, never a check.
    v2.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Some(f) = v2.frame() {
        assert!(
            matches!(f, Frame::DialerSession { .. } | Frame::Members { .. }),
            "a v2 peer got {f:?}"
        );
    }
    drop((v2, liar));
    node.stop();
}

#[test]
fn a_thousand_contacts_lost_among_fifty_thousand_are_repaired_within_an_interval() {
    let (mut n1, mut n2) = pair();
    let now = now_s();
    let old = stamp(60_000);
    let both: Vec<SnapRow> = (0..49_000)
        .map(|i| {
            row(
                "n0",
                old + i,
                Op::Upsert,
                contact(&format!("c-{i}"), 1, now + 3600),
            )
        })
        .collect();
    let lost: Vec<SnapRow> = (0..1000)
        .map(|i| {
            row(
                "n1",
                old + i,
                Op::Upsert,
                contact(&format!("lost-{i}"), 1, now + 3600),
            )
        })
        .collect();
    let mut behind1 = both.clone();
    behind1.extend(lost);
    n1.write(&[], &behind1);
    n2.write(&[], &both);
    let t0 = Instant::now();
    n1.start();
    n2.start();
    wait_for("the lost contacts at n2", Duration::from_secs(30), || {
        n2.usrloc.len() == 50_000
    });
    let took = t0.elapsed();
    let (s1, s2) = (n1.status(), n2.status());
    println!(
        "1,000 of 50,000 contacts lost: repaired at n2 {took:?} after start (check every \
         {INTERVAL:?}); n1: {} checks, {} ranges, {} divergences; n2: {} checks, {} ranges, \
         {} divergences, {} repaired",
        s1.peer_checks,
        s1.peer_check_ranges,
        s1.peer_check_divergences,
        s2.peer_checks,
        s2.peer_check_ranges,
        s2.peer_check_divergences,
        s2.peer_check_repaired
    );
    assert_eq!(s2.peer_check_repaired, 1000);
    n1.stop();
    n2.stop();
    let at = now_s();
    assert_eq!(n1.digest(at), n2.digest(at));
}
