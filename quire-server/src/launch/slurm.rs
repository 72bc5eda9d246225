//! The `slurm` launcher: one Slurm batch job per run, named
//! `quire-<run-id>`, submitted with `sbatch`, watched with `scontrol show
//! job` and stopped with `scancel`. The batch script reaches `sbatch` on
//! stdin and carries the run token, so the token is on no command line;
//! Slurm keeps the script where only its own user reads it. The job's
//! output goes to `/dev/null`: the executor sends what matters over HTTP.
//! `SLURM_CONF` and the other Slurm variables of the server's environment
//! reach the client commands as they are.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use quire_core::id::RunId;

use super::{handle_number, ExecutorSpec, Launch, LaunchError, Status};
use crate::config::SlurmConfig;

pub struct SlurmLauncher {
    config: SlurmConfig,
    /// `quire-ci` on the nodes.
    quire_ci: String,
    /// The job's time limit, in whole minutes (see [`SlurmLauncher::new`]).
    time_limit_minutes: u64,
}

impl SlurmLauncher {
    /// `run_timeout`: `:ci {:timeout-secs}`. The server stops a run at its
    /// timeout; the job also gets a Slurm time limit a minute past it, so
    /// that Slurm ends it should the server be down by then. A `--time` (or
    /// `-t`) among `:sbatch-args` replaces it.
    pub fn new(
        config: SlurmConfig,
        server_quire_ci: std::path::PathBuf,
        run_timeout: Duration,
    ) -> SlurmLauncher {
        let quire_ci = config.quire_ci.clone().unwrap_or_else(|| server_quire_ci.display().to_string());
        let time_limit_minutes = (run_timeout.as_secs() + 60).div_ceil(60);
        SlurmLauncher { config, quire_ci, time_limit_minutes }
    }

    fn sbatch(&self, run: RunId) -> Command {
        let mut command = Command::new("sbatch");
        command.arg("--parsable").arg(format!("--job-name=quire-{run}")).args([
            "--output=/dev/null",
            "--error=/dev/null",
            "--chdir=/tmp",
            "--export=NONE",
        ]);
        if let Some(partition) = &self.config.partition {
            command.arg(format!("--partition={partition}"));
        }
        let own_time = self.config.sbatch_args.iter().any(|arg| arg == "-t" || arg.starts_with("--time"));
        if !own_time {
            command.arg(format!("--time={}", self.time_limit_minutes));
        }
        command.args(&self.config.sbatch_args);
        command
    }
}

/// The batch script: the executor's environment, then `exec quire-ci run`.
fn batch_script(quire_ci: &str, spec: &ExecutorSpec) -> String {
    let mut script = String::from("#!/bin/sh\n# quire run ");
    script.push_str(&spec.run.to_string());
    script.push('\n');
    // --export=NONE: nothing of the server's environment travels, so the
    // job gets the usual PATH of its own.
    script.push_str("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PATH\n");
    let mut export = |name: &str, value: &str| {
        script.push_str(&format!("{name}={}\nexport {name}\n", shell_quote(value)));
    };
    export(quire_core::output::SERVER_URL_VARIABLE, &spec.server_url);
    export(quire_core::output::RUN_TOKEN_VARIABLE, &spec.token);
    if let Some(dsn) = &spec.sentry_dsn {
        export("QUIRE__SENTRY_DSN", dsn);
    }
    script.push_str("exec ");
    script.push_str(&shell_quote(quire_ci));
    script.push_str(" run");
    for arg in &spec.args {
        script.push(' ');
        script.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    script.push('\n');
    script
}

/// `'…'` with every `'` spelled `'\''`: the shell takes it as it is.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Runs a Slurm client command; its stdout, or why it failed.
fn run_client(mut command: Command, stdin: Option<&str>) -> Result<String, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e} (is slurm-client installed on the server?)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| format!("cannot write to {program}: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("{program} failed: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{program}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// What `scontrol show job -o` says of a job, as a [`Status`].
fn parse_job(record: &str, id: u64) -> Status {
    let field = |name: &str| {
        record.split_whitespace().find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).unwrap_or("")
    };
    let state = field("JobState");
    match state {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SUSPENDED" | "RESV_DEL_HOLD"
        | "CONFIGURING" => Status::Queued,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => Status::Running,
        "COMPLETED" => Status::Ended { clean: true, how: format!("Slurm job {id} completed") },
        other => Status::Ended {
            clean: false,
            how: format!("Slurm job {id} ended {} (exit code {})", other.to_lowercase(), field("ExitCode")),
        },
    }
}

impl Launch for SlurmLauncher {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn start(&self, spec: &ExecutorSpec) -> Result<String, LaunchError> {
        let script = batch_script(&self.quire_ci, spec);
        let out = run_client(self.sbatch(spec.run), Some(&script)).map_err(LaunchError::Start)?;
        // `--parsable`: `<job id>` or `<job id>;<cluster>`.
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.parse::<u64>().is_err() {
            return Err(LaunchError::Start(format!("sbatch answered {:?}, not a job id", out.trim())));
        }
        Ok(format!("slurm:{id}"))
    }

