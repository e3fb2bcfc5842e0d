//! The engine's bookkeeping in the control database: run history, per-sync
//! state, kick requests and the daemon's own row.

use postgres::GenericClient;

use crate::error::{Context, Error, Result};
use crate::pg::RowExt;

/// Advisory lock key the running daemon holds on its control connection;
/// whoever holds it is "the daemon" for this control database.
pub const DAEMON_LOCK: (i32, i32) = (0x6361_7072, 1);

/// NOTIFY channel for requests to the daemon (kick, reload, stop).
pub const CONTROL_CHANNEL: &str = "capra_control";

/// NOTIFY channel on which the daemon reports finished kicks.
pub const KICK_DONE_CHANNEL: &str = "capra_kick_done";

/// NOTIFY channel on which the daemon confirms a reload.
pub const RELOADED_CHANNEL: &str = "capra_reloaded";

/// The running daemon, if any: (pid, host, started, log destination).
#[derive(Clone, Debug)]
pub struct DaemonInfo {
    /// Process id.
    pub pid: i32,
    /// Host name.
    pub host: String,
    /// When it started.
    pub started: String,
    /// Where it logs.
    pub logdest: Option<String>,
}

/// The leading daemon of this control database, if one leads: the holder
/// of an unexpired lease (a daemon of capra before several daemons holds
/// [`DAEMON_LOCK`] instead, and counts too).
pub fn daemon(c: &mut impl GenericClient) -> Result<Option<DaemonInfo>> {
    const Q: &str = "checking for a running daemon";
    let leads = leads();
    let row = c
        .query_opt(
            &format!(
                "SELECT l.pid, l.host, to_char(l.since, 'Mon DD, YYYY HH24:MI:SS'), d.logdest
               FROM capra.lease l
               LEFT JOIN capra.daemon d ON d.pid = l.pid AND d.host = l.host
              WHERE {leads}"
            ),
            &[],
        )
        .ctx(|| Q.into())?;
    if let Some(r) = row {
        return Ok(Some(DaemonInfo {
            pid: r.col(0, Q)?,
            host: r.col(1, Q)?,
            started: r.col(2, Q)?,
            logdest: r.col(3, Q)?,
        }));
    }
    let legacy: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND classid::bigint = $1::int::bigint AND objid::bigint = $2::int::bigint AND objsubid = 2)",
            &[&DAEMON_LOCK.0, &DAEMON_LOCK.1],
        )
        .ctx(|| Q.into())?
        .col(0, Q)?;
    if !legacy {
        return Ok(None);
    }
    let row = c
        .query_opt(
            "SELECT pid, host, to_char(started, 'Mon DD, YYYY HH24:MI:SS'), logdest FROM capra.daemon",
            &[],
        )
        .ctx(|| Q.into())?;
    Ok(Some(match row {
        Some(r) => DaemonInfo {
            pid: r.col(0, Q)?,
            host: r.col(1, Q)?,
            started: r.col(2, Q)?,
            logdest: r.col(3, Q)?,
        },
        None => DaemonInfo {
            pid: 0,
            host: "?".into(),
            started: "?".into(),
            logdest: None,
        },
    }))
}

/// SQL over the lease row `l`: someone leads (held, not run out, and its
/// holder's lease session not provably gone, as after a kill -9).
fn leads() -> String {
    format!(
        "l.holder IS NOT NULL AND l.lease_until > pg_catalog.clock_timestamp() AND NOT ({} IS TRUE)",
        super::lease::HOLDER_GONE
    )
}

/// One daemon of this control database, leader or standby.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Member {
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: i32,
    /// "leader" or "standby".
    pub role: String,
    /// Since when it leads (leader) or runs (standby).
    pub since: String,
    /// Seconds of lease left (the leader only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_left: Option<f64>,
    /// Seconds since its last heartbeat.
    #[serde(skip)]
    pub beat_age: f64,
}

