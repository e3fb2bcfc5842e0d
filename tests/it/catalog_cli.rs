//! The catalog commands: what they print, and that bad input gets one clear
//! line, the documented exit status, and leaves the catalog byte-for-byte
//! as it was (`list all --json` before and after).

use crate::support::{cluster, fixtures, Capra};

/// Runs a failing command and checks the catalog did not move.
#[track_caller]
fn refused(c: &Capra, args: &[&str], code: i32, needle: &str) {
    let before = c.snapshot();
    let err = c.fails(args, code);
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in: {err}");
    assert_eq!(before, c.snapshot(), "{args:?} changed the catalog");
}

#[test]
fn bad_input_changes_nothing() {
    let (c, src, _) = fixtures::confluence_pair();
    fixtures::add_keyed_tables(&c);
    c.ok(&["add", "dbgroup", "dg", "src:source", "tgt:target"]);
    // duplicate names
    refused(
        &c,
        &["add", "db", "src", &format!("dbname={src}")],
        1,
        "Cannot add database: the name \"src\" already exists",
    );
    refused(&c, &["add", "dbgroup", "dg", "src"], 1, "dbgroup \"dg\" already exists");
    // unknown objects
    refused(&c, &["remove", "db", "nosuch"], 1, "database \"nosuch\" does not exist");
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=nosuch", "dbs=dg"],
        1,
        "relgroup \"nosuch\" does not exist",
    );
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=nosuch"],
        1,
        "dbgroup \"nosuch\" does not exist",
    );
    refused(
        &c,
        &["add", "dbgroup", "dg2", "src", "ghost:target"],
        1,
        "database \"ghost\" does not exist",
    );
    refused(
        &c,
        &["remove", "table", "public.nosuch"],
        1,
        "table \"public.nosuch\" does not exist",
    );
    refused(
        &c,
        &["add", "table", "nosuch", "db=src"],
        1,
        "no table matching nosuch in database \"src\"",
    );
    refused(
        &c,
        &["add", "all", "tables", "db=src", "-T", "clustersafetyy", "relgroup=rg2"],
        1,
        "no table named clustersafetyy",
    );
    refused(&c, &["validate", "nosuch"], 1, "sync \"nosuch\" does not exist");
    // unknown or malformed key=value, bad enum, bad boolean, bad number
    refused(&c, &["add", "db", "x", "dbnme=foo"], 2, "unknown option 'dbnme'");
    refused(&c, &["add", "db", "x", "=foo"], 2, "malformed argument");
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=dg", "autokick=maybe"],
        2,
        "invalid value for 'autokick'",
    );
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=dg", "onetimecopy=3"],
        2,
        "invalid value for 'onetimecopy'",
    );
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=dg", "checktime=soon"],
        2,
        "invalid value for 'checktime'",
    );
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=dg", "schedule=every day"],
        2,
        "invalid value for 'schedule'",
    );
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=dg", "conflict_strategy=bogus"],
        2,
        "neither a strategy",
    );
    refused(
        &c,
        &["add", "db", "x", "dbname=y", "port=seventy"],
        2,
        "invalid value for 'port'",
    );
    refused(
        &c,
        &["add", "db", "x", "dbname=y", "status=sleeping"],
        2,
        "invalid value for 'status'",
    );
    refused(
        &c,
        &["add", "db", "x", "dbname=y", "conn=sslmod=require"],
        2,
        "unknown connection keyword 'sslmod'",
    );
    refused(
        &c,
        &["add", "db", "x", "dbname=y", "dbtype=mysql"],
        2,
        "PostgreSQL only",
    );
    refused(
        &c,
        &["set", "log_level=loud"],
        2,
        "must be one of: terse, normal, verbose, debug",
    );
    refused(
        &c,
        &["set", "no_such_setting=1"],
        2,
        "Unknown setting 'no_such_setting'",
    );
    refused(&c, &["add", "dbgroup", "dg3", "src:boss"], 2, "invalid role");
    // a password belongs in pass=, never in conn= (conn is shown)
    refused(
        &c,
        &["add", "db", "x", "dbname=y", "conn=password=hunter2"],
        2,
        "give it as pass=",
    );
    // names with quotes, spaces or SQL in them
    refused(&c, &["add", "db", "bad name", "dbname=y"], 2, "invalid database name");
    refused(
        &c,
        &["add", "db", "x'; DROP TABLE capra.db; --", "dbname=y"],
        2,
        "invalid database name",
    );
    refused(&c, &["add", "dbgroup", "\"quoted\"", "src"], 2, "invalid dbgroup name");
    refused(
        &c,
        &["add", "sync", "s;drop", "relgroup=rg", "dbs=dg"],
        2,
        "invalid sync name",
    );
    refused(
        &c,
        &["add", "sync", "swap", "relgroup=rg", "dbs=dg"],
        2,
        "reserved word",
    );
    // unreachable db: a clear error within the connect timeout, never a hang
    let dead = cluster::free_port();
    let t0 = std::time::Instant::now();
    refused(
        &c,
        &[
            "add",
            "db",
            "gone",
            "dbname=x",
            "host=127.0.0.1",
            &format!("port={dead}"),
        ],
        1,
        "cannot connect to database \"gone\"",
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(15));
    refused(
        &c,
        &[
            "add",
            "db",
            "gone",
            "dbname=x",
            "host=10.255.255.1",
            "conn=connect_timeout=2",
        ],
        1,
        "cannot connect to database \"gone\"",
    );
    // unknown clap-level option: usage, exit 2
    refused(&c, &["add", "db", "x", "--frobnicate"], 2, "unexpected argument");
}

