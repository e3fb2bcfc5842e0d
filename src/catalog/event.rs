//! What a catalog edit did, one event per change. The command line
//! decides how they read (`crate::cli::catalog_cmds::render`), so the
//! catalog returns facts, not prose.

use crate::domain::Role;

/// A kind of catalog object named in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Object {
    /// A database entry (`capra add db`).
    Database,
    /// A group of databases with roles.
    Dbgroup,
    /// A group of tables and sequences (Bucardo's herd).
    Relgroup,
    /// A sync.
    Sync,
    /// A Lua hook.
    Customcode,
}

impl Object {
    /// The word users know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Object::Database => "database",
            Object::Dbgroup => "dbgroup",
            Object::Relgroup => "relgroup",
            Object::Sync => "sync",
            Object::Customcode => "customcode",
        }
    }
}

/// One change a catalog edit made (or found it need not make).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An object was created.
    Created {
        /// Its kind.
        object: Object,
        /// Its name.
        name: String,
    },
    /// An object was removed.
    Removed {
        /// Its kind.
        object: Object,
        /// Its name.
        name: String,
    },
    /// A group created just for a sync went with it.
    RemovedOwnGroup {
        /// Dbgroup or relgroup.
        object: Object,
        /// Its name.
        name: String,
    },
    /// A database joined a dbgroup.
    AddedMember {
        /// The database.
        db: String,
        /// The dbgroup.
        group: String,
        /// Its role there.
        role: Role,
    },
    /// A database left a dbgroup.
    RemovedMember {
        /// The database.
        db: String,
        /// The dbgroup.
        group: String,
    },
    /// A target joined a sync that already moved on: it gets a full copy.
    JoinsSync {
        /// The target.
        db: String,
        /// The sync.
        sync: String,
    },
    /// A new sync uses a dbgroup that already had its members.
    UsingDbgroup {
        /// The dbgroup.
        group: String,
    },
    /// A database entry already had the value asked for.
    DbUnchanged {
        /// The database.
        db: String,
        /// The column.
        column: &'static str,
    },
    /// A database entry's password changed (never shown).
    DbPasswordChanged {
        /// The database.
        db: String,
    },
    /// A database entry's column changed.
    DbChanged {
        /// The database.
        db: String,
        /// The column.
        column: &'static str,
        /// The value before (None: none).
        from: Option<String>,
        /// The value now (None: none).
        to: Option<String>,
    },
    /// A hook's column changed.
    CustomcodeChanged {
        /// The hook.
        name: String,
        /// The column.
        column: &'static str,
        /// The value now.
        value: String,
    },
}

impl Event {
    /// An object was created.
    pub fn created(object: Object, name: impl Into<String>) -> Event {
        Event::Created {
            object,
            name: name.into(),
        }
    }

    /// An object was removed.
    pub fn removed(object: Object, name: impl Into<String>) -> Event {
        Event::Removed {
            object,
            name: name.into(),
        }
    }
}
