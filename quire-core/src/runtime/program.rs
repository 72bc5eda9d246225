//! What a command is, independent of how it is run: a shell script or an
//! argv, as `sh` was given it. `sh` builds one from Lua values, `sandbox`
//! turns one into a process to spawn, and events and logs show it.

use std::ffi::OsString;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A string, run with `/bin/sh -c`.
    Shell(String),
    /// An argv, run directly. Never empty.
    Argv(Vec<String>),
}

impl Program {
    /// The command as events and logs show it (argv joined with spaces).
    pub fn display(&self) -> String {
        match self {
            Program::Shell(script) => script.clone(),
            Program::Argv(argv) => argv.join(" "),
        }
    }

    /// The argv to execute: the shell with its script, or the argv itself.
    pub fn argv(&self) -> Vec<OsString> {
        match self {
            Program::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script.into()],
            Program::Argv(argv) => argv.iter().map(OsString::from).collect(),
        }
    }

    /// The program that is executed, for messages such as "not found".
    pub fn name(&self) -> &str {
        match self {
            Program::Argv(argv) => argv[0].as_str(),
            Program::Shell(_) => "/bin/sh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_scripts_run_under_sh_and_argvs_as_given() {
        let shell = Program::Shell("echo $X".into());
        assert_eq!(shell.argv(), ["/bin/sh", "-c", "echo $X"].map(OsString::from));
        assert_eq!((shell.name(), shell.display().as_str()), ("/bin/sh", "echo $X"));
        let argv = Program::Argv(vec!["echo".into(), "a b".into()]);
        assert_eq!(argv.argv(), ["echo", "a b"].map(OsString::from));
        assert_eq!((argv.name(), argv.display().as_str()), ("echo", "echo a b"));
    }
}
