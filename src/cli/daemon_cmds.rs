//! `start`, `stop`, `restart`, `reload`, `kick`: talking to the daemon.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::Ctx;
use postgres::fallible_iterator::FallibleIterator;

use crate::catalog::{model, runs};
use crate::daemon;
use crate::domain::Status;
use crate::error::{Context, Error, Result};

/// `capra start [--foreground] [REASON]`.
pub fn start(ctx: &Ctx, foreground: bool, reason: &[String], config: Option<&std::path::Path>) -> Result<()> {
    let reason = if reason.is_empty() {
        "capra start".to_string()
    } else {
        reason.join(" ")
    };
    if foreground {
        return daemon::run_foreground(&ctx.settings, &reason);
    }
    ctx.say("Checking for existing processes");
    ctx.say("Starting capra");
    let d = daemon::spawn_detached(&ctx.settings, &reason, config)?;
    let log = log_place(ctx.settings.logdest.as_deref(), &d.log);
    match d.status.strip_prefix("standby, ") {
        Some(leader) => ctx.say(format!(
            "capra is running (pid {}) as a standby; {leader}; log: {log}",
            d.pid
        )),
        None => ctx.say(format!("capra is running (pid {}); log: {log}", d.pid)),
    }
    Ok(())
}

/// Where the detached daemon's log went (`file`), and why there: one
/// rule, as capra.conf and the README say.
fn log_place(logdest: Option<&str>, file: &str) -> String {
    match logdest.map(crate::logging::Dest::parse) {
        None => format!("{file} (the default; logdest in capra.conf changes it)"),
        Some(crate::logging::Dest::File(_)) => format!("{file} (logdest)"),
        Some(crate::logging::Dest::Stderr) => format!("{file} (logdest = stderr)"),
        Some(crate::logging::Dest::Journald) => {
            format!("journald (logdest; output before logging starts goes to {file})")
        }
    }
}

/// `capra stop [REASON]`.
pub fn stop(ctx: &Ctx, reason: &[String]) -> Result<()> {
    let reason = if reason.is_empty() {
        "capra stop".to_string()
    } else {
        reason.join(" ")
    };
    let mut cat = ctx.catalog()?;
    match daemon::stop(&mut cat, &reason, Duration::from_secs(90))? {
        Some(s) if s.standbys > 0 => ctx.say(format!(
            "Stopped capra (pid {} on {}) and {} standby daemon(s)",
            s.daemon.pid, s.daemon.host, s.standbys
        )),
        Some(s) => ctx.say(format!("Stopped capra (pid {} on {})", s.daemon.pid, s.daemon.host)),
        None => ctx.say("capra is not running"),
    }
    Ok(())
}

