//! The bottom of a run: what a run knows about one table (its shape on the
//! source and key types on every written database), how a receiver gets
//! it, and the SQL pieces every layer above builds with (key predicates,
//! casts, `unnest` of key arrays). Nothing here opens a transaction of its
//! own; it imports nothing from the other apply modules.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::Transaction;

use super::error::ApplyError;
use crate::catalog::model::Relation;
use crate::catalog::plan::SyncPlan;
use crate::error::{Context, Result};
use crate::pg::discover;
use crate::pg::ident::quote_ident;
use crate::pg::RowExt;

/// Session settings for every transaction a run opens: the text COPY
/// carries means the same on every server whatever its defaults, and no
/// server-side timeout kills a long run in the middle (an idle-in-
/// transaction target waiting for the source's COPY, a long statement).
/// (TimeZone is left alone: a timestamptz copied into a timestamp column
/// keeps its meaning there; keys compared across sources are printed in
/// UTC where they are compared.)
pub(super) const TEXT_FORMATS: &str = "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'; SET LOCAL lc_monetary = 'C'; \
     SET LOCAL array_nulls = on; SET LOCAL xmloption = content; SET LOCAL statement_timeout = 0";

/// Hashing and sorting a batch of keys in memory instead of on disk (a
/// 100k-key batch spills at the default 4MB and reads 25% slower); never
/// lowers a server's own larger setting.
pub(super) const RUN_MEMORY: &str = "SELECT pg_catalog.set_config('work_mem', '64MB', true) \
     WHERE pg_catalog.pg_size_bytes(pg_catalog.current_setting('work_mem')) < 67108864";

/// A table's shape, learned once and kept between runs, so a run that
/// touches a table sends no catalog query for it until its DDL changes.
#[derive(Clone, Debug)]
pub(super) struct TableMeta {
    /// The source's column names and type oids when this was learned: a
    /// run compares it with the live table and re-learns after DDL.
    pub(super) signature: String,
    /// The key columns the key types below are for.
    pub(super) keycols: Vec<String>,
    /// Quoted column list (non-generated source columns).
    pub(super) cols: String,
    /// The columns an in-place update sets (unquoted): the key columns
    /// too, so a key that changed to an equal value printed otherwise
    /// (1.0 and 1.00, -0 and 0, 'x' and 'X' under a nondeterministic
    /// collation) takes the winner's form.
    pub(super) settable: Vec<String>,
    /// Per database (the first source and every written one): `ONLY ` where
    /// the table is plain there, nothing where it is partitioned. Decided
    /// per side: a plain source may feed a partitioned target (where
    /// `DELETE FROM ONLY` would delete nothing) and the reverse (where a
    /// plain target's inheritance children must be left alone).
    pub(super) only: HashMap<String, &'static str>,
    /// Per written database: the key columns' types there (for casts).
    pub(super) key_types: HashMap<String, Vec<String>>,
    /// Per database (the first source and every written one): the
    /// equality operator of each key column, schema-qualified (see
    /// [`key_ops`]).
    pub(super) key_ops: HashMap<String, Vec<String>>,
}

/// How a target receives a table in this run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Delta,
    Copy,
    /// A source whose table is empty: a copy from the first source, then
    /// this run's changes.
    Seed,
}

/// One table in one run, as every step of its apply needs it: the plan's
/// relation, its learned shape, and per receiver where makedelta logs.
/// Bundled so the steps take one argument instead of five.
pub(super) struct TableCtx<'a> {
    /// The plan's relation.
    pub(super) t: &'a Relation,
    /// Its shape (a copy: the cache stays free while the table applies).
    pub(super) meta: TableMeta,
    /// The key columns, quoted.
    pub(super) qk: Vec<String>,
    /// Per source: its captured id of the table, if captured there.
    pub(super) ids: Vec<Option<i32>>,
    /// Per receiver: its own change log of this table when makedelta
    /// applies there (captured, with the same key).
    pub(super) md: Vec<Option<i32>>,
}

