//! One sync's controller (Bucardo's CTL): a thread that prepares the sync
//! (its plan, capture on the sources), decides when it runs (the rules live
//! in [`crate::schedule::timing`]), hands each run to the worker pool and
//! records how it ended.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Local;

use super::engine::{CtlMsg, Engine, Job, Reason};
use crate::sys::lock;
use postgres::error::SqlState;

use crate::apply::pools::Cancel;
use crate::apply::run::{self as apply, RunCache, RunEnv};
use crate::capture::install;
use crate::catalog::model::Db;
use crate::catalog::plan::SyncPlan;
use crate::catalog::runs;
use crate::domain::conflict::{Record, Winner};
use crate::domain::{OneTimeCopy, Role};
use crate::error::{Context, Error, Kind, Result};
use crate::logging;
use crate::metrics::RunResult;
use crate::pg::RowExt;
use crate::schedule::cron::Schedule;
use crate::schedule::timing::{Backoff, Timing};

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
    /// Tables whose capture lost its key and must be rebuilt.
    recapture: bool,
    /// Rows were left for a run soon after (held by the application).
    again: bool,
    /// With `stale`: the captured ids the run found and its plan lacked.
    extra: Vec<i32>,
    /// Kick requests this run could not answer (the control database was
    /// unreachable); the next run answers them.
    unanswered: Vec<i64>,
    /// Tables the run set aside (failed alone; the others were applied).
    failed_tables: Vec<String>,
}

/// One sync's controller (CTL).
pub(super) struct Controller {
    engine: Arc<Engine>,
    name: String,
    rx: Receiver<CtlMsg>,
    tx: Sender<CtlMsg>,
    cancel_slot: Arc<Mutex<Option<Arc<Cancel>>>>,
    plan: Option<SyncPlan>,
    capture_ready: bool,
    cache: Arc<Mutex<RunCache>>,
    timing: Timing,
    kicks: Vec<i64>,
    stopping: bool,
    key_change_waits: bool,
    /// Runs in a row that found the catalog newer than the plan.
    stale_runs: u32,
    /// Runs in a row that left rows the application held (the follow-up
    /// waits longer each time, so a long application transaction does not
    /// make the sync spin).
    again_runs: u32,
    /// Captured ids a run found for this sync that its plan lacked; the
    /// next prepare drops those the catalog does not have either.
    prune: Vec<i32>,
    /// Tables the last good run set aside, and how many runs in a row set
    /// some aside (the follow-up waits longer each time).
    failing_tables: Vec<String>,
    table_fail_runs: u32,
}

