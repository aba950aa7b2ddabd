//! End to end: two Kamailio nodes configured with one node id, each seeded
//! only to a third node (127.0.0.131-133). The third node refuses both and
//! logs one line naming the id and both addresses; each clone logs the
//! reason it was told; nothing the clone registered is taken in as the
//! other's; once the clone stops, the original is taken again.

#[path = "e2e_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn regs(prefix: &str, n: usize) -> Vec<Reg> {
    (0..n)
        .map(|i| Reg::new(format!("{prefix}{i:03}"), 3600))
        .collect()
}

/// Waits until `node`'s log has a line with every needle; returns it.
fn wait_log(node: &Node, needles: &[&str], timeout: Duration, what: &str) -> String {
    let mut found = String::new();
    let ok = wait_until(timeout, || {
        let lines = node.log_grep(needles[0]);
        match lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
            Some(l) => {
                found = l.clone();
                true
            }
            None => false,
        }
    });
    assert!(
        ok,
        "{what}: no line with {needles:?} in {}'s log within {timeout:?}; tail:\n{}",
        node.name(),
        node.log_tail(20)
    );
    found
}

/// The state of `node`'s link to node id `id` (None: not listed).
fn link_state(node: &Node, id: &str) -> Option<String> {
    let (peers, _) = node.sersync_peers().ok()?;
    peers.into_iter().find(|p| p.node_id == id).map(|p| p.state)
}

#[test]
fn clones_seeded_through_a_third_node_are_refused_on_every_node() {
    let t0 = Instant::now();
    let opts = ClusterOptions::default();
    let mut c = Cluster::start_with_options("identity", 131, 1, &opts);
    let seed = [sersync_addr("127.0.0.131")];
    let orig = c.add_node("127.0.0.132", &seed, &opts, |cfg| cfg);
    // The clone: node 3's configuration, with node 2's id.
    let clone = c.add_node("127.0.0.133", &seed, &opts, |cfg| {
        cfg.replace(
            "modparam(\"sersync\", \"node_id\", \"n3\")",
            "modparam(\"sersync\", \"node_id\", \"n2\")",
        )
    });
    c.node_mut(orig).start();
    sipp_register(c.node(orig), &regs("orig", 10), 50, "orig");
    wait_converged(
        &[c.node(1), c.node(orig)],
        Duration::from_secs(30),
        "node 2's registrations at node 1",
        |t| match count_prefix(t, "orig") {
            10 => Ok(()),
            n => Err(format!("{n} of 10")),
        },
    );

    c.node_mut(clone).start();
    sipp_register(c.node(clone), &regs("clone", 10), 50, "clone");
    let both = ["running at once", "n2", "127.0.0.132:", "127.0.0.133:"];
    let line = wait_log(c.node(1), &both, Duration::from_secs(30), "node 1");
    eprintln!("e2e: node 1: {line}");
    for n in [orig, clone] {
        let told = wait_log(
            c.node(n),
            &[
                "peer refused",
                "running at once",
                "127.0.0.132:",
                "127.0.0.133:",
            ],
            Duration::from_secs(30),
            "a clone told why",
        );
        eprintln!("e2e: {}: {told}", c.node(n).name());
    }
    // sersync.status shows it (the status area is refreshed every 0.2 s).
    let mut st = json!(null);
    let shown = wait_until(Duration::from_secs(5), || {
        st = c.node(1).rpc("sersync.status", json!([])).expect("status");
        st["clones_refused"].as_u64().unwrap_or(0) >= 1
    });
    assert!(shown, "{st}");
    let reason = st["clone_last_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("127.0.0.132:") && reason.contains("127.0.0.133:"),
        "{reason}"
    );
    // Refused, not skipped as duplicates in silence: node 1 holds nothing
    // of the clone's, and its link to n2 is not up while both run.
    std::thread::sleep(Duration::from_secs(6));
    assert_ne!(link_state(c.node(1), "n2").as_deref(), Some("up"));
    let held = c.node(1).contacts();
    assert_eq!(count_prefix(&held, "clone"), 0);

    // The clone stops: node 2 is taken again, and what it registers
    // meanwhile reaches node 1.
    c.node_mut(clone).stop().expect("stopping the clone");
    let ok = wait_until(Duration::from_secs(40), || {
        link_state(c.node(1), "n2").as_deref() == Some("up")
    });
    assert!(ok, "node 2 not taken again:\n{}", c.node(1).log_tail(20));
    sipp_register(c.node(orig), &regs("later", 10), 50, "later");
    wait_converged(
        &[c.node(1), c.node(orig)],
        Duration::from_secs(30),
        "node 2's later registrations at node 1",
        |t| match count_prefix(t, "later") {
            10 => Ok(()),
            n => Err(format!("{n} of 10")),
        },
    );
    eprintln!(
        "e2e: identity: clones refused, original taken again; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    c.stop_all();
}
