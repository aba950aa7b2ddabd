//! A flood of connections that never authenticate, against a live engine
//! replicating to its peer (issue 13, "Before authentication"): hundreds
//! of connections from many addresses announcing near-16 MiB frames and
//! sending megabytes, or holding silent, reopened as the engine drops
//! them. Replication goes on throughout, the process's memory stays
//! bounded, the per-address cap and the handshake deadline hold.
//!
//! Attack sources 127.0.0.100–140 only (the engines dial from 127.0.0.1).

#[path = "ports/mod.rs"]
mod ports;
use ports::{connect_from, connect_when_listening, free_port};

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sersync::apply::Sink;
use sersync::config::RawConfig;
use sersync::engine::Engine;
use sersync::error::ApplyError;
use sersync::queue::Shared;
use sersync::record::{Contact, Op, Record, RecordRef};

const SECRET: &[u8] = b"flood-test-secret";
/// What the flood may add to this process's resident memory (engines,
/// their journals' caches and the attacking threads all live in it). The
/// engine reads at most a handshake's bytes from each connection that
/// has not authenticated; before that bound, one connection of this
/// flood alone could hold 16 MiB.
const RSS_GROWTH_MAX_KIB: u64 = 24 << 10;
/// The engine's caps (src/net/mod.rs).
const MAX_PENDING_PER_SOURCE: usize = 8;

struct Count(Arc<Mutex<usize>>);

impl Sink for Count {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        *self.0.lock().unwrap() += records.len();
        Ok(())
    }
}

struct Pair {
    port1: u16,
    shared1: Arc<Shared>,
    applied2: Arc<Mutex<usize>>,
    _engines: Vec<Engine>,
    _dirs: Vec<tempfile::TempDir>,
}

fn pair() -> Pair {
    let (p1, p2) = (free_port(), free_port());
    let mut engines = Vec::new();
    let mut dirs = Vec::new();
    let shared1 = Arc::new(Shared::create(1024).unwrap());
    let applied2 = Arc::new(Mutex::new(0));
    for (id, me, peer) in [("n1", p1, p2), ("n2", p2, p1)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RawConfig {
            node_id: id.into(),
            listen: format!("tcp:127.0.0.1:{me}"),
            peers: vec![format!("tcp:127.0.0.1:{peer}")],
            secret: SECRET.to_vec(),
            journal: dir.path().join("j.db").display().to_string(),
            ..Default::default()
        }
        .check()
        .unwrap();
        let (shared, sink) = if id == "n1" {
            (shared1.clone(), Count(Arc::default()))
        } else {
            (
                Arc::new(Shared::create(64).unwrap()),
                Count(applied2.clone()),
            )
        };
        engines.push(Engine::start(cfg, shared, Some(Box::new(sink))).unwrap());
        dirs.push(dir);
    }
    drop(connect_when_listening(p1));
    Pair {
        port1: p1,
        shared1,
        applied2,
        _engines: engines,
        _dirs: dirs,
    }
}

impl Pair {
    /// Publishes on n1 and waits until n2 applied it; how long it took.
    fn replicates(&self, user: u32) -> Duration {
        let t0 = Instant::now();
        let before = *self.applied2.lock().unwrap();
        let c = Contact {
            domain: b"location".to_vec(),
            aor: format!("u{user}").into_bytes(),
            contact: format!("sip:u{user}@192.0.2.1").into_bytes(),
            ..Default::default()
        };
        self.shared1
            .publish(&RecordRef::Contact {
                op: Op::Upsert,
                contact: c.as_ref(),
            })
            .unwrap();
        while *self.applied2.lock().unwrap() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "replication stopped under the flood (change {user})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t0.elapsed()
    }
}

/// Resident memory of this process in KiB.
fn rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// One attacking connection: it announces a frame just under 16 MiB and
/// sends up to `budget` bytes of it, or (`silent`) sends nothing.
struct Attacker {
    s: TcpStream,
    sent: usize,
    silent: bool,
}

