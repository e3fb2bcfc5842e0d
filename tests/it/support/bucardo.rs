//! A real Bucardo 5 (Debian's `bucardo` package, with PL/PerlU from
//! `postgresql-plperl-<major>`, both installed by `scripts/test.sh`) for
//! the import tests: its control database lives on one shared cluster, so
//! tests that use it take turns, and each gets a freshly installed
//! catalog and its own pid and log directories.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, Opts};

/// The role with a password (scram over TCP) on the Bucardo cluster.
pub const PW_ROLE: (&str, &str) = ("bpw", "Imp0rt-s3cret");

/// The shared cluster Bucardo's control database lives on.
pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::start_shared(
            "BUC",
            Opts {
                password_roles: vec![(PW_ROLE.0.into(), PW_ROLE.1.into())],
                ..Opts::default()
            },
        );
        c.exec("postgres", "CREATE ROLE bucardo SUPERUSER LOGIN");
        c
    })
}

/// One test's Bucardo: a fresh catalog, stopped and cleaned up on drop.
pub struct Bucardo {
    _turn: MutexGuard<'static, ()>,
    /// The cluster of its control database.
    pub cl: &'static Cluster,
    dir: Dir,
}

/// A directory removed on drop, named in lower case: Bucardo lowercases
/// the paths in its settings.
struct Dir(std::path::PathBuf);

impl Dir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Installs a fresh Bucardo catalog (waiting for other tests' turns).
pub fn install() -> Bucardo {
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Command::new("bucardo")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "bucardo is not installed: scripts/test.sh installs it (bucardo, libdbd-pg-perl, postgresql-plperl-MAJOR)"
    );
    let cl = cluster();
    cl.exec("postgres", "DROP DATABASE IF EXISTS bucardo WITH (FORCE)");
    let dir = Dir(std::env::temp_dir().join(crate::support::unique(&format!("capra-bucardo-{}", std::process::id()))));
    for d in ["run", "log"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let b = Bucardo { _turn: turn, cl, dir };
    let out = Command::new("bucardo")
        .args([
            "--no-bucardorc",
            "install",
            "--batch",
            "--dbhost",
            "127.0.0.1",
            "--dbport",
        ])
        .arg(cl.port.to_string())
        .args(["--dbuser", "postgres", "--dbname", "postgres", "--piddir"])
        .arg(b.dir.path().join("run"))
        .env("HOME", b.dir.path())
        .current_dir(b.dir.path())
        .output()
        .expect("bucardo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("Installation is now complete"),
        "bucardo install: {text}"
    );
    let run = b.dir.path().join("run");
    cl.exec(
        "bucardo",
        &format!(
            "UPDATE bucardo.bucardo_config SET setting = '{r}' WHERE name = 'piddir';
             UPDATE bucardo.bucardo_config SET setting = '{r}/reason' WHERE name = 'reason_file';
             UPDATE bucardo.bucardo_config SET setting = '{r}/warning' WHERE name = 'warning_file';
             UPDATE bucardo.bucardo_config SET setting = '{r}/conflict' WHERE name = 'log_conflict_file';",
            r = run.display()
        ),
    );
    b
}

impl Bucardo {
    /// `--from` for capra: Bucardo's control database.
    pub fn from(&self) -> String {
        format!("host=127.0.0.1 port={}", self.cl.port)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("bucardo");
        // Some of its files are written to the working directory.
        cmd.current_dir(self.dir.path());
        cmd.args(["--no-bucardorc", "--dbhost", "127.0.0.1", "--dbport"])
            .arg(self.cl.port.to_string())
            .args(["--dbname", "bucardo", "--dbuser", "bucardo"])
            .env("HOME", self.dir.path());
        cmd
    }

    /// Runs `bucardo ARGS` and asserts it succeeded; returns what it printed.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("bucardo runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "bucardo {}: {text}", args.join(" "));
        text
    }

    /// `bucardo add db NAME` for a database on a test cluster, as postgres.
    #[track_caller]
    pub fn add_db(&self, name: &str, cl: &Cluster, db: &str) {
        self.cli(&[
            "add",
            "db",
            name,
            &format!("dbname={db}"),
            "host=127.0.0.1",
            &format!("port={}", cl.port),
            "user=postgres",
        ]);
    }

    fn sessions(&self) -> i64 {
        self.cl.query(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name ~ '^bucardo (MCP|CTL|KID|VAC)'",
        )[0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
    }

    /// Starts Bucardo and waits until a controller runs for each of
    /// `syncs` (its catalog and triggers are in place by then).
    #[track_caller]
    pub fn start(&self, syncs: &[&str]) {
        let mut cmd = self.command();
        cmd.args(["start", "--log-destination"])
            .arg(self.dir.path().join("log"))
            .arg("capra import test");
        let out = cmd.output().expect("bucardo runs");
        assert!(
            out.status.success(),
            "bucardo start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let ctl: i64 = self.cl.query(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name ~ '^bucardo KID'",
            )[0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .unwrap();
            if ctl >= syncs.len() as i64 {
                break;
            }
            assert!(
                Instant::now() < end,
                "Bucardo did not start its syncs; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `bucardo kick SYNC 60`: runs the sync once and waits for it.
    #[track_caller]
    pub fn kick(&self, sync: &str) {
        let out = self.cli(&["kick", sync, "60"]);
        assert!(out.contains("DONE"), "bucardo kick {sync}: {out}");
    }

    /// `bucardo stop`, then waits until every Bucardo process has gone.
    pub fn stop(&self) {
        let _ = self
            .command()
            .args(["stop", "--piddir"])
            .arg(self.dir.path().join("run"))
            .output();
        let end = Instant::now() + Duration::from_secs(60);
        while (self.sessions() > 0 || self.dir.path().join("run/bucardo.mcp.pid").exists()) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
        }
        if self.sessions() > 0 {
            self.kill();
        }
    }

    /// Kills every Bucardo process this test started.
    fn kill(&self) {
        if let Ok(rd) = std::fs::read_dir(self.dir.path().join("run")) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Some(pid) = std::fs::read_to_string(e.path())
                        .ok()
                        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<i32>().ok()))
                    {
                        // SAFETY: plain kill(2) of a process this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        self.cl.exec(
            "postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name ~ '^bucardo'",
        );
    }

    /// Bucardo's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/log.bucardo")).unwrap_or_default()
    }
}

impl Drop for Bucardo {
    fn drop(&mut self) {
        if self.sessions() > 0 || self.dir.path().join("run/bucardo.mcp.pid").exists() {
            self.stop();
        }
    }
}
