//! capra's benchmark: starts its own clusters and prints figures (it is not
//! a test and asserts nothing; docs/performance.md records its output).
//! Run it through `scripts/bench.sh`, which builds in release mode.
//!
//! The machine is shared and noisy, so every throughput figure is a ratio
//! to a reference measured in the same run, alternating with it `reps=N`
//! times (default 5), printed as median, min and max. With pgbench data at
//! each scale given (default 10):
//! 1. initial copy (onetimecopy=1) time / `psql COPY TO | psql COPY FROM` time;
//! 2. delta apply rows/s of three 100k-change backlogs in a row, unpurged,
//!    / the pipe's rows/s;
//! 3. lag p50/p95 under steady pgbench load at 100 and 500 tps (in ms);
//! 4. source TPS (pgbench TPC-B saturated) with capture, and with capra
//!    replicating on the same machine / without capture;
//! 5. the daemon's peak memory (VmHWM);
//! 6. multi-master: how long after 30 s of pgbench on two sources at once
//!    both are identical again (`mm`);
//! 7. 1,000 tables x 20 databases x 50 syncs: start, idle CPU, memory,
//!    status, one-row change latency, reload (`thousand`).

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
        let global = [
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
        .collect();
        let env = Env::with_home(capra, global);
        env.run(&["install", "--batch"]);
        env
    }

    /// Another daemon's HOME (piddir and log of its own) on the same
    /// control database: a second host.
    fn sibling(&self) -> Env {
        Env::with_home(&self.capra, self.global.clone())
    }

    /// A fresh HOME whose ~/.caprarc puts the piddir and the log inside it.
    fn with_home(capra: &std::path::Path, global: Vec<String>) -> Env {
        let env = Env {
            capra: capra.to_path_buf(),
            home: tempfile::tempdir().unwrap(),
            global,
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
        env
    }

    /// Runs capra and returns what it did, whatever its exit status.
    fn output(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.capra)
            .env("HOME", self.home.path())
            .env("CAPRA_SYSCONF", "/nonexistent")
            .args(&self.global)
            .args(args)
            .output()
            .expect("capra runs")
    }

    /// Starts a daemon (detached) and returns its pid.
    fn start(&self) -> i32 {
        let out = self.run(&["start", "bench"]);
        out.split("pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out}"))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
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

