//! `capra list ...` and `capra show ...`: the catalog as people read it
//! (Bucardo's layouts) or as scripts read it (`--json`).

use std::cell::Cell;

use clap::Args as ClapArgs;
use serde_json::{json, Value};

use super::Ctx;
use crate::catalog::model::{self, Relation};
use crate::domain::{RelType, Role, Status};
use crate::error::{Error, Result};
use crate::pg::discover::short_type;
use crate::pg::ident::wildcard_match;

/// `list WHAT [NAME|PATTERN...]`.
#[derive(ClapArgs, Debug)]
pub struct ListArgs {
    /// dbs, tables, sequences, relgroups (herds), dbgroups, syncs, customcodes or all.
    pub what: Option<String>,
    /// Names or patterns (`*`, `%`); for tables also db=NAME.
    pub names: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum What {
    Dbs,
    Tables,
    Sequences,
    Relgroups { herd: bool },
    Dbgroups,
    Syncs,
    Customcodes,
    All,
}

fn parse_what(w: &str) -> Option<What> {
    Some(match w.to_lowercase().as_str() {
        "db" | "dbs" | "database" | "databases" => What::Dbs,
        "table" | "tables" | "tab" => What::Tables,
        "sequence" | "sequences" | "seq" | "seqs" => What::Sequences,
        "relgroup" | "relgroups" => What::Relgroups { herd: false },
        "herd" | "herds" => What::Relgroups { herd: true },
        "dbgroup" | "dbgroups" => What::Dbgroups,
        "sync" | "syncs" => What::Syncs,
        "customcode" | "customcodes" | "code" | "codes" => What::Customcodes,
        "all" => What::All,
        _ => return None,
    })
}

const LIST_USAGE: &str =
    "usage: capra list dbs|tables|sequences|relgroups|herds|dbgroups|syncs|customcodes|all [NAME|PATTERN...]";

/// Whether a name passes the user's name/pattern filters.
fn wanted(name: &str, filters: &[String]) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            if f.contains(['*', '%']) {
                wildcard_match(&f.replace('%', "*"), name)
            } else {
                f == name || f.eq_ignore_ascii_case(name)
            }
        })
}

/// `capra list ...`.
pub fn run(ctx: &Ctx, a: ListArgs) -> Result<()> {
    let Some(w) = a.what.as_deref() else {
        return Err(Error::Usage(LIST_USAGE.into()));
    };
    let what = parse_what(w).ok_or_else(|| Error::Usage(format!("cannot list {w:?}; {LIST_USAGE}")))?;
    let db_filter: Option<String> = a.names.iter().find_map(|n| n.strip_prefix("db=").map(String::from));
    let mut status_filter: Option<Status> = None;
    let mut filters: Vec<String> = Vec::new();
    if db_filter.is_some() && !matches!(what, What::Tables | What::Sequences | What::All) {
        return Err(Error::Usage(format!(
            "db=NAME narrows tables and sequences only, not {w}"
        )));
    }
    for n in &a.names {
        if n.starts_with("db=") {
            continue;
        }
        if let (What::Syncs, Ok(st)) = (what, n.parse::<Status>()) {
            status_filter = Some(st);
            continue;
        }
        if n.contains('=') {
            return Err(Error::Usage(format!(
                "unexpected {n:?} for list: give names or patterns (tables also db=NAME)"
            )));
        }
        filters.push(n.clone());
    }
    let mut cat = ctx.catalog()?;
    let c = &mut cat.client;
    // A typo'd db= would read as "nothing matches": name it instead.
    if let Some(d) = db_filter.as_deref() {
        if model::db(c, d)?.is_none() {
            return Err(Error::not_found_hint("database", d, "see: capra list dbs"));
        }
    }
    print_list(ctx, c, what, &filters, db_filter.as_deref(), status_filter, None)
}

fn emit_json(v: Value) {
    println!("{v:#}");
}

/// What one list was asked for: the names or patterns typed, the other
/// conditions as the user typed them (`db=shop`, `status inactive`), and,
/// inside `list all`, whether an earlier kind printed anything (for the
/// blank line between kinds, and to say once that nothing matched).
struct Asked<'a> {
    names: &'a [String],
    also: Vec<String>,
    in_all: Option<&'a Cell<bool>>,
}

