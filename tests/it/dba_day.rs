//! The DBA's normal day: catalog edits while runs are in flight, DDL on
//! replicated tables, partitions, server settings and silent networks.
//! Replication must stay exact through all of it, and capra must never make
//! the application's own writes fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cluster::{self, Cluster};
use crate::support::daemon::{wait_for, wait_for_showing};
use crate::support::data::{checksum, last_run};
use crate::support::proxy::{self, Proxy};
use crate::support::{fixtures, Capra};

fn count(c: &Cluster, db: &str, table: &str) -> i64 {
    c.query(db, &format!("SELECT count(*) FROM {table}"))[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until `table` has the same ordered checksum on both sides.
#[track_caller]
fn converges(c: &Capra, src: &str, tgt: (&Cluster, &str), table: &str, secs: u64) {
    let a = cluster::a();
    wait_for_showing(
        secs,
        &format!("{table} to converge"),
        || checksum(a, src, table) == checksum(tgt.0, tgt.1, table),
        || {
            format!(
                "source {} target {}\n{}",
                checksum(a, src, table),
                checksum(tgt.0, tgt.1, table),
                c.log()
            )
        },
    );
}

/// A writer that keeps inserting into `table` until dropped.
struct Writer {
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(db: &str, sql: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let db = db.to_string();
        let join = std::thread::spawn(move || {
            let mut c = cluster::a().client(&db);
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                c.batch_execute(sql).unwrap();
                n += 1;
            }
            n
        });
        Writer { stop, join: Some(join) }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.join.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `add table t` into a running autokick sync while another table takes
/// writes: rows written to `t` right after `add` returns all arrive. It is
/// a race (the running controller's plan does not know `t` yet), so it is
/// repeated.
#[test]
fn table_added_to_a_running_sync_loses_no_row() {
    for round in 0..3 {
        let (c, src, tgt) = fixtures::synced(
            "addt",
            "CREATE TABLE busy (id bigserial PRIMARY KEY, v text); CREATE TABLE t (id int PRIMARY KEY, v text)",
            &["busy"],
            &[],
        );
        let _d = c.start();
        let w = Writer::start(&src, "INSERT INTO busy (v) SELECT 'x' FROM generate_series(1, 50)");
        std::thread::sleep(Duration::from_millis(300));
        c.ok(&["add", "table", "t", "db=src", "relgroup=g"]);
        cluster::a().exec(&src, "INSERT INTO t SELECT g, 'new' FROM generate_series(1, 150) g");
        std::thread::sleep(Duration::from_millis(500));
        w.finish();
        assert_eq!(count(cluster::a(), &src, "t"), 150);
        converges(&c, &src, (cluster::b(), &tgt), "t", 30);
        converges(&c, &src, (cluster::b(), &tgt), "busy", 30);
        eprintln!("round {round}: ok");
    }
}

/// onetimecopy=2 and a new target requested while a busy autokick run is in
/// flight: the request is not dropped by the run that clears the flag, and
/// the new target ends identical.
#[test]
fn onetimecopy_requested_during_a_run_is_kept() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::pair("otc", ddl);
    let tgt2 = b.create_db(&crate::support::unique("otc_tgt2"));
    b.exec(&tgt2, ddl);
    c.add_db("tgt2", b, &tgt2);
    a.exec(
        &src,
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
    );
    b.exec(
        &tgt,
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
    );
    c.ok(&["add", "table", "big", "db=src", "relgroup=g"]);
    c.ok(&["add", "dbgroup", "grp", "src:source", "tgt:target"]);
    c.ok(&["add", "sync", "s", "relgroup=g", "dbs=grp"]);
    let _d = c.start();
    // A big change keeps the next run busy; the edits land during it.
    a.exec(&src, "UPDATE big SET v = v || '!'");
    c.wait_for(30, "a run to start", || last_run(&c, "s").starts_with("running"));
    c.ok(&["update", "dbgroup", "grp", "src", "tgt", "tgt2:target"]);
    c.ok(&["update", "sync", "s", "onetimecopy=2"]);
    a.exec(&src, "INSERT INTO big VALUES (0, 'after')");
    converges(&c, &src, (b, &tgt), "big", 60);
    converges(&c, &src, (b, &tgt2), "big", 60);
    wait_for(30, "onetimecopy to be reset to 0", || {
        a.query(&c.ctl_db, "SELECT onetimecopy FROM capra.sync")[0].as_deref() == Some("0")
    });
}

/// A catalog edit never starts a run by itself: onetimecopy=1 on an
/// autokick=0 sync waits for the kick.
#[test]
fn onetimecopy_on_a_kick_only_sync_waits_for_the_kick() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "otck",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["autokick=0"],
    );
    a.exec(&src, "INSERT INTO kv VALUES (1, 'one'), (2, 'two')");
    b.exec(&tgt, "INSERT INTO kv VALUES (9, 'stale')");
    let _d = c.start();
    c.ok(&["update", "sync", "s", "onetimecopy=1"]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count(b, &tgt, "kv"), 1, "a run started by itself\n{}", c.log());
    assert_eq!(last_run(&c, "s"), "", "no run may have happened\n{}", c.log());
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    assert_eq!(
        a.query(&c.ctl_db, "SELECT onetimecopy FROM capra.sync")[0].as_deref(),
        Some("0")
    );
}

