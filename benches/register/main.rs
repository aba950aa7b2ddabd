//! REGISTER load on a real Kamailio node: what replication costs, sersync
//! against dmq_usrloc, side by side in one run (see bench/README.md,
//! "REGISTER load").
//!
//! Nodes on 127.0.0.101-103 (node 1 takes the load, nodes 2 and 3 are its
//! peers), sipp on 127.0.0.110, the lag prober on 127.0.0.111. Every node
//! runs `bench/register.cfg.in` (usrloc db_mode 0 by default). Configurations
//! (REGISTER_CONFIGS): `none` (node 1 alone), `sersync-1`, `sersync-2`,
//! `sersync-journal-1` (durability "journal"), `dmq-1`, `dmq-2`. Each run of
//! a configuration starts its nodes from fresh directories.
//!
//! Parts (REGISTER_PARTS, default all):
//! - `load`: per round and configuration: (1) a burst of REGISTER_BURST_N
//!   distinct users with at most REGISTER_WINDOW REGISTERs outstanding:
//!   REGISTERs/s, failed transactions; (2) node 1's memory right after it
//!   (Kamailio shm real_used and max_used from `core.shmmem`, PSS summed
//!   over node 1's process group from /proc/<pid>/smaps_rollup), and the
//!   time until every peer holds the burst; (3) REGISTER_RATE_N more users
//!   at REGISTER_RATE/s, with lag probes: every REGISTER_PROBE_MS the bench
//!   registers one more user itself, stamps the 200 OK, and polls each
//!   peer's usrloc (`ul.lookup` over HTTP JSON-RPC) until it holds it;
//!   convergence = time from sipp's last 200 OK until every peer's
//!   `usrloc:location_contacts` equals node 1's.
//! - `m64`: Kamailio's default `-m 64`: a burst of REGISTER_M64_N users with
//!   one peer (none, sersync-1, dmq-1): failed transactions.
//! - `catchup`: sersync: node 2 stopped while REGISTER_CATCHUP_N users
//!   register on node 1, then started on its old directory; dmq: node 2
//!   starts empty after the same burst and syncs (dmq_usrloc `sync`). Time
//!   from node 2's start until its usrloc holds them all.
//!
//! With REGISTER_PIN=1 (default when nproc >= 2) node 1's processes run on
//! CPU 0 and everything else (peers, sipp, this bench) on CPU 1, so that
//! the peers' work does not come out of node 1's CPU (in a deployment they
//! are other machines). Other knobs: REGISTER_QUICK=1 (one round, smaller
//! counts), REGISTER_RUNS (3), REGISTER_CHILDREN (4 UDP workers),
//! REGISTER_DB_MODE (0), REGISTER_HASH_SIZE (14), REGISTER_SHM_MB (1024),
//! REGISTER_CONVERGE_TIMEOUT_S (60), REGISTER_BURST_N, REGISTER_RATE_N,
//! REGISTER_RATE (3000/s), REGISTER_WINDOW (20), REGISTER_M64_N,
//! REGISTER_CATCHUP_N, REGISTER_PROBE_MS (20). Diagnostics:
//! REGISTER_LAG_TRACE=1 prints every probe over 10 ms with its time;
//! REGISTER_JOURNAL_DIR=<dir> puts sersync's journals there (e.g. a tmpfs,
//! to see what the journal's fsyncs cost).

#[path = "../common/mod.rs"]
mod common;
#[path = "../../tests/e2e_support/mod.rs"]
mod support;

mod cluster;
mod http;
mod load;
mod parts;
mod probes;
mod report;
mod settings;

use std::time::Instant;

use common::*;
use parts::*;
use probes::set_affinity;
use report::*;
use settings::*;
use support::*;

const NAME: &str = "bench-register";
const FIRST_IP: u8 = 101;
const SIPP_IP: &str = "127.0.0.110";
const PROBE_IP: &str = "127.0.0.111";
const HTTP_PORT: u16 = 8080;

