//! End-to-end: reload after breakdown (issue 11). Three Kamailio 5.6
//! nodes, contacts from two origins registered with sipp. A node that
//! restarts (gracefully, after a SIGKILL, or with the whole cluster) must
//! hold every live contact of the cluster again, every field as before,
//! and nothing that was de-registered meanwhile or just before it died:
//! with usrloc in memory (`db_mode` 0: no database behind usrloc, the
//! configuration replicated clusters run most; each node restarted in
//! turn, and `restart_and_kill`), and with usrloc write-through (1) and
//! write-back (2) on SQLite (`restart_and_kill`). Compared is what
//! `lookup()` returns: write-back usrloc keeps a deleted contact in memory
//! until its timer.
//!
//! Needs `build/sersync.so` (`make`); fails, never skips, without it. The
//! nodes load a private copy of the module (a `make` during the run does
//! not change it under them). The harness runs one cluster at a time
//! (/tmp/sersync-e2e.lock).

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// How long replication may take to make the running nodes agree.
const CONVERGE: Duration = Duration::from_secs(90);
/// How long a restarted node may take to hold the cluster's contacts again
/// (the issue asks for seconds: about 30,000 contacts/s into SER).
const RESTORE: Duration = Duration::from_secs(60);
/// Registrations per second each sipp sends.
const RATE: u32 = 500;
/// Contacts registered on each of nodes 1 and 2.
const PER_ORIGIN: usize = 1500;

type Key = (String, String);

/// Three nodes on 127.0.0.`first`.. with usrloc in `ul_db_mode`, `extra`
/// modparams per node (1-based). With usrloc in memory (0) sersync has no
/// database either (no `db_url`): only its journal can bring a restarted
/// node's contacts back. (With a `db_url` whose location table exists, the
/// start-up comparison with SER's database finds that table empty and
/// stages the journal's contacts: the restore would then depend on SER's
/// database, which issue 11 rules out.) With a persistent usrloc (1
/// write-through, 2 write-back) sersync gets SER's SQLite database, as
/// such a node is configured.
fn restore_cluster(
    name: &str,
    first: u8,
    ul_db_mode: u8,
    extra: std::collections::BTreeMap<usize, Vec<String>>,
) -> Cluster {
    let opts = ClusterOptions {
        ul_db_mode: Some(ul_db_mode),
        sersync_no_db: ul_db_mode == 0,
        extra,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_private(name, first, 3, &opts);
    let mode_line = format!("modparam(\"usrloc\", \"db_mode\", {ul_db_mode})");
    for node in cluster.all() {
        let cfg = std::fs::read_to_string(node.dir.join("kamailio.cfg")).unwrap();
        let sersync_db = cfg.contains("modparam(\"sersync\", \"db_url\"");
        assert!(
            cfg.contains(&mode_line)
                && (ul_db_mode == 1 || !cfg.contains(UL_DB_MODE_LINE))
                && sersync_db == (ul_db_mode != 0),
            "{}: usrloc is not in db_mode {ul_db_mode}, or sersync's database is not as it \
             should be",
            node.name()
        );
    }
    cluster
}

/// The usrloc key of each registration made from `ip` over UDP.
fn keys(regs: &[Reg], ip: &str) -> BTreeSet<Key> {
    regs.iter()
        .map(|r| (r.user.clone(), r.address(ip, Transport::Udp)))
        .collect()
}

/// Registers `a` on node 1 and `b` on node 2 at the same time (usrloc in
/// memory: no SQLite writer to collide with), each sipp from its node's
/// address; panics unless every REGISTER got its 200 OK.
fn register_two_origins(cluster: &Cluster, a: &[Reg], b: &[Reg], label: &str) {
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    thread::scope(|s| {
        s.spawn(|| sipp_register(n1, a, RATE, &format!("n1-{label}")));
        s.spawn(|| sipp_register(n2, b, RATE, &format!("n2-{label}")));
    });
}

/// A convergence check: exactly the contacts `want` (by AOR and address).
fn exactly(want: &BTreeSet<Key>) -> impl FnMut(&Contacts) -> Result<(), String> + '_ {
    move |c| {
        let missing: Vec<&Key> = want.iter().filter(|k| !c.contains_key(*k)).collect();
        let extra: Vec<&Key> = c.keys().filter(|k| !want.contains(*k)).collect();
        if missing.is_empty() && extra.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} contacts, expected {}: {} missing (e.g. {:?}), {} not expected (e.g. {:?})",
            c.len(),
            want.len(),
            missing.len(),
            &missing[..missing.len().min(3)],
            extra.len(),
            &extra[..extra.len().min(3)]
        ))
    }
}

