//! When a sync runs: the rules one controller applies to kicks, committed
//! changes, checktime, its cron schedule and retries after failures. Pure
//! state over instants the caller passes in, so every rule is unit-tested
//! here without a clock or a database.

use std::time::{Duration, Instant};

use chrono::{DateTime, Local};

use super::cron::Schedule;

/// Why a run starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `capra kick`.
    Kick,
    /// A committed change on a source.
    Autokick,
    /// The first run of a new controller (catch up).
    Startup,
    /// checktime elapsed.
    Checktime,
    /// Cron schedule.
    Schedule,
    /// Retry after a failure.
    Retry,
    /// A new leader took over from one that died, hung or handed over.
    Takeover,
}

impl Reason {
    /// The word recorded with the run.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Kick => "kick",
            Reason::Autokick => "autokick",
            Reason::Startup => "startup",
            Reason::Checktime => "checktime",
            Reason::Schedule => "schedule",
            Reason::Retry => "retry",
            Reason::Takeover => "takeover",
        }
    }
}

/// Retry delays, from the settings of the same Bucardo names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// After a serialization failure (`kid_serial_sleep`; -1: ordinary).
    pub serial_sleep: f64,
    /// After a deadlock or lock timeout (`kid_deadlock_sleep`; -1: ordinary).
    pub deadlock_sleep: f64,
    /// First delay after an ordinary failure (`kid_restart_sleep`), doubled
    /// on each failure in a row...
    pub restart_sleep: f64,
    /// ...up to this (`retry_max_sleep`).
    pub retry_max: f64,
}

impl Backoff {
    /// Seconds to wait after the `failures`-th failure in a row; `quick` is
    /// Some(true) for a serialization failure, Some(false) for a deadlock or
    /// lock timeout.
    pub fn delay(&self, failures: u32, quick: Option<bool>) -> f64 {
        match quick {
            Some(true) if self.serial_sleep >= 0.0 => self.serial_sleep,
            Some(false) if self.deadlock_sleep >= 0.0 => self.deadlock_sleep,
            _ => (self.restart_sleep * 2f64.powi(failures.min(16) as i32)).min(self.retry_max),
        }
    }
}

/// How often a controller looks again even when nothing is due.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// One sync's timing state.
#[derive(Debug)]
pub struct Timing {
    pending: Option<Reason>,
    retry_at: Option<Instant>,
    last_run: Instant,
    schedule: Option<Schedule>,
    /// The next slot, by the wall clock and as an instant.
    next_cron: Option<(DateTime<Local>, Instant)>,
    checktime: Option<Duration>,
    running: bool,
    failures: u32,
}

impl Timing {
    /// Nothing pending, nothing scheduled; checktime counts from `now`.
    pub fn new(now: Instant) -> Timing {
        Timing {
            pending: None,
            retry_at: None,
            last_run: now,
            schedule: None,
            next_cron: None,
            checktime: None,
            running: false,
            failures: 0,
        }
    }

    /// Takes the sync's schedule and checktime (at start and on reload);
    /// the next cron slot is the first after `wall`.
    pub fn configure(
        &mut self,
        schedule: Option<Schedule>,
        checktime: Option<Duration>,
        now: Instant,
        wall: DateTime<Local>,
    ) {
        self.schedule = schedule;
        self.checktime = checktime.filter(|c| !c.is_zero());
        self.next_cron = self.next_slot(now, wall, wall);
    }

    /// The first slot after `from` (`now` is `wall`).
    fn next_slot(
        &self,
        now: Instant,
        wall: DateTime<Local>,
        from: DateTime<Local>,
    ) -> Option<(DateTime<Local>, Instant)> {
        let at = self.schedule.as_ref()?.next_after(&from)?;
        Some((at, now + (at - wall).to_std().unwrap_or_default()))
    }

    /// Asks for a run. An explicit kick runs at once, even during a
    /// failure's backoff, and its reason wins; anything else waits for the
    /// backoff and keeps the reason already pending.
    pub fn request(&mut self, reason: Reason) {
        if reason == Reason::Kick {
            self.retry_at = None;
            self.pending = Some(reason);
        } else {
            self.pending.get_or_insert(reason);
        }
    }

