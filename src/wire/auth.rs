//! Shared-secret challenge–response for the peer handshake.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub type Nonce = [u8; 32];
pub type Tag = [u8; 32];

#[derive(Clone, Copy)]
pub enum Role {
    Dialer,
    Acceptor,
}

/// One handshake's inputs; both sides build the same transcript.
pub struct Transcript<'a> {
    pub nonce_a: &'a Nonce,
    pub nonce_d: &'a Nonce,
    pub dialer: &'a str,
    pub acceptor: &'a str,
}

pub fn fresh_nonce() -> Nonce {
    let mut n = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut n) {
        crate::log::error(format_args!("no entropy for handshake nonce: {e}"));
    }
    n
}

/// Every input is length-prefixed so no two transcripts hash alike.
/// Version 1's tags cover the transcript; later versions' tags cover the
/// version stated too (the dialer's newest in its hello, the chosen one in
/// the welcome), so a relay cannot change a stated version without
/// breaking the tag. (Refusals are not authenticated: a forged "protocol
/// v1 only" still makes a dialer say hello again in v1; the encrypted
/// sessions of the hostile-network work close that.)
fn keyed(secret: &[u8], role: Role, t: &Transcript, version: u16) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    if version <= 1 {
        mac.update(b"sersync-handshake-v1");
    } else {
        mac.update(b"sersync-handshake-v2");
        mac.update(&version.to_be_bytes());
    }
    mac.update(&[match role {
        Role::Dialer => b'D',
        Role::Acceptor => b'A',
    }]);
    mac.update(t.nonce_a);
    mac.update(t.nonce_d);
    for id in [t.dialer, t.acceptor] {
        mac.update(&(id.len() as u32).to_be_bytes());
        mac.update(id.as_bytes());
    }
    mac
}

/// The tag with which `role` proves it knows the secret (protocol v1).
pub fn tag(secret: &[u8], role: Role, t: &Transcript) -> Tag {
    tag_for(secret, role, t, 1)
}

/// Constant-time check of a received tag (protocol v1).
pub fn verify(secret: &[u8], role: Role, t: &Transcript, got: &Tag) -> bool {
    verify_for(secret, role, t, 1, got)
}

/// The tag for a handshake stating `version`.
pub fn tag_for(secret: &[u8], role: Role, t: &Transcript, version: u16) -> Tag {
    keyed(secret, role, t, version)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a tag for a handshake stating `version`.
pub fn verify_for(secret: &[u8], role: Role, t: &Transcript, version: u16, got: &Tag) -> bool {
    keyed(secret, role, t, version).verify_slice(got).is_ok()
}
