//! `capra validate`: each finding names the table and database; nothing in
//! the catalog or the databases changes.

use crate::support::{cluster, fixtures, Capra};

fn setup() -> (Capra, String, String) {
    let (c, src, tgt) = fixtures::confluence_pair();
    fixtures::add_keyed_tables(&c);
    c.ok(&["add", "all", "sequences", "db=src", "relgroup=rg"]);
    fixtures::add_keyed_sync(&c);
    (c, src, tgt)
}

#[test]
fn ok_then_each_kind_of_drift() {
    let (c, src, tgt) = setup();
    let b = cluster::b();
    let out = c.ok(&["validate", "s1"]);
    assert_eq!(out.trim(), "Validating sync s1 ... OK");
    assert_eq!(c.ok(&["validate", "all"]).trim(), "Validating sync s1 ... OK");

    b.exec(&tgt, "DROP TABLE bandana");
    b.exec(&tgt, "ALTER TABLE content ALTER COLUMN title TYPE integer USING 0");
    b.exec(&tgt, "ALTER TABLE user_mapping DROP COLUMN username");
    b.exec(&tgt, "ALTER TABLE confancestors ADD COLUMN must integer NOT NULL");
    let before = c.snapshot();
    let r = c.run(&["validate", "s1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stdout.contains("Validating sync s1 ... FAILED"), "{}", r.stdout);
    let e = &r.stderr;
    assert!(
        e.contains("table public.bandana does not exist in database \"tgt\""),
        "{e}"
    );
    assert!(e.contains("column \"title\" of table public.content is character varying(255) in database \"src\" but integer in \"tgt\""), "{e}");
    assert!(
        e.contains("column \"username\" of table public.user_mapping is missing in database \"tgt\""),
        "{e}"
    );
    assert!(
        e.contains("column \"must\" of table public.confancestors exists only in database \"tgt\" and is NOT NULL"),
        "{e}"
    );
    assert_eq!(before, c.snapshot());
    // A key dropped on the source after the table was added.
    cluster::a().exec(&src, "ALTER TABLE clustersafety DROP CONSTRAINT clustersafety_pkey");
    let r = c.run(&["validate", "s1"]);
    assert!(
        r.stderr
            .contains("key clustersafetyid of table public.clustersafety is no longer a primary or unique key"),
        "{}",
        r.stderr
    );
}

#[test]
fn rights_and_unreachable() {
    let (c, _, tgt) = setup();
    let b = cluster::b();
    b.exec("postgres", &format!("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'weak_{tgt}') THEN CREATE ROLE \"weak_{tgt}\" LOGIN; END IF; END $$"));
    b.exec(
        &tgt,
        &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"weak_{tgt}\""),
    );
    c.ok(&["update", "db", "tgt", &format!("user=weak_{tgt}")]);
    let r = c.run(&["validate", "s1"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains(&format!("the role \"weak_{tgt}\" lacks INSERT, DELETE, TRUNCATE on table public.bandana in database \"tgt\"; fix: GRANT INSERT, DELETE, TRUNCATE ON TABLE \"public\".\"bandana\" TO \"weak_{tgt}\"\n")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("the role \"weak_{tgt}\" lacks SELECT, UPDATE on sequence public.content_contentid_seq in database \"tgt\"; fix: GRANT SELECT, UPDATE ON SEQUENCE \"public\".\"content_contentid_seq\" TO \"weak_{tgt}\"\n")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("cannot set session_replication_role in database \"tgt\", which applying changes needs; fix: GRANT SET ON PARAMETER session_replication_role TO \"weak_{tgt}\"\n")),
        "{}",
        r.stderr
    );
    // An unreachable database is one clear finding, quickly.
    c.ok(&[
        "update",
        "db",
        "tgt",
        "user=postgres",
        &format!("port={}", cluster::free_port()),
        "--force",
    ]);
    let t0 = std::time::Instant::now();
    let r = c.run(&["validate", "s1"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("cannot connect to database \"tgt\""), "{}", r.stderr);
    assert!(t0.elapsed() < std::time::Duration::from_secs(15));
}
