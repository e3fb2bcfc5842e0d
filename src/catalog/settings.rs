//! Runtime settings kept in `capra.config` (`capra show all`, `capra set`).
//!
//! Bucardo's settings keep their names and defaults so a Bucardo user finds
//! what they know. Where capra's design has no counterpart (no forked
//! controllers, no kid processes) the `about` text says so plainly rather
//! than pretending the knob does something.

/// How a setting's value is checked by `capra set`.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `0`/`1` (also true/false/on/off/yes/no, stored as 0/1).
    Bool,
    /// Whole number within bounds.
    Int(i64, i64),
    /// Non-negative decimal seconds (Bucardo's sleeps); `-1` allowed when flagged.
    Seconds {
        /// Whether -1 ("never"/"fail instead") is allowed.
        allow_minus_one: bool,
    },
    /// One of a fixed list (stored lower-case).
    Enum(&'static [&'static str]),
    /// A built-in conflict strategy (`bucardo_` prefix accepted).
    Strategy,
    /// A crontab line, or empty.
    Cron,
    /// Free text.
    Text,
    /// An absolute path, or empty.
    Path,
    /// `HOST:PORT` to listen on, or empty (off).
    Listen,
}

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// Name as shown by `show all`.
    pub name: &'static str,
    /// Default value.
    pub default: &'static str,
    /// What it controls in capra.
    pub about: &'static str,
    /// How values are checked.
    pub kind: Kind,
}

const COMPAT: &str = "Bucardo compatibility only: no effect in capra";

/// The start of the `about` text of settings stored now for a feature a
/// later capra release wires (mail, multi-master); `set` warns about them.
const LATER: &str = "Stored for a later capra release, no effect yet";

macro_rules! s {
    ($n:expr, $d:expr, $k:expr, $a:expr) => {
        Setting {
            name: $n,
            default: $d,
            kind: $k,
            about: $a,
        }
    };
}

