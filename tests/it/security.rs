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

/// Creates a plain login role on cluster `c` (no rights anywhere yet).
fn plain_role(c: &Cluster, role: &str) {
    c.exec(
        "postgres",
        &format!("DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"),
    );
}

/// The statements `validate` says fix what capra's roles lack (the text
/// after "fix: " on each line of its errors).
fn fixes(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split_once("; fix: ").map(|(_, f)| f.trim().to_string()))
        .collect()
}

/// capra replicates without a superuser anywhere: the source role has
/// what docs/security.md lists for a source (CREATE on the database,
/// USAGE on the schema, SELECT and TRIGGER on the tables, SELECT on the
/// sequences), and the target role, on PostgreSQL 15+, starts with
/// nothing: `validate` names each missing right on one line with the GRANT
/// that fixes it, and once exactly those statements ran, validate passes
/// and a full copy, changes, a TRUNCATE and a sequence all replicate.
#[test]
fn a_least_privilege_role_replicates_to_a_15_target() {
    let (a, b) = (cluster::a(), cluster::b());
    let version: u32 = value(b, "postgres", "SHOW server_version_num").parse().unwrap();
    assert!(version >= 150000, "the harness's newest server is {version}");
    let ddl = "CREATE TABLE kv (id int PRIMARY KEY, v text); CREATE SEQUENCE sq;
               CREATE TABLE \"Odd Name\" (k text PRIMARY KEY, n numeric)";
    let (c, src, tgt) = fixtures::pair("lp", ddl);
    a.exec(
        &src,
        "INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 100) g;
         INSERT INTO \"Odd Name\" VALUES ('a', 1), ('b', 2); SELECT setval('sq', 42)",
    );
    let (rs, rt) = (unique("capra_src"), unique("capra_tgt"));
    plain_role(a, &rs);
    plain_role(b, &rt);
    a.exec(
        &src,
        &format!(
            "GRANT CREATE ON DATABASE \"{src}\" TO {rs}; GRANT USAGE ON SCHEMA public TO {rs};
             GRANT SELECT, TRIGGER ON kv, \"Odd Name\" TO {rs}; GRANT SELECT ON SEQUENCE sq TO {rs}"
        ),
    );
    c.ok(&["update", "db", "src", &format!("user={rs}")]);
    c.ok(&["add", "table", "kv", "Odd Name", "db=src", "relgroup=g"]);
    c.ok(&["add", "sequence", "sq", "db=src", "relgroup=g"]);
    fixtures::add_sync(&c, "s", &["autokick=0", "onetimecopy=1"]);
    c.ok(&["update", "db", "tgt", &format!("user={rt}")]);
    b.exec(&tgt, "REVOKE ALL ON SCHEMA public FROM PUBLIC");
    let r = c.run(&["validate", "s"]);
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    let fix = fixes(&r.stderr);
    assert_eq!(
        fix,
        [
            format!("GRANT USAGE ON SCHEMA \"public\" TO \"{rt}\""),
            format!("GRANT SELECT, INSERT, DELETE, TRUNCATE ON TABLE \"public\".\"Odd Name\" TO \"{rt}\""),
            format!("GRANT SELECT, INSERT, DELETE, TRUNCATE ON TABLE \"public\".\"kv\" TO \"{rt}\""),
            format!("GRANT SELECT, UPDATE ON SEQUENCE \"public\".\"sq\" TO \"{rt}\""),
            format!("GRANT SET ON PARAMETER session_replication_role TO \"{rt}\""),
            format!("GRANT CREATE ON DATABASE \"{tgt}\" TO \"{rt}\""),
        ],
        "{}",
        r.stderr
    );
    b.exec(&tgt, &fix.join(";\n"));
    assert!(c.ok(&["validate", "s"]).contains("OK"));
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    a.exec(
        &src,
        "INSERT INTO kv VALUES (101, 'new'); UPDATE kv SET v = 'u' WHERE id < 5; DELETE FROM kv WHERE id = 50;
         UPDATE \"Odd Name\" SET n = 3 WHERE k = 'a'; SELECT nextval('sq')",
    );
    c.ok(&["kick", "s", "60"]);
    for t in ["kv", "\"Odd Name\""] {
        assert_eq!(checksum(a, &src, t), checksum(b, &tgt, t), "{t}\n{}", c.log());
    }
    assert_eq!(value(b, &tgt, "SELECT last_value FROM sq"), "43");
    a.exec(&src, "TRUNCATE \"Odd Name\"");
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(b, &tgt, "\"Odd Name\""), "0 rows -", "{}", c.log());
    assert!(!is_super(a, &rs) && !is_super(b, &rt));
}

