//! The module's reference (doc/sersync.md) against the code it documents:
//! every modparam, script function, RPC command, field of an RPC reply
//! and statistic the C module exports has its entry, every parameter's
//! stated default is the one in the code, and every link inside the
//! document, and into README.md, lands on a heading. Adding one of those
//! without documenting it fails here, naming what is missing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn doc() -> String {
    read("doc/sersync.md")
}

/// The C sources of the module, (file name, text).
fn module_sources() -> Vec<(String, String)> {
    let dir = root().join("ser-module");
    let mut out: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    out.sort();
    out
}

/// C string literals of `src` in order: (start, end past the closing
/// quote, text unescaped only as far as names need: a backslash keeps the
/// next character). Comments are skipped.
fn literals(src: &str) -> Vec<(usize, usize, String)> {
    let b = src.as_bytes();
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = src[i..].find('\n').map_or(b.len(), |e| i + e);
            }
            b'\'' => {
                // a character literal: '"' must not open a string
                i += if b.get(i + 1) == Some(&b'\\') { 4 } else { 3 };
            }
            b'"' => {
                let start = i;
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    s.push(b[i] as char);
                    i += 1;
                }
                i += 1;
                out.push((start, i, s));
            }
            _ => i += 1,
        }
    }
    out
}

/// The text of the initializer list `decl = { ... };` of `src`.
fn table<'a>(src: &'a str, decl: &str) -> &'a str {
    let at = src
        .find(decl)
        .unwrap_or_else(|| panic!("no `{decl}` in the module's source"));
    let rest = &src[at..];
    let open = rest.find('{').unwrap();
    let end = rest.find("};").unwrap();
    &rest[open + 1..end]
}

/// The names of a C export table: the first string of each row.
fn export_names(rows: &str) -> Vec<String> {
    let mut names = Vec::new();
    for row in rows.split("\n\t{").skip(1) {
        if let Some((_, _, s)) = literals(row).into_iter().next() {
            names.push(s);
        }
    }
    names
}

/// The Markdown headings of `text`, as written (without the #s).
fn headings(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(line.trim_start_matches('#').trim().to_string());
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than
/// '-' and '_' dropped, spaces as '-'.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The section of `text` under the heading that starts with `prefix`, up
/// to the next heading of any level.
fn section<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let start = text.match_indices("\n#").map(|(i, _)| i + 1).find(|&i| {
        text[i..]
            .trim_start_matches('#')
            .trim_start()
            .starts_with(prefix)
    })?;
    let body = &text[start..];
    let body_start = body.find('\n').map_or(body.len(), |n| n + 1);
    let end = body[body_start..]
        .find("\n#")
        .map_or(body.len(), |e| body_start + e);
    Some(&body[..end])
}

/// The chapter `## title` of `text`, its subsections included.
fn chapter<'a>(text: &'a str, title: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("doc/sersync.md has no chapter \"## {title}\""));
    let end = text[start + 1..]
        .find("\n## ")
        .map_or(text.len(), |e| start + 1 + e);
    &text[start..end]
}

/// (name, C variable or None for a function param) of every modparam.
fn modparams() -> Vec<(String, Option<String>)> {
    let src = read("ser-module/sersync_mod.c");
    let rows = table(&src, "param_export_t params[] =");
    rows.split("\n\t{")
        .skip(1)
        .filter_map(|row| {
            let (_, _, name) = literals(row).into_iter().next()?;
            let var = row
                .split('&')
                .nth(1)
                .map(|v| v.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '_'))
                .map(|v| v.split('}').next().unwrap().trim().to_string());
            Some((name, var))
        })
        .collect()
}

