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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

use super::copy::pipe;
use super::error::ApplyError;
use super::receive::{set_indexes, spare_clause, truncate_or_delete, Batch, Receivers, Recv};
use super::sequences::{apply_sequence, read_sequences, SeqState};
use super::settle::{detect, Found, Settle};
use super::source::{
    column_signatures, follow_partitions, follow_trees, newest_changes, reads_changes, reraise, scan, Captured, Src,
};
use super::table::{copy_encoding, makedelta, makedelta_any, table_meta, Mode, Shape, TableCtx};
use crate::catalog::model::{Db, Relation};
use crate::catalog::plan::SyncPlan;
use crate::domain::conflict::Strategy;
use crate::domain::OneTimeCopy;
use crate::error::{Context, Result};
use crate::pg::pool::Conn;

/// Defined at the bottom of apply (every layer uses them), named here,
/// where the controller calls a run.
pub use super::context::{RunCache, RunEnv, TableReport};

/// How often an idle sync moves its position forward on empty runs.
const IDLE_ADVANCE: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// Tables that could not be applied in this run and were set aside
    /// (their changes are tried again by the next run).
    pub failed_tables: Vec<FailedTable>,
}

/// A table set aside by a run: status shows it and it is mailed.
#[derive(Clone, Debug, Serialize)]
pub struct FailedTable {
    /// `schema.name`.
    pub table: String,
    /// The error, on one line.
    pub error: String,
    /// What sort of trouble it is.
    pub kind: crate::error::Kind,
}

/// What the exception hook said of a table's failure.
enum HookAnswer {
    /// Try the table again.
    Retry,
    /// Leave it out of this run (its changes are not applied).
    Skip,
    /// Nothing: the failure stands.
    None,
}

