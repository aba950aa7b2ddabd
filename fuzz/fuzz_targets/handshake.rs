//! The handshake as a node sees it, through the real connection code
//! (`sersync::net::fuzzing`): arbitrary bytes as the peer's first
//! messages, to a node that accepted the connection or dialed it. The
//! node must refuse or close, never panic, never hold more than a
//! handshake's bytes.
//!
//! First byte: bits 0-1 choose the scenario, the rest how many bytes the
//! node reads at a time.
//! - 0: the node accepted; the peer sends the input.
//! - 1: the node dialed; the peer sends the input (a challenge, ...).
//! - 2: the node accepted; an honest dialer's opening and first Noise
//!   message, its payload (the hello) the input.
//! - 3: the node dialed; an honest acceptor's challenge, then the input
//!   as the answer to the node's first Noise message.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use sersync::net::fuzzing::{Harness, NodeIs};

thread_local! {
    static H: RefCell<Harness> = RefCell::new(Harness::new().expect("fuzzing harness"));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let piece = 1 + (mode >> 2) as usize * 23;
    H.with(|h| {
        let mut h = h.borrow_mut();
        match mode & 3 {
            0 => {
                h.open(NodeIs::Acceptor).expect("open");
                h.send(rest, piece);
            }
            1 => {
                h.open(NodeIs::Dialer).expect("open");
                h.send(rest, piece);
            }
            2 => {
                h.open(NodeIs::Acceptor).expect("open");
                let _ = h.dial_session(Some(rest), piece);
            }
            _ => {
                h.open(NodeIs::Dialer).expect("open");
                h.accept_session_then(rest, piece);
            }
        }
        h.finish();
    });
});
