//! The README's quickstart as a new user runs it (issue 22): with KEEP=1 it
//! keeps the clusters and the daemon and prints the capra options that
//! reach them; those lines work as printed, the daemon's files stay in the
//! quickstart's directory, and the printed stop lines leave nothing.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Runs one printed line through the shell, as a user pastes it.
fn paste(line: &str) -> std::process::Output {
    Command::new("bash").arg("-c").arg(line).output().unwrap()
}

#[test]
fn the_quickstart_keeps_what_it_says_and_its_lines_work() {
    let tmp = tempfile::tempdir().unwrap();
    // The clusters run as postgres, who must reach the directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/quickstart.sh"))
        .env("KEEP", "1")
        .env("TMPDIR", tmp.path())
        .env("CAPRA_BIN", crate::support::capra::bin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    let after = |head: &str| -> Vec<String> {
        lines
            .iter()
            .skip_while(|l| !l.starts_with(head))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let stop = after("Stop everything with:");
    // Whatever fails below, the kept clusters and daemon go.
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for l in &self.0 {
                paste(l);
            }
        }
    }
    let cleanup = Cleanup(stop.clone());
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("done: every replicated table is identical on hostB"),
        "{text}"
    );
    let work = std::fs::read_dir(tmp.path()).unwrap().next().unwrap().unwrap().path();
    let work_s = work.display().to_string();

    // The printed capra line reaches the kept daemon and catalog.
    let status = after("Use capra with:");
    assert_eq!(status.len(), 1, "{text}");
    assert!(status[0].contains(&format!("--config {work_s}/capra.conf")), "{text}");
    let r = paste(&status[0]);
    let shown = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && shown.contains("shop_sync"), "{shown}");

    // The daemon's pid file, start reasons and log are in the directory.
    let pid = std::fs::read_to_string(work.join("run/capra.pid")).unwrap();
    let pid = pid.split_whitespace().next().unwrap().to_string();
    let reasons = std::fs::read_to_string(work.join("run/capra.restart.reason.log")).unwrap();
    assert!(reasons.contains("quickstart"), "{reasons}");
    let log = std::fs::read_to_string(work.join("capra.log")).unwrap();
    assert!(log.contains(&format!("({pid}) ")), "{log}");
    for shared in ["/var/log/capra/capra.log", "/var/run/capra/capra.restart.reason.log"] {
        let t = std::fs::read_to_string(shared).unwrap_or_default();
        assert!(
            !t.contains(&format!("({pid})")),
            "{shared} has the quickstart daemon's lines"
        );
    }

    // The printed stop lines stop everything and remove the directory.
    assert_eq!(stop.len(), 4, "{text}");
    drop(cleanup);
    assert!(
        std::fs::read_dir(tmp.path()).unwrap().next().is_none(),
        "left in {}",
        tmp.path().display()
    );
    // capra stop waits for the daemon to say it ended; its process may
    // take a moment more to go (or linger as a zombie of a reaper).
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true)
    };
    crate::support::daemon::wait_for(10, "the quickstart daemon to end", gone);
}
