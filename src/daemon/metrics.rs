//! The metrics refresher: while this daemon leads, every `metrics_refresh`
//! seconds it reads what the gauges need from the databases (through the
//! query `status` uses for pending changes) and replaces them in one go. A
//! scrape never waits for it: it answers from the last pass.
//!
//! Each database is probed on a thread of its own, through a pool of one
//! connection kept apart from the runs' pools, so a slow count never takes
//! a connection a run needs and a hung database holds one probe only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::pg::pool::DbPool;
use crate::sys::lock;

/// How long a database may take to accept a connection before it reads as
/// down for this pass.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// How long a pass waits for the catalog's list of databases before it
/// probes the ones the last list named.
const CATALOG_WAIT: Duration = Duration::from_secs(1);

/// The longest one statement of a count of waiting changes may run.
const COUNT_TIMEOUT: &str = "60s";

/// How long a count's figures stand beyond two refreshes when the counts
/// after it fail: then pending and lag go, rather than freeze.
const COUNT_AGE: Duration = Duration::from_secs(60);

/// The catalog's `metrics_listen` when the daemon started, if the catalog
/// chose the address (a config file's `metrics_listen` wins over it).
static CATALOG_LISTEN: OnceLock<Option<String>> = OnceLock::new();

/// Notes where this daemon's `metrics_listen` came from, at start.
pub(super) fn note_listen(catalog_value: Option<String>) {
    let _ = CATALOG_LISTEN.set(catalog_value);
}

/// The last `metrics_listen` a reload warned about.
static WARNED_LISTEN: Mutex<Option<String>> = Mutex::new(None);

/// Whether a reload's `metrics_listen` differs from the one this daemon
/// started with (and was not warned about yet), so the reload says a
/// restart is needed.
pub(super) fn listen_changed(now: &str) -> bool {
    match CATALOG_LISTEN.get() {
        Some(Some(at_start)) if at_start != now => {
            let mut w = lock(&WARNED_LISTEN);
            let new = w.as_deref() != Some(now);
            *w = Some(now.to_string());
            new
        }
        _ => false,
    }
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
    /// When the last count finished (older ones are not shown).
    counted_at: Option<Instant>,
    /// Whether the database being down was logged (once per outage).
    warned_down: bool,
    /// Whether a failing count was logged (once until one works).
    warned_count: bool,
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
    /// One control connection, for the catalog reader alone (runs need
    /// the engine's).
    control: DbPool,
    /// Bumped by every answer: the gauges are published again.
    changed: Arc<AtomicU64>,
}

impl Served {
    /// Wraps the figures the endpoint serves; `control` is the refresher's
    /// own connection to the control database.
    pub fn new(figures: Arc<Metrics>, control: DbPool) -> Served {
        Served {
            figures,
            seen: Default::default(),
            wanted: Default::default(),
            reading: Default::default(),
            catalog_failing: Default::default(),
            pools: Arc::new(Pools::new(1)),
            control,
            changed: Default::default(),
        }
    }

    /// A term ended: the gauges go, the probes' connections close, and
    /// what they saw is forgotten (a probe still running keeps its place).
    pub fn term_ended(&self) {
        self.figures.term_ended();
        self.pools.retain(&[]);
        for s in lock(&self.seen).values_mut() {
            s.up = false;
            s.pending = None;
            s.log_rows = None;
            s.counted_at = None;
        }
    }

    fn bump(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Gives a probe's place back when its thread ends, even by a panic.
struct ProbeDone {
    served: Served,
    db: String,
}

impl Drop for ProbeDone {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.served.seen).get_mut(&self.db) {
            s.busy = false;
            s.connecting = false;
        }
        self.served.bump();
    }
}

