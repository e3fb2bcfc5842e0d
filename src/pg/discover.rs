//! Reading a live database's catalog: which tables and sequences exist, what
//! their replication keys are, what columns they have. Used by `add all
//! tables`, `add table` and `validate`; read-only.

use postgres::GenericClient;

use crate::domain::RelType;
use crate::error::{Context, Result};
use crate::pg::ident::QualName;
use crate::pg::RowExt;

/// A replication key found in a live table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Column names in key order.
    pub columns: Vec<String>,
    /// Column types (`format_type` with modifiers), same order.
    pub types: Vec<String>,
    /// `primary` or `unique`.
    pub kind: crate::domain::KeyKind,
}

/// A table or sequence found in a live database.
#[derive(Clone, Debug)]
pub struct Found {
    /// Schema and name.
    pub name: QualName,
    /// Table or sequence.
    pub reltype: RelType,
    /// The key: the primary key, else the narrowest unique index whose
    /// columns are all NOT NULL (a nullable unique key cannot identify rows).
    pub key: Option<Key>,
}

/// `server_version_num` of the connected server.
pub fn server_version(c: &mut impl GenericClient) -> Result<i32> {
    let v: String = c
        .query_one("SHOW server_version_num", &[])
        .ctx(|| "reading the server version".into())?
        .col(0, "reading the server version")?;
    Ok(v.parse().unwrap_or(0))
}

/// Schemas never offered for replication.
const SYSTEM_SCHEMA_FILTER: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema', 'capra')
     AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT LIKE 'bucardo%'";

/// Every user table (plain and partitioned parents; partitions themselves are
/// reached through their parent) with its key.
pub fn tables(c: &mut impl GenericClient) -> Result<Vec<Found>> {
    let v = server_version(c)?;
    let (kinds, not_partition, nkey) = if v >= 100000 {
        (
            "'r','p'",
            "AND NOT c.relispartition",
            if v >= 110000 { "indnkeyatts" } else { "indnatts" },
        )
    } else {
        ("'r'", "", "indnatts")
    };
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, k.cols, k.types, k.kind
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN LATERAL (
                SELECT array_agg(a.attname::text ORDER BY s.i) AS cols,
                       array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY s.i) AS types,
                       CASE WHEN i.indisprimary THEN 'primary' ELSE 'unique' END AS kind
                  FROM pg_index i
                  CROSS JOIN LATERAL generate_series(0, i.{nkey} - 1) AS s(i)
                  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[s.i]
                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                   AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND (i.indisprimary OR NOT EXISTS (
                        SELECT 1 FROM pg_attribute a2
                         WHERE a2.attrelid = i.indrelid AND a2.attnum = ANY (i.indkey::int2[]) AND NOT a2.attnotnull))
                 GROUP BY i.indexrelid, i.indisprimary, i.{nkey}
                 ORDER BY i.indisprimary DESC, i.{nkey}, i.indexrelid
                 LIMIT 1) k ON true
          WHERE c.relkind IN ({kinds}) {not_partition} AND c.relpersistence <> 't'
            AND {SYSTEM_SCHEMA_FILTER}
          ORDER BY 1, 2"
    );
    const Q: &str = "listing tables";
    let rows = c.query(&sql, &[]).ctx(|| Q.into())?;
    rows.iter()
        .map(|r| {
            let cols: Option<Vec<String>> = r.col(2, Q)?;
            Ok(Found {
                name: QualName::new(r.col::<_, String>(0, Q)?, r.col::<_, String>(1, Q)?),
                reltype: RelType::Table,
                key: match cols {
                    Some(columns) => Some(Key {
                        columns,
                        types: r.col(3, Q)?,
                        kind: r.col(4, Q)?,
                    }),
                    None => None,
                },
            })
        })
        .collect()
}

/// Every user sequence.
pub fn sequences(c: &mut impl GenericClient) -> Result<Vec<Found>> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'S' AND c.relpersistence <> 't' AND {SYSTEM_SCHEMA_FILTER} ORDER BY 1, 2"
    );
    const Q: &str = "listing sequences";
    let rows = c.query(&sql, &[]).ctx(|| Q.into())?;
    rows.iter()
        .map(|r| {
            Ok(Found {
                name: QualName::new(r.col::<_, String>(0, Q)?, r.col::<_, String>(1, Q)?),
                reltype: RelType::Sequence,
                key: None,
            })
        })
        .collect()
}

/// A column of a live table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type with modifiers.
    pub type_name: String,
    /// Type without a length limit (`character varying`, `bpchar`,
    /// `"bit"`: `format_type(oid, -1)`, not NULL, which says `character`,
    /// meaning char(1)): what a change log or a key cast uses, so widening
    /// the column needs nothing and nothing is ever cut.
    pub base_type: String,
    /// NOT NULL.
    pub not_null: bool,
    /// Has a default (or is generated/identity).
    pub has_default: bool,
    /// Generated column (never written by COPY).
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: written only with OVERRIDING
    /// SYSTEM VALUE, never updated but to DEFAULT.
    pub identity_always: bool,
}

/// What kind of relation a name is in a live database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Ordinary table.
    Table,
    /// Partitioned table.
    Partitioned,
    /// Sequence.
    Sequence,
    /// Something else (view, matview, foreign table).
    Other,
}

