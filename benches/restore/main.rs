//! Restore after restart, usrloc in memory (issue 11, "Figures"; see
//! bench/README.md).
//!
//! One Kamailio node with sersync on 127.0.0.121, usrloc `db_mode` 0 and
//! sersync without a database (as tests/e2e_restore.rs runs it): only the
//! node's own journal can bring its contacts back. RESTORE_N users register
//! with sipp; once the journal holds them, for each run and each SER
//! allocator (Kamailio's default, q_malloc, and `-x tlsf`) the node stops
//! gracefully and starts again, and we time:
//!
//! - **restore**: `start()` called -> usrloc holds all N contacts
//!   (`usrloc:location_contacts`, polled through jsonrpcs' FIFO, the door
//!   sersync does not apply through: it applies through the datagram
//!   socket);
//! - **engine**: the engine's own figure, `restore: N contacts back in SER
//!   in X s` from kamailio.log (staging of the journal's live contacts ->
//!   the applier done with the last of them);
//! - **floor**: SER's insert floor for the same contacts, in the same run
//!   and allocator: the node restarts with an EMPTY journal (the real one
//!   moved aside, so the engine stages nothing), and this bench pushes the
//!   very records the journal holds (read from a copy of it) through the
//!   same datagram door, with the applier's own code (`sersync::apply::door`,
//!   `sersync.apply` requests filled up to the same 65,000-byte limit, the
//!   applier's 2,000-record slices), back to back, nothing else running:
//!   first request sent -> last reply, all N in usrloc. What remains is
//!   jsonrpcs, the module's `sersync.apply` and usrloc's inserts: what SER
//!   itself costs. restore - floor is what sersync's engine (journal read,
//!   staging into its inbox, applier) and Kamailio's start add.
//!
//! Run: `cargo bench --bench restore` (needs build/sersync.so: `make`).
//! Environment: RESTORE_N (100000), RESTORE_RUNS (3), RESTORE_RATE (sipp
//! REGISTER/s, 2000), RESTORE_ALLOCS ("default,tlsf"), RESTORE_SHM_MB
//! (1024: SER's shared memory, `-m`; a contact takes about 1 KiB),
//! RESTORE_TIMEOUT_S (180 per restore), RESTORE_FLOOR (1; 0 skips it).

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
/// The two doors of jsonrpcs and RPC through either (catch-up bench).
#[allow(dead_code)]
#[path = "../catchup/door.rs"]
mod door;
#[path = "../../tests/e2e_support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use sersync::apply::door::Door as ApplyDoor;
use sersync::apply::Sink;
use sersync::journal::Journal;
use sersync::record::Record;

use common::*;
use door::{add_dgram_door, contacts, DgramRpc, Door};
use support::*;

/// door.rs names the cluster's secret after it (unused here).
#[allow(dead_code)]
const NAME: &str = "bench-restore";
const FIRST_IP: u8 = 121;
const POLL: Duration = Duration::from_millis(20);
/// The applier's slice of the inbox (src/apply/mod.rs `BATCH`).
const APPLIER_BATCH: usize = 2000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Alloc {
    Default,
    Tlsf,
}

impl Alloc {
    fn name(self) -> &'static str {
        match self {
            Alloc::Default => "default (q_malloc)",
            Alloc::Tlsf => "-x tlsf",
        }
    }
    fn args(self) -> Vec<String> {
        match self {
            Alloc::Default => vec![],
            Alloc::Tlsf => vec!["-x".into(), "tlsf".into()],
        }
    }
}

struct Run {
    alloc: Alloc,
    /// start() called -> start() returned (Kamailio answers RPC)
    up_s: f64,
    /// start -> usrloc holds N
    restore_s: f64,
    /// the engine's "back in SER in X s"
    engine_s: f64,
    /// first sersync.apply sent -> last reply, journal out of the way
    floor_s: f64,
    ok: bool,
    note: String,
}

