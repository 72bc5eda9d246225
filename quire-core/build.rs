//! Finds Debian's `fennel.lua` and hands its path to the crate, which embeds
//! it with `include_str!`. No copy of Fennel lives in this repository.

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
    println!("cargo:rustc-env=QUIRE_FENNEL_LUA_PATH={}", path.display());
}
