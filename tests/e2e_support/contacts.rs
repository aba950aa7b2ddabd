//! Contacts as ul.dump reports them: every field save() stores, the
//! comparison of several nodes field by field, and the wait until they
//! converge.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::node::Node;
use super::processes::{unix_now, wait_until};
use super::rpc::short;

/// Expiry times of the same contact on two nodes may differ this much
/// (ul.dump gives them relative to the second it ran).
pub const EXPIRES_TOLERANCE: i64 = 2;

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

/// Which contacts of ul.dump a snapshot keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Every contact usrloc holds in memory.
    All,
    /// What `lookup()` returns: not those usrloc keeps after a deletion
    /// until its timer (write-back `db_mode` 2: Expires "deleted") nor
    /// those past their expiry ("expired").
    Live,
}

/// ul.dump's shape in 5.6: {"Domains":[{"Domain":{"Domain":"location",
/// "AoRs":[{"Info":{"AoR":..,"Contacts":[{"Contact":{..}}]}}]}}]}.
/// A second contact under an already seen (AOR, address) key (usrloc allows
/// it when +sip.instance differs) is kept under "<address> #dup <ruid>".
pub fn parse_ul_dump(v: &Value, dump_time: i64) -> Result<Contacts, String> {
    parse_ul_dump_view(v, dump_time, View::All)
}

/// `parse_ul_dump` keeping the contacts of `view` (left out before the
/// duplicate keys are given, so a deleted contact never takes a live
/// one's key).
pub fn parse_ul_dump_view(v: &Value, dump_time: i64, view: View) -> Result<Contacts, String> {
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
                if view == View::Live
                    && matches!(&expires, Expires::Word(w) if w == "deleted" || w == "expired")
                {
                    continue;
                }
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

fn snapshots(nodes: &[&Node], view: View) -> Result<Vec<(String, Contacts)>, String> {
    nodes
        .iter()
        .map(|n| {
            n.try_contacts_view(view)
                .map(|c| (n.name(), c))
                .map_err(|e| format!("{}: {e}", n.name()))
        })
        .collect()
}

/// Asserts that the nodes hold the same contacts, field by field.
pub fn assert_same_contacts(nodes: &[&Node]) -> usize {
    let snaps = snapshots(nodes, View::All).unwrap_or_else(|e| panic!("ul.dump failed: {e}"));
    compare_contacts(&snaps).unwrap_or_else(|d| panic!("nodes differ:\n{d}"))
}

/// Waits until the nodes hold the same contacts and `check` accepts them
/// (e.g. the expected count); panics with the last diff and the nodes'
/// sersync status on timeout. Returns the converged contacts.
pub fn wait_converged(
    nodes: &[&Node],
    timeout: Duration,
    what: &str,
    check: impl FnMut(&Contacts) -> Result<(), String>,
) -> Contacts {
    wait_converged_view(nodes, View::All, timeout, what, check)
}

/// `wait_converged` comparing the contacts of `view` only (`View::Live`:
/// what lookup() returns, for write-back usrloc).
pub fn wait_converged_view(
    nodes: &[&Node],
    view: View,
    timeout: Duration,
    what: &str,
    check: impl FnMut(&Contacts) -> Result<(), String>,
) -> Contacts {
    wait_converged_except(nodes, view, &Default::default(), timeout, what, check)
}

/// `wait_converged_view` leaving the contacts of `except` out (keys the
/// nodes may rightly disagree on for now, e.g. changes a dead node sent
/// to some peers only).
pub fn wait_converged_except(
    nodes: &[&Node],
    view: View,
    except: &std::collections::BTreeSet<(String, String)>,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Contacts) -> Result<(), String>,
) -> Contacts {
    let start = Instant::now();
    let mut last = String::new();
    let mut result = None;
    let snapshots = |nodes: &[&Node], view| {
        snapshots(nodes, view).map(|snaps| {
            snaps
                .into_iter()
                .map(|(n, mut c)| {
                    c.retain(|k, _| !except.contains(k));
                    (n, c)
                })
                .collect::<Vec<_>>()
        })
    };
    let ok = wait_until(timeout, || match snapshots(nodes, view) {
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

/// Whether `c` holds a contact of `user` (AOR `user` or `user@...`).
pub fn has_user(c: &Contacts, user: &str) -> bool {
    let at = format!("{user}@");
    c.keys().any(|(aor, _)| aor == user || aor.starts_with(&at))
}

impl Node {
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
        self.try_contacts_view(View::All)
    }

    /// The contacts of `view` (`View::Live`: what lookup() returns).
    pub fn try_contacts_view(&self, view: View) -> Result<Contacts, String> {
        let t0 = unix_now();
        let v = self.rpc("ul.dump", json!([]))?;
        parse_ul_dump_view(&v, t0, view)
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
