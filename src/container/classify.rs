//! What a failed `podman create` (which pulls the image) means, from its stderr, and what
//! the job log says about it. The texts are podman 4.3's, measured in
//! docs/containers-facts.md ("Error texts"); exit codes do not separate the cases (125 for
//! all of them), the text does.

use super::Image;

/// The kind of a failed pull or create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The registry refused the credentials (HTTP 401/403).
    Refused,
    /// The registry answered `denied`: refused, or (registries that hide what a token may
    /// not see, as GitLab's) a repository that does not exist.
    Denied,
    /// The repository or tag does not exist.
    NotFound,
    /// The registry's certificate is not trusted.
    Tls,
    /// The account has no subordinate uid/gid range.
    NoSubordinateIds,
    /// `newuidmap` could not map the ids (no_new_privs set, or a broken range).
    IdMapping,
    /// Anything else: podman's own failure.
    Other,
}

/// The class of podman's `stderr`.
pub fn classify(stderr: &str) -> Failure {
    let has = |s: &str| stderr.contains(s);
    if has("no subuid ranges found") || has("no subgid ranges found") {
        Failure::NoSubordinateIds
    } else if has("unauthorized: authentication required")
        || has("unable to retrieve auth token")
        || has("invalid username/password")
    {
        Failure::Refused
    } else if has("denied: requested access to the resource is denied") || has("denied:") {
        Failure::Denied
    } else if has("manifest unknown") || has("name unknown") {
        Failure::NotFound
    } else if has("x509:") || has("certificate signed by unknown authority") {
        Failure::Tls
    } else if has("newuidmap") || has("newgidmap") {
        Failure::IdMapping
    } else {
        Failure::Other
    }
}

impl Failure {
    /// Whether the job (its image, its project's settings) is at fault rather than the
    /// node: a build failure the user can act on, not a system failure.
    pub fn is_the_jobs(self) -> bool {
        matches!(self, Failure::Refused | Failure::Denied | Failure::NotFound)
    }
}

/// The job log's explanation of `failure` for `image` of the project `project` run as
/// `account`. `detail` is podman's last error line (already free of secrets: podman never
/// prints the auth file's content). Never names a credential.
pub fn message(
    failure: Failure,
    image: &Image,
    project: &str,
    account: &str,
    detail: &str,
) -> String {
    let (reg, repo) = (image.registry(), image.repository());
    let name = &image.name;
    let allowlist = format!(
        "check that the CI/CD job token allowlist of the image's project ({repo}, Settings > CI/CD > Job token permissions) includes this project ({project})"
    );
    let detail = crate::text::sanitize(detail.trim());
    match failure {
        Failure::Refused => format!(
            "jacamar: the registry {reg} refused the job token for image repository {repo} (image {name}): {allowlist}. Registry's answer: {detail}"
        ),
        Failure::Denied => format!(
            "jacamar: the registry {reg} refused the job token for image repository {repo} (image {name}), or the repository does not exist there: check the image name, and {allowlist}. Registry's answer: {detail}"
        ),
        Failure::NotFound => format!(
            "jacamar: image {name} was not found: the registry {reg} has no repository {repo} or no such tag; check the image name in the job's image:. Registry's answer: {detail}"
        ),
        Failure::Tls => format!(
            "the registry {reg}'s TLS certificate is not trusted on this node (image {name}): the administrator installs its CA in the system store or as /etc/containers/certs.d/{reg}/ca.crt ({detail})"
        ),
        Failure::NoSubordinateIds => format!(
            "account {account} has no subordinate uid/gid range in /etc/subuid and /etc/subgid: rootless podman needs both (usermod --add-subuids and --add-subgids) ({detail})"
        ),
        Failure::IdMapping => format!(
            "podman could not map account {account}'s ids with newuidmap/newgidmap (is [auth] no_new_privs set, or the account's /etc/subuid or /etc/subgid range broken?) ({detail})"
        ),
        Failure::Other => format!("podman could not create the job's container from image {name}: {detail}"),
    }
}

/// The class of a failed `ch-image pull`'s `stderr` (Charliecloud 0.31's texts,
/// docs/containers-facts.md §4); `auth`: whether a credential was given (`--auth`). With one,
/// "unauthorized or not in registry" comes only after the registry took it: the image is not
/// there; without one it may as well be a refusal.
pub fn classify_ch_image(stderr: &str, auth: bool) -> Failure {
    let has = |s: &str| stderr.contains(s);
    if has("no further authentication possible") {
        Failure::Refused
    } else if has("unauthorized or not in registry") {
        if auth {
            Failure::NotFound
        } else {
            Failure::Denied
        }
    } else if has("CERTIFICATE_VERIFY_FAILED") {
        Failure::Tls
    } else {
        Failure::Other
    }
}

/// The line of a Charliecloud tool's `stderr` worth quoting: the last `error:` line, else
/// the last non-empty line (a Python traceback's exception); at most 400 characters.
pub fn last_ch_error_line(stderr: &str) -> String {
    worth_quoting(
        stderr,
        &[|l| l.starts_with("error:") || l.contains(": error: ")],
    )
}

