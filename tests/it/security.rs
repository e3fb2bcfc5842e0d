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
        let su = value(
            cl,
            "postgres",
            &format!("SELECT rolsuper::text FROM pg_catalog.pg_roles WHERE rolname = '{role}'"),
        );
        assert_eq!(su, "false", "capra ran the planted operator on port {}", cl.port);
    }
}
