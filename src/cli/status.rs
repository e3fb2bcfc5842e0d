//! `capra status`, `capra delta`, `capra purge`.

use std::collections::BTreeMap;

use postgres::GenericClient;
use serde_json::{json, Value};

use super::Ctx;
use crate::capture::{install, purge};
use crate::catalog::plan::SyncPlan;
use crate::catalog::{model, runs};
use crate::domain::{DbStatus, OneTimeCopy, Role, Status};
use crate::error::{Error, Result};

use crate::notify::report::{age, status_table, sync_status, SyncStatus};

/// `capra status [SYNC...]`.
pub fn status(ctx: &Ctx, names: &[String]) -> Result<()> {
    let names = super::strip_noise(names);
    let mut cat = ctx.catalog()?;
    let daemon = runs::daemon(&mut cat.client)?;
    let all = model::syncs(&mut cat.client)?;
    if names.is_empty() {
        return overview(ctx, &mut cat.client, daemon.as_ref(), &all);
    }
    let list: Vec<&model::Sync> = if names.iter().any(|n| n == "all") {
        all.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            v.push(
                all.iter()
                    .find(|s| &s.name == n)
                    .ok_or_else(|| Error::not_found_hint("sync", n.clone(), "see: capra list syncs"))?,
            );
        }
        v
    };
    let mut docs = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let d = Detail::load(&mut cat.client, &cat.installation, s, daemon.is_some())?;
        if ctx.json {
            docs.push(d.json(s));
            continue;
        }
        if i > 0 {
            println!();
        }
        print_detail(s, &d);
    }
    if ctx.json {
        let v = if docs.len() == 1 {
            docs.pop().unwrap_or_default()
        } else {
            Value::Array(docs)
        };
        println!("{v:#}");
    }
    Ok(())
}

/// `capra status` without names: the daemon, its scheduled jobs and the
/// table of every sync.
fn overview(ctx: &Ctx, c: &mut postgres::Client, daemon: Option<&runs::DaemonInfo>, all: &[model::Sync]) -> Result<()> {
    let mut rows = Vec::new();
    for s in all {
        rows.push(sync_status(c, s, daemon.is_some())?);
    }
    let members = runs::daemons(c)?;
    if ctx.json {
        let d = daemon.map(|d| json!({"pid": d.pid, "host": d.host, "started": d.started, "log": d.logdest}));
        println!("{:#}", json!({"daemon": d, "daemons": members, "syncs": rows}));
        return Ok(());
    }
    let leader = members.iter().find(|m| m.role == "leader");
    match (daemon, leader) {
        (Some(d), Some(l)) => println!(
            "PID of capra daemon: {} (host {}, since {}), leader, lease left {:.0}s",
            d.pid,
            d.host,
            d.started,
            l.lease_left.unwrap_or(0.0).max(0.0)
        ),
        (Some(d), None) => println!("PID of capra daemon: {} (host {}, since {})", d.pid, d.host, d.started),
        (None, _) if !members.is_empty() => {
            println!("capra daemon: no leader right now (a standby takes over within ha_lease)")
        }
        (None, _) => println!("capra daemon: not running (start it with capra start)"),
    }
    for m in members.iter().filter(|m| m.role != "leader") {
        println!("Standby capra daemon: {} (host {}, since {})", m.pid, m.host, m.since);
    }
    print_scheduled_jobs(c)?;
    if rows.is_empty() {
        println!("No syncs have been created yet.");
        return Ok(());
    }
    print!("{}", status_table(&rows));
    let fresh = runs::origins(c, None)?;
    if !fresh.is_empty() {
        println!("Imported syncs (until their first good run):");
        for (name, o) in fresh {
            println!("  {name}: imported from {o}");
        }
    }
    Ok(())
}

