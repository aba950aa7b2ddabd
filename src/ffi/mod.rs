//! The C boundary. All `unsafe` that touches C pointers lives here; every
//! export goes through [`boundary`], which catches panics (a panic must
//! never unwind into SER) and maps them to `SERSYNC_E_PANIC`.

use crate::abi;

use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::abi::{
    sersync_alias, sersync_apply_ops, sersync_config, sersync_contact, sersync_log_fn, sersync_rc,
    sersync_shared, sersync_status, sersync_str,
};

use crate::config::RawConfig;
use crate::engine::Engine;
use crate::error::JournalError;
use crate::log;
use crate::queue::Shared;
use crate::record::{Alias, AliasRef, Contact, ContactRef, Op, Record, RecordRef};

fn boundary(f: impl FnOnce() -> sersync_rc) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc as c_int,
        Err(_) => sersync_rc::SERSYNC_E_PANIC as c_int,
    }
}

/// The bytes of a C (ptr, len) string; None if ptr is NULL with len > 0.
///
/// # Safety
/// `s.s` must point to `s.len` readable bytes that outlive `'a`.
unsafe fn bytes<'a>(s: &sersync_str) -> Option<&'a [u8]> {
    if s.len == 0 {
        Some(&[])
    } else if s.s.is_null() {
        None
    } else {
        // SAFETY: per the function contract.
        Some(unsafe { std::slice::from_raw_parts(s.s.cast::<u8>(), s.len) })
    }
}

fn c_str(b: &[u8]) -> sersync_str {
    sersync_str {
        s: b.as_ptr().cast::<c_char>(),
        len: b.len(),
    }
}

/// # Safety
/// `c` must be a valid sersync_contact whose strings live for `'a`.
unsafe fn contact_ref<'a>(c: &'a sersync_contact) -> Option<RecordRef<'a>> {
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

fn contact_view(op: Op, c: &Contact) -> sersync_contact {
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
    }
}

fn op_code(op: Op) -> i32 {
    (match op {
        Op::Upsert => abi::sersync_op::SERSYNC_OP_UPSERT,
        Op::Delete => abi::sersync_op::SERSYNC_OP_DELETE,
    }) as i32
}

