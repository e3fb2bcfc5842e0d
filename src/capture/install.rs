//! The objects capra keeps in each source database, in its own `capra`
//! schema, and nothing else:
//!
//! - `capra.captured`: one row per captured table; its change log is
//!   `capra.delta_<id>` (named by id, so two tables can never collide the way
//!   Bucardo's `a_b.c` / `a.b_c` do), holding the changed key, the writing
//!   transaction's `txid_current()` and the change time.
//! - per table, one PL/pgSQL function and triggers chosen per operation
//!   by measurement (docs/performance.md): INSERT and DELETE are
//!   statement-level with transition tables (PostgreSQL 10+), so a
//!   100k-row statement logs its keys in one `INSERT ... SELECT`, and a
//!   one-row statement costs no more than a row trigger; UPDATE is
//!   row-level, which for the common one-row UPDATE is cheaper than two
//!   transition tables and their UNION (it logs the new key, and the old
//!   one too when they differ, so a key change is caught whatever made
//!   it). Row-level for every operation on servers without transition
//!   tables and on partitioned tables (whose row triggers reach every
//!   partition). A TRUNCATE trigger writes `capra.truncate_log`. Triggers
//!   fire only in the `origin` replication role, so rows capra itself
//!   applies are not logged again (the loop prevention multi-master relies
//!   on). The functions run as their owner, so writers need (and get) no
//!   rights on capra's tables, its schema or the functions themselves:
//!   PUBLIC may not execute them, so no one can attach one to a table of
//!   their own to forge change rows.
//! - `capra.consumer`: per (installation, sync), the `txid_snapshot` up to
//!   which that sync has applied this source's changes. A run reads in one
//!   REPEATABLE READ snapshot `cur` and takes exactly the rows whose txid is
//!   visible in `cur` but not in the consumer's snapshot, then stores `cur`:
//!   a transaction that started early and commits late is in `cur`'s
//!   in-progress list, so it is picked up by the next run, once (PgQ's rule).
//! - no kick: the writing transaction sends nothing; the daemon's watcher
//!   notices committed changes (see `crate::daemon::watcher`).

use postgres::GenericClient;

use super::CaptureError;
use crate::domain::Status;
use crate::error::{Context, Result};
use crate::pg::discover::{self, Column};
use crate::pg::ident::{quote_ident, QualName};
use crate::pg::RowExt;

/// Version of the source-side objects; bumped when their shape changes.
/// (6: no NOTIFY in the capture function, row-level UPDATE triggers;
/// 7: one function for both trigger kinds, inheritance parents row-level,
/// the DDL follower also watching CREATE TABLE; 8: the logs' own columns
/// are `capra_txid` and `capra_ts`, so a key column may be called `txid`
/// or `ts`.)
pub const CAPTURE_VERSION: i32 = 8;

/// Column names of capra's own in the change logs (and `capra_from` in a
/// run's staging tables): a key column may not take them.
pub const LOG_COLUMNS: [&str; 3] = ["capra_txid", "capra_ts", "capra_from"];

const BASE_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS capra;
-- Nothing here is for other roles: the capture functions run as their
-- owner from the trigger mechanism, which checks no schema or function
-- rights, so writers need none (see revoke_public).
REVOKE ALL ON SCHEMA capra FROM PUBLIC;
COMMENT ON SCHEMA capra IS 'capra replication: change capture (remove with capra remove sync ...)';
CREATE TABLE IF NOT EXISTS capra.capture_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS capra.captured (
    id serial PRIMARY KEY,
    schemaname text NOT NULL,
    relname text NOT NULL,
    keycols text[] NOT NULL,
    keytypes text[] NOT NULL,
    rowlevel boolean NOT NULL DEFAULT false,
    cdate timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schemaname, relname)
);
CREATE TABLE IF NOT EXISTS capra.consumer (
    installation text NOT NULL,
    sync text NOT NULL,
    snapshot txid_snapshot NOT NULL,
    updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (installation, sync)
);
CREATE TABLE IF NOT EXISTS capra.consumer_table (
    installation text NOT NULL,
    sync text NOT NULL,
    captured integer NOT NULL REFERENCES capra.captured (id) ON DELETE CASCADE,
    autokick boolean NOT NULL DEFAULT true,
    PRIMARY KEY (installation, sync, captured),
    FOREIGN KEY (installation, sync) REFERENCES capra.consumer ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS capra.truncate_log (
    captured integer NOT NULL,
    capra_txid bigint NOT NULL DEFAULT txid_current(),
    capra_ts timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Version 8: the logs' own columns renamed (txid, ts were taken from key
-- columns of those names), in place: the rows stay.
DO $m$
DECLARE
    r record;
BEGIN
    -- Each rename waits briefly for the application's writers (the
    -- upgrade is retried), and this session is the deadlock victim
    -- where it may say so, never the application.
    PERFORM pg_catalog.set_config('lock_timeout', '5s', true);
    BEGIN
        PERFORM pg_catalog.set_config('deadlock_timeout', '50ms', true);
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
    FOR r IN
        SELECT c.oid::regclass AS t FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'capra' AND c.relkind = 'r' AND c.relname ~ '^(delta_[0-9]+|truncate_log)$'
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'txid' AND NOT a.attisdropped)
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN txid TO capra_txid', r.t);
        EXECUTE pg_catalog.format('ALTER TABLE %s RENAME COLUMN ts TO capra_ts', r.t);
    END LOOP;
