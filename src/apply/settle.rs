//! Conflicts inside a run: the keys changed on two or more sources found by
//! merging each source's sorted change stream (memory holds only the
//! conflicts), each settled by the Lua conflict hooks or the strategy, and
//! recorded for the conflict history.

use std::collections::VecDeque;

use postgres::{Portal, Transaction};

use super::context::{RunEnv, TableReport};
use super::error::ApplyError;
use super::source::Src;
use super::table::{
    array_params, key_columns, key_params_eq, text_params, unique_indexes, unnest_select, TableCtx, TableMeta,
};
use crate::domain::conflict::{self, Contender, Decision, Record, Strategy, Winner};
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// What settles conflicts in one table: the strategy and the hooks.
pub(super) struct Settle<'a, 'e> {
    pub(super) env: &'a RunEnv<'e>,
    pub(super) strategy: &'a Strategy,
    pub(super) sources: &'a [String],
    pub(super) newest: &'a [f64],
}

/// A conflict's rows on the sources involved, read only when a hook asks.
pub(super) type Rows<'r> = dyn FnMut() -> Result<Vec<(String, Option<serde_json::Value>)>> + 'r;

impl Settle<'_, '_> {
    /// Settles one conflict: the conflict hooks first (table-level, then
    /// sync-level), then the strategy. Records it.
    pub(super) fn settle(
        &mut self,
        tab: &TableCtx<'_>,
        key: &[String],
        contenders: Vec<Contender>,
        rows: &mut Rows<'_>,
        late: Option<&str>,
    ) -> Result<Decision> {
        let tname = tab.human();
        let meta = &tab.meta;
        let mut keymap = serde_json::Map::new();
        for (c, v) in meta.keycols.iter().zip(key) {
            keymap.insert(c.clone(), serde_json::Value::String(v.clone()));
        }
        let (decision, mut reason) = match self.ask_hooks(tab, key, &contenders, rows)? {
            Some((d, r)) => (d, r),
            None => (
                conflict::decide(self.strategy, &contenders, self.sources, self.newest, conflict::coin()),
                self.strategy.label(),
            ),
        };
        let winner = match &decision {
            Decision::Winner(i) => Winner::Db(self.sources[*i].clone()),
            Decision::Merge(_) => Winner::Merged,
            Decision::Skip => Winner::Skipped,
            Decision::Abort => Winner::Aborted,
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
            return Err(ApplyError::ConflictAbort {
                table: tab.shown(),
                columns: meta.keycols.clone(),
                key: key.to_vec(),
            }
            .into());
        }
        Ok(decision)
    }

