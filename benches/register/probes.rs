//! Probes: node 1's processes (CPU pinning, memory: shm and PSS) and the
//! lag probes.

use std::fs;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::Http;
use crate::support::*;
use crate::PROBE_IP;

/// PIDs whose process group is `pgid` (a node: Kamailio leads its group).
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // fields after "(comm)": state ppid pgrp ...
        let Some(after) = stat.rfind(')').map(|k| &stat[k + 1..]) else {
            continue;
        };
        if after.split_whitespace().nth(2) == Some(&pgid.to_string()) {
            out.push(pid);
        }
    }
    out
}

pub fn set_affinity(tid: i32, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by pointer with
    // its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Every thread of every process of group `pgid` onto `cpu`.
pub fn pin_group(pgid: u32, cpu: usize) {
    for pid in group_pids(pgid) {
        for t in fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() {
                set_affinity(tid, cpu);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    /// Kamailio shared memory in use (`core.shmmem` real_used), bytes
    pub shm_used: u64,
    /// its peak since start (max_used), bytes
    pub shm_max: u64,
    /// PSS summed over the node's processes, bytes
    pub pss: u64,
    pub procs: usize,
}

pub fn memory(node: &Node) -> Mem {
    let v = node.rpc("core.shmmem", json!([])).unwrap_or(Value::Null);
    let g = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let pids = group_pids(node.pid().unwrap_or(0));
    let mut pss = 0;
    for pid in &pids {
        let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for l in text.lines() {
            if let Some(r) = l.strip_prefix("Pss:") {
                pss += r
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    * 1024;
            }
        }
    }
    Mem {
        shm_used: g("real_used"),
        shm_max: g("max_used"),
        pss,
        procs: pids.len(),
    }
}

#[derive(Debug, Default)]
pub struct Probes {
    /// per probe: 200 OK at node 1 -> the last peer holds it, ms
    pub lags_ms: Vec<f64>,
    /// per probe: its 200 OK, s since the prober started
    pub at_s: Vec<f64>,
    /// probes registered (200 OK)
    pub registered: u64,
    /// probes some peer never showed within the timeout
    pub lost: u64,
    /// REGISTERs without a 200 OK
    pub failed: u64,
}

/// Every `every`, registers one user on node 1 (its own UDP socket), stamps
/// the 200 OK and polls each peer's usrloc until it holds the user.
pub fn probe_loop(
    origin: String,
    peers: Vec<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
    pin: bool,
) -> Probes {
    if pin {
        set_affinity(0, 1);
    }
    let sock = UdpSocket::bind((PROBE_IP, 0)).expect("binding the probe socket");
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let port = sock.local_addr().expect("addr").port();
    let mut https: Vec<Http> = peers.iter().map(|ip| Http::new(ip)).collect();
    let mut out = Probes::default();
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let slot = start + every * i as u32;
        let now = Instant::now();
        if slot > now {
            sleep(slot - now);
        }
        i += 1;
        let user = format!("lagprobe{i:06}");
        let call_id = format!("{user}-{}@{PROBE_IP}", std::process::id());
        let msg = format!(
            "REGISTER sip:{origin} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {PROBE_IP}:{port};branch=z9hG4bK-{user}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{origin}>;tag={user}\r\n\
             To: <sip:{user}@{origin}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{user}@{PROBE_IP}:{port}>\r\n\
             Expires: 3600\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let mut ok_at = None;
        'send: for _ in 0..6 {
            if sock
                .send_to(msg.as_bytes(), (origin.as_str(), SIP_PORT))
                .is_err()
            {
                continue;
            }
            loop {
                match sock.recv(&mut buf) {
                    Ok(k) => {
                        let t = Instant::now();
                        let r = String::from_utf8_lossy(&buf[..k]);
                        if !r.contains(&call_id) {
                            continue;
                        }
                        if r.starts_with("SIP/2.0 200") {
                            ok_at = Some(t);
                            break 'send;
                        }
                        if !r.starts_with("SIP/2.0 1") {
                            break 'send; // a failure reply
                        }
                    }
                    Err(_) => continue 'send, // retransmit
                }
            }
        }
        let Some(t0) = ok_at else {
            out.failed += 1;
            continue;
        };
        out.registered += 1;
        let mut seen = vec![false; https.len()];
        let mut last = t0;
        loop {
            for (k, h) in https.iter_mut().enumerate() {
                if !seen[k] && h.has(&user).unwrap_or(false) {
                    seen[k] = true;
                    last = Instant::now();
                }
            }
            if seen.iter().all(|&x| x) {
                out.lags_ms.push((last - t0).as_secs_f64() * 1e3);
                out.at_s.push((t0 - start).as_secs_f64());
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                out.lost += 1;
                break;
            }
            sleep(Duration::from_micros(300));
        }
    }
    out
}
