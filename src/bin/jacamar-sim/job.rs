//! The job description file (TOML) and the embedded defaults.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::parse_duration;
use crate::error::{BadVarName, SimError};

/// Jacamar configuration handed to `config`/`cleanup` when `--configuration` is not given.
pub const DEFAULT_CONFIG: &str =
    "[general]\nexecutor = \"shell\"\ndata_dir = \"$HOME\"\n[auth]\ndownscope = \"none\"\n";

/// The job run when neither `--job` nor `--script` is given.
pub const DEMO_JOB: &str = r#"name = "demo-job"
before_script = ['echo "Hello from $(hostname) as $(id -un)"']
script = ["pwd", "ls -la", 'echo "CI_JOB_ID=$CI_JOB_ID CI_PROJECT_DIR=$CI_PROJECT_DIR"']
after_script = ['echo "after_script sees CI_JOB_STATUS=$CI_JOB_STATUS"']
timeout = "10m"
"#;

/// Default job timeout (GitLab's default project timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// A script entry: GitLab accepts one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Lines {
    One(String),
    Many(Vec<String>),
}

impl Lines {
    fn into_vec(self) -> Vec<String> {
        match self {
            Lines::One(s) => vec![s],
            Lines::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    stage: Option<String>,
    before_script: Option<Lines>,
    script: Option<Lines>,
    after_script: Option<Lines>,
    timeout: Option<String>,
    image: Option<String>,
    variables: Option<BTreeMap<String, toml::Value>>,
}

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    pub stage: String,
    pub before_script: Vec<String>,
    pub script: Vec<String>,
    pub after_script: Vec<String>,
    pub timeout: Option<Duration>,
    /// The job's `image:` (its name), as GitLab sends it.
    pub image: Option<String>,
    /// Job variables in file order is not kept by TOML tables; sorted by name.
    pub variables: Vec<(String, String)>,
}

impl JobSpec {
    /// Parses a job description. `origin` names the file in error messages.
    /// `script_required` is false when the command line supplies `--script`.
    pub fn parse(text: &str, origin: &str, script_required: bool) -> Result<Self, SimError> {
        let bad = |why: String| SimError::Job {
            origin: origin.to_string(),
            why,
        };
        let raw: RawJob = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let script = raw.script.map(Lines::into_vec).unwrap_or_default();
        if script_required && script.is_empty() {
            return Err(bad(
                "`script` is missing or empty (give `script = [\"...\"]` or use --script)".into(),
            ));
        }
        let timeout = match raw.timeout {
            Some(t) => Some(parse_duration(&t).map_err(|e| bad(format!("`timeout`: {e}")))?),
            None => None,
        };
        if let Some(name) = &raw.image {
            crate::image::check_image("`image`", name).map_err(|e| bad(e.to_string()))?;
        }
        let mut variables = Vec::new();
        for (key, value) in raw.variables.unwrap_or_default() {
            check_var_name(&key).map_err(|why| bad(format!("[variables]: {why}")))?;
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "[variables]: {key} must be a string, number or boolean, not {}",
                        other.type_str()
                    )))
                }
            };
            variables.push((key, value));
        }
        Ok(JobSpec {
            name: raw.name.unwrap_or_else(|| "sim-job".to_string()),
            stage: raw.stage.unwrap_or_else(|| "test".to_string()),
            before_script: raw.before_script.map(Lines::into_vec).unwrap_or_default(),
            script,
            after_script: raw.after_script.map(Lines::into_vec).unwrap_or_default(),
            timeout,
            image: raw.image,
            variables,
        })
    }

    /// Reads and parses a job file.
    pub fn load(path: &Path, script_required: bool) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            what: format!("failed to read job file {}", path.display()),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), script_required)
    }

    /// The embedded demo job.
    pub fn demo() -> Self {
        Self::parse(DEMO_JOB, "<embedded demo job>", true).expect("embedded demo job is valid")
    }
}

/// A CI variable name: letters, digits and underscores, not starting with a digit.
pub fn check_var_name(name: &str) -> Result<(), BadVarName> {
    let ok = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BadVarName(name.to_string()))
    }
}

/// Parses a `--var K=V` argument.
pub fn parse_var(arg: &str) -> Result<(String, String), SimError> {
    let (k, v) = arg.split_once('=').ok_or_else(|| SimError::Var {
        arg: arg.to_string(),
        why: "expected NAME=VALUE".into(),
    })?;
    check_var_name(k).map_err(|why| SimError::Var {
        arg: arg.to_string(),
        why: why.to_string(),
    })?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        use jacamar::config::{Config, Downscope, Executor};
        let c = Config::from_str_named(DEFAULT_CONFIG, "<embedded default>").unwrap();
        assert_eq!(c.general.executor, Executor::Shell);
        assert_eq!(c.general.data_dir, "$HOME");
        assert_eq!(c.auth.downscope, Downscope::None);
    }

    #[test]
    fn demo_parses() {
        let d = JobSpec::demo();
        assert!(!d.script.is_empty());
    }

    #[test]
    fn full_job() {
        let j = JobSpec::parse(
            "before_script = \"echo a\"\nscript = [\"echo b\"]\ntimeout = \"5m\"\n[variables]\nFOO = \"bar\"\nN = 3\n",
            "t.toml",
            true,
        )
        .unwrap();
        assert_eq!(j.before_script, vec!["echo a"]);
        assert_eq!(j.timeout, Some(Duration::from_secs(300)));
        assert_eq!(
            j.variables,
            vec![("FOO".into(), "bar".into()), ("N".into(), "3".into())]
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = JobSpec::parse("scripts = [\"x\"]", "j.toml", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("j.toml") && e.contains("scripts"), "{e}");
        let e = JobSpec::parse("before_script = []", "j.toml", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("script"), "{e}");
        let e = JobSpec::parse("script = [\"x\"]\ntimeout = \"soon\"", "j.toml", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeout"), "{e}");
        let e = JobSpec::parse("script = [\"x\"]\n[variables]\nA = [1]", "j.toml", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("A must be"), "{e}");
        assert!(JobSpec::parse("[variables]\nA = 1", "j.toml", false).is_ok());
    }

    #[test]
    fn vars() {
        assert_eq!(parse_var("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_var("A").is_err());
        assert!(parse_var("1A=x").is_err());
    }
}
