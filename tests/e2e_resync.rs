//! End-to-end: `sersync.resync` and the peer event routes (issue 15,
//! item 5), on real Kamailio nodes.
//!
//! - Resync: three Kamailio 5.6 nodes, usrloc in memory, both periodic
//!   checks an hour apart (so only the resync can repair). Node 2's
//!   journal loses 30 contacts while it is stopped (it restarts without
//!   them: its usrloc is restored from the journal) and 10 contacts leave
//!   node 1's usrloc behind sersync's back (`sersync.apply`).
//!   `sersync.resync n2` on node 1 puts both back: every node's usrloc
//!   holds every contact. A second call while it runs, bad arguments and
//!   an unknown node get clear faults.
//! - Event routes: node 1 on Kamailio 5.6 and node 2 on the 6.0 of the
//!   Debian 13 root log `event_route[sersync:peer-up]` and
//!   `[sersync:peer-down]` with `$sersync(peer)`; node 3 stops (down on
//!   both, from the module's own SER process) and starts again (up).
//!
//! Needs `build/sersync.so` (`make`) and, for the events, the root and
//! `build/<its version>/sersync.so` (`make SER_ROOT=DIR`). Fails, never
//! skips, without them.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

use sersync::record::{Op, Record};

const PHONES: usize = 100;

fn phones(prefix: &str, n: usize) -> Vec<Reg> {
    (0..n)
        .map(|i| Reg::new(format!("{prefix}{i}"), 3600))
        .collect()
}

/// The `resync` struct of `sersync.status`.
fn resync_status(node: &Node) -> Value {
    node.status().raw["resync"].clone()
}

/// Waits until the node's `nth` resync since start is over.
fn wait_resync_over(node: &Node, nth: u64, within: Duration) -> Value {
    let mut last = Value::Null;
    let over = wait_until(within, || {
        last = resync_status(node);
        last["resyncs"].as_u64() == Some(nth)
            && matches!(last["state"].as_str(), Some("done") | Some("failed"))
    });
    assert!(
        over,
        "{}: resync not over within {within:?}: {last}",
        node.name()
    );
    last
}

/// Deletes `n` contacts from the state of a stopped node's journal.
fn forget_contacts_in_journal(node: &Node, n: usize) {
    let db = rusqlite::Connection::open(node.journal_path()).unwrap();
    let gone = db
        .execute(
            "DELETE FROM state WHERE key IN \
             (SELECT key FROM state WHERE key >= X'63' AND key < X'64' LIMIT ?1)",
            [n as i64],
        )
        .unwrap();
    assert_eq!(gone, n, "contacts deleted from {}'s journal", node.name());
}

/// The first `n` contacts of `node`'s state, as deletions at their
/// versions: what `sersync.apply` removes from usrloc without
/// replicating anything.
fn deletions(node: &Node, n: usize) -> Vec<(u64, Record)> {
    let db = rusqlite::Connection::open(node.journal_path()).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = db
        .prepare("SELECT hlc, body FROM state WHERE key >= X'63' AND key < X'64' ORDER BY key")
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    rows.into_iter()
        .filter_map(|(hlc, body)| match sersync::codec::decode(&body).ok()? {
            Record::Contact {
                op: Op::Upsert,
                contact,
            } => Some((
                hlc as u64,
                Record::Contact {
                    op: Op::Delete,
                    contact,
                },
            )),
            _ => None,
        })
        .take(n)
        .collect()
}

fn fault(node: &Node, params: Value) -> RpcFault {
    match node.http_rpc("sersync.resync", params.clone()) {
        Ok(v) => panic!("sersync.resync {params} accepted: {v}"),
        Err(f) => {
            eprintln!("e2e: sersync.resync {params}: {} {}", f.code, f.message);
            f
        }
    }
}

fn assert_fault(node: &Node, params: Value, code: i64, needle: &str) {
    let f = fault(node, params.clone());
    assert!(
        f.code == code && f.message.contains(needle),
        "sersync.resync {params}: want {code} with {needle:?}, got {} {:?}",
        f.code,
        f.message
    );
}

