//! A flood of unauthenticated connections against a live Kamailio node
//! under REGISTER load (issue 13, "Before authentication"): hundreds of
//! connections from 30 addresses, half announcing near-16 MiB frames and
//! sending megabytes, half silent, each reopened as the node drops it.
//! sipp registering on the attacked node sees no failure, its contacts
//! reach the peer, and the node's sersync process stays within
//! RSS_GROWTH_MAX_KIB of where it started.
//!
//! Addresses 127.0.0.221–222 (the nodes) and 225–254 (the attackers).

#[path = "e2e_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// What the flood may add to the sersync process's resident memory.
/// Before the handshake bound, one connection of this flood alone could
/// make it hold 16 MiB.
const RSS_GROWTH_MAX_KIB: u64 = 24 << 10;

/// The PID of the node's sersync process (core.psx names it "sersync").
fn sersync_pid(node: &Node) -> u32 {
    let v = node.rpc("core.psx", json!([])).expect("core.psx");
    let list = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    list.iter()
        .filter(|p| p.get("DSC").and_then(Value::as_str) == Some("sersync"))
        .find_map(|p| p.get("PID").and_then(Value::as_u64))
        .map(|pid| pid as u32)
        .unwrap_or_else(|| panic!("no sersync process in core.psx on {}", node.name()))
}

/// Resident memory of a process in KiB (/proc/PID/status, VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

struct Attacker {
    s: TcpStream,
    sent: usize,
    silent: bool,
}

/// Keeps `n` connections from `srcs` to `dst` open until `stop`: the
/// even ones announce a frame just under 16 MiB and send up to `budget`
/// bytes of it, the odd ones send nothing; each one the node drops is
/// opened again.
fn flood(
    dst: SocketAddrV4,
    srcs: &[Ipv4Addr],
    n: usize,
    budget: usize,
    stop: &AtomicBool,
) -> (u64, u64) {
    let chunk = vec![0x5au8; 64 << 10];
    let open = |i: usize| Attacker {
        s: connect_from(srcs[i % srcs.len()], dst, true),
        sent: 0,
        silent: i % 2 == 1,
    };
    let mut conns: Vec<Attacker> = (0..n).map(open).collect();
    let (mut sent, mut reopened) = (0u64, 0u64);
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
                        sent += k as u64;
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
                reopened += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (sent, reopened)
}

#[test]
fn a_flood_of_strangers_stops_no_registration_and_costs_bounded_memory() {
    let c = Cluster::start("flood", 221, 2);
    let (n1, n2) = (c.node(1), c.node(2));
    let pid = sersync_pid(n1);
    let rss_before = rss_kib(pid);
    let dst = SocketAddrV4::new(n1.ip.parse().expect("node address"), SERSYNC_PORT);

    let stop = AtomicBool::new(false);
    let registered = AtomicUsize::new(0);
    let (mut sent, mut reopened, mut rss_max) = (0u64, 0u64, rss_before);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let attackers: Vec<_> = (0..3u8)
            .map(|k| {
                let srcs: Vec<Ipv4Addr> = (0..10u8)
                    .map(|j| Ipv4Addr::new(127, 0, 0, 225 + k * 10 + j))
                    .collect();
                let stop = &stop;
                s.spawn(move || flood(dst, &srcs, 40, 4 << 20, stop))
            })
            .collect();
        let sampler = s.spawn(|| {
            let mut max = 0;
            while !stop.load(Ordering::Relaxed) {
                max = max.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            max
        });
        // REGISTER load on the attacked node meanwhile: 40 users per sipp
        // run, each run asserting no failed transaction.
        let mut round = 0;
        while t0.elapsed() < Duration::from_secs(20) {
            let regs: Vec<Reg> = (0..40)
                .map(|i| Reg::new(format!("fl{round:03}x{i:02}"), 3600))
                .collect();
            sipp_register(n1, &regs, 40, &format!("fl{round:03}"));
            registered.fetch_add(regs.len(), Ordering::Relaxed);
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for a in attackers {
            let (s, r) = a.join().expect("attacker");
            sent += s;
            reopened += r;
        }
        rss_max = rss_max.max(sampler.join().expect("sampler"));
    });
    let registered = registered.load(Ordering::Relaxed);
    eprintln!(
        "e2e flood: {} MiB sent by attackers, {reopened} connections dropped and reopened; \
         {registered} users registered; sersync RSS {} KiB before, at most {} KiB during",
        sent >> 20,
        rss_before,
        rss_max
    );
    assert!(reopened > 100, "the node dropped the attacking connections");
    assert!(
        rss_max < rss_before + RSS_GROWTH_MAX_KIB,
        "sersync's memory grew from {rss_before} KiB to {rss_max} KiB under the flood \
         (bound: +{RSS_GROWTH_MAX_KIB} KiB)"
    );
    // Everything registered on the attacked node reached its peer.
    let mut last = 0;
    let ok = wait_until(Duration::from_secs(30), || {
        last = count_prefix(&n2.contacts(), "fl");
        last >= registered
    });
    assert!(
        ok,
        "{} holds {last} of the {registered} contacts registered on {} under the flood\n{}",
        n2.name(),
        n1.name(),
        n1.status().summary()
    );
}
