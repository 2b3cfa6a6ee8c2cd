//! A fake GitLab for the real GitLab Runner, on loopback: the runner API the runner's `run`
//! command and its helper commands use, a dumb-HTTP git server and the JWKS, served over
//! plain HTTP and over HTTPS (the test PKI's `127.0.0.1` certificate) from the same state.
//! The docker cluster's runner node reaches the same fake on the cluster network's gateway
//! (`crate::cluster_fake`). It knows one runner token or several, each with its own queue.
//!
//! Shapes as the runner's sources (v16.9.2, v18.0.5) read and write them:
//! * `POST /api/v4/runners/verify` (`gitlab-runner verify`): 200 `{"id", "token"}`;
//! * `POST /api/v4/jobs/request` (body `{"token", "info", ...}`): 201 and the job's JSON, each
//!   queued job once, then 204;
//! * `PATCH /api/v4/jobs/:id/trace` with `Content-Range: a-b` (inclusive) and the log bytes:
//!   202 with `Range: 0-<size>`, `Job-Status` and `X-GitLab-Trace-Update-Interval`; a range
//!   not starting at the stored size gets 416 with the stored range;
//! * `PUT /api/v4/jobs/:id` (body `{"token", "state", "failure_reason", "exit_code",
//!   "output": {"checksum", "bytesize"}}`): 200 with `Job-Status`; the runner sends `running`
//!   as a keep-alive and the final `success`/`failed`;
//! * `POST /api/v4/jobs/:id/artifacts?artifact_format&artifact_type&expire_in`
//!   (multipart/form-data, part `file`, maybe chunked): 201; `GET /api/v4/jobs/:id/artifacts`
//!   with the `JOB-TOKEN` header of any job: the stored archive;
//! * git's dumb HTTP protocol: files of a bare repository (after `git update-server-info`)
//!   below `/<namespace>/<project>.git/`, only with HTTP Basic `gitlab-ci-token:<job token>`
//!   (401 with a `WWW-Authenticate` challenge otherwise);
//! * `GET /-/jwks`: the test PKI's signing keys (counted: the JWKS cache is checked by it).
//!
//! A job's `Job-Status` is `running` until the test sets `canceling` (the runner's graceful
//! cancel: the script gets TERM, after_script runs) or `canceled` (abort).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::auth_kit::{pki, pki_server_config};

/// What the runner said in its last `PUT /api/v4/jobs/:id` with a final state.
#[derive(Debug, Clone)]
pub struct Final {
    pub state: String,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
}

/// One stored artifacts upload.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub query: String,
    pub filename: String,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Job {
    token: String,
    trace: Vec<u8>,
    status: String,
    final_update: Option<Final>,
    updates: Vec<Value>,
    artifacts: Vec<Artifact>,
    /// When the runner took the job, and when its final update (success/failed) came.
    picked: Option<Instant>,
    finished: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// The runners' authentication tokens this GitLab knows.
    runner_tokens: Vec<String>,
    /// Jobs waiting for a runner: (the token of the runner they are for, the job).
    queue: Vec<(String, Value)>,
    jobs: BTreeMap<u64, Job>,
    /// `/<ns>/<project>.git` -> bare repository.
    repos: BTreeMap<String, PathBuf>,
    jwks_hits: usize,
    requests: usize,
    verify_hits: usize,
    git_denied: usize,
    git_served: usize,
    /// Every request line seen, for failure messages.
    log: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Milliseconds every artifacts upload and every git `info/refs` request is held before
    /// it is answered (so that a scan of the host's processes sees the uploader and git).
    upload_delay_ms: std::sync::atomic::AtomicU64,
}

pub struct Coordinator {
    pub http_url: String,
    pub https_url: String,
    shared: Arc<Shared>,
}

/// The runner's authentication token every fake GitLab accepts (a "created runner" token).
pub const RUNNER_TOKEN: &str = "glrt-e2eRunnerTok3n_xyz";

/// The runner's short token as the runner derives it from [`RUNNER_TOKEN`] (the 9
/// characters after the `glrt-` prefix), the second component of the standard builds dir.
pub fn short_token() -> &'static str {
    &RUNNER_TOKEN[5..14]
}