/// The daemon's own scheduled jobs, when set: when each runs next.
fn print_scheduled_jobs(c: &mut postgres::Client) -> Result<()> {
    for (setting, what) in [
        ("purge_schedule", "purge"),
        ("status_report_schedule", "status report mail"),
        ("tailmail_schedule", "tailmail"),
    ] {
        let spec = model::setting(c, setting)?;
        if spec.trim().is_empty()
            || (setting == "tailmail_schedule" && model::setting(c, "tailmail_config")?.is_empty())
        {
            continue;
        }
        if let Some(at) = crate::schedule::cron::Schedule::parse(&spec)
            .ok()
            .and_then(|s| s.next_after(&chrono::Local::now()))
        {
            println!("Next {what}: {} ({spec})", at.format("%Y-%m-%d %H:%M:%S"));
        }
    }
    Ok(())
}

/// Everything `capra status SYNC` shows about one sync.
struct Detail {
    st: SyncStatus,
    plan: SyncPlan,
    pending: Vec<Value>,
    next: Option<String>,
    behind: Vec<(String, String)>,
    mm: Option<runs::MultiMaster>,
    compared: Option<runs::LastCompare>,
    origin: Option<String>,
}

impl Detail {
    /// Reads the sync's state, plan, pending changes and, for a
    /// multi-master sync, its conflicts.
    fn load(c: &mut postgres::Client, installation: &str, s: &model::Sync, daemon_up: bool) -> Result<Detail> {
        let st = sync_status(c, s, daemon_up)?;
        let plan = SyncPlan::load(c, &s.name)?;
        let pending = pending_for(installation, &plan);
        let next = next_run(c, s, &st)?;
        let behind = runs::targets_behind(c, &s.name)?;
        let mm = if plan.sources.len() > 1 {
            let strategy = match &s.conflict_strategy {
                Some(x) => x.to_string(),
                None => format!(
                    "{} (default_conflict_strategy)",
                    crate::catalog::model::setting(c, "default_conflict_strategy")?
                ),
            };
            Some(runs::multi_master(c, &s.name, strategy)?)
        } else {
            None
        };
        let compared = runs::last_compare(c, &s.name)?;
        let origin = runs::origins(c, Some(&s.name))?.pop().map(|(_, o)| o);
        Ok(Detail {
            st,
            plan,
            pending,
            next,
            behind,
            mm,
            compared,
            origin,
        })
    }

    /// The `--json` document.
    fn json(&self, s: &model::Sync) -> Value {
        let behind: Vec<Value> = self.behind.iter().map(|(d, t)| json!({"db": d, "since": t})).collect();
        json!({"status": self.st, "sync": s, "pending": self.pending, "next_run": self.next,
            "tables": self.plan.tables.len() + self.plan.sequences.len(), "targets_behind": behind,
            "multi_master": self.mm, "last_compare": self.compared, "imported_from": self.origin})
    }
}

/// Pending changes per source: (db, rows, oldest seconds) or the error.
fn pending_for(installation: &str, plan: &SyncPlan) -> Vec<Value> {
    if !plan.is_delta() {
        return Vec::new();
    }
    plan.sources
        .iter()
        .map(|src| {
            match src
                .connect()
                .and_then(|mut s| purge::waiting(&mut s, installation, &[plan.name().to_string()]))
            {
                Ok(w) => {
                    let p = purge::pending_by_sync(&w).remove(plan.name()).unwrap_or_default();
                    json!({"db": src.name, "rows": p.rows, "oldest_secs": p.oldest_secs})
                }
                Err(e) => json!({"db": src.name, "error": crate::pg::error::flatten(&e.to_string())}),
            }
        })
        .collect()
}

fn next_run(c: &mut impl GenericClient, s: &model::Sync, st: &SyncStatus) -> Result<Option<String>> {
    if let Some(r) = &st.next_retry {
        return Ok(Some(format!("{r} (retry after {} failure(s))", st.failures)));
    }
    if let Some(sch) = &s.schedule {
        if let Ok(p) = crate::schedule::cron::Schedule::parse(sch) {
            if let Some(t) = p.next_after(&chrono::Local::now()) {
                return Ok(Some(format!("{} (schedule {sch})", t.format("%b %d, %Y %H:%M:%S"))));
            }
        }
    }
    if s.checktime.is_some() {
        return Ok(runs::checktime_due(c, &s.name)?.map(|t| format!("{t} at the latest (checktime)")));
    }
    Ok(None)
}

