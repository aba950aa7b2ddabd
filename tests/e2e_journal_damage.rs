//! Bad input against live Kamailio nodes with sersync (issue 6, "Bad
//! input"): what a user checks when garbage reaches a node.
//!
//! A corrupt or truncated journal at start: SER still starts and serves
//! SIP, the log names the file and what to do, sersync.status shows the
//! error, the damaged file is kept; after a restart replication works in
//! both directions again.
//!
//! Addresses 127.0.0.95–96 only.

#[path = "e2e_support/mod.rs"]
mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::*;

/// Stops `node`, damages its journal with `damage`, starts it again and
/// checks what a user sees, then that replication works both ways after a
/// restart.
fn damaged_journal_start(c: &mut Cluster, what: &str, damage: impl FnOnce(&std::path::Path)) {
    let journal = c.node(1).journal_path();
    c.node_mut(1).stop().expect("stopping node 1");
    // Everything in the main file, as after a clean shutdown.
    {
        let db = rusqlite::Connection::open(&journal).expect("opening the journal");
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", journal.display()));
    }
    damage(&journal);
    let before = count_log(c.node(1), &["is corrupt"]);
    c.node_mut(1).start();
    let n1 = c.node(1);
    let line = expect_log(n1, &["is corrupt"], before, what);
    eprintln!("e2e: {what}: {line}");
    let path = journal.display().to_string();
    assert!(
        line.contains(&path) && line.contains("moved aside to") && line.contains("restart"),
        "{what}: the log line should name {path}, where it went and what to do: {line}"
    );
    let moved = line
        .split("moved aside to ")
        .nth(1)
        .and_then(|r| r.split([':', ';', ' ']).next())
        .unwrap_or_default()
        .to_string();
    assert!(
        moved.starts_with(&path) && std::path::Path::new(&moved).is_file(),
        "{what}: the damaged journal is kept: {moved:?} should exist"
    );
    // SER serves SIP, and says replication is off and why.
    sipp_register(
        n1,
        &[Reg::new(format!("while-off-{what}"), 3600)],
        10,
        &format!("while-off-{what}"),
    );
    let st = n1.status();
    assert!(
        st.running == 0 && st.last_error.contains("corrupt") && st.last_error.contains(&path),
        "{what}: sersync.status should show replication off with the error: {}",
        st.summary()
    );
    // Restarting starts a new journal: replication works again both ways,
    // including the registration made while it was off.
    c.node_mut(1).stop().expect("stopping node 1");
    c.node_mut(1).start();
    c.wait_mesh_up(Duration::from_secs(30));
    sipp_register(
        c.node(2),
        &[Reg::new(format!("from-n2-{what}"), 3600)],
        10,
        &format!("from-n2-{what}"),
    );
    sipp_register(
        c.node(1),
        &[Reg::new(format!("from-n1-{what}"), 3600)],
        10,
        &format!("from-n1-{what}"),
    );
    let users = [
        format!("while-off-{what}"),
        format!("from-n2-{what}"),
        format!("from-n1-{what}"),
    ];
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        &format!("after the {what} journal was replaced"),
        |t| match users.iter().find(|u| !has_user(t, u)) {
            None => Ok(()),
            Some(u) => Err(format!("{u} missing")),
        },
    );
    assert!(
        std::path::Path::new(&moved).is_file(),
        "{what}: the damaged journal {moved} is still kept after the restart"
    );
}

#[test]
fn corrupt_or_truncated_journal_at_start() {
    let t0 = Instant::now();
    let mut c = Cluster::start("bad-journal", 95, 2);
    eprintln!(
        "e2e: cluster up after {:.1} s (machine lock included)",
        t0.elapsed().as_secs_f64()
    );
    sipp_register(
        c.node(1),
        &(0..300)
            .map(|i| Reg::new(format!("j{i}"), 3600))
            .collect::<Vec<_>>(),
        300,
        "journal-users",
    );
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "initial contacts",
        expect_contacts(300),
    );
    // Refreshed once: the journal then holds more changes than SER holds
    // contacts, so a new journal's sequence starts below what the peer
    // already has from this node.
    sipp_register(
        c.node(1),
        &(0..300)
            .map(|i| Reg {
                cseq: 2,
                ..Reg::new(format!("j{i}"), 3000)
            })
            .collect::<Vec<_>>(),
        300,
        "journal-refresh",
    );
    c.wait_settled(Duration::from_secs(30));
    eprintln!(
        "e2e: node 1 journaled up to sequence {} ({:.1} s)",
        c.node(1).status().last_seq,
        t0.elapsed().as_secs_f64()
    );

    damaged_journal_start(&mut c, "header", |p| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("opening the journal");
        f.write_all(&noise(100, 42))
            .expect("overwriting the header");
    });
    damaged_journal_start(&mut c, "truncated", |p| {
        let len = std::fs::metadata(p).expect("journal size").len();
        assert!(len > 3 * 4096, "journal too small to truncate: {len}");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("opening the journal");
        f.set_len(len / 2).expect("truncating");
    });
    // Every contact is still everywhere.
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "all contacts after both restarts",
        expect_contacts(300 + 6),
    );
}