/// # Safety
/// `a` must be a valid sersync_alias whose strings live for `'a`.
unsafe fn alias_ref<'a>(a: &'a sersync_alias) -> Option<RecordRef<'a>> {
    // SAFETY: per the function contract, for each field.
    let table = unsafe { bytes(&a.table)? };
    let op = match a.op {
        x if x == abi::sersync_op::SERSYNC_OP_SCAN_BEGIN as i32 => {
            return Some(RecordRef::AliasScan { table, end: false })
        }
        x if x == abi::sersync_op::SERSYNC_OP_SCAN_END as i32 => {
            return Some(RecordRef::AliasScan { table, end: true })
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
    Some(RecordRef::Alias { op, alias })
}

fn alias_view(op: Op, a: &Alias) -> sersync_alias {
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

/// # Safety
/// `cfg` must be a valid sersync_config (see sersync.h).
unsafe fn raw_config(cfg: &sersync_config) -> Result<RawConfig, &'static str> {
    let s = |v: &sersync_str, name: &'static str| -> Result<String, &'static str> {
        // SAFETY: per the function contract.
        let b = unsafe { bytes(v) }.ok_or(name)?;
        String::from_utf8(b.to_vec()).map_err(|_| name)
    };
    let mut peers = Vec::with_capacity(cfg.npeers);
    if cfg.npeers > 0 {
        if cfg.peers.is_null() {
            return Err("peer");
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
        secret: unsafe { bytes(&cfg.secret) }.ok_or("secret")?.to_vec(),
        journal: s(&cfg.journal, "journal")?,
        fifo: s(&cfg.fifo, "fifo")?,
        db_url: s(&cfg.db_url, "db_url")?,
        fifo_reply_dir: s(&cfg.fifo_reply_dir, "fifo_reply_dir")?,
        domains: s(&cfg.domains, "domains")?,
        retention_secs: cfg.retention_secs,
        retention_records: cfg.retention_records,
    })
}

fn write_err(err: *mut c_char, errlen: usize, msg: &str) {
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
unsafe fn shared<'a>(sh: *mut sersync_shared) -> Option<&'a Shared> {
    // SAFETY: per the function contract; never freed.
    unsafe { sh.cast::<Shared>().as_ref() }
}

#[no_mangle]
pub extern "C" fn sersync_set_logger(f: sersync_log_fn) -> c_int {
    boundary(|| {
        log::set_logger(f);
        sersync_rc::SERSYNC_OK
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_config_check(
    cfg: *const sersync_config,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(cfg) = (unsafe { cfg.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: as above.
        let result = match unsafe { raw_config(cfg) } {
            Ok(raw) => raw.check().map(|_| ()).map_err(|e| e.to_string()),
            Err(name) => Err(format!("modparam \"{name}\": not valid UTF-8 or NULL")),
        };
        match result {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(msg) => {
                write_err(err, errlen, &msg);
                sersync_rc::SERSYNC_E_CONFIG
            }
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_shared_create(slots: u32, out: *mut *mut sersync_shared) -> c_int {
    boundary(|| {
        if out.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        match Shared::create(slots) {
            Ok(sh) => {
                // Lives for the whole life of SER: leaked on purpose.
                let p = Arc::into_raw(Arc::new(sh)) as *mut sersync_shared;
                // SAFETY: out checked non-NULL.
                unsafe { *out = p };
                sersync_rc::SERSYNC_OK
            }
            Err(e) => {
                log::error(format_args!("{e}"));
                (&e).into()
            }
        }
    })
}

/// Queues the record `view` makes of `item`: the worker-side hand-off
/// shared by contacts and aliases.
///
/// # Safety
/// `sh` and `item` must be valid per sersync.h.
unsafe fn publish_view<T>(
    sh: *mut sersync_shared,
    item: *const T,
    view: impl for<'a> Fn(&'a T) -> Option<RecordRef<'a>>,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per the function contract.
        let (Some(sh), Some(item)) = (unsafe { shared(sh) }, unsafe { item.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let Some(rec) = view(item) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        match sh.publish(&rec) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => (&e).into(),
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_publish(
    sh: *mut sersync_shared,
    c: *const sersync_contact,
) -> c_int {
    // SAFETY: the contact's strings are valid for this call (sersync.h).
    unsafe { publish_view(sh, c, |c| contact_ref(c)) }
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_publish_alias(
    sh: *mut sersync_shared,
    a: *const sersync_alias,
) -> c_int {
    // SAFETY: the alias' strings are valid for this call (sersync.h).
    unsafe { publish_view(sh, a, |a| alias_ref(a)) }
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_forget(
    sh: *mut sersync_shared,
    node_id: *const c_char,
    len: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: node_id has len bytes per sersync.h.
        let Some(id) = (unsafe { bytes(&sersync_str { s: node_id, len }) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let Ok(id) = std::str::from_utf8(id) else {
            return sersync_rc::SERSYNC_E_DECODE;
        };
        if id.is_empty() || id.len() > crate::config::NODE_ID_MAX {
            return sersync_rc::SERSYNC_E_DECODE;
        }
        match sh.publish(&RecordRef::Forget { node_id: id }) {
            Ok(()) => sersync_rc::SERSYNC_OK,
            Err(e) => (&e).into(),
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_journal_wait(sh: *mut sersync_shared, timeout_ms: u32) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        if sh.wait_durable(std::time::Duration::from_millis(timeout_ms as u64)) {
            sersync_rc::SERSYNC_OK
        } else {
            sersync_rc::SERSYNC_E_TIMEOUT
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_engine_run(
    sh: *mut sersync_shared,
    cfg: *const sersync_config,
) -> c_int {
    boundary(|| {
        if sh.is_null() || cfg.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        std::panic::set_hook(Box::new(|info| {
            log::error(format_args!("internal fault: {info}"))
        }));
        // SAFETY: sh came from Arc::into_raw in sersync_shared_create.
        let shared = unsafe {
            Arc::increment_strong_count(sh as *const Shared);
            Arc::from_raw(sh as *const Shared)
        };
        // SAFETY: validity per sersync.h.
        let raw = match unsafe { raw_config(&*cfg) } {
            Ok(r) => r,
            Err(name) => {
                log::error(format_args!("modparam \"{name}\": not valid UTF-8 or NULL"));
                return sersync_rc::SERSYNC_E_CONFIG;
            }
        };
        let cfg = match raw.check() {
            Ok(c) => c,
            Err(e) => {
                log::error(format_args!("{e}"));
                return sersync_rc::SERSYNC_E_CONFIG;
            }
        };
        if std::env::var_os("SERSYNC_DEBUG").is_some() {
            log::set_max_level(log::DBG);
        }
        loop {
            match Engine::start(cfg.clone(), shared.clone(), None) {
                Ok(engine) => {
                    engine.wait();
                    return sersync_rc::SERSYNC_OK;
                }
                Err(crate::engine::EngineError::Journal(
                    e @ (JournalError::CorruptMovedAside { .. } | JournalError::TooNew { .. }),
                )) => {
                    log::error(format_args!(
                        "{e}; until then replication is off, SER keeps serving"
                    ));
                    let st = crate::status::Status::new(&cfg.node_id);
                    st.set_error(&e.to_string());
                    shared.write_status(&st.to_c());
                    return sersync_rc::SERSYNC_E_JOURNAL;
                }
                Err(e) => {
                    log::error(format_args!(
                        "cannot start: {e}; retrying in 10 s (SER keeps serving)"
                    ));
                    let st = crate::status::Status::new(&cfg.node_id);
                    st.set_error(&e.to_string());
                    shared.write_status(&st.to_c());
                    std::thread::sleep(std::time::Duration::from_secs(10));
                }
            }
        }
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_status_read(
    sh: *mut sersync_shared,
    out: *mut sersync_status,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(sh) = (unsafe { shared(sh) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        if out.is_null() {
            return sersync_rc::SERSYNC_E_NULL;
        }
        let st = sh.read_status();
        // SAFETY: out checked non-NULL.
        unsafe { out.write(st) };
        sersync_rc::SERSYNC_OK
    })
}

/// # Safety
/// See sersync.h.
#[no_mangle]
pub unsafe extern "C" fn sersync_apply_decode(
    payload: *const c_char,
    len: usize,
    ops: *const sersync_apply_ops,
    count: *mut u32,
    err: *mut c_char,
    errlen: usize,
) -> c_int {
    boundary(|| {
        // SAFETY: NULL checked; validity per sersync.h.
        let Some(ops) = (unsafe { ops.as_ref() }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let (Some(on_contact), Some(on_alias)) = (ops.contact, ops.alias) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        // SAFETY: payload has len bytes per sersync.h.
        let Some(text) = (unsafe { bytes(&sersync_str { s: payload, len }) }) else {
            return sersync_rc::SERSYNC_E_NULL;
        };
        let records = match crate::apply::payload::decode(text) {
            Ok(r) => r,
            Err(e) => {
                log::error(format_args!("sersync.apply: malformed payload: {e}"));
                write_err(err, errlen, &e.to_string());
                return sersync_rc::SERSYNC_E_DECODE;
            }
        };
        let mut applied = 0u32;
        let mut rc = sersync_rc::SERSYNC_OK;
        for r in &records {
            // SAFETY: each view borrows `r`, alive across its call.
            let ok = match r {
                Record::Contact { op, contact } => {
                    (unsafe { on_contact(ops.ctx, &contact_view(*op, contact)) }) >= 0
                }
                Record::Alias { op, alias } => {
                    (unsafe { on_alias(ops.ctx, &alias_view(*op, alias)) }) >= 0
                }
                // Never journaled, so never sent; nothing to apply.
                Record::AliasScan { .. } | Record::Forget { .. } => true,
            };
            if !ok {
                rc = sersync_rc::SERSYNC_E_CALLBACK;
                break;
            }
            applied += 1;
        }
        if !count.is_null() {
            // SAFETY: non-NULL per check.
            unsafe { *count = applied };
        }
        rc
    })
}

/// Ties each export to its declaration in sersync.h: this does not compile
/// if a signature drifts from the header.
#[allow(dead_code)]
const _SIGNATURES: () = {
    let _: [unsafe extern "C" fn(sersync_log_fn) -> c_int; 2] =
        [abi::sersync_set_logger, sersync_set_logger];
    let _: [unsafe extern "C" fn(*const sersync_config, *mut c_char, usize) -> c_int; 2] =
        [abi::sersync_config_check, sersync_config_check];
    let _: [unsafe extern "C" fn(u32, *mut *mut sersync_shared) -> c_int; 2] =
        [abi::sersync_shared_create, sersync_shared_create];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_contact) -> c_int; 2] =
        [abi::sersync_publish, sersync_publish];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const c_char, usize) -> c_int; 2] =
        [abi::sersync_forget, sersync_forget];
    let _: [unsafe extern "C" fn(*mut sersync_shared, u32) -> c_int; 2] =
        [abi::sersync_journal_wait, sersync_journal_wait];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_config) -> c_int; 2] =
        [abi::sersync_engine_run, sersync_engine_run];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *mut sersync_status) -> c_int; 2] =
        [abi::sersync_status_read, sersync_status_read];
    let _: [unsafe extern "C" fn(*mut sersync_shared, *const sersync_alias) -> c_int; 2] =
        [abi::sersync_publish_alias, sersync_publish_alias];
    let _: [unsafe extern "C" fn(
        *const c_char,
        usize,
        *const sersync_apply_ops,
        *mut u32,
        *mut c_char,
        usize,
    ) -> c_int; 2] = [abi::sersync_apply_decode, sersync_apply_decode];
};
