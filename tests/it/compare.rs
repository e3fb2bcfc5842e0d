//! `capra compare`: the reported keys are exactly the injected ones, over
//! values that fool naive digests, across major versions, while the
//! application writes and the daemon replicates; `--repair` through the
//! daemon's runs, also when the daemon is killed in the middle.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::cluster::{self, Cluster};
use crate::support::daemon::wait_for_showing;
use crate::support::{fixtures, load, unique, Capra};

/// A table of values that fool digests which concatenate text, ignore
/// NULLs, round floats or print times in the session's zone.
const FUZZ_DDL: &str = "
CREATE TABLE fz (
    id bigint PRIMARY KEY,
    t text, n numeric, f float8, r real, ts timestamptz, j jsonb, b bytea, arr text[],
    d date, iv interval
);
CREATE TABLE ck (a int, b text, v text, PRIMARY KEY (a, b));";

/// Rows both sides start with (inserted with capture off on the source).
const FUZZ_ROWS: &str = "
INSERT INTO fz VALUES
 (1, NULL, 1.1, 1.5, 1.5, '2024-01-01 00:00:00+00', '{\"a\": 1}', '\\x00ff', '{a,b}', '2024-01-01', '1 day'),
 (2, '', 1.10, 'NaN', 'Infinity', '2024-06-30 23:59:59.999999+00', '[]', '\\x', '{}', 'infinity', '0'),
 (3, 'NULL', 0, '-Infinity', '-0', '-infinity', 'null', NULL, '{NULL}', NULL, NULL),
 (4, 'a,b', -1e-20, 0.1, 0.1, 'infinity', '{\"k\": \"v,w\"}', '\\x2c', '{\"a,b\",c}', '1999-12-31', '-1 mon'),
 (5, 'say \"hi\"', 123456789012345678901234567890.123, 1e308, 3.4e38, '2000-02-29 12:00:00+05:30', '{\"n\": 1.10}', '\\x22', '{\"\\\\\"}', '2000-02-29', '1 year 2 mons'),
 (6, 'tab\there', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (7, 'x', 7, 7, 7, '2024-01-01 00:00:00+00', '{}', '\\x07', '{x}', '2024-01-01', '7 days'),
 (8, 'y', 8, 8, 8, '2024-01-01 00:00:00+00', '{}', '\\x08', '{y}', '2024-01-01', '8 days'),
 (-9223372036854775808, 'min', 1, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL),
 (9223372036854775807, 'max', 1, 1, 1, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO fz SELECT i, 'row ' || i, i / 7.0, i / 3.0, i / 3.0, '2020-01-01'::timestamptz + i * interval '1 hour',
       jsonb_build_object('i', i), decode(md5(i::text), 'hex'), ARRAY[i::text], '2020-01-01'::date + i, i * interval '1 s'
  FROM generate_series(100, 3099) i;
INSERT INTO ck SELECT i % 7, 'k' || i, 'v' || i FROM generate_series(1, 500) i;";

/// The sync "s" from "src" to "tgt" over `fz` and `ck`, both sides loaded
/// with the same rows without capture: nothing is in flight.
fn fuzz_pair(from: &Cluster, to: &Cluster, tag: &str) -> (Capra, String, String) {
    let (c, src, tgt) = fixtures::pair_on(from, to, tag, FUZZ_DDL);
    from.exec(&src, FUZZ_ROWS);
    to.exec(&tgt, FUZZ_ROWS);
    fixtures::sync_tables(&c, &["fz", "ck"], "s", &["autokick=0"]);
    (c, src, tgt)
}

/// `compare --json`'s keys per kind, as "table:kind:key" strings.
fn reported(c: &Capra, args: &[&str], code: i32) -> BTreeSet<String> {
    let mut all = vec!["compare", "s", "--json"];
    all.extend_from_slice(args);
    let r = c.run(&all);
    assert_eq!(r.code, Some(code), "{}\n{}\n{}", r.cmd, r.stdout, r.stderr);
    let doc: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("one JSON document");
    assert_eq!(doc["identical"], serde_json::json!(code == 0), "{doc}");
    let mut out = BTreeSet::new();
    for t in doc["tables"].as_array().unwrap() {
        assert!(
            t["in_flight"].as_array().unwrap().is_empty(),
            "nothing is in flight: {t}"
        );
        for kind in ["missing", "extra", "different"] {
            for k in t[kind].as_array().unwrap() {
                let vals: Vec<String> = k
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                out.insert(format!("{}:{kind}:{}", t["table"].as_str().unwrap(), vals.join("|")));
            }
        }
    }
    out
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Differences injected on both sides (capture off on the source) are
/// exactly what compare reports: NULL vs '' vs 'NULL', 1.1 vs 1.10, NaN and
/// infinities, -0, a jsonb, a byte, the same instant written under another
/// TimeZone (equal) and a shifted one (different), keys at the bigint
/// limits, composite keys, and two rows that swapped their values.
#[test]
fn compare_reports_exactly_the_injected_differences() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fuzz_pair(a, b, "cmpfuzz");
    assert!(reported(&c, &[], 0).is_empty());
    let out = c.ok(&["compare", "s"]);
    assert!(out.trim_end().ends_with("identical"), "{out}");
    assert!(out.contains("compare s: 2 tables on 1 database, identical"), "{out}");
    // The same instants under another zone, and text the session prints
    // otherwise, are no difference.
    b.exec(
        &tgt,
        "SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY';
         UPDATE fz SET ts = '2023-12-31 19:00:00-05' WHERE id = 1;
         UPDATE fz SET j = '{\"a\":   1}' WHERE id = 1",
    );
    assert!(reported(&c, &[], 0).is_empty());
    b.exec(
        &tgt,
        "UPDATE fz SET t = '' WHERE id = 1;            -- NULL -> ''
         UPDATE fz SET t = NULL WHERE id = 2;          -- '' -> NULL
         UPDATE fz SET t = 'null' WHERE id = 3;        -- 'NULL' -> 'null'
         UPDATE fz SET n = 1.1 WHERE id = 2;           -- 1.10 -> 1.1
         UPDATE fz SET f = 'Infinity' WHERE id = 4;
         UPDATE fz SET r = 0 WHERE id = 3;             -- -0 -> 0 (real)
         UPDATE fz SET ts = ts + interval '1 microsecond' WHERE id = 5;
         UPDATE fz SET j = '{\"n\": 1.1}' WHERE id = 5;
         UPDATE fz SET b = '\\x06' WHERE id = 6;
         UPDATE fz SET arr = '{NULL,x}' WHERE id = 7;
         UPDATE fz SET t = 'y' WHERE id = 7; UPDATE fz SET t = 'x' WHERE id = 8;  -- a swap
         DELETE FROM fz WHERE id = 9223372036854775807;
         DELETE FROM fz WHERE id IN (150, 2000);
         INSERT INTO fz (id, t) VALUES (-1, 'extra'), (5000, 'extra');
         UPDATE fz SET iv = '24 hours' WHERE id = 1;   -- equal to '1 day' but stored otherwise
         UPDATE ck SET v = 'changed' WHERE a = 3 AND b = 'k10';
         DELETE FROM ck WHERE a = 0 AND b = 'k7';
         INSERT INTO ck VALUES (6, 'k7', 'x')",
    );
    a.exec(
        &src,
        "SET session_replication_role = replica;
         UPDATE fz SET n = 2.50 WHERE id = 3000;
         INSERT INTO fz (id, t) VALUES (-9223372036854775807, 'only on src');
         UPDATE fz SET f = 'Infinity'::float8 - 'Infinity'::float8 WHERE id = 2  -- another NaN's bits: equal",
    );
    let want = set(&[
        "public.fz:different:1",
        "public.fz:different:2",
        "public.fz:different:3",
        "public.fz:different:4",
        "public.fz:different:5",
        "public.fz:different:6",
        "public.fz:different:7",
        "public.fz:different:8",
        "public.fz:different:3000",
        "public.fz:missing:9223372036854775807",
        "public.fz:missing:150",
        "public.fz:missing:2000",
        "public.fz:missing:-9223372036854775807",
        "public.fz:extra:-1",
        "public.fz:extra:5000",
        "public.ck:different:3|k10",
        "public.ck:missing:0|k7",
        "public.ck:extra:6|k7",
    ]);
    assert_eq!(reported(&c, &[], 1), want);
    // One table, schema-qualified or not; the text form.
    assert_eq!(reported(&c, &["public.ck"], 1).len(), 3);
    let r = c.run(&["compare", "s", "ck"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stdout.contains("public.ck on tgt: 1 missing, 1 extra, 1 different"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("  missing  (a, b)=(0, k7)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("compare s: 1 table on 1 database, 3 differences"),
        "{}",
        r.stdout
    );
    // The target as the truth: missing and extra trade places.
    let flipped = reported(&c, &["--truth", "tgt", "ck"], 1);
    assert!(
        flipped.contains("public.ck:extra:0|k7") && flipped.contains("public.ck:missing:6|k7"),
        "{flipped:?}"
    );
    // status shows the last compare.
    let st = c.ok(&["status", "s"]);
    assert!(st.contains("Last compare"), "{st}");
}

/// Bad input: one line, exit status 2, nothing recorded.
#[test]
fn compare_refuses_bad_input_in_one_line() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, _src, _tgt) = fuzz_pair(a, b, "cmpbad");
    for (args, says) in [
        (vec!["compare", "nosuch"], "sync \"nosuch\" does not exist"),
        (vec!["compare", "s", "nosuch"], "table nosuch is not in sync \"s\""),
        (
            vec!["compare", "s", "--truth", "x"],
            "database \"x\" is not an active database of sync \"s\"",
        ),
        (
            vec!["compare", "s", "--truth", "tgt", "--repair"],
            "--repair needs the truth to be a source of sync \"s\"",
        ),
        (vec!["compare", "s", "--repair"], "capra is not running"),
    ] {
        let r = c.run(&args);
        assert_eq!(r.code, Some(2), "{:?}: {} {}", args, r.stdout, r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(says), "{:?}: {}", args, r.stderr);
    }
    let n = cluster::a().query(&c.ctl_db, "SELECT count(*) FROM capra.compare_result");
    assert_eq!(n[0].as_deref(), Some("0"));
}

/// A table big enough for ranges and several levels: 200,000 rows with 40
/// scattered differences are found exactly, sending far less than the table.
#[test]
fn compare_finds_scattered_differences_in_a_larger_table() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v text, n numeric)";
    let (c, src, tgt) = fixtures::pair(&unique("cmpbig"), ddl);
    let fill = "INSERT INTO big SELECT i, md5(i::text), i / 3.0 FROM generate_series(1, 200000) i; ANALYZE big";
    a.exec(&src, fill);
    b.exec(&tgt, fill);
    fixtures::sync_tables(&c, &["big"], "s", &["autokick=0"]);
    let ids: Vec<i32> = (0..40).map(|i| 1 + i * 4999).collect();
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    b.exec(
        &tgt,
        &format!("UPDATE big SET v = 'x' WHERE id IN ({})", list.join(",")),
    );
    let got = reported(&c, &[], 1);
    let want: BTreeSet<String> = ids.iter().map(|i| format!("public.big:different:{i}")).collect();
    assert_eq!(got, want);
}

/// Between PostgreSQL 12 and 17 (float output changed in 12) the same
/// values compare identical, and one changed float is found.
#[test]
fn compare_across_major_versions_finds_no_false_difference() {
    let (old, new) = (cluster::version(12), cluster::version(17));
    let (c, _src, tgt) = fuzz_pair(old, new, "cmpver");
    assert!(reported(&c, &[], 0).is_empty());
    new.exec(&tgt, "UPDATE fz SET f = 0.30000000000000004 WHERE id = 4");
    assert_eq!(reported(&c, &[], 1), set(&["public.fz:different:4"]));
}

/// `--repair` through the daemon: the target gets the truth's rows (and
/// loses its extra ones), compare says how many it repaired and is then
/// identical. A daemon killed while a repair waits for its run: the next
/// compare and repair converge.
#[test]
fn repair_goes_through_the_engine_and_survives_kill_9() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, _src, tgt) = fuzz_pair(a, b, "cmprep");
    let d = c.start();
    b.exec(
        &tgt,
        "UPDATE fz SET t = 'bad' WHERE id IN (1, 2, 3); DELETE FROM fz WHERE id = 200;
         INSERT INTO fz (id, t) VALUES (-5, 'extra'); DELETE FROM ck WHERE a = 1",
    );
    let r = c.run(&["compare", "s", "--repair"]);
    assert_eq!(r.code, Some(0), "{}\n{}\n{}", r.stdout, r.stderr, c.log());
    assert!(r.stdout.contains("repaired"), "{}", r.stdout);
    let n = 5 + cluster::a().query(&_src, "SELECT count(*) FROM ck WHERE a = 1")[0]
        .as_deref()
        .unwrap()
        .parse::<usize>()
        .unwrap();
    assert!(r.stdout.contains(&format!("repaired {n} rows")), "{n}: {}", r.stdout);
    assert!(r.stdout.trim_end().ends_with("identical"), "{}", r.stdout);
    assert!(reported(&c, &[], 0).is_empty());
    // Killed while the repair waits for its run (held up by a row lock on
    // the target, which compare's reads do not wait for).
    b.exec(&tgt, "UPDATE fz SET t = 'bad again' WHERE id BETWEEN 100 AND 160");
    let mut holder = b.client(&tgt);
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("SELECT 1 FROM fz WHERE id = 100 FOR UPDATE").unwrap();
    let child = c
        .command()
        .args(&c.global)
        .args(["compare", "s", "--repair"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    d.kill9();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("daemon stopped before the repair ran"), "{err}");
    tx.rollback().unwrap();
    let _d = c.start();
    let r = c.run(&["compare", "s", "--repair"]);
    assert_eq!(r.code, Some(0), "{}\n{}\n{}", r.stdout, r.stderr, c.log());
    assert!(reported(&c, &[], 0).is_empty());
}

