//! End-to-end durability: "nothing is lost" with real Kamailio 5.6 nodes on
//! 127.0.0.71–73. Crashes under load (SIGKILL of a node's whole process
//! group, sersync process included), SER's RPC door and database missing,
//! a node that held contacts before sersync was enabled, and a peer that
//! was down while thousands of changes happened elsewhere.
//!
//! Needs `build/sersync.so` (`make`). The harness runs one cluster at a
//! time (/tmp/sersync-e2e.lock). `SERSYNC_KILL_CYCLES` sets the number of
//! crash cycles of `crash_cycles_under_load_lose_nothing` (default 10;
//! bench/kill_soak.sh runs 100).

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::sleep;
use std::time::{Duration, Instant};

use support::*;

const CONVERGE: Duration = Duration::from_secs(90);

/// A small deterministic PRNG (xorshift64*), seeded from the clock; the
/// seed is printed so that a failing run can be replayed
/// (`SERSYNC_KILL_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("SERSYNC_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("e2e: random seed {seed} (SERSYNC_KILL_SEED={seed} replays it)");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi) milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Users (AOR user parts) present in `c`, with how many contacts each.
fn per_user(c: &Contacts) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (aor, _) in c.keys() {
        let user = aor.split('@').next().unwrap_or(aor).to_string();
        *m.entry(user).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// Sustained load: a sipp in the background that logs every 200 OK

/// register.xml with a log action on the 200 OK: the user goes into
/// ok.log, so that the test knows which registrations SER confirmed.
fn logging_scenario(dir: &Path) -> PathBuf {
    let src = fs::read_to_string(e2e_dir().join("register.xml")).expect("register.xml");
    let plain = r#"<recv response="200" rtd="true"/>"#;
    assert!(
        src.contains(plain),
        "register.xml changed: no plain 200 recv"
    );
    let out = src.replace(
        plain,
        r#"<recv response="200" rtd="true"><action><log message="OK [field0]"/></action></recv>"#,
    );
    let p = dir.join("register_logged.xml");
    fs::write(&p, out).expect("writing scenario");
    p
}

/// A sipp sending REGISTERs at `rate`/s from the node's address over UDP,
/// cycling through `regs` (its injection file) for at most `calls` calls.
struct Load {
    child: Option<Child>,
    dir: PathBuf,
    label: String,
}

fn start_load(node: &Node, regs: &[Reg], rate: u32, calls: usize, label: &str) -> Load {
    let dir = node.dir.parent().unwrap().join("load").join(label);
    fs::create_dir_all(&dir).unwrap();
    write_injection_csv(&dir.join("users.csv"), regs, &node.ip);
    let scenario = logging_scenario(&dir);
    let out = File::create(dir.join("sipp.out")).unwrap();
    let mut cmd = sipp_command(node, &scenario, &dir, calls, rate, "u1");
    cmd.args(["-max_retrans", "8"])
        .args(["-trace_logs", "-log_file"])
        .arg(dir.join("ok.log"))
        .args(["-trace_stat", "-stf"])
        .arg(dir.join("stat.csv"))
        .args(["-fd", "1"])
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = cmd.spawn().expect("starting sipp");
    Load {
        child: Some(child),
        dir,
        label: label.into(),
    }
}

impl Load {
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGUSR1: sipp stops starting calls, finishes those under way and
    /// exits. Returns (successful, failed) calls from its statistics.
    fn finish(&mut self, timeout: Duration) -> (u64, u64) {
        let Some(mut child) = self.child.take() else {
            return self.counts();
        };
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGUSR1);
        }
        let end = Instant::now() + timeout;
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sipp {} did not finish within {timeout:?}: {}",
                    self.label,
                    self.dir.display()
                );
            }
            sleep(Duration::from_millis(100));
        }
        self.counts()
    }

    fn counts(&self) -> (u64, u64) {
        let text = fs::read_to_string(self.dir.join("stat.csv")).unwrap_or_default();
        let Some(header) = text.lines().next() else {
            return (0, 0);
        };
        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let cols: Vec<&str> = header.split(';').collect();
        let vals: Vec<&str> = last.split(';').collect();
        let get = |name: &str| {
            cols.iter()
                .position(|c| *c == name)
                .and_then(|i| vals.get(i))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (get("SuccessfulCall(C)"), get("FailedCall(C)"))
    }

    /// Users that got a 200 OK.
    fn confirmed(&self) -> BTreeSet<String> {
        fs::read_to_string(self.dir.join("ok.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("OK ").map(|u| u.trim().to_string()))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Configuration changes between restarts

/// Replaces `from` by `to` in the node's kamailio.cfg (panics if absent).
fn edit_cfg(node: &Node, from: &str, to: &str) {
    let p = node.dir.join("kamailio.cfg");
    let t = fs::read_to_string(&p).unwrap();
    assert!(t.contains(from), "{}: no {from:?}", p.display());
    fs::write(&p, t.replace(from, to)).unwrap();
}

fn sersync_line(param: &str, value: &str) -> String {
    format!("modparam(\"sersync\", \"{param}\", \"{value}\")")
}

// ---------------------------------------------------------------------------
// 1. Crash cycles under load

/// Three nodes; sipp registers distinct users on nodes 1 and 2 at 100/s
/// each; node 2 (Kamailio and its sersync process) is SIGKILLed at a
/// random moment and restarted on the same directory, again and again.
/// At the end every user any sipp got a 200 OK for is on every node, once,
/// and every node holds the same contacts field by field.
///
/// Each restart also races the applier against usrloc's preload (the
/// sersync process and SER's RPC processes run before the first SIP
/// worker has loaded the location table): sersync.apply must wait for it,
/// or the restarted node holds a contact twice.
#[test]
fn crash_cycles_under_load_lose_nothing() {
    crash_cycles("dur-kill", true, 100);
}

/// The same with the load on node 2 only: no node applies a peer's
/// changes while its own SIP workers write the location table, so SER's
/// SQLite database never sees two writers at once (isolates the crash
/// recovery from the "database is locked" problem).
#[test]
fn crash_cycles_single_writer_lose_nothing() {
    crash_cycles("dur-kill1", false, 400);
}

/// `rate`: REGISTERs/s per loaded node unless SERSYNC_KILL_RATE says
/// otherwise; at 400/s on node 2 alone about half the kills land between
/// a 200 OK and the journal commit (the start-up comparison with SER's
/// location table then journals what was missed).
fn crash_cycles(name: &str, load_on_node1: bool, rate: u32) {
    let cycles = env_usize("SERSYNC_KILL_CYCLES", 10);
    let rate = env_usize("SERSYNC_KILL_RATE", rate as usize) as u32;
    let mut rng = Rng::new();
    let mut cluster = Cluster::start_private(name, 71, 3, &ClusterOptions::default());
    // At most 4,000 distinct users per node: sipp cycles through its file
    // (later calls refresh earlier users), so a long soak stays within
    // the nodes' shared memory.
    let distinct = 4000;
    let a = if load_on_node1 {
        mixed_users("a", distinct, 0)
    } else {
        Vec::new()
    };
    let b = mixed_users("b", distinct, 100_000);
    let calls = rate as usize * (cycles * 8 + 20);
    let mut load1 = load_on_node1.then(|| start_load(cluster.node(1), &a, rate, calls, "n1-a"));
    let mut load2 = start_load(cluster.node(2), &b, rate, calls, "n2-b");
    sleep(Duration::from_secs(2));

    let t0 = Instant::now();
    let mut down_total = Duration::ZERO;
    for cycle in 1..=cycles {
        let wait = rng.millis(300, 3000);
        sleep(wait);
        assert!(
            load1.as_mut().is_none_or(Load::running) && load2.running(),
            "a sipp load stopped early"
        );
        let before = cluster
            .node(2)
            .sersync_status()
            .map(|s| s.last_seq)
            .unwrap_or(0);
        let t = Instant::now();
        cluster.node_mut(2).kill().unwrap();
        cluster.node_mut(2).start();
        down_total += t.elapsed();
        eprintln!(
            "e2e: cycle {cycle}/{cycles}: node 2 killed after {} ms (its last_seq {before}), \
             back in {} ms",
            wait.as_millis(),
            t.elapsed().as_millis()
        );
    }
    // A little load with node 2 up, then stop both loads.
    sleep(Duration::from_secs(2));
    let (ok1, failed1) = load1
        .as_mut()
        .map_or((0, 0), |l| l.finish(Duration::from_secs(60)));
    let (ok2, failed2) = load2.finish(Duration::from_secs(60));
    let elapsed = t0.elapsed();
    let confirmed1 = load1.as_ref().map(Load::confirmed).unwrap_or_default();
    let confirmed2 = load2.confirmed();
    eprintln!(
        "e2e: {cycles} crash cycles in {:.1} s (node 2 down {:.1} s in all); \
         node 1 sipp: {ok1} ok / {failed1} failed ({} users confirmed); \
         node 2 sipp: {ok2} ok / {failed2} failed ({} users confirmed)",
        elapsed.as_secs_f64(),
        down_total.as_secs_f64(),
        confirmed1.len(),
        confirmed2.len()
    );
    // Node 1 is never killed. Its only failures allowed are the 500s that
    // SER's db_sqlite gives when sersync.apply (the peer's changes) and a
    // SIP worker write the location table at once ("database is locked":
    // Kamailio 5.6's db_sqlite sets no busy timeout; see the report).
    // They are counted and printed; none may be a timeout.
    let errors1 = load1
        .as_ref()
        .and_then(|l| fs::read_to_string(l.dir.join("errors.log")).ok())
        .unwrap_or_default();
    let dead500 = errors1
        .lines()
        .filter(|l| l.contains("Dead call") && l.contains("SIP/2.0 500"))
        .count() as u64;
    let locked1 = cluster.node(1).log_grep("database is locked").len();
    eprintln!(
        "e2e: node 1: {failed1} REGISTERs failed, {dead500} of them with 500; \
         \"database is locked\" logged {locked1} times"
    );
    assert_eq!(
        failed1,
        dead500,
        "node 1 (never killed) failed REGISTERs other than with a 500:\n{}",
        errors1
            .lines()
            .filter(|l| l.contains("Dead call"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        (ok1 > 0 || !load_on_node1) && ok2 > 0,
        "no load went through"
    );

    // Sent = every user that appears in a REGISTER sipp sent; a user may
    // be stored without sipp seeing the 200 (killed in between): allowed,
    // but then on every node.
    let attempted: BTreeSet<String> = a.iter().chain(b.iter()).map(|r| r.user.clone()).collect();
    let confirmed: BTreeSet<String> = confirmed1.union(&confirmed2).cloned().collect();
    let check = |c: &Contacts| -> Result<(), String> {
        let have = per_user(c);
        let lost: Vec<&String> = confirmed
            .iter()
            .filter(|u| !have.contains_key(*u))
            .collect();
        let dup: Vec<(&String, &usize)> = have.iter().filter(|(_, n)| **n > 1).collect();
        let stray: Vec<&String> = have.keys().filter(|u| !attempted.contains(*u)).collect();
        if lost.is_empty() && dup.is_empty() && stray.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} lost (e.g. {:?}), {} duplicated (e.g. {:?}), {} never registered (e.g. {:?})",
                lost.len(),
                &lost[..lost.len().min(5)],
                dup.len(),
                &dup[..dup.len().min(5)],
                stray.len(),
                &stray[..stray.len().min(5)]
            ))
        }
    };
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "nodes after the crash cycles",
        check,
    );
    cluster.wait_settled(Duration::from_secs(60));
    let n = assert_same_contacts(&cluster.all());
    let unconfirmed = n - confirmed.len();
    eprintln!(
        "e2e: converged: {n} contacts on each node ({} confirmed by a 200 OK, {unconfirmed} \
         stored without sipp seeing the 200)",
        confirmed.len()
    );
    assert!(all.len() >= confirmed.len());
    for i in 1..=3 {
        let st = cluster.node(i).status();
        assert_eq!(
            st.queue_dropped,
            0,
            "node {i} dropped records:\n{}",
            st.summary()
        );
        assert_eq!(st.apply_pending, 0, "node {i}:\n{}", st.summary());
    }
    // Contacts SER stored but the journal had not committed when node 2
    // died, found again at its next start (the comparison with SER's
    // location table).
    let seeded: Vec<String> = cluster
        .node(2)
        .log_grep("contacts SER's database holds and the journal did not");
    eprintln!(
        "e2e: node 2 recovered contacts from SER's database at {} of its {cycles} restarts{}",
        seeded.len(),
        seeded
            .first()
            .map(|l| format!(", e.g.: {}", l.trim()))
            .unwrap_or_default()
    );
    cluster.stop_all();
}

// ---------------------------------------------------------------------------
// 2. SER's door and database failing

/// Node 3's RPC door names a path where nothing listens: what it receives
/// goes into SER's database (applied_via_db, rows in its location table),
/// and is in its usrloc once it restarts with a working door. Then door
/// absent and database unwritable: everything stays staged
/// (apply_pending > 0, apply_failures growing) and arrives after a
/// restart with a working configuration.
#[test]
fn door_absent_changes_go_to_ser_database() {
    let mut opts = ClusterOptions::default();
    let dir3 = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e/dur-fail/n3");
    let nodoor = dir3.join("nodoor.fifo");
    let door_off = sersync_line("fifo", nodoor.to_str().unwrap());
    opts.extra.insert(3, vec![door_off.clone()]);
    let mut cluster = Cluster::start_private("dur-fail", 71, 3, &opts);
    assert!(!nodoor.exists());

    // Phase A: door absent, database fine.
    let f = mixed_users("f", 1000, 0);
    sipp_register(cluster.node(1), &f, 500, "n1-f");
    let n3 = cluster.node(3);
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(60), || {
        let st = n3.status();
        last = st.summary();
        st.applied_via_db >= f.len() as u64 && st.apply_pending == 0
    });
    assert!(
        ok,
        "node 3 did not write into its database:\n{last}\n{}",
        n3.log_tail(10)
    );
    let rows = n3
        .sql("SELECT count(*) FROM location WHERE username LIKE 'f%'")
        .unwrap();
    assert_eq!(
        rows,
        vec![f.len().to_string()],
        "rows in node 3's location table"
    );
    // Kamailio's db_sqlite keeps DATETIME columns as Julian day numbers
    // (REAL, dbase.c timet_to_sqlite) and reads them back with
    // sqlite3_column_double: a row must use the same representation, or
    // usrloc loads it as expired. (A time at exactly noon UTC is a whole
    // Julian day, which the column's NUMERIC affinity stores as an
    // INTEGER, for db_sqlite's rows as for ours.)
    let not_julian = n3
        .sql(
            "SELECT count(*) FROM location WHERE NOT (
                 typeof(expires) IN ('real', 'integer') AND expires BETWEEN 2400000 AND 2600000
                 AND typeof(last_modified) IN ('real', 'integer')
                 AND last_modified BETWEEN 2400000 AND 2600000)",
        )
        .unwrap();
    assert_eq!(
        not_julian,
        vec!["0".to_string()],
        "node 3's location rows written by the database fallback: DATETIME columns are \
         not Julian day numbers as Kamailio's db_sqlite writes them, e.g. {:?}",
        n3.sql(
            "SELECT typeof(expires), expires, typeof(last_modified), last_modified \
             FROM location LIMIT 1"
        )
        .unwrap()
    );
    let fallback_log = n3.log_grep("SER's database instead");
    assert!(
        !fallback_log.is_empty(),
        "no log line about the database fallback"
    );
    eprintln!("e2e: node 3: {}\n  log: {}", last, fallback_log[0]);
    // Not in usrloc yet: usrloc reads its database at start only.
    let in_ul = count_prefix(&n3.contacts(), "f");
    eprintln!("e2e: node 3's usrloc holds {in_ul} of them before its restart");

    cluster.node_mut(3).stop().unwrap();
    edit_cfg(cluster.node(3), &door_off, "# door restored");
    cluster.node_mut(3).start();
    cluster.wait_mesh_up(Duration::from_secs(30));
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "node 3 after a restart with its door",
        expect_contacts(f.len()),
    );
    cluster.wait_settled(Duration::from_secs(30));
    let st3 = cluster.node(3).status();
    assert_eq!(
        (st3.journaled, st3.last_seq),
        (0, 0),
        "node 3 re-journaled what it received:\n{}",
        st3.summary()
    );

    cluster.stop_all();
}

