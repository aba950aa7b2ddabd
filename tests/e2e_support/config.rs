//! What a node is made of: the paths the harness uses, the module it loads
//! (or a private copy of it), its kamailio.cfg from tests/e2e/kamailio.cfg.in
//! and SER's database created from Debian's schema files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SCHEMA_DIR: &str = "/usr/share/kamailio/db_sqlite";
/// usrloc's timer_interval in the nodes' configuration (seconds).
pub const TIMER_INTERVAL: u64 = 5;
pub const SERSYNC_PORT: u16 = 5999;
pub const SIP_PORT: u16 = 5060;
/// Where a node's SER writes sersync.apply's token (node dir, mode 0600).
pub const APPLY_TOKEN_FILE: &str = "apply.token";

/// Environment switch: start nodes without sersync (harness work only).
pub const NO_MODULE_ENV: &str = "SERSYNC_E2E_NO_MODULE";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn e2e_dir() -> PathBuf {
    repo_root().join("tests/e2e")
}

pub fn module_path() -> PathBuf {
    repo_root().join("build/sersync.so")
}

/// The module to load, or None in harness-only mode. Panics when the
/// module is missing: the end-to-end tests never pass without it.
pub fn required_module() -> Option<PathBuf> {
    if std::env::var_os(NO_MODULE_ENV).is_some_and(|v| v == "1") {
        eprintln!(
            "e2e: {NO_MODULE_ENV}=1: nodes run WITHOUT sersync; \
             replication checks will fail"
        );
        return None;
    }
    let p = module_path();
    assert!(
        p.is_file(),
        "{} is missing: build the module with `make` before running the \
         end-to-end tests (set {NO_MODULE_ENV}=1 only to work on the \
         harness itself)",
        p.display()
    );
    Some(p)
}

/// Settings beyond the defaults of `Cluster::start`.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// sersync's "domains" (usrloc tables replicated); None: "location".
    pub domains: Option<String>,
    /// "domains" of node N (1-based) instead of `domains`: a configuration
    /// rolled out to some nodes first.
    pub domains_of: BTreeMap<usize, String>,
    /// Extra lines for the sersync block of node N (1-based), e.g.
    /// `modparam("sersync", "alias_rescan_interval", 5)`, or `#!define`s.
    pub extra: BTreeMap<usize, Vec<String>>,
    /// usrloc tables created beside "location" in every node's database,
    /// with location's schema (e.g. "aliases" for SER-0.9 style aliases).
    pub usrloc_tables: Vec<String>,
    /// Kamailio's shared memory in MB (`-m`); None: 64, Kamailio's default.
    /// A contact takes about 1 KiB of it: 64 MB holds ~50,000.
    pub shm_mb: Option<u32>,
    /// Config template instead of tests/e2e/kamailio.cfg.in (same @NAMES@).
    pub template: Option<PathBuf>,
    /// More `kamailio` arguments, e.g. `["-x", "tlsf"]` (memory manager).
    pub kamailio_args: Vec<String>,
    /// usrloc's db_mode; None: the template's (1, write-through to SER's
    /// SQLite database). 0 keeps usrloc in memory only.
    pub ul_db_mode: Option<u8>,
    /// sersync without `db_url` (no database at all: no database fallback,
    /// no start-up comparison with SER's location table, no aliases), as a
    /// cluster with usrloc in memory runs; false: SER's database.
    pub sersync_no_db: bool,
    /// Node N (1-based) runs on the Kamailio of this Debian root
    /// (ser_root.rs: e.g. 6.0 beside the host's 5.6), with its module.
    pub ser_root_of: BTreeMap<usize, super::ser_root::SerRoot>,
    /// usrloc's db_mode of node N instead of `ul_db_mode`.
    pub ul_db_mode_of: BTreeMap<usize, u8>,
    /// SER's database on a server (db_servers.rs) instead of each node's
    /// SQLite file.
    pub server_db: Option<ServerDb>,
    /// Environment variables for every node's Kamailio (e.g. TZ).
    pub env: Vec<(String, String)>,
}

/// SER's database on a server: the module Kamailio loads for it and each
/// node's db_url (usrloc's, alias_db's and sersync's). The databases must
/// exist, with Kamailio's tables, before the nodes start.
#[derive(Clone, Debug)]
pub struct ServerDb {
    /// "db_mysql" or "db_postgres".
    pub module: String,
    pub urls: BTreeMap<usize, String>,
}

/// The template's database module line, replaced for `ServerDb`.
pub const SQLITE_MODULE_LINE: &str = "loadmodule \"db_sqlite.so\"";

/// The template's usrloc db_mode line, replaced when
/// `ClusterOptions::ul_db_mode` is set.
pub const UL_DB_MODE_LINE: &str = "modparam(\"usrloc\", \"db_mode\", 1)";

/// The kamailio.cfg for one node, from tests/e2e/kamailio.cfg.in.
pub fn node_config(
    index: usize,
    ip: &str,
    dir: &Path,
    peers: &[String],
    module: Option<&Path>,
    secret: &str,
) -> String {
    node_config_with(
        index,
        ip,
        dir,
        peers,
        module,
        secret,
        &ClusterOptions::default(),
    )
}

