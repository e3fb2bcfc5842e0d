//! `capra validate`: check a sync against its live databases, read-only.
//! Every table and sequence must exist everywhere with agreeing columns;
//! delta syncs need a key on every table; capra's role needs its rights.
//! Findings name the table and database and say what to do.

use postgres::{Client, GenericClient};

use crate::catalog::edit::is_delta;
use crate::catalog::model::{self, Relation};
use crate::domain::{DbStatus, RelType, Role};
use crate::error::{Context, Error, Result};
use crate::pg::discover::{self, Column, Kind};
use crate::pg::ident::QualName;
use crate::pg::RowExt;

use super::CaptureError;

mod rights;

/// Whether two column types are close enough to copy between.
fn compatible(src: &str, dst: &str) -> bool {
    if src == dst {
        return true;
    }
    let base = |t: &str| t.split('(').next().unwrap_or(t).trim().to_string();
    let (s, d) = (base(src), base(dst));
    let text = ["text", "character varying"];
    if text.contains(&s.as_str()) && text.contains(&d.as_str()) {
        // varchar(n) -> varchar(m) with m < n could truncate; text is unbounded.
        return d == "text" || typmod(src) <= typmod(dst);
    }
    let ints = ["smallint", "integer", "bigint"];
    if let (Some(a), Some(b)) = (ints.iter().position(|x| *x == s), ints.iter().position(|x| *x == d)) {
        return a <= b;
    }
    let ts = ["timestamp without time zone", "timestamp with time zone"];
    if ts.contains(&s.as_str()) && ts.contains(&d.as_str()) {
        return true;
    }
    if s == "numeric" && d == "numeric" {
        return typmod(dst) == u32::MAX || typmod(src) <= typmod(dst);
    }
    false
}

