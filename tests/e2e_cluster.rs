//! End-to-end: three Kamailio 5.6 nodes with sersync on loopback, phones
//! played by sipp. Needs `build/sersync.so` (`make`); fails, never skips,
//! without it. Each test has its own addresses and directory under
//! target/tmp/e2e/; the harness runs one cluster at a time.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

/// How long replication may take to make all nodes agree.
const CONVERGE: Duration = Duration::from_secs(90);
/// Registrations per second sipp sends.
const RATE: u32 = 500;

/// usrloc's Methods for the scenario's Allow header: INVITE, ACK, CANCEL,
/// BYE, OPTIONS, MESSAGE, NOTIFY.
const ALLOW_METHODS: i64 = 911;

/// Checks that the contacts hold `regs` as the origin stored them (so that
/// the replication checks compare something meaningful).
fn check_registered(
    c: &Contacts,
    regs: &[Reg],
    source_ip: &str,
    transport: Transport,
    server_id: i64,
) -> Result<(), String> {
    let now = unix_now();
    let mut bad = Vec::new();
    for r in regs {
        let key = (r.user.clone(), r.address(source_ip, transport));
        let Some(f) = c.get(&key) else {
            bad.push(format!("{key:?} missing"));
            continue;
        };
        let mut why = Vec::new();
        if f.path.is_empty() == r.path {
            why.push(format!("path {:?}", f.path));
        }
        if f.received.is_empty() == (r.path || r.nat) {
            why.push(format!("received {:?}", f.received));
        }
        if (f.instance == r.instance_urn()) != r.instance {
            why.push(format!("instance {:?}", f.instance));
        }
        if (f.reg_id == 1) != (r.instance && r.reg_id) {
            why.push(format!("reg_id {}", f.reg_id));
        }
        if (f.cflags & 64 != 0) != r.flags {
            why.push(format!("cflags {}", f.cflags));
        }
        if f.q != r.q.map_or(-1, i64::from) {
            why.push(format!("q {}", f.q));
        }
        if (f.methods == ALLOW_METHODS) != r.allow {
            why.push(format!("methods {}", f.methods));
        }
        if f.cseq != r.cseq as i64 {
            why.push(format!("cseq {}", f.cseq));
        }
        if f.user_agent != format!("sersync-e2e/{}", r.user) {
            why.push(format!("user_agent {:?}", f.user_agent));
        }
        if f.server_id != server_id {
            why.push(format!("server_id {} (origin {server_id})", f.server_id));
        }
        match f.expires {
            Expires::At(t) if (t - now - r.expires as i64).abs() <= 120 => {}
            ref e => why.push(format!("expires {e:?} (registered for {} s)", r.expires)),
        }
        if !why.is_empty() {
            bad.push(format!("{key:?}: {}", why.join(", ")));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} registrations wrong, e.g.:\n  {}",
            bad.len(),
            regs.len(),
            bad[..bad.len().min(5)].join("\n  ")
        ))
    }
}

fn users_of(regs: &[Reg]) -> BTreeSet<String> {
    regs.iter().map(|r| r.user.clone()).collect()
}

