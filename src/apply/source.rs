//! The read side of a run: each source in its own snapshot, what changed
//! there since the sync's position (its change logs and truncations), and
//! what a run writes back into a source's own log (keys to send again).

use std::collections::{BTreeSet, HashMap};

use postgres::Transaction;

use super::context::{RunCache, RunEnv};
use super::error::ApplyError;
use super::table::{array_params, key_columns, makedelta_any, unnest_select, TableCtx, RUN_MEMORY, TEXT_FORMATS};
use crate::catalog::model::{Db, Relation};
use crate::catalog::plan::SyncPlan;
use crate::error::{Context, Error, Result};
use crate::pg::pool::Conn;
use crate::pg::RowExt;

/// Whether a run reads change logs: a delta sync whose changes someone
/// receives (a target, or another source).
pub(super) fn reads_changes(plan: &SyncPlan) -> bool {
    plan.is_delta() && (!plan.targets.is_empty() || plan.sources.len() > 1)
}

/// Checks a snapshot string before it is inlined into a COPY query (COPY
/// takes no parameters); it comes from the server, but trust nothing.
pub(super) fn snapshot_literal(s: &str) -> Result<String> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ':' || c == ',') {
        Ok(format!("'{s}'::txid_snapshot"))
    } else {
        Err(ApplyError::BadSnapshot { text: s.to_string() }.into())
    }
}

/// Captured tables of a database: (schema, table) -> (captured id, the key
/// columns of its change log).
pub(super) type Captured = HashMap<(String, String), (i32, Vec<String>)>;

/// One source in a run: its read transaction and what changed there.
pub(super) struct Src<'c> {
    pub(super) db: Db,
    pub(super) tx: Transaction<'c>,
    /// This run's snapshot (stored as the new position at the end).
    pub(super) cur: String,
    /// The stored position, as a checked literal (delta syncs).
    pub(super) prev_lit: Option<String>,
    /// `AND ...` excluding this sync's own makedelta writes from the log
    /// rows `d` (empty when makedelta cannot apply to this database).
    pub(super) own: String,
    /// Transactions in which this sync logged keys again (`reraise`):
    /// their change time is the logged one.
    pub(super) reraised: Vec<i64>,
    /// Whether the server records commit times.
    pub(super) commit_ts: bool,
    /// Whether the database is SQL_ASCII: its text may be any bytes, so
    /// rows travel unchecked and keys escaped (see `table::key_out`).
    pub(super) raw: bool,
    /// Its clock minus this host's, in milliseconds, at the snapshot.
    pub(super) clock_skew_ms: f64,
    /// (schema, table) -> (captured id, key columns of its log).
    pub(super) captured: Captured,
    pub(super) changed: BTreeSet<i32>,
    pub(super) truncated: BTreeSet<i32>,
    /// Tables one of whose partitions was truncated (or dropped).
    pub(super) parts_truncated: BTreeSet<i32>,
    /// Tables to copy whole (capture lost their key).
    pub(super) recopy: BTreeSet<i32>,
    /// Its write transaction, when it receives (multi-master).
    pub(super) recv: Option<usize>,
}

impl Src<'_> {
    /// The rows of a change log this run takes: committed after the stored
    /// position and visible in this run's snapshot (the snapshot itself is
    /// the transaction's), minus this sync's own makedelta rows.
    pub(super) fn window(&self) -> String {
        let p = self.prev_lit.as_deref().unwrap_or("NULL");
        format!(
            "d.capra_txid >= txid_snapshot_xmin({p}) AND NOT txid_visible_in_snapshot(d.capra_txid, {p}){}",
            self.own
        )
    }

    /// The change time `latest` compares, over a group of log rows `d`.
    pub(super) fn time_expr(&self) -> String {
        if self.commit_ts {
            let logged = if self.reraised.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = self.reraised.iter().map(|t| t.to_string()).collect();
                format!("WHEN d.capra_txid IN ({}) THEN d.capra_ts ", ids.join(", "))
            };
            format!(
                "extract(epoch FROM max(CASE {logged}ELSE coalesce(pg_catalog.pg_xact_commit_timestamp((d.capra_txid % 4294967296)::text::xid), d.capra_ts) END))::float8"
            )
        } else {
            "extract(epoch FROM max(d.capra_ts))::float8".into()
        }
    }

    /// Whether this run found anything for a captured table here: changes,
    /// a truncation of it or of a partition, or a lost key.
    pub(super) fn touched(&self, id: i32) -> bool {
        self.changed.contains(&id)
            || self.truncated.contains(&id)
            || self.parts_truncated.contains(&id)
            || self.recopy.contains(&id)
    }

    /// Whether this run found anything here at all.
    pub(super) fn touched_any(&self) -> bool {
        !(self.changed.is_empty()
            && self.truncated.is_empty()
            && self.parts_truncated.is_empty()
            && self.recopy.is_empty())
    }

    pub(super) fn id_of(&self, t: &Relation) -> Option<i32> {
        self.captured
            .get(&(t.name.schema.clone(), t.name.name.clone()))
            .map(|c| c.0)
    }
}

