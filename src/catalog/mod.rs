//! The control database: capra's catalog of databases, tables, groups,
//! syncs and hooks, its settings, and (from the engine) run history.
//!
//! Every catalog-changing command runs in one transaction, so a failed
//! command leaves the catalog exactly as it was.

pub mod customcode;
pub mod edit;
mod error;
pub mod event;
pub mod install;
pub mod lease;
pub mod model;
pub mod plan;
pub mod runs;
pub mod settings;
pub mod sync_opts;

pub use error::CatalogError;

use postgres::Client;

use crate::config::Settings;
use crate::error::{Context, Error, Result};
use crate::pg::{self, RowExt};

/// Numbered migrations; `capra install` applies the ones a database lacks.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_catalog.sql")),
    (2, include_str!("migrations/0002_runs.sql")),
    (3, include_str!("migrations/0003_races.sql")),
    (4, include_str!("migrations/0004_conflicts.sql")),
    (5, include_str!("migrations/0005_compare.sql")),
    (6, include_str!("migrations/0006_import.sql")),
    (7, include_str!("migrations/0007_ha.sql")),
];

/// The catalog version this build expects.
pub fn current_version() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// An open connection to the control database, checked to hold a catalog of
/// this build's version.
pub struct Catalog {
    /// The connection.
    pub client: Client,
    /// This installation's identity (tags capra's objects in replicated databases).
    pub installation: String,
    /// Name of the control database, for messages.
    pub dbname: String,
    /// Connection summary without the password.
    pub summary: String,
}

/// What to do when the control database refused or could not be reached,
/// by cause: where it looked is already in the error's summary.
fn control_hint(e: &Error) -> String {
    let conf = crate::config::system_config_path().display().to_string();
    match e.sqlstate().map(|c| c.code()) {
        // A wrong password.
        Some("28P01") => format!(
            "check the role and its password: -U (or CAPRA_DBUSER, dbuser in ~/.caprarc or {conf}), and ~/.pgpass or dbpass"
        ),
        // No such role, or pg_hba.conf lets no one in this way.
        Some("28000") => format!(
            "check the role (-U, CAPRA_DBUSER, dbuser in ~/.caprarc or {conf}) and that the server's pg_hba.conf lets it in from this host"
        ),
        Some("3D000") => format!(
            "name the right one with -d (or CAPRA_DBNAME, dbname in ~/.caprarc, {conf} or a --config file), or create it with capra install (as a role that may create databases, e.g. capra -U postgres install)"
        ),
        _ => format!(
            "point capra at it with -h/-p/-d (or CAPRA_DBHOST, CAPRA_DBPORT, CAPRA_DBNAME, or dbhost/dbport/dbname in ~/.caprarc or {conf}), or create it with capra install"
        ),
    }
}

impl Catalog {
    /// Connects to the control database named by the settings and checks it.
    pub fn open(settings: &Settings, application_name: &str) -> Result<Catalog> {
        let resolved = pg::connect::resolve_for(&settings.control, application_name, "control database")?;
        let dbname = resolved.config.get_dbname().unwrap_or("capra").to_string();
        let mut client = pg::connect::open(&resolved, &format!("the control database \"{dbname}\"")).map_err(|e| {
            let hint = control_hint(&e);
            e.with_hint(&hint)
        })?;
        let row = client
            .query_one("SELECT to_regclass('capra.meta') IS NOT NULL", &[])
            .ctx(|| "checking the control database".into())?;
        if !row.col::<_, bool>(0, "checking the control database")? {
            return Err(Error::CatalogVersion(format!(
                "database \"{dbname}\" ({}) holds no capra catalog; run 'capra install' first, or name the control database with -d/--dbname",
                resolved.summary
            )));
        }
        let row = client
            .query_one("SELECT version, installation FROM capra.meta", &[])
            .ctx(|| "reading the catalog version".into())?;
        let version: i32 = row.col(0, "reading the catalog version")?;
        let cur = current_version();
        if version < cur {
            return Err(Error::CatalogVersion(format!(
                "the catalog in \"{dbname}\" is version {version} but this capra needs version {cur}; run 'capra install' to upgrade it in place"
            )));
        }
        if version > cur {
            return Err(Error::CatalogVersion(format!(
                "the catalog in \"{dbname}\" is version {version}, newer than this capra understands ({cur}); upgrade the capra package"
            )));
        }
        // Connections to replicated databases follow the settings.
        crate::catalog::model::apply_net_settings(&mut client)?;
        Ok(Catalog {
            client,
            installation: row.col(1, "reading the catalog version")?,
            dbname,
            summary: resolved.summary,
        })
    }

    /// Runs `f` in one transaction: commit if it returns Ok, roll back otherwise.
    pub fn edit<T>(&mut self, f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut tx = self
            .client
            .transaction()
            .ctx(|| "starting a catalog transaction".into())?;
        let out = f(&mut tx)?;
        // A running daemon re-reads the catalog (delivered only on commit).
        tx.batch_execute("NOTIFY capra_control, 'reload'")
            .ctx(|| "notifying the daemon".into())?;
        tx.commit().ctx(|| "committing the catalog change".into())?;
        Ok(out)
    }
}
