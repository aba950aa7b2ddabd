//! Conversions at the boundary: C (ptr, len) strings to Rust slices and
//! back, contact and alias views both ways, the configuration, the error
//! text buffer and the opaque shared-region handle.

use std::os::raw::c_char;

use crate::abi;
use crate::abi::{sersync_alias, sersync_config, sersync_contact, sersync_shared, sersync_str};
use crate::config::RawConfig;
use crate::error::ConfigError;
use crate::queue::{ItemRef, Shared};
use crate::record::{Alias, AliasRef, Contact, ContactRef, Op, RecordRef};

/// The bytes of a C (ptr, len) string; None if ptr is NULL with len > 0.
///
/// # Safety
/// `s.s` must point to `s.len` readable bytes that outlive `'a`.
pub(super) unsafe fn bytes<'a>(s: &sersync_str) -> Option<&'a [u8]> {
    if s.len == 0 {
        Some(&[])
    } else if s.s.is_null() {
        None
    } else {
        // SAFETY: per the function contract.
        Some(unsafe { std::slice::from_raw_parts(s.s.cast::<u8>(), s.len) })
    }
}

pub(super) fn c_str(b: &[u8]) -> sersync_str {
    sersync_str {
        s: b.as_ptr().cast::<c_char>(),
        len: b.len(),
    }
}

/// # Safety
/// `c` must be a valid sersync_contact whose strings live for `'a`.
pub(super) unsafe fn contact_ref<'a>(c: &'a sersync_contact) -> Option<RecordRef<'a>> {
    let op = match c.op {
        x if x == abi::sersync_op::SERSYNC_OP_UPSERT as i32 => Op::Upsert,
        x if x == abi::sersync_op::SERSYNC_OP_DELETE as i32 => Op::Delete,
        _ => return None,
    };
    // SAFETY: per the function contract, for each field.
    let contact = unsafe {
        ContactRef {
            domain: bytes(&c.domain)?,
            aor: bytes(&c.aor)?,
            contact: bytes(&c.contact)?,
            ruid: bytes(&c.ruid)?,
            received: bytes(&c.received)?,
            path: bytes(&c.path)?,
            callid: bytes(&c.callid)?,
            user_agent: bytes(&c.user_agent)?,
            socket: bytes(&c.socket)?,
            instance: bytes(&c.instance)?,
            expires: c.expires,
            last_modified: c.last_modified,
            q: c.q,
            cseq: c.cseq,
            flags: c.flags,
            cflags: c.cflags,
            methods: c.methods,
            reg_id: c.reg_id,
            server_id: c.server_id,
        }
    };
    Some(RecordRef::Contact { op, contact })
}

pub(super) fn contact_view(op: Op, c: &Contact, stamp: u64) -> sersync_contact {
    sersync_contact {
        op: op_code(op),
        q: c.q,
        domain: c_str(&c.domain),
        aor: c_str(&c.aor),
        contact: c_str(&c.contact),
        ruid: c_str(&c.ruid),
        received: c_str(&c.received),
        path: c_str(&c.path),
        callid: c_str(&c.callid),
        user_agent: c_str(&c.user_agent),
        socket: c_str(&c.socket),
        instance: c_str(&c.instance),
        expires: c.expires,
        last_modified: c.last_modified,
        cseq: c.cseq,
        flags: c.flags,
        cflags: c.cflags,
        methods: c.methods,
        reg_id: c.reg_id,
        server_id: c.server_id,
        _pad: 0,
        stamp,
    }
}

pub(super) fn op_code(op: Op) -> i32 {
    (match op {
        Op::Upsert => abi::sersync_op::SERSYNC_OP_UPSERT,
        Op::Delete => abi::sersync_op::SERSYNC_OP_DELETE,
    }) as i32
}

