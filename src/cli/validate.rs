//! `capra validate SYNC... | all`.

use super::Ctx;
use crate::capture::validate::validate_sync;
use crate::catalog::model;
use crate::error::{Error, Result};

/// Validates the named syncs (or all); prints `Validating sync s ... OK`.
pub fn run(ctx: &Ctx, names: &[String]) -> Result<()> {
    let names = super::strip_noise(names);
    if names.is_empty() {
        return Err(Error::Usage("usage: capra validate SYNC... | all".into()));
    }
    let mut cat = ctx.catalog()?;
    let all: Vec<String> = model::syncs(&mut cat.client)?.into_iter().map(|s| s.name).collect();
    let list: Vec<String> = if names.iter().any(|n| n == "all") {
        if all.is_empty() {
            return Err(Error::Rejected("there are no syncs to validate".into()));
        }
        all
    } else {
        for n in &names {
            if !all.contains(n) {
                return Err(Error::not_found_hint("sync", n.clone(), "see: capra list syncs"));
            }
        }
        names
    };
    let width = list.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut failed: Option<Error> = None;
    for n in &list {
        let dots = ".".repeat(3 + width - n.len());
        match validate_sync(&mut cat.client, n) {
            Ok(notes) => {
                ctx.say(format!("Validating sync {n} {dots} OK"));
                // Which change time `latest` compares is always said (a
                // multi-master sync's conflicts depend on it); the other
                // notes with -v.
                for note in notes {
                    if ctx.verbose > 0 || note.starts_with("conflict strategy latest") {
                        ctx.say(format!("  note: {note}"));
                    }
                }
            }
            Err(e) => {
                ctx.say(format!("Validating sync {n} {dots} FAILED"));
                super::report(&e, ctx.verbose);
                failed = Some(e);
            }
        }
    }
    match failed {
        // Already reported line by line; exit 1 without repeating it.
        Some(_) => Err(Error::Rejected(format!("validation failed for {} sync(s)", list.len()))),
        None => Ok(()),
    }
}
