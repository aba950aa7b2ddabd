//! What the benches that run real Kamailio nodes (`register`, `catchup`)
//! share: environment knobs, the run's header, edits of the harness'
//! kamailio.cfg, readings of usrloc and sersync.status, and figures.
//!
//! Included from `benches/<bench>/main.rs` with
//! `#[path = "../common/mod.rs"] mod common;`; it uses the end-to-end
//! harness as `crate::support`, which both benches include.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// The machine

pub fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// "nproc N, memory M, <kamailio -V's first line>", for a run's header.
pub fn machine() -> String {
    format!(
        "nproc {}, memory {}, {}",
        sh("nproc"),
        sh("free -h | awk '/^Mem:/{print $2}'"),
        sh("kamailio -V | head -1")
    )
}

/// "<module path> sha256 <first 16 hex digits>", for a run's header.
pub fn module_sum() -> String {
    format!(
        "{} sha256 {}",
        module_path().display(),
        sh(&format!(
            "sha256sum {} | cut -c1-16",
            module_path().display()
        ))
    )
}

/// Process names that flag a run `MACHINE BUSY` (a `grep -E` alternation).
const COMPILERS: &str = "rustc|cc1|cc1plus|ld|rust-lld|bindgen";

/// Other CPU-heavy work on this shared machine skews a run: say so.
/// `also`: process names counted besides [`COMPILERS`] (register counts
/// cargo-fuzz, catchup never did).
pub fn busy_note(also: &[&str]) -> String {
    let names: String = also.iter().map(|a| format!("|{a}")).collect();
    let others = sh(&format!(
        "ps -eo comm= | grep -cxE '{COMPILERS}{names}' || true"
    ));
    let load = sh("cut -d' ' -f1 /proc/loadavg");
    match others.parse::<u32>() {
        Ok(k) if k > 0 => format!("MACHINE BUSY: {k} compiler processes, load {load}"),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------
// The harness' kamailio.cfg, adapted

/// Replaces `from` by `to` in a generated kamailio.cfg; `from` must be in
/// it, or the harness' template changed under the bench.
pub fn cfg_replace(cfg: &mut String, from: &str, to: &str) {
    assert!(
        cfg.contains(from),
        "node template changed: no `{from}` in the generated kamailio.cfg"
    );
    *cfg = cfg.replace(from, to);
}

/// sersync applies through jsonrpcs' datagram socket `<dir>/rpc.sock`
/// instead of the FIFO the harness names.
pub fn apply_through_dgram(cfg: &mut String, dir: &Path) {
    let d = dir.to_str().expect("utf-8 dir");
    cfg_replace(
        cfg,
        &format!("modparam(\"sersync\", \"fifo\", \"{d}/rpc.fifo\")"),
        &format!("modparam(\"sersync\", \"fifo\", \"{d}/rpc.sock\")"),
    );
}

// ---------------------------------------------------------------------------
// Readings

/// usrloc's live contact count from a `stats.get_statistics
/// location_contacts` reply (`usrloc:location_contacts = N`).
pub fn location_contacts(v: &Value) -> Result<u64, String> {
    let text = match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.rsplit('=')
        .next()
        .and_then(|s| {
            s.trim()
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("odd statistics reply: {text}"))
}

/// Waits until `node`'s journal holds `n` changes and its queue is empty.
pub fn wait_journaled(node: &Node, n: u64, timeout: Duration) -> bool {
    wait_until(timeout, || {
        node.sersync_status()
            .is_ok_and(|st| st.last_seq >= n && st.queue_depth == 0)
    })
}

/// Snapshot rows the node received from its first peer (newer engines
/// catch a fresh peer up by snapshot once the journal is pruned); None
/// where `sersync.status` has no such field.
pub fn snapshot_received(st: &SersyncStatus) -> Option<u64> {
    st.raw
        .pointer("/peers/0/snapshot_received")
        .and_then(Value::as_u64)
}

// ---------------------------------------------------------------------------
// Figures

/// The median of the finite values; NaN when there are none.
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

pub fn minmax(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}
