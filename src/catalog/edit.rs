//! Catalog changes. Each function runs inside the caller's transaction and
//! returns what it did as [`Event`]s; any error leaves the transaction to
//! be rolled back, so a failed command changes nothing.

use postgres::Transaction;

use super::error::CatalogError;
use super::event::{Event, Object};
use super::model::{self, DbGroup, Relation};
use super::settings::Setting;
use crate::domain::{DbStatus, RelType, Role, Status, Strategy};
use crate::error::{Context, Error, Result};
use crate::pg::discover::Found;
use crate::pg::ident::{split_user_name, QualName};
use crate::pg::RowExt;

/// A database to add.
#[derive(Clone, Debug)]
pub struct NewDb {
    /// capra's name.
    pub name: String,
    /// Real database name.
    pub dbname: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Port.
    pub port: Option<i32>,
    /// Role.
    pub user: Option<String>,
    /// Password (stored, never shown).
    pub pass: Option<crate::sys::Secret>,
    /// Extra libpq keywords.
    pub conn: String,
    /// Service.
    pub service: Option<String>,
    /// Active or inactive.
    pub status: DbStatus,
    /// makedelta.
    pub makedelta: bool,
    /// server_side_prepares.
    pub server_side_prepares: bool,
}

impl NewDb {
    /// How to reach it, before it is stored (to try the settings).
    pub fn conn_spec(&self) -> crate::pg::connect::ConnSpec {
        crate::pg::connect::ConnSpec {
            host: self.host.clone(),
            port: self.port.map(|p| p as u16),
            user: self.user.clone(),
            dbname: self.dbname.clone(),
            password: self.pass.as_ref().map(|p| p.expose().to_string()),
            conn: self.conn.clone(),
            service: self.service.clone(),
        }
    }
}

/// The first column of each row of a query with one text parameter;
/// `what` says what capra was doing, for errors.
fn names(tx: &mut Transaction<'_>, sql: &str, param: &str, what: &str) -> Result<Vec<String>> {
    tx.query(sql, &[&param])
        .ctx(|| what.into())?
        .iter()
        .map(|r| r.col(0, what))
        .collect()
}

fn exists(tx: &mut Transaction<'_>, sql: &str, name: &str) -> Result<bool> {
    Ok(tx
        .query_opt(sql, &[&name])
        .ctx(|| format!("looking up \"{name}\""))?
        .is_some())
}

/// Adds a database entry.
pub fn add_db(tx: &mut Transaction<'_>, db: &NewDb) -> Result<()> {
    if exists(tx, "SELECT 1 FROM capra.db WHERE name = $1", &db.name)? {
        return Err(CatalogError::DbExists { db: db.name.clone() }.into());
    }
    let pass = db.pass.as_ref().map(|p| p.expose());
    tx.execute(
        "INSERT INTO capra.db (name, dbname, host, port, dbuser, dbpass, conn, service, status, makedelta, server_side_prepares)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &db.name,
            &db.dbname,
            &db.host,
            &db.port,
            &db.user,
            &pass,
            &db.conn,
            &db.service,
            &db.status,
            &db.makedelta,
            &db.server_side_prepares,
        ],
    )
    .ctx(|| format!("adding database \"{}\"", db.name))?;
    Ok(())
}

/// A change to one column of a database entry (the column from the
/// command line's fixed list; None: NULL).
#[derive(Clone, Debug)]
pub struct DbChange {
    /// The column of `capra.db`.
    pub column: &'static str,
    /// The new value as text.
    pub value: Option<String>,
}

