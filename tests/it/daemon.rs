//! The daemon's life and the commands that talk to it.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::cluster::{self, Cluster};
use crate::support::data::checksum;
use crate::support::{fixtures, Capra};

/// A kv table on A replicated to B by sync `kv` (options appended).
fn kv_setup(extra: &[&str]) -> (Capra, String, String) {
    let (c, src, tgt) = fixtures::pair(
        "d",
        "CREATE TABLE kv (k int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY)",
    );
    fixtures::sync_tables(&c, &["kv", "other"], "kv", extra);
    (c, src, tgt)
}

fn rows(c: &Cluster, db: &str) -> String {
    c.query(
        db,
        "SELECT coalesce(string_agg(k || '=' || v, ',' ORDER BY k), '') FROM kv",
    )[0]
    .clone()
    .unwrap()
}

#[test]
fn commands_when_the_daemon_is_down_up_or_busy() {
    let (mut c, _, _) = kv_setup(&["autokick=0"]);
    // -P on the command line must not reach the daemon's own command line.
    c.global.extend(["-P".to_string(), "pw-not-in-ps".to_string()]);
    let err = c.fails(&["kick", "kv", "10"], 1);
    assert!(err.contains("capra is not running"), "{err}");
    assert!(c.ok(&["stop"]).contains("capra is not running"));
    assert!(c.ok(&["status"]).contains("capra daemon: not running"));
    let d = c.start();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid)).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("pw-not-in-ps"),
        "password in the daemon's argv"
    );
    let err = c.fails(&["start"], 1);
    assert!(err.contains("already running"), "{err}");
    let err = c.fails(&["kick", "nosuch"], 1);
    assert!(
        err.contains("sync \"nosuch\" does not exist; active syncs: kv"),
        "{err}"
    );
    c.ok(&["deactivate", "kv"]);
    let err = c.fails(&["kick", "kv"], 1);
    assert!(err.contains("Cannot kick inactive sync \"kv\""), "{err}");
    c.ok(&["activate", "kv"]);
    assert!(c.ok(&["reload"]).contains("Reloaded capra"));
    assert!(c.ok(&["status"]).contains(&format!("PID of capra daemon: {}", d.pid)));
    assert!(c.ok(&["kick", "sync", "kv", "0"]).contains("Kick kv: ["));
    let out = c.ok(&["stop", "because", "the", "test", "says", "so"]);
    assert!(out.contains(&format!("Stopped capra (pid {}", d.pid)), "{out}");
    assert!(!d.alive());
    let reasons = std::fs::read_to_string(c.home().join("run/capra.restart.reason.log")).unwrap();
    assert!(
        reasons.contains("| start | test") && reasons.contains("because the test says so"),
        "{reasons}"
    );
}

