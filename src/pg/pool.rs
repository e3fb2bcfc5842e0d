//! Pooled connections for the daemon's workers (r2d2).
//!
//! r2d2's defaults suit us poorly: a 30 s checkout wait and an error that
//! says "timed out" while the real cause ("Connection refused") is gone.
//! The pool here waits only as long as the connect timeout, is built
//! without an initial connection (a database that is down must not stop the
//! daemon starting), opens connections through [`super::connect::connect`]
//! (bounded as a whole, so a server that accepts TCP and never answers
//! cannot wedge the pool's connector threads, and with capra's session
//! settings), and when it cannot hand out a connection, one direct attempt
//! finds the real cause to report.

use std::time::Duration;

use super::connect::{ConnSpec, ConnectError, Resolved};
use crate::error::{Error, Result};

/// Opens pooled connections the way every capra connection is opened.
#[derive(Debug)]
pub struct Manager {
    resolved: Resolved,
}

impl r2d2::ManageConnection for Manager {
    type Connection = postgres::Client;
    type Error = ConnectError;

    fn connect(&self) -> std::result::Result<postgres::Client, ConnectError> {
        super::connect::connect(&self.resolved)
    }

    fn is_valid(&self, c: &mut postgres::Client) -> std::result::Result<(), ConnectError> {
        // Answered in time, or the connection counts as dead (a silent
        // network must not hang the checkout).
        let within = self
            .resolved
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(super::connect::DEFAULT_CONNECT_TIMEOUT);
        c.is_valid(within).map_err(ConnectError::Pg)
    }

    fn has_broken(&self, c: &mut postgres::Client) -> bool {
        c.is_closed()
    }
}

/// A pooled connection.
pub type Conn = r2d2::PooledConnection<Manager>;

/// Logs the pool's background connection failures (at debug level; the
/// caller reports the cause itself).
#[derive(Debug)]
struct LogError;

impl r2d2::HandleError<ConnectError> for LogError {
    fn handle_error(&self, e: ConnectError) {
        tracing::debug!("connection attempt failed: {e}");
    }
}

/// A pool for one database.
#[derive(Clone)]
pub struct DbPool {
    name: String,
    pool: r2d2::Pool<Manager>,
    resolved: Resolved,
}

impl DbPool {
    /// Builds a pool for a database (`name` is capra's name for it).
    pub fn new(name: &str, spec: &ConnSpec, app: &str, max_size: u32) -> Result<DbPool> {
        let resolved = super::connect::resolve_for(spec, app, &format!("database \"{name}\""))?;
        let timeout = resolved
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(super::connect::DEFAULT_CONNECT_TIMEOUT);
        let mgr = Manager {
            resolved: resolved.clone(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(timeout + Duration::from_secs(1))
            .idle_timeout(Some(Duration::from_secs(300)))
            .test_on_check_out(true)
            .error_handler(Box::new(LogError))
            .build_unchecked(mgr);
        Ok(DbPool {
            name: name.to_string(),
            pool,
            resolved,
        })
    }

    /// Checks a connection out; on failure reports the last real cause.
    pub fn get(&self) -> Result<Conn> {
        match self.pool.get() {
            Ok(c) => Ok(c),
            Err(_) => {
                // Connect directly once, so the error carries the cause.
                self.dedicated()?;
                self.pool.get().map_err(|e| Error::PoolExhausted {
                    db: self.name.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }

    /// A dedicated (unpooled) connection, e.g. for LISTEN.
    pub fn dedicated(&self) -> Result<postgres::Client> {
        super::connect::open(&self.resolved, &format!("database \"{}\"", self.name))
    }
}
