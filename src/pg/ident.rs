//! Identifier quoting: every table, schema and column name capra puts into
//! SQL goes through here, so odd names such as `"AO_92296B_AORECENTLY_VIEWED"`
//! or `"bucardo space test"` are always safe.

use std::fmt;

/// Quotes one identifier the way PostgreSQL's `quote_ident` does, except that
/// it always quotes: a name never needs guessing about keywords or case.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// PostgreSQL's reserved key words: as identifiers they need quotes.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// One identifier as a user pastes it into psql: bare when PostgreSQL
/// reads it back unchanged (lower case, not a reserved word), else quoted.
pub fn show_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !RESERVED.contains(&name);
    if plain {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// A `schema.table` kept as text (run history, conflict records, keys of
/// reports) as a user pastes it into psql. The first dot splits it: a table
/// name may hold dots, a schema capra replicates from in practice does not.
pub fn show_qualified(human: &str) -> String {
    match human.split_once('.') {
        Some((schema, name)) => format!("{}.{}", show_ident(schema), show_ident(name)),
        None => show_ident(human),
    }
}

/// A schema-qualified relation name; `Display` renders it quoted for SQL.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct QualName {
    /// Schema, as stored in `pg_namespace` (no quotes).
    pub schema: String,
    /// Relation, as stored in `pg_class` (no quotes).
    pub name: String,
}

impl QualName {
    /// Builds a name from its two raw parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name unquoted (`public.AO_92296B_AORECENTLY_VIEWED`), for logs in
    /// Bucardo's format and for matching what a user typed; output meant
    /// for pasting uses [`QualName::shown`].
    pub fn human(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The name as printed for a user to paste into psql:
    /// `public."AO_92296B_AORECENTLY_VIEWED"`, `public.kv`.
    pub fn shown(&self) -> String {
        format!("{}.{}", show_ident(&self.schema), show_ident(&self.name))
    }

    /// The name as SQL needs it, both parts quoted.
    pub fn sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for QualName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

/// Splits what a user typed (`schema.table`, `table`, `"Odd.Name"`,
/// `public."AO_X"`) into an optional schema and a name, honouring double
/// quotes. Returns the parts and whether each was quoted (a quoted part must
/// match exactly; an unquoted one may match case-insensitively).
pub fn split_user_name(input: &str) -> Result<(Option<NamePart>, NamePart), String> {
    let mut parts: Vec<NamePart> = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = input.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' {
            in_quotes = true;
            quoted = true;
        } else if c == '.' {
            parts.push(NamePart {
                text: std::mem::take(&mut cur),
                quoted,
            });
            quoted = false;
        } else {
            cur.push(c);
        }
    }
    if in_quotes {
        return Err(format!("unbalanced double quote in name {input:?}"));
    }
    parts.push(NamePart { text: cur, quoted });
    if parts.iter().any(|p| p.text.is_empty()) {
        return Err(format!("empty name part in {input:?}"));
    }
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => Ok((None, name)),
        (Some(schema), Some(name), None) => Ok((Some(schema), name)),
        _ => Err(format!(
            "too many dots in name {input:?}: write schema.table, quoting parts that contain dots"
        )),
    }
}

/// One part of a user-typed name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePart {
    /// The text without quotes.
    pub text: String,
    /// Whether the user quoted it (then it must match exactly).
    pub quoted: bool,
}

impl NamePart {
    /// Whether this part names `actual` (exact when quoted or when it
    /// contains `*`/`%` wildcards, which match any run of characters).
    pub fn matches(&self, actual: &str) -> bool {
        if !self.quoted && (self.text.contains('*') || self.text.contains('%')) {
            return wildcard_match(&self.text.replace('%', "*"), actual);
        }
        self.text == actual
    }

    /// Whether this part names `actual` ignoring case (for unquoted names
    /// that found no exact match).
    pub fn matches_folded(&self, actual: &str) -> bool {
        !self.quoted && self.text.to_lowercase() == actual.to_lowercase()
    }
}

/// Glob match with `*` only.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_names_paste_into_psql() {
        assert_eq!(QualName::new("public", "kv").shown(), "public.kv");
        assert_eq!(
            QualName::new("public", "AO_92296B_AORECENTLY_VIEWED").shown(),
            r#"public."AO_92296B_AORECENTLY_VIEWED""#
        );
        assert_eq!(show_ident("user"), r#""user""#, "a reserved word");
        assert_eq!(show_ident("1abc"), r#""1abc""#);
        assert_eq!(show_ident("a b\"c"), r#""a b""c""#);
        assert_eq!(show_ident("_x$1"), "_x$1");
        assert_eq!(show_qualified("public.AO_X"), r#"public."AO_X""#);
        assert_eq!(show_qualified("public.Odd.Name"), r#"public."Odd.Name""#);
        assert_eq!(show_qualified("public.kv"), "public.kv");
    }

    #[test]
    fn quotes_everything() {
        assert_eq!(
            quote_ident("AO_92296B_AORECENTLY_VIEWED"),
            "\"AO_92296B_AORECENTLY_VIEWED\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("x; drop table t"), "\"x; drop table t\"");
    }

    #[test]
    fn splits_user_names() {
        let (s, n) = split_user_name("public.\"AO_X\"").unwrap();
        assert_eq!(s.unwrap().text, "public");
        assert!(n.quoted && n.text == "AO_X");
        let (s, n) = split_user_name("\"a.b\"").unwrap();
        assert!(s.is_none());
        assert_eq!(n.text, "a.b");
        assert!(split_user_name("a.b.c").is_err());
        assert!(split_user_name("\"abc").is_err());
        assert!(split_user_name("a.").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("pgbench_*", "pgbench_history"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*c", "abd"));
        assert!(wildcard_match("a*c*", "abcxc"));
    }
}