fn typmod(t: &str) -> u32 {
    t.split_once('(')
        .and_then(|(_, r)| r.trim_end_matches(')').split(',').next()?.trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// A member database validation reached.
struct Member {
    /// Its name in the catalog.
    name: String,
    /// What it does in the dbgroup.
    role: Role,
    /// The open connection.
    client: Client,
    /// capra's role there.
    me: rights::Me,
}

/// What validation has found so far, in the order found.
#[derive(Default)]
struct Findings {
    /// What must be fixed, each naming the table or database.
    problems: Vec<String>,
    /// What passes but deserves a word.
    notes: Vec<String>,
}

impl Findings {
    /// Ok(notes) when nothing is wrong, else the sync's validation error.
    fn into_result(self, sync: &str) -> Result<Vec<String>> {
        if self.problems.is_empty() {
            Ok(self.notes)
        } else {
            Err(Error::Validation {
                sync: sync.into(),
                problems: self.problems,
            })
        }
    }
}

/// The sync under validation, its dbgroup and its relations.
struct Scope {
    /// The sync's catalog row.
    sync: model::Sync,
    /// Its dbgroup.
    group: model::DbGroup,
    /// The relations of its relgroup.
    rels: Vec<Relation>,
    /// Whether it replicates changes (not only full copies).
    delta: bool,
}

impl Scope {
    /// How many sources the dbgroup has (more than one: multi-master).
    fn sources(&self) -> usize {
        self.group.with_role(Role::Source).len()
    }
}

/// Reads the sync, its dbgroup and its relations from the catalog.
fn load_scope(cat_client: &mut impl GenericClient, sync: &str) -> Result<Scope> {
    let s =
        model::sync(cat_client, sync)?.ok_or_else(|| Error::not_found_hint("sync", sync, "see: capra list syncs"))?;
    let group =
        model::dbgroup(cat_client, &s.dbgroup)?.ok_or_else(|| Error::not_found("dbgroup", s.dbgroup.clone()))?;
    let rg = model::relgroups(cat_client)?
        .into_iter()
        .find(|g| g.name == s.relgroup)
        .ok_or_else(|| Error::not_found("relgroup", s.relgroup.clone()))?;
    let rels: Vec<Relation> = model::relations(cat_client, None)?
        .into_iter()
        .filter(|r| rg.members.contains(&r.id))
        .collect();
    let delta = is_delta(&group);
    Ok(Scope {
        sync: s,
        group,
        rels,
        delta,
    })
}

/// Connects to every active member; unknown or unreachable ones become
/// findings.
fn connect_members(
    cat_client: &mut impl GenericClient,
    group: &model::DbGroup,
    found: &mut Findings,
) -> Result<Vec<Member>> {
    let mut conns = Vec::new();
    for m in &group.members {
        let Some(db) = model::db(cat_client, &m.db)? else {
            found.problems.push(format!(
                "database \"{}\" is in dbgroup \"{}\" but not in the catalog",
                m.db, group.name
            ));
            continue;
        };
        if db.status == DbStatus::Inactive {
            found
                .notes
                .push(format!("database \"{}\" is inactive and was skipped", db.name));
            continue;
        }
        match db.connect() {
            Ok(mut client) => conns.push(Member {
                name: m.db.clone(),
                role: m.role,
                me: rights::Me::read(&mut client)?,
                client,
            }),
            Err(e) => found.problems.push(crate::pg::error::flatten(&e.to_string())),
        }
    }
    Ok(conns)
}

/// Validates one sync; Ok(notes) when it passes.
pub fn validate_sync(cat_client: &mut impl GenericClient, sync: &str) -> Result<Vec<String>> {
    let scope = load_scope(cat_client, sync)?;
    let mut found = Findings::default();
    let mut conns = connect_members(cat_client, &scope.group, &mut found)?;
    let Some(src_idx) = conns.iter().position(|m| m.role == Role::Source) else {
        if found.problems.is_empty() {
            found.problems.push("no reachable active source database".into());
        }
        return Err(Error::Validation {
            sync: sync.into(),
            problems: found.problems,
        });
    };
    for rel in &scope.rels {
        check_relation(&scope, rel, &mut conns, src_idx, &mut found)?;
    }
    for m in conns.iter_mut() {
        rights::database(&scope, m, &mut found)?;
        commit_times(&scope, m, &mut found)?;
    }
    found.into_result(sync)
}

/// Checks one relation on every reachable member: existence and kind,
/// then (sequences) rights, or (tables) key, filter, columns and rights.
fn check_relation(
    scope: &Scope,
    rel: &Relation,
    conns: &mut [Member],
    src_idx: usize,
    found: &mut Findings,
) -> Result<()> {
    let present = presence(rel, conns, found)?;
    if rel.reltype == RelType::Sequence {
        return rights::relation(scope, rel, conns, &present, found);
    }
    let src_cols = if present[src_idx] {
        Some(discover::columns(&mut conns[src_idx].client, &rel.name)?)
    } else {
        None
    };
    let src_name = conns[src_idx].name.clone();
    if scope.delta {
        check_key(rel, &mut conns[src_idx], present[src_idx], found)?;
    }
    // The row filter, on every source.
    if let Some(f) = &rel.filter {
        for (i, m) in conns.iter_mut().enumerate() {
            if m.role == Role::Source && present[i] {
                if let Err(e) = check_filter(f).and_then(|f| try_filter(&mut m.client, &rel.name, &f, &m.name)) {
                    found.problems.push(format!(
                        "{}; change it (capra update table {} filter=...)",
                        crate::pg::error::flatten(&e.to_string()),
                        rel.name.shown()
                    ));
                }
            }
        }
    }
    let Some(src_cols) = src_cols else { return Ok(()) };
    let src = Source {
        name: &src_name,
        cols: &src_cols,
    };
    for (i, m) in conns.iter_mut().enumerate() {
        if i == src_idx || !present[i] {
            continue;
        }
        let cols = discover::columns(&mut m.client, &rel.name)?;
        compare_columns(scope, rel, &src, m, &cols, found);
        extra_columns(rel, &src, m, &cols, found);
    }
    rights::relation(scope, rel, conns, &present, found)
}

/// Per member, whether the relation exists there as the right kind.
fn presence(rel: &Relation, conns: &mut [Member], found: &mut Findings) -> Result<Vec<bool>> {
    let want_seq = rel.reltype == RelType::Sequence;
    let mut present = vec![false; conns.len()];
    for (i, m) in conns.iter_mut().enumerate() {
        let dbname = &m.name;
        match discover::kind_of(&mut m.client, &rel.name)? {
            None => found.problems.push(format!(
                "{} {} does not exist in database \"{dbname}\"; create it there (for example pg_dump --schema-only -t '{}' from the source)",
                rel.reltype,
                rel.name.shown(),
                rel.name.sql()
            )),
            Some(Kind::Sequence) if want_seq => present[i] = true,
            Some(Kind::Table | Kind::Partitioned) if !want_seq => present[i] = true,
            Some(_) => found.problems.push(format!(
                "{} in database \"{dbname}\" is not a {}",
                rel.name.shown(),
                rel.reltype
            )),
        }
    }
    Ok(present)
}

/// A delta sync needs a declared key that is still a key on the source.
fn check_key(rel: &Relation, src: &mut Member, src_present: bool, found: &mut Findings) -> Result<()> {
    if rel.pkey.is_empty() {
        found.problems.push(format!(
            "table {} has no primary key or unique key, which delta replication needs; add one (ALTER TABLE {} ADD PRIMARY KEY (...)) or replicate it with a fullcopy sync",
            rel.name.shown(),
            rel.name.sql()
        ));
    } else if src_present && discover::is_unique_key(&mut src.client, &rel.name, &rel.pkey)?.is_none() {
        found.problems.push(format!(
            "key {} of table {} is no longer a primary or unique key in database \"{}\"; re-add the table (capra add table {}) to refresh its key",
            rel.pkey.join("|"),
            rel.name.shown(),
            src.name,
            rel.name.shown()
        ));
    }
    Ok(())
}

/// The source a table's columns are compared with.
struct Source<'a> {
    /// Its name in the catalog.
    name: &'a str,
    /// The table's columns there.
    cols: &'a [Column],
}

/// Every written source column must exist in `m` with a type it can take
/// (both ways between sources).
fn compare_columns(scope: &Scope, rel: &Relation, src: &Source<'_>, m: &Member, cols: &[Column], found: &mut Findings) {
    let (dbname, src_name) = (&m.name, src.name);
    for sc in src.cols.iter().filter(|c| !c.generated) {
        match cols.iter().find(|c| c.name == sc.name) {
            None => found.problems.push(format!(
                "column \"{}\" of table {} is missing in database \"{dbname}\"; add it there (ALTER TABLE {} ADD COLUMN ...)",
                sc.name,
                rel.name.shown(),
                rel.name.sql()
            )),
            Some(tc) if tc.generated => found.problems.push(format!(
                "column \"{}\" of table {} is generated in database \"{dbname}\" but not in \"{src_name}\"",
                sc.name,
                rel.name.shown()
            )),
            Some(tc) if !compatible(&sc.type_name, &tc.type_name) || (m.role == Role::Source && !compatible(&tc.type_name, &sc.type_name)) => {
                let what = format!(
                    "column \"{}\" of table {} is {} in database \"{src_name}\" but {} in \"{dbname}\"",
                    sc.name,
                    rel.name.shown(),
                    sc.type_name,
                    tc.type_name
                );
                // strict_checking=0 (Bucardo's meaning): names must
                // match, types are the DBA's business.
                if scope.sync.strict_checking && rel.strict_checking {
                    found.problems.push(format!("{what}; make the types agree (or set strict_checking=0 on the sync)"))
                } else {
                    found.notes.push(format!("{what} (allowed: strict_checking is off)"))
                }
            }
            Some(_) => {}
        }
    }
}

/// Columns only `m` has must not stop rows from the source being written.
fn extra_columns(rel: &Relation, src: &Source<'_>, m: &Member, cols: &[Column], found: &mut Findings) {
    let (dbname, src_name) = (&m.name, src.name);
    for tc in cols
        .iter()
        .filter(|t| !t.generated && !src.cols.iter().any(|s| s.name == t.name))
    {
        if tc.not_null && !tc.has_default {
            found.problems.push(format!(
                "column \"{}\" of table {} exists only in database \"{dbname}\" and is NOT NULL without a default, so rows from \"{src_name}\" cannot be written; drop it or give it a default",
                tc.name,
                rel.name.shown()
            ));
        } else {
            found.notes.push(format!(
                "column \"{}\" of table {} exists only in database \"{dbname}\"; it is left as is",
                tc.name,
                rel.name.shown()
            ));
        }
    }
}

/// Which change time conflict strategy `latest` compares on each source of
/// a multi-master sync.
fn commit_times(scope: &Scope, m: &mut Member, found: &mut Findings) -> Result<()> {
    if m.role != Role::Source || scope.sources() < 2 {
        return Ok(());
    }
    let dbname = &m.name;
    let on: bool = m
        .client
        .query_one(
            "SELECT coalesce(current_setting('track_commit_timestamp', true), 'off') = 'on'",
            &[],
        )
        .ctx(|| "reading track_commit_timestamp".into())?
        .col(0, "track_commit_timestamp")?;
    found.notes.push(if on {
        format!("conflict strategy latest compares commit times on \"{dbname}\" (track_commit_timestamp = on)")
    } else {
        format!("conflict strategy latest compares the logged change time on \"{dbname}\" (when each statement started, by that server's clock); set track_commit_timestamp = on there to compare commit times")
    });
    Ok(())
}

/// Checks a row filter's text before it is stored: one expression, with
/// quotes and parentheses balanced and no `;` or comment outside quotes,
/// so it can only ever be the condition of the query capra wraps it in.
/// (The server then checks that it means something: [`try_filter`].)
pub fn check_filter(expr: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::Usage(format!(
            "invalid filter {expr:?}: {why}; give one condition over the table's columns, such as filter=\"region = 'eu'\""
        )))
    };
    let (mut depth, mut quote): (i32, Option<char>) = (0, None);
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        match quote {
            Some(q) => {
                if ch == q {
                    // A doubled quote stays inside.
                    if chars.get(i + 1) == Some(&q) {
                        i += 1;
                    } else {
                        quote = None;
                    }
                }
            }
            None => match ch {
                '\'' | '"' => quote = Some(ch),
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth < 0 {
                        return bad("a ')' closes more than it opened");
                    }
                }
                ';' => return bad("';' is not allowed"),
                '$' => return bad("dollar quoting is not allowed (use '...')"),
                '-' if chars.get(i + 1) == Some(&'-') => return bad("comments are not allowed"),
                '/' if chars.get(i + 1) == Some(&'*') => return bad("comments are not allowed"),
                _ => {}
            },
        }
        i += 1;
    }
    if quote.is_some() {
        return bad("a quote is not closed");
    }
    if depth != 0 {
        return bad("parentheses do not match");
    }
    if expr.trim().is_empty() {
        return bad("it is empty");
    }
    Ok(expr.trim().to_string())
}

/// Asks a database whether a row filter works on a table there (parsed and
/// planned, not run).
pub fn try_filter(c: &mut impl GenericClient, table: &QualName, filter: &str, db: &str) -> Result<()> {
    c.prepare(&format!("SELECT 1 FROM {} WHERE ({filter}) LIMIT 0", table.sql()))
        .map(|_| ())
        .map_err(|driver| {
            CaptureError::FilterFails {
                table: table.shown(),
                db: db.to_string(),
                detail: crate::pg::error::describe(&driver),
                driver,
            }
            .into()
        })
}
