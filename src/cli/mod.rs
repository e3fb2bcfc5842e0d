//! Everything a user types and sees: the command grammar (Bucardo 5 and the
//! Bucardo 4 forms of the field reports), output formats, and the mapping
//! from errors to one line and an exit status. No SQL lives here; commands
//! call the catalog, capture and daemon modules.

pub mod catalog_cmds;
pub mod compare;
pub mod conflicts;
pub mod daemon_cmds;
pub mod help;
pub mod import;
pub mod install;
pub mod kv;
pub mod list;
pub mod status;
pub mod suggest;
pub mod sync_opts;
pub mod validate;

use std::path::PathBuf;

use clap::{ArgAction, Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::catalog::Catalog;
use crate::config::{self, Settings};
use crate::error::{Error, Result};

/// capra's command line.
#[derive(Parser, Debug)]
#[command(
    name = "capra",
    version,
    about = "Asynchronous, trigger-based PostgreSQL replication (the Rust successor to Bucardo)",
    disable_help_flag = true,
    disable_help_subcommand = true,
    after_long_help = help::TOPICS,
    after_help = "Global options name the control database; they may also come from CAPRA_DBHOST, CAPRA_DBPORT,\nCAPRA_DBUSER, CAPRA_DBNAME, CAPRA_DBPASS, --config FILE, ~/.caprarc, /etc/capra/capra.conf, then PGHOST etc."
)]
pub struct Cli {
    /// Control database host or socket directory.
    #[arg(
        short = 'h',
        long = "dbhost",
        visible_alias = "db-host",
        global = true,
        env = "CAPRA_DBHOST",
        value_name = "HOST"
    )]
    pub dbhost: Option<String>,
    /// Control database port.
    #[arg(
        short = 'p',
        long = "dbport",
        visible_alias = "db-port",
        global = true,
        env = "CAPRA_DBPORT",
        value_name = "PORT"
    )]
    pub dbport: Option<u16>,
    /// Control database user (default capra).
    #[arg(
        short = 'U',
        long = "dbuser",
        visible_alias = "db-user",
        global = true,
        env = "CAPRA_DBUSER",
        value_name = "USER"
    )]
    pub dbuser: Option<String>,
    /// Control database name (default capra).
    #[arg(
        short = 'd',
        long = "dbname",
        visible_alias = "db-name",
        global = true,
        env = "CAPRA_DBNAME",
        value_name = "DB"
    )]
    pub dbname: Option<String>,
    /// Control database password (also CAPRA_DBPASS or .pgpass).
    #[arg(
        short = 'P',
        long = "dbpass",
        visible_alias = "db-pass",
        global = true,
        env = "CAPRA_DBPASS",
        hide_env_values = true,
        value_name = "PASS"
    )]
    pub dbpass: Option<crate::sys::Secret>,
    /// Config file of `key = value` lines.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output for list, show, status, compare and kick --dry-run.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail (repeatable).
    #[arg(short = 'v', long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Print help.
    #[arg(long, global = true, action = ArgAction::Help)]
    help: Option<bool>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `capra ha ...`.