impl Asked<'_> {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.also.is_empty()
    }

    /// `shop_sync, status inactive`.
    fn describe(&self) -> String {
        self.names
            .iter()
            .chain(&self.also)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Inside `list all`: a blank line before every kind but the first
    /// printed.
    fn separate(&self) {
        if let Some(p) = self.in_all {
            if p.replace(true) {
                println!();
            }
        }
    }
}

/// Every list prints `--json` output or "There are no PLURAL." the same
/// way; when something was asked for and nothing matched, it says what was
/// asked and lists every name there is (`all`, with the attribute that
/// did not match). Inside `list all` a kind with no match prints nothing.
/// True when that was all there was to print.
fn json_or_none<T: serde::Serialize>(
    ctx: &Ctx,
    items: &[T],
    plural: &str,
    asked: &Asked<'_>,
    all: impl FnOnce() -> Vec<String>,
) -> bool {
    if ctx.json {
        emit_json(json!(items));
        return true;
    }
    if !items.is_empty() {
        asked.separate();
        return false;
    }
    if asked.is_empty() {
        asked.separate();
        println!("There are no {plural}.");
        return true;
    }
    if asked.in_all.is_some() {
        return true;
    }
    let all = all();
    if all.is_empty() {
        println!("There are no {plural}.");
    } else {
        const SHOWN: usize = 20;
        let more = all.len().saturating_sub(SHOWN);
        let mut names = all.into_iter().take(SHOWN).collect::<Vec<_>>().join(", ");
        if more > 0 {
            names.push_str(&format!(" and {more} more"));
        }
        println!("No {plural} match {}; all {plural}: {names}", asked.describe());
    }
    true
}

/// The names of everything a list could show, for "no match".
fn names_of<T>(items: Result<Vec<T>>, name: impl Fn(&T) -> String) -> Vec<String> {
    items.map(|v| v.iter().map(name).collect()).unwrap_or_default()
}

fn print_list(
    ctx: &Ctx,
    c: &mut postgres::Client,
    what: What,
    filters: &[String],
    db_filter: Option<&str>,
    status: Option<Status>,
    in_all: Option<&Cell<bool>>,
) -> Result<()> {
    let mut asked = Asked {
        names: filters,
        also: Vec::new(),
        in_all,
    };
    match what {
        What::Tables | What::Sequences => asked.also.extend(db_filter.map(|d| format!("db={d}"))),
        What::Syncs => asked.also.extend(status.map(|s| format!("status {s}"))),
        _ => {}
    }
    let asked = &asked;
    match what {
        What::Dbs => list_dbs(ctx, c, asked),
        What::Tables => list_relations(ctx, c, RelType::Table, asked, db_filter),
        What::Sequences => list_relations(ctx, c, RelType::Sequence, asked, db_filter),
        What::Relgroups { herd } => list_relgroups(ctx, c, herd, asked),
        What::Dbgroups => list_dbgroups(ctx, c, asked),
        What::Syncs => list_syncs(ctx, c, asked, status),
        What::Customcodes => list_customcodes(ctx, c, asked),
        What::All => list_all(ctx, c, filters, db_filter),
    }
}

/// `list all`: one JSON document, or every list in turn.
fn list_all(ctx: &Ctx, c: &mut postgres::Client, filters: &[String], db_filter: Option<&str>) -> Result<()> {
    let doc = json!({
        "dbs": model::dbs(c)?,
        "dbgroups": model::dbgroups(c)?,
        "tables": model::relations(c, Some(RelType::Table))?,
        "sequences": model::relations(c, Some(RelType::Sequence))?,
        "relgroups": model::relgroups(c)?,
        "syncs": model::syncs(c)?,
        "customcodes": model::customcodes(c)?,
        "config": model::config(c)?,
    });
    if ctx.json {
        emit_json(doc);
        return Ok(());
    }
    let printed = Cell::new(false);
    for w in [
        What::Dbs,
        What::Dbgroups,
        What::Tables,
        What::Sequences,
        What::Relgroups { herd: false },
        What::Syncs,
        What::Customcodes,
    ] {
        print_list(ctx, c, w, filters, db_filter, None, Some(&printed))?;
    }
    if !printed.get() {
        let asked = Asked {
            names: filters,
            also: db_filter.map(|d| format!("db={d}")).into_iter().collect(),
            in_all: None,
        };
        println!("Nothing matches {}; capra list all shows everything", asked.describe());
    }
    Ok(())
}