/// A TRUNCATE made while the daemon was stopped, then a key change: the
/// change is refused while the truncation waits, and after a kick it is
/// accepted; the target ends empty like the source.
#[test]
fn key_change_never_discards_a_pending_truncate() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "trkey",
        "CREATE TABLE kv (k int PRIMARY KEY, code text NOT NULL UNIQUE, v text)",
        &["kv"],
        &["autokick=0", "onetimecopy=1"],
    );
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a', 'x'), (2, 'b', 'y')");
    {
        let _d = c.start();
        c.ok(&["kick", "s", "60"]);
    }
    assert_eq!(count(b, &tgt, "kv"), 2);
    a.exec(&src, "TRUNCATE kv");
    let err = c.fails(&["update", "table", "kv", "pkey=code"], 1);
    assert!(err.contains("not yet applied") && err.contains("kick"), "{err}");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(count(b, &tgt, "kv"), 0, "the truncate was lost\n{}", c.log());
    c.ok(&["update", "table", "kv", "pkey=code"]);
    a.exec(&src, "INSERT INTO kv VALUES (3, 'c', 'z')");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
}

/// TRUNCATE of one partition, ATTACH of a table with rows, DETACH and
/// DROP of partitions: the partitioned table stays identical.
#[test]
fn partitions_truncated_attached_detached_and_dropped() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
               CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');";
    let (c, src, tgt) = fixtures::synced("part", ddl, &["m"], &["autokick=0", "onetimecopy=1"]);
    a.exec(
        &src,
        "INSERT INTO m SELECT g, date '2024-01-01' + g, 'v' || g FROM generate_series(1, 600) g",
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"));

    // TRUNCATE of one partition, and a write after it in the same run.
    a.exec(&src, "TRUNCATE m_2024; INSERT INTO m VALUES (1, '2024-06-01', 'back')");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(count(b, &tgt, "m"), count(a, &src, "m"), "{}", c.log());
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"));

    // ATTACH a table that already has rows (the DBA attaches an empty
    // partition on the target).
    a.exec(
        &src,
        "CREATE TABLE m_2026 (LIKE m); INSERT INTO m_2026 SELECT g, date '2026-01-01' + g, 'n' FROM generate_series(1, 50) g;
         ALTER TABLE m ATTACH PARTITION m_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    );
    b.exec(
        &tgt,
        "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
    // TRUNCATE on the new partition is captured too.
    a.exec(&src, "DELETE FROM m_2026 WHERE id > 40");
    c.ok(&["kick", "s", "60"]);
    a.exec(&src, "TRUNCATE m_2026");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());

    // DETACH on the source only: its rows leave the table.
    a.exec(&src, "ALTER TABLE m DETACH PARTITION m_2025");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
    // DROP of a partition with rows.
    a.exec(&src, "INSERT INTO m VALUES (7, '2026-02-02', 'x'); ");
    c.ok(&["kick", "s", "60"]);
    a.exec(&src, "DROP TABLE m_2026");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
    // The detached table is the DBA's own now: capra's trigger left it
    // when capture is removed.
    c.ok(&["deactivate", "s"]);
    c.ok(&["remove", "sync", "s"]);
    assert_eq!(
        a.query(&src, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'capra%'")[0].as_deref(),
        Some("0")
    );
}

/// A table rewritten (ALTER ... TYPE) between a run's snapshot and its
/// COPY of that table: without locks the rewritten table looks empty to the
/// run's snapshot and its rows vanish on the target.
#[test]
fn table_rewritten_during_a_run_loses_nothing() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE a1 (id int PRIMARY KEY, v text); CREATE TABLE z9 (id int PRIMARY KEY, n int)";
    let (c, src, tgt) = fixtures::synced("rewrite", ddl, &["a1", "z9"], &["autokick=0", "onetimecopy=1"]);
    a.exec(
        &src,
        "INSERT INTO a1 SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g;
         INSERT INTO z9 SELECT g, g FROM generate_series(1, 1000) g",
    );
    let _d = c.start();
    c.ok(&["kick", "s"]);
    // While the run copies a1, rewrite z9 on both sides.
    c.wait_for(30, "the copy of a1 to be seen", || {
        a.query(
            &src,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT%a1%'",
        )[0]
        .as_deref()
            != Some("0")
    });
    b.exec(&tgt, "ALTER TABLE z9 ALTER COLUMN n TYPE bigint");
    a.exec(&src, "ALTER TABLE z9 ALTER COLUMN n TYPE bigint");
    c.wait_for(60, "a good run", || last_run(&c, "s").starts_with("good"));
    c.ok(&["kick", "s", "60"]);
    assert_eq!(count(b, &tgt, "z9"), 1000, "rows vanished\n{}", c.log());
    assert_eq!(checksum(a, &src, "a1"), checksum(b, &tgt, "a1"));
    assert_eq!(checksum(a, &src, "z9"), checksum(b, &tgt, "z9"));
}

