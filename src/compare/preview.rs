//! `capra kick SYNC --dry-run`: what the next run would do, read without
//! writing anything. Per table and receiving database: the rows it would
//! insert, update and delete (rows already equal are counted apart: a run
//! rewrites them, nothing changes), the full copies it would make, and for
//! several sources each conflict with the winner its strategy picks.
//!
//! It reads what a run reads: each source's change log after the sync's
//! position there, then each changed key's row on the source that would win
//! and on each receiver, by equality on the key. Nothing is locked beyond
//! ACCESS SHARE and every session is read-only.

use std::collections::BTreeMap;

use postgres::GenericClient;
use serde::Serialize;

use super::scan::Key;
use super::verdict::lookup;
use super::{Request, Session};
use crate::domain::conflict::{self, Contender, Decision, Strategy};
use crate::domain::OneTimeCopy;
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// One table on one receiving database in the next run.
#[derive(Clone, Debug, Serialize, Default)]
pub struct TablePlan {
    /// `schema.table`.
    pub table: String,
    /// The receiving database.
    pub db: String,
    /// Rows it would insert.
    pub inserts: u64,
    /// Rows it would change.
    pub updates: u64,
    /// Rows it would delete.
    pub deletes: u64,
    /// Changed keys whose row is already the same there.
    pub unchanged: u64,
    /// A TRUNCATE on the source would be replayed first.
    pub truncate: bool,
    /// A partition truncated or dropped on the source: its rows would be
    /// deleted here first.
    pub partition_truncated: bool,
    /// Why the table would be copied whole instead (None: changes only).
    pub full_copy: Option<String>,
}

/// A key changed on several sources, and who would win.
#[derive(Clone, Debug, Serialize)]
pub struct ConflictPlan {
    /// `schema.table`.
    pub table: String,
    /// Key column texts.
    pub key: Vec<String>,
    /// The sources that changed it, with their change times (epoch seconds).
    pub contenders: Vec<Contender>,
    /// The database whose row would win, or what happens instead.
    pub winner: String,
    /// The strategy or hook deciding.
    pub reason: String,
}

/// The next run of a sync, previewed.
#[derive(Clone, Debug, Serialize)]
pub struct Preview {
    /// The sync.
    pub sync: String,
    /// Per table and receiving database.
    pub tables: Vec<TablePlan>,
    /// Conflicts between sources.
    pub conflicts: Vec<ConflictPlan>,
    /// Key column names per table (for printing conflicts).
    #[serde(skip)]
    pub keycols: BTreeMap<String, Vec<String>>,
}

/// Per changed key: the sources that changed it (link index, change time).
type Changed = BTreeMap<Key, Vec<(usize, Option<f64>)>>;

/// Previews the next run of `req.sync`.
pub fn preview(c: &mut impl GenericClient, installation: &str, req: &Request) -> Result<Preview> {
    let default_strategy = Strategy::parse(&crate::catalog::model::setting(c, "default_conflict_strategy")?);
    let mut s = Session::open(c, installation, req)?;
    let mut out = Preview {
        sync: req.sync.clone(),
        tables: Vec::new(),
        conflicts: Vec::new(),
        keycols: BTreeMap::new(),
    };
    let sources: Vec<usize> = (0..s.links.len()).filter(|i| s.links[*i].source).collect();
    let names: Vec<String> = sources.iter().map(|i| s.links[*i].db.name.clone()).collect();
    // First every table's changes: latest_all_tables ranks sources by
    // their newest change over all tables of the run.
    let mut all = Vec::new();
    let mut newest = vec![f64::NEG_INFINITY; sources.len()];
    for rel in s.tables.clone() {
        let found = if s.plan.is_delta() {
            changes(&mut s, &rel, &sources)?
        } else {
            Found::default()
        };
        for who in found.changed.values() {
            for (l, at) in who {
                if let (Some(i), Some(at)) = (sources.iter().position(|x| x == l), at) {
                    newest[i] = newest[i].max(*at);
                }
            }
        }
        all.push((rel, found));
    }
    for (rel, found) in all {
        let strategy = rel
            .conflict_strategy
            .clone()
            .or(s.plan.sync.conflict_strategy.clone())
            .unwrap_or(default_strategy.clone());
        let hook = s
            .plan
            .hooks
            .iter()
            .find(|h| h.whenrun == "conflict" && h.table.as_ref().is_none_or(|t| *t == rel.name.human()))
            .map(|h| h.name.clone());
        out.keycols.insert(rel.name.human(), rel.pkey.clone());
        // Per key: the winning source's link, or None (skipped, aborted).
        let mut winners: BTreeMap<Key, Option<usize>> = BTreeMap::new();
        for (key, who) in &found.changed {
            if who.len() == 1 {
                winners.insert(key.clone(), Some(who[0].0));
                continue;
            }
            let contenders: Vec<Contender> = who
                .iter()
                .map(|(l, at)| Contender {
                    src: sources.iter().position(|x| x == l).unwrap_or(0),
                    db: s.links[*l].db.name.clone(),
                    at: *at,
                })
                .collect();
            let (winner, reason, link) = if let Some(h) = &hook {
                (
                    "decided by the hook at run time".to_string(),
                    format!("Lua hook {h}"),
                    None,
                )
            } else if strategy == Strategy::Random {
                ("one of them at random".to_string(), strategy.label(), None)
            } else {
                match conflict::decide(&strategy, &contenders, &names, &newest, 0) {
                    Decision::Winner(i) => (names[i].clone(), strategy.label(), Some(sources[i])),
                    Decision::Skip => ("none (skipped)".to_string(), strategy.label(), None),
                    Decision::Abort => ("none (the run aborts)".to_string(), strategy.label(), None),
                    Decision::Merge(_) => ("merged".to_string(), strategy.label(), None),
                }
            };
            winners.insert(key.clone(), link);
            out.conflicts.push(ConflictPlan {
                table: rel.name.human(),
                key: key.clone(),
                contenders,
                winner,
                reason,
            });
        }
        for r in 0..s.links.len() {
            if let Some(p) = receiver(&mut s, &rel, r, &winners, &found)? {
                out.tables.push(p);
            }
        }
    }
    Ok(out)
}

