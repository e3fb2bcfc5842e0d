//! Replication end to end against real clusters: every kind of change, the
//! excluded table, sequences, autokick latency, several targets,
//! onetimecopy, fullcopy, and capture under interleaved transactions.

use std::time::{Duration, Instant};

use crate::support::cluster::{self, Cluster};
use crate::support::data::{checksum, value};
use crate::support::{fixtures, load, unique, Capra};

fn seq(c: &Cluster, db: &str, s: &str) -> String {
    c.query(db, &format!("SELECT last_value || '/' || is_called FROM {s}"))[0]
        .clone()
        .unwrap()
}

const CONFLUENCE_TABLES: &[&str] = &[
    "\"AO_92296B_AORECENTLY_VIEWED\"",
    "\"AO_9412A1_AOREGISTRATION\"",
    "\"AO_187CCC_SIDEBAR_LINK\"",
    "bandana",
    "confancestors",
    "os_propertyentry",
    "attachmentdata",
    "content",
    "hibernate_unique_key",
    "user_mapping",
];

/// The Confluence report end to end: schema copy, data copy under
/// session_replication_role=replica, start, changes of every kind, `kick
/// SYNC 60`; every table identical, clustersafety untouched, sequences equal.
#[test]
fn confluence_end_to_end() {
    let (a, b, t) = (cluster::a(), cluster::b(), cluster::tls());
    let src = fixtures::confluence(t);
    t.exec(&src, "ALTER TABLE hibernate_unique_key ADD PRIMARY KEY (next_hi)");
    let tgt = b.create_db(&unique("confluence_tgt"));
    fixtures::pg_pipe((t, &src), &["--schema-only"], (b, &tgt), false);
    let c = Capra::install(a);
    c.ok(&[
        "add",
        "db",
        "source_db",
        &format!("dbname={src}"),
        "host=127.0.0.1",
        &format!("port={}", t.port),
        "user=pwuser",
        "pass=s3cret-pw",
        "conn=sslmode=require",
    ]);
    c.ok(&[
        "add",
        "db",
        "target_db",
        &format!("dbname={tgt}"),
        "host=127.0.0.1",
        &format!("port={}", b.port),
        "user=capra",
    ]);
    c.ok(&[
        "add",
        "all",
        "tables",
        "--exclude-table",
        "clustersafety",
        "db=source_db",
        "relgroup=confluence_db_group",
    ]);
    c.ok(&[
        "add",
        "all",
        "sequences",
        "db=source_db",
        "relgroup=confluence_db_group",
    ]);
    c.ok(&[
        "add",
        "dbgroup",
        "confluence_db_group",
        "source_db:source",
        "target_db:target",
    ]);
    c.ok(&[
        "add",
        "sync",
        "confluence_sync",
        "relgroup=confluence_db_group",
        "dbs=confluence_db_group",
        "autokick=0",
    ]);
    assert_eq!(
        c.ok(&["validate", "confluence_sync"]),
        "Validating sync confluence_sync ... OK\n"
    );
    // The report's data copy: everything but capra's schema, triggers off.
    fixtures::pg_pipe(
        (t, &src),
        &["--data-only", "--disable-triggers", "-N", "capra"],
        (b, &tgt),
        true,
    );
    c.ok(&["update", "sync", "confluence_sync", "autokick=1"]);
    // Site 2's Confluence writes its own clustersafety row; it must survive.
    b.exec(&tgt, "UPDATE clustersafety SET safetynumber = 4242");
    let _d = c.start();
    let status = c.ok(&["status", "confluence_sync"]);
    assert!(
        status.contains("Sync name                : confluence_sync"),
        "{status}"
    );

    t.exec(
        &src,
        r#"
        INSERT INTO bandana VALUES (3, '_GLOBAL', 'k3', NULL);
        UPDATE bandana SET bandanavalue = 'v1 updated' WHERE bandanaid = 1;
        UPDATE bandana SET bandanaid = 20 WHERE bandanaid = 2;
        DELETE FROM "AO_92296B_AORECENTLY_VIEWED" WHERE "CONTENT_ID" = 10;
        INSERT INTO "AO_92296B_AORECENTLY_VIEWED" ("CONTENT_ID", "LAST_VIEW_DATE", "SPACE_KEY")
            VALUES (99, '2015-10-05 09:26:01+02', E'tab\there, "quote" \\ backslash'), (100, NULL, NULL);
        INSERT INTO "AO_9412A1_AOREGISTRATION" VALUES ('key with spaces', E'line1\nline2'), ('ünïcødé', NULL);
        INSERT INTO attachmentdata VALUES (1, 1, '\x00ff10'::bytea), (2, 2, decode(repeat('ab', 100000), 'hex')), (3, 3, NULL);
        INSERT INTO content (title, labels, props, version, lastmoddate)
            VALUES ('T', ARRAY['a', 'b,c', '"q"', NULL], '{"k": [1, 2, {"x": null}], "u": "é"}', 123.456, now()),
                   (NULL, '{}', 'null', -0.001, '-infinity');
        UPDATE confancestors SET ancestorposition = 7 WHERE descendentid = 5 AND ancestorposition = 1;
        INSERT INTO os_propertyentry VALUES ('e', 1, 'k', 1, true, 1.5e300, 's', 't', 1, 2, '2020-01-01 10:00');
        TRUNCATE user_mapping;
        INSERT INTO user_mapping VALUES ('u1', 'n', 'l');
        UPDATE clustersafety SET safetynumber = 1;
        SELECT setval('"AO_187CCC_SIDEBAR_LINK_ID_seq_extra"', 500, true);
        SELECT setval('content_contentid_seq', 77, false);
        "#,
    );
    t.exec(&src, "BEGIN; UPDATE content SET title = coalesce(title, '') || '!'; DELETE FROM bandana WHERE bandanaid = 20; COMMIT;");
    let out = c.ok(&["kick", "confluence_sync", "60"]);
    assert!(
        out.contains("Kick confluence_sync: [") && out.contains("DONE!"),
        "{out}\n{}",
        c.log()
    );
    for tb in CONFLUENCE_TABLES {
        assert_eq!(
            checksum(t, &src, tb),
            checksum(b, &tgt, tb),
            "table {tb} differs\n{}",
            c.log()
        );
    }
    assert_eq!(
        b.query(&tgt, "SELECT safetynumber::text FROM clustersafety"),
        vec![Some("4242".to_string())]
    );
    for s in [
        "\"AO_187CCC_SIDEBAR_LINK_ID_seq_extra\"",
        "content_contentid_seq",
        "\"AO_92296B_AORECENTLY_VIEWED_ID_seq\"",
    ] {
        assert_eq!(seq(t, &src, s), seq(b, &tgt, s), "sequence {s}");
    }
    // The block aligns on its longest label, as Bucardo's does.
    let status: String = c
        .ok(&["status", "confluence_sync"])
        .split(' ')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(status.contains("Current state : Good"), "{status}");
    // (autokick may have split the changes over several runs; the last one
    // need not contain the truncate.)
    assert!(status.contains("Rows deleted/inserted"), "{status}");
    let truncates = a.query(
        &c.ctl_db,
        "SELECT sum(truncates)::text FROM capra.run WHERE sync = 'confluence_sync'",
    );
    assert_eq!(truncates, vec![Some("1".into())], "the TRUNCATE was replayed once");
    assert!(
        status.contains("Pending changes : source_db: 0 (up to date)"),
        "{status}"
    );
    let log = c.log();
    assert!(
        log.contains("KID (confluence_sync) Delta count for source_db.public.bandana : "),
        "{log}"
    );
    assert!(log.contains("KID (confluence_sync) Totals: deletes="), "{log}");
}

