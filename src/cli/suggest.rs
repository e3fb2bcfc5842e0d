//! "Did you mean …?": the nearest known name for a typo, for objects,
//! options and settings alike.

use crate::catalog::{model, Catalog};
use crate::config;
use crate::error::Error;

/// The edit distance between two names (case-insensitive).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name nearest to `word`, if it is near enough to be a typo
/// (a third of its letters at most, and at least one) and the only one
/// that near.
pub fn nearest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    let mut tie = false;
    for k in known {
        let d = distance(word, k);
        if d == 0 || d > limit {
            continue;
        }
        match best {
            Some((bd, _)) if d > bd => {}
            Some((bd, _)) if d == bd => tie = true,
            _ => {
                best = Some((d, k));
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
    let Error::NotFound { kind, name, hint } = e else {
        return e;
    };
    let known = config::load(flags)
        .ok()
        .and_then(|s| Catalog::open(&s, "capra").ok())
        .and_then(|mut cat| names_of(&mut cat.client, kind));
    let best = known
        .as_ref()
        .and_then(|k| nearest(&name, k.iter().map(String::as_str)));
    let hint = match (best, hint.strip_prefix("; ")) {
        (Some(b), Some(rest)) => format!("; did you mean \"{b}\"? ({rest})"),
        (Some(b), None) => format!("; did you mean \"{b}\"?"),
        (None, _) => hint,
    };
    Error::NotFound { kind, name, hint }
}

/// The catalog's names of one kind of object.
fn names_of(c: &mut postgres::Client, kind: &str) -> Option<Vec<String>> {
    Some(match kind {
        "sync" => model::syncs(c).ok()?.into_iter().map(|s| s.name).collect(),
        "database" => model::dbs(c).ok()?.into_iter().map(|d| d.name).collect(),
        "relgroup" => model::relgroups(c).ok()?.into_iter().map(|g| g.name).collect(),
        "dbgroup" => model::dbgroups(c).ok()?.into_iter().map(|g| g.name).collect(),
        "customcode" => model::customcodes(c).ok()?.into_iter().map(|g| g.name).collect(),
        "table" | "sequence" => model::relations(c, None)
            .ok()?
            .into_iter()
            .flat_map(|r| [r.name.human(), r.name.name.clone()])
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_only_and_never_a_tie() {
        let known = ["shop_sync", "shop_tables", "autokick", "checktime"];
        assert_eq!(nearest("shop_snyc", known), Some("shop_sync"));
        assert_eq!(nearest("autokik", known), Some("autokick"));
        assert_eq!(nearest("AUTOKICK", known), None, "the same name is not a suggestion");
        assert_eq!(nearest("zzz", known), None);
        assert_eq!(nearest("ab", ["ac", "ad"]), None, "a tie suggests nothing");
    }
}
