//! SER's database on a server (tests/e2e_databases.rs): a MariaDB or
//! PostgreSQL server from Debian's packages, started here on its own
//! loopback address with a data directory of its own, databases made from
//! Kamailio's schema files (/usr/share/kamailio/{mysql,postgres}), rows
//! read back as text with the servers' own clients. The server is stopped
//! by its PID when dropped (also when a test fails) and dies with the
//! test process (PR_SET_PDEATHSIG); its directory is removed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::processes::{tail, wait_until, ParentDeath};

/// The user Kamailio and sersync log in as, and its password (which no
/// log line may show).
pub const DB_USER: &str = "kamailio";
pub const DB_PASSWORD: &str = "kam-Pw@4:db";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Mariadb,
    Postgresql,
}

impl DbKind {
    pub fn scheme(self) -> &'static str {
        match self {
            DbKind::Mariadb => "mysql",
            DbKind::Postgresql => "postgres",
        }
    }

    /// Kamailio's module for it.
    pub fn module(self) -> &'static str {
        match self {
            DbKind::Mariadb => "db_mysql",
            DbKind::Postgresql => "db_postgres",
        }
    }

    /// Kamailio's schema files for it (kamailio-mysql-modules,
    /// kamailio-postgres-modules).
    pub fn schema_dir(self) -> PathBuf {
        PathBuf::from("/usr/share/kamailio").join(self.scheme())
    }
}

pub struct DbServer {
    pub kind: DbKind,
    pub ip: String,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A directory of its own under /tmp (PostgreSQL's user must reach it).
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sersync-e2e-{name}-{}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("removing an old server dir");
    }
    fs::create_dir_all(&dir).expect("creating the server dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// uid and gid of a system user (the postgres package's).
fn user_ids(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, name])
            .output()
            .unwrap_or_else(|e| panic!("id {flag} {name}: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no user {name} (apt-get install postgresql)"))
    };
    (id("-u"), id("-g"))
}

/// The newest PostgreSQL of /usr/lib/postgresql/<version>/bin (Debian's
/// layout; bookworm has 15).
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .unwrap_or_else(|| {
            panic!(
                "no {}/<version> (apt-get install postgresql)",
                root.display()
            )
        });
    root.join(newest.to_string()).join("bin")
}

fn assert_port_free(ip: &str, port: u16) {
    if let Err(e) = std::net::TcpListener::bind((ip, port)) {
        panic!("{ip}:{port} is in use ({e}): a database server left over from an earlier run?");
    }
}

