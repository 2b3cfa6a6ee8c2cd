//! Validation of the job's id_token (a JWT signed by the GitLab server).
//!
//! The algorithm is pinned to RS256: the token's header names the algorithm, and we never
//! let it choose (`alg: none`, HS256 signed with the public key, ... are refused before any
//! signature check). Identity comes from the verified claims only, never from `CUSTOM_ENV_`.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::Key;
use super::AuthError;

/// What the verified token says about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// GitLab username (`user_login`), already checked to be a safe account name.
    pub login: String,
    pub user_id: String,
    pub project_path: Option<String>,
    pub pipeline_source: Option<String>,
    pub job_id: u64,
}

/// What the token must match.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The trusted server: `iss` must equal it or be a path below it (`<issuer>/...`, GitLab
    /// under a relative URL root issues `https://host/gitlab`). A trailing `/` is ignored on
    /// both sides.
    pub issuer: &'a str,
    /// `aud` must contain this.
    pub audience: &'a str,
    /// `job_id` must equal this: the `id` of the runner-written job response (not
    /// `CUSTOM_ENV_CI_JOB_ID`, which a CI variable can override).
    pub job_id: u64,
    /// Extra time after `exp` during which the token is still accepted (cleanup only).
    pub exp_grace: Duration,
    /// Seconds since the epoch; `None` means now.
    pub now: Option<u64>,
}

/// The `kid` of a token's header, after checking that it claims RS256.
pub fn header_kid(token: &str) -> Result<String, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        // An `alg` we do not know at all (e.g. "none") fails header parsing.
        AuthError::Token(format!("malformed token header: {e}{}", alg_hint(token)))
    })?;
    if header.alg != Algorithm::RS256 {
        return Err(AuthError::Token(format!(
            "token algorithm {:?} refused: only RS256 is accepted",
            header.alg
        )));
    }
    header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| AuthError::Token("token header has no key id (kid)".into()))
}

/// Whether `iss` is `trusted` or a path below it (`trusted + "/..."`); never another
/// host, port or scheme, nor a longer name sharing a prefix (`https://host:4430`).
pub fn issuer_ok(iss: &str, trusted: &str) -> bool {
    let (iss, trusted) = (iss.trim_end_matches('/'), trusted.trim_end_matches('/'));
    iss == trusted
        || iss
            .strip_prefix(trusted)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The raw `alg` of a token whose header could not be parsed, for a clearer message.
fn alg_hint(token: &str) -> String {
    use base64_decode as b64;
    let Some(first) = token.split('.').next() else {
        return String::new();
    };
    match b64(first)
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(Value::as_str).map(str::to_string))
    {
        Some(alg) => format!(" (alg {alg:?}: only RS256 is accepted)"),
        None => String::new(),
    }
}

/// Minimal base64url (no padding) decoding for the header hint.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

use crate::clock::unix_now as now_secs;

/// Verify the token's signature with `key` and check every claim against `expect`.
pub fn validate(token: &str, key: &Key, expect: &Expect<'_>) -> Result<Identity, AuthError> {
    let decoding = DecodingKey::from_rsa_components(&key.n, &key.e)
        .map_err(|e| AuthError::Jwks(format!("key {:?} is not a usable RSA key: {e}", key.kid)))?;
    let mut v = Validation::new(Algorithm::RS256);
    v.algorithms = vec![Algorithm::RS256];
    v.leeway = 0;
    // exp/nbf/iat/iss/aud are checked below with messages of our own (and the cleanup grace).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &decoding, &v).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => {
                    AuthError::Token("token signature does not verify".into())
                }
                ErrorKind::InvalidAlgorithm => {
                    AuthError::Token("token algorithm refused: only RS256 is accepted".into())
                }
                _ => AuthError::Token(format!("token rejected: {e}")),
            }
        })?;
    check_claims(&data.claims, expect)
}

fn num(c: &Map<String, Value>, k: &str) -> Result<Option<u64>, AuthError> {
    match c.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| AuthError::Token(format!("claim {k} is not a number of seconds"))),
    }
}

