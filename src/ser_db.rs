//! SER's database as the engine reaches it directly, without SER: the
//! fallback that writes changes when SER's RPC door does not answer
//! ([`crate::apply::db`]) and the start-up comparison ([`crate::seed`]).
//! One connection to SQLite, MySQL/MariaDB or PostgreSQL, chosen by
//! `db_url`'s scheme as SER chooses its database module. Each runs in the
//! sersync process's own threads with a native Rust client (rusqlite,
//! `mysql`, `postgres`): nothing here calls SER's C database layer.
//!
//! Statements are written once, with `?` for each value; each backend
//! binds SER's values in its own types, and keeps DATETIME columns the way
//! Kamailio's driver for it does (db_sqlite: Julian day numbers; db_mysql,
//! db_postgres: local time text, lib/srdb1/db_ut.c), so that usrloc reads
//! our rows as it reads its own.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::config::{DbUrl, ServerKind, ServerUrl};

/// How long a connection attempt may take: the start-up comparison waits
/// for it before the engine starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may wait (a lock, a busy server) before the
/// batch counts as failed and is retried.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Debian's MySQL/MariaDB socket: what SER's db_mysql (libmysqlclient)
/// uses for host "localhost".
const MYSQL_LOCAL_SOCKET: &str = "/run/mysqld/mysqld.sock";

/// Why a statement failed.
#[derive(Debug)]
pub enum Error {
    /// The record's own problem (a table this database lacks, a bad name,
    /// a value it refuses): the records behind it can still be written.
    Record(String),
    /// The database's (unreachable, locked, full, a lost connection): the
    /// batch is retried.
    Database(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Record(e) | Error::Database(e) => f.write_str(e),
        }
    }
}

/// A value bound to a `?`, in SER's terms.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// SER's bytes (not promised to be UTF-8); None: NULL.
    Text(Option<&'a [u8]>),
    Int(i64),
    /// NULL in an integer column.
    NullInt,
    Real(f64),
    /// Seconds since the epoch, for a DATETIME column.
    Time(i64),
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
}

impl Cell {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Cell::Null => Vec::new(),
            Cell::Text(b) => b.clone(),
            Cell::Int(n) => n.to_string().into_bytes(),
            Cell::Real(x) => x.to_string().into_bytes(),
        }
    }

    pub fn int(&self) -> Result<i64, String> {
        match self {
            Cell::Null => Ok(0),
            Cell::Int(n) => Ok(*n),
            Cell::Real(x) => Ok(*x as i64),
            Cell::Text(b) => number(b),
        }
    }

    pub fn real(&self) -> Result<f64, String> {
        match self {
            Cell::Real(x) => Ok(*x),
            Cell::Int(n) => Ok(*n as f64),
            Cell::Null => Ok(0.0),
            Cell::Text(b) => number(b),
        }
    }

    /// A column selected with [`Conn::time_column`]: seconds since the
    /// epoch (0 for NULL).
    pub fn time(&self) -> Result<i64, String> {
        match self {
            Cell::Null => Ok(0),
            Cell::Int(n) => Ok(*n),
            Cell::Real(x) => Ok(*x as i64),
            Cell::Text(b) => std::str::from_utf8(b)
                .ok()
                .and_then(crate::os::parse_local_datetime)
                .ok_or_else(|| format!("{:?} is not a time", String::from_utf8_lossy(b))),
        }
    }
}

/// A number a server sent as text (MySQL's and PostgreSQL's text results).
fn number<T: std::str::FromStr>(b: &[u8]) -> Result<T, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{:?} is not a number", String::from_utf8_lossy(b)))
}

/// Kamailio's db_sqlite stores DATETIME columns as Julian day numbers
/// (and reads them back as numbers): so must we, or usrloc loads our rows
/// as long expired. It writes t - 0.5 s and reads back with + 0.5 s and a
/// truncation (dbase.c); the exact t written here reads back as t + 0.5
/// there, t whatever the rounding of the double.
fn julian_day(t: i64) -> f64 {
    t as f64 / 86400.0 + 2_440_587.5
}

