//! Prometheus, as operators watch a cluster (issue 15, items 2–4): two
//! Kamailio 5.6 nodes serve the README's recipe (`sersync_metrics()` on
//! `/metrics/sersync`, xhttp_prom's `prom_dispatch()` on `/metrics`); a
//! real Prometheus server (Debian's `prometheus`), started here on
//! loopback with the shipped alert rules, scrapes both paths every second.
//! Through its HTTP API (`/api/v1/query`, `/api/v1/alerts`) the test reads
//! node 1's view of node 2, by node 2's id (one the exposition must
//! escape), while node 2 is down and registrations go on on node 1
//! (pending grows, lag grows, up = 0, SersyncPeerDown pending) and after
//! it returns (pending 0, up 1, no alert); a stranger's connection to
//! node 1's sersync port counted in `sersync_preauth_refused_total` (and
//! xhttp_prom's statistic). `promtool check metrics`
//! accepts the exposition; `promtool check rules` and `promtool test
//! rules` pass on contrib/prometheus.
//!
//! Needs `build/sersync.so` (`make`) and the `prometheus` package; fails,
//! never skips, without them. Addresses 127.0.0.245–247 only.

#[path = "e2e_support/mod.rs"]
mod support;

use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Node 2's id: a double quote and a backslash, which a label value must
/// escape (node ids are any printable ASCII without spaces).
const ID2: &str = r#"east"2\b"#;
/// The same, as a kamailio.cfg string.
const ID2_CFG: &str = r#""east\"2\\b""#;
/// The same, as a PromQL string.
const ID2_PROMQL: &str = r#""east\"2\\b""#;
/// Where Prometheus serves (its own loopback address).
const PROM_ADDR: &str = "127.0.0.247:9090";
/// The nodes' HTTP port (tests/e2e/kamailio.cfg.in).
const HTTP_PORT: u16 = 8080;

fn rules_dir() -> PathBuf {
    repo_root().join("contrib/prometheus")
}

/// The nodes' template with the README's recipe: xhttp_prom exporting
/// the statistics on /metrics, sersync_metrics() on /metrics/sersync.
fn template() -> PathBuf {
    let t = fs::read_to_string(e2e_dir().join("kamailio.cfg.in")).expect("template");
    let load = "loadmodule \"jsonrpcs.so\"\n";
    let route = "event_route[xhttp:request] {\n";
    assert!(t.contains(load) && t.contains(route), "template changed");
    let t = t
        .replace(
            load,
            &format!(
                "{load}loadmodule \"xhttp_prom.so\"\n\
                 modparam(\"xhttp_prom\", \"xhttp_prom_stats\", \"all\")\n"
            ),
        )
        .replace(
            route,
            &format!(
                "{route}\tif ($hu == \"/metrics/sersync\") {{\n\t\tsersync_metrics();\n\t\texit;\n\t}}\n\
                 \tif (prom_check_uri()) {{\n\t\tprom_dispatch();\n\t\texit;\n\t}}\n"
            ),
        );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    fs::create_dir_all(&dir).expect("template dir");
    let p = dir.join(format!("prometheus-{}.cfg.in", std::process::id()));
    fs::write(&p, t).expect("writing the template");
    p
}

/// GET over HTTP with curl; the body, or why not.
fn http_get(url: &str, query: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "5"]);
    if let Some(q) = query {
        cmd.args(["-G", "--data-urlencode"])
            .arg(format!("query={q}"));
    }
    let out = cmd
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{url}: not UTF-8: {e}"))
}

/// A Prometheus server of our own, stopped by its PID on drop.
struct Prometheus {
    child: Option<Child>,
    log: PathBuf,
}

