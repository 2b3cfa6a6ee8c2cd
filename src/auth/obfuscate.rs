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
        Category::Internal => "an internal error occurred in the CI driver",
    }
}

/// A short id that ties the job log's generic line to the audit log's full one.
pub fn error_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mix = now ^ ((std::process::id() as u128) << 64);
    // FNV-1a over the bytes: short, stable width, not a secret.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in mix.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_twelve_hex_digits() {
        let id = error_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
