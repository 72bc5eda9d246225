//! The execute VM: the restricted Lua state that evaluates compiled Fennel
//! and later calls a pipeline's run-fns. It owns what that code can reach
//! (SPEC §3.3: no `io`, no `os` beyond the clock, no `debug`, no bytecode,
//! no files), the deadline hook that stops runaway Lua, and explaining a
//! Lua error in terms of the `.fnl` file. The `quire.ci` module and what
//! `ci.job` records belong to `pipeline::declare`.

use std::sync::Arc;

use mlua::{Chunk, Function, Lua, LuaOptions, StdLib, Table, Value};

use super::compile::PositionMap;
use super::limits;
use crate::diagnostic::Location;

/// The name Lua knows the pipeline's chunk by. Lua truncates long chunk
/// names in messages, so the file's real path is substituted afterwards.
pub const LUA_CHUNK: &str = "[pipeline]";

/// Where positions in this VM's chunk map to in the `.fnl` file.
#[derive(Clone)]
pub struct ChunkInfo {
    /// The file's display name.
    pub name: String,
    pub positions: Arc<PositionMap>,
}

impl ChunkInfo {
    /// The `.fnl` location of the code running `level` frames up the stack.
    pub fn caller_location(&self, lua: &Lua, level: usize, head: &str) -> Location {
        let line = lua
            .inspect_stack(level)
            .map(|frame| frame.curr_line())
            .filter(|&l| l > 0)
            .and_then(|l| self.positions.fennel_line(l as u32))
            .unwrap_or(1);
        Location::new(&self.name, line, self.positions.call_column(line, head))
    }

    /// Compiled Lua of this chunk, ready to run under the name errors are
    /// remapped from.
    pub fn load<'a>(&self, lua: &'a Lua, compiled: &'a str) -> Chunk<'a> {
        lua.load(compiled).set_name(format!("={LUA_CHUNK}"))
    }
}

/// A Lua error explained in terms of the `.fnl` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuaFailure {
    /// The error's own message, without position prefix or traceback.
    pub message: String,
    /// The `.fnl` line the error was raised at (or, for an error raised by
    /// Rust code such as `sh`, the line that called it).
    pub line: Option<u32>,
}

impl ChunkInfo {
    pub fn explain(&self, error: &mlua::Error) -> LuaFailure {
        let full = self.positions.remap_message(LUA_CHUNK, &self.name, &error.to_string());
        let line = first_line_reference(&self.name, &full);
        let mut message = innermost_message(error);
        message = self.positions.remap_message(LUA_CHUNK, &self.name, &message);
        if let Some(pos) = message.find("\nstack traceback:") {
            message.truncate(pos);
        }
        let prefix = format!("{}:", self.name);
        if let Some(rest) = message.strip_prefix(&prefix) {
            if let Some((digits, text)) = rest.split_once(": ") {
                if digits.bytes().all(|b| b.is_ascii_digit()) {
                    message = text.to_string();
                }
            }
        }
        LuaFailure { message: message.trim_end().to_string(), line }
    }
}

/// The message of the error that started it all, unwrapping mlua's
/// callback layers.
fn innermost_message(error: &mlua::Error) -> String {
    match error {
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        mlua::Error::CallbackError { cause, .. } => innermost_message(cause),
        mlua::Error::WithContext { cause, .. } => innermost_message(cause),
        mlua::Error::ExternalError(e) => e.to_string(),
        mlua::Error::CallbackDestructed => {
            "a job's runtime table can only be used while that job's run-fn is running".to_string()
        }
        mlua::Error::MemoryError(_) => "the Lua memory limit was reached (not enough memory)".to_string(),
        other => other.to_string(),
    }
}

