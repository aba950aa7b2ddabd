//! A cluster of nodes on 127.0.0.x: started together under the machine
//! lock, waited for (peer links up, everything acknowledged), stopped, and
//! grown by a node at a time.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::Duration;

use super::config::{private_module_copy, required_module, ClusterOptions, SERSYNC_PORT, SIP_PORT};
use super::node::Node;
use super::processes::{become_subreaper, wait_until, MachineLock};

/// Panics if something already holds ip:port (UDP): a node left over from
/// an aborted run would take the test's traffic.
fn assert_port_free(ip: &str, port: u16) {
    if let Err(e) = std::net::UdpSocket::bind((ip, port)) {
        panic!(
            "{ip}:{port} is in use ({e}): a Kamailio left over from an earlier \
             run? (see `ss -lunp | grep {ip}:{port}`)"
        );
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    _lock: MachineLock,
}

impl Cluster {
    /// `n` nodes with sersync on 127.0.0.`first`.. in a fresh directory
    /// `target/tmp/e2e/<name>`; waits until every node serves RPC and every
    /// sersync peer link is up.
    pub fn start(name: &str, first: u8, n: usize) -> Cluster {
        let module = required_module();
        let c = Self::start_with(name, first, n, module.clone());
        if module.is_some() {
            c.wait_mesh_up(Duration::from_secs(30));
        }
        c
    }

    /// Nodes without sersync, whatever the environment says (harness tests).
    pub fn start_without_sersync(name: &str, first: u8, n: usize) -> Cluster {
        Self::start_with(name, first, n, None)
    }

    /// Like `start`, with the settings of `opts` (extra modparams per
    /// node, replicated usrloc tables, tables to create).
    pub fn start_with_options(name: &str, first: u8, n: usize, opts: &ClusterOptions) -> Cluster {
        let module = required_module();
        let c = Self::start_opts(name, first, n, module.clone(), opts);
        if module.is_some() {
            c.wait_mesh_up(Duration::from_secs(30));
        }
        c
    }

    fn start_with(name: &str, first: u8, n: usize, module: Option<PathBuf>) -> Cluster {
        Self::start_opts(name, first, n, module, &ClusterOptions::default())
    }

    fn start_opts(
        name: &str,
        first: u8,
        n: usize,
        module: Option<PathBuf>,
        opts: &ClusterOptions,
    ) -> Cluster {
        let lock = MachineLock::acquire();
        become_subreaper();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("removing old e2e dir");
        }
        fs::create_dir_all(&dir).expect("creating e2e dir");
        let ips: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.{}", first as usize + i))
            .collect();
        let mut nodes = Vec::new();
        for ip in &ips {
            assert_port_free(ip, SIP_PORT);
        }
        for i in 0..n {
            let peers: Vec<String> = ips
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, ip)| format!("tcp:{ip}:{SERSYNC_PORT}"))
                .collect();
            let node = Node::create(
                &dir.join(format!("n{}", i + 1)),
                i + 1,
                &ips[i],
                &peers,
                module.as_deref(),
                &format!("e2e-secret-{name}"),
                opts,
            );
            nodes.push(node);
        }
        let mut c = Cluster {
            nodes,
            dir,
            _lock: lock,
        };
        for node in &mut c.nodes {
            node.start();
        }
        c
    }

    pub fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    pub fn node_mut(&mut self, n: usize) -> &mut Node {
        &mut self.nodes[n - 1]
    }

    pub fn all(&self) -> Vec<&Node> {
        self.nodes.iter().collect()
    }

    /// Waits until every running node's sersync reports every peer up.
    pub fn wait_mesh_up(&self, timeout: Duration) {
        let mut last = String::new();
        let ok = wait_until(timeout, || {
            last.clear();
            let mut all_up = true;
            for node in self.nodes.iter().filter(|n| n.is_running()) {
                match node.sersync_status() {
                    Ok(st) => {
                        let up = st.running == 1
                            && st.peers.len() == self.nodes.len() - 1
                            && st.peers.iter().all(|p| p.state == "up");
                        if !up {
                            all_up = false;
                            let _ = writeln!(last, "{}: {}", node.name(), st.summary());
                        }
                    }
                    Err(e) => {
                        all_up = false;
                        let _ = writeln!(last, "{}: sersync.status failed: {e}", node.name());
                    }
                }
            }
            all_up
        });
        if !ok {
            let logs: String = self
                .nodes
                .iter()
                .map(|n| format!("--- {} log tail ---\n{}\n", n.name(), n.log_tail(15)))
                .collect();
            panic!("sersync peer links not all up after {timeout:?}:\n{last}\n{logs}");
        }
    }

    /// Waits until every running node's peers are up and have acknowledged
    /// everything it journaled (acked = last_seq, nothing pending, nothing
    /// queued), the same on two status reads 0.3 s apart: sersync.status
    /// is republished every 0.2 s, so one read may predate the last
    /// change.
    pub fn wait_settled(&self, timeout: Duration) {
        let mut last = String::new();
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.is_running()).collect();
        let mut seen: Option<Vec<u64>> = None;
        let ok = wait_until(timeout, || {
            last.clear();
            let mut all = true;
            let mut seqs = Vec::new();
            for node in &running {
                match node.sersync_status() {
                    Ok(st) => {
                        seqs.push(st.last_seq);
                        let done = st.peers.len() == self.nodes.len() - 1
                            && st.peers.iter().all(|p| {
                                p.state == "up" && p.acked == st.last_seq && p.pending == 0
                            })
                            && st.apply_pending == 0
                            && st.queue_depth == 0;
                        if !done {
                            all = false;
                            let _ = writeln!(last, "{}: {}", node.name(), st.summary());
                        }
                    }
                    Err(e) => {
                        all = false;
                        let _ = writeln!(last, "{}: {e}", node.name());
                    }
                }
            }
            if !all {
                seen = None;
                return false;
            }
            if seen.as_ref() == Some(&seqs) {
                return true;
            }
            seen = Some(seqs);
            sleep(Duration::from_millis(300));
            false
        });
        assert!(
            ok,
            "sersync not settled after {timeout:?} (acked = last_seq on every link):\n{last}"
        );
    }

    /// Stops every node (SIGTERM); panics if one leaves processes behind.
    pub fn stop_all(&mut self) {
        let mut errors = Vec::new();
        for node in &mut self.nodes {
            if let Err(e) = node.stop() {
                errors.push(e);
            }
        }
        assert!(
            errors.is_empty(),
            "unclean shutdown:\n{}",
            errors.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Membership: nodes added to a running cluster

impl Cluster {
    /// Creates node `index` (1-based, the next one) on `ip` in the
    /// cluster's directory, configured with `peers` only (its seeds; the
    /// others learn it from them), `edit` applied to its kamailio.cfg; not
    /// started. Returns its index.
    pub fn add_node(
        &mut self,
        ip: &str,
        peers: &[String],
        opts: &ClusterOptions,
        edit: impl Fn(String) -> String,
    ) -> usize {
        let index = self.nodes.len() + 1;
        assert_port_free(ip, SIP_PORT);
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("cluster dir name")
            .to_string();
        let node = Node::create(
            &self.dir.join(format!("n{index}")),
            index,
            ip,
            peers,
            required_module().as_deref(),
            &format!("e2e-secret-{name}"),
            opts,
        );
        let cfg = node.dir.join("kamailio.cfg");
        let text = fs::read_to_string(&cfg).expect("reading kamailio.cfg");
        fs::write(&cfg, edit(text)).expect("writing kamailio.cfg");
        self.nodes.push(node);
        index
    }
}

impl Cluster {
    /// `start_with_options` with the nodes loading `private_module_copy()`.
    pub fn start_private(name: &str, first: u8, n: usize, opts: &ClusterOptions) -> Cluster {
        let module = private_module_copy();
        let c = Self::start_opts(name, first, n, module.clone(), opts);
        if module.is_some() {
            c.wait_mesh_up(Duration::from_secs(30));
        }
        c
    }
}
