//! The walk of SER's usrloc for the check (sersync.digest,
//! sersync.digest_range): the module's RPC feeds it contact by contact
//! ([`crate::proof::Walk`]) and writes its reply.

use std::os::raw::c_char;

use super::boundary;
use super::convert::{alias_ref, bytes, contact_ref};
use crate::abi::{sersync_alias, sersync_contact, sersync_rc, sersync_str, sersync_walk};
use crate::proof::{Walk, Want};
use crate::queue::ItemRef;
use crate::record::{Op, RecordRef};

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_walk_new(
    now: i64,
    ranges: *const c_char,
    len: usize,
    out: *mut *mut sersync_walk,
) -> std::os::raw::c_int {
    boundary(|| {
        if out.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        let want = if ranges.is_null() || len == 0 {
            Want::Digest
        } else {
            // SAFETY: ranges has len bytes per sersync.h.
            let Some(text) = (unsafe { bytes(&sersync_str { s: ranges, len }) }) else {
                return sersync_rc::SERSYNC_E_NULL;
            };
            match Walk::parse(text) {
                Some(w) => w,
                None => return sersync_rc::SERSYNC_E_DECODE,
            }
        };
        let w = Box::new(Walk::new(now, want));
        // SAFETY: out checked non-NULL.
        unsafe { *out = Box::into_raw(w).cast::<sersync_walk>() };
        sersync_rc::SERSYNC_OK
    })
}

/// # Safety
/// `w` from sersync_walk_new; `c` valid for the call (sersync.h).
#[no_mangle]
pub unsafe extern "C" fn sersync_walk_add(
    w: *mut sersync_walk,
    c: *const sersync_contact,
) -> std::os::raw::c_int {
    boundary(|| {
        // SAFETY: NULL checked; per sersync.h.
        let (Some(w), Some(c)) = (unsafe { w.cast::<Walk>().as_mut() }, unsafe { c.as_ref() })
        else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: c's strings live for the call.
        match unsafe { contact_ref(c) } {
            Some(RecordRef::Contact { contact, .. }) => {
                w.add(&contact);
                sersync_rc::SERSYNC_OK
            }
            _ => sersync_rc::SERSYNC_E_DECODE,
        }
    })
}

/// # Safety
/// `w` from sersync_walk_new; `a` valid for the call (sersync.h).
#[no_mangle]
pub unsafe extern "C" fn sersync_walk_add_alias(
    w: *mut sersync_walk,
    a: *const sersync_alias,
) -> std::os::raw::c_int {
    boundary(|| {
        // SAFETY: NULL checked; per sersync.h.
        let (Some(w), Some(a)) = (unsafe { w.cast::<Walk>().as_mut() }, unsafe { a.as_ref() })
        else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: a's strings live for the call.
        match unsafe { alias_ref(a) } {
            Some(ItemRef::Change(RecordRef::Alias {
                op: Op::Upsert,
                alias,
            })) => {
                w.add_alias(&alias);
                sersync_rc::SERSYNC_OK
            }
            _ => sersync_rc::SERSYNC_E_DECODE,
        }
    })
}

/// # Safety
/// `w` from sersync_walk_new; `out` has `outlen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn sersync_walk_reply(
    w: *mut sersync_walk,
    skip: u64,
    out: *mut c_char,
    outlen: usize,
    next: *mut u64,
    count: *mut u64,
) -> std::os::raw::c_int {
    boundary(|| {
        // SAFETY: NULL checked; per sersync.h.
        let Some(w) = (unsafe { w.cast::<Walk>().as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        if out.is_null() || outlen == 0 || next.is_null() || count.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        let (text, n, total) = w.reply(skip, outlen - 1);
        if text.len() >= outlen {
            return sersync_rc::SERSYNC_E_TOO_LARGE;
        }
        // SAFETY: out has outlen bytes; text.len() < outlen.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), text.len());
            *out.add(text.len()) = 0;
            *next = n;
            *count = total;
        }
        sersync_rc::SERSYNC_OK
    })
}

/// # Safety
/// `w` from sersync_walk_new, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn sersync_walk_free(w: *mut sersync_walk) -> std::os::raw::c_int {
    boundary(|| {
        if !w.is_null() {
            // SAFETY: made by Box::into_raw in sersync_walk_new.
            drop(unsafe { Box::from_raw(w.cast::<Walk>()) });
        }
        sersync_rc::SERSYNC_OK
    })
}
