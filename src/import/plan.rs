//! What an import would create in capra's catalog, worked out from
//! Bucardo's catalog, capra's catalog and the live databases, with every
//! reason something cannot be carried over. Nothing is written here.

use std::collections::BTreeMap;

use postgres::GenericClient;

use super::bucardo::{self, Snapshot};
use crate::catalog::edit::NewDb;
use crate::catalog::model;
use crate::catalog::sync_opts::SyncOpt;
use crate::domain::{DbStatus, RelType, Role};
use crate::error::{Context, Result};
use crate::pg::discover::{self, Found};
use crate::pg::ident::QualName;
use crate::pg::RowExt;

/// How far an earlier import of a sync got.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// Not imported yet.
    New,
    /// In capra's catalog, but the takeover did not finish: the import
    /// finishes it.
    Resume,
    /// Taken over (at this time): nothing to do.
    Done(String),
}

/// A table or sequence of an imported sync.
#[derive(Clone, Debug)]
pub struct Table {
    /// As Bucardo has it.
    pub goat: bucardo::Goat,
    /// As the live database has it now (capra's key).
    pub found: Found,
    /// Bucardo's herd priority.
    pub priority: i32,
    /// capra's key differs from the one Bucardo captured, so Bucardo's
    /// undelivered changes cannot be named in it: the first run copies the
    /// table whole.
    pub copy_whole: bool,
    /// Per-table options as `key=value` for capra's checks.
    pub options: Vec<(String, String)>,
    /// The same, checked (filled by the caller): column, value, SQL type.
    pub checked: Vec<(String, Option<String>, &'static str)>,
}

/// One Bucardo sync the import carries over.
#[derive(Clone, Debug)]
pub struct SyncImport {
    /// As Bucardo has it.
    pub bucardo: bucardo::Sync,
    /// How far an earlier import got.
    pub stage: Stage,
    /// Whether it replicates changes (needs capture and a takeover).
    pub delta: bool,
    /// Its databases and their capra roles.
    pub members: Vec<(String, Role)>,
    /// Their `dbmap` priorities, where not 0.
    pub priorities: Vec<(String, i32)>,
    /// Its tables and sequences.
    pub tables: Vec<Table>,
    /// Options as `key=value` for capra's checks.
    pub options: Vec<(String, String)>,
    /// The same, checked (filled by the caller).
    pub checked: Vec<SyncOpt>,
    /// What the plan says about it beyond the obvious.
    pub notes: Vec<String>,
}

impl SyncImport {
    /// Its name (Bucardo's and capra's).
    pub fn name(&self) -> &str {
        &self.bucardo.name
    }

    /// Its source databases.
    pub fn sources(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, r)| *r == Role::Source)
            .map(|(d, _)| d.as_str())
            .collect()
    }
}

/// A Perl customcode, saved for porting.
#[derive(Clone, Debug)]
pub struct CodeImport {
    /// As Bucardo has it.
    pub code: bucardo::Code,
    /// capra's name for it.
    pub name: String,
    /// capra's hook point, if capra has Bucardo's.
    pub whenrun: Option<&'static str>,
    /// The imported sync whose plan brought it.
    pub owner: String,
    /// The imported sync it is attached to...
    pub sync: Option<String>,
    /// ...or the table (database, name).
    pub table: Option<(String, QualName)>,
}

/// What an import would do.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Bucardo's version.
    pub version: String,
    /// Databases the imported syncs use, as capra would store them, and
    /// whether capra has them already.
    pub dbs: Vec<(NewDb, bool)>,
    /// Syncs carried over (or already carried over).
    pub syncs: Vec<SyncImport>,
    /// Custom code saved for porting.
    pub codes: Vec<CodeImport>,
    /// What is not carried over, a line each.
    pub left: Vec<String>,
}

/// Syncs that cannot come along, each with why.
pub type Dropped = Vec<(String, String)>;