#[derive(Subcommand, Debug)]
pub enum HaAction {
    /// The leader cancels its runs and gives the lease up now; a standby
    /// takes over within a second (refused when no standby runs).
    Handover,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create (or upgrade in place) the control database.
    #[command(alias = "upgrade")]
    Install(install::InstallArgs),
    /// Add a database, table, sequence, relgroup, dbgroup, sync or customcode.
    Add {
        /// What to add.
        #[command(subcommand)]
        noun: AddNoun,
    },
    /// Change a database, table, sequence, dbgroup, sync or customcode.
    #[command(alias = "upd")]
    Update {
        /// What to change.
        #[command(subcommand)]
        noun: Noun,
    },
    /// Remove a database, table, sequence, relgroup, dbgroup, sync or customcode.
    #[command(alias = "delete", alias = "del")]
    Remove {
        /// What to remove.
        #[command(subcommand)]
        noun: Noun,
    },
    /// List catalog objects.
    #[command(alias = "l")]
    List(list::ListArgs),
    /// Show settings: `show all`, `show changed`, `show NAME...`.
    Show {
        /// Setting names or patterns, `all` or `changed`.
        names: Vec<String>,
    },
    /// Change settings: `set name=value...`.
    Set {
        /// `name=value` pairs.
        pairs: Vec<String>,
    },
    /// Bucardo 4 spelling: `config show ...` / `config set ...`.
    Config {
        /// `show ...` or `set ...`.
        words: Vec<String>,
    },
    /// Check syncs against their live databases: `validate SYNC... | all`.
    Validate {
        /// Sync names, or `all`.
        names: Vec<String>,
    },
    /// Activate syncs.
    Activate {
        /// Sync names.
        names: Vec<String>,
    },
    /// Deactivate syncs.
    Deactivate {
        /// Sync names.
        names: Vec<String>,
    },
    /// Start the daemon: detached, returning once it is ready or failed;
    /// `--foreground` stays in front (systemd).
    Start {
        /// Run in this process (for systemd's Type=notify).
        #[arg(long)]
        foreground: bool,
        /// Why (logged and kept in the reason file).
        reason: Vec<String>,
    },
    /// Stop the daemon; returns once it is gone.
    Stop {
        /// Why.
        reason: Vec<String>,
    },
    /// Stop, then start.
    Restart {
        /// Why.
        reason: Vec<String>,
    },
    /// Several daemons: `ha handover` makes the leader step down at once;
    /// a standby takes over.
    Ha {
        /// What to do.
        #[command(subcommand)]
        action: HaAction,
    },
    /// Make the daemon re-read settings and syncs (`reload config` too).
    Reload {
        /// Ignored words (`config`, sync names): the daemon reloads everything.
        words: Vec<String>,
    },
    /// Run syncs now: `kick SYNC... [TIMEOUT]` (TIMEOUT seconds waits for the result; 0 waits forever).
    Kick {
        /// Only show what the next run would do (rows per table and
        /// database, full copies, conflicts and their winners); nothing is
        /// written and no daemon is needed.
        #[arg(long = "dry-run", visible_alias = "dryrun")]
        dry_run: bool,
        /// Sync names, then an optional timeout.
        words: Vec<String>,
    },
    /// One line per sync, or the detail block of the named syncs.
    Status {
        /// Sync names (or `all`).
        syncs: Vec<String>,
    },
    /// Compare a sync's databases with the truth (default: its first
    /// source), row by row, while it runs; `--repair` makes them equal
    /// through the daemon's runs. Exit status 0: identical, 1: differences
    /// remain, 2: bad usage or an error.
    Compare {
        /// The sync.
        sync: String,
        /// Only these tables (schema-qualified or not).
        tables: Vec<String>,
        /// The database taken as right.
        #[arg(long, value_name = "DB")]
        truth: Option<String>,
        /// Make the other databases equal to the truth for the keys that
        /// differ (as changes from the truth, applied by the next run), then
        /// compare those keys again.
        #[arg(long)]
        repair: bool,
    },
    /// Take over a running Bucardo 5 installation in place: its databases,
    /// tables, syncs and options, and every change it captured but had not
    /// delivered; prints the plan and what cannot come along. Stop Bucardo
    /// first.
    Import {
        /// What to import from: `bucardo`.
        #[arg(value_name = "bucardo")]
        what: String,
        /// Bucardo's control database: libpq keywords or a postgresql://
        /// URI (default: dbname=bucardo user=bucardo, with the PG*
        /// variables).
        #[arg(long, value_name = "CONNINFO")]
        from: Option<String>,
        /// Print the plan, checked by capra's validators, and change nothing.
        #[arg(long = "dry-run", visible_alias = "dryrun")]
        dry_run: bool,
        /// After the takeover: drop Bucardo's triggers and its schema from
        /// the replicated databases (never its control database).
        #[arg(long)]
        remove: bool,
    },
    /// Change rows waiting to replicate, per source and table.
    #[command(alias = "deltas")]
    Delta {
        /// Source databases (default: all).
        dbs: Vec<String>,
    },
    /// Conflict history of multi-master syncs: time, sync, table, key,
    /// competing databases and their change times, winner, why.
    Conflicts {
        /// Only this sync.
        sync: Option<String>,
        /// Only conflicts since an interval ago (`1 hour`) or a time
        /// (`2026-12-01 10:00`).
        #[arg(long, value_name = "INTERVAL|TIME")]
        since: Option<String>,
    },
    /// tail_n_mail for PostgreSQL logs: reads a tail_n_mail config file
    /// unchanged, mails a digest of what the logs got since the last run
    /// (position kept in CONFIG.state).
    Tailmail {
        /// The tail_n_mail config file.
        #[arg(value_name = "CONFIG")]
        tnm_config: PathBuf,
        /// Print the mail instead of sending it; keep the position.
        #[arg(long = "dry-run", visible_alias = "dryrun")]
        dry_run: bool,
    },
    /// Help: `help` (every command), `help COMMAND...`, `help topics`
    /// (the Bucardo 4 and 5 spellings capra understands).
    Help {
        /// A command path, or `topics`.
        words: Vec<String>,
    },
    /// Writes the man page and shell completions into DIR (packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write capra.1, capra.bash, _capra and capra.fish.
        dir: PathBuf,
    },
    /// Mail: `mail test [TO]` sends a test mail with the current settings
    /// and prints what the server answered.
    Mail {
        /// `test`, then an optional recipient.
        words: Vec<String>,
    },
    /// Delete change rows every sync has applied.
    Purge {
        /// Keep applied rows younger than this interval.
        #[arg(long = "older-than", value_name = "INTERVAL")]
        older_than: Option<String>,
        /// `all` (Bucardo's spelling) is accepted and ignored.
        words: Vec<String>,
    },
}

