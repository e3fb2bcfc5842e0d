//! The metrics refresher: while this daemon leads, every `metrics_refresh`
//! seconds it reads what the gauges need from the databases (through the
//! query `status` uses for pending changes) and replaces them in one go. A
//! scrape never waits for it: it answers from the last pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::capture::purge;
use crate::catalog::model::{self, Db};
use crate::catalog::plan::SyncPlan;
use crate::catalog::runs;
use crate::logging;
use crate::metrics::Refreshed;
use crate::sys::lock;

/// The longest a pass waits for the databases' answers; a database that
/// has not answered by then counts as down.
const PASS_DEADLINE: Duration = Duration::from_secs(5);

/// How long a pass waits for the catalog's list of databases before it
/// probes the ones the last list named.
const CATALOG_WAIT: Duration = Duration::from_secs(1);

/// What one database's probe reports.
enum Heard {
    /// A connection worked, or not.
    Up(String, bool),
    /// The changes waiting on a source, per sync.
    Pending(String, BTreeMap<String, purge::Pending>),
    /// Rows in a source's change logs.
    LogRows(String, i64),
    /// The probe is over.
    Done(String),
}

/// The databases the syncs name, and which of them delta syncs read.
#[derive(Clone)]
struct Wanted {
    dbs: Vec<(Db, bool)>,
    /// (sync, source db) pairs whose pending changes are exported.
    pairs: Vec<(String, String)>,
    last_success: Vec<(String, f64)>,
}

/// What the refresher keeps between passes.
#[derive(Default)]
struct Memory {
    /// Probes still waiting on a database, from earlier passes: a hung
    /// database gets no second probe, and reads as down meanwhile.
    busy: HashMap<String, Arc<AtomicBool>>,
    /// The last answer of the catalog reader: with the control database
    /// down, the databases it named are still probed.
    wanted: Arc<Mutex<Option<Wanted>>>,
    /// Whether the catalog reader still runs.
    reading: Arc<AtomicBool>,
    /// Whether the last catalog read failed (warned once per outage).
    failing: Arc<AtomicBool>,
}

