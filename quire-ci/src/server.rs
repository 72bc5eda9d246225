//! Server mode: everything the run needs from the `quire` server that
//! launched this process comes over HTTP with the run token
//! (`QUIRE__SERVER_URL`, `QUIRE__RUN_TOKEN`): the push facts, secrets and
//! the workspace; the run's output goes back the same way (`shipper`
//! decides what and when, this module only talks). Nothing of the
//! server's file system is needed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use quire_core::output::{
    Batch, Reply, HEARTBEAT_PATH, OUTPUT_PATH, RUN_TOKEN_VARIABLE, SERVER_URL_VARIABLE, WORKSPACE_PATH,
};
use quire_core::push::Bootstrap;
use quire_core::runtime::{SecretError, SecretSource};

pub struct Server {
    url: String,
    token: String,
    client: reqwest::blocking::Client,
}

/// Why a batch or heartbeat did not go through.
#[derive(Debug)]
pub enum SendError {
    /// Worth trying again: the server is unreachable, restarting or cannot
    /// write now.
    Transient(String),
    /// The server holds fewer bytes of `file` than the batch assumed:
    /// resend from `have`.
    Behind { file: String, have: u64 },
    /// The server did not take the batch and wants the run stopped (it
    /// cannot store the output).
    Stopped(quire_core::output::StopReason),
    /// The server refused the batch for good (a file past its limit, the
    /// run no longer active).
    Refused { status: u16, file: Option<String>, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot reach the quire server at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the quire server refused the run token ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the quire server sent an unreadable bootstrap payload: {0}")]
    Malformed(String),
    #[error("cannot fetch the workspace: {0}")]
    Workspace(String),
}

/// The first `limit` bytes read from `from`, which is read to its end.
fn first_bytes(from: impl std::io::Read, limit: u64) -> Vec<u8> {
    use std::io::Read;
    let mut from = from;
    let mut kept = Vec::new();
    let _ = (&mut from).take(limit).read_to_end(&mut kept);
    let _ = std::io::copy(&mut from, &mut std::io::sink());
    kept
}

impl Server {
    /// The server from the environment, when this is a server run.
    pub fn from_env() -> Option<Server> {
        let url = std::env::var(SERVER_URL_VARIABLE).ok().filter(|u| !u.is_empty())?;
        let token = std::env::var(RUN_TOKEN_VARIABLE).ok().filter(|t| !t.is_empty())?;
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client without TLS or proxies builds");
        Some(Server { url: url.trim_end_matches('/').to_string(), token, client })
    }

    /// `GET /api/run/bootstrap`: also what moves the run to `active`.
    pub fn bootstrap(&self) -> Result<Bootstrap, ServerError> {
        let body = self.get("/api/run/bootstrap")?;
        serde_json::from_str(&body).map_err(|e| ServerError::Malformed(e.to_string()))
    }

    /// `GET /api/run/workspace`, unpacked into `dir` (which must exist).
    pub fn download_workspace(&self, dir: &Path) -> Result<(), ServerError> {
        // tar starts while the request is on the way. From the system's
        // directories when it is there: the search through a long PATH of
        // directories `nobody` may not enter costs a failed exec for each.
        let program = quire_core::runtime::find_system_program("tar").unwrap_or_else(|| "tar".into());
        // -m: files get the time they are unpacked at, as in a checkout
        // (and a commit dated in the future draws no warning per file).
        let mut tar = Command::new(program)
            .args(["-x", "-m", "--no-same-owner", "-C"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ServerError::Workspace(format!("cannot run tar: {e}")))?;
        // Read as it comes: tar blocked on a full stderr pipe would stop
        // reading the archive.
        let stderr = tar.stderr.take().expect("piped");
        let said = std::thread::spawn(move || first_bytes(stderr, 4096));
        // Dropping tar's stdin (whatever happened) lets it end.
        let fetched = self.fetch_workspace(tar.stdin.take().expect("piped"));
        let status = tar.wait().map_err(|e| ServerError::Workspace(format!("tar failed: {e}")))?;
        let said = said.join().unwrap_or_default();
        let tar_failed = (!status.success()).then(|| {
            ServerError::Workspace(format!(
                "tar could not unpack the workspace: {}",
                String::from_utf8_lossy(&said).trim()
            ))
        });
        match (fetched, tar_failed) {
            // The copy broke because tar stopped (a full disk, say): tar
            // tells why.
            (Err(ServerError::Workspace(_)), Some(tar_failed)) => Err(tar_failed),
            (Err(fetch_failed), _) => Err(fetch_failed),
            (Ok(()), Some(tar_failed)) => Err(tar_failed),
            (Ok(()), None) => Ok(()),
        }
    }

    /// The workspace's tar stream, copied into `into`.
    fn fetch_workspace(&self, mut into: impl std::io::Write) -> Result<(), ServerError> {
        let url = format!("{}{WORKSPACE_PATH}", self.url);
        // No overall timeout: a big checkout takes as long as it takes.
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(None)
            .build()
            .expect("an HTTP client without TLS or proxies builds");
        let mut response = client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .map_err(|source| ServerError::Unreachable { url: url.clone(), source })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().unwrap_or_default();
            return Err(ServerError::Refused { status: status.as_u16(), body });
        }
        std::io::copy(&mut response, &mut into)
            .map(|_| ())
            .map_err(|e| ServerError::Workspace(format!("the download was cut short: {e}")))
    }

