//! Judging candidate keys: each is looked up by equality on both sides (a
//! key two servers' collations put in different ranges costs a lookup,
//! never a wrong verdict), and a difference counts only once it is
//! settled: no source of the sync has a change of that key the sync has
//! not applied yet, and none logged one while it was being read.
//!
//! Why that order holds: a run commits what it writes before it moves a
//! source's position. Reading the sources' logs first, then the truth,
//! then the other side, then the logs again, a key with no unapplied
//! change at the first read had every change before it applied (and
//! committed) before both rows were read; if its newest logged change is
//! the same at both log reads, nothing changed it in between.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::Client;

use super::scan::Key;
use super::shape::{Shape, Side};
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// Keys per statement.
const BATCH: usize = 5000;

/// A source's change log of one table, for telling a key in flight from
/// a difference.
pub(super) struct Log {
    /// Index of the source's connection.
    pub(super) link: usize,
    /// The source's name.
    pub(super) db: String,
    /// Its captured id of the table (`capra.delta_<id>`).
    pub(super) id: i32,
    /// Key types and equality operators there.
    pub(super) types: Vec<String>,
    pub(super) ops: Vec<String>,
}

/// The verdicts on a table's candidate keys.
#[derive(Default, Debug)]
pub(super) struct Judged {
    pub(super) missing: Vec<Key>,
    pub(super) extra: Vec<Key>,
    pub(super) different: Vec<Key>,
    /// Keys still changing when the settling time ran out.
    pub(super) in_flight: Vec<Key>,
    /// Of the differences, keys with a change the sync did not apply while
    /// the compare waited for it (see `Judge::standing`).
    pub(super) unapplied: usize,
}

/// What judging a table needs: every connection, which are the truth and
/// the other side, the table's sides, the sources' logs of it and whose
/// positions count.
pub(super) struct Judge<'a> {
    pub(super) links: &'a mut [Client],
    pub(super) truth: usize,
    pub(super) other: usize,
    pub(super) shape: &'a Shape,
    pub(super) t: &'a Side,
    pub(super) o: &'a Side,
    pub(super) logs: &'a [Log],
    /// (installation, sync): whose position a log row is measured against.
    pub(super) consumer: (&'a str, &'a str),
    /// The sync cannot apply this table now (no daemon runs, the sync is
    /// inactive or its last run failed, or its last run set the table
    /// aside): keys still changing when time runs out are differences.
    pub(super) standing: bool,
}

/// Per key: whether a source has an unapplied change of it, and the newest
/// logged change of it and TRUNCATE of its table per source.
type Pending = Vec<(bool, Vec<Option<i64>>)>;

