//! Quire's shared library: everything both `quire-ci` (the producer of runs)
//! and `quire` (the server consuming them) must agree on. The leaves are the
//! vocabulary (`id`, `source`, `diagnostic`, `clock`, `event`, `cri`,
//! `push`, `run_dir`, `output`); above them sit the Lua VMs (`lua`), pipelines
//! (`pipeline`), the fold from events to jobs (`jobs`) and the runtime
//! (`runtime`). See ARCHITECTURE.md for the map and its rules.

pub mod clock;
pub mod cri;
pub mod diagnostic;
pub mod event;
pub mod id;
pub mod jobs;
pub mod lua;
pub mod output;
pub mod pipeline;
pub mod push;
pub mod run_dir;
pub mod runtime;
pub mod source;