fn text(c: &Map<String, Value>, k: &str) -> Option<String> {
    match c.get(k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Check the claims of a verified token.
pub fn check_claims(c: &Map<String, Value>, expect: &Expect<'_>) -> Result<Identity, AuthError> {
    let now = expect.now.unwrap_or_else(now_secs);
    let exp = num(c, "exp")?.ok_or_else(|| AuthError::Token("token has no exp claim".into()))?;
    let grace = expect.exp_grace.as_secs();
    if now >= exp.saturating_add(grace) {
        return Err(AuthError::Token(format!(
            "token expired at {exp} (now {now}{})",
            if grace > 0 {
                format!(", grace {grace}s")
            } else {
                String::new()
            }
        )));
    }
    if let Some(nbf) = num(c, "nbf")? {
        if now < nbf {
            return Err(AuthError::Token(format!(
                "token not valid yet: nbf {nbf} is after now {now}"
            )));
        }
    }
    let iat = num(c, "iat")?.ok_or_else(|| AuthError::Token("token has no iat claim".into()))?;
    if iat > now {
        return Err(AuthError::Token(format!(
            "token issued in the future: iat {iat} is after now {now}"
        )));
    }
    let iss = text(c, "iss").ok_or_else(|| AuthError::Token("token has no iss claim".into()))?;
    if !issuer_ok(&iss, expect.issuer) {
        return Err(AuthError::Token(format!(
            "token issuer {iss:?} is not the GitLab server {:?} nor a path below it",
            expect.issuer
        )));
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(s)) => s == expect.audience,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(expect.audience)),
        _ => false,
    };
    if !aud_ok {
        return Err(AuthError::Token(format!(
            "token audience {} does not include the required {:?}",
            c.get("aud")
                .map(Value::to_string)
                .unwrap_or("(none)".into()),
            expect.audience
        )));
    }
    let job_raw =
        text(c, "job_id").ok_or_else(|| AuthError::Token("token has no job_id claim".into()))?;
    let job_id: u64 = job_raw
        .parse()
        .map_err(|_| AuthError::Token(format!("token job_id {job_raw:?} is not a number")))?;
    if job_id != expect.job_id {
        return Err(AuthError::Token(format!(
            "token job_id {job_id} does not match the job id {} of the runner's job response",
            expect.job_id
        )));
    }
    let login = text(c, "user_login")
        .ok_or_else(|| AuthError::Token("token has no user_login claim".into()))?;
    check_login(&login)?;
    Ok(Identity {
        login,
        user_id: text(c, "user_id").unwrap_or_default(),
        project_path: text(c, "project_path"),
        pipeline_source: text(c, "pipeline_source"),
        job_id,
    })
}

/// A login we are willing to look up as a local account: `[A-Za-z0-9_][A-Za-z0-9_.-]*`,
/// at most 64 characters (no `/`, no `..` path tricks, no shell metacharacters).
pub fn check_login(login: &str) -> Result<(), AuthError> {
    let ok = !login.is_empty()
        && login.len() <= 64
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !login.starts_with(['-', '.'])
        && !login.contains("..");
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadLogin(login.escape_debug().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn expect() -> Expect<'static> {
        Expect {
            issuer: "https://gitlab.example.com",
            audience: "https://gitlab.example.com",
            job_id: 7,
            exp_grace: Duration::ZERO,
            now: Some(1_000_000),
        }
    }

    fn good() -> Value {
        json!({"iss": "https://gitlab.example.com/", "aud": "https://gitlab.example.com",
               "exp": 1_000_100, "iat": 999_900, "nbf": 999_900, "job_id": "7",
               "user_login": "alice", "user_id": "12", "pipeline_source": "push"})
    }

    #[test]
    fn good_claims_pass() {
        let id = check_claims(&claims(good()), &expect()).unwrap();
        assert_eq!(id.login, "alice");
        assert_eq!(id.job_id, 7);
        assert_eq!(id.pipeline_source.as_deref(), Some("push"));
    }

    #[test]
    fn each_bad_claim_names_itself() {
        let cases: &[(&str, Value, &str)] = &[
            ("exp", json!(999_999), "expired"),
            ("nbf", json!(1_000_050), "not valid yet"),
            ("iat", json!(1_000_050), "issued in the future"),
            ("iss", json!("https://evil.example.com"), "issuer"),
            ("aud", json!(["other"]), "audience"),
            ("job_id", json!(8), "does not match"),
            ("user_login", json!("../root"), "user_login"),
            ("user_login", json!("a;rm -rf"), "user_login"),
        ];
        for (k, v, want) in cases {
            let mut c = good();
            c[*k] = v.clone();
            let err = check_claims(&claims(c), &expect()).unwrap_err().to_string();
            assert!(err.contains(want), "{k}: {err}");
        }
    }

    #[test]
    fn cleanup_grace_extends_exp_only() {
        let mut c = good();
        c["exp"] = json!(999_990);
        let mut e = expect();
        e.exp_grace = Duration::from_secs(60);
        assert!(check_claims(&claims(c.clone()), &e).is_ok());
        c["nbf"] = json!(1_000_001);
        assert!(check_claims(&claims(c), &e).is_err());
    }

    #[test]
    fn alg_none_is_refused_with_its_name() {
        let tok = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.e30.";
        let err = header_kid(tok).unwrap_err().to_string();
        assert!(err.contains("\"none\""), "{err}");
    }

    #[test]
    fn issuer_equal_or_below_the_trusted_server() {
        let t = "https://gl.example";
        for ok in [
            "https://gl.example",
            "https://gl.example/",
            "https://gl.example/gitlab",
        ] {
            assert!(issuer_ok(ok, t), "{ok}");
        }
        assert!(issuer_ok(
            "https://gl.example/gitlab",
            "https://gl.example/gitlab/"
        ));
        for bad in [
            "https://gl.example.evil",
            "https://gl.example:8443",
            "http://gl.example",
            "https://gl.exampl",
            "https://evil.example/https://gl.example",
        ] {
            assert!(!issuer_ok(bad, t), "{bad}");
        }
        assert!(!issuer_ok(
            "https://gl.example",
            "https://gl.example/gitlab"
        ));
    }

    #[test]
    fn logins() {
        for ok in ["alice", "a.b-c_d", "user1"] {
            assert!(check_login(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "../x", "a/b", "a b", "$(id)", "-rf", ".hidden", "a..b", "x`y`",
        ] {
            assert!(check_login(bad).is_err(), "{bad}");
        }
    }
}