/// Nouns of `add`.
#[derive(Subcommand, Debug)]
pub enum AddNoun {
    /// `add db NAME dbname=D [host=H] [port=P] [user=U] [pass=X] [conn=K=V] [service=S]`.
    #[command(visible_alias = "database", alias = "dbs", alias = "databases", after_help = help::db())]
    Db(Words),
    /// `add all tables|sequences db=NAME [relgroup=RG] [-T T] [-t T] [-N S] [-n S]`.
    All(AddAll),
    /// `add table T [T...] db=NAME [relgroup=RG]`.
    #[command(alias = "tables")]
    Table(Words),
    /// `add sequence S [S...] db=NAME [relgroup=RG]`.
    #[command(alias = "sequences", alias = "seq")]
    Sequence(Words),
    /// `add relgroup NAME [T...]` (Bucardo 4: herd).
    #[command(visible_alias = "herd", alias = "relgroups", alias = "herds")]
    Relgroup(Words),
    /// `add dbgroup NAME DB[:role]...`.
    #[command(alias = "dbgroups")]
    Dbgroup(Words),
    /// `add sync NAME relgroup=RG dbs=GROUP|DB:role,... [options]`.
    #[command(alias = "syncs", after_help = help::sync())]
    Sync(Words),
    /// `add customcode NAME whenrun=HOOK src_code=FILE.lua (sync=S | relation=T)`.
    #[command(alias = "customcodes", alias = "code", alias = "codes", after_help = help::customcode())]
    Customcode(Words),
}

/// Nouns of `update` and `remove`.
#[derive(Subcommand, Debug)]
pub enum Noun {
    /// A database: `update db NAME key=value...`.
    #[command(visible_alias = "database", alias = "dbs", alias = "databases", after_help = help::db())]
    Db(Words),
    /// A table: `update table T [db=NAME] key=value...`.
    #[command(alias = "tables", after_help = help::table_opts())]
    Table(Words),
    /// A sequence.
    #[command(alias = "sequences", alias = "seq")]
    Sequence(Words),
    /// A relgroup (herd).
    #[command(visible_alias = "herd", alias = "relgroups", alias = "herds")]
    Relgroup(Words),
    /// A dbgroup.
    #[command(alias = "dbgroups")]
    Dbgroup(Words),
    /// A sync: `update sync NAME key=value...`.
    #[command(alias = "syncs", after_help = help::sync())]
    Sync(Words),
    /// A customcode: `update customcode NAME key=value...`.
    #[command(alias = "customcodes", alias = "code", alias = "codes", after_help = help::customcode())]
    Customcode(Words),
}

