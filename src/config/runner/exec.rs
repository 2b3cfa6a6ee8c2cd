//! The hooks' `*_exec`: present, absolute, an executable file, all four the same one.

use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::document::{Custom, Runner};
use super::hook::{Hook, HOOKS, INSTALLED_AUTH, NO_AUTH};
use super::host::ExecProblem;
use super::Checker;

/// A hook's `*_exec` once checked: its value, line and resolved file.
pub(super) struct Exec {
    pub(super) hook: Hook,
    pub(super) value: String,
    pub(super) line: usize,
    pub(super) resolved: PathBuf,
}

impl Checker<'_> {
    /// The four `*_exec`: present, absolute, executable, all the same file. Returns the
    /// first hook's resolved executable and whether all four passed.
    pub(super) fn execs(&mut self, c: &Custom<'_>) -> (Option<Exec>, bool) {
        let mut first: Option<Exec> = None;
        let mut exec_ok = true;
        for hook in HOOKS {
            let Some(exec) = self.exec(c, hook, first.as_ref()) else {
                exec_ok = false;
                continue;
            };
            match &first {
                None => first = Some(exec),
                Some(f) => exec_ok &= self.same_exec(c.r, f, &exec),
            }
        }
        (first, exec_ok)
    }

    /// One hook's `*_exec` checked and resolved; `None` once a problem was reported (a
    /// missing key suggests `first`'s path, or the installed one).
    fn exec(&mut self, c: &Custom<'_>, hook: Hook, first: Option<&Exec>) -> Option<Exec> {
        let (r, custom) = (c.r, c.table);
        let key = format!("{}_exec", hook.name());
        let dotted = format!("runners.custom.{key}");
        let Some((value, line)) = self.string(c, &key) else {
            let suggestion = first.map_or(INSTALLED_AUTH, |f| f.value.as_str());
            if !custom.contains_key(key.as_str()) {
                self.problem(
                    r,
                    r.custom_line,
                    &dotted,
                    format!(
                        "missing: jacamar-auth runs all four hooks; add {key} = \"{suggestion}\""
                    ),
                );
            }
            return None;
        };
        let checked = check_exec_path(&value, c.no_auth).and_then(|()| self.resolve_exec(&value));
        let resolved = match checked {
            Ok(p) => p,
            Err(bad) => {
                self.problem(r, line, &dotted, bad.to_string());
                return None;
            }
        };
        Some(Exec {
            hook,
            value,
            line,
            resolved,
        })
    }

    /// The hook's file as the host resolves it, or what is wrong with it (missing, not
    /// executable, ...).
    fn resolve_exec(&self, value: &str) -> Result<PathBuf, BadExec> {
        self.host
            .executable(Path::new(value))
            .map_err(|why| BadExec::File {
                value: value.to_string(),
                why,
            })
    }

    /// Whether `exec` resolves to the same file as `first`; a different one is reported.
    fn same_exec(&mut self, r: &Runner<'_, '_>, first: &Exec, exec: &Exec) -> bool {
        if first.resolved == exec.resolved {
            return true;
        }
        let key = format!("{}_exec", exec.hook.name());
        let (value, first_value) = (&exec.value, &first.value);
        self.problem(
            r,
            exec.line,
            &format!("runners.custom.{key}"),
            format!(
                "\"{value}\" differs from {}_exec \"{first_value}\": all four \
                 hooks must run the same jacamar-auth; set {key} = \"{first_value}\"",
                first.hook.name()
            ),
        );
        false
    }

    /// A non-empty string key of `[runners.custom]` with its line; a wrong
    /// type is reported.
    fn string(&mut self, c: &Custom<'_>, key: &str) -> Option<(String, usize)> {
        let (r, custom) = (c.r, c.table);
        let (k, v) = custom.get_key_value(key)?;
        let line = self.line(k.span().start);
        match v.get_ref() {
            DeValue::String(s) if s.is_empty() => {
                self.problem(
                    r,
                    line,
                    &format!("runners.custom.{key}"),
                    format!("is empty: set {key} = \"{INSTALLED_AUTH}\""),
                );
                None
            }
            DeValue::String(s) => Some((s.to_string(), line)),
            other => {
                self.problem(
                    r,
                    line,
                    &format!("runners.custom.{key}"),
                    format!(
                        "expected a string, found {}: set {key} = \"{INSTALLED_AUTH}\"",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }
}

/// What is wrong with a hook's `*_exec`, with how to fix it.
#[derive(Debug, thiserror::Error)]
enum BadExec {
    /// A relative path.
    #[error(
        "\"{value}\" is not an absolute path: give jacamar-auth's full path \
         (e.g. \"{INSTALLED_AUTH}\")"
    )]
    NotAbsolute { value: String },
    /// The job-side `jacamar` named without `--no-auth` in the hooks' arguments.
    #[error(
        "\"{value}\" is the job-side binary: the hooks run jacamar-auth, \
         e.g. \"{}\" (or, for a runner that needs no account switch, `jacamar` with \
         \"{NO_AUTH}\" first in every hook's arguments)",
        sibling(.value, "jacamar-auth")
    )]
    JobSide { value: String },
    /// `--no-auth` given to something else than `jacamar`.
    #[error(
        "\"{value}\" is given \"{NO_AUTH}\", a flag of jacamar (the hooks without \
         authorization), not of jacamar-auth: run \"{}\", or drop \"{NO_AUTH}\"",
        sibling(.value, "jacamar")
    )]
    NoAuthNotJacamar { value: String },
    /// The file itself (missing, not executable, ...).
    #[error("\"{value}\" {why}: {}", file_fix(.why))]
    File { value: String, why: ExecProblem },
}

