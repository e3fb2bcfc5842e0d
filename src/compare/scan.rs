//! Finding where two copies of a table may differ without moving the
//! table: order-free sums of row digests per range, on both servers, then
//! only the ranges whose sums differ are split again, down to ranges so
//! small that their (key, digest) pairs travel. No sort of the table, no
//! temporary table (it works on a read-only standby), nothing above the
//! ACCESS SHARE lock a SELECT takes; each statement reads at most one
//! block range, so no snapshot is held longer than that scan.
//!
//! A range's sum is additive, so block ranges and statements may be added
//! up on the client; rows that moved between two statements only make a
//! range look different, and every candidate is judged again by equality
//! lookup (see `verdict`), as are keys a collation puts in other ranges on
//! the two servers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use postgres::Client;
use postgres_openssl::MakeTlsConnector;

use super::shape::{Shape, Side};
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// Ranges of the first level, at most (each ~1,000 rows below that).
const MAX_RANGES: f64 = 4096.0;
/// Rows per first-level range aimed at.
const RANGE_ROWS: f64 = 1024.0;
/// A differing range with at most this many rows sends its pairs.
const LEAF_ROWS: i64 = 24;
/// Levels below the first, at most (16 parts each).
const MAX_LEVEL: u32 = 8;

/// Per range: rows and the sum of their digests (mod 2^64).
type Sums = HashMap<i64, (i64, u64)>;

/// A key's column texts.
pub(super) type Key = Vec<String>;

/// What the fan-out found: the truth's row count and every key whose pairs
/// differ (in one side only, or with other digests).
pub(super) struct Found {
    pub(super) rows: i64,
    pub(super) candidates: BTreeSet<Key>,
    /// Bytes the servers sent for it.
    pub(super) bytes: u64,
}

/// Both connections of a table's compare, and the pause between
/// statements (`compare_throttle`).
pub(super) struct Pair<'a> {
    pub(super) truth: &'a mut Client,
    pub(super) other: &'a mut Client,
    pub(super) pause: Duration,
    /// How to reach each server to cancel its statement (truth, other):
    /// when one side fails, the other stops too instead of scanning on.
    pub(super) tls: (&'a MakeTlsConnector, &'a MakeTlsConnector),
}

/// Compares one table: first-level ranges of the first key column (from a
/// sample of the truth), then 16 parts per differing range by a hash of
/// the key, until the differing ranges are small. Both servers work at
/// the same time.
pub(super) fn find(pair: &mut Pair<'_>, shape: &Shape, t: &Side, o: &Side) -> Result<Found> {
    let bounds = boundaries(pair.truth, shape, t)?;
    let bounded = !bounds.is_empty();
    let mut bytes = bounds.iter().map(|b| b.len() as u64 + 4).sum::<u64>();
    let mut level = 1;
    let mut wanted: Option<Vec<i64>> = None;
    let mut first: Vec<i64> = Vec::new();
    let mut rows = 0i64;
    let pause = pair.pause;
    loop {
        let lv = Level {
            level,
            bounded,
            bounds: &bounds,
            wanted: wanted.as_deref(),
            first: &first,
        };
        let (ts, os) = both(pair, t, o, |c, side| sums(c, shape, side, &lv, pause))?;
        let ((ts, tb), (os, ob)) = (ts, os);
        bytes += tb + ob;
        if level == 1 {
            rows = ts.values().map(|v| v.0).sum();
        }
        let all: BTreeSet<i64> = ts.keys().chain(os.keys()).copied().collect();
        let differ: Vec<i64> = all.into_iter().filter(|p| ts.get(p) != os.get(p)).collect();
        if differ.is_empty() {
            return Ok(Found {
                rows,
                candidates: BTreeSet::new(),
                bytes,
            });
        }
        if level == 1 {
            first = differ.clone();
        }
        // The size of most differing ranges decides (a few larger ones
        // send more pairs rather than cost every range another level).
        let mut sizes: Vec<i64> = differ
            .iter()
            .map(|p| {
                ts.get(p)
                    .map(|v| v.0)
                    .unwrap_or(0)
                    .max(os.get(p).map(|v| v.0).unwrap_or(0))
            })
            .collect();
        sizes.sort_unstable();
        let typical = sizes[(sizes.len() * 9 / 10).min(sizes.len() - 1)];
        let biggest = sizes[sizes.len() - 1];
        if typical <= LEAF_ROWS && biggest <= LEAF_ROWS * 16 || level > MAX_LEVEL {
            let lv = Level {
                level,
                bounded,
                bounds: &bounds,
                wanted: Some(&differ),
                first: &first,
            };
            let (tp, op) = both(pair, t, o, |c, side| pairs(c, shape, side, &lv))?;
            let ((tp, tb), (op, ob)) = (tp, op);
            bytes += tb + ob;
            let keys: BTreeSet<&Key> = tp.keys().chain(op.keys()).collect();
            let candidates = keys.into_iter().filter(|k| tp.get(*k) != op.get(*k)).cloned().collect();
            return Ok(Found {
                rows,
                candidates,
                bytes,
            });
        }
        wanted = Some(differ);
        level += 1;
    }
}

