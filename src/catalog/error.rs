//! What can go wrong in this part of capra, by kind of trouble: each variant
//! names the object involved and keeps the cause as its `source`.

use crate::domain::RelType;
use crate::error::{AreaError, Kind};
use crate::pg::ident::QualName;

/// `"a", "b"`: names as messages list them.
pub(crate) fn quote_list(v: &[String]) -> String {
    v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
}

/// What still refers to a database: `N table(s) or sequence(s)` and/or
/// `dbgroup "g"`.
fn references(tables: &i64, groups: &[String]) -> String {
    let mut what = Vec::new();
    if *tables > 0 {
        what.push(format!("{tables} table(s) or sequence(s)"));
    }
    if !groups.is_empty() {
        what.push(format!("dbgroup {}", quote_list(groups)));
    }
    what.join(" and ")
}

/// Errors of this part; carried by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// `add db` with a name already taken.
    #[error("Cannot add database: the name \"{db}\" already exists (see: capra list dbs)")]
    DbExists {
        /// The name.
        db: String,
    },

    /// A database an active sync uses cannot go.
    #[error(
        "cannot remove database \"{db}\": active sync {} uses it; deactivate it first (capra deactivate {})",
        quote_list(.syncs),
        .syncs.join(" ")
    )]
    DbInUse {
        /// The database.
        db: String,
        /// The active syncs.
        syncs: Vec<String>,
    },

    /// A database with tables or group memberships needs --force to go.
    #[error(
        "cannot remove database \"{db}\": {} reference it; remove them first or use --force",
        references(.tables, .groups)
    )]
    DbReferenced {
        /// The database.
        db: String,
        /// How many of its tables and sequences the catalog holds.
        tables: i64,
        /// The dbgroups it is in.
        groups: Vec<String>,
    },

    /// Tables from another database cannot join a relgroup (`add table`).
    #[error(
        "relgroup \"{relgroup}\" holds tables from database \"{other}\", not \"{db}\": all tables of a relgroup come from one database; use another relgroup name"
    )]
    RelgroupOfOtherDb {
        /// The relgroup.
        relgroup: String,
        /// The database its tables come from.
        other: String,
        /// The database of the tables being added.
        db: String,
    },

    /// A table from another database cannot join a relgroup.
    #[error(
        "relgroup \"{relgroup}\" holds tables from database \"{other}\"; {} comes from \"{db}\": all tables of a relgroup come from one database",
        .table.shown()
    )]
    RelgroupMixesDbs {
        /// The relgroup.
        relgroup: String,
        /// The database its tables come from.
        other: String,
        /// The table being added.
        table: QualName,
        /// Its database.
        db: String,
    },

    /// A name matches tables in several databases and db= was not given.
    #[error("{reltype} {term} is in several databases ({}); say which with db=NAME", .dbs.join(", "))]
    InSeveralDbs {
        /// Table or sequence.
        reltype: RelType,
        /// What the user typed.
        term: String,
        /// The databases.
        dbs: Vec<String>,
    },

    /// A name matches more than one table where one is needed.
    #[error("more than one {reltype} matches {term}: use schema.name and db=NAME")]
    AmbiguousMatch {
        /// Table or sequence.
        reltype: RelType,
        /// What the user typed.
        term: String,
    },

    /// A relgroup a sync uses cannot go.
    #[error("cannot remove relgroup \"{relgroup}\": sync {} uses it; remove the sync first", quote_list(.syncs))]
    RelgroupInUse {
        /// The relgroup.
        relgroup: String,
        /// The syncs using it.
        syncs: Vec<String>,
    },

    /// A dbgroup lists a database twice.
    #[error("database \"{db}\" is listed twice for dbgroup \"{group}\"; a database has one role in a group")]
    MemberTwice {
        /// The database.
        db: String,
        /// The dbgroup.
        group: String,
    },

    /// The sources of a dbgroup an active sync uses cannot change.
    #[error(
        "cannot change the sources of dbgroup \"{group}\": active sync {} uses it; deactivate it first (targets may be added or removed while it runs)",
        quote_list(.syncs)
    )]
    SourcesInUse {
        /// The dbgroup.
        group: String,
        /// The active syncs.
        syncs: Vec<String>,
    },

    /// A source cannot join a dbgroup an active sync uses.
    #[error(
        "cannot add a source to dbgroup \"{group}\": active sync {} uses it; deactivate it first",
        quote_list(.syncs)
    )]
    SourceJoinsActive {
        /// The dbgroup.
        group: String,
        /// The active syncs.
        syncs: Vec<String>,
    },

    /// The last target of a dbgroup an active sync uses cannot go.
    #[error(
        "cannot remove the last target of dbgroup \"{group}\": active sync {} uses it and would lose its position; deactivate it first",
        quote_list(.syncs)
    )]
    LastTarget {
        /// The dbgroup.
        group: String,
        /// The active syncs.
        syncs: Vec<String>,
    },

    /// A dbgroup syncs use needs --force (which removes them) to go.
    #[error(
        "Cannot remove dbgroup \"{group}\": it is being used by sync {}; remove the sync first or use --force",
        quote_list(.syncs)
    )]
    DbgroupInUse {
        /// The dbgroup.
        group: String,
        /// The syncs using it.
        syncs: Vec<String>,
    },

    /// Even with --force, a dbgroup an active sync uses stays.
    #[error(
        "cannot remove dbgroup \"{group}\": sync \"{sync}\" uses it and is active; deactivate it first (capra deactivate {sync})"
    )]
    DbgroupOfActiveSync {
        /// The dbgroup.
        group: String,
        /// The active sync.
        sync: String,
    },

    /// A sync's dbgroup has no source.
    #[error(
        "sync \"{sync}\": dbgroup \"{group}\" has no source database; give one database the role source (capra update dbgroup {group} DB:source ...)"
    )]
    NoSource {
        /// The sync.
        sync: String,
        /// Its dbgroup.
        group: String,
    },

    /// A sync's dbgroup has a single database.
    #[error(
        "sync \"{sync}\": dbgroup \"{group}\" has only one database; a sync needs a source and at least one other database"
    )]
    OneDatabase {
        /// The sync.
        sync: String,
        /// Its dbgroup.
        group: String,
    },

    /// A sync's relgroup has no tables.
    #[error(
        "sync \"{sync}\": relgroup \"{relgroup}\" is empty; add tables to it first (capra add table T relgroup={relgroup})"
    )]
    EmptyRelgroup {
        /// The sync.
        sync: String,
        /// Its relgroup.
        relgroup: String,
    },

    /// Delta replication needs a key on every table.
    #[error(
        "sync \"{sync}\": table {} has no primary key or unique key, which delta replication needs; add a key (ALTER TABLE {} ADD PRIMARY KEY (...)), declare one (capra update table {} pkey=COL[,COL]), or replicate it with a fullcopy sync (dbs=SOURCE:source,TARGET:fullcopy)",
        .table.shown(),
        .table.sql(),
        .table.shown()
    )]
    NoKey {
        /// The sync.
        sync: String,
        /// The table.
        table: QualName,
    },

    /// An active sync cannot be removed.
    #[error("Cannot remove active sync \"{sync}\": please deactivate it first (capra deactivate {sync})")]
    SyncActive {
        /// The sync.
        sync: String,
    },

    /// A sync cannot run while its source is switched off.
    #[error(
        "source database \"{db}\" of sync \"{sync}\" is inactive; activate it (capra update db {db} status=active)"
    )]
    SourceInactive {
        /// The sync.
        sync: String,
        /// The source.
        db: String,
    },

    /// A command needs a database and the catalog has none.
    #[error("no databases yet: add one first with capra add db NAME dbname=...")]
    NoDatabases,

    /// `add sync` with a name already taken.
    #[error("A sync with the name \"{sync}\" already exists (see: capra list syncs)")]
    SyncExists {
        /// The name.
        sync: String,
    },

    /// Bucardo 4's `source=HERD` names a relgroup without tables.
    #[error("relgroup \"{relgroup}\" is empty; add tables to it first")]
    RelgroupEmpty {
        /// The relgroup.
        relgroup: String,
    },

    /// Bucardo 4's targetdb= names the database the relgroup's tables come from.
    #[error(
        "Source and target databases cannot be the same: {db} (relgroup \"{relgroup}\" was added from database \"{db}\"; add its tables from the source database instead: capra add all tables db=SOURCE -t ... relgroup={relgroup})"
    )]
    SourceIsTarget {
        /// The database.
        db: String,
        /// The relgroup.
        relgroup: String,
    },

    /// A catalog name matches relations in several databases.
    #[error("{term} is in several databases ({}); say which with db=NAME", .dbs.join(", "))]
    TermInSeveralDbs {
        /// What the user typed.
        term: String,
        /// The databases.
        dbs: Vec<String>,
    },

    /// A -t/-T filter names no live table or sequence (most likely a typo).
    #[error("no {reltype} named {term} in database \"{db}\" (check the -t/-T value; see \\d in psql)")]
    NoSuchLive {
        /// Table or sequence.
        reltype: RelType,
        /// The filter.
        term: String,
        /// The database read.
        db: String,
    },

    /// `add all` found nothing to add.
    #[error(
        "no {reltype}s found in database \"{db}\"{}",
        if *.filtered { " matching the -t/-T/-n/-N filters" } else { "" }
    )]
    NothingFound {
        /// Table or sequence.
        reltype: RelType,
        /// The database read.
        db: String,
        /// Whether -t/-T/-n/-N filters were given.
        filtered: bool,
    },

    /// Names given to `add table` (or a relgroup) match nothing live.
    #[error("no {what} matching {} in database \"{db}\"; nothing was added", .terms.join(", "))]
    NoMatchLive {
        /// `table`, `sequence` or `table or sequence`.
        what: String,
        /// The names that matched nothing.
        terms: Vec<String>,
        /// The database read.
        db: String,
    },

    /// `pkey=` names columns that are no key of the live table.
    #[error(
        "columns {} of {} are not a primary key or a unique key on NOT NULL columns in database \"{db}\"; create one first (CREATE UNIQUE INDEX ... ON {} ({}))",
        .columns.join(", "),
        .table.shown(),
        .table.sql(),
        .columns.join(", ")
    )]
    NotAKey {
        /// The columns given.
        columns: Vec<String>,
        /// The table.
        table: QualName,
        /// Its database.
        db: String,
    },
}

