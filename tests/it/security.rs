//! Other people's databases: users who may create objects there must never
//! get capra to run their code with capra's rights.

use crate::support::cluster::{self, Cluster};
use crate::support::data::{checksum, value};
use crate::support::{fixtures, unique};

/// Makes `role` (a plain user with CREATE on `public` in `db`) plant an `=`
/// for varchar whose function makes it a superuser when someone with the
/// rights to do so compares two varchars.
fn plant_operator(c: &Cluster, db: &str, role: &str) {
    c.exec(
        "postgres",
        &format!("DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
    );
    c.exec(
        db,
        &format!(
            "GRANT CREATE, USAGE ON SCHEMA public TO {role};
             SET ROLE {role};
             CREATE FUNCTION public.varchar_eq_evil(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $f$
             BEGIN
                 EXECUTE 'ALTER ROLE {role} SUPERUSER';
                 RETURN $1::text = $2::text;
             EXCEPTION WHEN insufficient_privilege THEN
                 RETURN $1::text = $2::text;
             END $f$;
             CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.varchar_eq_evil);
             RESET ROLE"
        ),
    );
}

/// A user who may create in `public` plants an `=` for varchar on the
/// source and the target; capra's sessions, which run as a superuser,
/// compare varchar keys on every run. Its pinned search_path (`pg_catalog,
/// pg_temp`) means the planted operator is never chosen: the rows replicate
/// and the user stays a plain user.
#[test]
fn a_planted_operator_never_runs_with_capras_rights() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("hij", "CREATE TABLE acct (k varchar(20) PRIMARY KEY, v text)");
    let role = unique("mallory");
    plant_operator(a, &src, &role);
    plant_operator(b, &tgt, &role);
    fixtures::sync_tables(&c, &["acct"], "s", &["autokick=0"]);
    let _d = c.start();
    a.exec(
        &src,
        "INSERT INTO acct SELECT 'k' || g, 'v' FROM generate_series(1, 50) g",
    );
    c.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        // (As text: the test's own session must not pick the planted `=`.)
        "UPDATE acct SET v = 'w' WHERE k::text IN ('k1', 'k2'); DELETE FROM acct WHERE k::text = 'k3'",
    );
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "acct"), checksum(b, &tgt, "acct"), "{}", c.log());
    for cl in [a, b] {
        assert!(
            !is_super(cl, &role),
            "capra ran the planted operator on port {}",
            cl.port
        );
    }
}

