//! The exit statuses of `quire-ci run`, shared by the run itself and the
//! shipper, which may end a server run on its own (the server stopped it,
//! or cannot be reached).

/// The pipeline was evaluated to an outcome (whatever it was), or the
/// server stopped the run.
pub const OUTCOME: u8 = 0;
/// quire-ci could not do its job: events or logs not writable, the
/// server refused the bootstrap or could not be reached.
pub const FAILED: u8 = 1;
/// Bad arguments: an unknown `--job`, a workspace that does not exist
/// or has no git checkout and no `--sha`/`--ref`.
pub const USAGE: u8 = 2;