impl AreaError for CatalogError {
    fn kind(&self) -> Kind {
        match self {
            CatalogError::InSeveralDbs { .. }
            | CatalogError::AmbiguousMatch { .. }
            | CatalogError::MemberTwice { .. }
            | CatalogError::RelgroupOfOtherDb { .. }
            | CatalogError::RelgroupMixesDbs { .. }
            | CatalogError::SourceIsTarget { .. }
            | CatalogError::TermInSeveralDbs { .. }
            | CatalogError::NoSuchLive { .. }
            | CatalogError::NoMatchLive { .. } => Kind::Input,
            CatalogError::DbExists { .. }
            | CatalogError::DbInUse { .. }
            | CatalogError::DbReferenced { .. }
            | CatalogError::RelgroupInUse { .. }
            | CatalogError::SourcesInUse { .. }
            | CatalogError::SourceJoinsActive { .. }
            | CatalogError::LastTarget { .. }
            | CatalogError::DbgroupInUse { .. }
            | CatalogError::DbgroupOfActiveSync { .. }
            | CatalogError::NoSource { .. }
            | CatalogError::OneDatabase { .. }
            | CatalogError::EmptyRelgroup { .. }
            | CatalogError::NoKey { .. }
            | CatalogError::SyncActive { .. }
            | CatalogError::SourceInactive { .. }
            | CatalogError::NoDatabases
            | CatalogError::SyncExists { .. }
            | CatalogError::RelgroupEmpty { .. }
            | CatalogError::NothingFound { .. }
            | CatalogError::NotAKey { .. } => Kind::Conflict,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording() {
        let e = CatalogError::DbReferenced {
            db: "a".into(),
            tables: 2,
            groups: vec!["g".into(), "h".into()],
        };
        assert_eq!(
            e.to_string(),
            "cannot remove database \"a\": 2 table(s) or sequence(s) and dbgroup \"g\", \"h\" reference it; remove them first or use --force"
        );
        let e = CatalogError::DbInUse {
            db: "a".into(),
            syncs: vec!["s".into(), "t".into()],
        };
        assert_eq!(
            e.to_string(),
            "cannot remove database \"a\": active sync \"s\", \"t\" uses it; deactivate it first (capra deactivate s t)"
        );
        let e = CatalogError::NothingFound {
            reltype: RelType::Sequence,
            db: "a".into(),
            filtered: true,
        };
        assert_eq!(
            e.to_string(),
            "no sequences found in database \"a\" matching the -t/-T/-n/-N filters"
        );
        let e = CatalogError::NoSuchLive {
            reltype: RelType::Table,
            term: "x".into(),
            db: "a".into(),
        };
        assert_eq!(
            e.to_string(),
            "no table named x in database \"a\" (check the -t/-T value; see \\d in psql)"
        );
        assert_eq!(e.kind(), Kind::Input);
        let e = CatalogError::NoKey {
            sync: "s".into(),
            table: QualName::new("public", "T"),
        };
        assert!(
            e.to_string()
                .starts_with("sync \"s\": table public.\"T\" has no primary key"),
            "{e}"
        );
        assert!(
            e.to_string().contains("(ALTER TABLE \"public\".\"T\" ADD PRIMARY KEY"),
            "{e}"
        );
    }
}