END
$m$;
CREATE INDEX IF NOT EXISTS truncate_log_txid ON capra.truncate_log (capra_txid);
-- Version 2: a TRUNCATE of one partition names it (NULL: the whole table).
ALTER TABLE capra.truncate_log ADD COLUMN IF NOT EXISTS part text;
-- The partitions of each captured partitioned table as last seen, so an
-- ATTACH or DETACH between two runs is noticed and its rows replicated.
CREATE TABLE IF NOT EXISTS capra.captured_part (
    captured integer NOT NULL REFERENCES capra.captured (id) ON DELETE CASCADE,
    schemaname text NOT NULL,
    relname text NOT NULL,
    PRIMARY KEY (captured, schemaname, relname)
);
ALTER TABLE capra.captured_part ADD COLUMN IF NOT EXISTS relid oid;
-- Version 2: the table's oid and its key columns' numbers, so DDL on the
-- table (a key column renamed, retyped or dropped) can be followed.
ALTER TABLE capra.captured ADD COLUMN IF NOT EXISTS relid oid;
ALTER TABLE capra.captured ADD COLUMN IF NOT EXISTS keynums smallint[];
-- Version 5: transactions in which a sync wrote into this database's change
-- logs itself: kind 'm', rows it applied here and logged (makedelta), which
-- it must not read back as this database's own changes; kind 'r', keys it
-- logged again for its next run, whose change time is the one logged (not
-- that transaction's commit time). Written in the same transaction as the
-- rows, so a crash cannot separate them; dropped once behind the position.
CREATE TABLE IF NOT EXISTS capra.applied (
    installation text NOT NULL,
    sync text NOT NULL,
    txid bigint NOT NULL,
    kind "char" NOT NULL CHECK (kind IN ('m', 'r')),
    PRIMARY KEY (installation, sync, txid),
    FOREIGN KEY (installation, sync) REFERENCES capra.consumer ON DELETE CASCADE
);

-- Follows DDL on captured tables at ddl_command_end (installed as an event
-- trigger where capra's role is a superuser; it runs as its owner, whoever
-- issues the DDL), so the application's writes never fail because capture
-- names a column that changed:
-- - a key column renamed: the change log's column and the capture
--   function follow (then: capra update table T pkey=NEW);
-- - a key column retyped: the change log's column follows;
-- - a key column dropped, or anything above failing: capture switches to
--   marking the table for a full copy at every write ('*' in
--   truncate_log, keynums NULL) until its key is declared again.
-- Every captured table is checked (DDL on a parent recurses to children
-- the event does not name). It never fails the DDL.
CREATE OR REPLACE FUNCTION capra.follow_ddl() RETURNS event_trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    cap record;
    names text[];
    types text[];
    gone boolean;
    def text;
    i integer;
    old_t regtype;
    part record;
    inh record;
BEGIN
    -- Its own ALTERs of change logs fire it again: only the outer one acts.
    -- A CREATE TABLE matters only when the new table inherits (temporary
    -- tables, capra's own among them, never do).
    IF current_setting('capra.following_ddl', true) = 'on'
       OR NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() d
                       WHERE d.classid = 'pg_class'::regclass
                         AND (d.command_tag <> 'CREATE TABLE'
                              OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = d.objid))) THEN
        RETURN;
    END IF;
    PERFORM set_config('capra.following_ddl', 'on', true);
    -- A partition no longer attached to its captured table is forgotten by
    -- oid now, so the next run treats it as gone (its rows leave the
    -- targets) and, should it be attached again meanwhile, as new (its
    -- rows, changed while detached, are copied): exact either way.
    BEGIN
        FOR part IN
            SELECT p.captured, p.relid AS oid, c.relid AS parent
              FROM capra.captured_part p JOIN capra.captured c ON c.id = p.captured
             WHERE p.relid IS NOT NULL AND p.relid <> 0 AND c.relid IS NOT NULL
        LOOP
            IF NOT EXISTS (
                WITH RECURSIVE up(oid) AS (
                    SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = part.oid
                    UNION ALL SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid)
                SELECT 1 FROM up WHERE up.oid = part.parent)
            THEN
                UPDATE capra.captured_part SET relid = 0 WHERE captured = part.captured AND relid = part.oid;
            END IF;
        END LOOP;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'capra could not note a detached partition (%)', SQLERRM;
    END;
    -- A table captured by statement triggers that joined an inheritance
    -- tree (CREATE TABLE ... INHERITS, ALTER TABLE ... INHERIT, ATTACH
    -- PARTITION): a statement naming its parent would not fire its
    -- statement triggers, so it switches to row triggers, which fire on
    -- the table holding the row. Its capture function serves both kinds;
    -- its log stays.
    -- Each table on its own: one that cannot switch (a lock) leaves the
    -- others switched; the next run switches it and repairs what it missed.
    FOR inh IN
        SELECT c.id, c.relid::regclass::text AS tbl
          FROM capra.captured c JOIN pg_class r ON r.oid = c.relid
         WHERE NOT c.rowlevel AND c.keynums IS NOT NULL AND r.relkind = 'r'
           AND EXISTS (SELECT 1 FROM pg_inherits i WHERE c.relid IN (i.inhparent, i.inhrelid))
    LOOP
        BEGIN
            EXECUTE format('DROP TRIGGER IF EXISTS capra_capture_i ON %s', inh.tbl);
            EXECUTE format('DROP TRIGGER IF EXISTS capra_capture_d ON %s', inh.tbl);
            EXECUTE format('DROP TRIGGER IF EXISTS capra_capture_u ON %s', inh.tbl);
            EXECUTE format('CREATE TRIGGER capra_capture_r AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE PROCEDURE capra.capture_%s()',
                           inh.tbl, inh.id);
            UPDATE capra.captured SET rowlevel = true WHERE id = inh.id;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'capra could not switch the capture of % to row triggers (%); its next run does', inh.tbl, SQLERRM;
        END;
    END LOOP;
    FOR cap IN
        SELECT c.id, c.keycols, c.keytypes, c.keynums, c.relid, c.schemaname, c.relname
          FROM capra.captured c
         WHERE c.keynums IS NOT NULL AND c.relid IS NOT NULL
    LOOP
        BEGIN
            SELECT array_agg(a.attname::text ORDER BY k.i),
                   array_agg(format_type(a.atttypid, -1) ORDER BY k.i),
                   bool_or(a.attname IS NULL OR a.attisdropped)
              INTO names, types, gone
              FROM unnest(cap.keynums) WITH ORDINALITY AS k(n, i)
              LEFT JOIN pg_attribute a ON a.attrelid = cap.relid AND a.attnum = k.n;
            IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = cap.relid) THEN
                CONTINUE; -- the table itself is gone; capra's commands notice
            END IF;
            IF gone THEN
                RAISE EXCEPTION 'a key column was dropped';
            END IF;
            IF names IS DISTINCT FROM cap.keycols THEN
                def := pg_get_functiondef(format('capra.capture_%s()', cap.id)::regprocedure);
                FOR i IN 1 .. array_length(names, 1) LOOP
                    IF names[i] IS DISTINCT FROM cap.keycols[i] THEN
                        def := replace(def,
                            '"' || replace(cap.keycols[i], '"', '""') || '"',
                            '"' || replace(names[i], '"', '""') || '"');
                        EXECUTE format('ALTER TABLE capra.%I RENAME COLUMN %I TO %I',
                            'delta_' || cap.id, cap.keycols[i], names[i]);
                    END IF;
                END LOOP;
                EXECUTE def;
                UPDATE capra.captured SET keycols = names WHERE id = cap.id;
                RAISE WARNING 'capra: the key of %.% is now (%); tell capra: capra update table %.% pkey=%',
                    cap.schemaname, cap.relname, array_to_string(names, ', '),
                    cap.schemaname, cap.relname, array_to_string(names, ',');
            END IF;
            FOR i IN 1 .. array_length(types, 1) LOOP
                IF types[i] IN ('smallint', 'integer') THEN
                    types[i] := 'bigint';
                END IF;
                -- Compared as types: names print differently under other
                -- search_paths; a name this one cannot resolve is left be.
                BEGIN
                    old_t := cap.keytypes[i]::regtype;
                EXCEPTION WHEN OTHERS THEN
                    old_t := NULL;
                END;
                IF old_t IS NOT NULL AND old_t <> types[i]::regtype THEN
                    -- The log is converted through text; a cast another
                    -- role wrote for either step would run here as this
                    -- function's owner: give up on the key instead.
                    IF EXISTS (SELECT 1 FROM pg_cast k JOIN pg_proc p ON p.oid = k.castfunc
                                 JOIN pg_roles r ON r.oid = p.proowner
                                WHERE NOT r.rolsuper AND NOT p.prosecdef
                                  AND ((k.castsource = old_t AND k.casttarget = 'text'::regtype)
                                       OR (k.castsource = 'text'::regtype AND k.casttarget = types[i]::regtype))) THEN
                        RAISE EXCEPTION 'converting key column % to % would run a cast of another role', names[i], types[i];
                    END IF;
                    EXECUTE format('ALTER TABLE capra.%I ALTER COLUMN %I TYPE %s USING %I::text::%s',
                        'delta_' || cap.id, names[i], types[i], names[i], types[i]);
                    UPDATE capra.captured SET keytypes[i] = types[i] WHERE id = cap.id;
                END IF;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            BEGIN
                EXECUTE format(
                    'CREATE OR REPLACE FUNCTION capra.capture_%s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $b$
                     BEGIN INSERT INTO capra.truncate_log (captured, part) VALUES (%s, ''*'');
                           RETURN NULL; END $b$',
                    cap.id, cap.id);
                EXECUTE format('REVOKE ALL ON FUNCTION capra.capture_%s() FROM PUBLIC', cap.id);
                INSERT INTO capra.truncate_log (captured, part) VALUES (cap.id, '*');
                UPDATE capra.captured SET keynums = NULL WHERE id = cap.id;
                RAISE WARNING 'capra: cannot follow the key of %.% (%); every write now marks it for a full copy, and its sync stops until you declare its key: capra update table %.% pkey=COLUMNS',
                    cap.schemaname, cap.relname, SQLERRM, cap.schemaname, cap.relname;
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'capra could not follow DDL on %.% (%); run: capra validate', cap.schemaname, cap.relname, SQLERRM;
            END;
        END;
    END LOOP;
    PERFORM set_config('capra.following_ddl', 'off', true);
EXCEPTION WHEN OTHERS THEN
    PERFORM set_config('capra.following_ddl', 'off', true);
    RAISE WARNING 'capra could not follow this DDL (%); run: capra validate', SQLERRM;
END
$f$;
REVOKE ALL ON FUNCTION capra.follow_ddl() FROM PUBLIC;
"#;

/// A table to capture: its name and replication key.
#[derive(Clone, Debug)]
pub struct Target {
    /// Schema and name.
    pub name: QualName,
    /// Key columns.
    pub keycols: Vec<String>,
    /// Whether its changes kick the sync (the watcher asks about it).
    pub autokick: bool,
}

/// The tables a sync captures on its sources, with whether each kicks.
pub fn targets(plan: &crate::catalog::plan::SyncPlan) -> Vec<Target> {
    plan.tables
        .iter()
        .map(|r| Target {
            name: r.name.clone(),
            keycols: r.pkey.clone(),
            // A table's own autokick overrides the sync's (Bucardo's rule).
            autokick: r.autokick.unwrap_or(plan.sync.autokick) && plan.sync.status == Status::Active,
        })
        .collect()
}

/// Creates the shared objects if missing and checks their version.
pub fn ensure_base(c: &mut impl GenericClient) -> Result<()> {
    if let Some(v) = capture_version(c)? {
        if v > CAPTURE_VERSION {
            return Err(CaptureError::NewerCapture {
                found: v,
                ours: CAPTURE_VERSION,
            }
            .into());
        }
        if v == CAPTURE_VERSION {
            return revoke_public(c);
        }
    }
    refuse_foreign_schema(c)?;
    c.batch_execute(BASE_SQL)
        .ctx(|| "creating capra's capture schema".into())?;
    upgrade_captures(c)?;
    c.execute(
        "INSERT INTO capra.capture_meta (version) VALUES ($1) ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        &[&CAPTURE_VERSION],
    )
    .ctx(|| "recording the capture version".into())?;
    revoke_public(c)?;
    install_ddl_follower(c)
}

