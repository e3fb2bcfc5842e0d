//! One run of a sync (Bucardo's KID): read the source in one REPEATABLE READ
//! snapshot, find what changed since the sync's consumer snapshot, and on
//! every target delete those keys and stream the current rows with COPY, all
//! tables in one transaction per target with `session_replication_role =
//! replica`. Only after every target committed does the consumer snapshot
//! move forward, in the source transaction. A crash anywhere before that
//! leaves the snapshot where it was: the next run applies the same keys
//! again, and since apply is "delete these keys, copy their current rows",
//! doing it twice gives the same result. Nothing is lost or duplicated.
//!
//! Memory stays bounded: keys come from a portal in chunks of
//! `statement_chunk_size`, rows flow source -> targets through one buffer.
//!
//! With several sources (multi-master) every source is read in its own
//! snapshot and also written, in a second, READ COMMITTED transaction: a
//! key changed on one source goes to every other source and every target;
//! a key changed on two or more is a conflict, settled per row
//! ([`crate::domain::conflict`]). A source receives rows through a staging table:
//! the rows are locked, then its change log is read again, and a key the
//! application changed there after this run's snapshot (a late change) is
//! settled as a conflict too, never silently overwritten. Existing rows
//! are updated in place, so an application UPDATE waiting on capra's lock
//! applies on top of the new row instead of finding it gone. All received
//! data commits first, the positions after: a crash in between makes the
//! next run apply the same keys again, which changes nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use postgres::Transaction;
use serde::Serialize;

use super::copy::pipe;
use super::pools::{Cancel, Pools};
use super::receive::*;
use super::sequences::{apply_sequence, read_sequences, SeqState};
use super::settle::*;
use super::source::*;
use crate::catalog::model::{Db, Relation};
use crate::catalog::plan::SyncPlan;
use crate::domain::conflict::{Record, Strategy};
use crate::domain::{Isolation, OneTimeCopy};
use crate::error::{Context, Error, Result};
use crate::pg::discover;
use crate::pg::ident::quote_ident;
use crate::pg::pool::Conn;

/// What a run needs besides the plan.
pub struct RunEnv<'a> {
    /// Connection pools.
    pub pools: &'a Pools,
    /// This installation (tags the consumer on sources).
    pub installation: &'a str,
    /// Keys per DELETE statement.
    pub chunk: usize,
    /// The snapshot sources are read in.
    pub isolation: Isolation,
    /// How long a run waits for its ACCESS SHARE locks before it gives up
    /// and is retried (milliseconds; `lock_timeout` setting).
    pub lock_timeout_ms: u64,
    /// Cancel handles.
    pub cancel: &'a Cancel,
    /// `default_conflict_strategy`: for tables and syncs that set none.
    pub default_strategy: &'a Strategy,
    /// Conflicts settled (or aborting) in this run, kept even when the run
    /// fails, so an `abort` shows in the conflict history.
    pub conflicts: &'a RefCell<Vec<Record>>,
    /// Lua hooks of this sync, compiled for this run.
    pub hooks: &'a RefCell<crate::hooks::Runner>,
}

/// Per-sync memory kept between runs: table shapes and the sequence values
/// already applied.
#[derive(Default)]
pub struct RunCache {
    pub(super) meta: HashMap<i32, TableMeta>,
    /// Per source: the plan's partitioned tables there (learned once).
    pub(super) partitioned: HashMap<String, Vec<crate::pg::ident::QualName>>,
    /// Per source: the change logs the last run read, locked with the
    /// tables before the next snapshot (a log rewritten after it would
    /// look empty).
    pub(super) logs: HashMap<String, Vec<i32>>,
    pub(super) seqs: HashMap<(i32, String), SeqState>,
    pub(super) last_advance: Option<Instant>,
}

/// Session settings for every transaction a run opens: the text COPY
/// carries means the same on every server whatever its defaults, and no
/// server-side timeout kills a long run in the middle (an idle-in-
/// transaction target waiting for the source's COPY, a long statement).
/// (TimeZone is left alone: a timestamptz copied into a timestamp column
/// keeps its meaning there; keys compared across sources are printed in
/// UTC where they are compared.)
pub(super) const TEXT_FORMATS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; SET LOCAL lc_monetary = 'C'; \
     SET LOCAL statement_timeout = 0";

/// Hashing and sorting a batch of keys in memory instead of on disk (a
/// 100k-key batch spills at the default 4MB and reads 25% slower); never
/// lowers a server's own larger setting.
pub(super) const RUN_MEMORY: &str = "SELECT pg_catalog.set_config('work_mem', '64MB', true) \
     WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem')) < 67108864";

/// How often an idle sync moves its position forward on empty runs.
const IDLE_ADVANCE: std::time::Duration = std::time::Duration::from_secs(30);

impl RunCache {
    /// Forgets table shapes (after a reload or a failed run).
    pub fn forget_shapes(&mut self) {
        self.meta.clear();
        self.partitioned.clear();
        self.logs.clear();
    }
}

#[derive(Clone, Debug)]
pub(super) struct TableMeta {
    /// The source's column names and type oids when this was learned: a
    /// run compares it with the live table and re-learns after DDL.
    pub(super) signature: String,
    /// The key columns the key types below are for.
    pub(super) keycols: Vec<String>,
    /// Quoted column list (non-generated source columns).
    pub(super) cols: String,
    /// The non-key columns among them (unquoted), for in-place updates.
    pub(super) nonkey: Vec<String>,
    /// `ONLY ` for plain tables; nothing for partitioned ones.
    pub(super) only: &'static str,
    /// Per written database: the key columns' types there (for casts).
    pub(super) key_types: HashMap<String, Vec<String>>,
}

