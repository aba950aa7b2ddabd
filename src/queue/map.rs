//! The mapping: one anonymous shared region (queue header, status area,
//! slots) created before SER forks, and its header.

use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::order::Bucket;
use super::ring::SLOT_SIZE;
use super::Shared;
use crate::abi::sersync_status;
use crate::error::QueueError;
use crate::os;

const MAGIC: u64 = 0x5345_5253_594e_4331; // "SERSYNC1"

#[repr(C, align(64))]
pub(super) struct Padded(pub(super) AtomicU64);

#[repr(C)]
pub(super) struct Header {
    pub(super) magic: u64,
    pub(super) slots: u64,
    pub(super) tail: Padded,
    pub(super) head: Padded,
    pub(super) dropped: Padded,
    /// Queue positions below this are durably journaled (or were skipped).
    pub(super) durable: Padded,
    /// The node's clock (see [`crate::hlc`]): SIP workers stamp their
    /// changes from it, the engine stamps and observes with it.
    pub(super) clock: Padded,
    /// Remote changes usrloc did not take because it held a newer version.
    pub(super) superseded: Padded,
    pub(super) sleeping: AtomicU32,
    pub(super) eventfd: AtomicI32,
    pub(super) status_seq: AtomicU64,
    pub(super) status: sersync_status,
}

impl Shared {
    /// Maps a region with `slots` slots (rounded up to a power of two, at
    /// least 64) and as many buckets of versions ([`super::order`]), at
    /// least [`super::order::MIN_BUCKETS`]. Call before fork; starts no
    /// thread.
    pub fn create(slots: u32) -> Result<Shared, QueueError> {
        let slots = (slots.max(64) as u64).next_power_of_two();
        let order_off =
            std::mem::size_of::<Header>().next_multiple_of(64) + slots as usize * SLOT_SIZE;
        let buckets = slots.max(super::order::MIN_BUCKETS);
        let len = order_off + buckets as usize * std::mem::size_of::<Bucket>();
        let map = os::SharedMap::new(len).map_err(QueueError::Map)?;
        // On failure `map` is unmapped as it drops.
        let efd = os::eventfd().map_err(QueueError::Map)?;
        let shared = Shared {
            base: map.as_ptr(),
            _map: map,
            mask: slots - 1,
            order_off,
            order_mask: buckets - 1,
            // Inherited by every process SER forks: one key everywhere.
            order_keys: std::hash::RandomState::new(),
        };
        // The mapping is zero-filled: only non-zero fields need writing,
        // and nothing else sees it yet.
        let h = shared.base as *mut Header;
        // SAFETY: the header lies at the start of our fresh mapping.
        unsafe {
            (*h).magic = MAGIC;
            (*h).slots = slots;
        }
        // Closed when `shared` drops.
        shared
            .header()
            .eventfd
            .store(efd.into_raw_fd(), Ordering::Relaxed);
        for i in 0..slots {
            shared.slot(i).seq.store(i, Ordering::Relaxed);
        }
        Ok(shared)
    }

    /// A new stamp from the node's clock.
    pub fn stamp(&self) -> u64 {
        crate::hlc::tick(&self.header().clock.0)
    }

    /// Moves the node's clock past a stamp seen elsewhere.
    pub fn observe(&self, stamp: u64) {
        crate::hlc::observe(&self.header().clock.0, stamp)
    }

    pub(super) fn header(&self) -> &Header {
        // SAFETY: as above.
        unsafe { &*(self.base as *const Header) }
    }

    /// The eventfd the consumer sleeps on: made before the fork, so the
    /// same descriptor in every process.
    pub(super) fn eventfd(&self) -> BorrowedFd<'_> {
        // SAFETY: open from `create` until `drop`.
        unsafe { BorrowedFd::borrow_raw(self.header().eventfd.load(Ordering::Relaxed)) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own eventfd, closed only here; nothing uses it after
        // drop. The mapping is unmapped after this, as `_map` drops.
        drop(unsafe { OwnedFd::from_raw_fd(self.header().eventfd.load(Ordering::Relaxed)) });
    }
}
