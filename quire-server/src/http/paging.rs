//! Pages of runs: the `?page=N` query both the API and the pages take, and
//! the window of rows it selects. Pages count from 1; anything lower is 1.

use serde::Deserialize;

/// Runs per page.
pub const PAGE_SIZE: u32 = 50;

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub page: Option<u32>,
}

/// One page's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub number: u32,
    pub offset: u32,
}

impl Page {
    pub fn from_query(query: &PageQuery) -> Page {
        let number = query.page.unwrap_or(1).max(1);
        Page { number, offset: (number - 1).saturating_mul(PAGE_SIZE) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_count_from_one_and_never_overflow() {
        assert_eq!(Page::from_query(&PageQuery { page: None }), Page { number: 1, offset: 0 });
        assert_eq!(Page::from_query(&PageQuery { page: Some(0) }), Page { number: 1, offset: 0 });
        assert_eq!(Page::from_query(&PageQuery { page: Some(3) }), Page { number: 3, offset: 100 });
        assert_eq!(Page::from_query(&PageQuery { page: Some(u32::MAX) }).offset, u32::MAX);
    }
}