impl Controller {
    pub(super) fn new(
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
            timing: Timing::new(Instant::now()),
            kicks: Vec::new(),
            stopping: false,
            key_change_waits: false,
            stale_runs: 0,
            again_runs: 0,
            prune: Vec::new(),
            failing_tables: Vec::new(),
            table_fail_runs: 0,
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
            .col(0, "reading checktime")?;
        drop(c);
        let schedule = match plan.sync.schedule.as_deref().map(Schedule::parse) {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                tracing::warn!("Ignoring the schedule: {e}");
                None
            }
            None => None,
        };
        if let Some(s) = &schedule {
            self.catch_up_schedule(s)?;
        }
        self.timing.configure(
            schedule,
            checktime.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
            Instant::now(),
            Local::now(),
        );
        let mut key_change_waits = false;
        if plan.is_delta() {
            let mut routes: Vec<Db> = Vec::new();
            for src in &plan.sources {
                key_change_waits |= self.attach_source(&plan, src)?;
                routes.push(src.clone());
            }
            // Listen where any table kicks (a table's autokick overrides
            // the sync's).
            let kicks = install::targets(&plan).iter().any(|t| t.autokick);
            self.engine.set_routes(&self.name, routes, kicks);
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

    /// A slot of this schedule missed while no daemon ran runs once now;
    /// a schedule seen for the first time (or just changed) starts from now.
    fn catch_up_schedule(&mut self, s: &Schedule) -> Result<()> {
        let mut c = self.engine.control.get()?;
        // Only a slot of this same schedule counts.
        let row = c
            .query_opt(
                "SELECT extract(epoch FROM last_schedule)::float8 FROM capra.sync_state
                  WHERE sync = $1 AND last_schedule_spec IS NOT DISTINCT FROM $2",
                &[&self.name, &s.as_str()],
            )
            .ctx(|| "reading the last scheduled run".into())?;
        let last: Option<chrono::DateTime<Local>> = match row {
            Some(r) => r.col::<_, Option<f64>>(0, "reading the last scheduled run")?,
            None => None,
        }
        .and_then(|t| chrono::DateTime::from_timestamp_micros((t * 1e6) as i64))
        .map(|t| t.with_timezone(&Local));
        match last {
            Some(t) => {
                if let Some(slot) = s.next_after(&t).filter(|slot| *slot < Local::now()) {
                    tracing::info!(
                        "The schedule's slot at {} was missed while no daemon ran; running once now",
                        slot.format("%Y-%m-%d %H:%M:%S")
                    );
                    self.timing.request(Reason::Schedule);
                }
            }
            None => {
                c.execute(
                    "INSERT INTO capra.sync_state (sync, last_schedule, last_schedule_spec) VALUES ($1, to_timestamp($2), $3)
                     ON CONFLICT (sync) DO UPDATE SET last_schedule = EXCLUDED.last_schedule, last_schedule_spec = EXCLUDED.last_schedule_spec",
                    &[&self.name, &(Local::now().timestamp_micros() as f64 / 1e6), &s.as_str()],
                )
                .ctx(|| "recording the schedule's start".into())?;
            }
        }
        Ok(())
    }

    /// Attaches this sync to capture on one source (installing what is
    /// missing, dropping what an interrupted edit left); true when a key
    /// change waits for the old log to drain.
    fn attach_source(&mut self, plan: &SyncPlan, src: &Db) -> Result<bool> {
        self.engine.fence(src)?;
        let mut conn = self.engine.pools.get(src)?;
        let mut tx = conn
            .transaction()
            .ctx(|| format!("checking change capture on \"{}\"", src.name))?;
        tx.batch_execute(&self.engine.fence_sql)
            .ctx(|| format!("checking capra's fence on \"{}\"", src.name))?;
        let had: bool = tx
            .query_one("SELECT to_regclass('capra.consumer') IS NOT NULL", &[])
            .ctx(|| "checking capture".into())?
            .col(0, "checking capture")?;
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
            &install::targets(plan),
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
        let key_change_waits = !attached.deferred.is_empty();
        if key_change_waits {
            tracing::warn!(
                "The key of {} changed on database \"{}\"; capra keeps using the old key until the changes already logged are applied, then switches",
                attached.deferred.join(", "),
                src.name
            );
        }
        tx.commit()
            .ctx(|| format!("installing change capture on \"{}\"", src.name))?;
        if !had {
            tracing::warn!(
                "Change capture for this sync was missing on database \"{}\" and has been installed now; changes made there before this moment were not captured (set onetimecopy=1 to resynchronise)",
                src.name
            );
        }
        Ok(key_change_waits)
    }

    /// Records that the schedule's slot came (the daemon's clock, and the
    /// schedule it belongs to).
    fn note_schedule(&self) {
        let spec = self.plan.as_ref().and_then(|p| p.sync.schedule.clone());
        let r = self.engine.control.get().map_err(|e| e.to_string()).and_then(|mut c| {
            c.execute(
                "INSERT INTO capra.sync_state (sync, last_schedule, last_schedule_spec) VALUES ($1, to_timestamp($2), $3)
                 ON CONFLICT (sync) DO UPDATE SET last_schedule = EXCLUDED.last_schedule, last_schedule_spec = EXCLUDED.last_schedule_spec",
                &[&self.name, &(Local::now().timestamp_micros() as f64 / 1e6), &spec],
            )
            .map_err(|e| crate::pg::error::describe(&e))
        });
        if let Err(e) = r {
            tracing::warn!("Cannot record the schedule's slot: {e}");
        }
    }

    /// Seconds before the retry of a failed run (from the settings).
    fn backoff(&self, serialization: Option<bool>) -> f64 {
        self.backoff_after(self.timing.failures(), serialization)
    }

    /// The wait after `failures` failures in a row (see [`Backoff`]).
    fn backoff_after(&self, failures: u32, serialization: Option<bool>) -> f64 {
        let cfg = self.engine.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
        Backoff {
            serial_sleep: cfg.serial_sleep,
            deadlock_sleep: cfg.deadlock_sleep,
            restart_sleep: cfg.restart_sleep,
            retry_max: cfg.retry_max,
        }
        .delay(failures, serialization)
    }

    pub(super) fn run(mut self) {
        let _r = logging::role("CTL", Some(&self.name));
        if let Some(m) = &self.engine.metrics {
            m.figures.declare_sync(&self.name);
        }
        match self.prepare() {
            Ok(()) => {
                if let Some(p) = self.plan.as_ref() {
                    tracing::info!(
                        "New controller for sync \"{}\". Relgroup is \"{}\", dbs is \"{}\"",
                        self.name,
                        p.sync.relgroup,
                        p.sync.dbgroup
                    );
                    // An autokick sync catches up at start with what
                    // changed while no daemon ran; others run only when
                    // kicked, on checktime or on their schedule.
                    if p.is_delta() && p.sync.autokick {
                        self.timing.request(Reason::Startup);
                    }
                }
            }
            Err(e) => {
                tracing::error!("Cannot prepare sync: {e}; retrying");
                self.timing.request(Reason::Startup);
                let wait = self.backoff(None);
                self.timing.failed(Instant::now(), wait);
            }
        }
        let beat = format!("ctl:{}", self.name);
        loop {
            self.engine.beat(&beat);
            let now = Instant::now();
            let wait = self
                .timing
                .wake_at(now)
                .saturating_duration_since(now)
                .max(Duration::from_millis(5));
            match self.rx.recv_timeout(wait) {
                Ok(CtlMsg::Kick(reason, id)) => {
                    if let Some(id) = id {
                        if !self.kicks.contains(&id) {
                            self.kicks.push(id);
                        }
                    }
                    self.timing.request(reason);
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
            if self.stopping && !self.timing.running() {
                self.answer_kicks_on_stop();
                self.engine.forget_beat(&beat);
                return;
            }
            let now = Instant::now();
            if self.timing.tick(now, Local::now()) {
                // A slot came: recorded whatever run serves it, so a restart
                // does not take it for a missed one.
                self.note_schedule();
            }
            if !self.stopping && self.timing.due(now) {
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
        let reason = self.timing.begin();
        if !self.engine.may_write() {
            // The term is ending: the next leader runs every sync.
            self.timing.not_started();
            return;
        }
        if !self.capture_ready || self.plan.is_none() {
            let began = Instant::now();
            if let Err(e) = self.prepare() {
                tracing::error!("Cannot prepare sync: {e}");
                let wait = self.backoff(None);
                self.timing.failed(Instant::now(), wait);
                // Recorded like a failed run, so status and kick show why.
                let text = crate::pg::error::flatten(&e.to_string());
                if let Ok(mut c) = self.engine.control.get() {
                    let recorded = runs::start_run(&mut *c, &self.name, reason.as_str(), self.engine.runner())
                        .and_then(|id| runs::fail_run(&mut *c, &self.name, id, &text, e.kind(), e.sqlstate(), wait));
                    if let Err(r) = recorded {
                        tracing::error!("Cannot record the failure: {r}");
                    }
                }
                if let Some(m) = &self.engine.metrics {
                    m.figures
                        .record_run(&self.name, crate::metrics::Run::bad(began.elapsed().as_secs_f64()));
                }
                self.engine.notify.send(crate::notify::Alert::Failed {
                    sync: self.name.clone(),
                    error: text.clone(),
                    kind: e.kind(),
                    last_good: None,
                });
                self.fail_kicks(&text);
                return;
            }
        }
        let Some(plan) = self.plan.clone() else {
            // prepare() leaves a plan whenever it succeeds.
            tracing::error!("No plan to run (a bug, please report it)");
            self.timing.not_started();
            return;
        };
        let kicks = std::mem::take(&mut self.kicks);
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let reply = self.tx.clone();
        let cancel = Arc::new(Cancel::default());
        *lock(&self.cancel_slot) = Some(cancel.clone());
        let retry_in = self.backoff(None);
        let name = self.name.clone();
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
            self.timing.not_started();
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
        *lock(&self.cancel_slot) = None;
        let now = Instant::now();
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
                self.timing.rerun(now);
                return;
            }
        }
        self.stale_runs = 0;
        if o.ok {
            let ended = self.timing.succeeded(now);
            if ended > 0 {
                tracing::info!("Sync is working again after {ended} failed run(s)");
                self.engine.notify.send(crate::notify::Alert::Recovered {
                    sync: self.name.clone(),
                    failures: ended,
                });
            }
            if let Some(p) = self.plan.as_mut() {
                if o.served_otc == Some(p.sync.onetimecopy_gen) {
                    p.sync.onetimecopy = OneTimeCopy::Off;
                }
                p.behind.retain(|b| !o.caught_up.contains(b));
            }
            if o.recapture {
                // Rebuild capture on the key the catalog names (or say
                // which key to declare) before the next run.
                self.capture_ready = false;
            }
            if self.key_change_waits {
                // The old log may be drained now: try switching keys.
                if let Err(e) = self.prepare() {
                    tracing::warn!("Re-checking change capture failed: {e}");
                }
            }
            self.tables_recovered(&o.failed_tables);
            if !o.failed_tables.is_empty() {
                self.table_fail_runs += 1;
            } else {
                self.table_fail_runs = 0;
            }
            if !self.kicks.is_empty() {
                self.timing.request(Reason::Kick);
            } else if !o.failed_tables.is_empty() {
                // A table set aside is tried again like a failed run, but
                // at most AGAIN_MAX later: the healthy tables' changes
                // wait for that retry too.
                let wait = self
                    .backoff_after(self.table_fail_runs, None)
                    .min(AGAIN_MAX.as_secs_f64());
                tracing::info!("Trying the table(s) set aside again in {wait:.1}s");
                self.timing.follow_up(now, Duration::from_secs_f64(wait));
            } else if o.again {
                // Rows the application held were left for the next run:
                // 0.1 s, then twice as long each time, at most 5 s.
                let wait = AGAIN_AFTER.saturating_mul(1 << self.again_runs.min(6)).min(AGAIN_MAX);
                self.again_runs += 1;
                self.timing.follow_up(now, wait);
            }
            if !o.again {
                self.again_runs = 0;
            }
        } else {
            let wait = self.backoff(o.serialization);
            self.timing.failed(now, wait);
            lock(&self.cache).forget_shapes();
            // Read the sync and check capture again before the retry: a
            // sync whose capture went missing repairs itself.
            self.capture_ready = false;
            tracing::info!("Retrying in {wait:.1}s");
        }
    }
}

impl Controller {
    /// Mails the recovery of the tables set aside before that the last
    /// good run applied, and remembers which are set aside now.
    fn tables_recovered(&mut self, now_failing: &[String]) {
        for t in self.failing_tables.iter().filter(|t| !now_failing.contains(t)) {
            tracing::info!("{t} is applied again");
            self.engine.notify.send(crate::notify::Alert::TableRecovered {
                sync: self.name.clone(),
                table: t.clone(),
            });
        }
        self.failing_tables = now_failing.to_vec();
    }
}

/// How soon a run follows one that left rows the application held.
const AGAIN_AFTER: Duration = Duration::from_millis(100);
/// The longest it waits when the application keeps holding them.
const AGAIN_MAX: Duration = Duration::from_secs(5);

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
    let Some(mut rec) = RunRecord::open(engine, plan.name(), reason, kicks, retry_in) else {
        return Outcome {
            unanswered: kicks.to_vec(),
            ..Default::default()
        };
    };
    let _run = logging::field("run", &rec.run_id.to_string());
    let cfg = engine.cfg.read().unwrap_or_else(|e| e.into_inner()).clone();
    let conflicts = std::cell::RefCell::new(Vec::new());
    let hooks = match crate::hooks::Runner::load(&plan.hooks, plan.name(), rec.run_id, hook_roles(plan)) {
        Ok(h) => std::cell::RefCell::new(h),
        Err(e) => {
            let text = e.to_string();
            tracing::error!("Run failed: {text}");
            return rec.failed(&text, Kind::Input, None, Mail::WithoutLastGood);
        }
    };
    // The term's first write on each database waits for its fence (a
    // fullcopy sync only reads its source).
    let sources = if plan.is_delta() { &plan.sources[..] } else { &[] };
    for db in sources.iter().chain(&plan.targets).chain(&plan.fullcopy) {
        if let Err(e) = engine.fence(db) {
            let text = crate::pg::error::flatten(&e.to_string());
            tracing::error!("Run failed: {text}");
            // A term that ended is no incident; a fence that cannot be put
            // up (no CREATE right on the database) is.
            let mail = if engine.may_write() {
                Mail::WithLastGood
            } else {
                Mail::No
            };
            return rec.failed(&text, e.kind(), e.sqlstate(), mail);
        }
    }
    let env = RunEnv {
        pools: &engine.pools,
        fence: &engine.fence_sql,
        installation: &engine.installation,
        chunk: cfg.chunk,
        // The sync's own isolation_level wins over the setting.
        isolation: plan.sync.isolation_level.unwrap_or(cfg.isolation),
        lock_timeout_ms: (cfg.lock_timeout * 1000.0).ceil() as u64,
        cancel,
        default_strategy: &cfg.default_strategy,
        conflicts: &conflicts,
        hooks: &hooks,
    };
    let result = rec.note_inactive_targets(plan).and_then(|()| {
        let mut c = lock(cache);
        apply::run(&env, plan, &mut c)
    });
    cancel.clear();
    for (subject, body) in std::mem::take(&mut hooks.borrow_mut().emails) {
        engine.notify.send(crate::notify::Alert::Hook {
            sync: plan.name().to_string(),
            subject,
            body,
        });
    }
    rec.keep_conflicts(&conflicts.into_inner(), result.is_ok());
    match result {
        Ok(rep) => rec.succeeded(rep),
        Err(Error::Stale { message, extra }) => rec.stale(&message, extra),
        Err(e) => {
            let text = crate::pg::error::flatten(&e.to_string());
            let retry = Retry::of(&e);
            if e.sqlstate().is_some_and(|s| s.code() == crate::capture::fence::FENCED) {
                // Raised again before the next run: recreated if dropped,
                // or found higher, which ends this term.
                engine.forget_fences();
            }
            tracing::error!("Run failed: {text}");
            // Retried conflicts of locks, and runs cancelled by a stop or
            // a deactivation, are not incidents; the rest mail.
            let mail = if retry == Retry::Backoff && !cancel.is_stopped() {
                Mail::WithLastGood
            } else {
                Mail::No
            };
            let mut o = rec.failed(&text, e.kind(), e.sqlstate(), mail);
            o.serialization = retry.serialization();
            o
        }
    }
}

/// How a failed run is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// A serialization failure: after `kid_serial_sleep`.
    Serialization,
    /// A deadlock, or a lock timeout (DDL held a table): after
    /// `kid_deadlock_sleep`.
    Lock,
    /// Anything else: an incident, retried with the growing back-off.
    Backoff,
}

impl Retry {
    /// Only a server's refusal can be a conflict of locks; its SQLSTATE
    /// says which.
    fn of(e: &Error) -> Retry {
        if e.kind() != Kind::Server {
            return Retry::Backoff;
        }
        match e.sqlstate() {
            Some(s) if s.code() == crate::capture::fence::FENCED => Retry::Lock,
            Some(&SqlState::T_R_SERIALIZATION_FAILURE) => Retry::Serialization,
            Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::LOCK_NOT_AVAILABLE) => Retry::Lock,
            _ => Retry::Backoff,
        }
    }

