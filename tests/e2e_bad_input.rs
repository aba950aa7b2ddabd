//! Bad input against live Kamailio nodes with sersync (issue 6, "Bad
//! input"): what a user checks when garbage reaches a node.
//!
//! 1. Hostile or broken connections to sersync's listen port (random bytes,
//!    a garbage frame, an oversize length prefix, a truncated frame, a wrong
//!    secret, a replayed handshake, an unknown protocol version, a silent
//!    connection, a peer that authenticates and then never reads): each is
//!    refused or dropped with a line in the node's log, the node's memory
//!    stays bounded, replication with the real peer goes on, and the sipp
//!    registering on the attacked node all along sees no failure.
//! 2. Garbage parameters to every sersync RPC: a clear fault (code and what
//!    is wrong), and nothing changes (contacts, alias table, journal).
//! 3. A corrupt or truncated journal at start: SER still starts and serves
//!    SIP, the log names the file and what to do, sersync.status shows the
//!    error, the damaged file is kept; after a restart replication works in
//!    both directions again.
//!
//! Addresses 127.0.0.91–99 only.

#[path = "peer_support/mod.rs"]
mod peer;
#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::unix::io::FromRawFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use peer::*;
use serde_json::{json, Value};
use sersync::record::{Alias, Contact, Op, Record};
use sersync::wire::auth::Nonce;
use sersync::wire::{Frame, VERSION};
use support::*;

// ---------------------------------------------------------------------------
// Helpers

fn secret(cluster: &str) -> Vec<u8> {
    format!("e2e-secret-{cluster}").into_bytes()
}

/// Registers on the attacked node in the background, 40 users at a time
/// (one sipp run each, every one asserted to have no failed transaction),
/// until `stop`; returns how many were registered.
fn register_in_background(node: &Node, prefix: &str, stop: &AtomicBool, done: &AtomicUsize) {
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let regs: Vec<Reg> = (0..40)
            .map(|i| Reg::new(format!("{prefix}{round:03}x{i:02}"), 3600))
            .collect();
        sipp_register(node, &regs, 40, &format!("{prefix}{round:03}"));
        done.fetch_add(regs.len(), Ordering::Relaxed);
        round += 1;
    }
}

/// Runs `body` while sipp registers on `node` throughout; then stops sipp
/// and propagates a failure of either. Returns the users registered.
fn with_background_sipp(node: &Node, prefix: &str, body: impl FnOnce()) -> usize {
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let bg = s.spawn(|| register_in_background(node, prefix, &stop, &done));
        // sipp is registering before the first attack
        assert!(
            wait_until(Duration::from_secs(20), || done.load(Ordering::Relaxed) > 0
                || bg.is_finished()),
            "background sipp did not get going"
        );
        let r = catch_unwind(AssertUnwindSafe(body));
        stop.store(true, Ordering::Relaxed);
        let bg_result = bg.join();
        if let Err(p) = r {
            resume_unwind(p);
        }
        if let Err(p) = bg_result {
            resume_unwind(p);
        }
    });
    done.load(Ordering::Relaxed)
}

/// A TCP connection from `src` (127.0.0.x, so that nothing leaves the
/// test's addresses) to `dst`.
fn connect_from(src: &str, dst: &str, port: u16) -> TcpStream {
    let src: std::net::Ipv4Addr = src.parse().expect("source address");
    let dst = SocketAddrV4::new(dst.parse().expect("destination address"), port);
    let sin = |a: &SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it is handed to TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(&SocketAddrV4::new(src, 0));
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert!(rc == 0, "bind {src}: {}", std::io::Error::last_os_error());
        let remote = sin(&dst);
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert!(
            rc == 0,
            "connect {dst}: {}",
            std::io::Error::last_os_error()
        );
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
    }
}

/// Waits for the node to close the connection (EOF or reset); how long it
/// took. Panics if it stays open for `limit`.
fn closed_by_node(s: &mut TcpStream, limit: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return t0.elapsed(), // reset
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: the node kept the connection open for {limit:?}"
        );
    }
}

