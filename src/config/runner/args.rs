//! The hooks' `*_args`: `[-u] <hook>`, with `--configuration FILE` for config and
//! cleanup (the same FILE in both), as documented.

use toml::de::DeValue;

use super::document::{Custom, Runner};
use super::hook::{is_global_flag, leading_flags, Hook, ARGS_PLACEHOLDER, HOOKS, NO_AUTH};
use super::Checker;

/// A hook's `*_args` once read.
struct Args {
    configuration: Option<(String, usize)>,
}

impl Checker<'_> {
    /// The four `*_args` checked; the `--configuration FILE`s they give, with hook and line.
    pub(super) fn configurations(&mut self, c: &Custom<'_>) -> Vec<(Hook, String, usize)> {
        let mut configurations = Vec::new();
        for hook in HOOKS {
            let args = self.args(c, hook);
            if let Some((file, line)) = args.configuration {
                configurations.push((hook, file, line));
            }
        }
        configurations
    }

    /// Whether cleanup_args names config_args' file; a different one is reported.
    pub(super) fn cleanup_reads_config_file(
        &mut self,
        r: &Runner<'_, '_>,
        configurations: &[(Hook, String, usize)],
    ) {
        let find = |hook| configurations.iter().find(|(h, _, _)| *h == hook);
        let (Some((_, cfg, _)), Some((_, clean, clean_line))) =
            (find(Hook::Config), find(Hook::Cleanup))
        else {
            return;
        };
        if cfg != clean {
            self.problem(
                r,
                *clean_line,
                "runners.custom.cleanup_args",
                format!(
                    "--configuration \"{clean}\" differs from config_args' \"{cfg}\": cleanup \
                     must read the file the job was configured with; use \"{cfg}\" in both"
                ),
            );
        }
    }

    /// Check `<hook>_args` against the documented form; the `--configuration FILE` it gives.
    fn args(&mut self, c: &Custom<'_>, hook: Hook) -> Args {
        let r = c.r;
        let mut out = Args {
            configuration: None,
        };
        let Some((words, line)) = self.arg_words(c, hook) else {
            return out;
        };
        if c.no_auth && !leading_flags(c.table, hook).contains(&NO_AUTH) {
            let message = format!(
                "another hook runs `jacamar --no-auth`: every hook must; put \"{NO_AUTH}\" \
                 first in {}",
                hook.args_key()
            );
            self.args_problem(r, hook, line, message);
        }
        let Some(after) = self.sub_command(r, hook, &words, line) else {
            return out;
        };
        out.configuration = self.after_sub_command(r, hook, after);
        if hook.takes_configuration() && out.configuration.is_none() {
            let key = hook.args_key();
            self.args_problem(
                r,
                hook,
                line,
                format!(
                    "no --configuration FILE: {} must be given the jacamar configuration; write \
                     {key} = {}",
                    hook.name(),
                    hook.documented_args(ARGS_PLACEHOLDER)
                ),
            );
        }
        out
    }

    /// Report a problem of `<hook>_args` at `line`.
    fn args_problem(&mut self, r: &Runner<'_, '_>, hook: Hook, line: usize, message: String) {
        let dotted = format!("runners.custom.{}", hook.args_key());
        self.problem(r, line, &dotted, message);
    }

    /// `<hook>_args` as words with their lines, and the key's line; a missing key, a value
    /// that is not an array, or an item that is not a string is reported and gives `None`.
    fn arg_words(&mut self, c: &Custom<'_>, hook: Hook) -> Option<(Vec<(String, usize)>, usize)> {
        let (r, custom) = (c.r, c.table);
        let key = hook.args_key();
        let documented = hook.documented_args(ARGS_PLACEHOLDER);
        let Some((k, v)) = custom.get_key_value(key.as_str()) else {
            let dotted = format!("runners.custom.{key}");
            self.problem(
                r,
                r.custom_line,
                &dotted,
                format!("missing: jacamar-auth needs its sub-command; add {key} = {documented}"),
            );
            return None;
        };
        let line = self.line(k.span().start);
        let DeValue::Array(items) = v.get_ref() else {
            let found = v.get_ref().type_str();
            let message =
                format!("expected an array of strings, found {found}: write {key} = {documented}");
            self.args_problem(r, hook, line, message);
            return None;
        };
        let mut words = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let l = self.line(item.span().start);
            match item.get_ref() {
                DeValue::String(s) => words.push((s.to_string(), l)),
                other => {
                    let found = other.type_str();
                    let message =
                        format!("item {i} is {found}, not a string: write {key} = {documented}");
                    self.args_problem(r, hook, l, message);
                    return None;
                }
            }
        }
        Some((words, line))
    }

    /// The words after `[-u ...] <hook>`; a missing or wrong sub-command (or an unknown
    /// flag before it) is reported at its line (the key's `line` when absent) and gives `None`.
    fn sub_command<'w>(
        &mut self,
        r: &Runner<'_, '_>,
        hook: Hook,
        words: &'w [(String, usize)],
        line: usize,
    ) -> Option<&'w [(String, usize)]> {
        let key = hook.args_key();
        let documented = hook.documented_args(ARGS_PLACEHOLDER);
        let start = words
            .iter()
            .position(|(w, _)| !is_global_flag(w))
            .unwrap_or(words.len());
        let Some((sub, sub_line)) = words.get(start) else {
            let message = format!(
                "no sub-command: jacamar-auth needs '{}'; write {key} = {documented}",
                hook.name()
            );
            self.args_problem(r, hook, line, message);
            return None;
        };
        if sub == hook.name() {
            return Some(&words[start + 1..]);
        }
        let message = if sub.starts_with('-') {
            format!(
                "'{sub}' before the sub-command is not a global flag of jacamar-auth (only \
                 -u/--unobfuscated is; jacamar also takes --no-auth): write {key} = {documented}"
            )
        } else {
            format!(
                "the sub-command is '{sub}' but the {} hook needs '{}': write {key} = {documented}",
                hook.name(),
                hook.name()
            )
        };
        self.args_problem(r, hook, *sub_line, message);
        None
    }

    /// The words after the sub-command: only `--configuration FILE` (or `=FILE`) belongs
    /// there; anything else is reported. The FILE kept, with its line.
    fn after_sub_command(
        &mut self,
        r: &Runner<'_, '_>,
        hook: Hook,
        words: &[(String, usize)],
    ) -> Option<(String, usize)> {
        let key = hook.args_key();
        let mut configuration = None;
        let mut after = words.iter();
        while let Some((w, l)) = after.next() {
            if is_global_flag(w) {
                let message = format!(
                    "'{w}' comes after the sub-command '{}': global flags go before it; \
                     move it to the front ([\"{w}\", \"{}\", ...])",
                    hook.name(),
                    hook.name()
                );
                self.args_problem(r, hook, *l, message);
                continue;
            }
            let value = if w == "--configuration" {
                match after.next() {
                    Some((file, fl)) if !file.starts_with('-') && !file.is_empty() => {
                        Some((file.clone(), *fl))
                    }
                    _ => {
                        let message = format!(
                            "'--configuration' has no file after it: write {key} = {}",
                            hook.documented_args(ARGS_PLACEHOLDER)
                        );
                        self.args_problem(r, hook, *l, message);
                        continue;
                    }
                }
            } else {
                w.strip_prefix("--configuration=")
                    .map(|file| (file.to_string(), *l))
            };
            match value {
                Some((file, fl)) => self.configuration_arg(r, hook, &mut configuration, file, fl),
                None => self.unexpected_arg(r, hook, w, *l),
            }
        }
        configuration
    }

    /// A `--configuration FILE`: kept when the hook takes one and none is kept yet; a
    /// second one, or one given to prepare or run, is reported.
    fn configuration_arg(
        &mut self,
        r: &Runner<'_, '_>,
        hook: Hook,
        configuration: &mut Option<(String, usize)>,
        file: String,
        line: usize,
    ) {
        let key = hook.args_key();
        let message = if !hook.takes_configuration() {
            format!(
                "'--configuration {file}' is not passed to {}: that stage reads the \
                 configuration config handed over through job_env; write {key} = {}",
                hook.name(),
                hook.documented_args(ARGS_PLACEHOLDER)
            )
        } else if configuration.is_some() {
            format!(
                "'--configuration' is given twice: keep one ({key} = {})",
                hook.documented_args(&file)
            )
        } else {
            *configuration = Some((file, line));
            return;
        };
        self.args_problem(r, hook, line, message);
    }

    /// Report a word after the sub-command that jacamar-auth does not take there.
    fn unexpected_arg(&mut self, r: &Runner<'_, '_>, hook: Hook, word: &str, line: usize) {
        let why = if hook == Hook::Run {
            "the runner appends the script path and the stage name itself"
        } else {
            "jacamar-auth does not take it here"
        };
        let message = format!(
            "unexpected argument '{word}' ({why}): write {} = {}",
            hook.args_key(),
            hook.documented_args(ARGS_PLACEHOLDER)
        );
        self.args_problem(r, hook, line, message);
    }
}
