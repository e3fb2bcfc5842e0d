//! Databases with known contents for the tests.

use super::cluster::{bin_dir, unique, Cluster};

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

/// Runs `pgbench -i -s SCALE` against an existing database.
pub fn pgbench_init(c: &Cluster, db: &str, scale: u32) {
    let out = std::process::Command::new(bin_dir().join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(&c.socket_dir)
        .args(["-p", &c.port.to_string(), "-U", "postgres", db])
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two fresh databases with the same DDL, `src` on cluster A and `tgt` on
/// cluster B, and a control database (on A) that has them as the dbs "src"
/// and "tgt": the setup most replication tests start from.
pub fn pair(prefix: &str, ddl: &str) -> (super::Capra, String, String) {
    let (a, b) = (super::cluster::a(), super::cluster::b());
    let src = a.create_db(&unique(&format!("{prefix}_src")));
    let tgt = b.create_db(&unique(&format!("{prefix}_tgt")));
    a.exec(&src, ddl);
    b.exec(&tgt, ddl);
    let c = super::Capra::install(a);
    c.add_db("src", a, &src);
    c.add_db("tgt", b, &tgt);
    (c, src, tgt)
}

/// The Confluence-like schema with rows on cluster A as db "src", the same
/// schema empty on cluster B as db "tgt", and a control database on A.
pub fn confluence_pair() -> (super::Capra, String, String) {
    let (a, b) = (super::cluster::a(), super::cluster::b());
    let c = super::Capra::install(a);
    let src = confluence(a);
    let tgt = confluence_schema_only(b);
    c.add_db("src", a, &src);
    c.add_db("tgt", b, &tgt);
    (c, src, tgt)
}

/// Puts every Confluence table that has a key (all but
/// hibernate_unique_key) from db "src" into relgroup "rg".
pub fn add_keyed_tables(c: &super::Capra) {
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

/// [`pair`] plus the tables in relgroup "g" and a sync "s" from "src" to
/// "tgt" with the given options: the start of most scenario tests.
pub fn synced(prefix: &str, ddl: &str, tables: &[&str], opts: &[&str]) -> (super::Capra, String, String) {
    let (c, src, tgt) = pair(prefix, ddl);
    let mut add = vec!["add", "table"];
    add.extend_from_slice(tables);
    add.extend(["db=src", "relgroup=g"]);
    c.ok(&add);
    let mut sync = vec!["add", "sync", "s", "relgroup=g", "dbs=src:source,tgt:target"];
    sync.extend_from_slice(opts);
    c.ok(&sync);
    (c, src, tgt)
}