impl Coordinator {
    /// A fake GitLab on loopback (ephemeral ports) for the runner with [`RUNNER_TOKEN`].
    pub fn start() -> Coordinator {
        Coordinator::start_at("127.0.0.1:0", "127.0.0.1:0", &[RUNNER_TOKEN])
    }

    /// A fake GitLab listening on `http_addr` and `https_addr` (`IP:PORT`; the HTTPS
    /// certificate must name the IP, see `auth_kit::pki_extra_san`) for the runners with
    /// `runner_tokens`. Panics with the address when it cannot listen.
    pub fn start_at(http_addr: &str, https_addr: &str, runner_tokens: &[&str]) -> Coordinator {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                runner_tokens: runner_tokens.iter().map(|t| t.to_string()).collect(),
                ..State::default()
            }),
            changed: Condvar::new(),
            upload_delay_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let bind = |a: &str| {
            TcpListener::bind(a)
                .unwrap_or_else(|e| panic!("the fake GitLab cannot listen on {a}: {e}"))
        };
        let (http, https) = (bind(http_addr), bind(https_addr));
        let http_url = format!("http://{}", http.local_addr().unwrap());
        let https_url = format!("https://{}", https.local_addr().unwrap());
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in http.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                    let mut stream = stream;
                    let mut r = BufReader::new(stream.try_clone().unwrap());
                    serve(&s, &mut r, &mut stream);
                });
            }
        });
        let s = shared.clone();
        let cfg = pki_server_config();
        std::thread::spawn(move || {
            for stream in https.incoming().flatten() {
                let (s, cfg) = (s.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    // One request per connection (every answer says Connection: close).
                    let mut buf = Vec::new();
                    let req = {
                        let mut r = BufReader::new(&mut tls);
                        read_request(&mut r, &mut buf)
                    };
                    if let Some(req) = req {
                        let resp = handle(&s, req);
                        let _ = tls.write_all(&resp);
                        let _ = tls.flush();
                    }
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Coordinator {
            http_url,
            https_url,
            shared,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut st = self.shared.state.lock().unwrap();
        let out = f(&mut st);
        self.shared.changed.notify_all();
        out
    }

    /// Wait until `cond` holds on the state, or `limit` passes (false).
    fn wait(&self, limit: Duration, mut cond: impl FnMut(&State) -> bool) -> bool {
        let until = Instant::now() + limit;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if cond(&st) {
                return true;
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self.shared.changed.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Queue `job` (the JSON of a job response) for the runner with [`RUNNER_TOKEN`]; its
    /// `id` and `token` are registered.
    pub fn queue(&self, job: Value) {
        self.queue_for(RUNNER_TOKEN, job)
    }

    /// Queue `job` for the runner with `runner_token`.
    pub fn queue_for(&self, runner_token: &str, job: Value) {
        let id = job["id"].as_u64().expect("job id");
        let token = job["token"].as_str().expect("job token").to_string();
        self.with(|st| {
            st.jobs.insert(
                id,
                Job {
                    token,
                    status: "running".into(),
                    ..Job::default()
                },
            );
            st.queue.push((runner_token.to_string(), job));
        });
    }

    /// Hold every artifacts upload and git `info/refs` request `d` before answering it.
    pub fn set_slow(&self, d: Duration) {
        self.shared
            .upload_delay_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Serve the bare repository `dir` at `/<project_path>.git`.
    pub fn add_repo(&self, project_path: &str, dir: &Path) {
        self.with(|st| {
            st.repos
                .insert(format!("/{project_path}.git"), dir.to_path_buf())
        });
    }

    /// What `Job-Status` says for job `id` from now on.
    pub fn set_status(&self, id: u64, status: &str) {
        self.with(|st| {
            if let Some(j) = st.jobs.get_mut(&id) {
                j.status = status.into();
            }
        });
    }

    pub fn trace(&self, id: u64) -> String {
        self.with(|st| {
            st.jobs
                .get(&id)
                .map(|j| String::from_utf8_lossy(&j.trace).into_owned())
                .unwrap_or_default()
        })
    }

    /// Wait until job `id`'s log contains `pat`.
    pub fn wait_trace(&self, id: u64, pat: &str, limit: Duration) -> bool {
        self.wait(limit, |st| {
            st.jobs
                .get(&id)
                .is_some_and(|j| String::from_utf8_lossy(&j.trace).contains(pat))
        })
    }

    /// Wait for job `id`'s final update.
    pub fn wait_final(&self, id: u64, limit: Duration) -> Option<Final> {
        self.wait(limit, |st| {
            st.jobs.get(&id).is_some_and(|j| j.final_update.is_some())
        });
        self.with(|st| st.jobs.get(&id).and_then(|j| j.final_update.clone()))
    }

    pub fn artifacts(&self, id: u64) -> Vec<Artifact> {
        self.with(|st| {
            st.jobs
                .get(&id)
                .map(|j| j.artifacts.clone())
                .unwrap_or_default()
        })
    }

    pub fn jwks_hits(&self) -> usize {
        self.with(|st| st.jwks_hits)
    }

    pub fn verify_hits(&self) -> usize {
        self.with(|st| st.verify_hits)
    }

    /// (git requests refused for lack of the job token, git files served).
    pub fn git_counts(&self) -> (usize, usize) {
        self.with(|st| (st.git_denied, st.git_served))
    }

    /// The request lines seen so far (for failure messages).
    pub fn request_log(&self) -> String {
        self.with(|st| st.log.join("\n"))
    }

    /// How long job `id` took as GitLab sees it: from the runner taking it to its final
    /// update (None until both happened). For benches/jobs.rs.
    #[allow(dead_code)]
    pub fn job_duration(&self, id: u64) -> Option<Duration> {
        self.with(|st| {
            let j = st.jobs.get(&id)?;
            Some(j.finished?.saturating_duration_since(j.picked?))
        })
    }

    /// Whether any queued job is still waiting for the runner.
    pub fn queued(&self) -> usize {
        self.with(|st| st.queue.len())
    }

    /// What this fake knows of job `id`, as JSON (None: no such job): its `status`
    /// (`Job-Status`), `queued` (not taken by a runner yet), the `trace`, the `final` update
    /// (`state`, `failure_reason`, `exit_code`) or null, the number of `updates`, and the
    /// `artifacts` (`filename`, `query`, `size`).
    pub fn job_json(&self, id: u64) -> Option<Value> {
        self.with(|st| {
            let queued = st.queue.iter().any(|(_, j)| j["id"].as_u64() == Some(id));
            let j = st.jobs.get(&id)?;
            Some(json!({
                "id": id,
                "status": j.status,
                "queued": queued,
                "trace": String::from_utf8_lossy(&j.trace),
                "final": j.final_update.as_ref().map(|f| json!({
                    "state": f.state, "failure_reason": f.failure_reason, "exit_code": f.exit_code,
                })),
                "updates": j.updates.len(),
                "artifacts": j.artifacts.iter().map(|a| json!({
                    "filename": a.filename, "query": a.query, "size": a.data.len(),
                })).collect::<Vec<_>>(),
            }))
        })
    }
}

pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

fn serve(s: &Shared, r: &mut impl BufRead, w: &mut TcpStream) {
    let mut buf = Vec::new();
    if let Some(req) = read_request(r, &mut buf) {
        let resp = handle(s, req);
        let _ = w.write_all(&resp);
        let _ = w.flush();
    }
}

/// One HTTP/1.1 request: the head, then a `Content-Length` or chunked body.
pub(crate) fn read_request(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Option<Request> {
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    buf.clear();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
            if n == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).ok()? == 0 || l.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = buf.len();
            buf.resize(start + n, 0);
            r.read_exact(&mut buf[start..]).ok()?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).ok()?;
        }
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse().ok()) {
        buf.resize(n, 0);
        r.read_exact(buf).ok()?;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    Some(Request {
        method,
        path,
        query,
        headers,
        body: std::mem::take(buf),
    })
}

pub(crate) fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

pub(crate) fn json_response(status: &str, extra: &[(&str, String)], v: &Value) -> Vec<u8> {
    let mut h = vec![("Content-Type", "application/json".to_string())];
    h.extend(extra.iter().cloned());
    response(status, &h, v.to_string().as_bytes())
}

fn handle(s: &Shared, req: Request) -> Vec<u8> {
    if (req.method == "POST" && job_id_of(&req.path, "/artifacts").is_some())
        || (req.method == "GET" && req.path.ends_with(".git/info/refs"))
    {
        let ms = s.upload_delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut st = s.state.lock().unwrap();
    st.log.push(format!("{} {}", req.method, req.path));
    let resp = route(&mut st, &req);
    s.changed.notify_all();
    resp
}

/// Which of the known runners the request body's `token` is.
fn runner_index(st: &State, body: &Value) -> Option<usize> {
    let t = body["token"].as_str()?;
    st.runner_tokens.iter().position(|r| r == t)
}

fn job_id_of(path: &str, suffix: &str) -> Option<u64> {
    path.strip_prefix("/api/v4/jobs/")?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn route(st: &mut State, req: &Request) -> Vec<u8> {
    let m = req.method.as_str();
    let p = req.path.as_str();
    if p == "/-/jwks" || p == "/oauth/discovery/keys" {
        st.jwks_hits += 1;
        let keys: Vec<Value> = pki().keys.iter().map(|k| k.jwk()).collect();
        return json_response("200 OK", &[], &json!({ "keys": keys }));
    }
    if m == "POST" && p == "/api/v4/runners/verify" {
        st.verify_hits += 1;
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let Some(n) = runner_index(st, &body) else {
            return json_response("403 Forbidden", &[], &json!({"message": "403 Forbidden"}));
        };
        return json_response(
            "200 OK",
            &[],
            &json!({"id": n + 1, "token": st.runner_tokens[n]}),
        );
    }
    if m == "POST" && p == "/api/v4/jobs/request" {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let Some(n) = runner_index(st, &body) else {
            return json_response("403 Forbidden", &[], &json!({"message": "403 Forbidden"}));
        };
        st.requests += 1;
        let runner = st.runner_tokens[n].clone();
        let Some(at) = st.queue.iter().position(|(t, _)| *t == runner) else {
            return response("204 No Content", &[], b"");
        };
        let (_, job) = st.queue.remove(at);
        if let Some(j) = job["id"].as_u64().and_then(|id| st.jobs.get_mut(&id)) {
            j.picked = Some(Instant::now());
        }
        return json_response("201 Created", &[], &job);
    }
    if m == "PATCH" {
        if let Some(id) = job_id_of(p, "/trace") {
            let Some(job) = st.jobs.get_mut(&id) else {
                return response("404 Not Found", &[], b"");
            };
            if req.headers.get("job-token") != Some(&job.token) {
                return response("403 Forbidden", &[], b"");
            }
            let start: usize = req
                .headers
                .get("content-range")
                .and_then(|r| r.split('-').next())
                .and_then(|a| a.trim().parse().ok())
                .unwrap_or(usize::MAX);
            if start != job.trace.len() {
                return response(
                    "416 Range Not Satisfiable",
                    &[("Range", format!("0-{}", job.trace.len()))],
                    b"",
                );
            }
            job.trace.extend_from_slice(&req.body);
            return response(
                "202 Accepted",
                &[
                    ("Range", format!("0-{}", job.trace.len())),
                    ("Job-Status", job.status.clone()),
                    ("X-GitLab-Trace-Update-Interval", "1".into()),
                ],
                b"",
            );
        }
    }
    if m == "PUT" {
        if let Some(id) = job_id_of(p, "") {
            let Some(job) = st.jobs.get_mut(&id) else {
                return response("404 Not Found", &[], b"");
            };
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            if body["token"].as_str() != Some(job.token.as_str()) {
                return response("403 Forbidden", &[], b"");
            }
            let state = body["state"].as_str().unwrap_or("").to_string();
            if state == "success" || state == "failed" {
                job.finished.get_or_insert_with(Instant::now);
                job.final_update = Some(Final {
                    state,
                    failure_reason: body["failure_reason"].as_str().map(str::to_string),
                    exit_code: body["exit_code"].as_i64(),
                });
            }
            job.updates.push(body);
            return response(
                "200 OK",
                &[
                    ("Job-Status", job.status.clone()),
                    ("X-GitLab-Trace-Update-Interval", "1".into()),
                ],
                b"",
            );
        }
    }
    if m == "POST" {
        if let Some(id) = job_id_of(p, "/artifacts") {
            let Some(job) = st.jobs.get_mut(&id) else {
                return response("404 Not Found", &[], b"");
            };
            if req.headers.get("job-token") != Some(&job.token) {
                return json_response("403 Forbidden", &[], &json!({"message": "403 Forbidden"}));
            }
            let ctype = req.headers.get("content-type").cloned().unwrap_or_default();
            let Some((filename, data)) = multipart_file(&ctype, &req.body) else {
                return json_response("400 Bad Request", &[], &json!({"message": "no file"}));
            };
            job.artifacts.push(Artifact {
                query: req.query.clone(),
                filename,
                data,
            });
            return json_response("201 Created", &[], &json!({}));
        }
    }
    if m == "GET" {
        if let Some(id) = job_id_of(p, "/artifacts") {
            // Any job's token may read a dependency's artifacts (as GitLab allows within a
            // pipeline); an unknown token may not.
            let tok = req.headers.get("job-token").cloned().unwrap_or_default();
            if !st.jobs.values().any(|j| j.token == tok) {
                return json_response("403 Forbidden", &[], &json!({"message": "403 Forbidden"}));
            }
            let Some(a) = st.jobs.get(&id).and_then(|j| j.artifacts.first()) else {
                return json_response("404 Not Found", &[], &json!({"message": "404 Not Found"}));
            };
            return response(
                "200 OK",
                &[("Content-Type", "application/zip".into())],
                &a.data.clone(),
            );
        }
        if let Some(resp) = git(st, req) {
            return resp;
        }
    }
    response("404 Not Found", &[], b"not found")
}

/// A file of a served bare repository, with the job token as HTTP Basic credentials.
fn git(st: &mut State, req: &Request) -> Option<Vec<u8>> {
    let (prefix, dir) = st
        .repos
        .iter()
        .find(|(prefix, _)| req.path.starts_with(&format!("{prefix}/")))
        .map(|(p, d)| (p.clone(), d.clone()))?;
    let authorized = req
        .headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| {
            let (u, p) = up.split_once(':')?;
            Some(u == "gitlab-ci-token" && st.jobs.values().any(|j| j.token == p))
        })
        .unwrap_or(false);
    if !authorized {
        st.git_denied += 1;
        return Some(response(
            "401 Unauthorized",
            &[("WWW-Authenticate", "Basic realm=\"GitLab\"".into())],
            b"HTTP Basic: Access denied\n",
        ));
    }
    let rel = &req.path[prefix.len() + 1..];
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some(response("404 Not Found", &[], b""));
    }
    match std::fs::read(dir.join(rel)) {
        Ok(data) => {
            st.git_served += 1;
            Some(response(
                "200 OK",
                &[("Content-Type", "application/octet-stream".into())],
                &data,
            ))
        }
        Err(_) => Some(response("404 Not Found", &[], b"")),
    }
}

/// The `file` part of a multipart/form-data body: (its filename, its bytes).
fn multipart_file(ctype: &str, body: &[u8]) -> Option<(String, Vec<u8>)> {
    let boundary = ctype
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let mut at = find(body, delim.as_bytes(), 0)?;
    loop {
        let head_start = at + delim.len() + 2;
        let head_end = find(body, b"\r\n\r\n", head_start)?;
        let head = String::from_utf8_lossy(&body[head_start..head_end]).into_owned();
        let data_start = head_end + 4;
        let next = find(body, format!("\r\n{delim}").as_bytes(), data_start)?;
        if head.contains("name=\"file\"") {
            let filename = head
                .split("filename=\"")
                .nth(1)
                .and_then(|f| f.split('"').next())
                .unwrap_or("")
                .to_string();
            return Some((filename, body[data_start..next].to_vec()));
        }
        at = next + 2;
    }
}
