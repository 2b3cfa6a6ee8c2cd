//! What a scheduler is to the driver: a synchronous description, one per scheduler file
//! ([`super::slurm`], [`super::pbs`], [`super::flux`], [`super::lsf`], [`super::cobalt`]).
//! A description builds the commands (submit, state, cancel, the per-user listing, the
//! accounting) and reads their answers; it runs nothing. Its parsers are unit-tested on
//! recorded output in its own file. [`super::client::Client`] runs every description the
//! same way, through the job's [`super::Commands`]: a scheduler file holds only what
//! differs between schedulers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::args::Illegal;
use super::limiter::{self, CmdOutput};
use super::wrapper;
use super::{path_arg, Final, JobState, Listed};

/// What a submission needs: the script, where its output goes, its name and arguments.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The script to submit (with whatever header the scheduler needs).
    pub script: PathBuf,
    /// The output file the driver tails (stdout and stderr of the job).
    pub output: PathBuf,
    /// The scheduler's error file, when it keeps one apart (Cobalt).
    pub error: Option<PathBuf>,
    /// The job's working directory.
    pub workdir: PathBuf,
    /// The job's name.
    pub name: String,
    /// `default_args` followed by the user's arguments, already checked.
    pub args: Vec<String>,
}

impl Submission {
    /// `lead`, then the job's name, output file and working directory as the long options
    /// `names` (`--job-name=ci-7`, ...): the submit options of Slurm and Flux.
    pub fn long_options(&self, lead: &str, names: [&str; 3]) -> Vec<String> {
        let [name, output, workdir] = names;
        vec![
            lead.to_string(),
            format!("{name}={}", self.name),
            format!("{output}={}", path_arg(&self.output)),
            format!("{workdir}={}", path_arg(&self.workdir)),
        ]
    }
}

/// One scheduler command: the tool (found in `scheduler_bin`, or on the job's `PATH`) and
/// its arguments, run directly (argv, never a shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub tool: &'static str,
    pub args: Vec<String>,
}

impl Cmd {
    /// `tool args...`.
    pub fn new(tool: &'static str, args: &[&str]) -> Cmd {
        Cmd {
            tool,
            args: super::s(args),
        }
    }

    /// The submit command `tool options... <user's arguments>... <script>`: the driver's
    /// `options` first, then [`Submission::args`] (`default_args` and the user's), the
    /// script last.
    pub fn submit(tool: &'static str, options: Vec<String>, sub: &Submission) -> Cmd {
        let mut args = options;
        args.extend(sub.args.iter().cloned());
        args.push(path_arg(&sub.script));
        Cmd { tool, args }
    }

    /// `tool a b` for messages.
    pub fn display(&self) -> String {
        limiter::display(self.tool, &self.args)
    }
}

/// What a command's answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<T> {
    /// The answer.
    Got(T),
    /// No answer here: ask the next command (see [`Scheduler::state`]).
    Next,
    /// The command failed: an error, transient when the scheduler says so
    /// ([`Scheduler::transient`]).
    Failed,
    /// The command succeeded but its output holds no answer
    /// ([`super::BatchError::Parse`]).
    Unreadable,
}

impl<T> Read<T> {
    /// The common reading: a failed command is [`Read::Failed`], the stdout of a successful
    /// one is read by `parse` (`None`: [`Read::Unreadable`]).
    pub fn parse(out: &CmdOutput, parse: impl FnOnce(&str) -> Option<T>) -> Read<T> {
        if !out.success() {
            return Read::Failed;
        }
        match parse(&out.stdout) {
            Some(t) => Read::Got(t),
            None => Read::Unreadable,
        }
    }

    /// [`Read::parse`] for a parser that reads any text (a table, empty or not).
    pub fn table(out: &CmdOutput, parse: impl FnOnce(&str) -> T) -> Read<T> {
        Read::parse(out, |s| Some(parse(s)))
    }
}

/// A reader of one command's answer.
pub type Reader<'a, T> = Box<dyn Fn(&CmdOutput) -> Read<T> + Send + Sync + 'a>;

/// One command and how its answer reads.
pub struct Query<'a, T> {
    pub cmd: Cmd,
    pub read: Reader<'a, T>,
}

impl<'a, T> Query<'a, T> {
    pub fn new(cmd: Cmd, read: impl Fn(&CmdOutput) -> Read<T> + Send + Sync + 'a) -> Self {
        Query {
            cmd,
            read: Box::new(read),
        }
    }
}

/// States by job id (a listing's, an accounting's).
pub type States = BTreeMap<String, JobState>;

