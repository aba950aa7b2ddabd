//! The parts (REGISTER_PARTS): load, m64 and catch-up runs of one
//! configuration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::cluster::*;
use crate::common::*;
use crate::http::*;
use crate::load::*;
use crate::probes::*;
use crate::settings::*;
use crate::support::*;

#[derive(Debug, Default)]
pub struct LoadRun {
    pub repl: Option<Repl>,
    pub round: usize,
    pub burst: SippRun,
    pub mem: Mem,
    /// sipp's exit -> every peer holds the burst, s
    pub burst_converge_s: Option<f64>,
    pub rated: SippRun,
    pub probes: Probes,
    /// sipp's exit (last 200 OK) -> every peer equals node 1, s
    pub converge_s: Option<f64>,
    pub busy: String,
    pub note: String,
}

pub fn load_run(c: &mut Cluster, s: &Settings, repl: Repl, round: usize) -> LoadRun {
    let label = format!("r{round}-{}", repl.label());
    start_config(c, s, repl, &label, s.shm_mb);
    let run_dir = c.dir.join(&label);
    let peers: Vec<String> = (2..=repl.nodes()).map(ip_of).collect();
    let mut r = LoadRun {
        repl: Some(repl),
        round,
        busy: busy_note(&["cargo-fuzz"]),
        ..LoadRun::default()
    };

    // (1) + (2): the burst, then node 1's memory
    r.burst = sipp_load(s, c.node(1), "b", s.burst_n, 100_000, s.window, &run_dir);
    let burst_end = Instant::now();
    r.mem = memory(c.node(1));
    if !peers.is_empty() {
        match wait_counts(&peers, r.burst.ok, s.converge_timeout) {
            Ok(t) => r.burst_converge_s = Some((t - burst_end).as_secs_f64()),
            Err(counts) => {
                r.note += &format!(
                    "burst not converged: peers at {counts:?} of {}; ",
                    r.burst.ok
                )
            }
        }
    }

    // (3): a steady rate, with lag probes
    let stop = Arc::new(AtomicBool::new(false));
    let prober = if peers.is_empty() {
        None
    } else {
        let (o, p, e, st, pin) = (ip_of(1), peers.clone(), s.probe_every, stop.clone(), s.pin);
        Some(std::thread::spawn(move || probe_loop(o, p, e, st, pin)))
    };
    r.rated = sipp_load(s, c.node(1), "r", s.rate_n, s.rate, 1000, &run_dir);
    let rated_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = prober {
        r.probes = h.join().expect("prober");
    }
    if !peers.is_empty() {
        let mut h1 = Http::new(&ip_of(1));
        let target = h1.contacts().unwrap_or(0);
        match wait_counts(&peers, target, s.converge_timeout) {
            Ok(t) => r.converge_s = Some((t - rated_end).as_secs_f64()),
            Err(counts) => {
                r.note += &format!("rated run not converged: peers at {counts:?} of {target}; ")
            }
        }
    }
    if let Repl::Sersync { .. } = repl {
        if let Ok(st) = c.node(1).sersync_status() {
            if st.queue_dropped > 0 || !st.last_error.is_empty() {
                r.note += &format!("node 1 sersync: {}; ", st.summary());
            }
        }
    }
    let b = busy_note(&["cargo-fuzz"]);
    if !b.is_empty() && r.busy.is_empty() {
        r.busy = b;
    }
    stop_nodes(c);
    r
}

#[derive(Debug)]
pub struct M64Run {
    pub repl: Repl,
    pub sipp: SippRun,
    pub mem: Mem,
    pub busy: String,
}

pub fn m64_run(c: &mut Cluster, s: &Settings, repl: Repl, round: usize) -> M64Run {
    let label = format!("m64-r{round}-{}", repl.label());
    start_config(c, s, repl, &label, 64);
    let busy = busy_note(&["cargo-fuzz"]);
    let sipp = sipp_load(
        s,
        c.node(1),
        "m",
        s.m64_n,
        100_000,
        s.window,
        &c.dir.join(&label),
    );
    let mem = memory(c.node(1));
    stop_nodes(c);
    M64Run {
        repl,
        sipp,
        mem,
        busy,
    }
}

#[derive(Debug)]
pub struct CatchupRun {
    pub repl: Repl,
    /// node 2 start() called -> it answers RPC, s
    pub up_s: f64,
    /// start -> first contact, s
    pub first_s: Option<f64>,
    /// start -> all of them, s
    pub done_s: Option<f64>,
    pub n: u64,
    pub busy: String,
    pub note: String,
}

pub fn catchup_run(c: &mut Cluster, s: &Settings, repl: Repl, round: usize) -> CatchupRun {
    let label = format!("catchup-r{round}-{}", repl.label());
    configure(c, s, repl, &label, s.shm_mb);
    let sersync = matches!(repl, Repl::Sersync { .. });
    start_node(c, s, 1);
    if sersync {
        // node 2 knows node 1 and has its journal, then goes down
        start_node(c, s, 2);
        wait_ready(c, s, repl, &[1, 2]);
        c.node_mut(2).stop().expect("stopping node 2");
    }
    let burst = sipp_load(
        s,
        c.node(1),
        "c",
        s.catchup_n,
        100_000,
        s.window,
        &c.dir.join(&label),
    );
    let n = burst.ok;
    let mut note = String::new();
    if burst.failed > 0 {
        note += &format!("{} REGISTERs failed on node 1; ", burst.failed);
    }
    if sersync {
        let journaled = wait_journaled(c.node(1), n, Duration::from_secs(120));
        assert!(journaled, "node 1 did not journal {n}");
    }
    let busy = busy_note(&["cargo-fuzz"]);
    let t0 = Instant::now();
    start_node(c, s, 2);
    let up_s = t0.elapsed().as_secs_f64();
    let mut h = Http::new(&ip_of(2));
    let (mut first, mut done, mut last) = (None, None, 0);
    let mut repinned = false;
    let mut progress = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) {
        if progress.elapsed() > Duration::from_secs(15) {
            note += "STALLED: no progress for 15 s; ";
            break;
        }
        if let Ok(k) = h.contacts() {
            if k > last {
                progress = Instant::now();
            }
            last = k;
            let t = t0.elapsed().as_secs_f64();
            if k > 0 && first.is_none() {
                first = Some(t);
            }
            if k >= n {
                done = Some(t);
                break;
            }
        }
        if s.pin && !repinned && t0.elapsed() > Duration::from_millis(300) {
            pin_group(c.node(2).pid().expect("running"), cpu_of(2));
            repinned = true;
        }
        sleep(Duration::from_millis(10));
    }
    if done.is_none() {
        note += &format!("TIMEOUT: node 2 at {last} of {n}; ");
    }
    for i in 1..=2 {
        let k = c.node(i).log_grep("could not allocate shared memory").len();
        if k > 0 {
            note += &format!("node {i} logged {k} shm allocation failures; ");
        }
    }
    if sersync {
        sleep(Duration::from_millis(500)); // sersync.status is republished every 200 ms
        if let Ok(st) = c.node(2).sersync_status() {
            let p = st.peers.first();
            note += &format!(
                "node 2 received {} (snapshot rows {}), applied {}",
                p.map_or(0, |p| p.received),
                snapshot_received(&st).unwrap_or(0),
                st.applied
            );
        }
    }
    stop_nodes(c);
    CatchupRun {
        repl,
        up_s,
        first_s: first,
        done_s: done,
        n,
        busy,
        note,
    }
}
