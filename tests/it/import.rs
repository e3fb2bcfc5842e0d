//! `capra import bucardo` against a real Bucardo 5.6 (Debian's package):
//! Bucardo replicates, is stopped with changes it has not delivered while
//! the application keeps writing, capra takes over, and every table ends
//! identical without a full copy.

use crate::support::bucardo::{self, PW_ROLE};
use crate::support::cluster::{self, Cluster};
use crate::support::data::{checksum, value};
use crate::support::load::{pgbench_for, pgbench_init, PGBENCH_TABLES};
use crate::support::{unique, Capra};

/// Rows capra's runs of `sync` inserted on its targets so far.
fn inserted(c: &Capra, sync: &str) -> i64 {
    value(
        cluster::a(),
        &c.ctl_db,
        &format!("SELECT coalesce(sum(inserts), 0) FROM capra.run WHERE sync = '{sync}' AND state = 'good'"),
    )
    .parse()
    .unwrap()
}

fn same(a: (&Cluster, &str), b: (&Cluster, &str), table: &str) -> bool {
    checksum(a.0, a.1, table) == checksum(b.0, b.1, table)
}

#[test]
fn bucardo_stopped_under_load_is_taken_over_without_a_full_copy_or_a_lost_row() {
    let b = bucardo::install();
    let (src, tgt) = (unique("bsrc"), unique("btgt"));
    b.cl.create_db(&src);
    cluster::b().create_db(&tgt);
    // pgbench -i is deterministic: both start equal, as Bucardo needs.
    pgbench_init(b.cl, &src, 1);
    pgbench_init(cluster::b(), &tgt, 1);
    b.add_db("bsrc", b.cl, &src);
    b.add_db("btgt", cluster::b(), &tgt);
    b.cli(&[
        "add",
        "table",
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "db=bsrc",
        "relgroup=bench",
    ]);
    b.cli(&["add", "sync", "bench", "relgroup=bench", "dbs=bsrc:source,btgt:target"]);
    b.start(&["bench"]);
    let load = pgbench_for(b.cl, src.clone(), 14, 40);
    std::thread::sleep(std::time::Duration::from_secs(3));
    b.kick("bench");
    // Bucardo stops while the application writes on: what it captured
    // since its last run, and everything after, is capra's to deliver.
    b.stop();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let undelivered = value(
        b.cl,
        &src,
        "SELECT count(DISTINCT aid) FROM bucardo.delta_public_pgbench_accounts d
          WHERE NOT EXISTS (SELECT 1 FROM bucardo.track_public_pgbench_accounts t WHERE t.txntime = d.txntime)",
    );
    assert_ne!(undelivered, "0", "the test needs changes Bucardo has not delivered");

    let c = Capra::install(cluster::a());
    let before = c.snapshot();
    let plan = c.ok(&["import", "bucardo", "--from", &b.from(), "--dry-run"]);
    assert!(
        plan.contains("\"bench\": delta, relgroup \"bench\" (3 table(s), 0 sequence(s)), dbs=bsrc:source,btgt:target"),
        "{plan}"
    );
    assert!(
        plan.contains("deletemethod=delete"),
        "Bucardo's deletemethod default is kept: {plan}"
    );
    assert!(plan.contains("--dry-run: nothing was changed."), "{plan}");
    assert_eq!(c.snapshot(), before, "a dry run writes nothing");
    assert_eq!(
        value(b.cl, "bucardo", "SELECT status FROM bucardo.sync WHERE name = 'bench'"),
        "active"
    );

    // The import runs while pgbench still writes.
    let out = c.ok(&["import", "bucardo", "--from", &b.from()]);
    assert!(out.contains("On \"bsrc\": handed over"), "{out}");
    assert!(out.contains("Bucardo's triggers disabled on 3 table(s)"), "{out}");
    assert_eq!(
        value(b.cl, "bucardo", "SELECT status FROM bucardo.sync WHERE name = 'bench'"),
        "inactive"
    );
    assert_eq!(
        value(
            b.cl,
            &src,
            "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'bucardo' AND t.tgenabled <> 'D' AND t.tgrelid::regclass::text LIKE 'pgbench%'"
        ),
        "0",
        "Bucardo's triggers are disabled"
    );
    let status = c.ok(&["status", "bench"]);
    assert!(
        status.contains("Imported from") && status.contains("Bucardo (host=127.0.0.1"),
        "{status}"
    );
    let all = c.ok(&["status"]);
    assert!(
        all.contains("Imported syncs (until their first good run):\n  bench: imported from Bucardo (host=127.0.0.1"),
        "{all}"
    );

    // A second import changes nothing.
    let catalog = c.snapshot();
    let handed = value(b.cl, &src, "SELECT count(*) FROM capra.applied");
    let again = c.ok(&["import", "bucardo", "--from", &b.from()]);
    assert!(
        again.contains("\"bench\": taken over on") && again.contains("nothing to do"),
        "{again}"
    );
    assert!(again.contains("Nothing to take over."), "{again}");
    assert_eq!(c.snapshot(), catalog);
    assert_eq!(
        value(b.cl, &src, "SELECT count(*) FROM capra.applied"),
        handed,
        "the second import handed nothing over again"
    );

    let (ok, text) = load.join().unwrap();
    assert!(ok, "pgbench: {text}");
    let _d = c.start();
    c.ok(&["kick", "bench", "60"]);
    for t in PGBENCH_TABLES {
        assert!(
            same((b.cl, &src), (cluster::b(), &tgt), t),
            "{t} differs after the takeover"
        );
    }
    // Only the undelivered and the new rows moved, not the tables.
    let moved = inserted(&c, "bench");
    let size: i64 = value(b.cl, &src, "SELECT count(*) FROM pgbench_accounts")
        .parse()
        .unwrap();
    eprintln!(
        "takeover measure: capra's first runs inserted {moved} rows for tables of {size}+ rows; Bucardo left {undelivered} account keys undelivered"
    );
    assert!(
        moved > 0 && moved * 10 < size,
        "capra's first runs inserted {moved} rows for tables of {size}+ rows"
    );
    let status = c.ok(&["status", "bench"]);
    assert!(
        !status.contains("Imported from"),
        "shown only until the first good run: {status}"
    );
    assert!(!c.ok(&["status"]).contains("Imported syncs"));
}

