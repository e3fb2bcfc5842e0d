//! Lua custom code (`capra add customcode`): sandboxed Lua 5.4 with a time
//! and memory budget. A hook file is a chunk that returns one function.

use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, VmState};

/// Hook points a custom code may attach to.
pub const HOOKS: &[&str] = &[
    "before_sync",
    "after_sync",
    "before_txn",
    "after_txn",
    "before_check_rows",
    "after_table_sync",
    "conflict",
    "exception",
];

/// Most memory a hook VM may use.
pub const MEMORY_LIMIT: usize = 64 * 1024 * 1024;

/// Longest a hook may run.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

/// Something wrong with a hook.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The file does not compile; the message carries `file:line:`.
    #[error("{file}: {message}")]
    Compile {
        /// The file.
        file: String,
        /// Lua's message.
        message: String,
    },
    /// The chunk ran but did not return a function.
    #[error("{file}: the chunk must return one function (it returned {got})")]
    NotAFunction {
        /// The file.
        file: String,
        /// What it returned.
        got: String,
    },
    /// A runtime error inside the hook.
    #[error("{file}: {message}")]
    Runtime {
        /// The file.
        file: String,
        /// Lua's message with the line.
        message: String,
    },
}

/// A sandboxed VM: only `table`, `string`, `math` and `utf8`, no `os`, `io`,
/// `package`, `require` or file loading; bounded memory and time.
pub fn sandbox() -> mlua::Result<Lua> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let g = lua.globals();
    for name in ["dofile", "loadfile", "load", "require", "collectgarbage"] {
        g.set(name, mlua::Value::Nil)?;
    }
    Ok(lua)
}

/// Arms the time budget for the next call into the VM.
pub fn arm_budget(lua: &Lua) -> mlua::Result<()> {
    let start = Instant::now();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(10_000),
        move |_lua, _debug| {
            if start.elapsed() > TIME_LIMIT {
                Err(mlua::Error::RuntimeError(format!(
                    "hook ran longer than {}s",
                    TIME_LIMIT.as_secs()
                )))
            } else {
                Ok(VmState::Continue)
            }
        },
    )
}

fn lua_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => lua_message(cause),
        other => other.to_string(),
    }
    .lines()
    .next()
    .unwrap_or_default()
    .to_string()
}

/// Compiles a hook file and runs its chunk in the sandbox, checking that it
/// returns a function. `file` names it in messages (`hook.lua:3: ...`).
pub fn check(file: &str, source: &str) -> Result<(), HookError> {
    let base = std::path::Path::new(file)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| file.to_string());
    let lua = sandbox().map_err(|e| HookError::Runtime {
        file: file.into(),
        message: e.to_string(),
    })?;
    let chunk = lua
        .load(source)
        .set_name(format!("@{base}"))
        .into_function()
        .map_err(|e| HookError::Compile {
            file: file.into(),
            message: lua_message(&e),
        })?;
    arm_budget(&lua).map_err(|e| HookError::Runtime {
        file: file.into(),
        message: e.to_string(),
    })?;
    let v: mlua::Value = chunk.call(()).map_err(|e| HookError::Runtime {
        file: file.into(),
        message: lua_message(&e),
    })?;
    match v {
        mlua::Value::Function(_) => Ok(()),
        other => Err(HookError::NotAFunction {
            file: file.into(),
            got: other.type_name().to_string(),
        }),
    }
}

/// One hook as the catalog holds it, attached to a sync or to a table.
#[derive(Clone, Debug)]
pub struct Code {
    /// Its name.
    pub name: String,
    /// Its hook point.
    pub whenrun: String,
    /// The file it came from (named in errors).
    pub file: String,
    /// The Lua source.
    pub src: String,
    /// `schema.table` when attached to a table; None: the whole sync.
    pub table: Option<String>,
    /// Order among the hooks of one point (lower first).
    pub priority: i32,
}

/// What a hook answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A string (`"skip"`, `"retry"`, a database name).
    Text(String),
    /// A table with a `row` field (a merged row, column -> value).
    Row(serde_json::Value),
}

/// Fills a hook's `ctx` with what its point knows.
pub type Fill<'a> = dyn Fn(&Lua, &mlua::Table) -> mlua::Result<()> + 'a;

struct Loaded {
    code: Code,
    lua: Lua,
    func: mlua::Function,
}

/// The hooks of one sync, compiled for one run (a VM each: hooks share
/// nothing, and a VM never outlives its run).
pub struct Runner {
    loaded: Vec<Loaded>,
    sync: String,
    run_id: i64,
    dbs: Vec<(String, crate::domain::Role)>,
    /// Mails hooks asked for (`ctx.email`), sent by the daemon's mailer.
    pub emails: Vec<(String, String)>,
}

impl Runner {
    /// No hooks.
    pub fn empty() -> Runner {
        Runner {
            loaded: Vec::new(),
            sync: String::new(),
            run_id: 0,
            dbs: Vec::new(),
            emails: Vec::new(),
        }
    }

