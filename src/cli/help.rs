//! Help that teaches: every key=value option of `add`/`update` with its
//! default and meaning (shown by `--help` and in the man page), and the
//! topics `capra help topics` prints (Bucardo 4 and 5 spellings).

/// (key and aliases, default, meaning) of sync options.
pub const SYNC: &[(&str, &str, &str)] = &[
    ("relgroup= (herd=)", "-", "the tables and sequences to replicate"),
    (
        "dbs= (dbgroup=)",
        "-",
        "a dbgroup, or DB:role,... (roles: source, target, fullcopy); two or more sources = multi-master",
    ),
    (
        "tables=",
        "-",
        "instead of relgroup=: tables to put in a new relgroup named after the sync",
    ),
    (
        "source=, targetdb=, targetgroup=, type=",
        "-",
        "Bucardo 4 form: source=HERD targetdb=DB|targetgroup=DBG type=pushdelta|fullcopy|swap",
    ),
    (
        "autokick= (ping=)",
        "1 (fullcopy: 0)",
        "run when a change commits on a source; 0: only on kick, schedule or checktime",
    ),
    (
        "onetimecopy=",
        "0",
        "1: the next run copies every table whole to targets; 2: only to targets whose table is empty",
    ),
    (
        "conflict_strategy= (standard_conflict=)",
        "default_conflict_strategy",
        "source, target, skip, random, latest, latest_all_tables, abort, or db names in priority order",
    ),
    (
        "schedule= (cron=)",
        "none",
        "a crontab line (5 fields, or 6 with seconds), server local time: scheduled runs",
    ),
    (
        "checktime=",
        "none",
        "run if no run happened for this long (seconds or an interval)",
    ),
    ("status=", "active", "active or inactive"),
    (
        "makedelta=",
        "0",
        "log rows applied to this sync's databases as their changes (cascades A -> B -> C)",
    ),
    (
        "rebuild_index=",
        "0",
        "drop index maintenance during full copies and REINDEX after (superuser)",
    ),
    ("analyze_after_copy=", "1", "ANALYZE tables after a full copy"),
    ("vacuum_after_copy=", "0", "VACUUM tables after a full copy"),
    (
        "deletemethod=",
        "truncate",
        "how a full copy empties a target table: truncate, truncate_cascade, delete",
    ),
    (
        "isolation_level= (txnmode=)",
        "isolation_level setting",
        "repeatable read or serializable, for reading sources",
    ),
    (
        "strict_checking=",
        "1",
        "0: validate accepts differing column types (names must match)",
    ),
    (
        "overdue=, expired=",
        "0",
        "mail when no good run for this long (warning, then critical)",
    ),
    (
        "stayalive=, kidsalive=, lifetime=, maxkicks=, priority=",
        "-",
        "Bucardo names kept for old scripts; no effect in capra (a one-line warning says so)",
    ),
];

/// (key and aliases, default, meaning) of database options.
pub const DB: &[(&str, &str, &str)] = &[
    ("dbname= (db=)", "the capra name", "the database name on the server"),
    (
        "host= (dbhost=)",
        "PGHOST / socket",
        "host name, address or socket directory; host lists as in libpq",
    ),
    ("port= (dbport=)", "PGPORT / 5432", "port"),
    ("user= (dbuser=)", "PGUSER / capra", "role to connect as"),
    (
        "pass= (dbpass=)",
        "~/.pgpass",
        "password (stored in the catalog, never printed)",
    ),
    (
        "conn=",
        "-",
        "more libpq keywords, such as sslmode=require or connect_timeout=5",
    ),
    ("service=", "-", "a pg_service.conf service"),
    (
        "status=",
        "active",
        "active or inactive (an inactive target falls behind, then gets a full copy)",
    ),
    (
        "makedelta=",
        "0",
        "log rows capra applies here as this database's changes (for syncs reading it)",
    ),
    ("group=", "-", "also put the database in this dbgroup (group=NAME:role)"),
    (
        "server_side_prepares=",
        "-",
        "Bucardo name kept for old scripts; no effect in capra",
    ),
];

