//! Identity from the signed id_token, through the real binaries and a real HTTPS JWKS server.

use serde_json::json;

use crate::auth_kit::{
    audit_lines, claims, give_token, harness, hs256_with_public_key, mint, now, pki, raw_token,
    self_signed, JwksServer, TOKEN_VAR,
};
use crate::harness::runner_script;
use crate::harness::{show, Harness};

const GENERIC: &str = "the job could not be authorized to run on this runner";

/// Run `config` with `token` (None: no token) and expect a refusal whose full reason
/// (containing `why`) is in exactly one JSON audit line and nowhere in the job log.
fn refused(server: &JwksServer, token: Option<String>, why: &str) {
    let mut h = harness(server, "none", "", "", "");
    if let Some(t) = token {
        h.set(TOKEN_VAR, &t);
    }
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{why}: {}", show(&out));
    assert!(
        out.stdout.is_empty(),
        "{why}: config printed {}",
        show(&out)
    );
    let lines = audit_lines(&h);
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert_eq!(errors.len(), 1, "{why}: {lines:?}");
    let msg = errors[0]["msg"].as_str().unwrap();
    assert!(
        msg.contains(why),
        "expected {why:?} in the audit line {msg:?}"
    );
    for k in [
        "time", "job", "runner", "stage", "pid", "hostname", "error_id",
    ] {
        assert!(!errors[0][k].is_null(), "{k} missing in {}", errors[0]);
    }
    assert_eq!(errors[0]["stage"], "config_exec");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(GENERIC), "{why}: job log {log}");
    assert!(
        !log.contains(why),
        "{why}: the job log shows the reason: {log}"
    );
    let id = errors[0]["error_id"].as_str().unwrap();
    assert!(
        log.contains(id),
        "the job log lacks the error id {id}: {log}"
    );
}

#[test]
fn attack_matrix_is_refused_with_reasons_logged() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let t = now();
    type Case = (
        &'static str,
        Box<dyn Fn(&str, u64) -> Option<String>>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "expired",
            Box::new(move |u, j| {
                let mut c = claims(u, j, "alice");
                c["exp"] = json!(t - 60);
                c["iat"] = json!(t - 3600);
                c["nbf"] = json!(t - 3600);
                Some(mint(&pki().keys[0], &c))
            }),
            "expired",
        ),
        (
            "not yet valid",
            Box::new(move |u, j| {
                let mut c = claims(u, j, "alice");
                c["nbf"] = json!(t + 3600);
                Some(mint(&pki().keys[0], &c))
            }),
            "not valid yet",
        ),
        (
            "issued in the future",
            Box::new(move |u, j| {
                let mut c = claims(u, j, "alice");
                c["iat"] = json!(t + 3600);
                Some(mint(&pki().keys[0], &c))
            }),
            "issued in the future",
        ),
        (
            "wrong audience",
            Box::new(|u, j| {
                let mut c = claims(u, j, "alice");
                c["aud"] = json!("https://other.example.com");
                Some(mint(&pki().keys[0], &c))
            }),
            "audience",
        ),
        (
            "wrong issuer",
            Box::new(|u, j| {
                let mut c = claims(u, j, "alice");
                c["iss"] = json!("https://evil.example.com");
                Some(mint(&pki().keys[0], &c))
            }),
            "issuer",
        ),
        (
            "bad signature",
            Box::new(|u, j| {
                // Signed by another key, claiming the server's kid.
                Some(mint(
                    &pki().keys[1].with_kid(&pki().keys[0].kid),
                    &claims(u, j, "alice"),
                ))
            }),
            "signature does not verify",
        ),
        (
            "alg none",
            Box::new(|u, j| {
                Some(raw_token(
                    &json!({"alg": "none", "typ": "JWT", "kid": pki().keys[0].kid}),
                    &claims(u, j, "alice"),
                    "",
                ))
            }),
            "only RS256",
        ),
        (
            "HS256 with the public key",
            Box::new(|u, j| {
                Some(hs256_with_public_key(
                    &pki().keys[0],
                    &claims(u, j, "alice"),
                ))
            }),
            "only RS256",
        ),
        (
            "unknown kid",
            Box::new(|u, j| Some(mint(&pki().keys[2], &claims(u, j, "alice")))),
            "not among the server's signing keys",
        ),
        (
            "job_id mismatch",
            Box::new(|u, j| Some(mint(&pki().keys[0], &claims(u, j + 1, "alice")))),
            "does not match the job id",
        ),
        (
            "dot-dot login",
            Box::new(|u, j| Some(mint(&pki().keys[0], &claims(u, j, "../root")))),
            "user_login",
        ),
        (
            "shell metacharacters",
            Box::new(|u, j| Some(mint(&pki().keys[0], &claims(u, j, "a;id>x")))),
            "user_login",
        ),
        (
            "garbage",
            Box::new(|_, _| Some("not.a.jwt".to_string())),
            "malformed token header",
        ),
    ];
    for (name, make, why) in &cases {
        let mut h = harness(&server, "none", "", "", "");
        let token = make(&server.url, h.job_id);
        if let Some(t) = &token {
            h.set(TOKEN_VAR, t);
        }
        let out = h.config();
        assert_eq!(out.status.code(), Some(2), "{name}: {}", show(&out));
        let lines = audit_lines(&h);
        let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
        assert_eq!(errors.len(), 1, "{name}: {lines:?}");
        let msg = errors[0]["msg"].as_str().unwrap();
        assert!(msg.contains(why), "{name}: expected {why:?} in {msg:?}");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(GENERIC) && !log.contains(why),
            "{name}: job log {log}"
        );
    }
}