#[test]
fn registrations_replicate_field_by_field() {
    let mut cluster = Cluster::start("replicate", 1, 3);
    let (n1, n2, n3) = (cluster.node(1), cluster.node(2), cluster.node(3));

    let udp1 = mixed_users("a", 2000, 0);
    let tcp1 = mixed_users("t", 100, 10_000);
    let udp2 = mixed_users("b", 200, 20_000);
    let local1 = udp1.len() + tcp1.len();
    let total = local1 + udp2.len();

    let _tcp = sipp_register_keep(n1, &tcp1, RATE, "n1-tcp");
    sipp_register(n1, &udp1, RATE, "n1-udp");
    // Kamailio 5.6's SQLite driver does not wait on a locked database: a
    // node saving REGISTERs while it applies a burst from a peer can refuse
    // some (500). Let node 2 finish applying first.
    cluster.wait_settled(CONVERGE);
    sipp_register(n2, &udp2, RATE, "n2-udp");

    // Phase 1: the same contacts everywhere, every field equal.
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "registrations on nodes 1 and 2",
        expect_contacts(total),
    );
    check_registered(&all, &udp1, &n1.ip, Transport::Udp, 1).unwrap();
    check_registered(&all, &tcp1, &n1.ip, Transport::Tcp, 1).unwrap();
    check_registered(&all, &udp2, &n2.ip, Transport::Udp, 2).unwrap();
    assert_eq!(assert_same_contacts(&cluster.all()), total);

    // Phase 2: each change crossed each link once, and nobody echoed. A
    // node journals each usrloc change its registrar made: at least one
    // per user, at most one per REGISTER it accepted (sipp retransmits a
    // REGISTER whose reply is late on a loaded machine; SER accepts the
    // copy, mostly without a change), nothing it applied.
    let mut last = String::new();
    let settled = wait_until(Duration::from_secs(30), || {
        let st = n1.status();
        last = st.summary();
        st.journaled >= local1 as u64
            && st.peers.len() == 2
            && st
                .peers
                .iter()
                .all(|p| p.sent == st.journaled && p.acked == st.last_seq)
    });
    let st1 = n1.status();
    assert!(
        settled,
        "node 1: expected journaled >= {local1} and, for each peer, sent = journaled and \
         acked = last_seq:\n{last}"
    );
    assert!(st1.last_seq > 0, "node 1 last_seq is 0:\n{}", st1.summary());
    let accepted1 = n1.accepted_regs();
    assert!(
        st1.journaled <= accepted1,
        "node 1 journaled {} records, more than the {accepted1} REGISTERs it accepted:\n{}",
        st1.journaled,
        st1.summary()
    );
    let (st2, st3) = (n2.status(), n3.status());
    let accepted2 = n2.accepted_regs();
    assert!(
        st2.journaled >= udp2.len() as u64 && st2.journaled <= accepted2,
        "node 2 journaled {} records: not its own changes alone ({} users, {accepted2} \
         REGISTERs accepted)?\n{}",
        st2.journaled,
        udp2.len(),
        st2.summary()
    );
    assert_eq!(
        st3.journaled,
        0,
        "node 3 has no local changes (no echo of applied records):\n{}",
        st3.summary()
    );
    for (st, name) in [(&st1, "node 1"), (&st2, "node 2"), (&st3, "node 3")] {
        assert_eq!(
            st.queue_dropped,
            0,
            "{name} dropped records:\n{}",
            st.summary()
        );
    }
    // Received per link: every record its origin journaled, once; nothing
    // relayed.
    let expect_received = [
        (&st1, &n2.ip, "n2", st2.journaled),
        (&st1, &n3.ip, "n3", 0),
        (&st2, &n1.ip, "n1", st1.journaled),
        (&st2, &n3.ip, "n3", 0),
        (&st3, &n1.ip, "n1", st1.journaled),
        (&st3, &n2.ip, "n2", st2.journaled),
    ];
    for (st, ip, id, n) in expect_received {
        let p = st
            .peer(ip, id)
            .unwrap_or_else(|| panic!("{} has no peer {ip}:\n{}", st.node_id, st.summary()));
        assert_eq!(
            p.received,
            n,
            "{} received from {id}:\n{}",
            st.node_id,
            st.summary()
        );
    }
    eprintln!(
        "e2e: status after phase 2:\n  {}\n  {}\n  {}",
        st1.summary(),
        st2.summary(),
        st3.summary()
    );

    // Phase 3: stable. Replicated contacts survive usrloc's timer on the
    // receivers (e.g. TCP contacts whose connection lives on node 1 only).
    std::thread::sleep(Duration::from_secs(2 * TIMER_INTERVAL + 1));
    let after = n3.contacts();
    assert_eq!(
        after.len(),
        total,
        "node 3 lost contacts after {} timer runs",
        2
    );
    assert_eq!(assert_same_contacts(&cluster.all()), total);
    assert_eq!(
        n1.status().journaled,
        st1.journaled,
        "node 1 journaled more after the timer ran (no REGISTER since)"
    );
    // Bounded journal: with every peer up and caught up, each node's
    // journal trims to nothing (every 5 s) while its sequence goes on.
    let entries = |n: &Node| {
        n.status()
            .raw
            .get("journal_entries")
            .and_then(serde_json::Value::as_u64)
    };
    let trimmed = wait_until(Duration::from_secs(20), || {
        cluster.all().iter().all(|n| entries(n) == Some(0))
    });
    assert!(
        trimmed,
        "journals not trimmed once acknowledged: {:?}",
        cluster.all().iter().map(|n| entries(n)).collect::<Vec<_>>()
    );
    assert_eq!(
        n1.status().last_seq,
        st1.last_seq,
        "node 1 numbered changes while idle"
    );

    cluster.stop_all();
}

