//! Figures: percentiles, "median (min–max)", each run's line and the summary
//! tables.

use std::collections::BTreeMap;

use crate::common::*;
use crate::parts::*;
use crate::settings::*;

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[idx.clamp(1, v.len()) - 1]
}

/// "median (min–max)" with `prec` decimals; "—" when empty.
pub fn stat(v: &[f64], prec: usize) -> String {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return "—".into();
    }
    let (lo, hi) = minmax(&f);
    if f.len() == 1 {
        return format!("{:.prec$}", f[0]);
    }
    format!("{:.prec$} ({lo:.prec$}–{hi:.prec$})", median(&f))
}

pub fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn print_load(s: &Settings, runs: &[LoadRun]) {
    let base: BTreeMap<usize, f64> = runs
        .iter()
        .filter(|r| r.repl == Some(Repl::None) && r.burst.failed == 0)
        .map(|r| (r.round, r.burst.rate()))
        .collect();
    println!(
        "\n(1) throughput: burst of {} REGISTERs, window {}; ratio = / no replication in the same round",
        s.burst_n, s.window
    );
    println!(
        "{:<18} {:>4} {:>28} {:>22} {:>7}",
        "configuration", "runs", "REGISTER/s median (min–max)", "ratio to none", "failed"
    );
    for &repl in &s.configs {
        let rs: Vec<&LoadRun> = runs.iter().filter(|r| r.repl == Some(repl)).collect();
        if rs.is_empty() {
            continue;
        }
        let rate: Vec<f64> = rs.iter().map(|r| r.burst.rate()).collect();
        let ratio: Vec<f64> = rs
            .iter()
            .filter_map(|r| base.get(&r.round).map(|b| r.burst.rate() / b))
            .collect();
        let failed: u64 = rs.iter().map(|r| r.burst.failed).sum();
        println!(
            "{:<18} {:>4} {:>28} {:>22} {:>7}",
            repl.label(),
            rs.len(),
            stat(&rate, 0),
            stat(&ratio, 2),
            failed
        );
    }
    println!(
        "\n(2) node 1's memory right after the burst of {} (shm -m {} MB); MB",
        s.burst_n, s.shm_mb
    );
    println!(
        "{:<18} {:>22} {:>22} {:>22} {:>20}",
        "configuration", "shm real_used", "shm max_used", "PSS, all processes", "peers hold it, s"
    );
    for &repl in &s.configs {
        let rs: Vec<&LoadRun> = runs.iter().filter(|r| r.repl == Some(repl)).collect();
        if rs.is_empty() {
            continue;
        }
        let f = |g: &dyn Fn(&LoadRun) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<f64>>();
        println!(
            "{:<18} {:>22} {:>22} {:>22} {:>20}",
            repl.label(),
            stat(&f(&|r| mb(r.mem.shm_used)), 1),
            stat(&f(&|r| mb(r.mem.shm_max)), 1),
            stat(&f(&|r| mb(r.mem.pss)), 1),
            if repl == Repl::None {
                "".into()
            } else {
                stat(&f(&|r| r.burst_converge_s.unwrap_or(f64::NAN)), 2)
            }
        );
    }
    println!(
        "\n(3) {} REGISTERs at {}/s; lag: probe's 200 OK at node 1 -> every peer's ul.lookup finds it (one probe per {:?}); convergence: sipp's last 200 OK -> every peer's count = node 1's",
        s.rate_n, s.rate, s.probe_every
    );
    println!(
        "{:<18} {:>20} {:>16} {:>18} {:>18} {:>18} {:>7}",
        "configuration",
        "achieved REG/s",
        "converged, s",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "probes"
    );
    for &repl in &s.configs {
        let rs: Vec<&LoadRun> = runs.iter().filter(|r| r.repl == Some(repl)).collect();
        if rs.is_empty() || repl == Repl::None {
            continue;
        }
        let f = |g: &dyn Fn(&LoadRun) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<f64>>();
        let lost: u64 = rs.iter().map(|r| r.probes.lost + r.probes.failed).sum();
        let n: usize = rs.iter().map(|r| r.probes.lags_ms.len()).sum();
        println!(
            "{:<18} {:>20} {:>16} {:>18} {:>18} {:>18} {:>7}",
            repl.label(),
            stat(&f(&|r| r.rated.rate()), 0),
            stat(&f(&|r| r.converge_s.unwrap_or(f64::NAN)), 2),
            stat(&f(&|r| percentile(&r.probes.lags_ms, 50.0)), 1),
            stat(&f(&|r| percentile(&r.probes.lags_ms, 99.0)), 1),
            stat(&f(&|r| percentile(&r.probes.lags_ms, 100.0)), 1),
            if lost > 0 {
                format!("{n}+{lost} lost")
            } else {
                n.to_string()
            }
        );
    }
}

/// One load run's line; with REGISTER_LAG_TRACE, its probes over 10 ms.
pub fn print_load_run(repl: Repl, round: usize, r: &LoadRun) {
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
}

/// One m64 run's line.
pub fn print_m64_run(s: &Settings, repl: Repl, round: usize, r: &M64Run) {
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
}

/// One catch-up run's line.
pub fn print_catchup_run(repl: Repl, round: usize, r: &CatchupRun) {
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
}

/// (2b): failed REGISTERs with `-m 64`, per configuration.
pub fn print_m64(s: &Settings, runs: &[M64Run]) {
    println!(
        "\n(2b) Kamailio's default -m 64: burst of {} REGISTERs, one peer",
        s.m64_n
    );
    println!(
        "{:<18} {:>24} {:>22}",
        "configuration", "failed, median (min–max)", "shm max_used MB"
    );
    for repl in Repl::M64_PART {
        let rs: Vec<&M64Run> = runs.iter().filter(|r| r.repl == repl).collect();
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

/// (4): node 2's catch-up, per configuration.
pub fn print_catchup(s: &Settings, runs: &[CatchupRun]) {
    println!(
        "\n(4) catch-up of node 2: {} changes on node 1 while node 2 was down (sersync) / before an empty node 2 joins (dmq); s from node 2's start",
        s.catchup_n
    );
    println!(
        "{:<18} {:>22} {:>22} {:>22}",
        "configuration", "all held, s", "first contact, s", "first -> all, rec/s"
    );
    for repl in Repl::CATCHUP_PART {
        let rs: Vec<&CatchupRun> = runs.iter().filter(|r| r.repl == repl).collect();
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
