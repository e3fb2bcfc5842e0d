//! The shape of `src/` that keeps it easy to change, checked on every run:
//! modules import only from lower layers, no glob imports, no function
//! longer than 150 lines, no `too_many_arguments` allowance and no lock
//! that a panicked holder would poison for good.

use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may use its own layer and lower ones.
const LAYERS: &[&[&str]] = &[
    &[
        "error", "sys", "logging", "domain", "pg", "config", "schedule", "hooks", "metrics",
    ],
    &["catalog"],
    &["capture"],
    &["apply"],
    &["compare"],
    &["import"],
    &["notify"],
    &["daemon"],
    &["cli"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `.rs` file under `src/`, with its text up to its unit tests.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).expect("src/ is readable") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("a source file");
                let code = match text.find("#[cfg(test)]\nmod tests") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                };
                out.push((p, code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() > 20, "found only {} source files", out.len());
    out
}

/// The top module a file belongs to (`src/apply/run.rs` -> `apply`).
fn top_module(p: &Path) -> String {
    let rel = p
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .expect("under src/");
    let first = rel.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

#[test]
fn modules_import_only_from_lower_layers() {
    let mut bad = Vec::new();
    for (p, code) in sources() {
        let me = top_module(&p);
        let Some(mine) = layer(&me) else { continue };
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let other: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if layer(&other).is_some_and(|l| l > mine) {
                    bad.push(format!("{}:{}: {me} uses {other}", p.display(), n + 1));
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports against the layers:\n{}", bad.join("\n"));
}

#[test]
fn no_glob_imports_and_no_poisoning_locks() {
    let mut bad = Vec::new();
    for (p, code) in sources() {
        for (n, line) in code.lines().enumerate() {
            let t = line.trim();
            if t.starts_with("use ") && t.ends_with("::*;") {
                bad.push(format!("{}:{}: glob import {t}", p.display(), n + 1));
            }
            if t.contains("lock().unwrap()") || t.contains("too_many_arguments") {
                bad.push(format!("{}:{}: {t}", p.display(), n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Lines from each `fn` to its closing brace (strings and comments aside).
fn function_lengths(code: &str) -> Vec<(usize, usize, String)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub(super) "))
            .unwrap_or(t);
        let t = t.strip_prefix("pub ").unwrap_or(t);
        let t = t.strip_prefix("async ").unwrap_or(t);
        let Some(rest) = t.strip_prefix("fn ") else { continue };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let (mut depth, mut started) = (0i32, false);
        for (j, body) in lines.iter().enumerate().skip(i) {
            let code_part = strip_strings(body);
            let code_part = code_part.split("//").next().unwrap_or("");
            for ch in code_part.chars() {
                match ch {
                    '{' => {
                        depth += 1;
                        started = true
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if started && depth == 0 {
                out.push((j - i + 1, i + 1, name.clone()));
                break;
            }
            if !started && code_part.trim_end().ends_with(';') {
                break;
            }
        }
    }
    out
}

/// A line with string and char literals emptied (their braces do not count).
fn strip_strings(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        match (in_str, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => in_str = false,
            (true, _) => {}
            (false, '"') => in_str = true,
            (false, '\'') => {
                // A char literal such as '{' or '\''; lifetimes pass.
                let look: String = chars.clone().take(3).collect();
                if look.starts_with('\\') {
                    chars.nth(2);
                } else if look.chars().nth(1) == Some('\'') {
                    chars.nth(1);
                }
            }
            (false, _) => out.push(c),
        }
    }
    out
}

#[test]
fn functions_stay_short() {
    let mut long = Vec::new();
    let mut over_100 = 0;
    for (p, code) in sources() {
        for (len, line, name) in function_lengths(&code) {
            if len > 100 {
                over_100 += 1;
            }
            if len > 150 {
                long.push(format!("{}:{line}: {name} is {len} lines", p.display()));
            }
        }
    }
    assert!(long.is_empty(), "functions over 150 lines:\n{}", long.join("\n"));
    assert!(over_100 <= 8, "{over_100} functions are over 100 lines (at most 8)");
}

#[test]
fn the_length_counter_counts() {
    let code = "fn a() {\n    let s = \"{\";\n    let c = '{';\n}\nfn b();\n";
    assert_eq!(function_lengths(code), vec![(4, 1, "a".to_string())]);
}
