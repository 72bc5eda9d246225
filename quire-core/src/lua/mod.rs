//! The two Lua VMs, side by side. `compile` runs Fennel's compiler (it
//! needs Lua's `debug` library, so it never sees pipeline code outside
//! Fennel's macro sandbox); `execute` is the restricted VM pipeline code
//! runs in (SPEC §3.3), with the mapping of Lua errors back to `.fnl`
//! lines; `limits` puts both under a memory limit and a deadline; `data`
//! evaluates Fennel files that are plain data.
//! Nothing here knows what a job is: `pipeline` builds on these.

pub mod compile;
pub mod data;
pub mod execute;
pub mod limits;
