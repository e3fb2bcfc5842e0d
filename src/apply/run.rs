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

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use postgres::{IsolationLevel, Transaction};
use serde::Serialize;

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
}

/// Per-sync memory kept between runs: table shapes and the sequence values
/// already applied.
#[derive(Default)]
pub struct RunCache {
    meta: HashMap<i32, TableMeta>,
    /// The plan's partitioned tables on the source (learned once).
    partitioned: Option<Vec<crate::pg::ident::QualName>>,
    /// The change logs the last run read, locked with the tables before
    /// the next snapshot (a log rewritten after it would look empty).
    logs: Vec<i32>,
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
        self.partitioned = None;
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
}

/// Runs a sync once.
pub fn run(env: &RunEnv<'_>, plan: &SyncPlan, cache: &mut RunCache) -> Result<RunReport> {
    let started = Instant::now();
    let name = plan.name().to_string();
    if plan.sources.len() != 1 {
        return Err(Error::Rejected(format!(
            "sync \"{name}\" has {} source databases; multi-master runs are not available in this capra release (the catalog accepts them so they can be set up ahead)",
            plan.sources.len()
        )));
    }
    let src_db = &plan.sources[0];
    let otc = plan.sync.onetimecopy;
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

    // --- the source, in one snapshot -------------------------------------------
    let mut src_conn = env.pools.get(src_db)?;
    env.cancel.register(&src_conn)?;
    if plan.is_delta() && !plan.targets.is_empty() {
        follow_partitions(&mut src_conn, plan, cache, &src_db.name)?;
    }
    let iso = if env.isolation == "serializable" {
        IsolationLevel::Serializable
    } else {
        IsolationLevel::RepeatableRead
    };
    let mut stx = src_conn
        .build_transaction()
        .isolation_level(iso)
        .start()
        .ctx(|| format!("starting the read transaction on \"{}\"", src_db.name))?;
    // Keys and rows travel as text: make that text mean the same on every
    // server whatever its defaults (ISO dates parse under any DateStyle;
    // floats round-trip exactly). Then take ACCESS SHARE locks on every
    // table the run reads, before the snapshot (neither SET nor LOCK takes
    // it): a table rewritten by ALTER ... TYPE, VACUUM FULL or CLUSTER
    // after the snapshot would otherwise look empty to this run. The locks
    // never block writers; DDL waits at most for the run, the run waits at
    // most lock_timeout for DDL and is then retried.
    let mut setup = format!("{TEXT_FORMATS}; SET LOCAL lock_timeout = {}", env.lock_timeout_ms);
    if !plan.tables.is_empty() {
        let mut names: Vec<String> = plan.tables.iter().map(|t| t.name.sql()).collect();
        if plan.is_delta() && !plan.targets.is_empty() {
            names.extend(cache.logs.iter().map(|id| crate::capture::install::delta_table(*id)));
            if !cache.logs.is_empty() {
                names.push("capra.truncate_log".into());
            }
        }
        setup.push_str(&format!("; LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", ")));
    }
    stx.batch_execute(&setup)
        .ctx(|| format!("locking the tables of sync \"{name}\" on \"{}\"", src_db.name))?;
    let delta = plan.is_delta();
    let (cur, prev): (String, Option<String>) = if delta {
        let row = stx
            .query_opt(
                "SELECT txid_current_snapshot()::text, c.snapshot::text,
                        txid_snapshot_xmin(c.snapshot) > txid_snapshot_xmax(txid_current_snapshot())
                   FROM capra.consumer c
                  WHERE c.installation = $1 AND c.sync = $2 FOR UPDATE",
                &[&env.installation, &name],
            )
            .ctx(|| format!("reading sync \"{name}\"'s position on \"{}\"", src_db.name))?;
        match row {
            Some(r) if r.get::<_, bool>(2) && otc != 1 => {
                return Err(Error::Rejected(format!(
                    "sync \"{name}\" has applied changes up to transaction {} on \"{}\", but that database is only at {} (restored from a backup, or a different server?); its change log cannot be trusted: run 'capra update sync {name} onetimecopy=1' for a full copy, after which the sync follows the database from now on",
                    r.get::<_, String>(1).split(':').next().unwrap_or("?"),
                    src_db.name,
                    r.get::<_, String>(0).split(':').nth(1).unwrap_or("?"),
                )))
            }
            Some(r) => (r.get(0), Some(r.get(1))),
            None => {
                return Err(Error::Rejected(format!(
                    "change capture for sync \"{name}\" is not installed on \"{}\"; run: capra activate {name}",
                    src_db.name
                )))
            }
        }
    } else {
        let r = stx
            .query_one("SELECT txid_current_snapshot()::text", &[])
            .ctx(|| format!("reading a snapshot on \"{}\"", src_db.name))?;
        (r.get(0), None)
    };

    // Which tables changed (and which were truncated) since the consumer snapshot.
    // (schema, table) -> (captured id, the key columns its log was built with)
    let mut captured: HashMap<(String, String), (i32, Vec<String>)> = HashMap::new();
    let mut changed: BTreeSet<i32> = BTreeSet::new();
    let mut truncated: BTreeSet<i32> = BTreeSet::new();
    // Tables one of whose partitions was truncated (or dropped).
    let mut parts_truncated: BTreeSet<i32> = BTreeSet::new();
    // Tables to copy whole to every target (capture lost their key).
    let mut recopy: BTreeSet<i32> = BTreeSet::new();
    let prev_lit = match &prev {
        Some(p) => Some(snapshot_literal(p)?),
        None => None,
    };
    if let (Some(prev_lit), false) = (&prev_lit, plan.targets.is_empty()) {
        for r in stx
            .query("SELECT id, schemaname, relname, keycols FROM capra.captured", &[])
            .ctx(|| "reading captured tables".into())?
        {
            captured.insert((r.get(1), r.get(2)), (r.get(0), r.get(3)));
        }
        // The tables this sync captures, in this run's own snapshot: a table
        // added to the sync since the plan was read must not have its
        // changes skipped by moving the position past them.
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
            .filter_map(|t| captured.get(&(t.name.schema.clone(), t.name.name.clone())).map(|c| c.0))
            .collect();
        cache.logs = planned.clone();
        let extra: Vec<i32> = mine.iter().filter(|id| !planned.contains(id)).copied().collect();
        if !extra.is_empty() {
            let what: Vec<String> = extra
                .iter()
                .map(|id| {
                    captured
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
                    src_db.name
                ),
                extra,
            });
        }
        let mut parts = Vec::new();
        for t in &plan.tables {
            let id = captured
                .get(&(t.name.schema.clone(), t.name.name.clone()))
                .map(|c| c.0)
                .ok_or_else(|| {
                    Error::Rejected(format!(
                        "table {} of sync \"{name}\" is not captured on \"{}\"; run: capra activate {name}",
                        t.name.human(),
                        src_db.name
                    ))
                })?;
            parts.push(format!(
                "SELECT {id} WHERE EXISTS (SELECT 1 FROM capra.delta_{id} WHERE txid >= txid_snapshot_xmin({prev_lit}) AND NOT txid_visible_in_snapshot(txid, {prev_lit}))"
            ));
        }
        if !parts.is_empty() {
            for r in stx
                .query(parts.join(" UNION ALL ").as_str(), &[])
                .ctx(|| format!("looking for changes on \"{}\"", src_db.name))?
            {
                changed.insert(r.get(0));
            }
        }
        for r in stx
            .query(
                &format!(
                    "SELECT DISTINCT captured, part FROM capra.truncate_log WHERE txid >= txid_snapshot_xmin({prev_lit}) AND NOT txid_visible_in_snapshot(txid, {prev_lit})"
                ),
                &[],
            )
            .ctx(|| "reading truncations".into())?
        {
            match r.get::<_, Option<String>>(1).as_deref() {
                None => truncated.insert(r.get(0)),
                // Capture lost the key (a key column was dropped): only a
                // full copy is exact.
                Some("*") => recopy.insert(r.get(0)),
                Some(_) => parts_truncated.insert(r.get(0)),
            };
        }
    }

    // Sequence values on the source, to compare with what was applied.
    let seq_src = read_sequences(&mut stx, &plan.sequences)?;
    let written: Vec<&Db> = plan.targets.iter().chain(&plan.fullcopy).collect();
    let seq_dirty: Vec<usize> = (0..plan.sequences.len())
        .filter(|i| {
            written
                .iter()
                .any(|d| cache.seqs.get(&(plan.sequences[*i].id, d.name.clone())) != Some(&seq_src[*i]))
        })
        .collect();

    let nothing = changed.is_empty()
        && truncated.is_empty()
        && parts_truncated.is_empty()
        && recopy.is_empty()
        && plan.fullcopy.is_empty()
        && plan.behind.is_empty()
        && otc == 0
        && seq_dirty.is_empty();
    if nothing {
        // Nothing changed between the stored position and this snapshot,
        // so moving the position forward skips nothing; doing it now and
        // then keeps an idle sync from holding back purges.
        if delta && !plan.targets.is_empty() && cache.last_advance.is_none_or(|t| t.elapsed() >= IDLE_ADVANCE) {
            stx.execute(
                "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, updated = now() WHERE installation = $1 AND sync = $2",
                &[&env.installation, &name, &cur],
            )
            .ctx(|| format!("recording sync \"{name}\"'s position on \"{}\"", src_db.name))?;
            stx.commit().ctx(|| format!("committing on \"{}\"", src_db.name))?;
            cache.last_advance = Some(Instant::now());
        } else {
            drop(stx);
        }
        report.empty = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // --- the targets ----------------------------------------------------------
    let mut conns: Vec<(Db, Conn)> = Vec::new();
    for d in &written {
        let c = env.pools.get(d)?;
        env.cancel.register(&c)?;
        conns.push(((*d).clone(), c));
    }
    let mut names: Vec<String> = Vec::new();
    let mut txs: Vec<Transaction<'_>> = Vec::new();
    for (d, c) in conns.iter_mut() {
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
        names.push(d.name.clone());
        txs.push(tx);
    }
    let n_targets = plan.targets.len();
    let signatures = column_signatures(&mut stx, &plan.tables)?;

    for (t, sig) in plan.tables.iter().zip(&signatures) {
        // Deltas use the key the change log was built with (after a key
        // change it stays the old one until that log is drained).
        let cap = captured.get(&(t.name.schema.clone(), t.name.name.clone())).cloned();
        let keycols = cap.as_ref().map(|c| c.1.clone()).unwrap_or_else(|| t.pkey.clone());
        let id = cap.map(|c| c.0);
        let meta = table_meta(cache, &mut stx, &mut txs, &names, t, &keycols, sig)?;
        // Decide per written database how it gets this table.
        let mut modes: Vec<Mode> = Vec::new();
        for (i, tx) in txs.iter_mut().enumerate() {
            let mode = if i >= n_targets
                || otc == 1
                || plan.behind.contains(&names[i])
                || id.is_some_and(|id| recopy.contains(&id))
            {
                Mode::Copy
            } else if otc == 2 {
                let empty: bool = tx
                    .query_one(
                        &format!("SELECT NOT EXISTS (SELECT 1 FROM {}{})", meta.only, t.name.sql()),
                        &[],
                    )
                    .ctx(|| format!("checking whether {} is empty on \"{}\"", t.name.human(), names[i]))?
                    .get(0);
                if empty {
                    Mode::Copy
                } else {
                    Mode::Delta
                }
            } else {
                Mode::Delta
            };
            modes.push(mode);
        }
        let mut tr = TableReport {
            table: t.name.human(),
            ..Default::default()
        };
        // Full copies.
        let copy_idx: Vec<usize> = (0..txs.len()).filter(|i| modes[*i] == Mode::Copy).collect();
        if !copy_idx.is_empty() && !t.ghost {
            let rebuild = t.rebuild_index.unwrap_or(plan.sync.rebuild_index) == 1;
            for &i in &copy_idx {
                tr.deleted += truncate_or_delete(&mut txs[i], &names[i], t, meta, &plan.sync.deletemethod)?;
                if rebuild {
                    set_indexes(&mut txs[i], &names[i], t, false)?;
                }
                tr.full_copies.push(names[i].clone());
            }
            let q = format!(
                "COPY (SELECT {} FROM {}{}) TO STDOUT",
                meta.cols,
                meta.only,
                t.name.sql()
            );
            let rows = pipe(&mut stx, &q, &mut txs, &copy_idx, &names, t, &meta.cols)?;
            tr.copied += rows;
            if rebuild {
                for &i in &copy_idx {
                    set_indexes(&mut txs[i], &names[i], t, true)?;
                    txs[i]
                        .batch_execute(&format!("REINDEX TABLE {}", t.name.sql()))
                        .ctx(|| format!("rebuilding the indexes of {} on \"{}\"", t.name.human(), names[i]))?;
                }
            }
            tracing::info!(
                "Full copy of {} to {}: {rows} rows",
                t.name.human(),
                tr.full_copies.join(", ")
            );
        }
        // Changes.
        let delta_idx: Vec<usize> = (0..txs.len()).filter(|i| modes[*i] == Mode::Delta).collect();
        if let (Some(id), Some(prev_lit), false) = (id, &prev_lit, delta_idx.is_empty()) {
            if truncated.contains(&id) {
                for &i in &delta_idx {
                    truncate_or_delete(&mut txs[i], &names[i], t, meta, "truncate")?;
                }
                tr.truncated = true;
                report.truncates += delta_idx.len() as u64;
            } else if parts_truncated.contains(&id) {
                // Part of the table was emptied: whatever the targets'
                // layout, delete there every row whose key the source no
                // longer has (the changes below then add back what was
                // written since).
                tr.deleted += delete_missing(&mut stx, &mut txs, &names, &delta_idx, t, meta)?;
                tr.truncated = true;
                report.truncates += delta_idx.len() as u64;
            }
            if changed.contains(&id) {
                apply_changes(
                    env, &mut stx, &mut txs, &names, &delta_idx, t, meta, id, prev_lit, &mut tr,
                )?;
                tracing::info!("Delta count for {}.{} : {}", src_db.name, t.name.human(), tr.keys);
            }
        }
        if tr.keys > 0 || tr.copied > 0 || tr.deleted > 0 || tr.truncated || !tr.full_copies.is_empty() {
            report.inserts += tr.copied;
            report.deletes += tr.deleted;
            report.tables.push(tr);
        }
    }

    // Sequences: value and, where they differ, settings.
    for (s, v) in plan.sequences.iter().zip(&seq_src) {
        let mut wrote = false;
        for (j, tx) in txs.iter_mut().enumerate() {
            if cache.seqs.get(&(s.id, names[j].clone())) == Some(v) {
                continue;
            }
            apply_sequence(tx, &names[j], s, v)?;
            wrote = true;
        }
        if wrote {
            report.sequences.push(s.name.human());
        }
    }

    // --- commit: targets first, then the consumer position ---------------------
    for (tx, n) in txs.into_iter().zip(&names) {
        tx.commit().ctx(|| format!("committing on \"{n}\""))?;
    }
    if delta {
        stx.execute(
            "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, updated = now() WHERE installation = $1 AND sync = $2",
            &[&env.installation, &name, &cur],
        )
        .ctx(|| format!("recording sync \"{name}\"'s position on \"{}\"", src_db.name))?;
    }
    stx.commit().ctx(|| format!("committing on \"{}\"", src_db.name))?;
    cache.last_advance = Some(Instant::now());
    for (s, v) in plan.sequences.iter().zip(&seq_src) {
        for n in &names {
            cache.seqs.insert((s.id, n.clone()), v.clone());
        }
    }
    env.cancel.clear();
    drop(conns);

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
    report.onetimecopy = otc > 0 && !written.is_empty();
    report.onetimecopy_gen = report.onetimecopy.then_some(plan.sync.onetimecopy_gen);
    report.caught_up = plan.behind.clone();
    report.recaptured = plan
        .tables
        .iter()
        .filter(|t| {
            captured
                .get(&(t.name.schema.clone(), t.name.name.clone()))
                .is_some_and(|c| recopy.contains(&c.0))
        })
        .map(|t| t.name.human())
        .collect();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
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
    if cache.partitioned.is_none() {
        let names: Vec<String> = plan.tables.iter().map(|t| t.name.sql()).collect();
        let found = conn
            .query(
                "SELECT n.i::int FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
                   JOIN pg_catalog.pg_class c ON c.oid = to_regclass(n.name) WHERE c.relkind = 'p'",
                &[&names],
            )
            .ctx(|| format!("looking for partitioned tables on \"{db}\""))?;
        cache.partitioned = Some(
            found
                .iter()
                .map(|r| plan.tables[r.get::<_, i32>(0) as usize - 1].name.clone())
                .collect(),
        );
    }
    let parts = cache.partitioned.clone().unwrap_or_default();
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

/// After a partition of `t` was truncated or dropped on the source: deletes
/// on each target every row whose key the source no longer has. The
/// source's keys stream into a temporary table on each target (COPY), so
/// this is exact whatever partitions the targets have.
fn delete_missing(
    stx: &mut Transaction<'_>,
    txs: &mut [Transaction<'_>],
    names: &[String],
    idx: &[usize],
    t: &Relation,
    meta: &TableMeta,
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
    let into = crate::pg::ident::QualName::new("pg_temp", "capra_keys");
    let key_rel = Relation {
        name: into,
        ..t.clone()
    };
    pipe(stx, &q, txs, idx, names, &key_rel, &keys)?;
    let mut deleted = 0;
    for &i in idx {
        deleted += txs[i]
            .execute(
                &format!(
                    "DELETE FROM {}{} t WHERE NOT EXISTS (SELECT 1 FROM pg_temp.capra_keys k WHERE ({}) = ({}))",
                    meta.only,
                    t.name.sql(),
                    qk.iter().map(|k| format!("k.{k}")).collect::<Vec<_>>().join(", "),
                    qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ")
                ),
                &[],
            )
            .ctx(|| {
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

/// Deletes the changed keys on the delta targets (in chunks) and copies
/// their current rows from the source.
#[allow(clippy::too_many_arguments)]
fn apply_changes(
    env: &RunEnv<'_>,
    stx: &mut Transaction<'_>,
    txs: &mut [Transaction<'_>],
    names: &[String],
    idx: &[usize],
    t: &Relation,
    meta: &TableMeta,
    id: i32,
    prev_lit: &str,
    tr: &mut TableReport,
) -> Result<()> {
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let changed_keys = format!(
        "SELECT DISTINCT {} FROM capra.delta_{id} WHERE txid >= txid_snapshot_xmin({prev_lit}) AND NOT txid_visible_in_snapshot(txid, {prev_lit})",
        qk.join(", ")
    );
    // DELETE statements per target, with casts to that target's key types.
    let mut deletes = Vec::new();
    for &i in idx {
        let types = &meta.key_types[&names[i]];
        let sql = if qk.len() == 1 {
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
                qk.join(", "),
                sel.join(", ")
            )
        };
        let stmt = txs[i]
            .prepare(&sql)
            .ctx(|| format!("preparing deletes on \"{}\"", names[i]))?;
        deletes.push((i, stmt));
    }
    let text_keys: Vec<String> = qk.iter().map(|k| format!("{k}::text")).collect();
    let portal = stx
        .bind(
            format!("SELECT {} FROM ({changed_keys}) k", text_keys.join(", ")).as_str(),
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
        for (i, stmt) in &deletes {
            tr.deleted += txs[*i]
                .execute(stmt, &params)
                .ctx(|| format!("deleting changed rows of {} on \"{}\"", t.name.human(), names[*i]))?;
        }
        if rows.len() < env.chunk {
            break;
        }
    }
    drop(portal);
    let q = format!(
        "COPY (SELECT {} FROM {}{} WHERE ({}) IN ({changed_keys})) TO STDOUT",
        meta.cols,
        meta.only,
        t.name.sql(),
        qk.join(", ")
    );
    tr.copied += pipe(stx, &q, txs, idx, names, t, &meta.cols)?;
    Ok(())
}
