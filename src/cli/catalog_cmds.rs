//! `add`, `update`, `remove`, `set`, `activate`, `deactivate`: each one
//! catalog transaction; on any error nothing is written.

use postgres::Transaction;

use super::{AddAll, AddNoun, AllWhat, Ctx, Noun, Words};
use crate::capture::discover::{self, Found};
use crate::capture::reconcile;
use crate::catalog::edit::{self, NewDb};
use crate::catalog::kv::{self, check_name, key, Key};
use crate::catalog::model::{self, Relation};
use crate::catalog::{settings, sync_opts, Catalog};
use crate::error::{Context, Error, Result};
use crate::pg::{self, connect::ConnSpec, ident::split_user_name};

const DB_KEYS: &[Key] = &[
    key("dbname", &["db"]),
    key("name", &[]),
    key("host", &["dbhost", "pghost"]),
    key("port", &["dbport", "pgport"]),
    key("user", &["username", "dbuser"]),
    key("pass", &["password", "dbpass"]),
    key("conn", &["dbconn", "pgconn"]),
    key("service", &["dbservice"]),
    key("dbtype", &["type"]),
    key("status", &["stat"]),
    key("makedelta", &[]),
    key("server_side_prepares", &["ssp"]),
    key("group", &["dbgroup"]),
];

const REL_KEYS: &[Key] = &[
    key("db", &["database"]),
    key("relgroup", &["herd"]),
    key("standard_conflict", &["conflict_strategy"]),
];

const TABLE_UPDATE_KEYS: &[Key] = &[
    key("db", &["database"]),
    key("pkey", &[]),
    key("autokick", &["ping"]),
    key("rebuild_index", &[]),
    key("analyze_after_copy", &[]),
    key("vacuum_after_copy", &[]),
    key("ghost", &[]),
    key("conflict_strategy", &["standard_conflict"]),
    key("strict_checking", &[]),
    key("makedelta", &[]),
];

const CODE_KEYS: &[Key] = &[
    key("whenrun", &["when_run"]),
    key("src_code", &["src", "file"]),
    key("sync", &[]),
    key("relation", &["table"]),
    key("db", &[]),
    key("priority", &[]),
    key("status", &[]),
    key("about", &[]),
];

