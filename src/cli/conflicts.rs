//! `capra conflicts`: the conflict history of multi-master syncs, newest
//! last: when, which sync and table, the key, the competing databases with
//! their change times, the winner and why.

use serde_json::json;

use super::Ctx;
use crate::catalog::runs;
use crate::error::Result;

/// Prints the conflict history (`--since` an interval such as `1 hour`,
/// or a time such as `2026-12-01 10:00`).
pub fn run(ctx: &Ctx, sync: Option<&str>, since: Option<&str>) -> Result<()> {
    let mut cat = ctx.catalog()?;
    if let Some(s) = sync {
        if crate::catalog::model::sync(&mut cat.client, s)?.is_none() {
            return Err(crate::error::Error::not_found_hint("sync", s, "see: capra list syncs"));
        }
    }
    let rows = runs::conflicts(&mut cat.client, sync, since)?;
    if ctx.json {
        let doc: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"time": r.time, "sync": r.sync, "run": r.run, "table": r.table, "key": r.key,
                       "contenders": r.contenders, "winner": r.winner, "reason": r.reason})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "No conflicts{}.",
            sync.map(|s| format!(" for sync {s}")).unwrap_or_default()
        );
        return Ok(());
    }
    for r in &rows {
        println!(
            "{}  {}  {}  ({})  {}  winner: {}  ({})",
            r.time,
            r.sync,
            crate::pg::ident::show_qualified(&r.table),
            key_words(&r.key).join(", "),
            contenders(&r.contenders).join(" vs "),
            r.winner,
            r.reason
        );
    }
    Ok(())
}

/// A conflict's key as `column=value` words.
fn key_words(key: &serde_json::Value) -> Vec<String> {
    key.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The competing databases as `db@time of day` (their change times).
fn contenders(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    let at = c["at"]
                        .as_f64()
                        .and_then(|a| chrono::DateTime::from_timestamp_micros((a * 1e6) as i64))
                        .map(|d| d.with_timezone(&chrono::Local).format("%H:%M:%S%.3f").to_string())
                        .unwrap_or_else(|| "?".into());
                    format!("{}@{at}", c["db"].as_str().unwrap_or("?"))
                })
                .collect()
        })
        .unwrap_or_default()
}
