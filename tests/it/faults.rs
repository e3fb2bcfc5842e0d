//! Crashes and outages: nothing lost, nothing applied twice, and recovery
//! without restarting capra.

use std::time::Duration;

use crate::support::cluster::{self, Cluster, Opts};
use crate::support::daemon::wait_for;
use crate::support::data::checksum;
use crate::support::{fixtures, unique, Capra};

const BIG_ROWS: i32 = 300_000;

fn big_table(c: &Cluster, db: &str, fill: bool) {
    c.exec(
        db,
        "CREATE TABLE big (id int PRIMARY KEY, n int NOT NULL, payload text)",
    );
    if fill {
        c.exec(
            db,
            &format!("INSERT INTO big SELECT g, 0, repeat(md5(g::text), 3) FROM generate_series(1, {BIG_ROWS}) g"),
        );
    }
}

/// A control database replicating `big` from (cluster, db) to (cluster, db).
fn big_sync(src: (&Cluster, &str), tgt: (&Cluster, &str)) -> Capra {
    let c = Capra::install(cluster::a());
    c.add_db("src", src.0, src.1);
    c.add_db("tgt", tgt.0, tgt.1);
    c.ok(&["add", "table", "big", "db=src", "relgroup=bigg"]);
    c.ok(&[
        "add",
        "sync",
        "bigs",
        "relgroup=bigg",
        "dbs=src:source,tgt:target",
        "autokick=0",
        "onetimecopy=2",
    ]);
    // Quick retries so the test does not wait for backoff.
    c.ok(&["set", "kid_restart_sleep=0.2", "retry_max_sleep=2"]);
    c
}

/// Whether capra is writing to `db` on `c` right now (a DELETE or COPY of a run).
fn writing(c: &Cluster, db: &str) -> bool {
    c.query(
        "postgres",
        &format!(
            "SELECT count(*)::text FROM pg_stat_activity WHERE datname = '{db}' AND application_name LIKE 'capra KID %'
                AND state = 'active' AND (query LIKE 'COPY%' OR query LIKE 'DELETE%')"
        ),
    )[0]
    .as_deref()
        != Some("0")
}

/// SIGKILL the daemon in the middle of a large run; start it again: the
/// target converges exactly (the interrupted transaction left nothing).
#[test]
fn sigkill_during_a_large_run_then_converge() {
    let (a, b) = (cluster::a(), cluster::b());
    let src = a.create_db(&unique("big_src"));
    let tgt = b.create_db(&unique("big_tgt"));
    big_table(a, &src, true);
    big_table(b, &tgt, false);
    let c = big_sync((a, &src), (b, &tgt));
    let d = c.start();
    c.ok(&["kick", "bigs", "120"]);
    assert_eq!(checksum(a, &src, "big"), checksum(b, &tgt, "big"));
    let before = checksum(b, &tgt, "big");

    // A backlog of every row, then a kick, then SIGKILL while it writes.
    a.exec(&src, "UPDATE big SET n = n + 1, payload = payload || 'x'");
    c.ok(&["kick", "bigs"]);
    c.wait_for(60, "the run to start writing", || writing(b, &tgt));
    d.kill9();
    assert!(!d.alive());
    // The target's transaction died with the daemon's connection.
    wait_for(
        10,
        "the target's transaction to die with the daemon's connection",
        || !writing(b, &tgt),
    );
    assert_eq!(
        checksum(b, &tgt, "big"),
        before,
        "a killed run must leave nothing behind"
    );
    let stale = a.query(
        &c.ctl_db,
        "SELECT count(*)::text FROM capra.run WHERE state = 'running'",
    );
    assert_eq!(stale, vec![Some("1".into())], "the killed run is still marked running");

    // Start again: the stale run is closed and the sync converges.
    let _d2 = c.start();
    c.ok(&["kick", "bigs", "120"]);
    assert_eq!(checksum(a, &src, "big"), checksum(b, &tgt, "big"), "{}", c.log());
    let bad = a.query(
        &c.ctl_db,
        "SELECT error FROM capra.run WHERE state = 'bad' ORDER BY id DESC LIMIT 1",
    );
    assert!(
        bad[0]
            .as_deref()
            .unwrap_or("")
            .contains("the daemon stopped during this run"),
        "{bad:?}"
    );
    assert!(c.log().contains("Closed 1 run(s) left open"), "{}", c.log());
}

