//! The daemon's life (Bucardo's MCP): start, ready, reload, stop.
//!
//! `capra start --foreground` runs the daemon in the calling process (what
//! systemd's `Type=notify` unit does). Plain `capra start` re-executes the
//! binary detached (new session, no terminal) and waits until that child
//! reports READY through the same sd_notify protocol systemd uses, or
//! fails, so it returns only once the daemon is up or has said why not.
//!
//! Any number of daemons may serve one control database, one per PID
//! directory (a flock on its pid file): exactly one leads, by a lease in
//! the control database, and runs syncs; the others stand by and take over
//! when it dies, hangs or loses the control database (see `ha`). A leader
//! that loses its term stops its engine and stands by again.
//! `capra status`, `kick` and `stop` look at the lease, so they work from
//! any host.

pub mod comparer;
pub mod control;
pub mod controller;
pub mod engine;
mod error;
pub mod ha;
pub mod metrics;
pub mod purger;
pub mod watcher;

pub use error::DaemonError;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::catalog::{model, runs, Catalog};
use crate::config::Settings;
use crate::error::{Context, Error, Result};
use crate::logging;
use crate::pg::{self, connect::ConnSpec};

/// Opens the control loop's connection, listening for requests.
pub fn control_connection(spec: &ConnSpec) -> Result<postgres::Client> {
    let r = pg::connect::resolve_for(
        spec,
        &format!("capra daemon (pid {})", std::process::id()),
        "control database",
    )?;
    let mut c = pg::connect::open(&r, "the control database")?;
    c.batch_execute(&format!("LISTEN {}", runs::CONTROL_CHANNEL))
        .ctx(|| "listening for requests".into())?;
    Ok(c)
}

/// Sends sd_notify states (no-op without NOTIFY_SOCKET).
/// How long a sync's controller may go without going round its loop
/// before the watchdog is starved (it connects to sources in between).
const CTL_STALL: Duration = Duration::from_secs(600);

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

/// The PID directory: config file `piddir`, else the catalog's.
pub fn piddir(settings: &Settings, c: &mut impl postgres::GenericClient) -> Result<PathBuf> {
    Ok(match &settings.piddir {
        Some(p) => p.clone(),
        None => PathBuf::from(model::setting(c, "piddir")?),
    })
}

/// Where a detached daemon writes its log when nothing says otherwise.
pub fn default_log_file(piddir: &Path) -> PathBuf {
    let var_log = Path::new("/var/log/capra");
    if std::fs::create_dir_all(var_log).is_ok() {
        let p = var_log.join("capra.log");
        if std::fs::OpenOptions::new().create(true).append(true).open(&p).is_ok() {
            return p;
        }
    }
    piddir.join("capra.log")
}

/// Runs the daemon in this process until it is told to stop.
pub fn run_foreground(settings: &Settings, reason: &str) -> Result<()> {
    match run_inner(settings, reason) {
        Ok(()) => Ok(()),
        Err(e) => {
            let line = pg::error::flatten(&e.to_string());
            notify(&[sd_notify::NotifyState::Status(&format!("failed: {line}"))]);
            tracing::error!("capra daemon could not run: {line}");
            Err(e)
        }
    }
}

