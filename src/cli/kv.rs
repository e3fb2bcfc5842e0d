//! The `key=value` grammar every catalog command shares: pairs in any order
//! after the positional names, keys with their Bucardo aliases, booleans and
//! enumerations checked with a message that says what is allowed.

use crate::error::{Error, Result};

/// A key a command accepts, with the spellings Bucardo users type.
#[derive(Clone, Copy, Debug)]
pub struct Key {
    /// Canonical name.
    pub name: &'static str,
    /// Other accepted spellings (Bucardo 4 and 5 aliases).
    pub aliases: &'static [&'static str],
}

/// Shorthand for a key table entry.
pub const fn key(name: &'static str, aliases: &'static [&'static str]) -> Key {
    Key { name, aliases }
}

/// Arguments split into positional words and canonical `key=value` pairs.
#[derive(Clone, Debug, Default)]
pub struct Args {
    /// Words without `=`, in order.
    pub positional: Vec<String>,
    /// Pairs in order, keys canonical.
    pub pairs: Vec<(String, String)>,
}

impl Args {
    /// The value of a canonical key, if given.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    /// Whether a key was given.
    pub fn has(&self, k: &str) -> bool {
        self.get(k).is_some()
    }

    /// A boolean key, checked.
    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        self.get(k).map(|v| bool_value(k, v)).transpose()
    }

    /// A key restricted to a list of values (case-insensitive).
    pub fn choice(&self, k: &str, choices: &[&str]) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => check_choice(k, v, choices).map(Some),
        }
    }

    /// A key restricted to a domain type's words (case-insensitive).
    pub fn choice_of<T: std::str::FromStr>(&self, k: &str, choices: &[&str]) -> Result<Option<T>> {
        self.get(k).map(|v| parse_choice(k, v, choices)).transpose()
    }

    /// A non-negative whole number.
    pub fn number(&self, k: &str, max: i64) -> Result<Option<i64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if (0..=max).contains(&n) => Ok(Some(n)),
                _ => Err(Error::Usage(format!(
                    "invalid value for '{k}': {v:?} (must be a whole number from 0 to {max})"
                ))),
            },
        }
    }
}

/// Checks a value against a list, case-insensitively; returns it lower-cased.
pub fn check_choice(k: &str, v: &str, choices: &[&str]) -> Result<String> {
    let lower = v.trim().to_lowercase();
    if choices.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(Error::Usage(format!(
            "invalid value for '{k}': {v:?} (must be one of: {})",
            choices.join(", ")
        )))
    }
}

/// The value of boolean key `k`, checked.
pub fn bool_value(k: &str, v: &str) -> Result<bool> {
    parse_bool(v).ok_or_else(|| {
        Error::Usage(format!(
            "invalid value for '{k}': {v:?} (must be true or false: 1/0, yes/no, on/off)"
        ))
    })
}

/// Checks a value against a list (as [`check_choice`]) and reads it as a
/// domain type whose words the list holds.
pub fn parse_choice<T: std::str::FromStr>(k: &str, v: &str, choices: &[&str]) -> Result<T> {
    let c = check_choice(k, v, choices)?;
    c.parse::<T>().map_err(|_| {
        Error::Usage(format!(
            "invalid value for '{k}': {v:?} (must be one of: {})",
            choices.join(", ")
        ))
    })
}

/// Bucardo's boolean words: t/true/on/yes/1 and f/false/off/no/0.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_lowercase().as_str() {
        "1" | "t" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "f" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Splits `words` into positional names and pairs whose keys are in `keys`.
/// `what` names the command in errors ("add db").
pub fn split(words: &[String], keys: &[Key], what: &str) -> Result<Args> {
    let mut out = Args::default();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            out.positional.push(w.clone());
            continue;
        };
        let norm = k.trim().to_lowercase().replace('-', "_");
        if norm.is_empty() || !norm.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Usage(format!(
                "malformed argument {w:?} for '{what}': expected key=value"
            )));
        }
        let Some(key) = keys
            .iter()
            .find(|key| key.name == norm || key.aliases.contains(&norm.as_str()))
        else {
            let mut names: Vec<&str> = keys.iter().map(|k| k.name).collect();
            names.sort();
            let known = keys
                .iter()
                .flat_map(|k| std::iter::once((k.name, k.name)).chain(k.aliases.iter().map(|a| (*a, k.name))));
            if let Some(best) = crate::cli::suggest::nearest_mapped(&norm, known) {
                return Err(Error::Usage(format!(
                    "unknown option '{}' for '{what}': did you mean '{best}'?",
                    k.trim()
                )));
            }
            return Err(Error::Usage(format!(
                "unknown option '{}' for '{what}' (valid: {})",
                k.trim(),
                names.join(", ")
            )));
        };
        if let Some((_, prev)) = out.pairs.iter().find(|(n, _)| n == key.name) {
            if prev != v {
                return Err(Error::Usage(format!(
                    "option '{}' given twice with different values ({prev:?} and {v:?})",
                    key.name
                )));
            }
            continue;
        }
        out.pairs.push((key.name.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Checks a capra object name (db, dbgroup, relgroup, sync, customcode):
/// a letter, then letters, digits or underscores, at most 63 characters.
/// Names appear in messages, scripts and status lines, so they stay simple.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid {kind} name {name:?}: use a letter followed by letters, digits or underscores (at most 63)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[Key] = &[key("dbname", &["db"]), key("conn", &["dbconn"]), key("status", &[])];

    fn w(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_pairs_anywhere() {
        let a = split(&w(&["dbname=x", "name1", "conn=sslmode=require"]), KEYS, "t").unwrap();
        assert_eq!(a.positional, vec!["name1"]);
        assert_eq!(a.get("conn"), Some("sslmode=require"));
        assert_eq!(a.get("dbname"), Some("x"));
        let a = split(&w(&["DB=y"]), KEYS, "t").unwrap();
        assert_eq!(a.get("dbname"), Some("y"));
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        assert!(matches!(split(&w(&["nope=1"]), KEYS, "t"), Err(Error::Usage(_))));
        assert!(matches!(split(&w(&["=1"]), KEYS, "t"), Err(Error::Usage(_))));
        assert!(matches!(split(&w(&["a b=1"]), KEYS, "t"), Err(Error::Usage(_))));
        assert!(matches!(
            split(&w(&["db=1", "dbname=2"]), KEYS, "t"),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn names_and_bools() {
        assert!(check_name("sync", "confluence_sync").is_ok());
        for bad in ["", "1a", "a-b", "a b", "a'b", "x;drop", "\"q\""] {
            assert!(check_name("sync", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
