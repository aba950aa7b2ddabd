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
