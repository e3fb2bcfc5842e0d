//! Connecting the way libpq does.
//!
//! postgres 0.19 reads no `PGHOST`, `.pgpass` or service file and knows only
//! three `sslmode`s, while capra's users expect everything `psql` honours.
//! This module resolves a [`ConnSpec`] into a ready `postgres::Config` plus a
//! TLS connector, in libpq's order: explicit values, then the service file,
//! then `PG*` environment variables, then built-in defaults; the password
//! last from `PGPASSWORD` or the password file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres::config::SslMode;
use postgres_openssl::MakeTlsConnector;

/// Default bound on establishing a connection; libpq waits forever, which is
/// exactly the hang capra promises never to have.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How every connection capra opens notices a peer that went silent (a
/// network partition: no reset, packets just stop). Keepalives catch it
/// while capra waits for an answer, `tcp_user_timeout` while capra's own
/// data goes unacknowledged; with the defaults either takes about 30 s.
/// The settings of the same names (`capra set`) replace these, and a
/// database's own `conn=` keywords win over both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDefaults {
    /// Whole-connection bound (TCP, TLS and startup).
    pub connect_timeout: Duration,
    /// Idle time before the first keepalive probe.
    pub keepalives_idle: Duration,
    /// Time between probes.
    pub keepalives_interval: Duration,
    /// Probes lost before the connection is dropped.
    pub keepalives_count: u32,
    /// Longest time sent data may stay unacknowledged (0: the system's).
    pub tcp_user_timeout: Duration,
}

impl Default for NetDefaults {
    fn default() -> Self {
        NetDefaults {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalives_idle: Duration::from_secs(10),
            keepalives_interval: Duration::from_secs(5),
            keepalives_count: 4,
            tcp_user_timeout: Duration::from_secs(30),
        }
    }
}

static NET: std::sync::RwLock<Option<NetDefaults>> = std::sync::RwLock::new(None);

/// The network defaults in force.
pub fn net_defaults() -> NetDefaults {
    NET.read().unwrap_or_else(|e| e.into_inner()).unwrap_or_default()
}

/// Replaces the network defaults (from the catalog's settings); returns
/// whether they changed, so pools know to reconnect.
pub fn set_net_defaults(d: NetDefaults) -> bool {
    let mut g = NET.write().unwrap_or_else(|e| e.into_inner());
    let changed = g.unwrap_or_default() != d;
    *g = Some(d);
    changed
}

/// What the catalog (or the command line) says about a database.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnSpec {
    /// Host name, address, or socket directory.
    pub host: Option<String>,
    /// TCP port.
    pub port: Option<u16>,
    /// Role to log in as.
    pub user: Option<String>,
    /// Database name.
    pub dbname: Option<String>,
    /// Password; never printed.
    pub password: Option<String>,
    /// Extra libpq keywords, `key=value` separated by spaces or `;`.
    pub conn: String,
    /// libpq service name (from `pg_service.conf`).
    pub service: Option<String>,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("conn", &self.conn)
            .field("service", &self.service)
            .finish()
    }
}

/// Why a connection could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum ConnSpecError {
    /// A `conn=` keyword libpq has but capra cannot honour, or a typo.
    #[error("unknown connection keyword '{0}' (known: {known})", known = KNOWN_KEYWORDS.join(", "))]
    UnknownKeyword(String),
    /// A keyword with a value that cannot work.
    #[error("invalid value for connection keyword '{key}': {value:?} ({why})")]
    BadValue {
        /// The keyword.
        key: String,
        /// What was given.
        value: String,
        /// Why it is wrong.
        why: String,
    },
    /// `conn=` text that is not `key=value` pairs.
    #[error("malformed connection keywords {0:?}: expected key=value pairs separated by spaces or ';'")]
    Malformed(String),
    /// `service=` names a service that no service file defines.
    #[error("service \"{0}\" not found in any service file (looked in {1})")]
    UnknownService(String, String),
    /// TLS set-up failed (bad certificate path, unreadable key).
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

const KNOWN_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "connect_timeout",
    "application_name",
    "options",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "service",
];

