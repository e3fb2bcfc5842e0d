//! Watchers (the part of Bucardo's MCP that hears about changes): one
//! thread per source *server*, which costs the application's writes
//! nothing. Capture triggers only log; they send no NOTIFY (a NOTIFY per
//! writing transaction serialises commits on the server's notification
//! queue and cost about 8% of pgbench's throughput).
//!
//! Instead a watcher polls the server's transaction snapshot
//! (`txid_current_snapshot()`, no table read) every few milliseconds while
//! things move and every [`POLL_IDLE`] when they do not. Any transaction
//! that writes takes a transaction id and changes the snapshot when it
//! starts and when it ends, so an unchanged snapshot means nothing
//! committed. When it changed, the watcher asks each watched database, in
//! one prepared statement, which change logs of autokick tables received
//! rows committed since its previous question (the window between two of
//! its own snapshots, the rule runs use), and kicks only the syncs of those
//! tables. A change still in progress at one question is in that
//! snapshot's in-progress list, so its commit changes the snapshot and the
//! next question sees it: nothing is missed, however late it commits.
//!
//! Transaction ids are per server, so one snapshot poll serves every
//! database on it (20 databases on one server cost one query per poll).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{lock, CtlMsg, Engine, Reason, WatcherHandle};
use super::logging;
use crate::catalog::model::Db;

/// Poll interval while changes flow.
const POLL_BUSY: Duration = Duration::from_millis(2);
/// Poll interval when nothing changed for a while (the interval doubles
/// from POLL_BUSY up to this).
const POLL_IDLE: Duration = Duration::from_millis(16);
/// A database is asked again at the earliest after this many times its
/// last question took, so that other databases' writes on the same server
/// (which move its snapshot too) cost at most a fifth of a core.
const ASK_SPACING: u32 = 4;

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
struct Bounded {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce(&mut postgres::Client) + Send>>,
}

impl Bounded {
    fn new(mut client: postgres::Client) -> Bounded {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce(&mut postgres::Client) + Send>>();
        let _ = std::thread::Builder::new()
            .name("capra-watch-conn".into())
            .spawn(move || {
                while let Ok(f) = rx.recv() {
                    f(&mut client);
                    if client.is_closed() {
                        return;
                    }
                }
            });
        Bounded { tx }
    }

    /// Runs `f` on the connection; an error once `within` has passed.
    fn call<R: Send + 'static>(
        &self,
        within: Duration,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, String> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        self.tx
            .send(Box::new(move |c| {
                let _ = rtx.send(f(c).map_err(|e| crate::pg::error::describe(&e)));
            }))
            .map_err(|_| "connection closed".to_string())?;
        match rrx.recv_timeout(within) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {}s", within.as_secs_f64()))
            }
            Err(_) => Err("connection closed".to_string()),
        }
    }
}