impl Kind {
    /// The kind of a `pg_class.relkind`.
    fn from_relkind(relkind: &str) -> Kind {
        match relkind {
            "r" => Kind::Table,
            "p" => Kind::Partitioned,
            "S" => Kind::Sequence,
            _ => Kind::Other,
        }
    }
}

/// Looks one relation up; None when it does not exist.
pub fn kind_of(c: &mut impl GenericClient, name: &QualName) -> Result<Option<Kind>> {
    let q = format!("looking up {}", name.shown());
    let row = c
        .query_opt(
            "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&name.schema, &name.name],
        )
        .ctx(|| q.clone())?;
    row.map(|r| Ok(Kind::from_relkind(&r.col::<_, String>(0, &q)?)))
        .transpose()
}

/// Where a table stands in an inheritance tree (legacy inheritance or
/// partitioning): whether it has a parent, and whether it has children.
/// Capture and apply both ask: statements on a parent reach its children.
pub fn inheritance(c: &mut impl GenericClient, name: &QualName) -> Result<(bool, bool)> {
    let q = format!("looking for inheritance around {}", name.shown());
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                             WHERE i.inhrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i
                             WHERE i.inhparent OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1))",
            &[&name.sql()],
        )
        .ctx(|| q.clone())?;
    Ok((r.col(0, &q)?, r.col(1, &q)?))
}

/// The live columns of a table, in attribute order (dropped columns skipped).
pub fn columns(c: &mut impl GenericClient, name: &QualName) -> Result<Vec<Column>> {
    let v = server_version(c)?;
    let generated = if v >= 120000 { "a.attgenerated <> ''" } else { "false" };
    let (identity, always) = if v >= 100000 {
        ("a.attidentity <> ''", "a.attidentity = 'a'")
    } else {
        ("false", "false")
    };
    let q = format!("reading the columns of {}", name.shown());
    let rows = c
        .query(
            &format!(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                        a.atthasdef OR {identity}, {generated}, format_type(a.atttypid, -1), {always}
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum"
            ),
            &[&name.schema, &name.name],
        )
        .ctx(|| q.clone())?;
    rows.iter()
        .map(|r| {
            Ok(Column {
                name: r.col(0, &q)?,
                type_name: r.col(1, &q)?,
                not_null: r.col(2, &q)?,
                has_default: r.col(3, &q)?,
                generated: r.col(4, &q)?,
                base_type: r.col(5, &q)?,
                identity_always: r.col(6, &q)?,
            })
        })
        .collect()
}

/// The type a change log stores a key column of type `base` in: the type
/// without modifiers, and integers as bigint, so the application's own
/// writes keep working when a DBA widens a key (`varchar(10)` ->
/// `varchar(20)`, `int` -> `bigint`) before capra has looked.
pub fn log_type(base: &str) -> String {
    match base {
        "smallint" | "integer" => "bigint".into(),
        other => other.into(),
    }
}

/// Whether the named columns form the primary key or a unique key of the
/// live table whose columns are all NOT NULL (used when a user declares
/// `pkey=`); a nullable unique key cannot identify a row.
pub fn is_unique_key(c: &mut impl GenericClient, name: &QualName, cols: &[String]) -> Result<Option<Key>> {
    let rows = c
        .query(
            "SELECT i.indisprimary,
                    array_agg(a.attname::text ORDER BY s.i), array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY s.i),
                    bool_and(a.attnotnull)
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL generate_series(0, i.indnatts - 1) AS s(i)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[s.i]
              WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid
                AND i.indpred IS NULL AND i.indexprs IS NULL
              GROUP BY i.indexrelid, i.indisprimary",
            &[&name.schema, &name.name],
        )
        .ctx(|| format!("reading the unique keys of {}", name.shown()))?;
    let q = format!("reading the unique keys of {}", name.shown());
    let mut want = cols.to_vec();
    want.sort();
    for r in rows {
        let kcols: Vec<String> = r.col(1, &q)?;
        let mut a = kcols.clone();
        a.sort();
        if a == want && r.col::<_, bool>(3, &q)? {
            let types: Vec<String> = r.col(2, &q)?;
            // Keep the user's column order. (Every column is among the
            // index's, as the sorted lists are equal.)
            let Some(ordered_types) = cols
                .iter()
                .map(|c| kcols.iter().position(|k| k == c).and_then(|i| types.get(i).cloned()))
                .collect::<Option<Vec<String>>>()
            else {
                continue;
            };
            return Ok(Some(Key {
                columns: cols.to_vec(),
                types: ordered_types,
                kind: if r.col::<_, bool>(0, &q)? {
                    crate::domain::KeyKind::Primary
                } else {
                    crate::domain::KeyKind::Unique
                },
            }));
        }
    }
    Ok(None)
}

/// Short type names for display, as Bucardo lists keys (`varchar`, `timestamptz`).
pub fn short_type(t: &str) -> String {
    let base = t.split('(').next().unwrap_or(t).trim();
    match base {
        "character varying" => "varchar".into(),
        "character" => "char".into(),
        "timestamp without time zone" => "timestamp".into(),
        "timestamp with time zone" => "timestamptz".into(),
        "time without time zone" => "time".into(),
        "time with time zone" => "timetz".into(),
        "double precision" => "float8".into(),
        "bit varying" => "varbit".into(),
        other => other.to_string(),
    }
}
