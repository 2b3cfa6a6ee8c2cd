//! The GitLab server's signing keys (JWKS), fetched over HTTPS and cached on disk.
//!
//! Keys come from `<server>/-/jwks`, or `<server>/oauth/discovery/keys` when the first
//! fails. They are cached for the service account (the account running jacamar-auth) in
//! `$XDG_CACHE_HOME/jacamar-rs/` (else `~/.cache/jacamar-rs/` of its passwd entry), one file
//! per server, for [`TTL`]. A token whose `kid` is not in a fresh cache triggers one refetch
//! (the server rotated its keys); never more than one fetch per stage.
//!
//! The cache is trusted only when it is a regular file owned by us and not writable by group
//! or others, in a directory with the same properties; otherwise it is ignored and refetched.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

use super::AuthError;

/// How long fetched keys are used before they are fetched again.
pub const TTL: Duration = Duration::from_secs(300);
/// Largest JWKS document accepted.
const MAX_BODY: usize = 1 << 20;
/// Time limit of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// One RSA signing key of the JWKS (RS256 or no `alg`, `use` "sig" or none, a non-empty
/// `kid`), as the server published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(Jwk);

impl Key {
    /// A key of the JWKS, if it is an RSA signing key for RS256 with a key id.
    pub fn from_jwk(jwk: Jwk) -> Option<Key> {
        let c = &jwk.common;
        let ok = matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            && matches!(c.public_key_use, None | Some(PublicKeyUse::Signature))
            && matches!(c.key_algorithm, None | Some(KeyAlgorithm::RS256))
            && c.key_id.as_deref().is_some_and(|k| !k.is_empty());
        ok.then_some(Key(jwk))
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        self.0.common.key_id.as_deref().unwrap_or_default()
    }

    /// The key as the JWT library verifies with it.
    pub fn decoding_key(&self) -> Result<DecodingKey, AuthError> {
        DecodingKey::from_jwk(&self.0).map_err(|e| {
            AuthError::Jwks(format!("key {:?} is not a usable RSA key: {e}", self.kid()))
        })
    }
}

/// Where keys come from and where they are cached.
#[derive(Debug, Clone)]
pub struct Source {
    /// `https://host[:port][/path]`, no trailing slash.
    pub server: String,
    pub ca_file: Option<PathBuf>,
    /// Directory of the cache; `None` disables caching.
    pub cache_dir: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    server: String,
    fetched_at: u64,
    keys: Vec<Key>,
}

impl Source {
    pub fn new(server: &str, ca_file: Option<PathBuf>) -> Source {
        Source {
            server: server.trim_end_matches('/').to_string(),
            ca_file,
            cache_dir: default_cache_dir(),
        }
    }

    fn cache_path(&self) -> Option<PathBuf> {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.server.as_bytes());
        let hex = crate::hex::encode(&digest.as_ref()[..12]);
        Some(self.cache_dir.as_ref()?.join(format!("jwks-{hex}.json")))
    }
}

/// `$XDG_CACHE_HOME/jacamar-rs` (absolute only) of jacamar-auth's own environment (the
/// runner's, not the job's), else `<home of our euid>/.cache/jacamar-rs`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        if x.is_absolute() {
            return Some(x.join("jacamar-rs"));
        }
    }
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok()??;
    Some(me.dir.join(".cache/jacamar-rs"))
}

use crate::clock::unix_now as now;

/// The key `kid`: from a fresh cache, else fetched (at most once per call).
pub async fn key_for(src: &Source, kid: &str) -> Result<Key, AuthError> {
    if let Some(keys) = read_cache(src) {
        if let Some(k) = keys.iter().find(|k| k.kid() == kid) {
            return Ok(k.clone());
        }
    }
    let keys = fetch(src).await?;
    write_cache(src, &keys);
    keys.into_iter().find(|k| k.kid() == kid).ok_or_else(|| {
        AuthError::Token(format!(
            "token key id {kid:?} is not among the server's signing keys ({})",
            src.server
        ))
    })
}

/// Whether `p`'s metadata shows something only we can write.
fn private_to_us(m: &std::fs::Metadata) -> bool {
    m.uid() == nix::unistd::geteuid().as_raw() && m.permissions().mode() & 0o022 == 0
}

fn read_cache(src: &Source) -> Option<Vec<Key>> {
    let path = src.cache_path()?;
    let dir = std::fs::symlink_metadata(path.parent()?).ok()?;
    if !dir.is_dir() || !private_to_us(&dir) {
        return None;
    }
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || !private_to_us(&meta) {
        return None;
    }
    let c: CacheFile = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let age = now().checked_sub(c.fetched_at)?;
    (c.server == src.server && age < TTL.as_secs()).then_some(c.keys)
}