/// A rewrite already holding its lock when a run starts: the run waits for
/// it, and must then read the rewritten table. A snapshot taken before the
/// wait would see the rewritten table empty, and the run would delete the
/// changed rows on the target and copy nothing back.
#[test]
fn a_run_waiting_for_a_rewrite_reads_the_rewritten_table() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE r (id int PRIMARY KEY, n int)";
    let (c, src, tgt) = fixtures::synced("rewait", ddl, &["r"], &["autokick=0"]);
    a.exec(&src, "INSERT INTO r SELECT g, 0 FROM generate_series(1, 1000) g");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(count(b, &tgt, "r"), 1000, "{}", c.log());
    a.exec(&src, "UPDATE r SET n = 1 WHERE id <= 500");
    // Another session rewrites r and holds its lock for 3 s (lock_timeout
    // is 10 s: the run waits for it).
    let mut cl = a.client(&src);
    let holder = std::thread::spawn(move || {
        let mut tx = cl.transaction().expect("a transaction");
        tx.batch_execute("ALTER TABLE r ALTER COLUMN n TYPE bigint")
            .expect("the rewrite");
        std::thread::sleep(Duration::from_secs(3));
        tx.commit().expect("the rewrite commits");
    });
    wait_for(10, "the rewrite to hold r", || {
        a.query(
            &src,
            "SELECT count(*)::text FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE c.relname = 'r' AND l.mode = 'AccessExclusiveLock' AND l.granted
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )[0]
        .as_deref()
            == Some("1")
    });
    c.ok(&["kick", "s", "60"]);
    holder.join().expect("the rewriting session");
    assert_eq!(count(b, &tgt, "r"), 1000, "rows vanished\n{}", c.log());
    assert_eq!(checksum(a, &src, "r"), checksum(b, &tgt, "r"), "{}", c.log());
}

/// Keys widened on both sides: the application's next long-key INSERT
/// succeeds at once (the change log holds no length limit) and replicates.
#[test]
fn widened_keys_never_fail_the_application() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (code varchar(10) PRIMARY KEY, v text); CREATE TABLE ids (id int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::synced("widen", ddl, &["kv", "ids"], &["onetimecopy=1"]);
    a.exec(
        &src,
        "INSERT INTO kv VALUES ('short', 'x'); INSERT INTO ids VALUES (1, 'x')",
    );
    let _d = c.start();
    converges(&c, &src, (b, &tgt), "kv", 30);
    for db in [(a, &src), (b, &tgt)] {
        db.0.exec(
            db.1,
            "ALTER TABLE kv ALTER COLUMN code TYPE varchar(20); ALTER TABLE ids ALTER COLUMN id TYPE bigint",
        );
    }
    a.exec(
        &src,
        "INSERT INTO kv VALUES ('a-much-longer-key', 'y'); INSERT INTO ids VALUES (5000000000, 'big')",
    );
    converges(&c, &src, (b, &tgt), "kv", 30);
    converges(&c, &src, (b, &tgt), "ids", 30);
    // Widened on the target only: deletes still match exactly.
    b.exec(&tgt, "ALTER TABLE kv ALTER COLUMN code TYPE varchar(40)");
    a.exec(&src, "DELETE FROM kv WHERE code = 'a-much-longer-key'");
    converges(&c, &src, (b, &tgt), "kv", 30);
}

/// A column added on both sides replicates its values in the next run; one
/// added on the source only fails that run with one line naming it.
#[test]
fn added_columns_replicate_at_once() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "addcol",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["onetimecopy=1"],
    );
    a.exec(&src, "INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 10) g");
    let _d = c.start();
    converges(&c, &src, (b, &tgt), "kv", 30);
    a.exec(&src, "ALTER TABLE kv ADD COLUMN extra text");
    b.exec(&tgt, "ALTER TABLE kv ADD COLUMN extra text");
    a.exec(&src, "UPDATE kv SET extra = 'x' || k");
    converges(&c, &src, (b, &tgt), "kv", 30);
    a.exec(&src, "ALTER TABLE kv ADD COLUMN only_here int");
    a.exec(&src, "UPDATE kv SET only_here = 1 WHERE k = 1");
    c.wait_for(30, "a failed run", || last_run(&c, "s").starts_with("bad"));
    let err = last_run(&c, "s");
    assert!(
        err.contains("column \"only_here\" of table public.kv is missing in database \"tgt\""),
        "{err}"
    );
    b.exec(&tgt, "ALTER TABLE kv ADD COLUMN only_here int");
    converges(&c, &src, (b, &tgt), "kv", 60);
}