/// Takes EXECUTE on capra's functions and every right on its schema away
/// from PUBLIC wherever an older capra left them (new functions default to
/// PUBLIC EXECUTE, and `CREATE OR REPLACE` keeps what a function had).
/// With EXECUTE, any role that can reach the schema could attach a
/// SECURITY DEFINER `capture_N()` to a table of its own and forge change
/// or truncate rows for a synced table; the triggers capra installs need
/// no EXECUTE (the trigger mechanism does not check it). Looks first, so
/// an install already in order costs one query and no catalog writes.
fn revoke_public(c: &mut impl GenericClient) -> Result<()> {
    let open: Vec<String> = c
        .query(
            "SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text FROM pg_catalog.pg_proc p
              WHERE p.pronamespace OPERATOR(pg_catalog.=) 'capra'::pg_catalog.regnamespace
                AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
             UNION ALL
             SELECT 'schema' FROM pg_catalog.pg_namespace n
              WHERE n.nspname OPERATOR(pg_catalog.=) 'capra'
                AND (pg_catalog.has_schema_privilege('public', n.oid, 'USAGE')
                     OR pg_catalog.has_schema_privilege('public', n.oid, 'CREATE'))",
            &[],
        )
        .ctx(|| "checking the rights on capra's capture functions".into())?
        .iter()
        .map(|r| r.col(0, "a capture function open to PUBLIC"))
        .collect::<Result<_>>()?;
    if open.is_empty() {
        return Ok(());
    }
    let sql: String = open
        .iter()
        .map(|f| match f.as_str() {
            "schema" => "REVOKE ALL ON SCHEMA capra FROM PUBLIC;\n".to_string(),
            f => format!("REVOKE ALL ON FUNCTION {f} FROM PUBLIC;\n"),
        })
        .collect();
    c.batch_execute(&sql)
        .ctx(|| "revoking PUBLIC's rights on capra's capture functions".into())?;
    tracing::info!("Revoked PUBLIC's rights on {} of capra's capture objects", open.len());
    Ok(())
}

/// A `capra` schema that someone else created first (with CREATE on the
/// database) would hold capra's SECURITY DEFINER functions where its owner
/// can drop and replace them: refused unless capra's role or a superuser
/// owns it, or capra's role (not a superuser, for whom membership means
/// nothing) is a member of the owner role.
pub(super) fn refuse_foreign_schema(c: &mut impl GenericClient) -> Result<()> {
    const Q: &str = "checking the owner of the capra schema";
    let owner: Option<String> = c
        .query_opt(
            "SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_namespace n
               JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
              WHERE n.nspname OPERATOR(pg_catalog.=) 'capra' AND NOT r.rolsuper
                AND r.rolname OPERATOR(pg_catalog.<>) current_user
                AND ((SELECT me.rolsuper FROM pg_catalog.pg_roles me WHERE me.rolname OPERATOR(pg_catalog.=) current_user)
                     OR NOT pg_catalog.pg_has_role(n.nspowner, 'USAGE'))",
            &[],
        )
        .ctx(|| Q.into())?
        .map(|r| r.col(0, Q))
        .transpose()?;
    match owner {
        Some(owner) => Err(CaptureError::ForeignSchema { owner }.into()),
        None => Ok(()),
    }
}

/// The capture version recorded in this database; None when capra's
/// schema or its version row is missing.
fn capture_version(c: &mut impl GenericClient) -> Result<Option<i32>> {
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.capture_meta') IS NOT NULL", &[])
        .ctx(|| "looking for capra's capture schema".into())?
        .col(0, "whether capra's capture schema exists")?;
    if !exists {
        return Ok(None);
    }
    c.query_opt("SELECT version FROM capra.capture_meta", &[])
        .ctx(|| "reading capture version".into())?
        .map(|r| r.col(0, "the capture version"))
        .transpose()
}

/// A row of `capra.captured` as [`upgrade_captures`] reads it.
struct OldCapture {
    /// Captured id.
    id: i32,
    /// Key columns.
    keycols: Vec<String>,
    /// Whether every operation has row-level triggers.
    rowlevel: bool,
    /// The table's name as registered.
    table: QualName,
    /// Marked for full copies (the DDL follower lost the key).
    marked: bool,
    /// Whether the table still exists (by oid or name).
    exists: bool,
    /// The table's quoted name now (found by oid when it has one).
    live: String,
}

impl OldCapture {
    fn from_row(r: &postgres::Row) -> Result<Self> {
        const Q: &str = "reading captured tables";
        Ok(OldCapture {
            id: r.col(0, Q)?,
            keycols: r.col(1, Q)?,
            rowlevel: r.col(2, Q)?,
            table: QualName::new(r.col::<_, String>(3, Q)?, r.col::<_, String>(4, Q)?),
            marked: r.col(5, Q)?,
            exists: r.col(6, Q)?,
            live: r.col(7, Q)?,
        })
    }
}

/// Rebuilds an older version's capture functions (and, before version 6,
/// its statement-level UPDATE triggers) in the new shape; the change logs
/// stay as they are. The table is found by its oid (it may have been
/// renamed, or its old name reused by another table).
fn upgrade_captures(c: &mut impl GenericClient) -> Result<()> {
    let rows = c
        .query(
            "SELECT cap.id, cap.keycols, cap.rowlevel, cap.schemaname, cap.relname,
                    cap.relid IS NOT NULL AND cap.keynums IS NULL,
                    coalesce(cl.oid, to_regclass(format('%I.%I', cap.schemaname, cap.relname))) IS NOT NULL,
                    coalesce(format('%I.%I', n.nspname, cl.relname), format('%I.%I', cap.schemaname, cap.relname))
               FROM capra.captured cap
               LEFT JOIN pg_catalog.pg_class cl ON cl.oid = cap.relid
               LEFT JOIN pg_catalog.pg_namespace n ON n.oid = cl.relnamespace",
            &[],
        )
        .ctx(|| "reading captured tables".into())?;
    for r in rows {
        let old = OldCapture::from_row(&r)?;
        let (id, table) = (old.id, &old.table);
        if old.marked {
            // Marking for full copies (the DDL follower lost the key).
            c.batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION capra.capture_{id}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $b$
                 BEGIN INSERT INTO capra.truncate_log (captured, part) VALUES ({id}, '*'); RETURN NULL; END $b$;
                 REVOKE ALL ON FUNCTION capra.capture_{id}() FROM PUBLIC;"
            ))
            .ctx(|| format!("upgrading capra's capture of {}", table.shown()))?;
            continue;
        }
        let mut sql = function_sql(id, table, &old.keycols);
        if !old.rowlevel && old.exists {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS capra_capture_u ON {};\n{}",
                old.live,
                update_trigger_sql(&old.live, id)
            ));
        }
        c.batch_execute(&sql)
            .ctx(|| format!("upgrading capra's capture of {}", table.shown()))?;
    }
    Ok(())
}

/// Event triggers need a superuser; without one, validate and the run
/// name the table and the command after key DDL instead.
fn install_ddl_follower(c: &mut impl GenericClient) -> Result<()> {
    // Missing, or from before it watched CREATE TABLE (version 7).
    let needed: bool = c
        .query_one(
            "SELECT rolsuper AND NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'capra_follow_ddl'
                                                AND 'CREATE TABLE' = ANY (evttags))
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .ctx(|| "checking for capra's DDL follower".into())?
        .col(0, "whether capra's DDL follower is needed")?;
    if needed {
        c.batch_execute(
            "DROP EVENT TRIGGER IF EXISTS capra_follow_ddl;
             CREATE EVENT TRIGGER capra_follow_ddl ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
                 EXECUTE PROCEDURE capra.follow_ddl()",
        )
        .ctx(|| "installing capra's DDL follower".into())?;
    }
    Ok(())
}

/// The delta table of a captured id.
pub fn delta_table(id: i32) -> String {
    format!("capra.delta_{id}")
}

/// Who is attaching capture, which decides what happens when a table's
/// replication key columns changed while its change log still holds
/// changes not yet applied, and whether tables may leave capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnKeyChange {
    /// A catalog command: refuse a key change with a clear error (the user
    /// can wait); tables no longer in the sync leave capture.
    Refuse,
    /// The daemon: keep capturing with the old key until the log is
    /// drained (runs use the key the log was built with); never remove a
    /// table from capture.
    Defer,
}

/// Whether this table needs row-level triggers: servers before PostgreSQL
/// 10 have no transition tables; a partitioned table's statement
/// triggers do not fire for writes aimed at a partition, while its row
/// triggers are cloned to every partition (PostgreSQL 11+); and in an
/// inheritance tree a statement fires only the statement triggers of the
/// table it names, whose transition tables hold the rows of every
/// descendant it reached: a `DELETE FROM parent` of a child's row would
/// never reach the child's log (and land in the parent's). Row triggers
/// fire on the table that holds the row, so every table with an
/// inheritance parent or child takes them. `CAPRA_ROW_TRIGGERS=1` forces
/// them (to test the path old servers take).
/// `partitioned`: the table's kind, which the caller has read.
fn use_row_triggers(c: &mut impl GenericClient, table: &QualName, partitioned: bool) -> Result<bool> {
    let v = discover::server_version(c)?;
    if partitioned && v < 110000 {
        return Err(CaptureError::PartitionedTooOld { table: table.shown() }.into());
    }
    let inherits = !partitioned && {
        let (parent, children) = discover::inheritance(c, table)?;
        parent || children
    };
    Ok(partitioned || inherits || v < 100000 || std::env::var("CAPRA_ROW_TRIGGERS").as_deref() == Ok("1"))
}

/// The trigger names capra creates on a user table (and nothing else is
/// ever dropped).
const TRIGGERS: &[&str] = &[
    "capra_capture",
    "capra_capture_r",
    "capra_capture_i",
    "capra_capture_u",
    "capra_capture_d",
    "capra_capture_t",
];

