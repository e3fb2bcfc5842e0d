//! The import's writes, in the order that loses nothing:
//!
//! 1. [`write_catalog`]: capra's catalog, in the caller's one transaction,
//!    each sync in a savepoint and checked by capra's own validator; the
//!    caller then installs capture on the sources and commits both. From
//!    that commit on, capra's triggers log every change.
//! 2. [`hand_over`], per source and table: the keys
//!    Bucardo captured but had not delivered to every target of the sync
//!    (a `delta_*` row is delivered once its `track_*` table has the row's
//!    `txntime` for the sync's `dbgroup <name>`) go into capra's change
//!    log with Bucardo's change time, pending TRUNCATEs go into capra's
//!    truncate log (and count as replicated for Bucardo), a table whose
//!    key differs is marked for one full copy, and Bucardo's triggers on
//!    those tables are disabled first (their lock waits for writers in
//!    flight). One short transaction per table. Changes made between 1
//!    and 2 are logged by both and applied twice, which changes nothing:
//!    a run sends a key's current row, not the change.
//! 3. [`note_taken_over`]. Bucardo's syncs were set inactive before 2
//!    ([`inactivate`]), so a restarted Bucardo runs nothing of them even
//!    when 2 stopped half way. A crash before the note leaves the import
//!    to be run again, which repeats 2.

use std::collections::{BTreeMap, BTreeSet};

use postgres::{Client, GenericClient, Transaction};

use super::bucardo::Snapshot;
use super::plan::{self, CodeImport, Plan, Stage, SyncImport};
use crate::catalog::{customcode, edit, model, sync_opts};
use crate::domain::{Role, Status};
use crate::error::{Context, Error, Result};
use crate::pg::ident::{quote_ident, QualName};
use crate::pg::RowExt;

/// Writes the new syncs of `plan` (with their databases, tables, groups
/// and options) into capra's catalog; a sync capra refuses is rolled back
/// alone and reported. Returns the syncs written and the refused ones,
/// each with why.
pub fn write_catalog(tx: &mut Transaction<'_>, plan: &Plan, control: &str) -> Result<(Vec<String>, plan::Dropped)> {
    let mut written = Vec::new();
    let mut refused = Vec::new();
    for s in plan.syncs.iter().filter(|s| s.stage == Stage::New) {
        let mut sp = tx.savepoint("capra_import").ctx(|| "savepoint".into())?;
        match write_sync(&mut sp, plan, s, control) {
            Ok(()) => {
                sp.commit().ctx(|| "savepoint".into())?;
                written.push(s.name().to_string());
            }
            Err(e) => {
                drop(sp);
                let why = match e {
                    Error::Validation { problems, .. } => problems.join("; "),
                    e => crate::pg::error::flatten(&e.to_string()),
                };
                refused.push((s.name().to_string(), format!("capra refuses it: {why}")));
            }
        }
    }
    Ok((written, refused))
}

