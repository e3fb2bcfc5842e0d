//! Conflicts between sources: the same key changed on two or more sources
//! since the last run. Each is settled per row by the table's strategy (or
//! the sync's, or `default_conflict_strategy`), or by a Lua conflict hook,
//! and every one is recorded with who competed, when, and who won.

use serde::Serialize;

/// A built-in way to settle a conflict (`conflict_strategy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The first of the competing sources in the sync's order wins (the
    /// Bucardo 4 swap's `source=` side).
    Source,
    /// The last of the competing sources in the sync's order wins (the
    /// swap's `targetdb=` side).
    Target,
    /// Nothing is replicated for that key; each database keeps its row.
    Skip,
    /// A competing source picked at random.
    Random,
    /// The newest change of that row wins (commit time where the server
    /// tracks it, else the logged change time); ties go to sync order.
    Latest,
    /// The source with the newest change in the whole run wins every
    /// conflict of the run (Bucardo 5's `bucardo_latest_all_tables`).
    LatestAllTables,
    /// The run fails and names the row; nothing is applied.
    Abort,
    /// Database names in priority order; the first that changed the row
    /// wins. A single name always wins, even when it did not change it.
    Priority(Vec<String>),
}

impl Strategy {
    /// Reads a stored strategy (already normalised by the catalog: a
    /// built-in name or database names separated by spaces).
    pub fn parse(s: &str) -> Strategy {
        let t = s.trim().to_lowercase();
        let bare = t.strip_prefix("bucardo_").unwrap_or(&t);
        match bare {
            "source" => Strategy::Source,
            "target" => Strategy::Target,
            "skip" => Strategy::Skip,
            "random" => Strategy::Random,
            "latest" | "default" | "" => Strategy::Latest,
            "latest_all_tables" | "latest_all" => Strategy::LatestAllTables,
            "abort" => Strategy::Abort,
            _ => Strategy::Priority(
                s.split([' ', ','])
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
        }
    }

    /// How the strategy is named in logs and the conflict history.
    pub fn label(&self) -> String {
        match self {
            Strategy::Source => "source".into(),
            Strategy::Target => "target".into(),
            Strategy::Skip => "skip".into(),
            Strategy::Random => "random".into(),
            Strategy::Latest => "latest".into(),
            Strategy::LatestAllTables => "latest_all_tables".into(),
            Strategy::Abort => "abort".into(),
            Strategy::Priority(n) => format!("priority {}", n.join(" ")),
        }
    }
}

/// The stored spelling (what `list` and `show` print): a built-in name, or
/// the priority list's database names separated by spaces.
impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Priority(n) => f.pad(&n.join(" ")),
            other => f.pad(&other.label()),
        }
    }
}

impl Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// One source that changed the row.
#[derive(Clone, Debug, Serialize)]
pub struct Contender {
    /// Index of the source in the sync's order.
    #[serde(skip)]
    pub src: usize,
    /// Its database name.
    pub db: String,
    /// When it changed the row (seconds since the epoch), if known.
    pub at: Option<f64>,
}

/// What settles one conflict.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// This source's row (or its absence) goes everywhere.
    Winner(usize),
    /// A row composed by a hook goes everywhere (column -> value).
    Merge(serde_json::Value),
    /// Nothing is replicated for this key in this run.
    Skip,
    /// The run fails.
    Abort,
}

/// Settles one conflict with a built-in strategy. `sources` are the sync's
/// source names in order; `run_newest` the newest change time per source
/// in this run (for `latest_all_tables`); `coin` a random number for
/// `random`.
pub fn decide(
    strategy: &Strategy,
    contenders: &[Contender],
    sources: &[String],
    run_newest: &[f64],
    coin: u64,
) -> Decision {
    let by_order = |a: &&Contender, b: &&Contender| a.src.cmp(&b.src);
    match strategy {
        Strategy::Source => Decision::Winner(contenders.iter().min_by(by_order).map(|c| c.src).unwrap_or(0)),
        Strategy::Target => Decision::Winner(contenders.iter().max_by(by_order).map(|c| c.src).unwrap_or(0)),
        Strategy::Skip => Decision::Skip,
        Strategy::Abort => Decision::Abort,
        Strategy::Random => Decision::Winner(contenders[(coin % contenders.len() as u64) as usize].src),
        Strategy::Latest => Decision::Winner(latest(contenders, |c| c.at)),
        // A change made after the run read its source (a late change)
        // counts too.
        Strategy::LatestAllTables => {
            Decision::Winner(latest(contenders, |c| match (run_newest.get(c.src).copied(), c.at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }))
        }
        Strategy::Priority(names) => {
            if names.len() == 1 {
                if let Some(i) = sources.iter().position(|s| s == &names[0]) {
                    return Decision::Winner(i);
                }
            }
            for n in names {
                if let Some(c) = contenders.iter().find(|c| &c.db == n) {
                    return Decision::Winner(c.src);
                }
            }
            // None of the listed databases changed the row.
            Decision::Winner(latest(contenders, |c| c.at))
        }
    }
}