/// Installs (or refreshes) capture for one table; returns its captured id
/// and whether a key change is waiting for the log to drain.
pub fn capture_table(c: &mut impl GenericClient, t: &Target, on_key_change: OnKeyChange) -> Result<(i32, bool)> {
    let cols = discover::columns(c, &t.name)?;
    if cols.is_empty() {
        return Err(CaptureError::TableMissing { table: t.name.shown() }.into());
    }
    if let Some(k) = t.keycols.iter().find(|k| LOG_COLUMNS.contains(&k.as_str())) {
        return Err(CaptureError::ReservedKeyName {
            table: t.name.shown(),
            column: k.clone(),
        }
        .into());
    }
    let keytypes = log_key_types(c, t, &cols)?;
    let partitioned = discover::kind_of(c, &t.name)? == Some(discover::Kind::Partitioned);
    let rowlevel = use_row_triggers(c, &t.name, partitioned)?;
    let existing = c
        .query_opt(
            "SELECT id, keycols, keytypes, rowlevel, relid IS NOT NULL AND keynums IS NULL
               FROM capra.captured WHERE schemaname = $1 AND relname = $2",
            &[&t.name.schema, &t.name.name],
        )
        .ctx(|| format!("reading capture of {}", t.name.shown()))?
        .map(|r| Registered::from_row(&r, t))
        .transpose()?;
    let id: i32 = match existing {
        Some(old) => {
            let present = triggers_present(c, &t.name, old.id)?;
            if old.current(t, rowlevel) && present {
                refresh_in_place(c, t, &old, &keytypes)?;
                return Ok((old.id, false));
            }
            if old.current(t, old.rowlevel) && present {
                // Only the trigger kind changed (say, the table gained or
                // lost inheritance children): the log and function serve
                // both kinds, so the triggers are swapped in place.
                set_trigger_level(c, &t.name, old.id, rowlevel)?;
                refresh_in_place(c, t, &old, &keytypes)?;
                return Ok((old.id, false));
            }
            // Key columns or trigger kind changed: rebuild the log and the
            // triggers, but never while the log holds changes some sync has
            // not applied.
            let pending = pending_changes(c, t, &old)?;
            if pending > 0 {
                match on_key_change {
                    OnKeyChange::Refuse => {
                        return Err(CaptureError::KeyChangePending {
                            table: t.name.shown(),
                            pending,
                        }
                        .into())
                    }
                    OnKeyChange::Defer => return Ok((old.id, true)),
                }
            }
            drop_capture_objects(c, &t.name, old.id)?;
            c.execute(
                "UPDATE capra.captured SET keycols = $2, keytypes = $3, rowlevel = $4 WHERE id = $1",
                &[&old.id, &t.keycols, &keytypes, &rowlevel],
            )
            .ctx(|| "updating capture".into())?;
            old.id
        }
        None => c
            .query_one(
                "INSERT INTO capra.captured (schemaname, relname, keycols, keytypes, rowlevel) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&t.name.schema, &t.name.name, &t.keycols, &keytypes, &rowlevel],
            )
            .ctx(|| format!("registering capture of {}", t.name.shown()))?
            .col(0, "the captured id")?,
    };
    c.batch_execute(&capture_sql(t, id, &keytypes, rowlevel, partitioned))
        .ctx(|| format!("installing change capture on {}", t.name.shown()))?;
    // A rebuilt capture keeps its remembered partitions (moves since then
    // are logged); a new one starts remembering now.
    cover_partitions(c, id, &t.name, false, false)?;
    remember_key(c, id, &t.name, &t.keycols)?;
    Ok((id, false))
}

/// The change-log type of each key column of `t` (its live columns are
/// `cols`); a key column that is gone is an error saying what to do.
fn log_key_types(c: &mut impl GenericClient, t: &Target, cols: &[Column]) -> Result<Vec<String>> {
    let mut keytypes = Vec::new();
    for k in &t.keycols {
        let Some(col) = cols.iter().find(|c| &c.name == k) else {
            return Err(key_gone(c, t, cols, k).into());
        };
        keytypes.push(discover::log_type(&col.base_type));
    }
    Ok(keytypes)
}

/// Why key column `k` of `t` is missing: the DDL follower may know what it
/// became.
fn key_gone(c: &mut impl GenericClient, t: &Target, cols: &[Column], k: &str) -> CaptureError {
    let now: Option<Vec<String>> = c
        .query_opt(
            "SELECT keycols FROM capra.captured WHERE schemaname = $1 AND relname = $2 AND keynums IS NOT NULL",
            &[&t.name.schema, &t.name.name],
        )
        .ok()
        .flatten()
        .and_then(|r| r.col(0, "the key the DDL follower recorded").ok());
    match now.filter(|n| n.iter().all(|k| cols.iter().any(|c| &c.name == k))) {
        Some(now) => CaptureError::KeyRenamed {
            table: t.name.shown(),
            now,
        },
        None => CaptureError::KeyColumnGone {
            table: t.name.shown(),
            column: k.to_string(),
        },
    }
}

/// A table's row in `capra.captured` as [`capture_table`] reads it.
struct Registered {
    /// Captured id.
    id: i32,
    /// Key columns the log was built with.
    keycols: Vec<String>,
    /// Their change-log types.
    keytypes: Vec<String>,
    /// Whether every operation has row-level triggers.
    rowlevel: bool,
    /// Marked for full copies since the DDL follower lost the key.
    marked: bool,
}

impl Registered {
    fn from_row(r: &postgres::Row, t: &Target) -> Result<Self> {
        let q = format!("reading capture of {}", t.name.shown());
        Ok(Registered {
            id: r.col(0, &q)?,
            keycols: r.col(1, &q)?,
            keytypes: r.col(2, &q)?,
            rowlevel: r.col(3, &q)?,
            marked: r.col(4, &q)?,
        })
    }

    /// Whether the capture was built for this key and trigger kind. A
    /// marked one never is: rebuild even if the names look the same (a key
    /// column dropped and re-created under its old name).
    fn current(&self, t: &Target, rowlevel: bool) -> bool {
        !self.marked && self.keycols == t.keycols && self.rowlevel == rowlevel
    }
}

/// Keeps a capture that is already in place: follows a key column's type
/// change, the partitions and the key's column numbers.
fn refresh_in_place(c: &mut impl GenericClient, t: &Target, old: &Registered, keytypes: &[String]) -> Result<()> {
    let id = old.id;
    // Equal text needs no round trip; only differing names are
    // compared as types (the follower may have written another
    // spelling of the same type).
    let same_types: bool = old.keytypes == keytypes
        || c.query_one(
            "SELECT coalesce(bool_and(to_regtype(o) IS NOT DISTINCT FROM to_regtype(n)), true)
               FROM unnest($1::text[], $2::text[]) AS x(o, n)",
            &[&old.keytypes, &keytypes],
        )
        .ctx(|| "comparing key types".into())?
        .col(0, "whether the key types agree")?;
    if !same_types {
        refuse_foreign_casts(c, t, &old.keytypes, keytypes)?;
        // A key column changed type (int -> bigint, wider
        // varchar): follow it in place, no rebuild.
        let alters: Vec<String> = t
            .keycols
            .iter()
            .zip(keytypes)
            .map(|(k, ty)| format!("ALTER COLUMN {0} TYPE {ty} USING {0}::text::{ty}", quote_ident(k)))
            .collect();
        c.batch_execute(&format!("ALTER TABLE {} {}", delta_table(id), alters.join(", ")))
            .ctx(|| format!("following the key type change of {}", t.name.shown()))?;
        c.execute(
            "UPDATE capra.captured SET keytypes = $2 WHERE id = $1",
            &[&id, &keytypes],
        )
        .ctx(|| "recording the key types".into())?;
    }
    cover_partitions(c, id, &t.name, true, false)?;
    remember_key(c, id, &t.name, &t.keycols)
}

/// The change log is converted to new key types through text: a cast
/// between text and either type whose function another role (not a
/// superuser) wrote, and that runs as its caller, would run with capra's
/// rights. Refused instead (the DDL follower gives up on the key for the
/// same reason).
fn refuse_foreign_casts(c: &mut impl GenericClient, t: &Target, old: &[String], new: &[String]) -> Result<()> {
    const Q: &str = "looking for casts of the key types";
    let found = c
        .query_opt(
            "SELECT pg_catalog.format('the cast %s AS %s', k.castsource::pg_catalog.regtype, k.casttarget::pg_catalog.regtype),
                    r.rolname::pg_catalog.text
               FROM pg_catalog.unnest($1::pg_catalog.text[], $2::pg_catalog.text[]) AS x(o, n)
               JOIN pg_catalog.pg_cast k
                 ON (k.castsource OPERATOR(pg_catalog.=) pg_catalog.to_regtype(x.o) AND k.casttarget OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype)
                 OR (k.castsource OPERATOR(pg_catalog.=) 'pg_catalog.text'::pg_catalog.regtype AND k.casttarget OPERATOR(pg_catalog.=) pg_catalog.to_regtype(x.n))
               JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) k.castfunc
               JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) p.proowner
              WHERE NOT r.rolsuper AND NOT p.prosecdef LIMIT 1",
            &[&old, &new],
        )
        .ctx(|| Q.into())?;
    match found {
        None => Ok(()),
        Some(r) => Err(CaptureError::ForeignCast {
            table: t.name.shown(),
            cast: r.col(0, Q)?,
            owner: r.col(1, Q)?,
        }
        .into()),
    }
}