/// Positional names and `key=value` pairs.
#[derive(ClapArgs, Debug, Clone)]
pub struct Words {
    /// Skip safety checks: add a database without a test connection, remove
    /// objects with their dependents.
    #[arg(long)]
    pub force: bool,
    /// Names and key=value pairs, in any order.
    pub words: Vec<String>,
}

/// What `add all` adds.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllWhat {
    /// Every table.
    #[value(alias = "table")]
    Tables,
    /// Every sequence.
    #[value(alias = "sequence")]
    Sequences,
}

/// `add all tables|sequences`.
#[derive(ClapArgs, Debug, Clone)]
pub struct AddAll {
    /// tables or sequences.
    pub what: AllWhat,
    /// Leave out this table (repeatable; comma lists allowed).
    #[arg(short = 'T', long = "exclude-table", value_name = "TABLE")]
    pub exclude_table: Vec<String>,
    /// Only this table (repeatable; comma lists allowed).
    #[arg(short = 't', long = "table", value_name = "TABLE")]
    pub table: Vec<String>,
    /// Leave out this schema (repeatable).
    #[arg(short = 'N', long = "exclude-schema", value_name = "SCHEMA")]
    pub exclude_schema: Vec<String>,
    /// Only this schema (repeatable).
    #[arg(short = 'n', long = "schema", value_name = "SCHEMA")]
    pub schema: Vec<String>,
    /// Relgroup to put them in (Bucardo 4: --herd).
    #[arg(long = "relgroup", alias = "herd", value_name = "RELGROUP")]
    pub relgroup: Option<String>,
    /// Database to read them from.
    #[arg(long = "db", alias = "database", value_name = "DB")]
    pub db: Option<String>,
    /// key=value pairs (db=, relgroup=, herd=, standard_conflict=).
    pub words: Vec<String>,
}

/// What every command gets: settings and output flags.
pub struct Ctx {
    /// Where the control database is, and daemon file settings.
    pub settings: Settings,
    /// `--json`.
    pub json: bool,
    /// `-v` count.
    pub verbose: u8,
    /// `-q`.
    pub quiet: bool,
}

impl Ctx {
    /// Prints a normal output line unless `--quiet`.
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", line.as_ref());
        }
    }

    /// Opens the control database.
    pub fn catalog(&self) -> Result<Catalog> {
        Catalog::open(&self.settings, "capra")
    }

    /// The control connection's user: the default role for `add db`.
    pub fn control_user(&self) -> String {
        self.settings
            .control
            .user
            .clone()
            .or_else(|| std::env::var("PGUSER").ok())
            .unwrap_or_else(|| "capra".into())
    }
}

/// Parses the command line and runs it; returns the exit status.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return 0;
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
                    let _ = e.print();
                    return 2;
                }
                _ => {
                    eprintln!("capra: {}", usage_line(&e));
                    return 2;
                }
            }
        }
    };
    let verbose = cli.verbose;
    if !matches!(cli.command, Command::Start { foreground: true, .. }) {
        crate::logging::init_cli(verbose);
    }
    let flags = flags_of(&cli);
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let e = suggest::enrich(&flags, e);
            report(&e, verbose);
            e.exit_code()
        }
    }
}

/// The connection options the command line gave.
fn flags_of(cli: &Cli) -> config::Flags {
    config::Flags {
        dbhost: cli.dbhost.clone(),
        dbport: cli.dbport,
        dbuser: cli.dbuser.clone(),
        dbname: cli.dbname.clone(),
        dbpass: cli.dbpass.clone(),
        config: cli.config.clone(),
    }
}

/// One line from a clap error: its message plus where to read more.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad usage")
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    let tip = text
        .lines()
        .find(|l| l.trim_start().starts_with("tip:"))
        .map(|l| format!(" ({})", l.trim()))
        .unwrap_or_default();
    format!("{first}{tip}; see 'capra --help'")
}

