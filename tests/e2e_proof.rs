//! End-to-end: the check of SER against the journal (issue 12, items 1–2,
//! the local half). Every `check_interval` each node compares what its
//! usrloc holds (walked inside SER, `sersync.digest`) with its journal's
//! state, and repairs what differs.
//!
//! Three Kamailio 5.6 nodes, usrloc in memory, sipp, check_interval 5 s.
//! - Changes the full worker queue dropped (queue_size 64, the engine
//!   process stopped while 400 phones register on node 1): counted in
//!   `queue_dropped`, never journaled, so never sent; node 1's check finds
//!   them in its usrloc, journals them, and every node ends identical,
//!   field by field.
//! - Contacts removed from node 2's usrloc behind sersync's back (through
//!   `sersync.apply`, whose writes fire no replication): node 2's check
//!   finds them in its journal's state and puts them back.
//!
//! Needs `build/sersync.so` (`make`); fails, never skips, without it.

#[path = "e2e_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

use sersync::record::{Op, Record};

const INTERVAL: u64 = 5;
/// Two check intervals, the confirmation and the replication.
const REPAIRED_WITHIN: Duration = Duration::from_secs(3 * INTERVAL);

fn cluster(name: &str, first: u8, queue_size: Option<u32>) -> Cluster {
    let mut opts = ClusterOptions {
        ul_db_mode: Some(0),
        sersync_no_db: true,
        ..ClusterOptions::default()
    };
    for n in 1..=3 {
        let mut lines = vec![format!(
            "modparam(\"sersync\", \"check_interval\", {INTERVAL})"
        )];
        if let Some(q) = queue_size {
            lines.push(format!("modparam(\"sersync\", \"queue_size\", {q})"));
        }
        opts.extra.insert(n, lines);
    }
    Cluster::start_private(name, first, 3, &opts)
}

fn phones(prefix: &str, n: usize) -> Vec<Reg> {
    (0..n)
        .map(|i| Reg::new(format!("{prefix}{i}"), 3600))
        .collect()
}

