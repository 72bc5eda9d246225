//! Finds Debian's `fennel.lua` and precompiles it to Lua bytecode in
//! `OUT_DIR`, which the crate embeds with `include_bytes!`. No copy of
//! Fennel lives in this repository.

use std::path::PathBuf;

const DEBIAN_PATH: &str = "/usr/share/lua/5.4/fennel.lua";

fn main() {
    println!("cargo:rerun-if-env-changed=QUIRE_FENNEL_LUA");
    let path = match std::env::var_os("QUIRE_FENNEL_LUA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(DEBIAN_PATH),
    };
    if !path.is_file() {
        panic!(
            "\n\nquire-core embeds Fennel, but {} does not exist.\n\
             Install it with `scripts/setup` (Debian's `fennel` package), or point\n\
             QUIRE_FENNEL_LUA at a fennel.lua of version 1.5.x.\n",
            path.display()
        );
    }
    let path = path.canonicalize().expect("fennel.lua path can be canonicalized");
    println!("cargo:rerun-if-changed={}", path.display());
    let source = std::fs::read_to_string(&path).expect("fennel.lua is readable");
    // SAFETY: only compiles (never runs) a trusted file.
    let lua = unsafe { mlua::Lua::unsafe_new() };
    let function = lua
        .load(&source)
        .set_name("@fennel.lua")
        .into_function()
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fennel.luac");
    std::fs::write(&out, function.dump(false)).expect("OUT_DIR is writable");
}
