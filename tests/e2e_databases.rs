//! SER's database on MariaDB and PostgreSQL (issue 15, item 6): the
//! engine's own paths into it, the database fallback when SER's RPC door
//! does not answer and the start-up comparison, with Kamailio 5.6's
//! db_mysql and db_postgres and usrloc in db_mode 1 and 2.
//!
//! Each test starts its server (Debian's `mariadb-server`, `postgresql`)
//! once, on a loopback address of its own with a data directory of its
//! own, and three nodes on 127.0.0.171–173, each with a database of that
//! server made from Kamailio's schema files. Node 1 (db_mode 1) takes
//! registrations; nodes 2 (db_mode 1) and 3 (db_mode 2) have no RPC door,
//! so what they receive goes into their location tables: the test checks
//! those rows field by field against the rows Kamailio itself wrote on
//! node 1, and that usrloc loads them when nodes 2 and 3 restart with
//! their door. Then node 1 runs a while without sersync and takes more
//! registrations; started with sersync again, its start-up comparison
//! finds them in its database and they reach nodes 2 and 3.
//!
//! The nodes run with TZ set to three hours east of UTC: Kamailio keeps
//! DATETIME columns in local time, and rows the engine wrote in any other
//! time would load as expired.
//!
//! Needs `build/sersync.so` (`make`), and mariadb-server, postgresql,
//! kamailio-mysql-modules and kamailio-postgres-modules
//! (.ci/setup-system.sh); fails, never skips, without them. Addresses
//! 127.0.0.171–173 (nodes), .175 (MariaDB), .176 (PostgreSQL) only.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use support::*;

const FIRST: u8 = 171;
const MARIADB_IP: &str = "127.0.0.175";
const POSTGRES_IP: &str = "127.0.0.176";
/// UTC+3, as a POSIX TZ string (no zone files needed).
const NODE_TZ: &str = "SRS-3";
/// Registrations on node 1 while nodes 2 and 3 have no door, and while
/// node 1 runs without sersync.
const FALLBACK_USERS: usize = 150;
const EARLIER_USERS: usize = 60;

#[test]
fn mariadb_fallback_and_start_up_comparison() {
    let server = DbServer::mariadb(MARIADB_IP);
    check_bad_credentials(&server);
    check_record_refusals(&server);
    run(&server, "db-mariadb");
}

#[test]
fn postgresql_fallback_and_start_up_comparison() {
    let server = DbServer::postgresql(POSTGRES_IP);
    check_bad_credentials(&server);
    check_record_refusals(&server);
    run(&server, "db-postgres");
}

fn sersync_line(param: &str, value: &str) -> String {
    format!("modparam(\"sersync\", \"{param}\", \"{value}\")")
}

/// Replaces `from` by `to` in the node's kamailio.cfg (panics if absent).
fn edit_cfg(node: &Node, from: &str, to: &str) {
    let p = node.dir.join("kamailio.cfg");
    let t = fs::read_to_string(&p).unwrap();
    assert!(t.contains(from), "{}: no {from:?}", p.display());
    fs::write(&p, t.replace(from, to)).unwrap();
}

/// usrloc's columns, every one but the row id; times as text, as the
/// server keeps them.
fn location_rows(server: &DbServer, db: &str) -> BTreeMap<String, Vec<Option<String>>> {
    let partition = match server.kind {
        DbKind::Mariadb => "`partition`",
        DbKind::Postgresql => "partition",
    };
    let sql = format!(
        "SELECT ruid, username, domain, contact, received, path, expires, q, callid, cseq, \
         last_modified, flags, cflags, user_agent, socket, methods, instance, reg_id, server_id, \
         connection_id, keepalive, {partition} FROM location"
    );
    server
        .rows(db, &sql)
        .into_iter()
        .map(|r| (r[0].clone().unwrap_or_default(), r))
        .collect()
}