/// A committed change on the source shows up on the target within moments
/// (autokick through LISTEN/NOTIFY); the figures are printed.
#[test]
fn autokick_latency() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgts) = fixtures::pgbench_sync(&[b], &["onetimecopy=2"]);
    let _d = c.start();
    c.ok(&["kick", "bench", "60"]);
    let mut client = a.client(&src);
    let mut tgt = b.client(&tgts[0]);
    let mut lat = Vec::new();
    for i in 0..20 {
        client
            .execute(
                "UPDATE pgbench_tellers SET filler = $1 WHERE tid = 1",
                &[&format!("latency {i}")],
            )
            .unwrap();
        let t0 = Instant::now();
        let want = format!("latency {i}");
        c.wait_for(20, &format!("change {i} to arrive"), || {
            tgt.query_one("SELECT trim(filler) FROM pgbench_tellers WHERE tid = 1", &[])
                .map(|r| r.get::<_, Option<String>>(0).as_deref() == Some(want.as_str()))
                .unwrap_or(false)
        });
        lat.push(t0.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let max = *lat.last().unwrap();
    eprintln!("autokick latency over 20 changes (debug build, polling every 50 ms): p50 {p50:?}, max {max:?}");
    assert!(max < Duration::from_secs(5), "latency too high: {lat:?}");
}

/// Three targets at once, then a new empty target filled by onetimecopy=2
/// while the others only get deltas.
#[test]
fn three_targets_and_onetimecopy_into_a_new_target() {
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    let (c, src, tgts) = fixtures::pgbench_sync(&[b, cc, b], &["onetimecopy=2", "autokick=0"]);
    let _d = c.start();
    c.ok(&["kick", "bench", "60"]);
    let check = |dbs: &[(&Cluster, &str)]| {
        for tb in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"] {
            let want = checksum(a, &src, tb);
            for (cl, db) in dbs {
                assert_eq!(want, checksum(cl, db, tb), "{tb} on {db}\n{}", c.log());
            }
        }
    };
    check(&[(b, &tgts[0]), (cc, &tgts[1]), (b, &tgts[2])]);
    let j: serde_json::Value = serde_json::from_str(&c.ok(&["list", "syncs", "--json"])).unwrap();
    assert_eq!(j[0]["onetimecopy"], 0, "onetimecopy resets after the copy");
    a.exec(&src, "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0; DELETE FROM pgbench_accounts WHERE aid > 99000");
    c.ok(&["kick", "bench", "60"]);
    check(&[(b, &tgts[0]), (cc, &tgts[1]), (b, &tgts[2])]);

    // A new, empty target joins.
    let new_db = cc.create_db(&unique("bench_new"));
    fixtures::pg_pipe_opts(
        (a, &src),
        &["--schema-only", "-N", "capra"],
        (cc, &new_db),
        false,
        false,
    );
    assert_eq!(
        cc.query(
            &new_db,
            "SELECT count(*)::text FROM pg_trigger WHERE tgname LIKE 'capra%'"
        ),
        vec![Some("0".into())]
    );
    c.add_db("tgt_new", cc, &new_db);
    c.ok(&[
        "update",
        "sync",
        "bench",
        "dbs=src:source,tgt0:target,tgt1:target,tgt2:target,tgt_new:target",
        "onetimecopy=2",
    ]);
    a.exec(&src, "UPDATE pgbench_branches SET bbalance = 7");
    c.ok(&["kick", "bench", "60"]);
    check(&[(b, &tgts[0]), (cc, &tgts[1]), (b, &tgts[2]), (cc, &new_db)]);
    let run = a.query(
        &c.ctl_db,
        "SELECT details::text FROM capra.run WHERE sync = 'bench' AND state = 'good' ORDER BY id DESC LIMIT 1",
    )[0]
    .clone()
    .unwrap();
    let d: serde_json::Value = serde_json::from_str(&run).unwrap();
    let accounts = d["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.pgbench_accounts")
        .unwrap();
    assert_eq!(
        accounts["full_copies"],
        serde_json::json!(["tgt_new"]),
        "only the empty target is copied: {d}"
    );
}

