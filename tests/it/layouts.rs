//! Schemas nobody on the team designed: legacy inheritance trees, and a
//! table laid out differently on each side (plain on one, partitioned on
//! the other). Each must replicate exactly, rows compared one by one.

use crate::support::cluster::{self, Cluster};
use crate::support::data::{checksum, value};
use crate::support::fixtures;

/// The rows of the table itself, not its inheritance children's.
fn own_rows(c: &Cluster, db: &str, table: &str) -> String {
    checksum(c, db, &format!("(SELECT * FROM ONLY {table})"))
}

/// Legacy inheritance, parent and child both in the sync: a statement
/// naming the parent that deletes or changes a child's row reaches the
/// child on the target (statement triggers fire only for the named table,
/// so the child's capture must be row-level). The parent's own rows stay
/// its own on both sides.
#[test]
fn inheritance_parent_and_child_replicate() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE p (id int PRIMARY KEY, v text);
               CREATE TABLE c (PRIMARY KEY (id)) INHERITS (p);
               CREATE TABLE g (PRIMARY KEY (id)) INHERITS (c);";
    let (cap, src, tgt) = fixtures::synced("inh", ddl, &["p", "c", "g"], &["autokick=0"]);
    a.exec(
        &src,
        "INSERT INTO p VALUES (1, 'p1'), (10, 'p10');
         INSERT INTO c VALUES (2, 'c2'), (3, 'c3'), (4, 'c4');
         INSERT INTO g VALUES (5, 'g5'), (6, 'g6')",
    );
    let _d = cap.start();
    cap.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        "DELETE FROM p WHERE id IN (2, 5);
         UPDATE p SET v = 'upd' WHERE id IN (3, 6, 10);
         DELETE FROM c WHERE id = 4;
         INSERT INTO c VALUES (7, 'c7');
         DELETE FROM ONLY p WHERE id = 1",
    );
    cap.ok(&["kick", "s", "60"]);
    for t in ["p", "c", "g"] {
        assert_eq!(own_rows(a, &src, t), own_rows(b, &tgt, t), "{t}\n{}", cap.log());
    }
    assert_eq!(
        value(b, &tgt, "SELECT string_agg(id::text, ',' ORDER BY id) FROM p"),
        "3,6,7,10"
    );
}

/// A table captured with statement triggers that joins an inheritance
/// tree while replicating (a child created under it, or it made the child
/// of another) has its capture switched to row triggers by the DDL
/// follower at once, and its log kept: what was logged before replicates,
/// and so do the tree's writes after.
#[test]
fn joining_an_inheritance_tree_switches_capture_in_place() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE base (id int PRIMARY KEY, v text);
               CREATE TABLE kid (id int PRIMARY KEY, v text);";
    let (cap, src, tgt) = fixtures::synced("inhjoin", ddl, &["base", "kid"], &["autokick=0"]);
    let row_trigger = |t: &str| {
        value(
            a,
            &src,
            &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{t}'::regclass AND tgname = 'capra_capture_r'"),
        )
    };
    assert_eq!(row_trigger("base"), "0", "plain tables start statement-level");
    a.exec(
        &src,
        "INSERT INTO base VALUES (1, 'b1'); INSERT INTO kid VALUES (2, 'k2'), (3, 'k3')",
    );
    // Logged before the switch, replicated after it.
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, "ALTER TABLE kid INHERIT base");
    }
    assert_eq!(row_trigger("kid"), "1", "{}", cap.log());
    assert_eq!(row_trigger("base"), "1", "{}", cap.log());
    let _d = cap.start();
    cap.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        "DELETE FROM base WHERE id = 3; UPDATE base SET v = 'u' WHERE id = 2",
    );
    cap.ok(&["kick", "s", "60"]);
    for t in ["base", "kid"] {
        assert_eq!(own_rows(a, &src, t), own_rows(b, &tgt, t), "{t}\n{}", cap.log());
    }
    assert_eq!(
        value(b, &tgt, "SELECT string_agg(v, ',' ORDER BY id) FROM base"),
        "b1,u"
    );
}