/// This host's clock, for the skew measured against each source.
pub(super) fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The stored position read with a run's snapshot: (this snapshot, the
/// stored one, whether the server records commit times, its clock).
/// The snapshot now, the stored position, whether commit times are kept,
/// the server's clock, and whether the database is SQL_ASCII.
type Position = (String, Option<String>, bool, f64, bool);

impl<'c> Src<'c> {
    /// Opens one source for a run: its read transaction, the tables (and
    /// change logs) locked before the snapshot, the sync's position there,
    /// and the clock skew measured against this host.
    pub(super) fn open(c: &'c mut Conn, db: Db, env: &RunEnv<'_>, plan: &SyncPlan, cache: &RunCache) -> Result<Self> {
        let name = plan.name().to_string();
        let iso = env.isolation.level();
        let logs = logs_to_lock(c, env, plan, cache, &db.name)?;
        let mut tx = c
            .build_transaction()
            .isolation_level(iso)
            .start()
            .ctx(|| format!("starting the read transaction on \"{}\"", db.name))?;
        tx.batch_execute(&lock_setup(env, plan, &logs))
            .ctx(|| format!("locking the tables of sync \"{name}\" on \"{}\"", db.name))?;
        let before = now_epoch();
        let (cur, prev, commit_ts, clock, raw) = read_position(&mut tx, env, plan, &db.name)?;
        let skew = (clock - (before + now_epoch()) / 2.0) * 1000.0;
        let prev_lit = match &prev {
            Some(p) => Some(snapshot_literal(p)?),
            None => None,
        };
        // This sync's own makedelta writes here are not this database's
        // changes; keys it logged again keep their logged time.
        let own = if makedelta_any(plan, &db.name) {
            format!(
                " AND NOT EXISTS (SELECT 1 FROM capra.applied a WHERE a.installation = {} AND a.sync = {} AND a.txid = d.capra_txid AND a.kind = 'm')",
                crate::capture::install::sql_literal(env.installation),
                crate::capture::install::sql_literal(&name)
            )
        } else {
            String::new()
        };
        let reraised: Vec<i64> = if plan.is_delta() && commit_ts {
            tx.query(
                "SELECT txid FROM capra.applied WHERE installation = $1 AND sync = $2 AND kind = 'r'",
                &[&env.installation, &name],
            )
            .ctx(|| format!("reading what sync \"{name}\" logged again on \"{}\"", db.name))?
            .iter()
            .map(|r| r.col(0, "the keys logged again"))
            .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Src {
            db,
            tx,
            cur,
            prev_lit,
            own,
            reraised,
            commit_ts,
            raw,
            clock_skew_ms: (skew * 10.0).round() / 10.0,
            captured: HashMap::new(),
            changed: BTreeSet::new(),
            truncated: BTreeSet::new(),
            parts_truncated: BTreeSet::new(),
            recopy: BTreeSet::new(),
            recv: None,
        })
    }
}

/// Names a run's session for its transaction, `capra KID (pid N) SYNC`
/// as Bucardo's KIDs do, so a DBA (or an audit trigger) can tell which
/// daemon and sync write.
pub(super) fn run_name(sync: &str) -> String {
    format!(
        "SET LOCAL application_name = {}",
        crate::capture::install::sql_literal(&format!("capra KID (pid {}) {sync}", std::process::id()))
    )
}