/// A target set inactive and active again catches up with a full copy.
#[test]
fn reactivated_target_catches_up() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (k int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::pair("react", ddl);
    let tgt2 = b.create_db(&crate::support::unique("react_tgt2"));
    b.exec(&tgt2, ddl);
    c.add_db("tgt2", b, &tgt2);
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=src:source,tgt:target,tgt2:target",
        "autokick=0",
    ]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    c.ok(&["kick", "s", "60"]);
    c.ok(&["update", "db", "tgt2", "status=inactive"]);
    a.exec(
        &src,
        "INSERT INTO kv VALUES (2, 'b'); UPDATE kv SET v = 'A' WHERE k = 1",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    assert_eq!(count(b, &tgt2, "kv"), 1);
    let status = c.ok(&["status", "s"]);
    assert!(status.contains("Targets behind           : tgt2 (since"), "{status}");
    c.ok(&["update", "db", "tgt2", "status=active"]);
    a.exec(&src, "INSERT INTO kv VALUES (3, 'c')");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt2, "kv"), "{}", c.log());
    assert!(c.log().contains("caught up"), "{}", c.log());
}

/// Server settings that would kill a long run (an idle target waiting for
/// the source, a long COPY) are neutralised on capra's sessions.
#[test]
fn server_timeouts_do_not_kill_a_long_run() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE small (id int PRIMARY KEY)";
    let (c, src, tgt) = fixtures::pair("timeouts", ddl);
    a.exec(
        &src,
        "INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g; INSERT INTO small VALUES (1)",
    );
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(
            db,
            &format!(
                "ALTER DATABASE \"{db}\" SET idle_in_transaction_session_timeout = '1s';
                 ALTER DATABASE \"{db}\" SET statement_timeout = '1s'"
            ),
        );
    }
    fixtures::sync_tables(&c, &["small", "big"], "s", &["autokick=0", "onetimecopy=1"]);
    let _d = c.start();
    let out = c.ok(&["kick", "s", "120"]);
    assert!(out.contains("DONE"), "{out}\n{}", c.log());
    a.exec(
        &src,
        "SET statement_timeout = 0; UPDATE big SET v = 'u' WHERE id % 2 = 0",
    );
    c.ok(&["kick", "s", "120"]);
    // The checks below are the test's own long statements.
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, &format!("ALTER DATABASE \"{db}\" RESET ALL"));
    }
    assert_eq!(checksum(a, &src, "big"), checksum(b, &tgt, "big"));
}

/// A stored position ahead of the source (restored from a backup) stops
/// the sync with the repair command; purge keeps every row there; the
/// repair works.
#[test]
fn source_behind_its_stored_position_stops_with_the_repair() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "restored",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["autokick=0"],
    );
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    a.exec(&src, "UPDATE capra.consumer SET snapshot = '900000000:900000000:'");
    let _d = c.start();
    let out = c.run(&["kick", "s", "60"]);
    assert_eq!(out.code, Some(1));
    let err = last_run(&c, "s");
    assert!(
        err.contains("restored from a backup") && err.contains("capra update sync s onetimecopy=1"),
        "{err}"
    );
    c.ok(&["purge"]);
    assert_eq!(
        a.query(&src, "SELECT count(*) FROM capra.delta_1")[0].as_deref(),
        Some("1"),
        "purge removed unapplied changes"
    );
    c.ok(&["update", "sync", "s", "onetimecopy=1"]);
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    a.exec(&src, "INSERT INTO kv VALUES (2, 'b')");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
}

/// `connect_timeout` bounds the whole connection: a server that accepts TCP
/// and never answers fails `add db` within seconds, with one line.
#[test]
fn a_silent_server_fails_add_db_within_the_timeout() {
    let c = Capra::install(cluster::a());
    let port = proxy::silent();
    let t0 = Instant::now();
    let err = c.fails(
        &[
            "add",
            "db",
            "hung",
            "dbname=x",
            "host=127.0.0.1",
            &format!("port={port}"),
            "conn=connect_timeout=2",
        ],
        1,
    );
    assert!(t0.elapsed() < Duration::from_secs(8), "took {:?}", t0.elapsed());
    assert!(err.contains("no answer within"), "{err}");
    // The setting bounds it too.
    c.ok(&["set", "connect_timeout=1"]);
    let t0 = Instant::now();
    c.fails(
        &[
            "add",
            "db",
            "hung",
            "dbname=x",
            "host=127.0.0.1",
            &format!("port={port}"),
        ],
        1,
    );
    assert!(t0.elapsed() < Duration::from_secs(6), "took {:?}", t0.elapsed());
}

