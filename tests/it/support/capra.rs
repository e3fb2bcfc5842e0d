//! Running the real `capra` binary against a control database, with a
//! private HOME (no stray ~/.caprarc or ~/.pgpass) and no PG* environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::cluster::{unique, Cluster};

/// The result of one capra invocation.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// What was run, for messages.
    pub cmd: String,
}

impl Run {
    fn from(cmd: String, o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            cmd,
        }
    }
}

/// A control database on a cluster plus an isolated environment to run in.
pub struct Capra {
    /// Control database name.
    pub ctl_db: String,
    /// Global options naming the control database.
    pub global: Vec<String>,
    /// Private HOME.
    pub home: tempfile::TempDir,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// Path of the binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_capra"))
}

impl Capra {
    /// A fresh control database on `cluster`, installed with `install --batch`.
    pub fn install(cluster: &Cluster) -> Capra {
        let c = Self::uninstalled(cluster);
        c.ok(&["install", "--batch"]);
        c
    }

    /// A control database name and environment, nothing created yet.
    pub fn uninstalled(cluster: &Cluster) -> Capra {
        let ctl_db = unique("ctl");
        Capra {
            global: vec![
                "-h".into(),
                cluster.host().into(),
                "-p".into(),
                cluster.port.to_string(),
                "-U".into(),
                "postgres".into(),
                "-d".into(),
                ctl_db.clone(),
            ],
            ctl_db,
            home: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }

    /// Another host's (or piddir's) capra on the same control database:
    /// same options, a HOME of its own.
    pub fn sibling(&self) -> Capra {
        Capra {
            ctl_db: self.ctl_db.clone(),
            global: self.global.clone(),
            home: tempfile::tempdir().unwrap(),
            env: self.env.clone(),
        }
    }

    /// A command with the isolated environment (no global options added).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("USER", "capra-test")
            .env("CAPRA_SYSCONF", "/nonexistent/capra.conf")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `capra GLOBAL args...`.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = self.global.clone();
        all.extend(args.iter().map(|s| s.to_string()));
        self.run_raw(&all)
    }

    /// Runs `capra args...` without the global options.
    pub fn run_raw(&self, args: &[String]) -> Run {
        let out = self.command().args(args).output().expect("capra runs");
        Run::from(format!("capra {}", args.join(" ")), out)
    }

    /// Runs and asserts success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code,
            Some(0),
            "{} failed:\nstdout: {}\nstderr: {}",
            r.cmd,
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Runs and asserts the exit code and a single-line error; returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code,
            Some(code),
            "{}: expected exit {code}\nstdout: {}\nstderr: {}",
            r.cmd,
            r.stdout,
            r.stderr
        );
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{}: expected one error line, got:\n{}", r.cmd, r.stderr);
        assert!(lines[0].starts_with("capra: "), "{}: error line: {}", r.cmd, lines[0]);
        r.stderr
    }

    /// `list all --json`: the whole catalog, for before/after comparisons.
    pub fn snapshot(&self) -> String {
        self.ok(&["list", "all", "--json"])
    }

    /// Writes a file in the private HOME.
    pub fn home_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.home.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The private HOME.
    pub fn home(&self) -> &Path {
        self.home.path()
    }
}

impl Capra {
    /// `add db NAME dbname=DB host=127.0.0.1 port=PORT user=postgres` for a
    /// database on a test cluster.
    #[track_caller]
    pub fn add_db(&self, name: &str, cluster: &Cluster, db: &str) {
        self.ok(&[
            "add",
            "db",
            name,
            &format!("dbname={db}"),
            "host=127.0.0.1",
            &format!("port={}", cluster.port),
            "user=postgres",
        ]);
    }
}
