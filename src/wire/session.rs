//! Protocol v4's encrypted sessions: the Noise protocol framework
//! (`snow`), pattern `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`.
//!
//! - The key: HKDF-SHA256 of the cluster's secret to a 32-byte PSK. Only
//!   nodes knowing the secret complete a handshake (psk0: the dialer's
//!   first message is already encrypted and authenticated under it).
//! - Fresh per connection: both sides' ephemeral X25519 keys (the NN
//!   part); traffic recorded today stays unreadable if the secret leaks
//!   later.
//! - Bound to the connection: the prologue holds the acceptor's clear
//!   `Challenge` as sent (its node id, the version it states, its fresh
//!   nonce) and the dialer's opening (magic, version); the dialer's first
//!   message carries its `Hello` (its node id) as authenticated payload.
//!   A relay changing any of them breaks the handshake; a first message
//!   replayed on another connection meets another nonce and fails.
//! - Direction: Noise gives each direction its own key; nonces are
//!   counters, so a replayed, reordered or dropped chunk fails to decrypt
//!   and the connection closes.
//!
//! On the wire, after the acceptor's clear `Challenge` frame:
//! dialer → `MAGIC`, version (u16 BE), then chunks; acceptor → chunks. A
//! chunk is a u16 BE length and one Noise message (at most 65535 bytes).
//! The first chunk each way is a handshake message; every later one is a
//! transport message carrying part of the stream of frames (a frame may
//! span chunks and is handed on only whole, by [`super::FrameReader`]).

use hkdf::Hkdf;
use sha2::Sha256;
use snow::{Builder, HandshakeState, TransportState};

use super::{Frame, MAGIC};
use crate::codec;
use crate::error::WireError;

pub const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// The protocol version that uses sessions.
pub const SESSION_VERSION: u16 = 4;
/// The dialer's opening before its first chunk: magic and version.
pub const OPENING_LEN: usize = 6;
/// Longest Noise message, hence chunk body.
pub const MAX_CHUNK: usize = 65535;
/// Authentication tag per transport message.
pub const TAG_LEN: usize = 16;
/// Most plaintext one chunk carries.
pub const MAX_PLAIN: usize = MAX_CHUNK - TAG_LEN;
/// Longest handshake message accepted: an ephemeral key, a tag and a
/// `Hello` (see [`super::HANDSHAKE_MAX_FRAME`]).
pub const MAX_HANDSHAKE_CHUNK: usize = 1024;

/// The 32-byte pre-shared key derived from the cluster's secret.
pub fn psk(secret: &[u8]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"sersync"), secret);
    let mut out = [0u8; 32];
    hk.expand(b"sersync protocol v4 noise psk", &mut out)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The dialer's opening: magic and the session version.
pub fn opening() -> [u8; OPENING_LEN] {
    let mut o = [0u8; OPENING_LEN];
    o[..4].copy_from_slice(&MAGIC);
    o[4..].copy_from_slice(&SESSION_VERSION.to_be_bytes());
    o
}

/// What both sides bind the handshake to: the challenge as the acceptor
/// sent it and the dialer's opening.
pub fn prologue(challenge: &Frame, opening: &[u8]) -> Vec<u8> {
    let mut p = b"sersync session v4\0".to_vec();
    let mut ch = Vec::new();
    let _ = codec::encode_into(challenge, &mut ch);
    p.extend_from_slice(&(ch.len() as u32).to_be_bytes());
    p.extend_from_slice(&ch);
    p.extend_from_slice(opening);
    p
}

fn builder<'a>(psk: &'a [u8; 32], prologue: &'a [u8]) -> Result<Builder<'a>, WireError> {
    let params = PATTERN
        .parse()
        .map_err(|e| WireError::Malformed(format!("noise pattern: {e}")))?;
    Builder::new(params)
        .psk(0, psk)
        .and_then(|b| b.prologue(prologue))
        .map_err(|e| WireError::Malformed(format!("noise: {e}")))
}

pub fn initiator(psk: &[u8; 32], prologue: &[u8]) -> Result<HandshakeState, WireError> {
    builder(psk, prologue)?
        .build_initiator()
        .map_err(|e| WireError::Malformed(format!("noise: {e}")))
}

pub fn responder(psk: &[u8; 32], prologue: &[u8]) -> Result<HandshakeState, WireError> {
    builder(psk, prologue)?
        .build_responder()
        .map_err(|e| WireError::Malformed(format!("noise: {e}")))
}