/// A fullcopy sync for a table without a key (pgbench_history), run when
/// kicked, as in the French report: target edits are overwritten.
#[test]
fn fullcopy_sync_for_a_keyless_table() {
    let (a, b) = (cluster::a(), cluster::b());
    let src = fixtures::pgbench(a, "hist_src");
    let tgt = fixtures::pgbench(b, "hist_tgt");
    let c = Capra::install(a);
    c.ok(&[
        "add",
        "database",
        &src,
        "name=master",
        "host=127.0.0.1",
        &format!("port={}", a.port),
        "user=postgres",
    ]);
    c.ok(&[
        "add",
        "database",
        &tgt,
        "name=slave",
        "host=127.0.0.1",
        &format!("port={}", b.port),
        "user=postgres",
    ]);
    c.ok(&[
        "add",
        "all",
        "tables",
        "db=master",
        "-t",
        "pgbench_history",
        "--herd=beta",
    ]);
    c.ok(&[
        "add",
        "sync",
        "benchcopy",
        "source=beta",
        "targetdb=slave",
        "type=fullcopy",
        "rebuild_index=1",
    ]);
    b.exec(&tgt, "CREATE INDEX history_aid ON pgbench_history (aid)");
    // No capture is installed on the source for a pure fullcopy sync.
    assert_eq!(a.query(&src, "SELECT to_regclass('capra.captured')::text"), vec![None]);
    let _d = c.start();
    load::pgbench_transactions(a, &src, 3);
    c.ok(&["kick", "benchcopy", "60"]);
    assert_eq!(
        checksum(a, &src, "pgbench_history"),
        checksum(b, &tgt, "pgbench_history")
    );
    assert!(checksum(b, &tgt, "pgbench_history").starts_with("3 rows"));
    load::pgbench_transactions(b, &tgt, 3); // the report's experiment: transactions on the slave
    load::pgbench_transactions(a, &src, 3);
    assert_eq!(c.ok(&["kick", "benchcopy"]), "Kicked sync benchcopy\n");
    c.wait_for(60, "the slave's pgbench_history to be overwritten", || {
        checksum(a, &src, "pgbench_history") == checksum(b, &tgt, "pgbench_history")
    });
    assert!(checksum(b, &tgt, "pgbench_history").starts_with("6 rows"));
    // rebuild_index: the index was rebuilt after the load and is usable.
    let valid = b.query(
        &tgt,
        "SELECT indisvalid::text FROM pg_index WHERE indexrelid = 'history_aid'::regclass",
    );
    assert_eq!(valid, vec![Some("true".into())]);
    assert_eq!(
        b.query(
            &tgt,
            "SELECT relhasindex::text FROM pg_class WHERE oid = 'pgbench_history'::regclass"
        ),
        vec![Some("true".into())]
    );
    let by_index = b.query(
        &tgt,
        "SET enable_seqscan = off; SELECT count(*)::text FROM pgbench_history WHERE aid = 19893",
    );
    assert_eq!(
        by_index,
        b.query(&tgt, "SELECT count(*)::text FROM pgbench_history WHERE aid + 0 = 19893")
    );
}