/// Applies changes to a database entry; returns one event per column.
pub fn update_db(tx: &mut Transaction<'_>, name: &str, changes: &[DbChange]) -> Result<Vec<Event>> {
    let Some(old) = model::db(tx, name)? else {
        return Err(Error::not_found_hint("database", name, "see: capra list dbs"));
    };
    let mut out = Vec::new();
    for DbChange {
        column: col,
        value: val,
    } in changes
    {
        let before = match *col {
            "dbname" => old.dbname.clone(),
            "host" => old.host.clone(),
            "port" => old.port.map(|p| p.to_string()),
            "dbuser" => old.user.clone(),
            "dbpass" => None,
            "conn" => Some(old.conn.clone()),
            "service" => old.service.clone(),
            "status" => Some(old.status.to_string()),
            "makedelta" => Some(old.makedelta.to_string()),
            "server_side_prepares" => Some(old.server_side_prepares.to_string()),
            _ => None,
        };
        if *col != "dbpass" && before.as_deref() == val.as_deref() {
            out.push(Event::DbUnchanged {
                db: name.into(),
                column: col,
            });
            continue;
        }
        let sql = match *col {
            "port" => "UPDATE capra.db SET port = $1::text::int WHERE name = $2".to_string(),
            "makedelta" | "server_side_prepares" => {
                format!("UPDATE capra.db SET {col} = $1::text::boolean WHERE name = $2")
            }
            "conn" => "UPDATE capra.db SET conn = coalesce($1, '') WHERE name = $2".to_string(),
            c => format!("UPDATE capra.db SET {c} = $1 WHERE name = $2"),
        };
        tx.execute(sql.as_str(), &[val, &name])
            .ctx(|| format!("changing {col} of database \"{name}\""))?;
        if *col == "dbpass" {
            out.push(Event::DbPasswordChanged { db: name.into() });
        } else {
            out.push(Event::DbChanged {
                db: name.into(),
                column: col,
                from: before,
                to: val.clone(),
            });
        }
    }
    Ok(out)
}

/// Names of active syncs whose dbgroup contains `db`.
fn active_syncs_using_db(tx: &mut Transaction<'_>, db: &str) -> Result<Vec<String>> {
    names(
        tx,
        "SELECT DISTINCT s.name FROM capra.sync s JOIN capra.dbmap m ON m.dbgroup = s.dbgroup
          WHERE m.db = $1 AND s.status = 'active' ORDER BY 1",
        db,
        &format!("finding syncs that use database \"{db}\""),
    )
}

/// Removes a database entry; with `force`, also its tables and group memberships.
pub fn remove_db(tx: &mut Transaction<'_>, name: &str, force: bool) -> Result<Vec<Event>> {
    if !exists(tx, "SELECT 1 FROM capra.db WHERE name = $1", name)? {
        return Err(Error::not_found_hint("database", name, "see: capra list dbs"));
    }
    let active = active_syncs_using_db(tx, name)?;
    if !active.is_empty() {
        return Err(CatalogError::DbInUse {
            db: name.into(),
            syncs: active,
        }
        .into());
    }
    let rels: i64 = tx
        .query_one("SELECT count(*) FROM capra.relation WHERE db = $1", &[&name])
        .ctx(|| "counting tables".into())?
        .col(0, "counting tables")?;
    let groups = names(
        tx,
        "SELECT dbgroup FROM capra.dbmap WHERE db = $1 ORDER BY 1",
        name,
        "finding dbgroups",
    )?;
    if (rels > 0 || !groups.is_empty()) && !force {
        return Err(CatalogError::DbReferenced {
            db: name.into(),
            tables: rels,
            groups,
        }
        .into());
    }
    let mut out = Vec::new();
    if force {
        tx.execute("DELETE FROM capra.relation WHERE db = $1", &[&name])
            .ctx(|| "removing its tables".into())?;
        tx.execute("DELETE FROM capra.dbmap WHERE db = $1", &[&name])
            .ctx(|| "removing its group memberships".into())?;
        for g in &groups {
            out.push(Event::RemovedMember {
                db: name.into(),
                group: g.clone(),
            });
        }
    }
    tx.execute("DELETE FROM capra.db WHERE name = $1", &[&name])
        .ctx(|| format!("removing database \"{name}\""))?;
    out.push(Event::removed(Object::Database, name));
    Ok(out)
}

/// What `add all tables` / `add table` did.
#[derive(Debug, Default)]
pub struct AddedRelations {
    /// Whether the relgroup was created.
    pub created_relgroup: bool,
    /// Relations new to the catalog.
    pub added: Vec<QualName>,
    /// Relations already there.
    pub already: Vec<QualName>,
    /// Relations newly put in the relgroup (new or not).
    pub grouped: Vec<QualName>,
}

