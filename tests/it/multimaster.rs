//! Multi-master: several sources in one sync, every conflict strategy, Lua
//! conflict hooks, makedelta cascades, and convergence under concurrent
//! pgbench on every source (with SIGKILLs of the daemon in between).

use std::time::{Duration, Instant};

use crate::support::cluster::{self, Cluster};
use crate::support::daemon::wait_for_showing;
use crate::support::data::{checksum, last_run, value};
use crate::support::fixtures::{self, conflict_sync, conflicting_writes, dbs, CONFLICT_DDL};
use crate::support::load::{pgbench_for, pgbench_init, pgbench_same_everywhere};
use crate::support::{unique, Capra};

/// Every strategy on a real conflict between two sources: the winner on
/// both databases, the other changes applied, and the conflict history.
#[test]
fn every_conflict_strategy_settles_a_real_conflict() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    // (tag, strategy, expected v of id 1 on db 1 and db 2)
    /// The values of id 1 expected on db 1 and db 2 (None: equal, either).
    type Expect = Option<(&'static str, &'static str)>;
    let cases: &[(&str, &str, Expect)] = &[
        ("latest", "latest", Some(("one", "one"))),
        ("bucl", "bucardo_latest", Some(("one", "one"))),
        ("latall", "latest_all_tables", Some(("two", "two"))),
        ("src", "source", Some(("one", "one"))),
        ("tgt", "bucardo_target", Some(("two", "two"))),
        ("skip", "skip", Some(("one", "two"))),
        ("prio", "prio2,prio1", Some(("two", "two"))),
        ("single", "single1", Some(("one", "one"))),
        ("rnd", "random", None),
        ("abort", "abort", None),
        // No strategy on the sync: default_conflict_strategy decides.
        ("dflt", "", Some(("two", "two"))),
        // The table's own strategy wins over the sync's (source).
        ("tbl", "source", Some(("two", "two"))),
    ];
    let r = c.run(&["set", "default_conflict_strategy=bucardo_target"]);
    assert_eq!(
        (r.code, r.stderr.as_str()),
        (Some(0), ""),
        "the setting acts: no warning"
    );
    let e = c.fails(&["set", "default_conflict_strategy=nosuch"], 2);
    assert!(e.contains("must be one of"), "{e}");
    let mut made = Vec::new();
    for (tag, strategy, _) in cases {
        let names = dbs(&c, tag, CONFLICT_DDL, &[a, b]);
        let chosen = format!("conflict_strategy={strategy}");
        let opts: Vec<&str> = if strategy.is_empty() { vec![] } else { vec![&chosen] };
        conflict_sync(&c, tag, &opts);
        if *tag == "tbl" {
            let out = c.ok(&["update", "table", "t", "db=tbl1", "standard_conflict=target"]);
            assert!(out.contains("conflict_strategy to target"), "{out}");
        }
        made.push(names);
    }
    let _d = c.start();
    for ((tag, strategy, expect), names) in cases.iter().zip(&made) {
        let (d1, d2) = (&names[0], &names[1]);
        conflicting_writes(a, d1, b, d2);
        let sync = format!("s_{tag}");
        let r = c.run(&["kick", &sync, "60"]);
        let v1 = value(a, d1, "SELECT v FROM t WHERE id = 1");
        let v2 = value(b, d2, "SELECT v FROM t WHERE id = 1");
        let hist: serde_json::Value = serde_json::from_str(&c.ok(&["conflicts", &sync, "--json"])).unwrap();
        assert_eq!(hist.as_array().unwrap().len(), 1, "{strategy}: {hist}");
        let h = &hist[0];
        assert_eq!(h["table"], "public.t");
        assert_eq!(h["key"]["id"], "1");
        assert_eq!(h["contenders"].as_array().unwrap().len(), 2, "{h}");
        if *tag == "abort" {
            assert_ne!(r.code, Some(0), "{strategy}: {}{}", r.stdout, r.stderr);
            assert!(
                last_run(&c, &sync).contains("conflict_strategy is abort"),
                "{}",
                last_run(&c, &sync)
            );
            assert_eq!((v1.as_str(), v2.as_str()), ("one", "two"));
            // Nothing at all was applied.
            assert_eq!(value(b, d2, "SELECT v FROM t WHERE id = 2"), "x");
            assert_eq!(h["winner"], "aborted");
            continue;
        }
        assert_eq!(r.code, Some(0), "{strategy}: {}{}\n{}", r.stdout, r.stderr, c.log());
        match expect {
            Some((e1, e2)) => assert_eq!((v1.as_str(), v2.as_str()), (*e1, *e2), "{strategy}\n{}", c.log()),
            None => {
                assert_eq!(v1, v2, "{strategy}");
                assert!(v1 == "one" || v1 == "two");
            }
        }
        let winner = h["winner"].as_str().unwrap().to_string();
        match *tag {
            "skip" => assert_eq!(winner, "skipped"),
            _ => assert_eq!(
                winner,
                if v1 == "one" {
                    format!("{tag}1")
                } else {
                    format!("{tag}2")
                },
                "{h}"
            ),
        }
        // The other changes went both ways.
        for (cl, d) in [(a, d1), (b, d2)] {
            assert_eq!(value(cl, d, "SELECT v FROM t WHERE id = 2"), "one", "{strategy}");
            assert_eq!(value(cl, d, "SELECT count(*) FROM t WHERE id = 3"), "0", "{strategy}");
            assert_eq!(value(cl, d, "SELECT v FROM t WHERE id = 10"), "two", "{strategy}");
        }
        if *tag != "skip" {
            assert_eq!(checksum(a, d1, "t"), checksum(b, d2, "t"), "{strategy}");
        }
    }
    // The whole history, and the log line.
    let all = c.ok(&["conflicts"]);
    assert_eq!(all.lines().count(), cases.len(), "{all}");
    assert!(all.contains("s_latest  public.t  (id=1)"), "{all}");
    assert!(c.log().contains("Conflict on public.t (id)=(1)"), "{}", c.log());
    assert!(c
        .ok(&["conflicts", "s_src", "--since", "1 hour"])
        .contains("winner: src1"));
    assert!(c
        .ok(&["conflicts", "s_src", "--since", "2999-01-01"])
        .starts_with("No conflicts"));
    // status shows the strategy, the conflicts and each source's clock.
    let st = c.ok(&["status", "s_latest"]);
    for want in [
        "Conflict strategy",
        ": latest\n",
        "Conflicts (24 hours)",
        ": 1, the last at ",
        "(capra conflicts s_latest)",
        "Clock skew (last run)",
        "latest1 ",
        "latest2 ",
    ] {
        assert!(st.contains(want), "{want:?} missing:\n{st}");
    }
    assert!(c
        .ok(&["status", "s_dflt"])
        .contains("target (default_conflict_strategy)"));
    // validate says which change time latest compares on each source.
    let v = c.ok(&["validate", "s_latest"]);
    assert!(
        v.contains("conflict strategy latest compares the logged change time on \"latest1\"")
            && v.contains("set track_commit_timestamp = on there to compare commit times"),
        "{v}"
    );
    let j: serde_json::Value = serde_json::from_str(&c.ok(&["status", "s_latest", "--json"])).unwrap();
    assert_eq!(j["multi_master"]["conflicts_24h"], 1, "{j}");
    assert!(j["multi_master"]["clock_skew_ms"]["latest1"].is_number(), "{j}");
    let e = c.fails(&["conflicts", "--since", "soon"], 2);
    assert!(e.contains("--since"), "{e}");
    c.fails(&["conflicts", "nosuchsync"], 1);
}

