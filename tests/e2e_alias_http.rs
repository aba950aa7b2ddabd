//! The web applications' alias API over HTTP (issue 13, "RPC"): a port
//! served by `sersync_alias_http()` (README, "Aliases over HTTP") takes
//! the `sersync.alias_*` RPCs and nothing else. Over real HTTP on
//! loopback (a plain client on `std::net::TcpStream`): `alias_add`
//! replicates; `core.kill`, `sersync.forget`, `sersync.apply` and requests
//! dressed up to slip past the check are refused, the node keeps running
//! and nothing changes.
//!
//! Addresses 127.0.0.221–222 only.

#[path = "e2e_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// The alias API's port on each node (beside the test's JSON-RPC on 8080).
const ALIAS_PORT: u16 = 8081;

/// The nodes' template with the README's recipe: one more HTTP port,
/// served by sersync_alias_http() only.
fn template() -> PathBuf {
    let t = std::fs::read_to_string(e2e_dir().join("kamailio.cfg.in")).expect("template");
    let listen = "listen=tcp:@IP@:8080\n";
    let route = "event_route[xhttp:request] {\n";
    assert!(t.contains(listen) && t.contains(route), "template changed");
    let t = t
        .replace(
            listen,
            &format!(
                "{listen}# the alias API for web applications\nlisten=tcp:@IP@:{ALIAS_PORT}\n"
            ),
        )
        .replace(
            route,
            &format!(
                "{route}\tif ($Rp == {ALIAS_PORT}) {{\n\t\tsersync_alias_http();\n\t\texit;\n\t}}\n"
            ),
        );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e");
    std::fs::create_dir_all(&dir).expect("template dir");
    let p = dir.join(format!("alias-http-{}.cfg.in", std::process::id()));
    std::fs::write(&p, t).expect("writing the template");
    p
}

/// One HTTP POST of `body` to ip:port/path, as a web application makes
/// it: the status code and the body of the reply.
fn post(ip: &str, port: u16, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect((ip, port)).unwrap_or_else(|e| panic!("{ip}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "POST /alias HTTP/1.1\r\nHost: {ip}:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("sending the request");
    let mut reply = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 8192];
    // xhttp keeps the connection open: read until the announced length
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the reply: {e}"),
        }
        let text = String::from_utf8_lossy(&reply);
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if reply.len() >= h + 4 + len {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no whole reply");
    }
    let text = String::from_utf8_lossy(&reply).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (code, body.to_string())
}

fn rpc_body(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 7}).to_string()
}

#[test]
fn the_alias_port_serves_alias_rpcs_only() {
    let opts = ClusterOptions {
        template: Some(template()),
        ..Default::default()
    };
    let c = Cluster::start_with_options("alias-http", 221, 2, &opts);
    let (n1, n2) = (c.node(1), c.node(2));
    c.wait_mesh_up(Duration::from_secs(30));

    // alias_add through the alias port: applied here, replicated to n2
    let (code, body) = post(
        &n1.ip,
        ALIAS_PORT,
        &rpc_body(
            "sersync.alias_add",
            json!(["sip:sales@example.com", "sip:alice@example.com"]),
        ),
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!((code, &v["result"]), (200, &json!(1)), "alias_add: {body}");
    let (code, body) = post(
        &n1.ip,
        ALIAS_PORT,
        &rpc_body("sersync.alias_list", json!([])),
    );
    assert!(
        code == 200 && body.contains("sales@example.com"),
        "{code} {body}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !n2
        .rpc("sersync.alias_list", json!([]))
        .expect("alias_list on n2")
        .to_string()
        .contains("sales@example.com")
    {
        assert!(Instant::now() < deadline, "the alias never reached n2");
        std::thread::sleep(Duration::from_millis(200));
    }

    let peers_before = n1.status().peers.len();
    let token = n1.apply_token();
    // (request body, what it tries)
    let refused: Vec<(String, &str)> = vec![
        (rpc_body("core.kill", json!([])), "core.kill"),
        (rpc_body("core.kill", json!([9])), "core.kill 9"),
        (rpc_body("sersync.forget", json!(["n2"])), "sersync.forget"),
        (
            rpc_body("sersync.apply", json!([token, "AAAA"])),
            "sersync.apply, even with the token",
        ),
        (rpc_body("sersync.status", json!([])), "sersync.status"),
        (rpc_body("system.listMethods", json!([])), "listing methods"),
        (rpc_body("Sersync.Alias_add", json!([])), "another case"),
        (rpc_body("sersync.alias_", json!([])), "the bare prefix"),
        (rpc_body("sersync.alias_addx", json!([])), "a longer name"),
        (
            r#"{"jsonrpc":"2.0","method":"sersync.alias_list","METHOD":"core.kill","id":1}"#
                .to_string(),
            "two method members",
        ),
        (
            r#"{"jsonrpc":"2.0","METHOD":"core.kill","method":"sersync.alias_list","id":1}"#
                .to_string(),
            "two method members, the other order",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"core\u002ekill","id":1}"#.to_string(),
            "an escaped name",
        ),
        (format!("[{}]", rpc_body("core.kill", json!([]))), "a batch"),
        ("core.kill".to_string(), "not JSON"),
        (
            r#"{"jsonrpc":"2.0","method":["core.kill"],"id":1}"#.to_string(),
            "a method that is no string",
        ),
    ];
    for (body, what) in &refused {
        let (code, reply) = post(&n1.ip, ALIAS_PORT, body);
        let v: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|e| panic!("{what}: reply not JSON ({e}): {reply}"));
        assert!(
            (code == 403 || code == 400) && v["error"]["code"].as_i64().is_some_and(|c| c < 0),
            "{what}: not refused: {code} {reply}"
        );
        assert!(n1.is_running(), "{what}: the node stopped");
        eprintln!("e2e: {what}: refused, {code} {}", v["error"]["message"]);
    }
    // still running and serving, nothing forgotten, a log line each
    let st = n1.status();
    assert_eq!(st.peers.len(), peers_before, "{st:?}");
    assert!(
        n1.rpc("sersync.peers", json!([]))
            .expect("sersync.peers")
            .to_string()
            .contains("\"n2\""),
        "n2 forgotten"
    );
    assert!(n1.is_running() && n2.is_running());
    let logged = count_log(n1, &["alias HTTP API"]);
    assert!(
        logged >= refused.len(),
        "{logged} log lines for {} refusals",
        refused.len()
    );
    // The same node, over the test's JSON-RPC door on 8080 (jsonrpc_dispatch
    // for every method): the refusals above are the alias port's doing.
    let v = n1
        .http_rpc("sersync.status", json!([]))
        .expect("status on 8080");
    assert!(v["node_id"] == "n1", "{v}");
}