fn main() {
    let n: usize = env_or("RESTORE_N", 100_000);
    let runs: usize = env_or("RESTORE_RUNS", 3);
    let rate: u32 = env_or("RESTORE_RATE", 2000);
    let shm_mb: u32 = env_or("RESTORE_SHM_MB", 1024);
    let timeout = Duration::from_secs(env_or("RESTORE_TIMEOUT_S", 180));
    let do_floor: u32 = env_or("RESTORE_FLOOR", 1);
    let allocs: Vec<Alloc> = std::env::var("RESTORE_ALLOCS")
        .unwrap_or_else(|_| "default,tlsf".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "default" | "q_malloc" | "qm" => Some(Alloc::Default),
            "tlsf" => Some(Alloc::Tlsf),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    println!(
        "restore: N={n} runs={runs} allocators={:?} sipp rate={rate}/s shm={shm_mb} MB",
        allocs.iter().map(|a| a.name()).collect::<Vec<_>>()
    );
    println!("machine: {}", machine());
    println!("module: {}", module_sum());

    let opts = ClusterOptions {
        ul_db_mode: Some(0),
        sersync_no_db: true,
        shm_mb: Some(shm_mb),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start_private(NAME, FIRST_IP, 1, &opts);
    // jsonrpcs also on a datagram socket, and sersync applying through it
    // (the faster door, bench/README.md); the bench polls through the FIFO.
    {
        let node = c.node_mut(1);
        node.stop().expect("stopping the node");
        let path = node.dir.join("kamailio.cfg");
        let mut cfg = fs::read_to_string(&path).expect("cfg");
        add_dgram_door(&mut cfg, &node.dir);
        apply_through_dgram(&mut cfg, &node.dir);
        assert!(
            cfg.contains("modparam(\"usrloc\", \"db_mode\", 0)")
                && !cfg.contains("modparam(\"sersync\", \"db_url\""),
            "usrloc is not in memory, or sersync has a database"
        );
        fs::write(&path, cfg).expect("cfg");
        node.start();
    }

    let regs: Vec<Reg> = (0..n)
        .map(|i| Reg::new(format!("rs{i:06}"), 3600))
        .collect();
    let t = Instant::now();
    sipp_register(c.node(1), &regs, rate, "restore");
    let reg_s = t.elapsed().as_secs_f64();
    let node = c.node(1);
    let journaled = wait_journaled(node, n as u64, Duration::from_secs(120));
    let st = node.status();
    assert!(
        journaled && st.queue_dropped == 0,
        "the node did not journal all {n}: {}",
        st.summary()
    );
    let mut fifo = None;
    let k = contacts(node, Door::Fifo, &mut fifo).unwrap_or(0);
    assert_eq!(
        k, n as u64,
        "usrloc holds {k} contacts after registering {n}"
    );
    println!(
        "registered {n} users in {reg_s:.1} s ({:.0}/s, sipp-bound); journal last_seq {}",
        n as f64 / reg_s,
        st.last_seq
    );

    // The records the journal would restore, for the floor: from a copy
    // of the journal taken while the node is stopped.
    let node = c.node_mut(1);
    node.stop().expect("stopping the node");
    let records = if do_floor != 0 {
        let r = journal_records(&node.journal_path(), &c.dir.join("journal-copy"));
        assert_eq!(
            r.len(),
            n,
            "the journal holds {} live contacts, not {n}",
            r.len()
        );
        r
    } else {
        Vec::new()
    };

    let mut results: Vec<Run> = Vec::new();
    for round in 1..=runs {
        // alternate which allocator goes first, so slow drift hits both
        let mut order = allocs.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for alloc in order {
            let r = run_once(&mut c, n, alloc, timeout, &records);
            println!(
                "run {round} {:18}: up {:.2} s, usrloc holds {n} {:.2} s after start, engine's figure {:.1} s, floor {:.2} s{} [{}]",
                alloc.name(),
                r.up_s,
                r.restore_s,
                r.engine_s,
                r.floor_s,
                if r.ok { "" } else { " FAILED" },
                r.note
            );
            results.push(r);
        }
    }
    let errors = c.node(1).log_grep("ERROR");
    println!(
        "kamailio.log: {} ERROR lines{}",
        errors.len(),
        errors
            .iter()
            .take(5)
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    c.stop_all();

    println!(
        "\nN = {n} contacts, usrloc db_mode 0, sersync applying through jsonrpcs' datagram socket; min / median / max"
    );
    println!("restore = node start -> usrloc holds N; engine = the log's \"back in SER in X s\"; floor = the same N records pushed through the same door with no engine (empty journal)");
    println!(
        "{:<20} {:>4}  {:>22}  {:>22}  {:>22}  {:>12}",
        "allocator", "runs", "restore s", "engine s", "floor s", "restore/s"
    );
    let fmt = |v: &[f64]| {
        let (a, b) = minmax(v);
        if v.iter().all(|x| !x.is_finite()) {
            return "-".to_string();
        }
        format!("{a:.2} / {:.2} / {b:.2}", median(v))
    };
    for &a in &allocs {
        let rs: Vec<&Run> = results.iter().filter(|r| r.alloc == a && r.ok).collect();
        let failed = results.iter().filter(|r| r.alloc == a && !r.ok).count();
        let restore: Vec<f64> = rs.iter().map(|r| r.restore_s).collect();
        let engine: Vec<f64> = rs.iter().map(|r| r.engine_s).collect();
        let floor: Vec<f64> = rs.iter().map(|r| r.floor_s).collect();
        println!(
            "{:<20} {:>4}  {:>22}  {:>22}  {:>22}  {:>12.0}{}",
            a.name(),
            rs.len(),
            fmt(&restore),
            fmt(&engine),
            fmt(&floor),
            n as f64 / median(&restore),
            if failed > 0 {
                format!("  ({failed} failed)")
            } else {
                String::new()
            }
        );
    }
    println!(
        "wall time {:.0} s; the node's log under {}",
        started.elapsed().as_secs_f64(),
        c.dir.display()
    );
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!("restore: {failed} run(s) failed (see above)");
        std::process::exit(1);
    }
}

/// Every live contact of the journal at `path`, as the engine's restore
/// stages them, read from a copy in `scratch` (the node's own file is
/// never opened by the bench).
fn journal_records(path: &Path, scratch: &Path) -> Vec<(u64, Record)> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).expect("scratch dir");
    let copy = scratch.join("sersync.db");
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            fs::copy(&from, format!("{}{suffix}", copy.display())).expect("copying the journal");
        }
    }
    let j = Journal::open(&copy).expect("opening the journal copy");
    let now = sersync::hlc::wall_ms() as i64 / 1000;
    j.live_contacts(|c| c.expires == 0 || c.expires > now)
        .expect("reading live contacts")
        .into_iter()
        .map(|(stamp, _, r)| (stamp, r))
        .collect()
}

