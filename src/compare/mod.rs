//! Compare and repair: proving that every database of a sync holds the
//! truth's rows, naming exactly the keys that differ, and repairing them
//! through the engine.
//!
//! - `shape`: how one table is read on two servers (digests, keys, block
//!   ranges, pinned settings).
//! - `scan`: the fan-out of range sums that finds candidate keys.
//! - `verdict`: candidates judged by equality lookup, in flight or not.
//! - this file: a whole compare of a sync, its record in the catalog, and
//!   the repair's hand-over to the engine (keys logged on the truth as its
//!   changes, so the next run applies them with hooks, foreign keys and
//!   conflict rules as usual).

mod error;
mod preview;
mod scan;
mod shape;
mod verdict;

use std::time::Duration;

use postgres::{Client, GenericClient};
use serde::Serialize;

pub use error::CompareError;
pub use preview::{preview, ConflictPlan, Preview, TablePlan};

use crate::catalog::model::{self, Db, Relation};
use crate::catalog::plan::SyncPlan;
use crate::error::{Context, Result};
use crate::pg::RowExt;
use scan::Key;
use verdict::{Judge, Log};

/// How long a key that keeps changing is checked again before it is
/// reported as in flight rather than judged.
const SETTLE: Duration = Duration::from_secs(15);

/// What to compare.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The sync.
    pub sync: String,
    /// Tables (schema-qualified or not); empty: every table of the sync.
    pub tables: Vec<String>,
    /// The database taken as right (default: the sync's first source).
    pub truth: Option<String>,
}

/// One table on one database, compared with the truth.
#[derive(Clone, Debug, Serialize)]
pub struct TableResult {
    /// `schema.table`.
    pub table: String,
    /// The database compared with the truth.
    pub db: String,
    /// Rows on the truth.
    pub rows: i64,
    /// Key column names.
    #[serde(skip)]
    pub keycols: Vec<String>,
    /// On the truth only.
    pub missing: Vec<Key>,
    /// On the other database only.
    pub extra: Vec<Key>,
    /// On both, with other values.
    pub different: Vec<Key>,
    /// Still changing (changes the sync has not applied yet) when the
    /// compare stopped waiting for them: not differences.
    pub in_flight: Vec<Key>,
    /// Of the differences, keys changed on a source that the sync did not
    /// apply while the compare waited (it did not run at all meanwhile).
    pub unapplied: usize,
}

impl TableResult {
    /// Keys that differ, of any kind.
    pub fn differences(&self) -> usize {
        self.missing.len() + self.extra.len() + self.different.len()
    }

    /// Every differing key.
    pub fn keys(&self) -> Vec<Key> {
        self.missing
            .iter()
            .chain(&self.extra)
            .chain(&self.different)
            .cloned()
            .collect()
    }
}

/// A whole compare of a sync.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The sync.
    pub sync: String,
    /// The database taken as right.
    pub truth: String,
    /// No differences anywhere.
    pub identical: bool,
    /// One entry per table and database compared.
    pub tables: Vec<TableResult>,
    /// Bytes the servers sent for the compare (range sums, keys, digests).
    #[serde(skip)]
    pub bytes: u64,
    /// Rows repaired, when a repair ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<usize>,
}

impl Report {
    /// Differences over every table and database.
    pub fn differences(&self) -> usize {
        self.tables.iter().map(|t| t.differences()).sum()
    }

    /// Keys in flight over every table and database.
    pub fn in_flight(&self) -> usize {
        self.tables.iter().map(|t| t.in_flight.len()).sum()
    }

    /// Distinct tables and databases compared.
    pub fn counts(&self) -> (usize, usize) {
        let t: std::collections::BTreeSet<&str> = self.tables.iter().map(|t| t.table.as_str()).collect();
        let d: std::collections::BTreeSet<&str> = self.tables.iter().map(|t| t.db.as_str()).collect();
        (t.len(), d.len())
    }
}

/// One open database of a compare.
struct Link {
    db: Db,
    version: i32,
    encoding: String,
    source: bool,
    /// How to reach it again (to cancel a statement).
    tls: postgres_openssl::MakeTlsConnector,
}

