//! What can go wrong starting, running and stopping the daemon: each variant
//! names the process, host or file involved.

use crate::error::{AreaError, Kind};

/// The daemon's own failures; wrapped by [`crate::Error`], which renders them.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// `host_safety_check` names other hosts.
    #[error("Cannot start: configured to only run on {allowed:?} (host_safety_check), this is {host:?}")]
    HostNotAllowed {
        /// The rule as configured.
        allowed: String,
        /// This host.
        host: String,
    },

    /// Another daemon uses this PID directory (one daemon per piddir; a
    /// daemon with a piddir of its own becomes a standby instead).
    #[error("capra is already running with piddir {piddir} (pid {pid}); stop it first with capra stop, or give another daemon a piddir of its own to run it as a standby")]
    PiddirInUse {
        /// The PID directory.
        piddir: String,
        /// The pid in its pid file.
        pid: String,
    },

    /// The detached daemon exited before it was ready.
    #[error("could not start: {why}")]
    StartFailed {
        /// The daemon's own last status line, or where its log is.
        why: String,
    },

    /// The detached daemon neither became ready nor exited in time.
    #[error("the daemon (pid {pid}) did not report ready within 120s; see {log}")]
    NotReady {
        /// Its process id.
        pid: u32,
        /// Its log file.
        log: String,
    },

    /// `capra stop` waited in vain.
    #[error("capra (pid {pid} on {host}) did not stop within {secs}s; it may be finishing a long run")]
    StopTimeout {
        /// Its process id.
        pid: i32,
        /// Its host.
        host: String,
        /// How long `stop` waited.
        secs: u64,
    },

    /// OpenSSL could not be set up (for cancelling runs on TLS connections).
    #[error("cannot set up TLS: {source}")]
    Tls {
        /// OpenSSL's errors.
        #[source]
        source: openssl::error::ErrorStack,
    },

    /// `metrics_listen` cannot be served: the port is taken, or the name
    /// does not resolve.
    #[error("cannot serve metrics on {addr} ({origin}): {source}{hint}; choose another with capra set metrics_listen=HOST:PORT, or metrics_listen in this daemon's config file")]
    MetricsListen {
        /// The `metrics_listen` value.
        addr: String,
        /// Where it was set.
        origin: String,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
        /// What usually causes it.
        hint: &'static str,
    },

    /// `metrics_listen` is not `HOST:PORT` (a config file's, or one the
    /// catalog got before `capra set` checked it).
    #[error("invalid {origin} {value:?} ({why})")]
    MetricsListenInvalid {
        /// The value.
        value: String,
        /// Where it was set.
        origin: String,
        /// What is allowed.
        why: String,
    },

    /// The engine stopped itself (its control connection is gone for good,
    /// or a part of it ended).
    #[error("{0}")]
    Fatal(String),
}

impl AreaError for DaemonError {
    fn kind(&self) -> Kind {
        match self {
            DaemonError::HostNotAllowed { .. } | DaemonError::MetricsListenInvalid { .. } => Kind::Input,
            DaemonError::MetricsListen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse => {
                Kind::Conflict
            }
            DaemonError::PiddirInUse { .. } => Kind::Conflict,
            DaemonError::StartFailed { .. }
            | DaemonError::NotReady { .. }
            | DaemonError::StopTimeout { .. }
            | DaemonError::Tls { .. }
            | DaemonError::MetricsListen { .. }
            | DaemonError::Fatal(_) => Kind::System,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