/// `list dbs`: one line per database; with -v its dbgroups and syncs.
fn list_dbs(ctx: &Ctx, c: &mut postgres::Client, asked: &Asked<'_>) -> Result<()> {
    let filters = asked.names;
    let dbs: Vec<_> = model::dbs(c)?
        .into_iter()
        .filter(|d| wanted(&d.name, filters))
        .collect();
    if json_or_none(ctx, &dbs, "databases", asked, || {
        names_of(model::dbs(c), |d| d.name.clone())
    }) {
        return Ok(());
    }
    let groups = model::dbgroups(c)?;
    let syncs = model::syncs(c)?;
    let w = dbs.iter().map(|d| d.name.len()).max().unwrap_or(0);
    let sw = dbs.iter().map(|d| d.status.as_str().len()).max().unwrap_or(0);
    for d in &dbs {
        let mut line = format!(
            "Database: {:<w$}  Status: {:<sw$}  Conn: {}",
            d.name,
            d.status,
            d.psql_line()
        );
        if !d.server_side_prepares {
            line.push_str(" (SSP is off)");
        }
        if d.makedelta {
            line.push_str(" (makedelta on)");
        }
        println!("{}", line.trim_end());
        if ctx.verbose > 0 {
            for g in &groups {
                if let Some(m) = g.members.iter().find(|m| m.db == d.name) {
                    println!("  Belongs to dbgroup {} ({})", g.name, m.role);
                    for s in syncs.iter().filter(|s| s.dbgroup == g.name) {
                        println!("  Used in sync {} in a role of {}", s.name, m.role);
                    }
                }
            }
        }
    }
    Ok(())
}

/// How a relation type is labelled in lists.
fn rel_label(kind: RelType) -> &'static str {
    match kind {
        RelType::Table => "Table",
        RelType::Sequence => "Sequence",
    }
}

/// `list tables` / `list sequences`: one line per relation; with -v its
/// relgroups and syncs.
fn list_relations(
    ctx: &Ctx,
    c: &mut postgres::Client,
    kind: RelType,
    asked: &Asked<'_>,
    db_filter: Option<&str>,
) -> Result<()> {
    let filters = asked.names;
    let rels: Vec<Relation> = model::relations(c, Some(kind))?
        .into_iter()
        .filter(|r| db_filter.is_none_or(|d| r.db == d))
        .filter(|r| {
            filters.is_empty()
                || wanted(&r.name.human(), filters)
                || wanted(&r.name.shown(), filters)
                || wanted(&r.name.name, filters)
        })
        .collect();
    if json_or_none(ctx, &rels, &format!("{kind}s"), asked, || {
        names_of(model::relations(c, Some(kind)), |r| match db_filter {
            Some(_) => format!("{} (DB: {})", r.name.shown(), r.db),
            None => r.name.shown(),
        })
    }) {
        return Ok(());
    }
    let syncs = model::syncs(c)?;
    let idw = rels.iter().map(|r| r.id.to_string().len()).max().unwrap_or(1) + 1;
    let nw = rels.iter().map(|r| r.name.shown().len()).max().unwrap_or(0);
    let dw = rels.iter().map(|r| r.db.len()).max().unwrap_or(0);
    for r in &rels {
        let num = format!("{}.", r.id);
        let label = rel_label(kind);
        let mut line = format!("{num:<idw$} {label}: {:<nw$}  DB: {:<dw$}", r.name.shown(), r.db);
        if kind == RelType::Table {
            line.push_str(&table_details(r));
        }
        println!("{}", line.trim_end());
        if ctx.verbose > 0 {
            let used: Vec<&str> = syncs
                .iter()
                .filter(|s| r.relgroups.contains(&s.relgroup))
                .map(|s| s.name.as_str())
                .collect();
            if !r.relgroups.is_empty() {
                println!("  Relgroups: {}", r.relgroups.join(", "));
            }
            if !used.is_empty() {
                println!("  Syncs: {}", used.join(", "));
            }
        }
    }
    Ok(())
}

/// A table's key, filter and conflict strategy, as `list tables` appends them.
fn table_details(r: &Relation) -> String {
    let key = if r.pkey.is_empty() {
        "none".to_string()
    } else {
        format!(
            "{} ({})",
            r.pkey.join("|"),
            r.pkeytype.iter().map(|t| short_type(t)).collect::<Vec<_>>().join("|")
        )
    };
    let mut out = format!("  PK: {key}");
    if let Some(f) = &r.filter {
        out.push_str(&format!("  Filter: {f}"));
    }
    if let Some(s) = &r.conflict_strategy {
        out.push_str(&format!("  Conflict: {s}"));
    }
    out
}

