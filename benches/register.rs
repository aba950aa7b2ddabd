//! REGISTER load on a real Kamailio node: what replication costs, sersync
//! against dmq_usrloc, side by side in one run (see bench/README.md,
//! "REGISTER load").
//!
//! Nodes on 127.0.0.101-103 (node 1 takes the load, nodes 2 and 3 are its
//! peers), sipp on 127.0.0.110, the lag prober on 127.0.0.111. Every node
//! runs `bench/register.cfg.in` (usrloc db_mode 0 by default). Configurations
//! (REGISTER_CONFIGS): `none` (node 1 alone), `sersync-1`, `sersync-2`,
//! `sersync-journal-1` (durability "journal"), `dmq-1`, `dmq-2`. Each run of
//! a configuration starts its nodes from fresh directories.
//!
//! Parts (REGISTER_PARTS, default all):
//! - `load`: per round and configuration: (1) a burst of REGISTER_BURST_N
//!   distinct users with at most REGISTER_WINDOW REGISTERs outstanding:
//!   REGISTERs/s, failed transactions; (2) node 1's memory right after it
//!   (Kamailio shm real_used and max_used from `core.shmmem`, PSS summed
//!   over node 1's process group from /proc/<pid>/smaps_rollup), and the
//!   time until every peer holds the burst; (3) REGISTER_RATE_N more users
//!   at REGISTER_RATE/s, with lag probes: every REGISTER_PROBE_MS the bench
//!   registers one more user itself, stamps the 200 OK, and polls each
//!   peer's usrloc (`ul.lookup` over HTTP JSON-RPC) until it holds it;
//!   convergence = time from sipp's last 200 OK until every peer's
//!   `usrloc:location_contacts` equals node 1's.
//! - `m64`: Kamailio's default `-m 64`: a burst of REGISTER_M64_N users with
//!   one peer (none, sersync-1, dmq-1): failed transactions.
//! - `catchup`: sersync: node 2 stopped while REGISTER_CATCHUP_N users
//!   register on node 1, then started on its old directory; dmq: node 2
//!   starts empty after the same burst and syncs (dmq_usrloc `sync`). Time
//!   from node 2's start until its usrloc holds them all.
//!
//! With REGISTER_PIN=1 (default when nproc >= 2) node 1's processes run on
//! CPU 0 and everything else (peers, sipp, this bench) on CPU 1, so that
//! the peers' work does not come out of node 1's CPU (in a deployment they
//! are other machines). Other knobs: REGISTER_QUICK=1 (one round, smaller
//! counts), REGISTER_RUNS (3), REGISTER_CHILDREN (4 UDP workers),
//! REGISTER_DB_MODE (0), REGISTER_HASH_SIZE (14), REGISTER_SHM_MB (1024),
//! REGISTER_CONVERGE_TIMEOUT_S (60), REGISTER_BURST_N, REGISTER_RATE_N,
//! REGISTER_RATE (3000/s), REGISTER_WINDOW (20), REGISTER_M64_N,
//! REGISTER_CATCHUP_N, REGISTER_PROBE_MS (20). Diagnostics:
//! REGISTER_LAG_TRACE=1 prints every probe over 10 ms with its time;
//! REGISTER_JOURNAL_DIR=<dir> puts sersync's journals there (e.g. a tmpfs,
//! to see what the journal's fsyncs cost).

#[path = "../tests/e2e_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const NAME: &str = "bench-register";
const FIRST_IP: u8 = 101;
const SIPP_IP: &str = "127.0.0.110";
const PROBE_IP: &str = "127.0.0.111";
const HTTP_PORT: u16 = 8080;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ip_of(index: usize) -> String {
    format!("127.0.0.{}", FIRST_IP as usize + index - 1)
}

// ---------------------------------------------------------------------------
// Settings and configurations

#[derive(Clone, Debug)]
struct Settings {
    runs: usize,
    burst_n: usize,
    rate_n: usize,
    rate: u32,
    window: u32,
    m64_n: usize,
    catchup_n: usize,
    children: u32,
    db_mode: u32,
    hash_size: u32,
    shm_mb: u32,
    probe_every: Duration,
    converge_timeout: Duration,
    pin: bool,
    configs: Vec<Repl>,
    parts: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("REGISTER_QUICK").is_ok_and(|v| v == "1");
        let nproc: usize = sh("nproc").parse().unwrap_or(1);
        let configs = std::env::var("REGISTER_CONFIGS")
            .unwrap_or_else(|_| {
                "none,sersync-1,sersync-2,sersync-journal-1,dmq-1,dmq-2".to_string()
            })
            .split(',')
            .map(|s| Repl::parse(s.trim()).unwrap_or_else(|| panic!("unknown configuration {s:?}")))
            .collect();
        Settings {
            runs: env_or("REGISTER_RUNS", if quick { 1 } else { 3 }),
            burst_n: env_or("REGISTER_BURST_N", if quick { 10_000 } else { 50_000 }),
            rate_n: env_or("REGISTER_RATE_N", if quick { 10_000 } else { 50_000 }),
            rate: env_or("REGISTER_RATE", 3000),
            window: env_or("REGISTER_WINDOW", 20),
            m64_n: env_or("REGISTER_M64_N", 20_000),
            catchup_n: env_or("REGISTER_CATCHUP_N", if quick { 20_000 } else { 100_000 }),
            children: env_or("REGISTER_CHILDREN", 4),
            db_mode: env_or("REGISTER_DB_MODE", 0),
            hash_size: env_or("REGISTER_HASH_SIZE", 14),
            shm_mb: env_or("REGISTER_SHM_MB", 1024),
            probe_every: Duration::from_millis(env_or("REGISTER_PROBE_MS", 20)),
            converge_timeout: Duration::from_secs(env_or("REGISTER_CONVERGE_TIMEOUT_S", 60)),
            pin: env_or("REGISTER_PIN", u8::from(nproc >= 2)) == 1 && nproc >= 2,
            configs,
            parts: std::env::var("REGISTER_PARTS")
                .unwrap_or_else(|_| "load,m64,catchup".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
        }
    }

