//! Bad input against live Kamailio nodes with sersync (issue 6, "Bad
//! input"): what a user checks when garbage reaches a node.
//!
//! Hostile or broken connections to sersync's listen port (random bytes,
//! a garbage frame, an oversize length prefix, a truncated frame, a wrong
//! secret, a replayed handshake, an unknown protocol version, a silent
//! connection, a peer that authenticates and then never reads): each is
//! refused or dropped with a line in the node's log, the node's memory
//! stays bounded, replication with the real peer goes on, and the sipp
//! registering on the attacked node all along sees no failure.
//!
//! Addresses 127.0.0.91–92 and 97–99 only.

#[path = "peer_support/mod.rs"]
mod peer;
#[path = "e2e_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use peer::*;
use serde_json::{json, Value};
use sersync::wire::auth::Nonce;
use sersync::wire::version::{NEWEST, OLDEST};
use sersync::wire::{Frame, VERSION};
use support::*;

// ---------------------------------------------------------------------------
// Helpers

fn secret(cluster: &str) -> Vec<u8> {
    format!("e2e-secret-{cluster}").into_bytes()
}

/// Registers on the attacked node in the background, 40 users at a time
/// (one sipp run each, every one asserted to have no failed transaction),
/// until `stop`, counting them in `done`.
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
/// test's addresses) to `dst`, reads timing out after 10 s.
fn attacker_connection(src: &str, dst: &str, port: u16) -> TcpStream {
    let dst = SocketAddrV4::new(dst.parse().expect("destination address"), port);
    let stream = connect_from(src.parse().expect("source address"), dst, false);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
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
// The attacks on the listen port

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
        let mut s = attacker_connection(ATTACKER, &self.node.ip, SERSYNC_PORT);
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
    // The attacks speak the clear protocol (v3 and older): n1 serves
    // clear peers (accept_clear_peers), as during an upgrade; its link
    // with n2 is an encrypted session all the same.
    let mut opts = ClusterOptions::default();
    opts.extra.insert(
        1,
        vec!["modparam(\"sersync\", \"accept_clear_peers\", 1)".to_string()],
    );
    let c = Cluster::start_with_options("bad-peers", 91, 2, &opts);
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
        let mut s = attacker_connection(ATTACKER, &ip, SERSYNC_PORT);
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
        let mut s = attacker_connection(ATTACKER, &ip, SERSYNC_PORT);
        let (id, nonce) = challenge(&mut s);
        let recorded = hello(&secret, "n9", &id, &nonce, VERSION, &sersync_addr(&ip));
        send(&mut s, &recorded);
        assert!(
            matches!(read_frame(&mut s), Some(Frame::Welcome { .. })),
            "the recorded hello is accepted on its own connection"
        );
        drop(s);
        let mut s = attacker_connection(ATTACKER, &ip, SERSYNC_PORT);
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

        // -- Only protocol versions this node does not speak -----------------
        // (A hello states the newest version the dialer speaks; v0 is
        // older than any this node speaks.)
        target.attack(
            "unknown protocol version",
            &[refused, "ancient speaks protocol", "up to v0"],
            |s, id, nonce| {
                let h = hello(&secret, "ancient", id, nonce, 0, "tcp:127.0.0.99:5999");
                send(s, &h);
                let spoken = format!("protocol v{OLDEST} to v{NEWEST} only");
                expect_refusal(s, &spoken, "unknown version");
            },
        );

        // -- Connects, reads the challenge, sends nothing --------------------
        target.pace();
        let before = count_log(n1, &[dropped]);
        let mut s = attacker_connection(ATTACKER, &ip, SERSYNC_PORT);
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
        let mut s = attacker_connection(ATTACKER, &ip, SERSYNC_PORT);
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
