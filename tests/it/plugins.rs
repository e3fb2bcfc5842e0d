//! The example hooks in plugins/ compile in capra's sandbox and do what
//! their README says when called with a sample `ctx`.

use mlua::{Function, Lua, Table, Value};

fn load(name: &str) -> (Lua, Function) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name);
    let src = std::fs::read_to_string(&path).unwrap();
    capra::hooks::check(&path.display().to_string(), &src).unwrap_or_else(|e| panic!("{name}: {e}"));
    let lua = capra::hooks::sandbox().unwrap();
    let f: Function = lua.load(&src).set_name(format!("@{name}")).eval().unwrap();
    (lua, f)
}

fn ctx(lua: &Lua) -> Table {
    let t = lua.create_table().unwrap();
    t.set("sync", "benchswap").unwrap();
    t.set("run_id", 7).unwrap();
    t.set("table", "public.pgbench_accounts").unwrap();
    t.set("log", lua.create_function(|_, _msg: String| Ok(())).unwrap())
        .unwrap();
    let dbs = lua.create_table().unwrap();
    for (i, (n, r)) in [("test1_master", "source"), ("test1_master2", "source")]
        .iter()
        .enumerate()
    {
        let d = lua.create_table().unwrap();
        d.set("name", *n).unwrap();
        d.set("role", *r).unwrap();
        dbs.set(i + 1, d).unwrap();
    }
    t.set("dbs", dbs).unwrap();
    t
}