/// Prints an error as one line (and its causes with -v).
pub fn report(e: &Error, verbose: u8) {
    match e {
        Error::Exit(_) => return,
        Error::Validation { sync, problems } => {
            for p in problems {
                eprintln!("capra: sync \"{sync}\": {p}");
            }
        }
        _ => eprintln!("capra: {}", crate::pg::error::flatten(&e.to_string())),
    }
    if verbose > 0 {
        // A failed statement's driver error is not its source (the message
        // already carries the server's words); -v shows its chain anyway.
        let mut cur: Option<&(dyn std::error::Error + 'static)> = match e.driver() {
            Some(d) => Some(d),
            None => std::error::Error::source(e),
        };
        while let Some(c) = cur {
            eprintln!("  caused by: {c}");
            cur = c.source();
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let flags = flags_of(&cli);
    let settings = config::load(&flags)?;
    let ctx = Ctx {
        settings,
        json: cli.json,
        verbose: cli.verbose,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Install(a) => install::run(&ctx, &flags, a),
        Command::Add { noun } => catalog_cmds::add(&ctx, noun),
        Command::Update { noun } => catalog_cmds::update(&ctx, noun),
        Command::Remove { noun } => catalog_cmds::remove(&ctx, noun),
        Command::List(a) => list::run(&ctx, a),
        Command::Show { names } => list::show(&ctx, &names),
        Command::Set { pairs } => catalog_cmds::set(&ctx, &pairs),
        Command::Config { words } => match words.split_first() {
            None => list::show(&ctx, &["all".to_string()]),
            Some((w, rest)) if w == "show" => list::show(&ctx, rest),
            Some((w, rest)) if w == "set" => catalog_cmds::set(&ctx, rest),
            Some((w, _)) => Err(Error::Usage(format!(
                "unknown config action '{w}': use 'capra show ...' or 'capra set name=value'"
            ))),
        },
        Command::Validate { names } => validate::run(&ctx, &names),
        Command::Activate { names } => catalog_cmds::set_status(&ctx, &names, true),
        Command::Deactivate { names } => catalog_cmds::set_status(&ctx, &names, false),
        Command::Start { foreground, reason } => daemon_cmds::start(&ctx, foreground, &reason, flags.config.as_deref()),
        Command::Stop { reason } => daemon_cmds::stop(&ctx, &reason),
        Command::Restart { reason } => {
            daemon_cmds::stop(&ctx, &reason)?;
            daemon_cmds::start(&ctx, false, &reason, flags.config.as_deref())
        }
        Command::Reload { .. } => daemon_cmds::reload(&ctx),
        Command::Ha {
            action: HaAction::Handover,
        } => daemon_cmds::handover(&ctx),
        Command::Kick { words, dry_run: false } => daemon_cmds::kick(&ctx, &words),
        Command::Kick { words, dry_run: true } => compare::dry_run(&ctx, &words),
        Command::Status { syncs } => status::status(&ctx, &syncs),
        Command::Delta { dbs } => status::delta(&ctx, &dbs),
        Command::Compare {
            sync,
            tables,
            truth,
            repair,
        } => {
            let req = crate::compare::Request { sync, tables, truth };
            compare::run(&ctx, &req, repair)
        }
        Command::Import {
            what,
            from,
            dry_run,
            remove,
        } => {
            if what != "bucardo" {
                return Err(Error::Usage(format!(
                    "capra imports from Bucardo only: capra import bucardo (not {what:?})"
                )));
            }
            if dry_run && remove {
                return Err(Error::Usage(
                    "--remove takes no --dry-run: it is run once the takeover is done".into(),
                ));
            }
            import::run(
                &ctx,
                &import::Request {
                    from: from.as_deref(),
                    dry_run,
                    remove,
                    config: flags.config.as_deref(),
                },
            )
        }
        Command::Conflicts { sync, since } => conflicts::run(&ctx, sync.as_deref(), since.as_deref()),
        Command::Mail { words } => mail_cmd(&ctx, &words),
        Command::Help { words } => help_cmd(&words),
        Command::GenerateDocs { dir } => generate_docs(&dir),
        Command::Tailmail { tnm_config, dry_run } => tailmail_cmd(&ctx, &tnm_config, dry_run),
        Command::Purge { older_than, words } => {
            if let Some(w) = words.iter().find(|w| w.as_str() != "all") {
                return Err(Error::Usage(format!(
                    "unexpected {w:?} for purge; use --older-than INTERVAL"
                )));
            }
            status::purge_cmd(&ctx, older_than.as_deref())
        }
    }
}

/// Drops Bucardo's noise words (`sync`, `syncs`) from a list of sync names.
pub fn strip_noise(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| !matches!(n.to_lowercase().as_str(), "sync" | "syncs"))
        .cloned()
        .collect()
}

/// `capra mail test [TO]`.
fn mail_cmd(ctx: &Ctx, words: &[String]) -> Result<()> {
    let (verb, rest) = words
        .split_first()
        .ok_or_else(|| Error::Usage("usage: capra mail test [TO]".into()))?;
    if verb != "test" || rest.len() > 1 {
        return Err(Error::Usage("usage: capra mail test [TO]".into()));
    }
    let mut cat = ctx.catalog()?;
    let s = crate::notify::mail::MailSettings::load(&mut cat.client)?;
    let to: Vec<String> = match rest.first() {
        Some(t) => vec![t.clone()],
        None if s.enabled() => s.to.clone(),
        None => {
            return Err(Error::Rejected(
                "default_email_to is not set (nothing is sent to nobody@example.com): capra set default_email_to=you@example.com, or give one: capra mail test you@example.com".into(),
            ))
        }
    };
    let host = crate::sys::hostname();
    let now = chrono::Local::now();
    let (subject, body) = crate::notify::tnm_mail(
        "capra",
        &host,
        "test",
        &[crate::notify::Item {
            text: format!("A test mail from capra on {host}, sent with: {}", s.describe()),
            count: 1,
            first: now,
            last: now,
        }],
    );
    let answer = s.send(Some(&to), &subject, &body)?;
    ctx.say(format!(
        "Sent a test mail to {} through {}",
        to.join(", "),
        s.describe()
    ));
    ctx.say(format!("The server answered: {answer}"));
    Ok(())
}

/// `capra tailmail CONFIG [--dry-run]`.
fn tailmail_cmd(ctx: &Ctx, config: &std::path::Path, dry_run: bool) -> Result<()> {
    use crate::notify::tailmail;
    let name_says_dry = config.to_string_lossy().contains("dryrun");
    let dry = dry_run || name_says_dry;
    let d = tailmail::run(config)?;
    if d.total == 0 && !d.mailzero {
        if !dry {
            d.save()?;
        }
        ctx.say("No matching log lines since the last run; no mail.");
        return Ok(());
    }
    if dry || tailmail::placeholder_recipients(&d.to) {
        println!("Subject: {}\nTo: {}\n\n{}", d.subject, d.to.join(", "), d.body);
        if !dry {
            ctx.say("(not sent: the EMAIL lines hold placeholder addresses, as tail_n_mail does)");
        }
        return Ok(());
    }
    let mut cat = ctx.catalog()?;
    let mut s = crate::notify::mail::MailSettings::load(&mut cat.client)?;
    if let Some(f) = &d.from {
        s.from = f.clone();
    }
    let answer = s.send(Some(&d.to), &d.subject, &d.body)?;
    d.save()?;
    ctx.say(format!(
        "Mailed {} match(es) in {} item(s) to {}: {answer}",
        d.total,
        d.unique,
        d.to.join(", ")
    ));
    Ok(())
}

/// `capra help [COMMAND...|topics]`.
fn help_cmd(words: &[String]) -> Result<()> {
    use clap::CommandFactory;
    if words.len() == 1 && words[0] == "topics" {
        print!("{}", help::TOPICS);
        return Ok(());
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut cur = &mut cmd;
    for w in words {
        cur = cur
            .find_subcommand_mut(w)
            .ok_or_else(|| Error::Usage(format!("no command {w:?}; see: capra help")))?;
    }
    cur.print_long_help().map_err(|source| Error::Io {
        context: "printing help".into(),
        source,
    })?;
    Ok(())
}

/// The one man page: clap's sections, the commands listed in it (no
/// per-command pages are shipped, so none is named), every command's
/// options and the Bucardo spellings as preformatted text, wrapped to fit
/// 80 columns.
fn man_page(cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let m = clap_mangen::Man::new(cmd.clone());
    let mut man = Vec::new();
    m.render_title(&mut man)?;
    m.render_name_section(&mut man)?;
    m.render_synopsis_section(&mut man)?;
    m.render_description_section(&mut man)?;
    m.render_options_section(&mut man)?;
    let mut text = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        text.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            roff_text(sub.get_name()),
            roff_text(&about)
        ));
    }
    if let Some(env) = cmd.get_after_help() {
        text.push_str(".SH ENVIRONMENT\n");
        text.push_str(&roff_text(&env.to_string().replace('\n', " ")));
        text.push('\n');
    }
    let preformatted = |title: &str, body: &str, text: &mut String| {
        text.push_str(&format!(".SH \"{title}\"\n.nf\n"));
        for line in body.lines() {
            for piece in wrap(line, 72) {
                text.push_str(&roff_text(&piece));
                text.push('\n');
            }
        }
        text.push_str(".fi\n");
    };
    let options = [help::sync(), help::db(), help::table_opts(), help::customcode()].join("\n");
    preformatted("COMMAND OPTIONS", &options, &mut text);
    preformatted("BUCARDO SPELLINGS", help::TOPICS, &mut text);
    man.extend_from_slice(text.as_bytes());
    m.render_version_section(&mut man)?;
    Ok(man)
}