fn yes(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// Label and value lines of the detail block.
type Rows = Vec<(String, String)>;

fn print_detail(s: &model::Sync, d: &Detail) {
    let mut rows: Rows = Vec::new();
    last_run_rows(&mut rows, &d.st);
    settings_rows(&mut rows, s, &d.st, &d.plan);
    if let Some(o) = &d.origin {
        rows.push(("Imported from".into(), o.clone()));
    }
    // Beyond Bucardo: what a DBA asks next.
    database_rows(&mut rows, &d.plan, &d.behind);
    if let Some(mm) = &d.mm {
        multi_master_rows(&mut rows, s, mm);
    }
    pending_rows(&mut rows, &d.pending);
    rows.push((
        "Last compare".into(),
        d.compared
            .as_ref()
            .map(|c| c.line())
            .unwrap_or_else(|| "never (capra compare SYNC)".into()),
    ));
    if let Some(sch) = &s.schedule {
        rows.push(("Schedule".into(), sch.clone()));
    }
    rows.push((
        "Next run".into(),
        d.next.clone().unwrap_or_else(|| {
            if s.autokick {
                "when a change commits, or when kicked".into()
            } else {
                "when kicked".into()
            }
        }),
    ));
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let rule = "=".repeat(70);
    println!("{rule}");
    for (k, v) in rows {
        println!("{}", format!("{k:<w$} : {v}").trim_end());
    }
    println!("{rule}");
}

/// The last good run (with its row counts) and the last bad one.
fn last_run_rows(rows: &mut Rows, st: &SyncStatus) {
    if let Some(g) = &st.last_good {
        rows.push((
            "Last good".into(),
            format!("{} (time to run: {})", g.started, age(g.seconds.round())),
        ));
        let mut label = "Rows deleted/inserted".to_string();
        let mut val = format!("{} / {}", g.deletes, g.inserts);
        if g.truncates > 0 {
            label.push_str("/truncates");
            val.push_str(&format!(" / {}", g.truncates));
        }
        if g.conflicts > 0 {
            label.push_str("/conflicts");
            val.push_str(&format!(" / {}", g.conflicts));
        }
        rows.push((label, val));
    }
    if let Some(b) = &st.last_bad {
        rows.push((
            "Last bad".into(),
            format!("{} (time until fail: {})", b.started, age(b.seconds.round())),
        ));
    }
}

/// The sync's own settings, in Bucardo's order, and its last error.
fn settings_rows(rows: &mut Rows, s: &model::Sync, st: &SyncStatus, plan: &SyncPlan) {
    let src = plan
        .sources
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    rows.push(("Sync name".into(), s.name.clone()));
    rows.push(("Current state".into(), st.state.to_string()));
    rows.push(("Source relgroup/database".into(), format!("{} / {src}", s.relgroup)));
    rows.push((
        "Tables in sync".into(),
        (plan.tables.len() + plan.sequences.len()).to_string(),
    ));
    rows.push((
        "Status".into(),
        if s.status == Status::Active {
            "Active".into()
        } else {
            "Inactive".into()
        },
    ));
    rows.push((
        "Check time".into(),
        s.checktime.clone().unwrap_or_else(|| "None".into()),
    ));
    rows.push(("Overdue time".into(), s.overdue.clone()));
    rows.push(("Expired time".into(), s.expired.clone()));
    rows.push((
        "Stayalive/Kidsalive".into(),
        format!("{} / {}", yes(s.stayalive), yes(s.kidsalive)),
    ));
    rows.push(("Rebuild index".into(), yes(s.rebuild_index == 1).into()));
    rows.push(("Autokick".into(), yes(s.autokick).into()));
    rows.push((
        "Onetimecopy".into(),
        match s.onetimecopy {
            OneTimeCopy::Off => "No".into(),
            n => format!("Yes ({n})"),
        },
    ));
    if s.analyze_after_copy {
        rows.push(("Post-copy analyze".into(), "Yes".into()));
    }
    if s.vacuum_after_copy {
        rows.push(("Post-copy vacuum".into(), "Yes".into()));
    }
    let failing = st.last_bad.as_ref().filter(|_| st.failures > 0);
    rows.push((
        "Last error:".into(),
        failing.and_then(|b| b.error.clone()).unwrap_or_default(),
    ));
    if let Some(k) = failing.and_then(|b| b.kind) {
        rows.push(("Error kind".into(), format!("{} ({})", k.as_str(), k.advice())));
    }
    // Tables the last good run set aside: the rest of the sync works.
    for (i, f) in st.last_good.iter().flat_map(|g| &g.failed_tables).enumerate() {
        let label = if i == 0 { "Tables set aside" } else { "" };
        rows.push((label.into(), f.clone()));
    }
}

/// The databases with their roles, and the targets that fell behind.
fn database_rows(rows: &mut Rows, plan: &SyncPlan, behind: &[(String, String)]) {
    let dbs: Vec<String> = plan
        .sources
        .iter()
        .map(|d| format!("{}:{}", d.name, Role::Source))
        .chain(plan.targets.iter().map(|d| format!("{}:{}", d.name, Role::Target)))
        .chain(plan.fullcopy.iter().map(|d| format!("{}:{}", d.name, Role::Fullcopy)))
        .chain(plan.skipped.iter().map(|d| format!("{d}:{}", DbStatus::Inactive)))
        .collect();
    rows.push(("Databases".into(), dbs.join(" ")));
    if !behind.is_empty() {
        let list: Vec<String> = behind.iter().map(|(d, t)| format!("{d} (since {t})")).collect();
        rows.push((
            "Targets behind".into(),
            format!("{}; a full copy at the first run that includes them", list.join(", ")),
        ));
    }
}

/// A multi-master sync's strategy, recent conflicts and clock skew.
fn multi_master_rows(rows: &mut Rows, s: &model::Sync, mm: &runs::MultiMaster) {
    rows.push(("Conflict strategy".into(), mm.strategy.clone()));
    rows.push((
        "Conflicts (24 hours)".into(),
        match &mm.last_conflict {
            Some(t) => format!("{}, the last at {t} (capra conflicts {})", mm.conflicts_24h, s.name),
            None => "0".into(),
        },
    ));
    if let Some(o) = mm.clock_skew_ms.as_object() {
        let v: Vec<String> = o
            .iter()
            .map(|(db, ms)| format!("{db} {:+.1} ms", ms.as_f64().unwrap_or(0.0)))
            .collect();
        rows.push(("Clock skew (last run)".into(), v.join(", ")));
    }
}

/// Change rows waiting per source, and the oldest one's age (the lag).
fn pending_rows(rows: &mut Rows, pending: &[Value]) {
    let per_source: Vec<String> = pending
        .iter()
        .map(|p| {
            let db = p["db"].as_str().unwrap_or("?");
            match p.get("error") {
                Some(e) => format!("{db}: unknown ({})", e.as_str().unwrap_or("?")),
                None => {
                    let n = p["rows"].as_i64().unwrap_or(0);
                    match p["oldest_secs"].as_f64() {
                        Some(o) if n > 0 => format!("{db}: {n} change row(s), oldest {} ago", age(o)),
                        _ => format!("{db}: 0 (up to date)"),
                    }
                }
            }
        })
        .collect();
    if !per_source.is_empty() {
        rows.push(("Pending changes".into(), per_source.join("; ")));
    }
    if let Some(lag) = pending
        .iter()
        .filter_map(|p| p["oldest_secs"].as_f64())
        .reduce(f64::max)
    {
        rows.push(("Lag".into(), age(lag)));
    }
}

/// The source databases of this installation's delta syncs (optionally only those named).
fn sources(c: &mut postgres::Client, only: &[String]) -> Result<BTreeMap<String, model::Db>> {
    let mut out = BTreeMap::new();
    for s in model::syncs(c)? {
        let plan = SyncPlan::load(c, &s.name)?;
        if !plan.is_delta() {
            continue;
        }
        for d in plan.sources {
            if only.is_empty() || only.contains(&d.name) {
                out.insert(d.name.clone(), d);
            }
        }
    }
    for n in only {
        if !out.contains_key(n) {
            if model::db(c, n)?.is_none() {
                return Err(Error::not_found_hint("database", n.clone(), "see: capra list dbs"));
            }
            return Err(Error::Rejected(format!(
                "database \"{n}\" is not the source of any delta sync"
            )));
        }
    }
    Ok(out)
}

/// `capra delta [DB...]`: change rows waiting, per source and table.
pub fn delta(ctx: &Ctx, dbs: &[String]) -> Result<()> {
    let mut cat = ctx.catalog()?;
    let srcs = sources(&mut cat.client, dbs)?;
    let mut total = 0i64;
    let mut unknown = 0usize;
    let mut doc = Vec::new();
    for (name, db) in &srcs {
        let w = match db
            .connect()
            .and_then(|mut c| purge::waiting(&mut c, &cat.installation, &[]))
        {
            Ok(w) => w,
            Err(e) => {
                if ctx.json {
                    doc.push(json!({"db": name, "error": crate::pg::error::flatten(&e.to_string())}));
                } else {
                    println!(
                        "Database {name}: unknown ({})",
                        crate::pg::error::flatten(&e.to_string())
                    );
                }
                unknown += 1;
                continue;
            }
        };
        let sum: i64 = w.iter().map(|x| x.rows).sum();
        total += sum;
        if ctx.json {
            doc.push(json!({"db": name, "total": sum, "tables": w}));
            continue;
        }
        println!("Database {name}:");
        let shown: Vec<String> = w.iter().map(|x| crate::pg::ident::show_qualified(&x.table)).collect();
        let tw = shown.iter().map(|t| t.len()).max().unwrap_or(0);
        for (x, table) in w.iter().zip(&shown).filter(|(x, _)| x.rows > 0 || ctx.verbose > 0) {
            let oldest = x
                .oldest_secs
                .map(|o| format!(", oldest {} ago", age(o)))
                .unwrap_or_default();
            println!("  {table:<tw$}  {:>8}  (sync {}{oldest})", x.rows, x.sync);
        }
        println!("  Total deltas for database {name}: {sum}");
    }
    // A source that did not answer makes the total a floor, not a count:
    // a script waiting for 0 must not read it as "all applied".
    if ctx.json {
        let total = if unknown == 0 { json!(total) } else { json!(null) };
        println!("{:#}", json!({"total": total, "databases": doc}));
    } else if unknown == 0 {
        println!("Total deltas across all targets: {total}");
    } else {
        println!(
            "Total deltas across all targets: unknown ({unknown} database(s) did not answer; {total} on the others)"
        );
    }
    if unknown > 0 {
        return Err(Error::Exit(1));
    }
    Ok(())
}

/// `capra purge [--older-than INTERVAL]`: delete applied change rows now,
/// and capture left behind by syncs that no longer exist.
pub fn purge_cmd(ctx: &Ctx, older_than: Option<&str>) -> Result<()> {
    let mut cat = ctx.catalog()?;
    if let Some(iv) = older_than {
        model::check_interval(&mut cat.client, iv).map_err(|_| {
            Error::Usage(format!(
                "invalid value for --older-than: {iv:?} (an interval such as '10 minutes')"
            ))
        })?;
    }
    let known: Vec<String> = model::syncs(&mut cat.client)?.into_iter().map(|s| s.name).collect();
    let srcs = sources(&mut cat.client, &[])?;
    for (name, db) in &srcs {
        let mut c = match db.connect() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("capra: {name}: skipped: {}", crate::pg::error::flatten(&e.to_string()));
                continue;
            }
        };
        // Consumers of this installation whose sync is gone pin rows forever.
        for o in &purge::orphans(&mut c, &cat.installation, &known)? {
            install::detach_consumer(&mut c, &cat.installation, o)?;
            ctx.say(format!("{name}: removed capture left by removed sync \"{o}\""));
        }
        let p = purge::purge(&mut c, older_than)?;
        ctx.say(format!(
            "{name}: purged {} replicated change rows from {} table(s)",
            p.rows, p.tables
        ));
    }
    if srcs.is_empty() {
        ctx.say("No source databases with change capture.");
    }
    Ok(())
}