/// Runs `f` on the truth and on the other side at the same time.
fn both<T: Send>(
    pair: &mut Pair<'_>,
    t: &Side,
    o: &Side,
    f: impl Fn(&mut Client, &Side) -> Result<T> + Sync,
) -> Result<(T, T)> {
    let (tc, oc) = (&mut *pair.truth, &mut *pair.other);
    let (t_stop, o_stop) = (tc.cancel_token(), oc.cancel_token());
    let (t_tls, o_tls) = pair.tls;
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let r = f(oc, o);
            if r.is_err() {
                let _ = t_stop.cancel_query(t_tls.clone());
            }
            r
        });
        let truth = f(tc, t);
        if truth.is_err() {
            let _ = o_stop.cancel_query(o_tls.clone());
        }
        let other = other.join().unwrap_or_else(|_| {
            Err(crate::Error::Rejected(format!(
                "reading \"{}\" stopped unexpectedly",
                o.db
            )))
        });
        // The first failure is the one to report (the other side's is
        // most likely the cancel it caused).
        match (truth, other) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    })
}

/// The first level's boundaries: about one value of the first key column
/// per `RANGE_ROWS` rows, from a row sample of the truth put in the key's
/// order there (a sort of the sample only; a row sample, not a block
/// sample, as neighbouring keys share blocks and would crowd the
/// boundaries together). None for a small table.
fn boundaries(c: &mut Client, shape: &Shape, t: &Side) -> Result<Vec<String>> {
    let ranges = (t.rows_estimate / RANGE_ROWS).min(MAX_RANGES).floor();
    if ranges < 2.0 {
        return Ok(Vec::new());
    }
    // Four sampled values per boundary; every fourth is kept.
    let percent = (ranges * 4.0 / t.rows_estimate * 100.0).clamp(0.01, 100.0) as f32;
    let k = &shape.qk[0];
    let sql = format!(
        "SELECT s.k::text FROM (
             SELECT s.k, pg_catalog.row_number() OVER (ORDER BY s.k) AS n
               FROM (SELECT DISTINCT t.{k} AS k FROM {} TABLESAMPLE BERNOULLI ($1) WHERE true{}) s) s
          WHERE s.n % 4 = 0 ORDER BY s.n",
        t.tbl, t.filter
    );
    let q = format!("sampling the keys of {} on \"{}\"", shape.rel.name.shown(), t.db);
    c.query(&sql, &[&percent])
        .ctx(|| q.clone())?
        .iter()
        .map(|r| r.col(0, &q))
        .collect()
}

/// Where a statement of the fan-out looks: the level, the first level's
/// boundaries, and the ranges of the level above it reads (None: all).
#[derive(Clone, Copy)]
struct Level<'a> {
    level: u32,
    bounded: bool,
    bounds: &'a [String],
    wanted: Option<&'a [i64]>,
    /// The differing ranges of the first level (from the third level on,
    /// rows outside them are skipped before any key is hashed).
    first: &'a [i64],
}

