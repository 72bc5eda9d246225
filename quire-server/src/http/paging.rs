//! Pages of runs: the query both the API and the pages take. `?before=ID`
//! pages by key (the runs older than that one), which costs the same on
//! the last page as on the first; `?page=N` (counting from 1) is kept for
//! tools written against the first release and costs what it skips.

use quire_core::id::RunId;
use serde::Deserialize;

use super::ApiError;
use crate::runs::Start;

/// Runs per page.
pub const PAGE_SIZE: u32 = 50;

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub page: Option<u32>,
    pub before: Option<String>,
}

impl PageQuery {
    /// Where the page starts; a `before` that is no run id is a 400.
    pub fn start(&self) -> Result<Start, ApiError> {
        if let Some(before) = &self.before {
            let id: RunId = before.parse().map_err(|e| {
                ApiError::new(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    format!("bad query parameter before: {e}"),
                )
            })?;
            return Ok(Start::Before(id));
        }
        Ok(match self.page.unwrap_or(1).max(1) {
            1 => Start::Newest,
            n => Start::Skip((n - 1).saturating_mul(PAGE_SIZE)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(page: Option<u32>, before: Option<&str>) -> Start {
        PageQuery { page, before: before.map(str::to_string) }.start().unwrap()
    }

    #[test]
    fn pages_count_from_one_and_never_overflow() {
        assert_eq!(start(None, None), Start::Newest);
        assert_eq!(start(Some(0), None), Start::Newest);
        assert_eq!(start(Some(3), None), Start::Skip(100));
        assert_eq!(start(Some(u32::MAX), None), Start::Skip(u32::MAX));
    }

    #[test]
    fn before_wins_and_must_be_a_run_id() {
        let id = "01a00000-0000-7000-8000-000000000077";
        assert_eq!(start(Some(3), Some(id)), Start::Before(id.parse().unwrap()));
        assert!(PageQuery { page: None, before: Some("../x".into()) }.start().is_err());
    }
}