fn interleaved(row_triggers: bool) {
    let (a, b) = (cluster::a(), cluster::b());
    let (mut c, src, tgt) = fixtures::pair("kv", "CREATE TABLE kv (k int PRIMARY KEY, v text)");
    if row_triggers {
        c.env.push(("CAPRA_ROW_TRIGGERS".into(), "1".into()));
    }
    c.ok(&["add", "table", "kv", "db=src", "relgroup=kvg"]);
    c.ok(&[
        "add",
        "sync",
        "kvs",
        "relgroup=kvg",
        "dbs=src:source,tgt:target",
        "autokick=0",
    ]);
    let triggers = a.query(
        &src,
        "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'kv'::regclass",
    );
    let rowlevel = a.query(&src, "SELECT bool_and(rowlevel)::text FROM capra.captured")[0]
        .clone()
        .unwrap();
    assert_eq!(rowlevel, row_triggers.to_string(), "{triggers:?}");
    let _d = c.start();
    c.ok(&["kick", "kvs", "60"]);
    let rows = || {
        b.query(&tgt, "SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv")[0]
            .clone()
            .unwrap_or_default()
    };
    let copied = || -> Vec<String> {
        a.query(
            &c.ctl_db,
            "SELECT inserts::text FROM capra.run WHERE sync = 'kvs' AND state = 'good' ORDER BY id",
        )
        .into_iter()
        .map(|x| x.unwrap())
        .collect()
    };

    // T1 starts first and holds an xid; T2 starts later and commits first.
    let mut t1 = a.client(&src);
    t1.batch_execute("BEGIN; INSERT INTO kv VALUES (1, 't1')").unwrap();
    let mut t2 = a.client(&src);
    t2.batch_execute("BEGIN; INSERT INTO kv VALUES (2, 't2'); COMMIT")
        .unwrap();
    c.ok(&["kick", "kvs", "60"]);
    assert_eq!(rows(), "2=t2");
    // T3 starts before T1 commits and stays open across the next run.
    let mut t3 = a.client(&src);
    t3.batch_execute("BEGIN; INSERT INTO kv VALUES (3, 't3')").unwrap();
    t1.batch_execute("COMMIT").unwrap();
    c.ok(&["kick", "kvs", "60"]);
    assert_eq!(
        rows(),
        "1=t1,2=t2",
        "T1 committed after a later transaction and must not be skipped"
    );
    t3.batch_execute("UPDATE kv SET v = 't3' WHERE k = 2; COMMIT").unwrap();
    c.ok(&["kick", "kvs", "60"]);
    assert_eq!(rows(), "1=t1,2=t3,3=t3");
    c.ok(&["kick", "kvs", "60"]);
    // Each change applied exactly once: 1 row, 1 row, 2 rows; the last kick found nothing.
    assert_eq!(copied(), vec!["1", "1", "2"], "{}", c.log());
}

