//! The catalog's objects as Rust values, loaded from the control database.

use postgres::GenericClient;
use serde::Serialize;

use crate::domain::{DbStatus, DeleteMethod, Isolation, KeyKind, OneTimeCopy, RelType, Role, Status, Strategy};
use crate::error::{Context, Result};
use crate::pg::connect::ConnSpec;
use crate::pg::ident::QualName;
use crate::pg::RowExt;

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
    pub status: DbStatus,
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

fn db_from_row(r: &postgres::Row) -> Result<Db> {
    const Q: &str = "reading a database from the catalog";
    let password: Option<String> = r.col(5, Q)?;
    Ok(Db {
        name: r.col(0, Q)?,
        dbname: r.col(1, Q)?,
        host: r.col(2, Q)?,
        port: r.col(3, Q)?,
        user: r.col(4, Q)?,
        password_set: password.is_some(),
        password,
        conn: r.col(6, Q)?,
        service: r.col(7, Q)?,
        dbtype: r.col(8, Q)?,
        status: r.col(9, Q)?,
        makedelta: r.col(10, Q)?,
        server_side_prepares: r.col(11, Q)?,
    })
}

/// All databases, by name.
pub fn dbs(c: &mut impl GenericClient) -> Result<Vec<Db>> {
    let rows = c
        .query(
            &format!("SELECT {DB_COLS} FROM capra.db ORDER BY name COLLATE \"C\""),
            &[],
        )
        .ctx(|| "reading databases from the catalog".into())?;
    rows.iter().map(db_from_row).collect()
}

/// One database by name.
pub fn db(c: &mut impl GenericClient, name: &str) -> Result<Option<Db>> {
    let rows = c
        .query(&format!("SELECT {DB_COLS} FROM capra.db WHERE name = $1"), &[&name])
        .ctx(|| format!("reading database \"{name}\" from the catalog"))?;
    rows.first().map(db_from_row).transpose()
}

