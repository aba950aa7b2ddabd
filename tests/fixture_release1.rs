//! Release 1's fixture: a journal (schema v6) and every frame (protocol v1)
//! as the first release writes them, committed under
//! tests/fixtures/release-1 and never regenerated. Every later release
//! must still open, migrate and read that journal and decode those frames;
//! a release that changes the journal or the protocol adds a fixture
//! directory of its own beside this one.
//!
//! What the files hold is built by [`journal_fixture`] and [`frames`],
//! used both by the generator (`generate_release_1_fixture`, ignored: run
//! by hand with `cargo test --release --test fixture_release1 -- --ignored
//! generate`) and by the tests, so the expected values cannot drift from
//! what was written.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use sersync::journal::Journal;
use sersync::record::SnapRow;
use sersync::record::{Alias, Change, Contact, Op, Record};
use sersync::wire::auth::{self, Nonce, Role, Tag, Transcript};
use sersync::wire::{Frame, FrameReader, Member, SnapshotResume};
use sha2::{Digest, Sha256};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-1")
}

/// SHA-256 of every committed fixture file: they never change. A test
/// that needs other contents gets a fixture directory of its own.
#[rustfmt::skip]
const COMMITTED: &[(&str, &str)] = &[
    ("journal.db", "f511e90bb06a0652f70ea827cc3bb100c069cc4237be17f6ba4c044c937b81b7"),
    ("frames/01-challenge.bin", "f8786066223d7724e9af93a7727450d4c86feb374d60517cac74a1a59115ce04"),
    ("frames/02-hello.bin", "60f056572bfd4ce248fd6f69a1347cd163d3cd4008c0dfdfd301236ecbd3eab0"),
    ("frames/03-welcome.bin", "50ab4ddb6f970198823ce52f10f2729facd8322b97262d0ad13de002974eb800"),
    ("frames/04-welcome-resume.bin", "0e056ac7444b3dc4442a43c7c4bb23c65dc98a1d6dbb618326390ee567c6054f"),
    ("frames/05-refuse.bin", "b6c7f21b0f010a8bd66e9766f9027c0395e626a484294d40edee56338db2f3cf"),
    ("frames/06-batch.bin", "c5463451e5ea7180879c90f267e604253a415ed450cc3ba3616568f8bdaef9ed"),
    ("frames/07-ack.bin", "88d67078d69364ab2be710dec6611c77710dd0e0c684d1efff1dc40fc0794586"),
    ("frames/08-tempfail.bin", "64d31471815d06cd4883988ad07f1da0ba6a9e02b3ef4241a07a30e998b374ee"),
    ("frames/09-snapshot-chunk.bin", "0257958a0fc8030f88fdf083fc87d5383363ef2239bf60e0788e5909b23fcbb8"),
    ("frames/10-snapshot-chunk-last.bin", "840845aa70ed359da08388fa72b4ea9e3a299dcd36a09175bde267e9197b5a6d"),
    ("frames/11-snapshot-ack.bin", "6ebcef6b163a0d4279724ba0f4d29c52f63c4b82ab21d9b82315436f645ddcb3"),
    ("frames/12-members.bin", "0bf3ec7beb85c08f62789dccc1104fca69a6a05046d868c8b5e832dd9da44b98"),
];

// ---------------------------------------------------------------------------
// What the fixture holds: one place for the generator and the tests.
// ---------------------------------------------------------------------------

/// The node whose journal this is.
const NODE: &str = "sip1";
/// The peer whose changes are staged (two batches).
const PEER: &str = "sip2";
/// The peer whose snapshot to this node was interrupted.
const SNAP_FROM: &str = "sip3";
/// The sequence of `SNAP_FROM` its snapshot is consistent with.
const SNAP_UPTO: u64 = 40;
/// A member that was acknowledged, then forgotten (`sersync.forget`).
const FORGOTTEN: (&str, &str) = ("sip4", "tcp:10.0.0.4:5999");
/// Local entries trimmed (every peer had them): the log starts after.
const TRIM_UPTO: u64 = 2;

