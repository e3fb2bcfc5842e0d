//! The synchronous engine behind the daemon, in Bucardo's terms:
//!
//! - one **controller** thread per active sync (CTL) decides when to run:
//!   on a kick, on a committed change (autokick), on checktime, on its cron
//!   schedule, and again after a failure with growing backoff; it never runs
//!   its sync twice at once;
//! - a bounded **worker pool** executes runs (KID), each worker with its
//!   own connections from the per-database r2d2 pools;
//! - one **watcher** per source server notices committed changes by
//!   polling its transaction snapshot, asks only then which change logs
//!   grew, and kicks the syncs of those tables (see `super::watcher`);
//! - the **control** thread holds the daemon's advisory lock on the control
//!   database, answers kick/reload/stop requests and writes the heartbeat;
//! - the **purger** (VAC) deletes change rows every consumer has applied.
//!
//! No PostgreSQL call happens on a tokio thread: tokio only runs the
//! supervisor's signal and timer loop (see `super::run`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::GenericClient;
use postgres_openssl::MakeTlsConnector;

pub use super::controller::Outcome;
use crate::apply::pools::{Cancel, Pools};
use crate::catalog::model::{self, Db};
use crate::domain::{Isolation, Status, Strategy};
use crate::error::Result;
use crate::pg::pool::DbPool;
pub use crate::schedule::timing::Reason;
use crate::sys::lock;

/// Settings the engine reads from `capra.config`.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Keys per DELETE.
    pub chunk: usize,
    /// Source read isolation.
    pub isolation: Isolation,
    /// Retry delay after a serialization failure (-1: ordinary failure).
    pub serial_sleep: f64,
    /// Retry delay after a deadlock (-1: ordinary failure).
    pub deadlock_sleep: f64,
    /// First retry delay after a failure.
    pub restart_sleep: f64,
    /// Longest retry delay.
    pub retry_max: f64,
    /// Purge period.
    pub vac_sleep: f64,
    /// Whether to purge at all.
    pub vac: bool,
    /// Days of run history.
    pub history_days: i64,
    /// Worker threads.
    pub workers: usize,
    /// Seconds between control reconnection attempts.
    pub dbproblem_sleep: f64,
    /// Seconds a run waits for its table locks.
    pub lock_timeout: f64,
    /// Seconds between checks of each watching connection (each check
    /// also kicks that source's autokick syncs, so a missed change waits
    /// at most this long).
    pub pingtime: f64,
    /// `default_conflict_strategy`: for syncs and tables that set none.
    pub default_strategy: Strategy,
    /// `purge_schedule`: a crontab line for the purger (empty: vac_sleep).
    pub purge_schedule: String,
    /// `compare_schedule`: when every active sync is compared (empty: never).
    pub compare_schedule: String,
    /// `ha_lease`: seconds a leader's lease lasts without a renew.
    pub ha_lease: f64,
    /// `metrics_refresh`: seconds between refreshes of the gauges that
    /// need the databases.
    pub metrics_refresh: f64,
    /// The catalog's `metrics_listen` (read at start; kept to tell a
    /// reload that changed it to restart).
    pub metrics_listen: String,
}

impl EngineConfig {
    /// Reads the settings (defaults where a row is missing).
    pub fn load(c: &mut impl GenericClient) -> Result<EngineConfig> {
        model::apply_net_settings(c)?;
        let mut get = |n: &str| model::setting(c, n);
        let f = |s: String, d: f64| s.parse::<f64>().unwrap_or(d);
        Ok(EngineConfig {
            chunk: get("statement_chunk_size")?.parse().unwrap_or(6000).max(1),
            isolation: get("isolation_level")?.parse().unwrap_or(Isolation::RepeatableRead),
            serial_sleep: f(get("kid_serial_sleep")?, 0.5),
            deadlock_sleep: f(get("kid_deadlock_sleep")?, 0.5),
            restart_sleep: f(get("kid_restart_sleep")?, 1.0).max(0.1),
            retry_max: f(get("retry_max_sleep")?, 60.0).max(0.1),
            vac_sleep: f(get("vac_sleep")?, 120.0).max(1.0),
            vac: get("bucardo_vac")? != "0",
            history_days: get("run_history_days")?.parse().unwrap_or(30),
            workers: get("worker_threads")?.parse().unwrap_or(4).clamp(1, 256),
            dbproblem_sleep: f(get("mcp_dbproblem_sleep")?, 15.0).max(0.5),
            lock_timeout: f(get("lock_timeout")?, 10.0).max(0.001),
            pingtime: f(get("mcp_pingtime")?, 60.0).max(1.0),
            default_strategy: Strategy::parse(&get("default_conflict_strategy")?),
            purge_schedule: get("purge_schedule")?,
            compare_schedule: get("compare_schedule")?,
            ha_lease: get("ha_lease")?.parse::<f64>().unwrap_or(10.0).clamp(3.0, 600.0),
            metrics_refresh: get("metrics_refresh")?
                .parse::<f64>()
                .unwrap_or(15.0)
                .clamp(1.0, 3600.0),
            metrics_listen: get("metrics_listen")?.trim().to_string(),
        })
    }
}

