//! The synchronous engine behind the daemon, in Bucardo's terms:
//!
//! - one **controller** thread per active sync (CTL) decides when to run:
//!   on a kick, on a committed change (autokick), on checktime, on its cron
//!   schedule, and again after a failure with growing backoff; it never runs
//!   its sync twice at once;
//! - a bounded **worker pool** executes runs (KID), each worker with its
//!   own connections from the per-database r2d2 pools;
//! - one **listener** per source database LISTENs for the kick trigger's
//!   NOTIFY and reconnects on its own when the database comes back;
//! - the **control** thread holds the daemon's advisory lock on the control
//!   database, answers kick/reload/stop requests and writes the heartbeat;
//! - the **purger** (VAC) deletes change rows every consumer has applied.
//!
//! No PostgreSQL call happens on a tokio thread: tokio only runs the
//! supervisor's signal and timer loop (see `super::run`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Local;
use postgres::fallible_iterator::FallibleIterator;
use postgres::GenericClient;
use postgres_openssl::MakeTlsConnector;

use super::logging;
use crate::apply::pools::{Cancel, Pools};
use crate::apply::run::{self as apply, RunCache, RunEnv};
use crate::capture::{install, purge};
use crate::catalog::model::{self, Db};
use crate::catalog::plan::SyncPlan;
use crate::catalog::runs;
use crate::error::{Context, Error, Result};
use crate::pg::pool::DbPool;
use crate::schedule::cron::Schedule;

/// Settings the engine reads from `capra.config`.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Keys per DELETE.
    pub chunk: usize,
    /// Source read isolation.
    pub isolation: String,
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
    /// Seconds between checks of each listening connection (each check
    /// also kicks that source's autokick syncs, so a lost notification
    /// delays a change by at most this long).
    pub pingtime: f64,
}

impl EngineConfig {
    /// Reads the settings (defaults where a row is missing).
    pub fn load(c: &mut impl GenericClient) -> Result<EngineConfig> {
        model::apply_net_settings(c)?;
        let mut get = |n: &str| model::setting(c, n);
        let f = |s: String, d: f64| s.parse::<f64>().unwrap_or(d);
        Ok(EngineConfig {
            chunk: get("statement_chunk_size")?.parse().unwrap_or(6000).max(1),
            isolation: get("isolation_level")?,
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
        })
    }
}

/// Why a run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `capra kick`.
    Kick,
    /// A committed change on a source.
    Autokick,
    /// The first run of a new controller (catch up).
    Startup,
    /// checktime elapsed.
    Checktime,
    /// Cron schedule.
    Schedule,
    /// Retry after a failure.
    Retry,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Kick => "kick",
            Reason::Autokick => "autokick",
            Reason::Startup => "startup",
            Reason::Checktime => "checktime",
            Reason::Schedule => "schedule",
            Reason::Retry => "retry",
        }
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

/// How a run ended, as the controller needs it.
#[derive(Default)]
pub struct Outcome {
    ok: bool,
    serialization: Option<bool>,
    /// The catalog changed under the run, which changed nothing: read the
    /// sync again and rerun at once.
    stale: bool,
    /// The onetimecopy generation the run served.
    served_otc: Option<i64>,
    /// Targets that were behind and have caught up.
    caught_up: Vec<String>,
    /// With `stale`: the captured ids the run found and its plan lacked.
    extra: Vec<i32>,
    /// Kick requests this run could not answer (the control database was
    /// unreachable); the next run answers them.
    unanswered: Vec<i64>,
}

type Job = Box<dyn FnOnce() + Send>;

/// Messages to the supervisor (the main thread).
#[derive(Debug)]
pub enum Event {
    /// Stop the daemon (reason).
    Stop(String),
    /// The daemon cannot go on.
    Fatal(String),
}

struct CtlHandle {
    tx: Sender<CtlMsg>,
    join: Option<JoinHandle<()>>,
    cancel: Arc<Mutex<Option<Arc<Cancel>>>>,
}

struct ListenerHandle {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
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
    stopping: AtomicBool,
    reload_requested: AtomicBool,
    controllers: Mutex<HashMap<String, CtlHandle>>,
    /// Per source database, the autokick syncs reading it.
    sources: RwLock<HashMap<String, (Db, HashSet<String>)>>,
    listeners: Mutex<HashMap<String, ListenerHandle>>,
    jobs: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    tls: MakeTlsConnector,
}