/// A table's changes on the sources since the sync's positions.
#[derive(Default)]
struct Found {
    changed: Changed,
    /// Sources with a TRUNCATE of the table waiting.
    truncated: Vec<usize>,
    /// Sources where a partition of it was truncated or dropped (its rows
    /// are deleted on the receivers, not the whole table).
    parts: Vec<usize>,
    /// Sources where capture lost the table's key (it is copied whole).
    lost: Vec<usize>,
}

/// Each source's changed keys of a table since the sync's position there
/// (this sync's own makedelta writes left out), and the sources with a
/// TRUNCATE waiting.
fn changes(s: &mut Session, rel: &crate::catalog::model::Relation, sources: &[usize]) -> Result<Found> {
    let mut found = Found::default();
    let first = sources.first().copied().unwrap_or(0);
    let other = (0..s.links.len()).find(|i| *i != first).unwrap_or(first);
    let (shape, _, _) = s.learn(rel, first, other)?;
    let logs = s.logs(rel, &shape)?;
    let sync = s.plan.name().to_string();
    for log in logs {
        let keys: Vec<String> = shape.qk.iter().map(|k| format!("d.{k}::text")).collect();
        let window = "(p.s IS NULL OR (d.capra_txid >= pg_catalog.txid_snapshot_xmin(p.s)
                        AND NOT pg_catalog.txid_visible_in_snapshot(d.capra_txid, p.s)))";
        let sql = format!(
            "WITH p AS (SELECT (SELECT c.snapshot FROM capra.consumer c WHERE c.installation = $1 AND c.sync = $2) AS s)
             SELECT {}, extract(epoch FROM max(d.capra_ts))::float8
               FROM capra.delta_{id} d, p
              WHERE {window}
                AND NOT EXISTS (SELECT 1 FROM capra.applied a WHERE a.installation = $1 AND a.sync = $2
                                  AND a.txid = d.capra_txid AND a.kind = 'm')
              GROUP BY {}",
            keys.join(", "),
            keys.join(", "),
            id = log.id
        );
        let q = format!("reading the changes of {} on \"{}\"", rel.name.shown(), log.db);
        let c = &mut s.clients[log.link];
        for r in c.query(&sql, &[&s.installation, &sync]).ctx(|| q.clone())? {
            let n = shape.qk.len();
            let key: Key = (0..n).map(|j| r.col(j, &q)).collect::<Result<_>>()?;
            found.changed.entry(key).or_default().push((log.link, r.col(n, &q)?));
        }
        // Truncations, as a run reads them: NULL the table, '*' a lost
        // key, else a partition (this sync's own makedelta ones left out).
        for r in c
            .query(
                &format!(
                    "WITH p AS (SELECT (SELECT c.snapshot FROM capra.consumer c WHERE c.installation = $1 AND c.sync = $2) AS s)
                     SELECT DISTINCT coalesce(d.part, '') FROM capra.truncate_log d, p WHERE d.captured = {} AND {window}
                        AND NOT EXISTS (SELECT 1 FROM capra.applied a WHERE a.installation = $1 AND a.sync = $2
                                          AND a.txid = d.capra_txid AND a.kind = 'm')",
                    log.id
                ),
                &[&s.installation, &sync],
            )
            .ctx(|| q.clone())?
        {
            match r.col::<_, String>(0, &q)?.as_str() {
                "" => found.truncated.push(log.link),
                "*" => found.lost.push(log.link),
                _ => found.parts.push(log.link),
            }
        }
    }
    Ok(found)
}