impl<'a> TableCtx<'a> {
    /// Bundles a table's run-time facts; the quoted key is derived once.
    pub(super) fn new(t: &'a Relation, meta: TableMeta, ids: Vec<Option<i32>>, md: Vec<Option<i32>>) -> Self {
        let qk = meta.keycols.iter().map(|k| quote_ident(k)).collect();
        TableCtx { t, meta, qk, ids, md }
    }

    /// `schema.name` unquoted, for logs in Bucardo's format and hook keys.
    pub(super) fn human(&self) -> String {
        self.t.name.human()
    }

    /// The name as a user pastes it into psql, for error messages.
    pub(super) fn shown(&self) -> String {
        self.t.name.shown()
    }

    /// The quoted key columns, comma separated.
    pub(super) fn keys(&self) -> String {
        self.qk.join(", ")
    }

    /// The table as a statement on database `db` names it (`ONLY` where
    /// it is a plain table there).
    pub(super) fn tbl_on(&self, db: &str) -> String {
        format!(
            "{}{}",
            self.meta.only.get(db).copied().unwrap_or("ONLY "),
            self.t.name.sql()
        )
    }

    /// The quoted key columns, each prefixed by `alias.` (comma separated).
    pub(super) fn keys_of(&self, alias: &str) -> String {
        self.qk
            .iter()
            .map(|k| format!("{alias}.{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `a.k1 OPERATOR(s.=) b.k1 AND ...` over this table's key, in a
    /// statement run on database `db`.
    pub(super) fn on(&self, db: &str, a: &str, b: &str) -> String {
        key_eq(&self.qk, &self.ops_on(db), a, b)
    }

    /// The key columns' equality operators on database `db`.
    pub(super) fn ops_on(&self, db: &str) -> Vec<String> {
        self.meta
            .key_ops
            .get(db)
            .cloned()
            .unwrap_or_else(|| vec![BUILTIN_EQ.to_string(); self.qk.len()])
    }

    /// The key types on a written database (empty when not written).
    pub(super) fn types_on(&self, db: &str) -> Vec<String> {
        self.meta.key_types.get(db).cloned().unwrap_or_default()
    }
}

/// The equality of the built-in types, named so that no operator a user
/// created in a schema on some search_path is ever chosen.
pub(super) const BUILTIN_EQ: &str = "OPERATOR(pg_catalog.=)";

/// `a.k1 OP1 b.k1 AND a.k2 OP2 b.k2 ...` over quoted key columns.
pub(super) fn key_eq(qk: &[String], ops: &[String], a: &str, b: &str) -> String {
    qk.iter()
        .zip(ops)
        .map(|(k, op)| format!("{a}.{k} {op} {b}.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `{prefix}k1 OP1 $1::text::t1 AND ...`: one key bound as text
/// parameters, cast to each key column's type on that database.
pub(super) fn key_params_eq(qk: &[String], types: &[String], ops: &[String], prefix: &str) -> String {
    qk.iter()
        .zip(types)
        .zip(ops)
        .enumerate()
        .map(|(j, ((k, ty), op))| format!("{prefix}{k} {op} ${}::text::{ty}", j + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// One key's column texts as statement parameters.
pub(super) fn text_params(key: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    key.iter().map(|k| k as &(dyn ToSql + Sync)).collect()
}

/// Keys (one `Vec` of column texts each) as one text array per key column,
/// for [`unnest_select`].
pub(super) fn key_columns(keys: &[Vec<String>], ncols: usize) -> Vec<Vec<String>> {
    (0..ncols)
        .map(|j| keys.iter().map(|k| k[j].clone()).collect())
        .collect()
}

/// Text arrays (from [`key_columns`]) as statement parameters.
pub(super) fn array_params(arrays: &[Vec<String>]) -> Vec<&(dyn ToSql + Sync)> {
    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// The option a COPY of a SQL_ASCII source's rows takes at both ends
/// (`raw`): its bytes pass as they are, never checked as UTF-8 (the
/// session's client encoding), so a LATIN1 'é' in a SQL_ASCII database
/// reaches a SQL_ASCII or LATIN1 target byte for byte. Nothing otherwise:
/// the servers convert between their encodings.
pub(super) fn copy_encoding(raw: bool) -> &'static str {
    if raw {
        " WITH (ENCODING 'SQL_ASCII')"
    } else {
        ""
    }
}

/// A key column as the text that carries it through capra: its text
/// form, or for a SQL_ASCII source (`raw`) its bytes escaped to ASCII
/// (`\351`), since capra's strings must be UTF-8 and such a key need not be.
pub(super) fn key_out(expr: &str, raw: bool) -> String {
    if raw {
        format!("pg_catalog.encode(pg_catalog.convert_to(({expr})::text, 'SQL_ASCII'), 'escape')")
    } else {
        format!("{expr}::text")
    }
}

/// The inverse of [`key_out`] on the receiving side: text again (still to
/// be cast to the key's type).
pub(super) fn key_in(text: &str, raw: bool) -> String {
    if raw {
        format!("pg_catalog.convert_from(pg_catalog.decode({text}, 'escape'), 'SQL_ASCII')")
    } else {
        text.to_string()
    }
}

/// `SELECT u.a1::t1, ... FROM unnest($1::text[], ...) AS u(a1, ...)`, with
/// an optional extra constant column; `raw`: the texts are [`key_out`]'s
/// escaped bytes.
pub(super) fn unnest_select(types: &[String], extra: Option<&str>, raw: bool) -> String {
    let params: Vec<String> = (1..=types.len()).map(|j| format!("${j}::text[]")).collect();
    let names: Vec<String> = (1..=types.len()).map(|j| format!("a{j}")).collect();
    let mut sel: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(j, ty)| format!("({})::{ty}", key_in(&format!("u.a{}", j + 1), raw)))
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

/// Whether makedelta asks for changes applied to `db` to be logged there
/// for this table: the sync's flag, the database's, or the table's (`on`,
/// or a list of database names).
pub(super) fn makedelta(plan: &SyncPlan, t: &Relation, db: &str) -> bool {
    plan.sync.makedelta
        || plan
            .sources
            .iter()
            .chain(&plan.targets)
            .chain(&plan.fullcopy)
            .any(|d| d.name == db && d.makedelta)
        || t.makedelta.as_deref().is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("on")
                || m == "1"
                || m.eq_ignore_ascii_case("true")
                || m.split([' ', ',']).any(|n| n == db)
        })
}

/// Whether makedelta applies to any table of the plan on `db`: then the
/// run marks its own writes there, so this sync never reads them back.
pub(super) fn makedelta_any(plan: &SyncPlan, db: &str) -> bool {
    plan.tables.iter().any(|t| makedelta(plan, t, db))
}

/// What [`table_meta`] compares a cached shape with.
pub(super) struct Shape<'a> {
    /// The key the change log was built with.
    pub(super) keycols: &'a [String],
    /// The live column signature on the source.
    pub(super) signature: &'a str,
}

/// Learns a table's columns on the source and its key types on each written
/// database, once per controller (and again after DDL or a key change).
pub(super) fn table_meta(
    cache: &mut HashMap<i32, TableMeta>,
    stx: (&str, &mut Transaction<'_>),
    txs: &mut [Transaction<'_>],
    names: &[String],
    t: &Relation,
    shape: &Shape<'_>,
) -> Result<TableMeta> {
    let (src_name, stx) = stx;
    if let Some(m) = cache.get(&t.id) {
        if m.keycols == shape.keycols
            && m.signature == shape.signature
            && names.iter().all(|n| m.key_types.contains_key(n))
            && m.only.contains_key(src_name)
        {
            return Ok(m.clone());
        }
    }
    let kind = discover::kind_of(stx, &t.name)?;
    if kind.is_none() {
        return Err(ApplyError::GoneOnSource { table: t.name.shown() }.into());
    }
    let src_cols = discover::columns(stx, &t.name)?;
    let cols: Vec<String> = src_cols
        .iter()
        .filter(|c| !c.generated)
        .map(|c| quote_ident(&c.name))
        .collect();
    // An identity GENERATED ALWAYS column can only be updated to DEFAULT;
    // its value never changes after the insert, so in-place updates skip it.
    let settable: Vec<String> = src_cols
        .iter()
        .filter(|c| !c.generated && !c.identity_always)
        .map(|c| c.name.clone())
        .collect();
    let mut key_types = HashMap::new();
    let mut only = HashMap::from([(src_name.to_string(), only_for(kind))]);
    let src_types: Vec<String> = shape
        .keycols
        .iter()
        .map(|k| {
            src_cols
                .iter()
                .find(|c| &c.name == k)
                .map(|c| c.base_type.clone())
                .unwrap_or_else(|| "text".into())
        })
        .collect();
    let src_types = below_domains(stx, src_name, src_types)?;
    let mut ops = HashMap::from([(src_name.to_string(), key_ops(stx, src_name, &src_types)?)]);
    let parent = kind == Some(discover::Kind::Table) && discover::inheritance(stx, &t.name)?.1;
    for (tx, n) in txs.iter_mut().zip(names) {
        let types = key_types_on(tx, n, t, &src_cols, shape.keycols)?;
        ops.insert(n.clone(), key_ops(tx, n, &types)?);
        key_types.insert(n.clone(), types);
        let there = discover::kind_of(tx, &t.name)?;
        if parent && there == Some(discover::Kind::Partitioned) {
            return Err(ApplyError::InheritedIntoPartitioned {
                table: t.name.shown(),
                db: n.clone(),
            }
            .into());
        }
        only.insert(n.clone(), only_for(there));
    }
    let meta = TableMeta {
        signature: shape.signature.to_string(),
        keycols: shape.keycols.to_vec(),
        cols: cols.join(", "),
        settable,
        only,
        key_types,
        key_ops: ops,
    };
    cache.insert(t.id, meta.clone());
    Ok(meta)
}

/// A unique index or exclusion constraint of a table on one database: the
/// values rows may trade or two sources may claim.
pub(super) struct UniqueIndex {
    /// Its plain columns, in index order.
    pub(super) cols: Vec<String>,
    /// It also indexes an expression.
    pub(super) expression: bool,
    /// It is partial (a WHERE clause).
    pub(super) partial: bool,
    /// An exclusion constraint rather than a unique index.
    pub(super) exclusion: bool,
}

/// The unique indexes and exclusion constraints of a table, as the
/// database `db` (in `tx`) has them.
pub(super) fn unique_indexes(tx: &mut Transaction<'_>, tab: &TableCtx<'_>, db: &str) -> Result<Vec<UniqueIndex>> {
    let q = format!("reading the unique indexes of {} on \"{db}\"", tab.shown());
    tx.query(
        "SELECT coalesce(array_agg(a.attname::text ORDER BY k.i) FILTER (WHERE a.attname IS NOT NULL), '{}'),
                bool_or(k.n OPERATOR(pg_catalog.=) 0), x.indpred IS NOT NULL, NOT x.indisunique
           FROM pg_catalog.pg_index x
           CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(n, i)
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) x.indrelid
                                               AND a.attnum OPERATOR(pg_catalog.=) k.n
          WHERE x.indrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) AND (x.indisunique OR x.indisexclusion)
          GROUP BY x.indexrelid, x.indpred IS NOT NULL, x.indisunique",
        &[&tab.t.name.sql()],
    )
    .ctx(|| q.clone())?
    .iter()
    .map(|r| {
        Ok(UniqueIndex {
            cols: r.col(0, &q)?,
            expression: r.col(1, &q)?,
            partial: r.col(2, &q)?,
            exclusion: r.col(3, &q)?,
        })
    })
    .collect()
}

/// `ONLY ` for a plain table (its inheritance children are tables of their
/// own), nothing for a partitioned one (whose rows are all in partitions).
fn only_for(kind: Option<discover::Kind>) -> &'static str {
    if kind == Some(discover::Kind::Partitioned) {
        ""
    } else {
        "ONLY "
    }
}

/// Checks that a written database has the table and every source column,
/// and reads the key columns' types there.
fn key_types_on(
    tx: &mut Transaction<'_>,
    n: &str,
    t: &Relation,
    src_cols: &[discover::Column],
    keycols: &[String],
) -> Result<Vec<String>> {
    let tcols = discover::columns(tx, &t.name)?;
    if tcols.is_empty() {
        return Err(ApplyError::TableMissing {
            table: t.name.shown(),
            db: n.to_string(),
        }
        .into());
    }
    for c in src_cols.iter().filter(|c| !c.generated) {
        if !tcols.iter().any(|tc| tc.name == c.name) {
            return Err(ApplyError::ColumnMissing {
                column: c.name.clone(),
                table: t.name.shown(),
                db: n.to_string(),
            }
            .into());
        }
    }
    let mut kt = Vec::new();
    for k in keycols {
        let c = tcols
            .iter()
            .find(|c| &c.name == k)
            .ok_or_else(|| ApplyError::KeyColumnMissing {
                column: k.to_string(),
                table: t.name.shown(),
                db: n.to_string(),
            })?;
        // No type modifier: a key widened on one side only still
        // compares exactly (a cast to varchar(10) would cut it).
        kt.push(c.base_type.clone());
    }
    below_domains(tx, n, kt)
}

/// The equality operator of each key type on a database, as its default
/// btree operator class names it (`OPERATOR(public.=)` for citext: under
/// capra's pinned search_path an unqualified `=` would find only
/// pg_catalog's and compare citext as text), else the built-in one.
/// Operator classes are a superuser's to create, so no tenant can plant
/// the operator chosen here.
pub(crate) fn key_ops(tx: &mut Transaction<'_>, db: &str, types: &[String]) -> Result<Vec<String>> {
    let q = format!("reading the key operators on \"{db}\"");
    tx.query(
        "SELECT coalesce((
             SELECT pg_catalog.format('OPERATOR(%I.%s)', n.nspname, o.oprname)
               FROM pg_catalog.pg_opclass oc
               JOIN pg_catalog.pg_am am ON am.oid OPERATOR(pg_catalog.=) oc.opcmethod
               JOIN pg_catalog.pg_amop ao ON ao.amopfamily OPERATOR(pg_catalog.=) oc.opcfamily
                AND ao.amoplefttype OPERATOR(pg_catalog.=) oc.opcintype
                AND ao.amoprighttype OPERATOR(pg_catalog.=) oc.opcintype
               JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) ao.amopopr
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace
              WHERE oc.opcdefault AND am.amname OPERATOR(pg_catalog.=) 'btree'
                AND ao.amopstrategy OPERATOR(pg_catalog.=) 3
                AND oc.opcintype OPERATOR(pg_catalog.=) pg_catalog.to_regtype(k.name)
              LIMIT 1), $2)
           FROM unnest($1::text[]) WITH ORDINALITY AS k(name, i) ORDER BY k.i",
        &[&types, &BUILTIN_EQ],
    )
    .ctx(|| q.clone())?
    .iter()
    .map(|r| r.col(0, &q))
    .collect()
}

/// The key types with every domain replaced by the type under it (a
/// domain's values compare as its base type's, and PostgreSQL 10 has no
/// arrays of domains for `= ANY`).
pub(crate) fn below_domains(tx: &mut Transaction<'_>, db: &str, types: Vec<String>) -> Result<Vec<String>> {
    let q = format!("reading the key types on \"{db}\"");
    tx.query(
        "WITH RECURSIVE t(i, oid, kind, base) AS (
             SELECT k.i, y.oid, y.typtype, y.typbasetype
               FROM unnest($1::text[]) WITH ORDINALITY AS k(name, i)
               JOIN pg_catalog.pg_type y ON y.oid = pg_catalog.to_regtype(k.name)
             UNION ALL
             SELECT t.i, y.oid, y.typtype, y.typbasetype FROM t JOIN pg_catalog.pg_type y ON y.oid = t.base
              WHERE t.kind = 'd')
         SELECT k.name, (SELECT pg_catalog.format_type(t.oid, -1) FROM t WHERE t.i = k.i AND t.kind <> 'd')
           FROM unnest($1::text[]) WITH ORDINALITY AS k(name, i) ORDER BY k.i",
        &[&types],
    )
    .ctx(|| q.clone())?
    .iter()
    .map(|r| {
        let name: String = r.col(0, &q)?;
        Ok(r.col::<_, Option<String>>(1, &q)?.unwrap_or(name))
    })
    .collect()
}
