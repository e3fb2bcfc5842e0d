//! Settings: `capra set`.

use super::*;

/// `capra set name=value...`.
pub fn set(ctx: &Ctx, pairs: &[String]) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::Usage("usage: capra set name=value [name=value...]".into()));
    }
    let mut checked = Vec::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(Error::Usage(format!("malformed setting {p:?}: expected name=value")));
        };
        let s = settings::find(k.trim())
            .ok_or_else(|| Error::Usage(format!("Unknown setting '{}' (see: capra show all)", k.trim())))?;
        let v = settings::normalise(s, v).map_err(Error::Usage)?;
        checked.push((s.name, v));
    }
    let mut cat = ctx.catalog()?;
    cat.edit(|tx| {
        for (n, v) in &checked {
            edit::store_setting(tx, n, v)?;
        }
        Ok(())
    })?;
    for (n, v) in checked {
        // Passwords never reach output.
        let shown = if n.contains("pass") && !v.is_empty() {
            "********"
        } else {
            v.as_str()
        };
        ctx.say(format!("Set \"{n}\" to \"{shown}\""));
        if let Some(why) = settings::find(n).and_then(settings::inert) {
            eprintln!("capra: warning: setting \"{n}\" has no effect in capra: {why}");
        }
    }
    Ok(())
}
