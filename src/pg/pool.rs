//! Pooled connections for the daemon's workers (r2d2).
//!
//! r2d2's defaults suit us poorly: a 30 s checkout wait and an error that
//! says "timed out" while the real cause ("Connection refused") is gone. The
//! pool here waits only as long as the connect timeout, is built without an
//! initial connection (a database that is down must not stop the daemon
//! starting), and when it cannot hand out a connection, one direct attempt
//! finds the real cause to report.

use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use r2d2_postgres::PostgresConnectionManager;

use super::connect::{ConnSpec, Resolved};
use crate::error::{Error, Result};

/// A pooled connection.
pub type Conn = r2d2::PooledConnection<PostgresConnectionManager<MakeTlsConnector>>;

/// Logs the pool's background connection failures (at debug level; the
/// caller reports the cause itself).
#[derive(Debug)]
struct LogError;

impl r2d2::HandleError<postgres::Error> for LogError {
    fn handle_error(&self, e: postgres::Error) {
        tracing::debug!("connection attempt failed: {}", super::error::describe(&e));
    }
}

/// A pool for one database.
#[derive(Clone)]
pub struct DbPool {
    name: String,
    summary: String,
    pool: r2d2::Pool<PostgresConnectionManager<MakeTlsConnector>>,
    resolved: Resolved,
}

impl DbPool {
    /// Builds a pool for a database (`name` is capra's name for it).
    pub fn new(name: &str, spec: &ConnSpec, app: &str, max_size: u32) -> Result<DbPool> {
        let resolved = super::connect::resolve(spec, app).map_err(|source| Error::ConnSpec {
            target: format!("database \"{name}\""),
            source,
        })?;
        let timeout = resolved
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(super::connect::DEFAULT_CONNECT_TIMEOUT);
        let mgr = PostgresConnectionManager::new(resolved.config.clone(), resolved.tls.clone());
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
            summary: resolved.summary.clone(),
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
                self.pool.get().map_err(|e| {
                    Error::Rejected(format!(
                        "database \"{}\": no pooled connection available: {e}",
                        self.name
                    ))
                })
            }
        }
    }

    /// A dedicated (unpooled) connection, e.g. for LISTEN.
    pub fn dedicated(&self) -> Result<postgres::Client> {
        super::connect::connect(&self.resolved).map_err(|source| Error::Connect {
            target: format!("database \"{}\"", self.name),
            summary: self.summary.clone(),
            detail: super::error::describe(&source),
            source,
        })
    }
}
