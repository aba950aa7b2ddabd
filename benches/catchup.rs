//! Catch-up throughput through each of SER's RPC doors (see bench/README.md).
//!
//! Two Kamailio nodes with sersync on 127.0.0.41 and .42. Node 2 stopped,
//! N distinct users register on node 1 (sipp, UDP); then, for each run, node
//! 2 starts from a fresh directory (empty journal and database, so node 1
//! sends its whole journal) and we time how long until node 2's usrloc
//! holds all N contacts. Configurations: the door sersync applies through
//! (jsonrpcs FIFO, jsonrpcs datagram socket) x node 2's usrloc db_mode (0:
//! memory only, 1: SQLite write-through).
//!
//! Run: `cargo bench --bench catchup` (needs build/sersync.so: `make`).
//! Environment: CATCHUP_N (20000), CATCHUP_RUNS (5), CATCHUP_MODES ("0,1"),
//! CATCHUP_RATE (sipp REGISTER/s, 2000), CATCHUP_BUDGET_S (480: no new run
//! starts after that much wall time), CATCHUP_TIMEOUT_S (120 per run),
//! CATCHUP_DIAG (empty; a comma list of `timeline`, `strace`, `perf`,
//! `perf-rpc` (DWARF call graphs of the door's jsonrpcs process): after
//! the measured runs, one extra, unmeasured run per door of the first
//! db_mode, with a timeline of node 2's usrloc count against sersync.status'
//! received/applied counters, `strace -c -f` of the sersync process and of
//! that door's jsonrpcs process, and/or a system-wide `perf record -g`;
//! `timeline-all` prints the timeline of every measured run as well).
//!
//! Progress is read from node 2's usrloc statistics
//! (`usrloc:location_contacts`, live) through the door sersync does NOT use
//! in that run (jsonrpcs serves its FIFO and its datagram socket in two
//! separate processes), so the polling does not queue behind the applier.

mod common;
#[path = "../tests/e2e_support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use support::*;

const NAME: &str = "bench-catchup";
const FIRST_IP: u8 = 41;
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    Fifo,
    Dgram,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Fifo => "FIFO",
            Door::Dgram => "dgram",
        }
    }
    fn other(self) -> Door {
        match self {
            Door::Fifo => Door::Dgram,
            Door::Dgram => Door::Fifo,
        }
    }
}

/// The harness' node configuration, adapted: jsonrpcs serves its FIFO and a
/// datagram socket (transport 6) on every node, usrloc runs `db_mode`, and
/// sersync applies through `door`. (The harness has no per-node knobs for
/// these yet; see bench/README.md.)
fn config(index: usize, ip: &str, dir: &Path, peers: &[String], door: Door, db_mode: u8) -> String {
    let module = required_module();
    let cfg = node_config(
        index,
        ip,
        dir,
        peers,
        module.as_deref(),
        &format!("e2e-secret-{NAME}"),
    );
    let d = dir.to_str().expect("utf-8 dir");
    // jsonrpcs' transport bits: 1 HTTP, 2 FIFO, 4 datagram; keep the
    // template's, add the datagram socket.
    let key = "modparam(\"jsonrpcs\", \"transport\", ";
    let line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with(key))
        .expect("node template changed: no jsonrpcs transport modparam")
        .to_string();
    let bits: u32 = line
        .trim()
        .trim_start_matches(key)
        .trim_end_matches(')')
        .trim()
        .parse()
        .expect("transport bits");
    let mut out = cfg;
    cfg_replace(
        &mut out,
        &line,
        &format!(
            "{key}{})\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"{d}/rpc.sock\")",
            bits | 4
        ),
    );
    cfg_replace(
        &mut out,
        "modparam(\"usrloc\", \"db_mode\", 1)",
        &format!("modparam(\"usrloc\", \"db_mode\", {db_mode})"),
    );
    if door == Door::Dgram {
        apply_through_dgram(&mut out, dir);
    }
    out
}

/// A JSON-RPC client on jsonrpcs' datagram socket (the reply comes back to
/// our bound socket).
struct DgramRpc {
    sock: UnixDatagram,
    local: PathBuf,
    server: PathBuf,
    id: u64,
}

