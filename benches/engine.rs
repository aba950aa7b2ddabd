//! Engine throughput: records published on one engine, journaled durably
//! and delivered to a second engine over loopback TCP, for bursts of 1 to
//! 1,000 records (a burst is published, then awaited as durable, as a
//! worker with durability "journal" would). Prints records/s journaled
//! and delivered, median and min–max over 3 runs.
//! Last, CPU per record with encrypted sessions and without (the cost of
//! protocol v4's encryption), in the same run.
//! Run: cargo bench --bench engine
//! ENGINE_BURST=N runs one burst size only (0: none, the sessions
//! comparison alone); ENGINE_SESSIONS=0 skips the sessions comparison;
//! ENGINE_KEYS=random spreads the keys over the key space as production
//! AORs are (each state upsert then lands on its own b-tree page)
//! instead of numbering them in order.

mod engines;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::{config, cpu_secs, free_port, Counter};
use sersync::engine::Engine;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, RecordRef};

/// The AOR of record `i`: `user{i}`, or with `random` a scrambled but
/// distinct name (a bijection of `i`, so every record is its own key).
fn aor(i: usize, random: bool) -> String {
    if !random {
        return format!("user{i}");
    }
    // splitmix64's finaliser: a bijection on u64 that spreads neighbours.
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("u{:016x}", z ^ (z >> 31))
}

fn random_keys() -> bool {
    std::env::var("ENGINE_KEYS").is_ok_and(|v| v == "random")
}

fn run(burst: usize, total: usize, sessions: bool) -> (f64, f64, f64) {
    let random = random_keys();
    let (p1, p2) = (free_port(), free_port());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Without sessions: both ends serve clear peers and the dialer opens
    // none (a switch for this comparison only, not a modparam).
    let cfg = |id: &str, me: u16, peer: u16, dir: &std::path::Path| {
        let mut c = config(id, me, &[peer], dir, |r| r.accept_clear_peers = !sessions);
        c.sessions = sessions;
        c
    };
    let q1 = Arc::new(Shared::create(1 << 15).unwrap());
    let delivered = Arc::new(AtomicU64::new(0));
    let e1 = Engine::start(
        cfg("n1", p1, p2, dirs[0].path()),
        q1.clone(),
        Some(Box::new(Counter(Arc::default()))),
    )
    .unwrap();
    let e2 = Engine::start(
        cfg("n2", p2, p1, dirs[1].path()),
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(Counter(delivered.clone()))),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Contact {
        domain: b"location".to_vec(),
        callid: b"bench-call-id@192.0.2.1".to_vec(),
        user_agent: b"bench/1.0".to_vec(),
        ruid: b"uloc-bench".to_vec(),
        expires: 1_800_000_000,
        ..Default::default()
    };
    let t0 = Instant::now();
    let cpu0 = cpu_secs();
    let mut i = 0;
    while i < total {
        for _ in 0..burst.min(total - i) {
            let user = aor(i, random);
            c.aor = user.clone().into_bytes();
            c.contact = format!("sip:{user}@192.0.2.1:5060").into_bytes();
            while q1
                .publish(&RecordRef::Contact {
                    op: Op::Upsert,
                    contact: c.as_ref(),
                })
                .is_err()
            {
                std::thread::sleep(Duration::from_micros(50));
            }
            i += 1;
        }
        assert!(q1.wait_durable(Duration::from_secs(30)), "not journaled");
    }
    let journaled = t0.elapsed();
    while delivered.load(Ordering::Relaxed) < total as u64 {
        assert!(t0.elapsed() < Duration::from_secs(300), "not delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let done = t0.elapsed();
    let cpu = cpu_secs() - cpu0;
    e1.stop();
    e2.stop();
    (
        total as f64 / journaled.as_secs_f64(),
        total as f64 / done.as_secs_f64(),
        cpu * 1e6 / total as f64,
    )
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    println!(
        "engine: publish → durable journal → delivered to a second engine (loopback), 3 runs each, {} keys",
        if random_keys() { "random" } else { "sequential" }
    );
    println!(
        "{:>6} {:>9} {:>26} {:>26} {:>22}",
        "burst",
        "records",
        "journaled rec/s (min–max)",
        "delivered rec/s (min–max)",
        "CPU µs/record, both"
    );
    let only: Option<usize> = std::env::var("ENGINE_BURST")
        .ok()
        .and_then(|v| v.parse().ok());
    for (burst, total) in [
        (1usize, 2_000usize),
        (10, 20_000),
        (100, 100_000),
        (1000, 200_000),
    ] {
        if only.is_some_and(|b| b != burst) {
            continue;
        }
        let runs: Vec<(f64, f64, f64)> = (0..3).map(|_| run(burst, total, true)).collect();
        let (jm, jl, jh) = stats(runs.iter().map(|r| r.0).collect());
        let (dm, dl, dh) = stats(runs.iter().map(|r| r.1).collect());
        let (cm, cl, ch) = stats(runs.iter().map(|r| r.2).collect());
        println!(
            "{burst:>6} {total:>9} {:>9.0} ({:>6.0}–{:>6.0}) {:>9.0} ({:>6.0}–{:>6.0}) {:>6.1} ({:>4.1}–{:>4.1})",
            jm, jl, jh, dm, dl, dh, cm, cl, ch
        );
    }
    if std::env::var("ENGINE_SESSIONS").is_ok_and(|v| v == "0") {
        return;
    }
    // What encrypted sessions cost: CPU per record with and without, in
    // this same run, interleaved (1000-record bursts).
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        on.push(run(1000, 200_000, true).2);
        off.push(run(1000, 200_000, false).2);
    }
    let (on_m, on_l, on_h) = stats(on);
    let (off_m, off_l, off_h) = stats(off);
    println!(
        "sessions: CPU µs/record {on_m:.2} ({on_l:.2}–{on_h:.2}) encrypted, \
         {off_m:.2} ({off_l:.2}–{off_h:.2}) clear: +{:.1} %",
        (on_m / off_m - 1.0) * 100.0
    );
}
