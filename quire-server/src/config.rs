//! The operator's `<root>/config.fnl` (SPEC §6.7): a Fennel table evaluated
//! with the embedded Fennel, checked key by key so that every mistake is
//! reported with the file, the key and its line. A missing file means
//! defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use quire_core::diagnostic::{Diagnostic, Location};
use quire_core::id::RepoName;
use quire_core::source::SourceFile;

use crate::retention::Retention;
use crate::schedule::Schedule;
use serde_json::{Map, Value};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub ci: CiConfig,
    /// Secret name → value, served to runs that may read them.
    pub secrets: BTreeMap<String, Secret>,
    pub sentry_dsn: Option<String>,
    pub web: WebConfig,
    pub http: HttpConfig,
    /// Runs started by the clock.
    pub schedules: Vec<Schedule>,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// HTTP worker threads (default: the number of CPUs).
    pub workers: usize,
    /// Live event streams open at once; past it a viewer gets 503.
    pub max_live_streams: usize,
    /// What a followed run keeps for viewers who join late: this much of
    /// its events and as much again of its log lines.
    pub live_backlog_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_live_streams: 512,
            live_backlog_bytes: 1024 * 1024,
        }
    }
}

/// A declared secret and which repositories' runs may read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub value: String,
    /// `None`: every repository.
    pub repos: Option<Vec<RepoName>>,
}

impl Secret {
    /// Whether a run of `repo` may read the secret.
    pub fn readable_by(&self, repo: &RepoName) -> bool {
        self.repos.as_ref().is_none_or(|repos| repos.contains(repo))
    }
}

#[derive(Debug, Clone)]
pub struct CiConfig {
    pub max_concurrent_runs: usize,
    /// How long a whole run may take before quire-ci is killed.
    pub timeout: Duration,
    pub sandbox: SandboxMode,
    /// Repositories whose commands may use the network.
    pub network: Vec<RepoName>,
    pub limits: Limits,
    /// Jobs of one run that may run at once.
    pub max_parallel_jobs: u64,
    /// How much history each repository keeps.
    pub retention: Retention,
    /// What each repository's caches may take, MiB.
    pub cache_mb: u64,
    /// Commands one run may start.
    pub max_commands: u64,
    /// How runs' executors are started, watched and stopped.
    pub launcher: LauncherConfig,
    /// The address executors reach the server at; the listen address when
    /// not set.
    pub public_url: Option<String>,
    /// How long an executor may stay silent before its run is given up.
    pub heartbeat_timeout: Duration,
    /// What a run's `events.jsonl` may grow to, MiB.
    pub max_events_mb: u64,
}

/// `:ci {:launcher …}`: where executors run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LauncherConfig {
    /// A child process of the server, confined to its own directory.
    Process,
    /// One Slurm batch job per run.
    Slurm(SlurmConfig),
}

/// `:ci {:slurm {…}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlurmConfig {
    pub partition: Option<String>,
    /// More `sbatch` options, passed as they are.
    pub sbatch_args: Vec<String>,
    /// Where the `quire-ci` binary is on the nodes; the server's own when
    /// not set (the nodes then need it at the same path).
    pub quire_ci: Option<String>,
}

impl CiConfig {
    /// What each file of a run directory may grow to.
    pub fn output_limits(&self) -> crate::run_output::OutputLimits {
        crate::run_output::OutputLimits {
            events: self.max_events_mb.saturating_mul(1024 * 1024),
            log: self.limits.max_log_mb.saturating_mul(1024 * 1024) + crate::run_output::LOG_NOTE_ROOM,
            executor_log: crate::run_output::EXECUTOR_LOG_BYTES,
            // Each command's log and each job's, the events and quire-ci's
            // own log: a run within its command limit never comes near
            // (the 1024 is for jobs that run no command).
            files: self.max_commands.saturating_mul(2).saturating_add(1024),
        }
    }
}

/// Where runs' commands execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Bubblewrap; runs fail (rather than run unsandboxed) when it is
    /// missing.
    Bwrap,
    None,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Bwrap => "bwrap",
            SandboxMode::None => "none",
        }
    }
}