/// How the states of jobs that left the per-user listing are asked (see
/// [`Scheduler::accounting`]).
pub enum Accounting {
    /// Each job alone, with [`Scheduler::state`].
    PerJob,
    /// This command, for the jobs still missing; its answer's other jobs are ignored.
    Ask(Query<'static, States>),
    /// Nothing (more) to ask: the missing jobs are unknown to the accounting.
    Done,
}

/// What a scheduler is called, and the forms and words it is known by: constant per
/// scheduler ([`Scheduler::profile`]).
pub struct Profile {
    /// The scheduler's name for the job log (`slurm`).
    pub name: &'static str,
    /// Arguments the driver controls: refused in user arguments unless allowed.
    pub illegal: &'static [Illegal],
    /// Its words, in a failed command's stderr, for a daemon that is only busy, restarting
    /// or unreachable (see [`Scheduler::transient`]).
    pub transient: &'static [&'static str],
    /// Its words, in a failed cancel's stderr, for a job already over or unknown (see
    /// [`Scheduler::gone`]).
    pub gone: &'static [&'static str],
    /// Whether an id has the form of a job id its submit command prints (see
    /// [`Scheduler::valid_id`]).
    pub valid_id: fn(&str) -> bool,
    /// The job id in its submit command's stdout, when it passes `valid_id`.
    pub parse_submit: fn(&str) -> Option<String>,
}

/// What a scheduler that runs a CI job as a step inside an allocation held by a holder job
/// needs (Slurm; see [`Scheduler::steps`], docs/allocations-design.md): the holder's
/// submission, the step's launch, its id, its cancel, the allocation's owner and name.
pub trait Steps: Send + Sync {
    /// Submit the holder script `holder` as the allocation: named `name`, its output to
    /// `output`, in `dir`, with the job's scheduler arguments `args`; stdout is the job id
    /// ([`Scheduler::parse_submit`]).
    fn submit_holder(
        &self,
        name: &str,
        output: &Path,
        dir: &Path,
        args: &[String],
        holder: &Path,
    ) -> Cmd;

    /// Run `script` as one step of allocation `alloc` (from outside it), named `name`,
    /// stdout and stderr to `output`, in `workdir`, limited to `minutes` when given. The
    /// launcher names the step it created on its stderr ([`Steps::parse_step`]) and exits
    /// when the step ends.
    fn step(&self, alloc: &str, sub: &Submission, minutes: Option<u64>) -> Cmd;

    /// The step id (`<job>.<step>`) in a line of the launcher's stderr.
    fn parse_step(&self, line: &str) -> Option<String>;

    /// The command that ends step `step`; `graceful`: SIGTERM to every process of the step
    /// (its traps run), otherwise the plain cancel (SIGKILL for a step).
    fn cancel_step(&self, step: &str, graceful: bool) -> Cmd;

    /// The user's steps, one per line `<step id>|<name>` ([`Steps::parse_steps`]).
    fn list_steps(&self) -> Cmd;

    /// `(step id, name)` of each line of [`Steps::list_steps`]' answer.
    fn parse_steps(&self, stdout: &str) -> Vec<(String, String)>;

    /// The command that tells allocation `id`'s owner, name and state
    /// ([`Steps::parse_owner`]).
    fn describe(&self, id: &str) -> Cmd;

    /// `(uid, job name, state)` in [`Steps::describe`]'s answer.
    fn parse_owner(&self, stdout: &str) -> Option<(u32, String, JobState)>;

    /// Whether the launcher's stderr says the allocation is gone (ended, unknown): a new
    /// one is needed.
    fn allocation_gone(&self, stderr: &str) -> bool;
}

/// A scheduler, described: its commands and how their answers read.
pub trait Scheduler: Send + Sync {
    /// Its name, forms and words.
    fn profile(&self) -> &'static Profile;