/// The line of podman's `stderr` worth quoting: the last `Error:` line, else the last
/// `level=error` line, else the last non-empty line; at most 400 characters.
pub fn last_error_line(stderr: &str) -> String {
    worth_quoting(
        stderr,
        &[|l| l.starts_with("Error:"), |l| l.contains("level=error")],
    )
}

/// The last non-empty (trimmed) line of `stderr` the first of `tests` accepts, else the
/// next test's, else the last non-empty line; at most 400 characters.
fn worth_quoting(stderr: &str, tests: &[fn(&str) -> bool]) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = tests
        .iter()
        .find_map(|t| lines.iter().rev().find(|l| t(l)))
        .or_else(|| lines.last())
        .copied()
        .unwrap_or("");
    pick.chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The texts of docs/containers-facts.md, "Error texts".
    const REFUSED: &str = "Trying to pull 127.0.0.1:5043/ci/debian:bookworm...\nError: initializing source docker://127.0.0.1:5043/ci/debian:bookworm: reading manifest bookworm in 127.0.0.1:5043/ci/debian: unauthorized: authentication required\n";
    const MISSING: &str = "Error: initializing source docker://H/ci/missing:bookworm: reading manifest bookworm in H/ci/missing: manifest unknown: manifest unknown\n";
    const NO_RANGE: &str = "time=\"x\" level=error msg=\"cannot find UID/GID for user jrs_c19a: no subuid ranges found for user \\\"jrs_c19a\\\" in /etc/subuid - check rootless mode in man pages.\"\nError: writing blob: adding layer with blob \"sha256:c731\": processing tar file(potentially insufficient UIDs or GIDs available in user namespace (requested 0:42 for /etc/gshadow)): exit status 1\n";
    const TLS: &str = "Error: initializing source docker://H/x:1: pinging container registry H: Get \"https://H/v2/\": x509: certificate signed by unknown authority\n";
    const GITLAB_DENIED: &str = "Error: initializing source docker://gl/g/p:1: reading manifest 1 in gl/g/p: denied: requested access to the resource is denied\n";

    #[test]
    fn podman_texts_are_classified() {
        assert_eq!(classify(REFUSED), Failure::Refused);
        assert_eq!(classify(MISSING), Failure::NotFound);
        assert_eq!(classify(NO_RANGE), Failure::NoSubordinateIds);
        assert_eq!(classify(TLS), Failure::Tls);
        assert_eq!(classify(GITLAB_DENIED), Failure::Denied);
        assert_eq!(classify("Error: something else\n"), Failure::Other);
    }

    #[test]
    fn messages_name_what_to_check() {
        let image = Image::checked("127.0.0.1:5043/ci/debian:bookworm", &[]).unwrap();
        let m = message(
            Failure::Refused,
            &image,
            "group/project",
            "u",
            &last_error_line(REFUSED),
        );
        for part in [
            "127.0.0.1:5043",
            "ci/debian",
            "refused the job token",
            "allowlist",
            "group/project",
        ] {
            assert!(m.contains(part), "{part} missing: {m}");
        }
        let m = message(
            Failure::NotFound,
            &image,
            "group/project",
            "u",
            &last_error_line(MISSING),
        );
        assert!(
            m.contains("not found") && m.contains("127.0.0.1:5043/ci/debian:bookworm"),
            "{m}"
        );
        assert!(!m.contains("allowlist"), "{m}");
        let m = message(
            Failure::NoSubordinateIds,
            &image,
            "g/p",
            "jrs_x",
            &last_error_line(NO_RANGE),
        );
        assert!(
            m.contains("account jrs_x") && m.contains("/etc/subuid"),
            "{m}"
        );
        assert_eq!(last_error_line("a\nb\n"), "b");
    }

    // docs/containers-facts.md §4, ch-image 0.31 with --auth.
    const CH_REFUSED: &str = "error: no further authentication possible, giving up\n";
    const CH_MISSING: &str = "error: unauthorized or not in registry: 127.0.0.1:5043/ci/missing:bookworm\nhint: if your registry needs authentication, use --auth\n";
    const CH_TLS: &str = "error: GET failed: HTTPSConnectionPool(host='127.0.0.1', port=5043): Max retries exceeded with url: /v2/ci/debian/manifests/bookworm (Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:992)')))\n";

    #[test]
    fn ch_image_texts_are_classified() {
        assert_eq!(classify_ch_image(CH_REFUSED, true), Failure::Refused);
        assert_eq!(classify_ch_image(CH_MISSING, true), Failure::NotFound);
        assert_eq!(classify_ch_image(CH_MISSING, false), Failure::Denied);
        assert_eq!(classify_ch_image(CH_TLS, true), Failure::Tls);
        assert_eq!(
            classify_ch_image("Traceback\nEOFError: x\n", true),
            Failure::Other
        );
        assert_eq!(
            last_ch_error_line(CH_MISSING),
            "error: unauthorized or not in registry: 127.0.0.1:5043/ci/missing:bookworm"
        );
        assert_eq!(
            last_ch_error_line("Traceback\nEOFError: x\n"),
            "EOFError: x"
        );
    }
}