impl Judge<'_> {
    /// Judges `keys`, checking unsettled ones again (with growing pauses)
    /// until they settle or `settle` has passed.
    pub(super) fn judge(&mut self, keys: Vec<Key>, settle: Duration) -> Result<Judged> {
        let mut out = Judged::default();
        let mut left = keys;
        let start = Instant::now();
        let mut pause = Duration::from_millis(200);
        while !left.is_empty() {
            let before = self.pending(&left)?;
            let tv = self.lookup(self.truth, self.t, &left)?;
            let ov = self.lookup(self.other, self.o, &left)?;
            let after = self.pending(&left)?;
            let mut unsettled = Vec::new();
            let timed_out = start.elapsed() >= settle;
            // Out of time while the sync cannot apply this table (no
            // daemon, the sync inactive or failing, the table set aside):
            // what is left is judged as it is.
            let stuck = timed_out && self.standing;
            for (i, k) in left.into_iter().enumerate() {
                let (a, b) = (tv.get(&i), ov.get(&i));
                if a == b {
                    continue;
                }
                let quiet = !before[i].0 && !after[i].0 && before[i].1 == after[i].1;
                if !quiet && stuck {
                    out.unapplied += 1;
                }
                match (quiet || stuck, a, b) {
                    (false, _, _) => unsettled.push(k),
                    (true, Some(_), None) => out.missing.push(k),
                    (true, None, Some(_)) => out.extra.push(k),
                    (true, _, _) => out.different.push(k),
                }
            }
            if unsettled.is_empty() || timed_out {
                out.in_flight = unsettled;
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
            left = unsettled;
        }
        Ok(out)
    }

    /// Each key's digest on one side, found by equality on its key.
    fn lookup(&mut self, link: usize, side: &Side, keys: &[Key]) -> Result<HashMap<usize, i64>> {
        lookup(&mut self.links[link], self.shape, side, keys)
    }

    /// Per key: whether any source's log holds a change of it this sync has
    /// not applied (or a TRUNCATE of the table it has not), and the newest
    /// change logged per source.
    fn pending(&mut self, keys: &[Key]) -> Result<Pending> {
        let mut out: Pending = vec![(false, Vec::new()); keys.len()];
        let (installation, sync) = self.consumer;
        for log in self.logs {
            let (u, names) = unnest(&log.types);
            let n = names.len();
            let on = key_on(&self.shape.qk, &log.ops, &names, "d");
            let pos = format!(
                "(SELECT c.snapshot FROM capra.consumer c WHERE c.installation = ${} AND c.sync = ${})",
                n + 1,
                n + 2
            );
            let unapplied = |alias: &str| {
                format!(
                    "({pos} IS NULL OR ({alias}.capra_txid >= pg_catalog.txid_snapshot_xmin({pos})
                        AND NOT pg_catalog.txid_visible_in_snapshot({alias}.capra_txid, {pos})))"
                )
            };
            let id = log.id;
            // This sync's own makedelta writes on a receiving source are
            // not changes waiting for it.
            let sql = format!(
                "SELECT u.i,
                        coalesce(bool_or(d.capra_txid IS NOT NULL AND {}
                            AND NOT EXISTS (SELECT 1 FROM capra.applied a WHERE a.installation = ${} AND a.sync = ${}
                                              AND a.txid = d.capra_txid AND a.kind = 'm')), false)
                        OR EXISTS (SELECT 1 FROM capra.truncate_log x WHERE x.captured = {id} AND {}
                                     AND NOT EXISTS (SELECT 1 FROM capra.applied a WHERE a.installation = ${} AND a.sync = ${}
                                                       AND a.txid = x.capra_txid AND a.kind = 'm')),
                        max(d.capra_txid),
                        (SELECT max(x.capra_txid) FROM capra.truncate_log x WHERE x.captured = {id})
                   FROM ({u}) u LEFT JOIN capra.delta_{id} d ON {}
                  GROUP BY u.i",
                unapplied("d"),
                n + 1,
                n + 2,
                unapplied("x"),
                n + 1,
                n + 2,
                on
            );
            let q = format!(
                "reading the change log of {} on \"{}\"",
                self.shape.rel.name.shown(),
                log.db
            );
            for (b, batch) in keys.chunks(BATCH).enumerate() {
                let arrays = columns(batch, n);
                let mut params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
                params.push(&installation);
                params.push(&sync);
                for r in self.links[log.link].query(&sql, &params).ctx(|| q.clone())? {
                    let i = b * BATCH + r.col::<_, i64>(0, &q)? as usize - 1;
                    if let Some(e) = out.get_mut(i) {
                        e.0 |= r.col::<_, bool>(1, &q)?;
                        e.1.push(r.col(2, &q)?);
                        // A TRUNCATE logs no key: its own newest entry.
                        e.1.push(r.col(3, &q)?);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Each key's digest on one side (by index into `keys`), found by equality
/// on its key; absent keys have none. A key held by several rows (a side
/// without a unique key) gets a digest no single row has.
pub(super) fn lookup(c: &mut Client, shape: &Shape, side: &Side, keys: &[Key]) -> Result<HashMap<usize, i64>> {
    let (u, names) = unnest(&side.key_types);
    let on = key_on(&shape.qk, &side.ops, &names, "t");
    let sql = format!(
        "SELECT u.i, {} FROM ({u}) u JOIN {} ON {} WHERE true{}",
        shape.digest(),
        side.tbl,
        on,
        side.filter
    );
    let q = format!("looking up keys of {} on \"{}\"", shape.rel.name.shown(), side.db);
    let mut out = HashMap::new();
    for (b, batch) in keys.chunks(BATCH).enumerate() {
        let arrays = columns(batch, shape.qk.len());
        let params: Vec<&(dyn ToSql + Sync)> = arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        for r in c.query(&sql, &params).ctx(|| q.clone())? {
            let i: i64 = r.col(0, &q)?;
            let d: i64 = r.col(1, &q)?;
            out.entry(b * BATCH + i as usize - 1)
                .and_modify(|v: &mut i64| *v = v.rotate_left(1) ^ d ^ 0x5bd1_e995)
                .or_insert(d);
        }
    }
    Ok(out)
}

/// `SELECT u.i, (u.a1)::t1 AS a1, ... FROM unnest($1::text[], ...) WITH
/// ORDINALITY`: keys bound as text arrays, cast to a side's key types.
fn unnest(types: &[String]) -> (String, Vec<String>) {
    let names: Vec<String> = (1..=types.len()).map(|j| format!("a{j}")).collect();
    let params: Vec<String> = (1..=types.len()).map(|j| format!("${j}::text[]")).collect();
    let casts: Vec<String> = names
        .iter()
        .zip(types)
        .map(|(a, ty)| format!("(u.{a})::{ty} AS {a}"))
        .collect();
    (
        format!(
            "SELECT u.i, {} FROM unnest({}) WITH ORDINALITY AS u({}, i)",
            casts.join(", "),
            params.join(", "),
            names.join(", ")
        ),
        names,
    )
}

/// `{alias}.k1 OP1 u.a1 AND ...`: a table's key equal to the unnested key.
fn key_on(qk: &[String], ops: &[String], names: &[String], alias: &str) -> String {
    qk.iter()
        .zip(ops)
        .zip(names)
        .map(|((k, op), a)| format!("{alias}.{k} {op} u.{a}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Keys as one text array per key column.
fn columns(keys: &[Key], n: usize) -> Vec<Vec<String>> {
    (0..n).map(|j| keys.iter().map(|k| k[j].clone()).collect()).collect()
}