impl Plan {
    /// Takes syncs out of the plan, each with why (a line under "Not
    /// carried over"); the custom code they brought and the databases no
    /// remaining sync uses go with them.
    pub fn drop_syncs(&mut self, gone: Dropped) {
        if gone.is_empty() {
            return;
        }
        self.syncs.retain(|s| !gone.iter().any(|(n, _)| n == s.name()));
        self.left
            .extend(gone.into_iter().map(|(n, why)| format!("sync \"{n}\": {why}")));
        let syncs = &self.syncs;
        self.codes.retain(|c| syncs.iter().any(|s| s.name() == c.owner));
        self.dbs
            .retain(|(d, _)| syncs.iter().any(|s| s.members.iter().any(|(m, _)| *m == d.name)));
    }
}

/// capra's hook point for a Bucardo `whenrun`, where there is one.
pub fn hook_point(whenrun: &str) -> Option<&'static str> {
    Some(match whenrun {
        "before_sync" => "before_sync",
        "after_sync" => "after_sync",
        "before_txn" => "before_txn",
        "after_txn" => "after_txn",
        "before_check_rows" => "before_check_rows",
        "after_table_sync" => "after_table_sync",
        "conflict" => "conflict",
        "exception" => "exception",
        _ => return None,
    })
}

/// `key=value` pairs as DBD::Pg reads them: a `;` outside single quotes
/// separates like a space, then libpq's rules (a value in single quotes
/// may hold spaces, `\\` escapes). Keys are lowercased.
fn dbd_pairs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let sep = |c: char| c.is_whitespace() || c == ';';
    loop {
        while chars.peek().is_some_and(|c| sep(*c)) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || sep(c) {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'\'') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '\'' => break,
                        _ => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if sep(c) {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key.to_lowercase(), value));
    }
}

/// capra's database entry for a Bucardo database: a `dbi:Pg:` DSN is
/// taken apart; DBD::Pg's `;`-separated extra pairs are libpq keywords;
/// a pgpass file becomes `passfile`.
pub fn new_db(d: &bucardo::Db) -> NewDb {
    let mut dbname = d.dbname.clone();
    let mut host = Some(d.host.clone()).filter(|h| !h.is_empty());
    let mut port = d.port.trim().parse::<i32>().ok();
    let mut user = d.user.clone();
    let mut service = d.service.clone();
    let mut pass = d.pass.clone();
    let quoted = crate::pg::connect::keyword;
    let mut conn: Vec<String> = dbd_pairs(&d.conn).iter().map(|(k, v)| quoted(k, v)).collect();
    if let Some(dsn) = &d.dsn {
        let body = dsn.split_once(':').map(|x| x.1).unwrap_or(dsn);
        let body = body.split_once(':').map(|x| x.1).unwrap_or(body);
        (dbname, host, port, service) = (None, None, None, None);
        conn.clear();
        for (k, v) in dbd_pairs(body) {
            match k.as_str() {
                "dbname" | "db" | "database" => dbname = Some(v),
                "host" => host = Some(v),
                "port" => port = v.parse().ok(),
                "service" => service = Some(v),
                "user" => user = Some(v),
                "password" => pass = Some(crate::sys::Secret::new(v)),
                _ => conn.push(quoted(&k, &v)),
            }
        }
    }
    if pass.is_none() {
        if let Some(f) = &d.pgpass {
            conn.push(quoted("passfile", f));
        }
    }
    NewDb {
        name: d.name.clone(),
        dbname,
        host,
        port,
        user,
        pass,
        conn: conn.join(" "),
        service,
        status: if d.status == "inactive" {
            DbStatus::Inactive
        } else {
            DbStatus::Active
        },
        makedelta: d.makedelta,
        server_side_prepares: true,
    }
}

/// Connects to a database as capra would store it.
pub fn connect(n: &NewDb) -> Result<postgres::Client> {
    crate::pg::connect::open_db(&n.conn_spec(), &n.name)
}

