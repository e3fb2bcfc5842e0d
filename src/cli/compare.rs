//! `capra compare SYNC [TABLE ...] [--truth DB] [--repair] [--json]`: what
//! differs between the databases of a sync, and the repair through the
//! daemon's runs.

use std::time::{Duration, Instant};

use super::Ctx;
use crate::catalog::runs;
use crate::compare::{self, Report, Request, TableResult};
use crate::error::{Context, Error, Result};

/// Keys printed per kind and table before `... and N more`.
const SHOWN: usize = 20;

/// How long a repair waits for the run that applies it.
const REPAIR_WAIT: Duration = Duration::from_secs(600);

/// Runs the command; exit status 0 when identical (after the repair, if
/// asked), 1 when differences remain, 2 on bad usage or an error.
pub fn run(ctx: &Ctx, req: &Request, repair: bool) -> Result<()> {
    match compare_and_repair(ctx, req, repair) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Exit(1)),
        Err(e) => {
            super::report(&e, ctx.verbose);
            Err(Error::Exit(2))
        }
    }
}

/// Whether everything is identical in the end.
fn compare_and_repair(ctx: &Ctx, req: &Request, repair: bool) -> Result<bool> {
    let mut cat = ctx.catalog()?;
    if repair {
        compare::repairable(&mut cat.client, req)?;
    }
    if repair && runs::daemon(&mut cat.client)?.is_none() {
        return Err(Error::Rejected(
            "capra is not running, so no run can apply a repair; start it (capra start), then compare again with --repair"
                .into(),
        ));
    }
    let found = compare::compare(&mut cat.client, &cat.installation.clone(), req)?;
    if !repair || found.identical {
        compare::record(&mut cat.client, &found)?;
        print(ctx, &found, None);
        return Ok(found.identical);
    }
    let logged = compare::log_repairs(&mut cat.client, req, &found)?;
    tracing::info!("logged {logged} key(s) on \"{}\" to repair", found.truth);
    kick_and_wait(&mut cat.client, &req.sync)?;
    let after = compare::recheck(&mut cat.client, &cat.installation.clone(), req, &found)?;
    compare::record(&mut cat.client, &after)?;
    print(ctx, &after, Some(&found));
    Ok(after.identical)
}