fn main() {
    let s = Settings::from_env();
    let started = Instant::now();
    println!("register: {s:?}");
    println!(
        "machine: {}, {}",
        machine(),
        sh("sipp -v 2>&1 | grep -o 'SIPp v[0-9.]*' | head -1")
    );
    println!(
        "module: {}; git {}",
        module_sum(),
        sh("git rev-parse --short HEAD")
    );

    // The harness' start (machine lock, fresh directory, a sersync mesh
    // from this bench's template); every run then reconfigures the nodes.
    // REGISTER_SHM_MANAGER=tlsf: Kamailio's `-x` (shared memory manager).
    let kamailio_args = std::env::var("REGISTER_SHM_MANAGER")
        .map(|m| vec!["-x".to_string(), m])
        .unwrap_or_default();
    let opts = ClusterOptions {
        template: Some(repo_root().join("bench/register.cfg.in")),
        shm_mb: Some(s.shm_mb),
        kamailio_args,
        ..ClusterOptions::default()
    };
    if s.pin {
        set_affinity(0, 1);
    }
    let mut c = Cluster::start_with_options(NAME, FIRST_IP, 3, &opts);
    println!(
        "cluster up (machine lock held) after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut load = Vec::new();
    if s.part("load") {
        for round in 1..=s.runs {
            let k = s.configs.len();
            for j in 0..k {
                // rotate the order so that slow drift hits every configuration
                let repl = s.configs[(j + round - 1) % k];
                let r = load_run(&mut c, &s, repl, round);
                println!(
                    "load {} round {round}: burst {} ok {} failed in {:.2} s = {:.0}/s; shm {:.1} MB (max {:.1}), PSS {:.1} MB in {} procs; burst converged {}; rated {:.0}/s ok {} failed {}, converged {}, probes {} (lost {}, failed {}) p50 {:.1} p99 {:.1} max {:.1} ms {} {}",
                    repl.label(),
                    r.burst.ok,
                    r.burst.failed,
                    r.burst.secs,
                    r.burst.rate(),
                    mb(r.mem.shm_used),
                    mb(r.mem.shm_max),
                    mb(r.mem.pss),
                    r.mem.procs,
                    r.burst_converge_s.map_or("-".into(), |x| format!("{x:.2} s")),
                    r.rated.rate(),
                    r.rated.ok,
                    r.rated.failed,
                    r.converge_s.map_or("-".into(), |x| format!("{x:.2} s")),
                    r.probes.lags_ms.len(),
                    r.probes.lost,
                    r.probes.failed,
                    percentile(&r.probes.lags_ms, 50.0),
                    percentile(&r.probes.lags_ms, 99.0),
                    percentile(&r.probes.lags_ms, 100.0),
                    r.note,
                    r.busy
                );
                if std::env::var_os("REGISTER_LAG_TRACE").is_some() {
                    let slow: Vec<String> = r
                        .probes
                        .lags_ms
                        .iter()
                        .zip(&r.probes.at_s)
                        .filter(|(l, _)| **l > 10.0)
                        .map(|(l, a)| format!("{a:.2}s:{l:.0}ms"))
                        .collect();
                    println!(
                        "   probes over 10 ms (time since the rated run's start: lag): {}",
                        slow.join(" ")
                    );
                }
                if !r.burst.exit_ok || !r.rated.exit_ok {
                    println!(
                        "   sipp exited with an error: see {}",
                        r.burst.dir.display()
                    );
                }
                load.push(r);
            }
        }
    }

    let mut m64 = Vec::new();
    if s.part("m64") {
        let cfgs = s.chosen(&Repl::M64_PART);
        for round in 1..=s.runs {
            for &repl in &cfgs {
                let r = m64_run(&mut c, &s, repl, round);
                println!(
                    "m64 {} round {round}: {} of {} failed ({} ok) in {:.2} s; shm {:.1} MB (max {:.1}) {}",
                    repl.label(),
                    r.sipp.failed,
                    s.m64_n,
                    r.sipp.ok,
                    r.sipp.secs,
                    mb(r.mem.shm_used),
                    mb(r.mem.shm_max),
                    r.busy
                );
                m64.push(r);
            }
        }
    }

    let mut catchup = Vec::new();
    if s.part("catchup") {
        let cfgs = s.chosen(&Repl::CATCHUP_PART);
        for round in 1..=s.runs {
            for &repl in &cfgs {
                let r = catchup_run(&mut c, &s, repl, round);
                println!(
                    "catchup {} round {round}: {} contacts; node 2 up {:.2} s, first {} s, all {} s; {} {}",
                    repl.label(),
                    r.n,
                    r.up_s,
                    r.first_s.map_or("-".into(), |x| format!("{x:.2}")),
                    r.done_s.map_or("-".into(), |x| format!("{x:.2}")),
                    r.note,
                    r.busy
                );
                catchup.push(r);
            }
        }
    }
    c.stop_all();

    if !load.is_empty() {
        print_load(&s, &load);
    }
    if !m64.is_empty() {
        println!(
            "\n(2b) Kamailio's default -m 64: burst of {} REGISTERs, one peer",
            s.m64_n
        );
        println!(
            "{:<18} {:>24} {:>22}",
            "configuration", "failed, median (min–max)", "shm max_used MB"
        );
        for repl in Repl::M64_PART {
            let rs: Vec<&M64Run> = m64.iter().filter(|r| r.repl == repl).collect();
            if rs.is_empty() {
                continue;
            }
            let failed: Vec<f64> = rs
                .iter()
                .map(|r| (s.m64_n as u64 - r.sipp.ok) as f64)
                .collect();
            let max: Vec<f64> = rs.iter().map(|r| mb(r.mem.shm_max)).collect();
            println!(
                "{:<18} {:>24} {:>22}",
                repl.label(),
                stat(&failed, 0),
                stat(&max, 1)
            );
        }
    }
    if !catchup.is_empty() {
        println!(
            "\n(4) catch-up of node 2: {} changes on node 1 while node 2 was down (sersync) / before an empty node 2 joins (dmq); s from node 2's start",
            s.catchup_n
        );
        println!(
            "{:<18} {:>22} {:>22} {:>22}",
            "configuration", "all held, s", "first contact, s", "first -> all, rec/s"
        );
        for repl in Repl::CATCHUP_PART {
            let rs: Vec<&CatchupRun> = catchup.iter().filter(|r| r.repl == repl).collect();
            if rs.is_empty() {
                continue;
            }
            let done: Vec<f64> = rs.iter().map(|r| r.done_s.unwrap_or(f64::NAN)).collect();
            let first: Vec<f64> = rs.iter().map(|r| r.first_s.unwrap_or(f64::NAN)).collect();
            let rate: Vec<f64> = rs
                .iter()
                .map(|r| match (r.first_s, r.done_s) {
                    (Some(a), Some(b)) => r.n as f64 / (b - a).max(1e-3),
                    _ => f64::NAN,
                })
                .collect();
            let missing = rs.iter().filter(|r| r.done_s.is_none()).count();
            println!(
                "{:<18} {:>22} {:>22} {:>22}{}",
                repl.label(),
                stat(&done, 2),
                stat(&first, 2),
                stat(&rate, 0),
                if missing > 0 {
                    format!("  ({missing} runs never complete)")
                } else {
                    String::new()
                }
            );
        }
    }
    let busy = load
        .iter()
        .map(|r| &r.busy)
        .chain(m64.iter().map(|r| &r.busy))
        .chain(catchup.iter().map(|r| &r.busy))
        .filter(|b| !b.is_empty())
        .count();
    if busy > 0 {
        println!("\n{busy} run(s) flagged MACHINE BUSY (see the per-run lines)");
    }
    println!(
        "wall time {:.0} s; nodes' logs under {}",
        started.elapsed().as_secs_f64(),
        c.dir.display()
    );
}
