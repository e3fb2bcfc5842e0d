//! The objects capra keeps in each source database, in its own `capra`
//! schema, and nothing else:
//!
//! - `capra.captured`: one row per captured table; its change log is
//!   `capra.delta_<id>` (named by id, so two tables can never collide the way
//!   Bucardo's `a_b.c` / `a.b_c` do), holding the changed key, the writing
//!   transaction's `txid_current()` and the change time.
//! - per table, one PL/pgSQL function and statement-level triggers with
//!   transition tables (PostgreSQL 10+), so a 100k-row UPDATE logs its keys
//!   in one `INSERT ... SELECT`; an UPDATE reads only the NEW rows, and a
//!   key change (rare) is caught by a row trigger whose `WHEN (OLD.key IS
//!   DISTINCT FROM NEW.key)` runs in C, so ordinary updates never pay for
//!   it. Row-level triggers on older servers. A TRUNCATE trigger writes
//!   `capra.truncate_log`. Triggers fire only in the `origin` replication
//!   role, so rows capra itself applies are not logged again (the loop
//!   prevention multi-master relies on). The functions run as the writing
//!   role (no SECURITY DEFINER switch on every statement): capra grants
//!   INSERT on its own log tables instead.
//! - `capra.consumer`: per (installation, sync), the `txid_snapshot` up to
//!   which that sync has applied this source's changes. A run reads in one
//!   REPEATABLE READ snapshot `cur` and takes exactly the rows whose txid is
//!   visible in `cur` but not in the consumer's snapshot, then stores `cur`:
//!   a transaction that started early and commits late is in `cur`'s
//!   in-progress list, so it is picked up by the next run, once (PgQ's rule).
//! - the kick: `pg_notify('capra', '')` at the end of the capture function
//!   while some autokick sync uses the table (one queue entry per writing
//!   transaction, whatever it touched; the daemon then kicks that source's
//!   autokick syncs).

use postgres::GenericClient;

use super::discover;
use crate::error::{Context, Error, Result};
use crate::pg::ident::{quote_ident, QualName};

/// Version of the source-side objects; bumped when their shape changes.
pub const CAPTURE_VERSION: i32 = 1;

/// NOTIFY channel the kick trigger uses.
pub const KICK_CHANNEL: &str = "capra";

const BASE_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS capra;
COMMENT ON SCHEMA capra IS 'capra replication: change capture (remove with capra remove sync ...)';
GRANT USAGE ON SCHEMA capra TO PUBLIC;
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
    kick boolean NOT NULL DEFAULT false,
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
    txid bigint NOT NULL DEFAULT txid_current(),
    ts timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS truncate_log_txid ON capra.truncate_log (txid);
GRANT INSERT ON capra.truncate_log TO PUBLIC;
CREATE OR REPLACE FUNCTION capra.kick() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_catalog.pg_notify('capra', '');
    RETURN NULL;
END
$f$;
"#;

/// A table to capture: its name and replication key.
#[derive(Clone, Debug)]
pub struct Target {
    /// Schema and name.
    pub name: QualName,
    /// Key columns.
    pub keycols: Vec<String>,
    /// Whether any autokick sync uses it (installs the kick trigger).
    pub autokick: bool,
}

/// Creates the shared objects if missing and checks their version.
pub fn ensure_base(c: &mut impl GenericClient) -> Result<()> {
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.capture_meta') IS NOT NULL", &[])
        .ctx(|| "looking for capra's capture schema".into())?
        .get(0);
    if exists {
        let v: Option<i32> = c
            .query_opt("SELECT version FROM capra.capture_meta", &[])
            .ctx(|| "reading capture version".into())?
            .map(|r| r.get(0));
        if let Some(v) = v {
            if v > CAPTURE_VERSION {
                return Err(Error::Rejected(format!(
                    "capra's change capture in this database is version {v}, newer than this capra ({CAPTURE_VERSION}); upgrade capra"
                )));
            }
            if v == CAPTURE_VERSION {
                return Ok(());
            }
        }
    }
    c.batch_execute(BASE_SQL)
        .ctx(|| "creating capra's capture schema".into())?;
    c.execute(
        "INSERT INTO capra.capture_meta (version) VALUES ($1) ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
        &[&CAPTURE_VERSION],
    )
    .ctx(|| "recording the capture version".into())?;
    Ok(())
}