/// Node 3's RPC door absent and its database unwritable (db_url names a
/// file in a directory that does not exist): what it receives stays staged
/// (apply_pending > 0, apply_failures growing, an error in the log), and
/// arrives once node 3 restarts with a working configuration.
#[test]
fn door_and_database_unusable_keep_everything_staged() {
    let dir3 = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e/dur-stuck/n3");
    let nodoor = dir3.join("nodoor.fifo");
    let door_off = sersync_line("fifo", nodoor.to_str().unwrap());
    let db_bad = dir3.join("no-such-dir/kamailio.db");
    let db_bad_url = format!("sqlite:///{}", db_bad.display());
    let db_off = sersync_line("db_url", &db_bad_url);
    let mut opts = ClusterOptions::default();
    opts.extra.insert(3, vec![door_off.clone(), db_off.clone()]);
    let mut cluster = Cluster::start_private("dur-stuck", 71, 3, &opts);
    let mut last = String::new();
    let f = mixed_users("f", 1000, 0);
    sipp_register(cluster.node(1), &f, 500, "n1-f");
    let g = mixed_users("g", 800, 10_000);
    let h = mixed_users("h", 200, 20_000);
    // De-registrations on node 2 of contacts registered on node 1.
    let ip1 = cluster.node(1).ip.clone();
    let dereg: Vec<Reg> = f[..100]
        .iter()
        .map(|r| Reg {
            host: Some(ip1.clone()),
            ..r.deregistration()
        })
        .collect();
    sipp_register(cluster.node(1), &g, 500, "n1-g");
    // Node 2 registers only once it has applied node 1's changes: with
    // usrloc db_mode 1 on SQLite, SER's db_sqlite (no busy timeout) fails
    // a REGISTER with 500 "database is locked" when sersync.apply writes
    // the location table at the same moment (see the report).
    wait_converged(
        &[cluster.node(1), cluster.node(2)],
        CONVERGE,
        "nodes 1 and 2 after node 1's registrations",
        expect_contacts(f.len() + g.len()),
    );
    sipp_register(cluster.node(2), &h, 500, "n2-h");
    sipp_register(cluster.node(2), &dereg, 500, "n2-dereg");
    let expected = f.len() - dereg.len() + g.len() + h.len();
    wait_converged(
        &[cluster.node(1), cluster.node(2)],
        CONVERGE,
        "nodes 1 and 2 while node 3 cannot apply",
        expect_contacts(expected),
    );
    let n3 = cluster.node(3);
    let mut first = None;
    let ok = wait_until(Duration::from_secs(30), || {
        let st = n3.status();
        last = st.summary();
        if st.apply_pending == 0 || st.apply_failures == 0 {
            return false;
        }
        match first {
            None => {
                first = Some(st.apply_failures);
                false
            }
            Some(f0) => st.apply_failures > f0 + 1,
        }
    });
    assert!(
        ok,
        "node 3: expected apply_pending > 0 and apply_failures growing:\n{last}"
    );
    eprintln!("e2e: node 3 with neither door nor database: {last}");
    let err_log = n3.log_grep("cannot apply");
    assert!(!err_log.is_empty(), "no log line about the failed apply");
    eprintln!("e2e: node 3 log: {}", err_log[0]);
    assert_eq!(count_prefix(&n3.contacts(), "g"), 0);

    cluster.node_mut(3).stop().unwrap();
    edit_cfg(cluster.node(3), &door_off, "# door restored");
    edit_cfg(cluster.node(3), &db_off, "# database restored");
    cluster.node_mut(3).start();
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "node 3 after a restart with a working configuration",
        expect_contacts(expected),
    );
    cluster.wait_settled(Duration::from_secs(30));
    assert_eq!(assert_same_contacts(&cluster.all()), expected);
    let st3 = cluster.node(3).status();
    eprintln!("e2e: node 3 at the end: {}", st3.summary());
    assert_eq!(
        (st3.journaled, st3.last_seq),
        (0, 0),
        "node 3 re-journaled what it received:\n{}",
        st3.summary()
    );
    cluster.stop_all();
}

