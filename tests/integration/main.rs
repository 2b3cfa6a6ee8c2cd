//! Integration tests: the real binaries through the real stage sequence.
//!
//! Several tests need root (creating directories owned by other uids); CI runs as root.

mod auth_jwt;
mod auth_kit;
mod auth_policy;
mod auth_setuid;
mod batch_fakes;
mod batch_pbs;
mod batch_slurm;
mod builddirs;
mod demo;
mod harden;
mod harness;
mod health;
mod nfs_view;
mod poll_users;
mod refusals;
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
