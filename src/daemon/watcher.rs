//! Watchers (the part of Bucardo's MCP that hears about changes): one
//! thread per source *server*, which costs the application's writes
//! nothing. Capture triggers only log; they send no NOTIFY (a NOTIFY per
//! writing transaction serialises commits on the server's notification
//! queue and cost about 8% of pgbench's throughput).
//!
//! Instead a watcher polls the server's transaction snapshot
//! (`txid_current_snapshot()`, no table read) every few milliseconds while
//! things move, every [`POLL_IDLE`] when they paused and every
//! [`POLL_DEEP_IDLE`] after a quiet second. The end of any
//! transaction that wrote changes the snapshot (its id leaves the
//! in-progress list, or the next id to hand out moves), so an unchanged
//! snapshot means nothing committed. When it changed, the watcher asks each
//! watched database, in one prepared statement, which change logs of
//! autokick tables received rows that its previous answer's snapshot did
//! not see (the rule runs use), and kicks only the syncs of those tables.
//! A change still in progress at one question is in that snapshot's
//! in-progress list, so its commit changes the snapshot and the next
//! question sees it: nothing is missed, however late it commits.
//!
//! Transaction ids are per server, so one snapshot poll serves every
//! database on it (20 databases on one server cost one query per poll).
//! Which databases share a server is asked of the server itself (its
//! postmaster's start time and port), so databases behind one pooler
//! address but on different servers are each polled.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{CtlMsg, Engine, Reason, WatcherHandle};
use crate::catalog::model::Db;
use crate::logging;
use crate::sys::lock;

/// Poll interval while changes flow.
const POLL_BUSY: Duration = Duration::from_millis(2);
/// Poll interval when nothing changed for a moment (the interval doubles
/// from POLL_BUSY up to this).
const POLL_IDLE: Duration = Duration::from_millis(25);
/// Poll interval once nothing changed for [`DEEP_IDLE_AFTER`]: an idle
/// daemon stays under 1% of a core, and the first change after a quiet
/// spell waits at most this long to be noticed.
const POLL_DEEP_IDLE: Duration = Duration::from_millis(50);
/// How long nothing must change before polls slow to [`POLL_DEEP_IDLE`].
const DEEP_IDLE_AFTER: Duration = Duration::from_secs(1);
/// A database is asked again at the earliest after this many times its
/// last question took (at most [`ASK_SPACING_MAX`]), so that writes that
/// touch no captured table (which move the server's snapshot too) cost the
/// watcher at most a tenth of a core.
const ASK_SPACING: u32 = 10;
/// The longest wait between two questions to one database.
const ASK_SPACING_MAX: Duration = Duration::from_millis(15);

/// Which server a database lives on (databases on one server share
/// transaction ids, so one watcher serves them all).
pub(super) fn server_key(db: &Db) -> String {
    format!(
        "{}|{}|{}|{}",
        db.host.as_deref().unwrap_or(""),
        db.port.unwrap_or(0),
        db.service.as_deref().unwrap_or(""),
        db.conn
    )
}

/// A connection owned by its own thread, so a server that stops answering
/// (hung, or behind a network that swallows packets while the kernel still
/// acknowledges them) costs a bounded wait instead of a stuck watcher. An
/// abandoned thread ends once its query returns or its connection dies.
pub(super) struct Bounded {
    tx: std::sync::mpsc::Sender<Work>,
}

/// What a [`Bounded`] connection's thread runs.
type Work = Box<dyn FnOnce(&mut postgres::Client) + Send>;

