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
            &format!("SELECT count(*) FROM pg_trigger WHERE tgrelid = '{t}'::regclass AND tgname = 'capra_capture'"),
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
