//! Loopback ports for engines under test. The kernel may hand out the same
//! ephemeral port again right after it was released, so two calls in one
//! test (or in two tests running side by side) could name one port twice;
//! this remembers what it handed out in this process and never repeats.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port on 127.0.0.1 that was free a moment ago and that no other call
/// in this process has returned.
pub fn free_port() -> u16 {
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding a loopback port")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Connects to an engine on 127.0.0.1:`port`, waiting (at most 5 s) for
/// its network thread to listen: it binds on its first turn, which a
/// loaded machine may delay.
#[allow(dead_code)] // not every test file connects
pub fn connect_when_listening(port: u16) -> std::net::TcpStream {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("connecting to 127.0.0.1:{port}: {e}"),
        }
    }
}

/// A TCP connection from `src` (a 127.0.0.x address, so that nothing
/// leaves the test's addresses) to `dst`: in progress when `nonblocking`
/// (floods open hundreds at once), else connected.
#[allow(dead_code)] // not every test file connects from chosen addresses
pub fn connect_from(
    src: std::net::Ipv4Addr,
    dst: std::net::SocketAddrV4,
    nonblocking: bool,
) -> std::net::TcpStream {
    use std::net::SocketAddrV4;
    use std::os::unix::io::FromRawFd;
    let sin = |a: &SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket calls on a descriptor this function owns until
    // it is handed to TcpStream (which closes it, also on a panic below).
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = sin(&SocketAddrV4::new(src, 0));
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert!(rc == 0, "bind {src}: {}", std::io::Error::last_os_error());
        let rc = libc::connect(fd, (&sin(&dst) as *const libc::sockaddr_in).cast(), len);
        let err = std::io::Error::last_os_error();
        assert!(
            rc == 0 || (nonblocking && err.raw_os_error() == Some(libc::EINPROGRESS)),
            "connect {dst}: {err}"
        );
        stream
    }
}
