//! Where commands run: directly, or inside bubblewrap (SPEC §8), and under
//! which resource limits. This module turns a `Program` into the
//! `std::process::Command` to spawn; supervising it is `process`'s job.
//!
//! Under bubblewrap the host file system is read-only, the workspace is the
//! only writable path besides a private `/tmp`, the paths in `hide` (the
//! server's data root) are replaced by empty directories, and the command
//! gets fresh PID, IPC, UTS, cgroup and (unless allowed) network
//! namespaces, a new session, and dies with quire-ci. Its environment is
//! built from an allowlist. When quire-ci runs as root, bubblewrap sets the
//! sandbox up as root and the command runs as `nobody` (through `setpriv`),
//! so that it holds no privileges and the process limit applies; otherwise
//! bubblewrap uses a user namespace.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::process::{Resource, Rlimit};

use super::program::Program;

/// The user sandboxed commands run as when quire-ci is root.
pub const UNPRIVILEGED_ID: u32 = 65534;

/// Host variables a sandboxed command may see (besides its `:env`).
const ALLOWED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TERM", "TZ"];

/// Per-command resource limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Processes of the command's user (RLIMIT_NPROC).
    pub processes: Option<u64>,
    /// Largest file a command may write, bytes (RLIMIT_FSIZE).
    pub file_size: Option<u64>,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_secs: Option<u64>,
    /// Address space, bytes (RLIMIT_AS).
    pub memory: Option<u64>,
}

impl Limits {
    fn rlimits(&self) -> Vec<(Resource, u64)> {
        [
            (Resource::Nproc, self.processes),
            (Resource::Fsize, self.file_size),
            (Resource::Cpu, self.cpu_secs),
            (Resource::As, self.memory),
        ]
        .into_iter()
        .filter_map(|(resource, limit)| Some((resource, limit?)))
        .collect()
    }

