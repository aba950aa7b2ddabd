//! End-to-end: quarantine (issue 12, item 3). A record a node cannot apply
//! is set aside with its reason; everything behind it flows on; operators
//! see it (sersync.status, sersync.quarantine) and retry or drop it.
//!
//! Three Kamailio 5.6 nodes and sipp. Node 2 replicates the usrloc tables
//! "location" and "aliases" (a configuration rolled out to it first);
//! nodes 1 and 3 have no usrloc table "aliases". Two SER-0.9 style aliases
//! saved in node 2's "aliases" reach nodes 1 and 3, whose SER refuses
//! them: they are quarantined there, and the contacts registered after
//! them on nodes 2 and 3 reach every node. Node 1 is restarted with the
//! table registered: the quarantine survived the restart, and a retry
//! applies both aliases. Node 3 drops them instead.
//!
//! Needs `build/sersync.so` (`make`); fails, never skips, without it.

#[path = "e2e_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const ALIASES: [(&str, &str); 2] = [
    ("oldsales", "sip:target@example.org"),
    ("oldsupport", "sip:target@example.org"),
];
const REFUSAL: &str = "usrloc table 'aliases' is not registered on this node";
/// Lets the script save and look up the usrloc table "aliases", which
/// registers it (tests/e2e/kamailio.cfg.in).
const ALIASES_DEFINE: &str = "#!define SERSYNC_E2E_USRLOC_ALIASES";

fn quarantine(node: &Node) -> Value {
    node.rpc("sersync.quarantine", json!([]))
        .unwrap_or_else(|e| panic!("sersync.quarantine on {}: {e}", node.name()))
}

fn held(node: &Node) -> u64 {
    quarantine(node)["quarantined"].as_u64().unwrap_or(u64::MAX)
}

/// Waits until `node`'s quarantine holds `n` records; returns its listing.
fn wait_held(node: &Node, n: u64, what: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(WAIT, || {
        last = quarantine(node);
        last["quarantined"].as_u64() == Some(n)
    });
    assert!(
        ok,
        "{what}: {} holds not {n} quarantined: {last}\n{}",
        node.name(),
        node.status().summary()
    );
    last
}

/// Waits until `node`'s usrloc holds exactly `aliases` of the two aliases
/// and `phones` contacts of users "q…".
fn wait_holds(node: &Node, aliases: usize, phones: usize, what: &str) {
    wait_converged(&[node], WAIT, what, |c| {
        let a = count_prefix(c, "oldsales") + count_prefix(c, "oldsupport");
        let p = count_prefix(c, "q");
        if (a, p) == (aliases, phones) {
            Ok(())
        } else {
            Err(format!(
                "{a} aliases and {p} phones, expected {aliases} and {phones}"
            ))
        }
    });
}