/// Transactions that commit out of start order are each replicated once.
#[test]
fn capture_under_interleaved_transactions() {
    interleaved(false);
}

/// The same with row-level triggers, the path PostgreSQL 9.x servers take.
#[test]
fn capture_under_interleaved_transactions_row_triggers() {
    interleaved(true);
}

/// Many writers committing in random order while autokick runs keep
/// replicating: the target ends identical.
#[test]
fn concurrent_writers_converge() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgts) = fixtures::pgbench_sync(&[b], &["onetimecopy=2"]);
    let _d = c.start();
    c.ok(&["kick", "bench", "60"]);
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let src = src.clone();
            std::thread::spawn(move || {
                let mut cl = cluster::a().client(&src);
                for i in 0..60 {
                    let mut tx = cl.transaction().unwrap();
                    let aid = (w * 1000 + i * 7) % 100000 + 1;
                    tx.execute(
                        "UPDATE pgbench_accounts SET abalance = abalance + $2 WHERE aid = $1",
                        &[&aid, &i],
                    )
                    .unwrap();
                    std::thread::sleep(Duration::from_millis((i * 13 + w * 7) as u64 % 20));
                    tx.execute(
                        "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = $1",
                        &[&(w % 10 + 1)],
                    )
                    .unwrap();
                    if i % 11 == 0 {
                        tx.execute("DELETE FROM pgbench_accounts WHERE aid = $1", &[&(aid + 50000)])
                            .unwrap();
                    }
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    c.ok(&["kick", "bench", "60"]);
    for tb in ["pgbench_accounts", "pgbench_tellers", "pgbench_branches"] {
        assert_eq!(checksum(a, &src, tb), checksum(b, &tgts[0], tb), "{tb}\n{}", c.log());
    }
}

/// Servers with different DateStyles (MDY source, DMY target): dates,
/// timestamps and intervals, keys included, arrive unchanged.
#[test]
fn datestyle_differences_do_not_corrupt_dates() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair(
        "ds",
        "CREATE TABLE ev (day date, at timestamp, PRIMARY KEY (day, at), took interval, ratio float8, tz timestamptz)",
    );
    // Every session after this (capra's included) gets these DateStyles.
    a.exec(
        "postgres",
        &format!("ALTER DATABASE \"{src}\" SET DateStyle = 'SQL, MDY'"),
    );
    b.exec(
        "postgres",
        &format!("ALTER DATABASE \"{tgt}\" SET DateStyle = 'SQL, DMY'"),
    );
    a.exec(
        &src,
        "INSERT INTO ev VALUES ('2020-01-02', '2020-01-02 03:04:05.678', '1 day 02:03:04', 0.1::float8 + 0.2::float8, '2020-03-04 05:06:07+02'),
                               ('2021-12-11', '2021-11-12 00:00:00', '-3 months', 1e-300, 'infinity')",
    );
    fixtures::sync_tables(&c, &["ev"], "ds", &["onetimecopy=1", "autokick=0"]);
    let _d = c.start();
    c.ok(&["kick", "ds", "60"]);
    // Changes (keys read as text, then cast on the target) as well as copies.
    a.exec(
        &src,
        "UPDATE ev SET took = took * 2 WHERE day = '2020-01-02'; DELETE FROM ev WHERE day = '2021-12-11'",
    );
    a.exec(
        &src,
        "INSERT INTO ev VALUES ('2022-05-06', '2022-06-05 01:02:03', '1 second', 2.5, now())",
    );
    c.ok(&["kick", "ds", "60"]);
    let iso = |cl: &Cluster, db: &str| {
        cl.query(
            db,
            "SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 3; SET TimeZone = 'UTC';
             SELECT string_agg(format('%s|%s|%s|%s|%s', day, at, took, ratio, tz), ';' ORDER BY day) FROM ev",
        )
    };
    assert_eq!(iso(a, &src), iso(b, &tgt), "{}", c.log());
    let got = iso(b, &tgt)[0].clone().unwrap();
    assert!(
        got.starts_with("2020-01-02|2020-01-02 03:04:05.678|2 days 04:06:08|0.30000000000000004|"),
        "{got}"
    );
}

/// Changing a captured table's key is refused while its log holds changes
/// not yet applied (they would be lost), and accepted once they are.
#[test]
fn key_change_waits_for_pending_changes() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair(
        "kc",
        "CREATE TABLE kv (k int PRIMARY KEY, code text NOT NULL UNIQUE, v text)",
    );
    fixtures::sync_tables(&c, &["kv"], "kc", &["autokick=0"]);
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a', 'one'), (2, 'b', 'two')");
    let before = c.snapshot();
    let err = c.fails(&["update", "table", "kv", "pkey=code"], 1);
    assert!(err.contains("still holds 2 change(s) not yet applied"), "{err}");
    assert_eq!(before, c.snapshot());
    let _d = c.start();
    c.ok(&["kick", "kc", "60"]);
    c.ok(&["update", "table", "kv", "pkey=code"]);
    c.ok(&["reload"]);
    a.exec(&src, "UPDATE kv SET v = 'uno' WHERE code = 'a'");
    c.ok(&["kick", "kc", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"), "{}", c.log());
}

/// A partitioned table: writes aimed straight at a partition, and updates
/// that move a row to another partition (a key change), replicate.
#[test]
fn partitioned_table_with_direct_partition_writes() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair(
        "pt",
        "CREATE TABLE m (region int, id int, v text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
             CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1);
             CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);",
    );
    let out = c.ok(&["add", "all", "tables", "db=src", "relgroup=g"]);
    assert!(
        out.contains("Added table public.m to relgroup g") && !out.contains("public.m1"),
        "partitions come with their parent: {out}"
    );
    fixtures::add_sync(&c, "pt", &["autokick=0"]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO m VALUES (1, 1, 'via parent'); INSERT INTO m1 VALUES (1, 2, 'into the partition'); INSERT INTO m2 VALUES (2, 3, 'p2')");
    c.ok(&["kick", "pt", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
    a.exec(&src, "UPDATE m SET region = 2 WHERE id = 1; UPDATE m1 SET v = 'changed in place' WHERE id = 2; DELETE FROM m2 WHERE id = 3");
    c.ok(&["kick", "pt", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", c.log());
    assert!(checksum(b, &tgt, "m").starts_with("2 rows"));
}

/// A BEFORE trigger that rewrites the key: the old key is still logged, so
/// no stale row stays behind on the target.
#[test]
fn key_rewritten_by_a_before_trigger() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("bt", "CREATE TABLE t (k int PRIMARY KEY, v text)");
    a.exec(
        &src,
        "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.v = 'move' THEN NEW.k := NEW.k + 1000; END IF; RETURN NEW; END $$;
         CREATE TRIGGER bump BEFORE UPDATE ON t FOR EACH ROW EXECUTE PROCEDURE bump();
         INSERT INTO t VALUES (1, 'one'), (2, 'two');",
    );
    fixtures::sync_tables(&c, &["t"], "bt", &["autokick=0", "onetimecopy=1"]);
    let _d = c.start();
    c.ok(&["kick", "bt", "60"]);
    a.exec(&src, "UPDATE t SET v = 'move' WHERE k = 1");
    c.ok(&["kick", "bt", "60"]);
    assert_eq!(
        b.query(&tgt, "SELECT string_agg(k::text, ',' ORDER BY k) FROM t"),
        vec![Some("2,1001".into())]
    );
}

/// A key column's type changes while changes are pending: the sync keeps
/// working (the log follows the type in place) instead of getting stuck.
#[test]
fn key_type_change_does_not_wedge_the_sync() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("kt", "CREATE TABLE t (k int PRIMARY KEY, v text)");
    fixtures::sync_tables(&c, &["t"], "kt", &["autokick=0"]);
    let _d = c.start();
    a.exec(&src, "INSERT INTO t VALUES (1, 'a')");
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, "ALTER TABLE t ALTER COLUMN k TYPE bigint");
    }
    c.ok(&["reload"]);
    a.exec(&src, "INSERT INTO t VALUES (5000000000, 'big')");
    c.ok(&["kick", "kt", "60"]);
    assert_eq!(checksum(a, &src, "t"), checksum(b, &tgt, "t"), "{}", c.log());
}