/// SER's bytes bound as TEXT unchanged: its SQLite driver stores what it
/// is given.
struct SqliteText<'a>(&'a [u8]);

impl rusqlite::ToSql for SqliteText<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Mysql(mysql::Conn),
    /// With the statements prepared so far (one round trip each saved).
    Postgres(Box<postgres::Client>, HashMap<String, postgres::Statement>),
}

/// One open connection to SER's database.
pub struct Conn {
    backend: Backend,
}

impl Conn {
    /// Opens SER's database. SQLite: the file must exist (`read_only`:
    /// opened so). A server: connects, within [`CONNECT_TIMEOUT`]; the
    /// error never shows the password (callers name the server with
    /// [`DbUrl`]'s Display, which leaves it out).
    pub fn open(url: &DbUrl, read_only: bool) -> Result<Conn, Error> {
        let backend = match url {
            DbUrl::Sqlite(path) => {
                use rusqlite::OpenFlags;
                let flags = if read_only {
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                } else {
                    OpenFlags::SQLITE_OPEN_READ_WRITE
                };
                let conn = rusqlite::Connection::open_with_flags(path, flags)
                    .map_err(|e| Error::Database(e.to_string()))?;
                conn.busy_timeout(Duration::from_secs(5))
                    .map_err(|e| Error::Database(e.to_string()))?;
                Backend::Sqlite(conn)
            }
            DbUrl::Server(s) => match s.kind {
                ServerKind::Mysql => Backend::Mysql(connect_mysql(s)?),
                ServerKind::Postgres => {
                    Backend::Postgres(Box::new(connect_postgres(s)?), HashMap::new())
                }
            },
        };
        Ok(Conn { backend })
    }

