//! Tables and sequences: `add all tables`, `add table`, `remove table`, `update table`.

use super::db::{opt_text, pick_db};
use super::{edit_with_capture, warn_inert};
use crate::capture::reconcile;
use crate::catalog::edit;
use crate::catalog::model::{self, Relation};
use crate::catalog::{Catalog, CatalogError};
use crate::cli::kv::{self, check_name, key, Key};
use crate::cli::sync_opts;
use crate::cli::{AddAll, AllWhat, Ctx, Words};
use crate::domain::{RelType, Strategy};
use crate::error::{Error, Result};
use crate::pg::discover::{self, Found};
use crate::pg::ident::split_user_name;

/// Table options kept only for Bucardo scripts (none today: every table
/// option acts).
fn inert(_k: &str) -> Option<&'static str> {
    None
}

const REL_KEYS: &[Key] = &[
    key("db", &["database"]),
    key("relgroup", &["herd"]),
    key("standard_conflict", &["conflict_strategy"]),
];

const TABLE_UPDATE_KEYS: &[Key] = &[
    key("db", &["database"]),
    key("pkey", &[]),
    key("autokick", &["ping"]),
    key("rebuild_index", &[]),
    key("analyze_after_copy", &[]),
    key("vacuum_after_copy", &[]),
    key("ghost", &[]),
    key("conflict_strategy", &["standard_conflict"]),
    key("strict_checking", &[]),
    key("makedelta", &[]),
    key("filter", &["where", "row_filter"]),
];

