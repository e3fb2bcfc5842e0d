//! When runs happen: cron schedules, checktime, kicks and retries.

pub mod cron;
pub mod timing;
