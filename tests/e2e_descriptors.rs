//! Descriptor exhaustion (issue 13, "Before authentication": accept
//! errors rate-limited, dials and the door still work), on real Kamailio
//! nodes: node 1's sersync process gets a low descriptor limit
//! (`prlimit`), then strangers from 20 addresses keep more connections
//! open to its sersync port than it has descriptors left, reopening each
//! one it drops.
//!
//! Meanwhile node 2 restarts, so node 1 must dial it again and accept
//! its dial; registrations on either node reach the other (node 1
//! applies node 2's through SER's RPC door); node 1 says it cannot
//! accept connections at most about once a second; its sersync process
//! is the same one at the end.
//!
//! Addresses 127.0.0.137–138 (the nodes) and 140–159 (the strangers).

#[path = "e2e_support/mod.rs"]
mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::*;

/// Descriptors node 1's sersync process may open beyond those it holds.
const SPARE_FDS: usize = 24;
/// Connections the strangers keep open (more than SPARE_FDS, fewer than
/// the cap on unauthenticated connections, 8 per address, 128 in all).
const STRANGERS: usize = 120;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// Keeps STRANGERS silent connections to `dst` open until `stop`,
/// reopening those dropped; how many were dropped.
fn hold(dst: SocketAddrV4, stop: &AtomicBool) -> u64 {
    let srcs: Vec<Ipv4Addr> = (0..20u8)
        .map(|j| Ipv4Addr::new(127, 0, 0, 140 + j))
        .collect();
    let open = |i: usize| connect_from(srcs[i % srcs.len()], dst, true);
    let mut conns: Vec<TcpStream> = (0..STRANGERS).map(open).collect();
    let mut dropped = 0;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        for (i, s) in conns.iter_mut().enumerate() {
            let dead = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if dead {
                *s = open(i);
                dropped += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    dropped
}

#[test]
fn out_of_descriptors_a_node_still_dials_accepts_and_applies() {
    let mut c = Cluster::start("descriptors", 137, 2);
    let pid = c.node(1).process_pid("sersync");
    let limit = open_fds(pid) + SPARE_FDS;
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("running prlimit");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dst = SocketAddrV4::new(c.node(1).ip.parse().expect("ip"), SERSYNC_PORT);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let (dropped, registered) = std::thread::scope(|s| {
        let strangers = s.spawn(|| hold(dst, &stop));
        let exhausted = wait_until(Duration::from_secs(15), || {
            count_log(c.node(1), &["cannot accept connections"]) > 0
        });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(
                exhausted,
                "node 1 never ran out of descriptors (limit {limit}, {} open)\n{}",
                open_fds(pid),
                c.node(1).log_tail(20)
            );
            // Node 2 restarts: node 1 dials it again, and accepts its dial.
            c.node_mut(2).stop().expect("stopping node 2");
            c.node_mut(2).start();
            c.wait_mesh_up(Duration::from_secs(60));
            let mut registered = 0;
            for (round, n) in [(0, 2), (1, 1), (2, 2)] {
                let regs: Vec<Reg> = (0..40)
                    .map(|i| Reg::new(format!("fd{round}x{i:02}"), 3600))
                    .collect();
                sipp_register(c.node(n), &regs, 40, &format!("fd{round}"));
                registered += regs.len();
            }
            wait_converged(
                &c.all(),
                Duration::from_secs(60),
                "contacts registered while node 1 is out of descriptors",
                expect_contacts(registered),
            );
            registered
        }));
        stop.store(true, Ordering::Relaxed);
        let dropped = strangers.join().expect("strangers");
        match result {
            Ok(r) => (dropped, r),
            Err(e) => std::panic::resume_unwind(e),
        }
    });
    let secs = t0.elapsed().as_secs() + 1;
    let failed = c.node(1).log_grep("cannot accept connections");
    eprintln!(
        "e2e descriptors: limit {limit}; {dropped} stranger connections dropped and \
         reopened in {secs} s; {registered} users registered; {} accept-failure lines; \
         first: {}",
        failed.len(),
        failed.first().map_or("", String::as_str)
    );
    assert!(
        failed.len() as u64 <= secs + 1,
        "accept failures logged {} times in {secs} s (at most once a second)",
        failed.len()
    );
    assert!(
        failed.iter().any(|l| l.contains("Too many open files")),
        "the accept failure says why:\n{}",
        failed.join("\n")
    );
    assert_eq!(
        c.node(1).process_pid("sersync"),
        pid,
        "node 1's sersync process is the one that started"
    );
    c.stop_all();
}