impl Engine {
    /// The refresher's loop (only started when metrics are served): a pass
    /// every `metrics_refresh` seconds, and the gauges published again
    /// whenever an answer comes in.
    pub fn metrics_loop(self: Arc<Self>) {
        let Some(m) = self.metrics.clone() else { return };
        let _r = logging::role("MET", None);
        let mut last: Option<Instant> = None;
        let mut published = u64::MAX;
        while !self.is_stopping() {
            std::thread::sleep(Duration::from_millis(100));
            if !self.may_write() {
                continue;
            }
            let every = self.cfg.read().unwrap_or_else(|e| e.into_inner()).metrics_refresh;
            if last.is_none_or(|l| l.elapsed() >= Duration::from_secs_f64(every)) && self.metrics_pass(&m) {
                last = Some(Instant::now());
            }
            let now = m.changed.load(Ordering::SeqCst);
            if now == published {
                continue;
            }
            published = now;
            let Some(wanted) = lock(&m.wanted).clone() else {
                continue;
            };
            let max_age = Duration::from_secs_f64(2.0 * every) + COUNT_AGE;
            let r = gather(&names(&wanted), &wanted, &lock(&m.seen), max_age);
            if !self.is_stopping() && self.may_write() {
                m.figures.refreshed(&r);
            }
        }
    }

