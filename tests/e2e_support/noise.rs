//! Garbage for the bad-input tests, the same bytes on every run, and
//! connections from chosen loopback addresses (floods of strangers).

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::io::FromRawFd;

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A non-blocking TCP connection from `src` to `dst`, in progress.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> TcpStream {
    let sin = |a: &SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it is handed to TcpStream.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(&SocketAddrV4::new(src, 0));
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert!(rc == 0, "bind {src}: {}", std::io::Error::last_os_error());
        let rc = libc::connect(fd, (&sin(&dst) as *const libc::sockaddr_in).cast(), len);
        let err = std::io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect {dst}: {err}"
        );
        stream
    }
}
