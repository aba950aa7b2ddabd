//! Speaking sersync's wire protocol from a test: reading and sending
//! frames, the dialer's hello, and a fake member that completes the
//! handshake and then never reads.

#![allow(dead_code)] // each test file uses part of it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::Duration;

pub mod v1;

use sersync::wire::auth::{self, Nonce, Role, Transcript};
use sersync::wire::{Frame, FrameReader, MAGIC, VERSION};

/// The next frame on `s`, None at EOF or on an error.
pub fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut r = FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some(f)) = r.next_frame() {
            return Some(f);
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => r.extend(&buf[..n]),
        }
    }
}

pub fn send(s: &mut TcpStream, f: &Frame) {
    let mut out = Vec::new();
    f.write_to(&mut out).expect("encoding a frame");
    s.write_all(&out).expect("sending a frame");
}

/// The acceptor's challenge: its node id and nonce.
pub fn challenge(s: &mut TcpStream) -> (String, Nonce) {
    match read_frame(s) {
        Some(Frame::Challenge { node_id, nonce, .. }) => (node_id, nonce),
        other => panic!("expected the node's challenge, got {other:?}"),
    }
}

/// A hello from dialer `id`, listening on `listen`, answering `nonce_a`
/// of `acceptor`, stating `version` (its tag made for that version).
pub fn hello(
    secret: &[u8],
    id: &str,
    acceptor: &str,
    nonce_a: &Nonce,
    version: u16,
    listen: &str,
) -> Frame {
    let nonce_d = auth::fresh_nonce();
    let tag = auth::tag_for(
        secret,
        Role::Dialer,
        &Transcript {
            nonce_a,
            nonce_d: &nonce_d,
            dialer: id,
            acceptor,
        },
        version,
    );
    Frame::Hello {
        magic: MAGIC,
        version,
        node_id: id.into(),
        listen: listen.into(),
        nonce: nonce_d,
        tag,
    }
}

/// A fake member of the first release (protocol v1) listening on `addr`
/// that completes the handshake of
/// every node dialing it (it knows the secret), as an empty new member
/// would, and then never reads a byte. Stops with the value.
pub struct StuckMember {
    stop: Arc<AtomicBool>,
    /// Connections it completed.
    pub accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StuckMember {
    pub fn start(addr: (&str, u16), secret: Vec<u8>, id: &'static str) -> StuckMember {
        let l = TcpListener::bind(addr).expect("binding the fake member");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (st, acc) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    sleep(Duration::from_millis(50));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let nonce_a = auth::fresh_nonce();
                send(
                    &mut s,
                    &Frame::Challenge {
                        magic: MAGIC,
                        version: VERSION,
                        node_id: id.into(),
                        nonce: nonce_a,
                    },
                );
                let Some(Frame::Hello {
                    node_id,
                    nonce,
                    version,
                    ..
                }) = read_frame(&mut s)
                else {
                    continue;
                };
                if version != VERSION {
                    // As a node of the first release answers: the dialer
                    // says hello again stating v1.
                    send(
                        &mut s,
                        &Frame::Refuse {
                            reason: format!("protocol v{VERSION} only"),
                        },
                    );
                    continue;
                }
                let tag = auth::tag(
                    &secret,
                    Role::Acceptor,
                    &Transcript {
                        nonce_a: &nonce_a,
                        nonce_d: &nonce,
                        dialer: &node_id,
                        acceptor: id,
                    },
                );
                send(
                    &mut s,
                    &Frame::Welcome {
                        tag,
                        resume_after: 0,
                        snapshot: None,
                    },
                );
                acc.fetch_add(1, Ordering::Relaxed);
                held.push(s); // and never read from it again
            }
        });
        StuckMember {
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

impl Drop for StuckMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