/// A target behind a network path that goes silent mid-run (no reset,
/// nothing passes): the run is recorded as failed within the configured
/// bound, and the sync converges once the path carries traffic again.
#[test]
fn a_silent_network_fails_the_run_in_bounded_time() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text)";
    let c = Capra::install(a);
    let src = a.create_db(&crate::support::unique("silent_src"));
    let tgt = b.create_db(&crate::support::unique("silent_tgt"));
    a.exec(&src, ddl);
    b.exec(&tgt, ddl);
    a.exec(
        &src,
        "INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g",
    );
    let p = Proxy::start(b.port);
    c.add_db("src", a, &src);
    c.ok(&[
        "add",
        "db",
        "tgt",
        &format!("dbname={tgt}"),
        "host=127.0.0.1",
        &format!("port={}", p.port),
        "user=postgres",
    ]);
    c.ok(&[
        "set",
        "tcp_user_timeout=3",
        "tcp_keepalives_idle=2",
        "tcp_keepalives_interval=1",
        "tcp_keepalives_count=2",
    ]);
    fixtures::sync_tables(&c, &["big"], "s", &["autokick=0", "onetimecopy=1"]);
    let _d = c.start();
    c.ok(&["kick", "s"]);
    c.wait_for(30, "the copy to start", || {
        b.query(
            &tgt,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%big%'",
        )[0]
        .as_deref()
            != Some("0")
    });
    p.freeze();
    let t0 = Instant::now();
    wait_for_showing(
        60,
        "the run to show as failed",
        || last_run(&c, "s").starts_with("bad"),
        || {
            format!(
                "the run still shows as {} after {:?}\n{}",
                last_run(&c, "s"),
                t0.elapsed(),
                c.log()
            )
        },
    );
    eprintln!("failure noticed after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(40));
    p.thaw();
    c.wait_for(120, "convergence after the network healed", || {
        checksum(a, &src, "big") == checksum(b, &tgt, "big")
    });
}

/// Two syncs share a table at different positions while purge runs;
/// prepared transactions and a key update rolled back to a savepoint: each
/// change is applied exactly once, on every target.
#[test]
fn shared_tables_prepared_transactions_and_savepoints() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (k int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::pair("shared", ddl);
    let tgt2 = b.create_db(&crate::support::unique("shared_tgt2"));
    b.exec(&tgt2, ddl);
    c.add_db("tgt2", b, &tgt2);
    fixtures::sync_tables(&c, &["kv"], "one", &["autokick=0"]);
    c.ok(&[
        "add",
        "sync",
        "two",
        "relgroup=g",
        "dbs=src:source,tgt2:target",
        "autokick=0",
    ]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 100) g");
    c.ok(&["kick", "one", "60"]);
    // "two" is behind; purging must keep what it has not applied.
    a.exec(&src, "UPDATE kv SET v = 'w' WHERE k <= 50");
    c.ok(&["purge"]);
    c.ok(&["kick", "one", "60"]);
    c.ok(&["purge"]);
    c.ok(&["kick", "two", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt2, "kv"));

    // A prepared transaction is invisible until COMMIT PREPARED, then
    // applied once; a key update rolled back to a savepoint never happened.
    let mut s1 = a.client(&src);
    s1.batch_execute("BEGIN; UPDATE kv SET k = 1001 WHERE k = 1; PREPARE TRANSACTION 'capra_t1'")
        .unwrap();
    a.exec(
        &src,
        "BEGIN; UPDATE kv SET k = 2002 WHERE k = 2; SAVEPOINT s; UPDATE kv SET k = 3003 WHERE k = 2002;
         ROLLBACK TO SAVEPOINT s; UPDATE kv SET v = 'kept' WHERE k = 2002; COMMIT",
    );
    c.ok(&["kick", "one", "60"]);
    c.ok(&["kick", "two", "60"]);
    assert_eq!(
        b.query(&tgt, "SELECT count(*) FROM kv WHERE k IN (1, 1001, 2002, 3003)")[0].as_deref(),
        Some("2"),
        "before COMMIT PREPARED: 1 and 2002"
    );
    s1.batch_execute("COMMIT PREPARED 'capra_t1'").unwrap();
    c.ok(&["purge"]);
    c.ok(&["kick", "one", "60"]);
    c.ok(&["purge"]);
    c.ok(&["kick", "two", "60"]);
    for t in [&tgt, &tgt2] {
        assert_eq!(checksum(a, &src, "kv"), checksum(b, t, "kv"), "{t}");
    }
    assert_eq!(
        b.query(
            &tgt2,
            "SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv WHERE k > 1000"
        )[0]
        .as_deref(),
        Some("1001=w,2002=kept")
    );
}

