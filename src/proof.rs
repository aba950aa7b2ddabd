//! The check (issue 12, items 1–2, the local half): what SER's usrloc
//! holds equals the journal's last-writer-wins state, and what differs is
//! repaired.
//!
//! Every `check_interval` seconds the applier (on its own thread, between
//! two batches, with nothing staged and the worker queue empty) asks SER
//! for the digest of its replicated usrloc tables (`sersync.digest`: the
//! RPC process walks usrloc inside SER, one slot at a time under usrloc's
//! slot lock, and feeds each contact to a [`Walk`]) and compares it with
//! the digest of the state's contacts of the same tables ([`crate::digest`]
//! defines "equal" for both). For the ranges whose digests differ it
//! fetches SER's contacts (`sersync.digest_range`, paged) and the state's,
//! and compares them key by key ([`compare`]).
//!
//! Changes in flight must not look like divergences: a contact saved in a
//! SIP worker while the check runs is in usrloc before it is journaled, a
//! remote change is in the state before it is applied. So a difference is
//! acted on only if it is found twice, [`CONFIRM_DELAY`] apart, exactly the
//! same (SER's version, the state's stamp), with the inbox and the worker
//! queue empty both times. A change in flight moves one side in between
//! (the queue drains in milliseconds, the applier applies what is staged
//! before the second look) and the difference is dropped; one still there
//! is next check's.
//!
//! Which side is right: the newer version. The state's stamp against the
//! version usrloc holds, as ordering in SER noted it ([`Shared::held`]:
//! the callback notes its stamp even when the queue drops the change);
//! for a contact noted too long ago, usrloc's `last_modified` against the
//! state's stamp (seconds). Then:
//! - (a) the state holds a live version SER lacks or holds older: it is
//!   staged in the inbox (as the restore does) and the applier applies it,
//!   through ordering in SER and the quarantine as usual;
//! - (b) SER holds a version the state lacks or holds older (a change the
//!   full queue dropped, `queue_dropped`): it is published into the
//!   worker queue as SER's callback would have, with a fresh stamp from
//!   the node's clock, journaled as a local change and replicated; a
//!   deletion the queue dropped (SER lacks a contact it deleted after the
//!   state's version) likewise;
//! - (c) SER holds a contact the state deleted after it: the deletion is
//!   staged and applied.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::digest::{self, Digest, RANGES};
use crate::error::{ApplyError, JournalError};
use crate::journal::Journal;
use crate::log;
use crate::queue::{Shared, VersionHeld};
use crate::record::{Alias, AliasRef, Contact, ContactRef, Op, Record, SnapRow};
use crate::status::Status;

/// How long after finding a difference it is looked at again.
pub const CONFIRM_DELAY: Duration = Duration::from_secs(1);

/// How long one repair waits for room in a full worker queue before it is
/// left to the next check.
const QUEUE_WAIT: Duration = Duration::from_millis(200);

/// What a walk of SER's contacts collects (`sersync.digest`,
/// `sersync.digest_range`'s argument, [`Walk::parse`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// The digest of every comparable contact.
    Digest,
    /// The contacts of some ranges (sorted): "3,17".
    Contacts(Vec<usize>),
    /// The version hashes ([`digest::version_hash`], which covers the key)
    /// of the contacts of some ranges: "h:3,17". 9 bytes a contact, so
    /// that only the contacts that differ are fetched whole.
    Hashes(Vec<usize>),
    /// The contacts whose version hash is one of these: "p:" and
    /// comma-separated hex.
    Pick(std::collections::HashSet<u64>),
}

/// SER's contacts walked inside SER: fed contact by contact, it keeps
/// what [`Want`] asks for and writes the reply.
pub struct Walk {
    now: i64,
    want: Want,
    digest: Digest,
    counted: u64,
    kept: Vec<Contact>,
    /// What an alias table's walk keeps (`sersync.alias_digest`).
    kept_aliases: Vec<Alias>,
    hashes: Vec<u64>,
}

/// The digest's reply, decoded.
#[derive(Debug, Serialize, Deserialize)]
struct DigestReply {
    digest: Digest,
}

/// The most version hashes one "p:" argument carries (the request is a
/// datagram of at most 64 KiB).
pub const PICK_MAX: usize = 2500;