// ---------------------------------------------------------------------------
// 3. Contacts held before sersync was enabled

/// Three nodes run without sersync and take registrations (usrloc writes
/// them to each node's SQLite database); then sersync is enabled on all of
/// them: each node's existing contacts reach the others.
#[test]
fn contacts_held_before_sersync_reach_the_peers() {
    let mut cluster = Cluster::start_without_sersync("dur-existing", 71, 3);
    let sets = [
        mixed_users("e", 700, 0),
        mixed_users("k", 300, 10_000),
        mixed_users("m", 50, 20_000),
    ];
    for (i, regs) in sets.iter().enumerate() {
        sipp_register(cluster.node(i + 1), regs, 500, &format!("n{}-pre", i + 1));
    }
    let before: Vec<Contacts> = (1..=3).map(|i| cluster.node(i).contacts()).collect();
    for (i, regs) in sets.iter().enumerate() {
        assert_eq!(before[i].len(), regs.len());
    }
    cluster.stop_all();

    // Enable sersync on every node (same directories, same databases).
    let module = private_module_copy().expect("sersync module");
    let ips: Vec<String> = cluster.nodes.iter().map(|n| n.ip.clone()).collect();
    for node in &cluster.nodes {
        let peers: Vec<String> = ips
            .iter()
            .filter(|ip| **ip != node.ip)
            .map(|ip| format!("tcp:{ip}:{SERSYNC_PORT}"))
            .collect();
        let cfg = node_config_with(
            node.index,
            &node.ip,
            &node.dir,
            &peers,
            Some(&module),
            "e2e-secret-dur-existing",
            &ClusterOptions::default(),
        );
        fs::write(node.dir.join("kamailio.cfg"), cfg).unwrap();
        assert!(!node.dir.join("sersync.db").exists());
    }
    for i in 1..=3 {
        cluster.node_mut(i).start();
    }
    cluster.wait_mesh_up(Duration::from_secs(30));
    let total: usize = sets.iter().map(Vec::len).sum();
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "contacts held before sersync",
        expect_contacts(total),
    );
    // Each origin's contacts are on every node as the origin holds them.
    for (i, b) in before.iter().enumerate() {
        let sub: Contacts = all
            .iter()
            .filter(|(k, _)| b.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        compare_contacts(&[
            (format!("node {} before", i + 1), b.clone()),
            ("cluster".into(), sub),
        ])
        .unwrap_or_else(|d| panic!("node {}'s contacts changed on their way:\n{d}", i + 1));
    }
    cluster.wait_settled(Duration::from_secs(30));
    for (i, regs) in sets.iter().enumerate() {
        let st = cluster.node(i + 1).status();
        // `journaled` counts what the SIP workers handed over; the
        // contacts found at start enter the journal (last_seq) directly.
        assert_eq!(
            st.last_seq,
            regs.len() as u64,
            "node {} journaled its existing contacts once:\n{}",
            i + 1,
            st.summary()
        );
    }
    // And a restart journals nothing again.
    cluster.node_mut(1).stop().unwrap();
    cluster.node_mut(1).start();
    cluster.wait_settled(Duration::from_secs(30));
    let st = cluster.node(1).status();
    assert_eq!(
        st.last_seq,
        sets[0].len() as u64,
        "node 1 re-journaled after a restart:\n{}",
        st.summary()
    );
    assert_eq!(assert_same_contacts(&cluster.all()), total);
    cluster.stop_all();
}