/// Every daemon alive (heartbeat in the last 15 s), the leader first.
pub fn daemons(c: &mut impl GenericClient) -> Result<Vec<Member>> {
    const Q: &str = "listing the daemons";
    let leads = leads();
    c.query(
        &format!(
            "SELECT d.host, d.pid, CASE WHEN lead THEN 'leader' ELSE 'standby' END,
                to_char(CASE WHEN lead THEN l.since ELSE d.started END, 'YYYY-MM-DD HH24:MI:SS'),
                CASE WHEN lead THEN extract(epoch FROM l.lease_until - pg_catalog.clock_timestamp())::float8 END,
                extract(epoch FROM pg_catalog.clock_timestamp() - d.heartbeat)::float8
           FROM capra.daemons d
           CROSS JOIN capra.lease l
           CROSS JOIN LATERAL (SELECT (d.id = l.holder AND {leads}) IS TRUE AS lead) x
          WHERE d.heartbeat > pg_catalog.clock_timestamp() - interval '15 seconds' OR lead
          ORDER BY lead DESC, d.started, d.host, d.pid"
        ),
        &[],
    )
    .ctx(|| Q.into())?
    .iter()
    .map(|r| {
        Ok(Member {
            host: r.col(0, Q)?,
            pid: r.col(1, Q)?,
            role: r.col(2, Q)?,
            since: r.col(3, Q)?,
            lease_left: r.col(4, Q)?,
            beat_age: r.col(5, Q)?,
        })
    })
    .collect()
}

/// Who starts a run: the leading daemon, in its term.
#[derive(Clone, Copy, Debug)]
pub struct Runner<'a> {
    /// Its pid.
    pub pid: i32,
    /// Its host.
    pub host: &'a str,
    /// Its lease holder id.
    pub holder: &'a str,
    /// Its term.
    pub epoch: i64,
}

/// Records the start of a run; returns its id, or an error when this
/// daemon no longer holds the lease of its term (a deposed leader starts
/// nothing).
pub fn start_run(c: &mut impl GenericClient, sync: &str, reason: &str, who: Runner<'_>) -> Result<i64> {
    let what = format!("recording a run of sync \"{sync}\"");
    let row = c
        .query_opt(
            "INSERT INTO capra.run (sync, state, reason, pid, host, epoch)
             SELECT $1, 'running', $2, $3, $4, $6 FROM capra.lease
              WHERE holder = $5 AND epoch = $6 AND lease_until > pg_catalog.clock_timestamp()
             RETURNING id",
            &[&sync, &reason, &who.pid, &who.host, &who.holder, &who.epoch],
        )
        .ctx(|| what.clone())?;
    match row {
        Some(r) => r.col(0, &what),
        None => Err(Error::Rejected(format!(
            "not {what}: this daemon (pid {}) no longer leads (epoch {})",
            who.pid, who.epoch
        ))),
    }
}

/// Drops the record of a run that changed nothing and is rerun at once
/// (it found the catalog newer than its plan).
pub fn forget_run(c: &mut impl GenericClient, id: i64) -> Result<()> {
    c.execute("DELETE FROM capra.run WHERE id = $1 AND state = 'running'", &[&id])
        .ctx(|| "dropping a run record".into())?;
    Ok(())
}

/// Targets of a sync that missed changes while inactive, with since when
/// (text): each gets a full copy at the first run that includes it.
pub fn targets_behind(c: &mut impl GenericClient, sync: &str) -> Result<Vec<(String, String)>> {
    let what = format!("reading which targets of sync \"{sync}\" are behind");
    c.query(
        "SELECT db, to_char(since, 'YYYY-MM-DD HH24:MI:SS') FROM capra.target_behind WHERE sync = $1 ORDER BY db",
        &[&sync],
    )
    .ctx(|| what.clone())?
    .iter()
    .map(|r| Ok((r.col(0, &what)?, r.col(1, &what)?)))
    .collect()
}

/// Totals of a finished run.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Rows written.
    pub inserts: i64,
    /// Rows deleted.
    pub deletes: i64,
    /// Tables truncated.
    pub truncates: i64,
    /// Conflicts settled.
    pub conflicts: i64,
    /// Tables with work.
    pub tables: i32,
}

