//! Bucardo 5's catalog as the import reads it: every table of schema
//! `bucardo` in Bucardo's control database that says what replicates where,
//! read in one snapshot so a half-made change cannot be half imported.
//!
//! Rows are read as `to_jsonb(row)`, so a column a 5.x release added or
//! dropped is a missing key, not a failed query.

use postgres::{Client, GenericClient};
use serde_json::Value;

use super::ImportError;
use crate::error::{Context, Result};
use crate::pg::RowExt;
use crate::sys::Secret;

/// One `bucardo.db` row.
#[derive(Clone, Debug)]
pub struct Db {
    /// Bucardo's (and capra's) name for it.
    pub name: String,
    /// `postgres`, or another engine capra refuses.
    pub dbtype: String,
    /// `dbhost` ('' is the local socket).
    pub host: String,
    /// `dbport` ('' is the default).
    pub port: String,
    /// Real database name.
    pub dbname: Option<String>,
    /// Login role.
    pub user: Option<String>,
    /// Password; never printed.
    pub pass: Option<Secret>,
    /// Extra DBD::Pg DSN pairs, `;`-separated.
    pub conn: String,
    /// libpq service.
    pub service: Option<String>,
    /// A whole `dbi:Pg:` DSN that overrides the fields above.
    pub dsn: Option<String>,
    /// A pgpass file Bucardo reads when there is no password.
    pub pgpass: Option<String>,
    /// active, inactive or stalled.
    pub status: String,
    /// Whether rows applied here are captured again.
    pub makedelta: bool,
}

/// One `bucardo.dbmap` row: a database in a dbgroup.
#[derive(Clone, Debug)]
pub struct Member {
    /// The dbgroup.
    pub group: String,
    /// The database.
    pub db: String,
    /// source, target or fullcopy.
    pub role: String,
    /// Bucardo's `priority` (kept; neither Bucardo nor capra orders by it).
    pub priority: i32,
}

/// One `bucardo.goat` row: a table or sequence of one database.
#[derive(Clone, Debug)]
pub struct Goat {
    /// Its id (customcode and customname refer to it).
    pub id: i64,
    /// The database it is in.
    pub db: String,
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `table` or `sequence`.
    pub reltype: String,
    /// The key Bucardo captured (its delta tables have these columns).
    pub pkey: Vec<String>,
    /// The whole row, for per-table options.
    pub row: Value,
}

/// One `bucardo.sync` row.
#[derive(Clone, Debug)]
pub struct Sync {
    /// Name.
    pub name: String,
    /// Its relgroup (herd).
    pub herd: String,
    /// Its dbgroup.
    pub dbs: String,
    /// active, inactive or stalled.
    pub status: String,
    /// The whole row, for its options.
    pub row: Value,
}

/// One `bucardo.customcode` row.
#[derive(Clone, Debug)]
pub struct Code {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// When it runs.
    pub whenrun: String,
    /// The Perl source.
    pub src: String,
    /// Free text.
    pub about: String,
    /// Order among codes of one hook point.
    pub priority: i32,
}

/// One `bucardo.customcode_map` row.
#[derive(Clone, Debug)]
pub struct CodeMap {
    /// The code's id.
    pub code: i64,
    /// The sync it is attached to...
    pub sync: Option<String>,
    /// ...or the table.
    pub goat: Option<i64>,
}

/// Everything the import reads from Bucardo's control database.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `bucardo_version` from `bucardo_config`.
    pub version: String,
    /// Databases.
    pub dbs: Vec<Db>,
    /// Dbgroup memberships.
    pub members: Vec<Member>,
    /// Tables and sequences.
    pub goats: Vec<Goat>,
    /// (herd, goat id, priority).
    pub herdmap: Vec<(String, i64, i32)>,
    /// Syncs.
    pub syncs: Vec<Sync>,
    /// Custom code.
    pub codes: Vec<Code>,
    /// Where custom code is attached.
    pub code_maps: Vec<CodeMap>,
    /// (goat id, sync or None for every sync) with a `customname` or a
    /// `customcols` row: no capra equivalent.
    pub renames: Vec<(i64, Option<String>, &'static str)>,
}

impl Snapshot {
    /// A database by name.
    pub fn db(&self, name: &str) -> Option<&Db> {
        self.dbs.iter().find(|d| d.name == name)
    }

    /// A sync's dbgroup members, in Bucardo's order (sources first).
    pub fn members_of(&self, sync: &Sync) -> Vec<&Member> {
        let mut v: Vec<&Member> = self.members.iter().filter(|m| m.group == sync.dbs).collect();
        v.sort_by_key(|m| (m.role != "source", m.db.clone()));
        v
    }