/// A batch many times statement_chunk_size (keys deleted chunk by chunk,
/// rows copied in one stream): updates, deletes, inserts, a key change, a
/// row that stops matching the table's filter, identity columns, and two
/// rows swapping a unique value in one batch all arrive exactly; a batch
/// under the size agrees.
#[test]
fn large_batches_apply_exactly() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE wide (k int PRIMARY KEY, v text, n numeric);
               CREATE TABLE uniq (k int PRIMARY KEY, u int NOT NULL UNIQUE, v text);
               CREATE TABLE ident (k int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, g int GENERATED ALWAYS AS IDENTITY (START 1000), v text);
               CREATE TABLE part (k int PRIMARY KEY, keep boolean NOT NULL, v text)";
    let (c, src, tgt) = fixtures::synced("staged", ddl, &["wide", "uniq", "ident", "part"], &["autokick=0"]);
    c.ok(&["update", "table", "part", "filter=keep"]);
    c.ok(&["set", "statement_chunk_size=50"]);
    a.exec(
        &src,
        "INSERT INTO wide SELECT g, 'v' || g, g / 3.0 FROM generate_series(1, 2000) g;
         INSERT INTO uniq SELECT g, g, 'u' FROM generate_series(1, 500) g;
         INSERT INTO ident (v) SELECT 'i' || g FROM generate_series(1, 300) g;
         INSERT INTO part SELECT g, true, 'p' FROM generate_series(1, 400) g",
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let same = |t: &str| checksum(a, &src, t) == checksum(b, &tgt, t);
    for t in ["wide", "uniq", "ident", "part"] {
        assert!(same(t), "{t} after the first batch\n{}", c.log());
    }
    // One batch: updates, deletes, inserts and a key change; two rows
    // swap their unique value; rows stop (and start) matching the filter.
    a.exec(
        &src,
        "UPDATE wide SET v = v || '!', n = n * 2 WHERE k % 3 = 0;
         DELETE FROM wide WHERE k % 7 = 0;
         INSERT INTO wide SELECT g, 'new', NULL FROM generate_series(2001, 2300) g;
         UPDATE wide SET k = k + 10000 WHERE k BETWEEN 100 AND 160;
         UPDATE uniq SET u = -1 WHERE k = 1; UPDATE uniq SET u = 1 WHERE k = 2; UPDATE uniq SET u = 2 WHERE k = 1;
         UPDATE uniq SET u = u + 1000, v = 'moved' WHERE k > 2;
         UPDATE ident SET v = v || '?' WHERE k % 2 = 0;
         DELETE FROM ident WHERE k % 5 = 0;
         UPDATE part SET keep = false WHERE k % 4 = 0;
         UPDATE part SET v = 'q' WHERE k % 4 = 1",
    );
    c.ok(&["kick", "s", "60"]);
    for t in ["wide", "uniq", "ident", "part"] {
        if t == "part" {
            assert_eq!(
                b.query(&tgt, "SELECT count(*)::text FROM part")[0].as_deref(),
                Some("300"),
                "rows that stop matching the filter leave the target"
            );
            assert_eq!(
                checksum(a, &src, "(SELECT * FROM part WHERE keep)"),
                checksum(b, &tgt, "part"),
            );
        } else {
            assert!(same(t), "{t} after the second batch\n{}", c.log());
        }
    }
    let keys: i64 = a.query(
        &c.ctl_db,
        "SELECT max((x->>'keys')::bigint)::text
           FROM (SELECT details FROM capra.run WHERE sync = 's' AND state = 'good' ORDER BY id DESC LIMIT 1) r,
                jsonb_array_elements(r.details->'tables') x",
    )[0]
    .as_deref()
    .unwrap_or("0")
    .parse()
    .unwrap_or(0);
    assert!(keys > 50, "the batch was large enough to be staged: {keys} keys");
    // A small batch (under the chunk size) agrees.
    a.exec(
        &src,
        "UPDATE wide SET v = 'small' WHERE k < 20; DELETE FROM uniq WHERE k = 3",
    );
    c.ok(&["kick", "s", "60"]);
    assert!(same("wide") && same("uniq"), "{}", c.log());
}