/// Secret of the handshake in the frames; the tags below are its HMACs.
const SECRET: &[u8] = b"release-1 fixture secret";
const NONCE_A: Nonce = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
];
const NONCE_D: Nonce = [
    0xd0, 0x00, 0xd1, 0x01, 0xd2, 0x02, 0xd3, 0x03, 0xd4, 0x04, 0xd5, 0x05, 0xd6, 0x06, 0xd7, 0x07,
    0xd8, 0x08, 0xd9, 0x09, 0xda, 0x0a, 0xdb, 0x0b, 0xdc, 0x0c, 0xdd, 0x0d, 0xde, 0x0e, 0xdf, 0x0f,
];
/// auth::tag(SECRET, Dialer, NONCE_A, NONCE_D, "sip1" dialing "sip2").
const HELLO_TAG: &str = "82d5f375e8e437532467b3572046168b9affa1073f0d708249a5a98007e184cf";
/// The same transcript, Acceptor role.
const WELCOME_TAG: &str = "a093a6fab8edae678c21450133389033504b67c321da210bb4f35e7d5e45db2e";

fn hex32(s: &str) -> [u8; 32] {
    assert_eq!(s.len(), 64, "32 bytes in hex: {s}");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

/// A hybrid clock stamp `ms` milliseconds after 2024-04-24 23:06:40 UTC,
/// with counter `counter` in the low 16 bits.
fn at(ms: u64, counter: u64) -> u64 {
    ((1_714_000_000_000 + ms) << 16) | counter
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A contact with every field set, each distinctive by `n`; byte strings
/// hold bytes that are not UTF-8 (and a NUL) where SER stores bytes.
fn contact(n: u8, domain: &[u8], aor: &[u8], uri: &[u8]) -> Contact {
    let k = n as u32;
    Contact {
        domain: domain.to_vec(),
        aor: aor.to_vec(),
        contact: uri.to_vec(),
        ruid: cat(&[b"uloc-6630a1b2-", format!("{n:04x}").as_bytes(), &[0xfe, n]]),
        received: format!("sip:198.51.100.{n}:5062;transport=tcp").into_bytes(),
        path: cat(&[
            b"<sip:edge1.example.net;lr;received=sip:203.0.113.7>,<sip:",
            &[0x80, n, 0xc0],
            b";lr>",
        ]),
        callid: cat(&[b"call-", &[n, 0x00, 0xc3, 0x28], b"@203.0.113.7"]),
        user_agent: cat(&[
            b"Gr\xfc\xdfe-Phone/",
            format!("{n}").as_bytes(),
            b" (\xff\xfe)",
        ]),
        socket: format!("tcp:10.0.0.1:{}", 5060 + k).into_bytes(),
        instance: format!("<urn:uuid:6630a1b2-0000-4000-8000-0000000000{n:02x}>").into_bytes(),
        expires: 4_102_444_800 + n as i64, // 2100-01-01 and after: never expired
        last_modified: 1_714_000_000 + n as i64,
        q: 750 + n as i32,
        cseq: 0x7fff_0000 + n as i32,
        flags: 0x8000_0000 | k,
        cflags: 0x0001_0000 + k,
        methods: 0xffff_ffff - k,
        reg_id: 300 + k,
        server_id: -1000 - n as i32,
    }
}

fn alias(alias_username: &[u8], alias_domain: &[u8], username: &[u8], domain: &[u8]) -> Alias {
    Alias {
        table: b"dbaliases".to_vec(),
        alias_username: alias_username.to_vec(),
        alias_domain: alias_domain.to_vec(),
        username: username.to_vec(),
        domain: domain.to_vec(),
    }
}

fn upsert(c: Contact) -> Record {
    Record::Contact {
        op: Op::Upsert,
        contact: c,
    }
}

fn delete(c: Contact) -> Record {
    Record::Contact {
        op: Op::Delete,
        contact: c,
    }
}

fn alias_rec(op: Op, a: Alias) -> Record {
    Record::Alias { op, alias: a }
}

fn change(seq: u64, hlc: u64, record: Record) -> Change {
    Change { seq, hlc, record }
}

/// Everything the generator writes into the journal, in the order it
/// writes it, and what the journal then holds.
struct JournalFixture {
    /// `append_local(NODE, ..)`: sequences 1.., every one changing the state.
    local: Vec<(u64, Record)>,
    /// `set_acked` for the live peers.
    acked: Vec<(&'static str, u64)>,
    /// `save_member`, then FORGOTTEN saved, acknowledged and forgotten.
    members: Vec<(&'static str, &'static str)>,
    /// `stage_remote(PEER, ..)` twice; after the first the oldest staged
    /// entry is applied (`inbox_done`).
    batches: [Vec<Change>; 2],
    /// `stage_snapshot(SNAP_FROM, SNAP_UPTO, .., last = false)`: one chunk
    /// of a snapshot that never finished.
    snapshot: Vec<SnapRow>,
    /// `stage_restore`: a local contact SER lost, staged to apply again.
    restore: Vec<(u64, String, Record)>,

    /// `read_log(0, ..)`: the local changes after the trim.
    log: Vec<Change>,
    /// `state_chunk(&[], ..)`: the newest version of every key, key order.
    state: Vec<SnapRow>,
    /// `inbox_peek(..)` as (origin, hlc, record), oldest first.
    inbox: Vec<(String, u64, Record)>,
}

fn journal_fixture() -> JournalFixture {
    let location = b"location".as_slice();
    let alice = |n| {
        contact(
            n,
            location,
            b"alice@example.com",
            b"sip:alice@198.51.100.1:5062;transport=tcp",
        )
    };
    // Not UTF-8 in the key itself.
    let bob = |n| {
        contact(
            n,
            location,
            b"b\xf6b@example.com",
            b"sip:b\xf6b@198.51.100.2;ob",
        )
    };
    // SER-0.9 style alias in a second usrloc table, registered without
    // expiry.
    let perm = Contact {
        expires: 0,
        ..contact(8, b"aliases", b"1234@example.com", b"sip:alice@example.com")
    };
    let dan = |n| {
        contact(
            n,
            location,
            b"dan@example.com",
            b"sip:dan@[2001:db8::9]:5060",
        )
    };
    let carol = |n| {
        contact(
            n,
            location,
            b"carol@example.org",
            b"sip:carol@192.0.2.21:5080",
        )
    };
    let sales = alias(b"s\xe4les", b"example.com", b"alice", b"example.com");
    let support = alias(b"support", b"example.com", b"b\xf6b", b"example.com");
    let info = alias(b"info", b"example.org", b"carol", b"example.org");
    let billing = alias(b"billing", b"example.org", b"carol", b"example.org");

    let local = vec![
        (at(1000, 0), upsert(alice(1))),
        (at(2000, 1), upsert(bob(2))),
        (at(3000, 0), alias_rec(Op::Upsert, sales)),
        (at(4000, 0), alias_rec(Op::Upsert, support.clone())),
        (at(5000, 0), upsert(alice(5))), // a refresh
        (at(6000, 0), delete(bob(6))),   // de-registered
        (at(7000, 3), alias_rec(Op::Delete, support)),
        (at(8000, 0), upsert(perm.clone())),
        (at(9000, 0), upsert(dan(9))), // overtaken by PEER's below
    ];
    let batches = [
        vec![
            change(1, at(1500, 0), upsert(carol(21))), // applied
            change(2, at(2500, 0), alias_rec(Op::Upsert, info)),
            change(3, at(9500, 0), upsert(dan(23))),
        ],
        vec![
            change(4, at(10_000, 0), delete(carol(24))),
            change(5, at(4500, 0), upsert(alice(25))), // older than ours: not staged
            change(6, at(11_000, 7), alias_rec(Op::Upsert, billing)),
        ],
    ];
    let mut snapshot = vec![
        SnapRow {
            origin: SNAP_FROM.into(),
            hlc: at(800, 0),
            record: upsert(contact(
                31,
                location,
                b"erin@example.net",
                b"sip:erin@192.0.2.31",
            )),
        },
        SnapRow {
            origin: PEER.into(),
            hlc: at(900, 2),
            record: delete(contact(
                32,
                location,
                b"frank@example.net",
                b"sip:frank@192.0.2.32",
            )),
        },
        SnapRow {
            origin: SNAP_FROM.into(),
            hlc: at(950, 0),
            record: alias_rec(
                Op::Upsert,
                alias(b"noc", b"example.net", b"erin", b"example.net"),
            ),
        },
    ];
    snapshot.sort_by_key(|r| r.record.key());
    let restore = vec![(at(8000, 0), NODE.to_string(), upsert(perm))];

    let log = local
        .iter()
        .enumerate()
        .map(|(i, (hlc, r))| change(i as u64 + 1, *hlc, r.clone()))
        .filter(|c| c.seq > TRIM_UPTO)
        .collect();

    // The state: last writer wins on (hlc, origin) over every version
    // written, local, staged or in the snapshot.
    let mut newest: BTreeMap<Vec<u8>, SnapRow> = BTreeMap::new();
    let versions = local
        .iter()
        .map(|(h, r)| (NODE, *h, r))
        .chain(batches.iter().flatten().map(|c| (PEER, c.hlc, &c.record)))
        .chain(
            snapshot
                .iter()
                .map(|r| (r.origin.as_str(), r.hlc, &r.record)),
        );
    for (origin, hlc, record) in versions {
        let e = newest.entry(record.key()).or_insert_with(|| SnapRow {
            origin: origin.into(),
            hlc,
            record: record.clone(),
        });
        if (hlc, origin) > (e.hlc, e.origin.as_str()) {
            *e = SnapRow {
                origin: origin.into(),
                hlc,
                record: record.clone(),
            };
        }
    }
    let state = newest.into_values().collect();

    // Staged and not applied: the first batch without its applied first
    // entry, the second without the change that lost, the snapshot's rows
    // and the restored contact.
    let inbox = batches[0][1..]
        .iter()
        .chain([&batches[1][0], &batches[1][2]])
        .map(|c| (PEER.to_string(), c.hlc, c.record.clone()))
        .chain(
            snapshot
                .iter()
                .map(|r| (r.origin.clone(), r.hlc, r.record.clone())),
        )
        .chain(restore.iter().map(|(h, o, r)| (o.clone(), *h, r.clone())))
        .collect();

    JournalFixture {
        local,
        acked: vec![("sip2", 7), ("sip3", 4)],
        members: vec![
            ("sip2", "tcp:10.0.0.2:5999"),
            ("sip3", "tcp:10.0.0.3:5999"),
            ("sip5", "tcp:[2001:db8::5]:5999"),
        ],
        batches,
        snapshot,
        restore,
        log,
        state,
        inbox,
    }
}

/// Every frame kind, one file each, numbered in the order of a
/// conversation (sip1 dialing sip2).
fn frames() -> Vec<(&'static str, Frame)> {
    let j = journal_fixture();
    // Literal, not the constants of the code: these are release 1's.
    let magic = *b"SSYN";
    let version = 1u16;
    vec![
        (
            "01-challenge",
            Frame::Challenge {
                magic,
                version,
                node_id: "sip2".into(),
                nonce: NONCE_A,
            },
        ),
        (
            "02-hello",
            Frame::Hello {
                magic,
                version,
                node_id: "sip1".into(),
                listen: "tcp:10.0.0.1:5999".into(),
                nonce: NONCE_D,
                tag: hex32(HELLO_TAG),
            },
        ),
        (
            "03-welcome",
            Frame::Welcome {
                tag: hex32(WELCOME_TAG),
                resume_after: 6,
                snapshot: None,
            },
        ),
        (
            "04-welcome-resume",
            Frame::Welcome {
                tag: hex32(WELCOME_TAG),
                resume_after: 0x0123_4567_89ab,
                snapshot: Some(SnapshotResume {
                    upto: SNAP_UPTO,
                    after_key: j.snapshot.last().unwrap().record.key(),
                }),
            },
        ),
        (
            "05-refuse",
            Frame::Refuse {
                reason: "refusé: node id sip1 is already connected".into(),
            },
        ),
        ("06-batch", Frame::Batch { changes: j.log }),
        ("07-ack", Frame::Ack { upto: 9 }),
        (
            "08-tempfail",
            Frame::TempFail {
                upto: 70_000,
                reason: "database or disk is full".into(),
            },
        ),
        (
            "09-snapshot-chunk",
            Frame::SnapshotChunk {
                upto: SNAP_UPTO,
                chunk: 0,
                rows: j.state,
                last: false,
            },
        ),
        (
            "10-snapshot-chunk-last",
            Frame::SnapshotChunk {
                upto: SNAP_UPTO,
                chunk: 1,
                rows: vec![],
                last: true,
            },
        ),
        ("11-snapshot-ack", Frame::SnapshotAck { chunk: 1 }),
        (
            "12-members",
            Frame::Members {
                members: vec![
                    Member {
                        node_id: "sip2".into(),
                        address: "tcp:10.0.0.2:5999".into(),
                        forgotten: false,
                    },
                    Member {
                        node_id: "sip5".into(),
                        address: "tcp:[2001:db8::5]:5999".into(),
                        forgotten: false,
                    },
                    Member {
                        node_id: FORGOTTEN.0.into(),
                        address: FORGOTTEN.1.into(),
                        forgotten: true,
                    },
                ],
            },
        ),
    ]
}

// ---------------------------------------------------------------------------
// The generator (run once, by hand; kept to show how the files were made).
// ---------------------------------------------------------------------------

fn write_journal(path: &Path, f: &JournalFixture) {
    assert!(!path.exists(), "{} exists", path.display());
    let mut j = Journal::open(path).unwrap();
    let n = f.local.len();
    assert_eq!(j.append_local(NODE, &f.local).unwrap(), (n as u64, n));
    assert_eq!(j.trim(TRIM_UPTO).unwrap(), TRIM_UPTO as usize);
    for (peer, upto) in &f.acked {
        j.set_acked(peer, *upto).unwrap();
    }
    for (id, address) in &f.members {
        j.save_member(id, address).unwrap();
    }
    j.save_member(FORGOTTEN.0, FORGOTTEN.1).unwrap();
    j.set_acked(FORGOTTEN.0, n as u64).unwrap();
    j.forget_member(FORGOTTEN.0).unwrap();

    let first = j.stage_remote(PEER, &f.batches[0]).unwrap();
    assert_eq!((first.upto, first.fresh, first.superseded), (3, 3, 0));
    let applied = j.inbox_peek(1).unwrap()[0].id;
    j.inbox_done(applied).unwrap();
    let second = j.stage_remote(PEER, &f.batches[1]).unwrap();
    assert_eq!((second.upto, second.fresh, second.superseded), (6, 3, 1));
    j.stage_snapshot(SNAP_FROM, SNAP_UPTO, &f.snapshot, false)
        .unwrap();
    j.stage_restore(&f.restore).unwrap();
    // Closing the only connection checkpoints the WAL into the file and
    // removes it.
    drop(j);
    for side in ["-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{side}", path.display()));
        assert!(!p.exists(), "{} left after closing", p.display());
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the fixture into tests/fixtures/release-1 if it is not there
/// yet. Once committed it is never replaced: the files then go to a
/// temporary directory, the frames must come out identical to the
/// committed ones and the new journal must pass the same checks.
#[test]
#[ignore = "writes the committed fixture; run by hand, see the top of the file"]
fn generate_release_1_fixture() {
    let committed = fixture_dir();
    let out = if committed.join("journal.db").exists() {
        let out = std::env::temp_dir().join("sersync-release-1-regenerated");
        let _ = fs::remove_dir_all(&out);
        eprintln!(
            "{} is committed and is never regenerated; writing to {} to compare",
            committed.display(),
            out.display()
        );
        out
    } else {
        committed.clone()
    };
    fs::create_dir_all(out.join("frames")).unwrap();

    write_journal(&out.join("journal.db"), &journal_fixture());
    for (name, frame) in frames() {
        let mut bytes = Vec::new();
        frame.write_to(&mut bytes).unwrap();
        fs::write(out.join(format!("frames/{name}.bin")), &bytes).unwrap();
    }
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!("written by the code at {head}");
    for (file, _) in COMMITTED {
        let bytes = fs::read(out.join(file)).unwrap();
        eprintln!(
            "    (\"{file}\", \"{}\"), // {} bytes",
            sha256_hex(&bytes),
            bytes.len()
        );
    }

    // Checked on a copy: the written file stays as the release closed it.
    let check = tempfile::tempdir().unwrap();
    let copy = check.path().join("sersync.db");
    fs::copy(out.join("journal.db"), &copy).unwrap();
    check_journal(&copy);
    if out != committed {
        for (name, _) in frames() {
            let file = format!("frames/{name}.bin");
            assert_eq!(
                fs::read(out.join(&file)).unwrap(),
                fs::read(committed.join(&file)).unwrap(),
                "{file}: today's code writes other bytes than release 1"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// A copy of the committed journal in a fresh directory: opening writes
/// (migrations, WAL), and the committed file must stay as it is.
fn journal_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sersync.db");
    fs::copy(fixture_dir().join("journal.db"), &path).unwrap();
    (dir, path)
}

/// Opens the journal at `path` with today's code (migrating it) and checks
/// that it holds everything the generator wrote, twice: the second open
/// finds the journal already migrated.
fn check_journal(path: &Path) {
    for _ in 0..2 {
        let mut j = Journal::open(path).unwrap_or_else(|e| panic!("opening the fixture: {e}"));
        check_opened(&mut j);
    }
}

fn check_opened(j: &mut Journal) {
    let f = journal_fixture();

    // The local log: trimmed up to TRIM_UPTO, every field of every change.
    assert_eq!(j.read_log(0, 1000).unwrap(), f.log);
    assert_eq!(
        j.read_log(6, 1000).unwrap(),
        f.log[6 - TRIM_UPTO as usize..]
    );
    assert_eq!(j.read_log(0, 2).unwrap(), f.log[..2]);
    assert_eq!(j.last_seq().unwrap(), f.local.len() as u64);
    assert_eq!(j.first_available().unwrap(), TRIM_UPTO + 1);
    assert_eq!(j.log_len().unwrap(), f.log.len() as u64);
    assert_eq!(j.meta("seq_floor").unwrap(), Some(TRIM_UPTO as i64));
    for c in &f.log {
        assert_eq!(j.hlc_of(c.seq).unwrap(), Some(c.hlc), "seq {}", c.seq);
    }
    assert_eq!(j.hlc_of(1).unwrap(), None, "trimmed");

    // The state: every key's newest version, tombstones included.
    assert_eq!(j.state_chunk(&[], 1000).unwrap(), f.state);
    assert_eq!(j.state_len().unwrap(), f.state.len() as u64);
    for row in &f.state {
        let key = row.record.key();
        assert_eq!(j.state_of(&key).unwrap().as_ref(), Some(&row.record));
        assert_eq!(j.state_stamp(&key).unwrap(), Some(row.hlc));
    }
    // Chunked as a snapshot sends it: after a key, in key order.
    let third = f.state[2].record.key();
    assert_eq!(j.state_chunk(&third, 3).unwrap(), f.state[3..6]);
    // Last writer won both ways: our refresh over the peer's older
    // version of alice, the peer's newer version of dan over ours.
    let (alice_hlc, alice) = &f.local[4];
    assert_eq!(j.state_stamp(&alice.key()).unwrap(), Some(*alice_hlc));
    let dan = &f.batches[0][2];
    assert_eq!(
        j.state_of(&dan.record.key()).unwrap(),
        Some(dan.record.clone())
    );
    let mut live_contacts = j.live_contacts(|_| true).unwrap();
    live_contacts.sort_by_key(|(_, _, r)| r.key());
    let want_live: Vec<_> = f
        .state
        .iter()
        .filter(|r| matches!(r.record, Record::Contact { op: Op::Upsert, .. }))
        .map(|r| (r.hlc, r.origin.clone(), r.record.clone()))
        .collect();
    assert_eq!(live_contacts, want_live);
    assert_eq!(live_contacts.len(), 4);
    let mut live_aliases = j.live_alias_keys(b"dbaliases").unwrap();
    live_aliases.sort();
    let want_aliases: Vec<_> = f
        .state
        .iter()
        .filter(|r| matches!(r.record, Record::Alias { op: Op::Upsert, .. }))
        .map(|r| r.record.key())
        .collect();
    assert_eq!(live_aliases, want_aliases);
    assert_eq!(live_aliases.len(), 4);

    // Positions: what each peer acknowledged, what we hold from each.
    for (peer, upto) in &f.acked {
        assert_eq!(j.acked(peer).unwrap(), *upto, "{peer}");
        assert!(j.has_acked(peer).unwrap(), "{peer}");
    }
    assert_eq!(j.min_acked().unwrap(), Some(4));
    assert_eq!(j.received_upto(PEER).unwrap(), 6);
    assert_eq!(
        j.received_upto(SNAP_FROM).unwrap(),
        0,
        "snapshot unfinished"
    );

    // Members: the remembered ones, and the forgotten one with nothing
    // kept for it.
    let mut want_members: Vec<(String, String, bool)> = f
        .members
        .iter()
        .map(|(id, a)| (id.to_string(), a.to_string(), false))
        .chain([(FORGOTTEN.0.into(), FORGOTTEN.1.into(), true)])
        .collect();
    want_members.sort();
    assert_eq!(j.members().unwrap(), want_members);
    assert!(j.is_forgotten(FORGOTTEN.0).unwrap());
    for (id, _) in &f.members {
        assert!(!j.is_forgotten(id).unwrap(), "{id}");
    }
    assert_eq!(j.acked(FORGOTTEN.0).unwrap(), 0);
    assert!(!j.has_acked(FORGOTTEN.0).unwrap());

    // The interrupted snapshot: where it resumes.
    let last_key = f.snapshot.last().unwrap().record.key();
    assert_eq!(
        j.snapshot_progress(SNAP_FROM).unwrap(),
        Some((SNAP_UPTO, last_key))
    );
    assert_eq!(j.snapshot_progress(PEER).unwrap(), None);

    // The inbox: staged, not applied, oldest first.
    let staged = j.inbox_peek(1000).unwrap();
    let got: Vec<_> = staged
        .iter()
        .map(|s| (s.origin.clone(), s.hlc, s.record.clone()))
        .collect();
    assert_eq!(got, f.inbox);
    assert!(staged.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(j.inbox_len().unwrap(), f.inbox.len() as u64);
    let keys: HashSet<Vec<u8>> = f.inbox.iter().map(|(_, _, r)| r.key()).collect();
    assert_eq!(j.inbox_keys().unwrap(), keys);
    // None overtaken since it was staged: all still to be applied.
    let (current, last_id) = j.inbox_current(1000).unwrap();
    assert_eq!(current.len(), f.inbox.len());
    assert_eq!(last_id, staged.last().map(|s| s.id));
}

#[test]
fn the_fixture_journal_opens_migrates_and_holds_everything() {
    let (_dir, path) = journal_copy();
    check_journal(&path);
}

#[test]
fn the_fixture_journal_is_schema_6_as_committed() {
    let (_dir, path) = journal_copy();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 6);
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "inbox",
            "log",
            "members",
            "meta",
            "peer_acked",
            "received",
            "snapshot_in",
            "state"
        ]
    );
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for side in ["journal.db-wal", "journal.db-shm"] {
        assert!(
            !fixture_dir().join(side).exists(),
            "{side} beside the fixture"
        );
    }
}

/// After opening, the old journal goes on working as a journal of today:
/// numbering continues, resends are recognised, the snapshot resumes.
#[test]
fn the_fixture_journal_keeps_working_after_opening() {
    let (_dir, path) = journal_copy();
    let f = journal_fixture();
    let mut j = Journal::open(&path).unwrap();

    let next = upsert(contact(
        40,
        b"location",
        b"gina@example.com",
        b"sip:gina@192.0.2.40",
    ));
    assert_eq!(
        j.append_local(NODE, &[(at(20_000, 0), next.clone())])
            .unwrap(),
        (10, 1)
    );
    assert_eq!(
        j.read_log(9, 10).unwrap(),
        [change(10, at(20_000, 0), next)]
    );
    // The same version again is nothing new.
    let (hlc, perm) = f.local[7].clone();
    assert_eq!(j.append_local(NODE, &[(hlc, perm)]).unwrap(), (10, 0));

    // A resend of the second batch is skipped; what follows is staged.
    let resent = j.stage_remote(PEER, &f.batches[1]).unwrap();
    assert_eq!((resent.upto, resent.fresh), (6, 0));
    let later = change(
        7,
        at(21_000, 0),
        delete(contact(
            23,
            b"location",
            b"dan@example.com",
            b"sip:dan@[2001:db8::9]:5060",
        )),
    );
    let out = j.stage_remote(PEER, std::slice::from_ref(&later)).unwrap();
    assert_eq!((out.upto, out.fresh, out.superseded), (7, 1, 0));
    assert_eq!(j.state_of(&later.record.key()).unwrap(), Some(later.record));

    // The interrupted snapshot finishes: the position moves to its upto.
    j.stage_snapshot(SNAP_FROM, SNAP_UPTO, &[], true).unwrap();
    assert_eq!(j.snapshot_progress(SNAP_FROM).unwrap(), None);
    assert_eq!(j.received_upto(SNAP_FROM).unwrap(), SNAP_UPTO);

    // Applied, acknowledged, trimmed.
    let last = j.inbox_peek(1000).unwrap().last().unwrap().id;
    j.inbox_done(last).unwrap();
    assert_eq!(j.inbox_len().unwrap(), 0);
    j.set_acked("sip2", 10).unwrap();
    j.set_acked("sip3", 10).unwrap();
    assert_eq!(j.min_acked().unwrap(), Some(10));
    assert_eq!(j.trim(10).unwrap(), 8);
    assert_eq!(j.first_available().unwrap(), 11);
    // Each state row kept its expiry: once past it (and retention), the
    // 7 contacts that expire go, present or deleted; the permanent
    // contact and the 5 aliases stay.
    assert_eq!(j.state_len().unwrap(), 13);
    assert_eq!(
        j.purge_state(4_200_000_000, at(100_000, 0), 1000).unwrap(),
        7
    );
    assert_eq!(j.state_len().unwrap(), 6);
    assert!(j.state_of(&f.local[7].1.key()).unwrap().is_some());
    drop(j);
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.last_seq().unwrap(), 10);
    assert!(j.is_forgotten(FORGOTTEN.0).unwrap());
}

fn frame_file(name: &str) -> Vec<u8> {
    let p = fixture_dir().join(format!("frames/{name}.bin"));
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn each_fixture_frame_decodes_to_the_expected_frame_and_encodes_to_the_same_bytes() {
    for (name, want) in frames() {
        let bytes = frame_file(name);
        let mut r = FrameReader::new();
        r.extend(&bytes);
        let got = r
            .next_frame()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(got, want, "{name}");
        assert_eq!(r.buffered(), 0, "{name}: bytes after the frame");
        let mut again = Vec::new();
        got.write_to(&mut again).unwrap();
        assert_eq!(again, bytes, "{name}: encoded differently today");
    }
}

#[test]
fn the_fixture_frames_decode_as_one_stream_byte_by_byte() {
    let want: Vec<Frame> = frames().into_iter().map(|(_, f)| f).collect();
    let stream: Vec<u8> = frames()
        .iter()
        .flat_map(|(name, _)| frame_file(name))
        .collect();
    let mut r = FrameReader::new();
    let mut got = Vec::new();
    for b in &stream {
        r.extend(std::slice::from_ref(b));
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, want);
    assert_eq!(r.buffered(), 0);
}

/// The hello and welcome of the fixture are a valid release 1 handshake
/// of sip1 dialing sip2 with SECRET.
#[test]
fn the_fixture_handshake_tags_prove_the_secret() {
    let t = Transcript {
        nonce_a: &NONCE_A,
        nonce_d: &NONCE_D,
        dialer: "sip1",
        acceptor: "sip2",
    };
    let hello: Tag = hex32(HELLO_TAG);
    let welcome: Tag = hex32(WELCOME_TAG);
    assert!(auth::verify(SECRET, Role::Dialer, &t, &hello));
    assert!(auth::verify(SECRET, Role::Acceptor, &t, &welcome));
    assert!(!auth::verify(b"another secret", Role::Dialer, &t, &hello));
}

#[test]
fn the_fixture_files_are_the_committed_ones() {
    for (file, sha) in COMMITTED {
        let bytes = fs::read(fixture_dir().join(file)).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            *sha,
            "{file} changed: release 1's fixture is never regenerated; \
             a later release adds a fixture directory of its own"
        );
    }
    let mut on_disk: Vec<String> = fs::read_dir(fixture_dir().join("frames"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let listed: Vec<String> = frames()
        .iter()
        .map(|(name, _)| format!("{name}.bin"))
        .collect();
    assert_eq!(on_disk, listed);
}

/// The fixture's contacts carry every field of a contact, none left at
/// its default. Naming every field (no `..`) makes a field added to
/// `Contact` a compile error here: release 1's contacts do not have it.
#[test]
fn the_fixture_contacts_set_every_field() {
    let f = journal_fixture();
    let d = Contact::default();
    let mut contacts = 0;
    let records = f
        .local
        .iter()
        .map(|(_, r)| r)
        .chain(f.batches.iter().flatten().map(|c| &c.record))
        .chain(f.snapshot.iter().map(|r| &r.record));
    for r in records {
        let Record::Contact { contact: c, .. } = r else {
            continue;
        };
        contacts += 1;
        let Contact {
            domain,
            aor,
            contact,
            ruid,
            received,
            path,
            callid,
            user_agent,
            socket,
            instance,
            expires,
            last_modified,
            q,
            cseq,
            flags,
            cflags,
            methods,
            reg_id,
            server_id,
        } = c;
        assert_ne!(*domain, d.domain);
        assert_ne!(*aor, d.aor);
        assert_ne!(*contact, d.contact);
        assert_ne!(*ruid, d.ruid);
        assert_ne!(*received, d.received);
        assert_ne!(*path, d.path);
        assert_ne!(*callid, d.callid);
        assert_ne!(*user_agent, d.user_agent);
        assert_ne!(*socket, d.socket);
        assert_ne!(*instance, d.instance);
        assert!(
            *expires != d.expires || c.domain == b"aliases",
            "permanent only in aliases"
        );
        assert_ne!(*last_modified, d.last_modified);
        assert_ne!(*q, d.q);
        assert_ne!(*cseq, d.cseq);
        assert_ne!(*flags, d.flags);
        assert_ne!(*cflags, d.cflags);
        assert_ne!(*methods, d.methods);
        assert_ne!(*reg_id, d.reg_id);
        assert_ne!(*server_id, d.server_id);
        for bytes in [ruid, path, callid, user_agent] {
            assert!(std::str::from_utf8(bytes).is_err(), "not UTF-8: {bytes:?}");
        }
    }
    assert_eq!(contacts, 12);
}