/// The session settings and locks a source's read transaction starts with.
///
/// Keys and rows travel as text: make that text mean the same on every
/// server whatever its defaults (ISO dates parse under any DateStyle;
/// floats round-trip exactly). Then take ACCESS SHARE locks on every table
/// the run reads, before the snapshot (neither SET nor LOCK takes it): a
/// table rewritten by ALTER ... TYPE, VACUUM FULL or CLUSTER after the
/// snapshot would otherwise look empty to this run. The locks never block
/// writers; DDL waits at most for the run, the run waits at most
/// lock_timeout for DDL and is then retried. A delta sync's transaction
/// writes positions, so the fence check comes first (a fullcopy sync's
/// only reads); the first query takes the snapshot, after the locks.
fn lock_setup(env: &RunEnv<'_>, plan: &SyncPlan, logs: &[i32]) -> String {
    let mut setup = format!(
        "{TEXT_FORMATS}; SET LOCAL lock_timeout = {}; {}",
        env.lock_timeout_ms,
        run_name(plan.name())
    );
    if !plan.tables.is_empty() {
        let mut names: Vec<String> = plan.tables.iter().map(|t| t.name.sql()).collect();
        if reads_changes(plan) {
            names.extend(logs.iter().map(|id| crate::capture::install::delta_table(*id)));
            if !logs.is_empty() {
                names.push("capra.truncate_log".into());
            }
        }
        setup.push_str(&format!("; LOCK TABLE {} IN ACCESS SHARE MODE", names.join(", ")));
    }
    if plan.is_delta() {
        setup.push_str(&format!("; {}", env.fence));
    }
    setup.push_str(&format!("; {RUN_MEMORY}"));
    setup
}

/// The change logs a run locks before its snapshot: those the last run
/// read, or on the first run after a start, a reload or a failure, the
/// sync's logs as the source lists them (read outside the run's
/// transaction, which must not take its snapshot before the locks).
fn logs_to_lock(c: &mut Conn, env: &RunEnv<'_>, plan: &SyncPlan, cache: &RunCache, db: &str) -> Result<Vec<i32>> {
    if !reads_changes(plan) {
        return Ok(Vec::new());
    }
    if let Some(logs) = cache.logs.get(db) {
        return Ok(logs.clone());
    }
    c.query(
        "SELECT ct.captured FROM capra.consumer_table ct
          WHERE ct.installation = $1 AND ct.sync = $2
            AND pg_catalog.to_regclass('capra.delta_' || ct.captured) IS NOT NULL",
        &[&env.installation, &plan.name()],
    )
    .ctx(|| format!("reading the change logs of sync \"{}\" on \"{db}\"", plan.name()))?
    .iter()
    .map(|r| r.col(0, "capra.consumer_table"))
    .collect()
}

/// Reads this run's snapshot and, for a delta sync, the stored position
/// (refusing a position the database has not reached: it was restored).
fn read_position(tx: &mut Transaction<'_>, env: &RunEnv<'_>, plan: &SyncPlan, db: &str) -> Result<Position> {
    let name = plan.name();
    if !plan.is_delta() {
        let r = tx
            .query_one(
                "SELECT txid_current_snapshot()::text, extract(epoch FROM clock_timestamp())::float8,
                        current_setting('server_encoding') = 'SQL_ASCII'",
                &[],
            )
            .ctx(|| format!("reading a snapshot on \"{db}\""))?;
        let what = "a snapshot";
        return Ok((r.col(0, what)?, None, false, r.col(1, what)?, r.col(2, what)?));
    }
    let row = tx
        .query_opt(
            "SELECT txid_current_snapshot()::text, c.snapshot::text,
                    txid_snapshot_xmin(c.snapshot) > txid_snapshot_xmax(txid_current_snapshot()),
                    coalesce(current_setting('track_commit_timestamp', true), 'off') = 'on',
                    extract(epoch FROM clock_timestamp())::float8,
                    current_setting('server_encoding') = 'SQL_ASCII'
               FROM capra.consumer c
              WHERE c.installation = $1 AND c.sync = $2 FOR UPDATE",
            &[&env.installation, &name],
        )
        .ctx(|| format!("reading sync \"{name}\"'s position on \"{db}\""))?;
    let Some(r) = row else {
        return Err(ApplyError::NotInstalled {
            sync: name.to_string(),
            db: db.to_string(),
        }
        .into());
    };
    let what = "the sync's position";
    let cur: String = r.col(0, what)?;
    let prev: String = r.col(1, what)?;
    if r.col::<_, bool>(2, what)? && plan.sync.onetimecopy != crate::domain::OneTimeCopy::All {
        return Err(ApplyError::PositionAhead {
            sync: name.to_string(),
            db: db.to_string(),
            applied: prev.split(':').next().unwrap_or("?").to_string(),
            at: cur.split(':').nth(1).unwrap_or("?").to_string(),
        }
        .into());
    }
    Ok((cur, Some(prev), r.col(3, what)?, r.col(4, what)?, r.col(5, what)?))
}

