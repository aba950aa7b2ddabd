//! A node cut off from its peers while both sides keep registering: after
//! the partition heals, every node holds the same contacts.
//!
//! The cut is an nftables table dropping sersync's TCP traffic (port 5999)
//! to and from node 3's loopback address only; SIP and everything else on
//! the machine are untouched. The table is removed on drop, also when the
//! test fails.

#[path = "e2e_support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const CONVERGE: Duration = Duration::from_secs(120);
const TABLE: &str = "sersync_e2e_partition";

struct Partition;

fn nft(args: &str) -> Result<(), String> {
    let out = Command::new("nft")
        .args(args.split_whitespace())
        .output()
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Partition {
    /// Drops every sersync packet from or to `ip`.
    fn cut(ip: &str) -> Partition {
        let _ = nft(&format!("delete table inet {TABLE}"));
        let rules = [
            format!("add table inet {TABLE}"),
            format!("add chain inet {TABLE} out {{ type filter hook output priority 0 ; policy accept ; }}"),
            format!("add rule inet {TABLE} out ip daddr {ip} tcp dport 5999 drop"),
            format!("add rule inet {TABLE} out ip saddr {ip} tcp sport 5999 drop"),
            format!("add rule inet {TABLE} out ip saddr {ip} tcp dport 5999 drop"),
            format!("add rule inet {TABLE} out ip daddr {ip} tcp sport 5999 drop"),
        ];
        for r in &rules {
            nft(r).unwrap_or_else(|e| {
                panic!("cannot cut node {ip} off (needs nftables and root): {e}")
            });
        }
        Partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {TABLE}"));
    }
}

fn users(prefix: &str, n: usize) -> Vec<Reg> {
    (0..n)
        .map(|i| Reg::new(format!("{prefix}{i:05}"), 3600))
        .collect()
}

#[test]
fn a_partitioned_node_converges_after_healing() {
    let cluster = Cluster::start("partition", 81, 3);
    let base = users("base", 300);
    sipp_register(cluster.node(1), &base, 500, "n1-base");
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "before the partition",
        expect_contacts(base.len()),
    );
    cluster.wait_settled(Duration::from_secs(30));

    let cut = Partition::cut(&cluster.node(3).ip);
    // Both sides keep registering, and one phone de-registers on the
    // majority side while the partition lasts.
    let side_a = users("maj", 300);
    let side_b = users("min", 200);
    sipp_register(cluster.node(1), &side_a, 500, "n1-during");
    sipp_register(cluster.node(3), &side_b, 500, "n3-during");
    // Same contact address as registered through node 1.
    let ip1 = cluster.node(1).ip.clone();
    let gone: Vec<Reg> = base[..50]
        .iter()
        .map(|r| Reg {
            host: Some(ip1.clone()),
            ..r.deregistration()
        })
        .collect();
    sipp_register(cluster.node(2), &gone, 500, "n2-dereg");
    // The same phones changed on both sides, the later change winning:
    // de-registered on the majority, then refreshed on node 3 ...
    let at_1 = |r: &Reg| Reg {
        host: Some(ip1.clone()),
        ..r.clone()
    };
    let revived: Vec<Reg> = base[50..100].iter().map(at_1).collect();
    let dropped: Vec<Reg> = revived.iter().map(Reg::deregistration).collect();
    sipp_register(cluster.node(2), &dropped, 500, "n2-dereg-first");
    let refreshed: Vec<Reg> = revived
        .iter()
        .map(|r| Reg {
            cseq: r.cseq + 10,
            ..r.clone()
        })
        .collect();
    sipp_register(cluster.node(3), &refreshed, 500, "n3-refresh-later");
    // ... and refreshed on node 3, then de-registered on the majority.
    let ended: Vec<Reg> = base[100..150].iter().map(at_1).collect();
    let refreshed: Vec<Reg> = ended
        .iter()
        .map(|r| Reg {
            cseq: r.cseq + 10,
            ..r.clone()
        })
        .collect();
    sipp_register(cluster.node(3), &refreshed, 500, "n3-refresh-first");
    std::thread::sleep(Duration::from_millis(50));
    let ended_later: Vec<Reg> = refreshed.iter().map(Reg::deregistration).collect();
    sipp_register(cluster.node(1), &ended_later, 500, "n1-dereg-later");
    let total = base.len() + side_a.len() + side_b.len() - gone.len() - ended.len();
    std::thread::sleep(Duration::from_secs(3));
    // Cut off for real: node 3 has none of the majority's changes.
    let n3 = cluster.node(3).contacts();
    assert_eq!(
        n3.len(),
        base.len() + side_b.len(),
        "node 3 should only hold its own side"
    );
    let holds = |c: &Contacts, r: &Reg| c.keys().any(|(aor, _)| aor.starts_with(&r.user));
    drop(cut);

    wait_converged(
        &cluster.all(),
        CONVERGE,
        "after healing",
        expect_contacts(total),
    );
    assert_eq!(assert_same_contacts(&cluster.all()), total);
    let after = cluster.node(1).contacts();
    for r in &revived {
        assert!(
            holds(&after, r),
            "{}: refreshed on node 3 after its de-registration elsewhere, yet gone",
            r.user
        );
    }
    for r in &ended {
        assert!(
            !holds(&after, r),
            "{}: de-registered on node 1 after its refresh on node 3, yet present",
            r.user
        );
    }
}