/// Creates `role` (a plain login role) if missing and lets it create in
/// `public` of `db`: the tenant of these tests.
fn tenant(c: &Cluster, db: &str, role: &str) {
    c.exec(
        "postgres",
        &format!("DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
    );
    c.exec(db, &format!("GRANT CREATE, USAGE ON SCHEMA public TO {role}"));
}

/// Runs `sql` in `db` in a session of its own logged in as `role`.
fn as_role(c: &Cluster, db: &str, role: &str, sql: &str) -> Result<(), postgres::Error> {
    let mut cl = postgres::Config::new()
        .host_path(&c.socket_dir)
        .port(c.port)
        .user(role)
        .dbname(db)
        .connect(postgres::NoTls)?;
    cl.batch_execute(sql)
}

/// Whether `role` is a superuser on cluster `c`.
fn is_super(c: &Cluster, role: &str) -> bool {
    value(
        c,
        "postgres",
        &format!("SELECT rolsuper::text FROM pg_catalog.pg_roles WHERE rolname = '{role}'"),
    ) == "true"
}

/// Functions in the source's `capra` schema that PUBLIC may execute, and
/// whether PUBLIC has any right on the schema itself.
fn open_to_public(c: &Cluster, db: &str) -> (String, String) {
    (
        value(
            c,
            db,
            "SELECT coalesce(string_agg(p.oid::regprocedure::text, ', '), '') FROM pg_proc p
              WHERE p.pronamespace = 'capra'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE')",
        ),
        value(
            c,
            db,
            "SELECT (has_schema_privilege('public', 'capra', 'USAGE') OR has_schema_privilege('public', 'capra', 'CREATE'))::text",
        ),
    )
}

/// The capture functions run as their (superuser) owner, so whoever may
/// execute one can attach it to a table of its own and forge change rows
/// for a synced table. No capture function (nor the DDL follower) is
/// executable by PUBLIC and the `capra` schema grants PUBLIC nothing: a
/// tenant that a DBA even let into the schema cannot attach
/// `capra.capture_N()` to its own table, while its writes to the synced
/// table it owns are still captured (the trigger mechanism checks no
/// EXECUTE right) and replicated.
#[test]
fn capture_functions_are_not_executable_by_public() {
    let (a, b) = (cluster::a(), cluster::b());
    let ddl = "CREATE TABLE acct (id int PRIMARY KEY, v text)";
    let (c, src, tgt) = fixtures::pair("capx", "SELECT 1");
    let role = unique("eve");
    tenant(a, &src, &role);
    as_role(
        a,
        &src,
        &role,
        &format!("{ddl}; INSERT INTO acct VALUES (1, 'a'), (2, 'b')"),
    )
    .unwrap();
    b.exec(&tgt, ddl);
    fixtures::sync_tables(&c, &["acct"], "s", &["autokick=0", "onetimecopy=1"]);
    let n = value(
        a,
        &src,
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'capra'::regnamespace",
    );
    assert!(n.parse::<u32>().unwrap() >= 2, "capture functions installed: {n}");
    assert_eq!(open_to_public(a, &src), (String::new(), "false".into()));
    assert_eq!(
        value(
            a,
            &src,
            &format!("SELECT has_schema_privilege('{role}', 'capra', 'USAGE')::text")
        ),
        "false"
    );
    // Even let into the schema, the tenant cannot attach capture to a table
    // of its own.
    a.exec(&src, &format!("GRANT USAGE ON SCHEMA capra TO {role}"));
    let id = value(a, &src, "SELECT id FROM capra.captured");
    as_role(a, &src, &role, "CREATE TABLE mine (id int PRIMARY KEY)").unwrap();
    let forged = as_role(
        a,
        &src,
        &role,
        &format!("CREATE TRIGGER forge AFTER INSERT ON mine FOR EACH ROW EXECUTE FUNCTION capra.capture_{id}()"),
    );
    let e = forged.expect_err("a tenant attached capra's capture function to its own table");
    assert_eq!(
        e.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e:?}"
    );
    assert!(format!("{e:?}").contains("permission denied for function"), "{e:?}");
    // The tenant's own writes are captured and replicated.
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    as_role(
        a,
        &src,
        &role,
        "INSERT INTO acct VALUES (3, 'c'); UPDATE acct SET v = 'z' WHERE id = 1; DELETE FROM acct WHERE id = 2",
    )
    .unwrap();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "acct"), checksum(b, &tgt, "acct"), "{}", c.log());
    assert_eq!(
        value(b, &tgt, "SELECT string_agg(id || v, ',' ORDER BY id) FROM acct"),
        "1z,3c"
    );
}

/// An install at the current capture version made before capra revoked
/// PUBLIC's rights (its functions executable by PUBLIC, which CREATE OR
/// REPLACE would keep) is closed the next time capra attaches to it.
#[test]
fn an_install_open_to_public_is_closed_at_the_next_attach() {
    let a = cluster::a();
    let (c, src, _) = fixtures::synced(
        "capold",
        "CREATE TABLE kv (id int PRIMARY KEY)",
        &["kv"],
        &["autokick=0"],
    );
    a.exec(
        &src,
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA capra TO PUBLIC; GRANT USAGE ON SCHEMA capra TO PUBLIC",
    );
    assert_ne!(open_to_public(a, &src).0, "");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(open_to_public(a, &src), (String::new(), "false".into()), "{}", c.log());
}
