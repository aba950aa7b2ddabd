//! One Kamailio node: its process group (started, stopped, killed), its
//! log, its database and its sersync journal. Its RPC doors are in rpc.rs,
//! its contacts in contacts.rs, its sersync status in status.rs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::json;

use super::config::{create_db_with, node_config_with, ClusterOptions};
use super::processes::{
    describe_group, kamailio_cfg_lock_hang, reap_group, signal_group, tail, unix_now, wait_until,
    ParentDeath,
};
use super::ser_root::SerRoot;

pub const KAMAILIO: &str = "/usr/sbin/kamailio";

pub struct Node {
    pub index: usize,
    pub ip: String,
    pub server_id: u32,
    pub dir: PathBuf,
    /// Shared and private (per process) memory in MB: `kamailio -m -M`.
    pub memory_mb: (u32, u32),
    /// More `kamailio` arguments (ClusterOptions::kamailio_args).
    pub kamailio_args: Vec<String>,
    /// Environment variables for Kamailio from its next start (e.g.
    /// libfaketime's: a node whose clock is off).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// The Debian root whose Kamailio runs this node (ser_root.rs); None:
    /// the host's.
    pub ser_root: Option<SerRoot>,
}

impl Node {
    pub(super) fn create(
        dir: &Path,
        index: usize,
        ip: &str,
        peers: &[String],
        module: Option<&Path>,
        secret: &str,
        opts: &ClusterOptions,
    ) -> Node {
        fs::create_dir_all(dir).expect("creating node dir");
        // a node on a Debian root's Kamailio loads the module built for it
        let ser_root = opts.ser_root_of.get(&index).cloned();
        let module = match (&ser_root, module) {
            (Some(root), Some(_)) => Some(root.module.as_path()),
            (_, m) => m,
        };
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
        if opts.server_db.is_none() {
            create_db_with(&dir.join("kamailio.db"), &opts.usrloc_tables);
        }
        Node {
            index,
            ip: ip.to_string(),
            server_id: index as u32,
            dir: dir.to_path_buf(),
            memory_mb: (opts.shm_mb.unwrap_or(64), 16),
            kamailio_args: opts.kamailio_args.clone(),
            env: opts.env.clone(),
            child: None,
            ser_root,
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
        let child = self
            .kamailio_command()
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
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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
                    let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                    if let Some(seen) = kamailio_cfg_lock_hang(pid, &log) {
                        // Kamailio's bug, not sersync's (README, Limits):
                        // said loudly, not failed.
                        let version = self.ser_root.as_ref().map_or("5.6", |r| &r.version);
                        eprintln!(
                            "e2e: {}: Kamailio {version}'s own shutdown hang (not sersync's): \
                             {seen}; killed after {grace:?}",
                            self.name(),
                        );
                        signal_group(pid, libc::SIGKILL);
                        let _ = child.wait();
                        reap_group(pid, Duration::from_secs(5));
                        return Ok(());
                    }
                    problem = Some(format!(
                        "{} ignored SIGTERM for {grace:?}: killed; what its processes \
                         were doing:\n{}",
                        self.name(),
                        describe_group(pid)
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
            Some(p) => Err(format!("{p}; log tail:\n{}", self.log_tail(30))),
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

/// Waits until the node's log holds a line with every one of `needles`
/// among those containing `needles[0]` after the first `before` of them;
/// returns it.
pub fn expect_log(node: &Node, needles: &[&str], before: usize, what: &str) -> String {
    let mut new_lines = Vec::new();
    let mut found = None;
    let ok = wait_until(Duration::from_secs(10), || {
        let mut all = node.log_grep(needles[0]);
        new_lines = all.split_off(before.min(all.len()));
        found = new_lines
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned();
        found.is_some()
    });
    if !ok {
        panic!(
            "{what}: no new log line on {} with {needles:?}; new lines with {:?}:\n{}\nlog tail:\n{}",
            node.name(),
            needles[0],
            new_lines.join("\n"),
            node.log_tail(15)
        );
    }
    found.unwrap_or_default()
}

pub fn count_log(node: &Node, needles: &[&str]) -> usize {
    node.log_grep(needles[0])
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

impl Node {
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