/// Keeps `n` attacking connections from the addresses `srcs` open,
/// reopening each one the engine drops, until `stop`. Counts bytes sent
/// and reopenings.
fn flood(
    port: u16,
    srcs: Vec<Ipv4Addr>,
    n: usize,
    budget: usize,
    stop: &AtomicBool,
    sent: &AtomicU64,
    reopened: &AtomicU64,
) {
    let chunk = vec![0x5au8; 64 << 10];
    let open = |i: usize| Attacker {
        s: connect_from(
            srcs[i % srcs.len()],
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            true,
        ),
        sent: 0,
        silent: i % 2 == 1,
    };
    let mut conns: Vec<Attacker> = (0..n).map(open).collect();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        for (i, a) in conns.iter_mut().enumerate() {
            let mut dead = false;
            if !a.silent && a.sent < budget {
                let res = if a.sent == 0 {
                    a.s.write(&((16u32 << 20) - 16).to_be_bytes())
                } else {
                    a.s.write(&chunk[..chunk.len().min(budget - a.sent)])
                };
                match res {
                    Ok(k) => {
                        a.sent += k;
                        sent.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => dead = true,
                }
            }
            match a.s.read(&mut buf) {
                Ok(0) => dead = true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => dead = true,
            }
            if dead {
                *a = open(i);
                reopened.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Has the engine closed `s` (EOF or reset), after its challenge?
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_flood_of_unauthenticated_connections_costs_bounded_memory_and_stops_nothing() {
    let p = pair();
    p.replicates(0);
    // The engines' steady state: journals open, connections up.
    for u in 1..20 {
        p.replicates(u);
    }
    let rss_before = rss_kib();

    // -- Per-address cap: 12 silent connections from one address; the 4
    // oldest are dropped for the newest, 8 wait for their handshake.
    let one = Ipv4Addr::new(127, 0, 0, 140);
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..MAX_PENDING_PER_SOURCE + 4 {
        held.push(connect_from(
            one,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, p.port1),
            true,
        ));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let closed: Vec<bool> = held.iter_mut().map(is_closed).collect();
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        4,
        "connections closed among 12 unauthenticated ones from one address \
         (cap {MAX_PENDING_PER_SOURCE}): {closed:?}"
    );
    assert!(
        closed[..4].iter().all(|c| *c),
        "the oldest ones go first: {closed:?}"
    );

    // -- The flood: 4 threads × 30 connections from 40 addresses (within
    // the global cap, so that each one stays until the engine judges it);
    // half announce a near-16 MiB frame and send up to 4 MiB of it, half
    // stay silent; each one dropped is opened again at once.
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let reopened = AtomicU64::new(0);
    let mut rss_max = 0;
    let mut slowest = Duration::ZERO;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for k in 0..4u8 {
            let srcs = (0..10u8)
                .map(|j| Ipv4Addr::new(127, 0, 0, 100 + k * 10 + j))
                .collect();
            let (stop, sent, reopened) = (&stop, &sent, &reopened);
            s.spawn(move || flood(p.port1, srcs, 30, 4 << 20, stop, sent, reopened));
        }
        let mut user = 100;
        while t0.elapsed() < Duration::from_secs(8) {
            slowest = slowest.max(p.replicates(user));
            user += 1;
            rss_max = rss_max.max(rss_kib());
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let rss_after = rss_kib();
    eprintln!(
        "flood: {} MiB sent by attackers, {} connections dropped and reopened; \
         RSS {} MiB before, at most {} MiB during, {} MiB after; \
         slowest change replicated in {slowest:?}",
        sent.load(Ordering::Relaxed) >> 20,
        reopened.load(Ordering::Relaxed),
        rss_before >> 10,
        rss_max >> 10,
        rss_after >> 10
    );
    assert!(
        reopened.load(Ordering::Relaxed) > 100,
        "the engine dropped connections that sent a frame it will not take"
    );
    assert!(
        rss_max.saturating_sub(rss_before) < RSS_GROWTH_MAX_KIB,
        "resident memory grew from {rss_before} KiB to {rss_max} KiB under the flood \
         (bound: {RSS_GROWTH_MAX_KIB} KiB)"
    );

    // -- The handshake deadline: the 8 held ones are closed within 5 s
    // of their start (the flood may have dropped them sooner).
    for (i, s) in held.iter_mut().enumerate() {
        assert!(is_closed(s), "held connection {i} is still open after 8 s");
    }
    p.replicates(99_999);
}