/// Every setting, in `show all` order (alphabetical).
pub const SETTINGS: &[Setting] = &[
    s!(
        "autosync_ddl",
        "newcol",
        Kind::Text,
        "Bucardo compatibility only: no effect in capra (DDL is not replicated; validate reports drift)"
    ),
    s!(
        "bucardo_vac",
        "1",
        Kind::Bool,
        "Whether the daemon purges replicated change rows from sources on its own (every vac_sleep seconds)"
    ),
    s!(
        "compare_schedule",
        "",
        Kind::Cron,
        "When the daemon compares every active sync with its first source, as capra compare SYNC does (a crontab line, server local time; empty: never); differences are mailed"
    ),
    s!(
        "compare_throttle",
        "0",
        Kind::Int(0, 60000),
        "Milliseconds capra compare pauses after each statement that reads a table, to spare busy servers"
    ),
    s!(
        "connect_timeout",
        "10",
        Kind::Int(1, 3600),
        "Seconds a connection to any database may take as a whole (TCP, TLS, start-up) before capra gives up"
    ),
    s!(
        "ctl_checkonkids_time",
        "10",
        Kind::Seconds { allow_minus_one: false },
        COMPAT
    ),
    s!(
        "ctl_createkid_time",
        "0.5",
        Kind::Seconds { allow_minus_one: false },
        COMPAT
    ),
    s!("ctl_sleep", "0.2", Kind::Seconds { allow_minus_one: false }, COMPAT),
    s!(
        "default_conflict_strategy",
        "latest",
        Kind::Strategy,
        "How multi-master syncs settle a key changed on two or more sources when neither the table nor the sync sets conflict_strategy: source, target, skip, random, latest, latest_all_tables or abort"
    ),
    s!(
        "default_email_from",
        "nobody@example.com",
        Kind::Text,
        "From address of alert and report mail (nobody@example.com: capra@HOST)"
    ),
    s!(
        "default_email_host",
        "localhost",
        Kind::Text,
        "SMTP server for alert and report mail"
    ),
    s!(
        "default_email_port",
        "25",
        Kind::Int(1, 65535),
        "SMTP port (25; 587 with email_tls=starttls; 465 with email_tls=tls)"
    ),
    s!(
        "default_email_to",
        "nobody@example.com",
        Kind::Text,
        "Recipients of alert and report mail, comma separated; nothing is sent while it is nobody@example.com"
    ),
    s!(
        "email_alert_interval",
        "600",
        Kind::Seconds { allow_minus_one: false },
        "Seconds between digests: an incident (a failing sync, a late one) mails once when it starts and when it ends; its repeats go into one digest per interval"
    ),
    s!(
        "email_auth_pass",
        "",
        Kind::Text,
        "SMTP AUTH password (never shown)"
    ),
    s!(
        "email_auth_user",
        "",
        Kind::Text,
        "SMTP AUTH user (empty: no AUTH)"
    ),
    s!(
        "email_backlog_rows",
        "0",
        Kind::Int(0, i64::MAX),
        "Mail when a sync has more change rows than this waiting on a source (checked every minute; 0: never)"
    ),
    s!(
        "email_debug_file",
        "",
        Kind::Path,
        "Also append every mail capra sends to this file (empty: no)"
    ),
    s!(
        "email_sendmail",
        "/usr/sbin/sendmail",
        Kind::Path,
        "The sendmail program, with email_transport=sendmail"
    ),
    s!(
        "email_timeout",
        "10",
        Kind::Seconds { allow_minus_one: false },
        "Seconds an SMTP exchange may take before the mail is queued and retried"
    ),
    s!(
        "email_tls",
        "none",
        Kind::Enum(&["none", "starttls", "tls"]),
        "SMTP encryption: none, starttls (required), or tls (implicit, port 465)"
    ),
    s!(
        "email_transport",
        "smtp",
        Kind::Enum(&["smtp", "sendmail"]),
        "How mail leaves: smtp (default_email_host) or sendmail (email_sendmail)"
    ),
    s!("endsync_sleep", "1.0", Kind::Seconds { allow_minus_one: false }, COMPAT),
    s!(
        "ha_lease",
        "10",
        Kind::Int(3, 600),
        "Seconds the leading daemon's lease lasts: it renews every third of it, stops writing before it runs out, and a standby takes over once it has (at once after a kill)"
    ),
    s!(
        "host_safety_check",
        "",
        Kind::Text,
        "Refuse to start the daemon unless the host name matches: exact name, =a,b,c or ~regex"
    ),
    s!(
        "isolation_level",
        "repeatable read",
        Kind::Enum(&["repeatable read", "serializable"]),
        "Isolation of the snapshot a run reads each source in"
    ),
    s!(
        "kid_deadlock_sleep",
        "0.5",
        Kind::Seconds { allow_minus_one: true },
        "Seconds before re-running after a deadlock; -1 treats it as an ordinary failure"
    ),
    s!(
        "kid_nodeltarows_sleep",
        "0.5",
        Kind::Seconds { allow_minus_one: false },
        COMPAT
    ),
    s!("kid_pingtime", "60", Kind::Seconds { allow_minus_one: false }, COMPAT),
    s!(
        "kid_restart_sleep",
        "1",
        Kind::Seconds { allow_minus_one: false },
        "First retry delay after a failed run; doubles on each failure up to retry_max_sleep"
    ),
    s!(
        "kid_serial_sleep",
        "0.5",
        Kind::Seconds { allow_minus_one: true },
        "Seconds before re-running after a serialization failure; -1 treats it as an ordinary failure"
    ),
    s!("kid_sleep", "0.5", Kind::Seconds { allow_minus_one: false }, COMPAT),
    s!(
        "lock_timeout",
        "10",
        Kind::Seconds { allow_minus_one: false },
        "Seconds a run waits for a lock: its shared locks on a source while DDL holds a table (then it is retried), and on a target a TRUNCATE queued behind a long query (then it empties the table with DELETE instead)"
    ),
    s!("log_conflict_file", "bucardo_conflict.log", Kind::Text, COMPAT),
    s!(
        "log_level",
        "normal",
        Kind::Enum(&["terse", "normal", "verbose", "debug"]),
        "How much the daemon logs"
    ),
    s!(
        "log_microsecond",
        "0",
        Kind::Bool,
        "Add milliseconds to log time stamps"
    ),
    s!("log_showlevel", "0", Kind::Bool, "Start each log line with its level"),
    s!("log_showline", "0", Kind::Bool, COMPAT),
    s!("log_showpid", "1", Kind::Bool, "Start each log line with (PID)"),
    s!(
        "log_showsyncname",
        "1",
        Kind::Bool,
        "Show the sync name after the role in log lines: KID (sync)"
    ),
    s!(
        "log_showtime",
        "3",
        Kind::Int(0, 3),
        "Log time stamps: 0 none, 1 epoch seconds, 2 UTC, 3 local time"
    ),
    s!(
        "log_timer_format",
        "",
        Kind::Text,
        "strftime format for log time stamps (log_showtime 2 or 3)"
    ),
    s!(
        "mcp_dbproblem_sleep",
        "15",
        Kind::Seconds { allow_minus_one: false },
        "Seconds between reconnection attempts when the control database is unreachable"
    ),
    s!(
        "mcp_loop_sleep",
        "0.2",
        Kind::Seconds { allow_minus_one: false },
        COMPAT
    ),
    s!(
        "mcp_pingtime",
        "60",
        Kind::Seconds { allow_minus_one: false },
        "Seconds between checks of each connection watching a source for changes (reconnected when a check fails); each check also runs that source's autokick syncs, the safety net that bounds how long any missed change waits"
    ),
    s!("mcp_vactime", "60", Kind::Seconds { allow_minus_one: false }, COMPAT),
    s!(
        "metrics_listen",
        "",
        Kind::Listen,
        "Where the daemon serves Prometheus metrics (HOST:PORT, http://HOST:PORT/metrics; empty: off); metrics_listen in a daemon's config file overrides it for that daemon; takes effect at daemon start"
    ),
    s!(
        "metrics_refresh",
        "15",
        Kind::Int(1, 3600),
        "Seconds between the daemon's refreshes of the metrics that need the databases (pending changes, lag, last good run, database_up, change log rows); takes effect on reload"
    ),
    s!(
        "piddir",
        "/var/run/capra",
        Kind::Path,
        "Directory for the daemon's PID file and stop file"
    ),
    s!(
        "purge_schedule",
        "",
        Kind::Cron,
        "When the daemon purges applied change rows (a crontab line, server local time); empty: every vac_sleep seconds"
    ),
    s!(
        "quick_delta_check",
        "1",
        Kind::Bool,
        "Bucardo compatibility only: no effect in capra (every run finds the changed tables first, in one query)"
    ),
    s!(
        "reason_file",
        "capra.restart.reason.log",
        Kind::Text,
        "File in piddir where start and stop reasons are appended"
    ),
    s!(
        "reload_config_timeout",
        "30",
        Kind::Seconds { allow_minus_one: false },
        "How long reload waits for the daemon to confirm"
    ),
    s!(
        "retry_max_sleep",
        "60",
        Kind::Seconds { allow_minus_one: false },
        "Longest wait between retries of a failing sync"
    ),
    s!(
        "run_history_days",
        "30",
        Kind::Int(1, 36500),
        "Days of run history kept in the control database (the last good and last bad run are always kept)"
    ),
    s!(
        "statement_chunk_size",
        "6000",
        Kind::Int(1, 1_000_000),
        "Most keys sent in one DELETE statement"
    ),
    s!("stats_script_url", "http://www.bucardo.org/", Kind::Text, COMPAT),
    s!(
        "status_report_schedule",
        "",
        Kind::Cron,
        "When the daemon mails the capra status table (a crontab line, server local time, such as '0 8 * * *'; empty: never)"
    ),
    s!(
        "stopfile",
        "fullstopcapra",
        Kind::Text,
        "File in piddir whose appearance makes the daemon stop"
    ),
    s!("syslog_facility", "log_local1", Kind::Text, COMPAT),
    s!(
        "tailmail_config",
        "",
        Kind::Path,
        "A tail_n_mail config file the daemon runs on tailmail_schedule, as capra tailmail CONFIG does (empty: none)"
    ),
    s!(
        "tailmail_schedule",
        "*/5 * * * *",
        Kind::Cron,
        "When the daemon runs tailmail_config (a crontab line, server local time)"
    ),
    s!(
        "tcp_keepalives_count",
        "4",
        Kind::Int(1, 1000),
        "Unanswered TCP keepalive probes after which a connection to any database counts as dead"
    ),
    s!(
        "tcp_keepalives_idle",
        "10",
        Kind::Int(1, 86400),
        "Seconds a connection to any database may be silent before TCP keepalive probes start"
    ),
    s!(
        "tcp_keepalives_interval",
        "5",
        Kind::Int(1, 86400),
        "Seconds between TCP keepalive probes"
    ),
    s!(
        "tcp_user_timeout",
        "30",
        Kind::Int(0, 86400),
        "Seconds data sent to a database may stay unacknowledged before the connection counts as dead (0: the system's)"
    ),
    s!("vac_run", "30", Kind::Seconds { allow_minus_one: false }, COMPAT),
    s!(
        "vac_sleep",
        "120",
        Kind::Seconds { allow_minus_one: false },
        "Seconds between the daemon's purges of replicated change rows (unless purge_schedule is set)"
    ),
    s!("warning_file", "capra.warning.log", Kind::Text, COMPAT),
    s!(
        "worker_threads",
        "4",
        Kind::Int(1, 256),
        "Runs that may execute at once (the worker pool size); takes effect at daemon start"
    ),
];

/// Why setting a value changes nothing (Bucardo-only names, and features
/// a later release wires), as the end of the one-line warning `set`
/// prints after "has no effect in capra": it never says that twice.
pub fn inert(s: &Setting) -> Option<String> {
    if let Some(rest) = s.about.strip_prefix(COMPAT) {
        let rest = rest.trim();
        return Some(if rest.is_empty() {
            " (a Bucardo setting, kept for old scripts)".to_string()
        } else {
            format!(" {rest}")
        });
    }
    s.about.strip_prefix(LATER).map(|rest| format!(" yet{rest}"))
}

/// Looks a setting up by name (case-insensitive).
pub fn find(name: &str) -> Option<&'static Setting> {
    let lower = name.to_lowercase();
    SETTINGS.iter().find(|s| s.name == lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted() {
        let names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(find("LOG_LEVEL").map(|s| s.name), Some("log_level"));
    }
}