    /// The scheduler's name for the job log (`slurm`).
    fn name(&self) -> &'static str {
        self.profile().name
    }

    /// Arguments the driver controls: refused in user arguments unless allowed.
    fn illegal_args(&self) -> &'static [Illegal] {
        self.profile().illegal
    }

    /// Whether `id` has the form of a job id this scheduler's submit command prints, the
    /// only form the driver records (each [`Profile::parse_submit`] keeps to it). Ids read
    /// back from the job's record, which the job can write, are checked with it before any
    /// command gets one: an id that fails (`--uid=0`, an escape sequence) is reported and
    /// skipped (see [`super::persist`]).
    fn valid_id(&self, id: &str) -> bool {
        (self.profile().valid_id)(id)
    }

    /// Whether a failed command's `stderr` says the scheduler's daemon is only busy,
    /// restarting or unreachable: the command is retried with backoff
    /// ([`super::BatchError::Transient`]). By default: one of [`Profile::transient`].
    fn transient(&self, stderr: &str) -> bool {
        any_word(stderr, self.profile().transient)
    }

    /// Whether a failed cancel's `stderr` says the job is already over or unknown: the
    /// cancel has nothing left to do. By default: one of [`Profile::gone`].
    fn gone(&self, stderr: &str) -> bool {
        any_word(stderr, self.profile().gone)
    }

    /// How this scheduler runs a CI job as a step of a shared allocation, when it can
    /// (`[batch] allocation_reuse`): Slurm. `None` (the default): it cannot, and the CI
    /// variable asking for it is ignored with one line in the job log.
    fn steps(&self) -> Option<&dyn Steps> {
        None
    }

    /// The job id in the submit command's stdout ([`Profile::parse_submit`]).
    fn parse_submit(&self, stdout: &str) -> Option<String> {
        (self.profile().parse_submit)(stdout)
    }

    /// The submit command of `sub` (see [`Cmd::submit`]).
    fn submit(&self, sub: &Submission) -> Cmd;

    /// The commands that tell job `id`'s state, asked in turn: the first that answers
    /// ([`Read::Got`]) decides, [`Read::Next`] asks the next, and after the last the job is
    /// [`JobState::Unknown`] (the scheduler has no record of it).
    fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>>;

    /// The command that ends job `id`; `graceful`: deliver SIGTERM and let the job run its
    /// traps (the scheduler's "signal" form), otherwise the plain cancel.
    fn cancel(&self, id: &str, graceful: bool) -> Cmd;

    /// Every job of the user running us, in one per-user command (never a multi-id query of
    /// the live queue), by [`Scheduler::listing_id`]: then the jobs of one user share one
    /// poll (see [`super::poller`]). Final states may be listed without their exit code
    /// ([`Listed::code_unknown`]). `None` (the default, and where the passwd database has no
    /// name for us, see [`running_user`]): each job asks [`Scheduler::state`].
    fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
        None
    }

    /// The key of job `id` in [`Scheduler::listing`]'s answer and in the poll directory
    /// (want files): `id` itself by default. A scheduler whose listing prints ids in
    /// another form than its submit command (PBS's tables truncate `123.server`, Flux's
    /// `ƒ` ids are keyed by their decimal form) maps them here; [`Scheduler::accounting`]
    /// and [`Scheduler::state`] must accept the key as a job id.
    fn listing_id(&self, id: &str) -> String {
        id.to_string()
    }

    /// The states of jobs that left the listing: the `step`-th (from 0) source asked for
    /// the jobs still `missing`, one command for all of them where the scheduler allows it.
    /// Default: each job alone ([`Accounting::PerJob`]).
    fn accounting(&self, _missing: &[&str], _step: usize) -> Accounting {
        Accounting::PerJob
    }

    /// `f` (the scheduler's final word) with the exit code `code` the job's exit file holds.
    fn with_exit_code(&self, f: &Final, code: i32) -> Final {
        Final {
            exit_code: code,
            ..f.clone()
        }
    }

    /// Whether the scheduler may spool a job's output and copy it only at its end (PBS,
    /// LSF): then the submitted script writes its output straight to the driver's file
    /// ([`wrapper::output_redirect`]) so that it streams live.
    fn spools_output(&self) -> bool {
        false
    }

    /// Shell lines the submitted script runs after the stage (Cobalt's `skip_cobalt_log`
    /// status echo); none by default.
    fn epilogue(&self) -> String {
        String::new()
    }

    /// The script submitted: [`wrapper::wrapper_script`], which runs `command` (the user's
    /// shell running the stage script), outlives a cancel's TERM until the job's traps are
    /// done and writes the exit-status file [`wrapper::exit_path`]; `output` is the file
    /// the driver tails.
    fn wrapper(&self, output: &Path, command: &[String]) -> String {
        let words: Vec<String> = command.iter().map(|w| crate::shell::sh_quote(w)).collect();
        self.wrapper_code(output, &words.join(" "))
    }

    /// [`Scheduler::wrapper`] with the stage as shell code (see
    /// [`wrapper::wrapper_script_code`]): a job's image, started by the script itself.
    fn wrapper_code(&self, output: &Path, code: &str) -> String {
        let header = match self.spools_output() {
            true => wrapper::output_redirect(output),
            false => String::new(),
        };
        let exit = wrapper::exit_path(output);
        wrapper::wrapper_script_code(&header, code, &self.epilogue(), output, &exit)
    }

    /// The job's separate error file, when the scheduler keeps stderr apart (Cobalt): it is
    /// tailed to the job log along with `output`.
    fn error_file(&self, _output: &Path) -> Option<PathBuf> {
        None
    }

    /// Arguments that tell the scheduler the CI job ends `left` from now and the job must
    /// be gone `grace` later (Slurm's `--deadline`), given the user's `args`, and notes for
    /// the job log (what was added, or a warning and why nothing was). Default: nothing
    /// (the scheduler has no such notion here).
    fn deadline_args(
        &self,
        _args: &[String],
        _left: Duration,
        _grace: Duration,
    ) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }

    /// Read the final state from files the scheduler leaves (Cobalt's `.cobaltlog`), once
    /// the job has left the queue. `None`: no such file, ask [`Scheduler::state`].
    fn final_from_files(&self, _sub: &Submission, _id: &str) -> Option<Final> {
        None
    }

    /// The files beside `output` that [`Scheduler::final_from_files`] reads and the
    /// scheduler itself writes (Cobalt's log, which it appends to): removed with the stale
    /// output before every submission, so the job's end is never read from an earlier
    /// submission's (the stage called again, a resubmission).
    fn end_files(&self, _output: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// Whether `stderr` holds one of `words` (a scheduler's words for a transient failure).
pub fn any_word(stderr: &str, words: &[&str]) -> bool {
    words.iter().any(|w| stderr.contains(w))
}

/// The last non-blank line of `stdout`, trimmed, as a job id when `valid` (the answer of
/// `qsub` and `flux submit`).
pub fn last_line_id(stdout: &str, valid: fn(&str) -> bool) -> Option<String> {
    let id = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())?;
    valid(id).then(|| id.to_string())
}

