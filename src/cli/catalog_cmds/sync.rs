//! Syncs: `add sync` in both grammars, `update sync`, `activate`, `deactivate`.

use postgres::Transaction;

use super::edit_with_capture;
use crate::catalog::model::{self, DbGroup, Relation};
use crate::catalog::sync_opts::Stored;
use crate::catalog::{edit, CatalogError};
use crate::cli::kv::{self, check_name};
use crate::cli::sync_opts::{self, parse_member};
use crate::cli::{Ctx, Words};
use crate::domain::Role;
use crate::error::{Error, Result};

/// Bucardo 4's `targetdb=`/`targetgroup=` with `type=`: the source is the
/// database the relgroup's tables come from; returns the dbgroup and type.
fn bucardo4_dbs(
    tx: &mut Transaction<'_>,
    a: &kv::Args,
    relgroup: &str,
    out: &mut Vec<String>,
    sync: &str,
) -> Result<(String, Option<String>)> {
    let t = a
        .choice("type", &["pushdelta", "fullcopy", "swap"])?
        .unwrap_or_else(|| "pushdelta".into());
    let src = model::relgroup_db(tx, relgroup)?.ok_or_else(|| CatalogError::RelgroupEmpty {
        relgroup: relgroup.into(),
    })?;
    let targets: Vec<String> = match (a.get("targetdb"), a.get("targetgroup")) {
        (Some(_), Some(_)) => return Err(Error::Usage("give targetdb= or targetgroup=, not both".into())),
        (Some(d), None) => vec![d.to_string()],
        (None, Some(g)) => {
            if t == "swap" {
                return Err(Error::Usage("type=swap takes targetdb=, not targetgroup=".into()));
            }
            model::dbgroup(tx, g)?
                .ok_or_else(|| Error::not_found_hint("dbgroup", g, "see: capra list dbgroups"))?
                .members
                .into_iter()
                .map(|m| m.db)
                .collect()
        }
        (None, None) => {
            return Err(Error::Usage(format!(
                "type={t} needs targetdb=DB or targetgroup=DBGROUP"
            )))
        }
    };
    let role = match t.as_str() {
        "fullcopy" => Role::Fullcopy,
        "swap" => Role::Source,
        _ => Role::Target,
    };
    let mut members: Vec<(String, Option<Role>)> = vec![(src.clone(), Some(Role::Source))];
    for d in targets {
        if d == src {
            return Err(CatalogError::SourceIsTarget {
                db: d,
                relgroup: relgroup.into(),
            }
            .into());
        }
        members.push((d, Some(role)));
    }
    let g = group_for_list(tx, sync, &members, out)?;
    Ok((g, Some(t)))
}

/// Resolves where a new sync replicates, for both grammars.
fn sync_dbs(
    tx: &mut Transaction<'_>,
    a: &kv::Args,
    relgroup: &str,
    out: &mut Vec<String>,
    sync: &str,
) -> Result<(String, Option<String>)> {
    let four = a.has("targetdb") || a.has("targetgroup") || a.has("type");
    if four && a.has("dbs") {
        return Err(Error::Usage(
            "use either dbs= (Bucardo 5) or targetdb=/targetgroup= with type= (Bucardo 4), not both".into(),
        ));
    }
    if four {
        return bucardo4_dbs(tx, a, relgroup, out, sync);
    }
    let Some(d) = a.get("dbs") else {
        return Err(Error::Usage(format!(
            "sync \"{sync}\" needs dbs=DBGROUP or dbs=DB:source,DB:target (Bucardo 4: targetdb= with type=)"
        )));
    };
    if !d.contains([',', ':']) {
        if model::dbgroup(tx, d)?.is_some() {
            return Ok((d.to_string(), None));
        }
        if model::db(tx, d)?.is_none() {
            return Err(Error::not_found_hint(
                "dbgroup",
                d,
                "see: capra list dbgroups, or give dbs=DB:source,DB:target",
            ));
        }
    }
    let members: Vec<(String, Option<Role>)> = d
        .split(',')
        .filter(|s| !s.is_empty())
        .map(parse_member)
        .collect::<Result<_>>()?;
    Ok((group_for_list(tx, sync, &members, out)?, None))
}

/// Reads one option against the sync's databases and stores it; returns
/// the column's text before and after.
fn store_opt(
    tx: &mut Transaction<'_>,
    sync: &str,
    k: &str,
    v: &str,
    dbs: &[String],
) -> Result<(Option<String>, Option<String>)> {
    let opt = sync_opts::parse(k, v, dbs)?;
    match crate::catalog::sync_opts::store(tx, sync, &opt)? {
        Stored::Changed { old, new } => Ok((old, new)),
        Stored::BadInterval => Err(sync_opts::bad_interval(k, v)),
    }
}

/// The dbgroup with exactly these members (created if none), saying
/// which in `out`.
fn group_for_list(
    tx: &mut Transaction<'_>,
    sync: &str,
    members: &[(String, Option<Role>)],
    out: &mut Vec<String>,
) -> Result<String> {
    let mut events = Vec::new();
    let g = edit::group_for_list(tx, sync, members, &mut events)?;
    out.extend(events.iter().map(ToString::to_string));
    Ok(g)
}