/// Best effort: a cache we cannot write only costs a fetch next time.
fn write_cache(src: &Source, keys: &[Key]) {
    let Some(path) = src.cache_path() else { return };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let body = CacheFile {
        server: src.server.clone(),
        fetched_at: now(),
        keys: keys.to_vec(),
    };
    let Ok(text) = serde_json::to_vec(&body) else {
        return;
    };
    let tmp = dir.join(format!(".jwks-{}.tmp", std::process::id()));
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text));
    if ok.is_ok() && std::fs::rename(&tmp, &path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

/// Parse a JWKS document: its RSA signing keys for RS256 with a `kid` (see [`Key`]). Each
/// key is read on its own ([`Jwk`]), so that one the library cannot model (another `kty`,
/// an unknown curve or `alg`) is skipped instead of failing the whole set, as a
/// [`jsonwebtoken::jwk::JwkSet`] would.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, JwksProblem> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(JwksProblem::NotJson)?;
    let doc: Document = serde_json::from_value(doc).map_err(|_| JwksProblem::NoKeys)?;
    let out: Vec<Key> = doc
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter_map(Key::from_jwk)
        .collect();
    if out.is_empty() {
        return Err(JwksProblem::NoSigningKey);
    }
    Ok(out)
}

/// Why one JWKS endpoint gave no usable key.
#[derive(Debug, thiserror::Error)]
pub enum JwksProblem {
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("no \"keys\" array")]
    NoKeys,
    #[error("no RS256 signing key with a kid")]
    NoSigningKey,
    /// The request failed: the error with each of its sources, `: `-separated.
    #[error("{}", error_chain(.0))]
    Request(#[source] reqwest::Error),
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// Fetch the keys: `/-/jwks`, then `/oauth/discovery/keys`.
pub async fn fetch(src: &Source) -> Result<Vec<Key>, AuthError> {
    if !src.server.starts_with("https://") {
        return Err(AuthError::Jwks(format!(
            "refusing to fetch signing keys from {} over plain HTTP: set gitlab_server to an https:// URL",
            src.server
        )));
    }
    let client = client(src)?;
    let mut problems = Vec::new();
    for path in ["/-/jwks", "/oauth/discovery/keys"] {
        let url = format!("{}{path}", src.server);
        match get(&client, &url).await {
            Ok(body) => match parse_jwks(&body) {
                Ok(keys) => return Ok(keys),
                Err(e) => problems.push(format!("{url}: {e}")),
            },
            Err(e) => problems.push(format!("{url}: {e}")),
        }
    }
    Err(AuthError::Jwks(format!(
        "unable to retrieve keys from the JWKS endpoint: {}",
        problems.join("; ")
    )))
}

fn client(src: &Source) -> Result<reqwest::Client, AuthError> {
    let mut b = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .https_only(true)
        .user_agent(concat!("jacamar-rs/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &src.ca_file {
        let certs = super::tls::read_ca_file(ca)?;
        b = b.use_preconfigured_tls(super::tls::client_config(ca, certs)?);
    }
    b.build()
        .map_err(|e| AuthError::Jwks(format!("failed to set up the HTTPS client: {e}")))
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksProblem> {
    let mut resp = client.get(url).send().await.map_err(JwksProblem::Request)?;
    if !resp.status().is_success() {
        return Err(JwksProblem::Status(resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(JwksProblem::Request)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(JwksProblem::TooLarge);
        }
    }
    Ok(body)
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// For tests and benchmarks: the cache file of `src`, if caching is on.
pub fn cache_file(src: &Source) -> Option<PathBuf> {
    src.cache_path()
}

/// Whether `dir` is usable as a private cache directory (exists, ours, 0700-ish).
pub fn is_private_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir)
        .map(|m| m.is_dir() && private_to_us(&m))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_rsa_signing_keys() {
        let body = br#"{"keys":[
            {"kty":"RSA","kid":"a","n":"AQ","e":"AQAB","use":"sig","alg":"RS256"},
            {"kty":"EC","kid":"b","x":"1","y":"2"},
            {"kty":"RSA","kid":"c","n":"AQ","e":"AQAB","use":"enc"},
            {"kty":"RSA","n":"AQ","e":"AQAB"}]}"#;
        let keys = parse_jwks(body).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid(), "a");
        let other_alg = br#"{"keys":[{"kty":"RSA","kid":"a","n":"AQ","e":"AQAB","alg":"RS512"},
            {"kty":"RSA","kid":"","n":"AQ","e":"AQAB"}]}"#;
        assert!(parse_jwks(other_alg).is_err());
        assert!(parse_jwks(br#"{"keys":{}}"#)
            .unwrap_err()
            .to_string()
            .contains("keys"));
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"<html>")
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
    }

    #[test]
    fn cache_round_trip_and_distrust() {
        let dir = tempfile::tempdir().unwrap();
        let src = Source {
            server: "https://gitlab.example.com".into(),
            ca_file: None,
            cache_dir: Some(dir.path().join("c")),
        };
        let keys =
            parse_jwks(br#"{"keys":[{"kty":"RSA","kid":"k","n":"AQ","e":"AQAB"}]}"#).unwrap();
        assert!(read_cache(&src).is_none());
        write_cache(&src, &keys);
        assert_eq!(read_cache(&src), Some(keys.clone()));
        // A cache others can write is ignored.
        let p = cache_file(&src).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(read_cache(&src).is_none());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A stale cache is ignored.
        let mut c: CacheFile = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        c.fetched_at -= TTL.as_secs() + 1;
        std::fs::write(&p, serde_json::to_vec(&c).unwrap()).unwrap();
        assert!(read_cache(&src).is_none());
    }

    #[test]
    fn plain_http_is_refused() {
        let src = Source {
            server: "http://gitlab.example.com".into(),
            ca_file: None,
            cache_dir: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(fetch(&src)).unwrap_err().to_string();
        assert!(err.contains("plain HTTP"), "{err}");
    }
}
