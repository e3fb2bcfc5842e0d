//! What a compare of one table between two databases is built from: the
//! columns both sides are read by, each row's digest, the key's text and
//! hashes, and how each side names the table. Nothing here runs a query but
//! the catalog reads that learn the shape.

use postgres::{Client, GenericClient};

use super::error::CompareError;
use crate::apply::table::{below_domains, key_ops};
use crate::catalog::model::Relation;
use crate::error::{Context, Result};
use crate::pg::discover;
use crate::pg::ident::quote_ident;
use crate::pg::RowExt;

/// Session settings of every compare connection: the text a digest is
/// taken from means the same on every server whatever its defaults (a
/// timestamptz is printed in UTC, so it is compared as an instant; bytea
/// in hex; money without a locale), nothing is ever written, and a
/// compare waits at most a few seconds for a lock (DDL queued behind it
/// would otherwise block the application). `extra_float_digits` is set
/// per pair (see [`float_digits`]).
pub(super) const PINNED: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET TimeZone = 'UTC'; SET xmloption = content; \
     SET default_transaction_read_only = on; SET lock_timeout = '5s'; \
     SELECT pg_catalog.set_config('work_mem', '64MB', false) \
      WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem')) < 67108864";

/// The settings key texts are printed and read back under (a repair's
/// session reads what a compare printed).
pub(super) const KEY_TEXT: &str = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
     SET bytea_output = 'hex'; SET lc_monetary = 'C'; SET TimeZone = 'UTC'; SET extra_float_digits = 3";

/// `extra_float_digits` for a pair of servers: 3 (exact) when both print
/// floats the same way, 0 when one is older than PostgreSQL 12 and the
/// other newer (12 prints the shortest exact form, 11 seventeen digits;
/// only at 0 do they agree). Float columns themselves are compared by
/// their bits whatever this says; it matters only for floats inside
/// arrays, composites and geometric types.
pub(super) fn float_digits(v1: i32, v2: i32) -> i32 {
    if (v1 >= 120000) == (v2 >= 120000) {
        3
    } else {
        0
    }
}

/// One database's side of a table compare.
#[derive(Clone, Debug)]
pub(super) struct Side {
    /// The database's name in the catalog.
    pub(super) db: String,
    /// The table as a query names it there (`ONLY` for a plain table).
    pub(super) tbl: String,
    /// The key columns' types there (domains resolved).
    pub(super) key_types: Vec<String>,
    /// The key columns' equality operators there.
    pub(super) ops: Vec<String>,
    /// `AND (filter)` where the database is a source of a table with a row
    /// filter (only matching rows replicate from it), else empty.
    pub(super) filter: String,
    /// Block ranges read one statement each (`AND ctid ...`), so that no
    /// snapshot lives longer than one range's scan; one empty entry when
    /// the table is read in one statement.
    pub(super) chunks: Vec<String>,
    /// Estimated rows (for the number of ranges).
    pub(super) rows_estimate: f64,
}

/// How a row's digest is hashed: fast where both servers share an
/// encoding and have `hashtextextended` (11+), else md5 over the UTF-8
/// form, which is the same bytes whatever each server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hash {
    Fast,
    Utf8Md5,
}

/// One table's compare between two databases.
#[derive(Clone, Debug)]
pub(super) struct Shape {
    /// The catalog's relation.
    pub(super) rel: Relation,
    /// Key column names (unquoted).
    pub(super) keycols: Vec<String>,
    /// Key columns, quoted.
    pub(super) qk: Vec<String>,
    /// Per compared column, the expression its digest reads (alias `t`).
    pub(super) cols: Vec<String>,
    /// The hash used for digests.
    pub(super) hash: Hash,
}

/// Blocks per statement: about 128 MB, a few seconds of scan.
const CHUNK_BLOCKS: i64 = 16384;

