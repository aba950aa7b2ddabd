//! The engine's floors (README, "Code map"): a module may use modules on
//! its own floor or below, never above. A use that climbs is how basic
//! types ended up upstairs before; this test names the file and the line.

use std::fs;
use std::path::{Path, PathBuf};

/// Top floor first. Every module of src/ must be listed.
const FLOORS: &[&[&str]] = &[
    &["ffi"],
    &["engine"],
    &["ingest", "apply", "scan"],
    &["net", "seed", "restore", "proof"],
    &["journal", "queue", "config", "wire", "handoff", "ser_db"],
    &["error", "log", "status", "resync"],
    &["abi", "codec", "record", "digest", "hlc", "os"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of src/ belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::name` in `line` (use lines and inline paths alike).
fn crate_refs(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `sersync::crate::` cannot occur; skip identifiers ending in "crate".
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[test]
fn no_module_uses_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut climbs = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let Some(mine) = floor(&module) else {
            panic!(
                "{}: module `{module}` is on no floor of tests/layering.rs",
                file.display()
            );
        };
        let text = fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            // Unit tests (a `#[cfg(test)] mod`, at the end by convention)
            // may reach up for what they need.
            if line.trim_start().starts_with("#[cfg(test)]")
                && lines
                    .get(n + 1)
                    .is_some_and(|l| l.trim_start().starts_with("mod "))
            {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in crate_refs(line) {
                match floor(&used) {
                    Some(f) if f < mine => climbs.push(format!(
                        "{}:{}: `{module}` uses `{used}`, a floor above it",
                        file.display(),
                        n + 1
                    )),
                    Some(_) => {}
                    None => climbs.push(format!(
                        "{}:{}: `{used}` is on no floor of tests/layering.rs",
                        file.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(climbs.is_empty(), "uses that climb:\n{}", climbs.join("\n"));
}

#[test]
fn the_floor_check_sees_a_climb() {
    assert_eq!(
        crate_refs("use crate::net::Net; let x = crate::abi::MAX_PEERS;"),
        vec!["net".to_string(), "abi".to_string()]
    );
    assert!(floor("net").unwrap() < floor("journal").unwrap());
}
