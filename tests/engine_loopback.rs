//! Engines in one process over loopback TCP: changes published on any node
//! reach every other node, in every direction, exactly once, also across a
//! peer restart. SER is replaced by an in-memory sink (the end-to-end tests
//! use real Kamailio); journals are real SQLite files.

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
use sersync::queue::{ItemRef, Shared};
use sersync::record::{Contact, Op, Record, RecordRef};

type Table = Arc<Mutex<BTreeMap<(Vec<u8>, Vec<u8>), Contact>>>;

/// Stands in for SER's usrloc (and alias table): applies upserts and
/// deletes to a map keyed by the record's key. Holding the gate makes
/// the applier wait, as a busy SER would.
struct MemorySink(Table, Arc<Mutex<()>>);

impl Sink for MemorySink {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let _gate = self.1.lock().unwrap();
        let mut t = self.0.lock().unwrap();
        for (_, r) in records {
            let (op, contact) = match r {
                Record::Contact { op, contact } => (op, contact.clone()),
                Record::Alias { op, alias } => (
                    op,
                    Contact {
                        aor: alias.alias_username.clone(),
                        contact: alias.username.clone(),
                        ..Default::default()
                    },
                ),
            };
            let key = (contact.aor.clone(), contact.contact.clone());
            match op {
                Op::Upsert => {
                    t.insert(key, contact);
                }
                Op::Delete => {
                    t.remove(&key);
                }
            }
        }
        Ok(())
    }
}

struct Node {
    id: String,
    port: u16,
    peers: Vec<u16>,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    engine: Option<Engine>,
    /// What this node's "SER" holds: local changes are written here
    /// directly (as save() would), remote ones by the engine's applier.
    table: Table,
    /// Held by a test to keep the applier from writing `table`.
    gate: Arc<Mutex<()>>,
    retention_records: Option<u64>,
    /// Config::retention_ms, when not the default.
    retention_ms: Option<u64>,
    /// Config::alias_scan_idle_max, when not the default.
    scan_idle_max: Option<Duration>,
}

fn config(id: &str, port: u16, peers: &[u16], dir: &Path) -> sersync::config::Config {
    RawConfig {
        node_id: id.into(),
        listen: format!("tcp:127.0.0.1:{port}"),
        peers: peers.iter().map(|p| format!("tcp:127.0.0.1:{p}")).collect(),
        secret: b"loopback-test-secret".to_vec(),
        journal: dir.join("journal.db").display().to_string(),
        ..Default::default()
    }
    .check()
    .unwrap()
}

impl Node {
    fn start(&mut self) {
        let mut cfg = config(&self.id, self.port, &self.peers, self.dir.path());
        if let Some(n) = self.retention_records {
            cfg.retention_records = n;
        }
        if let Some(ms) = self.retention_ms {
            cfg.retention_ms = ms;
        }
        if let Some(d) = self.scan_idle_max {
            cfg.alias_scan_idle_max = d;
        }
        let sink = Box::new(MemorySink(self.table.clone(), self.gate.clone()));
        self.engine = Some(Engine::start(cfg, self.shared.clone(), Some(sink)).unwrap());
    }

    fn stop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.stop();
        }
    }

    /// A local registration: into the local table and the worker queue.
    fn register(&self, user: u32, cseq: i32) {
        let c = contact(&self.id, user, cseq);
        self.table
            .lock()
            .unwrap()
            .insert((c.aor.clone(), c.contact.clone()), c.clone());
        self.shared
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: c.as_ref(),
            })
            .unwrap();
    }

    /// A local alias change, as the alias RPCs publish it.
    fn publish_alias(&self, op: Op, a: &sersync::record::Alias) {
        self.shared
            .publish(&RecordRef::Alias {
                op,
                alias: a.as_ref(),
            })
            .unwrap();
    }

    /// A scan of the alias table starts (false) or ends (true).
    fn scan_mark(&self, end: bool) {
        let table: &[u8] = b"dbaliases";
        let mark = if end {
            ItemRef::ScanEnd {
                table,
                confirmed: false,
            }
        } else {
            ItemRef::ScanBegin { table }
        };
        self.shared.publish(mark).unwrap();
    }

    fn holds_alias(&self, a: &str, target: &str) -> bool {
        let key = (a.as_bytes().to_vec(), target.as_bytes().to_vec());
        self.table.lock().unwrap().contains_key(&key)
    }

    fn unregister(&self, user: u32) {
        let c = contact(&self.id, user, 0);
        self.table
            .lock()
            .unwrap()
            .remove(&(c.aor.clone(), c.contact.clone()));
        self.shared
            .publish(&RecordRef::Contact {
                op: Op::Delete,
                contact: c.as_ref(),
            })
            .unwrap();
    }
}

