//! The privilege boundary: who runs the job, with what environment, and what the job log
//! may say about failures.
//!
//! Today only `downscope = "none"` is implemented: the job runs as the account that runs
//! jacamar-auth. `setuid` and `sudo` are refused with a clear error until they land.

pub mod audit;
pub mod env;
pub mod obfuscate;

use crate::config::{Config, Downscope};
use crate::protocol::Account;

/// Authorization failures. Their text is for the admin; the job log gets
/// [`obfuscate::public_message`] unless `--unobfuscated`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("downscope \"{0}\" is not supported by this build of jacamar-rs yet; use downscope = \"none\"")]
    Unsupported(&'static str),
    #[error("failed to look up the local account of uid {uid}: {why}")]
    Lookup { uid: u32, why: String },
}

/// The local account a job will run as, decided by the privileged side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub account: Account,
    pub downscope: Downscope,
}

/// Decide who runs the job.
pub fn authorize(config: &Config) -> Result<Target, AuthError> {
    match config.auth.downscope {
        Downscope::None => {
            let uid = nix::unistd::Uid::current();
            Ok(Target {
                account: account_of(uid.as_raw())?,
                downscope: Downscope::None,
            })
        }
        Downscope::Setuid => Err(AuthError::Unsupported("setuid")),
        Downscope::Sudo => Err(AuthError::Unsupported("sudo")),
    }
}

/// The passwd entry of `uid`.
pub fn account_of(uid: u32) -> Result<Account, AuthError> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .map_err(|e| AuthError::Lookup {
            uid,
            why: e.to_string(),
        })?
        .ok_or_else(|| AuthError::Lookup {
            uid,
            why: "no such user in the user database".into(),
        })?;
    Ok(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        shell: user.shell,
    })
}