fn run_inner(settings: &Settings, reason: &str) -> Result<()> {
    let mut cat = Catalog::open(settings, "capra daemon")?;
    let dest = start_logging(settings, &mut cat.client)?;
    let _r = logging::role("MCP", None);
    let host = check_host(&mut cat.client)?;
    let files = Files::read(settings, &mut cat.client)?;
    let _pidlock = files.lock()?;
    files.claim(reason);
    let lease_secs = engine::EngineConfig::load(&mut cat.client)?.ha_lease;
    let role = ha::Role::new(host.clone(), lease_secs);
    // Bound before the daemon is registered: a taken port leaves no trace.
    let metrics = serve_metrics(settings, &mut cat.client, &role)?;
    ha::register(&mut cat.client, &role, &files.piddir.display().to_string())?;
    let installation = cat.installation.clone();
    drop(cat);
    tracing::info!(
        "capra {} starting (pid {}, host {host}, reason: {reason})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let lease = ha::LeaseThread::start(settings.control.clone(), role.clone(), events_tx.clone())?;
    // The supervisor: signals, stop file, watchdog. No PostgreSQL calls here.
    // Its signal handlers are installed before READY: a reload (SIGHUP)
    // right after start must not hit the default action, which kills.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the supervisor".into(),
            source,
        })?;
    let mut signals = rt.block_on(Signals::install()).map_err(|source| Error::Io {
        context: "installing signal handlers".into(),
        source,
    })?;
    let mut announced = false;
    let ending = loop {
        role.stand_by();
        let took = match rt.block_on(stand_by(
            &role,
            &mut signals,
            &mut events_rx,
            &files.stopfile,
            &mut announced,
        )) {
            Ok(t) => t,
            Err(why) => break Ending::Stopped(why),
        };
        let term = Term {
            role: role.clone(),
            took,
            installation: installation.clone(),
            host: host.clone(),
            reason: reason.to_string(),
            dest: dest.clone(),
            metrics: metrics.clone(),
        };
        let ctx = Supervision {
            rt: &rt,
            events_tx: &events_tx,
            events_rx: &mut events_rx,
            signals: &mut signals,
            stopfile: &files.stopfile,
        };
        match lead(settings, &term, ctx) {
            Ending::Handover => {
                role.resign("handover", 3000);
                tracing::info!("Handed over; standing by");
            }
            Ending::StepDown(why) => {
                role.resign("lost", 1000);
                tracing::warn!("Standing by again: {why}");
            }
            other => break other,
        }
        // Ready again as a standby: the next READY is this one's.
        announced = true;
    };
    lease.stop();
    ha::leave(&settings.control, &role, "stop");
    match ending {
        Ending::Fatal(e) => {
            files.release(&format!("fatal: {e}"));
            Err(DaemonError::Fatal(e).into())
        }
        Ending::Stopped(why) => {
            files.release(&why);
            tracing::info!("Stopped");
            Ok(())
        }
        Ending::Handover | Ending::StepDown(_) => Ok(()),
    }
}

/// What a leader's term needs from the daemon's start.
struct Term {
    role: Arc<ha::Role>,
    took: ha::Took,
    installation: String,
    host: String,
    reason: String,
    dest: logging::Dest,
    metrics: Option<metrics::Served>,
}

/// Binds the metrics endpoint when `metrics_listen` (this daemon's config
/// file first, then the catalog) names one; before READY, so a taken port
/// fails the start.
fn serve_metrics(
    settings: &Settings,
    c: &mut impl postgres::GenericClient,
    role: &Arc<ha::Role>,
) -> Result<Option<metrics::Served>> {
    let (addr, origin) = match &settings.metrics_listen {
        Some(a) => {
            metrics::note_listen(None);
            (a.trim().to_string(), "metrics_listen in the config file")
        }
        None => (
            model::setting(c, "metrics_listen")?.trim().to_string(),
            "metrics_listen",
        ),
    };
    if settings.metrics_listen.is_none() {
        metrics::note_listen(Some(addr.clone()));
    }
    if addr.is_empty() {
        return Ok(None);
    }
    crate::metrics::check_listen(&addr).map_err(|why| DaemonError::MetricsListenInvalid {
        value: addr.clone(),
        origin: origin.to_string(),
        why,
    })?;
    let failed = |source: std::io::Error| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => " (another program or capra daemon on this host has it)",
            std::io::ErrorKind::PermissionDenied => " (ports below 1024 need root)",
            _ => "",
        };
        DaemonError::MetricsListen {
            addr: addr.clone(),
            origin: origin.to_string(),
            source,
            hint,
        }
    };
    let listener = crate::metrics::http::bind(&addr).map_err(failed)?;
    let r = role.clone();
    let figures = Arc::new(crate::metrics::Metrics::new(move || r.may_write()));
    crate::metrics::http::serve(listener, figures.clone()).map_err(failed)?;
    tracing::info!("Serving metrics on http://{addr}/metrics");
    let control = pg::pool::DbPool::new(
        "control",
        &settings.control,
        &format!("capra metrics (pid {})", std::process::id()),
        1,
    )?;
    Ok(Some(metrics::Served::new(figures, control)))
}

/// The supervisor's means, lent to each term.
struct Supervision<'a> {
    rt: &'a tokio::runtime::Runtime,
    events_tx: &'a tokio::sync::mpsc::UnboundedSender<engine::Event>,
    events_rx: &'a mut tokio::sync::mpsc::UnboundedReceiver<engine::Event>,
    signals: &'a mut Signals,
    stopfile: &'a Path,
}