/// A Lua conflict hook picks the winner; another composes a merged row
/// that lands everywhere; a failing hook and a hook that never returns
/// fail the run with the hook's file, line and message.
#[test]
fn lua_conflict_hooks_decide_merge_and_fail_clearly() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let hooks = [
        ("pick", "return function(ctx)\n  ctx.log('picking pick2')\n  return 'pick2'\nend\n"),
        (
            "merge",
            "return function(ctx)\n  local n = 0\n  for db, row in pairs(ctx.rows) do n = n + row.n end\n  return { row = { v = 'merged', n = n } }\nend\n",
        ),
        ("boom", "return function(ctx)\n  error('boom')\nend\n"),
        ("slow", "return function(ctx)\n  while true do end\nend\n"),
    ];
    let mut made = Vec::new();
    for (tag, src) in hooks {
        let names = dbs(&c, tag, CONFLICT_DDL, &[a, b]);
        conflict_sync(&c, tag, &["conflict_strategy=source"]);
        let file = c.home_file(&format!("{tag}.lua"), src);
        c.ok(&[
            "add",
            "customcode",
            &format!("h_{tag}"),
            "whenrun=conflict",
            &format!("src_code={}", file.display()),
            &format!("sync=s_{tag}"),
        ]);
        made.push(names);
    }
    let _d = c.start();
    for ((tag, _), names) in hooks.iter().zip(&made) {
        let (d1, d2) = (&names[0], &names[1]);
        conflicting_writes(a, d1, b, d2);
        let sync = format!("s_{tag}");
        let started = Instant::now();
        let r = c.run(&["kick", &sync, "60"]);
        let row = |cl: &Cluster, d: &str| value(cl, d, "SELECT v || '/' || n FROM t WHERE id = 1");
        match *tag {
            "pick" => {
                assert_eq!(r.code, Some(0), "{}{}\n{}", r.stdout, r.stderr, c.log());
                assert_eq!((row(a, d1), row(b, d2)), ("two/7".into(), "two/7".into()));
                assert!(
                    c.log().contains("Message from conflict code h_pick: picking pick2"),
                    "{}",
                    c.log()
                );
                assert!(c
                    .ok(&["conflicts", &sync])
                    .contains("winner: pick2  (hook h_pick (pick.lua))"));
            }
            "merge" => {
                assert_eq!(r.code, Some(0), "{}{}\n{}", r.stdout, r.stderr, c.log());
                assert_eq!((row(a, d1), row(b, d2)), ("merged/12".into(), "merged/12".into()));
                assert!(c.ok(&["conflicts", &sync]).contains("winner: merged"));
                assert_eq!(checksum(a, d1, "t"), checksum(b, d2, "t"));
            }
            "boom" => {
                assert_ne!(r.code, Some(0));
                let e = last_run(&c, &sync);
                assert!(e.starts_with("bad|") && e.contains("boom.lua:2: boom"), "{e}");
                assert!(e.contains("h_boom"), "{e}");
                // Nothing applied.
                assert_eq!(value(b, d2, "SELECT v FROM t WHERE id = 2"), "x");
            }
            "slow" => {
                assert_ne!(r.code, Some(0));
                let e = last_run(&c, &sync);
                assert!(e.contains("slow.lua") && e.contains("longer than 5s"), "{e}");
                assert!(started.elapsed() < Duration::from_secs(30));
            }
            _ => unreachable!(),
        }
    }
}

