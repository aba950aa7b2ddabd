//! End-to-end harness: real Kamailio nodes with sersync on loopback, driven
//! by sipp, inspected through Kamailio's JSON-RPC FIFO.
//!
//! Integration tests include it with
//! `#[path = "e2e_support/mod.rs"] mod support;`.
//!
//! Every process started here is stopped by its PID (Kamailio by its own
//! process group, which it leads), also when a test fails: `Node` and
//! `SippKeep` stop theirs on drop. Nothing is sent beyond 127.0.0.x.
//!
//! The nodes need `build/sersync.so` (`make`). `SERSYNC_E2E_NO_MODULE=1`
//! starts them without it, to work on the harness alone; replication
//! assertions then fail, as they should.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const KAMAILIO: &str = "/usr/sbin/kamailio";
pub const SIPP: &str = "sipp";
pub const SCHEMA_DIR: &str = "/usr/share/kamailio/db_sqlite";
/// usrloc's timer_interval in the nodes' configuration (seconds).
pub const TIMER_INTERVAL: u64 = 5;
/// Expiry times of the same contact on two nodes may differ this much
/// (ul.dump gives them relative to the second it ran).
pub const EXPIRES_TOLERANCE: i64 = 2;
pub const SERSYNC_PORT: u16 = 5999;
pub const SIP_PORT: u16 = 5060;

/// Environment switch: start nodes without sersync (harness work only).
pub const NO_MODULE_ENV: &str = "SERSYNC_E2E_NO_MODULE";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn e2e_dir() -> PathBuf {
    repo_root().join("tests/e2e")
}

pub fn module_path() -> PathBuf {
    repo_root().join("build/sersync.so")
}

/// The module to load, or None in harness-only mode. Panics when the
/// module is missing: the end-to-end tests never pass without it.
pub fn required_module() -> Option<PathBuf> {
    if std::env::var_os(NO_MODULE_ENV).is_some_and(|v| v == "1") {
        eprintln!(
            "e2e: {NO_MODULE_ENV}=1: nodes run WITHOUT sersync; \
             replication checks will fail"
        );
        return None;
    }
    let p = module_path();
    assert!(
        p.is_file(),
        "{} is missing: build the module with `make` before running the \
         end-to-end tests (set {NO_MODULE_ENV}=1 only to work on the \
         harness itself)",
        p.display()
    );
    Some(p)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Polls `cond` every 200 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Process handling

static SUBREAPER: Once = Once::new();

/// Makes this test process the reaper of the processes its children leave
/// behind (Kamailio's workers, should its main process die first), so that
/// they can be waited for by process group instead of lingering as zombies.
fn become_subreaper() {
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    });
}

trait ParentDeath {
    /// The child gets `sig` if the test thread that started it dies
    /// without stopping it (the test process killed, e.g. by a timeout):
    /// SIGTERM makes Kamailio stop its workers too.
    fn pre_exec_parent_death(&mut self, sig: i32) -> &mut Self;
}

impl ParentDeath for Command {
    fn pre_exec_parent_death(&mut self, sig: i32) -> &mut Self {
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            self.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
                Ok(())
            })
        }
    }
}

/// Sends `sig` to the process group `pgid` (led by a process we started).
fn signal_group(pgid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) on a negative pid addresses that process group.
    unsafe { libc::kill(-(pgid as i32), sig) == 0 }
}

/// Reaps what is left of process group `pgid` after its leader exited:
/// SIGKILLs the members and waits for them (they are ours: this process is
/// their subreaper). Returns how many were left.
fn reap_group(pgid: u32, deadline: Duration) -> usize {
    if !signal_group(pgid, libc::SIGKILL) {
        return 0; // ESRCH: the group is empty
    }
    let end = Instant::now() + deadline;
    let mut reaped = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a process group we created, non-blocking.
        let r = unsafe { libc::waitpid(-(pgid as i32), &mut status, libc::WNOHANG) };
        if r > 0 {
            reaped += 1;
            continue;
        }
        if r < 0 || Instant::now() >= end {
            break; // ECHILD: none left
        }
        sleep(Duration::from_millis(20));
    }
    reaped.max(1)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

// ---------------------------------------------------------------------------
// Cluster

/// One cluster at a time on this machine, across threads and test
/// processes (the addresses are machine-wide, and the tests share two
/// cores: sequential runs keep their timing honest). Each test still has
/// its own addresses.
pub const MACHINE_LOCK: &str = "/tmp/sersync-e2e.lock";

/// An exclusive flock(2) on MACHINE_LOCK, released when dropped.
pub struct MachineLock(File);

impl MachineLock {
    pub fn acquire() -> MachineLock {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(MACHINE_LOCK)
            .unwrap_or_else(|e| panic!("opening {MACHINE_LOCK}: {e}"));
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return MachineLock(f);
            }
            let e = std::io::Error::last_os_error();
            assert!(
                e.kind() == ErrorKind::Interrupted,
                "flock {MACHINE_LOCK}: {e}"
            );
        }
    }
}

