//! A job's `image:` and the registry credentials GitLab sends with it, as the runner hands
//! them to a custom executor: in the job response (`image.name`, `credentials` entries of
//! type `registry`) and as `CUSTOM_ENV_CI_JOB_IMAGE`. Secrets come from files, never from
//! this emulator's command line (which every local user can read in /proc).

use std::path::Path;

use crate::error::SimError;

/// GitLab's user name for job-token authentication (its own registry, git, the API).
pub const TOKEN_USER: &str = "gitlab-ci-token";

/// One `credentials` entry of type `registry`.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// `HOST[:PORT]`, no scheme (as GitLab sends it).
    pub url: String,
    pub username: String,
    pub password: Password,
}

/// Where a credential's password comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// The job token (GitLab's own registry: user `gitlab-ci-token`).
    JobToken,
    /// Read from a file.
    Given(String),
}

/// Never shows a given password.
impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Password::JobToken => "<the job token>",
            Password::Given(_) => "<hidden>",
        })
    }
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl RegistryCredential {
    /// The entry of the job response, with `job_token` for [`Password::JobToken`].
    pub fn to_json(&self, job_token: &str) -> serde_json::Value {
        let password = match &self.password {
            Password::JobToken => job_token,
            Password::Given(p) => p.as_str(),
        };
        serde_json::json!({"type": "registry", "url": self.url, "username": self.username,
            "password": password})
    }
}

fn bad(flag: &'static str, arg: &str, why: impl Into<String>) -> SimError {
    SimError::Arg {
        flag,
        arg: arg.to_string(),
        why: why.into(),
    }
}

/// `--image NAME` (or the job file's `image`): a non-empty name without blanks or control
/// characters; the driver checks the rest (its reference syntax) as it would GitLab's.
pub fn check_image(flag: &'static str, name: &str) -> Result<(), SimError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            flag,
            name,
            "an image name is not empty and has no blanks, e.g. registry.example.com:5050/group/image:tag",
        ));
    }
    Ok(())
}

/// `--registry-credential HOST[:PORT]` (user `gitlab-ci-token`, the job token as password,
/// as GitLab sends for its own registry) or `HOST[:PORT],USER,PASSWORD-FILE`.
pub fn parse_registry_credential(arg: &str) -> Result<RegistryCredential, SimError> {
    const FLAG: &str = "--registry-credential";
    let parts: Vec<&str> = arg.split(',').collect();
    let url = parts[0];
    if url.is_empty()
        || url.contains("://")
        || url.contains('/')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            FLAG,
            arg,
            "the registry is HOST[:PORT] without a scheme or path, as GitLab sends it (e.g. registry.example.com:5050)",
        ));
    }
    match parts.as_slice() {
        [_] => Ok(RegistryCredential {
            url: url.to_string(),
            username: TOKEN_USER.to_string(),
            password: Password::JobToken,
        }),
        [_, user, file] if !user.is_empty() && !file.is_empty() => Ok(RegistryCredential {
            url: url.to_string(),
            username: user.to_string(),
            password: Password::Given(read_secret(FLAG, Path::new(file))?),
        }),
        _ => Err(bad(
            FLAG,
            arg,
            "expected HOST[:PORT] or HOST[:PORT],USER,PASSWORD-FILE (the password is read from the file, never given on the command line)",
        )),
    }
}

/// A secret read from `path`: its first line without the line end; not empty, no blanks or
/// control characters. Errors name the file, never its content.
pub fn read_secret(flag: &'static str, path: &Path) -> Result<String, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
        what: format!("{flag}: failed to read {}", path.display()),
        source,
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() || line.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            flag,
            &path.display().to_string(),
            "the file's first line must be the secret alone (not empty, no blanks)",
        ));
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_parse_and_hide_the_password() {
        let c = parse_registry_credential("127.0.0.1:5050").unwrap();
        assert_eq!(
            (c.url.as_str(), c.username.as_str(), &c.password),
            ("127.0.0.1:5050", TOKEN_USER, &Password::JobToken)
        );
        assert_eq!(c.to_json("tok")["password"], "tok");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = parse_registry_credential(&format!("reg:1,bob,{}", f.display())).unwrap();
        assert!(c.password == Password::Given("s3cret".into()));
        assert_eq!(c.to_json("tok")["password"], "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        for arg in [
            "",
            "https://reg:1",
            "reg/x",
            "reg:1,bob",
            "reg:1,,f",
            "reg:1,a,b,c",
        ] {
            let e = parse_registry_credential(arg).unwrap_err().to_string();
            assert!(e.contains("--registry-credential"), "{arg}: {e}");
        }
        let e = parse_registry_credential("reg:1,bob,/nonexistent/pw")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/pw"), "{e}");
        std::fs::write(&f, "two words\n").unwrap();
        let e = read_secret("--job-token-file", &f).unwrap_err().to_string();
        assert!(!e.contains("two words") && e.contains("first line"), "{e}");
    }

    #[test]
    fn image_names() {
        assert!(check_image("--image", "reg:1/a/b:c").is_ok());
        for n in ["", "a b", "a\nb"] {
            assert!(check_image("--image", n).is_err(), "{n:?}");
        }
    }
}