    /// Compiles the active hooks of a sync; `dbs` are its databases with
    /// their roles.
    pub fn load(
        codes: &[Code],
        sync: &str,
        run_id: i64,
        dbs: Vec<(String, crate::domain::Role)>,
    ) -> Result<Runner, HookError> {
        let mut sorted: Vec<&Code> = codes.iter().collect();
        // Table hooks before sync hooks, then priority, then name.
        sorted.sort_by(|a, b| (a.table.is_none(), a.priority, &a.name).cmp(&(b.table.is_none(), b.priority, &b.name)));
        let mut loaded = Vec::new();
        for c in sorted {
            let base = base_name(&c.file);
            let err = |e: mlua::Error| HookError::Runtime {
                file: c.file.clone(),
                message: lua_message(&e),
            };
            let lua = sandbox().map_err(err)?;
            let chunk = lua
                .load(c.src.as_str())
                .set_name(format!("@{base}"))
                .into_function()
                .map_err(|e| HookError::Compile {
                    file: c.file.clone(),
                    message: lua_message(&e),
                })?;
            arm_budget(&lua).map_err(err)?;
            let v: mlua::Value = chunk.call(()).map_err(err)?;
            let func = match v {
                mlua::Value::Function(f) => f,
                other => {
                    return Err(HookError::NotAFunction {
                        file: c.file.clone(),
                        got: other.type_name().to_string(),
                    })
                }
            };
            loaded.push(Loaded {
                code: c.clone(),
                lua,
                func,
            });
        }
        Ok(Runner {
            loaded,
            sync: sync.to_string(),
            run_id,
            dbs,
            emails: Vec::new(),
        })
    }

    /// Whether any hook listens at this point (for this table).
    pub fn has(&self, point: &str, table: Option<&str>) -> bool {
        self.loaded.iter().any(|l| applies(&l.code, point, table))
    }

    /// Calls the hooks of a point in order until one answers (not nil);
    /// returns the answer and `name (file)` of the hook that gave it.
    pub fn call(
        &mut self,
        point: &str,
        table: Option<&str>,
        fill: &Fill<'_>,
    ) -> Result<Option<(Answer, String)>, HookError> {
        let mut emails = Vec::new();
        let mut out = None;
        for l in self.loaded.iter().filter(|l| applies(&l.code, point, table)) {
            let err = |e: mlua::Error| HookError::Runtime {
                file: l.code.file.clone(),
                message: format!("{} hook \"{}\": {}", point, l.code.name, lua_message(&e)),
            };
            let queued: std::rc::Rc<std::cell::RefCell<Vec<(String, String)>>> = Default::default();
            let answer = (|| -> mlua::Result<mlua::Value> {
                let lua = &l.lua;
                let ctx = lua.create_table()?;
                ctx.set("hook", point)?;
                ctx.set("sync", self.sync.as_str())?;
                ctx.set("run_id", self.run_id)?;
                if let Some(t) = table {
                    ctx.set("table", t)?;
                }
                let dbs = lua.create_table()?;
                for (i, (n, r)) in self.dbs.iter().enumerate() {
                    let d = lua.create_table()?;
                    d.set("name", n.as_str())?;
                    d.set("role", r.as_str())?;
                    dbs.set(i + 1, d)?;
                }
                ctx.set("dbs", dbs)?;
                let who = format!("{} code {}", point, l.code.name);
                ctx.set(
                    "log",
                    lua.create_function(move |_, msg: String| {
                        tracing::info!("Message from {who}: {msg}");
                        Ok(())
                    })?,
                )?;
                let q = queued.clone();
                ctx.set(
                    "email",
                    lua.create_function(move |_, (subject, body): (String, String)| {
                        q.borrow_mut().push((subject, body));
                        Ok(())
                    })?,
                )?;
                fill(lua, &ctx)?;
                arm_budget(lua)?;
                let r = l.func.call::<mlua::Value>(ctx);
                lua.remove_hook();
                r
            })()
            .map_err(err)?;
            emails.extend(queued.borrow().iter().cloned());
            let who = format!("{} ({})", l.code.name, base_name(&l.code.file));
            match answer {
                mlua::Value::Nil => continue,
                mlua::Value::String(s) => {
                    out = Some((Answer::Text(s.to_str().map(|s| s.to_string()).unwrap_or_default()), who));
                }
                mlua::Value::Table(t) => {
                    let row: mlua::Value = t.get("row").map_err(err)?;
                    match from_lua(&row) {
                        Some(v @ serde_json::Value::Object(_)) => out = Some((Answer::Row(v), who)),
                        _ => {
                            return Err(HookError::Runtime {
                                file: l.code.file.clone(),
                                message: format!(
                                    "{point} hook \"{}\" returned a table without a row = {{...}} field",
                                    l.code.name
                                ),
                            })
                        }
                    }
                }
                other => {
                    return Err(HookError::Runtime {
                        file: l.code.file.clone(),
                        message: format!(
                            "{point} hook \"{}\" returned a {}; it returns nil, a string, or {{ row = {{...}} }}",
                            l.code.name,
                            other.type_name()
                        ),
                    })
                }
            }
            break;
        }
        for (s, b) in emails {
            tracing::info!("Mail from a hook: {s}");
            self.emails.push((s, b));
        }
        Ok(out)
    }
}

