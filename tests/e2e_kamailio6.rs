//! End-to-end: Kamailio 6.0 beside 5.6 (issue 14). Nodes on the host's
//! Kamailio 5.6 and nodes on the Kamailio 6.0 of a Debian 13 root
//! (`chroot DIR kamailio`, see e2e_support/ser_root.rs) in one cluster,
//! each loading the module built for its own Kamailio from the same
//! source: registrations and de-registrations made on any node reach every
//! other, every field equal.
//!
//! Needs `build/sersync.so` (`make`), the root (`.ci/debian13-root.sh`,
//! default /var/cache/sersync/debian13, or SERSYNC_DEBIAN13_ROOT) and
//! `build/<its version>/sersync.so` (`make SER_ROOT=DIR`; `make test`
//! builds both). Fails, never skips, without them.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::*;

const CONVERGE: Duration = Duration::from_secs(90);
const RATE: u32 = 500;

type Key = (String, String);

fn keys(regs: &[Reg], ip: &str) -> BTreeSet<Key> {
    regs.iter()
        .map(|r| (r.user.clone(), r.address(ip, Transport::Udp)))
        .collect()
}

/// A convergence check: exactly the contacts `want`, each with the
/// server_id of the node it was registered on (`origin`: key -> id).
fn exactly<'a>(want: &'a BTreeMap<Key, i64>) -> impl FnMut(&Contacts) -> Result<(), String> + 'a {
    move |c| {
        let missing: Vec<&Key> = want.keys().filter(|k| !c.contains_key(*k)).collect();
        let extra: Vec<&Key> = c.keys().filter(|k| !want.contains_key(*k)).collect();
        let wrong: Vec<String> = want
            .iter()
            .filter_map(|(k, id)| {
                c.get(k)
                    .filter(|f| f.server_id != *id)
                    .map(|f| format!("{k:?}: server_id {} != {id}", f.server_id))
            })
            .collect();
        if missing.is_empty() && extra.is_empty() && wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} contacts, expected {}: {} missing (e.g. {:?}), {} not expected (e.g. {:?}), \
             {} with another origin (e.g. {:?})",
            c.len(),
            want.len(),
            missing.len(),
            &missing[..missing.len().min(3)],
            extra.len(),
            &extra[..extra.len().min(3)],
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        ))
    }
}

/// Two nodes on the host's Kamailio 5.6 and one on the root's 6.0:
/// registrations made on each node (every field save() stores: Path,
/// received, +sip.instance, reg-id, branch flags, q, methods, CSeq,
/// Expires) are on every node, field by field as ul.dump shows them; then
/// a part of each node's users de-register, and they are gone everywhere.
#[test]
fn mixed_versions_replicate_field_by_field() {
    let root = SerRoot::debian13();
    let opts = ClusterOptions {
        ser_root_of: BTreeMap::from([(3, root.clone())]),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_private("kamailio6-mixed", 211, 3, &opts);
    let host_version = cluster.node(1).ser_version();
    let versions: Vec<String> = cluster.all().iter().map(|n| n.ser_version()).collect();
    eprintln!("e2e: Kamailio versions of the nodes: {versions:?}");
    assert_eq!(versions[1], host_version);
    assert_eq!(versions[2], root.version, "node 3 runs the root's Kamailio");
    assert_ne!(
        versions[0], versions[2],
        "the host and the root run the same Kamailio: nothing mixed"
    );

    let mut want = BTreeMap::new();
    let mut regs_of = Vec::new();
    for (i, node) in cluster.all().into_iter().enumerate() {
        let regs = mixed_users(&format!("v{}u", i + 1), 600, 100_000 * (i as u64 + 1));
        // one origin at a time: 5.6's SQLite driver refuses a REGISTER
        // (500) when it finds the location table locked by the applier
        sipp_register(node, &regs, RATE, &format!("n{}-reg", i + 1));
        cluster.wait_settled(CONVERGE);
        for k in keys(&regs, &node.ip) {
            want.insert(k, node.server_id as i64);
        }
        regs_of.push(regs);
    }
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "registrations on 5.6 and 6.0 nodes",
        exactly(&want),
    );
    assert_eq!(assert_same_contacts(&cluster.all()), want.len());
    // the fields a 5.6 and a 6.0 registrar store alike, checked once on
    // the converged set: these users have a Path, a received, an instance
    let sample = &regs_of[2][1];
    let f = &all[&(
        sample.user.clone(),
        sample.address(&cluster.node(3).ip, Transport::Udp),
    )];
    assert!(
        !f.path.is_empty() && !f.user_agent.is_empty() && f.server_id == 3,
        "a contact registered on the 6.0 node, as node 1 holds it: {f:?}"
    );

    // de-registrations: a third of each node's users, on its own node
    for (i, node) in cluster.all().into_iter().enumerate() {
        let gone: Vec<Reg> = regs_of[i]
            .iter()
            .step_by(3)
            .map(Reg::deregistration)
            .collect();
        sipp_register(node, &gone, RATE, &format!("n{}-dereg", i + 1));
        cluster.wait_settled(CONVERGE);
        for k in keys(&gone, &node.ip) {
            want.remove(&k);
        }
    }
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "de-registrations on 5.6 and 6.0 nodes",
        exactly(&want),
    );
    assert_eq!(assert_same_contacts(&cluster.all()), want.len());
    for node in cluster.all() {
        let st = node.status();
        assert_eq!(st.queue_dropped, 0, "{}: {}", node.name(), st.summary());
        assert_eq!(st.apply_failures, 0, "{}: {}", node.name(), st.summary());
    }
    let mut cluster = cluster;
    cluster.stop_all();
}
