//! What capra's role needs on each member, and what other roles' code it
//! would run there. Each missing right is one line naming the role, the
//! object and the database, with the statement that grants it: a DBA
//! setting up a least-privilege role (docs/security.md) runs the lines
//! `validate` prints and is done.

use postgres::Client;

use super::{Findings, Member, Scope};
use crate::capture::hazards;
use crate::catalog::model::Relation;
use crate::domain::{RelType, Role};
use crate::error::{Context, Result};
use crate::pg::discover;
use crate::pg::ident::quote_ident;
use crate::pg::RowExt;

/// Who capra is on a member: its role name and what the server says of it.
pub(super) struct Me {
    /// `current_user`.
    pub(super) user: String,
    /// Whether it is a superuser (then every table-level check passes, and
    /// other roles' code would run as a superuser).
    pub(super) superuser: bool,
    /// Whether row-level security policies pass it by.
    pub(super) bypassrls: bool,
}

impl Me {
    /// Reads capra's role on a freshly opened connection.
    pub(super) fn read(c: &mut Client) -> Result<Me> {
        const Q: &str = "reading capra's role";
        let r = c
            .query_one(
                "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .ctx(|| Q.into())?;
        Ok(Me {
            user: r.col(0, Q)?,
            superuser: r.col(1, Q)?,
            bypassrls: r.col(2, Q)?,
        })
    }

    /// The role as a GRANT names it.
    fn sql(&self) -> String {
        quote_ident(&self.user)
    }
}

/// Whether capra writes this member's tables (targets, and every source of
/// a multi-master sync).
fn writes(scope: &Scope, m: &Member) -> bool {
    m.role != Role::Source || scope.sources() > 1
}

/// The table privileges a member in `role` needs (comma list): SELECT to
/// read, TRIGGER to capture on a delta source, and where capra writes
/// INSERT and DELETE (changed rows are deleted and copied in), UPDATE on a
/// source (rows another source sends are updated in place) and TRUNCATE
/// on a target (a source's TRUNCATE is replayed) or for a full copy.
fn table_privs_needed(scope: &Scope, m: &Member) -> String {
    let mut need = String::from("SELECT");
    if m.role == Role::Source && scope.delta {
        need.push_str(",TRIGGER");
    }
    if writes(scope, m) {
        need.push_str(",INSERT,DELETE");
        if m.role == Role::Source {
            need.push_str(",UPDATE");
        }
        if m.role != Role::Source || scope.sync.onetimecopy.is_on() {
            need.push_str(",TRUNCATE");
        }
    }
    need
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
                &format!("SELECT {f}({REL_OID}, $3)"),
                &[&rel.name.schema, &rel.name.name, &p],
            )
            .ctx(|| format!("checking privileges on {}", rel.name.shown()))?
            .col(0, "a privilege of capra's role")?;
        if !ok {
            missing.push(p.to_string());
        }
    }
    Ok(missing)
}

/// The oid of relation $2 in schema $1, read from the catalog: naming it
/// (`'s.t'::regclass`) needs USAGE on the schema, which may be what is
/// missing.
const REL_OID: &str = "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2)";

/// Pushes a problem once (a schema's USAGE is missing for every table in it).
fn problem_once(found: &mut Findings, line: String) {
    if !found.problems.contains(&line) {
        found.problems.push(line);
    }
}

/// On every member where the relation exists: USAGE on its schema, the
/// privileges its part takes, no row-level security hiding rows from
/// capra, and no other role's code that capra would run.
pub(super) fn relation(
    scope: &Scope,
    rel: &Relation,
    conns: &mut [Member],
    present: &[bool],
    found: &mut Findings,
) -> Result<()> {
    for (i, m) in conns.iter_mut().enumerate() {
        if !present[i] {
            continue;
        }
        privileges(scope, rel, m, found)?;
        if rel.reltype == RelType::Table {
            row_security(rel, m, found)?;
            foreign_code(scope, rel, m, found)?;
        }
    }
    Ok(())
}

