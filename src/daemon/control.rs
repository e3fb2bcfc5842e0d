//! The leader's control thread (Bucardo's MCP main loop): answers kick,
//! reload and stop requests on the control database, writes the heartbeat
//! and prunes run history.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::engine::{CtlMsg, Engine, Event, Reason};
use crate::catalog::runs;
use crate::logging;
use crate::pg::RowExt;

/// Requests that arrived on the control channel during one wait.
#[derive(Default)]
struct Requests {
    stop: Option<String>,
    kick: bool,
    reload: bool,
    /// The connection failed while waiting.
    lost: bool,
}

impl Requests {
    /// Waits up to 250 ms for requests and takes every one queued.
    fn wait(client: &mut postgres::Client) -> Requests {
        let mut r = Requests::default();
        let mut n = client.notifications();
        let first = n.timeout_iter(Duration::from_millis(250)).next();
        match first {
            Ok(None) => {}
            Ok(Some(note)) => {
                r.take(note.payload());
                let mut more = n.iter();
                while let Ok(Some(m)) = more.next() {
                    r.take(m.payload());
                }
            }
            Err(_) => r.lost = true,
        }
        r
    }

    fn take(&mut self, p: &str) {
        tracing::debug!("control request: {p:?}");
        match p
            .split_once(' ')
            .map(|(a, b)| (a, b.to_string()))
            .unwrap_or((p, String::new()))
        {
            ("kick", _) => self.kick = true,
            ("reload", _) => self.reload = true,
            ("stop", why) => self.stop = Some(if why.is_empty() { "capra stop".into() } else { why }),
            _ => {}
        }
    }
}

/// The control loop's clocks between turns.
struct ControlState {
    dispatched: HashSet<i64>,
    last_beat: Instant,
    last_poll: Instant,
    reload_at: Option<Instant>,
    last_prune: Instant,
    first_status: bool,
}

