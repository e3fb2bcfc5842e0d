//! Turning `postgres::Error` into text a DBA can act on.
//!
//! The crate's `Display` is deliberately terse ("db error", "error connecting
//! to server"); the useful part sits in `as_db_error()` and the source chain.

use std::error::Error as StdError;

/// One line describing a PostgreSQL client error: the server's message with
/// detail and hint, or the chain of causes for connection-level failures.
pub fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" (detail: {d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" (hint: {h})"));
        }
        return flatten(&s);
    }
    let mut parts = vec![e.to_string()];
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = c.source();
    }
    flatten(&parts.join(": "))
}

/// Puts multi-line server messages on one line.
pub fn flatten(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
