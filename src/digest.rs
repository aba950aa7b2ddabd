//! What "equal" means for the proof that SER's tables, the journal's state
//! and the peers' states hold the same contacts, and the digests that
//! show it without moving the tables.
//!
//! Two holders are equal when they hold the same set of comparable
//! contacts, each with the same replicated fields:
//!
//! - replicated: table, AOR, contact URI (the key), ruid, received, path,
//!   Call-ID, User-Agent, +sip.instance, reg-id, expires, q, CSeq, flags
//!   (without usrloc's node-local ones), branch flags, methods, server_id;
//! - not replicated, never compared: the socket (a peer uses it only if it
//!   has the same one), `last_modified` (usrloc may set it itself), the TCP
//!   connection, keepalive state;
//! - comparable: live (permanent, or expiring more than
//!   [`EXPIRY_MARGIN`] seconds after the check), so a contact expiring
//!   during a check never shows as a difference; deletions (tombstones)
//!   are absence, so a purged tombstone is no difference either.
//!
//! The key space is split into [`RANGES`] ranges by the first byte of the
//! key's SHA-256; a range's digest is the count of its contacts and the
//! wrapping sum of their version hashes (the first 8 bytes of the SHA-256
//! of the replicated fields, in a fixed encoding). Equal ranges hold equal
//! contacts (up to a 2^-64 chance); only differing ranges are compared key
//! by key. Every node and SER's processes compute it with this code, so
//! the definition cannot drift between them.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::record::{AliasRef, Contact, ContactRef, Record};

/// Ranges the key space is split into.
pub const RANGES: usize = 256;

/// A contact expiring within this many seconds of a check is left out of
/// it on every side.
pub const EXPIRY_MARGIN: i64 = 30;

/// usrloc's flags that describe this node only: FL_MEM (update memory
/// only), FL_DMQRPL (dmq_usrloc's replication mark), FL_EXPCLB (expiry
/// callback ran), Kamailio 6.0's FL_KASENT (keepalive sent to the
/// contact), and the mark sersync_ul.c keeps above them.
pub const NODE_LOCAL_FLAGS: u32 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 24);

/// The digest of a set of contacts: per range, how many and the sum of
/// their version hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub counts: Vec<u32>,
    pub sums: Vec<u64>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            counts: vec![0; RANGES],
            sums: vec![0; RANGES],
        }
    }
}

/// The range a contact's key falls in.
pub fn range_of(c: &ContactRef) -> usize {
    let mut h = Sha256::new();
    for part in [c.domain, c.aor, c.contact] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize()[0] as usize
}

/// The hash of a contact's replicated fields.
pub fn version_hash(c: &ContactRef) -> u64 {
    let mut h = Sha256::new();
    for part in [
        c.domain,
        c.aor,
        c.contact,
        c.ruid,
        c.received,
        c.path,
        c.callid,
        c.user_agent,
        c.instance,
    ] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(c.expires.to_be_bytes());
    h.update(c.q.to_be_bytes());
    h.update(c.cseq.to_be_bytes());
    h.update((c.flags & !NODE_LOCAL_FLAGS).to_be_bytes());
    h.update(c.cflags.to_be_bytes());
    h.update(c.methods.to_be_bytes());
    h.update(c.reg_id.to_be_bytes());
    h.update(c.server_id.to_be_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("32 bytes"))
}

/// The range of an alias (the peer check; SER's alias table is proven by
/// its rescan). An alias's key is all its fields, so its version is its
/// presence.
pub fn alias_range(a: &AliasRef) -> usize {
    alias_sha(b"k", a)[0] as usize
}

fn alias_hash(a: &AliasRef) -> u64 {
    u64::from_be_bytes(alias_sha(b"v", a)[..8].try_into().expect("32 bytes"))
}

fn alias_sha(what: &[u8], a: &AliasRef) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(what);
    for part in [
        a.table,
        a.alias_username,
        a.alias_domain,
        a.username,
        a.domain,
    ] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The range of any record's key.
pub fn record_range(r: &Record) -> usize {
    match r {
        Record::Contact { contact, .. } => range_of(&contact.as_ref()),
        Record::Alias { alias, .. } => alias_range(&alias.as_ref()),
    }
}

