//! Other people's code that capra's sessions would run: what `validate`
//! looks for on every member before it calls a sync safe.
//!
//! capra's SQL never resolves a name through a schema anyone else may
//! create in (its sessions pin `search_path` to `pg_catalog, pg_temp`), but
//! PostgreSQL itself runs some code attached to a table or a type whoever
//! writes or converts it, with the writer's rights (measured on PostgreSQL
//! 15, see tests/it/security.rs):
//! - triggers and rules enabled `ALWAYS` or `REPLICA` fire while capra
//!   applies (as a replica, which stops only the ordinary ones);
//! - column defaults (for columns capra does not write), generated
//!   columns, CHECK constraints, index expressions and predicates, and the
//!   CHECKs of a column's domain are evaluated on every row capra writes;
//! - a cast of a column's type to text or JSON, or from text (`CREATE
//!   CAST` needs only ownership of one of its types), runs when capra
//!   converts keys and rows to and from text.
//!
//! A function owned by a role that is not a superuser and that runs with
//! its caller's rights (not SECURITY DEFINER) is such a role's code: under
//! a superuser session it runs as a superuser. These are found by
//! dependency (`pg_depend`), so nested expressions count too.

use postgres::GenericClient;

use crate::error::{Context, Result};
use crate::pg::ident::QualName;
use crate::pg::RowExt;

/// Code attached to one table that a session writing it (`writes`) or
/// converting its columns' types would run, each with the role that owns
/// it: "trigger x (ENABLE ALWAYS) calls public.f()", "mallory".
pub fn find(c: &mut impl GenericClient, table: &QualName, writes: bool) -> Result<Vec<(String, String)>> {
    let q = format!("looking for other roles' code on {}", table.shown());
    c.query(HAZARDS_SQL, &[&table.schema, &table.name, &writes])
        .ctx(|| q.clone())?
        .iter()
        .map(|r| Ok((r.col(0, &q)?, r.col(1, &q)?)))
        .collect()
}

/// The owner of a table when it is not a superuser (it could attach code
/// to the table at any time).
pub fn untrusted_owner(c: &mut impl GenericClient, table: &QualName) -> Result<Option<String>> {
    let q = format!("reading the owner of {}", table.shown());
    c.query_opt(
        "SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
          WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 AND NOT r.rolsuper",
        &[&table.schema, &table.name],
    )
    .ctx(|| q.clone())?
    .map(|r| r.col(0, &q))
    .transpose()
}

