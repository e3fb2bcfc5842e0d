//! Reading what a database holds, the way the tests compare a source with
//! its targets: nearly every test ends on these, so they live here rather
//! than in the first test module that needed them.

use super::cluster::{self, Cluster};
use super::Capra;

/// Row count and an ordered checksum of a table (or of a parenthesised
/// query): two tables are "the same" when these agree.
pub fn checksum(c: &Cluster, db: &str, table: &str) -> String {
    c.query(
        db,
        &format!("SELECT count(*) || ' rows ' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '-') FROM {table} x"),
    )[0]
    .clone()
    .unwrap()
}

/// The first column of the first row of `sql`, "NULL" for a null.
pub fn value(cl: &Cluster, db: &str, sql: &str) -> String {
    cl.query(db, sql)[0].clone().unwrap_or_else(|| "NULL".into())
}

/// The newest run of a sync: "state|error" (empty when it never ran).
/// The control database is on cluster A, as [`Capra::install`] puts it in
/// every scenario test.
pub fn last_run(c: &Capra, sync: &str) -> String {
    cluster::a()
        .query(
            &c.ctl_db,
            &format!("SELECT state || '|' || coalesce(error, '') FROM capra.run WHERE sync = '{sync}' ORDER BY id DESC LIMIT 1"),
        )
        .pop()
        .flatten()
        .unwrap_or_default()
}