    /// When to look again: the next cron slot, retry or checktime, and at
    /// least every second. While a run is going only the cron slot counts.
    pub fn wake_at(&self, now: Instant) -> Instant {
        let mut at = now + IDLE_WAKE;
        if let Some((_, t)) = self.next_cron {
            at = at.min(t);
        }
        if !self.running {
            if let Some(t) = self.retry_at {
                at = at.min(t);
            }
            if let Some(ct) = self.checktime {
                at = at.min(self.last_run + ct);
            }
        }
        at
    }

    /// Notes what fell due by `now`: a cron slot (once, then the next one
    /// is computed from `wall`) and checktime since the last run.
    pub fn tick(&mut self, now: Instant, wall: DateTime<Local>) -> bool {
        let mut fired = false;
        if let Some((slot, t)) = self.next_cron {
            if now >= t {
                self.pending.get_or_insert(Reason::Schedule);
                fired = true;
                // The slot just passed: the next one is strictly after it
                // (and after the wall clock, should it run ahead).
                self.next_cron = self.next_slot(now, wall, wall.max(slot));
            }
        }
        if let Some(ct) = self.checktime {
            if !self.running && now >= self.last_run + ct {
                self.pending.get_or_insert(Reason::Checktime);
            }
        }
        fired
    }

    /// Whether a run should start now.
    pub fn due(&self, now: Instant) -> bool {
        self.pending.is_some() && !self.running && self.retry_at.is_none_or(|t| now >= t)
    }

    /// A run starts; returns why.
    pub fn begin(&mut self) -> Reason {
        self.retry_at = None;
        self.running = true;
        self.pending.take().unwrap_or(Reason::Kick)
    }

    /// The run (or its preparation) failed: wait `delay` seconds, then
    /// retry (unless something else is pending already).
    pub fn failed(&mut self, now: Instant, delay: f64) {
        self.running = false;
        self.last_run = now;
        self.failures += 1;
        self.retry_at = Some(now + Duration::from_secs_f64(delay.max(0.0)));
        self.pending.get_or_insert(Reason::Retry);
    }

    /// The run succeeded; returns how many failures it ended.
    pub fn succeeded(&mut self, now: Instant) -> u32 {
        self.running = false;
        self.last_run = now;
        self.retry_at = None;
        std::mem::take(&mut self.failures)
    }

    /// The run changed nothing and must run again at once (it found the
    /// catalog newer than its plan); not a failure.
    pub fn rerun(&mut self, now: Instant) {
        self.running = false;
        self.last_run = now;
        self.pending = Some(Reason::Retry);
    }

    /// The run succeeded but left work for another run soon (rows the
    /// application held): run again after `delay`, unless something else
    /// asks first.
    pub fn follow_up(&mut self, now: Instant, delay: Duration) {
        self.retry_at = Some(now + delay);
        self.pending.get_or_insert(Reason::Retry);
    }