impl Bounded {
    pub(super) fn new(mut client: postgres::Client) -> Result<Bounded, String> {
        let (tx, rx) = std::sync::mpsc::channel::<Work>();
        crate::sys::spawn("capra-watch-conn", move || {
            while let Ok(f) = rx.recv() {
                f(&mut client);
                if client.is_closed() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(Bounded { tx })
    }

    /// Runs `f`, whose errors are already text, on the connection; an
    /// error once `within` has passed.
    pub(super) fn call_text<R: Send + 'static>(
        &self,
        within: Duration,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, String> + Send + 'static,
    ) -> Result<R, String> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        self.tx
            .send(Box::new(move |c| {
                let _ = rtx.send(f(c));
            }))
            .map_err(|_| "connection closed".to_string())?;
        Pending(rrx).wait(within)
    }

    /// Runs `f` on the connection; an error once `within` has passed.
    pub(super) fn call<R: Send + 'static>(
        &self,
        within: Duration,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, String> {
        self.start(f)?.wait(within)
    }

    /// Starts `f` on the connection's thread; [`Pending::wait`] takes the
    /// answer (so questions to several databases run at once).
    fn start<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<Pending<R>, String> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        self.tx
            .send(Box::new(move |c| {
                let _ = rtx.send(f(c).map_err(|e| crate::pg::error::describe(&e)));
            }))
            .map_err(|_| "connection closed".to_string())?;
        Ok(Pending(rrx))
    }
}

/// An answer on its way from a [`Bounded`] connection.
struct Pending<R>(std::sync::mpsc::Receiver<Result<R, String>>);

impl<R> Pending<R> {
    /// The answer, or an error once `within` has passed.
    fn wait(self, within: Duration) -> Result<R, String> {
        match self.0.recv_timeout(within) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {}s", within.as_secs_f64()))
            }
            Err(_) => Err("connection closed".to_string()),
        }
    }
}

/// What asking a database started: an answer already known, or a question
/// on its way.
enum Asking {
    Known(Vec<String>),
    Sent(Pending<Vec<(Option<i32>, Option<String>)>>),
}

/// Takes a sync out of the autokick routes.
fn forget_in(s: &mut HashMap<String, (Db, HashSet<String>)>, sync: &str) {
    for v in s.values_mut() {
        v.1.remove(sync);
    }
    s.retain(|_, v| !v.1.is_empty());
}

/// One watched database: its connection, its prepared question and the
/// snapshot of its last answer.
struct Watched {
    db: Db,
    client: Option<Bounded>,
    /// The server it is on, as the server tells it.
    server: String,
    /// The snapshot poll, prepared once (one round trip per poll).
    poll: Option<postgres::Statement>,
    /// The question and, per captured id it covers, the syncs it kicks.
    question: Option<(postgres::Statement, HashMap<i32, Vec<String>>)>,
    /// The routes generation the question was built for.
    generation: u64,
    /// The snapshot of the last answer (start of the next window).
    pos: Option<String>,
    pending: bool,
    not_before: Instant,
    reported: bool,
}

impl Engine {
    /// Registers a sync's sources for autokick (and starts their watchers).
    pub(super) fn set_routes(self: &Arc<Self>, sync: &str, sources: Vec<Db>, autokick: bool) {
        {
            // One write: no other thread ever sees the sync missing.
            let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
            forget_in(&mut s, sync);
            if autokick {
                for db in sources {
                    let e = s.entry(db.name.clone()).or_insert_with(|| (db.clone(), HashSet::new()));
                    e.0 = db;
                    e.1.insert(sync.to_string());
                }
            }
        }
        self.routes_gen.fetch_add(1, Ordering::SeqCst);
        self.refresh_watchers();
    }

    pub(super) fn forget_routes(self: &Arc<Self>, sync: &str) {
        forget_in(&mut self.sources.write().unwrap_or_else(|e| e.into_inner()), sync);
        self.routes_gen.fetch_add(1, Ordering::SeqCst);
        self.refresh_watchers();
    }

