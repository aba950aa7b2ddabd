//! A node's RPC doors: jsonrpcs's FIFO (`Node::rpc`), JSON-RPC over HTTP
//! as a web application calls it (`Node::http_rpc`, faults as `RpcFault`)
//! and kamcmd over the binrpc socket.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::node::Node;

static RPC_SEQ: AtomicU64 = AtomicU64::new(1);

impl Node {
    /// sersync.apply's token, as this node's SER wrote it at start
    /// (modparam apply_token_file, readable by SER's user only): what a
    /// test needs to call sersync.apply as the engine does.
    pub fn apply_token(&self) -> String {
        let p = self.dir.join(super::config::APPLY_TOKEN_FILE);
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
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
}

// ---------------------------------------------------------------------------
// JSON-RPC over HTTP, kamcmd

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

    /// The PID of the node's process that `core.psx` describes as `dsc`
    /// (e.g. "JSONRPCS FIFO", "sersync"), asked over kamcmd.
    pub fn process_pid(&self, dsc: &str) -> u32 {
        let text = self.kamcmd(&["core.psx"]).expect("kamcmd core.psx");
        let mut pid = None;
        for line in text.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("PID:") {
                pid = p.trim().parse::<u32>().ok();
            } else if line.strip_prefix("DSC:").map(str::trim) == Some(dsc) {
                return pid.expect("PID before DSC in core.psx");
            }
        }
        panic!("{}: no process {dsc:?} in core.psx:\n{text}", self.name());
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
}

pub(super) fn short(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(300).collect()
}
