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

fn is_super(c: &mut Client) -> Result<bool> {
    Ok(
        c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
            .ctx(|| "checking privileges".into())?
            .get(0),
    )
}

fn may_set_replica_role(c: &mut Client) -> Result<bool> {
    if is_super(c)? {
        return Ok(true);
    }
    if discover::server_version(c)? >= 150000 {
        return Ok(c
            .query_one("SELECT has_parameter_privilege('session_replication_role', 'SET')", &[])
            .ctx(|| "checking privileges".into())?
            .get(0));
    }
    Ok(false)
}

/// The privileges in `privs` (comma list) the role lacks on a relation.
/// Each is checked alone: has_*_privilege with a list is true if any is held.
fn missing_privs(c: &mut Client, rel: &Relation, privs: &str) -> Result<Vec<String>> {
    let f = if rel.reltype == RelType::Sequence {
        "has_sequence_privilege"
    } else {
        "has_table_privilege"
    };
    let mut missing = Vec::new();
    for p in privs.split(',') {
        let ok: bool = c
            .query_one(
                &format!("SELECT {f}(format('%I.%I', $1::text, $2::text), $3)"),
                &[&rel.name.schema, &rel.name.name, &p],
            )
            .ctx(|| format!("checking privileges on {}", rel.name.human()))?
            .get(0);
        if !ok {
            missing.push(p.to_string());
        }
    }
    Ok(missing)
}

