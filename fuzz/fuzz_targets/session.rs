//! The chunk decoder that carries frames inside Noise messages, through
//! the real connection code (`sersync::net::fuzzing`): an honest peer
//! completes the handshake with the node (either side), then sends
//! arbitrary plaintext sealed chunk by chunk (frames split or joined
//! anyhow, as the node's frame reader must take them), or arbitrary
//! ciphertext, or sealed chunks followed by garbage.
//!
//! First byte: bit 0 the node's side (accepted, dialed), bits 1-2 what
//! follows the handshake, the rest how many bytes it reads at a time.
//! Then the input: chunk bodies, each a u16 BE length and its bytes.
//! - 0: each body sealed as a chunk.
//! - 1: the input itself as ciphertext (lengths and all).
//! - 2: the first half of the bodies sealed, then the rest raw.
//! - 3: the bodies sealed, one of them with a byte flipped.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use sersync::net::fuzzing::{chunk_bodies, seal_each, Harness, NodeIs};

thread_local! {
    static H: RefCell<Harness> = RefCell::new(Harness::new().expect("fuzzing harness"));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let piece = 1 + (mode >> 3) as usize * 401;
    H.with(|h| {
        let mut h = h.borrow_mut();
        let ts = if mode & 1 == 0 {
            h.open(NodeIs::Acceptor).expect("open");
            h.dial_session(None, piece)
        } else {
            h.open(NodeIs::Dialer).expect("open");
            h.accept_session(true, piece)
        };
        let mut ts = ts.expect("an honest peer completes the handshake");
        assert!(h.is_open(), "the node closed an honest peer's session");
        let bodies = chunk_bodies(rest);
        let wire = match (mode >> 1) & 3 {
            0 => seal_each(&mut ts, &bodies),
            1 => rest.to_vec(),
            2 => {
                let half = bodies.len() / 2;
                let mut w = seal_each(&mut ts, &bodies[..half]);
                for b in &bodies[half..] {
                    w.extend_from_slice(b);
                }
                w
            }
            _ => {
                let mut w = seal_each(&mut ts, &bodies);
                if !w.is_empty() {
                    let at = rest.len() % w.len();
                    w[at] ^= 0x80;
                }
                w
            }
        };
        h.send(&wire, piece);
        h.finish();
    });
});