/// `name` in the folder of the hook's path `value`, for a message.
fn sibling(value: &str, name: &str) -> String {
    Path::new(value).with_file_name(name).display().to_string()
}

/// How to fix a hook's file that is missing or not executable.
fn file_fix(why: &ExecProblem) -> &'static str {
    if matches!(why, ExecProblem::NotFound) {
        "install jacamar-auth there (the jacamar-rs packages put it in \
         /opt/jacamar/bin) or fix the path"
    } else {
        "give it mode 0755 root:root (runner as root) or 0750 \
         root:gitlab-runner (the caps flavour), or fix the path"
    }
}

/// What is wrong with a hook's path before its file is looked at: not absolute, the
/// job-side `jacamar` named without `--no-auth` in the hooks' arguments, or `--no-auth`
/// given to something else than `jacamar`.
fn check_exec_path(value: &str, no_auth: bool) -> Result<(), BadExec> {
    let path = Path::new(value);
    let value = value.to_string();
    if !path.is_absolute() {
        return Err(BadExec::NotAbsolute { value });
    }
    let is_jacamar = path.file_name().and_then(|n| n.to_str()) == Some("jacamar");
    if is_jacamar && !no_auth {
        return Err(BadExec::JobSide { value });
    }
    if no_auth && !is_jacamar {
        return Err(BadExec::NoAuthNotJacamar { value });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each wrong `*_exec` is said in full, with its fix.
    #[test]
    fn each_wrong_exec_says_what_and_how_to_fix_it() {
        let said =
            |value: &str, no_auth: bool| check_exec_path(value, no_auth).unwrap_err().to_string();
        assert_eq!(
            said("bin/jacamar-auth", false),
            "\"bin/jacamar-auth\" is not an absolute path: give jacamar-auth's full path \
             (e.g. \"/opt/jacamar/bin/jacamar-auth\")"
        );
        assert_eq!(
            said("/opt/j/jacamar", false),
            "\"/opt/j/jacamar\" is the job-side binary: the hooks run jacamar-auth, e.g. \
             \"/opt/j/jacamar-auth\" (or, for a runner that needs no account switch, `jacamar` \
             with \"--no-auth\" first in every hook's arguments)"
        );
        assert_eq!(
            said("/opt/j/jacamar-auth", true),
            "\"/opt/j/jacamar-auth\" is given \"--no-auth\", a flag of jacamar (the hooks \
             without authorization), not of jacamar-auth: run \"/opt/j/jacamar\", or drop \
             \"--no-auth\""
        );
        assert!(check_exec_path("/opt/j/jacamar", true).is_ok());
        let file = |why| {
            BadExec::File {
                value: "/x".to_string(),
                why,
            }
            .to_string()
        };
        assert_eq!(
            file(ExecProblem::NotFound),
            "\"/x\" does not exist: install jacamar-auth there (the jacamar-rs packages put \
             it in /opt/jacamar/bin) or fix the path"
        );
        assert_eq!(
            file(ExecProblem::NotExecutable(0o644)),
            "\"/x\" is not executable (mode 0644): give it mode 0755 root:root (runner as \
             root) or 0750 root:gitlab-runner (the caps flavour), or fix the path"
        );
    }
}
