//! `capra install`: batch, idempotent, upgrade detection, interactive menu.

use crate::support::{cluster, Capra};

#[test]
fn batch_install_creates_then_says_current() {
    let a = cluster::a();
    let c = Capra::uninstalled(a);
    let out = c.ok(&["install", "--batch"]);
    assert!(out.contains("Failed to connect to database"), "{out}");
    assert!(out.contains("Installation is now complete."), "{out}");
    let again = c.ok(&["install", "--batch"]);
    assert!(again.contains("is current (version 7)"), "{again}");
    // The catalog answers and holds Bucardo's settings with their defaults.
    let show = c.ok(&["show", "all"]);
    assert!(show.contains("statement_chunk_size      = 6000"), "{show}");
    assert!(show.contains("kid_serial_sleep          = 0.5"), "{show}");
    // Owned by the capra role, usable by it.
    let owner = a.query(
        "postgres",
        &format!(
            "SELECT datdba::regrole::text FROM pg_database WHERE datname = '{}'",
            c.ctl_db
        ),
    );
    assert_eq!(owner, vec![Some("capra".to_string())]);
    let mut as_capra = Capra::uninstalled(a);
    as_capra.global[5] = "capra".into();
    as_capra.global[7] = c.ctl_db.clone();
    assert!(as_capra.ok(&["list", "dbs"]).contains("There are no databases."));
}

#[test]
fn commands_before_install_say_what_to_do() {
    let c = Capra::uninstalled(cluster::a());
    cluster::a().create_db(&c.ctl_db);
    let err = c.fails(&["list", "dbs"], 1);
    assert!(err.contains("holds no capra catalog; run 'capra install'"), "{err}");
}

#[test]
fn newer_catalog_is_refused_and_older_is_reported() {
    let c = Capra::install(cluster::a());
    cluster::a().exec(&c.ctl_db, "UPDATE capra.meta SET version = 99");
    let err = c.fails(&["list", "dbs"], 1);
    assert!(err.contains("newer than this capra"), "{err}");
    let err = c.fails(&["install", "--batch"], 1);
    assert!(err.contains("newer than this capra"), "{err}");
}

/// The Confluence report's session, typed at a real terminal (a pty made by
/// `script`): change the host, proceed, fall back to postgres, proceed.
#[test]
fn interactive_menu_like_the_confluence_report() {
    let a = cluster::a();
    let c = Capra::uninstalled(a);
    let answers = format!("1\n{}\nP\nP\n", a.host());
    let piddir = c.home().join("run");
    let cmdline = format!(
        "{} -p {} -d {} install --piddir {}",
        crate::support::capra::bin().display(),
        a.port,
        c.ctl_db,
        piddir.display()
    );
    let mut cmd = c.command();
    let out = std::process::Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(answers.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("script(1) from util-linux");
    let _ = &mut cmd;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1. Host:           <none>"), "{text}");
    assert!(text.contains("Changed host to: 127.0.0.1"), "{text}");
    assert!(text.contains("3. User:           postgres"), "{text}");
    assert!(
        text.contains(&format!(
            "Failed to connect to database '{}', will try 'postgres'",
            c.ctl_db
        )),
        "{text}"
    );
    assert!(text.contains("4. Database:       postgres"), "{text}");
    assert!(text.contains("Installation is now complete."), "{text}");
    assert!(text.contains("Updated configuration setting \"piddir\""), "{text}");
    let show = c.ok(&["show", "piddir"]);
    assert!(show.contains(&piddir.display().to_string()), "{show}");
}

/// A version-1 catalog (as the first release created it) is upgraded in
/// place by `install`: data kept, new tables added, second run current.
#[test]
fn upgrades_an_older_catalog_in_place() {
    let a = cluster::a();
    let c = Capra::uninstalled(a);
    a.create_db(&c.ctl_db);
    a.exec(&c.ctl_db, include_str!("../../src/catalog/migrations/0001_catalog.sql"));
    a.exec(
        &c.ctl_db,
        "INSERT INTO capra.meta (version, installation) VALUES (1, 'oldinstall');
         INSERT INTO capra.db (name, dbname) VALUES ('kept', 'x');",
    );
    let out = c.ok(&["install", "--batch"]);
    assert!(out.contains("Upgraded the capra catalog in database"), "{out}");
    assert!(out.contains("from version 1 to 7"), "{out}");
    assert!(c.ok(&["list", "dbs"]).contains("Database: kept"));
    assert_eq!(
        a.query(&c.ctl_db, "SELECT to_regclass('capra.run')::text"),
        vec![Some("capra.run".into())]
    );
    assert_eq!(
        a.query(&c.ctl_db, "SELECT to_regclass('capra.compare_result')::text"),
        vec![Some("capra.compare_result".into())]
    );
    assert!(
        c.ok(&["show", "vac_sleep"]).contains("120"),
        "settings added on upgrade"
    );
    assert!(c.ok(&["install", "--batch"]).contains("is current (version 7)"));
}