#[test]
fn keyless_table_in_delta_sync_is_named_and_refused() {
    let (c, src, _) = fixtures::confluence_pair();
    let out = c.ok(&["add", "all", "tables", "db=src", "relgroup=rg"]);
    assert!(
        out.contains("Added table public.hibernate_unique_key to relgroup rg"),
        "{out}"
    );
    let list = c.ok(&["list", "tables", "hibernate_unique_key"]);
    assert!(list.contains("PK: none"), "{list}");
    refused(
        &c,
        &["add", "sync", "s1", "relgroup=rg", "dbs=src:source,tgt:target"],
        1,
        "table public.hibernate_unique_key has no primary key or unique key",
    );
    // A fullcopy sync may hold it.
    let out = c.ok(&["add", "sync", "copyall", "relgroup=rg", "dbs=src:source,tgt:fullcopy"]);
    assert!(out.contains("Added sync \"copyall\""), "{out}");
    // After the DBA adds the key (as the Confluence report does), re-adding refreshes it.
    cluster::a().exec(&src, "ALTER TABLE hibernate_unique_key ADD PRIMARY KEY (next_hi)");
    c.ok(&["add", "table", "public.hibernate_unique_key", "db=src"]);
    let list = c.ok(&["list", "tables", "hibernate_unique_key"]);
    assert!(list.contains("PK: next_hi (integer)"), "{list}");
    c.ok(&["add", "sync", "s1", "relgroup=rg", "dbs=src:source,tgt:target"]);
}

#[test]
fn active_sync_removal_needs_deactivate() {
    let (c, _, _) = fixtures::confluence_pair();
    fixtures::add_keyed_tables(&c);
    fixtures::add_keyed_sync(&c);
    refused(
        &c,
        &["remove", "sync", "s1"],
        1,
        "Cannot remove active sync \"s1\": please deactivate it first",
    );
    refused(&c, &["remove", "db", "tgt"], 1, "deactivate it first");
    refused(&c, &["remove", "relgroup", "rg"], 1, "sync \"s1\" uses it");
    let out = c.ok(&["deactivate", "s1"]);
    assert!(out.contains("Deactivating sync s1"), "{out}");
    let out = c.ok(&["remove", "sync", "s1"]);
    assert!(out.contains("Removed sync \"s1\""), "{out}");
    assert!(out.contains("Removed dbgroup \"s1\" (created for this sync)"), "{out}");
    assert!(c.ok(&["list", "syncs"]).contains("There are no syncs."));
}

