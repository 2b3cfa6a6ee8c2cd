//! The submission's arguments: the user's (from CI variables, split with shell-word rules),
//! the site's `default_args`, each scheduler's refused arguments, and `env_vars`.
//!
//! Nothing here goes through a shell: the words become argv entries of the scheduler
//! command as they are.

use std::collections::BTreeMap;

use super::BatchError;
use crate::config::Config;
use crate::job::JobContext;

/// The CI variable a user sets to prefix the scheduler job's name (our name; ignored when
/// `disable_name_prefix` is set).
pub const NAME_PREFIX_VARIABLE: &str = "SCHEDULER_JOB_NAME_PREFIX";

/// The CI variable a job opts in to its pipeline's shared allocation with (value `pipeline`;
/// `[batch] allocation_reuse`, docs/allocations.md), and the variables that name the
/// pipeline (the allocation's key).
pub const REUSE_VARIABLE: &str = "JACAMAR_REUSE_ALLOCATION";
pub const PIPELINE_VARIABLES: [&str; 2] = ["CI_PROJECT_ID", "CI_PIPELINE_ID"];

/// An argument the driver controls.
#[derive(Debug, Clone, Copy)]
pub struct Illegal {
    /// Short form (`-o`), if any: matches `-o`, `-oFILE` and the short option inside a group.
    pub short: Option<char>,
    /// Long form (`--output`), if any: matches `--output` and `--output=FILE`. A form with
    /// one dash (`-oo`, LSF's multi-letter options) matches that exact word only.
    pub long: Option<&'static str>,
    /// Why the driver needs it.
    pub why: &'static str,
}

impl Illegal {
    /// The short option `-c` and the long one `--long`.
    pub const fn both(short: char, long: &'static str, why: &'static str) -> Illegal {
        Illegal {
            short: Some(short),
            long: Some(long),
            why,
        }
    }

    /// The long option `--long` only (or one of LSF's single-dash words).
    pub const fn long(long: &'static str, why: &'static str) -> Illegal {
        Illegal {
            short: None,
            long: Some(long),
            why,
        }
    }

    /// The short option `-c` only.
    pub const fn short(short: char, why: &'static str) -> Illegal {
        Illegal {
            short: Some(short),
            long: None,
            why,
        }
    }
}

/// Why the driver refuses an argument, in the words several schedulers share.
pub mod why {
    pub const OUTPUT: &str = "the driver chooses the output file it streams to the job log";
    pub const STDERR: &str = "the driver streams stderr with stdout from its own output file";
    pub const INPUT: &str = "batch jobs of the driver read no input";
    pub const NAME: &str = "the driver names the job after the CI job";
    pub const WAIT: &str = "the driver waits for the job itself";
    pub const WORKDIR: &str = "the driver sets the job's working directory";
    pub const INTERACTIVE: &str = "interactive jobs cannot be supervised by the driver";
    pub const NEVER_RUNS: &str = "the job would never run";
    pub const USER: &str = "jobs run as the CI job's user";
    pub const ONE_JOB: &str = "one CI job is one scheduler job";
}

/// Copy the CI variables a batch run reads (`arguments_variable`, the name prefix, the
/// allocation opt-in and the pipeline's ids)
/// from the runner's environment (`CUSTOM_ENV_<NAME>`) into the job context. Called by
/// `jacamar-auth`, which is the only side that sees the runner's environment.
pub fn capture(config: &Config, job: &mut JobContext, env: &BTreeMap<String, String>) {
    if !config.general.executor.is_batch() {
        return;
    }
    let names = config
        .batch
        .arguments_variable
        .iter()
        .map(String::as_str)
        .chain([NAME_PREFIX_VARIABLE, REUSE_VARIABLE])
        .chain(PIPELINE_VARIABLES);
    for name in names {
        if let Some(v) = env.get(&format!("CUSTOM_ENV_{name}")) {
            job.batch_variables.insert(name.to_string(), v.clone());
        }
    }
}

/// The user's arguments: the first variable of `arguments_variable` that is set and not
/// blank, split into words. Returns the variable's name with the words.
pub fn user_args(
    names: &[String],
    vars: &BTreeMap<String, String>,
) -> Result<Option<(String, Vec<String>)>, BatchError> {
    for name in names {
        if let Some(v) = vars.get(name).filter(|v| !v.trim().is_empty()) {
            let words = split(v).map_err(|why| BatchError::Split {
                variable: name.clone(),
                why,
            })?;
            return Ok(Some((name.clone(), words)));
        }
    }
    Ok(None)
}

