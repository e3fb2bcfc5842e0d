//! The write side of a run: targets get changed keys deleted and their rows
//! copied in; a receiving source (multi-master) gets rows staged, locked
//! without waiting on the application, checked for late changes and
//! applied in place; truncations and partition moves are replayed.

use std::collections::{BTreeSet, HashMap};

use postgres::error::SqlState;
use postgres::{Statement, Transaction};

use super::context::{RunEnv, TableReport};
use super::copy::pipe;
use super::settle::{key_time, row_json, Settle};
use super::source::{snapshot_literal, Captured, Src};
use super::table::{
    copy_encoding, key_in, key_out, key_params_eq, makedelta, text_params, unique_indexes, unnest_select, TableCtx,
    RUN_MEMORY, TEXT_FORMATS,
};
use crate::catalog::model::Db;
use crate::catalog::plan::SyncPlan;
use crate::domain::conflict::{Contender, Decision, Record, Winner};
use crate::domain::DeleteMethod;
use crate::error::{Context, Result};
use crate::pg::ident::quote_ident;
use crate::pg::pool::Conn;
use crate::pg::RowExt;

/// A receiving database's part in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recv {
    /// A `target`: receives changes (or a full copy).
    Target,
    /// A `fullcopy` database: receives a full copy every run.
    Full,
    /// Another source of a multi-master sync (its index in the plan).
    Source(usize),
}

/// Every database a run writes, each in one transaction: kept together
/// because a table's apply addresses them by one index (and the COPY pipe
/// writes to several at once).
pub(super) struct Receivers<'c> {
    /// The write transactions.
    pub(super) txs: Vec<Transaction<'c>>,
    /// Their database names, for messages and key types.
    pub(super) names: Vec<String>,
    /// What each one is.
    pub(super) kinds: Vec<Recv>,
}

/// One batch of keys a source won, sent to some receivers.
pub(super) struct Batch<'a> {
    /// The receivers (indexes into [`Receivers`]).
    pub(super) recv: &'a [usize],
    /// SQL of the keys, over the sending source's change log `d`.
    pub(super) keys_sql: &'a str,
    /// The sending source's index (staged with each key on a source).
    pub(super) from: i32,
    /// The sending source's name.
    pub(super) from_db: &'a str,
    /// Whether the sending source is SQL_ASCII (see [`copy_encoding`]).
    pub(super) raw: bool,
    /// Keys per statement.
    pub(super) chunk: usize,
}

