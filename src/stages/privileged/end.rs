//! How a stage ended, for the runner: what `jacamar` reported on the status pipe, checked
//! against how it ended ([`result_of`]), becomes a [`StageEnd`] or a [`StageError`], and a
//! [`StageEnd`] becomes the runner's exit code ([`StageEnd::exit_code`]: its status classes
//! `BUILD_FAILURE_EXIT_CODE` and `SYSTEM_FAILURE_EXIT_CODE`, and `BUILD_EXIT_CODE_FILE`).

use nix::sys::signal::Signal;

use crate::audit::obfuscate;
use crate::fs::builds::BuildsInfo;
use crate::job::RunnerEnv;
use crate::protocol::{self, Status, StatusVerdict};
use crate::stages::StageError;
use crate::supervisor::{self, ChildEnd};
use crate::text::sanitize;

/// What a stage amounted to, before it is mapped to an exit code.
#[derive(Debug)]
pub(super) enum StageEnd {
    Success,
    BuildFailure {
        exit_code: i32,
        note: Option<String>,
    },
    /// `jacamar` decided the builds dir for config_exec.
    Configured(BuildsInfo),
}

impl StageEnd {
    /// The runner's exit code for a stage that ended so. A build failure says its note in
    /// the job log and writes its exit code to `BUILD_EXIT_CODE_FILE`: the runner (17.9+)
    /// reports the integer in this file as the job's exit code, and a file left from an
    /// earlier call, or none, would report another code. Not writing it is the driver's
    /// failure, said as one.
    pub(super) fn exit_code(self, runner: &RunnerEnv) -> i32 {
        let (exit_code, note) = match self {
            StageEnd::Success | StageEnd::Configured(_) => return 0,
            StageEnd::BuildFailure { exit_code, note } => (exit_code, note),
        };
        if let Some(note) = note {
            eprintln!("ERROR: {}", sanitize(&note));
        }
        if let Some(path) = &runner.build_exit_code_file {
            if let Err(e) = std::fs::write(path, format!("{exit_code}\n")) {
                eprintln!(
                    "Error encountered during job: the script failed with exit code \
                     {exit_code}, but writing it to BUILD_EXIT_CODE_FILE ({}) failed: {e}",
                    path.display()
                );
                return runner.system_failure_exit_code;
            }
        }
        runner.build_failure_exit_code
    }
}

/// The stage's result from what was read on the status pipe and how `jacamar` ended.
pub(super) fn result_of(
    status: &protocol::Bounded,
    outcome: &ChildEnd,
    delivery: protocol::Delivery,
) -> Result<StageEnd, StageError> {
    match protocol::verdict(status, outcome.exit) {
        StatusVerdict::Reported(status, category) => end_of(status, category),
        StatusVerdict::Silent => no_status(outcome, delivery),
        StatusVerdict::Inconsistent(why) => inconsistent_status(outcome, &why),
    }
}

/// What `jacamar` reported, for the runner. A system failure keeps the category `jacamar`
/// named (an older `jacamar` names none: internal).
fn end_of(status: Status, category: Option<obfuscate::Category>) -> Result<StageEnd, StageError> {
    Ok(match status {
        Status::Success => StageEnd::Success,
        Status::BuildFailure {
            exit_code,
            signal,
            stopped,
        } => {
            let note = match (signal, stopped) {
                (Some(s), Some(why)) => Some(format!(
                    "job stopped ({why}): the script was killed by {}",
                    signal_name(s)
                )),
                (Some(s), None) => Some(format!("the script was killed by {}", signal_name(s))),
                (None, Some(why)) => Some(format!(
                    "job stopped ({why}): the script exited with code {exit_code}"
                )),
                (None, None) => None,
            };
            StageEnd::BuildFailure { exit_code, note }
        }
        Status::SystemFailure { message } => {
            // jacamar runs as the job's user: its words are the job's to choose.
            return Err(StageError::User {
                message: sanitize(&message).into_owned(),
                category: category.unwrap_or(obfuscate::Category::Internal),
            });
        }
        Status::Configured {
            builds_dir,
            builds_dir_is_shared,
        } => StageEnd::Configured(BuildsInfo {
            builds_dir,
            builds_dir_is_shared,
        }),
    })
}

