//! The daemon's log, in Bucardo's shape so existing habits (and tail_n_mail
//! configs) keep working:
//!
//! ```text
//! (29358) [Mon Oct  5 11:06:23 2015] KID (confluence_sync) Totals: deletes=1 inserts=1 conflicts=0
//! ```
//!
//! Each thread says what it is (MCP the daemon, CTL a sync's controller, KID
//! a run, VAC the purger) through a thread-local role, so log calls stay
//! short. Destinations: `stderr` (systemd puts it in the journal), a file
//! path, or `journald` (structured, with ROLE and SYNC fields).

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::sync::Mutex;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

thread_local! {
    static CONTEXT: RefCell<(&'static str, Option<String>)> = const { RefCell::new(("MCP", None)) };
}

/// Restores the previous role when dropped.
pub struct RoleGuard {
    prev: (&'static str, Option<String>),
    _span: tracing::span::EnteredSpan,
}

impl Drop for RoleGuard {
    fn drop(&mut self) {
        let prev = std::mem::replace(&mut self.prev, ("MCP", None));
        CONTEXT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Sets this thread's role (`MCP`, `CTL`, `KID`, `VAC`) and sync for log
/// lines; journald entries carry them as the fields ROLE= and SYNC=
/// (`journalctl -u capra SYNC=mysync`).
pub fn role(role: &'static str, sync: Option<&str>) -> RoleGuard {
    let prev = CONTEXT.with(|c| std::mem::replace(&mut *c.borrow_mut(), (role, sync.map(String::from))));
    let span = tracing::info_span!("capra", role = role, sync = tracing::field::Empty).entered();
    if let Some(s) = sync {
        span.record("sync", s);
    }
    RoleGuard { prev, _span: span }
}

/// Adds a journald field to this thread's entries while the guard lives:
/// RUN= for a run, DB= for a database's watcher.
pub fn field(name: &'static str, value: &str) -> tracing::span::EnteredSpan {
    match name {
        "run" => tracing::info_span!("capra_run", run = value).entered(),
        _ => tracing::info_span!("capra_db", db = value).entered(),
    }
}

/// How lines look (the catalog's log_* settings).
#[derive(Clone, Debug)]
pub struct Style {
    /// `(PID) ` prefix.
    pub showpid: bool,
    /// 0 none, 1 epoch, 2 UTC, 3 local.
    pub showtime: u8,
    /// strftime format for 2/3 (empty: Bucardo's `%a %b %e %H:%M:%S %Y`).
    pub timer_format: String,
    /// Milliseconds.
    pub microsecond: bool,
    /// Level word first.
    pub showlevel: bool,
    /// `KID (sync)`.
    pub showsyncname: bool,
}

impl Default for Style {
    fn default() -> Self {
        Style {
            showpid: true,
            showtime: 3,
            timer_format: String::new(),
            microsecond: false,
            showlevel: false,
            showsyncname: true,
        }
    }
}

struct BucardoFormat(Style);

impl<S, N> FormatEvent<S, N> for BucardoFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let st = &self.0;
        if st.showlevel {
            write!(w, "{} ", event.metadata().level())?;
        }
        if st.showpid {
            write!(w, "({}) ", std::process::id())?;
        }
        if st.showtime > 0 {
            let fmt = if st.timer_format.is_empty() {
                if st.microsecond {
                    "%a %b %e %H:%M:%S%.3f %Y"
                } else {
                    "%a %b %e %H:%M:%S %Y"
                }
            } else {
                st.timer_format.as_str()
            };
            match st.showtime {
                1 => write!(w, "[{}] ", chrono::Utc::now().timestamp())?,
                2 => write!(w, "[{}] ", chrono::Utc::now().format(fmt))?,
                _ => write!(w, "[{}] ", chrono::Local::now().format(fmt))?,
            }
        }
        let (role, sync) = CONTEXT.with(|c| c.borrow().clone());
        match (&sync, st.showsyncname) {
            (Some(s), true) => write!(w, "{role} ({s}) ")?,
            _ => write!(w, "{role} ")?,
        }
        if *event.metadata().level() == Level::WARN {
            write!(w, "Warning! ")?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Where the log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Standard error (the journal under systemd).
    Stderr,
    /// journald, structured.
    Journald,
    /// Append to a file.
    File(std::path::PathBuf),
}

impl Dest {
    /// Parses a `logdest` value.
    pub fn parse(s: &str) -> Dest {
        match s.trim() {
            "" | "stderr" => Dest::Stderr,
            "journald" | "journal" | "syslog" => Dest::Journald,
            p => Dest::File(p.into()),
        }
    }
}

/// Maps Bucardo's log_level words to a filter on capra's own events.
fn filter(level: &str) -> EnvFilter {
    let l = match level {
        "terse" => "warn",
        "verbose" => "debug",
        "debug" => "trace",
        _ => "info",
    };
    EnvFilter::new(format!("warn,capra={l}"))
}

/// Installs the daemon's logger. Returns a note when journald was asked for
/// but is not there (the log then goes to stderr).
pub fn init(dest: &Dest, level: &str, style: Style) -> std::io::Result<Option<String>> {
    let mut note = None;
    // Under systemd stderr is the journal already: log to journald itself,
    // with the structured fields, unless told otherwise.
    let dest = &if *dest == Dest::Stderr && std::env::var_os("JOURNAL_STREAM").is_some() {
        Dest::Journald
    } else {
        dest.clone()
    };
    let journald = if *dest == Dest::Journald {
        match tracing_journald::layer() {
            Ok(l) => Some(l.with_syslog_identifier("capra".into()).with_field_prefix(None)),
            Err(e) => {
                note = Some(format!(
                    "logdest=journald but journald is not reachable ({e}); logging to stderr"
                ));
                None
            }
        }
    } else {
        None
    };
    let fmt_layer = match dest {
        Dest::File(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new().create(true).append(true).open(p)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(BucardoFormat(style.clone()))
                    .with_writer(Mutex::new(f))
                    .with_ansi(false)
                    .boxed(),
            )
        }
        _ if journald.is_some() => None,
        _ => Some(
            tracing_subscriber::fmt::layer()
                .event_format(BucardoFormat(style))
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .boxed(),
        ),
    };
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(fmt_layer)
        .with(journald)
        .try_init();
    Ok(note)
}

/// For CLI commands: warnings (e.g. a world-readable .pgpass) as
/// `capra: warning: ...` lines on stderr.
pub fn init_cli(verbose: u8) {
    struct Plain;
    impl<S, N> FormatEvent<S, N> for Plain
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, e: &Event<'_>) -> fmt::Result {
            let lvl = e.metadata().level();
            if *lvl <= Level::WARN {
                write!(w, "capra: warning: ")?;
            } else {
                write!(w, "capra: ")?;
            }
            ctx.field_format().format_fields(w.by_ref(), e)?;
            writeln!(w)
        }
    }
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let _ = tracing_subscriber::registry()
        .with(EnvFilter::new(format!("warn,capra={level}")))
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(Plain)
                .with_writer(std::io::stderr),
        )
        .try_init();
}

/// Appends a start/stop reason line to the reason file, as Bucardo does.
pub fn note_reason(path: &std::path::Path, what: &str, reason: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(
            f,
            "{} | {what} | {reason}",
            chrono::Local::now().format("%a %b %e %H:%M:%S %Y")
        );
    }
}