/// The same table plain on one side and partitioned on the other, both
/// ways: deletes reach the partitioned target's partitions (no `ONLY`
/// there), a row moved between partitions by a key-column change arrives
/// once, a TRUNCATE and a full copy work, and a plain target fed by a
/// partitioned source ends with the same rows.
#[test]
fn plain_and_partitioned_layouts_replicate_both_ways() {
    let (a, b) = (cluster::a(), cluster::b());
    let src_ddl = "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d));
                   CREATE TABLE n (id int PRIMARY KEY, d date NOT NULL, v text);
                   CREATE TABLE r (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
                   CREATE TABLE r_1 PARTITION OF r FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
                   CREATE TABLE r_2 PARTITION OF r FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');";
    let tgt_ddl = "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
                   CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
                   CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
                   CREATE TABLE n (id int, d date NOT NULL, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
                   CREATE TABLE n_1 PARTITION OF n FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
                   CREATE TABLE n_2 PARTITION OF n FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
                   CREATE TABLE r (id int, d date, v text, PRIMARY KEY (id, d));";
    let (cap, src, tgt) = fixtures::pair("layouts", src_ddl);
    b.exec(&tgt, "DROP TABLE m, n, r");
    b.exec(&tgt, tgt_ddl);
    let fill = "INSERT INTO {t} SELECT g, date '2024-01-01' + g * 3, 'a' FROM generate_series(1, 200) g";
    for t in ["m", "n", "r"] {
        a.exec(&src, &fill.replace("{t}", t));
    }
    fixtures::sync_tables(&cap, &["m", "n", "r"], "s", &["autokick=0", "onetimecopy=1"]);
    let _d = cap.start();
    cap.ok(&["kick", "s", "60"]);
    let same = |what: &str| {
        for t in ["m", "n", "r"] {
            assert_eq!(
                checksum(a, &src, t),
                checksum(b, &tgt, t),
                "{t} after {what}\n{}",
                cap.log()
            );
        }
    };
    same("the full copy");
    for t in ["m", "n", "r"] {
        a.exec(
            &src,
            &format!(
                "UPDATE {t} SET v = 'new' WHERE id = 1;
                 DELETE FROM {t} WHERE id BETWEEN 10 AND 19;
                 UPDATE {t} SET d = d + 365 WHERE id BETWEEN 20 AND 29;
                 INSERT INTO {t} VALUES (1000, '2025-06-01', 'fresh')"
            ),
        );
    }
    cap.ok(&["kick", "s", "60"]);
    same("deletes, updates and moves between partitions");
    a.exec(&src, "TRUNCATE m, n, r");
    for t in ["m", "n", "r"] {
        a.exec(&src, &fill.replace("{t}", t).replace("200", "20"));
    }
    cap.ok(&["kick", "s", "60"]);
    same("a TRUNCATE and new rows");
    assert_eq!(value(b, &tgt, "SELECT count(*) FROM n"), "20");
}

/// A database in `encoding` (C locale) on `c`, with `ddl`.
fn db_in(c: &Cluster, prefix: &str, encoding: &str, ddl: &str) -> String {
    let name = crate::support::unique(prefix);
    c.exec(
        "postgres",
        &format!("CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"),
    );
    c.exec(&name, ddl);
    name
}

/// The rows of `table` as LATIN1 bytes (converted from the database's own
/// encoding; SQL_ASCII bytes as they are), counted and hashed: comparable
/// across the encodings, as every character here is in LATIN1.
fn latin1_rows(c: &Cluster, db: &str, table: &str) -> String {
    value(
        c,
        db,
        &format!(
            "SELECT count(*) || ' rows ' || coalesce(md5(convert_to(string_agg(x::text, '|' ORDER BY x::text COLLATE \"C\"), 'LATIN1')), '-')
               FROM {table} x"
        ),
    )
}

/// Old databases (issue 17, item 7): a SQL_ASCII source whose keys and
/// values hold bytes that are not UTF-8 (a LATIN1 'é' as 0xE9), into a
/// SQL_ASCII target and into a LATIN1 one, byte for byte; and a LATIN1
/// source into a UTF8 target, converted. Full copy, then changes: a
/// value, a key change, a delete, a new row, through a text key and a
/// composite one.
#[test]
fn old_encodings_replicate_keys_and_values() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE w (k text PRIMARY KEY, v text);
               CREATE TABLE wc (a varchar(20), b int, v text, PRIMARY KEY (a, b));";
    let cases = [("SQL_ASCII", "SQL_ASCII"), ("SQL_ASCII", "LATIN1"), ("LATIN1", "UTF8")];
    for (from, to) in cases {
        let src = db_in(a, "enc_src", from, ddl);
        let tgt = db_in(b, "enc_tgt", to, ddl);
        let c = crate::support::Capra::install(a);
        c.add_db("src", a, &src);
        c.add_db("tgt", b, &tgt);
        // E'\xe9' is the byte 0xE9 in SQL_ASCII, and 'é' in LATIN1.
        a.exec(
            &src,
            "INSERT INTO w VALUES (E'caf\\xe9', E'cr\\xe8me'), ('plain', 'x'), (E'na\\xefve', 'y');
             INSERT INTO wc VALUES (E'\\xe9t\\xe9', 1, 'a'), (E'\\xe9t\\xe9', 2, E'\\xff'), ('ascii', 1, 'b')",
        );
        fixtures::sync_tables(&c, &["w", "wc"], "s", &["autokick=0", "onetimecopy=1"]);
        let _d = c.start();
        c.ok(&["kick", "s", "60"]);
        let same = |what: &str| {
            for t in ["w", "wc"] {
                assert_eq!(
                    latin1_rows(a, &src, t),
                    latin1_rows(b, &tgt, t),
                    "{from} -> {to}, {t} after {what}\n{}",
                    c.log()
                );
            }
        };
        same("the full copy");
        a.exec(
            &src,
            "UPDATE w SET v = E'd\\xe9j\\xe0' WHERE k = E'caf\\xe9';
             UPDATE w SET k = E'na\\xefve2' WHERE k = E'na\\xefve';
             DELETE FROM w WHERE k = 'plain';
             INSERT INTO w VALUES (E'\\xfc', 'new');
             UPDATE wc SET v = 'changed' WHERE a = E'\\xe9t\\xe9' AND b = 1;
             DELETE FROM wc WHERE a = E'\\xe9t\\xe9' AND b = 2",
        );
        c.ok(&["kick", "s", "60"]);
        same("changes");
        assert_eq!(value(b, &tgt, "SELECT count(*) FROM w"), "3");
    }
}

/// Without the DDL follower (capra's role is no superuser, or the switch
/// failed), a captured table that joins an inheritance tree is switched by
/// the next run, before its snapshot, and what it missed meanwhile (a
/// DELETE through the parent of a row it holds) is repaired: that run
/// compares all its keys.
#[test]
fn a_table_that_joined_a_tree_without_the_follower_is_switched_and_repaired() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE base (id int PRIMARY KEY, v text);
               CREATE TABLE kid (id int PRIMARY KEY, v text);";
    let (cap, src, tgt) = fixtures::synced("inhnofollow", ddl, &["base", "kid"], &["autokick=0"]);
    a.exec(
        &src,
        "INSERT INTO base VALUES (1, 'b1'); INSERT INTO kid VALUES (2, 'k2'), (3, 'k3')",
    );
    let _d = cap.start();
    cap.ok(&["kick", "s", "60"]);
    a.exec("postgres", "SELECT 1");
    a.exec(&src, "DROP EVENT TRIGGER capra_follow_ddl");
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(db, "ALTER TABLE kid INHERIT base");
    }
    // Missed by kid's statement triggers: the statement names base.
    a.exec(&src, "DELETE FROM base WHERE id = 3");
    cap.ok(&["kick", "s", "60"]);
    for t in ["base", "kid"] {
        assert_eq!(own_rows(a, &src, t), own_rows(b, &tgt, t), "{t}\n{}", cap.log());
    }
    assert!(cap.log().contains("joined an inheritance tree"), "{}", cap.log());
    a.exec(&src, "DELETE FROM base WHERE id = 2");
    cap.ok(&["kick", "s", "60"]);
    assert_eq!(own_rows(a, &src, "kid"), own_rows(b, &tgt, "kid"), "{}", cap.log());
}

