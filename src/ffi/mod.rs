//! The C boundary. All `unsafe` that touches C pointers lives here; every
//! export goes through [`boundary`], which catches panics (a panic must
//! never unwind into SER) and maps them to `SERSYNC_E_PANIC`.

mod apply;
mod convert;
mod engine;
mod error;
mod log;
mod queue;
mod walk;

use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::abi;
use crate::abi::{
    sersync_alias, sersync_apply_ops, sersync_config, sersync_contact, sersync_log_fn, sersync_rc,
    sersync_shared, sersync_status, sersync_walk,
};

use self::apply::sersync_apply_decode;
use self::engine::{
    sersync_apply_token_check, sersync_apply_token_write, sersync_config_check, sersync_engine_run,
    sersync_forget, sersync_quarantine_ctl, sersync_resync, sersync_status_read,
};
use self::log::sersync_set_logger;
use self::queue::{
    sersync_journal_wait, sersync_order_admit, sersync_publish, sersync_publish_alias,
    sersync_shared_create,
};
use self::walk::{sersync_walk_add, sersync_walk_free, sersync_walk_new, sersync_walk_reply};

fn boundary(f: impl FnOnce() -> sersync_rc) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc as c_int,
        Err(_) => sersync_rc::SERSYNC_E_PANIC as c_int,
    }
}

/// Ties each export to its declaration in sersync.h: this does not compile
/// if a signature drifts from the header.
#[allow(dead_code)]
const _SIGNATURES: () = {
    let _: [unsafe extern "C" fn(sersync_log_fn) -> c_int; 2] =
        [abi::sersync_set_logger, sersync_set_logger];
    let _: [unsafe extern "C" fn(*const sersync_config, *mut c_char, usize) -> c_int; 2] =
        [abi::sersync_config_check, sersync_config_check];
    let _: [unsafe extern "C" fn(u32, *mut *mut sersync_shared) -> c_int; 2] =
        [abi::sersync_shared_create, sersync_shared_create];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_contact) -> c_int; 2] =
        [abi::sersync_publish, sersync_publish];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const c_char, usize) -> c_int; 2] =
        [abi::sersync_forget, sersync_forget];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const c_char, usize) -> c_int; 2] =
        [abi::sersync_resync, sersync_resync];
    let _: [unsafe extern "C" fn(*mut sersync_shared, i32, u64) -> c_int; 2] =
        [abi::sersync_quarantine_ctl, sersync_quarantine_ctl];
    let _: [unsafe extern "C" fn(*mut sersync_shared, u32) -> c_int; 2] =
        [abi::sersync_journal_wait, sersync_journal_wait];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_config) -> c_int; 2] =
        [abi::sersync_engine_run, sersync_engine_run];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *mut sersync_status) -> c_int; 2] =
        [abi::sersync_status_read, sersync_status_read];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_alias) -> c_int; 2] =
        [abi::sersync_publish_alias, sersync_publish_alias];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_contact, i64) -> c_int; 2] =
        [abi::sersync_order_admit, sersync_order_admit];
    let _: [unsafe extern "C" fn(
        *const c_char,
        usize,
        *const sersync_apply_ops,
        *mut u32,
        *mut c_char,
        usize,
    ) -> c_int; 2] = [abi::sersync_apply_decode, sersync_apply_decode];
    let _: [unsafe extern "C" fn(i64, *const c_char, usize, *mut *mut sersync_walk) -> c_int; 2] =
        [abi::sersync_walk_new, sersync_walk_new];
    let _: [unsafe extern "C" fn(*mut sersync_walk, *const sersync_contact) -> c_int; 2] =
        [abi::sersync_walk_add, sersync_walk_add];
    let _: [unsafe extern "C" fn(
        *mut sersync_walk,
        u64,
        *mut c_char,
        usize,
        *mut u64,
        *mut u64,
    ) -> c_int; 2] = [abi::sersync_walk_reply, sersync_walk_reply];
    let _: [unsafe extern "C" fn(*mut sersync_walk) -> c_int; 2] =
        [abi::sersync_walk_free, sersync_walk_free];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const c_char, usize) -> c_int; 4] = [
        abi::sersync_apply_token_check,
        sersync_apply_token_check,
        abi::sersync_apply_token_write,
        sersync_apply_token_write,
    ];
};
