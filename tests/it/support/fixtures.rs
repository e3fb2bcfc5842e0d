//! Databases with known contents for the tests, and the catalog setups
//! (dbs, tables, syncs) that many tests start from.

use std::time::Duration;

use super::cluster::{self, bin_dir, unique, Cluster};
use super::load::pgbench_init;
use super::Capra;

/// Creates a database holding the Confluence-like schema; returns its name.
pub fn confluence(c: &Cluster) -> String {
    let db = c.create_db(&unique("confluence"));
    c.exec(&db, include_str!("../fixtures/confluence.sql"));
    db
}

/// Creates a database with the Confluence-like schema but no rows.
pub fn confluence_schema_only(c: &Cluster) -> String {
    let db = c.create_db(&unique("confluence"));
    let ddl: String = include_str!("../fixtures/confluence.sql")
        .lines()
        .filter(|l| !l.starts_with("INSERT"))
        .collect::<Vec<_>>()
        .join("\n");
    c.exec(&db, &ddl);
    db
}

/// Creates a database and fills it with `pgbench -i` (scale 1) as the
/// French report does; returns its name.
pub fn pgbench(c: &Cluster, name_prefix: &str) -> String {
    let db = c.create_db(&unique(name_prefix));
    pgbench_init(c, &db, 1);
    db
}

/// One database of the same name on each of `clusters`, each filled by
/// `pgbench -i` (scale 1): the French report's test1 on three hosts.
pub fn pgbench_everywhere(clusters: &[&Cluster], name_prefix: &str) -> String {
    let db = unique(name_prefix);
    for cl in clusters {
        cl.create_db(&db);
        pgbench_init(cl, &db, 1);
    }
    db
}

/// Two fresh databases with the same DDL, `src` on cluster A and `tgt` on
/// cluster B, and a control database (on A) that has them as the dbs "src"
/// and "tgt": the setup most replication tests start from.
pub fn pair(prefix: &str, ddl: &str) -> (Capra, String, String) {
    pair_on(cluster::a(), cluster::b(), prefix, ddl)
}

/// [`pair`] with the source on `from` and the target on `to` (the control
/// database stays on cluster A): for servers of other versions.
pub fn pair_on(from: &Cluster, to: &Cluster, prefix: &str, ddl: &str) -> (Capra, String, String) {
    let src = from.create_db(&unique(&format!("{prefix}_src")));
    let tgt = to.create_db(&unique(&format!("{prefix}_tgt")));
    from.exec(&src, ddl);
    to.exec(&tgt, ddl);
    let c = Capra::install(cluster::a());
    c.add_db("src", from, &src);
    c.add_db("tgt", to, &tgt);
    (c, src, tgt)
}

/// The Confluence-like schema with rows on cluster A as db "src", the same
/// schema empty on cluster B as db "tgt", and a control database on A.
pub fn confluence_pair() -> (Capra, String, String) {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let src = confluence(a);
    let tgt = confluence_schema_only(b);
    c.add_db("src", a, &src);
    c.add_db("tgt", b, &tgt);
    (c, src, tgt)
}

/// Puts every Confluence table that has a key (all but
/// hibernate_unique_key) from db "src" into relgroup "rg".
pub fn add_keyed_tables(c: &Capra) {
    c.ok(&[
        "add",
        "all",
        "tables",
        "db=src",
        "relgroup=rg",
        "-T",
        "hibernate_unique_key",
    ]);
}

/// Sync "s1" from "src" to "tgt" over relgroup "rg" (the tables of
/// [`add_keyed_tables`]), not autokicked.
#[track_caller]
pub fn add_keyed_sync(c: &Capra) {
    c.ok(&[
        "add",
        "sync",
        "s1",
        "relgroup=rg",
        "dbs=src:source,tgt:target",
        "autokick=0",
    ]);
}

/// [`pair`] plus the tables in relgroup "g" and a sync "s" from "src" to
/// "tgt" with the given options: the start of most scenario tests.
pub fn synced(prefix: &str, ddl: &str, tables: &[&str], opts: &[&str]) -> (Capra, String, String) {
    let (c, src, tgt) = pair(prefix, ddl);
    sync_tables(&c, tables, "s", opts);
    (c, src, tgt)
}

/// `tables` of db "src" in relgroup "g", and the sync NAME of [`add_sync`]:
/// [`synced`] for the tests that make their databases themselves.
#[track_caller]
pub fn sync_tables(c: &Capra, tables: &[&str], name: &str, opts: &[&str]) {
    let mut add = vec!["add", "table"];
    add.extend_from_slice(tables);
    add.extend(["db=src", "relgroup=g"]);
    c.ok(&add);
    add_sync(c, name, opts);
}

/// `add sync NAME relgroup=g dbs=src:source,tgt:target OPTS...`: the sync
/// of [`synced`], for the tests that add its tables themselves.
#[track_caller]
pub fn add_sync(c: &Capra, name: &str, opts: &[&str]) {
    let mut sync = vec!["add", "sync", name, "relgroup=g", "dbs=src:source,tgt:target"];
    sync.extend_from_slice(opts);
    c.ok(&sync);
}

