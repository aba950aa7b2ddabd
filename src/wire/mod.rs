//! The peer protocol: length-prefixed bincode frames over TCP.
//!
//! A connection is one-way for data: the node that dials sends its own
//! journal's changes; the node that accepts stages them and acknowledges.
//! Each pair of nodes thus holds two connections, one per direction.
//!
//! Handshake (nothing about state moves before it completes):
//! 1. acceptor → `Challenge { node_id, nonce_a }`
//! 2. dialer → `Hello { node_id, nonce_d, mac }`, mac = HMAC(secret, dialer
//!    role, both nonces, both ids)
//! 3. acceptor → `Welcome { mac, resume_after }` proving it knows the secret
//!    too and naming the last sequence it holds from this dialer, or
//!    `Refuse { reason }`.
//!
//! Then dialer → `Batch`; acceptor → `Ack { upto }` once the batch is
//! durably staged, or `TempFail { upto, reason }`: resend after `upto`.
//!
//! When the acceptor needs changes the dialer's journal no longer holds
//! (a new node, or one down longer than the retention), the dialer first
//! sends its whole state as `SnapshotChunk`s (acknowledged one by one with
//! `SnapshotAck`), then its journal after the snapshot's sequence. An
//! interrupted snapshot resumes after the last key the acceptor staged.
//!
//! From v3, the dialer checks now and then that the acceptor's state
//! equals its own (`CheckDigest` → `CheckVersions` → `CheckRows` both
//! ways; see `net::check`).

pub mod auth;
pub mod frame;
pub mod session;
pub mod version;

pub use frame::{
    key_hash, Frame, FrameReader, KeyVersion, Member, RawChange, RawSnapRow, Session,
    SnapshotResume, HANDSHAKE_MAX_FRAME, MAGIC, MAX_FRAME, VERSION,
};
