//! Identity (issue 13): two nodes running at once under one node id,
//! each seeded only to a third node, are refused by it, with a log line
//! naming the id and both addresses and the reason told to each clone;
//! once one of them stops, the other is taken again. A node stopped and
//! started again at once on its journal (a quick restart) is not taken for
//! a clone and loses nothing. Member lists and `sersync.forget` are taken
//! only from members that authenticated.

#[path = "ports/mod.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::hlc;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};
use sersync::status::PeerState;

const SECRET: &[u8] = b"identity-test-secret";

/// What a node's "SER" got applied: the AORs.
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<BTreeSet<String>>>);

impl Applied {
    fn has(&self, aor: &str) -> bool {
        self.0.lock().unwrap().contains(aor)
    }
}

impl Sink for Applied {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let mut t = self.0.lock().unwrap();
        for (_, r) in records {
            if let Record::Contact { contact, .. } = r {
                t.insert(String::from_utf8_lossy(&contact.aor).into_owned());
            }
        }
        Ok(())
    }
}

struct Node {
    shared: Arc<Shared>,
    engine: Engine,
    applied: Applied,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(id: &str, me: u16, peers: &[u16]) -> Node {
        Node::start_in(tempfile::tempdir().unwrap(), id, me, peers)
    }

    /// Starts the engine on the journal in `dir`, with a fresh SER region.
    fn start_in(dir: tempfile::TempDir, id: &str, me: u16, peers: &[u16]) -> Node {
        Node::start_with(dir, id, me, peers, SECRET, false)
    }

    /// As `start_in`, with this secret, and accepting peers in clear
    /// (`accept_clear_peers`) or not.
    fn start_with(
        dir: tempfile::TempDir,
        id: &str,
        me: u16,
        peers: &[u16],
        secret: &[u8],
        clear: bool,
    ) -> Node {
        let cfg = RawConfig {
            node_id: id.into(),
            listen: format!("tcp:127.0.0.1:{me}"),
            peers: peers.iter().map(|p| format!("tcp:127.0.0.1:{p}")).collect(),
            secret: secret.to_vec(),
            journal: dir.path().join("j.db").display().to_string(),
            accept_clear_peers: clear,
            ..Default::default()
        }
        .check()
        .unwrap();
        let shared = Arc::new(Shared::create(1024).unwrap());
        let applied = Applied::default();
        let engine = Engine::start(cfg, shared.clone(), Some(Box::new(applied.clone()))).unwrap();
        Node {
            shared,
            engine,
            applied,
            dir,
        }
    }

    /// A SIP worker's registration of `aor` on this node's SER.
    fn register(&self, aor: &str) {
        let c = Contact {
            domain: b"location".to_vec(),
            aor: aor.as_bytes().to_vec(),
            contact: format!("sip:{aor}@192.0.2.1").into_bytes(),
            ruid: format!("ruid-{aor}").into_bytes(),
            cseq: 1,
            expires: (hlc::wall_ms() / 1000) as i64 + 3600,
            ..Default::default()
        };
        self.shared
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: c.as_ref(),
            })
            .unwrap();
    }

    /// This node's link to the member listening on `port`.
    fn link_to(&self, port: u16) -> Option<sersync::status::PeerStatus> {
        let at = format!("127.0.0.1:{port}");
        self.engine
            .status()
            .peers
            .into_iter()
            .find(|p| p.address.ends_with(&at))
    }
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line logged in this test process (each engine's, all together).
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn keep_line(level: i32, line: &str) -> bool {
    eprintln!("[{level}] {line}");
    LINES.lock().unwrap().push(line.to_string());
    true
}

fn logged(f: impl Fn(&str) -> bool) -> Vec<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| f(l))
        .cloned()
        .collect()
}

/// Names node id x and both addresses.
fn names_both(line: &str, pa: u16, pb: u16) -> bool {
    line.contains("\"x\"")
        && line.contains(&format!("127.0.0.1:{pa}"))
        && line.contains(&format!("127.0.0.1:{pb}"))
}

