//! Bad input against live Kamailio nodes with sersync (issue 6, "Bad
//! input"): what a user checks when garbage reaches a node.
//!
//! Garbage parameters to every sersync RPC: a clear fault (code and what
//! is wrong), and nothing changes (contacts, alias table, journal).
//!
//! Addresses 127.0.0.93–94 only.

#[path = "e2e_support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sersync::record::{Alias, Contact, Op, Record};
use support::*;

/// What must not change when an RPC fails.
#[derive(Debug, PartialEq)]
struct Unchanged {
    contacts: BTreeSet<(String, String)>,
    aliases: BTreeSet<String>,
    journaled: u64,
    last_seq: u64,
    journal_rows: i64,
    peers: Vec<String>,
}

fn unchanged(node: &Node) -> Unchanged {
    let st = node.status();
    let aliases = node
        .rpc("sersync.alias_list", json!([]))
        .expect("sersync.alias_list")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| v.to_string())
        .collect();
    Unchanged {
        contacts: node.contacts().into_keys().collect(),
        aliases,
        journaled: st.journaled,
        last_seq: st.last_seq,
        journal_rows: node
            .journal_int("SELECT (SELECT coalesce(sum(last - first + 1), 0) FROM log_batch) + (SELECT count(*) FROM state)")
            .expect("journal"),
        peers: st
            .peers
            .iter()
            .map(|p| format!("{} {}", p.node_id, p.address))
            .collect(),
    }
}