/// Text safe in a roff line and pasteable from the page: backslashes
/// escaped, hyphens and quotes kept ASCII, no leading control character.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-").replace('\'', "\\(aq");
    if s.starts_with('.') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// A line of at most `width` columns, or broken into such lines. A table
/// row (`key  default  meaning`, columns two spaces apart) keeps its key
/// and default on the first line and takes its meaning to the next ones,
/// indented; other text is wrapped at words.
fn wrap(line: &str, width: usize) -> Vec<String> {
    if line.chars().count() <= width {
        return vec![line.to_string()];
    }
    let indent = line.len() - line.trim_start().len();
    let fields: Vec<&str> = line
        .trim()
        .split("  ")
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if fields.len() < 2 {
        return words(line, width, indent + 2);
    }
    let (head, meaning) = match fields.as_slice() {
        [key, default, rest @ ..] if !rest.is_empty() => (format!("{key}  {default}"), rest.join(" ")),
        [key, rest @ ..] => (key.to_string(), rest.join(" ")),
        [] => return vec![line.to_string()],
    };
    let mut out = words(&format!("{}{head}", " ".repeat(indent)), width, indent + 2);
    out.extend(words(
        &format!("{}{meaning}", " ".repeat(indent + 4)),
        width,
        indent + 4,
    ));
    out
}