/// While pgbench writes to the source and the daemon replicates, compare
/// reports no difference (changes not applied yet are in flight, not
/// differences); it holds nothing above ACCESS SHARE and no snapshot for
/// long, sampled while it runs; a difference made on the target is found.
#[test]
fn compare_under_load_reports_no_in_flight_row_and_holds_little() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgts) = fixtures::pgbench_sync(&[b], &["autokick=1", "onetimecopy=1"]);
    let tgt = tgts[0].clone();
    let _d = c.start();
    c.ok(&["kick", "bench", "60"]);
    let load = load::pgbench_for(a, src.clone(), 25, 200);
    std::thread::sleep(Duration::from_secs(2));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let db = tgt.clone();
        std::thread::spawn(move || {
            let mut worst = (0.0f64, BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (cl, d) in [(cluster::a(), "postgres"), (cluster::b(), db.as_str())] {
                    for r in cl.query(
                        d,
                        "SELECT coalesce(extract(epoch FROM max(now() - a.xact_start)), 0)::text || '|' ||
                                coalesce(string_agg(DISTINCT l.mode, ','), '')
                           FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'relation'
                          WHERE a.query LIKE '%hashtext%' AND a.pid <> pg_backend_pid() AND a.state = 'active'",
                    ) {
                        let r = r.unwrap_or_default();
                        let (age, modes) = r.split_once('|').unwrap_or(("0", ""));
                        worst.0 = worst.0.max(age.parse().unwrap_or(0.0));
                        worst
                            .1
                            .extend(modes.split(',').filter(|m| !m.is_empty()).map(String::from));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        })
    };
    let started = Instant::now();
    let r = c.run(&["compare", "bench", "--json"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (age, modes) = sampler.join().unwrap();
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    let doc: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(doc["identical"], serde_json::json!(true), "{doc}");
    assert!(age < 5.0, "a compare statement ran {age} s");
    assert!(modes.iter().all(|m| m == "AccessShareLock"), "{modes:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // A difference made on the target while the load goes on is found.
    b.exec(&tgt, "UPDATE pgbench_accounts SET filler = 'tampered' WHERE aid = 77");
    let r = c.run(&["compare", "bench", "pgbench_accounts", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let diff = doc["tables"][0]["different"].as_array().unwrap();
    let inflight = doc["tables"][0]["in_flight"].as_array().unwrap();
    assert!(
        diff.contains(&serde_json::json!({"aid": "77"})) || inflight.contains(&serde_json::json!({"aid": "77"})),
        "{doc}"
    );
    assert!(diff.len() <= 1, "only the tampered row may differ: {doc}");
    let (ok, msg) = load.join().unwrap();
    assert!(ok, "{msg}");
    wait_for_showing(
        60,
        "compare identical after the load and a repair",
        || c.run(&["compare", "bench", "--repair"]).code == Some(0),
        || c.log(),
    );
}

/// `compare_schedule` runs compare on its own; a compare that finds
/// differences mails like any incident, and one that finds none again
/// says so. `compare_throttle` slows compare down by its pause.
#[test]
fn scheduled_compare_mails_differences_and_throttle_slows_it() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, _src, tgt) = fuzz_pair(a, b, "cmpsched");
    let smtp = crate::support::smtp::Smtp::start();
    crate::support::smtp::mail_settings(&c, smtp.port);
    c.ok(&["set", "compare_schedule=* * * * *"]);
    let _d = c.start();
    b.exec(&tgt, "UPDATE fz SET t = 'tampered' WHERE id = 7");
    wait_for_showing(
        100,
        "a scheduled compare to mail the difference",
        || !smtp.with("capra compare found 1 difference").is_empty(),
        || format!("{}\n{:?}", c.log(), smtp.mails()),
    );
    let mail = smtp.with("capra compare found 1 difference").remove(0);
    assert!(
        mail.contains("public.fz on tgt: 0 missing, 0 extra, 1 different"),
        "{mail}"
    );
    assert!(mail.contains("capra compare s --repair"), "{mail}");
    let st = c.ok(&["status", "s"]);
    assert!(st.contains("1 difference(s)"), "{st}");
    let r = c.run(&["compare", "s", "--repair"]);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("repaired 1 rows"), "{}", r.stdout);
    wait_for_showing(
        60,
        "the mail that the sync compares identical again",
        || !smtp.with("compares identical").is_empty(),
        || format!("{}\n{:?}", c.log(), smtp.mails()),
    );
    // The throttle: every statement that reads a table pauses. Two
    // tables, each one statement per database (both read at once): at
    // least two pauses one after the other, whatever else the machine does.
    c.ok(&["set", "compare_throttle=1500"]);
    let t0 = Instant::now();
    c.ok(&["compare", "s"]);
    let slow = t0.elapsed();
    assert!(slow >= Duration::from_millis(3000), "{slow:?}");
}

/// A table held by DDL: compare waits its lock_timeout, then says so in
/// one line (exit 2) instead of queueing the application behind it.
#[test]
fn compare_gives_up_on_a_locked_table_in_one_line() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, _src, tgt) = fuzz_pair(a, b, "cmplock");
    let mut holder = b.client(&tgt);
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE ck IN ACCESS EXCLUSIVE MODE").unwrap();
    let r = c.run(&["compare", "s"]);
    tx.rollback().unwrap();
    assert_eq!(r.code, Some(2), "{}", r.stdout);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("public.ck is locked on \"tgt\""), "{}", r.stderr);
}

