//! The catalog's objects as Rust values, loaded from the control database.

use postgres::GenericClient;
use serde::Serialize;

use crate::error::{Context, Result};
use crate::pg::connect::ConnSpec;
use crate::pg::ident::QualName;

/// A database capra connects to (`capra add db`). Its `Debug` leaves the
/// password out.
#[derive(Clone, Serialize, PartialEq)]
pub struct Db {
    /// capra's name for it.
    pub name: String,
    /// Real database name.
    pub dbname: Option<String>,
    /// Host or socket directory.
    pub host: Option<String>,
    /// Port.
    pub port: Option<i32>,
    /// Login role.
    pub user: Option<String>,
    /// Whether a password is stored (the password itself never leaves the catalog).
    pub password_set: bool,
    /// Extra libpq keywords.
    pub conn: String,
    /// libpq service.
    pub service: Option<String>,
    /// Database type (postgres).
    pub dbtype: String,
    /// active, inactive or stalled.
    pub status: String,
    /// Whether rows applied here are logged as changes again (cascading).
    pub makedelta: bool,
    /// Server-side prepared statements (off behind pgbouncer).
    pub server_side_prepares: bool,
    #[serde(skip)]
    password: Option<String>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db {{ name: {:?}, conn: {:?} }}", self.name, self.psql_line())
    }
}

impl Db {
    /// The connection description, password included, for connecting.
    pub fn conn_spec(&self) -> ConnSpec {
        ConnSpec {
            host: self.host.clone(),
            port: self.port.map(|p| p as u16),
            user: self.user.clone(),
            dbname: self.dbname.clone(),
            password: self.password.clone(),
            conn: self.conn.clone(),
            service: self.service.clone(),
        }
    }

    /// Connects to it (bounded by the connect timeout).
    pub fn connect(&self) -> Result<postgres::Client> {
        crate::pg::connect::open_db(&self.conn_spec(), &self.name)
    }

    /// How a user would reach it with psql (Bucardo's `Conn:` column); never
    /// includes the password.
    pub fn psql_line(&self) -> String {
        let mut s = String::from("psql");
        if let Some(p) = self.port {
            s.push_str(&format!(" -p {p}"));
        }
        if let Some(u) = &self.user {
            s.push_str(&format!(" -U {u}"));
        }
        if let Some(d) = &self.dbname {
            s.push_str(&format!(" -d {d}"));
        }
        if let Some(h) = &self.host {
            s.push_str(&format!(" -h {h}"));
        }
        if let Some(svc) = &self.service {
            s.push_str(&format!(" service={svc}"));
        }
        if !self.conn.is_empty() {
            s.push_str(&format!(" ({})", self.conn));
        }
        s
    }
}

const DB_COLS: &str =
    "name, dbname, host, port, dbuser, dbpass, conn, service, dbtype, status, makedelta, server_side_prepares";

fn db_from_row(r: &postgres::Row) -> Db {
    let password: Option<String> = r.get(5);
    Db {
        name: r.get(0),
        dbname: r.get(1),
        host: r.get(2),
        port: r.get(3),
        user: r.get(4),
        password_set: password.is_some(),
        password,
        conn: r.get(6),
        service: r.get(7),
        dbtype: r.get(8),
        status: r.get(9),
        makedelta: r.get(10),
        server_side_prepares: r.get(11),
    }
}

/// All databases, by name.
pub fn dbs(c: &mut impl GenericClient) -> Result<Vec<Db>> {
    let rows = c
        .query(
            &format!("SELECT {DB_COLS} FROM capra.db ORDER BY name COLLATE \"C\""),
            &[],
        )
        .ctx(|| "reading databases from the catalog".into())?;
    Ok(rows.iter().map(db_from_row).collect())
}

/// One database by name.
pub fn db(c: &mut impl GenericClient, name: &str) -> Result<Option<Db>> {
    let rows = c
        .query(&format!("SELECT {DB_COLS} FROM capra.db WHERE name = $1"), &[&name])
        .ctx(|| format!("reading database \"{name}\" from the catalog"))?;
    Ok(rows.first().map(db_from_row))
}

/// A member of a dbgroup.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Member {
    /// Database name.
    pub db: String,
    /// source, target or fullcopy.
    pub role: String,
    /// Priority (display only, as in Bucardo).
    pub priority: i32,
}

/// A named set of databases with roles.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DbGroup {
    /// Group name.
    pub name: String,
    /// Members in the order they were added.
    pub members: Vec<Member>,
}

impl DbGroup {
    /// Members with a role.
    pub fn with_role(&self, role: &str) -> Vec<&Member> {
        self.members.iter().filter(|m| m.role == role).collect()
    }
}