/// USAGE on the schema and the relation's privileges, one GRANT per line.
fn privileges(scope: &Scope, rel: &Relation, m: &mut Member, found: &mut Findings) -> Result<()> {
    let schema = &rel.name.schema;
    let usage: bool = m
        .client
        .query_one("SELECT has_schema_privilege($1, 'USAGE')", &[schema])
        .ctx(|| format!("checking privileges on schema {schema}"))?
        .col(0, "USAGE on a schema")?;
    if !usage {
        problem_once(
            found,
            format!(
                "the role \"{}\" lacks USAGE on schema {schema} in database \"{}\"; fix: GRANT USAGE ON SCHEMA {} TO {}",
                m.me.user,
                m.name,
                quote_ident(schema),
                m.me.sql()
            ),
        );
    }
    let (need, kind) = if rel.reltype == RelType::Sequence {
        // Read on a single source, set everywhere else.
        let need = if m.role == Role::Source && scope.sources() == 1 {
            "SELECT"
        } else {
            "SELECT,UPDATE"
        };
        (need.to_string(), "SEQUENCE")
    } else {
        (table_privs_needed(scope, m), "TABLE")
    };
    let missing = missing_privs(&mut m.client, rel, &need)?;
    if !missing.is_empty() {
        found.problems.push(format!(
            "the role \"{}\" lacks {} on {} {} in database \"{}\"; fix: GRANT {} ON {kind} {} TO {}",
            m.me.user,
            missing.join(", "),
            rel.reltype,
            rel.name.shown(),
            m.name,
            missing.join(", "),
            rel.name.sql(),
            m.me.sql()
        ));
    }
    Ok(())
}

/// Row-level security that applies to capra's role would show it only
/// the rows the policies let through: reads would miss rows, deletes
/// would spare some, and the databases would silently differ.
fn row_security(rel: &Relation, m: &mut Member, found: &mut Findings) -> Result<()> {
    if m.me.superuser || m.me.bypassrls {
        return Ok(());
    }
    let applies: bool = m
        .client
        .query_one(
            &format!(
                "SELECT coalesce((SELECT c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
                                    FROM pg_class c WHERE c.oid = {REL_OID}), false)"
            ),
            &[&rel.name.schema, &rel.name.name],
        )
        .ctx(|| format!("checking row-level security on {}", rel.name.shown()))?
        .col(0, "whether row-level security applies")?;
    if applies {
        found.problems.push(format!(
            "table {} in database \"{}\" has row-level security that applies to the role \"{}\", so capra would see and change only the rows its policies allow; fix: ALTER ROLE {} BYPASSRLS",
            rel.name.shown(),
            m.name,
            m.me.user,
            m.me.sql()
        ));
    }
    Ok(())
}

/// Other roles' code that capra would run on this table (see
/// [`hazards`]): a problem where capra's role is a superuser (the code
/// would run as one), a note otherwise (it runs with capra's rights, which
/// a least-privilege role keeps small). A table owned by a role that is not
/// a superuser is a note under a superuser even without such code yet: its
/// owner can add some at any time.
fn foreign_code(scope: &Scope, rel: &Relation, m: &mut Member, found: &mut Findings) -> Result<()> {
    let w = writes(scope, m);
    let found_code = hazards::find(&mut m.client, &rel.name, w)?;
    for (what, owner) in &found_code {
        let line = format!(
            "{what} on table {} in database \"{}\" is code of role \"{owner}\", which is not a superuser",
            rel.name.shown(),
            m.name
        );
        if m.me.superuser {
            found.problems.push(format!(
                "{line}, and capra would run it as its superuser role \"{}\"; connect capra to \"{}\" as a role that is not a superuser (docs/security.md)",
                m.me.user, m.name
            ));
        } else {
            found.notes.push(format!(
                "{line}; capra runs it with the rights of the role \"{}\"",
                m.me.user
            ));
        }
    }
    if m.me.superuser && found_code.is_empty() {
        if let Some(owner) = hazards::untrusted_owner(&mut m.client, &rel.name)? {
            found.notes.push(format!(
                "table {} in database \"{}\" is owned by \"{owner}\", who is not a superuser, while capra connects there as the superuser \"{}\": \"{owner}\" could attach code that capra would run as a superuser; connect as a role that is not a superuser (docs/security.md)",
                rel.name.shown(),
                m.name,
                m.me.user
            ));
        }
    }
    Ok(())
}

