//! Protocol v1 as the first release spoke it, frozen: its own types and
//! codec settings, copied by value, so that a change to today's frames or
//! records cannot change what this peer understands. A test that feeds it
//! something newer fails to decode, as a v1 node would.

use std::io::{Read, Write};
use std::net::TcpStream;

use bincode::Options;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Upsert,
    Delete,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    #[serde(with = "serde_bytes")]
    pub domain: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub aor: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub contact: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub ruid: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub received: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub callid: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub user_agent: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub socket: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub instance: Vec<u8>,
    pub expires: i64,
    pub last_modified: i64,
    pub q: i32,
    pub cseq: i32,
    pub flags: u32,
    pub cflags: u32,
    pub methods: u32,
    pub reg_id: u32,
    pub server_id: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    #[serde(with = "serde_bytes")]
    pub table: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub alias_username: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub alias_domain: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub username: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub domain: Vec<u8>,
}

/// v1's record kinds. (The release also had two queue-only variants after
/// these; they never travelled.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Contact { op: Op, contact: Contact },
    Alias { op: Op, alias: Alias },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub hlc: u64,
    pub record: Record,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRow {
    pub origin: String,
    pub hlc: u64,
    pub record: Record,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub address: String,
    pub forgotten: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResume {
    pub upto: u64,
    #[serde(with = "serde_bytes")]
    pub after_key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Challenge {
        magic: [u8; 4],
        version: u16,
        node_id: String,
        nonce: [u8; 32],
    },
    Hello {
        magic: [u8; 4],
        version: u16,
        node_id: String,
        listen: String,
        nonce: [u8; 32],
        tag: [u8; 32],
    },
    Welcome {
        tag: [u8; 32],
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
    SnapshotChunk {
        upto: u64,
        chunk: u64,
        rows: Vec<SnapRow>,
        last: bool,
    },
    SnapshotAck {
        chunk: u64,
    },
    Members {
        members: Vec<Member>,
    },
}

pub const MAGIC: [u8; 4] = *b"SSYN";
pub const VERSION: u16 = 1;

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

pub fn send(s: &mut TcpStream, f: &Frame) {
    let body = options(u64::MAX).serialize(f).expect("encoding a v1 frame");
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    s.write_all(&out).expect("sending a v1 frame");
}

/// The next frame as a v1 node reads it: None at EOF, a read error or a
/// time-out; panics on a frame v1 cannot decode (what a v1 node would
/// close the connection over).
pub fn read(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 16 << 20 {
        // A v1 node closes the connection (e.g. on a v4 dialer's opening).
        return None;
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(
        options(len as u64)
            .deserialize(&body)
            .unwrap_or_else(|e| panic!("a v1 node cannot decode this frame: {e}")),
    )
}
