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
    // Started before this process pins itself, so that the burner may
    // run on node 1's CPU too (it is there only to keep CPUs from idling).
    let _awake = s.awake.then(KeepAwake::start);
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
                print_load_run(repl, round, &r);
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
                print_m64_run(&s, repl, round, &r);
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
                print_catchup_run(repl, round, &r);
                catchup.push(r);
            }
        }
    }
    c.stop_all();

    if !load.is_empty() {
        print_load(&s, &load);
    }
    if !m64.is_empty() {
        print_m64(&s, &m64);
    }
    if !catchup.is_empty() {
        print_catchup(&s, &catchup);
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

/// A busy loop at the lowest priority for the bench's lifetime (see
/// `Settings::awake`); killed and reaped when dropped.
struct KeepAwake(std::process::Child);

impl KeepAwake {
    fn start() -> KeepAwake {
        let child = std::process::Command::new("nice")
            .args(["-n", "19", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("starting the CPU burner (nice, sh)");
        println!(
            "keeping the CPUs awake: nice -n 19 busy loop, pid {}",
            child.id()
        );
        KeepAwake(child)
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