/// Makes `role` plant, in `public` of `db`, look-alikes of functions and
/// operators capra's SQL calls, with more specific argument types than
/// the built-ins (so an unpinned search_path would pick them), an
/// aggregate, and implicit casts between its own types and text. Each one
/// tries to make `role` a superuser.
fn plant_lookalikes(c: &Cluster, db: &str, role: &str) {
    let escalate =
        format!("BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; EXCEPTION WHEN insufficient_privilege THEN NULL; END;");
    let fns = [
        ("lower(varchar)", "text", "RETURN pg_catalog.lower($1::text);"),
        ("format(text, name)", "text", "RETURN pg_catalog.format($1, $2);"),
        (
            "format(text, name, name)",
            "text",
            "RETURN pg_catalog.format($1, $2, $3);",
        ),
        (
            "format(varchar, text, text)",
            "text",
            "RETURN pg_catalog.format($1, $2, $3);",
        ),
        ("txid_current()", "bigint", "RETURN pg_catalog.txid_current();"),
        (
            "txid_current_snapshot()",
            "txid_snapshot",
            "RETURN pg_catalog.txid_current_snapshot();",
        ),
        (
            "to_regclass(varchar)",
            "regclass",
            "RETURN pg_catalog.to_regclass($1::text);",
        ),
        ("to_regclass(text)", "regclass", "RETURN pg_catalog.to_regclass($1);"),
        (
            "quote_ident(varchar)",
            "text",
            "RETURN pg_catalog.quote_ident($1::text);",
        ),
        (
            "set_config(varchar, varchar, boolean)",
            "text",
            "RETURN pg_catalog.set_config($1, $2, $3);",
        ),
        (
            "current_setting(varchar)",
            "text",
            "RETURN pg_catalog.current_setting($1::text);",
        ),
        ("now()", "timestamptz", "RETURN pg_catalog.now();"),
        (
            "unnest(varchar[])",
            "SETOF varchar",
            "RETURN QUERY SELECT pg_catalog.unnest($1);",
        ),
        (
            "record_image_eq(record, record)",
            "boolean",
            "RETURN pg_catalog.record_image_eq($1, $2);",
        ),
        (
            "has_table_privilege(varchar, varchar)",
            "boolean",
            "RETURN pg_catalog.has_table_privilege($1::text, $2::text);",
        ),
        (
            "textcat(varchar, varchar)",
            "text",
            "RETURN pg_catalog.textcat($1::text, $2::text);",
        ),
        (
            "text_eq_evil(text, text)",
            "boolean",
            "RETURN pg_catalog.texteq($1, $2);",
        ),
        (
            "name_eq_evil(name, text)",
            "boolean",
            "RETURN pg_catalog.texteq($1::text, $2);",
        ),
        (
            "int_eq_evil(integer, bigint)",
            "boolean",
            "RETURN $1::bigint OPERATOR(pg_catalog.=) $2;",
        ),
        (
            "agg_evil(varchar[], varchar)",
            "varchar[]",
            "RETURN pg_catalog.array_append($1, $2);",
        ),
        ("mood_text(mood)", "text", "RETURN pg_catalog.enum_out($1)::text;"),
        (
            "text_mood(text)",
            "mood",
            "RETURN pg_catalog.enum_in($1::cstring, 'public.mood'::regtype);",
        ),
    ];
    let mut sql = String::from("CREATE TYPE public.mood AS ENUM ('a', 'b');\n");
    for (sig, ret, body) in fns {
        sql.push_str(&format!(
            "CREATE FUNCTION public.{sig} RETURNS {ret} LANGUAGE plpgsql AS $f$ BEGIN {escalate} {body} END $f$;\n"
        ));
    }
    sql.push_str(
        "CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq_evil);
         CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.name_eq_evil);
         CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = bigint, FUNCTION = public.int_eq_evil);
         CREATE OPERATOR public.|| (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.textcat);
         CREATE AGGREGATE public.array_agg(varchar) (SFUNC = public.agg_evil, STYPE = varchar[]);
         CREATE CAST (public.mood AS text) WITH FUNCTION public.mood_text(public.mood) AS IMPLICIT;
         CREATE CAST (text AS public.mood) WITH FUNCTION public.text_mood(text) AS IMPLICIT;
         CREATE DOMAIN public.dtext AS text;",
    );
    as_role(c, db, role, &sql).unwrap_or_else(|e| panic!("planting look-alikes: {e:?}"));
}