#[test]
fn mixed_case_and_quoted_names() {
    let (c, _, _) = fixtures::confluence_pair();
    let out = c.ok(&[
        "add",
        "table",
        "public.\"AO_92296B_AORECENTLY_VIEWED\"",
        "db=src",
        "relgroup=odd",
    ]);
    assert!(
        out.contains("Added table public.\"AO_92296B_AORECENTLY_VIEWED\" to relgroup odd"),
        "{out}"
    );
    // Unquoted, case-folded typing finds it too (exact match first).
    let out = c.ok(&["add", "table", "ao_9412a1_aoregistration", "db=src", "relgroup=odd"]);
    assert!(out.contains("AO_9412A1_AOREGISTRATION"), "{out}");
    let list = c.ok(&["list", "tables"]);
    assert!(
        list.contains("Table: public.\"AO_92296B_AORECENTLY_VIEWED\"  DB: src  PK: ID (bigint)"),
        "{list}"
    );
    assert!(list.contains("PK: ID (varchar)"), "{list}");
    let out = c.ok(&["remove", "table", "public.\"AO_92296B_AORECENTLY_VIEWED\""]);
    assert!(
        out.contains("public.\"AO_92296B_AORECENTLY_VIEWED\" (DB: src)"),
        "{out}"
    );
}

#[test]
fn list_formats_and_json() {
    let (c, _, _) = fixtures::confluence_pair();
    fixtures::add_keyed_tables(&c);
    c.ok(&["add", "all", "sequences", "db=src", "relgroup=rg"]);
    c.ok(&["add", "dbgroup", "dg", "src:source", "tgt:target"]);
    c.ok(&[
        "add",
        "sync",
        "s1",
        "relgroup=rg",
        "dbs=dg",
        "autokick=0",
        "checktime=5 minutes",
        "schedule=*/5 * * * *",
    ]);
    let dbs = c.ok(&["list", "dbs"]);
    assert!(dbs.contains("Database: src  Status: active  Conn: psql -p"), "{dbs}");
    assert!(!dbs.to_lowercase().contains("pass"), "{dbs}");
    let rg = c.ok(&["list", "relgroups"]);
    assert!(rg.starts_with("Relgroup: rg  DB: src  Members: "), "{rg}");
    assert!(rg.contains("  Used in syncs: s1"), "{rg}");
    let herds = c.ok(&["list", "herds"]);
    assert!(herds.starts_with("Herd: rg  DB: src"), "{herds}");
    let syncs = c.ok(&["list", "syncs"]);
    assert!(
        syncs.contains("Sync \"s1\"  Relgroup \"rg\"  DB group \"dg\" src:source tgt:target  (pushdelta)  [Active]"),
        "{syncs}"
    );
    let dg = c.ok(&["list", "dbgroup"]);
    assert!(dg.contains("Dbgroup: dg  Members: src:source tgt:target"), "{dg}");
    let json: serde_json::Value = serde_json::from_str(&c.ok(&["list", "syncs", "--json"])).unwrap();
    assert_eq!(json[0]["autokick"], false);
    assert_eq!(json[0]["checktime"], "00:05:00");
    assert_eq!(json[0]["schedule"], "*/5 * * * *");
    let all: serde_json::Value = serde_json::from_str(&c.snapshot()).unwrap();
    for k in [
        "dbs",
        "dbgroups",
        "tables",
        "sequences",
        "relgroups",
        "syncs",
        "customcodes",
        "config",
    ] {
        assert!(all.get(k).is_some(), "list all --json lacks {k}");
    }
    assert!(c.ok(&["list", "all"]).contains("Sync \"s1\""));
    // `list` with no noun is bad usage.
    let r = c.run(&["list"]);
    assert_eq!(r.code, Some(2));
    // update and show
    let out = c.ok(&["update", "sync", "s1", "autokick=1", "onetimecopy=2"]);
    assert!(out.contains("Updated sync \"s1\": autokick 0 -> 1"), "{out}");
    assert!(out.contains("Updated sync \"s1\": onetimecopy 0 -> 2"), "{out}");
    let out = c.ok(&["set", "log_level=verbose", "kid_serial_sleep=2"]);
    assert!(out.contains("Set \"log_level\" to \"verbose\""), "{out}");
    let out = c.ok(&["show", "changed"]);
    assert!(
        out.contains("log_level") && out.contains("kid_serial_sleep") && !out.contains("piddir"),
        "{out}"
    );
    let out = c.ok(&["config", "show", "log_level"]);
    assert!(out.contains("log_level = verbose"), "{out}");
}