/// Resource limits handed to quire-ci: per command, and for pipeline Lua.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_processes: u64,
    pub max_file_size_mb: u64,
    pub max_cpu_secs: u64,
    pub max_memory_mb: u64,
    /// Output one command's log keeps.
    pub max_log_mb: u64,
    /// The sandbox's private /tmp.
    pub max_tmp_mb: u64,
    /// Memory of each Lua VM.
    pub lua_memory_mb: u64,
    /// Free space a command must leave on the workspace's file system;
    /// `None`: [`DEFAULT_MIN_FREE_DISK_MB`], or a twentieth of a smaller
    /// file system (see [`Limits::disk_floor_mb`]).
    pub min_free_disk_mb: Option<u64>,
}

/// What each repository's caches may take when config.fnl says nothing.
pub const DEFAULT_CACHE_MB: u64 = 2048;

/// The free-space floor when config.fnl sets none.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 1024;

impl Limits {
    /// The floor for a file system of `size_mb`: the configured one, else
    /// the default capped at a twentieth of the file system, so that a
    /// small data root still runs commands and keeps room for the server
    /// to record them.
    pub fn disk_floor_mb(&self, size_mb: u64) -> u64 {
        self.min_free_disk_mb.unwrap_or_else(|| DEFAULT_MIN_FREE_DISK_MB.min(size_mb / 20).max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_processes: 2048,
            max_file_size_mb: 4096,
            max_cpu_secs: 3600,
            max_memory_mb: 16384,
            max_log_mb: 64,
            max_tmp_mb: 512,
            lua_memory_mb: 512,
            min_free_disk_mb: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// When set, run pages and logs require this request header (set by a
    /// trusted reverse proxy).
    pub trusted_user_header: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            ci: CiConfig {
                max_concurrent_runs: 2,
                timeout: Duration::from_secs(3600),
                // The default is the sandbox when bubblewrap is installed.
                sandbox: if quire_core::runtime::find_bwrap().is_some() {
                    SandboxMode::Bwrap
                } else {
                    SandboxMode::None
                },
                network: Vec::new(),
                limits: Limits::default(),
                max_parallel_jobs: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
                retention: Retention::default(),
                cache_mb: DEFAULT_CACHE_MB,
                max_commands: quire_core::jobs::MAX_COMMANDS as u64,
                launcher: LauncherConfig::Process,
                public_url: None,
                heartbeat_timeout: Duration::from_secs(60),
                max_events_mb: 256,
            },
            secrets: BTreeMap::new(),
            sentry_dsn: None,
            web: WebConfig::default(),
            http: HttpConfig::default(),
            schedules: Vec::new(),
        }
    }
}

/// A broken config: what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("{}", diagnostic.short())]
pub struct ConfigError {
    pub diagnostic: Box<Diagnostic>,
    pub source_file: Option<Box<SourceFile>>,
}

impl ConfigError {
    /// A miette report with the offending line, for the startup error.
    pub fn report(&self) -> miette::Report {
        match &self.source_file {
            Some(file) => self.diagnostic.report(file),
            None => miette::miette!("{}", self.diagnostic.short()),
        }
    }
}

/// Reads `path`; defaults when it does not exist.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => {
            return Err(ConfigError {
                diagnostic: Box::new(Diagnostic::error(format!("cannot read {}: {e}", path.display()))),
                source_file: None,
            })
        }
    };
    let file = SourceFile::new(path.display().to_string(), text);
    let broken = |diagnostic: Diagnostic, file: &SourceFile| ConfigError {
        diagnostic: Box::new(diagnostic),
        source_file: Some(Box::new(file.clone())),
    };
    let value = quire_core::lua::data::evaluate_data(&file).map_err(|d| broken(d, &file))?;
    Reader { file: &file }.config(&value).map_err(|d| broken(d, &file))
}

/// Walks the evaluated table, turning each key into a typed field.
struct Reader<'a> {
    file: &'a SourceFile,
}