#[test]
fn every_modparam_has_a_section_with_its_default() {
    let doc = doc();
    let src = read("ser-module/sersync_mod.c");
    let params = modparams();
    assert!(params.len() >= 20, "params[] not read: {params:?}");
    let mut missing = Vec::new();
    for (name, var) in &params {
        let Some(sec) = headings(&doc)
            .iter()
            .find(|h| h.split_whitespace().nth(1) == Some(name.as_str()) && h.starts_with("3."))
            .and_then(|h| section(&doc, h))
        else {
            missing.push(format!("no section \"### 3.N. {name} (type)\""));
            continue;
        };
        if !sec.contains(&format!("modparam(\"sersync\", \"{name}\"")) {
            missing.push(format!("{name}: no example modparam line"));
        }
        let Some(default_line) = sec.lines().find(|l| l.starts_with("Default:")) else {
            missing.push(format!("{name}: no \"Default:\" line"));
            continue;
        };
        // The C initializer, where there is a plain one.
        let Some(var) = var else { continue };
        let Some(init) = src.lines().find_map(|l| {
            let l = l.trim();
            let (lhs, rhs) = l.split_once(" = ")?;
            (lhs.split_whitespace().last()? == var).then(|| rhs.trim_end_matches(';').to_string())
        }) else {
            continue;
        };
        let want = if let Some(s) = init.strip_prefix("str_init(\"") {
            s.trim_end_matches("\")").to_string()
        } else if init.chars().all(|c| c.is_ascii_digit()) {
            init.clone()
        } else {
            continue; // STR_NULL: documented in words
        };
        let first_code = default_line.split('`').nth(1);
        if first_code != Some(want.as_str()) {
            missing.push(format!(
                "{name}: the code's default is {want}, the document says {default_line:?}"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "doc/sersync.md:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_function_rpc_and_statistic_is_documented() {
    let doc = doc();
    let heads = headings(&doc);
    let mut missing = Vec::new();
    let mut rpcs = BTreeSet::new();
    let mut functions = BTreeSet::new();
    for (file, src) in module_sources() {
        if src.contains("cmd_export_t cmds[] =") {
            functions.extend(export_names(table(&src, "cmd_export_t cmds[] =")));
        }
        let mut from = 0;
        while let Some(at) = src[from..].find("rpc_export_t ") {
            let at = from + at;
            from = at + 1;
            let line = src[at..].lines().next().unwrap();
            if line.contains("[] =") {
                let names = export_names(table(&src[at..], "="));
                assert!(!names.is_empty(), "{file}: an empty RPC table?");
                rpcs.extend(names);
            }
        }
    }
    assert!(rpcs.len() >= 16, "RPC tables not read: {rpcs:?}");
    assert!(!functions.is_empty(), "cmds[] not read");
    for f in &functions {
        if !heads
            .iter()
            .any(|h| h.starts_with("4.") && h.contains(&format!("{f}(")))
        {
            missing.push(format!("function {f}(): no heading \"### 4.N. {f}(...)\""));
        }
    }
    for r in &rpcs {
        let named = heads
            .iter()
            .any(|h| h.starts_with("5.") && h.split([' ', ',']).any(|w| w == r.as_str()));
        if !named {
            missing.push(format!("RPC {r}: no heading \"### 5.N. {r} ...\""));
        }
    }
    let stats_src = read("ser-module/sersync_stats.c");
    let stats: Vec<&str> = stats_src
        .split("SERSYNC_STAT_ROW(")
        .skip(2) // the macro's definition
        .map(|s| s.split(')').next().unwrap())
        .collect();
    assert!(stats.len() >= 20, "statistics not read: {stats:?}");
    let stats_section = chapter(&doc, "6. Statistics");
    for s in stats {
        if !stats_section.contains(&format!("| `{s}` |")) {
            missing.push(format!(
                "statistic {s}: no row \"| `{s}` |\" in 6. Statistics"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "doc/sersync.md:\n{}",
        missing.join("\n")
    );
}

/// The member names of every struct an RPC replies with
/// (`rpc->struct_add(handle, "fmt", "name", value, ...)`).
fn reply_fields(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let lits = literals(src);
    let mut from = 0;
    while let Some(at) = src[from..].find("struct_add(") {
        let open = from + at + "struct_add".len();
        from = open;
        // the call's extent: parentheses outside string literals
        let (mut depth, mut end) = (0i32, open);
        for (i, c) in src[open..].char_indices() {
            let pos = open + i;
            if lits.iter().any(|(s, e, _)| pos > *s && pos < *e) {
                continue;
            }
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = pos;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args: Vec<&String> = lits
            .iter()
            .filter(|(s, _, _)| *s > open && *s < end)
            .map(|(_, _, l)| l)
            .collect();
        // the first is the format ("sdJ…", "[", "{")
        for name in args.into_iter().skip(1) {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.insert(name.clone());
            }
        }
    }
    out
}

#[test]
fn every_field_of_an_rpc_reply_is_documented() {
    let doc = doc();
    let rpc_section = chapter(&doc, "5. RPC commands");
    let mut fields = BTreeSet::new();
    for (_, src) in module_sources() {
        fields.extend(reply_fields(&src));
    }
    for must in ["node_id", "last_error", "lag_ms", "quarantined", "added"] {
        assert!(fields.contains(must), "reply fields not read: {fields:?}");
    }
    let missing: Vec<String> = fields
        .iter()
        .filter(|f| !rpc_section.contains(&format!("`{f}`")))
        .map(|f| format!("RPC reply field {f}: not named (as `{f}`) in 5. RPC commands"))
        .collect();
    assert!(
        missing.is_empty(),
        "doc/sersync.md:\n{}",
        missing.join("\n")
    );
}

/// Targets of Markdown links `](target)` in `text`, outside code.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let t = &rest[i + 2..];
            let end = t.find(')').unwrap_or(t.len());
            out.push(t[..end].to_string());
            rest = &t[end..];
        }
    }
    out
}

fn anchors(text: &str) -> BTreeSet<String> {
    headings(text).iter().map(|h| anchor(h)).collect()
}

#[test]
fn every_link_lands_on_a_heading() {
    let doc = doc();
    let own = anchors(&doc);
    let readme = anchors(&read("README.md"));
    let mut broken = Vec::new();
    let all = links(&doc);
    assert!(all.len() > 40, "links not read: {all:?}");
    for l in all {
        let ok = if let Some(a) = l.strip_prefix('#') {
            own.contains(a)
        } else if let Some(rest) = l.strip_prefix("../README.md") {
            rest.is_empty() || rest.strip_prefix('#').is_some_and(|a| readme.contains(a))
        } else {
            Path::new(&root().join("doc").join(&l)).exists()
        };
        if !ok {
            broken.push(l);
        }
    }
    assert!(
        broken.is_empty(),
        "doc/sersync.md: links to no heading: {broken:?}"
    );
    assert!(
        read("README.md").contains("(doc/sersync.md)"),
        "README.md links to doc/sersync.md"
    );
}

/// The series names of sersync_metrics(): the per-peer and fixed names
/// written as literals, and sersync_<name>[_total] of each node-wide row
/// (`SERSYNC_M(name, counter, help)`).
fn metric_series() -> BTreeSet<String> {
    let src = read("ser-module/sersync_metrics.c");
    let mut out: BTreeSet<String> = literals(&src)
        .into_iter()
        .map(|(_, _, l)| l)
        .filter(|l| {
            l.starts_with("sersync_") && l.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    for row in src.split("SERSYNC_M(").skip(2) {
        let mut args = row.split(',').map(str::trim);
        let (Some(name), Some(counter)) = (args.next(), args.next()) else {
            continue;
        };
        let suffix = if counter == "1" { "_total" } else { "" };
        out.insert(format!("sersync_{name}{suffix}"));
    }
    out
}

#[test]
fn every_metric_series_and_alert_rule_is_documented() {
    let doc = doc();
    let functions = chapter(&doc, "4. Functions");
    let series = metric_series();
    for must in [
        "sersync_peer_lag_seconds",
        "sersync_journaled_total",
        "sersync_last_seq",
    ] {
        assert!(series.contains(must), "series not read: {series:?}");
    }
    let mut missing: Vec<String> = series
        .iter()
        .filter(|s| {
            !functions.contains(&format!("`{s}`")) && !functions.contains(&format!("`{s}{{"))
        })
        .map(|s| format!("series {s}: not named (as `{s}`) under 4. Functions"))
        .collect();
    let rules = read("contrib/prometheus/sersync-alerts.yml");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 8, "alert rules not read: {alerts:?}");
    let watching = chapter(&doc, "10. Watching a cluster");
    for a in alerts {
        if !watching.contains(&format!("`{a}`")) {
            missing.push(format!("alert {a}: not named under 10. Watching a cluster"));
        }
    }
    assert!(
        missing.is_empty(),
        "doc/sersync.md:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_event_route_and_pseudo_variable_is_documented() {
    let doc = doc();
    let events = chapter(&doc, "7. Event routes");
    let mut missing = Vec::new();
    for (file, src) in module_sources() {
        // event_route[NAME]: the names the module looks up
        for (at, _) in src.match_indices("route_lookup(&event_rt,") {
            let Some((_, _, name)) = literals(&src[at..]).into_iter().next() else {
                continue;
            };
            if !events.contains(&format!("event_route[{name}]")) {
                missing.push(format!(
                    "{file}: event_route[{name}] not under 7. Event routes"
                ));
            }
        }
        // $name(...): the pseudo-variables of a pv_export_t table
        if let Some(at) = src.find("pv_export_t ") {
            if src[at..].lines().next().unwrap_or("").contains("[] =") {
                for name in export_names(table(&src[at..], "=")) {
                    if !doc.contains(&format!("`${name}(")) {
                        missing.push(format!(
                            "{file}: pseudo-variable ${name} not documented as `${name}(…)`"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "doc/sersync.md:\n{}",
        missing.join("\n")
    );
}
