//! What the runner gives every driver call: the job's CI variables, the call's environment
//! (`CUSTOM_ENV_*`, the exit-code variables) and the job response file.

use std::path::PathBuf;

use super::{Sim, DEFAULT_PROJECT_PATH, DEFAULT_SHORT_TOKEN};

impl Sim {
    pub(super) fn lookup_override(&self, key: &str) -> Option<&str> {
        self.opts
            .job
            .variables
            .iter()
            .chain(self.opts.extra_vars.iter())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .next_back()
    }

    pub(super) fn project_path(&self) -> String {
        self.lookup_override("CI_PROJECT_PATH")
            .unwrap_or(DEFAULT_PROJECT_PATH)
            .trim_matches('/')
            .to_string()
    }

    /// Every CI variable of the job (defaults, then job variables, then `--var`), with
    /// CI_JOB_STATUS set to `status`.
    pub(super) fn ci_variables(&self, status: &str) -> Vec<(String, String)> {
        let path = self.project_path();
        let (namespace, name) = match path.rsplit_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => (String::new(), path.clone()),
        };
        let id = self.opts.job_id;
        let server = "https://gitlab.example.com";
        let mut vars: Vec<(String, String)> = vec![
            ("CI".into(), "true".into()),
            ("GITLAB_CI".into(), "true".into()),
            ("CI_JOB_ID".into(), id.to_string()),
            ("CI_JOB_NAME".into(), self.opts.job.name.clone()),
            ("CI_JOB_STAGE".into(), self.opts.job.stage.clone()),
            ("CI_JOB_TOKEN".into(), self.token.clone()),
            ("CI_JOB_TIMEOUT".into(), self.timeout.as_secs().to_string()),
            ("CI_JOB_STATUS".into(), status.into()),
            ("CI_JOB_URL".into(), format!("{server}/{path}/-/jobs/{id}")),
            ("CI_PIPELINE_ID".into(), (id / 10 + 1).to_string()),
            ("CI_PIPELINE_SOURCE".into(), "push".into()),
            ("CI_PROJECT_ID".into(), "1".into()),
            ("CI_PROJECT_PATH".into(), path.clone()),
            ("CI_PROJECT_NAMESPACE".into(), namespace),
            ("CI_PROJECT_NAME".into(), name),
            ("CI_PROJECT_URL".into(), format!("{server}/{path}")),
            ("CI_SERVER_URL".into(), server.into()),
            ("CI_SERVER_HOST".into(), "gitlab.example.com".into()),
            (
                "CI_COMMIT_SHA".into(),
                "0123456789abcdef0123456789abcdef01234567".into(),
            ),
            ("CI_COMMIT_REF_NAME".into(), "main".into()),
            ("CI_RUNNER_SHORT_TOKEN".into(), DEFAULT_SHORT_TOKEN.into()),
            ("CI_CONCURRENT_ID".into(), "0".into()),
            ("CI_CONCURRENT_PROJECT_ID".into(), "0".into()),
            ("GITLAB_USER_LOGIN".into(), self.opts.user.clone()),
        ];
        if let Some(image) = &self.opts.job.image {
            // The runner's own variable (common/build.go: GetAllVariables).
            vars.push(("CI_JOB_IMAGE".into(), image.clone()));
        }
        if let Some((builds, project)) = &self.dirs {
            vars.push(("CI_BUILDS_DIR".into(), builds.clone()));
            vars.push(("CI_PROJECT_DIR".into(), project.clone()));
        }
        for (k, v) in self.opts.job.variables.iter().chain(&self.opts.extra_vars) {
            match vars.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.clone(),
                None => vars.push((k.clone(), v.clone())),
            }
        }
        // The runner owns the job status.
        if let Some(e) = vars.iter_mut().find(|(k, _)| k == "CI_JOB_STATUS") {
            e.1 = status.into();
        }
        vars
    }

    pub(super) fn exit_code_file(&self) -> PathBuf {
        self.tmp.join("build_exit_code")
    }

    /// The environment added to every driver call, in the runner's order.
    pub(super) fn call_env(&self, status: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("TMPDIR".to_string(), self.tmp.display().to_string()),
            ("BUILD_FAILURE_EXIT_CODE".into(), "1".into()),
            ("SYSTEM_FAILURE_EXIT_CODE".into(), "2".into()),
            (
                "BUILD_EXIT_CODE_FILE".into(),
                self.exit_code_file().display().to_string(),
            ),
            (
                "JOB_RESPONSE_FILE".into(),
                self.tmp.join("response.json").display().to_string(),
            ),
        ];
        env.extend(self.job_env.iter().cloned());
        for (k, v) in self.ci_variables(status) {
            env.push((format!("CUSTOM_ENV_{k}"), v));
        }
        env.push(("CUSTOM_ENV_CI_JOB_SERVICES".into(), "[]".into()));
        env
    }

    pub(super) fn response_json(&self) -> serde_json::Value {
        let vars: Vec<serde_json::Value> = self
            .ci_variables("running")
            .into_iter()
            .map(|(k, v)| {
                serde_json::json!({"key": k, "value": v, "public": k != "CI_JOB_TOKEN", "masked": k == "CI_JOB_TOKEN"})
            })
            .collect();
        let step = |name: &str, lines: Vec<String>, when: &str| {
            serde_json::json!({"name": name, "script": lines, "timeout": self.timeout.as_secs(),
                "when": when, "allow_failure": false})
        };
        let mut build = self.opts.job.before_script.clone();
        build.extend(self.opts.job.script.iter().cloned());
        let mut steps = vec![step("script", build, "on_success")];
        if !self.opts.job.after_script.is_empty() {
            steps.push(step(
                "after_script",
                self.opts.job.after_script.clone(),
                "always",
            ));
        }
        serde_json::json!({
            "id": self.opts.job_id,
            "token": self.token,
            "allow_git_fetch": true,
            "job_info": {"id": self.opts.job_id, "name": self.opts.job.name, "stage": self.opts.job.stage,
                          "project_id": 1, "project_name": self.project_path().rsplit('/').next().unwrap_or("")},
            "git_info": {"repo_url": format!("https://gitlab-ci-token:{}@gitlab.example.com/{}.git", self.token, self.project_path()),
                          "ref": "main", "sha": "0123456789abcdef0123456789abcdef01234567", "ref_type": "branch", "depth": 20},
            "runner_info": {"timeout": self.timeout.as_secs()},
            "variables": vars,
            "steps": steps,
            "image": {"name": self.opts.job.image.clone().unwrap_or_default()},
            "services": [],
            "artifacts": [],
            "cache": [],
            "credentials": self.opts.registry_credentials.iter()
                .map(|c| c.to_json(&self.token)).collect::<Vec<_>>(),
            "dependencies": [],
            "features": {"trace_sections": true, "failure_reasons": ["script_failure", "runner_system_failure", "job_execution_timeout"]},
            // Runner 17+ writes the job's `run` (native steps), empty when the job has none.
            "run": "",
        })
    }
}