/// A connection ready to open: the driver config and the TLS connector.
#[derive(Clone)]
pub struct Resolved {
    /// The driver configuration (holds the password; never print it).
    pub config: postgres::Config,
    /// TLS connector honouring sslmode, root certificate and client keys.
    pub tls: MakeTlsConnector,
    /// Human summary without the password, for messages: `host=… port=… dbname=… user=…`.
    pub summary: String,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

/// One `key='value'` pair as [`parse_keywords`] reads it back, whatever
/// the value holds (spaces, quotes, backslashes).
pub fn keyword(key: &str, value: &str) -> String {
    format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Parses `conn=` text: `sslmode=require`, `sslmode=require;connect_timeout=5`,
/// `sslmode=require sslrootcert='/etc/x y.crt'`.
pub fn parse_keywords(text: &str) -> Result<BTreeMap<String, String>, ConnSpecError> {
    let mut out = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ';') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(ConnSpecError::Malformed(text.to_string()));
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    _ => value.push(c),
                }
            }
            if !closed {
                return Err(ConnSpecError::Malformed(text.to_string()));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == ';' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let key = key.to_lowercase();
        if !KNOWN_KEYWORDS.contains(&key.as_str()) {
            return Err(ConnSpecError::UnknownKeyword(key));
        }
        out.insert(key, value);
    }
    Ok(out)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn home() -> Option<PathBuf> {
    env("HOME").map(PathBuf::from)
}

/// Candidate service files, in libpq's order.
fn service_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = env("PGSERVICEFILE") {
        v.push(PathBuf::from(f));
    } else if let Some(h) = home() {
        v.push(h.join(".pg_service.conf"));
    }
    if let Some(d) = env("PGSYSCONFDIR") {
        v.push(Path::new(&d).join("pg_service.conf"));
    } else {
        v.push(PathBuf::from("/etc/postgresql-common/pg_service.conf"));
        v.push(PathBuf::from("/etc/pg_service.conf"));
    }
    v
}

/// Reads one service's keywords from the first service file that has it.
fn lookup_service(name: &str) -> Result<BTreeMap<String, String>, ConnSpecError> {
    let files = service_files();
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let mut in_section = false;
        let mut found = false;
        let mut map = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                if in_section {
                    break;
                }
                in_section = &line[1..line.len() - 1] == name;
                found |= in_section;
                continue;
            }
            if in_section {
                if let Some((k, v)) = line.split_once('=') {
                    map.insert(k.trim().to_lowercase(), v.trim().to_string());
                }
            }
        }
        if found {
            return Ok(map);
        }
    }
    Err(ConnSpecError::UnknownService(
        name.to_string(),
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// The OS user name, libpq's default role.
fn os_user() -> String {
    if let Some(u) = env("USER").or_else(|| env("LOGNAME")) {
        return u;
    }
    // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy
    // the name out immediately and call it from one thread at start-up.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() {
            if let Ok(s) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return s.to_string();
            }
        }
    }
    "postgres".to_string()
}

/// libpq's default socket directory on Debian-family systems, else /tmp.
fn default_socket_dir() -> String {
    for d in ["/var/run/postgresql", "/run/postgresql"] {
        if Path::new(d).is_dir() {
            return d.to_string();
        }
    }
    "/tmp".to_string()
}

