//! End to end: cluster membership on real Kamailio nodes (127.0.0.61-64).
//!
//! Three nodes configured with each other; a fourth configured with only
//! node 1 as its seed joins, learns the others and gets every contact;
//! restarted while its seed is down it reaches the members it learned;
//! killed and forgotten (sersync.forget) it leaves every member list and
//! every journal. Node 2 runs with durability "journal"; node 4 finds its
//! RPC door by itself (jsonrpcs' datagram socket, no "fifo" modparam).

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const USERS: usize = 20;

fn regs(prefix: &str) -> Vec<Reg> {
    (0..USERS)
        .map(|i| {
            let mut r = Reg::new(format!("{prefix}{i:03}"), 3600);
            r.instance = i % 2 == 0;
            r.reg_id = i % 2 == 0;
            r.uuid = i as u64;
            r.q = Some(500 + i as u16);
            r
        })
        .collect()
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Waits until `node`'s sersync.peers shows exactly `want` up (sorted).
fn wait_peers_up(node: &Node, want: &[&str], timeout: Duration, what: &str) {
    let want = ids(want);
    let start = Instant::now();
    let mut last = String::new();
    let ok = wait_until(timeout, || match node.sersync_peers() {
        Ok((peers, _)) => {
            let mut up: Vec<String> = peers
                .iter()
                .filter(|p| p.state == "up")
                .map(|p| p.node_id.clone())
                .collect();
            up.sort();
            last = format!("{peers:?}");
            up == want
        }
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(
        ok,
        "{what}: {} does not list {want:?} as up after {timeout:?}: {last}\nlog tail:\n{}",
        node.name(),
        node.log_tail(20)
    );
    eprintln!(
        "e2e: {what}: {} sees {want:?} up after {:.1} s",
        node.name(),
        start.elapsed().as_secs_f64()
    );
}

/// Node ids of every entry in `node`'s sersync.peers, whatever its state.
fn member_ids(node: &Node) -> Vec<String> {
    let (peers, _) = node
        .sersync_peers()
        .unwrap_or_else(|e| panic!("sersync.peers on {}: {e}", node.name()));
    let mut v: Vec<String> = peers.into_iter().map(|p| p.node_id).collect();
    v.sort();
    v
}

fn expect_count(n: usize) -> impl FnMut(&Contacts) -> Result<(), String> {
    move |c: &Contacts| {
        if c.len() == n {
            Ok(())
        } else {
            Err(format!("{} contacts, want {n}", c.len()))
        }
    }
}

/// Registers `n` users named `prefix`NNN on `on`; waits until `nodes`
/// hold `total` contacts, the same on each (so that no node applies
/// while the next registrations come: db_sqlite has no busy timeout).
fn register_and_wait(on: &Node, prefix: &str, n: usize, nodes: &[&Node], total: usize) {
    let mut more = regs(prefix);
    more.truncate(n);
    sipp_register(on, &more, 50, prefix);
    wait_converged(
        nodes,
        Duration::from_secs(20),
        &format!("{prefix} from {}", on.name()),
        expect_count(total),
    );
}

#[test]
fn a_fourth_node_joins_through_one_seed_and_is_forgotten() {
    let t0 = Instant::now();
    let mut opts = ClusterOptions::default();
    opts.extra.insert(
        2,
        vec![
            "modparam(\"sersync\", \"durability\", \"journal\")".into(),
            "modparam(\"sersync\", \"durability_timeout\", 200)".into(),
        ],
    );
    let mut c = Cluster::start_with_options("members", 61, 3, &opts);

    // durability "journal": save() returned only once the change was
    // journaled, so the journal holds them all when sipp is done (its
    // state table is written in the same transaction as the log)
    sipp_register(c.node(2), &regs("m2u"), 50, "n2-before");
    let durable = c
        .node(2)
        .journal_int("SELECT count(*) FROM state WHERE origin = 'n2'")
        .unwrap();
    assert_eq!(
        durable, USERS as i64,
        "node 2 (durability journal) journaled every change before its 200 OK"
    );
    assert!(
        c.node(2).log_grep("not journaled within").is_empty(),
        "node 2's durable waits timed out:\n{}",
        c.node(2).log_grep("not journaled within").join("\n")
    );
    assert_eq!(
        c.node(2).log_grep("durability journal: save() waits").len(),
        1
    );
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "m2u from node 2",
        expect_count(USERS),
    );
    register_and_wait(c.node(1), "m1u", USERS, &c.all(), 2 * USERS);
    register_and_wait(c.node(3), "m3u", USERS, &c.all(), 3 * USERS);

    // The new fields of sersync.status.
    let raw = c.node(1).status().raw;
    assert!(raw.get("journal_entries").is_some(), "{raw}");
    for k in [
        "snapshot_sent",
        "snapshot_total",
        "snapshot_received",
        "received",
    ] {
        assert!(raw["peers"][0].get(k).is_some(), "no {k} in {raw}");
    }

    // Node 4 knows only node 1, and finds its RPC door by itself:
    // jsonrpcs' datagram socket, named relative to runtime_dir.
    let n4 = c.add_node("127.0.0.64", &[sersync_addr("127.0.0.61")], &opts, |cfg| {
        cfg.lines()
            .filter(|l| !l.starts_with("modparam(\"sersync\", \"fifo\""))
            .map(|l| {
                if l.starts_with("modparam(\"jsonrpcs\", \"transport\"") {
                    "modparam(\"jsonrpcs\", \"transport\", 7)\n\
                     modparam(\"jsonrpcs\", \"dgram_socket\", \"rpc.sock\")"
                        .to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert_eq!(n4, 4);
    c.node_mut(4).start();
    let door = c.node(4).log_grep("RPC door: jsonrpcs datagram socket");
    let sock = c.node(4).dir.join("rpc.sock");
    assert!(
        door.len() == 1 && door[0].ends_with(sock.to_str().unwrap_or("?")),
        "node 4 did not take jsonrpcs' datagram socket {}: {door:?}",
        sock.display()
    );
    for (i, others) in [
        (1, ["n2", "n3", "n4"]),
        (2, ["n1", "n3", "n4"]),
        (3, ["n1", "n2", "n4"]),
        (4, ["n1", "n2", "n3"]),
    ] {
        wait_peers_up(c.node(i), &others, Duration::from_secs(15), "join");
        assert_eq!(member_ids(c.node(i)), ids(&others), "{}", c.node(i).name());
    }
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "node 4 caught up",
        expect_count(3 * USERS),
    );
    register_and_wait(c.node(4), "m4u", USERS, &c.all(), 4 * USERS);

    // Its seed down, node 4 restarted reaches the members it learned.
    c.node_mut(1).stop().expect("stopping node 1");
    c.node_mut(4).stop().expect("stopping node 4");
    c.node_mut(4).start();
    wait_peers_up(
        c.node(4),
        &["n2", "n3"],
        Duration::from_secs(20),
        "seed down",
    );
    let without_seed = [c.node(2), c.node(3), c.node(4)];
    register_and_wait(c.node(4), "m4late", 5, &without_seed, 4 * USERS + 5);

    // Node 1 back; node 4 crashes and is forgotten through node 2.
    c.node_mut(1).start();
    wait_peers_up(
        c.node(1),
        &["n2", "n3", "n4"],
        Duration::from_secs(20),
        "n1 back",
    );
    wait_converged(
        &[c.node(1), c.node(2), c.node(3), c.node(4)],
        Duration::from_secs(30),
        "node 1 caught up",
        expect_count(4 * USERS + 5),
    );
    c.node_mut(4).kill().expect("killing node 4");
    wait_peers_up(c.node(2), &["n1", "n3"], Duration::from_secs(20), "n4 down");

    // Garbage first: every call faults, nothing changes.
    let before: BTreeMap<usize, Vec<String>> =
        (1..=3).map(|i| (i, member_ids(c.node(i)))).collect();
    let long = "x".repeat(64);
    let bad: Vec<(Value, &str)> = vec![
        (json!([]), "400"),
        (json!([""]), "400"),
        (json!([long]), "400"),
        (json!(["n 4"]), "400"),
        (json!(["n4\u{1}"]), "400"),
        (json!(["n2"]), "400"),
        (json!(["n4", "n3"]), "400"),
        (json!(["nobody"]), "404"),
    ];
    for (params, code) in &bad {
        match c.node(2).rpc("sersync.forget", params.clone()) {
            Ok(v) => panic!("sersync.forget {params} succeeded: {v}"),
            Err(e) => assert!(
                e.contains(&format!("\"code\":{code}")),
                "sersync.forget {params}: want fault {code}, got {e}"
            ),
        }
    }
    let fault = c.node(2).kamcmd(&["sersync.forget", "n2"]).unwrap_err();
    assert!(fault.contains("this node"), "{fault}");
    std::thread::sleep(Duration::from_millis(500));
    for i in 1..=3 {
        assert_eq!(
            member_ids(c.node(i)),
            before[&i],
            "{} after garbage",
            c.node(i).name()
        );
        let n = c
            .node(i)
            .journal_int("SELECT count(*) FROM members WHERE forgotten = 1")
            .unwrap();
        assert_eq!(n, 0, "{}: garbage forgot someone", c.node(i).name());
    }
    assert!(before[&1].contains(&"n4".to_string()), "{before:?}");

    let r = c
        .node(2)
        .rpc("sersync.forget", json!(["n4"]))
        .expect("sersync.forget n4");
    assert_eq!(r, json!("ok"));
    let start = Instant::now();
    let gone = wait_until(Duration::from_secs(10), || {
        (1..=3).all(|i| !member_ids(c.node(i)).contains(&"n4".to_string()))
    });
    assert!(
        gone,
        "n4 still listed: {:?}",
        (1..=3).map(|i| member_ids(c.node(i))).collect::<Vec<_>>()
    );
    eprintln!(
        "e2e: n4 forgotten everywhere in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let forgotten_everywhere = wait_until(Duration::from_secs(10), || {
        (1..=3).all(|i| {
            c.node(i)
                .journal_int("SELECT count(*) FROM members WHERE node_id = 'n4' AND forgotten = 1")
                == Ok(1)
        })
    });
    assert!(
        forgotten_everywhere,
        "n4 not marked forgotten in every journal"
    );
    for i in 1..=3 {
        let node = c.node(i);
        let acked = node
            .journal_int("SELECT count(*) FROM peer_acked WHERE node_id = 'n4'")
            .unwrap();
        assert_eq!(
            acked,
            0,
            "{} keeps an acknowledged position for n4",
            node.name()
        );
        assert_eq!(member_ids(node).len(), 2, "{}", node.name());
    }
    // the cluster goes on without it
    let remaining = [c.node(1), c.node(2), c.node(3)];
    register_and_wait(c.node(1), "m1after", 5, &remaining, 4 * USERS + 10);

    c.stop_all();
    eprintln!("e2e: members test took {:.1} s", t0.elapsed().as_secs_f64());
}