#[test]
fn clones_seeded_through_a_third_node_are_refused_on_every_node_involved() {
    sersync::log::set_sink(keep_line);
    let (pc, pa, pb) = (free_port(), free_port(), free_port());
    let c = Node::start("c", pc, &[]);
    let a = Node::start("x", pa, &[pc]);
    a.register("from-a-1");
    wait("a's change at c", Duration::from_secs(20), || {
        c.applied.has("from-a-1")
    });

    // A second node under the same id, its own journal, seeded only to c.
    let b = Node::start("x", pb, &[pc]);
    b.register("from-b-1");
    // c refuses both, and tells each why: each logs it and shows it on
    // its link to c.
    let refused = |n: &Node| {
        n.link_to(pc).is_some_and(|l| {
            l.state == PeerState::Refused
                && l.last_error.contains("running at once")
                && names_both(&l.last_error, pa, pb)
        })
    };
    wait("both clones refused by c", Duration::from_secs(20), || {
        refused(&a) && refused(&b)
    });
    let at_c = logged(|l| l.contains("running at once") && names_both(l, pa, pb));
    assert!(!at_c.is_empty(), "c names the id and both addresses");
    let told = logged(|l| {
        l.contains(&format!("peer tcp:127.0.0.1:{pc}"))
            && l.contains("running at once")
            && names_both(l, pa, pb)
    });
    assert!(told.len() >= 2, "each clone logs c's refusal: {told:?}");
    let st = c.engine.status();
    assert!(st.clones_refused >= 1, "{st:?}");
    assert!(names_both(&st.clone_last_reason, pa, pb), "{st:?}");

    // c took nothing of b as x's, and while both run neither gets through
    // (a retry comes every 5 s).
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for n in [&a, &b] {
            let l = n.link_to(pc).unwrap();
            assert_ne!(l.state, PeerState::Up, "a clone's link came up: {l:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!c.applied.has("from-b-1"));

    // The clone stops: once only one run of x has been seen for a while,
    // c takes it again, and what it changed meanwhile arrives.
    b.engine.stop();
    a.register("from-a-2");
    wait("x taken again once alone", Duration::from_secs(40), || {
        c.applied.has("from-a-2")
    });
    assert_eq!(a.link_to(pc).unwrap().state, PeerState::Up);
    // Started again under its own id, the second node joins.
    let y = Node::start_in(b.dir, "y", pb, &[pc]);
    y.register("from-y-1");
    wait("y's change at c and at x", Duration::from_secs(20), || {
        c.applied.has("from-y-1") && a.applied.has("from-y-1")
    });
    for n in [a, c, y] {
        n.engine.stop();
    }
}

/// A copy of a node's journal started elsewhere (a cloned VM): its
/// incarnation is higher than the original's, so it first looks like a
/// restart of it and replaces its links; the original, still running,
/// connects again with a run that was replaced, and both are refused.
#[test]
fn a_copy_of_a_journal_started_beside_its_node_is_refused_too() {
    sersync::log::set_sink(keep_line);
    let (pc, pa, pb) = (free_port(), free_port(), free_port());
    let c = Node::start("c", pc, &[]);
    let a = Node::start("v", pa, &[pc]);
    a.register("v-1");
    wait("v's change at c", Duration::from_secs(20), || {
        c.applied.has("v-1")
    });
    let Node { engine, dir, .. } = a;
    engine.stop();
    // The copy, started once (incarnation 2) and stopped.
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.path().join(f.file_name())).unwrap();
    }
    let b = Node::start_in(copy, "v", pb, &[]);
    assert_eq!(b.engine.status().incarnation, 2);
    let Node {
        engine, dir: copy, ..
    } = b;
    engine.stop();
    // The original runs again (incarnation 2), then the copy (3).
    let a = Node::start_in(dir, "v", pa, &[pc]);
    a.register("v-2");
    wait("v's next change at c", Duration::from_secs(20), || {
        c.applied.has("v-2")
    });
    let b = Node::start_in(copy, "v", pb, &[pc]);
    assert_eq!(b.engine.status().incarnation, 3);
    let names = |l: &str| {
        l.contains("\"v\"")
            && l.contains("running at once")
            && l.contains(&format!("127.0.0.1:{pa}"))
            && l.contains(&format!("127.0.0.1:{pb}"))
    };
    wait("both refused by c", Duration::from_secs(20), || {
        [&a, &b].iter().all(|n| {
            n.link_to(pc)
                .is_some_and(|l| l.state == PeerState::Refused && names(&l.last_error))
        })
    });
    assert!(c.engine.status().clones_refused >= 1);
    assert!(!logged(|l| names(l) && !l.contains("peer")).is_empty());
    // The copy stops: the original is taken again.
    b.engine.stop();
    a.register("v-3");
    wait("v taken again once alone", Duration::from_secs(40), || {
        c.applied.has("v-3")
    });
    for n in [a, c] {
        n.engine.stop();
    }
}