/// Creates one database per cluster with `ddl`, adds them to the catalog as
/// `{tag}1`, `{tag}2`, ... and returns their names: the databases of a
/// multi-master sync.
pub fn dbs(c: &Capra, tag: &str, ddl: &str, clusters: &[&'static Cluster]) -> Vec<String> {
    clusters
        .iter()
        .enumerate()
        .map(|(i, cl)| {
            let db = cl.create_db(&unique(&format!("mm_{tag}{}", i + 1)));
            cl.exec(&db, ddl);
            c.add_db(&format!("{tag}{}", i + 1), cl, &db);
            db
        })
        .collect()
}

/// The table that [`conflicting_writes`] writes to, with three rows.
pub const CONFLICT_DDL: &str = "CREATE TABLE t (id int PRIMARY KEY, v text, n int NOT NULL DEFAULT 0);
                   INSERT INTO t SELECT g, 'x', 0 FROM generate_series(1, 3) g;";

/// The same key changed on both sources (db 2 first, then db 1), plus
/// changes of other keys on each side; the newest change of the run is
/// db 2's insert. For the conflict strategies and the conflict hooks.
pub fn conflicting_writes(a: &Cluster, d1: &str, b: &Cluster, d2: &str) {
    b.exec(d2, "UPDATE t SET v = 'two', n = 7 WHERE id = 1");
    std::thread::sleep(Duration::from_millis(30));
    a.exec(d1, "UPDATE t SET v = 'one', n = 5 WHERE id = 1");
    a.exec(d1, "UPDATE t SET v = 'one' WHERE id = 2");
    std::thread::sleep(Duration::from_millis(30));
    b.exec(d2, "INSERT INTO t VALUES (10, 'two', 0)");
    b.exec(d2, "DELETE FROM t WHERE id = 3");
}

/// Table t of {tag}1 in relgroup "g_{tag}" and a sync "s_{tag}" between
/// the two sources {tag}1 and {tag}2 (autokick=0, then `opts`): one of the
/// two-source syncs that [`conflicting_writes`] is run against.
#[track_caller]
pub fn conflict_sync(c: &Capra, tag: &str, opts: &[&str]) {
    let group = format!("relgroup=g_{tag}");
    c.ok(&["add", "table", "t", &format!("db={tag}1"), &group]);
    let (name, dbs) = (format!("s_{tag}"), format!("dbs={tag}1:source,{tag}2:source"));
    let mut add = vec!["add", "sync", &name, &group, &dbs, "autokick=0"];
    add.extend_from_slice(opts);
    c.ok(&add);
}

/// pgbench data on cluster A as db "src", its schema copied to one new
/// database on each of `targets` (dbs "tgt0", "tgt1", ...), the keyed
/// pgbench tables in relgroup "bench" and a sync "bench" through a `dbs=`
/// list, with `extra` options; returns the target databases' names.
pub fn pgbench_sync(targets: &[&Cluster], extra: &[&str]) -> (Capra, String, Vec<String>) {
    let a = cluster::a();
    let src = pgbench(a, "bench_src");
    let c = Capra::install(a);
    c.add_db("src", a, &src);
    let mut tgts = Vec::new();
    let mut dbs = vec!["src:source".to_string()];
    for (i, cl) in targets.iter().enumerate() {
        let db = cl.create_db(&unique("bench_tgt"));
        pg_pipe((a, &src), &["--schema-only"], (cl, &db), false);
        let name = format!("tgt{i}");
        c.add_db(&name, cl, &db);
        dbs.push(format!("{name}:target"));
        tgts.push(db);
    }
    c.ok(&[
        "add",
        "all",
        "tables",
        "db=src",
        "relgroup=bench",
        "-T",
        "pgbench_history",
    ]);
    let dbs = format!("dbs={}", dbs.join(","));
    let mut args = vec!["add", "sync", "bench", "relgroup=bench", dbs.as_str()];
    args.extend_from_slice(extra);
    c.ok(&args);
    (c, src, tgts)
}

/// `pg_dump | psql`, stopping at the first error; `replica` runs psql with
/// session_replication_role=replica (triggers off), as the reports' data
/// copies do.
pub fn pg_pipe(dump_from: (&Cluster, &str), dump_args: &[&str], into: (&Cluster, &str), replica: bool) {
    pg_pipe_opts(dump_from, dump_args, into, replica, true)
}

/// `pg_dump | psql`; `strict` stops at the first error. A schema dumped from
/// a captured source carries capra's triggers, whose functions (in the
/// excluded capra schema) do not exist on a new target: those statements
/// fail harmlessly, so that copy runs without `strict`.
pub fn pg_pipe_opts(
    dump_from: (&Cluster, &str),
    dump_args: &[&str],
    into: (&Cluster, &str),
    replica: bool,
    strict: bool,
) {
    use std::process::{Command, Stdio};
    let mut dump = Command::new(bin_dir().join("pg_dump"))
        .arg("-h")
        .arg(&dump_from.0.socket_dir)
        .args(["-p", &dump_from.0.port.to_string(), "-U", "postgres"])
        .args(dump_args)
        .arg(dump_from.1)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut psql = Command::new(bin_dir().join("psql"));
    psql.arg("-h")
        .arg(&into.0.socket_dir)
        .args(["-p", &into.0.port.to_string(), "-U", "postgres", "-qX", "-v"])
        .arg(if strict { "ON_ERROR_STOP=1" } else { "ON_ERROR_STOP=0" })
        .args(["-d", into.1])
        .stderr(if strict { Stdio::inherit() } else { Stdio::null() })
        .stdin(dump.stdout.take().unwrap())
        .stdout(Stdio::null());
    if replica {
        psql.env("PGOPTIONS", "-c session_replication_role=replica");
    }
    assert!(psql.status().unwrap().success());
    assert!(dump.wait().unwrap().success());
}