/// A kB figure of /proc/PID/status (`VmHWM:`, `VmRSS:`).
fn status_kb(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
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
    let start: i64 = probe
        .query_one("SELECT coalesce(max(id), 0) FROM lag_probe", &[])
        .unwrap()
        .get(0);
    let prober = std::thread::spawn(move || {
        let mut i = start;
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
        let mut last = start;
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

/// "median M (min A, max B, n N)" of a set of figures.
fn spread(v: &[f64], digits: usize) -> String {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|x, y| x.partial_cmp(y).unwrap());
    if s.is_empty() {
        return "no figures".into();
    }
    format!(
        "median {:.digits$} (min {:.digits$}, max {:.digits$}, n {})",
        s[s.len() / 2],
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

fn add_db(env: &Env, name: &str, c: &Cluster, db: &str) {
    env.run(&[
        "add",
        "db",
        name,
        &format!("dbname={db}"),
        "host=127.0.0.1",
        &format!("port={}", c.port),
        "user=postgres",
    ]);
}

/// Figures 1 to 5 at one pgbench scale. Every figure is a ratio to a
/// reference measured in the same run, alternating with it, REPS times.
fn scale_run(capra: &std::path::Path, scale: u32, reps: usize, parts: &[String], results: &mut Vec<String>) {
    let part = |p: &str| parts.is_empty() || parts.iter().any(|x| x == p);
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
    let env = Env::installed(capra, &a, "ctl");
    add_db(&env, "src", &a, &src);
    add_db(&env, "tgt", &b, &tgt);
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
    ]);
    env.run(&["set", "bucardo_vac=0"]);
    env.run(&["start", "bench"]);

    // 1 and 2, alternating with the psql pipe: a full copy, then three
    // 100k-change backlogs in a row (nothing is ever purged, so later
    // repetitions run over a longer and longer history).
    let (mut copy_ratio, mut pipe_rate, mut batch) = (Vec::new(), Vec::new(), vec![Vec::new(); 3]);
    let mut next_lo = 1i64;
    for rep in (1..=reps).filter(|_| part("copy")) {
        let pipe = pipe_copy(&a, &src, &b, &tgt);
        pipe_rate.push(rows as f64 / pipe);
        env.run(&["update", "sync", "bench", "onetimecopy=1"]);
        env.run(&["kick", "bench", "0"]);
        let (copy_secs, copied, _) = last_run_secs(&a, "ctl");
        assert_eq!(copied as u64, rows, "the full copy copied every row");
        copy_ratio.push(copy_secs / pipe);
        let mut line = format!(
            "  rep {rep}: pipe {:.0} rows/s; capra copy {:.0} rows/s ({:.2}x the pipe's time)",
            rows as f64 / pipe,
            copied as f64 / copy_secs,
            copy_secs / pipe
        );
        for (i, v) in batch.iter_mut().enumerate() {
            let lo = next_lo;
            next_lo = (lo + 100_000 - 1) % (100_000 * scale as i64) + 1;
            a.exec(
                &src,
                &format!(
                    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {}",
                    lo + 99_999
                ),
            );
            env.run(&["kick", "bench", "0"]);
            let (secs, ins, _) = last_run_secs(&a, "ctl");
            assert_eq!(ins, 100_000, "a backlog applies every changed row");
            let r = 100_000.0 / secs;
            v.push(r / (rows as f64 / pipe));
            line.push_str(&format!("; backlog {} {r:.0} rows/s", i + 1));
        }
        println!("{line}");
    }
    for line in [
        format!(
            "scale {scale}: psql COPY pipe (reference): {} rows/s",
            spread(&pipe_rate, 0)
        ),
        format!(
            "scale {scale}: initial copy time / pipe time: {} (target <= 1.1)",
            spread(&copy_ratio, 2)
        ),
        format!(
            "scale {scale}: delta apply rows/s / pipe rows/s, backlog 1: {} (target >= 0.35)",
            spread(&batch[0], 2)
        ),
        format!("scale {scale}: ... backlog 2: {}", spread(&batch[1], 2)),
        format!(
            "scale {scale}: ... backlog 3: {} (target: as fast as backlog 1)",
            spread(&batch[2], 2)
        ),
    ]
    .into_iter()
    .filter(|_| part("copy"))
    {
        println!("{line}");
        results.push(line);
    }
    env.run(&["purge"]);

    // 3. lag under steady load, autokick on (absolute: the target is in ms).
    env.run(&["update", "sync", "bench", "autokick=1"]);
    std::thread::sleep(Duration::from_secs(1));
    for rate in [100, 500].into_iter().filter(|_| part("lag")) {
        let mut p95s = Vec::new();
        let mut p50s = Vec::new();
        for _ in 0..2 {
            let (p50, p95, got) = lag(&a, &src, &b, &tgt, rate, 20);
            println!("  lag at {rate} tps (pgbench got {got:.0}): p50 {p50:.1} ms, p95 {p95:.1} ms");
            p50s.push(p50);
            p95s.push(p95);
        }
        let line = format!(
            "scale {scale}: lag at {rate} tps: p50 {} ms; p95 {} ms (target p95 <= 50 at 500 tps)",
            spread(&p50s, 1),
            spread(&p95s, 1)
        );
        println!("{line}");
        results.push(line);
    }
    env.run(&["set", "bucardo_vac=1"]);
    let pid = daemon_pid(&a, "ctl");
    let line = format!(
        "scale {scale}: daemon peak memory (VmHWM) {} kB",
        status_kb(pid, "VmHWM:")
    );
    println!("{line}");
    results.push(line);
    env.run(&["stop"]);

    // 4. source TPS, saturated pgbench TPC-B (4 clients), alternating on one
    // database: without capture (the same triggers skipped with
    // session_replication_role=replica, the reference), with capture and
    // no daemon, and with the daemon replicating to a target on this same
    // 2-core machine.
    if scale == 10 && part("tps") {
        let tp = a.create_db("tpsdb");
        pgbench(&a, &tp, &["-i", "-q", "-s", "10"]);
        let tp_tgt = b.create_db("tps_tgt");
        schema_copy(&a, &tp, &b, &tp_tgt);
        add_db(&env, "tps", &a, &tp);
        add_db(&env, "tps_t", &b, &tp_tgt);
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
        env.run(&["update", "sync", "bench", "status=inactive"]);
        let bench = |replica: bool| -> f64 {
            a.exec(
                &tp,
                "VACUUM pgbench_accounts, pgbench_tellers, pgbench_branches, pgbench_history",
            );
            a.exec(&tp, "CHECKPOINT");
            let mut cmd = client(&a, "pgbench");
            if replica {
                cmd.env("PGOPTIONS", "-c session_replication_role=replica");
            }
            let out = cmd
                .args(["-n", "-c", "4", "-j", "2", "-T", "15"])
                .arg(&tp)
                .output()
                .expect("pgbench");
            assert!(
                out.status.success(),
                "pgbench: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tps(&String::from_utf8_lossy(&out.stdout))
        };
        let (mut trig, mut with) = (Vec::new(), Vec::new());
        for rep in 1..=reps {
            let base = bench(true);
            let t = bench(false);
            env.run(&["start", "bench"]);
            // The backlog of the run above first, untimed.
            env.run(&["kick", "tpss", "0"]);
            let base2 = bench(true);
            let w = bench(false);
            env.run(&["stop"]);
            println!(
                "  rep {rep}: no capture {base:.0} tps, capture {t:.0} tps ({:.2}); daemon running: no capture {base2:.0} tps, capture replicating {w:.0} tps ({:.2} of the first)",
                t / base,
                w / base,
            );
            trig.push(t / base);
            with.push(w / base);
        }
        for line in [
            format!(
                "scale {scale}: source TPS with capture / without: {} (target >= 0.92)",
                spread(&trig, 2)
            ),
            format!(
                "scale {scale}: source TPS while capra replicates on the same box / without capture: {} (target >= 0.75)",
                spread(&with, 2)
            ),
        ] {
            println!("{line}");
            results.push(line);
        }
    }
}

/// CPU seconds (user + system) in the text of a /proc stat file.
fn stat_cpu_secs(stat: &str) -> f64 {
    let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let u: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let s: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (u + s) / 100.0
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: i32) -> f64 {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU seconds used by every postgres process of a cluster (its server).
fn server_cpu_secs(c: &Cluster) -> f64 {
    let dir = c.query(
        "postgres",
        "SELECT setting FROM pg_settings WHERE name = 'data_directory'",
    )[0]
    .clone()
    .unwrap_or_default();
    let pm: i32 = std::fs::read_to_string(std::path::Path::new(&dir).join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    // The postmaster's own time and that of the backends it reaped (a
    // backend that exits between two readings must not lower the sum).
    let pm_stat = std::fs::read_to_string(format!("/proc/{pm}/stat")).unwrap_or_default();
    let f: Vec<&str> = pm_stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let reaped: f64 = [13, 14]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 100.0;
    let mut total = cpu_secs(pm) + reaped;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: i32 = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ppid == pm {
            total += cpu_secs(pid);
        }
    }
    total
}

/// Per thread of a process: its name and CPU seconds.
fn thread_cpu(pid: i32) -> std::collections::HashMap<i32, (String, f64)> {
    let mut out = std::collections::HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        out.insert(tid, (name, stat_cpu_secs(&stat)));
    }
    out
}

/// Figure 7: one daemon, 1,000 tables in 10 source databases (100 each),
/// 10 target databases, 50 syncs of 20 tables each, on this machine.
fn thousand(capra: &std::path::Path, results: &mut Vec<String>) {
    println!("\n== 1,000 tables x 20 databases x 50 syncs");
    let a = Cluster::start("benchTA", Opts::default());
    let b = Cluster::start("benchTB", Opts::default());
    let mut ddl = String::new();
    for t in 0..100 {
        ddl.push_str(&format!("CREATE TABLE t{t} (k int PRIMARY KEY, v text);\n"));
    }
    let env = Env::installed(capra, &a, "ctlk");
    let setup = Instant::now();
    let (mut srcs, mut tgts) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let s = a.create_db(&format!("ks{i}"));
        let t = b.create_db(&format!("kt{i}"));
        a.exec(&s, &ddl);
        b.exec(&t, &ddl);
        add_db(&env, &format!("s{i}"), &a, &s);
        add_db(&env, &format!("t{i}"), &b, &t);
        for j in 0..5 {
            let mut args: Vec<String> = vec!["add".into(), "table".into()];
            args.extend((0..20).map(|k| format!("public.t{}", j * 20 + k)));
            args.push(format!("db=s{i}"));
            args.push(format!("relgroup=g{i}_{j}"));
            env.run(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
            env.run(&[
                "add",
                "sync",
                &format!("y{i}_{j}"),
                &format!("relgroup=g{i}_{j}"),
                &format!("dbs=s{i}:source,t{i}:target"),
            ]);
        }
        srcs.push(s);
        tgts.push(t);
    }
    println!("  set up in {:.1}s", setup.elapsed().as_secs_f64());
    let t0 = Instant::now();
    env.run(&["start", "bench"]);
    let start_secs = t0.elapsed().as_secs_f64();
    // Every sync has run once (the start kicks them all; an empty run
    // leaves only its time in sync_state).
    while a.query(
        "ctlk",
        "SELECT count(DISTINCT sync) FROM (SELECT sync FROM capra.run WHERE state = 'good'
                                            UNION SELECT sync FROM capra.sync_state WHERE last_empty IS NOT NULL) x",
    )[0]
    .as_deref()
        != Some("50")
        && t0.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_ran = t0.elapsed().as_secs_f64();
    let pid = daemon_pid(&a, "ctlk");
    std::thread::sleep(Duration::from_secs(5));
    let rss0 = status_kb(pid, "VmRSS:");
    let (d0, sa0, sb0) = (cpu_secs(pid), server_cpu_secs(&a), server_cpu_secs(&b));
    let threads0 = thread_cpu(pid);
    let idle = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let span = idle.elapsed().as_secs_f64();
    let (d1, sa1, sb1) = (cpu_secs(pid), server_cpu_secs(&a), server_cpu_secs(&b));
    // Where the daemon's idle time goes, by thread name.
    let mut by_name: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for (tid, (name, secs)) in thread_cpu(pid) {
        let before = threads0.get(&tid).map(|t| t.1).unwrap_or(0.0);
        *by_name.entry(name).or_default() += secs - before;
    }
    let busiest: Vec<String> = by_name
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {:.2}%", v / span * 100.0))
        .collect();
    println!("  idle CPU by daemon thread: {}", busiest.join(", "));
    let rss1 = status_kb(pid, "VmRSS:");
    let mut status = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        env.run(&["status"]);
        status.push(t.elapsed().as_secs_f64());
    }
    // One-row changes, one at a time, in a table chosen in turn.
    let arrive = |n: i64| -> f64 {
        let (i, t) = ((n * 7) % 10, (n * 37) % 100);
        let (sdb, tdb) = (&srcs[i as usize], &tgts[i as usize]);
        let mut w = b.client(tdb);
        a.exec(sdb, &format!("INSERT INTO t{t} VALUES ({n}, 'x')"));
        let sent = Instant::now();
        let q = format!("SELECT 1 FROM t{t} WHERE k = {n}");
        while w.query_opt(q.as_str(), &[]).unwrap().is_none() {
            if sent.elapsed() > Duration::from_secs(60) {
                return f64::NAN;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent.elapsed().as_secs_f64() * 1000.0
    };
    let mut one = Vec::new();
    for n in 1..=30 {
        one.push(arrive(n));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut reload, mut after_reload) = (Vec::new(), Vec::new());
    for n in 0..3 {
        let t = Instant::now();
        env.run(&["reload"]);
        reload.push(t.elapsed().as_secs_f64());
        after_reload.push(arrive(1000 + n));
        std::thread::sleep(Duration::from_secs(2));
    }
    env.run(&["stop"]);
    for line in [
        format!("1000 tables: start {start_secs:.2}s (until ready), every sync ran once after {all_ran:.2}s (target < 10 s)"),
        format!(
            "1000 tables: idle for {span:.0}s: daemon {:.2}% of a core, source server {:.2}%, target server {:.2}% (target < 1% for the daemon)",
            (d1 - d0) / span * 100.0,
            (sa1 - sa0) / span * 100.0,
            (sb1 - sb0) / span * 100.0
        ),
        format!("1000 tables: daemon RSS {rss0} kB after start, {rss1} kB after the idle span"),
        format!("1000 tables: capra status: {} s (target < 1 s)", spread(&status, 3)),
        format!(
            "1000 tables: one-row change arrives after {} ms (target <= 50)",
            spread(&one, 1)
        ),
        format!("1000 tables: capra reload: {} s (target < 10 s)", spread(&reload, 2)),
        format!(
            "1000 tables: first change right after a reload arrives after {} ms (target <= 1000)",
            spread(&after_reload, 0)
        ),
    ] {
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
    add_db(&env, "m1", &a, &d1);
    add_db(&env, "m2", &b, &d2);
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

/// Figure 9: compare of a large table with scattered differences, as a
/// ratio to `count(*)` of the same table on both servers at once
/// (alternating, `reps` times); the bytes the servers sent for the
/// compare; and a repair of the differences through the daemon.
fn compare_bench(capra: &std::path::Path, rows: u64, reps: usize, results: &mut Vec<String>) {
    println!("\n== compare: {rows} rows, 1,000 scattered differences");
    let a = Cluster::start("benchCA", Opts::default());
    let b = Cluster::start("benchCB", Opts::default());
    let src = a.create_db("csrc");
    let tgt = b.create_db("ctgt");
    let ddl = "CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric, ts timestamptz)";
    a.exec(&src, ddl);
    b.exec(&tgt, ddl);
    a.exec(
        &src,
        &format!(
            "INSERT INTO big SELECT i, md5(i::text), i / 7.0, '2020-01-01'::timestamptz + i * interval '1 s'
               FROM generate_series(1, {rows}) i"
        ),
    );
    let mut out = client(&a, "psql");
    out.args(["-qX", "-d", &src, "-c", "COPY big TO STDOUT"]);
    let mut into = client(&b, "psql");
    into.args(["-qX", "-d", &tgt, "-c", "COPY big FROM STDIN"]);
    shell_pipe(out, into);
    a.exec(&src, "VACUUM ANALYZE big");
    b.exec(&tgt, "VACUUM ANALYZE big");
    let env = Env::installed(capra, &a, "ctlc");
    add_db(&env, "src", &a, &src);
    add_db(&env, "tgt", &b, &tgt);
    env.run(&["add", "table", "big", "db=src", "relgroup=g"]);
    env.run(&[
        "add",
        "sync",
        "s",
        "relgroup=g",
        "dbs=src:source,tgt:target",
        "autokick=0",
    ]);
    let step = (rows / 1000).max(1);
    b.exec(
        &tgt,
        &format!("UPDATE big SET v = 'x' WHERE id % {step} = 7 AND id <= {}", step * 1000),
    );
    let count = |c: &Cluster, db: &str| {
        let mut p = client(c, "psql");
        p.args(["-qXAt", "-d", db, "-c", "SELECT count(*) FROM big"]);
        p
    };
    let (mut ratios, mut secs, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t0 = Instant::now();
        let mut x = count(&a, &src).stdout(Stdio::null()).spawn().unwrap();
        let mut y = count(&b, &tgt).stdout(Stdio::null()).spawn().unwrap();
        assert!(x.wait().unwrap().success() && y.wait().unwrap().success());
        let reference = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let o = env.output(&["compare", "s", "--json"]);
        let took = t0.elapsed().as_secs_f64();
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let found = doc["tables"][0]["different"].as_array().map(|a| a.len()).unwrap_or(0);
        assert_eq!(found, 1000, "compare found {found} of 1,000 differences");
        bytes.push(doc["bytes_received"].as_f64().unwrap_or(f64::NAN) / 1e6);
        secs.push(took);
        ratios.push(took / reference);
    }
    let line = format!(
        "compare {rows} rows / count(*) on both servers: {} x; compare {} s; MB sent by the servers {}",
        spread(&ratios, 2),
        spread(&secs, 1),
        spread(&bytes, 2)
    );
    println!("{line}");
    results.push(line);
    env.run(&["start", "bench"]);
    let t0 = Instant::now();
    let o = env.output(&["compare", "s", "--repair"]);
    let repair = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&o.stderr));
    let line = format!(
        "compare --repair of 1,000 rows: {repair:.1} s in all ({:.2} x one compare): {}",
        repair / secs[secs.len() / 2].max(0.001),
        text.lines().find(|l| l.starts_with("repaired")).unwrap_or("?")
    );
    println!("{line}");
    results.push(line);
    env.run(&["stop", "bench"]);
}

/// The leader's pid by the lease, if one leads.
fn lease_holder(a: &Cluster, ctl: &str) -> Option<i32> {
    a.query(
        ctl,
        "SELECT pid::text FROM capra.lease WHERE holder IS NOT NULL AND lease_until > clock_timestamp()",
    )
    .into_iter()
    .next()
    .flatten()
    .and_then(|p| p.parse().ok())
}

fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

/// Seconds until `cond` holds (polled every 10 ms, at most `max`).
fn until(max: f64, mut cond: impl FnMut() -> bool) -> f64 {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed().as_secs_f64() < max, "waited {max}s in vain");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed().as_secs_f64()
}

fn summary(v: &mut [f64]) -> String {
    v.sort_by(|x, y| x.total_cmp(y));
    format!(
        "median {:.2} s, p95 {:.2} s, max {:.2} s over {}",
        pct(v, 0.5),
        pct(v, 0.95),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

/// One GET on the metrics port: (seconds, body bytes).
fn get(port: u16, path: &str) -> (f64, usize) {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port answers");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    (t.elapsed().as_secs_f64(), out.len())
}

/// The metrics' cost: the delta-apply rate of three 100k-change backlogs
/// with metrics off and on, alternating, as a ratio; on means refreshed
/// and scraped every 15 s (the defaults of capra and Prometheus), then
/// every second (the worst case); then a scrape's time with 50 syncs,
/// against a 404 from the same endpoint (the HTTP round trip alone).
fn metrics_bench(capra: &std::path::Path, reps: usize, results: &mut Vec<String>) {
    println!("\n== metrics: delta apply with metrics off and on; scrapes with 50 syncs");
    let a = Cluster::start("benchMA", Opts::default());
    let b = Cluster::start("benchMB", Opts::default());
    let (src, tgt) = (a.create_db("src"), b.create_db("tgt"));
    pgbench(&a, &src, &["-i", "-q", "-s", "10"]);
    let mut ddl = String::new();
    for i in 0..49 {
        ddl.push_str(&format!("CREATE TABLE small{i} (k int PRIMARY KEY, v text);\n"));
    }
    a.exec(&src, &ddl);
    schema_copy(&a, &src, &b, &tgt);
    let env = Env::installed(capra, &a, "ctlm");
    add_db(&env, "src", &a, &src);
    add_db(&env, "tgt", &b, &tgt);
    let bench_tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];
    let mut args = vec!["add", "table"];
    args.extend(bench_tables);
    args.extend(["db=src", "relgroup=bench"]);
    env.run(&args);
    env.run(&[
        "add",
        "sync",
        "bench",
        "relgroup=bench",
        "dbs=src:source,tgt:target",
        "autokick=0",
    ]);
    env.run(&["set", "bucardo_vac=0"]);
    let port = cluster::free_port();
    let listen = format!("metrics_listen=127.0.0.1:{port}");
    env.run(&["start", "bench"]);
    env.run(&["update", "sync", "bench", "onetimecopy=1"]);
    env.run(&["kick", "bench", "0"]);
    env.run(&["stop"]);
    let mut lo = 1i64;
    for every in [15u64, 1] {
        env.run(&["set", &format!("metrics_refresh={every}")]);
        let mut ratios = Vec::new();
        for rep in 1..=reps {
            let mut rate = [0.0f64; 2];
            // Alternate which goes first, so a drift of the machine favours neither.
            let order = if rep % 2 == 1 { [false, true] } else { [true, false] };
            for on in order {
                env.run(&["set", if on { listen.as_str() } else { "metrics_listen=" }]);
                env.run(&["start", "bench"]);
                let stop = Arc::new(AtomicBool::new(false));
                let scraper = on.then(|| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            get(port, "/metrics");
                            let t = Instant::now();
                            while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(every) {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    })
                });
                let (mut rows, mut secs) = (0.0, 0.0);
                for _ in 0..3 {
                    a.exec(
                        &src,
                        &format!(
                            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {}",
                            lo + 99_999
                        ),
                    );
                    lo = lo % 900_000 + 100_000;
                    env.run(&["kick", "bench", "0"]);
                    let (s, ins, _) = last_run_secs(&a, "ctlm");
                    assert_eq!(ins, 100_000, "a backlog applies every changed row");
                    rows += 100_000.0;
                    secs += s;
                }
                rate[usize::from(on)] = rows / secs;
                stop.store(true, Ordering::SeqCst);
                if let Some(t) = scraper {
                    t.join().unwrap();
                }
                env.run(&["stop"]);
            }
            println!(
                "  refresh {every} s, rep {rep}: off {:.0} rows/s, on {:.0} rows/s ({:.3}x)",
                rate[0],
                rate[1],
                rate[1] / rate[0]
            );
            ratios.push(rate[1] / rate[0]);
        }
        let line = format!(
            "metrics: delta apply rows/s with metrics on / off, refreshed and scraped every {every} s: {} (goal >= 0.99)",
            spread(&ratios, 3)
        );
        println!("{line}");
        results.push(line);
    }

    // The refresher's own cost, in CPU (steadier than throughput here):
    // the daemon and both servers, idle with a 100k-change backlog waiting,
    // with metrics on (counted every second) and off, alternating.
    a.exec(
        &src,
        &format!(
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {}",
            lo + 99_999
        ),
    );
    env.run(&["set", "metrics_refresh=1"]);
    let mut cost = Vec::new();
    for rep in 0..3 {
        let mut per_sec = [0.0f64; 2];
        for on in if rep % 2 == 0 { [false, true] } else { [true, false] } {
            env.run(&["set", if on { listen.as_str() } else { "metrics_listen=" }]);
            env.run(&["start", "bench"]);
            std::thread::sleep(Duration::from_secs(3));
            let pid = daemon_pid(&a, "ctlm");
            let cpu = || cpu_secs(pid) + server_cpu_secs(&a) + server_cpu_secs(&b);
            let (c0, t0) = (cpu(), Instant::now());
            std::thread::sleep(Duration::from_secs(15));
            per_sec[usize::from(on)] = (cpu() - c0) / t0.elapsed().as_secs_f64();
            env.run(&["stop"]);
        }
        println!(
            "  idle with 100k changes waiting: off {:.1} ms CPU/s, on {:.1} ms CPU/s",
            per_sec[0] * 1000.0,
            per_sec[1] * 1000.0
        );
        cost.push((per_sec[1] - per_sec[0]) * 1000.0);
    }
    env.run(&["start", "bench"]);
    env.run(&["kick", "bench", "0"]);
    env.run(&["stop"]);
    let line = format!(
        "metrics: one refresh with 100k changes waiting costs {} ms of CPU (daemon and servers; on minus off, per second at metrics_refresh=1)",
        spread(&cost, 1)
    );
    println!("{line}");
    results.push(line);

    // 50 syncs: the bench sync and one per small table.
    for i in 0..49 {
        env.run(&[
            "add",
            "table",
            &format!("public.small{i}"),
            "db=src",
            &format!("relgroup=s{i}"),
        ]);
        env.run(&[
            "add",
            "sync",
            &format!("s{i}"),
            &format!("relgroup=s{i}"),
            "dbs=src:source,tgt:target",
        ]);
        a.exec(&src, &format!("INSERT INTO small{i} VALUES (1, 'x')"));
    }
    env.run(&["set", &listen, "metrics_refresh=1"]);
    env.run(&["start", "bench"]);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let body = {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        if body.matches("capra_sync_pending_changes{").count() >= 50 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut scrape, mut reference, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..200 {
        let (t, n) = get(port, "/metrics");
        scrape.push(t * 1000.0);
        bytes = n;
        reference.push(get(port, "/nothing").0 * 1000.0);
    }
    env.run(&["stop"]);
    let (mut s2, mut r2) = (scrape.clone(), reference.clone());
    s2.sort_by(|x, y| x.total_cmp(y));
    r2.sort_by(|x, y| x.total_cmp(y));
    let line = format!(
        "metrics: scrape with 50 syncs ({bytes} bytes): p50 {:.2} ms, p99 {:.2} ms; a 404 from the same endpoint: p50 {:.2} ms, p99 {:.2} ms (goal: scrape p99 < 100 ms)",
        pct(&s2, 0.5),
        pct(&s2, 0.99),
        pct(&r2, 0.5),
        pct(&r2, 0.99)
    );
    println!("{line}");
    results.push(line);
}

/// Two daemons on one control database under pgbench load: the leader is
/// killed with -9 `kills` times (and frozen with SIGSTOP three times, a
/// silent failure); each time, how long until a standby holds the lease and
/// until its first good run, then the killed one comes back as a standby.
/// Ends with a compare of every table.
fn ha_bench(capra: &std::path::Path, kills: usize, results: &mut Vec<String>) {
    println!("\n== ha: {kills} kills -9 and 3 SIGSTOPs of the leader under pgbench load (ha_lease 10 s)");
    let a = Cluster::start("benchHA", Opts::default());
    let b = Cluster::start("benchHB", Opts::default());
    let src = a.create_db("hsrc");
    pgbench(&a, &src, &["-i", "-q", "-s", "1"]);
    let tgt = b.create_db("htgt");
    schema_copy(&a, &src, &b, &tgt);
    let first = Env::installed(capra, &a, "ctlha");
    add_db(&first, "src", &a, &src);
    add_db(&first, "tgt", &b, &tgt);
    first.run(&[
        "add",
        "all",
        "tables",
        "db=src",
        "relgroup=bench",
        "-T",
        "pgbench_history",
    ]);
    first.run(&[
        "add",
        "sync",
        "bench",
        "relgroup=bench",
        "dbs=src:source,tgt:target",
        "onetimecopy=1",
    ]);
    let homes = [first.sibling(), first.sibling()];
    let mut pids = [homes[0].start(), homes[1].start()];
    homes[0].run(&["kick", "bench", "300"]);
    let mut load = client(&a, "pgbench");
    load.args(["-n", "-c", "2", "-R", "100", "-T", "100000", &src])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut load = load.spawn().unwrap();
    let good_runs = |pid: i32| -> i64 {
        a.query(
            "ctlha",
            &format!("SELECT count(*)::text FROM capra.run WHERE state = 'good' AND pid = {pid}"),
        )[0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
    };
    let (mut lease_t, mut run_t, mut silent_t) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..kills + 3 {
        std::thread::sleep(Duration::from_secs(2));
        until(30.0, || lease_holder(&a, "ctlha").is_some());
        let old = lease_holder(&a, "ctlha").unwrap();
        let k = pids.iter().position(|p| *p == old).expect("the leader is one of ours");
        let silent = round >= kills;
        let t0 = Instant::now();
        // SAFETY: plain kill(2).
        unsafe { libc::kill(old, if silent { libc::SIGSTOP } else { libc::SIGKILL }) };
        until(120.0, || lease_holder(&a, "ctlha").is_some_and(|p| p != old));
        let took = t0.elapsed().as_secs_f64();
        let new = lease_holder(&a, "ctlha").unwrap();
        until(120.0, || good_runs(new) > 0);
        if silent {
            silent_t.push(took);
            // SAFETY: plain kill(2).
            unsafe { libc::kill(old, libc::SIGCONT) };
            std::thread::sleep(Duration::from_secs(3));
        } else {
            lease_t.push(took);
            run_t.push(t0.elapsed().as_secs_f64());
            until(10.0, || !process_alive(old));
            pids[k] = homes[k].start();
        }
    }
    let _ = load.kill();
    let _ = load.wait();
    homes[0].run(&["kick", "bench", "300"]);
    let o = homes[0].output(&["compare", "bench"]);
    let compared = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .unwrap_or("?")
        .to_string();
    for line in [
        format!("ha: lease taken after kill -9 of the leader: {}", summary(&mut lease_t)),
        format!(
            "ha: first good run of the new leader after kill -9: {}",
            summary(&mut run_t)
        ),
        format!(
            "ha: lease taken after SIGSTOP of the leader (ha_lease 10 s): {}",
            summary(&mut silent_t)
        ),
        format!(
            "ha: compare after {} takeovers under load: {compared} (exit {:?})",
            kills + 3,
            o.status.code()
        ),
    ] {
        println!("{line}");
        results.push(line);
    }
    first.run(&["stop", "bench"]);
}

fn main() {
    let capra = std::env::args().nth(1).map(std::path::PathBuf::from).expect(
        "usage: bench CAPRA_BINARY [SCALE...] [copy] [lag] [tps] [mm] [thousand] [compare] [ha] [metrics] [rows=N] [reps=N]",
    );
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut scales: Vec<u32> = args.iter().filter_map(|s| s.parse().ok()).collect();
    let reps: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("reps=").and_then(|v| v.parse().ok()))
        .unwrap_or(5);
    let mm = args.iter().any(|a| a == "mm");
    let thousand_part = args.iter().any(|a| a == "thousand");
    let compare_part = args.iter().any(|a| a == "compare");
    let ha_part = args.iter().any(|a| a == "ha");
    let metrics_part = args.iter().any(|a| a == "metrics");
    let rows: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("rows=").and_then(|v| v.parse().ok()))
        .unwrap_or(5_000_000);
    let parts: Vec<String> = args
        .iter()
        .filter(|a| ["copy", "lag", "tps"].contains(&a.as_str()))
        .cloned()
        .collect();
    let all =
        scales.is_empty() && !mm && !thousand_part && !compare_part && !ha_part && !metrics_part && parts.is_empty();
    if all || (scales.is_empty() && !parts.is_empty()) {
        scales = vec![10];
    }
    let mut results = Vec::new();
    for s in scales {
        scale_run(&capra, s, reps, &parts, &mut results);
    }
    if all || thousand_part {
        thousand(&capra, &mut results);
    }
    if all || mm {
        mm_convergence(&capra, 3, &mut results);
    }
    if all || compare_part {
        compare_bench(&capra, rows, reps, &mut results);
    }
    if all || ha_part {
        ha_bench(&capra, 20, &mut results);
    }
    if all || metrics_part {
        metrics_bench(&capra, reps, &mut results);
    }
    println!("\n== summary");
    for r in results {
        println!("{r}");
    }
}