#[test]
fn resync_repairs_what_differs_with_a_peer_and_in_usrloc() {
    let t0 = Instant::now();
    let mut opts = ClusterOptions {
        ul_db_mode: Some(0),
        sersync_no_db: true,
        ..ClusterOptions::default()
    };
    for n in 1..=3 {
        opts.extra.insert(
            n,
            vec![
                "modparam(\"sersync\", \"check_interval\", 3600)".into(),
                "modparam(\"sersync\", \"peer_check_interval\", 3600)".into(),
            ],
        );
    }
    let mut cluster = Cluster::start_private("resync", 246, 3, &opts);
    sipp_register(cluster.node(1), &phones("r", PHONES), 400, "register");
    wait_converged(
        &cluster.all(),
        Duration::from_secs(30),
        "registered",
        expect_contacts(PHONES),
    );

    // Bad requests, before anything runs.
    let n1 = cluster.node(1);
    let huge = "n".repeat(64);
    assert_fault(n1, json!([{"id": "n2"}]), 400, "must be a string");
    assert_fault(n1, json!([["n2"]]), 400, "must be a string");
    assert_fault(n1, json!(["n2", "n3"]), 400, "Too many parameters");
    assert_fault(n1, json!([""]), 400, "Empty node_id");
    assert_fault(n1, json!([huge]), 400, "at most 63 characters");
    assert_fault(n1, json!(["n 2"]), 400, "printable ASCII");
    assert_fault(n1, json!(["n1"]), 400, "is this node");
    assert_fault(n1, json!(["nobody"]), 404, "not a member this node knows");
    assert_fault(n1, json!([7]), 400, "must be a string");
    assert_eq!(resync_status(n1)["state"], json!("none"), "nothing started");

    // Node 2 restarts without 30 contacts in its journal, so without them
    // in its usrloc; the stream never sends them again.
    cluster.node_mut(2).stop().expect("stopping node 2");
    forget_contacts_in_journal(cluster.node(2), 30);
    cluster.node_mut(2).start();
    cluster.wait_mesh_up(Duration::from_secs(30));
    let n2 = cluster.node(2);
    assert!(
        wait_until(Duration::from_secs(20), || n2.contacts().len()
            == PHONES - 30),
        "node 2 restored {} contacts, expected {}",
        n2.contacts().len(),
        PHONES - 30
    );
    // 10 contacts leave node 1's usrloc, its journal keeps them.
    let n1 = cluster.node(1);
    let token = n1.apply_token();
    for one in deletions(n1, 10).chunks(1) {
        let payload = sersync::apply::payload::encode(one);
        let applied = n1
            .rpc("sersync.apply", json!([token, payload]))
            .unwrap_or_else(|e| panic!("sersync.apply on node 1: {e}"));
        assert_eq!(applied, json!(1));
    }
    assert_eq!(n1.contacts().len(), PHONES - 10, "node 1's usrloc");
    // Nothing repairs that by itself (checks an hour apart); and a check
    // leaves versions younger than 5 s to the live stream.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(n1.contacts().len(), PHONES - 10);
    assert_eq!(cluster.node(2).contacts().len(), PHONES - 30);

    let asked = Instant::now();
    let started = n1
        .http_rpc("sersync.resync", json!(["n2"]))
        .unwrap_or_else(|f| panic!("sersync.resync n2: {} {}", f.code, f.message));
    assert_eq!(started, json!("started"));
    // One at a time: the second is told which runs and how far it got.
    let busy = fault(n1, json!([]));
    assert_eq!(busy.code, 409, "{busy:?}");
    assert!(busy.message.contains("already running"), "{}", busy.message);
    let over = wait_resync_over(n1, 1, Duration::from_secs(60));
    eprintln!(
        "e2e: resync over {:.1} s after it was asked for: {over}",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(over["state"], json!("done"), "{over}");
    assert_eq!(over["peer"], json!("n2"), "{over}");
    assert_eq!(
        (over["peers_total"].clone(), over["peers_done"].clone()),
        (json!(1), json!(1))
    );
    let result = over["result"].as_str().unwrap_or_default();
    assert!(result.contains("n2: 30 keys differed"), "{result}");
    assert!(
        result.contains("SER: 10 contacts or aliases differed, 10 repaired"),
        "{result}"
    );
    let count = |k: &str| over[k].as_u64().unwrap_or(0);
    assert!(count("ranges_compared") > 0, "{over}");
    assert!(
        count("divergences") >= 40 && count("repaired") >= 40,
        "{over}"
    );
    wait_converged(
        &cluster.all(),
        Duration::from_secs(20),
        "repaired by the resync",
        expect_contacts(PHONES),
    );
    eprintln!(
        "e2e: 40 contacts repaired on every node {:.1} s after sersync.resync",
        asked.elapsed().as_secs_f64()
    );

    // Every peer, when nothing differs any more.
    let n1 = cluster.node(1);
    assert_eq!(
        n1.http_rpc("sersync.resync", json!([]))
            .unwrap_or_else(|f| panic!("sersync.resync: {} {}", f.code, f.message)),
        json!("started")
    );
    let over = wait_resync_over(n1, 2, Duration::from_secs(60));
    assert_eq!(over["peer"], json!("all"), "{over}");
    assert_eq!(over["peers_total"], json!(2), "{over}");
    assert_eq!(over["divergences"], json!(0), "{over}");
    let result = over["result"].as_str().unwrap_or_default();
    for want in ["n2: equal", "n3: equal", "SER: equal"] {
        assert!(result.contains(want), "{want:?} not in {result:?}");
    }
    assert_eq!(over["resyncs"], json!(2), "{over}");
    eprintln!("e2e: test {:.1} s", t0.elapsed().as_secs_f64());
}

/// The node ids of `what` ("PEER-UP", "PEER-DOWN") lines in `node`'s log,
/// in order, with the pid of the process that logged each.
fn events(node: &Node, what: &str) -> Vec<(u32, String)> {
    let tag = format!("{what} ");
    node.log_grep(&tag)
        .iter()
        .filter_map(|l| {
            let pid = l
                .split('(')
                .nth(1)?
                .split(')')
                .next()?
                .trim()
                .parse()
                .ok()?;
            let id = l.split(&tag).nth(1)?.trim().to_string();
            Some((pid, id))
        })
        .collect()
}

fn count_events(node: &Node, what: &str, peer: &str) -> usize {
    events(node, what)
        .iter()
        .filter(|(_, id)| id == peer)
        .count()
}

#[test]
fn peer_events_fire_when_a_peer_goes_down_and_comes_back() {
    let root = SerRoot::debian13();
    let routes: Vec<String> = vec![
        "event_route[sersync:peer-up] {".into(),
        "    xlog(\"L_NOTICE\", \"PEER-UP $sersync(peer)\\n\");".into(),
        "}".into(),
        "event_route[sersync:peer-down] {".into(),
        "    xlog(\"L_NOTICE\", \"PEER-DOWN $sersync(peer)\\n\");".into(),
        "}".into(),
    ];
    let opts = ClusterOptions {
        ser_root_of: BTreeMap::from([(2, root.clone())]),
        extra: BTreeMap::from([(1, routes.clone()), (2, routes)]),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_private("peer-events", 251, 3, &opts);
    assert_eq!(cluster.node(2).ser_version(), root.version, "node 2 on 6.0");
    const WITHIN: Duration = Duration::from_secs(15);
    for i in [1, 2] {
        let node = cluster.node(i);
        let peers: Vec<String> = [1, 2, 3]
            .iter()
            .filter(|p| **p != i)
            .map(|p| format!("n{p}"))
            .collect();
        assert!(
            wait_until(WITHIN, || peers
                .iter()
                .all(|p| count_events(node, "PEER-UP", p) == 1)),
            "{}: peer-up for {peers:?} once each: {:?}",
            node.name(),
            events(node, "PEER-UP")
        );
        assert!(events(node, "PEER-DOWN").is_empty(), "{}", node.name());
        // Run by the module's own SER process, never an engine thread.
        let watcher = node.process_pid("sersync peer events");
        assert!(
            events(node, "PEER-UP")
                .iter()
                .all(|(pid, _)| *pid == watcher),
            "{}: {:?} not all from pid {watcher}",
            node.name(),
            events(node, "PEER-UP")
        );
    }
    assert!(
        cluster.node(3).log_grep("PEER-UP").is_empty(),
        "node 3 has no such route"
    );

    cluster.node_mut(3).stop().expect("stopping node 3");
    for i in [1, 2] {
        let node = cluster.node(i);
        assert!(
            wait_until(WITHIN, || count_events(node, "PEER-DOWN", "n3") == 1),
            "{}: no peer-down for n3: {:?}",
            node.name(),
            events(node, "PEER-DOWN")
        );
        assert_eq!(
            count_events(node, "PEER-DOWN", "n2") + count_events(node, "PEER-DOWN", "n1"),
            0
        );
    }
    // A resync needs the peer connected.
    assert_fault(
        cluster.node(1),
        json!(["n3"]),
        409,
        "a resync needs it connected",
    );

    cluster.node_mut(3).start();
    for i in [1, 2] {
        let node = cluster.node(i);
        assert!(
            wait_until(WITHIN, || count_events(node, "PEER-UP", "n3") == 2),
            "{}: no second peer-up for n3: {:?}",
            node.name(),
            events(node, "PEER-UP")
        );
        assert_eq!(count_events(node, "PEER-DOWN", "n3"), 1, "{}", node.name());
    }
}
