//! At every start, the contacts SER's database holds (what usrloc loads)
//! are compared with the journal's state, and what the journal does not
//! know enters it as this node's changes, so they reach the peers:
//! - first start on a node that already holds contacts: all of them;
//! - after a crash: changes SER stored in the window between its 200 OK
//!   and the journal commit (their last_modified is newer than the version
//!   the journal holds).
//!
//! And the other way round: contacts the journal holds as present that SER's
//! database lacks (SER lost them: write-back mode killed before its flush,
//! a write refused as "database is locked"), or holds in an older version
//! (write-through mode killed between usrloc's callback and its database
//! write), are staged for applying, so SER gets them back; and a row of a
//! contact the journal holds as deleted since (usrloc removes the row after
//! its callback) is staged as that deletion, so it does not come back.
//! A row is the journal's version when ruid, Call-ID and CSeq match.
//!
//! Read from SER's database (the `db_url` modparam: SQLite, MySQL/MariaDB
//! or PostgreSQL, [`crate::ser_db`]).

use crate::config::DbUrl;
use crate::journal::Journal;
use crate::record::{Contact, Op, Record};
use crate::ser_db::{Cell, Conn};

/// Reads every unexpired contact of `table`. Its HLC stamp is taken from
/// the row's last_modified, so an old row never overrides a newer
/// version a peer holds.
fn read_table(conn: &mut Conn, table: &str, now: i64) -> Result<Vec<(u64, Record)>, String> {
    let sql = format!(
        "SELECT ruid, username, coalesce(domain, ''), contact, coalesce(received, ''), coalesce(path, ''),
                {}, q, callid, cseq, {}, flags, cflags, user_agent,
                coalesce(socket, ''), coalesce(methods, -1), coalesce(instance, ''), reg_id, server_id
         FROM {table}",
        conn.time_column("expires"),
        conn.time_column("last_modified"),
    );
    let rows = conn.query(&sql).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in rows {
        let c = contact_of(table, &r)?;
        if c.expires != 0 && c.expires < now {
            continue;
        }
        let stamp = ((c.last_modified.max(0) as u64) * 1000) << 16;
        out.push((
            stamp,
            Record::Contact {
                op: Op::Upsert,
                contact: c,
            },
        ));
    }
    Ok(out)
}

/// A row of `read_table`'s SELECT as the contact usrloc loads from it.
fn contact_of(table: &str, r: &[Cell]) -> Result<Contact, String> {
    if r.len() != 19 {
        return Err(format!("{} columns, not 19", r.len()));
    }
    // The bytes as SER stored them: SER does not promise UTF-8 (a
    // Latin-1 User-Agent), and they replicate unchanged.
    let text = |i: usize| r[i].bytes();
    let int = |i: usize| r[i].int().map_err(|e| format!("column {i}: {e}"));
    let mut aor = text(1);
    let domain = text(2);
    if !domain.is_empty() {
        aor.push(b'@');
        aor.extend_from_slice(&domain);
    }
    let q = r[7].real().map_err(|e| format!("q: {e}"))?;
    Ok(Contact {
        domain: table.as_bytes().to_vec(),
        aor,
        contact: text(3),
        ruid: text(0),
        received: text(4),
        path: text(5),
        callid: text(8),
        user_agent: text(13),
        socket: text(14),
        instance: text(16),
        expires: r[6].time().map_err(|e| format!("expires: {e}"))?,
        last_modified: r[10].time().map_err(|e| format!("last_modified: {e}"))?,
        q: if q < 0.0 {
            -1
        } else {
            (q * 1000.0).round() as i32
        },
        cseq: int(9)? as i32,
        flags: int(11)? as u32,
        cflags: int(12)? as u32,
        methods: int(15)? as u32,
        reg_id: int(17)? as u32,
        server_id: int(18)? as i32,
    })
}

/// Whether a database row and a journaled contact are the same version of
/// the contact: a new contact gets a new ruid, a REGISTER from another
/// call a new Call-ID, and a refresh a higher CSeq. (Not the times: usrloc
/// writes last_modified when it writes the row, and the database keeps
/// times as fractional days, so they differ by a second or more.)
fn same_version(row: &Contact, journaled: &Contact) -> bool {
    row.ruid == journaled.ruid && row.callid == journaled.callid && row.cseq == journaled.cseq
}

/// What a start-up comparison did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Contacts of SER's database journaled as this node's changes.
    pub journaled: usize,
    /// Contacts of the journal staged for applying into SER again.
    pub restored: usize,
    /// The inbox ids they took (first, last).
    pub staged: Option<(i64, i64)>,
}