/// Split `s` into words as a POSIX shell would, without expanding anything
/// ([`shell_words::split`]): blanks (space, tab, newline) separate words, `'...'` is
/// literal, `"..."` keeps blanks and honours `\"`, `\\`, `\$` and `` \` ``, a backslash
/// outside quotes escapes the next character, and a `#` starting a word begins a comment
/// that runs to the end of the line. An unterminated quote is an error naming the quote and
/// the byte where it opens; a trailing backslash (which escapes nothing) is an error naming
/// its byte.
pub fn split(s: &str) -> Result<Vec<String>, SplitError> {
    match shell_words::split(s) {
        Err(shell_words::ParseError) => Err(unterminated_quote(s)),
        Ok(words) => {
            // On success every trailing backslash is outside quotes (a quote left open
            // would have failed), so an odd run ends in one that escapes nothing.
            let run = s.len() - s.trim_end_matches('\\').len();
            if run % 2 == 1 {
                Err(SplitError::TrailingBackslash(s.len() - 1))
            } else {
                Ok(words)
            }
        }
    }
}

/// Why [`split`] refused a value: where the word that cannot end begins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("unterminated single quote at byte {0}")]
    SingleQuote(usize),
    #[error("unterminated double quote at byte {0}")]
    DoubleQuote(usize),
    #[error("unterminated quote")]
    Quote,
    #[error("trailing backslash at byte {0}")]
    TrailingBackslash(usize),
}

/// Why [`shell_words::split`] refused `s`: it leaves a quote open. That quote opens at the
/// longest prefix that still splits (every longer prefix ends inside it).
fn unterminated_quote(s: &str) -> SplitError {
    let open = s
        .char_indices()
        .rev()
        .find(|&(i, c)| matches!(c, '\'' | '"') && shell_words::split(&s[..i]).is_ok());
    match open {
        Some((i, '\'')) => SplitError::SingleQuote(i),
        Some((i, _)) => SplitError::DoubleQuote(i),
        None => SplitError::Quote,
    }
}

/// The first argument of `args` that `illegal` refuses, with the reason.
pub fn find_illegal<'a>(
    args: &'a [String],
    illegal: &[Illegal],
) -> Option<(&'a str, &'static str)> {
    for a in args {
        if a == "--" {
            // What follows `--` is the script and its arguments: not ours to submit.
            return Some((
                a,
                "the driver supplies the script; no '--' in scheduler arguments",
            ));
        }
        if let Some(long) = a.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or(long);
            for il in illegal {
                if let Some(l) = il.long {
                    if l.starts_with("--") && l.trim_start_matches('-') == name {
                        return Some((a, il.why));
                    }
                }
            }
        } else if let Some(il) = illegal
            .iter()
            .find(|il| il.long.is_some_and(|l| !l.starts_with("--") && l == a))
        {
            return Some((a, il.why));
        } else if let Some(c) = a.strip_prefix('-').and_then(|r| r.chars().next()) {
            // `-o`, `-oFILE`: only the first letter is sure to be an option (the rest may
            // be its value), so that is the one checked.
            if let Some(il) = illegal.iter().find(|il| il.short == Some(c)) {
                return Some((a, il.why));
            }
        }
    }
    None
}

/// The submission's arguments for a scheduler: `default_args` then the user's words,
/// refusing the user's illegal ones unless `allow_illegal_args`. `default_args` come from
/// the administrator and are not checked.
pub fn build(
    config: &Config,
    vars: &BTreeMap<String, String>,
    illegal: &[Illegal],
) -> Result<(Vec<String>, Option<String>), BatchError> {
    let mut out = config.batch.default_args.clone();
    let user = user_args(&config.batch.arguments_variable, vars)?;
    let source = user.as_ref().map(|(n, _)| n.clone());
    if let Some((_, words)) = user {
        if !config.batch.allow_illegal_args {
            if let Some((arg, why)) = find_illegal(&words, illegal) {
                return Err(BatchError::IllegalArgument {
                    arg: arg.to_string(),
                    why: why.to_string(),
                });
            }
        }
        out.extend(words);
    }
    Ok((out, source))
}