/// A -> B -> C with makedelta on B (asked for on the database, on the
/// table, or on the A -> B sync): a row written on A reaches C through B's
/// capture; without makedelta it stops at B.
#[test]
fn makedelta_cascades_and_nothing_cascades_without_it() {
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    let c = Capra::install(a);
    for (tag, how) in [("on", "db"), ("tb", "table"), ("sy", "sync"), ("off", "")] {
        let md = !how.is_empty();
        let names = dbs(&c, tag, CONFLICT_DDL, &[a, b, cc]);
        c.ok(&["add", "table", "t", &format!("db={tag}1"), &format!("relgroup=g_{tag}")]);
        c.ok(&[
            "add",
            "sync",
            &format!("ab_{tag}"),
            &format!("relgroup=g_{tag}"),
            &format!("dbs={tag}1:source,{tag}2:target"),
            "autokick=0",
        ]);
        c.ok(&[
            "add",
            "sync",
            &format!("bc_{tag}"),
            &format!("relgroup=g_{tag}"),
            &format!("dbs={tag}2:source,{tag}3:target"),
            "autokick=0",
        ]);
        let r = match how {
            "db" => c.run(&["update", "db", &format!("{tag}2"), "makedelta=1"]),
            "table" => c.run(&[
                "update",
                "table",
                "t",
                &format!("db={tag}1"),
                &format!("makedelta={tag}2"),
            ]),
            "sync" => c.run(&["update", "sync", &format!("ab_{tag}"), "makedelta=1"]),
            _ => c.run(&["list", "dbs"]),
        };
        assert_eq!((r.code, r.stderr.as_str()), (Some(0), ""), "makedelta acts: no warning");
        a.exec(
            &names[0],
            "INSERT INTO t VALUES (100, 'from A', 1); UPDATE t SET v = 'A' WHERE id = 2",
        );
        let _d = c.start();
        c.ok(&["kick", &format!("ab_{tag}"), "60"]);
        c.ok(&["kick", &format!("bc_{tag}"), "60"]);
        assert_eq!(value(b, &names[1], "SELECT v FROM t WHERE id = 100"), "from A");
        let at_c = value(cc, &names[2], "SELECT count(*) FROM t WHERE id = 100 OR v = 'A'");
        if md {
            assert_eq!(at_c, "2", "{}", c.log());
            assert_eq!(checksum(a, &names[0], "t"), checksum(cc, &names[2], "t"));
        } else {
            assert_eq!(at_c, "0", "without makedelta nothing cascades");
        }
    }
}

/// Three sources under concurrent pgbench on all three (every transaction
/// also updates the one branch row, so conflicts and late changes never
/// stop), with the daemon killed with SIGKILL at random moments: the
/// tables end identical, soon after the load stops, and pgbench itself
/// never saw an error.
#[test]
fn three_way_multi_master_under_pgbench_and_sigkill_converges() {
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    let c = Capra::install(a);
    let mut names = Vec::new();
    for (i, cl) in [a, b, cc].iter().enumerate() {
        let db = cl.create_db(&unique(&format!("mm3_{}", i + 1)));
        pgbench_init(cl, &db, 1);
        c.add_db(&format!("p{}", i + 1), cl, &db);
        names.push(db);
    }
    c.ok(&["add", "all", "tables", "db=p1", "-T", "pgbench_history", "relgroup=pg"]);
    c.ok(&["add", "sync", "mm", "relgroup=pg", "dbs=p1:source,p2:source,p3:source"]);
    let nodes: Vec<(&Cluster, &str)> = vec![(a, &names[0]), (b, &names[1]), (cc, &names[2])];
    let secs = 12;
    let loads: Vec<_> = nodes
        .iter()
        .map(|(cl, d)| {
            let cl: &'static Cluster = match cl.port {
                p if p == a.port => a,
                p if p == b.port => b,
                _ => cc,
            };
            pgbench_for(cl, d.to_string(), secs, 40)
        })
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    {
        let mut d = c.start();
        let seed = started.elapsed().subsec_nanos() as u64;
        while started.elapsed() < Duration::from_secs(secs as u64 - 2) {
            // A random moment in the next 1.5 s, then SIGKILL and restart.
            let wait = 500 + (seed.wrapping_mul(kills + 7) % 1000);
            std::thread::sleep(Duration::from_millis(wait));
            if kills < 3 {
                d.kill9();
                kills += 1;
                drop(d);
                d = c.start();
            }
        }
        for l in loads {
            let (_, out) = l.join().unwrap();
            assert!(
                out.contains("number of failed transactions: 0") || !out.contains("failed"),
                "pgbench saw errors: {out}"
            );
            assert!(!out.contains("ERROR"), "pgbench saw errors: {out}");
        }
        let stopped = Instant::now();
        c.wait_for(60, "the three sources to converge", || pgbench_same_everywhere(&nodes));
        let took = stopped.elapsed();
        let runs = |state: &str| -> i64 {
            value(
                a,
                &c.ctl_db,
                &format!("SELECT count(*) FROM capra.run WHERE sync = 'mm' AND state = '{state}'"),
            )
            .parse()
            .unwrap()
        };
        let errors = a.query(
            &c.ctl_db,
            "SELECT e || ' x' || n FROM (SELECT left(error, 90) AS e, count(*) AS n FROM capra.run WHERE sync = 'mm' AND state = 'bad' GROUP BY 1) x ORDER BY n DESC",
        );
        eprintln!(
            "three-way convergence after the load stopped: {:.2}s; runs good {} failed {} {errors:?}",
            took.as_secs_f64(),
            runs("good"),
            runs("bad")
        );
        // Replication kept going under the load: far more good runs than
        // failed ones (deadlocks and lock waits are retried). The runs the
        // SIGKILLs cut short are not failures of replication, and how many
        // good runs fit in the load's seconds depends on the machine.
        let killed: i64 = value(
            a,
            &c.ctl_db,
            "SELECT count(*) FROM capra.run WHERE sync = 'mm' AND state = 'bad' AND error LIKE 'the daemon stopped during this run%'",
        )
        .parse()
        .unwrap();
        let failed = runs("bad") - killed;
        assert!(runs("good") > 0 && runs("good") > 3 * failed, "{errors:?}");
        // Real conflicts happened and were settled.
        let n: i64 = value(a, &c.ctl_db, "SELECT count(*) FROM capra.conflict WHERE sync = 'mm'")
            .parse()
            .unwrap();
        assert!(n > 0, "no conflicts recorded under three-way load");
        drop(d);
    }
    assert_eq!(kills, 3);
    // Every account's balance is the same everywhere, and history rows
    // (not replicated) show pgbench really wrote on all three.
    for (cl, d) in &nodes {
        let h: i64 = value(cl, d, "SELECT count(*) FROM pgbench_history").parse().unwrap();
        assert!(h > 50, "pgbench wrote only {h} rows on {d}");
    }
}