    /// Asks the conflict hooks of this table; `Some` (the decision and its
    /// reason) when one answered.
    fn ask_hooks(
        &mut self,
        tab: &TableCtx<'_>,
        key: &[String],
        contenders: &[Contender],
        rows: &mut Rows<'_>,
    ) -> Result<Option<(Decision, String)>> {
        let tname = tab.human();
        let keycols = &tab.meta.keycols;
        if !self.env.hooks.borrow().has("conflict", Some(&tname)) {
            return Ok(None);
        }
        let rows = rows()?;
        let fill = |lua: &mlua::Lua, ctx: &mlua::Table| -> mlua::Result<()> {
            let k = lua.create_table()?;
            for (c, v) in keycols.iter().zip(key) {
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
            for c in contenders {
                if let Some(a) = c.at {
                    at.set(c.db.as_str(), a)?;
                }
            }
            ctx.set("changed_at", at)
        };
        let answer = self.env.hooks.borrow_mut().call("conflict", Some(&tname), &fill)?;
        Ok(match answer {
            Some((crate::hooks::Answer::Text(db), code)) => match self.sources.iter().position(|s| *s == db) {
                Some(i) => Some((Decision::Winner(i), format!("hook {code}"))),
                None => {
                    return Err(ApplyError::HookAnsweredStranger {
                        code,
                        db,
                        table: tab.shown(),
                        sources: self.sources.to_vec(),
                    }
                    .into())
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
                for (c, v) in keycols.iter().zip(key) {
                    full.insert(c.clone(), serde_json::Value::String(v.clone()));
                }
                Some((Decision::Merge(serde_json::Value::Object(full)), format!("hook {code}")))
            }
            None => None,
        })
    }
}

/// A source's row for a key, as JSON (None: no such row).
pub(super) fn row_json(
    tx: &mut Transaction<'_>,
    tab: &TableCtx<'_>,
    db: &str,
    key: &[String],
) -> Result<Option<serde_json::Value>> {
    let types = tab.types_on(db);
    let r = tx
        .query_opt(
            &format!(
                "SELECT row_to_json(t)::text FROM {} t WHERE {}",
                tab.tbl_on(db),
                key_params_eq(&tab.qk, &types, &tab.ops_on(db), "t.")
            ),
            &text_params(key),
        )
        .ctx(|| format!("reading a row of {}", tab.shown()))?;
    let Some(r) = r else { return Ok(None) };
    let text: String = r.col(0, "a conflicting row")?;
    Ok(serde_json::from_str(&text).ok())
}

/// What conflict detection leaves to apply: per winning source the SQL of
/// the keys it sends, and rows composed by hooks (key, row).
pub(super) struct Found {
    /// Per winning source (its index), the SQL of the keys it sends: a
    /// query, so the keys stream from its log instead of sitting in memory.
    pub(super) won: Vec<(usize, String)>,
    /// Rows composed by hooks: written as they are, on every receiver.
    pub(super) merged: Vec<(Vec<String>, serde_json::Value)>,
}

/// The merge of the changers' sorted key streams: per stream the keys read
/// ahead, and per source the keys it lost or won without changing them.
struct Merge {
    heads: Vec<VecDeque<(Vec<String>, Option<f64>)>>,
    done: Vec<bool>,
    lost: Vec<Vec<Vec<String>>>,
    extra: Vec<Vec<Vec<String>>>,
    merged: Vec<(Vec<String>, serde_json::Value)>,
}

/// Finds the keys changed on two or more sources (each source's changed
/// keys stream in key order and are merged here, so memory holds only the
/// conflicts), settles each, and returns per winning source the SQL of the
/// keys it sends, plus rows composed by hooks. `changers` pairs a source
/// with its captured id of the table.
pub(super) fn detect(
    st: &mut Settle<'_, '_>,
    srcs: &mut [Src<'_>],
    changers: &[(usize, i32)],
    tab: &TableCtx<'_>,
    tr: &mut TableReport,
) -> Result<Found> {
    // Keys print in UTC while they are compared, whatever each server's
    // TimeZone: a timestamptz inside a range, an array, a composite or a
    // domain then prints alike on every source. (Rows keep the session's
    // zone: a timestamptz copied into a timestamp column keeps its meaning.)
    let mut zones = Vec::new();
    for &(c, _) in changers {
        let tx = &mut srcs[c].tx;
        let zone: String = tx
            .query_one(
                "SELECT pg_catalog.current_setting('TimeZone'), pg_catalog.set_config('TimeZone', 'UTC', true)",
                &[],
            )
            .ctx(|| "comparing keys in UTC".into())?
            .col(0, "the session's time zone")?;
        zones.push((c, zone));
    }
    let mut portals = Vec::new();
    for &(c, id) in changers {
        portals.push(open_stream(&mut srcs[c], tab, id)?);
    }
    let mut m = Merge {
        heads: vec![VecDeque::new(); changers.len()],
        done: vec![false; changers.len()],
        lost: vec![Vec::new(); srcs.len()],
        extra: vec![Vec::new(); srcs.len()],
        merged: Vec::new(),
    };
    loop {
        m.refill(srcs, changers, &portals, tab, st.env.chunk)?;
        let Some((min, group)) = m.next_group(srcs, changers) else {
            break;
        };
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
                    let row = row_json(&mut srcs[c].tx, tab, &name, &min)?;
                    out.push((name, row));
                }
                Ok(out)
            };
            st.settle(tab, &min, group, &mut rows, None)?
        };
        m.record(decision, &who, min);
    }
    drop(portals);
    claims(st, srcs, changers, tab, &mut m, tr)?;
    let won = won_keys(srcs, changers, tab, &m)?;
    for (c, zone) in zones {
        srcs[c]
            .tx
            .execute("SELECT pg_catalog.set_config('TimeZone', $1, true)", &[&zone])
            .ctx(|| "restoring the session's time zone".into())?;
    }
    Ok(Found { won, merged: m.merged })
}

