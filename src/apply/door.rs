//! SER's RPC door, as Kamailio's jsonrpcs module opens it: a FIFO (text
//! JSON, one request at most 8 KiB, reply through a FIFO we create) or a
//! unix datagram socket (one request per datagram, at most ~64 KiB, reply
//! to our bound socket). The `fifo` modparam names either; the kind is
//! read from the file itself. The datagram socket carries eight times as
//! much per request, so it is the faster door.
//!
//! Our end of the datagram door is a socket bound in SER's runtime
//! directory (beside SER's own sockets; cleaners sweep /tmp), checked
//! before every request and bound anew when its file is gone: a socket
//! whose file was removed still receives nothing sent to its path.
//!
//! Each request calls `sersync.apply` with one payload ([`super::payload`]);
//! the module applies it into usrloc inside SER, marked as replaying so
//! the usrloc callbacks do not send it back out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::payload;
use super::Sink;
use crate::digest::Digest;
use crate::error::ApplyError;
use crate::log;
use crate::os;
use crate::proof::{self, SerDigest, SerView, Want};
use crate::record::{Alias, Contact, Record};

/// jsonrpcs reads FIFO requests into an 8 KiB buffer; writes above
/// PIPE_BUF (4 KiB) may interleave with another client's, so stay below.
const FIFO_REQUEST_MAX: usize = 4000;
/// jsonrpcs' datagram buffer is 65456 bytes.
const DGRAM_REQUEST_MAX: usize = 65000;
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// `sersync.apply` requests the datagram door keeps in flight: SER works
/// on one while the next is encoded and queued, so its worker does not
/// wait for us between requests. Contacts may be applied in any order
/// (usrloc admits a version only over an older one); a request carrying an
/// alias (not version-checked in SER) travels alone.
const DGRAM_IN_FLIGHT: usize = 3;

enum Kind {
    Fifo,
    Dgram(Reply),
}

/// Our bound datagram socket and the identity of its file.
struct Reply {
    sock: UnixDatagram,
    path: PathBuf,
    /// (device, inode) of the socket file as bound.
    file: (u64, u64),
}

impl Reply {
    /// Is the file at our path still the socket we bound?
    fn in_place(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.in_place() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub struct Door {
    path: PathBuf,
    /// jsonrpcs' fifo_reply_dir: where it opens a FIFO client's reply.
    fifo_reply_dir: PathBuf,
    /// Where our datagram socket is bound (SER's runtime_dir).
    sock_dir: PathBuf,
    reply_name: String,
    kind: Option<Kind>,
    next_id: u64,
    /// Replies that came (or, FIFO, were read) before they were awaited,
    /// by request id.
    early: HashMap<u64, Vec<u8>>,
    /// sersync.apply's first parameter ([`crate::queue::Shared::apply_token`]).
    token: String,
}

impl Door {
    /// The door at `path`; FIFO replies come through `fifo_reply_dir`
    /// (jsonrpcs' own setting), the datagram socket is bound in
    /// `sock_dir`; `token` is sersync.apply's (the module refuses a call
    /// without it).
    pub fn new(path: &Path, fifo_reply_dir: &Path, sock_dir: &Path, token: &str) -> Door {
        Door {
            path: path.to_path_buf(),
            fifo_reply_dir: fifo_reply_dir.to_path_buf(),
            sock_dir: sock_dir.to_path_buf(),
            // jsonrpcs forbids '.' and '/' in reply names.
            reply_name: format!("sersync_apply_{}", std::process::id()),
            kind: None,
            next_id: 1,
            early: HashMap::new(),
            token: token.to_string(),
        }
    }

    /// Binds our reply socket in SER's runtime directory; when that
    /// directory cannot take it (missing, not writable: a door named by
    /// an absolute path elsewhere), in fifo_reply_dir, saying so.
    fn bind_reply(&self) -> Result<Reply, ApplyError> {
        match self.bind_reply_in(&self.sock_dir) {
            Err(e) if self.fifo_reply_dir != self.sock_dir => {
                match self.bind_reply_in(&self.fifo_reply_dir) {
                    Ok(alt) => {
                        log::warn(format_args!(
                            "{e}; the reply socket is {} instead",
                            alt.path.display()
                        ));
                        Ok(alt)
                    }
                    Err(_) => Err(e),
                }
            }
            r => r,
        }
    }

    fn bind_reply_in(&self, dir: &Path) -> Result<Reply, ApplyError> {
        let local = dir.join(format!("{}_sock", self.reply_name));
        let _ = std::fs::remove_file(&local);
        let sock = UnixDatagram::bind(&local)
            .map_err(|e| self.err(format!("bind {}: {e}", local.display())))?;
        let meta = std::fs::symlink_metadata(&local)
            .map_err(|e| self.err(format!("stat {}: {e}", local.display())))?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| self.err(e.to_string()))?;
        // A send waits while SER's queue is full (requests in flight).
        sock.set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| self.err(e.to_string()))?;
        Ok(Reply {
            sock,
            path: local,
            file: (meta.dev(), meta.ino()),
        })
    }