/// The syncs an earlier import recorded: name → when it was taken over.
pub fn imported(c: &mut impl GenericClient) -> Result<BTreeMap<String, Option<String>>> {
    let what = "reading imported syncs";
    c.query(
        "SELECT sync, to_char(taken_over, 'YYYY-MM-DD HH24:MI:SS TZ') FROM capra.imported",
        &[],
    )
    .ctx(|| what.into())?
    .iter()
    .map(|r| Ok((r.col(0, what)?, r.col(1, what)?)))
    .collect()
}

fn flag(row: &serde_json::Value, k: &str) -> Option<bool> {
    match row.get(k)? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => Some(n.as_i64() != Some(0)),
        serde_json::Value::String(s) => Some(s == "1" || s == "t" || s == "true"),
        _ => None,
    }
}

fn text(row: &serde_json::Value, k: &str) -> Option<String> {
    match row.get(k)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A zero interval as PostgreSQL prints it in JSON.
fn zero_interval(s: &str) -> bool {
    s.chars().all(|c| c == '0' || c == ':' || c == ' ') || s == "0 seconds"
}

/// The sync's options as capra keys, with the ones capra has no use for
/// (`inert`: the option and why) left aside.
fn sync_options(
    row: &serde_json::Value,
    delta: bool,
    multi: bool,
    inert: fn(&str) -> Option<&'static str>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut opts = Vec::new();
    let mut unused = Vec::new();
    let mut put = |k: &str, v: String, default: &str| {
        if v == default {
            return;
        }
        match inert(k) {
            Some(why) => unused.push(format!("{k}={v} ({why})")),
            None => opts.push((k.to_string(), v)),
        }
    };
    let b = |x: bool| if x { "true" } else { "false" }.to_string();
    if delta {
        if let Some(v) = flag(row, "autokick") {
            put("autokick", b(v), "true");
        }
    }
    if let Some(v) = row.get("onetimecopy").and_then(serde_json::Value::as_i64) {
        put("onetimecopy", v.to_string(), "0");
    }
    if multi {
        if let Some(v) = text(row, "conflict_strategy") {
            put("conflict_strategy", v, "");
        }
    }
    for k in ["checktime", "overdue", "expired", "lifetime"] {
        if let Some(v) = text(row, k).filter(|v| !zero_interval(v)) {
            put(k, v, "");
        }
    }
    for (k, d) in [
        ("stayalive", "true"),
        ("kidsalive", "true"),
        ("analyze_after_copy", "true"),
        ("vacuum_after_copy", "false"),
        ("makedelta", "false"),
        ("strict_checking", "true"),
    ] {
        if let Some(v) = flag(row, k) {
            put(k, b(v), d);
        }
    }
    if let Some(v) = row.get("rebuild_index").and_then(serde_json::Value::as_i64) {
        put("rebuild_index", v.to_string(), "0");
    }
    for (k, d) in [("maxkicks", "0"), ("priority", "0")] {
        if let Some(v) = text(row, k) {
            put(k, v, d);
        }
    }
    if let Some(v) = text(row, "isolation_level") {
        put("isolation_level", v, "");
    }
    // Bucardo's default is delete, capra's truncate: keep what Bucardo did.
    put(
        "deletemethod",
        text(row, "deletemethod").unwrap_or_else(|| "delete".into()),
        "",
    );
    if let Some(v) = text(row, "copyextra") {
        unused.push(format!(
            "copyextra={v} (no capra equivalent: its copies take no extra COPY options)"
        ));
    }
    if flag(row, "track_rates") == Some(true) {
        unused.push("track_rates=true (no effect in Bucardo 5 either)".into());
    }
    (opts, unused)
}

/// A table's own options (NULL: the sync's) as capra keys.
fn table_options(row: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = |x: bool| if x { "true" } else { "false" }.to_string();
    if let Some(v) = flag(row, "autokick") {
        out.push(("autokick".into(), b(v)));
    }
    if let Some(v) = text(row, "conflict_strategy") {
        out.push(("conflict_strategy".into(), v));
    }
    if let Some(v) = text(row, "makedelta") {
        out.push(("makedelta".into(), v));
    }
    if let Some(v) = row.get("rebuild_index").and_then(serde_json::Value::as_i64) {
        out.push(("rebuild_index".into(), v.to_string()));
    }
    for (k, d) in [
        ("ghost", false),
        ("analyze_after_copy", true),
        ("vacuum_after_copy", true),
        ("strict_checking", true),
    ] {
        if let Some(v) = flag(row, k).filter(|v| *v != d) {
            out.push((k.into(), b(v)));
        }
    }
    out
}

/// Live tables, sequences and connection errors of each database, read once.
#[derive(Default)]
struct Live(BTreeMap<String, std::result::Result<LiveDb, String>>);

/// One database as the plan reads it: its tables and sequences, the
/// tables Bucardo's row trigger captures there, and those of them whose
/// triggers the connecting role may not alter (it does not own them).
type LiveDb = (Vec<Found>, Vec<QualName>, Vec<QualName>);

impl Live {
    fn read(d: &NewDb) -> std::result::Result<LiveDb, String> {
        let mut c = connect(d).map_err(|e| crate::pg::error::flatten(&e.to_string()))?;
        let mut all = discover::tables(&mut c).map_err(|e| e.to_string())?;
        all.extend(discover::sequences(&mut c).map_err(|e| e.to_string())?);
        // Tables Bucardo's row trigger captures here.
        let rows = c
            .query(
                "SELECT n.nspname::text, r.relname::text, pg_catalog.pg_has_role(r.relowner, 'USAGE')
                        AND pg_catalog.has_schema_privilege(p.pronamespace, 'USAGE')
                   FROM pg_catalog.pg_trigger t
                   JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) t.tgrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
                   JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
                   JOIN pg_catalog.pg_namespace pn ON pn.oid OPERATOR(pg_catalog.=) p.pronamespace
                  WHERE pn.nspname OPERATOR(pg_catalog.=) 'bucardo' AND p.proname OPERATOR(pg_catalog.~~) 'delta\\_%'",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let name = |r: &postgres::Row| QualName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let captured = rows.iter().map(name).collect();
        let locked = rows.iter().filter(|r| !r.get::<_, bool>(2)).map(name).collect();
        Ok((all, captured, locked))
    }

    fn get(&mut self, d: &NewDb) -> &std::result::Result<LiveDb, String> {
        self.0.entry(d.name.clone()).or_insert_with(|| Self::read(d))
    }

    fn of(&mut self, d: &NewDb) -> std::result::Result<&Vec<Found>, String> {
        match self.get(d) {
            Ok((all, _, _)) => Ok(all),
            Err(e) => Err(e.clone()),
        }
    }

    /// Whether Bucardo captures `t` on `d`, and whether the role may
    /// disable its triggers there (None: unreachable).
    fn captured(&mut self, d: &NewDb, t: &QualName) -> Option<(bool, bool)> {
        match self.get(d) {
            Ok((_, c, locked)) => Some((c.contains(t), !locked.contains(t))),
            Err(_) => None,
        }
    }
}

/// A sync's shape in capra: its members with their roles, whether it
/// replicates changes, and notes for the plan.
type Shape = (Vec<(String, Role)>, bool, Vec<String>);

/// A sync's shape in capra, or why it cannot be carried over.
fn shape(s: &Snapshot, sync: &bucardo::Sync) -> std::result::Result<Shape, String> {
    let members = s.members_of(sync);
    if members.is_empty() {
        return Err(format!("its dbgroup \"{}\" has no databases", sync.dbs));
    }
    let mut notes = Vec::new();
    for m in &members {
        let Some(d) = s.db(&m.db) else {
            return Err(format!("database \"{}\" is missing from Bucardo's catalog", m.db));
        };
        let t = d.dbtype.to_lowercase();
        if !(t.starts_with("postgres") || t.starts_with("pg")) {
            return Err(format!(
                "database \"{}\" is {}: capra replicates PostgreSQL only; this sync stays in Bucardo",
                d.name, d.dbtype
            ));
        }
    }
    let (sources, targets) = s.active_roles(sync);
    let delta = targets > 0 || sources > 1;
    let mut out = Vec::new();
    for m in &members {
        let role = match m.role.as_str() {
            "source" => Role::Source,
            // Bucardo sends nothing to a fullcopy database of a sync that
            // has targets or several sources: capra leaves it out too,
            // rather than start writing rows into it.
            "fullcopy" if delta => {
                notes.push(format!(
                    "database \"{}\" is a fullcopy member of a delta sync, which Bucardo never writes to: left out",
                    m.db
                ));
                continue;
            }
            "fullcopy" => Role::Fullcopy,
            _ => Role::Target,
        };
        out.push((m.db.clone(), role));
    }
    Ok((out, delta, notes))
}

/// Why a sync's tables or their databases cannot come along, if they
/// cannot: a `customname` or `customcols` row, an empty relgroup.
fn unsupported(s: &Snapshot, sync: &bucardo::Sync) -> Option<String> {
    let goats = s.goats_of(sync);
    let renamed: Vec<String> = s
        .renames
        .iter()
        .filter(|(g, sy, _)| goats.iter().any(|(x, _)| x.id == *g) && sy.as_ref().is_none_or(|x| *x == sync.name))
        .map(|(g, _, what)| {
            let goat = goats.iter().find(|(x, _)| x.id == *g).map(|(x, _)| x);
            format!(
                "{what} on {}",
                goat.map(|x| QualName::new(&x.schema, &x.name).shown())
                    .unwrap_or_default()
            )
        })
        .collect();
    if !renamed.is_empty() {
        return Some(format!(
            "it uses {} (target-side names or column lists), which capra has no equivalent for; it stays in Bucardo",
            renamed.join(", ")
        ));
    }
    if goats.is_empty() {
        return Some(format!("its relgroup \"{}\" is empty", sync.herd));
    }
    None
}

/// A sync's tables as the live databases have them, with the plan's notes
/// on tables copied whole; Err says why the sync cannot come along.
fn tables_of(
    s: &Snapshot,
    sync: &bucardo::Sync,
    delta: bool,
    multi: bool,
    live: &mut Live,
    notes: &mut Vec<String>,
) -> std::result::Result<Vec<Table>, String> {
    let mut tables = Vec::new();
    for (g, priority) in s.goats_of(sync) {
        let qn = QualName::new(&g.schema, &g.name);
        let bdb = s.db(&g.db).ok_or_else(|| {
            format!(
                "database \"{}\" of {} is missing from Bucardo's catalog",
                g.db,
                qn.shown()
            )
        })?;
        let found = match live.of(&new_db(bdb)) {
            Err(e) => return Err(format!("cannot reach database \"{}\": {e}", g.db)),
            Ok(all) => all
                .iter()
                .find(|f| f.name.schema == g.schema && f.name.name == g.name)
                .cloned(),
        };
        let found = found.ok_or_else(|| format!("{} {} no longer exists on \"{}\"", g.reltype, qn.shown(), g.db))?;
        let mut copy_whole = false;
        if delta && found.reltype == RelType::Table {
            let key = found.key.as_ref().ok_or_else(|| {
                format!(
                    "table {} on \"{}\" has no primary key or unique index on NOT NULL columns, which a delta sync needs; add one (or make the sync fullcopy in Bucardo)",
                    qn.shown(),
                    g.db
                )
            })?;
            // The same columns in another order name the same rows.
            let (mut a, mut b) = (key.columns.clone(), g.pkey.clone());
            a.sort();
            b.sort();
            if a != b {
                let (now, was) = (key.columns.join(", "), g.pkey.join(", "));
                if multi {
                    return Err(format!(
                        "table {} has the key ({now}) now, not the ({was}) Bucardo captured, and a sync with several sources cannot be copied whole; make the keys agree first",
                        qn.shown()
                    ));
                }
                copy_whole = true;
                notes.push(format!(
                    "table {} is copied whole by the first run: its key is ({now}) now, Bucardo captured ({was})",
                    qn.shown()
                ));
            }
            for m in s.members_of(sync).iter().filter(|m| m.role == "source") {
                let Some(d) = s.db(&m.db) else { continue };
                let seen = live.captured(&new_db(d), &qn);
                if seen == Some((true, false)) {
                    return Err(format!(
                        "the role that reaches \"{}\" ({}) does not own {}, so it cannot disable Bucardo's triggers there; give Bucardo's database entry the table's owner or a superuser",
                        m.db,
                        d.user.as_deref().unwrap_or("the default"),
                        qn.shown()
                    ));
                }
                if !copy_whole && seen.is_some_and(|(c, _)| !c) {
                    notes.push(format!(
                        "table {} is not captured by Bucardo on \"{}\" (added to the sync since Bucardo last started?): capra sends its changes from now on, as Bucardo would have; rows written before reach the targets only with onetimecopy",
                        qn.shown(),
                        m.db
                    ));
                }
            }
        }
        tables.push(Table {
            goat: g.clone(),
            found,
            priority,
            copy_whole,
            options: table_options(&g.row),
            checked: Vec::new(),
        });
    }
    Ok(tables)
}

/// One sync's part of the plan; Err says why it cannot come along.
fn plan_sync(
    s: &Snapshot,
    sync: &bucardo::Sync,
    stage: Stage,
    live: &mut Live,
    inert: fn(&str) -> Option<&'static str>,
    left: &mut Vec<String>,
) -> std::result::Result<SyncImport, String> {
    let (members, delta, mut notes) = shape(s, sync)?;
    if let Some(why) = unsupported(s, sync) {
        return Err(why);
    }
    let multi = members.iter().filter(|(_, r)| *r == Role::Source).count() > 1;
    let (options, unused) = sync_options(&sync.row, delta, multi, inert);
    let tables = tables_of(s, sync, delta, multi, live, &mut notes)?;
    for u in unused {
        left.push(format!("sync \"{}\": option {u}", sync.name));
    }
    let priorities = s
        .members_of(sync)
        .iter()
        .filter(|m| m.priority != 0 && members.iter().any(|(d, _)| *d == m.db))
        .map(|m| (m.db.clone(), m.priority))
        .collect();
    Ok(SyncImport {
        bucardo: sync.clone(),
        stage,
        delta,
        members,
        priorities,
        tables,
        options,
        checked: Vec::new(),
        notes,
    })
}

/// The Perl custom code attached to a sync being imported or to one of
/// its tables, with capra names that do not collide.
fn plan_codes(s: &Snapshot, syncs: &[SyncImport]) -> Vec<CodeImport> {
    let mut out: Vec<CodeImport> = Vec::new();
    for code in &s.codes {
        for m in s.code_maps.iter().filter(|m| m.code == code.id) {
            let sync = m
                .sync
                .clone()
                .filter(|x| syncs.iter().any(|p| p.name() == x && p.stage == Stage::New));
            let table = m.goat.and_then(|g| {
                syncs
                    .iter()
                    .filter(|p| p.stage == Stage::New)
                    .find_map(|p| {
                        p.tables
                            .iter()
                            .find(|t| t.goat.id == g)
                            .map(|t| (p.name().to_string(), t))
                    })
                    .map(|(owner, t)| (owner, t.goat.db.clone(), t.found.name.clone()))
            });
            let owner = match (&sync, &table) {
                (Some(s), _) => s.clone(),
                (None, Some((o, _, _))) => o.clone(),
                (None, None) => continue,
            };
            let mut n: String = code
                .name
                .chars()
                .map(|ch| {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        ch
                    } else {
                        '_'
                    }
                })
                .collect();
            if !n.starts_with(|ch: char| ch.is_ascii_alphabetic()) {
                n = format!("bucardo_{n}");
            }
            n.truncate(55);
            let base = n.clone();
            let mut i = 2;
            while out.iter().any(|c| c.name == n) {
                n = format!("{base}_{i}");
                i += 1;
            }
            out.push(CodeImport {
                code: code.clone(),
                name: n,
                whenrun: hook_point(&code.whenrun),
                owner,
                sync,
                table: table.map(|(_, d, t)| (d, t)),
            });
        }
    }
    out
}

