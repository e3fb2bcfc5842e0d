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
    }
}
