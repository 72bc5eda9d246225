//! The compile VM: Debian's Fennel, embedded at build time, turning Fennel
//! source into Lua plus the [`PositionMap`] that maps Lua positions back to
//! the `.fnl` file. It never runs the program (that is the execute VM's, in
//! `lua::execute`). Fennel needs Lua's `debug` library, so the compile VM is
//! built with mlua's unsafe constructor; macros still run in Fennel's
//! compiler sandbox.

use std::path::{Path, PathBuf};
use std::time::Instant;

use mlua::{Lua, LuaOptions, StdLib, Table};

use super::limits;
use crate::diagnostic::{Diagnostic, Location};
use crate::source::SourceFile;

/// Debian's fennel.lua, precompiled by build.rs.
const FENNEL_BYTECODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fennel.luac"));
const COMPILE_LUA: &str = include_str!("compile.lua");

/// A pipeline compiled to Lua, with its position maps.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub lua: String,
    pub positions: PositionMap,
}

/// Maps positions in the compiled Lua back to the Fennel source.
#[derive(Debug, Clone, Default)]
pub struct PositionMap {
    /// `fennel_lines[lua_line - 1]` is the Fennel line that produced that
    /// Lua line, or 0 when the compiler generated it without a source form.
    fennel_lines: Vec<u32>,
    /// Call forms `(head …)` in source order: line, 1-based column, head.
    calls: Vec<(u32, u32, String)>,
}

impl PositionMap {
    /// The Fennel line for a Lua line, falling back to the nearest mapped
    /// line above it (generated code belongs to the form before it).
    pub fn fennel_line(&self, lua_line: u32) -> Option<u32> {
        let upto = (lua_line as usize).min(self.fennel_lines.len());
        self.fennel_lines[..upto].iter().rev().copied().find(|&l| l > 0)
    }

    /// The column of the call on `line` whose head ends in `head_suffix`
    /// (e.g. `job` matches `ci.job` and `job`), else of the first call on
    /// that line, else 1.
    pub fn call_column(&self, line: u32, head_suffix: &str) -> u32 {
        let on_line = || self.calls.iter().filter(move |(l, _, _)| *l == line);
        on_line()
            .find(|(_, _, head)| head == head_suffix || head.ends_with(&format!(".{head_suffix}")))
            .or_else(|| on_line().next())
            .map_or(1, |(_, col, _)| *col)
    }

