//! `key = value` files: `--config FILE`, `~/.caprarc`, `/etc/capra/capra.conf`.

use std::collections::BTreeMap;
use std::path::Path;

/// Keys a config file may set.
pub const KNOWN_KEYS: &[&str] = &[
    "dbhost",
    "dbport",
    "dbuser",
    "dbname",
    "dbpass",
    "piddir",
    "logdest",
    "loglevel",
    "metrics_listen",
];

/// A bad line in a config file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A line that is not `key = value`.
    #[error("{path}:{line}: expected 'key = value', found {text:?}")]
    Syntax {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// The offending text.
        text: String,
    },
    /// A key capra does not know.
    #[error("{path}:{line}: unknown setting '{key}' (known: {known})", known = KNOWN_KEYS.join(", "))]
    UnknownKey {
        /// File path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// The key.
        key: String,
    },
}

/// Reads a config file into key/value pairs. Values may be wrapped in single
/// or double quotes; `#` starts a comment outside quotes.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses config text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<BTreeMap<String, String>, FileError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim().to_string();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            return Err(FileError::Syntax {
                path: origin.into(),
                line: i + 1,
                text: raw.into(),
            });
        };
        let key = k.trim().to_lowercase().replace('-', "");
        if key.is_empty() {
            return Err(FileError::Syntax {
                path: origin.into(),
                line: i + 1,
                text: raw.into(),
            });
        }
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(FileError::UnknownKey {
                path: origin.into(),
                line: i + 1,
                key,
            });
        }
        let mut v = v.trim().to_string();
        if v.len() >= 2 && ((v.starts_with('\'') && v.ends_with('\'')) || (v.starts_with('"') && v.ends_with('"'))) {
            v = v[1..v.len() - 1].to_string();
        }
        out.insert(key, v);
    }
    Ok(out)
}

fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let m = parse("# c\ndbhost = 127.0.0.1\n dbport=5433 # x\ndbpass = 'a#b'\n", "t").unwrap();
        assert_eq!(m["dbhost"], "127.0.0.1");
        assert_eq!(m["dbport"], "5433");
        assert_eq!(m["dbpass"], "a#b");
        assert!(matches!(
            parse("nonsense\n", "t"),
            Err(FileError::Syntax { line: 1, .. })
        ));
        assert!(matches!(parse("x = 1\n", "t"), Err(FileError::UnknownKey { .. })));
    }
}