/// The first `chunk:LINE:` in a message or traceback.
fn first_line_reference(chunk: &str, text: &str) -> Option<u32> {
    let needle = format!("{chunk}:");
    let mut rest = text;
    while let Some(pos) = rest.find(&needle) {
        let after = &rest[pos + needle.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(':') {
            return after[..digits].parse().ok();
        }
        rest = after;
    }
    None
}

/// Builds the execute VM. The returned VM has `require` limited to
/// `quire.ci`, and `print` writing to stderr so that stdout stays free for
/// the event stream.
pub fn new_execute_vm(memory_limit: usize) -> mlua::Result<Lua> {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    limits::install(&lua, memory_limit)?;
    let globals = lua.globals();

    let full_os: Table = globals.get("os")?;
    let os = lua.create_table()?;
    for name in ["time", "date", "clock"] {
        os.set(name, full_os.get::<Function>(name)?)?;
    }
    globals.set("os", os)?;

    for name in ["dofile", "loadfile"] {
        globals.raw_remove(name)?;
    }
    let string: Table = globals.get("string")?;
    string.raw_remove("dump")?;

    // `load` stays for text chunks only: bytecode can break the VM's safety.
    let raw_load: Function = globals.get("load")?;
    let text_load =
        lua.create_function(move |_, (chunk, name, _mode, env): (Value, Value, Value, Value)| {
            raw_load.call::<mlua::MultiValue>((chunk, name, "t", env))
        })?;
    globals.set("load", text_load)?;

    let print = lua.create_function(|_, args: mlua::Variadic<Value>| {
        let line: Vec<String> = args.iter().map(|v| v.to_string().unwrap_or_else(|_| "?".into())).collect();
        eprintln!("{}", line.join("\t"));
        Ok(())
    })?;
    globals.set("print", print)?;
    Ok(lua)
}

/// The names the execute VM defines as globals, for Fennel's compile-time
/// global check. `require` and `package` are added by the pipeline's
/// `quire.ci` module (`pipeline::declare`).
pub fn global_names(lua: &Lua) -> mlua::Result<Vec<String>> {
    let mut names = vec!["require".to_string(), "package".to_string()];
    for pair in lua.globals().pairs::<String, Value>() {
        names.push(pair?.0);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TEST_MEMORY: usize = 64 * 1024 * 1024;

    fn eval(code: &str) -> mlua::Result<Value> {
        new_execute_vm(TEST_MEMORY).unwrap().load(code).eval()
    }

    #[test]
    fn has_no_io_debug_or_files() {
        for name in ["io", "debug", "dofile", "loadfile", "package"] {
            assert!(matches!(eval(&format!("return {name}")).unwrap(), Value::Nil), "{name}");
        }
    }

    #[test]
    fn os_offers_only_the_clock() {
        assert!(matches!(eval("return os.execute").unwrap(), Value::Nil));
        assert!(matches!(eval("return os.getenv").unwrap(), Value::Nil));
        assert!(matches!(eval("return os.remove").unwrap(), Value::Nil));
        assert!(matches!(eval("return os.time()").unwrap(), Value::Integer(_)));
        assert!(matches!(eval("return os.clock()").unwrap(), Value::Number(_)));
        assert!(matches!(eval("return os.date('%Y')").unwrap(), Value::String(_)));
    }

    #[test]
    fn load_refuses_bytecode_but_takes_text() {
        assert!(matches!(eval("return load('return 1')()").unwrap(), Value::Integer(1)));
        let err = eval("return load('\\27Lua', 'x', 'b')").unwrap();
        assert!(matches!(err, Value::Nil), "bytecode must not load");
        assert!(matches!(eval("return string.dump").unwrap(), Value::Nil));
    }

    #[test]
    fn deadline_stops_endless_loops() {
        let lua = new_execute_vm(TEST_MEMORY).unwrap();
        limits::arm(&lua, std::time::Instant::now() + Duration::from_millis(50)).unwrap();
        let err = lua.load("while true do end").exec().unwrap_err();
        limits::disarm();
        assert!(limits::is_deadline(&err), "{err}");
    }

    #[test]
    fn the_vm_has_a_memory_limit() {
        let lua = new_execute_vm(16 * 1024 * 1024).unwrap();
        let err = lua.load("return string.rep('x', 64 * 1024 * 1024)").exec().unwrap_err();
        assert!(limits::is_out_of_memory(&err), "{err}");
    }
}
