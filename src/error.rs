//! capra's error type. Each variant names the object involved and, where
//! there is one, what to do next; `main` prints it as one line and maps it to
//! the exit status (2 for bad usage, 1 for everything else).
//!
//! Every error also has a [`Kind`]: what sort of trouble it is, which is
//! what the daemon decides retries on and what mail and status report,
//! whatever the wording.

use postgres::error::SqlState;

use crate::pg;

/// What sort of trouble an error is, whatever its wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A database could not be reached or dropped the connection: the
    /// same work may succeed later unchanged.
    Connection,
    /// What the user typed or configured is wrong: retrying changes
    /// nothing until they fix it.
    Input,
    /// The request contradicts what the catalog or a database holds now
    /// (a missing table, a sync without a source, a catalog changed under
    /// a run): fixed by a change of state, not of input.
    Conflict,
    /// A server refused a statement (a lock timeout, a constraint, a
    /// permission, a serialization failure).
    Server,
    /// The machine refused (a file, a thread, a process).
    System,
    /// capra broke one of its own rules: report it.
    Bug,
}

/// Everything that can go wrong in a capra command or the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line itself is wrong (unknown key, bad value, bad name).
    #[error("{0}")]
    Usage(String),

    /// The command has said all there is to say and ends with this exit
    /// status (`compare`: 1 when differences remain).
    #[error("exit status {0}")]
    Exit(u8),

    /// A named object does not exist.
    #[error("{kind} \"{name}\" does not exist{hint}")]
    NotFound {
        /// What kind of object (`sync`, `database`, ...).
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// What to do, starting with "; " (may be empty).
        hint: String,
        /// The nearest name was looked for where this was raised, among
        /// the names that fit (a db= narrows them): the CLI edge adds no
        /// "did you mean" of its own.
        looked: bool,
    },

    /// A name is taken.
    #[error("{kind} \"{name}\" already exists{hint}")]
    Duplicate {
        /// What kind of object.
        kind: &'static str,
        /// The name.
        name: String,
        /// What to do, starting with "; " (may be empty).
        hint: String,
    },

    /// The request is well-formed but breaks a rule; the text says which and
    /// what to do.
    #[error("{0}")]
    Rejected(String),

    /// The catalog changed under a run (a table joined the sync): the run
    /// changed nothing; the daemon reads the sync again and reruns at once.
    #[error("{message}")]
    Stale {
        /// What the run found.
        message: String,
        /// The captured ids the run found and its plan does not know.
        extra: Vec<i32>,
    },

    /// A database could not be reached or refused the login.
    #[error("cannot connect to {target} ({summary}): {detail}")]
    Connect {
        /// Which database, in words (`database "source_db"`, `the control database`).
        target: String,
        /// Connection summary without the password.
        summary: String,
        /// The cause, on one line.
        detail: String,
        /// The driver error, or the timeout.
        #[source]
        source: pg::connect::ConnectError,
    },

    /// A statement failed. The message already carries the server's
    /// words (`detail`), so the driver error is kept for its SQLSTATE
    /// ([`Error::sqlstate`], [`Error::driver`]) but is not a `source` that
    /// a renderer would print a second time.
    #[error("{context}: {detail}")]
    Db {
        /// What capra was doing.
        context: String,
        /// The server's message on one line.
        detail: String,
        /// The driver error.
        driver: postgres::Error,
    },

    /// The database answers, but every pooled connection to it is busy
    /// (or the pool keeps failing to open one).
    #[error("database \"{db}\": no pooled connection available: {detail}")]
    PoolExhausted {
        /// Which database.
        db: String,
        /// The pool's reason.
        detail: String,
    },

    /// A connection description cannot work (bad keyword, missing service).
    #[error("{target}: {source}")]
    ConnSpec {
        /// Which database.
        target: String,
        /// Why.
        #[source]
        source: pg::connect::ConnSpecError,
    },

    /// A config file is unreadable or malformed.
    #[error(transparent)]
    ConfigFile(#[from] crate::config::file::FileError),

    /// The control database has no catalog or an older/newer one.
    #[error("{0}")]
    CatalogVersion(String),

    /// A failure inside one part of capra (catalog, capture, apply,
    /// daemon, notify), in that part's own error type.
    #[error(transparent)]
    Area(AreaBox),

    /// A sync failed validation; one finding per line of the vector.
    #[error("sync \"{sync}\" failed validation: {}", .problems.join("; "))]
    Validation {
        /// The sync.
        sync: String,
        /// What is wrong, each naming the table or database.
        problems: Vec<String>,
    },

    /// A Lua hook is wrong.
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),

    /// The system refused a thread (a task limit such as systemd's
    /// `TasksMax` or `ulimit -u`).
    #[error(
        "cannot start thread \"{thread}\": {source} (a task limit is reached: raise TasksMax in the unit or ulimit -u)"
    )]
    Spawn {
        /// Which thread.
        thread: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },

    /// File or process trouble.
    #[error("{context}: {source}")]
    Io {
        /// What capra was doing.
        context: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Exit status for this error: 2 for usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Exit(code) => *code,
            _ => 1,
        }
    }

    /// A not-found error with no hint.
    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
            hint: String::new(),
            looked: false,
        }
    }

    /// A not-found error with a hint ("see capra list syncs").
    pub fn not_found_hint(kind: &'static str, name: impl Into<String>, hint: impl AsRef<str>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
            hint: format!("; {}", hint.as_ref()),
            looked: false,
        }
    }

    /// [`Error::not_found_hint`] whose hint already holds the nearest
    /// name, if any fit.
    pub fn not_found_looked(kind: &'static str, name: impl Into<String>, hint: impl AsRef<str>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
            hint: format!("; {}", hint.as_ref()),
            looked: true,
        }
    }

    /// A duplicate-name error.
    pub fn duplicate(kind: &'static str, name: impl Into<String>) -> Self {
        Error::Duplicate {
            kind,
            name: name.into(),
            hint: String::new(),
        }
    }

    /// Adds what to do to a connection failure's message (other errors are
    /// returned as they are).
    pub fn with_hint(self, hint: &str) -> Self {
        match self {
            Error::Connect {
                target,
                summary,
                detail,
                source,
            } => Error::Connect {
                target,
                summary,
                detail: format!("{detail} ({hint})"),
                source,
            },
            other => other,
        }
    }

    /// The SQLSTATE behind this error, if a server produced it.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            Error::Db { driver, .. } => driver.code(),
            Error::Connect { source, .. } => source.pg().and_then(|e| e.code()),
            _ => None,
        }
    }

    /// The driver's error behind a failed statement.
    pub fn driver(&self) -> Option<&postgres::Error> {
        match self {
            Error::Db { driver, .. } => Some(driver),
            _ => None,
        }
    }

    /// What sort of trouble this is (see [`Kind`]).
    pub fn kind(&self) -> Kind {
        match self {
            Error::Usage(_) | Error::ConnSpec { .. } | Error::ConfigFile(_) | Error::Hook(_) => Kind::Input,
            Error::Validation { .. } => Kind::Input,
            Error::NotFound { .. } | Error::Duplicate { .. } | Error::Rejected(_) | Error::Stale { .. } => {
                Kind::Conflict
            }
            Error::CatalogVersion(_) | Error::Exit(_) => Kind::Conflict,
            Error::Connect { .. } | Error::PoolExhausted { .. } => Kind::Connection,
            Error::Db { driver, .. } => {
                if driver.is_closed() || driver.as_db_error().is_none() {
                    Kind::Connection
                } else {
                    Kind::Server
                }
            }
            Error::Spawn { .. } | Error::Io { .. } => Kind::System,
            Error::Area(e) => e.0.kind(),
        }
    }
}