/// Validates one sync; Ok(notes) when it passes.
pub fn validate_sync(cat_client: &mut impl GenericClient, sync: &str) -> Result<Vec<String>> {
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
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let mut conns: Vec<(String, Role, Client)> = Vec::new();
    for m in &group.members {
        let Some(db) = model::db(cat_client, &m.db)? else {
            problems.push(format!(
                "database \"{}\" is in dbgroup \"{}\" but not in the catalog",
                m.db, group.name
            ));
            continue;
        };
        if db.status == DbStatus::Inactive {
            notes.push(format!("database \"{}\" is inactive and was skipped", db.name));
            continue;
        }
        match db.connect() {
            Ok(c) => conns.push((m.db.clone(), m.role, c)),
            Err(e) => problems.push(crate::pg::error::flatten(&e.to_string())),
        }
    }
    let Some(src_idx) = conns.iter().position(|c| c.1 == Role::Source) else {
        if problems.is_empty() {
            problems.push("no reachable active source database".into());
        }
        return Err(Error::Validation {
            sync: sync.into(),
            problems,
        });
    };
    for rel in &rels {
        let want_seq = rel.reltype == RelType::Sequence;
        let mut src_cols: Option<Vec<Column>> = None;
        // Existence and kind everywhere.
        let mut present = vec![false; conns.len()];
        for (i, (dbname, _, c)) in conns.iter_mut().enumerate() {
            match discover::kind_of(c, &rel.name)? {
                None => problems.push(format!(
                    "{} {} does not exist in database \"{dbname}\"; create it there (for example pg_dump --schema-only -t '{}' from the source)",
                    rel.reltype,
                    rel.name.human(),
                    rel.name.sql()
                )),
                Some(Kind::Sequence) if want_seq => present[i] = true,
                Some(Kind::Table | Kind::Partitioned) if !want_seq => present[i] = true,
                Some(_) => problems.push(format!(
                    "{} in database \"{dbname}\" is not a {}",
                    rel.name.human(),
                    rel.reltype
                )),
            }
        }
        if want_seq {
            for (i, (dbname, role, c)) in conns.iter_mut().enumerate() {
                if !present[i] {
                    continue;
                }
                let need = if *role == Role::Source && group.with_role(Role::Source).len() == 1 {
                    "SELECT"
                } else {
                    "SELECT,UPDATE"
                };
                let missing = missing_privs(c, rel, need)?;
                if !missing.is_empty() {
                    problems.push(format!(
                        "the role lacks {} on sequence {} in database \"{dbname}\"; GRANT it",
                        missing.join(", "),
                        rel.name.human()
                    ));
                }
            }
            continue;
        }
        if present[src_idx] {
            src_cols = Some(discover::columns(&mut conns[src_idx].2, &rel.name)?);
        }
        let src_name = conns[src_idx].0.clone();
        // Key.
        if delta {
            if rel.pkey.is_empty() {
                problems.push(format!(
                    "table {} has no primary key or unique key, which delta replication needs; add one (ALTER TABLE {} ADD PRIMARY KEY (...)) or replicate it with a fullcopy sync",
                    rel.name.human(),
                    rel.name.sql()
                ));
            } else if present[src_idx]
                && discover::is_unique_key(&mut conns[src_idx].2, &rel.name, &rel.pkey)?.is_none()
            {
                problems.push(format!(
                    "key {} of table {} is no longer a primary or unique key in database \"{src_name}\"; re-add the table (capra add table {}) to refresh its key",
                    rel.pkey.join("|"),
                    rel.name.human(),
                    rel.name.human()
                ));
            }
        }
        // The row filter, on every source.
        if let Some(f) = &rel.filter {
            for (i, (dbname, role, c)) in conns.iter_mut().enumerate() {
                if *role == Role::Source && present[i] {
                    if let Err(e) = check_filter(f).and_then(|f| try_filter(c, &rel.name, &f, dbname)) {
                        problems.push(format!(
                            "{}; change it (capra update table {} filter=...)",
                            crate::pg::error::flatten(&e.to_string()),
                            rel.name.human()
                        ));
                    }
                }
            }
        }
        let Some(src_cols) = src_cols else { continue };
        for (i, (dbname, role, c)) in conns.iter_mut().enumerate() {
            if i == src_idx || !present[i] {
                continue;
            }
            let cols = discover::columns(c, &rel.name)?;
            for sc in src_cols.iter().filter(|c| !c.generated) {
                match cols.iter().find(|c| c.name == sc.name) {
                    None => problems.push(format!(
                        "column \"{}\" of table {} is missing in database \"{dbname}\"; add it there (ALTER TABLE {} ADD COLUMN ...)",
                        sc.name,
                        rel.name.human(),
                        rel.name.sql()
                    )),
                    Some(tc) if tc.generated => problems.push(format!(
                        "column \"{}\" of table {} is generated in database \"{dbname}\" but not in \"{src_name}\"",
                        sc.name,
                        rel.name.human()
                    )),
                    Some(tc) if !compatible(&sc.type_name, &tc.type_name) || (*role == Role::Source && !compatible(&tc.type_name, &sc.type_name)) => {
                        let what = format!(
                            "column \"{}\" of table {} is {} in database \"{src_name}\" but {} in \"{dbname}\"",
                            sc.name,
                            rel.name.human(),
                            sc.type_name,
                            tc.type_name
                        );
                        // strict_checking=0 (Bucardo's meaning): names must
                        // match, types are the DBA's business.
                        if s.strict_checking && rel.strict_checking {
                            problems.push(format!("{what}; make the types agree (or set strict_checking=0 on the sync)"))
                        } else {
                            notes.push(format!("{what} (allowed: strict_checking is off)"))
                        }
                    }
                    Some(_) => {}
                }
            }
            for tc in cols
                .iter()
                .filter(|t| !t.generated && !src_cols.iter().any(|s| s.name == t.name))
            {
                if tc.not_null && !tc.has_default {
                    problems.push(format!(
                        "column \"{}\" of table {} exists only in database \"{dbname}\" and is NOT NULL without a default, so rows from \"{src_name}\" cannot be written; drop it or give it a default",
                        tc.name,
                        rel.name.human()
                    ));
                } else {
                    notes.push(format!(
                        "column \"{}\" of table {} exists only in database \"{dbname}\"; it is left as is",
                        tc.name,
                        rel.name.human()
                    ));
                }
            }
        }
        // Rights.
        for (i, (dbname, role, c)) in conns.iter_mut().enumerate() {
            if !present[i] {
                continue;
            }
            let writes = *role != Role::Source || group.with_role(Role::Source).len() > 1;
            let mut need = String::from("SELECT");
            if *role == Role::Source && delta {
                need.push_str(",TRIGGER");
            }
            if writes {
                need.push_str(",INSERT,DELETE");
                if *role == Role::Source {
                    // Rows another source sends are updated in place.
                    need.push_str(",UPDATE");
                }
                if *role == Role::Fullcopy || s.onetimecopy.is_on() {
                    need.push_str(",TRUNCATE");
                }
            }
            let missing = missing_privs(c, rel, &need)?;
            if !missing.is_empty() {
                problems.push(format!(
                    "the role lacks {} on table {} in database \"{dbname}\"; GRANT it (or connect as the table owner)",
                    missing.join(", "),
                    rel.name.human()
                ));
            }
        }
    }
    for (dbname, role, c) in conns.iter_mut() {
        let writes = *role != Role::Source || group.with_role(Role::Source).len() > 1;
        if writes && !may_set_replica_role(c)? {
            problems.push(format!(
                "the role cannot set session_replication_role in database \"{dbname}\", which applying changes needs; connect as a superuser or (PostgreSQL 15+) GRANT SET ON PARAMETER session_replication_role"
            ));
        }
        if *role == Role::Source && group.with_role(Role::Source).len() > 1 {
            let on: bool = c
                .query_one(
                    "SELECT coalesce(current_setting('track_commit_timestamp', true), 'off') = 'on'",
                    &[],
                )
                .ctx(|| "reading track_commit_timestamp".into())?
                .get(0);
            notes.push(if on {
                format!("conflict strategy latest compares commit times on \"{dbname}\" (track_commit_timestamp = on)")
            } else {
                format!("conflict strategy latest compares the logged change time on \"{dbname}\" (when each statement started, by that server's clock); set track_commit_timestamp = on there to compare commit times")
            });
        }
        if *role == Role::Source && delta {
            let ok: bool = c
                .query_one(
                    "SELECT has_database_privilege(current_database(), 'CREATE')
                         OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'capra' AND pg_has_role(nspowner, 'USAGE'))",
                    &[],
                )
                .ctx(|| "checking privileges".into())?
                .get(0);
            if !ok {
                problems.push(format!(
                    "the role may not create capra's change-capture schema in database \"{dbname}\"; GRANT CREATE ON DATABASE to it"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(notes)
    } else {
        Err(Error::Validation {
            sync: sync.into(),
            problems,
        })
    }
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
        .map_err(|e| {
            Error::Rejected(format!(
                "the filter of {} does not work in database \"{db}\": {}",
                table.human(),
                crate::pg::error::describe(&e)
            ))
        })
}