/// The delta table of a captured id.
pub fn delta_table(id: i32) -> String {
    format!("capra.delta_{id}")
}

/// Whether this server should use row-level triggers (no transition tables
/// before PostgreSQL 10; `CAPRA_ROW_TRIGGERS=1` forces them, for testing the
/// path old servers take).
fn use_row_triggers(c: &mut impl GenericClient) -> Result<bool> {
    if std::env::var("CAPRA_ROW_TRIGGERS").as_deref() == Ok("1") {
        return Ok(true);
    }
    Ok(discover::server_version(c)? < 100000)
}

/// Installs (or refreshes) capture for one table; returns its captured id.
pub fn capture_table(c: &mut impl GenericClient, t: &Target) -> Result<i32> {
    let cols = discover::columns(c, &t.name)?;
    if cols.is_empty() {
        return Err(Error::Rejected(format!(
            "table {} does not exist in the source database; create it or remove it from the relgroup",
            t.name.human()
        )));
    }
    let mut keytypes = Vec::new();
    for k in &t.keycols {
        let col = cols.iter().find(|c| &c.name == k).ok_or_else(|| {
            Error::Rejected(format!(
                "key column \"{k}\" of table {} no longer exists in the source database; re-add the table to refresh its key",
                t.name.human()
            ))
        })?;
        keytypes.push(col.type_name.clone());
    }
    let rowlevel = use_row_triggers(c)?;
    let existing = c
        .query_opt(
            "SELECT id, keycols, keytypes, rowlevel FROM capra.captured WHERE schemaname = $1 AND relname = $2",
            &[&t.name.schema, &t.name.name],
        )
        .ctx(|| format!("reading capture of {}", t.name.human()))?;
    let id: i32 = match existing {
        Some(r) => {
            let id: i32 = r.get(0);
            let same = r.get::<_, Vec<String>>(1) == t.keycols
                && r.get::<_, Vec<String>>(2) == keytypes
                && r.get::<_, bool>(3) == rowlevel;
            if same && triggers_present(c, &t.name, id)? {
                set_kick(c, &t.name, id, t.autokick)?;
                return Ok(id);
            }
            // Key or trigger kind changed: rebuild the log table and
            // triggers, but never while it holds changes not yet applied.
            let log_exists: bool = c
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&delta_table(id)])
                .ctx(|| "checking the change log".into())?
                .get(0);
            let pending: i64 = if log_exists {
                c.query_one(
                    &format!(
                        "SELECT count(*) FROM {} d WHERE EXISTS (
                            SELECT 1 FROM capra.consumer con
                              JOIN capra.consumer_table ct ON ct.installation = con.installation AND ct.sync = con.sync
                             WHERE ct.captured = $1 AND NOT txid_visible_in_snapshot(d.txid, con.snapshot))",
                        delta_table(id)
                    ),
                    &[&id],
                )
                .ctx(|| format!("counting pending changes of {}", t.name.human()))?
                .get(0)
            } else {
                0
            };
            if pending > 0 {
                return Err(Error::Rejected(format!(
                    "the replication key of {} changed, but its change log still holds {pending} change(s) not yet applied by every sync; let them replicate first (capra kick SYNC 60), then try again",
                    t.name.human()
                )));
            }
            drop_capture_objects(c, &t.name, id)?;
            c.execute(
                "UPDATE capra.captured SET keycols = $2, keytypes = $3, rowlevel = $4 WHERE id = $1",
                &[&id, &t.keycols, &keytypes, &rowlevel],
            )
            .ctx(|| "updating capture".into())?;
            id
        }
        None => c
            .query_one(
                "INSERT INTO capra.captured (schemaname, relname, keycols, keytypes, rowlevel) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&t.name.schema, &t.name.name, &t.keycols, &keytypes, &rowlevel],
            )
            .ctx(|| format!("registering capture of {}", t.name.human()))?
            .get(0),
    };
    let delta = delta_table(id);
    let coldefs: Vec<String> = t
        .keycols
        .iter()
        .zip(&keytypes)
        .map(|(k, ty)| format!("{} {ty} NOT NULL", quote_ident(k)))
        .collect();
    let mut sql = format!(
        "CREATE TABLE {delta} (txid bigint NOT NULL DEFAULT txid_current(), ts timestamptz NOT NULL DEFAULT statement_timestamp(), {});\n\
         CREATE INDEX delta_{id}_txid ON {delta} (txid);\n\
         GRANT INSERT ON {delta} TO PUBLIC;\n\
         COMMENT ON TABLE {delta} IS {};\n",
        coldefs.join(", "),
        sql_literal(&format!("capra change log of {}", t.name.human()))
    );
    sql.push_str(&function_sql(id, &t.keycols, rowlevel, t.autokick && !rowlevel));
    let tbl = t.name.sql();
    let func = format!("capra.capture_{id}");
    if rowlevel {
        sql.push_str(&format!(
            "CREATE TRIGGER capra_capture AFTER INSERT OR UPDATE OR DELETE ON {tbl} FOR EACH ROW EXECUTE PROCEDURE {func}();\n\
             CREATE TRIGGER capra_capture_t AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n"
        ));
    } else {
        let qcols: Vec<String> = t.keycols.iter().map(|k| quote_ident(k)).collect();
        let changed: Vec<String> = qcols
            .iter()
            .map(|q| format!("OLD.{q} IS DISTINCT FROM NEW.{q}"))
            .collect();
        sql.push_str(&format!(
            "CREATE TRIGGER capra_capture_i AFTER INSERT ON {tbl} REFERENCING NEW TABLE AS capra_new FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n\
             CREATE TRIGGER capra_capture_u AFTER UPDATE ON {tbl} REFERENCING NEW TABLE AS capra_new FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n\
             CREATE TRIGGER capra_capture_d AFTER DELETE ON {tbl} REFERENCING OLD TABLE AS capra_old FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n\
             CREATE TRIGGER capra_capture_t AFTER TRUNCATE ON {tbl} FOR EACH STATEMENT EXECUTE PROCEDURE {func}();\n\
             CREATE TRIGGER capra_capture_k AFTER UPDATE OF {} ON {tbl} FOR EACH ROW WHEN ({}) EXECUTE PROCEDURE {func}_key();\n",
            qcols.join(", "),
            changed.join(" OR ")
        ));
    }
    c.batch_execute(&sql)
        .ctx(|| format!("installing change capture on {}", t.name.human()))?;
    c.execute(
        "UPDATE capra.captured SET kick = $2 WHERE id = $1",
        &[&id, &(t.autokick && !rowlevel)],
    )
    .ctx(|| "recording the kick".into())?;
    if rowlevel {
        set_kick(c, &t.name, id, t.autokick)?;
    }
    Ok(id)
}