impl Shape {
    /// A row's 64-bit digest, from its values in a form that tells NULL
    /// from '' from 'NULL' (each value quoted as a literal, NULL bare, so
    /// the joined text reads back one way only), keeps numeric scale, and
    /// is printed under the pinned settings. Joined 90 at a time (a
    /// function takes at most 100 arguments).
    pub(super) fn digest(&self) -> String {
        let parts: Vec<String> = self
            .cols
            .chunks(90)
            .map(|c| {
                let q: Vec<String> = c.iter().map(|e| format!("pg_catalog.quote_nullable({e})")).collect();
                format!("pg_catalog.concat_ws(',', {})", q.join(", "))
            })
            .collect();
        let row = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("pg_catalog.concat_ws(',', {})", parts.join(", "))
        };
        self.hash_text(&format!("({row})"), 0)
    }

    fn hash_text(&self, text: &str, seed: i32) -> String {
        match self.hash {
            Hash::Fast => format!("pg_catalog.hashtextextended({text} COLLATE pg_catalog.\"C\", {seed})"),
            Hash::Utf8Md5 => format!(
                "('x' || pg_catalog.substr(pg_catalog.md5(pg_catalog.convert_to('{seed}' || {text}, 'UTF8')), 1, 16))::pg_catalog.bit(64)::pg_catalog.int8"
            ),
        }
    }

    /// The key's columns as text (alias `t`).
    pub(super) fn key_texts(&self) -> Vec<String> {
        self.qk.iter().map(|k| format!("t.{k}::text")).collect()
    }

    /// The range a row is in at `level` (1: the key range of its first key
    /// column among the boundaries `$1`; each level below: 16 parts of the
    /// level above by a hash of the whole key). `level` 0 is one range.
    pub(super) fn path(&self, side: &Side, level: u32, bounded: bool) -> String {
        if level == 0 {
            return "0::pg_catalog.int8".into();
        }
        let mut p = if bounded {
            format!(
                "coalesce(pg_catalog.width_bucket(t.{}, $1::text[]::{}[]), -1)::pg_catalog.int8",
                self.qk[0], side.key_types[0]
            )
        } else {
            "0::pg_catalog.int8".into()
        };
        let key = format!(
            "(ROW({})::text)",
            self.qk.iter().map(|k| format!("t.{k}")).collect::<Vec<_>>().join(", ")
        );
        for l in 2..=level {
            p = format!("({p} * 16 + (pg_catalog.hashtext('{l}:' || {key} COLLATE pg_catalog.\"C\") & 15))");
        }
        p
    }
}

/// Learns one table's compare between the truth and another database:
/// the truth's columns (generated ones left out: they are not replicated),
/// each read the same way on both sides, and both sides' key types.
pub(super) fn learn(
    truth: (&str, &mut Client, bool),
    other: (&str, &mut Client, bool),
    rel: &Relation,
    versions: (i32, i32),
    same_encoding: bool,
) -> Result<(Shape, Side, Side)> {
    let (tname, tc, t_is_source) = truth;
    let (oname, oc, o_is_source) = other;
    let tcols = discover::columns(tc, &rel.name)?;
    let ocols = discover::columns(oc, &rel.name)?;
    if tcols.is_empty() {
        return Err(CompareError::TableMissing {
            table: rel.name.shown(),
            db: tname.into(),
        }
        .into());
    }
    if ocols.is_empty() {
        return Err(CompareError::TableMissing {
            table: rel.name.shown(),
            db: oname.into(),
        }
        .into());
    }
    let mut cols = Vec::new();
    for c in tcols.iter().filter(|c| !c.generated) {
        let Some(o) = ocols.iter().find(|o| o.name == c.name) else {
            return Err(CompareError::ColumnMissing {
                table: rel.name.shown(),
                column: c.name.clone(),
                db: oname.into(),
                truth: tname.into(),
            }
            .into());
        };
        let q = quote_ident(&c.name);
        // Floats by their bits: their text differs between major versions.
        let float = |t: &str| t == "double precision" || t == "real";
        cols.push(if float(&c.base_type) && float(&o.base_type) {
            // Every NaN as the one NaN a text copy makes: its bits vary.
            format!(
                "pg_catalog.float8send(CASE WHEN t.{q}::pg_catalog.float8 = 'NaN'::pg_catalog.float8 THEN 'NaN'::pg_catalog.float8 ELSE t.{q}::pg_catalog.float8 END)"
            )
        } else {
            format!("t.{q}")
        });
    }
    let keycols = rel.pkey.clone();
    if keycols.is_empty() {
        return Err(CompareError::NoKey {
            table: rel.name.shown(),
        }
        .into());
    }
    let hash = if same_encoding && versions.0 >= 110000 && versions.1 >= 110000 {
        Hash::Fast
    } else {
        Hash::Utf8Md5
    };
    let shape = Shape {
        qk: keycols.iter().map(|k| quote_ident(k)).collect(),
        keycols,
        cols,
        hash,
        rel: rel.clone(),
    };
    let t = side(tc, tname, &shape, &tcols, t_is_source, versions.0)?;
    let o = side(oc, oname, &shape, &ocols, o_is_source, versions.1)?;
    Ok((shape, t, o))
}

