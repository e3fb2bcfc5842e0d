//! Applying changes: one run of a sync (Bucardo's KID).
//!
//! The modules form layers; each uses only those listed before it:
//!
//! - `table`: a table's learned shape, how a receiver gets it, and the SQL
//!   pieces (key predicates, casts, `unnest` of keys, makedelta).
//! - `context`: what a run is given ([`run::RunEnv`]), keeps between runs
//!   ([`run::RunCache`]) and reports per table ([`run::TableReport`]).
//! - `source`: the read side (snapshots, change logs, truncations).
//! - `settle`: conflicts between sources, found and settled in a run.
//! - `receive`: the write side (targets, and sources receiving rows).
//! - [`run`]: the run itself: open every database, decide per table and
//!   receiver, commit received data first and positions last.
//!
//! [`copy`], [`sequences`] and [`pools`] (COPY pipes, sequences,
//! connections) stand alone.

mod context;
pub mod copy;
mod error;
pub mod pools;
mod receive;
pub mod run;
pub mod sequences;
mod settle;
mod source;
pub(crate) mod table;

pub use error::ApplyError;
