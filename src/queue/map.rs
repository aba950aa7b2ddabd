//! The mapping: one anonymous shared region (queue header, status area,
//! slots) created before SER forks, and its header.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use super::ring::SLOT_SIZE;
use super::Shared;
use crate::abi::sersync_status;
use crate::error::QueueError;

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
    pub(super) sleeping: AtomicU32,
    pub(super) eventfd: AtomicI32,
    pub(super) status_seq: AtomicU64,
    pub(super) status: sersync_status,
}

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

    pub(super) fn header(&self) -> &Header {
        // SAFETY: as above.
        unsafe { &*(self.base as *const Header) }
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
