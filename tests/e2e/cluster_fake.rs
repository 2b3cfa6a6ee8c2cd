//! A FAKE GitLab for the docker cluster (docker/README.md): the fake of [`crate::coordinator`]
//! (runner API, trace, job PUT, artifacts, dumb-HTTP git with the job token, JWKS over TLS),
//! served on an address the cluster's containers reach, until killed, for the REAL GitLab
//! Runner installed on the cluster's runner node. Only GitLab is faked: it cannot run here.
//!
//! Not a test: `#[ignore]`d, so `cargo test` never runs it. docker/lib.sh
//! (`fake_gitlab_start`) runs the e2e test binary as
//! `e2e --ignored --exact cluster_fake::serve_fake_gitlab --nocapture` with
//!
//! * `JACAMAR_FAKE_GITLAB_ADDR`: the IP to listen on (the cluster network's gateway on the
//!   host, 10.213.77.1); the HTTPS certificate names it;
//! * `JACAMAR_FAKE_GITLAB_PORT`: the HTTPS port (the runner node's config.toml names it);
//! * `JACAMAR_FAKE_GITLAB_RUNNERS`: the runners' tokens, comma-separated.
//!
//! It prints one line `FAKE-GITLAB <json>` on stdout: `url` (the HTTPS URL the runner, git,
//! the helper and jacamar-auth use), `control` (a loopback URL for the scripts), `ca_pem`
//! (the site CA: the runner node's `tls-ca-file`), `pki_dir` and `work_dir` (to remove after
//! the run: the first holds the CA's private key). It exits when its parent (the script)
//! dies.
//!
//! The control API, on 127.0.0.1 only (the containers cannot reach it; the runner sees
//! nothing of it):
//!
//! * `POST /jobs` with `{"runner": TOKEN, "name", "script": [..], "after_script": [..],
//!   "variables": {K: V}, "login": USER, "timeout": SECONDS, "artifacts": [PATH, ..]}`:
//!   queues a job of the project `group/project` (its repository: one commit with README.md)
//!   for the runner with TOKEN, with an id_token for USER; 201 `{"id", "token"}`. Optional:
//!   `"job_token"` (the job's token; else one made up: a registry whose password is the job
//!   token is started before the job is queued), `"image"` (the job response's `image`, e.g.
//!   `{"name": "10.213.77.1:5050/ci/debian:bookworm"}`) and `"credentials"` (its
//!   `credentials`, e.g. `[{"type": "registry", "url": HOST:PORT, "username":
//!   "gitlab-ci-token", "password": JOB_TOKEN}]`), both sent as given;
//! * `GET /jobs/ID`: [`Coordinator::job_json`] (status, trace, final update, artifacts);
//! * `PUT /jobs/ID/status` with the body `canceling` or `canceled`: the job's `Job-Status`;
//! * `POST /id_token` with `{"job_id", "login"}`: 200 `{"token"}`, an id_token for a job
//!   this fake did not queue (docker/runner/mini-runner.sh plays the runner by hand);
//! * `GET /requests`: every request line the fake GitLab saw, one a line.

use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::auth_kit::{claims, mint, pki, pki_extra_san};
use crate::coordinator::{json_response, read_request, response, Coordinator, Request};
use crate::site::{job_response, make_repo, JobSpec};

/// The README.md of the served repository (the smoke job prints it from its clone).
pub const README: &str = "hello from the cluster's fake GitLab\n";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("serve_fake_gitlab needs {name} (see tests/e2e/cluster_fake.rs)")
    })
}

#[test]
#[ignore = "serves the docker cluster's fake GitLab until killed (docker/lib.sh)"]
fn serve_fake_gitlab() {
    let addr = env("JACAMAR_FAKE_GITLAB_ADDR");
    let port = env("JACAMAR_FAKE_GITLAB_PORT");
    let runners = env("JACAMAR_FAKE_GITLAB_RUNNERS");
    let tokens: Vec<&str> = runners.split(',').filter(|t| !t.is_empty()).collect();
    assert!(
        !tokens.is_empty(),
        "JACAMAR_FAKE_GITLAB_RUNNERS names no token"
    );
    let ip: std::net::IpAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("JACAMAR_FAKE_GITLAB_ADDR {addr:?} is not an IP: {e}"));
    // The script that started this fake is its owner: when it dies, so does the fake.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).unwrap();

    pki_extra_san(&format!("IP:{ip}"));
    let coord = Coordinator::start_at("127.0.0.1:0", &format!("{ip}:{port}"), &tokens);
    let work = tempfile::Builder::new()
        .prefix("jrs-fake-gitlab-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let sha = make_repo(&work, &coord, &[("README.md", README)]).sha;
    let control = TcpListener::bind("127.0.0.1:0").unwrap();
    let ready = json!({
        "url": coord.https_url,
        "control": format!("http://{}", control.local_addr().unwrap()),
        "ca_pem": pki().ca_pem,
        "pki_dir": pki().dir,
        "work_dir": work,
        "runners": tokens,
    });
    // On a line of its own (libtest may have started one: "test ... ").
    println!("\nFAKE-GITLAB {ready}");
    std::io::stdout().flush().unwrap();

    let next = AtomicU64::new(1);
    for stream in control.incoming().flatten() {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        let Some(req) = read_request(&mut r, &mut buf) else {
            continue;
        };
        let resp = control_request(&coord, &sha, &next, req);
        let _ = w.write_all(&resp);
    }
}

