//! The `sersync.apply` payload: what the applier sends through SER's RPC
//! door and what the module decodes inside SER. Text, because it travels
//! as a JSON-RPC string parameter: base64 of the encoded [`ApplyBatch`].

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::record::Record;

/// 2: each record with its stamp (ordering in usrloc, [`crate::queue::Held`]).
pub const PAYLOAD_VERSION: u8 = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct ApplyBatch {
    pub version: u8,
    /// (stamp, record)
    pub records: Vec<(u64, Record)>,
}

pub fn encode(records: &[(u64, Record)]) -> String {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        version: u8,
        records: &'a [(u64, Record)],
    }
    let mut bytes = Vec::new();
    codec::encode_into(
        &Borrowed {
            version: PAYLOAD_VERSION,
            records,
        },
        &mut bytes,
    )
    .expect("encoding into a Vec cannot fail");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes of payload text `record` would take.
pub fn encoded_len(record: &(u64, Record)) -> usize {
    let n = codec::encoded_len(record).unwrap_or(u64::MAX) as usize;
    n.saturating_mul(4) / 3 + 4
}

pub fn decode(text: &[u8]) -> Result<Vec<(u64, Record)>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim_ascii())
        .map_err(|e| format!("not base64: {e}"))?;
    let batch: ApplyBatch = codec::decode(&bytes)?;
    if batch.version != PAYLOAD_VERSION {
        return Err(format!(
            "payload version {} (this module reads {PAYLOAD_VERSION})",
            batch.version
        ));
    }
    Ok(batch.records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Contact, Op};

    #[test]
    fn round_trip_and_garbage() {
        let recs = vec![(
            7,
            Record::Contact {
                op: Op::Delete,
                contact: Contact {
                    aor: b"alice".to_vec(),
                    user_agent: vec![0xff, 0x00, b'x'],
                    ..Default::default()
                },
            },
        )];
        let text = encode(&recs);
        assert_eq!(decode(text.as_bytes()).unwrap(), recs);
        assert!(decode(b"!!!").is_err());
        assert!(decode(b"AAAA").is_err());
        let mut cut = text.clone();
        cut.truncate(text.len() - 8);
        assert!(decode(cut.as_bytes()).is_err());
    }
}
