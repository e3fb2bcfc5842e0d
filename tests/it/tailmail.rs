//! `capra tailmail`: the Confluence report's tail_n_mail config, unchanged,
//! on PostgreSQL-style logs: the digest's counts, its position across runs
//! and across a log rotation, the dry run, and the mail on a real SMTP
//! server.

use crate::support::cluster;
use crate::support::daemon::wait_for_showing;
use crate::support::smtp::Smtp;
use crate::support::Capra;

const PREFIX: &str = "'%t [%p] %u@%d '";

fn err(ts: &str, pid: u32, id: u32) -> String {
    format!(
        "{ts} UTC [{pid}] app@confluence ERROR:  duplicate key value violates unique constraint \"t_pkey\"\n\
         {ts} UTC [{pid}] app@confluence DETAIL:  Key (id)=({id}) already exists.\n\
         {ts} UTC [{pid}] app@confluence STATEMENT:  INSERT INTO t VALUES ({id}, 'x')\n"
    )
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn the_reports_tail_n_mail_config_works_unchanged() {
    let c = Capra::install(cluster::a());
    let smtp = Smtp::start();
    c.ok(&[
        "set",
        "default_email_host=127.0.0.1",
        &format!("default_email_port={}", smtp.port),
    ]);
    let logs = c.home().join("log");
    std::fs::create_dir_all(&logs).unwrap();
    // The report's .tailnmailrc and its config, with our paths.
    c.home_file(".tailnmailrc", &format!("log_line_prefix={PREFIX}\n"));
    let config = c.home_file(
        "tnm.config.txt",
        &format!(
            "## Config file for the tail_n_mail program\n## This file is automatically updated\nEMAIL: dba@example.org\nMAILSUBJECT: Encompass HOST Postgres errors UNIQUE : NUMBER\n \nFILE: {}/postgresql-%Y-%m-%d.log\nINCLUDE: ERROR: \nINCLUDE: FATAL: \nINCLUDE: PANIC:\n",
            logs.display()
        ),
    );
    let today = chrono::Local::now().format("postgresql-%Y-%m-%d.log").to_string();
    let log = logs.join(&today);
    append(
        &log,
        "2026-12-01 10:00:00 UTC [10] app@confluence LOG:  checkpoint starting: time\n",
    );
    append(&log, &err("2026-12-01 10:00:01", 11, 5));
    append(&log, &err("2026-12-01 10:00:02", 12, 6));
    append(&log, &err("2026-12-01 10:00:03", 13, 7));
    append(
        &log,
        "2026-12-01 10:00:04 UTC [14] app@confluence FATAL:  password authentication failed for user \"app\"\n",
    );
    // A dry run prints the mail and keeps the position.
    let out = c.ok(&["tailmail", config.to_str().unwrap(), "--dry-run"]);
    assert!(
        out.contains("Subject: Encompass ") && out.contains(" Postgres errors 2 : 4"),
        "{out}"
    );
    assert!(
        out.contains("Unique items: 2") && out.contains("Total matches: 4"),
        "{out}"
    );
    assert!(out.contains("[1] (between lines 2 and 8, occurs 3 times)"), "{out}");
    assert!(
        out.contains("First: 2026-12-01 10:00:01 UTC [11] app@confluence"),
        "{out}"
    );
    assert!(out.contains("DETAIL: Key (id)=(?) already exists."), "{out}");
    assert!(
        out.contains("[2] (from line 11)") && out.contains("FATAL:  password authentication failed"),
        "{out}"
    );
    assert!(!config.with_extension("txt.state").exists());
    // The real run mails it and remembers where it stopped.
    let out = c.ok(&["tailmail", config.to_str().unwrap()]);
    assert!(
        out.contains("Mailed 4 match(es) in 2 item(s) to dba@example.org"),
        "{out}"
    );
    let m = smtp.with("Postgres errors 2 : 4");
    assert_eq!(m.len(), 1, "{:?}", smtp.mails());
    let state = std::fs::read_to_string(config.with_extension("txt.state")).unwrap();
    assert!(state.contains("LASTFILE1: ") && state.contains("OFFSET1: "), "{state}");
    // Nothing new: no mail.
    assert!(c.ok(&["tailmail", config.to_str().unwrap()]).contains("no mail"));
    // One more error: only it.
    append(&log, &err("2026-12-01 10:05:00", 20, 9));
    let out = c.ok(&["tailmail", config.to_str().unwrap()]);
    assert!(out.contains("Mailed 1 match(es) in 1 item(s)"), "{out}");
    assert_eq!(smtp.with("Postgres errors 1 : 1").len(), 1);
}

/// LATEST: the newest file of the directory; after a rotation the rest of
/// the old file and the whole new one are read, and counted together.
#[test]
fn latest_follows_a_rotation_with_the_right_counts() {
    let c = Capra::install(cluster::a());
    let logs = c.home().join("log");
    std::fs::create_dir_all(&logs).unwrap();
    let config = c.home_file(
        "tnm.latest.txt",
        &format!(
            "EMAIL: dba@example.org\nFILE: {}/pg-LATEST.log\nLOG_LINE_PREFIX: {PREFIX}\nINCLUDE: ERROR:\n",
            logs.display()
        ),
    );
    let first = logs.join("pg-1.log");
    append(&first, &err("2026-12-01 10:00:01", 11, 5));
    let out = c.ok(&["tailmail", config.to_str().unwrap(), "--dry-run"]);
    assert!(out.contains("Total matches: 1"), "{out}");
    // The library call: read and keep the position (as a sent mail would).
    let d = capra::notify::tailmail::run(&config).unwrap();
    assert_eq!(d.total, 1);
    d.save().unwrap();
    // The old file grows, then a newer one appears (rotation).
    append(&first, &err("2026-12-01 10:01:00", 12, 6));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = logs.join("pg-2.log");
    append(&second, &err("2026-12-01 10:02:00", 13, 7));
    append(&second, &err("2026-12-01 10:03:00", 14, 8));
    let d = capra::notify::tailmail::run(&config).unwrap();
    assert_eq!((d.total, d.unique), (3, 1), "{}", d.body);
    assert!(
        d.body.contains("Matches from [A] ") && d.body.contains("pg-1.log: 1"),
        "{}",
        d.body
    );
    assert!(d.body.contains("pg-2.log: 2"), "{}", d.body);
    assert!(d.body.contains("occurs 3 times"), "{}", d.body);
    d.save().unwrap();
    assert_eq!(capra::notify::tailmail::run(&config).unwrap().total, 0);
}

/// The daemon runs the log monitor on its schedule.
#[test]
fn the_daemon_runs_tailmail_on_its_schedule() {
    let c = Capra::install(cluster::a());
    let smtp = Smtp::start();
    let logs = c.home().join("log");
    std::fs::create_dir_all(&logs).unwrap();
    let config = c.home_file(
        "tnm.daemon.txt",
        &format!(
            "EMAIL: dba@example.org\nMAILSUBJECT: scheduled HOST UNIQUE : NUMBER\nFILE: {}/pg.log\nLOG_LINE_PREFIX: {PREFIX}\nINCLUDE: ERROR:\n",
            logs.display()
        ),
    );
    append(&logs.join("pg.log"), &err("2026-12-01 10:00:01", 11, 5));
    c.ok(&[
        "set",
        "default_email_host=127.0.0.1",
        &format!("default_email_port={}", smtp.port),
        &format!("tailmail_config={}", config.display()),
        "tailmail_schedule=* * * * * *",
    ]);
    let _d = c.start();
    wait_for_showing(
        20,
        "the scheduled mail",
        || !smtp.with("scheduled").is_empty(),
        || format!("{:?}\n{}", smtp.mails(), c.log()),
    );
    assert!(smtp.with("scheduled")[0].contains(" 1 : 1"));
    append(&logs.join("pg.log"), &err("2026-12-01 10:00:02", 12, 6));
    wait_for_showing(
        20,
        "the second scheduled mail",
        || smtp.with("scheduled").len() == 2,
        || format!("{:?}", smtp.mails()),
    );
}