/// Warns about each given option that changes nothing in capra.
fn warn_inert_opts(a: &kv::Args) {
    for (k, _) in &a.pairs {
        if let Some(why) = sync_opts::inert(k) {
            eprintln!("capra: warning: sync option '{k}' has {why}");
        }
    }
}

/// The new sync's name, checked (not one of Bucardo's words).
fn new_sync_name(a: &kv::Args) -> Result<&String> {
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: capra add sync NAME relgroup=RELGROUP dbs=DBGROUP|DB:role,... [options]".into(),
        ));
    };
    check_name("sync", name)?;
    if ["pushdelta", "fullcopy", "swap", "sync", "all"].contains(&name.to_lowercase().as_str()) {
        return Err(Error::Usage(format!(
            "\"{name}\" is a reserved word and cannot name a sync"
        )));
    }
    Ok(name)
}

/// The relgroup named by `relgroup=` (or Bucardo 4's `source=`); None
/// when `tables=` lists the tables instead.
fn relgroup_arg(a: &kv::Args, name: &str) -> Result<Option<String>> {
    match (a.get("relgroup"), a.get("source"), a.get("tables")) {
        (Some(r), None, None) | (None, Some(r), None) => Ok(Some(r.to_string())),
        (None, None, Some(_)) => Ok(None),
        (None, None, None) => Err(Error::Usage(format!(
            "sync \"{name}\" needs relgroup=RELGROUP (or tables=T1,T2; Bucardo 4: source=HERD)"
        ))),
        _ => Err(Error::Usage("give one of relgroup=, source= or tables=".into())),
    }
}

/// A relgroup made for a new sync from `tables=T1,T2`, named after it.
fn relgroup_from_tables(tx: &mut Transaction<'_>, tables: &str, name: &str, out: &mut Vec<String>) -> Result<String> {
    let all = model::relations(tx, None)?;
    let mut rels: Vec<Relation> = Vec::new();
    for t in tables.split(',').filter(|s| !s.is_empty()) {
        let hits = edit::match_relations(&all, t, None)?;
        if hits.is_empty() {
            return Err(Error::not_found_hint("table", t, "add it first with capra add table"));
        }
        rels.extend(hits.into_iter().cloned());
    }
    let mut rg = name.to_string();
    let mut n = 2;
    while model::relgroups(tx)?.iter().any(|g| g.name == rg) {
        rg = format!("{name}_{n}");
        n += 1;
    }
    edit::ensure_relgroup(tx, &rg, Some(name))?;
    let refs: Vec<&Relation> = rels.iter().collect();
    edit::add_to_relgroup(tx, &rg, &refs)?;
    out.push(format!("Created a new relgroup named \"{rg}\""));
    Ok(rg)
}

/// The dbgroup a sync's checks and options refer to.
fn dbgroup_of(tx: &mut Transaction<'_>, name: &str) -> Result<DbGroup> {
    model::dbgroup(tx, name)?.ok_or_else(|| Error::not_found_hint("dbgroup", name, "see: capra list dbgroups"))
}

/// What `add sync` writes, checked before the catalog is opened.
struct NewSync<'a> {
    name: &'a str,
    args: &'a kv::Args,
    relgroup: Option<String>,
    /// Options as given (conflict lists are read against the sync's databases).
    opts: Vec<(String, String)>,
}

impl NewSync<'_> {
    /// Adds the sync (and the groups it needs); returns what to say.
    fn insert(&self, tx: &mut Transaction<'_>) -> Result<Vec<String>> {
        let name = self.name;
        let mut out = Vec::new();
        if model::sync(tx, name)?.is_some() {
            return Err(CatalogError::SyncExists { sync: name.into() }.into());
        }
        let relgroup = match &self.relgroup {
            Some(r) => {
                if !model::relgroups(tx)?.iter().any(|g| &g.name == r) {
                    return Err(Error::not_found_hint(
                        "relgroup",
                        r.clone(),
                        "create it with capra add all tables db=DB relgroup=NAME",
                    ));
                }
                r.clone()
            }
            None => relgroup_from_tables(tx, self.args.get("tables").unwrap_or(""), name, &mut out)?,
        };
        let (dbgroup, synctype) = sync_dbs(tx, self.args, &relgroup, &mut out, name)?;
        let group = dbgroup_of(tx, &dbgroup)?;
        edit::check_sync_shape(tx, name, &relgroup, &group)?;
        let dbs: Vec<String> = group.members.iter().map(|m| m.db.clone()).collect();
        let pure_fullcopy = !edit::is_delta(&group);
        edit::insert_sync(tx, name, &relgroup, &dbgroup, synctype.as_deref(), !pure_fullcopy)?;
        for (k, v) in &self.opts {
            store_opt(tx, name, k, v, &dbs)?;
        }
        out.insert(0, format!("Added sync \"{name}\""));
        Ok(out)
    }
}