    /// `POST /api/run/output`.
    pub fn send_output(&self, batch: &Batch) -> Result<Reply, SendError> {
        let body = serde_json::to_vec(batch).expect("a batch serializes");
        self.post(OUTPUT_PATH, body)
    }

    /// `POST /api/run/heartbeat`.
    pub fn heartbeat(&self) -> Result<Reply, SendError> {
        self.post(HEARTBEAT_PATH, Vec::new())
    }

    fn post(&self, path: &str, body: Vec<u8>) -> Result<Reply, SendError> {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .map_err(|e| SendError::Transient(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response.text().map_err(|e| SendError::Transient(e.to_string()))?;
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        let field = |name: &str| json.as_ref().and_then(|j| j.get(name)).cloned();
        if let Some(why) =
            field("cancel").and_then(|c| serde_json::from_value(c).ok()).filter(|_| status != 200)
        {
            return Err(SendError::Stopped(why));
        }
        match status {
            200 => serde_json::from_str(&text)
                .map_err(|e| SendError::Transient(format!("unreadable answer: {e}"))),
            409 => match (
                field("file").and_then(|f| f.as_str().map(str::to_string)),
                field("have").and_then(|h| h.as_u64()),
            ) {
                (Some(file), Some(have)) => Err(SendError::Behind { file, have }),
                _ => Err(SendError::Transient(format!("409: {text}"))),
            },
            // Restarting, overloaded, or cannot write now.
            500..=599 | 429 => Err(SendError::Transient(format!("{status}: {text}"))),
            _ => Err(SendError::Refused {
                status,
                file: field("file").and_then(|f| f.as_str().map(str::to_string)),
                message: field("error").and_then(|e| e.as_str().map(str::to_string)).unwrap_or(text),
            }),
        }
    }

    fn get(&self, path: &str) -> Result<String, ServerError> {
        let url = format!("{}{path}", self.url);
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .map_err(|source| ServerError::Unreachable { url: url.clone(), source })?;
        let status = response.status();
        let body = response.text().map_err(|source| ServerError::Unreachable { url, source })?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(ServerError::Refused { status: status.as_u16(), body })
        }
    }
}

impl SecretSource for Server {
    fn secret(&self, name: &str) -> Result<String, SecretError> {
        let encoded: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        match self.get(&format!("/api/run/secrets/{encoded}")) {
            Ok(body) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("value").and_then(|v| v.as_str()).map(str::to_string))
                .ok_or_else(|| SecretError::Unavailable {
                    name: name.into(),
                    reason: "malformed answer".into(),
                }),
            Err(ServerError::Refused { status: 404, .. }) => Err(SecretError::Undeclared {
                name: name.to_string(),
                hint: " (declare it under :secrets in the server's config.fnl)".to_string(),
            }),
            Err(e) => Err(SecretError::Unavailable { name: name.to_string(), reason: e.to_string() }),
        }
    }
}
