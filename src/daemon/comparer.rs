//! The scheduled compare: at every slot of `compare_schedule`, every
//! active sync is compared with its first source and the outcome kept as
//! its last compare; the notifier mails the differences.

use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use crate::logging;

impl Engine {
    /// Compares every active sync at the slots of `compare_schedule`.
    pub fn compare_loop(self: Arc<Self>) {
        let _r = logging::role("CMP", None);
        let mut slot = crate::schedule::cron::Slot::default();
        while !self.is_stopping() {
            std::thread::sleep(Duration::from_millis(500));
            let spec = self
                .cfg
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .compare_schedule
                .clone();
            if !slot.due(&spec, chrono::Local::now()) {
                continue;
            }
            let r = self
                .control
                .get()
                .and_then(|mut c| crate::compare::compare_all(&mut *c, &self.installation));
            match r {
                Ok(reports) => {
                    for r in reports {
                        tracing::info!(
                            "Compared sync \"{}\" with \"{}\": {} difference(s), {} key(s) in flight",
                            r.sync,
                            r.truth,
                            r.differences(),
                            r.in_flight()
                        );
                    }
                }
                Err(e) => tracing::error!("Scheduled compare failed: {e}"),
            }
        }
    }
}
