//! Load generation: sipp REGISTER runs on node 1.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::probes::set_affinity;
use crate::settings::Settings;
use crate::support::*;
use crate::SIPP_IP;

#[derive(Debug, Default)]
pub struct SippRun {
    pub ok: u64,
    pub failed: u64,
    /// spawn -> exit
    pub secs: f64,
    pub exit_ok: bool,
    pub dir: PathBuf,
}

impl SippRun {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-3)
    }
}

/// `users` REGISTER on node 1 with at most `window` outstanding, at most
/// `rate`/s; waits for sipp. `done` is set when sipp exits.
#[allow(clippy::too_many_arguments)]
pub fn sipp_load(
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
    // SAFETY: prctl and sched_setaffinity (set_affinity) are
    // async-signal-safe; nothing else runs between fork and exec.
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
                set_affinity(0, 1);
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
pub fn stat_counts(path: &Path) -> (u64, u64) {
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
