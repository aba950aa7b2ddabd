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
