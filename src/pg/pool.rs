//! Pooled connections for the daemon's workers (r2d2).
//!
//! r2d2's defaults suit us poorly: a 30 s checkout wait and an error that
//! says "timed out" while the real cause ("Connection refused") is gone. The
//! pool here waits only as long as the connect timeout, is built without an
//! initial connection (a database that is down must not stop the daemon
//! starting), and remembers the last connection error to report it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use r2d2_postgres::PostgresConnectionManager;

use super::connect::{ConnSpec, Resolved};
use crate::error::{Error, Result};

/// A pooled connection.
pub type Conn = r2d2::PooledConnection<PostgresConnectionManager<MakeTlsConnector>>;

#[derive(Debug)]
struct LastError(Arc<Mutex<Option<String>>>);

impl r2d2::HandleError<postgres::Error> for LastError {
    fn handle_error(&self, e: postgres::Error) {
        let text = super::error::describe(&e);
        tracing::debug!("connection attempt failed: {text}");
        *self.0.lock().unwrap() = Some(text);
    }
}

/// A pool for one database.
#[derive(Clone)]
pub struct DbPool {
    name: String,
    summary: String,
    pool: r2d2::Pool<PostgresConnectionManager<MakeTlsConnector>>,
    last_error: Arc<Mutex<Option<String>>>,
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
        let last_error = Arc::new(Mutex::new(None));
        let mgr = PostgresConnectionManager::new(resolved.config.clone(), resolved.tls.clone());
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(0))
            .connection_timeout(timeout + Duration::from_secs(1))
            .idle_timeout(Some(Duration::from_secs(300)))
            .test_on_check_out(true)
            .error_handler(Box::new(LastError(last_error.clone())))
            .build_unchecked(mgr);
        Ok(DbPool {
            name: name.to_string(),
            summary: resolved.summary.clone(),
            pool,
            last_error,
            resolved,
        })
    }

    /// Checks a connection out; on failure reports the last real cause.
    pub fn get(&self) -> Result<Conn> {
        match self.pool.get() {
            Ok(c) => Ok(c),
            Err(_) => {
                // Reconnect directly once, so the error carries the cause.
                match super::connect::connect(&self.resolved) {
                    Ok(_) => self.pool.get().map_err(|e| {
                        Error::Rejected(format!(
                            "database \"{}\": no pooled connection available: {e}",
                            self.name
                        ))
                    }),
                    Err(source) => Err(Error::Connect {
                        target: format!("database \"{}\"", self.name),
                        summary: self.summary.clone(),
                        detail: super::error::describe(&source),
                        source,
                    }),
                }
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

    /// The last connection error seen by the pool, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// capra's name for the database.
    pub fn name(&self) -> &str {
        &self.name
    }
}