/// Opens a source's stream of changed keys of a table, in key order.
fn open_stream(s: &mut Src<'_>, tab: &TableCtx<'_>, id: i32) -> Result<Portal> {
    let qk = &tab.qk;
    // The same key must print the same on every source: numerics lose
    // trailing zeros (1.50 and 1.5 are one key), timestamps with time
    // zone print in UTC.
    let types = tab.types_on(&s.db.name);
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
        tab.keys_of("d"),
        order.join(", ")
    );
    s.tx.bind(q.as_str(), &[])
        .ctx(|| format!("reading changed keys of {} on \"{}\"", tab.shown(), s.db.name))
}

impl Merge {
    /// Reads the next chunk of every stream whose read-ahead ran out.
    fn refill(
        &mut self,
        srcs: &mut [Src<'_>],
        changers: &[(usize, i32)],
        portals: &[Portal],
        tab: &TableCtx<'_>,
        chunk: usize,
    ) -> Result<()> {
        let n = tab.qk.len();
        for j in 0..changers.len() {
            if !self.heads[j].is_empty() || self.done[j] {
                continue;
            }
            let s = &mut srcs[changers[j].0];
            let rows =
                s.tx.query_portal(&portals[j], chunk as i32)
                    .ctx(|| format!("reading changed keys of {} on \"{}\"", tab.shown(), s.db.name))?;
            if rows.len() < chunk {
                self.done[j] = true;
            }
            for r in rows {
                let what = "a changed key";
                let k: Vec<String> = (0..n).map(|i| r.col(i, what)).collect::<Result<_>>()?;
                self.heads[j].push_back((k, r.col(n, what)?));
            }
        }
        Ok(())
    }

    /// Takes the smallest key off every stream that has it: the key and
    /// who changed it (None when every stream is done).
    fn next_group(&mut self, srcs: &[Src<'_>], changers: &[(usize, i32)]) -> Option<(Vec<String>, Vec<Contender>)> {
        let min = self.heads.iter().filter_map(|h| h.front().map(|f| f.0.clone())).min()?;
        let mut group = Vec::new();
        for (j, head) in self.heads.iter_mut().enumerate() {
            if head.front().is_none_or(|f| f.0 != min) {
                continue;
            }
            if let Some((_, at)) = head.pop_front() {
                let src = changers[j].0;
                group.push(Contender {
                    src,
                    db: srcs[src].db.name.clone(),
                    at,
                });
            }
        }
        Some((min, group))
    }

    /// Notes what a settled conflict means for each source's keys.
    fn record(&mut self, decision: Decision, who: &[usize], key: Vec<String>) {
        match decision {
            Decision::Winner(w) => {
                for &c in who {
                    if c != w {
                        self.lost[c].push(key.clone());
                    }
                }
                if !who.contains(&w) {
                    self.extra[w].push(key);
                }
            }
            Decision::Skip => who.iter().for_each(|c| self.lost[*c].push(key.clone())),
            Decision::Merge(row) => {
                who.iter().for_each(|c| self.lost[*c].push(key.clone()));
                self.merged.push((key, row));
            }
            Decision::Abort => unreachable!("settle returns an error on abort"),
        }
    }
}

/// One source's claim on a unique value: its key for the row holding it.
type Claim = (usize, Vec<String>);

/// A changed row's key and, per unique index, its value there.
type RowValues = (Vec<String>, Vec<Option<String>>);

/// Unique values two sources claim under different keys in this run (the
/// same e-mail inserted under id 10 on one and id 11 on the other): no
/// order of writes applies both, so each is settled as a conflict by the
/// hooks or the strategy, between the two rows' changes. The losing row
/// is not sent, and the winner sends its key as a deletion, so the loser's
/// source drops it and every database ends with the winner's row.
fn claims(
    st: &mut Settle<'_, '_>,
    srcs: &mut [Src<'_>],
    changers: &[(usize, i32)],
    tab: &TableCtx<'_>,
    m: &mut Merge,
    tr: &mut TableReport,
) -> Result<()> {
    let first = changers[0].0;
    let indexes = claimable(&mut srcs[first], tab)?;
    if indexes.is_empty() {
        return Ok(());
    }
    let mut seen: std::collections::HashMap<(usize, String), Claim> = std::collections::HashMap::new();
    let mut found: Vec<(String, Claim, Claim)> = Vec::new();
    for &(s, id) in changers {
        for (key, values) in claimed_values(&mut srcs[s], tab, id, &indexes)? {
            if m.lost[s].contains(&key) {
                continue;
            }
            for (i, v) in values.into_iter().enumerate() {
                let Some(v) = v else { continue };
                let what = format!("({})=({v})", indexes[i].join(", "));
                match seen.get(&(i, v.clone())) {
                    Some((o, okey)) if *o != s && *okey != key => {
                        found.push((what, (*o, okey.clone()), (s, key.clone())));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((i, v), (s, key.clone()));
                    }
                }
            }
        }
    }
    for (what, (x, kx), (y, ky)) in found {
        tr.conflicts += 1;
        let contenders = vec![
            Contender {
                src: x,
                db: srcs[x].db.name.clone(),
                at: key_time(&mut srcs[x], tab, &kx)?,
            },
            Contender {
                src: y,
                db: srcs[y].db.name.clone(),
                at: key_time(&mut srcs[y], tab, &ky)?,
            },
        ];
        let (xname, yname) = (srcs[x].db.name.clone(), srcs[y].db.name.clone());
        let note = format!(
            "unique value {what} claimed under two keys: ({}) on {xname} and ({}) on {yname}",
            kx.join(", "),
            ky.join(", ")
        );
        let decision = {
            let mut rows = || -> Result<Vec<(String, Option<serde_json::Value>)>> {
                let rx = row_json(&mut srcs[x].tx, tab, &xname, &kx)?;
                let ry = row_json(&mut srcs[y].tx, tab, &yname, &ky)?;
                Ok(vec![(xname.clone(), rx), (yname.clone(), ry)])
            };
            st.settle(tab, &kx, contenders, &mut rows, Some(&note))?
        };
        match decision {
            Decision::Winner(w) if w == x => m.record(Decision::Winner(x), &[y], ky),
            Decision::Winner(w) if w == y => m.record(Decision::Winner(y), &[x], kx),
            // Both rows stand: the table cannot be applied, and is set aside.
            _ => tracing::warn!("Unique value {what} of {} stays claimed twice: {note}", tab.human()),
        }
    }
    Ok(())
}

/// The column lists of the table's unique indexes other than its key's
/// (plain columns, not partial): the values two sources may claim.
fn claimable(s: &mut Src<'_>, tab: &TableCtx<'_>) -> Result<Vec<Vec<String>>> {
    let mut key = tab.meta.keycols.clone();
    key.sort();
    Ok(unique_indexes(&mut s.tx, tab, &s.db.name)?
        .into_iter()
        .filter(|x| !x.expression && !x.partial && !x.exclusion)
        .map(|x| x.cols)
        .filter(|cols| {
            let mut sorted = cols.clone();
            sorted.sort();
            sorted != key && cols.iter().all(|c| tab.meta.settable.contains(c))
        })
        .collect())
}

/// Per row a source changed in this run: its key and, per unique index,
/// the value it holds there (None when a column is NULL: NULLs never
/// collide).
fn claimed_values(s: &mut Src<'_>, tab: &TableCtx<'_>, id: i32, indexes: &[Vec<String>]) -> Result<Vec<RowValues>> {
    let n = tab.qk.len();
    let keys: Vec<String> = tab.qk.iter().map(|k| format!("t.{k}::text")).collect();
    let values: Vec<String> = indexes
        .iter()
        .map(|cols| {
            let q: Vec<String> = cols
                .iter()
                .map(|c| format!("t.{}", crate::pg::ident::quote_ident(c)))
                .collect();
            format!(
                "CASE WHEN pg_catalog.num_nulls({0}) OPERATOR(pg_catalog.=) 0 THEN ROW({0})::text END",
                q.join(", ")
            )
        })
        .collect();
    let q = format!(
        "SELECT {}, {} FROM {} t WHERE EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE {} AND {})",
        keys.join(", "),
        values.join(", "),
        tab.tbl_on(&s.db.name),
        s.window(),
        tab.on(&s.db.name, "d", "t")
    );
    let what = format!("reading the unique values of {} on \"{}\"", tab.shown(), s.db.name);
    s.tx.query(&q, &[])
        .ctx(|| what.clone())?
        .iter()
        .map(|r| {
            let key = (0..n).map(|j| r.col(j, &what)).collect::<Result<Vec<String>>>()?;
            let vals = (0..indexes.len())
                .map(|j| r.col(n + j, &what))
                .collect::<Result<Vec<Option<String>>>>()?;
            Ok((key, vals))
        })
        .collect()
}

/// The change time a source logged for one key in this run's window.
pub(super) fn key_time(s: &mut Src<'_>, tab: &TableCtx<'_>, key: &[String]) -> Result<Option<f64>> {
    let Some(id) = s.id_of(tab.t) else { return Ok(None) };
    let types = tab.types_on(&s.db.name);
    let q = format!(
        "SELECT {} FROM capra.delta_{id} d WHERE {} AND {}",
        s.time_expr(),
        s.window(),
        key_params_eq(&tab.qk, &types, &tab.ops_on(&s.db.name), "d.")
    );
    s.tx.query_one(&q, &text_params(key))
        .ctx(|| format!("reading a change time on \"{}\"", s.db.name))?
        .col(0, "a change time")
}

/// Per source: its changed keys minus those it lost, plus those it won
/// without changing them (a priority list of one name), as SQL over its
/// read transaction.
fn won_keys(
    srcs: &mut [Src<'_>],
    changers: &[(usize, i32)],
    tab: &TableCtx<'_>,
    m: &Merge,
) -> Result<Vec<(usize, String)>> {
    let keys = tab.keys();
    let mut won = Vec::new();
    for (i, s) in srcs.iter_mut().enumerate() {
        let changed = changers.iter().find(|c| c.0 == i).map(|c| c.1);
        if changed.is_none() && m.extra[i].is_empty() {
            continue;
        }
        let types = tab.types_on(&s.db.name);
        let mut parts = Vec::new();
        if let Some(id) = changed {
            let mut q = format!(
                "SELECT {} FROM capra.delta_{id} d WHERE {}",
                tab.keys_of("d"),
                s.window()
            );
            if !m.lost[i].is_empty() {
                temp_keys(&mut s.tx, &s.db.name, "capra_lost", &tab.meta, &types, &m.lost[i])?;
                q.push_str(&format!(
                    " AND NOT EXISTS (SELECT 1 FROM pg_temp.capra_lost l WHERE {})",
                    tab.on(&s.db.name, "l", "d")
                ));
            }
            parts.push(q);
        }
        if !m.extra[i].is_empty() {
            temp_keys(&mut s.tx, &s.db.name, "capra_extra", &tab.meta, &types, &m.extra[i])?;
            parts.push(format!("SELECT {keys} FROM pg_temp.capra_extra"));
        }
        won.push((i, format!("SELECT DISTINCT * FROM ({}) w", parts.join(" UNION ALL "))));
    }
    Ok(won)
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
        .map(|(k, ty)| format!("{} {ty}", crate::pg::ident::quote_ident(k)))
        .collect();
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.{table}; CREATE TEMP TABLE {table} ({}) ON COMMIT DROP",
        cols.join(", ")
    ))
    .ctx(|| format!("preparing the conflict keys on \"{db}\""))?;
    let arrays = key_columns(keys, meta.keycols.len());
    tx.execute(
        &format!("INSERT INTO pg_temp.{table} {}", unnest_select(types, None, false)),
        &array_params(&arrays),
    )
    .ctx(|| format!("storing the conflict keys on \"{db}\""))?;
    Ok(())
}