impl Reader<'_> {
    fn config(&self, value: &Value) -> Result<Config, Diagnostic> {
        let mut config = Config::default();
        let top = self.table(value, "the config")?;
        for (key, value) in top {
            match key.as_str() {
                "listen" => {
                    let listen = self.string(value, key)?;
                    config.listen = listen.parse().map_err(|_| {
                        self.error(
                            key,
                            format!(":listen must be an address such as {DEFAULT_LISTEN}, got {listen:?}"),
                        )
                    })?;
                }
                "ci" => self.ci(value, &mut config.ci)?,
                "secrets" => {
                    for (name, secret) in self.table(value, "secrets")? {
                        config.secrets.insert(name.clone(), self.secret(name, secret)?);
                    }
                }
                "sentry" => {
                    for (k, v) in self.table(value, "sentry")? {
                        match k.as_str() {
                            "dsn" => {
                                let dsn = self.string(v, k)?;
                                dsn.parse::<sentry::types::Dsn>().map_err(|e| {
                                    self.error(k, format!(":dsn is not a Sentry DSN ({e}): {dsn:?}"))
                                })?;
                                config.sentry_dsn = Some(dsn.to_string());
                            }
                            _ => return Err(self.unknown(k, "sentry", &["dsn"])),
                        }
                    }
                }
                "schedules" => config.schedules = self.schedules(value)?,
                "http" => {
                    for (k, v) in self.table(value, "http")? {
                        match k.as_str() {
                            "workers" => config.http.workers = self.positive(v, k)?.min(256) as usize,
                            "max-live-streams" => {
                                config.http.max_live_streams = self.positive(v, k)?.min(100_000) as usize
                            }
                            "live-backlog-kb" => {
                                config.http.live_backlog_bytes =
                                    self.positive(v, k)?.min(1024 * 1024) as usize * 1024
                            }
                            _ => {
                                return Err(self.unknown(
                                    k,
                                    "http",
                                    &["workers", "max-live-streams", "live-backlog-kb"],
                                ))
                            }
                        }
                    }
                }
                "web" => {
                    for (k, v) in self.table(value, "web")? {
                        match k.as_str() {
                            "trusted-user-header" => {
                                config.web.trusted_user_header = Some(self.string(v, k)?.to_string())
                            }
                            _ => return Err(self.unknown(k, "web", &["trusted-user-header"])),
                        }
                    }
                }
                _ => {
                    return Err(self.unknown(
                        key,
                        "the config",
                        &["listen", "ci", "secrets", "sentry", "web", "http", "schedules"],
                    ))
                }
            }
        }
        Ok(config)
    }

    fn ci(&self, value: &Value, ci: &mut CiConfig) -> Result<(), Diagnostic> {
        // Read once the launcher is known, whatever the order of the keys.
        let mut slurm = None;
        for (key, value) in self.table(value, "ci")? {
            match key.as_str() {
                "max-concurrent-runs" => {
                    ci.max_concurrent_runs = self.positive(value, key)? as usize;
                }
                "timeout-secs" => ci.timeout = Duration::from_secs(self.positive(value, key)?),
                "sandbox" => {
                    ci.sandbox = match self.string(value, key)? {
                        "bwrap" => SandboxMode::Bwrap,
                        "none" => SandboxMode::None,
                        other => {
                            return Err(
                                self.error(key, format!(":sandbox must be :bwrap or :none, got {other:?}"))
                            )
                        }
                    }
                }
                "network" => {
                    let repos = value.as_array().ok_or_else(|| {
                        self.error(
                            key,
                            format!(":network must be a list of repositories, got {}", kind(value)),
                        )
                    })?;
                    for repo in repos {
                        let name = self.string(repo, key)?;
                        ci.network
                            .push(name.parse::<RepoName>().map_err(|e| self.error(key, e.to_string()))?);
                    }
                }
                "max-processes" => ci.limits.max_processes = self.positive(value, key)?,
                "max-file-size-mb" => ci.limits.max_file_size_mb = self.positive(value, key)?,
                "max-cpu-secs" => ci.limits.max_cpu_secs = self.positive(value, key)?,
                "max-memory-mb" => ci.limits.max_memory_mb = self.positive(value, key)?,
                "max-log-mb" => ci.limits.max_log_mb = self.positive(value, key)?,
                "max-tmp-mb" => ci.limits.max_tmp_mb = self.positive(value, key)?,
                "lua-memory-mb" => ci.limits.lua_memory_mb = self.positive(value, key)?,
                "min-free-disk-mb" => ci.limits.min_free_disk_mb = Some(self.positive(value, key)?),
                "max-parallel-jobs" => ci.max_parallel_jobs = self.positive(value, key)?.min(256),
                "cache-mb" => ci.cache_mb = self.positive(value, key)?,
                "max-commands" => {
                    ci.max_commands = self.positive(value, key)?.min(quire_core::jobs::MAX_COMMANDS as u64)
                }
                "launcher" => {
                    ci.launcher = match self.string(value, key)? {
                        "process" => LauncherConfig::Process,
                        "slurm" => LauncherConfig::Slurm(SlurmConfig::default()),
                        other => {
                            return Err(self
                                .error(key, format!(":launcher must be :process or :slurm, got {other:?}")))
                        }
                    }
                }
                "slurm" => slurm = Some((key, value)),
                "public-url" => {
                    let url = self.string(value, key)?;
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(self.error(
                            key,
                            format!(":public-url must be an http:// or https:// address, got {url:?}"),
                        ));
                    }
                    ci.public_url = Some(url.trim_end_matches('/').to_string());
                }
                "heartbeat-timeout-secs" => {
                    let secs = self.positive(value, key)?;
                    if secs < quire_core::output::MAX_HEARTBEAT_GAP_SECS * 2 {
                        return Err(self.error(
                            key,
                            format!(
                                ":heartbeat-timeout-secs must be at least {} (executors check in every {} s at most), got {secs}",
                                quire_core::output::MAX_HEARTBEAT_GAP_SECS * 2,
                                quire_core::output::MAX_HEARTBEAT_GAP_SECS
                            ),
                        ));
                    }
                    ci.heartbeat_timeout = Duration::from_secs(secs);
                }
                "max-events-mb" => ci.max_events_mb = self.positive(value, key)?,
                "retention" => {
                    for (k, v) in self.table(value, "retention")? {
                        match k.as_str() {
                            "keep-runs" => ci.retention.keep_runs = Some(self.positive(v, k)?),
                            "keep-days" => ci.retention.keep_days = Some(self.positive(v, k)?),
                            _ => return Err(self.unknown(k, "retention", &["keep-runs", "keep-days"])),
                        }
                    }
                }
                _ => {
                    return Err(self.unknown(
                        key,
                        "ci",
                        &[
                            "max-concurrent-runs",
                            "timeout-secs",
                            "sandbox",
                            "network",
                            "max-processes",
                            "max-file-size-mb",
                            "max-cpu-secs",
                            "max-memory-mb",
                            "max-log-mb",
                            "max-tmp-mb",
                            "lua-memory-mb",
                            "min-free-disk-mb",
                            "max-parallel-jobs",
                            "retention",
                            "cache-mb",
                            "max-commands",
                            "launcher",
                            "slurm",
                            "public-url",
                            "heartbeat-timeout-secs",
                            "max-events-mb",
                        ],
                    ))
                }
            }
        }
        match (slurm, &mut ci.launcher) {
            (Some((key, value)), LauncherConfig::Slurm(config)) => *config = self.slurm(key, value)?,
            (Some((key, _)), LauncherConfig::Process) => {
                return Err(self.error(key, ":slurm is set but :launcher is not :slurm".to_string()))
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// `{:partition "…" :sbatch-args ["…"] :quire-ci "/path/on/the/nodes"}`.
    fn slurm(&self, key: &str, value: &Value) -> Result<SlurmConfig, Diagnostic> {
        let mut slurm = SlurmConfig::default();
        for (k, v) in self.table(value, key)? {
            match k.as_str() {
                "partition" => slurm.partition = Some(self.string(v, k)?.to_string()),
                "quire-ci" => slurm.quire_ci = Some(self.string(v, k)?.to_string()),
                "sbatch-args" => {
                    let items = v.as_array().ok_or_else(|| {
                        self.error(k, format!(":sbatch-args must be a list of strings, got {}", kind(v)))
                    })?;
                    for item in items {
                        slurm.sbatch_args.push(self.string(item, k)?.to_string());
                    }
                }
                _ => return Err(self.unknown(k, "slurm", &["partition", "sbatch-args", "quire-ci"])),
            }
        }
        Ok(slurm)
    }

    /// `"value"`, or `{:value "…" :repos ["app.git" …]}`.
    /// `[{:repo "app.git" :ref "refs/heads/main" :cron "0 3 * * *"} …]`.
    fn schedules(&self, value: &Value) -> Result<Vec<Schedule>, Diagnostic> {
        let Some(items) = value.as_array() else {
            return Err(self.error(
                "schedules",
                format!(":schedules must be a list of {{:repo :ref :cron}} tables, got {}", kind(value)),
            ));
        };
        let mut schedules = Vec::with_capacity(items.len());
        for item in items {
            let (mut repo, mut ref_name, mut pattern) = (None, None, None);
            for (k, v) in self.table(item, "schedules")? {
                match k.as_str() {
                    "repo" => {
                        repo = Some(
                            self.string(v, k)?
                                .parse::<RepoName>()
                                .map_err(|e| self.error(k, e.to_string()))?,
                        )
                    }
                    "ref" => {
                        let name = self.string(v, k)?;
                        if !name.starts_with("refs/") || name.len() <= 5 {
                            return Err(self.error(
                                k,
                                format!(":ref must be a full ref such as refs/heads/main, got {name:?}"),
                            ));
                        }
                        ref_name = Some(name.to_string());
                    }
                    "cron" => pattern = Some(self.string(v, k)?.to_string()),
                    _ => return Err(self.unknown(k, "a schedule", &["repo", "ref", "cron"])),
                }
            }
            let (Some(repo), Some(ref_name), Some(pattern)) = (repo, ref_name, pattern) else {
                return Err(self.error("schedules", "each schedule needs :repo, :ref and :cron".to_string()));
            };
            schedules.push(Schedule::new(repo, ref_name, &pattern).map_err(|e| self.error("cron", e))?);
        }
        Ok(schedules)
    }

    fn secret(&self, name: &str, value: &Value) -> Result<Secret, Diagnostic> {
        if let Some(text) = value.as_str() {
            return Ok(Secret { value: text.to_string(), repos: None });
        }
        let fields = self.table(value, name).map_err(|_| {
            self.error(
                name,
                format!(
                    "secret :{name} must be a string or {{:value \"…\" :repos [\"app.git\"]}}, got {}",
                    kind(value)
                ),
            )
        })?;
        let mut secret = Secret { value: String::new(), repos: None };
        let mut has_value = false;
        for (key, field) in fields {
            match key.as_str() {
                "value" => {
                    secret.value = self.string(field, key)?.to_string();
                    has_value = true;
                }
                "repos" => {
                    let repos = field.as_array().ok_or_else(|| {
                        self.error(
                            key,
                            format!(
                                ":repos of secret :{name} must be a list of repositories, got {}",
                                kind(field)
                            ),
                        )
                    })?;
                    let names = repos
                        .iter()
                        .map(|r| {
                            self.string(r, key)?
                                .parse::<RepoName>()
                                .map_err(|e| self.error(key, e.to_string()))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    secret.repos = Some(names);
                }
                _ => return Err(self.unknown(key, &format!("secret :{name}"), &["value", "repos"])),
            }
        }
        if !has_value {
            return Err(self.error(name, format!("secret :{name} has no :value")));
        }
        Ok(secret)
    }

    fn table<'v>(&self, value: &'v Value, what: &str) -> Result<&'v Map<String, Value>, Diagnostic> {
        match value {
            Value::Object(map) => Ok(map),
            // An empty Fennel table decodes as an empty sequence.
            Value::Array(a) if a.is_empty() => Ok(empty_map()),
            other => Err(self.error(what, format!("{what} must be a table, got {}", kind(other)))),
        }
    }

    fn string<'v>(&self, value: &'v Value, key: &str) -> Result<&'v str, Diagnostic> {
        value.as_str().ok_or_else(|| self.error(key, format!(":{key} must be a string, got {}", kind(value))))
    }

    fn positive(&self, value: &Value, key: &str) -> Result<u64, Diagnostic> {
        value
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| self.error(key, format!(":{key} must be a positive whole number, got {value}")))
    }

    fn unknown(&self, key: &str, within: &str, known: &[&str]) -> Diagnostic {
        let known: Vec<String> = known.iter().map(|k| format!(":{k}")).collect();
        self.error(key, format!("unknown key :{key} in {within} (known keys: {})", known.join(" ")))
    }

    /// An error located at the line where `:key` (or `key`) first appears.
    fn error(&self, key: &str, message: String) -> Diagnostic {
        let text = &self.file.text;
        let needle = format!(":{key}");
        let found = text.find(&needle).or_else(|| text.find(&format!("\"{key}\"")));
        let location = match found {
            Some(offset) => {
                let before = &text[..offset];
                let line = before.matches('\n').count() as u32 + 1;
                let column = (offset - before.rfind('\n').map_or(0, |p| p + 1)) as u32 + 1;
                Location::new(self.file.display_name(), line, column)
            }
            None => Location::new(self.file.display_name(), 1, 1),
        };
        Diagnostic::error(message).at(location)
    }
}