/// The name of the account running us (the job's user): the `USER` of per-user listings
/// (`qstat -u`, `bjobs -u`, `flux jobs --user`) that have no "me" form. `None` when the
/// passwd database has no entry for our uid (then the scheduler polls per job).
pub fn running_user() -> Option<&'static str> {
    static USER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    })
    .as_deref()
}

/// A per-user listing of lines `ID|fields...` by id: each line's fields read by `parse`;
/// a line without `|`, with an id that is not `is_id`'s, or with unreadable fields is
/// passed over. The exit code of a final state is known (it is among the fields).
pub fn listing_by_id(
    stdout: &str,
    is_id: fn(&str) -> bool,
    parse: fn(&str) -> Option<JobState>,
) -> BTreeMap<String, Listed> {
    stdout
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once('|')?;
            let id = id.trim();
            if !is_id(id) {
                return None;
            }
            Some((id.to_string(), listed(parse(rest)?, false)))
        })
        .collect()
}

/// A job waiting in the queue in the scheduler's word `state`, for `reason` (the expected
/// start comes from a listing, see [`Listed::expected_start`]).
pub fn queued(state: &str, reason: Option<String>) -> JobState {
    JobState::Queued {
        state: state.to_string(),
        reason,
        expected_start: None,
    }
}

/// A listed job: its state, the exit code unknown when `code_unknown`.
pub fn listed(state: JobState, code_unknown: bool) -> Listed {
    let expected_start = match &state {
        JobState::Queued { expected_start, .. } => expected_start.clone(),
        _ => None,
    };
    Listed {
        state,
        code_unknown,
        expected_start,
    }
}

