//! The metrics refresher: while this daemon leads, every `metrics_refresh`
//! seconds it reads what the gauges need from the databases (through the
//! query `status` uses for pending changes) and replaces them in one go. A
//! scrape never waits for it: it answers from the last pass.
//!
//! Each database is probed on a thread of its own, through a pool of one
//! connection kept apart from the runs' pools, so a slow count never takes
//! a connection a run needs and a hung database holds one probe only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::apply::pools::Pools;
use crate::capture::purge;
use crate::catalog::model::{self, Db};
use crate::catalog::plan::SyncPlan;
use crate::catalog::runs;
use crate::domain::Status;
use crate::error::Context;
use crate::logging;
use crate::metrics::{Metrics, Refreshed};
use crate::sys::lock;

/// How long a database may take to accept a connection before it reads as
/// down for this pass.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// How long a pass waits for the catalog's list of databases before it
/// probes the ones the last list named.
const CATALOG_WAIT: Duration = Duration::from_secs(1);

/// The longest a count of waiting changes may run on a source.
const COUNT_TIMEOUT: &str = "60s";

/// The catalog's `metrics_listen` when the daemon started, if the catalog
/// chose the address (a config file's `metrics_listen` wins over it).
static CATALOG_LISTEN: OnceLock<Option<String>> = OnceLock::new();

/// Notes where this daemon's `metrics_listen` came from, at start.
pub(super) fn note_listen(catalog_value: Option<String>) {
    let _ = CATALOG_LISTEN.set(catalog_value);
}

/// Whether a reload's `metrics_listen` differs from the one this daemon
/// started with, so the reload says a restart is needed.
pub(super) fn listen_changed(now: &str) -> bool {
    matches!(CATALOG_LISTEN.get(), Some(Some(at_start)) if at_start != now)
}

/// One database as the probes last saw it.
#[derive(Default)]
struct Seen {
    /// A probe is running.
    busy: bool,
    /// The running probe has not connected yet.
    connecting: bool,
    /// Whether the last connection worked.
    up: bool,
    /// The last count of waiting changes, per sync (kept while the next
    /// count runs: a long count must not make the lag vanish).
    pending: Option<BTreeMap<String, purge::Pending>>,
    /// The last size of the change logs.
    log_rows: Option<i64>,
    /// Whether the last failure was logged (once per outage).
    warned: bool,
}

/// The databases the syncs name, and which of them delta syncs read.
#[derive(Clone, Default)]
struct Wanted {
    dbs: Vec<(Db, bool)>,
    /// (sync, source db) pairs whose pending changes are exported.
    pairs: Vec<(String, String)>,
    last_success: Vec<(String, f64)>,
}

/// The metrics a daemon serves, with what its refresher keeps for the
/// whole process (a probe hung in an earlier term is not started again).
#[derive(Clone)]
pub struct Served {
    /// The figures the endpoint renders.
    pub figures: Arc<Metrics>,
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// The last answer of the catalog reader: with the control database
    /// down, the databases it named are still probed.
    wanted: Arc<Mutex<Option<Wanted>>>,
    reading: Arc<AtomicBool>,
    catalog_failing: Arc<AtomicBool>,
    /// One connection per database, for the probes alone.
    pools: Arc<Pools>,
}

impl Served {
    /// Wraps the figures the endpoint serves.
    pub fn new(figures: Arc<Metrics>) -> Served {
        Served {
            figures,
            seen: Default::default(),
            wanted: Default::default(),
            reading: Default::default(),
            catalog_failing: Default::default(),
            pools: Arc::new(Pools::new(1)),
        }
    }
}

