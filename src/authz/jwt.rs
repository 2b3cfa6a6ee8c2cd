//! Validation of the job's id_token (a JWT signed by the GitLab server).
//!
//! The algorithm is pinned to RS256: the token's header names the algorithm, and we never
//! let it choose (`alg: none`, HS256 signed with the public key, ... are refused before any
//! signature check). Identity comes from the verified claims only, never from `CUSTOM_ENV_`.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

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
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let first = token.split('.').next().unwrap_or_default();
    match base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<Header>(&b).ok())
    {
        Some(h) => format!(" (alg {:?}: only RS256 is accepted)", h.alg),
        None => String::new(),
    }
}

use crate::clock::unix_now as now_secs;

/// Verify the token's signature with `key` and check every claim against `expect`.
pub fn validate(token: &str, key: &Key, expect: &Expect<'_>) -> Result<Identity, AuthError> {
    let decoding = key.decoding_key()?;
    let mut v = Validation::new(Algorithm::RS256);
    v.algorithms = vec![Algorithm::RS256];
    v.leeway = 0;
    // exp/nbf/iat/iss/aud are checked below with messages of our own (and the cleanup grace).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Claims>(token, &decoding, &v).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => {
                AuthError::Token("token signature does not verify".into())
            }
            ErrorKind::InvalidAlgorithm => {
                AuthError::Token("token algorithm refused: only RS256 is accepted".into())
            }
            _ => AuthError::Token(format!("token rejected: {e}")),
        })?;
    check_claims(&data.claims, expect)
}

/// The claims of a token that we read. Every field takes any JSON value, so a claim of the
/// wrong type is reported by [`check_claims`] with its name instead of failing the decoding.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Claims {
    pub exp: Option<Seconds>,
    pub nbf: Option<Seconds>,
    pub iat: Option<Seconds>,
    pub iss: Option<Text>,
    pub aud: Option<Audience>,
    pub job_id: Option<Text>,
    pub user_login: Option<Text>,
    pub user_id: Option<Text>,
    pub project_path: Option<Text>,
    pub pipeline_source: Option<Text>,
}

/// A time claim: whole seconds, or a non-negative fraction (truncated); anything else is
/// refused by name. `null` counts as absent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Seconds {
    Whole(u64),
    Fraction(f64),
    Other(IgnoredAny),
}

/// A text claim: a non-empty string, or a number taken as its decimal text; anything else
/// (an empty string, an object, ...) counts as absent.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Text {
    String(String),
    Number(serde_json::Number),
    Other(IgnoredAny),
}

/// `aud`: one audience or a list of them (whose non-string entries never match).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<serde_json::Value>),
    Other(serde_json::Value),
}

impl Audience {
    fn includes(&self, want: &str) -> bool {
        match self {
            Audience::One(s) => s == want,
            Audience::Many(v) => v.iter().any(|x| x.as_str() == Some(want)),
            Audience::Other(_) => false,
        }
    }
}

fn seconds(v: &Option<Seconds>, k: &str) -> Result<Option<u64>, AuthError> {
    match v {
        None => Ok(None),
        Some(Seconds::Whole(n)) => Ok(Some(*n)),
        Some(Seconds::Fraction(f)) if *f >= 0.0 => Ok(Some(*f as u64)),
        Some(_) => Err(AuthError::Token(format!(
            "claim {k} is not a number of seconds"
        ))),
    }
}

fn text(v: &Option<Text>) -> Option<String> {
    match v.as_ref()? {
        Text::String(s) if !s.is_empty() => Some(s.clone()),
        Text::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Check the claims of a verified token.
pub fn check_claims(c: &Claims, expect: &Expect<'_>) -> Result<Identity, AuthError> {
    let now = expect.now.unwrap_or_else(now_secs);
    let exp =
        seconds(&c.exp, "exp")?.ok_or_else(|| AuthError::Token("token has no exp claim".into()))?;
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
    if let Some(nbf) = seconds(&c.nbf, "nbf")? {
        if now < nbf {
            return Err(AuthError::Token(format!(
                "token not valid yet: nbf {nbf} is after now {now}"
            )));
        }
    }
    let iat =
        seconds(&c.iat, "iat")?.ok_or_else(|| AuthError::Token("token has no iat claim".into()))?;
    if iat > now {
        return Err(AuthError::Token(format!(
            "token issued in the future: iat {iat} is after now {now}"
        )));
    }
    let iss = text(&c.iss).ok_or_else(|| AuthError::Token("token has no iss claim".into()))?;
    if !issuer_ok(&iss, expect.issuer) {
        return Err(AuthError::Token(format!(
            "token issuer {iss:?} is not the GitLab server {:?} nor a path below it",
            expect.issuer
        )));
    }
    if !c.aud.as_ref().is_some_and(|a| a.includes(expect.audience)) {
        let shown = match &c.aud {
            Some(a) => serde_json::to_string(a).unwrap_or_default(),
            None => "(none)".into(),
        };
        return Err(AuthError::Token(format!(
            "token audience {shown} does not include the required {:?}",
            expect.audience
        )));
    }
    let job_raw =
        text(&c.job_id).ok_or_else(|| AuthError::Token("token has no job_id claim".into()))?;
    let job_id: u64 = job_raw
        .parse()
        .map_err(|_| AuthError::Token(format!("token job_id {job_raw:?} is not a number")))?;
    if job_id != expect.job_id {
        return Err(AuthError::Token(format!(
            "token job_id {job_id} does not match the job id {} of the runner's job response",
            expect.job_id
        )));
    }
    let login = text(&c.user_login)
        .ok_or_else(|| AuthError::Token("token has no user_login claim".into()))?;
    check_login(&login)?;
    Ok(Identity {
        login,
        user_id: text(&c.user_id).unwrap_or_default(),
        project_path: text(&c.project_path),
        pipeline_source: text(&c.pipeline_source),
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
    use serde_json::{json, Value};

    fn claims(v: Value) -> Claims {
        serde_json::from_value(v).unwrap()
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
        assert_eq!(id.user_id, "12");
        let mut c = good();
        c["job_id"] = json!(7);
        c["exp"] = json!(1_000_100.5);
        c["aud"] = json!([1, "https://gitlab.example.com"]);
        assert_eq!(check_claims(&claims(c), &expect()).unwrap().job_id, 7);
        assert_eq!(id.job_id, 7);
        assert_eq!(id.pipeline_source.as_deref(), Some("push"));
    }

    #[test]
    fn each_bad_claim_names_itself() {
        let cases: &[(&str, Value, &str)] = &[
            ("exp", json!(999_999), "expired"),
            ("exp", json!("soon"), "claim exp is not a number of seconds"),
            ("iat", json!(-1), "claim iat is not a number of seconds"),
            ("exp", Value::Null, "token has no exp claim"),
            ("iss", json!(""), "token has no iss claim"),
            (
                "aud",
                json!("other"),
                "token audience \"other\" does not include",
            ),
            ("job_id", json!("x7"), "job_id \"x7\" is not a number"),
            (
                "user_login",
                json!({"a": 1}),
                "token has no user_login claim",
            ),
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
