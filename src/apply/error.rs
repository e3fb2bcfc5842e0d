//! What can stop a run: each variant names the sync, table or database
//! involved and says what to do.

use crate::error::{AreaError, Kind};

/// A run's own failures; carried by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The daemon is stopping: the run takes no new connection.
    #[error("the daemon is stopping")]
    Stopping,

    /// Every source of the sync is inactive or gone.
    #[error("sync \"{sync}\" has no active source database; add one (capra update dbgroup ...)")]
    NoSource {
        /// The sync.
        sync: String,
    },

    /// The sync's capture is missing on a source.
    #[error("change capture for sync \"{sync}\" is not installed on \"{db}\"; run: capra activate {sync}")]
    NotInstalled {
        /// The sync.
        sync: String,
        /// The source database.
        db: String,
    },

    /// A table of the sync has no change log on a source.
    #[error("table {table} of sync \"{sync}\" is not captured on \"{db}\"; run: capra activate {sync}")]
    NotCaptured {
        /// `schema.table`.
        table: String,
        /// The sync.
        sync: String,
        /// The source database.
        db: String,
    },

    /// The stored position is ahead of the source (a restored backup or
    /// another server): its change log cannot be trusted.
    #[error("sync \"{sync}\" has applied changes up to transaction {applied} on \"{db}\", but that database is only at {at} (restored from a backup, or a different server?); its change log cannot be trusted: run 'capra update sync {sync} onetimecopy=1' for a full copy, after which the sync follows the database from now on")]
    PositionAhead {
        /// The sync.
        sync: String,
        /// The source database.
        db: String,
        /// The transaction the sync has applied up to.
        applied: String,
        /// Where the database is.
        at: String,
    },

    /// A snapshot the server sent is not in the expected form (it is
    /// inlined into COPY, which takes no parameters).
    #[error("unexpected snapshot text {text:?}")]
    BadSnapshot {
        /// What came.
        text: String,
    },

    /// Sources of a multi-master sync capture a table with different keys.
    #[error("table {table} is captured with key ({}) on \"{first_db}\" but ({}) on \"{other_db}\"; every source of a multi-master sync needs the same key (capra update table {table} pkey=...)", .first_key.join(", "), .other_key.join(", "))]
    KeysDiffer {
        /// `schema.table`.
        table: String,
        /// The first source.
        first_db: String,
        /// Its key.
        first_key: Vec<String>,
        /// The source that differs.
        other_db: String,
        /// Its key.
        other_key: Vec<String>,
    },

    /// A multi-master source lost a table's key.
    #[error("table {table} lost its replication key on source \"{db}\" (a key column was dropped), so its changes there cannot be told apart; declare its key (capra update table {table} pkey=COLUMNS); multi-master syncs then need the table made equal by hand or with onetimecopy=2 on emptied copies")]
    KeyLost {
        /// `schema.table`.
        table: String,
        /// The source.
        db: String,
    },

    /// A legacy inheritance parent on the source is partitioned on a
    /// receiver: there its children's rows are its own, so replaying the
    /// parent's own changes (a TRUNCATE ONLY, a full copy) would empty them.
    #[error("table {table} has inheritance children on the source but is partitioned on \"{db}\", where capra cannot tell its own rows from its children's; replicate the children only (remove {table} from the relgroup), or make it a plain table on \"{db}\"")]
    InheritedIntoPartitioned {
        /// `schema.table`.
        table: String,
        /// The receiver.
        db: String,
    },

    /// A sync with several sources has a SQL_ASCII one.
    #[error("database \"{db}\" is SQL_ASCII: its text need not be UTF-8, and capra replicates such a database to targets only, not between sources; make it a target of this sync, or convert it (pg_dump, then restore into a UTF8 or LATIN1 database)")]
    SqlAsciiSource {
        /// The source.
        db: String,
    },

    /// The table was dropped on the source.
    #[error("table {table} does not exist on the source any more")]
    GoneOnSource {
        /// `schema.table`.
        table: String,
    },

    /// A receiving database lacks the table.
    #[error(
        "table {table} does not exist in database \"{db}\"; create it there (capra validate lists every difference)"
    )]
    TableMissing {
        /// `schema.table`.
        table: String,
        /// The database.
        db: String,
    },

    /// A receiving database lacks a column the source has.
    #[error("column \"{column}\" of table {table} is missing in database \"{db}\"; add it there (capra validate shows every difference)")]
    ColumnMissing {
        /// The column.
        column: String,
        /// `schema.table`.
        table: String,
        /// The database.
        db: String,
    },

    /// A receiving database lacks a key column.
    #[error("key column \"{column}\" of table {table} is missing in database \"{db}\"")]
    KeyColumnMissing {
        /// The column.
        column: String,
        /// `schema.table`.
        table: String,
        /// The database.
        db: String,
    },

    /// A conflict met the `abort` strategy.
    #[error("conflict on {table} ({})=({}) and conflict_strategy is abort: nothing was applied; settle it by choosing another strategy (capra update sync SYNC conflict_strategy=latest, or a list of databases), then the sync goes on", .columns.join(", "), .key.join(", "))]
    ConflictAbort {
        /// `schema.table`.
        table: String,
        /// The key columns.
        columns: Vec<String>,
        /// The key's values.
        key: Vec<String>,
    },

    /// A conflict hook named a database that is not a source.
    #[error("conflict hook {code} answered {db:?} for {table}, which is not a source of this sync ({})", .sources.join(", "))]
    HookAnsweredStranger {
        /// The hook (`name (file)`).
        code: String,
        /// What it answered.
        db: String,
        /// `schema.table`.
        table: String,
        /// The sync's sources.
        sources: Vec<String>,
    },

    /// An exception hook asked for retries and the table still fails.
    #[error("the exception hook retried {table} twice and it still fails; giving up: {error}")]
    HookGaveUp {
        /// `schema.table`.
        table: String,
        /// The last failure.
        error: String,
    },
}

