//! The bound on clock skew (issue 13, "Clocks"), with engines over
//! loopback: a peer whose clock runs ahead of the bound has its batches
//! refused (log, counter and reason on both sides) while another peer's
//! go through; once the clocks are back within the bound the refused
//! changes arrive. A stamp from the far future, or >= 2^63, is never
//! staged and never drags the receiver's clock along.

#[path = "ports/mod.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::hlc;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};

/// What a node's "SER" got applied: the AORs and their CSeq.
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<BTreeMap<String, i32>>>);

impl Applied {
    fn has(&self, aor: &str) -> bool {
        self.0.lock().unwrap().contains_key(aor)
    }

    fn cseq(&self, aor: &str) -> Option<i32> {
        self.0.lock().unwrap().get(aor).copied()
    }
}

impl Sink for Applied {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let mut t = self.0.lock().unwrap();
        for (_, r) in records {
            if let Record::Contact { contact, .. } = r {
                t.insert(
                    String::from_utf8_lossy(&contact.aor).into_owned(),
                    contact.cseq,
                );
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
    fn start(id: &str, me: u16, peers: &[u16], skew: Duration) -> Node {
        let shared = Arc::new(Shared::create(1024).unwrap());
        Node::start_in(tempfile::tempdir().unwrap(), shared, id, me, peers, skew)
    }

    /// Starts the engine on the journal in `dir` and the SER region
    /// `shared` (a fresh one: SER restarted).
    fn start_in(
        dir: tempfile::TempDir,
        shared: Arc<Shared>,
        id: &str,
        me: u16,
        peers: &[u16],
        skew: Duration,
    ) -> Node {
        let mut cfg = RawConfig {
            node_id: id.into(),
            listen: format!("tcp:127.0.0.1:{me}"),
            peers: peers.iter().map(|p| format!("tcp:127.0.0.1:{p}")).collect(),
            secret: b"clock-test-secret".to_vec(),
            journal: dir.path().join("j.db").display().to_string(),
            ..Default::default()
        }
        .check()
        .unwrap();
        cfg.max_clock_skew = skew;
        let applied = Applied::default();
        let engine = Engine::start(cfg, shared.clone(), Some(Box::new(applied.clone()))).unwrap();
        Node {
            shared,
            engine,
            applied,
            dir,
        }
    }

    fn register(&self, aor: &str) {
        register(&self.shared, aor, 1);
    }

    /// Runs this node's clock `ms` ahead of the wall clock, as a node
    /// whose system clock is ahead stamps.
    fn clock_ahead(&self, ms: u64) {
        self.shared.observe((hlc::wall_ms() + ms) << 16);
    }
}

/// A SIP worker's registration on the SER of `shared`: stamped from its
/// clock as usrloc makes it.
fn register(shared: &Shared, aor: &str, cseq: i32) {
    let c = Contact {
        domain: b"location".to_vec(),
        aor: aor.as_bytes().to_vec(),
        contact: format!("sip:{aor}@192.0.2.1").into_bytes(),
        ruid: format!("ruid-{aor}").into_bytes(),
        cseq,
        expires: (hlc::wall_ms() / 1000) as i64 + 3600,
        ..Default::default()
    };
    shared
        .publish(&RecordRef::Contact {
            op: Op::Upsert,
            contact: c.as_ref(),
        })
        .unwrap();
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// n1 (clock ahead) and n3 (clock right) both send to n2.
fn three(skew: Duration) -> (Node, Node, Node) {
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let n2 = Node::start("n2", p2, &[p1, p3], skew);
    let n1 = Node::start("n1", p1, &[p2], skew);
    let n3 = Node::start("n3", p3, &[p2], skew);
    // links up: a change from each reaches n2
    n1.register("warmup1");
    n3.register("warmup3");
    wait("warm-up", Duration::from_secs(20), || {
        n2.applied.has("warmup1") && n2.applied.has("warmup3")
    });
    (n1, n2, n3)
}

#[test]
fn a_clock_ahead_of_the_bound_is_refused_until_back_within_it_others_flow() {
    let (n1, n2, n3) = three(Duration::from_millis(1000));
    // Within the bound: taken at once.
    n1.clock_ahead(500);
    n1.register("within");
    wait("a change 0.5 s ahead", Duration::from_secs(10), || {
        n2.applied.has("within")
    });
    assert_eq!(n2.engine.status().clock_refused, 0);

    // Beyond it: 3 s ahead with a 1 s bound.
    n1.clock_ahead(3000);
    n1.register("ahead");
    wait("n2 refuses it", Duration::from_secs(10), || {
        n2.engine.status().clock_refused > 0
    });
    let st2 = n2.engine.status();
    assert!(
        st2.clock_last_reason.contains("from n1")
            && st2
                .clock_last_reason
                .contains("ms ahead of this node's clock"),
        "{st2:?}"
    );
    assert!(!n2.applied.has("ahead"), "staged while out of bound");
    // The origin knows why.
    wait("n1 is told", Duration::from_secs(10), || {
        n1.engine.status().clock_refused_by_peers > 0
    });
    let st1 = n1.engine.status();
    assert!(
        // n3 learnt of n1 through n2 and refuses it too
        st1.clock_last_reason.starts_with("refused by n")
            && st1.clock_last_reason.contains(": clock skew: change"),
        "{st1:?}"
    );
    // Another origin is not held up.
    n3.register("other");
    let took = wait("n3's change meanwhile", Duration::from_secs(5), || {
        n2.applied.has("other")
    });
    assert!(!n2.applied.has("ahead"), "{took:?}");
    // Once n2's clock has caught up (the stamp is 3 s ahead, the bound
    // 1 s: after about 2 s), n1's resend goes through.
    let took = wait(
        "the resend within the bound",
        Duration::from_secs(15),
        || n2.applied.has("ahead"),
    );
    eprintln!("refused change arrived {took:?} after the other origin's");
}

#[test]
fn far_future_and_invalid_stamps_never_enter_nor_move_the_clock() {
    let (n1, n2, n3) = three(Duration::from_secs(5));
    // Ten years ahead.
    n1.clock_ahead(10 * 365 * 24 * 3600 * 1000);
    n1.register("future");
    wait("refused", Duration::from_secs(10), || {
        n2.engine.status().clock_refused > 0
    });
    // Then a stamp >= 2^63 (stored signed, it would read negative).
    n1.shared.observe(1 << 63);
    n1.register("invalid");
    n3.register("fine");
    wait("n3's change", Duration::from_secs(10), || {
        n2.applied.has("fine")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!n2.applied.has("future") && !n2.applied.has("invalid"));
    // n2's clock was not dragged along: its next stamp is about now.
    let next = n2.shared.stamp();
    let ahead = hlc::millis(next).saturating_sub(hlc::wall_ms());
    assert!(
        next >> 63 == 0 && ahead < 1000,
        "n2's clock moved: {next:#x}"
    );
    let st = n2.engine.status();
    assert!(
        st.clock_last_reason.contains("ms ahead") || st.clock_last_reason.contains("2^63"),
        "{st:?}"
    );
}

#[test]
fn a_restart_after_skew_never_goes_back_and_journals_local_changes() {
    let (p1, p2) = (free_port(), free_port());
    let bound = Duration::from_secs(60);
    let n2 = Node::start("n2", p2, &[p1], bound);
    let n1 = Node::start("n1", p1, &[p2], bound);
    // n2's clock runs 20 s ahead (within this bound): its change of "k"
    // is the newest version n1 knows.
    let t0 = hlc::wall_ms();
    n2.clock_ahead(20_000);
    register(&n2.shared, "k", 1);
    wait("n2's change at n1", Duration::from_secs(20), || {
        n1.applied.cseq("k") == Some(1)
    });
    // n1's SER restarts: a fresh region, its clock at the wall clock's
    // time, and a phone re-registers before the engine is up, so SIP
    // stamps it behind n2's version.
    let Node { engine, dir, .. } = n1;
    engine.stop();
    let shared = Arc::new(Shared::create(1024).unwrap());
    register(&shared, "k", 2);
    let n1 = Node::start_in(dir, shared, "n1", p1, &[p2], bound);
    // Journaled (stamped again past n2's) and replicated.
    wait("n1's later change at n2", Duration::from_secs(20), || {
        n2.applied.cseq("k") == Some(2)
    });
    assert!(n1.engine.status().journaled >= 1);
    // n1's clock did not go back: past the 20 s skew it accepted.
    let next = n1.shared.stamp();
    assert!(hlc::millis(next) >= t0 + 20_000, "{next:#x}");
}

#[test]
fn the_clock_high_water_mark_outlives_the_state() {
    // A journal whose state holds nothing of a stamp it accepted an hour
    // ahead (trimmed, purged): only the high-water mark remembers it.
    let dir = tempfile::tempdir().unwrap();
    let high = (hlc::wall_ms() + 3_600_000) << 16;
    {
        let mut j = sersync::journal::Journal::open(&dir.path().join("j.db")).unwrap();
        j.raise_clock_high(high).unwrap();
        j.raise_clock_high(high - 1).unwrap();
        j.raise_clock_high(1 << 63).unwrap();
        assert_eq!(
            j.clock_high().unwrap(),
            high,
            "never lowered, 2^63 not kept"
        );
    }
    let shared = Arc::new(Shared::create(1024).unwrap());
    let n = Node::start_in(dir, shared, "n1", free_port(), &[], Duration::from_secs(5));
    assert!(n.shared.stamp() > high);
    n.engine.stop();
}