/// A tenant owns the synced tables on the source and the target and plants
/// look-alikes of what capra's SQL names (see [`plant_lookalikes`]:
/// `lower`, `format`, `txid_current`, `to_regclass`, `set_config`,
/// `unnest`, `record_image_eq`, an `array_agg` for varchar, `=` and `||`
/// for the types capra compares and joins, implicit casts of its own enum).
/// capra's sessions pin `search_path` to `pg_catalog, pg_temp`, so a full
/// copy, changes, a TRUNCATE, `validate` and `status` never pick them. The
/// tenant's own writes, from a session whose search_path puts `public`
/// first, fire capra's SECURITY DEFINER capture function (which has no
/// `SET search_path`): it names nothing through the caller's path, so
/// the look-alikes do not run there either. The tenant stays a plain user
/// and the rows replicate.
#[test]
fn lookalike_functions_operators_and_casts_never_run_with_capras_rights() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("look", "SELECT 1");
    let role = unique("mallory");
    let ddl = "CREATE TABLE acct (k varchar(20) PRIMARY KEY, v text, n int);
               CREATE TABLE comp (a int, b varchar(10), v public.dtext, PRIMARY KEY (a, b))";
    for (cl, db) in [(a, &src), (b, &tgt)] {
        tenant(cl, db, &role);
        plant_lookalikes(cl, db, &role);
        as_role(cl, db, &role, ddl).unwrap();
    }
    as_role(
        a,
        &src,
        &role,
        "INSERT INTO acct SELECT 'k' || g, 'v', g FROM generate_series(1, 40) g;
         INSERT INTO comp SELECT g % 5, 'b' || g, 'x' FROM generate_series(1, 40) g",
    )
    .unwrap();
    fixtures::sync_tables(&c, &["acct", "comp"], "s", &["autokick=0", "onetimecopy=1"]);
    assert!(c.ok(&["validate", "s"]).contains("OK"));
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    as_role(
        a,
        &src,
        &role,
        "SET search_path = public, pg_catalog;
         INSERT INTO acct VALUES ('new', 'n', 0);
         UPDATE acct SET v = 'w', k = k || 'x' WHERE n < 4;
         DELETE FROM acct WHERE n = 10;
         UPDATE comp SET v = 'y' WHERE a = 1;
         DELETE FROM comp WHERE a = 2",
    )
    .unwrap();
    c.ok(&["kick", "s", "60"]);
    for t in ["acct", "comp"] {
        assert_eq!(checksum(a, &src, t), checksum(b, &tgt, t), "{t}\n{}", c.log());
    }
    as_role(a, &src, &role, "SET search_path = public, pg_catalog; TRUNCATE comp").unwrap();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(b, &tgt, "comp"), "0 rows -");
    c.ok(&["status", "s"]);
    for cl in [a, b] {
        assert!(!is_super(cl, &role), "capra ran a look-alike on port {}", cl.port);
    }
}