/// `kick SYNC --dry-run`: the rows the next run would insert, update and
/// delete per table and database, with nothing written (the same answer
/// twice, the target untouched), then the real run does exactly that; a
/// onetimecopy shows as a full copy.
#[test]
fn dry_run_shows_the_next_run_without_writing() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fuzz_pair(a, b, "cmpdry");
    a.exec(
        &src,
        "INSERT INTO fz (id, t) VALUES (9001, 'new'), (9002, 'new');
         UPDATE fz SET t = 'changed' WHERE id IN (100, 101);
         UPDATE fz SET t = t WHERE id = 102;
         DELETE FROM fz WHERE id = 103;
         DELETE FROM ck WHERE a = 1 AND b = 'k1'",
    );
    let before = crate::support::data::checksum(b, &tgt, "fz");
    let dry = |c: &Capra| -> serde_json::Value {
        let out = c.ok(&["kick", "s", "--dry-run", "--json"]);
        serde_json::from_str(out.trim()).unwrap()
    };
    let first = dry(&c);
    assert_eq!(first, dry(&c), "a dry run changes nothing");
    assert_eq!(crate::support::data::checksum(b, &tgt, "fz"), before);
    let fz = first["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.fz")
        .unwrap()
        .clone();
    assert_eq!(
        (
            fz["db"].as_str(),
            fz["inserts"].as_u64(),
            fz["updates"].as_u64(),
            fz["deletes"].as_u64(),
            fz["unchanged"].as_u64()
        ),
        (Some("tgt"), Some(2), Some(2), Some(1), Some(1)),
        "{first}"
    );
    let ck = first["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.ck")
        .unwrap()
        .clone();
    assert_eq!(ck["deletes"].as_u64(), Some(1), "{first}");
    let text = c.ok(&["kick", "s", "--dry-run"]);
    assert!(
        text.contains("public.fz on tgt: 2 insert(s), 2 update(s), 1 delete(s) (1 unchanged)"),
        "{text}"
    );
    assert!(
        text.contains("sync s: 6 row(s) to write on 1 database(s), 0 full copies, 0 conflict(s)"),
        "{text}"
    );
    // The real run does what the dry run said.
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert!(reported(&c, &[], 0).is_empty());
    c.ok(&["update", "sync", "s", "onetimecopy=1"]);
    let text = c.ok(&["kick", "s", "--dry-run"]);
    assert!(
        text.contains("public.fz on tgt: full copy of 3011 rows (onetimecopy=1)"),
        "{text}"
    );
}