fn write_sync(tx: &mut Transaction<'_>, plan: &Plan, s: &SyncImport, control: &str) -> Result<()> {
    let name = s.name();
    for (d, _) in &s.members {
        let Some((nd, _)) = plan.dbs.iter().find(|(n, _)| &n.name == d) else {
            continue;
        };
        match model::db(tx, d)? {
            None => edit::add_db(tx, nd)?,
            Some(have) => {
                if have.dbname != nd.dbname || have.host != nd.host || have.port != nd.port {
                    return Err(Error::Rejected(format!(
                        "capra's database \"{d}\" is {}, Bucardo's is {}; make them agree or rename one",
                        have.psql_line(),
                        plan::reach(nd)
                    )));
                }
            }
        }
    }
    check_collisions(tx, s)?;
    // Bucardo's herds hold the tables of one database each.
    let mut by_db: BTreeMap<&str, Vec<crate::pg::discover::Found>> = BTreeMap::new();
    for t in &s.tables {
        by_db.entry(t.goat.db.as_str()).or_default().push(t.found.clone());
    }
    let mut added: Vec<(String, QualName)> = Vec::new();
    for (db, found) in &by_db {
        let a = edit::add_relations(tx, db, Some(&s.bucardo.herd), found, None)?;
        added.extend(a.added.into_iter().map(|n| (db.to_string(), n)));
    }
    for t in &s.tables {
        let what = format!("setting the options of {}", t.found.name.shown());
        tx.execute(
            "UPDATE capra.relgroup_member m SET priority = $1 FROM capra.relation r
              WHERE m.relgroup = $2 AND m.relation = r.id AND r.db = $3 AND r.schemaname = $4 AND r.relname = $5",
            &[
                &t.priority,
                &s.bucardo.herd,
                &t.goat.db,
                &t.found.name.schema,
                &t.found.name.name,
            ],
        )
        .ctx(|| what.clone())?;
        // A table capra had already keeps its own options.
        let new = added.iter().any(|(d, n)| *d == t.goat.db && *n == t.found.name);
        for (col, val, cast) in t.checked.iter().filter(|_| new) {
            // Column and type come from the command line's fixed list.
            tx.execute(
                &format!(
                    "UPDATE capra.relation SET {col} = $1::text::{cast} WHERE db = $2 AND schemaname = $3 AND relname = $4"
                ),
                &[val, &t.goat.db, &t.found.name.schema, &t.found.name.name],
            )
            .ctx(|| what.clone())?;
        }
    }
    let members: Vec<(String, Option<Role>)> = s.members.iter().map(|(d, r)| (d.clone(), Some(*r))).collect();
    match model::dbgroup(tx, &s.bucardo.dbs)? {
        None => {
            edit::add_dbgroup(tx, &s.bucardo.dbs, &members, Some(name))?;
        }
        Some(g) => {
            let mut have: Vec<(String, &str)> = g.members.iter().map(|m| (m.db.clone(), m.role.as_str())).collect();
            let mut want: Vec<(String, &str)> = s.members.iter().map(|(d, r)| (d.clone(), r.as_str())).collect();
            have.sort();
            want.sort();
            if have != want {
                return Err(Error::Rejected(format!(
                    "capra already has a dbgroup \"{}\" with other members; rename or remove it in capra first",
                    s.bucardo.dbs
                )));
            }
        }
    }
    for (d, p) in &s.priorities {
        tx.execute(
            "UPDATE capra.dbmap SET priority = $1 WHERE dbgroup = $2 AND db = $3",
            &[p, &s.bucardo.dbs, d],
        )
        .ctx(|| format!("setting the priority of \"{d}\" in dbgroup \"{}\"", s.bucardo.dbs))?;
    }
    let group = model::dbgroup(tx, &s.bucardo.dbs)?.ok_or_else(|| Error::not_found("dbgroup", &s.bucardo.dbs))?;
    edit::check_sync_shape(tx, name, &s.bucardo.herd, &group)?;
    edit::insert_sync(tx, name, &s.bucardo.herd, &s.bucardo.dbs, None, s.delta)?;
    for o in &s.checked {
        if let sync_opts::Stored::BadInterval = sync_opts::store(tx, name, o)? {
            return Err(Error::Rejected(format!(
                "its {} is not an interval capra can store",
                o.column()
            )));
        }
    }
    let copied: Vec<String> = s
        .tables
        .iter()
        .filter(|t| t.copy_whole)
        .map(|t| t.found.name.human())
        .collect();
    tx.execute(
        "INSERT INTO capra.imported (sync, origin, control, copied) VALUES ($1, 'bucardo', $2, $3)",
        &[&name, &control, &copied],
    )
    .ctx(|| format!("noting where sync \"{name}\" came from"))?;
    crate::capture::validate::validate_sync(tx, name)?;
    Ok(())
}

