//! The one place that knows the serialisation format (bincode 1.3.3), so it
//! can be swapped without touching the protocol.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use bincode::Options;

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_little_endian()
        .with_varint_encoding()
        .reject_trailing_bytes()
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    options(u64::MAX)
        .serialize_into(out, value)
        .map_err(|e| e.to_string())
}

pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<u64, String> {
    options(u64::MAX)
        .serialized_size(value)
        .map_err(|e| e.to_string())
}

/// Encodes into a fixed buffer; returns the bytes written.
pub fn encode_to_slice<T: Serialize + ?Sized>(value: &T, out: &mut [u8]) -> Result<usize, String> {
    let total = out.len();
    let mut cursor: &mut [u8] = out;
    options(total as u64)
        .serialize_into(&mut cursor, value)
        .map_err(|e| e.to_string())?;
    Ok(total - cursor.len())
}

/// Decodes exactly one value from `bytes`. Never allocates more than
/// `bytes.len()` worth of claimed lengths: bincode's limit bounds it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_borrowed(bytes)
}

/// [`decode`] of a value that may borrow its byte strings from `bytes`
/// (no copy, no allocation for them).
pub fn decode_borrowed<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    options(bytes.len() as u64)
        .deserialize(bytes)
        // one line: some of bincode's messages span several
        .map_err(|e| e.to_string().replace('\n', " "))
}
