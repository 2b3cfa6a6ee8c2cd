//! Integration tests: the real binaries through the real stage sequence.
//!
//! Several tests need root (creating directories owned by other uids); CI runs as root.

mod batch_pbs;
mod batch_slurm;
mod harness;
mod refusals;
mod signals;
mod sim;
mod stages;
