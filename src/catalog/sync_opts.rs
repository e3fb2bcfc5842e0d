//! Sync options: every `key=value` `add sync` and `update sync` accept, with
//! Bucardo's aliases, checked before anything is written.

use crate::catalog::kv::{self, key, Key};
use postgres::Transaction;

use crate::error::{Context, Error, Result};
use crate::schedule::cron::Schedule;

/// Keys `add sync` / `update sync` accept.
pub const SYNC_KEYS: &[Key] = &[
    key("relgroup", &["herd", "relgroups"]),
    key("dbs", &["dbgroup", "db", "database", "databases"]),
    key("tables", &["table", "relation", "relations"]),
    key("source", &[]),
    key("targetdb", &[]),
    key("targetgroup", &[]),
    key("type", &["synctype"]),
    key("autokick", &["ping"]),
    key("onetimecopy", &[]),
    key("conflict_strategy", &["standard_conflict", "conflict"]),
    key("schedule", &["cron"]),
    key("checktime", &["checksecs"]),
    key("stayalive", &[]),
    key("kidsalive", &[]),
    key("rebuild_index", &["rebuildindex"]),
    key("analyze_after_copy", &[]),
    key("vacuum_after_copy", &[]),
    key("makedelta", &[]),
    key("status", &[]),
    key("deletemethod", &[]),
    key("isolation_level", &["txnmode"]),
    key("overdue", &[]),
    key("expired", &[]),
    key("lifetime", &[]),
    key("maxkicks", &[]),
    key("priority", &[]),
    key("strict_checking", &[]),
];

/// Built-in conflict strategies (Bucardo's `bucardo_` prefix accepted).
pub const STRATEGIES: &[&str] = &[
    "source",
    "target",
    "skip",
    "random",
    "latest",
    "latest_all_tables",
    "abort",
];

/// One checked option, ready for SQL.
#[derive(Clone, Debug, PartialEq)]
pub struct Opt {
    /// Column in `capra.sync`.
    pub column: &'static str,
    /// Value as text (None: NULL).
    pub value: Option<String>,
    /// SQL type to cast the text to.
    pub cast: &'static str,
}

fn bool_opt(column: &'static str, k: &str, v: &str) -> Result<Opt> {
    let b = kv::parse_bool(v).ok_or_else(|| {
        Error::Usage(format!(
            "invalid value for '{k}': {v:?} (must be true or false: 1/0, yes/no, on/off)"
        ))
    })?;
    Ok(Opt {
        column,
        value: Some(b.to_string()),
        cast: "boolean",
    })
}

/// Normalises a conflict strategy: a built-in name (with or without
/// `bucardo_`) or a list of the sync's database names in priority order.
pub fn conflict_strategy(v: &str, sync_dbs: &[String]) -> Result<String> {
    let t = v.trim();
    let lower = t.to_lowercase();
    let bare = lower.strip_prefix("bucardo_").unwrap_or(&lower);
    let bare = match bare {
        "default" => "latest",
        "latest_all" => "latest_all_tables",
        b => b,
    };
    if STRATEGIES.contains(&bare) {
        return Ok(bare.to_string());
    }
    let names: Vec<&str> = t.split([' ', ',']).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err(Error::Usage("invalid value for 'conflict_strategy': empty".into()));
    }
    for n in &names {
        if !sync_dbs.iter().any(|d| d == n) {
            return Err(Error::Usage(format!(
                "invalid value for 'conflict_strategy': {t:?}: \"{n}\" is neither a strategy ({}) nor a database of this sync ({})",
                STRATEGIES.join(", "),
                if sync_dbs.is_empty() { "none yet".to_string() } else { sync_dbs.join(", ") }
            )));
        }
    }
    Ok(names.join(" "))
}

