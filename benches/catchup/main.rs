//! Catch-up throughput through each of SER's RPC doors (see bench/README.md).
//!
//! Two Kamailio nodes with sersync on 127.0.0.41 and .42. Node 2 stopped,
//! N distinct users register on node 1 (sipp, UDP); then, for each run, node
//! 2 starts from a fresh directory (empty journal and database, so node 1
//! sends its whole journal) and we time how long until node 2's usrloc
//! holds all N contacts. Configurations: the door sersync applies through
//! (jsonrpcs FIFO, jsonrpcs datagram socket) x node 2's usrloc db_mode (0:
//! memory only, 1: SQLite write-through).
//!
//! Run: `cargo bench --bench catchup` (needs build/sersync.so: `make`).
//! Environment: CATCHUP_N (20000), CATCHUP_RUNS (5), CATCHUP_MODES ("0,1"),
//! CATCHUP_RATE (sipp REGISTER/s, 2000), CATCHUP_BUDGET_S (480: no new run
//! starts after that much wall time), CATCHUP_TIMEOUT_S (120 per run),
//! CATCHUP_DIAG (empty; a comma list of `timeline`, `strace`, `perf`,
//! `perf-rpc` (DWARF call graphs of the door's jsonrpcs process): after
//! the measured runs, one extra, unmeasured run per door of the first
//! db_mode, with a timeline of node 2's usrloc count against sersync.status'
//! received/applied counters, `strace -c -f` of the sersync process and of
//! that door's jsonrpcs process, and/or a system-wide `perf record -g`;
//! `timeline-all` prints the timeline of every measured run as well).
//!
//! Progress is read from node 2's usrloc statistics
//! (`usrloc:location_contacts`, live) through the door sersync does NOT use
//! in that run (jsonrpcs serves its FIFO and its datagram socket in two
//! separate processes), so the polling does not queue behind the applier.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../tests/e2e_support/mod.rs"]
mod support;

mod diag;
mod door;
mod run;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use diag::Diag;
use door::*;
use run::*;
use support::*;

const NAME: &str = "bench-catchup";
const FIRST_IP: u8 = 41;
const POLL: Duration = Duration::from_millis(20);

