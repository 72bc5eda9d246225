//! The `quire.ci` module a pipeline `require`s, and what its `ci.job`
//! records while the top level is evaluated: each call's id, inputs,
//! run-fn and position, or a diagnostic when its arguments have the wrong
//! types. Judging the declarations as a graph is `pipeline::graph`'s job.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Function, Lua, Table, Value};

use crate::diagnostic::{Diagnostic, Location};
use crate::lua::execute::ChunkInfo;

/// The one module pipeline code may `require`.
pub const CI_MODULE: &str = "quire.ci";

/// A `ci.job` call as it was made, before validation.
#[derive(Debug, Clone)]
pub struct Declaration {
    pub id: String,
    pub inputs: Vec<String>,
    pub run_fn: Function,
    pub location: Location,
}

/// What evaluating the pipeline's top level recorded.
#[derive(Debug, Default)]
pub struct Declarations {
    pub jobs: Vec<Declaration>,
    /// `ci.job` calls with arguments of the wrong type.
    pub errors: Vec<Diagnostic>,
}

/// Installs `require` with the `quire.ci` module, whose `job` records
/// declarations into the returned cell.
pub fn install_ci_module(lua: &Lua, chunk: ChunkInfo) -> mlua::Result<Rc<RefCell<Declarations>>> {
    let declarations = Rc::new(RefCell::new(Declarations::default()));
    let recorded = declarations.clone();
    let job = lua.create_function(move |lua, (id, inputs, run_fn): (Value, Value, Value)| {
        let location = chunk.caller_location(lua, 1, "job");
        let mut recorded = recorded.borrow_mut();
        match declaration(id, inputs, run_fn, location) {
            Ok(decl) => recorded.jobs.push(decl),
            Err(diagnostic) => recorded.errors.push(diagnostic),
        }
        Ok(())
    })?;
    let module = lua.create_table()?;
    module.set("job", job)?;
    let module = lua.create_registry_value(module)?;
    // Fennel compiles `(include :mod)` into `package.preload.mod` plus a
    // `require`: modules of the pipeline's own, already compiled in. No
    // loader reaches the file system.
    let package = lua.create_table()?;
    package.set("preload", lua.create_table()?)?;
    package.set("loaded", lua.create_table()?)?;
    lua.globals().set("package", package)?;
    let require = lua.create_function(move |lua, name: String| {
        if name == CI_MODULE {
            return lua.registry_value::<Value>(&module);
        }
        let package: Table = lua.globals().get("package")?;
        let loaded: Table = package.get("loaded")?;
        if let Value::Table(done) = loaded.get::<Value>(name.as_str())? {
            return Ok(Value::Table(done));
        }
        let preload: Table = package.get("preload")?;
        match preload.get::<Value>(name.as_str())? {
            Value::Function(load) => {
                let value = match load.call::<Value>(name.as_str())? {
                    Value::Nil => Value::Boolean(true),
                    value => value,
                };
                loaded.set(name.as_str(), value.clone())?;
                Ok(value)
            }
            _ => Err(mlua::Error::runtime(format!(
                "module '{name}' is not available: pipelines can only require :{CI_MODULE} \
                 and modules they include from .quire/"
            ))),
        }
    })?;
    lua.globals().set("require", require)?;
    Ok(declarations)
}

fn declaration(
    id: Value,
    inputs: Value,
    run_fn: Value,
    location: Location,
) -> Result<Declaration, Diagnostic> {
    let id = match id {
        Value::String(s) => s.to_string_lossy(),
        other => {
            return Err(Diagnostic::error(format!(
                "ci.job: the job id must be a string or keyword, got {}",
                other.type_name()
            ))
            .at(location))
        }
    };
    let inputs = match inputs {
        Value::Table(t) => {
            let mut names = Vec::new();
            for value in t.sequence_values::<Value>() {
                match value {
                    Ok(Value::String(s)) => names.push(s.to_string_lossy()),
                    Ok(other) => {
                        return Err(Diagnostic::error(format!(
                            "job `{id}`: inputs must be names (strings or keywords), got a {}",
                            other.type_name()
                        ))
                        .at(location))
                    }
                    Err(e) => {
                        return Err(Diagnostic::error(format!("job `{id}`: reading inputs: {e}")).at(location))
                    }
                }
            }
            names
        }
        other => {
            return Err(Diagnostic::error(format!(
                "job `{id}`: inputs must be a sequence such as [:quire/push], got {}",
                other.type_name()
            ))
            .at(location))
        }
    };
    let run_fn = match run_fn {
        Value::Function(f) => f,
        other => {
            return Err(Diagnostic::error(format!(
                "job `{id}`: the third argument must be the run function, got {}",
                other.type_name()
            ))
            .at(location))
        }
    };
    Ok(Declaration { id, inputs, run_fn, location })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lua::execute::new_execute_vm;

    fn eval(code: &str) -> mlua::Result<Value> {
        let lua = new_execute_vm(64 * 1024 * 1024).unwrap();
        let chunk = ChunkInfo { name: "ci.fnl".into(), positions: std::sync::Arc::default() };
        install_ci_module(&lua, chunk).unwrap();
        lua.load(code).eval()
    }

    #[test]
    fn require_only_knows_quire_ci() {
        assert!(matches!(eval("return require('quire.ci').job").unwrap(), Value::Function(_)));
        let err = eval("return require('os')").unwrap_err().to_string();
        assert!(err.contains("pipelines can only require :quire.ci"), "{err}");
        assert!(eval("return require('fennel')").is_err());
    }
}