/// Everything one compare works with: the plan, its tables, the truth and
/// the other databases, a connection to each.
struct Session {
    plan: SyncPlan,
    tables: Vec<Relation>,
    links: Vec<Link>,
    clients: Vec<Client>,
    truth: usize,
    installation: String,
    pause: Duration,
    /// No run can apply anything now: no daemon, the sync inactive, or its
    /// last run failed.
    standing: bool,
    /// Tables the sync's last good run set aside.
    set_aside: Vec<String>,
}

impl Session {
    fn open(c: &mut impl GenericClient, installation: &str, req: &Request) -> Result<Session> {
        let plan = SyncPlan::load(c, &req.sync)?;
        let all: Vec<(&Db, bool)> = plan
            .sources
            .iter()
            .map(|d| (d, true))
            .chain(plan.targets.iter().chain(&plan.fullcopy).map(|d| (d, false)))
            .collect();
        let truth_name = match &req.truth {
            Some(t) => t.clone(),
            None => plan.sources.first().map(|d| d.name.clone()).unwrap_or_default(),
        };
        let Some(truth) = all.iter().position(|(d, _)| d.name == truth_name) else {
            return Err(CompareError::TruthNotInSync {
                sync: req.sync.clone(),
                db: truth_name,
                dbs: all.iter().map(|(d, _)| d.name.as_str()).collect::<Vec<_>>().join(", "),
            }
            .into());
        };
        if all.len() < 2 {
            return Err(CompareError::NothingToCompare {
                sync: req.sync.clone(),
                truth: truth_name,
            }
            .into());
        }
        let tables = pick_tables(&plan, &req.tables)?;
        let (standing, set_aside) = standing(c, &plan)?;
        let pause_ms: u64 = model::setting(c, "compare_throttle")?.parse().unwrap_or(0);
        let mut links = Vec::new();
        let mut clients = Vec::new();
        for (d, source) in &all {
            let target = format!("database \"{}\"", d.name);
            let resolved = crate::pg::connect::resolve_for(&d.conn_spec(), "capra", &target)?;
            let mut c = crate::pg::connect::open(&resolved, &target)?;
            c.batch_execute(shape::PINNED)
                .ctx(|| format!("setting up the compare session on \"{}\"", d.name))?;
            let (version, encoding) = shape::server(&mut c, &d.name)?;
            links.push(Link {
                db: (*d).clone(),
                version,
                encoding,
                source: *source,
                tls: resolved.tls,
            });
            clients.push(c);
        }
        Ok(Session {
            tables,
            links,
            clients,
            truth,
            installation: installation.to_string(),
            pause: Duration::from_millis(pause_ms),
            standing,
            set_aside,
            plan,
        })
    }

    /// The sources' change logs of a table, where the sync captures it.
    fn logs(&mut self, rel: &Relation, shape: &shape::Shape) -> Result<Vec<Log>> {
        let mut logs = Vec::new();
        if !self.plan.is_delta() {
            return Ok(logs);
        }
        for (i, l) in self.links.iter().enumerate().filter(|(_, l)| l.source) {
            let c = &mut self.clients[i];
            let q = format!("reading the capture of {} on \"{}\"", rel.name.shown(), l.db.name);
            let id: Option<i32> = c
                .query_opt(
                    "SELECT id FROM capra.captured WHERE schemaname = $1 AND relname = $2",
                    &[&rel.name.schema, &rel.name.name],
                )
                .ctx(|| q.clone())?
                .map(|r| r.col(0, &q))
                .transpose()?;
            let Some(id) = id else {
                return Err(CompareError::NotCaptured {
                    table: rel.name.shown(),
                    db: l.db.name.clone(),
                    sync: self.plan.name().to_string(),
                }
                .into());
            };
            let (types, ops) = shape::key_side(c, &l.db.name, shape)?;
            logs.push(Log {
                link: i,
                db: l.db.name.clone(),
                id,
                types,
                ops,
            });
        }
        Ok(logs)
    }

