//! The README's quickstart as a new user runs it (issue 22): with KEEP=1 it
//! keeps the clusters and the daemon and prints the capra options that
//! reach them; those lines work as printed, the daemon's files stay in the
//! quickstart's directory, and the printed stop lines leave nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// Runs one printed line through the shell, as a user pastes it.
fn paste(line: &str) -> std::process::Output {
    Command::new("bash").arg("-c").arg(line).output().unwrap()
}

/// Whatever fails, the kept daemon and clusters go: the printed stop lines
/// first, then the daemon's pid and every cluster found in the directory.
struct Cleanup {
    dir: PathBuf,
    stop: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.stop {
            paste(l);
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for work in entries.flatten().map(|e| e.path()) {
            if let Ok(pid) = std::fs::read_to_string(work.join("run/capra.pid")) {
                if let Some(pid) = pid.split_whitespace().next() {
                    paste(&format!("kill -9 {pid}"));
                }
            }
            for c in ["hostA", "hostB"] {
                if work.join(c).join("postmaster.pid").exists() {
                    paste(&format!(
                        "runuser -u postgres -- {}/pg_ctl -D {} -m immediate stop",
                        crate::support::cluster::bin_dir().display(),
                        work.join(c).display()
                    ));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The length of a shared file now, to read only what is added after.
fn length(p: &str) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn added_since(p: &str, from: u64) -> String {
    let all = std::fs::read(p).unwrap_or_default();
    String::from_utf8_lossy(all.get(from as usize..).unwrap_or_default()).to_string()
}

#[test]
fn the_quickstart_keeps_what_it_says_and_its_lines_work() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    // The clusters run as postgres, who must reach the directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    const SHARED: [&str; 2] = ["/var/log/capra/capra.log", "/var/run/capra/capra.restart.reason.log"];
    let before: Vec<u64> = SHARED.iter().map(|p| length(p)).collect();
    let mut cleanup = Cleanup {
        dir: tmp.path().to_path_buf(),
        stop: Vec::new(),
    };
    // A new user's environment: no capra or libpq settings from the
    // machine, a time limit so the suite never hangs on it.
    let out = Command::new("timeout")
        .arg("600")
        .arg("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/quickstart.sh"))
        .env("KEEP", "1")
        .env("TMPDIR", tmp.path())
        .env("HOME", home.path())
        .env("CAPRA_SYSCONF", "/nonexistent/capra.conf")
        .env("CAPRA_BIN", crate::support::capra::bin())
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGSERVICE")
        .env_remove("PGDATABASE")
        .env_remove("PGUSER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let after = |head: &str| -> Vec<String> {
        stdout
            .lines()
            .skip_while(|l| !l.starts_with(head))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim().to_string())
            .collect()
    };
    cleanup.stop = after("Stop everything with:");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("done: every replicated table is identical on hostB"),
        "{text}"
    );
    let work = std::fs::read_dir(tmp.path()).unwrap().next().unwrap().unwrap().path();

    // The printed capra line reaches the kept daemon and catalog.
    let status = after("Use capra with:");
    assert_eq!(status.len(), 1, "{text}");
    assert!(
        status[0].contains(&format!("--config {}/capra.conf", work.display())),
        "{text}"
    );
    let r = paste(&status[0]);
    let shown = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && shown.contains("shop_sync"), "{shown}");

    // The daemon's pid file, start reasons and log are in the directory,
    // and nothing of it went to the shared places.
    let pid = std::fs::read_to_string(work.join("run/capra.pid")).unwrap();
    let pid = pid.split_whitespace().next().unwrap().to_string();
    let reasons = std::fs::read_to_string(work.join("run/capra.restart.reason.log")).unwrap();
    assert!(reasons.contains("| quickstart"), "{reasons}");
    let log = std::fs::read_to_string(work.join("capra.log")).unwrap();
    assert!(log.contains(&format!("({pid}) ")), "{log}");
    for (p, from) in SHARED.iter().zip(before) {
        let added = added_since(p, from);
        assert!(
            !added.contains(&format!("({pid}) ")) && !added.contains("| quickstart"),
            "{p} got the quickstart daemon's lines: {added}"
        );
    }

    // The printed stop lines stop everything and remove the directory.
    assert_eq!(cleanup.stop.len(), 4, "{text}");
    for l in &cleanup.stop {
        let r = paste(l);
        assert!(r.status.success(), "{l}: {}", String::from_utf8_lossy(&r.stderr));
    }
    cleanup.stop.clear();
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "left in {}",
        tmp.path().display()
    );
    // capra stop waits for the daemon to say it ended; its process may take
    // a moment more to go (or linger as a zombie of a reaper).
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true)
    };
    crate::support::daemon::wait_for(10, "the quickstart daemon to end", gone);
}