/// # Safety
/// `a` must be a valid sersync_alias whose strings live for `'a`.
pub(super) unsafe fn alias_ref<'a>(a: &'a sersync_alias) -> Option<ItemRef<'a>> {
    // SAFETY: per the function contract, for each field.
    let table = unsafe { bytes(&a.table)? };
    let op = match a.op {
        x if x == abi::sersync_op::SERSYNC_OP_SCAN_BEGIN as i32 => {
            return Some(ItemRef::ScanBegin { table })
        }
        x if x == abi::sersync_op::SERSYNC_OP_SCAN_END as i32 => {
            return Some(ItemRef::ScanEnd {
                table,
                confirmed: false,
            })
        }
        x if x == abi::sersync_op::SERSYNC_OP_SCAN_END_CONFIRMED as i32 => {
            return Some(ItemRef::ScanEnd {
                table,
                confirmed: true,
            })
        }
        x if x == abi::sersync_op::SERSYNC_OP_SCAN_ABORT as i32 => {
            return Some(ItemRef::ScanAbort { table })
        }
        x if x == abi::sersync_op::SERSYNC_OP_UPSERT as i32 => Op::Upsert,
        x if x == abi::sersync_op::SERSYNC_OP_DELETE as i32 => Op::Delete,
        _ => return None,
    };
    // SAFETY: as above.
    let alias = unsafe {
        AliasRef {
            table,
            alias_username: bytes(&a.alias_username)?,
            alias_domain: bytes(&a.alias_domain)?,
            username: bytes(&a.username)?,
            domain: bytes(&a.domain)?,
        }
    };
    Some(ItemRef::Change(RecordRef::Alias { op, alias }))
}

pub(super) fn alias_view(op: Op, a: &Alias) -> sersync_alias {
    sersync_alias {
        op: op_code(op),
        _pad: 0,
        table: c_str(&a.table),
        alias_username: c_str(&a.alias_username),
        alias_domain: c_str(&a.alias_domain),
        username: c_str(&a.username),
        domain: c_str(&a.domain),
    }
}

/// The modparams as Rust strings; one that is NULL (with a length) or
/// not UTF-8 is a [`ConfigError`] naming it.
///
/// # Safety
/// `cfg` must be a valid sersync_config (see sersync.h).
pub(super) unsafe fn raw_config(cfg: &sersync_config) -> Result<RawConfig, ConfigError> {
    let bad = |name: &'static str| ConfigError::invalid(name, "not valid UTF-8 or NULL");
    let s = |v: &sersync_str, name: &'static str| -> Result<String, ConfigError> {
        // SAFETY: per the function contract.
        let b = unsafe { bytes(v) }.ok_or_else(|| bad(name))?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(name))
    };
    let mut peers = Vec::with_capacity(cfg.npeers);
    if cfg.npeers > 0 {
        if cfg.peers.is_null() {
            return Err(bad("peer"));
        }
        // SAFETY: per the function contract, peers has npeers entries.
        for p in unsafe { std::slice::from_raw_parts(cfg.peers, cfg.npeers) } {
            peers.push(s(p, "peer")?);
        }
    }
    Ok(RawConfig {
        node_id: s(&cfg.node_id, "node_id")?,
        listen: s(&cfg.listen, "listen")?,
        peers,
        // SAFETY: per the function contract.
        secret: unsafe { bytes(&cfg.secret) }
            .ok_or_else(|| bad("secret"))?
            .to_vec(),
        // SAFETY: per the function contract.
        secret2: unsafe { bytes(&cfg.secret2) }
            .ok_or_else(|| bad("secret"))?
            .to_vec(),
        accept_clear_peers: cfg.accept_clear_peers != 0,
        journal: s(&cfg.journal, "journal")?,
        fifo: s(&cfg.fifo, "fifo")?,
        db_url: s(&cfg.db_url, "db_url")?,
        fifo_reply_dir: s(&cfg.fifo_reply_dir, "fifo_reply_dir")?,
        runtime_dir: s(&cfg.runtime_dir, "runtime_dir")?,
        domains: s(&cfg.domains, "domains")?,
        retention_secs: cfg.retention_secs,
        retention_records: cfg.retention_records,
        usrloc_in_memory: cfg.ul_db_mode == 0,
        alias_scan_max_delete: u64::from(cfg.alias_scan_max_delete),
        alias_scan_max_delete_pct: u64::from(cfg.alias_scan_max_delete_pct),
        peer_check_secs: u64::from(cfg.peer_check_interval),
        max_clock_skew_ms: u64::from(cfg.max_clock_skew_ms),
        check_interval: u64::from(cfg.check_interval),
    })
}

pub(super) fn write_err(err: *mut c_char, errlen: usize, msg: &str) {
    if err.is_null() || errlen == 0 {
        return;
    }
    let n = msg.len().min(errlen - 1);
    // SAFETY: the caller gave errlen writable bytes at err.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// # Safety
/// `sh` must come from sersync_shared_create.
pub(super) unsafe fn shared<'a>(sh: *mut sersync_shared) -> Option<&'a Shared> {
    // SAFETY: per the function contract; never freed.
    unsafe { sh.cast::<Shared>().as_ref() }
}
