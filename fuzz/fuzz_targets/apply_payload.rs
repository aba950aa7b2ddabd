//! The `sersync.apply` payload decoder, through the C boundary SER calls:
//! arbitrary text must give SERSYNC_E_DECODE or records, never a panic.
#![no_main]

use std::os::raw::{c_int, c_void};

use libfuzzer_sys::fuzz_target;
use sersync::ffi::sys::{sersync_alias, sersync_apply_ops, sersync_contact};

extern "C" fn on_contact(_: *mut c_void, c: *const sersync_contact) -> c_int {
    // Touch every string the way the module does.
    let c = unsafe { &*c };
    for s in [c.domain, c.aor, c.contact, c.ruid, c.received, c.path, c.callid, c.user_agent, c.socket, c.instance] {
        if s.len > 0 {
            let b = unsafe { std::slice::from_raw_parts(s.s.cast::<u8>(), s.len) };
            std::hint::black_box(b.iter().fold(0u8, |a, x| a ^ x));
        }
    }
    0
}

extern "C" fn on_alias(_: *mut c_void, _: *const sersync_alias) -> c_int {
    0
}

fuzz_target!(|data: &[u8]| {
    let ops = sersync_apply_ops { contact: Some(on_contact), alias: Some(on_alias), ctx: std::ptr::null_mut() };
    let mut n = 0u32;
    let mut err = [0 as std::os::raw::c_char; 256];
    let rc = unsafe {
        sersync::ffi::sersync_apply_decode(data.as_ptr().cast(), data.len(), &ops, &mut n, err.as_mut_ptr(), err.len())
    };
    assert!(rc == 0 || rc == 6, "unexpected rc {rc}");
    // Valid encodings too: base64 of the raw bytes reaches the decoder proper.
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let rc = unsafe {
        sersync::ffi::sersync_apply_decode(text.as_ptr().cast(), text.len(), &ops, &mut n, err.as_mut_ptr(), err.len())
    };
    assert!(rc == 0 || rc == 6, "unexpected rc {rc}");
});