/// Records a good run (or drops the row of an empty one); false when the
/// run was closed meanwhile (a new leader closed it as failed).
pub fn finish_run(
    c: &mut impl GenericClient,
    sync: &str,
    id: i64,
    t: &Totals,
    details: &serde_json::Value,
    empty: bool,
) -> Result<bool> {
    if empty {
        let n = c
            .execute("DELETE FROM capra.run WHERE id = $1 AND state = 'running'", &[&id])
            .ctx(|| "recording an empty run".into())?;
        if n == 0 {
            return Ok(false);
        }
        c.execute(
            "INSERT INTO capra.sync_state (sync, last_empty, failures) VALUES ($1, now(), 0)
             ON CONFLICT (sync) DO UPDATE SET last_empty = now(), failures = 0, next_retry = NULL",
            &[&sync],
        )
        .ctx(|| "recording an empty run".into())?;
        return Ok(true);
    }
    // A run a new leader closed meanwhile stays closed, and says nothing
    // about the sync's state.
    let n = c.execute(
        "UPDATE capra.run SET state = 'good', ended = clock_timestamp(), inserts = $2, deletes = $3, truncates = $4,
                conflicts = $5, tables = $6, details = $7 WHERE id = $1 AND state = 'running'",
        &[
            &id,
            &t.inserts,
            &t.deletes,
            &t.truncates,
            &t.conflicts,
            &t.tables,
            details,
        ],
    )
    .ctx(|| "recording a good run".into())?;
    if n == 0 {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO capra.sync_state (sync, last_good, failures) VALUES ($1, $2, 0)
         ON CONFLICT (sync) DO UPDATE SET last_good = $2, failures = 0, next_retry = NULL",
        &[&sync, &id],
    )
    .ctx(|| "recording a good run".into())?;
    Ok(true)
}

/// Records a failed run with its error and when it will be retried.
pub fn fail_run(
    c: &mut impl GenericClient,
    sync: &str,
    id: i64,
    error: &str,
    kind: crate::error::Kind,
    sqlstate: Option<&postgres::error::SqlState>,
    retry_in_secs: f64,
) -> Result<()> {
    let n = c
        .execute(
            "UPDATE capra.run SET state = 'bad', ended = clock_timestamp(), error = $2, sqlstate = $3,
                    details = pg_catalog.jsonb_build_object('kind', $4::text)
              WHERE id = $1 AND state = 'running'",
            &[&id, &error, &sqlstate.map(|c| c.code()), &kind.as_str()],
        )
        .ctx(|| "recording a failed run".into())?;
    if n == 0 {
        return Ok(());
    }
    c.execute(
        "INSERT INTO capra.sync_state (sync, last_bad, failures, next_retry)
         VALUES ($1, $2, 1, now() + make_interval(secs => $3))
         ON CONFLICT (sync) DO UPDATE SET last_bad = $2, failures = capra.sync_state.failures + 1,
                next_retry = now() + make_interval(secs => $3)",
        &[&sync, &id, &retry_in_secs],
    )
    .ctx(|| "recording a failed run".into())?;
    Ok(())
}

/// Adds settled conflicts to the conflict history (`capra conflicts`).
pub fn record_conflicts(
    c: &mut impl GenericClient,
    sync: &str,
    run: i64,
    records: &[&crate::domain::conflict::Record],
) -> Result<()> {
    let json = serde_json::to_value(records).unwrap_or(serde_json::Value::Null);
    c.execute(
        "INSERT INTO capra.conflict (run, sync, tbl, key, contenders, winner, reason)
         SELECT $1, $2, x->>'table', x->'key', x->'contenders', x->>'winner', x->>'reason'
           FROM jsonb_array_elements($3::jsonb) AS x
          -- A conflict that stops the sync (abort) is kept once, not once
          -- per retry, until a run succeeds again.
          WHERE x->>'winner' <> 'aborted'
             OR NOT EXISTS (SELECT 1 FROM capra.conflict c
                             WHERE c.sync = $2 AND c.tbl = x->>'table' AND c.key = x->'key' AND c.winner = 'aborted'
                               AND c.run > coalesce((SELECT last_good FROM capra.sync_state WHERE sync = $2), 0))",
        &[&run, &sync, &json],
    )
    .ctx(|| "recording conflicts".into())?;
    Ok(())
}

/// One conflict of the history.
#[derive(Debug, Clone)]
pub struct ConflictRow {
    /// When (local time, to the millisecond).
    pub time: String,
    /// The sync.
    pub sync: String,
    /// The run that settled it.
    pub run: Option<i64>,
    /// `schema.table`.
    pub table: String,
    /// Column -> value.
    pub key: serde_json::Value,
    /// `[{db, at}]`.
    pub contenders: serde_json::Value,
    /// The winning database, or merged/skipped/aborted.
    pub winner: String,
    /// The strategy or hook that decided.
    pub reason: String,
}

