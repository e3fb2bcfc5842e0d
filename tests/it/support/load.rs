//! pgbench against the test clusters: the French reports replicate its
//! tables, and the convergence tests use it as the application writing on
//! every source at once. One place runs it, so every test runs it alike.

use std::process::Command;
use std::thread::JoinHandle;

use super::cluster::{bin_dir, Cluster};
use super::data::checksum;

/// The pgbench tables that have a key (pgbench_history has none).
pub const PGBENCH_TABLES: [&str; 3] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

/// `pgbench` with `args` against `db` on `cl`, connecting over its socket.
fn pgbench(cl: &Cluster, db: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_dir().join("pgbench"));
    cmd.args(args)
        .arg("-h")
        .arg(&cl.socket_dir)
        .args(["-p", &cl.port.to_string(), "-U", "postgres", db]);
    cmd
}

/// Runs `pgbench -i -s SCALE` against an existing database.
#[track_caller]
pub fn pgbench_init(c: &Cluster, db: &str, scale: u32) {
    let out = pgbench(c, db, &["-i", "-q", "-s", &scale.to_string()])
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `n` pgbench transactions (one client) and asserts they succeed.
#[track_caller]
pub fn pgbench_transactions(cl: &Cluster, db: &str, n: u32) {
    let out = pgbench(cl, db, &["-n", "-t", &n.to_string(), "-c", "1"])
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts pgbench (two clients) against one database for `secs` seconds at
/// `rate` transactions a second, in a thread; joins to whether it exited 0
/// and what it printed (stdout, then stderr).
pub fn pgbench_for(cl: &'static Cluster, db: String, secs: u32, rate: u32) -> JoinHandle<(bool, String)> {
    std::thread::spawn(move || {
        let out = pgbench(
            cl,
            &db,
            &["-n", "-c", "2", "-T", &secs.to_string(), "-R", &rate.to_string()],
        )
        .output()
        .expect("pgbench runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
}

/// Whether every keyed pgbench table is the same on all `nodes`.
pub fn pgbench_same_everywhere(nodes: &[(&Cluster, &str)]) -> bool {
    PGBENCH_TABLES.iter().all(|t| {
        let first = checksum(nodes[0].0, nodes[0].1, t);
        nodes[1..].iter().all(|(cl, d)| checksum(cl, d, t) == first)
    })
}
