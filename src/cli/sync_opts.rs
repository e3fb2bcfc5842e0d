//! Sync options as users type them: every `key=value` `add sync` and
//! `update sync` accept, with Bucardo's aliases, read into
//! [`SyncOpt`] before anything is written.

use crate::catalog::sync_opts::SyncOpt;
use crate::cli::kv::{self, key, Key};
use crate::domain::{DeleteMethod, Isolation, OneTimeCopy, Role, Status, Strategy};
use crate::error::{Error, Result};
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

/// The built-in strategy a normalised name stands for.
fn builtin(bare: &str) -> Option<Strategy> {
    Some(match bare {
        "source" => Strategy::Source,
        "target" => Strategy::Target,
        "skip" => Strategy::Skip,
        "random" => Strategy::Random,
        "latest" => Strategy::Latest,
        "latest_all_tables" => Strategy::LatestAllTables,
        "abort" => Strategy::Abort,
        _ => return None,
    })
}

fn flag(column: &'static str, k: &str, v: &str) -> Result<SyncOpt> {
    Ok(SyncOpt::Flag {
        column,
        on: kv::bool_value(k, v)?,
    })
}

/// Reads a conflict strategy: a built-in name (with or without
/// `bucardo_`) or a list of the sync's database names in priority order.
pub fn conflict_strategy(v: &str, sync_dbs: &[String]) -> Result<Strategy> {
    let t = v.trim();
    let lower = t.to_lowercase();
    let bare = lower.strip_prefix("bucardo_").unwrap_or(&lower);
    let bare = match bare {
        "default" => "latest",
        "latest_all" => "latest_all_tables",
        b => b,
    };
    if let Some(s) = builtin(bare) {
        return Ok(s);
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
    Ok(Strategy::Priority(names.into_iter().map(String::from).collect()))
}

/// An interval option: empty, `none` or `0` clear a nullable one; a bare
/// number means seconds, as Bucardo took checktime.
fn interval(column: &'static str, value: &str, nullable: bool) -> SyncOpt {
    let t = value.trim();
    if nullable && (t.is_empty() || t.eq_ignore_ascii_case("none") || t == "0") {
        return SyncOpt::Interval { column, value: None };
    }
    let v = if t.chars().all(|c| c.is_ascii_digit()) {
        format!("{t} seconds")
    } else {
        t.to_string()
    };
    SyncOpt::Interval { column, value: Some(v) }
}

fn schedule(v: &str) -> Result<SyncOpt> {
    let t = v.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("none") {
        return Ok(SyncOpt::Schedule(None));
    }
    let s = Schedule::parse(t).map_err(|e| Error::Usage(format!("invalid value for 'schedule': {e}")))?;
    Ok(SyncOpt::Schedule(Some(s.as_str().to_string())))
}

/// Reads one option. `sync_dbs` are the sync's database names (for
/// conflict strategy lists). Interval values are checked when stored.
pub fn parse(k: &str, v: &str, sync_dbs: &[String]) -> Result<SyncOpt> {
    Ok(match k {
        "autokick" => flag("autokick", k, v)?,
        "stayalive" => flag("stayalive", k, v)?,
        "kidsalive" => flag("kidsalive", k, v)?,
        "analyze_after_copy" => flag("analyze_after_copy", k, v)?,
        "vacuum_after_copy" => flag("vacuum_after_copy", k, v)?,
        "makedelta" => flag("makedelta", k, v)?,
        "strict_checking" => flag("strict_checking", k, v)?,
        "rebuild_index" => SyncOpt::RebuildIndex(
            kv::parse_bool(v)
                .ok_or_else(|| Error::Usage(format!("invalid value for 'rebuild_index': {v:?} (must be 0 or 1)")))?,
        ),
        "onetimecopy" => {
            let n: i16 = kv::parse_choice(k, v, &["0", "1", "2"])?;
            SyncOpt::OneTimeCopy(OneTimeCopy::from_i16(n).map_err(|e| Error::Usage(e.to_string()))?)
        }
        "status" => SyncOpt::Status(kv::parse_choice::<Status>(k, v, &["active", "inactive"])?),
        "conflict_strategy" => SyncOpt::ConflictStrategy(conflict_strategy(v, sync_dbs)?),
        "schedule" => schedule(v)?,
        "checktime" => interval("checktime", v, true),
        "lifetime" => interval("lifetime", v, true),
        "overdue" => interval("overdue", v, false),
        "expired" => interval("expired", v, false),
        "deletemethod" => SyncOpt::DeleteMethod(kv::parse_choice::<DeleteMethod>(
            k,
            v,
            &["delete", "truncate", "truncate_cascade"],
        )?),
        "isolation_level" => SyncOpt::Isolation(kv::parse_choice::<Isolation>(
            k,
            &v.replace('_', " "),
            &["repeatable read", "serializable"],
        )?),
        "maxkicks" | "priority" => {
            let value: i32 = v
                .trim()
                .parse()
                .map_err(|_| Error::Usage(format!("invalid value for '{k}': {v:?} (must be a whole number)")))?;
            let column = if k == "maxkicks" { "maxkicks" } else { "priority" };
            SyncOpt::Number { column, value }
        }
        other => return Err(Error::Usage(format!("'{other}' cannot be set this way"))),
    })
}

/// The message for an interval the server refused.
pub fn bad_interval(k: &str, v: &str) -> Error {
    Error::Usage(format!(
        "invalid value for '{k}': {v:?} (must be an interval such as '5 minutes' or '1 hour', or a number of seconds)"
    ))
}

/// Canonical role from what users type (Bucardo's aliases).
pub fn parse_role(s: &str) -> Result<Role> {
    match s.trim().to_lowercase().as_str() {
        "source" | "s" | "master" | "primary" | "src" => Ok(Role::Source),
        "target" | "t" | "slave" | "replica" | "rep" | "standby" | "tgt" => Ok(Role::Target),
        "fullcopy" | "f" | "copy" | "full" => Ok(Role::Fullcopy),
        other => Err(Error::Usage(format!(
            "invalid role {other:?}: use source, target or fullcopy"
        ))),
    }
}

/// Splits `DB[:role]` (also `DB=role`).
pub fn parse_member(s: &str) -> Result<(String, Option<Role>)> {
    let (db, role) = match s.split_once([':', '=']) {
        Some((d, r)) => (d, Some(parse_role(r.split(':').next().unwrap_or(r))?)),
        None => (s, None),
    };
    kv::check_name("database", db)?;
    Ok((db.to_string(), role))
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
        let text = |v: &str| conflict_strategy(v, &dbs).unwrap().to_string();
        assert_eq!(text("bucardo_latest"), "latest");
        assert_eq!(text("Source"), "source");
        assert_eq!(text("latest_all"), "latest_all_tables");
        assert_eq!(text("B,A"), "B A");
        assert!(conflict_strategy("C", &dbs).is_err());
        assert!(conflict_strategy(" , ", &dbs).is_err());
    }

    #[test]
    fn options() {
        assert_eq!(
            parse("autokick", "0", &[]).unwrap(),
            SyncOpt::Flag {
                column: "autokick",
                on: false
            }
        );
        assert!(parse("autokick", "maybe", &[]).is_err());
        assert!(parse("onetimecopy", "3", &[]).is_err());
        assert_eq!(
            parse("onetimecopy", " 2", &[]).unwrap(),
            SyncOpt::OneTimeCopy(OneTimeCopy::IfEmpty)
        );
        assert_eq!(
            parse("checktime", "60", &[]).unwrap(),
            SyncOpt::Interval {
                column: "checktime",
                value: Some("60 seconds".into())
            }
        );
        assert_eq!(
            parse("checktime", "none", &[]).unwrap(),
            SyncOpt::Interval {
                column: "checktime",
                value: None
            }
        );
        assert!(parse("schedule", "*/5 * * * *", &[]).is_ok());
        assert!(parse("schedule", "nonsense", &[]).is_err());
        assert_eq!(
            parse("isolation_level", "REPEATABLE_READ", &[]).unwrap(),
            SyncOpt::Isolation(Isolation::RepeatableRead)
        );
        assert_eq!(
            parse("deletemethod", "Truncate", &[]).unwrap(),
            SyncOpt::DeleteMethod(DeleteMethod::Truncate)
        );
    }

    #[test]
    fn members() {
        assert_eq!(parse_member("a:master").unwrap(), ("a".to_string(), Some(Role::Source)));
        assert_eq!(parse_member("b=rep").unwrap(), ("b".to_string(), Some(Role::Target)));
        assert_eq!(parse_member("c").unwrap(), ("c".to_string(), None));
        assert!(parse_member("d:boss").is_err());
        assert!(parse_member("1x").is_err());
    }
}