impl DbServer {
    /// mariadb-install-db into a fresh directory, then mariadbd on
    /// `ip`:3306 (and a socket in that directory); DB_USER may create
    /// databases.
    pub fn mariadb(ip: &str) -> DbServer {
        let port = 3306;
        assert_port_free(ip, port);
        let dir = fresh_dir("mariadb");
        let data = dir.join("data");
        let log = dir.join("mariadb.log");
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("mariadb-install-db: {e} (apt-get install mariadb-server)"));
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One statement a line: mariadbd runs the file at start-up.
        let init = dir.join("init.sql");
        fs::write(
            &init,
            format!(
                "CREATE USER '{DB_USER}'@'%' IDENTIFIED BY '{DB_PASSWORD}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'%';\n"
            ),
        )
        .expect("init.sql");
        let mut cmd = Command::new("mariadbd");
        cmd.args(["--no-defaults", "--user=root", "--skip-name-resolve"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--init-file={}", init.display()))
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--port={port}"))
            // Debian's defaults (50-server.cnf), and a test's speed
            .args([
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
                "--innodb-buffer-pool-size=32M",
                "--innodb-flush-log-at-trx-commit=2",
                "--skip-log-bin",
            ]);
        Self::spawn(DbKind::Mariadb, ip, port, dir, log, cmd)
    }

    /// initdb into a fresh directory owned by the postgres user, then
    /// postgres on `ip`:5432 as that user (it refuses to run as root);
    /// password authentication over TCP, DB_USER may create databases.
    pub fn postgresql(ip: &str) -> DbServer {
        let port = 5432;
        assert_port_free(ip, port);
        let bin = postgres_bin();
        let (uid, gid) = user_ids("postgres");
        let dir = fresh_dir("postgresql");
        let data = dir.join("data");
        let log = dir.join("postgresql.log");
        let pwfile = dir.join("superuser.pw");
        fs::write(&pwfile, "super-pw\n").expect("pwfile");
        for p in [&dir, &pwfile] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
        }
        let out = Command::new(bin.join("initdb"))
            .uid(uid)
            .gid(gid)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("initdb: {e} (apt-get install postgresql)"));
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.uid(uid)
            .gid(gid)
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir)
            .args(["-h", ip, "-p", &port.to_string()])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        let s = Self::spawn(DbKind::Postgresql, ip, port, dir, log, cmd);
        let mut admin = postgres::Config::new()
            .host(ip)
            .port(port)
            .user("postgres")
            .password("super-pw")
            .dbname("postgres")
            .connect(postgres::NoTls)
            .expect("connecting as postgres");
        admin
            .batch_execute(&format!(
                "CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'"
            ))
            .expect("creating the kamailio role");
        s
    }

    fn spawn(
        kind: DbKind,
        ip: &str,
        port: u16,
        dir: PathBuf,
        log: PathBuf,
        mut cmd: Command,
    ) -> DbServer {
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("server log");
        let child = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("fd"))
            .stderr(logf)
            .pre_exec_parent_death(libc::SIGTERM)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {kind:?}: {e}"));
        let mut s = DbServer {
            kind,
            ip: ip.to_string(),
            port,
            dir,
            log,
            child: Some(child),
        };
        let t0 = Instant::now();
        let up = wait_until(Duration::from_secs(30), || {
            if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{kind:?} exited ({st}):\n{}", tail(&s.log, 20));
            }
            s.admin_check().is_ok()
        });
        assert!(
            up,
            "{kind:?} not ready in 30 s: {:?}\n{}",
            s.admin_check().err(),
            tail(&s.log, 20)
        );
        eprintln!("e2e: {kind:?} up on {ip}:{port} in {:?}", t0.elapsed());
        s
    }

    fn admin_check(&self) -> Result<(), String> {
        match self.kind {
            DbKind::Mariadb => self.mysql(None).map(drop),
            DbKind::Postgresql => postgres::Config::new()
                .host(&self.ip)
                .port(self.port)
                .user("postgres")
                .password("super-pw")
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(2))
                .connect(postgres::NoTls)
                .map(drop)
                .map_err(|e| e.to_string()),
        }
    }

    fn mysql(&self, db: Option<&str>) -> Result<mysql::Conn, String> {
        let opts = mysql::OptsBuilder::new()
            .ip_or_hostname(Some(&self.ip))
            .tcp_port(self.port)
            .user(Some(DB_USER))
            .pass(Some(DB_PASSWORD))
            .db_name(db)
            .prefer_socket(false)
            .tcp_connect_timeout(Some(Duration::from_secs(2)));
        mysql::Conn::new(opts).map_err(|e| e.to_string())
    }

    fn postgres(&self, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host(&self.ip)
            .port(self.port)
            .user(DB_USER)
            .password(DB_PASSWORD)
            .dbname(db)
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {db}: {e}"))
    }

    /// Kamailio's db_url for database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!(
            "{}://{DB_USER}:{DB_PASSWORD}@{}:{}/{db}",
            self.kind.scheme(),
            self.ip,
            self.port
        )
    }

    /// A fresh database `db` with Kamailio's version table, usrloc's and
    /// alias_db's tables, from Kamailio's own schema files.
    pub fn create_database(&self, db: &str) {
        let mut sql = String::new();
        for f in ["standard", "usrloc", "alias_db"] {
            let p = self.kind.schema_dir().join(format!("{f}-create.sql"));
            sql.push_str(&fs::read_to_string(&p).unwrap_or_else(|e| {
                panic!(
                    "reading {}: {e} (apt-get install kamailio-{}-modules)",
                    p.display(),
                    self.kind.scheme()
                )
            }));
            sql.push('\n');
        }
        match self.kind {
            DbKind::Mariadb => {
                use mysql::prelude::Queryable;
                let mut c = self.mysql(None).expect("connecting");
                c.query_drop(format!("DROP DATABASE IF EXISTS {db}"))
                    .expect("drop database");
                c.query_drop(format!("CREATE DATABASE {db}"))
                    .expect("create database");
                c.query_drop(format!("USE {db}")).expect("use");
                for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                    c.query_drop(stmt)
                        .unwrap_or_else(|e| panic!("{db}: {stmt}: {e}"));
                }
            }
            DbKind::Postgresql => {
                let mut c = self.postgres("postgres");
                c.batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
                    .expect("drop database");
                c.batch_execute(&format!("CREATE DATABASE {db} OWNER {DB_USER}"))
                    .expect("create database");
                self.postgres(db)
                    .batch_execute(&sql)
                    .unwrap_or_else(|e| panic!("{db}: Kamailio's schema: {e}"));
            }
        }
    }

    /// The rows `sql` selects in database `db`, each value as the server
    /// gives it in text (None: NULL).
    pub fn rows(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        match self.kind {
            DbKind::Mariadb => {
                use mysql::prelude::Queryable;
                let mut c = self.mysql(Some(db)).expect("connecting");
                // The text protocol: every value as the server prints it.
                let rows: Vec<mysql::Row> =
                    c.query(sql).unwrap_or_else(|e| panic!("{db}: {sql}: {e}"));
                rows.into_iter()
                    .map(|r| {
                        r.unwrap()
                            .into_iter()
                            .map(|v| match v {
                                mysql::Value::NULL => None,
                                mysql::Value::Bytes(b) => {
                                    Some(String::from_utf8_lossy(&b).into_owned())
                                }
                                other => Some(other.as_sql(true)),
                            })
                            .collect()
                    })
                    .collect()
            }
            DbKind::Postgresql => {
                let msgs = self
                    .postgres(db)
                    .simple_query(sql)
                    .unwrap_or_else(|e| panic!("{db}: {sql}: {e}"));
                msgs.iter()
                    .filter_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect()
            }
        }
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // PostgreSQL's fast shutdown is SIGINT; mariadbd's is SIGTERM.
            let sig = match self.kind {
                DbKind::Postgresql => libc::SIGINT,
                DbKind::Mariadb => libc::SIGTERM,
            };
            // SAFETY: kill(2) on the PID of our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => sleep(Duration::from_millis(50)),
                    _ => {
                        eprintln!("e2e: {:?} ignored its shutdown signal: killed", self.kind);
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
