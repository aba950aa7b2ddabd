//! JSON-RPC over HTTP (xhttp + jsonrpcs), one kept-alive connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::location_contacts;
use crate::HTTP_PORT;

pub struct Http {
    pub addr: String,
    pub conn: Option<BufReader<TcpStream>>,
    pub id: u64,
}

impl Http {
    pub fn new(ip: &str) -> Http {
        Http {
            addr: format!("{ip}:{HTTP_PORT}"),
            conn: None,
            id: 0,
        }
    }

    /// Ok(Ok(result)) or Ok(Err(error object)); Err: no answer.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Result<Value, Value>, String> {
        match self.try_call(method, &params) {
            Ok(v) => Ok(v),
            Err(_) => {
                self.conn = None;
                self.try_call(method, &params)
            }
        }
    }

    pub fn try_call(
        &mut self,
        method: &str,
        params: &Value,
    ) -> Result<Result<Value, Value>, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("{}: {e}", self.addr))?;
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(Duration::from_secs(10))).ok();
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected");
        self.id += 1;
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": self.id})
            .to_string();
        let req = format!(
            "POST /RPC HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        conn.get_mut()
            .write_all(req.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut len = None;
        let mut line = String::new();
        loop {
            line.clear();
            let k = conn
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            if k == 0 {
                return Err("connection closed".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((h, v)) = l.split_once(':') {
                if h.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let len = len.ok_or("no Content-Length")?;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf)
            .map_err(|e| format!("read body: {e}"))?;
        let v: Value = serde_json::from_slice(&buf).map_err(|e| format!("json: {e}"))?;
        if let Some(e) = v.get("error") {
            return Ok(Err(e.clone()));
        }
        Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null)))
    }

    /// usrloc's live contact count.
    pub fn contacts(&mut self) -> Result<u64, String> {
        let v = self
            .call("stats.get_statistics", json!(["location_contacts"]))?
            .map_err(|e| e.to_string())?;
        location_contacts(&v)
    }

    /// Whether usrloc holds AOR `user`.
    pub fn has(&mut self, user: &str) -> Result<bool, String> {
        Ok(self.call("ul.lookup", json!(["location", user]))?.is_ok())
    }
}

/// Polls the nodes' contact counts every 10 ms until all reach `target`;
/// the time it happened, or the last counts.
pub fn wait_counts(ips: &[String], target: u64, timeout: Duration) -> Result<Instant, Vec<u64>> {
    let mut https: Vec<Http> = ips.iter().map(|ip| Http::new(ip)).collect();
    let mut counts = vec![0; ips.len()];
    let t = Instant::now();
    loop {
        let now = Instant::now();
        for (k, h) in https.iter_mut().enumerate() {
            if counts[k] < target {
                if let Ok(n) = h.contacts() {
                    counts[k] = n;
                }
            }
        }
        if counts.iter().all(|&n| n >= target) {
            return Ok(now);
        }
        if t.elapsed() > timeout {
            return Err(counts);
        }
        sleep(Duration::from_millis(10));
    }
}
