//! A snapshot of N contacts (default 1,000,000) to a new node: how long
//! until the new node has staged all of them durably and until its
//! applier has handed all of them on, and the new node's peak RSS.
//!
//! Node 1's journal is prepared with N distinct contacts (appended in
//! batches straight into the journal, as the ingest thread would), then
//! node 1 starts with `retention_records` 10,000, so that a new node is
//! far beyond the journal and needs the snapshot. Each run starts node 2
//! from an empty directory in a child process (this binary, re-executed),
//! so that its peak RSS (`VmHWM`) is its own; a counting sink stands in
//! for SER, whose own apply rate is measured by `--bench catchup`.
//!
//! Run: cargo bench --bench snapshot
//! Knobs: SNAPSHOT_N (1000000), SNAPSHOT_RUNS (3).

mod engines;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::{free_port, Counter};
use sersync::engine::Engine;
use sersync::journal::Journal;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record};

const RETENTION: u64 = 10_000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(id: &str, me: u16, peer: u16, dir: &Path) -> sersync::config::Config {
    engines::config(id, me, &[peer], dir, |raw| {
        raw.retention_records = RETENTION
    })
}

/// A registration as sipp's would look in usrloc: every field set.
fn contact(i: u64) -> Contact {
    Contact {
        domain: b"location".to_vec(),
        aor: format!("user{i:07}").into_bytes(),
        contact: format!("sip:user{i:07}@192.0.2.{}:{}", i % 250, 5060 + i % 1000).into_bytes(),
        ruid: format!("uloc-5f2a-{i:x}").into_bytes(),
        received: format!("sip:198.51.100.{}:{}", i % 250, 1024 + i % 60000).into_bytes(),
        path: b"<sip:edge1.example.net;lr>".to_vec(),
        callid: format!("{i:x}-4410@192.0.2.1").into_bytes(),
        user_agent: b"sipp/3.6".to_vec(),
        instance: format!("<urn:uuid:00000000-0000-0000-0000-{i:012}>").into_bytes(),
        expires: 1_900_000_000,
        last_modified: 1_800_000_000,
        q: 1000,
        cseq: 1,
        cflags: 64,
        methods: 0x1fff,
        reg_id: 1,
        server_id: 1,
        ..Default::default()
    }
}

fn prepare(dir: &Path, n: u64) -> Duration {
    let t = Instant::now();
    let mut j = Journal::open(&dir.join("journal.db")).unwrap();
    let clock = AtomicU64::new(0);
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push((
            sersync::hlc::tick(&clock),
            Record::Contact {
                op: Op::Upsert,
                contact: contact(i),
            },
        ));
        if batch.len() == 10_000 || i + 1 == n {
            j.append_local("n1", &batch).unwrap();
            batch.clear();
        }
    }
    t.elapsed()
}

/// Node 2, in the child process. Prints one line:
/// `RESULT <staged s> <applied s> <VmHWM kB>`.
fn child(p1: u16, p2: u16, dir: &Path, n: u64) {
    let applied = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let e = Engine::start(
        config("n2", p2, p1, dir),
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(Counter(applied.clone()))),
    )
    .unwrap();
    let mut staged = None;
    let deadline = t0 + Duration::from_secs(600);
    loop {
        let st = e.status();
        let received = st.peers.first().map_or(0, |p| p.snapshot_received);
        if staged.is_none() && received >= n {
            staged = Some(t0.elapsed());
        }
        if staged.is_some() && applied.load(Ordering::Relaxed) >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot incomplete after 600 s: {received} staged, {} applied",
            applied.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let applied_at = t0.elapsed();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let kb: u64 = hwm.trim_end_matches("kB").trim().parse().unwrap_or(0);
    println!(
        "RESULT {:.3} {:.3} {kb}",
        staged.unwrap().as_secs_f64(),
        applied_at.as_secs_f64()
    );
    println!("CPU node 2: {}", cpu_line(&engines::thread_cpu(), None));
    e.stop();
}

/// "name s, ..." for the threads of `now`, less `before` where given.
fn cpu_line(
    now: &std::collections::BTreeMap<String, f64>,
    before: Option<&std::collections::BTreeMap<String, f64>>,
) -> String {
    let mut total = 0.0;
    let mut parts: Vec<String> = now
        .iter()
        .filter_map(|(name, s)| {
            let d = s - before.and_then(|b| b.get(name)).unwrap_or(&0.0);
            total += d;
            (d >= 0.05).then(|| format!("{name} {d:.2} s"))
        })
        .collect();
    parts.push(format!("total {total:.2} s"));
    parts.join(", ")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var("SNAPSHOT_CHILD") {
        let parts: Vec<&str> = spec.split(',').collect();
        child(
            parts[0].parse().unwrap(),
            parts[1].parse().unwrap(),
            Path::new(parts[2]),
            parts[3].parse().unwrap(),
        );
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_num("SNAPSHOT_N", 1_000_000);
    let runs = env_num("SNAPSHOT_RUNS", 3).max(1);
    let (p1, p2) = (free_port(), free_port());
    let d1 = tempfile::tempdir().unwrap();
    let prep = prepare(d1.path(), n);
    println!(
        "snapshot: node 1's journal holds {n} contacts (prepared in {:.1} s)",
        prep.as_secs_f64()
    );
    let e1 = Engine::start(
        config("n1", p1, p2, d1.path()),
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(Counter(Arc::default()))),
    )
    .unwrap();
    // The journal trims to the retention every few seconds.
    let reader = Journal::open(&d1.path().join("journal.db")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reader.log_len().unwrap() > RETENTION {
        assert!(Instant::now() < deadline, "node 1 did not trim its journal");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "snapshot: node 1 keeps {} journal entries, {} keys of state",
        reader.log_len().unwrap(),
        reader.state_len().unwrap()
    );
    let (mut staged, mut applied, mut hwm) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let d2 = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .env(
                "SNAPSHOT_CHILD",
                format!("{p1},{p2},{},{n}", d2.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let cpu_before = engines::thread_cpu();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = out.lines().map_while(Result::ok);
        let line = lines
            .find(|l| l.starts_with("RESULT "))
            .expect("node 2 reported no result");
        let node2_cpu = lines.next().unwrap_or_default();
        let status = child.wait().unwrap();
        let node1_cpu = cpu_line(&engines::thread_cpu(), Some(&cpu_before));
        assert!(status.success(), "node 2 failed: {status}");
        let f: Vec<f64> = line[7..].split(' ').map(|x| x.parse().unwrap()).collect();
        println!(
            "run {run}: staged {:.2} s, applied {:.2} s, peak RSS {:.1} MiB",
            f[0],
            f[1],
            f[2] / 1024.0
        );
        println!("  {node2_cpu}\n  CPU node 1 (this process): {node1_cpu}");
        staged.push(f[0]);
        applied.push(f[1]);
        hwm.push(f[2] / 1024.0);
    }
    let range = |v: &[f64]| {
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(0.0, f64::max);
        format!("{lo:.2}–{hi:.2}")
    };
    println!();
    println!("| figure ({n} contacts, {runs} runs) | median | min–max |");
    println!("|---|---|---|");
    for (name, v) in [
        ("snapshot staged durably on the new node, s", &mut staged),
        ("all handed to the applier's sink, s", &mut applied),
        ("new node's peak RSS, MiB", &mut hwm),
    ] {
        let r = range(v);
        println!("| {name} | {:.2} | {r} |", median(v));
    }
    e1.stop();
}