/// Makes sure a relgroup exists; returns whether it was created.
pub fn ensure_relgroup(tx: &mut Transaction<'_>, name: &str, created_for: Option<&str>) -> Result<bool> {
    if exists(tx, "SELECT 1 FROM capra.relgroup WHERE name = $1", name)? {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO capra.relgroup (name, created_for) VALUES ($1, $2)",
        &[&name, &created_for],
    )
    .ctx(|| format!("creating relgroup \"{name}\""))?;
    Ok(true)
}

/// The database a relgroup's members come from, if it has members.
fn relgroup_db(tx: &mut Transaction<'_>, name: &str) -> Result<Option<String>> {
    let what = format!("reading relgroup \"{name}\"");
    tx.query_one(
        "SELECT min(r.db) FROM capra.relgroup_member m JOIN capra.relation r ON r.id = m.relation WHERE m.relgroup = $1",
        &[&name],
    )
    .ctx(|| what.clone())?
    .col(0, &what)
}

/// Adds live tables or sequences of `db` to the catalog (refreshing the key
/// of those already there) and, if given, to a relgroup.
pub fn add_relations(
    tx: &mut Transaction<'_>,
    db: &str,
    relgroup: Option<&str>,
    found: &[Found],
    conflict_strategy: Option<&Strategy>,
) -> Result<AddedRelations> {
    let conflict_strategy = conflict_strategy.map(|s| s.to_string());
    let mut out = AddedRelations::default();
    if let Some(g) = relgroup {
        if let Some(other) = relgroup_db(tx, g)? {
            if other != db {
                return Err(CatalogError::RelgroupOfOtherDb {
                    relgroup: g.into(),
                    other,
                    db: db.into(),
                }
                .into());
            }
        }
        out.created_relgroup = ensure_relgroup(tx, g, None)?;
    }
    for f in found {
        let (cols, types, kind) = match &f.key {
            Some(k) => (k.columns.clone(), k.types.clone(), Some(k.kind)),
            None => (Vec::new(), Vec::new(), None),
        };
        let row = tx
            .query_one(
                "INSERT INTO capra.relation (db, schemaname, relname, reltype, pkey, pkeytype, keykind, conflict_strategy)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (db, schemaname, relname) DO UPDATE
                    SET pkey = EXCLUDED.pkey, pkeytype = EXCLUDED.pkeytype, keykind = EXCLUDED.keykind,
                        conflict_strategy = coalesce(EXCLUDED.conflict_strategy, capra.relation.conflict_strategy)
                 RETURNING id, (xmax = 0)",
                &[&db, &f.name.schema, &f.name.name, &f.reltype, &cols, &types, &kind, &conflict_strategy],
            )
            .ctx(|| format!("adding {} {}", f.reltype, f.name.shown()))?;
        let what = format!("adding {} {}", f.reltype, f.name.shown());
        let id: i32 = row.col(0, &what)?;
        if row.col::<_, bool>(1, &what)? {
            out.added.push(f.name.clone());
        } else {
            out.already.push(f.name.clone());
        }
        if let Some(g) = relgroup {
            let n = tx
                .execute(
                    "INSERT INTO capra.relgroup_member (relgroup, relation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&g, &id],
                )
                .ctx(|| format!("adding {} to relgroup \"{g}\"", f.name.shown()))?;
            if n > 0 {
                out.grouped.push(f.name.clone());
            }
        }
    }
    Ok(out)
}

/// Finds catalog relations matching a user-typed name (exact, then
/// case-insensitive for unquoted names; `*`/`%` wildcards).
pub fn match_relations<'a>(all: &'a [Relation], term: &str, db: Option<&str>) -> Result<Vec<&'a Relation>> {
    let (schema, name) = split_user_name(term).map_err(Error::Usage)?;
    let pick = |folded: bool| -> Vec<&'a Relation> {
        all.iter()
            .filter(|r| db.is_none_or(|d| r.db == d))
            .filter(|r| {
                let name_ok = if folded {
                    name.matches_folded(&r.name.name)
                } else {
                    name.matches(&r.name.name)
                };
                let schema_ok = schema.as_ref().is_none_or(|s| {
                    if folded {
                        s.matches_folded(&r.name.schema) || s.matches(&r.name.schema)
                    } else {
                        s.matches(&r.name.schema)
                    }
                });
                name_ok && schema_ok
            })
            .collect()
    };
    let exact = pick(false);
    Ok(if exact.is_empty() { pick(true) } else { exact })
}

