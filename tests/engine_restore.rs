//! Restore at start (issue 11): with usrloc in memory, SER starts empty;
//! the engine puts back every live contact its journal holds, and what
//! peers changed meanwhile follows. Nothing deleted or expired returns.
//! SER is an in-memory map here; the e2e tests restart real Kamailio.

#[path = "ports/mod.rs"]
mod ports;
use ports::free_port;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};

type Table = Arc<Mutex<BTreeMap<Vec<u8>, Contact>>>;

/// SER's usrloc, in memory: gone when the node restarts.
#[derive(Clone, Default)]
struct Usrloc(Table);

impl Sink for Usrloc {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let mut t = self.0.lock().unwrap();
        for (_, r) in records {
            if let Record::Contact { op, contact } = r {
                match op {
                    Op::Upsert => t.insert(contact.aor.clone(), contact.clone()),
                    Op::Delete => t.remove(&contact.aor),
                };
            }
        }
        Ok(())
    }
}

impl Usrloc {
    fn aors(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

struct Node {
    id: &'static str,
    port: u16,
    peer: u16,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    usrloc: Usrloc,
    engine: Option<Engine>,
}

fn config(id: &str, port: u16, peer: u16, dir: &Path) -> sersync::config::Config {
    RawConfig {
        node_id: id.into(),
        listen: format!("tcp:127.0.0.1:{port}"),
        peers: vec![format!("tcp:127.0.0.1:{peer}")],
        secret: b"restore-test-secret".to_vec(),
        journal: dir.join("journal.db").display().to_string(),
        usrloc_in_memory: true,
        ..Default::default()
    }
    .check()
    .unwrap()
}

impl Node {
    fn new(id: &'static str, port: u16, peer: u16) -> Node {
        Node {
            id,
            port,
            peer,
            dir: tempfile::tempdir().unwrap(),
            shared: Arc::new(Shared::create(1024).unwrap()),
            usrloc: Usrloc::default(),
            engine: None,
        }
    }

    fn start(&mut self) {
        let cfg = config(self.id, self.port, self.peer, self.dir.path());
        let sink = Box::new(self.usrloc.clone());
        self.engine = Some(Engine::start(cfg, self.shared.clone(), Some(sink)).unwrap());
    }

    /// Stops the node; its SER comes back empty.
    fn restart(&mut self) {
        self.engine.take().unwrap().stop();
        self.usrloc.0.lock().unwrap().clear();
        self.start();
    }

    /// A local save() (or a de-registration): into usrloc and the queue.
    fn save(&self, aor: &str, op: Op, expires: i64) {
        let c = Contact {
            domain: b"location".to_vec(),
            aor: aor.as_bytes().to_vec(),
            contact: format!("sip:{aor}@192.0.2.4:5060").into_bytes(),
            ruid: format!("ruid-{aor}").into_bytes(),
            user_agent: format!("phone of {aor}").into_bytes(),
            expires,
            ..Default::default()
        };
        {
            let mut t = self.usrloc.0.lock().unwrap();
            match op {
                Op::Upsert => t.insert(c.aor.clone(), c.clone()),
                Op::Delete => t.remove(&c.aor),
            };
        }
        // A full queue is counted (dropped), as for SER's workers.
        let _ = self.shared.publish(&RecordRef::Contact {
            op,
            contact: c.as_ref(),
        });
    }

    fn status(&self) -> sersync::status::Snapshot {
        self.engine.as_ref().unwrap().status()
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_restarted_node_gets_every_live_contact_back_and_nothing_else() {
    let (pa, pb) = (free_port(), free_port());
    let mut a = Node::new("a", pa, pb);
    let mut b = Node::new("b", pb, pa);
    a.start();
    b.start();
    let later = now() + 3600;
    for i in 0..50 {
        a.save(&format!("a{i}"), Op::Upsert, later);
    }
    for i in 0..30 {
        b.save(&format!("b{i}"), Op::Upsert, later);
    }
    // Gone before the restart: deleted, and expired.
    for i in 0..5 {
        a.save(&format!("a{i}"), Op::Delete, later);
    }
    b.save("short", Op::Upsert, now() + 1);
    wait_for(
        "both nodes to hold the same",
        Duration::from_secs(10),
        || a.usrloc.aors().len() == 76 && b.usrloc.aors() == a.usrloc.aors(),
    );
    std::thread::sleep(Duration::from_millis(2100)); // "short" expires

    // A graceful restart: back to every live contact.
    a.restart();
    wait_for("a's contacts back", Duration::from_secs(10), || {
        a.usrloc.aors().len() == 75
    });
    let back = a.usrloc.aors();
    assert!(
        !back.contains(&b"short".to_vec()),
        "an expired contact came back"
    );
    assert!(
        !back.contains(&b"a0".to_vec()),
        "a deleted contact came back"
    );
    assert_eq!(
        a.usrloc.0.lock().unwrap()[&b"b7".to_vec()].user_agent,
        b"phone of b7",
        "every field comes back"
    );
    wait_for("the restore counted", Duration::from_secs(5), || {
        let st = a.status();
        st.restored == 75 && st.restore_pending == 0
    });

    // Down while b changes: b's changes follow the restore.
    a.engine.take().unwrap().stop();
    a.usrloc.0.lock().unwrap().clear();
    for i in 30..40 {
        b.save(&format!("b{i}"), Op::Upsert, later);
    }
    for i in 0..3 {
        b.save(&format!("b{i}"), Op::Delete, later);
    }
    a.start();
    // (This stand-in for SER does not expire contacts: b still shows
    // "short", which a real usrloc drops.)
    let mut expect = b.usrloc.aors();
    expect.retain(|k| k != b"short");
    wait_for("a to hold what b holds", Duration::from_secs(15), || {
        let mut expect = b.usrloc.aors();
        expect.retain(|k| k != b"short");
        a.usrloc.aors() == expect
    });
    assert_eq!(expect.len(), 75 + 10 - 3);
    a.engine.take().unwrap().stop();
    b.engine.take().unwrap().stop();
}

/// A registration storm right after a restart: the worker queue is drained
/// from the first moment, while the start-up comparison (here the restore
/// of 100,000 journaled contacts) still runs, so a queue far smaller than
/// the storm drops nothing.
#[test]
fn a_storm_during_the_start_up_comparison_drops_nothing() {
    const JOURNALED: usize = 100_000;
    const STORM: usize = 3_000;
    let (pa, pb) = (free_port(), free_port());
    let mut a = Node::new("a", pa, pb);
    {
        // A journal that holds many live contacts: a long comparison.
        let mut j = sersync::journal::Journal::open(&a.dir.path().join("journal.db")).unwrap();
        let later = now() + 3600;
        let stamp = (now() as u64 * 1000) << 16;
        let records: Vec<(u64, Record)> = (0..JOURNALED)
            .map(|i| {
                let aor = format!("old{i}");
                let contact = Contact {
                    domain: b"location".to_vec(),
                    contact: format!("sip:{aor}@192.0.2.4:5060").into_bytes(),
                    ruid: format!("ruid-{aor}").into_bytes(),
                    aor: aor.into_bytes(),
                    expires: later,
                    ..Default::default()
                };
                (
                    stamp + i as u64,
                    Record::Contact {
                        op: Op::Upsert,
                        contact,
                    },
                )
            })
            .collect();
        for chunk in records.chunks(10_000) {
            j.append_local("a", chunk).unwrap();
        }
    }
    // SIP workers run before the engine does: the first REGISTERs wait in
    // the queue (1,024 slots), the rest arrive while it starts.
    let early = 500;
    for i in 0..early {
        a.save(&format!("new{i}"), Op::Upsert, now() + 3600);
    }
    let t0 = Instant::now();
    let started = std::thread::scope(|s| {
        let starting = s.spawn(|| {
            let cfg = config(a.id, a.port, a.peer, a.dir.path());
            let engine = Engine::start(cfg, a.shared.clone(), Some(Box::new(a.usrloc.clone())));
            (engine, t0.elapsed())
        });
        // 5,000 REGISTERs a second, far below what the ingest takes.
        for i in early..STORM {
            a.save(&format!("new{i}"), Op::Upsert, now() + 3600);
            std::thread::sleep(Duration::from_micros(200));
        }
        starting.join().unwrap()
    });
    let (engine, start_took) = started;
    a.engine = Some(engine.unwrap());
    eprintln!(
        "engine start with {JOURNALED} contacts to restore took {:.2} s; storm of {STORM} took {:.2} s",
        start_took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(a.shared.dropped(), 0, "REGISTERs dropped during the start");
    wait_for("the storm journaled", Duration::from_secs(30), || {
        a.status().journaled == STORM as u64
    });
    a.engine.take().unwrap().stop();
}
