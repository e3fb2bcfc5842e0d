//! What stops a compare, each saying what to do.

use crate::error::{AreaError, Kind};

/// A compare's own failures; carried by [`crate::Error`].
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// `--truth` names a database outside the sync.
    #[error("database \"{db}\" is not an active database of sync \"{sync}\" (its databases: {dbs})")]
    TruthNotInSync {
        /// The sync.
        sync: String,
        /// The database named.
        db: String,
        /// The sync's active databases.
        dbs: String,
    },
    /// A TABLE argument is not in the sync.
    #[error("table {table} is not in sync \"{sync}\" (see: capra list tables)")]
    TableNotInSync {
        /// As typed.
        table: String,
        /// The sync.
        sync: String,
    },
    /// The sync has one active database only.
    #[error("sync \"{sync}\" has no other active database to compare with \"{truth}\"")]
    NothingToCompare {
        /// The sync.
        sync: String,
        /// The truth.
        truth: String,
    },
    /// The table does not exist on a database of the sync.
    #[error("table {table} does not exist on \"{db}\"; create it there (capra validate shows what else is missing)")]
    TableMissing {
        /// `schema.table`.
        table: String,
        /// The database.
        db: String,
    },
    /// A column of the truth is missing on the other side.
    #[error("column {column} of {table} exists on \"{truth}\" but not on \"{db}\"; add it there, then compare again")]
    ColumnMissing {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// Where it is missing.
        db: String,
        /// The truth.
        truth: String,
    },
    /// A key column is missing on a database.
    #[error("key column {column} of {table} does not exist on \"{db}\"")]
    KeyColumnMissing {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// The database.
        db: String,
    },
    /// The table has no key in the catalog.
    #[error("table {table} has no key, so its rows cannot be compared one by one; give it one (capra update table {table} pkey=COLUMN)")]
    NoKey {
        /// `schema.table`.
        table: String,
    },
    /// A repair must come from a source of a delta sync.
    #[error("--repair needs the truth to be a source of sync \"{sync}\" (repairs are sent as its changes); \"{db}\" is a {role} there: use --truth with a source, or kick the sync for a full copy")]
    RepairNeedsSource {
        /// The sync.
        sync: String,
        /// The truth named.
        db: String,
        /// Its role.
        role: String,
    },
    /// A table stayed locked (DDL, an explicit LOCK) past the compare's
    /// lock_timeout.
    #[error("{table} is locked on \"{db}\" (DDL or a LOCK TABLE held it past compare's 5 s lock_timeout); compare again once it is released")]
    Locked {
        /// `schema.table`.
        table: String,
        /// The database.
        db: String,
    },
    /// Rows without a key value (a side without a key constraint).
    #[error("{table} on \"{db}\" has rows whose key ({key}) is NULL, which no key lookup finds; delete or fix them, then compare again")]
    NullKey {
        /// `schema.table`.
        table: String,
        /// The database.
        db: String,
        /// The key columns.
        key: String,
    },
    /// The table is not captured on the truth.
    #[error("table {table} is not captured on \"{db}\" for sync \"{sync}\"; run: capra activate {sync}")]
    NotCaptured {
        /// `schema.table`.
        table: String,
        /// The source.
        db: String,
        /// The sync.
        sync: String,
    },
}

impl AreaError for CompareError {
    fn kind(&self) -> Kind {
        match self {
            CompareError::TruthNotInSync { .. }
            | CompareError::TableNotInSync { .. }
            | CompareError::NothingToCompare { .. }
            | CompareError::RepairNeedsSource { .. } => Kind::Input,
            _ => Kind::Server,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
