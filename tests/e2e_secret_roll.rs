//! Changing the cluster's secret without downtime (issue 13, "a secret
//! rolled over node by node while registrations flow"), on real Kamailio
//! nodes, by the README's procedure ("Changing the secret without
//! downtime"): on every node in turn, restarting each, add the new
//! secret as a second `secret` line; then, again node by node, make it
//! the first line; then remove the old one.
//!
//! While each node restarts, sipp registers users on another node (none
//! may fail), and after each restart every peer link comes up again: at
//! every step each pair of nodes shares a key. At the end every contact
//! is in every node's usrloc, field by field, and no node holds the old
//! secret any more.
//!
//! Addresses 127.0.0.121–123.

#[path = "e2e_support/mod.rs"]
mod support;

use std::fs;
use std::time::Duration;

use support::*;

const NAME: &str = "secret-roll";

/// The `secret` modparam line of `secret`.
fn secret_line(secret: &str) -> String {
    format!("modparam(\"sersync\", \"secret\", \"{secret}\")")
}

/// Replaces the node's `secret` lines by `secrets`, in that order.
fn set_secrets(node: &Node, secrets: &[&str]) {
    let path = node.dir.join("kamailio.cfg");
    let text = fs::read_to_string(&path).expect("reading kamailio.cfg");
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        if line.starts_with("modparam(\"sersync\", \"secret\"") {
            if !done {
                for s in secrets {
                    out.push_str(&secret_line(s));
                    out.push('\n');
                }
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(done, "no secret line in {}", path.display());
    fs::write(&path, out).expect("writing kamailio.cfg");
}

/// The node's `secret` lines, in order.
fn secrets_of(node: &Node) -> Vec<String> {
    fs::read_to_string(node.dir.join("kamailio.cfg"))
        .expect("reading kamailio.cfg")
        .lines()
        .filter(|l| l.starts_with("modparam(\"sersync\", \"secret\""))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_secret_rolled_over_node_by_node_loses_no_registration() {
    let mut c = Cluster::start(NAME, 121, 3);
    let old = format!("e2e-secret-{NAME}");
    let new = "e2e-the-new-secret-of-the-roll";
    // The procedure's three rounds: what each node's secret lines become.
    let rounds: [(&str, Vec<&str>); 3] = [
        ("add the new secret second", vec![&old, new]),
        ("make the new secret first", vec![new, &old]),
        ("remove the old secret", vec![new]),
    ];
    let mut registered = 0usize;
    let mut step = 0usize;
    for (what, secrets) in &rounds {
        for k in 0..3 {
            // Registrations flow on another node while node k restarts.
            let j = (k + 1) % 3;
            let (restarting, loaded) = if k < j {
                let (a, b) = c.nodes.split_at_mut(j);
                (&mut a[k], &b[0])
            } else {
                let (a, b) = c.nodes.split_at_mut(k);
                (&mut b[0], &a[j])
            };
            let regs: Vec<Reg> = (0..60)
                .map(|i| Reg::new(format!("roll{step}x{i:02}"), 3600))
                .collect();
            std::thread::scope(|s| {
                let sipp = s.spawn(|| sipp_register(loaded, &regs, 20, &format!("roll{step}")));
                restarting
                    .stop()
                    .unwrap_or_else(|e| panic!("{what}: stopping: {e}"));
                set_secrets(restarting, secrets);
                restarting.start();
                sipp.join()
                    .unwrap_or_else(|_| panic!("{what}: REGISTERs failed during the restart"));
            });
            registered += regs.len();
            step += 1;
            // Every pair of nodes shares a key at every step.
            c.wait_mesh_up(Duration::from_secs(30));
        }
    }
    for n in c.all() {
        assert_eq!(
            secrets_of(n),
            vec![secret_line(new)],
            "{} still holds another secret",
            n.name()
        );
    }
    c.wait_settled(Duration::from_secs(60));
    let contacts = wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "contacts registered during the roll",
        expect_contacts(registered),
    );
    assert_eq!(count_prefix(&contacts, "roll"), registered);
    // Nothing was refused for want of a shared key.
    for n in c.all() {
        let refused = n.log_grep("failed authentication");
        assert!(
            refused.is_empty(),
            "{}: a peer failed authentication during the roll:\n{}",
            n.name(),
            refused.join("\n")
        );
    }
    c.stop_all();
}
