//! `capra install`: Bucardo's interactive menu on a terminal, or `--batch`.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args as ClapArgs;

use super::Ctx;
use crate::catalog::install::{self, Outcome};
use crate::config::Flags;
use crate::error::{Error, Result};
use crate::pg::connect::ConnSpec;
use postgres::error::SqlState;

/// `install [--batch] [--piddir DIR]`.
#[derive(ClapArgs, Debug)]
pub struct InstallArgs {
    /// Never prompt.
    #[arg(long)]
    pub batch: bool,
    /// PID directory to record (absolute).
    #[arg(long = "piddir", alias = "pid-dir", value_name = "DIR")]
    pub piddir: Option<String>,
}

struct Menu {
    host: Option<String>,
    port: u16,
    user: String,
    database: String,
    piddir: String,
}

impl Menu {
    fn print(&self, out: &mut impl Write) {
        let _ = writeln!(out, "\nCurrent connection settings:");
        let _ = writeln!(out, "1. Host:           {}", self.host.as_deref().unwrap_or("<none>"));
        let _ = writeln!(out, "2. Port:           {}", self.port);
        let _ = writeln!(out, "3. User:           {}", self.user);
        let _ = writeln!(out, "4. Database:       {}", self.database);
        let _ = writeln!(out, "5. PID directory:  {}", self.piddir);
    }
}

fn prompt(input: &mut impl BufRead, out: &mut impl Write, text: &str) -> Option<String> {
    let _ = write!(out, "{text}");
    let _ = out.flush();
    let mut line = String::new();
    match input.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}

/// Runs install.
pub fn run(ctx: &Ctx, flags: &Flags, a: InstallArgs) -> Result<()> {
    let s = &ctx.settings;
    // Bucardo installs as the postgres superuser unless told otherwise.
    let user = if s.user_defaulted {
        "postgres".to_string()
    } else {
        s.control.user.clone().unwrap_or_else(|| "postgres".into())
    };
    let control_db = s.control.dbname.clone().unwrap_or_else(|| "capra".into());
    let piddir = a
        .piddir
        .clone()
        .or_else(|| s.piddir.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "/var/run/capra".into());
    let interactive = !a.batch && std::io::stdin().is_terminal();
    let mut target = Target {
        spec: ConnSpec {
            host: s.control.host.clone(),
            port: s.control.port,
            user: Some(user),
            dbname: Some(control_db.clone()),
            password: s.control.password.clone(),
            conn: String::new(),
            service: None,
        },
        piddir,
    };
    let _ = flags;
    if interactive {
        if !ask(&mut target, &control_db)? {
            println!("Goodbye!");
            return Ok(());
        }
        println!();
    }
    let mut out: Box<dyn Write> = if ctx.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout())
    };
    let outcome = install::install(&target.spec, Some(&target.piddir), &mut out)?;
    let db = target.spec.dbname.clone().unwrap_or(control_db);
    say_outcome(ctx, &outcome, &db);
    Ok(())
}

/// Where the catalog goes: the control database and the PID directory.
struct Target {
    spec: ConnSpec,
    piddir: String,
}

/// Bucardo's menu: the user changes settings until they proceed (true) or
/// quit (false).
fn ask(target: &mut Target, control_db: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    let mut menu = Menu {
        host: target.spec.host.clone().or_else(|| std::env::var("PGHOST").ok()),
        port: target.spec.port.unwrap_or(5432),
        user: target.spec.user.clone().unwrap_or_default(),
        database: control_db.to_string(),
        piddir: target.piddir.clone(),
    };
    loop {
        menu.print(&mut out);
        let Some(ans) = prompt(
            &mut input,
            &mut out,
            "Enter a number to change it, P to proceed, or Q to quit: ",
        ) else {
            return Err(Error::Rejected("install cancelled (end of input)".into()));
        };
        match ans.to_lowercase().as_str() {
            "q" => return Ok(false),
            "p" => {
                if menu.proceed(target)? {
                    return Ok(true);
                }
            }
            n @ ("1" | "2" | "3" | "4" | "5") => menu.change(n, &mut input, &mut out),
            _ => println!("\nPlease enter 1-5, P or Q"),
        }
    }
}

