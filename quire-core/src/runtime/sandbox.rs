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
//!
//! Nothing a pipeline controls steers the sandbox's own set-up: `setpriv`
//! is a fixed absolute path, bubblewrap runs with a fixed environment, and
//! its arguments hold nothing of the pipeline but the workspace's path. A
//! job's commands, and their environment (`:env` included), reach the
//! helper inside the sandbox over its socket (`jail`), so no loader
//! variable reaches a program running as root and no `:env` value shows
//! in a process listing.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::process::Rlimit;

use super::limits::Limits;
use super::program::Program;

/// The user sandboxed commands run as when quire-ci is root.
pub const UNPRIVILEGED_ID: u32 = 65534;

/// Host variables a sandboxed command may see (besides its `:env`).
const ALLOWED_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "TERM", "TZ", CACHE_VARIABLE];

/// The variable naming the run's cache directory (writable, kept between
/// runs of a ref by the server).
pub const CACHE_VARIABLE: &str = "QUIRE_CACHE_DIR";

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
    /// The user and group commands run as (outside the sandbox), when
    /// quire-ci is root.
    pub run_as: Option<(u32, u32)>,
    /// Size of the private `/tmp`, bytes.
    pub tmp_size: u64,
    /// The cache directory, writable inside like the workspace.
    pub cache: Option<PathBuf>,
}

/// Where `setpriv` is looked for: the system's own directories, never the
/// `PATH` a pipeline gives its commands.
const SYSTEM_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/local/bin"];

/// The environment bubblewrap itself runs with.
const SETUP_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the helper (quire-ci itself) is inside a job's sandbox.
const HELPER_PATH: &str = "/tmp/.quire-ci";

/// The hidden subcommand that makes quire-ci the helper.
pub const HELPER_COMMAND: &str = "sandbox-helper";

/// A program of the system's own directories (`setpriv`), never one a
/// `PATH` chose.
pub fn find_system_program(name: &str) -> Option<PathBuf> {
    SYSTEM_DIRS.iter().map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

/// Finds `bwrap` on quire-ci's own `PATH`: the operator's, which a
/// pipeline's `:env` never reaches.
pub fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("bwrap")).find(|p| p.is_absolute() && p.is_file())
}

/// Who sandboxed commands run as when quire-ci is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// `nobody`, owning a workspace quire-ci made for the run (the
    /// server's): the workspace is handed to `nobody` before the run.
    Nobody,
    /// The owner of the workspace (a local checkout), which is never
    /// changed. If that is root, commands run as uid 0 without any
    /// capability.
    WorkspaceOwner,
}

impl Bwrap {
    /// A bubblewrap sandbox with the defaults: no network; commands run as
    /// `nobody` when quire-ci is root.
    pub fn new(
        program: PathBuf,
        network: bool,
        hide: Vec<PathBuf>,
        run_as: RunAs,
        workspace: &Path,
        cache: Option<&Path>,
        tmp_size: u64,
    ) -> std::io::Result<Bwrap> {
        use std::os::unix::fs::MetadataExt;
        let run_as = if rustix::process::getuid().is_root() {
            Some(match run_as {
                RunAs::Nobody => {
                    chown_tree(workspace, UNPRIVILEGED_ID, UNPRIVILEGED_ID)?;
                    (UNPRIVILEGED_ID, UNPRIVILEGED_ID)
                }
                RunAs::WorkspaceOwner => {
                    let meta = std::fs::metadata(workspace)?;
                    (meta.uid(), meta.gid())
                }
            })
        } else {
            None
        };
        // The cache must be writable by whoever the commands run as.
        if let (Some(cache), Some((uid, gid))) = (cache, run_as) {
            chown_tree(cache, uid, gid)?;
        }
        // A hidden path given through a symlink is hidden where it really is.
        let hide = hide.into_iter().map(|p| p.canonicalize().unwrap_or(p)).collect();
        let cache = cache.map(|c| c.canonicalize().unwrap_or_else(|_| c.to_path_buf()));
        Ok(Bwrap { program, network, hide, run_as, tmp_size, cache })
    }

