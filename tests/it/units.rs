//! The shipped systemd units pass `systemd-analyze verify` (with ExecStart
//! pointed at the binary under test, since /usr/bin/capra is not installed).

use std::process::Command;

#[test]
fn units_verify_cleanly() {
    // scripts/test.sh installs systemd's tools where they are missing.
    assert!(
        Command::new("systemd-analyze").arg("--version").output().is_ok(),
        "systemd-analyze is missing: apt-get install systemd (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/bin/capra", env!("CARGO_BIN_EXE_capra"));
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        std::fs::write(dir.path().join(&name), text).unwrap();
        names.push(format!("./{name}"));
    }
    names.sort();
    assert!(names.contains(&"./capra.service".to_string()));
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {err}");
    assert!(err.trim().is_empty(), "systemd-analyze verify warned: {err}");
}