/// The PID of the node's sersync process (core.psx names it "sersync").
fn sersync_pid(node: &Node) -> u32 {
    let v = node.rpc("core.psx", json!([])).expect("core.psx");
    let list = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    for p in &list {
        let dsc = p.get("DSC").and_then(Value::as_str).unwrap_or_default();
        if dsc == "sersync" {
            if let Some(pid) = p.get("PID").and_then(Value::as_u64) {
                return pid as u32;
            }
        }
    }
    panic!(
        "no sersync process in core.psx on {}: {list:?}",
        node.name()
    );
}

/// Resident memory of a process in KiB (/proc/PID/status, VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for process {pid}"))
}

/// Replication between the attacked node and its real peer still works,
/// both ways: what the attacked node's sipp registered so far reaches the
/// peer, and a new registration on the peer reaches the attacked node.
fn still_replicates(attacked: &Node, peer: &Node, prefix: &str, step: &str) {
    let theirs = count_prefix(&attacked.contacts(), prefix);
    let user = format!("mark{step}");
    sipp_register(peer, &[Reg::new(user.clone(), 3600)], 10, &user);
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(20), || {
        let on_peer = count_prefix(&peer.contacts(), prefix);
        let here = has_user(&attacked.contacts(), &user);
        last = format!(
            "{} has {on_peer} of the {theirs} {prefix}* contacts {} had; {} has {user}: {here}",
            peer.name(),
            attacked.name(),
            attacked.name()
        );
        on_peer >= theirs && here
    });
    assert!(
        ok,
        "after {step}: replication stopped: {last}\n{}\n{}",
        attacked.status().summary(),
        peer.status().summary()
    );
}

// ---------------------------------------------------------------------------
// 1. The listen port

const ATTACKER: &str = "127.0.0.97";
/// Where the fake member of the never-reading test listens.
const STUCK_IP: &str = "127.0.0.98";

/// The attacked node: paces the attacks (log lines about connections
/// refused before authenticating are limited to one a second) and checks
/// after each that replication with its peer still works.
struct Target<'a> {
    node: &'a Node,
    peer: &'a Node,
    last: Instant,
    step: u32,
}

impl<'a> Target<'a> {
    fn new(node: &'a Node, peer: &'a Node) -> Self {
        Target {
            node,
            peer,
            last: Instant::now() - Duration::from_secs(2),
            step: 0,
        }
    }

    fn pace(&mut self) {
        let since = self.last.elapsed();
        if since < Duration::from_millis(1200) {
            sleep(Duration::from_millis(1200) - since);
        }
        self.last = Instant::now();
    }

    fn still_replicates(&mut self) {
        self.step += 1;
        still_replicates(self.node, self.peer, "bg", &format!("{:02}", self.step));
    }

    /// One hostile connection: `act` gets it after the node's challenge;
    /// then the node must close it and log a line with every one of
    /// `needles` (the first counts lines before the attack). Returns it.
    fn attack(
        &mut self,
        what: &str,
        needles: &[&str],
        act: impl FnOnce(&mut TcpStream, &str, &Nonce),
    ) -> String {
        self.pace();
        let before = count_log(self.node, &needles[..1]);
        let mut s = connect_from(ATTACKER, &self.node.ip, SERSYNC_PORT);
        let (id, nonce) = challenge(&mut s);
        act(&mut s, &id, &nonce);
        closed_by_node(&mut s, Duration::from_secs(10), what);
        let line = expect_log(self.node, needles, before, what);
        self.still_replicates();
        line
    }
}