    /// One table's shape and sides between the databases `ti` (read as the
    /// truth) and `oi`, with the float digits that pair prints alike.
    fn learn(&mut self, rel: &Relation, ti: usize, oi: usize) -> Result<(shape::Shape, shape::Side, shape::Side)> {
        let (tl, ol) = (&self.links[ti], &self.links[oi]);
        let versions = (tl.version, ol.version);
        let same_encoding = tl.encoding == ol.encoding;
        let digits = shape::float_digits(tl.version, ol.version);
        let (tname, oname, tsrc, osrc) = (tl.db.name.clone(), ol.db.name.clone(), tl.source, ol.source);
        for i in [ti, oi] {
            self.clients[i]
                .batch_execute(&format!("SET extra_float_digits = {digits}"))
                .ctx(|| "setting extra_float_digits".into())?;
        }
        let (tc, oc) = two(&mut self.clients, ti, oi);
        shape::learn((&tname, tc, tsrc), (&oname, oc, osrc), rel, versions, same_encoding)
    }

    /// Compares one table on the database `oi` with the truth; `only`
    /// judges these keys instead of searching (a repair's re-check).
    fn table(&mut self, rel: &Relation, oi: usize, only: Option<Vec<Key>>) -> Result<(TableResult, u64)> {
        let ti = self.truth;
        let (shape, t, o) = self.learn(rel, ti, oi)?;
        let (tc, oc) = two(&mut self.clients, ti, oi);
        let (rows, candidates, bytes) = match only {
            Some(keys) => (-1, keys, 0),
            None => {
                let mut pair = scan::Pair {
                    truth: tc,
                    other: oc,
                    pause: self.pause,
                    tls: (&self.links[ti].tls, &self.links[oi].tls),
                };
                let f = scan::find(&mut pair, &shape, &t, &o)?;
                (f.rows, f.candidates.into_iter().collect(), f.bytes)
            }
        };
        let logs = self.logs(rel, &shape)?;
        let sync = self.plan.name().to_string();
        let mut judge = Judge {
            links: &mut self.clients,
            truth: ti,
            other: oi,
            shape: &shape,
            t: &t,
            o: &o,
            logs: &logs,
            consumer: (&self.installation, &sync),
            standing: self.standing || self.set_aside.contains(&rel.name.human()),
        };
        let j = judge.judge(candidates, SETTLE)?;
        Ok((
            TableResult {
                table: rel.name.human(),
                db: self.links[oi].db.name.clone(),
                rows,
                keycols: shape.keycols.clone(),
                missing: j.missing,
                extra: j.extra,
                different: j.different,
                in_flight: j.in_flight,
                unapplied: j.unapplied,
            },
            bytes,
        ))
    }
}

/// Whether the sync can apply nothing now (no daemon, inactive, its last
/// run failed), and the tables its last good run set aside.
fn standing(c: &mut impl GenericClient, plan: &SyncPlan) -> Result<(bool, Vec<String>)> {
    let q = format!("reading the state of sync \"{}\"", plan.name());
    let daemon = crate::catalog::runs::daemon(c)?.is_some();
    let r = c
        .query_opt(
            "SELECT s.failures > 0,
                    coalesce((SELECT array_agg(f->>'table') FROM capra.run r,
                                     jsonb_array_elements(coalesce(r.details->'failed_tables', '[]'::jsonb)) f
                               WHERE r.id = s.last_good), '{}')
               FROM capra.sync_state s WHERE s.sync = $1",
            &[&plan.name()],
        )
        .ctx(|| q.clone())?;
    let (failing, aside): (bool, Vec<String>) = match r {
        Some(r) => (r.col(0, &q)?, r.col(1, &q)?),
        None => (false, Vec::new()),
    };
    let active = plan.sync.status == crate::domain::Status::Active;
    Ok((!daemon || !active || failing, aside))
}

/// A lock_timeout while reading a table, as one line saying what to do.
fn locked(e: crate::Error, rel: &Relation, db: &str) -> crate::Error {
    if e.sqlstate() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
        let db = match &e {
            crate::Error::Db { context, .. } => context
                .rsplit('"')
                .nth(1)
                .map(String::from)
                .unwrap_or_else(|| db.to_string()),
            _ => db.to_string(),
        };
        return CompareError::Locked {
            table: rel.name.shown(),
            db,
        }
        .into();
    }
    e
}

