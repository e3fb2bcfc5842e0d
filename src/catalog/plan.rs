//! What one sync's runs need to know, read from the catalog once per
//! controller (and again on reload), not on every run.

use postgres::GenericClient;

use crate::catalog::model::{self, Db, Relation};
use crate::catalog::CatalogError;
use crate::domain::{DbStatus, RelType, Role};
use crate::error::{Context, Error, Result};
use crate::pg::RowExt;

/// A sync resolved into databases by role and relations in order.
#[derive(Clone, Debug)]
pub struct SyncPlan {
    /// The sync's catalog row.
    pub sync: model::Sync,
    /// Active source databases (one today; several for multi-master).
    pub sources: Vec<Db>,
    /// Active `target` databases (receive changes).
    pub targets: Vec<Db>,
    /// Active `fullcopy` databases (receive a full copy every run).
    pub fullcopy: Vec<Db>,
    /// Databases skipped because they are inactive.
    pub skipped: Vec<String>,
    /// The inactive `target`s among them: they fall behind while the
    /// position moves on, so each run notes them (`capra.target_behind`).
    pub skipped_targets: Vec<String>,
    /// Active targets noted as behind: the next run copies every table to
    /// them in full instead of sending changes.
    pub behind: Vec<String>,
    /// Tables, in relgroup order.
    pub tables: Vec<Relation>,
    /// Sequences.
    pub sequences: Vec<Relation>,
    /// Active Lua hooks attached to the sync or to its tables.
    pub hooks: Vec<crate::hooks::Code>,
}

impl SyncPlan {
    /// Loads a sync's plan from the catalog.
    pub fn load(c: &mut impl GenericClient, name: &str) -> Result<SyncPlan> {
        let sync = model::sync(c, name)?.ok_or_else(|| Error::not_found("sync", name))?;
        let group =
            model::dbgroup(c, &sync.dbgroup)?.ok_or_else(|| Error::not_found("dbgroup", sync.dbgroup.clone()))?;
        let rg = model::relgroups(c)?
            .into_iter()
            .find(|g| g.name == sync.relgroup)
            .ok_or_else(|| Error::not_found("relgroup", sync.relgroup.clone()))?;
        let rels = model::relations(c, None)?;
        let ordered: Vec<Relation> = rg
            .members
            .iter()
            .filter_map(|id| rels.iter().find(|r| r.id == *id).cloned())
            .collect();
        let mut plan = SyncPlan {
            sync,
            sources: Vec::new(),
            targets: Vec::new(),
            fullcopy: Vec::new(),
            skipped: Vec::new(),
            skipped_targets: Vec::new(),
            behind: Vec::new(),
            tables: ordered
                .iter()
                .filter(|r| r.reltype == RelType::Table)
                .cloned()
                .collect(),
            sequences: ordered
                .iter()
                .filter(|r| r.reltype == RelType::Sequence)
                .cloned()
                .collect(),
            hooks: Vec::new(),
        };
        let ids: Vec<i32> = plan.tables.iter().map(|t| t.id).collect();
        plan.hooks = hooks(c, name, &ids)?;
        for m in &group.members {
            let db = model::db(c, &m.db)?.ok_or_else(|| Error::not_found("database", m.db.clone()))?;
            if db.status == DbStatus::Inactive {
                if m.role == Role::Source {
                    return Err(CatalogError::SourceInactive {
                        sync: name.into(),
                        db: db.name.clone(),
                    }
                    .into());
                }
                plan.skipped.push(db.name.clone());
                if m.role == Role::Target {
                    plan.skipped_targets.push(db.name.clone());
                }
                continue;
            }
            match m.role {
                Role::Source => plan.sources.push(db),
                Role::Fullcopy => plan.fullcopy.push(db),
                Role::Target => plan.targets.push(db),
            }
        }
        let what = format!("reading which targets of sync \"{name}\" are behind");
        let behind: Vec<String> = c
            .query("SELECT db FROM capra.target_behind WHERE sync = $1", &[&name])
            .ctx(|| what.clone())?
            .iter()
            .map(|r| r.col(0, &what))
            .collect::<Result<_>>()?;
        plan.behind = behind
            .into_iter()
            .filter(|b| plan.targets.iter().any(|t| &t.name == b))
            .collect();
        Ok(plan)
    }

    /// The sync's name.
    pub fn name(&self) -> &str {
        &self.sync.name
    }

    /// Whether changes are captured on the sources (a target, or several
    /// sources); a pure fullcopy sync needs nothing on its source.
    pub fn is_delta(&self) -> bool {
        // Inactive targets count: their position must be kept while they
        // are switched off.
        !self.targets.is_empty() || !self.skipped_targets.is_empty() || self.sources.len() > 1
    }
}

/// The active Lua hooks attached to a sync or to its tables (`ids`).
fn hooks(c: &mut impl GenericClient, name: &str, ids: &[i32]) -> Result<Vec<crate::hooks::Code>> {
    let q = &format!("reading the hooks of sync \"{name}\"");
    let mut out = Vec::new();
    for r in c
        .query(
            "SELECT c.name, c.whenrun, c.src_file, c.src_code, m.priority,
                    CASE WHEN m.relation IS NULL THEN NULL ELSE r.schemaname || '.' || r.relname END,
                    r.schemaname, r.relname
               FROM capra.customcode c
               JOIN capra.customcode_map m ON m.code = c.name
               LEFT JOIN capra.relation r ON r.id = m.relation
              WHERE c.status = 'active' AND (m.sync = $1 OR m.relation = ANY($2))",
            &[&name, &ids],
        )
        .ctx(|| q.clone())?
    {
        let table: Option<String> = match (r.col::<_, Option<String>>(6, q)?, r.col::<_, Option<String>>(7, q)?) {
            (Some(s), Some(n)) => Some(crate::pg::ident::QualName::new(s, n).human()),
            _ => None,
        };
        out.push(crate::hooks::Code {
            name: r.col(0, q)?,
            whenrun: r.col(1, q)?,
            file: r.col(2, q)?,
            src: r.col(3, q)?,
            table,
            priority: r.col(4, q)?,
        });
    }
    Ok(out)
}
