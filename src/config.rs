//! Engine configuration, parsed and checked from the module's modparams.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;

/// Longest node id; it must fit the status area (`SERSYNC_ID_MAX` - 1).
pub const NODE_ID_MAX: usize = 63;

#[derive(Clone, Debug)]
pub struct PeerAddr {
    /// As the operator wrote it, for logs and status.
    pub text: String,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: String,
    pub listen: SocketAddr,
    pub peers: Vec<PeerAddr>,
    /// The secret this node dials with (the first `secret` line).
    pub secret: Vec<u8>,
    /// Every secret accepted from a dialing peer: `secret` and, during a
    /// rolling change, the second `secret` line.
    pub secrets: Vec<Vec<u8>>,
    /// Serve peers that speak only protocol v3 or older (no encrypted
    /// sessions) in clear, and fall back to clear with them: temporary,
    /// for an upgrade from an earlier release (off by default).
    pub accept_clear_peers: bool,
    /// Open encrypted sessions when dialing a peer that also speaks clear
    /// (always true from the modparams). False only in benches, with
    /// `accept_clear_peers` on both ends, to measure what sessions cost.
    pub sessions: bool,
    pub journal: PathBuf,
    /// SER's RPC door (jsonrpcs FIFO or datagram socket); None in engine
    /// tests, where an in-process applier stands in for SER.
    pub door: Option<PathBuf>,
    pub fifo_reply_dir: PathBuf,
    /// Where the engine binds its datagram reply socket: SER's
    /// runtime_dir (its own sockets and FIFOs live there; /tmp is swept by
    /// tmpfiles cleaners), else `fifo_reply_dir`.
    pub reply_dir: PathBuf,
    /// How many deletions an alias table scan may conclude unconfirmed.
    pub alias_delete_limit: AliasDeleteLimit,
    /// An open alias scan that sent nothing for this long, with the
    /// worker queue empty, is ended ([`ALIAS_SCAN_IDLE_MAX`]).
    pub alias_scan_idle_max: Duration,
    /// How often this node checks that each peer's state equals its own
    /// ([`PEER_CHECK_INTERVAL`]); a peer's checks more frequent than half
    /// of it are ignored.
    pub peer_check_interval: Duration,
    /// SER's database (SQLite, MySQL/MariaDB or PostgreSQL) for the
    /// fallback path and the start-up comparison; None: neither.
    pub database: Option<DbUrl>,
    /// Journal entries older than this are dropped even if a peer has not
    /// acknowledged them; such a peer gets a snapshot.
    pub retention_ms: u64,
    /// At most this many entries are kept (0 = no limit).
    pub retention_records: u64,
    /// usrloc tables replicated.
    pub domains: Vec<String>,
    /// usrloc keeps contacts in memory only (its db_mode 0): every start
    /// restores them from the journal.
    pub usrloc_in_memory: bool,
    /// How often SER's usrloc is checked against the journal's state
    /// ([`crate::proof`]); None: never.
    pub check_interval: Option<Duration>,
    /// A peer's batch stamped more than this ahead of this node's clock is
    /// refused; its origin resends it ([`MAX_CLOCK_SKEW`]).
    pub max_clock_skew: Duration,
}

/// The default bound on clock skew. NTP keeps the clocks of a carrier's
/// nodes within milliseconds of each other (well within a second even
/// across data centres); 5 s leaves room for a node whose NTP is slewing
/// back after a hiccup, and still bounds how long a runaway clock can win
/// the conflicts of its keys: a registration refresh is minutes apart, so
/// changes to one key 5 s apart on two nodes are rare, and their order
/// within that window is anyone's guess anyway.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// The largest bound a node takes: beyond an hour a bound bounds nothing.
pub const MAX_CLOCK_SKEW_LIMIT_MS: u64 = 3_600_000;

/// An alias table scan that would delete more than `max` aliases, and
/// more than `pct` percent of those the journal holds for the table,
/// deletes none: a table read empty or half-empty (a restored or
/// lagging database, a wrong db_url) looks exactly like a mass deletion
/// made behind SER's back, and undoing it on every node is far worse than
/// asking the operator to confirm. Routine changes made by other tools
/// (a few rows) stay far below both bounds. A scan that read no row at
/// all while the journal holds aliases also refuses, whatever the counts:
/// an empty table is the typical sign of a database that is not the
/// one the aliases were written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AliasDeleteLimit {
    pub max: u64,
    pub pct: u64,
}