/// Whether an error is the table's own (its data or its definition on
/// some database), not the run's: a lock or serialization failure, a
/// cancel, a connection or resource error fails the whole run, which is
/// retried as a whole.
fn table_alone(e: &crate::error::Error) -> bool {
    let Some(code) = e.sqlstate().map(|c| c.code()) else {
        return false;
    };
    ["21", "22", "23", "27", "2F", "38", "39", "42", "44", "0A", "P0"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// Logs again, on source `s`, every key and truncation of table `t` in
/// this run's window (with its change time), in the source's read
/// transaction: they are after the position this run stores, so the next
/// run applies them.
fn relog_window(s: &mut Src<'_>, t: &Relation) -> Result<()> {
    let Some(id) = s.id_of(t) else { return Ok(()) };
    let tkey = (t.name.schema.clone(), t.name.name.clone());
    let Some((_, keycols)) = s.captured.get(&tkey).cloned() else {
        return Ok(());
    };
    let keys: Vec<String> = keycols.iter().map(|k| crate::pg::ident::quote_ident(k)).collect();
    let keys = keys.join(", ");
    let (window, time) = (s.window(), s.time_expr());
    s.tx.batch_execute(&format!(
        "INSERT INTO capra.delta_{id} ({keys}, capra_ts)
         SELECT {keys}, coalesce(to_timestamp({time}), statement_timestamp()) FROM capra.delta_{id} d WHERE {window} GROUP BY {keys};
         INSERT INTO capra.truncate_log (captured, part, capra_ts)
         SELECT d.captured, d.part, d.capra_ts FROM capra.truncate_log d WHERE d.captured = {id} AND {window}"
    ))
    .ctx(|| format!("logging the changes of {} again on \"{}\"", t.name.shown(), s.db.name))?;
    crate::capture::install::note_relogged(&mut s.tx, id, &s.db.name)?;
    Ok(())
}

/// Runs a sync once.
pub fn run(env: &RunEnv<'_>, plan: &SyncPlan, cache: &mut RunCache) -> Result<RunReport> {
    let mut run = Run::new(env, plan)?;
    if run.skipped_by_hook(&["before_sync", "before_txn"])? {
        return Ok(run.report);
    }
    // --- the sources, each in one snapshot ----------------------------------------
    let mut rconns = run.connect_sources(cache)?;
    let mut srcs = run.open_sources(&mut rconns, cache)?;
    if let Some(s) = srcs.iter().find(|s| s.raw && run.multi) {
        return Err(ApplyError::SqlAsciiSource { db: s.db.name.clone() }.into());
    }
    if run.skipped_by_hook(&["before_check_rows"])? {
        return Ok(run.report);
    }
    // --- which tables changed on each source --------------------------------------
    if run.reads {
        for s in srcs.iter_mut() {
            scan(env, plan, cache, s)?;
        }
    }
    // Sequences go from the first source to targets and fullcopy databases.
    let seqs = read_sequences(&mut srcs[0].tx, &plan.sequences)?;
    if run.nothing_to_do(&srcs, &seqs, cache) {
        return run.idle(srcs, cache);
    }
    // --- the receiving databases -------------------------------------------------
    let wdbs = run.receiving_dbs();
    let mut wconns = run.connect(&wdbs)?;
    let rx = Receivers::open(&mut wconns, &wdbs, env, plan.name(), &mut srcs)?;
    let mut open = Open::new(plan, srcs, rx)?;
    run.apply_tables(&mut open, cache)?;
    run.write_sequences(&mut open.rx, &seqs, cache)?;
    run.note_recaptured(&open.srcs);
    // --- commit: everything received first, then the positions ---------------
    run.commit(open, &seqs, cache)?;
    env.cancel.clear();
    drop(wconns);
    drop(rconns);
    run.after_commit(!wdbs.is_empty())
}

/// One run in progress: what every step reads (the environment, the plan
/// and what it implies) and the report the steps fill. The databases are
/// not in it: their transactions borrow connections the caller owns.
struct Run<'a, 'e> {
    env: &'a RunEnv<'e>,
    plan: &'a SyncPlan,
    /// The sync's name.
    name: String,
    /// Several sources: every source also receives.
    multi: bool,
    /// Change logs are read (someone receives changes).
    reads: bool,
    started: Instant,
    report: RunReport,
}

/// Every database of a run once the receivers are open: what a table's
/// apply works on.
struct Open<'c> {
    /// Declared before the sources so that a failed run rolls the
    /// receivers back first (fields drop in order): a source's rollback
    /// waits for an abandoned COPY to finish streaming, and the receivers
    /// must not hold their locks meanwhile.
    rx: Receivers<'c>,
    srcs: Vec<Src<'c>>,
    /// Per receiver: its change capture, for makedelta.
    rcaptured: Vec<Captured>,
    /// The sources' names, in plan order (conflict winners are indexes).
    source_names: Vec<String>,
    /// Per source, its newest change (for `latest_all_tables`), read once
    /// when first needed.
    newest: Option<Vec<f64>>,
}

impl<'c> Open<'c> {
    /// Bundles the open databases and reads the receivers' capture.
    fn new(plan: &SyncPlan, srcs: Vec<Src<'c>>, mut rx: Receivers<'c>) -> Result<Self> {
        let rcaptured = rx.captured(plan)?;
        Ok(Open {
            rx,
            srcs,
            rcaptured,
            source_names: plan.sources.iter().map(|d| d.name.clone()).collect(),
            newest: None,
        })
    }

    /// Runs (or releases, or rolls back to) a savepoint on every open
    /// transaction of the run.
    fn savepoints(&mut self, sql: &str) -> Result<()> {
        for s in self.srcs.iter_mut() {
            s.tx.batch_execute(sql).ctx(|| format!("{sql} on \"{}\"", s.db.name))?;
        }
        for tx in self.rx.txs.iter_mut() {
            tx.batch_execute(sql).ctx(|| sql.to_string())?;
        }
        Ok(())
    }
}

impl<'a, 'e> Run<'a, 'e> {
    /// Starts a run's report; refuses a sync without a source.
    fn new(env: &'a RunEnv<'e>, plan: &'a SyncPlan) -> Result<Self> {
        let name = plan.name().to_string();
        if plan.sources.is_empty() {
            return Err(ApplyError::NoSource { sync: name }.into());
        }
        let report = RunReport {
            skipped: plan.skipped.clone(),
            isolation: env.isolation.to_string(),
            ..Default::default()
        };
        Ok(Run {
            env,
            plan,
            name,
            multi: plan.sources.len() > 1,
            reads: reads_changes(plan),
            started: Instant::now(),
            report,
        })
    }

    /// Calls the hooks of these points in turn; true (the run is empty)
    /// when one answered `skip`.
    fn skipped_by_hook(&mut self, points: &[&str]) -> Result<bool> {
        for point in points {
            if self.env.hook(point, None, &|_, _| Ok(()))?.as_deref() == Some("skip") {
                self.report.skipped_by_hook = Some(point.to_string());
                self.report.empty = true;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A connection to every source, registered for cancel; the
    /// partitions of partitioned tables are followed first (in their own
    /// transactions, before the snapshot).
    fn connect_sources(&self, cache: &mut RunCache) -> Result<Vec<Conn>> {
        let mut conns = Vec::new();
        for s in &self.plan.sources {
            let mut c = self.env.pools.get(s)?;
            self.env.cancel.register(&c)?;
            if self.reads {
                follow_partitions(&mut c, self.env, self.plan, cache, &s.name)?;
                follow_trees(&mut c, self.env, self.plan, &s.name)?;
            }
            conns.push(c);
        }
        Ok(conns)
    }

    /// A connection to each of these databases, registered for cancel.
    fn connect(&self, dbs: &[(Db, Recv)]) -> Result<Vec<Conn>> {
        let mut conns = Vec::new();
        for (d, _) in dbs {
            let c = self.env.pools.get(d)?;
            self.env.cancel.register(&c)?;
            conns.push(c);
        }
        Ok(conns)
    }

    /// Opens every source in its snapshot and notes its clock skew (and
    /// warns, with several sources, where `latest` would be misled).
    fn open_sources<'c>(&mut self, conns: &'c mut [Conn], cache: &RunCache) -> Result<Vec<Src<'c>>> {
        let mut srcs = Vec::new();
        for (c, db) in conns.iter_mut().zip(&self.plan.sources) {
            let s = Src::open(c, db.clone(), self.env, self.plan, cache)?;
            self.report.clock_skew_ms.insert(s.db.name.clone(), s.clock_skew_ms);
            self.report.commit_timestamps.insert(s.db.name.clone(), s.commit_ts);
            srcs.push(s);
        }
        if self.multi {
            for (db, ms) in &self.report.clock_skew_ms {
                if ms.abs() >= 500.0 {
                    tracing::warn!(
                        "The clock of \"{db}\" is {:.0} ms {} this host's; conflict strategy latest compares change times from each server's own clock",
                        ms.abs(),
                        if *ms > 0.0 { "ahead of" } else { "behind" }
                    );
                }
            }
        }
        Ok(srcs)
    }

    /// Whether this run has nothing to apply: no source found anything,
    /// no full copy is due and no sequence moved.
    fn nothing_to_do(&self, srcs: &[Src<'_>], seqs: &[SeqState], cache: &RunCache) -> bool {
        let plan = self.plan;
        let written: Vec<&Db> = plan.targets.iter().chain(&plan.fullcopy).collect();
        let seq_dirty = plan.sequences.iter().zip(seqs).any(|(s, v)| {
            written
                .iter()
                .any(|d| cache.seqs.get(&(s.id, d.name.clone())) != Some(v))
        });
        srcs.iter().all(|s| !s.touched_any())
            && plan.fullcopy.is_empty()
            && plan.behind.is_empty()
            && plan.sync.onetimecopy == OneTimeCopy::Off
            && !seq_dirty
    }

    /// An empty run. Nothing changed between the stored positions and
    /// these snapshots, so moving the positions forward skips nothing;
    /// doing it now and then keeps an idle sync from holding back purges.
    fn idle(mut self, srcs: Vec<Src<'_>>, cache: &mut RunCache) -> Result<RunReport> {
        if self.reads && cache.last_advance.is_none_or(|t| t.elapsed() >= IDLE_ADVANCE) {
            for s in srcs {
                let mut tx = s.tx;
                self.record_position(&mut tx, &s.db.name, &s.cur)?;
                tx.commit().ctx(|| format!("committing on \"{}\"", s.db.name))?;
            }
            cache.last_advance = Some(Instant::now());
        }
        self.report.empty = true;
        self.report.seconds = self.started.elapsed().as_secs_f64();
        Ok(self.report)
    }

    /// Stores this run's snapshot as the sync's position on a source.
    fn record_position(&self, tx: &mut postgres::Transaction<'_>, db: &str, cur: &str) -> Result<()> {
        let name = &self.name;
        tx.execute(
            "UPDATE capra.consumer SET snapshot = $3::text::txid_snapshot, updated = now()
                  WHERE installation = $1 AND sync = $2",
            &[&self.env.installation, name, &cur],
        )
        .ctx(|| format!("recording sync \"{name}\"'s position on \"{db}\""))?;
        Ok(())
    }

    /// The databases this run writes: targets, fullcopy databases, and
    /// with several sources every source.
    fn receiving_dbs(&self) -> Vec<(Db, Recv)> {
        let plan = self.plan;
        let mut wdbs: Vec<(Db, Recv)> = plan
            .targets
            .iter()
            .map(|d| (d.clone(), Recv::Target))
            .chain(plan.fullcopy.iter().map(|d| (d.clone(), Recv::Full)))
            .collect();
        if self.multi && self.reads {
            wdbs.extend(
                plan.sources
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (d.clone(), Recv::Source(i))),
            );
        }
        wdbs
    }

    /// Applies every table of the plan, each guarded by the exception
    /// hook where there is one, and adds each to the report.
    fn apply_tables(&mut self, open: &mut Open<'_>, cache: &mut RunCache) -> Result<()> {
        let signatures = column_signatures(&mut open.srcs[0].tx, &self.plan.tables)?;
        for (t, sig) in self.plan.tables.iter().zip(&signatures) {
            let Some(tr) = self.guarded_table(open, cache, t, sig)? else {
                continue;
            };
            let counts = (tr.keys, tr.copied, tr.deleted);
            if let Some(a) = self.env.hook("after_table_sync", Some(t), &move |lua, ctx| {
                let c = lua.create_table()?;
                c.set("keys", counts.0)?;
                c.set("copied", counts.1)?;
                c.set("deleted", counts.2)?;
                ctx.set("counts", c)
            })? {
                tracing::debug!("after_table_sync answered {a:?} (ignored)");
            }
            let report = &mut self.report;
            report.truncates += tr.truncates;
            report.again |= tr.again;
            if tr.keys > 0 || tr.copied > 0 || tr.deleted > 0 || tr.truncated || !tr.full_copies.is_empty() {
                report.inserts += tr.copied;
                report.deletes += tr.deleted;
                report.conflicts += tr.conflicts;
                report.tables.push(tr);
            }
        }
        Ok(())
    }

    /// One table. Its work sits in a savepoint on every database when an
    /// exception hook may have it retried or skipped (None: skipped), and
    /// when a failure can be set aside: then a table that cannot be
    /// applied (a unique value two sources claim, a row the target
    /// rejects) is rolled back alone, its changes are logged again for the
    /// next run and it is reported, and the other tables go on.
    fn guarded_table(
        &mut self,
        open: &mut Open<'_>,
        cache: &mut RunCache,
        t: &Relation,
        sig: &str,
    ) -> Result<Option<TableReport>> {
        let hooked = self.env.hooks.borrow().has("exception", Some(&t.name.human()));
        let isolated = self.isolable();
        if (!hooked && !isolated) || self.untouched(open, t) {
            return self.table(open, cache, t, sig).map(Some);
        }
        let mut attempts = 0;
        loop {
            let conflicts = self.env.conflicts.borrow().len();
            open.savepoints("SAVEPOINT capra_table")?;
            let e = match self.table(open, cache, t, sig) {
                Ok(tr) => {
                    open.savepoints("RELEASE SAVEPOINT capra_table")?;
                    return Ok(Some(tr));
                }
                Err(e) if e.sqlstate().is_some() => e,
                Err(e) => return Err(e),
            };
            // A connection that cannot even roll back fails the run
            // with the error that started it.
            if open.savepoints("ROLLBACK TO SAVEPOINT capra_table").is_err() {
                return Err(e);
            }
            // Conflicts settled in the rolled-back work are settled again.
            self.env.conflicts.borrow_mut().truncate(conflicts);
            attempts += 1;
            if hooked {
                match self.ask_exception_hook(t, &e, attempts)? {
                    HookAnswer::Retry => continue,
                    HookAnswer::Skip => return Ok(None),
                    HookAnswer::None => {}
                }
            }
            if isolated && table_alone(&e) {
                self.set_aside(open, t, &e)?;
                return Ok(None);
            }
            return Err(e);
        }
    }

    /// Whether nothing happened to a table in this run: then it costs
    /// nothing, no shape learned, no statement (not even a savepoint) sent
    /// (a run's cost follows what changed, not how many tables the sync has).
    fn untouched(&self, open: &Open<'_>, t: &Relation) -> bool {
        let plan = self.plan;
        self.reads
            && plan.sync.onetimecopy == OneTimeCopy::Off
            && plan.behind.is_empty()
            && plan.fullcopy.is_empty()
            && open.srcs.iter().all(|s| s.id_of(t).is_some_and(|id| !s.touched(id)))
    }

    /// What the exception hook says of a table's failure.
    fn ask_exception_hook(&mut self, t: &Relation, e: &crate::error::Error, attempts: i32) -> Result<HookAnswer> {
        let text = crate::pg::error::flatten(&e.to_string());
        let state = e.sqlstate().map(|c| c.code()).unwrap_or_default();
        let answer = self.env.hook("exception", Some(t), &|_, ctx| {
            ctx.set("error", text.as_str())?;
            ctx.set("sqlstate", state)?;
            ctx.set("attempts", attempts)
        })?;
        match answer.as_deref() {
            Some("retry") if attempts <= 2 => {
                tracing::warn!("Retrying {} as the exception hook asked: {text}", t.name.human());
                Ok(HookAnswer::Retry)
            }
            Some("retry") => Err(ApplyError::HookGaveUp {
                table: t.name.shown(),
                error: text,
            }
            .into()),
            Some("skip") => {
                tracing::warn!(
                    "Skipping {} in this run as the exception hook asked: its changes since the last run are not applied anywhere ({text})",
                    t.name.human()
                );
                self.report.skipped_tables.push(t.name.human());
                Ok(HookAnswer::Skip)
            }
            _ => Ok(HookAnswer::None),
        }
    }

    /// Whether a table's failure can be set aside in this run: only when
    /// the sync has other tables (a one-table sync fails and retries as a
    /// whole, as before) and the run copies nothing whole (a full copy
    /// must be complete before onetimecopy is cleared or a target caught
    /// up).
    fn isolable(&self) -> bool {
        let plan = self.plan;
        self.reads
            && plan.tables.len() > 1
            && plan.sync.onetimecopy == OneTimeCopy::Off
            && plan.behind.is_empty()
            && plan.fullcopy.is_empty()
    }

    /// Sets a failed table aside (its work already rolled back): every
    /// change and truncation of it in this run's window is logged again on
    /// its source, after the position this run stores, so the next run
    /// tries it again and nothing is lost; the failure is reported.
    fn set_aside(&mut self, open: &mut Open<'_>, t: &Relation, e: &crate::error::Error) -> Result<()> {
        for s in open.srcs.iter_mut() {
            relog_window(s, t)?;
        }
        let error = crate::pg::error::flatten(&e.to_string());
        tracing::error!(
            "{} cannot be applied in this run; the other tables go on, and its changes are tried again in the next run: {error}",
            t.name.human()
        );
        self.report.failed_tables.push(FailedTable {
            table: t.name.human(),
            error,
            kind: e.kind(),
        });
        self.report.again = true;
        Ok(())
    }

    /// One table's part of a run: full copies, truncations, then changes
    /// from every source that has some (conflicts settled), on every
    /// receiver.
    fn table(&self, open: &mut Open<'_>, cache: &mut RunCache, t: &Relation, sig: &str) -> Result<TableReport> {
        let plan = self.plan;
        let keycols = self.log_key(&open.srcs, t)?;
        let ids: Vec<Option<i32>> = open.srcs.iter().map(|s| s.id_of(t)).collect();
        if self.untouched(open, t) {
            return Ok(TableReport {
                table: t.name.human(),
                ..Default::default()
            });
        }
        let shape = Shape {
            keycols: &keycols,
            signature: sig,
        };
        let src0 = &mut open.srcs[0];
        let meta = table_meta(
            &mut cache.meta,
            (&src0.db.name, &mut src0.tx),
            &mut open.rx.txs,
            &open.rx.names,
            t,
            &shape,
        )?;
        let strategy = t
            .conflict_strategy
            .as_ref()
            .or(plan.sync.conflict_strategy.as_ref())
            .unwrap_or(self.env.default_strategy)
            .clone();
        // Where makedelta applies: the receiver's own change log of this
        // table (captured there, with the same key).
        let tkey = (t.name.schema.clone(), t.name.name.clone());
        let md: Vec<Option<i32>> = (0..open.rx.txs.len())
            .map(|i| {
                if !makedelta(plan, t, &open.rx.names[i]) {
                    return None;
                }
                open.rcaptured[i].get(&tkey).filter(|c| c.1 == keycols).map(|c| c.0)
            })
            .collect();
        let tab = TableCtx::new(t, meta, ids, md);
        // Decide per receiver how it gets this table.
        let mut modes: Vec<Mode> = Vec::new();
        for i in 0..open.rx.txs.len() {
            modes.push(self.mode(open, i, &tab)?);
        }
        let mut tr = TableReport {
            table: t.name.human(),
            ..Default::default()
        };
        self.full_copy(open, &tab, &modes, &mut tr)?;
        self.changes(open, &tab, &modes, &strategy, &mut tr)?;
        Ok(tr)
    }

    /// The key a table's deltas use: the one its change log was built with
    /// (after a key change it stays the old one until that log is
    /// drained), the same on every source.
    fn log_key(&self, srcs: &[Src<'_>], t: &Relation) -> Result<Vec<String>> {
        let tkey = (t.name.schema.clone(), t.name.name.clone());
        let keycols = srcs[0]
            .captured
            .get(&tkey)
            .map(|c| c.1.clone())
            .unwrap_or_else(|| t.pkey.clone());
        if !self.reads {
            return Ok(keycols);
        }
        for s in &srcs[1..] {
            if let Some(c) = s.captured.get(&tkey) {
                if c.1 != keycols {
                    return Err(ApplyError::KeysDiffer {
                        table: t.name.shown(),
                        first_db: srcs[0].db.name.clone(),
                        first_key: keycols,
                        other_db: s.db.name.clone(),
                        other_key: c.1.clone(),
                    }
                    .into());
                }
            }
        }
        Ok(keycols)
    }

    /// How receiver `i` gets the table in this run.
    fn mode(&self, open: &mut Open<'_>, i: usize, tab: &TableCtx<'_>) -> Result<Mode> {
        let otc = self.plan.sync.onetimecopy;
        let rx = &mut open.rx;
        let kind = rx.kinds[i];
        Ok(match kind {
            Recv::Full => Mode::Copy,
            // A source is never emptied: with onetimecopy it gets a copy
            // from the first source only while its table is empty, and
            // the changes of this run on top.
            Recv::Source(x) if x != 0 && otc.is_on() && rx.is_empty(i, tab)? => Mode::Seed,
            Recv::Source(_) => Mode::Delta,
            Recv::Target
                if otc == OneTimeCopy::All
                    || self.plan.behind.contains(&rx.names[i])
                    || (!self.multi && tab.ids[0].is_some_and(|id| open.srcs[0].recopy.contains(&id))) =>
            {
                Mode::Copy
            }
            Recv::Target if otc == OneTimeCopy::IfEmpty && rx.is_empty(i, tab)? => Mode::Copy,
            Recv::Target => Mode::Delta,
        })
    }

    /// Full copies, from the first source, to the receivers whose mode is
    /// a copy (emptied first, indexes rebuilt where asked).
    fn full_copy(&self, open: &mut Open<'_>, tab: &TableCtx<'_>, modes: &[Mode], tr: &mut TableReport) -> Result<()> {
        let (plan, t, rx) = (self.plan, tab.t, &mut open.rx);
        let copy_idx: Vec<usize> = (0..rx.txs.len())
            .filter(|i| modes[*i] == Mode::Copy || modes[*i] == Mode::Seed)
            .collect();
        if copy_idx.is_empty() || t.ghost {
            return Ok(());
        }
        let rebuild = t.rebuild_index.unwrap_or(plan.sync.rebuild_index) == 1;
        for &i in &copy_idx {
            if rx.kinds[i] == Recv::Target || rx.kinds[i] == Recv::Full {
                tr.deleted += truncate_or_delete(&mut rx.txs[i], &rx.names[i], tab, plan.sync.deletemethod)?;
                if rebuild {
                    set_indexes(&mut rx.txs[i], &rx.names[i], tab, false)?;
                }
            }
            tr.full_copies.push(rx.names[i].clone());
        }
        let enc = copy_encoding(open.srcs[0].raw);
        let q = format!(
            "COPY (SELECT {} FROM {}{}) TO STDOUT{enc}",
            tab.meta.cols,
            tab.tbl_on(&open.srcs[0].db.name),
            t.filter.as_deref().map(|f| format!(" WHERE ({f})")).unwrap_or_default()
        );
        let into = format!("COPY {} ({}) FROM STDIN{enc}", t.name.sql(), tab.meta.cols);
        let dests: Vec<(usize, String)> = copy_idx.iter().map(|i| (*i, into.clone())).collect();
        let rows: u64 = pipe(
            &mut open.srcs[0].tx,
            &q,
            &mut rx.txs,
            &dests,
            &rx.names,
            &t.name.shown(),
        )?
        .iter()
        .sum();
        tr.copied += rows;
        for &i in &copy_idx {
            after_copy(rx, i, tab, rebuild)?;
        }
        tracing::info!(
            "Full copy of {} to {}: {rows} rows",
            t.name.human(),
            tr.full_copies.join(", ")
        );
        Ok(())
    }

    /// Changes: truncations first, then the changed keys of every source
    /// that has some, conflicts settled, on every receiver that takes
    /// changes. With several sources a full copy comes from the first one
    /// only: the others' changes (and the conflicts they won) follow it in
    /// this run.
    fn changes(
        &self,
        open: &mut Open<'_>,
        tab: &TableCtx<'_>,
        modes: &[Mode],
        strategy: &Strategy,
        tr: &mut TableReport,
    ) -> Result<()> {
        let delta_idx: Vec<usize> = (0..open.rx.txs.len())
            .filter(|i| modes[*i] == Mode::Delta || modes[*i] == Mode::Seed || (self.multi && modes[*i] == Mode::Copy))
            .collect();
        if !self.reads || delta_idx.is_empty() || tab.ids.iter().all(|i| i.is_none()) {
            return Ok(());
        }
        if self.multi {
            self.check_key_kept(&open.srcs, tab)?;
        }
        // Truncations first: everything changed afterwards is applied below.
        for si in 0..open.srcs.len() {
            if let Some(id) = tab.ids[si] {
                self.truncations(open, si, id, tab, &delta_idx, tr)?;
            }
        }
        let changers: Vec<(usize, i32)> = (0..open.srcs.len())
            .filter_map(|s| {
                tab.ids[s]
                    .filter(|id| open.srcs[s].changed.contains(id))
                    .map(|id| (s, id))
            })
            .collect();
        if changers.is_empty() {
            return Ok(());
        }
        let found = self.settle_changers(open, tab, strategy, &changers, tr)?;
        let staged = self.send(open, tab, &delta_idx, &found, tr)?;
        self.finish_sources(open, tab, strategy, &staged, tr)?;
        if self.multi {
            tracing::info!(
                "Delta count for {} from {} : {} ({} conflicts)",
                tab.human(),
                changers
                    .iter()
                    .map(|c| open.srcs[c.0].db.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                tr.keys,
                tr.conflicts
            );
        }
        Ok(())
    }

    /// Refuses, with several sources, a table whose capture lost its key
    /// on some source: its changes there cannot be told apart.
    fn check_key_kept(&self, srcs: &[Src<'_>], tab: &TableCtx<'_>) -> Result<()> {
        let t = tab.t;
        if let Some(s) = srcs
            .iter()
            .find(|s| s.id_of(t).is_some_and(|id| s.recopy.contains(&id)))
        {
            return Err(ApplyError::KeyLost {
                table: t.name.shown(),
                db: s.db.name.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Replays source `si`'s truncation of the table (whole, or of a
    /// partition) on the receivers of changes other than itself.
    fn truncations(
        &self,
        open: &mut Open<'_>,
        si: usize,
        id: i32,
        tab: &TableCtx<'_>,
        delta_idx: &[usize],
        tr: &mut TableReport,
    ) -> Result<()> {
        let own = open.srcs[si].recv;
        let recv: Vec<usize> = delta_idx.iter().copied().filter(|i| Some(*i) != own).collect();
        // Rows a receiving source's application held were left: this
        // source logs them again, so the next run settles them.
        let mut held: Vec<Vec<String>> = Vec::new();
        if open.srcs[si].truncated.contains(&id) {
            for &i in &recv {
                held.extend(open.rx.replay_truncate(i, &open.srcs, tab)?);
            }
            tr.truncated = true;
            tr.truncates += recv.len() as u64;
        } else if open.srcs[si].parts_truncated.contains(&id) {
            // Part of the table was emptied: whatever the receivers'
            // layout, delete there every row whose key this source
            // no longer has (the changes below then add back what
            // was written since).
            let spare: Vec<Option<String>> = (0..open.rx.txs.len())
                .map(|i| spare_clause(&open.srcs, open.rx.kinds[i], tab))
                .collect();
            let s = &mut open.srcs[si];
            let (n, h) = open
                .rx
                .delete_missing((&s.db.name, s.raw, &mut s.tx), &recv, tab, &spare)?;
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
                "(SELECT max(d.capra_ts) FROM capra.truncate_log d WHERE d.captured = {id} AND {})",
                open.srcs[si].window()
            );
            reraise(&mut open.srcs[si], tab, &held, Some(&when))?;
        }
        Ok(())
    }

    /// The keys each changing source sends: all its changed keys when it
    /// is the only one, else what it won in the conflicts found between
    /// them (plus rows hooks composed).
    fn settle_changers(
        &self,
        open: &mut Open<'_>,
        tab: &TableCtx<'_>,
        strategy: &Strategy,
        changers: &[(usize, i32)],
        tr: &mut TableReport,
    ) -> Result<Found> {
        let found = if let [(c, id)] = changers {
            let s = &open.srcs[*c];
            Found {
                won: vec![(
                    *c,
                    format!(
                        "SELECT DISTINCT {} FROM capra.delta_{id} d WHERE {}",
                        tab.keys(),
                        s.window()
                    ),
                )],
                merged: Vec::new(),
            }
        } else {
            if *strategy == Strategy::LatestAllTables && open.newest.is_none() {
                open.newest = Some(newest_changes(&mut open.srcs, self.plan)?);
            }
            let mut st = Settle {
                env: self.env,
                strategy,
                sources: &open.source_names,
                newest: open.newest.as_deref().unwrap_or(&[]),
            };
            detect(&mut st, &mut open.srcs, changers, tab, tr)?
        };
        if *strategy == Strategy::LatestAllTables && open.newest.is_none() && self.multi {
            // Late changes on a receiving source are settled below too.
            open.newest = Some(newest_changes(&mut open.srcs, self.plan)?);
        }
        Ok(found)
    }

    /// Sends every winning source's keys, and the rows hooks composed, to
    /// the receivers of changes; returns the receiving sources that got
    /// rows staged.
    fn send(
        &self,
        open: &mut Open<'_>,
        tab: &TableCtx<'_>,
        delta_idx: &[usize],
        found: &Found,
        tr: &mut TableReport,
    ) -> Result<BTreeSet<usize>> {
        let mut staged: BTreeSet<usize> = BTreeSet::new();
        for (w, keys_sql) in &found.won {
            let own = open.srcs[*w].recv;
            let src_name = open.srcs[*w].db.name.clone();
            let recv: Vec<usize> = delta_idx.iter().copied().filter(|i| Some(*i) != own).collect();
            let batch = Batch {
                recv: &recv,
                keys_sql,
                from: *w as i32,
                from_db: &src_name,
                raw: open.srcs[*w].raw,
                chunk: self.env.chunk,
            };
            open.rx
                .apply_from(&mut open.srcs[*w].tx, tab, &batch, &mut staged, tr)?;
            if !self.multi {
                tracing::info!(
                    "Delta count for {}.{} : {}",
                    open.srcs[*w].db.name,
                    tab.human(),
                    tr.keys
                );
            }
        }
        if !found.merged.is_empty() {
            open.rx.apply_merged(tab, delta_idx, &found.merged, &mut staged, tr)?;
        }
        Ok(staged)
    }

    /// Applies what was staged on each receiving source; keys its
    /// application held are logged again by their winner (a composed row:
    /// by any other source, which holds it now).
    fn finish_sources(
        &self,
        open: &mut Open<'_>,
        tab: &TableCtx<'_>,
        strategy: &Strategy,
        staged: &BTreeSet<usize>,
        tr: &mut TableReport,
    ) -> Result<()> {
        for &r in staged {
            let Recv::Source(x) = open.rx.kinds[r] else { continue };
            let mut st = Settle {
                env: self.env,
                strategy,
                sources: &open.source_names,
                newest: open.newest.as_deref().unwrap_or(&[]),
            };
            let busy = open.rx.finish_source(r, &mut st, &mut open.srcs, tab, tr)?;
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
                reraise(&mut open.srcs[w], tab, &keys, None)?;
            }
        }
        Ok(())
    }

    /// Sequences: value and, where they differ, settings (not to sources).
    fn write_sequences(&mut self, rx: &mut Receivers<'_>, seqs: &[SeqState], cache: &RunCache) -> Result<()> {
        for (s, v) in self.plan.sequences.iter().zip(seqs) {
            let mut wrote = false;
            for (j, tx) in rx.txs.iter_mut().enumerate() {
                if matches!(rx.kinds[j], Recv::Source(_)) || cache.seqs.get(&(s.id, rx.names[j].clone())) == Some(v) {
                    continue;
                }
                apply_sequence(tx, &rx.names[j], s, v)?;
                wrote = true;
            }
            if wrote {
                self.report.sequences.push(s.name.human());
            }
        }
        Ok(())
    }

    /// Tables copied whole because capture had lost their key: capture is
    /// rebuilt before the next run.
    fn note_recaptured(&mut self, srcs: &[Src<'_>]) {
        if !self.multi {
            self.report.recaptured = self
                .plan
                .tables
                .iter()
                .filter(|t| srcs[0].id_of(t).is_some_and(|id| srcs[0].recopy.contains(&id)))
                .map(|t| t.name.human())
                .collect();
        }
    }

    /// Commits everything received first, then the positions: a crash in
    /// between makes the next run apply the same keys again.
    fn commit(&self, open: Open<'_>, seqs: &[SeqState], cache: &mut RunCache) -> Result<()> {
        let (env, name) = (self.env, &self.name);
        let Receivers { mut txs, names, kinds } = open.rx;
        for (i, tx) in txs.iter_mut().enumerate() {
            if let (Recv::Source(_), true) = (kinds[i], makedelta_any(self.plan, &names[i])) {
                // In the same transaction as the rows it logged here, so a
                // crash cannot separate them: this sync never reads them back.
                tx.execute(
                    "INSERT INTO capra.applied (installation, sync, txid, kind) VALUES ($1, $2, txid_current(), 'm') ON CONFLICT DO NOTHING",
                    &[&env.installation, name],
                )
                .ctx(|| format!("noting what this run logged on \"{}\"", names[i]))?;
            }
        }
        // What was logged on a receiver (makedelta) wakes the syncs reading it
        // the way an application's write does: its watcher sees the log grow.
        for (tx, n) in txs.into_iter().zip(&names) {
            tx.commit().ctx(|| format!("committing on \"{n}\""))?;
        }
        for s in open.srcs.into_iter() {
            let mut tx = s.tx;
            if self.reads {
                self.record_position(&mut tx, &s.db.name, &s.cur)?;
                // What this sync wrote into the logs before the new position
                // can never be in a window again.
                tx.execute(
                    "DELETE FROM capra.applied WHERE installation = $1 AND sync = $2 AND txid_visible_in_snapshot(txid, $3::text::txid_snapshot)",
                    &[&env.installation, name, &s.cur],
                )
                .ctx(|| format!("forgetting what sync \"{name}\" logged on \"{}\"", s.db.name))?;
            }
            tx.commit().ctx(|| format!("committing on \"{}\"", s.db.name))?;
        }
        cache.last_advance = Some(Instant::now());
        for (s, v) in self.plan.sequences.iter().zip(seqs) {
            for (n, k) in names.iter().zip(&kinds) {
                if !matches!(k, Recv::Source(_)) {
                    cache.seqs.insert((s.id, n.clone()), v.clone());
                }
            }
        }
        Ok(())
    }

    /// After commit: statistics for freshly copied tables, the report's
    /// last fields, and the after_* hooks. `received`: some database was
    /// written (a onetimecopy is served only then).
    fn after_commit(mut self, received: bool) -> Result<RunReport> {
        self.statistics();
        let (plan, report) = (self.plan, &mut self.report);
        report.onetimecopy = plan.sync.onetimecopy.is_on() && received;
        report.onetimecopy_gen = report.onetimecopy.then_some(plan.sync.onetimecopy_gen);
        report.caught_up = plan.behind.clone();
        report.seconds = self.started.elapsed().as_secs_f64();
        let (ins, del, conf) = (report.inserts, report.deletes, report.conflicts);
        self.env.hook("after_txn", None, &move |lua, ctx| {
            let c = lua.create_table()?;
            c.set("inserts", ins)?;
            c.set("deletes", del)?;
            c.set("conflicts", conf)?;
            ctx.set("counts", c)
        })?;
        self.env.hook("after_sync", None, &|_, _| Ok(()))?;
        Ok(self.report)
    }

    /// ANALYZE / VACUUM of freshly copied tables where asked. Everything is
    /// committed: statistics are best effort and never turn a good run
    /// into a failed one.
    fn statistics(&self) {
        let plan = self.plan;
        let written: Vec<&Db> = plan.targets.iter().chain(&plan.fullcopy).collect();
        for tr in &self.report.tables {
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
                if sql.is_empty() {
                    continue;
                }
                match self.env.pools.get(db) {
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
}

/// After a full copy to receiver `i`: indexes back on and rebuilt where
/// asked, and with makedelta the copy logged there (a truncation, then
/// every key) for the syncs downstream.
fn after_copy(rx: &mut Receivers<'_>, i: usize, tab: &TableCtx<'_>, rebuild: bool) -> Result<()> {
    let t = tab.t;
    if rebuild && !rx.is_source(i) {
        set_indexes(&mut rx.txs[i], &rx.names[i], tab, true)?;
        rx.txs[i]
            .batch_execute(&format!("REINDEX TABLE {}", t.name.sql()))
            .ctx(|| format!("rebuilding the indexes of {} on \"{}\"", t.name.shown(), rx.names[i]))?;
    }
    if let Some(mid) = tab.md[i] {
        // Downstream: a truncation, then every key.
        let k = tab.keys();
        rx.txs[i]
            .batch_execute(&format!(
                "INSERT INTO capra.truncate_log (captured) VALUES ({mid}); INSERT INTO capra.delta_{mid} ({k}) SELECT {k} FROM {}",
                tab.tbl_on(&rx.names[i])
            ))
            .ctx(|| format!("logging the copy of {} on \"{}\" (makedelta)", t.name.shown(), rx.names[i]))?;
    }
    Ok(())
}