    /// One watcher per server that some autokick sync reads.
    fn refresh_watchers(self: &Arc<Self>) {
        // The routes are read under the watchers' lock, so two refreshes
        // cannot interleave and stop a watcher the other still needs.
        let mut ws = lock(&self.watchers);
        let wanted: HashSet<String> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| server_key(&v.0))
            .collect();
        let stale: Vec<String> = ws.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for k in stale {
            if let Some(h) = ws.remove(&k) {
                h.stop.store(true, Ordering::SeqCst);
            }
        }
        for key in wanted {
            if ws.contains_key(&key) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let me = self.clone();
            let st = stop.clone();
            let k = key.clone();
            let join = match crate::sys::spawn("capra-watch", move || me.watch_server(k, st)) {
                Ok(j) => Some(j),
                Err(e) => {
                    // Its syncs still run on mcp_pingtime and kicks.
                    tracing::error!("Cannot watch for changes: {e}");
                    None
                }
            };
            ws.insert(key, WatcherHandle { stop, join });
        }
    }

    /// The autokick source databases on this server, with their syncs.
    fn members(&self, key: &str) -> Vec<(Db, Vec<String>)> {
        let mut v: Vec<(Db, Vec<String>)> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|v| server_key(&v.0) == key)
            .map(|v| (v.0.clone(), v.1.iter().cloned().collect()))
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    }

    /// Kicks every autokick sync reading this source.
    fn kick_all_of(&self, db: &str) {
        let syncs: Vec<String> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(db)
            .map(|v| v.1.iter().cloned().collect())
            .unwrap_or_default();
        for s in syncs {
            self.tell(&s, CtlMsg::Kick(Reason::Autokick, None));
        }
    }

    fn watch_server(self: Arc<Self>, key: String, stop: Arc<AtomicBool>) {
        let _r = logging::role("MCP", None);
        let mut sw = ServerWatch::new(key);
        while !stop.load(Ordering::SeqCst) && !self.is_stopping() {
            // The generation first: routes changed after this are seen by
            // the next turn, never stamped with a stale sync list.
            let gen = self.routes_gen.load(Ordering::SeqCst);
            let fresh = gen != sw.members_gen;
            if fresh {
                sw.members = self.members(&sw.key);
                sw.members_gen = gen;
            }
            if sw.members.is_empty() {
                std::thread::sleep(POLL_IDLE);
                continue;
            }
            let within = crate::pg::connect::net_defaults().connect_timeout;
            sw.connect_due(&self, fresh, within);
            let moved = sw.poll_snapshots(within);
            let found = sw.ask_due(&self, gen, within);
            sw.ping_if_due(&self, within);
            std::thread::sleep(sw.pace(moved || found));
        }
    }
}

/// What one watcher thread knows of its server between turns.
struct ServerWatch {
    key: String,
    watched: HashMap<String, Watched>,
    /// Per server: the snapshot last seen.
    snapshots: HashMap<String, String>,
    interval: Duration,
    last_ping: Instant,
    members: Vec<(Db, Vec<String>)>,
    members_gen: u64,
    last_move: Instant,
}

impl ServerWatch {
    fn new(key: String) -> ServerWatch {
        ServerWatch {
            key,
            watched: HashMap::new(),
            snapshots: HashMap::new(),
            interval: POLL_BUSY,
            last_ping: Instant::now(),
            members: Vec::new(),
            members_gen: u64::MAX,
            last_move: Instant::now(),
        }
    }

    /// Opens the connections that are missing and due; with new routes,
    /// every database is asked again.
    fn connect_due(&mut self, engine: &Engine, fresh: bool, within: Duration) {
        if fresh {
            let members = &self.members;
            self.watched.retain(|n, _| members.iter().any(|(d, _)| &d.name == n));
        }
        let now = Instant::now();
        for (db, _) in &self.members {
            if !fresh && self.watched.get(&db.name).is_some_and(|w| w.client.is_some()) {
                continue;
            }
            if let Some(w) = self.watched.get_mut(&db.name) {
                // New routes: ask again even if nothing moves (changes to
                // tables just added may have committed already); new
                // connection settings: a new connection.
                w.pending = true;
                if w.db != *db {
                    w.client = None;
                }
            }
            let w = self.watched.entry(db.name.clone()).or_insert_with(|| Watched {
                db: db.clone(),
                client: None,
                server: String::new(),
                poll: None,
                question: None,
                generation: u64::MAX,
                pos: None,
                pending: true,
                not_before: now,
                reported: false,
            });
            w.db = db.clone();
            if w.client.is_none() && now >= w.not_before {
                if let Err(e) = engine.connect(w, within) {
                    w.fail(&e);
                }
            }
        }
    }