/// How a leader's term ended.
enum Ending {
    /// Told to stop (why).
    Stopped(String),
    /// The engine failed.
    Fatal(String),
    /// `capra ha handover`.
    Handover,
    /// The term was lost (why).
    StepDown(String),
}

/// Stands by until this daemon takes the lease (Ok) or is told to stop
/// (Err with why). READY goes out once the first attempt has told whether
/// it leads; a daemon that leads at once announces READY later, as leader.
async fn stand_by(
    role: &ha::Role,
    sig: &mut Signals,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<engine::Event>,
    stopfile: &Path,
    announced: &mut bool,
) -> std::result::Result<ha::Took, String> {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_status = String::new();
    let dog = sd_notify::watchdog_enabled();
    loop {
        tokio::select! {
            _ = sig.term.recv() => return Err("SIGTERM".to_string()),
            _ = sig.int.recv() => return Err("SIGINT".to_string()),
            _ = sig.hup.recv() => tracing::info!("SIGHUP: a standby has nothing to reload"),
            ev = events.recv() => match ev {
                Some(engine::Event::Lead(t)) => return Ok(t),
                Some(engine::Event::Stop(why)) => return Err(why),
                Some(engine::Event::Fatal(msg)) => return Err(format!("fatal: {msg}")),
                Some(_) => {}
                None => return Err("lease thread ended".into()),
            },
            _ = tick.tick() => {
                if stopfile.exists() {
                    return Err(format!("stop file {} found", stopfile.display()));
                }
                if !role.looked() {
                    continue;
                }
                let line = role.describe();
                if !*announced {
                    tracing::info!("Standing by: {line}");
                    notify(&[
                        sd_notify::NotifyState::Ready,
                        sd_notify::NotifyState::MainPid(std::process::id()),
                        sd_notify::NotifyState::Status(&line),
                    ]);
                    *announced = true;
                } else if line != last_status {
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                }
                last_status = line;
                // The watchdog is fed while the lease thread goes round.
                if dog.is_some_and(|w| role.turned_within(w / 2)) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    }
}

/// The leader's term: the takeover duties, then the engine until the term
/// ends.
fn lead(settings: &Settings, t: &Term, s: Supervision<'_>) -> Ending {
    let notify_stop = Arc::new(AtomicBool::new(false));
    // A takeover that fails (the control database refusing connections
    // just when the old leader died) gives the lease up and stands by
    // again: another daemon, or this one a moment later, tries again.
    let engine = match take_over(settings, t, s.events_tx.clone(), &notify_stop) {
        Ok(e) => e,
        Err(e) => return Ending::StepDown(format!("could not take over: {}", pg::error::flatten(&e.to_string()))),
    };
    let threads = match Threads::start(&engine, settings.control.clone()) {
        Ok(th) => th,
        Err(e) => {
            engine.shutdown(Duration::ZERO);
            notify_stop.store(true, std::sync::atomic::Ordering::SeqCst);
            return Ending::StepDown(format!("could not take over: {}", pg::error::flatten(&e.to_string())));
        }
    };
    announce_ready(&engine, crate::sys::lock(&engine.controllers).len());
    tracing::info!("Entering main loop");
    let ending =
        s.rt.block_on(supervise(engine.clone(), s.signals, s.events_rx, s.stopfile));
    // A term that ended cancels its runs at once; a stop lets them finish.
    let grace = match ending {
        Ending::Stopped(_) => Duration::from_secs(10),
        _ => Duration::ZERO,
    };
    shut_down(&engine, threads, grace, &notify_stop, &ending);
    ending
}

/// The takeover duties, in order: start the engine, raise the fences on
/// every database the syncs write, close the runs earlier terms left open,
/// start the controllers, and after a takeover kick every sync and mail.
fn take_over(
    settings: &Settings,
    t: &Term,
    events_tx: tokio::sync::mpsc::UnboundedSender<engine::Event>,
    notify_stop: &Arc<AtomicBool>,
) -> Result<Arc<engine::Engine>> {
    let epoch = t.took.epoch;
    let who = runs::Runner {
        pid: t.role.pid,
        host: &t.host,
        holder: &t.role.id,
        epoch,
    };
    let mut c = control_connection(&settings.control)?;
    register(&mut c, &t.host, &t.reason, &t.dest)?;
    let cfg = engine::EngineConfig::load(&mut c)?;
    // Every running run holds one control connection; controllers, the
    // purger and reloads need a few more.
    let control_pool = pg::pool::DbPool::new(
        "control",
        &settings.control,
        &format!("capra daemon (pid {})", t.role.pid),
        cfg.workers as u32 + 4,
    )?;
    let notifier = crate::notify::Notifier::start(
        control_pool.clone(),
        crate::sys::hostname(),
        t.installation.clone(),
        notify_stop.clone(),
    );
    let term = crate::capture::fence::Term {
        installation: t.installation.clone(),
        epoch,
        holder: t.role.id.clone(),
    };
    let engine = engine::Engine::new(
        control_pool,
        cfg,
        events_tx,
        notifier,
        term,
        t.role.clone(),
        t.metrics.clone(),
    )?;
    let started = Instant::now();
    // Fences first: once they are up no run of an earlier term can commit,
    // so the runs still open in the catalog are really over.
    engine.fence_all(engine.written_dbs());
    let closed = runs::close_stale_runs(&mut c, who);
    drop(c);
    let active = closed.and_then(|n| {
        if n > 0 {
            tracing::warn!("Closed {n} run(s) left open by a daemon that stopped mid-run; they are re-run now");
        }
        engine.sync_controllers()
    });
    let active = match active {
        Ok(a) => a,
        Err(e) => {
            engine.shutdown(Duration::ZERO);
            notify_stop.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(e);
        }
    };
    tracing::info!(
        "Active syncs: {}",
        if active.is_empty() {
            "none".into()
        } else {
            active.join(",")
        }
    );
    match &t.took.from {
        Some(p) => {
            for s in &active {
                engine.tell(s, engine::CtlMsg::Kick(engine::Reason::Takeover, None));
            }
            tracing::warn!(
                "Leading (epoch {epoch}): took over from pid {} on {} ({}); fences raised in {:.1}s; every sync kicked",
                p.pid,
                p.host,
                t.took.how,
                started.elapsed().as_secs_f64()
            );
            engine.notify.send(crate::notify::Alert::Takeover {
                epoch,
                old_pid: p.pid,
                old_host: p.host.clone(),
                how: t.took.how.clone(),
            });
        }
        None => tracing::info!("Leading (epoch {epoch}; {})", t.took.how),
    }
    Ok(engine)
}

/// Starts logging as configured (the config file's level overrides the
/// catalog's `log_level`) and says where the log goes.
fn start_logging(settings: &Settings, c: &mut postgres::Client) -> Result<logging::Dest> {
    let level = settings.loglevel.clone().unwrap_or(model::setting(c, "log_level")?);
    let style = logging::Style {
        showpid: model::setting(c, "log_showpid")? != "0",
        showtime: model::setting(c, "log_showtime")?.parse().unwrap_or(3),
        timer_format: model::setting(c, "log_timer_format")?,
        microsecond: model::setting(c, "log_microsecond")? != "0",
        showlevel: model::setting(c, "log_showlevel")? != "0",
        showsyncname: model::setting(c, "log_showsyncname")? != "0",
    };
    let dest = logging::Dest::parse(settings.logdest.as_deref().unwrap_or("stderr"));
    let note = logging::init(&dest, &level, style).map_err(|source| Error::Io {
        context: "opening the log".into(),
        source,
    })?;
    if let Some(n) = note {
        tracing::warn!("{n}");
    }
    Ok(dest)
}

/// Refuses to start on a host `host_safety_check` does not allow; returns
/// this host's name.
fn check_host(c: &mut postgres::Client) -> Result<String> {
    let safety = model::setting(c, "host_safety_check")?;
    let host = crate::sys::hostname();
    if !safety.is_empty() && !host_allowed(&safety, &host) {
        return Err(DaemonError::HostNotAllowed { allowed: safety, host }.into());
    }
    Ok(host)
}

/// The daemon's files in its PID directory (Bucardo's pid, stop and
/// reason files).
struct Files {
    piddir: PathBuf,
    stopfile: PathBuf,
    reason_file: PathBuf,
    pidfile: PathBuf,
}

impl Files {
    /// Where they are, from the config file and the catalog.
    fn read(settings: &Settings, c: &mut postgres::Client) -> Result<Files> {
        let piddir = piddir(settings, c)?;
        Ok(Files {
            stopfile: piddir.join(model::setting(c, "stopfile")?),
            reason_file: piddir.join(model::setting(c, "reason_file")?),
            pidfile: piddir.join("capra.pid"),
            piddir,
        })
    }

    /// Locks the pid file for this process's life (one daemon per PID
    /// directory) and writes this pid into it; the lock goes with the
    /// process, however it ends.
    fn lock(&self) -> Result<std::fs::File> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsRawFd;
        let io = |context: String| move |source| Error::Io { context, source };
        std::fs::create_dir_all(&self.piddir)
            .map_err(io(format!("creating the PID directory {}", self.piddir.display())))?;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.pidfile)
            .map_err(io(format!("opening {}", self.pidfile.display())))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(DaemonError::PiddirInUse {
                piddir: self.piddir.display().to_string(),
                pid: pid.trim().to_string(),
            }
            .into());
        }
        let wrote = f
            .set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| writeln!(f, "{}", std::process::id()));
        wrote.map_err(io(format!("writing {}", self.pidfile.display())))?;
        Ok(f)
    }

    /// Once the pid file is locked: a stale stop file goes, the start
    /// reason is written.
    fn claim(&self, reason: &str) {
        if self.stopfile.exists() {
            tracing::info!("Removing {}", self.stopfile.display());
            let _ = std::fs::remove_file(&self.stopfile);
        }
        logging::note_reason(&self.reason_file, "start", reason);
    }

    /// At the end: the stop reason is noted and the pid and stop files go.
    fn release(&self, why: &str) {
        logging::note_reason(&self.reason_file, "stop", why);
        let _ = std::fs::remove_file(&self.pidfile);
        let _ = std::fs::remove_file(&self.stopfile);
    }
}