    /// `name` quoted as an identifier (MySQL reserves `partition`, a
    /// column of usrloc's table).
    pub fn ident(&self, name: &str) -> String {
        match self.backend {
            Backend::Mysql(_) => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }

    /// An expression selecting DATETIME column `col` so that
    /// [`Cell::time`] reads it as Kamailio's driver does.
    pub fn time_column(&self, col: &str) -> String {
        match self.backend {
            // db_sqlite's own reading of its Julian day numbers, the same
            // double arithmetic (dbase.c, sqlite_to_timet): it writes half
            // a second early, and strftime('%s') would read that as the
            // second before. Text (a row another tool wrote) as SQLite
            // reads it.
            Backend::Sqlite(_) => format!(
                "CASE WHEN typeof({col}) IN ('real', 'integer') \
                 THEN CAST(86400.0 * ({col} - 2440587.5) + 0.5 AS INTEGER) \
                 ELSE CAST(strftime('%s', {col}) AS INTEGER) END"
            ),
            Backend::Mysql(_) => format!("DATE_FORMAT({col}, '%Y-%m-%d %H:%i:%s')"),
            Backend::Postgres(..) => format!("to_char({col}, 'YYYY-MM-DD HH24:MI:SS')"),
        }
    }

    pub fn begin(&mut self) -> Result<(), Error> {
        self.batch(match self.backend {
            Backend::Mysql(_) => "START TRANSACTION",
            _ => "BEGIN",
        })
    }

    pub fn commit(&mut self) -> Result<(), Error> {
        self.batch("COMMIT")
            .map_err(|e| Error::Database(e.to_string()))
    }

    /// Ends the open transaction, writing nothing of it. A failure leaves
    /// the connection unusable: the caller drops it.
    pub fn rollback(&mut self) -> Result<(), Error> {
        self.batch("ROLLBACK")
            .map_err(|e| Error::Database(e.to_string()))
    }

    fn batch(&mut self, sql: &str) -> Result<(), Error> {
        match &mut self.backend {
            Backend::Sqlite(c) => c.execute_batch(sql).map_err(sqlite_error),
            Backend::Mysql(c) => {
                use mysql::prelude::Queryable;
                c.query_drop(sql).map_err(mysql_error)
            }
            Backend::Postgres(c, _) => c.batch_execute(sql).map_err(postgres_error),
        }
    }

    /// Runs `sql`, whose `?`s take `values` in order; the rows changed.
    pub fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, Error> {
        match &mut self.backend {
            Backend::Sqlite(c) => {
                let params = sqlite_params(values);
                let refs: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.as_ref()).collect();
                c.execute(sql, refs.as_slice())
                    .map(|n| n as u64)
                    .map_err(sqlite_error)
            }
            Backend::Mysql(c) => {
                use mysql::prelude::Queryable;
                let params = mysql_params(values)?;
                c.exec_drop(sql, mysql::Params::Positional(params))
                    .map_err(mysql_error)?;
                Ok(c.affected_rows())
            }
            Backend::Postgres(c, prepared) => {
                let sql = postgres_sql(sql, values);
                let params = postgres_params(values)?;
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p.as_ref()).collect();
                let stmt = postgres_prepare(c, prepared, &sql)?;
                c.execute(&stmt, &refs).map_err(postgres_error)
            }
        }
    }

    /// Every row `sql` (without values) selects, each column as a [`Cell`].
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Cell>>, Error> {
        match &mut self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare(sql).map_err(sqlite_error)?;
                let n = stmt.column_count();
                let rows = stmt
                    .query_map([], |r| {
                        (0..n)
                            .map(|i| {
                                Ok(match r.get_ref(i)? {
                                    ValueRef::Null => Cell::Null,
                                    ValueRef::Integer(n) => Cell::Int(n),
                                    ValueRef::Real(x) => Cell::Real(x),
                                    ValueRef::Text(b) | ValueRef::Blob(b) => Cell::Text(b.to_vec()),
                                })
                            })
                            .collect::<rusqlite::Result<Vec<Cell>>>()
                    })
                    .map_err(sqlite_error)?;
                rows.collect::<rusqlite::Result<_>>().map_err(sqlite_error)
            }
            Backend::Mysql(c) => {
                use mysql::prelude::Queryable;
                // The binary protocol: values come typed.
                let rows: Vec<mysql::Row> = c.exec(sql, ()).map_err(mysql_error)?;
                Ok(rows
                    .into_iter()
                    .map(|r| r.unwrap().into_iter().map(mysql_cell).collect())
                    .collect())
            }
            Backend::Postgres(c, _) => {
                let rows = c.query(sql, &[]).map_err(postgres_error)?;
                rows.iter()
                    .map(|r| (0..r.len()).map(|i| postgres_cell(r, i)).collect())
                    .collect()
            }
        }
    }
}

fn sqlite_error(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{ConstraintViolation, TooBig, TypeMismatch};
    let record = match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            matches!(f.code, ConstraintViolation | TooBig | TypeMismatch)
                || msg.as_deref().is_some_and(|m| {
                    m.starts_with("no such table") || m.contains("no column named")
                })
        }
        _ => false,
    };
    if record {
        Error::Record(e.to_string())
    } else {
        Error::Database(e.to_string())
    }
}

fn sqlite_params<'a>(values: &[Value<'a>]) -> Vec<Box<dyn rusqlite::ToSql + 'a>> {
    values
        .iter()
        .map(|v| -> Box<dyn rusqlite::ToSql + 'a> {
            match *v {
                Value::Text(Some(b)) => Box::new(SqliteText(b)),
                Value::Text(None) => Box::new(rusqlite::types::Null),
                Value::Int(n) => Box::new(n),
                Value::NullInt => Box::new(rusqlite::types::Null),
                Value::Real(x) => Box::new(x),
                Value::Time(t) => Box::new(julian_day(t)),
            }
        })
        .collect()
}

