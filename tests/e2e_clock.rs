//! A node under a skewed clock (issue 13, "Clocks"), with real Kamailio:
//! node 2 runs under libfaketime (the `faketime` package), its clock
//! ahead of node 1's. Within the bound (max_clock_skew 2000 ms here) its
//! registrations replicate at once; beyond it node 1 refuses them (status
//! on both sides) while node 1's own still reach node 2; once node 2 is
//! restarted on the right time its held registrations arrive, and what
//! it registers after the restart is never stamped below what it stamped
//! before.
//!
//! Addresses 127.0.0.224–225 only.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// libfaketime's variables: the wall clock `offset` ahead, monotonic
/// clocks left alone (timers, timeouts).
fn skewed(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), FAKETIME_LIB.into()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

fn has(node: &Node, user: &str) -> bool {
    node.contacts().keys().any(|(aor, _)| aor == user)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    t0.elapsed()
}

fn num(st: &SersyncStatus, k: &str) -> u64 {
    st.raw[k].as_u64().unwrap_or(0)
}

fn text(st: &SersyncStatus, k: &str) -> String {
    st.raw[k].as_str().unwrap_or_default().to_string()
}

fn restart_with(c: &mut Cluster, env: Vec<(String, String)>) {
    let n2 = c.node_mut(2);
    n2.stop().expect("stopping node 2");
    n2.env = env;
    n2.start();
    c.wait_mesh_up(Duration::from_secs(30));
}

#[test]
fn a_node_whose_clock_is_ahead_is_refused_beyond_the_bound_and_caught_up_after() {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} missing: apt-get install faketime (.ci/setup-system.sh)"
    );
    let line = "modparam(\"sersync\", \"max_clock_skew\", 2000)".to_string();
    let opts = ClusterOptions {
        extra: BTreeMap::from([(1, vec![line.clone()]), (2, vec![line])]),
        ..Default::default()
    };
    let mut c = Cluster::start_with_options("clock", 224, 2, &opts);

    // 1 s ahead: within the bound, replicated at once.
    restart_with(&mut c, skewed("+1s"));
    sipp_register(c.node(2), &[Reg::new("within", 3600)], 10, "within");
    wait_for("a registration 1 s ahead", Duration::from_secs(15), || {
        has(c.node(1), "within")
    });
    assert_eq!(num(&c.node(1).status(), "clock_refused"), 0);

    // 12 s ahead: refused by node 1, on both sides' status.
    restart_with(&mut c, skewed("+12s"));
    sipp_register(c.node(2), &[Reg::new("ahead", 3600)], 10, "ahead");
    wait_for("node 1 refuses", Duration::from_secs(15), || {
        num(&c.node(1).status(), "clock_refused") > 0
    });
    let st1 = c.node(1).status();
    assert!(
        text(&st1, "clock_last_reason").contains("from n2")
            && text(&st1, "clock_last_reason").contains("ms ahead of this node's clock"),
        "{:?}",
        st1.raw
    );
    wait_for("node 2 is told", Duration::from_secs(15), || {
        num(&c.node(2).status(), "clock_refused_by_peers") > 0
    });
    assert!(
        text(&c.node(2).status(), "clock_last_reason").starts_with("refused by n1: clock skew"),
        "{:?}",
        c.node(2).status().raw
    );
    assert!(!has(c.node(1), "ahead"), "replicated beyond the bound");
    assert!(
        count_log(c.node(1), &["clock skew: change"]) > 0,
        "no log line on node 1"
    );
    // Node 1's registrations still reach node 2 (its clock is behind
    // node 2's, which is no skew ahead).
    sipp_register(c.node(1), &[Reg::new("from-one", 3600)], 10, "from-one");
    wait_for(
        "node 1's registration at node 2",
        Duration::from_secs(15),
        || has(c.node(2), "from-one"),
    );
    let stamp_ahead = c
        .node(2)
        .journal_int("SELECT max(hlc_max) FROM log_batch")
        .expect("node 2's journal");

    // Back on the right time: what was held arrives (once node 1's clock
    // has passed its stamp minus the bound), and a registration made now
    // is stamped past the ones before (the high-water mark), not behind.
    restart_with(&mut c, Vec::new());
    sipp_register(c.node(2), &[Reg::new("after", 3600)], 10, "after");
    let took = wait_for("the held registrations", Duration::from_secs(40), || {
        has(c.node(1), "ahead") && has(c.node(1), "after")
    });
    eprintln!("e2e: held registrations arrived {took:?} after the clock was right");
    let after = c
        .node(2)
        .journal_int("SELECT max(hlc_max) FROM log_batch")
        .expect("node 2's journal");
    assert!(
        after > stamp_ahead,
        "stamp went back: {after:#x} <= {stamp_ahead:#x}"
    );
    let refused = num(&c.node(1).status(), "clock_refused");
    eprintln!("e2e: node 1 refused {refused} batches in this run");
}
