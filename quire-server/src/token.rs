//! Run tokens: minting them and hashing them for storage. A token is the
//! only credential a run's executor holds; the database keeps just its
//! SHA-256, so a leaked database does not let anyone act as a run.

use sha2::{Digest, Sha256};

/// A new token: 256 random bits, hex.
pub fn mint() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex(&bytes)
}

/// The hex SHA-256 of a token, as stored in `runs.token_hash`.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_fresh_and_hashes_are_stable_hex() {
        let (a, b) = (mint(), mint());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash("tok"), hash("tok"));
        assert_eq!(hash("tok").len(), 64);
        assert!(hash(&a).bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