fn parse_ranges(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let r: usize = part.trim().parse().ok()?;
        if r >= RANGES {
            return None;
        }
        out.push(r);
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

impl Want {
    /// The argument text `sersync.digest_range` takes for `self`.
    pub fn text(&self) -> String {
        let list = |r: &[usize]| r.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        match self {
            Want::Digest => String::new(),
            Want::Contacts(r) => list(r),
            Want::Hashes(r) => format!("h:{}", list(r)),
            Want::Pick(set) => {
                let mut v: Vec<&u64> = set.iter().collect();
                v.sort_unstable();
                let hex: Vec<String> = v.iter().map(|h| format!("{h:x}")).collect();
                format!("p:{}", hex.join(","))
            }
        }
    }
}

impl Walk {
    pub fn new(now: i64, want: Want) -> Walk {
        Walk {
            now,
            want,
            digest: Digest::default(),
            counted: 0,
            kept: Vec::new(),
            kept_aliases: Vec::new(),
            hashes: Vec::new(),
        }
    }

    /// An alias of SER's alias table (`sersync.alias_digest`): digested,
    /// or kept when its range is asked for. An alias's key is all its
    /// fields: its version is its presence.
    pub fn add_alias(&mut self, a: &AliasRef) {
        match &self.want {
            Want::Digest => {
                self.digest.add_alias(a);
                self.counted += 1;
            }
            Want::Contacts(ranges) => {
                if ranges.binary_search(&digest::alias_range(a)).is_ok() {
                    self.kept_aliases.push(a.to_alias());
                }
            }
            Want::Hashes(_) | Want::Pick(_) => {}
        }
    }

    /// Parses `sersync.digest_range`'s argument ([`Want`]); None when
    /// malformed.
    pub fn parse(text: &[u8]) -> Option<Want> {
        let text = std::str::from_utf8(text).ok()?;
        if let Some(r) = text.strip_prefix("h:") {
            return parse_ranges(r).map(Want::Hashes);
        }
        if let Some(p) = text.strip_prefix("p:") {
            let mut set = std::collections::HashSet::new();
            for h in p.split(',') {
                set.insert(u64::from_str_radix(h.trim(), 16).ok()?);
            }
            return (set.len() <= PICK_MAX).then_some(Want::Pick(set));
        }
        parse_ranges(text).map(Want::Contacts)
    }

    pub fn add(&mut self, c: &ContactRef) {
        if !digest::comparable(c, self.now) {
            return;
        }
        match &self.want {
            Want::Digest => {
                self.digest.add(c, self.now);
                self.counted += 1;
            }
            Want::Contacts(ranges) => {
                if ranges.binary_search(&digest::range_of(c)).is_ok() {
                    self.kept.push(owned(c));
                }
            }
            Want::Hashes(ranges) => {
                if ranges.binary_search(&digest::range_of(c)).is_ok() {
                    self.hashes.push(digest::version_hash(c));
                }
            }
            Want::Pick(set) => {
                if set.contains(&digest::version_hash(c)) {
                    self.kept.push(owned(c));
                }
            }
        }
    }

    /// (reply text, index of the first item left out or 0, count): the
    /// digest, or the kept contacts (or hashes) from `skip` on that fit in
    /// `max` bytes of text.
    pub fn reply(&self, skip: u64, max: usize) -> (String, u64, u64) {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut bytes = Vec::new();
        match self.want {
            Want::Digest => {
                codec::encode_into(
                    &DigestReply {
                        digest: self.digest.clone(),
                    },
                    &mut bytes,
                )
                .expect("encoding into a Vec cannot fail");
                (b64(&bytes), 0, self.counted)
            }
            Want::Hashes(_) => {
                let (page, next) = page(&self.hashes, skip, max, |h| {
                    codec::encoded_len(h).unwrap_or(u64::MAX) as usize
                });
                codec::encode_into(&page, &mut bytes).expect("encoding into a Vec cannot fail");
                (b64(&bytes), next, self.hashes.len() as u64)
            }
            Want::Contacts(_) if !self.kept_aliases.is_empty() => {
                let (page, next) = page(&self.kept_aliases, skip, max, |a| {
                    codec::encoded_len(a).unwrap_or(u64::MAX) as usize
                });
                codec::encode_into(&page, &mut bytes).expect("encoding into a Vec cannot fail");
                (b64(&bytes), next, self.kept_aliases.len() as u64)
            }
            Want::Contacts(_) | Want::Pick(_) => {
                let (page, next) = page(&self.kept, skip, max, |c| {
                    codec::encoded_len(c).unwrap_or(u64::MAX) as usize
                });
                codec::encode_into(&page, &mut bytes).expect("encoding into a Vec cannot fail");
                (b64(&bytes), next, self.kept.len() as u64)
            }
        }
    }
}

/// The items of `all` from `skip` on whose encoding (a length prefix,
/// then each item, `size` bytes) fits in `max` bytes of base64 (at least
/// one), and the index of the next page (0: none).
fn page<T>(all: &[T], skip: u64, max: usize, size: impl Fn(&T) -> usize) -> (&[T], u64) {
    let from = (skip as usize).min(all.len());
    let mut bytes = 8usize;
    let mut end = from;
    while end < all.len() {
        let n = size(&all[end]);
        if end > from && (bytes + n) * 4 / 3 + 8 > max {
            break;
        }
        bytes += n;
        end += 1;
    }
    let next = if end < all.len() { end as u64 } else { 0 };
    (&all[from..end], next)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))
}

/// Decodes `sersync.digest`'s digest text.
pub fn decode_digest(text: &str) -> Result<Digest, String> {
    let d: DigestReply = codec::decode(&unb64(text)?)?;
    if d.digest.counts.len() != RANGES || d.digest.sums.len() != RANGES {
        return Err("a digest of the wrong size".into());
    }
    Ok(d.digest)
}

/// Decodes one page of `sersync.digest_range`'s contacts.
pub fn decode_contacts(text: &str) -> Result<Vec<Contact>, String> {
    codec::decode(&unb64(text)?)
}

/// Decodes one page of `sersync.alias_digest`'s aliases.
pub fn decode_aliases(text: &str) -> Result<Vec<Alias>, String> {
    codec::decode(&unb64(text)?)
}

/// Decodes one page of `sersync.digest_range`'s version hashes.
pub fn decode_hashes(text: &str) -> Result<Vec<u64>, String> {
    codec::decode(&unb64(text)?)
}

/// `c` owned: [`ContactRef`] and [`Contact`] share one encoding.
fn owned(c: &ContactRef) -> Contact {
    let mut bytes = Vec::new();
    codec::encode_into(c, &mut bytes).expect("encoding into a Vec cannot fail");
    codec::decode(&bytes).expect("ContactRef and Contact share one layout")
}

/// SER's digest as `sersync.digest` reports it, with the walk's cost.
#[derive(Debug, Clone)]
pub struct SerDigest {
    pub digest: Digest,
    pub contacts: u64,
    /// The walk inside SER, and the longest one slot lock was held.
    pub walk_us: u64,
    pub max_lock_us: u64,
}

/// What the check needs of SER: its RPC door ([`crate::apply::door`]).
pub trait SerView {
    fn digest(&mut self, now: i64) -> Result<SerDigest, ApplyError>;
    /// The version hashes of SER's comparable contacts in `ranges`
    /// (sorted), all pages.
    fn hashes_in(&mut self, ranges: &[usize], now: i64) -> Result<Vec<u64>, ApplyError>;
    /// SER's comparable contacts whose version hash is in `hashes`.
    fn pick(
        &mut self,
        hashes: &std::collections::HashSet<u64>,
        now: i64,
    ) -> Result<Vec<Contact>, ApplyError>;
    /// The digest of SER's alias table and the table's name; None when
    /// aliases are not replicated on this node.
    fn alias_digest(&mut self) -> Result<Option<(Vec<u8>, Digest)>, ApplyError>;
    /// The rows of SER's alias table in `ranges` (sorted).
    fn aliases_in(&mut self, ranges: &[usize]) -> Result<Vec<Alias>, ApplyError>;
}

