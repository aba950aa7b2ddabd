//! Figures: percentiles, "median (min–max)", and the summary tables.

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
