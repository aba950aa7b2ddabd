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

mod durable;
mod item;
mod map;
mod ring;
mod status_area;

pub use item::{Item, ItemRef};
pub use ring::SLOT_SIZE;

/// The shared region: queue header, status area and slots.
pub struct Shared {
    base: *mut u8,
    /// Owns what `base` points into; unmapped as it drops.
    _map: crate::os::SharedMap,
    mask: u64,
}

// SAFETY: all shared mutation goes through atomics or the seqlock protocol
// of the status area; the mapping lives as long as `Shared`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