/// One request of the control API.
fn control_request(coord: &Coordinator, sha: &str, next: &AtomicU64, req: Request) -> Vec<u8> {
    let bad = |msg: String| json_response("400 Bad Request", &[], &json!({ "message": msg }));
    let m = req.method.as_str();
    let id_of = |p: &str| -> Option<u64> { p.parse().ok() };
    if m == "POST" && req.path == "/jobs" {
        let spec: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return bad(format!("the body is not JSON: {e}")),
        };
        let Some(runner) = spec["runner"].as_str() else {
            return bad("no \"runner\" (a runner token)".into());
        };
        let strings = |k: &str| -> Vec<String> {
            spec[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let script = strings("script");
        if script.is_empty() {
            return bad("no \"script\" lines".into());
        }
        let mut job = JobSpec::new("cluster", &[]);
        job.script = script;
        job.after_script = strings("after_script");
        job.login = spec["login"].as_str().map(str::to_string);
        if let Some(t) = spec["timeout"].as_u64() {
            job.timeout = t;
        }
        if let Some(vars) = spec["variables"].as_object() {
            for (k, v) in vars {
                job = job.var(k, v.as_str().unwrap_or_default());
            }
        }
        let paths = strings("artifacts");
        if !paths.is_empty() {
            job.artifacts = json!([{
                "name": "artifacts", "untracked": false, "paths": paths, "when": "on_success",
                "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"
            }]);
        }
        // Unique across runs while the cluster's volumes (and Slurm's job names) last.
        let id = std::process::id() as u64 * 1000 + next.fetch_add(1, Ordering::SeqCst);
        let token = match &spec["job_token"] {
            Value::Null => format!("glcbt-cluster{id}Tk"),
            Value::String(t) if !t.is_empty() => t.clone(),
            _ => return bad("\"job_token\" is not a non-empty string".into()),
        };
        let mut body = job_response(&job, id, &token, &coord.https_url, &coord.https_url, sha);
        for key in ["image", "credentials"] {
            if !spec[key].is_null() {
                body[key] = spec[key].clone();
            }
        }
        coord.queue_for(runner, body);
        return json_response("201 Created", &[], &json!({ "id": id, "token": token }));
    }
    if let Some(rest) = req.path.strip_prefix("/jobs/") {
        if m == "GET" {
            if let Some(v) = id_of(rest).and_then(|id| coord.job_json(id)) {
                return json_response("200 OK", &[], &v);
            }
            return json_response("404 Not Found", &[], &json!({"message": "no such job"}));
        }
        if let (Some(id), "PUT") = (rest.strip_suffix("/status").and_then(id_of), m) {
            let status = String::from_utf8_lossy(&req.body).trim().to_string();
            if !matches!(status.as_str(), "running" | "canceling" | "canceled") {
                return bad(format!("status {status:?}: running, canceling or canceled"));
            }
            coord.set_status(id, &status);
            return json_response("200 OK", &[], &json!({ "id": id, "status": status }));
        }
    }
    if m == "POST" && req.path == "/id_token" {
        let v: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let (Some(id), Some(login)) = (
            v["job_id"]
                .as_u64()
                .or_else(|| v["job_id"].as_str().and_then(|s| s.parse().ok())),
            v["login"].as_str(),
        ) else {
            return bad("POST /id_token needs {\"job_id\": N, \"login\": USER}".into());
        };
        let t = mint(&pki().keys[0], &claims(&coord.https_url, id, login));
        return json_response("200 OK", &[], &json!({ "token": t }));
    }
    if m == "GET" && req.path == "/requests" {
        return response("200 OK", &[], coord.request_log().as_bytes());
    }
    json_response("404 Not Found", &[], &json!({"message": "not found"}))
}
