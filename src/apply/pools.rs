//! Connections a run uses: one r2d2 pool per replicated database, and the
//! cancel handles that let a stopping daemon interrupt a long COPY.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::CancelToken;
use postgres_openssl::MakeTlsConnector;

use crate::catalog::model::Db;
use crate::error::Result;
use crate::pg::pool::{Conn, DbPool};

/// Pools by database name, rebuilt when a database's settings change.
pub struct Pools {
    map: Mutex<HashMap<String, (Db, crate::pg::connect::NetDefaults, DbPool)>>,
    max_size: u32,
}

impl Pools {
    /// Empty set of pools; each holds at most `max_size` connections.
    pub fn new(max_size: u32) -> Pools {
        Pools {
            map: Mutex::new(HashMap::new()),
            max_size,
        }
    }

    /// The pool for a database (created on first use, replaced if its
    /// connection settings or the network settings changed).
    pub fn pool(&self, db: &Db) -> Result<DbPool> {
        let mut m = crate::sys::lock(&self.map);
        let net = crate::pg::connect::net_defaults();
        if let Some((known, n, p)) = m.get(&db.name) {
            if known == db && *n == net {
                return Ok(p.clone());
            }
        }
        let p = DbPool::new(&db.name, &db.conn_spec(), "capra daemon", self.max_size)?;
        m.insert(db.name.clone(), (db.clone(), net, p.clone()));
        Ok(p)
    }

    /// A connection to a database.
    pub fn get(&self, db: &Db) -> Result<Conn> {
        self.pool(db)?.get()
    }

    /// Drops the pools of databases not named in `keep` (a pool retries a
    /// database that refused it for as long as it exists).
    pub fn retain(&self, keep: &[&str]) {
        crate::sys::lock(&self.map).retain(|name, _| keep.contains(&name.as_str()));
    }
}

/// Cancel handles of the connections a run is using, so stopping the daemon
/// can interrupt a long COPY (the run then rolls back).
#[derive(Default)]
pub struct Cancel {
    tokens: Mutex<Vec<CancelToken>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Cancel {
    /// Notes a connection the run uses (refused once stopping).
    pub fn register(&self, c: &postgres::Client) -> Result<()> {
        if self.is_stopped() {
            return Err(super::ApplyError::Stopping.into());
        }
        crate::sys::lock(&self.tokens).push(c.cancel_token());
        Ok(())
    }

    /// Cancels every query of the run (called from another thread).
    pub fn cancel(&self, tls: &MakeTlsConnector) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in crate::sys::lock(&self.tokens).iter() {
            let _ = t.cancel_query(tls.clone());
        }
    }

    /// Whether a cancel was requested.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the registered connections (the run is over).
    pub fn clear(&self) {
        crate::sys::lock(&self.tokens).clear();
    }
}