    /// One snapshot poll per server, on any of its connections; true when
    /// a snapshot moved (its databases are then asked).
    fn poll_snapshots(&mut self, within: Duration) -> bool {
        let mut polled: HashSet<String> = HashSet::new();
        let mut moved = false;
        for (db, _) in &self.members {
            let n = &db.name;
            let Some(w) = self.watched.get(n) else { continue };
            let Some(c) = w.client.as_ref() else {
                // Unreachable: asked again once it is back.
                continue;
            };
            if !polled.insert(w.server.clone()) {
                continue;
            }
            let server = w.server.clone();
            let Some(stmt) = w.poll.clone() else { continue };
            let snap = c.call(within, move |c| {
                c.query_one(&stmt, &[]).and_then(|r| r.try_get::<_, String>(0))
            });
            match snap {
                Ok(s) => {
                    if self.snapshots.get(&server) != Some(&s) {
                        self.snapshots.insert(server.clone(), s);
                        moved = true;
                        for w in self.watched.values_mut().filter(|w| w.server == server) {
                            w.pending = true;
                        }
                    }
                }
                Err(e) => {
                    let _db = logging::field("db", n);
                    tracing::warn!("Lost the watching connection to database \"{n}\": {e}; reconnecting");
                    if let Some(w) = self.watched.get_mut(n) {
                        w.reported = true;
                        w.client = None;
                        w.pending = true;
                    }
                    polled.remove(&server);
                }
            }
        }
        moved
    }

    /// Every database due is asked at once (each on its own connection),
    /// then the answers are read and the syncs they name kicked; true when
    /// any was.
    fn ask_due(&mut self, engine: &Engine, gen: u64, within: Duration) -> bool {
        let mut found = false;
        let now = Instant::now();
        let mut asking = Vec::new();
        for (db, syncs) in &self.members {
            let Some(w) = self.watched.get_mut(&db.name) else {
                continue;
            };
            if w.client.is_none() || !w.pending || now < w.not_before {
                continue;
            }
            w.pending = false;
            match engine.ask(w, syncs, gen, within) {
                Ok(a) => asking.push((db.name.clone(), Instant::now(), a)),
                Err(e) => engine.ask_failed(w, &e),
            }
        }
        for (name, asked, a) in asking {
            let Some(w) = self.watched.get_mut(&name) else { continue };
            let kick = match a {
                Asking::Known(k) => Ok(k),
                Asking::Sent(p) => p.wait(within).map(|rows| w.answer(rows)),
            };
            match kick {
                Ok(kick) => {
                    found |= !kick.is_empty();
                    w.not_before = Instant::now() + (asked.elapsed() * ASK_SPACING).min(ASK_SPACING_MAX);
                    for s in kick {
                        engine.tell(&s, CtlMsg::Kick(Reason::Autokick, None));
                    }
                }
                Err(e) => engine.ask_failed(w, &e),
            }
        }
        found
    }

    /// Every mcp_pingtime: each connection (the ones of a server not
    /// polled idle for long) must answer within connect_timeout, and every
    /// autokick sync runs once (the safety net for a change this logic
    /// missed).
    fn ping_if_due(&mut self, engine: &Engine, within: Duration) {
        let pingtime = engine.cfg.read().unwrap_or_else(|e| e.into_inner()).pingtime;
        if self.last_ping.elapsed() < Duration::from_secs_f64(pingtime.max(1.0)) {
            return;
        }
        self.last_ping = Instant::now();
        for w in self.watched.values_mut() {
            let Some(c) = w.client.as_ref() else { continue };
            if let Err(e) = c.call(within, move |c| c.is_valid(within)) {
                let _db = logging::field("db", &w.db.name);
                tracing::warn!(
                    "The watching connection to database \"{}\" failed its check: {e}; reconnecting",
                    w.db.name
                );
                w.reported = true;
                w.client = None;
                w.pending = true;
            }
        }
        for (db, _) in &self.members {
            engine.kick_all_of(&db.name);
        }
    }