/// The tables of [`plant_table_code`], each carrying one kind of code.
const CODE_TABLES: &[&str] = &[
    "t_always",
    "t_replica",
    "t_origin",
    "r_always",
    "r_origin",
    "d_extra",
    "g_gen",
    "c_check",
    "i_index",
    "dom",
    "ck",
];

/// `role` (a tenant of `db`) creates the tables of [`CODE_TABLES`], all
/// `(id, v)` but `dom` (v of a domain with a CHECK) and `ck` (keyed by an
/// enum with casts to and from text), plus a function `hit(what)` that
/// logs who ran it in `public.hits` and tries to make `role` a superuser.
/// With `code`, the tables get the code that runs as whoever writes them:
/// triggers and rules enabled ALWAYS or REPLICA (and ordinary ones, which
/// a replica session does not fire), a column only this side has with a
/// DEFAULT, a generated column, a CHECK and an index expression calling
/// `hit`.
fn plant_table_code(c: &Cluster, db: &str, role: &str, code: bool) {
    tenant(c, db, role);
    let mut sql = format!(
        "CREATE TABLE hits (what text, who text);
         GRANT INSERT ON hits TO PUBLIC;
         CREATE FUNCTION hit(what text) RETURNS boolean LANGUAGE plpgsql AS $f$
         BEGIN
             INSERT INTO public.hits VALUES (what, current_user);
             BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; EXCEPTION WHEN insufficient_privilege THEN NULL; END;
             RETURN true;
         END $f$;
         CREATE FUNCTION hit_imm(what text, v text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
         BEGIN PERFORM public.hit(what); RETURN v; END $f$;
         CREATE FUNCTION hit_trg() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN PERFORM public.hit(TG_TABLE_NAME || ' ' || TG_OP); RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END; END $f$;
         CREATE TYPE mood AS ENUM ('a', 'b', 'c');
         CREATE FUNCTION mood_text(mood) RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN PERFORM public.hit('cast mood AS text'); RETURN pg_catalog.enum_out($1)::text; END $f$;
         CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood);
         CREATE FUNCTION text_mood(text) RETURNS mood LANGUAGE plpgsql AS $f$
         BEGIN PERFORM public.hit('cast text AS mood'); RETURN pg_catalog.enum_in($1::cstring, 'public.mood'::regtype); END $f$;
         CREATE CAST (text AS mood) WITH FUNCTION text_mood(text);
         CREATE DOMAIN checked AS text CHECK (public.hit('domain check'));
         CREATE TABLE dom (id int PRIMARY KEY, v checked);
         CREATE TABLE ck (k mood PRIMARY KEY, v text);"
    );
    for t in &CODE_TABLES[..9] {
        sql.push_str(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text);"));
    }
    if code {
        sql.push_str(
            "CREATE TRIGGER x BEFORE INSERT OR UPDATE OR DELETE ON t_always FOR EACH ROW EXECUTE FUNCTION hit_trg();
             CREATE TRIGGER xt BEFORE TRUNCATE ON t_always FOR EACH STATEMENT EXECUTE FUNCTION hit_trg();
             ALTER TABLE t_always ENABLE ALWAYS TRIGGER x; ALTER TABLE t_always ENABLE ALWAYS TRIGGER xt;
             CREATE TRIGGER x BEFORE INSERT OR UPDATE OR DELETE ON t_replica FOR EACH ROW EXECUTE FUNCTION hit_trg();
             ALTER TABLE t_replica ENABLE REPLICA TRIGGER x;
             CREATE TRIGGER x BEFORE INSERT OR UPDATE OR DELETE ON t_origin FOR EACH ROW EXECUTE FUNCTION hit_trg();
             CREATE RULE x AS ON DELETE TO r_always DO ALSO SELECT public.hit('rule r_always');
             ALTER TABLE r_always ENABLE ALWAYS RULE x;
             CREATE RULE x AS ON DELETE TO r_origin DO ALSO SELECT public.hit('rule r_origin');
             ALTER TABLE d_extra ADD COLUMN extra boolean DEFAULT public.hit('default');
             ALTER TABLE g_gen ADD COLUMN g text GENERATED ALWAYS AS (public.hit_imm('generated', v)) STORED;
             ALTER TABLE c_check ADD CONSTRAINT c_check_v CHECK (public.hit_imm('check', v) IS NOT NULL);
             CREATE INDEX i_index_v ON i_index (public.hit_imm('index', v));",
        );
    }
    as_role(c, db, role, &sql).unwrap_or_else(|e| panic!("planting table code: {e:?}"));
}

