//! "Did you mean …?": the nearest known name for a typo, for objects,
//! options and settings alike.

use crate::catalog::{model, Catalog};
use crate::config;
use crate::error::Error;

/// The edit distance between two names (case-insensitive), a swap of two
/// neighbouring letters counting as one edit.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The known name nearest to `word`, if it is near enough to be a typo (a
/// third of its letters at most) and the only one that near.
pub fn nearest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nearest_mapped(word, known.into_iter().map(|k| (k, k)))
}

/// [`nearest`] over (spelling, name) pairs: an option's aliases lead to
/// its name, and spellings of one name never tie with each other.
pub fn nearest_mapped<'a>(word: &str, known: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<&'a str> {
    let len = word.chars().count();
    if len < 3 || word.contains(['*', '%']) {
        return None;
    }
    let limit = (len / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    let mut tie = false;
    for (spelling, name) in known {
        if spelling == word {
            continue;
        }
        let d = distance(word, spelling);
        if d > limit {
            continue;
        }
        match best {
            Some((bd, b)) if d == bd && b != name => tie = true,
            Some((bd, _)) if d >= bd => {}
            _ => {
                best = Some((d, name));
                tie = false;
            }
        }
    }
    best.filter(|_| !tie).map(|(_, k)| k)
}

/// Adds "did you mean …?" to a not-found error, from the names the
/// catalog has of that kind; any other error, or no near name, is left as
/// it was.
pub fn enrich(flags: &config::Flags, e: Error) -> Error {
    let Error::NotFound {
        kind,
        name,
        hint,
        looked: false,
    } = e
    else {
        return e;
    };
    let known = config::load(flags)
        .ok()
        .and_then(|s| Catalog::open(&s, "capra").ok())
        .and_then(|mut cat| names_of(&mut cat.client, kind));
    let best = known
        .as_ref()
        .and_then(|k| nearest_mapped(&name, k.iter().map(|(s, n)| (s.as_str(), n.as_str()))));
    let hint = match (best, hint.strip_prefix("; ")) {
        (Some(b), Some(rest)) => format!("; did you mean {b}? ({rest})"),
        (Some(b), None) => format!("; did you mean {b}?"),
        (None, _) => hint,
    };
    Error::NotFound {
        kind,
        name,
        hint,
        looked: true,
    }
}

/// The catalog's names of one kind of object, as (spelling a user may
/// have meant, the name as the suggestion prints it): objects named in
/// double quotes as the errors name them; tables and sequences as psql
/// needs them, reached from the bare name or `schema.name` alike.
fn names_of(c: &mut postgres::Client, kind: &str) -> Option<Vec<(String, String)>> {
    let plain: Vec<String> = match kind {
        "sync" => model::syncs(c).ok()?.into_iter().map(|s| s.name).collect(),
        "database" => model::dbs(c).ok()?.into_iter().map(|d| d.name).collect(),
        "relgroup" => model::relgroups(c).ok()?.into_iter().map(|g| g.name).collect(),
        "dbgroup" => model::dbgroups(c).ok()?.into_iter().map(|g| g.name).collect(),
        "customcode" => model::customcodes(c).ok()?.into_iter().map(|g| g.name).collect(),
        "table" | "sequence" => {
            let rels = model::relations(c, None).ok()?;
            return Some(spellings(rels.iter().filter(|r| r.reltype.as_str() == kind)));
        }
        _ => return None,
    };
    Some(plain.into_iter().map(|n| (n.clone(), format!("\"{n}\""))).collect())
}

/// Tables and sequences as (bare name or `schema.name`, the name as psql
/// needs it).
fn spellings<'a>(rels: impl Iterator<Item = &'a model::Relation>) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = rels
        .flat_map(|r| {
            let shown = r.name.shown();
            [(r.name.name.clone(), shown.clone()), (r.name.human(), shown)]
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The relation of `rels` (on database `db` when given) nearest to a
/// typo'd `word`, as psql needs it: for lookups that have the catalog's
/// relations at hand and a db= that narrows them.
pub fn nearest_relation(rels: &[model::Relation], word: &str, db: Option<&str>) -> Option<String> {
    let names = spellings(rels.iter().filter(|r| db.is_none_or(|d| r.db == d)));
    nearest_mapped(word, names.iter().map(|(s, n)| (s.as_str(), n.as_str()))).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_only_and_never_a_tie() {
        let known = ["shop_sync", "shop_tables", "autokick", "checktime"];
        assert_eq!(nearest("shop_snyc", known), Some("shop_sync"));
        assert_eq!(nearest("autokik", known), Some("autokick"));
        assert_eq!(
            nearest("SHOP_SYNC", known),
            Some("shop_sync"),
            "names are case-sensitive"
        );
        assert_eq!(nearest("shop_sync", known), None, "the name itself is no suggestion");
        assert_eq!(nearest("hots", ["host", "port"]), Some("host"), "a swap is one edit");
        assert_eq!(nearest("zzz", known), None);
        assert_eq!(nearest("s1", ["s2"]), None, "too short to guess");
        assert_eq!(nearest("abcd", ["abce", "abcf"]), None, "a tie suggests nothing");
        assert_eq!(nearest("shop*", known), None, "a pattern is no typo");
        assert_eq!(
            nearest_mapped("dbz", [("dbs", "dbs"), ("db", "dbs")]),
            Some("dbs"),
            "an option's spellings do not tie"
        );
    }
}
