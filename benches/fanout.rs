//! Fan-out cost of the full mesh: one engine's changes delivered to every
//! other member of clusters of 2, 4 and 8 engines (all in this process, on
//! loopback, real SQLite journals). Prints records/s until the last member
//! holds them all, and the sender process's CPU time per record.
//! Run: cargo bench --bench fanout

mod engines;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::{config, cpu_secs, free_port, Counter};
use sersync::engine::Engine;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, RecordRef};

fn run(n: usize, total: usize) -> (f64, f64) {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let q1 = Arc::new(Shared::create(1 << 15).unwrap());
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
    let engines: Vec<Engine> = (0..n)
        .map(|i| {
            let cfg = config(&format!("n{i}"), ports[i], &ports, dirs[i].path(), |_| {});
            let q = if i == 0 {
                q1.clone()
            } else {
                Arc::new(Shared::create(64).unwrap())
            };
            Engine::start(cfg, q, Some(Box::new(Counter(counters[i].clone())))).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Contact {
        domain: b"location".to_vec(),
        ruid: b"r".to_vec(),
        callid: b"c".to_vec(),
        ..Default::default()
    };
    let (t0, cpu0) = (Instant::now(), cpu_secs());
    for i in 0..total {
        c.aor = format!("user{i}").into_bytes();
        c.contact = format!("sip:user{i}@192.0.2.1").into_bytes();
        while q1
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: c.as_ref(),
            })
            .is_err()
        {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    while counters[1..]
        .iter()
        .any(|c| c.load(Ordering::Relaxed) < total as u64)
    {
        assert!(t0.elapsed() < Duration::from_secs(600), "not delivered");
        std::thread::sleep(Duration::from_millis(2));
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - cpu0);
    drop(engines);
    (total as f64 / secs, cpu / total as f64 * 1e6)
}

fn main() {
    println!("full-mesh fan-out: 30,000 changes on one node until every other member holds them (3 runs)");
    println!(
        "{:>7} {:>28} {:>34}",
        "members", "records/s to all, median (min–max)", "CPU µs per change, all members"
    );
    let mut base = None;
    for n in [2usize, 4, 8] {
        let mut runs: Vec<(f64, f64)> = (0..3).map(|_| run(n, 30_000)).collect();
        runs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let med = runs[1];
        let b = *base.get_or_insert(med.0);
        println!(
            "{n:>7} {:>10.0} ({:>6.0}–{:>6.0}) ×{:.2} {:>20.1}",
            med.0,
            runs[0].0,
            runs[2].0,
            med.0 / b,
            med.1
        );
    }
}