/// Sums per range at `level` of the rows in the ranges `wanted` of the
/// level above (all rows at level 1), block range by block range. Sent
/// packed: 16 bytes a range (the range as int4 while its number fits, a
/// row count that saturates at 2^31-1, the sum as int8).
fn sums(c: &mut Client, shape: &Shape, side: &Side, lv: &Level<'_>, pause: Duration) -> Result<(Sums, u64)> {
    let Level {
        level,
        bounded,
        bounds,
        wanted,
        first,
    } = *lv;
    let within = match wanted {
        Some(_) => format!(
            "{} AND {} = ANY($2::pg_catalog.int8[])",
            coarse(shape, side, level - 1, bounded),
            shape.path(side, level - 1, bounded)
        ),
        None => String::new(),
    };
    let bparam = if bounded { "" } else { " AND $1::text[] IS NOT NULL" };
    let wparam: Vec<i64> = wanted.map(|w| w.to_vec()).unwrap_or_default();
    let mut out: Sums = HashMap::new();
    let mut bytes = 0;
    // Range numbers grow 16-fold a level from at most 4097: int4 holds
    // them down to the fifth level.
    let (psend, ptype, pw) = if level <= 5 {
        ("int4send", "int4", 4)
    } else {
        ("int8send", "int8", 8)
    };
    for chunk in &side.chunks {
        let sql = format!(
            "SELECT pg_catalog.string_agg(pg_catalog.{psend}(x.p::pg_catalog.{ptype}) || pg_catalog.int4send(x.n) || pg_catalog.int8send(x.s), ''::bytea)
               FROM (SELECT y.p, least(count(*), 2147483647)::int4 AS n,
                            ((sum(y.h) % 18446744073709551616 + 18446744073709551616) % 18446744073709551616 - 9223372036854775808)::int8 AS s
                       FROM (SELECT {} AS p, {} AS h FROM {} WHERE true{}{}{}{}) y GROUP BY y.p) x",
            shape.path(side, level, bounded),
            shape.digest(),
            side.tbl,
            side.filter,
            chunk,
            within,
            bparam,
        );
        let q = format!("summing {} on \"{}\"", shape.rel.name.shown(), side.db);
        let rows = if wanted.is_some() {
            c.query(&sql, &[&bounds, &wparam, &first])
        } else {
            c.query(&sql, &[&bounds])
        }
        .ctx(|| q.clone())?;
        let packed: Option<Vec<u8>> = rows.first().map(|r| r.col(0, &q)).transpose()?.flatten();
        let packed = packed.unwrap_or_default();
        bytes += packed.len() as u64;
        for e in packed.chunks_exact(pw + 12) {
            let p = if pw == 4 {
                i64::from(i32::from_be_bytes(e[0..4].try_into().unwrap_or_default()))
            } else {
                i64::from_be_bytes(e[0..8].try_into().unwrap_or_default())
            };
            let n = i64::from(i32::from_be_bytes(e[pw..pw + 4].try_into().unwrap_or_default()));
            let s = i64::from_be_bytes(e[pw + 4..pw + 12].try_into().unwrap_or_default()) as u64 ^ (1 << 63);
            let v = out.entry(p).or_insert((0, 0));
            v.0 += n;
            v.1 = v.1.wrapping_add(s);
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    Ok((out, bytes))
}

/// From the third level on, `AND` the first level's range is one of the
/// differing ones (`$3`): checked before a key is hashed. Below that, a
/// test that `$3` is there (every statement binds it).
fn coarse(shape: &Shape, side: &Side, level: u32, bounded: bool) -> String {
    if level >= 2 {
        format!(" AND {} = ANY($3::pg_catalog.int8[])", shape.path(side, 1, bounded))
    } else {
        " AND $3::pg_catalog.int8[] IS NOT NULL".into()
    }
}

/// The (key, digest) pairs of the rows in the differing ranges `wanted`
/// of `level`.
fn pairs(c: &mut Client, shape: &Shape, side: &Side, lv: &Level<'_>) -> Result<(BTreeMap<Key, i64>, u64)> {
    let Level {
        level,
        bounded,
        bounds,
        wanted,
        first,
    } = *lv;
    let wanted = wanted.unwrap_or_default();
    let bparam = if bounded { "" } else { " AND $1::text[] IS NOT NULL" };
    let n = shape.qk.len();
    let mut out = BTreeMap::new();
    let mut bytes = 0u64;
    for chunk in &side.chunks {
        let sql = format!(
            "SELECT {}, {} FROM {} WHERE true{} AND {} = ANY($2::pg_catalog.int8[]){}{}{}",
            shape.key_texts().join(", "),
            shape.digest(),
            side.tbl,
            coarse(shape, side, level, bounded),
            shape.path(side, level, bounded),
            side.filter,
            chunk,
            bparam
        );
        let q = format!("reading keys of {} on \"{}\"", shape.rel.name.shown(), side.db);
        for r in c.query(&sql, &[&bounds, &wanted, &first]).ctx(|| q.clone())? {
            let mut key = Vec::with_capacity(n);
            for j in 0..n {
                let Some(v) = r.col::<_, Option<String>>(j, &q)? else {
                    return Err(super::CompareError::NullKey {
                        table: shape.rel.name.shown(),
                        db: side.db.clone(),
                        key: shape.keycols.join(", "),
                    }
                    .into());
                };
                bytes += v.len() as u64 + 4;
                key.push(v);
            }
            bytes += 19;
            // A key held by two rows (no unique key on this side) gets a
            // digest no single row has.
            let d: i64 = r.col(n, &q)?;
            out.entry(key)
                .and_modify(|v: &mut i64| *v = v.rotate_left(1) ^ d ^ 0x5bd1_e995)
                .or_insert(d);
        }
    }
    Ok((out, bytes))
}