    /// Rewrites `chunk:LUALINE:` references in a Lua error message or
    /// traceback into `file:FENNELLINE:`.
    pub fn remap_message(&self, chunk: &str, file: &str, message: &str) -> String {
        let needle = format!("{chunk}:");
        let mut out = String::with_capacity(message.len());
        let mut rest = message;
        while let Some(pos) = rest.find(&needle) {
            let after = &rest[pos + needle.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            out.push_str(&rest[..pos]);
            out.push_str(file);
            out.push(':');
            let mapped = after[..digits]
                .parse::<u32>()
                .ok()
                .filter(|_| after[digits..].starts_with(':'))
                .and_then(|lua_line| self.fennel_line(lua_line));
            match mapped {
                Some(line) => out.push_str(&line.to_string()),
                None => out.push_str(&after[..digits]),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }
}

/// The files a compilation may read: `include`, `require` at compile time,
/// `import-macros` and Fennel's own error snippets all go through here.
#[derive(Debug, Clone)]
pub struct FileAccess {
    /// Nothing outside this directory (canonical) can be read, however a
    /// path or a symlink is spelled.
    pub root: PathBuf,
    /// Where modules are searched, e.g. `<workspace>/.quire`.
    pub modules: PathBuf,
}

/// How one compilation runs.
#[derive(Debug, Clone)]
pub struct CompileOptions<'a> {
    /// The names the execute VM defines; any other global is a compile
    /// error, so typos surface here with a position instead of as a nil
    /// call at run time.
    pub allowed_globals: &'a [String],
    /// `None`: the source may read no file at all.
    pub files: Option<FileAccess>,
    pub memory_limit: usize,
    /// Compiling, macros included, must be over by then.
    pub deadline: Instant,
}

/// Largest file a compilation reads.
pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// Compiles `source` to Lua.
pub fn compile(source: &SourceFile, options: &CompileOptions) -> Result<Compiled, Diagnostic> {
    Compiler::new(options.files.clone(), options.memory_limit).compile(
        source,
        options.allowed_globals,
        options.deadline,
    )
}

/// A compile VM with Fennel loaded, for one compilation. Loading Fennel
/// is most of what compiling a small pipeline costs, so a caller that
/// waits for its source (quire-ci, while the workspace downloads) makes
/// the compiler first. Preparing cannot fail in a way the source could
/// cause; should it fail anyway, the error is told by
/// [`Compiler::compile`], against the file it was meant for.
pub struct Compiler {
    prepared: Result<Prepared, (&'static str, mlua::Error)>,
}

struct Prepared {
    lua: Lua,
    fennel: Table,
    driver: mlua::Function,
    search_path: String,
    macro_path: String,
}

impl Compiler {
    /// A compile VM under `memory_limit`, reading only `files`.
    pub fn new(files: Option<FileAccess>, memory_limit: usize) -> Compiler {
        Compiler { prepared: Compiler::prepare(files, memory_limit) }
    }

    fn prepare(
        files: Option<FileAccess>,
        memory_limit: usize,
    ) -> Result<Prepared, (&'static str, mlua::Error)> {
        let search_path = files.as_ref().map_or_else(String::new, |files| {
            let dir = files.modules.display();
            format!("{dir}/?.fnl;{dir}/?/init.fnl")
        });
        let macro_path = files.as_ref().map_or_else(String::new, |files| {
            let dir = files.modules.display();
            format!("{dir}/?.fnl;{dir}/?/init-macros.fnl;{dir}/?/init.fnl")
        });
        let lua = compile_vm(files, memory_limit).map_err(|e| ("preparing the compile VM", e))?;
        let fennel: Table = lua
            .load(FENNEL_BYTECODE)
            .set_mode(mlua::ChunkMode::Binary)
            .set_name("@fennel.lua")
            .eval()
            .map_err(|e| ("loading Fennel", e))?;
        let driver = lua
            .load(COMPILE_LUA)
            .set_name("@quire/compile.lua")
            .into_function()
            .map_err(|e| ("loading the compile driver", e))?;
        Ok(Prepared { lua, fennel, driver, search_path, macro_path })
    }

    /// What the compile VM holds now, in bytes.
    pub fn memory_in_use(&self) -> usize {
        self.prepared.as_ref().map_or(0, |prepared| prepared.lua.used_memory())
    }

    /// Compiles `source` to Lua; any global but `allowed_globals` is an
    /// error, and so is still compiling (macros included) at `deadline`.
    /// One compilation per compiler: macros may leave state in its VM.
    /// Dropping it closes the VM, which takes a moment: a caller in a
    /// hurry drops it once the result is on its way.
    pub fn compile(
        &self,
        source: &SourceFile,
        allowed_globals: &[String],
        deadline: Instant,
    ) -> Result<Compiled, Diagnostic> {
        let Prepared { lua, fennel, driver, search_path, macro_path } =
            self.prepared.as_ref().map_err(|(doing, e)| internal(source, doing, e))?;
        let globals = lua
            .create_sequence_from(allowed_globals.iter().map(String::as_str))
            .map_err(|e| internal(source, "preparing globals", &e))?;
        limits::set(deadline);
        let watchdog = limits::Watchdog::start(lua, deadline)
            .map_err(|e| internal(source, "arming the deadline", &e))?;
        let result = driver.call::<(bool, String, Option<Vec<u32>>, Option<Vec<Table>>)>((
            fennel,
            source.text.as_str(),
            source.display_name(),
            globals,
            search_path.as_str(),
            macro_path.as_str(),
        ));
        drop(watchdog);
        limits::disarm();
        let result = match result {
            Ok(_) if Instant::now() >= deadline => Err(mlua::Error::runtime(limits::DEADLINE_MESSAGE)),
            other => other,
        };
        let (ok, lua_or_err, lines, calls) = result.map_err(|e| {
            if limits::is_deadline(&e) {
                Diagnostic::error(format!(
                    "compiling {} did not finish in time (a macro that never returns?)",
                    source.display_name()
                ))
                .at(crate::diagnostic::Location::new(source.display_name(), 1, 1))
            } else if limits::is_out_of_memory(&e) {
                Diagnostic::error(format!(
                    "compiling {} ran out of memory (the Lua memory limit)",
                    source.display_name()
                ))
                .at(crate::diagnostic::Location::new(source.display_name(), 1, 1))
            } else {
                internal(source, "compiling", &e)
            }
        })?;
        if !ok {
            return Err(fennel_error(source, &lua_or_err));
        }
        let calls = calls
            .unwrap_or_default()
            .into_iter()
            .map(|call| Ok((call.get(1)?, call.get(2)?, call.get(3)?)))
            .collect::<mlua::Result<Vec<_>>>()
            .map_err(|e| internal(source, "reading call positions", &e))?;
        Ok(Compiled {
            lua: lua_or_err,
            positions: PositionMap { fennel_lines: lines.unwrap_or_default(), calls },
        })
    }
}

/// The compile VM: Lua's safe libraries plus `debug` (which Fennel needs),
/// with everything that reaches the host taken away or confined: `io` is
/// only a read-only `open` limited to [`FileAccess::root`], `os` only the
/// clock, no `dofile`/`loadfile`, no C modules and no search path of the
/// host's.
fn compile_vm(files: Option<FileAccess>, memory_limit: usize) -> mlua::Result<Lua> {
    // SAFETY: the compile VM runs only Fennel's compiler over the source;
    // pipeline code runs there only as macros, in Fennel's macro sandbox,
    // and the host is out of its reach (below) even if a macro escapes.
    let lua = unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::DEBUG, LuaOptions::default()) };
    // The deadline is a `Watchdog` per compilation (see `limits`).
    lua.set_memory_limit(memory_limit)?;
    let globals = lua.globals();
    for name in ["dofile", "loadfile"] {
        globals.raw_remove(name)?;
    }
    // Should a macro escape Fennel's sandbox, it still finds no bytecode to
    // load or make (Fennel itself loads only text).
    let string: Table = globals.get("string")?;
    string.raw_remove("dump")?;
    let raw_load: mlua::Function = globals.get("load")?;
    globals.set(
        "load",
        lua.create_function(
            move |_, (chunk, name, _mode, env): (mlua::Value, mlua::Value, mlua::Value, mlua::Value)| {
                raw_load.call::<mlua::MultiValue>((chunk, name, "t", env))
            },
        )?,
    )?;
    let full_os: Table = globals.get("os")?;
    let os = lua.create_table()?;
    for name in ["time", "date", "clock"] {
        os.set(name, full_os.get::<mlua::Function>(name)?)?;
    }
    globals.set("os", os)?;

    let package: Table = globals.get("package")?;
    package.set("path", "")?;
    package.set("cpath", "")?;
    package.raw_remove("loadlib")?;
    let searchers: Table = package.get("searchers")?;
    let preload: mlua::Function = searchers.get(1)?;
    package.set("searchers", lua.create_sequence_from([preload])?)?;

    let io = lua.create_table()?;
    let root = files.map(|f| f.root);
    io.set(
        "open",
        lua.create_function(move |lua, (path, mode): (String, Option<String>)| {
            if mode.as_deref().is_some_and(|m| !m.starts_with('r')) {
                return Ok((
                    mlua::Value::Nil,
                    Some(format!("{path}: files are read-only while compiling")),
                    true,
                ));
            }
            // The third value asks compile.lua to stop the compilation
            // (the file is there but out of bounds); without it a search
            // goes on to the next place.
            match read_confined(root.as_deref(), &path) {
                Ok(text) => Ok((mlua::Value::Table(file_handle(lua, text)?), None, false)),
                Err(Unreadable::Missing(message)) => Ok((mlua::Value::Nil, Some(message), false)),
                Err(Unreadable::Refused(message)) => Ok((mlua::Value::Nil, Some(message), true)),
            }
        })?,
    )?;
    let stderr = lua.create_table()?;
    stderr.set(
        "write",
        lua.create_function(|_, (_this, parts): (mlua::Value, mlua::Variadic<String>)| {
            eprint!("{}", parts.concat());
            Ok(())
        })?,
    )?;
    io.set("stderr", stderr)?;
    globals.set("quire_open", io.get::<mlua::Function>("open")?)?;
    globals.set("io", io)?;
    Ok(lua)
}

/// Why a compilation could not read a file. Messages never contain the
/// file's content.
enum Unreadable {
    Missing(String),
    Refused(String),
}

/// A file's text, if it lies inside `root` once every symlink is resolved.
fn read_confined(root: Option<&Path>, path: &str) -> Result<String, Unreadable> {
    let Some(root) = root else {
        return Err(Unreadable::Refused(format!("cannot read {path}: this file may not read other files")));
    };
    let joined = root.join(path);
    let shown = joined.strip_prefix(root).map_or_else(|_| path.to_string(), |p| p.display().to_string());
    let Ok(resolved) = joined.canonicalize() else {
        return Err(Unreadable::Missing(format!("{shown}: no such file")));
    };
    if !resolved.starts_with(root) {
        return Err(Unreadable::Refused(format!("refused {shown}: outside the workspace")));
    }
    let refused = |e: std::io::Error| Unreadable::Refused(format!("cannot read {path}: {e}"));
    let file = std::fs::File::open(&resolved).map_err(refused)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SOURCE_BYTES + 1), &mut text)
        .map_err(refused)?;
    if text.len() as u64 > MAX_SOURCE_BYTES {
        return Err(Unreadable::Refused(format!(
            "cannot read {path}: it is larger than {MAX_SOURCE_BYTES} bytes"
        )));
    }
    Ok(text)
}