impl Engine {
    /// The refresher's loop (only started when metrics are served).
    pub fn metrics_loop(self: Arc<Self>) {
        let Some(m) = self.metrics.clone() else { return };
        let _r = logging::role("MET", None);
        let mut last: Option<Instant> = None;
        while !self.is_stopping() {
            let every = self.cfg.read().unwrap_or_else(|e| e.into_inner()).metrics_refresh;
            let due = last.is_none_or(|l| l.elapsed() >= Duration::from_secs_f64(every));
            if due && self.may_write() {
                last = Some(Instant::now());
                if let Some(r) = self.metrics_pass(&m) {
                    if !self.is_stopping() && self.may_write() {
                        m.figures.refreshed(&r);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One pass: None until the catalog has said once what to read.
    fn metrics_pass(self: &Arc<Self>, m: &Served) -> Option<Refreshed> {
        self.read_wanted(m);
        // A second for the catalog's answer; a slow one serves the next pass.
        let until = Instant::now() + CATALOG_WAIT;
        while m.reading.load(Ordering::SeqCst) && Instant::now() < until && !self.is_stopping() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let wanted = lock(&m.wanted).clone()?;
        for (db, source) in &wanted.dbs {
            self.start_probe(m, db, *source);
        }
        // Wait until every probe has connected, or the deadline passed.
        let until = Instant::now() + CONNECT_DEADLINE;
        while Instant::now() < until && !self.is_stopping() {
            let connecting = lock(&m.seen).values().any(|s| s.busy && s.connecting);
            if !connecting {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Counts still running get until the next pass; their last answer
        // stands meanwhile.
        std::thread::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now())));
        let names: Vec<(String, bool)> = wanted.dbs.iter().map(|(d, s)| (d.name.clone(), *s)).collect();
        Some(gather(&names, &wanted, &lock(&m.seen)))
    }

    /// Starts the catalog reader unless it still runs.
    fn read_wanted(self: &Arc<Self>, m: &Served) {
        if m.reading.swap(true, Ordering::SeqCst) {
            return;
        }
        let (engine, served) = (self.clone(), m.clone());
        let spawned = crate::sys::spawn("capra-refresh-catalog", move || {
            match engine.metrics_wanted() {
                Ok(w) => {
                    *lock(&served.wanted) = Some(w);
                    served.catalog_failing.store(false, Ordering::SeqCst);
                }
                Err(e) => {
                    if !served.catalog_failing.swap(true, Ordering::SeqCst) {
                        tracing::warn!("Metrics: cannot read the syncs, probing the databases known before: {e}");
                    }
                }
            }
            served.reading.store(false, Ordering::SeqCst);
        });
        if spawned.is_err() {
            m.reading.store(false, Ordering::SeqCst);
        }
    }

    /// Reads the active syncs' databases and the last good runs from the
    /// catalog. An inactive sync was stopped on purpose: it exports no
    /// lag and its databases no `up`, so nobody is paged for it.
    fn metrics_wanted(&self) -> crate::error::Result<Wanted> {
        let mut c = self.control.get()?;
        let mut w = Wanted::default();
        let mut active = Vec::new();
        for s in model::syncs(&mut *c)? {
            if s.status != Status::Active {
                continue;
            }
            // A sync removed or broken since the list was read is skipped.
            let Ok(p) = SyncPlan::load(&mut *c, &s.name) else {
                continue;
            };
            active.push(s.name.clone());
            let delta = p.is_delta();
            for d in p.sources.iter().chain(&p.targets).chain(&p.fullcopy) {
                let is_source = delta && p.sources.iter().any(|x| x.name == d.name);
                match w.dbs.iter_mut().find(|(x, _)| x.name == d.name) {
                    Some(e) => e.1 |= is_source,
                    None => w.dbs.push((d.clone(), is_source)),
                }
                if is_source && !w.pairs.iter().any(|(s, db)| s == p.name() && *db == d.name) {
                    w.pairs.push((p.name().to_string(), d.name.clone()));
                }
            }
        }
        w.last_success = runs::last_good_times(&mut *c)?
            .into_iter()
            .filter(|(s, _)| active.contains(s))
            .collect();
        Ok(w)
    }

    /// Starts a probe of one database unless one still runs there.
    fn start_probe(self: &Arc<Self>, m: &Served, db: &Db, source: bool) {
        {
            let mut seen = lock(&m.seen);
            let s = seen.entry(db.name.clone()).or_default();
            if s.busy {
                return;
            }
            s.busy = true;
            s.connecting = true;
        }
        let (engine, served, db2) = (self.clone(), m.clone(), db.clone());
        let spawned = crate::sys::spawn("capra-probe", move || {
            engine.probe(&served, &db2, source);
            if let Some(s) = lock(&served.seen).get_mut(&db2.name) {
                s.busy = false;
                s.connecting = false;
            }
        });
        if spawned.is_err() {
            if let Some(s) = lock(&m.seen).get_mut(&db.name) {
                s.busy = false;
                s.connecting = false;
            }
        }
    }

    /// Connects to one database and reads what its gauges need, noting
    /// each answer as it comes.
    fn probe(&self, m: &Served, db: &Db, source: bool) {
        let note = |f: &mut dyn FnMut(&mut Seen)| {
            if let Some(s) = lock(&m.seen).get_mut(&db.name) {
                f(s);
            }
        };
        let mut c = match m.pools.get(db) {
            Ok(c) => c,
            Err(e) => {
                note(&mut |s| {
                    s.up = false;
                    s.connecting = false;
                    s.pending = None;
                    s.log_rows = None;
                    if !s.warned {
                        s.warned = true;
                        tracing::warn!("Metrics: database \"{}\" is down: {e}", db.name);
                    }
                });
                return;
            }
        };
        note(&mut |s| {
            s.up = true;
            s.connecting = false;
            s.warned = false;
        });
        if !source {
            return;
        }
        match count(&mut c, &self.installation) {
            Ok((p, n)) => note(&mut |s| {
                s.pending = Some(p.clone());
                s.log_rows = Some(n);
            }),
            // The last figures stand (a lock on a change log, a count cut
            // short): the gauges go only with the database.
            Err(e) => note(&mut |s| {
                if !s.warned {
                    s.warned = true;
                    tracing::warn!("Metrics: cannot count the changes waiting on \"{}\": {e}", db.name);
                }
            }),
        }
    }
}

/// The waiting changes per sync and the change log rows on one source, in
/// one read-only transaction that neither waits on a lock nor runs long.
fn count(
    c: &mut postgres::Client,
    installation: &str,
) -> crate::error::Result<(BTreeMap<String, purge::Pending>, i64)> {
    let mut tx = c.transaction().ctx(|| "starting a count".into())?;
    tx.batch_execute(&format!(
        "SET TRANSACTION READ ONLY; SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '{COUNT_TIMEOUT}'"
    ))
    .ctx(|| "starting a count".into())?;
    let w = purge::waiting(&mut tx, installation, &[])?;
    let n = purge::log_rows(&mut tx)?;
    tx.commit().ctx(|| "ending a count".into())?;
    Ok((purge::pending_by_sync(&w), n))
}

/// The gauges from what the probes saw: a database counts as up when its
/// last connection worked and no probe is still trying to connect; a
/// source's pending changes are its last finished count.
fn gather(dbs: &[(String, bool)], wanted: &Wanted, seen: &HashMap<String, Seen>) -> Refreshed {
    let mut r = Refreshed {
        last_success: wanted.last_success.clone(),
        ..Default::default()
    };
    for (db, source) in dbs {
        let s = seen.get(db);
        let up = s.is_some_and(|s| s.up && !(s.busy && s.connecting));
        r.up.push((db.clone(), up));
        if let (true, true, Some(n)) = (*source, up, s.and_then(|s| s.log_rows)) {
            r.log_rows.push((db.clone(), n));
        }
    }
    // A source that is up gives every sync reading it a figure, 0 when
    // nothing waits; one that is down gives none (database_up says why).
    for (sync, db) in &wanted.pairs {
        let Some(s) = seen.get(db).filter(|s| s.up && !(s.busy && s.connecting)) else {
            continue;
        };
        if let Some(p) = &s.pending {
            let w = p.get(sync).cloned().unwrap_or_default();
            r.pending
                .push((sync.clone(), db.clone(), w.rows, w.oldest_secs.unwrap_or(0.0)));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source whose count still runs keeps its last figures and reads
    /// as up; one still connecting reads as down; one never seen too.
    #[test]
    fn a_long_count_keeps_the_last_figures() {
        let dbs = [("src".to_string(), true), ("tgt".into(), false), ("new".into(), false)];
        let wanted = Wanted {
            dbs: Vec::new(),
            pairs: vec![("s".into(), "src".into()), ("t".into(), "src".into())],
            last_success: vec![("s".into(), 5.0)],
        };
        let mut seen = HashMap::new();
        let mut p = BTreeMap::new();
        p.insert(
            "s".to_string(),
            purge::Pending {
                rows: 7,
                oldest_secs: Some(3.5),
            },
        );
        seen.insert(
            "src".to_string(),
            Seen {
                busy: true,
                up: true,
                pending: Some(p),
                log_rows: Some(9),
                ..Default::default()
            },
        );
        seen.insert(
            "tgt".to_string(),
            Seen {
                busy: true,
                connecting: true,
                up: true,
                ..Default::default()
            },
        );
        let r = gather(&dbs, &wanted, &seen);
        assert_eq!(
            r.up,
            vec![("src".into(), true), ("tgt".into(), false), ("new".into(), false)]
        );
        assert_eq!(
            r.pending,
            vec![("s".into(), "src".into(), 7, 3.5), ("t".into(), "src".into(), 0, 0.0)]
        );
        assert_eq!(r.log_rows, vec![("src".into(), 9)]);
        assert_eq!(r.last_success, vec![("s".into(), 5.0)]);
    }
}
