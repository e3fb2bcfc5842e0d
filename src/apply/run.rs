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
//! ([`super::conflict`]). A source receives rows through a staging table:
//! the rows are locked, then its change log is read again, and a key the
//! application changed there after this run's snapshot (a late change) is
//! settled as a conflict too, never silently overwritten. Existing rows
//! are updated in place, so an application UPDATE waiting on capra's lock
//! applies on top of the new row instead of finding it gone. All received
//! data commits first, the positions after: a crash in between makes the
//! next run apply the same keys again, which changes nothing.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use postgres::{IsolationLevel, Transaction};
use serde::Serialize;

use super::conflict::{self, Contender, Decision, Record, Strategy};
use super::copy::pipe;
use super::pools::{Cancel, Pools};
use super::sequences::{apply_sequence, read_sequences, SeqState};
use crate::capture::discover;
use crate::catalog::model::{Db, Relation};
use crate::catalog::plan::SyncPlan;
use crate::error::{Context, Error, Result};
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
    /// `repeatable read` or `serializable`.
    pub isolation: &'a str,
    /// How long a run waits for its ACCESS SHARE locks before it gives up
    /// and is retried (milliseconds; `lock_timeout` setting).
    pub lock_timeout_ms: u64,
    /// Cancel handles.
    pub cancel: &'a Cancel,
    /// `default_conflict_strategy`: for tables and syncs that set none.
    pub default_strategy: &'a str,
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
    meta: HashMap<i32, TableMeta>,
    /// Per source: the plan's partitioned tables there (learned once).
    partitioned: HashMap<String, Vec<crate::pg::ident::QualName>>,
    /// Per source: the change logs the last run read, locked with the
    /// tables before the next snapshot (a log rewritten after it would
    /// look empty).
    logs: HashMap<String, Vec<i32>>,
    seqs: HashMap<(i32, String), SeqState>,
    last_advance: Option<Instant>,
}

/// Session settings for every transaction a run opens: the text COPY
/// carries means the same on every server whatever its defaults, and no
/// server-side timeout kills a long run in the middle (an idle-in-
/// transaction target waiting for the source's COPY, a long statement).
const TEXT_FORMATS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; SET LOCAL lc_monetary = 'C'; \
     SET LOCAL statement_timeout = 0";

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
struct TableMeta {
    /// The source's column names and type oids when this was learned: a
    /// run compares it with the live table and re-learns after DDL.
    signature: String,
    /// The key columns the key types below are for.
    keycols: Vec<String>,
    /// Quoted column list (non-generated source columns).
    cols: String,
    /// The non-key columns among them (unquoted), for in-place updates.
    nonkey: Vec<String>,
    /// `ONLY ` for plain tables; nothing for partitioned ones.
    only: &'static str,
    /// Per written database: the key columns' types there (for casts).
    key_types: HashMap<String, Vec<String>>,
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

/// Checks a snapshot string before it is inlined into a COPY query (COPY
/// takes no parameters); it comes from the server, but trust nothing.
fn snapshot_literal(s: &str) -> Result<String> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ':' || c == ',') {
        Ok(format!("'{s}'::txid_snapshot"))
    } else {
        Err(Error::Rejected(format!("unexpected snapshot text {s:?}")))
    }
}

/// How a target receives a table in this run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Delta,
    Copy,
    /// A source whose table is empty: a copy from the first source, then
    /// this run's changes.
    Seed,
}

/// Captured tables of a database: (schema, table) -> (captured id, the key
/// columns of its change log).
pub(super) type Captured = HashMap<(String, String), (i32, Vec<String>)>;

/// A receiving database's part in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recv {
    /// A `target`: receives changes (or a full copy).
    Target,
    /// A `fullcopy` database: receives a full copy every run.
    Full,
    /// Another source of a multi-master sync (its index in the plan).
    Source(usize),
}

/// One source in a run: its read transaction and what changed there.
struct Src<'c> {
    db: Db,
    tx: Transaction<'c>,
    /// This run's snapshot (stored as the new position at the end).
    cur: String,
    /// The stored position, as a checked literal (delta syncs).
    prev_lit: Option<String>,
    /// The transaction in which this sync last wrote rows here that its
    /// own capture logged (makedelta): excluded from its own changes.
    applied_txid: Option<i64>,
    /// Whether the server records commit times.
    commit_ts: bool,
    /// (schema, table) -> (captured id, key columns of its log).
    captured: Captured,
    changed: BTreeSet<i32>,
    truncated: BTreeSet<i32>,
    /// Tables one of whose partitions was truncated (or dropped).
    parts_truncated: BTreeSet<i32>,
    /// Tables to copy whole (capture lost their key).
    recopy: BTreeSet<i32>,
    /// Its write transaction, when it receives (multi-master).
    recv: Option<usize>,
}

