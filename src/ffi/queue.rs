//! Queue calls: the worker-side hand-off (SIP workers and other SER
//! processes publish into the shared region) and the durability wait.

use std::os::raw::c_int;
use std::sync::Arc;

use super::boundary;
use super::convert::{alias_ref, contact_ref, shared};
use crate::abi::{sersync_alias, sersync_contact, sersync_rc, sersync_shared};
use crate::log;
use crate::queue::{Held, ItemRef, Shared};
use crate::record::RecordRef;

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_shared_create(slots: u32, out: *mut *mut sersync_shared) -> c_int {
    boundary(|| {
        if out.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        match Shared::create(slots) {
            Ok(sh) => {
                // Lives for the whole life of SER: leaked on purpose.
                let p = Arc::into_raw(Arc::new(sh)) as *mut sersync_shared;
                // SAFETY: out checked non-NULL.
                unsafe { *out = p };
                sersync_rc::SERSYNC_OK
            }
            Err(e) => {
                log::error(format_args!("{e}"));
                (&e).into()
            }
        }
    })
}

/// Queues the item `view` makes of `item`: the worker-side hand-off
/// shared by contacts and aliases.
///
/// # Safety
/// `sh` and `item` must be valid per sersync.h.
unsafe fn publish_view<T>(
    sh: *mut sersync_shared,
    item: *const T,
    view: impl for<'a> Fn(&'a T) -> Option<ItemRef<'a>>,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per the function contract.
        let (Some(sh), Some(item)) = (unsafe { shared(sh) }, unsafe { item.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let Some(rec) = view(item) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        match sh.publish(rec) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => (&e).into(),
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_publish(
    sh: *mut sersync_shared,
    c: *const sersync_contact,
) -> c_int {
    // SAFETY: the contact's strings are valid for this call (sersync.h).
    unsafe { publish_view(sh, c, |c| contact_ref(c).map(ItemRef::Change)) }
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_publish_alias(
    sh: *mut sersync_shared,
    a: *const sersync_alias,
) -> c_int {
    // SAFETY: the alias' strings are valid for this call (sersync.h).
    unsafe { publish_view(sh, a, |a| alias_ref(a)) }
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_journal_wait(sh: *mut sersync_shared, timeout_ms: u32) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        if sh.wait_durable(std::time::Duration::from_millis(timeout_ms as u64)) {
            sersync_rc::SERSYNC_OK
        } else {
            sersync_rc::SERSYNC_E_TIMEOUT
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_order_admit(
    sh: *mut sersync_shared,
    c: *const sersync_contact,
    held_last_modified: i64,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let (Some(sh), Some(c)) = (unsafe { shared(sh) }, unsafe { c.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: the contact's strings are valid for this call (sersync.h).
        let Some(RecordRef::Contact { contact, .. }) = (unsafe { contact_ref(c) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let held = if held_last_modified < 0 {
            Held::Nothing
        } else {
            Held::Live {
                last_modified: held_last_modified,
            }
        };
        let key = sh.order_key(contact.domain, contact.aor, contact.contact);
        if sh.admit(key, c.stamp, held, contact.last_modified) {
            sersync_rc::SERSYNC_OK
        } else {
            sersync_rc::SERSYNC_SUPERSEDED
        }
    })
}