/// Appends a handshake message carrying `payload` to `out` as a chunk.
pub fn write_handshake(
    hs: &mut HandshakeState,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let at = out.len();
    out.resize(at + 2 + MAX_HANDSHAKE_CHUNK, 0);
    match hs.write_message(payload, &mut out[at + 2..]) {
        Ok(n) => {
            out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
            out.truncate(at + 2 + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(WireError::Malformed(format!("noise handshake: {e}")))
        }
    }
}

/// Seals `plain` into chunks appended to `out` (reusing its capacity).
pub fn seal(t: &mut TransportState, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    for part in plain.chunks(MAX_PLAIN) {
        let at = out.len();
        out.resize(at + 2 + part.len() + TAG_LEN, 0);
        match t.write_message(part, &mut out[at + 2..]) {
            Ok(n) => out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes()),
            Err(e) => {
                out.truncate(at);
                return Err(WireError::Malformed(format!("noise: {e}")));
            }
        }
    }
    Ok(())
}

/// Accumulates the bytes of a session stream and yields whole chunks.
#[derive(Default)]
pub struct ChunkReader {
    buf: Vec<u8>,
    start: usize,
}

impl ChunkReader {
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The buffered bytes not consumed yet.
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Consumes `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// The next whole chunk's body (consumed), None if more bytes are
    /// needed.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        let avail = &self.buf[self.start..];
        if avail.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if avail.len() < 2 + len {
            return None;
        }
        let at = self.start + 2;
        self.start += 2 + len;
        Some(&self.buf[at..at + len])
    }
}

/// Decrypts every whole chunk buffered in `raw` and hands the plaintext
/// to `sink`, through `scratch` (reused). An error (a chunk forged,
/// replayed, reordered, or from another session) leaves the stream
/// unusable: the connection must close.
pub fn open_all(
    t: &mut TransportState,
    raw: &mut ChunkReader,
    scratch: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), WireError> {
    if scratch.len() < MAX_CHUNK {
        scratch.resize(MAX_CHUNK, 0);
    }
    while let Some(chunk) = raw.next_chunk() {
        let n = t
            .read_message(chunk, scratch)
            .map_err(|_| WireError::Malformed("a chunk failed authentication".into()))?;
        sink(&scratch[..n]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Frame {
        Frame::Challenge {
            magic: MAGIC,
            version: 4,
            node_id: "a".into(),
            nonce: [7; 32],
        }
    }

    /// A handshake between two sides; their transport states.
    fn pair(
        psk_d: &[u8; 32],
        psk_a: &[u8; 32],
    ) -> Result<(TransportState, TransportState), WireError> {
        let pro = prologue(&challenge(), &opening());
        let mut d = initiator(psk_d, &pro)?;
        let mut a = responder(psk_a, &pro)?;
        let mut wire = Vec::new();
        write_handshake(&mut d, b"hello", &mut wire)?;
        let mut r = ChunkReader::default();
        r.extend(&wire);
        let mut payload = [0u8; 1024];
        let m1 = r.next_chunk().unwrap().to_vec();
        let n = a
            .read_message(&m1, &mut payload)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        assert_eq!(&payload[..n], b"hello");
        wire.clear();
        write_handshake(&mut a, b"", &mut wire)?;
        d.read_message(&wire[2..], &mut payload)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        Ok((
            d.into_transport_mode().unwrap(),
            a.into_transport_mode().unwrap(),
        ))
    }

    #[test]
    fn frames_cross_whole_over_chunks_and_tampering_fails() {
        let k = psk(b"0123456789");
        let (mut d, mut a) = pair(&k, &k).unwrap();
        let big = vec![0xabu8; 200_000];
        let mut wire = Vec::new();
        seal(&mut d, &big, &mut wire).unwrap();
        assert!(wire.len() > big.len());
        let mut raw = ChunkReader::default();
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        // Byte by byte: nothing is handed on before its chunk is whole.
        for b in &wire {
            raw.extend(std::slice::from_ref(b));
            open_all(&mut a, &mut raw, &mut scratch, |p| got.extend_from_slice(p)).unwrap();
        }
        assert_eq!(got, big);
        // A replayed chunk fails.
        let mut one = Vec::new();
        seal(&mut d, b"x", &mut one).unwrap();
        raw.extend(&one);
        open_all(&mut a, &mut raw, &mut scratch, |_| {}).unwrap();
        raw.extend(&one);
        assert!(open_all(&mut a, &mut raw, &mut scratch, |_| {}).is_err());
    }

    #[test]
    fn another_secret_or_prologue_fails_the_handshake() {
        assert!(pair(&psk(b"0123456789"), &psk(b"another secret")).is_err());
        let k = psk(b"0123456789");
        let mut d = initiator(&k, &prologue(&challenge(), &opening())).unwrap();
        let other = Frame::Challenge {
            magic: MAGIC,
            version: 1,
            node_id: "a".into(),
            nonce: [7; 32],
        };
        let mut a = responder(&k, &prologue(&other, &opening())).unwrap();
        let mut wire = Vec::new();
        write_handshake(&mut d, b"hello", &mut wire).unwrap();
        let mut payload = [0u8; 1024];
        assert!(a.read_message(&wire[2..], &mut payload).is_err());
    }
}