/// Rows for every table of [`CODE_TABLES`] on the source.
fn fill_code_tables(c: &Cluster, db: &str, role: &str) {
    let mut sql = String::from("INSERT INTO ck VALUES ('a', 'x'), ('b', 'y');");
    for t in &CODE_TABLES[..10] {
        sql.push_str(&format!(
            "INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 5) g;"
        ));
    }
    as_role(c, db, role, &sql).unwrap();
}

/// Under a superuser apply, PostgreSQL itself runs a table's code as the
/// writer, and capra cannot stop it (measured here on PostgreSQL 15 with
/// capra's apply): triggers enabled ALWAYS or REPLICA fire (a replica
/// session stops only ordinary ones), so do rules enabled ALWAYS (ordinary
/// rules do not fire), a DEFAULT of a column capra does not write, a
/// generated column, a CHECK, an index expression and a domain's CHECK are
/// evaluated for every row capra writes, and a tenant's casts of its own
/// key type run whenever capra turns keys into text and back (on the
/// source too). Each would run as the superuser. So `validate`, with
/// capra connected as a superuser, refuses each one on its own line,
/// naming the table, the code, its owner and the fix (a role that is not a
/// superuser, docs/security.md); the ordinary trigger and rule, which
/// never fire, are not named. The tenant stays a plain user (validate
/// reads catalogs only; no run happens here, as one would escalate).
#[test]
fn validate_refuses_a_tenants_code_that_a_superuser_apply_would_run() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("tcode", "SELECT 1");
    let role = unique("mallory");
    plant_table_code(a, &src, &role, false);
    plant_table_code(b, &tgt, &role, true);
    fixtures::sync_tables(&c, CODE_TABLES, "s", &["autokick=0"]);
    let r = c.run(&["validate", "s"]);
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    let on = |t: &str, db: &str| format!("on table public.{t} in database \"{db}\" is code of role \"{role}\"");
    let expected = [
        format!(
            "trigger x (ENABLE ALWAYS) calls public.hit_trg() {}",
            on("t_always", "tgt")
        ),
        format!(
            "trigger xt (ENABLE ALWAYS) calls public.hit_trg() {}",
            on("t_always", "tgt")
        ),
        format!(
            "trigger x (ENABLE REPLICA) calls public.hit_trg() {}",
            on("t_replica", "tgt")
        ),
        format!("rule x (ENABLE ALWAYS) {}", on("r_always", "tgt")),
        format!(
            "the default or generated value of column extra calls public.hit(text) {}",
            on("d_extra", "tgt")
        ),
        format!(
            "the default or generated value of column g calls public.hit_imm(text,text) {}",
            on("g_gen", "tgt")
        ),
        format!(
            "constraint c_check_v calls public.hit_imm(text,text) {}",
            on("c_check", "tgt")
        ),
        format!(
            "index public.i_index_v calls public.hit_imm(text,text) {}",
            on("i_index", "tgt")
        ),
        format!(
            "a CHECK of the domain public.checked of column v calls public.hit(text) {}",
            on("dom", "tgt")
        ),
        format!(
            "a CHECK of the domain public.checked of column v calls public.hit(text) {}",
            on("dom", "src")
        ),
        format!(
            "the cast public.mood AS text (column k) calls public.mood_text(public.mood) {}",
            on("ck", "src")
        ),
        format!(
            "the cast text AS public.mood (column k) calls public.text_mood(text) {}",
            on("ck", "tgt")
        ),
    ];
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains("is code of role")).collect();
    for e in &expected {
        assert!(
            lines.iter().any(|l| l.contains(e.as_str())
                && l.ends_with("as a role that is not a superuser (docs/security.md)")
                && l.contains("capra would run it as its superuser role \"postgres\"")),
            "missing: {e}\n{}",
            r.stderr
        );
    }
    assert_eq!(lines.len(), 14, "one line per piece of code:\n{}", r.stderr);
    assert!(
        !r.stderr.contains("t_origin") && !r.stderr.contains("r_origin"),
        "{}",
        r.stderr
    );
    assert_eq!(value(b, &tgt, "SELECT count(*) FROM hits"), "0");
    assert!(!is_super(a, &role) && !is_super(b, &role));
}

