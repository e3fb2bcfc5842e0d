//! # capra
//!
//! Asynchronous, trigger-based PostgreSQL replication, the Rust successor to
//! Bucardo: one source to many targets, several sources with conflict
//! resolution, table-level selection, full copies, and a systemd-native
//! daemon that runs syncs when a change commits, when kicked, or on a cron
//! schedule.
//!
//! ## The parts (Bucardo's names in brackets), lowest layer first
//!
//! A part uses only the parts above it in this list (`tests/it/structure.rs`
//! checks it).
//!
//! - [`error`], [`sys`], [`logging`], [`domain`], [`pg`], [`config`],
//!   [`schedule`], [`hooks`], [`metrics`]: the ground floor: errors and
//!   their kinds, threads and locks, the log, capra's words as types (roles,
//!   statuses, conflict strategies), PostgreSQL plumbing (connections,
//!   pools, quoting, reading a live catalog), where settings come from, cron
//!   schedules and when a sync runs, sandboxed Lua custom code, the
//!   Prometheus figures and their scrape endpoint.
//! - [`catalog`]: the control database: databases, tables, groups, syncs,
//!   hooks, settings, run history.
//! - [`capture`]: what capra checks and installs in source databases.
//! - [`apply`]: one run of a sync: read a source snapshot, write targets \[KID\].
//! - [`compare`]: compare and repair: prove the copies equal, name the keys
//!   that differ, repair them through the engine.
//! - [`import`]: taking over a running Bucardo in place: its catalog, its
//!   undelivered changes, and later what it left in the databases.
//! - [`notify`]: alert and status report mail, tail_n_mail style.
//! - [`daemon`]: the systemd-native daemon: controllers, workers, watchers,
//!   purger \[MCP, CTL, VAC\].
//! - [`cli`]: everything a user types and sees, including the key=value
//!   grammar and Bucardo's spellings.
//!
//! Errors are typed ([`Error`], with each part's own error type and a
//! [`error::Kind`]) and turned into one line at the CLI edge.

#![warn(missing_docs)]

pub mod apply;
pub mod capture;
pub mod catalog;
pub mod cli;
pub mod compare;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod error;
pub mod hooks;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pg;
pub mod schedule;
pub mod sys;

pub use error::{Error, Result};
