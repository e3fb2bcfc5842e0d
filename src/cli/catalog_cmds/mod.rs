//! `add`, `update`, `remove`, `set`, `activate`, `deactivate`: each one
//! catalog transaction; on any error nothing is written.

use postgres::Transaction;

use super::{AddNoun, Ctx, Noun, Words};
use crate::capture::reconcile;
use crate::catalog::event::Event;
use crate::catalog::{edit, model, Catalog};
use crate::domain::RelType;
use crate::error::{Error, Result};

mod config;
mod customcode;
pub(crate) mod db;
mod groups;
mod render;
mod sync;
pub(crate) mod tables;

pub use config::set;
pub use sync::set_status;

/// Prints the one-line warning for each given option that has no effect
/// (`inert` maps a key to why); the options are still stored, so old
/// scripts run.
fn warn_inert(what: &str, pairs: &[(String, String)], inert: fn(&str) -> Option<&'static str>) {
    for (k, _) in pairs {
        if let Some(why) = inert(k) {
            eprintln!("capra: warning: {what} option '{k}' has {why}");
        }
    }
}

/// Runs a catalog edit that may change what syncs capture: notes the
/// affected syncs' sources first, then brings capture on the sources in line
/// inside open transactions committed right after the catalog.
fn edit_with_capture<T>(
    cat: &mut Catalog,
    affected: impl FnOnce(&mut Transaction<'_>) -> Result<Vec<String>>,
    f: impl FnOnce(&mut Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let inst = cat.installation.clone();
    let (out, pending) = cat.edit(|tx| {
        let syncs = affected(tx)?;
        let before = reconcile::before(tx, &syncs)?;
        let out = f(tx)?;
        let pending = reconcile::apply(tx, &inst, &before)?;
        Ok((out, pending))
    })?;
    pending.commit()?;
    Ok(out)
}

/// `capra add ...`.
pub fn add(ctx: &Ctx, noun: AddNoun) -> Result<()> {
    match noun {
        AddNoun::Db(w) => db::add_db(ctx, &w),
        AddNoun::All(a) => tables::add_all(ctx, a),
        AddNoun::Table(w) => tables::add_relations(ctx, &w, RelType::Table),
        AddNoun::Sequence(w) => tables::add_relations(ctx, &w, RelType::Sequence),
        AddNoun::Relgroup(w) => groups::add_relgroup(ctx, &w),
        AddNoun::Dbgroup(w) => groups::add_dbgroup(ctx, &w),
        AddNoun::Sync(w) => sync::add_sync(ctx, &w),
        AddNoun::Customcode(w) => customcode::add_customcode(ctx, &w),
    }
}

/// `capra update ...`.
pub fn update(ctx: &Ctx, noun: Noun) -> Result<()> {
    match noun {
        Noun::Db(w) => db::update_db(ctx, &w),
        Noun::Sync(w) => sync::update_sync(ctx, &w),
        Noun::Dbgroup(w) => groups::update_dbgroup(ctx, &w),
        Noun::Table(w) => tables::update_relation(ctx, &w, RelType::Table),
        Noun::Sequence(w) => tables::update_relation(ctx, &w, RelType::Sequence),
        Noun::Customcode(w) => customcode::update_customcode(ctx, &w),
        Noun::Relgroup(w) => groups::update_relgroup(ctx, &w),
    }
}

/// Removes each named object in one catalog edit, reconciling capture for
/// the syncs `affected` finds for each name before the edit.
fn remove_each(
    cat: &mut Catalog,
    names: &[String],
    affected: impl Fn(&mut Transaction<'_>, &str) -> Result<Vec<String>>,
    remove: impl Fn(&mut Transaction<'_>, &str) -> Result<Vec<Event>>,
) -> Result<Vec<Event>> {
    edit_with_capture(
        cat,
        |tx| {
            let mut v = Vec::new();
            for n in names {
                v.extend(affected(tx, n)?);
            }
            Ok(v)
        },
        |tx| {
            let mut out = Vec::new();
            for n in names {
                out.extend(remove(tx, n)?);
            }
            Ok(out)
        },
    )
}

/// A removed database keeps nothing of this installation: its fence (see
/// `capture::fence`) goes; one that cannot be reached is named with the
/// statement that does it by hand.
fn remove_fence(db: &model::Db, installation: &str) {
    let done = db
        .connect()
        .and_then(|mut c| crate::capture::fence::remove(&mut c, installation));
    if let Err(e) = done {
        eprintln!(
            "capra: could not remove capra's fence from database \"{}\" ({}); remove it there by hand: DELETE FROM capra.fence WHERE installation = '{installation}'",
            db.name,
            crate::pg::error::flatten(&e.to_string())
        );
    }
}

/// `capra remove ...`.
pub fn remove(ctx: &Ctx, noun: Noun) -> Result<()> {
    let mut cat = ctx.catalog()?;
    let lines = match noun {
        Noun::Db(w) => {
            let names = names_only(&w, "remove db")?;
            let mut dbs = Vec::new();
            for n in &names {
                dbs.extend(model::db(&mut cat.client, n)?);
            }
            let lines = texts(remove_each(
                &mut cat,
                &names,
                |tx, n| reconcile::syncs_of_db(tx, n),
                |tx, n| edit::remove_db(tx, n, w.force),
            )?);
            for db in dbs {
                remove_fence(&db, &cat.installation);
            }
            lines
        }
        Noun::Table(w) | Noun::Sequence(w) if w.words.is_empty() => {
            return Err(Error::Usage("name the tables or sequences to remove".into()))
        }
        Noun::Table(w) => tables::remove_relations(&mut cat, &w, RelType::Table)?,
        Noun::Sequence(w) => tables::remove_relations(&mut cat, &w, RelType::Sequence)?,
        Noun::Relgroup(w) => {
            let names = names_only(&w, "remove relgroup")?;
            texts(cat.edit(|tx| {
                let mut out = Vec::new();
                for n in &names {
                    out.push(edit::remove_relgroup(tx, n)?);
                }
                Ok(out)
            })?)
        }
        Noun::Dbgroup(w) => texts(remove_each(
            &mut cat,
            &names_only(&w, "remove dbgroup")?,
            |tx, n| reconcile::syncs_of_dbgroup(tx, n),
            |tx, n| edit::remove_dbgroup(tx, n, w.force),
        )?),
        Noun::Sync(w) => {
            let names = crate::cli::strip_noise(&names_only(&w, "remove sync")?);
            let n2 = names.clone();
            texts(edit_with_capture(
                &mut cat,
                |_| Ok(n2),
                |tx| {
                    let mut out = Vec::new();
                    for n in &names {
                        out.extend(edit::remove_sync(tx, n)?);
                    }
                    Ok(out)
                },
            )?)
        }
        Noun::Customcode(w) => {
            let names = names_only(&w, "remove customcode")?;
            texts(cat.edit(|tx| crate::catalog::customcode::remove(tx, &names))?)
        }
    };
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// The lines that show what an edit did.
fn texts(events: Vec<Event>) -> Vec<String> {
    events.iter().map(ToString::to_string).collect()
}

fn names_only(w: &Words, what: &str) -> Result<Vec<String>> {
    if w.words.is_empty() {
        return Err(Error::Usage(format!("'{what}' needs at least one name")));
    }
    if let Some(bad) = w.words.iter().find(|x| x.contains('=')) {
        return Err(Error::Usage(format!(
            "unexpected option {bad:?} for '{what}': give names only"
        )));
    }
    Ok(w.words.clone())
}