    /// How long to sleep: short while things move, doubling to the idle
    /// poll, and longer after a quiet second.
    fn pace(&mut self, busy: bool) -> Duration {
        if busy {
            self.last_move = Instant::now();
        }
        let cap = if self.last_move.elapsed() >= DEEP_IDLE_AFTER {
            POLL_DEEP_IDLE
        } else {
            POLL_IDLE
        };
        self.interval = if busy { POLL_BUSY } else { (self.interval * 2).min(cap) };
        self.interval
    }
}

impl Engine {
    /// Opens a watched database's connection: bounded waits on the server
    /// side too (a question that waits for a lock gives up there, so an
    /// abandoned connection never lingers), custom plans for nothing, and
    /// which server it is.
    fn connect(&self, w: &mut Watched, within: Duration) -> Result<(), String> {
        let c = self
            .pools
            .pool(&w.db)
            .and_then(|p| p.dedicated())
            .map_err(|e| e.to_string())?;
        let c = Bounded::new(c)?;
        let timeout = (within.as_millis() / 2).max(1000) as i64;
        let (server, poll) = c.call(within, move |c| {
            c.batch_execute(&format!(
                "SET lock_timeout = {timeout}; SET statement_timeout = {timeout}; SET application_name = 'capra watcher'"
            ))?;
            let server = c
                .query_one(
                    "SELECT pg_catalog.pg_postmaster_start_time()::text || ' ' || pg_catalog.current_setting('port')",
                    &[],
                )?
                .try_get::<_, String>(0)?;
            Ok((server, c.prepare("SELECT txid_current_snapshot()::text")?))
        })?;
        if w.reported {
            let _db = logging::field("db", &w.db.name);
            tracing::info!("Database \"{}\" is reachable again; resuming its syncs", w.db.name);
            w.reported = false;
        }
        w.client = Some(c);
        w.server = server;
        w.poll = Some(poll);
        w.question = None;
        w.pending = true;
        Ok(())
    }

    /// Asks one database which autokick tables' logs received rows since
    /// its last answer; returns the syncs to kick. A new connection or a
    /// new set of routes kicks every sync of the database (changes may have
    /// committed while nobody asked).
    fn ask(&self, w: &mut Watched, syncs: &[String], gen: u64, within: Duration) -> Result<Asking, String> {
        let c = w.client.as_ref().ok_or("not connected")?;
        if w.question.is_none() || w.generation != gen {
            let (inst, list) = (self.installation.clone(), syncs.to_vec());
            let (stmt, routes) = c.call(within, move |c| {
                let rows = c.query(
                    "SELECT captured, array_agg(sync::text ORDER BY sync) FROM capra.consumer_table
                      WHERE installation = $1 AND autokick AND sync = ANY($2) GROUP BY captured ORDER BY captured",
                    &[&inst, &list],
                )?;
                let routes = rows
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<HashMap<i32, Vec<String>>, postgres::Error>>()?;
                let mut ids: Vec<i32> = routes.keys().copied().collect();
                ids.sort();
                Ok((c.prepare(&question_sql(&ids))?, routes))
            })?;
            w.question = Some((stmt, routes));
            w.generation = gen;
            w.pos = None;
        }
        let Some(pos) = w.pos.clone() else {
            // No window yet: start one here and let every sync look.
            let snap = c.call(within, |c| {
                c.query_one("SELECT txid_current_snapshot()::text", &[])
                    .and_then(|r| r.try_get::<_, String>(0))
            })?;
            w.pos = Some(snap);
            return Ok(Asking::Known(syncs.to_vec()));
        };
        let Some((stmt, _)) = w.question.as_ref() else {
            return Err("no question prepared".into());
        };
        let stmt = stmt.clone();
        let xip = in_progress(&pos);
        let sent = c.start(move |c| {
            c.query(&stmt, &[&pos, &xip])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        })?;
        Ok(Asking::Sent(sent))
    }