fn applies(c: &Code, point: &str, table: Option<&str>) -> bool {
    c.whenrun == point && (c.table.is_none() || c.table.as_deref() == table)
}

fn base_name(file: &str) -> String {
    std::path::Path::new(file)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| file.to_string())
}

/// A JSON value as a Lua value (objects and arrays become tables; numbers
/// that are whole stay integers).
pub fn to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<mlua::Value> {
    Ok(match v {
        serde_json::Value::Null => mlua::Value::Nil,
        serde_json::Value::Bool(b) => mlua::Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => mlua::Value::Integer(i),
            None => mlua::Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => mlua::Value::String(lua.create_string(s)?),
        serde_json::Value::Array(a) => {
            let t = lua.create_table()?;
            for (i, x) in a.iter().enumerate() {
                t.set(i + 1, to_lua(lua, x)?)?;
            }
            mlua::Value::Table(t)
        }
        serde_json::Value::Object(o) => {
            let t = lua.create_table()?;
            for (k, x) in o {
                t.set(k.as_str(), to_lua(lua, x)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}

/// A Lua value as JSON (tables with string keys become objects).
pub fn from_lua(v: &mlua::Value) -> Option<serde_json::Value> {
    Some(match v {
        mlua::Value::Nil => serde_json::Value::Null,
        mlua::Value::Boolean(b) => serde_json::Value::Bool(*b),
        mlua::Value::Integer(i) => serde_json::Value::from(*i),
        mlua::Value::Number(n) => serde_json::Number::from_f64(*n).map(serde_json::Value::Number)?,
        mlua::Value::String(s) => serde_json::Value::String(s.to_str().ok()?.to_string()),
        mlua::Value::Table(t) => {
            let mut o = serde_json::Map::new();
            for pair in t.clone().pairs::<mlua::Value, mlua::Value>() {
                let (k, x) = pair.ok()?;
                let key = match k {
                    mlua::Value::String(s) => s.to_str().ok()?.to_string(),
                    mlua::Value::Integer(i) => i.to_string(),
                    _ => return None,
                };
                o.insert(key, from_lua(&x)?);
            }
            serde_json::Value::Object(o)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_hooks() {
        assert!(check("ok.lua", "return function(ctx) return nil end").is_ok());
        let e = check("bad.lua", "return function(ctx)\n  if then end\nend").unwrap_err();
        assert!(e.to_string().contains("bad.lua:2:"), "{e}");
        assert!(matches!(
            check("n.lua", "return 42"),
            Err(HookError::NotAFunction { .. })
        ));
        let e = check("os.lua", "os.execute('true') return function() end").unwrap_err();
        assert!(e.to_string().contains("os"), "{e}");
        let e = check("loop.lua", "while true do end").unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let e = check(
            "mem.lua",
            "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 64) .. i end",
        )
        .unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }

    #[test]
    fn runner_calls_hooks_in_order_and_converts_rows() {
        let code = |name: &str, table: Option<&str>, prio: i32, src: &str| Code {
            name: name.into(),
            whenrun: "conflict".into(),
            file: format!("{name}.lua"),
            src: src.into(),
            table: table.map(String::from),
            priority: prio,
        };
        let codes = vec![
            code("sync_wide", None, 0, "return function(ctx) return 'b' end"),
            code("table_nil", Some("public.t"), 5, "return function(ctx) return nil end"),
            code(
                "table_row",
                Some("public.t"),
                9,
                "return function(ctx) return { row = { n = ctx.key.id .. '!', k = 1.5 } } end",
            ),
        ];
        let mut r = Runner::load(&codes, "s", 7, vec![("a".into(), crate::domain::Role::Source)]).unwrap();
        assert!(r.has("conflict", Some("public.t")) && !r.has("exception", Some("public.t")));
        let fill = |lua: &Lua, ctx: &mlua::Table| -> mlua::Result<()> {
            let k = lua.create_table()?;
            k.set("id", "42")?;
            ctx.set("key", k)
        };
        // Table hooks first (a nil answer passes on), then the sync's.
        let (a, who) = r.call("conflict", Some("public.t"), &fill).unwrap().unwrap();
        assert_eq!(a, Answer::Row(serde_json::json!({"n": "42!", "k": 1.5})));
        assert_eq!(who, "table_row (table_row.lua)");
        let (a, _) = r.call("conflict", Some("public.u"), &fill).unwrap().unwrap();
        assert_eq!(a, Answer::Text("b".into()));
        let bad = vec![code("bad", None, 0, "return function(ctx) return 42 end")];
        let mut r = Runner::load(&bad, "s", 1, vec![]).unwrap();
        let e = r.call("conflict", None, &fill).unwrap_err().to_string();
        assert!(e.contains("bad.lua") && e.contains("returned a integer"), "{e}");
    }
}