/// A row filter: only matching rows replicate (changes and full copies);
/// a row that stops matching leaves the target, one that starts matching
/// arrives; bad filters are refused with one line and change nothing.
#[test]
fn row_filter_includes_excludes_and_moves_rows_out() {
    let ddl = "CREATE TABLE r (id int PRIMARY KEY, region text NOT NULL, v int);
               INSERT INTO r VALUES (1, 'eu', 1), (2, 'us', 2), (3, 'eu', 3);";
    let (c, src, tgt) = fixtures::pair("filt", ddl);
    let (a, b) = (cluster::a(), cluster::b());
    b.exec(&tgt, "TRUNCATE r");
    c.ok(&["add", "table", "r", "db=src", "relgroup=g"]);
    let before = c.snapshot();
    for bad in [
        "region = 'eu'); DROP TABLE r; --",
        "region = 'eu' -- x",
        "(region = 'eu'",
        "region = $$eu$$",
    ] {
        let e = c.fails(&["update", "table", "r", &format!("filter={bad}")], 2);
        assert!(e.contains("invalid filter"), "{e}");
    }
    let e = c.fails(&["update", "table", "r", "filter=nosuchcol = 1"], 1);
    assert!(
        e.contains("does not work in database \"src\"") && e.contains("nosuchcol"),
        "{e}"
    );
    assert_eq!(c.snapshot(), before, "refused filters change nothing");
    let out = c.ok(&["update", "table", "r", "filter=region = 'eu'"]);
    assert!(out.contains("Changed table public.r filter to region = 'eu'"), "{out}");
    assert!(c
        .ok(&["list", "tables"])
        .contains("PK: id (integer)  Filter: region = 'eu'"));
    fixtures::add_sync(&c, "s", &["autokick=0", "onetimecopy=1"]);
    assert!(c.ok(&["validate", "s"]).contains("OK"));
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let rows = |cl: &Cluster, d: &str| value(cl, d, "SELECT string_agg(id || region || v, ',' ORDER BY id) FROM r");
    assert_eq!(rows(b, &tgt), "1eu1,3eu3", "the full copy takes only matching rows");
    a.exec(
        &src,
        "INSERT INTO r VALUES (4, 'eu', 4), (5, 'us', 5);
         UPDATE r SET region = 'us' WHERE id = 1;   -- moves out
         UPDATE r SET region = 'eu' WHERE id = 2;   -- moves in
         UPDATE r SET v = 30 WHERE id = 3;",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(rows(b, &tgt), "2eu2,3eu30,4eu4", "{}", c.log());
    // Validate checks the filter on the source.
    a.exec(&src, "ALTER TABLE r RENAME COLUMN region TO zone");
    let r = c.run(&["validate", "s"]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stdout.contains("filter") || r.stderr.contains("filter"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    c.ok(&["update", "table", "r", "filter=none"]);
}

/// The other hook points: before_sync / before_txn / before_check_rows can
/// skip a run (nothing applied, the changes wait), after_table_sync sees
/// each table and its counts, after_sync runs last; ctx carries the sync,
/// the run and the databases with their roles.
#[test]
fn hooks_are_called_at_every_point_of_a_run() {
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u (id int PRIMARY KEY);";
    let (c, src, tgt) = fixtures::synced("hookpts", ddl, &["t", "u"], &["autokick=0"]);
    let (a, b) = (cluster::a(), cluster::b());
    let add = |name: &str, point: &str, body: &str| {
        let f = c.home_file(&format!("{name}.lua"), &format!("return function(ctx)\n{body}\nend\n"));
        c.ok(&[
            "add",
            "customcode",
            name,
            &format!("whenrun={point}"),
            &format!("src_code={}", f.display()),
            "sync=s",
        ]);
    };
    add(
        "bs",
        "before_sync",
        "  local r = {} for _, d in ipairs(ctx.dbs) do r[#r+1] = d.name .. ':' .. d.role end\n  ctx.log('before_sync ' .. ctx.sync .. ' run ' .. ctx.run_id .. ' ' .. table.concat(r, ','))",
    );
    add("skipper", "before_check_rows", "  return 'skip'");
    add(
        "ats",
        "after_table_sync",
        "  ctx.log(string.format('after_table_sync %s keys=%d copied=%d', ctx.table, ctx.counts.keys, ctx.counts.copied))",
    );
    add("as", "after_sync", "  ctx.log('after_sync ' .. ctx.hook)");
    a.exec(
        &src,
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'); INSERT INTO u VALUES (1)",
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(
        value(b, &tgt, "SELECT count(*) FROM t"),
        "0",
        "before_check_rows skipped the run"
    );
    let log = c.log();
    assert!(log.contains("before_sync s run "), "{log}");
    assert!(log.contains("src:source,tgt:target"), "{log}");
    assert!(
        !log.contains("after_table_sync"),
        "a skipped run goes no further: {log}"
    );
    c.ok(&["update", "customcode", "skipper", "status=inactive"]);
    c.ok(&["reload"]);
    c.ok(&["kick", "s", "60"]);
    assert_eq!(
        value(b, &tgt, "SELECT count(*) FROM t"),
        "2",
        "the changes waited: {}",
        c.log()
    );
    let log = c.log();
    assert!(log.contains("after_table_sync public.t keys=2 copied=2"), "{log}");
    assert!(log.contains("after_table_sync public.u keys=1 copied=1"), "{log}");
    assert!(log.contains("after_sync after_sync"), "{log}");
}

/// A multi-master sync with a target: a full copy (onetimecopy=1) of the
/// first source reaches the target together with the other source's
/// changes of the same run, so the target matches both sources.
#[test]
fn a_target_copied_in_a_multi_master_run_gets_every_sources_changes() {
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    let c = Capra::install(a);
    let names = dbs(&c, "mt", CONFLICT_DDL, &[a, b, cc]);
    cc.exec(&names[2], "TRUNCATE t");
    c.ok(&["add", "table", "t", "db=mt1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=mt1:source,mt2:source,mt3:target",
        "autokick=0",
        "onetimecopy=1",
    ]);
    a.exec(&names[0], "UPDATE t SET v = 'from 1' WHERE id = 1");
    b.exec(
        &names[1],
        "INSERT INTO t VALUES (20, 'from 2', 0); UPDATE t SET v = 'from 2' WHERE id = 2",
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let all = |cl: &Cluster, d: &str| checksum(cl, d, "t");
    assert_eq!(all(a, &names[0]), all(b, &names[1]), "{}", c.log());
    assert_eq!(all(cc, &names[2]), all(a, &names[0]), "{}", c.log());
    assert_eq!(value(cc, &names[2], "SELECT v FROM t WHERE id = 20"), "from 2");
}

/// Keys print differently on servers with other TimeZone settings and
/// other numeric scales; the same key is still one key: the conflict is
/// found and settled, and both sides end equal.
#[test]
fn keys_compare_alike_across_time_zones_and_numeric_scales() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let ddl_a = "CREATE TABLE k (at timestamptz, n numeric(6,2), v text, PRIMARY KEY (at, n));
                 INSERT INTO k VALUES ('2026-01-01 00:00:00+00', 1.5, 'x');";
    let ddl_b = "CREATE TABLE k (at timestamptz, n numeric, v text, PRIMARY KEY (at, n));
                 INSERT INTO k VALUES ('2026-01-01 00:00:00+00', 1.5, 'x');";
    let d1 = a.create_db(&unique("tz1"));
    let d2 = b.create_db(&unique("tz2"));
    a.exec(&d1, ddl_a);
    b.exec(&d2, ddl_b);
    a.exec(
        "postgres",
        &format!("ALTER DATABASE {d1} SET timezone = 'America/New_York'"),
    );
    b.exec("postgres", &format!("ALTER DATABASE {d2} SET timezone = 'Asia/Tokyo'"));
    c.add_db("tz1", a, &d1);
    c.add_db("tz2", b, &d2);
    c.ok(&["add", "table", "k", "db=tz1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=tz1:source,tz2:source",
        "autokick=0",
        "conflict_strategy=source",
    ]);
    b.exec(&d2, "UPDATE k SET v = 'two'");
    std::thread::sleep(Duration::from_millis(20));
    a.exec(&d1, "UPDATE k SET v = 'one'");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let hist: serde_json::Value = serde_json::from_str(&c.ok(&["conflicts", "s", "--json"])).unwrap();
    assert_eq!(
        hist.as_array().unwrap().len(),
        1,
        "one key, one conflict: {hist}\n{}",
        c.log()
    );
    assert_eq!(value(a, &d1, "SELECT v FROM k"), "one");
    assert_eq!(value(b, &d2, "SELECT v FROM k"), "one");
    assert_eq!(value(b, &d2, "SELECT count(*) FROM k"), "1");
}

/// Two sources writing at the same time, each incrementing its own rows
/// (no conflicts), with a target: every increment survives everywhere (an
/// application UPDATE queued behind capra applies on top of capra's row).
/// Then both insert the same new keys at the same time: settled, equal.
#[test]
fn concurrent_writers_lose_no_update_and_shared_inserts_settle() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    let c = Capra::install(a);
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text, n int NOT NULL DEFAULT 0);
               INSERT INTO t SELECT g, 'x', 0 FROM generate_series(1, 20) g;";
    let names = dbs(&c, "cw", ddl, &[a, b, cc]);
    c.ok(&["add", "table", "t", "db=cw1", "relgroup=g"]);
    c.ok(&["add", "sync", "s", "relgroup=g", "dbs=cw1:source,cw2:source,cw3:target"]);
    let _d = c.start();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = |cl: &'static Cluster, db: String, parity: i32, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let mut client = cl.client(&db);
            let mut counts = vec![0i64; 21];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = (i % 10) * 2 + parity;
                i += 1;
                client
                    .execute("UPDATE t SET n = n + 1 WHERE id = $1", &[&id])
                    .expect("the application's write never fails");
                counts[id as usize] += 1;
            }
            counts
        })
    };
    let w1 = writer(a, names[0].clone(), 1, stop.clone());
    let w2 = writer(b, names[1].clone(), 2, stop.clone());
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let (c1, c2) = (w1.join().unwrap(), w2.join().unwrap());
    let expected: Vec<String> = (1..=20).map(|id| format!("{id}:{}", c1[id] + c2[id])).collect();
    assert!(expected.iter().any(|e| !e.ends_with(":0")));
    let got = |cl: &Cluster, d: &str| value(cl, d, "SELECT string_agg(id || ':' || n, ',' ORDER BY id) FROM t");
    let want = expected.join(",");
    wait_for_showing(
        30,
        "every increment everywhere (no lost update)",
        || got(a, &names[0]) == want && got(b, &names[1]) == want && got(cc, &names[2]) == want,
        || {
            format!(
                "want {want}\n1:   {}\n2:   {}\n3:   {}\n{}",
                got(a, &names[0]),
                got(b, &names[1]),
                got(cc, &names[2]),
                c.log()
            )
        },
    );
    // Both insert the same new keys at once.
    let ins = |cl: &'static Cluster, db: String, tag: &'static str| {
        std::thread::spawn(move || {
            let mut client = cl.client(&db);
            for id in 1000..1100 {
                client
                    .execute(
                        "INSERT INTO t VALUES ($1, $2, 0) ON CONFLICT (id) DO NOTHING",
                        &[&id, &tag],
                    )
                    .unwrap();
            }
        })
    };
    let (i1, i2) = (ins(a, names[0].clone(), "one"), ins(b, names[1].clone(), "two"));
    i1.join().unwrap();
    i2.join().unwrap();
    c.wait_for(30, "the shared inserts to settle", || {
        let x = checksum(a, &names[0], "t");
        x == checksum(b, &names[1], "t") && x == checksum(cc, &names[2], "t")
    });
    assert_eq!(value(cc, &names[2], "SELECT count(*) FROM t WHERE id >= 1000"), "100");
}

