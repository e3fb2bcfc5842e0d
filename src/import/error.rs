//! What stops an import, each saying what to do.

use crate::error::{AreaError, Kind};

/// An import's own failures; carried by [`crate::Error`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The control database holds no Bucardo catalog.
    #[error("no Bucardo catalog (schema bucardo) in that database; point --from at Bucardo's control database (its default is dbname=bucardo user=bucardo)")]
    NoBucardo,
    /// A Bucardo other than 5.x.
    #[error("this is Bucardo {version:?}; capra imports Bucardo 5 (upgrade Bucardo first, or add the syncs to capra by hand)")]
    Version {
        /// `bucardo_version` as found.
        version: String,
    },
    /// Bucardo is running, or left runs open.
    #[error("{0}")]
    Running(String),
    /// `--remove` before the takeover.
    #[error("nothing to remove: no sync has been taken over from Bucardo yet; run capra import bucardo first")]
    NothingTakenOver,
    /// `--remove` on a database a Bucardo sync that stays still uses.
    #[error("not removing Bucardo from \"{db}\": Bucardo sync {syncs} still replicates it; import it or remove it from Bucardo first")]
    StillUsed {
        /// The database.
        db: String,
        /// The syncs, quoted.
        syncs: String,
    },
    /// `--remove` on the database that holds Bucardo's own catalog.
    #[error("not removing Bucardo from \"{db}\": that database holds Bucardo's control catalog (schema bucardo with bucardo_config); remove Bucardo there with Bucardo's own tools (nothing was removed)")]
    HoldsControl {
        /// The database.
        db: String,
    },
    /// `--remove` with user objects that depend on Bucardo's.
    #[error("not removing Bucardo from \"{db}\": objects of yours depend on Bucardo's ({objects}); drop or change them first (nothing was removed)")]
    Dependents {
        /// The database.
        db: String,
        /// The objects, described.
        objects: String,
    },
}

impl AreaError for ImportError {
    fn kind(&self) -> Kind {
        match self {
            ImportError::NoBucardo | ImportError::Version { .. } => Kind::Input,
            _ => Kind::Conflict,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
