//! The job's id_token (src/authz/jwt.rs) and the server's key set (src/authz/jwks.rs), against
//! a fixed RSA key made for this target only (fuzz/keys/: never a key of any server). The
//! first byte picks the case:
//!
//! - 0: the rest is a token: `header_kid` and `validate` never panic, and `validate`
//!   refuses it (only a token signed with the fixed key's private half can pass, and an
//!   arbitrary input is never one).
//! - 1: the rest is a JWKS document: `parse_jwks` never panics; each key it keeps gives a
//!   decoding key or an error, and a token signed by the fixed key verifies with a parsed
//!   key only when that key is the fixed key (same `n` and `e`).
//! - 2: the rest is the claims, signed here with the fixed key: `validate` never panics,
//!   an accepted token's identity is its claims; the same token with one byte changed
//!   (at a position and by a value the input picks) is refused.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use jacamar::authz::jwks::{parse_jwks, Key};
use jacamar::authz::jwt::{header_kid, validate, Expect};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;

const PRIVATE_DER: &[u8] = include_bytes!("../keys/fuzz-only-rsa.der");
const JWKS: &str = include_str!("../keys/jwks.json");
const SERVER: &str = "https://gitlab.example.com";
const NOW: u64 = 1_700_000_000;

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| parse_jwks(JWKS.as_bytes()).unwrap().remove(0))
}

fn expect() -> Expect<'static> {
    Expect {
        issuer: SERVER,
        audience: SERVER,
        job_id: 77,
        exp_grace: Duration::ZERO,
        now: Some(NOW),
    }
}

fn sign(claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("fuzz-key".into());
    encode(&header, claims, &EncodingKey::from_rsa_der(PRIVATE_DER)).unwrap()
}

/// Well-formed claims the fixed expectation accepts.
fn good_claims() -> serde_json::Value {
    serde_json::json!({
        "iss": SERVER, "aud": SERVER, "exp": NOW + 60, "iat": NOW - 60, "nbf": NOW - 60,
        "job_id": "77", "user_login": "alice", "user_id": "12",
    })
}

fn n_e(v: &serde_json::Value) -> (Option<&str>, Option<&str>) {
    (v["n"].as_str(), v["e"].as_str())
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            let _ = header_kid(&token);
            let r = validate(&token, key(), &expect());
            assert!(r.is_err(), "an arbitrary token was accepted: {r:?}");
        }
        1 => {
            let Ok(keys) = parse_jwks(rest) else {
                return;
            };
            let fixed = serde_json::to_value(key()).unwrap();
            let token = sign(&good_claims());
            for k in &keys {
                assert!(!k.kid().is_empty());
                if k.decoding_key().is_err() {
                    continue;
                }
                if validate(&token, k, &expect()).is_ok() {
                    let parsed = serde_json::to_value(k).unwrap();
                    assert_eq!(
                        n_e(&parsed),
                        n_e(&fixed),
                        "a token verified with another key: {parsed}"
                    );
                }
            }
        }
        _ => {
            // Two bytes pick the change; the rest is the claims (any JSON).
            if rest.len() < 2 {
                return;
            }
            let (pos, xor) = (rest[0] as usize, rest[1]);
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&rest[2..]) else {
                return;
            };
            let token = sign(&claims);
            if let Ok(id) = validate(&token, key(), &expect()) {
                // A text claim is a string, or a number read as its decimal text.
                let login = match &claims["user_login"] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    other => panic!("accepted with user_login {other}"),
                };
                assert_eq!(id.login, login);
                assert_eq!(id.job_id, 77);
            }
            let mut bytes = token.clone().into_bytes();
            if xor == 0 {
                return;
            }
            let i = pos % bytes.len();
            bytes[i] ^= xor;
            let Ok(tampered) = String::from_utf8(bytes) else {
                return;
            };
            let r = validate(&tampered, key(), &expect());
            assert!(r.is_err(), "a changed token was accepted: {tampered}");
        }
    }
});