    fn part(&self, p: &str) -> bool {
        self.parts.iter().any(|x| x == p)
    }

    /// The configurations of `candidates` this run measures.
    fn chosen(&self, candidates: &[Repl]) -> Vec<Repl> {
        candidates
            .iter()
            .copied()
            .filter(|r| self.configs.contains(r))
            .collect()
    }
}

/// What replicates node 1's registrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Repl {
    None,
    Sersync { peers: usize, journal: bool },
    Dmq { peers: usize },
}

impl Repl {
    fn parse(s: &str) -> Option<Repl> {
        Some(match s {
            "none" => Repl::None,
            "sersync-1" => Repl::Sersync {
                peers: 1,
                journal: false,
            },
            "sersync-2" => Repl::Sersync {
                peers: 2,
                journal: false,
            },
            "sersync-journal-1" => Repl::Sersync {
                peers: 1,
                journal: true,
            },
            "sersync-journal-2" => Repl::Sersync {
                peers: 2,
                journal: true,
            },
            "dmq-1" => Repl::Dmq { peers: 1 },
            "dmq-2" => Repl::Dmq { peers: 2 },
            _ => return None,
        })
    }

    fn label(self) -> String {
        match self {
            Repl::None => "none".into(),
            Repl::Sersync { peers, journal } => {
                format!("sersync{}-{peers}", if journal { "-journal" } else { "" })
            }
            Repl::Dmq { peers } => format!("dmq-{peers}"),
        }
    }

    fn peers(self) -> usize {
        match self {
            Repl::None => 0,
            Repl::Sersync { peers, .. } | Repl::Dmq { peers } => peers,
        }
    }

    fn nodes(self) -> usize {
        self.peers() + 1
    }
}

/// The kamailio.cfg of node `index` (1-based) of a cluster of `nodes`.
fn node_cfg(s: &Settings, repl: Repl, index: usize, nodes: usize, dir: &Path) -> String {
    let ip = ip_of(index);
    let d = dir.to_str().expect("utf-8 dir");
    let mut opts = ClusterOptions {
        template: Some(repo_root().join("bench/register.cfg.in")),
        ..ClusterOptions::default()
    };
    let mut defines = vec![
        format!("#!define CHILDREN {}", s.children),
        format!("#!define DB_MODE {}", s.db_mode),
        format!("#!define HASH_SIZE {}", s.hash_size),
    ];
    let mut module = None;
    let mut peers = Vec::new();
    match repl {
        Repl::None => {}
        Repl::Sersync { journal, .. } => {
            module = private_module_copy();
            assert!(module.is_some(), "sersync configurations need the module");
            peers = (1..=nodes)
                .filter(|&j| j != index)
                .map(|j| format!("tcp:{}:{SERSYNC_PORT}", ip_of(j)))
                .collect();
            if journal {
                opts.extra.insert(
                    index,
                    vec!["modparam(\"sersync\", \"durability\", \"journal\")".into()],
                );
            }
        }
        Repl::Dmq { .. } => {
            // node 1 learns of the others when they notify it; it names
            // node 2 (down or not yet up when node 1 starts: harmless).
            let notify = if index == 1 { ip_of(2) } else { ip_of(1) };
            defines.push("#!define WITH_DMQ".into());
            defines.push(format!("#!define DMQ_NOTIFY \"sip:{notify}:{SIP_PORT}\""));
        }
    }
    let mut cfg = node_config_with(
        index,
        &ip,
        dir,
        &peers,
        module.as_deref(),
        &format!("e2e-secret-{NAME}"),
        &opts,
    );
    if module.is_some() {
        // sersync applies through jsonrpcs' datagram socket (its default
        // door when configured; the harness names the FIFO).
        let from = format!("modparam(\"sersync\", \"fifo\", \"{d}/rpc.fifo\")");
        assert!(cfg.contains(&from), "harness changed: no `{from}`");
        cfg = cfg.replace(
            &from,
            &format!("modparam(\"sersync\", \"fifo\", \"{d}/rpc.sock\")"),
        );
    }
    if let (Some(_), Ok(jdir)) = (&module, std::env::var("REGISTER_JOURNAL_DIR")) {
        // diagnostic: the journal elsewhere (e.g. on tmpfs, to see what its
        // fsyncs cost)
        let from = format!("modparam(\"sersync\", \"journal\", \"{d}/sersync.db\")");
        assert!(cfg.contains(&from), "harness changed: no `{from}`");
        let sub = dir
            .strip_prefix(repo_root().join("target"))
            .unwrap_or(dir)
            .to_string_lossy()
            .replace('/', "_");
        let _ = fs::create_dir_all(&jdir);
        cfg = cfg.replace(
            &from,
            &format!("modparam(\"sersync\", \"journal\", \"{jdir}/{sub}.db\")"),
        );
    }
    let (first, rest) = cfg.split_once('\n').expect("config has lines");
    format!("{first}\n{}\n{rest}", defines.join("\n"))
}