/// Removes tables or sequences from the catalog (and from every relgroup).
pub fn remove_relations(
    tx: &mut Transaction<'_>,
    terms: &[String],
    db: Option<&str>,
    reltype: RelType,
) -> Result<Vec<(QualName, String)>> {
    let all = model::relations(tx, Some(reltype))?;
    let mut ids = Vec::new();
    let mut removed = Vec::new();
    for t in terms {
        let hits = match_relations(&all, t, db)?;
        if hits.is_empty() {
            return Err(Error::not_found_hint(
                reltype.as_str(),
                t.clone(),
                format!("see: capra list {reltype}s"),
            ));
        }
        let dbs: std::collections::BTreeSet<&str> = hits.iter().map(|r| r.db.as_str()).collect();
        if dbs.len() > 1 && db.is_none() {
            return Err(CatalogError::InSeveralDbs {
                reltype,
                term: t.clone(),
                dbs: dbs.into_iter().map(String::from).collect(),
            }
            .into());
        }
        for r in hits {
            if !ids.contains(&r.id) {
                ids.push(r.id);
                removed.push((r.name.clone(), r.db.clone()));
            }
        }
    }
    tx.execute("DELETE FROM capra.relation WHERE id = ANY($1)", &[&ids])
        .ctx(|| format!("removing {reltype}s"))?;
    Ok(removed)
}

/// Adds catalog relations (by id) to a relgroup, enforcing one source database.
pub fn add_to_relgroup(tx: &mut Transaction<'_>, group: &str, rels: &[&Relation]) -> Result<Vec<QualName>> {
    let mut added = Vec::new();
    for r in rels {
        if let Some(other) = relgroup_db(tx, group)? {
            if other != r.db {
                return Err(CatalogError::RelgroupMixesDbs {
                    relgroup: group.into(),
                    other,
                    table: r.name.clone(),
                    db: r.db.clone(),
                }
                .into());
            }
        }
        let n = tx
            .execute(
                "INSERT INTO capra.relgroup_member (relgroup, relation) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&group, &r.id],
            )
            .ctx(|| format!("adding {} to relgroup \"{group}\"", r.name.shown()))?;
        if n > 0 {
            added.push(r.name.clone());
        }
    }
    Ok(added)
}

/// Removes a relgroup (refused while a sync uses it).
pub fn remove_relgroup(tx: &mut Transaction<'_>, name: &str) -> Result<Event> {
    if !exists(tx, "SELECT 1 FROM capra.relgroup WHERE name = $1", name)? {
        return Err(Error::not_found_hint("relgroup", name, "see: capra list relgroups"));
    }
    let users = names(
        tx,
        "SELECT name FROM capra.sync WHERE relgroup = $1 ORDER BY 1",
        name,
        "finding syncs",
    )?;
    if !users.is_empty() {
        return Err(CatalogError::RelgroupInUse {
            relgroup: name.into(),
            syncs: users,
        }
        .into());
    }
    tx.execute("DELETE FROM capra.relgroup WHERE name = $1", &[&name])
        .ctx(|| format!("removing relgroup \"{name}\""))?;
    Ok(Event::removed(Object::Relgroup, name))
}

/// Creates a dbgroup with members; a member without a role is a target,
/// except the first member of a new group, which is the source.
pub fn add_dbgroup(
    tx: &mut Transaction<'_>,
    name: &str,
    members: &[(String, Option<Role>)],
    created_for: Option<&str>,
) -> Result<Vec<Event>> {
    if exists(tx, "SELECT 1 FROM capra.dbgroup WHERE name = $1", name)? {
        return Err(Error::Duplicate {
            kind: "dbgroup",
            name: name.into(),
            hint: "; change its members with capra update dbgroup".into(),
        });
    }
    tx.execute(
        "INSERT INTO capra.dbgroup (name, created_for) VALUES ($1, $2)",
        &[&name, &created_for],
    )
    .ctx(|| format!("creating dbgroup \"{name}\""))?;
    let mut out = vec![Event::created(Object::Dbgroup, name)];
    out.extend(set_members(tx, name, members, true)?);
    Ok(out)
}