/// Runs a catalog edit that may change what syncs capture: notes the
/// affected syncs' sources first, then brings capture on the sources in line
/// inside open transactions committed right after the catalog.
fn edit_with_capture<T>(
    cat: &mut Catalog,
    affected: impl FnOnce(&mut Transaction<'_>) -> Result<Vec<String>>,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let inst = cat.installation.clone();
    let (out, pending) = cat.edit(|tx| {
        let syncs = affected(tx)?;
        let before = reconcile::before(tx, &syncs)?;
        let out = f(tx)?;
        let pending = reconcile::apply(tx, &inst, &before)?;
        Ok((out, pending))
    })?;
    pending.commit()?;
    Ok(out)
}

/// `capra add ...`.
pub fn add(ctx: &Ctx, noun: AddNoun) -> Result<()> {
    match noun {
        AddNoun::Db(w) => add_db(ctx, &w),
        AddNoun::All(a) => add_all(ctx, a),
        AddNoun::Table(w) => add_relations(ctx, &w, "table"),
        AddNoun::Sequence(w) => add_relations(ctx, &w, "sequence"),
        AddNoun::Relgroup(w) => add_relgroup(ctx, &w),
        AddNoun::Dbgroup(w) => add_dbgroup(ctx, &w),
        AddNoun::Sync(w) => add_sync(ctx, &w),
        AddNoun::Customcode(w) => add_customcode(ctx, &w),
    }
}

/// `capra update ...`.
pub fn update(ctx: &Ctx, noun: Noun) -> Result<()> {
    match noun {
        Noun::Db(w) => update_db(ctx, &w),
        Noun::Sync(w) => update_sync(ctx, &w),
        Noun::Dbgroup(w) => update_dbgroup(ctx, &w),
        Noun::Table(w) => update_relation(ctx, &w, "table"),
        Noun::Sequence(w) => update_relation(ctx, &w, "sequence"),
        Noun::Customcode(w) => update_customcode(ctx, &w),
        Noun::Relgroup(w) => update_relgroup(ctx, &w),
    }
}

/// `capra remove ...`.
pub fn remove(ctx: &Ctx, noun: Noun) -> Result<()> {
    let mut cat = ctx.catalog()?;
    let lines = match noun {
        Noun::Db(w) => {
            let names = names_only(&w, "remove db")?;
            let n2 = names.clone();
            edit_with_capture(
                &mut cat,
                |tx| {
                    let mut v = Vec::new();
                    for n in &n2 {
                        for g in tx
                            .query("SELECT dbgroup FROM capra.dbmap WHERE db = $1", &[n])
                            .ctx(|| "finding dbgroups".into())?
                        {
                            v.extend(reconcile::syncs_of_dbgroup(tx, &g.get::<_, String>(0))?);
                        }
                    }
                    Ok(v)
                },
                |tx| {
                    let mut out = Vec::new();
                    for n in &names {
                        out.extend(edit::remove_db(tx, n, w.force)?);
                    }
                    Ok(out)
                },
            )?
        }
        Noun::Table(w) | Noun::Sequence(w) if w.words.is_empty() => {
            return Err(Error::Usage("name the tables or sequences to remove".into()))
        }
        Noun::Table(w) => remove_relations(&mut cat, &w, "table")?,
        Noun::Sequence(w) => remove_relations(&mut cat, &w, "sequence")?,
        Noun::Relgroup(w) => {
            let names = names_only(&w, "remove relgroup")?;
            cat.edit(|tx| {
                for n in &names {
                    edit::remove_relgroup(tx, n)?;
                }
                Ok(names.iter().map(|n| format!("Removed relgroup \"{n}\"")).collect())
            })?
        }
        Noun::Dbgroup(w) => {
            let names = names_only(&w, "remove dbgroup")?;
            let n2 = names.clone();
            edit_with_capture(
                &mut cat,
                |tx| {
                    let mut v = Vec::new();
                    for n in &n2 {
                        v.extend(reconcile::syncs_of_dbgroup(tx, n)?);
                    }
                    Ok(v)
                },
                |tx| {
                    let mut out = Vec::new();
                    for n in &names {
                        out.extend(edit::remove_dbgroup(tx, n, w.force)?);
                    }
                    Ok(out)
                },
            )?
        }
        Noun::Sync(w) => {
            let names = super::strip_noise(&names_only(&w, "remove sync")?);
            let n2 = names.clone();
            edit_with_capture(
                &mut cat,
                |_| Ok(n2),
                |tx| {
                    let mut out = Vec::new();
                    for n in &names {
                        out.extend(edit::remove_sync(tx, n)?);
                    }
                    Ok(out)
                },
            )?
        }
        Noun::Customcode(w) => {
            let names = names_only(&w, "remove customcode")?;
            cat.edit(|tx| {
                for n in &names {
                    let k = tx
                        .execute("DELETE FROM capra.customcode WHERE name = $1", &[n])
                        .ctx(|| format!("removing customcode \"{n}\""))?;
                    if k == 0 {
                        return Err(Error::not_found_hint(
                            "customcode",
                            n.clone(),
                            "see: capra list customcodes",
                        ));
                    }
                }
                Ok(names.iter().map(|n| format!("Removed customcode \"{n}\"")).collect())
            })?
        }
    };
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

fn names_only(w: &Words, what: &str) -> Result<Vec<String>> {
    if w.words.is_empty() {
        return Err(Error::Usage(format!("'{what}' needs at least one name")));
    }
    if let Some(bad) = w.words.iter().find(|x| x.contains('=')) {
        return Err(Error::Usage(format!(
            "unexpected option {bad:?} for '{what}': give names only"
        )));
    }
    Ok(w.words.clone())
}

fn add_db(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, DB_KEYS, "add db")?;
    // Bucardo 4: `add database DBNAME name=NAME`; Bucardo 5: `add db NAME dbname=DBNAME`.
    let (name, dbname) = match a.get("name") {
        Some(n) => {
            if a.positional.len() > 1 || (a.positional.len() == 1 && a.has("dbname")) {
                return Err(Error::Usage(
                    "with name=, give the real database name once: add database DBNAME name=NAME".into(),
                ));
            }
            (
                n.to_string(),
                a.positional.first().cloned().or(a.get("dbname").map(String::from)),
            )
        }
        None => {
            if a.positional.len() != 1 {
                return Err(Error::Usage(
                    "usage: capra add db NAME dbname=DBNAME [host=H] [port=P] [user=U] [pass=X] [conn=K=V] [service=S]"
                        .into(),
                ));
            }
            (a.positional[0].clone(), a.get("dbname").map(String::from))
        }
    };
    check_name("database", &name)?;
    if dbname.is_none() && !a.has("service") {
        return Err(Error::Usage(format!(
            "database \"{name}\" needs dbname=DBNAME (or service=NAME)"
        )));
    }
    if let Some(t) = a.get("dbtype") {
        let t = t.to_lowercase();
        if !(t.starts_with("pg") || t.starts_with("postgres")) {
            return Err(Error::Usage(format!(
                "invalid value for 'dbtype': {t:?} (capra replicates PostgreSQL only: dbtype=postgres)"
            )));
        }
    }
    let port = match a.get("port") {
        Some(p) => Some(parse_port(p)?),
        None => None,
    };
    let conn = a.get("conn").unwrap_or("").to_string();
    check_conn(&conn)?;
    let status = a
        .choice("status", &["active", "inactive"])?
        .unwrap_or_else(|| "active".into());
    let group = match a.get("group") {
        Some(g) => {
            let (gname, role) = match g.split_once(':') {
                Some((n, r)) => (n.to_string(), Some(edit::parse_role(r)?)),
                None => (g.to_string(), None),
            };
            check_name("dbgroup", &gname)?;
            Some((gname, role))
        }
        None => None,
    };
    let new = NewDb {
        name: name.clone(),
        dbname,
        host: a.get("host").map(String::from),
        port,
        user: Some(a.get("user").map(String::from).unwrap_or_else(|| ctx.control_user())),
        pass: a.get("pass").map(String::from),
        conn,
        service: a.get("service").map(String::from),
        status,
        makedelta: a.bool("makedelta")?.unwrap_or(false),
        server_side_prepares: a.bool("server_side_prepares")?.unwrap_or(true),
    };
    let mut cat = ctx.catalog()?;
    // Refuse duplicates before spending a connection attempt.
    if model::db(&mut cat.client, &name)?.is_some() {
        return Err(Error::Rejected(format!(
            "Cannot add database: the name \"{name}\" already exists (see: capra list dbs)"
        )));
    }
    if !w.force {
        let spec = ConnSpec {
            host: new.host.clone(),
            port: new.port.map(|p| p as u16),
            user: new.user.clone(),
            dbname: new.dbname.clone(),
            password: new.pass.clone(),
            conn: new.conn.clone(),
            service: new.service.clone(),
        };
        pg::connect::open_db(&spec, &name)
            .map_err(|e| e.with_hint("check the settings, or add it anyway with --force"))?;
    }
    let lines = cat.edit(|tx| {
        edit::add_db(tx, &new)?;
        let mut out = vec![format!("Added database \"{name}\"")];
        if let Some((g, role)) = &group {
            if model::dbgroup(tx, g)?.is_none() {
                tx.execute("INSERT INTO capra.dbgroup (name) VALUES ($1)", &[g])
                    .ctx(|| format!("creating dbgroup \"{g}\""))?;
                out.push(format!("Created dbgroup \"{g}\""));
            }
            let first = tx
                .query_one("SELECT count(*) = 0 FROM capra.dbmap WHERE dbgroup = $1", &[g])
                .ctx(|| "reading dbgroup".into())?
                .get::<_, bool>(0);
            let role = role.unwrap_or(if first { "source" } else { "target" });
            tx.execute(
                "INSERT INTO capra.dbmap (dbgroup, db, role, position)
                 VALUES ($1, $2, $3, (SELECT count(*) FROM capra.dbmap WHERE dbgroup = $1))",
                &[g, &name, &role],
            )
            .ctx(|| format!("adding database \"{name}\" to dbgroup \"{g}\""))?;
            out.push(format!("Added database \"{name}\" to dbgroup \"{g}\" as {role}"));
        }
        Ok(out)
    })?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// Checks `conn=` keywords; a password there would be shown wherever the
/// connection is (list dbs, --json, change messages), so it goes in pass=.
fn check_conn(conn: &str) -> Result<()> {
    let kw = pg::connect::parse_keywords(conn).map_err(|e| Error::Usage(format!("invalid value for 'conn': {e}")))?;
    for k in ["password", "host", "port", "dbname", "user", "service"] {
        if kw.contains_key(k) {
            let hint = if k == "password" {
                "pass=, which is never shown".to_string()
            } else {
                format!("{k}=")
            };
            return Err(Error::Usage(format!(
                "'{k}' does not belong in conn=; give it as {hint}"
            )));
        }
    }
    Ok(())
}

fn parse_port(p: &str) -> Result<i32> {
    match p.trim().parse::<i32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ => Err(Error::Usage(format!(
            "invalid value for 'port': {p:?} (must be a number from 1 to 65535)"
        ))),
    }
}

fn update_db(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, DB_KEYS, "update db")?;
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage("usage: capra update db NAME key=value...".into()));
    };
    if a.has("name") {
        return Err(Error::Usage(
            "a database entry cannot be renamed; to change the real database name use dbname=".into(),
        ));
    }
    if a.has("group") {
        return Err(Error::Usage("change group membership with capra update dbgroup".into()));
    }
    if a.pairs.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to change for database \"{name}\": give key=value pairs"
        )));
    }
    let mut changes: Vec<edit::DbChange> = Vec::new();
    for (k, v) in &a.pairs {
        let (col, val): (&'static str, Option<String>) = match k.as_str() {
            "dbname" => ("dbname", Some(v.clone())),
            "host" => ("host", opt_text(v)),
            "port" => (
                "port",
                if v.trim().is_empty() {
                    None
                } else {
                    Some(parse_port(v)?.to_string())
                },
            ),
            "user" => ("dbuser", opt_text(v)),
            "pass" => ("dbpass", opt_text(v)),
            "conn" => {
                check_conn(v)?;
                ("conn", Some(v.clone()))
            }
            "service" => ("service", opt_text(v)),
            "status" => ("status", Some(kv::check_choice(k, v, &["active", "inactive"])?)),
            "makedelta" => ("makedelta", a.bool(k)?.map(|b| b.to_string())),
            "server_side_prepares" => ("server_side_prepares", a.bool(k)?.map(|b| b.to_string())),
            "dbtype" => {
                return Err(Error::Usage(
                    "dbtype cannot change (capra replicates PostgreSQL only)".into(),
                ))
            }
            _ => unreachable!("filtered by DB_KEYS"),
        };
        let shown = if col == "dbpass" {
            "(hidden)".to_string()
        } else {
            val.clone().unwrap_or_else(|| "(none)".into())
        };
        changes.push((col, val, shown));
    }
    let mut cat = ctx.catalog()?;
    let lines = cat.edit(|tx| {
        let out = edit::update_db(tx, name, &changes)?;
        if !w.force
            && changes
                .iter()
                .any(|c| c.0 != "status" && c.0 != "makedelta" && c.0 != "server_side_prepares")
        {
            let db = model::db(tx, name)?.expect("updated above");
            db.connect()
                .map_err(|e| e.with_hint("nothing was changed; use --force to store it anyway"))?;
        }
        Ok(out)
    })?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

