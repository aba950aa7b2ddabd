//! End to end: the engine's end of SER's datagram RPC door. Its reply
//! socket is bound in SER's runtime directory (`-Y`), not in jsonrpcs'
//! fifo_reply_dir (/tmp by default), and when a cleaner removes the
//! socket's file the engine binds it again: changes keep being applied.

#[path = "e2e_support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// The engine's reply sockets in `dir`.
fn reply_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("sersync_apply_") && n.ends_with("_sock"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn alias_count(node: &Node, alias: &str) -> usize {
    node.sql(&format!(
        "SELECT count(*) FROM dbaliases WHERE alias_username = '{alias}'"
    ))
    .ok()
    .and_then(|l| l.first().and_then(|s| s.parse().ok()))
    .unwrap_or(0)
}

/// Adds an alias on node 1 and waits until node 2's engine has applied
/// it through its door and has nothing left to apply.
fn add_and_apply(c: &Cluster, alias: &str, timeout: Duration, what: &str) {
    let applied0 = c.node(2).status().applied;
    c.node(1)
        .rpc(
            "sersync.alias_add",
            json!([format!("sip:{alias}@example.com"), "sip:t@example.org"]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let ok = wait_until(timeout, || {
        let st = c.node(2).status();
        st.applied > applied0 && st.apply_pending == 0 && alias_count(c.node(2), alias) == 1
    });
    assert!(
        ok,
        "{what}: node 2 did not apply {alias} within {timeout:?}: {}\n{}",
        c.node(2).status().summary(),
        c.node(2).log_tail(10)
    );
    eprintln!(
        "e2e: {what}: applied on node 2 in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn the_reply_socket_lives_in_runtime_dir_and_comes_back() {
    let t0 = Instant::now();
    // SER's runtime directory, apart from the node directories (which
    // are also jsonrpcs' fifo_reply_dir in these nodes).
    let run = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join("reply-socket-run");
    let _ = fs::remove_dir_all(&run);
    fs::create_dir_all(&run).expect("creating the runtime dir");
    let door = run.join("n2-rpc.sock");
    let mut opts = ClusterOptions {
        kamailio_args: vec!["-Y".into(), run.display().to_string()],
        ..Default::default()
    };
    // Node 2's engine applies through jsonrpcs' datagram socket.
    opts.extra.entry(2).or_default().extend([
        "modparam(\"jsonrpcs\", \"transport\", 7)".to_string(),
        format!(
            "modparam(\"jsonrpcs\", \"dgram_socket\", \"{}\")",
            door.display()
        ),
        format!("modparam(\"sersync\", \"fifo\", \"{}\")", door.display()),
    ]);
    let c = Cluster::start_with_options("reply-socket", 107, 2, &opts);

    add_and_apply(&c, "first", Duration::from_secs(10), "first alias");
    let socks = reply_sockets(&run);
    assert_eq!(
        socks.len(),
        1,
        "one reply socket in the runtime dir {}: {socks:?} (node dir: {:?}, /tmp: {:?})",
        run.display(),
        reply_sockets(&c.node(2).dir),
        reply_sockets(Path::new("/tmp"))
    );

    // A cleaner removes it; the next change is applied all the same.
    fs::remove_file(&socks[0]).expect("removing the reply socket");
    add_and_apply(
        &c,
        "second",
        Duration::from_secs(8),
        "alias after the socket was removed",
    );
    assert_eq!(reply_sockets(&run).len(), 1, "the socket is back");
    assert!(
        !c.node(2)
            .log_grep("is gone (removed by a cleaner?)")
            .is_empty(),
        "node 2 does not log the re-created socket"
    );
    eprintln!(
        "e2e: reply socket test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