/// Key columns renamed, retyped and dropped on both sides while the
/// application writes: its writes never fail (capra's DDL follower keeps
/// capture working), the run names the one command that tells capra, and
/// after it every row written meanwhile arrives.
#[test]
fn key_ddl_never_fails_the_application() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "keyddl",
        "CREATE TABLE kv (code int PRIMARY KEY, alt int NOT NULL UNIQUE, v text)",
        &["kv"],
        &["onetimecopy=1"],
    );
    a.exec(&src, "INSERT INTO kv SELECT g, g, 'v' FROM generate_series(1, 20) g");
    let _d = c.start();
    converges(&c, &src, (b, &tgt), "kv", 30);

    // Renamed: writes go on, and so does replication (capture and runs
    // follow the renamed key); when the sync is next read, it says what to
    // tell capra.
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, "ALTER TABLE kv RENAME COLUMN code TO code2");
    }
    a.exec(
        &src,
        "INSERT INTO kv VALUES (21, 21, 'after rename'); UPDATE kv SET v = 'u' WHERE code2 = 1",
    );
    converges(&c, &src, (b, &tgt), "kv", 30);
    c.ok(&["reload"]);
    a.exec(&src, "INSERT INTO kv VALUES (24, 24, 'after reload')");
    wait_for_showing(
        30,
        "the run to name the repair (pkey=code2)",
        || last_run(&c, "s").contains("capra update table public.kv pkey=code2"),
        || format!("{}\n{}", last_run(&c, "s"), c.log()),
    );
    c.ok(&["update", "table", "kv", "pkey=code2"]);
    c.ok(&["kick", "s", "60"]);
    converges(&c, &src, (b, &tgt), "kv", 30);

    // Retyped to text: writes go on and replicate.
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, "ALTER TABLE kv ALTER COLUMN code2 TYPE text");
    }
    a.exec(
        &src,
        "INSERT INTO kv VALUES ('x-22', 22, 'text key'); DELETE FROM kv WHERE code2 = '2'",
    );
    c.ok(&["kick", "s", "60"]);
    converges(&c, &src, (b, &tgt), "kv", 30);

    // Dropped (the other unique key remains): writes go on; after the new
    // key is declared, the table is copied whole once.
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, "ALTER TABLE kv DROP COLUMN code2");
    }
    a.exec(
        &src,
        "INSERT INTO kv VALUES (23, 'after drop'); DELETE FROM kv WHERE alt = 3",
    );
    wait_for_showing(
        30,
        "the run to name the repair (pkey=COLUMNS)",
        || last_run(&c, "s").contains("capra update table public.kv pkey=COLUMNS"),
        || format!("{}\n{}", last_run(&c, "s"), c.log()),
    );
    c.ok(&["update", "table", "kv", "pkey=alt"]);
    c.ok(&["kick", "s", "60"]);
    converges(&c, &src, (b, &tgt), "kv", 30);
    a.exec(&src, "UPDATE kv SET v = 'new key works' WHERE alt = 5");
    converges(&c, &src, (b, &tgt), "kv", 30);
}

/// Fixed-length and bit-string keys, and a table whose name holds a dollar
/// quote: the change log never cuts or rejects a key, the capture function
/// still installs.
#[test]
fn char_bit_and_odd_named_keys() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = r#"CREATE TABLE ck (code char(3) PRIMARY KEY, v text);
                 CREATE TABLE bk (b bit(4) PRIMARY KEY, v text);
                 CREATE TABLE "we$f$ird" ("k$f$" int PRIMARY KEY, v text);"#;
    let (c, src, tgt) = fixtures::synced("chark", ddl, &["ck", "bk", r#"we$f$ird"#], &["autokick=0"]);
    let _d = c.start();
    a.exec(
        &src,
        r#"INSERT INTO ck VALUES ('abc', 'x'), ('de', 'y'); INSERT INTO bk VALUES (B'1010', 'x'), (B'0001', 'y');
           INSERT INTO "we$f$ird" VALUES (1, 'x'), (2, 'y')"#,
    );
    c.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        r#"UPDATE ck SET v = 'z' WHERE code = 'abc'; DELETE FROM ck WHERE code = 'de';
           UPDATE bk SET b = B'1111' WHERE b = B'1010'; DELETE FROM "we$f$ird" WHERE "k$f$" = 2; TRUNCATE "we$f$ird""#,
    );
    c.ok(&["kick", "s", "60"]);
    for t in ["ck", "bk", r#""we$f$ird""#] {
        assert_eq!(checksum(a, &src, t), checksum(b, &tgt, t), "{t}");
    }
    assert_eq!(count(b, &tgt, "ck"), 1);
}

/// A single-column array key (issue 17, item 6): keys travel as text, and
/// a text array cast to `integer[][]` is still `integer[]`, so deleting by
/// `= ANY(...)` failed every run; such keys are deleted by subscript.
#[test]
fn array_keys_replicate() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE arr (k int[] PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::synced("arrk", ddl, &["arr"], &["autokick=0"]);
    let _d = c.start();
    a.exec(
        &src,
        "INSERT INTO arr VALUES ('{1,2}', 'a'), ('{3}', 'b'), ('{}', 'empty'), ('{{1,2},{3,4}}', 'grid')",
    );
    c.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        "UPDATE arr SET v = 'a2' WHERE k = '{1,2}'; DELETE FROM arr WHERE k = '{3}';
         UPDATE arr SET k = '{5,6}' WHERE k = '{}'",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "arr"), checksum(b, &tgt, "arr"), "{}", c.log());
    assert_eq!(count(b, &tgt, "arr"), 3);
}