fn opt_text(v: &str) -> Option<String> {
    let t = v.trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    }
}

/// Picks the database to read tables from: `db=`, else the only one.
fn pick_db(cat: &mut Catalog, db: Option<&str>) -> Result<model::Db> {
    match db {
        Some(n) => {
            model::db(&mut cat.client, n)?.ok_or_else(|| Error::not_found_hint("database", n, "see: capra list dbs"))
        }
        None => {
            let all = model::dbs(&mut cat.client)?;
            match all.len() {
                0 => Err(Error::Rejected(
                    "no databases yet: add one first with capra add db NAME dbname=...".into(),
                )),
                1 => Ok(all.into_iter().next().unwrap()),
                _ => Err(Error::Usage(format!(
                    "say which database to read from with db=NAME (one of: {})",
                    all.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

fn split_commas(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a live relation passes the -t/-T/-n/-N filters.
fn passes(f: &Found, only_t: &[String], skip_t: &[String], only_n: &[String], skip_n: &[String]) -> Result<bool> {
    let matches_table = |term: &str| -> Result<bool> {
        let (schema, name) = split_user_name(term).map_err(Error::Usage)?;
        let name_ok = name.matches(&f.name.name) || name.matches_folded(&f.name.name);
        let schema_ok = schema
            .as_ref()
            .is_none_or(|s| s.matches(&f.name.schema) || s.matches_folded(&f.name.schema));
        Ok(name_ok && schema_ok)
    };
    let matches_schema = |term: &str| f.name.schema == term || f.name.schema.eq_ignore_ascii_case(term);
    if !only_n.is_empty() && !only_n.iter().any(|s| matches_schema(s)) {
        return Ok(false);
    }
    if skip_n.iter().any(|s| matches_schema(s)) {
        return Ok(false);
    }
    if !only_t.is_empty() {
        let mut any = false;
        for t in only_t {
            any |= matches_table(t)?;
        }
        if !any {
            return Ok(false);
        }
    }
    for t in skip_t {
        if matches_table(t)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn add_all(ctx: &Ctx, a: AddAll) -> Result<()> {
    let kvs = kv::split(&a.words, REL_KEYS, "add all")?;
    if let Some(p) = kvs.positional.first() {
        return Err(Error::Usage(format!(
            "unexpected word {p:?} for 'add all': use db=, relgroup= and -t/-T/-n/-N filters"
        )));
    }
    let relgroup = a.relgroup.clone().or(kvs.get("relgroup").map(String::from));
    if let Some(g) = &relgroup {
        check_name("relgroup", g)?;
    }
    let conflict = match kvs.get("standard_conflict") {
        Some(v) => Some(sync_opts::conflict_strategy(v, &[])?),
        None => None,
    };
    let dbname = a.db.clone().or(kvs.get("db").map(String::from));
    let mut cat = ctx.catalog()?;
    let db = pick_db(&mut cat, dbname.as_deref())?;
    let mut client = db.connect()?;
    let (only_t, skip_t) = (split_commas(&a.table), split_commas(&a.exclude_table));
    let (only_n, skip_n) = (split_commas(&a.schema), split_commas(&a.exclude_schema));
    let (kind, live) = match a.what {
        AllWhat::Tables => ("table", discover::tables(&mut client)?),
        AllWhat::Sequences => ("sequence", discover::sequences(&mut client)?),
    };
    // Filters that name a table that does not exist are most likely typos.
    for t in only_t.iter().chain(skip_t.iter()) {
        if !t.contains(['*', '%'])
            && !live
                .iter()
                .any(|f| passes(f, std::slice::from_ref(t), &[], &[], &[]).unwrap_or(false))
        {
            return Err(Error::Rejected(format!(
                "no {kind} named {t} in database \"{}\" (check the -t/-T value; see \\d in psql)",
                db.name
            )));
        }
    }
    let mut chosen = Vec::new();
    for f in live {
        if passes(&f, &only_t, &skip_t, &only_n, &skip_n)? {
            chosen.push(f);
        }
    }
    if chosen.is_empty() {
        return Err(Error::Rejected(format!(
            "no {kind}s found in database \"{}\"{}",
            db.name,
            if only_t.is_empty() && skip_t.is_empty() && only_n.is_empty() && skip_n.is_empty() {
                String::new()
            } else {
                " matching the -t/-T/-n/-N filters".to_string()
            }
        )));
    }
    let report = store_found(
        ctx,
        &mut cat,
        &db.name,
        relgroup.as_deref(),
        &chosen,
        conflict.as_deref(),
    )?;
    for f in &chosen {
        let n = &f.name;
        let new = report.added.contains(n);
        let grouped = report.grouped.contains(n);
        match (&relgroup, new, grouped) {
            (Some(g), _, true) => ctx.say(format!("Added {kind} {} to relgroup {g}", n.human())),
            (None, true, _) => ctx.say(format!("Added {kind} {}", n.human())),
            _ => {
                if ctx.verbose > 0 {
                    ctx.say(format!("Already added: {kind} {}", n.human()))
                }
            }
        }
    }
    ctx.say(format!("New {kind}s added: {}", report.added.len()));
    if !report.already.is_empty() {
        ctx.say(format!("Already added: {}", report.already.len()));
    }
    Ok(())
}

/// Stores live tables or sequences (and their relgroup) in the catalog,
/// capturing them for syncs already using the relgroup; says when the
/// relgroup was created.
fn store_found(
    ctx: &Ctx,
    cat: &mut Catalog,
    db: &str,
    relgroup: Option<&str>,
    found: &[Found],
    conflict: Option<&str>,
) -> Result<edit::AddedRelations> {
    let rgs: Vec<String> = relgroup.iter().map(|s| s.to_string()).collect();
    let report = edit_with_capture(
        cat,
        |tx| reconcile::syncs_of_relgroups(tx, &rgs),
        |tx| edit::add_relations(tx, db, relgroup, found, conflict),
    )?;
    if report.created_relgroup {
        ctx.say(format!("Creating relgroup: {}", relgroup.unwrap_or_default()));
    }
    Ok(report)
}

/// Resolves user terms against a live database's tables or sequences.
fn match_live(live: &[Found], terms: &[String], kind: &str, db: &str) -> Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    let mut missing = Vec::new();
    for t in terms {
        let (schema, name) = split_user_name(t).map_err(Error::Usage)?;
        let pick = |folded: bool| -> Vec<&Found> {
            live.iter()
                .filter(|f| {
                    let n = if folded {
                        name.matches_folded(&f.name.name)
                    } else {
                        name.matches(&f.name.name)
                    };
                    let s = schema
                        .as_ref()
                        .is_none_or(|s| s.matches(&f.name.schema) || (folded && s.matches_folded(&f.name.schema)));
                    n && s
                })
                .collect()
        };
        let mut hits = pick(false);
        if hits.is_empty() {
            hits = pick(true);
        }
        if hits.is_empty() {
            missing.push(t.clone());
        }
        for h in hits {
            if !out.iter().any(|o| o.name == h.name) {
                out.push(h.clone());
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::Rejected(format!(
            "no {kind} matching {} in database \"{db}\"; nothing was added",
            missing.join(", ")
        )));
    }
    Ok(out)
}

fn add_relations(ctx: &Ctx, w: &Words, kind: &str) -> Result<()> {
    let a = kv::split(&w.words, REL_KEYS, &format!("add {kind}"))?;
    if a.positional.is_empty() {
        return Err(Error::Usage(format!(
            "usage: capra add {kind} NAME [NAME...] db=DB [relgroup=RG]"
        )));
    }
    let relgroup = a.get("relgroup").map(String::from);
    if let Some(g) = &relgroup {
        check_name("relgroup", g)?;
    }
    let conflict = match a.get("standard_conflict") {
        Some(v) => Some(sync_opts::conflict_strategy(v, &[])?),
        None => None,
    };
    let mut cat = ctx.catalog()?;
    let db = pick_db(&mut cat, a.get("db"))?;
    let mut client = db.connect()?;
    let live = if kind == "table" {
        discover::tables(&mut client)?
    } else {
        discover::sequences(&mut client)?
    };
    let chosen = match_live(&live, &a.positional, kind, &db.name)?;
    let report = store_found(
        ctx,
        &mut cat,
        &db.name,
        relgroup.as_deref(),
        &chosen,
        conflict.as_deref(),
    )?;
    for f in &chosen {
        let n = &f.name;
        match &relgroup {
            Some(g) if report.grouped.contains(n) => ctx.say(format!("Added {kind} {} to relgroup {g}", n.human())),
            Some(g) => ctx.say(format!("{kind} {} is already in relgroup {g}", n.human())),
            None if report.added.contains(n) => ctx.say(format!("Added {kind} {}", n.human())),
            None => ctx.say(format!("{kind} {} was already added (key refreshed)", n.human())),
        }
    }
    Ok(())
}

fn remove_relations(cat: &mut Catalog, w: &Words, kind: &str) -> Result<Vec<String>> {
    let a = kv::split(&w.words, &[key("db", &["database"])], &format!("remove {kind}"))?;
    let db = a.get("db").map(String::from);
    let (terms, db2) = (a.positional.clone(), db.clone());
    let removed = edit_with_capture(
        cat,
        |tx| {
            let all = model::relations(tx, Some(kind))?;
            let mut ids = Vec::new();
            for t in &terms {
                ids.extend(edit::match_relations(&all, t, db2.as_deref())?.iter().map(|r| r.id));
            }
            reconcile::syncs_of_relations(tx, &ids)
        },
        |tx| edit::remove_relations(tx, &a.positional, db.as_deref(), kind),
    )?;
    let mut out = vec![format!("Removed the following {kind}s:")];
    for (n, d) in removed {
        out.push(format!("  {} (DB: {d})", n.human()));
    }
    Ok(out)
}

fn update_relation(ctx: &Ctx, w: &Words, kind: &str) -> Result<()> {
    let a = kv::split(&w.words, TABLE_UPDATE_KEYS, &format!("update {kind}"))?;
    let [term] = a.positional.as_slice() else {
        return Err(Error::Usage(format!(
            "usage: capra update {kind} NAME [db=DB] key=value..."
        )));
    };
    let mut cat = ctx.catalog()?;
    let all = model::relations(&mut cat.client, Some(kind))?;
    let hits = edit::match_relations(&all, term, a.get("db"))?;
    let rel: Relation = match hits.as_slice() {
        [] => {
            return Err(Error::not_found_hint(
                if kind == "table" { "table" } else { "sequence" },
                term.clone(),
                format!("see: capra list {kind}s"),
            ))
        }
        [one] => (*one).clone(),
        _ => {
            return Err(Error::Rejected(format!(
                "more than one {kind} matches {term}: use schema.name and db=NAME"
            )))
        }
    };
    let mut lines = Vec::new();
    let mut sets: Vec<(String, Option<String>, &'static str)> = Vec::new();
    for (k, v) in &a.pairs {
        match k.as_str() {
            "db" => {}
            "pkey" => {
                let cols: Vec<String> = v
                    .split([',', '|'])
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect();
                let db = model::db(&mut cat.client, &rel.db)?.expect("relation's db exists");
                let mut client = db.connect()?;
                let key = discover::is_unique_key(&mut client, &rel.name, &cols)?.ok_or_else(|| {
                    Error::Rejected(format!(
                        "columns {} of {} are not a primary key or a unique key on NOT NULL columns in database \"{}\"; create one first (CREATE UNIQUE INDEX ... ON {} ({}))",
                        cols.join(", "),
                        rel.name.human(),
                        rel.db,
                        rel.name.sql(),
                        cols.join(", ")
                    ))
                })?;
                sets.push(("pkey".into(), Some(pg_array(&key.columns)), "text[]"));
                sets.push(("pkeytype".into(), Some(pg_array(&key.types)), "text[]"));
                sets.push(("keykind".into(), Some(key.kind.clone()), "text"));
                lines.push(format!(
                    "Changed {kind} {} key to {}",
                    rel.name.human(),
                    key.columns.join("|")
                ));
            }
            "autokick" | "analyze_after_copy" | "vacuum_after_copy" | "ghost" | "strict_checking" => {
                let b = a.bool(k)?.expect("given");
                sets.push((k.clone(), Some(b.to_string()), "boolean"));
                lines.push(format!("Changed {kind} {} {k} to {}", rel.name.human(), b as u8));
            }
            "rebuild_index" => {
                let b = a.bool(k)?.expect("given");
                sets.push((k.clone(), Some((b as u8).to_string()), "smallint"));
                lines.push(format!(
                    "Changed {kind} {} rebuild_index to {}",
                    rel.name.human(),
                    b as u8
                ));
            }
            "conflict_strategy" => {
                let s = sync_opts::conflict_strategy(v, &[])?;
                lines.push(format!("Changed {kind} {} conflict_strategy to {s}", rel.name.human()));
                sets.push((k.clone(), Some(s), "text"));
            }
            "makedelta" => {
                sets.push((k.clone(), opt_text(v), "text"));
                lines.push(format!("Changed {kind} {} makedelta to {v}", rel.name.human()));
            }
            _ => unreachable!(),
        }
    }
    if sets.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to change for {kind} {term}: give key=value pairs"
        )));
    }
    let rel_id = rel.id;
    edit_with_capture(
        &mut cat,
        |tx| reconcile::syncs_of_relations(tx, &[rel_id]),
        |tx| {
            for (col, val, cast) in &sets {
                tx.execute(
                    &format!("UPDATE capra.relation SET {col} = $1::text::{cast} WHERE id = $2"),
                    &[val, &rel.id],
                )
                .ctx(|| format!("changing {col} of {}", rel.name.human()))?;
            }
            Ok(())
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// A PostgreSQL array literal for text values.
fn pg_array(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", items.join(","))
}

fn add_relgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, &[key("db", &["database"])], "add relgroup")?;
    let Some((name, terms)) = a.positional.split_first() else {
        return Err(Error::Usage("usage: capra add relgroup NAME [TABLE...] [db=DB]".into()));
    };
    check_name("relgroup", name)?;
    let mut cat = ctx.catalog()?;
    let exists = model::relgroups(&mut cat.client)?.iter().any(|g| &g.name == name);
    if exists && terms.is_empty() {
        return Err(Error::duplicate("relgroup", name.clone()));
    }
    // Members already in the catalog are used as they are; others are looked
    // up live in db= (or the only database).
    let all = model::relations(&mut cat.client, None)?;
    let mut known: Vec<Relation> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for t in terms {
        let hits = edit::match_relations(&all, t, a.get("db"))?;
        if hits.is_empty() {
            unknown.push(t.clone());
        } else {
            let dbs: std::collections::BTreeSet<&str> = hits.iter().map(|r| r.db.as_str()).collect();
            if dbs.len() > 1 {
                return Err(Error::Rejected(format!(
                    "{t} is in several databases ({}); say which with db=NAME",
                    dbs.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            known.extend(hits.into_iter().cloned());
        }
    }
    let mut live_found = Vec::new();
    let mut live_db = None;
    if !unknown.is_empty() {
        let db = pick_db(&mut cat, a.get("db"))?;
        let mut client = db.connect()?;
        let mut live = discover::tables(&mut client)?;
        live.extend(discover::sequences(&mut client)?);
        live_found = match_live(&live, &unknown, "table or sequence", &db.name)?;
        live_db = Some(db.name);
    }
    let rgs = vec![name.clone()];
    let lines = edit_with_capture(
        &mut cat,
        |tx| reconcile::syncs_of_relgroups(tx, &rgs),
        |tx| {
            let mut out = Vec::new();
            if edit::ensure_relgroup(tx, name, None)? {
                out.push(format!("Created relgroup \"{name}\""));
            } else {
                out.push(format!("Relgroup \"{name}\" already exists"));
            }
            let refs: Vec<&Relation> = known.iter().collect();
            for n in edit::add_to_relgroup(tx, name, &refs)? {
                out.push(format!("Added {} to relgroup {name}", n.human()));
            }
            if let Some(db) = &live_db {
                let r = edit::add_relations(tx, db, Some(name), &live_found, None)?;
                for n in r.grouped {
                    out.push(format!("Added {} to relgroup {name}", n.human()));
                }
            }
            Ok(out)
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

fn update_relgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    // `update relgroup NAME T...` adds members (Bucardo lacks it, #256).
    add_relgroup(ctx, w)
}

fn parse_members(words: &[String]) -> Result<Vec<(String, Option<&'static str>)>> {
    words
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|s| !s.is_empty())
        .map(edit::parse_member)
        .collect()
}

fn add_dbgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    let Some((name, rest)) = w.words.split_first() else {
        return Err(Error::Usage(
            "usage: capra add dbgroup NAME DB[:role] [DB[:role]...]".into(),
        ));
    };
    check_name("dbgroup", name)?;
    if let Some(bad) = rest.iter().find(|x| x.contains('=') && !x.contains(':')) {
        return Err(Error::Usage(format!(
            "unexpected {bad:?} for 'add dbgroup': list databases as DB or DB:role"
        )));
    }
    let members = parse_members(rest)?;
    let mut cat = ctx.catalog()?;
    let lines = cat.edit(|tx| edit::add_dbgroup(tx, name, &members, None))?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

fn update_dbgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    let Some((name, rest)) = w.words.split_first() else {
        return Err(Error::Usage(
            "usage: capra update dbgroup NAME DB[:role] [DB[:role]...]".into(),
        ));
    };
    let members = parse_members(rest)?;
    if members.is_empty() {
        return Err(Error::Usage(
            "list the group's databases: capra update dbgroup NAME DB[:role]...".into(),
        ));
    }
    let mut cat = ctx.catalog()?;
    let lines = edit_with_capture(
        &mut cat,
        |tx| reconcile::syncs_of_dbgroup(tx, name),
        |tx| edit::update_dbgroup(tx, name, &members),
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// Resolves where a new sync replicates, for both grammars.
fn sync_dbs(
    tx: &mut Transaction<'_>,
    a: &kv::Args,
    relgroup: &str,
    out: &mut Vec<String>,
    sync: &str,
) -> Result<(String, Option<String>)> {
    let four = a.has("targetdb") || a.has("targetgroup") || a.has("type");
    if four && a.has("dbs") {
        return Err(Error::Usage(
            "use either dbs= (Bucardo 5) or targetdb=/targetgroup= with type= (Bucardo 4), not both".into(),
        ));
    }
    if four {
        let t = a
            .choice("type", &["pushdelta", "fullcopy", "swap"])?
            .unwrap_or_else(|| "pushdelta".into());
        let src = tx
            .query_one(
                "SELECT min(r.db) FROM capra.relgroup_member m JOIN capra.relation r ON r.id = m.relation WHERE m.relgroup = $1",
                &[&relgroup],
            )
            .ctx(|| "finding the relgroup's database".into())?
            .get::<_, Option<String>>(0)
            .ok_or_else(|| Error::Rejected(format!("relgroup \"{relgroup}\" is empty; add tables to it first")))?;
        let targets: Vec<String> = match (a.get("targetdb"), a.get("targetgroup")) {
            (Some(_), Some(_)) => return Err(Error::Usage("give targetdb= or targetgroup=, not both".into())),
            (Some(d), None) => vec![d.to_string()],
            (None, Some(g)) => {
                if t == "swap" {
                    return Err(Error::Usage("type=swap takes targetdb=, not targetgroup=".into()));
                }
                model::dbgroup(tx, g)?
                    .ok_or_else(|| Error::not_found_hint("dbgroup", g, "see: capra list dbgroups"))?
                    .members
                    .into_iter()
                    .map(|m| m.db)
                    .collect()
            }
            (None, None) => {
                return Err(Error::Usage(format!(
                    "type={t} needs targetdb=DB or targetgroup=DBGROUP"
                )))
            }
        };
        let role: &'static str = match t.as_str() {
            "fullcopy" => "fullcopy",
            "swap" => "source",
            _ => "target",
        };
        let mut members: Vec<(String, Option<&'static str>)> = vec![(src.clone(), Some("source"))];
        for d in targets {
            if d == src {
                return Err(Error::Rejected(format!(
                    "Source and target databases cannot be the same: {d} (relgroup \"{relgroup}\" was added from database \"{d}\"; add its tables from the source database instead: capra add all tables db=SOURCE -t ... relgroup={relgroup})"
                )));
            }
            members.push((d, Some(role)));
        }
        let g = edit::group_for_list(tx, sync, &members, out)?;
        return Ok((g, Some(t)));
    }
    let Some(d) = a.get("dbs") else {
        return Err(Error::Usage(format!(
            "sync \"{sync}\" needs dbs=DBGROUP or dbs=DB:source,DB:target (Bucardo 4: targetdb= with type=)"
        )));
    };
    if !d.contains([',', ':']) {
        if model::dbgroup(tx, d)?.is_some() {
            return Ok((d.to_string(), None));
        }
        if model::db(tx, d)?.is_none() {
            return Err(Error::not_found_hint(
                "dbgroup",
                d,
                "see: capra list dbgroups, or give dbs=DB:source,DB:target",
            ));
        }
    }
    let members: Vec<(String, Option<&'static str>)> = d
        .split(',')
        .filter(|s| !s.is_empty())
        .map(edit::parse_member)
        .collect::<Result<_>>()?;
    Ok((edit::group_for_list(tx, sync, &members, out)?, None))
}

fn add_sync(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, sync_opts::SYNC_KEYS, "add sync")?;
    for (k, _) in &a.pairs {
        if let Some(why) = sync_opts::inert(k) {
            eprintln!("capra: warning: sync option '{k}' has {why}");
        }
    }
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: capra add sync NAME relgroup=RELGROUP dbs=DBGROUP|DB:role,... [options]".into(),
        ));
    };
    check_name("sync", name)?;
    if ["pushdelta", "fullcopy", "swap", "sync", "all"].contains(&name.to_lowercase().as_str()) {
        return Err(Error::Usage(format!(
            "\"{name}\" is a reserved word and cannot name a sync"
        )));
    }
    let rg_arg = match (a.get("relgroup"), a.get("source"), a.get("tables")) {
        (Some(r), None, None) | (None, Some(r), None) => Some(r.to_string()),
        (None, None, Some(_)) => None,
        (None, None, None) => {
            return Err(Error::Usage(format!(
                "sync \"{name}\" needs relgroup=RELGROUP (or tables=T1,T2; Bucardo 4: source=HERD)"
            )))
        }
        _ => return Err(Error::Usage("give one of relgroup=, source= or tables=".into())),
    };
    // Check option syntax before touching anything.
    let mut opts: Vec<(String, String)> = Vec::new();
    for (k, v) in &a.pairs {
        if sync_opts::is_option(k) {
            sync_opts::check(k, v, &[]).or_else(|e| {
                // conflict lists need the sync's databases; checked again below
                if k == "conflict_strategy" {
                    Ok(sync_opts::Opt {
                        column: "conflict_strategy",
                        value: None,
                        cast: "text",
                    })
                } else {
                    Err(e)
                }
            })?;
            opts.push((k.clone(), v.clone()));
        }
    }
    let mut cat = ctx.catalog()?;
    let lines = edit_with_capture(
        &mut cat,
        |_| Ok(vec![name.clone()]),
        |tx| {
            let mut out = Vec::new();
            if model::sync(tx, name)?.is_some() {
                return Err(Error::Rejected(format!(
                    "A sync with the name \"{name}\" already exists (see: capra list syncs)"
                )));
            }
            let relgroup = match &rg_arg {
                Some(r) => {
                    if !model::relgroups(tx)?.iter().any(|g| &g.name == r) {
                        return Err(Error::not_found_hint(
                            "relgroup",
                            r.clone(),
                            "create it with capra add all tables db=DB relgroup=NAME",
                        ));
                    }
                    r.clone()
                }
                None => {
                    let all = model::relations(tx, None)?;
                    let mut rels: Vec<Relation> = Vec::new();
                    for t in a.get("tables").unwrap_or("").split(',').filter(|s| !s.is_empty()) {
                        let hits = edit::match_relations(&all, t, None)?;
                        if hits.is_empty() {
                            return Err(Error::not_found_hint("table", t, "add it first with capra add table"));
                        }
                        rels.extend(hits.into_iter().cloned());
                    }
                    let mut rg = name.clone();
                    let mut n = 2;
                    while model::relgroups(tx)?.iter().any(|g| g.name == rg) {
                        rg = format!("{name}_{n}");
                        n += 1;
                    }
                    edit::ensure_relgroup(tx, &rg, Some(name))?;
                    let refs: Vec<&Relation> = rels.iter().collect();
                    edit::add_to_relgroup(tx, &rg, &refs)?;
                    out.push(format!("Created a new relgroup named \"{rg}\""));
                    rg
                }
            };
            let (dbgroup, synctype) = sync_dbs(tx, &a, &relgroup, &mut out, name)?;
            let group = model::dbgroup(tx, &dbgroup)?.expect("resolved above");
            edit::check_sync_shape(tx, name, &relgroup, &group)?;
            let dbs: Vec<String> = group.members.iter().map(|m| m.db.clone()).collect();
            let pure_fullcopy = !edit::is_delta(&group);
            tx.execute(
                "INSERT INTO capra.sync (name, relgroup, dbgroup, synctype, autokick, stayalive, kidsalive)
             VALUES ($1, $2, $3, $4, $5, $5, $5)",
                &[name, &relgroup, &dbgroup, &synctype, &!pure_fullcopy],
            )
            .ctx(|| format!("adding sync \"{name}\""))?;
            for (k, v) in &opts {
                set_sync_option(tx, name, k, v, &dbs)?;
            }
            out.insert(0, format!("Added sync \"{name}\""));
            Ok(out)
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// Writes one checked option; interval values are checked by the server in a
/// savepoint so a bad one gives a usage error, not an aborted transaction.
fn set_sync_option(
    tx: &mut Transaction<'_>,
    sync: &str,
    k: &str,
    v: &str,
    dbs: &[String],
) -> Result<(Option<String>, Option<String>)> {
    let opt = sync_opts::check(k, v, dbs)?;
    let col = opt.column;
    let old: Option<String> = tx
        .query_one(&format!("SELECT {col}::text FROM capra.sync WHERE name = $1"), &[&sync])
        .ctx(|| format!("reading {col} of sync \"{sync}\""))?
        .get(0);
    let mut sp = tx.savepoint("capra_opt").ctx(|| "savepoint".into())?;
    let res = sp.query_one(
        &format!(
            "UPDATE capra.sync SET {col} = $1::text::{} WHERE name = $2 RETURNING {col}::text",
            opt.cast
        ),
        &[&opt.value, &sync],
    );
    match res {
        Ok(row) => {
            sp.commit().ctx(|| "savepoint".into())?;
            Ok((old, row.get(0)))
        }
        Err(e) => {
            drop(sp);
            if opt.cast == "interval" {
                Err(Error::Usage(format!(
                    "invalid value for '{k}': {v:?} (must be an interval such as '5 minutes' or '1 hour', or a number of seconds)"
                )))
            } else {
                Err(e).ctx(|| format!("setting {col} of sync \"{sync}\""))
            }
        }
    }
}

fn update_sync(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, sync_opts::SYNC_KEYS, "update sync")?;
    for (k, _) in &a.pairs {
        if let Some(why) = sync_opts::inert(k) {
            eprintln!("capra: warning: sync option '{k}' has {why}");
        }
    }
    let names = super::strip_noise(&a.positional);
    let [name] = names.as_slice() else {
        return Err(Error::Usage("usage: capra update sync NAME key=value...".into()));
    };
    if a.pairs.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to change for sync \"{name}\": give key=value pairs"
        )));
    }
    for k in ["tables", "source", "targetdb", "targetgroup", "type"] {
        if a.has(k) {
            return Err(Error::Usage(format!(
                "'{k}' cannot be changed on an existing sync; use relgroup= or dbs="
            )));
        }
    }
    for (k, v) in &a.pairs {
        if sync_opts::is_option(k) && k != "conflict_strategy" {
            sync_opts::check(k, v, &[])?;
        }
    }
    let mut cat = ctx.catalog()?;
    let lines = edit_with_capture(
        &mut cat,
        |_| Ok(vec![name.clone()]),
        |tx| {
            let Some(s) = model::sync(tx, name)? else {
                return Err(Error::not_found_hint("sync", name.clone(), "see: capra list syncs"));
            };
            let mut out = Vec::new();
            let mut relgroup = s.relgroup.clone();
            let mut dbgroup = s.dbgroup.clone();
            if let Some(r) = a.get("relgroup") {
                relgroup = r.to_string();
                if !model::relgroups(tx)?.iter().any(|g| g.name == relgroup) {
                    return Err(Error::not_found_hint("relgroup", relgroup, "see: capra list relgroups"));
                }
            }
            if a.has("dbs") {
                let (g, _) = sync_dbs(tx, &a, &relgroup, &mut out, name)?;
                dbgroup = g;
            }
            let group = model::dbgroup(tx, &dbgroup)?.expect("exists");
            if relgroup != s.relgroup || dbgroup != s.dbgroup {
                edit::check_sync_shape(tx, name, &relgroup, &group)?;
                tx.execute(
                    "UPDATE capra.sync SET relgroup = $1, dbgroup = $2 WHERE name = $3",
                    &[&relgroup, &dbgroup, name],
                )
                .ctx(|| format!("changing sync \"{name}\""))?;
                if relgroup != s.relgroup {
                    out.push(format!(
                        "Updated sync \"{name}\": relgroup {} -> {relgroup}",
                        s.relgroup
                    ));
                }
                if dbgroup != s.dbgroup {
                    out.push(format!("Updated sync \"{name}\": dbgroup {} -> {dbgroup}", s.dbgroup));
                }
            }
            let dbs: Vec<String> = group.members.iter().map(|m| m.db.clone()).collect();
            for (k, v) in a.pairs.iter().filter(|(k, _)| sync_opts::is_option(k)) {
                let (old, new) = set_sync_option(tx, name, k, v, &dbs)?;
                let show = |x: Option<String>| match x.as_deref() {
                    None => "none".to_string(),
                    Some("true") => "1".into(),
                    Some("false") => "0".into(),
                    Some(t) => t.to_string(),
                };
                out.push(format!("Updated sync \"{name}\": {k} {} -> {}", show(old), show(new)));
            }
            Ok(out)
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// `activate` / `deactivate`.
pub fn set_status(ctx: &Ctx, names: &[String], active: bool) -> Result<()> {
    let names = super::strip_noise(names);
    if names.is_empty() {
        return Err(Error::Usage(format!(
            "usage: capra {} SYNC...",
            if active { "activate" } else { "deactivate" }
        )));
    }
    let mut cat = ctx.catalog()?;
    let n2 = names.clone();
    edit_with_capture(
        &mut cat,
        |_| Ok(n2),
        |tx| {
            for n in &names {
                let Some(s) = model::sync(tx, n)? else {
                    return Err(Error::not_found_hint("sync", n.clone(), "see: capra list syncs"));
                };
                if active {
                    let group = model::dbgroup(tx, &s.dbgroup)?.expect("exists");
                    edit::check_sync_shape(tx, n, &s.relgroup, &group)?;
                }
                tx.execute(
                    "UPDATE capra.sync SET status = $1 WHERE name = $2",
                    &[&if active { "active" } else { "inactive" }, n],
                )
                .ctx(|| format!("changing the status of sync \"{n}\""))?;
            }
            Ok(())
        },
    )?;
    for n in &names {
        ctx.say(format!(
            "{} sync {n}",
            if active { "Activating" } else { "Deactivating" }
        ));
    }
    Ok(())
}

fn add_customcode(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, CODE_KEYS, "add customcode")?;
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: capra add customcode NAME whenrun=HOOK src_code=FILE.lua (sync=S | relation=T)".into(),
        ));
    };
    check_name("customcode", name)?;
    let whenrun = a.choice("whenrun", crate::hooks::HOOKS)?.ok_or_else(|| {
        Error::Usage(format!(
            "customcode \"{name}\" needs whenrun=HOOK ({})",
            crate::hooks::HOOKS.join(", ")
        ))
    })?;
    let file = a
        .get("src_code")
        .ok_or_else(|| Error::Usage(format!("customcode \"{name}\" needs src_code=FILE.lua")))?;
    let path = std::fs::canonicalize(file).map_err(|source| Error::Io {
        context: format!("reading {file}"),
        source,
    })?;
    let src = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    crate::hooks::check(&path.display().to_string(), &src)?;
    let priority = a.number("priority", 1_000_000)?.unwrap_or(0) as i32;
    let status = a
        .choice("status", &["active", "inactive"])?
        .unwrap_or_else(|| "active".into());
    let about = a.get("about").unwrap_or("").to_string();
    if a.has("sync") == a.has("relation") {
        return Err(Error::Usage(format!(
            "customcode \"{name}\" attaches to exactly one of sync=SYNC or relation=TABLE"
        )));
    }
    let mut cat = ctx.catalog()?;
    cat.edit(|tx| {
        if tx
            .query_opt("SELECT 1 FROM capra.customcode WHERE name = $1", &[name])
            .ctx(|| "looking up customcode".into())?
            .is_some()
        {
            return Err(Error::duplicate("customcode", name.clone()));
        }
        tx.execute(
            "INSERT INTO capra.customcode (name, whenrun, src_code, src_file, about, priority, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                name,
                &whenrun,
                &src,
                &path.display().to_string(),
                &about,
                &priority,
                &status,
            ],
        )
        .ctx(|| format!("adding customcode \"{name}\""))?;
        if let Some(s) = a.get("sync") {
            if model::sync(tx, s)?.is_none() {
                return Err(Error::not_found_hint("sync", s, "see: capra list syncs"));
            }
            tx.execute(
                "INSERT INTO capra.customcode_map (code, sync, priority) VALUES ($1, $2, $3)",
                &[name, &s, &priority],
            )
            .ctx(|| "attaching customcode".into())?;
        } else if let Some(t) = a.get("relation") {
            let all = model::relations(tx, Some("table"))?;
            let hits = edit::match_relations(&all, t, a.get("db"))?;
            let rel = match hits.as_slice() {
                [one] => *one,
                [] => return Err(Error::not_found_hint("table", t, "see: capra list tables")),
                _ => {
                    return Err(Error::Rejected(format!(
                        "more than one table matches {t}: use schema.name and db=NAME"
                    )))
                }
            };
            tx.execute(
                "INSERT INTO capra.customcode_map (code, relation, priority) VALUES ($1, $2, $3)",
                &[name, &rel.id, &priority],
            )
            .ctx(|| "attaching customcode".into())?;
        }
        Ok(())
    })?;
    ctx.say(format!("Added customcode \"{name}\""));
    Ok(())
}

fn update_customcode(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, CODE_KEYS, "update customcode")?;
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage("usage: capra update customcode NAME key=value...".into()));
    };
    if a.has("sync") || a.has("relation") || a.has("db") {
        return Err(Error::Usage(
            "a customcode's attachment cannot change; remove and add it".into(),
        ));
    }
    if a.pairs.is_empty() {
        return Err(Error::Usage(format!("nothing to change for customcode \"{name}\"")));
    }
    let mut sets: Vec<(&str, String, &str)> = Vec::new();
    if let Some(v) = a.choice("whenrun", crate::hooks::HOOKS)? {
        sets.push(("whenrun", v, "text"));
    }
    if let Some(v) = a.choice("status", &["active", "inactive"])? {
        sets.push(("status", v, "text"));
    }
    if let Some(v) = a.number("priority", 1_000_000)? {
        sets.push(("priority", v.to_string(), "integer"));
    }
    if let Some(v) = a.get("about") {
        sets.push(("about", v.to_string(), "text"));
    }
    if let Some(file) = a.get("src_code") {
        let path = std::fs::canonicalize(file).map_err(|source| Error::Io {
            context: format!("reading {file}"),
            source,
        })?;
        let src = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        crate::hooks::check(&path.display().to_string(), &src)?;
        sets.push(("src_code", src, "text"));
        sets.push(("src_file", path.display().to_string(), "text"));
    }
    let mut cat = ctx.catalog()?;
    let lines = cat.edit(|tx| {
        if tx
            .query_opt("SELECT 1 FROM capra.customcode WHERE name = $1", &[name])
            .ctx(|| "looking up customcode".into())?
            .is_none()
        {
            return Err(Error::not_found_hint(
                "customcode",
                name.clone(),
                "see: capra list customcodes",
            ));
        }
        let mut out = Vec::new();
        for (col, val, cast) in &sets {
            tx.execute(
                &format!("UPDATE capra.customcode SET {col} = $1::text::{cast} WHERE name = $2"),
                &[val, name],
            )
            .ctx(|| format!("changing customcode \"{name}\""))?;
            if *col == "priority" {
                tx.execute(
                    "UPDATE capra.customcode_map SET priority = $1::text::integer WHERE code = $2",
                    &[val, name],
                )
                .ctx(|| "changing priority".into())?;
            }
            if *col != "src_code" {
                out.push(format!("Changed customcode \"{name}\" {col} to {val}"));
            }
        }
        Ok(out)
    })?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// `capra set name=value...`.
pub fn set(ctx: &Ctx, pairs: &[String]) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::Usage("usage: capra set name=value [name=value...]".into()));
    }
    let mut checked = Vec::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(Error::Usage(format!("malformed setting {p:?}: expected name=value")));
        };
        let s = settings::find(k.trim())
            .ok_or_else(|| Error::Usage(format!("Unknown setting '{}' (see: capra show all)", k.trim())))?;
        let v = settings::normalise(s, v).map_err(Error::Usage)?;
        checked.push((s.name, v));
    }
    let mut cat = ctx.catalog()?;
    cat.edit(|tx| {
        for (n, v) in &checked {
            tx.execute(
                "INSERT INTO capra.config (name, setting, defval, about)
                 SELECT $1, $2, $3, $4 ON CONFLICT (name) DO UPDATE SET setting = EXCLUDED.setting",
                &[
                    n,
                    v,
                    &settings::find(n).unwrap().default,
                    &settings::find(n).unwrap().about,
                ],
            )
            .ctx(|| format!("setting {n}"))?;
        }
        Ok(())
    })?;
    for (n, v) in checked {
        ctx.say(format!("Set \"{n}\" to \"{v}\""));
        if let Some(why) = settings::find(n).and_then(settings::inert) {
            eprintln!("capra: warning: setting \"{n}\" has no effect in capra: {why}");
        }
    }
    Ok(())
}