/// A plain table captured by one sync is attached as a partition of a
/// partitioned table another sync captures: the DDL follower switches it
/// to row triggers under a name of its own (the parent's row trigger is
/// cloned onto it under the parent's name), and both syncs replicate every
/// write, whichever table the statement names.
#[test]
fn a_captured_table_attached_to_a_captured_parent_replicates_in_both_syncs() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE m (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
               CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
               CREATE TABLE m_2 (id int, d date, v text, PRIMARY KEY (id, d));";
    let (cap, src, tgt) = fixtures::pair("partpair", ddl);
    let tgt2 = b.create_db(&crate::support::unique("partpair_tgt2"));
    b.exec(&tgt2, "CREATE TABLE m_2 (id int, d date, v text, PRIMARY KEY (id, d))");
    cap.add_db("tgt2", b, &tgt2);
    fixtures::sync_tables(&cap, &["m"], "s1", &["autokick=0"]);
    cap.ok(&["add", "table", "m_2", "db=src", "relgroup=g2"]);
    cap.ok(&[
        "add",
        "sync",
        "s2",
        "relgroup=g2",
        "dbs=src:source,tgt2:target",
        "autokick=0",
    ]);
    for (cl, db) in [(a, &src), (b, &tgt)] {
        cl.exec(
            db,
            "ALTER TABLE m ATTACH PARTITION m_2 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
        );
    }
    let _d = cap.start();
    a.exec(
        &src,
        "INSERT INTO m SELECT g, date '2024-06-01' + g * 2, 'a' FROM generate_series(1, 200) g;
         INSERT INTO m_2 VALUES (1000, '2025-09-09', 'direct');
         UPDATE m SET v = 'upd' WHERE id <= 150 AND id % 10 = 0; DELETE FROM m WHERE id BETWEEN 160 AND 170;
         DELETE FROM m_2 WHERE id = 199",
    );
    cap.ok(&["kick", "s1", "60"]);
    cap.ok(&["kick", "s2", "60"]);
    assert_eq!(checksum(a, &src, "m"), checksum(b, &tgt, "m"), "{}", cap.log());
    assert_eq!(checksum(a, &src, "m_2"), checksum(b, &tgt2, "m_2"), "{}", cap.log());
}