#[test]
fn the_import_refuses_while_bucardo_runs_or_left_a_run_open() {
    let b = bucardo::install();
    let (src, tgt) = (unique("rsrc"), unique("rtgt"));
    for d in [&src, &tgt] {
        b.cl.create_db(d);
        b.cl.exec(d, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    }
    b.add_db("rsrc", b.cl, &src);
    b.add_db("rtgt", b.cl, &tgt);
    b.cli(&["add", "table", "t", "db=rsrc", "relgroup=rg"]);
    b.cli(&["add", "sync", "run1", "relgroup=rg", "dbs=rsrc:source,rtgt:target"]);
    b.start(&["run1"]);
    let c = Capra::install(cluster::a());
    let before = c.snapshot();
    // The plan can be read before Bucardo stops.
    let plan = c.ok(&["import", "bucardo", "--from", &b.from(), "--dry-run"]);
    assert!(
        plan.contains("\"run1\": delta") && plan.contains("Before the import: Bucardo is running"),
        "{plan}"
    );
    assert_eq!(c.snapshot(), before);
    let err = c.fails(&["import", "bucardo", "--from", &b.from()], 1);
    assert!(
        err.contains("Bucardo is running (bucardo MCP") && err.contains("bucardo stop"),
        "{err}"
    );
    assert_eq!(c.snapshot(), before);
    b.stop();
    // A killed Bucardo leaves its run open.
    b.cl.exec(
        "bucardo",
        "INSERT INTO bucardo.syncrun (sync, started) VALUES ('run1', now())",
    );
    let err = c.fails(&["import", "bucardo", "--from", &b.from()], 1);
    assert!(
        err.contains("unfinished runs of sync run1") && err.contains("UPDATE bucardo.syncrun"),
        "{err}"
    );
    assert_eq!(c.snapshot(), before);
    assert_eq!(
        value(b.cl, "bucardo", "SELECT status FROM bucardo.sync WHERE name = 'run1'"),
        "active"
    );
    // Closed by hand, as the message says; a second sync over the same
    // dbgroup has a column its target lacks: capra takes the first over
    // and refuses the second in one line, which stays in Bucardo.
    b.cl.exec(
        "bucardo",
        "UPDATE bucardo.syncrun SET ended = now(), status = 'killed' WHERE ended IS NULL",
    );
    b.cl.exec(&src, "CREATE TABLE \"Odd Name\" (id int PRIMARY KEY, v text, w int)");
    b.cl.exec(&tgt, "CREATE TABLE \"Odd Name\" (id int PRIMARY KEY, v text)");
    b.cli(&["add", "table", "public.Odd Name", "db=rsrc", "relgroup=og"]);
    b.cli(&["add", "sync", "colmis", "relgroup=og", "dbs=rsrc:source,rtgt:target"]);
    // It reads table t too, so Bucardo's triggers on t must stay.
    b.cl.exec(
        "bucardo",
        "INSERT INTO bucardo.herdmap (herd, goat) SELECT 'og', id FROM bucardo.goat WHERE tablename = 't'",
    );
    let r = c.run(&["import", "bucardo", "--from", &b.from()]);
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("sync \"colmis\": capra refuses it: column \"w\" of table public.\"Odd Name\" is missing in database \"rtgt\"; add it there (ALTER TABLE \"public\".\"Odd Name\" ADD COLUMN"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Took over sync(s) \"run1\""), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("Bucardo's triggers on public.t stay: Bucardo sync colmis still reads it"),
        "{}",
        r.stdout
    );
    assert_eq!(
        value(
            b.cl,
            &src,
            "SELECT tgenabled FROM pg_trigger WHERE tgname = 'bucardo_delta'"
        ),
        "O"
    );
    let syncs = c.ok(&["list", "syncs"]);
    assert!(syncs.contains("run1") && !syncs.contains("colmis"), "{syncs}");
    assert_eq!(
        value(b.cl, "bucardo", "SELECT status FROM bucardo.sync WHERE name = 'colmis'"),
        "active"
    );
    let err = c.fails(&["import", "bucardo", "--from", "host=127.0.0.1 port=1"], 1);
    assert!(err.contains("Bucardo's control database"), "{err}");
    let err = c.fails(
        &[
            "import",
            "bucardo",
            "--from",
            &format!("host=127.0.0.1 port={} dbname=postgres", b.cl.port),
        ],
        1,
    );
    assert!(err.contains("no Bucardo catalog"), "{err}");
}

