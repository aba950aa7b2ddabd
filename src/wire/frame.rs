//! Frames and their framing: `u32` big-endian length, then the encoded
//! [`Frame`]. The length is checked against [`MAX_FRAME`] before anything
//! is allocated for the body.

use serde::{Deserialize, Serialize};

use super::auth::{Nonce, Tag};
use super::codec;
use crate::error::WireError;
use crate::record::{Change, SnapRow};

pub const MAGIC: [u8; 4] = *b"SSYN";
pub const VERSION: u16 = 1;
/// Largest frame body accepted. Batches are cut well below it.
pub const MAX_FRAME: usize = 16 << 20;

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

/// Accumulates bytes from a stream and yields whole frames.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
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
        if len > MAX_FRAME {
            return Err(WireError::TooLarge {
                len,
                max: MAX_FRAME,
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