#[test]
fn garbage_rpc_parameters_get_clear_errors_and_change_nothing() {
    let t0 = Instant::now();
    let c = Cluster::start("bad-rpc", 93, 2);
    eprintln!(
        "e2e: cluster up after {:.1} s (machine lock included)",
        t0.elapsed().as_secs_f64()
    );
    let (n1, n2) = (c.node(1), c.node(2));
    sipp_register(
        n1,
        &(0..5)
            .map(|i| Reg::new(format!("rpc{i}"), 3600))
            .collect::<Vec<_>>(),
        10,
        "rpc-users",
    );
    n1.http_rpc(
        "sersync.alias_add",
        json!(["sip:sales@example.com", "sip:alice@example.com"]),
    )
    .expect("alias_add");
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "initial contacts",
        expect_contacts(5),
    );
    c.wait_settled(Duration::from_secs(30));
    let before1 = unchanged(n1);
    let before2 = unchanged(n2);
    assert_eq!(before1.aliases.len(), 1, "{before1:?}");

    // A valid apply payload, to cut short, and one with a record SER must
    // refuse (a contact without AOR).
    let rec = Record::Contact {
        op: Op::Upsert,
        contact: Contact {
            domain: b"location".to_vec(),
            aor: b"intruder".to_vec(),
            contact: b"sip:intruder@192.0.2.1".to_vec(),
            ruid: b"ruid-intruder".to_vec(),
            expires: unix_now() + 3600,
            ..Default::default()
        },
    };
    let good = sersync::apply::payload::encode(&[(1, rec.clone())]);
    let truncated = good[..good.len() / 2].to_string();
    let truncated_aligned = good[..(good.len() / 2) & !3].to_string();
    let no_aor = sersync::apply::payload::encode(&[(
        1,
        Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: b"location".to_vec(),
                contact: b"sip:nobody@192.0.2.1".to_vec(),
                ruid: b"ruid-nobody".to_vec(),
                ..Default::default()
            },
        },
    )]);
    let unknown_table = sersync::apply::payload::encode(&[(
        1,
        Record::Contact {
            op: Op::Upsert,
            contact: Contact {
                domain: b"no_such_table".to_vec(),
                aor: b"intruder".to_vec(),
                contact: b"sip:intruder@192.0.2.1".to_vec(),
                ruid: b"ruid-intruder2".to_vec(),
                ..Default::default()
            },
        },
    )]);
    let bad_alias = sersync::apply::payload::encode(&[(
        1,
        Record::Alias {
            op: Op::Upsert,
            alias: Alias {
                table: b"dbaliases; DROP TABLE location".to_vec(),
                ..Default::default()
            },
        },
    )]);
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let huge = "x".repeat(3000);
    let binary = "\u{1}\u{2}\u{7f}\u{fffd}\u{0}é\u{202e}";

    // (method, params, code, what the message must say)
    // sersync.apply is the engine's: its token first (SER wrote it for
    // the harness, apply_token_file); without it nothing is read further
    let tk = n1.apply_token();
    let tk = tk.as_str();
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        ("sersync.apply", json!([]), 403, "wrong or missing token"),
        (
            "sersync.apply",
            json!([good]),
            403,
            "wrong or missing token",
        ),
        (
            "sersync.apply",
            json!(["0".repeat(64), good]),
            403,
            "wrong or missing token",
        ),
        (
            "sersync.apply",
            json!([&tk[..63], good]),
            403,
            "wrong or missing token",
        ),
        (
            "sersync.apply",
            json!([{"token": tk}, good]),
            403,
            "wrong or missing token",
        ),
        // status and peers take nothing
        ("sersync.status", json!(["x"]), 400, "takes no parameters"),
        ("sersync.status", json!([1, 2]), 400, "takes no parameters"),
        ("sersync.peers", json!(["n2"]), 400, "takes no parameters"),
        (
            "sersync.peers",
            json!([{"a": 1}]),
            400,
            "takes no parameters",
        ),
        // forget: one known printable node id, not this node
        (
            "sersync.forget",
            json!([]),
            400,
            "Expected one string parameter",
        ),
        (
            "sersync.forget",
            json!(["n2", "n2"]),
            400,
            "Too many parameters",
        ),
        ("sersync.forget", json!([""]), 400, "Empty node_id"),
        (
            "sersync.forget",
            json!([huge]),
            400,
            "at most 63 characters",
        ),
        ("sersync.forget", json!([binary]), 400, "printable ASCII"),
        ("sersync.forget", json!(["n 2"]), 400, "printable ASCII"),
        ("sersync.forget", json!(["n1"]), 400, "is this node"),
        ("sersync.forget", json!(["nobody"]), 404, "not a member"),
        ("sersync.forget", json!([{"id": "n2"}]), 400, "string"),
        ("sersync.forget", json!([["n2"]]), 400, "string"),
        // apply: one base64 payload of a batch this module reads
        (
            "sersync.apply",
            json!([tk]),
            400,
            "Expected one string parameter",
        ),
        (
            "sersync.apply",
            json!([tk, good, good]),
            400,
            "Too many parameters",
        ),
        ("sersync.apply", json!([tk, ""]), 400, "Empty payload"),
        (
            "sersync.apply",
            json!([tk, "not base64 at all!"]),
            400,
            "Malformed payload: not base64",
        ),
        (
            "sersync.apply",
            json!([tk, b64(&noise(300, 7))]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([tk, b64(b"\x01")]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([tk, truncated]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([tk, truncated_aligned]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.apply",
            json!([tk, binary]),
            400,
            "Malformed payload",
        ),
        (
            "sersync.quarantine",
            json!(["x"]),
            400,
            "takes no parameters",
        ),
        (
            "sersync.quarantine_retry",
            json!([]),
            400,
            "Expected one parameter",
        ),
        (
            "sersync.quarantine_retry",
            json!(["-1"]),
            400,
            "Expected all or a number",
        ),
        (
            "sersync.quarantine_retry",
            json!([{"id": 1}]),
            400,
            "Expected one parameter",
        ),
        (
            "sersync.quarantine_drop",
            json!([["all"]]),
            400,
            "Expected one parameter",
        ),
        (
            "sersync.quarantine_drop",
            json!(["all", "all"]),
            400,
            "Too many parameters",
        ),
        (
            "sersync.quarantine_drop",
            json!([1]),
            404,
            "Nothing is quarantined",
        ),
        (
            "sersync.quarantine_drop",
            json!(["all"]),
            404,
            "Nothing is quarantined",
        ),
        // the check's walks
        (
            "sersync.digest",
            json!([1, 2]),
            400,
            "at most one parameter",
        ),
        (
            "sersync.digest_range",
            json!([]),
            400,
            "Expected what to walk",
        ),
        ("sersync.digest_range", json!(["256"]), 400, "Bad argument"),
        (
            "sersync.digest_range",
            json!(["h:1,x"]),
            400,
            "Bad argument",
        ),
        ("sersync.digest_range", json!(["p:zz"]), 400, "Bad argument"),
        (
            "sersync.digest_range",
            json!([format!(
                "p:{}",
                (1..=2501)
                    .map(|i| format!("{i:x}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )]),
            400,
            "Bad argument",
        ),
        (
            "sersync.digest_range",
            json!(["h:1", 0, -1]),
            400,
            "Expected what [now [skip]]",
        ),
        ("sersync.alias_digest", json!(["999"]), 400, "Bad argument"),
        (
            "sersync.alias_digest",
            json!(["1", 0, -5]),
            400,
            "Expected what",
        ),
        ("sersync.apply", json!([tk, huge]), 400, "Malformed payload"),
        (
            "sersync.apply",
            json!([tk, no_aor]),
            422,
            "Record 0 refused: invalid field: no usrloc table, AOR or contact",
        ),
        (
            "sersync.apply",
            json!([tk, unknown_table]),
            422,
            "Record 0 refused: usrloc table 'no_such_table' is not registered",
        ),
        (
            "sersync.apply",
            json!([tk, bad_alias]),
            422,
            "Record 0 refused: invalid field: alias table",
        ),
        (
            "sersync.apply",
            json!([tk, {"payload": good}]),
            400,
            "string",
        ),
        // alias calls (more in tests/e2e_aliases.rs)
        (
            "sersync.alias_add",
            json!([]),
            400,
            "Expected alias_uri target_uri pairs",
        ),
        ("sersync.alias_add", json!([""]), 400, ""),
        ("sersync.alias_add", json!(["", ""]), 400, "Parameter 1"),
        (
            "sersync.alias_add",
            json!([binary, "sip:t@example.org"]),
            400,
            "Parameter 1",
        ),
        (
            "sersync.alias_add",
            json!(["sip:a@example.com", huge]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_add",
            json!(["sip:a@example.com", {"x": 1}]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_add",
            json!(["sip:a@exa mple.com", "sip:t@example.org"]),
            400,
            "",
        ),
        (
            "sersync.alias_replace",
            json!([]),
            400,
            "Expected alias_uri target_uri pairs",
        ),
        (
            "sersync.alias_replace",
            json!(["sip:sales@example.com"]),
            400,
            "",
        ),
        (
            "sersync.alias_replace",
            json!(["sip:sales@example.com", "sip:"]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_replace",
            json!([binary, binary]),
            400,
            "Parameter 1",
        ),
        ("sersync.alias_rm", json!([]), 400, "got 0 parameters"),
        ("sersync.alias_rm", json!([""]), 400, ""),
        ("sersync.alias_rm", json!([huge]), 400, "Parameter 1"),
        (
            "sersync.alias_rm",
            json!(["sip:sales@example.com", [1]]),
            400,
            "Parameter 2",
        ),
        (
            "sersync.alias_rm",
            json!(["sip:sales@example.com\nsip:x@y z w"]),
            400,
            "Line 2",
        ),
        (
            "sersync.alias_list",
            json!(["a", "b"]),
            400,
            "at most one parameter",
        ),
        ("sersync.alias_list", json!([""]), 400, ""),
        ("sersync.alias_list", json!([binary]), 400, "Parameter 1"),
        ("sersync.alias_list", json!([{"a": 1}]), 400, "Parameter 1"),
        (
            "sersync.alias_rescan",
            json!(["now"]),
            400,
            "takes no parameters",
        ),
        (
            "sersync.alias_rescan",
            json!([0]),
            400,
            "takes no parameters",
        ),
        (
            "sersync.alias_rescan_confirm",
            json!(["yes"]),
            400,
            "takes no parameters",
        ),
    ];
    let mut failures = Vec::new();
    for (method, params, code, needle) in &cases {
        let r = n1.http_rpc(method, params.clone());
        let shown: String = params.to_string().chars().take(80).collect();
        match r {
            Ok(v) => failures.push(format!("{method} {shown}: accepted, replied {v}")),
            Err(f) => {
                if f.code != *code || !f.message.contains(needle) || f.message.trim().is_empty() {
                    failures.push(format!(
                        "{method} {shown}: want {code} with {needle:?}, got {} {:?}",
                        f.code, f.message
                    ));
                } else {
                    eprintln!("e2e: {method} {shown}: {} {}", f.code, f.message);
                }
            }
        }
    }
    // The same through kamcmd (binrpc: typed parameters, no JSON).
    for (args, needle) in [
        (&["sersync.status", "x"][..], "takes no parameters"),
        (&["sersync.peers", "1", "2"][..], "takes no parameters"),
        (&["sersync.forget"][..], "Expected one string parameter"),
        (&["sersync.apply", "%%%"][..], "wrong or missing token"),
        (
            &["sersync.alias_list", "a", "b"][..],
            "at most one parameter",
        ),
        (&["sersync.alias_rescan", "x"][..], "takes no parameters"),
        (
            &["sersync.alias_rescan_confirm", "x"][..],
            "takes no parameters",
        ),
    ] {
        match n1.kamcmd(args) {
            Ok(out) => failures.push(format!("kamcmd {args:?}: accepted: {out}")),
            Err(e) if e.contains(needle) => eprintln!("e2e: kamcmd {args:?}: {}", e.trim()),
            Err(e) => failures.push(format!("kamcmd {args:?}: want {needle:?}, got {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} garbage calls not refused clearly:\n{}",
        failures.len(),
        cases.len() + 6,
        failures.join("\n")
    );

    // Nothing changed, here or on the peer, and the node still works.
    sleep(Duration::from_secs(1));
    assert_eq!(unchanged(n1), before1, "node 1 changed after garbage RPCs");
    assert_eq!(unchanged(n2), before2, "node 2 changed after garbage RPCs");
    let st = n1.status();
    assert!(st.running == 1 && st.peers.iter().all(|p| p.state == "up"));
    sipp_register(n1, &[Reg::new("rpc-after", 3600)], 10, "rpc-after");
    wait_converged(
        &c.all(),
        Duration::from_secs(20),
        "after garbage RPCs",
        expect_contacts(6),
    );
}