/// Two distinct connections out of the list (the truth and another).
fn two(clients: &mut [Client], a: usize, b: usize) -> (&mut Client, &mut Client) {
    if a < b {
        let (x, y) = clients.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = clients.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// The sync's tables the request names (all when it names none).
fn pick_tables(plan: &SyncPlan, wanted: &[String]) -> Result<Vec<Relation>> {
    if wanted.is_empty() {
        return Ok(plan.tables.clone());
    }
    let mut out: Vec<Relation> = Vec::new();
    for w in wanted {
        let (schema, name) = crate::pg::ident::split_user_name(w).map_err(crate::Error::Usage)?;
        let hits = |fold: bool| -> Vec<&Relation> {
            let m = |p: &crate::pg::ident::NamePart, a: &str| p.matches(a) || (fold && p.matches_folded(a));
            plan.tables
                .iter()
                .filter(|t| m(&name, &t.name.name) && schema.as_ref().is_none_or(|s| m(s, &t.name.schema)))
                .collect()
        };
        let mut found = hits(false);
        if found.is_empty() {
            found = hits(true);
        }
        if found.is_empty() {
            return Err(CompareError::TableNotInSync {
                table: w.clone(),
                sync: plan.name().to_string(),
            }
            .into());
        }
        for f in found {
            if !out.iter().any(|t| t.id == f.id) {
                out.push(f.clone());
            }
        }
    }
    Ok(out)
}

/// Compares every requested table of the sync on every other active
/// database with the truth.
pub fn compare(c: &mut impl GenericClient, installation: &str, req: &Request) -> Result<Report> {
    let mut s = Session::open(c, installation, req)?;
    let mut report = Report {
        sync: req.sync.clone(),
        truth: s.links[s.truth].db.name.clone(),
        identical: true,
        tables: Vec::new(),
        bytes: 0,
        repaired: None,
    };
    let tables = s.tables.clone();
    let truth = s.truth;
    for oi in (0..s.links.len()).filter(|i| *i != truth) {
        for rel in &tables {
            let db = s.links[oi].db.name.clone();
            let (r, bytes) = s.table(rel, oi, None).map_err(|e| locked(e, rel, &db))?;
            report.bytes += bytes;
            report.tables.push(r);
        }
    }
    report.identical = report.differences() == 0;
    Ok(report)
}

/// Compares again only the keys a compare found different (after a
/// repair): the same report, with what is still different.
pub fn recheck(c: &mut impl GenericClient, installation: &str, req: &Request, before: &Report) -> Result<Report> {
    let mut s = Session::open(c, installation, req)?;
    let mut report = Report {
        tables: Vec::new(),
        ..before.clone()
    };
    let tables = s.tables.clone();
    for b in &before.tables {
        let Some(oi) = s.links.iter().position(|l| l.db.name == b.db) else {
            continue;
        };
        let Some(rel) = tables.iter().find(|t| t.name.human() == b.table) else {
            continue;
        };
        let mut keys = b.keys();
        keys.extend(b.in_flight.iter().cloned());
        let (mut r, _) = s.table(rel, oi, Some(keys))?;
        r.rows = b.rows;
        report.tables.push(r);
    }
    report.identical = report.differences() == 0;
    // Keys still changing are not counted as repaired.
    report.repaired = Some(
        before
            .differences()
            .saturating_sub(report.differences() + report.in_flight()),
    );
    Ok(report)
}

/// Hands the differing keys of a compare to the engine: each is logged
/// on the truth (a source of the sync) as a change of its own, so the
/// next run sends the truth's row, or its absence, to every database.
/// Returns how many keys were logged. A sync with no change capture (a
/// full copy every run) needs nothing logged.
pub fn log_repairs(c: &mut impl GenericClient, req: &Request, report: &Report) -> Result<usize> {
    let plan = repairable(c, req)?;
    let truth = plan.sources.iter().find(|d| d.name == report.truth);
    if !plan.is_delta() || report.differences() == 0 {
        return Ok(0);
    }
    let db = truth.cloned().unwrap_or_else(|| plan.sources[0].clone());
    let mut c = db.connect()?;
    // Key texts were printed under the compare's settings: read them so.
    c.batch_execute(shape::KEY_TEXT)
        .ctx(|| format!("setting up the repair session on \"{}\"", db.name))?;
    let mut tx = c
        .transaction()
        .ctx(|| format!("logging keys to repair on \"{}\"", db.name))?;
    let mut logged = 0;
    // Keys differing on several databases are logged once.
    let mut per_table: std::collections::BTreeMap<&str, std::collections::BTreeSet<Key>> = Default::default();
    for t in &report.tables {
        per_table.entry(&t.table).or_default().extend(t.keys());
    }
    for (table, keys) in per_table {
        if keys.is_empty() {
            continue;
        }
        let Some(rel) = plan.tables.iter().find(|t| t.name.human() == table) else {
            continue;
        };
        logged += shape::log_keys(
            &mut tx,
            (&db.name, &req.sync),
            rel,
            &keys.into_iter().collect::<Vec<_>>(),
        )?;
    }
    tx.commit()
        .ctx(|| format!("logging keys to repair on \"{}\"", db.name))?;
    Ok(logged)
}

/// Checks, before anything is compared, that a repair can go through the
/// engine: the truth must be a source of the sync (the repair is sent as
/// its changes). Returns the sync's plan.
pub fn repairable(c: &mut impl GenericClient, req: &Request) -> Result<SyncPlan> {
    let plan = SyncPlan::load(c, &req.sync)?;
    let Some(truth) = req.truth.as_deref() else {
        return Ok(plan);
    };
    if plan.sources.iter().any(|d| d.name == truth) {
        return Ok(plan);
    }
    let role = if plan.targets.iter().any(|d| d.name == truth) {
        "target"
    } else if plan.fullcopy.iter().any(|d| d.name == truth) {
        "fullcopy target"
    } else {
        return Ok(plan);
    };
    Err(CompareError::RepairNeedsSource {
        sync: req.sync.clone(),
        db: truth.to_string(),
        role: role.into(),
    }
    .into())
}

/// Keeps a compare's outcome as the sync's last compare (`status SYNC`
/// shows it; the daemon mails when it found differences).
pub fn record(c: &mut impl GenericClient, report: &Report) -> Result<()> {
    let (tables, dbs) = report.counts();
    let json = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
    c.execute(
        "INSERT INTO capra.compare_result (sync, ran_at, truth, tables, dbs, differences, in_flight, repaired, report)
         VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (sync) DO UPDATE SET ran_at = now(), truth = EXCLUDED.truth, tables = EXCLUDED.tables,
             dbs = EXCLUDED.dbs, differences = EXCLUDED.differences, in_flight = EXCLUDED.in_flight,
             repaired = EXCLUDED.repaired, report = EXCLUDED.report",
        &[
            &report.sync,
            &report.truth,
            &(tables as i32),
            &(dbs as i32),
            &(report.differences() as i32),
            &(report.in_flight() as i32),
            &report.repaired.map(|r| r as i32),
            &json,
        ],
    )
    .ctx(|| format!("recording the compare of sync \"{}\"", report.sync))?;
    Ok(())
}

/// Compares every active sync and records each outcome (the daemon's
/// `compare_schedule`); a sync that cannot be compared is logged and
/// skipped.
pub fn compare_all(c: &mut impl GenericClient, installation: &str) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    for s in model::syncs(c)?
        .into_iter()
        .filter(|s| s.status == crate::domain::Status::Active)
    {
        let req = Request {
            sync: s.name.clone(),
            ..Request::default()
        };
        match compare(c, installation, &req) {
            Ok(r) => {
                record(c, &r)?;
                out.push(r);
            }
            Err(e) => tracing::error!("Cannot compare sync \"{}\": {e}", s.name),
        }
    }
    Ok(out)
}