/// Registers the leader in the catalog (status shows its log; `stop`
/// reads it).
fn register(lock: &mut postgres::Client, host: &str, reason: &str, dest: &logging::Dest) -> Result<()> {
    let logdest = match dest {
        logging::Dest::File(p) => p.display().to_string(),
        logging::Dest::Journald => "journald".into(),
        logging::Dest::Stderr => std::env::var("CAPRA_LOGFILE").unwrap_or_else(|_| "stderr".into()),
    };
    lock.execute(
        "INSERT INTO capra.daemon (pid, host, started, heartbeat, version, reason, logdest)
         VALUES ($1, $2, now(), now(), $3, $4, $5)
         ON CONFLICT (singleton) DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host, started = now(),
             heartbeat = now(), version = EXCLUDED.version, reason = EXCLUDED.reason, logdest = EXCLUDED.logdest",
        &[
            &(std::process::id() as i32),
            &host,
            &env!("CARGO_PKG_VERSION"),
            &reason,
            &logdest,
        ],
    )
    .ctx(|| "registering the daemon".into())?;
    Ok(())
}

/// The control loop, the purger and the metrics refresher.
struct Threads {
    control: std::thread::JoinHandle<()>,
    vac: std::thread::JoinHandle<()>,
    metrics: Option<std::thread::JoinHandle<()>>,
}