/// The capture function(s) of one table. Statement level: `capture_N()`
/// logs NEW keys for INSERT/UPDATE, OLD keys for DELETE, truncations, and
/// (with `notify`) kicks the daemon; `capture_N_key()` logs the old key of
/// a row whose key changed. Row level: one function for everything.
fn function_sql(id: i32, keycols: &[String], rowlevel: bool, notify: bool) -> String {
    let delta = delta_table(id);
    let qcols: Vec<String> = keycols.iter().map(|k| quote_ident(k)).collect();
    let collist = qcols.join(", ");
    let kick = if notify {
        "PERFORM pg_catalog.pg_notify('capra', '');\n    "
    } else {
        ""
    };
    if rowlevel {
        let new_vals: Vec<String> = qcols.iter().map(|q| format!("NEW.{q}")).collect();
        let old_vals: Vec<String> = qcols.iter().map(|q| format!("OLD.{q}")).collect();
        return format!(
            "CREATE OR REPLACE FUNCTION capra.capture_{id}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {delta} ({collist}) VALUES ({new});
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO {delta} ({collist}) VALUES ({new});
        IF ROW({old}) IS DISTINCT FROM ROW({new}) THEN
            INSERT INTO {delta} ({collist}) VALUES ({old});
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {delta} ({collist}) VALUES ({old});
    ELSE
        INSERT INTO capra.truncate_log (captured) VALUES ({id});
    END IF;
    RETURN NULL;
END
$f$;
",
            new = new_vals.join(", "),
            old = old_vals.join(", "),
        );
    }
    let old_vals: Vec<String> = qcols.iter().map(|q| format!("OLD.{q}")).collect();
    format!(
        "CREATE OR REPLACE FUNCTION capra.capture_{id}() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF TG_OP = 'INSERT' OR TG_OP = 'UPDATE' THEN
        INSERT INTO {delta} ({collist}) SELECT {collist} FROM capra_new;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {delta} ({collist}) SELECT {collist} FROM capra_old;
    ELSE
        INSERT INTO capra.truncate_log (captured) VALUES ({id});
    END IF;
    {kick}RETURN NULL;
END
$f$;
CREATE OR REPLACE FUNCTION capra.capture_{id}_key() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO {delta} ({collist}) VALUES ({old});
    RETURN NULL;
END
$f$;
",
        old = old_vals.join(", "),
    )
}