/// Messages to a controller.
pub enum CtlMsg {
    /// Run soon (with the kick request id, if from `capra kick`).
    Kick(Reason, Option<i64>),
    /// A run finished.
    Done(Outcome),
    /// Re-read the sync from the catalog.
    Reload,
    /// Stop after any run in progress.
    Stop,
}

/// A run handed to the worker pool.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Messages to the supervisor (the main thread).
#[derive(Debug)]
pub enum Event {
    /// Stop the daemon (reason).
    Stop(String),
    /// The daemon cannot go on.
    Fatal(String),
    /// This daemon took the lease: it leads from now on.
    Lead(super::ha::Took),
    /// This daemon lost its term (why): it stops writing and stands by.
    StepDown(String),
    /// `capra ha handover`: the leader steps down at once.
    Handover,
}

/// A running controller, as the engine holds it.
pub(super) struct CtlHandle {
    pub(super) tx: Sender<CtlMsg>,
    pub(super) join: Option<JoinHandle<()>>,
    pub(super) cancel: Arc<Mutex<Option<Arc<Cancel>>>>,
}

/// A running watcher, as the engine holds it.
pub(super) struct WatcherHandle {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) join: Option<JoinHandle<()>>,
}

/// The engine: shared by every thread of the daemon.
pub struct Engine {
    /// This installation's id.
    pub installation: String,
    /// Control database pool (records runs).
    pub control: DbPool,
    /// Pools for replicated databases.
    pub pools: Pools,
    /// Settings from the catalog.
    pub cfg: RwLock<EngineConfig>,
    /// Our pid and host, recorded with runs.
    pub pid: i32,
    /// Host name.
    pub host: String,
    pub(super) stopping: AtomicBool,
    pub(super) reload_requested: AtomicBool,
    pub(super) controllers: Mutex<HashMap<String, CtlHandle>>,
    /// Per source database, the autokick syncs reading it.
    pub(super) sources: RwLock<HashMap<String, (Db, HashSet<String>)>>,
    /// Per source server, its watcher.
    pub(super) watchers: Mutex<HashMap<String, WatcherHandle>>,
    /// Bumped whenever `sources` changes (watchers rebuild their questions).
    pub(super) routes_gen: AtomicU64,
    pub(super) jobs: Mutex<Option<Sender<Job>>>,
    pub(super) workers: Mutex<Vec<JoinHandle<()>>>,
    pub(super) events: tokio::sync::mpsc::UnboundedSender<Event>,
    pub(super) tls: MakeTlsConnector,
    /// Alert mail (sent by its own thread).
    pub notify: crate::notify::Notifier,
    /// When each part of the engine last went round its loop ("control",
    /// and one per controller): the systemd watchdog is fed only while all
    /// of them make progress.
    pub(super) beats: Mutex<HashMap<String, Instant>>,
    /// A one-line health summary for systemd's STATUS=.
    pub(super) status_line: Mutex<String>,
    /// This daemon's role and lease (runs start only while it may write).
    pub role: Arc<super::ha::Role>,
    /// The term every write of this daemon is fenced with.
    pub term: crate::capture::fence::Term,
    /// The statement that opens each write transaction (the fence check).
    pub fence_sql: String,
    /// The Prometheus figures, when `metrics_listen` serves them.
    pub metrics: Option<super::metrics::Served>,
    /// The databases whose fence names this term already.
    pub(super) raised: Mutex<HashSet<String>>,
    /// Per database, the lock one raise of its fence holds.
    pub(super) raising: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lenient_tls() -> Result<MakeTlsConnector> {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .map_err(|source| super::DaemonError::Tls { source })?;
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut c = MakeTlsConnector::new(b.build());
    c.set_callback(|cfg, _| {
        cfg.set_verify_hostname(false);
        Ok(())
    });
    Ok(c)
}

impl Engine {
    /// Builds the engine and starts its worker pool.
    pub fn new(
        control: DbPool,
        cfg: EngineConfig,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
        notify: crate::notify::Notifier,
        term: crate::capture::fence::Term,
        role: Arc<super::ha::Role>,
        metrics: Option<super::metrics::Served>,
    ) -> Result<Arc<Engine>> {
        let workers = cfg.workers;
        let installation = term.installation.clone();
        let e = Arc::new(Engine {
            installation,
            control,
            pools: Pools::new(workers as u32 + 2),
            cfg: RwLock::new(cfg),
            pid: std::process::id() as i32,
            host: crate::sys::hostname(),
            stopping: AtomicBool::new(false),
            reload_requested: AtomicBool::new(false),
            controllers: Mutex::new(HashMap::new()),
            sources: RwLock::new(HashMap::new()),
            watchers: Mutex::new(HashMap::new()),
            routes_gen: AtomicU64::new(0),
            jobs: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
            events,
            tls: lenient_tls()?,
            notify,
            beats: Mutex::new(HashMap::new()),
            status_line: Mutex::new(String::new()),
            fence_sql: crate::capture::fence::check_sql(&term),
            term,
            role,
            metrics,
            raised: Mutex::new(HashSet::new()),
            raising: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..workers {
            let rx = rx.clone();
            handles.push(crate::sys::spawn(&format!("capra-worker-{i}"), move || loop {
                let job = { lock(&rx).recv() };
                match job {
                    Ok(j) => j(),
                    Err(_) => return,
                }
            })?);
        }
        *lock(&e.jobs) = Some(tx);
        *lock(&e.workers) = handles;
        Ok(e)
    }

    /// Whether the daemon is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Asks for a reload at the next control-loop turn (SIGHUP).
    pub fn request_reload(&self) {
        self.reload_requested.store(true, Ordering::SeqCst);
    }

    pub(super) fn submit(&self, job: Job) -> bool {
        match &*lock(&self.jobs) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    pub(super) fn send_event(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Starts, reloads or stops controllers to match the active syncs.
    pub fn sync_controllers(self: &Arc<Self>) -> Result<Vec<String>> {
        let mut c = self.control.get()?;
        let cfg = EngineConfig::load(&mut *c)?;
        {
            let mut now = self.cfg.write().unwrap_or_else(|e| e.into_inner());
            if super::metrics::listen_changed(&cfg.metrics_listen) {
                tracing::warn!(
                    "metrics_listen is now \"{}\"; restart the daemon for it to take effect",
                    cfg.metrics_listen
                );
            }
            *now = cfg;
        }
        let all = model::syncs(&mut *c)?;
        let active: Vec<String> = all
            .iter()
            .filter(|s| s.status == Status::Active)
            .map(|s| s.name.clone())
            .collect();
        drop(c);
        let mut ctls = lock(&self.controllers);
        let gone: Vec<String> = ctls.keys().filter(|k| !active.contains(k)).cloned().collect();
        for name in gone {
            if let Some(mut h) = ctls.remove(&name) {
                // Stop it without waiting here (a long run must not block
                // kicks, reloads or stop): cancel its run, join elsewhere.
                tracing::info!("Stopping controller for sync \"{name}\" (no longer active)");
                let _ = h.tx.send(CtlMsg::Stop);
                if let Some(c) = lock(&h.cancel).as_ref() {
                    c.cancel(&self.tls);
                }
                // A removed sync's series go once its last run is counted;
                // an inactive one keeps them (it may come back).
                let removed = !all.iter().any(|s| s.name == name);
                let forget = (removed && self.metrics.is_some()).then(|| (self.clone(), name.clone()));
                if let Some(j) = h.join.take() {
                    if let Err(e) = crate::sys::spawn("capra-ctl-join", move || {
                        let _ = j.join();
                        // Unless a sync of that name came back meanwhile.
                        if let Some((engine, name)) = forget {
                            if !lock(&engine.controllers).contains_key(&name) {
                                if let Some(m) = &engine.metrics {
                                    m.figures.forget_sync(&name);
                                }
                            }
                        }
                    }) {
                        tracing::warn!("Not waiting for the old controller: {e}");
                    }
                }
            }
            self.forget_routes(&name);
        }
        // Series of syncs removed while inactive (no controller to wait for).
        if let Some(m) = &self.metrics {
            for name in m.figures.declared() {
                if !all.iter().any(|s| s.name == name) && !ctls.contains_key(&name) {
                    m.figures.forget_sync(&name);
                }
            }
        }
        for name in &active {
            if let Some(h) = ctls.get(name) {
                let _ = h.tx.send(CtlMsg::Reload);
                continue;
            }
            let (tx, rx) = mpsc::channel();
            let cancel = Arc::new(Mutex::new(None));
            let me = self.clone();
            let n = name.clone();
            let (tx2, cancel2) = (tx.clone(), cancel.clone());
            let join = crate::sys::spawn(&format!("capra-ctl-{name}"), move || {
                super::controller::Controller::new(me, n, rx, tx2, cancel2).run()
            })?;
            ctls.insert(
                name.clone(),
                CtlHandle {
                    tx,
                    join: Some(join),
                    cancel,
                },
            );
        }
        Ok(active)
    }

    /// Sends a message to a sync's controller; false if there is none.
    pub fn tell(&self, sync: &str, msg: CtlMsg) -> bool {
        match lock(&self.controllers).get(sync) {
            Some(h) => h.tx.send(msg).is_ok(),
            None => false,
        }
    }

    /// Marks the daemon as stopping (threads wind down; see [`Engine::shutdown`]).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops everything: controllers finish (or, after `grace`, cancel)
    /// their runs; watchers and workers end.
    pub fn shutdown(self: &Arc<Self>, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut ctls: Vec<(String, CtlHandle)> = lock(&self.controllers).drain().collect();
        for (_, h) in &ctls {
            let _ = h.tx.send(CtlMsg::Stop);
        }
        let deadline = Instant::now() + grace;
        let mut cancelled = false;
        for (name, h) in ctls.iter_mut() {
            if let Some(j) = h.join.take() {
                while !j.is_finished() {
                    if !cancelled && Instant::now() >= deadline {
                        tracing::warn!("Cancelling runs still going after {}s", grace.as_secs());
                        cancelled = true;
                    }
                    if cancelled {
                        if let Some(c) = lock(&h.cancel).as_ref() {
                            c.cancel(&self.tls);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = j.join();
                tracing::debug!("controller for {name} stopped");
            }
        }
        for (_, h) in lock(&self.watchers).drain() {
            h.stop.store(true, Ordering::SeqCst);
            if let Some(j) = h.join {
                let _ = j.join();
            }
        }
        lock(&self.jobs).take();
        for w in lock(&self.workers).drain(..) {
            let _ = w.join();
        }
    }
}

impl Engine {
    /// Notes that a part of the engine went round its loop.
    pub(super) fn beat(&self, part: &str) {
        lock(&self.beats).insert(part.to_string(), Instant::now());
    }

    /// Forgets a part that stopped on purpose.
    pub(super) fn forget_beat(&self, part: &str) {
        lock(&self.beats).remove(part);
    }

    /// The parts that have not gone round their loop for `max`: empty when
    /// the engine is healthy.
    pub fn stalled(&self, max: Duration) -> Vec<String> {
        lock(&self.beats)
            .iter()
            .filter(|(_, t)| t.elapsed() > max)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// How many controllers have started their loop.
    pub(super) fn controllers_up(&self) -> usize {
        lock(&self.beats).keys().filter(|k| k.starts_with("ctl:")).count()
    }
}