    fn status(&self, handle: &str) -> Result<Status, LaunchError> {
        let Some(id) = handle_number(handle, "slurm") else {
            return Ok(Status::Ended { clean: false, how: format!("{handle} is not a Slurm job") });
        };
        let mut command = Command::new("scontrol");
        command.args(["show", "job", "-o", &id.to_string()]);
        match run_client(command, None) {
            Ok(record) => Ok(parse_job(&record, id)),
            // Slurm forgets a job `MinJobAge` after it ended.
            Err(e) if e.contains("Invalid job id") => {
                Ok(Status::Ended { clean: false, how: format!("Slurm no longer knows job {id}") })
            }
            Err(reason) => {
                Err(LaunchError::Unreachable { engine: "Slurm", handle: handle.to_string(), reason })
            }
        }
    }

    fn terminate(&self, handle: &str) {
        if let Some(id) = handle_number(handle, "slurm") {
            let mut command = Command::new("scancel");
            command.arg(id.to_string());
            if let Err(e) = run_client(command, None) {
                tracing::warn!(%handle, error = %e, "scancel failed");
            }
        }
    }

    fn kill(&self, handle: &str) {
        if let Some(id) = handle_number(handle, "slurm") {
            let mut command = Command::new("scancel");
            command.args(["--signal=KILL", "--full", &id.to_string()]);
            if let Err(e) = run_client(command, None) {
                tracing::warn!(%handle, error = %e, "scancel --signal=KILL failed");
            }
            self.terminate(handle);
        }
    }

    fn clean_up(&self, _run: RunId, _handle: &str) -> usize {
        // Slurm ends every process of a job with it.
        0
    }

    fn local_cache(&self) -> bool {
        false
    }

    fn starts_promptly(&self) -> bool {
        false
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn describe(&self) -> String {
        format!(
            "slurm (partition {}, quire-ci at {} on the nodes)",
            self.config.partition.as_deref().unwrap_or("default"),
            self.quire_ci
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_travels_in_the_script_quoted_and_never_as_an_argument() {
        let spec = ExecutorSpec {
            run: RunId::generate(),
            token: "tok'en; rm -rf /".to_string(),
            server_url: "http://ci:3000".to_string(),
            args: vec!["--sandbox".into(), "it's".into()],
            cache_dir: None,
            sentry_dsn: None,
        };
        let script = batch_script("/opt/quire ci/quire-ci", &spec);
        assert!(script.contains(r"QUIRE__RUN_TOKEN='tok'\''en; rm -rf /'"), "{script}");
        assert!(script.contains(r"exec '/opt/quire ci/quire-ci' run '--sandbox' 'it'\''s'"), "{script}");
        let launcher = SlurmLauncher::new(SlurmConfig::default(), "/q".into(), Duration::from_secs(3600));
        let sbatch = launcher.sbatch(spec.run);
        assert!(sbatch.get_args().all(|a| !a.to_string_lossy().contains("tok")));
    }

    #[test]
    fn the_job_is_limited_to_a_minute_past_the_run_timeout_unless_the_operator_says_otherwise() {
        let args = |sbatch_args: &[&str], timeout_secs: u64| -> Vec<String> {
            let config = SlurmConfig {
                sbatch_args: sbatch_args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            };
            SlurmLauncher::new(config, "/q".into(), Duration::from_secs(timeout_secs))
                .sbatch(RunId::generate())
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        assert!(args(&[], 3600).contains(&"--time=61".to_string()));
        assert!(args(&[], 61).contains(&"--time=3".to_string()), "rounded up: {:?}", args(&[], 61));
        let own = args(&["--time=5-00:00:00"], 3600);
        assert_eq!(own.iter().filter(|a| a.starts_with("--time")).collect::<Vec<_>>(), ["--time=5-00:00:00"]);
        assert!(!args(&["-t", "10"], 3600).iter().any(|a| a.starts_with("--time")));
    }

    #[test]
    fn job_states_map_to_what_the_runner_needs() {
        let record =
            |state: &str| format!("JobId=7 JobName=quire-x JobState={state} Reason=None ExitCode=1:0");
        assert_eq!(parse_job(&record("PENDING"), 7), Status::Queued);
        assert_eq!(parse_job(&record("RUNNING"), 7), Status::Running);
        assert_eq!(parse_job(&record("COMPLETING"), 7), Status::Running);
        assert!(matches!(parse_job(&record("COMPLETED"), 7), Status::Ended { clean: true, .. }));
        let Status::Ended { clean: false, how } = parse_job(&record("CANCELLED"), 7) else { panic!() };
        assert!(how.contains("cancelled") && how.contains("1:0"), "{how}");
    }
}
