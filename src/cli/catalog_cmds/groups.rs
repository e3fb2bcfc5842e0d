//! Relgroups (herds) and dbgroups.

use super::db::pick_db;
use super::edit_with_capture;
use super::render::say_all;
use super::tables::match_live;
use crate::capture::reconcile;
use crate::catalog::model::{self, Relation};
use crate::catalog::{edit, CatalogError};
use crate::cli::kv::{self, check_name, key};
use crate::cli::sync_opts::parse_member;
use crate::cli::{Ctx, Words};
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::pg::discover;

/// `capra add relgroup NAME [TABLE...] [db=DB]`.
pub(super) fn add_relgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, &[key("db", &["database"])], "add relgroup")?;
    let Some((name, terms)) = a.positional.split_first() else {
        return Err(Error::Usage("usage: capra add relgroup NAME [TABLE...] [db=DB]".into()));
    };
    check_name("relgroup", name)?;
    let mut cat = ctx.catalog()?;
    let exists = model::relgroups(&mut cat.client)?.iter().any(|g| &g.name == name);
    if exists && terms.is_empty() {
        return Err(Error::duplicate("relgroup", name.clone()));
    }
    // Members already in the catalog are used as they are; others are looked
    // up live in db= (or the only database).
    let all = model::relations(&mut cat.client, None)?;
    let mut known: Vec<Relation> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for t in terms {
        let hits = edit::match_relations(&all, t, a.get("db"))?;
        if hits.is_empty() {
            unknown.push(t.clone());
        } else {
            let dbs: std::collections::BTreeSet<&str> = hits.iter().map(|r| r.db.as_str()).collect();
            if dbs.len() > 1 {
                return Err(CatalogError::TermInSeveralDbs {
                    term: t.clone(),
                    dbs: dbs.into_iter().map(String::from).collect(),
                }
                .into());
            }
            known.extend(hits.into_iter().cloned());
        }
    }
    let mut live_found = Vec::new();
    let mut live_db = None;
    if !unknown.is_empty() {
        let db = pick_db(&mut cat, a.get("db"))?;
        let mut client = db.connect()?;
        let mut live = discover::tables(&mut client)?;
        live.extend(discover::sequences(&mut client)?);
        live_found = match_live(&live, &unknown, "table or sequence", &db.name)?;
        live_db = Some(db.name);
    }
    let rgs = vec![name.clone()];
    let lines = edit_with_capture(
        &mut cat,
        |tx| reconcile::syncs_of_relgroups(tx, &rgs),
        |tx| {
            let mut out = Vec::new();
            if edit::ensure_relgroup(tx, name, None)? {
                out.push(format!("Created relgroup \"{name}\""));
            } else {
                out.push(format!("Relgroup \"{name}\" already exists"));
            }
            let refs: Vec<&Relation> = known.iter().collect();
            for n in edit::add_to_relgroup(tx, name, &refs)? {
                out.push(format!("Added {} to relgroup {name}", n.shown()));
            }
            if let Some(db) = &live_db {
                let r = edit::add_relations(tx, db, Some(name), &live_found, None)?;
                for n in r.grouped {
                    out.push(format!("Added {} to relgroup {name}", n.shown()));
                }
            }
            Ok(out)
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// `capra update relgroup NAME TABLE...`: adds members.
pub(super) fn update_relgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    // `update relgroup NAME T...` adds members (Bucardo lacks it, #256).
    add_relgroup(ctx, w)
}

fn parse_members(words: &[String]) -> Result<Vec<(String, Option<Role>)>> {
    words
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|s| !s.is_empty())
        .map(parse_member)
        .collect()
}

/// `capra add dbgroup NAME DB[:role]...`.
pub(super) fn add_dbgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    let Some((name, rest)) = w.words.split_first() else {
        return Err(Error::Usage(
            "usage: capra add dbgroup NAME DB[:role] [DB[:role]...]".into(),
        ));
    };
    check_name("dbgroup", name)?;
    if let Some(bad) = rest.iter().find(|x| x.contains('=') && !x.contains(':')) {
        return Err(Error::Usage(format!(
            "unexpected {bad:?} for 'add dbgroup': list databases as DB or DB:role"
        )));
    }
    let members = parse_members(rest)?;
    let mut cat = ctx.catalog()?;
    let events = cat.edit(|tx| edit::add_dbgroup(tx, name, &members, None))?;
    say_all(ctx, &events);
    Ok(())
}

/// `capra update dbgroup NAME DB[:role]...`: the new member list.
pub(super) fn update_dbgroup(ctx: &Ctx, w: &Words) -> Result<()> {
    let Some((name, rest)) = w.words.split_first() else {
        return Err(Error::Usage(
            "usage: capra update dbgroup NAME DB[:role] [DB[:role]...]".into(),
        ));
    };
    let members = parse_members(rest)?;
    if members.is_empty() {
        return Err(Error::Usage(
            "list the group's databases: capra update dbgroup NAME DB[:role]...".into(),
        ));
    }
    let mut cat = ctx.catalog()?;
    let events = edit_with_capture(
        &mut cat,
        |tx| reconcile::syncs_of_dbgroup(tx, name),
        |tx| edit::update_dbgroup(tx, name, &members),
    )?;
    say_all(ctx, &events);
    Ok(())
}