fn contact(origin: &str, user: u32, cseq: i32) -> Contact {
    Contact {
        domain: b"location".to_vec(),
        aor: format!("{origin}-user{user}").into_bytes(),
        contact: format!("sip:{origin}-user{user}@192.0.2.{}:5060", user % 250).into_bytes(),
        ruid: format!("uloc-{origin}-{user}").into_bytes(),
        received: format!("sip:198.51.100.7:{}", 1024 + user).into_bytes(),
        path: b"<sip:edge.example.net;lr>".to_vec(),
        callid: format!("call-{user}").into_bytes(),
        user_agent: b"loopback/1.0".to_vec(),
        instance: b"<urn:uuid:00000000-0000-0000-0000-000000000001>".to_vec(),
        expires: 2_000_000_000,
        last_modified: 1_700_000_000,
        q: 1000,
        cseq,
        flags: 0,
        cflags: 64,
        methods: 0x1fff,
        reg_id: 1,
        server_id: 7,
        ..Default::default()
    }
}

fn cluster(n: usize) -> Vec<Node> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node {
            id: format!("n{}", i + 1),
            port: ports[i],
            peers: ports.iter().copied().filter(|p| *p != ports[i]).collect(),
            dir: tempfile::tempdir().unwrap(),
            shared: Arc::new(Shared::create(1 << 14).unwrap()),
            engine: None,
            table: Arc::default(),
            gate: Arc::default(),
            retention_records: None,
            retention_ms: None,
            scan_idle_max: None,
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    nodes
}