/// `capra ha handover`: the leader steps down, a standby takes over; waits
/// until one leads and says which.
pub fn handover(ctx: &Ctx) -> Result<()> {
    let mut cat = ctx.catalog()?;
    let Some(old) = runs::daemon(&mut cat.client)? else {
        return Err(Error::Rejected(
            "capra is not running; nothing to hand over (start it with capra start)".into(),
        ));
    };
    if !runs::daemons(&mut cat.client)?.iter().any(|m| m.role == "standby") {
        return Err(Error::Rejected(format!(
            "no standby daemon runs to take over from pid {} on {}; start one first (capra start with a piddir of its own, or on another host)",
            old.pid, old.host
        )));
    }
    let before = crate::catalog::lease::read(&mut cat.client)?.epoch;
    let started = std::time::Instant::now();
    cat.client
        .execute("SELECT pg_notify($1, 'handover')", &[&runs::CONTROL_CHANNEL])
        .ctx(|| "asking the leader to hand over".into())?;
    while started.elapsed() < Duration::from_secs(30) {
        let l = crate::catalog::lease::read(&mut cat.client)?;
        if l.epoch > before && l.left.is_some_and(|s| s > 0.0) {
            if let Some((_, host, pid)) = l.holder {
                ctx.say(format!(
                    "Handed over in {:.1}s: pid {pid} on {host} leads now (epoch {}); pid {} on {} stands by",
                    started.elapsed().as_secs_f64(),
                    l.epoch,
                    old.pid,
                    old.host
                ));
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::Rejected(format!(
        "no daemon took over within 30s after pid {} on {} was asked to hand over; see capra status and the daemons' logs",
        old.pid, old.host
    )))
}

/// `capra reload [config|SYNC...]`: the daemon re-reads settings and syncs.
pub fn reload(ctx: &Ctx) -> Result<()> {
    let mut cat = ctx.catalog()?;
    let Some(d) = runs::daemon(&mut cat.client)? else {
        return Err(Error::Rejected(
            "capra is not running; nothing to reload (start it with capra start)".into(),
        ));
    };
    let wait = model::setting(&mut cat.client, "reload_config_timeout")?
        .parse::<f64>()
        .unwrap_or(30.0);
    cat.client
        .batch_execute(&format!(
            "LISTEN {}; NOTIFY {}, 'reload'",
            runs::RELOADED_CHANNEL,
            runs::CONTROL_CHANNEL
        ))
        .ctx(|| "asking the daemon to reload".into())?;
    let mut n = cat.client.notifications();
    let got = n.timeout_iter(Duration::from_secs_f64(wait.max(1.0))).next();
    match got {
        Ok(Some(_)) => {
            ctx.say(format!("Reloaded capra (pid {})", d.pid));
            Ok(())
        }
        _ => Err(Error::Rejected(format!(
            "capra (pid {}) did not confirm the reload within {wait}s",
            d.pid
        ))),
    }
}

/// `capra kick SYNC... [TIMEOUT]`.
pub fn kick(ctx: &Ctx, words: &[String]) -> Result<()> {
    let mut names = super::strip_noise(words);
    let timeout: Option<u64> = match names.last().map(|w| w.parse::<u64>()) {
        Some(Ok(t)) => {
            names.pop();
            Some(t)
        }
        _ => None,
    };
    if names.is_empty() {
        return Err(Error::Usage("usage: capra kick SYNC... [TIMEOUT]".into()));
    }
    let mut cat = ctx.catalog()?;
    let all = model::syncs(&mut cat.client)?;
    let wanted = kick_targets(&all, &names)?;
    if runs::daemon(&mut cat.client)?.is_none() {
        return Err(Error::Rejected(
            "capra is not running, so nothing can run the kick; start it with capra start".into(),
        ));
    }
    if timeout.is_some() {
        cat.client
            .batch_execute(&format!("LISTEN {}", runs::KICK_DONE_CHANNEL))
            .ctx(|| "waiting for the kick".into())?;
    }
    let mut ids = Vec::new();
    for n in &wanted {
        let id = runs::request_kick(&mut cat.client, n)?;
        ids.push((id, n.clone()));
    }
    cat.client
        .batch_execute(&format!("NOTIFY {}, 'kick'", runs::CONTROL_CHANNEL))
        .ctx(|| "kicking".into())?;
    let Some(limit) = timeout else {
        for n in &wanted {
            ctx.say(format!("Kicked sync {n}"));
        }
        return Ok(());
    };
    let failed = wait_for_kicks(ctx, &mut cat.client, ids, limit)?;
    if let Some(first) = failed.first() {
        let more = if failed.len() > 1 {
            format!(" (and {} more)", failed.len() - 1)
        } else {
            String::new()
        };
        return Err(Error::Rejected(format!(
            "{first}{more}; it is retried automatically (see: capra status)"
        )));
    }
    Ok(())
}

/// The syncs the words name (`all`: every active one); an unknown or
/// inactive sync is refused.
fn kick_targets(all: &[model::Sync], names: &[String]) -> Result<Vec<String>> {
    let mut wanted = Vec::new();
    for n in names {
        if n == "all" {
            wanted.extend(
                all.iter()
                    .filter(|s| s.status == Status::Active)
                    .map(|s| s.name.clone()),
            );
            continue;
        }
        match all.iter().find(|s| &s.name == n) {
            None => {
                let active: Vec<&str> = all
                    .iter()
                    .filter(|s| s.status == Status::Active)
                    .map(|s| s.name.as_str())
                    .collect();
                return Err(Error::NotFound {
                    kind: "sync",
                    looked: false,
                    name: n.clone(),
                    hint: if active.is_empty() {
                        "; there are no active syncs".into()
                    } else {
                        format!("; active syncs: {}", active.join(", "))
                    },
                });
            }
            Some(s) if s.status != Status::Active => {
                return Err(Error::Rejected(format!(
                    "Cannot kick inactive sync \"{n}\"; activate it first (capra activate {n})"
                )))
            }
            Some(_) => wanted.push(n.clone()),
        }
    }
    Ok(wanted)
}

/// Waits until every kicked run ended (or `limit` seconds passed, 0: no
/// limit), saying DONE or KILLED for each; returns the failures.
fn wait_for_kicks(ctx: &Ctx, c: &mut postgres::Client, ids: Vec<(i64, String)>, limit: u64) -> Result<Vec<String>> {
    let mut w = KickWait {
        ctx,
        start: Instant::now(),
        tty: std::io::stdout().is_terminal() && !ctx.quiet,
        failed: Vec::new(),
    };
    let mut left = ids;
    let mut last_alive_check = Instant::now();
    while !left.is_empty() {
        left = w.finished(c, left)?;
        if left.is_empty() {
            break;
        }
        if limit > 0 && w.start.elapsed() >= Duration::from_secs(limit) {
            let names: Vec<&str> = left.iter().map(|l| l.1.as_str()).collect();
            return Err(Error::Rejected(format!(
                "Timed out! sync {} did not finish within {limit}s; it keeps running (see: capra status {})",
                names.join(", "),
                names[0]
            )));
        }
        if w.tty {
            print!("\rKick {}: [{} s] ", left[0].1, w.start.elapsed().as_secs());
            let _ = std::io::stdout().flush();
        }
        if last_alive_check.elapsed() >= Duration::from_secs(2) {
            last_alive_check = Instant::now();
            if runs::daemon(c)?.is_none() {
                return Err(Error::Rejected(
                    "the capra daemon stopped while the kick was waiting; start it again with capra start".into(),
                ));
            }
        }
        let mut n = c.notifications();
        let _ = n.timeout_iter(Duration::from_millis(250)).next();
    }
    Ok(w.failed)
}

/// A `kick ... TIMEOUT` waiting for its runs.
struct KickWait<'a> {
    ctx: &'a Ctx,
    start: Instant,
    /// Progress is redrawn on one line.
    tty: bool,
    /// What failed, one sentence per run.
    failed: Vec<String>,
}

impl KickWait<'_> {
    /// Reports the kicks of `left` that have ended and returns those still
    /// running.
    fn finished(&mut self, c: &mut postgres::Client, left: Vec<(i64, String)>) -> Result<Vec<(i64, String)>> {
        let mut still = Vec::new();
        for (id, n) in left {
            let Some((ok, error)) = runs::kick_result(c, id)? else {
                still.push((id, n));
                continue;
            };
            let secs = self.start.elapsed().as_secs();
            if self.tty {
                print!("\r");
            }
            if ok {
                self.ctx.say(format!("Kick {n}: [{secs} s] DONE!"));
            } else {
                self.ctx.say(format!("Kick {n}: [{secs} s] KILLED!"));
                self.failed.push(format!(
                    "sync \"{n}\" failed: {}",
                    error.unwrap_or_else(|| "unknown error".into())
                ));
            }
        }
        Ok(still)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_says_where_the_log_went_and_why() {
        let f = "/var/log/capra/capra.log";
        assert_eq!(
            log_place(None, f),
            "/var/log/capra/capra.log (the default; logdest in capra.conf changes it)"
        );
        assert_eq!(log_place(Some("/tmp/c.log"), "/tmp/c.log"), "/tmp/c.log (logdest)");
        assert_eq!(
            log_place(Some("stderr"), f),
            "/var/log/capra/capra.log (logdest = stderr)"
        );
        assert_eq!(
            log_place(Some("journald"), f),
            "journald (logdest; output before logging starts goes to /var/log/capra/capra.log)"
        );
    }
}