/// A DATETIME value as db_mysql and db_postgres write it.
fn local_time(t: i64) -> Result<String, Error> {
    crate::os::local_datetime(t)
        .ok_or_else(|| Error::Record(format!("time {t} is out of the C library's range")))
}

// ---------------------------------------------------------------------------
// MySQL / MariaDB

fn connect_mysql(s: &ServerUrl) -> Result<mysql::Conn, Error> {
    let mut opts = mysql::OptsBuilder::new()
        .user(Some(&s.user))
        .pass(Some(&s.password))
        .db_name(Some(&s.database))
        .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
        .read_timeout(Some(STATEMENT_TIMEOUT))
        .write_timeout(Some(STATEMENT_TIMEOUT))
        .prefer_socket(false);
    opts = if s.host == "localhost" && std::path::Path::new(MYSQL_LOCAL_SOCKET).exists() {
        opts.socket(Some(MYSQL_LOCAL_SOCKET))
    } else {
        opts.ip_or_hostname(Some(&s.host)).tcp_port(s.port)
    };
    mysql::Conn::new(opts).map_err(|e| {
        let hint = match &e {
            mysql::Error::MySqlError(m) if m.code == 1045 || m.code == 1044 => {
                " (check the user and password of db_url)"
            }
            _ => "",
        };
        Error::Database(format!("cannot connect: {e}{hint}"))
    })
}

/// Server errors that are the record's own: the statement, not the
/// server, failed (MariaDB's error codes).
const MYSQL_RECORD_ERRORS: &[u16] = &[
    1048, // ER_BAD_NULL_ERROR
    1054, // ER_BAD_FIELD_ERROR: a column the table lacks
    1062, // ER_DUP_ENTRY
    1146, // ER_NO_SUCH_TABLE
    1264, // ER_WARN_DATA_OUT_OF_RANGE
    1265, // WARN_DATA_TRUNCATED
    1292, // ER_TRUNCATED_WRONG_VALUE (a bad DATETIME)
    1300, // ER_INVALID_CHARACTER_STRING
    1366, // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD (bytes not in the charset)
    1406, // ER_DATA_TOO_LONG
];

fn mysql_error(e: mysql::Error) -> Error {
    match &e {
        mysql::Error::MySqlError(m) if MYSQL_RECORD_ERRORS.contains(&m.code) => {
            Error::Record(e.to_string())
        }
        _ => Error::Database(e.to_string()),
    }
}

