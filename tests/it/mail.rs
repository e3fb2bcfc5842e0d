//! Mail: `capra mail test`, alerts on failure and recovery (one mail per
//! incident, a digest for repeats and flaps), the scheduled status report,
//! and replication going on while the mail server is unreachable. A real
//! SMTP server on loopback receives everything.

use std::time::Duration;

use crate::support::cluster;
use crate::support::daemon::{wait_for, wait_for_showing};
use crate::support::data::checksum;
use crate::support::smtp::{mail_settings, Smtp};
use crate::support::{fixtures, Capra};

/// A closed local port (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn mail_test_sends_and_says_what_the_server_answered() {
    let c = Capra::install(cluster::a());
    let smtp = Smtp::start();
    let e = c.fails(&["mail", "test"], 1);
    assert!(e.contains("default_email_to is not set"), "{e}");
    mail_settings(&c, smtp.port);
    let out = c.ok(&["set", "email_auth_pass=s3cret-pass"]);
    assert!(
        out.contains("Set \"email_auth_pass\" to \"********\"") && !out.contains("s3cret"),
        "{out}"
    );
    let out = c.ok(&["mail", "test", "you@example.org"]);
    assert!(
        out.contains("Sent a test mail to you@example.org through smtp://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("The server answered: 250"), "{out}");
    let m = smtp.with("(test)");
    assert_eq!(m.len(), 1, "{:?}", smtp.mails());
    assert!(
        m[0].contains("Subject: [capra] ") && m[0].contains("1 item (test)"),
        "{}",
        m[0]
    );
    assert!(m[0].contains("Host: ") && m[0].contains("[1] ("), "{}", m[0]);
    // Passwords never reach output.
    let show = c.ok(&["show", "all"]);
    assert!(
        show.contains("email_auth_pass") && show.contains("********") && !show.contains("s3cret"),
        "{show}"
    );
    assert!(!c.ok(&["show", "email_auth_pass", "--json"]).contains("s3cret"));
    // An unreachable server: one line, exit 1.
    c.ok(&["set", &format!("default_email_port={}", dead_port())]);
    let e = c.fails(&["mail", "test"], 1);
    assert!(e.contains("mail: sending to smtp://127.0.0.1:"), "{e}");
    assert!(!e.contains("s3cret"));
    // The local sendmail: a script that keeps what it is given.
    let keep = c.home().join("sent.txt");
    let script = c.home_file(
        "sendmail",
        &format!("#!/bin/sh\necho \"$@\" > {0}.args\ncat > {0}\n", keep.display()),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    c.ok(&[
        "set",
        "email_transport=sendmail",
        &format!("email_sendmail={}", script.display()),
    ]);
    let out = c.ok(&["mail", "test"]);
    assert!(out.contains("(sendmail)"), "{out}");
    assert!(std::fs::read_to_string(&keep).unwrap().contains("Subject: [capra]"));
    assert!(std::fs::read_to_string(format!("{}.args", keep.display()))
        .unwrap()
        .contains("dba@example.org"));
}

/// Sync "s" of a table t (not autokicked), its mail going to a fresh
/// SMTP server.
fn mailed_sync(prefix: &str) -> (Capra, String, String, Smtp) {
    let (c, src, tgt) = fixtures::synced(
        prefix,
        "CREATE TABLE t (id int PRIMARY KEY, v text)",
        &["t"],
        &["autokick=0"],
    );
    let smtp = Smtp::start();
    mail_settings(&c, smtp.port);
    (c, src, tgt, smtp)
}

/// The mails so far and the daemon log, for a failed wait.
fn mails_and_log(smtp: &Smtp, c: &Capra) -> String {
    format!("mails: {:?}\ndaemon log:\n{}", smtp.mails(), c.log())
}

/// A sync fails (its target table is renamed away): one mail at once; its
/// retries fail too: one digest with their count; it is fixed: one
/// recovery mail; it flaps (fails and recovers again within the interval):
/// no new mail of its own, only the digest. The status report arrives on
/// its schedule.
#[test]
fn alerts_come_once_per_incident_then_as_a_digest_and_the_status_report_on_schedule() {
    let (c, src, tgt, smtp) = mailed_sync("mailalert");
    let (a, b) = (cluster::a(), cluster::b());
    c.ok(&[
        "set",
        "email_alert_interval=3",
        "kid_restart_sleep=0.3",
        "retry_max_sleep=0.6",
    ]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO t VALUES (1, 'a')");
    b.exec(&tgt, "ALTER TABLE t RENAME TO t_away");
    c.run(&["kick", "s", "5"]);
    wait_for_showing(
        20,
        "one failure mail",
        || smtp.with("sync failed").len() == 1,
        || mails_and_log(&smtp, &c),
    );
    let first = &smtp.with("sync failed")[0];
    assert!(
        first.contains("Sync \"s\" failed:") && first.contains("does not exist in database"),
        "{first}"
    );
    assert!(first.contains("Last good run: never"), "{first}");
    // The mail says what sort of trouble it is: a table missing on the
    // target contradicts what the sync needs.
    assert!(first.contains("Kind: conflict (the catalog or a database"), "{first}");
    // Retries keep failing: their count comes in one digest.
    wait_for_showing(
        20,
        "the digest of the retries",
        || !smtp.with("(digest)").is_empty(),
        || mails_and_log(&smtp, &c),
    );
    assert_eq!(smtp.with("sync failed").len(), 1, "one mail per incident");
    let digest = &smtp.with("(digest)")[0];
    assert!(digest.contains("Count: ") && digest.contains("First: "), "{digest}");
    // Fixed: one recovery mail.
    b.exec(&tgt, "ALTER TABLE t_away RENAME TO t");
    wait_for_showing(
        20,
        "one recovery mail",
        || smtp.with("sync recovered").len() == 1,
        || mails_and_log(&smtp, &c),
    );
    assert!(smtp.with("sync recovered")[0].contains("is working again after"));
    wait_for(20, "t to reach the target", || {
        checksum(b, &tgt, "t") == checksum(a, &src, "t")
    });
    // A flap within the interval: no mail of its own.
    let before = smtp.mails().len();
    b.exec(&tgt, "ALTER TABLE t RENAME TO t_away");
    a.exec(&src, "INSERT INTO t VALUES (2, 'b')");
    c.run(&["kick", "s", "3"]);
    b.exec(&tgt, "ALTER TABLE t_away RENAME TO t");
    wait_for(20, "t to reach the target", || {
        checksum(b, &tgt, "t") == checksum(a, &src, "t")
    });
    wait_for_showing(
        20,
        "the digest of the flap",
        || {
            smtp.mails()[before..]
                .iter()
                .any(|m| m.contains("(digest)") && m.contains("flap"))
        },
        || format!("{:?}", &smtp.mails()[before..]),
    );
    assert_eq!(smtp.with("sync failed").len(), 1, "a flap mails no new incident");
    assert_eq!(smtp.with("sync recovered").len(), 1);
    // The status report, every 2 seconds here; status shows when it comes.
    c.ok(&["set", "status_report_schedule=*/2 * * * * *"]);
    assert!(
        c.ok(&["status"]).contains("Next status report mail: "),
        "{}",
        c.ok(&["status"])
    );
    wait_for_showing(
        20,
        "the status report",
        || !smtp.with("(status report)").is_empty(),
        || format!("{:?}", smtp.mails()),
    );
    let r = &smtp.with("(status report)")[0];
    assert!(
        r.contains("Name") && r.contains("Last good") && r.contains(" s "),
        "{r}"
    );
    let e = c.fails(&["set", "status_report_schedule=every day"], 2);
    assert!(e.contains("status_report_schedule"), "{e}");
}

/// With the mail server unreachable, alerts are logged and retried and
/// replication goes on as before.
#[test]
fn an_unreachable_mail_server_does_not_stop_replication() {
    let (c, src, tgt) = fixtures::synced("maildead", "CREATE TABLE t (id int PRIMARY KEY, v text)", &["t"], &[]);
    let (a, b) = (cluster::a(), cluster::b());
    mail_settings(&c, dead_port());
    c.ok(&["set", "kid_restart_sleep=0.3"]);
    let d = c.start();
    b.exec(&tgt, "ALTER TABLE t RENAME TO t_away");
    a.exec(&src, "INSERT INTO t VALUES (1, 'a')");
    c.wait_for(20, "the daemon to say it cannot send mail", || {
        c.log().contains("Cannot send mail")
    });
    b.exec(&tgt, "ALTER TABLE t_away RENAME TO t");
    for i in 2..20 {
        a.exec(&src, &format!("INSERT INTO t VALUES ({i}, 'x')"));
    }
    c.wait_for(30, "t to reach the target", || {
        checksum(b, &tgt, "t") == checksum(a, &src, "t")
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.alive(), "the daemon runs on");
}

/// More change rows waiting than email_backlog_rows: one mail; once the
/// sync has caught up: another.
#[test]
fn a_change_backlog_over_the_threshold_mails() {
    let (mut c, src, _tgt, smtp) = mailed_sync("mailbacklog");
    let a = cluster::a();
    c.ok(&["set", "email_backlog_rows=5"]);
    c.env.push(("CAPRA_TEST_BACKLOG_EVERY".into(), "1".into()));
    a.exec(&src, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g");
    let _d = c.start();
    wait_for_showing(
        20,
        "the backlog mail",
        || !smtp.with("(change backlog)").is_empty(),
        || mails_and_log(&smtp, &c),
    );
    assert!(smtp.with("(change backlog)")[0].contains("has 10 change rows waiting"));
    c.ok(&["kick", "s", "30"]);
    wait_for_showing(
        20,
        "the backlog-cleared mail",
        || !smtp.with("(backlog cleared)").is_empty(),
        || format!("{:?}", smtp.mails()),
    );
}

/// A target server stopped: the failure mail; started again: the recovery
/// mail, and the rows arrive.
#[test]
fn a_stopped_target_mails_its_failure_and_its_recovery() {
    use crate::support::cluster::{Cluster, Opts};
    let a = cluster::a();
    let t = Cluster::start("mailtarget", Opts::default());
    let (c, src, tgt) = fixtures::pair_on(a, &t, "mt", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    fixtures::sync_tables(&c, &["t"], "s", &[]);
    let smtp = Smtp::start();
    mail_settings(&c, smtp.port);
    c.ok(&["set", "kid_restart_sleep=0.5", "retry_max_sleep=1", "connect_timeout=2"]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO t VALUES (1, 'before')");
    c.wait_for(20, "t to reach the target", || {
        checksum(&t, &tgt, "t") == checksum(a, &src, "t")
    });
    // Test clusters run with synchronous_commit=off: flush what the
    // target committed before killing it, as a real server would have.
    t.exec(&tgt, "CHECKPOINT");
    t.stop_immediate();
    a.exec(&src, "INSERT INTO t VALUES (2, 'while down')");
    wait_for_showing(
        30,
        "the failure mail",
        || !smtp.with("sync failed").is_empty(),
        || mails_and_log(&smtp, &c),
    );
    let m = &smtp.with("sync failed")[0];
    assert!(m.contains("Sync \"s\" failed") && m.contains("tgt"), "{m}");
    assert!(m.contains("Last good run: 20"), "{m}");
    // A target down is a connection problem that goes away by itself.
    assert!(m.contains("Kind: connection (a database could not be reached"), "{m}");
    t.resume();
    wait_for_showing(
        60,
        "the recovery mail",
        || !smtp.with("sync recovered").is_empty(),
        || mails_and_log(&smtp, &c),
    );
    wait_for_showing(
        20,
        "t to reach the restarted target",
        || checksum(&t, &tgt, "t") == checksum(a, &src, "t"),
        || format!("{} vs {}\n{}", checksum(&t, &tgt, "t"), checksum(a, &src, "t"), c.log()),
    );
    assert_eq!(smtp.with("sync failed").len(), 1, "one mail for the outage");
}

/// Several syncs failing at once (one dead target database): one mail with
/// an item per sync, not a mail each.
#[test]
fn syncs_failing_together_share_one_mail() {
    let ddl = "CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY); CREATE TABLE t3 (id int PRIMARY KEY)";
    let (c, src, tgt) = fixtures::pair("mailmany", ddl);
    let (a, b) = (cluster::a(), cluster::b());
    for i in 1..=3 {
        c.ok(&["add", "table", &format!("t{i}"), "db=src", &format!("relgroup=g{i}")]);
        c.ok(&[
            "add",
            "sync",
            &format!("s{i}"),
            &format!("relgroup=g{i}"),
            "dbs=src:source,tgt:target",
            "autokick=0",
        ]);
    }
    let smtp = Smtp::start();
    mail_settings(&c, smtp.port);
    c.ok(&["set", "kid_restart_sleep=30"]);
    let _d = c.start();
    for i in 1..=3 {
        a.exec(&src, &format!("INSERT INTO t{i} VALUES (1)"));
        b.exec(&tgt, &format!("ALTER TABLE t{i} RENAME TO gone{i}"));
    }
    for i in 1..=3 {
        c.run(&["kick", &format!("s{i}"), "5"]);
    }
    wait_for_showing(
        20,
        "one mail of the 3 incidents",
        || !smtp.with("(3 incidents)").is_empty(),
        || mails_and_log(&smtp, &c),
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(smtp.mails().len(), 1, "{:?}", smtp.mails());
    let m = &smtp.mails()[0];
    for i in 1..=3 {
        assert!(m.contains(&format!("Sync \"s{i}\" failed")), "{m}");
    }
}

/// A sync that fails twice and recovers, three times within the digest
/// interval: one failure mail and one recovery mail, not one per cycle.
#[test]
fn a_sync_flapping_repeatedly_does_not_mail_each_cycle() {
    let (c, src, tgt, smtp) = mailed_sync("mailflap");
    let (a, b) = (cluster::a(), cluster::b());
    c.ok(&["set", "email_alert_interval=60", "kid_restart_sleep=30"]);
    let _d = c.start();
    for cycle in 0..3 {
        a.exec(&src, &format!("INSERT INTO t VALUES ({cycle}, 'x')"));
        b.exec(&tgt, "ALTER TABLE t RENAME TO t_away");
        c.run(&["kick", "s", "5"]);
        c.run(&["kick", "s", "5"]);
        b.exec(&tgt, "ALTER TABLE t_away RENAME TO t");
        c.ok(&["kick", "s", "30"]);
        if cycle == 0 {
            wait_for_showing(
                20,
                "one recovery mail",
                || smtp.with("sync recovered").len() == 1,
                || format!("{:?}", smtp.mails()),
            );
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(smtp.with("sync failed").len(), 1, "{:?}", smtp.mails());
    assert_eq!(smtp.with("sync recovered").len(), 1, "{:?}", smtp.mails());
    assert_eq!(checksum(b, &tgt, "t"), checksum(a, &src, "t"));
}

/// One table the target rejects (a CHECK only the target has) never stops
/// the other tables of the sync (issue 17): the run is good, the other
/// table arrives, the rejected one is set aside with its changes logged
/// again (none lost), `status` names it and one mail says so; once the
/// target accepts the rows, the next tries apply them, a recovery mail
/// follows, and both tables are equal.
#[test]
fn a_table_that_cannot_be_applied_never_stops_the_others() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE good (id int PRIMARY KEY, v text); CREATE TABLE picky (id int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::synced("aside", ddl, &["good", "picky"], &["autokick=0"]);
    let smtp = Smtp::start();
    mail_settings(&c, smtp.port);
    c.ok(&["set", "kid_restart_sleep=0.5", "retry_max_sleep=1"]);
    b.exec(&tgt, "ALTER TABLE picky ADD CONSTRAINT no_bad CHECK (v <> 'bad')");
    let _d = c.start();
    a.exec(
        &src,
        "INSERT INTO good SELECT g, 'g' FROM generate_series(1, 10) g;
         INSERT INTO picky VALUES (1, 'fine'), (2, 'bad'), (3, 'fine')",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "good"), checksum(b, &tgt, "good"), "{}", c.log());
    assert_eq!(checksum(b, &tgt, "picky"), checksum(b, &tgt, "(SELECT 1 WHERE false)"));
    let status = c.ok(&["status", "s"]);
    assert!(
        status.contains("Tables set aside") && status.contains("public.picky: ") && status.contains("no_bad"),
        "{status}"
    );
    wait_for_showing(
        20,
        "one mail naming the table",
        || smtp.with("table failed").len() == 1,
        || mails_and_log(&smtp, &c),
    );
    assert!(smtp.with("table failed")[0].contains("could not apply table public.picky"));
    // More changes meanwhile, on both tables.
    a.exec(
        &src,
        "INSERT INTO good VALUES (11, 'g'); UPDATE picky SET v = 'fine too' WHERE id = 3",
    );
    b.exec(&tgt, "ALTER TABLE picky DROP CONSTRAINT no_bad");
    wait_for_showing(
        30,
        "both tables to converge",
        || {
            checksum(a, &src, "picky") == checksum(b, &tgt, "picky")
                && checksum(a, &src, "good") == checksum(b, &tgt, "good")
        },
        || mails_and_log(&smtp, &c),
    );
    wait_for_showing(
        20,
        "one recovery mail",
        || smtp.with("table recovered").len() == 1,
        || mails_and_log(&smtp, &c),
    );
    assert!(!c.ok(&["status", "s"]).contains("Tables set aside"));
}
