//! One catch-up of node 2, and what it measured.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::diag::*;
use crate::door::*;
use crate::support::*;
use crate::{FIRST_IP, POLL};

pub struct Run {
    pub door: Door,
    pub db_mode: u8,
    pub round: usize,
    /// node 2 start() called -> start() returned (Kamailio answers RPC)
    pub up_s: f64,
    /// start -> first contact in node 2's usrloc
    pub first_s: f64,
    /// start -> all N contacts in node 2's usrloc
    pub done_s: f64,
    pub n: usize,
    pub ok: bool,
    pub note: String,
}

impl Run {
    /// records/s from the first contact applied to the last: the door.
    pub fn apply_rate(&self) -> f64 {
        self.n as f64 / (self.done_s - self.first_s).max(1e-3)
    }
    /// records/s from node 2's start to the last contact: what an operator sees.
    pub fn catchup_rate(&self) -> f64 {
        self.n as f64 / self.done_s.max(1e-3)
    }
}

/// One catch-up of node 2 from a fresh directory.
#[allow(clippy::too_many_arguments)]
pub fn run_once(
    c: &mut Cluster,
    n: usize,
    door: Door,
    db_mode: u8,
    round: usize,
    label: &str,
    timeout: Duration,
    diag: Diag,
) -> Run {
    let dir = c.dir.join(format!("n2-{label}"));
    fs::create_dir_all(&dir).expect("node dir");
    let peers = vec![format!("tcp:127.0.0.{FIRST_IP}:{SERSYNC_PORT}")];
    let ip = format!("127.0.0.{}", FIRST_IP + 1);
    fs::write(
        dir.join("kamailio.cfg"),
        config(2, &ip, &dir, &peers, door, db_mode),
    )
    .expect("cfg");
    create_db(&dir.join("kamailio.db"));
    let node = c.node_mut(2);
    assert!(!node.is_running());
    node.dir = dir.clone();

    let busy = busy_note(&[]);
    let t0 = Instant::now();
    node.start();
    let up_s = t0.elapsed().as_secs_f64();

    let mut traces = Vec::new();
    let perf_data = dir.join("perf.data");
    let perf = if diag.perf {
        perf_start(&perf_data, None)
    } else {
        None
    };
    let rpc_dsc = if door == Door::Fifo {
        "JSONRPCS FIFO"
    } else {
        "JSONRPCS DATAGRAM"
    };
    let perf_rpc_data = dir.join("perf-jsonrpcs.data");
    let perf_rpc = if diag.perf_rpc {
        pid_of(node, rpc_dsc).and_then(|p| perf_start(&perf_rpc_data, Some(p)))
    } else {
        None
    };
    if diag.strace {
        for (what, dsc) in [("sersync", "sersync"), ("jsonrpcs", rpc_dsc)] {
            match pid_of(node, dsc) {
                Some(pid) => {
                    if let Some(s) = strace_start(pid, dir.join(format!("strace-{what}.txt"))) {
                        traces.push((what, s));
                    }
                }
                None => eprintln!("catchup: no process {dsc:?} in core.psx"),
            }
        }
    }
    if diag.strace || diag.perf || diag.perf_rpc {
        sleep(Duration::from_millis(300)); // let them attach
    }

    let via = door.other();
    let mut dg = None;
    let mut first = None;
    let mut done = None;
    let mut last_err = String::new();
    let mut last_count = 0;
    let mut timeline = Vec::new();
    while t0.elapsed() < timeout {
        if diag.timeline {
            if let Ok(v) = rpc(node, via, &mut dg, "sersync.status", json!([])) {
                let st = SersyncStatus::parse(&v);
                let recv = st.peers.first().map_or(0, |p| p.received);
                timeline.push((
                    t0.elapsed().as_secs_f64(),
                    None,
                    recv,
                    st.applied,
                    st.apply_pending,
                ));
            }
        }
        match contacts(node, via, &mut dg) {
            Ok(k) => {
                last_count = k;
                let t = t0.elapsed().as_secs_f64();
                if diag.timeline {
                    timeline.push((t, Some(k), 0, 0, 0));
                }
                if k > 0 && first.is_none() {
                    first = Some(t);
                }
                if k >= n as u64 {
                    done = Some(t);
                    break;
                }
            }
            Err(e) => last_err = e,
        }
        sleep(POLL);
    }
    let mut note;
    if let Some(p) = perf {
        let _ = strace_stop(p);
        println!("--- perf record -a -g, {} door, db_mode {db_mode}: CPU by process, then by symbol ---\n{}", door.name(), perf_report(&perf_data));
    }
    if let Some(p) = perf_rpc {
        let _ = strace_stop(p);
        let d = perf_rpc_data.display();
        println!(
            "--- perf --call-graph dwarf on {rpc_dsc}, db_mode {db_mode}: self time by symbol, then callers of the top one ---\n{}",
            sh(&format!(
                "perf report -i {d} --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep '%' | grep -v '^#' | head -25; \
                 perf report -i {d} --no-children --sort sym --stdio -g caller,0.5,callee --percent-limit 5 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60"
            ))
        );
    }
    if diag.timeline {
        // one line per change of sersync.status (republished every 200 ms)
        println!("--- timeline, {} door, db_mode {db_mode}: t(s) usrloc_contacts | status received applied apply_pending ---", door.name());
        let mut last_contacts = 0;
        let mut last_line = (u64::MAX, u64::MAX, u64::MAX);
        for (t, k, recv, applied, pending) in &timeline {
            match k {
                Some(k) => last_contacts = *k,
                None => {
                    if (*recv, *applied, *pending) != last_line {
                        last_line = (*recv, *applied, *pending);
                        println!(
                            "  {t:6.2}  {last_contacts:>7} | {recv:>7} {applied:>7} {pending:>7}"
                        );
                    }
                }
            }
        }
        if let Some(d) = done {
            println!("  {d:6.2}  {n:>7} | (all contacts in usrloc)");
        }
    }
    for (what, s) in traces {
        let text = strace_stop(s);
        println!(
            "--- strace -c -f, {what} process, {} door, db_mode {db_mode} ---\n{}",
            door.name(),
            text.trim_end()
        );
    }
    // sersync.status is republished every 200 ms: let `applied` catch up
    let mut st = node.sersync_status();
    if done.is_some() {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5)
            && st.as_ref().is_ok_and(|s| s.applied < n as u64)
        {
            sleep(Duration::from_millis(50));
            st = node.sersync_status();
        }
    }
    let dump = dump_brief_count(node);
    let mut ok = done.is_some();
    match (&st, &dump) {
        (Ok(st), Ok(d)) => {
            if st.applied != n as u64 || *d != n || st.applied_via_db != 0 || st.apply_failures != 0
            {
                ok = false;
            }
            note = format!(
                "ul.dump {d} AoRs, applied {}, peer received {}{}, via_db {}, failures {}{}",
                st.applied,
                st.peers.first().map_or(0, |p| p.received),
                snapshot_received(st).map_or(String::new(), |k| format!(" + snapshot rows {k}")),
                st.applied_via_db,
                st.apply_failures,
                if st.last_error.is_empty() {
                    String::new()
                } else {
                    format!(", last_error {:?}", st.last_error)
                }
            );
        }
        (st, d) => {
            ok = false;
            note = format!(
                "status {:?} / ul.dump {:?}",
                st.as_ref().err(),
                d.as_ref().err()
            );
        }
    }
    if done.is_none() {
        note.push_str(&format!(
            "; TIMEOUT at {last_count} contacts after {timeout:?} {last_err}"
        ));
        let errs = node.log_grep("ERROR");
        for l in errs.iter().rev().take(5) {
            note.push_str(&format!("\n      log: {l}"));
        }
    }
    drop(dg);
    if let Err(e) = node.stop() {
        eprintln!("catchup: {e}");
    }
    if !busy.is_empty() {
        note.push_str(&format!("; {busy}"));
    }
    Run {
        door,
        db_mode,
        round,
        up_s,
        first_s: first.unwrap_or(f64::NAN),
        done_s: done.unwrap_or(f64::NAN),
        n,
        ok,
        note,
    }
}
