//! End to end: aliases on three real Kamailio nodes (127.0.0.51-53).
//!
//! A web application's view: JSON-RPC over HTTP (curl), the RPC FIFO and
//! kamcmd manage alias_db's table on any node; every node's table follows,
//! so alias_db_lookup() resolves the alias on every node; sipp calls prove
//! it. Bulk, malformed input, a node down during changes, rows written
//! straight into the database (sersync.alias_rescan and the periodic scan),
//! and SER-0.9 style aliases kept in usrloc.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// One alias_db row: alias_username, alias_domain, username, domain.
type Row = (String, String, String, String);

fn row(au: &str, ad: &str, u: &str, d: &str) -> Row {
    (au.into(), ad.into(), u.into(), d.into())
}

fn table(node: &Node) -> Result<BTreeSet<Row>, String> {
    let lines = node.sql("SELECT alias_username, alias_domain, username, domain FROM dbaliases")?;
    let mut t = BTreeSet::new();
    for l in lines {
        let f: Vec<&str> = l.split('|').collect();
        if f.len() != 4 {
            return Err(format!("odd row {l:?}"));
        }
        t.insert(row(f[0], f[1], f[2], f[3]));
    }
    Ok(t)
}

fn must_table(node: &Node) -> BTreeSet<Row> {
    table(node).unwrap_or_else(|e| panic!("reading {}'s dbaliases: {e}", node.name()))
}

/// A short account of how two tables differ.
fn diff(a_name: &str, a: &BTreeSet<Row>, b_name: &str, b: &BTreeSet<Row>) -> String {
    let only_a: Vec<&Row> = a.difference(b).collect();
    let only_b: Vec<&Row> = b.difference(a).collect();
    let mut s = format!(
        "{a_name}: {} rows, {b_name}: {} rows; {} only on {a_name}, {} only on {b_name}",
        a.len(),
        b.len(),
        only_a.len(),
        only_b.len()
    );
    for r in only_a.iter().take(3) {
        let _ = write!(s, "\n  only on {a_name}: {r:?}");
    }
    for r in only_b.iter().take(3) {
        let _ = write!(s, "\n  only on {b_name}: {r:?}");
    }
    s
}

/// Waits until every running node's table equals `want` (or, when None,
/// node 1's); returns the table.
fn wait_tables(
    c: &Cluster,
    want: Option<&BTreeSet<Row>>,
    timeout: Duration,
    what: &str,
) -> BTreeSet<Row> {
    let start = Instant::now();
    let nodes: Vec<&Node> = c.nodes.iter().filter(|n| n.is_running()).collect();
    let mut last = String::new();
    let mut result = BTreeSet::new();
    let ok = wait_until(timeout, || {
        let tables: Result<Vec<BTreeSet<Row>>, String> = nodes.iter().map(|n| table(n)).collect();
        let tables = match tables {
            Ok(t) => t,
            Err(e) => {
                last = e;
                return false;
            }
        };
        let reference = want.unwrap_or(&tables[0]);
        last.clear();
        for (n, t) in nodes.iter().zip(&tables) {
            if t != reference {
                let _ = writeln!(last, "{}", diff("expected", reference, &n.name(), t));
            }
        }
        if last.is_empty() {
            result = reference.clone();
            return true;
        }
        false
    });
    if !ok {
        let status: String = nodes
            .iter()
            .map(|n| match n.sersync_status() {
                Ok(s) => format!("{}: {}\n", n.name(), s.summary()),
                Err(e) => format!("{}: {e}\n", n.name()),
            })
            .collect();
        let errors: String = nodes
            .iter()
            .map(|n| {
                let l: Vec<String> = n.log_grep("ERROR").into_iter().rev().take(6).collect();
                format!("--- {} ERROR lines ---\n{}\n", n.name(), l.join("\n"))
            })
            .collect();
        panic!("{what}: alias tables differ after {timeout:?}:\n{last}{status}{errors}");
    }
    eprintln!(
        "e2e: {what}: {} rows on every node in {:.1} s",
        result.len(),
        start.elapsed().as_secs_f64()
    );
    result
}

/// The fault of a call that must fail; panics if it succeeded.
fn fault(r: Result<Value, RpcFault>, what: &str) -> RpcFault {
    match r {
        Ok(v) => panic!("{what}: expected an RPC error, got {v}"),
        Err(f) => f,
    }
}

fn assert_400(f: &RpcFault, needles: &[&str], what: &str) {
    assert!(
        f.code == 400 && needles.iter().all(|n| f.message.contains(n)),
        "{what}: expected a 400 mentioning {needles:?}, got {f}"
    );
}

