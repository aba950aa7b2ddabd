//! The check of SER against the journal (issue 12, "Figures"): what one
//! check costs per 100,000 contacts.
//!
//! - **SER**: one Kamailio node (127.0.0.191, usrloc in memory, sersync's
//!   own check off) is filled with PROOF_N contacts through sersync.apply
//!   on jsonrpcs' datagram socket (the applier's door and code); then
//!   `sersync.digest` is called PROOF_RUNS times through the same door
//!   (`sersync::proof::SerView`, as the engine calls it). Reported: the
//!   walk inside SER (all slots, each contact filled and digested:
//!   `walk_us`), the longest one usrloc slot lock was held
//!   (`max_lock_us`), the round trip and the reply's bytes; and one
//!   `sersync.digest_range` of 8 ranges (what a check with differences
//!   fetches).
//! - **engine**: a journal holding the same PROOF_N contacts; the state's
//!   digest (what each check computes on the engine's side), thread CPU.
//!
//! Run: `cargo bench --bench proof` (needs build/sersync.so: `make`).
//! Environment: PROOF_N (100000), PROOF_RUNS (5), PROOF_SHM_MB (1024).

#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "catchup/door.rs"]
mod door;
#[path = "../tests/e2e_support/mod.rs"]
mod support;

use std::fs;
use std::time::{Duration, Instant};

use sersync::apply::door::Door as ApplyDoor;
use sersync::apply::Sink;
use sersync::journal::Journal;
use sersync::proof::SerView;
use sersync::record::{Contact, Op, Record};

use common::*;
use door::add_dgram_door;
use support::*;

#[allow(dead_code)]
const NAME: &str = "bench-proof";
const FIRST_IP: u8 = 191;

fn contact(i: usize, now: i64) -> Contact {
    Contact {
        domain: b"location".to_vec(),
        aor: format!("pf{i:06}").into_bytes(),
        contact: format!("sip:pf{i:06}-a@192.0.2.{}:5099;transport=UDP", i % 250).into_bytes(),
        ruid: format!("uloc-bench-{i}").into_bytes(),
        received: b"sip:198.51.100.7:40000".to_vec(),
        path: b"<sip:127.0.0.1;lr;received=sip:198.51.100.7:40000>".to_vec(),
        callid: format!("{i}-bench@192.0.2.1").into_bytes(),
        user_agent: b"Bench Phone 1.0".to_vec(),
        instance: format!("<urn:uuid:00000000-0000-4000-8000-{i:012}>").into_bytes(),
        expires: now + 3600,
        last_modified: now,
        q: -1,
        cseq: 1,
        methods: 0xffff,
        ..Default::default()
    }
}