impl Default for AliasDeleteLimit {
    fn default() -> Self {
        AliasDeleteLimit {
            max: ALIAS_SCAN_MAX_DELETE,
            pct: ALIAS_SCAN_MAX_DELETE_PCT,
        }
    }
}

impl AliasDeleteLimit {
    /// Does deleting `removed` of the `held` aliases, after a scan that
    /// read `present` rows, need the operator's confirmation?
    pub fn refuses(&self, removed: u64, held: u64, present: u64) -> bool {
        if removed == 0 {
            return false;
        }
        if present == 0 {
            return true;
        }
        removed > self.max && removed.saturating_mul(100) > self.pct.saturating_mul(held)
    }
}

/// Defaults of the alias scan's deletion limit: more than 100 aliases and
/// more than 10% of the table.
pub const ALIAS_SCAN_MAX_DELETE: u64 = 100;
pub const ALIAS_SCAN_MAX_DELETE_PCT: u64 = 10;

/// A scan that sent nothing for this long, with the worker queue empty,
/// is over: the scan's process in SER ends every scan it gives up with
/// an abort marker, so this only ends one whose marker could not be
/// queued (a queue full for seconds) or whose process stopped. A live
/// scan never pauses this long: its process reads the whole table
/// before it sends the first row, then waits at most seconds for room
/// in the queue (sersync_alias_scan.c aborts a scan whose read alone
/// took longer than SERSYNC_SCAN_READ_MAX_S, 30 s).
pub const ALIAS_SCAN_IDLE_MAX: Duration = Duration::from_secs(60);

/// Default interval of the peer check: a divergence (a change lost on
/// the way, a journal restored from a backup) is repaired within about
/// this long, for about 3 KiB per peer per check when states are equal.
pub const PEER_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Defaults for retention: a day, or a million changes.
pub const RETENTION_MS: u64 = 24 * 3600 * 1000;
pub const RETENTION_RECORDS: u64 = 1_000_000;

/// The raw modparam strings.
#[derive(Clone, Debug, Default)]
pub struct RawConfig {
    pub node_id: String,
    pub listen: String,
    pub peers: Vec<String>,
    pub secret: Vec<u8>,
    /// A second `secret` line (empty: none), accepted from dialing peers
    /// during a rolling change of the secret.
    pub secret2: Vec<u8>,
    pub accept_clear_peers: bool,
    pub journal: String,
    pub fifo: String,
    pub db_url: String,
    pub fifo_reply_dir: String,
    /// SER's runtime_dir; empty: unknown (the reply socket goes to
    /// fifo_reply_dir).
    pub runtime_dir: String,
    pub domains: String,
    pub retention_secs: u64,
    pub retention_records: u64,
    /// usrloc keeps contacts in memory only (db_mode 0).
    pub usrloc_in_memory: bool,
    /// Alias scan deletion limit (0: the default, 100 and 10%).
    pub alias_scan_max_delete: u64,
    pub alias_scan_max_delete_pct: u64,
    /// Peer check interval in seconds (0: the default, 60 s).
    pub peer_check_secs: u64,
    /// Seconds between checks of SER against the journal (0: none).
    pub check_interval: u64,
    /// Bound on clock skew in milliseconds (0: the default, 5 s).
    pub max_clock_skew_ms: u64,
}

/// Parses "tcp:ip:port" (the "tcp:" prefix may be omitted).
pub fn parse_endpoint(param: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    let rest = match text.split_once(':') {
        Some((proto, rest)) if proto.eq_ignore_ascii_case("tcp") => rest,
        Some((proto, _)) if proto.chars().all(|c| c.is_ascii_alphabetic()) && !proto.is_empty() => {
            return Err(ConfigError::invalid(
                param,
                format!("\"{text}\": only tcp is supported, not {proto}"),
            ))
        }
        _ => text,
    };
    let mut addrs = rest.to_socket_addrs().map_err(|e| {
        ConfigError::invalid(param, format!("\"{text}\" is not tcp:host:port ({e})"))
    })?;
    addrs
        .next()
        .ok_or_else(|| ConfigError::invalid(param, format!("\"{text}\" resolves to no address")))
}

/// SER's database, as the engine reaches it directly (the fallback when
/// SER's RPC door does not answer, the start-up comparison): parsed from
/// `db_url` in the form SER's database modules take.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// db_sqlite: "sqlite:////abs/path" (four slashes for an absolute path).
    Sqlite(PathBuf),
    /// db_mysql or db_postgres over TCP.
    Server(ServerUrl),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// "mysql://": MySQL or MariaDB.
    Mysql,
    /// "postgres://": PostgreSQL.
    Postgres,
}