fn main() {
    let n: usize = env_or("CATCHUP_N", 20_000);
    let runs: usize = env_or("CATCHUP_RUNS", 5);
    let rate: u32 = env_or("CATCHUP_RATE", 2000);
    let budget = Duration::from_secs(env_or("CATCHUP_BUDGET_S", 480));
    let timeout = Duration::from_secs(env_or("CATCHUP_TIMEOUT_S", 120));
    let diag_env = std::env::var("CATCHUP_DIAG").unwrap_or_default();
    let diag = Diag {
        timeline: diag_env.split(',').any(|d| d.trim() == "timeline"),
        strace: diag_env.contains("strace"),
        perf: diag_env.split(',').any(|d| d.trim() == "perf"),
        perf_rpc: diag_env.contains("perf-rpc"),
    };
    let modes: Vec<u8> = std::env::var("CATCHUP_MODES")
        .unwrap_or_else(|_| "0,1".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let started = Instant::now();

    println!("catchup: N={n} runs={runs} db_modes={modes:?} sipp rate={rate}/s");
    println!("machine: {}", machine());
    println!("module: {}", module_sum());

    // Both nodes up once (the harness' start), then node 2 stopped and node
    // 1 restarted in db_mode 0 (only to register quickly; node 1 is the
    // sender, its usrloc mode does not enter the measurement).
    let mut c = Cluster::start(NAME, FIRST_IP, 2);
    c.node_mut(2).stop().expect("stopping node 2");
    {
        let n1 = c.node_mut(1);
        n1.stop().expect("stopping node 1");
        let peers = vec![format!("tcp:127.0.0.{}:{SERSYNC_PORT}", FIRST_IP + 1)];
        let ip = n1.ip.clone();
        let dir = n1.dir.clone();
        fs::write(
            dir.join("kamailio.cfg"),
            config(1, &ip, &dir, &peers, Door::Fifo, 0),
        )
        .expect("cfg");
        n1.start();
    }
    let regs: Vec<Reg> = (0..n)
        .map(|i| Reg::new(format!("cu{i:06}"), 3600))
        .collect();
    let t = Instant::now();
    sipp_register(c.node(1), &regs, rate, "catchup");
    let reg_s = t.elapsed().as_secs_f64();
    let n1 = c.node(1);
    let journaled = wait_journaled(n1, n as u64, Duration::from_secs(60));
    let st1 = n1.status();
    assert!(
        journaled && st1.queue_dropped == 0,
        "node 1 did not journal all {n}: {}",
        st1.summary()
    );
    println!(
        "registered {n} users on node 1 in {reg_s:.1} s; node 1 journal last_seq {}",
        st1.last_seq
    );

    let mut results: Vec<Run> = Vec::new();
    let mut skipped = Vec::new();
    for &m in &modes {
        for round in 1..=runs {
            // alternate which door goes first, so slow drift hits both
            let order = if round % 2 == 1 {
                [Door::Fifo, Door::Dgram]
            } else {
                [Door::Dgram, Door::Fifo]
            };
            for door in order {
                if started.elapsed() > budget {
                    skipped.push(format!("db_mode {m} {} round {round}", door.name()));
                    continue;
                }
                let label = format!("m{m}-r{round}-{}", door.name().to_lowercase());
                // `timeline-all`: the (cheap) timeline in the measured runs too
                let d = Diag {
                    timeline: diag_env.contains("timeline-all"),
                    ..Diag::default()
                };
                let r = run_once(&mut c, n, door, m, round, &label, timeout, d);
                println!(
                    "run db_mode {m} {:5} round {round}: up {:.2} s, first contact {:.2} s, all {n} {:.2} s -> apply {:.0} rec/s, catch-up {:.0} rec/s{} [{}]",
                    door.name(),
                    r.up_s,
                    r.first_s,
                    r.done_s,
                    r.apply_rate(),
                    r.catchup_rate(),
                    if r.ok { "" } else { " FAILED" },
                    r.note
                );
                results.push(r);
            }
        }
    }
    if diag.timeline || diag.strace || diag.perf || diag.perf_rpc {
        let m = modes.first().copied().unwrap_or(0);
        for door in [Door::Fifo, Door::Dgram] {
            let label = format!("m{m}-diag-{}", door.name().to_lowercase());
            let r = run_once(&mut c, n, door, m, 0, &label, timeout, diag);
            println!(
                "diagnostic run (not counted) db_mode {m} {}: all {n} in {:.2} s (apply {:.0} rec/s, perturbed by {diag_env}) [{}]",
                door.name(),
                r.done_s,
                r.apply_rate(),
                r.note
            );
        }
    }
    let st1 = c.node(1).status();
    println!("node 1 after the runs: {}", st1.summary());
    c.stop_all();

    println!("\nN = {n} records; apply = first contact in node 2's usrloc -> all N; catch-up = node 2 start -> all N");
    println!(
        "{:<22} {:>4}  {:>26}  {:>26}  {:>10}",
        "configuration",
        "runs",
        "apply rec/s median (min-max)",
        "catch-up rec/s med (min-max)",
        "catch-up s"
    );
    for &m in &modes {
        for door in [Door::Fifo, Door::Dgram] {
            let rs: Vec<&Run> = results
                .iter()
                .filter(|r| r.db_mode == m && r.door == door && r.ok)
                .collect();
            let failed = results
                .iter()
                .filter(|r| r.db_mode == m && r.door == door && !r.ok)
                .count();
            if rs.is_empty() {
                if failed > 0 {
                    println!(
                        "{:<22} {:>4}  all {failed} failed",
                        format!("db_mode {m}, {}", door.name()),
                        0
                    );
                }
                continue;
            }
            let a: Vec<f64> = rs.iter().map(|r| r.apply_rate()).collect();
            let cu: Vec<f64> = rs.iter().map(|r| r.catchup_rate()).collect();
            let secs: Vec<f64> = rs.iter().map(|r| r.done_s).collect();
            let (amin, amax) = minmax(&a);
            let (cmin, cmax) = minmax(&cu);
            println!(
                "{:<22} {:>4}  {:>9.0} ({:>6.0}-{:>6.0})  {:>9.0} ({:>6.0}-{:>6.0})  {:>10.2}{}",
                format!("db_mode {m}, {}", door.name()),
                rs.len(),
                median(&a),
                amin,
                amax,
                median(&cu),
                cmin,
                cmax,
                median(&secs),
                if failed > 0 {
                    format!("  ({failed} failed)")
                } else {
                    String::new()
                }
            );
        }
        // dgram / FIFO within each round
        let ratios: Vec<(usize, f64, f64)> = (1..=runs)
            .filter_map(|round| {
                let f = results
                    .iter()
                    .find(|r| r.db_mode == m && r.round == round && r.door == Door::Fifo && r.ok)?;
                let d = results.iter().find(|r| {
                    r.db_mode == m && r.round == round && r.door == Door::Dgram && r.ok
                })?;
                Some((
                    round,
                    d.apply_rate() / f.apply_rate(),
                    d.catchup_rate() / f.catchup_rate(),
                ))
            })
            .collect();
        if !ratios.is_empty() {
            println!(
                "{:<22} {:>4}  {:>9.2} ({:>6.2}-{:>6.2})  {:>9.2} ({:>6.2}-{:>6.2})",
                format!("db_mode {m}, dgram/FIFO"),
                ratios.len(),
                median(&ratios.iter().map(|r| r.1).collect::<Vec<_>>()),
                minmax(&ratios.iter().map(|r| r.1).collect::<Vec<_>>()).0,
                minmax(&ratios.iter().map(|r| r.1).collect::<Vec<_>>()).1,
                median(&ratios.iter().map(|r| r.2).collect::<Vec<_>>()),
                minmax(&ratios.iter().map(|r| r.2).collect::<Vec<_>>()).0,
                minmax(&ratios.iter().map(|r| r.2).collect::<Vec<_>>()).1,
            );
        }
    }
    if !skipped.is_empty() {
        println!("skipped (over CATCHUP_BUDGET_S): {}", skipped.join(", "));
    }
    println!(
        "wall time {:.0} s; nodes' logs under {}",
        started.elapsed().as_secs_f64(),
        c.dir.display()
    );
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!("catchup: {failed} run(s) failed (see above)");
        std::process::exit(1);
    }
}