/// `jacamar` ended without telling us how the stage went: a build failure when we stopped
/// it, else an internal failure (never one of the directories: we do not know what failed).
/// Both say whether it had read the stage at all.
fn no_status(outcome: &ChildEnd, delivery: protocol::Delivery) -> Result<StageEnd, StageError> {
    let how = match outcome.exit {
        supervisor::Exit::Code(c) => format!("exited with code {c}"),
        supervisor::Exit::Signal(s) => format!("was killed by {}", signal_name(s)),
    };
    let when = match delivery {
        protocol::Delivery::Delivered => "without reporting a status".to_string(),
        protocol::Delivery::Pending => "before it had read the stage handed to it".to_string(),
        protocol::Delivery::Failed(e) => format!("before it had read the stage handed to it ({e})"),
    };
    match outcome.stopped {
        Some(why) => Ok(StageEnd::BuildFailure {
            exit_code: outcome.exit.as_code(),
            note: Some(format!("job stopped ({why}): jacamar {how} {when}")),
        }),
        None => Err(StageError::User {
            message: format!("jacamar {how} {when}"),
            category: obfuscate::Category::Internal,
        }),
    }
}

/// What `jacamar` reported is not one status consistent with its exit (see
/// [`protocol::verdict`]): a system failure, as the job may have written it. While we were
/// stopping the job and `jacamar` was killed by a signal (we SIGKILL its group after
/// `KILL`), whatever it wrote is not used: the stage is the stop's build failure.
fn inconsistent_status(outcome: &ChildEnd, why: &str) -> Result<StageEnd, StageError> {
    match (&outcome.stopped, outcome.exit) {
        (Some(stop), supervisor::Exit::Signal(s)) => Ok(StageEnd::BuildFailure {
            exit_code: outcome.exit.as_code(),
            note: Some(format!(
                "job stopped ({stop}): jacamar was killed by {}; its status was not used ({why})",
                signal_name(s)
            )),
        }),
        _ => Err(StageError::Internal(format!(
            "the status channel from jacamar was tampered with or is inconsistent: {why}"
        ))),
    }
}

