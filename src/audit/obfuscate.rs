//! What the job log may say about a failure of the privileged side.
//!
//! Without `--unobfuscated` the job log gets a generic sentence for the failure's category
//! and an error id; the full reason goes to the audit log (and to the runner's log through
//! `cleanup`, whose output never reaches the job log).

use std::time::{SystemTime, UNIX_EPOCH};

/// Categories of failure, each with the sentence a CI user sees (defined with the channel,
/// which carries the category of a failure of `jacamar`).
pub use crate::protocol::Category;

/// The sentence the job log gets for a category.
pub fn public_message(c: Category) -> &'static str {
    match c {
        Category::Configuration => {
            "the runner's Jacamar configuration could not be used; please contact the runner's administrator"
        }
        Category::Authorization => "the job could not be authorized to run on this runner",
        Category::Environment => "the job's environment from the runner is incomplete or invalid",
        Category::Directories => {
            "the job's directories could not be prepared; please contact the runner's administrator"
        }
        Category::Scheduler => {
            "the batch scheduler did not take the job or it could not be followed; please contact the runner's administrator"
        }
        Category::Container => {
            "the job's image could not be run on this node; please contact the runner's administrator"
        }
        Category::Internal => "an internal error occurred in the CI driver",
    }
}

/// A short id that ties the job log's generic line to the audit log's full one: 12 hex
/// digits from the system's random source (not a secret; should that source fail, the
/// clock and the process id, which still tell two failures apart).
pub fn error_id() -> String {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 6];
    if ring::rand::SystemRandom::new().fill(&mut id).is_err() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mix = now ^ (u128::from(std::process::id()) << 24);
        id.copy_from_slice(&mix.to_le_bytes()[..6]);
    }
    crate::hex::encode(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twelve_hex_digits() {
        let id = error_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, error_id(), "two ids in a row must differ");
    }
}