#[test]
fn customcode_is_compiled_when_added() {
    let (c, _, _) = fixtures::confluence_pair();
    fixtures::add_keyed_tables(&c);
    fixtures::add_keyed_sync(&c);
    let good = c.home_file("good.lua", "return function(ctx)\n  ctx.log('hi')\nend\n");
    let bad = c.home_file("bad.lua", "return function(ctx)\n  local x = = 1\nend\n");
    let out = c.ok(&[
        "add",
        "customcode",
        "hello",
        "whenrun=after_txn",
        &format!("src_code={}", good.display()),
        "sync=s1",
    ]);
    assert!(out.contains("Added customcode \"hello\""), "{out}");
    refused(
        &c,
        &[
            "add",
            "customcode",
            "broken",
            "whenrun=conflict",
            &format!("src_code={}", bad.display()),
            "sync=s1",
        ],
        1,
        "bad.lua:2:",
    );
    refused(
        &c,
        &[
            "add",
            "customcode",
            "x",
            "whenrun=whenever",
            &format!("src_code={}", good.display()),
            "sync=s1",
        ],
        2,
        "invalid value for 'whenrun'",
    );
    refused(
        &c,
        &[
            "add",
            "customcode",
            "x",
            "whenrun=conflict",
            &format!("src_code={}", good.display()),
        ],
        2,
        "exactly one of sync=",
    );
    let out = c.ok(&[
        "add",
        "customcode",
        "tbl",
        "whenrun=conflict",
        &format!("src_code={}", good.display()),
        "relation=bandana",
    ]);
    assert!(out.contains("Added customcode \"tbl\""), "{out}");
    let list = c.ok(&["list", "customcodes"]);
    assert!(
        list.contains("Code: hello  When run: after_txn  Status: active"),
        "{list}"
    );
    assert!(list.contains("  Relations: public.bandana@src"), "{list}");
    c.ok(&["remove", "customcode", "hello"]);
    assert!(!c.ok(&["list", "code"]).contains("hello"));
}