/// (key and aliases, default, meaning) of table options (`update table`).
pub const TABLE: &[(&str, &str, &str)] = &[
    ("db=", "-", "which database's table, when the name is ambiguous"),
    (
        "pkey=",
        "primary key",
        "the replication key: columns of a primary or unique key",
    ),
    (
        "filter= (where=)",
        "none",
        "row filter: only rows matching this SQL condition replicate (none: every row)",
    ),
    (
        "conflict_strategy= (standard_conflict=)",
        "the sync's",
        "per-table conflict strategy (multi-master)",
    ),
    (
        "makedelta=",
        "-",
        "on, or db names: log rows applied to those databases as their changes",
    ),
    (
        "autokick= (ping=)",
        "the sync's",
        "whether changes to this table start a run",
    ),
    ("rebuild_index=", "the sync's", "see the sync option"),
    (
        "analyze_after_copy=, vacuum_after_copy=",
        "1, 1",
        "ANDed with the sync's",
    ),
    ("ghost=", "0", "1: keep capture but do not replicate the table"),
    ("strict_checking=", "1", "ANDed with the sync's"),
];

/// (key, default, meaning) of customcode options.
pub const CUSTOMCODE: &[(&str, &str, &str)] = &[
    (
        "whenrun=",
        "-",
        "before_sync, before_txn, before_check_rows, after_table_sync, after_txn, after_sync, conflict, exception",
    ),
    (
        "src_code=",
        "-",
        "the Lua file (compiled when added; it returns one function)",
    ),
    (
        "sync= | relation=",
        "-",
        "what the hook is attached to (relation= with db= when ambiguous)",
    ),
    (
        "priority=",
        "0",
        "order among hooks of the same point (lower first; table hooks before sync hooks)",
    ),
    ("status=", "active", "active or inactive"),
    ("about=", "-", "free text"),
];

/// Renders an option table for `--help`.
pub fn table(title: &str, rows: &[(&str, &str, &str)]) -> String {
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let dw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut s = format!("{title} (key=value; default, then meaning):\n");
    for (k, d, m) in rows {
        s.push_str(&format!("  {k:<w$}  {d:<dw$}  {m}\n"));
    }
    s
}

/// `add sync` / `update sync` options.
pub fn sync() -> String {
    table("Sync options", SYNC)
}

/// `add db` / `update db` options.
pub fn db() -> String {
    table("Database options", DB)
}

/// `update table` options.
pub fn table_opts() -> String {
    table("Table options", TABLE)
}

/// `add customcode` options.
pub fn customcode() -> String {
    table("Customcode options", CUSTOMCODE)
}

/// `capra help topics`: the Bucardo spellings capra understands.
pub const TOPICS: &str = "\
Bucardo 5 spellings (accepted as they are):
  relgroup / herd, dbgroup, dbs=A:source,B:target, conflict_strategy=bucardo_latest,
  add all tables -T/-t/-N/-n, --herd=, list herds, kick SYNC [TIMEOUT], status SYNC,
  reload config, set name=value, show all|changed, install --batch, bucardo_ctl names.

Bucardo 4 spellings (mapped):
  add database DBNAME name=NAME host= port=   -> add db NAME dbname=DBNAME ...
  add sync S source=HERD targetdb=DB|targetgroup=DBG type=pushdelta -> source + target(s)
  type=fullcopy                                -> source + fullcopy database(s)
  type=swap                                    -> two sources (multi-master)
  standard_conflict=source|target|skip|random|latest|abort -> conflict_strategy
  ping=                                        -> autokick=
  add all table ... standard_conflict=...      -> per-table conflict strategy

Kept only for old scripts (a one-line warning says they do nothing):
  stayalive, kidsalive, lifetime, maxkicks, priority (sync); server_side_prepares (db);
  Bucardo-only settings such as kid_sleep, ctl_checkonkids_time, quick_delta_check.

Mail and logs (beyond Bucardo):
  capra set default_email_to=... default_email_host=... email_tls=starttls|tls
  capra mail test [TO]; status_report_schedule='0 8 * * *'
  capra tailmail CONFIG [--dry-run]   (tail_n_mail configs work unchanged)
  capra conflicts [SYNC] [--since '1 hour'] [--json]
";
