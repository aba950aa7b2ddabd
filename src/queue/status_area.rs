//! The status area: a seqlock over the `sersync_status` in the header,
//! written by the engine, read by any process (RPC handlers).

use std::ptr;
use std::sync::atomic::{fence, Ordering};

use super::map::Header;
use super::Shared;
use crate::abi::sersync_status;

impl Shared {
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
        st.apply_superseded = self.superseded();
        st
    }
}
