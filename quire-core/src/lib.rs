//! Quire's shared library: everything both `quire-ci` (the producer of runs)
//! and `quire` (the server consuming them) must agree on. The wire schema of
//! the event stream, pipeline compilation and validation, the runtime and
//! CRI logs live here so that neither binary redefines them.

pub mod cri;
pub mod event;
pub mod fennel;
pub mod pipeline;
pub mod push;
pub mod runtime;