fn split_commas(v: &[String]) -> Vec<String> {
    v.iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether a live relation passes the -t/-T/-n/-N filters.
fn passes(f: &Found, only_t: &[String], skip_t: &[String], only_n: &[String], skip_n: &[String]) -> Result<bool> {
    let matches_table = |term: &str| -> Result<bool> {
        let (schema, name) = split_user_name(term).map_err(Error::Usage)?;
        let name_ok = name.matches(&f.name.name) || name.matches_folded(&f.name.name);
        let schema_ok = schema
            .as_ref()
            .is_none_or(|s| s.matches(&f.name.schema) || s.matches_folded(&f.name.schema));
        Ok(name_ok && schema_ok)
    };
    let matches_schema = |term: &str| f.name.schema == term || f.name.schema.eq_ignore_ascii_case(term);
    if !only_n.is_empty() && !only_n.iter().any(|s| matches_schema(s)) {
        return Ok(false);
    }
    if skip_n.iter().any(|s| matches_schema(s)) {
        return Ok(false);
    }
    if !only_t.is_empty() {
        let mut any = false;
        for t in only_t {
            any |= matches_table(t)?;
        }
        if !any {
            return Ok(false);
        }
    }
    for t in skip_t {
        if matches_table(t)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `capra add all tables|sequences [db=DB] [relgroup=RG] [-t/-T/-n/-N ...]`.
pub(super) fn add_all(ctx: &Ctx, a: AddAll) -> Result<()> {
    let kvs = kv::split(&a.words, REL_KEYS, "add all")?;
    warn_inert("table", &kvs.pairs, inert);
    if let Some(p) = kvs.positional.first() {
        return Err(Error::Usage(format!(
            "unexpected word {p:?} for 'add all': use db=, relgroup= and -t/-T/-n/-N filters"
        )));
    }
    let relgroup = a.relgroup.clone().or(kvs.get("relgroup").map(String::from));
    if let Some(g) = &relgroup {
        check_name("relgroup", g)?;
    }
    let conflict = match kvs.get("standard_conflict") {
        Some(v) => Some(sync_opts::conflict_strategy(v, &[])?),
        None => None,
    };
    let dbname = a.db.clone().or(kvs.get("db").map(String::from));
    let mut cat = ctx.catalog()?;
    let db = pick_db(&mut cat, dbname.as_deref())?;
    let mut client = db.connect()?;
    let (only_t, skip_t) = (split_commas(&a.table), split_commas(&a.exclude_table));
    let (only_n, skip_n) = (split_commas(&a.schema), split_commas(&a.exclude_schema));
    let (kind, live) = match a.what {
        AllWhat::Tables => (RelType::Table, discover::tables(&mut client)?),
        AllWhat::Sequences => (RelType::Sequence, discover::sequences(&mut client)?),
    };
    // Filters that name a table that does not exist are most likely typos.
    for t in only_t.iter().chain(skip_t.iter()) {
        if !t.contains(['*', '%'])
            && !live
                .iter()
                .any(|f| passes(f, std::slice::from_ref(t), &[], &[], &[]).unwrap_or(false))
        {
            return Err(CatalogError::NoSuchLive {
                reltype: kind,
                term: t.clone(),
                db: db.name.clone(),
            }
            .into());
        }
    }
    let mut chosen = Vec::new();
    for f in live {
        if passes(&f, &only_t, &skip_t, &only_n, &skip_n)? {
            chosen.push(f);
        }
    }
    if chosen.is_empty() {
        return Err(CatalogError::NothingFound {
            reltype: kind,
            db: db.name.clone(),
            filtered: !(only_t.is_empty() && skip_t.is_empty() && only_n.is_empty() && skip_n.is_empty()),
        }
        .into());
    }
    let report = store_found(ctx, &mut cat, &db.name, relgroup.as_deref(), &chosen, conflict.as_ref())?;
    for f in &chosen {
        let n = &f.name;
        let new = report.added.contains(n);
        let grouped = report.grouped.contains(n);
        match (&relgroup, new, grouped) {
            (Some(g), _, true) => ctx.say(format!("Added {kind} {} to relgroup {g}", n.shown())),
            (None, true, _) => ctx.say(format!("Added {kind} {}", n.shown())),
            _ => {
                if ctx.verbose > 0 {
                    ctx.say(format!("Already added: {kind} {}", n.shown()))
                }
            }
        }
    }
    ctx.say(format!("New {kind}s added: {}", report.added.len()));
    if !report.already.is_empty() {
        ctx.say(format!("Already added: {}", report.already.len()));
    }
    Ok(())
}

/// Stores live tables or sequences (and their relgroup) in the catalog,
/// capturing them for syncs already using the relgroup; says when the
/// relgroup was created.
fn store_found(
    ctx: &Ctx,
    cat: &mut Catalog,
    db: &str,
    relgroup: Option<&str>,
    found: &[Found],
    conflict: Option<&Strategy>,
) -> Result<edit::AddedRelations> {
    let rgs: Vec<String> = relgroup.iter().map(|s| s.to_string()).collect();
    let report = edit_with_capture(
        cat,
        |tx| reconcile::syncs_of_relgroups(tx, &rgs),
        |tx| edit::add_relations(tx, db, relgroup, found, conflict),
    )?;
    if report.created_relgroup {
        ctx.say(format!("Creating relgroup: {}", relgroup.unwrap_or_default()));
    }
    Ok(report)
}

/// Resolves user terms against a live database's tables or sequences.
pub(super) fn match_live(live: &[Found], terms: &[String], kind: &str, db: &str) -> Result<Vec<Found>> {
    let mut out: Vec<Found> = Vec::new();
    let mut missing = Vec::new();
    for t in terms {
        let (schema, name) = split_user_name(t).map_err(Error::Usage)?;
        let pick = |folded: bool| -> Vec<&Found> {
            live.iter()
                .filter(|f| {
                    let n = if folded {
                        name.matches_folded(&f.name.name)
                    } else {
                        name.matches(&f.name.name)
                    };
                    let s = schema
                        .as_ref()
                        .is_none_or(|s| s.matches(&f.name.schema) || (folded && s.matches_folded(&f.name.schema)));
                    n && s
                })
                .collect()
        };
        let mut hits = pick(false);
        if hits.is_empty() {
            hits = pick(true);
        }
        if hits.is_empty() {
            missing.push(t.clone());
        }
        for h in hits {
            if !out.iter().any(|o| o.name == h.name) {
                out.push(h.clone());
            }
        }
    }
    if !missing.is_empty() {
        return Err(CatalogError::NoMatchLive {
            what: kind.into(),
            terms: missing,
            db: db.into(),
        }
        .into());
    }
    Ok(out)
}

/// `capra add table|sequence NAME... [db=DB] [relgroup=RG]`.
pub(super) fn add_relations(ctx: &Ctx, w: &Words, kind: RelType) -> Result<()> {
    let a = kv::split(&w.words, REL_KEYS, &format!("add {kind}"))?;
    warn_inert(kind.as_str(), &a.pairs, inert);
    if a.positional.is_empty() {
        return Err(Error::Usage(format!(
            "usage: capra add {kind} NAME [NAME...] db=DB [relgroup=RG]"
        )));
    }
    let relgroup = a.get("relgroup").map(String::from);
    if let Some(g) = &relgroup {
        check_name("relgroup", g)?;
    }
    let conflict = match a.get("standard_conflict") {
        Some(v) => Some(sync_opts::conflict_strategy(v, &[])?),
        None => None,
    };
    let mut cat = ctx.catalog()?;
    let db = pick_db(&mut cat, a.get("db"))?;
    let mut client = db.connect()?;
    let live = if kind == RelType::Table {
        discover::tables(&mut client)?
    } else {
        discover::sequences(&mut client)?
    };
    let chosen = match_live(&live, &a.positional, kind.as_str(), &db.name)?;
    let report = store_found(ctx, &mut cat, &db.name, relgroup.as_deref(), &chosen, conflict.as_ref())?;
    for f in &chosen {
        let n = &f.name;
        match &relgroup {
            Some(g) if report.grouped.contains(n) => ctx.say(format!("Added {kind} {} to relgroup {g}", n.shown())),
            Some(g) => ctx.say(format!("{kind} {} is already in relgroup {g}", n.shown())),
            None if report.added.contains(n) => ctx.say(format!("Added {kind} {}", n.shown())),
            None => ctx.say(format!("{kind} {} was already added (key refreshed)", n.shown())),
        }
    }
    Ok(())
}

/// `capra remove table|sequence NAME... [db=DB]`; returns the lines to show.
pub(super) fn remove_relations(cat: &mut Catalog, w: &Words, kind: RelType) -> Result<Vec<String>> {
    let a = kv::split(&w.words, &[key("db", &["database"])], &format!("remove {kind}"))?;
    let db = a.get("db").map(String::from);
    let (terms, db2) = (a.positional.clone(), db.clone());
    let removed = edit_with_capture(
        cat,
        |tx| {
            let all = model::relations(tx, Some(kind))?;
            let mut ids = Vec::new();
            for t in &terms {
                ids.extend(edit::match_relations(&all, t, db2.as_deref())?.iter().map(|r| r.id));
            }
            reconcile::syncs_of_relations(tx, &ids)
        },
        |tx| edit::remove_relations(tx, &a.positional, db.as_deref(), kind),
    )?;
    let mut out = vec![format!("Removed the following {kind}s:")];
    for (n, d) in removed {
        out.push(format!("  {} (DB: {d})", n.shown()));
    }
    Ok(out)
}

/// The one catalog relation a user's term names (db= narrows it).
fn one_relation(cat: &mut Catalog, term: &str, db: Option<&str>, kind: RelType) -> Result<Relation> {
    let all = model::relations(&mut cat.client, Some(kind))?;
    let hits = edit::match_relations(&all, term, db)?;
    match hits.as_slice() {
        [] => Err(Error::not_found_looked(
            kind.as_str(),
            term,
            match crate::cli::suggest::nearest_relation(&all, term, db) {
                Some(near) => format!("did you mean {near}? (see: capra list {kind}s)"),
                None => format!("see: capra list {kind}s"),
            },
        )),
        [one] => Ok((*one).clone()),
        _ => Err(CatalogError::AmbiguousMatch {
            reltype: kind,
            term: term.into(),
        }
        .into()),
    }
}

/// Connects to the database a catalog relation lives in.
fn connect_to(cat: &mut Catalog, rel: &Relation) -> Result<postgres::Client> {
    let db = model::db(&mut cat.client, &rel.db)?
        .ok_or_else(|| Error::not_found_hint("database", rel.db.clone(), "see: capra list dbs"))?;
    db.connect()
}

/// The changes `update table` makes to one relation: (column, value,
/// SQL type) to store, and the lines that say so.
struct RelUpdate<'a> {
    kind: RelType,
    rel: &'a Relation,
    sets: Vec<(String, Option<String>, &'static str)>,
    lines: Vec<String>,
}

impl RelUpdate<'_> {
    /// `pkey=`: checked against the live table, which must have such a key.
    fn pkey(&mut self, cat: &mut Catalog, v: &str) -> Result<()> {
        let (kind, rel) = (self.kind, self.rel);
        let cols: Vec<String> = v
            .split([',', '|'])
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        let mut client = connect_to(cat, rel)?;
        let key = discover::is_unique_key(&mut client, &rel.name, &cols)?.ok_or_else(|| CatalogError::NotAKey {
            columns: cols.clone(),
            table: rel.name.clone(),
            db: rel.db.clone(),
        })?;
        self.sets.push(("pkey".into(), Some(pg_array(&key.columns)), "text[]"));
        self.sets
            .push(("pkeytype".into(), Some(pg_array(&key.types)), "text[]"));
        self.sets.push(("keykind".into(), Some(key.kind.to_string()), "text"));
        self.lines.push(format!(
            "Changed {kind} {} key to {}",
            rel.name.shown(),
            key.columns.join("|")
        ));
        Ok(())
    }

    /// `filter=`: checked, then tried on the live table; empty or `none` removes it.
    fn filter(&mut self, cat: &mut Catalog, v: &str) -> Result<()> {
        let (kind, rel) = (self.kind, self.rel);
        let f = match v.trim() {
            "" => None,
            s if s.eq_ignore_ascii_case("none") => None,
            s => Some(crate::capture::validate::check_filter(s)?),
        };
        if let Some(f) = &f {
            let mut client = connect_to(cat, rel)?;
            crate::capture::validate::try_filter(&mut client, &rel.name, f, &rel.db)?;
        }
        self.lines.push(match &f {
            Some(f) => format!("Changed {kind} {} filter to {f}", rel.name.shown()),
            None => format!("Removed the filter of {kind} {}", rel.name.shown()),
        });
        self.sets.push(("filter".into(), f, "text"));
        Ok(())
    }

    /// Every other key: checked here, nothing live to ask.
    fn option(&mut self, k: &str, v: &str) -> Result<()> {
        let (kind, name) = (self.kind, self.rel.name.shown());
        if let Some((col, val, cast)) = relation_option(k, v)? {
            let shown = match cast {
                "boolean" => u8::from(val.as_deref() == Some("true")).to_string(),
                _ => val.clone().unwrap_or_default(),
            };
            self.lines.push(format!("Changed {kind} {name} {k} to {shown}"));
            self.sets.push((col, val, cast));
        }
        Ok(())
    }
}

/// One per-table option checked: its column, value and SQL type (None for
/// keys that are no option). `import bucardo` checks Bucardo's with it.
pub(crate) fn relation_option(k: &str, v: &str) -> Result<Option<(String, Option<String>, &'static str)>> {
    Ok(Some(match k {
        "autokick" | "analyze_after_copy" | "vacuum_after_copy" | "ghost" | "strict_checking" => {
            let b = kv::bool_value(k, v)?;
            (k.into(), Some(b.to_string()), "boolean")
        }
        "rebuild_index" => {
            let b = kv::bool_value(k, v)?;
            (k.into(), Some((b as u8).to_string()), "smallint")
        }
        "conflict_strategy" => {
            let s = sync_opts::conflict_strategy(v, &[])?;
            (k.into(), Some(s.to_string()), "text")
        }
        "makedelta" => (k.into(), opt_text(v), "text"),
        _ => return Ok(None),
    }))
}

/// `capra update table|sequence NAME [db=DB] key=value...`.
pub(super) fn update_relation(ctx: &Ctx, w: &Words, kind: RelType) -> Result<()> {
    let a = kv::split(&w.words, TABLE_UPDATE_KEYS, &format!("update {kind}"))?;
    warn_inert(kind.as_str(), &a.pairs, inert);
    let [term] = a.positional.as_slice() else {
        return Err(Error::Usage(format!(
            "usage: capra update {kind} NAME [db=DB] key=value..."
        )));
    };
    let mut cat = ctx.catalog()?;
    let rel = one_relation(&mut cat, term, a.get("db"), kind)?;
    let mut up = RelUpdate {
        kind,
        rel: &rel,
        sets: Vec::new(),
        lines: Vec::new(),
    };
    for (k, v) in &a.pairs {
        match k.as_str() {
            "pkey" => up.pkey(&mut cat, v)?,
            "filter" => up.filter(&mut cat, v)?,
            _ => up.option(k, v)?,
        }
    }
    let RelUpdate { sets, lines, .. } = up;
    if sets.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to change for {kind} {term}: give key=value pairs"
        )));
    }
    edit_with_capture(
        &mut cat,
        |tx| reconcile::syncs_of_relations(tx, &[rel.id]),
        |tx| {
            for (col, val, cast) in &sets {
                edit::set_relation_column(tx, &rel, col, val, cast)?;
            }
            Ok(())
        },
    )?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}

/// A PostgreSQL array literal for text values.
fn pg_array(v: &[String]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", items.join(","))
}