/// A SQL string literal.
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn trigger_names(c: &mut impl GenericClient, table: &QualName) -> Result<Vec<String>> {
    Ok(c.query(
        "SELECT t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND NOT t.tgisinternal AND t.tgname LIKE 'capra\\_%'",
        &[&table.schema, &table.name],
    )
    .ctx(|| format!("reading triggers of {}", table.human()))?
    .iter()
    .map(|r| r.get(0))
    .collect())
}

fn triggers_present(c: &mut impl GenericClient, table: &QualName, id: i32) -> Result<bool> {
    let names = trigger_names(c, table)?;
    let has_log: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&delta_table(id)])
        .ctx(|| "checking the change log".into())?
        .get(0);
    Ok(has_log && names.iter().any(|n| n == "capra_capture_t"))
}

/// Turns a table's kick on or off: statement-level capture regenerates its
/// function with or without the notify; row-level capture (old servers)
/// has a separate statement trigger calling `capra.kick()`.
fn set_kick(c: &mut impl GenericClient, table: &QualName, id: i32, on: bool) -> Result<()> {
    let row = c
        .query_one(
            "SELECT rowlevel, kick, keycols FROM capra.captured WHERE id = $1",
            &[&id],
        )
        .ctx(|| "reading capture".into())?;
    let (rowlevel, kick, keycols): (bool, bool, Vec<String>) = (row.get(0), row.get(1), row.get(2));
    if !rowlevel {
        if kick != on {
            c.batch_execute(&function_sql(id, &keycols, false, on))
                .ctx(|| format!("switching the kick of {}", table.human()))?;
            c.execute("UPDATE capra.captured SET kick = $2 WHERE id = $1", &[&id, &on])
                .ctx(|| "recording the kick".into())?;
        }
        return Ok(());
    }
    let has = trigger_names(c, table)?.iter().any(|n| n == "capra_kick");
    if on && !has {
        c.batch_execute(&format!(
            "CREATE TRIGGER capra_kick AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {} FOR EACH STATEMENT EXECUTE PROCEDURE capra.kick()",
            table.sql()
        ))
        .ctx(|| format!("installing the kick trigger on {}", table.human()))?;
    } else if !on && has {
        c.batch_execute(&format!("DROP TRIGGER capra_kick ON {}", table.sql()))
            .ctx(|| format!("removing the kick trigger from {}", table.human()))?;
    }
    c.execute("UPDATE capra.captured SET kick = $2 WHERE id = $1", &[&id, &on])
        .ctx(|| "recording the kick".into())?;
    Ok(())
}

/// Drops a table's triggers, function and change log (not its registry row).
fn drop_capture_objects(c: &mut impl GenericClient, table: &QualName, id: i32) -> Result<()> {
    let exists: bool = c
        .query_one(
            "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
            &[&table.schema, &table.name],
        )
        .ctx(|| "checking the table".into())?
        .get(0);
    let mut sql = String::new();
    if exists {
        for t in trigger_names(c, table)? {
            sql.push_str(&format!(
                "DROP TRIGGER IF EXISTS {} ON {};\n",
                quote_ident(&t),
                table.sql()
            ));
        }
    }
    sql.push_str(&format!(
        "DROP FUNCTION IF EXISTS capra.capture_{id}();\nDROP FUNCTION IF EXISTS capra.capture_{id}_key();\nDROP TABLE IF EXISTS {};\nDELETE FROM capra.truncate_log WHERE captured = {id};\n",
        delta_table(id)
    ));
    c.batch_execute(&sql)
        .ctx(|| format!("removing change capture from {}", table.human()))
}