impl Threads {
    fn start(engine: &Arc<engine::Engine>, spec: ConnSpec) -> Result<Threads> {
        let client = control_connection(&spec)?;
        let ctl_engine = engine.clone();
        let control = crate::sys::spawn("capra-control", move || ctl_engine.control_loop(client, spec))?;
        let vac_engine = engine.clone();
        let vac = crate::sys::spawn("capra-vac", move || vac_engine.purge_loop())?;
        let metrics = match engine.metrics {
            Some(_) => {
                let m_engine = engine.clone();
                Some(crate::sys::spawn("capra-refresh", move || m_engine.metrics_loop())?)
            }
            None => None,
        };
        // Not joined at stop: a compare only reads, and one in the middle
        // of a large table must not hold the daemon up.
        let cmp_engine = engine.clone();
        crate::sys::spawn("capra-compare", move || cmp_engine.compare_loop())?;
        Ok(Threads { control, vac, metrics })
    }
}

/// The signals the supervisor answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    async fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// READY=1 once the catalog is read and every active sync's controller has
/// entered its loop (at most 60 s, then READY anyway, with a note).
fn announce_ready(engine: &engine::Engine, active: usize) {
    let up_by = Instant::now() + Duration::from_secs(60);
    while engine.controllers_up() < active && Instant::now() < up_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    if engine.controllers_up() < active {
        tracing::warn!(
            "Only {} of {} controllers started within 60 s",
            engine.controllers_up(),
            active
        );
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::MainPid(std::process::id()),
        sd_notify::NotifyState::Status(&format!(
            "{active} sync(s) active, starting; {}",
            engine.role.describe()
        )),
    ]);
}