/// All dbgroups, by name.
pub fn dbgroups(c: &mut impl GenericClient) -> Result<Vec<DbGroup>> {
    let groups = c
        .query("SELECT name FROM capra.dbgroup ORDER BY name COLLATE \"C\"", &[])
        .ctx(|| "reading dbgroups".into())?;
    let maps = c
        .query(
            "SELECT dbgroup, db, role, priority FROM capra.dbmap ORDER BY dbgroup, position",
            &[],
        )
        .ctx(|| "reading dbgroup members".into())?;
    Ok(groups
        .iter()
        .map(|g| {
            let name: String = g.get(0);
            let members = maps
                .iter()
                .filter(|m| m.get::<_, String>(0) == name)
                .map(|m| Member {
                    db: m.get(1),
                    role: m.get(2),
                    priority: m.get(3),
                })
                .collect();
            DbGroup { name, members }
        })
        .collect())
}

/// One dbgroup by name.
pub fn dbgroup(c: &mut impl GenericClient, name: &str) -> Result<Option<DbGroup>> {
    Ok(dbgroups(c)?.into_iter().find(|g| g.name == name))
}

/// A table or sequence known to the catalog.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Relation {
    /// Catalog id (the number `list tables` shows).
    pub id: i32,
    /// Database it was added from.
    pub db: String,
    /// Schema and name.
    pub name: QualName,
    /// `table` or `sequence`.
    pub reltype: String,
    /// Replication key columns (empty: none).
    pub pkey: Vec<String>,
    /// Their types.
    pub pkeytype: Vec<String>,
    /// `primary` or `unique` (None when there is no key).
    pub keykind: Option<String>,
    /// Per-table autokick override.
    pub autokick: Option<bool>,
    /// Per-table rebuild_index override.
    pub rebuild_index: Option<i16>,
    /// ANALYZE after a full copy.
    pub analyze_after_copy: bool,
    /// VACUUM after a full copy.
    pub vacuum_after_copy: bool,
    /// Skip in full copies.
    pub ghost: bool,
    /// Per-table conflict strategy.
    pub conflict_strategy: Option<String>,
    /// Strict column checks in validation.
    pub strict_checking: bool,
    /// makedelta: `on` or db names.
    pub makedelta: Option<String>,
    /// Relgroups it belongs to.
    pub relgroups: Vec<String>,
    /// Row filter: a boolean SQL expression over the table's columns; only
    /// matching rows replicate.
    pub filter: Option<String>,
}

/// All relations of one type (`table` or `sequence`), by schema and name.
pub fn relations(c: &mut impl GenericClient, reltype: Option<&str>) -> Result<Vec<Relation>> {
    let rows = c
        .query(
            "SELECT r.id, r.db, r.schemaname, r.relname, r.reltype, r.pkey, r.pkeytype, r.keykind,
                    r.autokick, r.rebuild_index, r.analyze_after_copy, r.vacuum_after_copy, r.ghost,
                    r.conflict_strategy, r.strict_checking, r.makedelta,
                    coalesce(array_agg(m.relgroup ORDER BY m.relgroup) FILTER (WHERE m.relgroup IS NOT NULL), '{}'),
                    r.filter
               FROM capra.relation r LEFT JOIN capra.relgroup_member m ON m.relation = r.id
              WHERE $1::text IS NULL OR r.reltype = $1
              GROUP BY r.id
              ORDER BY r.schemaname COLLATE \"C\", r.relname COLLATE \"C\", r.db",
            &[&reltype],
        )
        .ctx(|| "reading tables and sequences from the catalog".into())?;
    Ok(rows
        .iter()
        .map(|r| Relation {
            id: r.get(0),
            db: r.get(1),
            name: QualName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            reltype: r.get(4),
            pkey: r.get(5),
            pkeytype: r.get(6),
            keykind: r.get(7),
            autokick: r.get(8),
            rebuild_index: r.get(9),
            analyze_after_copy: r.get(10),
            vacuum_after_copy: r.get(11),
            ghost: r.get(12),
            conflict_strategy: r.get(13),
            strict_checking: r.get(14),
            makedelta: r.get(15),
            relgroups: r.get(16),
            filter: r.get(17),
        })
        .collect())
}

/// A named set of tables and sequences (Bucardo 4: herd).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RelGroup {
    /// Name.
    pub name: String,
    /// Database the members come from (None when empty).
    pub db: Option<String>,
    /// Member relation ids, in priority then id order.
    pub members: Vec<i32>,
    /// Syncs using it.
    pub syncs: Vec<String>,
}

