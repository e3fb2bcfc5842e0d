//! Prometheus metrics: the daemon's figures held in memory, rendered in the
//! text format 0.0.4 on `GET /metrics` (see `http`).
//!
//! A scrape only encodes what is here; it never asks a database, so it
//! answers at once even when every database is down. Counters are bumped
//! where runs are recorded; the gauges that need databases are replaced as
//! a whole by the daemon's refresher (`daemon::metrics`). The names and
//! labels are a contract (docs/metrics.md): change none of them.

pub mod http;

use std::sync::RwLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Run-time buckets, in seconds: from a quick delta run to an hour-long copy.
const RUN_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// How a run ended, as the `result` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunResult {
    /// Applied changes (or copied).
    Good,
    /// Failed.
    Bad,
    /// Found nothing to do.
    Empty,
}

impl RunResult {
    fn label(self) -> &'static str {
        match self {
            RunResult::Good => "good",
            RunResult::Bad => "bad",
            RunResult::Empty => "empty",
        }
    }
}

/// One run's figures, as recorded in `capra.run`.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// How it ended.
    pub result: RunResult,
    /// Rows inserted (upserted) on targets.
    pub inserts: u64,
    /// Rows deleted on targets.
    pub deletes: u64,
    /// Conflicts settled.
    pub conflicts: u64,
    /// Wall time of the run.
    pub seconds: f64,
}

impl Run {
    /// A failed run: no rows count.
    pub fn bad(seconds: f64) -> Run {
        Run {
            result: RunResult::Bad,
            inserts: 0,
            deletes: 0,
            conflicts: 0,
            seconds,
        }
    }
}

/// What the refresher read from the databases in one pass.
#[derive(Clone, Debug, Default)]
pub struct Refreshed {
    /// Per database: whether a connection worked.
    pub up: Vec<(String, bool)>,
    /// Per (sync, source db): changes waiting and the oldest one's age in
    /// seconds (0 when none).
    pub pending: Vec<(String, String, i64, f64)>,
    /// Per source db: rows in capra's change logs.
    pub log_rows: Vec<(String, i64)>,
    /// Per sync: end of the last good run, in seconds since 1970.
    pub last_success: Vec<(String, f64)>,
}