/// A legacy inheritance parent on the source that is partitioned on the
/// target is refused with one line: there its children's rows are its own,
/// and replaying the parent's own TRUNCATE or full copy would empty them.
/// A SQL_ASCII database among the sources of a multi-master sync is
/// refused the same way.
#[test]
fn layouts_capra_cannot_replicate_are_refused_in_one_line() {
    let (a, b) = (cluster::a(), cluster::b());
    let (cap, src, tgt) = fixtures::pair(
        "inhpart",
        "CREATE TABLE c (id int PRIMARY KEY, d date NOT NULL, v text)",
    );
    a.exec(
        &src,
        "CREATE TABLE p (id int PRIMARY KEY, d date NOT NULL, v text); ALTER TABLE c INHERIT p",
    );
    b.exec(
        &tgt,
        "DROP TABLE c; CREATE TABLE p (id int, d date NOT NULL, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
         CREATE TABLE c PARTITION OF p FOR VALUES FROM ('2020-01-01') TO ('2030-01-01')",
    );
    fixtures::sync_tables(&cap, &["p"], "s", &["autokick=0"]);
    a.exec(
        &src,
        "INSERT INTO c VALUES (1, '2024-01-01', 'child'); INSERT INTO p VALUES (2, '2024-01-01', 'parent')",
    );
    let _d = cap.start();
    let r = cap.run(&["kick", "s", "60"]);
    assert_ne!(r.code, Some(0));
    let err = crate::support::data::last_run(&cap, "s");
    assert!(
        err.contains("has inheritance children on the source but is partitioned on \"tgt\""),
        "{err}"
    );
    assert_eq!(value(b, &tgt, "SELECT count(*) FROM p"), "0", "nothing was written");

    let ascii = db_in(a, "mm_ascii", "SQL_ASCII", "CREATE TABLE w (k text PRIMARY KEY)");
    let utf = db_in(b, "mm_utf", "UTF8", "CREATE TABLE w (k text PRIMARY KEY)");
    cap.add_db("x1", a, &ascii);
    cap.add_db("x2", b, &utf);
    cap.ok(&["add", "table", "w", "db=x1", "relgroup=gw"]);
    cap.ok(&[
        "add",
        "sync",
        "sw",
        "relgroup=gw",
        "dbs=x1:source,x2:source",
        "autokick=0",
    ]);
    cap.ok(&["reload"]);
    let r = cap.run(&["kick", "sw", "60"]);
    assert_ne!(r.code, Some(0));
    let err = crate::support::data::last_run(&cap, "sw");
    assert!(err.contains("is SQL_ASCII") && err.contains("targets only"), "{err}");
}