impl Src<'_> {
    /// The rows of a change log this run takes: committed after the stored
    /// position and visible in this run's snapshot (the snapshot itself is
    /// the transaction's), minus this sync's own makedelta rows.
    fn window(&self) -> String {
        let p = self.prev_lit.as_deref().unwrap_or("NULL");
        let mut w = format!("d.txid >= txid_snapshot_xmin({p}) AND NOT txid_visible_in_snapshot(d.txid, {p})");
        if let Some(own) = self.applied_txid {
            w.push_str(&format!(" AND d.txid <> {own}"));
        }
        w
    }

    /// The change time `latest` compares, over a group of log rows `d`.
    fn time_expr(&self) -> &'static str {
        if self.commit_ts {
            "extract(epoch FROM max(coalesce(pg_catalog.pg_xact_commit_timestamp((d.txid % 4294967296)::text::xid), d.ts)))::float8"
        } else {
            "extract(epoch FROM max(d.ts))::float8"
        }
    }

    fn id_of(&self, t: &Relation) -> Option<i32> {
        self.captured
            .get(&(t.name.schema.clone(), t.name.name.clone()))
            .map(|c| c.0)
    }
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Calls the hooks of one point; `Some(text)` when one answered with text.
fn hook(
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
        isolation: if env.isolation == "serializable" {
            "serializable"
        } else {
            "repeatable read"
        }
        .into(),
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
    let iso = if env.isolation == "serializable" {
        IsolationLevel::Serializable
    } else {
        IsolationLevel::RepeatableRead
    };
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
        let mut setup = format!("{TEXT_FORMATS}; SET LOCAL lock_timeout = {}", env.lock_timeout_ms);
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
        let (cur, prev, applied_txid, commit_ts, clock): (String, Option<String>, Option<i64>, bool, f64) = if delta {
            let row = tx
                .query_opt(
                    "SELECT txid_current_snapshot()::text, c.snapshot::text,
                            txid_snapshot_xmin(c.snapshot) > txid_snapshot_xmax(txid_current_snapshot()),
                            c.applied_txid,
                            coalesce(current_setting('track_commit_timestamp', true), 'off') = 'on',
                            extract(epoch FROM clock_timestamp())::float8
                       FROM capra.consumer c
                      WHERE c.installation = $1 AND c.sync = $2 FOR UPDATE",
                    &[&env.installation, &name],
                )
                .ctx(|| format!("reading sync \"{name}\"'s position on \"{}\"", db.name))?;
            match row {
                Some(r) if r.get::<_, bool>(2) && otc != 1 => {
                    return Err(Error::Rejected(format!(
                        "sync \"{name}\" has applied changes up to transaction {} on \"{}\", but that database is only at {} (restored from a backup, or a different server?); its change log cannot be trusted: run 'capra update sync {name} onetimecopy=1' for a full copy, after which the sync follows the database from now on",
                        r.get::<_, String>(1).split(':').next().unwrap_or("?"),
                        db.name,
                        r.get::<_, String>(0).split(':').nth(1).unwrap_or("?"),
                    )))
                }
                Some(r) => (r.get(0), Some(r.get(1)), r.get(3), r.get(4), r.get(5)),
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
            (r.get(0), None, None, false, r.get(1))
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
        srcs.push(Src {
            db,
            tx,
            cur,
            prev_lit,
            applied_txid,
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

    let nothing = srcs
        .iter()
        .all(|s| s.changed.is_empty() && s.truncated.is_empty() && s.parts_truncated.is_empty() && s.recopy.is_empty())
        && plan.fullcopy.is_empty()
        && plan.behind.is_empty()
        && otc == 0
        && seq_dirty.is_empty();
    if nothing {
        // Nothing changed between the stored positions and these snapshots,
        // so moving the positions forward skips nothing; doing it now and
        // then keeps an idle sync from holding back purges.
        if reads && cache.last_advance.is_none_or(|t| t.elapsed() >= IDLE_ADVANCE) {
            for s in srcs {
                let mut tx = s.tx;
                tx.execute(
                    "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, applied_txid = NULL, updated = now()
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
        tx.batch_execute(&format!("SET LOCAL session_replication_role = replica; {TEXT_FORMATS}"))
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
                    let state = e.sqlstate().unwrap_or_default();
                    let answer = hook(env, "exception", Some(t), &|_, ctx| {
                        ctx.set("error", text.as_str())?;
                        ctx.set("sqlstate", state.as_str())?;
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
    let mut applied: Vec<Option<i64>> = vec![None; srcs.len()];
    for (i, tx) in txs.iter_mut().enumerate() {
        if let (Recv::Source(x), true) = (kinds[i], makedelta_any(plan, &names[i])) {
            applied[x] = Some(
                tx.query_one("SELECT txid_current()", &[])
                    .ctx(|| format!("reading the apply transaction on \"{}\"", names[i]))?
                    .get(0),
            );
        }
    }
    for ((mut tx, n), k) in txs.into_iter().zip(&names).zip(&kinds) {
        if makedelta_any(plan, n) && (!matches!(k, Recv::Source(_)) || !report.tables.is_empty()) {
            // What was logged here (makedelta) wakes the syncs reading this
            // database, as an application's write would (delivered on commit).
            tx.execute("SELECT pg_notify($1, '')", &[&crate::capture::install::KICK_CHANNEL])
                .ctx(|| format!("kicking the syncs that read \"{n}\""))?;
        }
        tx.commit().ctx(|| format!("committing on \"{n}\""))?;
    }
    for (x, s) in srcs.into_iter().enumerate() {
        let mut tx = s.tx;
        if reads {
            tx.execute(
                "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, applied_txid = $4, updated = now()
                  WHERE installation = $1 AND sync = $2",
                &[&env.installation, &name, &s.cur, &applied[x]],
            )
            .ctx(|| format!("recording sync \"{name}\"'s position on \"{}\"", s.db.name))?;
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
    report.onetimecopy = otc > 0 && !wdbs.is_empty();
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
    let meta = table_meta(cache, &mut srcs[0].tx, txs, names, t, &keycols, sig)?.clone();
    let strategy = Strategy::parse(
        t.conflict_strategy
            .as_deref()
            .or(plan.sync.conflict_strategy.as_deref())
            .unwrap_or(env.default_strategy),
    );
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
            Recv::Source(x) if x != 0 && otc > 0 && empty(tx)? => Mode::Seed,
            Recv::Source(_) => Mode::Delta,
            Recv::Target
                if otc == 1
                    || plan.behind.contains(&names[i])
                    || (!multi && ids[0].is_some_and(|id| srcs[0].recopy.contains(&id))) =>
            {
                Mode::Copy
            }
            Recv::Target if otc == 2 && empty(tx)? => Mode::Copy,
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
                tr.deleted += truncate_or_delete(&mut txs[i], &names[i], t, &meta, &plan.sync.deletemethod)?;
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
    let delta_idx: Vec<usize> = (0..txs.len())
        .filter(|i| modes[*i] == Mode::Delta || modes[*i] == Mode::Seed)
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
            if srcs[si].truncated.contains(&id) {
                for &i in &recv {
                    replay_truncate(srcs, &mut txs[i], &names[i], kinds[i], t, &meta, md[i])?;
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
                tr.deleted += delete_missing(&mut srcs[si].tx, txs, names, &recv, t, &meta, &spare, &md)?;
                tr.truncated = true;
                tr.truncates += recv.len() as u64;
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
                    reraise(&mut srcs[w], t, &meta, &keys)?;
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
fn makedelta(plan: &SyncPlan, t: &Relation, db: &str) -> bool {
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

fn makedelta_any(plan: &SyncPlan, db: &str) -> bool {
    plan.tables.iter().any(|t| makedelta(plan, t, db))
}

/// Reads which of the plan's tables changed on one source since its
/// position, and which were truncated.
fn scan(env: &RunEnv<'_>, plan: &SyncPlan, cache: &mut RunCache, name: &str, s: &mut Src<'_>) -> Result<()> {
    let stx = &mut s.tx;
    for r in stx
        .query("SELECT id, schemaname, relname, keycols FROM capra.captured", &[])
        .ctx(|| "reading captured tables".into())?
    {
        s.captured.insert((r.get(1), r.get(2)), (r.get(0), r.get(3)));
    }
    // The tables this sync captures, in this run's own snapshot: a table
    // added to the sync since the plan was read must not have its changes
    // skipped by moving the position past them.
    let mine: Vec<i32> = stx
        .query(
            "SELECT captured FROM capra.consumer_table WHERE installation = $1 AND sync = $2",
            &[&env.installation, &name],
        )
        .ctx(|| "reading the sync's captured tables".into())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let planned: Vec<i32> = plan
        .tables
        .iter()
        .filter_map(|t| {
            s.captured
                .get(&(t.name.schema.clone(), t.name.name.clone()))
                .map(|c| c.0)
        })
        .collect();
    cache.logs.insert(s.db.name.clone(), planned.clone());
    let extra: Vec<i32> = mine.iter().filter(|id| !planned.contains(id)).copied().collect();
    if !extra.is_empty() {
        let what: Vec<String> = extra
            .iter()
            .map(|id| {
                s.captured
                    .iter()
                    .find(|(_, v)| v.0 == *id)
                    .map(|(k, _)| format!("{}.{}", k.0, k.1))
                    .unwrap_or_else(|| format!("captured table {id}"))
            })
            .collect();
        return Err(Error::Stale {
            message: format!(
                "sync \"{name}\" captures {} on \"{}\", which its plan does not know; reading the sync again",
                what.join(", "),
                s.db.name
            ),
            extra,
        });
    }
    let window = {
        let p = s.prev_lit.as_deref().unwrap_or("NULL");
        let mut w = format!("txid >= txid_snapshot_xmin({p}) AND NOT txid_visible_in_snapshot(txid, {p})");
        if let Some(own) = s.applied_txid {
            w.push_str(&format!(" AND txid <> {own}"));
        }
        w
    };
    let mut parts = Vec::new();
    for t in &plan.tables {
        let id = s
            .captured
            .get(&(t.name.schema.clone(), t.name.name.clone()))
            .map(|c| c.0)
            .ok_or_else(|| {
                Error::Rejected(format!(
                    "table {} of sync \"{name}\" is not captured on \"{}\"; run: capra activate {name}",
                    t.name.human(),
                    s.db.name
                ))
            })?;
        parts.push(format!(
            "SELECT {id} WHERE EXISTS (SELECT 1 FROM capra.delta_{id} WHERE {window})"
        ));
    }
    if !parts.is_empty() {
        for r in stx
            .query(parts.join(" UNION ALL ").as_str(), &[])
            .ctx(|| format!("looking for changes on \"{}\"", s.db.name))?
        {
            s.changed.insert(r.get(0));
        }
    }
    for r in stx
        .query(
            &format!("SELECT DISTINCT captured, part FROM capra.truncate_log WHERE {window}"),
            &[],
        )
        .ctx(|| "reading truncations".into())?
    {
        match r.get::<_, Option<String>>(1).as_deref() {
            None => s.truncated.insert(r.get(0)),
            // Capture lost the key (a key column was dropped): only a full
            // copy is exact.
            Some("*") => s.recopy.insert(r.get(0)),
            Some(_) => s.parts_truncated.insert(r.get(0)),
        };
    }
    Ok(())
}

/// Per source, the newest change time over every table in this run
/// (`latest_all_tables` ranks sources by it).
fn newest_changes(srcs: &mut [Src<'_>], plan: &SyncPlan) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for s in srcs.iter_mut() {
        let parts: Vec<String> = plan
            .tables
            .iter()
            .filter_map(|t| s.id_of(t))
            .filter(|id| s.changed.contains(id))
            .map(|id| {
                format!(
                    "SELECT {} AS at FROM capra.delta_{id} d WHERE {}",
                    s.time_expr(),
                    s.window()
                )
            })
            .collect();
        let at: Option<f64> = if parts.is_empty() {
            None
        } else {
            s.tx.query_one(&format!("SELECT max(at) FROM ({}) x", parts.join(" UNION ALL ")), &[])
                .ctx(|| format!("reading the newest change on \"{}\"", s.db.name))?
                .get(0)
        };
        out.push(at.unwrap_or(f64::NEG_INFINITY));
    }
    Ok(out)
}

/// What settles conflicts in one table: the strategy and the hooks.
struct Settle<'a, 'e> {
    env: &'a RunEnv<'e>,
    strategy: &'a Strategy,
    sources: &'a [String],
    newest: &'a [f64],
}

impl Settle<'_, '_> {
    /// Settles one conflict: the conflict hooks first (table-level, then
    /// sync-level), then the strategy. Records it.
    fn settle(
        &mut self,
        t: &Relation,
        meta: &TableMeta,
        key: &[String],
        contenders: Vec<Contender>,
        rows: &mut dyn FnMut() -> Result<Vec<(String, Option<serde_json::Value>)>>,
        late: Option<&str>,
    ) -> Result<Decision> {
        let tname = t.name.human();
        let mut keymap = serde_json::Map::new();
        for (c, v) in meta.keycols.iter().zip(key) {
            keymap.insert(c.clone(), serde_json::Value::String(v.clone()));
        }
        let mut decision = None;
        let mut reason = self.strategy.label();
        if self.env.hooks.borrow().has("conflict", Some(&tname)) {
            let rows = rows()?;
            let fill = |lua: &mlua::Lua, ctx: &mlua::Table| -> mlua::Result<()> {
                let k = lua.create_table()?;
                for (c, v) in meta.keycols.iter().zip(key) {
                    k.set(c.as_str(), v.as_str())?;
                }
                ctx.set("key", k)?;
                let r = lua.create_table()?;
                for (db, row) in &rows {
                    if let Some(row) = row {
                        r.set(db.as_str(), crate::hooks::to_lua(lua, row)?)?;
                    }
                }
                ctx.set("rows", r)?;
                let at = lua.create_table()?;
                for c in &contenders {
                    if let Some(a) = c.at {
                        at.set(c.db.as_str(), a)?;
                    }
                }
                ctx.set("changed_at", at)
            };
            let answer = self.env.hooks.borrow_mut().call("conflict", Some(&tname), &fill)?;
            match answer {
                Some((crate::hooks::Answer::Text(db), code)) => match self.sources.iter().position(|s| *s == db) {
                    Some(i) => {
                        decision = Some(Decision::Winner(i));
                        reason = format!("hook {code}");
                    }
                    None => {
                        return Err(Error::Rejected(format!(
                            "conflict hook {code} answered {db:?} for {tname}, which is not a source of this sync ({})",
                            self.sources.join(", ")
                        )))
                    }
                },
                Some((crate::hooks::Answer::Row(row), code)) => {
                    // Columns the hook left out come from the first row.
                    let mut full = rows
                        .iter()
                        .find_map(|(_, r)| r.clone())
                        .and_then(|v| v.as_object().cloned())
                        .unwrap_or_default();
                    if let Some(o) = row.as_object() {
                        for (k, v) in o {
                            full.insert(k.clone(), v.clone());
                        }
                    }
                    for (c, v) in meta.keycols.iter().zip(key) {
                        full.insert(c.clone(), serde_json::Value::String(v.clone()));
                    }
                    decision = Some(Decision::Merge(serde_json::Value::Object(full)));
                    reason = format!("hook {code}");
                }
                None => {}
            }
        }
        let decision = match decision {
            Some(d) => d,
            None => conflict::decide(self.strategy, &contenders, self.sources, self.newest, conflict::coin()),
        };
        let winner = match &decision {
            Decision::Winner(i) => self.sources[*i].clone(),
            Decision::Merge(_) => "merged".into(),
            Decision::Skip => "skipped".into(),
            Decision::Abort => "aborted".into(),
        };
        if let Some(l) = late {
            reason = format!("{reason}; {l}");
        }
        let fmt_at = |a: Option<f64>| {
            a.and_then(|a| chrono::DateTime::from_timestamp_micros((a * 1e6) as i64))
                .map(|d| d.with_timezone(&chrono::Local).format("%H:%M:%S%.3f").to_string())
                .unwrap_or_else(|| "?".into())
        };
        tracing::info!(
            "Conflict on {tname} ({})=({}): {}; winner {winner} ({reason})",
            meta.keycols.join(", "),
            key.join(", "),
            contenders
                .iter()
                .map(|c| format!("{} at {}", c.db, fmt_at(c.at)))
                .collect::<Vec<_>>()
                .join(" vs ")
        );
        let rec = Record {
            table: tname.clone(),
            key: keymap,
            contenders,
            winner,
            reason,
        };
        self.env.conflicts.borrow_mut().push(rec);
        if decision == Decision::Abort {
            return Err(Error::Rejected(format!(
                "conflict on {tname} ({})=({}) and conflict_strategy is abort: nothing was applied; settle it by choosing another strategy (capra update sync SYNC conflict_strategy=latest, or a list of databases), then the sync goes on",
                meta.keycols.join(", "),
                key.join(", ")
            )));
        }
        Ok(decision)
    }
}

/// A source's row for a key, as JSON (None: no such row).
fn row_json(
    tx: &mut Transaction<'_>,
    t: &Relation,
    meta: &TableMeta,
    types: &[String],
    key: &[String],
) -> Result<Option<serde_json::Value>> {
    let cond: Vec<String> = meta
        .keycols
        .iter()
        .zip(types)
        .enumerate()
        .map(|(j, (k, ty))| format!("t.{} = ${}::text::{ty}", quote_ident(k), j + 1))
        .collect();
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
        key.iter().map(|k| k as &(dyn postgres::types::ToSql + Sync)).collect();
    let r = tx
        .query_opt(
            &format!(
                "SELECT row_to_json(t)::text FROM {}{} t WHERE {}",
                meta.only,
                t.name.sql(),
                cond.join(" AND ")
            ),
            &params,
        )
        .ctx(|| format!("reading a row of {}", t.name.human()))?;
    Ok(r.and_then(|r| serde_json::from_str(&r.get::<_, String>(0)).ok()))
}

/// Finds the keys changed on two or more sources (each source's changed
/// keys stream in key order and are merged here, so memory holds only the
/// conflicts), settles each, and returns per winning source the SQL of the
/// keys it sends, plus rows composed by hooks.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn detect(
    st: &mut Settle<'_, '_>,
    srcs: &mut [Src<'_>],
    changers: &[usize],
    ids: &[Option<i32>],
    t: &Relation,
    meta: &TableMeta,
    chunk: usize,
    tr: &mut TableReport,
) -> Result<(Vec<(usize, String)>, Vec<(Vec<String>, serde_json::Value)>)> {
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let keys = qk.join(", ");
    let text_keys: Vec<String> = qk.iter().map(|k| format!("d.{k}::text")).collect();
    let order: Vec<String> = qk.iter().map(|k| format!("convert_to(d.{k}::text, 'UTF8')")).collect();
    let mut portals = Vec::new();
    for &c in changers {
        let s = &mut srcs[c];
        let id = ids[c].expect("changer");
        let q = format!(
            "SELECT {}, {} FROM capra.delta_{id} d WHERE {} GROUP BY {} ORDER BY {}",
            text_keys.join(", "),
            s.time_expr(),
            s.window(),
            qk.iter().map(|k| format!("d.{k}")).collect::<Vec<_>>().join(", "),
            order.join(", ")
        );
        let p =
            s.tx.bind(q.as_str(), &[])
                .ctx(|| format!("reading changed keys of {} on \"{}\"", t.name.human(), s.db.name))?;
        portals.push(p);
    }
    type Head = VecDeque<(Vec<String>, Option<f64>)>;
    let mut heads: Vec<Head> = vec![VecDeque::new(); changers.len()];
    let mut done = vec![false; changers.len()];
    let n = qk.len();
    let mut lost: Vec<Vec<Vec<String>>> = vec![Vec::new(); srcs.len()];
    let mut extra: Vec<Vec<Vec<String>>> = vec![Vec::new(); srcs.len()];
    let mut merged = Vec::new();
    loop {
        for j in 0..changers.len() {
            if heads[j].is_empty() && !done[j] {
                let s = &mut srcs[changers[j]];
                let rows =
                    s.tx.query_portal(&portals[j], chunk as i32)
                        .ctx(|| format!("reading changed keys of {} on \"{}\"", t.name.human(), s.db.name))?;
                if rows.len() < chunk {
                    done[j] = true;
                }
                for r in rows {
                    let k: Vec<String> = (0..n).map(|i| r.get::<_, String>(i)).collect();
                    heads[j].push_back((k, r.get::<_, Option<f64>>(n)));
                }
            }
        }
        let Some(min) = heads.iter().filter_map(|h| h.front().map(|f| f.0.clone())).min() else {
            break;
        };
        let mut group = Vec::new();
        for j in 0..changers.len() {
            if heads[j].front().is_some_and(|f| f.0 == min) {
                let (_, at) = heads[j].pop_front().expect("front");
                group.push(Contender {
                    src: changers[j],
                    db: srcs[changers[j]].db.name.clone(),
                    at,
                });
            }
        }
        if group.len() < 2 {
            continue;
        }
        tr.conflicts += 1;
        let who: Vec<usize> = group.iter().map(|c| c.src).collect();
        let decision = {
            let mut rows = || -> Result<Vec<(String, Option<serde_json::Value>)>> {
                let mut out = Vec::new();
                for &c in &who {
                    let name = srcs[c].db.name.clone();
                    let types = meta.key_types.get(&name).cloned().unwrap_or_default();
                    out.push((name, row_json(&mut srcs[c].tx, t, meta, &types, &min)?));
                }
                Ok(out)
            };
            st.settle(t, meta, &min, group, &mut rows, None)?
        };
        match decision {
            Decision::Winner(w) => {
                for &c in &who {
                    if c != w {
                        lost[c].push(min.clone());
                    }
                }
                if !who.contains(&w) {
                    extra[w].push(min.clone());
                }
            }
            Decision::Skip => who.iter().for_each(|c| lost[*c].push(min.clone())),
            Decision::Merge(row) => {
                who.iter().for_each(|c| lost[*c].push(min.clone()));
                merged.push((min.clone(), row));
            }
            Decision::Abort => unreachable!("settle returns an error on abort"),
        }
    }
    drop(portals);
    // Per source: its changed keys minus those it lost, plus those it won
    // without changing them (a priority list of one name).
    let mut won = Vec::new();
    for (i, s) in srcs.iter_mut().enumerate() {
        let is_changer = changers.contains(&i);
        if !is_changer && extra[i].is_empty() {
            continue;
        }
        let types = meta.key_types.get(&s.db.name).cloned().unwrap_or_default();
        let mut parts = Vec::new();
        if is_changer {
            let id = ids[i].expect("changer");
            let mut q = format!(
                "SELECT {} FROM capra.delta_{id} d WHERE {}",
                qk.iter().map(|k| format!("d.{k}")).collect::<Vec<_>>().join(", "),
                s.window()
            );
            if !lost[i].is_empty() {
                temp_keys(&mut s.tx, &s.db.name, "capra_lost", meta, &types, &lost[i])?;
                q.push_str(&format!(
                    " AND ({}) NOT IN (SELECT {keys} FROM pg_temp.capra_lost)",
                    qk.iter().map(|k| format!("d.{k}")).collect::<Vec<_>>().join(", ")
                ));
            }
            parts.push(q);
        }
        if !extra[i].is_empty() {
            temp_keys(&mut s.tx, &s.db.name, "capra_extra", meta, &types, &extra[i])?;
            parts.push(format!("SELECT {keys} FROM pg_temp.capra_extra"));
        }
        won.push((i, format!("SELECT DISTINCT * FROM ({}) w", parts.join(" UNION ALL "))));
    }
    Ok((won, merged))
}

/// A temporary table of keys on a source's read transaction.
fn temp_keys(
    tx: &mut Transaction<'_>,
    db: &str,
    table: &str,
    meta: &TableMeta,
    types: &[String],
    keys: &[Vec<String>],
) -> Result<()> {
    let cols: Vec<String> = meta
        .keycols
        .iter()
        .zip(types)
        .map(|(k, ty)| format!("{} {ty}", quote_ident(k)))
        .collect();
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.{table}; CREATE TEMP TABLE {table} ({}) ON COMMIT DROP",
        cols.join(", ")
    ))
    .ctx(|| format!("preparing the conflict keys on \"{db}\""))?;
    let arrays: Vec<Vec<String>> = (0..meta.keycols.len())
        .map(|j| keys.iter().map(|k| k[j].clone()).collect())
        .collect();
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = arrays
        .iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect();
    tx.execute(
        &format!("INSERT INTO pg_temp.{table} {}", unnest_select(types, None)),
        &params,
    )
    .ctx(|| format!("storing the conflict keys on \"{db}\""))?;
    Ok(())
}

/// `SELECT u.a1::t1, ... FROM unnest($1::text[], ...) AS u(a1, ...)`, with
/// an optional extra constant column.
fn unnest_select(types: &[String], extra: Option<&str>) -> String {
    let params: Vec<String> = (1..=types.len()).map(|j| format!("${j}::text[]")).collect();
    let names: Vec<String> = (1..=types.len()).map(|j| format!("a{j}")).collect();
    let mut sel: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(j, ty)| format!("u.a{}::{ty}", j + 1))
        .collect();
    if let Some(e) = extra {
        sel.push(e.to_string());
    }
    format!(
        "SELECT {} FROM unnest({}) AS u({})",
        sel.join(", "),
        params.join(", "),
        names.join(", ")
    )
}

/// The condition keeping a receiving source's own changes since its stored
/// position (in this run or later) when rows are deleted there in bulk.
fn spare_clause(srcs: &[Src<'_>], kind: Recv, t: &Relation, meta: &TableMeta) -> Option<String> {
    let Recv::Source(x) = kind else { return None };
    let s = &srcs[x];
    let id = s.id_of(t)?;
    let p = s.prev_lit.as_deref()?;
    let eq: Vec<String> = meta
        .keycols
        .iter()
        .map(|k| format!("d.{0} = t.{0}", quote_ident(k)))
        .collect();
    Some(format!(
        "NOT EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE {} AND d.txid >= txid_snapshot_xmin({p}) AND NOT txid_visible_in_snapshot(d.txid, {p}))",
        eq.join(" AND ")
    ))
}

/// Replays a source's TRUNCATE on one receiver. A target is truncated; a
/// source is emptied with DELETE (its own run holds a lock TRUNCATE would
/// wait for), sparing the rows it changed itself since its position.
fn replay_truncate(
    srcs: &[Src<'_>],
    tx: &mut Transaction<'_>,
    db: &str,
    kind: Recv,
    t: &Relation,
    meta: &TableMeta,
    md: Option<i32>,
) -> Result<()> {
    match spare_clause(srcs, kind, t, meta) {
        Some(spare) => {
            let k = meta
                .keycols
                .iter()
                .map(|k| format!("t.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ");
            let del = format!("DELETE FROM {}{} t WHERE {spare}", meta.only, t.name.sql());
            let sql = match md {
                Some(mid) => format!(
                    "WITH gone AS ({del} RETURNING {k}) INSERT INTO capra.delta_{mid} ({}) SELECT * FROM gone",
                    meta.keycols
                        .iter()
                        .map(|k| quote_ident(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => del,
            };
            tx.execute(&sql, &[])
                .ctx(|| format!("replaying a TRUNCATE of {} on \"{db}\"", t.name.human()))?;
        }
        None => {
            truncate_or_delete(tx, db, t, meta, "truncate")?;
            if let Some(mid) = md {
                tx.execute("INSERT INTO capra.truncate_log (captured) VALUES ($1)", &[&mid])
                    .ctx(|| format!("logging a TRUNCATE of {} on \"{db}\" (makedelta)", t.name.human()))?;
            }
        }
    }
    Ok(())
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

/// Each table's live column names and types on the source, in one round
/// trip: when it differs from what a run learned before (a column added,
/// dropped or retyped), the table's shape is learned again, so no stale
/// column list survives DDL.
fn column_signatures(stx: &mut Transaction<'_>, tables: &[Relation]) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = tables.iter().map(|t| t.name.sql()).collect();
    let rows = stx
        .query(
            "SELECT coalesce((SELECT string_agg(a.attname || ':' || a.atttypid, ',' ORDER BY a.attnum)
                                FROM pg_catalog.pg_attribute a
                               WHERE a.attrelid = to_regclass(n.name) AND a.attnum > 0 AND NOT a.attisdropped), '')
               FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i) ORDER BY n.i",
            &[&names],
        )
        .ctx(|| "reading the tables' columns on the source".into())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Learns once per controller (and after DDL) which of the plan's tables are
/// partitioned on the source, then on every run follows their partitions
/// before the snapshot: new partitions get a TRUNCATE trigger, and rows
/// that came or went with an ATTACH or DETACH are logged as changes.
fn follow_partitions(conn: &mut Conn, plan: &SyncPlan, cache: &mut RunCache, db: &str) -> Result<()> {
    if !cache.partitioned.contains_key(db) {
        let names: Vec<String> = plan.tables.iter().map(|t| t.name.sql()).collect();
        let found = conn
            .query(
                "SELECT n.i::int FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
                   JOIN pg_catalog.pg_class c ON c.oid = to_regclass(n.name) WHERE c.relkind = 'p'",
                &[&names],
            )
            .ctx(|| format!("looking for partitioned tables on \"{db}\""))?;
        cache.partitioned.insert(
            db.to_string(),
            found
                .iter()
                .map(|r| plan.tables[r.get::<_, i32>(0) as usize - 1].name.clone())
                .collect(),
        );
    }
    let parts = cache.partitioned.get(db).cloned().unwrap_or_default();
    for t in &parts {
        // Two steps: TRUNCATE triggers for new partitions first (DDL, a
        // short lock), then the keys of partitions that came or went are
        // logged without blocking the application's writes to them.
        for triggers_only in [true, false] {
            let mut tx = conn
                .transaction()
                .ctx(|| format!("following the partitions of {} on \"{db}\"", t.human()))?;
            tx.batch_execute("SET LOCAL lock_timeout = '5s'")
                .ctx(|| "setting a lock timeout".into())?;
            let id: Option<i32> = tx
                .query_opt(
                    "SELECT id FROM capra.captured WHERE schemaname = $1 AND relname = $2",
                    &[&t.schema, &t.name],
                )
                .ctx(|| "reading capture".into())?
                .map(|r| r.get(0));
            let Some(id) = id else { break };
            let moved = crate::capture::install::cover_partitions(&mut tx, id, t, true, triggers_only)?;
            tx.commit()
                .ctx(|| format!("following the partitions of {} on \"{db}\"", t.human()))?;
            if moved > 0 {
                tracing::info!(
                    "{moved} partition(s) of {} attached, detached or dropped on \"{db}\"; their rows replicate as changes",
                    t.human()
                );
            }
        }
    }
    Ok(())
}

/// After a partition of `t` was truncated or dropped on a source: deletes
/// on each receiver every row whose key that source no longer has. The
/// source's keys stream into a temporary table on each receiver (COPY), so
/// this is exact whatever partitions the receivers have. `spare` keeps a
/// receiving source's own recent changes; `md` logs what was deleted.
#[allow(clippy::too_many_arguments)]
fn delete_missing(
    stx: &mut Transaction<'_>,
    txs: &mut [Transaction<'_>],
    names: &[String],
    idx: &[usize],
    t: &Relation,
    meta: &TableMeta,
    spare: &[Option<String>],
    md: &[Option<i32>],
) -> Result<u64> {
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let keys = qk.join(", ");
    for &i in idx {
        txs[i]
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.capra_keys; CREATE TEMP TABLE capra_keys ON COMMIT DROP AS SELECT {keys} FROM {}{} WITH NO DATA",
                meta.only,
                t.name.sql()
            ))
            .ctx(|| format!("preparing to compare keys of {} on \"{}\"", t.name.human(), names[i]))?;
    }
    let q = format!("COPY (SELECT {keys} FROM {}{}) TO STDOUT", meta.only, t.name.sql());
    let dests: Vec<(usize, String)> = idx
        .iter()
        .map(|i| (*i, format!("COPY pg_temp.capra_keys ({keys}) FROM STDIN")))
        .collect();
    pipe(stx, &q, txs, &dests, names, &t.name.human())?;
    let mut deleted = 0;
    for &i in idx {
        let mut del = format!(
            "DELETE FROM {}{} t WHERE NOT EXISTS (SELECT 1 FROM pg_temp.capra_keys k WHERE ({}) = ({}))",
            meta.only,
            t.name.sql(),
            qk.iter().map(|k| format!("k.{k}")).collect::<Vec<_>>().join(", "),
            qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ")
        );
        if let Some(s) = &spare[i] {
            del.push_str(&format!(" AND {s}"));
        }
        if let Some(mid) = md[i] {
            del = format!(
                "WITH gone AS ({del} RETURNING {}) INSERT INTO capra.delta_{mid} ({keys}) SELECT * FROM gone",
                qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ")
            );
        }
        deleted += txs[i].execute(&del, &[]).ctx(|| {
            format!(
                "deleting rows of {} the source no longer has on \"{}\"",
                t.name.human(),
                names[i]
            )
        })?;
        txs[i]
            .batch_execute("DROP TABLE pg_temp.capra_keys")
            .ctx(|| "dropping the key table".into())?;
    }
    Ok(deleted)
}

/// rebuild_index: switches a table's index maintenance off before a full
/// load and back on after it (a REINDEX follows); needs a superuser.
fn set_indexes(tx: &mut Transaction<'_>, db: &str, t: &Relation, on: bool) -> Result<()> {
    tx.execute(
        "UPDATE pg_catalog.pg_class SET relhasindex = $2 WHERE oid = $1::text::regclass",
        &[&t.name.sql(), &on],
    )
    .ctx(|| {
        format!(
            "switching the indexes of {} {} on \"{db}\" (rebuild_index needs a superuser)",
            t.name.human(),
            if on { "back on" } else { "off" }
        )
    })?;
    Ok(())
}

/// TRUNCATE (falling back to DELETE when foreign keys forbid it) or DELETE;
/// returns rows deleted (0 for a truncate).
fn truncate_or_delete(tx: &mut Transaction<'_>, db: &str, t: &Relation, meta: &TableMeta, method: &str) -> Result<u64> {
    if method != "delete" {
        let cascade = if method == "truncate_cascade" { " CASCADE" } else { "" };
        let mut sp = tx.savepoint("capra_truncate").ctx(|| "savepoint".into())?;
        match sp.batch_execute(&format!("TRUNCATE {}{}{cascade}", meta.only, t.name.sql())) {
            Ok(()) => {
                sp.commit().ctx(|| "savepoint".into())?;
                return Ok(0);
            }
            Err(e) => {
                tracing::debug!(
                    "TRUNCATE of {} on {db} failed ({}); using DELETE",
                    t.name.human(),
                    crate::pg::error::describe(&e)
                );
                drop(sp);
            }
        }
    }
    tx.execute(&format!("DELETE FROM {}{}", meta.only, t.name.sql()), &[])
        .ctx(|| format!("emptying {} on \"{db}\"", t.name.human()))
}

/// Sends the keys a source won (`keys_sql`, over its change log `d`) to
/// the receivers: a target has the keys deleted (in chunks) and their
/// current rows copied in; a receiving source gets keys and rows staged,
/// applied later by [`finish_source`].
#[allow(clippy::too_many_arguments)]
fn apply_from(
    env: &RunEnv<'_>,
    stx: &mut Transaction<'_>,
    txs: &mut [Transaction<'_>],
    names: &[String],
    kinds: &[Recv],
    recv: &[usize],
    t: &Relation,
    meta: &TableMeta,
    keys_sql: &str,
    from: i32,
    md: &[Option<i32>],
    staged: &mut BTreeSet<usize>,
    tr: &mut TableReport,
) -> Result<()> {
    if recv.is_empty() {
        return Ok(());
    }
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let keys = qk.join(", ");
    for &i in recv {
        if matches!(kinds[i], Recv::Source(_)) && staged.insert(i) {
            stage_tables(&mut txs[i], &names[i], t, meta)?;
        }
    }
    // Per receiver: what each chunk of keys does there.
    let mut stmts = Vec::new();
    for &i in recv {
        let types = &meta.key_types[&names[i]];
        let mut sqls = Vec::new();
        if matches!(kinds[i], Recv::Source(_)) {
            sqls.push((
                format!(
                    "INSERT INTO pg_temp.capra_in_keys ({keys}, capra_from) {}",
                    unnest_select(types, Some(&format!("{from}")))
                ),
                false,
            ));
        } else {
            let del = if qk.len() == 1 {
                format!(
                    "DELETE FROM {}{} WHERE {} = ANY ($1::text[]::{}[])",
                    meta.only,
                    t.name.sql(),
                    qk[0],
                    types[0]
                )
            } else {
                let sel: Vec<String> = types
                    .iter()
                    .enumerate()
                    .map(|(j, ty)| format!("(${}::text[])[s.i]::{ty}", j + 1))
                    .collect();
                format!(
                    "DELETE FROM {}{} WHERE ({}) IN (SELECT {} FROM generate_subscripts($1::text[], 1) AS s(i))",
                    meta.only,
                    t.name.sql(),
                    keys,
                    sel.join(", ")
                )
            };
            sqls.push((del, true));
            if let Some(mid) = md[i] {
                sqls.push((
                    format!("INSERT INTO capra.delta_{mid} ({keys}) {}", unnest_select(types, None)),
                    false,
                ));
            }
        }
        for (sql, counts) in sqls {
            let stmt = txs[i]
                .prepare(&sql)
                .ctx(|| format!("preparing to apply {} on \"{}\"", t.name.human(), names[i]))?;
            stmts.push((i, stmt, counts));
        }
    }
    let text_keys: Vec<String> = qk.iter().map(|k| format!("{k}::text")).collect();
    let portal = stx
        .bind(
            format!("SELECT {} FROM ({keys_sql}) k", text_keys.join(", ")).as_str(),
            &[],
        )
        .ctx(|| format!("reading changed keys of {}", t.name.human()))?;
    loop {
        let rows = stx
            .query_portal(&portal, env.chunk as i32)
            .ctx(|| format!("reading changed keys of {}", t.name.human()))?;
        if rows.is_empty() {
            break;
        }
        tr.keys += rows.len() as u64;
        let cols: Vec<Vec<String>> = (0..qk.len())
            .map(|j| rows.iter().map(|r| r.get::<_, String>(j)).collect())
            .collect();
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            cols.iter().map(|c| c as &(dyn postgres::types::ToSql + Sync)).collect();
        for (i, stmt, counts) in &stmts {
            let n = txs[*i]
                .execute(stmt, &params[..stmt.params().len()])
                .ctx(|| format!("applying changed rows of {} on \"{}\"", t.name.human(), names[*i]))?;
            if *counts {
                tr.deleted += n;
            }
        }
        if rows.len() < env.chunk {
            break;
        }
    }
    drop(portal);
    // Keys whose row no longer matches the filter were deleted above and
    // are not copied: a row that stops matching leaves the receivers.
    let q = format!(
        "COPY (SELECT {} FROM {}{} WHERE ({}) IN ({keys_sql}){}) TO STDOUT",
        meta.cols,
        meta.only,
        t.name.sql(),
        keys,
        t.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default()
    );
    let dests: Vec<(usize, String)> = recv
        .iter()
        .map(|i| {
            let into = if matches!(kinds[*i], Recv::Source(_)) {
                "pg_temp.capra_in_rows".to_string()
            } else {
                t.name.sql()
            };
            (*i, format!("COPY {into} ({}) FROM STDIN", meta.cols))
        })
        .collect();
    let counts = pipe(stx, &q, txs, &dests, names, &t.name.human())?;
    for ((i, _), n) in dests.iter().zip(counts) {
        if !matches!(kinds[*i], Recv::Source(_)) {
            tr.copied += n;
        }
    }
    Ok(())
}

/// Creates the staging tables on a receiving source: the keys to apply
/// (with the index of the source that won them) and their rows.
fn stage_tables(tx: &mut Transaction<'_>, db: &str, t: &Relation, meta: &TableMeta) -> Result<()> {
    let keys = meta
        .keycols
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.capra_in_keys, pg_temp.capra_in_rows;
         CREATE TEMP TABLE capra_in_keys ON COMMIT DROP AS SELECT {keys}, 0::integer AS capra_from FROM {only}{tbl} WITH NO DATA;
         CREATE TEMP TABLE capra_in_rows ON COMMIT DROP AS SELECT {cols} FROM {only}{tbl} WITH NO DATA",
        only = meta.only,
        tbl = t.name.sql(),
        cols = meta.cols
    ))
    .ctx(|| format!("preparing to apply {} on \"{db}\"", t.name.human()))
}

/// Writes rows composed by a conflict hook to every receiver.
#[allow(clippy::too_many_arguments)]
fn apply_merged(
    txs: &mut [Transaction<'_>],
    names: &[String],
    kinds: &[Recv],
    recv: &[usize],
    t: &Relation,
    meta: &TableMeta,
    merged: &[(Vec<String>, serde_json::Value)],
    md: &[Option<i32>],
    staged: &mut BTreeSet<usize>,
    tr: &mut TableReport,
) -> Result<()> {
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let keys = qk.join(", ");
    for &i in recv {
        let types = &meta.key_types[&names[i]];
        let cond: Vec<String> = qk
            .iter()
            .zip(types)
            .enumerate()
            .map(|(j, (k, ty))| format!("{k} = ${}::text::{ty}", j + 1))
            .collect();
        let keyvals: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(j, ty)| format!("${}::text::{ty}", j + 1))
            .collect();
        // Key statements bind the key ($1..), row statements the row ($1).
        let mut sqls: Vec<(String, bool)> = Vec::new();
        let from_json = format!(
            "SELECT {c} FROM json_populate_record(NULL::{tbl}, $1::text::json)",
            c = meta.cols,
            tbl = t.name.sql()
        );
        if matches!(kinds[i], Recv::Source(_)) {
            if staged.insert(i) {
                stage_tables(&mut txs[i], &names[i], t, meta)?;
            }
            sqls.push((
                format!(
                    "INSERT INTO pg_temp.capra_in_keys ({keys}, capra_from) VALUES ({}, -1)",
                    keyvals.join(", ")
                ),
                true,
            ));
            sqls.push((
                format!("INSERT INTO pg_temp.capra_in_rows ({}) {from_json}", meta.cols),
                false,
            ));
        } else {
            sqls.push((
                format!("DELETE FROM {}{} WHERE {}", meta.only, t.name.sql(), cond.join(" AND ")),
                true,
            ));
            sqls.push((
                format!("INSERT INTO {} ({}) {from_json}", t.name.sql(), meta.cols),
                false,
            ));
            if let Some(mid) = md[i] {
                sqls.push((
                    format!("INSERT INTO capra.delta_{mid} ({keys}) VALUES ({})", keyvals.join(", ")),
                    true,
                ));
            }
        }
        for (key, row) in merged {
            let text = row.to_string();
            for (sql, by_key) in &sqls {
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> = if *by_key {
                    key.iter().map(|k| k as &(dyn postgres::types::ToSql + Sync)).collect()
                } else {
                    vec![&text]
                };
                txs[i]
                    .execute(sql.as_str(), &params)
                    .ctx(|| format!("writing a merged row of {} on \"{}\"", t.name.human(), names[i]))?;
            }
            if !matches!(kinds[i], Recv::Source(_)) {
                tr.copied += 1;
            }
        }
    }
    tr.keys += merged.len() as u64;
    Ok(())
}

/// Applies what was staged on a receiving source: locks the rows, reads
/// its change log again for keys the application changed there after this
/// run's snapshot (late changes) and settles each as a conflict, then
/// updates existing rows in place, deletes rows the winner no longer has
/// and inserts new ones.
#[allow(clippy::too_many_arguments)]
fn finish_source(
    st: &mut Settle<'_, '_>,
    srcs: &mut [Src<'_>],
    tx: &mut Transaction<'_>,
    db: &str,
    x: usize,
    t: &Relation,
    meta: &TableMeta,
    md: Option<i32>,
    tr: &mut TableReport,
) -> Result<Vec<(i32, Vec<String>)>> {
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let keys = qk.join(", ");
    let on = |a: &str, b: &str| {
        qk.iter()
            .map(|k| format!("{a}.{k} = {b}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let tbl = format!("{}{}", meta.only, t.name.sql());
    // Lock the rows about to change, skipping those the application holds
    // right now: capra never waits for the application's row locks, so it
    // can never deadlock with it. A skipped key is sent again by the next
    // run (its winner logs it once more); by then the application's
    // transaction has ended and its change, if any, is in the log.
    let cols_t = qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.capra_locked; CREATE TEMP TABLE capra_locked ON COMMIT DROP AS SELECT {keys} FROM {tbl} WITH NO DATA"
    ))
    .ctx(|| "preparing to lock rows".into())?;
    tx.execute(
        &format!(
            "WITH l AS (SELECT {cols_t} FROM {tbl} t WHERE EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})
                          FOR NO KEY UPDATE OF t SKIP LOCKED)
             INSERT INTO pg_temp.capra_locked SELECT * FROM l",
            on("k", "t")
        ),
        &[],
    )
    .ctx(|| format!("locking the rows of {} about to change on \"{db}\"", t.name.human()))?;
    let busy_rows = tx
        .query(
            &format!(
                "DELETE FROM pg_temp.capra_in_keys k
                  WHERE EXISTS (SELECT 1 FROM {tbl} t WHERE {})
                    AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})
              RETURNING {}, k.capra_from",
                on("t", "k"),
                on("l", "k"),
                qk.iter().map(|k| format!("k.{k}::text")).collect::<Vec<_>>().join(", ")
            ),
            &[],
        )
        .ctx(|| {
            format!(
                "setting aside rows of {} held by the application on \"{db}\"",
                t.name.human()
            )
        })?;
    let mut busy: Vec<(i32, Vec<String>)> = Vec::new();
    if !busy_rows.is_empty() {
        let n = qk.len();
        for r in &busy_rows {
            busy.push((r.get(n), (0..n).map(|j| r.get::<_, String>(j)).collect()));
        }
        tx.execute(
            &format!(
                "DELETE FROM pg_temp.capra_in_rows s WHERE NOT EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})",
                on("k", "s")
            ),
            &[],
        )
        .ctx(|| "setting aside staged rows".into())?;
        tracing::debug!(
            "{} row(s) of {} on \"{db}\" are locked by the application; the next run sends them again",
            busy.len(),
            t.name.human()
        );
    }
    // Late changes: logged here after this run's snapshot of this source.
    if let (Some(id), true) = (srcs[x].id_of(t), srcs[x].prev_lit.is_some()) {
        let cur = snapshot_literal(&srcs[x].cur)?;
        let time = srcs[x].time_expr();
        let late = tx
            .query(
                &format!(
                    "SELECT {}, k.capra_from, {time} FROM pg_temp.capra_in_keys k JOIN capra.delta_{id} d ON {}
                      WHERE d.txid >= txid_snapshot_xmin({cur}) AND NOT txid_visible_in_snapshot(d.txid, {cur})
                        AND d.txid <> txid_current()
                      GROUP BY {}, k.capra_from",
                    qk.iter().map(|k| format!("k.{k}::text")).collect::<Vec<_>>().join(", "),
                    on("d", "k"),
                    qk.iter().map(|k| format!("k.{k}")).collect::<Vec<_>>().join(", ")
                ),
                &[],
            )
            .ctx(|| format!("looking for late changes of {} on \"{db}\"", t.name.human()))?;
        let types = meta.key_types[db].clone();
        let n = qk.len();
        for r in late {
            let key: Vec<String> = (0..n).map(|j| r.get::<_, String>(j)).collect();
            let from: i32 = r.get(n);
            let late_at: Option<f64> = r.get(n + 1);
            tr.conflicts += 1;
            let mine = Contender {
                src: x,
                db: db.to_string(),
                at: late_at,
            };
            let decision = if from < 0 {
                // Against a row a hook composed: the later change stands.
                let rec = Record {
                    table: t.name.human(),
                    key: meta
                        .keycols
                        .iter()
                        .zip(&key)
                        .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
                        .collect(),
                    contenders: vec![mine],
                    winner: db.to_string(),
                    reason: "changed again after a merged row was decided".into(),
                };
                st.env.conflicts.borrow_mut().push(rec);
                Decision::Winner(x)
            } else {
                let w = from as usize;
                let wtypes = meta.key_types.get(&srcs[w].db.name).cloned().unwrap_or_default();
                let w_at: Option<f64> = match srcs[w].id_of(t) {
                    Some(wid) => {
                        let cond: Vec<String> = qk
                            .iter()
                            .zip(&wtypes)
                            .enumerate()
                            .map(|(j, (k, ty))| format!("d.{k} = ${}::text::{ty}", j + 1))
                            .collect();
                        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                            key.iter().map(|k| k as &(dyn postgres::types::ToSql + Sync)).collect();
                        let s = &mut srcs[w];
                        let q = format!(
                            "SELECT {} FROM capra.delta_{wid} d WHERE {} AND {}",
                            s.time_expr(),
                            s.window(),
                            cond.join(" AND ")
                        );
                        s.tx.query_one(&q, &params)
                            .ctx(|| format!("reading a change time on \"{}\"", s.db.name))?
                            .get(0)
                    }
                    None => None,
                };
                let theirs = Contender {
                    src: w,
                    db: srcs[w].db.name.clone(),
                    at: w_at,
                };
                let mut rows = || -> Result<Vec<(String, Option<serde_json::Value>)>> {
                    let wname = srcs[w].db.name.clone();
                    Ok(vec![
                        (wname, row_json(&mut srcs[w].tx, t, meta, &wtypes, &key)?),
                        (db.to_string(), row_json(tx, t, meta, &types, &key)?),
                    ])
                };
                st.settle(
                    t,
                    meta,
                    &key,
                    vec![theirs, mine],
                    &mut rows,
                    Some(&format!("changed on {db} while this run applied it")),
                )?
            };
            let cond: Vec<String> = qk
                .iter()
                .zip(&types)
                .enumerate()
                .map(|(j, (k, ty))| format!("{k} = ${}::text::{ty}", j + 1))
                .collect();
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                key.iter().map(|k| k as &(dyn postgres::types::ToSql + Sync)).collect();
            let keep_mine = match &decision {
                Decision::Winner(w) => *w == x,
                Decision::Skip => true,
                Decision::Merge(_) | Decision::Abort => false,
            };
            if keep_mine || matches!(decision, Decision::Merge(_)) {
                tx.execute(
                    &format!("DELETE FROM pg_temp.capra_in_rows WHERE {}", cond.join(" AND ")),
                    &params,
                )
                .ctx(|| "dropping a staged row".into())?;
            }
            if keep_mine {
                tx.execute(
                    &format!("DELETE FROM pg_temp.capra_in_keys WHERE {}", cond.join(" AND ")),
                    &params,
                )
                .ctx(|| "dropping a staged key".into())?;
            }
            if let Decision::Merge(row) = &decision {
                let text = row.to_string();
                tx.execute(
                    &format!(
                        "INSERT INTO pg_temp.capra_in_rows ({c}) SELECT {c} FROM json_populate_record(NULL::{tbl}, $1::text::json)",
                        c = meta.cols,
                        tbl = t.name.sql()
                    ),
                    &[&text],
                )
                .ctx(|| "staging a merged row".into())?;
            }
        }
    }
    // Apply: in place where the row exists (an application UPDATE queued on
    // the lock then applies on top of it), delete what the winner lacks,
    // insert what is new.
    if !meta.nonkey.is_empty() {
        let set: Vec<String> = meta
            .nonkey
            .iter()
            .map(|c| format!("{0} = s.{0}", quote_ident(c)))
            .collect();
        tr.copied += tx
            .execute(
                &format!(
                    "UPDATE {tbl} t SET {} FROM pg_temp.capra_in_rows s WHERE {}",
                    set.join(", "),
                    on("t", "s")
                ),
                &[],
            )
            .ctx(|| format!("updating rows of {} on \"{db}\"", t.name.human()))?;
    }
    tr.deleted += tx
        .execute(
            &format!(
                "DELETE FROM {tbl} t USING pg_temp.capra_in_keys k WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_in_rows s WHERE {})",
                on("t", "k"),
                on("s", "t")
            ),
            &[],
        )
        .ctx(|| format!("deleting rows of {} on \"{db}\"", t.name.human()))?;
    tr.copied += tx
        .execute(
            &format!(
                "INSERT INTO {} ({c}) SELECT {c} FROM pg_temp.capra_in_rows s WHERE NOT EXISTS (SELECT 1 FROM {tbl} t WHERE {})",
                t.name.sql(),
                on("t", "s"),
                c = meta.cols
            ),
            &[],
        )
        .ctx(|| format!("inserting rows of {} on \"{db}\"", t.name.human()))?;
    if let Some(mid) = md {
        tx.execute(
            &format!("INSERT INTO capra.delta_{mid} ({keys}) SELECT {keys} FROM pg_temp.capra_in_keys"),
            &[],
        )
        .ctx(|| format!("logging the rows of {} applied on \"{db}\" (makedelta)", t.name.human()))?;
    }
    tx.batch_execute("DROP TABLE pg_temp.capra_in_keys, pg_temp.capra_in_rows, pg_temp.capra_locked")
        .ctx(|| "dropping the staging tables".into())?;
    Ok(busy)
}

/// Logs keys once more on a source, in its read transaction (so they are
/// after the position this run stores): the next run sends them again.
/// The change time kept is the one the source logged, where it has one.
fn reraise(s: &mut Src<'_>, t: &Relation, meta: &TableMeta, keys: &[Vec<String>]) -> Result<()> {
    let Some(id) = s.id_of(t) else { return Ok(()) };
    let types = meta.key_types.get(&s.db.name).cloned().unwrap_or_default();
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let arrays: Vec<Vec<String>> = (0..qk.len())
        .map(|j| keys.iter().map(|k| k[j].clone()).collect())
        .collect();
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = arrays
        .iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect();
    let names: Vec<String> = (1..=qk.len()).map(|j| format!("a{j}")).collect();
    let eq: Vec<String> = qk.iter().zip(&names).map(|(k, a)| format!("d.{k} = u.{a}")).collect();
    let sql = format!(
        "INSERT INTO capra.delta_{id} ({}, ts)
         SELECT u.*, coalesce((SELECT max(d.ts) FROM capra.delta_{id} d WHERE {} AND {}), statement_timestamp())
           FROM ({}) AS u({})",
        qk.join(", "),
        s.window(),
        eq.join(" AND "),
        unnest_select(&types, None),
        names.join(", ")
    );
    s.tx.execute(&sql, &params)
        .ctx(|| format!("logging keys of {} again on \"{}\"", t.name.human(), s.db.name))?;
    Ok(())
}