/// Reads which of the plan's tables changed on one source since its
/// position, and which were truncated.
pub(super) fn scan(env: &RunEnv<'_>, plan: &SyncPlan, cache: &mut RunCache, s: &mut Src<'_>) -> Result<()> {
    let name = plan.name();
    let window = s.window();
    let stx = &mut s.tx;
    for r in stx
        .query("SELECT id, schemaname, relname, keycols FROM capra.captured", &[])
        .ctx(|| "reading captured tables".into())?
    {
        let what = "capra.captured";
        s.captured
            .insert((r.col(1, what)?, r.col(2, what)?), (r.col(0, what)?, r.col(3, what)?));
    }
    // The tables this sync captures, in this run's own snapshot: a table
    // added to the sync since the plan was read must not have its changes
    // skipped by moving the position past them.
    let mine: Vec<i32> = stx
        .query(
            "SELECT captured FROM capra.consumer_table WHERE installation = $1 AND sync = $2",
            &[&env.installation, &name],
        )
        .ctx(|| "reading the sync's captured tables".into())?
        .iter()
        .map(|r| r.col(0, "capra.consumer_table"))
        .collect::<Result<_>>()?;
    let planned: Vec<i32> = plan
        .tables
        .iter()
        .filter_map(|t| {
            s.captured
                .get(&(t.name.schema.clone(), t.name.name.clone()))
                .map(|c| c.0)
        })
        .collect();
    cache.logs.insert(s.db.name.clone(), planned.clone());
    let extra: Vec<i32> = mine.iter().filter(|id| !planned.contains(id)).copied().collect();
    if !extra.is_empty() {
        return Err(unplanned(s, name, extra));
    }
    let mut parts = Vec::new();
    for t in &plan.tables {
        let id = s
            .captured
            .get(&(t.name.schema.clone(), t.name.name.clone()))
            .map(|c| c.0)
            .ok_or_else(|| ApplyError::NotCaptured {
                table: t.name.shown(),
                sync: name.to_string(),
                db: s.db.name.clone(),
            })?;
        parts.push(format!(
            "SELECT {id} WHERE EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE {window})"
        ));
    }
    if !parts.is_empty() {
        for r in stx
            .query(parts.join(" UNION ALL ").as_str(), &[])
            .ctx(|| format!("looking for changes on \"{}\"", s.db.name))?
        {
            s.changed.insert(r.col(0, "the changed tables")?);
        }
    }
    for r in stx
        .query(
            &format!("SELECT DISTINCT captured, part FROM capra.truncate_log d WHERE {window}"),
            &[],
        )
        .ctx(|| "reading truncations".into())?
    {
        let what = "capra.truncate_log";
        let id: i32 = r.col(0, what)?;
        match r.col::<_, Option<String>>(1, what)?.as_deref() {
            None => s.truncated.insert(id),
            // Capture lost the key (a key column was dropped): only a full
            // copy is exact.
            Some("*") => s.recopy.insert(id),
            Some(_) => s.parts_truncated.insert(id),
        };
    }
    Ok(())
}