/// A partition attached (with rows) or dropped and re-created while the
/// daemon is stopped: the start-up's capture check must not swallow the
/// move; the rows arrive, the dropped ones leave.
#[test]
fn partition_moves_while_the_daemon_is_down() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
               CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');";
    let (c, src, tgt) = fixtures::synced("partdown", ddl, &["m"], &["autokick=0", "onetimecopy=1"]);
    a.exec(
        &src,
        "INSERT INTO m SELECT g, date '2024-01-01' + g, 'a' FROM generate_series(1, 100) g",
    );
    {
        let _d = c.start();
        c.ok(&["kick", "s", "60"]);
    }
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"));
    a.exec(
        &src,
        "CREATE TABLE m_2 (LIKE m); INSERT INTO m_2 SELECT g, date '2025-01-01' + g, 'b' FROM generate_series(1, 30) g;
         ALTER TABLE m ATTACH PARTITION m_2 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         DROP TABLE m_1; CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         INSERT INTO m VALUES (5, '2024-02-02', 'new')",
    );
    b.exec(
        &tgt,
        "CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    );
    // A catalog command reconciles capture before the daemon runs.
    c.ok(&["update", "sync", "s", "checktime=3600"]);
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
}

/// A capture left on the source for a table the sync no longer has (a
/// removal whose source commit never happened) does not wedge the sync:
/// the run notices, the daemon reads the catalog again and drops it.
#[test]
fn leftover_capture_does_not_wedge_the_sync() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (k int PRIMARY KEY, v text); CREATE TABLE gone (k int PRIMARY KEY)";
    let (c, src, tgt) = fixtures::synced("leftover", ddl, &["kv", "gone"], &["autokick=0"]);
    // What an interrupted 'remove table gone' leaves: the catalog no longer
    // has it, the source still captures it for the sync.
    c.ok(&["remove", "table", "gone", "db=src"]);
    a.exec(
        &src,
        "INSERT INTO capra.captured (schemaname, relname, keycols, keytypes) VALUES ('public', 'gone', '{k}', '{bigint}');
         INSERT INTO capra.consumer_table (installation, sync, captured)
         SELECT installation, sync, (SELECT id FROM capra.captured WHERE relname = 'gone') FROM capra.consumer",
    );
    let _d = c.start();
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a')");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"), "{}", c.log());
    assert!(c.log().contains("no longer replicates"), "{}", c.log());
    assert_eq!(
        a.query(&src, "SELECT count(*) FROM capra.captured WHERE relname = 'gone'")[0].as_deref(),
        Some("0")
    );
}

/// A target added to a running sync gets a full copy at the next run;
/// removing the last target of an active sync is refused.
#[test]
fn targets_join_a_running_sync_with_a_full_copy() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (k int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::pair("join", ddl);
    let tgt2 = b.create_db(&crate::support::unique("join_tgt2"));
    b.exec(&tgt2, ddl);
    c.add_db("tgt2", b, &tgt2);
    a.exec(&src, "INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 50) g");
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    c.ok(&["add", "dbgroup", "grp", "src:source", "tgt:target"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=grp",
        "autokick=0",
        "onetimecopy=1",
    ]);
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let out = c.ok(&["update", "dbgroup", "grp", "src", "tgt", "tgt2:target"]);
    assert!(out.contains("gets a full copy at the next run"), "{out}");
    a.exec(&src, "UPDATE kv SET v = 'w' WHERE k = 1");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt2, "kv"), "{}", c.log());
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"));
    let err = c.fails(&["update", "dbgroup", "grp", "src"], 1);
    assert!(err.contains("last target"), "{err}");
}