impl DgramRpc {
    fn new(node_dir: &Path) -> DgramRpc {
        let local = node_dir.join(format!("bench_{}_sock", std::process::id()));
        let _ = fs::remove_file(&local);
        let sock = UnixDatagram::bind(&local).expect("binding the bench's datagram socket");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        DgramRpc {
            sock,
            local,
            server: node_dir.join("rpc.sock"),
            id: 0,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.id += 1;
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": self.id});
        self.sock
            .send_to(req.to_string().as_bytes(), &self.server)
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self
                .sock
                .recv(&mut buf)
                .map_err(|e| format!("{method}: no reply: {e}"))?;
            let v: Value = serde_json::from_slice(&buf[..n]).map_err(|e| format!("reply: {e}"))?;
            if v.get("id").and_then(Value::as_u64) != Some(self.id) {
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(format!("{method}: {err}"));
            }
            return v
                .get("result")
                .cloned()
                .ok_or_else(|| format!("{method}: no result"));
        }
    }
}

impl Drop for DgramRpc {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.local);
    }
}

/// RPC through a chosen door of a node.
fn rpc(
    node: &Node,
    via: Door,
    dgram: &mut Option<DgramRpc>,
    method: &str,
    params: Value,
) -> Result<Value, String> {
    match via {
        Door::Fifo => node.rpc_timeout(method, params, Duration::from_secs(5)),
        Door::Dgram => dgram
            .get_or_insert_with(|| DgramRpc::new(&node.dir))
            .call(method, params),
    }
}

/// usrloc's live contact count (`usrloc:location_contacts`).
fn contacts(node: &Node, via: Door, dgram: &mut Option<DgramRpc>) -> Result<u64, String> {
    let v = rpc(
        node,
        via,
        dgram,
        "stats.get_statistics",
        json!(["location_contacts"]),
    )?;
    location_contacts(&v)
}

/// AORs in `ul.dump brief` (the full dump of 20,000 contacts does not fit
/// the nodes' 16 MB of private memory).
fn dump_brief_count(node: &Node) -> Result<usize, String> {
    let v = node.rpc_timeout("ul.dump", json!(["brief"]), Duration::from_secs(30))?;
    let doms = v
        .get("Domains")
        .and_then(Value::as_array)
        .ok_or("no Domains")?;
    let mut n = 0;
    for d in doms {
        let aors = d
            .pointer("/Domain/AoRs")
            .and_then(Value::as_array)
            .ok_or("no AoRs")?;
        n += aors.len();
    }
    Ok(n)
}

/// PIDs of a node's processes whose description is `dsc` (core.psx).
fn pid_of(node: &Node, dsc: &str) -> Option<u32> {
    let v = node.rpc("core.psx", json!([])).ok()?;
    let list: Vec<&Value> = match &v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    list.iter()
        .find(|p| p.get("DSC").and_then(Value::as_str) == Some(dsc))
        .and_then(|p| p.get("PID").and_then(Value::as_u64))
        .map(|p| p as u32)
}

struct Run {
    door: Door,
    db_mode: u8,
    round: usize,
    /// node 2 start() called -> start() returned (Kamailio answers RPC)
    up_s: f64,
    /// start -> first contact in node 2's usrloc
    first_s: f64,
    /// start -> all N contacts in node 2's usrloc
    done_s: f64,
    n: usize,
    ok: bool,
    note: String,
}

impl Run {
    /// records/s from the first contact applied to the last: the door.
    fn apply_rate(&self) -> f64 {
        self.n as f64 / (self.done_s - self.first_s).max(1e-3)
    }
    /// records/s from node 2's start to the last contact: what an operator sees.
    fn catchup_rate(&self) -> f64 {
        self.n as f64 / self.done_s.max(1e-3)
    }
}

#[derive(Clone, Copy, Default)]
struct Diag {
    timeline: bool,
    strace: bool,
    perf: bool,
    /// perf with DWARF call graphs on the door's jsonrpcs process only
    perf_rpc: bool,
}

struct Strace {
    child: Child,
    out: PathBuf,
}

fn strace_start(pid: u32, out: PathBuf) -> Option<Strace> {
    let child = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Strace { child, out })
}

fn perf_start(out: &Path, pid: Option<u32>) -> Option<Strace> {
    let mut cmd = Command::new("perf");
    match pid {
        None => cmd.args(["record", "-a", "-g", "-q", "-o"]).arg(out),
        Some(p) => cmd
            .args([
                "record",
                "--call-graph",
                "dwarf,16384",
                "-q",
                "-p",
                &p.to_string(),
                "-o",
            ])
            .arg(out),
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Strace {
        child,
        out: out.to_path_buf(),
    })
}