fn mysql_params(values: &[Value<'_>]) -> Result<Vec<mysql::Value>, Error> {
    values
        .iter()
        .map(|v| {
            Ok(match *v {
                Value::Text(Some(b)) => mysql::Value::Bytes(b.to_vec()),
                Value::Text(None) => mysql::Value::NULL,
                Value::Int(n) => mysql::Value::Int(n),
                Value::NullInt => mysql::Value::NULL,
                Value::Real(x) => mysql::Value::Double(x),
                Value::Time(t) => mysql::Value::Bytes(local_time(t)?.into_bytes()),
            })
        })
        .collect()
}

fn mysql_cell(v: mysql::Value) -> Cell {
    match v {
        mysql::Value::NULL => Cell::Null,
        mysql::Value::Bytes(b) => Cell::Text(b),
        mysql::Value::Int(n) => Cell::Int(n),
        mysql::Value::UInt(n) => Cell::Int(n as i64),
        mysql::Value::Float(x) => Cell::Real(x as f64),
        mysql::Value::Double(x) => Cell::Real(x),
        mysql::Value::Date(y, mo, d, h, mi, s, _) => {
            Cell::Text(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}").into_bytes())
        }
        other => Cell::Text(other.as_sql(true).into_bytes()),
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

fn connect_postgres(s: &ServerUrl) -> Result<postgres::Client, Error> {
    let mut cfg = postgres::Config::new();
    cfg.host(&s.host)
        .port(s.port)
        .user(&s.user)
        .password(&s.password)
        .dbname(&s.database)
        .application_name("sersync")
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .options(&format!(
            "-c statement_timeout={}",
            STATEMENT_TIMEOUT.as_millis()
        ));
    // No TLS: SER's db_postgres is normally reached on loopback or a
    // trusted network too (README, limits).
    cfg.connect(postgres::NoTls).map_err(|e| {
        let auth = e
            .code()
            .is_some_and(|c| c.code() == "28P01" || c.code() == "28000");
        Error::Database(format!(
            "cannot connect: {}{}",
            postgres_text(&e),
            if auth {
                " (check the user and password of db_url)"
            } else {
                ""
            }
        ))
    })
}

fn postgres_error(e: postgres::Error) -> Error {
    // Class 22 (data exception: too long, bad encoding, out of range), 23
    // (integrity constraint), an undefined table or column: the record's.
    let record = e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("22") || c.starts_with("23") || c == "42P01" || c == "42703"
    });
    let text = postgres_text(&e);
    if record {
        Error::Record(text)
    } else {
        Error::Database(text)
    }
}

/// The server's own message, or the client's with its cause ("error
/// connecting to server: Connection refused").
fn postgres_text(e: &postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{}: {}", db.severity(), db.message()),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

/// `sql` with PostgreSQL's numbered placeholders, each cast from the type
/// it is bound in (so a column of another integer or text type takes it,
/// as an assignment).
fn postgres_sql(sql: &str, values: &[Value<'_>]) -> String {
    let mut out = String::with_capacity(sql.len() + values.len() * 12);
    let mut n = 0;
    for ch in sql.chars() {
        if ch != '?' {
            out.push(ch);
            continue;
        }
        n += 1;
        let cast = match values.get(n - 1) {
            Some(Value::Text(_)) | None => "text",
            Some(Value::Int(_) | Value::NullInt) => "int8",
            Some(Value::Real(_)) => "float8",
            Some(Value::Time(_)) => "text::timestamp",
        };
        out.push_str(&format!("${n}::{cast}"));
    }
    out
}

fn postgres_params(
    values: &[Value<'_>],
) -> Result<Vec<Box<dyn postgres::types::ToSql + Sync>>, Error> {
    values
        .iter()
        .map(
            |v| -> Result<Box<dyn postgres::types::ToSql + Sync>, Error> {
                Ok(match *v {
                    // The client speaks UTF-8 to the server, which converts
                    // to the database's encoding.
                    Value::Text(Some(b)) => Box::new(
                        String::from_utf8(b.to_vec())
                            .map_err(|_| Error::Record("text that is not UTF-8".into()))?,
                    ),
                    Value::Text(None) => Box::new(None::<String>),
                    Value::Int(n) => Box::new(n),
                    Value::NullInt => Box::new(None::<i64>),
                    Value::Real(x) => Box::new(x),
                    Value::Time(t) => Box::new(local_time(t)?),
                })
            },
        )
        .collect()
}

fn postgres_prepare(
    c: &mut postgres::Client,
    prepared: &mut HashMap<String, postgres::Statement>,
    sql: &str,
) -> Result<postgres::Statement, Error> {
    if let Some(s) = prepared.get(sql) {
        return Ok(s.clone());
    }
    let s = c.prepare(sql).map_err(postgres_error)?;
    // usrloc tables are few; bound anyway.
    if prepared.len() >= 64 {
        prepared.clear();
    }
    prepared.insert(sql.to_string(), s.clone());
    Ok(s)
}

fn postgres_cell(r: &postgres::Row, i: usize) -> Result<Cell, Error> {
    use postgres::types::Type;
    let ty = r.columns()[i].type_().clone();
    let get = |e: postgres::Error| Error::Database(format!("column {i}: {e}"));
    let cell = if ty == Type::INT2 {
        r.try_get::<_, Option<i16>>(i)
            .map_err(get)?
            .map(|n| Cell::Int(n.into()))
    } else if ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i)
            .map_err(get)?
            .map(|n| Cell::Int(n.into()))
    } else if ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i).map_err(get)?.map(Cell::Int)
    } else if ty == Type::FLOAT4 {
        r.try_get::<_, Option<f32>>(i)
            .map_err(get)?
            .map(|x| Cell::Real(x.into()))
    } else if ty == Type::FLOAT8 {
        r.try_get::<_, Option<f64>>(i).map_err(get)?.map(Cell::Real)
    } else {
        r.try_get::<_, Option<&str>>(i)
            .map_err(get)?
            .map(|s| Cell::Text(s.as_bytes().to_vec()))
    };
    Ok(cell.unwrap_or(Cell::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_and_cast() {
        let v = [
            Value::Text(None),
            Value::Int(1),
            Value::Real(0.5),
            Value::Time(0),
        ];
        assert_eq!(
            postgres_sql("INSERT INTO t VALUES (?, ?, ?, ?)", &v),
            "INSERT INTO t VALUES ($1::text, $2::int8, $3::float8, $4::text::timestamp)"
        );
    }

    /// A time db_sqlite wrote (half a second early) reads as the second
    /// Kamailio loads, and so does one written here.
    #[test]
    fn sqlite_times_read_as_db_sqlite_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (id INTEGER, at DATETIME)")
            .unwrap();
        let mut c = Conn::open(&DbUrl::Sqlite(path), false).unwrap();
        let t = 1_796_188_338i64;
        let kamailio = (t as f64 - 0.5) / 86400.0 + 2_440_587.5;
        c.execute("INSERT INTO t VALUES (1, ?)", &[Value::Real(kamailio)])
            .unwrap();
        c.execute("INSERT INTO t VALUES (2, ?)", &[Value::Time(t)])
            .unwrap();
        c.execute(
            "INSERT INTO t VALUES (3, ?)",
            &[Value::Text(Some(b"2026-12-02 05:12:18"))],
        )
        .unwrap();
        let rows = c
            .query(&format!(
                "SELECT {} FROM t ORDER BY id",
                c.time_column("at")
            ))
            .unwrap();
        let got: Vec<i64> = rows.iter().map(|r| r[0].time().unwrap()).collect();
        assert_eq!(got, [t, t, t]);
    }

    #[test]
    fn cells_read_as_kamailio_reads_them() {
        assert_eq!(Cell::Int(1_700_000_000).time().unwrap(), 1_700_000_000);
        let text = crate::os::local_datetime(1_700_000_000).unwrap();
        assert_eq!(Cell::Text(text.into_bytes()).time().unwrap(), 1_700_000_000);
        assert_eq!(Cell::Text(b"0.5".to_vec()).real().unwrap(), 0.5);
        assert!(Cell::Text(b"x".to_vec()).int().is_err());
        assert_eq!(Cell::Null.bytes(), b"");
    }

    #[test]
    fn a_server_that_does_not_answer_is_an_error_without_the_password() {
        // Nothing listens on port 9 of loopback (discard, never served here).
        for kind in [ServerKind::Mysql, ServerKind::Postgres] {
            let url = DbUrl::Server(ServerUrl {
                kind,
                user: "kamailio".into(),
                password: "s3cr3t-pw".into(),
                host: "127.0.0.1".into(),
                port: 9,
                database: "kamailio".into(),
            });
            let Err(Error::Database(e)) = Conn::open(&url, false) else {
                panic!("{kind:?}: connected to nothing");
            };
            assert!(e.starts_with("cannot connect: "), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
            assert_eq!(
                url.to_string(),
                format!("{}://kamailio@127.0.0.1:9/kamailio", kind.scheme())
            );
        }
    }
}