/// Words of `line` (its indent kept) filled into lines of `width`, the
/// later ones indented by `cont`.
fn words(line: &str, width: usize, cont: usize) -> Vec<String> {
    let indent = line.len() - line.trim_start().len();
    let mut out = Vec::new();
    let mut cur = line[..indent].to_string();
    let mut empty = true;
    for word in line.split_whitespace() {
        if !empty && cur.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::replace(&mut cur, " ".repeat(cont)));
            empty = true;
        }
        if !empty {
            cur.push(' ');
        }
        cur.push_str(word);
        empty = false;
    }
    out.push(cur);
    out
}

/// Writes `capra.1` and the bash, zsh and fish completions into `dir`.
fn generate_docs(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    let io = |context: &str| {
        let context = context.to_string();
        move |source| Error::Io {
            context: context.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("creating the output directory"))?;
    let cmd = Cli::command();
    std::fs::write(
        dir.join("capra.1"),
        man_page(&cmd).map_err(io("rendering the man page"))?,
    )
    .map_err(io("writing capra.1"))?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "capra.bash"),
        (clap_complete::Shell::Zsh, "_capra"),
        (clap_complete::Shell::Fish, "capra.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "capra", &mut out);
        std::fs::write(dir.join(file), out).map_err(io("writing completions"))?;
    }
    Ok(())
}