    fn err(&self, detail: impl Into<String>) -> ApplyError {
        ApplyError::Door {
            path: self.path.display().to_string(),
            detail: detail.into(),
        }
    }

    /// Classifies an OS error: nothing serving the door, or a door that
    /// exists but failed (busy, timed out) and is retried as it is.
    fn io_err(&self, what: &str, e: &std::io::Error) -> ApplyError {
        let detail = format!("{what}: {e}");
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENXIO | libc::ECONNREFUSED | libc::ENOTSOCK) => {
                ApplyError::DoorAbsent {
                    path: self.path.display().to_string(),
                    detail,
                }
            }
            _ => self.err(detail),
        }
    }

    fn kind(&mut self) -> Result<&Kind, ApplyError> {
        if let Some(Kind::Dgram(reply)) = &self.kind {
            if !reply.in_place() {
                log::warn(format_args!(
                    "the reply socket {} is gone (removed by a cleaner?): binding it again",
                    reply.path.display()
                ));
                self.kind = None;
            }
        }
        if self.kind.is_none() {
            let meta = std::fs::metadata(&self.path).map_err(|e| self.io_err("stat", &e))?;
            let ft = meta.file_type();
            let kind = if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_socket() {
                Kind::Dgram(self.bind_reply()?)
            } else {
                return Err(self.err("neither a FIFO nor a unix socket: point modparam fifo at jsonrpcs' fifo_name or dgram socket"));
            };
            self.kind = Some(kind);
        }
        Ok(self.kind.as_ref().expect("set above"))
    }

    fn request_max(&mut self) -> Result<usize, ApplyError> {
        Ok(match self.kind()? {
            Kind::Fifo => FIFO_REQUEST_MAX,
            Kind::Dgram(_) => DGRAM_REQUEST_MAX,
        })
    }

    /// Sends one `sersync.apply` call; its reply is read by
    /// [`Door::finish`] and its count by [`Door::applied`].
    fn start_apply(&mut self, records: &[(u64, Record)]) -> Result<u64, ApplyError> {
        let payload = payload::encode(records);
        self.start(
            "sersync.apply",
            vec![Value::String(self.token.clone()), Value::String(payload)],
        )
    }

    /// One RPC call through the door; its result, or its fault as an
    /// error (sersync.apply's faults naming a record as such).
    fn rpc(&mut self, method: &str, params: Vec<Value>) -> Result<Value, ApplyError> {
        self.early.clear();
        let id = self.start(method, params)?;
        self.finish(id)
    }

    /// Sends request `id` (a FIFO request is answered before this returns:
    /// its reply waits in `early`).
    fn start(&mut self, method: &str, params: Vec<Value>) -> Result<u64, ApplyError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = serde_json::json!({
            "jsonrpc": "2.0",
            "method": method,
            "params": params,
            "id": id,
        });
        let reply_name = self.reply_name.clone();
        let is_fifo = matches!(self.kind()?, Kind::Fifo);
        if is_fifo {
            req["reply_name"] = Value::String(reply_name.clone());
        }
        let body = serde_json::to_vec(&req).expect("JSON of strings and numbers");
        if is_fifo {
            let reply = self.call_fifo(&body, &reply_name)?;
            self.early.insert(id, reply);
        } else {
            self.send_dgram(&body)?;
        }
        Ok(id)
    }

    /// The result of request `id`, or its fault as an error.
    fn finish(&mut self, id: u64) -> Result<Value, ApplyError> {
        let reply = match self.early.remove(&id) {
            Some(r) => r,
            None => self.recv_dgram(id)?,
        };
        let mut v: Value = serde_json::from_slice(&reply)
            .map_err(|e| self.err(format!("unreadable reply: {e}")))?;
        if let Some(err) = v.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            let code = err.get("code").and_then(Value::as_i64);
            // 503: the module's "not yet" (usrloc still loading).
            if code == Some(503) {
                return Err(ApplyError::NotReady(msg.to_string()));
            }
            if let Some(e) = record_failure(code, msg) {
                return Err(e);
            }
            return Err(ApplyError::Rejected(msg.to_string()));
        }
        Ok(v.get_mut("result").map(Value::take).unwrap_or(Value::Null))
    }

    fn call_fifo(&mut self, body: &[u8], reply_name: &str) -> Result<Vec<u8>, ApplyError> {
        let reply_path = self.fifo_reply_dir.join(reply_name);
        let _ = std::fs::remove_file(&reply_path);
        let cpath = std::ffi::CString::new(reply_path.as_os_str().as_encoded_bytes())
            .map_err(|_| self.err("reply path contains NUL"))?;
        os::mkfifo(&cpath, 0o600)
            .map_err(|e| self.err(format!("mkfifo {}: {e}", reply_path.display())))?;
        let result = (|| {
            // Open our read end first (non-blocking) so SER's writer finds
            // a reader.
            let mut reply = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&reply_path)
                .map_err(|e| self.err(format!("open reply FIFO: {e}")))?;
            let mut door = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path)
                .map_err(|e| self.io_err("SER is not reading it", &e))?;
            let mut line = body.to_vec();
            line.push(b'\n');
            door.write_all(&line)
                .map_err(|e| self.err(format!("write: {e}")))?;
            read_until_eof(&mut reply, REPLY_TIMEOUT).map_err(|e| self.err(format!("reply: {e}")))
        })();
        let _ = std::fs::remove_file(&reply_path);
        result
    }

    fn send_dgram(&mut self, body: &[u8]) -> Result<(), ApplyError> {
        let Some(Kind::Dgram(Reply { sock, .. })) = &self.kind else {
            unreachable!("checked by caller")
        };
        if let Err(e) = sock.send_to(body, &self.path) {
            let detail = format!("send: {e}");
            let path = self.path.display().to_string();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT | libc::ECONNREFUSED) => ApplyError::DoorAbsent { path, detail },
                _ => ApplyError::Door { path, detail },
            });
        }
        Ok(())
    }

    /// The reply to request `id`; replies to later requests of this
    /// pipeline that come first are kept, late ones to earlier (timed-out
    /// or abandoned) requests skipped.
    fn recv_dgram(&mut self, id: u64) -> Result<Vec<u8>, ApplyError> {
        let path = self.path.display().to_string();
        let Some(Kind::Dgram(Reply { sock, .. })) = &self.kind else {
            return Err(ApplyError::Door {
                path,
                detail: "no reply: the reply socket was bound again".into(),
            });
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = sock.recv(&mut buf).map_err(|e| ApplyError::Door {
                path: path.clone(),
                detail: format!("no reply: {e}"),
            })?;
            let v: Value = serde_json::from_slice(&buf[..n]).unwrap_or(Value::Null);
            match v.get("id").and_then(Value::as_u64) {
                Some(got) if got == id => return Ok(buf[..n].to_vec()),
                Some(got) if got > id && got < self.next_id => {
                    self.early.insert(got, buf[..n].to_vec());
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ApplyError::Door {
                    path,
                    detail: "no reply".into(),
                });
            }
        }
    }
}