#[test]
fn changes_the_full_queue_dropped_reach_every_node_within_the_interval() {
    let t0 = Instant::now();
    let cluster = cluster("proof-dropped", 171, Some(64));
    let n1 = cluster.node(1);
    const N: usize = 400;
    // Phones registered and replicated before; 100 of them de-register
    // while the engine is stopped, beside the burst of new ones.
    let old = phones("o", 200);
    sipp_register(n1, &old, 400, "before");
    wait_converged(
        &cluster.all(),
        REPAIRED_WITHIN,
        "registered",
        expect_contacts(200),
    );
    let gone: Vec<Reg> = old[..100].iter().map(Reg::deregistration).collect();
    {
        let _stopped = Stopped::new(n1.process_pid("sersync"));
        sipp_register(n1, &phones("d", N), 400, "burst");
        sipp_register(n1, &gone, 400, "de-registrations");
    }
    let dropped = n1.status().queue_dropped;
    assert!(
        dropped > 0,
        "no change dropped: the test proves nothing ({})",
        n1.status().summary()
    );
    let resumed = Instant::now();
    wait_converged(
        &cluster.all(),
        REPAIRED_WITHIN,
        "dropped changes repaired",
        expect_contacts(N + 100),
    );
    let took = resumed.elapsed();
    // The status area is refreshed by the engine now and then.
    wait_until(Duration::from_secs(5), || n1.status().repaired >= dropped);
    let st = n1.status();
    assert!(
        st.repaired >= dropped,
        "repaired < dropped: {}",
        st.summary()
    );
    assert!(st.checks > 0 && st.divergences > 0, "{}", st.summary());
    for line in n1.log_grep("check: ") {
        eprintln!("node 1: {line}");
    }
    eprintln!(
        "{dropped} dropped changes on node 1 repaired on every node {:.1} s after the \
         engine resumed; test {:.1} s",
        took.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Contacts of `node`'s journal state, with their stamps: (stamp, record).
fn state_contacts(node: &Node, n: usize) -> Vec<(u64, Record)> {
    let p = node.journal_path();
    let db = rusqlite::Connection::open(&p).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = db
        .prepare("SELECT hlc, body FROM state WHERE key >= X'63' AND key < X'64' ORDER BY key")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap();
    rows.map(|r| r.unwrap())
        .filter_map(|(hlc, body)| {
            let rec: Record = sersync::codec::decode(&body).ok()?;
            matches!(rec, Record::Contact { op: Op::Upsert, .. }).then_some((hlc as u64, rec))
        })
        .take(n)
        .collect()
}

#[test]
fn contacts_removed_from_usrloc_behind_sersyncs_back_are_put_back() {
    let t0 = Instant::now();
    let cluster = cluster("proof-removed", 181, None);
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    const N: usize = 200;
    sipp_register(n1, &phones("r", N), 400, "register");
    wait_converged(
        &cluster.all(),
        Duration::from_secs(20),
        "registered",
        expect_contacts(N),
    );
    // The deletion of 20 of them, at the versions node 2 holds: written
    // into node 2's usrloc by sersync.apply, which replicates nothing.
    let gone: Vec<(u64, Record)> = state_contacts(n2, 20)
        .into_iter()
        .map(|(hlc, r)| match r {
            Record::Contact { contact, .. } => (
                hlc,
                Record::Contact {
                    op: Op::Delete,
                    contact,
                },
            ),
            Record::Alias { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(gone.len(), 20);
    // One per request: the FIFO takes requests of at most 4 KiB.
    let token = n2.apply_token();
    for one in gone.chunks(1) {
        let payload = sersync::apply::payload::encode(one);
        let applied = n2
            .rpc("sersync.apply", json!([token, payload]))
            .unwrap_or_else(|e| panic!("sersync.apply on node 2: {e}"));
        assert_eq!(applied, json!(1), "sersync.apply: {applied}");
    }
    let held = n2.contacts().len();
    assert_eq!(held, N - 20, "node 2's usrloc after the removal");
    let removed = Instant::now();
    wait_converged(
        &cluster.all(),
        REPAIRED_WITHIN,
        "removed contacts put back",
        expect_contacts(N),
    );
    wait_until(Duration::from_secs(5), || n2.status().repaired >= 20);
    let st = n2.status();
    assert!(st.repaired >= 20, "{}", st.summary());
    assert_eq!(n1.status().repaired, 0, "node 1 had nothing to repair");
    eprintln!(
        "20 contacts removed behind sersync's back put back {:.1} s later; test {:.1} s",
        removed.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Each row of a node's dbaliases, as "alias_username>username".
fn alias_rows(node: &Node) -> std::collections::BTreeSet<String> {
    node.sql("SELECT alias_username || '>' || username FROM dbaliases")
        .unwrap_or_else(|e| panic!("{}: {e}", node.name()))
        .into_iter()
        .collect()
}

#[test]
fn the_alias_table_is_checked_and_repaired_too() {
    let t0 = Instant::now();
    let mut opts = ClusterOptions::default();
    for n in 1..=2 {
        opts.extra.insert(
            n,
            vec![format!(
                "modparam(\"sersync\", \"check_interval\", {INTERVAL})"
            )],
        );
    }
    let cluster = Cluster::start_private("proof-aliases", 186, 2, &opts);
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let mut want = std::collections::BTreeSet::new();
    for i in 0..30 {
        let added = n1
            .rpc(
                "sersync.alias_add",
                json!([format!("sip:pa{i}@example.com"), "sip:t@example.org"]),
            )
            .unwrap_or_else(|e| panic!("alias_add: {e}"));
        assert_eq!(added, json!(1));
        want.insert(format!("pa{i}>t"));
    }
    let same = |what: &str, want: &std::collections::BTreeSet<String>| {
        let mut last = String::new();
        let ok = wait_until(REPAIRED_WITHIN, || {
            let (a, b) = (alias_rows(n1), alias_rows(n2));
            last = format!(
                "node 1 missing {:?} extra {:?}; node 2 missing {:?} extra {:?}",
                want.difference(&a).collect::<Vec<_>>(),
                a.difference(want).collect::<Vec<_>>(),
                want.difference(&b).collect::<Vec<_>>(),
                b.difference(want).collect::<Vec<_>>()
            );
            a == *want && b == *want
        });
        assert!(ok, "{what}: {last}");
    };
    same("added", &want);
    // Behind sersync's back, in node 2's database: five rows lost (a
    // restored backup), one row written by hand.
    n2.sql(
        "DELETE FROM dbaliases WHERE alias_username IN ('pa0','pa7','pa13','pa21','pa29');
         INSERT INTO dbaliases (alias_username, alias_domain, username, domain)
           VALUES ('stray', 'example.com', 'u', 'example.org');",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(alias_rows(n2).len(), 26);
    let changed = Instant::now();
    want.insert("stray>u".into());
    same(
        "lost rows put back, the stray row journaled and replicated",
        &want,
    );
    wait_until(Duration::from_secs(5), || n2.status().repaired >= 6);
    let st = n2.status();
    assert!(st.repaired >= 6 && st.divergences >= 6, "{}", st.summary());
    eprintln!(
        "alias table repaired {:.1} s after the change behind sersync's back; test {:.1} s",
        changed.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