    /// The form [`Backoff::delay`] takes.
    fn serialization(self) -> Option<bool> {
        match self {
            Retry::Serialization => Some(true),
            Retry::Lock => Some(false),
            Retry::Backoff => None,
        }
    }
}

/// Whether a failure mails, and with what.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mail {
    No,
    WithoutLastGood,
    WithLastGood,
}

/// The database roles hooks see in `ctx.dbs`.
fn hook_roles(plan: &SyncPlan) -> Vec<(String, Role)> {
    plan.sources
        .iter()
        .map(|d| (d.name.clone(), Role::Source))
        .chain(plan.targets.iter().map(|d| (d.name.clone(), Role::Target)))
        .chain(plan.fullcopy.iter().map(|d| (d.name.clone(), Role::Fullcopy)))
        .collect()
}

/// One run's record in the control database, from its start to how it
/// ended, with the kicks waiting for it.
struct RunRecord<'a> {
    engine: &'a Arc<Engine>,
    control: crate::pg::pool::Conn,
    name: &'a str,
    run_id: i64,
    kicks: &'a [i64],
    retry_in: f64,
    started: Instant,
    /// Whether the metrics counted the run; one dropped uncounted (a
    /// panic) counts as bad, as the next start records it.
    counted: bool,
}

impl Drop for RunRecord<'_> {
    fn drop(&mut self) {
        if !self.counted {
            let seconds = self.started.elapsed().as_secs_f64();
            self.count(crate::metrics::Run::bad(seconds));
        }
    }
}

