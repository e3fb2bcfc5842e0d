//! Every knob is real: a setting or option capra accepts either changes
//! behaviour (shown here for the ones the engine work added) or says in one
//! line that it has no effect.

use std::time::{Duration, Instant};

use crate::support::cluster;
use crate::support::daemon::wait_for;
use crate::support::data::checksum;
use crate::support::proxy::Proxy;
use crate::support::{fixtures, Capra};

/// `set` warns, in one line, for exactly the settings that do nothing in
/// capra (Bucardo-only) or nothing yet (mail, multi-master).
#[test]
fn set_warns_for_inert_settings_only() {
    let c = Capra::install(cluster::a());
    let show = c.ok(&["show", "all"]);
    let inert = ["autosync_ddl", "ctl_checkonkids_time", "kid_sleep", "quick_delta_check"];
    for name in inert {
        assert!(show.contains(name), "{name} not listed");
        let r = c.run(&["set", &format!("{name}=1")]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {}", r.stderr);
        assert!(
            lines[0].starts_with(&format!("capra: warning: setting \"{name}\" has no effect in capra")),
            "{name}: {}",
            r.stderr
        );
    }
    for acting in [
        "vac_sleep=5",
        "lock_timeout=3",
        "mcp_pingtime=30",
        "tcp_user_timeout=20",
        "connect_timeout=5",
        "tcp_keepalives_idle=9",
        "default_email_to=dba@example.org",
        "email_auth_user=capra",
        "email_alert_interval=60",
        "status_report_schedule=0 8 * * *",
        "metrics_refresh=5",
        "metrics_listen=127.0.0.1:9187",
        "metrics_listen=",
    ] {
        let r = c.run(&["set", acting]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(r.stderr, "", "{acting} warned");
    }
}

/// Bucardo's per-sync process options are accepted for old scripts, with a
/// one-line warning each; options that act say nothing.
#[test]
fn sync_options_without_effect_warn() {
    let (c, _, _) = fixtures::pair("opts", "CREATE TABLE kv (k int PRIMARY KEY)");
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    let r = c.run(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=src:source,tgt:target",
        "stayalive=1",
        "maxkicks=5",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("sync option 'stayalive' has no effect in capra"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("sync option 'maxkicks' has no effect in capra"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 2, "{}", r.stderr);
    for (k, warns) in [
        ("kidsalive=0", true),
        ("lifetime=1h", true),
        ("priority=3", true),
        ("makedelta=1", false),
        ("checktime=60", false),
        ("isolation_level=serializable", false),
        ("strict_checking=0", false),
    ] {
        let r = c.run(&["update", "sync", "s", k]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(!r.stderr.is_empty(), warns, "{k}: {}", r.stderr);
    }
}

/// strict_checking=0 lets validate accept differing column types (names
/// must still match); isolation_level=serializable reads the source so.
#[test]
fn strict_checking_and_isolation_level_act() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "strict",
        "CREATE TABLE kv (k int PRIMARY KEY, v varchar(20))",
        &["kv"],
        &["autokick=0"],
    );
    b.exec(&tgt, "ALTER TABLE kv ALTER COLUMN v TYPE varchar(5)");
    let r = c.run(&["validate", "s"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("set strict_checking=0"), "{}", r.stderr);
    c.ok(&["update", "sync", "s", "strict_checking=0"]);
    let out = c.ok(&["validate", "s"]);
    assert!(out.contains("OK"), "{out}");

    c.ok(&["update", "sync", "s", "isolation_level=serializable"]);
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    let iso = a.query(
        &c.ctl_db,
        "SELECT details->>'isolation' FROM capra.run WHERE state = 'good' ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(iso[0].as_deref(), Some("serializable"));
}

/// lock_timeout: a run waits that long for a table DDL holds, fails with
/// the lock timeout, and is retried until the DDL is done; the
/// application's writers are never blocked by the run.
#[test]
fn lock_timeout_bounds_the_wait_for_ddl() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "locks",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["autokick=0"],
    );
    c.ok(&["set", "lock_timeout=1"]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    let mut ddl = a.client(&src);
    ddl.batch_execute("BEGIN; LOCK TABLE kv IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let t0 = Instant::now();
    let r = c.run(&["kick", "s", "30"]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    let err = a.query(
        &c.ctl_db,
        "SELECT error FROM capra.run WHERE state = 'bad' ORDER BY id DESC LIMIT 1",
    );
    assert!(err[0].as_deref().unwrap_or("").contains("lock timeout"), "{err:?}");
    ddl.batch_execute("COMMIT").unwrap();
    c.wait_for(30, "the retry to replicate", || {
        checksum(a, &src, "kv") == checksum(b, &tgt, "kv")
    });
}

/// mcp_pingtime and tcp_user_timeout: a watching connection whose network
/// went silent is noticed, re-established, and the changes committed while
/// it was gone arrive without a kick.
#[test]
fn watchers_are_checked_and_reconnected() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (k int PRIMARY KEY, v text)";
    let c = Capra::install(a);
    let src = a.create_db(&crate::support::unique("ping_src"));
    let tgt = b.create_db(&crate::support::unique("ping_tgt"));
    a.exec(&src, ddl);
    b.exec(&tgt, ddl);
    let p = Proxy::start(a.port);
    c.ok(&[
        "add",
        "db",
        "src",
        &format!("dbname={src}"),
        "host=127.0.0.1",
        &format!("port={}", p.port),
        "user=postgres",
    ]);
    c.add_db("tgt", b, &tgt);
    c.ok(&[
        "set",
        "mcp_pingtime=2",
        "tcp_user_timeout=2",
        "tcp_keepalives_idle=1",
        "tcp_keepalives_interval=1",
        "tcp_keepalives_count=2",
    ]);
    fixtures::sync_tables(&c, &["kv"], "s", &[]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    wait_for(30, "kv to reach the target", || {
        checksum(a, &src, "kv") == checksum(b, &tgt, "kv")
    });
    p.freeze();
    c.wait_for(30, "the silent watcher to be noticed", || {
        c.log().contains("failed its check") || c.log().contains("Lost the watching connection")
    });
    a.exec(&src, "INSERT INTO kv VALUES (2, 'b')");
    p.thaw();
    c.wait_for(60, "the changes made while the watcher was away", || {
        checksum(a, &src, "kv") == checksum(b, &tgt, "kv")
    });
}

/// A table's autokick overrides its sync's; database and table options
/// without effect warn in one line.
#[test]
fn table_autokick_overrides_the_sync_and_inert_options_warn() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "tabkick",
        "CREATE TABLE kv (k int PRIMARY KEY, v text); CREATE TABLE quiet (k int PRIMARY KEY)",
        &["kv", "quiet"],
        &["autokick=0"],
    );
    c.ok(&["update", "table", "kv", "autokick=1"]);
    let _d = c.start();
    // The watcher kicks once when it first asks (catching up); wait for it.
    wait_for(30, "the watcher's first ask", || {
        a.query(
            &src,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%capra.delta_%'",
        )[0]
        .as_deref()
            != Some("0")
    });
    std::thread::sleep(Duration::from_secs(1));
    a.exec(&src, "INSERT INTO quiet VALUES (1)");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        b.query(&tgt, "SELECT count(*) FROM quiet")[0].as_deref(),
        Some("0"),
        "a kick-only table ran by itself"
    );
    a.exec(&src, "INSERT INTO kv VALUES (1, 'kicks')");
    c.wait_for(30, "the autokick table to run the sync", || {
        checksum(a, &src, "kv") == checksum(b, &tgt, "kv")
    });
    assert_eq!(
        checksum(a, &src, "quiet"),
        checksum(b, &tgt, "quiet"),
        "the run takes every table"
    );

    let r = c.run(&["update", "db", "tgt", "server_side_prepares=0"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("database option 'server_side_prepares' has no effect in capra"),
        "{}",
        r.stderr
    );
    let r = c.run(&["update", "table", "kv", "makedelta=1"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stderr, "", "makedelta acts now");
    let r = c.run(&["update", "table", "kv", "analyze_after_copy=1"]);
    assert_eq!(r.stderr, "", "an option that acts does not warn");
}

/// A change log locked by a DBA's transaction (say, DDL on a key column
/// that the DDL follower applies to the log) makes the watcher's question
/// give up on the server side and reconnect: watching connections never
/// pile up, and changes arrive once the lock is gone.
#[test]
fn a_locked_change_log_does_not_pile_up_watchers() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "locklog",
        "CREATE TABLE kv (k int PRIMARY KEY, v text); CREATE TABLE other (k int)",
        &["kv"],
        &[],
    );
    c.ok(&["set", "connect_timeout=2"]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    wait_for(30, "kv to reach the target", || {
        checksum(a, &src, "kv") == checksum(b, &tgt, "kv")
    });
    let id = a.query(&src, "SELECT id::text FROM capra.captured WHERE relname = 'kv'")[0]
        .clone()
        .unwrap();
    let mut dba = a.client(&src);
    dba.batch_execute(&format!("BEGIN; LOCK TABLE capra.delta_{id} IN ACCESS EXCLUSIVE MODE"))
        .unwrap();
    let watchers = || -> i64 {
        a.query(
            &src,
            "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'capra watcher'",
        )[0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
    };
    let mut most = 0;
    let end = Instant::now() + Duration::from_secs(12);
    while Instant::now() < end {
        // Other writes move the server's snapshot, so the watcher asks.
        a.exec(&src, "INSERT INTO other VALUES (1)");
        most = most.max(watchers());
        std::thread::sleep(Duration::from_millis(200));
    }
    dba.batch_execute("COMMIT").unwrap();
    assert!(most <= 2, "{most} watching connections at once\n{}", c.log());
    a.exec(&src, "INSERT INTO kv VALUES (2, 'b')");
    c.wait_for(15, "kv to reach the target", || {
        checksum(a, &src, "kv") == checksum(b, &tgt, "kv")
    });
}