/// makedelta on a receiving source, then a TRUNCATE on the other: the rows
/// capra itself applied (and logged) there are not taken for that source's
/// own changes, so they go too.
#[test]
fn a_truncate_reaches_rows_a_source_got_with_makedelta() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let names = dbs(&c, "tm", CONFLICT_DDL, &[a, b]);
    c.ok(&["add", "table", "t", "db=tm1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=tm1:source,tm2:source",
        "autokick=0",
    ]);
    c.ok(&["update", "db", "tm2", "makedelta=1"]);
    let _d = c.start();
    a.exec(&names[0], "INSERT INTO t VALUES (50, 'a', 0)");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(value(b, &names[1], "SELECT count(*) FROM t WHERE id = 50"), "1");
    a.exec(&names[0], "TRUNCATE t");
    b.exec(&names[1], "INSERT INTO t VALUES (60, 'b', 0)");
    c.ok(&["kick", "s", "60"]);
    // The truncate empties tm2 but for tm2's own change since (60).
    assert_eq!(
        value(b, &names[1], "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "60",
        "{}",
        c.log()
    );
    assert_eq!(checksum(a, &names[0], "t"), checksum(b, &names[1], "t"));
}

/// While a run applies rows on a source, the application there creates a
/// key the run is deleting (the winner inserted and deleted it): the run
/// only touches rows it holds, so the application's row survives and goes
/// everywhere next. (A trigger that fires in replica mode slows the run's
/// UPDATE down to open the window.)
#[test]
fn an_application_insert_during_a_run_is_never_deleted_by_it() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let names = dbs(&c, "ai", CONFLICT_DDL, &[a, b]);
    c.ok(&["add", "table", "t", "db=ai1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=ai1:source,ai2:source",
        "autokick=0",
    ]);
    b.exec(
        &names[1],
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF current_setting('session_replication_role') = 'replica' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE UPDATE ON t FOR EACH ROW EXECUTE PROCEDURE slow();
         ALTER TABLE t ENABLE ALWAYS TRIGGER slow;",
    );
    a.exec(
        &names[0],
        "INSERT INTO t VALUES (100, 'gone', 0); DELETE FROM t WHERE id = 100; UPDATE t SET v = 'a' WHERE id = 1",
    );
    let _d = c.start();
    let r = std::thread::scope(|s| {
        let kick = s.spawn(|| c.run(&["kick", "s", "60"]));
        std::thread::sleep(Duration::from_millis(800));
        b.exec(&names[1], "INSERT INTO t VALUES (100, 'app on 2', 0)");
        kick.join().unwrap()
    });
    assert_eq!(r.code, Some(0), "{}{}\n{}", r.stdout, r.stderr, c.log());
    assert_eq!(
        value(b, &names[1], "SELECT v FROM t WHERE id = 100"),
        "app on 2",
        "{}",
        c.log()
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(
        value(a, &names[0], "SELECT v FROM t WHERE id = 100"),
        "app on 2",
        "{}",
        c.log()
    );
    assert_eq!(checksum(a, &names[0], "t"), checksum(b, &names[1], "t"));
}