/// Whether a contact takes part in a check made at unix time `now`.
pub fn comparable(c: &ContactRef, now: i64) -> bool {
    c.expires == 0 || c.expires > now + EXPIRY_MARGIN
}

impl Digest {
    /// Counts a contact in (if it is comparable at `now`).
    pub fn add(&mut self, c: &ContactRef, now: i64) {
        if !comparable(c, now) {
            return;
        }
        let r = range_of(c);
        self.counts[r] += 1;
        self.sums[r] = self.sums[r].wrapping_add(version_hash(c));
    }

    /// Counts a present record in: a comparable contact, or an alias
    /// (aliases do not expire). Deletions are absence.
    pub fn add_record(&mut self, r: &Record, now: i64) {
        match r {
            Record::Contact {
                op: crate::record::Op::Upsert,
                contact,
            } => self.add(&contact.as_ref(), now),
            Record::Alias {
                op: crate::record::Op::Upsert,
                alias,
            } => self.add_alias(&alias.as_ref()),
            _ => {}
        }
    }

    /// Counts a present alias in.
    pub fn add_alias(&mut self, a: &AliasRef) {
        let r = alias_range(a);
        self.counts[r] += 1;
        self.sums[r] = self.sums[r].wrapping_add(alias_hash(a));
    }

    /// The digest of what `records` hold as present ([`Digest::add_record`]).
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>, now: i64) -> Digest {
        let mut d = Digest::default();
        for r in records {
            d.add_record(r, now);
        }
        d
    }

    /// The ranges where `self` and `other` differ.
    pub fn differing(&self, other: &Digest) -> Vec<usize> {
        (0..RANGES)
            .filter(|&r| {
                self.counts.get(r) != other.counts.get(r) || self.sums.get(r) != other.sums.get(r)
            })
            .collect()
    }
}

/// Whether two versions of one contact are equal in what replicates.
pub fn same_version(a: &Contact, b: &Contact) -> bool {
    version_hash(&a.as_ref()) == version_hash(&b.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Op;

    fn contact(aor: &str, expires: i64) -> Contact {
        Contact {
            domain: b"location".to_vec(),
            aor: aor.as_bytes().to_vec(),
            contact: format!("sip:{aor}@192.0.2.1").into_bytes(),
            ruid: format!("ruid-{aor}").into_bytes(),
            expires,
            ..Default::default()
        }
    }

    fn upsert(c: Contact) -> Record {
        Record::Contact {
            op: Op::Upsert,
            contact: c,
        }
    }

    #[test]
    fn equal_sets_have_equal_digests_whatever_the_order_and_node_local_fields() {
        let now = 1_000_000;
        let a: Vec<Record> = (0..500)
            .map(|i| upsert(contact(&format!("u{i}"), now + 3600)))
            .collect();
        let mut b = a.clone();
        b.reverse();
        for r in &mut b {
            let Record::Contact { contact, .. } = r else {
                unreachable!()
            };
            contact.socket = b"udp:10.0.0.9:5060".to_vec();
            contact.last_modified = 42;
            contact.flags |= 1 << 2;
        }
        assert_eq!(Digest::of(&a, now), Digest::of(&b, now));
    }

    #[test]
    fn a_difference_shows_in_the_range_of_its_key_only() {
        let now = 1_000_000;
        let a: Vec<Record> = (0..500)
            .map(|i| upsert(contact(&format!("u{i}"), now + 3600)))
            .collect();
        let mut b = a.clone();
        let Record::Contact { contact: c, .. } = &mut b[7] else {
            unreachable!()
        };
        c.cseq += 1;
        let range = range_of(&c.as_ref());
        assert_eq!(
            Digest::of(&a, now).differing(&Digest::of(&b, now)),
            vec![range]
        );
        b.remove(8);
        assert_eq!(Digest::of(&a, now).differing(&Digest::of(&b, now)).len(), 2);
    }

    #[test]
    fn contacts_near_expiry_and_deletions_are_left_out() {
        let now = 1_000_000;
        let live = upsert(contact("live", now + 3600));
        let soon = upsert(contact("soon", now + EXPIRY_MARGIN));
        let gone = Record::Contact {
            op: Op::Delete,
            contact: contact("gone", now + 3600),
        };
        assert_eq!(
            Digest::of([&live, &soon, &gone], now),
            Digest::of([&live], now)
        );
    }
}