/// The defence: capra connects as roles that are not superusers (the
/// grants of docs/security.md; PostgreSQL 15+ lets such a role set
/// session_replication_role on the target). The tenant's code of
/// [`plant_table_code`] on the target, and its casts on both sides, then
/// still run where PostgreSQL runs them (every kind is seen in its log:
/// the vectors are real), but as capra's plain roles, whose attempt to
/// make the tenant a superuser fails; nothing ran as a superuser, the
/// ordinary trigger and rule never fired, `validate` passes (the code is
/// only a note) and the rows replicate through a full copy, changes and a
/// TRUNCATE.
#[test]
fn a_tenants_code_runs_without_superuser_rights_under_a_least_privilege_apply() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("lpcode", "SELECT 1");
    let role = unique("mallory");
    plant_table_code(a, &src, &role, false);
    plant_table_code(b, &tgt, &role, true);
    fill_code_tables(a, &src, &role);
    let (rs, rt) = (unique("capra_src"), unique("capra_tgt"));
    plain_role(a, &rs);
    plain_role(b, &rt);
    let list = CODE_TABLES.join(", ");
    a.exec(
        &src,
        &format!("GRANT CREATE ON DATABASE \"{src}\" TO {rs}; GRANT SELECT, TRIGGER ON {list} TO {rs}"),
    );
    b.exec(
        &tgt,
        &format!(
            "GRANT SELECT, INSERT, DELETE, TRUNCATE ON {list} TO {rt};
             GRANT SET ON PARAMETER session_replication_role TO {rt};
             GRANT CREATE ON DATABASE \"{tgt}\" TO {rt}"
        ),
    );
    c.ok(&["update", "db", "src", &format!("user={rs}")]);
    c.ok(&["update", "db", "tgt", &format!("user={rt}")]);
    fixtures::sync_tables(&c, CODE_TABLES, "s", &["autokick=0", "onetimecopy=1"]);
    let out = c.ok(&["validate", "s", "-v"]);
    assert!(
        out.contains("OK") && out.contains(&format!("capra runs it with the rights of the role \"{rt}\"")),
        "{out}"
    );
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    let mut sql = String::from(
        "INSERT INTO ck VALUES ('c', 'z'); UPDATE ck SET v = 'u' WHERE k = 'a'; DELETE FROM ck WHERE k = 'b';",
    );
    for t in &CODE_TABLES[..10] {
        sql.push_str(&format!(
            "INSERT INTO {t} VALUES (10, 'new'); UPDATE {t} SET v = 'u' WHERE id = 1; DELETE FROM {t} WHERE id = 2;"
        ));
    }
    as_role(a, &src, &role, &sql).unwrap();
    c.ok(&["kick", "s", "60"]);
    for t in CODE_TABLES {
        let rows = if *t == "ck" {
            t.to_string()
        } else {
            format!("(SELECT id, v FROM {t})")
        };
        assert_eq!(checksum(a, &src, &rows), checksum(b, &tgt, &rows), "{t}\n{}", c.log());
    }
    as_role(a, &src, &role, "TRUNCATE t_always").unwrap();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(b, &tgt, "t_always"), "0 rows -", "{}", c.log());
    let ran = value(
        b,
        &tgt,
        "SELECT string_agg(DISTINCT what || ' by ' || who, ', ') FROM hits",
    );
    for what in [
        "t_always INSERT",
        "t_always DELETE",
        "t_always TRUNCATE",
        "t_replica INSERT",
        "rule r_always",
        "default",
        "generated",
        "check",
        "index",
        "domain check",
        "cast text AS mood",
    ] {
        assert!(
            ran.contains(&format!("{what} by {rt}")),
            "{what} did not run as {rt}: {ran}"
        );
    }
    assert!(!ran.contains("t_origin") && !ran.contains("r_origin"), "{ran}");
    let by_src = value(
        a,
        &src,
        &format!("SELECT count(*) FROM hits WHERE what = 'cast mood AS text' AND who = '{rs}'"),
    );
    assert_ne!(by_src, "0", "capra's source session converts the enum key to text");
    for (cl, db) in [(a, &src), (b, &tgt)] {
        let su = value(
            cl,
            db,
            "SELECT count(*) FROM hits h JOIN pg_roles r ON r.rolname = h.who WHERE r.rolsuper",
        );
        assert_eq!(su, "0", "the tenant's code ran as a superuser on port {}", cl.port);
        assert!(!is_super(cl, &role));
    }
}