/// Reads the node's answer to a hello: a refusal whose reason says `why`.
fn expect_refusal(s: &mut TcpStream, why: &str, what: &str) {
    match read_frame(s) {
        Some(Frame::Refuse { reason }) => {
            assert!(reason.contains(why), "{what} refused with {reason:?}")
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn hostile_connections_are_dropped_while_sipp_registers() {
    let t0 = Instant::now();
    let c = Cluster::start("bad-peers", 91, 2);
    eprintln!(
        "e2e: cluster up after {:.1} s (machine lock included)",
        t0.elapsed().as_secs_f64()
    );
    let (n1, n2) = (c.node(1), c.node(2));
    let secret = secret("bad-peers");
    let ip = n1.ip.clone();
    let rss_before = rss_kib(sersync_pid(n1));
    let mut target = Target::new(n1, n2);
    let dropped = "dropped incoming connection from 127.0.0.97";
    let refused = "refused incoming connection from 127.0.0.97";

    let registered = with_background_sipp(n1, "bg", || {
        // -- Random bytes ----------------------------------------------------
        let line = target.attack("random bytes", &[dropped, "protocol error"], |s, _, _| {
            let _ = s.write_all(&noise(64 << 10, 0x9e37_79b9_7f4a_7c15));
        });
        eprintln!("e2e: random bytes: {line}");

        // -- A small frame whose body is garbage -----------------------------
        target.attack("garbage frame", &[dropped, "malformed frame"], |s, _, _| {
            let mut bytes = 8u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0xff; 8]);
            s.write_all(&bytes).expect("sending");
        });

        // -- A length prefix of 4 GiB: refused before anything is allocated --
        target.attack(
            "oversize length prefix",
            &[dropped, "4294967295 bytes exceeds the maximum"],
            |s, _, _| s.write_all(&u32::MAX.to_be_bytes()).expect("sending"),
        );

        // -- Half a hello, then the peer goes away ---------------------------
        target.pace();
        let before = count_log(n1, &[dropped]);
        let mut s = connect_from(ATTACKER, &ip, SERSYNC_PORT);
        let (id, nonce) = challenge(&mut s);
        let mut bytes = Vec::new();
        hello(&secret, "half", &id, &nonce, VERSION, "tcp:127.0.0.99:5999")
            .write_to(&mut bytes)
            .expect("encoding");
        s.write_all(&bytes[..bytes.len() / 2]).expect("sending");
        drop(s);
        expect_log(
            n1,
            &[dropped, "closed by peer in the middle of a frame"],
            before,
            "truncated frame",
        );
        target.still_replicates();

        // -- Another cluster's secret -----------------------------------------
        target.attack(
            "wrong secret",
            &[refused, "intruder failed authentication"],
            |s, id, nonce| {
                let h = hello(
                    b"another-clusters-secret",
                    "intruder",
                    id,
                    nonce,
                    VERSION,
                    "tcp:127.0.0.99:5999",
                );
                send(s, &h);
                expect_refusal(s, "authentication failed", "wrong secret");
            },
        );

        // -- A valid hello recorded on one connection, replayed on another ----
        // The original is valid (the node welcomes it); it names the node's
        // own address as its listen address, so the node learns no member.
        target.pace();
        let before = count_log(n1, &[refused]);
        let mut s = connect_from(ATTACKER, &ip, SERSYNC_PORT);
        let (id, nonce) = challenge(&mut s);
        let recorded = hello(&secret, "n9", &id, &nonce, VERSION, &sersync_addr(&ip));
        send(&mut s, &recorded);
        assert!(
            matches!(read_frame(&mut s), Some(Frame::Welcome { .. })),
            "the recorded hello is accepted on its own connection"
        );
        drop(s);
        let mut s = connect_from(ATTACKER, &ip, SERSYNC_PORT);
        challenge(&mut s);
        send(&mut s, &recorded);
        assert!(
            matches!(read_frame(&mut s), Some(Frame::Refuse { .. })),
            "a replayed hello is refused"
        );
        closed_by_node(&mut s, Duration::from_secs(10), "replayed hello");
        expect_log(
            n1,
            &[refused, "n9 failed authentication"],
            before,
            "replayed handshake",
        );
        target.still_replicates();

        // -- A protocol version this node does not speak ---------------------
        let newer = format!("v{}", VERSION + 1);
        target.attack(
            "unknown protocol version",
            &[refused, "future speaks protocol", &newer],
            |s, id, nonce| {
                let h = hello(
                    &secret,
                    "future",
                    id,
                    nonce,
                    VERSION + 1,
                    "tcp:127.0.0.99:5999",
                );
                send(s, &h);
                expect_refusal(s, &format!("v{VERSION}"), "unknown version");
            },
        );

        // -- Connects, reads the challenge, sends nothing --------------------
        target.pace();
        let before = count_log(n1, &[dropped]);
        let mut s = connect_from(ATTACKER, &ip, SERSYNC_PORT);
        challenge(&mut s);
        let waited = closed_by_node(&mut s, Duration::from_secs(15), "silent peer");
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(10),
            "silent connection dropped after {waited:?} (handshake timeout: 5 s)"
        );
        expect_log(
            n1,
            &[dropped, "sent no hello within 5 s"],
            before,
            "silent peer",
        );
        target.still_replicates();

        // -- A member that authenticates, then never reads --------------------
        // It announces itself (a valid hello whose listen address is the
        // fake member's); the node dials it, the fake completes the
        // handshake and reads nothing more. The node streams to it until
        // its window is full, must not grow in memory, and drops it.
        let stuck = StuckMember::start((STUCK_IP, SERSYNC_PORT), secret.clone(), "n8");
        let before = count_log(n1, &["lost peer n8", "not reading"]);
        let mut s = connect_from(ATTACKER, &ip, SERSYNC_PORT);
        let (id, nonce) = challenge(&mut s);
        send(
            &mut s,
            &hello(&secret, "n8", &id, &nonce, VERSION, &sersync_addr(STUCK_IP)),
        );
        assert!(
            matches!(read_frame(&mut s), Some(Frame::Welcome { .. })),
            "n8's announcement is welcomed"
        );
        drop(s);
        assert!(
            wait_until(Duration::from_secs(15), || stuck
                .accepted
                .load(Ordering::Relaxed)
                > 0),
            "the node never dialed the announced member n8"
        );
        let pid = sersync_pid(n1);
        let mut rss_max = 0;
        let t_stuck = Instant::now();
        let mut sent_to_stuck = 0;
        let ok = wait_until(Duration::from_secs(50), || {
            rss_max = rss_max.max(rss_kib(pid));
            if let Ok((peers, _)) = n1.sersync_peers() {
                if let Some(p) = peers.iter().find(|p| p.node_id == "n8") {
                    sent_to_stuck = sent_to_stuck.max(p.sent);
                }
            }
            count_log(n1, &["lost peer n8", "not reading"]) > before
        });
        assert!(
            ok,
            "a member that never reads was not dropped within {:?}; log tail:\n{}",
            t_stuck.elapsed(),
            n1.log_tail(15)
        );
        eprintln!(
            "e2e: never-reading member dropped after {:.1} s; {sent_to_stuck} records sent to it; \
             sersync RSS {} KiB at start, at most {rss_max} KiB meanwhile",
            t_stuck.elapsed().as_secs_f64(),
            rss_before
        );
        assert!(sent_to_stuck > 0, "nothing was sent to the stuck member");
        assert!(
            rss_max < rss_before + 32 * 1024,
            "sersync's memory grew from {rss_before} KiB to {rss_max} KiB with a peer not reading"
        );
        // It is gone for good.
        assert_eq!(
            n1.rpc("sersync.forget", json!(["n8"]))
                .expect("sersync.forget n8"),
            json!("ok")
        );
        drop(stuck);
        target.still_replicates();
    });

    // Everything sipp registered on the attacked node is on its peer too.
    let want = registered;
    wait_converged(
        &c.all(),
        Duration::from_secs(60),
        "after the attacks",
        |t| {
            let n = count_prefix(t, "bg");
            if n == want {
                Ok(())
            } else {
                Err(format!("{n} bg* contacts, sipp registered {want}"))
            }
        },
    );
    let st = n1.status();
    assert_eq!(st.running, 1, "sersync stopped: {}", st.summary());
    let rss_end = rss_kib(sersync_pid(n1));
    assert!(
        rss_end < rss_before + 32 * 1024,
        "sersync's memory grew from {rss_before} KiB to {rss_end} KiB"
    );
    eprintln!(
        "e2e: bad peers: {registered} registrations during the attacks, all replicated; \
         {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 2. Garbage RPC parameters

/// What must not change when an RPC fails.
#[derive(Debug, PartialEq)]
struct Unchanged {
    contacts: BTreeSet<(String, String)>,
    aliases: BTreeSet<String>,
    journaled: u64,
    last_seq: u64,
    journal_rows: i64,
    peers: Vec<String>,
}

fn unchanged(node: &Node) -> Unchanged {
    let st = node.status();
    let aliases = node
        .rpc("sersync.alias_list", json!([]))
        .expect("sersync.alias_list")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| v.to_string())
        .collect();
    Unchanged {
        contacts: node.contacts().into_keys().collect(),
        aliases,
        journaled: st.journaled,
        last_seq: st.last_seq,
        journal_rows: node
            .journal_int("SELECT (SELECT count(*) FROM log) + (SELECT count(*) FROM state)")
            .expect("journal"),
        peers: st
            .peers
            .iter()
            .map(|p| format!("{} {}", p.node_id, p.address))
            .collect(),
    }
}

#[test]
fn garbage_rpc_parameters_get_clear_errors_and_change_nothing() {
    let t0 = Instant::now();
    let c = Cluster::start("bad-rpc", 93, 2);
    eprintln!(
        "e2e: cluster up after {:.1} s (machine lock included)",
        t0.elapsed().as_secs_f64()
    );
    let (n1, n2) = (c.node(1), c.node(2));
    sipp_register(
        n1,
        &(0..5)
            .map(|i| Reg::new(format!("rpc{i}"), 3600))
            .collect::<Vec<_>>(),
        10,
        "rpc-users",
    );
    n1.http_rpc(
        "sersync.alias_add",
        json!(["sip:sales@example.com", "sip:alice@example.com"]),
    )
    .expect("alias_add");
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "initial contacts",
        expect_contacts(5),
    );
    c.wait_settled(Duration::from_secs(30));
    let before1 = unchanged(n1);
    let before2 = unchanged(n2);
    assert_eq!(before1.aliases.len(), 1, "{before1:?}");

    // A valid apply payload, to cut short, and one with a record SER must
    // refuse (a contact without AOR).
    let rec = Record::Contact {
        op: Op::Upsert,
        contact: Contact {
            domain: b"location".to_vec(),
            aor: b"intruder".to_vec(),
            contact: b"sip:intruder@192.0.2.1".to_vec(),
            ruid: b"ruid-intruder".to_vec(),
            expires: unix_now() + 3600,
            ..Default::default()
        },
    };
    let good = sersync::apply::payload::encode(std::slice::from_ref(&rec));
    let truncated = good[..good.len() / 2].to_string();
    let truncated_aligned = good[..(good.len() / 2) & !3].to_string();
    let no_aor = sersync::apply::payload::encode(&[Record::Contact {
        op: Op::Upsert,
        contact: Contact {
            domain: b"location".to_vec(),
            contact: b"sip:nobody@192.0.2.1".to_vec(),
            ruid: b"ruid-nobody".to_vec(),
            ..Default::default()
        },
    }]);
    let unknown_table = sersync::apply::payload::encode(&[Record::Contact {
        op: Op::Upsert,
        contact: Contact {
            domain: b"no_such_table".to_vec(),
            aor: b"intruder".to_vec(),
            contact: b"sip:intruder@192.0.2.1".to_vec(),
            ruid: b"ruid-intruder2".to_vec(),
            ..Default::default()
        },
    }]);
    let bad_alias = sersync::apply::payload::encode(&[Record::Alias {
        op: Op::Upsert,
        alias: Alias {
            table: b"dbaliases; DROP TABLE location".to_vec(),
            ..Default::default()
        },
    }]);
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let huge = "x".repeat(3000);
    let binary = "\u{1}\u{2}\u{7f}\u{fffd}\u{0}é\u{202e}";

    // (method, params, code, what the message must say)
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        // status and peers take nothing
        ("sersync.status", json!(["x"]), 400, "takes no parameters"),
        ("sersync.status", json!([1, 2]), 400, "takes no parameters"),
        ("sersync.peers", json!(["n2"]), 400, "takes no parameters"),
        (
            "sersync.peers",
            json!([{"a": 1}]),
            400,
            "takes no parameters",
        ),
        // forget: one known printable node id, not this node
        (
            "sersync.forget",
            json!([]),
            400,
            "Expected one string parameter",
        ),
        (
            "sersync.forget",
            json!(["n2", "n2"]),
            400,
            "Too many parameters",
        ),
        ("sersync.forget", json!([""]), 400, "Empty node_id"),
        (
            "sersync.forget",
            json!([huge]),
            400,
            "at most 63 characters",
        ),
        ("sersync.forget", json!([binary]), 400, "printable ASCII"),
        ("sersync.forget", json!(["n 2"]), 400, "printable ASCII"),
        ("sersync.forget", json!(["n1"]), 400, "is this node"),
        ("sersync.forget", json!(["nobody"]), 404, "not a member"),
        ("sersync.forget", json!([{"id": "n2"}]), 400, "string"),
        ("sersync.forget", json!([["n2"]]), 400, "string"),
        // apply: one base64 payload of a batch this module reads
        (
            "sersync.apply",
            json!([]),
            400,
            "Expected one string parameter",
        ),
        (
            "sersync.apply",
            json!([good, good]),
            400,
            "Too many parameters",
        ),
        ("sersync.apply", json!([""]), 400, "Empty payload"),
        (
            "sersync.apply",
            json!(["not base64 at all!"]),
            400,
            "Malformed payload: not base64",
        ),
        (
            "sersync.apply",
            json!([b64(&noise(300, 7))]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([b64(b"\x01")]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([truncated]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([truncated_aligned]),
            400,
            "Malformed payload",
        ),
        ("sersync.apply", json!([binary]), 400, "Malformed payload"),
        ("sersync.apply", json!([huge]), 400, "Malformed payload"),
        (
            "sersync.apply",
            json!([no_aor]),
            500,
            "Apply failed after 0 record",
        ),
        (
            "sersync.apply",
            json!([unknown_table]),
            500,
            "Apply failed after 0 record",
        ),
        (
            "sersync.apply",
            json!([bad_alias]),
            500,
            "Apply failed after 0 record",
        ),
        ("sersync.apply", json!([{"payload": good}]), 400, "string"),
        // alias calls (more in tests/e2e_aliases.rs)
        (
            "sersync.alias_add",
            json!([]),
            400,
            "Expected alias_uri target_uri pairs",
        ),
        ("sersync.alias_add", json!([""]), 400, ""),
        ("sersync.alias_add", json!(["", ""]), 400, "Parameter 1"),
        (
            "sersync.alias_add",
            json!([binary, "sip:t@example.org"]),
            400,
            "Parameter 1",
        ),
        (
            "sersync.alias_add",
            json!(["sip:a@example.com", huge]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_add",
            json!(["sip:a@example.com", {"x": 1}]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_add",
            json!(["sip:a@exa mple.com", "sip:t@example.org"]),
            400,
            "",
        ),
        (
            "sersync.alias_replace",
            json!([]),
            400,
            "Expected alias_uri target_uri pairs",
        ),
        (
            "sersync.alias_replace",
            json!(["sip:sales@example.com"]),
            400,
            "",
        ),
        (
            "sersync.alias_replace",
            json!(["sip:sales@example.com", "sip:"]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_replace",
            json!([binary, binary]),
            400,
            "Parameter 1",
        ),
        ("sersync.alias_rm", json!([]), 400, "got 0 parameters"),
        ("sersync.alias_rm", json!([""]), 400, ""),
        ("sersync.alias_rm", json!([huge]), 400, "Parameter 1"),
        (
            "sersync.alias_rm",
            json!(["sip:sales@example.com", [1]]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_rm",
            json!(["sip:sales@example.com\nsip:x@y z w"]),
            400,
            "Line 2",
        ),
        (
            "sersync.alias_list",
            json!(["a", "b"]),
            400,
            "at most one parameter",
        ),
        ("sersync.alias_list", json!([""]), 400, ""),
        ("sersync.alias_list", json!([binary]), 400, "Parameter 1"),
        ("sersync.alias_list", json!([{"a": 1}]), 400, "Parameter 1"),
        (
            "sersync.alias_rescan",
            json!(["now"]),
            400,
            "takes no parameters",
        ),
        (
            "sersync.alias_rescan",
            json!([0]),
            400,
            "takes no parameters",
        ),
    ];
    let mut failures = Vec::new();
    for (method, params, code, needle) in &cases {
        let r = n1.http_rpc(method, params.clone());
        let shown: String = params.to_string().chars().take(80).collect();
        match r {
            Ok(v) => failures.push(format!("{method} {shown}: accepted, replied {v}")),
            Err(f) => {
                if f.code != *code || !f.message.contains(needle) || f.message.trim().is_empty() {
                    failures.push(format!(
                        "{method} {shown}: want {code} with {needle:?}, got {} {:?}",
                        f.code, f.message
                    ));
                } else {
                    eprintln!("e2e: {method} {shown}: {} {}", f.code, f.message);
                }
            }
        }
    }
    // The same through kamcmd (binrpc: typed parameters, no JSON).
    for (args, needle) in [
        (&["sersync.status", "x"][..], "takes no parameters"),
        (&["sersync.peers", "1", "2"][..], "takes no parameters"),
        (&["sersync.forget"][..], "Expected one string parameter"),
        (
            &["sersync.apply", "%%%"][..],
            "Malformed payload: not base64",
        ),
        (
            &["sersync.alias_list", "a", "b"][..],
            "at most one parameter",
        ),
        (&["sersync.alias_rescan", "x"][..], "takes no parameters"),
    ] {
        match n1.kamcmd(args) {
            Ok(out) => failures.push(format!("kamcmd {args:?}: accepted: {out}")),
            Err(e) if e.contains(needle) => eprintln!("e2e: kamcmd {args:?}: {}", e.trim()),
            Err(e) => failures.push(format!("kamcmd {args:?}: want {needle:?}, got {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} garbage calls not refused clearly:\n{}",
        failures.len(),
        cases.len() + 6,
        failures.join("\n")
    );

    // Nothing changed, here or on the peer, and the node still works.
    sleep(Duration::from_secs(1));
    assert_eq!(unchanged(n1), before1, "node 1 changed after garbage RPCs");
    assert_eq!(unchanged(n2), before2, "node 2 changed after garbage RPCs");
    let st = n1.status();
    assert!(st.running == 1 && st.peers.iter().all(|p| p.state == "up"));
    sipp_register(n1, &[Reg::new("rpc-after", 3600)], 10, "rpc-after");
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "after garbage RPCs",
        expect_contacts(6),
    );
}

// ---------------------------------------------------------------------------
// 3. A damaged journal at start

/// Stops `node`, damages its journal with `damage`, starts it again and
/// checks what a user sees; returns the file the journal was moved to.
fn damaged_journal_start(c: &mut Cluster, what: &str, damage: impl FnOnce(&std::path::Path)) {
    let journal = c.node(1).journal_path();
    c.node_mut(1).stop().expect("stopping node 1");
    // Everything in the main file, as after a clean shutdown.
    {
        let db = rusqlite::Connection::open(&journal).expect("opening the journal");
        db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
    }
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", journal.display()));
    }
    damage(&journal);
    let before = count_log(c.node(1), &["is corrupt"]);
    c.node_mut(1).start();
    let n1 = c.node(1);
    let line = expect_log(n1, &["is corrupt"], before, what);
    eprintln!("e2e: {what}: {line}");
    let path = journal.display().to_string();
    assert!(
        line.contains(&path) && line.contains("moved aside to") && line.contains("restart"),
        "{what}: the log line should name {path}, where it went and what to do: {line}"
    );
    let moved = line
        .split("moved aside to ")
        .nth(1)
        .and_then(|r| r.split([':', ';', ' ']).next())
        .unwrap_or_default()
        .to_string();
    assert!(
        moved.starts_with(&path) && std::path::Path::new(&moved).is_file(),
        "{what}: the damaged journal is kept: {moved:?} should exist"
    );
    // SER serves SIP, and says replication is off and why.
    sipp_register(
        n1,
        &[Reg::new(format!("while-off-{what}"), 3600)],
        10,
        &format!("while-off-{what}"),
    );
    let st = n1.status();
    assert!(
        st.running == 0 && st.last_error.contains("corrupt") && st.last_error.contains(&path),
        "{what}: sersync.status should show replication off with the error: {}",
        st.summary()
    );
    // Restarting starts a new journal: replication works again both ways,
    // including the registration made while it was off.
    c.node_mut(1).stop().expect("stopping node 1");
    c.node_mut(1).start();
    c.wait_mesh_up(Duration::from_secs(30));
    sipp_register(
        c.node(2),
        &[Reg::new(format!("from-n2-{what}"), 3600)],
        10,
        &format!("from-n2-{what}"),
    );
    sipp_register(
        c.node(1),
        &[Reg::new(format!("from-n1-{what}"), 3600)],
        10,
        &format!("from-n1-{what}"),
    );
    let users = [
        format!("while-off-{what}"),
        format!("from-n2-{what}"),
        format!("from-n1-{what}"),
    ];
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        &format!("after the {what} journal was replaced"),
        |t| match users.iter().find(|u| !has_user(t, u)) {
            None => Ok(()),
            Some(u) => Err(format!("{u} missing")),
        },
    );
    assert!(
        std::path::Path::new(&moved).is_file(),
        "{what}: the damaged journal {moved} is still kept after the restart"
    );
}

#[test]
fn corrupt_or_truncated_journal_at_start() {
    let t0 = Instant::now();
    let mut c = Cluster::start("bad-journal", 95, 2);
    eprintln!(
        "e2e: cluster up after {:.1} s (machine lock included)",
        t0.elapsed().as_secs_f64()
    );
    sipp_register(
        c.node(1),
        &(0..300)
            .map(|i| Reg::new(format!("j{i}"), 3600))
            .collect::<Vec<_>>(),
        300,
        "journal-users",
    );
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "initial contacts",
        expect_contacts(300),
    );
    // Refreshed once: the journal then holds more changes than SER holds
    // contacts, so a new journal's sequence starts below what the peer
    // already has from this node.
    sipp_register(
        c.node(1),
        &(0..300)
            .map(|i| Reg {
                cseq: 2,
                ..Reg::new(format!("j{i}"), 3000)
            })
            .collect::<Vec<_>>(),
        300,
        "journal-refresh",
    );
    c.wait_settled(Duration::from_secs(30));
    eprintln!(
        "e2e: node 1 journaled up to sequence {} ({:.1} s)",
        c.node(1).status().last_seq,
        t0.elapsed().as_secs_f64()
    );

    damaged_journal_start(&mut c, "header", |p| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("opening the journal");
        f.write_all(&noise(100, 42))
            .expect("overwriting the header");
    });
    damaged_journal_start(&mut c, "truncated", |p| {
        let len = std::fs::metadata(p).expect("journal size").len();
        assert!(len > 3 * 4096, "journal too small to truncate: {len}");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("opening the journal");
        f.set_len(len / 2).expect("truncating");
    });
    // Every contact is still everywhere.
    wait_converged(
        &c.all(),
        Duration::from_secs(30),
        "all contacts after both restarts",
        expect_contacts(300 + 6),
    );
}
