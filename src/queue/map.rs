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
    /// 1 while a `sersync.resync` runs: claimed by the RPC process that
    /// asks for it, released by the engine when it is over.
    pub(super) resync: Padded,
    pub(super) sleeping: AtomicU32,
    /// Bumped each time `durable` moves: the futex SIP workers waiting
    /// for durability sleep on ([`Shared::wait_durable`]).
    pub(super) durable_epoch: AtomicU32,
    /// SIP workers asleep on `durable_epoch`: the engine wakes them only
    /// when there are some.
    pub(super) durable_waiters: AtomicU32,
    pub(super) eventfd: AtomicI32,
    pub(super) status_seq: AtomicU64,
    pub(super) status: sersync_status,
}

impl Shared {
    /// The token `sersync.apply` requires as its first parameter: 32
    /// random bytes (hex) drawn when SER maps the region at start, known
    /// to the processes SER forks (the engine sends it, SER's RPC handler
    /// checks it) and to nothing outside them. Whoever reaches an RPC door
    /// (a web application's HTTP port) cannot apply records that were
    /// never replicated.
    pub fn apply_token(&self) -> &str {
        &self.apply_token
    }

    /// Is `given` the token? In constant time (`subtle`): the time taken
    /// tells nothing of how much of a guess was right.
    pub fn apply_token_matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.apply_token.as_bytes();
        given.len() == want.len() && bool::from(want.ct_eq(given))
    }

    /// Writes the token to `path`, readable by SER's user only (0600),
    /// replacing what was there (never following a link): for tests and
    /// benches that call `sersync.apply` as the engine does (modparam
    /// apply_token_file; unset, the token is in no file).
    pub fn write_apply_token(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        f.write_all(self.apply_token.as_bytes())?;
        f.sync_all()
    }
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
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| QueueError::Map(std::io::Error::other(e.to_string())))?;
        let shared = Shared {
            base: map.as_ptr(),
            _map: map,
            mask: slots - 1,
            order_off,
            order_mask: buckets - 1,
            // Inherited by every process SER forks: one key everywhere.
            order_keys: std::hash::RandomState::new(),
            // Inherited as well: the engine and SER's RPC processes hold
            // the same token; nothing else does.
            apply_token: secret.iter().map(|b| format!("{b:02x}")).collect(),
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

    /// `sersync.resync`'s claim: true if no resync ran and one is now
    /// claimed (the caller then queues it, or releases the claim), false
    /// while one runs. Any process.
    pub fn resync_claim(&self) -> bool {
        self.header()
            .resync
            .0
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The resync is over (or was never queued): another may start.
    pub fn resync_release(&self) {
        self.header().resync.0.store(0, Ordering::Release);
    }

    /// A new stamp from the node's clock.
    pub fn stamp(&self) -> u64 {
        crate::hlc::tick(&self.header().clock.0)
    }

    /// The highest stamp the node's clock issued or observed, without
    /// issuing one: what the journal keeps as its high-water mark.
    pub fn clock_high(&self) -> u64 {
        self.header().clock.0.load(Ordering::Acquire)
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::Shared;

    #[test]
    fn the_apply_token_is_random_and_checked_whole() {
        let a = Shared::create(64).unwrap();
        let b = Shared::create(64).unwrap();
        let t = a.apply_token().to_string();
        assert_eq!(t.len(), 64);
        assert_ne!(t, b.apply_token(), "one token per start");
        assert!(a.apply_token_matches(t.as_bytes()));
        assert!(!a.apply_token_matches(b.apply_token().as_bytes()));
        assert!(!a.apply_token_matches(&t.as_bytes()[..63]));
        assert!(!a.apply_token_matches(format!("{t}0").as_bytes()));
        assert!(!a.apply_token_matches(b""));
    }

    #[test]
    fn the_token_file_is_for_ser_s_user_only_and_no_link_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let sh = Shared::create(64).unwrap();
        let path = dir.path().join("apply.token");
        std::fs::write(&path, "old").unwrap();
        sh.write_apply_token(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), sh.apply_token());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // a link planted at the path is replaced, its target untouched
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        sh.write_apply_token(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }
}
