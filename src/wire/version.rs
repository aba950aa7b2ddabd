//! Protocol versions: which this build speaks, what each one added, and
//! the rule that picks one for a connection.
//!
//! The handshake's frames keep their v1 shape forever, so that any two
//! releases can at least tell each other what they speak:
//! - the acceptor's `Challenge` states the OLDEST version it speaks (a v1
//!   dialer refuses anything but 1, so that stays 1 while v1 is spoken);
//! - the dialer's `Hello` states the NEWEST version it speaks;
//! - the acceptor picks the newest both speak and says so: a v1
//!   `Welcome` for version 1, a `WelcomeV2` naming the version otherwise.
//!   A v1 acceptor refuses a hello stating another version ("protocol v1
//!   only"); the dialer then says hello again stating 1.
//!
//! [`Frame::since`] and [`Record::since`] name the version that introduced
//! each frame and record kind; a connection never carries anything newer
//! than its version (checked where frames are queued, in `net::conn`).

use super::{Frame, RawChange};
use crate::codec;
use crate::record::{Change, Record};

/// The oldest protocol version this build speaks.
pub const OLDEST: u16 = 1;
/// The newest protocol version this build speaks.
///
/// - v1: the first release (typed `Batch`es).
/// - v2: `WelcomeV2` and `DialerSession` (versions and incarnations in the
///   handshake), `RawBatch` (each record as its origin encoded it, so a
///   receiver sets aside a record it cannot decode instead of refusing
///   the whole batch).
/// - v3: `CheckDigest`, `CheckVersions`, `CheckRows` (the peer check:
///   state digests compared, differing ranges compared key by key, the
///   versions one side lacks or holds older sent to it).
/// - v4: encrypted, authenticated sessions (`wire::session`): after the
///   acceptor's clear `Challenge`, every byte is a Noise message. No new
///   frame; a v4 acceptor that serves no clear peer states v4 in its
///   challenge, which older dialers refuse.
pub const NEWEST: u16 = 4;

/// The version for a connection whose dialer speaks up to `their_newest`,
/// or why there is none.
pub fn negotiate(their_newest: u16) -> Result<u16, String> {
    if their_newest < OLDEST {
        return Err(format!(
            "peer speaks protocol up to v{their_newest}; this node speaks v{OLDEST} to v{NEWEST}"
        ));
    }
    Ok(their_newest.min(NEWEST))
}

/// The version a refusal names when a peer refused our hello because it
/// does not speak the version we stated ("protocol vN only"), if it is
/// older than `stated`.
pub fn refused_for_version(reason: &str, stated: u16) -> Option<u16> {
    let rest = reason.strip_prefix("protocol v")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let v: u16 = digits.parse().ok()?;
    (v >= OLDEST && v < stated).then_some(v)
}

/// The batch frame that carries `changes` on a connection of `version`:
/// v2 and later pass each record as encoded bytes (`RawBatch`); v1 gets a
/// typed `Batch` without the records of kinds it does not know.
pub fn batch(version: u16, changes: Vec<Change>) -> Frame {
    if version >= 2 {
        raw_batch(
            changes
                .into_iter()
                .map(|c| {
                    let mut record = Vec::with_capacity(256);
                    codec::encode_into(&c.record, &mut record)
                        .expect("encoding into a Vec cannot fail");
                    (c.seq, c.hlc, record)
                })
                .collect(),
        )
    } else {
        let changes = changes
            .into_iter()
            .filter(|c| c.record.since() <= version)
            .collect();
        Frame::Batch { changes }
    }
}

/// The v2 batch frame of changes as the journal stores them: (sequence,
/// stamp, the record's encoded bytes), byte for byte what [`batch`] makes
/// of the same changes decoded.
pub fn raw_batch(rows: Vec<(u64, u64, Vec<u8>)>) -> Frame {
    Frame::RawBatch {
        changes: rows
            .into_iter()
            .map(|(seq, hlc, record)| RawChange { seq, hlc, record })
            .collect(),
    }
}

impl Frame {
    /// The protocol version that introduced this frame.
    pub fn since(&self) -> u16 {
        match self {
            Frame::WelcomeV2 { .. } | Frame::DialerSession { .. } | Frame::RawBatch { .. } => 2,
            Frame::CheckDigest { .. } | Frame::CheckVersions { .. } | Frame::CheckRows { .. } => 3,
            Frame::Batch { changes } => changes.iter().map(|c| c.record.since()).max().unwrap_or(1),
            _ => 1,
        }
    }
}

impl Record {
    /// The protocol version that introduced this kind of record.
    pub fn since(&self) -> u16 {
        // No catch-all: a new kind must name its version here.
        match self {
            Record::Contact { .. } | Record::Alias { .. } => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Incoming;

    #[test]
    fn the_newest_version_both_speak_is_used() {
        assert_eq!(negotiate(1), Ok(1));
        assert_eq!(negotiate(2), Ok(2));
        assert_eq!(negotiate(3), Ok(3));
        assert_eq!(negotiate(4), Ok(4));
        assert_eq!(negotiate(9), Ok(NEWEST));
        assert!(negotiate(0).unwrap_err().contains("v1 to v4"));
    }

    #[test]
    fn a_raw_batch_gives_back_what_decodes_and_names_what_does_not() {
        let rec = Record::Alias {
            op: crate::record::Op::Upsert,
            alias: Default::default(),
        };
        let Frame::RawBatch { mut changes } = batch(
            2,
            vec![
                Change {
                    seq: 1,
                    hlc: 10,
                    record: rec.clone(),
                },
                Change {
                    seq: 2,
                    hlc: 11,
                    record: rec.clone(),
                },
            ],
        ) else {
            panic!("v2 batches are raw")
        };
        // A kind this build does not know: variant index 99.
        changes.insert(
            1,
            RawChange {
                seq: 5,
                hlc: 12,
                record: vec![99, 0],
            },
        );
        let (good, aside): (Vec<_>, Vec<_>) = changes
            .iter()
            .map(|c| (c, Incoming::from_encoded(c.seq, c.hlc, &c.record)))
            .partition(|(_, i)| i.is_ok());
        let good: Vec<_> = good.into_iter().map(|(c, i)| (c, i.unwrap())).collect();
        assert_eq!(
            good.iter().map(|(_, i)| i.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        // Passed through as received: this node encodes them the same.
        for (c, i) in &good {
            assert!(matches!(i.body, std::borrow::Cow::Borrowed(_)));
            assert_eq!(&*i.body, &c.record[..]);
        }
        assert_eq!(aside.len(), 1);
        assert_eq!(aside[0].0.seq, 5);
        assert!(matches!(batch(1, vec![]), Frame::Batch { .. }));
    }

    #[test]
    fn a_v1_refusal_names_version_1() {
        assert_eq!(refused_for_version("protocol v1 only", 2), Some(1));
        assert_eq!(refused_for_version("protocol v2 only", 2), None);
        assert_eq!(refused_for_version("authentication failed", 2), None);
    }
}