/// Reads the password from a pgpass-format file, as libpq does: first line
/// whose host, port, database and user match (`*` matches anything, `\`
/// escapes `:` and `\`). Files readable by group or others are ignored.
pub fn pgpass_lookup(file: &Path, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; permissions should be u=rw (0600) or less, ignoring it",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host_key = if host.starts_with('/') { "localhost" } else { host };
    let port_s = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n)
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], host_key) && m(&fields[1], &port_s) && m(&fields[2], db) && m(&fields[3], user) {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Resolves a spec into a connectable config, applying libpq's defaults.
pub fn resolve(spec: &ConnSpec, application_name: &str) -> Result<Resolved, ConnSpecError> {
    let kw = gather_keywords(spec)?;
    let host = kw
        .get("host")
        .cloned()
        .or_else(|| kw.get("hostaddr").cloned())
        .unwrap_or_else(default_socket_dir);
    let port: u16 = match kw.get("port") {
        Some(p) => p.parse().map_err(|_| ConnSpecError::BadValue {
            key: "port".into(),
            value: p.clone(),
            why: "must be a number between 1 and 65535".into(),
        })?,
        None => 5432,
    };
    let user = kw.get("user").cloned().unwrap_or_else(os_user);
    let dbname = kw.get("dbname").cloned().unwrap_or_else(|| user.clone());
    let login = Login {
        host: &host,
        port,
        user: &user,
        dbname: &dbname,
    };

    let mut cfg = postgres::Config::new();
    set_endpoint(&mut cfg, &kw, &login, application_name)?;
    set_network(&mut cfg, &kw)?;
    set_target_session_attrs(&mut cfg, &kw)?;
    if let Some(p) = password(&kw, &login) {
        cfg.password(p.as_bytes());
    }

    let sslmode = kw.get("sslmode").map(|s| s.as_str()).unwrap_or("prefer");
    let (tls, mode) = tls_connector(sslmode, &kw)?;
    cfg.ssl_mode(mode.driver());

    let mut summary = format!("host={host} port={port} dbname={dbname} user={user}");
    if mode != TlsMode::Prefer {
        summary.push_str(&format!(" sslmode={}", mode.as_str()));
    }
    Ok(Resolved {
        config: cfg,
        tls,
        summary,
    })
}

/// Every keyword in libpq's order of precedence: the spec's explicit
/// fields over its `conn=` keywords, then the service file, then `PG*`
/// environment variables.
fn gather_keywords(spec: &ConnSpec) -> Result<BTreeMap<String, String>, ConnSpecError> {
    let mut kw = parse_keywords(&spec.conn)?;
    // Explicit fields override conn= keywords of the same name.
    let mut set = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            kw.insert(k.to_string(), v.clone());
        }
    };
    set("host", &spec.host);
    set("port", &spec.port.map(|p| p.to_string()));
    set("user", &spec.user);
    set("dbname", &spec.dbname);
    set("password", &spec.password);
    set("service", &spec.service);
    let service = kw.get("service").cloned().or_else(|| env("PGSERVICE"));
    if let Some(svc) = service {
        for (k, v) in lookup_service(&svc)? {
            kw.entry(k).or_insert(v);
        }
    }
    for (k, e) in ENV_KEYWORDS {
        if !kw.contains_key(*k) {
            if let Some(v) = env(e) {
                kw.insert(k.to_string(), v);
            }
        }
    }
    Ok(kw)
}

/// The keywords libpq also reads from the environment, with their variables.
const ENV_KEYWORDS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("dbname", "PGDATABASE"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

/// Where and as whom a connection logs in, once defaults are applied.
struct Login<'a> {
    /// Host names, addresses or socket directories, comma-separated.
    host: &'a str,
    /// TCP port.
    port: u16,
    /// Role.
    user: &'a str,
    /// Database.
    dbname: &'a str,
}

/// Hosts, addresses, port, role, database, application name and options.
fn set_endpoint(
    cfg: &mut postgres::Config,
    kw: &BTreeMap<String, String>,
    login: &Login<'_>,
    application_name: &str,
) -> Result<(), ConnSpecError> {
    for h in login.host.split(',') {
        cfg.host(h.trim());
    }
    if let Some(addr) = kw.get("hostaddr") {
        for a in addr.split(',') {
            let ip = a.trim().parse().map_err(|_| ConnSpecError::BadValue {
                key: "hostaddr".into(),
                value: a.to_string(),
                why: "must be an IP address".into(),
            })?;
            cfg.hostaddr(ip);
        }
    }
    cfg.port(login.port).user(login.user).dbname(login.dbname);
    let app = kw
        .get("application_name")
        .cloned()
        .unwrap_or_else(|| application_name.to_string());
    cfg.application_name(&app);
    if let Some(o) = kw.get("options") {
        cfg.options(o);
    }
    Ok(())
}

/// A keyword's value in whole seconds.
fn secs(k: &str, v: &str) -> Result<Duration, ConnSpecError> {
    v.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| ConnSpecError::BadValue {
            key: k.into(),
            value: v.into(),
            why: "must be a whole number of seconds".into(),
        })
}