    fn arguments(&self, workspace: &Path, helper: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            args.extend(items.iter().map(|i| i.as_ref().to_os_string()));
        };
        push(&[&"--ro-bind", &"/", &"/", &"--dev", &"/dev", &"--proc", &"/proc"]);
        // A private /tmp that any user may write, like the host's, of a
        // bounded size (it lives in memory).
        push(&[&"--size", &self.tmp_size.to_string(), &"--perms", &"1777", &"--tmpfs", &"/tmp"]);
        // The helper that starts the job's commands, at a path every user
        // can reach whatever the directories above quire-ci's binary allow.
        push(&[&"--ro-bind", &helper, &HELPER_PATH]);
        // The private /tmp is a cover too: a workspace under /tmp is bound
        // into it.
        let writable: Vec<&Path> = std::iter::once(workspace).chain(self.cache.as_deref()).collect();
        let mut covers: Vec<PathBuf> = vec![PathBuf::from("/tmp")];
        for path in &writable {
            if let Some(closed) = self.closed_ancestor(path) {
                // The unprivileged user could not reach the path through
                // this directory; an empty one in its place can be traversed
                // (and what it hid was unreadable to that user anyway).
                if !covers.contains(&closed) {
                    push(&[&"--perms", &"0755", &"--tmpfs", &closed]);
                    covers.push(closed);
                }
            }
        }
        for hidden in &self.hide {
            if hidden.is_dir() {
                push(&[&"--perms", &"0755", &"--tmpfs", hidden]);
                covers.push(hidden.clone());
            } else if hidden.exists() {
                push(&[&"--ro-bind", &"/dev/null", hidden]);
            }
        }
        // Directories between an empty cover and a writable path are made
        // in the cover; they must be traversable (bubblewrap would make
        // them private to root), so that a command can reach the path.
        let mut made: Vec<PathBuf> = Vec::new();
        for cover in &covers {
            for path in &writable {
                for dir in dirs_between(cover, path) {
                    if !made.contains(&dir) {
                        push(&[&"--perms", &"0755", &"--dir", &dir]);
                        made.push(dir);
                    }
                }
            }
        }
        // Last, so that they show through hidden parents and /tmp.
        if let Some(cache) = &self.cache {
            push(&[&"--bind", cache, cache]);
        }
        push(&[&"--bind", &workspace, &workspace, &"--chdir", &workspace]);
        push(&[&"--unshare-pid", &"--unshare-ipc", &"--unshare-uts", &"--unshare-cgroup-try"]);
        if !self.network {
            push(&[&"--unshare-net"]);
        }
        if self.run_as.is_none() {
            // Not root: bubblewrap needs a user namespace to do its work.
            push(&[&"--unshare-user"]);
        }
        push(&[&"--die-with-parent", &"--new-session", &"--clearenv"]);
        if self.run_as.is_some() {
            // As root, bubblewrap would hand the command every capability;
            // only what setpriv needs to drop the user is kept, and setpriv
            // drops that too.
            push(&[&"--cap-drop", &"ALL", &"--cap-add", &"CAP_SETUID", &"--cap-add", &"CAP_SETGID"]);
            push(&[&"--cap-add", &"CAP_SETPCAP"]);
        }
        args
    }

    /// The bubblewrap process holding one job's commands: the helper
    /// (`quire-ci sandbox-helper`) runs inside it, behind `setpriv` when
    /// quire-ci is root, so that it and every command it starts run as
    /// `run_as` without capabilities, with an empty bounding set, and
    /// unable to gain any. Nothing a pipeline controls is in its arguments
    /// or its environment: commands and their environment reach the helper
    /// over its stdin.
    pub fn command(&self, workspace: &Path) -> std::io::Result<Command> {
        let helper = std::env::current_exe()?;
        let mut command = Command::new(&self.program);
        command.args(self.arguments(workspace, &helper)).arg("--");
        if let Some((uid, gid)) = self.run_as {
            let setpriv = find_system_program("setpriv").ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "setpriv (util-linux) is not installed in /usr/bin or /bin",
                )
            })?;
            command.arg(setpriv).args([
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--inh-caps=-all".into(),
                "--bounding-set=-all".into(),
                "--no-new-privs".into(),
                "--".into(),
            ]);
        }
        command.args([HELPER_PATH, HELPER_COMMAND]).env_clear().env("PATH", SETUP_PATH).current_dir("/");
        Ok(command)
    }

    /// The highest ancestor of `path` that the unprivileged user cannot
    /// traverse, if commands run as one.
    fn closed_ancestor(&self, path: &Path) -> Option<PathBuf> {
        self.run_as?;
        closed_ancestor(path)
    }
}

