//! Lua hooks: `add customcode`, `update customcode`.

use super::*;

pub(super) const CODE_KEYS: &[Key] = &[
    key("whenrun", &["when_run"]),
    key("src_code", &["src", "file"]),
    key("sync", &[]),
    key("relation", &["table"]),
    key("db", &[]),
    key("priority", &[]),
    key("status", &[]),
    key("about", &[]),
];

pub(super) fn add_customcode(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, CODE_KEYS, "add customcode")?;
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: capra add customcode NAME whenrun=HOOK src_code=FILE.lua (sync=S | relation=T)".into(),
        ));
    };
    check_name("customcode", name)?;
    let whenrun = a.choice("whenrun", crate::hooks::HOOKS)?.ok_or_else(|| {
        Error::Usage(format!(
            "customcode \"{name}\" needs whenrun=HOOK ({})",
            crate::hooks::HOOKS.join(", ")
        ))
    })?;
    let file = a
        .get("src_code")
        .ok_or_else(|| Error::Usage(format!("customcode \"{name}\" needs src_code=FILE.lua")))?;
    let path = std::fs::canonicalize(file).map_err(|source| Error::Io {
        context: format!("reading {file}"),
        source,
    })?;
    let src = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    crate::hooks::check(&path.display().to_string(), &src)?;
    let priority = a.number("priority", 1_000_000)?.unwrap_or(0) as i32;
    let status = a
        .choice("status", &["active", "inactive"])?
        .unwrap_or_else(|| "active".into());
    let about = a.get("about").unwrap_or("").to_string();
    if a.has("sync") == a.has("relation") {
        return Err(Error::Usage(format!(
            "customcode \"{name}\" attaches to exactly one of sync=SYNC or relation=TABLE"
        )));
    }
    let mut cat = ctx.catalog()?;
    cat.edit(|tx| {
        if tx
            .query_opt("SELECT 1 FROM capra.customcode WHERE name = $1", &[name])
            .ctx(|| "looking up customcode".into())?
            .is_some()
        {
            return Err(Error::duplicate("customcode", name.clone()));
        }
        tx.execute(
            "INSERT INTO capra.customcode (name, whenrun, src_code, src_file, about, priority, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                name,
                &whenrun,
                &src,
                &path.display().to_string(),
                &about,
                &priority,
                &status,
            ],
        )
        .ctx(|| format!("adding customcode \"{name}\""))?;
        if let Some(s) = a.get("sync") {
            if model::sync(tx, s)?.is_none() {
                return Err(Error::not_found_hint("sync", s, "see: capra list syncs"));
            }
            tx.execute(
                "INSERT INTO capra.customcode_map (code, sync, priority) VALUES ($1, $2, $3)",
                &[name, &s, &priority],
            )
            .ctx(|| "attaching customcode".into())?;
        } else if let Some(t) = a.get("relation") {
            let all = model::relations(tx, Some("table"))?;
            let hits = edit::match_relations(&all, t, a.get("db"))?;
            let rel = match hits.as_slice() {
                [one] => *one,
                [] => return Err(Error::not_found_hint("table", t, "see: capra list tables")),
                _ => {
                    return Err(Error::Rejected(format!(
                        "more than one table matches {t}: use schema.name and db=NAME"
                    )))
                }
            };
            tx.execute(
                "INSERT INTO capra.customcode_map (code, relation, priority) VALUES ($1, $2, $3)",
                &[name, &rel.id, &priority],
            )
            .ctx(|| "attaching customcode".into())?;
        }
        Ok(())
    })?;
    ctx.say(format!("Added customcode \"{name}\""));
    Ok(())
}

pub(super) fn update_customcode(ctx: &Ctx, w: &Words) -> Result<()> {
    let a = kv::split(&w.words, CODE_KEYS, "update customcode")?;
    let [name] = a.positional.as_slice() else {
        return Err(Error::Usage("usage: capra update customcode NAME key=value...".into()));
    };
    if a.has("sync") || a.has("relation") || a.has("db") {
        return Err(Error::Usage(
            "a customcode's attachment cannot change; remove and add it".into(),
        ));
    }
    if a.pairs.is_empty() {
        return Err(Error::Usage(format!("nothing to change for customcode \"{name}\"")));
    }
    let mut sets: Vec<(&str, String, &str)> = Vec::new();
    if let Some(v) = a.choice("whenrun", crate::hooks::HOOKS)? {
        sets.push(("whenrun", v, "text"));
    }
    if let Some(v) = a.choice("status", &["active", "inactive"])? {
        sets.push(("status", v, "text"));
    }
    if let Some(v) = a.number("priority", 1_000_000)? {
        sets.push(("priority", v.to_string(), "integer"));
    }
    if let Some(v) = a.get("about") {
        sets.push(("about", v.to_string(), "text"));
    }
    if let Some(file) = a.get("src_code") {
        let path = std::fs::canonicalize(file).map_err(|source| Error::Io {
            context: format!("reading {file}"),
            source,
        })?;
        let src = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        crate::hooks::check(&path.display().to_string(), &src)?;
        sets.push(("src_code", src, "text"));
        sets.push(("src_file", path.display().to_string(), "text"));
    }
    let mut cat = ctx.catalog()?;
    let lines = cat.edit(|tx| {
        if tx
            .query_opt("SELECT 1 FROM capra.customcode WHERE name = $1", &[name])
            .ctx(|| "looking up customcode".into())?
            .is_none()
        {
            return Err(Error::not_found_hint(
                "customcode",
                name.clone(),
                "see: capra list customcodes",
            ));
        }
        let mut out = Vec::new();
        for (col, val, cast) in &sets {
            tx.execute(
                &format!("UPDATE capra.customcode SET {col} = $1::text::{cast} WHERE name = $2"),
                &[val, name],
            )
            .ctx(|| format!("changing customcode \"{name}\""))?;
            if *col == "priority" {
                tx.execute(
                    "UPDATE capra.customcode_map SET priority = $1::text::integer WHERE code = $2",
                    &[val, name],
                )
                .ctx(|| "changing priority".into())?;
            }
            if *col != "src_code" {
                out.push(format!("Changed customcode \"{name}\" {col} to {val}"));
            }
        }
        Ok(out)
    })?;
    for l in lines {
        ctx.say(l);
    }
    Ok(())
}
