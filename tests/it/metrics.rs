//! The Prometheus endpoint against real daemons: the contract's names and
//! labels, counters that match the run history, gauges that match
//! `status`, a standby's answer, answers while every database is down, and
//! promtool on a live scrape, the shipped rules and the dashboard.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::{self, free_port, unique, Cluster, Opts};
use crate::support::{fixtures, Capra};

/// Every name of the contract (interface.md, "Metrics") with its labels.
const CONTRACT: &[(&str, &[&str])] = &[
    ("capra_build_info", &["version"]),
    ("capra_daemon_leader", &[]),
    ("capra_sync_runs_total", &["result", "sync"]),
    ("capra_sync_rows_total", &["op", "sync"]),
    ("capra_sync_conflicts_total", &["sync"]),
    ("capra_sync_pending_changes", &["db", "sync"]),
    ("capra_sync_lag_seconds", &["db", "sync"]),
    ("capra_sync_last_success_timestamp_seconds", &["sync"]),
    ("capra_sync_run_duration_seconds_bucket", &["le", "sync"]),
    ("capra_sync_run_duration_seconds_sum", &["sync"]),
    ("capra_sync_run_duration_seconds_count", &["sync"]),
    ("capra_database_up", &["db"]),
    ("capra_capture_log_rows", &["db"]),
];

/// One scrape: the response head, the body, and how long it took.
struct Scrape {
    head: String,
    body: String,
    took: Duration,
}

fn scrape(port: u16) -> Scrape {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port answers");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: capra\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let took = t.elapsed();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    Scrape {
        head: head.to_string(),
        body: body.to_string(),
        took,
    }
}

/// The samples of a scrape: (name, labels) to value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses the text format's sample lines (label values may hold escaped
/// quotes, backslashes and newlines).
fn samples(body: &str) -> Samples {
    let mut out = Samples::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut chars = labels.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut val = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => val.push('\n'),
                        Some(o) => val.push(o),
                        None => break,
                    },
                    '"' => break,
                    o => val.push(o),
                }
            }
            if chars.peek() == Some(&',') {
                chars.next();
            }
            map.insert(key, val);
        }
        let v = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number in {line}")),
        };
        out.insert((name.to_string(), map), v);
    }
    out
}

/// The value of one series, if the scrape has it.
fn value(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    s.get(&(name.to_string(), want)).copied()
}

/// A number the catalog holds.
fn catalog_f64(a: &Cluster, db: &str, sql: &str) -> f64 {
    a.query(db, sql)[0].as_deref().unwrap_or("0").parse().unwrap()
}

/// The sockets the process listens on (TCP, from /proc).
fn listening(pid: i32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.display().to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)
        })
        .collect();
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                out.push(cols[1].to_string());
            }
        }
    }
    out
}

/// The repository's promtool (fetched by scripts/promtool.sh).
fn promtool() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/promtool.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// promtool accepts a live scrape, the shipped rules (and their unit
/// tests), and the dashboard's queries, whose every name the scrape has.
fn promtool_checks(body: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tool = promtool();
    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        ["check", "rules", "packaging/prometheus/capra-rules.yml"],
        ["test", "rules", "packaging/prometheus/capra-rules.test.yml"],
    ] {
        let out = Command::new(&tool).args(args).current_dir(&root).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("python3")
        .arg("scripts/check-dashboard.py")
        .arg("packaging/grafana/capra.json")
        .arg(&tool)
        .current_dir(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let names = text.split_once("names:\n").expect("the names the dashboard uses").1;
    let scraped = samples(body);
    let mut used = 0;
    for n in names.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            scraped.keys().any(|(k, _)| k == n.trim()),
            "the dashboard queries {n}, which no scrape has"
        );
        used += 1;
    }
    assert!(used >= 10, "{text}");
    // And every alert rule's name.
    let rules = std::fs::read_to_string(root.join("packaging/prometheus/capra-rules.yml")).unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("capra_") {
            assert!(
                scraped.keys().any(|(k, _)| k == word),
                "the rules use {word}, which no scrape has"
            );
        }
    }
}