/// The daemon's metrics. One per process: it outlives leader terms, so
/// counters keep counting across a handover.
pub struct Metrics {
    registry: Registry,
    leader: IntGauge,
    is_leader: Box<dyn Fn() -> bool + Send + Sync>,
    runs: IntCounterVec,
    rows: IntCounterVec,
    conflicts: IntCounterVec,
    pending: IntGaugeVec,
    lag: GaugeVec,
    last_success: GaugeVec,
    duration: HistogramVec,
    up: IntGaugeVec,
    log_rows: IntGaugeVec,
    /// Held for writing while the refreshed gauges are replaced, so a
    /// scrape never sees them half-filled.
    gate: RwLock<()>,
    /// The syncs whose counters are shown.
    declared: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Metrics {
    /// The metric families, registered in a registry of their own;
    /// `is_leader` answers `capra_daemon_leader` at each scrape.
    pub fn new(is_leader: impl Fn() -> bool + Send + Sync + 'static) -> Metrics {
        let registry = Registry::new();
        let info = IntGaugeVec::new(Opts::new("capra_build_info", "capra's version; always 1"), &["version"])
            .expect("valid metric");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let leader = IntGauge::new(
            "capra_daemon_leader",
            "1 when this daemon leads (runs the syncs), 0 on a standby",
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let fgauge = |name: &str, help: &str, labels: &[&str]| {
            GaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let m = Metrics {
            leader,
            is_leader: Box::new(is_leader),
            runs: counter(
                "capra_sync_runs_total",
                "Runs of each sync, by result",
                &["sync", "result"],
            ),
            rows: counter(
                "capra_sync_rows_total",
                "Rows each sync applied to its targets, by operation",
                &["sync", "op"],
            ),
            conflicts: counter("capra_sync_conflicts_total", "Conflicts each sync settled", &["sync"]),
            pending: gauge(
                "capra_sync_pending_changes",
                "Changes captured on a source that the sync has not applied yet",
                &["sync", "db"],
            ),
            lag: fgauge(
                "capra_sync_lag_seconds",
                "Age of the oldest change the sync has not applied yet (0 when none)",
                &["sync", "db"],
            ),
            last_success: fgauge(
                "capra_sync_last_success_timestamp_seconds",
                "End of the sync's last good run, in seconds since 1970",
                &["sync"],
            ),
            duration: HistogramVec::new(
                HistogramOpts::new("capra_sync_run_duration_seconds", "Run times of each sync")
                    .buckets(RUN_BUCKETS.to_vec()),
                &["sync"],
            )
            .expect("valid metric"),
            up: gauge(
                "capra_database_up",
                "1 when the daemon's last connection to the database worked",
                &["db"],
            ),
            log_rows: gauge(
                "capra_capture_log_rows",
                "Rows in capra's change logs on a source (from PostgreSQL's statistics)",
                &["db"],
            ),
            gate: RwLock::new(()),
            declared: Default::default(),
            registry,
        };
        let families: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(info),
            Box::new(m.leader.clone()),
            Box::new(m.runs.clone()),
            Box::new(m.rows.clone()),
            Box::new(m.conflicts.clone()),
            Box::new(m.pending.clone()),
            Box::new(m.lag.clone()),
            Box::new(m.last_success.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.up.clone()),
            Box::new(m.log_rows.clone()),
        ];
        for f in families {
            m.registry.register(f).expect("metric names are unique");
        }
        m
    }

    /// Shows a sync's counters at 0 from the start, so `rate()` and
    /// `increase()` see its first run.
    pub fn declare_sync(&self, sync: &str) {
        crate::sys::lock(&self.declared).insert(sync.to_string());
        for r in [RunResult::Good, RunResult::Bad, RunResult::Empty] {
            self.runs.with_label_values(&[sync, r.label()]);
        }
        for op in ["insert", "delete"] {
            self.rows.with_label_values(&[sync, op]);
        }
        self.conflicts.with_label_values(&[sync]);
        self.duration.with_label_values(&[sync]);
    }

    /// Counts a run the daemon recorded (not for a sync already removed:
    /// a late run must not bring its series back).
    pub fn record_run(&self, sync: &str, run: Run) {
        let declared = crate::sys::lock(&self.declared);
        if !declared.contains(sync) {
            return;
        }
        self.runs.with_label_values(&[sync, run.result.label()]).inc();
        if run.result == RunResult::Empty {
            return;
        }
        self.duration.with_label_values(&[sync]).observe(run.seconds);
        if run.result == RunResult::Good {
            self.rows.with_label_values(&[sync, "insert"]).inc_by(run.inserts);
            self.rows.with_label_values(&[sync, "delete"]).inc_by(run.deletes);
            self.conflicts.with_label_values(&[sync]).inc_by(run.conflicts);
        }
    }

    /// A sync was removed from the catalog: its series go, so dashboards
    /// stop listing it.
    pub fn forget_sync(&self, sync: &str) {
        crate::sys::lock(&self.declared).remove(sync);
        for r in [RunResult::Good, RunResult::Bad, RunResult::Empty] {
            let _ = self.runs.remove_label_values(&[sync, r.label()]);
        }
        for op in ["insert", "delete"] {
            let _ = self.rows.remove_label_values(&[sync, op]);
        }
        let _ = self.conflicts.remove_label_values(&[sync]);
        let _ = self.duration.remove_label_values(&[sync]);
    }

    /// The syncs whose counters are shown.
    pub fn declared(&self) -> Vec<String> {
        crate::sys::lock(&self.declared).iter().cloned().collect()
    }

    /// Replaces every refreshed gauge with what one pass read.
    pub fn refreshed(&self, r: &Refreshed) {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        // The end of the last good run never moves back (a catalog read
        // from an earlier pass may be older than the one shown).
        let shown: Vec<f64> = r
            .last_success
            .iter()
            .map(|(s, _)| {
                self.last_success
                    .get_metric_with_label_values(&[s])
                    .map(|g| g.get())
                    .unwrap_or(0.0)
            })
            .collect();
        self.clear_refreshed();
        for (db, up) in &r.up {
            self.up.with_label_values(&[db]).set(i64::from(*up));
        }
        for (sync, db, rows, lag) in &r.pending {
            self.pending.with_label_values(&[sync, db]).set(*rows);
            self.lag.with_label_values(&[sync, db]).set(*lag);
        }
        for (db, rows) in &r.log_rows {
            self.log_rows.with_label_values(&[db]).set(*rows);
        }
        for ((sync, t), before) in r.last_success.iter().zip(shown) {
            self.last_success.with_label_values(&[sync]).set(t.max(before));
        }
    }

    /// A term ended: the refreshed gauges go (a standby reads no database).
    pub fn term_ended(&self) {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.clear_refreshed();
    }

    fn clear_refreshed(&self) {
        self.up.reset();
        self.pending.reset();
        self.lag.reset();
        self.log_rows.reset();
        self.last_success.reset();
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> Vec<u8> {
        self.leader.set(i64::from((self.is_leader)()));
        let families = {
            let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
            self.registry.gather()
        };
        let mut out = Vec::with_capacity(8192);
        // Encoding only fails on a broken writer; a Vec is not one.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }
}

/// Checks a `metrics_listen` value: empty (off), `IP:PORT`, `[IPv6]:PORT`
/// or `HOST:PORT`, so `capra set` refuses what the daemon could not bind.
pub fn check_listen(v: &str) -> Result<(), String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(());
    }
    let bad = || {
        "must be HOST:PORT such as 127.0.0.1:9187 or [::1]:9187, with a port from 1 to 65535; empty turns metrics off"
            .to_string()
    };
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && !host.contains(':')
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    };
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values() {
        for ok in [
            "",
            "127.0.0.1:9187",
            "[::1]:9187",
            "localhost:1",
            "db-1.example.com:65535",
        ] {
            assert_eq!(check_listen(ok), Ok(()), "{ok}");
        }
        for bad in [
            "9187",
            ":9187",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "::1:9187",
            "[::1]9187",
            "a b:1",
            "h:x",
        ] {
            let e = check_listen(bad).unwrap_err();
            assert!(e.contains("must be HOST:PORT"), "{bad}: {e}");
        }
    }

    /// The exposition, golden: escaping of odd sync names, a histogram's
    /// cumulative buckets, and the order of families.
    #[test]
    fn golden_text() {
        let m = Metrics::new(|| true);
        let odd = "a\"b\\c\nd";
        m.declare_sync(odd);
        m.record_run(
            odd,
            Run {
                result: RunResult::Good,
                inserts: 3,
                deletes: 1,
                conflicts: 2,
                seconds: 0.2,
            },
        );
        m.record_run(
            odd,
            Run {
                result: RunResult::Empty,
                inserts: 0,
                deletes: 0,
                conflicts: 0,
                seconds: 0.001,
            },
        );
        m.refreshed(&Refreshed {
            up: vec![("src".into(), true), ("tgt".into(), false)],
            pending: vec![(odd.into(), "src".into(), 7, 1.5)],
            log_rows: vec![("src".into(), 9)],
            last_success: vec![(odd.into(), 1_700_000_000.5)],
        });
        let text = String::from_utf8(m.render()).unwrap();
        let v = env!("CARGO_PKG_VERSION");
        let l = r#"sync="a\"b\\c\nd""#;
        let want = format!(
            r#"# HELP capra_build_info capra's version; always 1
# TYPE capra_build_info gauge
capra_build_info{{version="{v}"}} 1
# HELP capra_capture_log_rows Rows in capra's change logs on a source (from PostgreSQL's statistics)
# TYPE capra_capture_log_rows gauge
capra_capture_log_rows{{db="src"}} 9
# HELP capra_daemon_leader 1 when this daemon leads (runs the syncs), 0 on a standby
# TYPE capra_daemon_leader gauge
capra_daemon_leader 1
# HELP capra_database_up 1 when the daemon's last connection to the database worked
# TYPE capra_database_up gauge
capra_database_up{{db="src"}} 1
capra_database_up{{db="tgt"}} 0
# HELP capra_sync_conflicts_total Conflicts each sync settled
# TYPE capra_sync_conflicts_total counter
capra_sync_conflicts_total{{{l}}} 2
# HELP capra_sync_lag_seconds Age of the oldest change the sync has not applied yet (0 when none)
# TYPE capra_sync_lag_seconds gauge
capra_sync_lag_seconds{{db="src",{l}}} 1.5
# HELP capra_sync_last_success_timestamp_seconds End of the sync's last good run, in seconds since 1970
# TYPE capra_sync_last_success_timestamp_seconds gauge
capra_sync_last_success_timestamp_seconds{{{l}}} 1700000000.5
# HELP capra_sync_pending_changes Changes captured on a source that the sync has not applied yet
# TYPE capra_sync_pending_changes gauge
capra_sync_pending_changes{{db="src",{l}}} 7
# HELP capra_sync_rows_total Rows each sync applied to its targets, by operation
# TYPE capra_sync_rows_total counter
capra_sync_rows_total{{op="delete",{l}}} 1
capra_sync_rows_total{{op="insert",{l}}} 3
# HELP capra_sync_run_duration_seconds Run times of each sync
# TYPE capra_sync_run_duration_seconds histogram
capra_sync_run_duration_seconds_bucket{{{l},le="0.01"}} 0
capra_sync_run_duration_seconds_bucket{{{l},le="0.05"}} 0
capra_sync_run_duration_seconds_bucket{{{l},le="0.1"}} 0
capra_sync_run_duration_seconds_bucket{{{l},le="0.25"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="0.5"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="1"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="2.5"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="5"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="10"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="30"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="60"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="300"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="900"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="3600"}} 1
capra_sync_run_duration_seconds_bucket{{{l},le="+Inf"}} 1
capra_sync_run_duration_seconds_sum{{{l}}} 0.2
capra_sync_run_duration_seconds_count{{{l}}} 1
# HELP capra_sync_runs_total Runs of each sync, by result
# TYPE capra_sync_runs_total counter
capra_sync_runs_total{{result="bad",{l}}} 0
capra_sync_runs_total{{result="empty",{l}}} 1
capra_sync_runs_total{{result="good",{l}}} 1
"#
        );
        assert_eq!(text, want);
        // A standby keeps its counters but no refreshed gauge.
        m.term_ended();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("capra_database_up{") && !text.contains("capra_sync_lag_seconds{"));
        assert!(text.contains(r#"capra_sync_runs_total{result="good","#));
        // A removed sync's series go.
        m.forget_sync(odd);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("capra_sync_"), "{text}");
    }

    /// The end of the last good run never moves back, whatever order the
    /// catalog's answers come in.
    #[test]
    fn last_success_never_goes_back() {
        let m = Metrics::new(|| true);
        let at = |t: f64| Refreshed {
            last_success: vec![("s".into(), t)],
            ..Default::default()
        };
        m.refreshed(&at(200.0));
        m.refreshed(&at(100.0));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("capra_sync_last_success_timestamp_seconds{sync=\"s\"} 200\n"),
            "{text}"
        );
        m.refreshed(&at(300.0));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("capra_sync_last_success_timestamp_seconds{sync=\"s\"} 300\n"),
            "{text}"
        );
    }
}