/// Locks the table, then counts the changes and truncations in its log
/// that some sync has not applied (0 when a pending full-copy mark covers
/// them). The lock is taken first, so no writer can add changes between
/// the count and a rebuild's drop.
fn pending_changes(c: &mut impl GenericClient, t: &Target, old: &Registered) -> Result<i64> {
    let id = old.id;
    c.batch_execute(&format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", t.name.sql()))
        .ctx(|| format!("locking {}", t.name.shown()))?;
    let log_exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&delta_table(id)])
        .ctx(|| "checking the change log".into())?
        .col(0, "whether the change log exists")?;
    // Pending TRUNCATEs count too: rebuilding drops them.
    let unapplied = "EXISTS (SELECT 1 FROM capra.consumer con
                      JOIN capra.consumer_table ct ON ct.installation = con.installation AND ct.sync = con.sync
                     WHERE ct.captured = $1 AND NOT txid_visible_in_snapshot(d.capra_txid, con.snapshot))";
    // A '*' mark (the DDL follower lost the key) asks for a full
    // copy; it was written after every change still in the logs
    // (the DDL waited for them), so that copy covers them all and
    // nothing is pending. Marks stay across the rebuild.
    let mark_pending: bool = c
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM capra.truncate_log d WHERE d.captured = $1 AND d.part = '*' AND {unapplied})"),
            &[&id],
        )
        .ctx(|| format!("reading the marks of {}", t.name.shown()))?
        .col(0, "whether a full-copy mark is pending")?;
    let mut pending: i64 = 0;
    if !old.marked && !mark_pending {
        pending += c
            .query_one(
                &format!("SELECT count(*) FROM capra.truncate_log d WHERE d.captured = $1 AND {unapplied}"),
                &[&id],
            )
            .ctx(|| format!("counting pending truncations of {}", t.name.shown()))?
            .col::<_, i64>(0, "the pending truncations")?;
        if log_exists {
            pending += c
                .query_one(
                    &format!("SELECT count(*) FROM {} d WHERE {unapplied}", delta_table(id)),
                    &[&id],
                )
                .ctx(|| format!("counting pending changes of {}", t.name.shown()))?
                .col::<_, i64>(0, "the pending changes")?;
        }
    }
    Ok(pending)
}

/// The change log, capture function and triggers of one table.
fn capture_sql(t: &Target, id: i32, keytypes: &[String], rowlevel: bool, partitioned: bool) -> String {
    let delta = delta_table(id);
    let coldefs: Vec<String> = t
        .keycols
        .iter()
        .zip(keytypes)
        .map(|(k, ty)| format!("{} {ty} NOT NULL", quote_ident(k)))
        .collect();
    let mut sql = format!(
        "CREATE TABLE {delta} (capra_txid bigint NOT NULL DEFAULT txid_current(), capra_ts timestamptz NOT NULL DEFAULT statement_timestamp(), {});\n\
         CREATE INDEX delta_{id}_txid ON {delta} (capra_txid);\n\
         COMMENT ON TABLE {delta} IS {};\n",
        coldefs.join(", "),
        sql_literal(&format!("capra change log of {}", t.name.human()))
    );
    sql.push_str(&function_sql(id, &t.name, &t.keycols));
    let tbl = t.name.sql();
    sql.push_str(&row_triggers_sql(&tbl, id, rowlevel, partitioned));
    sql.push_str(&format!(
        "CREATE TRIGGER capra_capture_t AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE PROCEDURE capra.capture_{id}();\n"
    ));
    sql
}

/// The INSERT, UPDATE and DELETE triggers of a table (`tbl`: its quoted
/// name): one row-level trigger for all three, or statement-level INSERT
/// and DELETE with transition tables beside a row-level UPDATE. No trigger
/// names a column (no column list, no WHEN on columns): that would stop
/// the user from changing a key column's type.
///
/// A partitioned table's row trigger is `capra_capture` (PostgreSQL clones
/// it, name and all, onto every partition); a plain table's is
/// `capra_capture_r`, so a partition captured by a sync of its own keeps
/// its trigger beside the clone of its captured parent's.
fn row_triggers_sql(tbl: &str, id: i32, rowlevel: bool, partitioned: bool) -> String {
    let func = format!("capra.capture_{id}");
    if rowlevel {
        let name = if partitioned {
            "capra_capture"
        } else {
            "capra_capture_r"
        };
        format!(
            "CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW EXECUTE PROCEDURE {func}();\n"
        )
    } else {
        format!(
            "CREATE TRIGGER capra_capture_i AFTER INSERT ON {tbl} REFERENCING NEW TABLE AS capra_new FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n\
             CREATE TRIGGER capra_capture_d AFTER DELETE ON {tbl} REFERENCING OLD TABLE AS capra_old FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n{}",
            update_trigger_sql(tbl, id)
        )
    }
}

/// A captured table still on statement triggers although it is now in an
/// inheritance tree (it joined without the DDL follower: capra's role is no
/// superuser, or the follower's switch failed).
pub struct Joined {
    /// Its captured id.
    pub id: i32,
    /// The table.
    pub table: QualName,
    /// Its log's key columns.
    pub keycols: Vec<String>,
}

/// The tables of `names` that joined an inheritance tree unswitched (see
/// [`Joined`]): one query, outside any transaction, as a run asks on every
/// start.
pub fn joined_trees(c: &mut impl GenericClient, names: &[QualName]) -> Result<Vec<Joined>> {
    let schemas: Vec<&str> = names.iter().map(|n| n.schema.as_str()).collect();
    let rels: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
    const Q: &str = "looking for captured tables that joined an inheritance tree";
    let exists: bool = c
        .query_one("SELECT pg_catalog.to_regclass('capra.captured') IS NOT NULL", &[])
        .ctx(|| Q.into())?
        .col(0, Q)?;
    if !exists {
        return Ok(Vec::new());
    }
    c.query(
        "SELECT c.id, c.schemaname, c.relname, c.keycols FROM capra.captured c
           JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) c.relid
          WHERE NOT c.rowlevel AND c.keynums IS NOT NULL AND r.relkind OPERATOR(pg_catalog.=) 'r'
            AND (c.schemaname, c.relname) IN (SELECT * FROM unnest($1::text[], $2::text[]))
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE c.relid IN (i.inhparent, i.inhrelid))",
        &[&schemas, &rels],
    )
    .ctx(|| Q.into())?
    .iter()
    .map(|r| {
        Ok(Joined {
            id: r.col(0, Q)?,
            table: QualName::new(r.col::<_, String>(1, Q)?, r.col::<_, String>(2, Q)?),
            keycols: r.col(3, Q)?,
        })
    })
    .collect()
}

/// Switches a table that joined a tree unswitched to row triggers. A
/// DELETE through a parent, or an INSERT routed from a partitioned parent,
/// may have gone uncaptured meanwhile, so the table is marked as partly
/// truncated (the next run deletes on the receivers every row whose key it
/// no longer has) and all its keys are logged (the next run copies every
/// row).
pub fn switch_joined(c: &mut impl GenericClient, j: &Joined) -> Result<()> {
    let (id, table) = (j.id, &j.table);
    set_trigger_level(c, table, id, true)?;
    let cols: Vec<String> = j.keycols.iter().map(|k| quote_ident(k)).collect();
    let cols = cols.join(", ");
    c.batch_execute(&format!(
        "INSERT INTO capra.truncate_log (captured, part) VALUES ({id}, {});
         INSERT INTO {} ({cols}) SELECT {cols} FROM ONLY {};",
        sql_literal(&table.human()),
        delta_table(id),
        table.sql()
    ))
    .ctx(|| format!("marking {} for a comparison of its keys", table.shown()))
}

/// Swaps a captured table's INSERT/UPDATE/DELETE triggers to the other
/// kind under a lock that keeps writers out meanwhile (no write goes
/// uncaptured, none is logged twice); the change log stays.
fn set_trigger_level(c: &mut impl GenericClient, table: &QualName, id: i32, rowlevel: bool) -> Result<()> {
    let tbl = table.sql();
    c.batch_execute(&format!("LOCK TABLE {tbl} IN SHARE ROW EXCLUSIVE MODE"))
        .ctx(|| format!("locking {}", table.shown()))?;
    let mut sql = String::new();
    for name in trigger_names(c, table, id)?.iter().filter(|n| *n != "capra_capture_t") {
        sql.push_str(&format!("DROP TRIGGER IF EXISTS {} ON {tbl};\n", quote_ident(name)));
    }
    // Only plain tables switch: a partitioned one is always row-level.
    sql.push_str(&row_triggers_sql(&tbl, id, rowlevel, false));
    c.batch_execute(&sql)
        .ctx(|| format!("switching the capture triggers of {}", table.shown()))?;
    c.execute(
        "UPDATE capra.captured SET rowlevel = $2 WHERE id = $1",
        &[&id, &rowlevel],
    )
    .ctx(|| "recording the trigger kind".into())?;
    tracing::info!(
        "Capture of {} now uses {} triggers",
        table.human(),
        if rowlevel { "row-level" } else { "statement-level" }
    );
    Ok(())
}