/// The journal files of a node (`sersync.db`, its WAL and shared memory).
fn journal_files(node: &Node) -> Vec<PathBuf> {
    let p = node.journal_path();
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", p.display())))
        .collect()
}

/// Polls usrloc's contact count through the FIFO until it reaches `n`;
/// the time since `t0` then, or None (and the last count) at `timeout`.
fn wait_contacts(
    node: &Node,
    n: usize,
    t0: Instant,
    timeout: Duration,
) -> (Option<f64>, u64, String) {
    let mut fifo: Option<DgramRpc> = None;
    let mut last = 0;
    let mut err = String::new();
    while t0.elapsed() < timeout {
        match contacts(node, Door::Fifo, &mut fifo) {
            Ok(k) => {
                last = k;
                if k >= n as u64 {
                    return (Some(t0.elapsed().as_secs_f64()), k, err);
                }
            }
            Err(e) => err = e,
        }
        sleep(POLL);
    }
    (None, last, err)
}

/// The X of the last `restore: N contacts back in SER in X s` log line
/// after the first `before` of them.
fn engine_figure(node: &Node, before: usize, timeout: Duration) -> Option<f64> {
    let t = Instant::now();
    loop {
        let lines = node.log_grep("contacts back in SER in");
        if lines.len() > before {
            let l = lines.last()?;
            let s = l.rsplit(" in ").next()?;
            return s.trim().trim_end_matches('s').trim().parse().ok();
        }
        if t.elapsed() > timeout {
            return None;
        }
        sleep(Duration::from_millis(50));
    }
}

