//! The cost of the usrloc hook in a SIP worker: one `publish` of a typical
//! contact into the shared queue, with several forked producer processes
//! at once and the consumer draining, as in SER. Prints median, p99 and
//! max per call, per producer count. Run: cargo bench --bench hook

use std::time::{Duration, Instant};

use sersync::queue::Shared;
use sersync::record::{Contact, Op, RecordRef};

const CALLS: usize = 200_000;

fn contact(i: usize) -> Contact {
    Contact {
        domain: b"location".to_vec(),
        aor: format!("user{i}@example.org").into_bytes(),
        contact: format!("sip:user{i}@198.51.100.23:5060;transport=udp;ob").into_bytes(),
        ruid: format!("uloc-5f2b1a3c-{i:x}-1").into_bytes(),
        received: b"sip:203.0.113.7:41234".to_vec(),
        path: b"<sip:edge1.example.org;lr;received=sip:203.0.113.7:41234>".to_vec(),
        callid: format!("a84b4c76e66710-{i}@198.51.100.23").into_bytes(),
        user_agent: b"Linphone/5.2.0 (belle-sip/5.2.0)".to_vec(),
        socket: b"udp:192.0.2.10:5060".to_vec(),
        instance: b"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>".to_vec(),
        expires: 1_800_000_000,
        last_modified: 1_700_000_000,
        q: 1000,
        cseq: 42,
        flags: 0,
        cflags: 64,
        methods: 0x1fff,
        reg_id: 1,
        server_id: 1,
    }
}

/// Times every publish in a child process; writes sorted nanoseconds to a
/// pipe the parent reads.
fn producer(q: &Shared, id: usize, fd: i32) {
    let c = contact(id);
    let rec = RecordRef::Contact {
        op: Op::Upsert,
        contact: c.as_ref(),
    };
    let mut ns = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        while q.publish(&rec).is_err() {
            std::hint::spin_loop();
        }
        ns.push(t.elapsed().as_nanos() as u64);
    }
    ns.sort_unstable();
    let pick = |p: f64| ns[((ns.len() - 1) as f64 * p) as usize];
    let out = [pick(0.5), pick(0.99), *ns.last().unwrap()];
    // SAFETY: writing 24 bytes from a local array to our pipe.
    unsafe { libc::write(fd, out.as_ptr().cast(), 24) };
}

fn main() {
    println!(
        "hook cost per contact change (publish into the shared queue), {CALLS} calls per producer"
    );
    println!(
        "{:>9} {:>10} {:>10} {:>12}",
        "producers", "median", "p99", "max"
    );
    for producers in [1usize, 2, 4] {
        let q = Shared::create(1 << 14).unwrap();
        let mut fds = [0i32; 2];
        // SAFETY: plain pipe creation.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut pids = Vec::new();
        for id in 0..producers {
            // SAFETY: the child only publishes, writes its figures, exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                producer(&q, id, fds[1]);
                unsafe { libc::_exit(0) };
            }
            pids.push(pid);
        }
        // The consumer drains as the ingest thread would.
        let mut buf = Vec::new();
        let mut left = producers * CALLS;
        let deadline = Instant::now() + Duration::from_secs(120);
        while left > 0 && Instant::now() < deadline {
            if q.pop(&mut buf) {
                left -= 1;
            } else {
                std::hint::spin_loop();
            }
        }
        let mut rows = Vec::new();
        for _ in 0..producers {
            let mut r = [0u64; 3];
            // SAFETY: reading 24 bytes into a local array.
            unsafe { libc::read(fds[0], r.as_mut_ptr().cast(), 24) };
            rows.push(r);
        }
        for pid in pids {
            // SAFETY: reaping our own children.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        }
        let med = rows.iter().map(|r| r[0]).max().unwrap();
        let p99 = rows.iter().map(|r| r[1]).max().unwrap();
        let max = rows.iter().map(|r| r[2]).max().unwrap();
        println!("{producers:>9} {:>8}ns {:>8}ns {:>10}ns", med, p99, max);
        // SAFETY: closing our pipe ends.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
    println!("(median and p99: the worst producer's; includes ~20 ns of clock reads)");
}