#[test]
fn a_refused_job_logs_one_json_line_and_the_job_log_has_none_of_it() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let t = now();
    let mut c = claims(&server.url, 0, "alice");
    c["exp"] = json!(t - 10);
    refused(&server, Some(mint(&pki().keys[0], &c)), "expired");
}

#[test]
fn missing_token_tells_the_user_which_id_tokens_block_to_add() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("No id_token found on SITE_ID_TOKEN variable")
            && log.contains("id_tokens:")
            && log.contains(&format!("aud: {}", server.url)),
        "{log}"
    );
    // CUSTOM_ENV_GITLAB_USER_LOGIN (set by the harness) is never taken as identity.
    assert!(audit_lines(&h).iter().all(|l| l["account"].is_null()));
}

#[test]
fn ci_job_jwt_is_the_fallback_variable() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    let t = mint(&pki().keys[0], &claims(&server.url, h.job_id, "alice"));
    h.set("CUSTOM_ENV_CI_JOB_JWT", &t);
    let out = h.config();
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn good_token_runs_every_stage_with_one_fetch_and_logs_the_account() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    give_token(&mut h, &server, "alice");
    h.config_json();
    assert!(h.prepare().status.success());
    for stage in ["get_sources", "build_script", "after_script"] {
        let out = h.run(stage, &runner_script("echo ok\n"));
        assert!(out.status.success(), "{stage}: {}", show(&out));
    }
    assert!(h.cleanup().status.success());
    assert_eq!(server.hits(), 1, "one JWKS fetch for the whole job (cache)");
    let infos: Vec<_> = audit_lines(&h)
        .into_iter()
        .filter(|l| l["level"] == "INFO")
        .collect();
    assert_eq!(infos.len(), 6, "{infos:?}");
    assert_eq!(infos[0]["login"], "alice");
    assert_eq!(infos[0]["account"], crate::harness::whoami());
    assert!(infos[0]["msg"]
        .as_str()
        .unwrap()
        .contains("authorized GitLab user alice"));
}

#[test]
fn unknown_kid_refetches_once_and_accepts_a_rotated_key() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    give_token(&mut h, &server, "alice");
    h.config_json();
    assert_eq!(server.hits(), 1);
    // The server rotates in a new key; a token signed with it makes us refetch once.
    server.keys.lock().unwrap().push(pki().keys[1].jwk());
    let t = mint(&pki().keys[1], &claims(&server.url, h.job_id, "alice"));
    h.set(TOKEN_VAR, &t);
    assert!(h.prepare().status.success());
    assert_eq!(server.hits(), 2);
    // Now cached: no more fetches.
    assert!(h
        .run("build_script", &runner_script("true\n"))
        .status
        .success());
    assert_eq!(server.hits(), 2);
    // A kid the server never has: one refetch per stage, then refused.
    let t = mint(&pki().keys[2], &claims(&server.url, h.job_id, "alice"));
    h.set(TOKEN_VAR, &t);
    let out = h.run("build_script", &runner_script("true\n"));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(server.hits(), 3);
}

#[test]
fn discovery_endpoint_is_the_fallback() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    server
        .no_dash_jwks
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut h = harness(&server, "none", "", "", "");
    give_token(&mut h, &server, "alice");
    let out = h.config();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(server.hits(), 2, "/-/jwks (404) then /oauth/discovery/keys");
}

