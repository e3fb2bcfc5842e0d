//! `capra install`: create the control database (or upgrade it in place).

use std::io::Write;

use postgres::{Client, Transaction};

use super::{current_version, settings, MIGRATIONS};
use crate::error::{Context, Error, Result};
use crate::pg::{self, connect::ConnSpec, ident::quote_ident, RowExt};

/// What install did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new catalog was created at this version.
    Created(i32),
    /// An older catalog was upgraded.
    Upgraded {
        /// Version found.
        from: i32,
        /// Version now.
        to: i32,
    },
    /// Nothing to do.
    Current(i32),
}

/// The owner role capra creates for its control database.
pub const OWNER_ROLE: &str = "capra";

/// Connects to `spec`'s database; if it does not exist, connects to the
/// `postgres` database instead and creates it. Progress goes to `out`.
pub fn install(spec: &ConnSpec, piddir: Option<&str>, out: &mut dyn Write) -> Result<Outcome> {
    let target_db = spec.dbname.clone().unwrap_or_else(|| "capra".into());
    let mut client = match open(spec, &target_db) {
        Ok(c) => c,
        Err(e) if e.sqlstate() == Some(&postgres::error::SqlState::INVALID_CATALOG_NAME) => {
            writeln!(out, "Failed to connect to database '{target_db}', will try 'postgres'").ok();
            let mut fallback = spec.clone();
            fallback.dbname = Some("postgres".into());
            let mut admin = open(&fallback, "postgres")?;
            create_database(&mut admin, &target_db, out)?;
            open(spec, &target_db)?
        }
        Err(e) => return Err(e),
    };
    let what = "reading the server version";
    let version: String = client
        .query_one("SHOW server_version", &[])
        .ctx(|| what.into())?
        .col(0, what)?;
    writeln!(out, "Postgres version is: {version}").ok();
    upgrade(&mut client, &target_db, piddir, out)
}

fn open(spec: &ConnSpec, dbname: &str) -> Result<Client> {
    let mut s = spec.clone();
    s.dbname = Some(dbname.into());
    let target = format!("database \"{dbname}\"");
    pg::connect::open(&pg::connect::resolve_for(&s, "capra install", &target)?, &target)
}

/// Whether the connected role is a superuser.
fn is_superuser(c: &mut Client) -> Result<bool> {
    c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .ctx(|| "checking privileges".into())?
        .col(0, "checking privileges")
}

fn create_database(admin: &mut Client, name: &str, out: &mut dyn Write) -> Result<()> {
    let what = "checking the current role";
    let me: String = admin
        .query_one("SELECT current_user::text", &[])
        .ctx(|| what.into())?
        .col(0, what)?;
    let mut owner = me.clone();
    if me != OWNER_ROLE && is_superuser(admin)? {
        let exists = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&OWNER_ROLE])
            .ctx(|| "looking for the capra role".into())?
            .is_some();
        if !exists {
            writeln!(out, "Creating role '{OWNER_ROLE}' (owner of the control database; give it a password with ALTER ROLE {OWNER_ROLE} PASSWORD '...')").ok();
            admin
                .batch_execute(&format!("CREATE ROLE {} LOGIN", quote_ident(OWNER_ROLE)))
                .ctx(|| format!("creating role {OWNER_ROLE}"))?;
        }
        owner = OWNER_ROLE.into();
    }
    writeln!(out, "Creating database '{name}' owned by '{owner}'").ok();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(name),
            quote_ident(&owner)
        ))
        .ctx(|| format!("creating database \"{name}\""))
}

/// The version of the catalog already in the database, if there is one.
fn found_version(tx: &mut Transaction<'_>) -> Result<Option<i32>> {
    let what = "looking for an existing catalog";
    let exists: bool = tx
        .query_one("SELECT to_regclass('capra.meta') IS NOT NULL", &[])
        .ctx(|| what.into())?
        .col(0, what)?;
    if !exists {
        return Ok(None);
    }
    let what = "reading the catalog version";
    tx.query_one("SELECT version FROM capra.meta", &[])
        .ctx(|| what.into())?
        .col(0, what)
        .map(Some)
}

