//! The jacamar configurations the hooks' `--configuration FILE` name: absolute, valid,
//! and, for `jacamar --no-auth` hooks, one that lets jobs run without authorization.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::document::Runner;
use super::hook::Hook;
use super::Checker;
use crate::config::Config;

impl Checker<'_> {
    /// Each distinct `--configuration FILE`, checked once; config_args' file, when it loads.
    pub(super) fn load_configurations(
        &mut self,
        r: &Runner<'_, '_>,
        configurations: &[(Hook, String, usize)],
    ) -> Option<(PathBuf, Config)> {
        let mut config = None;
        let mut checked = HashSet::new();
        for (hook, file, line) in configurations {
            if !checked.insert(file.clone()) {
                continue;
            }
            let key = format!("runners.custom.{}_args", hook.name());
            if let Some(c) = self.load_configuration(r, &key, file, *line) {
                if *hook == Hook::Config {
                    config = Some((PathBuf::from(file), c));
                }
            }
        }
        config
    }

    /// `jacamar --no-auth` hooks: their configuration must let jobs run without an account
    /// switch and without authorization (`downscope = "none"`, none of the `[auth]` keys
    /// that judge the GitLab user), else every job would be refused.
    pub(super) fn no_auth_configuration(&mut self, r: &Runner<'_, '_>, file: &Path, c: &Config) {
        let mut problems = Vec::new();
        if c.auth.downscope != crate::config::Downscope::None {
            problems.push(format!(
                "[auth] downscope = \"{}\" in {}: `jacamar --no-auth` never switches accounts, \
                 so every job would be refused; set downscope = \"none\" or run the hooks \
                 through jacamar-auth",
                c.auth.downscope.as_str(),
                file.display()
            ));
        }
        for key in c.auth.policy_keys_set() {
            problems.push(format!(
                "[auth] {key} in {}: `jacamar --no-auth` does not authorize jobs, so every \
                 job would be refused; remove it or run the hooks through jacamar-auth",
                file.display()
            ));
        }
        for message in problems {
            self.problem(r, r.custom_line, "runners.custom.config_args", message);
        }
    }

    /// One `--configuration FILE`: absolute and a valid jacamar configuration, else reported.
    fn load_configuration(
        &mut self,
        r: &Runner<'_, '_>,
        key: &str,
        file: &str,
        line: usize,
    ) -> Option<Config> {
        if !Path::new(file).is_absolute() {
            self.problem(
                r,
                line,
                key,
                format!(
                    "--configuration \"{file}\" is relative, and the runner starts every hook \
                     in its own temporary directory: give the absolute path"
                ),
            );
            return None;
        }
        match self.host.jacamar_config(Path::new(file)) {
            Ok(c) => Some(c),
            Err(e) => {
                let first = e.problems.first().map(|p| p.render("")).unwrap_or_default();
                let count = e.problems.len();
                self.problem(
                    r,
                    line,
                    key,
                    format!(
                        "--configuration \"{file}\" is not a valid jacamar configuration \
                         ({count} problem{}, first: {first}): fix it (jacamar-auth validate \
                         --configuration {file})",
                        if count == 1 { "" } else { "s" }
                    ),
                );
                None
            }
        }
    }
}