/// The highest directory above `path` (below `/`) that others may not walk
/// through: an unprivileged user reaches `path` only if that directory is
/// covered with an empty one it may traverse (what it hid was closed to
/// that user anyway), with the way down made again ([`dirs_between`]).
/// Both bubblewraps use this: the commands' and the server's executor's.
pub fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    ancestors
        .into_iter()
        .skip(1)
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// The directories strictly between `cover` and `path`, outermost first
/// (none when `path` is not below `cover`): what bubblewrap must make,
/// traversable, for `path` to be reached inside an empty cover.
pub fn dirs_between(cover: &Path, path: &Path) -> Vec<PathBuf> {
    let Ok(below) = path.strip_prefix(cover) else { return Vec::new() };
    let mut dir = cover.to_path_buf();
    below
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .map(|part| {
            dir.push(part);
            dir.clone()
        })
        .collect()
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

/// Hands `path` and everything below it (links themselves, not what they
/// point to) to `uid`:`gid`.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
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
                "commands run in bubblewrap ({}{}; one sandbox per job)",
                if b.network { "with network" } else { "no network" },
                match b.run_as {
                    Some((uid, _)) => format!(", as uid {uid}"),
                    None => String::new(),
                }
            ),
        }
    }
}

/// The command for `program` run directly, without a sandbox. `env` is
/// quire-ci's environment without quire's own variables; `extra_env` is
/// the pipeline's `:env`.
pub fn direct_command(
    program: &Program,
    cwd: &Path,
    env: &[(OsString, OsString)],
    extra_env: &[(String, String)],
    limits: &Limits,
) -> Command {
    let colour = COLOUR_ENV.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let extra = extra_env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let merged = overlay(overlay(env.to_vec(), colour), extra);
    command_for(&program.argv(), cwd, &merged, limits)
}

/// `base` with each of `extra` set over it: a name in both keeps `extra`'s
/// value, in `extra`'s order after the rest.
fn overlay<K: PartialEq, V>(mut base: Vec<(K, V)>, extra: impl IntoIterator<Item = (K, V)>) -> Vec<(K, V)> {
    for (name, value) in extra {
        base.retain(|(k, _)| *k != name);
        base.push((name, value));
    }
    base
}

/// `argv` as a process with exactly `env`, in `cwd`, under `limits`. The
/// program is looked up on `env`'s `PATH` here: a program given by path
/// lets the standard library use posix_spawn (it falls back to fork when it
/// must search a PATH of our own), which keeps each command cheap.
pub fn command_for(argv: &[OsString], cwd: &Path, env: &[(OsString, OsString)], limits: &Limits) -> Command {
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_os_str());
    let resolved = resolve_program(&argv[0], path).unwrap_or_else(|| argv[0].clone().into());
    let mut command = Command::new(resolved);
    command.args(&argv[1..]).env_clear().envs(env.iter().cloned()).current_dir(cwd);
    apply_limits(&mut command, limits);
    command
}

/// What every command sees so that tools keep their colours in logs (the
/// web UI renders them); a pipeline's `:env` can still change them.
pub const COLOUR_ENV: [(&str, &str); 2] = [("TERM", "xterm-256color"), ("CLICOLOR_FORCE", "1")];

/// The whole environment of a sandboxed command: a few of the host's
/// variables, `HOME` and `TMPDIR` in its private `/tmp`, the colour
/// variables, and its `:env`.
pub fn sandboxed_env(env: &[(OsString, OsString)], extra_env: &[(String, String)]) -> Vec<(String, String)> {
    let allowed = env
        .iter()
        .filter(|(name, _)| ALLOWED_ENV.iter().any(|a| name == a))
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
    let fixed = [("HOME", "/tmp"), ("TMPDIR", "/tmp")].into_iter().chain(COLOUR_ENV);
    let base = overlay(allowed.collect(), fixed.map(|(k, v)| (k.to_string(), v.to_string())));
    overlay(base, extra_env.iter().cloned())
}

