//! `capra import bucardo --remove`: what Bucardo left in the replicated
//! databases after the takeover (its triggers on the application's tables,
//! matched by their function's schema, since Bucardo names some `bkick_`;
//! then its `bucardo` schema with every function and log table in it).
//! Bucardo's control database is never touched, nor the `bucardo` role,
//! which is cluster-wide.
//!
//! Every database is checked first, read-only ([`check`]); only when none
//! has a user object depending on Bucardo's, and none holds Bucardo's
//! control catalog, is anything dropped ([`remove`]), each trigger in a
//! short transaction of its own, so the application's tables are locked
//! one at a time and briefly.

use postgres::Client;

use super::ImportError;
use crate::error::{Context, Result};
use crate::pg::ident::quote_ident;
use crate::pg::RowExt;

/// Objects outside schema `bucardo` that depend on objects inside it (a
/// view over a delta table, a foreign key to one, a default calling one of
/// its functions), described; Bucardo's own parts (indexes, rules,
/// defaults and constraints of its tables) are inside.
const DEPENDENTS: &str = "
WITH ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) 'bucardo'),
inside AS (
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass AS classid, c.oid FROM pg_catalog.pg_class c, ns WHERE c.relnamespace OPERATOR(pg_catalog.=) ns.oid
    UNION ALL SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid FROM pg_catalog.pg_proc p, ns WHERE p.pronamespace OPERATOR(pg_catalog.=) ns.oid
    UNION ALL SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid FROM pg_catalog.pg_type t, ns WHERE t.typnamespace OPERATOR(pg_catalog.=) ns.oid
),
deps AS (
    SELECT d.classid, d.objid, d.objsubid,
           CASE d.classid
             WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) d.objid)
             WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN (SELECT pronamespace FROM pg_catalog.pg_proc WHERE oid OPERATOR(pg_catalog.=) d.objid)
             WHEN 'pg_catalog.pg_type'::pg_catalog.regclass THEN (SELECT typnamespace FROM pg_catalog.pg_type WHERE oid OPERATOR(pg_catalog.=) d.objid)
             WHEN 'pg_catalog.pg_rewrite'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.ev_class WHERE r.oid OPERATOR(pg_catalog.=) d.objid)
             WHEN 'pg_catalog.pg_attrdef'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_attrdef a JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.adrelid WHERE a.oid OPERATOR(pg_catalog.=) d.objid)
             WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN (SELECT coalesce(c.relnamespace, t.typnamespace) FROM pg_catalog.pg_constraint k LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) k.conrelid LEFT JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) k.contypid WHERE k.oid OPERATOR(pg_catalog.=) d.objid)
             WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN (SELECT c.relnamespace FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) g.tgrelid WHERE g.oid OPERATOR(pg_catalog.=) d.objid)
           END AS nsp
      FROM pg_catalog.pg_depend d JOIN inside i ON d.refclassid OPERATOR(pg_catalog.=) i.classid AND d.refobjid OPERATOR(pg_catalog.=) i.oid
     WHERE d.deptype IN ('n', 'a')
)
SELECT DISTINCT pg_catalog.pg_describe_object(deps.classid, deps.objid, 0)
  FROM deps, ns
 WHERE deps.nsp IS DISTINCT FROM ns.oid
   -- Bucardo's own triggers on the application's tables go first.
   AND NOT (deps.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) g.tgfoid
                         WHERE g.oid OPERATOR(pg_catalog.=) deps.objid AND p.pronamespace OPERATOR(pg_catalog.=) ns.oid))
 ORDER BY 1";

/// Whether Bucardo can be removed from this database: refuses when it
/// holds Bucardo's control catalog itself, or when an object of the
/// user's depends on Bucardo's. Reads only.
pub fn check(client: &mut Client, db: &str) -> Result<()> {
    let what = format!("checking what depends on Bucardo in \"{db}\"");
    let control: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('bucardo.bucardo_config') IS NOT NULL",
            &[],
        )
        .ctx(|| what.clone())?
        .col(0, &what)?;
    if control {
        return Err(ImportError::HoldsControl { db: db.into() }.into());
    }
    refuse_dependents(client, db)
}

/// Refuses when an object of the user's depends on Bucardo's.
fn refuse_dependents(client: &mut impl postgres::GenericClient, db: &str) -> Result<()> {
    let what = format!("checking what depends on Bucardo in \"{db}\"");
    let deps: Vec<String> = client
        .query(DEPENDENTS, &[])
        .ctx(|| what.clone())?
        .iter()
        .map(|r| r.col(0, &what))
        .collect::<Result<_>>()?;
    if deps.is_empty() {
        return Ok(());
    }
    Err(ImportError::Dependents {
        db: db.into(),
        objects: deps.join(", "),
    }
    .into())
}

/// What [`remove`] dropped on one database.
#[derive(Debug, Default)]
pub struct Removed {
    /// Triggers dropped, as `table: trigger`.
    pub triggers: Vec<String>,
    /// Whether the `bucardo` schema was there (and is dropped).
    pub schema: bool,
}

/// Drops Bucardo's triggers (each in its own transaction, waiting at most
/// 5 s for the table), then, checked once more, its schema.
pub fn remove(client: &mut Client, db: &str) -> Result<Removed> {
    let what = format!("removing Bucardo from \"{db}\"");
    client.batch_execute("SET lock_timeout = '5s'").ctx(|| what.clone())?;
    let rows = client
        .query(
            "SELECT t.tgrelid::pg_catalog.regclass::text, t.tgname::text FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
              WHERE n.nspname OPERATOR(pg_catalog.=) 'bucardo' AND NOT t.tgisinternal
              ORDER BY 1, 2",
            &[],
        )
        .ctx(|| what.clone())?;
    let mut out = Removed::default();
    for r in rows {
        let table: String = r.col(0, &what)?;
        let name: String = r.col(1, &what)?;
        client
            .batch_execute(&format!("DROP TRIGGER IF EXISTS {} ON {table}", quote_ident(&name)))
            .ctx(|| format!("dropping Bucardo's trigger {name} on {table} on \"{db}\""))?;
        out.triggers.push(format!("{table}: {name}"));
    }
    let mut tx = client.transaction().ctx(|| what.clone())?;
    out.schema = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname OPERATOR(pg_catalog.=) 'bucardo')",
            &[],
        )
        .ctx(|| what.clone())?
        .col(0, &what)?;
    if out.schema {
        refuse_dependents(&mut tx, db)?;
        tx.batch_execute("DROP SCHEMA bucardo CASCADE")
            .ctx(|| format!("dropping schema bucardo on \"{db}\""))?;
    }
    tx.commit().ctx(|| what.clone())?;
    client.batch_execute("RESET lock_timeout").ctx(|| what.clone())?;
    Ok(out)
}