/// Recorded answers for the scheduler files' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A command's answer: exit `code`, `stdout`, `stderr`.
    pub fn out(code: i32, stdout: &str, stderr: &str) -> CmdOutput {
        CmdOutput {
            code: Some(code),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// The submission of stage `build_script` of CI job 7 in `/s` (working dir `/w`), with
    /// the user's arguments `args`.
    pub fn submission(args: &[&str]) -> Submission {
        Submission {
            script: "/s/build_script-batch".into(),
            output: "/s/build_script.out".into(),
            error: None,
            workdir: "/w".into(),
            name: "ci-7".into(),
            args: crate::batch::s(args),
        }
    }

    /// The commands of `queries`, shown.
    pub fn shown<T>(queries: &[Query<'_, T>]) -> Vec<String> {
        queries.iter().map(|q| q.cmd.display()).collect()
    }

    /// The final state in `st` (the test fails on any other).
    pub fn fin(st: impl Into<Option<JobState>>) -> Final {
        match st.into() {
            Some(JobState::Finished(f)) => f,
            other => panic!("not a final state: {other:?}"),
        }
    }

    /// What `st` is: `queued`, `running`, `finished` or `unknown` (`none`: no state read).
    pub fn phase(st: Option<&JobState>) -> &'static str {
        match st {
            Some(JobState::Queued { .. }) => "queued",
            Some(JobState::Running { .. }) => "running",
            Some(JobState::Finished(_)) => "finished",
            Some(JobState::Unknown) => "unknown",
            None => "none",
        }
    }

    /// A listing in a line, by id: each job's [`phase`], a finished one's exit code
    /// instead (`?` when the listing has none, [`Listed::code_unknown`]):
    /// `41 queued, 42 running, 43 exit 7`.
    pub fn summary(m: &BTreeMap<String, Listed>) -> String {
        let job = |(id, l): (&String, &Listed)| match &l.state {
            JobState::Finished(_) if l.code_unknown => format!("{id} exit ?"),
            JobState::Finished(f) => format!("{id} exit {}", f.exit_code),
            st => format!("{id} {}", phase(Some(st))),
        };
        m.iter().map(job).collect::<Vec<_>>().join(", ")
    }

    /// `valid` takes every id of `good` and none of `bad`.
    pub fn ids(valid: fn(&str) -> bool, good: &[&str], bad: &[&str]) {
        for id in good {
            assert!(valid(id), "{id:?}");
        }
        for id in bad {
            assert!(!valid(id), "{id:?}");
        }
    }

    /// `parse` reads each `(answer, id)` of `good` as its id, and no id in any answer of
    /// `bad`.
    pub fn submits(parse: fn(&str) -> Option<String>, good: &[(&str, &str)], bad: &[&str]) {
        for (answer, id) in good {
            assert_eq!(parse(answer).as_deref(), Some(*id), "{answer:?}");
        }
        for answer in bad {
            assert_eq!(parse(answer), None, "{answer:?}");
        }
    }

    /// `sched`'s commands, shown one a line: the submit of [`submission`]`(args)`, then the
    /// graceful and the plain cancel of job `id`.
    pub fn commands(sched: &dyn Scheduler, args: &[&str], id: &str) -> String {
        [
            sched.submit(&submission(args)).display(),
            sched.cancel(id, true).display(),
            sched.cancel(id, false).display(),
        ]
        .join("\n")
    }

    /// An in-memory scheduler for the unit tests of the state machine and the poller: its
    /// commands are words (`state 42`, `cancel plain 42`, `list`, `accounting 5 6`), which
    /// the test answers through [`crate::batch::Commands::answering`], the answer in JSON
    /// on stdout ([`json`]).
    pub struct Mem {
        pub profile: &'static Profile,
        /// It lists the user's jobs in one command (`list`).
        pub lists: bool,
        /// Its listing keys jobs by the id's part before the first dot (as PBS's does).
        pub keyed: bool,
    }

    /// The in-memory scheduler's name, forms and words: `fake`, decimal ids, submit's
    /// answer the id.
    pub const FAKE: Profile = Profile {
        name: "fake",
        illegal: &[],
        transient: &[],
        gone: &[],
        valid_id: crate::batch::is_decimal_id,
        parse_submit: |stdout| Some(stdout.trim().to_string()),
    };

    impl Mem {
        /// `fake`, polled per job.
        pub const FAKE: Mem = Mem {
            profile: &FAKE,
            lists: false,
            keyed: false,
        };
    }

    /// A successful answer with `t` in JSON.
    pub fn json<T: serde::Serialize>(t: &T) -> CmdOutput {
        out(0, &serde_json::to_string(t).unwrap(), "")
    }

    fn from_json<T: serde::de::DeserializeOwned>(o: &CmdOutput) -> Read<T> {
        Read::parse(o, |s| serde_json::from_str(s).ok())
    }

    impl Scheduler for Mem {
        fn profile(&self) -> &'static Profile {
            self.profile
        }
        fn submit(&self, _: &Submission) -> Cmd {
            Cmd::new("submit", &[])
        }
        fn state<'a>(&self, id: &'a str) -> Vec<Query<'a, JobState>> {
            vec![Query::new(Cmd::new("state", &[id]), from_json)]
        }
        fn cancel(&self, id: &str, graceful: bool) -> Cmd {
            Cmd::new("cancel", &[if graceful { "graceful" } else { "plain" }, id])
        }
        fn listing(&self) -> Option<Query<'static, BTreeMap<String, Listed>>> {
            self.lists
                .then(|| Query::new(Cmd::new("list", &[]), from_json))
        }
        fn listing_id(&self, id: &str) -> String {
            match self.keyed {
                true => id.split('.').next().unwrap_or(id).to_string(),
                false => id.to_string(),
            }
        }
        fn accounting(&self, missing: &[&str], step: usize) -> Accounting {
            match step {
                0 => Accounting::Ask(Query::new(Cmd::new("accounting", missing), from_json)),
                _ => Accounting::Done,
            }
        }
    }
}
