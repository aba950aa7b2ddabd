//! Engine calls: configuration check, running the engine in the sersync
//! process, its status, forgetting a member and asking for a resync.

use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::boundary;
use super::convert::{bytes, raw_config, shared, write_err};
use crate::abi::{
    sersync_config, sersync_quarantine_action, sersync_rc, sersync_shared, sersync_status,
    sersync_str,
};
use crate::engine::Engine;
use crate::log;
use crate::queue::{ItemRef, Shared};

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_config_check(
    cfg: *const sersync_config,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(cfg) = (unsafe { cfg.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: as above.
        match unsafe { raw_config(cfg) }.and_then(|raw| raw.check()) {
            Ok(_) => sersync_rc::SERSYNC_OK,
            Err(e) => {
                write_err(err, errlen, &e.to_string());
                (&e).into()
            }
        }
    })
}

/// A node id handed over by SER: `len` bytes at `node_id` (none when
/// `len` is 0), UTF-8, at most NODE_ID_MAX bytes.
///
/// # Safety
/// `node_id` points to `len` readable bytes when `len` > 0.
unsafe fn node_id_arg<'a>(node_id: *const c_char, len: usize) -> Result<&'a str, sersync_rc> {
    let id: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: per this function's contract.
        unsafe { bytes(&sersync_str { s: node_id, len }) }.ok_or(sersync_rc::SERSYNC_E_NULL)?
    };
    match std::str::from_utf8(id) {
        Ok(id) if id.len() <= crate::config::NODE_ID_MAX => Ok(id),
        _ => Err(sersync_rc::SERSYNC_E_DECODE),
    }
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_forget(
    sh: *mut sersync_shared,
    node_id: *const c_char,
    len: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: node_id has len bytes per sersync.h.
        let id = match unsafe { node_id_arg(node_id, len) } {
            Ok("") => return sersync_rc::SERSYNC_E_DECODE,
            Ok(id) => id,
            Err(rc) => return rc,
        };
        match sh.publish(ItemRef::Forget { node_id: id }) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => (&e).into(),
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_resync(
    sh: *mut sersync_shared,
    node_id: *const c_char,
    len: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: node_id has len bytes per sersync.h (none: every peer).
        let id = match unsafe { node_id_arg(node_id, len) } {
            Ok(id) => id,
            Err(rc) => return rc,
        };
        if !sh.resync_claim() {
            return sersync_rc::SERSYNC_E_BUSY;
        }
        match sh.publish(ItemRef::Resync { node_id: id }) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => {
                sh.resync_release();
                (&e).into()
            }
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_apply_token_check(
    sh: *mut sersync_shared,
    token: *const c_char,
    len: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: token has len bytes per sersync.h.
        let Some(token) = (unsafe { bytes(&sersync_str { s: token, len }) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        if sh.apply_token_matches(token) {
            sersync_rc::SERSYNC_OK
        } else {
            sersync_rc::SERSYNC_E_REFUSED
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_apply_token_write(
    sh: *mut sersync_shared,
    path: *const c_char,
    len: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: path has len bytes per sersync.h.
        let Some(path) = (unsafe { bytes(&sersync_str { s: path, len }) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
        match sh.write_apply_token(path) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => {
                log::error(format_args!(
                    "cannot write apply_token_file {}: {e}",
                    path.display()
                ));
                sersync_rc::SERSYNC_E_IO
            }
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_quarantine_ctl(
    sh: *mut sersync_shared,
    action: i32,
    id: u64,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let retry = match action {
            a if a == sersync_quarantine_action::SERSYNC_QUARANTINE_RETRY as i32 => true,
            a if a == sersync_quarantine_action::SERSYNC_QUARANTINE_DROP as i32 => false,
            _ => return sersync_rc::SERSYNC_E_DECODE,
        };
        match sh.publish(ItemRef::Quarantine { retry, id }) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => (&e).into(),
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_engine_run(
    sh: *mut sersync_shared,
    cfg: *const sersync_config,
) -> c_int {
    boundary(|| {
        if sh.is_null() || cfg.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        std::panic::set_hook(Box::new(|info| {
            log::error(format_args!("internal fault: {info}"))
        }));
        // SAFETY: sh came from Arc::into_raw in sersync_shared_create.
        let shared = unsafe {
            Arc::increment_strong_count(sh as *const Shared);
            Arc::from_raw(sh as *const Shared)
        };
        // SAFETY: validity per sersync.h.
        let cfg = match unsafe { raw_config(&*cfg) }.and_then(|raw| raw.check()) {
            Ok(c) => c,
            Err(e) => {
                log::error(format_args!("{e}"));
                return (&e).into();
            }
        };
        if std::env::var_os("SERSYNC_DEBUG").is_some() {
            log::set_max_level(log::DBG);
        }
        match off_signals(move || Engine::supervise(cfg, shared)) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => (&e).into(),
        }
    })
}

/// Runs `f` on a thread of its own whose signal mask (inherited by every
/// engine thread it starts) blocks the signals SER's handlers take, and
/// waits for it. Kamailio's handler for SIGTERM logs and calls exit(): run
/// on an engine thread that holds the logging or stdio lock it would
/// deadlock on itself and the process would ignore the stop. So the
/// signals reach only the calling thread, which holds no lock while it
/// waits here.
fn off_signals<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset;
    // pthread_sigmask changes only this thread's mask.
    let old = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGCHLD,
            libc::SIGALRM,
        ] {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    };
    let spawned = std::thread::Builder::new()
        .name("sersync-engine".into())
        .spawn(f);
    // SAFETY: restores this thread's mask as it was.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    match spawned {
        Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(e) => panic!("cannot start the engine's thread: {e}"),
    }
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_status_read(
    sh: *mut sersync_shared,
    out: *mut sersync_status,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        if out.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        let st = sh.read_status();
        // SAFETY: out checked non-NULL.
        unsafe { out.write(st) };
        sersync_rc::SERSYNC_OK
    })
}