fn set_members(
    tx: &mut Transaction<'_>,
    group: &str,
    members: &[(String, Option<Role>)],
    first_is_source: bool,
) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for (i, (db, role)) in members.iter().enumerate() {
        if seen.contains(db) {
            return Err(CatalogError::MemberTwice {
                db: db.clone(),
                group: group.into(),
            }
            .into());
        }
        seen.push(db.clone());
        if !exists(tx, "SELECT 1 FROM capra.db WHERE name = $1", db)? {
            return Err(Error::not_found_hint(
                "database",
                db.clone(),
                "add it first with capra add db NAME dbname=...",
            ));
        }
        let role = role.unwrap_or(if i == 0 && first_is_source {
            Role::Source
        } else {
            Role::Target
        });
        tx.execute(
            "INSERT INTO capra.dbmap (dbgroup, db, role, position) VALUES ($1, $2, $3, $4)",
            &[&group, db, &role, &(i as i32)],
        )
        .ctx(|| format!("adding database \"{db}\" to dbgroup \"{group}\""))?;
        out.push(Event::AddedMember {
            db: db.clone(),
            group: group.into(),
            role,
        });
    }
    Ok(out)
}

/// Notes that target `db` joins `sync` behind: it gets a full copy at the
/// sync's next run.
fn note_behind(tx: &mut Transaction<'_>, sync: &str, db: &str) -> Result<Event> {
    tx.execute(
        "INSERT INTO capra.target_behind (sync, db) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&sync, &db],
    )
    .ctx(|| format!("noting that \"{db}\" joins sync \"{sync}\""))?;
    Ok(Event::JoinsSync {
        db: db.to_string(),
        sync: sync.to_string(),
    })
}

/// Refuses a change of members an active sync of the group cannot follow:
/// other sources, or no target left.
fn check_running_change(
    tx: &mut Transaction<'_>,
    name: &str,
    old: &DbGroup,
    resolved: &[(String, Option<Role>)],
) -> Result<()> {
    // Targets may come and go while syncs run (a new target then wants
    // onetimecopy=2); the sources define what is captured, so changing
    // them waits for the syncs to be deactivated.
    let mut old_sources: Vec<&str> = old
        .members
        .iter()
        .filter(|m| m.role == Role::Source)
        .map(|m| m.db.as_str())
        .collect();
    let mut new_sources: Vec<&str> = resolved
        .iter()
        .enumerate()
        .filter(|(i, (_, r))| *r == Some(Role::Source) || (r.is_none() && *i == 0 && old.members.is_empty()))
        .map(|(_, (d, _))| d.as_str())
        .collect();
    old_sources.sort();
    new_sources.sort();
    let active = active_syncs_using_group(tx, name)?;
    if !active.is_empty() && old_sources != new_sources {
        return Err(CatalogError::SourcesInUse {
            group: name.into(),
            syncs: active,
        }
        .into());
    }
    let is_target = |role: Option<Role>| role.is_none_or(|r| r == Role::Target);
    let had_targets = old.members.iter().any(|m| m.role == Role::Target);
    let has_targets = resolved.iter().any(|(_, r)| is_target(*r));
    if !active.is_empty() && had_targets && !has_targets {
        return Err(CatalogError::LastTarget {
            group: name.into(),
            syncs: active,
        }
        .into());
    }
    Ok(())
}