/// The first hour (issue 22): a typo gets the nearest name, a list that
/// matches nothing says what exists, `show changed` says when nothing
/// changed, an inert setting warns once, and an unreachable control
/// database says how to point capra elsewhere.
#[test]
fn typos_and_empty_answers_say_what_to_do() {
    let (c, src, _) = fixtures::pair("first", "CREATE TABLE kv (k int PRIMARY KEY)");
    c.ok(&["add", "table", "kv", "db=src", "relgroup=shop_tables"]);
    // A mixed-case name, only on the source: every message names it as
    // psql needs it.
    cluster::a().exec(&src, r#"CREATE TABLE "AO_Miss" (k int PRIMARY KEY)"#);
    let out = c.ok(&["add", "table", "AO_Miss", "db=src", "relgroup=shop_tables"]);
    assert!(out.contains(r#"public."AO_Miss""#), "{out}");
    let code = c.home_file("c.lua", "return function(ctx)\n  return 'src'\nend\n");
    c.ok(&[
        "add",
        "customcode",
        "odd",
        "whenrun=conflict",
        &format!("src_code={}", code.display()),
        "relation=AO_Miss",
    ]);
    let out = c.ok(&["list", "customcodes", "odd"]);
    assert!(out.contains(r#"  Relations: public."AO_Miss"@src"#), "{out}");
    let out = c.ok(&["show", "changed"]);
    assert_eq!(
        out.trim(),
        "No setting differs from its default (capra show all lists them).",
        "{out}"
    );
    c.ok(&[
        "add",
        "sync",
        "shop_sync",
        "relgroup=shop_tables",
        "dbs=src:source,tgt:target",
        "autokick=0",
    ]);
    let err = c.fails(&["status", "shop_snyc"], 1);
    assert!(
        err.contains("sync \"shop_snyc\" does not exist; did you mean \"shop_sync\"? (see: capra list syncs)"),
        "{err}"
    );
    let err = c.fails(&["remove", "relgroup", "shop_tabels"], 1);
    assert!(err.contains("did you mean \"shop_tables\"?"), "{err}");
    let err = c.fails(
        &[
            "add",
            "sync",
            "other",
            "relgroup=shop_tables",
            "dbs=src:source,tgt:target",
            "autokik=1",
        ],
        2,
    );
    assert!(
        err.contains("unknown option 'autokik' for 'add sync': did you mean 'autokick'?"),
        "{err}"
    );
    let err = c.fails(&["set", "kid_slep=1"], 2);
    assert!(
        err.contains("Unknown setting 'kid_slep': did you mean 'kid_sleep'?"),
        "{err}"
    );
    let err = c.fails(&["show", "vac_slep"], 2);
    assert!(err.contains("did you mean 'vac_sleep'?"), "{err}");
    // Far from everything: no guess.
    let err = c.fails(&["status", "zzzzzz"], 1);
    assert!(!err.contains("did you mean"), "{err}");

    let r = c.run(&["set", "kid_sleep=1"]);
    assert_eq!(r.stderr.matches("no effect").count(), 1, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim(),
        "capra: warning: setting \"kid_sleep\" has no effect in capra (a Bucardo setting, kept for old scripts)"
    );

    // A table's typo: the suggestion as psql needs it, from the bare name.
    let err = c.fails(&["update", "table", "AO_Mis", "pkey=k"], 1);
    assert!(
        err.contains(r#"table "AO_Mis" does not exist; did you mean public."AO_Miss"? (see: capra list tables)"#),
        "{err}"
    );
    // db= narrows the names a suggestion comes from.
    let err = c.fails(&["update", "table", "AO_Mis", "db=tgt", "pkey=k"], 1);
    assert!(
        err.contains(r#"table "AO_Mis" does not exist; see: capra list tables"#),
        "{err}"
    );
    let v = c.run(&["validate", "shop_sync"]);
    assert!(
        v.code == Some(1)
            && v.stderr
                .contains(r#"table public."AO_Miss" does not exist in database "tgt""#),
        "{}",
        v.stderr
    );

    let out = c.ok(&["list", "relgroups", "rg2"]);
    assert_eq!(
        out.trim(),
        "No relgroups match rg2; all relgroups: shop_tables",
        "{out}"
    );
    assert_eq!(
        c.ok(&["list", "syncs", "nope"]).trim(),
        "No syncs match nope; all syncs: shop_sync"
    );
    // Another condition than the name: the names listed say why they
    // did not match.
    assert_eq!(
        c.ok(&["list", "syncs", "shop_sync", "inactive"]).trim(),
        "No syncs match shop_sync, status inactive; all syncs: shop_sync (active)"
    );
    assert_eq!(
        c.ok(&["list", "tables", "kv", "db=tgt"]).trim(),
        r#"No tables match kv, db=tgt; all tables: public."AO_Miss" (DB: src), public.kv (DB: src)"#
    );
    let err = c.fails(&["list", "syncs", "db=src"], 2);
    assert!(
        err.contains("db=NAME narrows tables and sequences only, not syncs"),
        "{err}"
    );
    let err = c.fails(&["list", "tables", "db=srcc"], 1);
    assert!(
        err.contains(r#"database "srcc" does not exist; did you mean "src"? (see: capra list dbs)"#),
        "{err}"
    );
    // list all says once that nothing matched, and skips kinds with no match.
    assert_eq!(
        c.ok(&["list", "all", "nope"]).trim(),
        "Nothing matches nope; capra list all shows everything"
    );
    assert_eq!(
        c.ok(&["list", "all", "kv"]).trim(),
        "1. Table: public.kv  DB: src  PK: k (integer)"
    );
    assert_eq!(c.ok(&["--json", "list", "syncs", "nope"]).trim(), "[]");

    let mut far = Capra::uninstalled(cluster::a());
    let at = far.global.iter().position(|g| g == "-p").unwrap() + 1;
    far.global[at] = cluster::free_port().to_string();
    let err = far.fails(&["status"], 1);
    assert!(
        err.contains("cannot connect to the control database")
            && err.contains("point capra at it with -h/-p/-d (or CAPRA_DBHOST")
            && err.contains("or create it with capra install"),
        "{err}"
    );
    // The server answers but has no such database: create it.
    let err = Capra::uninstalled(cluster::a()).fails(&["status"], 1);
    assert!(
        err.contains("name the right one with -d (or CAPRA_DBNAME")
            && err.contains("or create it with capra install (as a role that may create databases"),
        "{err}"
    );
    // The server refuses the role: the role and its password.
    let mut nobody = Capra::uninstalled(cluster::a());
    let at = nobody.global.iter().position(|g| g == "-U").unwrap() + 1;
    nobody.global[at] = "no_such_role_here".into();
    let err = nobody.fails(&["status"], 1);
    assert!(
        err.contains("check the role (-U, CAPRA_DBUSER") && err.contains("pg_hba.conf lets it in"),
        "{err}"
    );
}

/// The man page (issue 22): no reference to per-command pages that are
/// not shipped, the Bucardo spellings once, nothing wider than 80 columns,
/// and no warning from man.
#[test]
fn the_man_page_fits_and_names_no_missing_pages() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::capra::bin())
        .arg("generate-docs")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = dir.path().join("capra.1");
    let shown = std::process::Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let warnings = String::from_utf8_lossy(&shown.stderr);
    assert!(shown.status.success() && warnings.trim().is_empty(), "{warnings}");
    // Without a terminal man overstrikes bold text (c BACKSPACE c).
    let mut text = String::new();
    for ch in String::from_utf8_lossy(&shown.stdout).chars() {
        if ch == '\u{8}' {
            text.pop();
        } else {
            text.push(ch);
        }
    }
    let wide: Vec<&str> = text.lines().filter(|l| l.chars().count() > 80).collect();
    assert!(wide.is_empty(), "lines wider than 80 columns: {wide:#?}");
    let refs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("capra-") && l.contains("(1)"))
        .collect();
    assert!(refs.is_empty(), "references to pages that are not shipped: {refs:?}");
    assert_eq!(text.matches("Bucardo 5 spellings").count(), 1, "{text}");
    assert!(text.contains("BUCARDO SPELLINGS"), "{text}");
    // A row of the option tables keeps its key and default together, and
    // its meaning follows on the next lines.
    assert!(
        text.contains("autokick= (ping=) 1 (fullcopy: 0)\n") && text.contains("run when a change commits on a source"),
        "{text}"
    );
    // Options stay ASCII, so they can be pasted.
    assert!(text.contains("--dry-run"), "{text}");
    assert!(
        text.contains("COMMAND OPTIONS") && text.contains("onetimecopy="),
        "{text}"
    );
}
