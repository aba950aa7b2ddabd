//! Ordering in usrloc: which version of each recently changed contact
//! usrloc holds, so that a remote change never overwrites a newer one.
//!
//! usrloc has no field for the cluster's clock, and it has two kinds of
//! writers: SIP workers (save(), de-registrations, lost TCP connections),
//! whose changes usrloc's callback publishes, and the RPC process that
//! applies remote changes (restored ones among them). Both run under
//! usrloc's lock of the contact's AOR and both come through here: the
//! callback notes the stamp it gives the change ([`Shared::publish`]), the
//! applier asks whether the stamp it brings is older than the one noted
//! ([`Shared::admit`]) and notes its own when it is not. Whichever comes
//! first, usrloc ends with the newer version, as the journals do.
//!
//! Memory is bounded: buckets of [`WAYS`] entries (key hash, stamp), one
//! cache line each, as many buckets as queue slots (at least 16,384). A full bucket forgets
//! its oldest entry and keeps that stamp as the bucket's floor: a contact
//! not found was last changed at or before the floor, or before this SER
//! started (loaded from its database: the start-up comparison judges
//! those). A change newer than the floor goes in; an older one (it would
//! overwrite a forgotten version) is judged by `last_modified`, the only
//! version usrloc keeps itself.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Shared;

/// Entries per bucket: the bucket fills one cache line.
const WAYS: usize = 3;

/// Buckets at the least (1 MiB), however small the queue: the versions of
/// about the last 49,000 changes.
pub(super) const MIN_BUCKETS: u64 = 16_384;

#[repr(C, align(64))]
pub(super) struct Bucket {
    /// A spin lock: held for a few loads and stores, never across a call.
    lock: AtomicU32,
    /// The highest stamp this bucket forgot.
    floor: AtomicU64,
    /// Hashes of (table, AOR, contact); 0 is a free entry.
    keys: [AtomicU64; WAYS],
    stamps: [AtomicU64; WAYS],
}

/// What usrloc holds under a contact's key when the applier looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Nothing,
    Live { last_modified: i64 },
}

/// What the table says of the version usrloc holds for one contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionHeld {
    /// usrloc's content for the key (present or deleted) has this version.
    Known(u64),
    /// Forgotten, or never noted: usrloc's version is at most this stamp
    /// (or older than this SER's start).
    AtMost(u64),
}

/// A locked bucket; unlocked as it drops.
struct Locked<'a>(&'a Bucket);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.lock.store(0, Ordering::Release);
    }
}

impl Bucket {
    fn lock(&self) -> Locked<'_> {
        let mut spins = 0u32;
        while self
            .lock
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                // The holder may have been preempted.
                std::thread::yield_now();
            }
        }
        Locked(self)
    }
}

impl Locked<'_> {
    fn find(&self, key: u64) -> Option<usize> {
        (0..WAYS).find(|&i| self.0.keys[i].load(Ordering::Relaxed) == key)
    }

    fn stamp(&self, i: usize) -> u64 {
        self.0.stamps[i].load(Ordering::Relaxed)
    }

    fn floor(&self) -> u64 {
        self.0.floor.load(Ordering::Relaxed)
    }

    /// Notes a key not in the bucket: takes a free entry, else forgets the
    /// oldest (which may be this one: then only the floor rises).
    fn insert(&self, key: u64, stamp: u64) {
        let b = self.0;
        let victim = (0..WAYS)
            .find(|&i| b.keys[i].load(Ordering::Relaxed) == 0)
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&i| self.stamp(i)).unwrap_or(0));
        if b.keys[victim].load(Ordering::Relaxed) != 0 {
            let oldest = self.stamp(victim);
            if stamp < oldest {
                b.floor.store(self.floor().max(stamp), Ordering::Relaxed);
                return;
            }
            b.floor.store(self.floor().max(oldest), Ordering::Relaxed);
        }
        b.keys[victim].store(key, Ordering::Relaxed);
        b.stamps[victim].store(stamp, Ordering::Relaxed);
    }
}

impl Shared {
    fn bucket(&self, key: u64) -> &Bucket {
        let i = (key >> 7) & self.order_mask;
        let off = self.order_off + i as usize * std::mem::size_of::<Bucket>();
        // SAFETY: `create` mapped order_mask + 1 buckets from order_off, aligned
        // to 64 bytes (the region is page-aligned and order_off a multiple
        // of 64); a bucket is only touched through atomics.
        unsafe { &*(self.base.add(off) as *const Bucket) }
    }

    /// The key of a contact: usrloc's identity of it (table, AOR, contact
    /// URI), hashed with this SER's random key; never 0.
    pub fn order_key(&self, table: &[u8], aor: &[u8], contact: &[u8]) -> u64 {
        self.order_keys.hash_one((table, aor, contact)) | 1
    }

