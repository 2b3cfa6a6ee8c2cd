//! `prepare_timeout` and `get_sources_timeout` of `[[runners]]` (runners 19.0 and 19.1),
//! read as the runner reads them: Go duration strings.

use std::time::Duration;

use toml::de::DeValue;

use super::document::{Custom, Runner};
use super::Checker;
use crate::config::duration::{parse_duration, DurationError};

impl Checker<'_> {
    /// `prepare_timeout` and `get_sources_timeout` of `[[runners]]`, each checked (see
    /// [`Checker::stage_timeout`]); either key in `[runners.custom]` is reported.
    pub(super) fn stage_timeouts(
        &mut self,
        c: &Custom<'_>,
    ) -> (Option<Duration>, Option<Duration>) {
        let (r, custom) = (c.r, c.table);
        for key in STAGE_TIMEOUTS {
            if let Some((k, _)) = custom.get_key_value(key) {
                let line = self.line(k.span().start);
                self.problem(
                    r,
                    line,
                    &format!("runners.custom.{key}"),
                    format!(
                        "is not read in [runners.custom]: the runner (19.0 and later) reads \
                         {key} from the [[runners]] table itself; move it there"
                    ),
                );
            }
        }
        (
            self.stage_timeout(r, STAGE_TIMEOUTS[0]),
            self.stage_timeout(r, STAGE_TIMEOUTS[1]),
        )
    }

    /// One stage timeout of `[[runners]]` as the runner reads it (a Go duration string;
    /// a bare integer is nanoseconds): its value when it bounds the stage, `None` when
    /// unset; a value the runner cannot read, reads as nanoseconds, or ignores (<= 0) is
    /// reported.
    fn stage_timeout(&mut self, r: &Runner<'_, '_>, key: &str) -> Option<Duration> {
        let (k, v) = r.table.get_key_value(key)?;
        let line = self.line(k.span().start);
        let problem = match v.get_ref() {
            DeValue::String(text) => match stage_timeout_value(text) {
                Ok(d) => return Some(d),
                Err(why) => why.to_string(),
            },
            DeValue::Integer(i) => format!(
                "{} is read by the runner as nanoseconds, not seconds: write a duration \
                 string, e.g. {key} = \"15m\"",
                i.as_str()
            ),
            other => format!(
                "expected a duration string, found {} (the runner refuses to load the \
                 file): write e.g. {key} = \"15m\"",
                other.type_str()
            ),
        };
        self.problem(r, line, &format!("runners.{key}"), problem);
        None
    }
}

/// The stage timeouts of `[[runners]]` newer runners read, in the order they apply.
const STAGE_TIMEOUTS: [&str; 2] = ["prepare_timeout", "get_sources_timeout"];

/// What a stage timeout's value tells the runner.
const IGNORED: &str = "the runner ignores a value <= 0 and bounds the stage by the job \
                       timeout: give a positive duration (e.g. \"15m\") or remove the key";

/// Why the runner cannot use a stage timeout's string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum StageTimeoutProblem {
    #[error("\"{0}\" is negative: {IGNORED}")]
    Negative(String),
    #[error("\"{0}\" is zero: {IGNORED}")]
    Zero(String),
    /// The runner refuses a duration string it cannot parse.
    #[error(
        "\"{text}\" is not a duration the runner can read ({why}), so it refuses to load \
         the file: write e.g. \"15m\" or \"1h30m\""
    )]
    Unreadable { text: String, why: DurationError },
}

/// A stage timeout's string as the runner reads it (Go's `time.ParseDuration`): the
/// duration, or why the runner cannot use it.
fn stage_timeout_value(text: &str) -> Result<Duration, StageTimeoutProblem> {
    let unreadable = |why| StageTimeoutProblem::Unreadable {
        text: text.to_string(),
        why,
    };
    if let Some(rest) = text.strip_prefix('-') {
        // Go accepts a negative duration; ours are never negative.
        return match parse_duration(rest) {
            Ok(_) => Err(StageTimeoutProblem::Negative(text.to_string())),
            Err(why) => Err(unreadable(why)),
        };
    }
    match parse_duration(text) {
        Ok(d) if d.is_zero() => Err(StageTimeoutProblem::Zero(text.to_string())),
        Ok(d) => Ok(d),
        Err(why) => Err(unreadable(why)),
    }
}