impl Prometheus {
    /// Starts prometheus on PROM_ADDR scraping both paths of `targets`
    /// every second, with the shipped alert rules, its storage in `dir`.
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        if let Err(e) = std::net::TcpListener::bind(PROM_ADDR) {
            panic!("{PROM_ADDR} is in use ({e}): a prometheus left over from an earlier run?");
        }
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let rules = rules_dir().join("sersync-alerts.yml");
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n\
             \x20 - job_name: sersync\n    metrics_path: /metrics/sersync\n\
             \x20   static_configs:\n      - targets: [{list}]\n\
             \x20 - job_name: kamailio\n    metrics_path: /metrics\n\
             \x20   static_configs:\n      - targets: [{list}]\n",
            rules.display()
        );
        let cfg_path = dir.join("prometheus.yml");
        fs::write(&cfg_path, cfg).expect("writing prometheus.yml");
        let data = dir.join("prometheus-data");
        let _ = fs::remove_dir_all(&data);
        let log = dir.join("prometheus.log");
        let logf = fs::File::create(&log).expect("prometheus.log");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={PROM_ADDR}"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("fd"))
            .stderr(logf);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec. Prometheus dies with this test process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("starting prometheus: {e} (apt-get install prometheus; .ci/setup-system.sh)")
        });
        let mut p = Prometheus {
            child: Some(child),
            log,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            http_get(&format!("http://{PROM_ADDR}/-/ready"), None).is_ok()
        });
        assert!(ready, "prometheus not ready in 20 s:\n{}", p.log_tail());
        if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("prometheus exited ({st}):\n{}", p.log_tail());
        }
        p
    }

    fn log_tail(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// An instant query: the result vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let body = http_get(&format!("http://{PROM_ADDR}/api/v1/query"), Some(q))
            .unwrap_or_else(|e| panic!("query {q}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{q}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the one series `q` selects; None while there is none.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        assert!(r.len() <= 1, "{q} selects several series: {r:?}");
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (at most 20 s) until `q`'s value satisfies `ok`; the last value.
    fn wait_value(&self, q: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        let done = wait_until(Duration::from_secs(20), || {
            last = self.value(q);
            last.is_some_and(&ok)
        });
        assert!(done, "{what}: {q} = {last:?} after 20 s");
        last.unwrap_or_default()
    }

    /// The alerts Prometheus holds now: (alertname, peer label, state).
    fn alerts(&self) -> Vec<(String, String, String)> {
        let body = http_get(&format!("http://{PROM_ADDR}/api/v1/alerts"), None)
            .unwrap_or_else(|e| panic!("alerts: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let s = |k: &Value| k.as_str().unwrap_or_default().to_string();
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["labels"]["peer"]),
                    s(&a["state"]),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the PID of a child we have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `promtool check metrics` on an exposition: Ok, or what it says.
fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running promtool: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .map_err(|e| format!("feeding promtool: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}: {said}", out.status))
    }
}

#[test]
fn prometheus_follows_a_peer_down_and_back_by_its_id() {
    let mut opts = ClusterOptions {
        template: Some(template()),
        ..Default::default()
    };
    opts.extra.insert(
        2,
        vec![format!("modparam(\"sersync\", \"node_id\", {ID2_CFG})")],
    );
    let mut c = Cluster::start_with_options("prometheus", 245, 2, &opts);
    let n1 = c.node(1);
    let inst1 = format!("{}:{HTTP_PORT}", n1.ip);
    let targets: Vec<String> = c
        .all()
        .iter()
        .map(|n| format!("{}:{HTTP_PORT}", n.ip))
        .collect();

    // the exposition as served, checked by promtool
    let url = format!("http://{inst1}/metrics/sersync");
    let text = http_get(&url, None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.contains(r#"sersync_peer_up{peer="east\"2\\b",address="tcp:127.0.0.246:5999"} 1"#),
        "{url}:\n{text}"
    );
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{url}:\n{text}"));

    let prom = Prometheus::start(&c.dir, &targets);
    let sel = format!("{{instance=\"{inst1}\",peer={ID2_PROMQL}}}");
    let up = format!("sersync_peer_up{sel}");
    let pending = format!("sersync_peer_pending{sel}");
    let lag = format!("sersync_peer_lag_seconds{sel}");
    prom.wait_value(&up, "n2 up, seen from n1", |v| v == 1.0);
    let r = prom.query(&up);
    assert_eq!(r[0]["metric"]["peer"], ID2, "the label's value, unescaped");

    // a stranger on node 1's sersync port: counted before authentication
    {
        let mut s = std::net::TcpStream::connect((n1.ip.as_str(), SERSYNC_PORT))
            .expect("connecting to n1's sersync port");
        let _ = s.write_all(&noise(200, 7));
        sleep(Duration::from_millis(200));
    }
    let preauth = format!("sersync_preauth_refused_total{{instance=\"{inst1}\"}}");
    prom.wait_value(&preauth, "the stranger counted", |v| v == 1.0);
    assert_eq!(n1.status().raw["preauth_refused"], 1, "sersync.status");
    let kam_preauth =
        format!("kamailio_sersync_preauth_refused{{instance=\"{inst1}\",job=\"kamailio\"}}");
    prom.wait_value(&kam_preauth, "xhttp_prom's statistic", |v| v == 1.0);

    // node 2 down, registrations on node 1: pending and lag grow
    c.node_mut(2).stop().expect("stopping n2");
    let n1 = c.node(1);
    let regs: Vec<Reg> = (0..30).map(|i| Reg::new(format!("pr{i}"), 3600)).collect();
    sipp_register(n1, &regs, 100, "while-down");
    prom.wait_value(&up, "n2 down", |v| v == 0.0);
    let p = prom.wait_value(&pending, "pending for n2", |v| v >= 30.0);
    let st = n1.status();
    let sp = st.peer("127.0.0.246", ID2).expect("n2 in sersync.status");
    assert_eq!(
        p, sp.pending as f64,
        "pending: Prometheus vs sersync.status"
    );
    let l1 = prom.wait_value(&lag, "lag for n2", |v| v > 0.0);
    let l2 = prom.wait_value(&lag, "lag for n2 growing", |v| v >= l1 + 1.0);
    assert!(
        l2 <= (sp.lag_ms as f64 / 1000.0) + 30.0,
        "lag {l2} s vs sersync.status' {} ms",
        sp.lag_ms
    );
    // the shipped rule sees it (it fires after a minute: pending here)
    let down_alert = |state: &str| {
        prom.alerts()
            .iter()
            .any(|(a, peer, s)| a == "SersyncPeerDown" && peer == ID2 && s == state)
    };
    assert!(
        wait_until(Duration::from_secs(10), || down_alert("pending")),
        "SersyncPeerDown not pending for n2: {:?}",
        prom.alerts()
    );
    // xhttp_prom's /metrics on the same node: the statistics group
    let journaled = format!("kamailio_sersync_journaled{{instance=\"{inst1}\",job=\"kamailio\"}}");
    let want = n1.status().journaled as f64;
    prom.wait_value(&journaled, "kamailio_sersync_journaled", |v| v == want);
    assert!(want >= 30.0, "journaled {want}");

    // node 2 back: caught up, up again, the alert gone
    c.node_mut(2).start();
    prom.wait_value(&up, "n2 back up", |v| v == 1.0);
    prom.wait_value(&pending, "nothing pending for n2", |v| v == 0.0);
    prom.wait_value(&lag, "no lag for n2", |v| v == 0.0);
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "n2 caught up",
        expect_contacts(30),
    );
    assert!(
        wait_until(Duration::from_secs(10), || !prom
            .alerts()
            .iter()
            .any(|(a, ..)| a == "SersyncPeerDown")),
        "SersyncPeerDown still there: {:?}",
        prom.alerts()
    );
    drop(prom);
    c.stop_all();
}

/// The shipped alert rules load, and each fires on the series of its test
/// and on no other (contrib/prometheus/sersync-alerts.test.yml).
#[test]
fn alert_rules_pass_promtool() {
    for args in [
        ["check", "rules", "sersync-alerts.yml"],
        ["test", "rules", "sersync-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(rules_dir())
            .output()
            .unwrap_or_else(|e| panic!("running promtool: {e} (apt-get install prometheus)"));
        assert!(
            out.status.success(),
            "promtool {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