fn rescan(node: &Node) -> u64 {
    // 503: remote changes were being applied; the scan says so and retries
    let mut last = String::new();
    for _ in 0..10 {
        match node.rpc("sersync.alias_rescan", json!([])) {
            Ok(v) => {
                return v
                    .as_u64()
                    .unwrap_or_else(|| panic!("alias_rescan replied {v}"))
            }
            Err(e) if e.contains("503") => {
                last = e;
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("sersync.alias_rescan on {}: {e}", node.name()),
        }
    }
    panic!("sersync.alias_rescan kept answering 503: {last}");
}

const RESCAN_INTERVAL: u64 = 4;

/// Runs one step of the test, naming it first: a failure's output ends
/// with the step it happened in.
macro_rules! step {
    ($name:ident($($arg:expr),* $(,)?)) => {{
        eprintln!("e2e: aliases: step {}", stringify!($name));
        $name($($arg),*)
    }};
}

#[test]
fn aliases_replicate_across_three_nodes() {
    let t0 = Instant::now();
    let mut c = step!(three_nodes_start_with_alias_settings(t0));
    // what every node's alias table holds once a step has replicated
    let mut want = BTreeSet::new();
    let callee = step!(callee_registration_replicates(&c));
    step!(alias_added_over_http_replicates(&c, &mut want));
    step!(call_to_the_alias_reaches_the_callee(&c, callee));
    step!(removed_alias_answers_404(&c, &mut want));
    step!(usrloc_alias_replicates_and_routes(&c));
    step!(bulk_aliases_in_one_http_call_replicate(&c, &mut want));
    step!(malformed_calls_get_400_and_change_nothing(&c, &want));
    step!(node_down_during_changes_catches_up(&mut c, &mut want));
    step!(rescan_replicates_direct_db_rows(&c, &mut want));
    step!(periodic_scan_replicates_direct_db_rows(&c, &mut want));
    step!(alias_list_over_http(&c));
    step!(no_node_dropped_queue_records(&c));
    c.stop_all();
    eprintln!("e2e: aliases test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// Three nodes replicating the usrloc tables "location" and "aliases";
/// node 1 also scans its alias table every RESCAN_INTERVAL seconds.
fn three_nodes_start_with_alias_settings(t0: Instant) -> Cluster {
    let mut opts = ClusterOptions {
        domains: Some("location,aliases".into()),
        usrloc_tables: vec!["aliases".into()],
        ..Default::default()
    };
    for i in 1..=3 {
        opts.extra
            .entry(i)
            .or_default()
            .push("#!define SERSYNC_E2E_USRLOC_ALIASES".into());
    }
    opts.extra.entry(1).or_default().push(format!(
        "modparam(\"sersync\", \"alias_rescan_interval\", {RESCAN_INTERVAL})"
    ));
    let c = Cluster::start_with_options("aliases", 51, 3, &opts);
    eprintln!(
        "e2e: cluster up {:.1} s after the test started (machine lock included)",
        t0.elapsed().as_secs_f64()
    );
    c
}

/// The alias the first steps add, call and remove.
fn sales() -> Row {
    row("sales", "example.com", "target", "example.org")
}

/// A callee registered on node 1 (a sipp server, kept for the call to the
/// alias) is seen on every node.
fn callee_registration_replicates(c: &Cluster) -> SippServer {
    let callee = sipp_server(c.node(1), "127.0.0.51", 5099, "uas.xml", 1, "callee");
    sipp_register(
        c.node(1),
        &[Reg::new("target", 3600)],
        10,
        "register-target",
    );
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "callee's registration",
        |t| {
            if count_prefix(t, "target") == 1 {
                Ok(())
            } else {
                Err("no contact for target".into())
            }
        },
    );
    callee
}

/// An alias added over HTTP on node 2 reaches every table; adding it again
/// adds nothing; kamcmd lists it.
fn alias_added_over_http_replicates(c: &Cluster, want: &mut BTreeSet<Row>) {
    let added = c
        .node(2)
        .http_rpc(
            "sersync.alias_add",
            json!(["sip:sales@example.com", "sip:target@example.org"]),
        )
        .unwrap_or_else(|f| panic!("alias_add over HTTP on node 2: {f}"));
    assert_eq!(added, json!(1), "alias_add replies the number added");
    want.insert(sales());
    wait_tables(
        c,
        Some(want),
        Duration::from_secs(20),
        "alias added on node 2",
    );
    // the same call again adds nothing: the mapping exists
    let again = c
        .node(3)
        .http_rpc(
            "sersync.alias_add",
            json!(["sip:sales@example.com", "sip:target@example.org"]),
        )
        .unwrap_or_else(|f| panic!("repeated alias_add: {f}"));
    assert_eq!(again, json!(0), "an existing mapping is not added twice");
    let listed = c
        .node(3)
        .kamcmd(&["sersync.alias_list", "sip:sales@example.com"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        listed.contains("sip:sales@example.com") && listed.contains("sip:target@example.org"),
        "kamcmd sersync.alias_list on node 3: {listed}"
    );
}

/// An INVITE to the alias at node 3 reaches the callee registered on node 1.
fn call_to_the_alias_reaches_the_callee(c: &Cluster, mut callee: SippServer) {
    sipp_call(
        c.node(3),
        "invite.xml",
        "sales",
        "example.com",
        "call-alias",
    )
    .unwrap_or_else(|e| panic!("INVITE sip:sales@example.com at node 3: {e}"));
    callee
        .wait(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the callee did not complete the call: {e}"));
    assert!(
        !c.node(3)
            .log_grep("alias: sip:sales@example.com -> sip:target@example.org")
            .is_empty(),
        "node 3 did not log the alias_db lookup"
    );
}

/// The alias removed on node 1 is gone from every table: node 3 answers 404.
fn removed_alias_answers_404(c: &Cluster, want: &mut BTreeSet<Row>) {
    let removed = c
        .node(1)
        .rpc("sersync.alias_rm", json!(["sip:sales@example.com"]))
        .unwrap_or_else(|e| panic!("alias_rm on node 1: {e}"));
    assert_eq!(removed, json!(1), "alias_rm replies the number removed");
    want.remove(&sales());
    wait_tables(
        c,
        Some(want),
        Duration::from_secs(20),
        "alias removed on node 1",
    );
    sipp_call(
        c.node(3),
        "invite_404.xml",
        "sales",
        "example.com",
        "call-removed",
    )
    .unwrap_or_else(|e| panic!("INVITE to the removed alias at node 3 (404 expected): {e}"));
}

/// A SER-0.9 style alias (usrloc table "aliases") registered on node 1 routes
/// a call at node 3.
fn usrloc_alias_replicates_and_routes(c: &Cluster) {
    let mut callee = sipp_server(c.node(1), "127.0.0.51", 5099, "uas.xml", 1, "callee-usrloc");
    sipp_register_aliases(
        c.node(1),
        &[("oldsales", "sip:target@example.org")],
        "usrloc-alias",
    );
    wait_converged(&c.all(), Duration::from_secs(20), "usrloc alias", |t| {
        if count_prefix(t, "oldsales") == 1 {
            Ok(())
        } else {
            Err("no usrloc alias oldsales".into())
        }
    });
    sipp_call(
        c.node(3),
        "invite.xml",
        "oldsales",
        "127.0.0.53",
        "call-usrloc-alias",
    )
    .unwrap_or_else(|e| panic!("INVITE to a usrloc alias at node 3: {e}"));
    callee
        .wait(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the callee did not complete the usrloc alias call: {e}"));
}

/// 10,000 aliases in one HTTP call reach every table, no queue record
/// dropped.
fn bulk_aliases_in_one_http_call_replicate(c: &Cluster, want: &mut BTreeSet<Row>) {
    let mut lines = String::new();
    for i in 0..10_000 {
        let _ = writeln!(
            lines,
            "sip:bulk{i:05}@bulk.example.com sip:user{i:05}@example.org"
        );
        want.insert(row(
            &format!("bulk{i:05}"),
            "bulk.example.com",
            &format!("user{i:05}"),
            "example.org",
        ));
    }
    eprintln!("e2e: bulk alias_add body: {} bytes of lines", lines.len());
    let t_bulk = Instant::now();
    let added = c
        .node(2)
        .http_rpc("sersync.alias_add", json!([lines]))
        .unwrap_or_else(|f| panic!("bulk alias_add of 10,000 over HTTP: {f}"));
    assert_eq!(added, json!(10_000));
    eprintln!(
        "e2e: bulk alias_add answered in {:.1} s",
        t_bulk.elapsed().as_secs_f64()
    );
    wait_tables(c, Some(want), Duration::from_secs(90), "10,000 aliases");
    eprintln!(
        "e2e: bulk replicated {:.1} s after the call",
        t_bulk.elapsed().as_secs_f64()
    );
    for n in c.all() {
        let st = n.status();
        assert_eq!(
            st.queue_dropped,
            0,
            "{}: queue dropped records: {}",
            n.name(),
            st.summary()
        );
    }
}

/// Malformed alias calls get 400 with what is wrong, and no table changes.
fn malformed_calls_get_400_and_change_nothing(c: &Cluster, want: &BTreeSet<Row>) {
    c.wait_settled(Duration::from_secs(30));
    assert_eq!(must_table(c.node(1)), *want);
    let n1 = c.node(1);
    let f = fault(
        n1.http_rpc(
            "sersync.alias_add",
            json!(["bob@example.com", "sip:t@example.org"]),
        ),
        "no scheme",
    );
    assert_400(&f, &["Parameter 1", "not a SIP URI"], "alias without sip:");
    let f = fault(
        n1.http_rpc(
            "sersync.alias_add",
            json!(["sip:bob@", "sip:t@example.org"]),
        ),
        "no host",
    );
    assert_400(&f, &["Parameter 1", "no host"], "alias without host");
    let f = fault(
        n1.http_rpc(
            "sersync.alias_add",
            json!(["sip:bob@example.com", "sip:example.org"]),
        ),
        "no user",
    );
    assert_400(&f, &["Parameter 2", "no user"], "target without user");
    let long_user = format!("sip:{}@example.com", "u".repeat(65));
    let f = fault(
        n1.http_rpc("sersync.alias_add", json!([long_user, "sip:t@example.org"])),
        "oversize",
    );
    assert_400(&f, &["Parameter 1", "longer than 64"], "oversize user");
    let f = fault(
        n1.http_rpc(
            "sersync.alias_add",
            json!([
                "sip:a@example.com",
                "sip:t@example.org",
                "sip:b@example.com"
            ]),
        ),
        "odd",
    );
    assert_400(
        &f,
        &["Odd number of parameters (3)"],
        "odd number of parameters",
    );
    let f = fault(
        n1.http_rpc(
            "sersync.alias_add",
            json!(["sip:ok1@example.com sip:t@example.org\nsip:ok2@example.com sip:t@example.org\nsip:bad sip:t@example.org\n"]),
        ),
        "bad line",
    );
    assert_400(&f, &["Line 3", "no user"], "bulk with a bad third line");
    let f = fault(
        n1.http_rpc(
            "sersync.alias_add",
            json!(["sip:ok1@example.com sip:t@example.org extra"]),
        ),
        "three fields",
    );
    assert_400(
        &f,
        &["Line 1", "got 3 field(s)"],
        "bulk line with three fields",
    );
    let f = fault(
        n1.http_rpc(
            "sersync.alias_rm",
            json!([
                "sip:a@example.com",
                "sip:b@example.com",
                "sip:c@example.com"
            ]),
        ),
        "rm 3",
    );
    assert_400(&f, &["got 3 parameters"], "alias_rm with three parameters");
    let f = fault(n1.http_rpc("sersync.alias_add", json!([])), "no params");
    assert_400(
        &f,
        &["Expected alias_uri target_uri pairs"],
        "alias_add without parameters",
    );
    let e = n1
        .rpc(
            "sersync.alias_add",
            json!(["tel:+15551234", "sip:t@example.org"]),
        )
        .expect_err("tel: URI over the FIFO");
    assert!(
        e.contains("400") && e.contains("not a SIP URI"),
        "tel: URI over the FIFO: {e}"
    );
    let e = n1
        .kamcmd(&["sersync.alias_add", "sip:lonely@example.com"])
        .expect_err("kamcmd alias_add with one URI");
    assert!(
        e.contains("expected 'alias_uri target_uri'"),
        "kamcmd alias_add with one URI: {e}"
    );
    std::thread::sleep(Duration::from_secs(1));
    c.wait_settled(Duration::from_secs(30));
    wait_tables(
        c,
        Some(want),
        Duration::from_secs(5),
        "after malformed calls",
    );
}

/// Changes made while node 3 is down reach it when it returns.
fn node_down_during_changes_catches_up(c: &mut Cluster, want: &mut BTreeSet<Row>) {
    c.node_mut(3)
        .stop()
        .unwrap_or_else(|e| panic!("stopping node 3: {e}"));
    let mut pairs = Vec::new();
    for i in 0..5 {
        pairs.push(format!("sip:late{i}@example.com"));
        pairs.push("sip:target@example.org".to_string());
        want.insert(row(
            &format!("late{i}"),
            "example.com",
            "target",
            "example.org",
        ));
    }
    let r = c
        .node(1)
        .rpc("sersync.alias_add", json!(pairs))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r, json!(5));
    let mut rm = String::new();
    for i in 0..101 {
        let _ = writeln!(rm, "sip:bulk{i:05}@bulk.example.com");
        want.remove(&row(
            &format!("bulk{i:05}"),
            "bulk.example.com",
            &format!("user{i:05}"),
            "example.org",
        ));
    }
    // the last one by its mapping; blank lines are skipped
    let rm = rm.replace(
        "sip:bulk00100@bulk.example.com\n",
        "\n  sip:bulk00100@bulk.example.com\tsip:user00100@example.org\n",
    );
    let r = c
        .node(1)
        .http_rpc("sersync.alias_rm", json!([rm]))
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r, json!(101));
    let r = c
        .node(1)
        .http_rpc(
            "sersync.alias_replace",
            json!([
                "sip:bulk00200@bulk.example.com",
                "sip:other@example.net",
                "sip:bulk00200@bulk.example.com",
                "sip:third@example.net"
            ]),
        )
        .unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(
        r,
        json!({"added": 2, "removed": 1}),
        "alias_replace's reply"
    );
    want.remove(&row(
        "bulk00200",
        "bulk.example.com",
        "user00200",
        "example.org",
    ));
    want.insert(row("bulk00200", "bulk.example.com", "other", "example.net"));
    want.insert(row("bulk00200", "bulk.example.com", "third", "example.net"));
    wait_tables(
        c,
        Some(want),
        Duration::from_secs(20),
        "changes while node 3 is down (nodes 1, 2)",
    );
    assert_ne!(
        must_table(c.node(3)),
        *want,
        "node 3 (stopped) must lack the changes before it returns"
    );
    c.node_mut(3).start();
    c.wait_mesh_up(Duration::from_secs(30));
    wait_tables(c, Some(want), Duration::from_secs(60), "node 3 back");
}

/// Rows written straight into node 1's database replicate on
/// sersync.alias_rescan.
fn rescan_replicates_direct_db_rows(c: &Cluster, want: &mut BTreeSet<Row>) {
    let direct = row("direct", "example.com", "target", "example.org");
    let gone = row("bulk00300", "bulk.example.com", "user00300", "example.org");
    c.node(1)
        .sql(
            "INSERT INTO dbaliases (alias_username, alias_domain, username, domain) \
             VALUES ('direct', 'example.com', 'target', 'example.org'); \
             DELETE FROM dbaliases WHERE alias_username = 'bulk00300';",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    want.insert(direct);
    want.remove(&gone);
    assert_eq!(must_table(c.node(1)), *want);
    let t_scan = Instant::now();
    let rows = rescan(c.node(1));
    assert_eq!(
        rows as usize,
        want.len(),
        "alias_rescan replies the rows it read"
    );
    eprintln!(
        "e2e: alias_rescan of {rows} rows answered in {:.2} s",
        t_scan.elapsed().as_secs_f64()
    );
    wait_tables(
        c,
        Some(want),
        Duration::from_secs(30),
        "after sersync.alias_rescan",
    );
}

/// A row written straight into node 1's database replicates by the periodic
/// scan.
fn periodic_scan_replicates_direct_db_rows(c: &Cluster, want: &mut BTreeSet<Row>) {
    c.node(1)
        .sql(
            "INSERT INTO dbaliases (alias_username, alias_domain, username, domain) \
             VALUES ('periodic', 'example.com', 'target', 'example.org');",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    want.insert(row("periodic", "example.com", "target", "example.org"));
    wait_tables(
        c,
        Some(want),
        Duration::from_secs(3 * RESCAN_INTERVAL + 15),
        "after the periodic scan",
    );
}

/// alias_list over HTTP gives an alias's targets, and nothing for an unknown
/// one.
fn alias_list_over_http(c: &Cluster) {
    let list = c
        .node(2)
        .http_rpc(
            "sersync.alias_list",
            json!(["sip:bulk00200@bulk.example.com"]),
        )
        .unwrap_or_else(|f| panic!("{f}"));
    let mut targets: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("alias_list is not an array: {list}"))
        .iter()
        .map(|e| {
            assert_eq!(
                e["alias"],
                json!("sip:bulk00200@bulk.example.com"),
                "{list}"
            );
            e["target"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        vec!["sip:other@example.net", "sip:third@example.net"]
    );
    assert_eq!(
        c.node(2)
            .http_rpc("sersync.alias_list", json!(["sip:nobody@example.com"]))
            .unwrap_or_else(|f| panic!("{f}")),
        json!([])
    );
}

/// No node's queue dropped a record during the test.
fn no_node_dropped_queue_records(c: &Cluster) {
    for n in c.all() {
        let st = n.status();
        assert_eq!(st.queue_dropped, 0, "{}: {}", n.name(), st.summary());
    }
}
