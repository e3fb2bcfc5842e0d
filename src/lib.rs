//! # capra
//!
//! Asynchronous, trigger-based PostgreSQL replication, the Rust successor to
//! Bucardo: one source to many targets, several sources with conflict
//! resolution, table-level selection, full copies, and a systemd-native
//! daemon that runs syncs when a change commits, when kicked, or on a cron
//! schedule.
//!
//! ## The parts (Bucardo's names in brackets)
//!
//! - [`catalog`]: the control database: databases, tables, groups, syncs,
//!   hooks, settings, run history.
//! - [`capture`]: what capra reads, checks and installs in source databases.
//! - [`apply`]: one run of a sync: read a source snapshot, write targets \[KID\].
//! - [`daemon`]: the systemd-native daemon: controllers, workers, watchers,
//!   purger \[MCP, CTL, VAC\].
//! - [`schedule`]: cron schedules.
//! - [`hooks`]: sandboxed Lua custom code.
//! - [`notify`]: alert and status report mail, tail_n_mail style.
//! - [`cli`]: everything a user types and sees.
//! - [`config`]: where settings come from.
//! - [`pg`]: PostgreSQL plumbing shared by all of the above.
//!
//! Errors are typed ([`Error`]) and turned into one line at the CLI edge.

#![warn(missing_docs)]

pub mod apply;
pub mod capture;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod error;
pub mod hooks;
pub mod logging;
pub mod notify;
pub mod pg;
pub mod schedule;
pub mod sys;

pub use error::{Error, Result};