/// What Fennel needs of a Lua file handle: `read` (everything, or a line),
/// `lines` and `close`.
fn file_handle(lua: &Lua, text: String) -> mlua::Result<Table> {
    let handle = lua.create_table()?;
    let rest = std::rc::Rc::new(std::cell::RefCell::new(text));
    let for_read = rest.clone();
    handle.set(
        "read",
        lua.create_function(move |_, (_this, format): (mlua::Value, Option<String>)| {
            let mut rest = for_read.borrow_mut();
            if rest.is_empty() {
                return Ok(None);
            }
            let everything = format.as_deref().is_some_and(|f| f.trim_start_matches('*').starts_with('a'));
            if everything {
                return Ok(Some(std::mem::take(&mut *rest)));
            }
            let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            let line: String = rest.drain(..line_end).collect();
            Ok(Some(line.trim_end_matches('\n').to_string()))
        })?,
    )?;
    let for_lines = rest;
    handle.set(
        "lines",
        lua.create_function(move |lua, _this: mlua::Value| {
            let lines: Vec<String> = for_lines.borrow().lines().map(str::to_string).collect();
            let mut iter = lines.into_iter();
            lua.create_function_mut(move |_, ()| Ok(iter.next()))
        })?,
    )?;
    handle.set("close", lua.create_function(|_, _this: mlua::Value| Ok(true))?)?;
    Ok(handle)
}

