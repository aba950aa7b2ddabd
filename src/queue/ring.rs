//! The ring: Vyukov's bounded queue over the slots of the mapping. Many
//! producers (publish), one consumer (pop, wait).

use std::ptr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::map::Header;
use super::{ItemRef, Shared};
use crate::codec;
use crate::error::QueueError;
use crate::os;
use crate::record::RecordRef;

/// Bytes per slot, including its 16-byte header.
pub const SLOT_SIZE: usize = 2048;
pub(super) const SLOT_DATA: usize = SLOT_SIZE - 16;

#[repr(C)]
pub(super) struct Slot {
    pub(super) seq: AtomicU64,
    len: AtomicU32,
    _pad: u32,
    data: [u8; SLOT_DATA],
}

thread_local! {
    /// (queue, its position + 1) of the last record this thread published.
    pub(super) static LAST_PUBLISHED: std::cell::Cell<(usize, u64)> = const { std::cell::Cell::new((0, 0)) };
}

impl Shared {
    pub(super) fn slot(&self, pos: u64) -> &Slot {
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

    /// Producer side: stamps `item` (a change: `&RecordRef` will do) from
    /// the node's clock and encodes both into a free slot. A contact change
    /// is noted as the version usrloc holds ([`super::order`]), queued or
    /// not: SIP workers call this from usrloc's callback, under its lock.
    /// Never blocks.
    pub fn publish<'a>(&self, item: impl Into<ItemRef<'a>>) -> Result<(), QueueError> {
        self.publish_at(item, self.stamp())
    }

    /// [`Shared::publish`] stamped `stamp` instead of a fresh stamp: the
    /// check of SER against the journal hands over a change SER made
    /// (which the full queue dropped) at the stamp it was made at.
    pub fn publish_at<'a>(
        &self,
        item: impl Into<ItemRef<'a>>,
        stamp: u64,
    ) -> Result<(), QueueError> {
        let h = self.header();
        let item = item.into();
        if let ItemRef::Change(RecordRef::Contact { contact, .. }) = &item {
            let key = self.order_key(contact.domain, contact.aor, contact.contact);
            self.note_held(key, stamp);
        }
        let result = self.try_publish(&(stamp, item)).map(|pos| {
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
                    // Failure (counter overflow) is harmless: the
                    // consumer is awake then.
                    let _ = os::eventfd_write(self.eventfd(), 1);
                }
            }
            Err(_) => {
                h.dropped.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn try_publish(&self, item: &(u64, ItemRef)) -> Result<u64, QueueError> {
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
        let res = codec::encode_to_slice(item, self.slot_data(pos));
        let (len, out) = match res {
            Ok(n) => (n as u32, Ok(())),
            Err(_) => {
                let len = codec::encoded_len(item).unwrap_or(u64::MAX) as usize;
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

    /// Consumer side: copies the next record's bytes into `out` (the
    /// encoding of `(stamp, Item)`: [`super::decode`]). Returns false when
    /// the queue is empty. Empty (skipped) slots yield `out` empty. Only
    /// one consumer may call this.
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
        let fd = self.eventfd();
        let _ = os::poll_readable(fd, timeout);
        // Drains the counter; WouldBlock when nothing was written.
        let _ = os::eventfd_read(fd);
        h.sleeping.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Item;
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
        let mut last_stamp = 0;
        for i in 0..64 {
            assert!(q.pop(&mut buf));
            let (stamp, got) = crate::queue::decode(&buf).unwrap();
            assert_eq!(got, Item::Change(rec(i)));
            assert!(stamp > last_stamp, "stamped in order");
            last_stamp = stamp;
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
        assert_eq!(crate::queue::decode(&buf).unwrap().1, Item::Change(rec(2)));
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
                let (_, Item::Change(Record::Contact { contact, .. })) =
                    crate::queue::decode(&buf).unwrap()
                else {
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