/// A name over Bucardo's 57 characters (schema included).
const LONG: &str = "a_table_name_that_goes_well_past_fifty_seven_characters_xyz";

#[test]
fn fullcopy_sequences_a_password_options_truncate_rekey_and_perl_code_come_along_then_remove_cleans_up() {
    let b = bucardo::install();
    let (a, p, f, r1, r2) = (unique("ia"), unique("ip"), unique("if"), unique("ir"), unique("ir"));
    let ddl = "CREATE TABLE t_keep (id int PRIMARY KEY, v text);
               CREATE TABLE t_trunc (id int PRIMARY KEY, v text);
               CREATE TABLE t_rekey (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
               CREATE TABLE t_full (v text);
               CREATE SEQUENCE seq1;
               CREATE TABLE a_table_name_that_goes_well_past_fifty_seven_characters_xyz (id int PRIMARY KEY, v text);
               CREATE TABLE t_late (id int PRIMARY KEY, v text);";
    for d in [&a, &p, &r1, &r2] {
        b.cl.create_db(d);
        b.cl.exec(d, ddl);
    }
    cluster::b().create_db(&f);
    cluster::b().exec(&f, ddl);
    b.add_db("A", b.cl, &a);
    // The target is reached with a password (scram), which capra must carry.
    b.cli(&[
        "add",
        "db",
        "P",
        &format!("dbname={p}"),
        "host=127.0.0.1",
        &format!("port={}", b.cl.port),
        &format!("user={}", PW_ROLE.0),
        &format!("pass={}", PW_ROLE.1),
    ]);
    b.add_db("F", cluster::b(), &f);
    b.add_db("R1", b.cl, &r1);
    b.add_db("R2", b.cl, &r2);
    // Bucardo names this table's log by a hash: its name is too long.
    b.cli(&[
        "add",
        "table",
        "t_keep",
        "t_trunc",
        "t_rekey",
        LONG,
        "db=A",
        "relgroup=dg",
    ]);
    b.cli(&["add", "sequence", "seq1", "db=A", "relgroup=dg"]);
    b.cli(&["add", "table", "t_full", "db=A", "relgroup=fg"]);
    b.cli(&["add", "table", "t_keep", "db=R1", "relgroup=rg"]);
    b.cli(&["add", "sync", "dsync", "relgroup=dg", "dbs=A:source,P:target"]);
    b.cli(&["add", "sync", "fsync", "relgroup=fg", "dbs=A:source,F:fullcopy"]);
    b.cli(&["add", "sync", "renamed", "relgroup=rg", "dbs=R1:source,R2:target"]);
    b.cli(&[
        "update",
        "sync",
        "dsync",
        "overdue=1 hour",
        "stayalive=0",
        "vacuum_after_copy=1",
    ]);
    let code = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(code.path(), "my ($args) = @_;\nwarn \"before sync\";\nreturn;\n").unwrap();
    b.cli(&[
        "add",
        "customcode",
        "audit",
        "whenrun=before_sync",
        &format!("src_code={}", code.path().display()),
        "sync=dsync",
    ]);
    b.cli(&[
        "add",
        "customcode",
        "oldhook",
        "whenrun=after_trigger_enable",
        &format!("src_code={}", code.path().display()),
        "sync=dsync",
    ]);
    b.cl.exec(
        "bucardo",
        "INSERT INTO bucardo.customname (goat, newname) SELECT id, 'elsewhere' FROM bucardo.goat WHERE db = 'R1'",
    );
    b.cl.exec(&a, "INSERT INTO t_keep VALUES (1, 'a'), (2, 'b'); INSERT INTO t_trunc SELECT g, 'old' FROM generate_series(1, 50) g;
                   INSERT INTO t_rekey VALUES (1, 'x', 'one'); INSERT INTO t_full VALUES ('f1'); SELECT nextval('seq1');
                   INSERT INTO a_table_name_that_goes_well_past_fifty_seven_characters_xyz VALUES (1, 'delivered');");
    b.start(&["dsync", "fsync", "renamed"]);
    b.kick("dsync");
    b.kick("fsync");
    assert_eq!(value(b.cl, &p, "SELECT count(*) FROM t_trunc"), "50");
    b.stop();
    // While Bucardo is stopped: a TRUNCATE and new rows, a new key, updates.
    b.cl.exec(
        &a,
        "TRUNCATE t_trunc; INSERT INTO t_trunc VALUES (100, 'new');
         UPDATE t_keep SET v = 'changed' WHERE id = 1; INSERT INTO t_keep VALUES (3, 'c');
         ALTER TABLE t_rekey DROP CONSTRAINT t_rekey_pkey; ALTER TABLE t_rekey ADD PRIMARY KEY (code);
         UPDATE t_rekey SET v = 'rekeyed'; INSERT INTO t_full VALUES ('f2'); SELECT nextval('seq1');
         INSERT INTO a_table_name_that_goes_well_past_fifty_seven_characters_xyz VALUES (2, 'undelivered'); INSERT INTO t_late VALUES (1, 'before capra');",
    );
    // Added to the sync while Bucardo is stopped: Bucardo never captured it.
    b.cli(&["add", "table", "t_late", "db=A", "relgroup=dg"]);
    b.cl.exec(&a, "SELECT 1");

    let c = Capra::install(cluster::a());
    let etc = c.home().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let conf = etc.join("capra.conf");
    std::fs::write(&conf, "").unwrap();
    let from = b.from();
    let args = ["--config", conf.to_str().unwrap(), "import", "bucardo", "--from", &from];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let plan = c.ok(&dry);
    for want in [
        "\"dsync\": delta, relgroup \"dg\" (5 table(s), 1 sequence(s)), dbs=A:source,P:target",
        "table public.t_late is not captured by Bucardo on \"A\"",
        "\"fsync\": fullcopy, relgroup \"fg\" (1 table(s), 0 sequence(s)), dbs=A:source,F:fullcopy",
        "overdue=01:00:00",
        "vacuum_after_copy=true",
        "deletemethod=delete",
        "table public.t_rekey is copied whole by the first run: its key is (code) now, Bucardo captured (id)",
        "\"audit\" (whenrun before_sync, sync \"dsync\"): source saved to",
        "P (new): dbname=",
        "password (stored, hidden)",
        "sync \"renamed\": it uses customname on public.t_keep",
        "sync \"dsync\": option stayalive=false (no effect in capra",
        "customcode \"oldhook\": capra has no hook point after_trigger_enable",
    ] {
        assert!(plan.contains(want), "plan lacks {want:?}:\n{plan}");
    }
    assert!(!plan.contains(PW_ROLE.1), "the password is never shown: {plan}");

    let out = c.ok(&args);
    assert!(!out.contains(PW_ROLE.1));
    assert!(out.contains("a pending TRUNCATE of public.t_trunc"), "{out}");
    assert!(out.contains("the first run copies public.t_rekey whole"), "{out}");
    assert_eq!(
        value(
            b.cl,
            &a,
            "SELECT count(*) FROM bucardo.bucardo_truncate_trigger WHERE replicated IS NULL"
        ),
        "0",
        "a Bucardo started again must not replay the TRUNCATE capra took over"
    );
    let saved = std::fs::read_to_string(etc.join("bucardo-customcode/audit.pl")).unwrap();
    assert!(saved.contains("warn \"before sync\""), "{saved}");
    let codes = c.ok(&["list", "customcode"]);
    assert!(codes.contains("audit") && codes.contains("inactive"), "{codes}");
    let err = c.fails(&["update", "customcode", "audit", "status=active"], 1);
    assert!(err.contains("port it to Lua"), "{err}");
    assert_eq!(
        value(
            b.cl,
            "bucardo",
            "SELECT status FROM bucardo.sync WHERE name = 'renamed'"
        ),
        "active"
    );
    assert_eq!(
        value(b.cl, "bucardo", "SELECT status FROM bucardo.sync WHERE name = 'fsync'"),
        "inactive"
    );
    let dbs = c.ok(&["list", "dbs"]);
    assert!(!dbs.contains(PW_ROLE.1), "{dbs}");

    let _d = c.start();
    c.ok(&["kick", "dsync", "60"]);
    c.ok(&["kick", "fsync", "60"]);
    for t in ["t_keep", "t_trunc", "t_rekey", LONG] {
        assert!(same((b.cl, &a), (b.cl, &p), t), "{t} differs on the password target");
    }
    assert_eq!(value(b.cl, &p, "SELECT string_agg(id::text, ',') FROM t_trunc"), "100");
    assert!(same((b.cl, &a), (cluster::b(), &f), "t_full"), "the fullcopy target");
    assert_eq!(value(b.cl, &p, "SELECT last_value FROM seq1"), "2");

    // --remove refuses while an object of the user's depends on Bucardo's.
    b.cl.exec(&a, "CREATE VIEW peek AS SELECT * FROM bucardo.delta_public_t_keep");
    let err = c.fails(&["import", "bucardo", "--from", &from, "--remove"], 1);
    assert!(
        err.contains("view public.peek") && err.contains("nothing was removed"),
        "{err}"
    );
    assert_eq!(
        value(b.cl, &a, "SELECT count(*) FROM pg_namespace WHERE nspname = 'bucardo'"),
        "1"
    );
    b.cl.exec(&a, "DROP VIEW peek");
    let out = c.ok(&["import", "bucardo", "--from", &from, "--remove"]);
    assert!(
        out.contains("\"A\": dropped") && out.contains("schema bucardo"),
        "{out}"
    );
    assert_eq!(
        value(b.cl, &a, "SELECT count(*) FROM pg_namespace WHERE nspname = 'bucardo'"),
        "0"
    );
    assert_eq!(
        value(
            b.cl,
            &a,
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bucardo%' OR tgname LIKE 'bkick%'"
        ),
        "0"
    );
    // Bucardo's own database and the sync that stays in it are untouched.
    assert_eq!(
        value(b.cl, &r1, "SELECT count(*) FROM pg_namespace WHERE nspname = 'bucardo'"),
        "1"
    );
    assert_eq!(value(b.cl, "bucardo", "SELECT count(*) FROM bucardo.sync"), "3");
    // capra goes on replicating.
    b.cl.exec(&a, "INSERT INTO t_keep VALUES (4, 'after removal')");
    c.ok(&["kick", "dsync", "60"]);
    assert!(same((b.cl, &a), (b.cl, &p), "t_keep"));
}

#[test]
fn a_multi_master_bucardo_sync_is_taken_over_with_both_sides_undelivered_changes() {
    let b = bucardo::install();
    let (m1, m2) = (unique("mm"), unique("mm"));
    b.cl.create_db(&m1);
    cluster::b().create_db(&m2);
    let ddl = "CREATE TABLE acct (id int PRIMARY KEY, v text)";
    b.cl.exec(&m1, ddl);
    cluster::b().exec(&m2, ddl);
    b.add_db("M1", b.cl, &m1);
    b.add_db("M2", cluster::b(), &m2);
    b.cli(&["add", "table", "acct", "db=M1", "relgroup=mg"]);
    b.cli(&[
        "add",
        "sync",
        "mm",
        "relgroup=mg",
        "dbs=M1:source,M2:source",
        "conflict_strategy=bucardo_latest",
    ]);
    b.start(&["mm"]);
    b.cl.exec(&m1, "INSERT INTO acct SELECT g, 'm1' FROM generate_series(1, 20) g");
    cluster::b().exec(&m2, "INSERT INTO acct SELECT g, 'm2' FROM generate_series(101, 120) g");
    b.kick("mm");
    assert_eq!(value(cluster::b(), &m2, "SELECT count(*) FROM acct"), "40");
    b.stop();
    b.cl.exec(
        &m1,
        "UPDATE acct SET v = 'm1 later' WHERE id <= 5; DELETE FROM acct WHERE id = 101",
    );
    cluster::b().exec(
        &m2,
        "INSERT INTO acct VALUES (200, 'm2 later'); DELETE FROM acct WHERE id = 20",
    );

    // capra's daemon already runs (for other syncs): the import's new
    // sync starts running as soon as the catalog commits.
    let c = Capra::install(cluster::a());
    let _d = c.start();
    let out = c.ok(&["import", "bucardo", "--from", &b.from()]);
    assert!(out.contains("dbs=M1:source,M2:source"), "{out}");
    assert!(out.contains("conflict_strategy=bucardo_latest"), "{out}");
    assert!(out.contains("On \"M1\": handed over 6 undelivered key(s)"), "{out}");
    assert!(out.contains("On \"M2\": handed over 2 undelivered key(s)"), "{out}");
    c.ok(&["kick", "mm", "60"]);
    assert!(same((b.cl, &m1), (cluster::b(), &m2), "acct"));
    assert_eq!(value(b.cl, &m1, "SELECT count(*) FROM acct"), "39");
    assert_eq!(value(cluster::b(), &m2, "SELECT v FROM acct WHERE id = 3"), "m1 later");

    // An import that stopped after the catalog, before the hand-over (as a
    // crash would leave it): Bucardo's sync still active, its triggers on,
    // capturing while the application writes. Importing again finishes.
    cluster::a().exec(&c.ctl_db, "UPDATE capra.imported SET taken_over = NULL");
    b.cl.exec("bucardo", "UPDATE bucardo.sync SET status = 'active' WHERE name = 'mm'");
    for (cl, d) in [(b.cl, &m1), (cluster::b(), &m2)] {
        cl.exec(d, "ALTER TABLE acct ENABLE TRIGGER ALL");
    }
    b.cl.exec(&m1, "UPDATE acct SET v = 'm1 again' WHERE id = 1");
    cluster::b().exec(&m2, "INSERT INTO acct VALUES (300, 'm2 again')");
    let out = c.ok(&["import", "bucardo", "--from", &b.from()]);
    assert!(
        out.contains("\"mm\" (in capra already; finishing the takeover)"),
        "{out}"
    );
    assert!(out.contains("Took over sync(s) \"mm\""), "{out}");
    assert_eq!(
        value(b.cl, "bucardo", "SELECT status FROM bucardo.sync WHERE name = 'mm'"),
        "inactive"
    );
    c.ok(&["kick", "mm", "60"]);
    assert!(same((b.cl, &m1), (cluster::b(), &m2), "acct"));
    assert_eq!(value(b.cl, &m1, "SELECT count(*) FROM acct"), "40");
    let again = c.ok(&["import", "bucardo", "--from", &b.from()]);
    assert!(again.contains("Nothing to take over."), "{again}");
}

#[test]
fn chained_syncs_move_together_and_capras_own_groups_are_not_changed() {
    let b = bucardo::install();
    let (x, y, z) = (unique("cx"), unique("cy"), unique("cz"));
    for d in [&x, &y, &z] {
        b.cl.create_db(d);
        b.cl.exec(d, "CREATE TABLE ct (id int PRIMARY KEY); CREATE TABLE ct2 (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)");
    }
    b.add_db("X", b.cl, &x);
    b.add_db("Y", b.cl, &y);
    b.add_db("Z", b.cl, &z);
    // X -> Y with makedelta, Y -> Z: one chain. "down" cannot come along
    // (customname), so "up" must not either.
    b.cli(&["add", "table", "ct", "db=X", "relgroup=c1"]);
    b.cli(&["add", "sync", "up", "relgroup=c1", "dbs=X:source,Y:target"]);
    b.cl.exec("bucardo", "UPDATE bucardo.db SET makedelta = true WHERE name = 'Y'");
    b.cli(&["add", "table", "ct", "db=Y", "relgroup=c2"]);
    b.cli(&["add", "sync", "down", "relgroup=c2", "dbs=Y:source,Z:target"]);
    b.cl.exec(
        "bucardo",
        "INSERT INTO bucardo.customname (goat, newname) SELECT id, 'elsewhere' FROM bucardo.goat WHERE db = 'Y'",
    );
    // A multi-source sync writes every source: P <-> Q, Q makedelta,
    // Q -> R staying in Bucardo.
    let (pp, qq, rr) = (unique("cp"), unique("cq"), unique("cr"));
    for d in [&pp, &qq, &rr] {
        b.cl.create_db(d);
        b.cl.exec(d, "CREATE TABLE mt (id int PRIMARY KEY)");
    }
    b.add_db("P", b.cl, &pp);
    b.add_db("Q", b.cl, &qq);
    b.add_db("R", b.cl, &rr);
    b.cli(&["add", "table", "mt", "db=P", "relgroup=m1"]);
    b.cli(&["add", "sync", "mmup", "relgroup=m1", "dbs=P:source,Q:source"]);
    b.cli(&["add", "table", "mt", "db=Q", "relgroup=m2"]);
    b.cli(&["add", "sync", "qdown", "relgroup=m2", "dbs=Q:source,R:target"]);
    b.cl.exec(
        "bucardo",
        "UPDATE bucardo.db SET makedelta = true WHERE name = 'Q';
         INSERT INTO bucardo.customname (goat, newname) SELECT id, 'mt' FROM bucardo.goat WHERE db = 'Q'",
    );
    // capra has its own relgroup "taken" (another table): a herd of that
    // name must not change it.
    b.cli(&["add", "table", "ct2", "db=X", "relgroup=taken"]);
    b.cli(&["add", "sync", "coll", "relgroup=taken", "dbs=X:source,Z:target"]);
    let c = Capra::install(cluster::a());
    c.add_db("X", b.cl, &x);
    c.ok(&["add", "table", "other", "db=X", "relgroup=taken"]);
    let before = c.snapshot();
    let r = c.run(&["import", "bucardo", "--from", &b.from()]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    for want in [
        "sync \"up\": it is chained through database \"Y\" (makedelta) with Bucardo sync \"down\", which stays in Bucardo; import both or neither",
        "sync \"down\": it uses customname on public.ct",
        "sync \"coll\": capra refuses it: capra already has a relgroup \"taken\" with other tables",
        "sync \"mmup\": it is chained through database \"Q\" (makedelta) with Bucardo sync \"qdown\"",
    ] {
        assert!(r.stdout.contains(want), "lacks {want:?}:\n{}", r.stdout);
    }
    assert!(r.stdout.contains("Nothing to take over."), "{}", r.stdout);
    assert_eq!(c.snapshot(), before, "nothing was written");
    for s in ["up", "down", "coll", "mmup", "qdown"] {
        assert_eq!(
            value(
                b.cl,
                "bucardo",
                &format!("SELECT status FROM bucardo.sync WHERE name = '{s}'")
            ),
            "active"
        );
    }
}

#[test]
fn a_sync_that_stays_in_bucardo_on_a_shared_table_keeps_every_row_through_its_purge() {
    let b = bucardo::install();
    let (a, t1, t2) = (unique("sa"), unique("sb"), unique("sc"));
    for d in [&a, &t1, &t2] {
        b.cl.create_db(d);
        b.cl.exec(d, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    }
    b.add_db("A", b.cl, &a);
    b.add_db("B", b.cl, &t1);
    b.add_db("C", b.cl, &t2);
    b.cli(&["add", "table", "t", "db=A", "relgroup=rg"]);
    b.cli(&["add", "sync", "s1", "relgroup=rg", "dbs=A:source,B:target"]);
    b.cli(&["add", "sync", "s2", "relgroup=rg", "dbs=A:source,C:target"]);
    b.start(&["s1", "s2"]);
    b.cl.exec(&a, "INSERT INTO t SELECT g, 'first' FROM generate_series(1, 5) g");
    b.kick("s1");
    b.kick("s2");
    b.stop();
    // s2 pauses while s1 delivers more: rows s1 has and s2 has not.
    b.cl.exec(
        "bucardo",
        "UPDATE bucardo.sync SET status = 'inactive' WHERE name = 's2'",
    );
    b.start(&["s1"]);
    b.cl.exec(&a, "INSERT INTO t SELECT g, 'second' FROM generate_series(6, 10) g");
    b.kick("s1");
    b.stop();

    let c = Capra::install(cluster::a());
    let out = c.ok(&["import", "bucardo", "--from", &b.from()]);
    assert!(out.contains("sync \"s2\": inactive in Bucardo"), "{out}");
    assert!(
        out.contains("Bucardo's triggers on public.t stay: Bucardo sync s2 still reads it"),
        "{out}"
    );
    b.cl.exec(&a, "INSERT INTO t SELECT g, 'third' FROM generate_series(11, 12) g");

    // Back in Bucardo, s2 runs and Bucardo purges what it counts delivered:
    // nothing s2 lacks may go.
    b.cl.exec(&a, "SELECT bucardo.bucardo_purge_delta('0 seconds')");
    b.cl.exec("bucardo", "UPDATE bucardo.sync SET status = 'active' WHERE name = 's2'");
    b.start(&["s2"]);
    b.kick("s2");
    assert!(same((b.cl, &a), (b.cl, &t2), "t"), "Bucardo's s2 lost rows");
    b.stop();
    let _d = c.start();
    c.ok(&["kick", "s1", "60"]);
    assert!(same((b.cl, &a), (b.cl, &t1), "t"), "capra's s1");
}
