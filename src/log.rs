//! Logging through a callback SER registers (its LM_* macros). Without a
//! callback (tests, benches) messages go to stderr.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::abi::sersync_log_fn;

pub const ERR: i32 = 1;
pub const WARN: i32 = 2;
pub const INFO: i32 = 3;
pub const DBG: i32 = 4;

/// The C callback as an address (0 = none); fn pointers are not atomics.
static LOGGER: AtomicUsize = AtomicUsize::new(0);
/// SER's logging is not promised thread-safe: one call at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// Most verbose level emitted; debug is off unless asked for.
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(INFO as usize);

pub fn set_logger(f: sersync_log_fn) {
    LOGGER.store(f.map_or(0, |f| f as usize), Ordering::Release);
}

pub fn set_max_level(level: i32) {
    MAX_LEVEL.store(level.max(0) as usize, Ordering::Relaxed);
}

pub fn log(level: i32, args: fmt::Arguments) {
    if level as usize > MAX_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let msg = format!("sersync: {args}");
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    match LOGGER.load(Ordering::Acquire) {
        0 => {
            let _ = writeln!(std::io::stderr(), "[{level}] {msg}");
        }
        addr => {
            // SAFETY: addr was stored from a valid `sersync_log_fn` by
            // set_logger; the C side promises it stays valid.
            let f: unsafe extern "C" fn(i32, *const std::os::raw::c_char, usize) =
                unsafe { std::mem::transmute(addr) };
            unsafe { f(level, msg.as_ptr().cast(), msg.len()) };
        }
    }
}

pub fn error(args: fmt::Arguments) {
    log(ERR, args)
}
pub fn warn(args: fmt::Arguments) {
    log(WARN, args)
}
pub fn info(args: fmt::Arguments) {
    log(INFO, args)
}
pub fn debug(args: fmt::Arguments) {
    log(DBG, args)
}

/// Logs at most once per interval per call site; counts what it swallowed.
pub struct RateLimit {
    last_ms: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
    interval_ms: u64,
}

impl RateLimit {
    pub const fn new(interval_ms: u64) -> Self {
        RateLimit {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            interval_ms,
        }
    }

    /// Some(n) when a line may be logged now, n = lines suppressed since.
    pub fn allow(&self) -> Option<u64> {
        let now = crate::hlc::wall_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.interval_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
