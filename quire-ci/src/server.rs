//! Server mode: the run's push facts and secrets come from the `quire`
//! server that spawned this process, over HTTP with the run token
//! (`QUIRE__SERVER_URL`, `QUIRE__RUN_TOKEN`).

use std::time::Duration;

use quire_core::push::Bootstrap;
use quire_core::runtime::{SecretError, SecretSource};

pub const URL_VARIABLE: &str = "QUIRE__SERVER_URL";
pub const TOKEN_VARIABLE: &str = "QUIRE__RUN_TOKEN";

pub struct Server {
    url: String,
    token: String,
    client: reqwest::blocking::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot reach the quire server at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the quire server refused the run token ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the quire server sent an unreadable bootstrap payload: {0}")]
    Malformed(String),
}

impl Server {
    /// The server from the environment, when this is a server run.
    pub fn from_env() -> Option<Server> {
        let url = std::env::var(URL_VARIABLE).ok().filter(|u| !u.is_empty())?;
        let token = std::env::var(TOKEN_VARIABLE).ok().filter(|t| !t.is_empty())?;
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