    /// One pass: reads the catalog and starts the probes; false until the
    /// catalog has said once what to read (tried again at once).
    fn metrics_pass(self: &Arc<Self>, m: &Served) -> bool {
        self.read_wanted(m);
        // A second for the catalog's answer; a slow one serves the next pass.
        let until = Instant::now() + CATALOG_WAIT;
        while m.reading.load(Ordering::SeqCst) && Instant::now() < until && !self.is_stopping() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let Some(wanted) = lock(&m.wanted).clone() else {
            return false;
        };
        for (db, source) in &wanted.dbs {
            self.start_probe(m, db, *source);
        }
        // Until every probe has connected, or the deadline passed: then a
        // database still connecting reads as down.
        let until = Instant::now() + CONNECT_DEADLINE;
        while Instant::now() < until && !self.is_stopping() {
            if !lock(&m.seen).values().any(|s| s.busy && s.connecting) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        m.bump();
        true
    }

    /// Starts the catalog reader unless it still runs.
    fn read_wanted(self: &Arc<Self>, m: &Served) {
        if m.reading.swap(true, Ordering::SeqCst) {
            return;
        }
        let served = m.clone();
        let spawned = crate::sys::spawn("capra-refresh-catalog", move || {
            match wanted(&served.control) {
                Ok(w) => {
                    // Databases no sync names any more: their pools and
                    // what was seen of them go.
                    let keep: Vec<&str> = w.dbs.iter().map(|(d, _)| d.name.as_str()).collect();
                    served.pools.retain(&keep);
                    lock(&served.seen).retain(|k, s| s.busy || keep.contains(&k.as_str()));
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
            served.bump();
        });
        if spawned.is_err() {
            m.reading.store(false, Ordering::SeqCst);
        }
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
        let done = ProbeDone {
            served: m.clone(),
            db: db.name.clone(),
        };
        let (installation, db2) = (self.installation.clone(), db.clone());
        // If the thread cannot start, `done` is dropped with the closure.
        let _ = crate::sys::spawn("capra-probe", move || {
            probe(&done.served, &installation, &db2, source);
            drop(done);
        });
    }
}

/// Reads the active syncs' databases and the last good runs from the
/// catalog. An inactive sync was stopped on purpose: it exports no lag and
/// its databases no `up`, so nobody is paged for it.
fn wanted(control: &DbPool) -> crate::error::Result<Wanted> {
    let mut c = control.get()?;
    let mut w = Wanted::default();
    let mut active = Vec::new();
    for s in model::syncs(&mut *c)? {
        if s.status != Status::Active {
            continue;
        }
        let p = match SyncPlan::load(&mut *c, &s.name) {
            Ok(p) => p,
            Err(e) => {
                // Removed meanwhile, or broken: its controller reports it.
                tracing::debug!("Metrics: skipping sync \"{}\": {e}", s.name);
                continue;
            }
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

/// The database names to gather, and whether each is a delta source.
fn names(w: &Wanted) -> Vec<(String, bool)> {
    w.dbs.iter().map(|(d, s)| (d.name.clone(), *s)).collect()
}

/// Connects to one database and reads what its gauges need, noting each
/// answer as it comes.
fn probe(m: &Served, installation: &str, db: &Db, source: bool) {
    let note = |f: &mut dyn FnMut(&mut Seen)| {
        if let Some(s) = lock(&m.seen).get_mut(&db.name) {
            f(s);
        }
        m.bump();
    };
    let mut c = match m.pools.get(db) {
        Ok(c) => c,
        Err(e) => {
            note(&mut |s| {
                s.up = false;
                s.connecting = false;
                s.pending = None;
                s.log_rows = None;
                s.counted_at = None;
                if !s.warned_down {
                    s.warned_down = true;
                    tracing::warn!("Metrics: database \"{}\" is down: {e}", db.name);
                }
            });
            return;
        }
    };
    note(&mut |s| {
        s.up = true;
        s.connecting = false;
        s.warned_down = false;
    });
    if !source {
        return;
    }
    match count(&mut c, installation) {
        Ok((p, n)) => note(&mut |s| {
            s.pending = Some(p.clone());
            s.log_rows = Some(n);
            s.counted_at = Some(Instant::now());
            s.warned_count = false;
        }),
        // The last figures stand for a while (a lock on a change log, a
        // count cut short): see COUNT_AGE.
        Err(e) => note(&mut |s| {
            if !s.warned_count {
                s.warned_count = true;
                tracing::warn!("Metrics: cannot count the changes waiting on \"{}\": {e}", db.name);
            }
        }),
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
/// source's pending changes are its last finished count, if younger than
/// `max_age`, and only for the syncs that count saw.
fn gather(dbs: &[(String, bool)], wanted: &Wanted, seen: &HashMap<String, Seen>, max_age: Duration) -> Refreshed {
    let mut r = Refreshed {
        last_success: wanted.last_success.clone(),
        ..Default::default()
    };
    let is_up = |s: &Seen| s.up && !(s.busy && s.connecting);
    let fresh = |s: &Seen| s.counted_at.is_some_and(|t| t.elapsed() <= max_age);
    for (db, source) in dbs {
        let s = seen.get(db);
        let up = s.is_some_and(is_up);
        r.up.push((db.clone(), up));
        if let Some(n) = s.filter(|s| *source && up && fresh(s)).and_then(|s| s.log_rows) {
            r.log_rows.push((db.clone(), n));
        }
    }
    for (sync, db) in &wanted.pairs {
        let Some(s) = seen.get(db).filter(|s| is_up(s) && fresh(s)) else {
            continue;
        };
        if let Some(w) = s.pending.as_ref().and_then(|p| p.get(sync)) {
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
                counted_at: Some(Instant::now()),
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
        let r = gather(&dbs, &wanted, &seen, Duration::from_secs(60));
        assert_eq!(
            r.up,
            vec![("src".into(), true), ("tgt".into(), false), ("new".into(), false)]
        );
        // Sync t, which the count did not see (not registered yet), gets
        // no figure rather than a false 0.
        assert_eq!(r.pending, vec![("s".into(), "src".into(), 7, 3.5)]);
        assert_eq!(r.log_rows, vec![("src".into(), 9)]);
        assert_eq!(r.last_success, vec![("s".into(), 5.0)]);
        // A count older than max_age is not shown.
        seen.get_mut("src").unwrap().counted_at = Some(Instant::now() - Duration::from_secs(120));
        let r = gather(&dbs, &wanted, &seen, Duration::from_secs(60));
        assert!(r.pending.is_empty() && r.log_rows.is_empty());
        assert_eq!(r.up[0], ("src".into(), true));
    }
}