#[test]
fn unappliable_records_are_quarantined_and_the_rest_flow() {
    let t0 = Instant::now();
    let mut opts = ClusterOptions {
        usrloc_tables: vec!["aliases".into()],
        ..Default::default()
    };
    opts.domains_of.insert(2, "location,aliases".into());
    opts.extra.insert(2, vec![ALIASES_DEFINE.into()]);
    let mut c = Cluster::start_with_options("quarantine", 161, 3, &opts);

    // The aliases first, then contacts on two nodes: all behind them.
    sipp_register_aliases(c.node(2), &ALIASES, "aliases");
    let on2: Vec<Reg> = (0..20).map(|i| Reg::new(format!("q2u{i}"), 3600)).collect();
    let on3: Vec<Reg> = (0..10).map(|i| Reg::new(format!("q3u{i}"), 3600)).collect();
    sipp_register(c.node(2), &on2, 50, "phones-2");
    sipp_register(c.node(3), &on3, 50, "phones-3");
    wait_holds(c.node(2), 2, 30, "node 2: its aliases and every phone");
    wait_holds(c.node(1), 0, 30, "node 1: every phone, no alias");
    wait_holds(c.node(3), 0, 30, "node 3: every phone, no alias");

    // The quarantine shows both aliases and why, on nodes 1 and 3.
    for n in [1, 3] {
        let node = c.node(n);
        let q = wait_held(node, 2, "both aliases quarantined");
        assert!(
            q["last_reason"].as_str().unwrap_or("").starts_with(REFUSAL),
            "{q}"
        );
        let records = q["records"].as_array().cloned().unwrap_or_default();
        assert_eq!(records.len(), 2, "{q}");
        for (r, (alias, _)) in records.iter().zip(ALIASES) {
            assert_eq!(r["origin"], "n2", "{q}");
            assert!(r["seq"].as_u64().unwrap_or(0) > 0, "{q}");
            assert_eq!(r["tries"], 1, "{q}");
            let rec = r["record"].as_str().unwrap_or("");
            assert!(
                rec.starts_with("upsert contact aliases/") && rec.contains(alias),
                "{q}"
            );
            assert!(
                r["reason"].as_str().unwrap_or("").starts_with(REFUSAL),
                "{q}"
            );
        }
        let st = node.status();
        assert_eq!(st.quarantined, 2, "{}", st.summary());
        assert!(
            st.quarantine_last_reason.starts_with(REFUSAL),
            "{}",
            st.summary()
        );
        // (apply_pending is refreshed at the applier's next turn)
        let settled = wait_until(Duration::from_secs(5), || {
            node.sersync_status().is_ok_and(|s| s.apply_pending == 0)
        });
        assert!(settled, "{}", node.status().summary());
        // One log line for the cause, not one per record.
        assert_eq!(
            count_log(node, &["quarantined a change from n2", REFUSAL]),
            1,
            "{}",
            node.log_grep("quarantined").join("\n")
        );
    }

    // Bad requests change nothing.
    let node3 = c.node(3);
    for (params, code) in [
        (json!([]), "400"),
        (json!(["x1"]), "400"),
        (json!(["all", "1"]), "400"),
        (json!(["0"]), "400"),
        (json!(["999999"]), "404"),
    ] {
        let e = node3
            .rpc("sersync.quarantine_drop", params.clone())
            .expect_err("a bad drop is refused");
        assert!(e.contains(code), "drop {params}: {e}");
    }
    assert_eq!(held(node3), 2);

    // Node 3 drops one by id, then the rest; its SER never gets them.
    let first = quarantine(node3)["records"][0]["id"]
        .as_u64()
        .expect("an id");
    assert_eq!(
        node3.rpc("sersync.quarantine_drop", json!([first.to_string()])),
        Ok(json!("ok"))
    );
    wait_held(node3, 1, "one dropped");
    assert_eq!(
        node3.rpc("sersync.quarantine_drop", json!(["all"])),
        Ok(json!("ok"))
    );
    let q = wait_held(node3, 0, "all dropped");
    assert_eq!(q["last_reason"], "", "{q}");
    assert_eq!(
        node3
            .rpc("sersync.quarantine_retry", json!(["all"]))
            .map_err(|e| e.contains("404")),
        Err(true)
    );

    // Node 1 gets the table: restarted with the script saving into it.
    // The quarantine is in the journal: it survives the restart.
    let cfg_path = c.node(1).dir.join("kamailio.cfg");
    let cfg = std::fs::read_to_string(&cfg_path).expect("node 1's kamailio.cfg");
    let cfg = cfg.replacen(
        "loadmodule \"",
        &format!("{ALIASES_DEFINE}\nloadmodule \""),
        1,
    );
    std::fs::write(&cfg_path, cfg).expect("writing node 1's kamailio.cfg");
    c.node_mut(1).stop().expect("node 1 stops");
    c.node_mut(1).start();
    c.wait_mesh_up(WAIT);
    wait_held(c.node(1), 2, "node 1 restarted");
    wait_holds(c.node(1), 0, 30, "node 1 after its restart: no alias yet");

    assert_eq!(
        c.node(1).rpc("sersync.quarantine_retry", json!(["all"])),
        Ok(json!("ok"))
    );
    wait_held(c.node(1), 0, "retried");
    wait_holds(
        c.node(1),
        2,
        30,
        "node 1: both aliases applied by the retry",
    );
    wait_holds(c.node(3), 0, 30, "node 3: still no alias");
    expect_log(
        c.node(1),
        &["quarantine: retry all on request: 2 changes back to the applier"],
        0,
        "the retry",
    );

    c.stop_all();
    eprintln!(
        "e2e: quarantine test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