fn thread_cpu_s() -> f64 {
    // SAFETY: getrusage(2) fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let n: usize = env_or("PROOF_N", 100_000);
    let runs: usize = env_or("PROOF_RUNS", 5);
    let shm_mb: u32 = env_or("PROOF_SHM_MB", 1024);
    println!("proof: N={n} runs={runs} shm={shm_mb} MB");
    println!("machine: {}", machine());
    println!("module: {}", module_sum());
    let now = (sersync::hlc::wall_ms() / 1000) as i64;
    let records: Vec<(u64, Record)> = (0..n)
        .map(|i| {
            (
                (sersync::hlc::wall_ms() << 16) + i as u64,
                Record::Contact {
                    op: Op::Upsert,
                    contact: contact(i, now),
                },
            )
        })
        .collect();

    // Engine side first (no SER running meanwhile).
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut j = Journal::open(&tmp.path().join("j.db")).expect("journal");
    for chunk in records.chunks(5000) {
        j.append_local("n1", chunk).expect("append");
    }
    let mut engine = Vec::new();
    for _ in 0..runs {
        let (c0, t0) = (thread_cpu_s(), Instant::now());
        let d = j.state_digest(now).expect("state digest");
        engine.push((thread_cpu_s() - c0, t0.elapsed().as_secs_f64()));
        assert_eq!(d.counts.iter().map(|&c| c as usize).sum::<usize>(), n);
    }
    drop(j);

    let mut opts = ClusterOptions {
        ul_db_mode: Some(0),
        sersync_no_db: true,
        shm_mb: Some(shm_mb),
        ..ClusterOptions::default()
    };
    opts.extra.insert(
        1,
        vec!["modparam(\"sersync\", \"check_interval\", 0)".into()],
    );
    let mut c = Cluster::start_private(NAME, FIRST_IP, 1, &opts);
    {
        let node = c.node_mut(1);
        node.stop().expect("stopping the node");
        let path = node.dir.join("kamailio.cfg");
        let mut cfg = fs::read_to_string(&path).expect("cfg");
        add_dgram_door(&mut cfg, &node.dir);
        fs::write(&path, cfg).expect("cfg");
        node.start();
    }
    let node = c.node(1);
    let mut ser = ApplyDoor::new(
        &node.dir.join("rpc.sock"),
        &node.dir,
        &node.dir,
        &node.apply_token(),
    );
    let t = Instant::now();
    for chunk in records.chunks(2000) {
        ser.apply(chunk).expect("sersync.apply");
    }
    println!(
        "filled usrloc with {n} contacts in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut walks = Vec::new();
    let mut locks = Vec::new();
    let mut trips = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let d = ser.digest(now).expect("sersync.digest");
        trips.push(t.elapsed().as_secs_f64());
        assert_eq!(
            d.contacts as usize, n,
            "SER digested {} contacts",
            d.contacts
        );
        walks.push(d.walk_us as f64 / 1e6);
        locks.push(d.max_lock_us as f64);
        std::thread::sleep(Duration::from_millis(200));
    }
    let reply_bytes = {
        let mut w = sersync::proof::Walk::new(now, sersync::proof::Want::Digest);
        for (_, r) in &records {
            w.add(&r.as_ref_contact());
        }
        w.reply(0, 1 << 16).0.len()
    };
    let ranges: Vec<usize> = (0..256).collect();
    let t = Instant::now();
    let got = ser
        .hashes_in(&ranges, now)
        .expect("sersync.digest_range h:");
    let range_s = t.elapsed().as_secs_f64();
    assert_eq!(got.len(), n);
    let repair = repair_divergent(&mut ser, &tmp.path().join("j.db"), &records, now);

    let per = |s: f64| s * 100_000.0 / n as f64;
    let (wmin, wmax) = minmax(&walks);
    let (lmin, lmax) = minmax(&locks);
    println!();
    println!("| side | per check | per 100,000 contacts | notes |");
    println!("|---|---:|---:|---|");
    println!(
        "| SER: sersync.digest walk (median of {runs}) | {:.1} ms | {:.1} ms | min–max {:.1}–{:.1} ms; round trip {:.1} ms; reply {reply_bytes} bytes of digest text |",
        median(&walks) * 1e3,
        per(median(&walks)) * 1e3,
        wmin * 1e3,
        wmax * 1e3,
        median(&trips) * 1e3
    );
    println!(
        "| SER: longest slot lock (median of {runs}) | {:.0} µs | — | min–max {lmin:.0}–{lmax:.0} µs; usrloc hash size 1024 slots |",
        median(&locks)
    );
    let ecpu: Vec<f64> = engine.iter().map(|e| e.0).collect();
    let ewall: Vec<f64> = engine.iter().map(|e| e.1).collect();
    println!(
        "| engine: state digest, thread CPU (median of {runs}) | {:.1} ms | {:.1} ms | wall {:.1} ms |",
        median(&ecpu) * 1e3,
        per(median(&ecpu)) * 1e3,
        median(&ewall) * 1e3
    );
    println!(
        "| SER: sersync.digest_range h:, all 256 ranges | {:.1} ms | {:.1} ms | {} version hashes, {} bytes of text: one walk, paged |",
        range_s * 1e3,
        per(range_s) * 1e3,
        got.len(),
        (got.len() * 9).div_ceil(3) * 4
    );
    println!(
        "| check: detect and repair {} divergent contacts | {:.2} s | — | first look {:.2} s, second look {:.2} s (after the {} s confirmation delay), applying {:.2} s; SER equal to the state after it |",
        repair.divergent,
        repair.first_s + repair.confirm_delay_s + repair.second_s + repair.apply_s,
        repair.first_s,
        repair.second_s,
        repair.confirm_delay_s,
        repair.apply_s
    );
    drop(ser);
    c.stop_all();
}