/// capra's DDL follower is an event trigger running as its superuser
/// owner on DDL anyone issues. When a tenant retypes the key of its own
/// captured table to a type with a cast from text that the tenant wrote,
/// following the type would convert the change log through that cast, as
/// the superuser. The follower checks the casts first and gives up on the
/// key instead (the table is copied whole until capture is rebuilt on the
/// new type), so the tenant stays a plain user and the table converges.
#[test]
fn the_ddl_follower_never_runs_a_tenants_cast() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("follow", "SELECT 1");
    let role = unique("mallory");
    tenant(a, &src, &role);
    let ddl = "CREATE TYPE mood AS ENUM ('a', 'b', 'c'); CREATE TABLE kt (k text PRIMARY KEY, v text)";
    as_role(
        a,
        &src,
        &role,
        &format!(
            "{ddl};
             CREATE FUNCTION text_mood(text) RETURNS mood LANGUAGE plpgsql AS $f$
             BEGIN
                 BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; EXCEPTION WHEN insufficient_privilege THEN NULL; END;
                 RETURN pg_catalog.enum_in($1::cstring, 'public.mood'::regtype);
             END $f$;
             CREATE CAST (text AS mood) WITH FUNCTION text_mood(text);
             INSERT INTO kt VALUES ('a', 'x'), ('b', 'y')"
        ),
    )
    .unwrap();
    b.exec(&tgt, ddl);
    fixtures::sync_tables(&c, &["kt"], "s", &["autokick=0", "onetimecopy=1"]);
    let installed = value(
        a,
        &src,
        "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'capra_follow_ddl'",
    );
    assert_eq!(installed, "1");
    let _d = c.start();
    c.ok(&["kick", "s", "60"]);
    as_role(
        a,
        &src,
        &role,
        "INSERT INTO kt VALUES ('c', 'z'); UPDATE kt SET v = 'w' WHERE k = 'a'",
    )
    .unwrap();
    assert_ne!(value(a, &src, "SELECT count(*) FROM capra.delta_1"), "0");
    b.exec(&tgt, "ALTER TABLE kt ALTER COLUMN k TYPE mood USING k::mood");
    as_role(a, &src, &role, "ALTER TABLE kt ALTER COLUMN k TYPE mood USING k::mood").unwrap();
    assert!(
        !is_super(a, &role),
        "the DDL follower ran the tenant's cast as a superuser"
    );
    c.ok(&["kick", "s", "60"]);
    c.ok(&["kick", "s", "60"]);
    as_role(a, &src, &role, "DELETE FROM kt WHERE v = 'y'").unwrap();
    c.ok(&["kick", "s", "60"]);
    assert_eq!(checksum(a, &src, "kt"), checksum(b, &tgt, "kt"), "{}", c.log());
    assert_eq!(value(b, &tgt, "SELECT count(*) FROM kt"), "2");
    assert!(!is_super(a, &role));
}