impl Engine {
    /// The control thread: answers requests, writes the heartbeat.
    /// `client` listens on the control channel already.
    pub fn control_loop(self: Arc<Self>, mut client: postgres::Client, spec: crate::pg::connect::ConnSpec) {
        let _r = logging::role("MCP", None);
        let mut st = ControlState {
            dispatched: HashSet::new(),
            last_beat: Instant::now(),
            last_poll: Instant::now() - Duration::from_secs(10),
            reload_at: None,
            last_prune: Instant::now(),
            first_status: true,
        };
        // A test hook: while this file exists the control loop hangs, as a
        // wedged engine would (the systemd watchdog then stops being fed).
        let wedge = std::env::var_os("CAPRA_TEST_WEDGE").map(std::path::PathBuf::from);
        loop {
            if self.is_stopping() {
                return;
            }
            while wedge.as_ref().is_some_and(|w| w.exists()) && !self.is_stopping() {
                std::thread::sleep(Duration::from_millis(100));
            }
            self.beat("control");
            let req = Requests::wait(&mut client);
            if req.reload {
                st.reload_at.get_or_insert(Instant::now() + Duration::from_millis(200));
            }
            if req.lost || client.is_closed() {
                match self.reconnect_control(&spec) {
                    Some(c) => {
                        client = c;
                        continue;
                    }
                    None => return,
                }
            }
            if let Some(r) = req.stop {
                self.send_event(Event::Stop(r));
            }
            if self.reload_requested.swap(false, Ordering::SeqCst) {
                st.reload_at = Some(Instant::now());
            }
            // A kick must see every catalog change committed before it: a
            // pending reload goes first (controllers get Reload before Kick).
            let kick_due = req.kick || st.last_poll.elapsed() >= Duration::from_secs(1);
            if st.reload_at.is_some_and(|t| Instant::now() >= t || kick_due) {
                st.reload_at = None;
                self.reload(&mut client);
            }
            if kick_due {
                st.last_poll = Instant::now();
                self.dispatch_kicks(&mut client, &mut st.dispatched);
            }
            if st.last_beat.elapsed() >= Duration::from_secs(5) || st.first_status {
                st.last_beat = Instant::now();
                st.first_status = false;
                self.heartbeat(&mut client);
            }
            if st.last_prune.elapsed() >= Duration::from_secs(3600) {
                st.last_prune = Instant::now();
                let days = self.cfg.read().unwrap_or_else(|e| e.into_inner()).history_days;
                match runs::prune(&mut client, days) {
                    Ok(n) if n > 0 => tracing::info!("Pruned {n} runs older than {days} days from the history"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("Pruning run history failed: {e}"),
                }
            }
        }
    }

    /// Reads the syncs again (controllers get Reload) and tells whoever
    /// waits for the reload (`capra reload`).
    fn reload(self: &Arc<Self>, client: &mut postgres::Client) {
        match self.sync_controllers() {
            Ok(active) => tracing::info!(
                "Reloaded: active syncs: {}",
                if active.is_empty() {
                    "none".into()
                } else {
                    active.join(",")
                }
            ),
            Err(e) => tracing::error!("Reload failed: {e}"),
        }
        let _ = client.batch_execute(&format!("NOTIFY {}", runs::RELOADED_CHANNEL));
    }

    /// Hands each new kick request to its sync's controller; a request for
    /// a sync this daemon does not run is answered at once.
    fn dispatch_kicks(&self, client: &mut postgres::Client, dispatched: &mut HashSet<i64>) {
        match runs::pending_kicks(client) {
            Ok(kicks) => {
                let pending: HashSet<i64> = kicks.iter().map(|k| k.0).collect();
                dispatched.retain(|id| pending.contains(id));
                for (id, sync) in kicks {
                    if dispatched.contains(&id) {
                        continue;
                    }
                    if self.tell(&sync, CtlMsg::Kick(Reason::Kick, Some(id))) {
                        dispatched.insert(id);
                    } else {
                        let msg = format!("sync \"{sync}\" is not active in the running daemon");
                        let _ = runs::finish_kicks(client, &[id], None, false, Some(&msg));
                    }
                }
            }
            Err(e) => tracing::warn!("Reading kick requests failed: {e}"),
        }
    }

    /// The heartbeat in the catalog, and systemd's STATUS= line: syncs,
    /// the newest good run, failing ones.
    fn heartbeat(&self, client: &mut postgres::Client) {
        if let Err(e) = client.execute("UPDATE capra.daemon SET heartbeat = now()", &[]) {
            tracing::warn!("Cannot write the heartbeat: {}", crate::pg::error::describe(&e));
        }
        let Ok(r) = client.query_one(
            "SELECT count(*), count(*) FILTER (WHERE st.failures > 0),
                    extract(epoch FROM now() - max(r.ended))::float8
               FROM capra.sync s
               LEFT JOIN capra.sync_state st ON st.sync = s.name
               LEFT JOIN capra.run r ON r.id = st.last_good
              WHERE s.status = 'active'",
            &[],
        ) else {
            return;
        };
        const Q: &str = "reading the daemon's status line";
        let (Ok(n), Ok(failing), Ok(age)) = (
            r.col::<_, i64>(0, Q),
            r.col::<_, i64>(1, Q),
            r.col::<_, Option<f64>>(2, Q),
        ) else {
            return;
        };
        let line = format!(
            "{n} sync{} active, last good {}, {failing} failing; {}",
            if n == 1 { "" } else { "s" },
            age.map(|a| format!("{:.0}s ago", a.max(0.0)))
                .unwrap_or_else(|| "never".into()),
            self.role.describe()
        );
        *crate::sys::lock(&self.status_line) = line;
    }

    /// Reconnects to the control database (the lease thread, not this
    /// connection, decides whether this daemon still leads).
    fn reconnect_control(&self, spec: &crate::pg::connect::ConnSpec) -> Option<postgres::Client> {
        tracing::warn!("Lost the connection to the control database; reconnecting");
        loop {
            // Waiting for the control database is progress, not a hang.
            self.beat("control");
            if self.is_stopping() {
                return None;
            }
            let wait = self.cfg.read().unwrap_or_else(|e| e.into_inner()).dbproblem_sleep;
            match super::control_connection(spec) {
                Ok(c) => {
                    tracing::info!("Reconnected to the control database");
                    return Some(c);
                }
                Err(e) => {
                    tracing::warn!("Control database still unreachable: {e}");
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
            }
        }
    }
}