    /// A question that failed: a change log dropped under it (a table left
    /// capture) rebuilds it quietly; anything else reconnects.
    fn ask_failed(&self, w: &mut Watched, e: &str) {
        if e.contains("does not exist") {
            tracing::debug!("Rebuilding the question to \"{}\": {e}", w.db.name);
            w.question = None;
            w.pending = true;
            w.not_before = Instant::now() + Duration::from_millis(500);
        } else {
            w.fail(e);
        }
    }
}

impl Watched {
    /// Reads an answer: the new window start, and the syncs to kick.
    fn answer(&mut self, rows: Vec<(Option<i32>, Option<String>)>) -> Vec<String> {
        let mut kick: HashSet<String> = HashSet::new();
        let routes = self.question.as_ref().map(|q| &q.1);
        for (id, snap) in rows {
            match id {
                None => self.pos = snap,
                Some(id) => kick.extend(routes.and_then(|r| r.get(&id)).into_iter().flatten().cloned()),
            }
        }
        kick.into_iter().collect()
    }

    /// A failed connection or question: warned once, retried in 500 ms.
    fn fail(&mut self, e: &str) {
        if !self.reported {
            let _db = logging::field("db", &self.db.name);
            if self.client.is_some() {
                tracing::warn!(
                    "Lost the watching connection to database \"{}\": {e}; reconnecting",
                    self.db.name
                );
            } else {
                tracing::warn!("Cannot watch database \"{}\" for changes: {e}; retrying", self.db.name);
            }
            self.reported = true;
        }
        self.client = None;
        self.question = None;
        self.pending = true;
        self.not_before = Instant::now() + Duration::from_millis(500);
    }
}

/// The in-progress transaction ids of a snapshot's text (`xmin:xmax:xip,...`).
fn in_progress(snapshot: &str) -> Vec<i64> {
    snapshot
        .split(':')
        .nth(2)
        .unwrap_or("")
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// The watcher's question to one database: its snapshot, then the captured
/// ids among `ids` whose change log (or truncation log) has rows the
/// snapshot `$1` did not see: written by a transaction at or after its
/// xmax, or by one of its in-progress ones (`$2`). One prepared statement;
/// `ORDER BY txid LIMIT 1` keeps the first probe an index scan starting at
/// that xmax whatever plan the statement caches (never a scan of the whole
/// unpurged log, nor of rows purged but not yet vacuumed, which sit below
/// it), so asking costs a couple of index probes per table.
fn question_sql(ids: &[i32]) -> String {
    let mut sql = String::from(
        "SELECT NULL::int, txid_current_snapshot()::text
         UNION ALL SELECT DISTINCT d.captured, NULL FROM capra.truncate_log d
          WHERE d.capra_txid >= txid_snapshot_xmax($1::text::txid_snapshot) OR d.capra_txid = ANY ($2::bigint[])",
    );
    for id in ids {
        sql.push_str(&format!(
            "\n UNION ALL SELECT {id}, NULL
                 WHERE EXISTS (SELECT 1 FROM (SELECT d.capra_txid FROM capra.delta_{id} d WHERE d.capra_txid >= txid_snapshot_xmax($1::text::txid_snapshot)
                                               ORDER BY d.capra_txid LIMIT 1) x)
                    OR EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE d.capra_txid = ANY ($2::bigint[]))"
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_progress_ids_of_a_snapshot() {
        assert_eq!(super::in_progress("10:20:12,15"), vec![12, 15]);
        assert!(super::in_progress("10:10:").is_empty());
    }
}