/// Turns Fennel's `file:line:col: Parse error: msg` text into a diagnostic.
/// Fennel's columns are 0-based; ours are 1-based like editors expect.
fn fennel_error(source: &SourceFile, raw: &str) -> Diagnostic {
    let mut lines = raw.lines();
    let first = lines.next().unwrap_or_default();
    let help: Vec<&str> = lines.filter_map(|l| l.strip_prefix("* ")).collect();
    let prefix = format!("{}:", source.display_name());
    let parsed = first.strip_prefix(&prefix).and_then(|rest| {
        let mut parts = rest.splitn(3, ':');
        let line = parts.next()?.parse::<u32>().ok()?;
        let col = parts.next()?.parse::<u32>().ok();
        let message = parts.next()?.trim();
        Some((line, col, message))
    });
    let mut diagnostic = match parsed {
        Some((line, col, message)) => Diagnostic::error(message.to_string()).at(Location::new(
            source.display_name(),
            line,
            col.map_or(1, |c| c + 1),
        )),
        None => Diagnostic::error(first.to_string()).at(Location::new(source.display_name(), 1, 1)),
    };
    if !help.is_empty() {
        diagnostic = diagnostic.with_help(help.join("\n"));
    }
    diagnostic
}

fn internal(source: &SourceFile, doing: &str, error: &mlua::Error) -> Diagnostic {
    Diagnostic::error(format!("internal error while {doing} {}: {error}", source.display_name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> SourceFile {
        SourceFile::new("ci.fnl", text)
    }

    fn globals() -> Vec<String> {
        ["require", "error"].map(String::from).to_vec()
    }

    fn options(globals: &[String]) -> CompileOptions<'_> {
        CompileOptions {
            allowed_globals: globals,
            files: None,
            memory_limit: 256 * 1024 * 1024,
            deadline: Instant::now() + std::time::Duration::from_secs(10),
        }
    }

    #[test]
    fn compiles_and_maps_lines() {
        let compiled = compile(
            &src("(local ci (require :quire.ci))\n\n(ci.job :a [:quire/push]\n  (fn [] (error \"x\")))\n"),
            &options(&globals()),
        )
        .unwrap();
        assert!(compiled.lua.contains("ci.job(\"a\""), "{}", compiled.lua);
        let lua_line = compiled.lua.lines().position(|l| l.contains("ci.job(")).unwrap() as u32 + 1;
        assert_eq!(compiled.positions.fennel_line(lua_line), Some(3));
        assert_eq!(compiled.positions.call_column(3, "job"), 1);
    }

    #[test]
    fn syntax_error_keeps_fennels_line() {
        let err = compile(&src("(local x 1)\n(let [a] a)\n"), &options(&globals())).unwrap_err();
        let loc = err.location.unwrap();
        assert_eq!((loc.line, loc.column), (2, 6));
        assert!(err.message.contains("expected even number"), "{}", err.message);
    }

    #[test]
    fn unknown_global_is_a_compile_error() {
        let err = compile(&src("(local x 1)\n(undefined-thing x)\n"), &options(&globals())).unwrap_err();
        assert!(err.message.contains("unknown identifier"), "{}", err.message);
        assert_eq!(err.location.unwrap().line, 2);
    }

    #[test]
    fn remaps_lua_lines_in_messages() {
        let map = PositionMap { fennel_lines: vec![1, 0, 7], calls: vec![] };
        assert_eq!(map.remap_message("[p]", "ci.fnl", "[p]:3: boom"), "ci.fnl:7: boom");
        assert_eq!(
            map.remap_message("[p]", "a/ci.fnl", "[p]:2: x\n [p]:1: in"),
            "a/ci.fnl:1: x\n a/ci.fnl:1: in"
        );
        assert_eq!(map.remap_message("[p]", "ci.fnl", "other:3: x"), "other:3: x");
    }
}
