//! `capra install`: Bucardo's interactive menu on a terminal, or `--batch`.

use std::io::{BufRead, IsTerminal, Write};

use clap::Args as ClapArgs;

use super::Ctx;
use crate::catalog::install::{self, Outcome};
use crate::config::Flags;
use crate::error::{Error, Result};
use crate::pg::connect::ConnSpec;

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
    let mut piddir = a
        .piddir
        .clone()
        .or_else(|| s.piddir.as_ref().map(|p| p.display().to_string()))
        .unwrap_or_else(|| "/var/run/capra".into());
    let interactive = !a.batch && std::io::stdin().is_terminal();
    let mut spec = ConnSpec {
        host: s.control.host.clone(),
        port: s.control.port,
        user: Some(user),
        dbname: Some(control_db.clone()),
        password: s.control.password.clone(),
        conn: String::new(),
        service: None,
    };
    let _ = flags;
    if interactive {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut out = std::io::stdout();
        let mut menu = Menu {
            host: spec.host.clone().or_else(|| std::env::var("PGHOST").ok()),
            port: spec.port.unwrap_or(5432),
            user: spec.user.clone().unwrap_or_default(),
            database: control_db.clone(),
            piddir: piddir.clone(),
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
            let change = |label: &str, input: &mut std::io::StdinLock<'_>, out: &mut std::io::Stdout| {
                prompt(input, out, &format!("\nChange the {label} to: "))
            };
            match ans.to_lowercase().as_str() {
                "q" => {
                    println!("Goodbye!");
                    return Ok(());
                }
                "1" => {
                    if let Some(v) = change("host", &mut input, &mut out) {
                        menu.host = if v.is_empty() || v == "<none>" { None } else { Some(v) };
                        println!("\nChanged host to: {}", menu.host.as_deref().unwrap_or("<none>"));
                    }
                }
                "2" => {
                    if let Some(v) = change("port", &mut input, &mut out) {
                        match v.parse::<u16>() {
                            Ok(p) if p > 0 => {
                                menu.port = p;
                                println!("\nChanged port to: {p}");
                            }
                            _ => println!("\nInvalid port {v:?}: must be a number from 1 to 65535"),
                        }
                    }
                }
                "3" => {
                    if let Some(v) = change("user", &mut input, &mut out) {
                        if !v.is_empty() {
                            menu.user = v;
                            println!("\nChanged user to: {}", menu.user);
                        }
                    }
                }
                "4" => {
                    if let Some(v) = change("database", &mut input, &mut out) {
                        if !v.is_empty() {
                            menu.database = v;
                            println!("\nChanged database to: {}", menu.database);
                        }
                    }
                }
                "5" => {
                    if let Some(v) = change("PID directory", &mut input, &mut out) {
                        if v.starts_with('/') {
                            menu.piddir = v;
                            println!("\nChanged PID directory to: {}", menu.piddir);
                        } else {
                            println!("\nThe PID directory must be an absolute path");
                        }
                    }
                }
                "p" => {
                    spec.host = menu.host.clone();
                    spec.port = Some(menu.port);
                    spec.user = Some(menu.user.clone());
                    piddir = menu.piddir.clone();
                    if menu.database != "postgres" {
                        // First try the database itself; Bucardo's menu then
                        // offers the postgres database to create it from.
                        let mut probe = spec.clone();
                        probe.dbname = Some(menu.database.clone());
                        let r =
                            crate::pg::connect::resolve(&probe, "capra install").map_err(|source| Error::ConnSpec {
                                target: "install".into(),
                                source,
                            })?;
                        match crate::pg::connect::connect(&r) {
                            Ok(_) => {
                                spec.dbname = Some(menu.database.clone());
                                break;
                            }
                            Err(e) if e.pg().and_then(|p| p.code()).map(|c| c.code()) == Some("3D000") => {
                                println!(
                                    "\nFailed to connect to database '{}', will try 'postgres'",
                                    menu.database
                                );
                                spec.dbname = Some(menu.database.clone());
                                menu.database = "postgres".into();
                                continue;
                            }
                            Err(e) => {
                                println!("\nFailed to connect: {}", e);
                                continue;
                            }
                        }
                    }
                    break;
                }
                _ => println!("\nPlease enter 1-5, P or Q"),
            }
        }
        println!();
    }
    let mut out: Box<dyn Write> = if ctx.quiet {
        Box::new(std::io::sink())
    } else {
        Box::new(std::io::stdout())
    };
    let outcome = install::install(&spec, Some(&piddir), &mut out)?;
    let db = spec.dbname.clone().unwrap_or(control_db);
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
    Ok(())
}
