//! What the worker queue carries: a change for the journal, or a control
//! message for the sersync process. Only the queue encodes items, and its
//! producers and consumer are one build, so this encoding may change;
//! [`Record`]'s is the journal's and the wire's.

use serde::{Deserialize, Serialize};

use crate::record::{Record, RecordRef};

// Nearly every item is a change: boxing it would allocate for each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// A local change: the ingest stamps and journals it.
    Change(Record),
    /// A full scan of an alias table starts; the upserts of that table
    /// that follow are its rows.
    ScanBegin {
        #[serde(with = "serde_bytes")]
        table: Vec<u8>,
    },
    /// The scan ends; the ingest concludes it ([`crate::scan`]).
    /// `confirmed`: the operator confirmed its deletions, however many.
    ScanEnd {
        #[serde(with = "serde_bytes")]
        table: Vec<u8>,
        confirmed: bool,
    },
    /// `sersync.forget`: remove a member for good; the members learn it
    /// by gossip.
    Forget { node_id: String },
    /// `sersync.quarantine_retry` / `_drop`: the quarantined change `id`,
    /// or all of them when 0 ([`crate::apply::quarantine`]).
    Quarantine { retry: bool, id: u64 },
    /// The scan gave up: nothing is deleted for it.
    ScanAbort {
        #[serde(with = "serde_bytes")]
        table: Vec<u8>,
    },
    /// `sersync.resync`: compare with the peer `node_id` (empty: every
    /// peer) and SER's usrloc now ([`crate::resync`]).
    Resync { node_id: String },
}

/// Borrowed twin of [`Item`] with the same encoding: what a SIP worker
/// publishes straight from SER's memory without allocating.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum ItemRef<'a> {
    Change(RecordRef<'a>),
    ScanBegin {
        #[serde(with = "serde_bytes")]
        table: &'a [u8],
    },
    ScanEnd {
        #[serde(with = "serde_bytes")]
        table: &'a [u8],
        confirmed: bool,
    },
    Forget {
        node_id: &'a str,
    },
    Quarantine {
        retry: bool,
        id: u64,
    },
    ScanAbort {
        #[serde(with = "serde_bytes")]
        table: &'a [u8],
    },
    Resync {
        node_id: &'a str,
    },
}

impl Item {
    pub fn as_ref(&self) -> ItemRef<'_> {
        match self {
            Item::Change(rec) => ItemRef::Change(rec.as_ref()),
            Item::ScanBegin { table } => ItemRef::ScanBegin { table },
            Item::ScanEnd { table, confirmed } => ItemRef::ScanEnd {
                table,
                confirmed: *confirmed,
            },
            Item::Forget { node_id } => ItemRef::Forget { node_id },
            Item::Quarantine { retry, id } => ItemRef::Quarantine {
                retry: *retry,
                id: *id,
            },
            Item::ScanAbort { table } => ItemRef::ScanAbort { table },
            Item::Resync { node_id } => ItemRef::Resync { node_id },
        }
    }
}

impl<'a> From<&RecordRef<'a>> for ItemRef<'a> {
    fn from(rec: &RecordRef<'a>) -> Self {
        ItemRef::Change(*rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::record::{Alias, Contact, Op};

    #[test]
    fn borrowed_twin_encodes_the_same() {
        let items = [
            Item::Change(Record::Contact {
                op: Op::Upsert,
                contact: Contact {
                    aor: b"alice".to_vec(),
                    ..Default::default()
                },
            }),
            Item::Change(Record::Alias {
                op: Op::Delete,
                alias: Alias {
                    table: b"dbaliases".to_vec(),
                    ..Default::default()
                },
            }),
            Item::ScanBegin {
                table: b"dbaliases".to_vec(),
            },
            Item::ScanEnd {
                table: b"dbaliases".to_vec(),
                confirmed: true,
            },
            Item::ScanAbort {
                table: b"dbaliases".to_vec(),
            },
            Item::Forget {
                node_id: "n4".into(),
            },
            Item::Quarantine { retry: true, id: 7 },
            Item::Resync {
                node_id: "n2".into(),
            },
        ];
        for item in items {
            let mut owned = Vec::new();
            codec::encode_into(&item, &mut owned).unwrap();
            let mut borrowed = Vec::new();
            codec::encode_into(&item.as_ref(), &mut borrowed).unwrap();
            assert_eq!(owned, borrowed);
            assert_eq!(codec::decode::<Item>(&borrowed).unwrap(), item);
        }
    }
}
