//! The write side of a run: targets get changed keys deleted and their rows
//! copied in; a receiving source (multi-master) gets rows staged, locked
//! without waiting on the application, checked for late changes and
//! applied in place; truncations and partition moves are replayed.

use std::collections::BTreeSet;

use postgres::Transaction;

use super::copy::pipe;
use super::run::*;
use crate::catalog::model::Relation;
use crate::domain::conflict::{Contender, Decision, Record};
use crate::domain::DeleteMethod;
use crate::error::{Context, Result};
use crate::pg::ident::quote_ident;

use super::settle::*;
use super::source::*;

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

/// `SELECT u.a1::t1, ... FROM unnest($1::text[], ...) AS u(a1, ...)`, with
/// an optional extra constant column.
pub(super) fn unnest_select(types: &[String], extra: Option<&str>) -> String {
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
pub(super) fn spare_clause(srcs: &[Src<'_>], kind: Recv, t: &Relation, meta: &TableMeta) -> Option<String> {
    let Recv::Source(x) = kind else { return None };
    let s = &srcs[x];
    let id = s.id_of(t)?;
    let p = s.prev_lit.as_deref()?;
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    // The application's own changes only: not what this sync logged there.
    Some(format!(
        "NOT EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE {} AND d.txid >= txid_snapshot_xmin({p}) AND NOT txid_visible_in_snapshot(d.txid, {p}) AND d.txid <> txid_current(){})",
        key_eq(&qk, "d", "t"),
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
    t: &Relation,
    meta: &TableMeta,
    cond: &str,
    md: Option<i32>,
) -> Result<(u64, Vec<Vec<String>>)> {
    let qk: Vec<String> = meta.keycols.iter().map(|k| quote_ident(k)).collect();
    let keys = qk.join(", ");
    let tk = qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
    let tbl = format!("{}{}", meta.only, t.name.sql());
    let on = key_eq(&qk, "t", "l");
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
    .ctx(|| format!("locking rows of {} to delete on \"{db}\"", t.name.human()))?;
    let del = format!("DELETE FROM {tbl} t USING pg_temp.capra_dlocked l WHERE {on} AND {cond}");
    let sql = match md {
        Some(mid) => {
            format!("WITH gone AS ({del} RETURNING {tk}) INSERT INTO capra.delta_{mid} ({keys}) SELECT * FROM gone")
        }
        None => del,
    };
    let n = tx
        .execute(&sql, &[])
        .ctx(|| format!("deleting rows of {} on \"{db}\"", t.name.human()))?;
    let held: Vec<Vec<String>> = tx
        .query(
            &format!(
                "SELECT {} FROM {tbl} t WHERE {cond}",
                qk.iter().map(|k| format!("t.{k}::text")).collect::<Vec<_>>().join(", ")
            ),
            &[],
        )
        .ctx(|| format!("reading rows of {} held by the application on \"{db}\"", t.name.human()))?
        .iter()
        .map(|r| (0..qk.len()).map(|j| r.get::<_, String>(j)).collect())
        .collect();
    tx.batch_execute("DROP TABLE pg_temp.capra_dlocked")
        .ctx(|| "dropping the lock table".into())?;
    Ok((n, held))
}

/// Replays a source's TRUNCATE on one receiver. A target is truncated; a
/// source is emptied with DELETE (its own run holds a lock TRUNCATE would
/// wait for), sparing the rows it changed itself since its position and,
/// without waiting, the rows its application holds (returned: the next run
/// settles them).
pub(super) fn replay_truncate(
    srcs: &[Src<'_>],
    tx: &mut Transaction<'_>,
    db: &str,
    kind: Recv,
    t: &Relation,
    meta: &TableMeta,
    md: Option<i32>,
) -> Result<Vec<Vec<String>>> {
    match spare_clause(srcs, kind, t, meta) {
        Some(spare) => {
            let (_, held) = delete_on_source(tx, db, t, meta, &spare, md)?;
            return Ok(held);
        }
        None => {
            truncate_or_delete(tx, db, t, meta, DeleteMethod::Truncate)?;
            if let Some(mid) = md {
                tx.execute("INSERT INTO capra.truncate_log (captured) VALUES ($1)", &[&mid])
                    .ctx(|| format!("logging a TRUNCATE of {} on \"{db}\" (makedelta)", t.name.human()))?;
            }
        }
    }
    Ok(Vec::new())
}

/// After a partition of `t` was truncated or dropped on a source: deletes
/// on each receiver every row whose key that source no longer has. The
/// source's keys stream into a temporary table on each receiver (COPY), so
/// this is exact whatever partitions the receivers have. `spare` keeps a
/// receiving source's own recent changes; `md` logs what was deleted.
#[allow(clippy::too_many_arguments)]
pub(super) fn delete_missing(
    stx: &mut Transaction<'_>,
    txs: &mut [Transaction<'_>],
    names: &[String],
    idx: &[usize],
    t: &Relation,
    meta: &TableMeta,
    spare: &[Option<String>],
    md: &[Option<i32>],
) -> Result<(u64, Vec<Vec<String>>)> {
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
    let mut held = Vec::new();
    for &i in idx {
        if let Some(s) = &spare[i] {
            let cond = format!(
                "NOT EXISTS (SELECT 1 FROM pg_temp.capra_keys k WHERE ({}) = ({})) AND {s}",
                qk.iter().map(|k| format!("k.{k}")).collect::<Vec<_>>().join(", "),
                qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ")
            );
            let (n, h) = delete_on_source(&mut txs[i], &names[i], t, meta, &cond, md[i])?;
            deleted += n;
            held.extend(h);
            txs[i]
                .batch_execute("DROP TABLE pg_temp.capra_keys")
                .ctx(|| "dropping the key table".into())?;
            continue;
        }
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
    Ok((deleted, held))
}

/// rebuild_index: switches a table's index maintenance off before a full
/// load and back on after it (a REINDEX follows); needs a superuser.
pub(super) fn set_indexes(tx: &mut Transaction<'_>, db: &str, t: &Relation, on: bool) -> Result<()> {
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
pub(super) fn truncate_or_delete(
    tx: &mut Transaction<'_>,
    db: &str,
    t: &Relation,
    meta: &TableMeta,
    method: DeleteMethod,
) -> Result<u64> {
    if method != DeleteMethod::Delete {
        let cascade = if method == DeleteMethod::TruncateCascade {
            " CASCADE"
        } else {
            ""
        };
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
pub(super) fn apply_from(
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
pub(super) fn stage_tables(tx: &mut Transaction<'_>, db: &str, t: &Relation, meta: &TableMeta) -> Result<()> {
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
pub(super) fn apply_merged(
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
pub(super) fn finish_source(
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
    let on = |a: &str, b: &str| key_eq(&qk, a, b);
    let tbl = format!("{}{}", meta.only, t.name.sql());
    // Lock the rows about to change, skipping those the application holds
    // right now (capra does not queue behind the application's row locks,
    // so it cannot deadlock with them there). A skipped key is sent again
    // by the next run (its winner logs it once more); by then the
    // application's transaction has ended and its change, if any, is in
    // the log. Only rows locked here, or inserted by this run, are changed
    // below: a row the application creates meanwhile is never touched.
    let cols_t = qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ");
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.capra_locked, pg_temp.capra_inserted;
         CREATE TEMP TABLE capra_locked ON COMMIT DROP AS SELECT {keys} FROM {tbl} WITH NO DATA;
         CREATE TEMP TABLE capra_inserted ON COMMIT DROP AS SELECT {keys} FROM {tbl} WITH NO DATA"
    ))
    .ctx(|| "preparing to lock rows".into())?;
    // Rows to update take the lock an UPDATE needs; rows to delete the one
    // a DELETE needs (so it never waits later, say for a foreign key check).
    for (staged, mode) in [("EXISTS", "NO KEY UPDATE"), ("NOT EXISTS", "UPDATE")] {
        tx.execute(
            &format!(
                "WITH l AS (SELECT {cols_t} FROM {tbl} t WHERE EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})
                              AND {staged} (SELECT 1 FROM pg_temp.capra_in_rows s WHERE {})
                              FOR {mode} OF t SKIP LOCKED)
                 INSERT INTO pg_temp.capra_locked SELECT * FROM l",
                on("k", "t"),
                on("s", "t")
            ),
            &[],
        )
        .ctx(|| format!("locking the rows of {} about to change on \"{db}\"", t.name.human()))?;
    }
    let mut busy: Vec<(i32, Vec<String>)> = set_aside(tx, db, t, &qk, &tbl)?;
    // New rows go in now, before the late check: from here on an
    // application insert of the same key waits for this run.
    let insert_new = format!(
        "WITH ins AS (INSERT INTO {} ({c}) SELECT {c} FROM pg_temp.capra_in_rows s WHERE NOT EXISTS (SELECT 1 FROM {tbl} t WHERE {})
                      RETURNING {keys})
         INSERT INTO pg_temp.capra_inserted SELECT * FROM ins",
        t.name.sql(),
        on("t", "s"),
        c = meta.cols
    );
    tr.copied += tx
        .execute(&insert_new, &[])
        .ctx(|| format!("inserting rows of {} on \"{db}\"", t.name.human()))?;
    // Rows the application created since the first lock: lock them too (or
    // set them aside), so every key of the batch is now held by this run.
    tx.execute(
        &format!(
            "WITH l AS (SELECT {cols_t} FROM {tbl} t WHERE EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})
                          AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})
                          AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_inserted i WHERE {})
                          FOR UPDATE OF t SKIP LOCKED)
             INSERT INTO pg_temp.capra_locked SELECT * FROM l",
            on("k", "t"),
            on("l", "t"),
            on("i", "t")
        ),
        &[],
    )
    .ctx(|| format!("locking the rows of {} created meanwhile on \"{db}\"", t.name.human()))?;
    busy.extend(set_aside(tx, db, t, &qk, &tbl)?);
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
            // A row this run inserted above gives way to the kept one; with a
            // merge, the merged row goes in below (or replaces a locked row
            // in place).
            if keep_mine || matches!(decision, Decision::Merge(_)) {
                let n = tx
                    .execute(
                        &format!("DELETE FROM pg_temp.capra_inserted WHERE {}", cond.join(" AND ")),
                        &params,
                    )
                    .ctx(|| "dropping an inserted key".into())?;
                if n > 0 {
                    tx.execute(&format!("DELETE FROM {tbl} WHERE {}", cond.join(" AND ")), &params)
                        .ctx(|| format!("taking back a row of {} on \"{db}\"", t.name.human()))?;
                    tr.copied = tr.copied.saturating_sub(1);
                }
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
    // Apply, on the rows this run holds: in place where the row exists (an
    // application UPDATE queued on the lock then applies on top of it),
    // delete what the winner lacks, and insert rows a hook composed for
    // keys absent here.
    tr.copied += tx
        .execute(&insert_new, &[])
        .ctx(|| format!("inserting merged rows of {} on \"{db}\"", t.name.human()))?;
    if !meta.nonkey.is_empty() {
        let set: Vec<String> = meta
            .nonkey
            .iter()
            .map(|c| format!("{0} = s.{0}", quote_ident(c)))
            .collect();
        tr.copied += tx
            .execute(
                &format!(
                    "UPDATE {tbl} t SET {} FROM pg_temp.capra_in_rows s WHERE {} AND EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})",
                    set.join(", "),
                    on("t", "s"),
                    on("l", "t")
                ),
                &[],
            )
            .ctx(|| format!("updating rows of {} on \"{db}\"", t.name.human()))?;
    }
    tr.deleted += tx
        .execute(
            &format!(
                "DELETE FROM {tbl} t USING pg_temp.capra_in_keys k WHERE {} AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_in_rows s WHERE {})
                   AND EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})",
                on("t", "k"),
                on("s", "t"),
                on("l", "t")
            ),
            &[],
        )
        .ctx(|| format!("deleting rows of {} on \"{db}\"", t.name.human()))?;
    if let Some(mid) = md {
        tx.execute(
            &format!("INSERT INTO capra.delta_{mid} ({keys}) SELECT {keys} FROM pg_temp.capra_in_keys"),
            &[],
        )
        .ctx(|| format!("logging the rows of {} applied on \"{db}\" (makedelta)", t.name.human()))?;
    }
    tx.batch_execute(
        "DROP TABLE pg_temp.capra_in_keys, pg_temp.capra_in_rows, pg_temp.capra_locked, pg_temp.capra_inserted",
    )
    .ctx(|| "dropping the staging tables".into())?;
    Ok(busy)
}

/// Takes out of the staging tables the keys whose row exists on this
/// source but is neither locked nor inserted by this run (the application
/// holds it); returns them with the source that won each.
fn set_aside(
    tx: &mut Transaction<'_>,
    db: &str,
    t: &Relation,
    qk: &[String],
    tbl: &str,
) -> Result<Vec<(i32, Vec<String>)>> {
    let on = |a: &str, b: &str| key_eq(qk, a, b);
    let rows = tx
        .query(
            &format!(
                "DELETE FROM pg_temp.capra_in_keys k
                  WHERE EXISTS (SELECT 1 FROM {tbl} t WHERE {})
                    AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_locked l WHERE {})
                    AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_inserted i WHERE {})
              RETURNING {}, k.capra_from",
                on("t", "k"),
                on("l", "k"),
                on("i", "k"),
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
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    tx.execute(
        &format!(
            "DELETE FROM pg_temp.capra_in_rows s WHERE NOT EXISTS (SELECT 1 FROM pg_temp.capra_in_keys k WHERE {})",
            on("k", "s")
        ),
        &[],
    )
    .ctx(|| "setting aside staged rows".into())?;
    let n = qk.len();
    tracing::debug!(
        "{} row(s) of {} on \"{db}\" are locked by the application; the next run sends them again",
        rows.len(),
        t.name.human()
    );
    Ok(rows
        .iter()
        .map(|r| (r.get(n), (0..n).map(|j| r.get::<_, String>(j)).collect()))
        .collect())
}

/// `a.k1 = b.k1 AND a.k2 = b.k2 ...` over quoted key columns.
pub(super) fn key_eq(qk: &[String], a: &str, b: &str) -> String {
    qk.iter()
        .map(|k| format!("{a}.{k} = {b}.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Keys (one `Vec` of column texts each) as one text array per key column,
/// for [`unnest_select`].
pub(super) fn key_columns(keys: &[Vec<String>], ncols: usize) -> Vec<Vec<String>> {
    (0..ncols)
        .map(|j| keys.iter().map(|k| k[j].clone()).collect())
        .collect()
}