impl<'c> Receivers<'c> {
    /// Opens a write transaction on every receiving database, as a
    /// replica (no triggers fire), with the run's text formats; a
    /// receiving source also waits at most lock_timeout for the
    /// application and is the deadlock victim.
    pub(super) fn open(
        conns: &'c mut [Conn],
        dbs: &[(Db, Recv)],
        env: &RunEnv<'_>,
        sync: &str,
        srcs: &mut [Src<'_>],
    ) -> Result<Self> {
        let mut rx = Receivers {
            txs: Vec::new(),
            names: Vec::new(),
            kinds: Vec::new(),
        };
        for (c, (d, kind)) in conns.iter_mut().zip(dbs) {
            let mut tx = c
                .transaction()
                .ctx(|| format!("starting the apply transaction on \"{}\"", d.name))?;
            tx.batch_execute(&format!(
                "SET LOCAL session_replication_role = replica; {TEXT_FORMATS}; {}; {RUN_MEMORY}",
                super::source::run_name(sync)
            ))
            .ctx(|| {
                format!(
                    "switching \"{}\" to session_replication_role = replica (needs a superuser, or PostgreSQL 15+ with SET ON PARAMETER granted)",
                    d.name
                )
            })?;
            // Wait at most lock_timeout for a lock: a TRUNCATE or full copy
            // on a target queued behind a long report would queue every
            // later reader behind itself (a TRUNCATE that times out falls
            // back to DELETE); a source is written while its application
            // writes too. Then the leader's fence, held to the end.
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = {}; {}",
                env.lock_timeout_ms, env.fence
            ))
            .ctx(|| format!("checking capra's fence on \"{}\"", d.name))?;
            if let Recv::Source(i) = kind {
                // Be the one a deadlock detector picks (where capra's role
                // may set it), so the application's transaction is never
                // the victim.
                let mut sp = tx.savepoint("capra_deadlock").ctx(|| "savepoint".into())?;
                if sp.batch_execute("SET LOCAL deadlock_timeout = '50ms'").is_ok() {
                    sp.commit().ctx(|| "savepoint".into())?;
                }
                srcs[*i].recv = Some(rx.txs.len());
            }
            rx.names.push(d.name.clone());
            rx.kinds.push(*kind);
            rx.txs.push(tx);
        }
        Ok(rx)
    }

    /// Per receiver, its change capture (for makedelta): its captured
    /// tables there; empty where makedelta applies to none of the plan's.
    pub(super) fn captured(&mut self, plan: &SyncPlan) -> Result<Vec<Captured>> {
        let mut out: Vec<Captured> = vec![HashMap::new(); self.txs.len()];
        for (i, tx) in self.txs.iter_mut().enumerate() {
            let name = &self.names[i];
            if !plan.tables.iter().any(|t| makedelta(plan, t, name)) {
                continue;
            }
            let has: bool = tx
                .query_one("SELECT to_regclass('capra.captured') IS NOT NULL", &[])
                .ctx(|| format!("looking for change capture on \"{name}\""))?
                .col(0, "change capture")?;
            if has {
                for r in tx
                    .query("SELECT schemaname, relname, id, keycols FROM capra.captured", &[])
                    .ctx(|| format!("reading change capture on \"{name}\""))?
                {
                    let what = "capra.captured";
                    out[i].insert((r.col(0, what)?, r.col(1, what)?), (r.col(2, what)?, r.col(3, what)?));
                }
            }
        }
        Ok(out)
    }

    /// Whether receiver `i` is a source (multi-master).
    pub(super) fn is_source(&self, i: usize) -> bool {
        matches!(self.kinds[i], Recv::Source(_))
    }

    /// Whether the table is empty on receiver `i`.
    pub(super) fn is_empty(&mut self, i: usize, tab: &TableCtx<'_>) -> Result<bool> {
        let name = &self.names[i];
        self.txs[i]
            .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", tab.tbl_on(name)), &[])
            .ctx(|| format!("checking whether {} is empty on \"{name}\"", tab.shown()))?
            .col(0, "whether a table is empty")
    }

    /// Replays a source's TRUNCATE on receiver `i`. A target is truncated;
    /// a source is emptied with DELETE (its own run holds a lock TRUNCATE
    /// would wait for), sparing the rows it changed itself since its
    /// position and, without waiting, the rows its application holds
    /// (returned: the next run settles them).
    pub(super) fn replay_truncate(
        &mut self,
        i: usize,
        srcs: &[Src<'_>],
        tab: &TableCtx<'_>,
    ) -> Result<Vec<Vec<String>>> {
        let (tx, db, md) = (&mut self.txs[i], self.names[i].as_str(), tab.md[i]);
        match spare_clause(srcs, self.kinds[i], tab) {
            Some(spare) => {
                let (_, held) = delete_on_source(tx, db, tab, &spare, md)?;
                return Ok(held);
            }
            None => {
                truncate_or_delete(tx, db, tab, DeleteMethod::Truncate)?;
                if let Some(mid) = md {
                    tx.execute("INSERT INTO capra.truncate_log (captured) VALUES ($1)", &[&mid])
                        .ctx(|| format!("logging a TRUNCATE of {} on \"{db}\" (makedelta)", tab.shown()))?;
                }
            }
        }
        Ok(Vec::new())
    }

    /// After a partition of the table was truncated or dropped on a
    /// source: deletes on each receiver of `idx` every row whose key that
    /// source no longer has. The source's keys stream into a temporary
    /// table on each receiver (COPY), so this is exact whatever partitions
    /// the receivers have. `spare` keeps a receiving source's own recent
    /// changes; makedelta logs what was deleted.
    pub(super) fn delete_missing(
        &mut self,
        (src, raw, stx): (&str, bool, &mut Transaction<'_>),
        idx: &[usize],
        tab: &TableCtx<'_>,
        spare: &[Option<String>],
    ) -> Result<(u64, Vec<Vec<String>>)> {
        let keys = tab.keys();
        for &i in idx {
            self.txs[i]
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS pg_temp.capra_keys; CREATE TEMP TABLE capra_keys ON COMMIT DROP AS SELECT {keys} FROM {} WITH NO DATA",
                    tab.tbl_on(&self.names[i])
                ))
                .ctx(|| format!("preparing to compare keys of {} on \"{}\"", tab.shown(), self.names[i]))?;
        }
        let enc = copy_encoding(raw);
        let q = format!("COPY (SELECT {keys} FROM {}) TO STDOUT{enc}", tab.tbl_on(src));
        let dests: Vec<(usize, String)> = idx
            .iter()
            .map(|i| (*i, format!("COPY pg_temp.capra_keys ({keys}) FROM STDIN{enc}")))
            .collect();
        pipe(stx, &q, &mut self.txs, &dests, &self.names, &tab.shown())?;
        let mut deleted = 0;
        let mut held = Vec::new();
        for &i in idx {
            let (tx, db) = (&mut self.txs[i], self.names[i].as_str());
            let missing = format!(
                "NOT EXISTS (SELECT 1 FROM pg_temp.capra_keys k WHERE {})",
                tab.on(db, "k", "t")
            );
            if let Some(s) = &spare[i] {
                let (n, h) = delete_on_source(tx, db, tab, &format!("{missing} AND {s}"), tab.md[i])?;
                deleted += n;
                held.extend(h);
            } else {
                let mut del = format!("DELETE FROM {} t WHERE {missing}", tab.tbl_on(db));
                if let Some(mid) = tab.md[i] {
                    del = format!(
                        "WITH gone AS ({del} RETURNING {}) INSERT INTO capra.delta_{mid} ({keys}) SELECT * FROM gone",
                        tab.keys_of("t")
                    );
                }
                deleted += tx
                    .execute(&del, &[])
                    .ctx(|| format!("deleting rows of {} the source no longer has on \"{db}\"", tab.shown()))?;
            }
            tx.batch_execute("DROP TABLE pg_temp.capra_keys")
                .ctx(|| "dropping the key table".into())?;
        }
        Ok((deleted, held))
    }

    /// Sends the keys a source won (`batch.keys_sql`, over its change log
    /// `d`) to the receivers: a target has the keys deleted (in chunks) and
    /// their current rows copied in; a receiving source gets keys and rows
    /// staged, applied later by [`Receivers::finish_source`].
    pub(super) fn apply_from(
        &mut self,
        stx: &mut Transaction<'_>,
        tab: &TableCtx<'_>,
        batch: &Batch<'_>,
        staged: &mut BTreeSet<usize>,
        tr: &mut TableReport,
    ) -> Result<()> {
        if batch.recv.is_empty() {
            return Ok(());
        }
        for &i in batch.recv {
            if self.is_source(i) && staged.insert(i) {
                stage_tables(&mut self.txs[i], &self.names[i], tab)?;
            }
        }
        let stmts = self.key_statements(tab, batch)?;
        let text_keys: Vec<String> = tab.qk.iter().map(|k| key_out(k, batch.raw)).collect();
        let portal = stx
            .bind(
                format!("SELECT {} FROM ({}) k", text_keys.join(", "), batch.keys_sql).as_str(),
                &[],
            )
            .ctx(|| format!("reading changed keys of {}", tab.shown()))?;
        loop {
            let rows = stx
                .query_portal(&portal, batch.chunk as i32)
                .ctx(|| format!("reading changed keys of {}", tab.shown()))?;
            if rows.is_empty() {
                break;
            }
            tr.keys += rows.len() as u64;
            let cols: Vec<Vec<String>> = (0..tab.qk.len())
                .map(|j| rows.iter().map(|r| r.col(j, "a changed key")).collect())
                .collect::<Result<_>>()?;
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                cols.iter().map(|c| c as &(dyn postgres::types::ToSql + Sync)).collect();
            for (i, stmt, counts) in &stmts {
                let n = self.txs[*i]
                    .execute(stmt, &params[..stmt.params().len()])
                    .ctx(|| format!("applying changed rows of {} on \"{}\"", tab.shown(), self.names[*i]))?;
                if *counts {
                    tr.deleted += n;
                }
            }
            if rows.len() < batch.chunk {
                break;
            }
        }
        drop(portal);
        self.copy_rows(stx, tab, batch, tr)
    }

    /// Per receiver of a batch, the statements each chunk of keys runs
    /// there (prepared), and whether their row count is a deletion.
    fn key_statements(&mut self, tab: &TableCtx<'_>, batch: &Batch<'_>) -> Result<Vec<(usize, Statement, bool)>> {
        let (qk, keys) = (&tab.qk, tab.keys());
        let mut stmts = Vec::new();
        for &i in batch.recv {
            let types = tab.types_on(&self.names[i]);
            let mut sqls = Vec::new();
            if self.is_source(i) {
                sqls.push((
                    format!(
                        "INSERT INTO pg_temp.capra_in_keys ({keys}, capra_from) {}",
                        unnest_select(&types, Some(&format!("{}", batch.from)), batch.raw)
                    ),
                    false,
                ));
            } else {
                // One key column deletes by `= ANY`; an array-typed one
                // cannot (a text array cast to `t[][]` is `t[]`): it goes
                // by subscript like a composite key.
                let ops = tab.ops_on(&self.names[i]);
                let del = if qk.len() == 1 && !types[0].ends_with("[]") && !batch.raw {
                    format!(
                        "DELETE FROM {} WHERE {} {} ANY ($1::text[]::{}[])",
                        tab.tbl_on(&self.names[i]),
                        qk[0],
                        ops[0],
                        types[0]
                    )
                } else {
                    let eq: Vec<String> = types
                        .iter()
                        .zip(qk.iter().zip(&ops))
                        .enumerate()
                        .map(|(j, (ty, (k, op)))| {
                            let text = key_in(&format!("(${}::text[])[s.i]", j + 1), batch.raw);
                            format!("t.{k} {op} ({text})::{ty}")
                        })
                        .collect();
                    format!(
                        "DELETE FROM {} t WHERE EXISTS (SELECT 1 FROM generate_subscripts($1::text[], 1) AS s(i) WHERE {})",
                        tab.tbl_on(&self.names[i]),
                        eq.join(" AND ")
                    )
                };
                sqls.push((del, true));
                if let Some(mid) = tab.md[i] {
                    sqls.push((
                        format!(
                            "INSERT INTO capra.delta_{mid} ({keys}) {}",
                            unnest_select(&types, None, batch.raw)
                        ),
                        false,
                    ));
                }
            }
            for (sql, counts) in sqls {
                let stmt = self.txs[i]
                    .prepare(&sql)
                    .ctx(|| format!("preparing to apply {} on \"{}\"", tab.shown(), self.names[i]))?;
                stmts.push((i, stmt, counts));
            }
        }
        Ok(stmts)
    }

    /// Copies the current rows of a batch's keys from the source into its
    /// receivers (a receiving source's staging table).
    fn copy_rows(
        &mut self,
        stx: &mut Transaction<'_>,
        tab: &TableCtx<'_>,
        batch: &Batch<'_>,
        tr: &mut TableReport,
    ) -> Result<()> {
        let t = tab.t;
        let enc = copy_encoding(batch.raw);
        // Keys whose row no longer matches the filter were deleted above and
        // are not copied: a row that stops matching leaves the receivers.
        let q = format!(
            "COPY (SELECT {} FROM {} t WHERE EXISTS (SELECT 1 FROM ({}) AS w WHERE {}){}) TO STDOUT{enc}",
            tab.meta.cols,
            tab.tbl_on(batch.from_db),
            batch.keys_sql,
            tab.on(batch.from_db, "w", "t"),
            t.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default()
        );
        let dests: Vec<(usize, String)> = batch
            .recv
            .iter()
            .map(|i| {
                let into = if self.is_source(*i) {
                    "pg_temp.capra_in_rows".to_string()
                } else {
                    t.name.sql()
                };
                (*i, format!("COPY {into} ({}) FROM STDIN{enc}", tab.meta.cols))
            })
            .collect();
        let counts = pipe(stx, &q, &mut self.txs, &dests, &self.names, &tab.shown())?;
        for ((i, _), n) in dests.iter().zip(counts) {
            if !self.is_source(*i) {
                tr.copied += n;
            }
        }
        Ok(())
    }

    /// Writes rows composed by a conflict hook to every receiver of `recv`.
    pub(super) fn apply_merged(
        &mut self,
        tab: &TableCtx<'_>,
        recv: &[usize],
        merged: &[(Vec<String>, serde_json::Value)],
        staged: &mut BTreeSet<usize>,
        tr: &mut TableReport,
    ) -> Result<()> {
        for &i in recv {
            if self.is_source(i) && staged.insert(i) {
                stage_tables(&mut self.txs[i], &self.names[i], tab)?;
            }
            let sqls = self.merged_statements(i, tab);
            for (key, row) in merged {
                let text = row.to_string();
                for (sql, by_key) in &sqls {
                    let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                        if *by_key { text_params(key) } else { vec![&text] };
                    self.txs[i]
                        .execute(sql.as_str(), &params)
                        .ctx(|| format!("writing a merged row of {} on \"{}\"", tab.shown(), self.names[i]))?;
                }
                if !self.is_source(i) {
                    tr.copied += 1;
                }
            }
        }
        tr.keys += merged.len() as u64;
        Ok(())
    }

    /// The statements writing one merged row on receiver `i`: key
    /// statements bind the key ($1..), row statements the row ($1).
    fn merged_statements(&self, i: usize, tab: &TableCtx<'_>) -> Vec<(String, bool)> {
        let (t, keys) = (tab.t, tab.keys());
        let types = tab.types_on(&self.names[i]);
        let keyvals: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(j, ty)| format!("${}::text::{ty}", j + 1))
            .collect();
        let mut sqls: Vec<(String, bool)> = Vec::new();
        let from_json = format!(
            "SELECT {c} FROM json_populate_record(NULL::{tbl}, $1::text::json)",
            c = tab.meta.cols,
            tbl = t.name.sql()
        );
        if self.is_source(i) {
            sqls.push((
                format!(
                    "INSERT INTO pg_temp.capra_in_keys ({keys}, capra_from) VALUES ({}, -1)",
                    keyvals.join(", ")
                ),
                true,
            ));
            sqls.push((
                format!("INSERT INTO pg_temp.capra_in_rows ({}) {from_json}", tab.meta.cols),
                false,
            ));
        } else {
            sqls.push((
                format!(
                    "DELETE FROM {} WHERE {}",
                    tab.tbl_on(&self.names[i]),
                    key_params_eq(&tab.qk, &types, &tab.ops_on(&self.names[i]), "")
                ),
                true,
            ));
            sqls.push((
                // Identity columns keep the source's values.
                format!(
                    "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE {from_json}",
                    t.name.sql(),
                    tab.meta.cols
                ),
                false,
            ));
            if let Some(mid) = tab.md[i] {
                sqls.push((
                    format!("INSERT INTO capra.delta_{mid} ({keys}) VALUES ({})", keyvals.join(", ")),
                    true,
                ));
            }
        }
        sqls
    }

    /// Applies what was staged on receiver `r`, a receiving source, in the
    /// order that lets a unique value move between rows within the run:
    /// the existing rows are locked and checked for late changes (keys the
    /// application changed there after this run's snapshot, each settled
    /// as a conflict), rows the winner no longer has are deleted and the
    /// others updated in place; only then are new rows inserted (and the
    /// keys they take checked the same way). Returns the keys the
    /// application held, with the source that won each.
    pub(super) fn finish_source(
        &mut self,
        r: usize,
        st: &mut Settle<'_, '_>,
        srcs: &mut [Src<'_>],
        tab: &TableCtx<'_>,
        tr: &mut TableReport,
    ) -> Result<Vec<(i32, Vec<String>)>> {
        let Recv::Source(x) = self.kinds[r] else {
            return Ok(Vec::new());
        };
        let mut on = OnSource {
            tx: &mut self.txs[r],
            db: &self.names[r],
            x,
            tab,
            md: tab.md[r],
            tbl: tab.tbl_on(&self.names[r]),
        };
        on.lock()?;
        let mut busy = on.set_aside()?;
        // The rows held now cannot change any more: their late changes are
        // settled and they are written first, which frees the unique
        // values they give up for the rows inserted below.
        on.tx
            .batch_execute(
                "DROP TABLE IF EXISTS pg_temp.capra_checked;
                 CREATE TEMP TABLE capra_checked ON COMMIT DROP AS SELECT * FROM pg_temp.capra_locked",
            )
            .ctx(|| "noting the rows held".into())?;
        on.late_changes(st, srcs, tr, Held::First)?;
        on.write_held(tr, Held::First)?;
        // New rows go in before their keys' late check: from here on an
        // application insert of the same key waits for this run.
        let insert_new = on.insert_new_sql();
        tr.copied += on
            .tx
            .execute(&insert_new, &[])
            .ctx(|| format!("inserting rows of {} on \"{}\"", tab.shown(), on.db))?;
        on.lock_created()?;
        busy.extend(on.set_aside()?);
        on.late_changes(st, srcs, tr, Held::Later)?;
        on.apply_staged(&insert_new, tr)?;
        Ok(busy)
    }
}