#[test]
fn tls_is_verified_against_tls_ca_file() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "", "");
    // Point tls-ca-file at a CA that did not sign the server's certificate.
    let other = h.tmp.path().join("other-ca.pem");
    std::fs::write(&other, &pki().keys[0].public_pem).unwrap();
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        &pki().ca_pem.display().to_string(),
        &other.display().to_string(),
    );
    std::fs::write(&h.config_path, text).unwrap();
    give_token(&mut h, &server, "alice");
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let msg = audit_lines(&h)[0]["msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("tls-ca-file") || msg.contains("certificate"),
        "{msg}"
    );
}

/// A harness for `server` whose tls-ca-file is `ca` instead of the kit's CA.
fn harness_trusting(server: &JwksServer, ca: &std::path::Path) -> Harness {
    let h = harness(server, "none", "", "", "");
    let text = std::fs::read_to_string(&h.config_path).unwrap().replace(
        &pki().ca_pem.display().to_string(),
        &ca.display().to_string(),
    );
    std::fs::write(&h.config_path, text).unwrap();
    h
}

/// Upstream (Go's TLS) accepts a self-signed server certificate listed in tls-ca-file even
/// when it is a CA certificate (`openssl req -x509`'s default); so do we, when the server
/// presents exactly that certificate and it names the server.
#[test]
fn self_signed_ca_certificate_in_tls_ca_file_is_accepted_when_pinned_and_named() {
    let served = self_signed("pinned-127", "IP:127.0.0.1");
    let server = JwksServer::start_self_signed(&served, &[&pki().keys[0]]);
    let mut h = harness_trusting(&server, &served.pem);
    give_token(&mut h, &server, "alice");
    h.config_json();
    assert!(h.prepare().status.success());
    let out = h.run("build_script", &runner_script("echo ok\n"));
    assert!(out.status.success(), "{}", show(&out));
    assert!(h.cleanup().status.success());
    assert_eq!(server.hits(), 1);

    // Another self-signed certificate in the file than the one served: refused.
    let other = self_signed("other-127", "IP:127.0.0.1");
    let mut h = harness_trusting(&server, &other.pem);
    give_token(&mut h, &server, "alice");
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let msg = audit_lines(&h)[0]["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("certificate"), "{msg}");

    // The served certificate is pinned but names another address: refused.
    let elsewhere = self_signed("pinned-other-ip", "IP:127.0.0.2,DNS:gitlab.example.com");
    let server = JwksServer::start_self_signed(&elsewhere, &[&pki().keys[0]]);
    let mut h = harness_trusting(&server, &elsewhere.pem);
    give_token(&mut h, &server, "alice");
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let msg = audit_lines(&h)[0]["msg"].as_str().unwrap().to_string();
    assert!(msg.contains("not valid for name"), "{msg}");
    assert_eq!(server.hits(), 0, "no request reached the wrong-name server");
}

#[test]
fn cleanup_gets_the_exp_grace_and_other_stages_do_not() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "jwt_exp_delay = \"5m\"", "");
    give_token(&mut h, &server, "alice");
    h.config_json();
    let mut c = claims(&server.url, h.job_id, "alice");
    c["exp"] = json!(now() - 30);
    h.set(TOKEN_VAR, &mint(&pki().keys[0], &c));
    let out = h.run("build_script", &runner_script("true\n"));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let out = h.cleanup();
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn unverified_local_mode_warns_in_the_job_log() {
    // downscope "none", no gitlab_server, no token: the demo setup.
    let mut h = Harness::new("");
    h.config_json();
    let out = h.prepare();
    assert!(out.status.success(), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("no id_token and no gitlab_server"), "{log}");
    // With gitlab_server configured the token becomes mandatory.
    h.rewrite_config("gitlab_server = \"https://127.0.0.1:9\"");
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No id_token found"));
}

#[test]
fn over_long_ci_variable_is_refused_by_name() {
    let server = JwksServer::start(&[&pki().keys[0]]);
    let mut h = harness(&server, "none", "", "max_env_chars = 100", "");
    give_token(&mut h, &server, "alice");
    // The token itself is longer than 100 characters: raise the limit above it.
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("max_env_chars = 100", "max_env_chars = 4000");
    std::fs::write(&h.config_path, text).unwrap();
    h.set("CUSTOM_ENV_HUGE", &"v".repeat(5000));
    let out = h.config();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("HUGE") && log.contains("max_env_chars"),
        "{log}"
    );
    assert!(!log.contains("vvvvvvvvvv"), "{log}");
}