#[test]
fn every_plugin_compiles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "lua") {
            load(p.file_name().unwrap().to_str().unwrap());
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn latest_wins_picks_the_last_change() {
    let (lua, f) = load("latest_wins.lua");
    let c = ctx(&lua);
    let at = lua.create_table().unwrap();
    at.set("test1_master", 100.5).unwrap();
    at.set("test1_master2", 200.25).unwrap();
    c.set("changed_at", at).unwrap();
    let r: String = f.call(c.clone()).unwrap();
    assert_eq!(r, "test1_master2");
    let at = lua.create_table().unwrap();
    at.set("b_db", 5.0).unwrap();
    at.set("a_db", 5.0).unwrap();
    c.set("changed_at", at).unwrap();
    let r: String = f.call(c).unwrap();
    assert_eq!(r, "a_db", "ties go to the first name");
}

#[test]
fn prefer_site_keeps_a_row_the_head_office_deleted() {
    let (lua, f) = load("prefer_site.lua");
    let c = ctx(&lua);
    let rows = lua.create_table().unwrap();
    let row = lua.create_table().unwrap();
    row.set("aid", 1).unwrap();
    rows.set("test1_master", row.clone()).unwrap();
    rows.set("test1_master2", row.clone()).unwrap();
    c.set("rows", rows).unwrap();
    assert_eq!(f.call::<String>(c.clone()).unwrap(), "test1_master");
    let rows = lua.create_table().unwrap();
    rows.set("test1_master2", row).unwrap();
    c.set("rows", rows).unwrap();
    assert_eq!(f.call::<String>(c.clone()).unwrap(), "test1_master2");
    c.set("rows", lua.create_table().unwrap()).unwrap();
    assert!(matches!(f.call::<Value>(c).unwrap(), Value::Nil));
}

#[test]
fn log_totals_returns_nil() {
    let (lua, f) = load("log_totals.lua");
    assert!(matches!(f.call::<Value>(ctx(&lua)).unwrap(), Value::Nil));
}

/// Every example in plugins/, added with `capra add customcode` and run by
/// a real sync on real clusters.
#[test]
fn every_plugin_runs_in_a_real_sync() {
    use crate::support::cluster::{self, unique};
    use crate::support::data::value;
    use crate::support::fixtures::{conflict_sync, conflicting_writes, dbs, CONFLICT_DDL};
    use crate::support::Capra;
    let (a, b) = (cluster::a(), cluster::b());
    let c = Capra::install(a);
    let plugin = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("plugins")
            .join(name)
            .display()
            .to_string()
    };
    // Conflict hooks on two-source syncs. prefer_site names its head office
    // test1_master, so that sync's databases carry those names.
    let mut made = Vec::new();
    for (tag, file) in [("lw", "latest_wins.lua"), ("mc", "merge_counters.lua")] {
        let names = dbs(&c, tag, CONFLICT_DDL, &[a, b]);
        conflict_sync(&c, tag, &["conflict_strategy=target"]);
        c.ok(&[
            "add",
            "customcode",
            &format!("h_{tag}"),
            "whenrun=conflict",
            &format!("src_code={}", plugin(file)),
            &format!("sync=s_{tag}"),
        ]);
        made.push((tag, names));
    }
    let (m1, m2) = (a.create_db(&unique("ps_m")), b.create_db(&unique("ps_m2")));
    a.exec(&m1, CONFLICT_DDL);
    b.exec(&m2, CONFLICT_DDL);
    c.add_db("test1_master", a, &m1);
    c.add_db("test1_master2", b, &m2);
    c.ok(&["add", "table", "t", "db=test1_master", "relgroup=g_ps"]);
    c.ok(&[
        "add",
        "sync",
        "s_ps",
        "relgroup=g_ps",
        "dbs=test1_master2:source,test1_master:source",
        "autokick=0",
        "conflict_strategy=source",
    ]);
    c.ok(&[
        "add",
        "customcode",
        "h_ps",
        "whenrun=conflict",
        &format!("src_code={}", plugin("prefer_site.lua")),
        "sync=s_ps",
    ]);
    // The exception hook and the after_txn hook on a one-way sync whose
    // target refuses some rows (a CHECK the source does not have).
    let (src, tgt) = (a.create_db(&unique("sa_src")), b.create_db(&unique("sa_tgt")));
    let two =
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int NOT NULL DEFAULT 0); CREATE TABLE u (id int PRIMARY KEY);";
    a.exec(&src, two);
    b.exec(&tgt, two);
    b.exec(&tgt, "ALTER TABLE t ADD CHECK (n < 100)");
    c.add_db("sa_src", a, &src);
    c.add_db("sa_tgt", b, &tgt);
    c.ok(&["add", "table", "t", "u", "db=sa_src", "relgroup=g_sa"]);
    c.ok(&[
        "add",
        "sync",
        "s_sa",
        "relgroup=g_sa",
        "dbs=sa_src:source,sa_tgt:target",
        "autokick=0",
    ]);
    c.ok(&[
        "add",
        "customcode",
        "h_sa",
        "whenrun=exception",
        &format!("src_code={}", plugin("skip_and_alert.lua")),
        "relation=public.t",
        "db=sa_src",
    ]);
    c.ok(&[
        "add",
        "customcode",
        "h_lt",
        "whenrun=after_txn",
        &format!("src_code={}", plugin("log_totals.lua")),
        "sync=s_sa",
    ]);

    let _d = c.start();
    let row = |cl: &cluster::Cluster, d: &str| value(cl, d, "SELECT v || '/' || n FROM t WHERE id = 1");
    for (tag, names) in &made {
        let (d1, d2) = (&names[0], &names[1]);
        conflicting_writes(a, d1, b, d2);
        c.ok(&["kick", &format!("s_{tag}"), "60"]);
        match *tag {
            // db 1 changed last: it wins over conflict_strategy=target.
            "lw" => assert_eq!(
                (row(a, d1), row(b, d2)),
                ("one/5".into(), "one/5".into()),
                "{}",
                c.log()
            ),
            // The highest counter (7, from db 2), the rest from the latest (db 1).
            "mc" => assert_eq!(
                (row(a, d1), row(b, d2)),
                ("one/7".into(), "one/7".into()),
                "{}",
                c.log()
            ),
            _ => unreachable!(),
        }
    }
    // test1_master changed first, test1_master2 (the first source, which
    // conflict_strategy=source would pick) last: the head office still wins.
    a.exec(&m1, "UPDATE t SET v = 'head' WHERE id = 1");
    std::thread::sleep(std::time::Duration::from_millis(30));
    b.exec(&m2, "UPDATE t SET v = 'branch' WHERE id = 1");
    c.ok(&["kick", "s_ps", "60"]);
    assert_eq!(value(b, &m2, "SELECT v FROM t WHERE id = 1"), "head", "{}", c.log());
    assert_eq!(value(a, &m1, "SELECT v FROM t WHERE id = 1"), "head");
    // A row the target refuses: t is skipped, u still replicates.
    a.exec(
        &src,
        "INSERT INTO t VALUES (1, 'ok', 1), (2, 'too big', 500); INSERT INTO u VALUES (1)",
    );
    c.ok(&["kick", "s_sa", "60"]);
    assert_eq!(value(b, &tgt, "SELECT count(*) FROM u"), "1");
    assert_eq!(
        value(b, &tgt, "SELECT count(*) FROM t"),
        "0",
        "t was skipped in that run"
    );
    let log = c.log();
    assert!(
        log.contains("Skipping public.t in this run as the exception hook asked"),
        "{log}"
    );
    assert!(
        log.contains("capra: public.t skipped in sync s_sa (check violation)"),
        "{log}"
    );
    assert!(log.contains("Message from after_txn code h_lt: run "), "{log}");
    // Without the hook the same error sets the table aside (its changes
    // kept for the next tries) and the sync's other table goes on.
    c.ok(&["update", "customcode", "h_sa", "status=inactive"]);
    c.ok(&["reload"]);
    a.exec(&src, "UPDATE t SET n = 600 WHERE id = 2; INSERT INTO u VALUES (2)");
    let r = c.run(&["kick", "s_sa", "60"]);
    assert_eq!(r.code, Some(0), "{}{}", r.stdout, r.stderr);
    assert_eq!(value(b, &tgt, "SELECT count(*) FROM u"), "2");
    let status = c.ok(&["status", "s_sa"]);
    assert!(status.contains("public.t: ") && status.contains("check"), "{status}");
}