/// The main loop: waits for a signal, a stop request, the stop file, the
/// end of the term or a fatal engine event, and keeps systemd's watchdog
/// and status fed. Returns how the term ends.
async fn supervise(
    engine: Arc<engine::Engine>,
    sig: &mut Signals,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<engine::Event>,
    stopfile: &Path,
) -> Ending {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dog = Watchdog::new();
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = sig.term.recv() => return Ending::Stopped("SIGTERM".to_string()),
            _ = sig.int.recv() => return Ending::Stopped("SIGINT".to_string()),
            _ = sig.hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                notify(&[sd_notify::NotifyState::Reloading]);
                engine.request_reload();
                notify(&[sd_notify::NotifyState::Ready]);
            }
            ev = events.recv() => match ev {
                Some(engine::Event::Stop(why)) => return Ending::Stopped(why),
                Some(engine::Event::Fatal(msg)) => return Ending::Fatal(msg),
                Some(engine::Event::StepDown(why)) => return Ending::StepDown(why),
                Some(engine::Event::Handover) => return Ending::Handover,
                Some(engine::Event::Lead(_)) => {}
                None => return Ending::Fatal("engine channel closed".into()),
            },
            _ = tick.tick() => {
                if stopfile.exists() {
                    return Ending::Stopped(format!("stop file {} found", stopfile.display()));
                }
                if !engine.may_write() {
                    return Ending::StepDown("the lease ran out".into());
                }
                dog.feed(&engine);
                let line = crate::sys::lock(&engine.status_line).clone();
                if !line.is_empty() && line != last_status {
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    last_status = line;
                }
            }
        }
    }
}

/// systemd's watchdog, fed from the engine's own heartbeat: only while the
/// control loop and every controller go round (a controller waits at most
/// a second), so a wedged engine is restarted.
struct Watchdog {
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    fn new() -> Watchdog {
        Watchdog {
            every: sd_notify::watchdog_enabled(),
            last: Instant::now(),
        }
    }

    fn feed(&mut self, engine: &engine::Engine) {
        let Some(w) = self.every else { return };
        if self.last.elapsed() < w / 4 {
            return;
        }
        let stalled = engine.stalled((w / 2).max(Duration::from_secs(3)));
        // A controller may spend a while connecting (prepare, up to
        // connect_timeout per host): only the control loop must keep the
        // pace.
        let stalled: Vec<String> = stalled
            .into_iter()
            .filter(|p| !p.starts_with("ctl:") || engine.stalled(CTL_STALL).contains(p))
            .collect();
        if stalled.is_empty() {
            notify(&[sd_notify::NotifyState::Watchdog]);
            self.last = Instant::now();
        } else {
            tracing::warn!("Not feeding the watchdog: {} made no progress", stalled.join(", "));
        }
    }
}