impl Kind {
    /// The kind's name, as mail shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connection => "connection",
            Kind::Input => "input",
            Kind::Conflict => "conflict",
            Kind::Server => "server",
            Kind::System => "system",
            Kind::Bug => "bug",
        }
    }

    /// Reads a kind back from its name (as stored with a failed run).
    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Connection,
            Kind::Input,
            Kind::Conflict,
            Kind::Server,
            Kind::System,
            Kind::Bug,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// What it means for whoever reads the alert at 3 a.m.
    pub fn advice(self) -> &'static str {
        match self {
            Kind::Connection => {
                "a database could not be reached; capra keeps retrying and goes on by itself once it is back"
            }
            Kind::Input => "something typed or configured is wrong; retries cannot help until it is fixed",
            Kind::Conflict => {
                "the catalog or a database does not match what the sync needs; the error says what to change"
            }
            Kind::Server => "a server refused a statement (a lock, a constraint, a permission); capra keeps retrying",
            Kind::System => "this machine refused (a file, a thread, a process)",
            Kind::Bug => "capra broke one of its own rules; please report it",
        }
    }
}

/// JSON (`status --json`) spells a kind as mail does.
impl serde::Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The error type of one part of capra. Each part names its own failures
/// (and their kind); [`Error`] carries them without depending on the parts,
/// which sit above it.
pub trait AreaError: std::error::Error + Send + Sync + 'static {
    /// What sort of trouble this is.
    fn kind(&self) -> Kind;

    /// The error as `Any`, to find out which part's error it is.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A part's error inside [`Error`].
#[derive(Debug)]
pub struct AreaBox(Box<dyn AreaError>);

impl std::fmt::Display for AreaBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AreaBox {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<E: AreaError> From<E> for Error {
    fn from(e: E) -> Error {
        Error::Area(AreaBox(Box::new(e)))
    }
}

impl Error {
    /// The part's own error, when this is one of type `E`.
    pub fn area<E: AreaError>(&self) -> Option<&E> {
        match self {
            Error::Area(b) => b.0.as_any().downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// Result with capra's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds "what capra was doing" to driver errors.
pub trait Context<T> {
    /// Wraps a `postgres::Error` as [`Error::Db`] with this context.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, postgres::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|driver| Error::Db {
            context: context(),
            detail: pg::error::describe(&driver),
            driver,
        })
    }
}