/// Stops every node, then configures nodes 1..=repl.nodes() from fresh
/// directories `<cluster>/<label>/nN` with shared memory `shm_mb`.
fn configure(c: &mut Cluster, s: &Settings, repl: Repl, label: &str, shm_mb: u32) {
    for node in &mut c.nodes {
        if let Err(e) = node.stop() {
            eprintln!("register: {e}");
        }
    }
    let nodes = repl.nodes();
    for i in 1..=nodes {
        let dir = c.dir.join(label).join(format!("n{i}"));
        fs::create_dir_all(&dir).expect("node dir");
        fs::write(dir.join("kamailio.cfg"), node_cfg(s, repl, i, nodes, &dir)).expect("cfg");
        create_db(&dir.join("kamailio.db"));
        let node = c.node_mut(i);
        node.dir = dir;
        node.memory_mb.0 = shm_mb;
    }
}

/// Starts node `i` and pins its processes.
fn start_node(c: &mut Cluster, s: &Settings, i: usize) {
    c.node_mut(i).start();
    if s.pin {
        let cpu = if i == 1 { 0 } else { 1 };
        pin_group(c.node(i).pid().expect("running"), cpu);
    }
}

/// Waits until the replication among nodes `which` is connected.
fn wait_ready(c: &Cluster, s: &Settings, repl: Repl, which: &[usize]) {
    let t = Instant::now();
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(60), || {
        last.clear();
        which.iter().all(|&i| {
            let node = c.node(i);
            match repl {
                Repl::None => true,
                Repl::Sersync { .. } => match node.sersync_status() {
                    Ok(st) => {
                        let up = st.running == 1
                            && st.peers.len() == which.len() - 1
                            && st.peers.iter().all(|p| p.state == "up");
                        if !up {
                            last = format!("{}: {}", node.name(), st.summary());
                        }
                        up
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                },
                Repl::Dmq { .. } => match node.rpc("dmq.list_nodes", json!([])) {
                    Ok(v) => {
                        let active = dmq_active(&v);
                        if active < which.len() {
                            last = format!("{}: dmq.list_nodes {v}", node.name());
                        }
                        active >= which.len()
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                },
            }
        })
    });
    assert!(
        ok,
        "{}: nodes {which:?} not connected after {:?}: {last}",
        repl.label(),
        t.elapsed()
    );
    if s.pin {
        // the sersync process starts its threads late: pin them too
        for &i in which {
            pin_group(
                c.node(i).pid().expect("running"),
                if i == 1 { 0 } else { 1 },
            );
        }
    }
}

/// Active nodes in a `dmq.list_nodes` reply (self included).
fn dmq_active(v: &Value) -> usize {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    list.iter()
        .filter(|n| {
            n.get("status")
                .and_then(Value::as_str)
                .is_some_and(|s| s == "active")
        })
        .count()
}

/// Configures `repl` on fresh directories, starts all its nodes and waits
/// until they replicate.
fn start_config(c: &mut Cluster, s: &Settings, repl: Repl, label: &str, shm_mb: u32) {
    configure(c, s, repl, label, shm_mb);
    let which: Vec<usize> = (1..=repl.nodes()).collect();
    for &i in &which {
        start_node(c, s, i);
    }
    wait_ready(c, s, repl, &which);
}

// ---------------------------------------------------------------------------
// Processes: CPU pinning and memory

/// PIDs whose process group is `pgid` (a node: Kamailio leads its group).
fn group_pids(pgid: u32) -> Vec<u32> {
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

fn set_affinity(tid: i32, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by pointer with
    // its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Every thread of every process of group `pgid` onto `cpu`.
fn pin_group(pgid: u32, cpu: usize) {
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
struct Mem {
    /// Kamailio shared memory in use (`core.shmmem` real_used), bytes
    shm_used: u64,
    /// its peak since start (max_used), bytes
    shm_max: u64,
    /// PSS summed over the node's processes, bytes
    pss: u64,
    procs: usize,
}

fn memory(node: &Node) -> Mem {
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

// ---------------------------------------------------------------------------
// sipp

#[derive(Debug, Default)]
struct SippRun {
    ok: u64,
    failed: u64,
    /// spawn -> exit
    secs: f64,
    exit_ok: bool,
    dir: PathBuf,
}

impl SippRun {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-3)
    }
}

/// `users` REGISTER on node 1 with at most `window` outstanding, at most
/// `rate`/s; waits for sipp. `done` is set when sipp exits.
#[allow(clippy::too_many_arguments)]
fn sipp_load(
    s: &Settings,
    target: &Node,
    prefix: &str,
    n: usize,
    rate: u32,
    window: u32,
    run_dir: &Path,
) -> SippRun {
    let dir = run_dir.join(format!("sipp-{prefix}"));
    fs::create_dir_all(&dir).expect("sipp dir");
    let regs: Vec<Reg> = (0..n)
        .map(|i| Reg::new(format!("{prefix}{i:06}"), 3600))
        .collect();
    write_injection_csv(&dir.join("users.csv"), &regs, SIPP_IP);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let pin = s.pin;
    let mut cmd = Command::new(SIPP);
    cmd.arg(format!("{}:{SIP_PORT}", target.ip))
        .arg("-sf")
        .arg(e2e_dir().join("register.xml"))
        .arg("-inf")
        .arg(dir.join("users.csv"))
        .args(["-m", &n.to_string(), "-r", &rate.to_string(), "-rp", "1000"])
        .args(["-l", &window.to_string()])
        .args(["-t", "u1", "-i", SIPP_IP, "-bind_local"])
        .args(["-trace_stat", "-stf"])
        .arg(dir.join("stat.csv"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .args(["-nostdin", "-timeout", "900"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("fd"))
        .stderr(out)
        .process_group(0);
    // SAFETY: prctl and sched_setaffinity are async-signal-safe; nothing
    // else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if pin {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(1, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let status = child.wait().expect("waiting for sipp");
    let secs = t.elapsed().as_secs_f64();
    let (ok, failed) = stat_counts(&dir.join("stat.csv"));
    SippRun {
        ok,
        failed,
        secs,
        exit_ok: status.success(),
        dir,
    }
}

/// Successful and failed calls (cumulative) from sipp's -trace_stat CSV.
fn stat_counts(path: &Path) -> (u64, u64) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (Some(header), Some(last)) = (lines.next(), text.lines().rfind(|l| !l.trim().is_empty()))
    else {
        return (0, 0);
    };
    let cols: Vec<&str> = header.split(';').collect();
    let vals: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .and_then(|i| vals.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

// ---------------------------------------------------------------------------
// JSON-RPC over HTTP (xhttp + jsonrpcs), one kept-alive connection

struct Http {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    id: u64,
}

impl Http {
    fn new(ip: &str) -> Http {
        Http {
            addr: format!("{ip}:{HTTP_PORT}"),
            conn: None,
            id: 0,
        }
    }

    /// Ok(Ok(result)) or Ok(Err(error object)); Err: no answer.
    fn call(&mut self, method: &str, params: Value) -> Result<Result<Value, Value>, String> {
        match self.try_call(method, &params) {
            Ok(v) => Ok(v),
            Err(_) => {
                self.conn = None;
                self.try_call(method, &params)
            }
        }
    }

    fn try_call(&mut self, method: &str, params: &Value) -> Result<Result<Value, Value>, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("{}: {e}", self.addr))?;
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected");
        self.id += 1;
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": self.id})
            .to_string();
        let req = format!(
            "POST /RPC HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        conn.get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut len = None;
        let mut line = String::new();
        loop {
            line.clear();
            let k = conn
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            if k == 0 {
                return Err("connection closed".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((h, v)) = l.split_once(':') {
                if h.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or("no Content-Length")?;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf)
            .map_err(|e| format!("read body: {e}"))?;
        let v: Value = serde_json::from_slice(&buf).map_err(|e| format!("json: {e}"))?;
        if let Some(e) = v.get("error") {
            return Ok(Err(e.clone()));
        }
        Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null)))
    }

    /// usrloc's live contact count.
    fn contacts(&mut self) -> Result<u64, String> {
        let v = self
            .call("stats.get_statistics", json!(["location_contacts"]))?
            .map_err(|e| e.to_string())?;
        let text = match &v {
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        text.rsplit('=')
            .next()
            .and_then(|x| {
                x.trim()
                    .trim_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .ok_or_else(|| format!("odd statistics reply: {text}"))
    }

    /// Whether usrloc holds AOR `user`.
    fn has(&mut self, user: &str) -> Result<bool, String> {
        Ok(self.call("ul.lookup", json!(["location", user]))?.is_ok())
    }
}

/// Polls the nodes' contact counts every 10 ms until all reach `target`;
/// the time it happened, or the last counts.
fn wait_counts(ips: &[String], target: u64, timeout: Duration) -> Result<Instant, Vec<u64>> {
    let mut https: Vec<Http> = ips.iter().map(|ip| Http::new(ip)).collect();
    let mut counts = vec![0; ips.len()];
    let t = Instant::now();
    loop {
        let now = Instant::now();
        for (k, h) in https.iter_mut().enumerate() {
            if counts[k] < target {
                if let Ok(n) = h.contacts() {
                    counts[k] = n;
                }
            }
        }
        if counts.iter().all(|&n| n >= target) {
            return Ok(now);
        }
        if t.elapsed() > timeout {
            return Err(counts);
        }
        sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Lag probes

#[derive(Debug, Default)]
struct Probes {
    /// per probe: 200 OK at node 1 -> the last peer holds it, ms
    lags_ms: Vec<f64>,
    /// per probe: its 200 OK, s since the prober started
    at_s: Vec<f64>,
    /// probes registered (200 OK)
    registered: u64,
    /// probes some peer never showed within the timeout
    lost: u64,
    /// REGISTERs without a 200 OK
    failed: u64,
}

/// Every `every`, registers one user on node 1 (its own UDP socket), stamps
/// the 200 OK and polls each peer's usrloc until it holds the user.
fn probe_loop(
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

// ---------------------------------------------------------------------------
// The parts

#[derive(Debug, Default)]
struct LoadRun {
    repl: Option<Repl>,
    round: usize,
    burst: SippRun,
    mem: Mem,
    /// sipp's exit -> every peer holds the burst, s
    burst_converge_s: Option<f64>,
    rated: SippRun,
    probes: Probes,
    /// sipp's exit (last 200 OK) -> every peer equals node 1, s
    converge_s: Option<f64>,
    busy: String,
    note: String,
}

fn load_run(c: &mut Cluster, s: &Settings, repl: Repl, round: usize) -> LoadRun {
    let label = format!("r{round}-{}", repl.label());
    start_config(c, s, repl, &label, s.shm_mb);
    let run_dir = c.dir.join(&label);
    let peers: Vec<String> = (2..=repl.nodes()).map(ip_of).collect();
    let mut r = LoadRun {
        repl: Some(repl),
        round,
        busy: busy_note(),
        ..LoadRun::default()
    };

    // (1) + (2): the burst, then node 1's memory
    r.burst = sipp_load(s, c.node(1), "b", s.burst_n, 100_000, s.window, &run_dir);
    let burst_end = Instant::now();
    r.mem = memory(c.node(1));
    if !peers.is_empty() {
        match wait_counts(&peers, r.burst.ok, s.converge_timeout) {
            Ok(t) => r.burst_converge_s = Some((t - burst_end).as_secs_f64()),
            Err(counts) => {
                r.note += &format!(
                    "burst not converged: peers at {counts:?} of {}; ",
                    r.burst.ok
                )
            }
        }
    }

    // (3): a steady rate, with lag probes
    let stop = Arc::new(AtomicBool::new(false));
    let prober = if peers.is_empty() {
        None
    } else {
        let (o, p, e, st, pin) = (ip_of(1), peers.clone(), s.probe_every, stop.clone(), s.pin);
        Some(std::thread::spawn(move || probe_loop(o, p, e, st, pin)))
    };
    r.rated = sipp_load(s, c.node(1), "r", s.rate_n, s.rate, 1000, &run_dir);
    let rated_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = prober {
        r.probes = h.join().expect("prober");
    }
    if !peers.is_empty() {
        let mut h1 = Http::new(&ip_of(1));
        let target = h1.contacts().unwrap_or(0);
        match wait_counts(&peers, target, s.converge_timeout) {
            Ok(t) => r.converge_s = Some((t - rated_end).as_secs_f64()),
            Err(counts) => {
                r.note += &format!("rated run not converged: peers at {counts:?} of {target}; ")
            }
        }
    }
    if let Repl::Sersync { .. } = repl {
        if let Ok(st) = c.node(1).sersync_status() {
            if st.queue_dropped > 0 || !st.last_error.is_empty() {
                r.note += &format!("node 1 sersync: {}; ", st.summary());
            }
        }
    }
    let b = busy_note();
    if !b.is_empty() && r.busy.is_empty() {
        r.busy = b;
    }
    for node in &mut c.nodes {
        if let Err(e) = node.stop() {
            eprintln!("register: {e}");
        }
    }
    r
}

#[derive(Debug)]
struct M64Run {
    repl: Repl,
    sipp: SippRun,
    mem: Mem,
    busy: String,
}

fn m64_run(c: &mut Cluster, s: &Settings, repl: Repl, round: usize) -> M64Run {
    let label = format!("m64-r{round}-{}", repl.label());
    start_config(c, s, repl, &label, 64);
    let busy = busy_note();
    let sipp = sipp_load(
        s,
        c.node(1),
        "m",
        s.m64_n,
        100_000,
        s.window,
        &c.dir.join(&label),
    );
    let mem = memory(c.node(1));
    for node in &mut c.nodes {
        if let Err(e) = node.stop() {
            eprintln!("register: {e}");
        }
    }
    M64Run {
        repl,
        sipp,
        mem,
        busy,
    }
}

#[derive(Debug)]
struct CatchupRun {
    repl: Repl,
    /// node 2 start() called -> it answers RPC, s
    up_s: f64,
    /// start -> first contact, s
    first_s: Option<f64>,
    /// start -> all of them, s
    done_s: Option<f64>,
    n: u64,
    busy: String,
    note: String,
}

fn catchup_run(c: &mut Cluster, s: &Settings, repl: Repl, round: usize) -> CatchupRun {
    let label = format!("catchup-r{round}-{}", repl.label());
    configure(c, s, repl, &label, s.shm_mb);
    let sersync = matches!(repl, Repl::Sersync { .. });
    start_node(c, s, 1);
    if sersync {
        // node 2 knows node 1 and has its journal, then goes down
        start_node(c, s, 2);
        wait_ready(c, s, repl, &[1, 2]);
        c.node_mut(2).stop().expect("stopping node 2");
    }
    let burst = sipp_load(
        s,
        c.node(1),
        "c",
        s.catchup_n,
        100_000,
        s.window,
        &c.dir.join(&label),
    );
    let n = burst.ok;
    let mut note = String::new();
    if burst.failed > 0 {
        note += &format!("{} REGISTERs failed on node 1; ", burst.failed);
    }
    if sersync {
        let n1 = c.node(1);
        let journaled = wait_until(Duration::from_secs(120), || {
            n1.sersync_status()
                .is_ok_and(|st| st.last_seq >= n && st.queue_depth == 0)
        });
        assert!(journaled, "node 1 did not journal {n}");
    }
    let busy = busy_note();
    let t0 = Instant::now();
    start_node(c, s, 2);
    let up_s = t0.elapsed().as_secs_f64();
    let mut h = Http::new(&ip_of(2));
    let (mut first, mut done, mut last) = (None, None, 0);
    let mut repinned = false;
    let mut progress = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) {
        if progress.elapsed() > Duration::from_secs(15) {
            note += "STALLED: no progress for 15 s; ";
            break;
        }
        if let Ok(k) = h.contacts() {
            if k > last {
                progress = Instant::now();
            }
            last = k;
            let t = t0.elapsed().as_secs_f64();
            if k > 0 && first.is_none() {
                first = Some(t);
            }
            if k >= n {
                done = Some(t);
                break;
            }
        }
        if s.pin && !repinned && t0.elapsed() > Duration::from_millis(300) {
            pin_group(c.node(2).pid().expect("running"), 1);
            repinned = true;
        }
        sleep(Duration::from_millis(10));
    }
    if done.is_none() {
        note += &format!("TIMEOUT: node 2 at {last} of {n}; ");
    }
    for i in 1..=2 {
        let k = c.node(i).log_grep("could not allocate shared memory").len();
        if k > 0 {
            note += &format!("node {i} logged {k} shm allocation failures; ");
        }
    }
    if sersync {
        sleep(Duration::from_millis(500)); // sersync.status is republished every 200 ms
        if let Ok(st) = c.node(2).sersync_status() {
            let p = st.peers.first();
            note += &format!(
                "node 2 received {} (snapshot rows {}), applied {}",
                p.map_or(0, |p| p.received),
                st.raw
                    .pointer("/peers/0/snapshot_received")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                st.applied
            );
        }
    }
    for node in &mut c.nodes {
        if let Err(e) = node.stop() {
            eprintln!("register: {e}");
        }
    }
    CatchupRun {
        repl,
        up_s,
        first_s: first,
        done_s: done,
        n,
        busy,
        note,
    }
}

// ---------------------------------------------------------------------------
// Figures

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let k = v.len();
    match k {
        0 => f64::NAN,
        _ if k % 2 == 1 => v[k / 2],
        _ => (v[k / 2 - 1] + v[k / 2]) / 2.0,
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[idx.clamp(1, v.len()) - 1]
}

/// "median (min–max)" with `prec` decimals; "—" when empty.
fn stat(v: &[f64], prec: usize) -> String {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return "—".into();
    }
    let lo = f.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if f.len() == 1 {
        return format!("{:.prec$}", f[0]);
    }
    format!("{:.prec$} ({lo:.prec$}–{hi:.prec$})", median(&f))
}

fn mb(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Other CPU-heavy work on this shared machine skews a run: say so.
fn busy_note() -> String {
    let others =
        sh("ps -eo comm= | grep -cxE 'rustc|cc1|cc1plus|ld|rust-lld|bindgen|cargo-fuzz' || true");
    let load = sh("cut -d' ' -f1 /proc/loadavg");
    match others.parse::<u32>() {
        Ok(k) if k > 0 => format!("MACHINE BUSY: {k} compiler processes, load {load}"),
        _ => String::new(),
    }
}

fn print_load(s: &Settings, runs: &[LoadRun]) {
    let base: BTreeMap<usize, f64> = runs
        .iter()
        .filter(|r| r.repl == Some(Repl::None) && r.burst.failed == 0)
        .map(|r| (r.round, r.burst.rate()))
        .collect();
    println!(
        "\n(1) throughput: burst of {} REGISTERs, window {}; ratio = / no replication in the same round",
        s.burst_n, s.window
    );
    println!(
        "{:<18} {:>4} {:>28} {:>22} {:>7}",
        "configuration", "runs", "REGISTER/s median (min–max)", "ratio to none", "failed"
    );
    for &repl in &s.configs {
        let rs: Vec<&LoadRun> = runs.iter().filter(|r| r.repl == Some(repl)).collect();
        if rs.is_empty() {
            continue;
        }
        let rate: Vec<f64> = rs.iter().map(|r| r.burst.rate()).collect();
        let ratio: Vec<f64> = rs
            .iter()
            .filter_map(|r| base.get(&r.round).map(|b| r.burst.rate() / b))
            .collect();
        let failed: u64 = rs.iter().map(|r| r.burst.failed).sum();
        println!(
            "{:<18} {:>4} {:>28} {:>22} {:>7}",
            repl.label(),
            rs.len(),
            stat(&rate, 0),
            stat(&ratio, 2),
            failed
        );
    }
    println!(
        "\n(2) node 1's memory right after the burst of {} (shm -m {} MB); MB",
        s.burst_n, s.shm_mb
    );
    println!(
        "{:<18} {:>22} {:>22} {:>22} {:>20}",
        "configuration", "shm real_used", "shm max_used", "PSS, all processes", "peers hold it, s"
    );
    for &repl in &s.configs {
        let rs: Vec<&LoadRun> = runs.iter().filter(|r| r.repl == Some(repl)).collect();
        if rs.is_empty() {
            continue;
        }
        let f = |g: &dyn Fn(&LoadRun) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<f64>>();
        println!(
            "{:<18} {:>22} {:>22} {:>22} {:>20}",
            repl.label(),
            stat(&f(&|r| mb(r.mem.shm_used)), 1),
            stat(&f(&|r| mb(r.mem.shm_max)), 1),
            stat(&f(&|r| mb(r.mem.pss)), 1),
            if repl == Repl::None {
                "".into()
            } else {
                stat(&f(&|r| r.burst_converge_s.unwrap_or(f64::NAN)), 2)
            }
        );
    }
    println!(
        "\n(3) {} REGISTERs at {}/s; lag: probe's 200 OK at node 1 -> every peer's ul.lookup finds it (one probe per {:?}); convergence: sipp's last 200 OK -> every peer's count = node 1's",
        s.rate_n, s.rate, s.probe_every
    );
    println!(
        "{:<18} {:>20} {:>16} {:>18} {:>18} {:>18} {:>7}",
        "configuration",
        "achieved REG/s",
        "converged, s",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "probes"
    );
    for &repl in &s.configs {
        let rs: Vec<&LoadRun> = runs.iter().filter(|r| r.repl == Some(repl)).collect();
        if rs.is_empty() || repl == Repl::None {
            continue;
        }
        let f = |g: &dyn Fn(&LoadRun) -> f64| rs.iter().map(|r| g(r)).collect::<Vec<f64>>();
        let lost: u64 = rs.iter().map(|r| r.probes.lost + r.probes.failed).sum();
        let n: usize = rs.iter().map(|r| r.probes.lags_ms.len()).sum();
        println!(
            "{:<18} {:>20} {:>16} {:>18} {:>18} {:>18} {:>7}",
            repl.label(),
            stat(&f(&|r| r.rated.rate()), 0),
            stat(&f(&|r| r.converge_s.unwrap_or(f64::NAN)), 2),
            stat(&f(&|r| percentile(&r.probes.lags_ms, 50.0)), 1),
            stat(&f(&|r| percentile(&r.probes.lags_ms, 99.0)), 1),
            stat(&f(&|r| percentile(&r.probes.lags_ms, 100.0)), 1),
            if lost > 0 {
                format!("{n}+{lost} lost")
            } else {
                n.to_string()
            }
        );
    }
}

fn main() {
    let s = Settings::from_env();
    let started = Instant::now();
    println!("register: {s:?}");
    println!(
        "machine: nproc {}, memory {}, {}, {}",
        sh("nproc"),
        sh("free -h | awk '/^Mem:/{print $2}'"),
        sh("kamailio -V | head -1"),
        sh("sipp -v 2>&1 | grep -o 'SIPp v[0-9.]*' | head -1")
    );
    println!(
        "module: {} sha256 {}; git {}",
        module_path().display(),
        sh(&format!(
            "sha256sum {} | cut -c1-16",
            module_path().display()
        )),
        sh("git rev-parse --short HEAD")
    );

    // The harness' start (machine lock, fresh directory, a sersync mesh
    // from this bench's template); every run then reconfigures the nodes.
    // REGISTER_SHM_MANAGER=tlsf: Kamailio's `-x` (shared memory manager).
    let kamailio_args = std::env::var("REGISTER_SHM_MANAGER")
        .map(|m| vec!["-x".to_string(), m])
        .unwrap_or_default();
    let opts = ClusterOptions {
        template: Some(repo_root().join("bench/register.cfg.in")),
        shm_mb: Some(s.shm_mb),
        kamailio_args,
        ..ClusterOptions::default()
    };
    if s.pin {
        set_affinity(0, 1);
    }
    let mut c = Cluster::start_with_options(NAME, FIRST_IP, 3, &opts);
    println!(
        "cluster up (machine lock held) after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut load = Vec::new();
    if s.part("load") {
        for round in 1..=s.runs {
            let k = s.configs.len();
            for j in 0..k {
                // rotate the order so that slow drift hits every configuration
                let repl = s.configs[(j + round - 1) % k];
                let r = load_run(&mut c, &s, repl, round);
                println!(
                    "load {} round {round}: burst {} ok {} failed in {:.2} s = {:.0}/s; shm {:.1} MB (max {:.1}), PSS {:.1} MB in {} procs; burst converged {}; rated {:.0}/s ok {} failed {}, converged {}, probes {} (lost {}, failed {}) p50 {:.1} p99 {:.1} max {:.1} ms {} {}",
                    repl.label(),
                    r.burst.ok,
                    r.burst.failed,
                    r.burst.secs,
                    r.burst.rate(),
                    mb(r.mem.shm_used),
                    mb(r.mem.shm_max),
                    mb(r.mem.pss),
                    r.mem.procs,
                    r.burst_converge_s.map_or("-".into(), |x| format!("{x:.2} s")),
                    r.rated.rate(),
                    r.rated.ok,
                    r.rated.failed,
                    r.converge_s.map_or("-".into(), |x| format!("{x:.2} s")),
                    r.probes.lags_ms.len(),
                    r.probes.lost,
                    r.probes.failed,
                    percentile(&r.probes.lags_ms, 50.0),
                    percentile(&r.probes.lags_ms, 99.0),
                    percentile(&r.probes.lags_ms, 100.0),
                    r.note,
                    r.busy
                );
                if std::env::var_os("REGISTER_LAG_TRACE").is_some() {
                    let slow: Vec<String> = r
                        .probes
                        .lags_ms
                        .iter()
                        .zip(&r.probes.at_s)
                        .filter(|(l, _)| **l > 10.0)
                        .map(|(l, a)| format!("{a:.2}s:{l:.0}ms"))
                        .collect();
                    println!(
                        "   probes over 10 ms (time since the rated run's start: lag): {}",
                        slow.join(" ")
                    );
                }
                if !r.burst.exit_ok || !r.rated.exit_ok {
                    println!(
                        "   sipp exited with an error: see {}",
                        r.burst.dir.display()
                    );
                }
                load.push(r);
            }
        }
    }

    let mut m64 = Vec::new();
    if s.part("m64") {
        let cfgs = s.chosen(&[
            Repl::None,
            Repl::Sersync {
                peers: 1,
                journal: false,
            },
            Repl::Dmq { peers: 1 },
        ]);
        for round in 1..=s.runs {
            for &repl in &cfgs {
                let r = m64_run(&mut c, &s, repl, round);
                println!(
                    "m64 {} round {round}: {} of {} failed ({} ok) in {:.2} s; shm {:.1} MB (max {:.1}) {}",
                    repl.label(),
                    r.sipp.failed,
                    s.m64_n,
                    r.sipp.ok,
                    r.sipp.secs,
                    mb(r.mem.shm_used),
                    mb(r.mem.shm_max),
                    r.busy
                );
                m64.push(r);
            }
        }
    }

    let mut catchup = Vec::new();
    if s.part("catchup") {
        let cfgs = s.chosen(&[
            Repl::Sersync {
                peers: 1,
                journal: false,
            },
            Repl::Dmq { peers: 1 },
        ]);
        for round in 1..=s.runs {
            for &repl in &cfgs {
                let r = catchup_run(&mut c, &s, repl, round);
                println!(
                    "catchup {} round {round}: {} contacts; node 2 up {:.2} s, first {} s, all {} s; {} {}",
                    repl.label(),
                    r.n,
                    r.up_s,
                    r.first_s.map_or("-".into(), |x| format!("{x:.2}")),
                    r.done_s.map_or("-".into(), |x| format!("{x:.2}")),
                    r.note,
                    r.busy
                );
                catchup.push(r);
            }
        }
    }
    c.stop_all();

    if !load.is_empty() {
        print_load(&s, &load);
    }
    if !m64.is_empty() {
        println!(
            "\n(2b) Kamailio's default -m 64: burst of {} REGISTERs, one peer",
            s.m64_n
        );
        println!(
            "{:<18} {:>24} {:>22}",
            "configuration", "failed, median (min–max)", "shm max_used MB"
        );
        for repl in [
            Repl::None,
            Repl::Sersync {
                peers: 1,
                journal: false,
            },
            Repl::Dmq { peers: 1 },
        ] {
            let rs: Vec<&M64Run> = m64.iter().filter(|r| r.repl == repl).collect();
            if rs.is_empty() {
                continue;
            }
            let failed: Vec<f64> = rs
                .iter()
                .map(|r| (s.m64_n as u64 - r.sipp.ok) as f64)
                .collect();
            let max: Vec<f64> = rs.iter().map(|r| mb(r.mem.shm_max)).collect();
            println!(
                "{:<18} {:>24} {:>22}",
                repl.label(),
                stat(&failed, 0),
                stat(&max, 1)
            );
        }
    }
    if !catchup.is_empty() {
        println!(
            "\n(4) catch-up of node 2: {} changes on node 1 while node 2 was down (sersync) / before an empty node 2 joins (dmq); s from node 2's start",
            s.catchup_n
        );
        println!(
            "{:<18} {:>22} {:>22} {:>22}",
            "configuration", "all held, s", "first contact, s", "first -> all, rec/s"
        );
        for repl in [
            Repl::Sersync {
                peers: 1,
                journal: false,
            },
            Repl::Dmq { peers: 1 },
        ] {
            let rs: Vec<&CatchupRun> = catchup.iter().filter(|r| r.repl == repl).collect();
            if rs.is_empty() {
                continue;
            }
            let done: Vec<f64> = rs.iter().map(|r| r.done_s.unwrap_or(f64::NAN)).collect();
            let first: Vec<f64> = rs.iter().map(|r| r.first_s.unwrap_or(f64::NAN)).collect();
            let rate: Vec<f64> = rs
                .iter()
                .map(|r| match (r.first_s, r.done_s) {
                    (Some(a), Some(b)) => r.n as f64 / (b - a).max(1e-3),
                    _ => f64::NAN,
                })
                .collect();
            let missing = rs.iter().filter(|r| r.done_s.is_none()).count();
            println!(
                "{:<18} {:>22} {:>22} {:>22}{}",
                repl.label(),
                stat(&done, 2),
                stat(&first, 2),
                stat(&rate, 0),
                if missing > 0 {
                    format!("  ({missing} runs never complete)")
                } else {
                    String::new()
                }
            );
        }
    }
    let busy = load
        .iter()
        .map(|r| &r.busy)
        .chain(m64.iter().map(|r| &r.busy))
        .chain(catchup.iter().map(|r| &r.busy))
        .filter(|b| !b.is_empty())
        .count();
    if busy > 0 {
        println!("\n{busy} run(s) flagged MACHINE BUSY (see the per-run lines)");
    }
    println!(
        "wall time {:.0} s; nodes' logs under {}",
        started.elapsed().as_secs_f64(),
        c.dir.display()
    );
}