impl Menu {
    /// Asks for a new value of setting `n` (1-5) and takes it if it fits.
    fn change(&mut self, n: &str, input: &mut impl BufRead, out: &mut impl Write) {
        let label = match n {
            "1" => "host",
            "2" => "port",
            "3" => "user",
            "4" => "database",
            _ => "PID directory",
        };
        let Some(v) = prompt(input, out, &format!("\nChange the {label} to: ")) else {
            return;
        };
        match n {
            "1" => {
                self.host = if v.is_empty() || v == "<none>" { None } else { Some(v) };
                println!("\nChanged host to: {}", self.host.as_deref().unwrap_or("<none>"));
            }
            "2" => match v.parse::<u16>() {
                Ok(p) if p > 0 => {
                    self.port = p;
                    println!("\nChanged port to: {p}");
                }
                _ => println!("\nInvalid port {v:?}: must be a number from 1 to 65535"),
            },
            "3" => {
                if !v.is_empty() {
                    self.user = v;
                    println!("\nChanged user to: {}", self.user);
                }
            }
            "4" => {
                if !v.is_empty() {
                    self.database = v;
                    println!("\nChanged database to: {}", self.database);
                }
            }
            _ => {
                if v.starts_with('/') {
                    self.piddir = v;
                    println!("\nChanged PID directory to: {}", self.piddir);
                } else {
                    println!("\nThe PID directory must be an absolute path");
                }
            }
        }
    }

    /// Takes the menu's settings; true when install can go ahead, false
    /// when the menu is shown again (the database does not exist yet, so
    /// the postgres database is offered to create it from, or the
    /// connection failed).
    fn proceed(&mut self, target: &mut Target) -> Result<bool> {
        let spec = &mut target.spec;
        spec.host = self.host.clone();
        spec.port = Some(self.port);
        spec.user = Some(self.user.clone());
        target.piddir = self.piddir.clone();
        if self.database == "postgres" {
            return Ok(true);
        }
        // First try the database itself; Bucardo's menu then offers the
        // postgres database to create it from.
        let mut probe = spec.clone();
        probe.dbname = Some(self.database.clone());
        let r = crate::pg::connect::resolve(&probe, "capra install").map_err(|source| Error::ConnSpec {
            target: "install".into(),
            source,
        })?;
        match crate::pg::connect::connect(&r) {
            Ok(_) => {
                spec.dbname = Some(self.database.clone());
                Ok(true)
            }
            Err(e) if e.pg().and_then(|p| p.code()) == Some(&SqlState::INVALID_CATALOG_NAME) => {
                println!(
                    "\nFailed to connect to database '{}', will try 'postgres'",
                    self.database
                );
                spec.dbname = Some(self.database.clone());
                self.database = "postgres".into();
                Ok(false)
            }
            Err(e) => {
                println!("\nFailed to connect: {}", e);
                Ok(false)
            }
        }
    }
}

/// What install did, in Bucardo's words.
fn say_outcome(ctx: &Ctx, outcome: &Outcome, db: &str) {
    match outcome {
        Outcome::Created(_) => {
            ctx.say("Installation is now complete.");
            ctx.say("");
            ctx.say("You may want to check over the configuration variables next, by running:");
            ctx.say("capra show all");
            ctx.say("Change any setting by using: capra set foo=bar");
        }
        Outcome::Upgraded { from, to } => ctx.say(format!(
            "Upgraded the capra catalog in database \"{db}\" from version {from} to {to}."
        )),
        Outcome::Current(v) => ctx.say(format!(
            "The capra catalog in database \"{db}\" is current (version {v}); nothing to do."
        )),
    }
}