/// Off by default; a taken port refuses the start; then, after real runs,
/// every name of the contract, counters equal to the run history, pending
/// and lag equal to `status --json`, change log rows equal to the logs, and
/// promtool's checks.
#[test]
fn metrics_follow_the_runs_and_agree_with_status() {
    let a = cluster::a();
    let (c, src, tgt) = fixtures::pair(
        "met",
        "CREATE TABLE kv (k int PRIMARY KEY, v text); CREATE TABLE lazy (k int PRIMARY KEY)",
    );
    c.ok(&["add", "table", "kv", "db=src", "relgroup=g"]);
    c.ok(&["add", "table", "lazy", "db=src", "relgroup=g2"]);
    fixtures::add_sync(&c, "s", &[]);
    c.ok(&[
        "add",
        "sync",
        "lazy",
        "relgroup=g2",
        "dbs=src:source,tgt:target",
        "autokick=0",
    ]);
    c.ok(&["set", "bucardo_vac=0", "metrics_refresh=1", "kid_restart_sleep=0.2"]);

    // Off by default: no listening socket at all.
    {
        let d = c.start();
        assert_eq!(listening(d.pid), Vec::<String>::new());
        assert!(!c.log().contains("Serving metrics"), "{}", c.log());
    }
    // A taken port: the start fails with the reason and what to do.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    c.ok(&["set", &format!("metrics_listen=127.0.0.1:{port}")]);
    let r = c.run(&["start", "test"]);
    assert_eq!(r.code, Some(1), "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "cannot serve metrics on 127.0.0.1:{port} (metrics_listen): Address already in use"
        )) && r.stderr.contains("capra set metrics_listen=HOST:PORT"),
        "{}",
        r.stderr
    );
    drop(held);
    assert_eq!(
        catalog_f64(a, &c.ctl_db, "SELECT count(*) FROM capra.daemons"),
        0.0,
        "a daemon that could not bind is not registered"
    );
    let d = c.start();
    assert_eq!(listening(d.pid).len(), 1, "one listening socket");

    let first = scrape(port);
    assert!(first.head.starts_with("HTTP/1.1 200 OK"), "{}", first.head);
    assert!(
        first
            .head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        first.head
    );
    a.exec(&src, "INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 5) g");
    a.exec(&src, "UPDATE kv SET v = 'w' WHERE k <= 2");
    a.exec(&src, "DELETE FROM kv WHERE k = 5");
    a.exec(&src, "INSERT INTO lazy SELECT generate_series(1, 7)");
    let b = cluster::b();
    c.wait_for(30, "kv to replicate", || {
        b.query(&tgt, "SELECT count(*)::text FROM kv WHERE v = 'w'")[0].as_deref() == Some("2")
            && b.query(&tgt, "SELECT count(*)::text FROM kv")[0].as_deref() == Some("4")
    });

    // Counters equal the run history; the refreshed gauges equal status.
    let hist = |sql: &str| catalog_f64(a, &c.ctl_db, &sql.replace("$S", "sync = 's'"));
    let mut s = Samples::new();
    c.wait_for(20, "the metrics to match the catalog and status", || {
        s = samples(&scrape(port).body);
        let lazy_pending: serde_json::Value =
            serde_json::from_str(&c.ok(&["status", "lazy", "--json"])).expect("status --json");
        let lazy_rows = lazy_pending["pending"][0]["rows"].as_f64();
        let last = hist("SELECT extract(epoch FROM r.ended) FROM capra.sync_state t JOIN capra.run r ON r.id = t.last_good WHERE t.$S");
        let good = hist("SELECT count(*) FROM capra.run WHERE $S AND state = 'good'");
        value(&s, "capra_sync_rows_total", &[("sync", "s"), ("op", "insert")])
            == Some(hist("SELECT sum(inserts) FROM capra.run WHERE $S"))
            && value(&s, "capra_sync_rows_total", &[("sync", "s"), ("op", "delete")])
                == Some(hist("SELECT sum(deletes) FROM capra.run WHERE $S"))
            && value(&s, "capra_sync_runs_total", &[("sync", "s"), ("result", "good")]) == Some(good)
            && value(&s, "capra_sync_run_duration_seconds_count", &[("sync", "s")]) == Some(good)
            && value(&s, "capra_sync_last_success_timestamp_seconds", &[("sync", "s")])
                .is_some_and(|v| (v - last).abs() < 0.01)
            && value(&s, "capra_sync_pending_changes", &[("sync", "lazy"), ("db", "src")]) == Some(7.0)
            && lazy_rows == Some(7.0)
            && value(&s, "capra_sync_pending_changes", &[("sync", "s"), ("db", "src")]) == Some(0.0)
            && value(&s, "capra_database_up", &[("db", "src")]) == Some(1.0)
            && value(&s, "capra_database_up", &[("db", "tgt")]) == Some(1.0)
    });
    assert!(hist("SELECT sum(inserts) FROM capra.run WHERE $S") >= 4.0);
    assert_eq!(value(&s, "capra_daemon_leader", &[]), Some(1.0));
    // The lag is the age of lazy's oldest waiting change, as status says.
    let st: serde_json::Value = serde_json::from_str(&c.ok(&["status", "lazy", "--json"])).unwrap();
    let oldest = st["pending"][0]["oldest_secs"].as_f64().unwrap();
    let lag = value(&s, "capra_sync_lag_seconds", &[("sync", "lazy"), ("db", "src")]).unwrap();
    // The gauge is at most a couple of refreshes older than status's look.
    assert!(
        lag > 0.0 && lag <= oldest + 0.5 && oldest - lag < 10.0,
        "lag {lag}, status {oldest}"
    );
    assert_eq!(
        value(&s, "capra_sync_lag_seconds", &[("sync", "s"), ("db", "src")]),
        Some(0.0)
    );
    // Every name and label of the contract is there.
    for (name, labels) in CONTRACT {
        assert!(
            s.keys()
                .any(|(n, l)| n == name && l.keys().map(String::as_str).eq(labels.iter().copied())),
            "{name} with labels {labels:?} is missing from:\n{}",
            scrape(port).body
        );
    }
    // The change log rows follow the logs (bucardo_vac=0: nothing purges).
    c.wait_for(20, "capture_log_rows to equal the change logs", || {
        let ids = a.query(&src, "SELECT id::text FROM capra.captured");
        let total: f64 = ids
            .iter()
            .map(|id| {
                catalog_f64(
                    a,
                    &src,
                    &format!("SELECT count(*) FROM capra.delta_{}", id.as_deref().unwrap()),
                )
            })
            .sum();
        value(&samples(&scrape(port).body), "capra_capture_log_rows", &[("db", "src")]) == Some(total)
    });

    // A change log locked for longer than a count may wait: the database
    // stays up and lazy's figures stay.
    let lazy_log = a.query(
        &src,
        "SELECT 'capra.delta_' || id FROM capra.captured WHERE relname = 'lazy'",
    )[0]
    .clone()
    .unwrap();
    let mut locker = a.client(&src);
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute(&format!("LOCK TABLE {lazy_log} IN ACCESS EXCLUSIVE MODE"))
        .unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        let s = samples(&scrape(port).body);
        assert_eq!(value(&s, "capra_database_up", &[("db", "src")]), Some(1.0));
        assert_eq!(
            value(&s, "capra_sync_pending_changes", &[("sync", "lazy"), ("db", "src")]),
            Some(7.0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    tx.rollback().unwrap();
    // The count did not queue behind the lock: it gave up and said so.
    assert!(
        c.log().contains("Metrics: cannot count the changes waiting on \"src\""),
        "{}",
        c.log()
    );

    // A kick applies lazy's 7 rows: pending and lag go to 0, rows count them.
    c.ok(&["kick", "lazy", "60"]);
    c.wait_for(10, "lazy's pending changes to read 0", || {
        let s = samples(&scrape(port).body);
        value(&s, "capra_sync_pending_changes", &[("sync", "lazy"), ("db", "src")]) == Some(0.0)
            && value(&s, "capra_sync_lag_seconds", &[("sync", "lazy"), ("db", "src")]) == Some(0.0)
            && value(&s, "capra_sync_rows_total", &[("sync", "lazy"), ("op", "insert")]) == Some(7.0)
    });

    // A failing run counts as bad, as the history records it.
    b.exec(&tgt, "ALTER TABLE kv RENAME TO kv_away");
    a.exec(&src, "INSERT INTO kv VALUES (100, 'bad')");
    c.wait_for(30, "bad runs to be counted as recorded", || {
        let bad = hist("SELECT count(*) FROM capra.run WHERE $S AND state = 'bad'");
        let s = samples(&scrape(port).body);
        bad >= 2.0
            && value(&s, "capra_sync_runs_total", &[("sync", "s"), ("result", "bad")]) == Some(bad)
            && value(&s, "capra_sync_run_duration_seconds_count", &[("sync", "s")])
                == Some(bad + hist("SELECT count(*) FROM capra.run WHERE $S AND state = 'good'"))
    });
    b.exec(&tgt, "ALTER TABLE kv_away RENAME TO kv");
    c.wait_for(30, "the sync to recover", || {
        b.query(&tgt, "SELECT count(*)::text FROM kv WHERE k = 100")[0].as_deref() == Some("1")
    });

    promtool_checks(&scrape(port).body);

    // A removed sync's series go, counters and gauges alike.
    c.ok(&["deactivate", "lazy"]);
    c.ok(&["remove", "sync", "lazy"]);
    c.ok(&["reload"]);
    c.wait_for(10, "the removed sync's series to go", || {
        !scrape(port).body.contains("sync=\"lazy\"")
    });
    let s = samples(&scrape(port).body);
    assert!(value(&s, "capra_sync_runs_total", &[("sync", "s"), ("result", "good")]).is_some_and(|v| v > 0.0));
    assert!(value(&s, "capra_sync_pending_changes", &[("sync", "s"), ("db", "src")]).is_some());
    drop(d);
}

/// With the control database, the source and the target all stopped, every
/// scrape still answers at once; the databases read as down, then up again.
#[test]
fn metrics_answer_at_once_with_every_database_down() {
    let own = Cluster::start("metdown", Opts::default());
    let src = own.create_db(&unique("md_src"));
    let tgt = own.create_db(&unique("md_tgt"));
    for db in [&src, &tgt] {
        own.exec(db, "CREATE TABLE kv (k int PRIMARY KEY)");
    }
    let c = Capra::install(&own);
    c.add_db("src", &own, &src);
    c.add_db("tgt", &own, &tgt);
    fixtures::sync_tables(&c, &["kv"], "s", &["autokick=0"]);
    let port = free_port();
    c.ok(&[
        "set",
        &format!("metrics_listen=127.0.0.1:{port}"),
        "metrics_refresh=3600",
        "ha_lease=60",
    ]);
    let _d = c.start();
    let pending = || {
        value(
            &samples(&scrape(port).body),
            "capra_sync_pending_changes",
            &[("sync", "s"), ("db", "src")],
        )
    };
    c.wait_for(20, "the first refresh", || pending() == Some(0.0));
    // metrics_refresh is real: at an hour nothing moves; set to a second
    // and reloaded, the gauges follow.
    own.exec(&src, "INSERT INTO kv SELECT generate_series(1, 3)");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pending(), Some(0.0), "refreshed although metrics_refresh is an hour");
    c.ok(&["set", "metrics_refresh=1"]);
    c.ok(&["reload"]);
    c.wait_for(5, "the gauges to follow once metrics_refresh is 1", || {
        pending() == Some(3.0)
    });
    let up = |want: f64| {
        let s = samples(&scrape(port).body);
        value(&s, "capra_database_up", &[("db", "src")]) == Some(want)
            && value(&s, "capra_database_up", &[("db", "tgt")]) == Some(want)
            && value(&s, "capra_daemon_leader", &[]) == Some(1.0)
    };
    c.wait_for(20, "both databases to read as up", || up(1.0));
    own.stop_immediate();
    // A long lease keeps the daemon leading while the control database is
    // down, so it is the probes that say "down".
    c.wait_for(20, "the databases to read as down", || up(0.0));
    let mut times = Vec::new();
    for _ in 0..20 {
        let s = scrape(port);
        assert!(s.head.starts_with("HTTP/1.1 200 OK") && s.body.contains("capra_daemon_leader "));
        times.push(s.took);
        std::thread::sleep(Duration::from_millis(100));
    }
    let slowest = times.iter().max().unwrap();
    assert!(*slowest < Duration::from_millis(100), "scrapes took {times:?}");
    own.resume();
    c.wait_for(60, "the databases to read as up again, with a leader", || up(1.0));
}

