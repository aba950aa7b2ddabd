//! Cluster set-up: each configuration's kamailio.cfg, fresh node
//! directories, start, pinning and "replication connected".

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::probes::pin_group;
use crate::settings::*;
use crate::support::*;
use crate::{FIRST_IP, NAME};

pub fn ip_of(index: usize) -> String {
    format!("127.0.0.{}", FIRST_IP as usize + index - 1)
}

/// The kamailio.cfg of node `index` (1-based) of a cluster of `nodes`.
pub fn node_cfg(s: &Settings, repl: Repl, index: usize, nodes: usize, dir: &Path) -> String {
    let ip = ip_of(index);
    let d = dir.to_str().expect("utf-8 dir");
    let mut opts = ClusterOptions {
        template: Some(repo_root().join("bench/register.cfg.in")),
        ..ClusterOptions::default()
    };
    let mut defines = vec![
        format!("#!define CHILDREN {}", s.children),
        format!("#!define DB_MODE {}", s.db_mode),
        format!("#!define HASH_SIZE {}", s.hash_size),
    ];
    let mut module = None;
    let mut peers = Vec::new();
    match repl {
        Repl::None => {}
        Repl::Sersync { journal, .. } => {
            module = private_module_copy();
            assert!(module.is_some(), "sersync configurations need the module");
            peers = (1..=nodes)
                .filter(|&j| j != index)
                .map(|j| format!("tcp:{}:{SERSYNC_PORT}", ip_of(j)))
                .collect();
            if journal {
                opts.extra.insert(
                    index,
                    vec!["modparam(\"sersync\", \"durability\", \"journal\")".into()],
                );
            }
        }
        Repl::Dmq { .. } => {
            // node 1 learns of the others when they notify it; it names
            // node 2 (down or not yet up when node 1 starts: harmless).
            let notify = if index == 1 { ip_of(2) } else { ip_of(1) };
            defines.push("#!define WITH_DMQ".into());
            defines.push(format!("#!define DMQ_NOTIFY \"sip:{notify}:{SIP_PORT}\""));
        }
    }
    let mut cfg = node_config_with(
        index,
        &ip,
        dir,
        &peers,
        module.as_deref(),
        &format!("e2e-secret-{NAME}"),
        &opts,
    );
    if module.is_some() {
        // sersync's default door when configured; the harness names the FIFO
        apply_through_dgram(&mut cfg, dir);
    }
    if let (Some(_), Ok(jdir)) = (&module, std::env::var("REGISTER_JOURNAL_DIR")) {
        // diagnostic: the journal elsewhere (e.g. on tmpfs, to see what its
        // fsyncs cost)
        let from = format!("modparam(\"sersync\", \"journal\", \"{d}/sersync.db\")");
        let sub = dir
            .strip_prefix(repo_root().join("target"))
            .unwrap_or(dir)
            .to_string_lossy()
            .replace('/', "_");
        let _ = fs::create_dir_all(&jdir);
        cfg_replace(
            &mut cfg,
            &from,
            &format!("modparam(\"sersync\", \"journal\", \"{jdir}/{sub}.db\")"),
        );
    }
    let (first, rest) = cfg.split_once('\n').expect("config has lines");
    format!("{first}\n{}\n{rest}", defines.join("\n"))
}

/// Stops every node, then configures nodes 1..=repl.nodes() from fresh
/// directories `<cluster>/<label>/nN` with shared memory `shm_mb`.
pub fn configure(c: &mut Cluster, s: &Settings, repl: Repl, label: &str, shm_mb: u32) {
    stop_nodes(c);
    let nodes = repl.nodes();
    for i in 1..=nodes {
        let dir = c.dir.join(label).join(format!("n{i}"));
        fs::create_dir_all(&dir).expect("node dir");
        fs::write(dir.join("kamailio.cfg"), node_cfg(s, repl, i, nodes, &dir)).expect("cfg");
        create_db(&dir.join("kamailio.db"));
        let node = c.node_mut(i);
        node.dir = dir;
        node.memory_mb.0 = shm_mb;
    }
}

/// Stops every node; one that does not stop cleanly is reported, and the
/// bench goes on.
pub fn stop_nodes(c: &mut Cluster) {
    for node in &mut c.nodes {
        if let Err(e) = node.stop() {
            eprintln!("register: {e}");
        }
    }
}

/// The CPU node `i`'s processes are pinned to: node 1 has CPU 0, the peers
/// share CPU 1 with sipp and this bench.
pub fn cpu_of(i: usize) -> usize {
    if i == 1 {
        0
    } else {
        1
    }
}

/// Starts node `i` and pins its processes.
pub fn start_node(c: &mut Cluster, s: &Settings, i: usize) {
    c.node_mut(i).start();
    if s.pin {
        pin_group(c.node(i).pid().expect("running"), cpu_of(i));
    }
}

/// Waits until the replication among nodes `which` is connected.
pub fn wait_ready(c: &Cluster, s: &Settings, repl: Repl, which: &[usize]) {
    let t = Instant::now();
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(60), || {
        last.clear();
        which.iter().all(|&i| {
            let node = c.node(i);
            match repl {
                Repl::None => true,
                Repl::Sersync { .. } => match node.sersync_status() {
                    Ok(st) => {
                        let up = st.running == 1
                            && st.peers.len() == which.len() - 1
                            && st.peers.iter().all(|p| p.state == "up");
                        if !up {
                            last = format!("{}: {}", node.name(), st.summary());
                        }
                        up
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                },
                Repl::Dmq { .. } => match node.rpc("dmq.list_nodes", json!([])) {
                    Ok(v) => {
                        let active = dmq_active(&v);
                        if active < which.len() {
                            last = format!("{}: dmq.list_nodes {v}", node.name());
                        }
                        active >= which.len()
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                },
            }
        })
    });
    assert!(
        ok,
        "{}: nodes {which:?} not connected after {:?}: {last}",
        repl.label(),
        t.elapsed()
    );
    if s.pin {
        // the sersync process starts its threads late: pin them too
        for &i in which {
            pin_group(c.node(i).pid().expect("running"), cpu_of(i));
        }
    }
}

/// Active nodes in a `dmq.list_nodes` reply (self included).
pub fn dmq_active(v: &Value) -> usize {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    list.iter()
        .filter(|n| {
            n.get("status")
                .and_then(Value::as_str)
                .is_some_and(|s| s == "active")
        })
        .count()
}

/// Configures `repl` on fresh directories, starts all its nodes and waits
/// until they replicate.
pub fn start_config(c: &mut Cluster, s: &Settings, repl: Repl, label: &str, shm_mb: u32) {
    configure(c, s, repl, label, shm_mb);
    let which: Vec<usize> = (1..=repl.nodes()).collect();
    for &i in &which {
        start_node(c, s, i);
    }
    wait_ready(c, s, repl, &which);
}
