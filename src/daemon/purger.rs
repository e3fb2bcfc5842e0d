//! The purger (Bucardo's VAC): every `vac_sleep` seconds, deletes from each
//! captured source the change rows every consumer has applied, and removes
//! capture left by syncs the catalog no longer has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::Engine;
use crate::capture::{install, purge};
use crate::catalog::model::{self, Db};
use crate::catalog::plan::SyncPlan;
use crate::error::Context;
use crate::logging;

impl Engine {
    /// The purger (VAC): every vac_sleep seconds, on every captured source.
    pub fn purge_loop(self: Arc<Self>) {
        let _r = logging::role("VAC", None);
        // The first pass comes 5 s after start; after that vac_sleep is
        // read on every turn, so a reload that shortens it acts at once.
        let mut last = Instant::now() - Duration::from_secs(3600);
        let first = Instant::now() + Duration::from_secs(5);
        // With purge_schedule, the purger runs at its slots instead.
        let mut slot = crate::schedule::cron::Slot::default();
        while !self.is_stopping() {
            std::thread::sleep(Duration::from_millis(250));
            let (vac, every, spec) = {
                let c = self.cfg.read().unwrap_or_else(|e| e.into_inner());
                (c.vac, c.vac_sleep, c.purge_schedule.clone())
            };
            // A leader whose lease ran out purges nothing (purging is safe
            // for anyone, since it deletes only what every consumer has
            // applied, but a deposed leader keeps its hands off).
            if !vac || Instant::now() < first || !self.may_write() {
                continue;
            }
            if spec.trim().is_empty() {
                slot = Default::default();
                if last.elapsed() < Duration::from_secs_f64(every) {
                    continue;
                }
            } else if !slot.due(&spec, chrono::Local::now()) {
                continue;
            }
            last = Instant::now();
            let (dbs, known) = self.purge_targets();
            for db in dbs {
                let r = self.pools.get(&db).and_then(|mut c| {
                    for o in purge::orphans(&mut *c, &self.installation, &known)? {
                        // The names were read a moment ago: a sync added
                        // since then is not an orphan. Ask the catalog
                        // again, now that its capture exists.
                        if self.sync_exists(&o) != Some(false) {
                            continue;
                        }
                        // One transaction, so its re-checks under lock hold;
                        // fenced like every write of the leader.
                        self.fence(&db)?;
                        let mut tx = c.transaction().ctx(|| "starting a cleanup".into())?;
                        tx.batch_execute(&format!("{}; SET LOCAL lock_timeout = '5s'", self.fence_sql))
                            .ctx(|| "setting a lock timeout".into())?;
                        install::detach_consumer(&mut tx, &self.installation, &o)?;
                        tx.commit().ctx(|| "committing a cleanup".into())?;
                        tracing::warn!(
                            "Removed change capture left behind by removed sync \"{o}\" on database \"{}\"",
                            db.name
                        );
                    }
                    purge::purge(&mut *c, None)
                });
                match r {
                    Ok(p) if p.rows > 0 => {
                        tracing::info!("Purged {} replicated change rows from database \"{}\"", p.rows, db.name)
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("Purge on database \"{}\" skipped: {e}", db.name),
                }
            }
        }
    }

    /// Whether the catalog has a sync of this name (None: cannot tell).
    fn sync_exists(&self, name: &str) -> Option<bool> {
        let mut c = self.control.get().ok()?;
        model::sync(&mut *c, name).ok().map(|s| s.is_some())
    }

    /// The sources to purge, and every sync name the catalog knows.
    fn purge_targets(&self) -> (Vec<Db>, Vec<String>) {
        let mut c = match self.control.get() {
            Ok(c) => c,
            Err(_) => return (Vec::new(), Vec::new()),
        };
        let names: Vec<String> = match model::syncs(&mut *c) {
            Ok(s) => s.into_iter().map(|s| s.name).collect(),
            Err(_) => return (Vec::new(), Vec::new()),
        };
        let mut out: Vec<Db> = Vec::new();
        for n in &names {
            if let Ok(p) = SyncPlan::load(&mut *c, n) {
                if p.is_delta() {
                    for s in p.sources {
                        if !out.iter().any(|d| d.name == s.name) {
                            out.push(s);
                        }
                    }
                }
            }
        }
        (out, names)
    }
}