/// When a superuser installs on behalf of the capra role, the objects must
/// belong to that role so it can use them: switch to it.
fn become_owner(tx: &mut Transaction<'_>) -> Result<()> {
    let what = "checking the database owner";
    let owner_is_capra: bool = tx
        .query_one(
            "SELECT d.datdba::regrole::text = $1 AND current_user <> $1 FROM pg_database d WHERE d.datname = current_database()",
            &[&OWNER_ROLE],
        )
        .ctx(|| what.into())?
        .col(0, what)?;
    if owner_is_capra {
        tx.batch_execute(&format!("SET LOCAL ROLE {}", quote_ident(OWNER_ROLE)))
            .ctx(|| format!("switching to role {OWNER_ROLE}"))?;
    }
    Ok(())
}

/// Applies the migrations newer than `from`, recording each version.
fn migrate(tx: &mut Transaction<'_>, from: i32) -> Result<()> {
    for (v, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        tx.batch_execute(sql)
            .ctx(|| format!("applying catalog migration {v}"))?;
        if *v == 1 {
            tx.execute(
                "INSERT INTO capra.meta (version, installation)
                 VALUES (1, substr(md5(random()::text || clock_timestamp()::text || pg_backend_pid()), 1, 16))",
                &[],
            )
            .ctx(|| "recording the installation".into())?;
        } else {
            tx.execute("UPDATE capra.meta SET version = $1, upgraded_at = now()", &[v])
                .ctx(|| format!("recording catalog version {v}"))?;
        }
    }
    Ok(())
}

/// Settings added by newer builds appear on upgrade; set values are kept.
/// `piddir`, when given, is set (and said so in `out` if it changed).
fn store_settings(tx: &mut Transaction<'_>, piddir: Option<&str>, out: &mut dyn Write) -> Result<()> {
    for s in settings::SETTINGS {
        tx.execute(
            "INSERT INTO capra.config (name, setting, defval, about) VALUES ($1, $2, $2, $3)
             ON CONFLICT (name) DO UPDATE SET defval = EXCLUDED.defval, about = EXCLUDED.about",
            &[&s.name, &s.default, &s.about],
        )
        .ctx(|| format!("adding setting {}", s.name))?;
    }
    if let Some(dir) = piddir {
        let changed = tx
            .execute(
                "UPDATE capra.config SET setting = $1 WHERE name = 'piddir' AND setting <> $1",
                &[&dir],
            )
            .ctx(|| "setting piddir".into())?;
        if changed > 0 {
            writeln!(out, "Updated configuration setting \"piddir\"").ok();
        }
    }
    Ok(())
}

/// Brings the catalog in the connected database to this build's version.
pub fn upgrade(c: &mut Client, dbname: &str, piddir: Option<&str>, out: &mut dyn Write) -> Result<Outcome> {
    let mut tx = c.transaction().ctx(|| "starting the install transaction".into())?;
    // One installer at a time per control database.
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('capra install'))")
        .ctx(|| "locking the control database for install".into())?;
    let found = found_version(&mut tx)?;
    let target = current_version();
    if let Some(v) = found {
        if v > target {
            return Err(Error::CatalogVersion(format!(
                "the catalog in \"{dbname}\" is version {v}, newer than this capra understands ({target}); upgrade the capra package"
            )));
        }
    }
    become_owner(&mut tx)?;
    let from = found.unwrap_or(0);
    if from == 0 {
        writeln!(
            out,
            "Attempting to create and populate the capra catalog (version {target}) in database \"{dbname}\""
        )
        .ok();
    }
    migrate(&mut tx, from)?;
    store_settings(&mut tx, piddir, out)?;
    tx.commit().ctx(|| "committing the install".into())?;
    Ok(match found {
        None => Outcome::Created(target),
        Some(v) if v < target => Outcome::Upgraded { from: v, to: target },
        Some(v) => Outcome::Current(v),
    })
}
