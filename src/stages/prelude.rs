//! The bash prelude `jacamar` writes in front of the runner's own stage scripts, so that
//! the job token stays off the command lines of the runner's `gitlab-runner` and `git`
//! calls (every argument of a running process is readable by every local user in
//! `/proc/<pid>/cmdline`).
//!
//! The runner's bash writer puts the token on two kinds of command lines of its own stages:
//! * `gitlab-runner artifacts-uploader|artifacts-downloader ... --token <tok> ...` (the
//!   custom executor's helper command is the plain name `gitlab-runner`);
//! * `git` with `https://gitlab-ci-token:<tok>@host/...` in `git remote add|set-url origin`,
//!   `git clone`, and `-c url.<that URL>.insteadOf=...` (submodules).
//!
//! The prelude defines two shell functions that the runner's calls, made by those plain
//! names, reach instead of the programs:
//! * `gitlab-runner` drops `--token X` / `--token=X` from its arguments and runs
//!   `CI_JOB_TOKEN=X command gitlab-runner <the rest>`: the helpers read the job token from
//!   `CI_JOB_TOKEN` when `--token` is absent, and the token is in that call's environment
//!   only (readable by its owner, not by every user). Without `--token` the arguments pass
//!   as they are.
//! * `git` replaces `gitlab-ci-token:<tok>@` by `gitlab-ci-token@` in each argument and runs
//!   `command git` with the result; git then asks `GIT_ASKPASS` (`jacamar`, for the trusted
//!   origins only, see [`crate::jobenv::askpass`]) for the password.
//!
//! Both keep stdin, stdout and the exit status of the call. Below the prelude the runner's
//! script is written byte for byte: nothing of it is parsed or rewritten, so a stage does
//! exactly what the runner wrote. The prelude is for the runner's own stages only
//! (`get_sources`, `restore_cache`, `download_artifacts`, `archive_cache*`,
//! `upload_artifacts_*`, ..., and any future name): the user's (`build_script`,
//! `step_script`, `step_*`, `after_script`) run exactly as written, without the functions.
//! The user's own hooks that the runner puts inside `get_sources` (`pre_get_sources_script`,
//! `post_get_sources_script`) do see the `git` function.
//!
//! The token is in the prelude as one single-quoted, unexported shell variable
//! ([`TOKEN_USERINFO_VAR`]); the runner's script in the same file already holds it in its
//! exports (the file is the user's, mode 0700). In bash's POSIX mode (`POSIXLY_CORRECT` in
//! the job's environment) a function name with a `-` is refused, so the prelude leaves
//! POSIX mode while it defines the functions and restores it afterwards.

use crate::job::TOKEN_USER;
use crate::shell::sh_quote;

/// The prelude's shell variable holding `gitlab-ci-token:<token>@`, the text its `git`
/// function removes the token from.
pub const TOKEN_USERINFO_VAR: &str = "__jacamar_token_userinfo";

/// The first line of every prelude (a `#!` line: the file stays a bash script).
pub const FIRST_LINE: &str = "#!/usr/bin/env bash\n";

/// Whether `stage` runs the user's own script (the runner's `build_script`, which it also
/// names `step_script`, any other `step_*`, and `after_script`): it gets no prelude.
pub fn is_user_stage(stage: &str) -> bool {
    matches!(stage, "build_script" | "after_script") || stage.starts_with("step_")
}

/// The functions, after the token variable (see the module documentation). Every local name
/// starts with `__jacamar_`; arrays are expanded with `${a[@]+"${a[@]}"}` so that `set -u`
/// of an older bash does not fail on an empty one.
const FUNCTIONS: &str = r#"if shopt -qo posix; then __jacamar_posix=1; set +o posix; else __jacamar_posix=; fi
function gitlab-runner {
  local __jacamar_token= __jacamar_found=
  local -a __jacamar_args=()
  while [ "$#" -gt 0 ]; do
    case $1 in
      --token=*) __jacamar_token=${1#--token=}; __jacamar_found=1 ;;
      --token) if [ "$#" -gt 1 ]; then __jacamar_token=$2; __jacamar_found=1; shift; else __jacamar_args+=("$1"); fi ;;
      --) __jacamar_args+=("$@"); break ;;
      *) __jacamar_args+=("$1") ;;
    esac
    shift
  done
  if [ -n "$__jacamar_found" ]; then
    CI_JOB_TOKEN=$__jacamar_token command gitlab-runner ${__jacamar_args[@]+"${__jacamar_args[@]}"}
  else
    command gitlab-runner ${__jacamar_args[@]+"${__jacamar_args[@]}"}
  fi
}
function git {
  local __jacamar_arg
  local -a __jacamar_args=()
  for __jacamar_arg in "$@"; do
    __jacamar_args+=("${__jacamar_arg//"${__jacamar_token_userinfo-}"/gitlab-ci-token@}")
  done
  command git ${__jacamar_args[@]+"${__jacamar_args[@]}"}
}
if [ -n "$__jacamar_posix" ]; then set -o posix; fi
unset __jacamar_posix
"#;