/// One database's side: how it names the table, its key types and
/// operators, its filter and its block ranges.
fn side(
    c: &mut Client,
    db: &str,
    shape: &Shape,
    cols: &[discover::Column],
    is_source: bool,
    version: i32,
) -> Result<Side> {
    let rel = &shape.rel;
    let (types, ops) = key_types(c, db, shape, cols)?;
    let mut tx = c
        .build_transaction()
        .read_only(true)
        .start()
        .ctx(|| format!("reading {} on \"{db}\"", rel.name.shown()))?;
    let kind = discover::kind_of(&mut tx, &rel.name)?;
    let partitioned = kind == Some(discover::Kind::Partitioned);
    let q = format!("sizing {} on \"{db}\"", rel.name.shown());
    // A plain table is read without its inheritance children (they are
    // tables of their own); a partitioned one with all its partitions.
    let r = tx
        .query_one(
            "WITH RECURSIVE r(oid) AS (
                 SELECT pg_catalog.to_regclass($1)::pg_catalog.oid
                 UNION ALL
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN r ON i.inhparent OPERATOR(pg_catalog.=) r.oid
                  WHERE $2)
             SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8, coalesce(max(c.relpages), 0)::int8
               FROM pg_catalog.pg_class c JOIN r ON c.oid OPERATOR(pg_catalog.=) r.oid",
            &[&rel.name.sql(), &partitioned],
        )
        .ctx(|| q.clone())?;
    let (rows, pages): (f64, i64) = (r.col(0, &q)?, r.col(1, &q)?);
    tx.commit().ctx(|| q.clone())?;
    // Block ranges need a TID range scan (14+); older servers read the
    // table in one statement.
    let chunks = if version >= 140000 && pages > CHUNK_BLOCKS {
        let n = pages / CHUNK_BLOCKS + 1;
        (0..n)
            .map(|i| {
                let lo = format!("t.ctid >= '({},0)'::pg_catalog.tid", i * CHUNK_BLOCKS);
                if i + 1 == n {
                    format!(" AND {lo}")
                } else {
                    format!(
                        " AND {lo} AND t.ctid < '({},0)'::pg_catalog.tid",
                        (i + 1) * CHUNK_BLOCKS
                    )
                }
            })
            .collect()
    } else {
        vec![String::new()]
    };
    let filter = match (&rel.filter, is_source) {
        (Some(f), true) => format!(" AND ({f})"),
        _ => String::new(),
    };
    Ok(Side {
        db: db.into(),
        tbl: format!("{}{} t", if partitioned { "" } else { "ONLY " }, rel.name.sql()),
        key_types: types,
        ops,
        filter,
        chunks,
        rows_estimate: rows,
    })
}

