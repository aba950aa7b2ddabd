//! The log callback: SER registers its LM_* logger here, and
//! [`crate::log`] forwards every line to it.

use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::boundary;
use crate::abi::{sersync_log_fn, sersync_rc};
use crate::log;

/// The C callback as an address (0 = none); fn pointers are not atomics.
static LOGGER: AtomicUsize = AtomicUsize::new(0);

#[no_mangle]
pub extern "C" fn sersync_set_logger(f: sersync_log_fn) -> c_int {
    boundary(|| {
        LOGGER.store(f.map_or(0, |f| f as usize), Ordering::Release);
        log::set_sink(forward);
        sersync_rc::SERSYNC_OK
    })
}

/// Hands one line to SER's callback; false when none is registered.
fn forward(level: i32, msg: &str) -> bool {
    match LOGGER.load(Ordering::Acquire) {
        0 => false,
        addr => {
            // SAFETY: addr was stored from a valid `sersync_log_fn` by
            // sersync_set_logger; the C side promises it stays valid.
            let f: unsafe extern "C" fn(c_int, *const c_char, usize) =
                unsafe { std::mem::transmute(addr) };
            // SAFETY: msg is valid for the call (sersync.h: the callback
            // does not keep it).
            unsafe { f(level, msg.as_ptr().cast(), msg.len()) };
            true
        }
    }
}