/// Replaces a dbgroup's members (a change of sources is refused while an
/// active sync uses it).
pub fn update_dbgroup(tx: &mut Transaction<'_>, name: &str, members: &[(String, Option<Role>)]) -> Result<Vec<Event>> {
    let Some(old) = model::dbgroup(tx, name)? else {
        return Err(Error::not_found_hint("dbgroup", name, "see: capra list dbgroups"));
    };
    // Unlisted roles keep what they were.
    let resolved: Vec<(String, Option<Role>)> = members
        .iter()
        .map(|(db, role)| {
            let kept = old.members.iter().find(|m| &m.db == db).map(|m| m.role);
            (db.clone(), role.or(kept))
        })
        .collect();
    check_running_change(tx, name, &old, &resolved)?;
    let is_target = |role: Option<Role>| role.is_none_or(|r| r == Role::Target);
    // A target joining a running sync missed what the sync applied before:
    // it gets a full copy at the next run (status lists it as behind).
    let joining: Vec<&String> = resolved
        .iter()
        .filter(|(d, r)| is_target(*r) && !old.members.iter().any(|m| &m.db == d))
        .map(|(d, _)| d)
        .collect();
    tx.execute("DELETE FROM capra.dbmap WHERE dbgroup = $1", &[&name])
        .ctx(|| format!("clearing dbgroup \"{name}\""))?;
    let mut out = set_members(tx, name, &resolved, false)?;
    for sync in &syncs_with_position(tx, name)? {
        for db in &joining {
            out.push(note_behind(tx, sync, db)?);
        }
    }
    for m in &old.members {
        if !members.iter().any(|(d, _)| d == &m.db) {
            out.push(Event::RemovedMember {
                db: m.db.clone(),
                group: name.into(),
            });
        }
    }
    Ok(out)
}

/// Syncs of a dbgroup that hold a position on their sources (active, or
/// run before): a target joining them missed what they applied so far.
fn syncs_with_position(tx: &mut Transaction<'_>, group: &str) -> Result<Vec<String>> {
    names(
        tx,
        "SELECT s.name FROM capra.sync s LEFT JOIN capra.sync_state st ON st.sync = s.name
          WHERE s.dbgroup = $1 AND (s.status = 'active' OR st.last_good IS NOT NULL) ORDER BY 1",
        group,
        "finding syncs",
    )
}

fn active_syncs_using_group(tx: &mut Transaction<'_>, group: &str) -> Result<Vec<String>> {
    names(
        tx,
        "SELECT name FROM capra.sync WHERE dbgroup = $1 AND status = 'active' ORDER BY 1",
        group,
        "finding syncs",
    )
}

/// Removes a dbgroup; with `force`, also the inactive syncs that use it.
pub fn remove_dbgroup(tx: &mut Transaction<'_>, name: &str, force: bool) -> Result<Vec<Event>> {
    if !exists(tx, "SELECT 1 FROM capra.dbgroup WHERE name = $1", name)? {
        return Err(Error::not_found_hint("dbgroup", name, "see: capra list dbgroups"));
    }
    let users: Vec<(String, Status)> = tx
        .query(
            "SELECT name, status FROM capra.sync WHERE dbgroup = $1 ORDER BY 1",
            &[&name],
        )
        .ctx(|| "finding syncs".into())?
        .iter()
        .map(|r| Ok((r.col(0, "finding syncs")?, r.col(1, "finding syncs")?)))
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|u| u.0.clone()).collect();
        if !force {
            return Err(CatalogError::DbgroupInUse {
                group: name.into(),
                syncs: names,
            }
            .into());
        }
        if let Some((s, _)) = users.iter().find(|u| u.1 == Status::Active) {
            return Err(CatalogError::DbgroupOfActiveSync {
                group: name.into(),
                sync: s.clone(),
            }
            .into());
        }
        for (s, _) in &users {
            tx.execute("DELETE FROM capra.sync WHERE name = $1", &[s])
                .ctx(|| format!("removing sync \"{s}\""))?;
            out.push(Event::removed(Object::Sync, s.clone()));
        }
    }
    tx.execute("DELETE FROM capra.dbgroup WHERE name = $1", &[&name])
        .ctx(|| format!("removing dbgroup \"{name}\""))?;
    out.push(Event::removed(Object::Dbgroup, name));
    Ok(out)
}

/// Finds a dbgroup with exactly these members and roles, or creates one named
/// after the sync (with a numeric suffix if that name is taken).
pub fn group_for_list(
    tx: &mut Transaction<'_>,
    sync: &str,
    members: &[(String, Option<Role>)],
    out: &mut Vec<Event>,
) -> Result<String> {
    let resolved: Vec<(String, Role)> = members
        .iter()
        .enumerate()
        .map(|(i, (d, r))| (d.clone(), r.unwrap_or(if i == 0 { Role::Source } else { Role::Target })))
        .collect();
    let mut want: Vec<(String, &str)> = resolved.iter().map(|(d, r)| (d.clone(), r.as_str())).collect();
    want.sort();
    for g in model::dbgroups(tx)? {
        let mut have: Vec<(String, &str)> = g.members.iter().map(|m| (m.db.clone(), m.role.as_str())).collect();
        have.sort();
        if have == want {
            out.push(Event::UsingDbgroup { group: g.name.clone() });
            return Ok(g.name);
        }
    }
    let mut name = sync.to_string();
    let mut n = 2;
    while exists(tx, "SELECT 1 FROM capra.dbgroup WHERE name = $1", &name)? {
        name = format!("{sync}_{n}");
        n += 1;
    }
    let with_roles: Vec<(String, Option<Role>)> = resolved.into_iter().map(|(d, r)| (d, Some(r))).collect();
    out.extend(add_dbgroup(tx, &name, &with_roles, Some(sync))?);
    Ok(name)
}