/// `list relgroups` (or `herds`): members and the syncs using each.
fn list_relgroups(ctx: &Ctx, c: &mut postgres::Client, herd: bool, asked: &Asked<'_>) -> Result<()> {
    let filters = asked.names;
    let groups: Vec<_> = model::relgroups(c)?
        .into_iter()
        .filter(|g| wanted(&g.name, filters))
        .collect();
    let label = if herd { "Herd" } else { "Relgroup" };
    if json_or_none(ctx, &groups, &format!("{}s", label.to_lowercase()), asked, || {
        names_of(model::relgroups(c), |g| g.name.clone())
    }) {
        return Ok(());
    }
    let rels = model::relations(c, None)?;
    for g in &groups {
        let members: Vec<String> = g
            .members
            .iter()
            .filter_map(|id| rels.iter().find(|r| r.id == *id))
            .map(|r| r.name.shown())
            .collect();
        println!(
            "{label}: {}  DB: {}  Members: {}",
            g.name,
            g.db.as_deref().unwrap_or("(none)"),
            if members.is_empty() {
                "(none)".to_string()
            } else {
                members.join(", ")
            }
        );
        if !g.syncs.is_empty() {
            println!("  Used in syncs: {}", g.syncs.join(", "));
        }
    }
    Ok(())
}

/// `list dbgroups`: members with their roles and the syncs using each.
fn list_dbgroups(ctx: &Ctx, c: &mut postgres::Client, asked: &Asked<'_>) -> Result<()> {
    let filters = asked.names;
    let groups: Vec<_> = model::dbgroups(c)?
        .into_iter()
        .filter(|g| wanted(&g.name, filters))
        .collect();
    if json_or_none(ctx, &groups, "dbgroups", asked, || {
        names_of(model::dbgroups(c), |g| g.name.clone())
    }) {
        return Ok(());
    }
    let syncs = model::syncs(c)?;
    let w = groups.iter().map(|g| g.name.len()).max().unwrap_or(0);
    for g in &groups {
        let m = members_line(g);
        println!(
            "Dbgroup: {:<w$}  Members: {}",
            g.name,
            if m.is_empty() { "(none)".into() } else { m }
        );
        let used: Vec<&str> = syncs
            .iter()
            .filter(|s| s.dbgroup == g.name)
            .map(|s| s.name.as_str())
            .collect();
        if !used.is_empty() {
            println!("  Used in syncs: {}", used.join(", "));
        }
    }
    Ok(())
}

