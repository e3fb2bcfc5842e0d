//! The daemon's life (Bucardo's MCP): start, ready, reload, stop.
//!
//! `capra start --foreground` runs the daemon in the calling process (what
//! systemd's `Type=notify` unit does). Plain `capra start` re-executes the
//! binary detached (new session, no terminal) and waits until that child
//! reports READY through the same sd_notify protocol systemd uses, or
//! fails, so it returns only once the daemon is up or has said why not.
//!
//! Exactly one daemon serves a control database: it holds an advisory lock
//! on a dedicated control connection for its whole life. `capra status`,
//! `kick` and `stop` look at that lock, so they work from any host.

pub mod comparer;
pub mod control;
pub mod controller;
pub mod engine;
mod error;
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
use crate::pg::{self, connect::ConnSpec, RowExt};

/// Tries to open a control connection holding the daemon lock: Ok(None) if
/// another daemon holds it.
pub fn lock_control(spec: &ConnSpec) -> Result<Option<postgres::Client>> {
    let r = pg::connect::resolve_for(spec, "capra daemon", "control database")?;
    let mut c = pg::connect::open(&r, "the control database")?;
    let got: bool = c
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&runs::DAEMON_LOCK.0, &runs::DAEMON_LOCK.1],
        )
        .ctx(|| "taking the daemon lock".into())?
        .col(0, "taking the daemon lock")?;
    if !got {
        return Ok(None);
    }
    c.batch_execute(&format!("LISTEN {}", runs::CONTROL_CHANNEL))
        .ctx(|| "listening for requests".into())?;
    Ok(Some(c))
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
    let Some(mut lock) = lock_control(&settings.control)? else {
        return Err(already_running(&mut cat.client)?.into());
    };
    files.claim(reason);
    let closed = runs::close_stale_runs(&mut lock)?;
    if closed > 0 {
        tracing::warn!("Closed {closed} run(s) left open by a daemon that stopped mid-run; they are re-run now");
    }
    register(&mut lock, &host, reason, &dest)?;

    let cfg = engine::EngineConfig::load(&mut cat.client)?;
    // Every running run holds one control connection; controllers, the
    // purger and reloads need a few more.
    let control_pool = pg::pool::DbPool::new("control", &settings.control, "capra daemon", cfg.workers as u32 + 4)?;
    let installation = cat.installation.clone();
    drop(cat);
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let notify_stop = Arc::new(AtomicBool::new(false));
    let notifier = crate::notify::Notifier::start(
        control_pool.clone(),
        crate::sys::hostname(),
        installation.clone(),
        notify_stop.clone(),
    );
    let engine = engine::Engine::new(installation, control_pool, cfg, events_tx, notifier)?;
    tracing::info!(
        "capra {} starting (pid {}, host {host}, reason: {reason})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let active = engine.sync_controllers()?;
    tracing::info!(
        "Active syncs: {}",
        if active.is_empty() {
            "none".into()
        } else {
            active.join(",")
        }
    );
    let threads = Threads::start(&engine, lock, settings.control.clone())?;

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
    let signals = rt.block_on(Signals::install()).map_err(|source| Error::Io {
        context: "installing signal handlers".into(),
        source,
    })?;
    announce_ready(&engine, active.len());
    tracing::info!("Entering main loop");
    let outcome = rt.block_on(supervise(engine.clone(), signals, events_rx, files.stopfile.clone()));
    shut_down(&engine, threads, &notify_stop, &files, &outcome);
    outcome.map(|_| ()).map_err(|e| DaemonError::Fatal(e).into())
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

/// Who holds the daemon lock, as far as the catalog knows.
fn already_running(c: &mut postgres::Client) -> Result<DaemonError> {
    Ok(match runs::daemon(c)? {
        Some(d) => DaemonError::AlreadyRunning {
            pid: Some(d.pid),
            host: d.host,
            started: d.started,
        },
        None => DaemonError::AlreadyRunning {
            pid: None,
            host: String::new(),
            started: String::new(),
        },
    })
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

    /// Once the lock is held: a stale stop file goes, the pid file and the
    /// start reason are written (trouble here is logged, never fatal).
    fn claim(&self, reason: &str) {
        if let Err(e) = std::fs::create_dir_all(&self.piddir) {
            tracing::warn!("Cannot create the PID directory {}: {e}", self.piddir.display());
        }
        if self.stopfile.exists() {
            tracing::info!("Removing {}", self.stopfile.display());
            let _ = std::fs::remove_file(&self.stopfile);
        }
        if let Err(e) = std::fs::write(&self.pidfile, format!("{}\n", std::process::id())) {
            tracing::warn!("Cannot write {}: {e}", self.pidfile.display());
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

/// Registers this daemon in the catalog (status and `stop` read it).
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

/// The control loop (holding the lock connection) and the purger.
struct Threads {
    control: std::thread::JoinHandle<Option<postgres::Client>>,
    vac: std::thread::JoinHandle<()>,
}

impl Threads {
    fn start(engine: &Arc<engine::Engine>, lock: postgres::Client, spec: ConnSpec) -> Result<Threads> {
        let ctl_engine = engine.clone();
        let control = crate::sys::spawn("capra-control", move || ctl_engine.control_loop(lock, spec))?;
        let vac_engine = engine.clone();
        let vac = crate::sys::spawn("capra-vac", move || vac_engine.purge_loop())?;
        // Not joined at stop: a compare only reads, and one in the middle
        // of a large table must not hold the daemon up.
        let cmp_engine = engine.clone();
        crate::sys::spawn("capra-compare", move || cmp_engine.compare_loop())?;
        Ok(Threads { control, vac })
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
        sd_notify::NotifyState::Status(&format!("{active} sync(s) active, starting")),
    ]);
}

/// The main loop: waits for a signal, a stop request, the stop file or a
/// fatal engine event, and keeps systemd's watchdog and status fed.
/// Returns why it stopped (Err: the engine failed).
async fn supervise(
    engine: Arc<engine::Engine>,
    mut sig: Signals,
    mut events: tokio::sync::mpsc::UnboundedReceiver<engine::Event>,
    stopfile: PathBuf,
) -> std::result::Result<String, String> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dog = Watchdog::new();
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = sig.term.recv() => return Ok("SIGTERM".to_string()),
            _ = sig.int.recv() => return Ok("SIGINT".to_string()),
            _ = sig.hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                notify(&[sd_notify::NotifyState::Reloading]);
                engine.request_reload();
                notify(&[sd_notify::NotifyState::Ready]);
            }
            ev = events.recv() => match ev {
                Some(engine::Event::Stop(why)) => return Ok(why),
                Some(engine::Event::Fatal(msg)) => return Err(msg),
                None => return Err("engine channel closed".into()),
            },
            _ = tick.tick() => {
                if stopfile.exists() {
                    return Ok(format!("stop file {} found", stopfile.display()));
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

/// Stops the engine, its threads and the notifier in order, keeping the
/// lock connection until everything else has finished, so `capra stop`
/// returns only once the daemon is really done.
fn shut_down(
    engine: &Arc<engine::Engine>,
    threads: Threads,
    notify_stop: &AtomicBool,
    files: &Files,
    outcome: &std::result::Result<String, String>,
) {
    let why = match outcome {
        Ok(w) => w.clone(),
        Err(e) => format!("fatal: {e}"),
    };
    tracing::info!("Stopping ({why})");
    notify(&[sd_notify::NotifyState::Stopping]);
    engine.begin_stop();
    let lock = threads.control.join().ok().flatten();
    engine.shutdown(Duration::from_secs(10));
    let _ = threads.vac.join();
    // The last alerts and the digest go out before the daemon is gone.
    notify_stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(5);
    while engine.notify.running() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    files.release(&why);
    tracing::info!("Stopped");
    drop(lock);
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

/// `capra start` without `--foreground`: re-executes detached and waits for
/// READY (or the child's reason for failing). Returns (pid, log file).
pub fn spawn_detached(settings: &Settings, reason: &str, config: Option<&Path>) -> Result<(u32, String)> {
    use std::os::unix::net::UnixDatagram;
    let mut cat = Catalog::open(settings, "capra")?;
    if let Some(d) = runs::daemon(&mut cat.client)? {
        return Err(DaemonError::StartRefused {
            pid: d.pid,
            host: d.host,
            started: d.started,
        }
        .into());
    }
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
    waited.map(|()| (child.id(), logfile.display().to_string()))
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
fn wait_ready(child: &mut std::process::Child, sock: &std::os::unix::net::UnixDatagram, logfile: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = String::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            for line in msg.lines() {
                if let Some(s) = line.strip_prefix("STATUS=") {
                    status = s.to_string();
                }
                if line == "READY=1" {
                    return Ok(());
                }
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

/// Asks the daemon to stop and waits until it is gone (or `timeout`).
pub fn stop(cat: &mut Catalog, reason: &str, timeout: Duration) -> Result<Option<runs::DaemonInfo>> {
    let Some(d) = runs::daemon(&mut cat.client)? else {
        return Ok(None);
    };
    let payload = format!("stop {reason}");
    cat.client
        .execute("SELECT pg_notify($1, $2)", &[&runs::CONTROL_CHANNEL, &payload])
        .ctx(|| "asking the daemon to stop".into())?;
    let end = Instant::now() + timeout;
    let local = d.host == crate::sys::hostname() && d.pid > 0;
    // The request carries the reason; a local daemon that has not reacted
    // within a few seconds (control database trouble) also gets SIGTERM.
    let signal_at = Instant::now() + Duration::from_secs(5);
    let mut signalled = false;
    while Instant::now() < end {
        if local && !signalled && Instant::now() >= signal_at {
            // SAFETY: signalling a pid; harmless if it is gone.
            unsafe {
                libc::kill(d.pid, libc::SIGTERM);
            }
            signalled = true;
        }
        // The lock goes last; then, for a local daemon, the process itself.
        if runs::daemon(&mut cat.client)?.is_none() && !(local && process_running(d.pid)) {
            return Ok(Some(d));
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