/// A TRUNCATE on one source while the application on the other holds a
/// row and then commits a change to it: that row is left by the run,
/// logged again with the truncation's time, and the later change wins
/// (latest) everywhere.
#[test]
fn a_row_held_during_a_truncate_replay_keeps_the_later_change() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let names = dbs(&c, "th", CONFLICT_DDL, &[a, b]);
    c.ok(&["add", "table", "t", "db=th1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=th1:source,th2:source",
        "autokick=0",
        "conflict_strategy=latest",
    ]);
    let _d = c.start();
    a.exec(&names[0], "TRUNCATE t");
    std::thread::sleep(Duration::from_millis(30));
    let mut app = b.client(&names[1]);
    app.batch_execute("BEGIN; UPDATE t SET v = 'held' WHERE id = 2")
        .unwrap();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(
        value(b, &names[1], "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"),
        "2",
        "{}",
        c.log()
    );
    // While the application holds the row, follow-up runs come 0.1, 0.2,
    // 0.4 s ... apart, not ten a second.
    std::thread::sleep(Duration::from_millis(1500));
    let runs: i64 = value(a, &c.ctl_db, "SELECT count(*) FROM capra.run WHERE sync = 's'")
        .parse()
        .unwrap();
    assert!((2..=8).contains(&runs), "{runs} runs while a row was held\n{}", c.log());
    app.batch_execute("COMMIT").unwrap();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(
        value(a, &names[0], "SELECT coalesce(string_agg(id || v, ','), '-') FROM t"),
        "2held",
        "{}",
        c.log()
    );
    assert_eq!(checksum(a, &names[0], "t"), checksum(b, &names[1], "t"));
}