/// Panics if something already holds ip:port (UDP): a node left over from
/// an aborted run would take the test's traffic.
fn assert_port_free(ip: &str, port: u16) {
    if let Err(e) = std::net::UdpSocket::bind((ip, port)) {
        panic!(
            "{ip}:{port} is in use ({e}): a Kamailio left over from an earlier \
             run? (see `ss -lunp | grep {ip}:{port}`)"
        );
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    _lock: MachineLock,
}

impl Cluster {
    /// `n` nodes with sersync on 127.0.0.`first`.. in a fresh directory
    /// `target/tmp/e2e/<name>`; waits until every node serves RPC and every
    /// sersync peer link is up.
    pub fn start(name: &str, first: u8, n: usize) -> Cluster {
        let module = required_module();
        let c = Self::start_with(name, first, n, module.clone());
        if module.is_some() {
            c.wait_mesh_up(Duration::from_secs(30));
        }
        c
    }

    /// Nodes without sersync, whatever the environment says (harness tests).
    pub fn start_without_sersync(name: &str, first: u8, n: usize) -> Cluster {
        Self::start_with(name, first, n, None)
    }

    /// Like `start`, with the settings of `opts` (extra modparams per
    /// node, replicated usrloc tables, tables to create).
    pub fn start_with_options(name: &str, first: u8, n: usize, opts: &ClusterOptions) -> Cluster {
        let module = required_module();
        let c = Self::start_opts(name, first, n, module.clone(), opts);
        if module.is_some() {
            c.wait_mesh_up(Duration::from_secs(30));
        }
        c
    }

    fn start_with(name: &str, first: u8, n: usize, module: Option<PathBuf>) -> Cluster {
        Self::start_opts(name, first, n, module, &ClusterOptions::default())
    }

    fn start_opts(
        name: &str,
        first: u8,
        n: usize,
        module: Option<PathBuf>,
        opts: &ClusterOptions,
    ) -> Cluster {
        let lock = MachineLock::acquire();
        become_subreaper();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("removing old e2e dir");
        }
        fs::create_dir_all(&dir).expect("creating e2e dir");
        let ips: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.{}", first as usize + i))
            .collect();
        let mut nodes = Vec::new();
        for ip in &ips {
            assert_port_free(ip, SIP_PORT);
        }
        for i in 0..n {
            let peers: Vec<String> = ips
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, ip)| format!("tcp:{ip}:{SERSYNC_PORT}"))
                .collect();
            let node = Node::create(
                &dir.join(format!("n{}", i + 1)),
                i + 1,
                &ips[i],
                &peers,
                module.as_deref(),
                &format!("e2e-secret-{name}"),
                opts,
            );
            nodes.push(node);
        }
        let mut c = Cluster {
            nodes,
            dir,
            _lock: lock,
        };
        for node in &mut c.nodes {
            node.start();
        }
        c
    }

    pub fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    pub fn node_mut(&mut self, n: usize) -> &mut Node {
        &mut self.nodes[n - 1]
    }

    pub fn all(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }

    /// Waits until every running node's sersync reports every peer up.
    pub fn wait_mesh_up(&self, timeout: Duration) {
        let mut last = String::new();
        let ok = wait_until(timeout, || {
            last.clear();
            let mut all_up = true;
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                match node.sersync_status() {
                    Ok(st) => {
                        let up = st.running == 1
                            && st.peers.len() == self.nodes.len() - 1
                            && st.peers.iter().all(|p| p.state == "up");
                        if !up {
                            all_up = false;
                            let _ = writeln!(last, "{}: {}", node.name(), st.summary());
                        }
                    }
                    Err(e) => {
                        all_up = false;
                        let _ = writeln!(last, "{}: sersync.status failed: {e}", node.name());
                    }
                }
            }
            all_up
        });
        if !ok {
            let logs: String = self
                .nodes
                .iter()
                .map(|n| format!("--- {} log tail ---\n{}\n", n.name(), n.log_tail(15)))
                .collect();
            panic!("sersync peer links not all up after {timeout:?}:\n{last}\n{logs}");
        }
    }

    /// Waits until every running node's peers are up and have acknowledged
    /// everything it journaled (acked = last_seq, nothing pending, nothing
    /// queued), the same on two status reads 0.3 s apart: sersync.status
    /// is republished every 0.2 s, so one read may predate the last
    /// change.
    pub fn wait_settled(&self, timeout: Duration) {
        let mut last = String::new();
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let mut seen: Option<Vec<u64>> = None;
        let ok = wait_until(timeout, || {
            last.clear();
            let mut all = true;
            let mut seqs = Vec::new();
            for node in &running {
                match node.sersync_status() {
                    Ok(st) => {
                        seqs.push(st.last_seq);
                        let done = st.peers.len() == self.nodes.len() - 1
                            && st.peers.iter().all(|p| {
                                p.state == "up" && p.acked == st.last_seq && p.pending == 0
                            })
                            && st.apply_pending == 0
                            && st.queue_depth == 0;
                        if !done {
                            all = false;
                            let _ = writeln!(last, "{}: {}", node.name(), st.summary());
                        }
                    }
                    Err(e) => {
                        all = false;
                        let _ = writeln!(last, "{}: {e}", node.name());
                    }
                }
            }
            if !all {
                seen = None;
                return false;
            }
            if seen.as_ref() == Some(&seqs) {
                return true;
            }
            seen = Some(seqs);
            sleep(Duration::from_millis(300));
            false
        });
        assert!(
            ok,
            "sersync not settled after {timeout:?} (acked = last_seq on every link):\n{last}"
        );
    }

    /// Stops every node (SIGTERM); panics if one leaves processes behind.
    pub fn stop_all(&mut self) {
        let mut errors = Vec::new();
        for node in &mut self.nodes {
            if let Err(e) = node.stop() {
                errors.push(e);
            }
        }
        assert!(
            errors.is_empty(),
            "unclean shutdown:\n{}",
            errors.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Node

pub struct Node {
    pub index: usize,
    pub ip: String,
    pub server_id: u32,
    pub dir: PathBuf,
    /// Shared and private (per process) memory in MB: `kamailio -m -M`.
    pub memory_mb: (u32, u32),
    /// More `kamailio` arguments (ClusterOptions::kamailio_args).
    pub kamailio_args: Vec<String>,
    child: Option<Child>,
}

static RPC_SEQ: AtomicU64 = AtomicU64::new(1);

/// Settings beyond the defaults of `Cluster::start`.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// sersync's "domains" (usrloc tables replicated); None: "location".
    pub domains: Option<String>,
    /// Extra lines for the sersync block of node N (1-based), e.g.
    /// `modparam("sersync", "alias_rescan_interval", 5)`, or `#!define`s.
    pub extra: BTreeMap<usize, Vec<String>>,
    /// usrloc tables created beside "location" in every node's database,
    /// with location's schema (e.g. "aliases" for SER-0.9 style aliases).
    pub usrloc_tables: Vec<String>,
    /// Kamailio's shared memory in MB (`-m`); None: 64, Kamailio's default.
    /// A contact takes about 1 KiB of it: 64 MB holds ~50,000.
    pub shm_mb: Option<u32>,
    /// Config template instead of tests/e2e/kamailio.cfg.in (same @NAMES@).
    pub template: Option<PathBuf>,
    /// More `kamailio` arguments, e.g. `["-x", "tlsf"]` (memory manager).
    pub kamailio_args: Vec<String>,
}

/// The kamailio.cfg for one node, from tests/e2e/kamailio.cfg.in.
pub fn node_config(
    index: usize,
    ip: &str,
    dir: &Path,
    peers: &[String],
    module: Option<&Path>,
    secret: &str,
) -> String {
    node_config_with(
        index,
        ip,
        dir,
        peers,
        module,
        secret,
        &ClusterOptions::default(),
    )
}

/// `node_config` with the settings of `opts`.
pub fn node_config_with(
    index: usize,
    ip: &str,
    dir: &Path,
    peers: &[String],
    module: Option<&Path>,
    secret: &str,
    opts: &ClusterOptions,
) -> String {
    let template_path = opts
        .template
        .clone()
        .unwrap_or_else(|| e2e_dir().join("kamailio.cfg.in"));
    let template = fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", template_path.display()));
    let d = dir.to_str().expect("utf-8 dir");
    let db_url = format!("sqlite:///{d}/kamailio.db");
    let sersync = match module {
        None => "# sersync disabled (harness-only run)\n".to_string(),
        Some(m) => {
            let mut s = String::new();
            let _ = writeln!(s, "loadmodule \"{}\"", m.display());
            let _ = writeln!(s, "modparam(\"sersync\", \"node_id\", \"n{index}\")");
            let _ = writeln!(
                s,
                "modparam(\"sersync\", \"listen\", \"tcp:{ip}:{SERSYNC_PORT}\")"
            );
            for p in peers {
                let _ = writeln!(s, "modparam(\"sersync\", \"peer\", \"{p}\")");
            }
            let _ = writeln!(s, "modparam(\"sersync\", \"secret\", \"{secret}\")");
            let _ = writeln!(s, "modparam(\"sersync\", \"journal\", \"{d}/sersync.db\")");
            let _ = writeln!(s, "modparam(\"sersync\", \"fifo\", \"{d}/rpc.fifo\")");
            let _ = writeln!(s, "modparam(\"sersync\", \"db_url\", \"{db_url}\")");
            let domains = opts.domains.as_deref().unwrap_or("location");
            let _ = writeln!(s, "modparam(\"sersync\", \"domains\", \"{domains}\")");
            for line in opts.extra.get(&index).into_iter().flatten() {
                let _ = writeln!(s, "{line}");
            }
            s
        }
    };
    template
        .replace("@IP@", ip)
        .replace("@SERVER_ID@", &index.to_string())
        .replace("@DIR@", d)
        .replace("@DB_URL@", &db_url)
        .replace("@TIMER@", &TIMER_INTERVAL.to_string())
        .replace("@SERSYNC@", &sersync)
}

/// Creates SER's database from Debian's schema files, in WAL mode (see
/// tests/e2e/kamailio.cfg.in).
pub fn create_db(db: &Path) {
    create_db_with(db, &[])
}

/// location's schema (table, indexes, version row) under another name.
fn usrloc_table_sql(name: &str) -> String {
    let p = Path::new(SCHEMA_DIR).join("usrloc-create.sql");
    let t = fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let end = t
        .find("CREATE TABLE location_attrs")
        .expect("usrloc-create.sql without location_attrs");
    t[..end].replace("location", name)
}

/// `create_db`, plus usrloc tables with location's schema.
pub fn create_db_with(db: &Path, usrloc_tables: &[String]) {
    let mut sql = String::from("PRAGMA journal_mode=WAL;\n");
    for f in ["standard", "usrloc", "alias_db"] {
        let p = Path::new(SCHEMA_DIR).join(format!("{f}-create.sql"));
        match fs::read_to_string(&p) {
            Ok(t) => sql.push_str(&t),
            Err(_) if f == "alias_db" => {}
            Err(e) => panic!("reading {}: {e}", p.display()),
        }
    }
    for t in usrloc_tables {
        sql.push_str(&usrloc_table_sql(t));
    }
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sqlite3");
    child
        .stdin
        .take()
        .expect("sqlite3 stdin")
        .write_all(sql.as_bytes())
        .expect("feeding sqlite3");
    let out = child.wait_with_output().expect("sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {} failed: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Node {
    fn create(
        dir: &Path,
        index: usize,
        ip: &str,
        peers: &[String],
        module: Option<&Path>,
        secret: &str,
        opts: &ClusterOptions,
    ) -> Node {
        fs::create_dir_all(dir).expect("creating node dir");
        let sock = dir.join("ctl.sock");
        assert!(
            sock.as_os_str().len() < 100,
            "node dir too deep for a unix socket path: {}",
            sock.display()
        );
        fs::write(
            dir.join("kamailio.cfg"),
            node_config_with(index, ip, dir, peers, module, secret, opts),
        )
        .expect("writing kamailio.cfg");
        create_db_with(&dir.join("kamailio.db"), &opts.usrloc_tables);
        Node {
            index,
            ip: ip.to_string(),
            server_id: index as u32,
            dir: dir.to_path_buf(),
            memory_mb: (opts.shm_mb.unwrap_or(64), 16),
            kamailio_args: opts.kamailio_args.clone(),
            child: None,
        }
    }

    pub fn name(&self) -> String {
        format!("node {} ({})", self.index, self.ip)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kamailio.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Log lines of this node that contain `needle`.
    pub fn log_grep(&self, needle: &str) -> Vec<String> {
        fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts Kamailio in the foreground in its own process group (its
    /// shutdown signals its whole group) and waits until it answers RPC.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening node log");
        let _ = writeln!(
            &log,
            "===== e2e: starting {} at {} =====",
            self.name(),
            unix_now()
        );
        let d = &self.dir;
        let child = Command::new(KAMAILIO)
            .arg("-DD")
            .arg("-E")
            .arg("-f")
            .arg(d.join("kamailio.cfg"))
            .arg("-w")
            .arg(d)
            .arg("-Y")
            .arg(d)
            .arg("-P")
            .arg(d.join("kamailio.pid"))
            .arg("-m")
            .arg(self.memory_mb.0.to_string())
            .arg("-M")
            .arg(self.memory_mb.1.to_string())
            .args(&self.kamailio_args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .process_group(0)
            .pre_exec_parent_death(libc::SIGTERM)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {KAMAILIO}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let pid = self.child.take().map(|c| c.id()).unwrap_or(0);
                reap_group(pid, Duration::from_secs(2));
                panic!(
                    "{} exited during start-up ({st}); log tail:\n{}",
                    self.name(),
                    self.log_tail(30)
                );
            }
            if self
                .rpc_timeout("core.version", json!([]), Duration::from_secs(2))
                .is_ok()
            {
                return;
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                panic!(
                    "{} did not answer RPC within 20 s; log tail:\n{}",
                    self.name(),
                    self.log_tail(30)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL to the group after 15 s. Err if the node had
    /// to be killed or left processes behind (all are reaped either way).
    pub fn stop(&mut self) -> Result<(), String> {
        self.stop_within(Duration::from_secs(15))
    }

    fn stop_within(&mut self, grace: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        // SAFETY: kill(2) on the PID of a child we have not reaped yet.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut problem = None;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(50)),
                _ => {
                    problem = Some(format!(
                        "{} ignored SIGTERM for {grace:?}: killed",
                        self.name()
                    ));
                    signal_group(pid, libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
            }
        }
        let left = reap_group(pid, Duration::from_secs(5));
        if left > 0 && problem.is_none() {
            problem = Some(format!(
                "{}: {left} process(es) of its group outlived the main process \
                 after SIGTERM (killed)",
                self.name()
            ));
        }
        match problem {
            None => Ok(()),
            Some(p) => Err(format!("{p}; log tail:\n{}", self.log_tail(15))),
        }
    }

    /// SIGKILL to the whole process group (a crash).
    pub fn kill(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait();
        reap_group(pid, Duration::from_secs(5));
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())
            .and_then(|mut f| writeln!(f, "===== e2e: SIGKILLed at {} =====", unix_now()));
        Ok(())
    }

    // -- RPC over jsonrpcs's FIFO ------------------------------------------

    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        self.rpc_timeout(method, params, Duration::from_secs(30))
    }

    /// One JSON-RPC call: the reply FIFO (no dots in its name: jsonrpcs
    /// forbids them) is created (and opened for
    /// reading) in the node dir before the request is written, since
    /// jsonrpcs gives up on a reply FIFO without a reader.
    pub fn rpc_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let name = format!(
            "e2ereply_{}_{}",
            std::process::id(),
            RPC_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let reply_path = self.dir.join(&name);
        let c = std::ffi::CString::new(reply_path.to_str().ok_or("path")?)
            .map_err(|e| e.to_string())?;
        // SAFETY: mkfifo on a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(format!(
                "mkfifo {}: {}",
                reply_path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let r = self.rpc_exchange(method, params, &reply_path, &name, timeout);
        let _ = fs::remove_file(&reply_path);
        r
    }

    fn rpc_exchange(
        &self,
        method: &str,
        params: Value,
        reply_path: &Path,
        reply_name: &str,
        timeout: Duration,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut reply = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(reply_path)
            .map_err(|e| format!("opening reply fifo: {e}"))?;
        let req = json!({
            "jsonrpc": "2.0",
            "method": method,
            "params": params,
            "reply_name": reply_name,
            "id": 1,
        });
        let mut line = req.to_string();
        line.push('\n');
        // At most PIPE_BUF: the write is atomic among the FIFO's writers.
        if line.len() > 4096 {
            return Err("request larger than PIPE_BUF".into());
        }
        let fifo = self.dir.join("rpc.fifo");
        let mut w = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .map_err(|e| format!("opening {}: {e}", fifo.display()))?;
        loop {
            match w.write(line.as_bytes()) {
                Ok(n) if n == line.len() => break,
                Ok(n) => return Err(format!("short write to FIFO: {n}")),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(format!("writing {}: {e}", fifo.display())),
            }
        }
        drop(w);
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let fd = reply.as_raw_fd();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{method}: no reply within {timeout:?}"));
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if n == 0 {
                continue;
            }
            // POLLIN/POLLHUP only once the writer (Kamailio) has opened.
            let mut eof = false;
            loop {
                match reply.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("reading reply: {e}")),
                }
            }
            if eof {
                break;
            }
        }
        let v: Value = serde_json::from_slice(&buf).map_err(|e| {
            format!(
                "{method}: reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&buf[..buf.len().min(300)])
            )
        })?;
        if let Some(err) = v.get("error") {
            return Err(format!("{method}: RPC error {err}"));
        }
        v.get("result")
            .cloned()
            .ok_or_else(|| format!("{method}: reply without result: {v}"))
    }

    /// usrloc's contacts, keyed by (AOR, contact address), from ul.dump.
    pub fn contacts(&self) -> Contacts {
        self.try_contacts().unwrap_or_else(|e| {
            panic!(
                "ul.dump on {}: {e}\nlog tail:\n{}",
                self.name(),
                self.log_tail(10)
            )
        })
    }

    pub fn try_contacts(&self) -> Result<Contacts, String> {
        let t0 = unix_now();
        let v = self.rpc("ul.dump", json!([]))?;
        parse_ul_dump(&v, t0)
    }

    pub fn sersync_status(&self) -> Result<SersyncStatus, String> {
        let v = self.rpc_timeout("sersync.status", json!([]), Duration::from_secs(10))?;
        Ok(SersyncStatus::parse(&v))
    }

    pub fn status(&self) -> SersyncStatus {
        self.sersync_status()
            .unwrap_or_else(|e| panic!("sersync.status on {}: {e}", self.name()))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.stop_within(Duration::from_secs(5)) {
                eprintln!("e2e: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Contacts as ul.dump reports them

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expires {
    /// Absolute unix time: the dump's time plus ul.dump's relative value.
    At(i64),
    /// "permanent", "deleted", "expired": as ul.dump says.
    Word(String),
}

/// Every field save() stores, as ul.dump shows it. `socket`,
/// `tcpconn_id` and `last_modified` are per node and never compared.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactFields {
    pub aor: String,
    pub address: String,
    pub expires: Expires,
    /// Thousandths (usrloc's qvalue_t), -1 when unset.
    pub q: i64,
    pub call_id: String,
    pub cseq: i64,
    pub user_agent: String,
    pub received: String,
    pub path: String,
    pub flags: i64,
    pub cflags: i64,
    pub methods: i64,
    pub instance: String,
    pub reg_id: i64,
    pub server_id: i64,
    pub ruid: String,
    // not compared:
    pub socket: String,
    pub tcpconn_id: i64,
    pub last_modified: i64,
}

impl ContactFields {
    /// Differences in the replicated fields, "field: a != b".
    pub fn diff(&self, other: &ContactFields) -> Vec<String> {
        let mut d = Vec::new();
        macro_rules! cmp {
            ($($f:ident),*) => {$(
                if self.$f != other.$f {
                    d.push(format!("{}: {:?} != {:?}", stringify!($f), self.$f, other.$f));
                }
            )*};
        }
        cmp!(
            aor, address, q, call_id, cseq, user_agent, received, path, flags, cflags, methods,
            instance, reg_id, server_id, ruid
        );
        match (&self.expires, &other.expires) {
            (Expires::At(a), Expires::At(b)) if (a - b).abs() <= EXPIRES_TOLERANCE => {}
            (a, b) if a == b => {}
            (a, b) => d.push(format!("expires: {a:?} != {b:?}")),
        }
        d
    }
}

pub type Contacts = BTreeMap<(String, String), ContactFields>;

fn text(c: &Value, k: &str) -> String {
    match c.get(k) {
        Some(Value::String(s)) if s == "[not set]" => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn num(c: &Value, k: &str) -> i64 {
    match c.get(k) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .unwrap_or(i64::MIN),
        Some(Value::String(s)) => s.parse().unwrap_or(i64::MIN),
        _ => i64::MIN,
    }
}

/// ul.dump gives Q as a double (q/1000), -1 when unset; back to usrloc's
/// integer thousandths.
fn qvalue(c: &Value) -> i64 {
    match c.get("Q").and_then(Value::as_f64) {
        Some(q) if q < 0.0 => -1,
        Some(q) => (q * 1000.0).round() as i64,
        None => i64::MIN,
    }
}

/// ul.dump's shape in 5.6: {"Domains":[{"Domain":{"Domain":"location",
/// "AoRs":[{"Info":{"AoR":..,"Contacts":[{"Contact":{..}}]}}]}}]}.
/// A second contact under an already seen (AOR, address) key (usrloc allows
/// it when +sip.instance differs) is kept under "<address> #dup <ruid>".
pub fn parse_ul_dump(v: &Value, dump_time: i64) -> Result<Contacts, String> {
    let mut out = Contacts::new();
    let domains = v
        .get("Domains")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("ul.dump without Domains: {}", short(v)))?;
    for d in domains {
        let dom = d.get("Domain").ok_or("Domains[] without Domain")?;
        let aors = dom
            .get("AoRs")
            .and_then(Value::as_array)
            .ok_or("Domain without AoRs")?;
        for a in aors {
            let info = a.get("Info").ok_or("AoRs[] without Info")?;
            let aor = text(info, "AoR");
            let contacts = info
                .get("Contacts")
                .and_then(Value::as_array)
                .ok_or("Info without Contacts")?;
            for c in contacts {
                let c = c.get("Contact").ok_or("Contacts[] without Contact")?;
                let expires = match c.get("Expires") {
                    Some(Value::Number(n)) => Expires::At(dump_time + n.as_i64().unwrap_or(0)),
                    Some(Value::String(s)) => Expires::Word(s.clone()),
                    other => return Err(format!("odd Expires {other:?}")),
                };
                let f = ContactFields {
                    aor: aor.clone(),
                    address: text(c, "Address"),
                    expires,
                    q: qvalue(c),
                    call_id: text(c, "Call-ID"),
                    cseq: num(c, "CSeq"),
                    user_agent: text(c, "User-Agent"),
                    received: text(c, "Received"),
                    path: text(c, "Path"),
                    flags: num(c, "Flags"),
                    cflags: num(c, "CFlags"),
                    methods: num(c, "Methods"),
                    instance: text(c, "Instance"),
                    reg_id: num(c, "Reg-Id"),
                    server_id: num(c, "Server-Id"),
                    ruid: text(c, "Ruid"),
                    socket: text(c, "Socket"),
                    tcpconn_id: num(c, "Tcpconn-Id"),
                    last_modified: num(c, "Last-Modified"),
                };
                let mut key = (aor.clone(), f.address.clone());
                if out.contains_key(&key) {
                    key.1 = format!("{} #dup {}", f.address, f.ruid);
                }
                out.insert(key, f);
            }
        }
    }
    Ok(out)
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(300).collect()
}

/// Compares snapshots; Ok(count) when all hold the same contacts with the
/// same fields, else a readable diff (the first few differences).
pub fn compare_contacts(named: &[(String, Contacts)]) -> Result<usize, String> {
    let (base_name, base) = &named[0];
    let mut report = String::new();
    for (name, other) in &named[1..] {
        let missing: Vec<_> = base.keys().filter(|k| !other.contains_key(*k)).collect();
        let extra: Vec<_> = other.keys().filter(|k| !base.contains_key(*k)).collect();
        let mut fields = Vec::new();
        for (k, a) in base {
            if let Some(b) = other.get(k) {
                let d = a.diff(b);
                if !d.is_empty() {
                    fields.push(format!("  {k:?}: {}", d.join("; ")));
                }
            }
        }
        if missing.is_empty() && extra.is_empty() && fields.is_empty() {
            continue;
        }
        let _ = writeln!(
            report,
            "{base_name} has {} contacts, {name} has {}: {} missing on {name}, \
             {} only on {name}, {} differ",
            base.len(),
            other.len(),
            missing.len(),
            extra.len(),
            fields.len()
        );
        for k in missing.iter().take(5) {
            let _ = writeln!(report, "  missing on {name}: {k:?}");
        }
        for k in extra.iter().take(5) {
            let _ = writeln!(report, "  only on {name}: {k:?} {:?}", other[*k]);
        }
        for f in fields.iter().take(5) {
            let _ = writeln!(report, "{f}");
        }
    }
    if report.is_empty() {
        Ok(base.len())
    } else {
        Err(report)
    }
}

fn snapshots(nodes: &[&Node]) -> Result<Vec<(String, Contacts)>, String> {
    nodes
        .iter()
        .map(|n| {
            n.try_contacts()
                .map(|c| (n.name(), c))
                .map_err(|e| format!("{}: {e}", n.name()))
        })
        .collect()
}

/// Asserts that the nodes hold the same contacts, field by field.
pub fn assert_same_contacts(nodes: &[&Node]) -> usize {
    let snaps = snapshots(nodes).unwrap_or_else(|e| panic!("ul.dump failed: {e}"));
    compare_contacts(&snaps).unwrap_or_else(|d| panic!("nodes differ:\n{d}"))
}

/// Waits until the nodes hold the same contacts and `check` accepts them
/// (e.g. the expected count); panics with the last diff and the nodes'
/// sersync status on timeout. Returns the converged contacts.
pub fn wait_converged(
    nodes: &[&Node],
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Contacts) -> Result<(), String>,
) -> Contacts {
    let start = Instant::now();
    let mut last = String::new();
    let mut result = None;
    let ok = wait_until(timeout, || match snapshots(nodes) {
        Err(e) => {
            last = e;
            false
        }
        Ok(snaps) => match compare_contacts(&snaps) {
            Err(d) => {
                last = d;
                false
            }
            Ok(_) => match check(&snaps[0].1) {
                Err(e) => {
                    last = format!("all nodes equal, but: {e}");
                    false
                }
                Ok(()) => {
                    result = Some(snaps.into_iter().next().map(|s| s.1).unwrap_or_default());
                    true
                }
            },
        },
    });
    if !ok {
        let status: String = nodes
            .iter()
            .map(|n| match n.sersync_status() {
                Ok(s) => format!("{}: {}\n", n.name(), s.summary()),
                Err(e) => format!("{}: sersync.status: {e}\n", n.name()),
            })
            .collect();
        let errors: String = nodes
            .iter()
            .map(|n| {
                let l: Vec<String> = n
                    .log_grep("ERROR")
                    .into_iter()
                    .chain(n.log_grep("sersync"))
                    .rev()
                    .take(8)
                    .collect();
                format!(
                    "--- {} (last ERROR/sersync log lines) ---\n{}\n",
                    n.name(),
                    l.join("\n")
                )
            })
            .collect();
        panic!("{what}: not converged after {timeout:?}:\n{last}\n{status}{errors}");
    }
    eprintln!(
        "e2e: {what}: converged in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    result.unwrap_or_default()
}

/// Contacts whose AOR starts with `prefix`.
pub fn count_prefix(c: &Contacts, prefix: &str) -> usize {
    c.keys().filter(|(aor, _)| aor.starts_with(prefix)).count()
}

// ---------------------------------------------------------------------------
// sersync.status

#[derive(Clone, Debug, Default)]
pub struct PeerStatus {
    pub node_id: String,
    pub address: String,
    /// "down", "connecting", "up", "refused"
    pub state: String,
    pub sent: u64,
    pub acked: u64,
    pub pending: u64,
    pub lag_ms: u64,
    pub received: u64,
    pub last_error: String,
}

#[derive(Clone, Debug, Default)]
pub struct SersyncStatus {
    pub node_id: String,
    pub running: i64,
    pub queue_depth: u64,
    pub queue_dropped: u64,
    pub journaled: u64,
    pub last_seq: u64,
    pub applied: u64,
    pub apply_pending: u64,
    pub apply_failures: u64,
    pub applied_via_db: u64,
    pub last_error: String,
    pub peers: Vec<PeerStatus>,
    pub raw: Value,
}

/// Looks a key up ignoring case, '-' and '_' ("last_seq" = "Last-Seq").
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_lowercase()
    };
    let want = norm(key);
    v.as_object()?
        .iter()
        .find(|(k, _)| norm(k) == want)
        .map(|(_, v)| v)
}

fn u(v: &Value, key: &str) -> u64 {
    match field(v, key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn s(v: &Value, key: &str) -> String {
    match field(v, key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

impl SersyncStatus {
    pub fn parse(v: &Value) -> SersyncStatus {
        let peers_v: Vec<&Value> = match field(v, "peers") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(Value::Object(o)) => o.values().collect(),
            _ => Vec::new(),
        };
        let peers = peers_v
            .into_iter()
            .map(|p| PeerStatus {
                node_id: s(p, "node_id"),
                address: s(p, "address"),
                state: match field(p, "state") {
                    Some(Value::Number(n)) => match n.as_i64() {
                        Some(0) => "down",
                        Some(1) => "connecting",
                        Some(2) => "up",
                        Some(3) => "refused",
                        _ => "unknown",
                    }
                    .to_string(),
                    Some(Value::String(x)) => x.to_lowercase(),
                    _ => String::new(),
                },
                sent: u(p, "sent"),
                acked: u(p, "acked"),
                pending: u(p, "pending"),
                lag_ms: u(p, "lag_ms"),
                received: u(p, "received"),
                last_error: s(p, "last_error"),
            })
            .collect();
        SersyncStatus {
            node_id: s(v, "node_id"),
            running: match field(v, "running") {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
                Some(Value::Bool(b)) => *b as i64,
                _ => 0,
            },
            queue_depth: u(v, "queue_depth"),
            queue_dropped: u(v, "queue_dropped"),
            journaled: u(v, "journaled"),
            last_seq: u(v, "last_seq"),
            applied: u(v, "applied"),
            apply_pending: u(v, "apply_pending"),
            apply_failures: u(v, "apply_failures"),
            applied_via_db: u(v, "applied_via_db"),
            last_error: s(v, "last_error"),
            peers,
            raw: v.clone(),
        }
    }

    /// The peer whose address names `ip` (or whose node id is `id`).
    pub fn peer(&self, ip: &str, id: &str) -> Option<&PeerStatus> {
        let addr = format!("{ip}:{SERSYNC_PORT}");
        self.peers
            .iter()
            .find(|p| p.address.contains(&addr) || (!id.is_empty() && p.node_id == id))
    }

    pub fn summary(&self) -> String {
        let mut t = format!(
            "id={} running={} journaled={} last_seq={} applied={} apply_pending={} \
             apply_failures={} via_db={} queue={}/{} dropped err={:?}",
            self.node_id,
            self.running,
            self.journaled,
            self.last_seq,
            self.applied,
            self.apply_pending,
            self.apply_failures,
            self.applied_via_db,
            self.queue_depth,
            self.queue_dropped,
            self.last_error
        );
        for p in &self.peers {
            let _ = write!(
                t,
                "\n    peer {} {} {}: sent={} acked={} pending={} lag={}ms received={} err={:?}",
                p.node_id,
                p.address,
                p.state,
                p.sent,
                p.acked,
                p.pending,
                p.lag_ms,
                p.received,
                p.last_error
            );
        }
        t
    }
}

// ---------------------------------------------------------------------------
// sipp

/// One REGISTER: the row of the injection CSV (see tests/e2e/register.xml).
#[derive(Clone, Debug)]
pub struct Reg {
    pub user: String,
    /// Contact tag: the contact is sip:<user>-<tag>@<source ip>:5099.
    pub tag: String,
    pub expires: u32,
    pub instance: bool,
    pub reg_id: bool,
    pub path: bool,
    pub nat: bool,
    pub flags: bool,
    pub replace: bool,
    pub cseq: u32,
    pub uuid: u64,
    /// Contact q-value in thousandths (ul.dump's Q), None: no q parameter.
    pub q: Option<u16>,
    /// false: no Allow header (usrloc then stores "all methods").
    pub allow: bool,
    /// The contact's host; None: sipp's source address.
    pub host: Option<String>,
}

impl Reg {
    pub fn new(user: impl Into<String>, expires: u32) -> Reg {
        Reg {
            user: user.into(),
            tag: "a".into(),
            expires,
            instance: false,
            reg_id: false,
            path: false,
            nat: false,
            flags: false,
            replace: false,
            cseq: 1,
            uuid: 0,
            q: None,
            allow: true,
            host: None,
        }
    }

    /// The contact address usrloc stores for this registration.
    pub fn address(&self, source_ip: &str, transport: Transport) -> String {
        let host = self.host.as_deref().unwrap_or(source_ip);
        format!(
            "sip:{}-{}@{host}:5099;transport={}",
            self.user,
            self.tag,
            transport.upper()
        )
    }

    pub fn instance_urn(&self) -> String {
        format!("<urn:uuid:00000000-0000-4000-8000-{:012}>", self.uuid)
    }

    /// The same registration with Expires: 0.
    pub fn deregistration(&self) -> Reg {
        Reg {
            expires: 0,
            cseq: self.cseq + 1,
            ..self.clone()
        }
    }

    fn csv_row(&self, source_ip: &str) -> String {
        let pick =
            |on: bool, yes: &str, no: &str| if on { yes.to_string() } else { no.to_string() };
        format!(
            "{};{};{};{};{};{};{};{};{};{};{:012};{};{};{}",
            self.user,
            self.expires,
            self.tag,
            pick(self.instance, "+sip.instance", "x-no-instance"),
            pick(self.reg_id, "reg-id", "x-no-reg-id"),
            pick(self.path, "Path", "X-No-Path"),
            pick(self.nat, "X-NAT", "X-No-NAT"),
            pick(self.flags, "X-Flags", "X-No-Flags"),
            pick(self.replace, "X-Replace", "X-No-Replace"),
            self.cseq,
            self.uuid,
            match self.q {
                Some(q) => format!("q={}.{:03}", q / 1000, q % 1000),
                None => "x-no-q".to_string(),
            },
            pick(self.allow, "Allow", "X-No-Allow"),
            self.host.as_deref().unwrap_or(source_ip)
        )
    }
}

/// `n` users `<prefix><i>` with a mix of what save() stores: Path (with a
/// received parameter, path_use_received), X-NAT (received from
/// fix_nated_register), +sip.instance with and without reg-id, a branch
/// flag (cflags), q-values, no Allow header (all methods), varied Expires
/// and CSeq.
pub fn mixed_users(prefix: &str, n: usize, uuid_base: u64) -> Vec<Reg> {
    (0..n)
        .map(|i| {
            let mut r = Reg::new(format!("{prefix}{i:05}"), 1800 + ((i * 37) % 1800) as u32);
            r.path = i % 4 == 1;
            r.nat = i % 5 == 2;
            r.instance = i % 3 == 0;
            r.reg_id = i % 6 == 0;
            r.flags = i % 7 == 3;
            r.cseq = 1 + (i % 1000) as u32;
            r.uuid = uuid_base + i as u64;
            r.q = (i % 9 == 4).then_some(((i * 7) % 1001) as u16);
            r.allow = i % 8 != 5;
            r
        })
        .collect()
}

/// Writes sipp's injection file for a sipp sending from `source_ip`; no
/// field may hold a ';'.
pub fn write_injection_csv(path: &Path, regs: &[Reg], source_ip: &str) {
    let mut s = String::from("SEQUENTIAL\n");
    for r in regs {
        assert!(!r.user.contains(';') && !r.tag.contains(';'));
        s.push_str(&r.csv_row(source_ip));
        s.push('\n');
    }
    fs::write(path, s).expect("writing injection CSV");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn upper(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
}

static SIPP_SEQ: AtomicU64 = AtomicU64::new(1);

fn sipp_run_dir(node: &Node, label: &str) -> PathBuf {
    let n = SIPP_SEQ.fetch_add(1, Ordering::Relaxed);
    let d = node
        .dir
        .parent()
        .unwrap_or(&node.dir)
        .join("sipp")
        .join(format!("{n:03}-{label}"));
    fs::create_dir_all(&d).expect("creating sipp dir");
    d
}

/// sipp against `node` from its own address, running `scenario` (a file
/// name under tests/e2e/, or a path) with `dir/users.csv` as injection
/// file, `n` calls at `rate`/s, errors to `dir/errors.log`. One-shot runs
/// add `-timeout`; loads that run until told to stop do not.
pub fn sipp_command(
    node: &Node,
    scenario: &Path,
    dir: &Path,
    n: usize,
    rate: u32,
    transport: &str,
) -> Command {
    let mut cmd = sipp_base(scenario, dir);
    cmd.arg(format!("{}:{SIP_PORT}", node.ip))
        .arg("-inf")
        .arg(dir.join("users.csv"))
        .args(["-m", &n.to_string(), "-r", &rate.to_string(), "-rp", "1000"])
        .args(["-l", &n.clamp(1, 2000).to_string()])
        .args(["-t", transport])
        .args(["-i", &node.ip, "-bind_local"]);
    cmd
}

/// What every sipp run shares: `scenario` (under tests/e2e/, or a path),
/// errors to `dir/errors.log`, run in `dir`, no terminal, its own process
/// group, killed with the test.
fn sipp_base(scenario: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(SIPP);
    cmd.arg("-sf")
        .arg(e2e_dir().join(scenario))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .arg("-nostdin")
        .current_dir(dir)
        .stdin(Stdio::null())
        .process_group(0)
        .pre_exec_parent_death(libc::SIGKILL);
    cmd
}

/// Registers `regs` on `node` over UDP (sipp -t u1, from the node's own
/// address) and waits for sipp; panics unless every REGISTER got its 200.
pub fn sipp_register(node: &Node, regs: &[Reg], rate: u32, label: &str) {
    let dir = sipp_run_dir(node, label);
    write_injection_csv(&dir.join("users.csv"), regs, &node.ip);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut cmd = sipp_command(
        node,
        Path::new("register.xml"),
        &dir,
        regs.len(),
        rate,
        "u1",
    );
    cmd.args(["-timeout", "120"]);
    cmd.args(["-trace_stat", "-stf"])
        .arg(dir.join("stat.csv"))
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let guard = ChildGuard(Some(child.id()));
    let status = child.wait().expect("waiting for sipp");
    std::mem::forget(guard);
    let (ok, failed) = sipp_stat_counts(&dir.join("stat.csv"));
    let errors = fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    assert!(
        status.success() && ok == Some(regs.len() as u64) && failed == Some(0),
        "sipp {label} on {}: exit {status}, successful {ok:?} of {}, failed {failed:?}\n\
         errors (first lines):\n{}\nsipp output tail:\n{}\nnode log tail:\n{}",
        node.name(),
        regs.len(),
        errors.lines().take(15).collect::<Vec<_>>().join("\n"),
        tail(&dir.join("sipp.out"), 20),
        node.log_tail(10)
    );
}

/// Successful and failed call counts (cumulative) from sipp's -trace_stat
/// CSV, last line.
fn sipp_stat_counts(path: &Path) -> (Option<u64>, Option<u64>) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let Some(header) = text.lines().next() else {
        return (None, None);
    };
    let Some(last) = text.lines().rfind(|l| !l.trim().is_empty()) else {
        return (None, None);
    };
    let cols: Vec<&str> = header.split(';').collect();
    let vals: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .and_then(|i| vals.get(i))
            .and_then(|v| v.trim().parse().ok())
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// Kills a process we started if a panic unwinds past it.
struct ChildGuard(Option<u32>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill(2) on the PID of our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// A sipp holding one TCP connection with registrations made over it.
pub struct SippKeep {
    child: Option<Child>,
    pub dir: PathBuf,
    pub count: usize,
}

/// Registers `regs` on `node` over one TCP connection (sipp -t t1) and
/// returns once every REGISTER has its 200 OK; sipp then idles in the
/// scenario's long pause, keeping the connection until `kill`.
pub fn sipp_register_keep(node: &Node, regs: &[Reg], rate: u32, label: &str) -> SippKeep {
    let dir = sipp_run_dir(node, label);
    write_injection_csv(&dir.join("users.csv"), regs, &node.ip);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut cmd = sipp_command(
        node,
        Path::new("register_keep.xml"),
        &dir,
        regs.len(),
        rate,
        "t1",
    );
    cmd.args(["-timeout", "120"]);
    cmd.args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let mut keep = SippKeep {
        child: Some(child),
        dir: dir.clone(),
        count: regs.len(),
    };
    let mut oks = 0;
    let mut exited = None;
    let done = wait_until(Duration::from_secs(60), || {
        oks = fs::read_to_string(dir.join("messages.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("SIP/2.0 200"))
            .count();
        if let Some(st) = keep
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            exited = Some(st);
            return true;
        }
        oks >= regs.len()
    });
    let errors = fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    assert!(
        done && exited.is_none() && oks == regs.len() && errors.trim().is_empty(),
        "sipp {label} (TCP) on {}: {oks} of {} REGISTERs got 200 OK, exited {exited:?}\n\
         errors:\n{}\nsipp output tail:\n{}\nnode log tail:\n{}",
        node.name(),
        regs.len(),
        errors.lines().take(15).collect::<Vec<_>>().join("\n"),
        tail(&dir.join("sipp.out"), 20),
        node.log_tail(10)
    );
    keep
}

impl SippKeep {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: the kernel closes the connection (Kamailio sees it lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SippKeep {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// JSON-RPC over HTTP, kamcmd, the node's database

/// The port of the nodes' JSON-RPC over HTTP (see kamailio.cfg.in).
pub const HTTP_PORT: u16 = 8080;

/// An RPC call's failure as its caller sees it: the JSON-RPC error code and
/// message, or code 0 when the call did not get an answer at all.
#[derive(Clone, Debug)]
pub struct RpcFault {
    pub code: i64,
    pub message: String,
}

impl std::fmt::Display for RpcFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl Node {
    /// Where the node serves JSON-RPC over HTTP.
    pub fn http_url(&self) -> String {
        format!("http://{}:{HTTP_PORT}/RPC", self.ip)
    }

    /// One JSON-RPC call over HTTP, made with curl as a web application
    /// would; the body goes through a file, so it may be large.
    pub fn http_rpc(&self, method: &str, params: Value) -> Result<Value, RpcFault> {
        let n = RPC_SEQ.fetch_add(1, Ordering::Relaxed);
        let body = self
            .dir
            .join(format!("http-{}-{n}.json", std::process::id()));
        let req = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": n});
        let fault = |m: String| RpcFault {
            code: 0,
            message: m,
        };
        fs::write(&body, req.to_string())
            .map_err(|e| fault(format!("writing {}: {e}", body.display())))?;
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "120",
                "-H",
                "Content-Type: application/json",
            ])
            // no "Expect: 100-continue": xhttp does not answer it
            .args(["-H", "Expect:", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(self.http_url())
            .stdin(Stdio::null())
            .output();
        let _ = fs::remove_file(&body);
        let out = out.map_err(|e| fault(format!("running curl: {e}")))?;
        if !out.status.success() {
            return Err(fault(format!(
                "curl {}: {} {}",
                self.http_url(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            fault(format!(
                "{method}: HTTP reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(300)])
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Err(RpcFault {
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        v.get("result")
            .cloned()
            .ok_or_else(|| fault(format!("{method}: reply without result: {}", short(&v))))
    }

    /// kamcmd through the node's binrpc socket (ctl); its output.
    pub fn kamcmd(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("kamcmd")
            .arg("-s")
            .arg(format!("unix:{}", self.dir.join("ctl.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running kamcmd: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() && !text.starts_with("error") {
            Ok(text)
        } else {
            Err(format!("kamcmd {args:?}: {} {text}", out.status))
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("kamailio.db")
    }

    /// Runs SQL on the node's database with the sqlite3 shell (WAL: it
    /// reads beside a running node); one line per row, fields '|'-separated.
    pub fn sql(&self, sql: &str) -> Result<Vec<String>, String> {
        let out = Command::new("sqlite3")
            .args(["-batch", "-noheader", "-cmd", ".timeout 10000"])
            .arg(self.db_path())
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running sqlite3: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "sqlite3 {} {sql:?}: {}",
                self.db_path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

// ---------------------------------------------------------------------------
// sipp calls

/// A sipp in server mode (a callee) on ip:port; killed on drop.
pub struct SippServer {
    child: Option<Child>,
    pub dir: PathBuf,
}

/// Starts `scenario` (from tests/e2e) as a sipp server on ip:port (UDP)
/// for `calls` calls; its files go beside `node`'s.
pub fn sipp_server(
    node: &Node,
    ip: &str,
    port: u16,
    scenario: &str,
    calls: usize,
    label: &str,
) -> SippServer {
    let dir = sipp_run_dir(node, label);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let child = sipp_base(Path::new(scenario), &dir)
        .args(["-i", ip, "-p", &port.to_string(), "-bind_local"])
        .args(["-t", "u1", "-m", &calls.to_string()])
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .args(["-timeout", "120"])
        .stdout(out.try_clone().expect("fd"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting sipp: {e}"));
    // listening once it has written its first screen
    let _ = wait_until(Duration::from_secs(5), || {
        fs::metadata(dir.join("sipp.out"))
            .map(|m| m.len() > 0)
            .unwrap_or(false)
    });
    SippServer {
        child: Some(child),
        dir,
    }
}

impl SippServer {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits for sipp to finish its calls: Ok when every call succeeded.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), String> {
        let Some(child) = self.child.as_mut() else {
            return Err("sipp server already gone".into());
        };
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let Some(st) = status else {
            return Err(format!("sipp server still running after {timeout:?}"));
        };
        self.child = None;
        if st.success() {
            Ok(())
        } else {
            Err(format!(
                "sipp server exit {st}; errors:\n{}\nmessages tail:\n{}",
                tail(&self.dir.join("errors.log"), 10),
                tail(&self.dir.join("messages.log"), 30)
            ))
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SippServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One call with `scenario` (from tests/e2e) to sip:user@domain, sent
/// through `node` over UDP from the node's own address; Ok when sipp
/// counts it successful (the scenario decides what that means).
pub fn sipp_call(
    node: &Node,
    scenario: &str,
    user: &str,
    domain: &str,
    label: &str,
) -> Result<(), String> {
    let dir = sipp_run_dir(node, label);
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut child = sipp_base(Path::new(scenario), &dir)
        .arg(format!("{}:{SIP_PORT}", node.ip))
        .args(["-s", user, "-key", "domain", domain])
        .args(["-i", &node.ip, "-bind_local", "-t", "u1"])
        .args(["-m", "1", "-l", "1"])
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .args(["-timeout", "30"])
        .stdout(out.try_clone().expect("fd"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let guard = ChildGuard(Some(child.id()));
    let status = child.wait().expect("waiting for sipp");
    std::mem::forget(guard);
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "sipp {label} via {}: exit {status}; errors:\n{}\nmessages tail:\n{}",
            node.name(),
            tail(&dir.join("errors.log"), 10),
            tail(&dir.join("messages.log"), 40)
        ))
    }
}

/// Registers SER-0.9 style aliases on `node` (tests/e2e/register_alias.xml):
/// each (alias user, SIP URI it stands for) goes to the usrloc table
/// "aliases". Panics unless every REGISTER got its 200.
pub fn sipp_register_aliases(node: &Node, aliases: &[(&str, &str)], label: &str) {
    let dir = sipp_run_dir(node, label);
    let mut csv = String::from("SEQUENTIAL\n");
    for (a, uri) in aliases {
        assert!(!a.contains(';') && !uri.contains(';'));
        let _ = writeln!(csv, "{a};{uri}");
    }
    fs::write(dir.join("users.csv"), csv).expect("writing injection CSV");
    let out = File::create(dir.join("sipp.out")).expect("sipp.out");
    let mut cmd = sipp_command(
        node,
        Path::new("register_alias.xml"),
        &dir,
        aliases.len(),
        10,
        "u1",
    );
    cmd.args(["-timeout", "120"]);
    cmd.args(["-trace_stat", "-stf"])
        .arg(dir.join("stat.csv"))
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting sipp: {e}"));
    let guard = ChildGuard(Some(child.id()));
    let status = child.wait().expect("waiting for sipp");
    std::mem::forget(guard);
    let (ok, _) = sipp_stat_counts(&dir.join("stat.csv"));
    assert!(
        status.success() && ok == Some(aliases.len() as u64),
        "sipp {label} on {}: exit {status}, successful {ok:?} of {}\nerrors:\n{}\nnode log tail:\n{}",
        node.name(),
        aliases.len(),
        tail(&dir.join("errors.log"), 10),
        node.log_tail(10)
    );
}

// ---------------------------------------------------------------------------
// Membership: nodes added to a running cluster, sersync.peers, the journal

impl Cluster {
    /// Creates node `index` (1-based, the next one) on `ip` in the
    /// cluster's directory, configured with `peers` only (its seeds; the
    /// others learn it from them), `edit` applied to its kamailio.cfg; not
    /// started. Returns its index.
    pub fn add_node(
        &mut self,
        ip: &str,
        peers: &[String],
        opts: &ClusterOptions,
        edit: impl Fn(String) -> String,
    ) -> usize {
        let index = self.nodes.len() + 1;
        assert_port_free(ip, SIP_PORT);
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("cluster dir name")
            .to_string();
        let node = Node::create(
            &self.dir.join(format!("n{index}")),
            index,
            ip,
            peers,
            required_module().as_deref(),
            &format!("e2e-secret-{name}"),
            opts,
        );
        let cfg = node.dir.join("kamailio.cfg");
        let text = fs::read_to_string(&cfg).expect("reading kamailio.cfg");
        fs::write(&cfg, edit(text)).expect("writing kamailio.cfg");
        self.nodes.push(node);
        index
    }
}

/// `tcp:<ip>:5999`, a node's sersync address as `peer` takes it.
pub fn sersync_addr(ip: &str) -> String {
    format!("tcp:{ip}:{SERSYNC_PORT}")
}

impl Node {
    /// sersync.peers: one entry per member this node knows, parsed, with
    /// the raw structs beside (snapshot_* and the rest).
    pub fn sersync_peers(&self) -> Result<(Vec<PeerStatus>, Vec<Value>), String> {
        let v = self.rpc_timeout("sersync.peers", json!([]), Duration::from_secs(10))?;
        let raw = match v {
            Value::Array(a) => a,
            Value::Null => Vec::new(),
            other => vec![other],
        };
        let parsed = SersyncStatus::parse(&json!({ "peers": raw.clone() })).peers;
        Ok((parsed, raw))
    }

    /// Node ids sersync.peers shows in state "up", sorted.
    pub fn peers_up(&self) -> Result<Vec<String>, String> {
        let mut ids: Vec<String> = self
            .sersync_peers()?
            .0
            .into_iter()
            .filter(|p| p.state == "up")
            .map(|p| p.node_id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The node's sersync journal (modparam "journal").
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("sersync.db")
    }

    /// One integer from the node's sersync journal (SQLite, WAL: read
    /// beside a running node), e.g. a count.
    pub fn journal_int(&self, sql: &str) -> Result<i64, String> {
        let p = self.journal_path();
        let db = rusqlite::Connection::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        db.busy_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        db.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map_err(|e| format!("{} {sql:?}: {e}", p.display()))
    }
}

// ---------------------------------------------------------------------------
// A private copy of the module (e2e_durability)

/// A copy of build/sersync.so under target/tmp, made once per test
/// process. Nodes that load it are not hit by a `make` that rewrites
/// build/sersync.so in place while they run (the Makefile's `cp` keeps the
/// inode, so mapped pages change under the running processes: SIGBUS).
pub fn private_module_copy() -> Option<PathBuf> {
    static COPY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let src = required_module()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        fs::create_dir_all(&dir).expect("creating e2e dir");
        let dst = dir.join(format!("sersync-{}.so", std::process::id()));
        let tmp = dir.join(format!("sersync-{}.so.tmp", std::process::id()));
        fs::copy(&src, &tmp).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        fs::rename(&tmp, &dst).expect("renaming the module copy");
        Some(dst)
    })
    .clone()
}

impl Cluster {
    /// `start_with_options` with the nodes loading `private_module_copy()`.
    pub fn start_private(name: &str, first: u8, n: usize, opts: &ClusterOptions) -> Cluster {
        let module = private_module_copy();
        let c = Self::start_opts(name, first, n, module.clone(), opts);
        if module.is_some() {
            c.wait_mesh_up(Duration::from_secs(30));
        }
        c
    }
}

/// A convergence check: exactly `n` contacts.
#[allow(dead_code)]
pub fn expect_contacts(n: usize) -> impl FnMut(&Contacts) -> Result<(), String> {
    move |c| {
        if c.len() == n {
            Ok(())
        } else {
            Err(format!("{} contacts, expected {n}", c.len()))
        }
    }
}
