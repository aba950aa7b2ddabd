//! CATCHUP_DIAG's tools: strace and perf on node 2's processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::sh;

#[derive(Clone, Copy, Default)]
pub struct Diag {
    pub timeline: bool,
    pub strace: bool,
    pub perf: bool,
    /// perf with DWARF call graphs on the door's jsonrpcs process only
    pub perf_rpc: bool,
}

pub struct Strace {
    pub child: Child,
    pub out: PathBuf,
}

pub fn strace_start(pid: u32, out: PathBuf) -> Option<Strace> {
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

pub fn perf_start(out: &Path, pid: Option<u32>) -> Option<Strace> {
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
pub fn perf_report(data: &Path) -> String {
    let d = data.display();
    sh(&format!(
        "perf report -i {d} --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | grep '%' | head -12; \
         echo '  -- top symbols --'; \
         perf report -i {d} --no-children --sort comm,dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep '%' | head -40"
    ))
}

pub fn strace_stop(mut s: Strace) -> String {
    // SAFETY: SIGINT to our own child, by PID; strace then detaches and
    // writes its summary.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGINT);
    }
    let _ = s.child.wait();
    fs::read_to_string(&s.out).unwrap_or_default()
}