/// Journals the contacts of SER's database that the journal's state does
/// not hold, or holds in an older version, and stages for applying the
/// live contacts the journal holds that SER's database lacks.
pub fn reconcile(
    journal: &mut Journal,
    node_id: &str,
    database: &DbUrl,
    tables: &[String],
) -> Result<Reconciled, String> {
    let mut out = Reconciled::default();
    if let DbUrl::Sqlite(path) = database {
        if !path.exists() {
            return Ok(out);
        }
    }
    let mut conn = Conn::open(database, true).map_err(|e| format!("{database}: {e}"))?;
    let now = crate::hlc::wall_ms() as i64 / 1000;
    let mut in_db = std::collections::HashSet::new();
    // Versions of the journal SER's table lacks: staged for applying.
    let mut to_ser = Vec::new();
    let secs = |h: u64| crate::hlc::millis(h) / 1000;
    for table in tables {
        let recs = read_table(&mut conn, table, now)
            .map_err(|e| format!("{database}: table {table}: {e}"))?;
        let mut newer = Vec::new();
        for (stamp, rec) in recs {
            let key = rec.key();
            in_db.insert(key.clone());
            let Record::Contact { contact: row, .. } = &rec else {
                continue;
            };
            match journal.state_version(&key).map_err(|e| e.to_string())? {
                None => newer.push((stamp, rec)),
                Some((h, origin, held)) => {
                    let Record::Contact { op, contact: jc } = &held else {
                        continue;
                    };
                    if same_version(row, jc) {
                        // The row is the journal's version, unless that
                        // was deleted since (usrloc removes the row after
                        // its callback): then SER must delete it too.
                        if *op == Op::Delete {
                            to_ser.push((h, origin, held));
                        }
                    } else {
                        // Which is later: by CSeq within one call, else by
                        // the second (within one second, left as it is).
                        let order = if row.callid == jc.callid {
                            row.cseq.cmp(&jc.cseq)
                        } else {
                            secs(stamp).cmp(&secs(h))
                        };
                        match order {
                            // SER stored a later change the journal missed
                            // (a crash between the 200 OK and the journal
                            // commit).
                            std::cmp::Ordering::Greater => newer.push((stamp, rec)),
                            // The journal holds a later version (a crash
                            // between usrloc's callback and its write).
                            std::cmp::Ordering::Less => to_ser.push((h, origin, held)),
                            std::cmp::Ordering::Equal => {}
                        }
                    }
                }
            }
        }
        for chunk in newer.chunks(5000) {
            out.journaled += journal
                .append_local(node_id, chunk)
                .map_err(|e| e.to_string())?
                .1;
        }
    }
    let missing = journal
        .live_contacts(|c| {
            (c.expires == 0 || c.expires > now)
                && tables.iter().any(|t| t.as_bytes() == c.domain.as_slice())
        })
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(_, _, rec)| !in_db.contains(&rec.key()));
    to_ser.extend(missing);
    let missing = to_ser;
    out.restored = missing.len();
    if !missing.is_empty() {
        out.staged = journal.stage_restore(&missing).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Sink;
    use rusqlite::Connection;

    #[test]
    fn journals_what_ser_holds_and_restores_what_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kamailio.db");
        Connection::open(&db)
            .unwrap()
            .execute_batch(crate::apply::db::tests::SCHEMA)
            .unwrap();
        let now = crate::hlc::wall_ms() as i64 / 1000;
        let contact = |user: &str, expires: i64| Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: b"location".to_vec(),
                aor: user.as_bytes().to_vec(),
                contact: format!("sip:{user}@192.0.2.1").into_bytes(),
                ruid: format!("uloc-{user}").into_bytes(),
                callid: b"c".to_vec(),
                path: b"<sip:p.example.net;lr>".to_vec(),
                q: 500,
                expires,
                last_modified: now - 10,
                methods: 31,
                ..Default::default()
            },
        };
        let url = DbUrl::Sqlite(db.clone());
        let mut sink = crate::apply::db::Database::new(url.clone());
        sink.apply(&[
            (1, contact("alice", now + 3600)),
            (1, contact("bob", now + 60)),
            (1, contact("old", now - 60)),
        ])
        .unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let tables = ["location".to_string()];
        let n = reconcile(&mut j, "n1", &url, &tables).unwrap().journaled;
        assert_eq!(n, 2, "the expired contact is not journaled");
        let log = j.read_log(0, 10).unwrap();
        assert_eq!(log[0].record, contact("alice", now + 3600));
        assert_eq!(
            reconcile(&mut j, "n1", &url, &tables).unwrap(),
            Reconciled::default(),
            "only once"
        );
        // usrloc's own times in the table differ from the journaled ones
        // (it writes last_modified when it writes the row; times are kept
        // as fractional days): the same version, nothing to restore.
        Connection::open(&db)
            .unwrap()
            .execute(
                "UPDATE location SET last_modified = datetime(last_modified, '-5 seconds'), \
                 expires = datetime(expires, '+0.4 seconds')",
                [],
            )
            .unwrap();
        assert_eq!(
            reconcile(&mut j, "n1", &url, &tables).unwrap(),
            Reconciled::default(),
            "the same versions with other times"
        );
        // A change SER stored after the journal's version (a crash between
        // the 200 OK and the journal commit) is picked up at the next start.
        let mut later = contact("bob", now + 7200);
        let Record::Contact { contact: c, .. } = &mut later else {
            unreachable!()
        };
        c.last_modified = now + 5;
        c.cseq = 9;
        sink.apply(&[(1, later.clone())]).unwrap();
        assert_eq!(reconcile(&mut j, "n1", &url, &tables).unwrap().journaled, 1);
        assert_eq!(j.read_log(2, 10).unwrap()[0].record, later);
        // SER lost alice (a write-back node killed before its flush): the
        // journal gives her back to SER, through the applier's inbox.
        Connection::open(&db)
            .unwrap()
            .execute("DELETE FROM location WHERE username = 'alice'", [])
            .unwrap();
        let r = reconcile(&mut j, "n1", &url, &tables).unwrap();
        assert_eq!((r.journaled, r.restored), (0, 1));
        assert!(matches!(r.staged, Some((a, b)) if a == b));
        let staged = j.inbox_peek(10).unwrap();
        assert_eq!(staged.len(), 1);
        assert_eq!(staged[0].record, contact("alice", now + 3600));
        let first = staged[0].id;
        j.inbox_done(first).unwrap();
        // A write-through node killed between usrloc's callback and its
        // database write: the journal holds bob's refresh, SER's table the
        // version before. SER gets the journal's back.
        let mut refreshed = later.clone();
        let Record::Contact { contact: c, .. } = &mut refreshed else {
            unreachable!()
        };
        c.cseq = 10;
        c.last_modified = now + 20;
        c.expires = now + 9000;
        j.append_local(
            "n1",
            &[(((now as u64 + 20) * 1000) << 16, refreshed.clone())],
        )
        .unwrap();
        let r = reconcile(&mut j, "n1", &url, &tables).unwrap();
        assert_eq!(
            (r.journaled, r.restored),
            (0, 2),
            "bob's newer version, and alice still missing"
        );
        assert!(matches!(r.staged, Some((a, b)) if b == a + 1));
        let staged: Vec<Record> = j
            .inbox_peek(10)
            .unwrap()
            .into_iter()
            .map(|s| s.record)
            .collect();
        assert!(staged.contains(&refreshed), "{staged:?}");
        for s in j.inbox_peek(10).unwrap() {
            j.inbox_done(s.id).unwrap();
        }
        // bob de-registered, and the node was killed before usrloc removed
        // his row (it does so after the callback): the row is the version
        // the journal deleted, so SER is told to delete it, and nothing is
        // journaled (no resurrection).
        sink.apply(&[(1, refreshed.clone())]).unwrap();
        let Record::Contact { contact: gone, .. } = refreshed.clone() else {
            unreachable!()
        };
        let deleted = Record::Contact {
            op: Op::Delete,
            contact: gone,
        };
        j.append_local("n1", &[(((now as u64 + 30) * 1000) << 16, deleted.clone())])
            .unwrap();
        let r = reconcile(&mut j, "n1", &url, &tables).unwrap();
        assert_eq!(r.journaled, 0, "the deleted row is not journaled again");
        let staged: Vec<Record> = j
            .inbox_peek(10)
            .unwrap()
            .into_iter()
            .map(|s| s.record)
            .collect();
        assert!(staged.contains(&deleted), "{staged:?}");

        // A Latin-1 User-Agent (not UTF-8) does not stop the comparison,
        // and its bytes are journaled unchanged.
        let mut latin = contact("carol", now + 3600);
        let Record::Contact { contact: c, .. } = &mut latin else {
            unreachable!()
        };
        c.user_agent = b"T\xe9l\xe9phone 3.1".to_vec();
        c.last_modified = now + 40;
        sink.apply(&[(1, latin.clone())]).unwrap();
        let r = reconcile(&mut j, "n1", &url, &tables).unwrap();
        assert_eq!(r.journaled, 1);
        let log = j.read_log(0, 100).unwrap();
        assert_eq!(log.last().unwrap().record, latin);
    }
}