#[test]
fn deregistrations_and_replacements_remove_everywhere() {
    let mut cluster = Cluster::start("remove", 11, 3);
    let (n1, n2) = (cluster.node(1), cluster.node(2));

    let udp = mixed_users("d", 400, 0);
    let tcp = mixed_users("k", 60, 10_000);
    // r0 on node 1 and r1 on node 2: two contacts each, replaced later.
    let two = |user: &str| -> Vec<Reg> {
        ["a", "b"]
            .iter()
            .map(|t| Reg {
                tag: t.to_string(),
                ..Reg::new(user, 3600)
            })
            .collect()
    };
    let mut tcp_keep = sipp_register_keep(n1, &tcp, RATE, "n1-tcp");
    sipp_register(n1, &udp, RATE, "n1-udp");
    sipp_register(n1, &two("r0"), RATE, "n1-r0");
    cluster.wait_settled(CONVERGE);
    sipp_register(n2, &two("r1"), RATE, "n2-r1");
    let total = udp.len() + tcp.len() + 4;
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "initial registrations",
        expect_contacts(total),
    );
    check_registered(&all, &udp, &n1.ip, Transport::Udp, 1).unwrap();
    check_registered(&all, &tcp, &n1.ip, Transport::Tcp, 1).unwrap();

    // Explicit de-registration (Expires: 0) of half the UDP users.
    let gone: Vec<Reg> = udp[..200].iter().map(Reg::deregistration).collect();
    sipp_register(n1, &gone, RATE, "n1-dereg");
    let gone_users = users_of(&gone);
    let left = total - gone.len();
    let all = wait_converged(&cluster.all(), CONVERGE, "de-registrations", |c| {
        let still: Vec<_> = c
            .keys()
            .filter(|(a, _)| gone_users.contains(a))
            .take(3)
            .collect();
        if !still.is_empty() {
            return Err(format!(
                "de-registered contacts still present, e.g. {still:?}"
            ));
        }
        expect_contacts(left)(c)
    });
    check_registered(&all, &udp[200..], &n1.ip, Transport::Udp, 1).unwrap();

    // Refreshes (usrloc updates the contact): 100 phones re-register on
    // node 1 with a new Call-ID, CSeq and Expires; 50 phones registered on
    // node 1 move to node 2 (same contact, now saved by node 2).
    let (ip1, ip2) = (n1.ip.clone(), n2.ip.clone());
    let refreshed: Vec<Reg> = udp[200..300]
        .iter()
        .map(|r| Reg {
            expires: r.expires + 600,
            cseq: r.cseq + 10,
            ..r.clone()
        })
        .collect();
    let moved: Vec<Reg> = udp[300..350]
        .iter()
        .map(|r| Reg {
            expires: r.expires + 900,
            cseq: r.cseq + 20,
            host: Some(ip1.clone()),
            ..r.clone()
        })
        .collect();
    sipp_register(n1, &refreshed, RATE, "n1-refresh");
    cluster.wait_settled(CONVERGE);
    sipp_register(n2, &moved, RATE, "n2-moved");
    wait_converged(&cluster.all(), CONVERGE, "refreshes", |c| {
        check_registered(c, &refreshed, &ip1, Transport::Udp, 1)?;
        check_registered(c, &moved, &ip1, Transport::Udp, 2)?;
        expect_contacts(left)(c)
    });

    // save(..., 0x04) replaces the AOR's other contacts: only the new one
    // stays, on every node.
    let replace = |user: &str| Reg {
        tag: "c".into(),
        replace: true,
        ..Reg::new(user, 3600)
    };
    sipp_register(n1, &[replace("r0")], RATE, "n1-replace");
    cluster.wait_settled(CONVERGE);
    sipp_register(n2, &[replace("r1")], RATE, "n2-replace");
    wait_converged(&cluster.all(), CONVERGE, "replacements", |c| {
        for (user, ip) in [("r0", &ip1), ("r1", &ip2)] {
            let have: Vec<&String> = c
                .keys()
                .filter(|(a, _)| a == user)
                .map(|(_, k)| k)
                .collect();
            let want = replace(user).address(ip, Transport::Udp);
            if have != vec![&want] {
                return Err(format!("{user} has {have:?}, expected only {want}"));
            }
        }
        expect_contacts(left - 2)(c)
    });

    // A lost TCP connection (handle_lost_tcp): usrloc's timer expires the
    // connection's contacts on node 1, then everywhere.
    let left = left - 2 - tcp.len();
    tcp_keep.kill();
    let lost = wait_until(Duration::from_secs(3 * TIMER_INTERVAL + 5), || {
        count_prefix(&n1.contacts(), "k") == 0
    });
    assert!(
        lost,
        "node 1 kept TCP contacts {} s after the connection died",
        3 * TIMER_INTERVAL + 5
    );
    wait_converged(
        &cluster.all(),
        Duration::from_secs(30),
        "contacts of the lost TCP connection",
        |c| match count_prefix(c, "k") {
            0 => expect_contacts(left)(c),
            n => Err(format!("{n} TCP contacts left")),
        },
    );

    // Removals are not echoed either: node 3 made no change of its own.
    cluster.wait_settled(Duration::from_secs(30));
    let st3 = cluster.node(3).status();
    assert_eq!(
        st3.journaled,
        0,
        "node 3 journaled applied records:\n{}",
        st3.summary()
    );

    cluster.stop_all();
}