/// A source captured by capture version 5 (statement-level UPDATE trigger,
/// a NOTIFY in every capture function) is upgraded in place when the
/// daemon attaches: the UPDATE trigger becomes row-level, the functions
/// lose the NOTIFY, the change log keeps what it holds, and every change
/// still replicates. The functions cast nothing and look nothing up
/// through the writer's search_path.
#[test]
fn capture_version_5_is_upgraded_in_place() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "upgrade5",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["autokick=0"],
    );
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a'), (2, 'b')");
    let id = a.query(&src, "SELECT id::text FROM capra.captured WHERE relname = 'kv'")[0]
        .clone()
        .unwrap();
    // Back to version 5's shape, with a change logged by it.
    a.exec(
        &src,
        &format!(
            "UPDATE capra.capture_meta SET version = 5;
             CREATE OR REPLACE FUNCTION capra.capture_{id}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $f$ BEGIN
               IF TG_OP = 'UPDATE' THEN INSERT INTO capra.delta_{id} (k) SELECT k FROM capra_new UNION SELECT k FROM capra_old;
               ELSIF TG_OP = 'INSERT' THEN INSERT INTO capra.delta_{id} (k) SELECT k FROM capra_new;
               ELSIF TG_OP = 'DELETE' THEN INSERT INTO capra.delta_{id} (k) SELECT k FROM capra_old;
               ELSE INSERT INTO capra.truncate_log (captured) VALUES ({id}); END IF;
               PERFORM pg_catalog.pg_notify('capra', ''); RETURN NULL; END $f$;
             DROP TRIGGER capra_capture_u ON kv;
             CREATE TRIGGER capra_capture_u AFTER UPDATE ON kv REFERENCING OLD TABLE AS capra_old NEW TABLE AS capra_new
                 FOR EACH STATEMENT EXECUTE PROCEDURE capra.capture_{id}();
             UPDATE kv SET v = 'logged by v5' WHERE k = 1"
        ),
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        "UPDATE kv SET k = 20, v = 'moved' WHERE k = 2; INSERT INTO kv VALUES (3, 'c')",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"), "{}", c.log());
    assert_eq!(
        a.query(
            &src,
            "SELECT (SELECT version FROM capra.capture_meta)::text || ' ' || (tgtype & 1)::text FROM pg_trigger
              WHERE tgrelid = 'kv'::regclass AND tgname = 'capra_capture_u'"
        )[0]
        .as_deref(),
        Some("8 1"),
        "upgraded to a row-level UPDATE trigger"
    );
    let def = a.query(
        &src,
        &format!("SELECT pg_get_functiondef('capra.capture_{id}'::regproc)"),
    )[0]
    .clone()
    .unwrap();
    assert!(!def.contains("pg_notify"), "{def}");
    assert!(
        !def.contains("::"),
        "no cast resolves a type through the caller's search_path: {def}"
    );
}