// ---------------------------------------------------------------------------
// 4. A peer down while N changes happen elsewhere

/// Node 3 is stopped; N changes (CI: 5,000) are made on node 1 (4,500
/// registrations, 500 de-registrations of contacts node 3 already had) and
/// 500 on node 2. When node 3 returns it receives what it missed: node 1
/// sends it about N records, not its whole table.
#[test]
fn returning_peer_gets_exactly_what_it_missed() {
    let n = env_usize("SERSYNC_OUTAGE_N", 5000);
    let mut cluster = Cluster::start_private("dur-outage", 71, 3, &ClusterOptions::default());
    let base = mixed_users("p", 3000.max(n / 10), 0);
    sipp_register(cluster.node(1), &base, 1000, "n1-base");
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "base registrations",
        expect_contacts(base.len()),
    );
    cluster.wait_settled(Duration::from_secs(30));

    cluster.node_mut(3).stop().unwrap();
    let n1 = cluster.node(1);
    let before = n1.status();
    let sent_before = before
        .peer(&cluster.node(3).ip, "n3")
        .expect("peer n3")
        .sent;
    let accepted_before = n1.accepted_regs();
    let dereg_n = n / 10;
    let new_n = n - dereg_n;
    let q = mixed_users("q", new_n, 10_000);
    let dereg: Vec<Reg> = base[..dereg_n].iter().map(Reg::deregistration).collect();
    let w = mixed_users("w", 500, 50_000);
    sipp_register(n1, &q, 1000, "n1-q");
    sipp_register(n1, &dereg, 1000, "n1-dereg");
    // Not while node 2 applies node 1's changes (db_sqlite "database is
    // locked", see door_and_database_unusable_keep_everything_staged).
    wait_converged(
        &[cluster.node(1), cluster.node(2)],
        CONVERGE,
        "nodes 1 and 2 after node 1's changes",
        expect_contacts(base.len() - dereg_n + new_n),
    );
    // What node 3 missed from node 1: at least one change per REGISTER,
    // more where sipp retransmitted one whose reply was late and SER
    // saved it again (at most one per REGISTER node 1 accepted).
    let missed = n1.status().journaled - before.journaled;
    let accepted = n1.accepted_regs() - accepted_before;
    assert!(
        missed >= n as u64 && missed <= accepted,
        "node 1 journaled {missed} changes for {n} REGISTERs ({accepted} accepted)"
    );
    sipp_register(cluster.node(2), &w, 1000, "n2-w");
    let total = base.len() - dereg_n + new_n + w.len();
    wait_converged(
        &[cluster.node(1), cluster.node(2)],
        CONVERGE,
        "nodes 1 and 2 while node 3 is down",
        expect_contacts(total),
    );

    let t = Instant::now();
    cluster.node_mut(3).start();
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "node 3 after its outage",
        expect_contacts(total),
    );
    let caught_up = t.elapsed();
    cluster.wait_settled(Duration::from_secs(60));
    assert_eq!(assert_same_contacts(&cluster.all()), total);
    let st1 = cluster.node(1).status();
    let p3 = st1
        .peer(&cluster.node(3).ip, "n3")
        .expect("peer n3")
        .clone();
    let delta = p3.sent - sent_before;
    eprintln!(
        "e2e: node 3 caught up with {missed} changes from node 1 (+{} from node 2) in {:.2} s \
         (from its start); node 1 sent it {delta} records; snapshot fields: {}",
        w.len(),
        caught_up.as_secs_f64(),
        p3_snapshot(&st1, &cluster.node(3).ip)
    );
    assert!(
        delta >= missed && delta <= missed + 50,
        "node 1 sent node 3 {delta} records for the {missed} changes it missed (node 1's \
         table: {} contacts; up to 50 resent over a broken connection)\n{}",
        base.len() - dereg_n + new_n,
        st1.summary()
    );
    let st3 = cluster.node(3).status();
    assert_eq!((st3.journaled, st3.last_seq), (0, 0), "{}", st3.summary());
    cluster.stop_all();
}