/// The prelude for `stage` with the job token `token`: `None` for a user's stage, without a
/// token, or with one no command line can hold (empty, or with a NUL byte).
pub fn prelude(stage: &str, token: Option<&str>) -> Option<String> {
    let token = token.filter(|t| !t.is_empty() && !t.contains('\0'))?;
    if is_user_stage(stage) {
        return None;
    }
    let userinfo = format!("{TOKEN_USER}:{token}@");
    Some(format!(
        "{FIRST_LINE}# jacamar: the job token stays off the command lines of this stage's \
         gitlab-runner and git calls; the runner's script follows unchanged.\n\
         declare +x {TOKEN_USERINFO_VAR}={}\n{FUNCTIONS}",
        sh_quote(&userinfo)
    ))
}

/// What `jacamar` writes as the stage's script file: the prelude for `stage` (if any), then
/// `script` byte for byte.
pub fn stage_script(stage: &str, token: Option<&str>, script: &str) -> Vec<u8> {
    let mut out = prelude(stage, token).unwrap_or_default().into_bytes();
    out.extend_from_slice(script.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    const TOK: &str = "glcbt-64_AbC9-x_yZ";

    #[test]
    fn only_the_runners_own_stages_get_the_prelude() {
        for stage in [
            "prepare_script",
            "get_sources",
            "clear_worktree",
            "restore_cache",
            "download_artifacts",
            "archive_cache",
            "archive_cache_on_failure",
            "upload_artifacts_on_success",
            "upload_artifacts_on_failure",
            "cleanup_file_variables",
            "some_future_stage",
        ] {
            let p = prelude(stage, Some(TOK)).unwrap_or_else(|| panic!("{stage}"));
            assert!(p.starts_with(FIRST_LINE), "{stage}");
            let s = stage_script(stage, Some(TOK), "echo hi\n");
            assert_eq!(s, format!("{p}echo hi\n").into_bytes(), "{stage}");
        }
        for stage in [
            "build_script",
            "step_script",
            "step_release",
            "after_script",
        ] {
            assert_eq!(prelude(stage, Some(TOK)), None, "{stage}");
            assert_eq!(stage_script(stage, Some(TOK), "echo hi\n"), b"echo hi\n");
        }
        // A batch executor submits only the user's script: the scheduler never runs a prelude.
        for stage in ["build_script", "step_script"] {
            assert!(crate::batch::is_submitted_stage(stage) && is_user_stage(stage));
        }
        for token in [None, Some(""), Some("a\0b")] {
            assert_eq!(prelude("get_sources", token), None, "{token:?}");
            assert_eq!(stage_script("get_sources", token, "x"), b"x");
        }
    }

    /// A dir with fake `git` and `gitlab-runner` that print their argv (one per line,
    /// `[...]`) and their `CI_JOB_TOKEN`, read their stdin, and exit with `$FAKE_EXIT`.
    fn fakes() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["git", "gitlab-runner"] {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                "#!/bin/bash\necho \"$(basename \"$0\") argc=$#\"\n\
                 for a in \"$@\"; do printf '[%s]\\n' \"$a\"; done\n\
                 printf 'env CI_JOB_TOKEN=[%s]\\n' \"$CI_JOB_TOKEN\"\n\
                 if [ -n \"$FAKE_STDIN\" ]; then printf 'stdin=[%s]\\n' \"$(cat)\"; fi\n\
                 exit \"${FAKE_EXIT:-0}\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    /// Run bash on `prelude(stage, token) + script` with the fakes first on PATH.
    fn run(stage: &str, token: &str, script: &str, env: &[(&str, &str)]) -> (String, i32) {
        let bin = fakes();
        let file = bin.path().join("stage.bash");
        std::fs::write(&file, stage_script(stage, Some(token), script)).unwrap();
        let out = Command::new("bash")
            .arg(&file)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.path().display()))
            .env("CI_JOB_TOKEN", "from-env")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (text, out.status.code().unwrap_or(-1))
    }

    /// Tokens a prelude must quote: quotes, spaces, newlines, `$`, backslashes, globs, `&`
    /// (bash 5.2's `patsub_replacement`), and a plain one.
    const ODD: &[&str] = &[
        TOK,
        "it's a \"token\"",
        "a b\tc\nd",
        "$HOME$(id)`id`${X}",
        "back\\slash\\\\n\\",
        "*?[a-z]&\\&",
        "'",
        "--token",
    ];

    #[test]
    fn helper_token_moves_to_the_environment_for_every_quoting_of_the_token() {
        for tok in ODD {
            let q = sh_quote(tok);
            let script = format!(
                "set -eo pipefail\ngitlab-runner artifacts-uploader --url https://h/ --token {q} --id 1 --path 'a b'\n\
                 gitlab-runner artifacts-downloader --token={q} --id 2\n\
                 echo after=\"$CI_JOB_TOKEN\"\n"
            );
            let (out, code) = run("upload_artifacts_on_success", tok, &script, &[]);
            assert_eq!(code, 0, "{tok:?}: {out}");
            assert_eq!(
                out,
                format!(
                    "gitlab-runner argc=7\n[artifacts-uploader]\n[--url]\n[https://h/]\n[--id]\n[1]\n[--path]\n[a b]\n\
                     env CI_JOB_TOKEN=[{tok}]\n\
                     gitlab-runner argc=3\n[artifacts-downloader]\n[--id]\n[2]\nenv CI_JOB_TOKEN=[{tok}]\n\
                     after=from-env\n"
                ),
                "{tok:?}"
            );
        }
    }

    #[test]
    fn git_urls_lose_the_token_for_every_quoting_of_the_token() {
        for tok in ODD {
            let url = format!("https://gitlab-ci-token:{tok}@gl.example/g/p.git");
            let script = format!(
                "set -eo pipefail\ngit remote add origin {}\n\
                 git -c {} submodule update --init\n",
                sh_quote(&url),
                sh_quote(&format!(
                    "url.https://gitlab-ci-token:{tok}@gl.example/.insteadOf=https://gl.example/"
                )),
            );
            let (out, code) = run("get_sources", tok, &script, &[]);
            assert_eq!(code, 0, "{tok:?}: {out}");
            assert_eq!(
                out,
                "git argc=4\n[remote]\n[add]\n[origin]\n[https://gitlab-ci-token@gl.example/g/p.git]\n\
                 env CI_JOB_TOKEN=[from-env]\n\
                 git argc=5\n[-c]\n[url.https://gitlab-ci-token@gl.example/.insteadOf=https://gl.example/]\n\
                 [submodule]\n[update]\n[--init]\nenv CI_JOB_TOKEN=[from-env]\n",
                "{tok:?}"
            );
        }
    }

    #[test]
    fn other_arguments_status_and_stdin_pass_unchanged() {
        // Another user's URL, the token without the user, `--token` as the last word, `--`.
        let script = format!(
            "git ls-remote https://other:{TOK}@h/x 'gitlab-ci-token:{TOK}' '' 'a  b'\n\
             gitlab-runner --version\n\
             gitlab-runner cache-archiver --file f --token\n\
             gitlab-runner x -- --token {TOK}\n\
             echo piped | FAKE_STDIN=1 git hash-object --stdin\n\
             if FAKE_EXIT=3 git fetch; then echo no; else echo status=$?; fi\n\
             if FAKE_EXIT=4 gitlab-runner artifacts-uploader --token t; then echo no; else echo status=$?; fi\n\
             set -e\nFAKE_EXIT=5 git fetch\necho never\n"
        );
        let (out, code) = run("get_sources", TOK, &script, &[]);
        assert_eq!(code, 5, "{out}");
        assert_eq!(
            out,
            format!(
                "git argc=5\n[ls-remote]\n[https://other:{TOK}@h/x]\n[gitlab-ci-token:{TOK}]\n[]\n[a  b]\n\
                 env CI_JOB_TOKEN=[from-env]\n\
                 gitlab-runner argc=1\n[--version]\nenv CI_JOB_TOKEN=[from-env]\n\
                 gitlab-runner argc=4\n[cache-archiver]\n[--file]\n[f]\n[--token]\nenv CI_JOB_TOKEN=[from-env]\n\
                 gitlab-runner argc=4\n[x]\n[--]\n[--token]\n[{TOK}]\nenv CI_JOB_TOKEN=[from-env]\n\
                 git argc=2\n[hash-object]\n[--stdin]\nenv CI_JOB_TOKEN=[from-env]\nstdin=[piped]\n\
                 git argc=1\n[fetch]\nenv CI_JOB_TOKEN=[from-env]\nstatus=3\n\
                 gitlab-runner argc=1\n[artifacts-uploader]\nenv CI_JOB_TOKEN=[t]\nstatus=4\n\
                 git argc=1\n[fetch]\nenv CI_JOB_TOKEN=[from-env]\n"
            )
        );
    }

    #[test]
    fn the_token_variable_is_not_exported_and_posix_mode_is_kept() {
        let script = format!(
            "env | grep -c {TOKEN_USERINFO_VAR} || true\n\
             shopt -qo posix && echo posix=on || echo posix=off\n\
             git x\ngitlab-runner --version\n"
        );
        // An exported variable of that name in the environment is unexported.
        for (env, mode) in [
            (vec![], "off"),
            (vec![("POSIXLY_CORRECT", "1")], "on"),
            (vec![(TOKEN_USERINFO_VAR, "x")], "off"),
        ] {
            let (out, code) = run("get_sources", TOK, &script, &env);
            assert_eq!(code, 0, "{env:?}: {out}");
            assert_eq!(
                out,
                format!(
                    "0\nposix={mode}\ngit argc=1\n[x]\nenv CI_JOB_TOKEN=[from-env]\n\
                     gitlab-runner argc=1\n[--version]\nenv CI_JOB_TOKEN=[from-env]\n"
                ),
                "{env:?}"
            );
        }
    }
}