/// sersync.apply's faults that name the record that failed
/// (ser-module/sersync_rpc.c): 422 "Record N refused: why" (never
/// appliable here as it is) and 500 "Apply failed at record N: why".
fn record_failure(code: Option<i64>, msg: &str) -> Option<ApplyError> {
    let (refused, rest) = match code {
        Some(422) => (true, msg.strip_prefix("Record ")?),
        Some(500) => (false, msg.strip_prefix("Apply failed at record ")?),
        _ => return None,
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let index = rest[..digits].parse().ok()?;
    let reason = rest[digits..]
        .trim_start_matches(" refused")
        .trim_start_matches(':')
        .trim();
    Some(ApplyError::Record {
        index,
        refused,
        reason: if reason.is_empty() {
            "SER could not apply it (see SER's log)".into()
        } else {
            reason.to_string()
        },
    })
}

fn read_until_eof(f: &mut std::fs::File, timeout: Duration) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut got_writer = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ));
        }
        let _ = os::poll_readable(f.as_fd(), left.min(Duration::from_secs(1)));
        match f.read(&mut buf) {
            Ok(0) if got_writer || !out.is_empty() => return Ok(out),
            // No writer yet: Linux reports EOF before the first writer.
            Ok(0) => std::thread::sleep(Duration::from_millis(1)),
            Ok(n) => {
                got_writer = true;
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => got_writer = true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The check's view of SER: `sersync.digest` and `sersync.digest_range`
/// (ser-module/sersync_rpc.c), which walk usrloc inside SER.
impl SerView for Door {
    fn digest(&mut self, now: i64) -> Result<SerDigest, ApplyError> {
        let v = self.rpc("sersync.digest", vec![Value::from(now)])?;
        let text = v.get("digest").and_then(Value::as_str).unwrap_or("");
        let digest = proof::decode_digest(text)
            .map_err(|e| ApplyError::Rejected(format!("sersync.digest: {e}")))?;
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(SerDigest {
            digest,
            contacts: n("count"),
            walk_us: n("walk_us"),
            max_lock_us: n("max_lock_us"),
        })
    }

    fn hashes_in(&mut self, ranges: &[usize], now: i64) -> Result<Vec<u64>, ApplyError> {
        self.pages(&Want::Hashes(ranges.to_vec()), now, proof::decode_hashes)
    }

    fn pick(&mut self, hashes: &HashSet<u64>, now: i64) -> Result<Vec<Contact>, ApplyError> {
        let all: Vec<u64> = hashes.iter().copied().collect();
        let mut out = Vec::new();
        for chunk in all.chunks(proof::PICK_MAX) {
            let want = Want::Pick(chunk.iter().copied().collect());
            out.extend(self.pages(&want, now, proof::decode_contacts)?);
        }
        Ok(out)
    }

    fn alias_digest(&mut self) -> Result<Option<(Vec<u8>, Digest)>, ApplyError> {
        let v = match self.rpc("sersync.alias_digest", vec![]) {
            Err(ApplyError::Rejected(msg)) if msg.contains("not replicated on this node") => {
                return Ok(None)
            }
            r => r?,
        };
        let text = v.get("digest").and_then(Value::as_str).unwrap_or("");
        let digest = proof::decode_digest(text)
            .map_err(|e| ApplyError::Rejected(format!("sersync.alias_digest: {e}")))?;
        let table = v.get("table").and_then(Value::as_str).unwrap_or("");
        Ok(Some((table.as_bytes().to_vec(), digest)))
    }

    fn aliases_in(&mut self, ranges: &[usize]) -> Result<Vec<Alias>, ApplyError> {
        let now = (crate::hlc::wall_ms() / 1000) as i64;
        self.pages_of(
            "sersync.alias_digest",
            &Want::Contacts(ranges.to_vec()),
            now,
            proof::decode_aliases,
        )
    }
}

impl Door {
    /// Every page of `method` (`sersync.digest_range`, `sersync.alias_digest`)
    /// for `want` (SER keeps the
    /// walk between the pages of one request).
    fn pages<T>(
        &mut self,
        want: &Want,
        now: i64,
        decode: fn(&str) -> Result<Vec<T>, String>,
    ) -> Result<Vec<T>, ApplyError> {
        self.pages_of("sersync.digest_range", want, now, decode)
    }

    fn pages_of<T>(
        &mut self,
        method: &str,
        want: &Want,
        now: i64,
        decode: fn(&str) -> Result<Vec<T>, String>,
    ) -> Result<Vec<T>, ApplyError> {
        let arg = want.text();
        let mut out = Vec::new();
        let mut skip = 0u64;
        loop {
            let v = self.rpc(
                method,
                vec![
                    Value::from(arg.clone()),
                    Value::from(now),
                    Value::from(skip),
                ],
            )?;
            let text = v.get("contacts").and_then(Value::as_str).unwrap_or("");
            out.extend(decode(text).map_err(|e| ApplyError::Rejected(format!("{method}: {e}")))?);
            match v.get("next").and_then(Value::as_u64) {
                Some(n) if n > skip => skip = n,
                _ => return Ok(out),
            }
        }
    }
}

impl Sink for Door {
    fn ser_view(&mut self) -> Option<&mut dyn SerView> {
        Some(self)
    }

    /// Requests of at most the door's size, in order, up to
    /// [`DGRAM_IN_FLIGHT`] of them in flight on the datagram door (one on
    /// the FIFO). On a failure, the records before it are applied; those
    /// after it may be too (requests already sent), which applying them
    /// again does not change.
    fn apply(&mut self, records: &[(u64, Record)]) -> Result<(), ApplyError> {
        let max = self.request_max()?;
        let window = match self.kind()? {
            Kind::Fifo => 1,
            Kind::Dgram(_) => DGRAM_IN_FLIGHT,
        };
        // JSON wrapper, token, id and reply name stay well under this.
        let budget = max - 300;
        self.early.clear();
        // (request id, first record, end, travels alone)
        let mut in_flight: VecDeque<(u64, usize, usize, bool)> = VecDeque::new();
        let mut start = 0;
        let mut too_large = None;
        loop {
            while start < records.len()
                && too_large.is_none()
                && in_flight.len() < window
                && !in_flight.back().is_some_and(|r| r.3)
            {
                let (end, size) = request_end(records, start, budget);
                if size > budget {
                    too_large = Some(ApplyError::Record {
                        index: start,
                        refused: true,
                        reason: format!(
                            "a record of {size} bytes exceeds the door's {max}-byte requests"
                        ),
                    });
                    break;
                }
                let alone = records[start..end]
                    .iter()
                    .any(|(_, r)| matches!(r, Record::Alias { .. }));
                if alone && !in_flight.is_empty() {
                    break;
                }
                let id = self.start_apply(&records[start..end])?;
                in_flight.push_back((id, start, end, alone));
                start = end;
            }
            let Some((id, first, end, _)) = in_flight.pop_front() else {
                break;
            };
            let n = match self.finish(id) {
                Err(ApplyError::Record {
                    index,
                    refused,
                    reason,
                }) => {
                    return Err(ApplyError::Record {
                        index: first + index,
                        refused,
                        reason,
                    })
                }
                other => other?.as_u64().unwrap_or(0),
            };
            if n != (end - first) as u64 {
                return Err(ApplyError::Rejected(format!(
                    "applied {n} of {}",
                    end - first
                )));
            }
        }
        match too_large {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The end of the request that starts at record `start` and its payload
/// size: as many records as fit `budget` bytes, at least one.
fn request_end(records: &[(u64, Record)], start: usize, budget: usize) -> (usize, usize) {
    let mut end = start;
    let mut size = 8;
    while end < records.len() {
        let n = payload::encoded_len(&records[end]);
        if end > start && size + n > budget {
            break;
        }
        size += n;
        end += 1;
    }
    (end, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Alias, Contact, Op};

    #[test]
    fn faults_naming_a_record_are_read() {
        let e = record_failure(
            Some(422),
            "Record 3 refused: usrloc table 'aliases' is not registered on this node",
        );
        assert!(
            matches!(&e, Some(ApplyError::Record { index: 3, refused: true, reason })
                if reason == "usrloc table 'aliases' is not registered on this node"),
            "{e:?}"
        );
        let e = record_failure(Some(500), "Apply failed at record 0");
        assert!(
            matches!(
                &e,
                Some(ApplyError::Record {
                    index: 0,
                    refused: false,
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(record_failure(Some(500), "Apply failed (rc 2) after 1 record(s)").is_none());
        assert!(record_failure(Some(400), "Record 1 refused: x").is_none());
    }

    /// A stand-in for jsonrpcs' datagram door: answers every request with
    /// result 1, to the address it came from; as many requests as asked.
    fn fake_door(path: &Path, requests: usize) -> std::thread::JoinHandle<()> {
        let sock = UnixDatagram::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            for _ in 0..requests {
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                let v: Value = serde_json::from_slice(&buf[..n]).unwrap();
                let reply = serde_json::json!({"jsonrpc": "2.0", "result": 1, "id": v["id"]});
                let to = from.as_pathname().unwrap().to_path_buf();
                // a reply to a removed socket file is lost, as with SER
                let _ = sock.send_to(reply.to_string().as_bytes(), to);
            }
        })
    }

    fn one() -> Vec<(u64, Record)> {
        vec![(
            1,
            Record::Alias {
                op: Op::Upsert,
                alias: Alias {
                    table: b"dbaliases".to_vec(),
                    ..Default::default()
                },
            },
        )]
    }

    fn sockets(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("sersync_apply_")
            })
            .count()
    }

    /// A datagram door that lets requests queue up (`pause` between
    /// reads), answers each with the number of records it carried (or,
    /// for request `fail`, 1-based, "Apply failed at record 3"), and
    /// returns how many requests it found queued at each read.
    fn queueing_door(
        path: &Path,
        requests: usize,
        fail: usize,
    ) -> std::thread::JoinHandle<Vec<usize>> {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut seen = 0;
            let mut queued = Vec::new();
            while seen < requests {
                std::thread::sleep(Duration::from_millis(30));
                let mut got = Vec::new();
                while let Ok((n, from)) = sock.recv_from(&mut buf) {
                    got.push((buf[..n].to_vec(), from.as_pathname().unwrap().to_path_buf()));
                }
                queued.push(got.len());
                for (req, to) in got {
                    seen += 1;
                    let v: Value = serde_json::from_slice(&req).unwrap();
                    let text = v["params"][1].as_str().unwrap();
                    let n = payload::decode(text.as_bytes()).unwrap().len();
                    let reply = if seen == fail {
                        serde_json::json!({"jsonrpc": "2.0", "id": v["id"],
                            "error": {"code": 500, "message": "Apply failed at record 3"}})
                    } else {
                        serde_json::json!({"jsonrpc": "2.0", "result": n, "id": v["id"]})
                    };
                    sock.send_to(reply.to_string().as_bytes(), to).unwrap();
                }
            }
            queued
        })
    }

    /// 30 contacts of about 2 KiB each: several requests of the datagram
    /// door's size.
    fn bulky(n: usize, alias_at: Option<usize>) -> Vec<(u64, Record)> {
        (0..n)
            .map(|i| {
                let rec = if Some(i) == alias_at {
                    one().remove(0).1
                } else {
                    Record::Contact {
                        op: Op::Upsert,
                        contact: Contact {
                            aor: format!("user{i}").into_bytes(),
                            user_agent: vec![b'x'; 2000],
                            ..Default::default()
                        },
                    }
                };
                (i as u64 + 1, rec)
            })
            .collect()
    }

    #[test]
    fn requests_are_kept_in_flight_and_a_failure_names_its_record() {
        let run = tempfile::tempdir().unwrap();
        let path = run.path().join("rpc.sock");
        let records = bulky(120, None);
        let (per_request, _) = request_end(&records, 0, DGRAM_REQUEST_MAX - 300);
        let requests = records.len().div_ceil(per_request);
        assert!(requests >= 4, "{requests} requests");
        let server = queueing_door(&path, requests, 0);
        let mut door = Door::new(&path, run.path(), run.path(), "t");
        door.apply(&records).unwrap();
        let queued = server.join().unwrap();
        assert_eq!(queued.iter().sum::<usize>(), requests);
        assert!(
            queued.contains(&DGRAM_IN_FLIGHT),
            "SER never found {DGRAM_IN_FLIGHT} requests waiting: {queued:?}"
        );
        assert!(queued.iter().all(|&q| q <= DGRAM_IN_FLIGHT), "{queued:?}");

        // The second request fails at its fourth record: that record is
        // named, whatever else was in flight (the first three requests,
        // then a fourth sent once the first was answered).
        let path = run.path().join("rpc2.sock");
        let server = queueing_door(&path, DGRAM_IN_FLIGHT + 1, 2);
        let mut door = Door::new(&path, run.path(), run.path(), "u");
        let e = door.apply(&records).unwrap_err();
        assert!(
            matches!(e, ApplyError::Record { index, refused: false, .. } if index == per_request + 3),
            "{e:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_request_carrying_an_alias_travels_alone() {
        let run = tempfile::tempdir().unwrap();
        let path = run.path().join("rpc.sock");
        // The alias falls in the third request.
        let probe = bulky(120, None);
        let (per_request, _) = request_end(&probe, 0, DGRAM_REQUEST_MAX - 300);
        let records = bulky(120, Some(2 * per_request + 1));
        let mut ends = vec![];
        let mut start = 0;
        while start < records.len() {
            start = request_end(&records, start, DGRAM_REQUEST_MAX - 300).0;
            ends.push(start);
        }
        let server = queueing_door(&path, ends.len(), 0);
        let mut door = Door::new(&path, run.path(), run.path(), "t");
        door.apply(&records).unwrap();
        let queued = server.join().unwrap();
        // requests 1 and 2 together, the alias's alone, then the rest
        assert_eq!(&queued[..2], &[2, 1], "{queued:?}");
    }

    #[test]
    fn the_reply_socket_is_bound_again_when_its_file_is_removed() {
        let run = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = run.path().join("rpc.sock");
        let server = fake_door(&path, 2);
        let mut door = Door::new(&path, tmp.path(), run.path(), "t");
        door.apply(&one()).unwrap();
        assert_eq!((sockets(run.path()), sockets(tmp.path())), (1, 0));
        let Some(Kind::Dgram(reply)) = &door.kind else {
            panic!("not a datagram door")
        };
        std::fs::remove_file(&reply.path).unwrap();
        door.apply(&one()).unwrap();
        assert_eq!(sockets(run.path()), 1);
        server.join().unwrap();
        drop(door);
        assert_eq!(sockets(run.path()), 0, "removed on drop");
    }

    #[test]
    fn a_runtime_dir_that_cannot_take_it_falls_back_to_fifo_reply_dir() {
        let doors = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = doors.path().join("rpc.sock");
        let server = fake_door(&path, 1);
        let mut door = Door::new(&path, tmp.path(), &doors.path().join("missing"), "t");
        door.apply(&one()).unwrap();
        assert_eq!(sockets(tmp.path()), 1);
        server.join().unwrap();
    }
}
