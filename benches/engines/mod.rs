//! What the engine-level benches share: engines on loopback with real
//! SQLite journals, and a sink that counts what SER would have been given.

#![allow(dead_code)] // each bench uses part of it

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sersync::apply::Sink;
use sersync::config::{Config, RawConfig};
use sersync::error::ApplyError;
use sersync::record::Record;

/// Stands in for SER: counts the records applied.
pub struct Counter(pub Arc<AtomicU64>);

impl Sink for Counter {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        self.0.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node `id` listening on 127.0.0.1:`me`, with the others as peers and
/// its journal in `dir`; `tune` sets anything else (retention).
pub fn config(
    id: &str,
    me: u16,
    peers: &[u16],
    dir: &Path,
    tune: impl FnOnce(&mut RawConfig),
) -> Config {
    let mut raw = RawConfig {
        node_id: id.into(),
        listen: format!("tcp:127.0.0.1:{me}"),
        peers: peers
            .iter()
            .filter(|p| **p != me)
            .map(|p| format!("tcp:127.0.0.1:{p}"))
            .collect(),
        secret: b"engine-bench-secret".to_vec(),
        journal: dir.join("journal.db").display().to_string(),
        ..Default::default()
    };
    tune(&mut raw);
    raw.check().unwrap()
}

/// CPU seconds (user + system) this process's threads have used, summed
/// by thread name (sersync-net, sersync-apply, ...), from /proc/self/task.
#[allow(dead_code)] // not every bench reports per thread
pub fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        // utime and stime: fields 14 and 15, the 12th and 13th after ')'.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = f.get(11..13).map_or(0.0, |v| {
            v.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
        });
        *by_name.entry(name).or_insert(0.0) += ticks / hz;
    }
    by_name
}

/// CPU seconds this process has used (user + system): per-record costs
/// measured this way hold up on a machine shared with other work.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills our struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