/// A source captured by capture version 7, whose change logs still call
/// their own columns `txid` and `ts`, is upgraded in place when the
/// daemon attaches: the columns are renamed (`capra_txid`, `capra_ts`), a
/// change logged before the upgrade still replicates, and so do later ones.
#[test]
fn capture_version_7_logs_are_renamed_in_place() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::synced(
        "upgrade7",
        "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        &["kv"],
        &["autokick=0"],
    );
    a.exec(&src, "INSERT INTO kv VALUES (1, 'a'), (2, 'b')");
    let id = a.query(&src, "SELECT id::text FROM capra.captured WHERE relname = 'kv'")[0]
        .clone()
        .unwrap();
    a.exec(
        &src,
        &format!(
            "UPDATE capra.capture_meta SET version = 7;
             ALTER TABLE capra.delta_{id} RENAME COLUMN capra_txid TO txid;
             ALTER TABLE capra.delta_{id} RENAME COLUMN capra_ts TO ts;
             ALTER TABLE capra.truncate_log RENAME COLUMN capra_txid TO txid;
             ALTER TABLE capra.truncate_log RENAME COLUMN capra_ts TO ts;
             UPDATE kv SET v = 'logged by v7' WHERE k = 1"
        ),
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    a.exec(&src, "DELETE FROM kv WHERE k = 2; INSERT INTO kv VALUES (3, 'c')");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kv"), checksum(b, &tgt, "kv"), "{}", c.log());
    assert_eq!(
        value(
            a,
            &src,
            &format!(
                "SELECT string_agg(attname::text, ',' ORDER BY attnum) FROM pg_attribute
                  WHERE attrelid = 'capra.delta_{id}'::regclass AND attnum > 0"
            )
        ),
        "capra_txid,capra_ts,k"
    );
}
