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
mod order;
mod ring;
mod status_area;

pub use item::{Item, ItemRef};
pub use order::{Held, VersionHeld};
pub use ring::SLOT_SIZE;

/// What a slot holds: the stamp the producer gave the item, and the item.
pub fn decode(slot: &[u8]) -> Result<(u64, Item), String> {
    crate::codec::decode(slot)
}

/// The shared region: queue header, status area, slots and the versions
/// usrloc holds.
pub struct Shared {
    base: *mut u8,
    /// Owns what `base` points into; unmapped as it drops.
    _map: crate::os::SharedMap,
    mask: u64,
    /// Where the buckets of versions start, and their number - 1.
    order_off: usize,
    order_mask: u64,
    /// Keys the hash of a contact's bucket: a stranger choosing AORs cannot
    /// aim at one bucket.
    order_keys: std::hash::RandomState,
    /// `sersync.apply`'s token ([`Shared::apply_token`]).
    apply_token: String,
}

// SAFETY: all shared mutation goes through atomics or the seqlock protocol
// of the status area; the mapping lives as long as `Shared`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