/// `capra add sync NAME relgroup=RG dbs=...` in both grammars.
pub(super) fn add_sync(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, sync_opts::SYNC_KEYS, "add sync")?;
    warn_inert_opts(&a);
    let name = new_sync_name(&a)?;
    let relgroup = relgroup_arg(&a, name)?;
    // Check option syntax before touching anything (conflict lists need
    // the sync's databases: they are read in the edit).
    let mut opts: Vec<(String, String)> = Vec::new();
    for (k, v) in &a.pairs {
        if sync_opts::is_option(k) {
            if k != "conflict_strategy" {
                sync_opts::parse(k, v, &[])?;
            }
            opts.push((k.clone(), v.clone()));
        }
    }
    let new = NewSync {
        name,
        args: &a,
        relgroup,
        opts,
    };
    let mut cat = ctx.catalog()?;
    let lines = edit_with_capture(&mut cat, |_| Ok(vec![name.clone()]), |tx| new.insert(tx))?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// `capra update sync NAME key=value...`.
pub(super) fn update_sync(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, sync_opts::SYNC_KEYS, "update sync")?;
    warn_inert_opts(&a);
    let names = crate::cli::strip_noise(&a.positional);
    let [name] = names.as_slice() else {
        return Err(Error::Usage("usage: capra update sync NAME key=value...".into()));
    };
    if a.pairs.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to change for sync \"{name}\": give key=value pairs"
        )));
    }
    for k in ["tables", "source", "targetdb", "targetgroup", "type"] {
        if a.has(k) {
            return Err(Error::Usage(format!(
                "'{k}' cannot be changed on an existing sync; use relgroup= or dbs="
            )));
        }
    }
    for (k, v) in &a.pairs {
        if sync_opts::is_option(k) && k != "conflict_strategy" {
            sync_opts::parse(k, v, &[])?;
        }
    }
    let mut cat = ctx.catalog()?;
    let lines = edit_with_capture(
        &mut cat,
        |_| Ok(vec![name.clone()]),
        |tx| {
            let Some(s) = model::sync(tx, name)? else {
                return Err(Error::not_found_hint("sync", name.clone(), "see: capra list syncs"));
            };
            let mut out = Vec::new();
            let mut relgroup = s.relgroup.clone();
            let mut dbgroup = s.dbgroup.clone();
            if let Some(r) = a.get("relgroup") {
                relgroup = r.to_string();
                if !model::relgroups(tx)?.iter().any(|g| g.name == relgroup) {
                    return Err(Error::not_found_hint("relgroup", relgroup, "see: capra list relgroups"));
                }
            }
            if a.has("dbs") {
                let (g, _) = sync_dbs(tx, &a, &relgroup, &mut out, name)?;
                dbgroup = g;
            }
            let group = dbgroup_of(tx, &dbgroup)?;
            if relgroup != s.relgroup || dbgroup != s.dbgroup {
                edit::check_sync_shape(tx, name, &relgroup, &group)?;
                edit::set_sync_groups(tx, name, &relgroup, &dbgroup)?;
                if relgroup != s.relgroup {
                    out.push(format!(
                        "Updated sync \"{name}\": relgroup {} -> {relgroup}",
                        s.relgroup
                    ));
                }
                if dbgroup != s.dbgroup {
                    out.push(format!("Updated sync \"{name}\": dbgroup {} -> {dbgroup}", s.dbgroup));
                }
            }
            let dbs: Vec<String> = group.members.iter().map(|m| m.db.clone()).collect();
            for (k, v) in a.pairs.iter().filter(|(k, _)| sync_opts::is_option(k)) {
                let (old, new) = store_opt(tx, name, k, v, &dbs)?;
                let show = |x: Option<String>| match x.as_deref() {
                    None => "none".to_string(),
                    Some("true") => "1".into(),
                    Some("false") => "0".into(),
                    Some(t) => t.to_string(),
                };
                out.push(format!("Updated sync \"{name}\": {k} {} -> {}", show(old), show(new)));
            }
            Ok(out)
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// `activate` / `deactivate`.
pub fn set_status(ctx: &Ctx, names: &[String], active: bool) -> Result<()> {
    let names = crate::cli::strip_noise(names);
    if names.is_empty() {
        return Err(Error::Usage(format!(
            "usage: capra {} SYNC...",
            if active { "activate" } else { "deactivate" }
        )));
    }
    let mut cat = ctx.catalog()?;
    let n2 = names.clone();
    edit_with_capture(
        &mut cat,
        |_| Ok(n2),
        |tx| {
            for n in &names {
                let Some(s) = model::sync(tx, n)? else {
                    return Err(Error::not_found_hint("sync", n.clone(), "see: capra list syncs"));
                };
                if active {
                    let group = dbgroup_of(tx, &s.dbgroup)?;
                    edit::check_sync_shape(tx, n, &s.relgroup, &group)?;
                }
                edit::set_sync_status(tx, n, active)?;
            }
            Ok(())
        },
    )?;
    for n in &names {
        ctx.say(format!(
            "{} sync {n}",
            if active { "Activating" } else { "Deactivating" }
        ));
    }
    Ok(())
}
