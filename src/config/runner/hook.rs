//! The four hooks of `[runners.custom]`, their documented `*_args`, and the global flags
//! that come before the sub-command.

use toml::de::{DeTable, DeValue};

/// The path the README and the packages install `jacamar-auth` to, used in hints.
pub(super) const INSTALLED_AUTH: &str = "/opt/jacamar/bin/jacamar-auth";

/// The configuration path shown in the documented `*_args` of hints.
pub(super) const ARGS_PLACEHOLDER: &str = "/etc/gitlab-runner/jacamar.toml";

/// The four hooks, in the order the runner calls them.
pub(super) const HOOKS: [Hook; 4] = [Hook::Config, Hook::Prepare, Hook::Run, Hook::Cleanup];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hook {
    Config,
    Prepare,
    Run,
    Cleanup,
}

impl Hook {
    pub(super) fn name(self) -> &'static str {
        match self {
            Hook::Config => "config",
            Hook::Prepare => "prepare",
            Hook::Run => "run",
            Hook::Cleanup => "cleanup",
        }
    }

    /// `<hook>_args`, the key of its arguments in `[runners.custom]`.
    pub(super) fn args_key(self) -> String {
        format!("{}_args", self.name())
    }

    pub(super) fn takes_configuration(self) -> bool {
        matches!(self, Hook::Config | Hook::Cleanup)
    }

    /// The documented `*_args`, as TOML.
    pub(super) fn documented_args(self, configuration: &str) -> String {
        if self.takes_configuration() {
            format!(
                "[\"{}\", \"--configuration\", \"{configuration}\"]",
                self.name()
            )
        } else {
            format!("[\"{}\"]", self.name())
        }
    }
}

/// `jacamar`'s flag for running the hooks without jacamar-auth (upstream's name).
pub(super) const NO_AUTH: &str = "--no-auth";

fn is_unobfuscated(word: &str) -> bool {
    word == "-u" || word == "--unobfuscated"
}

/// A flag that goes before the sub-command: `-u`/`--unobfuscated`, and `--no-auth`.
pub(super) fn is_global_flag(word: &str) -> bool {
    is_unobfuscated(word) || word == NO_AUTH
}

/// The string items of `<hook>_args` before the first one that is not a global flag
/// (nothing when the key is missing or not an array of strings: reported elsewhere).
pub(super) fn leading_flags<'c>(custom: &'c DeTable<'_>, hook: Hook) -> Vec<&'c str> {
    let Some(DeValue::Array(items)) = custom.get(hook.args_key().as_str()).map(|v| v.get_ref())
    else {
        return Vec::new();
    };
    items
        .iter()
        .map_while(|i| match i.get_ref() {
            DeValue::String(s) if is_global_flag(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}
