//! Integration tests: the real binaries through the real stage sequence.
//!
//! Several tests need root (creating directories owned by other uids, switching accounts);
//! CI runs as root. Those are ignored unless the `root-tests` feature is on (`#[cfg_attr(not(
//! feature = "root-tests"), ignore = ...)]`, `shape_tests!(root: ...)`), and start with
//! `require_root()`: `cargo test` as any user runs the others; `cargo test --features
//! root-tests`, as root, runs all (scripts/test.sh).

mod alloc;
mod auth_jwt;
mod auth_kit;
mod auth_policy;
mod auth_setuid;
mod batch_fakes;
mod batch_pbs;
mod batch_slurm;
mod builddirs;
mod containers;
mod containers_batch;
mod containers_ch;
mod demo;
mod harden;
mod harness;
mod health;
mod nfs_view;
mod poll_users;
mod refusals;
mod registry_kit;
mod responses;
mod runner_config;
mod scale_poll;
mod scale_wait;
mod sched_bin;
mod sched_stall;
mod sec_fs;
mod sec_policy;
mod sec_shell;
mod sec_superv;
mod sec_token;
mod sections;
mod signals;
mod sim;
mod stages;