/// Records the table's oid and its key columns' numbers for the DDL
/// follower (see `capra.follow_ddl`).
fn remember_key(c: &mut impl GenericClient, id: i32, table: &QualName, keycols: &[String]) -> Result<()> {
    c.execute(
        "UPDATE capra.captured SET relid = to_regclass($2)::oid,
                keynums = (SELECT array_agg(a.attnum ORDER BY k.i) FROM unnest($3::text[]) WITH ORDINALITY AS k(name, i)
                             JOIN pg_attribute a ON a.attrelid = to_regclass($2) AND a.attname = k.name)
          WHERE id = $1",
        &[&id, &table.sql(), &keycols],
    )
    .ctx(|| format!("recording the key of {}", table.shown()))?;
    Ok(())
}

/// Keeps a partitioned table's partitions covered: each gets a TRUNCATE
/// trigger of its own (row triggers reach partitions on their own, TRUNCATE
/// triggers do not), and the partition list is remembered by oid. Once a
/// list is remembered (`baseline`), a partition attached since the last
/// look has its keys logged as changes (its rows appeared in the table
/// without any write), one detached has its keys logged too (its rows left
/// the table) or, if it was dropped, a truncation of it. Foreign-table
/// partitions take no trigger and are skipped. Returns how many partitions
/// came or went.
pub fn cover_partitions(
    c: &mut impl GenericClient,
    id: i32,
    table: &QualName,
    baseline: bool,
    triggers_only: bool,
) -> Result<usize> {
    if discover::kind_of(c, table)? != Some(discover::Kind::Partitioned) {
        return Ok(0);
    }
    let trigger = format!("capra_part_t_{id}");
    let now = live_partitions(c, id, table, &trigger)?;
    let known = known_partitions(c, id)?;
    let keycols: Vec<String> = c
        .query_one("SELECT keycols FROM capra.captured WHERE id = $1", &[&id])
        .ctx(|| "reading capture".into())?
        .col(0, "reading capture")?;
    let collist: Vec<String> = keycols.iter().map(|k| quote_ident(k)).collect();
    let mut f = PartitionFollower {
        id,
        collist: collist.join(", "),
        log_moves: baseline || !known.is_empty(),
        sql: String::new(),
        moved: 0,
    };
    for p in &now {
        if !p.has_trigger {
            f.sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {trigger} ON {0}; CREATE TRIGGER {trigger} AFTER TRUNCATE ON {0} FOR EACH STATEMENT EXECUTE PROCEDURE capra.capture_{id}();\n",
                p.name.sql()
            ));
        }
        if triggers_only {
            continue;
        }
        if !known.iter().any(|k| k.is(p)) {
            f.arrived(c, p)?;
        }
    }
    for k in known.iter().filter(|_| !triggers_only) {
        if now.iter().any(|p| k.is(p)) {
            continue;
        }
        f.left(c, k, &now)?;
    }
    if !f.sql.is_empty() {
        c.batch_execute(&f.sql)
            .ctx(|| format!("following the partitions of {}", table.shown()))?;
    }
    Ok(f.moved)
}

/// A partition of a captured table as it is now.
struct LivePartition {
    /// Schema and name.
    name: QualName,
    /// Its oid.
    oid: u32,
    /// Whether it has capra's TRUNCATE trigger.
    has_trigger: bool,
}

/// A partition as capra last saw it (`capra.captured_part`).
struct KnownPartition {
    /// Schema and name then.
    name: QualName,
    /// Its oid then (None in rows from before version 2).
    relid: Option<u32>,
}

impl KnownPartition {
    /// Whether `p` is this partition: by oid, or by name for rows from
    /// before version 2, which have no oid.
    fn is(&self, p: &LivePartition) -> bool {
        match self.relid {
            Some(o) => o == p.oid,
            None => self.name == p.name,
        }
    }
}

/// Every partition (at any depth) of `table` that is not a foreign table,
/// with whether it has capture `id`'s TRUNCATE trigger `trigger`.
fn live_partitions(c: &mut impl GenericClient, id: i32, table: &QualName, trigger: &str) -> Result<Vec<LivePartition>> {
    let q = format!("reading the partitions of {}", table.shown());
    c.query(
        "WITH RECURSIVE tree(oid) AS (
             SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = $1::text::regclass
             UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid)
         SELECT n.nspname::text, c.relname::text, c.oid,
                EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND g.tgname = $2
                           AND g.tgfoid = to_regprocedure($3))
           FROM tree JOIN pg_class c ON c.oid = tree.oid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind <> 'f'",
        &[&table.sql(), &trigger, &format!("capra.capture_{id}()")],
    )
    .ctx(|| q.clone())?
    .iter()
    .map(|r| {
        Ok(LivePartition {
            name: QualName::new(r.col::<_, String>(0, &q)?, r.col::<_, String>(1, &q)?),
            oid: r.col(2, &q)?,
            has_trigger: r.col(3, &q)?,
        })
    })
    .collect()
}

/// The partitions of capture `id` as last seen.
fn known_partitions(c: &mut impl GenericClient, id: i32) -> Result<Vec<KnownPartition>> {
    const Q: &str = "reading known partitions";
    c.query(
        "SELECT schemaname, relname, relid FROM capra.captured_part WHERE captured = $1",
        &[&id],
    )
    .ctx(|| Q.into())?
    .iter()
    .map(|r| {
        Ok(KnownPartition {
            name: QualName::new(r.col::<_, String>(0, Q)?, r.col::<_, String>(1, Q)?),
            relid: r.col(2, Q)?,
        })
    })
    .collect()
}

/// What [`cover_partitions`] writes for the partitions that came or went.
struct PartitionFollower {
    /// Captured id of the partitioned table.
    id: i32,
    /// Its key columns, quoted, comma-separated.
    collist: String,
    /// Whether moves are logged (a list was remembered before).
    log_moves: bool,
    /// Statements to run at the end.
    sql: String,
    /// Partitions that came or went.
    moved: usize,
}

impl PartitionFollower {
    /// A partition attached since the last look: its keys are logged
    /// (once a list is remembered) and it is remembered.
    fn arrived(&mut self, c: &mut impl GenericClient, p: &LivePartition) -> Result<()> {
        let (id, collist) = (self.id, &self.collist);
        if self.log_moves {
            self.sql.push_str(&format!(
                "INSERT INTO {} ({collist}) SELECT {collist} FROM {};\n",
                delta_table(id),
                p.name.sql()
            ));
            self.moved += 1;
        }
        c.execute(
            "INSERT INTO capra.captured_part (captured, schemaname, relname, relid) VALUES ($1, $2, $3, $4)
             ON CONFLICT (captured, schemaname, relname) DO UPDATE SET relid = EXCLUDED.relid",
            &[&id, &p.name.schema, &p.name.name, &p.oid],
        )
        .ctx(|| "recording a partition".into())?;
        Ok(())
    }

