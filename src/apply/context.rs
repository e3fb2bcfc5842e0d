//! What a run is given and what it keeps: the environment the controller
//! passes in, the per-sync memory kept between runs, and one table's
//! report. They sit at the bottom (next to `table`) because every layer of
//! a run reads or fills them; `run` re-exports the public ones.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::pools::{Cancel, Pools};
use super::sequences::SeqState;
use super::table::TableMeta;
use crate::catalog::model::Relation;
use crate::domain::conflict::Record;
use crate::error::Result;

/// What a run needs besides the plan.
pub struct RunEnv<'a> {
    /// Connection pools.
    pub pools: &'a Pools,
    /// The statement that opens each write transaction: the leader's
    /// fence check (see `capture::fence`).
    pub fence: &'a str,
    /// This installation (tags the consumer on sources).
    pub installation: &'a str,
    /// Keys per DELETE statement.
    pub chunk: usize,
    /// The snapshot sources are read in.
    pub isolation: crate::domain::Isolation,
    /// How long a run waits for its ACCESS SHARE locks before it gives up
    /// and is retried (milliseconds; `lock_timeout` setting).
    pub lock_timeout_ms: u64,
    /// Cancel handles.
    pub cancel: &'a Cancel,
    /// `default_conflict_strategy`: for tables and syncs that set none.
    pub default_strategy: &'a crate::domain::Strategy,
    /// Conflicts settled (or aborting) in this run, kept even when the run
    /// fails, so an `abort` shows in the conflict history.
    pub conflicts: &'a RefCell<Vec<Record>>,
    /// Lua hooks of this sync, compiled for this run.
    pub hooks: &'a RefCell<crate::hooks::Runner>,
}

impl RunEnv<'_> {
    /// Calls the hooks of one point; `Some(text)` when one answered with
    /// text (the only answers a run acts on: skip, retry, a winner).
    pub(super) fn hook(
        &self,
        point: &str,
        table: Option<&Relation>,
        fill: &crate::hooks::Fill<'_>,
    ) -> Result<Option<String>> {
        let tname = table.map(|t| t.name.human());
        let mut h = self.hooks.borrow_mut();
        if !h.has(point, tname.as_deref()) {
            return Ok(None);
        }
        Ok(match h.call(point, tname.as_deref(), fill)? {
            Some((crate::hooks::Answer::Text(s), _)) => Some(s),
            _ => None,
        })
    }
}

/// Per-sync memory kept between runs: table shapes and the sequence values
/// already applied.
#[derive(Default)]
pub struct RunCache {
    /// Per table id: its shape, learned again only after DDL.
    pub(super) meta: HashMap<i32, TableMeta>,
    /// Per source: the plan's partitioned tables there (learned once).
    pub(super) partitioned: HashMap<String, Vec<crate::pg::ident::QualName>>,
    /// Per source: the change logs the last run read, locked with the
    /// tables before the next snapshot (a log rewritten after it would
    /// look empty).
    pub(super) logs: HashMap<String, Vec<i32>>,
    /// Per (sequence, database): what was last written there, so an
    /// unchanged sequence costs no write.
    pub(super) seqs: HashMap<(i32, String), SeqState>,
    /// When an idle run last moved the positions forward.
    pub(super) last_advance: Option<Instant>,
}

impl RunCache {
    /// Forgets table shapes (after a reload or a failed run).
    pub fn forget_shapes(&mut self) {
        self.meta.clear();
        self.partitioned.clear();
        self.logs.clear();
    }
}

/// One table's part of a run.
#[derive(Clone, Debug, Serialize, Default)]
pub struct TableReport {
    /// `schema.name`.
    pub table: String,
    /// Changed keys read from the source.
    pub keys: u64,
    /// Rows deleted on targets (all targets).
    pub deleted: u64,
    /// Rows copied into targets (all targets).
    pub copied: u64,
    /// Targets that got a full copy of this table.
    pub full_copies: Vec<String>,
    /// Whether a source TRUNCATE was replayed.
    pub truncated: bool,
    /// Conflicts settled in this table.
    pub conflicts: u64,
    /// Receivers a TRUNCATE was replayed on.
    #[serde(skip)]
    pub(super) truncates: u64,
    /// Rows were left for the next run.
    #[serde(skip)]
    pub(super) again: bool,
}
