//! Applying changes: one run of a sync (Bucardo's KID).
//!
//! - [`run`]: the run itself: open every database, decide per table and
//!   receiver, commit received data first and positions last.
//! - `source`: the read side (snapshots, change logs, truncations).
//! - `settle`: conflicts between sources, found and settled in a run.
//! - `receive`: the write side (targets, and sources receiving rows).
//! - [`conflict`]: the strategies, as plain functions.
//! - [`copy`], [`sequences`], [`pools`]: COPY pipes, sequences, connections.

pub mod copy;
mod error;
pub mod pools;
mod receive;
pub mod run;
pub mod sequences;
mod settle;
mod source;

pub use error::ApplyError;
