//! What can go wrong in this part of capra, by kind of trouble: each variant
//! names the object involved and keeps the cause as its `source`.

use crate::error::{AreaError, Kind};

/// Errors of this part; carried by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source's capture objects were installed by a newer capra.
    #[error(
        "capra's change capture in this database is version {found}, newer than this capra ({ours}); upgrade capra"
    )]
    NewerCapture {
        /// The version recorded in the source database.
        found: i32,
        /// This capra's capture version.
        ours: i32,
    },

    /// A partitioned table on a server too old to capture one.
    #[error(
        "{table} is a partitioned table; capturing partitioned tables needs PostgreSQL 11 or later (add its partitions instead)"
    )]
    PartitionedTooOld {
        /// The table, for people.
        table: String,
    },

    /// A key column has the name of one of the change log's own columns.
    #[error("key column \"{column}\" of table {table} has a name capra's change log keeps for itself; rename the column, or declare another key: capra update table {table} pkey=COLUMNS")]
    ReservedKeyName {
        /// The table, for people.
        table: String,
        /// The column.
        column: String,
    },

    /// A table to capture is not in the source database.
    #[error("table {table} does not exist in the source database; create it or remove it from the relgroup")]
    TableMissing {
        /// The table, for people.
        table: String,
    },

    /// The declared key's columns were renamed; the DDL follower knows the
    /// new names.
    #[error(
        "the key of table {table} was renamed to ({}) in the source database; capture follows it; tell capra: capra update table {table} pkey={}",
        .now.join(", "),
        .now.join(",")
    )]
    KeyRenamed {
        /// The table, for people.
        table: String,
        /// The key columns' names now.
        now: Vec<String>,
    },

    /// A declared key column is gone from the source table.
    #[error(
        "key column \"{column}\" of table {table} no longer exists in the source database; declare its key: capra update table {table} pkey=COLUMNS"
    )]
    KeyColumnGone {
        /// The table, for people.
        table: String,
        /// The missing column.
        column: String,
    },

    /// A table's key changed while its change log holds unapplied changes.
    #[error(
        "the replication key of {table} changed, but its change log still holds {pending} change(s) not yet applied by every sync; let them replicate first (capra kick SYNC 60), then try again"
    )]
    KeyChangePending {
        /// The table, for people.
        table: String,
        /// Changes (and truncations) not yet applied.
        pending: i64,
    },

    /// Following a key column's new type would convert the change log
    /// through a cast that a role other than a superuser wrote: that code
    /// would run with capra's rights.
    #[error(
        "the key of {table} changed type, and converting its change log would run {cast}, written by the role \"{owner}\"; drop that cast, or remove the table from its syncs and add it again"
    )]
    ForeignCast {
        /// The table, for people.
        table: String,
        /// The cast, `the cast text AS public.mood`.
        cast: String,
        /// Who wrote its function.
        owner: String,
    },

    /// A schema named `capra` already exists in the source and belongs to
    /// another role, which could replace capra's capture functions there.
    #[error(
        "schema capra in this database belongs to the role \"{owner}\", not to capra's role; capra keeps its capture functions there, so its owner could replace them: drop it or ALTER SCHEMA capra OWNER TO capra's role"
    )]
    ForeignSchema {
        /// The schema's owner.
        owner: String,
    },

    /// A row filter the server cannot plan on a table. The message carries
    /// the server's words (`detail`), so the driver error is kept for its
    /// SQLSTATE but is not a `source` printed a second time.
    #[error("the filter of {table} does not work in database \"{db}\": {detail}")]
    FilterFails {
        /// The table, for people.
        table: String,
        /// The database.
        db: String,
        /// The server's message on one line.
        detail: String,
        /// The driver error.
        driver: postgres::Error,
    },
}

impl AreaError for CaptureError {
    fn kind(&self) -> Kind {
        match self {
            CaptureError::NewerCapture { .. }
            | CaptureError::PartitionedTooOld { .. }
            | CaptureError::TableMissing { .. }
            | CaptureError::ReservedKeyName { .. }
            | CaptureError::KeyRenamed { .. }
            | CaptureError::KeyColumnGone { .. }
            | CaptureError::KeyChangePending { .. }
            | CaptureError::ForeignCast { .. }
            | CaptureError::ForeignSchema { .. } => Kind::Conflict,
            CaptureError::FilterFails { .. } => Kind::Input,
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
    fn renders_as_before() {
        let e = CaptureError::KeyRenamed {
            table: "public.t".into(),
            now: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "the key of table public.t was renamed to (a, b) in the source database; capture follows it; tell capra: capra update table public.t pkey=a,b"
        );
        assert_eq!(e.kind(), Kind::Conflict);
        let e = CaptureError::NewerCapture { found: 9, ours: 6 };
        assert_eq!(
            e.to_string(),
            "capra's change capture in this database is version 9, newer than this capra (6); upgrade capra"
        );
        let e = CaptureError::KeyColumnGone {
            table: "s.t".into(),
            column: "id".into(),
        };
        assert_eq!(
            e.to_string(),
            "key column \"id\" of table s.t no longer exists in the source database; declare its key: capra update table s.t pkey=COLUMNS"
        );
    }
}
