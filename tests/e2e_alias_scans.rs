//! End to end: alias table scans that go wrong, on real Kamailio nodes.
//!
//! - A scan that gives up (its table cannot be read) ends the engine's
//!   scan mode: an alias added on that node afterwards replicates.
//! - A scan that finds most of the table gone (rows deleted in SER's
//!   SQLite database behind its back, as a restored or lagging database
//!   looks) deletes nothing anywhere and says so (RPC 409, status,
//!   log); sersync.alias_rescan_confirm then deletes them on every node.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// alias_username of every row of a node's dbaliases.
fn aliases(node: &Node) -> BTreeSet<String> {
    node.sql("SELECT alias_username FROM dbaliases")
        .unwrap_or_else(|e| panic!("{}: {e}", node.name()))
        .into_iter()
        .collect()
}

/// Waits until each node's dbaliases holds exactly `want`.
fn wait_aliases(nodes: &[&Node], want: &BTreeSet<String>, timeout: Duration, what: &str) {
    let t0 = Instant::now();
    let mut last = String::new();
    let ok = wait_until(timeout, || {
        last.clear();
        for n in nodes {
            let got = aliases(n);
            if got != *want {
                last.push_str(&format!(
                    "{}: {} rows, want {} (missing {:?}, extra {:?})\n",
                    n.name(),
                    got.len(),
                    want.len(),
                    want.difference(&got).take(3).collect::<Vec<_>>(),
                    got.difference(want).take(3).collect::<Vec<_>>()
                ));
            }
        }
        last.is_empty()
    });
    if !ok {
        let status: String = nodes
            .iter()
            .map(|n| format!("{}: {}\n", n.name(), n.status().summary()))
            .collect();
        panic!("{what}: after {timeout:?}:\n{last}{status}");
    }
    eprintln!(
        "e2e: {what}: {} aliases on every node in {:.1} s",
        want.len(),
        t0.elapsed().as_secs_f64()
    );
}

fn status_u64(node: &Node, key: &str) -> u64 {
    let st = node.status();
    st.raw
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{}: no {key} in sersync.status: {}", node.name(), st.raw))
}

#[test]
fn an_abandoned_scan_ends_scan_mode_and_later_adds_replicate() {
    let t0 = Instant::now();
    let c = Cluster::start("scan-abandon", 101, 2);
    eprintln!("e2e: cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    let n1 = c.node(1);
    n1.rpc(
        "sersync.alias_add",
        json!(["sip:before@example.com", "sip:t@example.org"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut want: BTreeSet<String> = ["before".to_string()].into();
    wait_aliases(&c.all(), &want, Duration::from_secs(10), "first alias");

    // The scan gives up after it began: its table cannot be read.
    n1.sql("ALTER TABLE dbaliases RENAME TO dbaliases_away")
        .unwrap_or_else(|e| panic!("{e}"));
    let t_scan = Instant::now();
    let r = n1.http_rpc("sersync.alias_rescan", json!([]));
    eprintln!(
        "e2e: the abandoned rescan answered in {:.1} s",
        t_scan.elapsed().as_secs_f64()
    );
    n1.sql("ALTER TABLE dbaliases_away RENAME TO dbaliases")
        .unwrap_or_else(|e| panic!("{e}"));
    match r {
        Err(f) if f.code == 500 && f.message.contains("cannot read table") => {}
        other => panic!("a rescan of a missing table: expected a 500, got {other:?}"),
    }

    // An alias added on that node afterwards replicates, and at once.
    n1.rpc(
        "sersync.alias_add",
        json!(["sip:after@example.com", "sip:t@example.org"]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    want.insert("after".into());
    wait_aliases(
        &c.all(),
        &want,
        Duration::from_secs(10),
        "alias added after the abandoned scan",
    );
    assert!(
        !n1.log_grep("ended without concluding (its process gave up)")
            .is_empty(),
        "node 1 does not log the abandoned scan"
    );
    eprintln!(
        "e2e: abandoned scan test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn a_scan_missing_most_of_the_table_refuses_until_confirmed() {
    const TOTAL: usize = 150;
    const KEEP: usize = 10;
    let t0 = Instant::now();
    let c = Cluster::start("scan-refuse", 104, 3);
    let n1 = c.node(1);
    let lines: String = (0..TOTAL)
        .map(|i| format!("sip:a{i:03}@example.com sip:t{i:03}@example.org\n"))
        .collect();
    let added = n1
        .http_rpc("sersync.alias_add", json!([lines]))
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(added, json!(TOTAL));
    let all: BTreeSet<String> = (0..TOTAL).map(|i| format!("a{i:03}")).collect();
    wait_aliases(&c.all(), &all, Duration::from_secs(15), "aliases added");

    // Most of node 1's table disappears behind SER's back.
    n1.sql(&format!(
        "DELETE FROM dbaliases WHERE alias_username >= 'a{KEEP:03}'"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let kept: BTreeSet<String> = (0..KEEP).map(|i| format!("a{i:03}")).collect();
    assert_eq!(aliases(n1), kept);

    let f = match n1.http_rpc("sersync.alias_rescan", json!([])) {
        Ok(v) => panic!(
            "a rescan deleting {} of {TOTAL} succeeded: {v}",
            TOTAL - KEEP
        ),
        Err(f) => f,
    };
    assert!(
        f.code == 409
            && f.message
                .contains(&format!("delete {} aliases", TOTAL - KEEP))
            && f.message.contains("sersync.alias_rescan_confirm"),
        "expected a 409 naming the deletions and the confirmation, got {f}"
    );
    assert_eq!(status_u64(n1, "alias_scan_refused"), (TOTAL - KEEP) as u64);
    assert!(
        n1.status().last_error.contains("refused"),
        "last_error: {}",
        n1.status().last_error
    );
    assert_eq!(
        count_log(n1, &["ERROR", "refused to delete"]),
        1,
        "one error line for the refused scan"
    );
    // Nothing was deleted anywhere else, a while later.
    std::thread::sleep(Duration::from_secs(2));
    wait_aliases(
        &[c.node(2), c.node(3)],
        &all,
        Duration::from_secs(1),
        "other nodes after the refused scan",
    );

    // The operator confirms: the deletions reach every node.
    let r = n1
        .http_rpc("sersync.alias_rescan_confirm", json!([]))
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r, json!({"rows": KEEP, "removed": TOTAL - KEEP}));
    assert_eq!(status_u64(n1, "alias_scan_refused"), 0);
    wait_aliases(
        &c.all(),
        &kept,
        Duration::from_secs(15),
        "after sersync.alias_rescan_confirm",
    );
    // A plain rescan now finds nothing to delete.
    assert_eq!(
        n1.http_rpc("sersync.alias_rescan", json!([]))
            .unwrap_or_else(|f| panic!("{f}")),
        json!(KEEP)
    );
    eprintln!(
        "e2e: refused scan test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
