//! Frames and their framing: `u32` big-endian length, then the encoded
//! [`Frame`]. The length is checked against [`MAX_FRAME`] before anything
//! is allocated for the body.

use serde::{Deserialize, Serialize};

use super::auth::{Nonce, Tag};
use crate::codec;
use crate::digest::Digest;
use crate::error::WireError;
use crate::record::{Change, SnapRow};

pub const MAGIC: [u8; 4] = *b"SSYN";
/// The version a `Challenge` states: the oldest this build speaks (see
/// [`super::version`]).
pub const VERSION: u16 = super::version::OLDEST;
/// Largest frame body accepted. Batches are cut well below it.
pub const MAX_FRAME: usize = 16 << 20;
/// Largest frame body accepted before the connection is authenticated:
/// what a handshake needs. A `Hello` is under 300 bytes (a node id is at
/// most 63 bytes, a listen address under 60); a welcome may name the
/// last snapshot key staged. Nobody gets 16 MiB of our memory for free.
pub const HANDSHAKE_MAX_FRAME: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Challenge {
        magic: [u8; 4],
        version: u16,
        node_id: String,
        nonce: Nonce,
    },
    /// `listen`: where the dialer accepts connections, so the acceptor
    /// (and, through it, every member) can dial it back.
    Hello {
        magic: [u8; 4],
        version: u16,
        node_id: String,
        listen: String,
        nonce: Nonce,
        tag: Tag,
    },
    /// `snapshot`: a snapshot from this dialer was interrupted; the
    /// acceptor holds it up to this key, consistent with that sequence.
    /// With an empty key: the acceptor asks for a snapshot (its journal
    /// was restored from a backup); a dialer that does not know this
    /// sends none.
    Welcome {
        tag: Tag,
        resume_after: u64,
        snapshot: Option<SnapshotResume>,
    },
    Refuse {
        reason: String,
    },
    Batch {
        changes: Vec<Change>,
    },
    Ack {
        upto: u64,
    },
    TempFail {
        upto: u64,
        reason: String,
    },
    /// Part of a snapshot of the sender's state, consistent with (and to
    /// be followed by) its journal after `upto`. Rows come in key order.
    SnapshotChunk {
        upto: u64,
        chunk: u64,
        rows: Vec<SnapRow>,
        last: bool,
    },
    /// The chunk is durably staged.
    SnapshotAck {
        chunk: u64,
    },
    /// The members the sender knows, sent after the handshake and on every
    /// change, in either direction.
    Members {
        members: Vec<Member>,
    },
    // Protocol v2: only on connections that negotiated it. New variants go
    // at the end; earlier ones keep their encoding.
    /// The acceptor's welcome when the dialer stated version 2 or later:
    /// as `Welcome`, plus the version chosen and the acceptor's session.
    /// The tag covers the version (`auth::tag_for`).
    WelcomeV2 {
        tag: Tag,
        resume_after: u64,
        snapshot: Option<SnapshotResume>,
        session: Session,
    },
    /// The dialer's session, its first frame after a `WelcomeV2`.
    DialerSession {
        session: Session,
    },
    /// A batch whose records travel as their origin encoded them: the
    /// receiver decodes each one and sets aside one it cannot decode (a
    /// kind newer than it knows) instead of refusing the whole batch.
    RawBatch {
        changes: Vec<RawChange>,
    },
    // Protocol v3: the peer check (`net::check`), only on connections
    // that negotiated v3 or later.
    /// Dialer → acceptor: the dialer's state digest ([`Digest`]: per key
    /// range, the count and sum of version hashes of its comparable
    /// contacts) for a check made at unix time `at`.
    CheckDigest {
        check: u64,
        at: i64,
        digest: Digest,
    },
    /// Acceptor → dialer: how many ranges differ, the ones compared this
    /// round (a bounded part of them) and the versions the acceptor holds
    /// in them: comparable contacts and tombstones. Empty when the digests
    /// are equal.
    CheckVersions {
        check: u64,
        differing: u16,
        ranges: Vec<u16>,
        /// The origins the versions name, each once.
        origins: Vec<String>,
        versions: Vec<KeyVersion>,
    },
    /// Either way: versions the receiver lacks or holds older, and the
    /// key hashes of those the sender wants in return.
    CheckRows {
        check: u64,
        rows: Vec<RawSnapRow>,
        want: Vec<u64>,
    },
}

/// One version a node holds of a key, as a check compares it: the key's
/// hash ([`key_hash`]), its stamp, its origin (an index into
/// the frame's `origins`) and whether it is present or a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub key: u64,
    pub hlc: u64,
    pub origin: u16,
    pub live: bool,
}

/// The hash a check names a key by (a record's `key()`): the first 8
/// bytes of its SHA-256.
pub fn key_hash(key: &[u8]) -> u64 {
    use sha2::{Digest as _, Sha256};
    let out = Sha256::digest(key);
    u64::from_be_bytes(out[..8].try_into().expect("32 bytes"))
}

/// A state row whose record is still encoded (as [`RawChange`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawSnapRow {
    pub origin: String,
    pub hlc: u64,
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

/// What each side of a v2 connection tells the other about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The protocol version the connection uses.
    pub version: u16,
    /// The sender's incarnation: grows with every start of the node, and
    /// past anything a peer has seen from it.
    pub incarnation: u64,
    /// Random, drawn at each start: tells two runs that a journal restored
    /// from a backup gave the same incarnation apart.
    pub run: u64,
    /// The highest incarnation of the receiver the sender has seen (0:
    /// none), and that run's `run`: a node whose journal was restored from
    /// a backup learns from it that it must move past that.
    pub seen: u64,
    pub seen_run: u64,
    /// Optional features the sender understands, by name.
    pub capabilities: Vec<String>,
}

/// A [`Change`] whose record is still encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawChange {
    pub seq: u64,
    pub hlc: u64,
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    /// "tcp:ip:port"
    pub address: String,
    /// Removed for good (`sersync.forget`): never dial it, refuse it.
    pub forgotten: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResume {
    pub upto: u64,
    #[serde(with = "serde_bytes")]
    pub after_key: Vec<u8>,
}

impl Frame {
    /// Appends the framed encoding to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        codec::encode_into(self, out).map_err(WireError::Malformed)?;
        let len = out.len() - start - 4;
        if len > MAX_FRAME {
            out.truncate(start);
            return Err(WireError::TooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Accumulates bytes from a stream and yields whole frames, none longer
/// than its limit.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    limit: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            limit: MAX_FRAME,
        }
    }
}

impl FrameReader {
    /// A reader accepting frames up to [`MAX_FRAME`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader accepting frames up to `limit` bytes (at most [`MAX_FRAME`]).
    pub fn with_limit(limit: usize) -> Self {
        FrameReader {
            limit: limit.min(MAX_FRAME),
            ..Self::default()
        }
    }

    /// Changes the longest frame accepted from now on (a connection that
    /// authenticated moves from [`HANDSHAKE_MAX_FRAME`] to [`MAX_FRAME`]).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FRAME);
    }

    /// Takes the bytes buffered past the frames read so far.
    pub fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.start);
        self.buf.clear();
        self.start = 0;
        rest
    }

    /// Bytes buffered but not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete frame, `Ok(None)` if more bytes are needed. An error
    /// means the stream is unusable and the connection must close.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.limit {
            return Err(WireError::TooLarge {
                len,
                max: self.limit,
            });
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let frame = codec::decode(&avail[4..4 + len]).map_err(WireError::Malformed)?;
        self.start += 4 + len;
        if self.start > (1 << 20) && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(frame))
    }
}
