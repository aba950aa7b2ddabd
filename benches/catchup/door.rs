//! The two doors of jsonrpcs (FIFO, datagram socket): each node's
//! kamailio.cfg, and RPC through either door.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;
use crate::support::*;
use crate::NAME;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Fifo,
    Dgram,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Fifo => "FIFO",
            Door::Dgram => "dgram",
        }
    }
    pub fn other(self) -> Door {
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
pub fn config(
    index: usize,
    ip: &str,
    dir: &Path,
    peers: &[String],
    door: Door,
    db_mode: u8,
) -> String {
    let module = required_module();
    let cfg = node_config(
        index,
        ip,
        dir,
        peers,
        module.as_deref(),
        &format!("e2e-secret-{NAME}"),
    );
    let mut out = cfg;
    add_dgram_door(&mut out, dir);
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

/// jsonrpcs' transport bits: 1 HTTP, 2 FIFO, 4 datagram; keeps the
/// template's, adds the datagram socket `<dir>/rpc.sock`.
pub fn add_dgram_door(cfg: &mut String, dir: &Path) {
    let d = dir.to_str().expect("utf-8 dir");
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
    cfg_replace(
        cfg,
        &line,
        &format!(
            "{key}{})\nmodparam(\"jsonrpcs\", \"dgram_socket\", \"{d}/rpc.sock\")",
            bits | 4
        ),
    );
}

/// A JSON-RPC client on jsonrpcs' datagram socket (the reply comes back to
/// our bound socket).
pub struct DgramRpc {
    pub sock: UnixDatagram,
    pub local: PathBuf,
    pub server: PathBuf,
    pub id: u64,
}

impl DgramRpc {
    pub fn new(node_dir: &Path) -> DgramRpc {
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

    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
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
pub fn rpc(
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
pub fn contacts(node: &Node, via: Door, dgram: &mut Option<DgramRpc>) -> Result<u64, String> {
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
pub fn dump_brief_count(node: &Node) -> Result<usize, String> {
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
pub fn pid_of(node: &Node, dsc: &str) -> Option<u32> {
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
