//! Conflicts inside a run: the keys changed on two or more sources found by
//! merging each source's sorted change stream (memory holds only the
//! conflicts), each settled by the Lua conflict hooks or the strategy, and
//! recorded for the conflict history.

use std::collections::VecDeque;

use postgres::Transaction;

use super::run::*;
use crate::catalog::model::Relation;
use crate::domain::conflict::{self, Contender, Decision, Record, Strategy};
use crate::error::{Context, Error, Result};
use crate::pg::ident::quote_ident;

use super::receive::{key_columns, unnest_select};
use super::source::*;

/// What settles conflicts in one table: the strategy and the hooks.
pub(super) struct Settle<'a, 'e> {
    pub(super) env: &'a RunEnv<'e>,
    pub(super) strategy: &'a Strategy,
    pub(super) sources: &'a [String],
    pub(super) newest: &'a [f64],
}

impl Settle<'_, '_> {
    /// Settles one conflict: the conflict hooks first (table-level, then
    /// sync-level), then the strategy. Records it.
    pub(super) fn settle(
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
pub(super) fn row_json(
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
pub(super) fn detect(
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
    let mut portals = Vec::new();
    for &c in changers {
        let s = &mut srcs[c];
        let id = ids[c].expect("changer");
        // The same key must print the same on every source: numerics lose
        // trailing zeros (1.50 and 1.5 are one key), timestamps with time
        // zone print in UTC.
        let types = meta.key_types.get(&s.db.name).cloned().unwrap_or_default();
        let text_keys: Vec<String> = qk
            .iter()
            .enumerate()
            .map(|(j, k)| match types.get(j).map(String::as_str) {
                Some(t) if t.starts_with("numeric") => format!(
                    "CASE WHEN strpos(d.{k}::text, '.') > 0 THEN rtrim(rtrim(d.{k}::text, '0'), '.') ELSE d.{k}::text END"
                ),
                // Whatever each server's TimeZone: UTC, with its offset, so
                // the text still casts back to the same instant.
                Some("timestamp with time zone") => format!("((d.{k} AT TIME ZONE 'UTC')::text || '+00')"),
                _ => format!("d.{k}::text"),
            })
            .collect();
        let order: Vec<String> = text_keys.iter().map(|k| format!("convert_to({k}, 'UTF8')")).collect();
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
pub(super) fn temp_keys(
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
    let arrays = key_columns(keys, meta.keycols.len());
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
