//! `capra import bucardo [--from CONNINFO] [--dry-run] [--remove]`: the
//! plan as a DBA reads it, every Bucardo value checked by the same
//! validators `add db`, `add sync` and `update table` use, then the
//! takeover (see `crate::import`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::catalog_cmds::{db::check_conn, tables::relation_option};
use super::kv::check_name;
use super::{sync_opts, Ctx};
use crate::capture::reconcile;
use crate::catalog::model;
use crate::error::{Context, Error, Result};
use crate::import::plan::{self, Plan, Stage};
use crate::import::{bucardo, remove, takeover, ImportError};
use crate::pg::connect::{self, ConnSpec};

/// What `import bucardo` was asked to do.
pub struct Request<'a> {
    /// `--from`.
    pub from: Option<&'a str>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--remove`.
    pub remove: bool,
    /// `--config`, beside which Perl customcode is saved.
    pub config: Option<&'a Path>,
}

/// A `postgresql://` URI as libpq keywords.
fn uri_keywords(uri: &str) -> Result<String> {
    // The text may hold a password: the message never repeats it.
    let bad = || Error::Usage("--from: cannot read it as a postgresql:// URI".into());
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or_else(bad)?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (auth_host, db) = main.split_once('/').unwrap_or((main, ""));
    let (auth, hostport) = match auth_host.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, auth_host),
    };
    let mut kw: Vec<(String, String)> = Vec::new();
    if let Some(a) = auth {
        let (u, p) = a.split_once(':').map(|(u, p)| (u, Some(p))).unwrap_or((a, None));
        if !u.is_empty() {
            kw.push(("user".into(), decode(u).ok_or_else(bad)?));
        }
        if let Some(p) = p {
            kw.push(("password".into(), decode(p).ok_or_else(bad)?));
        }
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => (h, Some(p)),
        _ => (hostport, None),
    };
    if !host.is_empty() {
        kw.push(("host".into(), decode(host.trim_matches(['[', ']'])).ok_or_else(bad)?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        kw.push(("port".into(), p.to_string()));
    }
    if !db.is_empty() {
        kw.push(("dbname".into(), decode(db).ok_or_else(bad)?));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        kw.push((decode(k).ok_or_else(bad)?, decode(v).ok_or_else(bad)?));
    }
    Ok(kw
        .iter()
        .map(|(k, v)| connect::keyword(k, v))
        .collect::<Vec<_>>()
        .join(" "))
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Bucardo's control database: `--from` (keywords or a URI), else
/// database `bucardo` as user `bucardo`, with the PG* defaults.
fn control_spec(from: Option<&str>) -> Result<ConnSpec> {
    let conn = match from {
        Some(f) if f.starts_with("postgres://") || f.starts_with("postgresql://") => uri_keywords(f)?,
        Some(f) => f.to_string(),
        None => String::new(),
    };
    // The text may hold a password: the message never repeats it.
    let kw = connect::parse_keywords(&conn).map_err(|e| match e {
        connect::ConnSpecError::UnknownKeyword(k) => Error::Usage(format!("--from: unknown connection keyword '{k}'")),
        _ => Error::Usage("--from: cannot read it as libpq keywords (key=value ...) or a postgresql:// URI".into()),
    })?;
    Ok(ConnSpec {
        dbname: (!kw.contains_key("dbname") && std::env::var_os("PGDATABASE").is_none()).then(|| "bucardo".into()),
        user: (!kw.contains_key("user") && std::env::var_os("PGUSER").is_none()).then(|| "bucardo".into()),
        conn,
        ..ConnSpec::default()
    })
}

/// Where Perl customcode is saved for porting: beside the config file.
fn code_dir(config: Option<&Path>) -> PathBuf {
    let conf = config
        .map(Path::to_path_buf)
        .unwrap_or_else(crate::config::system_config_path);
    conf.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join("bucardo-customcode")
}

/// `capra import bucardo ...`.
pub fn run(ctx: &Ctx, req: &Request<'_>) -> Result<()> {
    let spec = control_spec(req.from)?;
    let target = "Bucardo's control database";
    let resolved = connect::resolve_for(&spec, "capra import", target)?;
    let summary = resolved.summary.clone();
    let mut control = connect::open(&resolved, target)?;
    let snap = bucardo::read(&mut control)?;
    let running = bucardo::running(&mut control)?;
    let mut cat = ctx.catalog()?;
    if req.remove {
        if let Some(why) = running {
            return Err(ImportError::Running(why).into());
        }
        return remove_cmd(ctx, &mut cat, &snap);
    }
    let mut plan = plan::build(&mut cat.client, &snap, sync_opts::inert)?;
    check(&mut plan);
    let dir = code_dir(req.config);
    let files = |plan: &Plan| -> Vec<(plan::CodeImport, String)> {
        plan.codes
            .iter()
            .map(|c| (c.clone(), dir.join(format!("{}.pl", c.name)).display().to_string()))
            .collect()
    };
    // The catalog is written in one transaction; a sync capra refuses is
    // rolled back alone, and so is one chained to it, until nothing more
    // falls out. A dry run rolls back whatever it wrote.
    let inst = cat.installation.clone();
    let (written, refused, pending) = loop {
        let mut tx = cat
            .client
            .transaction()
            .ctx(|| "starting a catalog transaction".into())?;
        let names: Vec<String> = plan
            .syncs
            .iter()
            .filter(|s| matches!(s.stage, Stage::New | Stage::Resume))
            .map(|s| s.name().to_string())
            .collect();
        let before = reconcile::before(&mut tx, &names)?;
        let (written, r) = takeover::write_catalog(&mut tx, &plan, &summary)?;
        let importing: BTreeSet<String> = plan
            .syncs
            .iter()
            .filter(|s| s.stage != Stage::New || written.iter().any(|w| w == s.name()))
            .map(|s| s.name().to_string())
            .collect();
        let mut broken = plan::broken_chains(&snap, &importing);
        broken.retain(|(n, _)| written.contains(n));
        if !broken.is_empty() {
            tx.rollback().ctx(|| "rolling back".into())?;
            plan.drop_syncs(broken);
            continue;
        }
        // Bucardo may run for syncs that stay; not while any is taken over.
        let work = !written.is_empty() || plan.syncs.iter().any(|s| s.stage == Stage::Resume);
        if let (false, true, Some(why)) = (req.dry_run, work, &running) {
            tx.rollback().ctx(|| "rolling back".into())?;
            return Err(ImportError::Running(why.clone()).into());
        }
        let refused = !r.is_empty();
        plan.drop_syncs(r);
        if req.dry_run {
            tx.rollback().ctx(|| "rolling back".into())?;
            break (written, refused, None);
        }
        takeover::write_codes(&mut tx, &files(&plan), &written)?;
        let pending = reconcile::apply(&mut tx, &inst, &before)?;
        if !files(&plan).is_empty() {
            save_codes(&dir, &files(&plan))?;
        }
        tx.batch_execute("NOTIFY capra_control, 'reload'")
            .ctx(|| "notifying the daemon".into())?;
        tx.commit().ctx(|| "committing the catalog".into())?;
        break (written, refused, Some(pending));
    };
    print_plan(ctx, &plan, &summary, &files(&plan));
    let status = if !refused { Ok(()) } else { Err(Error::Exit(1)) };
    let Some(pending) = pending else {
        if let Some(why) = running {
            ctx.say(format!("Before the import: {why}."));
        }
        ctx.say("--dry-run: nothing was changed.");
        return status;
    };
    pending.commit()?;
    let mut take: Vec<&plan::SyncImport> = plan
        .syncs
        .iter()
        .filter(|s| s.stage == Stage::Resume || written.iter().any(|w| w == s.name()))
        .collect();
    take.sort_by_key(|s| s.name().to_string());
    if take.is_empty() {
        ctx.say("Nothing to take over.");
        return status;
    }
    // Bucardo may have been started while the catalog was written.
    if let Some(why) = bucardo::running(&mut control)? {
        return Err(ImportError::Running(why).into());
    }
    let names: Vec<String> = take.iter().map(|s| s.name().to_string()).collect();
    takeover::inactivate(&mut control, &names)?;
    hand_over_all(ctx, &mut cat, &snap, &take)?;
    takeover::note_taken_over(&mut cat.client, &names)?;
    ctx.say(format!(
        "Took over sync(s) {}; Bucardo's are inactive now. Next: capra start (or capra reload if it runs); later, capra import bucardo --remove",
        names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
    ));
    status
}

/// Step 2 of the takeover on every source of the delta syncs taken over,
/// saying what was handed over where.
fn hand_over_all(
    ctx: &Ctx,
    cat: &mut crate::catalog::Catalog,
    snap: &bucardo::Snapshot,
    take: &[&plan::SyncImport],
) -> Result<()> {
    let imported: BTreeSet<String> = plan::imported(&mut cat.client)?.into_keys().collect();
    let deltas: Vec<&plan::SyncImport> = take.iter().copied().filter(|s| s.delta).collect();
    let mut sources: Vec<&str> = deltas.iter().flat_map(|s| s.sources()).collect();
    sources.sort();
    sources.dedup();
    for db in sources {
        let d = model::db(&mut cat.client, db)?.ok_or_else(|| Error::not_found("database", db))?;
        let mut c = d.connect()?;
        let h = takeover::hand_over(&mut c, db, &deltas, snap, &imported)?;
        let keys: u64 = h.keys.iter().map(|(_, n)| n).sum();
        let per: Vec<String> = h
            .keys
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let mut line = format!("On \"{db}\": handed over {keys} undelivered key(s)");
        if !per.is_empty() {
            line.push_str(&format!(" ({})", per.join(", ")));
        }
        if !h.truncates.is_empty() {
            line.push_str(&format!(", a pending TRUNCATE of {}", h.truncates.join(", ")));
        }
        if !h.copies.is_empty() {
            line.push_str(&format!("; the first run copies {} whole", h.copies.join(", ")));
        }
        line.push_str(&format!(
            "; Bucardo's triggers disabled on {} table(s)",
            h.disabled.len()
        ));
        ctx.say(line);
        for (t, syncs) in &h.kept {
            ctx.say(format!(
                "  Bucardo's triggers on {t} stay: Bucardo sync {} still reads it",
                syncs.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks every value the import would store with capra's own validators;
/// a sync with a value capra refuses is not carried over.
fn check(plan: &mut Plan) {
    let mut gone = Vec::new();
    let Plan { syncs, dbs: known, .. } = &mut *plan;
    for s in syncs.iter_mut() {
        if s.stage != Stage::New {
            continue;
        }
        let dbs: Vec<String> = s.members.iter().map(|(d, _)| d.clone()).collect();
        let mut problems = Vec::new();
        let mut names = vec![
            ("sync", s.bucardo.name.clone()),
            ("relgroup", s.bucardo.herd.clone()),
            ("dbgroup", s.bucardo.dbs.clone()),
        ];
        names.extend(dbs.iter().map(|d| ("database", d.clone())));
        for (kind, n) in &names {
            if let Err(e) = check_name(kind, n) {
                problems.push(e.to_string());
            }
        }
        if ["pushdelta", "fullcopy", "swap", "sync", "all"].contains(&s.bucardo.name.to_lowercase().as_str()) {
            problems.push(format!("\"{}\" is a reserved word in capra", s.bucardo.name));
        }
        s.checked.clear();
        for (k, v) in &s.options {
            match sync_opts::parse(k, v, &dbs) {
                Ok(o) => s.checked.push(o),
                Err(e) => problems.push(e.to_string()),
            }
        }
        for t in &mut s.tables {
            t.checked.clear();
            for (k, v) in &t.options {
                match relation_option(k, v) {
                    Ok(Some(x)) => t.checked.push(x),
                    Ok(None) => {}
                    Err(e) => problems.push(format!("{}: {e}", t.found.name.shown())),
                }
            }
        }
        for d in &dbs {
            if let Some((nd, _)) = known.iter().find(|(n, _)| &n.name == d) {
                // The text may hold a password: the message never repeats it.
                if check_conn(&nd.conn).is_err() {
                    problems.push(format!(
                        "database \"{d}\": its connection settings (dbconn or dbdsn) are not libpq keywords capra accepts; fix them in Bucardo or add the database to capra by hand"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            gone.push((s.name().to_string(), problems.join("; ")));
        }
    }
    plan.drop_syncs(gone);
}

fn save_codes(dir: &Path, files: &[(plan::CodeImport, String)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        context: format!(
            "creating {} to save Bucardo's customcode (give --config to save it beside another config file)",
            dir.display()
        ),
        source,
    })?;
    for (c, file) in files {
        let text = format!(
            "# Bucardo customcode \"{}\" (whenrun {}), saved by capra import bucardo for porting to Lua.\n# capra keeps it inactive; port it, then: capra update customcode {} src_code=FILE.lua status=active\n{}\n",
            c.code.name, c.code.whenrun, c.name, c.code.src
        );
        std::fs::write(file, text).map_err(|source| Error::Io {
            context: format!("saving Bucardo's customcode to {file}"),
            source,
        })?;
    }
    Ok(())
}

fn print_plan(ctx: &Ctx, plan: &Plan, summary: &str, files: &[(plan::CodeImport, String)]) {
    ctx.say(format!("Bucardo {} at {summary}", plan.version));
    if !plan.dbs.is_empty() {
        ctx.say("Databases:");
        for (d, have) in &plan.dbs {
            let state = if *have { "already in capra" } else { "new" };
            ctx.say(format!("  {} ({state}): {}", d.name, plan::reach(d)));
        }
    }
    ctx.say("Syncs:");
    for s in &plan.syncs {
        let name = s.name();
        if let Stage::Done(at) = &s.stage {
            ctx.say(format!("  \"{name}\": taken over on {at}; nothing to do"));
            continue;
        }
        let members: Vec<String> = s.members.iter().map(|(d, r)| format!("{d}:{r}")).collect();
        let (tables, seqs) = s
            .tables
            .iter()
            .partition::<Vec<_>, _>(|t| t.found.reltype == crate::domain::RelType::Table);
        let kind = if s.delta { "delta" } else { "fullcopy" };
        let resume = if s.stage == Stage::Resume {
            " (in capra already; finishing the takeover)"
        } else {
            ""
        };
        ctx.say(format!(
            "  \"{name}\"{resume}: {kind}, relgroup \"{}\" ({} table(s), {} sequence(s)), dbs={}",
            s.bucardo.herd,
            tables.len(),
            seqs.len(),
            members.join(",")
        ));
        if !s.options.is_empty() {
            let o: Vec<String> = s.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            ctx.say(format!("    options: {}", o.join(" ")));
        }
        for t in s.tables.iter().filter(|t| !t.options.is_empty()) {
            let o: Vec<String> = t.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            ctx.say(format!("    {}: {}", t.found.name.shown(), o.join(" ")));
        }
        for n in &s.notes {
            ctx.say(format!("    {n}"));
        }
    }
    let ported: Vec<&(plan::CodeImport, String)> = files.iter().filter(|(c, _)| c.whenrun.is_some()).collect();
    if !ported.is_empty() {
        ctx.say("Custom code (Perl; imported inactive, to be ported to Lua):");
        for (c, f) in ported {
            let on = c
                .sync
                .as_ref()
                .map(|s| format!("sync \"{s}\""))
                .or_else(|| c.table.as_ref().map(|(_, t)| t.shown()))
                .unwrap_or_default();
            ctx.say(format!(
                "  \"{}\" (whenrun {}, {on}): source saved to {f}",
                c.name, c.code.whenrun
            ));
        }
    }
    let mut left: Vec<String> = plan.left.clone();
    for (c, f) in files.iter().filter(|(c, _)| c.whenrun.is_none()) {
        left.push(format!(
            "customcode \"{}\": capra has no hook point {}; its source is saved to {f}",
            c.code.name, c.code.whenrun
        ));
    }
    if !left.is_empty() {
        ctx.say("Not carried over:");
        for l in left {
            ctx.say(format!("  {l}"));
        }
    }
}

/// `--remove`: Bucardo's triggers and schema on the databases of the
/// syncs capra took over.
fn remove_cmd(ctx: &Ctx, cat: &mut crate::catalog::Catalog, snap: &bucardo::Snapshot) -> Result<()> {
    let done: Vec<String> = plan::imported(&mut cat.client)?
        .into_iter()
        .filter(|(_, at)| at.is_some())
        .map(|(s, _)| s)
        .collect();
    if done.is_empty() {
        return Err(ImportError::NothingTakenOver.into());
    }
    let mut dbs: Vec<String> = Vec::new();
    for s in &done {
        if let Some(sy) = model::sync(&mut cat.client, s)? {
            if let Some(g) = model::dbgroup(&mut cat.client, &sy.dbgroup)? {
                dbs.extend(g.members.into_iter().map(|m| m.db));
            }
        }
    }
    dbs.sort();
    dbs.dedup();
    // A Bucardo sync that was not taken over and may run again still needs
    // Bucardo's objects in its databases.
    for db in &dbs {
        let users: Vec<String> = snap
            .syncs
            .iter()
            .filter(|s| s.status != "inactive" && !done.contains(&s.name))
            .filter(|s| snap.members_of(s).iter().any(|m| &m.db == db))
            .map(|s| format!("\"{}\"", s.name))
            .collect();
        if !users.is_empty() {
            return Err(ImportError::StillUsed {
                db: db.clone(),
                syncs: users.join(", "),
            }
            .into());
        }
    }
    let mut clients = Vec::new();
    for db in &dbs {
        let d = model::db(&mut cat.client, db)?.ok_or_else(|| Error::not_found("database", db))?;
        let mut c = d.connect()?;
        remove::check(&mut c, db)?;
        clients.push((db, c));
    }
    for (db, mut c) in clients {
        let r = remove::remove(&mut c, db)?;
        if r.triggers.is_empty() && !r.schema {
            ctx.say(format!("\"{db}\": nothing of Bucardo there"));
        } else {
            ctx.say(format!(
                "\"{db}\": dropped {} Bucardo trigger(s){}",
                r.triggers.len(),
                if r.schema { " and schema bucardo" } else { "" }
            ));
        }
    }
    ctx.say("Bucardo's control database is untouched; remove it with Bucardo's own tools when you no longer need it.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_become_keywords_and_hide_their_password() {
        let k = uri_keywords("postgresql://bucardo:s%40cret@db1.example:5433/bucardo?sslmode=require").unwrap();
        let kw = connect::parse_keywords(&k).unwrap();
        assert_eq!(kw["user"], "bucardo");
        assert_eq!(kw["password"], "s@cret");
        assert_eq!(kw["host"], "db1.example");
        assert_eq!(kw["port"], "5433");
        assert_eq!(kw["dbname"], "bucardo");
        assert_eq!(kw["sslmode"], "require");
        let e = uri_keywords("postgresql://u:SEKRIT@h/%zz").unwrap_err().to_string();
        assert!(!e.contains("SEKRIT"), "{e}");
        let e = control_spec(Some("password=SEKRIT junk")).unwrap_err().to_string();
        assert!(!e.contains("SEKRIT"), "{e}");
        assert!(uri_keywords("postgresql://h/%zz").is_err());
    }

    #[test]
    fn the_control_database_defaults_to_bucardo() {
        let s = control_spec(Some("host=h port=5")).unwrap();
        if std::env::var_os("PGDATABASE").is_none() {
            assert_eq!(s.dbname.as_deref(), Some("bucardo"));
        }
        let s = control_spec(Some("dbname=other user=me")).unwrap();
        assert_eq!(s.dbname, None);
        assert_eq!(s.user, None);
    }
}
