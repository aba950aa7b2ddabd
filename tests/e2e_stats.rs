//! End-to-end: sersync's figures in Kamailio's statistics framework (issue
//! 15, item 1). Two Kamailio 5.6 nodes, sipp registering on node 1: on
//! each node, `stats.get_statistics sersync:` and `stats.fetch all`
//! (what kamcmd and xhttp_prom read) list every statistic of the group,
//! with the values `sersync.status` reports.
//!
//! Needs `build/sersync.so` (`make`); fails, never skips, without it.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// The statistics of the group, by name.
const NAMES: &[&str] = &[
    "journaled",
    "queue_depth",
    "queue_dropped",
    "applied",
    "apply_pending",
    "apply_failures",
    "applied_via_db",
    "apply_superseded",
    "set_aside",
    "quarantined",
    "restored",
    "restore_pending",
    "journal_entries",
    "checks",
    "ranges_compared",
    "divergences",
    "repaired",
    "peer_checks",
    "peer_check_divergences",
    "peer_check_repaired",
    "alias_scans",
    "clock_refused",
    "clock_refused_by_peers",
    "preauth_refused",
    "clones_refused",
    "peers",
    "peers_up",
];

fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// stats.get_statistics sersync: — "sersync:name = value" lines.
fn get_statistics(node: &Node) -> BTreeMap<String, u64> {
    let v = node
        .rpc("stats.get_statistics", json!(["sersync:"]))
        .unwrap_or_else(|e| panic!("stats.get_statistics: {e}"));
    let lines: Vec<String> = match &v {
        Value::Array(a) => a
            .iter()
            .filter_map(|l| l.as_str().map(String::from))
            .collect(),
        Value::String(s) => s.lines().map(String::from).collect(),
        other => panic!("stats.get_statistics replied {other}"),
    };
    lines
        .iter()
        .map(|l| {
            let (k, val) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("stats line {l:?}"));
            let k = k
                .trim()
                .strip_prefix("sersync:")
                .unwrap_or_else(|| panic!("{l:?}"));
            (
                k.to_string(),
                val.trim().parse().unwrap_or_else(|_| panic!("{l:?}")),
            )
        })
        .collect()
}

/// stats.fetch all, the group's entries — {"sersync.name": value}. (With
/// "sersync:" Kamailio 5.6.3's stats.fetch replies {} for this group while
/// get_statistics lists it: "all", as xhttp_prom reads, is what counts.)
fn fetch(node: &Node) -> BTreeMap<String, u64> {
    let v = node
        .rpc("stats.fetch", json!(["all"]))
        .unwrap_or_else(|e| panic!("stats.fetch: {e}"));
    let Value::Object(m) = v else {
        panic!("stats.fetch replied {v}")
    };
    m.iter()
        .filter_map(|(k, val)| {
            let k = k.strip_prefix("sersync.")?;
            Some((
                k.to_string(),
                number(val).unwrap_or_else(|| panic!("{k}: {val}")),
            ))
        })
        .collect()
}

/// sersync.status's figure for a statistic.
fn status_value(st: &Value, name: &str) -> u64 {
    match name {
        "peers" => st["peers"].as_array().map_or(0, |p| p.len() as u64),
        "peers_up" => st["peers"].as_array().map_or(0, |p| {
            p.iter().filter(|p| p["state"] == json!("up")).count() as u64
        }),
        _ => st[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in sersync.status: {st}")),
    }
}

#[test]
fn statistics_list_what_sersync_status_reports() {
    let c = Cluster::start("stats", 241, 2);
    let (n1, n2) = (c.node(1), c.node(2));
    let regs: Vec<Reg> = (0..50).map(|i| Reg::new(format!("st{i}"), 3600)).collect();
    sipp_register(n1, &regs, 200, "register");
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "registered",
        expect_contacts(50),
    );
    // Settled: nothing moves between the reads below.
    assert!(wait_until(Duration::from_secs(10), || {
        let st = n2.status();
        st.raw["apply_pending"] == json!(0) && st.raw["applied"].as_u64() == Some(50)
    }));
    for (node, what) in [(n1, "journaled"), (n2, "applied")] {
        let stats = get_statistics(node);
        let fetched = fetch(node);
        let st = node.status().raw;
        let names: Vec<&str> = stats.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = NAMES.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{}: the group's statistics", node.name());
        for name in NAMES {
            let s = status_value(&st, name);
            assert_eq!(
                stats[*name],
                s,
                "{}: {name} (get_statistics vs status)",
                node.name()
            );
            assert_eq!(
                fetched[*name],
                s,
                "{}: {name} (fetch vs status)",
                node.name()
            );
        }
        assert_eq!(stats[what], 50, "{}: {what}", node.name());
        assert_eq!(stats["peers_up"], 1, "{}: peers_up", node.name());
    }
}
