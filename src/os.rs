//! The few operating-system calls sersync makes through libc, behind safe
//! wrappers: the reply FIFO of SER's RPC door, poll, the queue's eventfd
//! and its shared mapping, and local time as SER's database layer keeps
//! it; futex waits and wakes; and one setting of the SQLite library. Ground floor: depends on
//! nothing in the crate.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::time::Duration;

/// mkfifo(3): creates a FIFO at `path`.
pub fn mkfifo(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    if unsafe { libc::mkfifo(path.as_ptr(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// poll(2) on one descriptor: waits until `fd` is readable or `timeout`
/// (whole milliseconds) has passed. True when it is readable.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => Err(io::Error::last_os_error()),
        n => Ok(n > 0),
    }
}

/// eventfd(2): a counter starting at 0, non-blocking, closed on exec.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `n` to an eventfd's counter, waking a poll() on it.
pub fn eventfd_write(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    // SAFETY: writes the 8 bytes of `n`.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&n as *const u64).cast(), 8) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads and resets an eventfd's counter; `WouldBlock` while it is 0.
pub fn eventfd_read(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut n = 0u64;
    // SAFETY: reads at most 8 bytes into `n`.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// An anonymous shared mapping: zero-filled, readable and writable, the
/// same pages in every process forked after it was made. Unmapped when
/// dropped; whoever reads or writes through [`SharedMap::as_ptr`] must
/// keep it alive meanwhile.
pub struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

impl SharedMap {
    pub fn new(len: usize) -> io::Result<SharedMap> {
        // SAFETY: a new anonymous mapping overlaps nothing; checked for
        // failure below.
        let ptr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping, made in `new`; unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `t` (seconds since the epoch) as "YYYY-MM-DD HH:MM:SS" in the local
/// time zone: how Kamailio's database layer writes a DATETIME value for
/// MySQL and PostgreSQL (lib/srdb1/db_ut.c, db_time2str: localtime_r), so
/// a row written here reads back in SER as the same instant. None when
/// the C library cannot represent `t`.
pub fn local_datetime(t: i64) -> Option<String> {
    // time_t is 32 bits on some targets (i386).
    #[allow(clippy::useless_conversion)]
    let t: libc::time_t = t.try_into().ok()?;
    // SAFETY: an all-zero `tm` is a valid value (integers and a null
    // zone pointer), overwritten by localtime_r.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is reentrant.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    ))
}

/// The inverse of [`local_datetime`], as Kamailio reads such a column
/// back (db_str2time: the fields, then mktime with daylight saving time
/// left for mktime to guess). Fractions of a second are ignored. None
/// for text of another form.
pub fn parse_local_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T'])?;
    let mut d = date.splitn(3, '-').map(str::parse::<i32>);
    let (year, mon, mday) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(str::parse::<i32>);
    let (hour, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // SAFETY: as in local_datetime.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = mday;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    tm.tm_isdst = -1;
    // SAFETY: a pointer to a live local, which mktime normalises in place.
    let t = unsafe { libc::mktime(&mut tm) };
    // -1 is also 23:59:59 on 31 December 1969, never a contact's time.
    (t != -1).then_some(t as i64)
}

/// Turns off SQLite's memory statistics, once, before the process's first
/// connection: with them on, every allocation SQLite makes takes and
/// releases a process-wide mutex (a tenth of the staging thread's CPU in
/// the snapshot bench), and nothing here reads them. Too late where SQLite
/// is already initialised (in SER with db_sqlite, whose library this
/// process shares): SQLite then refuses the change, which is harmless.
pub fn sqlite_skip_memory_statistics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int; before SQLite's
        // initialisation it is applied, after it SQLITE_MISUSE is returned
        // and nothing changes. The Once keeps two threads from racing.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as libc::c_int);
        }
    });
}

/// Waits on the process-shared futex `word` while it holds `expected`, at
/// most `timeout`: returns on a wake, a signal, the timeout, or at once if
/// `word` no longer holds `expected` (the caller re-checks its condition).
pub fn futex_wait(word: &std::sync::atomic::AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a live, aligned 32-bit word with a relative
    // timeout that outlives the call; shared (no FUTEX_PRIVATE_FLAG), as
    // the word lives in a mapping shared between processes. Its errors
    // (EAGAIN, EINTR, ETIMEDOUT) all mean "look again".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every waiter on the process-shared futex `word`.
pub fn futex_wake_all(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned 32-bit word; no other memory
    // is touched.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn eventfd_counts_wakes_and_drains() {
        let fd = eventfd().unwrap();
        assert!(!poll_readable(fd.as_fd(), Duration::ZERO).unwrap());
        assert_eq!(
            eventfd_read(fd.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        eventfd_write(fd.as_fd(), 1).unwrap();
        eventfd_write(fd.as_fd(), 2).unwrap();
        assert!(poll_readable(fd.as_fd(), Duration::from_millis(100)).unwrap());
        assert_eq!(eventfd_read(fd.as_fd()).unwrap(), 3);
    }

    #[test]
    fn shared_map_is_zeroed_and_writable() {
        let m = SharedMap::new(4096).unwrap();
        // SAFETY: within the mapping, which outlives both accesses.
        unsafe {
            assert_eq!(*m.as_ptr().add(4095), 0);
            *m.as_ptr().add(4095) = 7;
            assert_eq!(*m.as_ptr().add(4095), 7);
        }
    }

    #[test]
    fn mkfifo_makes_a_fifo_and_reports_failure() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reply");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        mkfifo(&c, 0o600).unwrap();
        assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
        assert_eq!(
            mkfifo(&c, 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
    }

    #[test]
    fn local_datetime_round_trips() {
        // In the process's zone, whatever it is: a round trip holds.
        for t in [0i64, 1_000_000_000, 2_000_000_000, 1_700_000_000 + 12_345] {
            let s = local_datetime(t).unwrap();
            assert_eq!(s.len(), 19, "{s}");
            assert_eq!(parse_local_datetime(&s), Some(t), "{s}");
        }
        assert_eq!(
            parse_local_datetime("2030-05-28 21:32:15.250000"),
            parse_local_datetime("2030-05-28 21:32:15")
        );
        assert_eq!(parse_local_datetime("yesterday"), None);
        assert_eq!(parse_local_datetime("2030-05-28"), None);
    }
}
