//! Cron schedules for syncs (`schedule="*/5 * * * *"`).
//!
//! The `cron` crate named in the design card rejects the 5-field crontab
//! lines users write and numbers weekdays Quartz-style, so schedules use
//! `croner`: Vixie semantics, server local time, one run per slot across DST.

use std::str::FromStr;

use chrono::{DateTime, Local};
use croner::Cron;

/// The next slot of a schedule given as text that may change at any
/// time (a setting): a changed text starts anew from now, and a slot that
/// passed is due once.
#[derive(Clone, Debug, Default)]
pub struct Slot {
    next: Option<(String, chrono::DateTime<chrono::Local>)>,
}

impl Slot {
    /// Whether the slot of `spec` has come (then the next one is set).
    /// An empty or bad `spec` is never due.
    pub fn due(&mut self, spec: &str, now: chrono::DateTime<chrono::Local>) -> bool {
        let next = |spec: &str| {
            Schedule::parse(spec)
                .ok()
                .and_then(|s| s.next_after(&now))
                .map(|at| (spec.to_string(), at))
        };
        let due = match &self.next {
            Some((s, at)) if s == spec => *at <= now,
            _ => {
                self.next = next(spec);
                return false;
            }
        };
        if due {
            self.next = next(spec);
        }
        due
    }
}

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    text: String,
}

impl Schedule {
    /// Parses a crontab expression (5 fields, or 6 with seconds first, or
    /// `@hourly`/`@daily`/...); the error says what is wrong.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty schedule".into());
        }
        let cron = Cron::from_str(t).map_err(|e| format!("invalid schedule {t:?}: {e}"))?;
        Ok(Schedule {
            cron,
            text: t.to_string(),
        })
    }

    /// The next time strictly after `after`.
    pub fn next_after(&self, after: &DateTime<Local>) -> Option<DateTime<Local>> {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn crontab_lines() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let t = Local.with_ymd_and_hms(2027, 3, 3, 12, 0, 0).unwrap();
        assert_eq!(
            s.next_after(&t).unwrap(),
            Local.with_ymd_and_hms(2027, 3, 3, 12, 15, 0).unwrap()
        );
        assert!(Schedule::parse("@daily").is_ok());
        assert!(Schedule::parse("0 3 * * 1-5").is_ok());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("every minute").is_err());
    }
}
