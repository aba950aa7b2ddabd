//! Apply decode: the module's `sersync.apply` RPC hands the payload here,
//! and each record comes back through the module's callbacks.

use std::os::raw::{c_char, c_int};

use super::boundary;
use super::convert::{alias_view, bytes, contact_view, write_err};
use crate::abi::{sersync_apply_ops, sersync_rc, sersync_str, SERSYNC_APPLY_REFUSED};
use crate::log;
use crate::record::Record;

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_apply_decode(
    payload: *const c_char,
    len: usize,
    ops: *const sersync_apply_ops,
    count: *mut u32,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(ops) = (unsafe { ops.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let (Some(on_contact), Some(on_alias)) = (ops.contact, ops.alias) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: payload has len bytes per sersync.h.
        let Some(text) = (unsafe { bytes(&sersync_str { s: payload, len }) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let records = match crate::apply::payload::decode(text) {
            Ok(r) => r,
            Err(e) => {
                log::error(format_args!("sersync.apply: malformed payload: {e}"));
                write_err(err, errlen, &e.to_string());
                return sersync_rc::SERSYNC_E_DECODE;
            }
        };
        let mut applied = 0u32;
        let mut rc = sersync_rc::SERSYNC_OK;
        for (stamp, r) in &records {
            // SAFETY: each view borrows `r`, alive across its call.
            let got = match r {
                Record::Contact { op, contact } => unsafe {
                    on_contact(ops.ctx, &contact_view(*op, contact, *stamp))
                },
                Record::Alias { op, alias } => unsafe {
                    on_alias(ops.ctx, &alias_view(*op, alias))
                },
            };
            if got == SERSYNC_APPLY_REFUSED {
                rc = sersync_rc::SERSYNC_E_REFUSED;
                break;
            }
            if got < 0 {
                rc = sersync_rc::SERSYNC_E_CALLBACK;
                break;
            }
            applied += 1;
        }
        if !count.is_null() {
            // SAFETY: non-NULL per check.
            unsafe { *count = applied };
        }
        rc
    })
}