/// One repair, as [`compare`] decides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    /// (a), (c): the state's version (live, or a deletion) into SER.
    Apply(SnapRow),
    /// (b): SER's version (an upsert, or the deletion of a contact SER
    /// lacks) journaled as a local change.
    Journal(Record),
}

impl Repair {
    /// What must be the same at the second look for it to be acted on.
    fn fingerprint(&self) -> (u8, u64, u64) {
        match self {
            Repair::Apply(row) => (0, row.hlc, version(&row.record)),
            Repair::Journal(rec) => (1, 0, version(rec)),
        }
    }
}

fn version(r: &Record) -> u64 {
    match r {
        Record::Contact {
            op: Op::Upsert,
            contact,
        } => digest::version_hash(&contact.as_ref()),
        Record::Contact { op: Op::Delete, .. } => 1,
        Record::Alias { .. } => 2,
    }
}

/// Which side holds the newer version of a key.
pub trait Newer {
    /// Is the version usrloc holds for `c`'s key (or its deletion there,
    /// when `present` is false) newer than the state's, stamped `stamp`?
    /// None: nothing tells (then nothing is repaired).
    fn ser_newer(&self, c: &Contact, present: bool, stamp: u64) -> Option<bool>;
}

/// The rule behind [`Newer`], from what ordering in SER says of the key.
pub fn ser_newer(held: VersionHeld, c: &Contact, present: bool, stamp: u64) -> Option<bool> {
    match held {
        VersionHeld::Known(h) => Some(h > stamp),
        // usrloc's version is no newer than the floor, older than this.
        VersionHeld::AtMost(floor) if stamp > floor => Some(false),
        // Forgotten: usrloc's own clock, in seconds, for a contact it
        // holds; a deletion it may have made cannot be told from a loss,
        // and a contact is never brought back on a guess.
        VersionHeld::AtMost(_) if present => {
            Some(c.last_modified > (crate::hlc::millis(stamp) / 1000) as i64)
        }
        VersionHeld::AtMost(_) => None,
    }
}

impl Newer for Shared {
    fn ser_newer(&self, c: &Contact, present: bool, stamp: u64) -> Option<bool> {
        let key = self.order_key(&c.domain, &c.aor, &c.contact);
        ser_newer(self.version_held(key), c, present, stamp)
    }
}

/// The repairs that make SER equal to the state for the keys of some
/// ranges: `ser` and `state` hold the comparable contacts of those ranges
/// on each side; `version_of` gives the state's version of a key it does
/// not hold comparable (deleted, expiring, absent: None).
pub fn compare(
    ser: &[Contact],
    state: &[SnapRow],
    version_of: &mut dyn FnMut(&[u8]) -> Option<SnapRow>,
    newer: &dyn Newer,
) -> Vec<Repair> {
    let key = |c: &Contact| {
        Record::Contact {
            op: Op::Upsert,
            contact: c.clone(),
        }
        .key()
    };
    let in_ser: HashMap<Vec<u8>, &Contact> = ser.iter().map(|c| (key(c), c)).collect();
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for row in state {
        let Record::Contact { contact: sc, .. } = &row.record else {
            continue;
        };
        let k = row.record.key();
        seen.insert(k.clone());
        match in_ser.get(&k) {
            Some(c) if digest::same_version(c, sc) => {}
            Some(c) if newer.ser_newer(c, true, row.hlc) == Some(true) => {
                out.push(Repair::Journal(Record::Contact {
                    op: Op::Upsert,
                    contact: (*c).clone(),
                }))
            }
            // SER lacks it: deleted there by a change the queue dropped?
            None => match newer.ser_newer(sc, false, row.hlc) {
                Some(true) => out.push(Repair::Journal(Record::Contact {
                    op: Op::Delete,
                    contact: sc.clone(),
                })),
                Some(false) => out.push(Repair::Apply(row.clone())),
                None => {}
            },
            _ => out.push(Repair::Apply(row.clone())),
        }
    }
    for c in ser {
        let k = key(c);
        if seen.contains(&k) {
            continue;
        }
        let journal_it = Repair::Journal(Record::Contact {
            op: Op::Upsert,
            contact: c.clone(),
        });
        match version_of(&k) {
            None => out.push(journal_it),
            Some(row) if newer.ser_newer(c, true, row.hlc) == Some(true) => out.push(journal_it),
            Some(row) => out.push(Repair::Apply(row)),
        }
    }
    out
}

/// The repairs that make SER's alias table equal to the state for the
/// keys of some ranges: `ser` holds the table's rows there, `state` every
/// version of the table's aliases there, present or deleted. An alias's
/// key is all its fields, so its version is its presence, and the state,
/// which every alias change goes through, is right: an alias it holds
/// that the table lacks is put back, one it deleted that the table holds
/// is deleted. A row the state has no version of (written into the table
/// behind sersync's back) is journaled, as a rescan would.
pub fn compare_aliases(ser: &[Alias], state: &[SnapRow]) -> Vec<Repair> {
    let upsert = |a: &Alias| Record::Alias {
        op: Op::Upsert,
        alias: a.clone(),
    };
    let in_ser: std::collections::HashSet<Vec<u8>> = ser.iter().map(|a| upsert(a).key()).collect();
    let known: std::collections::HashSet<Vec<u8>> = state.iter().map(|r| r.record.key()).collect();
    let mut out = Vec::new();
    for row in state {
        let held = in_ser.contains(&row.record.key());
        if held == row.record.is_delete() {
            out.push(Repair::Apply(row.clone()));
        }
    }
    for a in ser {
        let rec = upsert(a);
        if !known.contains(&rec.key()) {
            out.push(Repair::Journal(rec));
        }
    }
    out
}

/// The state's side of a check: its contacts of `tables`.
fn state_digest(journal: &Journal, tables: &[String], now: i64) -> Result<Digest, JournalError> {
    let mut d = Digest::default();
    for (_, _, rec) in
        journal.live_contacts(|c| in_tables(tables, c) && digest::comparable(&c.as_ref(), now))?
    {
        if let Record::Contact { contact, .. } = &rec {
            d.add(&contact.as_ref(), now);
        }
    }
    Ok(d)
}

fn in_tables(tables: &[String], c: &Contact) -> bool {
    tables.iter().any(|t| t.as_bytes() == c.domain.as_slice())
}

