//! The database path: writes changes straight into SER's SQLite database
//! (usrloc's table per domain, in the schema Kamailio 5.6 ships), used when
//! SER's RPC door does not answer. usrloc reads these rows when SER next
//! loads the table (db_mode 1, 2 or 3); with db_mode 3 they are live at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, ToSql};

use super::Sink;
use crate::error::ApplyError;
use crate::record::{Alias, Contact, Op, Record};

pub struct Database {
    path: PathBuf,
    conn: Option<Connection>,
}

/// Kamailio 5.6's SQLite driver stores DATETIME columns as Julian day
/// numbers (and reads them back as numbers): so must we, or usrloc loads
/// our rows as long expired.
fn julian_day(t: i64) -> f64 {
    t as f64 / 86400.0 + 2_440_587.5
}

/// SER's bytes bound as TEXT unchanged: SER does not promise UTF-8 (a
/// Latin-1 User-Agent), and its SQLite driver stores what it is given.
#[derive(Clone, Copy)]
struct Text<'a>(&'a [u8]);

impl ToSql for Text<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

fn text(b: &[u8]) -> Text<'_> {
    Text(b)
}

/// Why one record was not written.
#[derive(Debug)]
enum WriteError {
    /// The record's own problem (a table this database lacks, a bad name,
    /// a value it refuses): the records behind it can still be written.
    Record(String),
    /// The database's (locked, I/O, full): the batch is retried.
    Database(String),
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
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
            WriteError::Record(e.to_string())
        } else {
            WriteError::Database(e.to_string())
        }
    }
}

/// A usrloc table name must be a plain SQL identifier.
fn table_name(domain: &[u8]) -> Result<&str, WriteError> {
    let s = std::str::from_utf8(domain)
        .map_err(|_| WriteError::Record("table name is not UTF-8".to_string()))?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(WriteError::Record(format!("\"{s}\" is not a table name")));
    }
    Ok(s)
}

/// usrloc keeps "user@domain" split when use_domain is on; without the
/// module's setting at hand, split when the AOR has a domain.
fn split_aor(aor: &[u8]) -> (Text<'_>, Option<Text<'_>>) {
    match aor.iter().position(|&b| b == b'@') {
        Some(i) => (Text(&aor[..i]), Some(Text(&aor[i + 1..]))),
        None => (Text(aor), None),
    }
}

impl Database {
    pub fn new(path: &Path) -> Database {
        Database {
            path: path.to_path_buf(),
            conn: None,
        }
    }

    fn err(&self, detail: impl std::fmt::Display) -> ApplyError {
        ApplyError::Database {
            url: format!("sqlite://{}", self.path.display()),
            detail: detail.to_string(),
        }
    }

    fn write(tx: &rusqlite::Transaction, op: Op, c: &Contact) -> Result<(), WriteError> {
        let table = table_name(&c.domain)?;
        let (user, domain) = split_aor(&c.aor);
        let contact = text(&c.contact);
        let ruid = text(&c.ruid);
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE (username = ?1 AND coalesce(domain, '') = coalesce(?2, '') AND contact = ?3)
                    OR (?4 <> '' AND ruid = ?4)"
            ),
            params![user, domain, contact, ruid],
        )
        ?;
        if op == Op::Delete {
            return Ok(());
        }
        let q = if c.q < 0 { -1.0 } else { c.q as f64 / 1000.0 };
        tx.execute(
            &format!(
                "INSERT INTO {table} (ruid, username, domain, contact, received, path, expires, q, callid,
                    cseq, last_modified, flags, cflags, user_agent, socket, methods, instance, reg_id,
                    server_id, connection_id, keepalive, partition)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                    ?19, -1, 0, 0)"
            ),
            params![
                ruid,
                user,
                domain,
                contact,
                (!c.received.is_empty()).then(|| text(&c.received)),
                (!c.path.is_empty()).then(|| text(&c.path)),
                julian_day(c.expires),
                q,
                text(&c.callid),
                c.cseq,
                julian_day(c.last_modified),
                c.flags,
                c.cflags,
                text(&c.user_agent),
                (!c.socket.is_empty()).then(|| text(&c.socket)),
                c.methods,
                (!c.instance.is_empty()).then(|| text(&c.instance)),
                c.reg_id,
                c.server_id,
            ],
        )
        ?;
        Ok(())
    }
}

impl Database {
    /// alias_db's table: one row per mapping; no unique key, so delete
    /// first to keep upserts idempotent.
    fn write_alias(tx: &rusqlite::Transaction, op: Op, a: &Alias) -> Result<(), WriteError> {
        let table = table_name(&a.table)?;
        let row = params![
            text(&a.alias_username),
            text(&a.alias_domain),
            text(&a.username),
            text(&a.domain)
        ];
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE alias_username = ?1 AND alias_domain = ?2
                    AND username = ?3 AND domain = ?4"
            ),
            row,
        )?;
        if op == Op::Upsert {
            tx.execute(
                &format!("INSERT INTO {table} (alias_username, alias_domain, username, domain) VALUES (?1, ?2, ?3, ?4)"),
                row,
            )
            ?;
        }
        Ok(())
    }
}