impl Engine {
    /// The refresher's loop (only started when metrics are served).
    pub fn metrics_loop(self: Arc<Self>) {
        let Some(m) = self.metrics.clone() else { return };
        let _r = logging::role("MET", None);
        let mut mem = Memory::default();
        let mut last: Option<Instant> = None;
        while !self.is_stopping() {
            let every = self.cfg.read().unwrap_or_else(|e| e.into_inner()).metrics_refresh;
            let due = last.is_none_or(|l| l.elapsed() >= Duration::from_secs_f64(every));
            if due && self.may_write() {
                last = Some(Instant::now());
                if let Some(r) = self.metrics_pass(&mut mem) {
                    if !self.is_stopping() && self.may_write() {
                        m.refreshed(&r);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One pass: None until the catalog has said once what to read.
    fn metrics_pass(self: &Arc<Self>, mem: &mut Memory) -> Option<Refreshed> {
        if !mem.reading.swap(true, Ordering::SeqCst) {
            let (engine, slot, reading, failing) = (
                self.clone(),
                mem.wanted.clone(),
                mem.reading.clone(),
                mem.failing.clone(),
            );
            let spawned = crate::sys::spawn("capra-refresh-catalog", move || {
                match engine.metrics_wanted() {
                    Ok(w) => {
                        *lock(&slot) = Some(w);
                        failing.store(false, Ordering::SeqCst);
                    }
                    Err(e) => {
                        if !failing.swap(true, Ordering::SeqCst) {
                            tracing::warn!("Metrics: cannot read the syncs, probing the databases known before: {e}");
                        }
                    }
                }
                reading.store(false, Ordering::SeqCst);
            });
            if spawned.is_err() {
                mem.reading.store(false, Ordering::SeqCst);
            }
        }
        // A second for the catalog's answer; a slow one serves the next pass.
        let until = Instant::now() + CATALOG_WAIT;
        while mem.reading.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let wanted = lock(&mem.wanted).clone()?;
        mem.busy.retain(|_, b| b.load(Ordering::SeqCst));
        let (tx, rx) = mpsc::channel();
        let mut waiting: HashSet<String> = HashSet::new();
        for (db, source) in &wanted.dbs {
            if mem.busy.contains_key(&db.name) {
                continue;
            }
            let flag = Arc::new(AtomicBool::new(true));
            let spawned = {
                let (engine, db, tx, flag) = (self.clone(), db.clone(), tx.clone(), flag.clone());
                let source = *source;
                crate::sys::spawn("capra-probe", move || {
                    engine.probe(&db, source, &tx);
                    flag.store(false, Ordering::SeqCst);
                    let _ = tx.send(Heard::Done(db.name.clone()));
                })
            };
            if spawned.is_ok() {
                mem.busy.insert(db.name.clone(), flag);
                waiting.insert(db.name.clone());
            }
        }
        drop(tx);
        Some(collect(wanted, rx, waiting))
    }

    /// Reads the syncs' databases and the last good runs from the catalog.
    fn metrics_wanted(&self) -> crate::error::Result<Wanted> {
        let mut c = self.control.get()?;
        let mut dbs: Vec<(Db, bool)> = Vec::new();
        let mut pairs = Vec::new();
        for s in model::syncs(&mut *c)? {
            // A sync removed or broken since the list was read is skipped.
            let Ok(p) = SyncPlan::load(&mut *c, &s.name) else {
                continue;
            };
            let delta = p.is_delta();
            for d in p.sources.iter().chain(&p.targets).chain(&p.fullcopy) {
                let is_source = delta && p.sources.iter().any(|x| x.name == d.name);
                match dbs.iter_mut().find(|(x, _)| x.name == d.name) {
                    Some(e) => e.1 |= is_source,
                    None => dbs.push((d.clone(), is_source)),
                }
                if is_source {
                    pairs.push((p.name().to_string(), d.name.clone()));
                }
            }
        }
        let last_success = runs::last_good_times(&mut *c)?;
        Ok(Wanted {
            dbs,
            pairs,
            last_success,
        })
    }

    /// Connects to one database and reads what its gauges need.
    fn probe(&self, db: &Db, source: bool, tx: &Sender<Heard>) {
        let mut c = match self.pools.get(db) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("Metrics: database \"{}\" is down: {e}", db.name);
                let _ = tx.send(Heard::Up(db.name.clone(), false));
                return;
            }
        };
        let _ = tx.send(Heard::Up(db.name.clone(), true));
        if !source {
            return;
        }
        match purge::waiting(&mut *c, &self.installation, &[]) {
            Ok(w) => {
                let _ = tx.send(Heard::Pending(db.name.clone(), purge::pending_by_sync(&w)));
            }
            Err(e) => tracing::warn!("Metrics: cannot count the changes waiting on \"{}\": {e}", db.name),
        }
        match purge::log_rows(&mut *c) {
            Ok(n) => {
                let _ = tx.send(Heard::LogRows(db.name.clone(), n));
            }
            Err(e) => tracing::warn!("Metrics: cannot size the change logs on \"{}\": {e}", db.name),
        }
    }
}

/// Gathers the probes' answers until each is done or the deadline passes;
/// a database that never answered counts as down.
fn collect(wanted: Wanted, rx: Receiver<Heard>, mut waiting: HashSet<String>) -> Refreshed {
    let until = Instant::now() + PASS_DEADLINE;
    let mut up: HashMap<String, bool> = HashMap::new();
    let mut pending: HashMap<String, BTreeMap<String, purge::Pending>> = HashMap::new();
    let mut r = Refreshed {
        last_success: wanted.last_success,
        ..Default::default()
    };
    while !waiting.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Heard::Up(db, ok)) => {
                up.insert(db, ok);
            }
            Ok(Heard::Pending(db, p)) => {
                pending.insert(db, p);
            }
            Ok(Heard::LogRows(db, n)) => r.log_rows.push((db, n)),
            Ok(Heard::Done(db)) => {
                waiting.remove(&db);
            }
            Err(_) => break,
        }
    }
    for (db, _) in &wanted.dbs {
        r.up.push((db.name.clone(), up.get(&db.name).copied().unwrap_or(false)));
    }
    // A source that answered gives every sync reading it a figure, 0 when
    // nothing waits; one that did not answer gives none (database_up says
    // why).
    for (sync, db) in wanted.pairs {
        if let Some(p) = pending.get(&db) {
            let w = p.get(&sync).cloned().unwrap_or_default();
            r.pending.push((sync, db, w.rows, w.oldest_secs.unwrap_or(0.0)));
        }
    }
    r
}