#[test]
fn stopped_node_receives_what_it_missed() {
    let mut cluster = Cluster::start("catchup", 21, 3);

    let p = mixed_users("p", 300, 0);
    sipp_register(cluster.node(1), &p, RATE, "n1-p");
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "initial registrations",
        expect_contacts(p.len()),
    );

    // Node 3 stopped (SIGTERM) misses registrations on nodes 1 and 2 and
    // de-registrations on node 1.
    cluster.node_mut(3).stop().unwrap();
    let q = mixed_users("q", 500, 10_000);
    let w = mixed_users("w", 100, 20_000);
    let dereg: Vec<Reg> = p[..50].iter().map(Reg::deregistration).collect();
    sipp_register(cluster.node(1), &q, RATE, "n1-q");
    sipp_register(cluster.node(2), &w, RATE, "n2-w");
    sipp_register(cluster.node(1), &dereg, RATE, "n1-dereg");
    let total = p.len() - dereg.len() + q.len() + w.len();
    wait_converged(
        &[cluster.node(1), cluster.node(2)],
        CONVERGE,
        "nodes 1 and 2 while node 3 is down",
        expect_contacts(total),
    );

    cluster.node_mut(3).start();
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "node 3 after its restart",
        expect_contacts(total),
    );
    let (ip1, ip2) = (cluster.node(1).ip.clone(), cluster.node(2).ip.clone());
    check_registered(&all, &q, &ip1, Transport::Udp, 1).unwrap();
    check_registered(&all, &w, &ip2, Transport::Udp, 2).unwrap();
    check_registered(&all, &p[50..], &ip1, Transport::Udp, 1).unwrap();
    assert_eq!(assert_same_contacts(&cluster.all()), total);

    // Node 3 journals nothing of what it caught up with.
    cluster.wait_settled(Duration::from_secs(30));
    let st3 = cluster.node(3).status();
    assert_eq!(
        st3.journaled,
        0,
        "node 3 re-journaled what it caught up with:\n{}",
        st3.summary()
    );

    // Node 2 crashes (SIGKILL) and misses more; its journal and database
    // must survive the crash.
    let seq2 = cluster.node(2).status().last_seq;
    assert!(
        seq2 >= w.len() as u64,
        "node 2 journaled {seq2} of its {} changes",
        w.len()
    );
    cluster.node_mut(2).kill().unwrap();
    let x = mixed_users("x", 200, 30_000);
    let dereg2: Vec<Reg> = p[50..100].iter().map(Reg::deregistration).collect();
    sipp_register(cluster.node(1), &x, RATE, "n1-x");
    sipp_register(cluster.node(1), &dereg2, RATE, "n1-dereg2");
    let total = total + x.len() - dereg2.len();
    cluster.node_mut(2).start();
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "node 2 after a crash",
        expect_contacts(total),
    );
    check_registered(&all, &x, &ip1, Transport::Udp, 1).unwrap();
    assert_eq!(assert_same_contacts(&cluster.all()), total);
    cluster.wait_settled(Duration::from_secs(30));
    let st2 = cluster.node(2).status();
    assert_eq!(
        st2.last_seq,
        seq2,
        "node 2's journal after the crash:\n{}",
        st2.summary()
    );
    assert_eq!(
        st2.journaled,
        0,
        "node 2 journaled records after its restart:\n{}",
        st2.summary()
    );

    cluster.stop_all();
}

