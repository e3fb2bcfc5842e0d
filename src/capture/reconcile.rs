//! Keeping each source's capture objects in step with the catalog.
//!
//! A catalog command that changes what a sync covers (add/activate/update/
//! remove a sync, add or remove tables of its relgroup) calls [`before`]
//! first, then edits, then [`apply`]: capture is installed or dropped on the
//! sources inside open transactions, committed right after the catalog
//! transaction ([`Pending::commit`]). If a source cannot be reached or
//! refuses, the whole command fails and nothing changes anywhere.

use postgres::{Client, GenericClient};

use super::install::{attach_consumer, detach_consumer, OnKeyChange};
use crate::catalog::model::{self, Db};
use crate::catalog::plan::SyncPlan;
use crate::domain::{Role, Status};
use crate::error::{Context, Result};
use crate::pg::RowExt;

/// Each affected sync's sources before the edit.
pub struct Before(Vec<(String, Vec<Db>)>);

/// Source transactions to commit once the catalog has committed.
pub struct Pending(Vec<(String, Client)>);

impl Pending {
    /// Commits the source transactions.
    pub fn commit(self) -> Result<()> {
        for (name, mut c) in self.0 {
            c.batch_execute("COMMIT")
                .ctx(|| format!("committing change-capture changes on \"{name}\""))?;
        }
        Ok(())
    }
}

fn sources_of(c: &mut impl GenericClient, sync: &str) -> Result<Vec<Db>> {
    let Some(s) = model::sync(c, sync)? else {
        return Ok(Vec::new());
    };
    let Some(g) = model::dbgroup(c, &s.dbgroup)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for m in g.members.iter().filter(|m| m.role == Role::Source) {
        if let Some(db) = model::db(c, &m.db)? {
            out.push(db);
        }
    }
    Ok(out)
}

/// Notes the sources of the syncs an edit may affect.
pub fn before(c: &mut impl GenericClient, syncs: &[String]) -> Result<Before> {
    let mut v = Vec::new();
    for s in syncs {
        v.push((s.clone(), sources_of(c, s)?));
    }
    Ok(Before(v))
}

/// Syncs whose relgroup is one of `relgroups`.
pub fn syncs_of_relgroups(c: &mut impl GenericClient, relgroups: &[String]) -> Result<Vec<String>> {
    c.query(
        "SELECT name FROM capra.sync WHERE relgroup = ANY($1) ORDER BY 1",
        &[&relgroups],
    )
    .ctx(|| "finding syncs".into())?
    .iter()
    .map(|r| r.col(0, "finding syncs"))
    .collect()
}

/// Syncs using any of the given relation ids (through their relgroups).
pub fn syncs_of_relations(c: &mut impl GenericClient, ids: &[i32]) -> Result<Vec<String>> {
    c.query(
        "SELECT DISTINCT s.name FROM capra.sync s JOIN capra.relgroup_member m ON m.relgroup = s.relgroup
          WHERE m.relation = ANY($1) ORDER BY 1",
        &[&ids],
    )
    .ctx(|| "finding syncs".into())?
    .iter()
    .map(|r| r.col(0, "finding syncs"))
    .collect()
}

/// Syncs whose dbgroup holds the database `db`.
pub fn syncs_of_db(c: &mut impl GenericClient, db: &str) -> Result<Vec<String>> {
    c.query(
        "SELECT DISTINCT s.name FROM capra.sync s JOIN capra.dbmap m ON m.dbgroup = s.dbgroup WHERE m.db = $1 ORDER BY 1",
        &[&db],
    )
    .ctx(|| "finding syncs".into())?
    .iter()
    .map(|r| r.col(0, "finding syncs"))
    .collect()
}

/// Syncs whose dbgroup is `group`.
pub fn syncs_of_dbgroup(c: &mut impl GenericClient, group: &str) -> Result<Vec<String>> {
    c.query("SELECT name FROM capra.sync WHERE dbgroup = $1 ORDER BY 1", &[&group])
        .ctx(|| "finding syncs".into())?
        .iter()
        .map(|r| r.col(0, "finding syncs"))
        .collect()
}

fn open(pending: &mut Pending, db: &Db) -> Result<usize> {
    if let Some(i) = pending.0.iter().position(|(n, _)| n == &db.name) {
        return Ok(i);
    }
    let mut c = db.connect()?;
    c.batch_execute("BEGIN")
        .ctx(|| format!("starting a transaction on \"{}\"", db.name))?;
    pending.0.push((db.name.clone(), c));
    Ok(pending.0.len() - 1)
}

/// Brings capture on the sources in line with the (edited, uncommitted)
/// catalog for the syncs noted in `before`.
pub fn apply(c: &mut impl GenericClient, installation: &str, before: &Before) -> Result<Pending> {
    let mut pending = Pending(Vec::new());
    for (sync, old_sources) in &before.0 {
        let plan = match model::sync(c, sync)? {
            Some(_) => Some(SyncPlan::load(c, sync)?),
            None => None,
        };
        let new_sources: Vec<Db> = match &plan {
            Some(p) if p.is_delta() => p.sources.clone(),
            _ => Vec::new(),
        };
        for old in old_sources {
            if !new_sources.iter().any(|n| n.name == old.name) {
                let i = open(&mut pending, old)?;
                detach_consumer(&mut pending.0[i].1, installation, sync)?;
            }
        }
        let Some(plan) = plan else { continue };
        for src in &new_sources {
            let i = open(&mut pending, src)?;
            let client = &mut pending.0[i].1;
            let active = plan.sync.status == Status::Active;
            let has_consumer = consumer_exists(client, installation, sync)?;
            if active || has_consumer {
                attach_consumer(
                    client,
                    installation,
                    sync,
                    &super::install::targets(&plan),
                    OnKeyChange::Refuse,
                )?;
            }
        }
    }
    Ok(pending)
}

fn consumer_exists(c: &mut Client, installation: &str, sync: &str) -> Result<bool> {
    let present: bool = c
        .query_one("SELECT to_regclass('capra.consumer') IS NOT NULL", &[])
        .ctx(|| "checking capture".into())?
        .col(0, "checking capture")?;
    if !present {
        return Ok(false);
    }
    Ok(c.query_opt(
        "SELECT 1 FROM capra.consumer WHERE installation = $1 AND sync = $2",
        &[&installation, &sync],
    )
    .ctx(|| "checking capture".into())?
    .is_some())
}
