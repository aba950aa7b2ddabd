//! sersync.status and sersync.peers, parsed (field names compared
//! ignoring case, '-' and '_').

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::config::SERSYNC_PORT;
use super::node::Node;

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
    /// Remote changes usrloc did not take: it held a newer version.
    pub apply_superseded: u64,
    /// Contacts restored from the journal into SER since this start, and
    /// those still waiting for it (0 when the engine does not report them).
    pub restored: u64,
    pub restore_pending: u64,
    /// Remote changes held in the quarantine, and the reason of the newest.
    pub quarantined: u64,
    pub quarantine_last_reason: String,
    /// The check of SER against the journal: checks made, ranges compared
    /// key by key, differences confirmed, repairs made.
    pub checks: u64,
    pub ranges_compared: u64,
    pub divergences: u64,
    pub repaired: u64,
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
            apply_superseded: u(v, "apply_superseded"),
            restored: u(v, "restored"),
            restore_pending: u(v, "restore_pending"),
            quarantined: u(v, "quarantined"),
            quarantine_last_reason: s(v, "quarantine_last_reason"),
            checks: u(v, "checks"),
            ranges_compared: u(v, "ranges_compared"),
            divergences: u(v, "divergences"),
            repaired: u(v, "repaired"),
            last_error: s(v, "last_error"),
            peers,
            raw: v.clone(),
        }
    }

    /// Whether sersync.status has the restore counters (`restored`,
    /// `restore_pending`) at all: engines before the restore at start
    /// (issue 11) do not, and then both read 0.
    pub fn reports_restore(&self) -> bool {
        field(&self.raw, "restored").is_some() && field(&self.raw, "restore_pending").is_some()
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
             apply_failures={} via_db={} superseded={} restored={} restore_pending={} queue={}/{} dropped \
             quarantined={} ({:?}) checks={} ranges_compared={} divergences={} repaired={} err={:?}",
            self.node_id,
            self.running,
            self.journaled,
            self.last_seq,
            self.applied,
            self.apply_pending,
            self.apply_failures,
            self.applied_via_db,
            self.apply_superseded,
            self.restored,
            self.restore_pending,
            self.queue_depth,
            self.queue_dropped,
            self.quarantined,
            self.quarantine_last_reason,
            self.checks,
            self.ranges_compared,
            self.divergences,
            self.repaired,
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

impl Node {
    pub fn sersync_status(&self) -> Result<SersyncStatus, String> {
        let v = self.rpc_timeout("sersync.status", json!([]), Duration::from_secs(10))?;
        Ok(SersyncStatus::parse(&v))
    }

    pub fn status(&self) -> SersyncStatus {
        self.sersync_status()
            .unwrap_or_else(|e| panic!("sersync.status on {}: {e}", self.name()))
    }

    /// REGISTERs the node's registrar accepted (`registrar:accepted_regs`):
    /// each is one usrloc change, so one journaled record. sipp retransmits a
    /// REGISTER whose reply is late (a loaded machine): SER saves it again,
    /// so this, not the number of users, is what the node journals.
    pub fn accepted_regs(&self) -> u64 {
        let v = self
            .rpc("stats.get_statistics", serde_json::json!(["all"]))
            .unwrap_or_else(|e| panic!("stats.get_statistics: {e}"));
        let line = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .filter_map(|l| l.as_str())
                    .find(|l| l.contains("accepted_regs"))
            })
            .map(String::from)
            .unwrap_or_else(|| panic!("no accepted_regs in stats.get_statistics all: {v}"));
        line.split_once('=')
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("registrar:accepted_regs line {line:?}"))
    }

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
}