const COLUMNS: &[&str] = &[
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

/// The rows the engine wrote into `db` against those Kamailio wrote into
/// `origin`, every column but keepalive: usrloc derives that from the
/// contact's cflags and its own nat_bflag, on every node, and ignores the
/// column when it loads a row (ucontact.c, new_ucontact).
fn assert_rows_as_kamailio_wrote_them(server: &DbServer, origin: &str, db: &str) {
    let want = location_rows(server, origin);
    let got = location_rows(server, db);
    assert_eq!(
        got.len(),
        want.len(),
        "{db}: {} location rows, node 1 has {}",
        got.len(),
        want.len()
    );
    let mut diffs = Vec::new();
    for (ruid, w) in &want {
        let Some(g) = got.get(ruid) else {
            diffs.push(format!("{ruid}: missing"));
            continue;
        };
        for (i, col) in COLUMNS.iter().enumerate() {
            if w[i] != g[i] && *col != "keepalive" {
                diffs.push(format!("{ruid} {col}: {:?}, node 1 {:?}", g[i], w[i]));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{db}'s location rows differ from those Kamailio wrote on node 1 ({} differences), e.g.:\n{}",
        diffs.len(),
        diffs[..diffs.len().min(12)].join("\n")
    );
}

/// Wrong password, and a server that is not there: the database
/// fallback's error (as logged: `... database fallback failed too: <it>`)
/// says so, names the server and the user, and never shows the password.
fn check_bad_credentials(server: &DbServer) {
    use sersync::apply::{db::Database, Sink};
    use sersync::config::parse_db_url;
    use sersync::record::{Contact, Op, Record};
    let record = Record::Contact {
        op: Op::Upsert,
        contact: Contact {
            domain: b"location".to_vec(),
            aor: b"alice".to_vec(),
            contact: b"sip:alice@192.0.2.1".to_vec(),
            ..Default::default()
        },
    };
    let fallback_error = |url: &str| -> String {
        let url = parse_db_url(url).unwrap().expect("a server URL");
        let t0 = Instant::now();
        let e = Database::new(url)
            .apply(&[(1, record.clone())])
            .expect_err("written into no database")
            .to_string();
        eprintln!("e2e: {:?}: {e} ({:?})", server.kind, t0.elapsed());
        e
    };
    let db = "nosuchdb";
    let e = fallback_error(&server.url(db).replace(DB_PASSWORD, "wrong-Secret-7"));
    let named = format!(
        "database {}://{DB_USER}@{}:{}/{db}: cannot connect: ",
        server.kind.scheme(),
        server.ip,
        server.port
    );
    assert!(
        e.starts_with(&named) && e.ends_with("(check the user and password of db_url)"),
        "{e}"
    );
    assert!(!e.contains("wrong-Secret-7"), "the password shown: {e}");
    let e = fallback_error(&server.url(db).replace(&server.ip, "127.0.0.174"));
    assert!(
        e.starts_with(&named.replace(&server.ip, "127.0.0.174"))
            && e.contains("refused")
            && !e.contains(DB_PASSWORD),
        "{e}"
    );
}

/// Kamailio's MySQL schema keeps q as FLOAT(10,2): a q of 0.028 is 0.03
/// in node 1's own row too, and any Kamailio that loads it (node 1 after
/// a restart as well) has 0.03. A q that differs by less than that
/// rounding is taken for node 1's.
fn round_q_as_mysql_keeps_it(origin: &Contacts, loaded: &mut Contacts) {
    for (key, c) in loaded.iter_mut() {
        if let Some(o) = origin.get(key) {
            if c.q != o.q && (c.q - o.q).abs() <= 5 && c.q % 10 == 0 {
                c.q = o.q;
            }
        }
    }
}

/// The database fallback refuses a record for itself (a usrloc table the
/// database lacks; a User-Agent not in the database's character set: a
/// Latin-1 byte in UTF-8), writes the records before it (PostgreSQL ends
/// the transaction at the refusal: they are written again), and the
/// records behind it on the next call. It writes alias_db's table too.
fn check_record_refusals(server: &DbServer) {
    use sersync::apply::{db::Database, Sink};
    use sersync::config::parse_db_url;
    use sersync::error::ApplyError;
    use sersync::record::{Alias, Contact, Op, Record};
    let db = "refusals";
    server.create_database(db);
    let url = parse_db_url(&server.url(db))
        .unwrap()
        .expect("a server URL");
    let mut sink = Database::new(url);
    let now = unix_now();
    let contact = |user: &str| Record::Contact {
        op: Op::Upsert,
        contact: Contact {
            domain: b"location".to_vec(),
            aor: format!("{user}@example.net").into_bytes(),
            contact: format!("sip:{user}@192.0.2.1").into_bytes(),
            ruid: format!("uloc-{user}").into_bytes(),
            callid: b"c".to_vec(),
            cseq: 1,
            q: -1,
            expires: now + 3600,
            last_modified: now,
            methods: u32::MAX,
            ..Default::default()
        },
    };
    let mut no_table = contact("bob");
    let mut latin1 = contact("carol");
    if let (Record::Contact { contact: b, .. }, Record::Contact { contact: c, .. }) =
        (&mut no_table, &mut latin1)
    {
        b.domain = b"aliases".to_vec();
        c.user_agent = b"T\xe9l\xe9phone".to_vec();
    }
    let count = || server.rows(db, "SELECT count(*) FROM location")[0][0].clone();
    for (refused, why) in [
        (no_table, "a table it lacks"),
        (latin1, "bytes not in UTF-8"),
    ] {
        server.rows(db, "DELETE FROM location");
        let batch = [(1, contact("alice")), (2, refused), (3, contact("dave"))];
        match sink.apply(&batch) {
            Err(ApplyError::Record {
                index: 1,
                refused: true,
                reason,
            }) => eprintln!("e2e: {:?}: {why}: {reason}", server.kind),
            r => panic!("{:?}, {why}: {r:?}", server.kind),
        }
        assert_eq!(count(), Some("1".into()), "{why}: alice, before it");
        sink.apply(&batch[2..]).unwrap();
        assert_eq!(count(), Some("2".into()), "{why}: and dave, behind it");
    }
    let methods = server.rows(db, "SELECT methods FROM location");
    assert!(
        methods.iter().all(|r| r[0].is_none()),
        "all methods are NULL, as usrloc writes them: {methods:?}"
    );
    // alias_db's table: an alias written twice is one row; deleted, none.
    let alias = |op| Record::Alias {
        op,
        alias: Alias {
            table: b"dbaliases".to_vec(),
            alias_username: b"sales".to_vec(),
            alias_domain: b"example.net".to_vec(),
            username: b"alice".to_vec(),
            domain: b"example.net".to_vec(),
        },
    };
    let aliases = || {
        server.rows(
            db,
            "SELECT alias_username, alias_domain, username, domain FROM dbaliases",
        )
    };
    sink.apply(&[(1, alias(Op::Upsert)), (2, alias(Op::Upsert))])
        .unwrap();
    let some = |v: &str| Some(v.to_string());
    assert_eq!(
        aliases(),
        vec![vec![
            some("sales"),
            some("example.net"),
            some("alice"),
            some("example.net")
        ]]
    );
    sink.apply(&[(3, alias(Op::Delete))]).unwrap();
    assert_eq!(aliases(), Vec::<Vec<Option<String>>>::new());
}

fn run(server: &DbServer, name: &str) {
    let t0 = Instant::now();
    let dbs: Vec<String> = (1..=3).map(|i| format!("ser_n{i}")).collect();
    for db in &dbs {
        server.create_database(db);
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let nodoor = |i: usize| {
        sersync_line(
            "fifo",
            dir.join(format!("n{i}/nodoor.fifo")).to_str().unwrap(),
        )
    };
    let mut opts = ClusterOptions {
        server_db: Some(ServerDb {
            module: server.kind.module().to_string(),
            urls: (1..=3).map(|i| (i, server.url(&dbs[i - 1]))).collect(),
        }),
        env: vec![("TZ".into(), NODE_TZ.into())],
        ..Default::default()
    };
    opts.ul_db_mode_of.insert(3, 2);
    opts.extra.insert(2, vec![nodoor(2)]);
    opts.extra.insert(3, vec![nodoor(3)]);
    let mut cluster = Cluster::start_private(name, FIRST, 3, &opts);
    eprintln!("e2e: {name}: cluster up at {:?}", t0.elapsed());

    // Door absent on nodes 2 and 3: node 1's registrations go into their
    // location tables.
    let regs = mixed_users("d", FALLBACK_USERS, 0);
    sipp_register(cluster.node(1), &regs, 500, "n1-d");
    for i in [2, 3] {
        let node = cluster.node(i);
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(30), || {
            let st = node.status();
            last = st.summary();
            st.applied_via_db >= regs.len() as u64 && st.apply_pending == 0
        });
        assert!(
            ok,
            "node {i} did not write into its {:?} database:\n{last}\n{}",
            server.kind,
            node.log_tail(10)
        );
        assert!(
            !node.log_grep("SER's database instead").is_empty(),
            "node {i}: no log line about the database fallback"
        );
    }
    assert_rows_as_kamailio_wrote_them(server, &dbs[0], &dbs[1]);
    assert_rows_as_kamailio_wrote_them(server, &dbs[0], &dbs[2]);
    let origin = cluster.node(1).contacts();
    assert_eq!(origin.len(), regs.len());
    eprintln!(
        "e2e: {name}: {} rows on nodes 2 and 3 as Kamailio wrote them on node 1, at {:?}",
        regs.len(),
        t0.elapsed()
    );

    // Restarted with their door, nodes 2 (db_mode 1) and 3 (db_mode 2)
    // load the rows: usrloc holds node 1's contacts before anything else
    // is applied (nothing is pending), and the start-up comparison finds
    // them to be the journal's versions (nothing journaled or restored).
    for i in [2, 3] {
        cluster.node_mut(i).stop().unwrap();
        edit_cfg(cluster.node(i), &nodoor(i), "# door restored");
        cluster.node_mut(i).start();
        let node = cluster.node(i);
        // usrloc loads its table in the first SIP worker's start, which
        // may come after the RPC door answers.
        let mut loaded = Contacts::new();
        wait_until(Duration::from_secs(10), || {
            loaded = node.contacts();
            loaded.len() >= origin.len()
        });
        if server.kind == DbKind::Mariadb {
            round_q_as_mysql_keeps_it(&origin, &mut loaded);
        }
        compare_contacts(&[
            ("node 1".to_string(), origin.clone()),
            (format!("node {i}'s usrloc after its start"), loaded),
        ])
        .unwrap_or_else(|d| {
            panic!(
                "node {i} (db_mode {}) loaded other contacts:\n{d}",
                if i == 3 { 2 } else { 1 }
            )
        });
        let st = node.status();
        assert_eq!(
            (st.journaled, st.last_seq, st.restored, st.restore_pending),
            (0, 0, 0, 0),
            "node {i}'s start-up comparison took the rows for other versions:\n{}\n{}",
            st.summary(),
            node.log_tail(10)
        );
    }
    cluster.wait_mesh_up(Duration::from_secs(30));
    eprintln!(
        "e2e: {name}: usrloc of nodes 2 and 3 loaded them, at {:?}",
        t0.elapsed()
    );

    // Node 1 runs a while without sersync (same database) and takes
    // registrations; with sersync again, its start-up comparison journals
    // them and they reach nodes 2 and 3.
    let cfg_path = cluster.node(1).dir.join("kamailio.cfg");
    let with_sersync = fs::read_to_string(&cfg_path).unwrap();
    cluster.node_mut(1).stop().unwrap();
    let n1 = cluster.node(1);
    let without = node_config_with(1, &n1.ip, &n1.dir, &[], None, "", &opts);
    fs::write(&cfg_path, without).unwrap();
    cluster.node_mut(1).start();
    let earlier = mixed_users("e", EARLIER_USERS, 10_000);
    sipp_register(cluster.node(1), &earlier, 500, "n1-e");
    cluster.node_mut(1).stop().unwrap();
    fs::write(&cfg_path, with_sersync).unwrap();
    cluster.node_mut(1).start();
    cluster.wait_mesh_up(Duration::from_secs(30));
    let total = regs.len() + earlier.len();
    wait_converged(
        &cluster.all(),
        Duration::from_secs(60),
        "contacts node 1 took without sersync",
        expect_contacts(total),
    );
    assert_eq!(assert_same_contacts(&cluster.all()), total);
    let st1 = cluster.node(1).status();
    assert_eq!(
        st1.last_seq,
        total as u64,
        "node 1 journaled its {} registrations and the {} its database held:\n{}",
        regs.len(),
        earlier.len(),
        st1.summary()
    );
    let found = expect_log(
        cluster.node(1),
        &[
            "start-up comparison with SER's database",
            &format!("journaled {EARLIER_USERS} contacts"),
        ],
        0,
        "node 1's start-up comparison",
    );
    eprintln!("e2e: {name}: node 1: {}", found.trim());

    // No log line shows the database password.
    cluster.stop_all();
    for node in &cluster.nodes {
        let shown = node.log_grep(DB_PASSWORD);
        assert!(
            shown.is_empty(),
            "{} logged the database password: {}",
            node.name(),
            shown[0]
        );
    }
    eprintln!("e2e: {name}: done in {:?}", t0.elapsed());
}
