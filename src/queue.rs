//! The worker → engine queue: a bounded ring in shared memory, mapped
//! before SER forks, so every SIP worker process and the sersync process
//! see the same slots.
//!
//! Many producers (SIP workers, each in its own process), one consumer
//! (the ingest thread of the sersync process). Each slot carries a sequence
//! word (Vyukov's bounded queue): producers claim a position with a CAS on
//! `tail`, fill the slot, then publish it by storing the sequence. Atomics
//! on a MAP_SHARED mapping work across processes. A producer never waits:
//! a full queue returns an error the caller counts and logs.
//!
//! Wake-up: the consumer sleeps in poll() on an eventfd created before the
//! fork; a producer writes it only when the consumer said it is sleeping.

use std::io;
use std::ptr;
use std::sync::atomic::{fence, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::abi::sersync_status;
use crate::codec;
use crate::error::QueueError;
use crate::record::RecordRef;

/// Bytes per slot, including its 16-byte header.
pub const SLOT_SIZE: usize = 2048;
const SLOT_DATA: usize = SLOT_SIZE - 16;
const MAGIC: u64 = 0x5345_5253_594e_4331; // "SERSYNC1"

#[repr(C, align(64))]
struct Padded(AtomicU64);

#[repr(C)]
struct Header {
    magic: u64,
    slots: u64,
    tail: Padded,
    head: Padded,
    dropped: Padded,
    /// Queue positions below this are durably journaled (or were skipped).
    durable: Padded,
    sleeping: AtomicU32,
    eventfd: AtomicI32,
    status_seq: AtomicU64,
    status: sersync_status,
}

#[repr(C)]
struct Slot {
    seq: AtomicU64,
    len: AtomicU32,
    _pad: u32,
    data: [u8; SLOT_DATA],
}

thread_local! {
    /// (queue, its position + 1) of the last record this thread published.
    static LAST_PUBLISHED: std::cell::Cell<(usize, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// The shared region: queue header, status area and slots.
pub struct Shared {
    base: *mut u8,
    len: usize,
    mask: u64,
}

// SAFETY: all shared mutation goes through atomics or the seqlock protocol
// of the status area; the mapping lives as long as `Shared`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Maps a region with `slots` slots (rounded up to a power of two, at
    /// least 64). Call before fork; starts no thread.
    pub fn create(slots: u32) -> Result<Shared, QueueError> {
        let slots = (slots.max(64) as u64).next_power_of_two();
        let len = std::mem::size_of::<Header>().next_multiple_of(64) + slots as usize * SLOT_SIZE;
        // SAFETY: anonymous shared mapping, checked for failure below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(QueueError::Map(io::Error::last_os_error()));
        }
        // SAFETY: plain syscall.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what we just mapped.
            unsafe { libc::munmap(base, len) };
            return Err(QueueError::Map(e));
        }
        let shared = Shared {
            base: base.cast(),
            len,
            mask: slots - 1,
        };
        // The mapping is zero-filled: only non-zero fields need writing,
        // and nothing else sees it yet.
        let h = shared.base as *mut Header;
        // SAFETY: the header lies at the start of our fresh mapping.
        unsafe {
            (*h).magic = MAGIC;
            (*h).slots = slots;
        }
        shared.header().eventfd.store(efd, Ordering::Relaxed);
        for i in 0..slots {
            shared.slot(i).seq.store(i, Ordering::Relaxed);
        }
        Ok(shared)
    }

    fn header(&self) -> &Header {
        // SAFETY: as above.
        unsafe { &*(self.base as *const Header) }
    }

    fn slot(&self, pos: u64) -> &Slot {
        let off = std::mem::size_of::<Header>().next_multiple_of(64)
            + (pos & self.mask) as usize * SLOT_SIZE;
        // SAFETY: off + SLOT_SIZE <= len by construction; slots are aligned.
        unsafe { &*(self.base.add(off) as *const Slot) }
    }

    #[allow(clippy::mut_from_ref)]
    fn slot_data(&self, pos: u64) -> &mut [u8; SLOT_DATA] {
        let s = self.slot(pos);
        // SAFETY: only the producer that claimed `pos` (before publishing)
        // or the consumer (after publication) touches the data.
        unsafe { &mut *(ptr::addr_of!(s.data) as *mut [u8; SLOT_DATA]) }
    }

    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Records waiting.
    pub fn depth(&self) -> u64 {
        let h = self.header();
        h.tail
            .0
            .load(Ordering::Relaxed)
            .saturating_sub(h.head.0.load(Ordering::Relaxed))
    }

    pub fn dropped(&self) -> u64 {
        self.header().dropped.0.load(Ordering::Relaxed)
    }

    /// Producer side: encodes `rec` into a free slot. Never blocks.
    pub fn publish(&self, rec: &RecordRef) -> Result<(), QueueError> {
        let h = self.header();
        let result = self.try_publish(rec).map(|pos| {
            // A SIP worker is one single-threaded process; per thread and
            // queue is exactly "what this worker published".
            LAST_PUBLISHED.with(|l| l.set((self.base as usize, pos + 1)));
        });
        match &result {
            Ok(()) => {
                fence(Ordering::SeqCst);
                if h.sleeping.load(Ordering::SeqCst) == 1
                    && h.sleeping.swap(0, Ordering::SeqCst) == 1
                {
                    let one: u64 = 1;
                    // SAFETY: eventfd write of 8 bytes; failure (counter
                    // overflow) is harmless: the consumer is awake then.
                    unsafe {
                        libc::write(
                            h.eventfd.load(Ordering::Relaxed),
                            (&one as *const u64).cast(),
                            8,
                        )
                    };
                }
            }
            Err(_) => {
                h.dropped.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn try_publish(&self, rec: &RecordRef) -> Result<u64, QueueError> {
        let h = self.header();
        let mut pos = h.tail.0.load(Ordering::Relaxed);
        loop {
            let seq = self.slot(pos).seq.load(Ordering::Acquire);
            let diff = seq as i64 - pos as i64;
            if diff == 0 {
                match h.tail.0.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                return Err(QueueError::Full);
            } else {
                pos = h.tail.0.load(Ordering::Relaxed);
            }
        }
        // The position is ours. Encode; on failure publish an empty slot
        // (len 0) so the consumer is not stuck behind it.
        let slot = self.slot(pos);
        let res = codec::encode_to_slice(rec, self.slot_data(pos));
        let (len, out) = match res {
            Ok(n) => (n as u32, Ok(())),
            Err(_) => {
                let len = codec::encoded_len(rec).unwrap_or(u64::MAX) as usize;
                (
                    0,
                    Err(QueueError::TooLarge {
                        len,
                        max: SLOT_DATA,
                    }),
                )
            }
        };
        slot.len.store(len, Ordering::Relaxed);
        slot.seq.store(pos + 1, Ordering::Release);
        out.map(|()| pos)
    }

    /// Consumer side: every record popped so far is durable.
    pub fn mark_durable(&self) {
        let h = self.header();
        h.durable
            .0
            .store(h.head.0.load(Ordering::Relaxed), Ordering::Release);
    }

    /// Producer side: waits until all this process published is durable.
    pub fn wait_durable(&self, timeout: Duration) -> bool {
        let want = match LAST_PUBLISHED.with(|l| l.get()) {
            (base, pos) if base == self.base as usize => pos,
            _ => return true,
        };
        let durable = &self.header().durable.0;
        if durable.load(Ordering::Acquire) >= want {
            return true;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut spins = 0u32;
        while durable.load(Ordering::Acquire) < want {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            if spins < 200 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        true
    }

    /// Consumer side: copies the next record's bytes into `out`. Returns
    /// false when the queue is empty. Empty (skipped) slots yield `out`
    /// empty. Only one consumer may call this.
    pub fn pop(&self, out: &mut Vec<u8>) -> bool {
        let h = self.header();
        let pos = h.head.0.load(Ordering::Relaxed);
        let slot = self.slot(pos);
        if slot.seq.load(Ordering::Acquire) != pos + 1 {
            return false;
        }
        let len = (slot.len.load(Ordering::Relaxed) as usize).min(SLOT_DATA);
        out.clear();
        out.extend_from_slice(&self.slot_data(pos)[..len]);
        slot.seq.store(pos + self.mask + 1, Ordering::Release);
        h.head.0.store(pos + 1, Ordering::Relaxed);
        true
    }

    /// Consumer side: sleeps until a producer publishes or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let h = self.header();
        h.sleeping.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let pos = h.head.0.load(Ordering::Relaxed);
        if self.slot(pos).seq.load(Ordering::Acquire) == pos + 1 {
            h.sleeping.store(0, Ordering::SeqCst);
            return;
        }
        let fd = h.eventfd.load(Ordering::Relaxed);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        let mut buf = 0u64;
        // SAFETY: drains the counter; EAGAIN when nothing was written.
        unsafe { libc::read(fd, (&mut buf as *mut u64).cast(), 8) };
        h.sleeping.store(0, Ordering::SeqCst);
    }

    /// Writer side of the status seqlock (one writer: the engine).
    pub fn write_status(&self, st: &sersync_status) {
        let h = self.header();
        let seq = h.status_seq.load(Ordering::Relaxed);
        h.status_seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        // SAFETY: the status area is only written here (one writer);
        // readers retry while the sequence is odd or changed.
        unsafe {
            ptr::write_volatile(ptr::addr_of_mut!((*(self.base as *mut Header)).status), *st)
        };
        fence(Ordering::Release);
        h.status_seq.store(seq + 2, Ordering::Release);
    }

    /// Reader side: a consistent copy, with queue figures read live.
    pub fn read_status(&self) -> sersync_status {
        let h = self.header();
        let mut st;
        loop {
            let s1 = h.status_seq.load(Ordering::Acquire);
            // SAFETY: a torn read is discarded by the sequence check.
            st = unsafe { ptr::read_volatile(ptr::addr_of!(h.status)) };
            fence(Ordering::Acquire);
            let s2 = h.status_seq.load(Ordering::Relaxed);
            if s1 == s2 && s1 % 2 == 0 {
                break;
            }
            std::hint::spin_loop();
        }
        st.queue_depth = self.depth();
        st.queue_dropped = self.dropped();
        st
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own eventfd and mapping; nothing uses them after drop.
        unsafe {
            libc::close(self.header().eventfd.load(Ordering::Relaxed));
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Contact, Op, Record};

    fn rec(i: u32) -> Record {
        Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: b"location".to_vec(),
                aor: format!("user{i}").into_bytes(),
                contact: format!("sip:user{i}@10.0.0.1:5060").into_bytes(),
                cseq: i as i32,
                ..Default::default()
            },
        }
    }

    fn as_ref(r: &Record) -> RecordRef<'_> {
        r.as_ref()
    }

    #[test]
    fn round_trips_in_order_and_reports_full() {
        let q = Shared::create(64).unwrap();
        for i in 0..64 {
            q.publish(&as_ref(&rec(i))).unwrap();
        }
        assert!(matches!(
            q.publish(&as_ref(&rec(99))),
            Err(QueueError::Full)
        ));
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.depth(), 64);
        let mut buf = Vec::new();
        for i in 0..64 {
            assert!(q.pop(&mut buf));
            let got: Record = codec::decode(&buf).unwrap();
            assert_eq!(got, rec(i));
        }
        assert!(!q.pop(&mut buf));
        q.publish(&as_ref(&rec(7))).unwrap();
        assert!(q.pop(&mut buf));
    }

    #[test]
    fn oversize_record_is_refused_and_skipped() {
        let q = Shared::create(64).unwrap();
        let mut big = rec(1);
        let Record::Contact { contact, .. } = &mut big else {
            unreachable!()
        };
        contact.path = vec![b'x'; SLOT_SIZE * 2];
        assert!(matches!(
            q.publish(&as_ref(&big)),
            Err(QueueError::TooLarge { .. })
        ));
        q.publish(&as_ref(&rec(2))).unwrap();
        let mut buf = Vec::new();
        assert!(q.pop(&mut buf));
        assert!(buf.is_empty(), "skipped slot comes out empty");
        assert!(q.pop(&mut buf));
        assert_eq!(codec::decode::<Record>(&buf).unwrap(), rec(2));
    }

    #[test]
    fn forked_producers_reach_the_consumer() {
        let q = Shared::create(4096).unwrap();
        let mut pids = Vec::new();
        for p in 0..3u32 {
            // SAFETY: the child only publishes and exits without unwinding.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                for i in 0..1000 {
                    while q.publish(&as_ref(&rec(p * 1000 + i))).is_err() {}
                }
                unsafe { libc::_exit(0) };
            }
            pids.push(pid);
        }
        let mut seen = std::collections::HashSet::new();
        let mut buf = Vec::new();
        while seen.len() < 3000 {
            if q.pop(&mut buf) {
                let Record::Contact { contact, .. } = codec::decode::<Record>(&buf).unwrap() else {
                    unreachable!()
                };
                assert!(seen.insert(contact.aor));
            } else {
                q.wait(Duration::from_millis(50));
            }
        }
        for pid in pids {
            unsafe { libc::waitpid(pid, ptr::null_mut(), 0) };
        }
    }
}