/// Works out the plan. `inert` says which sync options capra has no use
/// for (the command line's list).
pub fn build(c: &mut impl GenericClient, s: &Snapshot, inert: fn(&str) -> Option<&'static str>) -> Result<Plan> {
    let done = imported(c)?;
    let capra_syncs: Vec<String> = model::syncs(c)?.into_iter().map(|x| x.name).collect();
    let capra_dbs = model::dbs(c)?;
    let mut plan = Plan {
        version: s.version.clone(),
        ..Plan::default()
    };
    let mut live = Live::default();
    for sync in &s.syncs {
        let name = &sync.name;
        let stage = match done.get(name) {
            Some(Some(at)) => Stage::Done(at.clone()),
            Some(None) => Stage::Resume,
            None => Stage::New,
        };
        if stage == Stage::New && sync.status == "inactive" {
            plan.left.push(format!(
                "sync \"{name}\": inactive in Bucardo, so it is not imported (activate it there first, or add it to capra by hand)"
            ));
            continue;
        }
        if stage == Stage::New && capra_syncs.contains(name) {
            plan.left.push(format!(
                "sync \"{name}\": capra already has a sync of that name that no import made; rename or remove it in capra first"
            ));
            continue;
        }
        if let Stage::Done(_) = stage {
            // Nothing more to read for it: the second import is quiet.
            plan.syncs.push(SyncImport {
                bucardo: sync.clone(),
                stage,
                delta: false,
                members: Vec::new(),
                priorities: Vec::new(),
                tables: Vec::new(),
                options: Vec::new(),
                checked: Vec::new(),
                notes: Vec::new(),
            });
            continue;
        }
        let si = match plan_sync(s, sync, stage, &mut live, inert, &mut plan.left) {
            Ok(si) => si,
            Err(why) => {
                plan.left.push(format!("sync \"{name}\": {why}"));
                continue;
            }
        };
        for (d, _) in &si.members {
            if plan.dbs.iter().any(|(n, _)| &n.name == d) {
                continue;
            }
            if let Some(bdb) = s.db(d) {
                plan.dbs.push((new_db(bdb), capra_dbs.iter().any(|x| x.name == *d)));
            }
        }
        plan.syncs.push(si);
    }
    plan.codes = plan_codes(s, &plan.syncs);
    Ok(plan)
}

