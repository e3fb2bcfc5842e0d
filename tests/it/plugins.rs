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
