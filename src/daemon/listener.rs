//! Listeners (part of Bucardo's MCP): one thread per source database that
//! some autokick sync reads, LISTENing for the capture trigger's NOTIFY,
//! checked every `mcp_pingtime` and reconnected on its own.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::engine::{lock, sleep_unless, CtlMsg, Engine, ListenerHandle, Reason};
use super::logging;
use crate::capture::install;
use crate::catalog::model::Db;

impl Engine {
    /// Registers a sync's sources for autokick (and starts their listeners).
    pub(super) fn set_routes(self: &Arc<Self>, sync: &str, sources: Vec<Db>, autokick: bool) {
        self.forget_routes(sync);
        if autokick {
            let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
            for db in sources {
                let e = s.entry(db.name.clone()).or_insert_with(|| (db.clone(), HashSet::new()));
                e.0 = db;
                e.1.insert(sync.to_string());
            }
        }
        self.refresh_listeners();
    }

    pub(super) fn forget_routes(self: &Arc<Self>, sync: &str) {
        {
            let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
            for v in s.values_mut() {
                v.1.remove(sync);
            }
            s.retain(|_, v| !v.1.is_empty());
        }
        self.refresh_listeners();
    }

    /// One listener per source database that some autokick sync reads.
    fn refresh_listeners(self: &Arc<Self>) {
        let wanted: HashMap<String, Db> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let mut ls = lock(&self.listeners);
        let stale: Vec<String> = ls.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for k in stale {
            if let Some(h) = ls.remove(&k) {
                h.stop.store(true, Ordering::SeqCst);
            }
        }
        for (name, db) in wanted {
            if ls.contains_key(&name) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let me = self.clone();
            let st = stop.clone();
            let join = std::thread::Builder::new()
                .name(format!("capra-listen-{name}"))
                .spawn(move || me.listen_source(db, st))
                .ok();
            ls.insert(name, ListenerHandle { stop, join });
        }
    }

    /// Kicks every autokick sync reading this source (after a reconnect).
    fn kick_all_of(&self, db: &str) {
        let syncs: Vec<String> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(db)
            .map(|v| v.1.iter().cloned().collect())
            .unwrap_or_default();
        for s in syncs {
            self.tell(&s, CtlMsg::Kick(Reason::Autokick, None));
        }
    }

    fn listen_source(self: Arc<Self>, db: Db, stop: Arc<AtomicBool>) {
        let _r = logging::role("MCP", None);
        let _db = logging::field("db", &db.name);
        let mut backoff = Duration::from_millis(500);
        let mut reported = false;
        while !stop.load(Ordering::SeqCst) && !self.is_stopping() {
            let client = self.pools.pool(&db).and_then(|p| p.dedicated());
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    if !reported {
                        tracing::warn!("Cannot listen for changes on database \"{}\": {e}; retrying", db.name);
                        reported = true;
                    }
                    sleep_unless(&stop, &self.stopping, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                    continue;
                }
            };
            if let Err(e) = client.batch_execute(&format!("LISTEN {}", install::KICK_CHANNEL)) {
                tracing::warn!(
                    "LISTEN on database \"{}\" failed: {}",
                    db.name,
                    crate::pg::error::describe(&e)
                );
                sleep_unless(&stop, &self.stopping, backoff);
                continue;
            }
            if reported {
                tracing::info!("Database \"{}\" is reachable again; resuming its syncs", db.name);
            }
            reported = false;
            backoff = Duration::from_millis(500);
            // Changes may have committed while we were not listening.
            self.kick_all_of(&db.name);
            let mut last_ping = Instant::now();
            'conn: while !stop.load(Ordering::SeqCst) && !self.is_stopping() {
                let mut kicked = false;
                let pingtime = self.cfg.read().unwrap_or_else(|e| e.into_inner()).pingtime;
                if last_ping.elapsed() >= Duration::from_secs_f64(pingtime) {
                    // A silent network never errors a connection that only
                    // waits; a query that must be answered in time does.
                    last_ping = Instant::now();
                    let within = crate::pg::connect::net_defaults().connect_timeout;
                    if let Err(e) = client.is_valid(within) {
                        tracing::warn!(
                            "The listening connection to database \"{}\" failed its check: {}; reconnecting",
                            db.name,
                            crate::pg::error::describe(&e)
                        );
                        reported = true;
                        break 'conn;
                    }
                    // Safety net for a notification that never arrived.
                    self.kick_all_of(&db.name);
                }
                {
                    let mut n = client.notifications();
                    let first = n.timeout_iter(Duration::from_millis(500)).next();
                    match first {
                        Ok(None) => {}
                        Ok(Some(_)) => {
                            kicked = true;
                            // Drain what else arrived: one kick covers them all.
                            let mut more = n.iter();
                            while let Ok(Some(_)) = more.next() {}
                        }
                        Err(e) => {
                            tracing::warn!(
                                "Lost the listening connection to database \"{}\": {}; reconnecting",
                                db.name,
                                crate::pg::error::describe(&e)
                            );
                            reported = true;
                            break 'conn;
                        }
                    }
                }
                if client.is_closed() {
                    reported = true;
                    break 'conn;
                }
                if kicked {
                    self.kick_all_of(&db.name);
                }
            }
        }
    }
}