    /// A remembered partition no longer in the table: detached (its keys
    /// are logged) or dropped (a truncation of it is logged), then
    /// forgotten unless a new partition took its name.
    fn left(&mut self, c: &mut impl GenericClient, k: &KnownPartition, now: &[LivePartition]) -> Result<()> {
        let (id, collist) = (self.id, &self.collist);
        // Replaced by a new partition of the same name: its row was updated
        // above, and the old one's rows are gone like a dropped one's.
        let part = &k.name;
        let still_there = match k.relid {
            Some(o) => c
                .query_one("SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = $1)", &[&o])
                .ctx(|| "looking for a partition".into())?
                .col::<_, bool>(0, "looking for a partition")?,
            None => discover::kind_of(c, part)?.is_some(),
        };
        if self.log_moves {
            if still_there {
                // Detached: its rows left the table.
                let rel = match k.relid {
                    Some(o) => c
                        .query_one("SELECT $1::oid::regclass::text", &[&o])
                        .ctx(|| "naming a partition".into())?
                        .col::<_, String>(0, "naming a partition")?,
                    None => part.sql(),
                };
                self.sql.push_str(&format!(
                    "INSERT INTO {} ({collist}) SELECT {collist} FROM {rel};\n",
                    delta_table(id)
                ));
            } else {
                // Dropped: replayed like a TRUNCATE of that partition.
                self.sql.push_str(&format!(
                    "INSERT INTO capra.truncate_log (captured, part) VALUES ({id}, {});\n",
                    sql_literal(&part.human())
                ));
            }
            self.moved += 1;
        }
        if !now.iter().any(|p| &p.name == part) {
            c.execute(
                "DELETE FROM capra.captured_part WHERE captured = $1 AND schemaname = $2 AND relname = $3",
                &[&id, &part.schema, &part.name],
            )
            .ctx(|| "forgetting a partition".into())?;
        }
        Ok(())
    }
}
/// The capture function of one table, `capture_N()`: it logs the keys a
/// statement touched (NEW for INSERT, OLD for DELETE, both for UPDATE so a
/// key change, even one made by a BEFORE trigger, logs the old key too),
/// from row triggers or from statement triggers' transition tables, and
/// truncations. One function serves both trigger kinds, so a table's
/// triggers can change kind without touching its log.
///
/// It runs as its owner (SECURITY DEFINER), so writers need no rights on
/// capra's tables and cannot forge change rows, but without a `SET
/// search_path` (which costs 12% of pgbench throughput): instead nothing in
/// it is looked up through the caller's search_path. Tables are
/// schema-qualified, the one operator is `OPERATOR(pg_catalog.=)` on text,
/// keys are compared by `pg_catalog.record_image_eq` (no type's own `=` is
/// looked up), there are no casts, functions are `pg_catalog.`-qualified,
/// and column defaults were bound when the log table was created.
fn function_sql(id: i32, table: &QualName, keycols: &[String]) -> String {
    let delta = delta_table(id);
    // A TRUNCATE of the table itself, or of one of its partitions (which
    // carry the same trigger), named so a run empties only that part.
    // Names are compared as text (no lookup that a rename could break).
    let truncate = format!(
        "INSERT INTO capra.truncate_log (captured, part) VALUES ({id}, CASE WHEN TG_TABLE_SCHEMA OPERATOR(pg_catalog.=) {schema} AND TG_TABLE_NAME OPERATOR(pg_catalog.=) {name} THEN NULL ELSE pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME) END);",
        schema = sql_literal(&table.schema),
        name = sql_literal(&table.name)
    );
    let qcols: Vec<String> = keycols.iter().map(|k| quote_ident(k)).collect();
    let collist = qcols.join(", ");
    let new = qcols.iter().map(|q| format!("NEW.{q}")).collect::<Vec<_>>().join(", ");
    let old = qcols.iter().map(|q| format!("OLD.{q}")).collect::<Vec<_>>().join(", ");
    // The old key is logged unless it is byte for byte the new one
    // (record image equality: exact for every type, and no operator or
    // type looked up by name). The UPDATE trigger is always row-level.
    let body = format!(
        "IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        INSERT INTO {delta} ({collist}) VALUES ({new});
        IF NOT pg_catalog.record_image_eq(ROW({old}), ROW({new})) THEN
            INSERT INTO {delta} ({collist}) VALUES ({old});
        END IF;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'TRUNCATE' THEN
        {truncate}
    ELSIF TG_LEVEL OPERATOR(pg_catalog.=) 'ROW' THEN
        IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
            INSERT INTO {delta} ({collist}) VALUES ({new});
        ELSE
            INSERT INTO {delta} ({collist}) VALUES ({old});
        END IF;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO {delta} ({collist}) SELECT {collist} FROM capra_new;
    ELSE
        INSERT INTO {delta} ({collist}) SELECT {collist} FROM capra_old;
    END IF;"
    );
    let text = format!("BEGIN\n    {body}\n    RETURN NULL;\nEND\n");
    // Names of columns and tables are inside the body: pick a dollar
    // quote they do not contain.
    let mut tag = String::from("$f$");
    let mut n = 0;
    while text.contains(&tag) {
        n += 1;
        tag = format!("$f{n}$");
    }
    format!(
        "CREATE OR REPLACE FUNCTION capra.capture_{id}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS {tag}\n{text}{tag};\n\
         REVOKE ALL ON FUNCTION capra.capture_{id}() FROM PUBLIC;\n"
    )
}

/// The row-level UPDATE trigger of a table (`table`: its quoted name) with
/// statement-level INSERT and DELETE triggers.
fn update_trigger_sql(table: &str, id: i32) -> String {
    format!(
        "CREATE TRIGGER capra_capture_u AFTER UPDATE ON {table} FOR EACH ROW EXECUTE PROCEDURE capra.capture_{id}();\n"
    )
}

/// Notes, for every sync that reads the change log of captured table `id`
/// (not only the one writing), that this transaction logged keys again:
/// their change time is the one logged, not this transaction's commit.
/// A run logging keys for its next run and the Bucardo import handing
/// over Bucardo's both log this way.
pub fn note_relogged(c: &mut impl GenericClient, id: i32, db: &str) -> Result<()> {
    c.execute(
        "INSERT INTO capra.applied (installation, sync, txid, kind)
         SELECT DISTINCT ct.installation, ct.sync, pg_catalog.txid_current(), 'r' FROM capra.consumer_table ct
          WHERE ct.captured OPERATOR(pg_catalog.=) $1
         ON CONFLICT DO NOTHING",
        &[&id],
    )
    .ctx(|| format!("noting keys logged again on \"{db}\""))?;
    Ok(())
}

/// A SQL string literal that means the same whatever
/// standard_conforming_strings is (an E'' string with backslashes doubled).
pub fn sql_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Capture `id`'s own triggers on `table` (not a clone of a captured
/// parent's, which calls the parent's function).
fn trigger_names(c: &mut impl GenericClient, table: &QualName, id: i32) -> Result<Vec<String>> {
    let q = format!("reading triggers of {}", table.shown());
    c.query(
        "SELECT t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND NOT t.tgisinternal AND t.tgname = ANY($3)
                AND t.tgfoid = pg_catalog.to_regprocedure($4)",
        &[&table.schema, &table.name, &TRIGGERS, &format!("capra.capture_{id}()")],
    )
    .ctx(|| q.clone())?
    .iter()
    .map(|r| r.col(0, &q))
    .collect()
}

fn triggers_present(c: &mut impl GenericClient, table: &QualName, id: i32) -> Result<bool> {
    let names = trigger_names(c, table, id)?;
    let has_log: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&delta_table(id)])
        .ctx(|| "checking the change log".into())?
        .col(0, "whether the change log exists")?;
    Ok(has_log && names.iter().any(|n| n == "capra_capture_t"))
}

/// Drops a table's triggers, function and change log (not its registry row).
fn drop_capture_objects(c: &mut impl GenericClient, table: &QualName, id: i32) -> Result<()> {
    let exists: bool = c
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[&table.schema, &table.name],
        )
        .ctx(|| "checking the table".into())?
        .col(0, "whether the table exists")?;
    let mut sql = String::new();
    if exists {
        for t in trigger_names(c, table, id)? {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {} ON {};\n",
                quote_ident(&t),
                table.sql()
            ));
        }
    }
    // The TRUNCATE triggers on partitions call the same function.
    let q = format!("reading the partition triggers of {}", table.shown());
    for r in c
        .query(
            "SELECT g.tgrelid::regclass::text, g.tgname::text FROM pg_trigger g
              WHERE g.tgfoid = to_regprocedure($1) AND NOT g.tgisinternal
                AND g.tgrelid <> coalesce(to_regclass($2), 0) AND g.tgtype & 32 <> 0",
            &[&format!("capra.capture_{id}()"), &table.sql()],
        )
        .ctx(|| q.clone())?
    {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {} ON {};\n",
            quote_ident(&r.col::<_, String>(1, &q)?),
            r.col::<_, String>(0, &q)?
        ));
    }
    sql.push_str(&format!(
        "DROP FUNCTION IF EXISTS capra.capture_{id}();\nDROP TABLE IF EXISTS {};\nDELETE FROM capra.truncate_log WHERE captured = {id} AND part IS DISTINCT FROM '*';\n",
        delta_table(id)
    ));
    c.batch_execute(&sql)
        .ctx(|| format!("removing change capture from {}", table.shown()))
}

/// Makes a sync's consumer on this source cover `tables` (capturing each;
/// exactly those for a catalog command), creating the consumer at the
/// current snapshot if it is new.
pub fn attach_consumer(
    c: &mut impl GenericClient,
    installation: &str,
    sync: &str,
    tables: &[Target],
    on_key_change: OnKeyChange,
) -> Result<Attached> {
    // Installing triggers takes locks on the user's tables; behind a long
    // transaction, waiting would stall the application's writes queued
    // behind capra. Give up instead (the command or the daemon retries).
    c.batch_execute("SET LOCAL lock_timeout = '5s'")
        .ctx(|| "setting a lock timeout".into())?;
    ensure_base(c)?;
    // One round trip finds the tables whose capture is already exactly in
    // place for this sync (what a daemon start or reload finds almost
    // always); only the others take the table-by-table path.
    let known = intact(c, installation, sync, tables)?;
    let mut ids = Vec::new();
    let mut deferred = Vec::new();
    let mut touched = Vec::new();
    for (t, k) in tables.iter().zip(&known) {
        if let Some(id) = k {
            ids.push(*id);
            continue;
        }
        let (id, waits) = capture_table(c, t, on_key_change)?;
        ids.push(id);
        touched.push(ids.len() - 1);
        if waits {
            deferred.push(t.name.human());
        }
    }
    // The snapshot is taken after the triggers exist (and their locks are
    // held), so every change committed from here on is in the log.
    c.execute(
        "INSERT INTO capra.consumer (installation, sync, snapshot) VALUES ($1, $2, txid_current_snapshot())
         ON CONFLICT (installation, sync) DO NOTHING",
        &[&installation, &sync],
    )
    .ctx(|| format!("registering sync \"{sync}\" as a consumer"))?;
    if on_key_change == OnKeyChange::Refuse {
        // Only a catalog command, which holds the catalog edit that removed
        // a table, takes it out of capture. The daemon may hold an older
        // plan than the catalog, and must never undo what a newer edit
        // installed.
        c.execute(
            "DELETE FROM capra.consumer_table WHERE installation = $1 AND sync = $2 AND NOT (captured = ANY($3))",
            &[&installation, &sync, &ids],
        )
        .ctx(|| "updating the consumer's tables".into())?;
    }
    for i in touched {
        let (t, id) = (&tables[i], &ids[i]);
        c.execute(
            "INSERT INTO capra.consumer_table (installation, sync, captured, autokick) VALUES ($1, $2, $3, $4)
             ON CONFLICT (installation, sync, captured) DO UPDATE SET autokick = EXCLUDED.autokick",
            &[&installation, &sync, id, &t.autokick],
        )
        .ctx(|| "updating the consumer's tables".into())?;
    }
    cleanup(c)?;
    Ok(Attached { ids, deferred })
}