/// Whether capra's role may set session_replication_role (superuser, or
/// PostgreSQL 15+ with SET granted on the parameter).
fn may_set_replica_role(c: &mut Client, me: &Me, version: i32) -> Result<bool> {
    if me.superuser {
        return Ok(true);
    }
    if version >= 150000 {
        return c
            .query_one("SELECT has_parameter_privilege('session_replication_role', 'SET')", &[])
            .ctx(|| "checking privileges".into())?
            .col(0, "whether capra's role may set session_replication_role");
    }
    Ok(false)
}

/// Database-wide needs of one member: setting the replication role where
/// capra writes; on a delta source, creating capra's schema (and the DDL
/// follower, which needs a superuser), and that schema being capra's.
pub(super) fn database(scope: &Scope, m: &mut Member, found: &mut Findings) -> Result<()> {
    let (w, role) = (writes(scope, m), m.role);
    let (dbname, c, me) = (&m.name, &mut m.client, &m.me);
    let version = discover::server_version(c)?;
    if w && !may_set_replica_role(c, me, version)? {
        let fix = if version >= 150000 {
            format!("GRANT SET ON PARAMETER session_replication_role TO {}", me.sql())
        } else {
            format!(
                "ALTER ROLE {} SUPERUSER (before PostgreSQL 15 only a superuser may set it)",
                me.sql()
            )
        };
        found.problems.push(format!(
            "the role \"{}\" cannot set session_replication_role in database \"{dbname}\", which applying changes needs; fix: {fix}",
            me.user
        ));
    }
    // capra writes every database but a fullcopy sync's source: each needs
    // capra's schema (a source's change capture; everywhere, the fence that
    // keeps a deposed leader from writing).
    let capture = role == Role::Source && scope.delta;
    if role == Role::Source && !scope.delta {
        return Ok(());
    }
    let r = c
        .query_one(
            "SELECT current_database()::text,
                    has_database_privilege(current_database(), 'CREATE')
                      OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'capra' AND pg_has_role(nspowner, 'USAGE')),
                    (SELECT r.rolname::text FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                      WHERE n.nspname = 'capra' AND NOT r.rolsuper AND r.rolname <> current_user
                        AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR NOT pg_has_role(n.nspowner, 'USAGE')))",
            &[],
        )
        .ctx(|| "checking privileges".into())?;
    const Q: &str = "capra's schema";
    let (datname, create, stranger): (String, bool, Option<String>) = (r.col(0, Q)?, r.col(1, Q)?, r.col(2, Q)?);
    if let Some(owner) = stranger {
        found.problems.push(format!(
            "schema capra in database \"{dbname}\" belongs to the role \"{owner}\", not to capra's role \"{}\", and its owner could replace capra's capture functions; fix: ALTER SCHEMA capra OWNER TO {} (or drop it)",
            me.user,
            me.sql()
        ));
    } else if !create {
        found.problems.push(format!(
            "the role \"{}\" may not create capra's {} in database \"{dbname}\"; fix: GRANT CREATE ON DATABASE {} TO {}",
            me.user,
            if capture {
                "change-capture schema"
            } else {
                "schema, which holds the fence that keeps a daemon that lost its lease from writing"
            },
            quote_ident(&datname),
            me.sql()
        ));
    }
    if !capture {
        return Ok(());
    }
    if !me.superuser {
        found.notes.push(format!(
            "the role \"{}\" is not a superuser in database \"{dbname}\", so capra's DDL follower (an event trigger) is not installed there: after renaming, retyping or dropping a key column of a synced table, run capra validate and do what it says",
            me.user
        ));
    }
    Ok(())
}
