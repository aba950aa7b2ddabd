//! End-to-end: Kamailio 6.0 beside 5.6 (issue 14). Nodes on the host's
//! Kamailio 5.6 and nodes on the Kamailio 6.0 of a Debian 13 root
//! (`chroot DIR kamailio`, see e2e_support/ser_root.rs) in one cluster,
//! each loading the module built for its own Kamailio from the same
//! source: registrations and de-registrations made on any node reach every
//! other, every field equal.
//!
//! A rolling upgrade: three 5.6 nodes under REGISTER load, each in turn
//! stopped and started on 6.0 with its journal, lose nothing. The Debian
//! packages (`make deb`, `make deb SER_ROOT=DIR`) install into a throwaway
//! copy of the system of their Kamailio and load there.
//!
//! Needs `build/sersync.so` (`make`), the root (`.ci/debian13-root.sh`,
//! default /var/cache/sersync/debian13, or SERSYNC_DEBIAN13_ROOT) and
//! `build/<its version>/sersync.so` (`make SER_ROOT=DIR`; `make test`
//! builds both, and the packages). Fails, never skips, without them.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------
// Rolling upgrade under load

/// A sipp registering `regs` over and over (its injection file, in turn)
/// on one node at a fixed rate until `finish`; every 200 OK is logged
/// with its user and Call-ID (ok.log), so the test knows the last
/// registration SER confirmed for each user.
struct Load {
    child: Option<Child>,
    dir: PathBuf,
    label: String,
}

/// register.xml logging "OK <user> <Call-ID>" on each 200 OK.
fn logging_scenario(dir: &Path) -> PathBuf {
    let src = fs::read_to_string(e2e_dir().join("register.xml")).expect("register.xml");
    let plain = r#"<recv response="200" rtd="true"/>"#;
    assert!(src.contains(plain), "register.xml: no plain 200 recv");
    let logged = r#"<recv response="200" rtd="true"><action><log message="OK [field0] [call_id]"/></action></recv>"#;
    let p = dir.join("register_logged.xml");
    fs::write(&p, src.replace(plain, logged)).expect("writing scenario");
    p
}

impl Load {
    fn start(node: &Node, regs: &[Reg], rate: u32, label: &str) -> Load {
        let dir = node.dir.parent().unwrap().join("load").join(label);
        fs::create_dir_all(&dir).unwrap();
        write_injection_csv(&dir.join("users.csv"), regs, &node.ip);
        let scenario = logging_scenario(&dir);
        let out = File::create(dir.join("sipp.out")).unwrap();
        let mut cmd = sipp_command(node, &scenario, &dir, 1_000_000, rate, "u1");
        cmd.args(["-max_retrans", "8"])
            .args(["-trace_logs", "-log_file"])
            .arg(dir.join("ok.log"))
            .args(["-trace_stat", "-stf"])
            .arg(dir.join("stat.csv"))
            .args(["-fd", "1"])
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("starting sipp");
        Load {
            child: Some(child),
            dir,
            label: label.into(),
        }
    }