impl ConflictRow {
    fn from_row(r: &postgres::Row) -> Result<ConflictRow> {
        const Q: &str = "reading the conflict history";
        Ok(ConflictRow {
            time: r.col(0, Q)?,
            sync: r.col(1, Q)?,
            run: r.col(2, Q)?,
            table: r.col(3, Q)?,
            key: serde_json::from_str(r.col(4, Q)?).unwrap_or_default(),
            contenders: serde_json::from_str(r.col(5, Q)?).unwrap_or_default(),
            winner: r.col(6, Q)?,
            reason: r.col(7, Q)?,
        })
    }
}

/// The conflict history, oldest first; `since` is an interval (`1 hour`)
/// or a time.
pub fn conflicts(c: &mut impl GenericClient, sync: Option<&str>, since: Option<&str>) -> Result<Vec<ConflictRow>> {
    // A time starts with a year; anything else is an interval back from now.
    let (ts, iv) = match since.map(str::trim) {
        Some(s) if s.len() >= 4 && s[..4].chars().all(|c| c.is_ascii_digit()) => (Some(s), None),
        Some(s) => (None, Some(s)),
        None => (None, None),
    };
    let rows = c
        .query(
            "SELECT to_char(ctime, 'YYYY-MM-DD HH24:MI:SS.MS'), sync, run, tbl, key::text, contenders::text, winner, reason
               FROM capra.conflict
              WHERE ($1::text IS NULL OR sync = $1)
                AND ($2::text IS NULL OR ctime >= $2::text::timestamptz)
                AND ($3::text IS NULL OR ctime >= now() - $3::text::interval)
              ORDER BY ctime, id",
            &[&sync, &ts, &iv],
        )
        .map_err(|e| match e.code() {
            Some(s) if s.code().starts_with("22") => Error::Usage(format!(
                "--since {:?}: give an interval such as '1 hour' or a time such as '2026-12-01 10:00' ({})",
                since.unwrap_or(""),
                crate::pg::error::describe(&e)
            )),
            _ => Error::Db {
                context: "reading the conflict history".into(),
                detail: crate::pg::error::describe(&e),
                driver: e,
            },
        })?;
    rows.iter().map(ConflictRow::from_row).collect()
}

/// What `status` shows of a multi-master sync beyond the run counts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MultiMaster {
    /// The strategy in force for the sync (its own, or the default).
    pub strategy: String,
    /// Conflicts settled in the last 24 hours.
    pub conflicts_24h: i64,
    /// When the last conflict was settled.
    pub last_conflict: Option<String>,
    /// Per source, its clock minus the daemon host's (ms), at the newest
    /// run that measured it.
    pub clock_skew_ms: serde_json::Value,
}

/// The conflict summary and the clock skew of a sync.
pub fn multi_master(c: &mut impl GenericClient, sync: &str, strategy: String) -> Result<MultiMaster> {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM capra.conflict WHERE sync = $1 AND ctime > now() - interval '24 hours'),
                    (SELECT to_char(max(ctime), 'Mon DD, YYYY HH24:MI:SS') FROM capra.conflict WHERE sync = $1),
                    (SELECT (details->'clock_skew_ms')::text FROM capra.run
                      WHERE sync = $1 AND details ? 'clock_skew_ms' ORDER BY id DESC LIMIT 1)",
            &[&sync],
        )
        .ctx(|| "reading the conflict history".into())?;
    const Q: &str = "reading the conflict history";
    Ok(MultiMaster {
        strategy,
        conflicts_24h: r.col(0, Q)?,
        last_conflict: r.col(1, Q)?,
        clock_skew_ms: r
            .col::<_, Option<String>>(2, Q)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null),
    })
}

/// Marks kick requests answered and wakes whoever waits on them.
pub fn finish_kicks(
    c: &mut impl GenericClient,
    ids: &[i64],
    run_id: Option<i64>,
    ok: bool,
    error: Option<&str>,
) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    c.execute(
        "UPDATE capra.kick SET done = clock_timestamp(), run_id = $2, ok = $3, error = $4 WHERE id = ANY($1)",
        &[&ids, &run_id, &ok, &error],
    )
    .ctx(|| "answering kicks".into())?;
    c.batch_execute(&format!("NOTIFY {KICK_DONE_CHANNEL}"))
        .ctx(|| "answering kicks".into())?;
    Ok(())
}