/// The error for tables this sync captures on a source that its plan does
/// not know (added since the plan was read): the daemon reads it again.
fn unplanned(s: &Src<'_>, name: &str, extra: Vec<i32>) -> Error {
    let what: Vec<String> = extra
        .iter()
        .map(|id| {
            s.captured
                .iter()
                .find(|(_, v)| v.0 == *id)
                .map(|(k, _)| format!("{}.{}", k.0, k.1))
                .unwrap_or_else(|| format!("captured table {id}"))
        })
        .collect();
    Error::Stale {
        message: format!(
            "sync \"{name}\" captures {} on \"{}\", which its plan does not know; reading the sync again",
            what.join(", "),
            s.db.name
        ),
        extra,
    }
}

/// Per source, the newest change time over every table in this run
/// (`latest_all_tables` ranks sources by it).
pub(super) fn newest_changes(srcs: &mut [Src<'_>], plan: &SyncPlan) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for s in srcs.iter_mut() {
        let parts: Vec<String> = plan
            .tables
            .iter()
            .filter_map(|t| s.id_of(t))
            .filter(|id| s.changed.contains(id))
            .map(|id| {
                format!(
                    "SELECT {} AS at FROM capra.delta_{id} d WHERE {}",
                    s.time_expr(),
                    s.window()
                )
            })
            .collect();
        let at: Option<f64> = if parts.is_empty() {
            None
        } else {
            s.tx.query_one(&format!("SELECT max(at) FROM ({}) x", parts.join(" UNION ALL ")), &[])
                .ctx(|| format!("reading the newest change on \"{}\"", s.db.name))?
                .col(0, "the newest change")?
        };
        out.push(at.unwrap_or(f64::NEG_INFINITY));
    }
    Ok(out)
}

/// Each table's live column names and types on the source, in one round
/// trip: when it differs from what a run learned before (a column added,
/// dropped or retyped), the table's shape is learned again, so no stale
/// column list survives DDL.
pub(super) fn column_signatures(stx: &mut Transaction<'_>, tables: &[Relation]) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = tables.iter().map(|t| t.name.sql()).collect();
    let rows = stx
        .query(
            "SELECT coalesce((SELECT pg_catalog.format('%s:%s:%s', c.oid, c.relkind, (SELECT count(*) FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid))
                                FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(n.name)), '') || '|' ||
                    coalesce((SELECT string_agg(a.attname || ':' || a.atttypid, ',' ORDER BY a.attnum)
                                FROM pg_catalog.pg_attribute a
                               WHERE a.attrelid = to_regclass(n.name) AND a.attnum > 0 AND NOT a.attisdropped), '')
               FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i) ORDER BY n.i",
            &[&names],
        )
        .ctx(|| "reading the tables' columns on the source".into())?;
    rows.iter().map(|r| r.col(0, "the tables' columns")).collect()
}

/// Learns once per controller (and after DDL) which of the plan's tables are
/// partitioned on the source, then on every run follows their partitions
/// before the snapshot: new partitions get a TRUNCATE trigger, and rows
/// that came or went with an ATTACH or DETACH are logged as changes.
pub(super) fn follow_partitions(
    conn: &mut Conn,
    env: &RunEnv<'_>,
    plan: &SyncPlan,
    cache: &mut RunCache,
    db: &str,
) -> Result<()> {
    if !cache.partitioned.contains_key(db) {
        let names: Vec<String> = plan.tables.iter().map(|t| t.name.sql()).collect();
        let found = conn
            .query(
                "SELECT n.i::int FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
                   JOIN pg_catalog.pg_class c ON c.oid = to_regclass(n.name) WHERE c.relkind = 'p'",
                &[&names],
            )
            .ctx(|| format!("looking for partitioned tables on \"{db}\""))?;
        let mut tables = Vec::new();
        for r in found {
            let i: i32 = r.col(0, "the partitioned tables")?;
            if let Some(t) = usize::try_from(i - 1).ok().and_then(|i| plan.tables.get(i)) {
                tables.push(t.name.clone());
            }
        }
        cache.partitioned.insert(db.to_string(), tables);
    }
    let parts = cache.partitioned.get(db).cloned().unwrap_or_default();
    for t in &parts {
        // Two steps: TRUNCATE triggers for new partitions first (DDL, a
        // short lock), then the keys of partitions that came or went are
        // logged without blocking the application's writes to them.
        for triggers_only in [true, false] {
            let mut tx = conn
                .transaction()
                .ctx(|| format!("following the partitions of {} on \"{db}\"", t.shown()))?;
            tx.batch_execute(&format!("{}; SET LOCAL lock_timeout = '5s'", env.fence))
                .ctx(|| "setting a lock timeout".into())?;
            let id: Option<i32> = tx
                .query_opt(
                    "SELECT id FROM capra.captured WHERE schemaname = $1 AND relname = $2",
                    &[&t.schema, &t.name],
                )
                .ctx(|| "reading capture".into())?
                .map(|r| r.col(0, "capra.captured"))
                .transpose()?;
            let Some(id) = id else { break };
            let moved = crate::capture::install::cover_partitions(&mut tx, id, t, true, triggers_only)?;
            tx.commit()
                .ctx(|| format!("following the partitions of {} on \"{db}\"", t.shown()))?;
            if moved > 0 {
                tracing::info!(
                    "{moved} partition(s) of {} attached, detached or dropped on \"{db}\"; their rows replicate as changes",
                    t.human()
                );
            }
        }
    }
    Ok(())
}

