//! Different major versions: what built-in replication cannot do. The core
//! scenarios (initial copy of mixed types, changes, a key change, deletes,
//! TRUNCATE, partitions where both sides have 11+) between an old and a new
//! server in both directions, with server binaries fetched once by
//! scripts/pg-versions.sh.

use crate::support::cluster::{self, Cluster};
use crate::support::data::checksum;
use crate::support::fixtures;

const DDL: &str = "
CREATE TABLE mixed (id int PRIMARY KEY, b bigint, n numeric(12,3), t text, vc varchar(30), by bytea,
                    ts timestamptz, d date, iv interval, j jsonb, u uuid, arr int[], flag boolean,
                    f float8, ip inet);
CREATE TABLE comp (a int, b text, v text, PRIMARY KEY (a, b));
";

const PART_DDL: &str = "
CREATE TABLE part (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
CREATE TABLE part_a PARTITION OF part FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE TABLE part_b PARTITION OF part FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
";

fn major(c: &Cluster) -> u32 {
    c.query("postgres", "SHOW server_version_num")[0]
        .as_deref()
        .unwrap()
        .parse::<u32>()
        .unwrap()
        / 10000
}

/// Replicates from `from` to `to` through every core scenario, comparing
/// ordered checksums after each step.
fn cross(from: &Cluster, to: &Cluster) {
    let partitions = major(from) >= 11 && major(to) >= 11;
    let ddl = if partitions {
        format!("{DDL}{PART_DDL}")
    } else {
        DDL.to_string()
    };
    let (c, src, tgt) = fixtures::pair_on(from, to, "xv", &ddl);
    from.exec(
        &src,
        "INSERT INTO mixed SELECT g, g::bigint * 1000000007, g / 7.0, 'text ' || g || E' \\t\"q\"', 'vc' || g,
                decode(md5(g::text), 'hex'), timestamptz '2020-03-01 12:00:00+00' + g * interval '1 hour',
                date '2020-01-01' + g, g * interval '90 seconds', jsonb_build_object('g', g, 'a', jsonb_build_array(g, 'x')),
                md5(g::text)::uuid, ARRAY[g, g + 1, NULL], g % 2 = 0, g * 0.25, ('10.0.' || (g % 250) || '.1')::inet
           FROM generate_series(1, 2000) g;
         INSERT INTO comp SELECT g % 50, 'k' || g, 'v' FROM generate_series(1, 500) g;",
    );
    let mut tables = vec!["mixed", "comp"];
    if partitions {
        from.exec(
            &src,
            "INSERT INTO part SELECT g, date '2020-01-01' + g, 'p' FROM generate_series(1, 700) g",
        );
        tables.push("part");
    }
    fixtures::sync_tables(&c, &tables, "s", &["autokick=0", "onetimecopy=1"]);
    assert!(c.ok(&["validate", "s"]).contains("OK"));
    let _d = c.start();
    let same = |step: &str| {
        for t in &tables {
            assert_eq!(
                checksum(from, &src, t),
                checksum(to, &tgt, t),
                "{t} differs after {step} ({} -> {})\n{}",
                major(from),
                major(to),
                c.log()
            );
        }
    };
    c.ok(&["kick", "s", "120"]);
    same("the initial copy");

    from.exec(
        &src,
        "UPDATE mixed SET t = 'changed', j = j || '{\"c\": true}', arr = arr || 9 WHERE id % 10 = 0;
         UPDATE mixed SET id = id + 100000 WHERE id <= 25;
         DELETE FROM mixed WHERE id BETWEEN 500 AND 560;
         INSERT INTO mixed (id, t) VALUES (-1, NULL);
         UPDATE comp SET b = b || '!' WHERE a = 3;
         DELETE FROM comp WHERE a = 4;",
    );
    if partitions {
        from.exec(
            &src,
            "UPDATE part SET d = d + 365 WHERE id <= 30; DELETE FROM part WHERE id > 650",
        );
    }
    c.ok(&["kick", "s", "120"]);
    same("changes, a key change and deletes");

    from.exec(&src, "TRUNCATE comp; INSERT INTO comp VALUES (1, 'after', 'truncate')");
    if partitions {
        from.exec(
            &src,
            "TRUNCATE part_a; INSERT INTO part VALUES (1, '2020-05-05', 'back')",
        );
    }
    c.ok(&["kick", "s", "120"]);
    same("TRUNCATE");
}

#[test]
fn from_10_to_18() {
    cross(cluster::version(10), cluster::version(18));
}

#[test]
fn from_18_to_10() {
    cross(cluster::version(18), cluster::version(10));
}

#[test]
fn from_12_to_17() {
    cross(cluster::version(12), cluster::version(17));
}

#[test]
fn from_17_to_12() {
    cross(cluster::version(17), cluster::version(12));
}
