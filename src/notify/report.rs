//! The sync status table, as `capra status` prints it and the status
//! report mail carries it.

use postgres::GenericClient;

use crate::catalog::{model, runs};
use crate::domain::Status;
use crate::error::Result;

/// A sync's status, as both the table and the detail block need it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncStatus {
    /// The sync.
    pub name: String,
    /// active or inactive.
    pub status: Status,
    /// Good, Bad (N failed runs), Running (since ...), No records found.
    pub state: SyncState,
    /// The last good run.
    pub last_good: Option<runs::RunInfo>,
    /// The last failed run.
    pub last_bad: Option<runs::RunInfo>,
    /// When a run last found nothing to do.
    pub last_empty: Option<String>,
    /// Failed runs in a row.
    pub failures: i32,
    /// When a failed sync is retried.
    pub next_retry: Option<String>,
    /// When the run in progress started.
    pub running_since: Option<String>,
}

/// How a sync is doing, as the State column says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// A run is in progress (and the daemon runs).
    Running {
        /// When it started.
        since: String,
    },
    /// It never ran.
    NoRecords,
    /// Its last runs failed.
    Bad {
        /// Failed runs in a row.
        failures: i32,
    },
    /// Its last run went well.
    Good,
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncState::Running { since } => write!(f, "Running (since {since})"),
            SyncState::NoRecords => f.write_str("No records found"),
            SyncState::Bad { failures } => {
                write!(
                    f,
                    "Bad ({failures} failed run{})",
                    if *failures == 1 { "" } else { "s" }
                )
            }
            SyncState::Good => f.write_str("Good"),
        }
    }
}

impl serde::Serialize for SyncState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A sync's status from the catalog (`daemon_up`: a run recorded as
/// running is only believed while the daemon runs).
pub fn sync_status(c: &mut impl GenericClient, s: &model::Sync, daemon_up: bool) -> Result<SyncStatus> {
    let st = runs::sync_state(c, &s.name)?;
    let (good, bad, empty, failures, retry) = (st.last_good, st.last_bad, st.last_empty, st.failures, st.next_retry);
    let running = runs::running_since(c, &s.name)?;
    let last_good = runs::run_info(c, good)?;
    let last_bad = runs::run_info(c, bad)?;
    let state = match &running {
        Some(since) if daemon_up => SyncState::Running { since: since.clone() },
        _ => match (&last_good, &last_bad) {
            (None, None) if empty.is_none() => SyncState::NoRecords,
            (_, Some(b)) if failures > 0 && last_good.as_ref().is_none_or(|g| g.id < b.id) => {
                SyncState::Bad { failures }
            }
            _ => SyncState::Good,
        },
    };
    Ok(SyncStatus {
        name: s.name.clone(),
        status: s.status,
        state,
        last_good,
        last_bad,
        last_empty: empty,
        failures,
        next_retry: if failures > 0 { retry } else { None },
        running_since: running,
    })
}

/// `3d 4h 5m 6s` style age.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d "));
    }
    if d > 0 || h > 0 {
        out.push_str(&format!("{h}h "));
    }
    if d > 0 || h > 0 || m > 0 {
        out.push_str(&format!("{m}m "));
    }
    out.push_str(&format!("{s}s"));
    out
}

/// A run's end: the time of day if today, else the date too.
pub fn short_time(r: &runs::RunInfo) -> String {
    if r.today {
        r.ended.rsplit(' ').next().unwrap_or_default().to_string()
    } else {
        r.ended.clone()
    }
}

/// The status table (header, rule, one row per sync).
pub fn status_table(rows: &[SyncStatus]) -> String {
    let mut out = String::new();
    let header = [
        "Name",
        "State",
        "Last good",
        "Time",
        "Duration",
        "Last I/D",
        "Last bad",
        "Time",
        "Status",
    ];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let g = r.last_good.as_ref();
            let b = r.last_bad.as_ref();
            vec![
                r.name.clone(),
                r.state.to_string(),
                g.map(short_time).unwrap_or_else(|| "none".into()),
                g.map(|g| age(g.age_secs)).unwrap_or_default(),
                g.map(|g| format!("{:.1}s", g.seconds)).unwrap_or_default(),
                g.map(|g| format!("{}/{}", g.inserts, g.deletes)).unwrap_or_default(),
                b.map(short_time).unwrap_or_else(|| "none".into()),
                b.map(|b| age(b.age_secs)).unwrap_or_default(),
                if r.status == Status::Active {
                    "Active".into()
                } else {
                    "Inactive".into()
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| table.iter().map(|r| r[i].len()).max().unwrap_or(0).max(header[i].len()))
        .collect();
    let line = |cells: Vec<String>, sep: &str| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!(" {:<w$} ", c, w = widths[i]))
            .collect::<Vec<_>>()
            .join(sep)
    };
    out.push_str(line(header.iter().map(|s| s.to_string()).collect(), " ").trim_end());
    out.push('\n');
    out.push_str(&widths.iter().map(|w| "=".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    out.push('\n');
    for r in table {
        out.push_str(line(r, "|").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_before() {
        let since = "2026-12-01 10:00:00".to_string();
        assert_eq!(
            SyncState::Running { since }.to_string(),
            "Running (since 2026-12-01 10:00:00)"
        );
        assert_eq!(SyncState::NoRecords.to_string(), "No records found");
        assert_eq!(SyncState::Bad { failures: 1 }.to_string(), "Bad (1 failed run)");
        assert_eq!(SyncState::Bad { failures: 3 }.to_string(), "Bad (3 failed runs)");
        assert_eq!(
            serde_json::to_value(SyncState::Good).unwrap(),
            serde_json::json!("Good")
        );
    }
}