/// A member of a dbgroup.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Member {
    /// Database name.
    pub db: String,
    /// source, target or fullcopy.
    pub role: Role,
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
    pub fn with_role(&self, role: Role) -> Vec<&Member> {
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
    const Q: &str = "reading a dbgroup member";
    let mut members: Vec<(String, Member)> = Vec::new();
    for m in &maps {
        members.push((
            m.col(0, Q)?,
            Member {
                db: m.col(1, Q)?,
                role: m.col(2, Q)?,
                priority: m.col(3, Q)?,
            },
        ));
    }
    groups
        .iter()
        .map(|g| {
            let name: String = g.col(0, "reading a dbgroup")?;
            let members = members
                .iter()
                .filter(|(group, _)| *group == name)
                .map(|(_, m)| m.clone())
                .collect();
            Ok(DbGroup { name, members })
        })
        .collect()
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
    pub reltype: RelType,
    /// Replication key columns (empty: none).
    pub pkey: Vec<String>,
    /// Their types.
    pub pkeytype: Vec<String>,
    /// `primary` or `unique` (None when there is no key).
    pub keykind: Option<KeyKind>,
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
    pub conflict_strategy: Option<Strategy>,
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
pub fn relations(c: &mut impl GenericClient, reltype: Option<RelType>) -> Result<Vec<Relation>> {
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
    const Q: &str = "reading a table from the catalog";
    rows.iter()
        .map(|r| {
            Ok(Relation {
                id: r.col(0, Q)?,
                db: r.col(1, Q)?,
                name: QualName::new(r.col::<_, String>(2, Q)?, r.col::<_, String>(3, Q)?),
                reltype: r.col(4, Q)?,
                pkey: r.col(5, Q)?,
                pkeytype: r.col(6, Q)?,
                keykind: r.col(7, Q)?,
                autokick: r.col(8, Q)?,
                rebuild_index: r.col(9, Q)?,
                analyze_after_copy: r.col(10, Q)?,
                vacuum_after_copy: r.col(11, Q)?,
                ghost: r.col(12, Q)?,
                conflict_strategy: r.col::<_, Option<String>>(13, Q)?.map(|s| Strategy::parse(&s)),
                strict_checking: r.col(14, Q)?,
                makedelta: r.col(15, Q)?,
                relgroups: r.col(16, Q)?,
                filter: r.col(17, Q)?,
            })
        })
        .collect()
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
    const Q: &str = "reading a relgroup";
    rows.iter()
        .map(|r| {
            Ok(RelGroup {
                name: r.col(0, Q)?,
                db: r.col(1, Q)?,
                members: r.col(2, Q)?,
                syncs: r.col(3, Q)?,
            })
        })
        .collect()
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
    pub status: Status,
    /// Run when a change commits on a source.
    pub autokick: bool,
    /// 0, 1 or 2.
    pub onetimecopy: OneTimeCopy,
    /// Bumped by every onetimecopy request (see migration 3).
    #[serde(skip)]
    pub onetimecopy_gen: i64,
    /// Strategy for multi-source conflicts (None: the default setting).
    pub conflict_strategy: Option<Strategy>,
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
    pub deletemethod: DeleteMethod,
    /// Source snapshot isolation (None: the setting).
    pub isolation_level: Option<Isolation>,
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
    c.query_one(
        "SELECT min(r.db) FROM capra.relgroup_member m JOIN capra.relation r ON r.id = m.relation WHERE m.relgroup = $1",
        &[&relgroup],
    )
    .ctx(|| "finding the relgroup's database".into())?
    .col(0, "finding the relgroup's database")
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
    rows.iter().map(sync_from_row).collect()
}

fn sync_from_row(r: &postgres::Row) -> Result<Sync> {
    const Q: &str = "reading a sync from the catalog";
    Ok(Sync {
        name: r.col(0, Q)?,
        relgroup: r.col(1, Q)?,
        dbgroup: r.col(2, Q)?,
        status: r.col(3, Q)?,
        autokick: r.col(4, Q)?,
        onetimecopy: OneTimeCopy::from_i16(r.col(5, Q)?).map_err(|e| crate::Error::CatalogVersion(e.to_string()))?,
        conflict_strategy: r.col::<_, Option<String>>(6, Q)?.map(|s| Strategy::parse(&s)),
        schedule: r.col(7, Q)?,
        checktime: r.col(8, Q)?,
        stayalive: r.col(9, Q)?,
        kidsalive: r.col(10, Q)?,
        rebuild_index: r.col(11, Q)?,
        analyze_after_copy: r.col(12, Q)?,
        vacuum_after_copy: r.col(13, Q)?,
        makedelta: r.col(14, Q)?,
        deletemethod: r.col(15, Q)?,
        isolation_level: r.col(16, Q)?,
        overdue: r.col(17, Q)?,
        expired: r.col(18, Q)?,
        lifetime: r.col(19, Q)?,
        maxkicks: r.col(20, Q)?,
        priority: r.col(21, Q)?,
        strict_checking: r.col(22, Q)?,
        synctype: r.col(23, Q)?,
        onetimecopy_gen: r.col(24, Q)?,
    })
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
    pub status: Status,
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
    const Q: &str = "reading a hook from the catalog";
    rows.iter()
        .map(|r| {
            Ok(CustomCode {
                name: r.col(0, Q)?,
                whenrun: r.col(1, Q)?,
                src_file: r.col(2, Q)?,
                src_code: r.col(3, Q)?,
                about: r.col(4, Q)?,
                priority: r.col(5, Q)?,
                status: r.col(6, Q)?,
                syncs: r.col(7, Q)?,
                relations: r.col(8, Q)?,
            })
        })
        .collect()
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
    const Q: &str = "reading a setting";
    rows.iter()
        .map(|r| {
            Ok(ConfigRow {
                name: r.col(0, Q)?,
                setting: r.col(1, Q)?,
                defval: r.col(2, Q)?,
                about: r.col(3, Q)?,
            })
        })
        .collect()
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
        Some(r) => r.col(0, "reading a setting")?,
        None => crate::catalog::settings::find(name)
            .map(|s| s.default.to_string())
            .unwrap_or_default(),
    })
}