/// Checks one option. `sync_dbs` are the sync's database names (for
/// conflict strategy lists). Interval values are checked later by the server.
pub fn check(k: &str, v: &str, sync_dbs: &[String]) -> Result<Opt> {
    let text = |column, value: Option<String>| Opt {
        column,
        value,
        cast: "text",
    };
    let interval = |column, value: &str, nullable: bool| {
        let t = value.trim();
        if nullable && (t.is_empty() || t.eq_ignore_ascii_case("none") || t == "0") {
            Opt {
                column,
                value: None,
                cast: "interval",
            }
        } else {
            // Bucardo took checktime in seconds: a bare number means seconds.
            let v = if t.chars().all(|c| c.is_ascii_digit()) {
                format!("{t} seconds")
            } else {
                t.to_string()
            };
            Opt {
                column,
                value: Some(v),
                cast: "interval",
            }
        }
    };
    Ok(match k {
        "autokick" => bool_opt("autokick", k, v)?,
        "stayalive" => bool_opt("stayalive", k, v)?,
        "kidsalive" => bool_opt("kidsalive", k, v)?,
        "analyze_after_copy" => bool_opt("analyze_after_copy", k, v)?,
        "vacuum_after_copy" => bool_opt("vacuum_after_copy", k, v)?,
        "makedelta" => bool_opt("makedelta", k, v)?,
        "strict_checking" => bool_opt("strict_checking", k, v)?,
        "rebuild_index" => {
            let b = kv::parse_bool(v)
                .ok_or_else(|| Error::Usage(format!("invalid value for 'rebuild_index': {v:?} (must be 0 or 1)")))?;
            Opt {
                column: "rebuild_index",
                value: Some(if b { "1" } else { "0" }.into()),
                cast: "smallint",
            }
        }
        "onetimecopy" => Opt {
            column: "onetimecopy",
            value: Some(kv::check_choice(k, v, &["0", "1", "2"])?),
            cast: "smallint",
        },
        "status" => text("status", Some(kv::check_choice(k, v, &["active", "inactive"])?)),
        "conflict_strategy" => text("conflict_strategy", Some(conflict_strategy(v, sync_dbs)?)),
        "schedule" => {
            let t = v.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("none") {
                text("schedule", None)
            } else {
                let s = Schedule::parse(t).map_err(|e| Error::Usage(format!("invalid value for 'schedule': {e}")))?;
                text("schedule", Some(s.as_str().to_string()))
            }
        }
        "checktime" => interval("checktime", v, true),
        "lifetime" => interval("lifetime", v, true),
        "overdue" => interval("overdue", v, false),
        "expired" => interval("expired", v, false),
        "deletemethod" => text(
            "deletemethod",
            Some(kv::check_choice(k, v, &["delete", "truncate", "truncate_cascade"])?),
        ),
        "isolation_level" => text(
            "isolation_level",
            Some(kv::check_choice(
                k,
                &v.replace('_', " "),
                &["repeatable read", "serializable"],
            )?),
        ),
        "maxkicks" | "priority" => {
            let n: i32 = v
                .trim()
                .parse()
                .map_err(|_| Error::Usage(format!("invalid value for '{k}': {v:?} (must be a whole number)")))?;
            Opt {
                column: if k == "maxkicks" { "maxkicks" } else { "priority" },
                value: Some(n.to_string()),
                cast: "integer",
            }
        }
        other => return Err(Error::Usage(format!("'{other}' cannot be set this way"))),
    })
}

/// Writes one checked option; interval values are checked by the server in a
/// savepoint so a bad one gives a usage error, not an aborted transaction.
pub fn store(
    tx: &mut Transaction<'_>,
    sync: &str,
    k: &str,
    v: &str,
    dbs: &[String],
) -> Result<(Option<String>, Option<String>)> {
    let opt = check(k, v, dbs)?;
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

/// Why an option a Bucardo script may pass changes nothing in capra (or
/// not yet), for a one-line warning; None for options that act.
pub fn inert(k: &str) -> Option<&'static str> {
    match k {
        "stayalive" | "kidsalive" => {
            Some("no effect in capra: each sync's controller thread and its pooled connections always stay up")
        }
        "lifetime" | "maxkicks" => Some("no effect in capra: controllers are threads that are never recycled"),
        "priority" => Some("no effect in capra: runs start in the order they fall due"),
        _ => None,
    }
}

/// Keys that are options (as opposed to what/where keys).
pub fn is_option(k: &str) -> bool {
    !matches!(
        k,
        "relgroup" | "dbs" | "tables" | "source" | "targetdb" | "targetgroup" | "type"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies() {
        let dbs = vec!["A".to_string(), "B".to_string()];
        assert_eq!(conflict_strategy("bucardo_latest", &dbs).unwrap(), "latest");
        assert_eq!(conflict_strategy("Source", &dbs).unwrap(), "source");
        assert_eq!(conflict_strategy("latest_all", &dbs).unwrap(), "latest_all_tables");
        assert_eq!(conflict_strategy("B,A", &dbs).unwrap(), "B A");
        assert!(conflict_strategy("C", &dbs).is_err());
    }

    #[test]
    fn options() {
        assert_eq!(check("autokick", "0", &[]).unwrap().value.as_deref(), Some("false"));
        assert!(check("autokick", "maybe", &[]).is_err());
        assert!(check("onetimecopy", "3", &[]).is_err());
        assert_eq!(
            check("checktime", "60", &[]).unwrap().value.as_deref(),
            Some("60 seconds")
        );
        assert_eq!(check("checktime", "none", &[]).unwrap().value, None);
        assert!(check("schedule", "*/5 * * * *", &[]).is_ok());
        assert!(check("schedule", "nonsense", &[]).is_err());
        assert_eq!(
            check("isolation_level", "REPEATABLE_READ", &[])
                .unwrap()
                .value
                .as_deref(),
            Some("repeatable read")
        );
    }
}
