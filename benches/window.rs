//! The crash window: how long a change lives only in SER (and the shared
//! queue) before the journal commit makes it durable. A node killed inside
//! it relies on the start-up comparison with SER's location table; with
//! durability "journal" a worker waits it out before save() returns.
//!
//! Workers (threads here, forked processes in SER: the queue is the same)
//! each publish one contact change at a fixed rate and time it from the
//! publish to the commit covering it (`wait_durable`, what durability
//! "journal" calls). The engine has a connected peer, so its network
//! thread reads the journal meanwhile, as in a cluster. Prints p50, p99
//! and max per load.
//!
//! Run: cargo bench --bench window   (WINDOW_SECS, default 5 per load)

mod engines;

use std::sync::Arc;
use std::time::{Duration, Instant};

use engines::{free_port, Counter};
use sersync::engine::Engine;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, RecordRef};

fn config(id: &str, me: u16, peer: u16, dir: &std::path::Path) -> sersync::config::Config {
    engines::config(id, me, &[peer], dir, |_| {})
}

/// One worker: `rate` changes/s for `secs`; the window of each, in µs.
fn worker(q: Arc<Shared>, id: usize, rate: u64, secs: u64) -> Vec<u64> {
    let mut c = Contact {
        domain: b"location".to_vec(),
        callid: b"window-call-id@192.0.2.1".to_vec(),
        user_agent: b"bench/1.0".to_vec(),
        ruid: b"uloc-window".to_vec(),
        path: b"<sip:edge1.example.net;lr>".to_vec(),
        received: b"sip:198.51.100.7:40312".to_vec(),
        expires: 1_900_000_000,
        ..Default::default()
    };
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let mut next = start;
    let mut out = Vec::new();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += interval;
        c.aor = format!("w{id}-user{}", i % 5000).into_bytes();
        c.contact = format!("sip:w{id}-user{}@192.0.2.1:5060", i % 5000).into_bytes();
        c.cseq = i as i32;
        i += 1;
        let t = Instant::now();
        q.publish(&RecordRef::Contact {
            op: Op::Upsert,
            contact: c.as_ref(),
        })
        .expect("queue full");
        assert!(q.wait_durable(Duration::from_secs(10)), "not journaled");
        out.push(t.elapsed().as_micros() as u64);
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("WINDOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (p1, p2) = (free_port(), free_port());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let q = Arc::new(Shared::create(1 << 15).unwrap());
    let e1 = Engine::start(
        config("n1", p1, p2, dirs[0].path()),
        q.clone(),
        Some(Box::new(Counter(Arc::default()))),
    )
    .unwrap();
    let e2 = Engine::start(
        config("n2", p2, p1, dirs[1].path()),
        Arc::new(Shared::create(64).unwrap()),
        Some(Box::new(Counter(Arc::default()))),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    println!("window: publish → journal commit, {secs} s per load, peer connected");
    println!("| workers × changes/s | total/s | p50 | p99 | max |");
    println!("|---:|---:|---:|---:|---:|");
    for (workers, rate) in [(1usize, 100u64), (1, 1000), (4, 250), (4, 1000), (8, 1000)] {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let q = q.clone();
                std::thread::spawn(move || worker(q, w, rate, secs))
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        println!(
            "| {workers} × {rate} | {} | {} | {} | {} |",
            all.len() as u64 / secs,
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(*all.last().unwrap())
        );
    }
    e1.stop();
    e2.stop();
}