struct RepairFigures {
    divergent: usize,
    first_s: f64,
    confirm_delay_s: f64,
    second_s: f64,
    apply_s: f64,
}

/// The journal at `path` (holding what SER holds) gets newer versions of
/// PROOF_DIVERGENT (1,000) contacts spread over the key space, as a peer's
/// changes SER never received; one check (two looks) finds them and
/// stages them, and the applier's door applies them. SER must then equal
/// the state.
fn repair_divergent(
    ser: &mut ApplyDoor,
    path: &std::path::Path,
    records: &[(u64, Record)],
    now: i64,
) -> RepairFigures {
    use std::sync::Arc;
    let divergent: usize = env_or("PROOF_DIVERGENT", 1000).min(records.len());
    let step = records.len() / divergent;
    let mut j = Journal::open(path).expect("journal");
    let base = sersync::hlc::wall_ms() << 16;
    let newer: Vec<(u64, Record)> = (0..divergent)
        .map(|k| {
            let (_, r) = &records[k * step];
            let Record::Contact { contact, .. } = r else {
                unreachable!()
            };
            let mut c = contact.clone();
            c.cseq += 1;
            c.user_agent = b"Bench Phone 2.0".to_vec();
            (
                base + k as u64,
                Record::Contact {
                    op: Op::Upsert,
                    contact: c,
                },
            )
        })
        .collect();
    j.append_local("n2", &newer).expect("append");
    let shared = Arc::new(sersync::queue::Shared::create(1024).expect("shared"));
    let status = Arc::new(sersync::status::Status::new("n1"));
    let mut p = sersync::proof::Proof::new(
        Some(Duration::ZERO),
        vec!["location".into()],
        shared,
        status.clone(),
    );
    let t = Instant::now();
    p.tick(&mut j, ser);
    let first_s = t.elapsed().as_secs_f64();
    std::thread::sleep(sersync::proof::CONFIRM_DELAY);
    let t = Instant::now();
    p.tick(&mut j, ser);
    let second_s = t.elapsed().as_secs_f64();
    let c = &status.counters;
    let found = c.divergences.load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert_eq!(found, divergent, "divergences found");
    let t = Instant::now();
    loop {
        let (staged, last) = j.inbox_current(2000).expect("inbox");
        let Some(last) = last else { break };
        let recs: Vec<(u64, Record)> = staged.into_iter().map(|s| (s.hlc, s.record)).collect();
        ser.apply(&recs).expect("sersync.apply");
        j.inbox_done(last).expect("inbox done");
    }
    let apply_s = t.elapsed().as_secs_f64();
    let theirs = ser.digest(now).expect("sersync.digest");
    assert_eq!(
        theirs.digest,
        j.state_digest(now).expect("state digest"),
        "SER equals the state after the repair"
    );
    RepairFigures {
        divergent,
        first_s,
        confirm_delay_s: sersync::proof::CONFIRM_DELAY.as_secs_f64(),
        second_s,
        apply_s,
    }
}

trait AsRefContact {
    fn as_ref_contact(&self) -> sersync::record::ContactRef<'_>;
}

impl AsRefContact for Record {
    fn as_ref_contact(&self) -> sersync::record::ContactRef<'_> {
        match self {
            Record::Contact { contact, .. } => contact.as_ref(),
            Record::Alias { .. } => unreachable!(),
        }
    }
}