/// Which of a receiving source's rows a step covers: those locked first
/// (existing when the apply began), or the keys taken later (rows this
/// run inserted, and rows the application created meanwhile).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    First,
    Later,
}

impl Held {
    /// The condition, over alias `a`, selecting this step's keys.
    fn cond(self, tab: &TableCtx<'_>, db: &str, a: &str) -> String {
        let not = if self == Held::First { "" } else { "NOT " };
        format!(
            "{not}EXISTS (SELECT 1 FROM pg_temp.capra_checked c WHERE {})",
            tab.on(db, "c", a)
        )
    }
}

/// One receiving source while its staged rows are applied.
struct OnSource<'a, 'c, 't> {
    tx: &'a mut Transaction<'c>,
    db: &'a str,
    /// Its index among the sources.
    x: usize,
    tab: &'a TableCtx<'t>,
    md: Option<i32>,
    /// The table as statements name it.
    tbl: String,
}

impl OnSource<'_, '_, '_> {
    /// Locks the rows about to change, skipping those the application
    /// holds right now (capra does not queue behind the application's row
    /// locks, so it cannot deadlock with them there). A skipped key is
    /// sent again by the next run (its winner logs it once more); by then
    /// the application's transaction has ended and its change, if any, is
    /// in the log. Only rows locked here, or inserted by this run, are
    /// changed below: a row the application creates meanwhile is never
    /// touched.
    fn lock(&mut self) -> Result<()> {
        let (tab, tbl, db) = (self.tab, &self.tbl, self.db);
        let keys = tab.keys();
        let cols_t = tab.keys_of("t");
        self.tx
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.capra_locked, pg_temp.capra_inserted;
         CREATE TEMP TABLE capra_locked ON COMMIT DROP AS SELECT {keys} FROM {tbl} WITH NO DATA;
         CREATE TEMP TABLE capra_inserted ON COMMIT DROP AS SELECT {keys} FROM {tbl} WITH NO DATA"
            ))
            .ctx(|| "preparing to lock rows".into())?;
        // Rows to update take the lock an UPDATE needs; rows to delete, and
        // rows whose key takes another form (1.0 for 1.00: a key update),
        // the one a DELETE needs (so it never waits later, say for a
        // foreign key check).
        let same_key = format!(
            "pg_catalog.record_image_eq(ROW({}), ROW({}))",
            tab.keys_of("s"),
            tab.keys_of("t")
        );
        for (staged, mode) in [("EXISTS", "NO KEY UPDATE"), ("NOT EXISTS", "UPDATE")] {
            self.tx
                .execute(
                    &format!(
                        "WITH l AS (SELECT {cols_t} FROM {tbl} t WHERE EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})
                              AND {staged} (SELECT 1 FROM pg_temp.capra_in_rows s WHERE {} AND {same_key})
                              FOR {mode} OF t SKIP LOCKED)
                 INSERT INTO pg_temp.capra_locked SELECT * FROM l",
                        tab.on(db, "k", "t"),
                        tab.on(db, "s", "t")
                    ),
                    &[],
                )
                .ctx(|| format!("locking the rows of {} about to change on \"{db}\"", tab.shown()))?;
        }
        Ok(())
    }

    /// Inserts the staged rows whose key is absent here, noting them.
    fn insert_new_sql(&self) -> String {
        format!(
            "WITH ins AS (INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM pg_temp.capra_in_rows s WHERE NOT EXISTS (SELECT 1 FROM {tbl} t WHERE {})
                      RETURNING {keys})
         INSERT INTO pg_temp.capra_inserted SELECT * FROM ins",
            self.tab.t.name.sql(),
            self.tab.on(self.db, "t", "s"),
            c = self.tab.meta.cols,
            tbl = self.tbl,
            keys = self.tab.keys()
        )
    }

    /// Rows the application created since the first lock: lock them too
    /// (or set them aside), so every key of the batch is now held by this
    /// run.
    fn lock_created(&mut self) -> Result<()> {
        let (tab, tbl, db) = (self.tab, &self.tbl, self.db);
        self.tx
            .execute(
                &format!(
                    "WITH l AS (SELECT {} FROM {tbl} t WHERE EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})
                          AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})
                          AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_inserted i WHERE {})
                          FOR UPDATE OF t SKIP LOCKED)
             INSERT INTO pg_temp.capra_locked SELECT * FROM l",
                    tab.keys_of("t"),
                    tab.on(db, "k", "t"),
                    tab.on(db, "l", "t"),
                    tab.on(db, "i", "t")
                ),
                &[],
            )
            .ctx(|| format!("locking the rows of {} created meanwhile on \"{db}\"", tab.shown()))?;
        Ok(())
    }

    /// Takes out of the staging tables the keys whose row exists on this
    /// source but is neither locked nor inserted by this run (the
    /// application holds it); returns them with the source that won each.
    fn set_aside(&mut self) -> Result<Vec<(i32, Vec<String>)>> {
        let (tab, tbl, db) = (self.tab, &self.tbl, self.db);
        let rows = self
            .tx
            .query(
                &format!(
                    "DELETE FROM pg_temp.capra_in_keys k
                  WHERE EXISTS (SELECT 1 FROM {tbl} t WHERE {})
                    AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})
                    AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_inserted i WHERE {})
              RETURNING {}, k.capra_from",
                    tab.on(db, "t", "k"),
                    tab.on(db, "l", "k"),
                    tab.on(db, "i", "k"),
                    tab.qk
                        .iter()
                        .map(|k| format!("k.{k}::text"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[],
            )
            .ctx(|| {
                format!(
                    "setting aside rows of {} held by the application on \"{db}\"",
                    tab.shown()
                )
            })?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.tx
            .execute(
                &format!(
                    "DELETE FROM pg_temp.capra_in_rows s WHERE NOT EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})",
                    tab.on(db, "k", "s")
                ),
                &[],
            )
            .ctx(|| "setting aside staged rows".into())?;
        let n = tab.qk.len();
        tracing::debug!(
            "{} row(s) of {} on \"{db}\" are locked by the application; the next run sends them again",
            rows.len(),
            tab.human()
        );
        let what = "a row held by the application";
        rows.iter()
            .map(|r| {
                let key = (0..n).map(|j| r.col(j, what)).collect::<Result<Vec<String>>>()?;
                Ok((r.col(n, what)?, key))
            })
            .collect()
    }

    /// Late changes: keys of the batch logged here after this run's
    /// snapshot of this source; each is settled as a conflict and the
    /// staging tables follow the decision.
    fn late_changes(
        &mut self,
        st: &mut Settle<'_, '_>,
        srcs: &mut [Src<'_>],
        tr: &mut TableReport,
        held: Held,
    ) -> Result<()> {
        let (tab, x, db) = (self.tab, self.x, self.db);
        let (Some(id), true) = (srcs[x].id_of(tab.t), srcs[x].prev_lit.is_some()) else {
            return Ok(());
        };
        let cur = snapshot_literal(&srcs[x].cur)?;
        let time = srcs[x].time_expr();
        let late = self
            .tx
            .query(
                &format!(
                    "SELECT {}, k.capra_from, {time} FROM pg_temp.capra_in_keys k JOIN capra.delta_{id} d ON {}
                      WHERE d.capra_txid >= txid_snapshot_xmin({cur}) AND NOT txid_visible_in_snapshot(d.capra_txid, {cur})
                        AND d.capra_txid <> txid_current() AND {}
                      GROUP BY {}, k.capra_from",
                    tab.qk
                        .iter()
                        .map(|k| format!("k.{k}::text"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    tab.on(db, "d", "k"),
                    held.cond(tab, db, "k"),
                    tab.keys_of("k")
                ),
                &[],
            )
            .ctx(|| format!("looking for late changes of {} on \"{db}\"", tab.shown()))?;
        let n = tab.qk.len();
        for r in late {
            let what = "a late change";
            let key: Vec<String> = (0..n).map(|j| r.col(j, what)).collect::<Result<_>>()?;
            let from: i32 = r.col(n, what)?;
            let late_at: Option<f64> = r.col(n + 1, what)?;
            tr.conflicts += 1;
            let decision = self.decide_late(st, srcs, &key, from, late_at)?;
            self.follow(&key, &decision, tr)?;
        }
        Ok(())
    }

    /// Settles one late change against the source whose change this run
    /// was applying (`from`; negative: a row a hook composed).
    fn decide_late(
        &mut self,
        st: &mut Settle<'_, '_>,
        srcs: &mut [Src<'_>],
        key: &[String],
        from: i32,
        late_at: Option<f64>,
    ) -> Result<Decision> {
        let (tab, x, db) = (self.tab, self.x, self.db);
        let mine = Contender {
            src: x,
            db: db.to_string(),
            at: late_at,
        };
        if from < 0 {
            // Against a row a hook composed: the later change stands.
            let rec = Record {
                table: tab.human(),
                key: tab
                    .meta
                    .keycols
                    .iter()
                    .zip(key)
                    .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
                contenders: vec![mine],
                winner: Winner::Db(db.to_string()),
                reason: "changed again after a merged row was decided".into(),
            };
            st.env.conflicts.borrow_mut().push(rec);
            return Ok(Decision::Winner(x));
        }
        let w = from as usize;
        let theirs = Contender {
            src: w,
            db: srcs[w].db.name.clone(),
            at: key_time(&mut srcs[w], tab, key)?,
        };
        let tx = &mut *self.tx;
        let mut rows = || -> Result<Vec<(String, Option<serde_json::Value>)>> {
            let wname = srcs[w].db.name.clone();
            let theirs = row_json(&mut srcs[w].tx, tab, &wname, key)?;
            Ok(vec![(wname, theirs), (db.to_string(), row_json(tx, tab, db, key)?)])
        };
        st.settle(
            tab,
            key,
            vec![theirs, mine],
            &mut rows,
            Some(&format!("changed on {db} while this run applied it")),
        )
    }

    /// Makes the staging tables follow a late change's decision: a kept
    /// local change drops the staged key and row (and takes back a row
    /// this run inserted); a merged row replaces the staged one.
    fn follow(&mut self, key: &[String], decision: &Decision, tr: &mut TableReport) -> Result<()> {
        let (tab, db) = (self.tab, self.db);
        let cond = key_params_eq(&tab.qk, &tab.types_on(db), &tab.ops_on(db), "");
        let params = text_params(key);
        let keep_mine = match decision {
            Decision::Winner(w) => *w == self.x,
            Decision::Skip => true,
            Decision::Merge(_) | Decision::Abort => false,
        };
        let merge = matches!(decision, Decision::Merge(_));
        if keep_mine || merge {
            self.tx
                .execute(&format!("DELETE FROM pg_temp.capra_in_rows WHERE {cond}"), &params)
                .ctx(|| "dropping a staged row".into())?;
        }
        if keep_mine {
            self.tx
                .execute(&format!("DELETE FROM pg_temp.capra_in_keys WHERE {cond}"), &params)
                .ctx(|| "dropping a staged key".into())?;
        }
        // A row this run inserted above gives way to the kept one; with a
        // merge, the merged row goes in below (or replaces a locked row
        // in place).
        if keep_mine || merge {
            let n = self
                .tx
                .execute(&format!("DELETE FROM pg_temp.capra_inserted WHERE {cond}"), &params)
                .ctx(|| "dropping an inserted key".into())?;
            if n > 0 {
                self.tx
                    .execute(&format!("DELETE FROM {} WHERE {cond}", self.tbl), &params)
                    .ctx(|| format!("taking back a row of {} on \"{db}\"", tab.shown()))?;
                tr.copied = tr.copied.saturating_sub(1);
            }
        }
        if let Decision::Merge(row) = decision {
            let text = row.to_string();
            self.tx
                .execute(
                    &format!(
                        "INSERT INTO pg_temp.capra_in_rows ({c}) SELECT {c} FROM json_populate_record(NULL::{tbl}, $1::text::json)",
                        c = tab.meta.cols,
                        tbl = tab.t.name.sql()
                    ),
                    &[&text],
                )
                .ctx(|| "staging a merged row".into())?;
        }
        Ok(())
    }

    /// The rest of the apply: the rows taken later (see [`Held`]) are
    /// written like the first, then rows a hook composed for keys absent
    /// here go in, and makedelta logs every key.
    fn apply_staged(&mut self, insert_new: &str, tr: &mut TableReport) -> Result<()> {
        let (tab, db) = (self.tab, self.db);
        self.write_held(tr, Held::Later)?;
        tr.copied += self
            .tx
            .execute(insert_new, &[])
            .ctx(|| format!("inserting merged rows of {} on \"{db}\"", tab.shown()))?;
        if let Some(mid) = self.md {
            let keys = tab.keys();
            self.tx
                .execute(
                    &format!("INSERT INTO capra.delta_{mid} ({keys}) SELECT {keys} FROM pg_temp.capra_in_keys"),
                    &[],
                )
                .ctx(|| format!("logging the rows of {} applied on \"{db}\" (makedelta)", tab.shown()))?;
        }
        self.tx
            .batch_execute(
                "DROP TABLE pg_temp.capra_in_keys, pg_temp.capra_in_rows, pg_temp.capra_locked, pg_temp.capra_inserted,
                            pg_temp.capra_checked",
            )
            .ctx(|| "dropping the staging tables".into())?;
        Ok(())
    }

    /// Writes the rows this run holds (of one [`Held`] step): deletes
    /// what the winner no longer has, then updates the others in place
    /// (an application UPDATE queued on the lock then applies on top of
    /// it). Rows that trade unique values among themselves (a swap) cannot
    /// be updated in one statement, as PostgreSQL checks a unique index
    /// row by row: those are rewritten by delete and insert instead.
    fn write_held(&mut self, tr: &mut TableReport, held: Held) -> Result<()> {
        let (tab, tbl, db) = (self.tab, &self.tbl, self.db);
        let mine = format!(
            "EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {}) AND {}",
            tab.on(db, "l", "t"),
            held.cond(tab, db, "t")
        );
        tr.deleted += self
            .tx
            .execute(
                &format!(
                    "DELETE FROM {tbl} t USING pg_temp.capra_in_keys k WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_in_rows s WHERE {})
                   AND {mine}",
                    tab.on(db, "t", "k"),
                    tab.on(db, "s", "t"),
                ),
                &[],
            )
            .ctx(|| format!("deleting rows of {} on \"{db}\"", tab.shown()))?;
        if tab.meta.settable.is_empty() {
            return Ok(());
        }
        let set: Vec<String> = tab
            .meta
            .settable
            .iter()
            .map(|c| format!("{0} = s.{0}", quote_ident(c)))
            .collect();
        let update = format!(
            "UPDATE {tbl} t SET {} FROM pg_temp.capra_in_rows s WHERE {} AND {mine}",
            set.join(", "),
            tab.on(db, "t", "s"),
        );
        let mut sp = self.tx.savepoint("capra_update").ctx(|| "savepoint".into())?;
        match sp.execute(&update, &[]) {
            Ok(n) => {
                sp.commit().ctx(|| "savepoint".into())?;
                tr.copied += n;
                Ok(())
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::UNIQUE_VIOLATION | &SqlState::EXCLUSION_VIOLATION)
                ) =>
            {
                drop(sp);
                tracing::info!(
                    "Rows of {} on \"{db}\" trade unique values ({}); rewriting them by delete and insert",
                    tab.human(),
                    crate::pg::error::flatten(&e.to_string())
                );
                self.rewrite_held(tr, &mine, &update)
            }
            Err(e) => Err(e).ctx(|| format!("updating rows of {} on \"{db}\"", tab.shown())),
        }
    }

    /// The fallback of [`Self::write_held`] (`update`: its in-place
    /// UPDATE): only the held rows whose unique-indexed columns change are
    /// deleted, the others updated in place, then the deleted ones
    /// inserted from their staged rows, so the values they trade are free
    /// when taken. (Of those rows, columns only this database has take
    /// their defaults, and an application UPDATE queued on one finds it
    /// gone: the in-place path stays the rule.) Without a way to tell
    /// which columns are unique (an index on an expression), every held
    /// row is rewritten.
    fn rewrite_held(&mut self, tr: &mut TableReport, mine: &str, update: &str) -> Result<()> {
        let unique = self.unique_columns()?;
        let (tab, tbl, db) = (self.tab, &self.tbl, self.db);
        let moving = match unique {
            Some(cols) if !cols.is_empty() => {
                let differ: Vec<String> = cols
                    .iter()
                    .map(|c| format!("t.{0} IS DISTINCT FROM s.{0}", quote_ident(c)))
                    .collect();
                format!(" AND ({})", differ.join(" OR "))
            }
            _ => String::new(),
        };
        let keys_t = tab.keys_of("t");
        self.tx
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS pg_temp.capra_moved;
                 CREATE TEMP TABLE capra_moved ON COMMIT DROP AS SELECT {} FROM {tbl} WITH NO DATA",
                tab.keys()
            ))
            .ctx(|| "preparing to rewrite rows".into())?;
        let moved = self
            .tx
            .execute(
                &format!(
                    "WITH gone AS (DELETE FROM {tbl} t USING pg_temp.capra_in_rows s WHERE {} AND {mine}{moving} RETURNING {keys_t})
                     INSERT INTO pg_temp.capra_moved SELECT * FROM gone",
                    tab.on(db, "t", "s")
                ),
                &[],
            )
            .ctx(|| format!("deleting rows of {} to rewrite on \"{db}\"", tab.shown()))?;
        tracing::info!(
            "Rewriting {moved} row(s) of {} on \"{db}\" by delete and insert",
            tab.human()
        );
        tr.copied += self
            .tx
            .execute(update, &[])
            .ctx(|| format!("updating rows of {} on \"{db}\"", tab.shown()))?;
        // The moved rows, from their staged rows (`t` there).
        tr.copied += self
            .tx
            .execute(
                &format!(
                    "INSERT INTO {} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM pg_temp.capra_in_rows t
                      WHERE EXISTS (SELECT 1 FROM pg_temp.capra_moved m WHERE {})",
                    tab.t.name.sql(),
                    tab.on(db, "m", "t"),
                    c = tab.meta.cols
                ),
                &[],
            )
            .ctx(|| format!("rewriting rows of {} on \"{db}\"", tab.shown()))?;
        Ok(())
    }

    /// The columns of the table's unique indexes and exclusion constraints
    /// on this database that capra writes; None when one of them is on an
    /// expression.
    fn unique_columns(&mut self) -> Result<Option<Vec<String>>> {
        let (tab, db) = (self.tab, self.db);
        let indexes = unique_indexes(self.tx, tab, db)?;
        if indexes.iter().any(|x| x.expression) {
            return Ok(None);
        }
        let mut cols: Vec<String> = indexes
            .into_iter()
            .flat_map(|x| x.cols)
            .filter(|c| tab.meta.settable.contains(c))
            .collect();
        cols.sort();
        cols.dedup();
        Ok(Some(cols))
    }
}