/// Key DDL issued by the application's own (non-superuser) owner role, and
/// the common "change the key's type" migration (add a column, drop the old
/// key, rename the new one into its place): the application's writes never
/// fail, and after one command the sync replicates exactly again.
#[test]
fn key_migrations_by_the_table_owner() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("ownerddl", "SELECT 1");
    let setup = "CREATE TABLE kv (id int PRIMARY KEY, v text)";
    b.exec(&tgt, setup);
    a.exec(
        &src,
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_owner') THEN CREATE ROLE app_owner LOGIN; END IF; END $$;
             GRANT CREATE ON SCHEMA public TO app_owner;
             SET ROLE app_owner; {setup}; INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 20) g; RESET ROLE"
        ),
    );
    fixtures::sync_tables(&c, &["kv"], "s", &["onetimecopy=1"]);
    let _d = c.start();
    converges(&c, &src, (b, &tgt), "kv", 30);
    let as_owner = |sql: &str| {
        let mut cl = a.client(&src);
        cl.batch_execute(&format!("SET ROLE app_owner; {sql}"))
            .unwrap_or_else(|e| panic!("the application's statement failed: {sql}: {e:?}"));
    };
    // Renamed by the owner.
    b.exec(&tgt, "ALTER TABLE kv RENAME COLUMN id TO kid");
    as_owner("ALTER TABLE kv RENAME COLUMN id TO kid");
    as_owner("INSERT INTO kv VALUES (21, 'after rename'); UPDATE kv SET v = 'u' WHERE kid = 1");
    converges(&c, &src, (b, &tgt), "kv", 30);
    c.ok(&["update", "table", "kv", "pkey=kid"]);

    // The key's type changed by migration: add, copy, drop, rename.
    let migrate = "ALTER TABLE kv ADD COLUMN kid_new bigint; UPDATE kv SET kid_new = kid * 10;
                   ALTER TABLE kv DROP COLUMN kid; ALTER TABLE kv RENAME COLUMN kid_new TO kid;
                   ALTER TABLE kv ALTER COLUMN kid SET NOT NULL; ALTER TABLE kv ADD PRIMARY KEY (kid)";
    b.exec(&tgt, migrate);
    as_owner(migrate);
    as_owner("INSERT INTO kv VALUES ('mid-migration', 5000000000); DELETE FROM kv WHERE kid = 200");
    // Capture lost the key in the middle of the migration: the table is
    // copied whole, then capture is rebuilt on the key the catalog names
    // (it exists again) and changes flow as deltas.
    converges(&c, &src, (b, &tgt), "kv", 30);
    let marks = || a.query(&src, "SELECT count(*) FROM capra.truncate_log WHERE part = '*'")[0].clone();
    c.wait_for(30, "capture to be rebuilt", || {
        a.query(&src, "SELECT keynums IS NOT NULL FROM capra.captured")[0].as_deref() == Some("t")
    });
    let before = marks();
    as_owner("UPDATE kv SET v = 'delta again' WHERE kid = 50");
    converges(&c, &src, (b, &tgt), "kv", 30);
    assert_eq!(marks(), before, "writes after the rebuild are deltas again");
}

/// `add db NAME ... group=G` into a running sync's dbgroup: the new target
/// gets a full copy; a second source is refused while the sync runs.
#[test]
fn add_db_into_a_running_group() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE kv (k int PRIMARY KEY, v text)";
    let (c, src, _tgt) = fixtures::pair("addgrp", ddl);
    let tgt2 = b.create_db(&crate::support::unique("addgrp_tgt2"));
    b.exec(&tgt2, ddl);
    a.exec(&src, "INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 30) g");
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    c.ok(&["add", "dbgroup", "grp", "src:source", "tgt:target"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=grp",
        "autokick=0",
        "onetimecopy=1",
    ]);
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let out = c.ok(&[
        "add",
        "db",
        "tgt2",
        &format!("dbname={tgt2}"),
        "host=127.0.0.1",
        &format!("port={}", b.port),
        "user=postgres",
        "group=grp:target",
    ]);
    assert!(out.contains("gets a full copy at the next run"), "{out}");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt2, "kv"), "{}", c.log());
    let err = c.fails(
        &[
            "add",
            "db",
            "src2",
            &format!("dbname={src}"),
            "host=127.0.0.1",
            &format!("port={}", a.port),
            "user=postgres",
            "group=grp:source",
        ],
        1,
    );
    assert!(err.contains("cannot add a source"), "{err}");
}

/// A partition detached, changed and attached again between two runs: the
/// DDL follower notes the detach, so the next run copies what changed
/// while it was detached.
#[test]
fn partition_detached_changed_and_reattached_between_runs() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
               CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');";
    let (c, src, tgt) = fixtures::synced("reattach", ddl, &["m"], &["autokick=0", "onetimecopy=1"]);
    a.exec(
        &src,
        "INSERT INTO m SELECT g, date '2024-01-01' + g, 'a' FROM generate_series(1, 500) g",
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"));
    a.exec(
        &src,
        "ALTER TABLE m DETACH PARTITION m_1;
         UPDATE m_1 SET v = 'changed while detached' WHERE id % 3 = 0; DELETE FROM m_1 WHERE id % 7 = 0;
         INSERT INTO m_1 VALUES (9999, '2024-12-30', 'new while detached');
         ALTER TABLE m ATTACH PARTITION m_1 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
    a.exec(&src, "UPDATE m SET v = 'after' WHERE id = 1");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"));
}

/// A long report holds a target table while the source is truncated: the
/// replayed TRUNCATE waits at most lock_timeout, then the table is emptied
/// with DELETE instead, so neither the run nor the readers queued behind a
/// waiting TRUNCATE are stuck until the report ends.
#[test]
fn a_truncate_replay_does_not_queue_behind_a_long_report() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "report",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["autokick=0"],
    );
    c.ok(&["set", "lock_timeout=1"]);
    a.exec(&src, "INSERT INTO kv SELECT g, 'a' FROM generate_series(1, 50) g");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let mut report = b.client(&tgt);
    report.batch_execute("BEGIN; SELECT count(*) FROM kv").unwrap();
    a.exec(&src, "TRUNCATE kv; INSERT INTO kv VALUES (1000, 'after')");
    let t0 = Instant::now();
    c.ok(&["kick", "s", "30"]);
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "{:?}\n{}",
        t0.elapsed(),
        c.log()
    );
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"), "{}", c.log());
    report.batch_execute("COMMIT").unwrap();
}