/// Stop the target cluster in the middle of a run: the run fails cleanly,
/// is retried, and converges once the cluster is back, without restarting
/// capra (Bucardo's #213).
#[test]
fn target_outage_mid_run_recovers_without_restart() {
    let a = cluster::a();
    let t = Cluster::start("outage", Opts::default());
    let src = a.create_db(&unique("out_src"));
    let tgt = t.create_db("out_tgt");
    big_table(a, &src, true);
    big_table(&t, &tgt, false);
    let c = big_sync((a, &src), (&t, &tgt));
    // The retry waits long enough for status to show the failure first,
    // however slow the machine (it would show "Running" otherwise).
    c.ok(&["set", "kid_restart_sleep=10"]);
    let d = c.start();
    c.ok(&["kick", "bigs", "120"]);
    a.exec(&src, "UPDATE big SET n = n + 1 WHERE id % 2 = 0");
    c.ok(&["kick", "bigs"]);
    c.wait_for(60, "the run to start writing", || writing(&t, &tgt));
    t.stop_immediate();
    // The failure is recorded with its error and shows in status.
    c.wait_for(60, "a failed run to be recorded", || {
        a.query(&c.ctl_db, "SELECT count(*)::text FROM capra.run WHERE state = 'bad'")[0].as_deref() != Some("0")
    });
    let st = c.ok(&["status", "bigs"]);
    assert!(st.contains("Last bad"), "{st}");
    assert!(st.contains("Bad ("), "{st}");
    // And what sort of trouble it is: a target down goes away by itself.
    assert!(
        st.contains("Error kind") && st.contains(": connection (a database could not be reached"),
        "{st}"
    );
    std::thread::sleep(Duration::from_secs(2));
    t.resume();
    // Same daemon, no restart, no kick: the retry converges.
    c.wait_for(120, "convergence after the target came back", || {
        let mut cl = t.client(&tgt);
        let ok = cl
            .query_one("SELECT count(*) FILTER (WHERE n = 1) FROM big", &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        ok == (BIG_ROWS / 2) as i64
    });
    assert!(d.alive(), "capra must not need a restart");
    assert_eq!(checksum(a, &src, "big"), checksum(&t, &tgt, "big"));
    let st = c.ok(&["status", "bigs"]);
    assert!(st.contains("Current state") && st.contains(": Good"), "{st}");
    assert!(c.log().contains("Sync is working again after"), "{}", c.log());
}

/// A source outage: the listener reconnects on its own and the changes made
/// after the source came back replicate by autokick, without a restart.
#[test]
fn source_outage_recovers_without_restart() {
    let b = cluster::b();
    let s = Cluster::start("srcout", Opts::default());
    let (c, src, tgt) = fixtures::pair_on(&s, b, "so", "CREATE TABLE kv (k int PRIMARY KEY, v text)");
    fixtures::sync_tables(&c, &["kv"], "so", &[]);
    c.ok(&["set", "kid_restart_sleep=0.2", "retry_max_sleep=2"]);
    let d = c.start();
    s.exec(&src, "INSERT INTO kv VALUES (1, 'before')");
    let count = |want: &str| {
        let mut cl = b.client(&tgt);
        cl.query_one("SELECT coalesce(string_agg(v, ',' ORDER BY k), '') FROM kv", &[])
            .map(|r| r.get::<_, String>(0) == want)
            .unwrap_or(false)
    };
    c.wait_for(30, "the row written before the crash to arrive", || count("before"));
    // The test clusters run with synchronous_commit = off: make what is
    // committed durable, as a real server's commits are, before the crash.
    s.exec(&src, "CHECKPOINT");
    s.stop_immediate();
    std::thread::sleep(Duration::from_secs(2));
    s.resume();
    s.exec(&src, "INSERT INTO kv VALUES (2, 'after')");
    c.wait_for(60, "replication after the source came back", || count("before,after"));
    assert!(d.alive());
}

/// SIGKILL at random moments while changes keep committing (autokick runs
/// back to back); restart each time. The target ends identical.
#[test]
fn sigkill_at_random_moments_under_load() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("rk", "CREATE TABLE acc (id int PRIMARY KEY, n int NOT NULL, note text)");
    a.exec(
        &src,
        "INSERT INTO acc SELECT g, 0, 'start' FROM generate_series(1, 20000) g",
    );
    fixtures::sync_tables(&c, &["acc"], "rk", &["onetimecopy=2"]);
    c.ok(&["set", "kid_restart_sleep=0.2", "retry_max_sleep=1"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, src) = (stop.clone(), src.clone());
        std::thread::spawn(move || {
            let mut cl = cluster::a().client(&src);
            let mut i: i32 = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let mut tx = cl.transaction().unwrap();
                tx.execute(
                    "UPDATE acc SET n = n + 1, note = 'w' || $1 WHERE id % 97 = $1 % 97",
                    &[&i],
                )
                .unwrap();
                tx.execute("DELETE FROM acc WHERE id = 20000 + $1 - 50", &[&i]).unwrap();
                tx.execute("INSERT INTO acc VALUES (20000 + $1, $1, 'new')", &[&i])
                    .unwrap();
                if i % 50 == 0 {
                    tx.execute("UPDATE acc SET id = id + 1000000 WHERE id = $1", &[&(i / 50)])
                        .unwrap();
                }
                tx.commit().unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    for round in 0..5u64 {
        let d = c.start();
        std::thread::sleep(Duration::from_millis(150 + (round * 173) % 600));
        d.kill9();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().unwrap();
    let _d = c.start();
    c.ok(&["kick", "rk", "120"]);
    assert_eq!(checksum(a, &src, "acc"), checksum(b, &tgt, "acc"), "{}", c.log());
}

/// Whether `slow` on (cluster, db) can be locked now (no run holds it).
fn table_free(c: &Cluster, db: &str) -> bool {
    let mut cl = c.client(db);
    let mut tx = cl.transaction().expect("a transaction");
    tx.batch_execute("SET LOCAL lock_timeout = '200ms'; LOCK TABLE slow IN ACCESS SHARE MODE")
        .is_ok()
}

/// One target dies in the middle of a full copy to two: the other target
/// rolls back and frees its table at once, not after the source's COPY has
/// streamed the rest of the table into nothing (a run's receivers roll back
/// before its sources).
#[test]
fn a_target_dying_mid_copy_frees_the_other_target_at_once() {
    let (a, b) = (cluster::a(), cluster::b());
    let src = a.create_db(&unique("free_src"));
    let (t1, t2) = (b.create_db(&unique("free_t1")), b.create_db(&unique("free_t2")));
    for (cl, db) in [(a, &src), (b, &t1), (b, &t2)] {
        cl.exec(db, "CREATE TABLE slow (id int PRIMARY KEY, v text)");
    }
    a.exec(
        &src,
        "INSERT INTO slow SELECT g, md5(g::text) FROM generate_series(1, 3000) g",
    );
    let c = Capra::install(a);
    c.add_db("src", a, &src);
    c.add_db("t1", b, &t1);
    c.add_db("t2", b, &t2);
    c.ok(&["add", "table", "slow", "db=src", "relgroup=slowg"]);
    // The source reads a row every 10 ms: the whole copy takes 30 s.
    c.ok(&[
        "update",
        "table",
        "slow",
        "filter=pg_catalog.pg_sleep(0.01) IS NOT NULL",
    ]);
    c.ok(&[
        "add",
        "sync",
        "slows",
        "relgroup=slowg",
        "dbs=src:source,t1:target,t2:target",
        "autokick=0",
        "onetimecopy=1",
    ]);
    c.ok(&["set", "kid_restart_sleep=60"]);
    let _d = c.start();
    c.ok(&["kick", "slows"]);
    c.wait_for(60, "the copy to reach both targets", || {
        writing(b, &t1) && writing(b, &t2)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!table_free(b, &t2), "the copy holds t2's table\n{}", c.log());
    b.exec(
        "postgres",
        &format!(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity
              WHERE datname = '{t1}' AND application_name LIKE 'capra KID %'"
        ),
    );
    let killed = std::time::Instant::now();
    // The source still has about 25 s of rows to stream.
    c.wait_for(15, "t2's table to be freed", || table_free(b, &t2));
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "t2 stayed locked {:?}",
        killed.elapsed()
    );
}