/// A convergence check: the same contacts as `reference`, field by field.
fn same_as<'a>(
    what: &'a str,
    reference: &'a Contacts,
) -> impl FnMut(&Contacts) -> Result<(), String> + 'a {
    move |c| {
        compare_contacts(&[
            (what.to_string(), reference.clone()),
            ("now".into(), c.clone()),
        ])
        .map(|_| ())
    }
}

/// How many contacts each node holds, for the log.
fn counts(cluster: &Cluster) -> String {
    cluster
        .all()
        .iter()
        .map(|n| match n.try_contacts() {
            Ok(c) => format!("{}: {}", n.name(), c.len()),
            Err(e) => format!("{}: {e}", n.name()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// After a restart of `node` that held `held` live contacts in its journal:
/// sersync.status reports nothing left to restore and no drop, and, once
/// the engine reports the restore counters (issue 11), how many it
/// restored (`exact`: all of `held`, else between 1 and `held`) and a
/// "restore:" log line.
fn check_restore_status(node: &Node, held: usize, exact: bool) {
    let mut last = String::new();
    let done = wait_until(Duration::from_secs(20), || {
        let st = node.status();
        last = st.summary();
        st.restore_pending == 0 && st.apply_pending == 0
    });
    assert!(
        done,
        "{}: restore_pending or apply_pending not 0 after convergence:\n{last}",
        node.name()
    );
    let st = node.status();
    assert_eq!(
        st.queue_dropped,
        0,
        "{} dropped records:\n{}",
        node.name(),
        st.summary()
    );
    if !st.reports_restore() {
        eprintln!(
            "e2e: {}: sersync.status has no restored/restore_pending counters yet \
             (engine before issue 11); not checked",
            node.name()
        );
        return;
    }
    let restored = st.restored as usize;
    let ok = if exact {
        restored == held
    } else {
        (1..=held).contains(&restored)
    };
    assert!(
        ok,
        "{}: restored {restored} contacts from its journal, which held {held} at the \
         breakdown:\n{}",
        node.name(),
        st.summary()
    );
    let lines = node.log_grep("restore:");
    assert!(
        !lines.is_empty(),
        "{}: no \"restore:\" line in its log (restore progress)",
        node.name()
    );
    eprintln!(
        "e2e: {}: restored={restored} restore_pending=0; last log line: {}",
        node.name(),
        lines.last().map(|l| l.trim()).unwrap_or_default()
    );
}

/// `a` registered on node 1 and `b` on node 2, converged on every node
/// (the contacts of `view`); returns them (the cluster's state before any breakdown).
fn two_origins_converged(cluster: &Cluster, a: &[Reg], b: &[Reg], view: View) -> Contacts {
    register_two_origins(cluster, a, b, "reg");
    let want: BTreeSet<Key> = keys(a, &cluster.node(1).ip)
        .into_iter()
        .chain(keys(b, &cluster.node(2).ip))
        .collect();
    let all = wait_converged_view(
        &cluster.all(),
        view,
        CONVERGE,
        "registrations on nodes 1 and 2",
        exactly(&want),
    );
    // Each origin's contacts carry its server_id: the state compared later
    // is what the origins stored, not an empty or foreign one.
    for (regs, ip, sid) in [(a, &cluster.node(1).ip, 1), (b, &cluster.node(2).ip, 2)] {
        let wrong: Vec<Key> = keys(regs, ip)
            .into_iter()
            .filter(|k| all.get(k).is_none_or(|f| f.server_id != sid))
            .take(3)
            .collect();
        assert!(
            wrong.is_empty(),
            "contacts of origin {sid} without server_id {sid}: {wrong:?}"
        );
    }
    cluster.wait_settled(CONVERGE);
    all
}

/// Each node in turn stopped gracefully and started again; before the
/// next one stops, every node holds every contact, every field as before.
#[test]
fn each_node_restarted_in_turn_gets_every_contact_back() {
    let mut cluster = restore_cluster("restore-rolling", 101, 0, Default::default());
    // From here on (the machine lock held): the test's own run time.
    let t0 = Instant::now();
    let a = mixed_users("a", PER_ORIGIN, 0);
    let b = mixed_users("b", PER_ORIGIN, 100_000);
    let before = two_origins_converged(&cluster, &a, &b, View::All);
    assert_eq!(before.len(), a.len() + b.len());

    for i in 1..=3 {
        cluster.node_mut(i).stop().unwrap();
        // The others keep everything while it is down.
        for other in cluster.all().into_iter().filter(|n| n.index != i) {
            same_as("before the restarts", &before)(&other.contacts())
                .unwrap_or_else(|d| panic!("{} while node {i} is down:\n{d}", other.name()));
        }
        let t = Instant::now();
        cluster.node_mut(i).start();
        let at_start = cluster.node(i).contacts().len();
        wait_converged(
            &cluster.all(),
            RESTORE,
            &format!("every node after node {i}'s graceful restart"),
            same_as("before the restarts", &before),
        );
        eprintln!(
            "e2e: node {i} restarted: {at_start} contacts when it answered RPC, all {} \
             {:.1} s after its start ({})",
            before.len(),
            t.elapsed().as_secs_f64(),
            counts(&cluster)
        );
        check_restore_status(cluster.node(i), before.len(), true);
        cluster.wait_mesh_up(Duration::from_secs(30));
    }
    assert_eq!(assert_same_contacts(&cluster.all()), before.len());
    cluster.stop_all();
    eprintln!(
        "e2e: test took {:.1} s once its cluster was up",
        t0.elapsed().as_secs_f64()
    );
}

/// Contacts registered on each of nodes 1 and 2 in `restart_and_kill`.
const SCENARIO_PER_ORIGIN: usize = 1000;

/// A convergence check: exactly the contacts `want`, each with the fields
/// `reference` holds for it.
fn exactly_as<'a>(
    want: &'a BTreeSet<Key>,
    reference: &'a Contacts,
) -> impl FnMut(&Contacts) -> Result<(), String> + 'a {
    move |c| {
        exactly(want)(c)?;
        let expected: Contacts = reference
            .iter()
            .filter(|(k, _)| want.contains(*k))
            .map(|(k, f)| (k.clone(), f.clone()))
            .collect();
        compare_contacts(&[("expected".into(), expected), ("now".into(), c.clone())]).map(|_| ())
    }
}

/// Waits until every node holds exactly `want` (what lookup() returns),
/// each with the fields of `reference`, after `what` began at `started`.
fn all_back(
    cluster: &Cluster,
    what: &str,
    started: Instant,
    want: &BTreeSet<Key>,
    reference: &Contacts,
) {
    wait_converged_view(
        &cluster.all(),
        View::Live,
        RESTORE,
        &format!("every node after {what}"),
        exactly_as(want, reference),
    );
    eprintln!(
        "e2e: {what}: all {} contacts {:.1} s after the start ({})",
        want.len(),
        started.elapsed().as_secs_f64(),
        counts(cluster)
    );
}

/// The contacts `a` and `b` both hold have the same fields.
fn agree_on(a: &Contacts, b: &Contacts, a_name: &str, b_name: &str) -> Result<(), String> {
    let both = |x: &Contacts, y: &Contacts| -> Contacts {
        x.iter()
            .filter(|(k, _)| y.contains_key(*k))
            .map(|(k, f)| (k.clone(), f.clone()))
            .collect()
    };
    compare_contacts(&[(a_name.into(), both(a, b)), (b_name.into(), both(b, a))]).map(|_| ())
}

/// After a start of `node`: nothing left to restore or apply, nothing
/// dropped; with usrloc in memory (`db_mode` 0), the restore counted
/// (`check_restore_status`: all of `held` when `exact`).
fn check_started(node: &Node, mode: u8, held: usize, exact: bool) {
    if mode == 0 {
        return check_restore_status(node, held, exact);
    }
    let mut last = String::new();
    let done = wait_until(Duration::from_secs(20), || {
        let st = node.status();
        last = st.summary();
        st.restore_pending == 0 && st.apply_pending == 0 && st.queue_dropped == 0
    });
    assert!(
        done,
        "{}: restore_pending, apply_pending or queue_dropped not 0 after convergence:\n{last}",
        node.name()
    );
}

/// `node`'s database rows (username|contact) among `keys`, read with the
/// node stopped.
fn rows_in_db(node: &Node, keys: &BTreeSet<Key>) -> usize {
    node.sql("SELECT username || '|' || contact FROM location")
        .unwrap_or_else(|e| panic!("{}: {e}", node.name()))
        .iter()
        .filter_map(|l| l.split_once('|'))
        .filter(|(u, c)| keys.contains(&(u.to_string(), c.to_string())))
        .count()
}

/// Three nodes with usrloc in `mode`: 0 in memory (sersync without a
/// database: only its journal brings contacts back), 1 write-through or
/// 2 write-back to SER's SQLite database (sersync compares that database
/// with its journal at start). Node 1 has `durability "journal"`: its
/// 200 OKs come once the change is journaled, so changes it confirmed
/// just before a SIGKILL are not in the window `durability "queue"`
/// leaves open (README, Guarantees).
///
/// 1. 1,000 contacts registered on node 1 and 1,000 on node 2.
/// 2. Node 3 stopped gracefully; node 1 registers new phones and
///    de-registers some of node 2's; node 3 started: every node holds
///    exactly the cluster's contacts, every field as the origins stored it.
/// 3. Node 1 refreshes some of its phones, then de-registers some of its
///    own and of node 2's and is SIGKILLed right after the last 200 OK
///    (with write-back usrloc most of those rows are still in its
///    database). While it is down node 2 registers new phones, refreshes
///    node 1's and de-registers its own. Node 1 started: every node holds
///    exactly the cluster's contacts; none of the de-registered ones
///    comes back anywhere.
/// 4. The whole cluster SIGKILLed at once (write-back: before its timer
///    wrote the last changes) and started: the same again, and still so
///    after usrloc's timer has run.
fn restart_and_kill(mode: u8, name: &str, first: u8) {
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        1,
        vec!["modparam(\"sersync\", \"durability\", \"journal\")".to_string()],
    );
    let mut cluster = restore_cluster(name, first, mode, extra);
    // From here on (the machine lock held): the test's own run time.
    let t0 = Instant::now();
    let live = View::Live;
    let (ip1, ip2) = (cluster.node(1).ip.clone(), cluster.node(2).ip.clone());
    let a = mixed_users("a", SCENARIO_PER_ORIGIN, 0);
    let b = mixed_users("b", SCENARIO_PER_ORIGIN, 100_000);
    let before = two_origins_converged(&cluster, &a, &b, live);

    // 2. A graceful restart while another node registers and de-registers.
    cluster.node_mut(3).stop().unwrap();
    let c = mixed_users("c", 500, 200_000);
    let gone_b1: Vec<Reg> = b[..100]
        .iter()
        .map(|r| Reg {
            host: Some(ip2.clone()),
            ..r.deregistration()
        })
        .collect();
    sipp_register(cluster.node(1), &c, RATE, "n1-c");
    sipp_register(cluster.node(1), &gone_b1, RATE, "n1-gone-b1");
    let want: BTreeSet<Key> = before
        .keys()
        .filter(|k| !keys(&gone_b1, &ip2).contains(*k))
        .cloned()
        .chain(keys(&c, &ip1))
        .collect();
    let survivors = wait_converged_view(
        &[cluster.node(1), cluster.node(2)],
        live,
        CONVERGE,
        "nodes 1 and 2 while node 3 is down",
        exactly(&want),
    );
    let step2 = survivors.clone();
    let t = Instant::now();
    cluster.node_mut(3).start();
    all_back(&cluster, "node 3's graceful restart", t, &want, &survivors);
    // What nodes 1 and 2 hold (the reference from here on) is what the
    // origins stored: every contact nobody touched as before.
    agree_on(
        &before,
        &survivors,
        "before node 3's restart",
        "nodes 1 and 2",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    check_started(cluster.node(3), mode, want.len(), false);
    cluster.wait_mesh_up(Duration::from_secs(30));

    // 3. Node 1 refreshes, de-registers and is SIGKILLed at once.
    let refreshed_1: Vec<Reg> = a[200..300]
        .iter()
        .map(|r| Reg {
            expires: r.expires + 600,
            cseq: r.cseq + 10,
            ..r.clone()
        })
        .collect();
    sipp_register(cluster.node(1), &refreshed_1, RATE, "n1-refresh-a");
    let refreshed_ok = |h: &Contacts| -> Result<(), String> {
        let stale = refreshed_1
            .iter()
            .filter(|r| h[&(r.user.clone(), r.address(&ip1, Transport::Udp))].cseq != r.cseq as i64)
            .count();
        match stale {
            0 => Ok(()),
            n => Err(format!("{n} of node 1's refreshes not held")),
        }
    };
    wait_converged_view(
        &cluster.all(),
        live,
        CONVERGE,
        "node 1's refreshes",
        refreshed_ok,
    );
    let gone_1: Vec<Reg> = a[..200]
        .iter()
        .map(Reg::deregistration)
        .chain(b[100..200].iter().map(|r| Reg {
            host: Some(ip2.clone()),
            ..r.deregistration()
        }))
        .collect();
    sipp_register(cluster.node(1), &gone_1, RATE, "n1-gone");
    cluster.node_mut(1).kill().unwrap();
    let gone_1_keys: BTreeSet<Key> = keys(&gone_1, &ip1);
    let rows = rows_in_db(cluster.node(1), &gone_1_keys);
    eprintln!(
        "e2e: node 1 SIGKILLed right after {} de-registrations; {rows} of them still rows \
         in its database",
        gone_1.len()
    );
    if mode == 2 && rows == 0 {
        // The case this test is about: the database lags by usrloc's
        // timer_interval, the journal holds the deletions. Seen in every
        // run so far (all 300 rows); only a timer run in the few ms
        // between the last 200 OK and the SIGKILL takes them all, and
        // failing then would make the test flaky, not the code wrong.
        eprintln!(
            "e2e: WARNING: write-back: usrloc's timer removed all of node 1's last \
             de-registrations from its database before the SIGKILL; this run does not \
             exercise the rows the database still held"
        );
    }
    let d = mixed_users("d", 500, 300_000);
    let refreshed_2: Vec<Reg> = a[300..400]
        .iter()
        .map(|r| Reg {
            host: Some(ip1.clone()),
            expires: r.expires + 900,
            cseq: r.cseq + 20,
            ..r.clone()
        })
        .collect();
    let gone_2: Vec<Reg> = b[200..300].iter().map(Reg::deregistration).collect();
    let n2 = cluster.node(2);
    sipp_register(n2, &d, RATE, "n2-d");
    sipp_register(n2, &refreshed_2, RATE, "n2-refresh-a");
    sipp_register(n2, &gone_2, RATE, "n2-gone");
    let want: BTreeSet<Key> = want
        .iter()
        .filter(|k| !gone_1_keys.contains(*k) && !keys(&gone_2, &ip2).contains(*k))
        .cloned()
        .chain(keys(&d, &ip2))
        .collect();
    assert_eq!(
        want.len(),
        2 * SCENARIO_PER_ORIGIN + 500 - 100 - 300 - 100 + 500
    );
    // Node 1's last de-registrations may have reached one of them and not
    // the other before the SIGKILL: the origin sends its changes, peers do
    // not relay them, so they agree on those once node 1 is back.
    let survivors = wait_converged_except(
        &[cluster.node(2), cluster.node(3)],
        live,
        &gone_1_keys,
        CONVERGE,
        "nodes 2 and 3 while node 1 is down",
        |h| {
            exactly(&want)(h)?;
            let touched: BTreeSet<Key> = keys(&refreshed_1, &ip1)
                .into_iter()
                .chain(keys(&refreshed_2, &ip1))
                .collect();
            let untouched: Contacts = h
                .iter()
                .filter(|(k, _)| !touched.contains(*k))
                .map(|(k, f)| (k.clone(), f.clone()))
                .collect();
            agree_on(&step2, &untouched, "after node 3's restart", "now")?;
            for r in &refreshed_2 {
                let f = &h[&(r.user.clone(), r.address(&ip1, Transport::Udp))];
                if (f.cseq, f.server_id) != (r.cseq as i64, 2) {
                    return Err(format!("node 2's refresh of {} not held", r.user));
                }
            }
            Ok(())
        },
    );
    let t = Instant::now();
    cluster.node_mut(1).start();
    all_back(&cluster, "node 1's SIGKILL and start", t, &want, &survivors);
    check_started(cluster.node(1), mode, want.len() + gone_1.len(), false);

    // 4. The whole cluster SIGKILLed at once, once every change is
    // acknowledged.
    cluster.wait_settled(CONVERGE);
    for i in 1..=3 {
        cluster.node_mut(i).kill().unwrap();
    }
    let t = Instant::now();
    for i in 1..=3 {
        cluster.node_mut(i).start();
    }
    cluster.wait_mesh_up(Duration::from_secs(30));
    all_back(
        &cluster,
        "the whole cluster's SIGKILL and start",
        t,
        &want,
        &survivors,
    );
    for i in 1..=3 {
        check_started(cluster.node(i), mode, want.len(), true);
    }
    // And it stays so once usrloc's timer has run (write-back: it writes
    // and deletes rows then; expired and deleted contacts leave memory).
    thread::sleep(Duration::from_secs(TIMER_INTERVAL + 1));
    cluster.wait_settled(CONVERGE);
    wait_converged_view(
        &cluster.all(),
        live,
        Duration::from_secs(5),
        "every node once usrloc's timer has run",
        exactly_as(&want, &survivors),
    );
    cluster.stop_all();
    eprintln!(
        "e2e: test took {:.1} s once its cluster was up",
        t0.elapsed().as_secs_f64()
    );
}

/// usrloc in memory: node 1 SIGKILLed right after de-registrations and
/// while node 2 registers, node 3 restarted gracefully, then the whole
/// cluster killed at once (`restart_and_kill`).
#[test]
fn in_memory_restart_kill_and_whole_cluster_kill_hold_exactly_the_clusters_contacts() {
    restart_and_kill(0, "restore-kill-mem", 111);
}

/// `restart_and_kill` with write-through usrloc (`db_mode` 1, SQLite).
#[test]
fn write_through_restart_kill_and_whole_cluster_kill_hold_exactly_the_clusters_contacts() {
    restart_and_kill(1, "restore-kill-wt", 121);
}

/// `restart_and_kill` with write-back usrloc (`db_mode` 2, SQLite): the
/// database lags by usrloc's timer_interval; deleted contacts stay in
/// memory as "deleted" until then (compared: what lookup() returns).
#[test]
fn write_back_restart_kill_and_whole_cluster_kill_hold_exactly_the_clusters_contacts() {
    restart_and_kill(2, "restore-kill-wb", 131);
}