fn wait_converged(nodes: &[Node], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let first = nodes[0].table.lock().unwrap().clone();
        let all_same = nodes[1..].iter().all(|n| *n.table.lock().unwrap() == first);
        if all_same {
            return;
        }
        if Instant::now() > deadline {
            for n in nodes {
                eprintln!(
                    "{}: {} contacts, status {:?}",
                    n.id,
                    n.table.lock().unwrap().len(),
                    n.engine.as_ref().map(|e| e.status())
                );
            }
            panic!("nodes did not converge within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_engines_exchange_in_both_directions() {
    let nodes = cluster(2);
    for u in 0..500 {
        nodes[0].register(u, 1);
        nodes[1].register(u, 1);
    }
    for u in 0..100 {
        nodes[0].unregister(u);
    }
    wait_converged(&nodes, Duration::from_secs(20));
    assert_eq!(nodes[0].table.lock().unwrap().len(), 900);
    // Every field survived, not just the key.
    let got = nodes[1].table.lock().unwrap()[&(
        b"n1-user400".to_vec(),
        b"sip:n1-user400@192.0.2.150:5060".to_vec(),
    )]
        .clone();
    assert_eq!(got, contact("n1", 400, 1));
    // Each change crossed the link once; nothing echoed back. (Status
    // figures are refreshed every 200 ms.)
    std::thread::sleep(Duration::from_millis(500));
    let s0 = nodes[0].engine.as_ref().unwrap().status();
    let s1 = nodes[1].engine.as_ref().unwrap().status();
    assert_eq!(s0.journaled, 600);
    assert_eq!(s1.journaled, 500);
    assert_eq!(s0.peers[0].sent, 600);
    assert_eq!(s1.peers[0].sent, 500);
    assert_eq!(s1.peers[0].received, 600);
    assert_eq!(s0.peers[0].received, 500);
    // Upserts overtaken by their deletion before the applier reached them
    // are skipped, never applied twice.
    assert!((500..=600).contains(&s1.applied), "{}", s1.applied);
    assert_eq!(s0.applied, 500);
}

#[test]
fn three_engines_with_a_peer_restarted_mid_stream() {
    let mut nodes = cluster(3);
    for u in 0..300 {
        for n in &nodes {
            n.register(u, 1);
        }
    }
    // Stop node 3 while the stream is in flight; the others keep changing.
    nodes[2].stop();
    for u in 300..1300 {
        nodes[0].register(u, 1);
        nodes[1].register(u, 1);
    }
    for u in 0..50 {
        nodes[1].unregister(u);
    }
    std::thread::sleep(Duration::from_millis(300));
    nodes[2].start();
    for u in 300..400 {
        nodes[2].register(u, 1);
    }
    wait_converged(&nodes, Duration::from_secs(30));
    assert_eq!(
        nodes[2].table.lock().unwrap().len(),
        3 * 300 + 2 * 1000 - 50 + 100
    );
    // Node 3 holds nothing twice: every origin sequence applied exactly once.
    // (Status figures are refreshed every 200 ms: the last acknowledgement
    // may reach them a moment after the tables converged.)
    let t0 = Instant::now();
    let s1 = loop {
        let s = nodes[0].engine.as_ref().unwrap().status();
        let done = s.peers.iter().all(|p| p.acked == 1300 && p.pending == 0);
        if done || t0.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(s1.journaled, 1300);
    for p in &s1.peers {
        assert_eq!(p.acked, 1300, "peer {} acknowledged everything", p.node_id);
        assert_eq!(p.pending, 0, "peer {}", p.node_id);
    }
}

#[test]
fn a_node_with_another_secret_gets_nothing() {
    let mut nodes = cluster(2);
    let intruder_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut raw = RawConfig {
        node_id: "intruder".into(),
        listen: format!("tcp:127.0.0.1:{port}"),
        peers: vec![format!("tcp:127.0.0.1:{}", nodes[0].port)],
        secret: b"not-the-cluster-secret".to_vec(),
        journal: intruder_dir.path().join("j.db").display().to_string(),
        ..Default::default()
    };
    let table: Table = Arc::default();
    let shared = Arc::new(Shared::create(64).unwrap());
    let intruder = Engine::start(
        raw.clone().check().unwrap(),
        shared.clone(),
        Some(Box::new(MemorySink(table.clone(), Arc::default()))),
    )
    .unwrap();
    let c = contact("intruder", 1, 1);
    shared
        .publish(&RecordRef::Contact {
            op: Op::Upsert,
            contact: c.as_ref(),
        })
        .unwrap();
    nodes[0].register(1, 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        table.lock().unwrap().is_empty(),
        "no state reaches a node without the secret"
    );
    assert!(!nodes[0]
        .table
        .lock()
        .unwrap()
        .contains_key(&(c.aor.clone(), c.contact.clone())));
    let st = intruder.status();
    assert_eq!(
        st.peers[0].state,
        sersync::status::PeerState::Refused,
        "{:?}",
        st.peers[0]
    );
    intruder.stop();
    raw.secret.clear();
    nodes[0].stop();
    nodes[1].stop();
}

fn alias(a: &str, target: &str) -> sersync::record::Alias {
    sersync::record::Alias {
        table: b"dbaliases".to_vec(),
        alias_username: a.as_bytes().to_vec(),
        alias_domain: b"example.org".to_vec(),
        username: target.as_bytes().to_vec(),
        domain: b"example.org".to_vec(),
    }
}

fn scan(shared: &Shared, rows: &[(&str, &str)]) {
    let table: &[u8] = b"dbaliases";
    shared.publish(ItemRef::ScanBegin { table }).unwrap();
    for (a, t) in rows {
        let al = alias(a, t);
        shared
            .publish(&RecordRef::Alias {
                op: Op::Upsert,
                alias: al.as_ref(),
            })
            .unwrap();
    }
    shared
        .publish(ItemRef::ScanEnd {
            table,
            confirmed: false,
        })
        .unwrap();
}

#[test]
fn alias_scans_journal_changes_only_and_find_deletions() {
    let nodes = cluster(2);
    scan(
        &nodes[0].shared,
        &[("sales", "alice"), ("support", "bob"), ("support", "carol")],
    );
    let key = |a: &str, t: &str| (a.as_bytes().to_vec(), t.as_bytes().to_vec());
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[1].table.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "aliases did not arrive");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second scan: "support → bob" was deleted straight from the table.
    scan(
        &nodes[0].shared,
        &[("sales", "alice"), ("support", "carol")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[1].holds_alias("support", "bob") {
        assert!(
            Instant::now() < deadline,
            "deletion found by the scan did not arrive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = nodes[1].table.lock().unwrap().clone();
    assert!(t.contains_key(&key("sales", "alice")) && t.contains_key(&key("support", "carol")));
    // Unchanged rows were not journaled again: 3 adds + 1 deletion.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nodes[0].engine.as_ref().unwrap().status().journaled, 4);
}

fn journal_len(node: &Node) -> (u64, u64) {
    let j = sersync::journal::Journal::open(&node.dir.path().join("journal.db")).unwrap();
    (j.log_len().unwrap(), j.last_seq().unwrap())
}

/// Contacts that expired, and whose last change is older than retention,
/// leave the journal's state by themselves (the network thread's passes
/// through it); live ones and what does not expire stay.
#[test]
fn expired_contacts_leave_the_state_by_themselves() {
    let mut nodes = cluster(1);
    nodes[0].stop();
    nodes[0].retention_ms = Some(0);
    nodes[0].start();
    for user in 0..10 {
        let mut c = contact("n1", user, 1);
        // Even users expired a minute ago, odd ones expire in 2033.
        if user % 2 == 0 {
            c.expires = sersync::hlc::wall_ms() as i64 / 1000 - 60;
        }
        let op = if user == 0 { Op::Delete } else { Op::Upsert };
        nodes[0]
            .shared
            .publish(&RecordRef::Contact {
                op,
                contact: c.as_ref(),
            })
            .unwrap();
    }
    let state_len = || {
        sersync::journal::Journal::open(&nodes[0].dir.path().join("journal.db"))
            .unwrap()
            .state_len()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_len() != 5 {
        assert!(
            Instant::now() < deadline,
            "expired contacts still in the state: {} rows",
            state_len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(nodes[0].engine.as_ref().unwrap().status().journaled, 10);
}

#[test]
fn a_peer_beyond_retention_gets_a_snapshot_and_the_journal_stays_bounded() {
    let mut nodes = cluster(2);
    nodes[1].stop();
    nodes[0].stop();
    nodes[0].retention_records = Some(100);
    nodes[0].start();
    // 3000 changes while node 2 is down: far beyond the 100 kept.
    for u in 0..2500 {
        nodes[0].register(u, 1);
    }
    for u in 0..500 {
        nodes[0].unregister(u);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal_len(&nodes[0]).1 < 3000 || journal_len(&nodes[0]).0 > 100 {
        assert!(
            Instant::now() < deadline,
            "journal not trimmed to retention: {:?}",
            journal_len(&nodes[0])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Node 2 comes back with its journal; the changes it missed are gone
    // from node 1's journal, so it gets node 1's state as a snapshot.
    nodes[1].start();
    wait_converged(&nodes, Duration::from_secs(30));
    assert_eq!(nodes[1].table.lock().unwrap().len(), 2000);
    // Changes after the snapshot stream as usual.
    nodes[0].register(9999, 1);
    nodes[1].register(9999, 1);
    wait_converged(&nodes, Duration::from_secs(10));
    // With every peer caught up, the journal trims to nothing while the
    // sequence goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal_len(&nodes[0]).0 > 0 {
        assert!(
            Instant::now() < deadline,
            "acknowledged entries not trimmed: {:?}",
            journal_len(&nodes[0])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(journal_len(&nodes[0]).1, 3001);
    nodes[0].register(10000, 1);
    wait_converged(&nodes, Duration::from_secs(10));
    assert_eq!(journal_len(&nodes[0]).1, 3002);
}

#[test]
fn concurrent_changes_to_one_contact_converge_on_the_last_writer() {
    let nodes = cluster(3);
    // The same contact (same AOR and URI) changed on all three nodes at
    // once, with different fields, several rounds.
    for round in 0..20 {
        for (i, n) in nodes.iter().enumerate() {
            let mut c = contact("shared", 1, round * 10 + i as i32);
            c.user_agent = format!("{}-round{round}", n.id).into_bytes();
            n.table
                .lock()
                .unwrap()
                .insert((c.aor.clone(), c.contact.clone()), c.clone());
            n.shared
                .publish(&RecordRef::Contact {
                    op: Op::Upsert,
                    contact: c.as_ref(),
                })
                .unwrap();
        }
    }
    // De-registered on one node while refreshed on another.
    let gone = contact("shared", 2, 1);
    for n in &nodes {
        n.table
            .lock()
            .unwrap()
            .insert((gone.aor.clone(), gone.contact.clone()), gone.clone());
        n.shared
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: gone.as_ref(),
            })
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    nodes[0]
        .table
        .lock()
        .unwrap()
        .remove(&(gone.aor.clone(), gone.contact.clone()));
    nodes[0]
        .shared
        .publish(&RecordRef::Contact {
            op: Op::Delete,
            contact: gone.as_ref(),
        })
        .unwrap();
    wait_converged(&nodes, Duration::from_secs(20));
    let t = nodes[0].table.lock().unwrap();
    let winner = &t[&(
        b"shared-user1".to_vec(),
        b"sip:shared-user1@192.0.2.1:5060".to_vec(),
    )];
    assert!(
        String::from_utf8_lossy(&winner.user_agent).ends_with("round19"),
        "{winner:?}"
    );
    assert!(
        !t.contains_key(&(gone.aor.clone(), gone.contact.clone())),
        "the later deletion wins"
    );
}

#[test]
fn journal_wait_returns_once_the_change_is_durable() {
    let mut nodes = cluster(1);
    nodes[0].stop();
    // Engine down: nothing becomes durable, the wait times out.
    nodes[0].register(1, 1);
    assert!(!nodes[0].shared.wait_durable(Duration::from_millis(50)));
    nodes[0].start();
    assert!(nodes[0].shared.wait_durable(Duration::from_secs(5)));
    nodes[0].register(2, 1);
    assert!(nodes[0].shared.wait_durable(Duration::from_secs(5)));
    // Durable means: in the journal file, readable by anyone who opens it.
    assert_eq!(journal_len(&nodes[0]), (2, 2));
}

fn peer_ids(node: &Node) -> Vec<String> {
    let mut ids: Vec<String> = node
        .engine
        .as_ref()
        .unwrap()
        .status()
        .peers
        .iter()
        .filter(|p| p.state == sersync::status::PeerState::Up)
        .map(|p| p.node_id.clone())
        .collect();
    ids.sort();
    ids
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_new_node_joins_through_one_seed_and_is_forgotten_for_good() {
    let mut nodes = cluster(3);
    for u in 0..200 {
        nodes[0].register(u, 1);
        nodes[1].register(u, 1);
    }
    // A fourth node that knows only node 1.
    let port = free_port();
    let mut n4 = Node {
        id: "n4".into(),
        port,
        peers: vec![nodes[0].port],
        dir: tempfile::tempdir().unwrap(),
        shared: Arc::new(Shared::create(1 << 12).unwrap()),
        engine: None,
        table: Arc::default(),
        gate: Arc::default(),
        retention_records: None,
        retention_ms: None,
        scan_idle_max: None,
    };
    n4.start();
    nodes.push(n4);
    wait_for(
        "every node to connect to every other",
        Duration::from_secs(20),
        || (0..4).all(|i| peer_ids(&nodes[i]).len() == 3),
    );
    for u in 0..50 {
        nodes[3].register(u, 1);
    }
    wait_converged(&nodes, Duration::from_secs(20));
    assert_eq!(nodes[3].table.lock().unwrap().len(), 450);

    // Restarted while its only seed is down, it still reaches the members
    // it learned (kept in its journal).
    nodes[0].stop();
    nodes[3].stop();
    nodes[3].start();
    wait_for(
        "n4 to reconnect to n2 and n3 without its seed",
        Duration::from_secs(20),
        || peer_ids(&nodes[3]) == ["n2", "n3"],
    );
    nodes[3].register(100, 1);
    wait_for(
        "n4's change to reach n2 and n3",
        Duration::from_secs(10),
        || {
            [1, 2]
                .iter()
                .all(|&i| nodes[i].table.lock().unwrap().len() == 451)
        },
    );
    nodes[0].start();

    // Killed and forgotten: it leaves every member list, and no journal
    // holds anything back for it.
    nodes[3].stop();
    let forget = ItemRef::Forget { node_id: "n4" };
    nodes[1].shared.publish(forget).unwrap();
    wait_for(
        "n4 to disappear from every member list",
        Duration::from_secs(20),
        || {
            (0..3).all(|i| {
                nodes[i]
                    .engine
                    .as_ref()
                    .unwrap()
                    .status()
                    .peers
                    .iter()
                    .all(|p| p.node_id != "n4")
            })
        },
    );
    for n in &nodes[0..3] {
        let j = sersync::journal::Journal::open(&n.dir.path().join("journal.db")).unwrap();
        assert!(
            j.is_forgotten("n4").unwrap(),
            "{} remembers that n4 is gone",
            n.id
        );
        assert_eq!(
            j.acked("n4").unwrap(),
            0,
            "no acknowledged position is kept for n4"
        );
        let held: Vec<_> = j
            .members()
            .unwrap()
            .into_iter()
            .filter(|m| m.0 == "n4" && !m.2)
            .collect();
        assert!(held.is_empty());
    }
    // It cannot come back under the same id.
    nodes[3].start();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        peer_ids(&nodes[3]).is_empty(),
        "a forgotten node is refused: {:?}",
        peer_ids(&nodes[3])
    );
}

#[test]
fn a_scan_does_not_undo_a_peer_change_made_while_it_ran() {
    let nodes = cluster(2);
    let key = |a: &str, t: &str| (a.as_bytes().to_vec(), t.as_bytes().to_vec());
    let x = alias("sales", "alice");
    nodes[1].publish_alias(Op::Upsert, &x);
    wait_for("the alias to reach n1", Duration::from_secs(10), || {
        nodes[0].holds_alias("sales", "alice")
    });
    // n1 scans its table and reads the row; meanwhile n2 deletes it.
    nodes[0].scan_mark(false);
    nodes[0].publish_alias(Op::Upsert, &x);
    std::thread::sleep(Duration::from_millis(100));
    nodes[1]
        .table
        .lock()
        .unwrap()
        .remove(&key("sales", "alice"));
    nodes[1].publish_alias(Op::Delete, &x);
    wait_for("the deletion to reach n1", Duration::from_secs(10), || {
        !nodes[0].holds_alias("sales", "alice")
    });
    nodes[0].scan_mark(true);
    std::thread::sleep(Duration::from_millis(500));
    wait_converged(&nodes, Duration::from_secs(10));
    assert!(
        !nodes[1].holds_alias("sales", "alice"),
        "the scan brought the alias back"
    );
}

#[test]
fn a_scan_does_not_undo_an_older_peer_change_applied_while_it_ran() {
    // The change is made on n2 before n1's scan starts (its stamp is older
    // than the scan), but n1's SER takes it only after the scan read the
    // table: the scan must not take the missing row for a deletion.
    let nodes = cluster(2);
    let key = |a: &str, t: &str| (a.as_bytes().to_vec(), t.as_bytes().to_vec());
    let x = alias("sales", "alice");
    let gate = nodes[0].gate.lock().unwrap();
    nodes[1].table.lock().unwrap().insert(
        key("sales", "alice"),
        Contact {
            aor: b"sales".to_vec(),
            contact: b"alice".to_vec(),
            ..Default::default()
        },
    );
    nodes[1].publish_alias(Op::Upsert, &x);
    let n1 = nodes[0].engine.as_ref().unwrap();
    wait_for(
        "the alias to be staged on n1",
        Duration::from_secs(10),
        || n1.status().apply_pending > 0,
    );
    // n1's scan: the table as read lacks the alias (not applied yet).
    nodes[0].scan_mark(false);
    assert!(nodes[0].shared.wait_durable(Duration::from_secs(10)));
    // Now SER takes the staged alias; then the scan ends.
    drop(gate);
    wait_for(
        "the alias to be applied on n1",
        Duration::from_secs(10),
        || n1.status().apply_pending == 0 && nodes[0].holds_alias("sales", "alice"),
    );
    nodes[0].scan_mark(true);
    assert!(nodes[0].shared.wait_durable(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(500));
    wait_converged(&nodes, Duration::from_secs(10));
    assert_eq!(n1.status().journaled, 0, "the scan journaled a deletion");
    for n in &nodes {
        assert!(
            n.holds_alias("sales", "alice"),
            "{}: the scan deleted an alias applied while it ran",
            n.id
        );
    }
}

#[test]
fn an_aborted_scan_deletes_nothing_and_alias_changes_after_it_flow_at_once() {
    let nodes = cluster(2);
    let (x, y) = (alias("sales", "alice"), alias("support", "bob"));
    nodes[0].publish_alias(Op::Upsert, &x);
    nodes[0].publish_alias(Op::Upsert, &y);
    wait_for("both aliases to reach n2", Duration::from_secs(10), || {
        nodes[1].holds_alias("sales", "alice") && nodes[1].holds_alias("support", "bob")
    });
    // A scan reads one row and gives up (its abort marker).
    let table: &[u8] = b"dbaliases";
    nodes[0].scan_mark(false);
    nodes[0].publish_alias(Op::Upsert, &x);
    nodes[0]
        .shared
        .publish(ItemRef::ScanAbort { table })
        .unwrap();
    // An alias RPC afterwards: replicated at once, not held for a scan.
    nodes[0].publish_alias(Op::Upsert, &alias("later", "carol"));
    wait_for(
        "the later alias to reach n2",
        Duration::from_secs(5),
        || nodes[1].holds_alias("later", "carol"),
    );
    assert!(
        nodes[1].holds_alias("support", "bob"),
        "the aborted scan deleted the alias it did not read"
    );
}

#[test]
fn a_scan_without_an_end_is_ended_and_what_it_held_replicates() {
    let mut nodes = cluster(2);
    nodes[0].stop();
    nodes[0].scan_idle_max = Some(Duration::from_secs(1));
    nodes[0].start();
    // The scan's process sends a row and is never heard of again.
    nodes[0].scan_mark(false);
    nodes[0].publish_alias(Op::Upsert, &alias("row", "alice"));
    // An alias RPC afterwards, held back as the scan's row would be.
    nodes[0].publish_alias(Op::Upsert, &alias("later", "bob"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !nodes[1].holds_alias("later", "bob"),
        "held while the scan may still end"
    );
    wait_for(
        "the held rows to reach n2 once the scan is ended",
        Duration::from_secs(10),
        || nodes[1].holds_alias("row", "alice") && nodes[1].holds_alias("later", "bob"),
    );
    // The next scan is concluded as usual.
    nodes[0].scan_mark(false);
    nodes[0].publish_alias(Op::Upsert, &alias("row", "alice"));
    nodes[0].scan_mark(true);
    wait_for(
        "the deletion found by the next scan",
        Duration::from_secs(10),
        || !nodes[1].holds_alias("later", "bob"),
    );
}

#[test]
fn an_idle_cluster_keeps_its_connections() {
    // Nothing to replicate for longer than the 60 s after which a silent
    // inbound connection is dropped: the member list sent every 20 s keeps
    // the links up, so there is no reconnect churn and no error.
    let nodes = cluster(2);
    nodes[0].register(1, 1);
    wait_converged(&nodes, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(65));
    for n in &nodes {
        let st = n.engine.as_ref().unwrap().status();
        for p in &st.peers {
            assert!(
                p.state == sersync::status::PeerState::Up && p.connects == 1,
                "{}: peer {} after 65 s idle: {:?}, connected {} times, last error {:?}",
                n.id,
                p.node_id,
                p.state,
                p.connects,
                p.last_error
            );
        }
    }
}
