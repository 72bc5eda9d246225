//! Fennel files that are plain data (the server's `config.fnl`): compiled
//! like a pipeline, evaluated in a fresh execute VM under a deadline, and
//! handed back as JSON. What the data means is the caller's business.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::LuaSerdeExt;

use super::compile::{compile, CompileOptions};
use super::execute::{self, ChunkInfo};
use super::limits;
use crate::diagnostic::{Diagnostic, Location};
use crate::source::SourceFile;

/// How long a data file may take to compile, and then to evaluate.
const EVALUATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Memory for each of the two VMs; a data file is small.
const MEMORY_LIMIT: usize = 256 * 1024 * 1024;

/// Evaluates a Fennel file that describes data (a table of strings,
/// numbers, booleans and tables) in the restricted VM and returns it as JSON.
pub fn evaluate_data(source: &SourceFile) -> Result<serde_json::Value, Diagnostic> {
    let vm_error = |e: mlua::Error| Diagnostic::error(format!("internal error preparing the Lua VM: {e}"));
    let lua = execute::new_execute_vm(MEMORY_LIMIT).map_err(vm_error)?;
    let globals = execute::global_names(&lua).map_err(vm_error)?;
    let options = CompileOptions {
        allowed_globals: &globals,
        files: None,
        memory_limit: MEMORY_LIMIT,
        deadline: Instant::now() + EVALUATE_TIMEOUT,
    };
    let compiled = compile(source, &options)?;
    let chunk =
        ChunkInfo { name: source.display_name().to_string(), positions: Arc::new(compiled.positions) };
    limits::arm(&lua, Instant::now() + EVALUATE_TIMEOUT).map_err(vm_error)?;
    let value = chunk.load(&lua, &compiled.lua).eval::<mlua::Value>();
    limits::disarm();
    let value = value.map_err(|e| {
        let failure = chunk.explain(&e);
        Diagnostic::error(failure.message).at(Location::new(&chunk.name, failure.line.unwrap_or(1), 1))
    })?;
    if !matches!(value, mlua::Value::Table(_)) {
        return Err(Diagnostic::error(format!(
            "{} must evaluate to a table such as {{:listen \"127.0.0.1:3000\"}}, got {}",
            chunk.name,
            value.type_name()
        ))
        .at(Location::new(&chunk.name, 1, 1)));
    }
    lua.from_value(value).map_err(|e| {
        Diagnostic::error(format!("{} may only hold strings, numbers, booleans and tables: {e}", chunk.name))
            .at(Location::new(&chunk.name, 1, 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> SourceFile {
        SourceFile::new("ci.fnl", text)
    }

    #[test]
    fn data_files_evaluate_to_json() {
        let value = evaluate_data(&src("{:listen \"127.0.0.1:9\" :ci {:max-concurrent-runs 3} :list [1 2]}"))
            .unwrap();
        assert_eq!(value["listen"], "127.0.0.1:9");
        assert_eq!(value["ci"]["max-concurrent-runs"], 3);
        assert_eq!(value["list"], serde_json::json!([1, 2]));
    }

    #[test]
    fn broken_data_files_name_their_line() {
        let err = evaluate_data(&src("{:listen\n  \"x\"\n  :ci {:a }")).unwrap_err();
        assert!(err.location.is_some());
        let err = evaluate_data(&src("{:a 1}\n(error \"nope\")")).unwrap_err();
        assert_eq!(err.location.unwrap().line, 2, "{}", err.message);
        let err = evaluate_data(&src("42")).unwrap_err();
        assert!(err.message.contains("must evaluate to a table"), "{}", err.message);
    }
}
