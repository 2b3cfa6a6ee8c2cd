//! The supervisor: signals, timeouts and sweeping for one child at a time.
//!
//! The chain is `runner -> jacamar-auth -> jacamar -> bash -> job`. `jacamar-auth` supervises
//! `jacamar` through the control channel of [`crate::protocol`] (it may not be allowed to
//! signal a downscoped uid); `jacamar` is a child subreaper and supervises the user's shell
//! as a process group plus every descendant. See `docs/supervision.md` for the design.

pub mod cgroup;
pub mod child;
pub mod group;
pub mod machine;
pub mod procfs;
pub mod relay;
pub mod signals;

pub use child::{AnyChild, PidfdChild, Waitable};
pub use machine::{
    escalates_now, supervise, ChildEnd, Exit, GroupTerminator, Policy, Reason, Request, Terminator,
};
pub use signals::OsSignals;

use std::time::Duration;

/// Grace added to the job's maximum duration before our own backstop fires (10 minutes, as
/// upstream). The driver's environment (not the job's) may shorten it for tests with
/// `JACAMAR_RS_BACKSTOP_GRACE` (a duration in seconds, e.g. `2`; a negative, non-finite or
/// too large value is ignored).
pub fn backstop_grace() -> Duration {
    std::env::var("JACAMAR_RS_BACKSTOP_GRACE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .unwrap_or(Duration::from_secs(600))
}
