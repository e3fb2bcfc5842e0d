//! The .deb and .rpm that scripts/package.sh builds (scripts/test.sh builds
//! them before the tests): contents, conffiles, maintainer scripts, the
//! glibc the binary needs, and the .deb installed, upgraded (an edited
//! conffile kept) and purged in a throwaway root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn packages() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/packages");
    let find = |ext: &str| {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; build the packages first: scripts/package.sh", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap_or_else(|| panic!("no .{ext} in {}; run scripts/package.sh", dir.display()))
    };
    (find("deb"), find("rpm"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_has_what_a_server_needs_and_installs_upgrades_and_purges_cleanly() {
    let (deb, _) = packages();
    let list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/capra",
        "./usr/lib/systemd/system/capra.service",
        "./usr/lib/systemd/system/capra-purge.timer",
        "./etc/capra/capra.conf",
        "./usr/share/man/man1/capra.1.gz",
        "./usr/share/bash-completion/completions/capra",
        "./usr/share/doc/capra/examples/plugins/latest_wins.lua",
        "./usr/share/doc/capra/copyright",
        "./usr/share/capra/prometheus/capra-rules.yml",
        "./usr/share/capra/grafana/capra.json",
    ] {
        assert!(list.lines().any(|l| l.ends_with(f)), "{f} missing:\n{list}");
    }
    let conf = list.lines().find(|l| l.ends_with("./etc/capra/capra.conf")).unwrap();
    assert!(conf.starts_with("-rw-r-----"), "{conf}");
    assert_eq!(
        run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Package")).trim(),
        "capra"
    );
    let info = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(info.path()));
    assert_eq!(
        std::fs::read_to_string(info.path().join("conffiles")).unwrap().trim(),
        "/etc/capra/capra.conf"
    );
    let postinst = std::fs::read_to_string(info.path().join("postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system") && !postinst.contains("systemctl start"),
        "{postinst}"
    );
    assert!(std::fs::read_to_string(info.path().join("postrm"))
        .unwrap()
        .contains("purge)"));

    // A throwaway root: install, edit the conffile, upgrade, purge.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(r.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(r.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(r.join("var/lib/dpkg/available"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .env("DPKG_ROOT", r)
            .arg(format!("--root={}", r.display()))
            .args(["--force-script-chrootless", "--force-depends", "--force-not-root"])
            .args(args))
    };
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(r.join("usr/bin/capra").exists() && r.join("etc/capra/capra.conf").exists());
    assert!(r.join("var/lib/capra").is_dir() && r.join("var/log/capra").is_dir());
    // The packaged binary runs here and knows its version.
    let v = run(Command::new(r.join("usr/bin/capra")).arg("--version"));
    assert!(v.starts_with("capra "), "{v}");
    std::fs::write(
        r.join("etc/capra/capra.conf"),
        "# edited by the DBA\ndbhost = db.example.org\n",
    )
    .unwrap();
    dpkg(&["--force-confold", "-i", deb.to_str().unwrap()]);
    assert!(std::fs::read_to_string(r.join("etc/capra/capra.conf"))
        .unwrap()
        .contains("edited by the DBA"));
    dpkg(&["--purge", "capra"]);
    for p in [
        "usr/bin/capra",
        "etc/capra",
        "var/lib/capra",
        "var/log/capra",
        "usr/lib/systemd/system/capra.service",
        "usr/share/doc/capra",
        "usr/share/capra",
    ] {
        assert!(!r.join(p).exists(), "{p} left after purge");
    }
}

#[test]
fn the_rpm_has_its_files_config_and_scriptlets() {
    let (_, rpm) = packages();
    let q = |args: &[&str]| run(Command::new("rpm").args(args).arg(&rpm));
    let files = q(&["-qpl"]);
    for f in [
        "/usr/bin/capra",
        "/usr/lib/systemd/system/capra.service",
        "/etc/capra/capra.conf",
        "/usr/share/man/man1/capra.1.gz",
        "/usr/share/capra/prometheus/capra-rules.yml",
        "/usr/share/capra/grafana/capra.json",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} missing:\n{files}");
    }
    assert_eq!(q(&["-qpc"]).trim(), "/etc/capra/capra.conf");
    let scripts = q(&["-qp", "--scripts"]);
    assert!(
        scripts.contains("useradd -r -g capra") && scripts.contains("disable --now capra.service"),
        "{scripts}"
    );
    assert!(!scripts.contains("systemctl start"), "{scripts}");
    // Installs into a throwaway root (its scriptlets need a shell there).
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    run(Command::new("rpm").args(["--root", r, "--initdb"]));
    run(Command::new("rpm")
        .args(["--root", r, "--nodeps", "--noscripts", "-ivh"])
        .arg(&rpm));
    assert!(root.path().join("usr/bin/capra").exists());
    run(Command::new("rpm").args(["--root", r, "--nodeps", "--noscripts", "-e", "capra"]));
    assert!(!root.path().join("usr/bin/capra").exists());
}

/// The packaged binary needs at most glibc 2.28 (RHEL 8; Ubuntu 20.04 has
/// 2.31) and no shared OpenSSL.
#[test]
fn the_packaged_binary_runs_on_older_releases() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pkg/x86_64-unknown-linux-gnu/release/capra");
    let syms = run(Command::new("objdump").arg("-T").arg(&bin));
    let newest = syms
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
            Some((p.next()?, p.next().unwrap_or(0)))
        })
        .max()
        .unwrap();
    assert!(newest <= (2, 28), "needs GLIBC {}.{}", newest.0, newest.1);
    let needed = run(Command::new("objdump").arg("-p").arg(&bin));
    assert!(!needed.contains("libssl") && !needed.contains("libcrypto"), "{needed}");
}