/// All relgroups, by name.
pub fn relgroups(c: &mut impl GenericClient) -> Result<Vec<RelGroup>> {
    let rows = c
        .query(
            "SELECT g.name,
                    (SELECT min(r.db) FROM capra.relgroup_member m JOIN capra.relation r ON r.id = m.relation
                      WHERE m.relgroup = g.name),
                    coalesce((SELECT array_agg(m.relation ORDER BY m.priority DESC, m.relation)
                                FROM capra.relgroup_member m WHERE m.relgroup = g.name), '{}'),
                    coalesce((SELECT array_agg(s.name ORDER BY s.name) FROM capra.sync s WHERE s.relgroup = g.name), '{}')
               FROM capra.relgroup g ORDER BY g.name COLLATE \"C\"",
            &[],
        )
        .ctx(|| "reading relgroups".into())?;
    Ok(rows
        .iter()
        .map(|r| RelGroup {
            name: r.get(0),
            db: r.get(1),
            members: r.get(2),
            syncs: r.get(3),
        })
        .collect())
}

/// A sync: a relgroup replicated across a dbgroup.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sync {
    /// Name.
    pub name: String,
    /// What to replicate.
    pub relgroup: String,
    /// Where.
    pub dbgroup: String,
    /// active or inactive.
    pub status: String,
    /// Run when a change commits on a source.
    pub autokick: bool,
    /// 0, 1 or 2.
    pub onetimecopy: i16,
    /// Bumped by every onetimecopy request (see migration 3).
    #[serde(skip)]
    pub onetimecopy_gen: i64,
    /// Strategy for multi-source conflicts (None: the default setting).
    pub conflict_strategy: Option<String>,
    /// Cron schedule (5 fields), if any.
    pub schedule: Option<String>,
    /// Run at least this often (interval text), if set.
    pub checktime: Option<String>,
    /// Bucardo's stayalive.
    pub stayalive: bool,
    /// Bucardo's kidsalive.
    pub kidsalive: bool,
    /// Rebuild indexes after loading (0/1).
    pub rebuild_index: i16,
    /// ANALYZE after full copies.
    pub analyze_after_copy: bool,
    /// VACUUM after full copies.
    pub vacuum_after_copy: bool,
    /// Log applied rows as changes again (cascading).
    pub makedelta: bool,
    /// How full copies empty a table: delete, truncate, truncate_cascade.
    pub deletemethod: String,
    /// Source snapshot isolation (None: the setting).
    pub isolation_level: Option<String>,
    /// Age after which status warns.
    pub overdue: String,
    /// Age after which status is critical.
    pub expired: String,
    /// Bucardo's lifetime.
    pub lifetime: Option<String>,
    /// Bucardo's maxkicks.
    pub maxkicks: i32,
    /// Display priority.
    pub priority: i32,
    /// Strict column checks.
    pub strict_checking: bool,
    /// The Bucardo 4 type it was created with, if any (for display).
    pub synctype: Option<String>,
}

/// The database a relgroup's tables come from (the first by name), for
/// Bucardo 4's `source=HERD`.
pub fn relgroup_db(c: &mut impl GenericClient, relgroup: &str) -> Result<Option<String>> {
    Ok(c
        .query_one(
            "SELECT min(r.db) FROM capra.relgroup_member m JOIN capra.relation r ON r.id = m.relation WHERE m.relgroup = $1",
            &[&relgroup],
        )
        .ctx(|| "finding the relgroup's database".into())?
        .get(0))
}

/// Checks that text is a valid interval (the server parses it).
pub fn check_interval(c: &mut impl GenericClient, text: &str) -> Result<()> {
    c.query_one("SELECT $1::text::interval", &[&text])
        .ctx(|| format!("checking the interval {text:?}"))?;
    Ok(())
}

/// All syncs, by name.
pub fn syncs(c: &mut impl GenericClient) -> Result<Vec<Sync>> {
    let rows = c
        .query(
            "SELECT name, relgroup, dbgroup, status, autokick, onetimecopy, conflict_strategy, schedule,
                    checktime::text, stayalive, kidsalive, rebuild_index, analyze_after_copy,
                    vacuum_after_copy, makedelta, deletemethod, isolation_level, overdue::text,
                    expired::text, lifetime::text, maxkicks, priority, strict_checking, synctype,
                    onetimecopy_gen
               FROM capra.sync ORDER BY name COLLATE \"C\"",
            &[],
        )
        .ctx(|| "reading syncs".into())?;
    Ok(rows
        .iter()
        .map(|r| Sync {
            name: r.get(0),
            relgroup: r.get(1),
            dbgroup: r.get(2),
            status: r.get(3),
            autokick: r.get(4),
            onetimecopy: r.get(5),
            conflict_strategy: r.get(6),
            schedule: r.get(7),
            checktime: r.get(8),
            stayalive: r.get(9),
            kidsalive: r.get(10),
            rebuild_index: r.get(11),
            analyze_after_copy: r.get(12),
            vacuum_after_copy: r.get(13),
            makedelta: r.get(14),
            deletemethod: r.get(15),
            isolation_level: r.get(16),
            overdue: r.get(17),
            expired: r.get(18),
            lifetime: r.get(19),
            maxkicks: r.get(20),
            priority: r.get(21),
            strict_checking: r.get(22),
            synctype: r.get(23),
            onetimecopy_gen: r.get(24),
        })
        .collect())
}