/// One watched database: its connection, its prepared question and the
/// snapshot of its last answer.
struct Watched {
    db: Db,
    client: Option<Bounded>,
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
        self.forget_routes_quietly(sync);
        if autokick {
            let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
            for db in sources {
                let e = s.entry(db.name.clone()).or_insert_with(|| (db.clone(), HashSet::new()));
                e.0 = db;
                e.1.insert(sync.to_string());
            }
        }
        self.routes_gen.fetch_add(1, Ordering::SeqCst);
        self.refresh_watchers();
    }

    pub(super) fn forget_routes(self: &Arc<Self>, sync: &str) {
        self.forget_routes_quietly(sync);
        self.routes_gen.fetch_add(1, Ordering::SeqCst);
        self.refresh_watchers();
    }

    fn forget_routes_quietly(&self, sync: &str) {
        let mut s = self.sources.write().unwrap_or_else(|e| e.into_inner());
        for v in s.values_mut() {
            v.1.remove(sync);
        }
        s.retain(|_, v| !v.1.is_empty());
    }

    /// One watcher per server that some autokick sync reads.
    fn refresh_watchers(self: &Arc<Self>) {
        let wanted: HashSet<String> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| server_key(&v.0))
            .collect();
        let mut ws = lock(&self.watchers);
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
            let join = std::thread::Builder::new()
                .name("capra-watch".into())
                .spawn(move || me.watch_server(k, st))
                .ok();
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
        let mut poller: Option<(String, Bounded)> = None;
        let mut watched: HashMap<String, Watched> = HashMap::new();
        let mut last_snapshot = String::new();
        let mut interval = POLL_BUSY;
        let mut last_ping = Instant::now();
        let mut retry_at = Instant::now();
        let mut lost = false;
        while !stop.load(Ordering::SeqCst) && !self.is_stopping() {
            let members = self.members(&key);
            if members.is_empty() {
                std::thread::sleep(POLL_IDLE);
                continue;
            }
            let within = crate::pg::connect::net_defaults().connect_timeout;
            watched.retain(|n, _| members.iter().any(|(d, _)| &d.name == n));
            for (db, _) in &members {
                let w = watched.entry(db.name.clone()).or_insert_with(|| Watched {
                    db: db.clone(),
                    client: None,
                    question: None,
                    generation: u64::MAX,
                    pos: None,
                    pending: true,
                    not_before: Instant::now(),
                    reported: false,
                });
                w.db = db.clone();
            }
            // The snapshot poll, on any one member's connection.
            if poller.as_ref().is_some_and(|(n, _)| !watched.contains_key(n)) {
                poller = None;
            }
            if poller.is_none() && Instant::now() >= retry_at {
                let db = &members[0].0;
                match self.pools.pool(db).and_then(|p| p.dedicated()) {
                    Ok(c) => {
                        if lost {
                            let _db = logging::field("db", &db.name);
                            tracing::info!("Database \"{}\" is reachable again; resuming its syncs", db.name);
                            lost = false;
                        }
                        poller = Some((db.name.clone(), Bounded::new(c)));
                    }
                    Err(e) => {
                        if !lost {
                            let _db = logging::field("db", &db.name);
                            tracing::warn!("Cannot watch database \"{}\" for changes: {e}; retrying", db.name);
                            lost = true;
                        }
                        retry_at = Instant::now() + Duration::from_millis(500);
                    }
                }
            }
            let mut moved = poller.is_none();
            if let Some((name, c)) = poller.as_ref() {
                let snap = c.call(within, |c| {
                    c.query_one("SELECT txid_current_snapshot()::text", &[])
                        .map(|r| r.get::<_, String>(0))
                });
                match snap {
                    Ok(s) => {
                        if s != last_snapshot {
                            last_snapshot = s;
                            moved = true;
                        }
                    }
                    Err(e) => {
                        let _db = logging::field("db", name);
                        tracing::warn!("Lost the watching connection to database \"{name}\": {e}; reconnecting");
                        lost = true;
                        poller = None;
                        moved = true;
                    }
                }
            }
            if moved {
                for w in watched.values_mut() {
                    w.pending = true;
                }
            }
            let gen = self.routes_gen.load(Ordering::SeqCst);
            let mut found = false;
            let now = Instant::now();
            for (db, syncs) in &members {
                let Some(w) = watched.get_mut(&db.name) else { continue };
                if !w.pending || now < w.not_before {
                    continue;
                }
                w.pending = false;
                let asked = Instant::now();
                match self.ask(w, syncs, gen, within) {
                    Ok(kick) => {
                        found |= !kick.is_empty();
                        w.not_before = Instant::now() + asked.elapsed() * ASK_SPACING;
                        for s in kick {
                            self.tell(&s, CtlMsg::Kick(Reason::Autokick, None));
                        }
                    }
                    Err(e) => {
                        if !w.reported {
                            let _db = logging::field("db", &db.name);
                            tracing::warn!("Cannot watch database \"{}\" for changes: {e}; retrying", db.name);
                            w.reported = true;
                        }
                        w.client = None;
                        w.question = None;
                        w.pending = true;
                        w.not_before = Instant::now() + Duration::from_millis(500);
                    }
                }
            }
            // Every mcp_pingtime: each asking connection (idle while
            // nothing moves) must answer within connect_timeout, and every
            // autokick sync runs once (the safety net for a change this
            // logic missed).
            let pingtime = self.cfg.read().unwrap_or_else(|e| e.into_inner()).pingtime;
            if last_ping.elapsed() >= Duration::from_secs_f64(pingtime.max(1.0)) {
                last_ping = Instant::now();
                for w in watched.values_mut() {
                    let Some(c) = w.client.as_ref() else { continue };
                    if let Err(e) = c.call(within, move |c| c.is_valid(within)) {
                        let _db = logging::field("db", &w.db.name);
                        tracing::warn!(
                            "The watching connection to database \"{}\" failed its check: {e}; reconnecting",
                            w.db.name
                        );
                        w.client = None;
                        w.question = None;
                        w.pending = true;
                    }
                }
                for (db, _) in &members {
                    self.kick_all_of(&db.name);
                }
            }
            interval = if moved || found {
                POLL_BUSY
            } else {
                (interval * 2).min(POLL_IDLE)
            };
            std::thread::sleep(interval);
        }
    }

    /// Asks one database which autokick tables' logs received rows since
    /// its last answer; returns the syncs to kick. A new connection or a
    /// new set of routes kicks every sync of the database (changes may have
    /// committed while nobody asked).
    fn ask(&self, w: &mut Watched, syncs: &[String], gen: u64, within: Duration) -> Result<Vec<String>, String> {
        if w.client.is_none() {
            let c = self
                .pools
                .pool(&w.db)
                .and_then(|p| p.dedicated())
                .map_err(|e| e.to_string())?;
            w.client = Some(Bounded::new(c));
            w.question = None;
            if w.reported {
                let _db = logging::field("db", &w.db.name);
                tracing::info!("Database \"{}\" is reachable again; resuming its syncs", w.db.name);
                w.reported = false;
            }
        }
        let c = w.client.as_ref().expect("connected");
        if w.question.is_none() || w.generation != gen {
            let (inst, list) = (self.installation.clone(), syncs.to_vec());
            let (stmt, routes) = c.call(within, move |c| {
                let rows = c.query(
                    "SELECT captured, array_agg(sync::text ORDER BY sync) FROM capra.consumer_table
                      WHERE installation = $1 AND autokick AND sync = ANY($2) GROUP BY captured ORDER BY captured",
                    &[&inst, &list],
                )?;
                let routes: HashMap<i32, Vec<String>> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
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
                    .map(|r| r.get::<_, String>(0))
            })?;
            w.pos = Some(snap);
            return Ok(syncs.to_vec());
        };
        let (stmt, routes) = w.question.as_ref().expect("prepared");
        let stmt = stmt.clone();
        let rows: Vec<(Option<i32>, Option<String>)> = c.call(within, move |c| {
            Ok(c.query(&stmt, &[&pos])?.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        let mut kick: HashSet<String> = HashSet::new();
        for (id, snap) in rows {
            match id {
                None => w.pos = snap,
                Some(id) => kick.extend(routes.get(&id).into_iter().flatten().cloned()),
            }
        }
        Ok(kick.into_iter().collect())
    }
}

/// The watcher's question to one database: its snapshot, then the captured
/// ids among `ids` whose change log (or truncation log) has rows committed
/// after the snapshot `$1` and visible now. One prepared statement, so
/// asking costs one index probe per table and no planning.
fn question_sql(ids: &[i32]) -> String {
    let window = "d.txid >= txid_snapshot_xmin($1::text::txid_snapshot) AND NOT txid_visible_in_snapshot(d.txid, $1::text::txid_snapshot)";
    let mut sql = format!(
        "SELECT NULL::int, txid_current_snapshot()::text
         UNION ALL SELECT DISTINCT d.captured, NULL FROM capra.truncate_log d WHERE {window}"
    );
    for id in ids {
        sql.push_str(&format!(
            "\n UNION ALL SELECT {id}, NULL WHERE EXISTS (SELECT 1 FROM capra.delta_{id} d WHERE {window})"
        ));
    }
    sql
}