/// The connect timeout, keepalives and TCP user timeout: the keywords,
/// else capra's network defaults.
fn set_network(cfg: &mut postgres::Config, kw: &BTreeMap<String, String>) -> Result<(), ConnSpecError> {
    let net = net_defaults();
    let timeout = match kw.get("connect_timeout") {
        Some(v) => match secs("connect_timeout", v)? {
            // libpq: 0 means wait forever; capra keeps its bound instead.
            d if d.is_zero() => net.connect_timeout,
            d => d.max(Duration::from_secs(1)),
        },
        None => net.connect_timeout,
    };
    cfg.connect_timeout(timeout);
    cfg.keepalives(kw.get("keepalives").is_none_or(|v| v != "0"));
    cfg.keepalives_idle(match kw.get("keepalives_idle") {
        Some(v) => secs("keepalives_idle", v)?,
        None => net.keepalives_idle,
    });
    cfg.keepalives_interval(match kw.get("keepalives_interval") {
        Some(v) => secs("keepalives_interval", v)?,
        None => net.keepalives_interval,
    });
    cfg.keepalives_retries(match kw.get("keepalives_count") {
        Some(v) => v.parse().map_err(|_| ConnSpecError::BadValue {
            key: "keepalives_count".into(),
            value: v.clone(),
            why: "must be a number".into(),
        })?,
        None => net.keepalives_count,
    });
    let user_timeout = match kw.get("tcp_user_timeout") {
        Some(v) => Duration::from_millis(v.parse().map_err(|_| ConnSpecError::BadValue {
            key: "tcp_user_timeout".into(),
            value: v.clone(),
            why: "must be milliseconds".into(),
        })?),
        None => net.tcp_user_timeout,
    };
    if !user_timeout.is_zero() {
        cfg.tcp_user_timeout(user_timeout);
    }
    Ok(())
}

/// `target_session_attrs`, of the values the driver knows.
fn set_target_session_attrs(cfg: &mut postgres::Config, kw: &BTreeMap<String, String>) -> Result<(), ConnSpecError> {
    if let Some(v) = kw.get("target_session_attrs") {
        use postgres::config::TargetSessionAttrs as T;
        cfg.target_session_attrs(match v.as_str() {
            "any" => T::Any,
            "read-write" => T::ReadWrite,
            "read-only" => T::ReadOnly,
            _ => {
                return Err(ConnSpecError::BadValue {
                    key: "target_session_attrs".into(),
                    value: v.clone(),
                    why: "capra supports any, read-write, read-only".into(),
                })
            }
        });
    }
    Ok(())
}

/// The password: explicit, PGPASSWORD (already folded in), then the
/// password file's first line matching one of the hosts.
fn password(kw: &BTreeMap<String, String>, login: &Login<'_>) -> Option<String> {
    match kw.get("password") {
        Some(p) => Some(p.clone()),
        None => {
            let file = kw
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| home().map(|h| h.join(".pgpass")));
            file.and_then(|f| {
                login
                    .host
                    .split(',')
                    .find_map(|h| pgpass_lookup(&f, h.trim(), login.port, login.dbname, login.user))
            })
        }
    }
}

/// libpq's `sslmode`: whether to use TLS and how far to trust the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    /// No TLS.
    Disable,
    /// libpq tries plain text first; capra, like the driver, prefers TLS.
    Allow,
    /// TLS when the server offers it.
    Prefer,
    /// TLS always; the CA is checked when a root certificate exists.
    Require,
    /// TLS with the CA checked.
    VerifyCa,
    /// TLS with the CA and the host name checked.
    VerifyFull,
}

impl TlsMode {
    const ALL: [TlsMode; 6] = [
        TlsMode::Disable,
        TlsMode::Allow,
        TlsMode::Prefer,
        TlsMode::Require,
        TlsMode::VerifyCa,
        TlsMode::VerifyFull,
    ];

    /// The keyword's spelling.
    fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    /// Reads the keyword's value.
    fn parse(s: &str) -> Result<TlsMode, ConnSpecError> {
        TlsMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ConnSpecError::BadValue {
                key: "sslmode".into(),
                value: s.into(),
                why: "use disable, allow, prefer, require, verify-ca or verify-full".into(),
            })
    }

    /// The driver's mode (it knows three).
    fn driver(self) -> SslMode {
        match self {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }
}

