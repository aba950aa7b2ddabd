//! What the benches that run real Kamailio nodes (`register`, `catchup`)
//! share: environment knobs, shell one-liners, the machine's business, and
//! medians.
//!
//! Included with `#[path = ".../common/mod.rs"] mod common;`.

use std::process::Command;

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let k = v.len();
    match k {
        0 => f64::NAN,
        _ if k % 2 == 1 => v[k / 2],
        _ => (v[k / 2 - 1] + v[k / 2]) / 2.0,
    }
}

pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Other CPU-heavy work on this shared machine skews a run: say so.
pub fn busy_note() -> String {
    let others =
        sh("ps -eo comm= | grep -cxE 'rustc|cc1|cc1plus|ld|rust-lld|bindgen|cargo-fuzz' || true");
    let load = sh("cut -d' ' -f1 /proc/loadavg");
    match others.parse::<u32>() {
        Ok(k) if k > 0 => format!("MACHINE BUSY: {k} compiler processes, load {load}"),
        _ => String::new(),
    }
}