/// One table's part of a run.
#[derive(Clone, Debug, Serialize, Default)]
pub struct TableReport {
    /// `schema.name`.
    pub table: String,
    /// Changed keys read from the source.
    pub keys: u64,
    /// Rows deleted on targets (all targets).
    pub deleted: u64,
    /// Rows copied into targets (all targets).
    pub copied: u64,
    /// Targets that got a full copy of this table.
    pub full_copies: Vec<String>,
    /// Whether a source TRUNCATE was replayed.
    pub truncated: bool,
    /// Conflicts settled in this table.
    pub conflicts: u64,
    /// Receivers a TRUNCATE was replayed on.
    #[serde(skip)]
    truncates: u64,
    /// Rows were left for the next run.
    #[serde(skip)]
    again: bool,
}

/// What a run did.
#[derive(Clone, Debug, Serialize, Default)]
pub struct RunReport {
    /// Rows written to targets.
    pub inserts: u64,
    /// Rows deleted from targets.
    pub deletes: u64,
    /// Tables truncated on targets.
    pub truncates: u64,
    /// Multi-source conflicts settled.
    pub conflicts: u64,
    /// Per table, only tables that had work.
    pub tables: Vec<TableReport>,
    /// Sequences whose value or settings were written.
    pub sequences: Vec<String>,
    /// True when there was nothing to do.
    pub empty: bool,
    /// Whether this run performed the sync's onetimecopy.
    pub onetimecopy: bool,
    /// The onetimecopy generation this run served (see migration 3).
    #[serde(skip)]
    pub onetimecopy_gen: Option<i64>,
    /// Targets that were behind and got a full copy in this run.
    pub caught_up: Vec<String>,
    /// Tables copied whole because capture had lost their key (its DDL
    /// follower marks them): capture is rebuilt before the next run.
    pub recaptured: Vec<String>,
    /// Databases skipped because inactive.
    pub skipped: Vec<String>,
    /// Seconds the run took.
    pub seconds: f64,
    /// The isolation the source was read in.
    pub isolation: String,
    /// Per source: its clock minus this host's, in milliseconds, measured
    /// at the start of the run (what `latest` compares depends on it).
    pub clock_skew_ms: BTreeMap<String, f64>,
    /// Per source: whether `latest` used commit timestamps there
    /// (`track_commit_timestamp`) rather than the logged change time.
    pub commit_timestamps: BTreeMap<String, bool>,
    /// Whether a before_* hook skipped this run.
    pub skipped_by_hook: Option<String>,
    /// Rows were left for the next run (the application held them on a
    /// receiving source): run again shortly.
    pub again: bool,
    /// Tables an exception hook had skipped in this run.
    pub skipped_tables: Vec<String>,
}

/// How a target receives a table in this run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Delta,
    Copy,
    /// A source whose table is empty: a copy from the first source, then
    /// this run's changes.
    Seed,
}

/// Calls the hooks of one point; `Some(text)` when one answered with text.
pub(super) fn hook(
    env: &RunEnv<'_>,
    point: &str,
    table: Option<&Relation>,
    fill: &crate::hooks::Fill<'_>,
) -> Result<Option<String>> {
    let tname = table.map(|t| t.name.human());
    let mut h = env.hooks.borrow_mut();
    if !h.has(point, tname.as_deref()) {
        return Ok(None);
    }
    Ok(match h.call(point, tname.as_deref(), fill)? {
        Some((crate::hooks::Answer::Text(s), _)) => Some(s),
        _ => None,
    })
}