/// Before the snapshot: a table of the plan that joined an inheritance
/// tree while no DDL follower switched its capture (capra's role is no
/// superuser, or the switch failed) is switched to row triggers now, in a
/// transaction of its own, and everything it may have missed since is
/// repaired by the next run (see `capture::install::switch_joined`). The
/// question costs one query per run; a transaction only when one switches.
pub(super) fn follow_trees(conn: &mut Conn, env: &RunEnv<'_>, plan: &SyncPlan, db: &str) -> Result<()> {
    let names: Vec<crate::pg::ident::QualName> = plan.tables.iter().map(|t| t.name.clone()).collect();
    for j in crate::capture::install::joined_trees(&mut **conn, &names)? {
        let t = j.table.shown();
        let mut tx = conn
            .transaction()
            .ctx(|| format!("switching the capture of {t} to row triggers on \"{db}\""))?;
        tx.batch_execute(&format!("{}; SET LOCAL lock_timeout = '5s'", env.fence))
            .ctx(|| "setting a lock timeout".into())?;
        crate::capture::install::switch_joined(&mut tx, &j)?;
        tx.commit()
            .ctx(|| format!("switching the capture of {t} to row triggers on \"{db}\""))?;
        tracing::warn!(
            "{t} joined an inheritance tree on \"{db}\" and its capture switched to row triggers only now; the next run compares all its keys"
        );
    }
    Ok(())
}

/// Logs keys once more on a source, in its read transaction (so they are
/// after the position this run stores): the next run sends them again.
/// The change time kept is the one the source logged for the key, else
/// `fallback` (say, when it truncated the table), else now.
pub(super) fn reraise(s: &mut Src<'_>, tab: &TableCtx<'_>, keys: &[Vec<String>], fallback: Option<&str>) -> Result<()> {
    let t = tab.t;
    let Some(id) = s.id_of(t) else { return Ok(()) };
    let types = tab.types_on(&s.db.name);
    let qk = &tab.qk;
    let arrays = key_columns(keys, qk.len());
    let params = array_params(&arrays);
    let names: Vec<String> = (1..=qk.len()).map(|j| format!("a{j}")).collect();
    let ops = tab.ops_on(&s.db.name);
    let eq: Vec<String> = qk
        .iter()
        .zip(&names)
        .zip(&ops)
        .map(|((k, a), op)| format!("d.{k} {op} u.{a}"))
        .collect();
    let sql = format!(
        "INSERT INTO capra.delta_{id} ({}, capra_ts)
         SELECT u.*, coalesce((SELECT to_timestamp({}) FROM capra.delta_{id} d WHERE {} AND {}), {}, statement_timestamp())
           FROM ({}) AS u({})",
        qk.join(", "),
        s.time_expr(),
        s.window(),
        eq.join(" AND "),
        fallback.unwrap_or("NULL"),
        unnest_select(&types, None, false),
        names.join(", ")
    );
    s.tx.execute(&sql, &params)
        .ctx(|| format!("logging keys of {} again on \"{}\"", t.name.shown(), s.db.name))?;
    crate::capture::install::note_relogged(&mut s.tx, id, &s.db.name)?;
    Ok(())
}
