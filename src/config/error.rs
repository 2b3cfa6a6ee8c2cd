//! [`Problem`] and [`ConfigError`]: what is wrong with a configuration file,
//! worded the way admins know from upstream Jacamar's messages
//! (`Near line 8 (last key parsed 'auth.user_blocklist'): ...`).

use std::fmt::Write as _;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number, when the problem points at text in the file.
    pub line: Option<usize>,
    /// Dotted key (`auth.user_blocklist`) or table (`auth.runas`) concerned.
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(line: Option<usize>, key: Option<String>, message: impl Into<String>) -> Problem {
        Problem {
            line,
            key,
            message: message.into(),
        }
    }

    /// The problem on one line, prefixed by where it was found:
    /// `<origin>: Near line N (last key parsed 'x.y'): message`, or
    /// `<origin>: key 'x.y': message` when the line is unknown.
    pub fn render(&self, origin: &str) -> String {
        let mut out = String::new();
        if !origin.is_empty() {
            let _ = write!(out, "{origin}: ");
        }
        match (self.line, self.key.as_deref()) {
            (Some(line), Some(key)) => {
                let _ = write!(out, "Near line {line} (last key parsed '{key}'): ");
            }
            (Some(line), None) => {
                let _ = write!(out, "Near line {line}: ");
            }
            (None, Some(key)) => {
                let _ = write!(out, "key '{key}': ");
            }
            (None, None) => {}
        }
        out.push_str(&self.message);
        out
    }
}

/// One problem of a file, rendered on one line against the file's name; the problems of
/// one file make a [`Problems`] error.
pub trait FileProblem {
    /// What a summary calls the file's problems (`invalid configuration`).
    const SUMMARY: &'static str;

    /// The problem on one line, prefixed by `origin` (the file) when not empty.
    fn render(&self, origin: &str) -> String;
}

impl FileProblem for Problem {
    const SUMMARY: &'static str = "invalid configuration";

    fn render(&self, origin: &str) -> String {
        Problem::render(self, origin)
    }
}

/// Every problem of one file: a jacamar configuration ([`ConfigError`]) or the runner's
/// `config.toml` ([`super::runner::RunnerConfigError`]).
///
/// `Display` is a single line (summary and the first problem) fit for a job
/// log; [`Problems::report`] lists them all.
#[derive(Debug, thiserror::Error)]
#[error("{}", summary(.origin, .problems))]
pub struct Problems<P: FileProblem> {
    /// Where the text came from (a path, or a name such as `<embedded default>`).
    pub origin: String,
    pub problems: Vec<P>,
}

/// Every problem of one configuration file.
pub type ConfigError = Problems<Problem>;

impl<P: FileProblem> Problems<P> {
    pub fn new(origin: impl Into<String>, problems: Vec<P>) -> Problems<P> {
        Problems {
            origin: origin.into(),
            problems,
        }
    }

    /// Every problem on its own line, in file order.
    pub fn report(&self) -> String {
        let lines: Vec<String> = self
            .problems
            .iter()
            .map(|p| p.render(&self.origin))
            .collect();
        lines.join("\n")
    }
}

fn summary<P: FileProblem>(origin: &str, problems: &[P]) -> String {
    let what = P::SUMMARY;
    match problems {
        [] => format!("{what}: {origin}: unknown problem"),
        [only] => format!("{what}: {}", only.render(origin)),
        [first, rest @ ..] => format!(
            "{what} ({} problems, first shown): {}",
            rest.len() + 1,
            first.render(origin)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_form() {
        let origin = "/etc/jacamar.toml";
        let cases = [
            (
                Problem::new(Some(8), Some("auth.user_blocklist".into()), "boom"),
                "/etc/jacamar.toml: Near line 8 (last key parsed 'auth.user_blocklist'): boom",
            ),
            (
                Problem::new(None, Some("general.executor".into()), "missing"),
                "/etc/jacamar.toml: key 'general.executor': missing",
            ),
            (
                Problem::new(Some(1), None, "bad"),
                "/etc/jacamar.toml: Near line 1: bad",
            ),
            (
                Problem::new(None, None, "unreadable"),
                "/etc/jacamar.toml: unreadable",
            ),
        ];
        for (problem, want) in cases {
            assert_eq!(problem.render(origin), want);
        }
    }

    #[test]
    fn display_is_one_line_with_first_problem() {
        let err = ConfigError::new(
            "x.toml",
            vec![
                Problem::new(Some(2), Some("general.name".into()), "first"),
                Problem::new(Some(5), Some("auth.downscope".into()), "second"),
            ],
        );
        let shown = err.to_string();
        assert!(!shown.contains('\n'));
        assert!(shown.contains("2 problems"));
        assert!(shown.contains("x.toml: Near line 2 (last key parsed 'general.name'): first"));
        assert_eq!(err.report().lines().count(), 2);
        assert!(err
            .report()
            .lines()
            .nth(1)
            .unwrap_or("")
            .ends_with("second"));
    }
}