/// The scheduler job's name: `ci-<job id>`, after the user's prefix unless the
/// administrator disabled prefixes. The prefix keeps only `[A-Za-z0-9_.-]`.
pub fn job_name(job_id: u64, vars: &BTreeMap<String, String>, disable_prefix: bool) -> String {
    let prefix: String = if disable_prefix {
        String::new()
    } else {
        vars.get(NAME_PREFIX_VARIABLE)
            .map(|p| {
                p.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                    .take(64)
                    .collect()
            })
            .unwrap_or_default()
    };
    format!("{prefix}ci-{job_id}")
}

/// The job's environment with `[batch] env_vars` on top: every scheduler command (submit,
/// polls, cancels, and cleanup's) sees the same. Each value is expanded first ([`expand`])
/// against the environment as it is at that entry (the job's, with the earlier entries
/// applied), so `PATH=$PATH:/opt/x` extends the job's `PATH`.
pub fn with_env_vars(
    mut env: Vec<(String, String)>,
    vars: &[(String, String)],
) -> Vec<(String, String)> {
    for (k, v) in vars {
        let v = expand(v, |name| {
            env.iter()
                .find(|(ek, _)| ek == name)
                .map(|(_, ev)| ev.clone())
        });
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v));
    }
    env
}

/// `value` with every `$NAME` and `${NAME}` (NAME: a letter or `_`, then letters, digits,
/// `_`; `$NAME` takes the longest such run) replaced by `lookup(NAME)`, an unset variable
/// by nothing (as a shell does). A `$` that starts neither form (`$`, `$1`, `${`, `${a-b}`)
/// stays as written; nothing else is interpreted (no quotes, no `$(...)`, no `~`).
pub fn expand(value: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let is_start = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let is_name = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    while let Some(off) = value[i..].find('$') {
        let at = i + off;
        out.push_str(&value[i..at]);
        let rest = &b[at + 1..];
        let (name, used) = if rest.first() == Some(&b'{') {
            let len = rest[1..].iter().take_while(|&&c| is_name(c)).count();
            let closed = rest.get(1 + len) == Some(&b'}');
            let ok = closed && len > 0 && is_start(rest[1]);
            (ok.then(|| &value[at + 2..at + 2 + len]), len + 2)
        } else {
            let len = rest.iter().take_while(|&&c| is_name(c)).count();
            let ok = len > 0 && is_start(rest[0]);
            (ok.then(|| &value[at + 1..at + 1 + len]), len)
        };
        match name {
            Some(n) => {
                out.push_str(&lookup(n).unwrap_or_default());
                i = at + 1 + used;
            }
            None => {
                out.push('$');
                i = at + 1;
            }
        }
    }
    out.push_str(&value[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_vars_expand_against_the_job_environment() {
        let env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("HOME".to_string(), "/home/u".to_string()),
        ];
        let vars = vec![
            ("PATH".to_string(), "$PATH:/opt/jrs-x".to_string()),
            ("A".to_string(), "${HOME}/a".to_string()),
            ("B".to_string(), "$A-$UNSET.${A}x".to_string()),
        ];
        let out: BTreeMap<_, _> = with_env_vars(env, &vars).into_iter().collect();
        assert_eq!(out["PATH"], "/usr/bin:/bin:/opt/jrs-x");
        assert_eq!(out["A"], "/home/u/a");
        assert_eq!(out["B"], "/home/u/a-./home/u/ax");
    }

    #[test]
    fn expand_leaves_what_is_no_variable() {
        let look = |n: &str| (n == "X").then(|| "v".to_string());
        for (input, want) in [
            ("plain", "plain"),
            ("$", "$"),
            ("a$", "a$"),
            ("$1x", "$1x"),
            ("${", "${"),
            ("${X", "${X"),
            ("${}", "${}"),
            ("${a-b}", "${a-b}"),
            ("$$X", "$v"),
            ("$X$X", "vv"),
            ("$Xy", ""),
            ("${X}y", "vy"),
            ("é$X", "év"),
        ] {
            assert_eq!(expand(input, look), want, "{input:?}");
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split("  -N 1   -t 10 ").unwrap(),
            s(&["-N", "1", "-t", "10"])
        );
        assert_eq!(
            split(r#"--comment="two words" --x='a "b" c' plain\ space"#).unwrap(),
            s(&["--comment=two words", "--x=a \"b\" c", "plain space"])
        );
        assert_eq!(split(r#""a\"b\\c\$d\q""#).unwrap(), s(&[r#"a"b\c$d\q"#]));
        assert_eq!(split("''").unwrap(), s(&[""]));
        assert_eq!(split("a''b").unwrap(), s(&["ab"]));
        assert_eq!(split("$HOME `x` ;|&").unwrap(), s(&["$HOME", "`x`", ";|&"]));
        assert!(split("").unwrap().is_empty());
        assert_eq!(split("-N 1 #x y").unwrap(), s(&["-N", "1"]));
        assert_eq!(split("--comment=#1").unwrap(), s(&["--comment=#1"]));
    }

    #[test]
    fn split_errors_name_the_problem() {
        let why = |text: &str| split(text).unwrap_err().to_string();
        assert!(why("'abc").contains("unterminated single quote"));
        assert!(why("x \"abc").contains("unterminated double quote at byte 2"));
        assert!(why("abc\\").contains("trailing backslash"));
        assert_eq!(
            why(r#"a\' "b'c" 'd"#),
            "unterminated single quote at byte 10"
        );
        assert_eq!(why(r#"'a"b' "c"#), "unterminated double quote at byte 6");
        assert_eq!(split("a\\\\").unwrap(), s(&["a\\"]));
        assert_eq!(why("a \\\\\\"), "trailing backslash at byte 4");
        assert_eq!(split("'abc"), Err(SplitError::SingleQuote(0)));
        assert_eq!(split("a\\\nb").unwrap(), s(&["ab"]));
    }

    const IL: &[Illegal] = &[
        Illegal {
            short: Some('o'),
            long: Some("--output"),
            why: "out",
        },
        Illegal {
            short: Some('J'),
            long: Some("--job-name"),
            why: "name",
        },
        Illegal {
            short: None,
            long: Some("--wait"),
            why: "wait",
        },
    ];

    #[test]
    fn finds_illegal_forms() {
        for bad in [
            "-o",
            "-ofile",
            "--output",
            "--output=x",
            "-J",
            "--job-name=x",
            "--wait",
        ] {
            let args = s(&["-N1", bad, "x"]);
            assert!(find_illegal(&args, IL).is_some(), "{bad}");
        }
        for ok in ["-N1", "--outputs", "-n", "--time=1", "--comment=-o", "x"] {
            assert!(find_illegal(&s(&[ok]), IL).is_none(), "{ok}");
        }
        assert!(find_illegal(&s(&["--"]), IL).is_some());
    }

    #[test]
    fn single_dash_words_match_exactly() {
        const W: &[Illegal] = &[Illegal {
            short: None,
            long: Some("-oo"),
            why: "out",
        }];
        assert!(find_illegal(&s(&["-n", "1", "-oo", "f"]), W).is_some());
        for ok in ["-o", "-oof", "--oo", "-ooo"] {
            assert!(find_illegal(&s(&[ok]), W).is_none(), "{ok}");
        }
    }

    #[test]
    fn first_set_variable_wins() {
        let names = s(&["NEW", "OLD"]);
        let mut vars = BTreeMap::new();
        vars.insert("OLD".to_string(), "-N 2".to_string());
        assert_eq!(
            user_args(&names, &vars).unwrap(),
            Some(("OLD".to_string(), s(&["-N", "2"])))
        );
        vars.insert("NEW".to_string(), "  ".to_string());
        assert_eq!(user_args(&names, &vars).unwrap().unwrap().0, "OLD");
        vars.insert("NEW".to_string(), "-t 5".to_string());
        assert_eq!(
            user_args(&names, &vars).unwrap().unwrap().1,
            s(&["-t", "5"])
        );
        vars.insert("NEW".to_string(), "'x".to_string());
        let e = user_args(&names, &vars).unwrap_err().to_string();
        assert!(e.contains("NEW") && e.contains("unterminated"), "{e}");
    }

    #[test]
    fn job_names() {
        let mut vars = BTreeMap::new();
        assert_eq!(job_name(42, &vars, false), "ci-42");
        vars.insert(NAME_PREFIX_VARIABLE.to_string(), "my app;rm".to_string());
        assert_eq!(job_name(42, &vars, false), "myapprmci-42");
        assert_eq!(job_name(42, &vars, true), "ci-42");
    }
}
