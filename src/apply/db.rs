//! The database path: writes changes straight into SER's database
//! (usrloc's table per domain, alias_db's table, in the schemas Kamailio
//! 5.6 ships for SQLite, MySQL/MariaDB and PostgreSQL), used when SER's
//! RPC door does not answer. usrloc reads these rows when SER next loads
//! the table (db_mode 1, 2 or 3); with db_mode 3 they are live at once.

use super::Sink;
use crate::config::DbUrl;
use crate::error::ApplyError;
use crate::record::{Alias, Contact, Op, Record};
use crate::ser_db::{Conn, Error, Value};

pub struct Database {
    url: DbUrl,
    conn: Option<Conn>,
}

fn text(b: &[u8]) -> Value<'_> {
    Value::Text(Some(b))
}

/// NULL for an empty field, as usrloc stores it.
fn text_or_null(b: &[u8]) -> Value<'_> {
    Value::Text((!b.is_empty()).then_some(b))
}

/// A usrloc table name must be a plain SQL identifier.
fn table_name(domain: &[u8]) -> Result<&str, Error> {
    let s = std::str::from_utf8(domain)
        .map_err(|_| Error::Record("table name is not UTF-8".to_string()))?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::Record(format!("\"{s}\" is not a table name")));
    }
    Ok(s)
}

/// usrloc keeps "user@domain" split when use_domain is on; without the
/// module's setting at hand, split when the AOR has a domain.
fn split_aor(aor: &[u8]) -> (Value<'_>, Value<'_>) {
    match aor.iter().position(|&b| b == b'@') {
        Some(i) => (text(&aor[..i]), text(&aor[i + 1..])),
        None => (text(aor), Value::Text(None)),
    }
}

/// usrloc's columns the fallback writes, in its INSERT's order; the three
/// after them are constants (no connection, no keepalive, partition 0).
const CONTACT_COLUMNS: &[&str] = &[
    "ruid",
    "username",
    "domain",
    "contact",
    "received",
    "path",
    "expires",
    "q",
    "callid",
    "cseq",
    "last_modified",
    "flags",
    "cflags",
    "user_agent",
    "socket",
    "methods",
    "instance",
    "reg_id",
    "server_id",
    "connection_id",
    "keepalive",
    "partition",
];

impl Database {
    pub fn new(url: DbUrl) -> Database {
        Database { url, conn: None }
    }

    fn err(&self, detail: impl std::fmt::Display) -> ApplyError {
        ApplyError::Database {
            url: self.url.to_string(),
            detail: detail.to_string(),
        }
    }

    fn write(conn: &mut Conn, op: Op, c: &Contact) -> Result<(), Error> {
        let table = table_name(&c.domain)?;
        let (user, domain) = split_aor(&c.aor);
        // The same contact under another ruid, or the same ruid (a
        // refresh of the contact's binding).
        let mut delete = format!(
            "DELETE FROM {table} WHERE (username = ? AND coalesce(domain, '') = coalesce(?, '') \
             AND contact = ?)"
        );
        let mut keys = vec![user, domain, text(&c.contact)];
        if !c.ruid.is_empty() {
            delete.push_str(" OR ruid = ?");
            keys.push(text(&c.ruid));
        }
        conn.execute(&delete, &keys)?;
        if op == Op::Delete {
            return Ok(());
        }
        let q = if c.q < 0 { -1.0 } else { c.q as f64 / 1000.0 };
        let columns: Vec<String> = CONTACT_COLUMNS.iter().map(|c| conn.ident(c)).collect();
        let values = [
            text(&c.ruid),
            user,
            domain,
            text(&c.contact),
            text_or_null(&c.received),
            text_or_null(&c.path),
            Value::Time(c.expires),
            Value::Real(q),
            text(&c.callid),
            Value::Int(c.cseq.into()),
            Value::Time(c.last_modified),
            // usrloc's INTEGER columns hold the C int: the bits of the u32.
            Value::Int((c.flags as i32).into()),
            Value::Int((c.cflags as i32).into()),
            text(&c.user_agent),
            text_or_null(&c.socket),
            // All methods (no Allow header): NULL, as usrloc writes it.
            if c.methods == u32::MAX {
                Value::NullInt
            } else {
                Value::Int((c.methods as i32).into())
            },
            text_or_null(&c.instance),
            Value::Int((c.reg_id as i32).into()),
            Value::Int(c.server_id.into()),
        ];
        let marks = vec!["?"; values.len()].join(", ");
        conn.execute(
            &format!(
                "INSERT INTO {table} ({}) VALUES ({marks}, -1, 0, 0)",
                columns.join(", ")
            ),
            &values,
        )?;
        Ok(())
    }

    /// alias_db's table: one row per mapping; no unique key, so delete
    /// first to keep upserts idempotent.
    fn write_alias(conn: &mut Conn, op: Op, a: &Alias) -> Result<(), Error> {
        let table = table_name(&a.table)?;
        let row = [
            text(&a.alias_username),
            text(&a.alias_domain),
            text(&a.username),
            text(&a.domain),
        ];
        conn.execute(
            &format!(
                "DELETE FROM {table} WHERE alias_username = ? AND alias_domain = ? \
                 AND username = ? AND domain = ?"
            ),
            &row,
        )?;
        if op == Op::Upsert {
            conn.execute(
                &format!(
                    "INSERT INTO {table} (alias_username, alias_domain, username, domain) \
                     VALUES (?, ?, ?, ?)"
                ),
                &row,
            )?;
        }
        Ok(())
    }

    fn write_record(conn: &mut Conn, r: &Record) -> Result<(), Error> {
        match r {
            Record::Contact { op, contact } => Self::write(conn, *op, contact),
            Record::Alias { op, alias } => Self::write_alias(conn, *op, alias),
        }
    }

    /// Writes `records` in one transaction. Ok(None): all written;
    /// Ok(Some((i, why))): those before record i written, record i
    /// refused. A refused statement ends a PostgreSQL transaction, so the
    /// records before it are written again in a new one.
    fn write_batch(
        conn: &mut Conn,
        records: &[(u64, Record)],
    ) -> Result<Option<(usize, String)>, String> {
        let database = |e: Error| e.to_string();
        conn.begin().map_err(database)?;
        for (i, (_, r)) in records.iter().enumerate() {
            match Self::write_record(conn, r) {
                Ok(()) => {}
                Err(Error::Record(why)) => {
                    conn.rollback().map_err(database)?;
                    if i > 0 {
                        conn.begin().map_err(database)?;
                        for (_, r) in &records[..i] {
                            Self::write_record(conn, r).map_err(database)?;
                        }
                        conn.commit().map_err(database)?;
                    }
                    return Ok(Some((i, why)));
                }
                Err(e) => {
                    // The connection is dropped; that rolls back too.
                    let _ = conn.rollback();
                    return Err(e.to_string());
                }
            }
        }
        conn.commit().map_err(database)?;
        Ok(None)
    }
}

impl Sink for Database {
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.url, false).map_err(|e| self.err(e))?);
        }
        let conn = self.conn.as_mut().expect("opened above");
        match Self::write_batch(conn, records) {
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
    use rusqlite::Connection;
    use std::path::Path;

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
        let mut db = Database::new(DbUrl::Sqlite(path.clone()));
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
        let mut db = Database::new(DbUrl::Sqlite(path.clone()));
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
        let mut db = Database::new(DbUrl::Sqlite(Path::new("/nonexistent/dir/k.db").into()));
        assert!(db.apply(&[(1, contact(Op::Upsert, 1))]).is_err());
    }
}