/// Kick requests not answered yet: (id, sync).
pub fn pending_kicks(c: &mut impl GenericClient) -> Result<Vec<(i64, String)>> {
    const Q: &str = "reading kick requests";
    c.query("SELECT id, sync FROM capra.kick WHERE done IS NULL ORDER BY id", &[])
        .ctx(|| Q.into())?
        .iter()
        .map(|r| Ok((r.col(0, Q)?, r.col(1, Q)?)))
        .collect()
}

/// Closes runs a previous daemon left open (it died mid-run).
pub fn close_stale_runs(c: &mut impl GenericClient, who: Runner<'_>) -> Result<u64> {
    c.execute(
        "UPDATE capra.run SET state = 'bad', ended = clock_timestamp(),
                error = 'the daemon stopped during this run (pid ' || coalesce(pid::text, '?') || ' on '
                        || coalesce(host, '?') || '); it was rolled back and is re-run by pid ' || $1::int::text
                        || ' on ' || $2
          WHERE state = 'running' AND coalesce(epoch, 0) < $3",
        &[&who.pid, &who.host, &who.epoch],
    )
    .ctx(|| "closing runs of a previous daemon".into())
}

/// Drops history older than `days`, keeping each sync's last good and bad run.
pub fn prune(c: &mut impl GenericClient, days: i64) -> Result<u64> {
    let n = c
        .execute(
            "DELETE FROM capra.run r WHERE r.ended < now() - make_interval(days => $1::int)
                AND NOT EXISTS (SELECT 1 FROM capra.sync_state s WHERE s.last_good = r.id OR s.last_bad = r.id)",
            &[&(days as i32)],
        )
        .ctx(|| "pruning run history".into())?;
    c.execute(
        "DELETE FROM capra.kick WHERE done < now() - make_interval(days => $1::int)",
        &[&(days as i32)],
    )
    .ctx(|| "pruning kick history".into())?;
    c.execute(
        "DELETE FROM capra.conflict WHERE ctime < now() - make_interval(days => $1::int)",
        &[&(days as i32)],
    )
    .ctx(|| "pruning the conflict history".into())?;
    Ok(n)
}

/// One recorded run, as status shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunInfo {
    /// id.
    pub id: i64,
    /// started.
    pub started: String,
    /// ended.
    pub ended: String,
    /// age secs.
    pub age_secs: f64,
    /// seconds.
    pub seconds: f64,
    /// inserts.
    pub inserts: i64,
    /// deletes.
    pub deletes: i64,
    /// truncates.
    pub truncates: i64,
    /// conflicts.
    pub conflicts: i64,
    /// error.
    pub error: Option<String>,
    /// What sort of trouble the error was (failed runs recorded by a
    /// daemon that knows kinds).
    pub kind: Option<crate::error::Kind>,
    /// today.
    pub today: bool,
    /// Tables a good run set aside, each as `table: error`.
    pub failed_tables: Vec<String>,
}

/// A run by id (None: no such run).
pub fn run_info(c: &mut impl GenericClient, id: Option<i64>) -> Result<Option<RunInfo>> {
    let Some(id) = id else { return Ok(None) };
    let r = c
        .query_opt(
            "SELECT id, to_char(started, 'Mon DD, YYYY HH24:MI:SS'), to_char(ended, 'Mon DD, YYYY HH24:MI:SS'),
                    extract(epoch FROM now() - ended)::float8, extract(epoch FROM ended - started)::float8,
                    inserts, deletes, truncates, conflicts, error, ended::date = current_date,
                    details->>'kind', (details->'failed_tables')::text
               FROM capra.run WHERE id = $1",
            &[&id],
        )
        .ctx(|| "reading run history".into())?;
    const Q: &str = "reading run history";
    r.map(|r| {
        Ok(RunInfo {
            id: r.col(0, Q)?,
            started: r.col(1, Q)?,
            ended: r.col::<_, Option<String>>(2, Q)?.unwrap_or_default(),
            age_secs: r.col::<_, Option<f64>>(3, Q)?.unwrap_or(0.0),
            seconds: r.col::<_, Option<f64>>(4, Q)?.unwrap_or(0.0),
            inserts: r.col(5, Q)?,
            deletes: r.col(6, Q)?,
            truncates: r.col(7, Q)?,
            conflicts: r.col(8, Q)?,
            error: r.col(9, Q)?,
            today: r.col::<_, Option<bool>>(10, Q)?.unwrap_or(false),
            kind: r
                .col::<_, Option<String>>(11, Q)?
                .as_deref()
                .and_then(crate::error::Kind::parse),
            failed_tables: failed_tables(r.col(12, Q)?),
        })
    })
    .transpose()
}