/// The key columns' types (domains resolved) and equality operators on a
/// database whose columns are `cols`.
fn key_types(c: &mut Client, db: &str, shape: &Shape, cols: &[discover::Column]) -> Result<(Vec<String>, Vec<String>)> {
    let rel = &shape.rel;
    let mut types = Vec::new();
    for k in &shape.keycols {
        let col = cols
            .iter()
            .find(|c| &c.name == k)
            .ok_or_else(|| CompareError::KeyColumnMissing {
                table: rel.name.shown(),
                column: k.clone(),
                db: db.into(),
            })?;
        types.push(col.base_type.clone());
    }
    let mut tx = c
        .build_transaction()
        .read_only(true)
        .start()
        .ctx(|| format!("reading the key of {} on \"{db}\"", rel.name.shown()))?;
    let types = below_domains(&mut tx, db, types)?;
    let ops = key_ops(&mut tx, db, &types)?;
    tx.commit()
        .ctx(|| format!("reading the key of {} on \"{db}\"", rel.name.shown()))?;
    Ok((types, ops))
}

/// The key types and operators of a table on a source (for its log).
pub(super) fn key_side(c: &mut Client, db: &str, shape: &Shape) -> Result<(Vec<String>, Vec<String>)> {
    let cols = discover::columns(c, &shape.rel.name)?;
    key_types(c, db, shape, &cols)
}

/// Logs `keys` in a source's change log of `rel` as changes of their own
/// (a repair): the next run sends the source's row for each, or deletes
/// it where the source has none. Returns the number logged.
pub(super) fn log_keys(
    tx: &mut postgres::Transaction<'_>,
    (db, sync): (&str, &str),
    rel: &Relation,
    keys: &[Vec<String>],
) -> Result<usize> {
    let q = format!("logging keys of {} to repair on \"{db}\"", rel.name.shown());
    let id: i32 = tx
        .query_opt(
            "SELECT id FROM capra.captured WHERE schemaname = $1 AND relname = $2",
            &[&rel.name.schema, &rel.name.name],
        )
        .ctx(|| q.clone())?
        .map(|r| r.col(0, &q))
        .transpose()?
        .ok_or_else(|| CompareError::NotCaptured {
            table: rel.name.shown(),
            db: db.into(),
            sync: sync.into(),
        })?;
    let cols = discover::columns(tx, &rel.name)?;
    let mut types = Vec::new();
    for k in &rel.pkey {
        types.push(
            cols.iter()
                .find(|c| &c.name == k)
                .map(|c| c.base_type.clone())
                .unwrap_or_else(|| "text".into()),
        );
    }
    let types = below_domains(tx, db, types)?;
    let names: Vec<String> = rel.pkey.iter().map(|k| quote_ident(k)).collect();
    let casts: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(j, ty)| format!("(u.a{})::{ty}", j + 1))
        .collect();
    let params: Vec<String> = (1..=types.len()).map(|j| format!("${j}::text[]")).collect();
    let aliases: Vec<String> = (1..=types.len()).map(|j| format!("a{j}")).collect();
    let sql = format!(
        "INSERT INTO capra.delta_{id} ({}) SELECT {} FROM unnest({}) AS u({})",
        names.join(", "),
        casts.join(", "),
        params.join(", "),
        aliases.join(", ")
    );
    let arrays: Vec<Vec<String>> = (0..types.len())
        .map(|j| keys.iter().map(|k| k[j].clone()).collect())
        .collect();
    let p: Vec<&(dyn postgres::types::ToSql + Sync)> = arrays
        .iter()
        .map(|a| a as &(dyn postgres::types::ToSql + Sync))
        .collect();
    Ok(tx.execute(&sql, &p).ctx(|| q.clone())? as usize)
}

/// A database's server version and encoding, read once per compare.
pub(super) fn server(c: &mut impl GenericClient, db: &str) -> Result<(i32, String)> {
    let q = format!("reading the server version of \"{db}\"");
    let r = c
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int4, pg_catalog.current_setting('server_encoding')",
            &[],
        )
        .ctx(|| q.clone())?;
    Ok((r.col(0, &q)?, r.col(1, &q)?))
}