/// The harness itself on one node without sersync: Kamailio starts from
/// the template, sipp registers every kind of contact, ul.dump parses,
/// removals work locally, stop and crash restarts keep the database. Runs
/// without build/sersync.so and proves nothing about sersync.
#[test]
fn harness_single_node_without_sersync() {
    let mut cluster = Cluster::start_without_sersync("harness", 31, 1);
    let udp = mixed_users("h", 60, 0);
    let tcp = mixed_users("ht", 5, 1000);
    let mut keep = sipp_register_keep(cluster.node(1), &tcp, RATE, "tcp");
    sipp_register(cluster.node(1), &udp, RATE, "udp");
    let node = cluster.node(1);
    let c = node.contacts();
    assert_eq!(c.len(), 65);
    check_registered(&c, &udp, &node.ip, Transport::Udp, 1).unwrap();
    check_registered(&c, &tcp, &node.ip, Transport::Tcp, 1).unwrap();
    assert!(c
        .values()
        .filter(|f| f.aor.starts_with("ht"))
        .all(|f| f.tcpconn_id > 0));

    sipp_register(
        node,
        &udp[..10]
            .iter()
            .map(Reg::deregistration)
            .collect::<Vec<_>>(),
        RATE,
        "dereg",
    );
    let r = |tag: &str, replace: bool| Reg {
        tag: tag.into(),
        replace,
        ..Reg::new("hr", 3600)
    };
    sipp_register(node, &[r("a", false), r("b", false)], RATE, "two");
    assert_eq!(count_prefix(&node.contacts(), "hr"), 2);
    sipp_register(node, &[r("c", true)], RATE, "replace");
    let c = node.contacts();
    assert_eq!(c.len(), 56);
    let hr: Vec<_> = c.keys().filter(|(a, _)| a == "hr").collect();
    assert_eq!(hr.len(), 1, "{hr:?}");

    keep.kill();
    assert!(wait_until(
        Duration::from_secs(3 * TIMER_INTERVAL + 5),
        || count_prefix(&node.contacts(), "ht") == 0
    ));
    let before = node.contacts();
    assert_eq!(before.len(), 51);

    cluster.node_mut(1).stop().unwrap();
    cluster.node_mut(1).start();
    let after = cluster.node(1).contacts();
    compare_contacts(&[
        ("before stop".into(), before.clone()),
        ("after restart".into(), after),
    ])
    .unwrap();

    cluster.node_mut(1).kill().unwrap();
    cluster.node_mut(1).start();
    let after = cluster.node(1).contacts();
    compare_contacts(&[
        ("before crash".into(), before),
        ("after crash".into(), after),
    ])
    .unwrap();
    cluster.stop_all();
}

