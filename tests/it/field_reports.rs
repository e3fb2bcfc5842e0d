//! The two field reports (../shared/seeds/), replayed command by command
//! against capra with `bucardo`/`bucardo_ctl` replaced by `capra`.

use crate::support::{cluster, fixtures, Capra};

/// Confluence report (Bucardo 5): a TLS source with a password user, a local
/// target, every table but clustersafety, all sequences, a dbgroup with
/// roles, a sync with autokick=0, validate, then autokick=1.
#[test]
fn confluence_catalog_replay() {
    let (a, b, t) = (cluster::a(), cluster::b(), cluster::tls());
    // server1: the Confluence source (TLS required), with the fix the report
    // applies first: hibernate_unique_key gets a primary key.
    let confluence = fixtures::confluence(t);
    t.exec(
        &confluence,
        "ALTER TABLE hibernate_unique_key ADD PRIMARY KEY (next_hi)",
    );
    // server2: schema copied over (pg_dump --schema-only | psql).
    let target = fixtures::confluence_schema_only(b);
    b.exec(&target, "ALTER TABLE hibernate_unique_key ADD PRIMARY KEY (next_hi)");
    let mut c = Capra::install(a);
    // `capra -U capra -d capra -P <password> ...` as in the report.
    c.global = vec![
        "-h".into(),
        a.host().into(),
        "-p".into(),
        a.port.to_string(),
        "-U".into(),
        "capra".into(),
        "-d".into(),
        c.ctl_db.clone(),
        "-P".into(),
        "ctl-password".into(),
    ];
    let out = c.ok(&[
        "add",
        "db",
        "source_db",
        &format!("dbname={confluence}"),
        "host=127.0.0.1",
        &format!("port={}", t.port),
        "user=pwuser",
        "pass=s3cret-pw",
        "conn=sslmode=require",
    ]);
    assert_eq!(out, "Added database \"source_db\"\n");
    let out = c.ok(&[
        "add",
        "db",
        "target_db",
        &format!("dbname={target}"),
        "host=127.0.0.1",
        &format!("port={}", b.port),
        "user=capra",
        "pass=whatever",
    ]);
    assert_eq!(out, "Added database \"target_db\"\n");

    let out = c.ok(&[
        "add",
        "all",
        "tables",
        "--exclude-table",
        "clustersafety",
        "db=source_db",
        "relgroup=confluence_db_group",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Creating relgroup: confluence_db_group");
    assert!(
        // Unlike Bucardo's output in the report, a mixed-case name is shown
        // quoted, as psql needs it (issue 22).
        lines.contains(&"Added table public.\"AO_92296B_AORECENTLY_VIEWED\" to relgroup confluence_db_group"),
        "{out}"
    );
    assert!(
        lines.contains(&"Added table public.hibernate_unique_key to relgroup confluence_db_group"),
        "{out}"
    );
    assert!(!out.contains("clustersafety"), "{out}");
    assert_eq!(*lines.last().unwrap(), "New tables added: 10");

    let out = c.ok(&[
        "add",
        "all",
        "sequences",
        "db=source_db",
        "relgroup=confluence_db_group",
    ]);
    assert!(
        out.contains("Added sequence public.\"AO_92296B_AORECENTLY_VIEWED_ID_seq\" to relgroup confluence_db_group"),
        "{out}"
    );
    assert!(
        out.contains("Added sequence public.\"AO_187CCC_SIDEBAR_LINK_ID_seq\" to relgroup confluence_db_group"),
        "{out}"
    );
    assert!(out.ends_with("New sequences added: 4\n"), "{out}");

    // "In case we have added all tables by mistake":
    c.ok(&[
        "add",
        "table",
        "clustersafety",
        "db=source_db",
        "relgroup=confluence_db_group",
    ]);
    let out = c.ok(&["remove", "table", "public.clustersafety", "db=source_db"]);
    assert_eq!(
        out,
        "Removed the following tables:\n  public.clustersafety (DB: source_db)\n"
    );

    let out = c.ok(&[
        "add",
        "dbgroup",
        "confluence_db_group",
        "source_db:source",
        "target_db:target",
    ]);
    assert_eq!(
        out,
        "Created dbgroup \"confluence_db_group\"\nAdded database \"source_db\" to dbgroup \"confluence_db_group\" as source\nAdded database \"target_db\" to dbgroup \"confluence_db_group\" as target\n"
    );
    let out = c.ok(&[
        "add",
        "sync",
        "confluence_sync",
        "relgroup=confluence_db_group",
        "dbs=confluence_db_group",
        "autokick=0",
    ]);
    assert_eq!(out, "Added sync \"confluence_sync\"\n");
    let out = c.ok(&["validate", "confluence_sync"]);
    assert_eq!(out, "Validating sync confluence_sync ... OK\n");
    let out = c.ok(&["update", "sync", "confluence_sync", "autokick=1"]);
    assert!(out.contains("autokick 0 -> 1"), "{out}");

    let out = c.ok(&["list", "tables"]);
    assert!(
        out.contains("Table: public.\"AO_92296B_AORECENTLY_VIEWED\"  DB: source_db  PK: ID (bigint)"),
        "{out}"
    );
    assert!(out.contains("Table: public.confancestors"), "{out}");
    assert!(
        out.contains("PK: descendentid|ancestorposition (bigint|integer)"),
        "{out}"
    );
    assert!(
        out.contains("PK: entity_name|entity_id|entity_key (varchar|bigint|varchar)"),
        "{out}"
    );
    assert!(!out.contains("clustersafety"), "{out}");
    // Sorted in byte order like the report: upper-case AO_ tables first.
    let first = out.lines().next().unwrap();
    assert!(first.contains("public.\"AO_187CCC_SIDEBAR_LINK\""), "{out}");
    // Numbered lines are aligned on "Table:".
    let cols: std::collections::BTreeSet<usize> = out.lines().map(|l| l.find("Table:").unwrap()).collect();
    assert_eq!(cols.len(), 1, "{out}");
    let json: serde_json::Value = serde_json::from_str(&c.ok(&["list", "relgroups", "--json"])).unwrap();
    assert_eq!(json[0]["members"].as_array().unwrap().len(), 14);
}

/// French report (Bucardo 4.5, pgbench): `add database DBNAME name=`, herds
/// with -T/-t and --herd=, type=pushdelta|fullcopy|swap syncs with targetdb=
/// and targetgroup=, the list commands, and the deactivate/remove dance.
#[test]
fn pgbench_bucardo4_catalog_replay() {
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    // Three hosts, each with its own test1 database filled by pgbench -i.
    let test1 = fixtures::pgbench_everywhere(&[a, b, cc], "test1");
    // bucardo_ctl reads its control settings from an rc file; no -U anywhere,
    // so capra uses its default role (capra) everywhere, as Bucardo used bucardo.
    let c = Capra::install(a);
    c.home_file(
        ".caprarc",
        &format!("dbhost = 127.0.0.1\ndbport = {}\ndbname = {}\n", a.port, c.ctl_db),
    );
    let run = |args: &[&str]| -> String {
        let r = c.run_raw(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(r.code, Some(0), "{}: {}{}", r.cmd, r.stdout, r.stderr);
        r.stdout
    };
    let fail = |args: &[&str]| -> String {
        let r = c.run_raw(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(r.code, Some(1), "{}: {}{}", r.cmd, r.stdout, r.stderr);
        r.stderr
    };
    assert!(run(&["show", "all"]).contains("piddir"));
    let pa = format!("port={}", a.port);
    let pb = format!("port={}", b.port);
    let pc = format!("port={}", cc.port);
    assert_eq!(
        run(&["add", "database", &test1, "name=test1_master", &pa, "host=127.0.0.1"]),
        "Added database \"test1_master\"\n"
    );
    assert_eq!(
        run(&["add", "database", &test1, "name=test1_slave", &pb, "host=127.0.0.1"]),
        "Added database \"test1_slave\"\n"
    );
    let out = run(&[
        "add",
        "all",
        "tables",
        "db=test1_master",
        "-T",
        "pgbench_history",
        "--herd=alpha",
        "--verbose",
    ]);
    assert!(out.contains("Creating relgroup: alpha"), "{out}");
    assert!(out.contains("New tables added: 3"), "{out}");
    // The report types db=test1_slave here, then syncs beta *to* test1_slave;
    // Bucardo 4.5 itself refuses that ("Source and target databases cannot be
    // the same"), and the report's own later `list herds` shows beta on
    // test1_master. capra refuses it with one line saying what to do:
    run(&[
        "add",
        "all",
        "tables",
        "db=test1_slave",
        "-t",
        "pgbench_history",
        "--herd=betawrong",
    ]);
    let err = fail(&[
        "add",
        "sync",
        "wrong",
        "source=betawrong",
        "targetdb=test1_slave",
        "type=fullcopy",
    ]);
    assert!(
        err.contains("Source and target databases cannot be the same: test1_slave"),
        "{err}"
    );
    // ... and the intended command works:
    let out = run(&[
        "add",
        "all",
        "tables",
        "db=test1_master",
        "-t",
        "pgbench_history",
        "--herd=beta",
        "--verbose",
    ]);
    assert!(
        out.contains("Added table public.pgbench_history to relgroup beta"),
        "{out}"
    );

    assert!(run(&[
        "add",
        "sync",
        "benchdelta",
        "source=alpha",
        "targetdb=test1_slave",
        "type=pushdelta"
    ])
    .starts_with("Added sync \"benchdelta\"\n"));
    assert!(run(&[
        "add",
        "sync",
        "benchcopy",
        "source=beta",
        "targetdb=test1_slave",
        "type=fullcopy"
    ])
    .starts_with("Added sync \"benchcopy\"\n"));
    let herds = run(&["list", "herds"]);
    assert!(herds.contains("Herd: alpha  DB: test1_master  Members: public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers\n  Used in syncs: benchdelta"), "{herds}");
    assert!(
        herds.contains("Herd: beta  DB: test1_master  Members: public.pgbench_history\n  Used in syncs: benchcopy"),
        "{herds}"
    );
    let syncs = run(&["list", "syncs"]);
    assert!(syncs.contains("Sync \"benchcopy\"  Relgroup \"beta\"  DB group \"benchcopy\" test1_master:source test1_slave:fullcopy  (fullcopy)  [Active]"), "{syncs}");
    assert!(syncs.contains("Sync \"benchdelta\"  Relgroup \"alpha\"  DB group \"benchdelta\" test1_master:source test1_slave:target  (pushdelta)  [Active]"), "{syncs}");
    let dbs = run(&["list", "dbs"]);
    assert!(
        dbs.contains(&format!(
            "Database: test1_master  Status: active  Conn: psql -p {} -U capra -d {test1} -h 127.0.0.1",
            a.port
        )),
        "{dbs}"
    );
    let tables = run(&["list", "tables"]);
    assert!(
        tables.contains("Table: public.pgbench_accounts  DB: test1_master  PK: aid (integer)"),
        "{tables}"
    );
    assert!(
        tables.contains("Table: public.pgbench_history   DB: test1_master  PK: none"),
        "{tables}"
    );
    // A fullcopy sync defaults to autokick off: it runs when kicked, as in the report.
    let j: serde_json::Value = serde_json::from_str(&run(&["list", "sync", "benchcopy", "--json"])).unwrap();
    assert_eq!(j[0]["autokick"], false);
    assert!(run(&["list", "sequences"]).contains("There are no sequences."));
    assert!(run(&["list", "herd", "alpha", "--verbose"]).starts_with("Herd: alpha"));

    // master-2 gets its own capra (a second control database) for the swap sync.
    let c2 = Capra::install(cc);
    let pa2 = format!("port={}", a.port);
    let ok2 = |args: &[&str]| c2.ok(args);
    ok2(&["add", "database", &test1, "name=test1_master2", "host=127.0.0.1", &pc]);
    ok2(&["add", "database", &test1, "name=test1_master", "host=127.0.0.1", &pa2]);
    assert!(ok2(&["list", "db"]).contains("Database: test1_master2"));
    for noun in ["code", "dbgroup", "sequence", "sync", "customcode"] {
        assert!(ok2(&["list", noun]).starts_with("There are no"), "{noun}");
    }
    let out = ok2(&[
        "add",
        "all",
        "table",
        "-T",
        "pgbench_history",
        "db=test1_master2",
        "standard_conflict=source",
        "herd=gamma",
        "--verbose",
    ]);
    assert!(
        out.contains("Creating relgroup: gamma") && out.contains("New tables added: 3"),
        "{out}"
    );
    assert!(ok2(&[
        "add",
        "sync",
        "benchswap",
        "source=gamma",
        "targetdb=test1_master",
        "type=swap"
    ])
    .starts_with("Added sync \"benchswap\""));
    assert!(ok2(&["list", "syncs"]).contains("test1_master2:source test1_master:source  (multi-master)"));
    let j: serde_json::Value = serde_json::from_str(&ok2(&["list", "tables", "--json"])).unwrap();
    assert_eq!(j[0]["conflict_strategy"], "source");

    // Back on master: history to both slave and master-2 through a dbgroup.
    run(&[
        "add",
        "db",
        &test1,
        "name=test1_master2",
        "host=127.0.0.1",
        "user=capra",
        &pc,
    ]);
    let out = run(&["add", "dbgroup", "test1_history", "test1_slave", "test1_master2"]);
    assert!(out.contains("Created dbgroup \"test1_history\""), "{out}");
    assert!(
        out.contains("Added database \"test1_master2\" to dbgroup \"test1_history\" as target"),
        "{out}"
    );
    assert_eq!(run(&["deactivate", "benchcopy"]), "Deactivating sync benchcopy\n");
    assert!(run(&["remove", "sync", "benchcopy"]).starts_with("Removed sync \"benchcopy\"\n"));
    assert!(run(&[
        "add",
        "sync",
        "benchcopy",
        "source=beta",
        "targetgroup=test1_history",
        "type=fullcopy"
    ])
    .starts_with("Added sync \"benchcopy\""));
    assert!(
        run(&["list", "sync"]).contains("test1_master:source test1_slave:fullcopy test1_master2:fullcopy  (fullcopy)")
    );

    // The renaming dance.
    let err = fail(&["remove", "sync", "benchdelta"]);
    assert!(
        err.contains("Cannot remove active sync \"benchdelta\": please deactivate it first"),
        "{err}"
    );
    run(&["deactivate", "benchdelta"]);
    run(&["deactivate", "benchcopy"]);
    run(&["remove", "sync", "benchdelta"]);
    run(&["remove", "sync", "benchcopy"]);
    assert_eq!(run(&["list", "sync"]), "There are no syncs.\n");
    assert!(run(&[
        "add",
        "sync",
        "benchdeltaalpha",
        "source=alpha",
        "targetdb=test1_slave",
        "type=pushdelta"
    ])
    .starts_with("Added sync \"benchdeltaalpha\""));
    assert!(run(&["list", "dbgroup"]).contains("Dbgroup: test1_history"));
    assert!(run(&[
        "add",
        "sync",
        "benchcopybeta",
        "source=beta",
        "targetgroup=test1_history",
        "type=fullcopy"
    ])
    .starts_with("Added sync \"benchcopybeta\""));
    let syncs = run(&["list", "sync"]);
    assert!(
        syncs.contains("Sync \"benchcopybeta\"") && syncs.contains("Sync \"benchdeltaalpha\""),
        "{syncs}"
    );
    let herd = run(&["list", "herd"]);
    assert!(
        herd.contains("Used in syncs: benchdeltaalpha") && herd.contains("Used in syncs: benchcopybeta"),
        "{herd}"
    );
    assert!(run(&["validate", "all"]).contains("Validating sync benchdeltaalpha ... OK"));

    // "Et maintenant, devant vos yeux ébahis": start, replicate, kick, status.
    let _d = c.start();
    a.exec(
        &test1,
        "UPDATE pgbench_tellers SET filler = 'modification' WHERE tid = 1",
    );
    let filler = |cl: &crate::support::cluster::Cluster| {
        cl.query(&test1, "SELECT tid || '|' || bid || '|' || tbalance || '|' || trim(coalesce(filler, '')) FROM pgbench_tellers WHERE tid = 1")[0]
            .clone()
            .unwrap()
    };
    c.wait_for(30, "the filler change to reach the slave", || {
        filler(b) == "1|1|0|modification"
    });
    let history = |cl: &crate::support::cluster::Cluster| crate::support::data::checksum(cl, &test1, "pgbench_history");
    for _ in 0..3 {
        a.exec(
            &test1,
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 19893, -1618, now())",
        );
    }
    b.exec(
        &test1,
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (2, 1, 98270, 3578, now())",
    );
    assert_eq!(run(&["kick", "benchcopybeta"]), "Kicked sync benchcopybeta\n");
    c.wait_for(60, "the history copy to the slave and master-2", || {
        history(b) == history(a) && history(cc) == history(a)
    });
    assert!(history(b).starts_with("3 rows"));
    let status = run(&["status"]);
    assert!(status.contains("PID of capra daemon:"), "{status}");
    assert!(
        status.contains(" benchcopybeta ") && status.contains(" benchdeltaalpha "),
        "{status}"
    );
    let detail = run(&["status", "benchcopybeta"]);
    assert!(
        detail.contains("Source relgroup/database : beta / test1_master"),
        "{detail}"
    );
    assert!(detail.contains("Autokick                 : No"), "{detail}");
    assert!(run(&["stop"]).starts_with("Stopped capra"));
}

/// The French report end to end, in its own Bucardo 4 grammar: pushdelta
/// master -> slave, fullcopy of pgbench_history to a dbgroup (slave and
/// master-2), and the swap between master-2 and master run by master-2's
/// own capra, while pgbench writes on both masters at once. Afterwards
/// every table is identical (ordered checksums) on all three hosts.
///
/// One command is added to the report's: master-2's capra logs on master
/// what it applies there (`update db test1_master makedelta=1`), so the
/// pushdelta to the slave also carries master-2's writes. Without it the
/// slave would only see master's own writes (Bucardo 4 behaves the same;
/// the report never compared the slave after the swap).
#[test]
fn pgbench_report_end_to_end_under_load() {
    use crate::support::daemon::wait_for_showing;
    use crate::support::data::checksum;
    use crate::support::load::{pgbench_for, pgbench_same_everywhere};
    let (a, b, cc) = (cluster::a(), cluster::b(), cluster::c());
    let test1 = fixtures::pgbench_everywhere(&[a, b, cc], "e2e");
    // Master's capra: pushdelta to the slave, history to slave and master-2.
    let c1 = Capra::install(a);
    let pa = format!("port={}", a.port);
    let pb = format!("port={}", b.port);
    let pc = format!("port={}", cc.port);
    c1.ok(&[
        "add",
        "database",
        &test1,
        "name=test1_master",
        &pa,
        "host=127.0.0.1",
        "user=postgres",
    ]);
    c1.ok(&[
        "add",
        "database",
        &test1,
        "name=test1_slave",
        &pb,
        "host=127.0.0.1",
        "user=postgres",
    ]);
    c1.ok(&[
        "add",
        "db",
        &test1,
        "name=test1_master2",
        "host=127.0.0.1",
        "user=postgres",
        &pc,
    ]);
    c1.ok(&[
        "add",
        "all",
        "tables",
        "db=test1_master",
        "-T",
        "pgbench_history",
        "--herd=alpha",
    ]);
    c1.ok(&[
        "add",
        "all",
        "tables",
        "db=test1_master",
        "-t",
        "pgbench_history",
        "--herd=beta",
    ]);
    c1.ok(&["add", "dbgroup", "test1_history", "test1_slave", "test1_master2"]);
    c1.ok(&[
        "add",
        "sync",
        "benchdeltaalpha",
        "source=alpha",
        "targetdb=test1_slave",
        "type=pushdelta",
    ]);
    c1.ok(&[
        "add",
        "sync",
        "benchcopybeta",
        "source=beta",
        "targetgroup=test1_history",
        "type=fullcopy",
    ]);
    // Master-2's capra: the swap, master-2 (the herd's db) winning conflicts.
    let c2 = Capra::install(cc);
    c2.ok(&[
        "add",
        "database",
        &test1,
        "name=test1_master2",
        "host=127.0.0.1",
        &pc,
        "user=postgres",
    ]);
    c2.ok(&[
        "add",
        "database",
        &test1,
        "name=test1_master",
        "host=127.0.0.1",
        &pa,
        "user=postgres",
    ]);
    c2.ok(&[
        "add",
        "all",
        "table",
        "-T",
        "pgbench_history",
        "db=test1_master2",
        "standard_conflict=source",
        "herd=gamma",
        "--verbose",
    ]);
    c2.ok(&[
        "add",
        "sync",
        "benchswap",
        "source=gamma",
        "targetdb=test1_master",
        "type=swap",
    ]);
    c2.ok(&["update", "db", "test1_master", "makedelta=1"]);
    let _d1 = c1.start();
    let _d2 = c2.start();
    // pgbench on both masters at once.
    let loads = [
        pgbench_for(a, test1.clone(), 10, 50),
        pgbench_for(cc, test1.clone(), 10, 50),
    ];
    for l in loads {
        let (ok, text) = l.join().unwrap();
        assert!(ok && !text.contains("ERROR"), "pgbench: {text}");
    }
    let same = || pgbench_same_everywhere(&[(a, &test1), (cc, &test1), (b, &test1)]);
    let stopped = std::time::Instant::now();
    wait_for_showing(60, "the masters and the slave to converge", same, || {
        format!("master's capra:\n{}\nmaster-2's capra:\n{}", c1.log(), c2.log())
    });
    eprintln!(
        "converged {:.2}s after pgbench stopped",
        stopped.elapsed().as_secs_f64()
    );
    // Both masters really wrote, and the swap settled real conflicts.
    let conflicts = c2.ok(&["conflicts", "benchswap"]);
    assert!(conflicts.contains("winner: test1_master2"), "{conflicts}");
    assert!(
        !conflicts.contains("winner: test1_master "),
        "source=master-2 always wins: {conflicts}"
    );
    // The history, copied whole to slave and master-2 when kicked.
    assert!(c1.ok(&["kick", "benchcopybeta", "60"]).contains("DONE"));
    let h = checksum(a, &test1, "pgbench_history");
    assert!(!h.starts_with("0 rows"));
    assert_eq!(checksum(b, &test1, "pgbench_history"), h);
    assert_eq!(checksum(cc, &test1, "pgbench_history"), h);
    assert!(c2.ok(&["status"]).contains("benchswap"));
}