/// Makes a sync's consumer on this source cover exactly `tables` (capturing
/// each), creating the consumer at the current snapshot if it is new.
/// Returns the captured ids in the order given.
pub fn attach_consumer(
    c: &mut impl GenericClient,
    installation: &str,
    sync: &str,
    tables: &[Target],
) -> Result<Vec<i32>> {
    ensure_base(c)?;
    let mut ids = Vec::new();
    for t in tables {
        ids.push(capture_table(c, t)?);
    }
    // The snapshot is taken after the triggers exist (and their locks are
    // held), so every change committed from here on is in the log.
    c.execute(
        "INSERT INTO capra.consumer (installation, sync, snapshot) VALUES ($1, $2, txid_current_snapshot())
         ON CONFLICT (installation, sync) DO NOTHING",
        &[&installation, &sync],
    )
    .ctx(|| format!("registering sync \"{sync}\" as a consumer"))?;
    c.execute(
        "DELETE FROM capra.consumer_table WHERE installation = $1 AND sync = $2 AND NOT (captured = ANY($3))",
        &[&installation, &sync, &ids],
    )
    .ctx(|| "updating the consumer's tables".into())?;
    for (t, id) in tables.iter().zip(&ids) {
        c.execute(
            "INSERT INTO capra.consumer_table (installation, sync, captured, autokick) VALUES ($1, $2, $3, $4)
             ON CONFLICT (installation, sync, captured) DO UPDATE SET autokick = EXCLUDED.autokick",
            &[&installation, &sync, id, &t.autokick],
        )
        .ctx(|| "updating the consumer's tables".into())?;
    }
    cleanup(c)?;
    Ok(ids)
}

/// Removes a sync's consumer from this source and whatever capture nothing
/// else needs; drops the whole `capra` schema when it is left empty.
pub fn detach_consumer(c: &mut impl GenericClient, installation: &str, sync: &str) -> Result<()> {
    let exists: bool = c
        .query_one("SELECT to_regclass('capra.consumer') IS NOT NULL", &[])
        .ctx(|| "looking for capra's capture schema".into())?
        .get(0);
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

/// Drops capture of tables no consumer uses, refreshes kick triggers, and
/// drops the schema when nothing is left.
fn cleanup(c: &mut impl GenericClient) -> Result<()> {
    let rows = c
        .query(
            "SELECT cap.id, cap.schemaname, cap.relname,
                    EXISTS (SELECT 1 FROM capra.consumer_table ct WHERE ct.captured = cap.id),
                    EXISTS (SELECT 1 FROM capra.consumer_table ct WHERE ct.captured = cap.id AND ct.autokick)
               FROM capra.captured cap ORDER BY cap.id",
            &[],
        )
        .ctx(|| "reading captured tables".into())?;
    let mut left = 0;
    for r in rows {
        let id: i32 = r.get(0);
        let name = QualName::new(r.get::<_, String>(1), r.get::<_, String>(2));
        if r.get::<_, bool>(3) {
            left += 1;
            let present: bool = c
                .query_one(
                    "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
                    &[&name.schema, &name.name],
                )
                .ctx(|| "checking the table".into())?
                .get(0);
            if present {
                set_kick(c, &name, id, r.get(4))?;
            }
        } else {
            drop_capture_objects(c, &name, id)?;
            c.execute("DELETE FROM capra.captured WHERE id = $1", &[&id])
                .ctx(|| "unregistering capture".into())?;
        }
    }
    let consumers: i64 = c
        .query_one("SELECT count(*) FROM capra.consumer", &[])
        .ctx(|| "counting consumers".into())?
        .get(0);
    if left == 0 && consumers == 0 {
        // Only capra's own objects are dropped; the schema goes too unless
        // someone else put something in it.
        c.batch_execute(
            "DROP TABLE IF EXISTS capra.consumer_table, capra.consumer, capra.truncate_log, capra.captured, capra.capture_meta;
             DROP FUNCTION IF EXISTS capra.kick();",
        )
        .ctx(|| "removing capra's capture tables".into())?;
        let others: i64 = c
            .query_one(
                "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'capra'))
                      + (SELECT count(*) FROM pg_proc WHERE pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'capra'))
                      + (SELECT count(*) FROM pg_type WHERE typnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'capra') AND typtype <> 'c')",
                &[],
            )
            .ctx(|| "checking the capra schema".into())?
            .get(0);
        if others == 0 {
            c.batch_execute("DROP SCHEMA capra")
                .ctx(|| "removing the capra schema".into())?;
        }
    }
    Ok(())
}
