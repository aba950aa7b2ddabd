//! Calls with sipp: a callee in server mode (`SippServer`) and one call
//! through a node (`sipp_call`); the scenario decides what succeeds.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use super::config::SIP_PORT;
use super::node::Node;
use super::processes::{tail, wait_until, ChildGuard};
use super::sipp::{sipp_base, sipp_run_dir};

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