/// Builds the TLS connector for an sslmode, with libpq's certificate files;
/// returns it with the mode read.
fn tls_connector(sslmode: &str, kw: &BTreeMap<String, String>) -> Result<(MakeTlsConnector, TlsMode), ConnSpecError> {
    let tls_err = |e: openssl::error::ErrorStack| ConnSpecError::Tls(e.to_string());
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls_err)?;
    let pgdir = home().map(|h| h.join(".postgresql"));
    let root = kw
        .get("sslrootcert")
        .map(PathBuf::from)
        .or_else(|| pgdir.as_ref().map(|d| d.join("root.crt")));
    let root = root.filter(|p| p.exists());
    // The root certificate to verify the server with, if any.
    let mode = TlsMode::parse(sslmode)?;
    let verify_with = match mode {
        TlsMode::Disable | TlsMode::Allow | TlsMode::Prefer => None,
        // libpq: require verifies the CA when a root certificate file exists.
        TlsMode::Require => root,
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            if root.is_none() {
                return Err(ConnSpecError::BadValue {
                    key: "sslmode".into(),
                    value: sslmode.into(),
                    why: "needs a root certificate: set sslrootcert=FILE or create ~/.postgresql/root.crt".into(),
                });
            }
            root
        }
    };
    if let Some(root) = verify_with {
        b.set_ca_file(&root)
            .map_err(|e| ConnSpecError::Tls(format!("{}: {e}", root.display())))?;
        b.set_verify(SslVerifyMode::PEER);
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    let cert = kw
        .get("sslcert")
        .map(PathBuf::from)
        .or_else(|| pgdir.as_ref().map(|d| d.join("postgresql.crt")))
        .filter(|p| p.exists());
    if let Some(cert) = cert {
        let key = kw
            .get("sslkey")
            .map(PathBuf::from)
            .or_else(|| pgdir.as_ref().map(|d| d.join("postgresql.key")))
            .ok_or_else(|| ConnSpecError::Tls("sslcert given without sslkey".into()))?;
        b.set_certificate_chain_file(&cert)
            .map_err(|e| ConnSpecError::Tls(format!("{}: {e}", cert.display())))?;
        b.set_private_key_file(&key, SslFiletype::PEM)
            .map_err(|e| ConnSpecError::Tls(format!("{}: {e}", key.display())))?;
    }
    let mut connector = MakeTlsConnector::new(b.build());
    let full = mode == TlsMode::VerifyFull;
    connector.set_callback(move |c, _domain| {
        if !full {
            c.set_verify_hostname(false);
        }
        Ok(())
    });
    Ok((connector, mode))
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server or the network said no.
    #[error("{}", super::error::describe(.0))]
    Pg(#[from] postgres::Error),
    /// Nothing answered within the connect timeout (a server that accepts
    /// TCP and then never speaks, or a silent network).
    #[error("no answer within {0:?} (connect_timeout); the server accepted the connection but did not complete the PostgreSQL start-up")]
    Timeout(Duration),
}

impl ConnectError {
    /// The driver error, if there is one.
    pub fn pg(&self) -> Option<&postgres::Error> {
        match self {
            ConnectError::Pg(e) => Some(e),
            ConnectError::Timeout(_) => None,
        }
    }
}

/// Resolves a database's settings like libpq; failures name `target`.
pub fn resolve_for(spec: &ConnSpec, application_name: &str, target: &str) -> crate::Result<Resolved> {
    resolve(spec, application_name).map_err(|source| crate::Error::ConnSpec {
        target: target.to_string(),
        source,
    })
}

/// The one way capra connects: opens a resolved connection, turning a
/// failure into one error that names `target` and how it was reached.
pub fn open(r: &Resolved, target: &str) -> crate::Result<postgres::Client> {
    connect(r).map_err(|source| crate::Error::Connect {
        target: target.to_string(),
        summary: r.summary.clone(),
        detail: source.to_string(),
        source,
    })
}

/// Resolves and opens a connection to a database capra knows by `name`.
pub fn open_db(spec: &ConnSpec, name: &str) -> crate::Result<postgres::Client> {
    let target = format!("database \"{name}\"");
    open(&resolve_for(spec, "capra", &target)?, &target)
}

/// Session settings on every connection, in this order:
/// - `search_path` is pinned to `pg_catalog, pg_temp` before anything else
///   runs, so no operator, function or type that another user creates in a
///   schema of the default path (`public`, `"$user"`) is ever resolved by
///   capra's SQL and run with capra's rights;
/// - nothing the server's defaults set (idle_in_transaction_session_timeout,
///   transaction_timeout on 17+, statement_timeout) may kill capra's long
///   transactions; capra sets its own lock_timeout where it waits for locks.
const SESSION_SETUP: &str = "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false); \
     SELECT pg_catalog.set_config(name, '0', false) FROM pg_catalog.pg_settings \
     WHERE name IN ('idle_in_transaction_session_timeout', 'transaction_timeout', 'statement_timeout')";

/// Opens one connection, bounded as a whole by the connect timeout (the
/// driver bounds only the TCP connect; libpq bounds TLS and start-up too,
/// and so does capra), and sets the session up.
pub fn connect(r: &Resolved) -> Result<postgres::Client, ConnectError> {
    // The driver tries each host in turn, each within the timeout.
    let hosts = r.config.get_hosts().len().max(r.config.get_hostaddrs().len()).max(1) as u32;
    let limit = r
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
        * hosts;
    let (tx, rx) = std::sync::mpsc::channel();
    let (config, tls) = (r.config.clone(), r.tls.clone());
    // The attempt runs on its own thread so the wait can end; an attempt
    // abandoned at the limit ends on its own when the peer closes or
    // keepalives give up.
    let spawned = crate::sys::spawn("capra-connect", move || {
        let r = config.connect(tls).and_then(|mut c| {
            c.batch_execute(SESSION_SETUP)?;
            Ok(c)
        });
        let _ = tx.send(r);
    });
    if spawned.is_err() {
        let mut c = r.config.connect(r.tls.clone())?;
        c.batch_execute(SESSION_SETUP)?;
        return Ok(c);
    }
    match rx.recv_timeout(limit + Duration::from_millis(500)) {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnectError::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords() {
        let k = parse_keywords("sslmode=require").unwrap();
        assert_eq!(k["sslmode"], "require");
        let k = parse_keywords("sslmode=require;connect_timeout=5").unwrap();
        assert_eq!(k["connect_timeout"], "5");
        let k = parse_keywords(" sslrootcert='/a b/c.crt'  sslmode = verify-ca ").unwrap();
        assert_eq!(k["sslrootcert"], "/a b/c.crt");
        assert_eq!(k["sslmode"], "verify-ca");
        assert!(matches!(
            parse_keywords("sslmod=x"),
            Err(ConnSpecError::UnknownKeyword(_))
        ));
        assert!(parse_keywords("sslmode").is_err());
        let odd = r"a b'c\d";
        assert_eq!(parse_keywords(&keyword("options", odd)).unwrap()["options"], odd);
        assert!(parse_keywords("a='x").is_err());
    }

    #[test]
    fn sslmodes() {
        for m in TlsMode::ALL {
            assert_eq!(TlsMode::parse(m.as_str()).unwrap(), m);
        }
        assert_eq!(TlsMode::Allow.driver(), SslMode::Prefer);
        assert_eq!(TlsMode::VerifyCa.driver(), SslMode::Require);
        let e = TlsMode::parse("sure").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value for connection keyword 'sslmode': \"sure\" (use disable, allow, prefer, require, verify-ca or verify-full)"
        );
        let spec = ConnSpec {
            host: Some("h".into()),
            port: Some(5432),
            user: Some("u".into()),
            dbname: Some("d".into()),
            password: Some("p".into()),
            conn: "sslmode=disable".into(),
            ..ConnSpec::default()
        };
        assert_eq!(
            resolve(&spec, "capra").unwrap().summary,
            "host=h port=5432 dbname=d user=u sslmode=disable"
        );
    }

    #[test]
    fn pgpass() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pgpass");
        std::fs::write(&f, "# c\nh1:5432:db:u:one\n*:*:*:u2:t\\:wo\nlocalhost:5433:*:*:three\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(pgpass_lookup(&f, "h1", 5432, "db", "u").as_deref(), Some("one"));
        assert_eq!(pgpass_lookup(&f, "x", 1, "y", "u2").as_deref(), Some("t:wo"));
        assert_eq!(pgpass_lookup(&f, "/tmp", 5433, "z", "q").as_deref(), Some("three"));
        assert_eq!(pgpass_lookup(&f, "h1", 5432, "db", "nobody"), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(pgpass_lookup(&f, "h1", 5432, "db", "u"), None);
    }
}