/// Identity columns on both sources (issue 17): a `GENERATED ALWAYS AS
/// IDENTITY` key, and one that is not the key. New rows go to the other
/// source with their values (OVERRIDING SYSTEM VALUE) and changed rows are
/// updated in place without touching the identity column, which can only
/// ever be updated to DEFAULT.
#[test]
fn identity_columns_replicate_between_sources() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let ddl = "CREATE TABLE ik (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
               CREATE TABLE inon (k int PRIMARY KEY, serial_no bigint GENERATED ALWAYS AS IDENTITY, v text)";
    let names = dbs(&c, "idn", ddl, &[a, b]);
    // Each source draws keys from its own range.
    b.exec(&names[1], "ALTER TABLE ik ALTER COLUMN id RESTART WITH 1000");
    c.ok(&["add", "table", "ik", "inon", "db=idn1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=idn1:source,idn2:source",
        "autokick=0",
    ]);
    let _d = c.start();
    a.exec(
        &names[0],
        "INSERT INTO ik (v) SELECT 'a' FROM generate_series(1, 3); INSERT INTO inon (k, v) VALUES (1, 'a'), (2, 'a')",
    );
    b.exec(
        &names[1],
        "INSERT INTO ik (v) SELECT 'b' FROM generate_series(1, 3); INSERT INTO inon (k, v) VALUES (3, 'b')",
    );
    c.ok(&["kick", "s", "60"]);
    // Rows changed on the other side than where they were born.
    b.exec(
        &names[1],
        "UPDATE ik SET v = 'b2' WHERE id = 1; UPDATE inon SET v = 'b2' WHERE k = 1",
    );
    a.exec(
        &names[0],
        "UPDATE ik SET v = 'a2' WHERE id = 1000; UPDATE inon SET v = 'a2' WHERE k = 3",
    );
    c.ok(&["kick", "s", "60"]);
    for t in ["ik", "inon"] {
        assert_eq!(
            checksum(a, &names[0], t),
            checksum(b, &names[1], t),
            "{t} differs\n{}",
            c.log()
        );
    }
    assert_eq!(value(a, &names[0], "SELECT count(*) FROM ik"), "6");
    assert_eq!(
        value(a, &names[0], "SELECT string_agg(v, ',' ORDER BY k) FROM inon"),
        "b2,a,a2"
    );
    assert!(last_run(&c, "s").starts_with("good"), "{}", c.log());
}

/// A unique value that moves between rows within one run (issue 17):
/// a row deleted and its e-mail taken by a new row, two rows swapping
/// e-mails through a temporary value, and an e-mail handed from an
/// existing row to another existing one. The receiving source gets the
/// deletes and in-place updates first and the new rows after, and a swap
/// (which no single UPDATE can make, as PostgreSQL checks a unique index
/// row by row) is rewritten by delete and insert. Each run is good, in
/// both directions, and both sources end equal.
#[test]
fn unique_values_move_between_rows_within_a_run() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let ddl = "CREATE TABLE u (id int PRIMARY KEY, email text NOT NULL UNIQUE, v text);
               INSERT INTO u VALUES (1, 'x@ex', 'a'), (3, 'p@ex', 'a'), (4, 'q@ex', 'a'), (5, 'r@ex', 'a'), (6, 's@ex', 'a')";
    let names = dbs(&c, "uniq", ddl, &[a, b]);
    c.ok(&["add", "table", "u", "db=uniq1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=uniq1:source,uniq2:source",
        "autokick=0",
    ]);
    // A column only the second source has: rows updated in place keep it.
    b.exec(
        &names[1],
        "ALTER TABLE u ADD COLUMN extra text; UPDATE u SET extra = 'keep'",
    );
    let _d = c.start();
    let same = |what: &str| {
        assert!(
            last_run(&c, "s").starts_with("good"),
            "{what}: {}\n{}",
            last_run(&c, "s"),
            c.log()
        );
        assert_eq!(
            checksum(a, &names[0], "(SELECT id, email, v FROM u)"),
            checksum(b, &names[1], "(SELECT id, email, v FROM u)"),
            "{what}\n{}",
            c.log()
        );
    };
    a.exec(
        &names[0],
        "DELETE FROM u WHERE id = 1; INSERT INTO u VALUES (2, 'x@ex', 'new');
         UPDATE u SET email = 'tmp@ex' WHERE id = 3; UPDATE u SET email = 'p@ex' WHERE id = 4;
         UPDATE u SET email = 'q@ex' WHERE id = 3; UPDATE u SET v = 'z' WHERE id = 6",
    );
    c.ok(&["kick", "s", "60"]);
    same("a delete and an insert of its value, and a swap, from source 1");
    assert_eq!(
        value(b, &names[1], "SELECT extra FROM u WHERE id = 6"),
        "keep",
        "a row that trades no unique value is updated in place"
    );
    b.exec(
        &names[1],
        "UPDATE u SET email = 'gone@ex' WHERE id = 5; UPDATE u SET email = 'r@ex' WHERE id = 6;
         DELETE FROM u WHERE id = 2; INSERT INTO u VALUES (7, 'x@ex', 'again')",
    );
    c.ok(&["kick", "s", "60"]);
    same("a value handed between existing rows, and a delete and an insert, from source 2");
    assert_eq!(
        value(
            a,
            &names[0],
            "SELECT string_agg(id || '=' || email, ',' ORDER BY id) FROM u"
        ),
        "3=q@ex,4=p@ex,5=gone@ex,6=r@ex,7=x@ex"
    );
}