/// Whether a sync over this group replicates deltas (needs keys and capture):
/// it has a target, or more than one source.
pub fn is_delta(group: &DbGroup) -> bool {
    !group.with_role(Role::Target).is_empty() || group.with_role(Role::Source).len() > 1
}

/// Checks the rules a sync's relgroup and dbgroup must meet together.
pub fn check_sync_shape(tx: &mut Transaction<'_>, sync: &str, relgroup: &str, group: &DbGroup) -> Result<()> {
    if group.with_role(Role::Source).is_empty() {
        return Err(CatalogError::NoSource {
            sync: sync.into(),
            group: group.name.clone(),
        }
        .into());
    }
    if group.members.len() < 2 {
        return Err(CatalogError::OneDatabase {
            sync: sync.into(),
            group: group.name.clone(),
        }
        .into());
    }
    let rg = model::relgroups(tx)?
        .into_iter()
        .find(|g| g.name == relgroup)
        .ok_or_else(|| {
            Error::not_found_hint(
                "relgroup",
                relgroup,
                "create it with capra add all tables db=DB relgroup=NAME, or capra add relgroup NAME TABLE...",
            )
        })?;
    if rg.members.is_empty() {
        return Err(CatalogError::EmptyRelgroup {
            sync: sync.into(),
            relgroup: relgroup.into(),
        }
        .into());
    }
    if is_delta(group) {
        let rels = model::relations(tx, Some(RelType::Table))?;
        for r in rels.iter().filter(|r| rg.members.contains(&r.id)) {
            if r.pkey.is_empty() {
                return Err(CatalogError::NoKey {
                    sync: sync.into(),
                    table: r.name.clone(),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Removes a sync (refused while active), with the groups created just for it.
pub fn remove_sync(tx: &mut Transaction<'_>, name: &str) -> Result<Vec<Event>> {
    let Some(s) = model::sync(tx, name)? else {
        return Err(Error::not_found_hint("sync", name, "see: capra list syncs"));
    };
    if s.status == Status::Active {
        return Err(CatalogError::SyncActive { sync: name.into() }.into());
    }
    tx.execute("DELETE FROM capra.sync WHERE name = $1", &[&name])
        .ctx(|| format!("removing sync \"{name}\""))?;
    let mut out = vec![Event::removed(Object::Sync, name)];
    let n = tx
        .execute(
            "DELETE FROM capra.dbgroup g WHERE g.created_for = $1
                AND NOT EXISTS (SELECT 1 FROM capra.sync s WHERE s.dbgroup = g.name)",
            &[&name],
        )
        .ctx(|| "removing the sync's own dbgroup".into())?;
    if n > 0 {
        out.push(Event::RemovedOwnGroup {
            object: Object::Dbgroup,
            name: s.dbgroup.clone(),
        });
    }
    let n = tx
        .execute(
            "DELETE FROM capra.relgroup g WHERE g.created_for = $1
                AND NOT EXISTS (SELECT 1 FROM capra.sync s WHERE s.relgroup = g.name)",
            &[&name],
        )
        .ctx(|| "removing the sync's own relgroup".into())?;
    if n > 0 {
        out.push(Event::RemovedOwnGroup {
            object: Object::Relgroup,
            name: s.relgroup.clone(),
        });
    }
    Ok(out)
}

/// Stores a runtime setting (its value checked by the caller) in `capra.config`.
pub fn store_setting(tx: &mut Transaction<'_>, s: &Setting, value: &str) -> Result<()> {
    let name = s.name;
    tx.execute(
        "INSERT INTO capra.config (name, setting, defval, about)
         SELECT $1, $2, $3, $4 ON CONFLICT (name) DO UPDATE SET setting = EXCLUDED.setting",
        &[&s.name, &value, &s.default, &s.about],
    )
    .ctx(|| format!("setting {name}"))?;
    Ok(())
}

/// Inserts a new sync (its options are stored after, one by one).
pub fn insert_sync(
    tx: &mut Transaction<'_>,
    name: &str,
    relgroup: &str,
    dbgroup: &str,
    synctype: Option<&str>,
    delta: bool,
) -> Result<()> {
    tx.execute(
        "INSERT INTO capra.sync (name, relgroup, dbgroup, synctype, autokick, stayalive, kidsalive)
         VALUES ($1, $2, $3, $4, $5, $5, $5)",
        &[&name, &relgroup, &dbgroup, &synctype, &delta],
    )
    .ctx(|| format!("adding sync \"{name}\""))?;
    Ok(())
}

/// Points a sync at another relgroup or dbgroup (shape checked by the caller).
pub fn set_sync_groups(tx: &mut Transaction<'_>, name: &str, relgroup: &str, dbgroup: &str) -> Result<()> {
    tx.execute(
        "UPDATE capra.sync SET relgroup = $1, dbgroup = $2 WHERE name = $3",
        &[&relgroup, &dbgroup, &name],
    )
    .ctx(|| format!("changing sync \"{name}\""))?;
    Ok(())
}

/// Activates or deactivates a sync.
pub fn set_sync_status(tx: &mut Transaction<'_>, name: &str, active: bool) -> Result<()> {
    tx.execute(
        "UPDATE capra.sync SET status = $1 WHERE name = $2",
        &[&if active { Status::Active } else { Status::Inactive }, &name],
    )
    .ctx(|| format!("changing the status of sync \"{name}\""))?;
    Ok(())
}

/// Adds a database to a dbgroup (created if missing) at the end; without a
/// role it is the source of a new group and a target otherwise.
pub fn join_dbgroup(tx: &mut Transaction<'_>, group: &str, db: &str, role: Option<Role>) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    let active = active_syncs_using_group(tx, group)?;
    if role == Some(Role::Source) && !active.is_empty() {
        return Err(CatalogError::SourceJoinsActive {
            group: group.into(),
            syncs: active,
        }
        .into());
    }
    if model::dbgroup(tx, group)?.is_none() {
        tx.execute("INSERT INTO capra.dbgroup (name) VALUES ($1)", &[&group])
            .ctx(|| format!("creating dbgroup \"{group}\""))?;
        out.push(Event::created(Object::Dbgroup, group));
    }
    let first = tx
        .query_one("SELECT count(*) = 0 FROM capra.dbmap WHERE dbgroup = $1", &[&group])
        .ctx(|| "reading dbgroup".into())?
        .col::<_, bool>(0, "reading dbgroup")?;
    let role = role.unwrap_or(if first { Role::Source } else { Role::Target });
    tx.execute(
        "INSERT INTO capra.dbmap (dbgroup, db, role, position)
         VALUES ($1, $2, $3, (SELECT count(*) FROM capra.dbmap WHERE dbgroup = $1))",
        &[&group, &db, &role],
    )
    .ctx(|| format!("adding database \"{db}\" to dbgroup \"{group}\""))?;
    out.push(Event::AddedMember {
        db: db.into(),
        group: group.into(),
        role,
    });
    if role == Role::Target {
        for sync in syncs_with_position(tx, group)? {
            out.push(note_behind(tx, &sync, db)?);
        }
    }
    Ok(out)
}

/// Sets one option column of a table or sequence (column name and SQL
/// type come from the caller's fixed list, never from user text).
pub fn set_relation_column(
    tx: &mut Transaction<'_>,
    rel: &model::Relation,
    col: &str,
    val: &Option<String>,
    cast: &str,
) -> Result<()> {
    tx.execute(
        &format!("UPDATE capra.relation SET {col} = $1::text::{cast} WHERE id = $2"),
        &[val, &rel.id],
    )
    .ctx(|| format!("changing {col} of {}", rel.name.shown()))?;
    Ok(())
}