/// Per table, its captured id when everything [`capture_table`] and
/// [`attach_consumer`] would do for it is already done: the registry row
/// with this key (not marked for full copies), the key remembered at the
/// table's current oid and column numbers, a change log whose key columns
/// have the types capture would give them, every trigger in the shape this
/// server takes, and this sync's consumer row with its autokick. Anything
/// else (and every partitioned table, whose partitions need following)
/// answers None and takes the full path.
fn intact(c: &mut impl GenericClient, installation: &str, sync: &str, tables: &[Target]) -> Result<Vec<Option<i32>>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let forced = std::env::var("CAPRA_ROW_TRIGGERS").as_deref() == Ok("1");
    let list: Vec<serde_json::Value> = tables
        .iter()
        .map(|t| serde_json::json!({"s": t.name.schema, "r": t.name.name, "k": t.keycols, "a": t.autokick}))
        .collect();
    let rows = c
        .query(
            "SELECT x.i::int, cap.id,
                    cap.keycols = ARRAY(SELECT jsonb_array_elements_text(x.t->'k'))
                AND NOT (cap.relid IS NOT NULL AND cap.keynums IS NULL)
                AND rel.oid IS NOT NULL AND rel.relkind = 'r' AND cap.relid = rel.oid
                AND cap.keynums = (SELECT array_agg(a.attnum ORDER BY k.n) FROM unnest(cap.keycols) WITH ORDINALITY AS k(name, n)
                                     JOIN pg_catalog.pg_attribute a ON a.attrelid = rel.oid AND a.attname = k.name AND NOT a.attisdropped)
                AND (SELECT count(*) FROM unnest(cap.keycols) AS k(name)
                       JOIN pg_catalog.pg_attribute s ON s.attrelid = rel.oid AND s.attname = k.name AND NOT s.attisdropped
                       JOIN pg_catalog.pg_attribute d ON d.attrelid = to_regclass('capra.delta_' || cap.id) AND d.attname = k.name
                      WHERE d.atttypid = CASE WHEN s.atttypid IN (21, 23) THEN 20 ELSE s.atttypid END) = cardinality(cap.keycols)
                AND cap.rowlevel = (current_setting('server_version_num')::int < 100000 OR $4
                                    OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE rel.oid IN (i.inhparent, i.inhrelid)))
                AND (SELECT count(*) FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = rel.oid AND NOT tg.tgisinternal
                        AND tg.tgfoid = pg_catalog.to_regprocedure('capra.capture_' || cap.id || '()')
                        AND (tg.tgname, tg.tgtype & 1 = 1) IN (('capra_capture_t', false), ('capra_capture', true), ('capra_capture_r', true),
                                                               ('capra_capture_i', false), ('capra_capture_u', true), ('capra_capture_d', false)))
                    = CASE WHEN cap.rowlevel THEN 2 ELSE 4 END
                AND EXISTS (SELECT 1 FROM capra.consumer_table ct WHERE ct.installation = $2 AND ct.sync = $3
                               AND ct.captured = cap.id AND ct.autokick = (x.t->>'a')::boolean)
               FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS x(t, i)
               LEFT JOIN capra.captured cap ON cap.schemaname = x.t->>'s' AND cap.relname = x.t->>'r'
               LEFT JOIN pg_catalog.pg_class rel ON rel.oid = to_regclass(format('%I.%I', x.t->>'s', x.t->>'r'))
              ORDER BY x.i",
            &[&serde_json::Value::Array(list), &installation, &sync, &forced],
        )
        .ctx(|| "checking change capture".into())?;
    const Q: &str = "checking change capture";
    rows.iter()
        .map(|r| {
            let ok: Option<bool> = r.col(2, Q)?;
            if ok == Some(true) {
                r.col::<_, Option<i32>>(1, Q)
            } else {
                Ok(None)
            }
        })
        .collect()
}

/// What [`attach_consumer`] did.
#[derive(Debug, Default)]
pub struct Attached {
    /// Captured ids, in the order of the tables given.
    pub ids: Vec<i32>,
    /// Tables whose key change waits until their log is drained.
    pub deferred: Vec<String>,
}

/// Takes tables out of a sync's consumer (the daemon, for tables a run
/// found and the catalog, read after that run, does not have), dropping
/// capture nothing else needs.
pub fn drop_from_consumer(c: &mut impl GenericClient, installation: &str, sync: &str, ids: &[i32]) -> Result<()> {
    c.execute(
        "DELETE FROM capra.consumer_table WHERE installation = $1 AND sync = $2 AND captured = ANY($3)",
        &[&installation, &sync, &ids],
    )
    .ctx(|| "updating the consumer's tables".into())?;
    cleanup(c)
}

/// Removes a sync's consumer from this source and whatever capture nothing
/// else needs; drops the whole `capra` schema when it is left empty.
pub fn detach_consumer(c: &mut impl GenericClient, installation: &str, sync: &str) -> Result<()> {
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.consumer') IS NOT NULL", &[])
        .ctx(|| "looking for capra's capture schema".into())?
        .col(0, "whether capra's capture schema exists")?;
    if !exists {
        return Ok(());
    }
    c.execute(
        "DELETE FROM capra.consumer WHERE installation = $1 AND sync = $2",
        &[&installation, &sync],
    )
    .ctx(|| format!("removing sync \"{sync}\" as a consumer"))?;
    cleanup(c)
}

/// Drops capture of tables no consumer uses, and the schema when nothing
/// is left.
fn cleanup(c: &mut impl GenericClient) -> Result<()> {
    const Q: &str = "reading captured tables";
    let rows = c
        .query(
            "SELECT cap.id, cap.schemaname, cap.relname,
                    EXISTS (SELECT 1 FROM capra.consumer_table ct WHERE ct.captured = cap.id)
               FROM capra.captured cap ORDER BY cap.id",
            &[],
        )
        .ctx(|| Q.into())?;
    let mut left = 0;
    for r in rows {
        let id: i32 = r.col(0, Q)?;
        let name = QualName::new(r.col::<_, String>(1, Q)?, r.col::<_, String>(2, Q)?);
        if r.col::<_, bool>(3, Q)? || !still_unused(c, id)? {
            left += 1;
            continue;
        }
        drop_capture_objects(c, &name, id)?;
        c.execute("DELETE FROM capra.captured WHERE id = $1", &[&id])
            .ctx(|| "unregistering capture".into())?;
    }
    let consumers: i64 = c
        .query_one("SELECT count(*) FROM capra.consumer", &[])
        .ctx(|| "counting consumers".into())?
        .col(0, "counting consumers")?;
    if left == 0 && consumers == 0 {
        drop_base(c)?;
    }
    Ok(())
}

/// Locks a captured table's registry row, then looks again whether any
/// consumer uses it: a concurrent attach of another sync to this table
/// either committed its consumer row (seen now, so the capture stays) or
/// waits on this lock and then fails cleanly instead of losing its capture.
fn still_unused(c: &mut impl GenericClient, id: i32) -> Result<bool> {
    Ok(
        c.query_opt("SELECT 1 FROM capra.captured WHERE id = $1 FOR UPDATE", &[&id])
            .ctx(|| "locking a captured table".into())?
            .is_some()
            && !c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM capra.consumer_table WHERE captured = $1)",
                    &[&id],
                )
                .ctx(|| "checking the consumers of a captured table".into())?
                .col::<_, bool>(0, "checking the consumers of a captured table")?,
    )
}

/// Drops capra's own shared objects (the fence too: a leader that still
/// writes here finds it gone, which refuses the write, and raises it
/// again before its next run); the schema goes too unless someone
/// else put something in it.
fn drop_base(c: &mut impl GenericClient) -> Result<()> {
    c.batch_execute(
        "DROP EVENT TRIGGER IF EXISTS capra_follow_ddl;
         DROP TABLE IF EXISTS capra.applied, capra.consumer_table, capra.consumer, capra.truncate_log, capra.captured_part, capra.captured, capra.capture_meta, capra.fence;
         DROP FUNCTION IF EXISTS capra.kick(), capra.follow_ddl();",
    )
    .ctx(|| "removing capra's capture tables".into())?;
    drop_schema_if_empty(c)
}

/// Drops the `capra` schema unless something is left in it (someone
/// else's object, or another part of capra's).
pub(super) fn drop_schema_if_empty(c: &mut impl GenericClient) -> Result<()> {
    let others: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'capra'))
                  + (SELECT count(*) FROM pg_proc WHERE pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'capra'))
                  + (SELECT count(*) FROM pg_type WHERE typnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'capra') AND typtype <> 'c')",
            &[],
        )
        .ctx(|| "checking the capra schema".into())?
        .col(0, "checking the capra schema")?;
    if others == 0 {
        c.batch_execute("DROP SCHEMA capra")
            .ctx(|| "removing the capra schema".into())?;
    }
    Ok(())
}