    /// SIGUSR1: sipp starts no more calls, finishes those under way and
    /// exits. Returns (successful, failed) REGISTERs.
    fn finish(&mut self) -> (u64, u64) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGUSR1);
            let end = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() >= end {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sipp {} did not finish: {}", self.label, self.dir.display());
                }
                sleep(Duration::from_millis(100));
            }
        }
        let text = fs::read_to_string(self.dir.join("stat.csv")).unwrap_or_default();
        let header = text.lines().next().unwrap_or("");
        let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let cols: Vec<&str> = header.split(';').collect();
        let vals: Vec<&str> = last.split(';').collect();
        let get = |name: &str| -> u64 {
            cols.iter()
                .position(|c| *c == name)
                .and_then(|i| vals.get(i))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (get("SuccessfulCall(C)"), get("FailedCall(C)"))
    }

    /// (user, Call-ID) of every confirmed REGISTER, in order.
    fn confirmed(&self) -> Vec<(String, String)> {
        fs::read_to_string(self.dir.join("ok.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.trim().strip_prefix("OK ")?.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Users per node and REGISTERs per second per node in the rolling upgrade.
const ROLL_USERS: usize = 300;
const ROLL_RATE: u32 = 40;

/// Three nodes on the host's Kamailio 5.6, usrloc in memory (what a
/// restarted node gets back comes from its journal only), each with a sipp
/// re-registering its users at 40/s throughout. Each node in turn: its
/// sipp paused, the node stopped, started on the root's Kamailio 6.0 with
/// the same directory (journal, configuration), its sipp resumed. At the
/// end all three run 6.0, no REGISTER failed, every user is on every
/// node (nothing lost) with the Call-ID of the last REGISTER confirmed for
/// it (nothing stale), and all nodes hold the same contacts field by
/// field.
#[test]
fn rolling_upgrade_under_load_loses_nothing() {
    let started = Instant::now();
    let root = SerRoot::debian13();
    let opts = ClusterOptions {
        ul_db_mode: Some(0),
        sersync_no_db: true,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_private("kamailio6-rolling", 221, 3, &opts);
    let host_version = cluster.node(1).ser_version();
    assert_ne!(host_version, root.version, "nothing to upgrade to");
    let regs: Vec<Vec<Reg>> = (1..=3)
        .map(|n| mixed_users(&format!("roll{n}u"), ROLL_USERS, 300_000 * n as u64))
        .collect();
    let mut loads: Vec<Vec<Load>> = (1..=3)
        .map(|n| {
            vec![Load::start(
                cluster.node(n),
                &regs[n - 1],
                ROLL_RATE,
                &format!("n{n}-{host_version}"),
            )]
        })
        .collect();
    let mut totals = (0u64, 0u64);
    let mut add = |(ok, failed): (u64, u64), label: &str| {
        eprintln!("e2e: load {label}: {ok} REGISTERs confirmed, {failed} failed");
        totals.0 += ok;
        totals.1 += failed;
    };
    // every user registered once before the first node goes
    sleep(Duration::from_secs_f64(
        ROLL_USERS as f64 / f64::from(ROLL_RATE) + 1.0,
    ));

    for n in 1..=3 {
        let t = Instant::now();
        let load = loads[n - 1].last_mut().unwrap();
        let counts = load.finish();
        add(counts, &load.label.clone());
        let node = cluster.node_mut(n);
        node.stop()
            .unwrap_or_else(|e| panic!("stopping node {n}: {e}"));
        node.use_ser_root(&root);
        node.start();
        assert_eq!(node.ser_version(), root.version);
        cluster.wait_mesh_up(Duration::from_secs(30));
        let node = cluster.node(n);
        let mut last = String::new();
        let restored = wait_until(Duration::from_secs(30), || {
            let st = node.status();
            last = st.summary();
            st.reports_restore() && st.restore_pending == 0 && st.restored > 0
        });
        assert!(
            restored,
            "node {n} on {}: no restore from its journal:\n{last}",
            root.version
        );
        loads[n - 1].push(Load::start(
            node,
            &regs[n - 1],
            ROLL_RATE,
            &format!("n{n}-{}", root.version),
        ));
        eprintln!(
            "e2e: node {n} upgraded to {} in {:.1} s (sipp paused meanwhile): {last}",
            root.version,
            t.elapsed().as_secs_f64()
        );
        sleep(Duration::from_secs(3));
    }

    // the last round of every user on the upgraded cluster
    sleep(Duration::from_secs_f64(
        ROLL_USERS as f64 / f64::from(ROLL_RATE) + 1.0,
    ));
    let mut last_call_id: BTreeMap<String, String> = BTreeMap::new();
    for node_loads in &mut loads {
        for load in node_loads.iter_mut() {
            if load.child.is_some() {
                let counts = load.finish();
                add(counts, &load.label.clone());
            }
            for (user, call_id) in load.confirmed() {
                last_call_id.insert(user, call_id);
            }
        }
    }
    let (ok, failed) = totals;
    assert_eq!(failed, 0, "REGISTERs failed during the rolling upgrade");
    assert_eq!(
        last_call_id.len(),
        3 * ROLL_USERS,
        "users with a confirmed REGISTER"
    );

    cluster.wait_settled(CONVERGE);
    let mut want = BTreeMap::new();
    for (i, r) in regs.iter().enumerate() {
        for k in keys(r, &cluster.node(i + 1).ip) {
            want.insert(k, i as i64 + 1);
        }
    }
    let all = wait_converged(
        &cluster.all(),
        CONVERGE,
        "every node after the rolling upgrade",
        exactly(&want),
    );
    let stale: Vec<String> = all
        .iter()
        .filter(|((aor, _), f)| {
            let user = aor.split('@').next().unwrap_or(aor);
            last_call_id.get(user) != Some(&f.call_id)
        })
        .map(|((aor, _), f)| {
            format!(
                "{aor}: Call-ID {} (last confirmed {:?})",
                f.call_id,
                last_call_id.get(aor.split('@').next().unwrap_or(aor))
            )
        })
        .collect();
    assert!(
        stale.is_empty(),
        "{} contacts are not the last registration confirmed, e.g.:\n{}",
        stale.len(),
        stale[..stale.len().min(5)].join("\n")
    );
    assert_eq!(assert_same_contacts(&cluster.all()), want.len());
    for node in cluster.all() {
        assert_eq!(node.ser_version(), root.version, "{}", node.name());
        let st = node.status();
        assert_eq!(st.queue_dropped, 0, "{}: {}", node.name(), st.summary());
    }
    eprintln!(
        "e2e: rolling upgrade {host_version} -> {}: {ok} REGISTERs confirmed, 0 failed, \
         0 lost, 0 stale, {} contacts identical on 3 nodes; {:.1} s",
        root.version,
        want.len(),
        started.elapsed().as_secs_f64()
    );
    cluster.stop_all();
}

// ---------------------------------------------------------------------------
// Debian packages

/// The package `make deb` built of this sersync for Kamailio `version`,
/// in `dir`.
fn find_deb(dir: &Path, version: &str) -> PathBuf {
    let want = format!("+kamailio{version}_");
    let prefix = format!("kamailio-sersync-modules_{}-", env!("CARGO_PKG_VERSION"));
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb") && n.contains(&want))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {prefix}*{want}*.deb in {}: `make deb` \
                 (SER_ROOT=DIR for a root's Kamailio; `make test` builds both)",
                dir.display()
            )
        })
}

/// The package built for the host's Kamailio (5.6, Debian 12) installs
/// with `apt-get install ./<deb>` into a throwaway copy of the host's
/// system, the one built for the root's (6.0, Debian 13) into a throwaway
/// copy of the root; a node on each loads "sersync.so" from Kamailio's
/// module directory, where only the package put it. sersync.status gives
/// the module's version and the Kamailio it was built for, and the two
/// nodes replicate registrations both ways.
#[test]
fn debian_packages_install_and_load() {
    let host_version = {
        let out = std::process::Command::new("kamailio")
            .arg("-V")
            .output()
            .expect("kamailio -V");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("version: kamailio "))
            .and_then(|r| r.split_whitespace().next())
            .expect("kamailio -V: version")
            .to_string()
    };
    let root6 = SerRoot::debian13();
    let build = repo_root().join("build");
    let host = SerRoot::with_deb(Path::new("/"), &find_deb(&build, &host_version));
    let trixie = SerRoot::with_deb(
        &root6.dir,
        &find_deb(&build.join(&root6.version), &root6.version),
    );
    // the host's own module directory keeps what it had: no sersync.so
    // appears there (the package went into the throwaway copy only)
    let host_module = Path::new("/usr/lib/x86_64-linux-gnu/kamailio/modules/sersync.so");
    let host_had_module = host_module.exists();
    let opts = ClusterOptions {
        ser_root_of: BTreeMap::from([(1, host.clone()), (2, trixie.clone())]),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_private("kamailio6-deb", 231, 2, &opts);
    for (n, root) in [(1, &host), (2, &trixie)] {
        let node = cluster.node(n);
        let cfg = fs::read_to_string(node.dir.join("kamailio.cfg")).unwrap();
        assert!(cfg.contains("loadmodule \"sersync.so\""), "{}", node.name());
        assert!(
            node.log_grep("Setting up kamailio-sersync-modules").len() == 1,
            "{}: apt-get did not install the package; log tail:\n{}",
            node.name(),
            node.log_tail(20)
        );
        let st = node.status();
        let field = |k: &str| st.raw.get(k).and_then(|v| v.as_str()).map(str::to_string);
        assert_eq!(
            field("module_version").as_deref(),
            Some(env!("CARGO_PKG_VERSION")),
            "{}: sersync.status module_version: {}",
            node.name(),
            st.raw
        );
        assert_eq!(
            field("kamailio_version"),
            Some(root.version.clone()),
            "{}: sersync.status kamailio_version: {}",
            node.name(),
            st.raw
        );
        assert_eq!(node.ser_version(), root.version);
    }
    let mut want = BTreeMap::new();
    for n in 1..=2 {
        let node = cluster.node(n);
        let regs = mixed_users(&format!("deb{n}u"), 100, 400_000 * n as u64);
        sipp_register(node, &regs, RATE, &format!("n{n}-deb"));
        cluster.wait_settled(CONVERGE);
        for k in keys(&regs, &node.ip) {
            want.insert(k, n as i64);
        }
    }
    wait_converged(
        &cluster.all(),
        CONVERGE,
        "registrations between the packaged 5.6 and 6.0 modules",
        exactly(&want),
    );
    cluster.stop_all();
    assert_eq!(
        host_module.exists(),
        host_had_module,
        "{} changed on the host",
        host_module.display()
    );
}
