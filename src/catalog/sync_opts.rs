//! Sync options as the catalog stores them: each one column of
//! `capra.sync`, with a value the command line has already checked
//! (`crate::cli::sync_opts` reads what users type).

use postgres::Transaction;

use crate::domain::{DeleteMethod, Isolation, OneTimeCopy, Status, Strategy};
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// One checked sync option. Column names come from the command line's
/// fixed table of options, never from user text.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncOpt {
    /// A boolean column (autokick, stayalive, makedelta, ...).
    Flag {
        /// The column.
        column: &'static str,
        /// Its value.
        on: bool,
    },
    /// Bucardo's 0/1 `rebuild_index`.
    RebuildIndex(bool),
    /// Whether the next run copies tables whole.
    OneTimeCopy(OneTimeCopy),
    /// Whether the sync runs.
    Status(Status),
    /// How conflicts between sources are settled.
    ConflictStrategy(Strategy),
    /// A cron schedule, normalised (None: no schedule).
    Schedule(Option<String>),
    /// An interval column (checktime, lifetime, overdue, expired); the
    /// server checks the text when it is stored.
    Interval {
        /// The column.
        column: &'static str,
        /// The interval (None: NULL).
        value: Option<String>,
    },
    /// How a full copy empties a target's table.
    DeleteMethod(DeleteMethod),
    /// The snapshot runs read their sources in.
    Isolation(Isolation),
    /// A whole-number column (maxkicks, priority).
    Number {
        /// The column.
        column: &'static str,
        /// Its value.
        value: i32,
    },
}

impl SyncOpt {
    /// The column of `capra.sync` this option sets (also its canonical key).
    pub fn column(&self) -> &'static str {
        match self {
            SyncOpt::Flag { column, .. } | SyncOpt::Interval { column, .. } | SyncOpt::Number { column, .. } => column,
            SyncOpt::RebuildIndex(_) => "rebuild_index",
            SyncOpt::OneTimeCopy(_) => "onetimecopy",
            SyncOpt::Status(_) => "status",
            SyncOpt::ConflictStrategy(_) => "conflict_strategy",
            SyncOpt::Schedule(_) => "schedule",
            SyncOpt::DeleteMethod(_) => "deletemethod",
            SyncOpt::Isolation(_) => "isolation_level",
        }
    }

    /// The value as text (None: NULL) and the SQL type to cast it to.
    fn sql(&self) -> (Option<String>, &'static str) {
        match self {
            SyncOpt::Flag { on, .. } => (Some(on.to_string()), "boolean"),
            SyncOpt::RebuildIndex(b) => (Some(if *b { "1" } else { "0" }.into()), "smallint"),
            SyncOpt::OneTimeCopy(o) => (Some(o.as_i16().to_string()), "smallint"),
            SyncOpt::Status(s) => (Some(s.as_str().into()), "text"),
            SyncOpt::ConflictStrategy(s) => (Some(s.to_string()), "text"),
            SyncOpt::Schedule(s) => (s.clone(), "text"),
            SyncOpt::Interval { value, .. } => (value.clone(), "interval"),
            SyncOpt::DeleteMethod(d) => (Some(d.as_str().into()), "text"),
            SyncOpt::Isolation(i) => (Some(i.as_str().into()), "text"),
            SyncOpt::Number { value, .. } => (Some(value.to_string()), "integer"),
        }
    }
}

/// What storing an option did.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    /// The column changed (values as text; None: NULL).
    Changed {
        /// Before.
        old: Option<String>,
        /// After.
        new: Option<String>,
    },
    /// The server refused the text as an interval; nothing changed.
    BadInterval,
}

/// Writes one checked option; interval values are checked by the server in
/// a savepoint, so a bad one leaves the transaction usable.
pub fn store(tx: &mut Transaction<'_>, sync: &str, opt: &SyncOpt) -> Result<Stored> {
    let col = opt.column();
    let (value, cast) = opt.sql();
    let what = format!("reading {col} of sync \"{sync}\"");
    let old: Option<String> = tx
        .query_one(&format!("SELECT {col}::text FROM capra.sync WHERE name = $1"), &[&sync])
        .ctx(|| what.clone())?
        .col(0, &what)?;
    let mut sp = tx.savepoint("capra_opt").ctx(|| "savepoint".into())?;
    let res = sp.query_one(
        &format!("UPDATE capra.sync SET {col} = $1::text::{cast} WHERE name = $2 RETURNING {col}::text"),
        &[&value, &sync],
    );
    match res {
        Ok(row) => {
            let new = row.col(0, &format!("setting {col} of sync \"{sync}\""))?;
            sp.commit().ctx(|| "savepoint".into())?;
            Ok(Stored::Changed { old, new })
        }
        Err(e) => {
            drop(sp);
            if cast == "interval" {
                Ok(Stored::BadInterval)
            } else {
                Err(e).ctx(|| format!("setting {col} of sync \"{sync}\""))
            }
        }
    }
}