/// $1, $2: the table's schema and name (looked up in the catalog, which
/// needs no right on the schema); $3: whether capra writes it there. Each
/// row: what runs, and who owns it.
const HAZARDS_SQL: &str = "
WITH rel AS (
    SELECT c.oid, c.relowner FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2
), untrusted AS (
    SELECT p.oid, r.rolname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) p.proowner
     WHERE NOT r.rolsuper AND NOT p.prosecdef
), cols AS (
    SELECT a.attname, a.atttypid,
           CASE WHEN t.typcategory OPERATOR(pg_catalog.=) 'A' THEN t.typelem END AS typelem
      FROM pg_catalog.pg_attribute a
      JOIN rel ON a.attrelid OPERATOR(pg_catalog.=) rel.oid
      JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid
     WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
), expr(what, classid, objid, written) AS (
    SELECT 'the default or generated value of column ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(a.attname),
           'pg_catalog.pg_attrdef'::pg_catalog.regclass, d.oid, true
      FROM pg_catalog.pg_attrdef d JOIN rel ON d.adrelid OPERATOR(pg_catalog.=) rel.oid
      JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) d.adrelid AND a.attnum OPERATOR(pg_catalog.=) d.adnum
    UNION ALL
    SELECT 'constraint ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(k.conname),
           'pg_catalog.pg_constraint'::pg_catalog.regclass, k.oid, true
      FROM pg_catalog.pg_constraint k JOIN rel ON k.conrelid OPERATOR(pg_catalog.=) rel.oid
    UNION ALL
    SELECT 'index ' OPERATOR(pg_catalog.||) i.indexrelid::pg_catalog.regclass::pg_catalog.text,
           'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid, true
      FROM pg_catalog.pg_index i JOIN rel ON i.indrelid OPERATOR(pg_catalog.=) rel.oid
    UNION ALL
    SELECT 'a CHECK of the domain ' OPERATOR(pg_catalog.||) k.contypid::pg_catalog.regtype::pg_catalog.text
               OPERATOR(pg_catalog.||) ' of column ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.attname),
           'pg_catalog.pg_constraint'::pg_catalog.regclass, k.oid, false
      FROM cols c JOIN pg_catalog.pg_constraint k ON k.contypid OPERATOR(pg_catalog.=) ANY (ARRAY[c.atttypid, c.typelem])
), calls(what, fn) AS (
    SELECT e.what, d.refobjid FROM expr e
      JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) e.classid AND d.objid OPERATOR(pg_catalog.=) e.objid
     WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass AND ($3 OR NOT e.written)
    UNION ALL
    SELECT e.what, o.oprcode::pg_catalog.oid FROM expr e
      JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) e.classid AND d.objid OPERATOR(pg_catalog.=) e.objid
      JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) d.refobjid
     WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass AND ($3 OR NOT e.written)
    UNION ALL
    SELECT 'trigger ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(t.tgname) OPERATOR(pg_catalog.||)
               CASE t.tgenabled WHEN 'A' THEN ' (ENABLE ALWAYS)' ELSE ' (ENABLE REPLICA)' END, t.tgfoid
      FROM pg_catalog.pg_trigger t JOIN rel ON t.tgrelid OPERATOR(pg_catalog.=) rel.oid
     WHERE $3 AND NOT t.tgisinternal AND t.tgenabled OPERATOR(pg_catalog.=) ANY (ARRAY['A', 'R']::\"char\"[])
    UNION ALL
    SELECT 'the cast ' OPERATOR(pg_catalog.||) k.castsource::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.||) ' AS '
               OPERATOR(pg_catalog.||) k.casttarget::pg_catalog.regtype::pg_catalog.text OPERATOR(pg_catalog.||) ' (column '
               OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.attname) OPERATOR(pg_catalog.||) ')', k.castfunc
      FROM cols c JOIN pg_catalog.pg_cast k
        ON (k.castsource OPERATOR(pg_catalog.=) ANY (ARRAY[c.atttypid, c.typelem])
            AND k.casttarget OPERATOR(pg_catalog.=) ANY (ARRAY['pg_catalog.text', 'pg_catalog.json', 'pg_catalog.jsonb']::pg_catalog.regtype[]::pg_catalog.oid[]))
        OR (k.casttarget OPERATOR(pg_catalog.=) ANY (ARRAY[c.atttypid, c.typelem])
            AND k.castsource OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype)
)
SELECT DISTINCT x.what OPERATOR(pg_catalog.||) ' calls ' OPERATOR(pg_catalog.||) x.fn::pg_catalog.regprocedure::pg_catalog.text, u.rolname::pg_catalog.text
  FROM calls x JOIN untrusted u ON u.oid OPERATOR(pg_catalog.=) x.fn
UNION
SELECT 'rule ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(w.rulename) OPERATOR(pg_catalog.||)
           CASE w.ev_enabled WHEN 'A' THEN ' (ENABLE ALWAYS)' ELSE ' (ENABLE REPLICA)' END, r.rolname::pg_catalog.text
  FROM pg_catalog.pg_rewrite w JOIN rel ON w.ev_class OPERATOR(pg_catalog.=) rel.oid
  JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) rel.relowner
 WHERE $3 AND NOT r.rolsuper AND w.ev_enabled OPERATOR(pg_catalog.=) ANY (ARRAY['A', 'R']::\"char\"[])
ORDER BY 1";