impl Sink for Database {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        if self.conn.is_none() {
            let conn = Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            )
            .map_err(|e| self.err(e))?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(|e| self.err(e))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("opened above");
        // Ok(None): all written; Ok(Some((i, why))): those before record
        // i written, record i refused.
        let result = (|| {
            let tx = conn.transaction().map_err(|e| e.to_string())?;
            let mut refused = None;
            for (i, (_, r)) in records.iter().enumerate() {
                let written = match r {
                    Record::Contact { op, contact } => Self::write(&tx, *op, contact),
                    Record::Alias { op, alias } => Self::write_alias(&tx, *op, alias),
                };
                match written {
                    Ok(()) => {}
                    Err(WriteError::Record(why)) => {
                        refused = Some((i, why));
                        break;
                    }
                    Err(WriteError::Database(e)) => return Err(e),
                }
            }
            tx.commit().map_err(|e| e.to_string())?;
            Ok(refused)
        })();
        match result {
            Ok(None) => Ok(()),
            Ok(Some((index, reason))) => Err(ApplyError::Record {
                index,
                refused: true,
                reason: format!("SER's database refused it: {reason}"),
            }),
            Err(e) => {
                self.conn = None;
                Err(self.err(e))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SCHEMA: &str = "CREATE TABLE location (id INTEGER PRIMARY KEY NOT NULL, ruid VARCHAR(64) DEFAULT '' NOT NULL,
        username VARCHAR(64) DEFAULT '' NOT NULL, domain VARCHAR(64) DEFAULT NULL,
        contact VARCHAR(512) DEFAULT '' NOT NULL, received VARCHAR(128) DEFAULT NULL,
        path VARCHAR(512) DEFAULT NULL, expires TIMESTAMP WITHOUT TIME ZONE DEFAULT '2030-05-28 21:32:15' NOT NULL,
        q REAL DEFAULT 1.0 NOT NULL, callid VARCHAR(255) DEFAULT 'Default-Call-ID' NOT NULL,
        cseq INTEGER DEFAULT 1 NOT NULL, last_modified TIMESTAMP WITHOUT TIME ZONE DEFAULT '2000-01-01 00:00:01' NOT NULL,
        flags INTEGER DEFAULT 0 NOT NULL, cflags INTEGER DEFAULT 0 NOT NULL,
        user_agent VARCHAR(255) DEFAULT '' NOT NULL, socket VARCHAR(64) DEFAULT NULL,
        methods INTEGER DEFAULT NULL, instance VARCHAR(255) DEFAULT NULL, reg_id INTEGER DEFAULT 0 NOT NULL,
        server_id INTEGER DEFAULT 0 NOT NULL, connection_id INTEGER DEFAULT 0 NOT NULL,
        keepalive INTEGER DEFAULT 0 NOT NULL, partition INTEGER DEFAULT 0 NOT NULL,
        CONSTRAINT location_ruid_idx UNIQUE (ruid));";

    fn contact(op: Op, cseq: i32) -> Record {
        Record::Contact {
            op,
            contact: Contact {
                domain: b"location".to_vec(),
                aor: b"alice".to_vec(),
                contact: b"sip:alice@10.1.1.1:5060".to_vec(),
                ruid: b"uloc-1".to_vec(),
                callid: b"cid".to_vec(),
                cseq,
                q: 500,
                expires: 2_000_000_000,
                ..Default::default()
            },
        }
    }

    #[test]
    fn upsert_replaces_and_delete_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
        let mut db = Database::new(&path);
        db.apply(&[(1, contact(Op::Upsert, 1))]).unwrap();
        db.apply(&[(1, contact(Op::Upsert, 2))]).unwrap();
        let conn = Connection::open(&path).unwrap();
        let (n, cseq, q, expires): (i64, i64, f64, i64) = conn
            .query_row(
                "SELECT count(*), max(cseq), max(q), CAST(strftime('%s', max(expires)) AS INTEGER) FROM location",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!((n, cseq, q, expires), (1, 2, 0.5, 2_000_000_000));
        let kind: String = conn
            .query_row("SELECT typeof(expires) FROM location", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            kind, "real",
            "a Julian day number, as Kamailio's db_sqlite writes it"
        );
        db.apply(&[(1, contact(Op::Delete, 3))]).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM location", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    /// A record the database cannot take (a usrloc table it lacks) is
    /// refused alone: the records before it are written, the error names
    /// it, and those behind it are written on the next call.
    #[test]
    fn a_record_for_a_missing_table_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
        let mut db = Database::new(&path);
        let mut other = contact(Op::Upsert, 1);
        if let Record::Contact { contact, .. } = &mut other {
            contact.domain = b"aliases".to_vec();
        }
        let mut later = contact(Op::Upsert, 2);
        if let Record::Contact { contact, .. } = &mut later {
            contact.aor = b"bob".to_vec();
            contact.ruid = b"uloc-2".to_vec();
        }
        let batch = [(1, contact(Op::Upsert, 1)), (2, other), (3, later)];
        match db.apply(&batch) {
            Err(ApplyError::Record {
                index: 1,
                refused: true,
                reason,
            }) => assert!(reason.contains("no such table: aliases"), "{reason}"),
            r => panic!("{r:?}"),
        }
        db.apply(&batch[2..]).unwrap();
        let n: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM location", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "alice before it and bob behind it");
    }

    #[test]
    fn unwritable_database_is_an_error() {
        let mut db = Database::new(Path::new("/nonexistent/dir/k.db"));
        assert!(db.apply(&[(1, contact(Op::Upsert, 1))]).is_err());
    }
}