/// The harness's recogniser of Kamailio's own shutdown hang (README,
/// Limits) on a real hang: one node without sersync, SER's configuration
/// lock marked held (the word a child that died holding it leaves) after
/// the main process took its own view of the configuration; SIGTERM then
/// leaves the children that never took theirs (the UDP worker that had no
/// SIP, ctl, the TCP processes) waiting in SER's handler. The recogniser
/// must name that hang, and `stop` must end it without failing; a node
/// without the mark must not be mistaken for one.
#[test]
fn harness_recognises_kamailio_shutdown_hang() {
    let mut cluster = Cluster::start_without_sersync("harness-hang", 36, 1);
    let pid = cluster.node(1).pid().unwrap();
    // The main process takes the lock once after its first signal
    // (main.c's loop: pause(), cfg_update()); SIGUSR1 (a memory report)
    // makes it do that before the lock is marked.
    signal(pid, libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(cluster.node(1).log_path()).unwrap();
    assert_eq!(kamailio_cfg_lock_hang(pid, &log), None, "a running node");
    mark_cfg_lock_held(pid);
    signal(pid, libc::SIGTERM);
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = std::fs::read_to_string(cluster.node(1).log_path()).unwrap();
            seen = kamailio_cfg_lock_hang(pid, &log);
            seen.is_some()
        }),
        "the hang was not recognised: {}",
        cluster.node(1).log_tail(20)
    );
    eprintln!("e2e: recognised: {}", seen.unwrap());
    cluster.node_mut(1).stop().unwrap();
}

/// Writes 2 ("locked, with waiters") into SER's `cfg_global_lock` through
/// /proc/PID/mem of process `pid`: the lock's address is read from the
/// pointer variable, found by its dynamic symbol in /usr/sbin/kamailio.
fn mark_cfg_lock_held(pid: u32) {
    use std::os::unix::fs::FileExt;
    let exe = "/usr/sbin/kamailio";
    let out = std::process::Command::new("nm")
        .args(["-D", "--defined-only", exe])
        .output()
        .expect("running nm (binutils)");
    let syms = String::from_utf8_lossy(&out.stdout);
    let offset = syms
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "cfg_global_lock")
                .then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .expect("cfg_global_lock in kamailio's dynamic symbols");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[5] == exe && f[2] == "00000000")
                .then(|| u64::from_str_radix(f[0].split('-').next().unwrap(), 16).unwrap())
        })
        .expect("kamailio's first mapping");
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("opening /proc/PID/mem (needs root)");
    let mut ptr = [0u8; 8];
    mem.read_exact_at(&mut ptr, base + offset).unwrap();
    let lock = u64::from_ne_bytes(ptr);
    assert_ne!(lock, 0, "cfg_global_lock not allocated");
    mem.write_all_at(&2i32.to_ne_bytes(), lock).unwrap();
}
