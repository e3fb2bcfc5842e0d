//! Settings: `capra set`.

use crate::catalog::edit;
use crate::catalog::settings::{self, Kind, Setting};
use crate::cli::{kv, sync_opts, Ctx};
use crate::error::{Error, Result};

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
        let s = settings::find(k.trim()).ok_or_else(|| {
            let near = crate::cli::suggest::nearest(k.trim(), settings::SETTINGS.iter().map(|s| s.name));
            Error::Usage(match near {
                Some(n) => format!(
                    "Unknown setting '{}': did you mean '{n}'? (see: capra show all)",
                    k.trim()
                ),
                None => format!("Unknown setting '{}' (see: capra show all)", k.trim()),
            })
        })?;
        let v = normalise(s, v).map_err(Error::Usage)?;
        checked.push((s, v));
    }
    let mut cat = ctx.catalog()?;
    cat.edit(|tx| {
        for (s, v) in &checked {
            edit::store_setting(tx, s, v)?;
        }
        Ok(())
    })?;
    for (s, v) in checked {
        let n = s.name;
        // Passwords never reach output.
        let shown = if n.contains("pass") && !v.is_empty() {
            "********"
        } else {
            v.as_str()
        };
        ctx.say(format!("Set \"{n}\" to \"{shown}\""));
        if let Some(why) = settings::inert(s) {
            eprintln!("capra: warning: setting \"{n}\" has no effect in capra{why}");
        }
    }
    Ok(())
}

/// Checks and normalises a value for a setting; the error says what is allowed.
fn normalise(s: &Setting, value: &str) -> Result<String, String> {
    let v = value.trim();
    match s.kind {
        Kind::Bool => kv::parse_bool(v)
            .map(|b| if b { "1" } else { "0" }.to_string())
            .ok_or_else(|| format!("invalid value for '{}': {v:?} (must be true or false)", s.name)),
        Kind::Int(lo, hi) => match v.parse::<i64>() {
            Ok(n) if n >= lo && n <= hi => Ok(n.to_string()),
            _ => Err(format!(
                "invalid value for '{}': {v:?} (must be a whole number from {lo} to {hi})",
                s.name
            )),
        },
        Kind::Seconds { allow_minus_one } => match v.parse::<f64>() {
            Ok(n) if n.is_finite() && (n >= 0.0 || (allow_minus_one && n == -1.0)) => Ok(v.to_string()),
            _ => Err(format!(
                "invalid value for '{}': {v:?} (must be a number of seconds{})",
                s.name,
                if allow_minus_one { ", or -1" } else { "" }
            )),
        },
        Kind::Enum(choices) => {
            let norm = v.to_lowercase().replace('_', " ");
            choices
                .iter()
                .find(|c| **c == norm)
                .map(|c| c.to_string())
                .ok_or_else(|| {
                    format!(
                        "invalid value for '{}': {v:?} (must be one of: {})",
                        s.name,
                        choices.join(", ")
                    )
                })
        }
        Kind::Strategy => {
            let norm = sync_opts::conflict_strategy(v, &[]).map_err(|_| {
                format!(
                    "invalid value for '{}': {v:?} (must be one of: {}; a list of databases belongs on a sync: capra update sync NAME conflict_strategy=...)",
                    s.name,
                    sync_opts::STRATEGIES.join(", ")
                )
            })?;
            Ok(norm.to_string())
        }
        Kind::Cron if v.trim().is_empty() => Ok(String::new()),
        Kind::Cron => crate::schedule::cron::Schedule::parse(v)
            .map(|s| s.as_str().to_string())
            .map_err(|e| format!("invalid value for '{}': {e}", s.name)),
        Kind::Text => Ok(v.to_string()),
        Kind::Path => {
            if v.is_empty() || v.starts_with('/') {
                Ok(v.to_string())
            } else {
                Err(format!(
                    "invalid value for '{}': {v:?} (must be an absolute path)",
                    s.name
                ))
            }
        }
        Kind::Listen => crate::metrics::check_listen(v)
            .map(|()| v.to_string())
            .map_err(|e| format!("invalid value for '{}': {v:?} ({e})", s.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::settings::{find, SETTINGS};

    #[test]
    fn defaults_are_valid() {
        for s in SETTINGS {
            assert_eq!(normalise(s, s.default).as_deref(), Ok(s.default), "{}", s.name);
        }
    }

    #[test]
    fn checks_values() {
        let lvl = find("LOG_LEVEL").unwrap();
        assert_eq!(normalise(lvl, "Verbose").unwrap(), "verbose");
        assert!(normalise(lvl, "loud").is_err());
        let b = find("bucardo_vac").unwrap();
        assert_eq!(normalise(b, "off").unwrap(), "0");
        assert!(normalise(find("worker_threads").unwrap(), "0").is_err());
        assert!(normalise(find("kid_serial_sleep").unwrap(), "-1").is_ok());
        assert!(normalise(find("ctl_sleep").unwrap(), "-1").is_err());
        assert_eq!(
            normalise(find("default_conflict_strategy").unwrap(), "bucardo_source").unwrap(),
            "source"
        );
    }
}