fn lenient_tls() -> MakeTlsConnector {
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client()).expect("openssl");
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut c = MakeTlsConnector::new(b.build());
    c.set_callback(|cfg, _| {
        cfg.set_verify_hostname(false);
        Ok(())
    });
    c
}

impl Engine {
    /// Builds the engine and starts its worker pool.
    pub fn new(
        installation: String,
        control: DbPool,
        cfg: EngineConfig,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> Arc<Engine> {
        let workers = cfg.workers;
        let e = Arc::new(Engine {
            installation,
            control,
            pools: Pools::new(workers as u32 + 2),
            cfg: RwLock::new(cfg),
            pid: std::process::id() as i32,
            host: hostname(),
            stopping: AtomicBool::new(false),
            reload_requested: AtomicBool::new(false),
            controllers: Mutex::new(HashMap::new()),
            sources: RwLock::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            jobs: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
            events,
            tls: lenient_tls(),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..workers {
            let rx = rx.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("capra-worker-{i}"))
                    .spawn(move || loop {
                        let job = { rx.lock().unwrap_or_else(|e| e.into_inner()).recv() };
                        match job {
                            Ok(j) => j(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn worker"),
            );
        }
        *e.jobs.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        *e.workers.lock().unwrap_or_else(|e| e.into_inner()) = handles;
        e
    }

    /// Whether the daemon is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Asks for a reload at the next control-loop turn (SIGHUP).
    pub fn request_reload(&self) {
        self.reload_requested.store(true, Ordering::SeqCst);
    }

    fn submit(&self, job: Job) -> bool {
        match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(job).is_ok(),
            None => false,
        }
    }

    fn send_event(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Starts, reloads or stops controllers to match the active syncs.
    pub fn sync_controllers(self: &Arc<Self>) -> Result<Vec<String>> {
        let mut c = self.control.get()?;
        *self.cfg.write().unwrap_or_else(|e| e.into_inner()) = EngineConfig::load(&mut *c)?;
        let active: Vec<String> = model::syncs(&mut *c)?
            .into_iter()
            .filter(|s| s.status == "active")
            .map(|s| s.name)
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
                if let Some(j) = h.join.take() {
                    std::thread::spawn(move || {
                        let _ = j.join();
                    });
                }
            }
            self.forget_routes(&name);
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
            let join = std::thread::Builder::new()
                .name(format!("capra-ctl-{name}"))
                .spawn(move || Controller::new(me, n, rx, tx2, cancel2).run())
                .map_err(|e| Error::Io {
                    context: "starting a controller thread".into(),
                    source: e,
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

    /// Registers a sync's sources for autokick (and starts their listeners).
    fn set_routes(self: &Arc<Self>, sync: &str, sources: Vec<Db>, autokick: bool) {
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

    fn forget_routes(self: &Arc<Self>, sync: &str) {
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

    /// Marks the daemon as stopping (threads wind down; see [`Engine::shutdown`]).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The control thread: holds the advisory lock, answers requests,
    /// writes the heartbeat. `client` already holds the lock; it is handed
    /// back on stop so the lock outlives every other thread.
    pub fn control_loop(
        self: Arc<Self>,
        mut client: postgres::Client,
        spec: crate::pg::connect::ConnSpec,
    ) -> Option<postgres::Client> {
        let _r = logging::role("MCP", None);
        let mut dispatched: HashSet<i64> = HashSet::new();
        let mut last_beat = Instant::now();
        let mut last_poll = Instant::now() - Duration::from_secs(10);
        let mut reload_at: Option<Instant> = None;
        let mut last_prune = Instant::now();
        loop {
            if self.is_stopping() {
                return Some(client);
            }
            let mut stop_reason: Option<String> = None;
            let mut kick_seen = false;
            let mut lost = false;
            {
                let mut n = client.notifications();
                let first = n.timeout_iter(Duration::from_millis(250)).next();
                let mut handle = |p: &str| {
                    tracing::debug!("control request: {p:?}");
                    match p
                        .split_once(' ')
                        .map(|(a, b)| (a, b.to_string()))
                        .unwrap_or((p, String::new()))
                    {
                        ("kick", _) => kick_seen = true,
                        ("reload", _) => {
                            reload_at.get_or_insert(Instant::now() + Duration::from_millis(200));
                        }
                        ("stop", why) => stop_reason = Some(if why.is_empty() { "capra stop".into() } else { why }),
                        _ => {}
                    }
                };
                match first {
                    Ok(None) => {}
                    Ok(Some(note)) => {
                        handle(note.payload());
                        let mut more = n.iter();
                        while let Ok(Some(m)) = more.next() {
                            handle(m.payload());
                        }
                    }
                    Err(_) => lost = true,
                }
            }
            if lost || client.is_closed() {
                match self.reconnect_control(&spec) {
                    Some(c) => {
                        client = c;
                        continue;
                    }
                    None => return None,
                }
            }
            if let Some(r) = stop_reason {
                self.send_event(Event::Stop(r));
            }
            if self.reload_requested.swap(false, Ordering::SeqCst) {
                reload_at = Some(Instant::now());
            }
            // A kick must see every catalog change committed before it: a
            // pending reload goes first (controllers get Reload before Kick).
            let kick_due = kick_seen || last_poll.elapsed() >= Duration::from_secs(1);
            if reload_at.is_some_and(|t| Instant::now() >= t || kick_due) {
                reload_at = None;
                match self.sync_controllers() {
                    Ok(active) => tracing::info!(
                        "Reloaded: active syncs: {}",
                        if active.is_empty() {
                            "none".into()
                        } else {
                            active.join(",")
                        }
                    ),
                    Err(e) => tracing::error!("Reload failed: {e}"),
                }
                let _ = client.batch_execute(&format!("NOTIFY {}", runs::RELOADED_CHANNEL));
            }
            if kick_due {
                last_poll = Instant::now();
                match runs::pending_kicks(&mut client) {
                    Ok(kicks) => {
                        let pending: HashSet<i64> = kicks.iter().map(|k| k.0).collect();
                        dispatched.retain(|id| pending.contains(id));
                        for (id, sync) in kicks {
                            if dispatched.contains(&id) {
                                continue;
                            }
                            if self.tell(&sync, CtlMsg::Kick(Reason::Kick, Some(id))) {
                                dispatched.insert(id);
                            } else {
                                let msg = format!("sync \"{sync}\" is not active in the running daemon");
                                let _ = runs::finish_kicks(&mut client, &[id], None, false, Some(&msg));
                            }
                        }
                    }
                    Err(e) => tracing::warn!("Reading kick requests failed: {e}"),
                }
            }
            if last_beat.elapsed() >= Duration::from_secs(5) {
                last_beat = Instant::now();
                if let Err(e) = client.execute("UPDATE capra.daemon SET heartbeat = now()", &[]) {
                    tracing::warn!("Cannot write the heartbeat: {}", crate::pg::error::describe(&e));
                }
            }
            if last_prune.elapsed() >= Duration::from_secs(3600) {
                last_prune = Instant::now();
                let days = self.cfg.read().unwrap_or_else(|e| e.into_inner()).history_days;
                match runs::prune(&mut client, days) {
                    Ok(n) if n > 0 => tracing::info!("Pruned {n} runs older than {days} days from the history"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("Pruning run history failed: {e}"),
                }
            }
        }
    }

    /// Reconnects to the control database and takes the lock again.
    fn reconnect_control(&self, spec: &crate::pg::connect::ConnSpec) -> Option<postgres::Client> {
        tracing::warn!("Lost the connection to the control database; reconnecting");
        loop {
            if self.is_stopping() {
                return None;
            }
            let wait = self.cfg.read().unwrap_or_else(|e| e.into_inner()).dbproblem_sleep;
            match super::lock_control(spec) {
                Ok(Some(c)) => {
                    tracing::info!("Reconnected to the control database");
                    return Some(c);
                }
                Ok(None) => {
                    self.send_event(Event::Fatal(
                        "another capra daemon took over this control database while it was unreachable".into(),
                    ));
                    return None;
                }
                Err(e) => {
                    tracing::warn!("Control database still unreachable: {e}");
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
            }
        }
    }

    /// The purger (VAC): every vac_sleep seconds, on every captured source.
    pub fn purge_loop(self: Arc<Self>) {
        let _r = logging::role("VAC", None);
        // The first pass comes 5 s after start; after that vac_sleep is
        // read on every turn, so a reload that shortens it acts at once.
        let mut last = Instant::now() - Duration::from_secs(3600);
        let first = Instant::now() + Duration::from_secs(5);
        while !self.is_stopping() {
            std::thread::sleep(Duration::from_millis(250));
            let (vac, every) = {
                let c = self.cfg.read().unwrap_or_else(|e| e.into_inner());
                (c.vac, c.vac_sleep)
            };
            if !vac || Instant::now() < first || last.elapsed() < Duration::from_secs_f64(every) {
                continue;
            }
            last = Instant::now();
            let (dbs, known) = self.purge_targets();
            for db in dbs {
                let r = self.pools.get(&db).and_then(|mut c| {
                    for o in purge::orphans(&mut *c, &self.installation, &known)? {
                        // The names were read a moment ago: a sync added
                        // since then is not an orphan. Ask the catalog
                        // again, now that its capture exists.
                        if self.sync_exists(&o) != Some(false) {
                            continue;
                        }
                        install::detach_consumer(&mut *c, &self.installation, &o)?;
                        tracing::warn!(
                            "Removed change capture left behind by removed sync \"{o}\" on database \"{}\"",
                            db.name
                        );
                    }
                    purge::purge(&mut *c, None)
                });
                match r {
                    Ok(p) if p.rows > 0 => {
                        tracing::info!("Purged {} replicated change rows from database \"{}\"", p.rows, db.name)
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("Purge on database \"{}\" skipped: {e}", db.name),
                }
            }
        }
    }

    /// Whether the catalog has a sync of this name (None: cannot tell).
    fn sync_exists(&self, name: &str) -> Option<bool> {
        let mut c = self.control.get().ok()?;
        model::sync(&mut *c, name).ok().map(|s| s.is_some())
    }

    /// The sources to purge, and every sync name the catalog knows.
    fn purge_targets(&self) -> (Vec<Db>, Vec<String>) {
        let mut c = match self.control.get() {
            Ok(c) => c,
            Err(_) => return (Vec::new(), Vec::new()),
        };
        let names: Vec<String> = match model::syncs(&mut *c) {
            Ok(s) => s.into_iter().map(|s| s.name).collect(),
            Err(_) => return (Vec::new(), Vec::new()),
        };
        let mut out: Vec<Db> = Vec::new();
        for n in &names {
            if let Ok(p) = SyncPlan::load(&mut *c, n) {
                if p.is_delta() {
                    for s in p.sources {
                        if !out.iter().any(|d| d.name == s.name) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        (out, names)
    }

    /// Stops everything: controllers finish (or, after `grace`, cancel)
    /// their runs; listeners and workers end.
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
        for (_, h) in lock(&self.listeners).drain() {
            h.stop.store(true, Ordering::SeqCst);
            if let Some(j) = h.join {
                let _ = j.join();
            }
        }
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        for w in self.workers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = w.join();
        }
    }
}

/// Locks a mutex, recovering the data if a thread panicked while holding
/// it (capra's shared state stays valid across a contained panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sleep_unless(stop: &AtomicBool, stopping: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) && !stopping.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// One sync's controller (CTL).
struct Controller {
    engine: Arc<Engine>,
    name: String,
    rx: Receiver<CtlMsg>,
    tx: Sender<CtlMsg>,
    cancel_slot: Arc<Mutex<Option<Arc<Cancel>>>>,
    plan: Option<SyncPlan>,
    capture_ready: bool,
    cache: Arc<Mutex<RunCache>>,
    pending: Option<Reason>,
    kicks: Vec<i64>,
    running: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_run: Instant,
    next_cron: Option<(chrono::DateTime<Local>, Instant)>,
    checktime: Option<Duration>,
    stopping: bool,
    key_change_waits: bool,
    /// Runs in a row that found the catalog newer than the plan.
    stale_runs: u32,
    /// Captured ids a run found for this sync that its plan lacked; the
    /// next prepare drops those the catalog does not have either.
    prune: Vec<i32>,
}

impl Controller {
    fn new(
        engine: Arc<Engine>,
        name: String,
        rx: Receiver<CtlMsg>,
        tx: Sender<CtlMsg>,
        cancel_slot: Arc<Mutex<Option<Arc<Cancel>>>>,
    ) -> Controller {
        Controller {
            engine,
            name,
            rx,
            tx,
            cancel_slot,
            plan: None,
            capture_ready: false,
            cache: Arc::new(Mutex::new(RunCache::default())),
            pending: None,
            kicks: Vec::new(),
            running: false,
            failures: 0,
            retry_at: None,
            last_run: Instant::now(),
            next_cron: None,
            checktime: None,
            stopping: false,
            key_change_waits: false,
            stale_runs: 0,
            prune: Vec::new(),
        }
    }

    /// Loads the plan and makes sure capture is in place on every source.
    fn prepare(&mut self) -> Result<()> {
        let mut c = self.engine.control.get()?;
        let plan = SyncPlan::load(&mut *c, &self.name)?;
        let checktime: Option<f64> = c
            .query_one(
                "SELECT extract(epoch FROM checktime)::float8 FROM capra.sync WHERE name = $1",
                &[&self.name],
            )
            .ctx(|| "reading checktime".into())?
            .get(0);
        drop(c);
        self.checktime = checktime.filter(|s| *s > 0.0).map(Duration::from_secs_f64);
        self.next_cron = None;
        if let Some(s) = &plan.sync.schedule {
            match Schedule::parse(s) {
                Ok(sch) => {
                    if let Some(t) = sch.next_after(&Local::now()) {
                        let wait = (t - Local::now()).to_std().unwrap_or_default();
                        self.next_cron = Some((t, Instant::now() + wait));
                    }
                }
                Err(e) => tracing::warn!("Ignoring the schedule: {e}"),
            }
        }
        let mut key_change_waits = false;
        if plan.is_delta() {
            let mut routes: Vec<Db> = Vec::new();
            for src in &plan.sources {
                let mut conn = self.engine.pools.get(src)?;
                let mut tx = conn
                    .transaction()
                    .ctx(|| format!("checking change capture on \"{}\"", src.name))?;
                let had: bool = tx
                    .query_one("SELECT to_regclass('capra.consumer') IS NOT NULL", &[])
                    .ctx(|| "checking capture".into())?
                    .get(0);
                let had = had
                    && tx
                        .query_opt(
                            "SELECT 1 FROM capra.consumer WHERE installation = $1 AND sync = $2",
                            &[&self.engine.installation, &self.name],
                        )
                        .ctx(|| "checking capture".into())?
                        .is_some();
                let attached = install::attach_consumer(
                    &mut tx,
                    &self.engine.installation,
                    &self.name,
                    &install::targets(&plan),
                    install::OnKeyChange::Defer,
                )?;
                let leftover: Vec<i32> = self
                    .prune
                    .iter()
                    .filter(|id| !attached.ids.contains(id))
                    .copied()
                    .collect();
                if !leftover.is_empty() {
                    install::drop_from_consumer(&mut tx, &self.engine.installation, &self.name, &leftover)?;
                    tracing::warn!(
                        "Dropped change capture of {} table(s) on database \"{}\" that sync \"{}\" no longer replicates (left by an interrupted catalog edit)",
                        leftover.len(),
                        src.name,
                        self.name
                    );
                }
                if !attached.deferred.is_empty() {
                    tracing::warn!(
                        "The key of {} changed on database \"{}\"; capra keeps using the old key until the changes already logged are applied, then switches",
                        attached.deferred.join(", "),
                        src.name
                    );
                    key_change_waits = true;
                }
                tx.commit()
                    .ctx(|| format!("installing change capture on \"{}\"", src.name))?;
                if !had {
                    tracing::warn!(
                        "Change capture for this sync was missing on database \"{}\" and has been installed now; changes made there before this moment were not captured (set onetimecopy=1 to resynchronise)",
                        src.name
                    );
                }
                routes.push(src.clone());
            }
            self.engine.set_routes(&self.name, routes, plan.sync.autokick);
        } else {
            self.engine.forget_routes(&self.name);
        }
        lock(&self.cache).forget_shapes();
        self.prune.clear();
        self.plan = Some(plan);
        self.capture_ready = true;
        self.key_change_waits = key_change_waits;
        Ok(())
    }

    fn backoff(&self, serialization: Option<bool>) -> f64 {
        let cfg = self.engine.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
        match serialization {
            Some(true) if cfg.serial_sleep >= 0.0 => cfg.serial_sleep,
            Some(false) if cfg.deadlock_sleep >= 0.0 => cfg.deadlock_sleep,
            _ => (cfg.restart_sleep * 2f64.powi(self.failures.min(16) as i32)).min(cfg.retry_max),
        }
    }

    fn run(mut self) {
        let _r = logging::role("CTL", Some(&self.name));
        match self.prepare() {
            Ok(()) => {
                let p = self.plan.as_ref().expect("prepared");
                tracing::info!(
                    "New controller for sync \"{}\". Relgroup is \"{}\", dbs is \"{}\"",
                    self.name,
                    p.sync.relgroup,
                    p.sync.dbgroup
                );
                // An autokick sync catches up at start with what changed
                // while no daemon ran; others run only when kicked, on
                // checktime or on their schedule.
                if p.is_delta() && p.sync.autokick {
                    self.pending = Some(Reason::Startup);
                }
            }
            Err(e) => {
                tracing::error!("Cannot prepare sync: {e}; retrying");
                self.failures = 1;
                self.retry_at = Some(Instant::now() + Duration::from_secs_f64(self.backoff(None)));
                self.pending = Some(Reason::Startup);
            }
        }
        loop {
            let now = Instant::now();
            let mut deadline = now + Duration::from_secs(1);
            if let Some((_, t)) = self.next_cron {
                deadline = deadline.min(t);
            }
            // While a run is going, only messages (its Done among them) matter.
            if !self.running {
                if let Some(t) = self.retry_at {
                    deadline = deadline.min(t);
                }
                if let Some(ct) = self.checktime {
                    deadline = deadline.min(self.last_run + ct);
                }
            }
            let wait = deadline.saturating_duration_since(now).max(Duration::from_millis(5));
            match self.rx.recv_timeout(wait) {
                Ok(CtlMsg::Kick(reason, id)) => {
                    if let Some(id) = id {
                        if !self.kicks.contains(&id) {
                            self.kicks.push(id);
                        }
                    }
                    if reason == Reason::Kick {
                        // An explicit kick runs now, even during backoff.
                        self.retry_at = None;
                    }
                    if self.pending.is_none() || reason == Reason::Kick {
                        self.pending = Some(reason);
                    }
                }
                Ok(CtlMsg::Done(o)) => self.finished(o),
                Ok(CtlMsg::Reload) => {
                    // A catalog edit never starts a run by itself: a
                    // onetimecopy waits for the next kick, change, checktime
                    // or schedule ("the next time the sync runs").
                    if let Err(e) = self.prepare() {
                        tracing::error!("Reload of sync failed: {e}");
                        self.capture_ready = false;
                    }
                }
                Ok(CtlMsg::Stop) => self.stopping = true,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            if self.stopping && !self.running {
                self.answer_kicks_on_stop();
                return;
            }
            let now = Instant::now();
            if let Some((_, t)) = self.next_cron {
                if now >= t {
                    self.pending.get_or_insert(Reason::Schedule);
                    let sch = self
                        .plan
                        .as_ref()
                        .and_then(|p| p.sync.schedule.clone())
                        .and_then(|s| Schedule::parse(&s).ok());
                    self.next_cron = sch.and_then(|s| {
                        let at = s.next_after(&Local::now())?;
                        Some((at, Instant::now() + (at - Local::now()).to_std().unwrap_or_default()))
                    });
                }
            }
            if let Some(ct) = self.checktime {
                if !self.running && now >= self.last_run + ct {
                    self.pending.get_or_insert(Reason::Checktime);
                }
            }
            if self.pending.is_some() && !self.running && !self.stopping && self.retry_at.is_none_or(|t| now >= t) {
                self.start_run();
            }
        }
    }

    fn answer_kicks_on_stop(&mut self) {
        if self.kicks.is_empty() {
            return;
        }
        if let Ok(mut c) = self.engine.control.get() {
            let _ = runs::finish_kicks(
                &mut *c,
                &self.kicks,
                None,
                false,
                Some("the daemon stopped before running this kick"),
            );
        }
        self.kicks.clear();
    }

    fn start_run(&mut self) {
        let reason = self.pending.take().unwrap_or(Reason::Kick);
        if !self.capture_ready || self.plan.is_none() {
            if let Err(e) = self.prepare() {
                tracing::error!("Cannot prepare sync: {e}");
                let wait = self.backoff(None);
                self.failures += 1;
                self.retry_at = Some(Instant::now() + Duration::from_secs_f64(wait));
                self.pending = Some(Reason::Retry);
                // Recorded like a failed run, so status and kick show why.
                let text = crate::pg::error::flatten(&e.to_string());
                if let Ok(mut c) = self.engine.control.get() {
                    let recorded =
                        runs::start_run(&mut *c, &self.name, reason.as_str(), self.engine.pid, &self.engine.host)
                            .and_then(|id| {
                                runs::fail_run(&mut *c, &self.name, id, &text, e.sqlstate().as_deref(), wait)
                            });
                    if let Err(r) = recorded {
                        tracing::error!("Cannot record the failure: {r}");
                    }
                }
                self.fail_kicks(&text);
                return;
            }
        }
        let plan = self.plan.clone().expect("prepared");
        self.retry_at = None;
        let kicks = std::mem::take(&mut self.kicks);
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let reply = self.tx.clone();
        let cancel = Arc::new(Cancel::default());
        *lock(&self.cancel_slot) = Some(cancel.clone());
        let retry_in = self.backoff(None);
        let name = self.name.clone();
        self.running = true;
        let job: Job = Box::new(move || {
            let _r = logging::role("KID", Some(&name));
            // A panic must not leave the controller waiting forever.
            let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                execute(&engine, &plan, &cache, &cancel, reason, &kicks, retry_in)
            }))
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!("Run aborted by an internal error (a bug, please report it): {what}");
                Outcome {
                    unanswered: kicks.clone(),
                    ..Default::default()
                }
            });
            let _ = reply.send(CtlMsg::Done(o));
        });
        if !self.engine.submit(job) {
            self.running = false;
        }
    }

    fn fail_kicks(&mut self, error: &str) {
        if self.kicks.is_empty() {
            return;
        }
        if let Ok(mut c) = self.engine.control.get() {
            if let Err(e) = runs::finish_kicks(&mut *c, &self.kicks, None, false, Some(error)) {
                tracing::warn!("Cannot answer the waiting kicks: {e}");
            }
        }
        self.kicks.clear();
    }

    fn finished(&mut self, o: Outcome) {
        self.running = false;
        *lock(&self.cancel_slot) = None;
        self.last_run = Instant::now();
        for k in o.unanswered {
            if !self.kicks.contains(&k) {
                self.kicks.push(k);
            }
        }
        if o.stale {
            // Nothing was applied; the catalog is newer than the plan, or
            // the source keeps a table the catalog no longer has for this
            // sync (a removal whose source commit failed): the next prepare
            // reads the catalog again, after the run saw the table, and
            // drops what the catalog does not have.
            self.stale_runs += 1;
            self.prune = o.extra;
            if self.stale_runs <= 3 {
                self.capture_ready = false;
                self.pending = Some(Reason::Retry);
                return;
            }
        }
        self.stale_runs = 0;
        if o.ok {
            if self.failures > 0 {
                tracing::info!("Sync is working again after {} failed run(s)", self.failures);
            }
            self.failures = 0;
            self.retry_at = None;
            if let Some(p) = self.plan.as_mut() {
                if o.served_otc == Some(p.sync.onetimecopy_gen) {
                    p.sync.onetimecopy = 0;
                }
                p.behind.retain(|b| !o.caught_up.contains(b));
            }
            if self.key_change_waits {
                // The old log may be drained now: try switching keys.
                if let Err(e) = self.prepare() {
                    tracing::warn!("Re-checking change capture failed: {e}");
                }
            }
            if !self.kicks.is_empty() {
                self.pending.get_or_insert(Reason::Kick);
            }
        } else {
            let wait = self.backoff(o.serialization);
            self.failures += 1;
            self.retry_at = Some(Instant::now() + Duration::from_secs_f64(wait));
            self.pending.get_or_insert(Reason::Retry);
            lock(&self.cache).forget_shapes();
            // Read the sync and check capture again before the retry: a
            // sync whose capture went missing repairs itself.
            self.capture_ready = false;
            tracing::info!("Retrying in {wait:.1}s");
        }
    }
}

/// Executes one run and records it; never panics the worker.
fn execute(
    engine: &Arc<Engine>,
    plan: &SyncPlan,
    cache: &Arc<Mutex<RunCache>>,
    cancel: &Arc<Cancel>,
    reason: Reason,
    kicks: &[i64],
    retry_in: f64,
) -> Outcome {
    let name = plan.name();
    let mut control = match engine.control.get() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("Cannot record the run, control database unreachable: {e}");
            return Outcome {
                unanswered: kicks.to_vec(),
                ..Default::default()
            };
        }
    };
    let run_id = match runs::start_run(&mut *control, name, reason.as_str(), engine.pid, &engine.host) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!("Cannot record the run: {e}");
            return Outcome {
                unanswered: kicks.to_vec(),
                ..Default::default()
            };
        }
    };
    let cfg = engine.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
    let env = RunEnv {
        pools: &engine.pools,
        installation: &engine.installation,
        chunk: cfg.chunk,
        // The sync's own isolation_level wins over the setting.
        isolation: plan.sync.isolation_level.as_deref().unwrap_or(&cfg.isolation),
        lock_timeout_ms: (cfg.lock_timeout * 1000.0).ceil() as u64,
        cancel,
    };
    // Inactive targets fall behind from this run on: note them first, so a
    // crash after the position moved cannot forget them.
    let noted = if plan.is_delta() && !plan.skipped_targets.is_empty() {
        control
            .execute(
                "INSERT INTO capra.target_behind (sync, db) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                &[&name, &plan.skipped_targets],
            )
            .map(|_| ())
            .ctx(|| format!("noting the inactive targets of sync \"{name}\""))
    } else {
        Ok(())
    };
    let result = noted.and_then(|()| {
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        apply::run(&env, plan, &mut c)
    });
    cancel.clear();
    match result {
        Ok(rep) => {
            let totals = runs::Totals {
                inserts: rep.inserts as i64,
                deletes: rep.deletes as i64,
                truncates: rep.truncates as i64,
                conflicts: rep.conflicts as i64,
                tables: rep.tables.len() as i32,
            };
            if !rep.empty {
                tracing::info!(
                    "Totals: deletes={} inserts={} conflicts={}",
                    rep.deletes,
                    rep.inserts,
                    rep.conflicts
                );
                tracing::info!(
                    "Total time for sync \"{name}\" ({} rows, {} tables): {:.3}s",
                    rep.inserts + rep.deletes,
                    rep.tables.len(),
                    rep.seconds
                );
            }
            let details = serde_json::to_value(&rep).unwrap_or(serde_json::Value::Null);
            if let Err(e) = runs::finish_run(&mut *control, name, run_id, &totals, &details, rep.empty) {
                tracing::error!("Cannot record the run: {e}");
            }
            if let Some(g) = rep.onetimecopy_gen {
                // Only the request this run served: one made during the run
                // (a newer generation) stays for the next run.
                match control.execute(
                    "UPDATE capra.sync SET onetimecopy = 0 WHERE name = $1 AND onetimecopy_gen = $2",
                    &[&name, &g],
                ) {
                    Ok(1) => tracing::info!("Onetimecopy finished; onetimecopy is 0 again"),
                    Ok(_) => tracing::info!("Onetimecopy finished; another one was requested meanwhile and follows"),
                    Err(e) => tracing::error!(
                        "Onetimecopy finished, but resetting onetimecopy to 0 failed ({}); the next run copies again",
                        crate::pg::error::describe(&e)
                    ),
                }
            }
            if !rep.caught_up.is_empty() {
                match control.execute(
                    "DELETE FROM capra.target_behind WHERE sync = $1 AND db = ANY($2)",
                    &[&name, &rep.caught_up],
                ) {
                    Ok(_) => tracing::info!(
                        "Target(s) {} caught up with a full copy after being inactive",
                        rep.caught_up.join(", ")
                    ),
                    Err(e) => tracing::error!(
                        "Target(s) {} caught up, but recording it failed ({}); the next run copies them again",
                        rep.caught_up.join(", "),
                        crate::pg::error::describe(&e)
                    ),
                }
            }
            let run_ref = if rep.empty { None } else { Some(run_id) };
            let unanswered = match runs::finish_kicks(&mut *control, kicks, run_ref, true, None) {
                Ok(()) => Vec::new(),
                Err(_) => kicks.to_vec(),
            };
            Outcome {
                ok: true,
                served_otc: rep.onetimecopy_gen,
                caught_up: rep.caught_up,
                unanswered,
                ..Default::default()
            }
        }
        Err(Error::Stale { message, extra }) => {
            tracing::info!("{message}");
            if let Err(e) = runs::forget_run(&mut *control, run_id) {
                tracing::warn!("Cannot drop the record of a run that changed nothing: {e}");
            }
            Outcome {
                stale: true,
                extra,
                unanswered: kicks.to_vec(),
                ..Default::default()
            }
        }
        Err(e) => {
            let text = crate::pg::error::flatten(&e.to_string());
            // Serialization failures, deadlocks and lock timeouts (DDL
            // held a table) are retried after their short sleep.
            let serialization = if e.is_serialization() {
                Some(e.sqlstate().as_deref() == Some("40001"))
            } else if e.sqlstate().as_deref() == Some("55P03") {
                Some(false)
            } else {
                None
            };
            tracing::error!("Run failed: {text}");
            if let Err(r) = runs::fail_run(&mut *control, name, run_id, &text, e.sqlstate().as_deref(), retry_in) {
                // The daemon's next start closes the run as failed.
                tracing::error!("Cannot record the failed run: {r}");
            }
            let unanswered = match runs::finish_kicks(&mut *control, kicks, Some(run_id), false, Some(&text)) {
                Ok(()) => Vec::new(),
                Err(_) => kicks.to_vec(),
            };
            Outcome {
                serialization,
                unanswered,
                ..Default::default()
            }
        }
    }
}