/// `start --foreground` speaks systemd's notify protocol: READY once
/// serving (every controller up), STATUS with a health line kept current,
/// WATCHDOG from the engine's own heartbeat (it stops while the engine is
/// wedged, through a test hook, and comes back), RELOADING on SIGHUP,
/// STOPPING on SIGTERM, then exit 0.
#[test]
fn foreground_speaks_sd_notify() {
    let (c, _, _) = kv_setup(&[]);
    c.private_rc();
    let sock_path = c.home().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut args: Vec<String> = c.global.clone();
    args.extend(["start".into(), "--foreground".into()]);
    let wedge = c.home().join("wedge");
    let mut child = c
        .command()
        .args(&args)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env("CAPRA_TEST_WEDGE", &wedge)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 1024];
    let recv = |got: &mut String, buf: &mut [u8], want: &str| {
        let end = Instant::now() + Duration::from_secs(30);
        while !got.contains(want) && Instant::now() < end {
            if let Ok(n) = sock.recv(buf) {
                got.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        assert!(got.contains(want), "no {want} in {got:?}");
    };
    recv(&mut got, &mut buf, "READY=1");
    assert!(got.contains("STATUS=1 sync(s) active"), "{got}");
    assert!(got.contains(&format!("MAINPID={}", child.id())), "{got}");
    recv(&mut got, &mut buf, "STATUS=1 sync active, last good");
    // The role closes the line (several daemons: leader or standby).
    assert!(got.contains(", 0 failing; leader (epoch 1)"), "{got}");
    recv(&mut got, &mut buf, "WATCHDOG=1");
    // Wedge the engine: after the 3 s it may lag, no more WATCHDOG=1.
    std::fs::write(&wedge, "").unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while sock.recv(&mut buf).is_ok() {}
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    let mut during = String::new();
    while Instant::now() < quiet_until {
        if let Ok(n) = sock.recv(&mut buf) {
            during.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(!during.contains("WATCHDOG=1"), "fed while wedged: {during:?}");
    std::fs::remove_file(&wedge).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    got.clear();
    recv(&mut got, &mut buf, "WATCHDOG=1");
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    recv(&mut got, &mut buf, "RELOADING=1");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    recv(&mut got, &mut buf, "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}");
}

/// A failed start says why: `start` returns 1 with the daemon's reason.
#[test]
fn failed_start_says_why() {
    let (c, _, _) = kv_setup(&[]);
    c.private_rc();
    c.ok(&["set", "host_safety_check==no-such-host"]);
    let err = c.fails(&["start"], 1);
    assert!(
        err.contains("could not start: Cannot start: configured to only run on"),
        "{err}"
    );
}

/// The stop file in piddir stops the daemon, as Bucardo's fullstopbucardo.
#[test]
fn stop_file_stops_the_daemon() {
    let (c, _, _) = kv_setup(&[]);
    let d = c.start();
    std::fs::write(c.home().join("run/fullstopcapra"), "stop").unwrap();
    c.wait_for(20, "the stop file to stop the daemon", || !d.alive());
    assert!(c.log().contains("stop file"));
}

/// checktime and a cron schedule run an autokick=0 sync on their own.
#[test]
fn checktime_and_schedule() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = kv_setup(&["autokick=0", "checktime=2"]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv VALUES (1, 'checktime')");
    c.wait_for(20, "checktime to replicate row 1", || rows(b, &tgt) == "1=checktime");
    c.ok(&["update", "sync", "kv", "checktime=none", "schedule=* * * * * *"]);
    a.exec(&src, "INSERT INTO kv VALUES (2, 'cron')");
    c.wait_for(20, "the schedule to replicate row 2", || {
        rows(b, &tgt) == "1=checktime,2=cron"
    });
    let st = c.ok(&["status", "kv"]);
    assert!(st.contains("Schedule") && st.contains("* * * * * *"), "{st}");
}

/// Removing tables or syncs drops the source objects nothing else needs
/// (Bucardo leaves its triggers behind); purge and delta account for rows.
#[test]
fn capture_cleanup_purge_and_delta() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = kv_setup(&["autokick=0"]);
    c.ok(&["set", "bucardo_vac=0"]);
    let triggers = || {
        a.query(&src, "SELECT coalesce(string_agg(c.relname || ':' || t.tgname, ',' ORDER BY 1), '') FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE t.tgname LIKE 'capra%'")[0].clone().unwrap()
    };
    assert!(
        triggers().contains("kv:capra_capture_i") && triggers().contains("other:capra_capture_i"),
        "{}",
        triggers()
    );
    let _d = c.start();
    a.exec(
        &src,
        "INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 50) g; INSERT INTO other VALUES (1)",
    );
    let delta = c.ok(&["delta"]);
    assert!(
        delta.contains("public.kv") && delta.contains("50") && delta.contains("Total deltas across all targets: 51"),
        "{delta}"
    );
    let j: serde_json::Value = serde_json::from_str(&c.ok(&["delta", "--json"])).unwrap();
    assert_eq!(j["total"], 51);
    c.ok(&["kick", "kv", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    assert!(c.ok(&["delta"]).contains("Total deltas across all targets: 0"));
    let logged = || {
        a.query(
            &src,
            "SELECT (SELECT count(*) FROM capra.delta_1) + (SELECT count(*) FROM capra.delta_2)",
        )[0]
        .clone()
        .unwrap()
    };
    assert_eq!(logged(), "51", "applied rows stay until purged");
    let out = c.ok(&["purge"]);
    assert!(
        out.contains("src: purged 51 replicated change rows from 2 table(s)"),
        "{out}"
    );
    assert_eq!(logged(), "0");
    // The daemon purges on its own (every vac_sleep seconds).
    c.ok(&["set", "bucardo_vac=1", "vac_sleep=1"]);
    c.ok(&["reload"]);
    a.exec(&src, "INSERT INTO kv VALUES (100, 'x')");
    c.ok(&["kick", "kv", "60"]);
    c.wait_for(30, "the daemon to purge", || logged() == "0");
    // The purger logs after its commit: the line may come a moment later.
    c.wait_for(10, "the purge's log line", || {
        c.log()
            .contains("Purged 1 replicated change rows from database \"src\"")
    });
    // Removing one table from the active sync drops its capture only.
    c.ok(&["remove", "table", "public.other", "db=src"]);
    assert!(!triggers().contains("other:"), "{}", triggers());
    assert!(triggers().contains("kv:capra_capture_i"), "{}", triggers());
    // Removing the sync drops everything capra put there, schema included.
    c.ok(&["deactivate", "kv"]);
    c.ok(&["remove", "sync", "kv"]);
    assert_eq!(triggers(), "");
    assert_eq!(
        a.query(&src, "SELECT count(*)::text FROM pg_namespace WHERE nspname = 'capra'"),
        vec![Some("0".into())]
    );
}

/// Capture works for a writer with no rights on capra's objects, and such a
/// writer cannot forge change rows or truncations (which would make capra
/// empty target tables). A user's own trigger that happens to start with
/// "capra_" survives the sync's removal.
#[test]
fn capture_needs_no_grants_and_cannot_be_forged() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = kv_setup(&["autokick=0"]);
    let role = format!("app_{src}");
    a.exec("postgres", &format!("CREATE ROLE \"{role}\" LOGIN"));
    a.exec(
        &src,
        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON kv TO \"{role}\""),
    );
    a.exec(&src, "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; CREATE TRIGGER capra_audit AFTER INSERT ON kv FOR EACH ROW EXECUTE PROCEDURE audit()");
    let mut app = postgres::Config::new()
        .host_path(&a.socket_dir)
        .port(a.port)
        .user(&role)
        .dbname(&src)
        .connect(postgres::NoTls)
        .unwrap();
    app.batch_execute("INSERT INTO kv VALUES (1, 'from the app'); UPDATE kv SET v = 'updated' WHERE k = 1")
        .unwrap();
    for forge in [
        "INSERT INTO capra.truncate_log (captured) VALUES (1)",
        "INSERT INTO capra.delta_1 (k) VALUES (42)",
        "DELETE FROM capra.delta_1",
    ] {
        let e = app.batch_execute(forge).unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{forge}: {e:?}");
    }
    let _d = c.start();
    c.ok(&["kick", "kv", "60"]);
    assert_eq!(rows(b, &tgt), "1=updated");
    c.ok(&["deactivate", "kv"]);
    c.ok(&["remove", "sync", "kv"]);
    let left = a.query(
        &src,
        "SELECT string_agg(tgname, ',') FROM pg_trigger WHERE tgrelid = 'kv'::regclass AND NOT tgisinternal",
    );
    assert_eq!(left, vec![Some("capra_audit".into())]);
}

/// Parses journald's native protocol (NAME=value lines, or NAME, an 8-byte
/// little-endian length and the value) into fields.
fn journal_fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|b| *b == b'\n').unwrap_or(d.len());
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            d = &d[(nl + 1).min(d.len())..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            out.push((name, String::from_utf8_lossy(&rest[8..8 + len]).into_owned()));
            d = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    out
}

/// With logdest=journald the daemon sends structured entries: SYNC= on a
/// sync's lines, RUN= on a run's, DB= on a listener's, ROLE= always, so
/// `journalctl -u capra SYNC=kv` works. (A datagram socket at journald's
/// own address stands for journald, which cannot run here.)
#[test]
fn journald_entries_carry_sync_run_and_db_fields() {
    let dir = std::path::Path::new("/run/systemd/journal");
    if dir.join("socket").exists() {
        eprintln!("a real journald runs here; its socket is not ours to take");
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    let sock = UnixDatagram::bind(dir.join("socket")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (c, src, _) = kv_setup(&["autokick=0"]);
    c.private_rc();
    let rc = std::fs::read_to_string(c.home().join(".caprarc")).unwrap();
    let rc: String = rc
        .lines()
        .filter(|l| !l.starts_with("logdest"))
        .map(|l| format!("{l}\nlogdest = journald\n"))
        .collect();
    c.home_file(".caprarc", &rc);
    let out = c.ok(&["start", "test"]);
    assert!(out.contains("pid"), "{out}");
    // The log's place and why it is there.
    assert!(
        out.contains("log: journald (logdest; output before logging starts goes to "),
        "{out}"
    );
    cluster::a().exec(&src, "INSERT INTO kv VALUES (1, 'j')");
    c.ok(&["kick", "kv", "30"]);
    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            entries.push(journal_fields(&buf[..n]));
        }
        if entries
            .iter()
            .any(|e| e.iter().any(|(k, v)| k == "MESSAGE" && v.starts_with("Totals:")))
        {
            break;
        }
    }
    c.ok(&["stop"]);
    let _ = std::fs::remove_file(dir.join("socket"));
    let get = |e: &Vec<(String, String)>, k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let totals = entries
        .iter()
        .find(|e| get(e, "MESSAGE").is_some_and(|m| m.starts_with("Totals:")))
        .unwrap_or_else(|| panic!("no Totals entry in {entries:?}"));
    assert_eq!(get(totals, "SYNC").as_deref(), Some("kv"), "{totals:?}");
    assert_eq!(get(totals, "ROLE").as_deref(), Some("KID"), "{totals:?}");
    assert!(
        get(totals, "RUN").is_some_and(|r| r.parse::<i64>().is_ok()),
        "{totals:?}"
    );
    assert_eq!(get(totals, "SYSLOG_IDENTIFIER").as_deref(), Some("capra"));
    assert!(
        entries
            .iter()
            .any(|e| get(e, "ROLE").as_deref() == Some("CTL") && get(e, "SYNC").as_deref() == Some("kv")),
        "{entries:?}"
    );
}

/// A scheduled fullcopy runs at its slots; a schedule whose slots were
/// missed while no daemon ran (six yearly ones here) runs once at start.
#[test]
fn scheduled_fullcopy_runs_and_a_missed_schedule_runs_once() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("sched", "CREATE TABLE kv (k int PRIMARY KEY, v text)");
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "full",
        "relgroup=g",
        "dbs=src:source,tgt:fullcopy",
        "schedule=*/2 * * * * *",
    ]);
    a.exec(&src, "INSERT INTO kv VALUES (1, 'scheduled')");
    let runs = |reason: &str| -> i64 {
        a.query(
            &c.ctl_db,
            &format!("SELECT count(*) FROM capra.run WHERE sync = 'full' AND reason = '{reason}'"),
        )[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
    };
    {
        let _d = c.start();
        c.wait_for(20, "the schedule to replicate row 1", || rows(b, &tgt) == "1=scheduled");
        assert!(runs("schedule") >= 1);
    }
    // Yearly, last run in 2020: six slots missed while the daemon was down.
    c.ok(&["update", "sync", "full", "schedule=0 0 1 1 *"]);
    a.exec(
        &c.ctl_db,
        "UPDATE capra.sync_state SET last_schedule = '2020-01-01', last_schedule_spec = '0 0 1 1 *' WHERE sync = 'full'",
    );
    let before = runs("schedule");
    a.exec(&src, "INSERT INTO kv VALUES (2, 'caught up')");
    let _d = c.start();
    c.wait_for(20, "the missed slot to run once", || {
        rows(b, &tgt) == "1=scheduled,2=caught up"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs("schedule") - before, 1, "{}", c.log());
    assert!(c.log().contains("was missed while no daemon ran; running once now"));
}

/// purge_schedule: the purger runs at its slots (here every 2 seconds)
/// instead of every vac_sleep (here an hour).
#[test]
fn the_purger_follows_purge_schedule() {
    // A source cluster of its own: purge keeps change rows newer than the
    // oldest transaction in flight when the sync read them, and other
    // tests' transactions on a shared cluster would hold them back.
    use crate::support::cluster::Opts;
    let own = Cluster::start("purgesched", Opts::default());
    let a = &own;
    let b = cluster::b();
    let (c, src, tgt) = fixtures::pair_on(a, b, "ps", "CREATE TABLE kv (k int PRIMARY KEY, v text)");
    fixtures::sync_tables(&c, &["kv"], "kv", &[]);
    c.ok(&["set", "vac_sleep=3600", "purge_schedule=*/2 * * * * *"]);
    let _d = c.start();
    // After the purger's first pass (5 s after start): with vac_sleep alone
    // nothing would be purged for an hour.
    std::thread::sleep(Duration::from_secs(6));
    a.exec(&src, "INSERT INTO kv SELECT g, 'p' FROM generate_series(1, 50) g");
    c.wait_for(20, "the 50 rows to arrive", || {
        rows(b, &tgt).matches("=p").count() == 50
    });
    let logged = || -> i64 {
        let id = a.query(&src, "SELECT id FROM capra.captured WHERE relname = 'kv'")[0]
            .clone()
            .unwrap();
        a.query(&src, &format!("SELECT count(*) FROM capra.delta_{id}"))[0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    c.wait_for(20, "the change rows to be purged on schedule", || logged() == 0);
    assert!(c.log().contains("Purged "), "{}", c.log());
}