/// A password-free one-line summary of how a database is reached.
pub fn reach(n: &NewDb) -> String {
    let mut v = Vec::new();
    if let Some(x) = &n.dbname {
        v.push(format!("dbname={x}"));
    }
    if let Some(x) = &n.host {
        v.push(format!("host={x}"));
    }
    if let Some(x) = n.port {
        v.push(format!("port={x}"));
    }
    if let Some(x) = &n.user {
        v.push(format!("user={x}"));
    }
    if let Some(x) = &n.service {
        v.push(format!("service={x}"));
    }
    if !n.conn.is_empty() {
        let kw = crate::pg::connect::parse_keywords(&n.conn).unwrap_or_default();
        for (k, val) in kw {
            if k == "password" {
                v.push("password=(hidden)".into());
            } else {
                v.push(format!("{k}={val}"));
            }
        }
    }
    if n.pass.is_some() {
        v.push("password (stored, hidden)".into());
    }
    v.join(" ")
}

/// Syncs that must not be imported because they pass changes on to, or
/// take them from, a Bucardo sync that stays (a database one sync writes
/// with makedelta and another reads): capra's writes are invisible to
/// Bucardo's capture and Bucardo's to capra's, so such a chain moves
/// together or not at all. Returns (sync, why).
pub fn broken_chains(s: &Snapshot, importing: &std::collections::BTreeSet<String>) -> Dropped {
    let mut out = Vec::new();
    let staying: Vec<&bucardo::Sync> = s
        .syncs
        .iter()
        .filter(|x| x.status != "inactive" && !importing.contains(&x.name))
        .collect();
    let shares = |a: &bucardo::Sync, b: &bucardo::Sync| {
        let bt = s.goats_of(b);
        s.goats_of(a)
            .iter()
            .any(|(g, _)| bt.iter().any(|(h, _)| h.schema == g.schema && h.name == g.name))
    };
    for name in importing {
        let Some(sync) = s.syncs.iter().find(|x| &x.name == name) else {
            continue;
        };
        for other in &staying {
            if !shares(sync, other) {
                continue;
            }
            // Where `up` writes: its targets, and every member when it
            // has several sources (each one receives the others' changes).
            let into = |up: &bucardo::Sync, down: &bucardo::Sync| -> Option<String> {
                let multi = s.members_of(up).iter().filter(|m| m.role == "source").count() > 1;
                s.members_of(up)
                    .iter()
                    .filter(|m| multi || m.role != "source")
                    .find(|m| {
                        s.members_of(down).iter().any(|d| d.db == m.db && d.role == "source")
                            && s.makedelta_into(up, &m.db)
                    })
                    .map(|m| m.db.clone())
            };
            if let Some(db) = into(sync, other).or_else(|| into(other, sync)) {
                out.push((
                    name.clone(),
                    format!(
                        "it is chained through database \"{db}\" (makedelta) with Bucardo sync \"{}\", which stays in Bucardo; import both or neither",
                        other.name
                    ),
                ));
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(conn: &str, dsn: Option<&str>) -> bucardo::Db {
        bucardo::Db {
            name: "A".into(),
            dbtype: "postgres".into(),
            host: "h1".into(),
            port: "5433".into(),
            dbname: Some("shop".into()),
            user: Some("bucardo".into()),
            pass: None,
            conn: conn.into(),
            service: None,
            dsn: dsn.map(String::from),
            pgpass: Some("/etc/bucardo/pgpass".into()),
            status: "active".into(),
            makedelta: false,
        }
    }

    #[test]
    fn dbd_pg_pairs_and_dsns_become_libpq_keywords() {
        let n = new_db(&db(
            "sslmode=require;options='-c search_path=x' application_name=b",
            None,
        ));
        assert_eq!(
            (n.host.as_deref(), n.port, n.dbname.as_deref()),
            (Some("h1"), Some(5433), Some("shop"))
        );
        let kw = crate::pg::connect::parse_keywords(&n.conn).unwrap();
        assert_eq!(kw["sslmode"], "require");
        assert_eq!(kw["options"], "-c search_path=x");
        assert_eq!(kw["application_name"], "b");
        assert_eq!(kw["passfile"], "/etc/bucardo/pgpass");
        let n = new_db(&db(
            "",
            Some("dbi:Pg:db=other;host=h2;port=6000;password='p w';sslmode=verify-full"),
        ));
        assert_eq!(
            (n.host.as_deref(), n.port, n.dbname.as_deref()),
            (Some("h2"), Some(6000), Some("other"))
        );
        assert_eq!(n.pass.as_ref().map(|p| p.expose()), Some("p w"));
        let kw = crate::pg::connect::parse_keywords(&n.conn).unwrap();
        assert_eq!(kw.get("password"), None);
        assert_eq!(kw.get("passfile"), None, "a password beats the pgpass file");
        assert_eq!(kw["sslmode"], "verify-full");
        assert!(!reach(&n).contains("p w"), "{}", reach(&n));
    }
}