/// The condition keeping a receiving source's own changes since its stored
/// position (in this run or later) when rows are deleted there in bulk.
pub(super) fn spare_clause(srcs: &[Src<'_>], kind: Recv, tab: &TableCtx<'_>) -> Option<String> {
    let Recv::Source(x) = kind else { return None };
    let s = &srcs[x];
    let id = s.id_of(tab.t)?;
    let p = s.prev_lit.as_deref()?;
    // The application's own changes only: not what this sync logged there.
    Some(format!(
        "NOT EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE {} AND d.capra_txid >= txid_snapshot_xmin({p}) AND NOT txid_visible_in_snapshot(d.capra_txid, {p}) AND d.capra_txid <> txid_current(){})",
        tab.on(&s.db.name, "d", "t"),
        s.own
    ))
}

/// Deletes on a receiving source the rows matching `cond` (over `t`),
/// without waiting for the application: rows it holds are skipped and
/// returned (their keys, as text), for the next run to settle. `cond` is
/// checked again after locking, in a fresh snapshot, so a change the
/// application committed meanwhile is spared.
fn delete_on_source(
    tx: &mut Transaction<'_>,
    db: &str,
    tab: &TableCtx<'_>,
    cond: &str,
    md: Option<i32>,
) -> Result<(u64, Vec<Vec<String>>)> {
    let keys = tab.keys();
    let tk = tab.keys_of("t");
    let tbl = tab.tbl_on(db);
    let on = tab.on(db, "t", "l");
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.capra_dlocked; CREATE TEMP TABLE capra_dlocked ON COMMIT DROP AS SELECT {keys} FROM {tbl} WITH NO DATA"
    ))
    .ctx(|| "preparing to delete rows".into())?;
    tx.execute(
        &format!(
            "WITH l AS (SELECT {tk} FROM {tbl} t WHERE {cond} FOR UPDATE OF t SKIP LOCKED) INSERT INTO pg_temp.capra_dlocked SELECT * FROM l"
        ),
        &[],
    )
    .ctx(|| format!("locking rows of {} to delete on \"{db}\"", tab.shown()))?;
    let del = format!("DELETE FROM {tbl} t USING pg_temp.capra_dlocked l WHERE {on} AND {cond}");
    let sql = match md {
        Some(mid) => {
            format!("WITH gone AS ({del} RETURNING {tk}) INSERT INTO capra.delta_{mid} ({keys}) SELECT * FROM gone")
        }
        None => del,
    };
    let n = tx
        .execute(&sql, &[])
        .ctx(|| format!("deleting rows of {} on \"{db}\"", tab.shown()))?;
    let n_keys = tab.qk.len();
    let held: Vec<Vec<String>> = tx
        .query(
            &format!(
                "SELECT {} FROM {tbl} t WHERE {cond}",
                tab.qk
                    .iter()
                    .map(|k| format!("t.{k}::text"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[],
        )
        .ctx(|| format!("reading rows of {} held by the application on \"{db}\"", tab.shown()))?
        .iter()
        .map(|r| (0..n_keys).map(|j| r.col(j, "a row held by the application")).collect())
        .collect::<Result<_>>()?;
    tx.batch_execute("DROP TABLE pg_temp.capra_dlocked")
        .ctx(|| "dropping the lock table".into())?;
    Ok((n, held))
}

/// rebuild_index: switches a table's index maintenance off before a full
/// load and back on after it (a REINDEX follows); needs a superuser.
pub(super) fn set_indexes(tx: &mut Transaction<'_>, db: &str, tab: &TableCtx<'_>, on: bool) -> Result<()> {
    let t = tab.t;
    tx.execute(
        "UPDATE pg_catalog.pg_class SET relhasindex = $2 WHERE oid = $1::text::regclass",
        &[&t.name.sql(), &on],
    )
    .ctx(|| {
        format!(
            "switching the indexes of {} {} on \"{db}\" (rebuild_index needs a superuser)",
            t.name.shown(),
            if on { "back on" } else { "off" }
        )
    })?;
    Ok(())
}

/// TRUNCATE (falling back to DELETE when foreign keys forbid it) or DELETE;
/// returns rows deleted (0 for a truncate).
pub(super) fn truncate_or_delete(
    tx: &mut Transaction<'_>,
    db: &str,
    tab: &TableCtx<'_>,
    method: DeleteMethod,
) -> Result<u64> {
    let tbl = tab.tbl_on(db);
    if method != DeleteMethod::Delete {
        let cascade = if method == DeleteMethod::TruncateCascade {
            " CASCADE"
        } else {
            ""
        };
        let mut sp = tx.savepoint("capra_truncate").ctx(|| "savepoint".into())?;
        match sp.batch_execute(&format!("TRUNCATE {tbl}{cascade}")) {
            Ok(()) => {
                sp.commit().ctx(|| "savepoint".into())?;
                return Ok(0);
            }
            Err(e) => {
                tracing::debug!(
                    "TRUNCATE of {} on {db} failed ({}); using DELETE",
                    tab.human(),
                    crate::pg::error::describe(&e)
                );
                drop(sp);
            }
        }
    }
    tx.execute(&format!("DELETE FROM {tbl}"), &[])
        .ctx(|| format!("emptying {} on \"{db}\"", tab.shown()))
}

/// Creates the staging tables on a receiving source: the keys to apply
/// (with the index of the source that won them) and their rows.
fn stage_tables(tx: &mut Transaction<'_>, db: &str, tab: &TableCtx<'_>) -> Result<()> {
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.capra_in_keys, pg_temp.capra_in_rows;
         CREATE TEMP TABLE capra_in_keys ON COMMIT DROP AS SELECT {keys}, 0::integer AS capra_from FROM {tbl} WITH NO DATA;
         CREATE TEMP TABLE capra_in_rows ON COMMIT DROP AS SELECT {cols} FROM {tbl} WITH NO DATA",
        keys = tab.keys(),
        tbl = tab.tbl_on(db),
        cols = tab.meta.cols
    ))
    .ctx(|| format!("preparing to apply {} on \"{db}\"", tab.shown()))
}
