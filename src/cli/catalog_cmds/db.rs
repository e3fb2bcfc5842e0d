//! Databases: `add db`, `update db` (and Bucardo 4's `add database`).

use super::render::say_all;
use super::warn_inert;
use crate::catalog::edit::{self, NewDb};
use crate::catalog::{model, Catalog, CatalogError};
use crate::cli::kv::{self, check_name, key, Key};
use crate::cli::sync_opts::parse_role;
use crate::cli::{Ctx, Words};
use crate::domain::{DbStatus, Role};
use crate::error::{Error, Result};
use crate::pg;

/// Database options kept for Bucardo scripts.
fn inert(k: &str) -> Option<&'static str> {
    match k {
        "server_side_prepares" => Some("no effect in capra: it always prepares its statements"),
        _ => None,
    }
}

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

/// capra's name and the real database name, in Bucardo 4's grammar
/// (`add database DBNAME name=NAME`) or Bucardo 5's (`add db NAME dbname=DBNAME`).
fn names_of_new_db(a: &kv::Args) -> Result<(String, Option<String>)> {
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
    Ok((name, dbname))
}

/// The database entry `add db` describes, checked.
fn new_db(ctx: &Ctx, a: &kv::Args) -> Result<NewDb> {
    let (name, dbname) = names_of_new_db(a)?;
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
        .choice_of("status", &["active", "inactive"])?
        .unwrap_or(DbStatus::Active);
    Ok(NewDb {
        name,
        dbname,
        host: a.get("host").map(String::from),
        port,
        user: Some(a.get("user").map(String::from).unwrap_or_else(|| ctx.control_user())),
        pass: a.get("pass").map(crate::sys::Secret::new),
        conn,
        service: a.get("service").map(String::from),
        status,
        makedelta: false,
        server_side_prepares: true,
    })
}

/// `group=NAME[:role]`: the dbgroup a new database joins.
fn group_of_new_db(a: &kv::Args) -> Result<Option<(String, Option<Role>)>> {
    let Some(g) = a.get("group") else {
        return Ok(None);
    };
    let (gname, role) = match g.split_once(':') {
        Some((n, r)) => (n.to_string(), Some(parse_role(r)?)),
        None => (g.to_string(), None),
    };
    check_name("dbgroup", &gname)?;
    Ok(Some((gname, role)))
}

/// Connects to a database about to be added, so a typo is caught now.
fn try_new_db(new: &NewDb) -> Result<()> {
    pg::connect::open_db(&new.conn_spec(), &new.name)
        .map_err(|e| e.with_hint("check the settings, or add it anyway with --force"))?;
    Ok(())
}

/// `capra add db NAME dbname=...` (and Bucardo 4's `add database DBNAME name=NAME`).
pub(super) fn add_db(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, DB_KEYS, "add db")?;
    warn_inert("database", &a.pairs, inert);
    let mut new = new_db(ctx, &a)?;
    let group = group_of_new_db(&a)?;
    new.makedelta = a.bool("makedelta")?.unwrap_or(false);
    new.server_side_prepares = a.bool("server_side_prepares")?.unwrap_or(true);
    let name = new.name.clone();
    let mut cat = ctx.catalog()?;
    // Refuse duplicates before spending a connection attempt.
    if model::db(&mut cat.client, &name)?.is_some() {
        return Err(CatalogError::DbExists { db: name }.into());
    }
    if !w.force {
        try_new_db(&new)?;
    }
    let lines = cat.edit(|tx| {
        edit::add_db(tx, &new)?;
        let mut out = vec![format!("Added database \"{name}\"")];
        if let Some((g, role)) = &group {
            out.extend(edit::join_dbgroup(tx, g, &name, *role)?.iter().map(ToString::to_string));
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
pub(crate) fn check_conn(conn: &str) -> Result<()> {
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

/// `capra update db NAME key=value...`: checked by connecting unless --force.
pub(super) fn update_db(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, DB_KEYS, "update db")?;
    warn_inert("database", &a.pairs, inert);
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
            other => return Err(Error::Usage(format!("'{other}' cannot be set this way"))),
        };
        changes.push(edit::DbChange {
            column: col,
            value: val,
        });
    }
    let mut cat = ctx.catalog()?;
    let events = cat.edit(|tx| {
        let out = edit::update_db(tx, name, &changes)?;
        if !w.force
            && changes
                .iter()
                .any(|c| c.column != "status" && c.column != "makedelta" && c.column != "server_side_prepares")
        {
            let db = model::db(tx, name)?
                .ok_or_else(|| Error::not_found_hint("database", name.clone(), "see: capra list dbs"))?;
            db.connect()
                .map_err(|e| e.with_hint("nothing was changed; use --force to store it anyway"))?;
        }
        Ok(out)
    })?;
    say_all(ctx, &events);
    Ok(())
}

/// A trimmed value, or None for an empty one (which clears the column).
pub(super) fn opt_text(v: &str) -> Option<String> {
    let t = v.trim();
    if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    }
}

/// Picks the database to read tables from: `db=`, else the only one.
pub(super) fn pick_db(cat: &mut Catalog, db: Option<&str>) -> Result<model::Db> {
    match db {
        Some(n) => {
            model::db(&mut cat.client, n)?.ok_or_else(|| Error::not_found_hint("database", n, "see: capra list dbs"))
        }
        None => {
            let mut all = model::dbs(&mut cat.client)?;
            if all.len() > 1 {
                return Err(Error::Usage(format!(
                    "say which database to read from with db=NAME (one of: {})",
                    all.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            all.pop().ok_or_else(|| CatalogError::NoDatabases.into())
        }
    }
}