/// Kicks the sync and waits for its run; an error when the run failed.
fn kick_and_wait(c: &mut postgres::Client, sync: &str) -> Result<()> {
    let id = runs::request_kick(c, sync)?;
    c.batch_execute(&format!("NOTIFY {}, 'kick'", runs::CONTROL_CHANNEL))
        .ctx(|| "kicking the repair's run".into())?;
    let start = Instant::now();
    loop {
        if let Some((ok, error)) = runs::kick_result(c, id)? {
            if ok {
                return Ok(());
            }
            return Err(Error::Rejected(format!(
                "the run applying the repair failed: {}; the keys stay logged and the next good run applies them (see: capra status {sync})",
                error.unwrap_or_else(|| "unknown error".into())
            )));
        }
        if start.elapsed() >= REPAIR_WAIT {
            return Err(Error::Rejected(format!(
                "the run applying the repair did not finish within {} s; it keeps going (see: capra status {sync})",
                REPAIR_WAIT.as_secs()
            )));
        }
        if runs::daemon(c)?.is_none() {
            return Err(Error::Rejected(
                "the capra daemon stopped before the repair ran; the keys stay logged: start it (capra start) and compare again".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Prints the outcome: text blocks per table and database that differ,
/// or one JSON document. `before`: what the compare found before a repair.
fn print(ctx: &Ctx, r: &Report, before: Option<&Report>) {
    if ctx.json {
        let mut doc = serde_json::json!({
            "sync": r.sync,
            "truth": r.truth,
            "identical": r.identical,
            "tables": r.tables.iter().map(table_json).collect::<Vec<_>>(),
            "bytes_received": r.bytes,
        });
        if let Some(b) = before {
            doc["found"] = serde_json::json!(b.differences());
            doc["repaired"] = serde_json::json!(r.repaired.unwrap_or(0));
        }
        println!("{doc}");
        return;
    }
    if let Some(b) = before {
        for t in &b.tables {
            block(ctx, t);
        }
        ctx.say(format!("repaired {} rows", r.repaired.unwrap_or(0)));
        if !r.identical {
            ctx.say("still different after the repair:");
        }
    }
    if before.is_none() || !r.identical {
        for t in &r.tables {
            block(ctx, t);
        }
    }
    let (tables, dbs) = before.unwrap_or(r).counts();
    let n = r.differences();
    let end = if n == 0 {
        "identical".to_string()
    } else {
        format!("{n} difference{}", if n == 1 { "" } else { "s" })
    };
    println!(
        "compare {}: {tables} table{} on {dbs} database{}, {end}",
        r.sync,
        if tables == 1 { "" } else { "s" },
        if dbs == 1 { "" } else { "s" }
    );
}

/// One table's block (nothing when it is equal and nothing is in flight).
fn block(ctx: &Ctx, t: &TableResult) {
    if t.differences() > 0 {
        ctx.say(format!(
            "{} on {}: {} missing, {} extra, {} different",
            crate::pg::ident::show_qualified(&t.table),
            t.db,
            t.missing.len(),
            t.extra.len(),
            t.different.len()
        ));
        if t.unapplied > 0 {
            ctx.say(format!(
                "  ({} of them changed on a source and the sync cannot apply them now: no daemon runs, the sync is inactive or failing, or it set this table aside; see capra status)",
                t.unapplied
            ));
        }
        for (kind, keys) in [
            ("missing ", &t.missing),
            ("extra   ", &t.extra),
            ("different", &t.different),
        ] {
            for k in keys.iter().take(SHOWN) {
                ctx.say(format!("  {kind} ({})=({})", t.keycols.join(", "), k.join(", ")));
            }
            if keys.len() > SHOWN {
                ctx.say(format!("  ... and {} more", keys.len() - SHOWN));
            }
        }
    }
    if !t.in_flight.is_empty() {
        ctx.say(format!(
            "{} on {}: {} key{} still changing (not applied yet by the sync), not counted",
            crate::pg::ident::show_qualified(&t.table),
            t.db,
            t.in_flight.len(),
            if t.in_flight.len() == 1 { "" } else { "s" }
        ));
    }
}

/// A table's entry of the JSON document; keys as objects of column texts.
fn table_json(t: &TableResult) -> serde_json::Value {
    let keys = |ks: &[Vec<String>]| -> Vec<serde_json::Value> {
        ks.iter()
            .map(|k| {
                let m: serde_json::Map<String, serde_json::Value> = t
                    .keycols
                    .iter()
                    .zip(k)
                    .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                serde_json::Value::Object(m)
            })
            .collect()
    };
    serde_json::json!({
        "table": t.table,
        "db": t.db,
        "rows": t.rows,
        "missing": keys(&t.missing),
        "extra": keys(&t.extra),
        "different": keys(&t.different),
        "in_flight": keys(&t.in_flight),
        "unapplied": t.unapplied,
    })
}

/// `capra kick SYNC... --dry-run [--json]`: the next run of each sync,
/// previewed without writing.
pub fn dry_run(ctx: &Ctx, words: &[String]) -> Result<()> {
    let names = super::strip_noise(words);
    if names.is_empty() || names.iter().any(|n| n.parse::<u64>().is_ok()) {
        return Err(Error::Usage(
            "usage: capra kick SYNC... --dry-run (no timeout: nothing runs)".into(),
        ));
    }
    let mut cat = ctx.catalog()?;
    let installation = cat.installation.clone();
    let mut docs = Vec::new();
    for n in &names {
        let req = Request {
            sync: n.clone(),
            ..Request::default()
        };
        let p = compare::preview(&mut cat.client, &installation, &req)?;
        if ctx.json {
            docs.push(serde_json::to_value(&p).unwrap_or_default());
        } else {
            print_preview(ctx, &p);
        }
    }
    if ctx.json {
        let doc = if docs.len() == 1 {
            docs.remove(0)
        } else {
            serde_json::Value::Array(docs)
        };
        println!("{doc}");
    }
    Ok(())
}

/// The text form of a preview.
fn print_preview(ctx: &Ctx, p: &compare::Preview) {
    ctx.say(format!(
        "Dry run of sync {}: what its next run would do (nothing is written)",
        p.sync
    ));
    let (mut rows, mut copies, mut dbs) = (0u64, 0usize, std::collections::BTreeSet::new());
    for t in &p.tables {
        if let Some(why) = &t.full_copy {
            ctx.say(format!(
                "  {} on {}: full copy of {} rows ({why})",
                crate::pg::ident::show_qualified(&t.table),
                t.db,
                t.inserts
            ));
            copies += 1;
            dbs.insert(t.db.as_str());
            continue;
        }
        if t.inserts + t.updates + t.deletes + t.unchanged == 0 && !t.truncate && !t.partition_truncated {
            continue;
        }
        let trunc = if t.truncate {
            "TRUNCATE, then "
        } else if t.partition_truncated {
            "rows of a truncated or dropped partition deleted, then "
        } else {
            ""
        };
        ctx.say(format!(
            "  {} on {}: {trunc}{} insert(s), {} update(s), {} delete(s) ({} unchanged)",
            crate::pg::ident::show_qualified(&t.table),
            t.db,
            t.inserts,
            t.updates,
            t.deletes,
            t.unchanged
        ));
        rows += t.inserts + t.updates + t.deletes;
        dbs.insert(t.db.as_str());
    }
    for c in &p.conflicts {
        let who: Vec<String> = c
            .contenders
            .iter()
            .map(|x| {
                let at =
                    x.at.and_then(|a| chrono::DateTime::from_timestamp_micros((a * 1e6) as i64))
                        .map(|d| d.with_timezone(&chrono::Local).format("%H:%M:%S%.3f").to_string())
                        .unwrap_or_else(|| "?".into());
                format!("{} at {at}", x.db)
            })
            .collect();
        let cols = p.keycols.get(&c.table).cloned().unwrap_or_default();
        ctx.say(format!(
            "  conflict on {} ({})=({}): {}; winner {} ({})",
            crate::pg::ident::show_qualified(&c.table),
            cols.join(", "),
            c.key.join(", "),
            who.join(" vs "),
            c.winner,
            c.reason
        ));
    }
    ctx.say(format!(
        "sync {}: {rows} row(s) to write on {} database(s), {copies} full cop{}, {} conflict(s)",
        p.sync,
        dbs.len(),
        if copies == 1 { "y" } else { "ies" },
        p.conflicts.len()
    ));
}