/// A dbgroup's members as `db:role db:role`.
fn members_line(g: &model::DbGroup) -> String {
    g.members
        .iter()
        .map(|m| format!("{}:{}", m.db, m.role))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `list syncs [STATUS]`: Bucardo's one-line summary; with -v the relations.
fn list_syncs(ctx: &Ctx, c: &mut postgres::Client, asked: &Asked<'_>, status: Option<Status>) -> Result<()> {
    let filters = asked.names;
    let syncs: Vec<_> = model::syncs(c)?
        .into_iter()
        .filter(|s| wanted(&s.name, filters))
        .filter(|s| status.is_none_or(|st| s.status == st))
        .collect();
    if json_or_none(ctx, &syncs, "syncs", asked, || {
        names_of(model::syncs(c), |s| match status {
            Some(_) => format!("{} ({})", s.name, s.status),
            None => s.name.clone(),
        })
    }) {
        return Ok(());
    }
    let groups = model::dbgroups(c)?;
    let rels = model::relations(c, None)?;
    let rgs = model::relgroups(c)?;
    for s in &syncs {
        let g = groups.iter().find(|g| g.name == s.dbgroup);
        let members = g.map(members_line).unwrap_or_default();
        let kind = g.map(sync_kind).unwrap_or("sync");
        let st = if s.status == Status::Active {
            "Active"
        } else {
            "Inactive"
        };
        println!(
            "Sync \"{}\"  Relgroup \"{}\"  DB group \"{}\" {}  ({})  [{st}]",
            s.name, s.relgroup, s.dbgroup, members, kind
        );
        if ctx.verbose > 0 {
            if let Some(rg) = rgs.iter().find(|r| r.name == s.relgroup) {
                for id in &rg.members {
                    if let Some(r) = rels.iter().find(|r| r.id == *id) {
                        println!("  {} {}", rel_label(r.reltype), r.name.shown());
                    }
                }
            }
        }
    }
    Ok(())
}

/// `list customcodes`: when each runs, where from; with -vvv the code.
fn list_customcodes(ctx: &Ctx, c: &mut postgres::Client, asked: &Asked<'_>) -> Result<()> {
    let filters = asked.names;
    let codes: Vec<_> = model::customcodes(c)?
        .into_iter()
        .filter(|x| wanted(&x.name, filters))
        .collect();
    if json_or_none(ctx, &codes, "customcodes", asked, || {
        names_of(model::customcodes(c), |x| x.name.clone())
    }) {
        return Ok(());
    }
    for x in &codes {
        println!(
            "Code: {}  When run: {}  Status: {}  Priority: {}  File: {}",
            x.name, x.whenrun, x.status, x.priority, x.src_file
        );
        if !x.syncs.is_empty() {
            println!("  Syncs: {}", x.syncs.join(", "));
        }
        if !x.relations.is_empty() {
            // `schema.table@db`: the name as psql needs it, then the database.
            let shown: Vec<String> = x
                .relations
                .iter()
                .map(|r| match r.rsplit_once('@') {
                    Some((t, db)) => format!("{}@{db}", crate::pg::ident::show_qualified(t)),
                    None => crate::pg::ident::show_qualified(r),
                })
                .collect();
            println!("  Relations: {}", shown.join(", "));
        }
        if ctx.verbose > 2 {
            println!("{}", x.src_code);
        }
    }
    Ok(())
}

/// What a sync does, from its roles (Bucardo 4's type names).
pub fn sync_kind(g: &model::DbGroup) -> &'static str {
    let sources = g.with_role(Role::Source).len();
    let targets = g.with_role(Role::Target).len();
    let full = g.with_role(Role::Fullcopy).len();
    match (sources, targets, full) {
        (s, _, _) if s > 1 => "multi-master",
        (1, 0, f) if f > 0 => "fullcopy",
        (1, t, 0) if t > 0 => "pushdelta",
        (1, _, _) => "pushdelta+fullcopy",
        _ => "incomplete",
    }
}

/// `capra show all | changed | NAME...`.
pub fn show(ctx: &Ctx, names: &[String]) -> Result<()> {
    let mut cat = ctx.catalog()?;
    let rows = model::config(&mut cat.client)?;
    let pick: Vec<_> = if names.is_empty() || names.iter().any(|n| n == "all") {
        rows
    } else if names.iter().any(|n| n == "changed") {
        let changed: Vec<_> = rows.into_iter().filter(|r| r.setting != r.defval).collect();
        if changed.is_empty() && !ctx.json {
            println!("No setting differs from its default (capra show all lists them).");
            return Ok(());
        }
        changed
    } else {
        let sel: Vec<_> = rows
            .into_iter()
            .filter(|r| {
                names.iter().any(|n| {
                    let n = n.to_lowercase();
                    if n.contains(['*', '%']) {
                        wildcard_match(&n.replace('%', "*"), &r.name)
                    } else {
                        r.name.contains(&n)
                    }
                })
            })
            .collect();
        if sel.is_empty() {
            let near = names.iter().find_map(|n| {
                crate::cli::suggest::nearest(n, crate::catalog::settings::SETTINGS.iter().map(|s| s.name))
            });
            return Err(Error::Usage(match near {
                Some(n) => format!(
                    "no setting matches {}: did you mean '{n}'? (see: capra show all)",
                    names.join(", ")
                ),
                None => format!("no setting matches {}; see: capra show all", names.join(", ")),
            }));
        }
        sel
    };
    // Passwords never reach output.
    let mut pick = pick;
    for r in pick.iter_mut() {
        if r.name.contains("pass") && !r.setting.is_empty() {
            r.setting = "********".into();
        }
    }
    if ctx.json {
        let m: serde_json::Map<String, Value> = pick
            .iter()
            .map(|r| (r.name.clone(), Value::String(r.setting.clone())))
            .collect();
        emit_json(Value::Object(m));
        return Ok(());
    }
    let w = pick.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &pick {
        if ctx.verbose > 0 {
            println!("{:<w$} = {}   # {}", r.name, r.setting, r.about);
        } else {
            println!("{:<w$} = {}", r.name, r.setting);
        }
    }
    Ok(())
}