impl<'a> RunRecord<'a> {
    /// Records the start; None when the control database cannot take it
    /// (the kicks are answered by a later run).
    fn open(engine: &'a Arc<Engine>, name: &'a str, reason: Reason, kicks: &'a [i64], retry_in: f64) -> Option<Self> {
        let mut control = match engine.control.get() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("Cannot record the run, control database unreachable: {e}");
                return None;
            }
        };
        match runs::start_run(&mut *control, name, reason.as_str(), engine.runner()) {
            Ok(run_id) => Some(RunRecord {
                engine,
                control,
                name,
                run_id,
                kicks,
                retry_in,
                started: Instant::now(),
                counted: false,
            }),
            Err(e) => {
                tracing::error!("Cannot record the run: {e}");
                None
            }
        }
    }

    /// Inactive targets fall behind from this run on: noted first, so a
    /// crash after the position moved cannot forget them.
    fn note_inactive_targets(&mut self, plan: &SyncPlan) -> Result<()> {
        if !plan.is_delta() || plan.skipped_targets.is_empty() {
            return Ok(());
        }
        let name = self.name;
        self.control
            .execute(
                "INSERT INTO capra.target_behind (sync, db) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                &[&name, &plan.skipped_targets],
            )
            .map(|_| ())
            .ctx(|| format!("noting the inactive targets of sync \"{name}\""))
    }

    /// The conflict history: every settled conflict of a good run; of a
    /// failed run only those that stopped it (the others come again).
    fn keep_conflicts(&mut self, settled: &[Record], good: bool) {
        let keep: Vec<&Record> = settled.iter().filter(|r| good || r.winner == Winner::Aborted).collect();
        if keep.is_empty() {
            return;
        }
        if let Err(e) = runs::record_conflicts(&mut *self.control, self.name, self.run_id, &keep) {
            tracing::error!("Cannot record {} conflict(s) in the history: {e}", keep.len());
        }
    }

    /// Answers the kicks; returns those it could not answer.
    fn answer_kicks(&mut self, run: Option<i64>, good: bool, error: Option<&str>) -> Vec<i64> {
        match runs::finish_kicks(&mut *self.control, self.kicks, run, good, error) {
            Ok(()) => Vec::new(),
            Err(_) => self.kicks.to_vec(),
        }
    }

    /// A good run: its totals, the onetimecopy it served, the targets that
    /// caught up.
    fn succeeded(mut self, rep: crate::apply::run::RunReport) -> Outcome {
        let name = self.name;
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
        let recorded = match runs::finish_run(&mut *self.control, name, self.run_id, &totals, &details, rep.empty) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("Cannot record the run: {e}");
                false
            }
        };
        // Counted as the history has it: a run a new leader closed, or one
        // the next start closes as failed, is bad there.
        let seconds = self.started.elapsed().as_secs_f64();
        self.count(if recorded {
            crate::metrics::Run {
                result: if rep.empty { RunResult::Empty } else { RunResult::Good },
                inserts: rep.inserts,
                deletes: rep.deletes,
                conflicts: rep.conflicts,
                seconds,
            }
        } else {
            crate::metrics::Run::bad(seconds)
        });
        if let Some(g) = rep.onetimecopy_gen {
            self.onetimecopy_served(g);
        }
        if !rep.caught_up.is_empty() {
            self.caught_up(&rep.caught_up);
        }
        for f in &rep.failed_tables {
            self.engine.notify.send(crate::notify::Alert::TableFailed {
                sync: name.to_string(),
                table: f.table.clone(),
                error: f.error.clone(),
                kind: f.kind,
            });
        }
        let run_ref = if rep.empty { None } else { Some(self.run_id) };
        let unanswered = self.answer_kicks(run_ref, true, None);
        Outcome {
            ok: true,
            served_otc: rep.onetimecopy_gen,
            recapture: !rep.recaptured.is_empty(),
            again: rep.again,
            failed_tables: rep.failed_tables.iter().map(|f| f.table.clone()).collect(),
            caught_up: rep.caught_up,
            unanswered,
            ..Default::default()
        }
    }

    /// Clears onetimecopy, but only the request this run served: one made
    /// during the run (a newer generation) stays for the next run.
    fn onetimecopy_served(&mut self, generation: i64) {
        match self.control.execute(
            "UPDATE capra.sync SET onetimecopy = 0 WHERE name = $1 AND onetimecopy_gen = $2",
            &[&self.name, &generation],
        ) {
            Ok(1) => tracing::info!("Onetimecopy finished; onetimecopy is 0 again"),
            Ok(_) => tracing::info!("Onetimecopy finished; another one was requested meanwhile and follows"),
            Err(e) => tracing::error!(
                "Onetimecopy finished, but resetting onetimecopy to 0 failed ({}); the next run copies again",
                crate::pg::error::describe(&e)
            ),
        }
    }

    /// Targets that were behind got their full copy.
    fn caught_up(&mut self, dbs: &[String]) {
        match self.control.execute(
            "DELETE FROM capra.target_behind WHERE sync = $1 AND db = ANY($2)",
            &[&self.name, &dbs],
        ) {
            Ok(_) => tracing::info!(
                "Target(s) {} caught up with a full copy after being inactive",
                dbs.join(", ")
            ),
            Err(e) => tracing::error!(
                "Target(s) {} caught up, but recording it failed ({}); the next run copies them again",
                dbs.join(", "),
                crate::pg::error::describe(&e)
            ),
        }
    }

    /// The catalog changed under the run, which changed nothing: its record
    /// goes and the controller reruns at once.
    fn stale(mut self, message: &str, extra: Vec<i32>) -> Outcome {
        // Its record goes: not a run the history keeps.
        self.counted = true;
        tracing::info!("{message}");
        if let Err(e) = runs::forget_run(&mut *self.control, self.run_id) {
            tracing::warn!("Cannot drop the record of a run that changed nothing: {e}");
        }
        Outcome {
            stale: true,
            extra,
            unanswered: self.kicks.to_vec(),
            ..Default::default()
        }
    }

    /// A failed run: mailed as asked, recorded, its kicks answered.
    fn failed(mut self, text: &str, kind: Kind, sqlstate: Option<&SqlState>, mail: Mail) -> Outcome {
        if mail != Mail::No {
            let last_good = if mail == Mail::WithLastGood {
                self.last_good()
            } else {
                None
            };
            self.engine.notify.send(crate::notify::Alert::Failed {
                sync: self.name.to_string(),
                error: text.to_string(),
                kind,
                last_good,
            });
        }
        if let Err(r) = runs::fail_run(
            &mut *self.control,
            self.name,
            self.run_id,
            text,
            kind,
            sqlstate,
            self.retry_in,
        ) {
            // The daemon's next start closes the run as failed.
            tracing::error!("Cannot record the failed run: {r}");
        }
        self.count(crate::metrics::Run::bad(self.started.elapsed().as_secs_f64()));
        let unanswered = self.answer_kicks(Some(self.run_id), false, Some(text));
        Outcome {
            unanswered,
            ..Default::default()
        }
    }

    /// Counts the run in the metrics, when they are served.
    fn count(&mut self, run: crate::metrics::Run) {
        self.counted = true;
        if let Some(m) = &self.engine.metrics {
            m.figures.record_run(self.name, run);
        }
    }

    /// When the sync last ran well (for the failure mail).
    fn last_good(&mut self) -> Option<String> {
        self.control
            .query_opt(
                "SELECT to_char(r.ended, 'YYYY-MM-DD HH24:MI:SS') FROM capra.sync_state s JOIN capra.run r ON r.id = s.last_good WHERE s.sync = $1",
                &[&self.name],
            )
            .ok()
            .flatten()
            .and_then(|r| r.col(0, "reading the last good run").ok())
    }
}