/// Sets `limits` on the process `command` will start.
fn apply_limits(command: &mut Command, limits: &Limits) {
    let rlimits = limits.rlimits();
    if rlimits.is_empty() {
        return;
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_way_down_to_a_bound_directory_is_listed_outermost_first() {
        use std::path::{Path, PathBuf};
        let dirs = super::dirs_between(Path::new("/tmp"), Path::new("/tmp/a/b/root"));
        assert_eq!(dirs, [PathBuf::from("/tmp/a"), PathBuf::from("/tmp/a/b")]);
        assert!(super::dirs_between(Path::new("/tmp"), Path::new("/var/root")).is_empty());
        assert!(super::dirs_between(Path::new("/r"), Path::new("/r/x")).is_empty());
    }

    use super::*;

    fn bwrap(run_as: Option<(u32, u32)>, hide: Vec<PathBuf>) -> Bwrap {
        Bwrap { program: "/usr/bin/bwrap".into(), network: false, hide, run_as, tmp_size: 1024, cache: None }
    }

    #[test]
    fn bwrap_arguments_hide_paths_and_bind_the_workspace_last() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let args: Vec<String> = bwrap(None, vec![dir.path().to_path_buf()])
            .arguments(&ws, Path::new("/usr/bin/quire-ci"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let hide = args.iter().position(|a| a == &dir.path().display().to_string()).unwrap();
        let bind = args.iter().position(|a| a == "--bind").unwrap();
        assert!(hide < bind, "{args:?}");
        assert!(!args.contains(&"--share-net".to_string()));
        assert!(args.windows(2).any(|w| w == ["--size", "1024"]), "{args:?}");
        assert!(args.contains(&"--clearenv".to_string()));
    }

    #[test]
    fn a_job_sandbox_runs_the_helper_behind_setpriv_with_nothing_of_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let command = bwrap(Some((65534, 65534)), vec![]).command(dir.path()).unwrap();
        let args: Vec<String> = command.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let setpriv = args.iter().position(|a| a.ends_with("/setpriv")).expect("setpriv");
        assert!(args[setpriv].starts_with('/'), "setpriv by absolute path: {args:?}");
        assert!(args[setpriv..].contains(&"--bounding-set=-all".to_string()));
        assert!(args.windows(2).any(|w| w == ["--cap-drop", "ALL"]));
        assert_eq!(args[args.len() - 2..], [HELPER_PATH, HELPER_COMMAND]);
        let vars: Vec<_> =
            command.get_envs().filter(|(_, v)| v.is_some()).map(|(k, _)| k.to_owned()).collect();
        assert_eq!(vars, ["PATH"], "bubblewrap's own environment is fixed");
    }

    #[test]
    fn a_sandboxed_environment_is_a_few_host_variables_and_the_pipelines() {
        let host = [(OsString::from("PATH"), OsString::from("/usr/bin")), ("SECRET_HOST".into(), "x".into())];
        let env = sandboxed_env(&host, &[("PATH".into(), "/opt/bin".into()), ("A".into(), "1".into())]);
        assert_eq!(
            env,
            [
                ("HOME", "/tmp"),
                ("TMPDIR", "/tmp"),
                ("TERM", "xterm-256color"),
                ("CLICOLOR_FORCE", "1"),
                ("PATH", "/opt/bin"),
                ("A", "1")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn programs_are_found_on_the_path() {
        let path = std::ffi::OsString::from("/nonexistent:/bin:/usr/bin");
        let found = resolve_program("sh".as_ref(), Some(&path)).unwrap();
        assert!(found.ends_with("sh") && found.is_absolute());
        assert_eq!(resolve_program("./x".as_ref(), Some(&path)), None);
        assert_eq!(resolve_program("no-such-program-quire".as_ref(), Some(&path)), None);
    }
}
