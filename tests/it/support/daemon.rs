//! A capra daemon for one test: its own piddir and log file in the test's
//! HOME, stopped (or killed) when the guard drops, even on panic.

use std::time::{Duration, Instant};

use super::capra::Capra;

/// A running daemon.
pub struct Daemon<'a> {
    capra: &'a Capra,
    /// Its pid.
    pub pid: i32,
}

impl Capra {
    /// Adds a private piddir and log file to ~/.caprarc (keeping its other lines).
    pub fn private_rc(&self) {
        let run = self.home().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let old = std::fs::read_to_string(self.home().join(".caprarc")).unwrap_or_default();
        let mut text: String = old
            .lines()
            .filter(|l| !l.starts_with("piddir") && !l.starts_with("logdest"))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!(
            "piddir = {}\nlogdest = {}\n",
            run.display(),
            self.log_path().display()
        ));
        self.home_file(".caprarc", &text);
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.home().join("capra.log")
    }

    /// The daemon log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the daemon (detached, as a user would) and waits for it.
    #[track_caller]
    pub fn start(&self) -> Daemon<'_> {
        self.private_rc();
        let out = self.ok(&["start", "test"]);
        let pid = out
            .split("pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in: {out}"));
        Daemon { capra: self, pid }
    }
}

impl<'a> Daemon<'a> {
    /// A daemon started by hand (`capra start` whose output the test
    /// reads), guarded like one from [`Capra::start`].
    pub fn adopt(capra: &'a Capra, pid: i32) -> Daemon<'a> {
        Daemon { capra, pid }
    }
}

impl Daemon<'_> {
    /// Whether the process still runs (an unreaped zombie does not: the
    /// detached daemon's parent is gone and PID 1 may reap late).
    pub fn alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"),
            Err(_) => false,
        }
    }

    /// Kills the daemon with SIGKILL (as a crash would) and waits for it.
    pub fn kill9(&self) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let end = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.capra.run(&["stop"]);
            let end = Instant::now() + Duration::from_secs(20);
            while self.alive() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.alive() {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `secs` pass; returns whether
/// it held. (No test branches on that: each fails, through [`wait_for`].)
fn poll_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// Waits up to `secs` seconds for `cond`; if it never holds, fails the test
/// at the caller's line, saying what it waited for (`what`, e.g. "the row
/// to reach the target") and for how long.
#[track_caller]
pub fn wait_for(secs: u64, what: &str, cond: impl FnMut() -> bool) {
    wait_for_showing(secs, what, cond, String::new);
}

/// [`wait_for`], adding `show()` to the failure: what the test knows that
/// explains it (the mails so far, both sides' checksums), read only when
/// the wait has failed.
#[track_caller]
pub fn wait_for_showing(secs: u64, what: &str, cond: impl FnMut() -> bool, show: impl FnOnce() -> String) {
    if !poll_until(secs, cond) {
        let shown = show();
        let sep = if shown.is_empty() { "" } else { "\n" };
        panic!("waited {secs}s for {what}, in vain{sep}{shown}");
    }
}

impl Capra {
    /// [`wait_for`], with the daemon's log in the failure.
    #[track_caller]
    pub fn wait_for(&self, secs: u64, what: &str, cond: impl FnMut() -> bool) {
        wait_for_showing(secs, what, cond, || format!("daemon log:\n{}", self.log()));
    }
}
