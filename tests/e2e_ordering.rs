//! End-to-end: ordering in SER (issue 11, item 4). A change applied into
//! usrloc — received from a peer, or restored at start — never overwrites
//! a newer version usrloc already holds for that contact: a phone that
//! registered again while its node's RPC door was stuck, or while the node
//! restored, keeps its newer registration on every node.
//!
//! Two Kamailio 5.6 nodes, usrloc in memory, sipp. The phones' contact
//! URIs name one host whichever node they register on, so both nodes'
//! registrations are versions of the same usrloc contacts.
//!
//! Needs `build/sersync.so` (`make`); fails, never skips, without it.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::*;

const CONVERGE: Duration = Duration::from_secs(60);
const PHONES: usize = 600;
const RATE: u32 = 500;

type Key = (String, String);

fn cluster(name: &str, first: u8) -> Cluster {
    let opts = ClusterOptions {
        ul_db_mode: Some(0),
        sersync_no_db: true,
        ..ClusterOptions::default()
    };
    Cluster::start_private(name, first, 2, &opts)
}

/// `PHONES` phones at CSeq `cseq`, their contacts on host 127.0.0.99.
fn phones(cseq: u32) -> Vec<Reg> {
    (0..PHONES)
        .map(|i| Reg {
            cseq,
            host: Some("127.0.0.99".into()),
            ..Reg::new(format!("p{i}"), 3600)
        })
        .collect()
}

fn keys(regs: &[Reg]) -> BTreeSet<Key> {
    regs.iter()
        .map(|r| (r.user.clone(), r.address("", Transport::Udp)))
        .collect()
}

/// Whether `c` holds each of `keys` at CSeq `cseq` from node `server_id`.
fn holds(c: &Contacts, keys: &BTreeSet<Key>, cseq: i64, server_id: i64) -> Result<(), String> {
    let wrong: Vec<String> = keys
        .iter()
        .filter_map(|k| match c.get(k) {
            None => Some(format!("{}: missing", k.0)),
            Some(f) if f.cseq != cseq || f.server_id != server_id => Some(format!(
                "{}: cseq {} from {}, not {cseq} from {server_id}",
                k.0, f.cseq, f.server_id
            )),
            Some(_) => None,
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} contacts not at the version registered last (e.g. {:?})",
            wrong.len(),
            keys.len(),
            &wrong[..wrong.len().min(3)]
        ))
    }
}

/// A convergence check: exactly `want`, each at CSeq `cseq` from node
/// `server_id` (the version registered last).
fn the_version(
    want: &BTreeSet<Key>,
    cseq: i64,
    server_id: i64,
) -> impl FnMut(&Contacts) -> Result<(), String> + '_ {
    move |c| {
        if c.len() != want.len() {
            return Err(format!("{} contacts, expected {}", c.len(), want.len()));
        }
        holds(c, want, cseq, server_id)
    }
}

/// sersync.status over HTTP (SIP workers serve it): the FIFO is the door
/// this test stops.
fn status_over_http(node: &Node) -> SersyncStatus {
    let v = node
        .http_rpc("sersync.status", serde_json::json!([]))
        .unwrap_or_else(|e| panic!("sersync.status over HTTP on {}: {e:?}", node.name()));
    SersyncStatus::parse(&v)
}

/// Records `node` received from the peer `id`.
fn received_from(node: &Node, id: &str) -> u64 {
    status_over_http(node)
        .peers
        .iter()
        .find(|p| p.node_id == id)
        .map_or(0, |p| p.received)
}

/// Node 2's door is stopped (SIGSTOP) while the phones register again on
/// node 1 (node 2's engine receives that version and its applier gets
/// stuck in the door with it), then once more, newer, on node 2 itself.
/// When the door resumes, the stale version it still carries must not
/// overwrite node 2's newer registration: both nodes end with node 2's.
/// Then node 1 restarts and restores while half of the phones register
/// again on it: those keep their new registration, the rest come back.
#[test]
fn neither_a_stuck_door_nor_a_restore_overwrites_a_newer_registration() {
    let mut cluster = cluster("ordering-door", 141);
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let want = keys(&phones(1));
    sipp_register(n1, &phones(1), RATE, "v1-n1");
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "first version",
        the_version(&want, 1, 1),
    );
    let before = n2.status().apply_superseded;

    let received_before = received_from(n2, "n1");
    let door = Stopped::new(n2.process_pid("JSONRPCS FIFO"));
    sipp_register(n1, &phones(2), RATE, "v2-n1");
    // Node 2's engine holds node 1's second version, and its applier is
    // stuck in the door with it.
    let stuck = wait_until(CONVERGE, || {
        received_from(n2, "n1") >= received_before + PHONES as u64
            && status_over_http(n2).apply_pending > 0
    });
    assert!(
        stuck,
        "node 2 never received node 1's second version: {}",
        status_over_http(n2).summary()
    );
    // Registrations a second later: newer by any clock.
    std::thread::sleep(Duration::from_millis(1100));
    sipp_register(n2, &phones(3), RATE, "v3-n2");
    drop(door);

    wait_converged(
        &cluster.all(),
        CONVERGE,
        "after the door resumed",
        the_version(&want, 3, 2),
    );
    let st = n2.status();
    assert!(
        st.apply_superseded > before,
        "node 2 never refused a stale version: the door was not stuck with one, \
         the test proved nothing ({})",
        st.summary()
    );

    // Phase 2, the restore: node 1 restarts (usrloc empty) with its door
    // missing, so the restore of the 600 contacts waits; half of the
    // phones register again on node 1 meanwhile (newer); then the door
    // appears. Those keep their new registration, the others come back.
    let n1 = cluster.node_mut(1);
    n1.stop().unwrap();
    let cfg = n1.dir.join("kamailio.cfg");
    let fifo = n1.dir.join("rpc.fifo");
    let door = n1.dir.join("door.fifo");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = format!("modparam(\"sersync\", \"fifo\", \"{}\")", fifo.display());
    assert!(text.contains(&line), "no {line} in {}", cfg.display());
    let moved = format!("modparam(\"sersync\", \"fifo\", \"{}\")", door.display());
    std::fs::write(&cfg, text.replace(&line, &moved)).unwrap();
    n1.start();
    let waiting = wait_until(CONVERGE, || {
        n1.sersync_status()
            .is_ok_and(|s| s.restore_pending == PHONES as u64 && s.restored == 0)
    });
    assert!(
        waiting,
        "node 1's restore did not wait for its door: {}",
        n1.status().summary()
    );
    let again: Vec<Reg> = phones(4).into_iter().take(PHONES / 2).collect();
    sipp_register(n1, &again, RATE, "v4-n1-restoring");
    std::os::unix::fs::symlink(&fifo, &door).unwrap();
    let n1 = cluster.node(1);
    let done = wait_until(CONVERGE, || {
        n1.sersync_status()
            .is_ok_and(|s| s.restore_pending == 0 && s.restored == PHONES as u64)
    });
    assert!(
        done,
        "node 1's restore did not finish: {}",
        n1.status().summary()
    );
    let renewed = keys(&again);
    let rest: BTreeSet<Key> = want.difference(&renewed).cloned().collect();
    wait_converged(&cluster.all(), CONVERGE, "after the restore", |c| {
        if c.len() != want.len() {
            return Err(format!("{} contacts, expected {}", c.len(), want.len()));
        }
        holds(c, &renewed, 4, 1)?;
        holds(c, &rest, 3, 2)
    });
}