/// The differences of one look, by key, each with the stamp a
/// [`Repair::Journal`] is journaled at ([`Proof::journal_stamp`]; 0 for
/// the others).
type Found = HashMap<Vec<u8>, (Repair, u64)>;

/// The ranges a look compares key by key: of usrloc's contacts, and of
/// the alias table (named) when aliases are replicated here.
#[derive(Default)]
struct Ranges {
    contacts: Vec<usize>,
    aliases: Option<AliasRanges>,
}

/// The alias table's name and its ranges to compare.
type AliasRanges = (Vec<u8>, Vec<usize>);

/// The periodic check, run by the applier; also the SER half of a
/// `sersync.resync` ([`crate::resync`]), at once when asked for.
pub struct Proof {
    /// None: no periodic check (check_interval 0), only resyncs'.
    interval: Option<Duration>,
    tables: Vec<String>,
    shared: Arc<Shared>,
    status: Arc<Status>,
    next: Option<Instant>,
    /// Differences found at the first look, to confirm at `.1`, in
    /// ranges of contacts and of the alias table.
    pending: Option<(Found, Instant, Ranges)>,
    /// The check in progress is a resync's: its end ends the resync.
    resync: bool,
}

fn repair_key(r: &Repair) -> Vec<u8> {
    match r {
        Repair::Apply(row) => row.record.key(),
        Repair::Journal(rec) => rec.key(),
    }
}

impl Proof {
    pub fn new(
        interval: Option<Duration>,
        tables: Vec<String>,
        shared: Arc<Shared>,
        status: Arc<Status>,
    ) -> Proof {
        Proof {
            interval,
            tables,
            shared,
            status,
            next: interval.map(|i| Instant::now() + i),
            pending: None,
            resync: false,
        }
    }

    /// The check's counters (divergences, repaired), for a resync's share.
    pub fn counters(status: &Status) -> (u64, u64) {
        let c = &status.counters;
        (
            c.divergences.load(Ordering::Relaxed),
            c.repaired.load(Ordering::Relaxed),
        )
    }

    /// Called by the applier with nothing staged: runs the check when it
    /// is due. Errors (SER not answering) postpone it to the next interval.
    pub fn tick(&mut self, journal: &mut Journal, ser: &mut dyn SerView) {
        let now_i = Instant::now();
        if self.shared.depth() > 0 {
            return;
        }
        let result = match self.pending.take() {
            Some((found, at, ranges)) if now_i >= at => self.confirm(journal, ser, found, &ranges),
            Some(p) => {
                self.pending = Some(p);
                return;
            }
            None if self.status.resync.take_ser_request() => {
                self.resync = true;
                self.next = self.interval.map(|i| now_i + i);
                self.first_look(journal, ser)
            }
            None if self.next.is_some_and(|n| now_i >= n) => {
                self.next = self.interval.map(|i| now_i + i);
                self.first_look(journal, ser)
            }
            None => return,
        };
        if let Err(e) = &result {
            log::warn(format_args!(
                "check of SER against the journal postponed: {e}"
            ));
        }
        if self.resync && self.pending.is_none() {
            self.resync = false;
            let error = result.err().map(|e| format!("not compared: {e}"));
            self.status
                .resync
                .finish(Self::counters(&self.status), error.as_deref());
        }
    }

    fn now() -> i64 {
        (crate::hlc::wall_ms() / 1000) as i64
    }