    /// A sync's tables and sequences, in Bucardo's order of work
    /// (priority, highest first, then id), with their priority.
    pub fn goats_of(&self, sync: &Sync) -> Vec<(&Goat, i32)> {
        let mut v: Vec<(&Goat, i32)> = self
            .herdmap
            .iter()
            .filter(|(h, _, _)| *h == sync.herd)
            .filter_map(|(_, g, p)| self.goats.iter().find(|x| x.id == *g).map(|x| (x, *p)))
            .collect();
        v.sort_by_key(|(g, p)| (-p, g.id));
        v
    }

    /// How many sources and targets of a sync are active databases (Bucardo
    /// leaves inactive ones out of its runs).
    pub fn active_roles(&self, sync: &Sync) -> (usize, usize) {
        let active: Vec<&Member> = self
            .members_of(sync)
            .into_iter()
            .filter(|m| self.db(&m.db).is_some_and(|d| d.status != "inactive"))
            .collect();
        let n = |role: &str| active.iter().filter(|m| m.role == role).count();
        (n("source"), n("target"))
    }

    /// Whether Bucardo runs a sync as a full copy (among its active
    /// databases: one source, no target): such a sync reads no triggers.
    pub fn is_fullcopy(&self, sync: &Sync) -> bool {
        self.active_roles(sync) == (1, 0)
    }

    /// The syncs that read table `schema.name` on source `db` through
    /// Bucardo's triggers there: every delta sync (inactive ones too, which
    /// a later activation would need) with `db` as a source and the table
    /// in its relgroup. A multi-source sync's tables are recorded on one
    /// of its sources only, so the table is matched by name.
    pub fn users(&self, db: &str, schema: &str, name: &str) -> Vec<&Sync> {
        self.syncs
            .iter()
            .filter(|s| !self.is_fullcopy(s))
            .filter(|s| self.members_of(s).iter().any(|m| m.db == db && m.role == "source"))
            .filter(|s| {
                self.goats_of(s)
                    .iter()
                    .any(|(g, _)| g.schema == schema && g.name == name)
            })
            .collect()
    }

    /// Whether the changes a sync applies on `db` are captured there again
    /// (makedelta on the database, or on one of the sync's tables as `on`
    /// or a list naming `db`), so a sync reading `db` passes them on. A
    /// full copy never is.
    pub fn makedelta_into(&self, sync: &Sync, db: &str) -> bool {
        if self.is_fullcopy(sync) {
            return false;
        }
        let names = |v: Option<&Value>| match v {
            Some(Value::String(s)) => {
                let s = s.trim();
                s.eq_ignore_ascii_case("on") || s.split([',', ' ']).any(|x| x.trim() == db)
            }
            Some(Value::Bool(b)) => *b,
            _ => false,
        };
        self.db(db).is_some_and(|d| d.makedelta)
            || self.goats_of(sync).iter().any(|(g, _)| names(g.row.get("makedelta")))
    }
}