fn empty_map() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_disk_floor_shrinks_with_a_small_file_system() {
        let limits = Limits::default();
        assert_eq!(limits.disk_floor_mb(u64::MAX), DEFAULT_MIN_FREE_DISK_MB);
        assert_eq!(limits.disk_floor_mb(64), 3);
        assert_eq!(limits.disk_floor_mb(10), 1);
        let set = Limits { min_free_disk_mb: Some(7), ..Limits::default() };
        assert_eq!(set.disk_floor_mb(64), 7, "a configured floor is kept as it is");
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.fnl");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn missing_file_means_defaults() {
        let config = load(Path::new("/nonexistent/config.fnl")).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.ci.max_concurrent_runs, 2);
    }

    #[test]
    fn the_documented_example_loads() {
        let config = load_text(
            r#"{:listen "127.0.0.1:3001"
                :ci {:max-concurrent-runs 4 :timeout-secs 60 :sandbox :none :network ["a.git"] :max-processes 10
                     :max-log-mb 8 :max-tmp-mb 16 :lua-memory-mb 32 :max-parallel-jobs 3}
                :secrets {:deploy-token "abc" :app-only {:value "xyz" :repos ["app.git"]}}
                :sentry {:dsn "http://key@127.0.0.1:9/1"}
                :web {:trusted-user-header "Remote-User"}}"#,
        )
        .unwrap();
        assert_eq!(config.listen.port(), 3001);
        assert_eq!(config.ci.max_concurrent_runs, 4);
        assert_eq!(config.ci.timeout, Duration::from_secs(60));
        assert_eq!(config.ci.sandbox, SandboxMode::None);
        assert_eq!(config.ci.network, ["a.git".parse::<RepoName>().unwrap()]);
        assert_eq!(config.ci.limits.max_processes, 10);
        assert_eq!(
            (config.ci.limits.max_log_mb, config.ci.limits.max_tmp_mb, config.ci.limits.lua_memory_mb),
            (8, 16, 32)
        );
        assert_eq!(config.ci.max_parallel_jobs, 3);
        let app: RepoName = "app.git".parse().unwrap();
        let other: RepoName = "other.git".parse().unwrap();
        assert_eq!(config.secrets["deploy-token"].value, "abc");
        assert!(config.secrets["deploy-token"].readable_by(&other));
        assert_eq!(config.secrets["app-only"].value, "xyz");
        assert!(config.secrets["app-only"].readable_by(&app));
        assert!(!config.secrets["app-only"].readable_by(&other));
        assert!(config.sentry_dsn.is_some());
        assert_eq!(config.web.trusted_user_header.as_deref(), Some("Remote-User"));
    }

    #[test]
    fn mistakes_name_the_key_and_line() {
        let err = load_text("{:listen \"127.0.0.1:3000\"\n :ci {:max-concurent-runs 2}}").unwrap_err();
        let d = err.diagnostic;
        assert!(d.message.contains("unknown key :max-concurent-runs in ci"), "{}", d.message);
        assert_eq!(d.location.unwrap().line, 2);

        let err = load_text("{:ci\n {:timeout-secs \"soon\"}}").unwrap_err();
        assert!(err.diagnostic.message.contains(":timeout-secs must be a positive whole number"));
        assert_eq!(err.diagnostic.location.unwrap().line, 2);

        let err = load_text("{:listen \"nowhere\"}").unwrap_err();
        assert!(err.diagnostic.message.contains(":listen must be an address"));

        let err = load_text("{:secrets\n {:x {:repos [\"a.git\"]}}}").unwrap_err();
        assert!(err.diagnostic.message.contains("secret :x has no :value"), "{}", err.diagnostic.message);
        let err = load_text("{:secrets {:x {:value \"v\" :repos [\"../a\"]}}}").unwrap_err();
        assert!(err.diagnostic.message.contains("invalid repository name"), "{}", err.diagnostic.message);

        let err = load_text("{:sentry\n {:dsn \"not a dsn\"}}").unwrap_err();
        assert!(err.diagnostic.message.contains(":dsn is not a Sentry DSN"), "{}", err.diagnostic.message);
        assert_eq!(err.diagnostic.location.unwrap().line, 2);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = load_text("{:listen \"127.0.0.1:3000\"\n :ci {:max-concurrent-runs 2}").unwrap_err();
        let loc = err.diagnostic.location.unwrap();
        assert!(loc.file.ends_with("config.fnl"));
        assert!(err.diagnostic.message.contains("Parse error"), "{}", err.diagnostic.message);
    }
}