    /// A SIP worker changed the contact: usrloc holds version `stamp`.
    pub(super) fn note_held(&self, key: u64, stamp: u64) {
        let b = self.bucket(key).lock();
        match b.find(key) {
            Some(i) => b.0.stamps[i].store(b.stamp(i).max(stamp), Ordering::Relaxed),
            None => b.insert(key, stamp),
        }
    }

    /// The applier's question, asked with usrloc's lock of the AOR held: may
    /// version `stamp` of the contact (last modified at `last_modified`)
    /// overwrite what usrloc holds? Yes is noted as the version held; no is
    /// counted.
    pub fn admit(&self, key: u64, stamp: u64, held: Held, last_modified: i64) -> bool {
        let b = self.bucket(key).lock();
        let admitted = match b.find(key) {
            Some(i) if b.stamp(i) > stamp => false,
            Some(i) => {
                b.0.stamps[i].store(stamp, Ordering::Relaxed);
                true
            }
            None if stamp >= b.floor() => {
                b.insert(key, stamp);
                true
            }
            // The version held was forgotten: usrloc's own clock decides.
            None => match held {
                Held::Nothing => true,
                Held::Live {
                    last_modified: held,
                } => last_modified >= held,
            },
        };
        drop(b);
        if !admitted {
            self.header().superseded.0.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// The version usrloc holds for a contact as far as the table knows
    /// (read only: the check of SER against the journal, [`crate::proof`]).
    pub fn version_held(&self, key: u64) -> VersionHeld {
        let b = self.bucket(key).lock();
        match b.find(key) {
            Some(i) => VersionHeld::Known(b.stamp(i)),
            None => VersionHeld::AtMost(b.floor()),
        }
    }

    /// Remote changes usrloc did not take because it held a newer version.
    pub fn superseded(&self) -> u64 {
        self.header().superseded.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Held = Held::Live { last_modified: 100 };

    #[test]
    fn an_older_change_does_not_overwrite_a_newer_one() {
        let sh = Shared::create(64).unwrap();
        let k = sh.order_key(b"location", b"alice", b"sip:alice@10.0.0.1");
        sh.note_held(k, 50);
        assert!(!sh.admit(k, 40, LIVE, 200), "older than the local save");
        assert_eq!(sh.superseded(), 1);
        assert!(sh.admit(k, 50, LIVE, 100), "the same version again");
        assert!(sh.admit(k, 60, LIVE, 100));
        assert!(!sh.admit(k, 55, LIVE, 100), "older than the last apply");
        // Another contact of the same AOR is another key.
        let other = sh.order_key(b"location", b"alice", b"sip:alice@10.0.0.2");
        assert!(sh.admit(other, 1, Held::Nothing, 0));
    }

    #[test]
    fn a_forgotten_version_falls_back_to_last_modified() {
        let sh = Shared::create(64).unwrap();
        // Keys of one bucket: more than it holds.
        let first = sh.order_key(b"location", b"u0", b"c");
        let same_bucket: Vec<u64> = (1..2_000_000)
            .map(|i| sh.order_key(b"location", format!("u{i}").as_bytes(), b"c"))
            .filter(|k| std::ptr::eq(sh.bucket(*k), sh.bucket(first)))
            .take(WAYS)
            .collect();
        assert_eq!(same_bucket.len(), WAYS);
        sh.note_held(first, 10);
        for (i, k) in same_bucket.iter().enumerate() {
            sh.note_held(*k, 20 + i as u64);
        }
        // `first` was forgotten: its stamp is the floor.
        assert!(sh.admit(first, 11, LIVE, 0), "newer than the floor");
        // Older than the floor: usrloc's last_modified decides.
        assert!(!sh.admit(first, 9, LIVE, 99));
        assert!(sh.admit(first, 9, LIVE, 100));
        assert!(sh.admit(first, 9, Held::Nothing, 0));
        // Entries still held keep their versions, whatever last_modified.
        assert!(!sh.admit(same_bucket[0], 19, LIVE, 1_000));
        assert_eq!(sh.superseded(), 2);
    }

    #[test]
    fn forked_writers_share_the_versions() {
        let sh = Shared::create(64).unwrap();
        let k = sh.order_key(b"location", b"bob", b"sip:bob@10.0.0.1");
        // SAFETY: the child only notes and exits without unwinding.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            sh.note_held(k, 77);
            unsafe { libc::_exit(0) };
        }
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        assert!(!sh.admit(k, 76, LIVE, 100));
        assert!(sh.admit(k, 78, LIVE, 100));
    }
}