impl AreaError for ApplyError {
    fn kind(&self) -> Kind {
        match self {
            ApplyError::BadSnapshot { .. } => Kind::Bug,
            ApplyError::HookAnsweredStranger { .. } => Kind::Input,
            ApplyError::Stopping
            | ApplyError::NoSource { .. }
            | ApplyError::NotInstalled { .. }
            | ApplyError::NotCaptured { .. }
            | ApplyError::PositionAhead { .. }
            | ApplyError::KeysDiffer { .. }
            | ApplyError::KeyLost { .. }
            | ApplyError::GoneOnSource { .. }
            | ApplyError::InheritedIntoPartitioned { .. }
            | ApplyError::SqlAsciiSource { .. }
            | ApplyError::TableMissing { .. }
            | ApplyError::ColumnMissing { .. }
            | ApplyError::KeyColumnMissing { .. }
            | ApplyError::ConflictAbort { .. }
            | ApplyError::HookGaveUp { .. } => Kind::Conflict,
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
    fn messages_name_the_object() {
        let e = ApplyError::KeysDiffer {
            table: "public.t".into(),
            first_db: "a".into(),
            first_key: vec!["id".into()],
            other_db: "b".into(),
            other_key: vec!["id".into(), "d".into()],
        };
        assert_eq!(
            e.to_string(),
            "table public.t is captured with key (id) on \"a\" but (id, d) on \"b\"; every source of a multi-master sync needs the same key (capra update table public.t pkey=...)"
        );
        let e = crate::Error::from(ApplyError::ConflictAbort {
            table: "public.t".into(),
            columns: vec!["id".into()],
            key: vec!["7".into()],
        });
        assert!(e
            .to_string()
            .starts_with("conflict on public.t (id)=(7) and conflict_strategy is abort"));
        assert_eq!(e.kind(), Kind::Conflict);
        assert!(e.area::<ApplyError>().is_some());
    }
}