/// One restart of the node with `alloc` (restore measured), then, with
/// `records`, one restart with an empty journal (floor measured). The node
/// is stopped on entry and on return; its journal is as it was.
fn run_once(
    c: &mut Cluster,
    n: usize,
    alloc: Alloc,
    timeout: Duration,
    records: &[(u64, Record)],
) -> Run {
    let node = c.node_mut(1);
    assert!(!node.is_running());
    node.kamailio_args = alloc.args();
    let busy = busy_note(&[]);
    let before = node.log_grep("contacts back in SER in").len();

    let t0 = Instant::now();
    node.start();
    let up_s = t0.elapsed().as_secs_f64();
    let (done, last, err) = wait_contacts(node, n, t0, timeout);
    let cmdline = sh(&format!(
        "tr '\\0' ' ' < /proc/{}/cmdline",
        node.pid().unwrap_or(0)
    ));
    assert_eq!(
        cmdline.contains("-x tlsf"),
        alloc == Alloc::Tlsf,
        "kamailio runs `{cmdline}` for {}",
        alloc.name()
    );
    let engine_s = engine_figure(node, before, Duration::from_secs(10)).unwrap_or(f64::NAN);
    // sersync.status is republished every 200 ms
    let mut st = node.sersync_status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5)
        && st
            .as_ref()
            .is_ok_and(|s| s.restore_pending > 0 || s.restored < n as u64)
    {
        sleep(Duration::from_millis(100));
        st = node.sersync_status();
    }
    let mut ok = done.is_some() && engine_s.is_finite();
    let mut note = match &st {
        Ok(s) => {
            if s.restored != n as u64 || s.restore_pending != 0 || s.apply_failures != 0 {
                ok = false;
            }
            format!(
                "restored {}, restore_pending {}, apply_failures {}, via_db {}",
                s.restored, s.restore_pending, s.apply_failures, s.applied_via_db
            )
        }
        Err(e) => {
            ok = false;
            format!("sersync.status: {e}")
        }
    };
    if done.is_none() {
        note.push_str(&format!(
            "; TIMEOUT at {last} contacts after {timeout:?} {err}"
        ));
    }
    if let Err(e) = node.stop() {
        eprintln!("restore: {e}");
        ok = false;
    }

    let floor_s = if records.is_empty() {
        f64::NAN
    } else {
        match floor(node, n, records, timeout) {
            Ok(s) => s,
            Err(e) => {
                note.push_str(&format!("; floor: {e}"));
                ok = false;
                f64::NAN
            }
        }
    };
    if !busy.is_empty() {
        note.push_str(&format!("; {busy}"));
    }
    Run {
        alloc,
        up_s,
        restore_s: done.unwrap_or(f64::NAN),
        engine_s,
        floor_s,
        ok,
        note,
    }
}

/// SER's insert floor: the node starts with an empty journal (nothing to
/// restore) and the bench pushes `records` through the node's datagram
/// door with the applier's own door code, in the applier's slices; the
/// time from the first request to the last reply, checked against usrloc's
/// count. The real journal is put back afterwards.
fn floor(
    node: &mut Node,
    n: usize,
    records: &[(u64, Record)],
    timeout: Duration,
) -> Result<f64, String> {
    let aside = node.dir.join("journal-aside");
    let _ = fs::remove_dir_all(&aside);
    fs::create_dir_all(&aside).map_err(|e| e.to_string())?;
    let files = journal_files(node);
    for f in &files {
        if f.exists() {
            fs::rename(f, aside.join(f.file_name().expect("name"))).map_err(|e| e.to_string())?;
        }
    }
    let result = (|| {
        node.start();
        // the engine finds nothing to restore; SER is empty
        let mut fifo: Option<DgramRpc> = None;
        let k0 = contacts(node, Door::Fifo, &mut fifo)?;
        if k0 != 0 {
            return Err(format!("{k0} contacts in usrloc before the floor run"));
        }
        let mut door = ApplyDoor::new(
            &node.dir.join("rpc.sock"),
            &node.dir,
            &node.dir,
            &node.apply_token(),
        );
        let t0 = Instant::now();
        for chunk in records.chunks(APPLIER_BATCH) {
            // as the applier: a "not yet" (503) or a busy door is retried
            let mut tries = 0;
            while let Err(e) = door.apply(chunk) {
                tries += 1;
                if tries > 50 {
                    return Err(format!("sersync.apply: {e}"));
                }
                sleep(Duration::from_millis(100));
            }
        }
        let pushed = t0.elapsed().as_secs_f64();
        let (done, last, err) = wait_contacts(node, n, t0, timeout);
        match done {
            Some(s) => Ok(s.max(pushed)),
            None => Err(format!("usrloc holds {last} of {n} after the push {err}")),
        }
    })();
    let stopped = node.stop();
    // the empty journal the floor run made goes, the real one comes back
    for f in &files {
        let _ = fs::remove_file(f);
        let from = aside.join(f.file_name().expect("name"));
        if from.exists() {
            fs::rename(&from, f).map_err(|e| e.to_string())?;
        }
    }
    let _ = fs::remove_dir(&aside);
    stopped?;
    result
}