/// Two sources each insert a different key with the same unique e-mail
/// (issue 17): no order of writes applies both, so the claim is settled
/// as a conflict by the sync's strategy (the later change wins, here the
/// second source's), recorded in the conflict history, and the losing row
/// is removed from its source: both sources end with the winner's row,
/// and the run is good. The sync's other table replicates in the same run.
#[test]
fn a_unique_value_two_sources_claim_is_settled_by_the_strategy() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let ddl = "CREATE TABLE u (id int PRIMARY KEY, email text NOT NULL UNIQUE, v text);
               CREATE TABLE kv (k int PRIMARY KEY, v text)";
    let names = dbs(&c, "claim", ddl, &[a, b]);
    c.ok(&["add", "table", "u", "kv", "db=claim1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=claim1:source,claim2:source",
        "autokick=0",
        "conflict_strategy=latest",
    ]);
    let _d = c.start();
    a.exec(
        &names[0],
        "INSERT INTO u VALUES (10, 'c@ex', 'first'), (20, 'd@ex', 'one'); INSERT INTO kv VALUES (1, 'a')",
    );
    std::thread::sleep(Duration::from_millis(50));
    b.exec(
        &names[1],
        "INSERT INTO u VALUES (11, 'c@ex', 'second'), (21, 'e@ex', 'two'); INSERT INTO kv VALUES (2, 'b')",
    );
    c.ok(&["kick", "s", "60"]);
    assert!(last_run(&c, "s").starts_with("good"), "{}", c.log());
    for t in ["u", "kv"] {
        assert_eq!(checksum(a, &names[0], t), checksum(b, &names[1], t), "{t}\n{}", c.log());
    }
    assert_eq!(
        value(
            a,
            &names[0],
            "SELECT string_agg(id || '=' || email, ',' ORDER BY id) FROM u"
        ),
        "11=c@ex,20=d@ex,21=e@ex"
    );
    let hist: serde_json::Value = serde_json::from_str(&c.ok(&["conflicts", "s", "--json"])).unwrap();
    let h = &hist.as_array().unwrap()[0];
    assert_eq!(h["table"], "public.u", "{hist}");
    assert!(
        h["reason"].as_str().unwrap().contains("claimed under two keys"),
        "{hist}"
    );
    assert_eq!(h["winner"], "claim2", "{hist}");
}

/// A key that changes only its form (1.0 to 1.00) is a key update for
/// PostgreSQL, which needs FOR UPDATE: while the application on the
/// receiving source holds the row FOR KEY SHARE (a foreign key check of an
/// open transaction), the run skips it instead of waiting out
/// lock_timeout and failing, and applies it once the application is done.
#[test]
fn a_key_changing_form_waits_for_no_application_lock() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let ddl = "CREATE TABLE nk (k numeric PRIMARY KEY, v text); INSERT INTO nk VALUES (1.0, 'a'), (2, 'b')";
    let names = dbs(&c, "form", ddl, &[a, b]);
    c.ok(&["add", "table", "nk", "db=form1", "relgroup=g"]);
    c.ok(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=form1:source,form2:source",
        "autokick=0",
    ]);
    c.ok(&["set", "lock_timeout=2"]);
    let _d = c.start();
    let mut app = b.client(&names[1]);
    app.batch_execute("BEGIN; SELECT * FROM nk WHERE k = 1 FOR KEY SHARE")
        .unwrap();
    a.exec(
        &names[0],
        "UPDATE nk SET k = 1.00, v = 'moved' WHERE k = 1; UPDATE nk SET v = 'c' WHERE k = 2",
    );
    c.ok(&["kick", "s", "60"]);
    assert!(last_run(&c, "s").starts_with("good"), "{}", c.log());
    assert_eq!(value(b, &names[1], "SELECT v FROM nk WHERE k = 2"), "c");
    app.batch_execute("COMMIT").unwrap();
    wait_for_showing(
        30,
        "nk to converge",
        || checksum(a, &names[0], "nk") == checksum(b, &names[1], "nk"),
        || c.log(),
    );
    assert_eq!(
        value(b, &names[1], "SELECT k::text || v FROM nk WHERE k = 1"),
        "1.00moved"
    );
}