    /// The run could not even be handed to a worker (the daemon stops).
    pub fn not_started(&mut self) {
        self.running = false;
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a run is going.
    pub fn running(&self) -> bool {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn backoff() -> Backoff {
        Backoff {
            serial_sleep: 0.5,
            deadlock_sleep: 0.25,
            restart_sleep: 1.0,
            retry_max: 10.0,
        }
    }

    #[test]
    fn retries_back_off_and_quick_failures_retry_soon() {
        let b = backoff();
        assert_eq!(b.delay(0, None), 1.0);
        assert_eq!(b.delay(1, None), 2.0);
        assert_eq!(b.delay(3, None), 8.0);
        assert_eq!(b.delay(30, None), 10.0);
        assert_eq!(b.delay(5, Some(true)), 0.5);
        assert_eq!(b.delay(5, Some(false)), 0.25);
        let ordinary = Backoff {
            serial_sleep: -1.0,
            deadlock_sleep: -1.0,
            ..b
        };
        assert_eq!(ordinary.delay(2, Some(true)), 4.0);
        assert_eq!(ordinary.delay(2, Some(false)), 4.0);
    }

    #[test]
    fn an_explicit_kick_beats_the_backoff_and_a_change_waits_for_it() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        t.request(Reason::Autokick);
        assert!(t.due(t0));
        assert_eq!(t.begin(), Reason::Autokick);
        assert!(!t.due(t0), "never two runs at once");
        t.failed(t0, 5.0);
        assert_eq!(t.failures(), 1);
        assert!(!t.due(t0 + Duration::from_secs(1)), "backoff holds the retry");
        t.request(Reason::Autokick);
        assert!(!t.due(t0 + Duration::from_secs(1)), "a change waits for the backoff");
        assert!(t.due(t0 + Duration::from_secs(5)));
        t.request(Reason::Kick);
        assert!(t.due(t0 + Duration::from_secs(1)), "an explicit kick runs now");
        assert_eq!(t.begin(), Reason::Kick);
        assert_eq!(t.succeeded(t0 + Duration::from_secs(2)), 1);
        assert_eq!(t.failures(), 0);
        assert!(!t.due(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn checktime_runs_an_idle_sync_but_never_during_a_run() {
        let t0 = Instant::now();
        let wall = Local.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap();
        let mut t = Timing::new(t0);
        t.configure(None, Some(Duration::from_secs(60)), t0, wall);
        t.tick(t0 + Duration::from_secs(59), wall);
        assert!(!t.due(t0 + Duration::from_secs(59)));
        assert_eq!(t.wake_at(t0 + Duration::from_secs(59)), t0 + Duration::from_secs(60));
        t.tick(t0 + Duration::from_secs(60), wall);
        assert!(t.due(t0 + Duration::from_secs(60)));
        assert_eq!(t.begin(), Reason::Checktime);
        t.tick(t0 + Duration::from_secs(200), wall);
        assert!(!t.due(t0 + Duration::from_secs(200)));
        t.succeeded(t0 + Duration::from_secs(200));
        t.tick(t0 + Duration::from_secs(230), wall);
        assert!(
            !t.due(t0 + Duration::from_secs(230)),
            "checktime counts from the last run"
        );
    }

    #[test]
    fn a_cron_slot_fires_once_and_the_next_is_scheduled() {
        let t0 = Instant::now();
        let wall = Local.with_ymd_and_hms(2027, 3, 1, 12, 0, 30).unwrap();
        let mut t = Timing::new(t0);
        t.configure(Some(Schedule::parse("*/5 * * * *").unwrap()), None, t0, wall);
        // 12:05:00 is 270 s away.
        let slot = t0 + Duration::from_secs(270);
        assert_eq!(t.wake_at(t0 + Duration::from_secs(269)), slot);
        t.tick(slot, wall + chrono::Duration::seconds(270));
        assert!(t.due(slot));
        assert_eq!(t.begin(), Reason::Schedule);
        t.succeeded(slot);
        t.tick(
            slot + Duration::from_millis(500),
            wall + chrono::Duration::milliseconds(270_500),
        );
        assert!(!t.due(slot + Duration::from_millis(500)), "one run per slot");
        assert_eq!(
            t.wake_at(slot + Duration::from_secs(299)),
            slot + Duration::from_secs(300),
            "the next slot is 12:10"
        );
    }

    #[test]
    fn a_schedule_with_seconds_fires_every_slot() {
        let t0 = Instant::now();
        let wall = Local.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::milliseconds(500);
        let mut t = Timing::new(t0);
        t.configure(Some(Schedule::parse("* * * * * *").unwrap()), None, t0, wall);
        let mut fired = 0;
        for ms in (500..5_000).step_by(100) {
            let now = t0 + Duration::from_millis(ms - 500);
            t.tick(now, wall + chrono::Duration::milliseconds(ms as i64 - 500));
            if t.due(now) {
                t.begin();
                t.succeeded(now);
                fired += 1;
            }
        }
        assert_eq!(fired, 4, "12:00:01 to 12:00:04, once each");
    }

    #[test]
    fn a_stale_run_reruns_without_counting_a_failure() {
        let t0 = Instant::now();
        let mut t = Timing::new(t0);
        t.request(Reason::Autokick);
        t.begin();
        t.rerun(t0);
        assert_eq!(t.failures(), 0);
        assert!(t.due(t0));
        assert_eq!(t.begin(), Reason::Retry);
        t.not_started();
        assert!(!t.running());
    }
}