/// The `failed_tables` of a run's details as `table: error` lines
/// (details a run of another version wrote may lack them).
fn failed_tables(json: Option<String>) -> Vec<String> {
    let list: Vec<serde_json::Value> = json.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
    list.iter()
        .map(|f| {
            format!(
                "{}: {}",
                crate::pg::ident::show_qualified(f["table"].as_str().unwrap_or("?")),
                f["error"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// A sync's quick state (`capra.sync_state`).
#[derive(Clone, Debug, Default)]
pub struct SyncState {
    /// Last good run.
    pub last_good: Option<i64>,
    /// Last failed run.
    pub last_bad: Option<i64>,
    /// When a run last found nothing to do.
    pub last_empty: Option<String>,
    /// Failures in a row.
    pub failures: i32,
    /// When the next retry is due (time of day).
    pub next_retry: Option<String>,
}

/// Reads a sync's quick state.
pub fn sync_state(c: &mut impl GenericClient, sync: &str) -> Result<SyncState> {
    const Q: &str = "reading sync state";
    let row = c
        .query_opt(
            "SELECT last_good, last_bad, to_char(last_empty, 'Mon DD, YYYY HH24:MI:SS'), failures,
                    to_char(next_retry, 'HH24:MI:SS')
               FROM capra.sync_state WHERE sync = $1",
            &[&sync],
        )
        .ctx(|| Q.into())?;
    let Some(r) = row else {
        return Ok(SyncState::default());
    };
    Ok(SyncState {
        last_good: r.col(0, Q)?,
        last_bad: r.col(1, Q)?,
        last_empty: r.col(2, Q)?,
        failures: r.col(3, Q)?,
        next_retry: r.col(4, Q)?,
    })
}

/// When each sync's last good run ended (seconds since 1970): the end
/// `status` shows as "Last good", for the metrics.
pub fn last_good_times(c: &mut impl GenericClient) -> Result<Vec<(String, f64)>> {
    const Q: &str = "reading the last good runs";
    c.query(
        "SELECT s.sync, extract(epoch FROM r.ended)::float8 FROM capra.sync_state s
           JOIN capra.run r ON r.id = s.last_good WHERE r.ended IS NOT NULL ORDER BY 1",
        &[],
    )
    .ctx(|| Q.into())?
    .iter()
    .map(|r| Ok((r.col(0, Q)?, r.col(1, Q)?)))
    .collect()
}

/// When the sync's current run started (time of day), if one is recorded
/// as running.
pub fn running_since(c: &mut impl GenericClient, sync: &str) -> Result<Option<String>> {
    c.query_opt(
            "SELECT to_char(started, 'HH24:MI:SS') FROM capra.run WHERE sync = $1 AND state = 'running' ORDER BY id DESC LIMIT 1",
            &[&sync],
        )
        .ctx(|| "reading run history".into())?
        .map(|r| r.col(0, "reading run history"))
        .transpose()
}

/// When checktime next makes the sync run at the latest.
pub fn checktime_due(c: &mut impl GenericClient, sync: &str) -> Result<Option<String>> {
    c.query_one(
        "SELECT to_char(greatest(coalesce((SELECT max(ended) FROM capra.run WHERE sync = $1), now()),
                                     coalesce((SELECT last_empty FROM capra.sync_state WHERE sync = $1), now()))
                            + (SELECT checktime FROM capra.sync WHERE name = $1), 'Mon DD, YYYY HH24:MI:SS')",
        &[&sync],
    )
    .ctx(|| "computing the next run".into())?
    .col(0, "computing the next run")
}

/// Records a kick request for the daemon; returns its id.
pub fn request_kick(c: &mut impl GenericClient, sync: &str) -> Result<i64> {
    let what = format!("kicking sync \"{sync}\"");
    c.query_one("INSERT INTO capra.kick (sync) VALUES ($1) RETURNING id", &[&sync])
        .ctx(|| what.clone())?
        .col(0, &what)
}

/// How a kick ended: None while it waits; Some((ok, error)) once answered.
pub fn kick_result(c: &mut impl GenericClient, id: i64) -> Result<Option<(bool, Option<String>)>> {
    let r = c
        .query_one(
            "SELECT done IS NOT NULL, coalesce(ok, false), error FROM capra.kick WHERE id = $1",
            &[&id],
        )
        .ctx(|| "waiting for the kick".into())?;
    const Q: &str = "waiting for the kick";
    if !r.col::<_, bool>(0, Q)? {
        return Ok(None);
    }
    Ok(Some((r.col(1, Q)?, r.col(2, Q)?)))
}

/// The last compare of a sync, as `status SYNC` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LastCompare {
    /// When it ran (local time, to the second).
    pub ran_at: String,
    /// The database taken as right.
    pub truth: String,
    /// Tables and databases compared.
    pub tables: i32,
    /// Databases compared with the truth.
    pub dbs: i32,
    /// Keys that differed (after the repair, if one ran).
    pub differences: i32,
    /// Keys still changing when it stopped waiting.
    pub in_flight: i32,
    /// Rows repaired, if it repaired.
    pub repaired: Option<i32>,
}

impl LastCompare {
    /// One line for the status block.
    pub fn line(&self) -> String {
        let what = if self.differences == 0 {
            "identical".to_string()
        } else {
            format!("{} difference(s)", self.differences)
        };
        let mut s = format!(
            "{} (truth {}): {} table(s) on {} database(s), {what}",
            self.ran_at, self.truth, self.tables, self.dbs
        );
        if let Some(r) = self.repaired {
            s.push_str(&format!(", repaired {r} rows"));
        }
        if self.in_flight > 0 {
            s.push_str(&format!(", {} key(s) in flight", self.in_flight));
        }
        s
    }
}

/// Reads a sync's last compare, if it was ever compared.
pub fn last_compare(c: &mut impl GenericClient, sync: &str) -> Result<Option<LastCompare>> {
    const Q: &str = "reading the last compare";
    c.query_opt(
        "SELECT to_char(ran_at, 'YYYY-MM-DD HH24:MI:SS'), truth, tables, dbs, differences, in_flight, repaired
           FROM capra.compare_result WHERE sync = $1",
        &[&sync],
    )
    .ctx(|| Q.into())?
    .map(|r| {
        Ok(LastCompare {
            ran_at: r.col(0, Q)?,
            truth: r.col(1, Q)?,
            tables: r.col(2, Q)?,
            dbs: r.col(3, Q)?,
            differences: r.col(4, Q)?,
            in_flight: r.col(5, Q)?,
            repaired: r.col(6, Q)?,
        })
    })
    .transpose()
}

/// Where imported syncs came from (one sync, or all), each until its
/// first good run after the takeover: `status` shows it until then.
pub fn origins(c: &mut impl GenericClient, sync: Option<&str>) -> Result<Vec<(String, String)>> {
    const Q: &str = "reading where the syncs came from";
    c.query(
        "SELECT i.sync, i.origin, i.control, to_char(i.imported_at, 'YYYY-MM-DD HH24:MI:SS'), i.taken_over IS NOT NULL, i.copied
           FROM capra.imported i
          WHERE ($1::text IS NULL OR i.sync = $1)
            AND NOT EXISTS (SELECT 1 FROM capra.run r WHERE r.sync = i.sync AND r.state = 'good' AND r.started > i.taken_over)
          ORDER BY i.sync",
        &[&sync],
    )
    .ctx(|| Q.into())?
    .iter()
    .map(|r| {
        let (origin, control, at): (String, String, String) = (r.col(1, Q)?, r.col(2, Q)?, r.col(3, Q)?);
        let taken: bool = r.col(4, Q)?;
        let copied: Vec<String> = r.col(5, Q)?;
        let origin = if origin == "bucardo" { "Bucardo" } else { origin.as_str() };
        let mut s = format!("{origin} ({control}) on {at}; no good run yet");
        if !taken {
            s.push_str("; the takeover did not finish: run capra import bucardo again");
        }
        if !copied.is_empty() {
            s.push_str(&format!("; its first run copies {} whole", copied.join(", ")));
        }
        Ok((r.col(0, Q)?, s))
    })
    .collect()
}