/// Runs a sync once.
pub fn run(env: &RunEnv<'_>, plan: &SyncPlan, cache: &mut RunCache) -> Result<RunReport> {
    let started = Instant::now();
    let name = plan.name().to_string();
    if plan.sources.is_empty() {
        return Err(Error::Rejected(format!(
            "sync \"{name}\" has no active source database; add one (capra update dbgroup ...)"
        )));
    }
    let multi = plan.sources.len() > 1;
    let otc = plan.sync.onetimecopy;
    let delta = plan.is_delta();
    // Changes are read when someone receives them.
    let reads = delta && (!plan.targets.is_empty() || multi);
    let mut report = RunReport {
        skipped: plan.skipped.clone(),
        isolation: env.isolation.to_string(),
        ..Default::default()
    };
    for point in ["before_sync", "before_txn"] {
        if let Some(a) = hook(env, point, None, &|_, _| Ok(()))? {
            if a == "skip" {
                report.skipped_by_hook = Some(point.into());
                report.empty = true;
                return Ok(report);
            }
        }
    }

    // --- the sources, each in one snapshot ----------------------------------------
    let mut rconns: Vec<Conn> = Vec::new();
    for s in &plan.sources {
        let mut c = env.pools.get(s)?;
        env.cancel.register(&c)?;
        if reads {
            follow_partitions(&mut c, plan, cache, &s.name)?;
        }
        rconns.push(c);
    }
    let iso = env.isolation.level();
    let mut srcs: Vec<Src<'_>> = Vec::new();
    for (i, c) in rconns.iter_mut().enumerate() {
        let db = plan.sources[i].clone();
        let mut tx = c
            .build_transaction()
            .isolation_level(iso)
            .start()
            .ctx(|| format!("starting the read transaction on \"{}\"", db.name))?;
        // Keys and rows travel as text: make that text mean the same on
        // every server whatever its defaults (ISO dates parse under any
        // DateStyle; floats round-trip exactly). Then take ACCESS SHARE
        // locks on every table the run reads, before the snapshot (neither
        // SET nor LOCK takes it): a table rewritten by ALTER ... TYPE,
        // VACUUM FULL or CLUSTER after the snapshot would otherwise look
        // empty to this run. The locks never block writers; DDL waits at
        // most for the run, the run waits at most lock_timeout for DDL and
        // is then retried.
        let mut setup = format!(
            "{TEXT_FORMATS}; {RUN_MEMORY}; SET LOCAL lock_timeout = {}",
            env.lock_timeout_ms
        );
        if !plan.tables.is_empty() {
            let mut names: Vec<String> = plan.tables.iter().map(|t| t.name.sql()).collect();
            if reads {
                let logs = cache.logs.get(&db.name).cloned().unwrap_or_default();
                names.extend(logs.iter().map(|id| crate::capture::install::delta_table(*id)));
                if !logs.is_empty() {
                    names.push("capra.truncate_log".into());
                }
            }
            setup.push_str(&format!("; LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", ")));
        }
        tx.batch_execute(&setup)
            .ctx(|| format!("locking the tables of sync \"{name}\" on \"{}\"", db.name))?;
        let before = now_epoch();
        let (cur, prev, commit_ts, clock): (String, Option<String>, bool, f64) = if delta {
            let row = tx
                .query_opt(
                    "SELECT txid_current_snapshot()::text, c.snapshot::text,
                            txid_snapshot_xmin(c.snapshot) > txid_snapshot_xmax(txid_current_snapshot()),
                            coalesce(current_setting('track_commit_timestamp', true), 'off') = 'on',
                            extract(epoch FROM clock_timestamp())::float8
                       FROM capra.consumer c
                      WHERE c.installation = $1 AND c.sync = $2 FOR UPDATE",
                    &[&env.installation, &name],
                )
                .ctx(|| format!("reading sync \"{name}\"'s position on \"{}\"", db.name))?;
            match row {
                Some(r) if r.get::<_, bool>(2) && otc != OneTimeCopy::All => {
                    return Err(Error::Rejected(format!(
                        "sync \"{name}\" has applied changes up to transaction {} on \"{}\", but that database is only at {} (restored from a backup, or a different server?); its change log cannot be trusted: run 'capra update sync {name} onetimecopy=1' for a full copy, after which the sync follows the database from now on",
                        r.get::<_, String>(1).split(':').next().unwrap_or("?"),
                        db.name,
                        r.get::<_, String>(0).split(':').nth(1).unwrap_or("?"),
                    )))
                }
                Some(r) => (r.get(0), Some(r.get(1)), r.get(3), r.get(4)),
                None => {
                    return Err(Error::Rejected(format!(
                        "change capture for sync \"{name}\" is not installed on \"{}\"; run: capra activate {name}",
                        db.name
                    )))
                }
            }
        } else {
            let r = tx
                .query_one(
                    "SELECT txid_current_snapshot()::text, extract(epoch FROM clock_timestamp())::float8",
                    &[],
                )
                .ctx(|| format!("reading a snapshot on \"{}\"", db.name))?;
            (r.get(0), None, false, r.get(1))
        };
        let skew = (clock - (before + now_epoch()) / 2.0) * 1000.0;
        report
            .clock_skew_ms
            .insert(db.name.clone(), (skew * 10.0).round() / 10.0);
        report.commit_timestamps.insert(db.name.clone(), commit_ts);
        let prev_lit = match &prev {
            Some(p) => Some(snapshot_literal(p)?),
            None => None,
        };
        // This sync's own makedelta writes here are not this database's
        // changes; keys it logged again keep their logged time.
        let own = if makedelta_any(plan, &db.name) {
            format!(
                " AND NOT EXISTS (SELECT 1 FROM capra.applied a WHERE a.installation = {} AND a.sync = {} AND a.txid = d.txid AND a.kind = 'm')",
                crate::capture::install::sql_literal(env.installation),
                crate::capture::install::sql_literal(&name)
            )
        } else {
            String::new()
        };
        let reraised: Vec<i64> = if delta && commit_ts {
            tx.query(
                "SELECT txid FROM capra.applied WHERE installation = $1 AND sync = $2 AND kind = 'r'",
                &[&env.installation, &name],
            )
            .ctx(|| format!("reading what sync \"{name}\" logged again on \"{}\"", db.name))?
            .iter()
            .map(|r| r.get(0))
            .collect()
        } else {
            Vec::new()
        };
        srcs.push(Src {
            db,
            tx,
            cur,
            prev_lit,
            own,
            reraised,
            inst: env.installation.to_string(),
            sync: name.clone(),
            commit_ts,
            captured: HashMap::new(),
            changed: BTreeSet::new(),
            truncated: BTreeSet::new(),
            parts_truncated: BTreeSet::new(),
            recopy: BTreeSet::new(),
            recv: None,
        });
    }
    if multi {
        for (db, ms) in &report.clock_skew_ms {
            if ms.abs() >= 500.0 {
                tracing::warn!(
                    "The clock of \"{db}\" is {:.0} ms {} this host's; conflict strategy latest compares change times from each server's own clock",
                    ms.abs(),
                    if *ms > 0.0 { "ahead of" } else { "behind" }
                );
            }
        }
    }
    if let Some(a) = hook(env, "before_check_rows", None, &|_, _| Ok(()))? {
        if a == "skip" {
            report.skipped_by_hook = Some("before_check_rows".into());
            report.empty = true;
            return Ok(report);
        }
    }

    // --- which tables changed on each source --------------------------------------
    if reads {
        for s in srcs.iter_mut() {
            scan(env, plan, cache, &name, s)?;
        }
    }

    // Sequences go from the first source to targets and fullcopy databases.
    let seq_src = read_sequences(&mut srcs[0].tx, &plan.sequences)?;
    let written: Vec<&Db> = plan.targets.iter().chain(&plan.fullcopy).collect();
    let seq_dirty: Vec<usize> = (0..plan.sequences.len())
        .filter(|i| {
            written
                .iter()
                .any(|d| cache.seqs.get(&(plan.sequences[*i].id, d.name.clone())) != Some(&seq_src[*i]))
        })
        .collect();

    let nothing = srcs.iter().all(|s| !s.touched_any())
        && plan.fullcopy.is_empty()
        && plan.behind.is_empty()
        && otc == OneTimeCopy::Off
        && seq_dirty.is_empty();
    if nothing {
        // Nothing changed between the stored positions and these snapshots,
        // so moving the positions forward skips nothing; doing it now and
        // then keeps an idle sync from holding back purges.
        if reads && cache.last_advance.is_none_or(|t| t.elapsed() >= IDLE_ADVANCE) {
            for s in srcs {
                let mut tx = s.tx;
                tx.execute(
                    "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, updated = now()
                      WHERE installation = $1 AND sync = $2",
                    &[&env.installation, &name, &s.cur],
                )
                .ctx(|| format!("recording sync \"{name}\"'s position on \"{}\"", s.db.name))?;
                tx.commit().ctx(|| format!("committing on \"{}\"", s.db.name))?;
            }
            cache.last_advance = Some(Instant::now());
        }
        report.empty = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // --- the receiving databases -------------------------------------------------
    let mut wdbs: Vec<(Db, Recv)> = plan
        .targets
        .iter()
        .map(|d| (d.clone(), Recv::Target))
        .chain(plan.fullcopy.iter().map(|d| (d.clone(), Recv::Full)))
        .collect();
    if multi && reads {
        wdbs.extend(
            plan.sources
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), Recv::Source(i))),
        );
    }
    let mut wconns: Vec<Conn> = Vec::new();
    for (d, _) in &wdbs {
        let c = env.pools.get(d)?;
        env.cancel.register(&c)?;
        wconns.push(c);
    }
    let mut names: Vec<String> = Vec::new();
    let mut kinds: Vec<Recv> = Vec::new();
    let mut txs: Vec<Transaction<'_>> = Vec::new();
    for (c, (d, kind)) in wconns.iter_mut().zip(&wdbs) {
        let mut tx = c
            .transaction()
            .ctx(|| format!("starting the apply transaction on \"{}\"", d.name))?;
        tx.batch_execute(&format!(
            "SET LOCAL session_replication_role = replica; {TEXT_FORMATS}; {RUN_MEMORY}"
        ))
            .ctx(|| {
                format!(
                    "switching \"{}\" to session_replication_role = replica (needs a superuser, or PostgreSQL 15+ with SET ON PARAMETER granted)",
                    d.name
                )
            })?;
        if let Recv::Source(i) = kind {
            // A source is written while its application writes too: wait at
            // most lock_timeout for a row it holds, and be the one a
            // deadlock detector picks (where capra's role may set it), so
            // the application's transaction is never the victim.
            tx.batch_execute(&format!("SET LOCAL lock_timeout = {}", env.lock_timeout_ms))
                .ctx(|| "setting a lock timeout".into())?;
            let mut sp = tx.savepoint("capra_deadlock").ctx(|| "savepoint".into())?;
            if sp.batch_execute("SET LOCAL deadlock_timeout = '50ms'").is_ok() {
                sp.commit().ctx(|| "savepoint".into())?;
            }
            srcs[*i].recv = Some(txs.len());
        }
        names.push(d.name.clone());
        kinds.push(*kind);
        txs.push(tx);
    }
    // Capture on receivers, for makedelta: its captured tables there.
    let mut rcaptured: Vec<Captured> = vec![HashMap::new(); txs.len()];
    for (i, tx) in txs.iter_mut().enumerate() {
        if !plan.tables.iter().any(|t| makedelta(plan, t, &names[i])) {
            continue;
        }
        let has: bool = tx
            .query_one("SELECT to_regclass('capra.captured') IS NOT NULL", &[])
            .ctx(|| format!("looking for change capture on \"{}\"", names[i]))?
            .get(0);
        if has {
            for r in tx
                .query("SELECT schemaname, relname, id, keycols FROM capra.captured", &[])
                .ctx(|| format!("reading change capture on \"{}\"", names[i]))?
            {
                rcaptured[i].insert((r.get(0), r.get(1)), (r.get(2), r.get(3)));
            }
        }
    }
    let signatures = column_signatures(&mut srcs[0].tx, &plan.tables)?;
    let source_names: Vec<String> = plan.sources.iter().map(|d| d.name.clone()).collect();
    let mut newest: Option<Vec<f64>> = None;

    for (t, sig) in plan.tables.iter().zip(&signatures) {
        // With an exception hook, the table's work sits in a savepoint on
        // every database, so the hook can have it retried or skipped.
        let guarded = env.hooks.borrow().has("exception", Some(&t.name.human()));
        let mut attempts = 0;
        let tr = loop {
            if guarded {
                savepoints(&mut srcs, &mut txs, "SAVEPOINT capra_table")?;
            }
            let result = sync_table(
                env,
                plan,
                cache,
                &mut srcs,
                &mut txs,
                &names,
                &kinds,
                &rcaptured,
                &source_names,
                &mut newest,
                t,
                sig,
            );
            match result {
                Ok(tr) => {
                    if guarded {
                        savepoints(&mut srcs, &mut txs, "RELEASE SAVEPOINT capra_table")?;
                    }
                    break Some(tr);
                }
                Err(e) if guarded && e.sqlstate().is_some() => {
                    // A connection that cannot even roll back fails the run
                    // with the error that started it.
                    if savepoints(&mut srcs, &mut txs, "ROLLBACK TO SAVEPOINT capra_table").is_err() {
                        return Err(e);
                    }
                    attempts += 1;
                    let text = crate::pg::error::flatten(&e.to_string());
                    let state = e.sqlstate().map(|c| c.code()).unwrap_or_default();
                    let answer = hook(env, "exception", Some(t), &|_, ctx| {
                        ctx.set("error", text.as_str())?;
                        ctx.set("sqlstate", state)?;
                        ctx.set("attempts", attempts)
                    })?;
                    match answer.as_deref() {
                        Some("retry") if attempts <= 2 => {
                            tracing::warn!("Retrying {} as the exception hook asked: {text}", t.name.human());
                            continue;
                        }
                        Some("retry") => {
                            return Err(Error::Rejected(format!(
                                "the exception hook retried {} twice and it still fails; giving up: {text}",
                                t.name.human()
                            )))
                        }
                        Some("skip") => {
                            tracing::warn!(
                                "Skipping {} in this run as the exception hook asked: its changes since the last run are not applied anywhere ({text})",
                                t.name.human()
                            );
                            report.skipped_tables.push(t.name.human());
                            break None;
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let Some(tr) = tr else { continue };
        let counts = (tr.keys, tr.copied, tr.deleted);
        if let Some(a) = hook(env, "after_table_sync", Some(t), &move |lua, ctx| {
            let c = lua.create_table()?;
            c.set("keys", counts.0)?;
            c.set("copied", counts.1)?;
            c.set("deleted", counts.2)?;
            ctx.set("counts", c)
        })? {
            tracing::debug!("after_table_sync answered {a:?} (ignored)");
        }
        report.truncates += tr.truncates;
        report.again |= tr.again;
        if tr.keys > 0 || tr.copied > 0 || tr.deleted > 0 || tr.truncated || !tr.full_copies.is_empty() {
            report.inserts += tr.copied;
            report.deletes += tr.deleted;
            report.conflicts += tr.conflicts;
            report.tables.push(tr);
        }
    }

    // Sequences: value and, where they differ, settings (not to sources).
    for (s, v) in plan.sequences.iter().zip(&seq_src) {
        let mut wrote = false;
        for (j, tx) in txs.iter_mut().enumerate() {
            if matches!(kinds[j], Recv::Source(_)) || cache.seqs.get(&(s.id, names[j].clone())) == Some(v) {
                continue;
            }
            apply_sequence(tx, &names[j], s, v)?;
            wrote = true;
        }
        if wrote {
            report.sequences.push(s.name.human());
        }
    }

    // Tables copied whole because capture had lost their key: capture is
    // rebuilt before the next run.
    if !multi {
        report.recaptured = plan
            .tables
            .iter()
            .filter(|t| srcs[0].id_of(t).is_some_and(|id| srcs[0].recopy.contains(&id)))
            .map(|t| t.name.human())
            .collect();
    }

    // --- commit: everything received first, then the positions ---------------
    for (i, tx) in txs.iter_mut().enumerate() {
        if let (Recv::Source(_), true) = (kinds[i], makedelta_any(plan, &names[i])) {
            // In the same transaction as the rows it logged here, so a
            // crash cannot separate them: this sync never reads them back.
            tx.execute(
                "INSERT INTO capra.applied (installation, sync, txid, kind) VALUES ($1, $2, txid_current(), 'm') ON CONFLICT DO NOTHING",
                &[&env.installation, &name],
            )
            .ctx(|| format!("noting what this run logged on \"{}\"", names[i]))?;
        }
    }
    // What was logged on a receiver (makedelta) wakes the syncs reading it
    // the way an application's write does: its watcher sees the log grow.
    for (tx, n) in txs.into_iter().zip(&names) {
        tx.commit().ctx(|| format!("committing on \"{n}\""))?;
    }
    for s in srcs.into_iter() {
        let mut tx = s.tx;
        if reads {
            tx.execute(
                "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, updated = now()
                  WHERE installation = $1 AND sync = $2",
                &[&env.installation, &name, &s.cur],
            )
            .ctx(|| format!("recording sync \"{name}\"'s position on \"{}\"", s.db.name))?;
            // What this sync wrote into the logs before the new position
            // can never be in a window again.
            tx.execute(
                "DELETE FROM capra.applied WHERE installation = $1 AND sync = $2 AND txid_visible_in_snapshot(txid, $3::text::txid_snapshot)",
                &[&env.installation, &name, &s.cur],
            )
            .ctx(|| format!("forgetting what sync \"{name}\" logged on \"{}\"", s.db.name))?;
        }
        tx.commit().ctx(|| format!("committing on \"{}\"", s.db.name))?;
    }
    cache.last_advance = Some(Instant::now());
    for (s, v) in plan.sequences.iter().zip(&seq_src) {
        for (n, k) in names.iter().zip(&kinds) {
            if !matches!(k, Recv::Source(_)) {
                cache.seqs.insert((s.id, n.clone()), v.clone());
            }
        }
    }
    env.cancel.clear();
    drop(wconns);
    drop(rconns);

    // After commit: statistics for freshly copied tables.
    for tr in &report.tables {
        let Some(t) = plan.tables.iter().find(|t| t.name.human() == tr.table) else {
            continue;
        };
        for dbname in &tr.full_copies {
            let Some(db) = written.iter().find(|d| &d.name == dbname) else {
                continue;
            };
            let mut sql = Vec::new();
            if plan.sync.analyze_after_copy && t.analyze_after_copy {
                sql.push(format!("ANALYZE {}", t.name.sql()));
            }
            if plan.sync.vacuum_after_copy && t.vacuum_after_copy {
                sql.push(format!("VACUUM {}", t.name.sql()));
            }
            // Everything is committed: statistics are best effort and never
            // turn a good run into a failed one.
            if !sql.is_empty() {
                match env.pools.get(db) {
                    Ok(mut c) => {
                        for s in sql {
                            if let Err(e) = c.batch_execute(&s) {
                                tracing::warn!("{s} on \"{dbname}\" failed: {}", crate::pg::error::describe(&e));
                            }
                        }
                    }
                    Err(e) => tracing::warn!("Skipping ANALYZE/VACUUM on \"{dbname}\": {e}"),
                }
            }
        }
    }
    // A onetimecopy is served only if some database received it.
    report.onetimecopy = otc.is_on() && !wdbs.is_empty();
    report.onetimecopy_gen = report.onetimecopy.then_some(plan.sync.onetimecopy_gen);
    report.caught_up = plan.behind.clone();
    report.seconds = started.elapsed().as_secs_f64();
    let (ins, del, conf) = (report.inserts, report.deletes, report.conflicts);
    hook(env, "after_txn", None, &move |lua, ctx| {
        let c = lua.create_table()?;
        c.set("inserts", ins)?;
        c.set("deletes", del)?;
        c.set("conflicts", conf)?;
        ctx.set("counts", c)
    })?;
    hook(env, "after_sync", None, &|_, _| Ok(()))?;
    Ok(report)
}

/// Runs (or releases, or rolls back to) a savepoint on every open
/// transaction of the run.
fn savepoints(srcs: &mut [Src<'_>], txs: &mut [Transaction<'_>], sql: &str) -> Result<()> {
    for s in srcs.iter_mut() {
        s.tx.batch_execute(sql).ctx(|| format!("{sql} on \"{}\"", s.db.name))?;
    }
    for tx in txs.iter_mut() {
        tx.batch_execute(sql).ctx(|| sql.to_string())?;
    }
    Ok(())
}

/// One table's part of a run: full copies, truncations, then changes from
/// every source that has some (conflicts settled), on every receiver.
#[allow(clippy::too_many_arguments)]
fn sync_table(
    env: &RunEnv<'_>,
    plan: &SyncPlan,
    cache: &mut RunCache,
    srcs: &mut [Src<'_>],
    txs: &mut [Transaction<'_>],
    names: &[String],
    kinds: &[Recv],
    rcaptured: &[Captured],
    source_names: &[String],
    newest: &mut Option<Vec<f64>>,
    t: &Relation,
    sig: &str,
) -> Result<TableReport> {
    let multi = plan.sources.len() > 1;
    let reads = plan.is_delta() && (!plan.targets.is_empty() || multi);
    let otc = plan.sync.onetimecopy;
    // Deltas use the key the change log was built with (after a key
    // change it stays the old one until that log is drained).
    let tkey = (t.name.schema.clone(), t.name.name.clone());
    let keycols = srcs[0]
        .captured
        .get(&tkey)
        .map(|c| c.1.clone())
        .unwrap_or_else(|| t.pkey.clone());
    if reads {
        for s in &srcs[1..] {
            if let Some(c) = s.captured.get(&tkey) {
                if c.1 != keycols {
                    return Err(Error::Rejected(format!(
                        "table {} is captured with key ({}) on \"{}\" but ({}) on \"{}\"; every source of a multi-master sync needs the same key (capra update table {} pkey=...)",
                        t.name.human(),
                        keycols.join(", "),
                        srcs[0].db.name,
                        c.1.join(", "),
                        s.db.name,
                        t.name.human()
                    )));
                }
            }
        }
    }
    let ids: Vec<Option<i32>> = srcs.iter().map(|s| s.id_of(t)).collect();
    // A table nothing happened to costs nothing: no shape learned, no
    // statement sent (a run's cost follows what changed, not how many
    // tables the sync has).
    let untouched = reads
        && otc == OneTimeCopy::Off
        && plan.behind.is_empty()
        && plan.fullcopy.is_empty()
        && srcs.iter().zip(&ids).all(|(s, id)| id.is_some_and(|id| !s.touched(id)));
    if untouched {
        return Ok(TableReport {
            table: t.name.human(),
            ..Default::default()
        });
    }
    let meta = table_meta(cache, &mut srcs[0].tx, txs, names, t, &keycols, sig)?.clone();
    let strategy = t
        .conflict_strategy
        .as_ref()
        .or(plan.sync.conflict_strategy.as_ref())
        .unwrap_or(env.default_strategy)
        .clone();
    // Where makedelta applies: the receiver's own change log of this
    // table (captured there, with the same key).
    let md: Vec<Option<i32>> = (0..txs.len())
        .map(|i| {
            if !makedelta(plan, t, &names[i]) {
                return None;
            }
            rcaptured[i].get(&tkey).filter(|c| c.1 == keycols).map(|c| c.0)
        })
        .collect();
    // Decide per receiver how it gets this table.
    let mut modes: Vec<Mode> = Vec::new();
    for (i, tx) in txs.iter_mut().enumerate() {
        let empty = |tx: &mut Transaction<'_>| -> Result<bool> {
            Ok(tx
                .query_one(
                    &format!("SELECT NOT EXISTS (SELECT 1 FROM {}{})", meta.only, t.name.sql()),
                    &[],
                )
                .ctx(|| format!("checking whether {} is empty on \"{}\"", t.name.human(), names[i]))?
                .get(0))
        };
        let mode = match kinds[i] {
            Recv::Full => Mode::Copy,
            // A source is never emptied: with onetimecopy it gets a copy
            // from the first source only while its table is empty, and
            // the changes of this run on top.
            Recv::Source(x) if x != 0 && otc.is_on() && empty(tx)? => Mode::Seed,
            Recv::Source(_) => Mode::Delta,
            Recv::Target
                if otc == OneTimeCopy::All
                    || plan.behind.contains(&names[i])
                    || (!multi && ids[0].is_some_and(|id| srcs[0].recopy.contains(&id))) =>
            {
                Mode::Copy
            }
            Recv::Target if otc == OneTimeCopy::IfEmpty && empty(tx)? => Mode::Copy,
            Recv::Target => Mode::Delta,
        };
        modes.push(mode);
    }
    let mut tr = TableReport {
        table: t.name.human(),
        ..Default::default()
    };
    // Full copies, from the first source.
    let copy_idx: Vec<usize> = (0..txs.len())
        .filter(|i| modes[*i] == Mode::Copy || modes[*i] == Mode::Seed)
        .collect();
    if !copy_idx.is_empty() && !t.ghost {
        let rebuild = t.rebuild_index.unwrap_or(plan.sync.rebuild_index) == 1;
        for &i in &copy_idx {
            if kinds[i] == Recv::Target || kinds[i] == Recv::Full {
                tr.deleted += truncate_or_delete(&mut txs[i], &names[i], t, &meta, plan.sync.deletemethod)?;
                if rebuild {
                    set_indexes(&mut txs[i], &names[i], t, false)?;
                }
            }
            tr.full_copies.push(names[i].clone());
        }
        let q = format!(
            "COPY (SELECT {} FROM {}{}{}) TO STDOUT",
            meta.cols,
            meta.only,
            t.name.sql(),
            t.filter.as_deref().map(|f| format!(" WHERE ({f})")).unwrap_or_default()
        );
        let into = format!("COPY {} ({}) FROM STDIN", t.name.sql(), meta.cols);
        let dests: Vec<(usize, String)> = copy_idx.iter().map(|i| (*i, into.clone())).collect();
        let rows: u64 = pipe(&mut srcs[0].tx, &q, txs, &dests, names, &t.name.human())?
            .iter()
            .sum();
        tr.copied += rows;
        for &i in &copy_idx {
            if rebuild && !matches!(kinds[i], Recv::Source(_)) {
                set_indexes(&mut txs[i], &names[i], t, true)?;
                txs[i]
                    .batch_execute(&format!("REINDEX TABLE {}", t.name.sql()))
                    .ctx(|| format!("rebuilding the indexes of {} on \"{}\"", t.name.human(), names[i]))?;
            }
            if let Some(mid) = md[i] {
                // Downstream: a truncation, then every key.
                let k = meta
                    .keycols
                    .iter()
                    .map(|k| quote_ident(k))
                    .collect::<Vec<_>>()
                    .join(", ");
                txs[i]
                    .batch_execute(&format!(
                        "INSERT INTO capra.truncate_log (captured) VALUES ({mid}); INSERT INTO capra.delta_{mid} ({k}) SELECT {k} FROM {}{}",
                        meta.only,
                        t.name.sql()
                    ))
                    .ctx(|| format!("logging the copy of {} on \"{}\" (makedelta)", t.name.human(), names[i]))?;
            }
        }
        tracing::info!(
            "Full copy of {} to {}: {rows} rows",
            t.name.human(),
            tr.full_copies.join(", ")
        );
    }
    // Changes.
    // With several sources a full copy comes from the first one only: the
    // others' changes (and the conflicts they won) follow it in this run.
    let delta_idx: Vec<usize> = (0..txs.len())
        .filter(|i| modes[*i] == Mode::Delta || modes[*i] == Mode::Seed || (multi && modes[*i] == Mode::Copy))
        .collect();
    if reads && !delta_idx.is_empty() && ids.iter().any(|i| i.is_some()) {
        if multi {
            if let Some(s) = srcs
                .iter()
                .find(|s| s.id_of(t).is_some_and(|id| s.recopy.contains(&id)))
            {
                return Err(Error::Rejected(format!(
                    "table {} lost its replication key on source \"{}\" (a key column was dropped), so its changes there cannot be told apart; declare its key (capra update table {} pkey=COLUMNS); multi-master syncs then need the table made equal by hand or with onetimecopy=2 on emptied copies",
                    t.name.human(),
                    s.db.name,
                    t.name.human()
                )));
            }
        }
        // Truncations first: everything changed afterwards is applied below.
        for si in 0..srcs.len() {
            let Some(id) = ids[si] else { continue };
            let own = srcs[si].recv;
            let recv: Vec<usize> = delta_idx.iter().copied().filter(|i| Some(*i) != own).collect();
            // Rows a receiving source's application held were left: this
            // source logs them again, so the next run settles them.
            let mut held: Vec<Vec<String>> = Vec::new();
            if srcs[si].truncated.contains(&id) {
                for &i in &recv {
                    held.extend(replay_truncate(
                        srcs,
                        &mut txs[i],
                        &names[i],
                        kinds[i],
                        t,
                        &meta,
                        md[i],
                    )?);
                }
                tr.truncated = true;
                tr.truncates += recv.len() as u64;
            } else if srcs[si].parts_truncated.contains(&id) {
                // Part of the table was emptied: whatever the receivers'
                // layout, delete there every row whose key this source
                // no longer has (the changes below then add back what
                // was written since).
                let spare: Vec<Option<String>> =
                    (0..txs.len()).map(|i| spare_clause(srcs, kinds[i], t, &meta)).collect();
                let (n, h) = delete_missing(&mut srcs[si].tx, txs, names, &recv, t, &meta, &spare, &md)?;
                tr.deleted += n;
                held.extend(h);
                tr.truncated = true;
                tr.truncates += recv.len() as u64;
            }
            if !held.is_empty() {
                held.sort();
                held.dedup();
                tr.again = true;
                // They keep the time of the truncation.
                let when = format!(
                    "(SELECT max(d.ts) FROM capra.truncate_log d WHERE d.captured = {id} AND {})",
                    srcs[si].window()
                );
                reraise(&mut srcs[si], t, &meta, &held, Some(&when))?;
            }
        }
        let changers: Vec<usize> = (0..srcs.len())
            .filter(|s| ids[*s].is_some_and(|id| srcs[*s].changed.contains(&id)))
            .collect();
        if !changers.is_empty() {
            let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
            let (won, merged) = if changers.len() == 1 {
                let s = &srcs[changers[0]];
                let id = ids[changers[0]].expect("changer");
                (
                    vec![(
                        changers[0],
                        format!(
                            "SELECT DISTINCT {} FROM capra.delta_{id} d WHERE {}",
                            qk.join(", "),
                            s.window()
                        ),
                    )],
                    Vec::new(),
                )
            } else {
                if strategy == Strategy::LatestAllTables && newest.is_none() {
                    *newest = Some(newest_changes(srcs, plan)?);
                }
                let mut st = Settle {
                    env,
                    strategy: &strategy,
                    sources: source_names,
                    newest: newest.as_deref().unwrap_or(&[]),
                };
                detect(&mut st, srcs, &changers, &ids, t, &meta, env.chunk, &mut tr)?
            };
            if strategy == Strategy::LatestAllTables && newest.is_none() && multi {
                // Late changes on a receiving source are settled below too.
                *newest = Some(newest_changes(srcs, plan)?);
            }
            let mut staged: BTreeSet<usize> = BTreeSet::new();
            for (w, keys_sql) in &won {
                let own = srcs[*w].recv;
                let recv: Vec<usize> = delta_idx.iter().copied().filter(|i| Some(*i) != own).collect();
                apply_from(
                    env,
                    &mut srcs[*w].tx,
                    txs,
                    names,
                    kinds,
                    &recv,
                    t,
                    &meta,
                    keys_sql,
                    *w as i32,
                    &md,
                    &mut staged,
                    &mut tr,
                )?;
                if !multi {
                    tracing::info!("Delta count for {}.{} : {}", srcs[*w].db.name, t.name.human(), tr.keys);
                }
            }
            if !merged.is_empty() {
                apply_merged(
                    txs,
                    names,
                    kinds,
                    &delta_idx,
                    t,
                    &meta,
                    &merged,
                    &md,
                    &mut staged,
                    &mut tr,
                )?;
            }
            for &r in &staged {
                let Recv::Source(x) = kinds[r] else { continue };
                let mut st = Settle {
                    env,
                    strategy: &strategy,
                    sources: source_names,
                    newest: newest.as_deref().unwrap_or(&[]),
                };
                let busy = finish_source(&mut st, srcs, &mut txs[r], &names[r], x, t, &meta, md[r], &mut tr)?;
                // Keys the application held on x: their winner logs
                // them again (a composed row: any other source, which
                // holds it now).
                let mut by_src: BTreeMap<usize, Vec<Vec<String>>> = BTreeMap::new();
                for (from, key) in busy {
                    let w = if from >= 0 {
                        from as usize
                    } else if x == 0 {
                        1
                    } else {
                        0
                    };
                    by_src.entry(w).or_default().push(key);
                }
                for (w, keys) in by_src {
                    tr.again = true;
                    reraise(&mut srcs[w], t, &meta, &keys, None)?;
                }
            }
            if multi {
                tracing::info!(
                    "Delta count for {} from {} : {} ({} conflicts)",
                    t.name.human(),
                    changers
                        .iter()
                        .map(|c| srcs[*c].db.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    tr.keys,
                    tr.conflicts
                );
            }
        }
    }
    Ok(tr)
}

/// Whether makedelta asks for changes applied to `db` to be logged there
/// for this table: the sync's flag, the database's, or the table's (`on`,
/// or a list of database names).
pub(super) fn makedelta(plan: &SyncPlan, t: &Relation, db: &str) -> bool {
    plan.sync.makedelta
        || plan
            .sources
            .iter()
            .chain(&plan.targets)
            .chain(&plan.fullcopy)
            .any(|d| d.name == db && d.makedelta)
        || t.makedelta.as_deref().is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("on")
                || m == "1"
                || m.eq_ignore_ascii_case("true")
                || m.split([' ', ',']).any(|n| n == db)
        })
}

pub(super) fn makedelta_any(plan: &SyncPlan, db: &str) -> bool {
    plan.tables.iter().any(|t| makedelta(plan, t, db))
}

/// Learns a table's columns on the source and its key types on each written
/// database, once per controller.
fn table_meta<'m>(
    cache: &'m mut RunCache,
    stx: &mut Transaction<'_>,
    txs: &mut [Transaction<'_>],
    names: &[String],
    t: &Relation,
    keycols: &[String],
    signature: &str,
) -> Result<&'m TableMeta> {
    let missing = match cache.meta.get(&t.id) {
        Some(m) => {
            m.keycols != keycols || m.signature != signature || names.iter().any(|n| !m.key_types.contains_key(n))
        }
        None => true,
    };
    if missing {
        let kind = discover::kind_of(stx, &t.name)?;
        if kind.is_none() {
            return Err(Error::Rejected(format!(
                "table {} does not exist on the source any more",
                t.name.human()
            )));
        }
        let src_cols = discover::columns(stx, &t.name)?;
        let cols: Vec<String> = src_cols
            .iter()
            .filter(|c| !c.generated)
            .map(|c| quote_ident(&c.name))
            .collect();
        let nonkey: Vec<String> = src_cols
            .iter()
            .filter(|c| !c.generated && !keycols.contains(&c.name))
            .map(|c| c.name.clone())
            .collect();
        let mut key_types = HashMap::new();
        for (tx, n) in txs.iter_mut().zip(names) {
            let tcols = discover::columns(tx, &t.name)?;
            if tcols.is_empty() {
                return Err(Error::Rejected(format!(
                    "table {} does not exist in database \"{n}\"; create it there (capra validate lists every difference)",
                    t.name.human()
                )));
            }
            for c in src_cols.iter().filter(|c| !c.generated) {
                if !tcols.iter().any(|tc| tc.name == c.name) {
                    return Err(Error::Rejected(format!(
                        "column \"{}\" of table {} is missing in database \"{n}\"; add it there (capra validate shows every difference)",
                        c.name,
                        t.name.human()
                    )));
                }
            }
            let mut kt = Vec::new();
            for k in keycols {
                let c = tcols.iter().find(|c| &c.name == k).ok_or_else(|| {
                    Error::Rejected(format!(
                        "key column \"{k}\" of table {} is missing in database \"{n}\"",
                        t.name.human()
                    ))
                })?;
                // No type modifier: a key widened on one side only still
                // compares exactly (a cast to varchar(10) would cut it).
                kt.push(c.base_type.clone());
            }
            key_types.insert(n.clone(), kt);
        }
        cache.meta.insert(
            t.id,
            TableMeta {
                signature: signature.to_string(),
                keycols: keycols.to_vec(),
                cols: cols.join(", "),
                nonkey,
                only: if kind == Some(discover::Kind::Partitioned) {
                    ""
                } else {
                    "ONLY "
                },
                key_types,
            },
        );
    }
    Ok(cache.meta.get(&t.id).expect("inserted above"))
}