/// `SIGTERM`-style name of a signal number.
pub fn signal_name(n: i32) -> String {
    Signal::try_from(n)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Bounded, Delivery};
    use supervisor::{Exit, Reason};

    fn outcome(exit: Exit, stopped: Option<Reason>) -> ChildEnd {
        ChildEnd {
            exit,
            stopped,
            escalated: false,
            sweep: Default::default(),
            output_leaked: false,
        }
    }

    fn pipe(lines: &[&str]) -> Bounded {
        Bounded::Complete(lines.concat().into_bytes())
    }

    const SUCCESS: &str = "{\"status\":\"success\"}\n";
    const BUILD_7: &str =
        "{\"status\":\"build_failure\",\"exit_code\":7,\"signal\":null,\"stopped\":null}\n";

    fn tampered(r: Result<StageEnd, StageError>) -> String {
        match r {
            Err(e @ StageError::Internal(_)) => {
                assert_eq!(e.category(), obfuscate::Category::Internal);
                let text = e.to_string();
                assert!(text.contains("tampered with or is inconsistent"), "{text}");
                text
            }
            other => panic!("not refused as a tampered status: {other:?}"),
        }
    }

    #[test]
    fn a_forged_line_before_jacamars_own_is_a_system_failure() {
        let exit = Exit::Code(protocol::EXIT_BUILD_FAILURE);
        let r = result_of(
            &pipe(&[SUCCESS, BUILD_7]),
            &outcome(exit, None),
            Delivery::Delivered,
        );
        assert!(tampered(r).contains("2 lines"));
    }

    #[test]
    fn a_success_line_contradicted_by_jacamars_exit_is_a_system_failure() {
        for exit in [
            Exit::Signal(libc::SIGKILL),
            Exit::Code(protocol::EXIT_BUILD_FAILURE),
            Exit::Code(protocol::EXIT_NOT_REPORTED),
        ] {
            let r = result_of(&pipe(&[SUCCESS]), &outcome(exit, None), Delivery::Delivered);
            assert!(tampered(r).contains("success"), "{exit:?}");
        }
        let r = result_of(
            &Bounded::TooLong,
            &outcome(Exit::Code(0), None),
            Delivery::Delivered,
        );
        assert!(tampered(r).contains("too long"));
    }

    #[test]
    fn consistent_statuses_and_silence_keep_their_meaning() {
        let ok = result_of(
            &pipe(&[SUCCESS]),
            &outcome(Exit::Code(0), None),
            Delivery::Delivered,
        );
        assert!(matches!(ok, Ok(StageEnd::Success)));
        let exit = Exit::Code(protocol::EXIT_BUILD_FAILURE);
        let failed = result_of(&pipe(&[BUILD_7]), &outcome(exit, None), Delivery::Delivered);
        assert!(matches!(
            failed,
            Ok(StageEnd::BuildFailure { exit_code: 7, .. })
        ));
        // Nothing written: unchanged (an internal failure; a build failure when we stopped it).
        let silent = result_of(
            &pipe(&[]),
            &outcome(Exit::Signal(libc::SIGKILL), None),
            Delivery::Delivered,
        );
        match silent {
            Err(StageError::User { message, .. }) => {
                assert!(message.contains("without reporting a status"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let stopped = outcome(
            Exit::Signal(libc::SIGKILL),
            Some(Reason::Signal(Signal::SIGTERM)),
        );
        let r = result_of(&pipe(&[]), &stopped, Delivery::Pending);
        assert!(
            matches!(&r, Ok(StageEnd::BuildFailure { exit_code: 137, note: Some(n) })
                if n.contains("before it had read the stage")),
            "{r:?}"
        );
    }

    #[test]
    fn during_a_stop_a_killed_jacamars_status_is_not_used() {
        // We SIGKILL jacamar's group after KILL: whatever it wrote, the stop's build failure.
        let stopped = outcome(
            Exit::Signal(libc::SIGKILL),
            Some(Reason::Signal(Signal::SIGTERM)),
        );
        for lines in [&[SUCCESS][..], &[SUCCESS, BUILD_7][..], &[BUILD_7][..]] {
            let r = result_of(&pipe(lines), &stopped, Delivery::Delivered);
            assert!(
                matches!(&r, Ok(StageEnd::BuildFailure { exit_code: 137, note: Some(n) })
                    if n.contains("job stopped") && n.contains("not used")),
                "{lines:?}: {r:?}"
            );
        }
        // A stop does not excuse a contradiction from a jacamar that exited by itself.
        let exited = outcome(
            Exit::Code(protocol::EXIT_BUILD_FAILURE),
            Some(Reason::Backstop),
        );
        tampered(result_of(&pipe(&[SUCCESS]), &exited, Delivery::Delivered));
    }

    fn runner(file: Option<std::path::PathBuf>) -> RunnerEnv {
        RunnerEnv {
            build_failure_exit_code: 41,
            system_failure_exit_code: 42,
            build_exit_code_file: file,
        }
    }

    #[test]
    fn a_stage_end_maps_to_the_runners_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("build_exit_code");
        assert_eq!(StageEnd::Success.exit_code(&runner(Some(file.clone()))), 0);
        let configured = StageEnd::Configured(BuildsInfo {
            builds_dir: "/b".into(),
            builds_dir_is_shared: false,
        });
        assert_eq!(configured.exit_code(&runner(Some(file.clone()))), 0);
        assert!(!file.exists(), "only a build failure writes the file");
        let failed = || StageEnd::BuildFailure {
            exit_code: 7,
            note: Some("the script was killed by SIGKILL".into()),
        };
        assert_eq!(failed().exit_code(&runner(None)), 41);
        assert_eq!(failed().exit_code(&runner(Some(file.clone()))), 41);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "7\n");
        // Not writing the job's exit code is the driver's failure.
        let unwritable = dir.path().join("missing").join("build_exit_code");
        assert_eq!(failed().exit_code(&runner(Some(unwritable))), 42);
    }

    #[test]
    fn a_reported_status_keeps_its_meaning_and_says_how_a_script_was_stopped() {
        let end = |signal, stopped: Option<&str>| {
            let status = Status::BuildFailure {
                exit_code: 143,
                signal,
                stopped: stopped.map(str::to_string),
            };
            match end_of(status, None) {
                Ok(StageEnd::BuildFailure {
                    exit_code: 143,
                    note,
                }) => note,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(end(None, None), None);
        assert_eq!(
            end(Some(15), None).as_deref(),
            Some("the script was killed by SIGTERM")
        );
        assert_eq!(
            end(Some(15), Some("backstop")).as_deref(),
            Some("job stopped (backstop): the script was killed by SIGTERM")
        );
        assert_eq!(
            end(None, Some("backstop")).as_deref(),
            Some("job stopped (backstop): the script exited with code 143")
        );
        assert!(matches!(
            end_of(Status::Success, None),
            Ok(StageEnd::Success)
        ));
        let configured = Status::Configured {
            builds_dir: "/b".into(),
            builds_dir_is_shared: true,
        };
        assert!(matches!(
            end_of(configured, None),
            Ok(StageEnd::Configured(BuildsInfo {
                builds_dir_is_shared: true,
                ..
            }))
        ));
        // jacamar's words are the job's: sanitized, with the category it named (or internal).
        let failure = |category| {
            let message = "no\x1b[31m space".to_string();
            match end_of(Status::SystemFailure { message }, category) {
                Err(StageError::User { message, category }) => (message, category),
                other => panic!("{other:?}"),
            }
        };
        let (message, category) = failure(Some(obfuscate::Category::Scheduler));
        assert!(!message.contains('\x1b'), "{message:?}");
        assert_eq!(category, obfuscate::Category::Scheduler);
        assert_eq!(failure(None).1, obfuscate::Category::Internal);
    }

    #[test]
    fn signal_names_are_the_kernels_or_a_number() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(200), "signal 200");
    }
}
