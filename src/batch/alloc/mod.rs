//! Pipeline allocations: one Slurm allocation shared by the opted-in jobs of a pipeline.
//!
//! The first job of a pipeline that opts in (`JACAMAR_REUSE_ALLOCATION=pipeline` with
//! `[batch] allocation_reuse`) submits one `sbatch` whose script is a small bash holder
//! ([`holder`]); every opted-in job of the pipeline then runs its build script as a step of
//! that allocation (`srun --jobid`). The allocation is found again through a record in the
//! user's base dir, kept alive by one lease file per job using it, and ended by the holder
//! itself once it was unused for `allocation_idle_timeout` ([`dir`]). The design, and the
//! facts measured on Slurm that it stands on: docs/allocations-design.md and
//! docs/allocations-facts.md.
//!
//! This module holds the pieces that need no scheduler: the key, the directory with its
//! lock, record and leases, and the holder's text.

pub mod dir;
pub mod holder;

use std::path::PathBuf;
use std::time::Duration;

pub use dir::{AllocDir, AllocRecord, LockGuard};

/// The key of a pipeline allocation: the first 32 hex digits of
/// sha256(uid `\0` project `\0` pipeline `\0` word `\0` word ...), over the scheduler
/// arguments as submitted. Jobs of the same user, project and pipeline with the same
/// arguments share an allocation; anything else gets its own. It names the allocation's
/// files in [`AllocDir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

/// How many hex digits of the digest a key keeps.
const KEY_DIGITS: usize = 32;

/// How many of the key's hex digits the allocation's job name shows.
const NAME_DIGITS: usize = 16;

impl Key {
    /// The key of `uid`'s allocation for `pipeline_id` of `project_id` with the scheduler
    /// arguments `args`. Each part is preceded by a NUL byte (the uid, in decimal, comes
    /// first), so `["a b"]` and `["a", "b"]` differ; the parts come from environment
    /// variables, which cannot hold a NUL byte themselves.
    pub fn derive(uid: u32, project_id: &str, pipeline_id: &str, args: &[String]) -> Key {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(uid.to_string().as_bytes());
        for part in [project_id, pipeline_id]
            .into_iter()
            .chain(args.iter().map(String::as_str))
        {
            ctx.update(b"\0");
            ctx.update(part.as_bytes());
        }
        let mut hex = crate::hex::encode(ctx.finish().as_ref());
        hex.truncate(KEY_DIGITS);
        Key(hex)
    }

    /// A key from text: exactly 32 lower-case hex digits, `None` for anything else.
    pub fn parse(s: &str) -> Option<Key> {
        let ok = s.len() == KEY_DIGITS && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Key(s.to_string()))
    }

    /// The 32 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The allocation's Slurm job name: `jacamar-alloc-<first 16 hex digits of the key>`. A
/// name short enough for `squeue`'s columns; the files use the whole key.
pub fn job_name(key: &Key) -> String {
    format!("jacamar-alloc-{}", &key.0[..NAME_DIGITS])
}

/// Failures with the allocation directory and its files. Each names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// A file system call on one of the allocation's files failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was being done, as a verb phrase (`open`, `create the lease`, ...).
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The allocation directory is not a private directory of the user's own.
    #[error(
        "{path} is not a private directory of ours ({why}; mode {mode:o}, owner uid {owner}): not using it for pipeline allocations"
    )]
    NotPrivate {
        path: PathBuf,
        /// What is wrong: a symbolic link, not a directory, another owner, open to others.
        why: &'static str,
        /// The permission bits (`st_mode & 0o7777`).
        mode: u32,
        owner: u32,
    },
    /// The lock stayed held by another process for the whole bound.
    #[error("{path} stayed locked by another process for {waited:?}: gave up waiting for the allocation lock")]
    LockTimeout { path: PathBuf, waited: Duration },
    /// The record is not one this module would write (it is untrusted: the job can write
    /// the user's base dir). The sentence names the file and shows the offending text
    /// escaped ([`crate::text::sanitize`]).
    #[error("{0}")]
    Refused(String),
    /// A record to write holds text that would not read back (a space or a control
    /// character in a field, an empty field).
    #[error("refusing to write {path}: {why}")]
    BadRecord { path: PathBuf, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_is_stable_for_a_fixed_input() {
        let k = Key::derive(1000, "17", "4711", &words(&["-n1", "-t", "30"]));
        // sha256("1000\x0017\x004711\x00-n1\x00-t\x0030"), first 32 hex digits.
        assert_eq!(k.as_str(), "c34b267cbd2f821cf11fa2b7b2b621cf");
        assert_eq!(k.as_str().len(), 32);
        assert_eq!(job_name(&k), "jacamar-alloc-c34b267cbd2f821c");
    }

    #[test]
    fn every_part_of_the_input_changes_the_key() {
        let base = Key::derive(1000, "17", "4711", &words(&["a", "b"]));
        let others = [
            Key::derive(1001, "17", "4711", &words(&["a", "b"])),
            Key::derive(1000, "18", "4711", &words(&["a", "b"])),
            Key::derive(1000, "17", "4712", &words(&["a", "b"])),
            Key::derive(1000, "17", "4711", &words(&["a", "c"])),
            Key::derive(1000, "17", "4711", &words(&["a b"])),
            Key::derive(1000, "17", "4711", &words(&["ab"])),
            Key::derive(1000, "17", "4711", &words(&["a"])),
            Key::derive(1000, "17", "4711", &words(&["a", "b", ""])),
            Key::derive(1000, "174711", "", &words(&["a", "b"])),
        ];
        for (i, k) in others.iter().enumerate() {
            assert_ne!(k, &base, "variant {i}");
        }
        assert_ne!(
            Key::derive(1000, "17", "4711", &words(&["a b"])),
            Key::derive(1000, "17", "4711", &words(&["a", "b"]))
        );
        assert_eq!(base, Key::derive(1000, "17", "4711", &words(&["a", "b"])));
    }

    #[test]
    fn a_key_parses_from_32_lower_case_hex_digits_only() {
        let k = Key::derive(0, "1", "2", &[]);
        assert_eq!(Key::parse(k.as_str()), Some(k.clone()));
        assert_eq!(k.to_string(), k.as_str());
        assert!(Key::parse("0123456789abcdef0123456789abcdef").is_some());
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcdeg",
            "../3456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcd\n",
            "0123456789abcdef 123456789abcdef",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad:?}");
        }
    }
}