/// Two sources: each conflict with the winner the strategy picks, and the
/// rows each source would get from the other.
#[test]
fn dry_run_shows_conflicts_and_their_winners() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let d = fixtures::dbs(&c, "dry", fixtures::CONFLICT_DDL, &[a, b]);
    fixtures::conflict_sync(&c, "dry", &["conflict_strategy=latest"]);
    fixtures::conflicting_writes(a, &d[0], b, &d[1]);
    let out = c.ok(&["kick", "s_dry", "--dry-run", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let conflicts = doc["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{doc}");
    assert_eq!(conflicts[0]["key"], serde_json::json!(["1"]), "{doc}");
    assert_eq!(conflicts[0]["winner"], "dry1", "{doc}");
    assert_eq!(conflicts[0]["reason"], "latest", "{doc}");
    let on = |db: &str| {
        doc["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["db"] == db)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (on("dry1")["inserts"].as_u64(), on("dry1")["deletes"].as_u64()),
        (Some(1), Some(1)),
        "{doc}"
    );
    assert_eq!(on("dry2")["updates"].as_u64(), Some(2), "{doc}");
    let text = c.ok(&["kick", "s_dry", "--dry-run"]);
    assert!(text.contains("conflict on public.t (id)=(1): dry1 at"), "{text}");
    assert!(text.contains("winner dry1 (latest)"), "{text}");
}

/// Changes waiting on the source while no daemon runs never settle: once
/// compare has waited, they are differences (with the reason said), not
/// "in flight" forever.
#[test]
fn changes_a_stopped_sync_never_applies_are_differences() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fuzz_pair(a, b, "cmpstuck");
    a.exec(&src, "UPDATE fz SET t = 'waiting' WHERE id IN (100, 101)");
    b.exec(&tgt, "UPDATE fz SET t = 'tampered' WHERE id = 102");
    let r = c.run(&["compare", "s", "fz"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("public.fz on tgt: 0 missing, 0 extra, 3 different"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("2 of them changed on a source and the sync cannot apply them now"),
        "{}",
        r.stdout
    );
}

/// TRUNCATE and refill on the source, over and over, while the daemon
/// replicates and compare runs: no difference is ever reported.
#[test]
fn truncations_in_flight_are_not_differences() {
    let ddl = "CREATE TABLE tr (id int PRIMARY KEY, v text)";
    let (c, src, _tgt) = fixtures::synced(&unique("cmptrunc"), ddl, &["tr"], &["autokick=1"]);
    let _d = c.start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, src) = (stop.clone(), src.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                cluster::a().exec(
                    &src,
                    &format!(
                        "BEGIN; TRUNCATE tr; INSERT INTO tr SELECT i, 'r{n}' FROM generate_series(1, 200) i; COMMIT"
                    ),
                );
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    for _ in 0..4 {
        let r = c.run(&["compare", "s", "--json"]);
        let doc: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap_or_default();
        assert_eq!(r.code, Some(0), "{}\n{}\n{}", r.stdout, r.stderr, c.log());
        assert_eq!(doc["identical"], serde_json::json!(true), "{doc}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    wait_for_showing(
        60,
        "compare identical once the writes stop",
        || c.run(&["compare", "s"]).code == Some(0),
        || c.log(),
    );
}

/// A table the daemon sets aside (a target constraint rejects a row) keeps
/// its change unapplied while the rest of the sync runs: compare reports
/// the row as a difference once it has waited, not as in flight forever.
#[test]
fn a_table_set_aside_shows_its_unapplied_rows_as_differences() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE ok (id int PRIMARY KEY, v text); CREATE TABLE picky (id int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::synced(&unique("cmpaside"), ddl, &["ok", "picky"], &["autokick=1"]);
    b.exec(&tgt, "ALTER TABLE picky ADD CONSTRAINT no_bad CHECK (v <> 'bad')");
    let _d = c.start();
    a.exec(
        &src,
        "INSERT INTO ok VALUES (1, 'fine'); INSERT INTO picky VALUES (1, 'bad')",
    );
    wait_for_showing(
        60,
        "the table to be set aside",
        || c.ok(&["status", "s"]).contains("Tables set aside"),
        || c.log(),
    );
    let r = c.run(&["compare", "s", "--json"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let doc: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let picky = doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.picky")
        .unwrap()
        .clone();
    assert_eq!(picky["missing"], serde_json::json!([{"id": "1"}]), "{doc}");
    assert_eq!(picky["unapplied"], serde_json::json!(1), "{doc}");
}

/// latest_all_tables: the dry run names the winner the run then picks (the
/// source with the newest change over every table, not over the key).
#[test]
fn dry_run_winner_is_the_runs_winner_under_latest_all_tables() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY, v text);
               INSERT INTO t VALUES (1, 'x'); INSERT INTO u VALUES (1, 'x');";
    let d = fixtures::dbs(&c, "lat", ddl, &[a, b]);
    c.ok(&["add", "table", "t", "u", "db=lat1", "relgroup=g_lat"]);
    c.ok(&[
        "add",
        "sync",
        "s_lat",
        "relgroup=g_lat",
        "dbs=lat1:source,lat2:source",
        "autokick=0",
        "conflict_strategy=latest_all_tables",
    ]);
    a.exec(&d[0], "UPDATE t SET v = 'one' WHERE id = 1");
    std::thread::sleep(Duration::from_millis(50));
    b.exec(&d[1], "UPDATE t SET v = 'two' WHERE id = 1");
    std::thread::sleep(Duration::from_millis(50));
    a.exec(&d[0], "UPDATE u SET v = 'one later' WHERE id = 1");
    let out = c.ok(&["kick", "s_lat", "--dry-run", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["conflicts"][0]["winner"], "lat1", "{doc}");
    let _d = c.start();
    c.ok(&["kick", "s_lat", "60"]);
    for (cl, db) in [(a, &d[0]), (b, &d[1])] {
        assert_eq!(cl.query(db, "SELECT v FROM t WHERE id = 1")[0].as_deref(), Some("one"));
    }
}

/// A mixed-case table is named as psql needs it (issue 22) by the dry run,
/// compare and delta alike.
#[test]
fn mixed_case_tables_are_named_as_psql_needs_them() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("cmpodd", r#"CREATE TABLE "Odd" (k int PRIMARY KEY, v text)"#);
    fixtures::sync_tables(&c, &["Odd"], "s", &["autokick=0"]);
    b.exec(&tgt, r#"INSERT INTO "Odd" VALUES (2, 'extra')"#);
    let r = c.run(&["compare", "s"]);
    assert!(
        r.stdout
            .contains(r#"public."Odd" on tgt: 0 missing, 1 extra, 0 different"#),
        "{}",
        r.stdout
    );
    a.exec(&src, r#"INSERT INTO "Odd" VALUES (1, 'new')"#);
    let text = c.ok(&["kick", "s", "--dry-run"]);
    assert!(
        text.contains(r#"public."Odd" on tgt: 1 insert(s), 0 update(s), 0 delete(s) (0 unchanged)"#),
        "{text}"
    );
    let text = c.ok(&["delta"]);
    assert!(text.contains(r#"  public."Odd"         1  (sync s"#), "{text}");
    // A source that does not answer makes the total unknown, not a count
    // a script waiting for 0 could take for "all applied".
    c.ok(&[
        "update",
        "db",
        "src",
        &format!("port={}", cluster::free_port()),
        "--force",
    ]);
    let r = c.run(&["delta"]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("Total deltas across all targets: unknown (1 database(s) did not answer; 0 on the others)"),
        "{}",
        r.stdout
    );
}