/// Refuses to change what capra's own syncs use: a relgroup of the
/// herd's name with other tables, or a table capra has with another key.
fn check_collisions(tx: &mut Transaction<'_>, s: &SyncImport) -> Result<()> {
    let rels = model::relations(tx, None)?;
    let want: BTreeSet<(&str, &str, &str)> = s
        .tables
        .iter()
        .map(|t| {
            (
                t.goat.db.as_str(),
                t.found.name.schema.as_str(),
                t.found.name.name.as_str(),
            )
        })
        .collect();
    if let Some(rg) = model::relgroups(tx)?.into_iter().find(|g| g.name == s.bucardo.herd) {
        let have: BTreeSet<(&str, &str, &str)> = rels
            .iter()
            .filter(|r| rg.members.contains(&r.id))
            .map(|r| (r.db.as_str(), r.name.schema.as_str(), r.name.name.as_str()))
            .collect();
        if have != want {
            return Err(Error::Rejected(format!(
                "capra already has a relgroup \"{}\" with other tables; rename or remove it in capra first",
                s.bucardo.herd
            )));
        }
    }
    for t in &s.tables {
        let Some(key) = &t.found.key else { continue };
        if let Some(r) = rels
            .iter()
            .find(|r| r.db == t.goat.db && r.name == t.found.name && !r.pkey.is_empty())
        {
            if r.pkey != key.columns {
                return Err(Error::Rejected(format!(
                    "capra already has {} on \"{}\" with the key ({}), not ({}); make them agree first",
                    t.found.name.shown(),
                    r.db,
                    r.pkey.join(", "),
                    key.columns.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Adds the Perl custom code attached to the syncs written, inactive,
/// pointing at the file its source was saved to.
pub fn write_codes(tx: &mut Transaction<'_>, codes: &[(CodeImport, String)], written: &[String]) -> Result<()> {
    let have: Vec<String> = model::customcodes(tx)?.into_iter().map(|x| x.name).collect();
    for (c, file) in codes {
        let Some(whenrun) = c.whenrun else { continue };
        if !written.contains(&c.owner) || have.contains(&c.name) {
            continue;
        }
        let (sync, table) = (c.sync.as_deref(), c.table.as_ref());
        let rel = table.map(|(_, t)| t.human());
        customcode::add(
            tx,
            &customcode::NewCode {
                name: &c.name,
                whenrun,
                src: &c.code.src,
                src_file: file,
                about: &c.code.about,
                priority: c.code.priority,
                status: Status::Inactive,
                sync,
                relation: rel.as_deref(),
                db: table.map(|(d, _)| d.as_str()),
            },
        )?;
    }
    Ok(())
}

/// One table's part of a takeover on one source.
struct Work<'a> {
    table: QualName,
    copy_whole: bool,
    /// `dbgroup <name>` of each sync taken over that reads it here.
    targets: BTreeSet<String>,
    /// Those syncs.
    syncs: BTreeSet<&'a str>,
}

/// What [`hand_over`] did on one source.
#[derive(Debug, Default)]
pub struct HandedOver {
    /// Keys handed over, per table.
    pub keys: Vec<(String, u64)>,
    /// Tables with a pending TRUNCATE handed over.
    pub truncates: Vec<String>,
    /// Tables marked for one full copy.
    pub copies: Vec<String>,
    /// Tables whose Bucardo triggers were disabled.
    pub disabled: Vec<String>,
    /// Tables whose Bucardo triggers stay (a sync that stays in Bucardo
    /// reads them).
    pub kept: Vec<(String, Vec<String>)>,
}

/// Hands Bucardo's undelivered changes on source `db` over to capra and
/// disables Bucardo's triggers there, in one transaction: `syncs` are the
/// delta syncs taken over now; `imported` every sync capra has taken
/// over (whose Bucardo triggers no longer matter).
pub fn hand_over(
    c: &mut Client,
    db: &str,
    syncs: &[&SyncImport],
    snap: &Snapshot,
    imported: &BTreeSet<String>,
) -> Result<HandedOver> {
    let mut work: Vec<Work<'_>> = Vec::new();
    for s in syncs {
        if !s.sources().contains(&db) {
            continue;
        }
        for t in s
            .tables
            .iter()
            .filter(|t| t.found.reltype == crate::domain::RelType::Table)
        {
            let i = match work.iter().position(|w| w.table == t.found.name) {
                Some(i) => i,
                None => {
                    work.push(Work {
                        table: t.found.name.clone(),
                        copy_whole: false,
                        targets: BTreeSet::new(),
                        syncs: BTreeSet::new(),
                    });
                    work.len() - 1
                }
            };
            let w = &mut work[i];
            w.copy_whole |= t.copy_whole;
            w.targets.insert(format!("dbgroup {}", s.bucardo.dbs));
            w.syncs.insert(s.name());
        }
    }
    let mut out = HandedOver::default();
    // One short transaction per table: its lock is held only while its
    // own backlog is copied, and tables are independent (a run repeated
    // after a failure hands over again, which is harmless).
    for w in &work {
        let mut tx = c
            .transaction()
            .ctx(|| format!("starting the takeover of {} on \"{db}\"", w.table.shown()))?;
        tx.batch_execute(WAIT_SETUP)
            .ctx(|| "setting lock and deadlock timeouts".into())?;
        take_table(&mut tx, db, w, snap, imported, &mut out)?;
        tx.commit()
            .ctx(|| format!("committing the takeover of {} on \"{db}\"", w.table.shown()))?;
    }
    Ok(out)
}

/// Waits at most 5 s for a table's lock; and this session, not the
/// application's, is the deadlock victim where it may say so.
const WAIT_SETUP: &str = "SET LOCAL lock_timeout = '5s';
DO $d$ BEGIN PERFORM pg_catalog.set_config('deadlock_timeout', '50ms', true); EXCEPTION WHEN OTHERS THEN NULL; END $d$";

fn take_table(
    tx: &mut Transaction<'_>,
    db: &str,
    w: &Work<'_>,
    snap: &Snapshot,
    imported: &BTreeSet<String>,
    out: &mut HandedOver,
) -> Result<()> {
    let human = w.table.shown();
    let what = format!("handing over {human} on \"{db}\"");
    let row = tx
        .query_opt(
            "SELECT c.id, c.keycols, r.oid FROM capra.captured c
               JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) c.schemaname
               JOIN pg_catalog.pg_class r ON r.relnamespace OPERATOR(pg_catalog.=) n.oid AND r.relname OPERATOR(pg_catalog.=) c.relname
              WHERE c.schemaname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2",
            &[&w.table.schema, &w.table.name],
        )
        .ctx(|| what.clone())?
        .ok_or_else(|| {
            Error::Rejected(format!(
                "{human} is not captured by capra on \"{db}\" yet; run the import again"
            ))
        })?;
    let id: i32 = row.col(0, &what)?;
    let keycols: Vec<String> = row.col(1, &what)?;
    let oid: postgres::types::Oid = row.col(2, &what)?;
    // The positions of the syncs reading this log first: a run holds its
    // position FOR UPDATE while its receivers write this table, so taking
    // the table's lock before them (noting keys logged again checks them)
    // would wait on a run that waits on this transaction.
    tx.execute(
        "SELECT 1 FROM capra.consumer c
          WHERE EXISTS (SELECT 1 FROM capra.consumer_table ct
                         WHERE ct.installation OPERATOR(pg_catalog.=) c.installation
                           AND ct.sync OPERATOR(pg_catalog.=) c.sync AND ct.captured OPERATOR(pg_catalog.=) $1)
            FOR KEY SHARE",
        &[&id],
    )
    .ctx(|| what.clone())?;
    // Bucardo's triggers go first: their lock waits for the writers in
    // flight, so everything Bucardo captured is committed and visible to
    // the copy below, and nothing more reaches Bucardo's log after it.
    let staying: Vec<&crate::import::bucardo::Sync> = snap
        .users(db, &w.table.schema, &w.table.name)
        .into_iter()
        .filter(|s| !imported.contains(&s.name))
        .collect();
    let others: Vec<String> = staying.iter().map(|s| s.name.clone()).collect();
    if others.is_empty() {
        let triggers: Vec<String> = tx
            .query(
                "SELECT t.tgname::text FROM pg_catalog.pg_trigger t
                   JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
                  WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND n.nspname OPERATOR(pg_catalog.=) 'bucardo'
                    AND NOT t.tgisinternal AND t.tgenabled OPERATOR(pg_catalog.<>) 'D'
                  ORDER BY 1",
                &[&oid],
            )
            .ctx(|| what.clone())?
            .iter()
            .map(|r| r.col(0, &what))
            .collect::<Result<_>>()?;
        for t in &triggers {
            tx.batch_execute(&format!(
                "ALTER TABLE {} DISABLE TRIGGER {}",
                w.table.sql(),
                quote_ident(t)
            ))
            .ctx(|| format!("disabling Bucardo's trigger {t} on {human} on \"{db}\""))?;
        }
        if !triggers.is_empty() {
            out.disabled.push(human.clone());
        }
    } else {
        out.kept.push((human.clone(), others));
    }
    let delta = bucardo_log(tx, oid, &what)?;
    let logged_again = if w.copy_whole {
        // Once: a resumed import must not copy the table again.
        tx.execute(
            "INSERT INTO capra.truncate_log (captured, part)
             SELECT $1, '*' WHERE NOT EXISTS (SELECT 1 FROM capra.truncate_log
                                               WHERE captured OPERATOR(pg_catalog.=) $1 AND part OPERATOR(pg_catalog.=) '*')",
            &[&id],
        )
        .ctx(|| what.clone())?;
        out.copies.push(human.clone());
        false
    } else {
        let t = Logs {
            id,
            keycols: &keycols,
            oid,
            delta: delta.as_deref(),
        };
        hand_over_changes(tx, &t, w, out, &what)?
    };
    if !staying.is_empty() {
        if let Some(delta) = &delta {
            forget_targets(tx, oid, delta, w, &staying, &what)?;
        }
    }
    if logged_again {
        crate::capture::install::note_relogged(tx, id, db)?;
    }
    Ok(())
}

/// Where Bucardo keeps capturing a table for syncs that stay, it stops
/// counting the taken-over syncs' dbgroups as its targets there, and drops
/// their delivery marks with them: Bucardo's purge deletes a change once
/// it has as many marks as the table has targets, so both go together (a
/// dbgroup a staying sync uses stays).
fn forget_targets(
    tx: &mut Transaction<'_>,
    oid: postgres::types::Oid,
    delta: &str,
    w: &Work<'_>,
    staying: &[&crate::import::bucardo::Sync],
    what: &str,
) -> Result<()> {
    let gone: Vec<String> = w
        .targets
        .iter()
        .filter(|t| !staying.iter().any(|s| **t == format!("dbgroup {}", s.dbs)))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let suffix = &delta[6..];
    for t in [
        "bucardo_delta_targets".to_string(),
        format!("track_{suffix}"),
        format!("stage_{suffix}"),
    ] {
        let exists: bool = tx
            .query_one(
                "SELECT pg_catalog.to_regclass(pg_catalog.format('bucardo.%I', $1::text)) IS NOT NULL",
                &[&t],
            )
            .ctx(|| what.into())?
            .col(0, what)?;
        if !exists {
            continue;
        }
        let only_this = if t == "bucardo_delta_targets" {
            "tablename OPERATOR(pg_catalog.=) $2 AND "
        } else {
            ""
        };
        let sql = format!(
            "DELETE FROM bucardo.{} WHERE {only_this}target OPERATOR(pg_catalog.=) ANY ($1)",
            quote_ident(&t)
        );
        if only_this.is_empty() {
            tx.execute(sql.as_str(), &[&gone])
        } else {
            tx.execute(sql.as_str(), &[&gone, &oid])
        }
        .ctx(|| what.into())?;
    }
    Ok(())
}

/// The name of Bucardo's change log of a table (its row trigger's
/// function is named like it), when Bucardo captures the table here.
fn bucardo_log(tx: &mut Transaction<'_>, oid: postgres::types::Oid, what: &str) -> Result<Option<String>> {
    tx
        .query_opt(
            "SELECT p.proname::text FROM pg_catalog.pg_trigger t
               JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
              WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND n.nspname OPERATOR(pg_catalog.=) 'bucardo'
                AND p.proname OPERATOR(pg_catalog.~~) 'delta\\_%'
                AND pg_catalog.to_regclass(pg_catalog.format('bucardo.%I', p.proname)) IS NOT NULL
                AND pg_catalog.to_regclass(pg_catalog.format('bucardo.%I', 'track_' OPERATOR(pg_catalog.||) pg_catalog.substr(p.proname, 7))) IS NOT NULL
              LIMIT 1",
            &[&oid],
        )
        .ctx(|| what.into())?
        .map(|r| r.col(0, what))
        .transpose()
}

/// One table's change logs on a source: capra's (its captured id and key
/// columns) and Bucardo's (the table's oid and its log's name, if any).
struct Logs<'a> {
    id: i32,
    keycols: &'a [String],
    oid: postgres::types::Oid,
    delta: Option<&'a str>,
}

/// Copies the undelivered keys and the pending TRUNCATE of one table from
/// Bucardo's logs into capra's; returns whether anything was logged.
fn hand_over_changes(
    tx: &mut Transaction<'_>,
    t: &Logs<'_>,
    w: &Work<'_>,
    out: &mut HandedOver,
    what: &str,
) -> Result<bool> {
    let (id, keycols, oid, delta) = (t.id, t.keycols, t.oid, t.delta);
    let human = w.table.shown();
    let mut logged = false;
    if let Some(delta) = delta {
        let track = format!("track_{}", &delta[6..]);
        let keys: Vec<String> = keycols.iter().map(|k| quote_ident(k)).collect();
        let dkeys: Vec<String> = keys.iter().map(|k| format!("d.{k}")).collect();
        let targets: Vec<String> = w.targets.iter().cloned().collect();
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO capra.delta_{id} ({k}, capra_ts)
                     SELECT {dk}, pg_catalog.max(d.txntime) FROM bucardo.{delta} d
                      WHERE EXISTS (SELECT 1 FROM pg_catalog.unnest($1::text[]) AS g(target)
                                     WHERE NOT EXISTS (SELECT 1 FROM bucardo.{track} k
                                                        WHERE k.txntime OPERATOR(pg_catalog.=) d.txntime
                                                          AND k.target OPERATOR(pg_catalog.=) g.target))
                      GROUP BY {dk}",
                    k = keys.join(", "),
                    dk = dkeys.join(", "),
                    delta = quote_ident(delta),
                    track = quote_ident(&track),
                ),
                &[&targets],
            )
            .ctx(|| format!("handing over Bucardo's undelivered changes to {human}"))?;
        out.keys.push((human.clone(), n));
        logged |= n > 0;
    } else {
        out.keys.push((human.clone(), 0));
    }
    let has_trunc: bool = tx
        .query_one(
            "SELECT pg_catalog.to_regclass('bucardo.bucardo_truncate_trigger') IS NOT NULL",
            &[],
        )
        .ctx(|| what.into())?
        .col(0, what)?;
    if has_trunc {
        let syncs: Vec<&str> = w.syncs.iter().copied().collect();
        let n = tx
            .execute(
                "INSERT INTO capra.truncate_log (captured, capra_ts)
                 SELECT $1, pg_catalog.max(cdate) FROM bucardo.bucardo_truncate_trigger
                  WHERE tablename OPERATOR(pg_catalog.=) $2 AND sync OPERATOR(pg_catalog.=) ANY ($3) AND replicated IS NULL
                 HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0",
                &[&id, &oid, &syncs],
            )
            .ctx(|| format!("handing over a pending TRUNCATE of {human}"))?;
        if n > 0 {
            // Handed over: a Bucardo started again (the way back) must not
            // replay it over rows written since.
            tx.execute(
                "UPDATE bucardo.bucardo_truncate_trigger SET replicated = pg_catalog.now()
                  WHERE tablename OPERATOR(pg_catalog.=) $1 AND sync OPERATOR(pg_catalog.=) ANY ($2) AND replicated IS NULL",
                &[&oid, &syncs],
            )
            .ctx(|| format!("marking Bucardo's TRUNCATE of {human} as handed over"))?;
            out.truncates.push(human);
            logged = true;
        }
    }
    Ok(logged)
}

/// Sets Bucardo's syncs inactive, so a Bucardo started again runs
/// nothing of them: done before the hand-over, so a takeover that stops
/// half way never leaves Bucardo running a sync whose triggers are off.
pub fn inactivate(control: &mut Client, syncs: &[String]) -> Result<()> {
    control
        .execute(
            "UPDATE bucardo.sync SET status = 'inactive'
              WHERE name OPERATOR(pg_catalog.=) ANY ($1) AND status IS DISTINCT FROM 'inactive'",
            &[&syncs],
        )
        .ctx(|| "setting Bucardo's syncs inactive".into())?;
    Ok(())
}

/// Notes in capra's catalog that the syncs are taken over.
pub fn note_taken_over(cat: &mut impl GenericClient, syncs: &[String]) -> Result<()> {
    cat.execute(
        "UPDATE capra.imported SET taken_over = pg_catalog.now()
          WHERE sync OPERATOR(pg_catalog.=) ANY ($1) AND taken_over IS NULL",
        &[&syncs],
    )
    .ctx(|| "noting the takeover".into())?;
    Ok(())
}