/// "mysql://user:password@host[:port]/database" or "postgres://...".
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    pub kind: ServerKind,
    pub user: String,
    /// Never shown: not in [`DbUrl`]'s Display or Debug, nor in errors.
    pub password: String,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl ServerKind {
    pub fn scheme(self) -> &'static str {
        match self {
            ServerKind::Mysql => "mysql",
            ServerKind::Postgres => "postgres",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            ServerKind::Mysql => 3306,
            ServerKind::Postgres => 5432,
        }
    }
}

/// The URL without its password, for logs, status and errors.
impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            DbUrl::Server(s) => {
                let host = if s.host.contains(':') {
                    format!("[{}]", s.host)
                } else {
                    s.host.clone()
                };
                write!(
                    f,
                    "{}://{}@{host}:{}/{}",
                    s.kind.scheme(),
                    s.user,
                    s.port,
                    s.database
                )
            }
        }
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

/// Parses `db_url` as SER does (lib/srdb1/db_id.c): "sqlite:////abs/path";
/// "mysql://" or "postgres://" then `user:password@host[:port]/database`,
/// the password running to the last '@' (it may hold '@' and ':'), the
/// host an IPv6 address in brackets or a name, the database name ending
/// at '?'. Ok(None) for the schemes of SER's other database modules
/// (their tables are reached only through SER's own layer).
pub fn parse_db_url(url: &str) -> Result<Option<DbUrl>, ConfigError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::invalid(
            "db_url",
            "not a database URL (scheme://...), e.g. mysql://kamailio:password@localhost/kamailio",
        ));
    };
    let kind = match scheme {
        "sqlite" => {
            let path = rest.strip_prefix('/').unwrap_or(rest);
            if path.is_empty() {
                return Err(ConfigError::invalid(
                    "db_url",
                    "no database file after sqlite://",
                ));
            }
            return Ok(Some(DbUrl::Sqlite(PathBuf::from(path))));
        }
        "mysql" => ServerKind::Mysql,
        "postgres" => ServerKind::Postgres,
        _ => return Ok(None),
    };
    // Never quote `url` itself below: it holds the password.
    let bad = |what: &str| {
        ConfigError::invalid(
            "db_url",
            format!(
                "{scheme}:// URL {what}; the form is {scheme}://user:password@host[:port]/database"
            ),
        )
    };
    let (authority, database) = rest
        .split_once('/')
        .ok_or_else(|| bad("has no /database"))?;
    let database = database.split('?').next().unwrap_or_default();
    if database.is_empty() {
        return Err(bad("has no database name"));
    }
    let (userinfo, hostport) = authority
        .rsplit_once('@')
        .ok_or_else(|| bad("has no user@"))?;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    if user.is_empty() {
        return Err(bad("has no user"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed [host]"))?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        None => kind.default_port(),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| bad("has a port that is not a number from 1 to 65535"))?,
    };
    Ok(Some(DbUrl::Server(ServerUrl {
        kind,
        user: user.to_string(),
        password: password.to_string(),
        host: host.to_string(),
        port,
        database: database.to_string(),
    })))
}

impl RawConfig {
    pub fn check(&self) -> Result<Config, ConfigError> {
        let node_id = self.node_id.trim().to_string();
        if node_id.is_empty() {
            return Err(ConfigError::invalid(
                "node_id",
                "required: a name unique in the cluster, e.g. \"sip1\"",
            ));
        }
        if node_id.len() > NODE_ID_MAX || !node_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "node_id",
                format!(
                    "\"{node_id}\": at most {NODE_ID_MAX} printable ASCII characters, no spaces"
                ),
            ));
        }
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "required, e.g. \"tcp:10.0.0.1:5999\"",
            ));
        }
        let listen = parse_endpoint("listen", &self.listen)?;
        if self.peers.len() > crate::abi::MAX_PEERS {
            return Err(ConfigError::invalid(
                "peer",
                format!("at most {} peers", crate::abi::MAX_PEERS),
            ));
        }
        let mut peers = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let addr = parse_endpoint("peer", p)?;
            if addr == listen {
                return Err(ConfigError::invalid(
                    "peer",
                    format!("\"{p}\" is this node's own listen address"),
                ));
            }
            if peers.iter().any(|q: &PeerAddr| q.addr == addr) {
                return Err(ConfigError::invalid(
                    "peer",
                    format!("\"{p}\" is listed twice"),
                ));
            }
            peers.push(PeerAddr {
                text: p.clone(),
                addr,
            });
        }
        if self.secret.is_empty() {
            return Err(ConfigError::invalid(
                "secret",
                "required: the same secret on every node of the cluster",
            ));
        }
        if self.secret.len() < 8 {
            return Err(ConfigError::invalid(
                "secret",
                "shorter than 8 bytes; use a long random string",
            ));
        }
        if !self.secret2.is_empty() && self.secret2.len() < 8 {
            return Err(ConfigError::invalid(
                "secret",
                "the second secret is shorter than 8 bytes; use a long random string",
            ));
        }
        let mut secrets = vec![self.secret.clone()];
        if !self.secret2.is_empty() && self.secret2 != self.secret {
            secrets.push(self.secret2.clone());
        }
        if self.journal.is_empty() {
            return Err(ConfigError::invalid(
                "journal",
                "required: path of the SQLite journal file",
            ));
        }
        let mut domains = Vec::new();
        for d in self
            .domains
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            if !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ConfigError::invalid(
                    "domains",
                    format!("\"{d}\" is not a usrloc table name"),
                ));
            }
            domains.push(d.to_string());
        }
        if domains.is_empty() {
            domains.push("location".to_string());
        }
        let door = if self.fifo.is_empty() {
            None
        } else {
            Some(PathBuf::from(&self.fifo))
        };
        // SER's other database modules (db_text, db_unixodbc, ...) still
        // serve the module's alias RPCs through SER's own layer; the
        // engine's direct fallback and start-up comparison are off then.
        let database = if self.db_url.is_empty() {
            None
        } else {
            parse_db_url(&self.db_url)?
        };
        let fifo_reply_dir = PathBuf::from(if self.fifo_reply_dir.is_empty() {
            "/tmp/"
        } else {
            &self.fifo_reply_dir
        });
        let reply_dir = if self.runtime_dir.is_empty() {
            fifo_reply_dir.clone()
        } else {
            PathBuf::from(&self.runtime_dir)
        };
        if self.alias_scan_max_delete_pct > 100 {
            return Err(ConfigError::invalid(
                "alias_scan_max_delete_pct",
                format!("{}: a percentage, 1 to 100", self.alias_scan_max_delete_pct),
            ));
        }
        if self.max_clock_skew_ms > MAX_CLOCK_SKEW_LIMIT_MS {
            return Err(ConfigError::invalid(
                "max_clock_skew",
                format!(
                    "{} ms: at most {MAX_CLOCK_SKEW_LIMIT_MS} ms (an hour); NTP keeps nodes \
                     within a second, the default is 5000",
                    self.max_clock_skew_ms
                ),
            ));
        }
        let alias_delete_limit = AliasDeleteLimit {
            max: match self.alias_scan_max_delete {
                0 => ALIAS_SCAN_MAX_DELETE,
                n => n,
            },
            pct: match self.alias_scan_max_delete_pct {
                0 => ALIAS_SCAN_MAX_DELETE_PCT,
                n => n,
            },
        };
        Ok(Config {
            node_id,
            listen,
            peers,
            secret: self.secret.clone(),
            secrets,
            accept_clear_peers: self.accept_clear_peers,
            sessions: true,
            journal: PathBuf::from(&self.journal),
            door,
            fifo_reply_dir,
            reply_dir,
            alias_delete_limit,
            alias_scan_idle_max: ALIAS_SCAN_IDLE_MAX,
            peer_check_interval: match self.peer_check_secs {
                0 => PEER_CHECK_INTERVAL,
                n => Duration::from_secs(n),
            },
            database,
            retention_ms: if self.retention_secs == 0 {
                RETENTION_MS
            } else {
                self.retention_secs.saturating_mul(1000)
            },
            retention_records: if self.retention_records == 0 {
                RETENTION_RECORDS
            } else {
                self.retention_records
            },
            domains,
            usrloc_in_memory: self.usrloc_in_memory,
            check_interval: (self.check_interval > 0)
                .then(|| Duration::from_secs(self.check_interval)),
            max_clock_skew: match self.max_clock_skew_ms {
                0 => MAX_CLOCK_SKEW,
                n => Duration::from_millis(n),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> RawConfig {
        RawConfig {
            node_id: "sip1".into(),
            listen: "tcp:127.0.0.1:5999".into(),
            peers: vec!["tcp:127.0.0.2:5999".into()],
            secret: b"0123456789".to_vec(),
            journal: "/tmp/j.db".into(),
            fifo: "/run/kamailio/kamailio_rpc.fifo".into(),
            db_url: "sqlite:////var/lib/kamailio/kamailio.db".into(),
            fifo_reply_dir: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_the_documented_form() {
        let c = good().check().unwrap();
        assert_eq!(c.listen, "127.0.0.1:5999".parse().unwrap());
        assert_eq!(
            c.database.unwrap(),
            DbUrl::Sqlite(PathBuf::from("/var/lib/kamailio/kamailio.db"))
        );
        assert_eq!(c.fifo_reply_dir, PathBuf::from("/tmp/"));
        assert_eq!(c.reply_dir, PathBuf::from("/tmp/"));
        assert_eq!(c.alias_delete_limit, AliasDeleteLimit { max: 100, pct: 10 });
        let mut r = good();
        r.runtime_dir = "/run/kamailio".into();
        assert_eq!(r.check().unwrap().reply_dir, PathBuf::from("/run/kamailio"));
    }

    #[test]
    fn alias_delete_limit_needs_both_bounds_or_an_empty_read() {
        let l = AliasDeleteLimit::default();
        assert!(!l.refuses(0, 1000, 0), "nothing to delete");
        assert!(!l.refuses(100, 1000, 900), "100 is not more than 100");
        assert!(l.refuses(101, 1000, 899), "101 of 1000");
        assert!(!l.refuses(101, 1010, 909), "exactly 10%");
        assert!(!l.refuses(150, 20000, 19850), "150 of 20000");
        assert!(!l.refuses(20, 50, 30), "a small table, a few rows");
        assert!(l.refuses(20, 50, 0), "a small table read empty");
        let mut r = good();
        r.alias_scan_max_delete_pct = 101;
        assert!(r.check().is_err());
    }

    #[test]
    fn names_the_bad_parameter() {
        let mut c = good();
        c.listen = "udp:1.2.3.4:5".into();
        assert!(c.check().unwrap_err().to_string().contains("\"listen\""));
        let mut c = good();
        c.peers.push("tcp:127.0.0.1:5999".into());
        assert!(c.check().unwrap_err().to_string().contains("own listen"));
        let mut c = good();
        c.secret.clear();
        assert!(c.check().unwrap_err().to_string().contains("secret"));
        let mut c = good();
        c.db_url = "text:///etc/kamailio/dbtext".into();
        assert!(
            c.check().unwrap().database.is_none(),
            "SER's other database modules: no direct fallback"
        );
        c.db_url = "mysql://kamailio:s3cret@localhost".into();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("no /database") && !e.contains("s3cret"), "{e}");
        c.db_url = "sqlite://".into();
        assert!(c.check().is_err());
        let mut c = good();
        c.node_id = "has space".into();
        assert!(c.check().is_err());
    }

    #[test]
    fn server_urls_parse_as_ser_parses_them() {
        let server = |url: &str| match parse_db_url(url).unwrap() {
            Some(DbUrl::Server(s)) => s,
            other => panic!("{url}: {other:?}"),
        };
        let s = server("mysql://kamailio:kamailiorw@localhost/kamailio");
        assert_eq!(
            (
                s.kind,
                &*s.user,
                &*s.password,
                &*s.host,
                s.port,
                &*s.database
            ),
            (
                ServerKind::Mysql,
                "kamailio",
                "kamailiorw",
                "localhost",
                3306,
                "kamailio"
            )
        );
        // The password runs to the last '@'; the database name ends at '?'.
        let s = server("postgres://ser:p@ss:w@rd@10.0.0.5:6432/ser?sslmode=disable");
        assert_eq!(
            (s.kind, &*s.password, &*s.host, s.port, &*s.database),
            (ServerKind::Postgres, "p@ss:w@rd", "10.0.0.5", 6432, "ser")
        );
        let s = server("postgres://ser:pw@[2001:db8::1]:5433/ser");
        assert_eq!((&*s.host, s.port), ("2001:db8::1", 5433));
        let url = DbUrl::Server(s);
        assert_eq!(url.to_string(), "postgres://ser@[2001:db8::1]:5433/ser");
        assert!(!format!("{url:?}").contains("pw"));
        for bad in [
            "mysql://u:secretpw@h:99999/db",
            "mysql://u:secretpw@/db",
            "mysql://h/db",
            "postgres://u:secretpw@h:5432/",
        ] {
            let e = parse_db_url(bad).unwrap_err().to_string();
            assert!(
                e.contains("db_url") && !e.contains("secretpw"),
                "{bad}: {e}"
            );
        }
    }
}