#[test]
fn a_quick_restart_is_not_taken_for_a_clone() {
    sersync::log::set_sink(keep_line);
    let (pc, pa) = (free_port(), free_port());
    let c = Node::start("c", pc, &[]);
    let a = Node::start("r", pa, &[pc]);
    a.register("before");
    wait("r's change at c", Duration::from_secs(20), || {
        c.applied.has("before")
    });
    // Changes still flowing when r stops; started again at once on its
    // journal.
    for i in 0..300 {
        a.register(&format!("burst-{i}"));
    }
    wait("the burst journaled", Duration::from_secs(10), || {
        a.engine.status().journaled >= 301
    });
    let Node { engine, dir, .. } = a;
    let stopped = Instant::now();
    engine.stop();
    let a = Node::start_in(dir, "r", pa, &[pc]);
    assert!(stopped.elapsed() < Duration::from_secs(1));
    assert_eq!(a.engine.status().incarnation, 2);
    a.register("after");
    c.register("from-c");
    wait(
        "every change of r at c, c's at r",
        Duration::from_secs(20),
        || {
            c.applied.has("after")
                && (0..300).all(|i| c.applied.has(&format!("burst-{i}")))
                && a.applied.has("from-c")
        },
    );
    assert_eq!(c.engine.status().clones_refused, 0);
    assert_eq!(a.link_to(pc).unwrap().state, PeerState::Up);
    let clone_lines = logged(|l| l.contains("running at once") && l.contains("\"r\""));
    assert!(clone_lines.is_empty(), "{clone_lines:?}");
    for n in [a, c] {
        n.engine.stop();
    }
}

#[test]
fn membership_and_forget_come_only_from_authenticated_members() {
    use sersync::queue::ItemRef;
    use sersync::wire::{Frame, Member};
    use std::io::{Read, Write};
    sersync::log::set_sink(keep_line);
    let (p1, p2, p3, pg) = (free_port(), free_port(), free_port(), free_port());
    // n1 also takes peers in clear (an upgrade in progress): the most it
    // may be exposed.
    let n1 = Node::start_with(tempfile::tempdir().unwrap(), "n1", p1, &[p2], SECRET, true);
    let n2 = Node::start("n2", p2, &[p1]);
    n1.register("warm-up");
    wait("n1 and n2 linked", Duration::from_secs(20), || {
        n2.applied.has("warm-up")
    });
    // What an intruder would like every member to take in: n2 forgotten,
    // and a member of its own.
    let lies = vec![
        Member {
            node_id: "n2".into(),
            address: String::new(),
            forgotten: true,
        },
        Member {
            node_id: "ghost".into(),
            address: format!("tcp:127.0.0.1:{pg}"),
            forgotten: false,
        },
    ];
    let mut frame = Vec::new();
    Frame::Members {
        members: lies.clone(),
    }
    .write_to(&mut frame)
    .unwrap();
    // 1. In clear, without a handshake, to each node: dropped.
    for port in [p1, p2] {
        let mut s = ports::connect_when_listening(port);
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf); // the challenge
        s.write_all(&frame).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    // 2. A node with another cluster's secret that has forgotten n2 and
    // knows "ghost", dialing both and dialed back.
    let intruder = Node::start_with(
        tempfile::tempdir().unwrap(),
        "intruder",
        p3,
        &[p1, p2, pg],
        b"another-clusters-secret",
        true,
    );
    intruder
        .shared
        .publish(ItemRef::Forget { node_id: "n2" })
        .unwrap();
    wait("the intruder refused", Duration::from_secs(20), || {
        [p1, p2].iter().all(|&p| {
            intruder
                .link_to(p)
                .is_some_and(|l| l.state == PeerState::Refused)
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    // Nothing of it was taken: n1 and n2 still know and reach each other,
    // nobody knows "ghost", nothing is forgotten.
    for (n, other) in [(&n1, p2), (&n2, p1)] {
        let st = n.engine.status();
        assert!(
            st.peers
                .iter()
                .all(|p| p.node_id != "ghost" && p.node_id != "intruder"),
            "{:?}",
            st.peers
        );
        let l = n.link_to(other).unwrap();
        assert!(l.state == PeerState::Up && !l.forgotten, "{l:?}");
        let j = sersync::journal::Journal::open(&n.dir.path().join("j.db")).unwrap();
        assert!(!j.is_forgotten("n2").unwrap() && !j.is_forgotten("n1").unwrap());
        assert!(j.members().unwrap().iter().all(|m| m.0 != "ghost"));
    }
    n1.register("after");
    n2.register("after-2");
    wait("n1 and n2 still replicate", Duration::from_secs(20), || {
        n2.applied.has("after") && n1.applied.has("after-2")
    });
    for n in [intruder, n1, n2] {
        n.engine.stop();
    }
}