/// A standby answers with capra_daemon_leader 0 and none of the leader's
/// gauges; after a handover the two swap. Each daemon has its own port
/// from its own config file. Conflicts count as the history records them.
#[test]
fn a_standby_answers_leader_zero_and_the_roles_swap_on_handover() {
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let d = fixtures::dbs(&c, "mmet", fixtures::CONFLICT_DDL, &[a, b]);
    fixtures::conflict_sync(&c, "mmet", &["conflict_strategy=latest"]);
    c.ok(&["set", "metrics_refresh=1"]);
    let s = c.sibling();
    let (p1, p2) = (free_port(), free_port());
    c.home_file(".caprarc", &format!("metrics_listen = 127.0.0.1:{p1}\n"));
    s.home_file(".caprarc", &format!("metrics_listen = 127.0.0.1:{p2}\n"));
    let one = c.start();
    let two = s.start();
    let leads = |port: u16| {
        let s = samples(&scrape(port).body);
        value(&s, "capra_daemon_leader", &[]) == Some(1.0)
            && value(&s, "capra_database_up", &[("db", "mmet1")]) == Some(1.0)
    };
    let stands_by = |port: u16| {
        let body = scrape(port).body;
        let s = samples(&body);
        value(&s, "capra_daemon_leader", &[]) == Some(0.0)
            && value(&s, "capra_build_info", &[("version", env!("CARGO_PKG_VERSION"))]) == Some(1.0)
            && !body.contains("capra_database_up{")
            && !body.contains("capra_sync_pending_changes{")
            && !body.contains("capra_sync_lag_seconds{")
            && !body.contains("capra_sync_last_success_timestamp_seconds{")
            && !body.contains("capra_capture_log_rows{")
    };
    c.wait_for(20, "the first daemon to lead and the second to stand by", || {
        leads(p1) && stands_by(p2)
    });
    // Conflicts: counted by the leader exactly as the run recorded them.
    fixtures::conflicting_writes(a, &d[0], b, &d[1]);
    // Before the kick, both sources' pending changes are what status says.
    c.wait_for(10, "pending on both sources to equal status --json", || {
        let st: serde_json::Value = serde_json::from_str(&c.ok(&["status", "s_mmet", "--json"])).unwrap();
        let s = samples(&scrape(p1).body);
        let both = st["pending"].as_array().unwrap();
        both.len() == 2
            && both.iter().all(|p| {
                let db = p["db"].as_str().unwrap();
                p["rows"].as_f64().is_some_and(|r| r > 0.0)
                    && value(&s, "capra_sync_pending_changes", &[("sync", "s_mmet"), ("db", db)]) == p["rows"].as_f64()
            })
    });
    c.ok(&["kick", "s_mmet", "60"]);
    let recorded = catalog_f64(
        a,
        &c.ctl_db,
        "SELECT sum(conflicts) FROM capra.run WHERE sync = 's_mmet'",
    );
    assert_eq!(recorded, 1.0);
    let s1 = samples(&scrape(p1).body);
    assert_eq!(
        value(&s1, "capra_sync_conflicts_total", &[("sync", "s_mmet")]),
        Some(recorded)
    );

    let out = c.ok(&["ha", "handover"]);
    assert!(out.contains(&format!("pid {} on", two.pid)), "{out}");
    c.wait_for(20, "the roles to swap on the endpoints", || leads(p2) && stands_by(p1));
    // The old leader keeps its counters.
    let s1 = samples(&scrape(p1).body);
    assert_eq!(
        value(&s1, "capra_sync_conflicts_total", &[("sync", "s_mmet")]),
        Some(recorded)
    );
    drop((one, two));
}
