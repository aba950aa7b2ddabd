//! Time and processes: waiting for a condition, the subreaper and process
//! groups that let the harness stop everything it started, and the
//! machine-wide lock that runs one cluster at a time.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
pub(super) fn become_subreaper() {
    SUBREAPER.call_once(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    });
}

pub(super) trait ParentDeath {
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
pub(super) fn signal_group(pgid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) on a negative pid addresses that process group.
    unsafe { libc::kill(-(pgid as i32), sig) == 0 }
}

/// Reaps what is left of process group `pgid` after its leader exited:
/// SIGKILLs the members and waits for them (they are ours: this process is
/// their subreaper). Returns how many were left.
pub(super) fn reap_group(pgid: u32, deadline: Duration) -> usize {
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

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

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

/// Kills a process we started if a panic unwinds past it.
pub(super) struct ChildGuard(pub(super) Option<u32>);

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

/// Sends `sig` to `pid`; panics if it cannot.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process of our own cluster.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill {pid} {sig}"
    );
}

/// Continues a stopped process when dropped, also if the test fails.
pub struct Stopped(u32);

impl Stopped {
    pub fn new(pid: u32) -> Stopped {
        signal(pid, libc::SIGSTOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above; failure (the process is gone) is harmless here.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// Kamailio's own shutdown hang (6.0.1; 5.6.3 once), recognised by its signature: every
/// child left in group `pgid` (not the main process `pgid` itself) is one
/// thread, logged "sig_usr(): signal 15 received" (it is in SER's SIGTERM
/// handler) and waits on one and the same futex: the configuration's
/// global lock, which the handler takes in a child that never took its
/// view of the configuration (ctl, the TCP processes), held by a child
/// already gone. Seen with no sersync loaded; sersync's own process never
/// takes that lock (it exits at once on SIGTERM), and with its engine
/// threads it could not match. Returns what was seen, or None for any
/// other hang.
pub fn kamailio_cfg_lock_hang(pgid: u32, log: &str) -> Option<String> {
    let mut futex = None;
    let mut pids = Vec::new();
    for pid in group_members(pgid) {
        if pid == pgid {
            continue;
        }
        let threads = fs::read_dir(format!("/proc/{pid}/task")).ok()?.count();
        let syscall = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        let mut f = syscall.split_whitespace();
        if threads != 1 || f.next() != Some("202") {
            return None;
        }
        let addr = f.next()?.to_string();
        if futex.get_or_insert_with(|| addr.clone()) != &addr {
            return None;
        }
        let in_handler = log.lines().any(|l| {
            l.contains(&format!("({pid}) INFO: <core>"))
                && l.contains("sig_usr(): signal 15 received")
        });
        if !in_handler {
            return None;
        }
        pids.push(pid);
    }
    let futex = futex?;
    Some(format!(
        "children {pids:?} all in SER's SIGTERM handler, waiting on futex {futex}"
    ))
}

/// The PIDs of the processes of group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let close = stat.rfind(')')?;
                    stat[close + 1..]
                        .split_whitespace()
                        .nth(2)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pgid)
        })
        .collect()
}

/// What the processes of group `pgid` are doing, for a shutdown that
/// hangs: each member's state and kernel wait channel, per thread, and
/// (where gdb is installed) the user-space stacks of every thread, so a
/// rare hang leaves evidence in the failure message instead of a guess.
pub(super) fn describe_group(pgid: u32) -> String {
    let mut out = String::new();
    for pid in group_members(pgid) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, split after ')'
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let comm = &stat[stat.find('(').map_or(0, |i| i + 1)..close];
        out.push_str(&format!(
            "process {pid} ({comm}) state {} ppid {}\n",
            fields.first().unwrap_or(&"?"),
            fields.get(1).unwrap_or(&"?")
        ));
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let tid = task.file_name().to_string_lossy().to_string();
                let base = format!("/proc/{pid}/task/{tid}");
                let read = |f: &str| fs::read_to_string(format!("{base}/{f}")).unwrap_or_default();
                let tstat = read("stat");
                let state = tstat
                    .rfind(')')
                    .and_then(|i| tstat[i + 1..].split_whitespace().next().map(str::to_string))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  thread {tid} ({}) state {state} wchan {} syscall {}\n",
                    read("comm").trim(),
                    read("wchan").trim(),
                    read("syscall").trim()
                ));
                for line in read("stack").lines().take(12) {
                    out.push_str(&format!("    {line}\n"));
                }
            }
        }
        let gdb = Command::new("timeout")
            .args(["20", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
            // the process's own root: a node in the Debian 13 root runs
            // that root's libc and Kamailio, not the host's
            .args(["-ex", &format!("set sysroot /proc/{pid}/root")])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt 25"])
            .output();
        if let Ok(o) = gdb {
            for line in String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
            {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}
