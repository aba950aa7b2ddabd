//! What replicates: contact changes (usrloc) — the unit every stage moves.

use serde::{Deserialize, Serialize};

/// What a contact change does at the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Upsert,
    Delete,
}

/// One usrloc contact with every field `save()` stores. Byte strings, not
/// `String`: SER does not promise UTF-8 (user agents, paths).
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
    /// Absolute unix time; 0 = permanent.
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

/// The same layout as [`Contact`], borrowing its strings: what a SIP worker
/// serialises straight from SER's memory without allocating.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ContactRef<'a> {
    #[serde(with = "serde_bytes", borrow)]
    pub domain: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub aor: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub contact: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub ruid: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub received: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub path: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub callid: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub user_agent: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub socket: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub instance: &'a [u8],
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

impl Contact {
    pub fn as_ref(&self) -> ContactRef<'_> {
        ContactRef {
            domain: &self.domain,
            aor: &self.aor,
            contact: &self.contact,
            ruid: &self.ruid,
            received: &self.received,
            path: &self.path,
            callid: &self.callid,
            user_agent: &self.user_agent,
            socket: &self.socket,
            instance: &self.instance,
            expires: self.expires,
            last_modified: self.last_modified,
            q: self.q,
            cseq: self.cseq,
            flags: self.flags,
            cflags: self.cflags,
            methods: self.methods,
            reg_id: self.reg_id,
            server_id: self.server_id,
        }
    }
}

/// One alias_db mapping: alias_username@alias_domain → username@domain.
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

/// Borrowed twin of [`Alias`] with the same encoding.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AliasRef<'a> {
    #[serde(with = "serde_bytes", borrow)]
    pub table: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub alias_username: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub alias_domain: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub username: &'a [u8],
    #[serde(with = "serde_bytes", borrow)]
    pub domain: &'a [u8],
}

impl Alias {
    pub fn as_ref(&self) -> AliasRef<'_> {
        AliasRef {
            table: &self.table,
            alias_username: &self.alias_username,
            alias_domain: &self.alias_domain,
            username: &self.username,
            domain: &self.domain,
        }
    }
}

impl AliasRef<'_> {
    pub fn to_alias(&self) -> Alias {
        Alias {
            table: self.table.to_vec(),
            alias_username: self.alias_username.to_vec(),
            alias_domain: self.alias_domain.to_vec(),
            username: self.username.to_vec(),
            domain: self.domain.to_vec(),
        }
    }
}

/// A replicated change. New kinds are added as new variants at the end, so
/// existing encodings keep their meaning: the journal and the wire store
/// the variant index (Contact 0, Alias 1). What only the worker queue
/// carries is a [`crate::queue::Item`], not a `Record`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Contact { op: Op, contact: Contact },
    Alias { op: Op, alias: Alias },
}

/// Borrowed twin of [`Record`] with the same encoding.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum RecordRef<'a> {
    Contact {
        op: Op,
        #[serde(borrow)]
        contact: ContactRef<'a>,
    },
    Alias {
        op: Op,
        #[serde(borrow)]
        alias: AliasRef<'a>,
    },
}

impl RecordRef<'_> {
    /// See [`Record::key`].
    pub fn key(&self) -> Vec<u8> {
        match self {
            RecordRef::Contact { contact: c, .. } => {
                let mut k = Vec::with_capacity(c.domain.len() + c.aor.len() + c.contact.len() + 13);
                k.push(b'c');
                push_parts(&mut k, &[c.domain, c.aor, c.contact]);
                k
            }
            RecordRef::Alias { alias: a, .. } => {
                let mut k = alias_table_prefix(a.table);
                push_parts(
                    &mut k,
                    &[a.alias_username, a.alias_domain, a.username, a.domain],
                );
                k
            }
        }
    }

    /// When the state may forget this version (the journal's purge): a
    /// contact's absolute expiry, live or deleted; None for what never
    /// expires (aliases, permanent contacts): kept, tombstones included.
    pub fn expires_at(&self) -> Option<i64> {
        match self {
            RecordRef::Contact { contact, .. } if contact.expires > 0 => Some(contact.expires),
            _ => None,
        }
    }
}

fn push_parts(k: &mut Vec<u8>, parts: &[&[u8]]) {
    for part in parts {
        k.extend_from_slice(&(part.len() as u32).to_be_bytes());
        k.extend_from_slice(part);
    }
}

/// The key prefix shared by every alias of `table`.
pub fn alias_table_prefix(table: &[u8]) -> Vec<u8> {
    let mut k = vec![b'a'];
    push_parts(&mut k, &[table]);
    k
}

impl Record {
    pub fn as_ref(&self) -> RecordRef<'_> {
        match self {
            Record::Contact { op, contact } => RecordRef::Contact {
                op: *op,
                contact: contact.as_ref(),
            },
            Record::Alias { op, alias } => RecordRef::Alias {
                op: *op,
                alias: alias.as_ref(),
            },
        }
    }

    /// The identity two changes must share to be versions of one thing:
    /// usrloc keys a contact by table, AOR and contact URI.
    /// Aliases: every field, since one alias may have several targets.
    pub fn key(&self) -> Vec<u8> {
        self.as_ref().key()
    }

    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Record::Contact { op: Op::Delete, .. } | Record::Alias { op: Op::Delete, .. }
        )
    }
}

/// A record as journaled by its origin: `seq` is the origin's journal
/// sequence (dense, increasing), `hlc` its hybrid logical clock stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    pub hlc: u64,
    pub record: Record,
}

/// One row of a snapshot: a key's latest version and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRow {
    pub origin: String,
    pub hlc: u64,
    pub record: Record,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal and the wire hold these indices: they never move.
    #[test]
    fn variant_indices_are_stored_and_stay() {
        let first_byte = |r: &Record| {
            let mut out = Vec::new();
            crate::codec::encode_into(r, &mut out).unwrap();
            out[0]
        };
        let contact = Record::Contact {
            op: Op::Upsert,
            contact: Contact::default(),
        };
        let alias = Record::Alias {
            op: Op::Delete,
            alias: Alias::default(),
        };
        assert_eq!(first_byte(&contact), 0);
        assert_eq!(first_byte(&alias), 1);
    }
}