/// What the next run would do to a table on the database `r`: a full copy,
/// or per changed key (from the winning source) an insert, an update, a
/// delete or nothing. None when `r` receives nothing of it.
fn receiver(
    s: &mut Session,
    rel: &crate::catalog::model::Relation,
    r: usize,
    winners: &BTreeMap<Key, Option<usize>>,
    found: &Found,
) -> Result<Option<TablePlan>> {
    let db = s.links[r].db.name.clone();
    let is_source = s.links[r].source;
    if is_source && s.plan.sources.len() < 2 {
        return Ok(None);
    }
    let mut p = TablePlan {
        table: rel.name.human(),
        db: db.clone(),
        truncate: found.truncated.iter().any(|t| *t != r),
        partition_truncated: found.parts.iter().any(|t| *t != r),
        ..TablePlan::default()
    };
    let first_source = (0..s.links.len()).find(|i| s.links[*i].source).unwrap_or(0);
    let otc = s.plan.sync.onetimecopy;
    p.full_copy = if rel.ghost {
        None
    } else if found.lost.iter().any(|l| *l != r) {
        Some("capture lost the table's key on a source".into())
    } else if s.plan.fullcopy.iter().any(|d| d.name == db) {
        Some("a fullcopy database gets every table whole on every run".into())
    } else if s.plan.behind.contains(&db) {
        Some("this target fell behind while inactive".into())
    } else if !is_source && otc == OneTimeCopy::All {
        Some("onetimecopy=1".into())
    } else if !is_source && otc == OneTimeCopy::IfEmpty && empty(s, rel, r)? {
        Some("onetimecopy=2 and the table is empty here".into())
    } else if is_source && r != first_source && otc != OneTimeCopy::Off && empty(s, rel, r)? {
        Some("a source whose table is empty is seeded from the first source".into())
    } else {
        None
    };
    if p.full_copy.is_some() {
        p.inserts = rows(s, rel, first_source)?;
        return Ok(Some(p));
    }
    // Keys grouped by the source whose row would be sent here.
    let mut by_source: BTreeMap<usize, Vec<Key>> = BTreeMap::new();
    for (k, w) in winners {
        if let Some(w) = w.filter(|w| *w != r) {
            by_source.entry(w).or_default().push(k.clone());
        }
    }
    for (w, keys) in by_source {
        let (shape, ws, mut rs) = s.learn(rel, w, r)?;
        // A receiving source gets every row the winner sends, whatever
        // its own filter says.
        rs.filter.clear();
        let have = lookup(&mut s.clients[w], &shape, &ws, &keys)?;
        let there = lookup(&mut s.clients[r], &shape, &rs, &keys)?;
        for i in 0..keys.len() {
            match (have.get(&i), there.get(&i)) {
                (Some(_), None) => p.inserts += 1,
                (None, Some(_)) => p.deletes += 1,
                (Some(a), Some(b)) if a != b => p.updates += 1,
                (Some(_), Some(_)) => p.unchanged += 1,
                (None, None) => {}
            }
        }
    }
    Ok(Some(p))
}

/// Whether a table is empty on database `i`.
fn empty(s: &mut Session, rel: &crate::catalog::model::Relation, i: usize) -> Result<bool> {
    let q = format!("looking into {} on \"{}\"", rel.name.shown(), s.links[i].db.name);
    s.clients[i]
        .query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {})", rel.name.sql()), &[])
        .ctx(|| q.clone())?
        .col(0, &q)
}

/// The rows of a table on database `i` (what a full copy would write).
fn rows(s: &mut Session, rel: &crate::catalog::model::Relation, i: usize) -> Result<u64> {
    let q = format!("counting {} on \"{}\"", rel.name.shown(), s.links[i].db.name);
    let filter = match &rel.filter {
        Some(f) => format!(" WHERE ({f})"),
        None => String::new(),
    };
    let n: i64 = s.clients[i]
        .query_one(&format!("SELECT count(*) FROM {}{filter}", rel.name.sql()), &[])
        .ctx(|| q.clone())?
        .col(0, &q)?;
    Ok(n as u64)
}