/// The contender with the newest time; ties (and unknown times) go to the
/// first in sync order, so every run decides the same way.
fn latest(contenders: &[Contender], at: impl Fn(&Contender) -> Option<f64>) -> usize {
    let mut best: Option<(&Contender, f64)> = None;
    for c in contenders {
        let t = at(c).unwrap_or(f64::NEG_INFINITY);
        best = match best {
            None => Some((c, t)),
            Some((b, bt)) if t > bt || (t == bt && c.src < b.src) => Some((c, t)),
            keep => keep,
        };
    }
    best.map(|(c, _)| c.src).unwrap_or(0)
}

/// How a conflict ended, as the history names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Winner {
    /// This database's row was kept.
    Db(String),
    /// A hook composed the row.
    Merged,
    /// Nothing was replicated for the key.
    Skipped,
    /// The run failed on it (`abort`).
    Aborted,
}

impl std::fmt::Display for Winner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Winner::Db(d) => d,
            Winner::Merged => "merged",
            Winner::Skipped => "skipped",
            Winner::Aborted => "aborted",
        })
    }
}

impl Serialize for Winner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// One settled conflict, as kept in the conflict history.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// `schema.table`.
    pub table: String,
    /// The key: column -> value (as text).
    pub key: serde_json::Map<String, serde_json::Value>,
    /// The sources that changed the row, with their change times.
    pub contenders: Vec<Contender>,
    /// Who won.
    pub winner: Winner,
    /// What decided: the strategy, or the hook's name and file.
    pub reason: String,
}

/// A small random source for `random` (no crate needed for a coin).
pub fn coin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(src: usize, db: &str, at: Option<f64>) -> Contender {
        Contender { src, db: db.into(), at }
    }

    #[test]
    fn strategies() {
        let srcs: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let cs = [c(1, "b", Some(10.0)), c(2, "c", Some(5.0))];
        assert_eq!(decide(&Strategy::Source, &cs, &srcs, &[], 0), Decision::Winner(1));
        assert_eq!(decide(&Strategy::Target, &cs, &srcs, &[], 0), Decision::Winner(2));
        assert_eq!(decide(&Strategy::Latest, &cs, &srcs, &[], 0), Decision::Winner(1));
        assert_eq!(decide(&Strategy::Skip, &cs, &srcs, &[], 0), Decision::Skip);
        assert_eq!(decide(&Strategy::Abort, &cs, &srcs, &[], 0), Decision::Abort);
        assert_eq!(decide(&Strategy::Random, &cs, &srcs, &[], 3), Decision::Winner(2));
        // The newest change of the run decides, not this row's.
        assert_eq!(
            decide(&Strategy::LatestAllTables, &cs, &srcs, &[0.0, 10.0, 12.0], 0),
            Decision::Winner(2)
        );
        // A late change (after the run read its source) counts too.
        let late = [c(1, "b", Some(10.0)), c(2, "c", Some(20.0))];
        assert_eq!(
            decide(&Strategy::LatestAllTables, &late, &srcs, &[0.0, 15.0, 12.0], 0),
            Decision::Winner(2)
        );
        // Ties go to sync order.
        let tie = [c(2, "c", Some(1.0)), c(0, "a", Some(1.0))];
        assert_eq!(decide(&Strategy::Latest, &tie, &srcs, &[], 0), Decision::Winner(0));
        // Priority lists: first listed contender; a single name always wins.
        let p = Strategy::parse("c b");
        assert_eq!(p, Strategy::Priority(vec!["c".into(), "b".into()]));
        assert_eq!(decide(&p, &cs, &srcs, &[], 0), Decision::Winner(2));
        assert_eq!(decide(&Strategy::parse("a"), &cs, &srcs, &[], 0), Decision::Winner(0));
        assert_eq!(Strategy::parse("bucardo_latest"), Strategy::Latest);
        assert_eq!(Strategy::parse("bucardo_source"), Strategy::Source);
    }
}