/// One sync by name.
pub fn sync(c: &mut impl GenericClient, name: &str) -> Result<Option<Sync>> {
    Ok(syncs(c)?.into_iter().find(|s| s.name == name))
}

/// A Lua hook.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CustomCode {
    /// Name.
    pub name: String,
    /// Hook point.
    pub whenrun: String,
    /// File it was loaded from.
    pub src_file: String,
    /// Source text.
    #[serde(skip)]
    pub src_code: String,
    /// Description.
    pub about: String,
    /// Order among hooks at the same point (lower first).
    pub priority: i32,
    /// active or inactive.
    pub status: String,
    /// Syncs it is attached to.
    pub syncs: Vec<String>,
    /// Relations it is attached to (schema.name@db).
    pub relations: Vec<String>,
}

/// All custom codes, by name.
pub fn customcodes(c: &mut impl GenericClient) -> Result<Vec<CustomCode>> {
    let rows = c
        .query(
            "SELECT c.name, c.whenrun, c.src_file, c.src_code, c.about, c.priority, c.status,
                    coalesce((SELECT array_agg(m.sync ORDER BY m.sync) FROM capra.customcode_map m
                               WHERE m.code = c.name AND m.sync IS NOT NULL), '{}'),
                    coalesce((SELECT array_agg(r.schemaname || '.' || r.relname || '@' || r.db ORDER BY r.id)
                                FROM capra.customcode_map m JOIN capra.relation r ON r.id = m.relation
                               WHERE m.code = c.name), '{}')
               FROM capra.customcode c ORDER BY c.name COLLATE \"C\"",
            &[],
        )
        .ctx(|| "reading custom code".into())?;
    Ok(rows
        .iter()
        .map(|r| CustomCode {
            name: r.get(0),
            whenrun: r.get(1),
            src_file: r.get(2),
            src_code: r.get(3),
            about: r.get(4),
            priority: r.get(5),
            status: r.get(6),
            syncs: r.get(7),
            relations: r.get(8),
        })
        .collect())
}

/// One configuration setting as stored.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConfigRow {
    /// Name.
    pub name: String,
    /// Current value.
    pub setting: String,
    /// Default value.
    pub defval: String,
    /// What it does.
    pub about: String,
}

/// All settings, by name.
pub fn config(c: &mut impl GenericClient) -> Result<Vec<ConfigRow>> {
    let rows = c
        .query(
            "SELECT name, setting, defval, about FROM capra.config ORDER BY name",
            &[],
        )
        .ctx(|| "reading settings".into())?;
    Ok(rows
        .iter()
        .map(|r| ConfigRow {
            name: r.get(0),
            setting: r.get(1),
            defval: r.get(2),
            about: r.get(3),
        })
        .collect())
}

/// One setting's value (or its built-in default when the row is missing).
pub fn setting(c: &mut impl GenericClient, name: &str) -> Result<String> {
    setting_impl(c, name)
}

/// Reads the connection settings (`connect_timeout`, `tcp_keepalives_*`,
/// `tcp_user_timeout`) and makes them the defaults of every connection
/// this process opens from now on; 0 keeps capra's own default.
pub fn apply_net_settings(c: &mut impl GenericClient) -> Result<bool> {
    use std::time::Duration;
    let base = crate::pg::connect::NetDefaults::default();
    let mut num = |n: &str| -> Result<f64> { Ok(setting_impl(c, n)?.parse::<f64>().unwrap_or(0.0)) };
    let secs = |v: f64, d: Duration| if v > 0.0 { Duration::from_secs_f64(v) } else { d };
    let d = crate::pg::connect::NetDefaults {
        connect_timeout: secs(num("connect_timeout")?, base.connect_timeout),
        keepalives_idle: secs(num("tcp_keepalives_idle")?, base.keepalives_idle),
        keepalives_interval: secs(num("tcp_keepalives_interval")?, base.keepalives_interval),
        keepalives_count: match num("tcp_keepalives_count")? {
            v if v >= 1.0 => v as u32,
            _ => base.keepalives_count,
        },
        tcp_user_timeout: Duration::from_secs_f64(num("tcp_user_timeout")?.max(0.0)),
    };
    Ok(crate::pg::connect::set_net_defaults(d))
}

fn setting_impl(c: &mut impl GenericClient, name: &str) -> Result<String> {
    let row = c
        .query_opt("SELECT setting FROM capra.config WHERE name = $1", &[&name])
        .ctx(|| format!("reading setting {name}"))?;
    Ok(match row {
        Some(r) => r.get(0),
        None => crate::catalog::settings::find(name)
            .map(|s| s.default.to_string())
            .unwrap_or_default(),
    })
}
