//! Lua hooks: `add customcode`, `update customcode`.

use super::render::say_all;
use crate::catalog::customcode;
use crate::cli::kv::{self, check_name, key, Key};
use crate::cli::{Ctx, Words};
use crate::domain::Status;
use crate::error::{Error, Result};

const CODE_KEYS: &[Key] = &[
    key("whenrun", &["when_run"]),
    key("src_code", &["src", "file"]),
    key("sync", &[]),
    key("relation", &["table"]),
    key("db", &[]),
    key("priority", &[]),
    key("status", &[]),
    key("about", &[]),
];

/// Reads a hook file and compiles it in the sandbox (a syntax error is
/// refused with its line); returns its absolute path and source.
fn read_hook(file: &str) -> Result<(std::path::PathBuf, String)> {
    let path = std::fs::canonicalize(file).map_err(|source| Error::Io {
        context: format!("reading {file}"),
        source,
    })?;
    let src = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    crate::hooks::check(&path.display().to_string(), &src)?;
    Ok((path, src))
}

/// `capra add customcode NAME whenrun=HOOK src_code=FILE.lua (sync=S | relation=T)`.
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
    let (path, src) = read_hook(file)?;
    let priority = a.number("priority", 1_000_000)?.unwrap_or(0) as i32;
    let status = a
        .choice_of("status", &["active", "inactive"])?
        .unwrap_or(Status::Active);
    let about = a.get("about").unwrap_or("").to_string();
    if a.has("sync") == a.has("relation") {
        return Err(Error::Usage(format!(
            "customcode \"{name}\" attaches to exactly one of sync=SYNC or relation=TABLE"
        )));
    }
    let code = customcode::NewCode {
        name,
        whenrun: &whenrun,
        src: &src,
        src_file: &path.display().to_string(),
        about: &about,
        priority,
        status,
        sync: a.get("sync"),
        relation: a.get("relation"),
        db: a.get("db"),
    };
    let mut cat = ctx.catalog()?;
    cat.edit(|tx| customcode::add(tx, &code))?;
    ctx.say(format!("Added customcode \"{name}\""));
    Ok(())
}

/// `capra update customcode NAME key=value...`.
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
        let (path, src) = read_hook(file)?;
        sets.push(("src_code", src, "text"));
        sets.push(("src_file", path.display().to_string(), "text"));
    }
    let mut cat = ctx.catalog()?;
    // Code is checked when it is added; activating code that never was
    // (Perl that `import bucardo` saved for porting) is refused here, not
    // at the sync's next run.
    if a.get("status") == Some("active") && !a.has("src_code") {
        if let Some(c) = crate::catalog::model::customcodes(&mut cat.client)?
            .into_iter()
            .find(|c| &c.name == name)
        {
            crate::hooks::check(&c.src_file, &c.src_code).map_err(|e| {
                Error::Rejected(format!(
                    "customcode \"{name}\" cannot be activated: {e}; port it to Lua first (capra update customcode {name} src_code=FILE.lua status=active)"
                ))
            })?;
        }
    }
    let events = cat.edit(|tx| customcode::update(tx, name, &sets))?;
    say_all(ctx, &events);
    Ok(())
}
