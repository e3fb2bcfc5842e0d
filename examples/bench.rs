//! capra's benchmark: starts its own clusters and prints figures (it is not
//! a test and asserts nothing; docs/performance.md records its output).
//! Run it through `scripts/bench.sh`, which builds in release mode.
//!
//! Measures, with pgbench data at each scale given:
//! 1. initial copy (onetimecopy=1) rows/s beside `psql COPY TO | psql COPY FROM`;
//! 2. delta apply rows/s for three 100k-row backlogs in a row, unpurged;
//! 3. lag p50/p95 under steady pgbench load at 100 and 500 tps;
//! 4. source TPS with capture triggers beside without;
//! 5. the daemon's peak memory (VmHWM);
//! 6. multi-master: how long after 30 s of pgbench on two sources at once
//!    both are identical again (several repetitions, every one printed).

#[path = "../tests/it/support/cluster.rs"]
#[allow(dead_code)]
mod cluster;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{bin_dir, Cluster, Opts};

struct Env {
    capra: std::path::PathBuf,
    home: tempfile::TempDir,
    global: Vec<String>,
}

impl Env {
    /// A private HOME (piddir and log inside it) and a control database
    /// `ctl` installed on cluster `c`.
    fn installed(capra: &std::path::Path, c: &Cluster, ctl: &str) -> Env {
        let env = Env {
            capra: capra.to_path_buf(),
            home: tempfile::tempdir().unwrap(),
            global: [
                "-h",
                "127.0.0.1",
                "-p",
                &c.port.to_string(),
                "-U",
                "postgres",
                "-d",
                ctl,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        let run = env.home.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(
            env.home.path().join(".caprarc"),
            format!(
                "piddir = {}\nlogdest = {}\n",
                run.display(),
                env.home.path().join("capra.log").display()
            ),
        )
        .unwrap();
        env.run(&["install", "--batch"]);
        env
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.capra)
            .env("HOME", self.home.path())
            .env("CAPRA_SYSCONF", "/nonexistent")
            .args(&self.global)
            .args(args)
            .output()
            .expect("capra runs");
        assert!(
            out.status.success(),
            "capra {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A PostgreSQL client program aimed at a cluster as the superuser.
fn client(c: &Cluster, program: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(program));
    cmd.arg("-h")
        .arg(&c.socket_dir)
        .args(["-p", &c.port.to_string(), "-U", "postgres"]);
    cmd
}

/// Runs `from | into` and checks both succeeded.
fn shell_pipe(mut from: Command, mut into: Command) {
    let mut left = from.stdout(Stdio::piped()).spawn().unwrap();
    let st = into
        .stdin(left.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(left.wait().unwrap().success());
}

fn pgbench(c: &Cluster, db: &str, args: &[&str]) -> String {
    let out = client(c, "pgbench").args(args).arg(db).output().expect("pgbench");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tps(out: &str) -> f64 {
    out.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `pg_dump --schema-only -N capra | psql` (errors from capra's triggers
/// in the dump are expected on a new target and ignored).
fn schema_copy(a: &Cluster, src: &str, b: &Cluster, tgt: &str) {
    let mut dump = client(a, "pg_dump");
    dump.args(["--schema-only", "-N", "capra", src]);
    let mut psql = client(b, "psql");
    psql.args(["-qX", "-d", tgt]).stderr(Stdio::null());
    shell_pipe(dump, psql);
}

/// Seconds for `psql COPY TO STDOUT | psql COPY FROM STDIN` of the pgbench tables.
fn pipe_copy(a: &Cluster, src: &str, b: &Cluster, tgt: &str) -> f64 {
    b.exec(tgt, "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers");
    let t0 = Instant::now();
    for t in ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"] {
        let mut out = client(a, "psql");
        out.args(["-qX", "-d", src, "-c", &format!("COPY {t} TO STDOUT")]);
        let mut into = client(b, "psql");
        into.args(["-qX", "-d", tgt, "-c", &format!("COPY {t} FROM STDIN")]);
        shell_pipe(out, into);
    }
    t0.elapsed().as_secs_f64()
}

fn last_run_secs(a: &Cluster, ctl: &str) -> (f64, i64, i64) {
    let r = a.query(
        ctl,
        "SELECT extract(epoch FROM ended - started) || ' ' || inserts || ' ' || deletes FROM capra.run WHERE state = 'good' ORDER BY id DESC LIMIT 1",
    );
    let s = r[0].clone().unwrap();
    let v: Vec<&str> = s.split(' ').collect();
    (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap())
}

fn daemon_pid(a: &Cluster, ctl: &str) -> i32 {
    a.query(ctl, "SELECT pid::text FROM capra.daemon")[0]
        .clone()
        .unwrap()
        .parse()
        .unwrap()
}

fn vm_hwm_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Lag under steady pgbench load at `rate` tps for `secs`: a probe row is
/// inserted every 50 ms on the source; a watcher polls the target every
/// 2 ms and notes when each probe arrives.
fn lag(a: &Cluster, src: &str, b: &Cluster, tgt: &str, rate: u32, secs: u32) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let seen: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let (s2, st2) = (sent.clone(), stop.clone());
    let mut probe = a.client(src);
    let prober = std::thread::spawn(move || {
        let mut i = rate as i64 * 1_000_000;
        while !st2.load(Ordering::SeqCst) {
            i += 1;
            probe.execute("INSERT INTO lag_probe (id) VALUES ($1)", &[&i]).unwrap();
            s2.lock().unwrap().push((i, Instant::now()));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (seen2, st3) = (seen.clone(), stop.clone());
    let mut watch = b.client(tgt);
    let watcher = std::thread::spawn(move || {
        let mut last = rate as i64 * 1_000_000;
        while !st3.load(Ordering::SeqCst) {
            let m: Option<i64> = watch.query_one("SELECT max(id) FROM lag_probe", &[]).unwrap().get(0);
            let now = Instant::now();
            if let Some(m) = m {
                if m > last {
                    let mut v = seen2.lock().unwrap();
                    for id in last + 1..=m {
                        v.push((id, now));
                    }
                    last = m;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let out = pgbench(
        a,
        src,
        &[
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-R",
            &rate.to_string(),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    prober.join().unwrap();
    watcher.join().unwrap();
    let sent = sent.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut lags: Vec<f64> = sent
        .iter()
        .filter_map(|(id, t)| {
            seen.iter()
                .find(|(s, _)| s == id)
                .map(|(_, at)| at.saturating_duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    lags.sort_by(|x, y| x.partial_cmp(y).unwrap());
    (pct(&lags, 0.5), pct(&lags, 0.95), tps(&out))
}

fn scale_run(capra: &std::path::Path, scale: u32, results: &mut Vec<String>) {
    println!("\n== pgbench scale {scale}");
    let a = Cluster::start("benchA", Opts::default());
    let b = Cluster::start("benchB", Opts::default());
    let src = a.create_db("src");
    let tgt = b.create_db("tgt");
    let t0 = Instant::now();
    pgbench(&a, &src, &["-i", "-q", "-s", &scale.to_string()]);
    println!("pgbench -i -s {scale}: {:.1}s", t0.elapsed().as_secs_f64());
    a.exec(
        &src,
        "CREATE TABLE lag_probe (id bigint PRIMARY KEY, t timestamptz DEFAULT clock_timestamp())",
    );
    a.exec(&src, "VACUUM ANALYZE");
    schema_copy(&a, &src, &b, &tgt);
    let rows = 100_000u64 * scale as u64 + 10 * scale as u64 + scale as u64;

    // 1. the plain pipe, for comparison (run twice, best of two).
    let pipe = pipe_copy(&a, &src, &b, &tgt).min(pipe_copy(&a, &src, &b, &tgt));
    b.exec(&tgt, "TRUNCATE pgbench_accounts, pgbench_branches, pgbench_tellers");
    b.exec(&tgt, "VACUUM");
    let env = Env::installed(capra, &a, "ctl");
    env.run(&[
        "add",
        "db",
        "src",
        &format!("dbname={src}"),
        "host=127.0.0.1",
        &format!("port={}", a.port),
        "user=postgres",
    ]);
    env.run(&[
        "add",
        "db",
        "tgt",
        &format!("dbname={tgt}"),
        "host=127.0.0.1",
        &format!("port={}", b.port),
        "user=postgres",
    ]);
    env.run(&[
        "add",
        "all",
        "tables",
        "db=src",
        "relgroup=bench",
        "-T",
        "pgbench_history",
    ]);
    env.run(&[
        "add",
        "sync",
        "bench",
        "relgroup=bench",
        "dbs=src:source,tgt:target",
        "autokick=0",
        "onetimecopy=1",
    ]);
    env.run(&["set", "bucardo_vac=0"]);
    env.run(&["start", "bench"]);
    env.run(&["kick", "bench", "0"]);
    let (copy_secs, copied, _) = last_run_secs(&a, "ctl");
    let line = format!(
        "scale {scale}: initial copy {copied} rows in {copy_secs:.2}s = {:.0} rows/s; psql pipe {rows} rows in {pipe:.2}s = {:.0} rows/s; ratio {:.2}x",
        copied as f64 / copy_secs,
        rows as f64 / pipe,
        copy_secs / pipe
    );
    println!("{line}");
    results.push(line);

    // 2. three 100k-row backlogs in a row, nothing purged in between.
    let mut rates = Vec::new();
    for i in 1..=3 {
        let lo = (i - 1) * 100_000 % (100_000 * scale as i64) + 1;
        a.exec(
            &src,
            &format!(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {}",
                lo + 99_999
            ),
        );
        env.run(&["kick", "bench", "0"]);
        let (secs, ins, del) = last_run_secs(&a, "ctl");
        let r = 100_000.0 / secs;
        rates.push(r);
        println!(
            "  backlog {i}: 100000 changed rows applied in {secs:.2}s = {r:.0} rows/s (deleted {del}, inserted {ins})"
        );
    }
    let line = format!(
        "scale {scale}: delta apply of three 100k-row backlogs: {:.0} / {:.0} / {:.0} rows/s",
        rates[0], rates[1], rates[2]
    );
    println!("{line}");
    results.push(line);
    env.run(&["purge"]);

    // 3. lag under steady load, autokick on.
    env.run(&["update", "sync", "bench", "autokick=1"]);
    std::thread::sleep(Duration::from_secs(1));
    for rate in [100, 500] {
        let (p50, p95, got) = lag(&a, &src, &b, &tgt, rate, 20);
        let line =
            format!("scale {scale}: lag at {rate} tps (pgbench got {got:.0} tps): p50 {p50:.1} ms, p95 {p95:.1} ms");
        println!("{line}");
        results.push(line);
    }
    env.run(&["set", "bucardo_vac=1"]);
    let pid = daemon_pid(&a, "ctl");
    let line = format!("scale {scale}: daemon peak memory (VmHWM) {} kB", vm_hwm_kb(pid));
    println!("{line}");
    results.push(line);
    env.run(&["stop"]);

    // 4. source TPS on one fresh database: without capture, with capture
    // (daemon stopped: the triggers' own cost), and with the daemon applying
    // (on this machine the target cluster and the daemon share its cores).
    if scale == 10 {
        let tp = a.create_db("tpsdb");
        pgbench(&a, &tp, &["-i", "-q", "-s", "10"]);
        let tp_tgt = b.create_db("tps_tgt");
        schema_copy(&a, &tp, &b, &tp_tgt);
        let measure = |label: &str| {
            a.exec(&tp, "VACUUM ANALYZE");
            let mut best = 0f64;
            for _ in 0..2 {
                best = best.max(tps(&pgbench(&a, &tp, &["-n", "-c", "4", "-j", "2", "-T", "15"])));
            }
            // And at a fixed rate well below saturation: what an application sees.
            let out = pgbench(&a, &tp, &["-n", "-c", "4", "-j", "2", "-T", "15", "-R", "1000"]);
            let lat = out
                .lines()
                .find(|l| l.starts_with("latency average"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            println!(
                "  {label}: {best:.0} tps saturated; at 1000 tps {:.0} tps with {lat:.2} ms average latency",
                tps(&out)
            );
            (best, lat)
        };
        let (base, base_lat) = measure("no capture");
        env.run(&[
            "add",
            "db",
            "tps",
            &format!("dbname={tp}"),
            "host=127.0.0.1",
            &format!("port={}", a.port),
            "user=postgres",
        ]);
        env.run(&[
            "add",
            "db",
            "tps_t",
            &format!("dbname={tp_tgt}"),
            "host=127.0.0.1",
            &format!("port={}", b.port),
            "user=postgres",
        ]);
        env.run(&[
            "add",
            "all",
            "tables",
            "db=tps",
            "relgroup=tpsg",
            "-T",
            "pgbench_history",
        ]);
        env.run(&[
            "add",
            "sync",
            "tpss",
            "relgroup=tpsg",
            "dbs=tps:source,tps_t:target",
            "onetimecopy=1",
        ]);
        let (trig, trig_lat) = measure("capture triggers, daemon stopped");
        env.run(&["start", "bench"]);
        env.run(&["kick", "tpss", "0"]);
        let (with, with_lat) = measure("capture triggers, daemon applying to a target on the same 2 cores");
        env.run(&["stop"]);
        let line = format!(
            "scale {scale}: source TPS (pgbench TPC-B, 4 clients, saturated): no capture {base:.0}; capture triggers {trig:.0} ({:.0}%); capture + daemon applying on the same machine {with:.0} ({:.0}%); latency at 1000 tps: {base_lat:.2} / {trig_lat:.2} / {with_lat:.2} ms",
            trig / base * 100.0,
            with / base * 100.0
        );
        println!("{line}");
        results.push(line);
    }
}

/// Figure 6: two sources of one multi-master sync under pgbench at once
/// for 30 s (unthrottled, 2 clients each); then a marker row is written on
/// each and the clock runs until both markers are on both sides (every
/// earlier change is applied by then: a run applies everything its
/// snapshot sees). The tables are then compared whole, untimed.
fn mm_convergence(capra: &std::path::Path, reps: u32, results: &mut Vec<String>) {
    println!("\n== multi-master convergence (pgbench scale 10 on two sources)");
    let a = Cluster::start("benchMA", Opts::default());
    let b = Cluster::start("benchMB", Opts::default());
    let (d1, d2) = (a.create_db("mm1"), b.create_db("mm2"));
    for (c, d) in [(&a, &d1), (&b, &d2)] {
        pgbench(c, d, &["-i", "-q", "-s", "10"]);
        c.exec(d, "CREATE TABLE mm_probe (site text, n int, PRIMARY KEY (site, n))");
        c.exec(d, "VACUUM ANALYZE");
    }
    let env = Env::installed(capra, &a, "ctlmm");
    for (n, c, d) in [("m1", &a, &d1), ("m2", &b, &d2)] {
        env.run(&[
            "add",
            "db",
            n,
            &format!("dbname={d}"),
            "host=127.0.0.1",
            &format!("port={}", c.port),
            "user=postgres",
        ]);
    }
    env.run(&["add", "all", "tables", "db=m1", "relgroup=mm", "-T", "pgbench_history"]);
    env.run(&["add", "sync", "mm", "relgroup=mm", "dbs=m1:source,m2:source"]);
    env.run(&["start", "bench"]);
    let sum = |c: &Cluster, d: &str| {
        c.query(
            d,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || '/' || (SELECT sum(bbalance) FROM pgbench_branches) || '/' || (SELECT sum(tbalance) FROM pgbench_tellers) || '/' || (SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts WHERE abalance <> 0)",
        )[0]
        .clone()
        .unwrap_or_default()
    };
    let mut times = Vec::new();
    for rep in 1..=reps {
        let l1 = {
            let (c, d) = (a.socket_dir.clone(), d1.clone());
            let port = a.port;
            std::thread::spawn(move || {
                Command::new(bin_dir().join("pgbench"))
                    .arg("-h")
                    .arg(&c)
                    .args([
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-n",
                        "-c",
                        "2",
                        "-T",
                        "30",
                        &d,
                    ])
                    .output()
                    .unwrap()
            })
        };
        let out2 = pgbench(&b, &d2, &["-n", "-c", "2", "-T", "30"]);
        let out1 = String::from_utf8_lossy(&l1.join().unwrap().stdout).to_string();
        let stopped = Instant::now();
        a.exec(&d1, &format!("INSERT INTO mm_probe VALUES ('m1', {rep})"));
        b.exec(&d2, &format!("INSERT INTO mm_probe VALUES ('m2', {rep})"));
        let probe = format!("SELECT count(*) FROM mm_probe WHERE n = {rep}");
        let mut secs = f64::NAN;
        while stopped.elapsed() < Duration::from_secs(120) {
            if a.query(&d1, &probe)[0].as_deref() == Some("2") && b.query(&d2, &probe)[0].as_deref() == Some("2") {
                secs = stopped.elapsed().as_secs_f64();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Untimed: the whole tables, once nothing is in flight.
        std::thread::sleep(Duration::from_millis(500));
        let same = sum(&a, &d1) == sum(&b, &d2);
        println!(
            "  repetition {rep}: pgbench {:.0} + {:.0} tps for 30 s; both sources identical {secs:.3}s after the load stopped{}",
            tps(&out1),
            tps(&out2),
            if same { "" } else { " (BUT the tables differ)" }
        );
        times.push(secs);
    }
    env.run(&["stop"]);
    let conflicts = a.query("ctlmm", "SELECT count(*) FROM capra.conflict")[0]
        .clone()
        .unwrap_or_default();
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let line = format!(
        "multi-master convergence after 30 s of pgbench on two sources: {} s (min {:.3}, median {:.3}, max {:.3}; {conflicts} conflicts settled)",
        times.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(" / "),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    println!("{line}");
    results.push(line);
}

fn main() {
    let capra = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .expect("usage: bench CAPRA_BINARY [SCALE...]");
    let args: Vec<String> = std::env::args().skip(2).collect();
    let scales: Vec<u32> = args.iter().filter_map(|s| s.parse().ok()).collect();
    let only_mm = args.iter().any(|a| a == "mm");
    let scales = if scales.is_empty() && !only_mm {
        vec![10, 100]
    } else {
        scales
    };
    let mut results = Vec::new();
    for s in scales {
        scale_run(&capra, s, &mut results);
    }
    mm_convergence(&capra, 3, &mut results);
    println!("\n== summary");
    for r in results {
        println!("{r}");
    }
}