/// Where the CPU went, by process and by DSO/symbol (top lines).
fn perf_report(data: &Path) -> String {
    let d = data.display();
    sh(&format!(
        "perf report -i {d} --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | grep '%' | head -12; \
         echo '  -- top symbols --'; \
         perf report -i {d} --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep '%' | head -40"
    ))
}

fn strace_stop(mut s: Strace) -> String {
    // SAFETY: SIGINT to our own child, by PID; strace then detaches and
    // writes its summary.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGINT);
    }
    let _ = s.child.wait();
    fs::read_to_string(&s.out).unwrap_or_default()
}

/// One catch-up of node 2 from a fresh directory.
#[allow(clippy::too_many_arguments)]
fn run_once(
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

fn main() {
    let n: usize = env_or("CATCHUP_N", 20_000);
    let runs: usize = env_or("CATCHUP_RUNS", 5);
    let rate: u32 = env_or("CATCHUP_RATE", 2000);
    let budget = Duration::from_secs(env_or("CATCHUP_BUDGET_S", 480));
    let timeout = Duration::from_secs(env_or("CATCHUP_TIMEOUT_S", 120));
    let diag_env = std::env::var("CATCHUP_DIAG").unwrap_or_default();
    let diag = Diag {
        timeline: diag_env.split(',').any(|d| d.trim() == "timeline"),
        strace: diag_env.contains("strace"),
        perf: diag_env.split(',').any(|d| d.trim() == "perf"),
        perf_rpc: diag_env.contains("perf-rpc"),
    };
    let modes: Vec<u8> = std::env::var("CATCHUP_MODES")
        .unwrap_or_else(|_| "0,1".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let started = Instant::now();

    println!("catchup: N={n} runs={runs} db_modes={modes:?} sipp rate={rate}/s");
    println!("machine: {}", machine());
    println!("module: {}", module_sum());

    // Both nodes up once (the harness' start), then node 2 stopped and node
    // 1 restarted in db_mode 0 (only to register quickly; node 1 is the
    // sender, its usrloc mode does not enter the measurement).
    let mut c = Cluster::start(NAME, FIRST_IP, 2);
    c.node_mut(2).stop().expect("stopping node 2");
    {
        let n1 = c.node_mut(1);
        n1.stop().expect("stopping node 1");
        let peers = vec![format!("tcp:127.0.0.{}:{SERSYNC_PORT}", FIRST_IP + 1)];
        let ip = n1.ip.clone();
        let dir = n1.dir.clone();
        fs::write(
            dir.join("kamailio.cfg"),
            config(1, &ip, &dir, &peers, Door::Fifo, 0),
        )
        .expect("cfg");
        n1.start();
    }
    let regs: Vec<Reg> = (0..n)
        .map(|i| Reg::new(format!("cu{i:06}"), 3600))
        .collect();
    let t = Instant::now();
    sipp_register(c.node(1), &regs, rate, "catchup");
    let reg_s = t.elapsed().as_secs_f64();
    let n1 = c.node(1);
    let journaled = wait_journaled(n1, n as u64, Duration::from_secs(60));
    let st1 = n1.status();
    assert!(
        journaled && st1.queue_dropped == 0,
        "node 1 did not journal all {n}: {}",
        st1.summary()
    );
    println!(
        "registered {n} users on node 1 in {reg_s:.1} s; node 1 journal last_seq {}",
        st1.last_seq
    );

    let mut results: Vec<Run> = Vec::new();
    let mut skipped = Vec::new();
    for &m in &modes {
        for round in 1..=runs {
            // alternate which door goes first, so slow drift hits both
            let order = if round % 2 == 1 {
                [Door::Fifo, Door::Dgram]
            } else {
                [Door::Dgram, Door::Fifo]
            };
            for door in order {
                if started.elapsed() > budget {
                    skipped.push(format!("db_mode {m} {} round {round}", door.name()));
                    continue;
                }
                let label = format!("m{m}-r{round}-{}", door.name().to_lowercase());
                // `timeline-all`: the (cheap) timeline in the measured runs too
                let d = Diag {
                    timeline: diag_env.contains("timeline-all"),
                    ..Diag::default()
                };
                let r = run_once(&mut c, n, door, m, round, &label, timeout, d);
                println!(
                    "run db_mode {m} {:5} round {round}: up {:.2} s, first contact {:.2} s, all {n} {:.2} s -> apply {:.0} rec/s, catch-up {:.0} rec/s{} [{}]",
                    door.name(),
                    r.up_s,
                    r.first_s,
                    r.done_s,
                    r.apply_rate(),
                    r.catchup_rate(),
                    if r.ok { "" } else { " FAILED" },
                    r.note
                );
                results.push(r);
            }
        }
    }
    if diag.timeline || diag.strace || diag.perf || diag.perf_rpc {
        let m = modes.first().copied().unwrap_or(0);
        for door in [Door::Fifo, Door::Dgram] {
            let label = format!("m{m}-diag-{}", door.name().to_lowercase());
            let r = run_once(&mut c, n, door, m, 0, &label, timeout, diag);
            println!(
                "diagnostic run (not counted) db_mode {m} {}: all {n} in {:.2} s (apply {:.0} rec/s, perturbed by {diag_env}) [{}]",
                door.name(),
                r.done_s,
                r.apply_rate(),
                r.note
            );
        }
    }
    let st1 = c.node(1).status();
    println!("node 1 after the runs: {}", st1.summary());
    c.stop_all();

    println!("\nN = {n} records; apply = first contact in node 2's usrloc -> all N; catch-up = node 2 start -> all N");
    println!(
        "{:<22} {:>4}  {:>26}  {:>26}  {:>10}",
        "configuration",
        "runs",
        "apply rec/s median (min-max)",
        "catch-up rec/s med (min-max)",
        "catch-up s"
    );
    for &m in &modes {
        for door in [Door::Fifo, Door::Dgram] {
            let rs: Vec<&Run> = results
                .iter()
                .filter(|r| r.db_mode == m && r.door == door && r.ok)
                .collect();
            let failed = results
                .iter()
                .filter(|r| r.db_mode == m && r.door == door && !r.ok)
                .count();
            if rs.is_empty() {
                if failed > 0 {
                    println!(
                        "{:<22} {:>4}  all {failed} failed",
                        format!("db_mode {m}, {}", door.name()),
                        0
                    );
                }
                continue;
            }
            let a: Vec<f64> = rs.iter().map(|r| r.apply_rate()).collect();
            let cu: Vec<f64> = rs.iter().map(|r| r.catchup_rate()).collect();
            let secs: Vec<f64> = rs.iter().map(|r| r.done_s).collect();
            let (amin, amax) = minmax(&a);
            let (cmin, cmax) = minmax(&cu);
            println!(
                "{:<22} {:>4}  {:>9.0} ({:>6.0}-{:>6.0})  {:>9.0} ({:>6.0}-{:>6.0})  {:>10.2}{}",
                format!("db_mode {m}, {}", door.name()),
                rs.len(),
                median(&a),
                amin,
                amax,
                median(&cu),
                cmin,
                cmax,
                median(&secs),
                if failed > 0 {
                    format!("  ({failed} failed)")
                } else {
                    String::new()
                }
            );
        }
        // dgram / FIFO within each round
        let ratios: Vec<(usize, f64, f64)> = (1..=runs)
            .filter_map(|round| {
                let f = results
                    .iter()
                    .find(|r| r.db_mode == m && r.round == round && r.door == Door::Fifo && r.ok)?;
                let d = results.iter().find(|r| {
                    r.db_mode == m && r.round == round && r.door == Door::Dgram && r.ok
                })?;
                Some((
                    round,
                    d.apply_rate() / f.apply_rate(),
                    d.catchup_rate() / f.catchup_rate(),
                ))
            })
            .collect();
        if !ratios.is_empty() {
            println!(
                "{:<22} {:>4}  {:>9.2} ({:>6.2}-{:>6.2})  {:>9.2} ({:>6.2}-{:>6.2})",
                format!("db_mode {m}, dgram/FIFO"),
                ratios.len(),
                median(&ratios.iter().map(|r| r.1).collect::<Vec<_>>()),
                minmax(&ratios.iter().map(|r| r.1).collect::<Vec<_>>()).0,
                minmax(&ratios.iter().map(|r| r.1).collect::<Vec<_>>()).1,
                median(&ratios.iter().map(|r| r.2).collect::<Vec<_>>()),
                minmax(&ratios.iter().map(|r| r.2).collect::<Vec<_>>()).0,
                minmax(&ratios.iter().map(|r| r.2).collect::<Vec<_>>()).1,
            );
        }
    }
    if !skipped.is_empty() {
        println!("skipped (over CATCHUP_BUDGET_S): {}", skipped.join(", "));
    }
    println!(
        "wall time {:.0} s; nodes' logs under {}",
        started.elapsed().as_secs_f64(),
        c.dir.display()
    );
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        eprintln!("catchup: {failed} run(s) failed (see above)");
        std::process::exit(1);
    }
}