    /// What a command killed by `signal` ran into, if it was a limit.
    pub fn explain_signal(&self, signal: i32) -> Option<String> {
        match signal {
            25 => Some(match self.file_size {
                Some(bytes) => {
                    format!("the command tried to write a file larger than the limit of {bytes} bytes")
                }
                None => "the command exceeded the file size limit".to_string(),
            }),
            24 => Some(match self.cpu_secs {
                Some(secs) => format!("the command used more than its {secs} s of CPU time"),
                None => "the command exceeded its CPU time limit".to_string(),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// Commands run directly, as quire-ci's user, with its environment
    /// (minus quire's own variables).
    None,
    Bwrap(Bwrap),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bwrap {
    /// The bubblewrap executable.
    pub program: PathBuf,
    /// Share the host's network instead of an empty network namespace.
    pub network: bool,
    /// Paths that must not be visible inside (e.g. the data root).
    pub hide: Vec<PathBuf>,
    /// The user and group commands run as (outside the sandbox).
    pub run_as: Option<(u32, u32)>,
}

/// Finds `bwrap` on PATH.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("bwrap")).find(|p| p.is_file())
}

impl Bwrap {
    /// A bubblewrap sandbox with the defaults: no network; commands run as
    /// `nobody` when quire-ci is root.
    pub fn new(program: PathBuf, network: bool, hide: Vec<PathBuf>) -> Bwrap {
        let run_as = rustix::process::getuid().is_root().then_some((UNPRIVILEGED_ID, UNPRIVILEGED_ID));
        Bwrap { program, network, hide, run_as }
    }

    /// Gives the workspace to the user commands run as, so that they can
    /// write it.
    pub fn prepare_workspace(&self, workspace: &Path) -> std::io::Result<()> {
        let Some((uid, gid)) = self.run_as else { return Ok(()) };
        chown_tree(workspace, uid, gid)
    }

    fn arguments(&self, workspace: &Path, cwd: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            args.extend(items.iter().map(|i| i.as_ref().to_os_string()));
        };
        push(&[&"--ro-bind", &"/", &"/", &"--dev", &"/dev", &"--proc", &"/proc"]);
        // A private /tmp that any user may write, like the host's.
        push(&[&"--perms", &"1777", &"--tmpfs", &"/tmp"]);
        if let Some(closed) = self.closed_ancestor(workspace) {
            // The unprivileged user could not reach the workspace through
            // this directory; an empty one in its place can be traversed
            // (and what it hid was unreadable to that user anyway).
            push(&[&"--tmpfs", &closed]);
        }
        for hidden in &self.hide {
            if hidden.is_dir() {
                push(&[&"--tmpfs", hidden]);
            } else if hidden.exists() {
                push(&[&"--ro-bind", &"/dev/null", hidden]);
            }
        }
        // Last, so that it shows through hidden parents and /tmp.
        push(&[&"--bind", &workspace, &workspace, &"--chdir", &cwd]);
        push(&[&"--unshare-pid", &"--unshare-ipc", &"--unshare-uts", &"--unshare-cgroup-try"]);
        if !self.network {
            push(&[&"--unshare-net"]);
        }
        if self.run_as.is_none() {
            // Not root: bubblewrap needs a user namespace to do its work.
            push(&[&"--unshare-user"]);
        }
        push(&[&"--die-with-parent", &"--new-session", &"--"]);
        if let Some((uid, gid)) = self.run_as {
            // bubblewrap runs as root to set the sandbox up; the command
            // itself runs as the unprivileged user, without capabilities
            // and unable to gain any.
            push(&[
                &"setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                &"--clear-groups",
                &"--inh-caps=-all",
                &"--no-new-privs",
                &"--",
            ]);
        }
        args
    }

    /// The highest ancestor of the workspace that the unprivileged user
    /// cannot traverse, if commands run as one.
    fn closed_ancestor(&self, workspace: &Path) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.run_as?;
        let mut ancestors: Vec<&Path> = workspace.ancestors().skip(1).collect();
        ancestors.reverse();
        ancestors
            .into_iter()
            .skip(1)
            .find(|dir| std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o001 == 0).unwrap_or(false))
            .map(Path::to_path_buf)
    }
}

/// `name` looked up in `path` like a shell would, unless it has a slash.
fn resolve_program(name: &std::ffi::OsStr, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.as_encoded_bytes().contains(&b'/') {
        return None;
    }
    std::env::split_paths(path?).map(|dir| dir.join(name)).find(|candidate| {
        std::fs::metadata(candidate)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

impl Sandbox {
    /// One line for logs: which sandbox commands run in.
    pub fn describe(&self) -> String {
        match self {
            Sandbox::None => "commands run without a sandbox".to_string(),
            Sandbox::Bwrap(b) => format!(
                "commands run in bubblewrap ({}{})",
                if b.network { "with network" } else { "no network" },
                match b.run_as {
                    Some((uid, _)) => format!(", as uid {uid}"),
                    None => String::new(),
                }
            ),
        }
    }

    /// The command to spawn for `program`. `env` is the environment the
    /// command would have without a sandbox (already without quire's own
    /// variables); `extra_env` is the pipeline's `:env`.
    pub fn command(
        &self,
        program: &Program,
        workspace: &Path,
        cwd: &Path,
        env: &[(OsString, OsString)],
        extra_env: &[(String, String)],
        limits: &Limits,
    ) -> Command {
        let argv = program.argv();
        let mut command = match self {
            Sandbox::None => {
                // A program given by path lets the standard library use
                // posix_spawn (it falls back to fork when it must search a
                // PATH of our own), which keeps each command cheap.
                let path = extra_env
                    .iter()
                    .find(|(k, _)| k == "PATH")
                    .map(|(_, v)| OsString::from(v))
                    .or_else(|| env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()));
                let program =
                    resolve_program(&argv[0], path.as_deref()).unwrap_or_else(|| argv[0].clone().into());
                let mut c = Command::new(program);
                c.args(&argv[1..]).env_clear().envs(env.iter().cloned()).current_dir(cwd);
                c
            }
            Sandbox::Bwrap(bwrap) => {
                let mut c = Command::new(&bwrap.program);
                c.args(bwrap.arguments(workspace, cwd)).args(&argv).env_clear();
                c.envs(env.iter().filter(|(name, _)| ALLOWED_ENV.iter().any(|a| name == a)).cloned());
                c.env("HOME", "/tmp").env("TMPDIR", "/tmp").current_dir("/");
                c
            }
        };
        command.envs(extra_env.iter().cloned());
        let rlimits = limits.rlimits();
        if !rlimits.is_empty() {
            // SAFETY: setrlimit is a plain system call, safe after fork.
            unsafe {
                command.pre_exec(move || {
                    for (resource, limit) in &rlimits {
                        rustix::process::setrlimit(
                            *resource,
                            Rlimit { current: Some(*limit), maximum: Some(*limit) },
                        )?;
                    }
                    Ok(())
                });
            }
        }
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwrap_arguments_hide_paths_and_bind_the_workspace_last() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let bwrap = Bwrap {
            program: "/usr/bin/bwrap".into(),
            network: false,
            hide: vec![dir.path().to_path_buf()],
            run_as: None,
        };
        let args: Vec<String> =
            bwrap.arguments(&ws, &ws).iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let hide = args.iter().position(|a| a == &dir.path().display().to_string()).unwrap();
        let bind = args.iter().position(|a| a == "--bind").unwrap();
        assert!(hide < bind, "{args:?}");
        assert!(!args.contains(&"--share-net".to_string()));
        assert_eq!(args.last().unwrap(), "--");
    }

    #[test]
    fn programs_are_found_on_the_path() {
        let path = std::ffi::OsString::from("/nonexistent:/bin:/usr/bin");
        let found = resolve_program("sh".as_ref(), Some(&path)).unwrap();
        assert!(found.ends_with("sh") && found.is_absolute());
        assert_eq!(resolve_program("./x".as_ref(), Some(&path)), None);
        assert_eq!(resolve_program("no-such-program-quire".as_ref(), Some(&path)), None);
    }

    #[test]
    fn limit_signals_are_explained() {
        let limits = Limits { file_size: Some(1024), ..Limits::default() };
        assert!(limits.explain_signal(25).unwrap().contains("1024 bytes"));
        assert!(limits.explain_signal(24).is_some());
        assert_eq!(limits.explain_signal(9), None);
    }
}