    /// The repairs for the keys of `ranges`: SER's version hashes there
    /// against the state's (8 bytes a contact on the wire), then only the
    /// contacts whose hashes differ, whole, compared key by key.
    fn look_contacts(
        &self,
        journal: &Journal,
        ser: &mut dyn SerView,
        ranges: &[usize],
        now: i64,
    ) -> Result<Found, String> {
        if ranges.is_empty() {
            return Ok(Found::new());
        }
        let theirs: std::collections::HashSet<u64> = ser
            .hashes_in(ranges, now)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut ours = std::collections::HashSet::new();
        let rows: Vec<SnapRow> = journal
            .state_in_ranges(ranges, now)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| match &r.record {
                Record::Contact { contact, .. } if in_tables(&self.tables, contact) => {
                    let h = digest::version_hash(&contact.as_ref());
                    ours.insert(h);
                    !theirs.contains(&h)
                }
                _ => false,
            })
            .collect();
        let only_ser: std::collections::HashSet<u64> = theirs.difference(&ours).copied().collect();
        let mut contacts = Vec::new();
        if !only_ser.is_empty() {
            contacts = ser.pick(&only_ser, now).map_err(|e| e.to_string())?;
        }
        let mut version_of = |k: &[u8]| {
            journal
                .state_version(k)
                .ok()
                .flatten()
                .map(|(hlc, origin, record)| SnapRow {
                    origin,
                    hlc,
                    record,
                })
        };
        let repairs = compare(&contacts, &rows, &mut version_of, &*self.shared);
        Ok(repairs.into_iter().map(|r| self.found(r)).collect())
    }

    /// The repairs for the keys of `ranges`, contacts and aliases.
    fn look(
        &self,
        journal: &Journal,
        ser: &mut dyn SerView,
        ranges: &Ranges,
        now: i64,
    ) -> Result<Found, String> {
        let mut found = self.look_contacts(journal, ser, &ranges.contacts, now)?;
        if let Some((table, alias_ranges)) = &ranges.aliases {
            if !alias_ranges.is_empty() {
                let theirs = ser.aliases_in(alias_ranges).map_err(|e| e.to_string())?;
                let ours: Vec<SnapRow> = journal
                    .alias_versions(table)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|r| {
                        alias_ranges
                            .binary_search(&digest::record_range(&r.record))
                            .is_ok()
                    })
                    .collect();
                found.extend(
                    compare_aliases(&theirs, &ours)
                        .into_iter()
                        .map(|r| self.found(r)),
                );
            }
        }
        Ok(found)
    }

    /// The alias table's ranges that differ from the state's aliases of
    /// it, or None when aliases are not replicated here.
    fn alias_ranges(
        &self,
        journal: &Journal,
        ser: &mut dyn SerView,
    ) -> Result<Option<AliasRanges>, String> {
        let Some((table, theirs)) = ser.alias_digest().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let mut ours = Digest::default();
        for row in journal.alias_versions(&table).map_err(|e| e.to_string())? {
            ours.add_record(&row.record, 0);
        }
        let differ = theirs.differing(&ours);
        Ok(Some((table, differ)))
    }

    fn first_look(&mut self, journal: &mut Journal, ser: &mut dyn SerView) -> Result<(), String> {
        let now = Self::now();
        let c = &self.status.counters;
        let theirs = ser.digest(now).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let ours = state_digest(journal, &self.tables, now).map_err(|e| e.to_string())?;
        let state_ms = t.elapsed().as_secs_f64() * 1000.0;
        c.checks.fetch_add(1, Ordering::Relaxed);
        let ranges = Ranges {
            contacts: theirs.digest.differing(&ours),
            aliases: self.alias_ranges(journal, ser)?,
        };
        let alias_differ = ranges.aliases.as_ref().map_or(0, |(_, r)| r.len());
        log::info(format_args!(
            "check: SER holds {} comparable contacts (walk {:.1} ms, longest slot lock {} us), state digest {state_ms:.1} ms; {} ranges differ{}",
            theirs.contacts,
            theirs.walk_us as f64 / 1000.0,
            theirs.max_lock_us,
            ranges.contacts.len(),
            match &ranges.aliases {
                Some((table, _)) => format!(
                    "; alias table {}: {alias_differ} ranges differ",
                    String::from_utf8_lossy(table)
                ),
                None => String::new(),
            }
        ));
        let compared = ranges.contacts.len() + alias_differ;
        if compared == 0 {
            return Ok(());
        }
        c.ranges_compared
            .fetch_add(compared as u64, Ordering::Relaxed);
        let found = self.look(journal, ser, &ranges, now)?;
        if !found.is_empty() {
            self.pending = Some((found, Instant::now() + CONFIRM_DELAY, ranges));
        }
        Ok(())
    }

    fn found(&self, r: Repair) -> (Vec<u8>, (Repair, u64)) {
        let stamp = match &r {
            Repair::Journal(rec) => self.journal_stamp(rec),
            Repair::Apply(_) => 0,
        };
        (repair_key(&r), (r, stamp))
    }

    /// The stamp SER's version of a contact is journaled at: the one its
    /// change was stamped with when SER made it (ordering in SER noted
    /// it), or for one the table forgot, usrloc's `last_modified` (what
    /// [`ser_newer`] judged it by). Never a fresh one: a SIP worker's later
    /// change of the contact is stamped later and so wins, whenever it
    /// reaches the journal. 0 (a fresh stamp) for what has no version in
    /// SER (an alias row).
    fn journal_stamp(&self, rec: &Record) -> u64 {
        let Record::Contact { contact: c, .. } = rec else {
            return 0;
        };
        match self
            .shared
            .version_held(self.shared.order_key(&c.domain, &c.aor, &c.contact))
        {
            VersionHeld::Known(h) => h,
            VersionHeld::AtMost(_) => ((c.last_modified.max(0) as u64) * 1000) << 16,
        }
    }

    /// Hands `rec` to the ingest thread through the worker queue, stamped
    /// `stamp` (0: fresh), as SER's callback would have; waits (at most
    /// [`QUEUE_WAIT`]) while the queue is full, which a tiny queue after a
    /// burst may well be.
    fn publish(&self, rec: &Record, stamp: u64) -> bool {
        let until = Instant::now() + QUEUE_WAIT;
        loop {
            // Leave room for SIP workers.
            if self.shared.depth() < self.shared.capacity() / 2
                && match stamp {
                    0 => self.shared.publish(&rec.as_ref()),
                    s => self.shared.publish_at(&rec.as_ref(), s),
                }
                .is_ok()
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn confirm(
        &mut self,
        journal: &mut Journal,
        ser: &mut dyn SerView,
        first: Found,
        ranges: &Ranges,
    ) -> Result<(), String> {
        let now = Self::now();
        let second = self.look(journal, ser, ranges, now)?;
        let confirmed: Vec<(Repair, u64)> = second
            .into_iter()
            .filter(|(k, (r, stamp))| {
                first
                    .get(k)
                    .is_some_and(|(f, s)| f.fingerprint() == r.fingerprint() && s == stamp)
            })
            .map(|(_, r)| r)
            .collect();
        let c = &self.status.counters;
        let mut apply = Vec::new();
        let mut journaled = 0u64;
        let mut dropped = 0u64;
        let mut held_aside = 0u64;
        for (r, stamp) in confirmed {
            match r {
                // SER refused this very version: the quarantine's retry
                // (or a newer version) brings it, not every check.
                Repair::Apply(row)
                    if journal
                        .is_quarantined(&row.record.key(), row.hlc, &row.origin)
                        .unwrap_or(false) =>
                {
                    held_aside += 1
                }
                Repair::Apply(row) => apply.push((row.hlc, row.origin, row.record)),
                // SER changed it since the look: the next check's.
                Repair::Journal(rec) if self.journal_stamp(&rec) != stamp => dropped += 1,
                Repair::Journal(rec) => {
                    if self.publish(&rec, stamp) {
                        journaled += 1;
                    } else {
                        dropped += 1;
                    }
                }
            }
        }
        let staged = apply.len() as u64;
        if !apply.is_empty() {
            journal.stage_restore(&apply).map_err(|e| e.to_string())?;
        }
        c.divergences
            .fetch_add(staged + journaled + dropped, Ordering::Relaxed);
        c.repaired.fetch_add(staged + journaled, Ordering::Relaxed);
        if staged + journaled + dropped == 0 {
            // only what the quarantine holds (below)
        } else {
            log::info(format_args!(
            "check: {} contacts or aliases differ from the journal's state: {staged} put back into SER, {journaled} journaled from SER{}",
            staged + journaled + dropped,
            if dropped > 0 {
                format!(", {dropped} not (queue full: next check)")
            } else {
                String::new()
            }
        ));
        }
        if held_aside > 0 {
            log::info(format_args!(
                "check: {held_aside} versions SER lacks are in the quarantine (sersync.quarantine): left to its retry"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(aor: &str, cseq: i32, lm: i64) -> Contact {
        Contact {
            domain: b"location".to_vec(),
            aor: aor.as_bytes().to_vec(),
            contact: format!("sip:{aor}@192.0.2.1").into_bytes(),
            ruid: format!("ruid-{aor}").into_bytes(),
            expires: 0,
            cseq,
            last_modified: lm,
            ..Default::default()
        }
    }

    fn row(c: Contact, op: Op, hlc: u64) -> SnapRow {
        SnapRow {
            origin: "n1".into(),
            hlc,
            record: Record::Contact { op, contact: c },
        }
    }

    /// Versions usrloc holds as ordering in SER noted them, by AOR, and
    /// the floor of what it forgot.
    struct Held(HashMap<Vec<u8>, u64>, u64);

    impl Newer for Held {
        fn ser_newer(&self, c: &Contact, present: bool, stamp: u64) -> Option<bool> {
            let held = match self.0.get(&c.aor) {
                Some(h) => VersionHeld::Known(*h),
                None => VersionHeld::AtMost(self.1),
            };
            super::ser_newer(held, c, present, stamp)
        }
    }

    fn held(pairs: &[(&str, u64)]) -> Held {
        forgot(pairs, 0)
    }

    /// As `held`, having forgotten versions up to `floor`.
    fn forgot(pairs: &[(&str, u64)], floor: u64) -> Held {
        Held(
            pairs
                .iter()
                .map(|(a, s)| (a.as_bytes().to_vec(), *s))
                .collect(),
            floor,
        )
    }

    const S: u64 = 1_800_000_000_000 << 16; // a stamp at unix 1.8e9 s

    #[test]
    fn equal_sides_need_no_repair() {
        let a = contact("a", 1, 100);
        let r = compare(
            std::slice::from_ref(&a),
            &[row(a.clone(), Op::Upsert, S)],
            &mut |_| None,
            &held(&[]),
        );
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn what_ser_lacks_or_holds_older_is_applied() {
        let a = contact("a", 1, 100);
        let b_old = contact("b", 1, 100);
        let b_new = contact("b", 2, 100);
        let state = [
            row(a.clone(), Op::Upsert, S),
            row(b_new.clone(), Op::Upsert, S + 5),
        ];
        // b's older version was applied at S: noted so.
        let r = compare(&[b_old], &state, &mut |_| None, &held(&[("b", S)]));
        assert_eq!(
            r,
            vec![
                Repair::Apply(state[0].clone()),
                Repair::Apply(state[1].clone())
            ]
        );
    }

    #[test]
    fn a_dropped_local_change_is_journaled() {
        // The state holds cseq 1 (stamp S); usrloc holds cseq 2, saved at
        // S + 9 whose change the full queue dropped (noted all the same).
        let old = contact("a", 1, 100);
        let new = contact("a", 2, 101);
        let fresh = contact("n", 1, 101);
        let r = compare(
            &[new.clone(), fresh.clone()],
            &[row(old, Op::Upsert, S)],
            &mut |_| None,
            &held(&[("a", S + 9), ("n", S + 10)]),
        );
        assert_eq!(
            r,
            vec![
                Repair::Journal(Record::Contact {
                    op: Op::Upsert,
                    contact: new
                }),
                Repair::Journal(Record::Contact {
                    op: Op::Upsert,
                    contact: fresh
                }),
            ]
        );
    }

    #[test]
    fn a_dropped_deletion_is_journaled_and_a_deleted_contact_leaves_ser() {
        let gone_here = contact("g", 1, 100);
        let deleted_there = contact("d", 1, 100);
        let tomb = row(deleted_there.clone(), Op::Delete, S + 20);
        let tomb2 = tomb.clone();
        let r = compare(
            &[deleted_there],
            &[row(gone_here.clone(), Op::Upsert, S)],
            &mut |k| (k == tomb2.record.key()).then(|| tomb2.clone()),
            // g deleted here at S + 3 (dropped); d applied at S + 1
            &held(&[("g", S + 3), ("d", S + 1)]),
        );
        assert_eq!(
            r,
            vec![
                Repair::Journal(Record::Contact {
                    op: Op::Delete,
                    contact: gone_here
                }),
                Repair::Apply(tomb),
            ]
        );
    }

    #[test]
    fn a_forgotten_version_is_judged_by_last_modified() {
        let secs = (crate::hlc::millis(S) / 1000) as i64;
        let state_v = contact("a", 1, secs);
        let ser_newer = contact("a", 2, secs + 5);
        let ser_same_second = contact("a", 3, secs);
        let st = [row(state_v, Op::Upsert, S)];
        let r = compare(
            std::slice::from_ref(&ser_newer),
            &st,
            &mut |_| None,
            &forgot(&[], S),
        );
        assert!(matches!(&r[..], [Repair::Journal(_)]), "{r:?}");
        let r = compare(&[ser_same_second], &st, &mut |_| None, &forgot(&[], S));
        assert_eq!(r, vec![Repair::Apply(st[0].clone())]);
        // Newer than every version forgotten: the state's wins.
        let r = compare(
            &[contact("a", 2, secs + 5)],
            &st,
            &mut |_| None,
            &forgot(&[], S - 1),
        );
        assert_eq!(r, vec![Repair::Apply(st[0].clone())]);
        // A contact SER lacks, whose version it forgot: it may have been
        // de-registered there; it is not brought back on a guess.
        let r = compare(&[], &st, &mut |_| None, &forgot(&[], S));
        assert!(r.is_empty(), "{r:?}");
        let r = compare(&[], &st, &mut |_| None, &forgot(&[], S - 1));
        assert_eq!(r, vec![Repair::Apply(st[0].clone())]);
    }

    #[test]
    fn the_alias_table_is_made_equal_to_the_state() {
        let alias = |u: &str| Alias {
            table: b"dbaliases".to_vec(),
            alias_username: u.as_bytes().to_vec(),
            alias_domain: b"example.com".to_vec(),
            username: b"target".to_vec(),
            domain: b"example.com".to_vec(),
        };
        let row = |a: Alias, op: Op| SnapRow {
            origin: "n1".into(),
            hlc: S,
            record: Record::Alias { op, alias: a },
        };
        let state = [
            row(alias("held"), Op::Upsert),
            row(alias("lost"), Op::Upsert),
            row(alias("deleted"), Op::Delete),
            row(alias("gone"), Op::Delete),
        ];
        let ser = [alias("held"), alias("deleted"), alias("unknown")];
        let r = compare_aliases(&ser, &state);
        assert_eq!(
            r,
            vec![
                Repair::Apply(state[1].clone()),
                Repair::Apply(state[2].clone()),
                Repair::Journal(Record::Alias {
                    op: Op::Upsert,
                    alias: alias("unknown")
                }),
            ]
        );
        // A walk of the table digests as the state does and keeps rows by range.
        let mut w = Walk::new(0, Want::Digest);
        for a in &ser {
            w.add_alias(&a.as_ref());
        }
        let held: Vec<Record> = ser
            .iter()
            .map(|a| Record::Alias {
                op: Op::Upsert,
                alias: a.clone(),
            })
            .collect();
        assert_eq!(
            decode_digest(&w.reply(0, 60_000).0).unwrap(),
            Digest::of(&held, 0)
        );
        let r0 = digest::alias_range(&ser[0].as_ref());
        let mut w = Walk::new(0, Want::Contacts(vec![r0]));
        for a in &ser {
            w.add_alias(&a.as_ref());
        }
        let kept = decode_aliases(&w.reply(0, 60_000).0).unwrap();
        assert!(kept.contains(&ser[0]));
        assert!(kept.iter().all(|a| digest::alias_range(&a.as_ref()) == r0));
    }

    #[test]
    fn a_walk_digests_as_the_state_does_and_pages_its_ranges() {
        let now = 1_800_000_000;
        let cs: Vec<Contact> = (0..3000)
            .map(|i| Contact {
                expires: now + 3600,
                path: vec![b'p'; 200],
                ..contact(&format!("u{i}"), 1, 1)
            })
            .collect();
        let mut w = Walk::new(now, Want::Digest);
        for c in &cs {
            w.add(&c.as_ref());
        }
        let soon = Contact {
            expires: now + 10,
            ..contact("soon", 1, 1)
        };
        w.add(&soon.as_ref());
        let (text, next, n) = w.reply(0, 60_000);
        assert_eq!((next, n), (0, 3000));
        let recs: Vec<Record> = cs
            .iter()
            .map(|c| Record::Contact {
                op: Op::Upsert,
                contact: c.clone(),
            })
            .collect();
        let want = Digest::of(&recs, now);
        assert_eq!(decode_digest(&text).unwrap(), want);

        let ranges: Vec<usize> = (0..64).collect();
        let mut w = Walk::new(now, Want::Contacts(ranges.clone()));
        for c in &cs {
            w.add(&c.as_ref());
        }
        let mut got = Vec::new();
        let mut skip = 0;
        let mut pages = 0;
        loop {
            let (text, next, _) = w.reply(skip, 60_000);
            assert!(text.len() <= 60_000);
            got.extend(decode_contacts(&text).unwrap());
            pages += 1;
            if next == 0 {
                break;
            }
            skip = next;
        }
        assert!(pages > 1, "paged");
        let want: Vec<&Contact> = cs
            .iter()
            .filter(|c| digest::range_of(&c.as_ref()) < 64)
            .collect();
        assert_eq!(got.len(), want.len());
        assert!(want.iter().zip(&got).all(|(a, b)| *a == b));
        // The hashes of those ranges, paged; a pick of some of them.
        let mut w = Walk::new(now, Want::Hashes(ranges.clone()));
        for c in &cs {
            w.add(&c.as_ref());
        }
        let mut hashes = Vec::new();
        let mut skip = 0;
        loop {
            let (text, next, n) = w.reply(skip, 2_000);
            assert!(text.len() <= 2_000, "a page fits");
            assert_eq!(n as usize, want.len());
            hashes.extend(decode_hashes(&text).unwrap());
            if next == 0 {
                break;
            }
            skip = next;
        }
        let want_h: Vec<u64> = want
            .iter()
            .map(|c| digest::version_hash(&c.as_ref()))
            .collect();
        assert_eq!(hashes, want_h);
        let picked: std::collections::HashSet<u64> = want_h.iter().take(3).copied().collect();
        let arg = Want::Pick(picked.clone()).text();
        let mut w = Walk::new(now, Walk::parse(arg.as_bytes()).unwrap());
        for c in &cs {
            w.add(&c.as_ref());
        }
        let got = decode_contacts(&w.reply(0, 60_000).0).unwrap();
        assert_eq!(got.iter().collect::<Vec<_>>(), want[..3].to_vec());

        assert_eq!(Walk::parse(b"3, 17,3"), Some(Want::Contacts(vec![3, 17])));
        assert_eq!(Walk::parse(b"h:9,2"), Some(Want::Hashes(vec![2, 9])));
        assert_eq!(Walk::parse(b"256"), None);
        assert_eq!(Walk::parse(b"h:x"), None);
        assert_eq!(Walk::parse(b"p:zz"), None);
        assert_eq!(Walk::parse(b"x"), None);
    }

    /// SER as the check sees it: the contacts usrloc holds.
    struct FakeSer(std::sync::Arc<std::sync::Mutex<Vec<Contact>>>);

    impl SerView for FakeSer {
        fn digest(&mut self, now: i64) -> Result<SerDigest, ApplyError> {
            let mut w = Walk::new(now, Want::Digest);
            for c in self.0.lock().unwrap().iter() {
                w.add(&c.as_ref());
            }
            let (text, _, n) = w.reply(0, 1 << 16);
            Ok(SerDigest {
                digest: decode_digest(&text).unwrap(),
                contacts: n,
                walk_us: 0,
                max_lock_us: 0,
            })
        }

        fn hashes_in(&mut self, ranges: &[usize], now: i64) -> Result<Vec<u64>, ApplyError> {
            Ok(self.walk(Want::Hashes(ranges.to_vec()), now, decode_hashes))
        }

        fn pick(
            &mut self,
            hashes: &std::collections::HashSet<u64>,
            now: i64,
        ) -> Result<Vec<Contact>, ApplyError> {
            Ok(self.walk(Want::Pick(hashes.clone()), now, decode_contacts))
        }

        fn alias_digest(&mut self) -> Result<Option<(Vec<u8>, Digest)>, ApplyError> {
            Ok(None)
        }

        fn aliases_in(&mut self, _: &[usize]) -> Result<Vec<Alias>, ApplyError> {
            Ok(Vec::new())
        }
    }

    impl FakeSer {
        fn walk<T>(
            &self,
            want: Want,
            now: i64,
            decode: fn(&str) -> Result<Vec<T>, String>,
        ) -> Vec<T> {
            let mut w = Walk::new(now, want);
            for c in self.0.lock().unwrap().iter() {
                w.add(&c.as_ref());
            }
            decode(&w.reply(0, usize::MAX / 2).0).unwrap()
        }
    }

    /// A version SER holds that the state lacks (its change dropped by the
    /// full queue) is journaled at the stamp SER's change was made at, not
    /// a fresh one: a SIP worker's later change wins wherever it lands. One
    /// SER changed again between the look and the repair waits for the
    /// next check.
    #[test]
    fn sers_version_is_journaled_at_the_stamp_it_was_made_at() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let shared = Arc::new(Shared::create(64).unwrap());
        let status = Arc::new(Status::new("n1"));
        let now = (crate::hlc::wall_ms() / 1000) as i64;
        let v = |aor: &str, cseq: i32| Contact {
            expires: now + 3600,
            ..contact(aor, cseq, now)
        };
        let upsert = |c: Contact| Record::Contact {
            op: Op::Upsert,
            contact: c,
        };
        j.append_local("n1", &[(shared.stamp(), upsert(v("a", 1)))])
            .unwrap();
        j.append_local("n1", &[(shared.stamp(), upsert(v("b", 1)))])
            .unwrap();
        // SER made cseq 2 of both (the queue dropped the changes): noted.
        let made = |aor: &str| {
            let c = v(aor, 2);
            let key = shared.order_key(&c.domain, &c.aor, &c.contact);
            let h = shared.stamp();
            assert!(shared.admit(key, h, crate::queue::Held::Nothing, now));
            (c, key, h)
        };
        let (a2, _, ha) = made("a");
        let (b2, kb, _) = made("b");
        let held = std::sync::Arc::new(std::sync::Mutex::new(vec![a2, b2]));
        let mut ser = FakeSer(held.clone());
        let mut p = Proof::new(
            Some(Duration::from_secs(3600)),
            vec!["location".into()],
            shared.clone(),
            status.clone(),
        );
        p.next = Some(Instant::now());
        p.tick(&mut j, &mut ser);
        // b changes again in SER after the look, before the repair.
        assert!(shared.admit(kb, shared.stamp(), crate::queue::Held::Nothing, now));
        std::thread::sleep(CONFIRM_DELAY + Duration::from_millis(50));
        p.tick(&mut j, &mut ser);
        let mut out = Vec::new();
        let mut got = Vec::new();
        while shared.pop(&mut out) {
            let (stamp, item) = crate::queue::decode(&out).unwrap();
            got.push((stamp, format!("{item:?}")));
        }
        assert_eq!(got.len(), 1, "only a is journaled: {got:?}");
        assert_eq!(got[0].0, ha, "at the stamp SER's change was made at");
        assert!(got[0].1.contains("cseq: 2"), "{}", got[0].1);
    }

    #[test]
    fn a_difference_is_repaired_only_when_the_second_look_finds_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("j.db")).unwrap();
        let shared = Arc::new(Shared::create(64).unwrap());
        let status = Arc::new(Status::new("n1"));
        let now = (crate::hlc::wall_ms() / 1000) as i64;
        let live = |aor: &str| Contact {
            expires: now + 3600,
            ..contact(aor, 1, now)
        };
        let upsert = |c: Contact| Record::Contact {
            op: Op::Upsert,
            contact: c,
        };
        j.append_local("n1", &[(shared.stamp(), upsert(live("a")))])
            .unwrap();
        j.append_local("n1", &[(shared.stamp(), upsert(live("b")))])
            .unwrap();
        // SER lacks both; "a" is in flight (applied before the second look).
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut ser = FakeSer(held.clone());
        let mut p = Proof::new(
            Some(Duration::from_secs(3600)),
            vec!["location".into()],
            shared,
            status.clone(),
        );
        p.next = Some(Instant::now());
        p.tick(&mut j, &mut ser);
        let c = &status.counters;
        assert_eq!(c.checks.load(Ordering::Relaxed), 1);
        assert!(c.ranges_compared.load(Ordering::Relaxed) >= 1);
        assert_eq!(
            j.inbox_len().unwrap(),
            0,
            "nothing acted on at the first look"
        );
        held.lock().unwrap().push(live("a"));
        p.tick(&mut j, &mut ser);
        assert_eq!(j.inbox_len().unwrap(), 0, "not before CONFIRM_DELAY");
        std::thread::sleep(CONFIRM_DELAY + Duration::from_millis(50));
        p.tick(&mut j, &mut ser);
        assert_eq!(c.divergences.load(Ordering::Relaxed), 1);
        assert_eq!(c.repaired.load(Ordering::Relaxed), 1);
        let (staged, _) = j.inbox_current(10).unwrap();
        let aors: Vec<Vec<u8>> = staged
            .iter()
            .map(|s| match &s.record {
                Record::Contact { contact, .. } => contact.aor.clone(),
                Record::Alias { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(aors, [b"b".to_vec()], "only b, still missing, is put back");
        // SER refuses b: the applier quarantines it. The next check leaves
        // it to the quarantine instead of staging it again.
        let b_id = staged[0].id;
        j.quarantine(b_id, "refused", 3, now).unwrap();
        assert_eq!(j.inbox_len().unwrap(), 0);
        p.next = Some(Instant::now());
        p.tick(&mut j, &mut ser);
        std::thread::sleep(CONFIRM_DELAY + Duration::from_millis(50));
        p.tick(&mut j, &mut ser);
        assert_eq!(j.inbox_len().unwrap(), 0, "not staged again");
        assert_eq!(c.divergences.load(Ordering::Relaxed), 1);
        // Equal now: the next check finds nothing.
        held.lock().unwrap().push(live("b"));
        p.next = Some(Instant::now());
        p.tick(&mut j, &mut ser);
        assert_eq!(c.checks.load(Ordering::Relaxed), 3);
        assert!(p.pending.is_none());
    }
}