/// Stops the engine, its threads and the notifier in order, so `capra
/// stop` returns only once the daemon is really done. Runs still going
/// after `grace` are cancelled.
fn shut_down(
    engine: &Arc<engine::Engine>,
    threads: Threads,
    grace: Duration,
    notify_stop: &AtomicBool,
    ending: &Ending,
) {
    let why = match ending {
        Ending::Stopped(w) => w.clone(),
        Ending::Fatal(e) => format!("fatal: {e}"),
        Ending::Handover => "handing over to a standby".into(),
        Ending::StepDown(w) => format!("stepping down: {w}"),
    };
    match ending {
        Ending::StepDown(_) | Ending::Fatal(_) => tracing::warn!("Stopping ({why})"),
        _ => tracing::info!("Stopping ({why})"),
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    engine.begin_stop();
    // The gauges go at once: a daemon that no longer leads must not show
    // what it saw while the shutdown takes its time.
    if let Some(m) = &engine.metrics {
        m.term_ended();
    }
    let _ = threads.control.join();
    engine.shutdown(grace);
    let _ = threads.vac.join();
    if let Some(m) = threads.metrics {
        let _ = m.join();
    }
    if let Some(m) = &engine.metrics {
        m.term_ended();
    }
    // The last alerts and the digest go out before the daemon is gone.
    notify_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(5);
    while engine.notify.running() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bucardo's host_safety_check: exact name, `=a,b,c`, or `~regex`-ish
/// (a substring match; capra carries no regex engine).
fn host_allowed(rule: &str, host: &str) -> bool {
    if let Some(list) = rule.strip_prefix('=') {
        list.split(',').any(|h| h.trim() == host)
    } else if let Some(pat) = rule.strip_prefix('~') {
        host.contains(pat.trim())
    } else {
        rule == host
    }
}

/// A detached daemon that reported READY.
#[derive(Clone, Debug)]
pub struct Started {
    /// Its pid.
    pub pid: u32,
    /// Its log file.
    pub log: String,
    /// Its status line at READY (a standby's names the leader).
    pub status: String,
}

/// `capra start` without `--foreground`: re-executes detached and waits for
/// READY (or the child's reason for failing).
pub fn spawn_detached(settings: &Settings, reason: &str, config: Option<&Path>) -> Result<Started> {
    use std::os::unix::net::UnixDatagram;
    let mut cat = Catalog::open(settings, "capra")?;
    let pd = piddir(settings, &mut cat.client)?;
    drop(cat);
    let _ = std::fs::create_dir_all(&pd);
    let logfile = match settings.logdest.as_deref().map(logging::Dest::parse) {
        Some(logging::Dest::File(p)) => p,
        _ => default_log_file(&pd),
    };
    let sockdir = tempfile_dir()?;
    let sock_path = sockdir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).map_err(|source| Error::Io {
        context: "creating the readiness socket".into(),
        source,
    })?;
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&logfile)
        .map_err(|source| Error::Io {
            context: format!("opening the log {}", logfile.display()),
            source,
        })?;
    let mut child = detached_command(settings, reason, config, &sock_path, &logfile, log)?
        .spawn()
        .map_err(|source| Error::Io {
            context: "starting the daemon".into(),
            source,
        })?;
    let waited = wait_ready(&mut child, &sock, &logfile);
    let _ = std::fs::remove_dir_all(&sockdir);
    waited.map(|status| Started {
        pid: child.id(),
        log: logfile.display().to_string(),
        status,
    })
}

/// The command that runs this binary as a detached foreground daemon: the
/// same control database and config, readiness reported on `sock_path`,
/// output into the log.
fn detached_command(
    settings: &Settings,
    reason: &str,
    config: Option<&Path>,
    sock_path: &Path,
    logfile: &Path,
    log: std::fs::File,
) -> Result<std::process::Command> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        context: "finding the capra binary".into(),
        source,
    })?;
    let mut cmd = std::process::Command::new(exe);
    let s = &settings.control;
    if let Some(h) = &s.host {
        cmd.args(["--dbhost", h]);
    }
    if let Some(p) = s.port {
        cmd.args(["--dbport", &p.to_string()]);
    }
    if let Some(u) = &s.user {
        cmd.args(["--dbuser", u]);
    }
    if let Some(d) = &s.dbname {
        cmd.args(["--dbname", d]);
    }
    if let Some(c) = config {
        cmd.arg("--config")
            .arg(std::fs::canonicalize(c).unwrap_or_else(|_| c.to_path_buf()));
    }
    cmd.args(["start", "--foreground", reason]);
    // The password travels in the environment, never on the command line
    // (which `ps` shows to everyone).
    cmd.env_remove("CAPRA_DBPASS");
    if let Some(p) = &s.password {
        cmd.env("CAPRA_DBPASS", p);
    }
    cmd.env("NOTIFY_SOCKET", sock_path)
        .env("CAPRA_LOGFILE", logfile)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|source| Error::Io {
            context: "opening the log".into(),
            source,
        })?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches from the terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd)
}