fn p3_snapshot(st: &SersyncStatus, ip: &str) -> String {
    let peers = st.raw.get("peers").cloned().unwrap_or_default();
    let list: Vec<serde_json::Value> = match peers {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o.into_iter().map(|(_, v)| v).collect(),
        _ => vec![],
    };
    list.into_iter()
        .find(|p| p.to_string().contains(ip))
        .map(|p| {
            format!(
                "snapshot_sent={} snapshot_total={}",
                p.get("snapshot_sent").cloned().unwrap_or_default(),
                p.get("snapshot_total").cloned().unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 6. Full disk for the journal

/// A small tmpfs mounted for node 1's journal; unmounted (lazily) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None when this machine does not let the test mount (no root or no
    /// CAP_SYS_ADMIN): the caller then fails with that reason.
    fn mount(size: &str) -> Option<Tmpfs> {
        let p = PathBuf::from(format!("/tmp/sersync-e2e-tmpfs-{}", std::process::id()));
        fs::create_dir_all(&p).ok()?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&p)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "e2e: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let _ = fs::remove_dir(&p);
            return None;
        }
        Some(Tmpfs(p))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `dir` with `filler` until writes fail.
fn fill(filler: &Path) -> u64 {
    use std::io::Write;
    let mut f = File::create(filler).unwrap();
    let block = vec![0u8; 4096];
    let mut n = 0u64;
    while f.write_all(&block).is_ok() {
        n += block.len() as u64;
    }
    let _ = f.sync_all();
    n
}

/// Node 1's journal on a full file system: SER keeps answering REGISTERs
/// (zero sipp failures), the log says what is wrong, and once space
/// returns the changes reach the peers by themselves.
#[test]
fn full_journal_disk_keeps_ser_serving_and_recovers() {
    // A test that cannot run fails: it is never reported as passed.
    let Some(mnt) = Tmpfs::mount("64m") else {
        panic!("cannot mount a tmpfs for the full-disk test (needs root or CAP_SYS_ADMIN)");
    };
    let journal = mnt.0.join("sersync.db");
    let mut opts = ClusterOptions::default();
    opts.extra
        .insert(1, vec![sersync_line("journal", journal.to_str().unwrap())]);
    let mut cluster = Cluster::start_private("dur-disk", 71, 3, &opts);
    let pre = mixed_users("d", 200, 0);
    sipp_register(cluster.node(1), &pre, 500, "n1-pre");
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "before the disk fills",
        expect_contacts(pre.len()),
    );
    assert!(journal.exists(), "node 1's journal is not on the tmpfs");

    let filler = mnt.0.join("filler");
    let filled = fill(&filler);
    eprintln!("e2e: tmpfs filled with {filled} bytes");
    let full = mixed_users("z", 1500, 10_000);
    sipp_register(cluster.node(1), &full, 300, "n1-full");
    sleep(Duration::from_secs(2));
    let st = cluster.node(1).status();
    let errs: Vec<String> = cluster
        .node(1)
        .log_grep("ERROR")
        .into_iter()
        .filter(|l| l.contains("sersync"))
        .collect();
    eprintln!(
        "e2e: node 1 with a full journal disk: {}\n  first sersync ERROR lines:\n  {}",
        st.summary(),
        errs.iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    assert!(
        errs.iter()
            .any(|l| l.contains("full") || l.contains("space")),
        "no log line says the journal's disk is full"
    );
    assert_eq!(count_prefix(&cluster.node(1).contacts(), "z"), full.len());

    fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "after space returned",
        expect_contacts(pre.len() + full.len()),
    );
    eprintln!(
        "e2e: replication resumed {:.1} s after space returned",
        t.elapsed().as_secs_f64()
    );
    cluster.wait_settled(Duration::from_secs(60));
    let st = cluster.node(1).status();
    assert_eq!(st.queue_dropped, 0, "{}", st.summary());
    cluster.stop_all();
    drop(mnt);
}
