//! Where the control database's connection settings and the daemon's own
//! settings come from, first found wins: command-line flags, `CAPRA_*`
//! environment (both handled by the CLI parser), `--config FILE`,
//! `~/.caprarc`, `/etc/capra/capra.conf`, then libpq's own defaults
//! (`PGHOST`, `PGPORT`, `PGSERVICE`, `.pgpass`) and finally capra's
//! (`user=capra`, `dbname=capra`).

pub mod file;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::pg::connect::ConnSpec;

/// What the command line said (after clap folded in `CAPRA_*`).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `-h/--dbhost`.
    pub dbhost: Option<String>,
    /// `-p/--dbport`.
    pub dbport: Option<u16>,
    /// `-U/--dbuser`.
    pub dbuser: Option<String>,
    /// `-d/--dbname`.
    pub dbname: Option<String>,
    /// `-P/--dbpass`.
    pub dbpass: Option<crate::sys::Secret>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
}

/// Resolved settings for this invocation.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How to reach the control database.
    pub control: ConnSpec,
    /// PID directory, if a file set it (else the catalog's `piddir`).
    pub piddir: Option<PathBuf>,
    /// Log destination: `journald`, `stderr` or a file path.
    pub logdest: Option<String>,
    /// Log level word.
    pub loglevel: Option<String>,
    /// Where this daemon serves metrics, if a file said (else the
    /// catalog's `metrics_listen`): daemons sharing a host need their own.
    pub metrics_listen: Option<String>,
    /// Whether the control user is capra's default (nobody named one).
    pub user_defaulted: bool,
}

/// The system-wide file; `CAPRA_SYSCONF` points elsewhere (tests, packaging
/// checks in a throwaway root).
pub fn system_config_path() -> PathBuf {
    std::env::var_os("CAPRA_SYSCONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/capra/capra.conf"))
}

/// Layers flags over files and returns the settings.
pub fn load(flags: &Flags) -> Result<Settings, file::FileError> {
    let mut layers: Vec<BTreeMap<String, String>> = Vec::new();
    if let Some(p) = &flags.config {
        layers.push(file::read(p)?);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let rc = PathBuf::from(home).join(".caprarc");
        if rc.exists() {
            layers.push(file::read(&rc)?);
        }
    }
    let sys = system_config_path();
    if sys.exists() {
        layers.push(file::read(&sys)?);
    }
    let get = |k: &str| layers.iter().find_map(|l| l.get(k).cloned());

    let port = match flags.dbport {
        Some(p) => Some(p),
        None => match get("dbport") {
            Some(p) => Some(p.parse::<u16>().map_err(|_| file::FileError::Syntax {
                path: "config".into(),
                line: 0,
                text: format!("dbport = {p} (must be a port number)"),
            })?),
            None => None,
        },
    };
    let env_set = |k: &str| std::env::var(k).map(|v| !v.is_empty()).unwrap_or(false);
    let uses_service = env_set("PGSERVICE");
    let named_user = flags.dbuser.clone().or_else(|| get("dbuser"));
    let user_defaulted = named_user.is_none() && !env_set("PGUSER") && !uses_service;
    let user = named_user.or_else(|| user_defaulted.then(|| "capra".to_string()));
    let dbname = flags
        .dbname
        .clone()
        .or_else(|| get("dbname"))
        .or_else(|| (!env_set("PGDATABASE") && !uses_service).then(|| "capra".to_string()));
    Ok(Settings {
        control: ConnSpec {
            host: flags.dbhost.clone().or_else(|| get("dbhost")),
            port,
            user,
            dbname,
            password: flags
                .dbpass
                .as_ref()
                .map(|p| p.expose().to_string())
                .or_else(|| get("dbpass")),
            conn: String::new(),
            service: None,
        },
        piddir: get("piddir").map(PathBuf::from),
        logdest: get("logdest"),
        loglevel: get("loglevel"),
        metrics_listen: get("metrics_listen"),
        user_defaulted,
    })
}

#[cfg(test)]
mod tests {
    use super::Flags;

    #[test]
    fn the_password_flag_never_shows_in_debug() {
        let f = Flags {
            dbpass: Some(crate::sys::Secret::new("s3cret-pass")),
            ..Default::default()
        };
        let shown = format!("{f:?}");
        assert!(!shown.contains("s3cret") && shown.contains("********"), "{shown}");
    }
}