/// Waits until the child says READY=1 (Ok), exits (its last STATUS= line
/// says why) or takes longer than two minutes.
fn wait_ready(
    child: &mut std::process::Child,
    sock: &std::os::unix::net::UnixDatagram,
    logfile: &Path,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = String::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let mut ready = false;
            for line in msg.lines() {
                if let Some(s) = line.strip_prefix("STATUS=") {
                    status = s.to_string();
                }
                ready |= line == "READY=1";
            }
            if ready {
                return Ok(status);
            }
        }
        if let Ok(Some(code)) = child.try_wait() {
            let why = status
                .strip_prefix("failed: ")
                .map(String::from)
                .unwrap_or_else(|| format!("the daemon exited ({code}); see {}", logfile.display()));
            return Err(DaemonError::StartFailed { why }.into());
        }
        if Instant::now() > deadline {
            return Err(DaemonError::NotReady {
                pid: child.id(),
                log: logfile.display().to_string(),
            }
            .into());
        }
    }
}

/// A daemon of this host whose process is gone (killed) and whose
/// heartbeat stopped: stopped, whatever its row says. (A process this
/// one cannot see, in another pid namespace, still beats.)
fn gone_here(m: &runs::Member, me: &str) -> bool {
    m.host == me && m.beat_age > 3.0 && !process_running(m.pid)
}

/// Whether `pid` is a capra process (before signalling it: a pid may have
/// been reused).
fn is_capra(pid: i32) -> bool {
    process_running(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("capra"))
            .unwrap_or(false)
}

/// Whether a process runs (zombies do not count).
fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!(
        "capra-start-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&base).map_err(|source| Error::Io {
        context: format!("creating {}", base.display()),
        source,
    })?;
    Ok(base)
}

/// Who `capra stop` stopped: the leader (or, with none, a standby) and
/// how many standbys besides.
#[derive(Clone, Debug)]
pub struct Stopped {
    /// The leader, or the first standby when none led.
    pub daemon: runs::DaemonInfo,
    /// Standbys stopped besides it.
    pub standbys: usize,
}

/// Asks every daemon of this control database to stop (the request
/// reaches leader and standbys alike; `systemctl stop` on one host stops
/// only that one, and a standby takes over) and waits until all are gone
/// (or `timeout`).
pub fn stop(cat: &mut Catalog, reason: &str, timeout: Duration) -> Result<Option<Stopped>> {
    let leader = runs::daemon(&mut cat.client)?;
    let me = crate::sys::hostname();
    let members: Vec<runs::Member> = runs::daemons(&mut cat.client)?
        .into_iter()
        .filter(|m| !gone_here(m, &me))
        .collect();
    let standbys: Vec<runs::Member> = members.iter().filter(|m| m.role != "leader").cloned().collect();
    let d = match (leader, standbys.first()) {
        (Some(d), _) => d,
        (None, Some(m)) => runs::DaemonInfo {
            pid: m.pid,
            host: m.host.clone(),
            started: m.since.clone(),
            logdest: None,
        },
        (None, None) => return Ok(None),
    };
    let payload = format!("stop {reason}");
    cat.client
        .execute("SELECT pg_notify($1, $2)", &[&runs::CONTROL_CHANNEL, &payload])
        .ctx(|| "asking the daemon to stop".into())?;
    let end = Instant::now() + timeout;
    let mut local: Vec<i32> = members
        .iter()
        .filter(|m| m.host == me && m.pid > 0)
        .map(|m| m.pid)
        .collect();
    if d.host == me && d.pid > 0 && !local.contains(&d.pid) {
        local.push(d.pid);
    }
    // The request carries the reason; a local daemon that has not reacted
    // within a few seconds (control database trouble) also gets SIGTERM.
    let signal_at = Instant::now() + Duration::from_secs(5);
    let mut signalled = false;
    while Instant::now() < end {
        if !signalled && Instant::now() >= signal_at {
            for pid in local.iter().filter(|p| is_capra(**p)) {
                // SAFETY: signalling a pid; harmless if it is gone.
                unsafe {
                    libc::kill(*pid, libc::SIGTERM);
                }
            }
            signalled = true;
        }
        // The lease and the daemons' rows go last; then, for local
        // daemons, the processes themselves.
        // A daemon of this host whose process is gone (killed) has
        // stopped, whatever its row says.
        let left = runs::daemons(&mut cat.client)?
            .into_iter()
            .filter(|m| !gone_here(m, &me))
            .count();
        if runs::daemon(&mut cat.client)?.is_none() && left == 0 && !local.iter().any(|p| process_running(*p)) {
            return Ok(Some(Stopped {
                daemon: d,
                standbys: standbys.len(),
            }));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(DaemonError::StopTimeout {
        pid: d.pid,
        host: d.host,
        secs: timeout.as_secs(),
    }
    .into())
}