/// `node_config` with the settings of `opts`.
pub fn node_config_with(
    index: usize,
    ip: &str,
    dir: &Path,
    peers: &[String],
    module: Option<&Path>,
    secret: &str,
    opts: &ClusterOptions,
) -> String {
    let template_path = opts
        .template
        .clone()
        .unwrap_or_else(|| e2e_dir().join("kamailio.cfg.in"));
    let template = fs::read_to_string(&template_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", template_path.display()));
    let template = match opts.ul_db_mode_of.get(&index).copied().or(opts.ul_db_mode) {
        None => template,
        Some(mode) => {
            assert!(
                template.contains(UL_DB_MODE_LINE),
                "{}: no `{UL_DB_MODE_LINE}` line for ClusterOptions::ul_db_mode",
                template_path.display()
            );
            template.replace(
                UL_DB_MODE_LINE,
                &format!("modparam(\"usrloc\", \"db_mode\", {mode})"),
            )
        }
    };
    let d = dir.to_str().expect("utf-8 dir");
    let (template, db_url) = match &opts.server_db {
        None => (template, format!("sqlite:///{d}/kamailio.db")),
        Some(db) => {
            assert!(
                template.contains(SQLITE_MODULE_LINE),
                "{}: no `{SQLITE_MODULE_LINE}` line for ClusterOptions::server_db",
                template_path.display()
            );
            let url = db
                .urls
                .get(&index)
                .expect("ServerDb: no db_url for the node");
            (
                template.replace(
                    SQLITE_MODULE_LINE,
                    &format!("loadmodule \"{}.so\"", db.module),
                ),
                url.clone(),
            )
        }
    };
    let sersync = match module {
        None => "# sersync disabled (harness-only run)\n".to_string(),
        Some(m) => {
            let mut s = String::new();
            let _ = writeln!(s, "loadmodule \"{}\"", m.display());
            let _ = writeln!(s, "modparam(\"sersync\", \"node_id\", \"n{index}\")");
            let _ = writeln!(
                s,
                "modparam(\"sersync\", \"listen\", \"tcp:{ip}:{SERSYNC_PORT}\")"
            );
            for p in peers {
                let _ = writeln!(s, "modparam(\"sersync\", \"peer\", \"{p}\")");
            }
            let _ = writeln!(s, "modparam(\"sersync\", \"secret\", \"{secret}\")");
            let _ = writeln!(s, "modparam(\"sersync\", \"journal\", \"{d}/sersync.db\")");
            let _ = writeln!(s, "modparam(\"sersync\", \"fifo\", \"{d}/rpc.fifo\")");
            // sersync.apply's token, for tests that call it as the engine
            // does (Node::apply_token)
            let _ = writeln!(
                s,
                "modparam(\"sersync\", \"apply_token_file\", \"{d}/{APPLY_TOKEN_FILE}\")"
            );
            if !opts.sersync_no_db {
                let _ = writeln!(s, "modparam(\"sersync\", \"db_url\", \"{db_url}\")");
            }
            let domains = opts
                .domains_of
                .get(&index)
                .map(String::as_str)
                .or(opts.domains.as_deref())
                .unwrap_or("location");
            let _ = writeln!(s, "modparam(\"sersync\", \"domains\", \"{domains}\")");
            for line in opts.extra.get(&index).into_iter().flatten() {
                let _ = writeln!(s, "{line}");
            }
            s
        }
    };
    template
        .replace("@IP@", ip)
        .replace("@SERVER_ID@", &index.to_string())
        .replace("@DIR@", d)
        .replace("@DB_URL@", &db_url)
        .replace("@TIMER@", &TIMER_INTERVAL.to_string())
        .replace("@SERSYNC@", &sersync)
}

/// Creates SER's database from Debian's schema files, in WAL mode (see
/// tests/e2e/kamailio.cfg.in).
pub fn create_db(db: &Path) {
    create_db_with(db, &[])
}

/// location's schema (table, indexes, version row) under another name.
fn usrloc_table_sql(name: &str) -> String {
    let p = Path::new(SCHEMA_DIR).join("usrloc-create.sql");
    let t = fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    let end = t
        .find("CREATE TABLE location_attrs")
        .expect("usrloc-create.sql without location_attrs");
    t[..end].replace("location", name)
}

/// `create_db`, plus usrloc tables with location's schema.
pub fn create_db_with(db: &Path, usrloc_tables: &[String]) {
    let mut sql = String::from("PRAGMA journal_mode=WAL;\n");
    for f in ["standard", "usrloc", "alias_db"] {
        let p = Path::new(SCHEMA_DIR).join(format!("{f}-create.sql"));
        match fs::read_to_string(&p) {
            Ok(t) => sql.push_str(&t),
            Err(_) if f == "alias_db" => {}
            Err(e) => panic!("reading {}: {e}", p.display()),
        }
    }
    for t in usrloc_tables {
        sql.push_str(&usrloc_table_sql(t));
    }
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sqlite3");
    child
        .stdin
        .take()
        .expect("sqlite3 stdin")
        .write_all(sql.as_bytes())
        .expect("feeding sqlite3");
    let out = child.wait_with_output().expect("sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {} failed: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tcp:<ip>:5999`, a node's sersync address as `peer` takes it.
pub fn sersync_addr(ip: &str) -> String {
    format!("tcp:{ip}:{SERSYNC_PORT}")
}

// ---------------------------------------------------------------------------
// A private copy of the module (e2e_durability)

/// A copy of build/sersync.so under target/tmp, made once per test
/// process. Nodes that load it are not hit by a `make` that rewrites
/// build/sersync.so in place while they run (the Makefile's `cp` keeps the
/// inode, so mapped pages change under the running processes: SIGBUS).
pub fn private_module_copy() -> Option<PathBuf> {
    static COPY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let src = required_module()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        fs::create_dir_all(&dir).expect("creating e2e dir");
        let dst = dir.join(format!("sersync-{}.so", std::process::id()));
        let tmp = dir.join(format!("sersync-{}.so.tmp", std::process::id()));
        fs::copy(&src, &tmp).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        fs::rename(&tmp, &dst).expect("renaming the module copy");
        Some(dst)
    })
    .clone()
}