fn text(v: &Value, k: &str) -> Option<String> {
    match v.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn int(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}

fn rows(c: &mut impl GenericClient, table: &str, order: &str) -> Result<Vec<Value>> {
    let what = format!("reading Bucardo's {table}");
    c.query(
        &format!("SELECT pg_catalog.to_jsonb(t) FROM bucardo.{table} t ORDER BY {order}"),
        &[],
    )
    .ctx(|| what.clone())?
    .iter()
    .map(|r| r.col(0, &what))
    .collect()
}

/// Reads Bucardo's catalog in one read-only snapshot.
pub fn read(c: &mut Client) -> Result<Snapshot> {
    let has: bool = c
        .query_one("SELECT pg_catalog.to_regclass('bucardo.sync') IS NOT NULL", &[])
        .ctx(|| "looking for Bucardo's catalog".into())?
        .col(0, "looking for Bucardo's catalog")?;
    if !has {
        return Err(ImportError::NoBucardo.into());
    }
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .ctx(|| "starting a snapshot of Bucardo's catalog".into())?;
    let version: String = tx
        .query_opt(
            "SELECT setting FROM bucardo.bucardo_config WHERE name = 'bucardo_version'",
            &[],
        )
        .ctx(|| "reading Bucardo's version".into())?
        .map(|r| r.col(0, "Bucardo's version"))
        .transpose()?
        .unwrap_or_default();
    if !version.starts_with("5.") {
        return Err(ImportError::Version { version }.into());
    }
    let mut s = Snapshot {
        version,
        ..Snapshot::default()
    };
    for r in rows(&mut tx, "db", "name")? {
        s.dbs.push(Db {
            name: text(&r, "name").unwrap_or_default(),
            dbtype: text(&r, "dbtype").unwrap_or_else(|| "postgres".into()),
            host: text(&r, "dbhost").unwrap_or_default(),
            port: text(&r, "dbport").unwrap_or_default(),
            dbname: text(&r, "dbname"),
            user: text(&r, "dbuser"),
            pass: text(&r, "dbpass").filter(|p| !p.is_empty()).map(Secret::new),
            conn: text(&r, "dbconn").unwrap_or_default(),
            service: text(&r, "dbservice").filter(|x| !x.is_empty()),
            dsn: text(&r, "dbdsn").filter(|x| !x.is_empty()),
            pgpass: text(&r, "pgpass").filter(|x| !x.is_empty()),
            status: text(&r, "status").unwrap_or_else(|| "active".into()),
            makedelta: r.get("makedelta").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    for r in rows(&mut tx, "dbmap", "dbgroup, db")? {
        s.members.push(Member {
            group: text(&r, "dbgroup").unwrap_or_default(),
            db: text(&r, "db").unwrap_or_default(),
            role: text(&r, "role").unwrap_or_else(|| "target".into()),
            priority: int(&r, "priority") as i32,
        });
    }
    for r in rows(&mut tx, "goat", "id")? {
        let pkey = text(&r, "pkey").unwrap_or_default();
        s.goats.push(Goat {
            id: int(&r, "id"),
            db: text(&r, "db").unwrap_or_default(),
            schema: text(&r, "schemaname").unwrap_or_default(),
            name: text(&r, "tablename").unwrap_or_default(),
            reltype: text(&r, "reltype").unwrap_or_else(|| "table".into()),
            pkey: pkey.split('|').filter(|k| !k.is_empty()).map(String::from).collect(),
            row: r,
        });
    }
    for r in rows(&mut tx, "herdmap", "herd, goat")? {
        s.herdmap.push((
            text(&r, "herd").unwrap_or_default(),
            int(&r, "goat"),
            int(&r, "priority") as i32,
        ));
    }
    for r in rows(&mut tx, "sync", "name")? {
        s.syncs.push(Sync {
            name: text(&r, "name").unwrap_or_default(),
            herd: text(&r, "herd").unwrap_or_default(),
            dbs: text(&r, "dbs").unwrap_or_default(),
            status: text(&r, "status").unwrap_or_else(|| "active".into()),
            row: r,
        });
    }
    for r in rows(&mut tx, "customcode", "id")? {
        s.codes.push(Code {
            id: int(&r, "id"),
            name: text(&r, "name").unwrap_or_default(),
            whenrun: text(&r, "whenrun").unwrap_or_default(),
            src: text(&r, "src_code").unwrap_or_default(),
            about: text(&r, "about").unwrap_or_default(),
            priority: int(&r, "priority") as i32,
        });
    }
    for r in rows(&mut tx, "customcode_map", "code")? {
        s.code_maps.push(CodeMap {
            code: int(&r, "code"),
            sync: text(&r, "sync"),
            goat: r.get("goat").and_then(Value::as_i64),
        });
    }
    for (table, what) in [("customname", "customname"), ("customcols", "customcols")] {
        for r in rows(&mut tx, table, "goat")? {
            s.renames.push((int(&r, "goat"), text(&r, "sync"), what));
        }
    }
    tx.commit().ctx(|| "ending the snapshot of Bucardo's catalog".into())?;
    Ok(s)
}

/// Why Bucardo counts as running, if it does: its processes' sessions on
/// the control database's server, or a run it began and never ended.
pub fn running(c: &mut Client) -> Result<Option<String>> {
    let what = "looking for running Bucardo processes";
    let procs: Vec<String> = c
        .query(
            "SELECT pg_catalog.format('%s (pid %s)', application_name, pid) FROM pg_catalog.pg_stat_activity
              WHERE application_name OPERATOR(pg_catalog.~) '^bucardo (MCP|CTL|KID|VAC)' ORDER BY backend_start",
            &[],
        )
        .ctx(|| what.into())?
        .iter()
        .map(|r| r.col(0, what))
        .collect::<Result<_>>()?;
    if !procs.is_empty() {
        return Ok(Some(format!(
            "Bucardo is running ({}); stop it first (bucardo stop) and wait until it has gone",
            procs.join(", ")
        )));
    }
    let open: Vec<String> = c
        .query(
            "SELECT pg_catalog.format('%s (started %s)', sync, started) FROM bucardo.syncrun WHERE ended IS NULL ORDER BY started",
            &[],
        )
        .ctx(|| "looking for unfinished Bucardo runs".into())?
        .iter()
        .map(|r| r.col(0, "unfinished Bucardo runs"))
        .collect::<Result<_>>()?;
    if !open.is_empty() {
        return Ok(Some(format!(
            "Bucardo has unfinished runs of sync {} but no process left: it was killed. Start and stop it once so it closes them (bucardo start; bucardo stop), or close them by hand (UPDATE bucardo.syncrun SET ended = now(), status = 'killed' WHERE ended IS NULL), then import again",
            open.join(", ")
        )));
    }
    Ok(None)
}
