//! Logging through a callback SER registers (its LM_* macros). Without a
//! callback (tests, benches) messages go to stderr.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub const ERR: i32 = 1;
pub const WARN: i32 = 2;
pub const INFO: i32 = 3;
pub const DBG: i32 = 4;

/// Where lines go instead of stderr: the C boundary's forwarder to the
/// callback SER registers (`ffi/log.rs`); false while none is registered.
static SINK: OnceLock<fn(i32, &str) -> bool> = OnceLock::new();
/// SER's logging is not promised thread-safe: one call at a time.
static SERIAL: Mutex<()> = Mutex::new(());
/// Most verbose level emitted; debug is off unless asked for.
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(INFO as usize);

/// Installs the forwarder; the first one installed stays.
pub fn set_sink(f: fn(i32, &str) -> bool) {
    let _ = SINK.set(f);
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
    if !SINK.get().is_some_and(|sink| sink(level, &msg)) {
        let _ = writeln!(std::io::stderr(), "[{level}] {msg}");
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
