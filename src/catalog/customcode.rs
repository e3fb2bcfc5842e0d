//! Lua hooks in the catalog: adding, changing and removing customcode
//! rows and what they attach to.

use postgres::Transaction;

use super::edit;
use super::error::CatalogError;
use super::event::{Event, Object};
use super::model;
use crate::domain::{RelType, Status};
use crate::error::{Context, Error, Result};

/// A hook to add (its source already compiled by the CLI).
pub struct NewCode<'a> {
    /// Name.
    pub name: &'a str,
    /// Hook point.
    pub whenrun: &'a str,
    /// Lua source.
    pub src: &'a str,
    /// Where it came from.
    pub src_file: &'a str,
    /// Free text.
    pub about: &'a str,
    /// Order among hooks of the same point.
    pub priority: i32,
    /// Whether it runs.
    pub status: Status,
    /// The sync it attaches to...
    pub sync: Option<&'a str>,
    /// ...or the table (with the db naming it, if ambiguous).
    pub relation: Option<&'a str>,
    /// Database of `relation`.
    pub db: Option<&'a str>,
}

fn exists(tx: &mut Transaction<'_>, name: &str) -> Result<bool> {
    Ok(tx
        .query_opt("SELECT 1 FROM capra.customcode WHERE name = $1", &[&name])
        .ctx(|| "looking up customcode".into())?
        .is_some())
}

/// Adds a hook and attaches it.
pub fn add(tx: &mut Transaction<'_>, c: &NewCode<'_>) -> Result<()> {
    let name = c.name;
    if exists(tx, name)? {
        return Err(Error::duplicate("customcode", name));
    }
    tx.execute(
        "INSERT INTO capra.customcode (name, whenrun, src_code, src_file, about, priority, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&name, &c.whenrun, &c.src, &c.src_file, &c.about, &c.priority, &c.status],
    )
    .ctx(|| format!("adding customcode \"{name}\""))?;
    if let Some(s) = c.sync {
        if model::sync(tx, s)?.is_none() {
            return Err(Error::not_found_hint("sync", s, "see: capra list syncs"));
        }
        tx.execute(
            "INSERT INTO capra.customcode_map (code, sync, priority) VALUES ($1, $2, $3)",
            &[&name, &s, &c.priority],
        )
        .ctx(|| "attaching customcode".into())?;
    } else if let Some(t) = c.relation {
        let all = model::relations(tx, Some(RelType::Table))?;
        let hits = edit::match_relations(&all, t, c.db)?;
        let rel = match hits.as_slice() {
            [one] => *one,
            [] => return Err(Error::not_found_hint("table", t, "see: capra list tables")),
            _ => {
                return Err(CatalogError::AmbiguousMatch {
                    reltype: RelType::Table,
                    term: t.into(),
                }
                .into())
            }
        };
        tx.execute(
            "INSERT INTO capra.customcode_map (code, relation, priority) VALUES ($1, $2, $3)",
            &[&name, &rel.id, &c.priority],
        )
        .ctx(|| "attaching customcode".into())?;
    }
    Ok(())
}

/// Changes columns of a hook (`(column, value, SQL type)`, checked by the
/// caller); returns an event per change shown (not the source itself).
pub fn update(tx: &mut Transaction<'_>, name: &str, sets: &[(&'static str, String, &str)]) -> Result<Vec<Event>> {
    if !exists(tx, name)? {
        return Err(Error::not_found_hint("customcode", name, "see: capra list customcodes"));
    }
    let mut out = Vec::new();
    for (col, val, cast) in sets {
        tx.execute(
            &format!("UPDATE capra.customcode SET {col} = $1::text::{cast} WHERE name = $2"),
            &[val, &name],
        )
        .ctx(|| format!("changing customcode \"{name}\""))?;
        if *col == "priority" {
            tx.execute(
                "UPDATE capra.customcode_map SET priority = $1::text::integer WHERE code = $2",
                &[val, &name],
            )
            .ctx(|| "changing priority".into())?;
        }
        if *col != "src_code" {
            out.push(Event::CustomcodeChanged {
                name: name.into(),
                column: col,
                value: val.clone(),
            });
        }
    }
    Ok(out)
}

/// Removes hooks by name; an unknown name changes nothing.
pub fn remove(tx: &mut Transaction<'_>, names: &[String]) -> Result<Vec<Event>> {
    for n in names {
        let k = tx
            .execute("DELETE FROM capra.customcode WHERE name = $1", &[n])
            .ctx(|| format!("removing customcode \"{n}\""))?;
        if k == 0 {
            return Err(Error::not_found_hint(
                "customcode",
                n.clone(),
                "see: capra list customcodes",
            ));
        }
    }
    Ok(names
        .iter()
        .map(|n| Event::removed(Object::Customcode, n.clone()))
        .collect())
}