/// Two ways a tenant could take capra's capture out of its hands, each
/// refused with one line saying what to do: a `capra` schema the tenant
/// created first (with CREATE on the database), where capra's SECURITY
/// DEFINER functions would sit under the tenant's ownership, ready to be
/// dropped and replaced, is refused by `add sync` (nothing is created in
/// it) and by `validate`; and row-level security on a tenant's target
/// table, which would make a least-privilege role see and delete only
/// the rows the tenant's policies allow, is refused by `validate` with
/// the fix (BYPASSRLS).
#[test]
fn a_tenants_capra_schema_and_row_security_are_refused() {
    let (a, b) = (cluster::a(), cluster::b());
    let (c, src, tgt) = fixtures::pair("squat", "SELECT 1");
    let role = unique("mallory");
    tenant(a, &src, &role);
    tenant(b, &tgt, &role);
    a.exec(&src, &format!("GRANT CREATE ON DATABASE \"{src}\" TO {role}"));
    let ddl = "CREATE TABLE kv (id int PRIMARY KEY, v text)";
    as_role(a, &src, &role, &format!("{ddl}; CREATE SCHEMA capra")).unwrap();
    as_role(
        b,
        &tgt,
        &role,
        &format!("{ddl}; ALTER TABLE kv ENABLE ROW LEVEL SECURITY; CREATE POLICY few ON kv USING (id < 10)"),
    )
    .unwrap();
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    let e = c.fails(&["add", "sync", "s", "relgroup=g", "dbs=src:source,tgt:target"], 1);
    assert!(
        e.contains(&format!("schema capra in this database belongs to the role \"{role}\"")),
        "{e}"
    );
    assert_eq!(
        value(
            a,
            &src,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'capra'::regnamespace"
        ),
        "0"
    );
    // The sync is there once the schema is gone; then the squatting and
    // the row security are findings of validate.
    a.exec(&src, "DROP SCHEMA capra");
    fixtures::add_sync(&c, "s", &["autokick=0"]);
    a.exec(&src, &format!("ALTER SCHEMA capra OWNER TO {role}"));
    let rt = unique("capra_tgt");
    plain_role(b, &rt);
    b.exec(
        &tgt,
        &format!("GRANT SELECT, INSERT, DELETE, TRUNCATE ON kv TO {rt}; GRANT SET ON PARAMETER session_replication_role TO {rt}"),
    );
    c.ok(&["update", "db", "tgt", &format!("user={rt}")]);
    let r = c.run(&["validate", "s"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(&format!(
            "schema capra in database \"src\" belongs to the role \"{role}\", not to capra's role \"postgres\""
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "table public.kv in database \"tgt\" has row-level security that applies to the role \"{rt}\", so capra would see and change only the rows its policies allow; fix: ALTER ROLE \"{rt}\" BYPASSRLS"
        )),
        "{}",
        r.stderr
    );
}
